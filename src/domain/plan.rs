//! What the controller wants the world to look like for one integration — a pure function
//! of the integration, what was found for its secret, the route written last time and the
//! clock. The reconciler (and standalone mode) gather those inputs, call [`plan`], and
//! apply the result; no I/O happens here, so every rule is unit-tested with plain data.

mod forward;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt as _;

use crate::crd::{WebhookIntegration, WebhookIntegrationSpec};
use crate::domain::secret::is_valid_path;
use crate::domain::spec::{self, SpecProblems};
use crate::route::{EXPECTED_INTERVAL_ANNOTATION, Route, RouteSecret, SecretValue};

pub use self::forward::{
    ForwardProblem, GeneratedForwardLookup, GeneratedForwardSecret, SecretData,
    forward_secret_names, names_secret,
};
pub use crate::domain::spec::generated_forward_secret_name;

/// Condition types the controller owns.
pub const READY: &str = "Ready";
pub const SECRET_RESOLVED: &str = "SecretResolved";
pub const ROUTE_READY: &str = "RouteReady";
/// Whether every `spec.forward` target resolved (absent when there are none). Separate
/// from `Ready`: a forward target's missing Secret does not stop the endpoint.
pub const FORWARD_READY: &str = "ForwardReady";
/// Something works but deserves a person's attention (absent otherwise): today, a
/// generic integration with `auth: none`, whose URL path is its only secret.
pub const WARNING: &str = "Warning";
/// Every condition type the controller owns (the receivers own `Degraded`).
pub const CONTROLLER_CONDITIONS: [&str; 5] =
    [READY, SECRET_RESOLVED, ROUTE_READY, FORWARD_READY, WARNING];

/// At most this many previous secrets stay accepted at once (rapid rotations).
pub const MAX_PREVIOUS_SECRETS: usize = 3;
/// Key of the generated secret inside `<name>-webhook`.
pub const GENERATED_SECRET_KEY: &str = "secret";
/// Key of the endpoint URL inside `<name>-webhook`.
pub const GENERATED_URL_KEY: &str = "url";

/// Condition reasons a user can act on.
pub mod reason {
    pub const READY: &str = "Ready";
    pub const SECRET_RESOLVED: &str = "SecretResolved";
    pub const SECRET_GENERATED: &str = "SecretGenerated";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
    pub const SECRET_EMPTY: &str = "SecretEmpty";
    pub const GENERATED_SECRET_CONFLICT: &str = "GeneratedSecretConflict";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// An annotation hookwarden reads (e.g. `hookwarden.dev/expected-interval`) is invalid.
    pub const INVALID_ANNOTATION: &str = "InvalidAnnotation";
    pub const ROUTE_WRITTEN: &str = "RouteWritten";
    pub const WAITING_FOR_SECRET: &str = "WaitingForSecret";
    pub const SUSPENDED: &str = "Suspended";
    /// `ForwardReady` True.
    pub const FORWARD_RESOLVED: &str = "ForwardResolved";
    /// A forward target's `urlFrom`, `signingSecretRef` or `headersFrom` Secret is missing.
    pub const FORWARD_SECRET_NOT_FOUND: &str = "ForwardSecretNotFound";
    pub const FORWARD_SECRET_KEY_MISSING: &str = "ForwardSecretKeyMissing";
    pub const FORWARD_SECRET_EMPTY: &str = "ForwardSecretEmpty";
    /// The `urlFrom` value is not an http(s) URL.
    pub const FORWARD_URL_INVALID: &str = "ForwardUrlInvalid";
    /// The `signingSecretRef` value is not a Standard Webhooks key.
    pub const FORWARD_SIGNING_KEY_INVALID: &str = "ForwardSigningKeyInvalid";
    /// A `headersFrom` key is a reserved or invalid header.
    pub const FORWARD_HEADER_INVALID: &str = "ForwardHeaderInvalid";
    /// `<name>-forward` exists but is not owned by the integration.
    pub const GENERATED_FORWARD_SECRET_CONFLICT: &str = "GeneratedForwardSecretConflict";
    /// Event: a signing key was generated into `<name>-forward`.
    pub const FORWARD_KEY_GENERATED: &str = "ForwardKeyGenerated";
    /// `Warning` True: `auth: none`, deliveries are not authenticated.
    pub const UNAUTHENTICATED: &str = "Unauthenticated";
}

/// Name of the Secret holding a generated secret: `<integration>-webhook`.
pub fn generated_secret_name(integration: &str) -> String {
    format!("{integration}-webhook")
}

/// What was found for the integration's shared secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// `spec.secretRef` is set.
    Referenced(RefLookup),
    /// `spec.secretRef` is absent: the generated Secret `<name>-webhook`.
    Generated(GeneratedLookup),
}

/// The referenced Secret as found.
#[derive(Clone, PartialEq, Eq)]
pub enum RefLookup {
    SecretMissing,
    KeyMissing { available: Vec<String> },
    Empty,
    Value(String),
}

impl std::fmt::Debug for RefLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefLookup::SecretMissing => f.write_str("SecretMissing"),
            RefLookup::KeyMissing { available } => write!(f, "KeyMissing({available:?})"),
            RefLookup::Empty => f.write_str("Empty"),
            RefLookup::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}

/// The generated Secret as found.
#[derive(Clone, PartialEq, Eq)]
pub enum GeneratedLookup {
    /// No `<name>-webhook` Secret yet: one will be created.
    Absent,
    /// It exists and this integration owns it; the value when it has a usable one.
    Owned(Option<String>),
    /// A Secret of that name exists but belongs to someone else: never overwrite it.
    NotOwned,
}

impl std::fmt::Debug for GeneratedLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GeneratedLookup::Absent => f.write_str("Absent"),
            GeneratedLookup::Owned(Some(_)) => f.write_str("Owned(<redacted>)"),
            GeneratedLookup::Owned(None) => f.write_str("Owned(None)"),
            GeneratedLookup::NotOwned => f.write_str("NotOwned"),
        }
    }
}

/// Everything [`plan`] looks at.
#[derive(Debug)]
pub struct PlanInput<'a> {
    pub integration: &'a WebhookIntegration,
    pub secret: SecretSource,
    /// The route written last time, read back from its route Secret.
    pub previous_route: Option<&'a Route>,
    /// Public base URL of the receivers, e.g. `https://hooks.example.com`.
    pub external_base_url: Option<&'a str>,
    /// Unix seconds.
    pub now: i64,
    /// A freshly generated path, used only when the integration has none yet.
    pub fresh_path: String,
    /// A freshly generated secret, used only when one must be generated.
    pub fresh_secret: String,
    /// The Secrets `spec.forward` names ([`forward_secret_names`]) as found in the
    /// integration's namespace, by name: `None` (or no entry) when there is no such Secret.
    pub forward_secrets: BTreeMap<String, Option<SecretData>>,
    /// The generated `<name>-forward` Secret as found.
    pub generated_forward: GeneratedForwardLookup,
    /// Fresh signing keys by target name
    /// ([`crate::domain::secret::generate_forward_signing_keys`]), used only for a target
    /// without `signingSecretRef` whose generated key does not exist yet.
    pub fresh_forward_keys: BTreeMap<String, SecretValue>,
}

/// The desired content of the generated `<name>-webhook` Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct GeneratedSecret {
    pub name: String,
    pub value: SecretValue,
    /// Full URL (or the path when no external base URL is configured).
    pub url: String,
}

impl std::fmt::Debug for GeneratedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedSecret")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The controller-owned part of the status.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredStatus {
    pub observed_generation: Option<i64>,
    pub url: Option<String>,
    pub path: Option<String>,
    pub secret_name: Option<String>,
    pub conditions: Vec<Condition>,
}

/// A Kubernetes Event the reconciler should emit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The outcome of planning one integration.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The route to serve. `None`: nothing can be served yet (no usable secret or an
    /// invalid spec and no earlier good route).
    pub route: Option<Route>,
    /// The generated Secret to create or update (only when hookwarden owns the secret).
    pub generated_secret: Option<GeneratedSecret>,
    /// The generated `<name>-forward` Secret to create or update: when a target uses a
    /// generated signing key, or the Secret exists and is owned (to drop removed targets'
    /// keys). Never when it belongs to someone else or the spec is invalid.
    pub generated_forward_secret: Option<GeneratedForwardSecret>,
    pub status: DesiredStatus,
    /// Re-plan after this long (the next previous-secret expiry), if anything expires.
    pub requeue_after: Option<Duration>,
    /// Events describing failures and notable changes.
    pub events: Vec<PlannedEvent>,
}

/// A key of a Secret as text, for the controller (Secrets read from the API server) and
/// standalone mode (Secrets written as YAML) alike. `stringData` wins over `data`, as it
/// does when the API server stores a Secret. Surrounding whitespace is trimmed: a trailing
/// newline from `kubectl create secret --from-file` is never part of a provider's secret.
pub fn lookup_key(secret: &Secret, key: &str) -> RefLookup {
    SecretData::from_secret(secret).lookup(key)
}

/// The integration's [`EXPECTED_INTERVAL_ANNOTATION`] in whole seconds (`None`: not set).
/// An unparsable or zero value is an error that says what to write instead.
pub fn expected_interval(annotations: &BTreeMap<String, String>) -> Result<Option<u64>, String> {
    let Some(value) = annotations.get(EXPECTED_INTERVAL_ANNOTATION) else {
        return Ok(None);
    };
    match crate::domain::duration::parse(value) {
        Ok(d) if d.as_secs() > 0 => Ok(Some(d.as_secs())),
        Ok(_) => Err(format!(
            "annotation {EXPECTED_INTERVAL_ANNOTATION}={value:?} is below one second: remove it or use a duration such as 30m, 6h or 168h (the silence alert is off until then)"
        )),
        Err(e) => Err(format!(
            "annotation {EXPECTED_INTERVAL_ANNOTATION}: {e} (the silence alert is off until then)"
        )),
    }
}

/// Every problem [`spec::resolve`] finds in a spec (empty: valid). The receivers compile
/// routes with the same function, so a spec they would refuse is `InvalidSpec` here.
pub fn validate(spec: &WebhookIntegrationSpec) -> Vec<spec::SpecProblem> {
    match spec::resolve(spec) {
        Ok(_) => Vec::new(),
        Err(SpecProblems(problems)) => problems,
    }
}

/// The accepted secrets after (possibly) a rotation: `current` first, then previous
/// values that have not expired, newest first, at most [`MAX_PREVIOUS_SECRETS`].
pub fn rotate(
    previous: &[RouteSecret],
    current: &str,
    ttl: Duration,
    now: i64,
) -> Vec<RouteSecret> {
    let mut out = vec![RouteSecret {
        value: SecretValue(current.to_string()),
        expires_at: None,
    }];
    let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    for old in previous {
        if old.value.expose() == current {
            continue;
        }
        let expires_at = match old.expires_at {
            Some(t) => t,
            // The old current secret: its grace period starts now.
            None => now.saturating_add(ttl_secs),
        };
        if expires_at > now && out.len() <= MAX_PREVIOUS_SECRETS {
            out.push(RouteSecret {
                value: old.value.clone(),
                expires_at: Some(expires_at),
            });
        }
    }
    out
}

/// The URL of a path under the external base URL.
pub fn endpoint_url(external_base_url: Option<&str>, path: &str) -> Option<String> {
    external_base_url.map(|base| format!("{}{}", base.trim_end_matches('/'), path))
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// Keeps `lastTransitionTime` from the existing condition when the status did not flip,
/// so an unchanged world produces a byte-identical status (and no write).
fn keep_transition_times(mut desired: Vec<Condition>, existing: &[Condition]) -> Vec<Condition> {
    for c in &mut desired {
        if let Some(old) = existing.iter().find(|o| o.type_ == c.type_)
            && old.status == c.status
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
    desired
}

/// The integration's current secret, with the `SecretResolved` condition's reason and
/// message.
#[derive(Clone, PartialEq, Eq)]
struct SecretResolved {
    value: String,
    reason: &'static str,
    message: String,
}

impl SecretResolved {
    fn new(value: String, reason: &'static str, message: String) -> Self {
        SecretResolved {
            value,
            reason,
            message,
        }
    }
}

/// Why the integration has no usable secret: the condition's reason and message.
#[derive(Clone, PartialEq, Eq)]
struct SecretUnresolved {
    reason: &'static str,
    message: String,
}

impl SecretUnresolved {
    fn new(reason: &'static str, message: String) -> Self {
        SecretUnresolved { reason, message }
    }
}

/// Plans one integration.
pub fn plan(input: PlanInput<'_>) -> Plan {
    let wi = input.integration;
    let name = wi.name_any();
    let namespace = wi.namespace().unwrap_or_default();
    let generation = wi.metadata.generation;
    let now_time =
        Time(jiff::Timestamp::from_second(input.now).unwrap_or(jiff::Timestamp::UNIX_EPOCH));
    let existing_status = wi.status.as_ref();
    let mut events = Vec::new();
    let expected_interval_seconds = match expected_interval(wi.annotations()) {
        Ok(seconds) => seconds,
        Err(message) => {
            events.push(PlannedEvent {
                warning: true,
                reason: reason::INVALID_ANNOTATION,
                message,
            });
            None
        }
    };

    // The path is assigned once and never changes: previous route, then status, then new.
    let path = input
        .previous_route
        .map(|r| r.path.clone())
        .filter(|p| is_valid_path(p))
        .or_else(|| {
            existing_status
                .and_then(|s| s.path.clone())
                .filter(|p| is_valid_path(p))
        })
        .unwrap_or(input.fresh_path);
    let url = endpoint_url(input.external_base_url, &path);

    // Which secret value is current, and what to tell the user about it.
    let mut generated_secret = None;
    let mut secret_name = None;
    let secret_outcome: Result<SecretResolved, SecretUnresolved> = match &input.secret {
        SecretSource::Referenced(lookup) => {
            let r = wi.spec.secret_ref.as_ref();
            let sname = r.map(|r| r.name.as_str()).unwrap_or_default();
            let key = r.map(|r| r.key.as_str()).unwrap_or_default();
            match lookup {
                RefLookup::Value(v) => Ok(SecretResolved::new(
                    v.clone(),
                    reason::SECRET_RESOLVED,
                    format!("using key {key:?} of Secret {namespace}/{sname}"),
                )),
                RefLookup::SecretMissing => Err(SecretUnresolved::new(
                    reason::SECRET_NOT_FOUND,
                    format!(
                        "Secret {namespace}/{sname} not found: create it with key {key:?}, or remove spec.secretRef to let hookwarden generate a secret"
                    ),
                )),
                RefLookup::KeyMissing { available } => Err(SecretUnresolved::new(
                    reason::SECRET_KEY_MISSING,
                    format!(
                        "Secret {namespace}/{sname} has no key {key:?} (keys: {}); fix spec.secretRef.key or add the key",
                        if available.is_empty() {
                            "none".to_string()
                        } else {
                            available.join(", ")
                        }
                    ),
                )),
                RefLookup::Empty => Err(SecretUnresolved::new(
                    reason::SECRET_EMPTY,
                    format!(
                        "key {key:?} of Secret {namespace}/{sname} is empty; put the sender's secret or token there"
                    ),
                )),
            }
        }
        SecretSource::Generated(lookup) => {
            let gname = generated_secret_name(&name);
            match lookup {
                GeneratedLookup::NotOwned => Err(SecretUnresolved::new(
                    reason::GENERATED_SECRET_CONFLICT,
                    format!("Secret {namespace}/{gname} exists but is not owned by this integration; delete or rename it, or point spec.secretRef at it"),
                )),
                GeneratedLookup::Owned(Some(v)) => Ok(SecretResolved::new(
                    v.clone(),
                    reason::SECRET_GENERATED,
                    format!("generated secret in Secret {namespace}/{gname} (key {GENERATED_SECRET_KEY:?})"),
                )),
                GeneratedLookup::Owned(None) | GeneratedLookup::Absent => {
                    events.push(PlannedEvent {
                        warning: false,
                        reason: reason::SECRET_GENERATED,
                        message: format!("generated a new secret into Secret {gname}; configure the sender with it"),
                    });
                    Ok(SecretResolved::new(
                        input.fresh_secret.clone(),
                        reason::SECRET_GENERATED,
                        format!("generated secret in Secret {namespace}/{gname} (key {GENERATED_SECRET_KEY:?})"),
                    ))
                }
            }
            .inspect(|SecretResolved { value, .. }| {
                secret_name = Some(gname.clone());
                generated_secret = Some(GeneratedSecret {
                    name: gname.clone(),
                    value: SecretValue(value.clone()),
                    url: url.clone().unwrap_or_else(|| path.clone()),
                });
            })
        }
    };

    let resolved = spec::resolve(&wi.spec);
    let spec_ok = resolved.is_ok();
    // Forward targets resolve independently of the inbound secret; with an invalid spec
    // there are no targets to resolve (the last good route keeps its own).
    let forward = resolved.as_ref().ok().map(|effective| {
        forward::plan_forward(
            &effective.forward,
            &forward::ForwardInputs {
                namespace: &namespace,
                integration: &name,
                secrets: &input.forward_secrets,
                generated: &input.generated_forward,
                fresh_keys: &input.fresh_forward_keys,
            },
        )
    });
    let ttl = resolved
        .as_ref()
        .map_or(spec::defaults::PREVIOUS_SECRET_TTL, |e| {
            e.previous_secret_ttl
        });
    let problems = resolved.err().map(|p| p.to_string()).unwrap_or_default();

    let mut conditions = Vec::new();
    let route;
    let ready_reason;
    let ready_message;
    match (&secret_outcome, spec_ok) {
        (
            Ok(SecretResolved {
                value: current,
                reason: reason_code,
                message,
            }),
            true,
        ) => {
            let previous = input
                .previous_route
                .map(|r| r.secrets.as_slice())
                .unwrap_or_default();
            let rotated = input.previous_route.is_some_and(|r| {
                r.secrets
                    .first()
                    .is_some_and(|s| s.value.expose() != current)
            });
            if rotated {
                events.push(PlannedEvent {
                    warning: false,
                    reason: "SecretRotated",
                    message: format!(
                        "secret changed; the previous one stays accepted for {}",
                        humanize(ttl)
                    ),
                });
            }
            let secrets = rotate(previous, current, ttl, input.now);
            conditions.push(condition(
                SECRET_RESOLVED,
                true,
                reason_code,
                message.clone(),
                generation,
                &now_time,
            ));
            let route_message = match &url {
                Some(u) => format!("serving {u}"),
                None => format!(
                    "serving path {path}; set the controller's external base URL to publish a full URL"
                ),
            };
            conditions.push(condition(
                ROUTE_READY,
                true,
                reason::ROUTE_WRITTEN,
                route_message,
                generation,
                &now_time,
            ));
            if wi.spec.suspend {
                ready_reason = reason::SUSPENDED;
                ready_message = "spec.suspend is true: deliveries are answered 503 with Retry-After so senders retry later".to_string();
            } else {
                ready_reason = reason::READY;
                ready_message = "endpoint verifies and accepts deliveries".to_string();
            }
            route = Some(Route {
                namespace: namespace.clone(),
                name: name.clone(),
                uid: wi.uid().unwrap_or_default(),
                generation: generation.unwrap_or_default(),
                path: path.clone(),
                secrets,
                spec: wi.spec.clone(),
                forward: forward
                    .as_ref()
                    .map(|f| f.entries.clone())
                    .unwrap_or_default(),
                replay: crate::route::ReplayRequest::from_annotations(wi.annotations()),
                expected_interval_seconds,
            });
        }
        (
            Ok(SecretResolved {
                reason: reason_code,
                message,
                ..
            }),
            false,
        ) => {
            let joined = problems.clone();
            events.push(PlannedEvent {
                warning: true,
                reason: reason::INVALID_SPEC,
                message: joined.clone(),
            });
            conditions.push(condition(
                SECRET_RESOLVED,
                true,
                reason_code,
                message.clone(),
                generation,
                &now_time,
            ));
            let keep = input.previous_route.cloned();
            let suffix = match &keep {
                Some(r) => format!(" (still serving generation {})", r.generation),
                None => String::new(),
            };
            conditions.push(condition(
                ROUTE_READY,
                false,
                reason::INVALID_SPEC,
                format!("{joined}{suffix}"),
                generation,
                &now_time,
            ));
            ready_reason = reason::INVALID_SPEC;
            ready_message = format!("{joined}{suffix}");
            route = keep;
        }
        (
            Err(SecretUnresolved {
                reason: reason_code,
                message,
            }),
            _,
        ) => {
            events.push(PlannedEvent {
                warning: true,
                reason: reason_code,
                message: message.clone(),
            });
            conditions.push(condition(
                SECRET_RESOLVED,
                false,
                reason_code,
                message.clone(),
                generation,
                &now_time,
            ));
            // Keep serving the last known secret: a deleted or edited Secret should not turn
            // into an outage that makes senders drop deliveries.
            let keep = input.previous_route.cloned();
            let (route_reason, route_message) = if !spec_ok {
                (reason::INVALID_SPEC, problems.clone())
            } else if keep.is_some() {
                (
                    reason::WAITING_FOR_SECRET,
                    "still accepting the last known secret until the Secret is fixed".to_string(),
                )
            } else {
                (
                    reason::WAITING_FOR_SECRET,
                    "no route until the secret resolves".to_string(),
                )
            };
            conditions.push(condition(
                ROUTE_READY,
                keep.is_some() && spec_ok,
                route_reason,
                route_message,
                generation,
                &now_time,
            ));
            ready_reason = reason_code;
            ready_message = message.clone();
            route = keep;
        }
    }
    let ready = spec_ok && secret_outcome.is_ok() && !wi.spec.suspend;
    conditions.insert(
        0,
        condition(
            READY,
            ready,
            ready_reason,
            ready_message,
            generation,
            &now_time,
        ),
    );
    if !wi.spec.forward.is_empty() {
        conditions.push(forward_condition(
            forward.as_ref(),
            &namespace,
            &name,
            generation,
            &now_time,
        ));
    }
    if wi.spec.provider == crate::crd::ProviderKind::Generic
        && wi.spec.auth == Some(crate::crd::GenericAuth::None)
    {
        conditions.push(condition(
            WARNING,
            true,
            reason::UNAUTHENTICATED,
            "auth: none: deliveries are not authenticated, the URL path is the only secret; keep status.url out of logs and tickets, restrict spec.allowedSourceRanges to the sender's addresses, and rotate the path (recreate the integration) if it leaks".to_string(),
            generation,
            &now_time,
        ));
    }
    let existing_conditions = existing_status
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let conditions = keep_transition_times(conditions, existing_conditions);

    let requeue_after = route.as_ref().and_then(|r| {
        r.secrets
            .iter()
            .filter_map(|s| s.expires_at)
            .filter(|t| *t > input.now)
            .min()
            .map(|t| Duration::from_secs(u64::try_from(t - input.now).unwrap_or(0) + 1))
    });

    let generated_forward_secret = forward.as_ref().and_then(|f| f.generated.clone());
    events.extend(forward.into_iter().flat_map(|f| f.events));

    Plan {
        route,
        generated_secret: if matches!(
            input.secret,
            SecretSource::Generated(GeneratedLookup::NotOwned)
        ) {
            None
        } else {
            generated_secret
        },
        generated_forward_secret,
        status: DesiredStatus {
            observed_generation: generation,
            url,
            path: Some(path),
            secret_name,
            conditions,
        },
        requeue_after,
        events,
    }
}

/// `ForwardReady`: True when every target resolved, else False naming each unresolved
/// target and what to fix (reason: the first problem's).
fn forward_condition(
    forward: Option<&forward::ForwardPlan>,
    namespace: &str,
    name: &str,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let Some(forward) = forward else {
        return condition(
            FORWARD_READY,
            false,
            reason::INVALID_SPEC,
            "the spec is invalid (see Ready); forward targets are resolved again once it is fixed"
                .to_string(),
            generation,
            now,
        );
    };
    match forward.problems.first() {
        None => {
            let names: Vec<&str> = forward.entries.iter().map(|e| e.name.as_str()).collect();
            let mut message = format!(
                "{} forward target{} resolved: {}",
                names.len(),
                if names.len() == 1 { "" } else { "s" },
                names.join(", ")
            );
            if !forward.generated_keys.is_empty() {
                message.push_str(&format!(
                    "; the signing key{} of {} {} generated in Secret {namespace}/{} (key = target name)",
                    if forward.generated_keys.len() == 1 { "" } else { "s" },
                    forward.generated_keys.join(", "),
                    if forward.generated_keys.len() == 1 { "is" } else { "are" },
                    generated_forward_secret_name(name),
                ));
            }
            condition(
                FORWARD_READY,
                true,
                reason::FORWARD_RESOLVED,
                message,
                generation,
                now,
            )
        }
        Some(first) => {
            let messages: Vec<&str> = forward
                .problems
                .iter()
                .map(|p| p.message.as_str())
                .collect();
            // A target's problems are consecutive: dedup names each target once.
            let mut targets: Vec<&str> =
                forward.problems.iter().map(|p| p.target.as_str()).collect();
            targets.dedup();
            condition(
                FORWARD_READY,
                false,
                first.reason,
                format!(
                    "{} (forwards to {} wait; other targets and inbound deliveries are not affected)",
                    messages.join("; "),
                    targets.join(", ")
                ),
                generation,
                now,
            )
        }
    }
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".to_string(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Whether the controller-owned part of `status` already matches `desired`.
pub fn status_matches(
    current: Option<&crate::crd::WebhookIntegrationStatus>,
    desired: &DesiredStatus,
) -> bool {
    let Some(current) = current else { return false };
    let controller_conditions: Vec<&Condition> = current
        .conditions
        .iter()
        .filter(|c| CONTROLLER_CONDITIONS.contains(&c.type_.as_str()))
        .collect();
    current.observed_generation == desired.observed_generation
        && current.url == desired.url
        && current.path == desired.path
        && current.secret_name == desired.secret_name
        && controller_conditions.len() == desired.conditions.len()
        && desired
            .conditions
            .iter()
            .all(|d| controller_conditions.contains(&d))
}

/// Equal statuses, but for the conditions' `lastTransitionTime`s (a plan made a second
/// later stamps a transition it did not see written a second later).
pub fn same_status_but_transition_times(a: &DesiredStatus, b: &DesiredStatus) -> bool {
    let untimed = |s: &DesiredStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(jiff::Timestamp::UNIX_EPOCH);
        }
        s
    };
    untimed(a) == untimed(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ProviderKind;

    /// The silence alert's annotation: a Go duration in whole seconds; anything else is
    /// an error that quotes the value and says what to write.
    #[test]
    fn the_expected_interval_annotation_is_parsed_or_explained() {
        let of = |v: Option<&str>| {
            let annotations: BTreeMap<String, String> = v
                .map(|v| (EXPECTED_INTERVAL_ANNOTATION.to_string(), v.to_string()))
                .into_iter()
                .collect();
            expected_interval(&annotations)
        };
        assert_eq!(of(None), Ok(None));
        assert_eq!(of(Some("6h")), Ok(Some(21_600)));
        assert_eq!(of(Some("1h30m")), Ok(Some(5_400)));
        let soon = of(Some("soon")).expect_err("not a duration");
        assert!(soon.contains("\"soon\"") && soon.contains("30m"), "{soon}");
        let zero = of(Some("0s")).expect_err("zero");
        assert!(zero.contains("below one second"), "{zero}");
    }

    use crate::crd::{
        HmacAlgorithm, SecretKeyRef, SignatureEncoding, SignatureSpec, WebhookIntegrationStatus,
    };
    use kube::api::ObjectMeta;

    const NOW: i64 = 1_800_000_000;
    const PATH: &str = "/hooks/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    fn integration(spec: WebhookIntegrationSpec) -> WebhookIntegration {
        let mut wi = WebhookIntegration::new("datadog-prod", spec);
        wi.metadata = ObjectMeta {
            name: Some("datadog-prod".into()),
            namespace: Some("payments".into()),
            uid: Some("uid-1".into()),
            generation: Some(3),
            ..ObjectMeta::default()
        };
        wi
    }

    fn spec(provider: ProviderKind) -> WebhookIntegrationSpec {
        serde_json::from_value(serde_json::json!({ "provider": provider })).expect("spec")
    }

    fn with_ref(mut s: WebhookIntegrationSpec) -> WebhookIntegrationSpec {
        s.secret_ref = Some(SecretKeyRef {
            name: "dd".into(),
            key: "token".into(),
        });
        s
    }

    fn input<'a>(
        wi: &'a WebhookIntegration,
        secret: SecretSource,
        prev: Option<&'a Route>,
    ) -> PlanInput<'a> {
        PlanInput {
            integration: wi,
            secret,
            previous_route: prev,
            external_base_url: Some("https://hooks.example.com/"),
            now: NOW,
            fresh_path: PATH.to_string(),
            fresh_secret: "fresh-secret".to_string(),
            forward_secrets: BTreeMap::new(),
            generated_forward: GeneratedForwardLookup::Absent,
            fresh_forward_keys: BTreeMap::new(),
        }
    }

    fn cond<'a>(p: &'a Plan, t: &str) -> &'a Condition {
        p.status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition")
    }

    #[test]
    fn generates_secret_and_route_when_no_secret_ref() {
        let wi = integration(spec(ProviderKind::Datadog));
        let p = plan(input(
            &wi,
            SecretSource::Generated(GeneratedLookup::Absent),
            None,
        ));
        let route = p.route.clone().expect("route");
        assert_eq!(route.path, PATH);
        assert_eq!(route.secrets.len(), 1);
        assert_eq!(route.secrets[0].value.expose(), "fresh-secret");
        let generated = p.generated_secret.clone().expect("generated");
        assert_eq!(generated.name, "datadog-prod-webhook");
        assert_eq!(generated.url, format!("https://hooks.example.com{PATH}"));
        assert_eq!(p.status.url.as_deref(), Some(generated.url.as_str()));
        assert_eq!(
            p.status.secret_name.as_deref(),
            Some("datadog-prod-webhook")
        );
        assert_eq!(p.status.observed_generation, Some(3));
        assert_eq!(cond(&p, READY).status, "True");
        assert_eq!(cond(&p, SECRET_RESOLVED).reason, reason::SECRET_GENERATED);
        assert!(
            p.events
                .iter()
                .any(|e| e.reason == reason::SECRET_GENERATED)
        );
    }

    #[test]
    fn existing_generated_secret_is_reused_not_regenerated() {
        let wi = integration(spec(ProviderKind::Datadog));
        let p = plan(input(
            &wi,
            SecretSource::Generated(GeneratedLookup::Owned(Some("kept".into()))),
            None,
        ));
        assert_eq!(p.route.expect("route").secrets[0].value.expose(), "kept");
        assert!(p.events.is_empty());
    }

    #[test]
    fn foreign_secret_with_generated_name_is_never_overwritten() {
        let wi = integration(spec(ProviderKind::Datadog));
        let p = plan(input(
            &wi,
            SecretSource::Generated(GeneratedLookup::NotOwned),
            None,
        ));
        assert!(p.generated_secret.is_none());
        assert!(p.route.is_none());
        assert_eq!(cond(&p, READY).reason, reason::GENERATED_SECRET_CONFLICT);
    }

    #[test]
    fn path_is_stable_across_plans_and_rotation() {
        let wi = integration(with_ref(spec(ProviderKind::Datadog)));
        let first = plan(input(
            &wi,
            SecretSource::Referenced(RefLookup::Value("one".into())),
            None,
        ));
        let route = first.route.expect("route");
        let mut again = input(
            &wi,
            SecretSource::Referenced(RefLookup::Value("two".into())),
            Some(&route),
        );
        again.fresh_path = "/hooks/BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB".into();
        let second = plan(again);
        assert_eq!(second.route.expect("route").path, PATH);
    }

    #[test]
    fn path_comes_from_status_after_route_secret_loss() {
        let mut wi = integration(with_ref(spec(ProviderKind::Github)));
        wi.status = Some(WebhookIntegrationStatus {
            path: Some(PATH.into()),
            ..Default::default()
        });
        let mut i = input(
            &wi,
            SecretSource::Referenced(RefLookup::Value("s".into())),
            None,
        );
        i.fresh_path = "/hooks/BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB".into();
        assert_eq!(plan(i).status.path.as_deref(), Some(PATH));
    }

    #[test]
    fn rotation_keeps_previous_secret_for_ttl_then_drops_it() {
        let mut s = with_ref(spec(ProviderKind::Github));
        s.previous_secret_ttl = Some("1h".into());
        let wi = integration(s);
        let first = plan(input(
            &wi,
            SecretSource::Referenced(RefLookup::Value("old".into())),
            None,
        ))
        .route
        .expect("route");
        let rotated = plan(input(
            &wi,
            SecretSource::Referenced(RefLookup::Value("new".into())),
            Some(&first),
        ));
        let route = rotated.route.clone().expect("route");
        assert_eq!(route.secrets.len(), 2);
        assert_eq!(route.secrets[0].value.expose(), "new");
        assert_eq!(route.secrets[1].value.expose(), "old");
        assert_eq!(route.secrets[1].expires_at, Some(NOW + 3600));
        assert_eq!(rotated.requeue_after, Some(Duration::from_secs(3601)));
        assert!(rotated.events.iter().any(|e| e.reason == "SecretRotated"));
        assert_eq!(route.live_secrets(NOW + 3599).count(), 2);
        assert_eq!(route.live_secrets(NOW + 3600).count(), 1);
        // Re-planning later with the same value keeps the expiry (no restart of the window)
        // and drops the old value once it expired.
        let mut later = input(
            &wi,
            SecretSource::Referenced(RefLookup::Value("new".into())),
            Some(&route),
        );
        later.now = NOW + 1800;
        assert_eq!(
            plan(later).route.expect("route").secrets[1].expires_at,
            Some(NOW + 3600)
        );
        let mut expired = input(
            &wi,
            SecretSource::Referenced(RefLookup::Value("new".into())),
            Some(&route),
        );
        expired.now = NOW + 3600;
        let p = plan(expired);
        assert_eq!(p.route.expect("route").secrets.len(), 1);
        assert_eq!(p.requeue_after, None);
    }

    #[test]
    fn zero_ttl_drops_previous_secret_at_once() {
        let mut s = with_ref(spec(ProviderKind::Github));
        s.previous_secret_ttl = Some("0s".into());
        let wi = integration(s);
        let first = plan(input(
            &wi,
            SecretSource::Referenced(RefLookup::Value("old".into())),
            None,
        ))
        .route
        .expect("route");
        let p = plan(input(
            &wi,
            SecretSource::Referenced(RefLookup::Value("new".into())),
            Some(&first),
        ));
        assert_eq!(p.route.expect("route").secrets.len(), 1);
    }

    #[test]
    fn rapid_rotations_keep_a_bounded_number_of_previous_secrets() {
        let mut secrets = vec![RouteSecret {
            value: SecretValue("s0".into()),
            expires_at: None,
        }];
        for i in 1..10 {
            secrets = rotate(&secrets, &format!("s{i}"), Duration::from_secs(3600), NOW);
        }
        assert_eq!(secrets.len(), 1 + MAX_PREVIOUS_SECRETS);
        assert_eq!(secrets[0].value.expose(), "s9");
        assert_eq!(secrets[1].value.expose(), "s8");
    }

    #[test]
    fn missing_secret_is_a_condition_not_a_route() {
        let wi = integration(with_ref(spec(ProviderKind::Datadog)));
        let p = plan(input(
            &wi,
            SecretSource::Referenced(RefLookup::SecretMissing),
            None,
        ));
        assert!(p.route.is_none());
        let ready = cond(&p, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reason::SECRET_NOT_FOUND)
        );
        assert!(ready.message.contains("payments/dd"), "{}", ready.message);
        assert_eq!(cond(&p, ROUTE_READY).reason, reason::WAITING_FOR_SECRET);
        assert!(
            p.events
                .iter()
                .any(|e| e.warning && e.reason == reason::SECRET_NOT_FOUND)
        );
    }

    #[test]
    fn missing_key_names_the_keys_that_exist() {
        let wi = integration(with_ref(spec(ProviderKind::Datadog)));
        let p = plan(input(
            &wi,
            SecretSource::Referenced(RefLookup::KeyMissing {
                available: vec!["tokn".into()],
            }),
            None,
        ));
        let c = cond(&p, SECRET_RESOLVED);
        assert_eq!(c.reason, reason::SECRET_KEY_MISSING);
        assert!(c.message.contains("tokn"));
        assert!(
            !format!("{p:?}").contains("fresh-secret"),
            "secrets leak into Debug"
        );
    }

    #[test]
    fn deleted_secret_keeps_serving_the_last_known_one() {
        let wi = integration(with_ref(spec(ProviderKind::Datadog)));
        let first = plan(input(
            &wi,
            SecretSource::Referenced(RefLookup::Value("v".into())),
            None,
        ))
        .route
        .expect("route");
        let p = plan(input(
            &wi,
            SecretSource::Referenced(RefLookup::SecretMissing),
            Some(&first),
        ));
        assert_eq!(p.route.as_ref(), Some(&first));
        assert_eq!(cond(&p, READY).status, "False");
        assert_eq!(cond(&p, ROUTE_READY).status, "True");
    }

    #[test]
    fn invalid_spec_is_reported_and_last_good_route_kept() {
        let mut s = with_ref(spec(ProviderKind::Datadog));
        s.allowed_source_ranges = vec!["10.0.0.0/33".into()];
        let wi = integration(s);
        let p = plan(input(
            &wi,
            SecretSource::Referenced(RefLookup::Value("v".into())),
            None,
        ));
        assert!(p.route.is_none());
        let ready = cond(&p, READY);
        assert_eq!(ready.reason, reason::INVALID_SPEC);
        assert!(ready.message.contains("10.0.0.0/33"));
    }

    #[test]
    fn what_only_compiling_the_route_finds_is_invalid_spec_with_each_problem_named() {
        let mut s = with_ref(spec(ProviderKind::Linear));
        s.token_header = Some("X-Token".into());
        s.schema = Some(serde_json::json!({"type": 12}));
        s.incidents = Some(Box::new(crate::crd::IncidentMapping {
            title_from: Some("/title".into()),
            ..Default::default()
        }));
        let wi = integration(s);
        let p = plan(input(
            &wi,
            SecretSource::Referenced(RefLookup::Value("v".into())),
            None,
        ));
        assert!(p.route.is_none(), "the last good route keeps serving");
        let ready = cond(&p, READY);
        assert_eq!(ready.reason, reason::INVALID_SPEC);
        for named in ["spec.tokenHeader", "spec.schema", "spec.incidents.idFrom"] {
            assert!(ready.message.contains(named), "{named}: {}", ready.message);
        }
    }

    #[test]
    fn validate_catches_what_the_schema_cannot() {
        let mut s = spec(ProviderKind::Generic);
        assert!(validate(&s).iter().any(|m| {
            m.to_string()
                .contains("provider generic needs spec.signature")
        }));
        s.signature = Some(Box::new(SignatureSpec {
            header: "X-Sig".into(),
            algorithm: HmacAlgorithm::Sha256,
            encoding: SignatureEncoding::Hex,
            prefix: String::new(),
            signed_content: "{timestamp}.{body}".into(),
            timestamp_header: None,
            id_header: None,
            tolerance_seconds: None,
        }));
        assert_eq!(validate(&s).len(), 1, "{:?}", validate(&s));
        let mut g = spec(ProviderKind::Github);
        g.previous_secret_ttl = Some("1 day".into());
        assert_eq!(validate(&g).len(), 1);
    }

    #[test]
    fn auth_none_is_ready_with_a_warning_and_token_auth_without() {
        let none: WebhookIntegrationSpec =
            serde_yaml::from_str("provider: generic\nauth: none").expect("spec");
        let wi = integration(none);
        let p = plan(input(
            &wi,
            SecretSource::Generated(GeneratedLookup::Absent),
            None,
        ));
        assert_eq!(cond(&p, READY).status, "True");
        let w = cond(&p, WARNING);
        assert_eq!(
            (w.status.as_str(), w.reason.as_str()),
            ("True", reason::UNAUTHENTICATED)
        );
        assert!(w.message.contains("only secret"), "{}", w.message);

        let bearer: WebhookIntegrationSpec =
            serde_yaml::from_str("provider: generic\nauth: bearer").expect("spec");
        let wi = integration(bearer);
        let p = plan(input(
            &wi,
            SecretSource::Generated(GeneratedLookup::Absent),
            None,
        ));
        assert_eq!(cond(&p, READY).status, "True");
        assert!(!p.status.conditions.iter().any(|c| c.type_ == WARNING));
    }

    #[test]
    fn suspended_integration_is_routed_but_not_ready() {
        let mut s = with_ref(spec(ProviderKind::Datadog));
        s.suspend = true;
        let wi = integration(s);
        let p = plan(input(
            &wi,
            SecretSource::Referenced(RefLookup::Value("v".into())),
            None,
        ));
        assert!(p.route.as_ref().expect("route").spec.suspend);
        assert_eq!(cond(&p, READY).reason, reason::SUSPENDED);
    }

    #[test]
    fn unchanged_world_matches_current_status() {
        let mut wi = integration(with_ref(spec(ProviderKind::Datadog)));
        let p = plan(input(
            &wi,
            SecretSource::Referenced(RefLookup::Value("v".into())),
            None,
        ));
        let route = p.route.clone().expect("route");
        wi.status = Some(WebhookIntegrationStatus {
            observed_generation: p.status.observed_generation,
            url: p.status.url.clone(),
            path: p.status.path.clone(),
            secret_name: p.status.secret_name.clone(),
            conditions: p.status.conditions.clone(),
            ..Default::default()
        });
        let mut later = input(
            &wi,
            SecretSource::Referenced(RefLookup::Value("v".into())),
            Some(&route),
        );
        later.now = NOW + 600;
        let again = plan(later);
        assert!(status_matches(wi.status.as_ref(), &again.status));
        assert_eq!(again.route.as_ref(), Some(&route));
        // A spec change (new generation) no longer matches.
        wi.metadata.generation = Some(4);
        let changed = plan(input(
            &wi,
            SecretSource::Referenced(RefLookup::Value("v".into())),
            Some(&route),
        ));
        assert!(!status_matches(wi.status.as_ref(), &changed.status));
    }

    #[test]
    fn without_external_base_url_the_status_has_the_path_only() {
        let wi = integration(spec(ProviderKind::Github));
        let mut i = input(&wi, SecretSource::Generated(GeneratedLookup::Absent), None);
        i.external_base_url = None;
        let p = plan(i);
        assert_eq!(p.status.url, None);
        assert_eq!(p.generated_secret.expect("generated").url, PATH);
    }

    // --- spec.forward -------------------------------------------------------------

    fn whsec(byte: u8) -> String {
        use base64::Engine as _;
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode([byte; 32])
        )
    }

    fn forwarding(targets: serde_json::Value) -> WebhookIntegration {
        let mut s = with_ref(spec(ProviderKind::Datadog));
        s.forward = serde_json::from_value(targets).expect("forward targets");
        integration(s)
    }

    fn data(pairs: &[(&str, &str)]) -> Option<SecretData> {
        Some(pairs.iter().map(|(k, v)| (*k, *v)).collect())
    }

    /// A plan of `wi` with a resolved inbound secret and the given forward inputs.
    fn forward_input<'a>(
        wi: &'a WebhookIntegration,
        secrets: &[(&str, Option<SecretData>)],
        generated: GeneratedForwardLookup,
    ) -> PlanInput<'a> {
        let mut i = input(
            wi,
            SecretSource::Referenced(RefLookup::Value("v".into())),
            None,
        );
        i.forward_secrets = secrets
            .iter()
            .map(|(n, d)| (n.to_string(), d.clone()))
            .collect();
        i.generated_forward = generated;
        i.fresh_forward_keys = crate::domain::secret::generate_forward_signing_keys(&wi.spec)
            .into_keys()
            .map(|t| (t, SecretValue(whsec(7))))
            .collect();
        i
    }

    fn entry<'a>(p: &'a Plan, target: &str) -> Option<&'a crate::route::RouteForward> {
        p.route
            .as_ref()
            .expect("route")
            .forward
            .iter()
            .find(|f| f.name == target)
    }

    #[test]
    fn url_target_gets_a_generated_key_into_the_forward_secret() {
        let wi = forwarding(serde_json::json!([
            {"name": "tickets", "url": "https://tickets.example.com/in"}
        ]));
        let p = plan(forward_input(&wi, &[], GeneratedForwardLookup::Absent));
        let e = entry(&p, "tickets").expect("tickets");
        assert_eq!(e.url.expose(), "https://tickets.example.com/in");
        assert_eq!(
            e.signing_key.as_ref().map(SecretValue::expose),
            Some(whsec(7).as_str())
        );
        assert!(e.headers.is_empty());
        let g = p.generated_forward_secret.clone().expect("<name>-forward");
        assert_eq!(g.name, "datadog-prod-forward");
        assert_eq!(
            g.keys.get("tickets").map(SecretValue::expose),
            Some(whsec(7).as_str())
        );
        let c = cond(&p, FORWARD_READY);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reason::FORWARD_RESOLVED)
        );
        assert!(
            c.message.contains("payments/datadog-prod-forward"),
            "{}",
            c.message
        );
        assert!(
            p.events
                .iter()
                .any(|e| !e.warning && e.reason == reason::FORWARD_KEY_GENERATED)
        );
        assert!(
            !format!("{p:?}").contains(&whsec(7)),
            "a key leaks into Debug"
        );
    }

    #[test]
    fn url_from_and_signing_secret_ref_resolve_from_their_secrets() {
        let wi = forwarding(serde_json::json!([{
            "name": "chat",
            "urlFrom": {"secretRef": {"name": "slack", "key": "url"}},
            "signingSecretRef": {"name": "keys", "key": "chat"},
        }]));
        let p = plan(forward_input(
            &wi,
            &[
                (
                    "slack",
                    data(&[("url", "https://hooks.slack.com/services/T/B/x\n")]),
                ),
                ("keys", data(&[("chat", &whsec(1))])),
            ],
            GeneratedForwardLookup::Absent,
        ));
        let e = entry(&p, "chat").expect("chat");
        assert_eq!(e.url.expose(), "https://hooks.slack.com/services/T/B/x");
        assert_eq!(
            e.signing_key.as_ref().map(SecretValue::expose),
            Some(whsec(1).as_str())
        );
        assert!(
            p.generated_forward_secret.is_none(),
            "no generated key needed"
        );
        assert_eq!(cond(&p, FORWARD_READY).status, "True");
        let text = format!("{p:?}");
        assert!(
            !text.contains("hooks.slack.com") && !text.contains(&whsec(1)),
            "{text}"
        );
    }

    #[test]
    fn a_missing_url_from_secret_drops_that_target_only_and_inbound_stays_ready() {
        let wi = forwarding(serde_json::json!([
            {"name": "chat", "urlFrom": {"secretRef": {"name": "slack", "key": "url"}}, "format": "slack", "send": ["incident.opened"]},
            {"name": "tickets", "url": "https://tickets.example.com/in"},
        ]));
        let p = plan(forward_input(
            &wi,
            &[("slack", None)],
            GeneratedForwardLookup::Absent,
        ));
        assert!(entry(&p, "chat").is_none());
        assert!(entry(&p, "tickets").is_some());
        assert_eq!(cond(&p, READY).status, "True", "inbound keeps working");
        assert_eq!(cond(&p, ROUTE_READY).status, "True");
        let c = cond(&p, FORWARD_READY);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reason::FORWARD_SECRET_NOT_FOUND)
        );
        assert!(
            c.message
                .contains("spec.forward[chat].urlFrom.secretRef: Secret payments/slack not found")
                && c.message.contains("\"url\""),
            "{}",
            c.message
        );
        assert!(!c.message.contains("tickets"), "{}", c.message);
        assert!(p.events.iter().any(|e| e.warning
            && e.reason == reason::FORWARD_SECRET_NOT_FOUND
            && e.message.contains("spec.forward[chat]")));
        // The key, the missing key and the empty value say so.
        let missing_key = plan(forward_input(
            &wi,
            &[("slack", data(&[("webhook", "https://x")]))],
            GeneratedForwardLookup::Absent,
        ));
        let c = cond(&missing_key, FORWARD_READY);
        assert_eq!(c.reason, reason::FORWARD_SECRET_KEY_MISSING);
        assert!(c.message.contains("keys: webhook"), "{}", c.message);
        let empty = plan(forward_input(
            &wi,
            &[("slack", data(&[("url", " \n")]))],
            GeneratedForwardLookup::Absent,
        ));
        assert_eq!(
            cond(&empty, FORWARD_READY).reason,
            reason::FORWARD_SECRET_EMPTY
        );
    }

    #[test]
    fn a_url_from_value_that_is_no_url_is_refused_without_showing_it() {
        let wi = forwarding(serde_json::json!([
            {"name": "chat", "urlFrom": {"secretRef": {"name": "slack", "key": "url"}}}
        ]));
        let p = plan(forward_input(
            &wi,
            &[("slack", data(&[("url", "ftp://s3cr3t.example.com/T/B")]))],
            GeneratedForwardLookup::Absent,
        ));
        assert!(entry(&p, "chat").is_none());
        let c = cond(&p, FORWARD_READY);
        assert_eq!(c.reason, reason::FORWARD_URL_INVALID);
        assert!(!c.message.contains("s3cr3t"), "{}", c.message);
        assert!(p.events.iter().all(|e| !e.message.contains("s3cr3t")));
    }

    #[test]
    fn a_generated_key_is_created_once_and_stays_across_plans() {
        let wi = forwarding(serde_json::json!([
            {"name": "tickets", "url": "https://tickets.example.com/in"}
        ]));
        let first = plan(forward_input(&wi, &[], GeneratedForwardLookup::Absent));
        let keys = first.generated_forward_secret.expect("generated").keys;
        let stored: SecretData = keys
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect();
        let mut again = forward_input(&wi, &[], GeneratedForwardLookup::Owned(stored));
        again.fresh_forward_keys = BTreeMap::from([("tickets".into(), SecretValue(whsec(9)))]);
        let second = plan(again);
        assert_eq!(
            entry(&second, "tickets").and_then(|e| e.signing_key.clone()),
            Some(SecretValue(whsec(7))),
            "the stored key, not the fresh one"
        );
        assert_eq!(
            second.generated_forward_secret.expect("generated").keys,
            keys
        );
        assert!(
            !second
                .events
                .iter()
                .any(|e| e.reason == reason::FORWARD_KEY_GENERATED),
            "{:?}",
            second.events
        );
        // A stored key edited into something unusable is replaced.
        let broken: SecretData = [("tickets", "not base64!")].into_iter().collect();
        let mut replaced = forward_input(&wi, &[], GeneratedForwardLookup::Owned(broken));
        replaced.fresh_forward_keys = BTreeMap::from([("tickets".into(), SecretValue(whsec(9)))]);
        let p = plan(replaced);
        assert_eq!(
            entry(&p, "tickets").and_then(|e| e.signing_key.clone()),
            Some(SecretValue(whsec(9)))
        );
    }

    #[test]
    fn removed_targets_keys_are_dropped_and_others_kept() {
        let wi = forwarding(serde_json::json!([
            {"name": "tickets", "url": "https://tickets.example.com/in"},
            {"name": "signed", "url": "https://p.example.com/", "signingSecretRef": {"name": "keys", "key": "k"}},
        ]));
        let stored: SecretData = [("tickets", whsec(1)), ("gone", whsec(2))]
            .into_iter()
            .collect();
        let p = plan(forward_input(
            &wi,
            &[("keys", data(&[("k", &whsec(3))]))],
            GeneratedForwardLookup::Owned(stored),
        ));
        let keys = p.generated_forward_secret.expect("generated").keys;
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["tickets"]);
        assert_eq!(keys["tickets"].expose(), whsec(1));

        // Every target gone: the owned Secret is applied without keys.
        let none = forwarding(serde_json::json!([]));
        let stored: SecretData = [("tickets", whsec(1))].into_iter().collect();
        let p = plan(forward_input(
            &none,
            &[],
            GeneratedForwardLookup::Owned(stored),
        ));
        assert_eq!(
            p.generated_forward_secret.expect("generated").keys,
            BTreeMap::new()
        );
        assert!(
            !p.status.conditions.iter().any(|c| c.type_ == FORWARD_READY),
            "no ForwardReady without spec.forward"
        );
        assert!(p.route.expect("route").forward.is_empty());
    }

    #[test]
    fn service_targets_use_the_cluster_dns_name_in_the_integrations_namespace() {
        let wi = forwarding(serde_json::json!([
            {"name": "svc", "service": {"name": "intake", "port": 8080, "path": "/hooks"}, "format": "raw"}
        ]));
        let p = plan(forward_input(&wi, &[], GeneratedForwardLookup::Absent));
        assert_eq!(
            entry(&p, "svc").expect("svc").url.expose(),
            "http://intake.payments.svc:8080/hooks"
        );
    }

    #[test]
    fn headers_from_maps_every_key_to_a_header_and_refuses_reserved_ones() {
        let wi = forwarding(serde_json::json!([
            {"name": "tickets", "url": "https://tickets.example.com/in", "headersFrom": {"secretRef": {"name": "auth"}}}
        ]));
        let p = plan(forward_input(
            &wi,
            &[(
                "auth",
                data(&[("Authorization", "Bearer t0k3n\n"), ("X-Team", "payments")]),
            )],
            GeneratedForwardLookup::Absent,
        ));
        let headers = &entry(&p, "tickets").expect("tickets").headers;
        assert_eq!(headers["Authorization"].expose(), "Bearer t0k3n");
        assert_eq!(headers["X-Team"].expose(), "payments");
        assert!(!format!("{p:?}").contains("t0k3n"));

        let reserved = plan(forward_input(
            &wi,
            &[(
                "auth",
                data(&[("webhook-signature", "v1,x"), ("Bad Name", "x")]),
            )],
            GeneratedForwardLookup::Absent,
        ));
        assert!(entry(&reserved, "tickets").is_none());
        let c = cond(&reserved, FORWARD_READY);
        assert_eq!(c.reason, reason::FORWARD_HEADER_INVALID);
        assert!(
            c.message.contains("webhook-signature") && c.message.contains("Bad Name"),
            "{}",
            c.message
        );
        let missing = plan(forward_input(
            &wi,
            &[("auth", None)],
            GeneratedForwardLookup::Absent,
        ));
        assert_eq!(
            cond(&missing, FORWARD_READY).reason,
            reason::FORWARD_SECRET_NOT_FOUND
        );
    }

    #[test]
    fn a_forward_secret_owned_by_someone_else_is_a_conflict_never_overwritten() {
        let wi = forwarding(serde_json::json!([
            {"name": "tickets", "url": "https://tickets.example.com/in"},
            {"name": "signed", "url": "https://p.example.com/", "signingSecretRef": {"name": "keys", "key": "k"}},
        ]));
        let p = plan(forward_input(
            &wi,
            &[("keys", data(&[("k", &whsec(3))]))],
            GeneratedForwardLookup::NotOwned,
        ));
        assert!(p.generated_forward_secret.is_none());
        assert!(entry(&p, "tickets").is_none());
        assert!(
            entry(&p, "signed").is_some(),
            "a referenced key needs no generated Secret"
        );
        let c = cond(&p, FORWARD_READY);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reason::GENERATED_FORWARD_SECRET_CONFLICT)
        );
        assert!(
            c.message.contains("payments/datadog-prod-forward"),
            "{}",
            c.message
        );
        assert_eq!(cond(&p, READY).status, "True");
    }

    #[test]
    fn an_invalid_signing_key_is_named() {
        let wi = forwarding(serde_json::json!([
            {"name": "signed", "url": "https://p.example.com/", "signingSecretRef": {"name": "keys", "key": "k"}},
        ]));
        let p = plan(forward_input(
            &wi,
            &[("keys", data(&[("k", "not base64!")]))],
            GeneratedForwardLookup::Absent,
        ));
        assert_eq!(
            cond(&p, FORWARD_READY).reason,
            reason::FORWARD_SIGNING_KEY_INVALID
        );
        assert!(entry(&p, "signed").is_none());
    }

    #[test]
    fn an_invalid_spec_reports_forward_ready_false_and_writes_no_forward_secret() {
        let mut wi = forwarding(serde_json::json!([
            {"name": "tickets", "url": "https://tickets.example.com/in"}
        ]));
        wi.spec.allowed_source_ranges = vec!["10.0.0.0/33".into()];
        let p = plan(forward_input(&wi, &[], GeneratedForwardLookup::Absent));
        assert_eq!(cond(&p, FORWARD_READY).reason, reason::INVALID_SPEC);
        assert!(p.generated_forward_secret.is_none());
    }

    #[test]
    fn forward_ready_takes_part_in_status_matching() {
        let mut wi = forwarding(serde_json::json!([
            {"name": "chat", "urlFrom": {"secretRef": {"name": "slack", "key": "url"}}}
        ]));
        let first = plan(forward_input(
            &wi,
            &[("slack", None)],
            GeneratedForwardLookup::Absent,
        ));
        wi.status = Some(WebhookIntegrationStatus {
            observed_generation: first.status.observed_generation,
            url: first.status.url.clone(),
            path: first.status.path.clone(),
            secret_name: first.status.secret_name.clone(),
            conditions: first.status.conditions.clone(),
            ..Default::default()
        });
        let same = plan(forward_input(
            &wi,
            &[("slack", None)],
            GeneratedForwardLookup::Absent,
        ));
        assert!(status_matches(wi.status.as_ref(), &same.status));
        let fixed = plan(forward_input(
            &wi,
            &[("slack", data(&[("url", "https://hooks.slack.com/x")]))],
            GeneratedForwardLookup::Absent,
        ));
        assert!(!status_matches(wi.status.as_ref(), &fixed.status));
        assert_eq!(cond(&fixed, FORWARD_READY).status, "True");
    }

    #[test]
    fn the_secrets_a_spec_names_include_the_forward_ones() {
        let wi = forwarding(serde_json::json!([
            {"name": "a", "urlFrom": {"secretRef": {"name": "slack", "key": "url"}}, "headersFrom": {"secretRef": {"name": "auth"}}},
            {"name": "b", "url": "https://x.example.com/", "signingSecretRef": {"name": "keys", "key": "b"}},
        ]));
        assert_eq!(
            forward_secret_names(&wi.spec)
                .into_iter()
                .collect::<Vec<_>>(),
            ["auth", "keys", "slack"]
        );
        for name in ["dd", "slack", "auth", "keys"] {
            assert!(names_secret(&wi.spec, name), "{name}");
        }
        assert!(!names_secret(&wi.spec, "other"));
    }
}
