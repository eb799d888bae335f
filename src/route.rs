//! The route: everything a receiver needs to serve one integration.
//!
//! The controller writes each route as a Secret in hookwarden's own namespace, labelled
//! [`ROUTE_LABEL`]=`true`, with the JSON form of [`Route`] under [`ROUTE_KEY`]. Receivers
//! watch only those Secrets, so they need no cluster-wide read access. Standalone mode
//! builds the same [`Route`] values from YAML files.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crd::WebhookIntegrationSpec;

/// Label marking route Secrets.
pub const ROUTE_LABEL: &str = "hookwarden.dev/route";
/// Data key of the route JSON inside a route Secret.
pub const ROUTE_KEY: &str = "route.json";
/// Annotation naming the integration (`namespace/name`) a route Secret serves.
pub const INTEGRATION_ANNOTATION: &str = "hookwarden.dev/integration";

/// A shared secret accepted on a route. `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretValue(pub String);

impl SecretValue {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// One accepted secret: the current one (no expiry) or a previous one until it expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteSecret {
    pub value: SecretValue,
    /// Unix seconds after which this (previous) secret is no longer accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// Everything the receiver needs for one integration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub namespace: String,
    pub name: String,
    /// UID of the integration, so a re-created integration of the same name is distinct.
    pub uid: String,
    pub generation: i64,
    /// Endpoint path, `/hooks/…`.
    pub path: String,
    /// Current secret first, then unexpired previous ones.
    pub secrets: Vec<RouteSecret>,
    pub spec: WebhookIntegrationSpec,
    /// What the receivers need to send to each `spec.forward` target, resolved by the
    /// controller from the Secrets the spec names (the receivers read no Secret but their
    /// routes). Same order as `spec.forward`; a target whose Secrets do not resolve is
    /// absent (its forwards wait, see the controller's condition).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward: Vec<RouteForward>,
    /// The integration's replay request (annotation [`REPLAY_ANNOTATION`]): every
    /// receiver re-queues the integration's dead letters once per new value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayRequest>,
    /// Annotation [`EXPECTED_INTERVAL_ANNOTATION`], in seconds: the receivers export it
    /// (`hookwarden_integration_expected_interval_seconds`) for the silence alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_interval_seconds: Option<u64>,
}

/// Optional annotation: the longest time expected between two deliveries (`30m`, `6h`,
/// `168h`). Set, the chart's `HookwardenIntegrationSilent` alert fires when an integration
/// goes longer than that without one. A Go duration, as in spec fields.
pub const EXPECTED_INTERVAL_ANNOTATION: &str = "hookwarden.dev/expected-interval";

/// Annotation whose every new value re-queues an integration's dead letters.
pub const REPLAY_ANNOTATION: &str = "hookwarden.dev/replay";
/// Optional annotation naming the one target to replay.
pub const REPLAY_TARGET_ANNOTATION: &str = "hookwarden.dev/replay-target";

/// A request to re-queue dead letters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayRequest {
    /// The annotation's value: a new value is a new request.
    pub value: String,
    /// Only this target's dead letters; all targets when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl ReplayRequest {
    /// The request an integration's annotations make, if any.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Option<ReplayRequest> {
        let value = annotations.get(REPLAY_ANNOTATION)?.trim();
        if value.is_empty() {
            return None;
        }
        Some(ReplayRequest {
            value: value.to_string(),
            target: annotations
                .get(REPLAY_TARGET_ANNOTATION)
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        })
    }
}

/// One forward target's resolved material. `Debug` shows names only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteForward {
    /// `spec.forward[].name`.
    pub name: String,
    /// The URL to POST to (from `url`, the `urlFrom` Secret, or the Service's cluster DNS
    /// name). A credential for chat webhooks.
    pub url: SecretValue,
    /// The Standard Webhooks signing key (`whsec_…`), absent for unsigned formats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<SecretValue>,
    /// `headersFrom`: header name → value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, SecretValue>,
}

impl fmt::Debug for RouteForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteForward")
            .field("name", &self.name)
            .field("signed", &self.signing_key.is_some())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Route {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Secrets still accepted at `now` (Unix seconds), current first.
    pub fn live_secrets(&self, now: i64) -> impl Iterator<Item = &SecretValue> {
        live(&self.secrets, now)
    }

    /// The route without its spec, and the spec: a receiver resolves the spec once and
    /// keeps only what it resolved to.
    pub fn split_spec(self) -> (ServedRoute, WebhookIntegrationSpec) {
        let Route {
            namespace,
            name,
            uid,
            generation,
            path,
            secrets,
            spec,
            forward,
            replay,
            expected_interval_seconds,
        } = self;
        let served = ServedRoute {
            namespace,
            name,
            uid,
            generation,
            path,
            secrets,
            forward,
            replay,
            expected_interval_seconds,
        };
        (served, spec)
    }

    /// The route Secret's name for an integration: stable, DNS-safe, and unique per
    /// namespace/name even when the two together exceed the 253-character name limit.
    pub fn secret_name(namespace: &str, name: &str) -> String {
        let digest = Sha256::digest(format!("{namespace}/{name}").as_bytes());
        format!("hw-route-{}", &hex::encode(digest)[..32])
    }

    /// The route as a Secret in `route_namespace`.
    pub fn to_secret(&self, route_namespace: &str) -> Result<Secret, serde_json::Error> {
        let json = serde_json::to_vec(self)?;
        Ok(Secret {
            metadata: ObjectMeta {
                name: Some(Self::secret_name(&self.namespace, &self.name)),
                namespace: Some(route_namespace.to_string()),
                labels: Some(BTreeMap::from([
                    (ROUTE_LABEL.to_string(), "true".to_string()),
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        "hookwarden".to_string(),
                    ),
                ])),
                annotations: Some(BTreeMap::from([(
                    INTEGRATION_ANNOTATION.to_string(),
                    self.key(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("hookwarden.dev/route".to_string()),
            data: Some(BTreeMap::from([(ROUTE_KEY.to_string(), ByteString(json))])),
            ..Secret::default()
        })
    }

    /// Reads a route back from its Secret.
    pub fn from_secret(secret: &Secret) -> Result<Route, RouteDecodeError> {
        let data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(ROUTE_KEY))
            .ok_or(RouteDecodeError::MissingKey)?;
        serde_json::from_slice(&data.0).map_err(RouteDecodeError::Json)
    }
}

fn live(secrets: &[RouteSecret], now: i64) -> impl Iterator<Item = &SecretValue> {
    secrets
        .iter()
        .filter(move |s| s.expires_at.is_none_or(|t| now < t))
        .map(|s| &s.value)
}

/// A [`Route`] as a receiver serves it: everything but the spec, which the receiver
/// keeps only resolved (`domain::spec::EffectiveSpec`). The raw spec next to the resolved
/// one was ~0.8 KiB per route for nothing (10,000 routes: 8 MiB of a 64 MiB target).
#[derive(Clone, Debug, PartialEq)]
pub struct ServedRoute {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: i64,
    pub path: String,
    pub secrets: Vec<RouteSecret>,
    pub forward: Vec<RouteForward>,
    pub replay: Option<ReplayRequest>,
    pub expected_interval_seconds: Option<u64>,
}

impl ServedRoute {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Secrets still accepted at `now` (Unix seconds), current first.
    pub fn live_secrets(&self, now: i64) -> impl Iterator<Item = &SecretValue> {
        live(&self.secrets, now)
    }

    /// The [`Route`] again, with `spec`.
    pub fn with_spec(self, spec: WebhookIntegrationSpec) -> Route {
        let ServedRoute {
            namespace,
            name,
            uid,
            generation,
            path,
            secrets,
            forward,
            replay,
            expected_interval_seconds,
        } = self;
        Route {
            namespace,
            name,
            uid,
            generation,
            path,
            secrets,
            spec,
            forward,
            replay,
            expected_interval_seconds,
        }
    }
}

/// A route Secret that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RouteDecodeError {
    #[error("route Secret has no {ROUTE_KEY} key")]
    MissingKey,
    #[error("route Secret holds invalid JSON: {0}")]
    Json(serde_json::Error),
}
