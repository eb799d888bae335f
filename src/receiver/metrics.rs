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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
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

/// The outcomes a delivery that reached its route can have (the `outcome` label).
pub const OUTCOMES: [&str; 5] = ["accepted", "duplicate", "ignored", "handshake", "rejected"];

/// The timestamp gauges' "no series yet" value (a 0 would read as "1970").
const ABSENT: u64 = 0;
/// The expected-interval gauge's "no annotation, no series" value.
const NO_INTERVAL: i64 = -1;

/// The series of every served integration, by namespace and name. A namespace string
/// is shared by the integrations of that namespace and a name by the map and the series
/// (interned, not copied into each family's label sets).
type SeriesMap = BTreeMap<Arc<str>, BTreeMap<Arc<str>, Arc<RouteMetrics>>>;

/// The per-integration families (`hookwarden_integration_*`), one [`RouteMetrics`] per
/// served integration. Series are created when a route is compiled
/// ([`IntegrationMetrics::for_route`]) and removed when the route table stops serving
/// the integration ([`IntegrationMetrics::forget`]).
///
/// Not a `Family` per metric: seven families keyed by owned label sets cost ~1.9 KiB per
/// integration (each series its own copies of the namespace and name, its hash-map slot,
/// its `Arc`'d atomic), which took a receiver with 10,000 routes past its 64 MiB target
/// (docs/bench.md). Here an integration is one allocation of atomics (and its name), and
/// the exposition is written from them at scrape time (a [`Collector`]) with the names,
/// types, labels and values the families had.
#[derive(Clone, Debug, Default)]
pub struct IntegrationMetrics {
    series: Arc<RwLock<SeriesMap>>,
}

// Ending in '.' as `Registry::register` makes the help of what it registers.
const DELIVERIES_HELP: &str = "Webhook requests that reached an integration's route, by outcome (accepted, duplicate, ignored, handshake, rejected).";
const REJECTS_HELP: &str =
    "Refused webhook requests of an integration by reason (the status' lastRejectReason codes).";
const LAST_DELIVERY_HELP: &str = "Unix time of the integration's last request answered 2xx (accepted, duplicate, ignored or handshake) by this replica.";
const SERVED_SINCE_HELP: &str = "Unix time this replica started serving the integration's route (the silence alert counts from here until the first delivery).";
const OPEN_INCIDENTS_HELP: &str = "Incidents open in this replica's ledger (with several replicas take max by (namespace, integration)).";
const EXPECTED_INTERVAL_HELP: &str = "The integration's hookwarden.dev/expected-interval annotation: longest expected time between deliveries (absent when not set).";
const INFO_HELP: &str = "1 for every integration this replica serves, with its provider.";

impl IntegrationMetrics {
    fn register(&self, registry: &mut Registry) {
        registry
            .sub_registry_with_prefix("hookwarden_integration")
            .register_collector(Box::new(self.clone()));
    }

    fn read(&self) -> RwLockReadGuard<'_, SeriesMap> {
        self.series.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, SeriesMap> {
        self.series.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The series of integration `namespace/name` served with `provider`: those already
    /// there when it has series with that provider (their counts go on), else new ones
    /// (replacing any of another provider).
    pub fn for_route(
        &self,
        namespace: &str,
        name: &str,
        provider: &'static str,
    ) -> Arc<RouteMetrics> {
        let mut series = self.write();
        if let Some(existing) = series.get(namespace).and_then(|names| names.get(name))
            && existing.provider == provider
        {
            return existing.clone();
        }
        let namespace: Arc<str> = match series.get_key_value(namespace) {
            Some((shared, _)) => shared.clone(),
            None => Arc::from(namespace),
        };
        let name: Arc<str> = Arc::from(name);
        let metrics = Arc::new(RouteMetrics {
            namespace: namespace.clone(),
            name: name.clone(),
            provider,
            outcomes: Default::default(),
            // Until the first delivery the silence alert counts from here.
            served_since: AtomicU64::new(unix_now_seconds().to_bits()),
            last_delivery: AtomicU64::new(ABSENT),
            open_incidents: AtomicI64::new(0),
            expected_interval: AtomicI64::new(NO_INTERVAL),
            rejects: RwLock::default(),
        });
        series
            .entry(namespace)
            .or_default()
            .insert(name, metrics.clone());
        metrics
    }

    /// Removes every series of `route`'s integration (unless they were replaced since by
    /// series of another provider, which stay).
    pub fn forget(&self, route: &RouteMetrics) {
        let mut series = self.write();
        let Some(names) = series.get_mut(&*route.namespace) else {
            return;
        };
        if names
            .get(&*route.name)
            .is_some_and(|m| std::ptr::eq(Arc::as_ptr(m), route))
        {
            names.remove(&*route.name);
            if names.is_empty() {
                series.remove(&*route.namespace);
            }
        }
    }

    /// Publishes what a route's annotations say about it: its expected interval between
    /// deliveries (absent: no series, no silence alert). Its provider (the info series)
    /// is the one its series were created with.
    pub fn describe(&self, route: &RouteMetrics, expected_interval_seconds: Option<u64>) {
        let value =
            expected_interval_seconds.map_or(NO_INTERVAL, |s| i64::try_from(s).unwrap_or(i64::MAX));
        route.expected_interval.store(value, Ordering::Relaxed);
    }

    /// Sets the open-incidents gauge of integration `namespace/name`, if it is served
    /// (its route created the series, and removes them).
    pub fn set_open_incidents(&self, namespace: &str, name: &str, open: usize) {
        if let Some(route) = self.read().get(namespace).and_then(|n| n.get(name)) {
            route
                .open_incidents
                .store(i64::try_from(open).unwrap_or(i64::MAX), Ordering::Relaxed);
        }
    }

    /// Integrations that have series.
    pub fn len(&self) -> usize {
        self.read().values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }
}

/// `namespace` and `integration` of `route`'s series.
fn labels(route: &RouteMetrics) -> [(&'static str, &str); 2] {
    [
        ("namespace", &route.namespace),
        ("integration", &route.name),
    ]
}

/// One gauge family with a sample for each route `value` gives one for; no family at all
/// when none does.
fn route_gauges<'a, V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    routes: impl Iterator<Item = &'a Arc<RouteMetrics>> + Clone,
    value: impl Fn(&RouteMetrics) -> Option<V>,
) -> Result<(), std::fmt::Error> {
    if !routes.clone().any(|r| value(r).is_some()) {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for route in routes {
        if let Some(v) = value(route) {
            family.encode_family(&labels(route))?.encode_gauge(&v)?;
        }
    }
    Ok(())
}

fn counter(encoder: MetricEncoder, value: u64) -> Result<(), std::fmt::Error> {
    let mut encoder = encoder;
    encoder.encode_counter::<NoLabelSet, _, u64>(&value, None)
}

impl Collector for IntegrationMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let series = self.read();
        let routes = || series.values().flat_map(BTreeMap::values);
        if series.is_empty() {
            return Ok(());
        }
        {
            let mut family = encoder.encode_descriptor(
                "deliveries",
                DELIVERIES_HELP,
                None,
                MetricType::Counter,
            )?;
            for route in routes() {
                let [namespace, integration] = labels(route);
                for (outcome, count) in OUTCOMES.iter().zip(&route.outcomes) {
                    let set = [namespace, integration, ("outcome", outcome)];
                    counter(family.encode_family(&set)?, count.load(Ordering::Relaxed))?;
                }
            }
        }
        if routes().any(|r| !r.rejects_read().is_empty()) {
            let mut family =
                encoder.encode_descriptor("rejects", REJECTS_HELP, None, MetricType::Counter)?;
            for route in routes() {
                let [namespace, integration] = labels(route);
                for (reason, count) in route.rejects_read().iter() {
                    let set = [namespace, integration, ("reason", reason)];
                    counter(family.encode_family(&set)?, count.load(Ordering::Relaxed))?;
                }
            }
        }
        route_gauges(
            &mut encoder,
            "last_delivery_timestamp_seconds",
            LAST_DELIVERY_HELP,
            routes(),
            |r| match r.last_delivery.load(Ordering::Relaxed) {
                ABSENT => None,
                bits => Some(f64::from_bits(bits)),
            },
        )?;
        route_gauges(
            &mut encoder,
            "served_since_timestamp_seconds",
            SERVED_SINCE_HELP,
            routes(),
            |r| Some(f64::from_bits(r.served_since.load(Ordering::Relaxed))),
        )?;
        route_gauges(
            &mut encoder,
            "open_incidents",
            OPEN_INCIDENTS_HELP,
            routes(),
            |r| Some(r.open_incidents.load(Ordering::Relaxed)),
        )?;
        route_gauges(
            &mut encoder,
            "expected_interval_seconds",
            EXPECTED_INTERVAL_HELP,
            routes(),
            |r| match r.expected_interval.load(Ordering::Relaxed) {
                NO_INTERVAL => None,
                seconds => Some(seconds),
            },
        )?;
        let mut family = encoder.encode_descriptor("info", INFO_HELP, None, MetricType::Gauge)?;
        for route in routes() {
            let [namespace, integration] = labels(route);
            let set = [namespace, integration, ("provider", route.provider)];
            family.encode_family(&set)?.encode_gauge(&1i64)?;
        }
        Ok(())
    }
}

/// Now, in Unix seconds (the base unit of a Prometheus timestamp).
fn unix_now_seconds() -> f64 {
    crate::clock::system_clock()() as f64 / 1000.0
}

/// One integration's series: the hot path counts on these atomics directly (an
/// increment is one atomic add, no label lookup). Shared by the versions of a route
/// while the integration's uid and provider stay the same.
pub struct RouteMetrics {
    namespace: Arc<str>,
    name: Arc<str>,
    provider: &'static str,
    /// Indexed like [`OUTCOMES`].
    outcomes: [AtomicU64; 5],
    /// `f64` bits.
    served_since: AtomicU64,
    /// `f64` bits; [`ABSENT`] until the first delivery.
    last_delivery: AtomicU64,
    /// Set by the status loop from its ledger.
    open_incidents: AtomicI64,
    /// [`NO_INTERVAL`] without the annotation.
    expected_interval: AtomicI64,
    /// Reject counts by reason, created on a reason's first refusal (a route sees few
    /// distinct reasons).
    rejects: RwLock<Vec<(&'static str, AtomicU64)>>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("namespace", &self.namespace)
            .field("integration", &self.name)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

impl RouteMetrics {
    /// The provider the series were created with.
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    fn rejects_read(&self) -> RwLockReadGuard<'_, Vec<(&'static str, AtomicU64)>> {
        self.rejects.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a delivery answered with `outcome` (one of [`OUTCOMES`] but `rejected`) at
    /// Unix time `now_seconds`.
    pub fn answered(&self, outcome: &'static str, now_seconds: f64) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.outcomes[i].fetch_add(1, Ordering::Relaxed);
        }
        self.last_delivery
            .store(now_seconds.to_bits(), Ordering::Relaxed);
    }

    /// Counts a refusal with `reason`.
    pub fn rejected(&self, reason: &'static str) {
        self.outcomes[4].fetch_add(1, Ordering::Relaxed);
        if let Some((_, c)) = self.rejects_read().iter().find(|(r, _)| *r == reason) {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut rejects = self.rejects.write().unwrap_or_else(PoisonError::into_inner);
        match rejects.iter().find(|(r, _)| *r == reason) {
            Some((_, c)) => {
                c.fetch_add(1, Ordering::Relaxed);
            }
            None => rejects.push((reason, AtomicU64::new(1))),
        }
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
    /// Deliveries whose forwards wait in the journal while intake is saturated (runtime).
    pub forwards_deferred: Gauge,
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
            forwards_deferred: Gauge::default(),
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
            "forwards_deferred",
            "Accepted deliveries whose forwards wait in the journal while intake is saturated (their forwards count in hookwarden_forward_pending too)",
            m.forwards_deferred.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
        text
    }

    /// The collector writes what the `Family`s it replaced wrote: names, types, help,
    /// labels in order, values; nothing for a family without series.
    #[test]
    fn the_exposition_is_the_families_one() {
        let mut registry = Registry::default();
        let metrics = ReceiverMetrics::register(&mut registry);
        let families = &metrics.integrations;
        assert!(!scrape(&registry).contains("hookwarden_integration_"));

        let gh = families.for_route("ops", "gh", "github");
        let dd = families.for_route("ops", "dd", "datadog");
        families.describe(&dd, Some(600));
        gh.answered("accepted", 1_700_000_000.25);
        gh.answered("ignored", 1_700_000_001.5);
        gh.rejected("signature_mismatch");
        families.set_open_incidents("ops", "dd", 3);
        families.set_open_incidents("ops", "nosuch", 3);
        let text = scrape(&registry);
        for line in [
            "# HELP hookwarden_integration_deliveries Webhook requests that reached an integration's route, by outcome (accepted, duplicate, ignored, handshake, rejected).",
            "# TYPE hookwarden_integration_deliveries counter",
            r#"hookwarden_integration_deliveries_total{namespace="ops",integration="gh",outcome="accepted"} 1"#,
            r#"hookwarden_integration_deliveries_total{namespace="ops",integration="gh",outcome="ignored"} 1"#,
            r#"hookwarden_integration_deliveries_total{namespace="ops",integration="gh",outcome="rejected"} 1"#,
            r#"hookwarden_integration_deliveries_total{namespace="ops",integration="dd",outcome="duplicate"} 0"#,
            "# TYPE hookwarden_integration_rejects counter",
            r#"hookwarden_integration_rejects_total{namespace="ops",integration="gh",reason="signature_mismatch"} 1"#,
            "# TYPE hookwarden_integration_last_delivery_timestamp_seconds gauge",
            r#"hookwarden_integration_last_delivery_timestamp_seconds{namespace="ops",integration="gh"} 1700000001.5"#,
            "# TYPE hookwarden_integration_served_since_timestamp_seconds gauge",
            "# TYPE hookwarden_integration_open_incidents gauge",
            r#"hookwarden_integration_open_incidents{namespace="ops",integration="dd"} 3"#,
            r#"hookwarden_integration_open_incidents{namespace="ops",integration="gh"} 0"#,
            "# TYPE hookwarden_integration_expected_interval_seconds gauge",
            r#"hookwarden_integration_expected_interval_seconds{namespace="ops",integration="dd"} 600"#,
            "# TYPE hookwarden_integration_info gauge",
            r#"hookwarden_integration_info{namespace="ops",integration="gh",provider="github"} 1"#,
            r#"hookwarden_integration_info{namespace="ops",integration="dd",provider="datadog"} 1"#,
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "missing {line} in\n{text}"
            );
        }
        assert!(text.contains(r#"hookwarden_integration_served_since_timestamp_seconds{namespace="ops",integration="dd"} 1"#));
        for absent in [
            r#"last_delivery_timestamp_seconds{namespace="ops",integration="dd"}"#,
            r#"expected_interval_seconds{namespace="ops",integration="gh"}"#,
            r#"integration="nosuch""#,
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }

        // The same integration and provider: the same series, counts go on.
        let again = families.for_route("ops", "gh", "github");
        assert!(Arc::ptr_eq(&again, &gh));
        // Another provider: new series; forgetting the old ones leaves the new.
        let lab = families.for_route("ops", "gh", "gitlab");
        families.forget(&gh);
        let text = scrape(&registry);
        assert!(text.contains(r#"hookwarden_integration_info{namespace="ops",integration="gh",provider="gitlab"} 1"#), "{text}");
        assert!(!text.contains(r#"provider="github""#), "{text}");
        assert!(text.contains(r#"hookwarden_integration_deliveries_total{namespace="ops",integration="gh",outcome="accepted"} 0"#), "{text}");
        assert_eq!(families.len(), 2);

        families.forget(&lab);
        families.forget(&dd);
        assert!(families.is_empty());
        assert!(!scrape(&registry).contains("hookwarden_integration_"));
    }
}
