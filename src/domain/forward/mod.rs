//! Forwarding (outbound), the pure part: what to send, when to retry, when to give up, when
//! a target's circuit is open, and how one request is signed.
//!
//! Nothing here reads the clock, the network or a random generator: time is Unix
//! milliseconds passed in, jitter is a sample in `[-1, 1]` passed in. The sender with its
//! SSRF guard is [`crate::forwarder`]; the journal, the spec resolver and status are the
//! callers'. These types do not depend on the CRD: the resolver maps `spec.forward` into
//! them (the parse helpers below are what it calls).
//!
//! - [`schedule`]: [`next_attempt_at`] (retry schedule, ±10 % jitter, `Retry-After`) and
//!   [`parse_retry_after`];
//! - [`outcome`]: [`classify`] an HTTP status or a transport failure into delivered /
//!   terminal / retryable, with a stable reason;
//! - [`circuit`]: the per-target [`CircuitBreaker`];
//! - [`payload`]: the body and headers of one request for each [`Format`], signed with
//!   Standard Webhooks headers through [`crate::domain::signature`] (one signing path for
//!   inbound tests and outbound requests).

pub mod circuit;
pub mod outcome;
pub mod payload;
pub mod schedule;

use std::fmt;
use std::time::Duration;

pub use circuit::{CircuitBreaker, CircuitState, Permit};
pub use outcome::{Attempt, Classification, Outcome, TransportFailure, classify};
pub use payload::{
    DeliveryFacts, Event, IncidentChange, IncidentFacts, IntegrationRef, OutboundRequest,
    RenderError, Rendered, SigningKey, SigningKeyError, is_reserved_header, meta_header_names,
    render, sign_request,
};
pub use schedule::{JITTER, MAX_RETRY_AFTER, next_attempt_at, parse_retry_after};

/// Per-attempt timeout (`timeout`, connect + request + reading the answer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dead letter is kept with its body (`deadLetterTTL`): 7 days.
pub const DEFAULT_DEAD_LETTER_TTL: Duration = Duration::from_secs(168 * 3600);
/// `retry.schedule`: the delays before attempts 2..N.
pub const DEFAULT_RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(6 * 3600),
];
/// `circuitBreaker.failures`: consecutive retryable failures that open the circuit.
pub const DEFAULT_CIRCUIT_FAILURES: u32 = 5;
/// `circuitBreaker.openFor`: how long an open circuit refuses attempts.
pub const DEFAULT_CIRCUIT_OPEN_FOR: Duration = Duration::from_secs(60);
/// `format` when the target names none.
pub const DEFAULT_FORMAT: Format = Format::StandardWebhooks;
/// `send` when the target names none.
pub const DEFAULT_SEND: &[EventKind] = &[EventKind::Delivery];

/// Most entries in `retry.schedule`. With the longest delay that is 20 days of retrying:
/// a schedule must end (in a dead letter) while its body is still worth keeping on disk.
pub const MAX_RETRY_ENTRIES: usize = 20;
/// Longest single delay in `retry.schedule`. Longer gaps make a pending forward outlive
/// any reasonable incident and keep its body on disk for nothing.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(24 * 3600);
/// Shortest single delay: a zero or sub-second retry turns a failing target into a loop.
pub const MIN_RETRY_DELAY: Duration = Duration::from_secs(1);

/// What a target receives (`format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// JSON envelope (`type`, `timestamp`, `integration`, `incident` | `delivery`).
    StandardWebhooks,
    /// The original body and content type (deliveries only).
    Raw,
    /// A structured-mode CloudEvent (`application/cloudevents+json`).
    CloudEvents,
    /// A Slack incoming-webhook message (incident events only, unsigned).
    Slack,
}

impl Format {
    pub const ALL: [Format; 4] = [
        Format::StandardWebhooks,
        Format::Raw,
        Format::CloudEvents,
        Format::Slack,
    ];

    /// The spec's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::StandardWebhooks => "standard-webhooks",
            Format::Raw => "raw",
            Format::CloudEvents => "cloudevents",
            Format::Slack => "slack",
        }
    }

    pub fn parse(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// Whether this format can carry `kind`: `raw` is the original request, so there is
    /// nothing raw about an incident; a Slack message about every delivery is noise, and
    /// Slack cannot verify our signature anyway. A spec pairing them is invalid.
    pub fn carries(self, kind: EventKind) -> bool {
        match self {
            Format::StandardWebhooks | Format::CloudEvents => true,
            Format::Raw => kind == EventKind::Delivery,
            Format::Slack => kind != EventKind::Delivery,
        }
    }

    /// Whether requests in this format carry Standard Webhooks signature headers. Slack's
    /// incoming webhooks ignore them, and their URL is the credential.
    pub fn is_signed(self) -> bool {
        self != Format::Slack
    }
}

impl Default for Format {
    fn default() -> Self {
        DEFAULT_FORMAT
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a target is sent (`send` entries, and the payload's `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// Every verified delivery.
    Delivery,
    IncidentOpened,
    IncidentUpdated,
    IncidentResolved,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::Delivery,
        EventKind::IncidentOpened,
        EventKind::IncidentUpdated,
        EventKind::IncidentResolved,
    ];

    /// The wire name: `send` entries, the payload's `type`, the CloudEvents type suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Delivery => "delivery",
            EventKind::IncidentOpened => "incident.opened",
            EventKind::IncidentUpdated => "incident.updated",
            EventKind::IncidentResolved => "incident.resolved",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `retry.schedule` that cannot be used; the resolver reports it against the target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "retry.schedule is empty: give at least one delay (the default is 1m, 5m, 30m, 2h, 6h)"
    )]
    Empty,
    #[error("retry.schedule has {0} entries; at most {MAX_RETRY_ENTRIES} are allowed")]
    TooLong(usize),
    #[error("retry.schedule[{index}]: {source}")]
    Invalid {
        index: usize,
        source: crate::domain::duration::InvalidDuration,
    },
    #[error("retry.schedule[{index}]: {value} is outside 1s..24h")]
    OutOfRange { index: usize, value: String },
}

/// The delays before attempts 2..N (so N = `delays.len() + 1` attempts in all), each
/// within [`MIN_RETRY_DELAY`]..=[`MAX_RETRY_DELAY`], at most [`MAX_RETRY_ENTRIES`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

impl RetrySchedule {
    pub fn new(delays: Vec<Duration>) -> Result<RetrySchedule, ScheduleError> {
        if delays.is_empty() {
            return Err(ScheduleError::Empty);
        }
        if delays.len() > MAX_RETRY_ENTRIES {
            return Err(ScheduleError::TooLong(delays.len()));
        }
        if let Some((index, d)) = delays
            .iter()
            .enumerate()
            .find(|(_, d)| **d < MIN_RETRY_DELAY || **d > MAX_RETRY_DELAY)
        {
            return Err(ScheduleError::OutOfRange {
                index,
                value: format!("{d:?}"),
            });
        }
        Ok(RetrySchedule { delays })
    }

    /// From the spec's Go-style durations (`[1m, 5m, 30m, 2h, 6h]`).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<RetrySchedule, ScheduleError> {
        let delays = entries
            .iter()
            .enumerate()
            .map(|(index, s)| {
                crate::domain::duration::parse(s.as_ref())
                    .map_err(|source| ScheduleError::Invalid { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        RetrySchedule::new(delays)
    }

    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }

    /// Attempts in all, the first one included.
    pub fn max_attempts(&self) -> u32 {
        // At most MAX_RETRY_ENTRIES + 1, so the conversion cannot truncate.
        u32::try_from(self.delays.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        RetrySchedule {
            delays: DEFAULT_RETRY_DELAYS.to_vec(),
        }
    }
}

/// `circuitBreaker`: open after `failures` consecutive retryable failures, for `open_for`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CircuitSettings {
    /// At least 1 (a value of 0 is read as 1: a breaker that is always open would never
    /// let the probe through that could close it).
    pub failures: u32,
    pub open_for: Duration,
}

impl Default for CircuitSettings {
    fn default() -> Self {
        CircuitSettings {
            failures: DEFAULT_CIRCUIT_FAILURES,
            open_for: DEFAULT_CIRCUIT_OPEN_FOR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        for f in Format::ALL {
            assert_eq!(Format::parse(f.as_str()), Some(f));
        }
        assert_eq!(
            EventKind::parse("incident.opened"),
            Some(EventKind::IncidentOpened)
        );
        assert_eq!(EventKind::parse("Incident.Opened"), None);
        assert_eq!(EventKind::parse("on"), None);
        assert_eq!(
            Format::parse("standard-webhooks"),
            Some(Format::StandardWebhooks)
        );
        assert_eq!(Format::parse("cloudEvents"), None);
    }

    #[test]
    fn formats_carry_only_the_events_design_allows() {
        let carried = |f: Format| -> Vec<&str> {
            EventKind::ALL
                .into_iter()
                .filter(|k| f.carries(*k))
                .map(EventKind::as_str)
                .collect()
        };
        assert_eq!(carried(Format::Raw), ["delivery"]);
        assert_eq!(
            carried(Format::Slack),
            ["incident.opened", "incident.updated", "incident.resolved"]
        );
        assert_eq!(carried(Format::StandardWebhooks).len(), 4);
        assert_eq!(carried(Format::CloudEvents).len(), 4);
        assert!(!Format::Slack.is_signed());
        assert!(Format::Raw.is_signed());
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let minutes: Vec<u64> = RetrySchedule::default()
            .delays()
            .iter()
            .map(|d| d.as_secs() / 60)
            .collect();
        assert_eq!(minutes, [1, 5, 30, 120, 360]);
        assert_eq!(RetrySchedule::default().max_attempts(), 6);
        assert_eq!(CircuitSettings::default().failures, 5);
        assert_eq!(CircuitSettings::default().open_for, Duration::from_secs(60));
        assert_eq!(DEFAULT_TIMEOUT, Duration::from_secs(10));
        assert_eq!(DEFAULT_DEAD_LETTER_TTL, Duration::from_secs(7 * 86_400));
        assert_eq!(Format::default(), Format::StandardWebhooks);
        assert_eq!(DEFAULT_SEND, [EventKind::Delivery]);
    }

    #[test]
    fn schedules_are_parsed_and_bounded() {
        let s = RetrySchedule::parse(&["1m", "5m", "30m", "2h", "6h"]).expect("default");
        assert_eq!(s, RetrySchedule::default());
        assert_eq!(RetrySchedule::parse::<&str>(&[]), Err(ScheduleError::Empty));
        assert!(matches!(
            RetrySchedule::parse(&["1m", "soon"]),
            Err(ScheduleError::Invalid { index: 1, .. })
        ));
        assert!(matches!(
            RetrySchedule::parse(&["0s"]),
            Err(ScheduleError::OutOfRange { index: 0, .. })
        ));
        assert!(matches!(
            RetrySchedule::parse(&["1m", "25h"]),
            Err(ScheduleError::OutOfRange { index: 1, .. })
        ));
        let long = vec!["1m"; MAX_RETRY_ENTRIES + 1];
        assert_eq!(
            RetrySchedule::parse(&long),
            Err(ScheduleError::TooLong(MAX_RETRY_ENTRIES + 1))
        );
        let msg = RetrySchedule::parse(&["1m", "25h"])
            .expect_err("too long")
            .to_string();
        assert!(msg.starts_with("retry.schedule[1]:"), "{msg}");
    }
}
