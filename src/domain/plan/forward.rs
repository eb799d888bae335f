//! Planning `spec.forward`: each target's URL, signing key and headers resolved from the
//! Secrets the spec names, the generated `<name>-forward` Secret, and the `ForwardReady`
//! condition. A target that does not resolve gets no route entry (its forwards wait) and
//! is named on `ForwardReady`; inbound deliveries are not affected, so `Ready` is not.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::Secret;

use super::{PlannedEvent, RefLookup, reason};
use crate::crd::{SecretKeyRef, WebhookIntegrationSpec};
use crate::domain::forward::{SigningKey, is_reserved_header};
use crate::domain::spec::{Destination, EffectiveForward, SigningSource};
use crate::route::{RouteForward, SecretValue};

/// A Secret's data as text: `stringData` over `data` (as the API server stores it), values
/// as written (a lookup trims them). `Debug` shows the keys only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretData(BTreeMap<String, SecretValue>);

impl SecretData {
    /// The data of a Secret read from the API server or a YAML file.
    pub fn from_secret(secret: &Secret) -> SecretData {
        let mut data: BTreeMap<String, SecretValue> = secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| {
                (
                    k.clone(),
                    SecretValue(String::from_utf8_lossy(&v.0).into_owned()),
                )
            })
            .collect();
        data.extend(
            secret
                .string_data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), SecretValue(v.clone()))),
        );
        SecretData(data)
    }

    /// `key` as a [`RefLookup`]: surrounding whitespace trimmed (a trailing newline from
    /// `kubectl create secret --from-file` is never part of a URL or key), blank = empty.
    pub fn lookup(&self, key: &str) -> RefLookup {
        match self.0.get(key) {
            None => RefLookup::KeyMissing {
                available: self.0.keys().cloned().collect(),
            },
            Some(v) if v.expose().trim().is_empty() => RefLookup::Empty,
            Some(v) => RefLookup::Value(v.expose().trim().to_string()),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Every key with its trimmed value.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.expose().trim()))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for SecretData {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> SecretData {
        SecretData(
            iter.into_iter()
                .map(|(k, v)| (k.into(), SecretValue(v.into())))
                .collect(),
        )
    }
}

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SecretData")
            .field(&self.0.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The generated `<name>-forward` Secret as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GeneratedForwardLookup {
    /// Not there yet: created when a target needs a generated key.
    Absent,
    /// It exists and this integration owns it: its keys (target name → signing key).
    Owned(SecretData),
    /// A Secret of that name belongs to someone else: never overwritten.
    NotOwned,
}

/// The desired content of `<name>-forward`: one signing key per target that uses a
/// generated key, key = the target's name. Keys of removed targets are not in it (the
/// server-side apply drops them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedForwardSecret {
    pub name: String,
    pub keys: BTreeMap<String, SecretValue>,
}

/// Why one forward target has no route entry: the reason (the Event's, and the
/// condition's when it is the first) and what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardProblem {
    pub target: String,
    pub reason: &'static str,
    pub message: String,
}

/// The Secrets `spec.forward` names (`urlFrom`, `signingSecretRef`, `headersFrom`), each
/// once: the ones to look up for [`super::PlanInput::forward_secrets`].
pub fn forward_secret_names(spec: &WebhookIntegrationSpec) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for t in &spec.forward {
        if let Some(from) = &t.url_from {
            names.insert(from.secret_ref.name.clone());
        }
        if let Some(r) = &t.signing_secret_ref {
            names.insert(r.name.clone());
        }
        if let Some(h) = &t.headers_from {
            names.insert(h.secret_ref.name.clone());
        }
    }
    names
}

/// Whether the spec names the Secret `name` (its `secretRef` or a forward target's), so a
/// change to that Secret must re-plan the integration.
pub fn names_secret(spec: &WebhookIntegrationSpec, name: &str) -> bool {
    spec.secret_ref.as_ref().is_some_and(|r| r.name == name)
        || forward_secret_names(spec).contains(name)
}

/// What [`plan_forward`] decided.
#[derive(Debug, Default)]
pub(super) struct ForwardPlan {
    /// Route entries of the targets that resolved, in spec order.
    pub entries: Vec<RouteForward>,
    /// Targets that did not, each problem once.
    pub problems: Vec<ForwardProblem>,
    pub generated: Option<GeneratedForwardSecret>,
    /// Names of the targets whose key is generated.
    pub generated_keys: Vec<String>,
    pub events: Vec<PlannedEvent>,
}

/// Where the inputs of [`plan_forward`] come from.
pub(super) struct ForwardInputs<'a> {
    pub namespace: &'a str,
    pub integration: &'a str,
    pub secrets: &'a BTreeMap<String, Option<SecretData>>,
    pub generated: &'a GeneratedForwardLookup,
    pub fresh_keys: &'a BTreeMap<String, SecretValue>,
}

/// A target's signing key and where it came from.
enum Key {
    /// `signingSecretRef`.
    Referenced(SecretValue),
    /// The generated key already in `<name>-forward`.
    Kept(SecretValue),
    /// A fresh key, written to `<name>-forward` now.
    Fresh(SecretValue),
}

impl Key {
    fn value(&self) -> &SecretValue {
        match self {
            Key::Referenced(v) | Key::Kept(v) | Key::Fresh(v) => v,
        }
    }
}

/// Plans every target of a resolved spec.
pub(super) fn plan_forward(
    targets: &[EffectiveForward],
    inputs: &ForwardInputs<'_>,
) -> ForwardPlan {
    let mut out = ForwardPlan::default();
    let mut generated_keys = BTreeMap::new();
    for target in targets {
        let mut problems = Vec::new();
        let url = resolve_url(target, inputs, &mut problems);
        let key = resolve_key(target, inputs, &mut problems);
        let headers = resolve_headers(target, inputs, &mut problems);
        // A generated key is kept even while the target has other problems: the partner
        // configured with it must not see it change because a URL Secret went missing.
        if let Some(key @ (Key::Kept(_) | Key::Fresh(_))) = &key {
            generated_keys.insert(target.name.clone(), key.value().clone());
            out.generated_keys.push(target.name.clone());
            if matches!(key, Key::Fresh(_)) {
                out.events.push(PlannedEvent {
                    warning: false,
                    reason: reason::FORWARD_KEY_GENERATED,
                    message: format!(
                        "generated a signing key for forward target {:?} into Secret {} (key {:?}); give it to the receiving side to verify signatures",
                        target.name,
                        super::generated_forward_secret_name(inputs.integration),
                        target.name
                    ),
                });
            }
        }
        match (url, problems.is_empty()) {
            (Some(url), true) => out.entries.push(RouteForward {
                name: target.name.clone(),
                url,
                signing_key: key.map(|k| k.value().clone()),
                headers,
            }),
            _ => out.problems.extend(problems),
        }
    }
    for p in &out.problems {
        out.events.push(PlannedEvent {
            warning: true,
            reason: p.reason,
            message: p.message.clone(),
        });
    }
    out.generated = match inputs.generated {
        GeneratedForwardLookup::NotOwned => None,
        // An owned Secret is applied even without keys, so removed targets' keys go.
        GeneratedForwardLookup::Owned(_) => Some(generated_keys),
        GeneratedForwardLookup::Absent => (!generated_keys.is_empty()).then_some(generated_keys),
    }
    .map(|keys| GeneratedForwardSecret {
        name: super::generated_forward_secret_name(inputs.integration),
        keys,
    });
    out
}

fn problem(target: &EffectiveForward, reason: &'static str, message: String) -> ForwardProblem {
    ForwardProblem {
        target: target.name.clone(),
        reason,
        message: format!("spec.forward[{}].{message}", target.name),
    }
}

/// A referenced Secret key's value, or the problem (`field` is the spec field naming it,
/// `what` what the key must hold).
fn lookup_ref(
    target: &EffectiveForward,
    inputs: &ForwardInputs<'_>,
    field: &str,
    reference: &SecretKeyRef,
    what: &str,
    problems: &mut Vec<ForwardProblem>,
) -> Option<String> {
    let ns = inputs.namespace;
    let SecretKeyRef { name, key } = reference;
    let found = match inputs.secrets.get(name) {
        Some(Some(data)) => data.lookup(key),
        Some(None) | None => RefLookup::SecretMissing,
    };
    let (reason, message) = match found {
        RefLookup::Value(v) => return Some(v),
        RefLookup::SecretMissing => (
            reason::FORWARD_SECRET_NOT_FOUND,
            format!(
                "{field}: Secret {ns}/{name} not found; create it with key {key:?} holding {what}"
            ),
        ),
        RefLookup::KeyMissing { available } => (
            reason::FORWARD_SECRET_KEY_MISSING,
            format!(
                "{field}: Secret {ns}/{name} has no key {key:?} (keys: {}); fix {field}.key or add the key",
                if available.is_empty() {
                    "none".to_string()
                } else {
                    available.join(", ")
                }
            ),
        ),
        RefLookup::Empty => (
            reason::FORWARD_SECRET_EMPTY,
            format!("{field}: key {key:?} of Secret {ns}/{name} is empty; put {what} there"),
        ),
    };
    problems.push(problem(target, reason, message));
    None
}

fn resolve_url(
    target: &EffectiveForward,
    inputs: &ForwardInputs<'_>,
    problems: &mut Vec<ForwardProblem>,
) -> Option<SecretValue> {
    match &target.destination {
        Destination::Url(url) => Some(SecretValue(url.clone())),
        Destination::Service { name, port, path } => Some(SecretValue(Destination::service_url(
            inputs.namespace,
            name,
            *port,
            path,
        ))),
        Destination::UrlFrom(r) => {
            let url = lookup_ref(
                target,
                inputs,
                "urlFrom.secretRef",
                r,
                "the target's URL",
                problems,
            )?;
            if is_http_url(&url) {
                Some(SecretValue(url))
            } else {
                // The value is a credential (a chat webhook URL): never in a message.
                problems.push(problem(
                    target,
                    reason::FORWARD_URL_INVALID,
                    format!(
                        "urlFrom.secretRef: key {:?} of Secret {}/{} is not an http:// or https:// URL with a host",
                        r.key, inputs.namespace, r.name
                    ),
                ));
                None
            }
        }
    }
}

/// The check `spec.forward[].url` gets from the resolver, for a URL read from a Secret.
fn is_http_url(url: &str) -> bool {
    url.parse::<http::Uri>().is_ok_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.host().is_some_and(|h| !h.is_empty())
    })
}

fn resolve_key(
    target: &EffectiveForward,
    inputs: &ForwardInputs<'_>,
    problems: &mut Vec<ForwardProblem>,
) -> Option<Key> {
    match target.signing.as_ref()? {
        SigningSource::Secret(r) => {
            let value = lookup_ref(
                target,
                inputs,
                "signingSecretRef",
                r,
                "a Standard Webhooks key (whsec_…)",
                problems,
            )?;
            match SigningKey::parse(&value) {
                Ok(_) => Some(Key::Referenced(SecretValue(value))),
                Err(e) => {
                    problems.push(problem(
                        target,
                        reason::FORWARD_SIGNING_KEY_INVALID,
                        format!(
                            "signingSecretRef: key {:?} of Secret {}/{}: {e}; put whsec_ followed by base64 there (e.g. of 32 random bytes), or remove signingSecretRef to have a key generated",
                            r.key, inputs.namespace, r.name
                        ),
                    ));
                    None
                }
            }
        }
        SigningSource::Generated => {
            let secret = super::generated_forward_secret_name(inputs.integration);
            let kept = match inputs.generated {
                GeneratedForwardLookup::NotOwned => {
                    problems.push(problem(
                        target,
                        reason::GENERATED_FORWARD_SECRET_CONFLICT,
                        format!(
                            "signingSecretRef: absent, so the key is generated into Secret {}/{secret}, which exists but is not owned by this integration; delete or rename that Secret, or set signingSecretRef",
                            inputs.namespace
                        ),
                    ));
                    return None;
                }
                GeneratedForwardLookup::Owned(data) => match data.lookup(&target.name) {
                    // A key edited into something unusable is replaced, as the inbound
                    // generated secret is.
                    RefLookup::Value(v) if SigningKey::parse(&v).is_ok() => Some(v),
                    _ => None,
                },
                GeneratedForwardLookup::Absent => None,
            };
            if let Some(v) = kept {
                return Some(Key::Kept(SecretValue(v)));
            }
            match inputs.fresh_keys.get(&target.name) {
                Some(fresh) => Some(Key::Fresh(fresh.clone())),
                None => {
                    // The caller generates one per target without signingSecretRef
                    // (`domain::secret::generate_forward_signing_keys`).
                    problems.push(problem(
                        target,
                        reason::FORWARD_SIGNING_KEY_INVALID,
                        "signingSecretRef: no signing key could be generated for this target (a hookwarden bug; set signingSecretRef meanwhile)".to_string(),
                    ));
                    None
                }
            }
        }
    }
}

fn resolve_headers(
    target: &EffectiveForward,
    inputs: &ForwardInputs<'_>,
    problems: &mut Vec<ForwardProblem>,
) -> BTreeMap<String, SecretValue> {
    let Some(name) = &target.headers_from else {
        return BTreeMap::new();
    };
    let ns = inputs.namespace;
    let Some(Some(data)) = inputs.secrets.get(name) else {
        problems.push(problem(
            target,
            reason::FORWARD_SECRET_NOT_FOUND,
            format!(
                "headersFrom.secretRef: Secret {ns}/{name} not found; create it with one key per header (key = header name, value = header value)"
            ),
        ));
        return BTreeMap::new();
    };
    let mut headers = BTreeMap::new();
    let mut reserved = Vec::new();
    let mut invalid = Vec::new();
    for (key, value) in data.entries() {
        if is_reserved_header(key) {
            reserved.push(key.to_string());
        } else if http::HeaderName::from_bytes(key.as_bytes()).is_err()
            || http::HeaderValue::from_str(value).is_err()
        {
            invalid.push(key.to_string());
        } else {
            headers.insert(key.to_string(), SecretValue(value.to_string()));
        }
    }
    if !reserved.is_empty() {
        problems.push(problem(
            target,
            reason::FORWARD_HEADER_INVALID,
            format!(
                "headersFrom.secretRef: Secret {ns}/{name} sets {} which hookwarden sets itself; remove {}",
                reserved.join(", "),
                if reserved.len() == 1 { "that key" } else { "those keys" }
            ),
        ));
    }
    if !invalid.is_empty() {
        let (verb, them) = if invalid.len() == 1 {
            ("is", "it")
        } else {
            ("are", "them")
        };
        problems.push(problem(
            target,
            reason::FORWARD_HEADER_INVALID,
            format!(
                "headersFrom.secretRef: in Secret {ns}/{name}, {} {verb} not a valid header name with a valid value (visible ASCII, no line breaks); fix or remove {them}",
                invalid.join(", ")
            ),
        ));
    }
    headers
}
