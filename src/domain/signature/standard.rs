//! Standard Webhooks (and Svix, its origin; and GitLab signing tokens): headers
//! `webhook-id`, `webhook-timestamp`, `webhook-signature` (Svix: `svix-*`), HMAC-SHA256
//! of `{id}.{timestamp}.{body}` keyed with the base64-decoded secret (after an optional
//! `whsec_` prefix), signatures `v1,<base64>` space-separated (several during rotation;
//! `v1a,` asymmetric entries are skipped), timestamp ±300 s both ways.

use super::crypto::{Algorithm, ct_eq, decode_base64, encode_base64, mac};
use super::{
    DEFAULT_TOLERANCE_SECONDS, Delivery, Keys, Rejection, SignError, SignInput, Verified,
    check_window, header, parse_unix,
};

pub(crate) const SECRET_PREFIX: &str = "whsec_";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Branding {
    /// `webhook-*` headers only (the Standard Webhooks spec, GitLab).
    Unbranded,
    /// `svix-*` headers, falling back to `webhook-*` like Svix's libraries.
    Svix,
}

impl Branding {
    fn names(self) -> [(&'static str, Option<&'static str>); 3] {
        match self {
            Branding::Unbranded => [
                ("webhook-id", None),
                ("webhook-timestamp", None),
                ("webhook-signature", None),
            ],
            Branding::Svix => [
                ("svix-id", Some("webhook-id")),
                ("svix-timestamp", Some("webhook-timestamp")),
                ("svix-signature", Some("webhook-signature")),
            ],
        }
    }
}

/// The HMAC key of a Standard Webhooks secret.
pub(crate) fn decode_key(secret: &str) -> Result<Vec<u8>, SignError> {
    let b64 = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    match decode_base64(b64) {
        Some(key) if !key.is_empty() => Ok(key),
        _ => Err(SignError::InvalidSecret(
            "a Standard Webhooks secret is base64 (optionally after whsec_)",
        )),
    }
}

fn lookup<'h>(
    d: &Delivery<'h>,
    (name, fallback): (&'static str, Option<&'static str>),
) -> Result<Option<(&'static str, &'h str)>, Rejection> {
    if let Some(v) = header(d.headers, name)? {
        return Ok(Some((name, v)));
    }
    match fallback {
        Some(f) => Ok(header(d.headers, f)?.map(|v| (f, v))),
        None => Ok(None),
    }
}

pub(crate) fn verify(
    keys: &Keys<'_>,
    d: &Delivery<'_>,
    now: i64,
    branding: Branding,
) -> Result<Verified, Rejection> {
    let [id_name, ts_name, sig_name] = branding.names();
    let decoded: Vec<(usize, Vec<u8>)> = keys
        .iter()
        .filter_map(|(i, s)| decode_key(s).ok().map(|k| (i, k)))
        .collect();
    let (sig_header, sig_value) = lookup(d, sig_name)?.ok_or(Rejection::MissingSignature {
        header: sig_name.0.to_string(),
    })?;
    let (_, id) = lookup(d, id_name)?.ok_or(Rejection::MissingId {
        header: id_name.0.to_string(),
    })?;
    let (ts_header, ts_raw) = lookup(d, ts_name)?.ok_or(Rejection::MissingTimestamp {
        source: format!("{} header", ts_name.0),
    })?;
    let ts = parse_unix(ts_raw).ok_or_else(|| Rejection::MalformedTimestamp {
        source: format!("{ts_header} header"),
    })?;
    let candidates: Vec<Vec<u8>> = sig_value
        .split_whitespace()
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, sig)| decode_base64(sig))
        .collect();
    if candidates.is_empty() {
        return Err(Rejection::MalformedSignature {
            header: sig_header.to_string(),
            reason: "no v1,<base64> signature",
        });
    }
    if decoded.is_empty() {
        return Err(Rejection::InvalidSecret {
            reason: "a Standard Webhooks secret is base64 (optionally after whsec_)",
        });
    }
    let ts_text = ts.to_string();
    let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts_text.as_bytes(), b".", d.body];
    let index = decoded
        .iter()
        .find(|(_, key)| {
            let expected = mac(Algorithm::Sha256, key, &parts);
            candidates
                .iter()
                .fold(false, |acc, c| acc | ct_eq(&expected, c))
        })
        .map(|(i, _)| *i)
        .ok_or(Rejection::SignatureMismatch {
            secrets: keys.len(),
        })?;
    check_window(ts, now, DEFAULT_TOLERANCE_SECONDS)?;
    Ok(Verified {
        secret_index: index,
        timestamp: Some(ts),
    })
}

pub(crate) fn sign(
    secret: &str,
    input: &SignInput<'_>,
    branding: Branding,
) -> Result<Vec<(String, String)>, SignError> {
    let key = decode_key(secret)?;
    let ts = input.timestamp.to_string();
    let sig = mac(
        Algorithm::Sha256,
        &key,
        &[input.id.as_bytes(), b".", ts.as_bytes(), b".", input.body],
    );
    let [id_name, ts_name, sig_name] = branding.names();
    Ok(vec![
        (id_name.0.to_string(), input.id.to_string()),
        (ts_name.0.to_string(), ts),
        (
            sig_name.0.to_string(),
            format!("v1,{}", encode_base64(&sig)),
        ),
    ])
}
