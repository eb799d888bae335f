//! Controller metrics, served on `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of the reconcile error counter (bounded: one value per error kind).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

/// Reconcile count, errors, duration and leadership.
#[derive(Debug)]
pub struct ControllerMetrics {
    pub reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub leader: Gauge,
    /// Route Secrets removed because their integration went without its finalizer's
    /// cleanup (see `reconcile::forget_missing`).
    pub routes_left_behind_removed: Counter,
}

impl ControllerMetrics {
    /// Creates the metrics and registers them under `hookwarden_controller_*`.
    pub fn register(registry: &mut Registry) -> ControllerMetrics {
        let m = ControllerMetrics {
            reconciles: Counter::default(),
            errors: Family::default(),
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            leader: Gauge::default(),
            routes_left_behind_removed: Counter::default(),
        };
        let sub = registry.sub_registry_with_prefix("hookwarden_controller");
        sub.register("reconciles", "Reconciles run", m.reconciles.clone());
        sub.register(
            "reconcile_errors",
            "Reconciles that failed, by the step that failed (read_route, resolve_secret, write_generated_secret, write_route, apply_status, remove_route, finalizer, …)",
            m.errors.clone(),
        );
        sub.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            m.duration.clone(),
        );
        sub.register(
            "leader",
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        sub.register(
            "routes_left_behind_removed",
            "Route Secrets removed because their integration was deleted without the finalizer's cleanup",
            m.routes_left_behind_removed.clone(),
        );
        m
    }

    /// Records one reconcile.
    pub fn observe(&self, took: Duration, error: Option<&'static str>) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(error) = error {
            self.errors
                .get_or_create(&ErrorLabels {
                    error: error.to_string(),
                })
                .inc();
        }
    }
}
