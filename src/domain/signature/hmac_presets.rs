//! Presets that sign with one HMAC over the body (sometimes with a timestamp) and put
//! the MAC in one header: GitHub, Jira, Bitbucket, Shopify, PagerDuty, Sentry, Linear,
//! Grafana, Zendesk, Gitea/Forgejo, Paddle.

use super::crypto::{Algorithm, ct_eq, decode_base64, decode_hex, encode_base64, mac};
use super::{
    DEFAULT_TOLERANCE_SECONDS, Delivery, Keys, LINEAR_TOLERANCE_SECONDS, Rejection, SignInput,
    Verified, check_window, header, parse_unix,
};

type Headers = Vec<(String, String)>;

/// The first secret whose MAC over `parts` equals one of `candidates`. Every candidate
/// is compared (no early exit inside one secret) so timing says nothing about which
/// candidate was close.
pub(crate) fn match_any(
    keys: &Keys<'_>,
    alg: Algorithm,
    candidates: &[Vec<u8>],
    parts: &[&[u8]],
) -> Option<usize> {
    keys.find(|secret| {
        let expected = mac(alg, secret.as_bytes(), parts);
        candidates
            .iter()
            .fold(false, |acc, c| acc | ct_eq(&expected, c))
    })
}

/// `prefix` at the start of `value`, ASCII case-insensitively (`SHA256=` is seen in the wild).
pub(crate) fn strip_prefix_ci<'v>(value: &'v str, prefix: &str) -> Option<&'v str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

fn malformed(header: &str, reason: &'static str) -> Rejection {
    Rejection::MalformedSignature {
        header: header.to_string(),
        reason,
    }
}

fn missing(header: &str) -> Rejection {
    Rejection::MissingSignature {
        header: header.to_string(),
    }
}

fn mismatch(keys: &Keys<'_>) -> Rejection {
    Rejection::SignatureMismatch {
        secrets: keys.len(),
    }
}

fn hex_of_len(header: &str, value: &str, alg: Algorithm) -> Result<Vec<u8>, Rejection> {
    decode_hex(value)
        .filter(|b| b.len() == alg.output_len())
        .ok_or_else(|| malformed(header, "signature is not a hex HMAC of the expected length"))
}

fn base64_of_len(header: &str, value: &str, alg: Algorithm) -> Result<Vec<u8>, Rejection> {
    decode_base64(value)
        .filter(|b| b.len() == alg.output_len())
        .ok_or_else(|| {
            malformed(
                header,
                "signature is not a base64 HMAC of the expected length",
            )
        })
}

fn verified(index: usize, timestamp: Option<i64>) -> Verified {
    Verified {
        secret_index: index,
        timestamp,
    }
}

fn push_id(out: &mut Headers, name: &str, id: &str) {
    if !id.is_empty() {
        out.push((name.to_string(), id.to_string()));
    }
}

/// One `prefix<hex>` header over the body.
fn verify_prefixed_hex(
    keys: &Keys<'_>,
    d: &Delivery<'_>,
    name: &str,
    prefix: &str,
    alg: Algorithm,
) -> Result<Verified, Rejection> {
    let value = header(d.headers, name)?.ok_or_else(|| missing(name))?;
    let hex = strip_prefix_ci(value, prefix)
        .ok_or_else(|| malformed(name, "value does not start with the expected prefix"))?;
    let sig = hex_of_len(name, hex, alg)?;
    match_any(keys, alg, &[sig], &[d.body])
        .map(|i| verified(i, None))
        .ok_or_else(|| mismatch(keys))
}

const GITHUB_SHA256: &str = "X-Hub-Signature-256";
const GITHUB_SHA1: &str = "X-Hub-Signature";

/// GitHub: `X-Hub-Signature-256: sha256=<hex>`. The legacy SHA-1 header is only
/// consulted when the SHA-256 one is absent (old GitHub Enterprise Server); when both
/// are sent, a bad SHA-256 is never rescued by SHA-1.
pub(crate) fn verify_github(keys: &Keys<'_>, d: &Delivery<'_>) -> Result<Verified, Rejection> {
    if d.headers.contains_key(GITHUB_SHA256) {
        verify_prefixed_hex(keys, d, GITHUB_SHA256, "sha256=", Algorithm::Sha256)
    } else if header(d.headers, GITHUB_SHA1)?.is_some() {
        verify_prefixed_hex(keys, d, GITHUB_SHA1, "sha1=", Algorithm::Sha1)
    } else {
        Err(missing(GITHUB_SHA256))
    }
}

pub(crate) fn sign_github(secret: &str, input: &SignInput<'_>) -> Headers {
    let key = secret.as_bytes();
    let mut out = vec![
        (
            GITHUB_SHA1.to_string(),
            format!(
                "sha1={}",
                hex::encode(mac(Algorithm::Sha1, key, &[input.body]))
            ),
        ),
        (
            GITHUB_SHA256.to_string(),
            format!(
                "sha256={}",
                hex::encode(mac(Algorithm::Sha256, key, &[input.body]))
            ),
        ),
    ];
    push_id(&mut out, "X-GitHub-Delivery", input.id);
    out
}

const HUB: &str = "X-Hub-Signature";

/// Jira (Atlassian) and Bitbucket: `X-Hub-Signature: sha256=<hex>`; `sha1=` and other
/// methods are refused.
pub(crate) fn verify_hub_sha256(keys: &Keys<'_>, d: &Delivery<'_>) -> Result<Verified, Rejection> {
    let value = header(d.headers, HUB)?.ok_or_else(|| missing(HUB))?;
    if strip_prefix_ci(value, "sha256=").is_none() {
        return Err(malformed(HUB, "only sha256=<hex> signatures are accepted"));
    }
    verify_prefixed_hex(keys, d, HUB, "sha256=", Algorithm::Sha256)
}

pub(crate) fn sign_hub_sha256(secret: &str, input: &SignInput<'_>, id_header: &str) -> Headers {
    let sig = hex::encode(mac(Algorithm::Sha256, secret.as_bytes(), &[input.body]));
    let mut out = vec![(HUB.to_string(), format!("sha256={sig}"))];
    push_id(&mut out, id_header, input.id);
    out
}

const SHOPIFY: &str = "X-Shopify-Hmac-Sha256";

/// Shopify: base64 HMAC-SHA256 of the body with the app's client secret.
pub(crate) fn verify_shopify(keys: &Keys<'_>, d: &Delivery<'_>) -> Result<Verified, Rejection> {
    let value = header(d.headers, SHOPIFY)?.ok_or_else(|| missing(SHOPIFY))?;
    let sig = base64_of_len(SHOPIFY, value, Algorithm::Sha256)?;
    match_any(keys, Algorithm::Sha256, &[sig], &[d.body])
        .map(|i| verified(i, None))
        .ok_or_else(|| mismatch(keys))
}

pub(crate) fn sign_shopify(secret: &str, input: &SignInput<'_>) -> Headers {
    let sig = encode_base64(&mac(Algorithm::Sha256, secret.as_bytes(), &[input.body]));
    let mut out = vec![(SHOPIFY.to_string(), sig)];
    push_id(&mut out, "X-Shopify-Webhook-Id", input.id);
    out
}

const PAGERDUTY: &str = "X-PagerDuty-Signature";

/// PagerDuty v3: `X-PagerDuty-Signature: v1=<hex>[,v1=<hex>…]` (several during secret
/// rotation); entries of other versions are ignored, like PagerDuty's Go library does.
pub(crate) fn verify_pagerduty(keys: &Keys<'_>, d: &Delivery<'_>) -> Result<Verified, Rejection> {
    let value = header(d.headers, PAGERDUTY)?.ok_or_else(|| missing(PAGERDUTY))?;
    let candidates: Vec<Vec<u8>> = value
        .split(',')
        .filter_map(|part| part.trim().strip_prefix("v1="))
        .filter_map(decode_hex)
        .collect();
    if candidates.is_empty() {
        return Err(malformed(PAGERDUTY, "no v1=<hex> signature"));
    }
    match_any(keys, Algorithm::Sha256, &candidates, &[d.body])
        .map(|i| verified(i, None))
        .ok_or_else(|| mismatch(keys))
}

pub(crate) fn sign_pagerduty(secret: &str, input: &SignInput<'_>) -> Headers {
    let sig = hex::encode(mac(Algorithm::Sha256, secret.as_bytes(), &[input.body]));
    let mut out = vec![(PAGERDUTY.to_string(), format!("v1={sig}"))];
    push_id(&mut out, "X-Webhook-Id", input.id);
    out
}

const SENTRY: &str = "Sentry-Hook-Signature";

/// Sentry integration platform: hex HMAC-SHA256 of the body with the client secret.
/// `Sentry-Hook-Timestamp` is not signed, so it is not checked (it would prove nothing).
pub(crate) fn verify_sentry(keys: &Keys<'_>, d: &Delivery<'_>) -> Result<Verified, Rejection> {
    verify_prefixed_hex(keys, d, SENTRY, "", Algorithm::Sha256)
}

pub(crate) fn sign_sentry(secret: &str, input: &SignInput<'_>) -> Headers {
    let sig = hex::encode(mac(Algorithm::Sha256, secret.as_bytes(), &[input.body]));
    let mut out = vec![
        (SENTRY.to_string(), sig),
        (
            "Sentry-Hook-Timestamp".to_string(),
            input.timestamp.to_string(),
        ),
    ];
    push_id(&mut out, "Request-ID", input.id);
    out
}

const LINEAR: &str = "Linear-Signature";
const LINEAR_TS: &str = "Linear-Timestamp";

/// Linear: hex HMAC-SHA256 of the body; the replay window is the body's signed
/// `webhookTimestamp` (Unix milliseconds), ±60 s like Linear's SDK. The unsigned
/// `Linear-Timestamp` header is only used when the body has no `webhookTimestamp`.
pub(crate) fn verify_linear(
    keys: &Keys<'_>,
    d: &Delivery<'_>,
    now: i64,
) -> Result<Verified, Rejection> {
    let value = header(d.headers, LINEAR)?.ok_or_else(|| missing(LINEAR))?;
    let sig = hex_of_len(LINEAR, value, Algorithm::Sha256)?;
    let index =
        match_any(keys, Algorithm::Sha256, &[sig], &[d.body]).ok_or_else(|| mismatch(keys))?;
    let from_body = match serde_json::from_slice::<serde_json::Value>(d.body) {
        Ok(v) => match v.get("webhookTimestamp") {
            None | Some(serde_json::Value::Null) => None,
            Some(t) => Some(
                t.as_i64()
                    .or_else(|| t.as_f64().map(|f| f as i64))
                    .ok_or_else(|| Rejection::MalformedTimestamp {
                        source: "webhookTimestamp in the body".to_string(),
                    })?,
            ),
        },
        Err(_) => None,
    };
    let ts_ms = match from_body {
        Some(ms) => ms,
        None => match header(d.headers, LINEAR_TS)? {
            Some(h) => parse_unix(h).ok_or_else(|| Rejection::MalformedTimestamp {
                source: format!("{LINEAR_TS} header"),
            })?,
            None => {
                return Err(Rejection::MissingTimestamp {
                    source: "webhookTimestamp in the body or Linear-Timestamp header".to_string(),
                });
            }
        },
    };
    let now_ms = now.saturating_mul(1000);
    let tol_ms = LINEAR_TOLERANCE_SECONDS * 1000;
    let age_ms = now_ms.saturating_sub(ts_ms);
    if age_ms > tol_ms {
        return Err(Rejection::TimestampStale {
            age_seconds: age_ms / 1000,
            tolerance_seconds: LINEAR_TOLERANCE_SECONDS,
        });
    }
    if -age_ms > tol_ms {
        return Err(Rejection::TimestampFuture {
            ahead_seconds: -age_ms / 1000,
            tolerance_seconds: LINEAR_TOLERANCE_SECONDS,
        });
    }
    Ok(verified(index, Some(ts_ms.div_euclid(1000))))
}

pub(crate) fn sign_linear(secret: &str, input: &SignInput<'_>) -> Headers {
    let sig = hex::encode(mac(Algorithm::Sha256, secret.as_bytes(), &[input.body]));
    let mut out = vec![(LINEAR.to_string(), sig)];
    push_id(&mut out, "Linear-Delivery", input.id);
    out.push((
        LINEAR_TS.to_string(),
        input.timestamp.saturating_mul(1000).to_string(),
    ));
    out
}

const GRAFANA: &str = "X-Grafana-Alerting-Signature";
const GRAFANA_TS: &str = "X-Grafana-Alerting-Timestamp";

/// Grafana alerting HMAC: hex HMAC-SHA256 of `{timestamp}:{body}` when the timestamp
/// header is sent (then checked ±300 s), else of the body.
pub(crate) fn verify_grafana(
    keys: &Keys<'_>,
    d: &Delivery<'_>,
    now: i64,
) -> Result<Verified, Rejection> {
    let value = header(d.headers, GRAFANA)?.ok_or_else(|| missing(GRAFANA))?;
    let sig = hex_of_len(GRAFANA, value, Algorithm::Sha256)?;
    match header(d.headers, GRAFANA_TS)? {
        None => match_any(keys, Algorithm::Sha256, &[sig], &[d.body])
            .map(|i| verified(i, None))
            .ok_or_else(|| mismatch(keys)),
        Some(ts_raw) => {
            let index = match_any(
                keys,
                Algorithm::Sha256,
                &[sig],
                &[ts_raw.as_bytes(), b":", d.body],
            )
            .ok_or_else(|| mismatch(keys))?;
            let ts = parse_unix(ts_raw).ok_or_else(|| Rejection::MalformedTimestamp {
                source: format!("{GRAFANA_TS} header"),
            })?;
            check_window(ts, now, DEFAULT_TOLERANCE_SECONDS)?;
            Ok(verified(index, Some(ts)))
        }
    }
}

pub(crate) fn sign_grafana(secret: &str, input: &SignInput<'_>) -> Headers {
    let ts = input.timestamp.to_string();
    let sig = hex::encode(mac(
        Algorithm::Sha256,
        secret.as_bytes(),
        &[ts.as_bytes(), b":", input.body],
    ));
    vec![(GRAFANA.to_string(), sig), (GRAFANA_TS.to_string(), ts)]
}

const ZENDESK: &str = "X-Zendesk-Webhook-Signature";
const ZENDESK_TS: &str = "X-Zendesk-Webhook-Signature-Timestamp";

/// Zendesk: base64 HMAC-SHA256 of `timestamp + body`, the timestamp an RFC 3339 string
/// in its own header, checked ±300 s. Zendesk's event-connector page publishes an
/// example signed as `body + timestamp`; both orders are accepted (neither can be
/// produced without the secret).
pub(crate) fn verify_zendesk(
    keys: &Keys<'_>,
    d: &Delivery<'_>,
    now: i64,
) -> Result<Verified, Rejection> {
    let value = header(d.headers, ZENDESK)?.ok_or_else(|| missing(ZENDESK))?;
    let sig = base64_of_len(ZENDESK, value, Algorithm::Sha256)?;
    let ts_raw = header(d.headers, ZENDESK_TS)?.ok_or_else(|| Rejection::MissingTimestamp {
        source: format!("{ZENDESK_TS} header"),
    })?;
    let candidates = [sig];
    let index = match_any(
        keys,
        Algorithm::Sha256,
        &candidates,
        &[ts_raw.as_bytes(), d.body],
    )
    .or_else(|| {
        match_any(
            keys,
            Algorithm::Sha256,
            &candidates,
            &[d.body, ts_raw.as_bytes()],
        )
    })
    .ok_or_else(|| mismatch(keys))?;
    let ts = parse_rfc3339_or_unix(ts_raw).ok_or_else(|| Rejection::MalformedTimestamp {
        source: format!("{ZENDESK_TS} header"),
    })?;
    check_window(ts, now, DEFAULT_TOLERANCE_SECONDS)?;
    Ok(verified(index, Some(ts)))
}

pub(crate) fn parse_rfc3339_or_unix(s: &str) -> Option<i64> {
    parse_unix(s).or_else(|| {
        s.trim()
            .parse::<jiff::Timestamp>()
            .ok()
            .map(|t| t.as_second())
    })
}

pub(crate) fn sign_zendesk(secret: &str, input: &SignInput<'_>) -> Headers {
    let ts = jiff::Timestamp::from_second(input.timestamp)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| input.timestamp.to_string());
    let sig = encode_base64(&mac(
        Algorithm::Sha256,
        secret.as_bytes(),
        &[ts.as_bytes(), input.body],
    ));
    let mut out = vec![(ZENDESK.to_string(), sig), (ZENDESK_TS.to_string(), ts)];
    push_id(&mut out, "X-Zendesk-Webhook-Invocation-Id", input.id);
    out
}

const GITEA: &str = "X-Gitea-Signature";
const FORGEJO: &str = "X-Forgejo-Signature";

/// Gitea and Forgejo: hex HMAC-SHA256 of the body, no prefix. Forgejo sends
/// `X-Forgejo-Signature` and, for compatibility, `X-Gitea-Signature` with the same
/// value; the preset's own header is read first. Gitea also sends `X-Hub-Signature-256`,
/// which is not needed.
pub(crate) fn verify_gitea(
    keys: &Keys<'_>,
    d: &Delivery<'_>,
    forgejo: bool,
) -> Result<Verified, Rejection> {
    let order: &[&str] = if forgejo {
        &[FORGEJO, GITEA]
    } else {
        &[GITEA, FORGEJO]
    };
    for name in order {
        if header(d.headers, name)?.is_some() {
            return verify_prefixed_hex(keys, d, name, "", Algorithm::Sha256);
        }
    }
    Err(missing(order[0]))
}

pub(crate) fn sign_gitea(secret: &str, input: &SignInput<'_>, forgejo: bool) -> Headers {
    let sig = hex::encode(mac(Algorithm::Sha256, secret.as_bytes(), &[input.body]));
    let mut out = Vec::new();
    if forgejo {
        out.push((FORGEJO.to_string(), sig.clone()));
    }
    out.push((GITEA.to_string(), sig));
    let delivery = if forgejo {
        "X-Forgejo-Delivery"
    } else {
        "X-Gitea-Delivery"
    };
    push_id(&mut out, delivery, input.id);
    out
}

const PADDLE: &str = "Paddle-Signature";
/// Paddle's SDKs refuse a `ts` more than 5 s away from now (`Verifier(maximum_variance=5)`
/// in paddle-python-sdk); DESIGN's rule is to follow the stricter SDK.
pub const PADDLE_TOLERANCE_SECONDS: i64 = 5;

/// Paddle Billing: `Paddle-Signature: ts=<unix>;h1=<hex>[;h1=<hex>…]`, hex HMAC-SHA256
/// of `{ts}:{body}` keyed with the notification destination's secret key as text (several
/// `h1` during a key rotation). `ts` is checked ±5 s like Paddle's SDKs.
pub(crate) fn verify_paddle(
    keys: &Keys<'_>,
    d: &Delivery<'_>,
    now: i64,
) -> Result<Verified, Rejection> {
    let value = header(d.headers, PADDLE)?.ok_or_else(|| missing(PADDLE))?;
    let mut ts_raw = None;
    let mut candidates = Vec::new();
    for part in value.split(';') {
        match part.trim().split_once('=') {
            Some(("ts", v)) => ts_raw = Some(v.trim()),
            Some(("h1", v)) => candidates.push(hex_of_len(PADDLE, v, Algorithm::Sha256)?),
            _ => {}
        }
    }
    let ts_raw = ts_raw.ok_or_else(|| Rejection::MissingTimestamp {
        source: format!("ts= in the {PADDLE} header"),
    })?;
    if candidates.is_empty() {
        return Err(malformed(PADDLE, "no h1=<hex> signature"));
    }
    let index = match_any(
        keys,
        Algorithm::Sha256,
        &candidates,
        &[ts_raw.as_bytes(), b":", d.body],
    )
    .ok_or_else(|| mismatch(keys))?;
    let ts = parse_unix(ts_raw).ok_or_else(|| Rejection::MalformedTimestamp {
        source: format!("ts= in the {PADDLE} header"),
    })?;
    check_window(ts, now, PADDLE_TOLERANCE_SECONDS)?;
    Ok(verified(index, Some(ts)))
}

pub(crate) fn sign_paddle(secret: &str, input: &SignInput<'_>) -> Headers {
    let ts = input.timestamp.to_string();
    let sig = hex::encode(mac(
        Algorithm::Sha256,
        secret.as_bytes(),
        &[ts.as_bytes(), b":", input.body],
    ));
    vec![(PADDLE.to_string(), format!("ts={ts};h1={sig}"))]
}
