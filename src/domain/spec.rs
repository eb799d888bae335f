//! The one resolver: a `WebhookIntegrationSpec` → the effective settings every component
//! uses ([`EffectiveSpec`]), or every problem found ([`SpecProblems`]).
//!
//! The controller's `InvalidSpec` condition, the receiver's route compiler, standalone
//! mode and the CLI all call [`resolve`]; none of them reads a spec field or a default on
//! its own. So "the controller accepts what the receivers would refuse" cannot happen by
//! construction, and each default and bound below is written exactly once.
//!
//! Pure: no I/O, no clock. Compiling CEL, JSON pointers and the JSON Schema happens here
//! too, because what fails to compile is a spec problem the user must see on the
//! resource, not something a receiver finds later.

use std::fmt;
use std::time::Duration;

use ipnet::IpNet;

use super::duration::{self, InvalidDuration};
use super::forward::{
    CircuitSettings, DEFAULT_CIRCUIT_FAILURES, DEFAULT_CIRCUIT_OPEN_FOR, DEFAULT_DEAD_LETTER_TTL,
    DEFAULT_FORMAT, DEFAULT_SEND, DEFAULT_TIMEOUT, EventKind, Format, RetrySchedule,
};
use super::incident::mapping::{Mapping, MappingError};
use super::incident::state::DEFAULT_CAPACITY;
use super::signature::{Scheme, SchemeError};
use crate::crd::{ForwardTarget, ProviderKind, SecretKeyRef, WebhookIntegrationSpec};

/// Every default of the spec, in one place (the CRD's field descriptions and the README's
/// spec table say the same; `tests` pins them in literal numbers).
pub mod defaults {
    use std::time::Duration;

    /// `spec.limits.maxBodyBytes`.
    pub const MAX_BODY_BYTES: usize = 1024 * 1024;
    /// `spec.limits.requestsPerSecond`.
    pub const REQUESTS_PER_SECOND: u32 = 100;
    /// `spec.limits.burst`.
    pub const BURST: u32 = 200;
    /// `spec.dedupWindow`.
    pub const DEDUP_WINDOW: Duration = Duration::from_secs(24 * 3600);
    /// `spec.previousSecretTTL`.
    pub const PREVIOUS_SECRET_TTL: Duration = Duration::from_secs(24 * 3600);
    /// `spec.incidents.keepRecent`.
    pub const KEEP_RECENT: usize = 20;
    /// `spec.incidents.maxAlertsPerDelivery`.
    pub const MAX_ALERTS_PER_DELIVERY: usize = 1000;
    /// `spec.incidents.maxTracked`.
    pub const MAX_TRACKED: usize = crate::domain::incident::state::DEFAULT_CAPACITY;
}

/// Largest `spec.incidents.keepRecent`: the receivers track at most this many incidents
/// per integration, so more cannot be listed.
pub const MAX_KEEP_RECENT: usize = DEFAULT_CAPACITY;

/// Per-endpoint request limits, defaults applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EffectiveLimits {
    pub max_body_bytes: usize,
    pub requests_per_second: u32,
    pub burst: u32,
}

/// `spec.events`: which provider event types are processed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl EventFilter {
    /// Whether this event type is filtered out (acknowledged and counted as ignored).
    /// Exclude wins over include; with an include list, a delivery whose type is unknown
    /// is not one of the listed types.
    pub fn ignores(&self, event_type: Option<&str>) -> bool {
        match event_type {
            Some(t) if self.exclude.iter().any(|e| e == t) => true,
            Some(t) => !self.include.is_empty() && !self.include.iter().any(|i| i == t),
            None => !self.include.is_empty(),
        }
    }
}

/// A spec with every default applied and everything compiled: what the components act on.
pub struct EffectiveSpec {
    pub provider: ProviderKind,
    pub suspend: bool,
    /// How deliveries are authenticated.
    pub scheme: Scheme,
    /// Payload → incidents (monitoring presets, or `spec.incidents`).
    pub mapping: Option<Mapping>,
    /// Empty: any source.
    pub source_ranges: Vec<IpNet>,
    pub limits: EffectiveLimits,
    pub events: EventFilter,
    pub schema: Option<jsonschema::Validator>,
    /// Zero: no deduplication.
    pub dedup_window: Duration,
    /// How long a replaced secret stays accepted.
    pub previous_secret_ttl: Duration,
    /// Incidents listed on `status.incidents.recent`.
    pub keep_recent: usize,
    /// Incidents kept whole on the status (`spec.incidents.maxTracked`).
    pub max_tracked: usize,
    /// `spec.forward`, in spec order.
    pub forward: Vec<EffectiveForward>,
    /// Most incident events one delivery is mapped to (the rest are counted).
    pub max_alerts_per_delivery: usize,
}

impl fmt::Debug for EffectiveSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EffectiveSpec")
            .field("provider", &self.provider)
            .field("suspend", &self.suspend)
            .field("limits", &self.limits)
            .field("dedup_window", &self.dedup_window)
            .field("previous_secret_ttl", &self.previous_secret_ttl)
            .field("keep_recent", &self.keep_recent)
            .field("max_tracked", &self.max_tracked)
            .field("forward", &self.forward)
            .finish_non_exhaustive()
    }
}

/// One thing wrong with a spec. `Display` names the field and says what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecProblem {
    #[error("spec.allowedSourceRanges: {0:?} is not a CIDR (use e.g. 10.0.0.0/8 or 2001:db8::/32)")]
    SourceRange(String),
    #[error("{field}: {error}")]
    Duration {
        field: &'static str,
        error: InvalidDuration,
    },
    #[error("{field} must be at least {min}, got {value}")]
    TooSmall {
        field: &'static str,
        value: i64,
        min: i64,
    },
    #[error("{field} must be at most {max}, got {value}")]
    TooLarge {
        field: &'static str,
        value: i64,
        max: i64,
    },
    #[error("spec.signature.signedContent must include {{body}}")]
    SignedContentWithoutBody,
    #[error("spec.signature.signedContent uses {placeholder}: set spec.signature.{header_field}")]
    PlaceholderWithoutHeader {
        placeholder: &'static str,
        header_field: &'static str,
    },
    #[error(
        "spec.signature.{header_field} is set but signedContent does not use {placeholder}: an unsigned header can be rewritten by anyone who captured a delivery, so the {what} would rest on nothing; add {placeholder} to signedContent or remove {header_field}"
    )]
    UnsignedHeader {
        header_field: &'static str,
        placeholder: &'static str,
        what: &'static str,
    },
    #[error("{0}")]
    Scheme(SchemeError),
    #[error("{0}")]
    Mapping(MappingError),
    #[error("spec.schema is not a usable JSON Schema: {0}")]
    Schema(String),
    #[error("spec.forward[{target}].{field}: {message}")]
    Forward {
        target: String,
        field: &'static str,
        message: String,
    },
}

impl SpecProblem {
    /// The spec field the problem is about, e.g. `spec.limits.burst`.
    pub fn field(&self) -> &'static str {
        match self {
            SpecProblem::SourceRange(_) => "spec.allowedSourceRanges",
            SpecProblem::Duration { field, .. }
            | SpecProblem::TooSmall { field, .. }
            | SpecProblem::TooLarge { field, .. } => field,
            SpecProblem::SignedContentWithoutBody
            | SpecProblem::PlaceholderWithoutHeader { .. } => "spec.signature.signedContent",
            SpecProblem::UnsignedHeader { header_field, .. } => match *header_field {
                "timestampHeader" => "spec.signature.timestampHeader",
                _ => "spec.signature.idHeader",
            },
            SpecProblem::Scheme(SchemeError::InvalidHeaderName { field, .. }) => field,
            SpecProblem::Scheme(SchemeError::UnexpectedTokenHeader) => "spec.tokenHeader",
            SpecProblem::Scheme(SchemeError::AuthHeaderWithoutTokenHeader) => "spec.tokenHeader",
            SpecProblem::Scheme(SchemeError::UnexpectedAuth) => "spec.auth",
            SpecProblem::Scheme(SchemeError::InvalidSignedContent(_)) => {
                "spec.signature.signedContent"
            }
            SpecProblem::Scheme(SchemeError::Oidc(_) | SchemeError::UnexpectedOidc) => "spec.oidc",
            SpecProblem::Scheme(SchemeError::UnexpectedSns) => "spec.sns",
            SpecProblem::Scheme(_) => "spec.signature",
            SpecProblem::Mapping(_) => "spec.incidents",
            SpecProblem::Schema(_) => "spec.schema",
            SpecProblem::Forward { .. } => "spec.forward",
        }
    }
}

/// Every problem of a spec, in field order. `Display` joins them with `; `, which is
/// what the `InvalidSpec` condition and Event say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecProblems(pub Vec<SpecProblem>);

impl fmt::Display for SpecProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecProblems {}

/// Resolves `spec`: the effective settings, or every problem found.
pub fn resolve(spec: &WebhookIntegrationSpec) -> Result<EffectiveSpec, SpecProblems> {
    let mut problems = Vec::new();

    let mut source_ranges = Vec::with_capacity(spec.allowed_source_ranges.len());
    for cidr in &spec.allowed_source_ranges {
        match cidr.trim().parse::<IpNet>() {
            Ok(net) => source_ranges.push(net),
            Err(_) => problems.push(SpecProblem::SourceRange(cidr.clone())),
        }
    }

    let lim = spec.limits.as_ref();
    let max_body_bytes = bounded(
        "spec.limits.maxBodyBytes",
        lim.and_then(|l| l.max_body_bytes),
        defaults::MAX_BODY_BYTES as i64,
        1,
        i64::MAX,
        &mut problems,
    );
    let requests_per_second = bounded(
        "spec.limits.requestsPerSecond",
        lim.and_then(|l| l.requests_per_second).map(i64::from),
        defaults::REQUESTS_PER_SECOND.into(),
        1,
        u32::MAX.into(),
        &mut problems,
    );
    let burst = bounded(
        "spec.limits.burst",
        lim.and_then(|l| l.burst).map(i64::from),
        defaults::BURST.into(),
        1,
        u32::MAX.into(),
        &mut problems,
    );

    let previous_secret_ttl = go_duration(
        "spec.previousSecretTTL",
        spec.previous_secret_ttl.as_deref(),
        defaults::PREVIOUS_SECRET_TTL,
        &mut problems,
    );
    let dedup_window = go_duration(
        "spec.dedupWindow",
        spec.dedup_window.as_deref(),
        defaults::DEDUP_WINDOW,
        &mut problems,
    );

    if let Some(sig) = &spec.signature {
        let template = &sig.signed_content;
        if !template.contains("{body}") {
            problems.push(SpecProblem::SignedContentWithoutBody);
        }
        let headers = [
            (
                "{timestamp}",
                "timestampHeader",
                "timestamp window",
                &sig.timestamp_header,
            ),
            ("{id}", "idHeader", "deduplication", &sig.id_header),
        ];
        for (placeholder, header_field, what, header) in headers {
            match (template.contains(placeholder), header.is_some()) {
                (true, false) => problems.push(SpecProblem::PlaceholderWithoutHeader {
                    placeholder,
                    header_field,
                }),
                (false, true) => problems.push(SpecProblem::UnsignedHeader {
                    header_field,
                    placeholder,
                    what,
                }),
                _ => {}
            }
        }
    }
    // The signature checks above already say what the scheme compiler would about the
    // template; its own message is kept for what they do not cover.
    let signature_reported = !problems.is_empty()
        && problems
            .iter()
            .any(|p| p.field().starts_with("spec.signature"));
    let scheme = match Scheme::from_spec(spec) {
        Ok(s) => Some(s),
        Err(e) => {
            if !(signature_reported && matches!(e, SchemeError::InvalidSignedContent(_))) {
                problems.push(SpecProblem::Scheme(e));
            }
            None
        }
    };

    let mapping = match Mapping::for_spec(spec) {
        Ok(m) => m,
        Err(e) => {
            problems.push(SpecProblem::Mapping(e));
            None
        }
    };
    let keep_recent = bounded(
        "spec.incidents.keepRecent",
        spec.incidents
            .as_ref()
            .and_then(|i| i.keep_recent)
            .map(i64::from),
        defaults::KEEP_RECENT as i64,
        0,
        MAX_KEEP_RECENT as i64,
        &mut problems,
    );

    let max_tracked = bounded(
        "spec.incidents.maxTracked",
        spec.incidents
            .as_ref()
            .and_then(|i| i.max_tracked)
            .map(i64::from),
        defaults::MAX_TRACKED as i64,
        1,
        crate::domain::incident::state::MAX_CAPACITY as i64,
        &mut problems,
    );

    let max_alerts_per_delivery = bounded(
        "spec.incidents.maxAlertsPerDelivery",
        spec.incidents
            .as_ref()
            .and_then(|i| i.max_alerts_per_delivery)
            .map(i64::from),
        defaults::MAX_ALERTS_PER_DELIVERY as i64,
        1,
        100_000,
        &mut problems,
    );

    // CEL cost is judged against the body and alert bounds just resolved.
    if let Some(m) = &mapping {
        problems.extend(
            m.check_cost(
                usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
                usize::try_from(max_alerts_per_delivery).unwrap_or(usize::MAX),
            )
            .into_iter()
            .map(SpecProblem::Mapping),
        );
    }

    let schema = match &spec.schema {
        None => None,
        Some(s) => match jsonschema::validator_for(s) {
            Ok(v) => Some(v),
            Err(e) => {
                problems.push(SpecProblem::Schema(e.to_string()));
                None
            }
        },
    };

    let forward = resolve_forward(&spec.forward, &mut problems);

    let events = spec
        .events
        .as_ref()
        .map(|f| EventFilter {
            include: f.include.clone(),
            exclude: f.exclude.clone(),
        })
        .unwrap_or_default();

    match scheme {
        Some(scheme) if problems.is_empty() => Ok(EffectiveSpec {
            provider: spec.provider,
            suspend: spec.suspend,
            scheme,
            mapping,
            source_ranges,
            limits: EffectiveLimits {
                max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
                requests_per_second: u32::try_from(requests_per_second).unwrap_or(u32::MAX),
                burst: u32::try_from(burst).unwrap_or(u32::MAX),
            },
            events,
            schema,
            dedup_window,
            previous_secret_ttl,
            keep_recent: usize::try_from(keep_recent).unwrap_or(defaults::KEEP_RECENT),
            max_tracked: usize::try_from(max_tracked).unwrap_or(defaults::MAX_TRACKED),
            forward,
            max_alerts_per_delivery: usize::try_from(max_alerts_per_delivery)
                .unwrap_or(defaults::MAX_ALERTS_PER_DELIVERY),
        }),
        _ => Err(SpecProblems(problems)),
    }
}

/// Where a forward target's requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// `url`, checked to be http(s) with a host.
    Url(String),
    /// `urlFrom`: the controller reads the URL from this Secret key.
    UrlFrom(SecretKeyRef),
    /// `service`: a Service in the integration's namespace.
    Service {
        name: String,
        port: u16,
        path: String,
    },
}

impl Destination {
    /// The URL of a `service` destination in `namespace` (cluster DNS).
    pub fn service_url(namespace: &str, name: &str, port: u16, path: &str) -> String {
        format!("http://{name}.{namespace}.svc:{port}{path}")
    }
}

/// Where a target's Standard Webhooks signing key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SigningSource {
    /// `signingSecretRef`.
    Secret(SecretKeyRef),
    /// Generated by the controller into `<integration>-forward`, key = the target's name.
    Generated,
}

/// Name of the Secret holding generated forward signing keys: `<integration>-forward`.
pub fn generated_forward_secret_name(integration: &str) -> String {
    format!("{integration}-forward")
}

/// One `spec.forward` target with every default applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectiveForward {
    pub name: String,
    pub destination: Destination,
    /// Sorted, without repeats.
    pub send: Vec<EventKind>,
    pub format: Format,
    /// `None` for formats that are not signed (slack).
    pub signing: Option<SigningSource>,
    /// `headersFrom`: the Secret whose keys are header names.
    pub headers_from: Option<String>,
    pub timeout: Duration,
    pub schedule: RetrySchedule,
    pub circuit: CircuitSettings,
    pub dead_letter_ttl: Duration,
}

impl EffectiveForward {
    /// Whether this target is sent events of `kind`.
    pub fn sends(&self, kind: EventKind) -> bool {
        self.send.contains(&kind)
    }
}

/// Longest per-attempt `timeout`: an attempt holds a connection and a concurrency slot.
pub const MAX_FORWARD_TIMEOUT: Duration = Duration::from_secs(300);
/// Shortest `deadLetterTTL`: a dead letter must live long enough for someone to replay it.
pub const MIN_DEAD_LETTER_TTL: Duration = Duration::from_secs(60);
/// Longest `deadLetterTTL` (30 days): dead letters keep their bodies on disk.
pub const MAX_DEAD_LETTER_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

fn forward_problem(target: &str, field: &'static str, message: String) -> SpecProblem {
    SpecProblem::Forward {
        target: target.to_string(),
        field,
        message,
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn resolve_forward(
    targets: &[ForwardTarget],
    problems: &mut Vec<SpecProblem>,
) -> Vec<EffectiveForward> {
    let mut out = Vec::with_capacity(targets.len());
    let mut seen = std::collections::HashSet::new();
    for t in targets {
        let before = problems.len();
        let name = t.name.as_str();
        if !is_dns_label(name) {
            problems.push(forward_problem(
                name,
                "name",
                "must be a DNS label (lower-case letters, digits and '-', at most 63)".into(),
            ));
        }
        if !seen.insert(name) {
            problems.push(forward_problem(
                name,
                "name",
                "is used by another target: names must be unique".into(),
            ));
        }
        let destination = match (&t.url, &t.url_from, &t.service) {
            (Some(url), None, None) => {
                match url.parse::<http::Uri>() {
                    Ok(uri)
                        if matches!(uri.scheme_str(), Some("http" | "https"))
                            && uri.host().is_some_and(|h| !h.is_empty()) => {}
                    _ => problems.push(forward_problem(
                        name,
                        "url",
                        format!("{url:?} is not an http:// or https:// URL with a host"),
                    )),
                }
                Some(Destination::Url(url.clone()))
            }
            (None, Some(from), None) => Some(Destination::UrlFrom(from.secret_ref.clone())),
            (None, None, Some(svc)) => {
                let path = svc.path.clone().unwrap_or_else(|| "/".to_string());
                if !path.starts_with('/') {
                    problems.push(forward_problem(
                        name,
                        "service.path",
                        "must start with /".into(),
                    ));
                }
                match u16::try_from(svc.port) {
                    Ok(port) if port > 0 => Some(Destination::Service {
                        name: svc.name.clone(),
                        port,
                        path,
                    }),
                    _ => {
                        problems.push(forward_problem(
                            name,
                            "service.port",
                            format!("{} is not a port (1 to 65535)", svc.port),
                        ));
                        None
                    }
                }
            }
            _ => {
                problems.push(forward_problem(
                    name,
                    "url",
                    "set exactly one of url, urlFrom and service".into(),
                ));
                None
            }
        };
        let format = match t.format.as_deref() {
            None => DEFAULT_FORMAT,
            Some(f) => Format::parse(f).unwrap_or_else(|| {
                problems.push(forward_problem(
                    name,
                    "format",
                    format!("{f:?} is not standard-webhooks, raw, cloudevents or slack"),
                ));
                DEFAULT_FORMAT
            }),
        };
        let mut send: Vec<EventKind> = match &t.send {
            None => DEFAULT_SEND.to_vec(),
            Some(list) if list.is_empty() => {
                problems.push(forward_problem(
                    name,
                    "send",
                    "must list at least one event".into(),
                ));
                Vec::new()
            }
            Some(list) => list
                .iter()
                .filter_map(|e| {
                    let kind = EventKind::parse(e);
                    if kind.is_none() {
                        problems.push(forward_problem(
                            name,
                            "send",
                            format!("{e:?} is not delivery, incident.opened, incident.updated or incident.resolved"),
                        ));
                    }
                    kind
                })
                .collect(),
        };
        send.sort();
        send.dedup();
        for kind in &send {
            if !format.carries(*kind) {
                problems.push(forward_problem(
                    name,
                    "format",
                    format!(
                        "{format} cannot carry {kind} events (raw is for delivery only, slack for incident events only)"
                    ),
                ));
            }
        }
        let signing = format.is_signed().then(|| match &t.signing_secret_ref {
            Some(r) => SigningSource::Secret(r.clone()),
            None => SigningSource::Generated,
        });
        let duration_within = |field: &'static str,
                               value: Option<&str>,
                               default: Duration,
                               min: Duration,
                               max: Duration,
                               problems: &mut Vec<SpecProblem>| {
            match value.map(duration::parse) {
                None => default,
                Some(Ok(d)) if d >= min && d <= max => d,
                Some(Ok(d)) => {
                    problems.push(forward_problem(
                        name,
                        field,
                        format!("{d:?} is outside {min:?}..={max:?}"),
                    ));
                    default
                }
                Some(Err(e)) => {
                    problems.push(forward_problem(name, field, e.to_string()));
                    default
                }
            }
        };
        let timeout = duration_within(
            "timeout",
            t.timeout.as_deref(),
            DEFAULT_TIMEOUT,
            Duration::from_millis(100),
            MAX_FORWARD_TIMEOUT,
            problems,
        );
        let dead_letter_ttl = duration_within(
            "deadLetterTTL",
            t.dead_letter_ttl.as_deref(),
            DEFAULT_DEAD_LETTER_TTL,
            MIN_DEAD_LETTER_TTL,
            MAX_DEAD_LETTER_TTL,
            problems,
        );
        let schedule = match &t.retry {
            None => RetrySchedule::default(),
            Some(r) => RetrySchedule::parse(&r.schedule).unwrap_or_else(|e| {
                problems.push(forward_problem(name, "retry.schedule", e.to_string()));
                RetrySchedule::default()
            }),
        };
        let cb = t.circuit_breaker.as_ref();
        let failures = match cb.and_then(|c| c.failures) {
            None => DEFAULT_CIRCUIT_FAILURES,
            Some(n) if n >= 1 => n.unsigned_abs(),
            Some(n) => {
                problems.push(forward_problem(
                    name,
                    "circuitBreaker.failures",
                    format!("must be at least 1, got {n}"),
                ));
                DEFAULT_CIRCUIT_FAILURES
            }
        };
        let open_for = duration_within(
            "circuitBreaker.openFor",
            cb.and_then(|c| c.open_for.as_deref()),
            DEFAULT_CIRCUIT_OPEN_FOR,
            Duration::from_secs(1),
            Duration::from_secs(24 * 3600),
            problems,
        );
        if let (Some(destination), true) = (destination, problems.len() == before) {
            out.push(EffectiveForward {
                name: name.to_string(),
                destination,
                send,
                format,
                signing,
                headers_from: t.headers_from.as_ref().map(|h| h.secret_ref.name.clone()),
                timeout,
                schedule,
                circuit: CircuitSettings { failures, open_for },
                dead_letter_ttl,
            });
        }
    }
    out
}

/// An integer field within `[min, max]`, or its default when absent.
fn bounded(
    field: &'static str,
    value: Option<i64>,
    default: i64,
    min: i64,
    max: i64,
    problems: &mut Vec<SpecProblem>,
) -> i64 {
    match value {
        None => default,
        Some(v) if v < min => {
            problems.push(SpecProblem::TooSmall {
                field,
                value: v,
                min,
            });
            default
        }
        Some(v) if v > max => {
            problems.push(SpecProblem::TooLarge {
                field,
                value: v,
                max,
            });
            default
        }
        Some(v) => v,
    }
}

fn go_duration(
    field: &'static str,
    value: Option<&str>,
    default: Duration,
    problems: &mut Vec<SpecProblem>,
) -> Duration {
    match value.map(duration::parse) {
        None => default,
        Some(Ok(d)) => d,
        Some(Err(error)) => {
            problems.push(SpecProblem::Duration { field, error });
            default
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> WebhookIntegrationSpec {
        serde_yaml::from_str(yaml).expect("spec parses")
    }

    fn problems(yaml: &str) -> Vec<SpecProblem> {
        match resolve(&spec(yaml)) {
            Ok(_) => Vec::new(),
            Err(SpecProblems(p)) => p,
        }
    }

    /// The defaults the CRD documents and the README's spec table lists, in literal
    /// numbers so a changed constant shows up here.
    #[test]
    fn a_spec_without_optional_fields_gets_the_documented_defaults() {
        let e = resolve(&spec("provider: datadog")).expect("valid");
        assert_eq!(e.limits.max_body_bytes, 1_048_576, "limits.maxBodyBytes");
        assert_eq!(
            e.limits.requests_per_second, 100,
            "limits.requestsPerSecond"
        );
        assert_eq!(e.limits.burst, 200, "limits.burst");
        assert_eq!(
            e.dedup_window,
            Duration::from_secs(24 * 3600),
            "dedupWindow"
        );
        assert_eq!(
            e.previous_secret_ttl,
            Duration::from_secs(24 * 3600),
            "previousSecretTTL"
        );
        assert_eq!(e.keep_recent, 20, "incidents.keepRecent");
        assert_eq!(e.max_tracked, 100, "incidents.maxTracked");
        assert!(e.source_ranges.is_empty(), "any source");
        assert!(e.events.include.is_empty() && e.events.exclude.is_empty());
        assert!(e.mapping.is_some(), "datadog has a preset mapping");
        assert!(!e.suspend);
    }

    /// Wave 1 read `keepRecent: -1` as 0 in one place and as 20 in another; the CRD
    /// says 0..=100. Out of range is now a problem everywhere.
    #[test]
    fn keep_recent_out_of_range_is_a_problem_not_a_guess() {
        assert_eq!(
            problems("provider: datadog\nincidents: {keepRecent: -1}"),
            vec![SpecProblem::TooSmall {
                field: "spec.incidents.keepRecent",
                value: -1,
                min: 0
            }]
        );
        assert_eq!(
            problems("provider: datadog\nincidents: {keepRecent: 500}"),
            vec![SpecProblem::TooLarge {
                field: "spec.incidents.keepRecent",
                value: 500,
                max: 100
            }]
        );
        let zero = resolve(&spec("provider: datadog\nincidents: {keepRecent: 0}")).expect("ok");
        assert_eq!(zero.keep_recent, 0);
    }

    /// Issue 18, finding 9: the tracking cap is the spec's, bounded like the CRD says.
    #[test]
    fn max_tracked_is_bounded_and_does_not_count_as_a_mapping() {
        assert_eq!(
            problems("provider: datadog\nincidents: {maxTracked: 0}"),
            vec![SpecProblem::TooSmall {
                field: "spec.incidents.maxTracked",
                value: 0,
                min: 1
            }]
        );
        assert_eq!(
            problems("provider: datadog\nincidents: {maxTracked: 1001}"),
            vec![SpecProblem::TooLarge {
                field: "spec.incidents.maxTracked",
                value: 1001,
                max: 1000
            }]
        );
        let many = resolve(&spec("provider: datadog\nincidents: {maxTracked: 500}")).expect("ok");
        assert_eq!(many.max_tracked, 500);
        let stripe = resolve(&spec("provider: stripe\nincidents: {maxTracked: 5}")).expect("ok");
        assert!(stripe.mapping.is_none(), "maxTracked alone maps nothing");
    }

    /// A bad dedupWindow was an error for the route compiler but silently 24 h for the
    /// status loop; now it is a problem (and the route is not served with it).
    #[test]
    fn every_problem_is_reported_at_once_each_naming_its_field() {
        let found = problems(
            "provider: generic\nallowedSourceRanges: [nope]\ndedupWindow: forever\npreviousSecretTTL: 1y\nlimits: {burst: 0, maxBodyBytes: -5}\nincidents: {idFrom: \"body.(\"}\nsignature: {header: X-Sig, algorithm: sha256, encoding: hex, signedContent: \"{timestamp}\"}\n",
        );
        let fields: Vec<&str> = found.iter().map(SpecProblem::field).collect();
        for want in [
            "spec.allowedSourceRanges",
            "spec.limits.maxBodyBytes",
            "spec.limits.burst",
            "spec.previousSecretTTL",
            "spec.dedupWindow",
            "spec.signature.signedContent",
            "spec.incidents",
        ] {
            assert!(fields.contains(&want), "{want} missing from {fields:?}");
        }
        let message = SpecProblems(found).to_string();
        assert!(message.contains("must include {body}"), "{message}");
        assert!(
            message.contains("set spec.signature.timestampHeader"),
            "{message}"
        );
    }

    #[test]
    fn generic_refuses_timestamp_and_id_headers_that_are_not_signed() {
        let found = problems(
            "provider: generic\nsignature: {header: X-Sig, algorithm: sha256, encoding: hex, timestampHeader: X-Ts, idHeader: X-Id}\n",
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found
                .iter()
                .all(|p| matches!(p, SpecProblem::UnsignedHeader { .. }))
        );
        assert_eq!(found[0].field(), "spec.signature.timestampHeader");
        assert_eq!(found[1].field(), "spec.signature.idHeader");
        resolve(&spec(
            "provider: generic\nsignature: {header: X-Sig, algorithm: sha256, encoding: hex, signedContent: \"{id}.{timestamp}.{body}\", timestampHeader: X-Ts, idHeader: X-Id}\n",
        ))
        .expect("signed headers are fine");
    }

    #[test]
    fn forward_targets_get_their_defaults() {
        let e = resolve(&spec(
            "provider: datadog\nforward:\n- {name: tickets, url: https://tickets.example.com/in}\n- name: chat\n  urlFrom: {secretRef: {name: slack, key: url}}\n  format: slack\n  send: [incident.resolved, incident.opened]\n- {name: svc, service: {name: intake, port: 8080}, format: raw}\n",
        ))
        .expect("valid");
        let [tickets, chat, svc] = &e.forward[..] else {
            panic!("{:?}", e.forward)
        };
        assert_eq!(tickets.send, vec![EventKind::Delivery]);
        assert_eq!(tickets.format, Format::StandardWebhooks);
        assert_eq!(tickets.signing, Some(SigningSource::Generated));
        assert_eq!(tickets.timeout, Duration::from_secs(10));
        assert_eq!(tickets.schedule, RetrySchedule::default());
        assert_eq!(tickets.circuit, CircuitSettings::default());
        assert_eq!(tickets.dead_letter_ttl, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(
            chat.send,
            vec![EventKind::IncidentOpened, EventKind::IncidentResolved]
        );
        assert_eq!(chat.signing, None, "slack is not signed");
        assert_eq!(
            svc.destination,
            Destination::Service {
                name: "intake".into(),
                port: 8080,
                path: "/".into()
            }
        );
    }

    #[test]
    fn forward_problems_name_the_target_and_field() {
        let found = problems(
            "provider: github\nforward:\n- {name: a, url: ftp://x}\n- {name: a, url: https://x, format: slack}\n- {name: b, url: https://x, urlFrom: {secretRef: {name: s, key: k}}}\n- {name: c, url: https://x, retry: {schedule: []}, timeout: 1h, send: [delivery, incident.closed]}\n",
        );
        let text: Vec<String> = found.iter().map(ToString::to_string).collect();
        for want in [
            "spec.forward[a].url: \"ftp://x\" is not an http:// or https:// URL",
            "spec.forward[a].name: is used by another target",
            "spec.forward[a].format: slack cannot carry delivery events",
            "spec.forward[b].url: set exactly one of url, urlFrom and service",
            "spec.forward[c].send: \"incident.closed\" is not",
            "spec.forward[c].timeout:",
            "spec.forward[c].retry.schedule:",
        ] {
            assert!(
                text.iter().any(|t| t.starts_with(want)),
                "{want} not in {text:#?}"
            );
        }
    }
}
