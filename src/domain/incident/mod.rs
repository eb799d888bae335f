//! Payload → incident mapping and the incident state machine (pure, clock passed in).

use serde::{Deserialize, Serialize};

/// Normalised severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Info => "info",
        }
    }
}

/// What one delivery says about one incident.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IncidentEvent {
    /// Incident key within the integration (e.g. Alertmanager fingerprint, Datadog aggreg_key).
    pub id: String,
    pub title: String,
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// True when this event resolves the incident (recovery), false when it triggers/updates.
    pub resolve: bool,
    /// When the event happened at the sender, Unix milliseconds (arrival time when the
    /// payload carries none). Orders events: an older event never overwrites a newer one.
    pub event_time_ms: i64,
}
