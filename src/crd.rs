//! The `WebhookIntegration` custom resource: types only.
//!
//! The CRD in `crds/` is generated from these types by `hookwarden crdgen`; never edit it
//! by hand. Every field carries a doc comment because it becomes the description that
//! `kubectl explain` prints.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// API group of every hookwarden resource.
pub const GROUP: &str = "hookwarden.dev";
/// Finalizer the controller puts on each integration so its route is removed on delete.
pub const FINALIZER: &str = "hookwarden.dev/route";

/// Desired state of a webhook integration: who sends, how deliveries are authenticated,
/// what is accepted and how deliveries become incidents.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hookwarden.dev",
    version = "v1alpha1",
    kind = "WebhookIntegration",
    plural = "webhookintegrations",
    singular = "webhookintegration",
    shortname = "whi",
    category = "hookwarden",
    namespaced,
    status = "WebhookIntegrationStatus",
    doc = "An incoming webhook endpoint: hookwarden gives it an unguessable URL, verifies every delivery the way its provider signs it, turns monitoring alerts into incidents and reports deliveries and incidents on the status.",
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider", description = "Sender preset"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Whether the endpoint serves deliveries"),
    printcolumn(name = "Open", type_ = "string", json_path = ".status.incidents.openDisplay", description = "Open incidents; N+ when more are open than the status lists (status.incidents.truncated)"),
    printcolumn(name = "Last Delivery", type_ = "date", json_path = ".status.deliveries.lastReceivedTime", description = "When the last delivery arrived"),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url", description = "Endpoint to configure in the sender", priority = 1),
    printcolumn(name = "Dead Letters", type_ = "integer", json_path = ".status.forwardingTotals.deadLettered", description = "Forwards dead-lettered, all targets and receiver replicas (hookwarden replay re-queues them)", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.spec.provider == 'generic' ? (has(self.spec.signature) || (has(self.spec.auth) && self.spec.auth != 'hmac')) : !has(self.spec.signature)").message("spec.signature must be set when provider is generic, and only then (generic may use spec.auth instead)").field_path(".spec.signature"),
    validation = Rule::new("!(has(self.spec.signature) && has(self.spec.auth) && self.spec.auth != 'hmac')").message("spec.signature (an HMAC) and spec.auth (token, or none) exclude each other").field_path(".spec.auth"),
    validation = Rule::new("(self.spec.provider in ['google-pubsub', 'github-actions'] || (has(self.spec.auth) && self.spec.auth == 'oidc')) == has(self.spec.oidc)").message("spec.oidc is required by the OIDC senders (google-pubsub, github-actions, generic with auth: oidc) and used by nothing else").field_path(".spec.oidc"),
    validation = Rule::new("!has(self.spec.auth) || self.spec.provider == 'generic'").message("spec.auth is only used by provider generic").field_path(".spec.auth"),
    validation = Rule::new("!has(self.spec.sns) || self.spec.provider == 'aws-sns'").message("spec.sns only applies to provider aws-sns").field_path(".spec.sns"),
    validation = Rule::new("!has(self.spec.auth) || self.spec.auth != 'header' || has(self.spec.tokenHeader)").message("auth: header needs spec.tokenHeader (the header carrying the token)").field_path(".spec.tokenHeader"),
)]
#[serde(rename_all = "camelCase")]
pub struct WebhookIntegrationSpec {
    /// Sender preset: how deliveries are authenticated and mapped. One of github, gitlab,
    /// stripe, slack, standard-webhooks, svix, shopify, pagerduty, twilio, sentry, linear,
    /// grafana, zendesk, jira, bitbucket, datadog, alertmanager, discord, sendgrid, zoom,
    /// twitch, azure-event-grid, gitea, forgejo, paddle, generic, google-pubsub,
    /// github-actions, aws-sns.
    pub provider: ProviderKind,

    /// When true the endpoint answers 503 with Retry-After so senders keep their
    /// deliveries and retry later; nothing is lost.
    #[serde(default, skip_serializing_if = "is_false")]
    pub suspend: bool,

    /// Secret (in this namespace) holding the shared secret or token the sender uses.
    /// When absent, hookwarden generates one into the Secret named in status.secretName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,

    /// After the referenced secret changes, the previous value is still accepted for this
    /// long (Go duration, e.g. 24h, 90m). Default 24h; 0s drops it at once.
    #[serde(
        default,
        rename = "previousSecretTTL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub previous_secret_ttl: Option<String>,

    /// Source CIDRs allowed to deliver (IPv4 or IPv6). Empty: any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("every allowedSourceRanges entry must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32"))]
    pub allowed_source_ranges: Vec<String>,

    /// Request limits for this endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Box<Limits>>,

    /// Provider event types to accept. Deliveries of other types are answered 2xx, counted
    /// as ignored and otherwise dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Box<EventFilter>>,

    /// How deliveries become incidents. Monitoring presets (datadog, alertmanager,
    /// grafana, pagerduty, sentry) come with a mapping; fields set here override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incidents: Option<Box<IncidentMapping>>,

    /// Signature scheme for provider generic (required then, forbidden otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Box<SignatureSpec>>,

    /// Provider generic: how deliveries authenticate. `hmac` (default): spec.signature;
    /// `oidc`: an `Authorization: Bearer` JWT checked against spec.oidc; `bearer`,
    /// `basic`, `header`: the secret as a plain token; `none`: nothing (spelled out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<GenericAuth>,

    /// OIDC/JWT bearer senders (google-pubsub, github-actions, generic with auth: oidc):
    /// the issuer, audiences, algorithms and claims a token must carry, and its keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<Box<OidcSpec>>,

    /// Provider aws-sns: which topics may deliver and whether subscriptions are confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sns: Option<Box<SnsSpec>>,

    /// Token presets (datadog, alertmanager, gitlab, azure-event-grid) and generic
    /// `auth: header`: a request header that carries the token as its whole value
    /// (besides `Authorization: Bearer` and Basic auth for the presets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9-]+$"))]
    pub token_header: Option<String>,

    /// Optional JSON Schema every authenticated delivery body must satisfy (else 400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown")]
    pub schema: Option<serde_json::Value>,

    /// How long a delivery id is remembered to drop duplicates (Go duration). Default 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub dedup_window: Option<String>,

    /// Where verified deliveries, or the incidents they open, update and resolve, are
    /// sent after the 202: durably, with retries, a circuit breaker and dead letters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(t, self.exists_one(u, u.name == t.name))").message("forward target names must be unique"))]
    pub forward: Vec<ForwardTarget>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

fn preserve_unknown(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "description": "Optional JSON Schema (draft 2020-12) every authenticated delivery body must satisfy; a delivery that fails it is answered 400."
    })
}

/// A key of a Secret in the integration's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as the integration.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret whose value is the shared secret or token.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self != ''").message("secretRef.key must not be empty"))]
    pub key: String,
}

/// Per-endpoint request limits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Largest accepted body in bytes; larger deliveries get 413 and are never buffered
    /// past this. Default 1048576 (1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 67108864))]
    pub max_body_bytes: Option<i64>,
    /// Sustained requests per second from all sources; over it: 429 + Retry-After.
    /// Each receiver replica enforces it on the requests it serves, so with N replicas
    /// behind a load balancer the integration takes up to N times this. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub requests_per_second: Option<i32>,
    /// Requests allowed in a burst above the sustained rate (per receiver replica, like
    /// requestsPerSecond). Default 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: Option<i32>,
}

/// Which provider event types are processed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventFilter {
    /// Event types to accept (e.g. `push`, `invoice.paid`). Empty: all types.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 256)))]
    pub include: Vec<String>,
    /// Event types to ignore; wins over include.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 256)))]
    pub exclude: Vec<String>,
}

/// How a delivery payload becomes incidents. Each `…From` field is a JSON pointer
/// (starting with `/`) into the delivery body, or a CEL expression over `body`
/// (e.g. `body.alert.id`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IncidentMapping {
    /// Incident key within this integration (JSON pointer or CEL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub id_from: Option<String>,
    /// Incident title (JSON pointer or CEL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub title_from: Option<String>,
    /// Raw severity (JSON pointer or CEL); translated through severityMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub severity_from: Option<String>,
    /// Raw severity value → one of critical, high, medium, low, info.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, self[k] in ['critical', 'high', 'medium', 'low', 'info'])").message("severityMap values must be critical, high, medium, low or info"))]
    #[schemars(extend("maxProperties" = 64))]
    pub severity_map: BTreeMap<String, String>,
    /// Link to the incident at the sender (JSON pointer or CEL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub link_from: Option<String>,
    /// When the event happened (JSON pointer or CEL; RFC 3339 or Unix seconds). Used to
    /// keep an older event from overwriting a newer one. Default: arrival time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub time_from: Option<String>,
    /// CEL expression over `body` that is true when the delivery resolves the incident,
    /// e.g. `body.alert_transition == "Recovered"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub resolved_when: Option<String>,
    /// Most alerts one delivery may carry (Alertmanager, Grafana group them): the rest are
    /// not mapped, and counted in status.deliveries.alertsDropped. Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_alerts_per_delivery: Option<i32>,
    /// Incidents listed on status.incidents.recent (most recent first). Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub keep_recent: Option<i32>,
    /// Incidents the receivers keep whole and write to the status (recent and tracked
    /// together; about 350 bytes of status each). Past it the oldest resolved incidents
    /// are dropped first, then the oldest open ones: those stay counted in
    /// status.incidents.open, which is then shown as `N+` with truncated: true and a
    /// Warning Event. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_tracked: Option<i32>,
}

/// HMAC algorithm of a generic signature.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    /// HMAC-SHA1 (legacy senders only).
    Sha1,
    /// HMAC-SHA256.
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

/// Text encoding of a generic signature.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    /// Lower- or upper-case hexadecimal.
    Hex,
    /// Standard base64 with padding.
    Base64,
}

/// A configurable HMAC scheme, for senders without a preset (provider generic).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.signedContent.contains('{timestamp}') || has(self.timestampHeader)").message("signedContent uses {timestamp}, so timestampHeader must be set"))]
#[x_kube(validation = Rule::new("!self.signedContent.contains('{id}') || has(self.idHeader)").message("signedContent uses {id}, so idHeader must be set"))]
#[x_kube(validation = Rule::new("!has(self.timestampHeader) || self.signedContent.contains('{timestamp}')").message("timestampHeader is set but signedContent does not sign {timestamp}: an unsigned timestamp can be rewritten; add {timestamp} to signedContent or remove timestampHeader"))]
#[x_kube(validation = Rule::new("!has(self.idHeader) || self.signedContent.contains('{id}')").message("idHeader is set but signedContent does not sign {id}: an unsigned id can be rewritten; add {id} to signedContent or remove idHeader"))]
pub struct SignatureSpec {
    /// Request header carrying the signature, e.g. X-Signature.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9-]+$"))]
    pub header: String,
    /// HMAC hash: sha1, sha256 or sha512.
    pub algorithm: HmacAlgorithm,
    /// Signature text encoding: hex or base64.
    pub encoding: SignatureEncoding,
    /// Text before the signature in the header value, e.g. `sha256=`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 64))]
    pub prefix: String,
    /// What is signed: a template of `{body}`, `{timestamp}` and `{id}` joined by literal
    /// text, e.g. `{timestamp}.{body}`. Default `{body}`.
    #[serde(default = "default_signed_content")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.contains('{body}')").message("signedContent must include {body}"))]
    pub signed_content: String,
    /// Header carrying the Unix timestamp (seconds) that is signed and checked against
    /// toleranceSeconds; signedContent must use `{timestamp}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9-]+$"))]
    pub timestamp_header: Option<String>,
    /// Header carrying the delivery id, used for deduplication; signedContent must use
    /// `{id}` (an unsigned id could be rewritten to replay a captured delivery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9-]+$"))]
    pub id_header: Option<String>,
    /// Largest accepted distance between the signed timestamp and now, in seconds, in
    /// either direction. Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub tolerance_seconds: Option<i32>,
}

fn default_signed_content() -> String {
    "{body}".to_string()
}

/// One forward target: where verified deliveries, or the incidents they open, update and
/// resolve, are sent after the 202 (DESIGN.md "Forwarding").
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.url), has(self.urlFrom), has(self.service)].filter(x, x).size() == 1").message("set exactly one of url, urlFrom and service"))]
#[x_kube(validation = Rule::new("!has(self.format) || self.format != 'raw' || !has(self.send) || self.send.all(e, e == 'delivery')").message("format raw forwards the original request: send may only list delivery"))]
#[x_kube(validation = Rule::new("!has(self.format) || self.format != 'slack' || (has(self.send) && !self.send.exists(e, e == 'delivery'))").message("format slack posts incident events: send must list incident events only (the default, delivery, does not fit)"))]
pub struct ForwardTarget {
    /// Name of the target: a DNS label, unique in the integration; used in status,
    /// metrics, the replay-target annotation and the generated signing key's key.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// URL to POST to (http or https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("url must start with https:// or http://"))]
    pub url: Option<String>,
    /// The URL from a Secret key in this namespace (chat webhook URLs are credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_from: Option<SecretSelector>,
    /// A Service in the integration's own namespace: `http://NAME.NAMESPACE.svc:PORT/PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceTarget>,
    /// Events sent to this target: delivery (every verified delivery), incident.opened,
    /// incident.updated, incident.resolved. Default [delivery].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4))]
    #[x_kube(validation = Rule::new("self.all(e, e in ['delivery', 'incident.opened', 'incident.updated', 'incident.resolved'])").message("send entries must be delivery, incident.opened, incident.updated or incident.resolved"))]
    pub send: Option<Vec<String>>,
    /// standard-webhooks (default: JSON envelope with Standard Webhooks signature
    /// headers), raw (the original body and content type; delivery only), cloudevents
    /// (structured mode), slack (`{"text": …}` for incident events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['standard-webhooks', 'raw', 'cloudevents', 'slack']").message("format must be standard-webhooks, raw, cloudevents or slack"))]
    pub format: Option<String>,
    /// Standard Webhooks signing key (`whsec_…`) from a Secret key in this namespace.
    /// Absent: hookwarden generates one into the Secret `<integration>-forward`, under
    /// this target's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret_ref: Option<SecretKeyRef>,
    /// Extra request headers: every key of that Secret is a header name, its value the
    /// header value (e.g. Authorization for the target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_from: Option<HeadersFrom>,
    /// Per-attempt timeout (Go duration). Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub timeout: Option<String>,
    /// Retry schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Per-target circuit breaker (per receiver replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerPolicy>,
    /// How long a dead-lettered forward is kept, with its body, for replay (Go
    /// duration). Default 168h (7 days).
    #[serde(
        default,
        rename = "deadLetterTTL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub dead_letter_ttl: Option<String>,
}

/// A Secret key in the integration's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretSelector {
    /// The Secret and key holding the value.
    pub secret_ref: SecretKeyRef,
}

/// A Secret in the integration's namespace whose keys are header names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeadersFrom {
    /// The Secret.
    pub secret_ref: SecretName,
}

/// A Secret in the integration's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretName {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A Service in the integration's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceTarget {
    /// Name of the Service.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Port number.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Request path, starting with `/`. Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("service.path must start with /"))]
    pub path: Option<String>,
}

/// When failed attempts are retried.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Delays before attempts 2..N (Go durations, each 1s to 24h, at most 20), with ±10 %
    /// jitter; a longer Retry-After from the target wins. After the last: dead letter.
    /// Default [1m, 5m, 30m, 2h, 6h].
    #[schemars(
        length(min = 1, max = 20),
        inner(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))
    )]
    pub schedule: Vec<String>,
}

/// Per-target circuit breaker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreakerPolicy {
    /// Consecutive retryable failures that open the circuit. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub failures: Option<i32>,
    /// How long an open circuit refuses attempts before one probe (Go duration).
    /// Default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub open_for: Option<String>,
}

/// Forwarding to one target, as the receivers last wrote it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForwardStatus {
    /// The target's name in spec.forward.
    pub name: String,
    /// Forwards the target answered 2xx (running total).
    #[serde(default)]
    pub delivered: i64,
    /// Failed attempts (running total).
    #[serde(default)]
    pub failed: i64,
    /// Forwards waiting for an attempt, those held by an open circuit included.
    #[serde(default)]
    pub pending: i64,
    /// Dead letters not yet replayed or expired.
    #[serde(default)]
    pub dead_lettered: i64,
    /// closed, open or halfOpen (of the replica that wrote last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit: Option<String>,
    /// When a forward to this target last succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivered_time: Option<Time>,
    /// When an attempt last failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,
    /// Why the last attempt failed (e.g. `503 Service Unavailable`, `timeout`, `refused: …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
}

/// Observed state, written by the controller (conditions, URL) and the receiver
/// (deliveries, incidents), each with its own server-side apply field manager.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookIntegrationStatus {
    /// The spec generation the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Full endpoint URL to configure in the sender (external base URL + path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Endpoint path, /hooks/ followed by at least 128 random bits; stable for the life of
    /// the integration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Secret in this namespace holding the generated secret and the URL, when hookwarden
    /// generated the secret (no spec.secretRef).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Ready, SecretResolved, RouteReady and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Delivery counters, written by the receivers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<DeliveryStatus>,
    /// Incidents opened from deliveries, written by the receivers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incidents: Option<IncidentsStatus>,
    /// One entry per spec.forward target, written by the receivers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub forwarding: Vec<ForwardStatus>,
    /// status.forwarding summed over its targets (what `kubectl get whi -o wide` shows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding_totals: Option<ForwardingTotals>,
    /// Each receiver replica's share of the current (not running-total) numbers:
    /// status.forwarding[].pending/deadLettered are the sums of these, and
    /// status.incidents counts the open incidents replicas no longer list. A share not
    /// refreshed for 10 minutes (its replica is gone) is dropped by the next write.
    /// Bookkeeping for the receivers, not meant for reading.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub replicas: Vec<ReplicaShare>,
}

/// status.forwarding summed over the targets.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForwardingTotals {
    /// Forwards waiting for an attempt, all targets.
    #[serde(default)]
    pub pending: i64,
    /// Dead letters not yet replayed or expired, all targets.
    #[serde(default)]
    pub dead_lettered: i64,
}

/// One receiver replica's current numbers for one integration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaShare {
    /// The replica (pod name).
    pub name: String,
    /// When the replica last wrote this share; replicas refresh shares that are not all
    /// zero every few minutes, so an old one belongs to a replica that is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_time: Option<Time>,
    /// Open incidents this replica counts but no longer lists (beyond
    /// spec.incidents.maxTracked).
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub untracked_open: i64,
    /// Pending forwards and dead letters this replica holds, per target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["target"]))]
    pub forwarding: Vec<ForwardShare>,
}

/// One replica's pending forwards and dead letters for one target.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForwardShare {
    /// The target's name in spec.forward.
    pub target: String,
    #[serde(default)]
    pub pending: i64,
    #[serde(default)]
    pub dead_lettered: i64,
}

/// Delivery counters since the integration was created.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryStatus {
    /// Requests that reached this endpoint.
    #[serde(default)]
    pub received: i64,
    /// Deliveries authenticated and accepted (acknowledged with 2xx).
    #[serde(default)]
    pub accepted: i64,
    /// Requests refused (bad signature, too large, rate limited, …).
    #[serde(default)]
    pub rejected: i64,
    /// Accepted deliveries dropped as repeats of an earlier delivery id.
    #[serde(default)]
    pub duplicates: i64,
    /// Accepted deliveries whose event type the events filter excludes.
    #[serde(default)]
    pub ignored: i64,
    /// When the last request arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_received_time: Option<Time>,
    /// When the last request was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rejected_time: Option<Time>,
    /// Alerts not mapped because a delivery carried more than
    /// spec.incidents.maxAlertsPerDelivery.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub alerts_dropped: i64,
    /// Why the last request was refused (e.g. signature_mismatch, timestamp_stale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reject_reason: Option<String>,
}

/// Incidents derived from deliveries.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IncidentsStatus {
    /// Incidents currently open: exact up to spec.incidents.maxTracked and beyond it
    /// while the receivers count the open incidents they no longer list (up to 100,000
    /// each); a lower bound when truncated is true.
    #[serde(default)]
    pub open: i64,
    /// True when more incidents are open than recent and tracked list (beyond
    /// spec.incidents.maxTracked): the lists are incomplete and open is shown as `N+`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// open as the Open printer column shows it: `3`, or `811+` when truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_display: Option<String>,
    /// The most recently updated incidents, newest first (at most incidents.keepRecent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<IncidentSummary>,
    /// The other incidents the receivers still track (same shape, newest first; at most
    /// spec.incidents.maxTracked in recent and tracked together, oldest resolved dropped
    /// first, then the oldest open ones, which stay counted in open).
    /// Receiver replicas merge each other's view through these entries, so they agree on
    /// the open count and never let an older event win; not meant for reading.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracked: Vec<IncidentSummary>,
}

/// One incident as shown on the status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IncidentSummary {
    /// Incident key from the sender (e.g. Alertmanager fingerprint, Datadog aggreg_key).
    pub id: String,
    /// Human title.
    #[serde(default)]
    pub title: String,
    /// critical, high, medium, low or info.
    #[serde(default)]
    pub severity: String,
    /// open or resolved.
    pub state: String,
    /// When the incident (last) opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<Time>,
    /// When the incident last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Time>,
    /// When the incident resolved, if it is resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<Time>,
    /// Link to the incident at the sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// When the newest event applied to this incident happened at the sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_time: Option<Time>,
    /// When the incident last resolved before the episode that openedAt starts (set once
    /// it has re-opened). Lets receiver replicas agree on openedAt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_resolved_at: Option<Time>,
    /// Ordering key of the newest event applied (`<unix ms>:<tiebreak>`): an event that
    /// sorts lower never overwrites this incident. Written by the receivers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
}

/// A sender preset: how deliveries are authenticated and how they map to incidents.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// GitHub: `X-Hub-Signature-256` (HMAC-SHA256, hex, `sha256=` prefix).
    Github,
    /// GitLab: plain `X-Gitlab-Token`, or a `whsec_` signing token in Standard Webhooks form.
    Gitlab,
    /// Stripe: `Stripe-Signature: t=…,v1=…` over `{t}.{body}`.
    Stripe,
    /// Slack: `X-Slack-Signature: v0=…` over `v0:{timestamp}:{body}`; answers `url_verification`.
    Slack,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature` (`v1,` base64).
    StandardWebhooks,
    /// Svix: the Standard Webhooks scheme with `svix-` headers.
    Svix,
    /// Shopify: `X-Shopify-Hmac-Sha256`, base64 HMAC-SHA256 of the body.
    Shopify,
    /// PagerDuty v3: `X-PagerDuty-Signature: v1=…[,v1=…]`.
    Pagerduty,
    /// Twilio: `X-Twilio-Signature`, base64 HMAC-SHA1 over URL + sorted form params.
    Twilio,
    /// Sentry: `Sentry-Hook-Signature`, hex HMAC-SHA256 of the body.
    Sentry,
    /// Linear: `Linear-Signature`, hex HMAC-SHA256; `webhookTimestamp` in the body.
    Linear,
    /// Grafana alerting: `X-Grafana-Alerting-Signature`, optionally with a timestamp header.
    Grafana,
    /// Zendesk: `X-Zendesk-Webhook-Signature` (base64) over timestamp + body.
    Zendesk,
    /// Jira (Atlassian): `X-Hub-Signature: sha256=…`.
    Jira,
    /// Bitbucket Cloud: `X-Hub-Signature: sha256=…`.
    Bitbucket,
    /// Datadog: no signature; a token in a bearer, basic or custom header.
    Datadog,
    /// Prometheus Alertmanager: no signature; bearer or basic auth token.
    Alertmanager,
    /// Discord interactions: `X-Signature-Ed25519` over timestamp + body (hex public key);
    /// answers the PING with `{"type":1}`.
    Discord,
    /// SendGrid event webhook: ECDSA P-256 over timestamp + body (base64 public key).
    Sendgrid,
    /// Zoom: `x-zm-signature: v0=…` over `v0:{timestamp}:{body}`; answers `endpoint.url_validation`.
    Zoom,
    /// Twitch EventSub: `Twitch-Eventsub-Message-Signature: sha256=…`; answers `webhook_callback_verification`.
    Twitch,
    /// Azure Event Grid: a key in the URL query (`code`) or a delivery header; answers `SubscriptionValidation`.
    AzureEventGrid,
    /// Gitea: `X-Gitea-Signature`, hex HMAC-SHA256 of the body.
    Gitea,
    /// Forgejo: `X-Forgejo-Signature` (or `X-Gitea-Signature`), hex HMAC-SHA256 of the body.
    Forgejo,
    /// Paddle Billing: `Paddle-Signature: ts=…;h1=…` over `{ts}:{body}`.
    Paddle,
    /// Configurable: HMAC (`spec.signature`), an OIDC bearer token (`auth: oidc`), or a
    /// plain token or nothing (`auth: bearer|basic|header|none`).
    Generic,
    /// Google Cloud Pub/Sub push with authentication: a Google-signed OIDC token
    /// (issuer `https://accounts.google.com`) in `Authorization: Bearer`.
    GooglePubsub,
    /// GitHub Actions OIDC: a job's ID token (issuer
    /// `https://token.actions.githubusercontent.com`) in `Authorization: Bearer`.
    GithubActions,
    /// Amazon SNS HTTP(S) subscription: RSA signature (versions 1 and 2) in the body,
    /// certificate from `sns.<region>.amazonaws.com`; subscriptions confirmed.
    AwsSns,
}

impl ProviderKind {
    /// Every preset, in documentation order.
    pub const ALL: [ProviderKind; 29] = [
        ProviderKind::Github,
        ProviderKind::Gitlab,
        ProviderKind::Stripe,
        ProviderKind::Slack,
        ProviderKind::StandardWebhooks,
        ProviderKind::Svix,
        ProviderKind::Shopify,
        ProviderKind::Pagerduty,
        ProviderKind::Twilio,
        ProviderKind::Sentry,
        ProviderKind::Linear,
        ProviderKind::Grafana,
        ProviderKind::Zendesk,
        ProviderKind::Jira,
        ProviderKind::Bitbucket,
        ProviderKind::Datadog,
        ProviderKind::Alertmanager,
        ProviderKind::Discord,
        ProviderKind::Sendgrid,
        ProviderKind::Zoom,
        ProviderKind::Twitch,
        ProviderKind::AzureEventGrid,
        ProviderKind::Gitea,
        ProviderKind::Forgejo,
        ProviderKind::Paddle,
        ProviderKind::Generic,
        ProviderKind::GooglePubsub,
        ProviderKind::GithubActions,
        ProviderKind::AwsSns,
    ];

    /// The name used in `spec.provider` and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Github => "github",
            ProviderKind::Gitlab => "gitlab",
            ProviderKind::Stripe => "stripe",
            ProviderKind::Slack => "slack",
            ProviderKind::StandardWebhooks => "standard-webhooks",
            ProviderKind::Svix => "svix",
            ProviderKind::Shopify => "shopify",
            ProviderKind::Pagerduty => "pagerduty",
            ProviderKind::Twilio => "twilio",
            ProviderKind::Sentry => "sentry",
            ProviderKind::Linear => "linear",
            ProviderKind::Grafana => "grafana",
            ProviderKind::Zendesk => "zendesk",
            ProviderKind::Jira => "jira",
            ProviderKind::Bitbucket => "bitbucket",
            ProviderKind::Datadog => "datadog",
            ProviderKind::Alertmanager => "alertmanager",
            ProviderKind::Discord => "discord",
            ProviderKind::Sendgrid => "sendgrid",
            ProviderKind::Zoom => "zoom",
            ProviderKind::Twitch => "twitch",
            ProviderKind::AzureEventGrid => "azure-event-grid",
            ProviderKind::Gitea => "gitea",
            ProviderKind::Forgejo => "forgejo",
            ProviderKind::Paddle => "paddle",
            ProviderKind::Generic => "generic",
            ProviderKind::GooglePubsub => "google-pubsub",
            ProviderKind::GithubActions => "github-actions",
            ProviderKind::AwsSns => "aws-sns",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown provider name.
#[derive(Debug, thiserror::Error)]
#[error("unknown provider {0:?}; known providers: {known}", known = known_list())]
pub struct UnknownProvider(pub String);

fn known_list() -> String {
    ProviderKind::ALL
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for ProviderKind {
    type Err = UnknownProvider;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProviderKind::ALL
            .iter()
            .copied()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownProvider(s.to_string()))
    }
}

/// How provider generic authenticates deliveries (`spec.auth`).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum GenericAuth {
    /// The configurable HMAC of spec.signature.
    #[default]
    Hmac,
    /// An OIDC/JWT bearer token checked against spec.oidc.
    Oidc,
    /// `Authorization: Bearer <secret>` (secretRef, or the generated secret).
    Bearer,
    /// `Authorization: Basic …` whose password is the secret (any user name).
    Basic,
    /// The whole value of the header named in spec.tokenHeader is the secret.
    Header,
    /// Nothing is checked: for senders that cannot sign or send a token (Docker Hub,
    /// Quay). The unguessable URL path is then the only secret; the integration carries
    /// a Warning condition saying so. Must be spelled out.
    None,
}

/// What an OIDC/JWT bearer token must be to authenticate a delivery.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OidcSpec {
    /// Expected `iss` claim. Fixed by the presets (google-pubsub:
    /// `https://accounts.google.com`, github-actions:
    /// `https://token.actions.githubusercontent.com`); required for generic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub issuer: Option<String>,
    /// Accepted `aud` values: the token must name at least one (required). Pub/Sub: the
    /// push subscription's audience; GitHub Actions: the `audience` the workflow asks for.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 512)))]
    pub audiences: Vec<String>,
    /// Where the signing keys are published (https, on the issuer's host). Presets know
    /// theirs; for generic the keys come from here and/or an inline JWKS in the Secret.
    #[serde(default, rename = "jwksURL", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub jwks_url: Option<String>,
    /// Accepted signature algorithms: RS256, ES256, EdDSA (default: all three). `none`
    /// and HMAC (HS*) are never accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub algorithms: Vec<JwtAlgorithm>,
    /// Claims the token must carry with exactly these values, e.g.
    /// `{email: pusher@project.iam.gserviceaccount.com}` or
    /// `{repository: org/repo, ref: refs/heads/main}`. Strings compare exactly; booleans
    /// and numbers by their JSON text (`email_verified: "true"`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub claims: std::collections::BTreeMap<String, String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds. Default 60, at most 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 300))]
    pub leeway_seconds: Option<i32>,
}

/// A JWS algorithm an OIDC sender may sign with.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (Google, GitHub).
    RS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

/// Amazon SNS settings (`spec.sns`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnsSpec {
    /// Topic ARNs allowed to deliver. Every SNS topic's messages are signed by AWS, so
    /// this is what ties the endpoint to your topics; empty accepts any topic (the
    /// unguessable path is then the only secret).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub topic_arns: Vec<String>,
    /// Confirm a SubscriptionConfirmation by fetching its SubscribeURL. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_confirm: Option<bool>,
}
