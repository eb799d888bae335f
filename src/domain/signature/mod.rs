//! Provider signature schemes: deciding from the raw bytes of a delivery whether it really
//! comes from the sender it claims, and producing the exact headers that sender would send.
//!
//! Everything here is pure: no I/O, the clock is passed in as Unix seconds. The receiver
//! and `hookwarden verify` call the same [`verify`], so one can never accept what the
//! other rejects.
//!
//! Rules every scheme follows:
//! - the MAC is computed over the raw body bytes, never over re-serialised JSON;
//! - comparisons are constant-time over decoded bytes (hex case and base64 padding do not
//!   matter, the MAC bytes do);
//! - any of the given secrets is accepted (current first, then unexpired previous ones),
//!   and [`Verified::secret_index`] says which one matched;
//! - the signature is checked before the timestamp window, so a forged delivery reports
//!   `signature_mismatch` and an authentic but replayed one `timestamp_stale`;
//! - a [`Rejection`] says why, and never contains the expected signature or a secret.

mod asymmetric;
pub(crate) mod crypto;
pub mod der;
mod generic;
mod handshakes;
mod hmac_presets;
pub mod jose;
pub mod oidc;
mod slack;
pub mod sns;
mod standard;
mod stripe;
mod token;
mod twilio;

#[cfg(test)]
mod tests;

use std::fmt;

use http::HeaderMap;

pub use crate::crd::ProviderKind;
pub use crate::crd::{GenericAuth, HmacAlgorithm, SignatureEncoding};
pub use generic::{GenericScheme, Segment};
pub use handshakes::{TWITCH_TOLERANCE_SECONDS, handshake};
pub use hmac_presets::PADDLE_TOLERANCE_SECONDS;
pub use twilio::url_with_body_hash as twilio_url_with_body_hash;

/// Default window for signed timestamps, both directions (stale and future).
pub const DEFAULT_TOLERANCE_SECONDS: i64 = 300;
/// Linear's SDK rejects `webhookTimestamp` more than one minute away from now.
pub const LINEAR_TOLERANCE_SECONDS: i64 = 60;

/// One incoming request, as raw as the receiver got it.
#[derive(Clone, Copy)]
pub struct Delivery<'a> {
    /// HTTP method (Twilio signs GET parameters differently from POST form fields).
    pub method: &'a str,
    /// Full URL as the sender called it, query included (Twilio signs it). Empty when
    /// unknown; only Twilio needs it.
    pub url: &'a str,
    pub headers: &'a HeaderMap,
    /// The body exactly as received.
    pub body: &'a [u8],
}

/// Header values can carry tokens (`Authorization`, `X-Gitlab-Token`): only names and
/// sizes are shown.
impl fmt::Debug for Delivery<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("method", &self.method)
            .field("url", &self.url)
            .field(
                "headers",
                &self.headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            )
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// How one integration authenticates deliveries: the preset plus the spec fields that
/// refine it. Built once per route by [`Scheme::from_spec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scheme {
    pub provider: ProviderKind,
    /// The configurable HMAC, for provider `generic` only.
    pub generic: Option<GenericScheme>,
    /// Provider `generic` without an HMAC: token auth, or explicitly none.
    pub auth: Option<GenericAuth>,
    /// Token presets: an extra header carrying the token as its whole value (lower case).
    pub token_header: Option<String>,
    /// OIDC/JWT bearer senders (google-pubsub, github-actions, generic with auth: oidc).
    pub oidc: Option<oidc::OidcPolicy>,
    /// Provider aws-sns.
    pub sns: Option<sns::SnsPolicy>,
}

/// A spec that cannot be turned into a scheme: permanent until the spec changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemeError {
    #[error(
        "provider generic needs spec.signature (an HMAC: header, algorithm, encoding, signedContent) or spec.auth (oidc with spec.oidc; bearer, basic, header; or none for senders that sign nothing)"
    )]
    MissingGenericSignature,
    #[error("provider generic takes spec.signature or spec.auth, not both")]
    SignatureAndAuth,
    #[error("spec.auth is only used by provider generic; remove it")]
    UnexpectedAuth,
    #[error("spec.auth: header needs spec.tokenHeader, the header that carries the token")]
    AuthHeaderWithoutTokenHeader,
    #[error("spec.signature is only used by provider generic; remove it or set provider: generic")]
    UnexpectedSignature,
    #[error(
        "spec.tokenHeader only applies to the token presets datadog, alertmanager, gitlab and azure-event-grid, and to generic with auth: header"
    )]
    UnexpectedTokenHeader,
    #[error("{field}: {value:?} is not a valid HTTP header name")]
    InvalidHeaderName { field: &'static str, value: String },
    #[error("spec.signature.signedContent: {0}")]
    InvalidSignedContent(String),
    #[error(transparent)]
    Oidc(#[from] oidc::OidcSpecError),
    #[error(
        "spec.oidc is only used by the OIDC senders (google-pubsub, github-actions, generic with auth: oidc); remove it"
    )]
    UnexpectedOidc,
    #[error("spec.sns only applies to provider aws-sns")]
    UnexpectedSns,
}

impl Scheme {
    /// A preset with no spec refinements (what `hookwarden verify --provider` uses).
    pub fn preset(provider: ProviderKind) -> Scheme {
        Scheme {
            provider,
            generic: None,
            auth: None,
            token_header: None,
            oidc: None,
            sns: (provider == ProviderKind::AwsSns)
                .then(|| sns::SnsPolicy::from_spec(None, 24 * 3600)),
        }
    }

    /// Whether the scheme verifies an OIDC bearer token.
    pub fn is_oidc(&self) -> bool {
        self.oidc.is_some()
    }

    /// Validates the authentication-related parts of a spec.
    pub fn from_spec(spec: &crate::crd::WebhookIntegrationSpec) -> Result<Scheme, SchemeError> {
        use crate::crd::GenericAuth;
        let oidc_sender = matches!(
            (spec.provider, spec.auth),
            (ProviderKind::GooglePubsub | ProviderKind::GithubActions, _)
                | (ProviderKind::Generic, Some(GenericAuth::Oidc))
        );
        if spec.auth.is_some() && spec.provider != ProviderKind::Generic {
            return Err(SchemeError::UnexpectedAuth);
        }
        if spec.sns.is_some() && spec.provider != ProviderKind::AwsSns {
            return Err(SchemeError::UnexpectedSns);
        }
        let oidc = if oidc_sender {
            Some(oidc::OidcPolicy::from_spec(
                spec.provider,
                spec.oidc.as_deref(),
            )?)
        } else if spec.oidc.is_some() {
            return Err(SchemeError::UnexpectedOidc);
        } else {
            None
        };
        let sns = (spec.provider == ProviderKind::AwsSns).then(|| {
            let window = spec
                .dedup_window
                .as_deref()
                .and_then(|w| crate::domain::duration::parse(w).ok())
                .unwrap_or(crate::domain::spec::defaults::DEDUP_WINDOW);
            sns::SnsPolicy::from_spec(
                spec.sns.as_deref(),
                i64::try_from(window.as_secs()).unwrap_or(i64::MAX),
            )
        });
        // generic authenticates by HMAC (spec.signature; auth absent or hmac), by an OIDC
        // bearer token (auth: oidc), or by a plain token or nothing (bearer|basic|header|none).
        let token_auth = match spec.auth {
            None | Some(GenericAuth::Hmac) | Some(GenericAuth::Oidc) => None,
            Some(other) => Some(other),
        };
        let generic = match (spec.provider, &spec.signature) {
            (ProviderKind::Generic, None) if oidc.is_some() || token_auth.is_some() => None,
            (ProviderKind::Generic, Some(_)) if oidc.is_some() => {
                return Err(SchemeError::UnexpectedSignature);
            }
            (ProviderKind::Generic, Some(_)) if token_auth.is_some() => {
                return Err(SchemeError::SignatureAndAuth);
            }
            (ProviderKind::Generic, Some(sig)) => Some(GenericScheme::from_spec(sig)?),
            (ProviderKind::Generic, None) => return Err(SchemeError::MissingGenericSignature),
            (_, Some(_)) => return Err(SchemeError::UnexpectedSignature),
            (_, None) => None,
        };
        let header_auth = spec.auth == Some(GenericAuth::Header);
        let token_header = match &spec.token_header {
            None if header_auth => return Err(SchemeError::AuthHeaderWithoutTokenHeader),
            None => None,
            Some(h) => {
                if !(uses_tokens(spec.provider) || header_auth) {
                    return Err(SchemeError::UnexpectedTokenHeader);
                }
                Some(valid_header_name("spec.tokenHeader", h)?)
            }
        };
        Ok(Scheme {
            provider: spec.provider,
            generic,
            auth: token_auth,
            token_header,
            oidc,
            sns,
        })
    }
}

/// Presets whose delivery-id header is not signed and that sign no timestamp (GitHub,
/// Shopify, Sentry, Jira, Bitbucket, Twilio): a captured delivery re-sent with a fresh id
/// would verify again, so the receiver also deduplicates them on what is signed (the
/// body, and for Twilio the URL it was sent to, which is the route's).
pub fn id_is_unsigned(provider: ProviderKind) -> bool {
    matches!(
        provider,
        ProviderKind::Github
            | ProviderKind::Shopify
            | ProviderKind::Sentry
            | ProviderKind::Jira
            | ProviderKind::Bitbucket
            | ProviderKind::Twilio
            | ProviderKind::Gitea
            | ProviderKind::Forgejo
            | ProviderKind::Zoom
    )
}

/// Presets that authenticate with a shared token rather than (only) a signature.
pub fn uses_tokens(provider: ProviderKind) -> bool {
    matches!(
        provider,
        ProviderKind::Datadog
            | ProviderKind::Alertmanager
            | ProviderKind::Gitlab
            | ProviderKind::AzureEventGrid
    )
}

pub(crate) fn valid_header_name(field: &'static str, value: &str) -> Result<String, SchemeError> {
    match http::HeaderName::from_bytes(value.as_bytes()) {
        Ok(name) => Ok(name.as_str().to_string()),
        Err(_) => Err(SchemeError::InvalidHeaderName {
            field,
            value: value.to_string(),
        }),
    }
}

/// The outcome of [`verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Valid(Verified),
    Invalid(Rejection),
}

impl Verdict {
    pub fn is_valid(&self) -> bool {
        matches!(self, Verdict::Valid(_))
    }
}

/// What an authentic delivery proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Index into the `secrets` given to [`verify`] of the secret that matched.
    pub secret_index: usize,
    /// The signed timestamp (Unix seconds) that passed the window check, if the scheme
    /// has one.
    pub timestamp: Option<i64>,
}

/// Why a delivery was refused. [`Rejection::code`] is stable (metrics label,
/// `status.deliveries.lastRejectReason`); `Display` is for humans and never shows the
/// expected signature or a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No usable secret is configured (empty list or only empty values).
    NoSecret,
    /// Every configured secret is unusable for this scheme (e.g. not `whsec_` base64).
    InvalidSecret {
        reason: &'static str,
    },
    /// The header that carries the signature (or token) is absent.
    MissingSignature {
        header: String,
    },
    /// The signature header is present but cannot be parsed.
    MalformedSignature {
        header: String,
        reason: &'static str,
    },
    /// The scheme signs a delivery id, and the id header is absent.
    MissingId {
        header: String,
    },
    /// The scheme signs a timestamp, and it is absent.
    MissingTimestamp {
        source: String,
    },
    /// The timestamp is present but not a number/date.
    MalformedTimestamp {
        source: String,
    },
    /// The signed timestamp is older than the window allows (likely a replay).
    TimestampStale {
        age_seconds: i64,
        tolerance_seconds: i64,
    },
    /// The signed timestamp is further in the future than the window allows.
    TimestampFuture {
        ahead_seconds: i64,
        tolerance_seconds: i64,
    },
    /// Signatures were present and well-formed but none matched any secret.
    SignatureMismatch {
        secrets: usize,
    },
    /// A token was presented but matched no secret.
    TokenMismatch {
        secrets: usize,
    },
    /// Twilio: the body does not hash to the URL's `bodySHA256`.
    BodyHashMismatch,
    /// Twilio signs the URL; the receiver could not tell which URL was called.
    MissingUrl,
    /// The body is needed to verify (Linear's `webhookTimestamp`) and is not JSON.
    MalformedBody {
        reason: &'static str,
    },
    /// More query/form parameters than a scheme that signs them verifies (Twilio: the
    /// work before authentication grows with their number).
    TooManyParameters {
        count: usize,
        limit: usize,
    },
    /// OIDC: the bearer token cannot be read (not a compact JWS, bad base64/JSON, `crit`).
    TokenMalformed {
        reason: &'static str,
    },
    /// OIDC: the token's `alg` is not one the integration accepts (`none` and HS* never).
    AlgorithmNotAllowed {
        alg: String,
    },
    /// OIDC: no key with the token's `kid` (and algorithm), even after a refresh.
    UnknownKeyId {
        kid: String,
    },
    /// OIDC: `exp` (plus leeway) has passed.
    TokenExpired {
        seconds_ago: i64,
    },
    /// OIDC: `nbf` or `iat` is further ahead than the leeway.
    TokenNotYetValid {
        claim: &'static str,
        seconds_ahead: i64,
    },
    IssuerMismatch,
    AudienceMismatch,
    /// OIDC: a claim of `spec.oidc.claims` is absent or has another value.
    ClaimMismatch {
        claim: String,
    },
    /// The JWKS could not be fetched or read (timeout, too large, not a JWKS, HTTP error).
    JwksUnavailable {
        reason: String,
    },
    /// SNS: the signing certificate could not be fetched.
    CertificateUnavailable {
        reason: String,
    },
    /// SNS: the certificate cannot be used (not X.509/RSA, expired).
    CertificateInvalid {
        reason: &'static str,
    },
    /// A key or certificate URL outside the allowed hosts (or not https).
    KeyUrlNotAllowed {
        reason: &'static str,
    },
    /// SNS: an authentic message from a topic not in `spec.sns.topicArns`.
    TopicNotAllowed,
    /// An unauthenticated request that is another provider's endpoint handshake (Zoom
    /// URL validation sent to a Slack integration, …): the integration's provider is
    /// probably the wrong one.
    ForeignHandshake {
        handshake: &'static str,
        sender: ProviderKind,
        provider: ProviderKind,
    },
}

impl Rejection {
    /// Stable snake_case code for metrics and status.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::NoSecret => "no_secret",
            Rejection::InvalidSecret { .. } => "invalid_secret",
            Rejection::MissingSignature { .. } => "missing_signature",
            Rejection::MalformedSignature { .. } => "malformed_signature",
            Rejection::MissingId { .. } => "missing_id",
            Rejection::MissingTimestamp { .. } => "missing_timestamp",
            Rejection::MalformedTimestamp { .. } => "malformed_timestamp",
            Rejection::TimestampStale { .. } => "timestamp_stale",
            Rejection::TimestampFuture { .. } => "timestamp_future",
            Rejection::SignatureMismatch { .. } => "signature_mismatch",
            Rejection::TokenMismatch { .. } => "token_mismatch",
            Rejection::BodyHashMismatch => "body_hash_mismatch",
            Rejection::MissingUrl => "missing_url",
            Rejection::MalformedBody { .. } => "malformed_body",
            Rejection::TooManyParameters { .. } => "too_many_parameters",
            Rejection::TokenMalformed { .. } => "token_malformed",
            Rejection::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
            Rejection::UnknownKeyId { .. } => "unknown_key_id",
            Rejection::TokenExpired { .. } => "token_expired",
            Rejection::TokenNotYetValid { .. } => "token_not_yet_valid",
            Rejection::IssuerMismatch => "issuer_mismatch",
            Rejection::AudienceMismatch => "audience_mismatch",
            Rejection::ClaimMismatch { .. } => "claim_mismatch",
            Rejection::JwksUnavailable { .. } => "jwks_unavailable",
            Rejection::CertificateUnavailable { .. } => "certificate_unavailable",
            Rejection::CertificateInvalid { .. } => "certificate_invalid",
            Rejection::KeyUrlNotAllowed { .. } => "key_url_not_allowed",
            Rejection::TopicNotAllowed => "topic_not_allowed",
            Rejection::ForeignHandshake { .. } => "handshake_wrong_provider",
        }
    }

    /// Every code [`Rejection::code`] can return (bounded metric label values).
    pub const CODES: [&'static str; 29] = [
        "no_secret",
        "invalid_secret",
        "missing_signature",
        "malformed_signature",
        "missing_id",
        "missing_timestamp",
        "malformed_timestamp",
        "timestamp_stale",
        "timestamp_future",
        "signature_mismatch",
        "token_mismatch",
        "body_hash_mismatch",
        "missing_url",
        "malformed_body",
        "too_many_parameters",
        "token_malformed",
        "algorithm_not_allowed",
        "unknown_key_id",
        "token_expired",
        "token_not_yet_valid",
        "issuer_mismatch",
        "audience_mismatch",
        "claim_mismatch",
        "jwks_unavailable",
        "certificate_unavailable",
        "certificate_invalid",
        "key_url_not_allowed",
        "topic_not_allowed",
        "handshake_wrong_provider",
    ];
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NoSecret => f.write_str("no secret is configured"),
            Rejection::InvalidSecret { reason } => {
                write!(f, "the configured secret cannot be used: {reason}")
            }
            Rejection::MissingSignature { header } => write!(f, "missing {header} header"),
            Rejection::MalformedSignature { header, reason } => {
                write!(f, "malformed {header} header: {reason}")
            }
            Rejection::MissingId { header } => {
                write!(f, "missing {header} header (the delivery id is signed)")
            }
            Rejection::MissingTimestamp { source } => write!(f, "missing timestamp ({source})"),
            Rejection::MalformedTimestamp { source } => write!(f, "malformed timestamp ({source})"),
            Rejection::TimestampStale {
                age_seconds,
                tolerance_seconds,
            } => write!(
                f,
                "timestamp is {age_seconds}s old, outside the ±{tolerance_seconds}s window (replayed or delayed delivery, or clock skew)"
            ),
            Rejection::TimestampFuture {
                ahead_seconds,
                tolerance_seconds,
            } => write!(
                f,
                "timestamp is {ahead_seconds}s in the future, outside the ±{tolerance_seconds}s window (clock skew?)"
            ),
            Rejection::SignatureMismatch { secrets } => write!(
                f,
                "signature does not match the body with any of the {secrets} configured secret(s) (wrong secret, or the body was altered)"
            ),
            Rejection::TokenMismatch { secrets } => {
                write!(
                    f,
                    "token does not match any of the {secrets} configured secret(s)"
                )
            }
            Rejection::BodyHashMismatch => {
                f.write_str("body does not match the bodySHA256 query parameter")
            }
            Rejection::MissingUrl => {
                f.write_str("the request URL is needed to verify this provider and is unknown")
            }
            Rejection::MalformedBody { reason } => write!(f, "body cannot be read: {reason}"),
            Rejection::TooManyParameters { count, limit } => write!(
                f,
                "{count} query/form parameters, more than the {limit} this provider's signature is checked over"
            ),
            Rejection::TokenMalformed { reason } => write!(f, "malformed bearer token: {reason}"),
            Rejection::AlgorithmNotAllowed { alg } => write!(
                f,
                "token algorithm {alg:?} is not accepted (spec.oidc.algorithms; none and HMAC never are)"
            ),
            Rejection::UnknownKeyId { kid } => write!(
                f,
                "no key with kid {kid:?} for the token's algorithm in the issuer's JWKS or the Secret's inline JWKS"
            ),
            Rejection::TokenExpired { seconds_ago } => {
                write!(f, "token expired {seconds_ago}s ago (beyond the leeway)")
            }
            Rejection::TokenNotYetValid {
                claim,
                seconds_ahead,
            } => write!(
                f,
                "token {claim} is {seconds_ahead}s in the future (beyond the leeway: clock skew?)"
            ),
            Rejection::IssuerMismatch => f.write_str("token iss is not the configured issuer"),
            Rejection::AudienceMismatch => {
                f.write_str("token aud names none of spec.oidc.audiences")
            }
            Rejection::ClaimMismatch { claim } => write!(
                f,
                "token claim {claim:?} is absent or differs from spec.oidc.claims"
            ),
            Rejection::JwksUnavailable { reason } => {
                write!(f, "the issuer's keys (JWKS) are unavailable: {reason}")
            }
            Rejection::CertificateUnavailable { reason } => {
                write!(f, "the SNS signing certificate is unavailable: {reason}")
            }
            Rejection::CertificateInvalid { reason } => {
                write!(f, "the SNS signing certificate cannot be used: {reason}")
            }
            Rejection::KeyUrlNotAllowed { reason } => {
                write!(f, "key or certificate URL refused: {reason}")
            }
            Rejection::TopicNotAllowed => {
                f.write_str("the message's TopicArn is not in spec.sns.topicArns")
            }
            Rejection::ForeignHandshake {
                handshake,
                sender,
                provider,
            } => write!(
                f,
                "this is a {handshake} request, but the integration's provider is {provider}: set provider: {sender} (or point the {sender} subscription at this provider's integration)"
            ),
        }
    }
}

/// The secrets a scheme may try: non-empty ones, with their index in the caller's list.
/// An empty secret would let anyone compute a valid MAC or present an empty token.
pub(crate) struct Keys<'a> {
    list: Vec<(usize, &'a str)>,
}

impl<'a> Keys<'a> {
    fn new(secrets: &[&'a str]) -> Keys<'a> {
        Keys {
            list: secrets
                .iter()
                .copied()
                .enumerate()
                .filter(|(_, s)| !s.is_empty())
                .collect(),
        }
    }

    /// The secrets satisfying `keep`, original indexes preserved.
    pub(crate) fn subset(&self, mut keep: impl FnMut(&str) -> bool) -> Keys<'a> {
        Keys {
            list: self.list.iter().copied().filter(|(_, s)| keep(s)).collect(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &'a str)> + '_ {
        self.list.iter().copied()
    }

    /// Index of the first secret for which `matches` holds.
    pub(crate) fn find(&self, mut matches: impl FnMut(&str) -> bool) -> Option<usize> {
        self.list.iter().find(|(_, s)| matches(s)).map(|(i, _)| *i)
    }
}

/// A header's value as text. Values that are not visible ASCII cannot carry a signature.
pub(crate) fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, Rejection> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(s) => Ok(Some(s.trim())),
            Err(_) => Err(Rejection::MalformedSignature {
                header: name.to_string(),
                reason: "not ASCII text",
            }),
        },
    }
}

/// The window check shared by every timestamped scheme: stale *and* future rejected.
pub(crate) fn check_window(timestamp: i64, now: i64, tolerance: i64) -> Result<(), Rejection> {
    let age = now.saturating_sub(timestamp);
    if age > tolerance {
        Err(Rejection::TimestampStale {
            age_seconds: age,
            tolerance_seconds: tolerance,
        })
    } else if -age > tolerance {
        Err(Rejection::TimestampFuture {
            ahead_seconds: -age,
            tolerance_seconds: tolerance,
        })
    } else {
        Ok(())
    }
}

/// A Unix-seconds timestamp as senders write it: ASCII digits, optional leading minus.
pub(crate) fn parse_unix(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty()
        || !s
            .trim_start_matches('-')
            .bytes()
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

/// Keys a scheme needs from outside the delivery and its secrets, fetched by the
/// receiver (or the CLI) and handed in: the domain does no I/O.
#[derive(Clone, Copy, Debug, Default)]
pub struct External<'a> {
    /// OIDC: every key set to try (the caller's parsed inline JWKS included). `None`:
    /// the secrets are read as inline JWKS documents here.
    pub jwks: Option<&'a [&'a jose::JwkSet]>,
    /// SNS: the certificate `SigningCertURL` served.
    pub certificate: Option<&'a der::Certificate>,
}

/// Verifies one delivery against `secrets` (current first, then unexpired previous
/// ones) at `now_unix`.
pub fn verify(
    scheme: &Scheme,
    secrets: &[&str],
    delivery: &Delivery<'_>,
    now_unix: i64,
) -> Verdict {
    verify_with(scheme, secrets, delivery, now_unix, External::default())
}

/// [`verify`] with keys fetched from the network (OIDC JWKS, SNS certificate).
pub fn verify_with(
    scheme: &Scheme,
    secrets: &[&str],
    delivery: &Delivery<'_>,
    now_unix: i64,
    external: External<'_>,
) -> Verdict {
    if let Some(policy) = &scheme.oidc {
        let outcome = match external.jwks {
            Some(sets) => oidc::verify(policy, delivery, sets, now_unix),
            None => oidc::inline_sets(secrets).and_then(|inline| {
                let sets: Vec<&jose::JwkSet> = inline.iter().collect();
                oidc::verify(policy, delivery, &sets, now_unix)
            }),
        };
        return into_verdict(outcome);
    }
    if let Some(policy) = &scheme.sns {
        let outcome = sns::parse(delivery.body).and_then(|message| match external.certificate {
            Some(cert) => sns::verify(policy, &message, cert, now_unix),
            None => Err(Rejection::CertificateUnavailable {
                reason: "no certificate was fetched for SigningCertURL".to_string(),
            }),
        });
        return into_verdict(outcome);
    }
    // Spelled out in the spec: nothing to check, and no secret needed.
    if scheme.provider == ProviderKind::Generic && scheme.auth == Some(GenericAuth::None) {
        return Verdict::Valid(Verified {
            secret_index: 0,
            timestamp: None,
        });
    }
    let keys = Keys::new(secrets);
    if keys.len() == 0 {
        return Verdict::Invalid(Rejection::NoSecret);
    }
    let outcome = match scheme.provider {
        ProviderKind::Github => hmac_presets::verify_github(&keys, delivery),
        ProviderKind::Jira | ProviderKind::Bitbucket => {
            hmac_presets::verify_hub_sha256(&keys, delivery)
        }
        ProviderKind::Shopify => hmac_presets::verify_shopify(&keys, delivery),
        ProviderKind::Pagerduty => hmac_presets::verify_pagerduty(&keys, delivery),
        ProviderKind::Sentry => hmac_presets::verify_sentry(&keys, delivery),
        ProviderKind::Linear => hmac_presets::verify_linear(&keys, delivery, now_unix),
        ProviderKind::Grafana => hmac_presets::verify_grafana(&keys, delivery, now_unix),
        ProviderKind::Zendesk => hmac_presets::verify_zendesk(&keys, delivery, now_unix),
        ProviderKind::Stripe => stripe::verify(&keys, delivery, now_unix),
        ProviderKind::Slack => slack::verify(&keys, delivery, now_unix),
        ProviderKind::StandardWebhooks => {
            standard::verify(&keys, delivery, now_unix, standard::Branding::Unbranded)
        }
        ProviderKind::Svix => standard::verify(&keys, delivery, now_unix, standard::Branding::Svix),
        ProviderKind::Twilio => twilio::verify(&keys, delivery),
        ProviderKind::Gitlab => {
            token::verify_gitlab(&keys, delivery, scheme.token_header.as_deref(), now_unix)
        }
        ProviderKind::Datadog | ProviderKind::Alertmanager => {
            token::verify_token(&keys, delivery.headers, scheme.token_header.as_deref())
        }
        // Built without their policy (a hand-built Scheme): nothing verifies.
        ProviderKind::GooglePubsub | ProviderKind::GithubActions | ProviderKind::AwsSns => {
            Err(Rejection::InvalidSecret {
                reason: "the provider's settings (spec.oidc / spec.sns) are missing",
            })
        }
        ProviderKind::Discord => asymmetric::verify_discord(&keys, delivery, now_unix),
        ProviderKind::Sendgrid => asymmetric::verify_sendgrid(&keys, delivery, now_unix),
        ProviderKind::Zoom => handshakes::verify_zoom(&keys, delivery, now_unix),
        ProviderKind::Twitch => handshakes::verify_twitch(&keys, delivery, now_unix),
        ProviderKind::AzureEventGrid => {
            handshakes::verify_azure(&keys, delivery, scheme.token_header.as_deref())
        }
        ProviderKind::Gitea => hmac_presets::verify_gitea(&keys, delivery, false),
        ProviderKind::Forgejo => hmac_presets::verify_gitea(&keys, delivery, true),
        ProviderKind::Paddle => hmac_presets::verify_paddle(&keys, delivery, now_unix),
        ProviderKind::Generic => match (&scheme.generic, scheme.auth) {
            (Some(g), _) => generic::verify(g, &keys, delivery, now_unix),
            (None, Some(auth)) => token::verify_generic_auth(
                auth,
                &keys,
                delivery.headers,
                scheme.token_header.as_deref(),
            ),
            // from_spec never builds this; a hand-built Scheme without settings verifies nothing.
            (None, None) => Err(Rejection::InvalidSecret {
                reason: "provider generic has no signature settings",
            }),
        },
    };
    match outcome {
        Ok(v) => Verdict::Valid(v),
        // A failed request that is another provider's handshake says so: the fix is the
        // integration's provider, not the secret. Looked at only on this failure path.
        Err(r) => Verdict::Invalid(
            match handshakes::foreign_handshake(scheme.provider, delivery) {
                Some((handshake, sender)) => Rejection::ForeignHandshake {
                    handshake,
                    sender,
                    provider: scheme.provider,
                },
                None => r,
            },
        ),
    }
}

fn into_verdict(outcome: Result<Verified, Rejection>) -> Verdict {
    match outcome {
        Ok(v) => Verdict::Valid(v),
        Err(r) => Verdict::Invalid(r),
    }
}

/// Whether the provider signs with a private key the sender keeps (`hookwarden sign`
/// takes that key then, through [`sign_asymmetric`]).
pub fn is_asymmetric(scheme: &Scheme) -> bool {
    scheme.oidc.is_some() || scheme.sns.is_some()
}

/// What [`sign_asymmetric`] produces: headers, and for SNS (whose signature is inside
/// the JSON) the signed body to send instead.
#[derive(Clone, Debug)]
pub struct Signed {
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

/// Signs like an OIDC sender (a bearer token with the claims the scheme checks, valid
/// five minutes from `input.timestamp`; `key_id` becomes the token's `kid`) or like SNS
/// (SignatureVersion 2 filled into the body), with a PEM private key.
pub fn sign_asymmetric(
    scheme: &Scheme,
    private_key_pem: &str,
    key_id: Option<&str>,
    input: &SignInput<'_>,
    rng: &dyn ring::rand::SecureRandom,
) -> Result<Signed, SignError> {
    let key = jose::PrivateKey::from_pem(private_key_pem).map_err(SignError::InvalidSecret)?;
    if let Some(policy) = &scheme.oidc {
        if !policy.algorithms.contains(&key.algorithm()) {
            return Err(SignError::InvalidSecret(
                "the key's algorithm is not in spec.oidc.algorithms",
            ));
        }
        let subject = if input.id.is_empty() {
            "hookwarden-test"
        } else {
            input.id
        };
        let claims = oidc::sample_claims(policy, input.timestamp, subject);
        let token =
            jose::encode_token(&key, key_id, &claims, rng).map_err(SignError::InvalidSecret)?;
        return Ok(Signed {
            headers: vec![("Authorization".to_string(), format!("Bearer {token}"))],
            body: None,
        });
    }
    if scheme.sns.is_some() {
        let body = sns::sign_body(input.body, &key, rng).map_err(SignError::InvalidSecret)?;
        let message = sns::parse(&body)
            .map_err(|_| SignError::InvalidSecret("the body is not an SNS message"))?;
        return Ok(Signed {
            headers: sns::headers(&message),
            body: Some(body),
        });
    }
    Err(SignError::InvalidSecret(
        "this provider signs with a shared secret, not a private key",
    ))
}

/// What the sender's inputs to [`sign`] are.
#[derive(Clone, Copy, Debug)]
pub struct SignInput<'a> {
    pub body: &'a [u8],
    /// The URL the delivery goes to (Twilio signs it; others ignore it).
    pub url: &'a str,
    /// Unix seconds.
    pub timestamp: i64,
    /// Delivery id, for schemes that sign or send one.
    pub id: &'a str,
    /// Content type of the body (Twilio signs form fields, not JSON bodies).
    pub content_type: &'a str,
}

/// Why headers could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("the secret is empty")]
    EmptySecret,
    #[error("the secret cannot be used: {0}")]
    InvalidSecret(&'static str),
    #[error("{0} signs the request URL: give the URL the delivery is sent to")]
    MissingUrl(ProviderKind),
    #[error(
        "Twilio sends JSON bodies to the URL with ?bodySHA256=<hex sha256 of the body> appended, and signs that URL: use {0}"
    )]
    TwilioNeedsBodyHash(String),
    #[error("provider generic needs its signature settings (spec.signature) or spec.auth")]
    MissingGenericSignature,
    #[error(
        "{0} signs with a private key: give the PEM private key (hookwarden sign --private-key-file)"
    )]
    NeedsPrivateKey(ProviderKind),
}

/// The exact authentication headers the provider would send for this body (plus the
/// delivery id / timestamp headers that belong to the scheme), in sending order.
pub fn sign(
    scheme: &Scheme,
    secret: &str,
    input: &SignInput<'_>,
) -> Result<Vec<(String, String)>, SignError> {
    if scheme.provider == ProviderKind::Generic && scheme.auth == Some(GenericAuth::None) {
        return Ok(Vec::new());
    }
    if secret.is_empty() {
        return Err(SignError::EmptySecret);
    }
    if is_asymmetric(scheme) {
        return Err(SignError::NeedsPrivateKey(scheme.provider));
    }
    match scheme.provider {
        ProviderKind::GooglePubsub | ProviderKind::GithubActions | ProviderKind::AwsSns => {
            Err(SignError::NeedsPrivateKey(scheme.provider))
        }
        ProviderKind::Github => Ok(hmac_presets::sign_github(secret, input)),
        ProviderKind::Jira => Ok(hmac_presets::sign_hub_sha256(
            secret,
            input,
            "X-Atlassian-Webhook-Identifier",
        )),
        ProviderKind::Bitbucket => Ok(hmac_presets::sign_hub_sha256(
            secret,
            input,
            "X-Request-UUID",
        )),
        ProviderKind::Shopify => Ok(hmac_presets::sign_shopify(secret, input)),
        ProviderKind::Pagerduty => Ok(hmac_presets::sign_pagerduty(secret, input)),
        ProviderKind::Sentry => Ok(hmac_presets::sign_sentry(secret, input)),
        ProviderKind::Linear => Ok(hmac_presets::sign_linear(secret, input)),
        ProviderKind::Grafana => Ok(hmac_presets::sign_grafana(secret, input)),
        ProviderKind::Zendesk => Ok(hmac_presets::sign_zendesk(secret, input)),
        ProviderKind::Stripe => Ok(stripe::sign(secret, input)),
        ProviderKind::Slack => Ok(slack::sign(secret, input)),
        ProviderKind::StandardWebhooks => {
            standard::sign(secret, input, standard::Branding::Unbranded)
        }
        ProviderKind::Svix => standard::sign(secret, input, standard::Branding::Svix),
        ProviderKind::Twilio => twilio::sign(secret, input),
        ProviderKind::Gitlab => token::sign_gitlab(secret, input, scheme.token_header.as_deref()),
        ProviderKind::Datadog | ProviderKind::Alertmanager => {
            Ok(token::sign_token(secret, scheme.token_header.as_deref()))
        }
        ProviderKind::Discord => asymmetric::sign_discord(secret, input),
        ProviderKind::Sendgrid => asymmetric::sign_sendgrid(secret, input),
        ProviderKind::Zoom => Ok(handshakes::sign_zoom(secret, input)),
        ProviderKind::Twitch => Ok(handshakes::sign_twitch(secret, input)),
        ProviderKind::AzureEventGrid => Ok(handshakes::sign_azure(
            secret,
            scheme.token_header.as_deref(),
        )),
        ProviderKind::Gitea => Ok(hmac_presets::sign_gitea(secret, input, false)),
        ProviderKind::Forgejo => Ok(hmac_presets::sign_gitea(secret, input, true)),
        ProviderKind::Paddle => Ok(hmac_presets::sign_paddle(secret, input)),
        ProviderKind::Generic => match (&scheme.generic, scheme.auth) {
            (Some(g), _) => Ok(generic::sign(g, secret, input)),
            (None, Some(auth)) => Ok(token::sign_generic_auth(
                auth,
                secret,
                scheme.token_header.as_deref(),
            )),
            (None, None) => Err(SignError::MissingGenericSignature),
        },
    }
}

/// Whether `secret` can be used by `provider` at all (Standard Webhooks and Svix keys
/// must be base64, optionally after `whsec_`). For a controller condition; never echoes
/// the secret.
pub fn check_secret(provider: ProviderKind, secret: &str) -> Result<(), SignError> {
    if secret.is_empty() {
        return Err(SignError::EmptySecret);
    }
    match provider {
        ProviderKind::StandardWebhooks | ProviderKind::Svix => {
            standard::decode_key(secret).map(|_| ())
        }
        ProviderKind::Gitlab if secret.starts_with(standard::SECRET_PREFIX) => {
            standard::decode_key(secret).map(|_| ())
        }
        // An inline JWKS must be usable; any other value (a generated secret) is unused.
        // (generic with auth: oidc is checked per delivery: `invalid_secret`; this
        // function does not see the spec, and a generic HMAC secret may be any text.)
        ProviderKind::GooglePubsub | ProviderKind::GithubActions
            if secret.trim_start().starts_with('{') && secret.contains("\"keys\"") =>
        {
            oidc::inline_sets(&[secret])
                .map(|_| ())
                .map_err(|_| SignError::InvalidSecret("the Secret's JWKS is not usable"))
        }
        ProviderKind::Gitlab if secret.starts_with(standard::PUBLIC_KEY_PREFIX) => {
            standard::check_verify_key(secret)
        }
        ProviderKind::Discord => asymmetric::check_discord_key(secret),
        ProviderKind::Sendgrid => asymmetric::check_sendgrid_key(secret),
        _ => Ok(()),
    }
}

/// Identity and type of a delivery, as the provider states them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryMeta {
    /// Deduplication key: the provider's delivery/event id, stable across its retries.
    pub id: Option<String>,
    /// Provider event type, matched against `spec.events`.
    pub event_type: Option<String>,
}

/// Longest id or event type taken from a delivery (they end up in memory and logs).
const META_MAX_LEN: usize = 256;

fn bounded(s: &str) -> Option<String> {
    bounded_str(s).map(str::to_string)
}

/// Trimmed, non-empty, and cut to [`META_MAX_LEN`] bytes at a character boundary.
fn bounded_str(s: &str) -> Option<&str> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut end = s.len().min(META_MAX_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Some(&s[..end])
}

fn header_meta(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(bounded)
}

fn json_meta(body: Option<&serde_json::Value>, pointer: &str) -> Option<String> {
    scalar_meta(&crate::domain::json::Scalar::of(
        crate::domain::json::pointer(body?, pointer)?,
    ))
}

fn scalar_meta(value: &crate::domain::json::Scalar<'_>) -> Option<String> {
    let mut out = String::new();
    push_meta(&mut out, value).then_some(out)
}

/// Appends `value` as a delivery id or type reads it (text bounded by [`bounded_str`], a
/// number's digits); false, and nothing appended, for anything else.
fn push_meta(out: &mut String, value: &crate::domain::json::Scalar<'_>) -> bool {
    use crate::domain::json::Scalar;
    use std::fmt::Write as _;
    match value {
        Scalar::Str(s) => bounded_str(s).is_some_and(|b| {
            out.push_str(b);
            true
        }),
        // A number's digits are never blank nor past the bound.
        Scalar::Num(n) => write!(out, "{n}").is_ok(),
        Scalar::Bool(_) | Scalar::Null | Scalar::Composite => false,
    }
}

/// Datadog's delivery id and event type, from the body's top-level `field`s (its
/// [`delivery_meta`]; a body read with `TopLevel` is read with the same fields).
///
/// Datadog's template is user-written: `id` may be the alert id, shared by the trigger
/// and its recovery, so the transition and date are part of the key.
pub fn datadog_meta<'a>(
    field: impl Fn(&str) -> Option<crate::domain::json::Scalar<'a>>,
) -> DeliveryMeta {
    // Each part appended in place: no String per part.
    let append = |key: &mut String, value: Option<crate::domain::json::Scalar<'_>>| {
        value.is_some_and(|v| push_meta(key, &v))
    };
    let mut key = String::new();
    let id = append(&mut key, field("id")).then(|| {
        for p in ["alert_transition", "date", "last_updated"] {
            let mark = key.len();
            key.push(':');
            if !append(&mut key, field(p)) {
                key.truncate(mark);
            }
        }
        // Bounded as a whole, as every part was: copied only when that changes it.
        match bounded_str(&key) {
            Some(b) if b.len() == key.len() => Some(key),
            other => other.map(str::to_string),
        }
    });
    let j = |name: &str| field(name).as_ref().and_then(scalar_meta);
    DeliveryMeta {
        id: id.flatten(),
        event_type: j("event_type").or_else(|| j("alert_transition")),
    }
}

/// The provider's delivery id and event type. `body` is the parsed JSON body when the
/// delivery is JSON (after authentication).
pub fn delivery_meta(
    scheme: &Scheme,
    headers: &HeaderMap,
    body: Option<&serde_json::Value>,
) -> DeliveryMeta {
    let h = |name: &str| header_meta(headers, name);
    let j = |pointer: &str| json_meta(body, pointer);
    let (id, event_type) = match scheme.provider {
        ProviderKind::Github => (h("X-GitHub-Delivery"), h("X-GitHub-Event")),
        ProviderKind::Gitlab => (
            h("webhook-id")
                .or_else(|| h("Idempotency-Key"))
                .or_else(|| h("X-Gitlab-Event-UUID")),
            h("X-Gitlab-Event").or_else(|| j("/object_kind")),
        ),
        ProviderKind::Stripe => (j("/id"), j("/type")),
        ProviderKind::Slack => {
            let event_type = match j("/type").as_deref() {
                Some("event_callback") => {
                    j("/event/type").or_else(|| Some("event_callback".to_string()))
                }
                Some(t) => Some(t.to_string()),
                None => None,
            };
            (j("/event_id"), event_type)
        }
        ProviderKind::StandardWebhooks => (h("webhook-id"), j("/type")),
        ProviderKind::Svix => (
            h("svix-id").or_else(|| h("webhook-id")),
            j("/type").or_else(|| j("/eventType")),
        ),
        ProviderKind::Shopify => (
            h("X-Shopify-Webhook-Id").or_else(|| h("X-Shopify-Event-Id")),
            h("X-Shopify-Topic"),
        ),
        ProviderKind::Pagerduty => (j("/event/id"), j("/event/event_type")),
        ProviderKind::Twilio => (h("I-Twilio-Idempotency-Token"), None),
        ProviderKind::Sentry => (h("Request-ID"), h("Sentry-Hook-Resource")),
        ProviderKind::Linear => (
            h("Linear-Delivery"),
            h("Linear-Event").or_else(|| j("/type")),
        ),
        ProviderKind::Grafana => (None, j("/status")),
        ProviderKind::Zendesk => (h("X-Zendesk-Webhook-Invocation-Id"), j("/type")),
        ProviderKind::Jira => (h("X-Atlassian-Webhook-Identifier"), j("/webhookEvent")),
        ProviderKind::Bitbucket => (
            h("X-Request-UUID").or_else(|| h("X-Request-Id")),
            h("X-Event-Key"),
        ),
        ProviderKind::Datadog => {
            return datadog_meta(|name| {
                body.and_then(|b| b.get(name))
                    .map(crate::domain::json::Scalar::of)
            });
        }
        ProviderKind::Alertmanager => (None, j("/status")),
        ProviderKind::GooglePubsub => (
            j("/message/messageId").or_else(|| j("/message/message_id")),
            j("/message/attributes/type").or_else(|| j("/message/attributes/eventType")),
        ),
        ProviderKind::GithubActions => (h("X-Request-Id"), j("/type")),
        ProviderKind::AwsSns => (
            // The body's MessageId is signed; the header copy is not.
            j("/MessageId").or_else(|| h("x-amz-sns-message-id")),
            j("/Type"),
        ),
        ProviderKind::Discord => (j("/id"), j("/type")),
        // One delivery carries a batch of events; the first one names it.
        ProviderKind::Sendgrid => (
            j("/0/sg_event_id").or_else(|| j("/sg_event_id")),
            j("/0/event").or_else(|| j("/event")),
        ),
        ProviderKind::Zoom => (h("x-zm-trackingid"), j("/event")),
        ProviderKind::Twitch => (
            h("Twitch-Eventsub-Message-Id"),
            h("Twitch-Eventsub-Subscription-Type").or_else(|| j("/subscription/type")),
        ),
        // Event Grid schema: an array of events; CloudEvents: one object.
        ProviderKind::AzureEventGrid => (
            j("/0/id").or_else(|| j("/id")),
            j("/0/eventType").or_else(|| j("/type")),
        ),
        ProviderKind::Gitea => (h("X-Gitea-Delivery"), h("X-Gitea-Event")),
        ProviderKind::Forgejo => (
            h("X-Forgejo-Delivery").or_else(|| h("X-Gitea-Delivery")),
            h("X-Forgejo-Event").or_else(|| h("X-Gitea-Event")),
        ),
        ProviderKind::Paddle => (j("/event_id"), j("/event_type")),
        ProviderKind::Generic => (
            scheme
                .generic
                .as_ref()
                .and_then(|g| g.id_header.as_deref())
                .and_then(h),
            j("/type"),
        ),
    };
    DeliveryMeta { id, event_type }
}

/// Whether [`delivery_meta`] or [`handshake`] may read this provider's parsed body. When
/// neither does (and no schema or mapping needs it), the receiver only validates the JSON
/// instead of building a tree it would throw away. No wildcard arm: a new provider has
/// to decide.
pub fn meta_reads_body(provider: ProviderKind) -> bool {
    match provider {
        ProviderKind::Github
        | ProviderKind::Shopify
        | ProviderKind::Twilio
        | ProviderKind::Sentry
        | ProviderKind::Bitbucket
        | ProviderKind::Gitea
        | ProviderKind::Forgejo => false,
        ProviderKind::Gitlab
        | ProviderKind::Stripe
        | ProviderKind::Slack
        | ProviderKind::StandardWebhooks
        | ProviderKind::Svix
        | ProviderKind::Pagerduty
        | ProviderKind::Linear
        | ProviderKind::Grafana
        | ProviderKind::Zendesk
        | ProviderKind::Jira
        | ProviderKind::Datadog
        | ProviderKind::Alertmanager
        | ProviderKind::Generic
        | ProviderKind::GooglePubsub
        | ProviderKind::GithubActions
        | ProviderKind::AwsSns
        | ProviderKind::Discord
        | ProviderKind::Sendgrid
        | ProviderKind::Zoom
        | ProviderKind::Twitch
        | ProviderKind::AzureEventGrid
        | ProviderKind::Paddle => true,
    }
}

/// The media type of a Content-Type value, lower case, without parameters
/// (`Application/JSON; charset=utf-8` → `application/json`).
pub fn media_type(content_type: &str) -> std::borrow::Cow<'_, str> {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    // Senders write it in lower case; only a mixed-case one is copied.
    if essence.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(essence.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(essence)
    }
}

/// Media types a provider sends. Anything else gets 415; a missing Content-Type is let
/// through (some senders omit it, and the signature still decides).
pub fn accepts_content_type(provider: ProviderKind, content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return true };
    let essence = media_type(ct);
    let json =
        essence == "application/json" || essence == "text/json" || essence.ends_with("+json");
    let form = essence == "application/x-www-form-urlencoded";
    let xml = essence == "application/xml" || essence == "text/xml";
    match provider {
        ProviderKind::Generic => true,
        // GitHub and Datadog offer "form" encoding; Slack slash commands and interactivity
        // are form posts; Twilio posts forms (JSON with bodySHA256 for some products).
        ProviderKind::Github
        | ProviderKind::Slack
        | ProviderKind::Twilio
        | ProviderKind::Datadog
        // Gitea/Forgejo offer "application/x-www-form-urlencoded" as the POST content type.
        | ProviderKind::Gitea
        | ProviderKind::Forgejo => json || form,
        // Shopify subscriptions can be XML; Zendesk trigger webhooks JSON, XML or form.
        ProviderKind::Shopify => json || xml,
        ProviderKind::Zendesk => json || xml || form,
        // SNS posts its JSON as text/plain; charset=UTF-8.
        ProviderKind::AwsSns => json || essence == "text/plain",
        _ => json,
    }
}
