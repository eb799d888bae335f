//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…][,v0=…]`, HMAC-SHA256 of
//! `{t}.{body}` keyed with the whole endpoint secret string (`whsec_…` included, not
//! decoded). Several `v1` entries appear while a rolled secret is still valid; `v0`
//! (test-mode legacy) is ignored, as Stripe's libraries do.

use super::crypto::{Algorithm, decode_hex, mac};
use super::hmac_presets::match_any;
use super::{
    DEFAULT_TOLERANCE_SECONDS, Delivery, Keys, Rejection, SignInput, Verified, check_window,
    header, parse_unix,
};

const HEADER: &str = "Stripe-Signature";

pub(crate) fn verify(keys: &Keys<'_>, d: &Delivery<'_>, now: i64) -> Result<Verified, Rejection> {
    let value = header(d.headers, HEADER)?.ok_or_else(|| Rejection::MissingSignature {
        header: HEADER.to_string(),
    })?;
    let mut timestamp: Option<&str> = None;
    let mut candidates = Vec::new();
    for item in value.split(',') {
        let Some((k, v)) = item.split_once('=') else {
            continue;
        };
        match k.trim() {
            "t" => timestamp = Some(v.trim()),
            "v1" => {
                if let Some(sig) = decode_hex(v) {
                    candidates.push(sig);
                }
            }
            _ => {}
        }
    }
    let ts_raw = timestamp.ok_or_else(|| Rejection::MissingTimestamp {
        source: format!("t= in {HEADER}"),
    })?;
    let ts = parse_unix(ts_raw).ok_or_else(|| Rejection::MalformedTimestamp {
        source: format!("t= in {HEADER}"),
    })?;
    if candidates.is_empty() {
        return Err(Rejection::MalformedSignature {
            header: HEADER.to_string(),
            reason: "no v1=<hex> signature",
        });
    }
    let ts_text = ts.to_string();
    let index = match_any(
        keys,
        Algorithm::Sha256,
        &candidates,
        &[ts_text.as_bytes(), b".", d.body],
    )
    .ok_or(Rejection::SignatureMismatch {
        secrets: keys.len(),
    })?;
    check_window(ts, now, DEFAULT_TOLERANCE_SECONDS)?;
    Ok(Verified {
        secret_index: index,
        timestamp: Some(ts),
    })
}

pub(crate) fn sign(secret: &str, input: &SignInput<'_>) -> Vec<(String, String)> {
    let ts = input.timestamp.to_string();
    let sig = hex::encode(mac(
        Algorithm::Sha256,
        secret.as_bytes(),
        &[ts.as_bytes(), b".", input.body],
    ));
    vec![(HEADER.to_string(), format!("t={ts},v1={sig}"))]
}
