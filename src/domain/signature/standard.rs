//! Standard Webhooks (and Svix, its origin; and GitLab signing tokens): headers
//! `webhook-id`, `webhook-timestamp`, `webhook-signature` (Svix: `svix-*`), HMAC-SHA256
//! of `{id}.{timestamp}.{body}` keyed with the base64-decoded secret (after an optional
//! `whsec_` prefix), signatures `v1,<base64>` space-separated (several during rotation;
//! `v1a,` asymmetric entries are skipped), timestamp ±300 s both ways.

use super::asymmetric::{
    ED25519_SIGNATURE_LEN, ed25519_private, ed25519_public, ed25519_sign, ed25519_verify,
};
use super::crypto::{Algorithm, ct_eq, decode_base64, encode_base64, mac};
use super::{
    DEFAULT_TOLERANCE_SECONDS, Delivery, Keys, Rejection, SignError, SignInput, Verified,
    check_window, header, parse_unix,
};

pub(crate) const SECRET_PREFIX: &str = "whsec_";
/// Prefix of an asymmetric (ed25519) public key, what the receiver holds.
pub(crate) const PUBLIC_KEY_PREFIX: &str = "whpk_";
/// Prefix of an asymmetric (ed25519) private key, what only the sender holds.
pub(crate) const PRIVATE_KEY_PREFIX: &str = "whsk_";

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

/// A verification key: an HMAC secret (`whsec_`/bare base64) or an ed25519 public key.
enum VerifyKey {
    Hmac(Vec<u8>),
    Ed25519(ed25519_dalek::VerifyingKey),
}

const PUBLIC_KEY_HINT: &str =
    "a whpk_ key is whpk_ followed by the base64 of a 32-byte ed25519 public key";
const PRIVATE_KEY_IN_SECRET: &str =
    "whsk_ is the sender's private key: put the whpk_ public key in the Secret instead";

fn verify_key(secret: &str) -> Result<VerifyKey, &'static str> {
    if let Some(b64) = secret.strip_prefix(PUBLIC_KEY_PREFIX) {
        return decode_base64(b64)
            .and_then(|b| ed25519_public(&b))
            .map(VerifyKey::Ed25519)
            .ok_or(PUBLIC_KEY_HINT);
    }
    if secret.starts_with(PRIVATE_KEY_PREFIX) {
        return Err(PRIVATE_KEY_IN_SECRET);
    }
    decode_key(secret).map(VerifyKey::Hmac).map_err(
        |_| "a Standard Webhooks secret is base64 (optionally after whsec_), or a whpk_ public key",
    )
}

/// Whether `secret` can verify Standard Webhooks deliveries (for `check_secret`).
pub(crate) fn check_verify_key(secret: &str) -> Result<(), SignError> {
    verify_key(secret)
        .map(|_| ())
        .map_err(SignError::InvalidSecret)
}

pub(crate) fn verify(
    keys: &Keys<'_>,
    d: &Delivery<'_>,
    now: i64,
    branding: Branding,
) -> Result<Verified, Rejection> {
    let [id_name, ts_name, sig_name] = branding.names();
    let mut key_problem = None;
    let decoded: Vec<(usize, VerifyKey)> = keys
        .iter()
        .filter_map(|(i, s)| match verify_key(s) {
            Ok(k) => Some((i, k)),
            Err(reason) => {
                key_problem.get_or_insert(reason);
                None
            }
        })
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
    let mut symmetric: Vec<Vec<u8>> = Vec::new();
    let mut asymmetric: Vec<Vec<u8>> = Vec::new();
    for (version, sig) in sig_value
        .split_whitespace()
        .filter_map(|entry| entry.split_once(','))
    {
        match version {
            "v1" => symmetric.extend(decode_base64(sig)),
            "v1a" => {
                asymmetric.extend(decode_base64(sig).filter(|s| s.len() == ED25519_SIGNATURE_LEN))
            }
            _ => {}
        }
    }
    if symmetric.is_empty() && asymmetric.is_empty() {
        return Err(Rejection::MalformedSignature {
            header: sig_header.to_string(),
            reason: "no v1,<base64> or v1a,<base64> signature",
        });
    }
    if decoded.is_empty() {
        return Err(Rejection::InvalidSecret {
            reason: key_problem.unwrap_or("no usable Standard Webhooks key"),
        });
    }
    let checkable = decoded.iter().any(|(_, k)| match k {
        VerifyKey::Hmac(_) => !symmetric.is_empty(),
        VerifyKey::Ed25519(_) => !asymmetric.is_empty(),
    });
    if !checkable {
        return Err(Rejection::MalformedSignature {
            header: sig_header.to_string(),
            reason: if asymmetric.is_empty() {
                "only v1 (HMAC) entries, and the configured keys are whpk_ public keys"
            } else {
                "only v1a (ed25519) entries, and no whpk_ public key is configured"
            },
        });
    }
    let ts_text = ts.to_string();
    let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts_text.as_bytes(), b".", d.body];
    let index = decoded
        .iter()
        .find(|(_, key)| match key {
            VerifyKey::Hmac(key) => {
                let expected = mac(Algorithm::Sha256, key, &parts);
                symmetric
                    .iter()
                    .fold(false, |acc, c| acc | ct_eq(&expected, c))
            }
            VerifyKey::Ed25519(key) => asymmetric
                .iter()
                .any(|sig| ed25519_verify(key, &parts, sig)),
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
    let ts = input.timestamp.to_string();
    let parts: [&[u8]; 5] = [input.id.as_bytes(), b".", ts.as_bytes(), b".", input.body];
    let entry = if let Some(b64) = secret.strip_prefix(PRIVATE_KEY_PREFIX) {
        let key = decode_base64(b64)
            .and_then(|b| ed25519_private(&b))
            .ok_or(SignError::InvalidSecret(
                "a whsk_ key is whsk_ followed by the base64 of a 32-byte ed25519 seed (or the 64-byte seed + public key)",
            ))?;
        format!("v1a,{}", encode_base64(&ed25519_sign(&key, &parts)))
    } else if secret.starts_with(PUBLIC_KEY_PREFIX) {
        return Err(SignError::InvalidSecret(
            "whpk_ is the public key the receiver holds: sign with the whsk_ private key",
        ));
    } else {
        let key = decode_key(secret)?;
        format!(
            "v1,{}",
            encode_base64(&mac(Algorithm::Sha256, &key, &parts))
        )
    };
    let [id_name, ts_name, sig_name] = branding.names();
    Ok(vec![
        (id_name.0.to_string(), input.id.to_string()),
        (ts_name.0.to_string(), ts),
        (sig_name.0.to_string(), entry),
    ])
}
