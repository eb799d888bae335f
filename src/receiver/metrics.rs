//! Prometheus metrics of the receiver. Labels are bounded: `provider` is one of the 18
//! presets (or `none` before a route is known), `outcome` and `reason` are fixed
//! snake_case codes — never paths, integration names, ids or secrets.

use std::sync::Arc;

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
        m
    }

    pub(crate) fn outcome(&self, provider: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&OutcomeLabels { provider, outcome })
            .inc();
    }

    pub(crate) fn reject(&self, provider: &'static str, reason: &'static str) {
        self.outcome(provider, "rejected");
        self.rejects
            .get_or_create(&ReasonLabels { provider, reason })
            .inc();
    }

    pub(crate) fn observe_latency(&self, provider: &'static str, seconds: f64) {
        self.latency
            .get_or_create(&ProviderLabels { provider })
            .observe(seconds);
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

async fn render(State(registry): State<Arc<Registry>>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
