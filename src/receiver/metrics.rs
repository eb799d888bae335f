//! Prometheus metrics of the receiver. Labels are bounded: `provider` is one of the 18
//! presets (or `none` before a route is known), `outcome` and `reason` are fixed
//! snake_case codes — never paths, ids or secrets. The `hookwarden_integration_*` series
//! carry `namespace` and `integration` (the WebhookIntegration's name): one set per served
//! route, so bounded by the number of integrations, and removed when the route goes away
//! ([`IntegrationMetrics::forget`], called by the route table).
//!
//! The hot path does no label lookup for an integration's series: each compiled route
//! holds [`RouteMetrics`], handles resolved when the route was compiled (an increment is
//! one atomic add). Only the first refusal of a given reason on a route creates its
//! series.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::crd::ProviderKind;

/// `provider` + `outcome` (accepted, duplicate, ignored, handshake, rejected).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub provider: &'static str,
    pub outcome: &'static str,
}

/// `provider` + reject `reason` (the same code reported to the sink).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub provider: &'static str,
    pub reason: &'static str,
}

/// `provider` only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: &'static str,
}

/// `outcome` only (status writes: e.g. ok, conflict, error).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub outcome: &'static str,
}

/// `namespace` + `integration`: one WebhookIntegration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IntegrationLabels {
    pub namespace: String,
    pub integration: String,
}

/// An integration's deliveries by `outcome` (accepted, duplicate, ignored, handshake,
/// rejected).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IntegrationOutcome {
    pub namespace: String,
    pub integration: String,
    pub outcome: &'static str,
}

/// An integration's refusals by `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IntegrationReason {
    pub namespace: String,
    pub integration: String,
    pub reason: &'static str,
}

/// `hookwarden_integration_info`: which provider an integration uses.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IntegrationInfo {
    pub namespace: String,
    pub integration: String,
    pub provider: &'static str,
}

/// The outcomes a delivery that reached its route can have (the `outcome` label).
pub const OUTCOMES: [&str; 5] = ["accepted", "duplicate", "ignored", "handshake", "rejected"];

type FloatGauge = Gauge<f64, AtomicU64>;

/// The per-integration families (`hookwarden_integration_*`). Series are created when a
/// route is compiled ([`IntegrationMetrics::for_route`]) and removed when the route table
/// stops serving the integration ([`IntegrationMetrics::forget`]).
#[derive(Clone, Debug, Default)]
pub struct IntegrationMetrics {
    pub deliveries: Family<IntegrationOutcome, Counter>,
    pub rejects: Family<IntegrationReason, Counter>,
    pub last_delivery: Family<IntegrationLabels, FloatGauge>,
    pub served_since: Family<IntegrationLabels, FloatGauge>,
    /// Set by the status loop from its ledger.
    pub open_incidents: Family<IntegrationLabels, Gauge>,
    pub expected_interval: Family<IntegrationLabels, Gauge>,
    pub info: Family<IntegrationInfo, Gauge>,
}

impl IntegrationMetrics {
    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("hookwarden_integration");
        r.register(
            "deliveries",
            "Webhook requests that reached an integration's route, by outcome (accepted, duplicate, ignored, handshake, rejected)",
            self.deliveries.clone(),
        );
        r.register(
            "rejects",
            "Refused webhook requests of an integration by reason (the status' lastRejectReason codes)",
            self.rejects.clone(),
        );
        r.register(
            "last_delivery_timestamp_seconds",
            "Unix time of the integration's last request answered 2xx (accepted, duplicate, ignored or handshake) by this replica",
            self.last_delivery.clone(),
        );
        r.register(
            "served_since_timestamp_seconds",
            "Unix time this replica started serving the integration's route (the silence alert counts from here until the first delivery)",
            self.served_since.clone(),
        );
        r.register(
            "open_incidents",
            "Incidents open in this replica's ledger (with several replicas take max by (namespace, integration))",
            self.open_incidents.clone(),
        );
        r.register(
            "expected_interval_seconds",
            "The integration's hookwarden.dev/expected-interval annotation: longest expected time between deliveries (absent when not set)",
            self.expected_interval.clone(),
        );
        r.register(
            "info",
            "1 for every integration this replica serves, with its provider",
            self.info.clone(),
        );
    }

    /// Creates (or finds) the series of `route`'s integration and returns their handles.
    pub fn for_route(&self, namespace: &str, name: &str, provider: &'static str) -> RouteMetrics {
        let labels = IntegrationLabels {
            namespace: namespace.to_string(),
            integration: name.to_string(),
        };
        let outcome = |outcome: &'static str| {
            self.deliveries
                .get_or_create(&IntegrationOutcome {
                    namespace: labels.namespace.clone(),
                    integration: labels.integration.clone(),
                    outcome,
                })
                .clone()
        };
        let outcomes = OUTCOMES.map(outcome);
        // Created on the first delivery (a 0 would read as "1970" on a dashboard); until
        // then the silence alert counts from when this replica started serving the route.
        let since = self.served_since.get_or_create(&labels);
        if since.get() == 0.0 {
            since.set(unix_now_seconds());
        }
        drop(self.open_incidents.get_or_create(&labels));
        RouteMetrics {
            labels,
            provider,
            outcomes,
            last_delivery: std::sync::OnceLock::new(),
            rejects: RwLock::default(),
            families: self.clone(),
        }
    }

    /// Removes every series of integration `namespace/name`. `route` is its last compiled
    /// metrics (for the reasons and the provider its series were created with).
    pub fn forget(&self, route: &RouteMetrics) {
        let labels = &route.labels;
        for outcome in OUTCOMES {
            self.deliveries.remove(&IntegrationOutcome {
                namespace: labels.namespace.clone(),
                integration: labels.integration.clone(),
                outcome,
            });
        }
        for (reason, _) in route
            .rejects
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            self.rejects.remove(&IntegrationReason {
                namespace: labels.namespace.clone(),
                integration: labels.integration.clone(),
                reason,
            });
        }
        self.last_delivery.remove(labels);
        self.served_since.remove(labels);
        self.open_incidents.remove(labels);
        self.expected_interval.remove(labels);
        self.info.remove(&IntegrationInfo {
            namespace: labels.namespace.clone(),
            integration: labels.integration.clone(),
            provider: route.provider,
        });
    }

    /// Publishes what a route's spec and annotations say about it: its provider (info)
    /// and its expected interval between deliveries (absent: no silence alert).
    pub fn describe(&self, route: &RouteMetrics, expected_interval_seconds: Option<u64>) {
        let labels = &route.labels;
        self.info
            .get_or_create(&IntegrationInfo {
                namespace: labels.namespace.clone(),
                integration: labels.integration.clone(),
                provider: route.provider,
            })
            .set(1);
        match expected_interval_seconds {
            Some(s) => {
                self.expected_interval
                    .get_or_create(labels)
                    .set(i64::try_from(s).unwrap_or(i64::MAX));
            }
            None => {
                self.expected_interval.remove(labels);
            }
        }
    }
}

/// Now, in Unix seconds (the base unit of a Prometheus timestamp).
fn unix_now_seconds() -> f64 {
    crate::clock::system_clock()() as f64 / 1000.0
}

/// One integration's series, resolved once per route compile: the hot path increments
/// these handles directly. Shared by the versions of a route while the integration's uid
/// and provider stay the same.
pub struct RouteMetrics {
    labels: IntegrationLabels,
    provider: &'static str,
    /// Indexed like [`OUTCOMES`].
    outcomes: [Counter; 5],
    /// Created on the first delivery (see [`IntegrationMetrics::for_route`]).
    last_delivery: std::sync::OnceLock<FloatGauge>,
    /// Reject counters created so far (a route sees few distinct reasons).
    rejects: RwLock<Vec<(&'static str, Counter)>>,
    families: IntegrationMetrics,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("labels", &self.labels)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

impl RouteMetrics {
    /// The provider the series were created with.
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    /// Counts a delivery answered with `outcome` (one of [`OUTCOMES`] but `rejected`) at
    /// Unix time `now_seconds`.
    pub fn answered(&self, outcome: &'static str, now_seconds: f64) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.outcomes[i].inc();
        }
        self.last_delivery
            .get_or_init(|| {
                self.families
                    .last_delivery
                    .get_or_create(&self.labels)
                    .clone()
            })
            .set(now_seconds);
    }

    /// Counts a refusal with `reason`.
    pub fn rejected(&self, reason: &'static str) {
        self.outcomes[4].inc();
        let found = self
            .rejects
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, c)| c.inc());
        if found.is_some() {
            return;
        }
        let mut rejects = self.rejects.write().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, c)) = rejects.iter().find(|(r, _)| *r == reason) {
            c.inc();
            return;
        }
        let counter = self
            .families
            .rejects
            .get_or_create(&IntegrationReason {
                namespace: self.labels.namespace.clone(),
                integration: self.labels.integration.clone(),
                reason,
            })
            .clone();
        counter.inc();
        rejects.push((reason, counter));
    }
}

/// `cause` of an early dedup eviction (`capacity`, `integration_share`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    pub cause: &'static str,
}

type HistogramFamily = Family<ProviderLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs … ~1.6 s: the receiver's target p99 is 2 ms, so resolution sits low.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Handles to every receiver metric. Cloning shares the underlying values. The runtime
/// updates `queue_depth`, `status_writes` and `journal_appends`; the pipeline the rest.
#[derive(Clone, Debug)]
pub struct ReceiverMetrics {
    /// Requests that reached a route decision, by provider and outcome.
    pub requests: Family<OutcomeLabels, Counter>,
    /// Refused requests by provider and reason.
    pub rejects: Family<ReasonLabels, Counter>,
    /// Time from request head to answer (body read included), by provider.
    pub latency: HistogramFamily,
    /// Deliveries answered as duplicates of an already accepted id.
    pub dedup_hits: Family<ProviderLabels, Counter>,
    /// Delivery ids forgotten before their dedup window ended (memory full).
    pub dedup_evicted_early: Counter,
    /// The same, by cause: the whole memory full, or the integration at its share.
    pub dedup_evicted_early_by_cause: Family<CauseLabels, Counter>,
    /// Deliveries accepted but whose effects are not yet applied (runtime).
    pub queue_depth: Gauge,
    /// Status patches by outcome (runtime).
    pub status_writes: Family<WriteLabels, Counter>,
    /// Journal appends by outcome (runtime).
    pub journal_appends: Family<WriteLabels, Counter>,
    /// Routes currently served.
    pub routes: Gauge,
    /// The `hookwarden_integration_*` families.
    pub integrations: IntegrationMetrics,
    /// Handles into `requests` and `latency` by provider, resolved on first use: an
    /// answered delivery updates them without hashing labels or taking a family's lock.
    hot: Arc<ProviderHandles>,
}

/// One provider's `requests` counters (by [`OUTCOMES`] position) and latency histogram,
/// each created in its family the first time it is used (as `get_or_create` would), so
/// `/metrics` shows the same series as without the cache.
#[derive(Debug, Default)]
struct ProviderSeries {
    outcomes: [OnceLock<Counter>; OUTCOMES.len()],
    latency: OnceLock<Histogram>,
}

/// [`ProviderSeries`] for every preset, indexed by [`ProviderKind`].
#[derive(Debug)]
struct ProviderHandles([ProviderSeries; ProviderKind::ALL.len()]);

impl Default for ProviderHandles {
    fn default() -> Self {
        ProviderHandles(std::array::from_fn(|_| ProviderSeries::default()))
    }
}

impl Default for ReceiverMetrics {
    fn default() -> Self {
        ReceiverMetrics {
            requests: Family::default(),
            rejects: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            dedup_hits: Family::default(),
            dedup_evicted_early: Counter::default(),
            dedup_evicted_early_by_cause: Family::default(),
            queue_depth: Gauge::default(),
            status_writes: Family::default(),
            journal_appends: Family::default(),
            routes: Gauge::default(),
            integrations: IntegrationMetrics::default(),
            hot: Arc::default(),
        }
    }
}

impl ReceiverMetrics {
    /// New handles, registered under `hookwarden_receiver_*` in `registry`.
    pub fn register(registry: &mut Registry) -> ReceiverMetrics {
        let m = ReceiverMetrics::default();
        let r = registry.sub_registry_with_prefix("hookwarden_receiver");
        r.register(
            "requests",
            "Webhook requests by provider and outcome",
            m.requests.clone(),
        );
        r.register(
            "rejects",
            "Refused webhook requests by provider and reason",
            m.rejects.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time to answer a webhook request",
            m.latency.clone(),
        );
        r.register(
            "dedup_hits",
            "Deliveries answered as duplicates",
            m.dedup_hits.clone(),
        );
        r.register(
            "dedup_evicted_early",
            "Delivery ids forgotten before their dedup window ended because --dedup-max-ids was reached (a later copy would be accepted again)",
            m.dedup_evicted_early.clone(),
        );
        r.register(
            "dedup_evicted_early_by_cause",
            "Delivery ids forgotten before their dedup window ended, by cause: capacity (--dedup-max-ids reached) or integration_share (the integration held its quarter of it and forgot its own oldest)",
            m.dedup_evicted_early_by_cause.clone(),
        );
        r.register(
            "queue_depth",
            "Accepted deliveries whose effects are not applied yet",
            m.queue_depth.clone(),
        );
        r.register(
            "status_writes",
            "Status patches by outcome",
            m.status_writes.clone(),
        );
        r.register(
            "journal_appends",
            "Journal appends by outcome",
            m.journal_appends.clone(),
        );
        r.register("routes", "Routes currently served", m.routes.clone());
        m.integrations.register(registry);
        m
    }

    pub(crate) fn outcome(&self, provider: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&OutcomeLabels { provider, outcome })
            .inc();
    }

    /// [`ReceiverMetrics::outcome`] for a route's provider, through the resolved handle.
    pub(crate) fn outcome_of(&self, provider: ProviderKind, outcome: &'static str) {
        let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) else {
            return self.outcome(provider.as_str(), outcome);
        };
        self.hot.0[provider as usize].outcomes[i]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&OutcomeLabels {
                        provider: provider.as_str(),
                        outcome,
                    })
                    .clone()
            })
            .inc();
    }

    /// The latency of a request answered on a route of `provider`, through the resolved
    /// handle.
    pub(crate) fn observe_latency(&self, provider: ProviderKind, seconds: f64) {
        self.hot.0[provider as usize]
            .latency
            .get_or_init(|| {
                self.latency
                    .get_or_create(&ProviderLabels {
                        provider: provider.as_str(),
                    })
                    .clone()
            })
            .observe(seconds);
    }

    pub(crate) fn reject(&self, provider: &'static str, reason: &'static str) {
        self.outcome(provider, "rejected");
        self.reject_reason(provider, reason);
    }

    /// The `rejects` half of [`ReceiverMetrics::reject`] (the `requests` half counted
    /// by the caller).
    pub(crate) fn reject_reason(&self, provider: &'static str, reason: &'static str) {
        self.rejects
            .get_or_create(&ReasonLabels { provider, reason })
            .inc();
    }

    /// The counter of connections shed over `--max-connections` (a refusal reason of its
    /// own, `too_many_connections`, before any route is known).
    pub(crate) fn shed_counter(&self) -> Counter {
        self.rejects
            .get_or_create(&ReasonLabels {
                provider: "none",
                reason: "too_many_connections",
            })
            .clone()
    }

    pub(crate) fn dedup_hit(&self, provider: &'static str) {
        self.dedup_hits
            .get_or_create(&ProviderLabels { provider })
            .inc();
    }
}

/// Serves [`metrics_router`] on its own listener until `stop` is cancelled (the cluster
/// receiver's `--metrics-addr`, and standalone's).
pub fn spawn_metrics_server(
    listener: tokio::net::TcpListener,
    registry: Registry,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let app = metrics_router(Arc::new(registry));
    tokio::spawn(async move {
        super::server::serve(listener, app, async move { stop.cancelled().await }).await
    })
}

/// `GET /metrics` in the OpenMetrics text format, for a separate port or the main one.
pub fn metrics_router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .with_state(registry)
}

async fn render(State(registry): State<Arc<Registry>>, headers: axum::http::HeaderMap) -> Response {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let (content_type, body) = crate::telemetry::negotiate_metrics(&headers, text);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}
