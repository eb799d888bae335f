//! Senders that prove the endpoint before they deliver: Zoom (`endpoint.url_validation`),
//! Twitch EventSub (`webhook_callback_verification`) and Azure Event Grid
//! (`SubscriptionValidation`), with the schemes that authenticate their deliveries; and
//! the recognition of a handshake sent to an integration of another provider, so the
//! sender's operator is told which provider to configure instead of a bare 401.
//!
//! A handshake is answered only after the request authenticated like any delivery of
//! the provider (Zoom and Twitch sign their handshakes; Event Grid sends the URL's query
//! key with its validation event), so an unauthenticated caller cannot make hookwarden
//! compute Zoom's `encryptedToken` for a chosen `plainToken`.

use http::HeaderMap;

use super::crypto::{Algorithm, decode_hex, mac};
use super::hmac_presets::{match_any, parse_rfc3339_or_unix, strip_prefix_ci};
use super::token::{match_tokens, presented_tokens};
use super::{Delivery, Keys, ProviderKind, Rejection, SignInput, Verified, check_window, header};

type Headers = Vec<(String, String)>;

const ZOOM_SIGNATURE: &str = "x-zm-signature";
const ZOOM_TIMESTAMP: &str = "x-zm-request-timestamp";

/// Zoom: `x-zm-signature: v0=<hex>`, HMAC-SHA256 of `v0:{x-zm-request-timestamp}:{body}`
/// keyed with the app's Secret Token; the timestamp (Unix seconds) is checked ±300 s.
pub(crate) fn verify_zoom(
    keys: &Keys<'_>,
    d: &Delivery<'_>,
    now: i64,
) -> Result<Verified, Rejection> {
    super::slack::verify_v0(keys, d, now, ZOOM_SIGNATURE, ZOOM_TIMESTAMP)
}

pub(crate) fn sign_zoom(secret: &str, input: &SignInput<'_>) -> Headers {
    let (ts, sig) = super::slack::sign_v0(secret, input);
    let mut out = vec![
        (ZOOM_SIGNATURE.to_string(), sig),
        (ZOOM_TIMESTAMP.to_string(), ts),
    ];
    if !input.id.is_empty() {
        out.push(("x-zm-trackingid".to_string(), input.id.to_string()));
    }
    out
}

/// Zoom's answer to `endpoint.url_validation`: the `plainToken` and its hex HMAC-SHA256
/// under the Secret Token.
fn zoom_validation(body: &serde_json::Value, secret: &str) -> Option<Vec<u8>> {
    if body.get("event")?.as_str()? != "endpoint.url_validation" {
        return None;
    }
    let plain = crate::domain::json::pointer(body, "/payload/plainToken")?.as_str()?;
    let encrypted = hex::encode(mac(
        Algorithm::Sha256,
        secret.as_bytes(),
        &[plain.as_bytes()],
    ));
    serde_json::to_vec(&serde_json::json!({
        "plainToken": plain,
        "encryptedToken": encrypted,
    }))
    .ok()
}

const TWITCH_ID: &str = "Twitch-Eventsub-Message-Id";
const TWITCH_TIMESTAMP: &str = "Twitch-Eventsub-Message-Timestamp";
const TWITCH_SIGNATURE: &str = "Twitch-Eventsub-Message-Signature";
pub(crate) const TWITCH_TYPE: &str = "Twitch-Eventsub-Message-Type";
/// Twitch's EventSub guide: "make sure the message timestamp is not older than 10
/// minutes" (its retries keep the first attempt's timestamp).
pub const TWITCH_TOLERANCE_SECONDS: i64 = 600;

/// Twitch EventSub: `Twitch-Eventsub-Message-Signature: sha256=<hex>`, HMAC-SHA256 of
/// message id + timestamp + body (concatenated, no separator) keyed with the
/// subscription's secret; the RFC 3339 timestamp is checked ±10 minutes.
pub(crate) fn verify_twitch(
    keys: &Keys<'_>,
    d: &Delivery<'_>,
    now: i64,
) -> Result<Verified, Rejection> {
    let value =
        header(d.headers, TWITCH_SIGNATURE)?.ok_or_else(|| Rejection::MissingSignature {
            header: TWITCH_SIGNATURE.to_string(),
        })?;
    let id = header(d.headers, TWITCH_ID)?.ok_or_else(|| Rejection::MissingId {
        header: TWITCH_ID.to_string(),
    })?;
    let ts_raw =
        header(d.headers, TWITCH_TIMESTAMP)?.ok_or_else(|| Rejection::MissingTimestamp {
            source: format!("{TWITCH_TIMESTAMP} header"),
        })?;
    let sig = strip_prefix_ci(value, "sha256=")
        .and_then(decode_hex)
        .filter(|s| s.len() == Algorithm::Sha256.output_len())
        .ok_or(Rejection::MalformedSignature {
            header: TWITCH_SIGNATURE.to_string(),
            reason: "expected sha256=<64 hex digits>",
        })?;
    let index = match_any(
        keys,
        Algorithm::Sha256,
        &[sig],
        &[id.as_bytes(), ts_raw.as_bytes(), d.body],
    )
    .ok_or(Rejection::SignatureMismatch {
        secrets: keys.len(),
    })?;
    let ts = parse_rfc3339_or_unix(ts_raw).ok_or_else(|| Rejection::MalformedTimestamp {
        source: format!("{TWITCH_TIMESTAMP} header"),
    })?;
    check_window(ts, now, TWITCH_TOLERANCE_SECONDS)?;
    Ok(Verified {
        secret_index: index,
        timestamp: Some(ts),
    })
}

pub(crate) fn sign_twitch(secret: &str, input: &SignInput<'_>) -> Headers {
    // Twitch writes nanoseconds; any RFC 3339 form is signed as sent.
    let ts = jiff::Timestamp::from_second(input.timestamp)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S.%fZ").to_string())
        .unwrap_or_else(|_| input.timestamp.to_string());
    let sig = hex::encode(mac(
        Algorithm::Sha256,
        secret.as_bytes(),
        &[input.id.as_bytes(), ts.as_bytes(), input.body],
    ));
    vec![
        (TWITCH_ID.to_string(), input.id.to_string()),
        (TWITCH_TIMESTAMP.to_string(), ts),
        (TWITCH_SIGNATURE.to_string(), format!("sha256={sig}")),
    ]
}

pub(crate) const AZURE_EVENT_TYPE: &str = "aeg-event-type";
/// Query parameters of the endpoint URL that may carry the key (`?code=` is what Azure
/// Functions use, `?key=` what Event Grid's documentation shows).
const AZURE_QUERY_KEYS: [&str; 2] = ["code", "key"];

/// Azure Event Grid signs nothing. The subscription's endpoint URL carries a key in its
/// query (`?code=<secret>` or `?key=<secret>`; Event Grid keeps the query secret once
/// set), or a delivery property header carries it (`Authorization: Bearer <secret>`,
/// Basic, or the header named in spec.tokenHeader). Compared in constant time without
/// revealing the length.
pub(crate) fn verify_azure(
    keys: &Keys<'_>,
    d: &Delivery<'_>,
    token_header: Option<&str>,
) -> Result<Verified, Rejection> {
    let extra: Vec<&str> = token_header.into_iter().collect();
    let mut tokens = presented_tokens(d.headers, &extra)?;
    if let Some((_, query)) = d.url.split_once('?') {
        tokens.extend(
            form_urlencoded::parse(query.as_bytes())
                .filter(|(k, _)| AZURE_QUERY_KEYS.contains(&k.as_ref()))
                .map(|(_, v)| std::borrow::Cow::Owned(v.into_owned())),
        );
    }
    if tokens.is_empty() {
        let mut header = "?code= (or ?key=) query parameter, or Authorization".to_string();
        if let Some(h) = token_header {
            header.push_str(" or ");
            header.push_str(h);
        }
        return Err(Rejection::MissingSignature { header });
    }
    match_tokens(keys, &tokens)
        .map(|i| Verified {
            secret_index: i,
            timestamp: None,
        })
        .ok_or(Rejection::TokenMismatch {
            secrets: keys.len(),
        })
}

/// The key as a delivery property header: `Authorization: Bearer`, or the header named
/// in spec.tokenHeader. (A `?code=` URL needs no header: send to that URL.)
pub(crate) fn sign_azure(secret: &str, token_header: Option<&str>) -> Headers {
    match token_header {
        Some(h) => vec![(h.to_string(), secret.to_string())],
        None => vec![("Authorization".to_string(), format!("Bearer {secret}"))],
    }
}

/// Event Grid's validation event (Event Grid schema: an array whose first event is a
/// `Microsoft.EventGrid.SubscriptionValidationEvent`; CloudEvents schema: one object of
/// that type) → `{"validationResponse": <validationCode>}`.
fn azure_validation(headers: &HeaderMap, body: &serde_json::Value) -> Option<Vec<u8>> {
    let kind = headers.get(AZURE_EVENT_TYPE)?.to_str().ok()?;
    if !kind.eq_ignore_ascii_case("SubscriptionValidation") {
        return None;
    }
    let event = match body {
        serde_json::Value::Array(events) => events.first()?,
        other => other,
    };
    let code = crate::domain::json::pointer(event, "/data/validationCode")
        .or_else(|| crate::domain::json::pointer(event, "/data/validationcode"))?
        .as_str()?;
    serde_json::to_vec(&serde_json::json!({ "validationResponse": code })).ok()
}

/// The answer a provider's handshake needs instead of 202, if this authenticated
/// request is one: Slack `url_verification` (challenge echoed), Discord PING
/// (`{"type":1}`), Zoom `endpoint.url_validation` (`encryptedToken`, so it needs the
/// secret that authenticated the request), Twitch `webhook_callback_verification`
/// (challenge echoed as text), Event Grid `SubscriptionValidation`.
pub fn handshake(
    provider: ProviderKind,
    headers: &HeaderMap,
    body: &serde_json::Value,
    secret: Option<&str>,
) -> Option<(&'static str, Vec<u8>)> {
    match provider {
        ProviderKind::Slack
            if body.get("type").and_then(|t| t.as_str()) == Some("url_verification") =>
        {
            let challenge = body.get("challenge")?.as_str()?;
            Some(("text/plain", challenge.as_bytes().to_vec()))
        }
        ProviderKind::Discord if body.get("type").and_then(|t| t.as_i64()) == Some(1) => {
            Some(("application/json", br#"{"type":1}"#.to_vec()))
        }
        ProviderKind::Zoom => Some(("application/json", zoom_validation(body, secret?)?)),
        ProviderKind::Twitch => {
            let kind = headers.get(TWITCH_TYPE)?.to_str().ok()?;
            if kind != "webhook_callback_verification" {
                return None;
            }
            let challenge = body.get("challenge")?.as_str()?;
            Some(("text/plain", challenge.as_bytes().to_vec()))
        }
        ProviderKind::AzureEventGrid => {
            Some(("application/json", azure_validation(headers, body)?))
        }
        _ => None,
    }
}

/// Longest body inspected for a foreign handshake (they are all small).
const FOREIGN_HANDSHAKE_MAX_BODY: usize = 16 * 1024;

/// Which provider's handshake this request is, when it is one and `provider` is another
/// one: the sender's operator configured the URL in one product and the integration for
/// another. Only consulted after the request failed to authenticate.
pub(crate) fn foreign_handshake(
    provider: ProviderKind,
    d: &Delivery<'_>,
) -> Option<(&'static str, ProviderKind)> {
    let header_is = |name: &str, value: &str| {
        d.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(value))
    };
    let found = if header_is(TWITCH_TYPE, "webhook_callback_verification") {
        Some((
            "Twitch EventSub webhook_callback_verification",
            ProviderKind::Twitch,
        ))
    } else if header_is(AZURE_EVENT_TYPE, "SubscriptionValidation") {
        Some((
            "Azure Event Grid SubscriptionValidation",
            ProviderKind::AzureEventGrid,
        ))
    } else if d.body.len() <= FOREIGN_HANDSHAKE_MAX_BODY {
        let body: Option<serde_json::Value> = serde_json::from_slice(d.body).ok();
        let field = |name: &str| {
            body.as_ref().and_then(|b| b.get(name)).and_then(|v| {
                v.as_str()
                    .map(str::to_string)
                    .or_else(|| Some(v.to_string()))
            })
        };
        if field("event").as_deref() == Some("endpoint.url_validation") {
            Some(("Zoom endpoint.url_validation", ProviderKind::Zoom))
        } else if field("type").as_deref() == Some("url_verification") {
            Some(("Slack url_verification", ProviderKind::Slack))
        } else if field("type").as_deref() == Some("1")
            && d.headers.contains_key("X-Signature-Ed25519")
        {
            Some(("Discord PING", ProviderKind::Discord))
        } else {
            None
        }
    } else {
        None
    };
    found.filter(|(_, p)| *p != provider)
}
