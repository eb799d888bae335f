//! The body and headers of one outbound request, for each [`Format`].
//!
//! Two steps, because they happen at different times:
//! - [`render`] builds the body (and the headers that belong to it) once, when the event
//!   is accepted. The result is what the journal keeps: the body is the same on every
//!   retry, after a crash and after a replay, so a receiver deduplicating on `webhook-id`
//!   sees one event, not variations of it.
//! - [`sign_request`] adds, per attempt, the Standard Webhooks headers (`webhook-timestamp`
//!   is the attempt's time, as the spec's receivers check it against their clock) and the
//!   target's own headers (`headersFrom`).
//!
//! Signing goes through [`crate::domain::signature::sign`], the same code that produces
//! (and, through `verify`, checks) Standard Webhooks signatures for inbound deliveries:
//! one HMAC and base64 path. Secrets for new targets come from
//! [`crate::domain::secret::generate_secret`] with `ProviderKind::StandardWebhooks`
//! (`whsec_` + base64 of 32 random bytes), which [`SigningKey::parse`] accepts.

use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::value::RawValue;

use super::{EventKind, Format};
use crate::domain::incident::{IncidentState, Severity};
use crate::domain::signature::crypto::encode_base64;
use crate::domain::signature::{self, ProviderKind, Scheme, SignError, SignInput};

/// Header naming the integration a forward comes from, on `raw` requests.
pub const INTEGRATION_HEADER: &str = "x-hookwarden-integration";
/// Longest `webhook-id`: it is a header value, a dedup key on the receiving side and part
/// of the signed content.
pub const MAX_WEBHOOK_ID_LEN: usize = 256;

/// The integration a forward comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct IntegrationRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
}

/// A verified delivery, as forwarded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DeliveryFacts<'a> {
    /// The provider's delivery id when it sends one, else hookwarden's own id.
    pub id: &'a str,
    /// The provider's event type, when it has one.
    pub event: Option<&'a str>,
    /// The provider preset's name (`github`, `datadog`, …).
    pub provider: &'a str,
    pub received_at_ms: i64,
    pub content_type: Option<&'a str>,
    /// The body exactly as received.
    pub body: &'a [u8],
    /// `raw` only: the provider's delivery-id and event-type headers from the original
    /// request (pick them with [`meta_header_names`]). Credential-like and reserved names
    /// are dropped whatever the caller passes.
    pub meta_headers: &'a [(String, String)],
}

/// The body may carry anything the sender put in it: sizes only.
impl fmt::Debug for DeliveryFacts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryFacts")
            .field("id", &self.id)
            .field("event", &self.event)
            .field("provider", &self.provider)
            .field("received_at_ms", &self.received_at_ms)
            .field("content_type", &self.content_type)
            .field("body_bytes", &self.body.len())
            .field(
                "meta_headers",
                &self.meta_headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What happened to the incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IncidentChange {
    /// Opened, or reopened after it had resolved.
    Opened,
    Updated,
    Resolved,
}

impl IncidentChange {
    pub fn kind(self) -> EventKind {
        match self {
            IncidentChange::Opened => EventKind::IncidentOpened,
            IncidentChange::Updated => EventKind::IncidentUpdated,
            IncidentChange::Resolved => EventKind::IncidentResolved,
        }
    }
}

/// An incident after the change, as forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IncidentFacts<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub severity: Severity,
    pub state: IncidentState,
    pub opened_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    pub link: Option<&'a str>,
    /// `status.incidents.*.order` (`<unix ms>:<tiebreak>`): lets a consumer order events
    /// that arrive out of order across retries.
    pub order: Option<&'a str>,
}

/// One thing to forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Delivery(DeliveryFacts<'a>),
    Incident {
        change: IncidentChange,
        /// When the change happened (the payload's `timestamp`).
        at_ms: i64,
        incident: IncidentFacts<'a>,
    },
}

impl Event<'_> {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Delivery(_) => EventKind::Delivery,
            Event::Incident { change, .. } => change.kind(),
        }
    }

    fn at_ms(&self) -> i64 {
        match self {
            Event::Delivery(d) => d.received_at_ms,
            Event::Incident { at_ms, .. } => *at_ms,
        }
    }
}

/// Why a request could not be built. All are permanent for the event at hand: the
/// caller dead-letters it (or, for spec problems, the resolver should have refused it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("format {format} cannot carry {event} events")]
    FormatDoesNotCarry { format: Format, event: EventKind },
    #[error("{field} {ms} ms is not a representable time")]
    TimeOutOfRange { field: &'static str, ms: i64 },
    #[error("webhook-id must be 1 to {MAX_WEBHOOK_ID_LEN} visible ASCII characters")]
    InvalidWebhookId,
    #[error("header {name:?} is set by hookwarden and cannot be given in headersFrom")]
    ReservedHeader { name: String },
    #[error("header {name:?}: not a valid header name or value")]
    InvalidHeader { name: String },
    #[error("format {0} is signed but the target has no signing key")]
    MissingSigningKey(Format),
    #[error("signing: {0}")]
    Sign(#[from] SignError),
    #[error("serialising the payload: {0}")]
    Json(String),
}

/// A `signingSecretRef` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the signing secret is not a Standard Webhooks key: {0}")]
pub struct SigningKeyError(SignError);

/// A Standard Webhooks signing secret (`whsec_` + base64, the prefix optional), checked
/// once. Never shown in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(String);

impl SigningKey {
    pub fn parse(secret: &str) -> Result<SigningKey, SigningKeyError> {
        let secret = secret.trim();
        signature::check_secret(ProviderKind::StandardWebhooks, secret).map_err(SigningKeyError)?;
        Ok(SigningKey(secret.to_string()))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// A rendered event: what the journal keeps until the forward is delivered or expires.
#[derive(Clone, PartialEq, Eq)]
pub struct Rendered {
    pub format: Format,
    pub content_type: String,
    pub body: Bytes,
    /// Headers that belong to the body (`raw`: the integration and the provider's
    /// meta headers), already filtered.
    pub headers: Vec<(String, String)>,
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rendered")
            .field("format", &self.format)
            .field("content_type", &self.content_type)
            .field("body_bytes", &self.body.len())
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// One attempt's request, less method (always POST) and URL.
#[derive(Clone)]
pub struct OutboundRequest {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// `headersFrom` values are credentials for the target: names only.
impl fmt::Debug for OutboundRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundRequest")
            .field(
                "headers",
                &self.headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            )
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// Builds the body of `event` in `format`. `webhook_id` is the event's stable id (the
/// CloudEvents `id` is the same value).
pub fn render(
    event: &Event<'_>,
    format: Format,
    integration: IntegrationRef<'_>,
    webhook_id: &str,
) -> Result<Rendered, RenderError> {
    let kind = event.kind();
    if !format.carries(kind) {
        return Err(RenderError::FormatDoesNotCarry {
            format,
            event: kind,
        });
    }
    check_webhook_id(webhook_id)?;
    let timestamp = rfc3339("timestamp", event.at_ms())?;
    let (content_type, body, headers) = match format {
        Format::StandardWebhooks => {
            let envelope = Envelope {
                kind: kind.as_str(),
                timestamp,
                integration,
                data: data(event)?,
            };
            ("application/json".to_string(), to_json(&envelope)?, vec![])
        }
        Format::CloudEvents => {
            let cloud_event = CloudEvent {
                specversion: "1.0",
                id: webhook_id,
                source: format!("hookwarden/{}/{}", integration.namespace, integration.name),
                kind: format!("dev.hookwarden.{}", kind.as_str()),
                time: timestamp,
                datacontenttype: "application/json",
                data: Untagged(data(event)?),
            };
            (
                "application/cloudevents+json".to_string(),
                to_json(&cloud_event)?,
                vec![],
            )
        }
        Format::Raw => match event {
            Event::Delivery(d) => {
                let mut headers = vec![(
                    INTEGRATION_HEADER.to_string(),
                    format!("{}/{}", integration.namespace, integration.name),
                )];
                headers.extend(
                    d.meta_headers
                        .iter()
                        .filter(|(name, _)| passes_through(name))
                        .cloned(),
                );
                (
                    d.content_type
                        .unwrap_or("application/octet-stream")
                        .to_string(),
                    Bytes::copy_from_slice(d.body),
                    headers,
                )
            }
            Event::Incident { .. } => unreachable_combination(format, kind)?,
        },
        Format::Slack => match event {
            Event::Incident {
                change, incident, ..
            } => {
                let text = slack_text(*change, incident, integration);
                (
                    "application/json".to_string(),
                    to_json(&serde_json::json!({ "text": text }))?,
                    vec![],
                )
            }
            Event::Delivery(_) => unreachable_combination(format, kind)?,
        },
    };
    Ok(Rendered {
        format,
        content_type,
        body,
        headers,
    })
}

// `carries` was checked above; kept as an error rather than a panic.
fn unreachable_combination<T>(format: Format, event: EventKind) -> Result<T, RenderError> {
    Err(RenderError::FormatDoesNotCarry { format, event })
}

/// The headers of one attempt: content type, the rendered headers, the target's
/// `headersFrom` headers (`extra`), and — unless the format is `slack` — `webhook-id`,
/// `webhook-timestamp` (`attempt_unix_s`) and `webhook-signature`.
pub fn sign_request(
    rendered: &Rendered,
    key: Option<&SigningKey>,
    webhook_id: &str,
    attempt_unix_s: i64,
    extra: &[(String, String)],
) -> Result<OutboundRequest, RenderError> {
    check_webhook_id(webhook_id)?;
    let mut headers = HeaderMap::new();
    insert(&mut headers, "content-type", &rendered.content_type, false)?;
    for (name, value) in &rendered.headers {
        insert(&mut headers, name, value, false)?;
    }
    for (name, value) in extra {
        if is_reserved_header(name) {
            return Err(RenderError::ReservedHeader { name: name.clone() });
        }
        insert(&mut headers, name, value, true)?;
    }
    if rendered.format.is_signed() {
        let key = key.ok_or(RenderError::MissingSigningKey(rendered.format))?;
        let signed = signature::sign(
            &Scheme::preset(ProviderKind::StandardWebhooks),
            &key.0,
            &SignInput {
                body: &rendered.body,
                url: "",
                timestamp: attempt_unix_s,
                id: webhook_id,
                content_type: &rendered.content_type,
            },
        )?;
        for (name, value) in &signed {
            insert(&mut headers, name, value, false)?;
        }
    }
    Ok(OutboundRequest {
        headers,
        body: rendered.body.clone(),
    })
}

fn insert(
    headers: &mut HeaderMap,
    name: &str,
    value: &str,
    sensitive: bool,
) -> Result<(), RenderError> {
    let invalid = || RenderError::InvalidHeader {
        name: name.to_string(),
    };
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
    let mut value = HeaderValue::from_str(value).map_err(|_| invalid())?;
    value.set_sensitive(sensitive);
    headers.append(name, value);
    Ok(())
}

/// Headers hookwarden sets itself on forwarded requests (or that belong to the
/// connection): a target's `headersFrom` may not name them. The resolver refuses such a
/// key with this function; [`sign_request`] refuses it too.
pub fn is_reserved_header(name: &str) -> bool {
    const RESERVED: [&str; 15] = [
        "content-type",
        "content-length",
        "host",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        INTEGRATION_HEADER,
    ];
    let lower = name.to_ascii_lowercase();
    RESERVED.contains(&lower.as_str())
}

/// Whether a header of the original request may be copied onto a `raw` forward: not one
/// hookwarden sets, and nothing that looks like the sender's credential (signatures,
/// HMACs, tokens, secrets, authorization, cookies). Twilio's idempotency token is its
/// delivery id, not a credential.
fn passes_through(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let credential = ["signature", "hmac", "secret", "authorization", "cookie"]
        .iter()
        .any(|w| lower.contains(w))
        || (lower.contains("token") && !lower.contains("idempotency"));
    !credential && !is_reserved_header(&lower)
}

/// The headers in which `scheme`'s provider sends its delivery id and event type (what
/// [`signature::delivery_meta`] reads from headers): the ones a `raw` forward repeats.
/// `webhook-id` is not among them: a forward carries hookwarden's own.
pub fn meta_header_names(scheme: &Scheme) -> Vec<&str> {
    let fixed: &[&'static str] = match scheme.provider {
        ProviderKind::Github => &["x-github-delivery", "x-github-event"],
        ProviderKind::Gitlab => &["idempotency-key", "x-gitlab-event-uuid", "x-gitlab-event"],
        ProviderKind::Svix => &["svix-id"],
        ProviderKind::Shopify => &[
            "x-shopify-webhook-id",
            "x-shopify-event-id",
            "x-shopify-topic",
        ],
        ProviderKind::Twilio => &["i-twilio-idempotency-token"],
        ProviderKind::Sentry => &["request-id", "sentry-hook-resource"],
        ProviderKind::Linear => &["linear-delivery", "linear-event"],
        ProviderKind::Zendesk => &["x-zendesk-webhook-invocation-id"],
        ProviderKind::Jira => &["x-atlassian-webhook-identifier"],
        ProviderKind::Bitbucket => &["x-request-uuid", "x-request-id", "x-event-key"],
        ProviderKind::GithubActions => &["x-request-id"],
        ProviderKind::AwsSns => &["x-amz-sns-message-id"],
        ProviderKind::GooglePubsub => &[],
        ProviderKind::Gitea => &["x-gitea-delivery", "x-gitea-event"],
        ProviderKind::Forgejo => &[
            "x-forgejo-delivery",
            "x-forgejo-event",
            "x-gitea-delivery",
            "x-gitea-event",
        ],
        ProviderKind::Zoom => &["x-zm-trackingid"],
        ProviderKind::Twitch => &[
            "twitch-eventsub-message-id",
            "twitch-eventsub-subscription-type",
        ],
        // Ids and types in the body (or none at all).
        ProviderKind::Stripe
        | ProviderKind::Slack
        | ProviderKind::StandardWebhooks
        | ProviderKind::Pagerduty
        | ProviderKind::Grafana
        | ProviderKind::Datadog
        | ProviderKind::Alertmanager
        | ProviderKind::Discord
        | ProviderKind::Sendgrid
        | ProviderKind::AzureEventGrid
        | ProviderKind::Paddle => &[],
        ProviderKind::Generic => &[],
    };
    let mut names: Vec<&str> = fixed.to_vec();
    if let Some(id) = scheme.generic.as_ref().and_then(|g| g.id_header.as_deref()) {
        names.push(id);
    }
    names
}

fn check_webhook_id(id: &str) -> Result<(), RenderError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_WEBHOOK_ID_LEN
        && id.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(RenderError::InvalidWebhookId)
    }
}

fn rfc3339(field: &'static str, ms: i64) -> Result<String, RenderError> {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .map_err(|_| RenderError::TimeOutOfRange { field, ms })
}

fn to_json<T: Serialize>(value: &T) -> Result<Bytes, RenderError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| RenderError::Json(e.to_string()))
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: String,
    integration: IntegrationRef<'a>,
    #[serde(flatten)]
    data: Data<'a>,
}

#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    source: String,
    #[serde(rename = "type")]
    kind: String,
    time: String,
    datacontenttype: &'static str,
    data: Untagged<'a>,
}

/// The CloudEvents `data`: the incident or delivery object itself, without the
/// `incident`/`delivery` key the envelope has.
struct Untagged<'a>(Data<'a>);

impl Serialize for Untagged<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Data::Incident(i) => i.serialize(serializer),
            Data::Delivery(d) => d.serialize(serializer),
        }
    }
}

/// `{"incident": {...}}` or `{"delivery": {...}}` (flattened into the envelope; the
/// CloudEvents `data` is the same object).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum Data<'a> {
    Incident(IncidentJson<'a>),
    Delivery(DeliveryJson<'a>),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IncidentJson<'a> {
    id: &'a str,
    title: &'a str,
    severity: &'static str,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    opened_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resolved_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    link: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeliveryJson<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    provider: &'a str,
    received_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
    /// The body verbatim (`RawValue`: no reordering of keys, no rounding of numbers
    /// a re-serialised `Value` would do).
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
}

fn data<'a>(event: &Event<'a>) -> Result<Data<'a>, RenderError> {
    Ok(match event {
        Event::Incident { incident: i, .. } => Data::Incident(IncidentJson {
            id: i.id,
            title: i.title,
            severity: i.severity.as_str(),
            state: i.state.as_str(),
            opened_at: i
                .opened_at_ms
                .map(|ms| rfc3339("openedAt", ms))
                .transpose()?,
            resolved_at: i
                .resolved_at_ms
                .map(|ms| rfc3339("resolvedAt", ms))
                .transpose()?,
            link: i.link,
            order: i.order,
        }),
        Event::Delivery(d) => {
            let json = json_body(d.content_type, d.body);
            Data::Delivery(DeliveryJson {
                id: d.id,
                event: d.event,
                provider: d.provider,
                received_at: rfc3339("receivedAt", d.received_at_ms)?,
                content_type: d.content_type,
                body: json,
                body_base64: match json {
                    Some(_) => None,
                    None => Some(encode_base64(d.body)),
                },
            })
        }
    })
}

/// The body as embedded JSON when it is JSON: declared as JSON (or undeclared) and
/// parsing as one JSON value. A form post that happens to parse (`123`) stays base64.
fn json_body<'a>(content_type: Option<&str>, body: &'a [u8]) -> Option<&'a RawValue> {
    let declared_json = content_type.is_none_or(|ct| {
        let media = signature::media_type(ct);
        media == "application/json" || media == "text/json" || media.ends_with("+json")
    });
    if !declared_json {
        return None;
    }
    serde_json::from_slice::<&RawValue>(body).ok()
}

/// One readable Slack line: `:red_circle: *Disk full on db-1* opened — critical ·
/// team/alerts · <https://…|details>`. Slack mrkdwn treats `&`, `<`, `>` as control
/// characters, so text from the alert is escaped, and a link is only made of an
/// http(s) URL.
fn slack_text(
    change: IncidentChange,
    incident: &IncidentFacts<'_>,
    integration: IntegrationRef<'_>,
) -> String {
    let emoji = match (change, incident.severity) {
        (IncidentChange::Resolved, _) => ":white_check_mark:",
        (_, Severity::Critical) => ":red_circle:",
        (_, Severity::High) => ":large_orange_circle:",
        (_, Severity::Medium) => ":large_yellow_circle:",
        (_, Severity::Low) => ":large_blue_circle:",
        (_, Severity::Info) => ":information_source:",
    };
    let verb = match change {
        IncidentChange::Opened => "opened",
        IncidentChange::Updated => "updated",
        IncidentChange::Resolved => "resolved",
    };
    let mut text = format!(
        "{emoji} *{}* {verb} — {} · {}/{}",
        slack_escape(incident.title),
        incident.severity.as_str(),
        slack_escape(integration.namespace),
        slack_escape(integration.name),
    );
    if let Some(link) = incident
        .link
        .filter(|l| l.starts_with("https://") || l.starts_with("http://"))
    {
        let url = slack_escape(link).replace('|', "%7C");
        text.push_str(&format!(" · <{url}|details>"));
    }
    text
}

fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests;
