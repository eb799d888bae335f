//! Payload → incident mapping and the incident state machine (pure, clock passed in).
//!
//! [`mapping::Mapping`] turns one authenticated delivery body into [`IncidentEvent`]s
//! (provider presets, or JSON pointers / CEL for `generic`); [`state::IncidentBook`]
//! folds those events, and other receiver replicas' views read back from the resource
//! status, into the incident list written to `status.incidents`.

pub mod cost;
pub mod mapping;
pub mod state;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use mapping::{DATADOG_TEMPLATE, Mapping, MappingError, TopLevelMapping};
pub use state::{DEFAULT_CAPACITY, Incident, IncidentBook, IncidentState, Order, Transition};

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

    /// Reads one of the five normalised names exactly (`critical` … `info`), as written
    /// on the status and accepted as `severityMap` values.
    pub fn from_name(name: &str) -> Option<Severity> {
        match name {
            "critical" => Some(Severity::Critical),
            "high" => Some(Severity::High),
            "medium" => Some(Severity::Medium),
            "low" => Some(Severity::Low),
            "info" => Some(Severity::Info),
            _ => None,
        }
    }

    /// Translates the severity words monitoring tools send into the five levels, shared
    /// by every preset. Case and surrounding blanks are ignored.
    ///
    /// | level | raw values |
    /// |---|---|
    /// | critical | critical, crit, fatal, emergency, emerg, alert, page, disaster, p0, p1, sev0, sev1 |
    /// | high | high, error, err, major, severe, p2, sev2 |
    /// | medium | medium, moderate, average, warning, warn, p3, sev3 |
    /// | low | low, minor, notice, ticket, p4, sev4 |
    /// | info | info, informational, information, debug, trace, none, ok, success, p5, sev5 |
    ///
    /// Anything else is `None`: the caller falls back to the next source the preset knows
    /// and finally to [`Severity::Info`]. Info is the floor on purpose: an alert whose
    /// severity nobody can read still opens an incident (state is what matters), and
    /// guessing "medium" would page-rank it above alerts that really said info.
    /// `spec.incidents.severityMap` translates any other vocabulary.
    pub fn normalise(raw: &str) -> Option<Severity> {
        // Lower case without `-`, `_` and spaces, in a buffer as long as the longest
        // name: a longer value is none of them (every delivery of a monitoring preset
        // normalises one or two values; this allocates nothing).
        let mut buf = [0u8; 16];
        let mut len = 0;
        for b in raw.trim().bytes() {
            if matches!(b, b'-' | b'_' | b' ') {
                continue;
            }
            let slot = buf.get_mut(len)?;
            *slot = b.to_ascii_lowercase();
            len += 1;
        }
        let severity = match &buf[..len] {
            b"critical" | b"crit" | b"fatal" | b"emergency" | b"emerg" | b"alert" | b"page"
            | b"disaster" | b"p0" | b"p1" | b"sev0" | b"sev1" => Severity::Critical,
            b"high" | b"error" | b"err" | b"major" | b"severe" | b"p2" | b"sev2" => Severity::High,
            b"medium" | b"moderate" | b"average" | b"warning" | b"warn" | b"p3" | b"sev3" => {
                Severity::Medium
            }
            b"low" | b"minor" | b"notice" | b"ticket" | b"p4" | b"sev4" => Severity::Low,
            b"info" | b"informational" | b"information" | b"debug" | b"trace" | b"none" | b"ok"
            | b"success" | b"p5" | b"sev5" => Severity::Info,
            _ => return None,
        };
        Some(severity)
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

impl IncidentEvent {
    /// A tiebreak derived from the event's content alone (hex SHA-256 prefix), for callers
    /// that have no delivery id. Every replica computes the same value for the same event,
    /// so two events with the same time are ordered the same way everywhere, and a
    /// replayed event is recognised as the one already applied.
    pub fn content_tiebreak(&self) -> String {
        let mut hash = Sha256::new();
        for part in [
            self.id.as_bytes(),
            self.title.as_bytes(),
            self.severity.as_str().as_bytes(),
            self.link.as_deref().unwrap_or("").as_bytes(),
            if self.resolve { b"resolve" } else { b"trigger" },
            &self.event_time_ms.to_be_bytes(),
        ] {
            // Length-prefix each part so that ("ab", "c") and ("a", "bc") differ.
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        hex::encode(&hash.finalize()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_covers_provider_vocabularies() {
        let table = [
            ("P1", Some(Severity::Critical)),
            ("p2", Some(Severity::High)),
            ("P3", Some(Severity::Medium)),
            ("P4", Some(Severity::Low)),
            ("P5", Some(Severity::Info)),
            ("fatal", Some(Severity::Critical)),
            ("error", Some(Severity::High)),
            ("warning", Some(Severity::Medium)),
            (" Warning ", Some(Severity::Medium)),
            ("SEV-2", Some(Severity::High)),
            ("sev_4", Some(Severity::Low)),
            ("informational", Some(Severity::Info)),
            ("success", Some(Severity::Info)),
            ("", None),
            ("spicy", None),
            // Separators anywhere, any length of them; the buffer's bound is on what is
            // left.
            ("i n-f_o r m a t i o n a l", Some(Severity::Info)),
            ("--------------------crit", Some(Severity::Critical)),
            ("informationalxxxx", None),
            ("CRİTICAL", None),
            ("crit\t", Some(Severity::Critical)),
            ("cr\tit", None),
        ];
        for (raw, want) in table {
            assert_eq!(Severity::normalise(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn content_tiebreak_is_stable_and_content_sensitive() {
        let ev = IncidentEvent {
            id: "a".into(),
            title: "t".into(),
            severity: Severity::High,
            link: None,
            resolve: false,
            event_time_ms: 5,
        };
        assert_eq!(ev.content_tiebreak(), ev.clone().content_tiebreak());
        let resolved = IncidentEvent {
            resolve: true,
            ..ev.clone()
        };
        assert_ne!(ev.content_tiebreak(), resolved.content_tiebreak());
        assert_eq!(ev.content_tiebreak().len(), 32);
    }
}
