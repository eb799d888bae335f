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
pub const GITHUB_ACTIONS_JWKS_URL: &str = "https://token.actions.githubusercontent.com/.well-known/jwks";

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
    pub fn from_spec(provider: ProviderKind, spec: Option<&OidcSpec>) -> Result<OidcPolicy, OidcSpecError> {
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
            audiences: spec.audiences.iter().filter(|a| !a.is_empty()).cloned().collect(),
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
pub fn allowed_algorithm(policy: &OidcPolicy, token: &Token<'_>) -> Result<JwtAlgorithm, Rejection> {
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
            kid: token.kid.as_deref().unwrap_or("(none)").chars().take(64).collect(),
        });
    }
    if !jose::signature_verifies(&token, alg, sets) {
        return Err(Rejection::SignatureMismatch { secrets: sets.iter().map(|s| s.keys.len()).sum() });
    }
    let claims: Value = serde_json::from_slice(&token.payload).map_err(|_| Rejection::TokenMalformed {
        reason: "payload is not a JSON object",
    })?;
    let claims = claims.as_object().ok_or(Rejection::TokenMalformed {
        reason: "payload is not a JSON object",
    })?;
    check_claims(policy, claims, now)
}

fn numeric(claims: &serde_json::Map<String, Value>, name: &'static str) -> Result<Option<i64>, Rejection> {
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
            Some(v @ (Value::Bool(_) | Value::Number(_))) => v.to_string() == *expected,
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
