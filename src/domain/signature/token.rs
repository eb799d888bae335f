//! Senders without signatures: a shared token sent as `Authorization: Bearer <token>`,
//! as the password of Basic auth, or as the whole value of a configured header
//! (`spec.tokenHeader`). GitLab's plain secret token arrives in `X-Gitlab-Token`; a
//! GitLab secret starting with `whsec_` is a signing token instead (Standard Webhooks).

use std::borrow::Cow;

use base64::Engine as _;

use super::crypto::ct_eq_secret;
use super::standard::{self, Branding, SECRET_PREFIX};
use super::{Delivery, GenericAuth, Keys, Rejection, SignError, SignInput, Verified, header};

const GITLAB_TOKEN: &str = "X-Gitlab-Token";

/// Tokens the request presents, in every accepted place: borrowed from the headers
/// except a Basic password (decoded).
pub(crate) fn presented_tokens<'h>(
    headers: &'h http::HeaderMap,
    extra: &[&str],
) -> Result<Vec<Cow<'h, str>>, Rejection> {
    let mut out = Vec::new();
    let auth = header(headers, "Authorization")?;
    // Some senders (Datadog custom headers, hand-written curl) put the bare token there.
    if let Some(raw) = auth
        && !raw.contains(' ')
    {
        out.push(Cow::Borrowed(raw));
    }
    if let Some(auth) = auth
        && let Some((scheme, rest)) = auth.split_once(' ')
    {
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            out.push(Cow::Borrowed(rest));
        } else if scheme.eq_ignore_ascii_case("basic")
            && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest)
            && let Ok(text) = String::from_utf8(decoded)
            && let Some((_, password)) = text.split_once(':')
        {
            out.push(Cow::Owned(password.to_string()));
        }
    }
    for name in extra {
        if let Some(v) = header(headers, name)? {
            out.push(Cow::Borrowed(v));
        }
    }
    Ok(out)
}

pub(crate) fn match_tokens(keys: &Keys<'_>, tokens: &[impl AsRef<str>]) -> Option<usize> {
    keys.find(|secret| {
        tokens.iter().fold(false, |acc, t| {
            acc | ct_eq_secret(t.as_ref().as_bytes(), secret.as_bytes())
        })
    })
}

/// Datadog, Alertmanager: Bearer, Basic password, or `spec.tokenHeader`.
pub(crate) fn verify_token(
    keys: &Keys<'_>,
    headers: &http::HeaderMap,
    token_header: Option<&str>,
) -> Result<Verified, Rejection> {
    let extra: Vec<&str> = token_header.into_iter().collect();
    let tokens = presented_tokens(headers, &extra)?;
    if tokens.is_empty() {
        let header = match token_header {
            Some(h) => format!("Authorization or {h}"),
            None => "Authorization".to_string(),
        };
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

pub(crate) fn sign_token(secret: &str, token_header: Option<&str>) -> Vec<(String, String)> {
    match token_header {
        Some(h) => vec![(h.to_string(), secret.to_string())],
        None => vec![("Authorization".to_string(), format!("Bearer {secret}"))],
    }
}

/// GitLab: each secret decides its own mode, so a rotation from a plain token to a
/// signing token (or back) works while both are live.
pub(crate) fn verify_gitlab(
    keys: &Keys<'_>,
    d: &Delivery<'_>,
    token_header: Option<&str>,
    now: i64,
) -> Result<Verified, Rejection> {
    let is_signing =
        |s: &str| s.starts_with(SECRET_PREFIX) || s.starts_with(standard::PUBLIC_KEY_PREFIX);
    let signing = keys.subset(is_signing);
    let plain = keys.subset(|s| !is_signing(s));
    let mut signing_error = None;
    if signing.len() > 0 && header(d.headers, "webhook-signature")?.is_some() {
        match standard::verify(&signing, d, now, Branding::Unbranded) {
            Ok(v) => return Ok(v),
            Err(e) => signing_error = Some(e),
        }
    }
    let mut extra = vec![GITLAB_TOKEN];
    extra.extend(token_header);
    let tokens = if plain.len() > 0 {
        presented_tokens(d.headers, &extra)?
    } else {
        Vec::new()
    };
    if !tokens.is_empty() {
        if let Some(i) = match_tokens(&plain, &tokens) {
            return Ok(Verified {
                secret_index: i,
                timestamp: None,
            });
        }
        return Err(signing_error.unwrap_or(Rejection::TokenMismatch {
            secrets: plain.len(),
        }));
    }
    Err(
        signing_error.unwrap_or_else(|| Rejection::MissingSignature {
            header: if plain.len() > 0 {
                GITLAB_TOKEN.to_string()
            } else {
                "webhook-signature".to_string()
            },
        }),
    )
}

pub(crate) fn sign_gitlab(
    secret: &str,
    input: &SignInput<'_>,
    token_header: Option<&str>,
) -> Result<Vec<(String, String)>, SignError> {
    let mut out =
        if secret.starts_with(SECRET_PREFIX) || secret.starts_with(standard::PRIVATE_KEY_PREFIX) {
            standard::sign(secret, input, Branding::Unbranded)?
        } else {
            vec![(
                token_header.unwrap_or(GITLAB_TOKEN).to_string(),
                secret.to_string(),
            )]
        };
    if !input.id.is_empty() {
        out.push(("Idempotency-Key".to_string(), input.id.to_string()));
    }
    Ok(out)
}

/// The `Authorization` header's credentials for one scheme (`Bearer` or `Basic`).
fn authorization_token(
    headers: &http::HeaderMap,
    want_basic: bool,
) -> Result<Option<String>, Rejection> {
    let Some(auth) = header(headers, "Authorization")? else {
        return Ok(None);
    };
    let Some((scheme, rest)) = auth.split_once(' ') else {
        return Ok(None);
    };
    let rest = rest.trim();
    if !want_basic && scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Some(rest.to_string()));
    }
    if want_basic && scheme.eq_ignore_ascii_case("basic") {
        return base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .and_then(|t| t.split_once(':').map(|(_, p)| p.to_string()))
            .map(Some)
            .ok_or(Rejection::MalformedSignature {
                header: "Authorization".to_string(),
                reason: "Basic credentials are not base64 of user:password",
            });
    }
    Ok(None)
}

/// `provider: generic` with `spec.auth`: exactly the one place the auth names. `none`
/// accepts every request (the caller checked that it was spelled out).
pub(crate) fn verify_generic_auth(
    auth: GenericAuth,
    keys: &Keys<'_>,
    headers: &http::HeaderMap,
    token_header: Option<&str>,
) -> Result<Verified, Rejection> {
    let (token, place) = match auth {
        // Not token auth: the scheme verifies by spec.signature or spec.oidc instead.
        GenericAuth::Hmac | GenericAuth::Oidc => {
            return Err(Rejection::InvalidSecret {
                reason: "spec.auth hmac/oidc is not token auth",
            });
        }
        GenericAuth::None => {
            return Ok(Verified {
                secret_index: 0,
                timestamp: None,
            });
        }
        GenericAuth::Bearer => (
            authorization_token(headers, false)?,
            "Authorization (Bearer)".to_string(),
        ),
        GenericAuth::Basic => (
            authorization_token(headers, true)?,
            "Authorization (Basic)".to_string(),
        ),
        GenericAuth::Header => {
            let name = token_header.unwrap_or("X-Token");
            (header(headers, name)?.map(str::to_string), name.to_string())
        }
    };
    let token = token.ok_or(Rejection::MissingSignature { header: place })?;
    match_tokens(keys, std::slice::from_ref(&token))
        .map(|i| Verified {
            secret_index: i,
            timestamp: None,
        })
        .ok_or(Rejection::TokenMismatch {
            secrets: keys.len(),
        })
}

pub(crate) fn sign_generic_auth(
    auth: GenericAuth,
    secret: &str,
    token_header: Option<&str>,
) -> Vec<(String, String)> {
    match auth {
        // Not token auth (signed by spec.signature or a private key): nothing to add here.
        GenericAuth::None | GenericAuth::Hmac | GenericAuth::Oidc => Vec::new(),
        GenericAuth::Bearer => vec![("Authorization".to_string(), format!("Bearer {secret}"))],
        GenericAuth::Basic => vec![(
            "Authorization".to_string(),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("hookwarden:{secret}"))
            ),
        )],
        GenericAuth::Header => vec![(
            token_header.unwrap_or("X-Token").to_string(),
            secret.to_string(),
        )],
    }
}
