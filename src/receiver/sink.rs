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

impl Accepted {
    /// The journal record: the delivery as compact JSON and, when it carries a body to
    /// forward, a newline, the body's bytes as they arrived and a closing newline. Compact
    /// JSON has no raw newline (strings escape it), so the first one ends the JSON; the
    /// body is neither base64-encoded nor escaped (a third more bytes and a pass over
    /// them), and the closing newline keeps a record from ending in a zero byte (what the
    /// journal's recovery takes for a write cut short).
    pub fn to_record(&self) -> serde_json::Result<Vec<u8>> {
        let body = self.forward.as_ref().map(|f| f.body.as_slice());
        let mut out = Vec::with_capacity(384 + body.map_or(0, <[u8]>::len));
        serde_json::to_writer(&mut out, self)?;
        if let Some(body) = body {
            out.push(b'\n');
            out.extend_from_slice(body);
            out.push(b'\n');
        }
        Ok(out)
    }

    /// Decodes [`Accepted::to_record`]'s record, and the all-JSON records of earlier
    /// versions (the body base64 inside).
    pub fn from_record(bytes: &[u8]) -> serde_json::Result<Accepted> {
        let Some(end) = bytes.iter().position(|b| *b == b'\n') else {
            return serde_json::from_slice(bytes);
        };
        let mut accepted: Accepted = serde_json::from_slice(&bytes[..end])?;
        let body = bytes[end + 1..]
            .strip_suffix(b"\n")
            .ok_or_else(|| serde::de::Error::custom("journal record: body not closed"))?;
        match &mut accepted.forward {
            Some(forward) => forward.body = body.to_vec(),
            None => {
                return Err(serde::de::Error::custom(
                    "journal record: a body without a forward",
                ));
            }
        }
        Ok(accepted)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receiver::forward::ForwardedBody;

    fn accepted(body: Option<&[u8]>) -> Accepted {
        Accepted {
            integration: "ns/name".into(),
            uid: "uid-1".into(),
            delivery_id: Some("d-1".into()),
            event_type: Some("push".into()),
            received_at_ms: 1_700_000_000_000,
            ignored: false,
            incidents: Vec::new(),
            alerts_dropped: 0,
            replay_key: None,
            forward: body.map(|b| ForwardedBody {
                content_type: Some("application/octet-stream".into()),
                body: b.to_vec(),
                meta_headers: vec![("X-GitHub-Event".into(), "push".into())],
            }),
        }
    }

    /// The body rides after the JSON as it arrived: newlines, quotes, zero bytes and
    /// invalid UTF-8 included; the record never ends in a zero byte.
    #[test]
    fn a_record_carries_the_body_verbatim_after_its_json() {
        for body in [
            &b""[..],
            b"{\"a\":\"line\nbreak\"}\n",
            b"\x00\xff\xfe\n\n\"}\x00",
        ] {
            let a = accepted(Some(body));
            let record = a.to_record().expect("encode");
            assert_ne!(record.last(), Some(&0u8));
            assert!(record.ends_with(b"\n"));
            assert_eq!(Accepted::from_record(&record).expect("decode"), a);
        }
        let plain = accepted(None);
        let record = plain.to_record().expect("encode");
        assert!(!record.contains(&b'\n'));
        assert_eq!(Accepted::from_record(&record).expect("decode"), plain);
    }

    /// Journals written by earlier versions (the body base64 inside the JSON) replay.
    #[test]
    fn records_of_earlier_versions_still_decode() {
        let old = br#"{"integration":"ns/name","uid":"uid-1","deliveryId":"d-1","eventType":"push","receivedAtMs":1700000000000,"ignored":false,"forward":{"contentType":"application/octet-stream","body":"AP/+CgoifQ==","metaHeaders":[["X-GitHub-Event","push"]]}}"#;
        assert_eq!(
            Accepted::from_record(old).expect("decode"),
            accepted(Some(b"\x00\xff\xfe\n\n\"}"))
        );
        // A record cut inside its body is refused, not decoded short.
        let mut cut = accepted(Some(b"abc")).to_record().expect("encode");
        cut.pop();
        assert!(Accepted::from_record(&cut).is_err());
    }
}
