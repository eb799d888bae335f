//! The seam between the HTTP pipeline and what happens after a delivery is accepted.
//!
//! The pipeline authenticates and parses a request, then hands the result to a
//! [`DeliverySink`]. `accept` returns only once the delivery is durable (journal
//! append + fsync); only then does the pipeline answer 2xx. Everything after that —
//! incident updates, counters, status write-back — happens in the background from the
//! journal, so a crash after the answer loses nothing.

use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::domain::incident::IncidentEvent;

/// An authenticated delivery the pipeline wants to acknowledge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// `namespace/name` of the integration.
    pub integration: String,
    /// UID of the integration (a re-created integration of the same name is distinct).
    pub uid: String,
    /// The provider's delivery id (dedup key), when it sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
    /// The provider's event type, when it sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// Arrival time, Unix milliseconds.
    pub received_at_ms: i64,
    /// True when the events filter excludes this type: counted as ignored, no incidents.
    #[serde(default)]
    pub ignored: bool,
    /// Incident changes this delivery carries (empty for non-monitoring events).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incidents: Vec<IncidentEvent>,
    /// Alerts of this delivery beyond `incidents.maxAlertsPerDelivery` (not mapped).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub alerts_dropped: u32,
    /// A second dedup key for presets whose id header is unsigned (a digest of what is
    /// signed), remembered like the delivery id, across restarts too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_key: Option<String>,
    /// The body, when a forward target is sent every delivery: journaled with the
    /// delivery so the forward is as durable as the 202.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<crate::receiver::forward::ForwardedBody>,
}

/// A refused request, for counters and `lastRejectReason` (best effort, not journaled).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub integration: String,
    pub uid: String,
    /// Stable snake_case reason code (e.g. `signature_mismatch`, `rate_limited`).
    pub reason: &'static str,
    /// True for authentication failures (they feed the Degraded condition).
    pub auth_failure: bool,
    pub at_ms: i64,
}

/// A duplicate delivery (already accepted within the dedup window): counted, no effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duplicate {
    pub integration: String,
    pub uid: String,
    pub at_ms: i64,
}

/// Why an accepted delivery could not be made durable: the pipeline answers
/// 503 + Retry-After so the sender retries; never 2xx.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The background queue is full.
    #[error("receiver overloaded")]
    Overloaded,
    /// The journal cannot write (disk full, I/O error).
    #[error("journal unavailable: {0}")]
    Unavailable(String),
}

/// Where accepted deliveries go.
pub trait DeliverySink: Send + Sync + 'static {
    /// Makes the delivery durable, then queues its effects. Resolves when it is safe to
    /// answer 2xx.
    fn accept(&self, delivery: Accepted) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// Records a refused request.
    fn reject(&self, rejected: Rejected);
    /// Records a duplicate delivery.
    fn duplicate(&self, duplicate: Duplicate);
    /// `Err(why)` when the sink is broken until the process restarts (its journal failed
    /// an fsync): `/healthz` and `/readyz` then answer 503 with `why`. Transient refusals
    /// (journal full, queue full) are not unhealthy: they are answered 503 per request.
    fn health(&self) -> Result<(), &'static str> {
        Ok(())
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
