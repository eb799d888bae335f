//! Endpoint paths and generated secrets. Both come from the OS random generator; the
//! path is never derived from the secret, so rotating one never moves the other.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use std::collections::BTreeMap;

use crate::crd::{ProviderKind, WebhookIntegrationSpec};
use crate::route::SecretValue;

/// Prefix of every endpoint path.
pub const PATH_PREFIX: &str = "/hooks/";

/// Random bytes in an endpoint path: 192 bits, comfortably above the 128 required.
const PATH_RANDOM_BYTES: usize = 24;

/// A new endpoint path: `/hooks/` + 32 URL-safe base64 characters (192 random bits).
pub fn generate_path() -> String {
    let mut bytes = [0u8; PATH_RANDOM_BYTES];
    rand::fill(&mut bytes);
    format!("{PATH_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether `path` has the shape [`generate_path`] produces (so a path read back from
/// status or a route Secret can be trusted to carry enough entropy).
pub fn is_valid_path(path: &str) -> bool {
    match path.strip_prefix(PATH_PREFIX) {
        Some(rest) => {
            rest.len() >= 22
                && rest.len() <= 128
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }
        None => false,
    }
}

/// A new shared secret in the format the provider expects its users to paste.
///
/// Standard Webhooks and Svix secrets are `whsec_` + base64 of 32 random bytes (their
/// libraries decode the part after the prefix); GitLab gets a plain token (a `whsec_`
/// value would switch it to signing-token mode, which the user must choose in GitLab);
/// everything else gets 32 random bytes as 64 hex characters, which every provider UI
/// accepts as a secret or token.
pub fn generate_secret(provider: ProviderKind) -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    match provider {
        ProviderKind::StandardWebhooks | ProviderKind::Svix => {
            format!("whsec_{}", STANDARD.encode(bytes))
        }
        _ => hex::encode(bytes),
    }
}

/// A new Standard Webhooks signing key for a forward target: `whsec_` + base64 of 32
/// random bytes, the form the official `standardwebhooks` libraries (and
/// [`crate::domain::forward::payload::SigningKey::parse`]) accept.
pub fn generate_forward_signing_key() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    format!("whsec_{}", STANDARD.encode(bytes))
}

/// A fresh signing key for every `spec.forward` target without `signingSecretRef`: the
/// planner's `fresh_forward_keys`, used only for a target whose generated key does not
/// exist yet (the planner draws no randomness itself).
pub fn generate_forward_signing_keys(
    spec: &WebhookIntegrationSpec,
) -> BTreeMap<String, SecretValue> {
    spec.forward
        .iter()
        .filter(|t| t.signing_secret_ref.is_none())
        .map(|t| (t.name.clone(), SecretValue(generate_forward_signing_key())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_long_random_and_valid() {
        let a = generate_path();
        let b = generate_path();
        assert_ne!(a, b);
        assert!(a.starts_with("/hooks/"));
        assert_eq!(a.len(), "/hooks/".len() + 32);
        assert!(is_valid_path(&a), "{a}");
    }

    #[test]
    fn invalid_paths_are_refused() {
        for p in [
            "",
            "/hooks/",
            "/hooks/short",
            "/other/AAAAAAAAAAAAAAAAAAAAAAAA",
            "/hooks/AAAAAAAAAAAAAAAAAAAAAAA/..",
        ] {
            assert!(!is_valid_path(p), "{p}");
        }
    }

    #[test]
    fn standard_webhooks_secrets_decode_to_32_bytes() {
        for p in [ProviderKind::StandardWebhooks, ProviderKind::Svix] {
            let s = generate_secret(p);
            let key = s.strip_prefix("whsec_").expect("prefix");
            assert_eq!(STANDARD.decode(key).expect("base64").len(), 32);
        }
    }

    #[test]
    fn other_secrets_are_64_hex_chars() {
        let s = generate_secret(ProviderKind::Github);
        assert_eq!(s.len(), 64);
        assert!(s.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(s, generate_secret(ProviderKind::Github));
    }

    #[test]
    fn forward_signing_keys_parse_as_standard_webhooks_keys() {
        let a = generate_forward_signing_key();
        let b = generate_forward_signing_key();
        assert_ne!(a, b);
        let key = a.strip_prefix("whsec_").expect("prefix");
        assert_eq!(STANDARD.decode(key).expect("base64").len(), 32);
        assert!(crate::domain::forward::payload::SigningKey::parse(&a).is_ok());
    }
}
