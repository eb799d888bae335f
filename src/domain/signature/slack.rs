//! Slack: `X-Slack-Signature: v0=<hex>`, HMAC-SHA256 of `v0:{X-Slack-Request-Timestamp}:{body}`
//! keyed with the app's signing secret; the timestamp is checked ±300 s like Slack's SDKs.

use super::crypto::{Algorithm, mac};
use super::hmac_presets::{match_any, strip_prefix_ci};
use super::{
    DEFAULT_TOLERANCE_SECONDS, Delivery, Keys, Rejection, SignInput, Verified, check_window,
    header, parse_unix,
};

const SIGNATURE: &str = "X-Slack-Signature";
const TIMESTAMP: &str = "X-Slack-Request-Timestamp";

pub(crate) fn verify(keys: &Keys<'_>, d: &Delivery<'_>, now: i64) -> Result<Verified, Rejection> {
    verify_v0(keys, d, now, SIGNATURE, TIMESTAMP)
}

/// The `v0` scheme Slack and Zoom share: `SIGNATURE: v0=<hex>`, HMAC-SHA256 of
/// `v0:{TIMESTAMP}:{body}`, the timestamp (Unix seconds) checked ±300 s.
pub(crate) fn verify_v0(
    keys: &Keys<'_>,
    d: &Delivery<'_>,
    now: i64,
    signature_header: &str,
    timestamp_header: &str,
) -> Result<Verified, Rejection> {
    let value =
        header(d.headers, signature_header)?.ok_or_else(|| Rejection::MissingSignature {
            header: signature_header.to_string(),
        })?;
    let ts_raw =
        header(d.headers, timestamp_header)?.ok_or_else(|| Rejection::MissingTimestamp {
            source: format!("{timestamp_header} header"),
        })?;
    let hex = strip_prefix_ci(value, "v0=").ok_or(Rejection::MalformedSignature {
        header: signature_header.to_string(),
        reason: "expected v0=<hex>",
    })?;
    let sig = super::crypto::decode_hex(hex)
        .filter(|s| s.len() == Algorithm::Sha256.output_len())
        .ok_or(Rejection::MalformedSignature {
            header: signature_header.to_string(),
            reason: "signature is not 64 hex digits",
        })?;
    let index = match_any(
        keys,
        Algorithm::Sha256,
        &[sig],
        &[b"v0:", ts_raw.as_bytes(), b":", d.body],
    )
    .ok_or(Rejection::SignatureMismatch {
        secrets: keys.len(),
    })?;
    let ts = parse_unix(ts_raw).ok_or_else(|| Rejection::MalformedTimestamp {
        source: format!("{timestamp_header} header"),
    })?;
    check_window(ts, now, DEFAULT_TOLERANCE_SECONDS)?;
    Ok(Verified {
        secret_index: index,
        timestamp: Some(ts),
    })
}

pub(crate) fn sign(secret: &str, input: &SignInput<'_>) -> Vec<(String, String)> {
    let (ts, sig) = sign_v0(secret, input);
    vec![(TIMESTAMP.to_string(), ts), (SIGNATURE.to_string(), sig)]
}

/// The timestamp and the `v0=<hex>` signature value of [`verify_v0`]'s scheme.
pub(crate) fn sign_v0(secret: &str, input: &SignInput<'_>) -> (String, String) {
    let ts = input.timestamp.to_string();
    let sig = hex::encode(mac(
        Algorithm::Sha256,
        secret.as_bytes(),
        &[b"v0:", ts.as_bytes(), b":", input.body],
    ));
    (ts, format!("v0={sig}"))
}
