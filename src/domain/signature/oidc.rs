//! OIDC/JWT bearer senders: `Authorization: Bearer <JWT>` checked against the issuer,
//! audiences, allowed algorithms, time claims and claim matches of the integration.
//!
//! The keys come from the caller: inline JWKS documents (the Secret) and, in the
//! receiver, a JWKS fetched from the issuer (never here: the domain does no I/O).

use std::collections::BTreeMap;

use serde_json::Value;

use super::jose::{self, JwkSet, Token};
use super::{Delivery, Rejection, Verified};
use crate::crd::{JwtAlgorithm, OidcSpec, ProviderKind};

/// Google's issuer for Pub/Sub push tokens (and its published keys).
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";
pub const GOOGLE_JWKS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";
/// GitHub Actions' OIDC issuer (and its published keys).
pub const GITHUB_ACTIONS_ISSUER: &str = "https://token.actions.githubusercontent.com";
pub const GITHUB_ACTIONS_JWKS_URL: &str =
    "https://token.actions.githubusercontent.com/.well-known/jwks";

/// Default clock skew allowed on `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY_SECONDS: i64 = 60;
pub const MAX_LEEWAY_SECONDS: i64 = 300;

/// How an integration's tokens are judged (from `spec.oidc` and the preset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcPolicy {
    pub issuer: String,
    pub audiences: Vec<String>,
    /// Where the issuer's keys are fetched from; `None`: inline JWKS only.
    pub jwks_url: Option<String>,
    /// Whether `jwks_url` is the preset's own published URL (Google's keys live on
    /// www.googleapis.com, not on the issuer's host).
    pub jwks_url_is_preset: bool,
    pub algorithms: Vec<JwtAlgorithm>,
    pub claims: BTreeMap<String, String>,
    pub leeway_seconds: i64,
}

/// Why `spec.oidc` cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OidcSpecError {
    #[error("spec.oidc is required by provider {0} (at least spec.oidc.audiences)")]
    Missing(ProviderKind),
    #[error("spec.oidc.issuer is fixed by provider {provider} ({expected}); remove it")]
    IssuerFixed {
        provider: ProviderKind,
        expected: &'static str,
    },
    #[error("spec.oidc.issuer is required with auth: oidc (the `iss` your sender's tokens carry)")]
    IssuerMissing,
    #[error("spec.oidc.issuer must be an https URL (or http for a local test issuer), got {0:?}")]
    IssuerNotUrl(String),
    #[error("spec.oidc.audiences must name at least one audience (the `aud` your sender requests)")]
    NoAudience,
    #[error("spec.oidc.jwksURL must be an http(s) URL, got {0:?}")]
    JwksUrlNotUrl(String),
    #[error("spec.oidc.leewaySeconds must be between 0 and {MAX_LEEWAY_SECONDS}, got {0}")]
    Leeway(i64),
}

impl OidcPolicy {
    pub fn from_spec(
        provider: ProviderKind,
        spec: Option<&OidcSpec>,
    ) -> Result<OidcPolicy, OidcSpecError> {
        let spec = spec.ok_or(OidcSpecError::Missing(provider))?;
        let (issuer, preset_jwks) = match provider {
            ProviderKind::GooglePubsub => (GOOGLE_ISSUER, Some(GOOGLE_JWKS_URL)),
            ProviderKind::GithubActions => (GITHUB_ACTIONS_ISSUER, Some(GITHUB_ACTIONS_JWKS_URL)),
            _ => ("", None),
        };
        let issuer = match (&spec.issuer, preset_jwks) {
            (Some(i), Some(_)) if i != issuer => {
                return Err(OidcSpecError::IssuerFixed {
                    provider,
                    expected: issuer,
                });
            }
            (_, Some(_)) => issuer.to_string(),
            (Some(i), None) => {
                if host_of(i).is_none() {
                    return Err(OidcSpecError::IssuerNotUrl(i.clone()));
                }
                i.clone()
            }
            (None, None) => return Err(OidcSpecError::IssuerMissing),
        };
        if spec.audiences.iter().all(|a| a.is_empty()) {
            return Err(OidcSpecError::NoAudience);
        }
        if let Some(u) = &spec.jwks_url
            && host_of(u).is_none()
        {
            return Err(OidcSpecError::JwksUrlNotUrl(u.clone()));
        }
        let leeway = spec
            .leeway_seconds
            .map(i64::from)
            .unwrap_or(DEFAULT_LEEWAY_SECONDS);
        if !(0..=MAX_LEEWAY_SECONDS).contains(&leeway) {
            return Err(OidcSpecError::Leeway(leeway));
        }
        let jwks_url_is_preset = spec.jwks_url.is_none() && preset_jwks.is_some();
        Ok(OidcPolicy {
            issuer,
            audiences: spec
                .audiences
                .iter()
                .filter(|a| !a.is_empty())
                .cloned()
                .collect(),
            jwks_url: spec
                .jwks_url
                .clone()
                .or_else(|| preset_jwks.map(str::to_string)),
            jwks_url_is_preset,
            algorithms: if spec.algorithms.is_empty() {
                JwtAlgorithm::ALL.to_vec()
            } else {
                spec.algorithms.clone()
            },
            claims: spec.claims.clone(),
            leeway_seconds: leeway,
        })
    }

    /// Whether keys may be fetched from `url`: https from the issuer's host, or the
    /// preset's published URL. `insecure` (a receiver flag for tests) allows any.
    pub fn jwks_url_allowed(&self, url: &str, insecure: bool) -> Result<(), &'static str> {
        if insecure {
            return host_of(url).map(|_| ()).ok_or("not an http(s) URL");
        }
        if !url.starts_with("https://") {
            return Err("JWKS URL is not https");
        }
        if self.jwks_url_is_preset {
            return Ok(());
        }
        let host = host_of(url).ok_or("not a URL")?;
        match host_of(&self.issuer) {
            Some(issuer_host) if issuer_host.eq_ignore_ascii_case(host) => Ok(()),
            _ => Err("JWKS URL is not on the issuer's host"),
        }
    }
}

/// `scheme://host[:port]/…` → `host[:port]` for http(s) URLs.
pub(crate) fn host_of(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    Some(authority)
}

/// The bearer token of a delivery, split and its header read (before any key is looked
/// up: the receiver needs `kid` to know whether to fetch).
pub fn bearer<'d>(delivery: &Delivery<'d>) -> Result<Token<'d>, Rejection> {
    let value = super::header(delivery.headers, "authorization")?.ok_or_else(|| {
        Rejection::MissingSignature {
            header: "Authorization".to_string(),
        }
    })?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or(Rejection::TokenMalformed {
            reason: "Authorization is not a Bearer token",
        })?;
    jose::parse_token(token).map_err(|reason| Rejection::TokenMalformed { reason })
}

/// The token's algorithm, if the policy allows it.
pub fn allowed_algorithm(
    policy: &OidcPolicy,
    token: &Token<'_>,
) -> Result<JwtAlgorithm, Rejection> {
    match JwtAlgorithm::parse(&token.alg) {
        Some(a) if policy.algorithms.contains(&a) => Ok(a),
        _ => Err(Rejection::AlgorithmNotAllowed {
            alg: token.alg.chars().take(16).collect(),
        }),
    }
}

/// Verifies the delivery's token against the keys of `sets` at `now`.
pub fn verify(
    policy: &OidcPolicy,
    delivery: &Delivery<'_>,
    sets: &[&JwkSet],
    now: i64,
) -> Result<Verified, Rejection> {
    let token = bearer(delivery)?;
    let alg = allowed_algorithm(policy, &token)?;
    if !sets.iter().any(|s| s.has(token.kid.as_deref(), alg)) {
        return Err(Rejection::UnknownKeyId {
            kid: token
                .kid
                .as_deref()
                .unwrap_or("(none)")
                .chars()
                .take(64)
                .collect(),
        });
    }
    if !jose::signature_verifies(&token, alg, sets) {
        return Err(Rejection::SignatureMismatch {
            secrets: sets.iter().map(|s| s.keys.len()).sum(),
        });
    }
    let claims: Value =
        serde_json::from_slice(&token.payload).map_err(|_| Rejection::TokenMalformed {
            reason: "payload is not a JSON object",
        })?;
    let claims = claims.as_object().ok_or(Rejection::TokenMalformed {
        reason: "payload is not a JSON object",
    })?;
    check_claims(policy, claims, now)
}

fn numeric(
    claims: &serde_json::Map<String, Value>,
    name: &'static str,
) -> Result<Option<i64>, Rejection> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().map(|f| f as i64))
            .map(Some)
            .ok_or(Rejection::TokenMalformed {
                reason: "exp, nbf and iat must be numbers",
            }),
    }
}

fn check_claims(
    policy: &OidcPolicy,
    claims: &serde_json::Map<String, Value>,
    now: i64,
) -> Result<Verified, Rejection> {
    let leeway = policy.leeway_seconds;
    let exp = numeric(claims, "exp")?.ok_or(Rejection::TokenMalformed {
        reason: "token has no exp",
    })?;
    if now > exp.saturating_add(leeway) {
        return Err(Rejection::TokenExpired {
            seconds_ago: now.saturating_sub(exp),
        });
    }
    for name in ["nbf", "iat"] {
        if let Some(t) = numeric(claims, name)?
            && t > now.saturating_add(leeway)
        {
            return Err(Rejection::TokenNotYetValid {
                claim: name,
                seconds_ahead: t.saturating_sub(now),
            });
        }
    }
    if claims.get("iss").and_then(Value::as_str) != Some(policy.issuer.as_str()) {
        return Err(Rejection::IssuerMismatch);
    }
    let aud_matches = |a: &str| policy.audiences.iter().any(|p| p == a);
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => aud_matches(a),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(aud_matches),
        _ => false,
    };
    if !aud_ok {
        return Err(Rejection::AudienceMismatch);
    }
    for (name, expected) in &policy.claims {
        let matches = match claims.get(name) {
            Some(Value::String(s)) => s == expected,
            Some(Value::Bool(b)) => expected == if *b { "true" } else { "false" },
            Some(Value::Number(n)) => expected.parse::<f64>().ok() == n.as_f64(),
            _ => false,
        };
        if !matches {
            return Err(Rejection::ClaimMismatch {
                claim: name.chars().take(64).collect(),
            });
        }
    }
    Ok(Verified {
        secret_index: 0,
        timestamp: numeric(claims, "iat")?,
    })
}

/// The claims `hookwarden sign` puts in a test token: what the policy checks, valid
/// for five minutes from `now`.
pub fn sample_claims(policy: &OidcPolicy, now: i64, subject: &str) -> Value {
    let mut claims = serde_json::json!({
        "iss": policy.issuer,
        "aud": policy.audiences.first().cloned().unwrap_or_default(),
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    });
    for (name, value) in &policy.claims {
        claims[name] = match value.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            v => Value::String(v.to_string()),
        };
    }
    claims
}

/// Inline JWKS documents among the secrets (a generated, non-JSON secret is not one).
pub fn inline_sets(secrets: &[&str]) -> Result<Vec<JwkSet>, Rejection> {
    let mut sets = Vec::new();
    let mut broken = None;
    for s in secrets {
        let t = s.trim_start();
        if !t.starts_with('{') {
            continue;
        }
        match JwkSet::parse(t.as_bytes()) {
            Ok(set) => sets.push(set),
            Err(_) => broken = Some(()),
        }
    }
    if sets.is_empty() && broken.is_some() {
        return Err(Rejection::InvalidSecret {
            reason: "the Secret holds a JSON document that is not a usable JWKS",
        });
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ring::signature::{Ed25519KeyPair, KeyPair as _};
    use serde_json::json;

    use super::*;
    use crate::domain::signature::jose::{
        JwksError, PrivateKey, encode_token, parse_token, signature_verifies,
    };

    const NOW: i64 = 1_800_000_000;

    /// RFC 8037 appendix A.4: the published Ed25519 JWS verifies with the published key,
    /// and not once a byte of it changes.
    #[test]
    fn rfc8037_ed25519_example_verifies() {
        let jwks = JwkSet::parse(
            br#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
        )
        .expect("jwks");
        let jws = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
        let token = parse_token(jws).expect("parse");
        assert_eq!(token.payload, b"Example of Ed25519 signing");
        assert!(signature_verifies(&token, JwtAlgorithm::EdDSA, &[&jwks]));
        let tampered = jws.replace(".RXhh", ".SXhh");
        let token = parse_token(&tampered).expect("parse");
        assert!(!signature_verifies(&token, JwtAlgorithm::EdDSA, &[&jwks]));
    }

    struct Issuer {
        key: PrivateKey,
        jwks: JwkSet,
        policy: OidcPolicy,
    }

    fn issuer() -> Issuer {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let jwks = JwkSet::parse(
            json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1"},
                            {"kty": "oct", "k": "c2VjcmV0", "kid": "k1"}]})
            .to_string()
            .as_bytes(),
        )
        .expect("jwks");
        assert_eq!(
            (jwks.keys.len(), jwks.skipped),
            (1, 1),
            "oct keys are skipped"
        );
        let spec = OidcSpec {
            issuer: Some("https://idp.example.com".into()),
            audiences: vec!["aud-1".into(), "aud-2".into()],
            claims: [("email_verified".to_string(), "true".to_string())].into(),
            ..OidcSpec::default()
        };
        Issuer {
            key: PrivateKey::Ed25519(pair),
            jwks,
            policy: OidcPolicy::from_spec(ProviderKind::Generic, Some(&spec)).expect("policy"),
        }
    }

    fn check(
        issuer: &Issuer,
        claims: serde_json::Value,
        kid: Option<&str>,
    ) -> Result<Verified, Rejection> {
        let rng = ring::rand::SystemRandom::new();
        let token = encode_token(&issuer.key, kid, &claims, &rng).expect("sign");
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        let delivery = Delivery {
            method: "POST",
            url: "",
            headers: &headers,
            body: b"{}",
        };
        verify(&issuer.policy, &delivery, &[&issuer.jwks], NOW)
    }

    fn claims() -> serde_json::Value {
        json!({"iss": "https://idp.example.com", "aud": ["other", "aud-2"], "exp": NOW + 60,
               "iat": NOW, "email_verified": true})
    }

    #[test]
    fn time_claims_have_exactly_the_leeway() {
        let i = issuer();
        assert!(check(&i, claims(), Some("k1")).is_ok());
        let with = |k: &str, v: i64| {
            let mut c = claims();
            c[k] = json!(v);
            check(&i, c, Some("k1"))
        };
        assert!(with("exp", NOW - DEFAULT_LEEWAY_SECONDS).is_ok());
        assert_eq!(
            with("exp", NOW - DEFAULT_LEEWAY_SECONDS - 1)
                .expect_err("refused")
                .code(),
            "token_expired"
        );
        assert!(with("nbf", NOW + DEFAULT_LEEWAY_SECONDS).is_ok());
        assert_eq!(
            with("nbf", NOW + DEFAULT_LEEWAY_SECONDS + 1)
                .expect_err("refused")
                .code(),
            "token_not_yet_valid"
        );
        assert_eq!(
            with("iat", NOW + DEFAULT_LEEWAY_SECONDS + 1)
                .expect_err("refused")
                .code(),
            "token_not_yet_valid"
        );
    }

    #[test]
    fn issuer_audience_and_claims_must_match() {
        let i = issuer();
        let mut c = claims();
        c["iss"] = json!("https://idp.example.com/");
        assert_eq!(
            check(&i, c, Some("k1")).expect_err("refused"),
            Rejection::IssuerMismatch
        );
        let mut c = claims();
        c["aud"] = json!("other");
        assert_eq!(
            check(&i, c, Some("k1")).expect_err("refused"),
            Rejection::AudienceMismatch
        );
        let mut c = claims();
        c["email_verified"] = json!(false);
        assert_eq!(
            check(&i, c, Some("k1")).expect_err("refused").code(),
            "claim_mismatch"
        );
        let mut c = claims();
        c["email_verified"] = json!("true");
        assert!(
            check(&i, c, Some("k1")).is_ok(),
            "a string claim compares as text"
        );
        // No kid: any key of the token's algorithm may verify it.
        assert!(check(&i, claims(), None).is_ok());
        assert_eq!(
            check(&i, claims(), Some("k2")).expect_err("refused").code(),
            "unknown_key_id"
        );
    }

    #[test]
    fn none_and_hmac_never_verify_and_an_algorithm_must_fit_its_key() {
        let i = issuer();
        let body = URL_SAFE_NO_PAD.encode(claims().to_string());
        for header in [
            json!({"alg": "none", "kid": "k1"}),
            json!({"alg": "HS256", "kid": "k1"}),
            json!({"alg": "ES256", "kid": "k1", "crit": ["b64"]}),
        ] {
            let head = URL_SAFE_NO_PAD.encode(header.to_string());
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "authorization",
                format!("Bearer {head}.{body}.c2ln")
                    .parse()
                    .expect("header"),
            );
            let delivery = Delivery {
                method: "POST",
                url: "",
                headers: &headers,
                body: b"",
            };
            let r = verify(&i.policy, &delivery, &[&i.jwks], NOW).expect_err("refused");
            assert!(
                matches!(r.code(), "algorithm_not_allowed" | "token_malformed"),
                "{header}: {r}"
            );
        }
        // ES256 with the kid of an Ed25519 key: no ES256 key of that id.
        let head = URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "kid": "k1"}).to_string());
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "authorization",
            format!("Bearer {head}.{body}.c2ln")
                .parse()
                .expect("header"),
        );
        let delivery = Delivery {
            method: "POST",
            url: "",
            headers: &headers,
            body: b"",
        };
        assert_eq!(
            verify(&i.policy, &delivery, &[&i.jwks], NOW)
                .expect_err("refused")
                .code(),
            "unknown_key_id"
        );
    }

    #[test]
    fn malformed_jwks_documents_are_refused_with_the_key_at_fault() {
        assert_eq!(JwkSet::parse(b"[]"), Err(JwksError::NotAKeySet));
        let short = json!({"keys": [{"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xffu8; 128]), "e": "AQAB"}]});
        assert!(matches!(
            JwkSet::parse(short.to_string().as_bytes()),
            Err(JwksError::BadKey {
                index: 0,
                reason: "RSA key shorter than 2048 bits"
            })
        ));
        let wrong_alg = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "RS256", "x": URL_SAFE_NO_PAD.encode([1u8; 32])}]});
        assert!(JwkSet::parse(wrong_alg.to_string().as_bytes()).is_err());
        let many: Vec<_> = (0..65).map(|_| json!({"kty": "oct"})).collect();
        assert_eq!(
            JwkSet::parse(json!({"keys": many}).to_string().as_bytes()),
            Err(JwksError::TooManyKeys)
        );
    }

    #[test]
    fn keys_are_fetched_only_over_https_from_the_issuers_host() {
        let i = issuer();
        let p = &i.policy;
        assert!(
            p.jwks_url_allowed("https://idp.example.com/keys", false)
                .is_ok()
        );
        assert!(
            p.jwks_url_allowed("https://IDP.example.com/keys", false)
                .is_ok()
        );
        assert!(
            p.jwks_url_allowed("http://idp.example.com/keys", false)
                .is_err()
        );
        assert!(
            p.jwks_url_allowed("https://idp.example.com.evil.io/keys", false)
                .is_err()
        );
        assert!(
            p.jwks_url_allowed("https://evil.io@idp.example.com/keys", false)
                .is_err()
        );
        assert!(
            p.jwks_url_allowed("http://127.0.0.1:8080/keys", true)
                .is_ok()
        );
        let google = OidcPolicy::from_spec(
            ProviderKind::GooglePubsub,
            Some(&OidcSpec {
                audiences: vec!["a".into()],
                ..OidcSpec::default()
            }),
        )
        .expect("policy");
        assert_eq!(google.issuer, GOOGLE_ISSUER);
        assert_eq!(google.jwks_url.as_deref(), Some(GOOGLE_JWKS_URL));
        assert!(google.jwks_url_allowed(GOOGLE_JWKS_URL, false).is_ok());
    }

    #[test]
    fn specs_that_cannot_work_say_what_to_fix() {
        let spec = |issuer: Option<&str>, audiences: &[&str]| OidcSpec {
            issuer: issuer.map(str::to_string),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            ..OidcSpec::default()
        };
        assert_eq!(
            OidcPolicy::from_spec(ProviderKind::Generic, Some(&spec(None, &["a"]))),
            Err(OidcSpecError::IssuerMissing)
        );
        assert_eq!(
            OidcPolicy::from_spec(ProviderKind::Generic, Some(&spec(Some("https://i"), &[]))),
            Err(OidcSpecError::NoAudience)
        );
        assert!(matches!(
            OidcPolicy::from_spec(
                ProviderKind::GithubActions,
                Some(&spec(Some("https://i"), &["a"]))
            ),
            Err(OidcSpecError::IssuerFixed { .. })
        ));
        assert_eq!(
            OidcPolicy::from_spec(ProviderKind::GithubActions, None),
            Err(OidcSpecError::Missing(ProviderKind::GithubActions))
        );
    }
}
