//! Asymmetric sender signatures: the sender holds a private key, the integration's Secret
//! holds only the public key, so a leaked Secret cannot forge deliveries.
//!
//! - ed25519 ([RFC 8032], strict verification: non-canonical signatures and small-order
//!   keys are refused): Standard Webhooks `v1a` entries (`whpk_` public key, `whsk_`
//!   private key, base64) and Discord interactions (hex keys).
//! - ECDSA P-256 with SHA-256, ASN.1 DER signatures: SendGrid's signed event webhook
//!   (base64 DER SubjectPublicKeyInfo public key, as SendGrid shows it; PEM accepted).
//!
//! Keys are parsed per delivery (a few microseconds next to the signature check itself,
//! measured in docs/bench.md), so a rotated Secret takes effect with the next delivery.
//!
//! [RFC 8032]: https://www.rfc-editor.org/rfc/rfc8032

use ed25519_dalek::ed25519::signature::Signer as _;
use p256::ecdsa::signature::Verifier as _;
use p256::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};

use super::crypto::{decode_base64, decode_hex, encode_base64};
use super::{
    DEFAULT_TOLERANCE_SECONDS, Delivery, Keys, Rejection, SignError, SignInput, Verified,
    check_window, header, parse_unix,
};

pub(crate) const ED25519_SIGNATURE_LEN: usize = 64;

/// An ed25519 public key from its 32 bytes; `None` for bytes that are not a point.
pub(crate) fn ed25519_public(bytes: &[u8]) -> Option<ed25519_dalek::VerifyingKey> {
    let bytes: &[u8; 32] = bytes.try_into().ok()?;
    ed25519_dalek::VerifyingKey::from_bytes(bytes).ok()
}

/// An ed25519 private key: the 32-byte seed, or the 64-byte libsodium/NaCl form (seed
/// followed by the public key, which must then match the seed).
pub(crate) fn ed25519_private(bytes: &[u8]) -> Option<ed25519_dalek::SigningKey> {
    let seed: &[u8; 32] = bytes.get(..32)?.try_into().ok()?;
    let key = ed25519_dalek::SigningKey::from_bytes(seed);
    match bytes.len() {
        32 => Some(key),
        64 if key.verifying_key().as_bytes()[..] == bytes[32..] => Some(key),
        _ => None,
    }
}

/// Strict ed25519 verification of `parts` concatenated.
pub(crate) fn ed25519_verify(
    key: &ed25519_dalek::VerifyingKey,
    parts: &[&[u8]],
    signature: &[u8],
) -> bool {
    let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
        return false;
    };
    let message: Vec<u8> = parts.concat();
    key.verify_strict(&message, &sig).is_ok()
}

pub(crate) fn ed25519_sign(key: &ed25519_dalek::SigningKey, parts: &[&[u8]]) -> Vec<u8> {
    key.sign(&parts.concat()).to_bytes().to_vec()
}

const DISCORD_SIGNATURE: &str = "X-Signature-Ed25519";
const DISCORD_TIMESTAMP: &str = "X-Signature-Timestamp";
const DISCORD_KEY_HINT: &str =
    "a Discord public key is 64 hex digits (the application's PUBLIC KEY in the Developer Portal)";

/// Discord interactions: `X-Signature-Ed25519` (hex) over `{X-Signature-Timestamp}{body}`,
/// keyed by the application's public key (hex). Discord's own examples check nothing
/// about the timestamp; the ±300 s window of every timestamped preset applies.
pub(crate) fn verify_discord(
    keys: &Keys<'_>,
    d: &Delivery<'_>,
    now: i64,
) -> Result<Verified, Rejection> {
    let value =
        header(d.headers, DISCORD_SIGNATURE)?.ok_or_else(|| Rejection::MissingSignature {
            header: DISCORD_SIGNATURE.to_string(),
        })?;
    let ts_raw =
        header(d.headers, DISCORD_TIMESTAMP)?.ok_or_else(|| Rejection::MissingTimestamp {
            source: format!("{DISCORD_TIMESTAMP} header"),
        })?;
    let sig = decode_hex(value)
        .filter(|s| s.len() == ED25519_SIGNATURE_LEN)
        .ok_or_else(|| Rejection::MalformedSignature {
            header: DISCORD_SIGNATURE.to_string(),
            reason: "not a 128-hex-digit ed25519 signature",
        })?;
    let public: Vec<(usize, ed25519_dalek::VerifyingKey)> = keys
        .iter()
        .filter_map(|(i, s)| {
            decode_hex(s)
                .and_then(|b| ed25519_public(&b))
                .map(|k| (i, k))
        })
        .collect();
    if public.is_empty() {
        return Err(Rejection::InvalidSecret {
            reason: DISCORD_KEY_HINT,
        });
    }
    let parts: [&[u8]; 2] = [ts_raw.as_bytes(), d.body];
    let index = public
        .iter()
        .find(|(_, k)| ed25519_verify(k, &parts, &sig))
        .map(|(i, _)| *i)
        .ok_or(Rejection::SignatureMismatch {
            secrets: keys.len(),
        })?;
    let ts = parse_unix(ts_raw).ok_or_else(|| Rejection::MalformedTimestamp {
        source: format!("{DISCORD_TIMESTAMP} header"),
    })?;
    check_window(ts, now, DEFAULT_TOLERANCE_SECONDS)?;
    Ok(Verified {
        secret_index: index,
        timestamp: Some(ts),
    })
}

/// `secret` is the hex private key: the 32-byte seed (PyNaCl's `SigningKey.encode()`)
/// or the 64-byte libsodium secret key.
pub(crate) fn sign_discord(
    secret: &str,
    input: &SignInput<'_>,
) -> Result<Vec<(String, String)>, SignError> {
    let key =
        decode_hex(secret)
            .and_then(|b| ed25519_private(&b))
            .ok_or(SignError::InvalidSecret(
                "sign takes the Discord-style private key: 64 (seed) or 128 hex digits",
            ))?;
    let ts = input.timestamp.to_string();
    let sig = ed25519_sign(&key, &[ts.as_bytes(), input.body]);
    Ok(vec![
        (DISCORD_SIGNATURE.to_string(), hex::encode(sig)),
        (DISCORD_TIMESTAMP.to_string(), ts),
    ])
}

pub(crate) fn check_discord_key(secret: &str) -> Result<(), SignError> {
    decode_hex(secret)
        .and_then(|b| ed25519_public(&b))
        .map(|_| ())
        .ok_or(SignError::InvalidSecret(DISCORD_KEY_HINT))
}

const SENDGRID_SIGNATURE: &str = "X-Twilio-Email-Event-Webhook-Signature";
const SENDGRID_TIMESTAMP: &str = "X-Twilio-Email-Event-Webhook-Timestamp";
const SENDGRID_KEY_HINT: &str = "a SendGrid verification key is the base64 (or PEM) P-256 public key shown under Mail Settings > Event Webhook > Signature Verification";

/// The DER inside a PEM block, or the base64 text itself when it has no armour.
fn der_of(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        let body: String = text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .flat_map(|l| l.split_whitespace())
            .collect();
        decode_base64(&body)
    } else {
        let compact: String = text.split_whitespace().collect();
        decode_base64(&compact)
    }
}

pub(crate) fn p256_public(text: &str) -> Option<p256::ecdsa::VerifyingKey> {
    p256::ecdsa::VerifyingKey::from_public_key_der(&der_of(text)?).ok()
}

fn p256_private(text: &str) -> Option<p256::ecdsa::SigningKey> {
    p256::ecdsa::SigningKey::from_pkcs8_der(&der_of(text)?).ok()
}

/// SendGrid signed event webhook: ECDSA P-256/SHA-256 over `{timestamp}{body}`, the
/// signature base64 ASN.1 DER in `X-Twilio-Email-Event-Webhook-Signature`, the
/// timestamp in `X-Twilio-Email-Event-Webhook-Timestamp` (checked ±300 s).
pub(crate) fn verify_sendgrid(
    keys: &Keys<'_>,
    d: &Delivery<'_>,
    now: i64,
) -> Result<Verified, Rejection> {
    let value =
        header(d.headers, SENDGRID_SIGNATURE)?.ok_or_else(|| Rejection::MissingSignature {
            header: SENDGRID_SIGNATURE.to_string(),
        })?;
    let ts_raw =
        header(d.headers, SENDGRID_TIMESTAMP)?.ok_or_else(|| Rejection::MissingTimestamp {
            source: format!("{SENDGRID_TIMESTAMP} header"),
        })?;
    let sig = decode_base64(value)
        .and_then(|der| p256::ecdsa::Signature::from_der(&der).ok())
        .ok_or_else(|| Rejection::MalformedSignature {
            header: SENDGRID_SIGNATURE.to_string(),
            reason: "not a base64 DER ECDSA signature",
        })?;
    let public: Vec<(usize, p256::ecdsa::VerifyingKey)> = keys
        .iter()
        .filter_map(|(i, s)| p256_public(s).map(|k| (i, k)))
        .collect();
    if public.is_empty() {
        return Err(Rejection::InvalidSecret {
            reason: SENDGRID_KEY_HINT,
        });
    }
    let message: Vec<u8> = [ts_raw.as_bytes(), d.body].concat();
    let index = public
        .iter()
        .find(|(_, k)| k.verify(&message, &sig).is_ok())
        .map(|(i, _)| *i)
        .ok_or(Rejection::SignatureMismatch {
            secrets: keys.len(),
        })?;
    let ts = parse_unix(ts_raw).ok_or_else(|| Rejection::MalformedTimestamp {
        source: format!("{SENDGRID_TIMESTAMP} header"),
    })?;
    check_window(ts, now, DEFAULT_TOLERANCE_SECONDS)?;
    Ok(Verified {
        secret_index: index,
        timestamp: Some(ts),
    })
}

/// `secret` is the P-256 private key as PKCS#8: PEM (`-----BEGIN PRIVATE KEY-----`, what
/// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes) or its
/// base64 DER.
pub(crate) fn sign_sendgrid(
    secret: &str,
    input: &SignInput<'_>,
) -> Result<Vec<(String, String)>, SignError> {
    let key = p256_private(secret).ok_or(SignError::InvalidSecret(
        "sign takes a P-256 private key in PKCS#8 (PEM, or base64 DER)",
    ))?;
    let ts = input.timestamp.to_string();
    let message: Vec<u8> = [ts.as_bytes(), input.body].concat();
    let sig: p256::ecdsa::Signature = key.sign(&message);
    Ok(vec![
        (
            SENDGRID_SIGNATURE.to_string(),
            encode_base64(sig.to_der().as_bytes()),
        ),
        (SENDGRID_TIMESTAMP.to_string(), ts),
    ])
}

pub(crate) fn check_sendgrid_key(secret: &str) -> Result<(), SignError> {
    p256_public(secret)
        .map(|_| ())
        .ok_or(SignError::InvalidSecret(SENDGRID_KEY_HINT))
}
