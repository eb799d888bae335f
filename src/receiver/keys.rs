//! Keys that senders publish rather than share: OIDC issuers' JWKS and SNS signing
//! certificates, fetched with the forwarder's pooled client and SSRF guard, and
//! cached. The verification itself is the domain's ([`signature::verify_with`]); this
//! module only decides what to fetch and when.
//!
//! Bounds, so a broken or hostile key endpoint costs little and blocks nothing else:
//! - each fetch has a timeout and a size cap (a 50 MB or endless answer is dropped after
//!   [`MAX_JWKS_BYTES`]); other integrations' deliveries never wait for it, and
//!   deliveries of the same integration share one fetch per URL (single flight);
//! - a failed fetch is remembered for [`NEGATIVE_TTL`] (no hammering a down issuer);
//! - a token whose `kid` is unknown refreshes the JWKS at most once per
//!   [`REFRESH_MIN_INTERVAL`] per URL (key rotation is picked up; random `kid`s cannot
//!   turn the receiver into a fetch amplifier);
//! - a JWKS is fresh for [`JWKS_TTL`], then refetched; if that fails the stale copy
//!   serves for up to [`STALE_LIMIT`];
//! - at most [`MAX_CACHED_URLS`] URLs of each kind are cached (oldest evicted).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use sha2::Digest as _;

use crate::domain::signature::der::{self, Certificate};
use crate::domain::signature::jose::JwkSet;
use crate::domain::signature::{self, Delivery, External, Rejection, Scheme, Verdict, oidc, sns};
use crate::forwarder::{FetchError, Sender};
use crate::receiver::forward::ForwardBoard;

pub const MAX_JWKS_BYTES: usize = 256 * 1024;
pub const MAX_CERT_BYTES: usize = 64 * 1024;
pub const JWKS_TTL: Duration = Duration::from_secs(3600);
pub const STALE_LIMIT: Duration = Duration::from_secs(24 * 3600);
pub const NEGATIVE_TTL: Duration = Duration::from_secs(30);
pub const REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(60);
/// SNS certificates are immutable per URL (AWS publishes a new URL for a new key).
pub const CERT_TTL: Duration = Duration::from_secs(24 * 3600);
pub const MAX_CACHED_URLS: usize = 256;
const MAX_INLINE_SETS: usize = 4096;

/// How the receiver fetches keys.
#[derive(Clone, Debug)]
pub struct RemoteKeyOptions {
    /// Whole-fetch timeout (connect, answer, body).
    pub timeout: Duration,
    /// Tests only (`--insecure-key-urls`): JWKS, certificate and SubscribeURL fetches
    /// may use http and any host (the egress policy still applies).
    pub insecure_urls: bool,
    /// A token with an unknown `kid` refetches the JWKS at most this often per URL.
    pub refresh_min_interval: Duration,
}

impl Default for RemoteKeyOptions {
    fn default() -> Self {
        RemoteKeyOptions {
            timeout: Duration::from_secs(5),
            insecure_urls: false,
            refresh_min_interval: REFRESH_MIN_INTERVAL,
        }
    }
}

struct Entry<T> {
    /// The last good document and when it was fetched.
    good: Option<(Arc<T>, Instant)>,
    /// The last failure and when it happened (negative cache).
    failed: Option<(String, Instant)>,
    /// One fetch per URL at a time.
    flight: Arc<tokio::sync::Mutex<()>>,
    used: Instant,
}

impl<T> Entry<T> {
    fn new(now: Instant) -> Self {
        Entry {
            good: None,
            failed: None,
            flight: Arc::new(tokio::sync::Mutex::new(())),
            used: now,
        }
    }
}

type Cache<T> = Mutex<HashMap<String, Entry<T>>>;

/// The receiver's key fetcher and caches (one per receiver, shared by all requests).
pub struct RemoteKeys {
    sender: Sender,
    options: RemoteKeyOptions,
    jwks: Cache<JwkSet>,
    certs: Cache<Certificate>,
    inline: Mutex<HashMap<[u8; 32], Arc<Vec<JwkSet>>>>,
    /// Where SNS subscription Events go (set once the forwarder exists).
    notices: OnceLock<Arc<ForwardBoard>>,
}

impl std::fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeys")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RemoteKeys {
    pub fn new(sender: Sender, options: RemoteKeyOptions) -> RemoteKeys {
        RemoteKeys {
            sender,
            options,
            jwks: Mutex::new(HashMap::new()),
            certs: Mutex::new(HashMap::new()),
            inline: Mutex::new(HashMap::new()),
            notices: OnceLock::new(),
        }
    }

    pub fn options(&self) -> &RemoteKeyOptions {
        &self.options
    }

    /// Events about SNS subscriptions are published with the integration's next status
    /// write, through the forwarding board.
    pub fn set_notices(&self, board: Arc<ForwardBoard>) {
        let _ = self.notices.set(board);
    }

    fn notice(&self, integration: &str, warning: bool, reason: &'static str, message: String) {
        match self.notices.get() {
            Some(board) => board.event(integration, warning, reason, message),
            None => tracing::info!(integration, reason, %message, "SNS subscription notice"),
        }
    }

    /// The inline JWKS documents among `secrets`, parsed once per secret value.
    fn inline_sets(&self, secrets: &[&str]) -> Result<Arc<Vec<JwkSet>>, Rejection> {
        let mut hasher = sha2::Sha256::new();
        for s in secrets {
            hasher.update((s.len() as u64).to_le_bytes());
            hasher.update(s.as_bytes());
        }
        let key: [u8; 32] = hasher.finalize().into();
        if let Some(sets) = self
            .inline
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(sets.clone());
        }
        let sets = Arc::new(oidc::inline_sets(secrets)?);
        let mut map = self.inline.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_INLINE_SETS {
            map.clear();
        }
        map.insert(key, sets.clone());
        Ok(sets)
    }

    async fn get<T, F>(
        &self,
        cache: &Cache<T>,
        url: &str,
        // Whether a cached document serves this request; if not (a JWKS without the
        // token's key) it is refetched, at most once per REFRESH_MIN_INTERVAL.
        satisfied: impl Fn(&T) -> bool,
        fresh_for: Duration,
        fetch: F,
    ) -> Result<Arc<T>, String>
    where
        F: AsyncFnOnce() -> Result<T, String>,
    {
        let refresh_min = self.options.refresh_min_interval;
        let decide = |entry: &Entry<T>, now: Instant| -> Option<Result<Arc<T>, String>> {
            let good = entry.good.as_ref();
            match good {
                Some((doc, at)) if now.duration_since(*at) < fresh_for => {
                    if satisfied(doc) {
                        return Some(Ok(doc.clone()));
                    }
                    // Unknown key: refresh, at most once per interval.
                    if now.duration_since(*at) < refresh_min
                        || entry
                            .failed
                            .as_ref()
                            .is_some_and(|(_, f)| now.duration_since(*f) < refresh_min)
                    {
                        return Some(Ok(doc.clone()));
                    }
                    None
                }
                _ => match &entry.failed {
                    Some((why, at)) if now.duration_since(*at) < NEGATIVE_TTL => Some(match good {
                        Some((doc, fetched)) if now.duration_since(*fetched) < STALE_LIMIT => {
                            Ok(doc.clone())
                        }
                        _ => Err(why.clone()),
                    }),
                    _ => None,
                },
            }
        };
        let flight = {
            let mut map = cache.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if !map.contains_key(url)
                && map.len() >= MAX_CACHED_URLS
                && let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, e)| e.used)
                    .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
            let entry = map
                .entry(url.to_string())
                .or_insert_with(|| Entry::new(now));
            entry.used = now;
            if let Some(answer) = decide(entry, now) {
                return answer;
            }
            entry.flight.clone()
        };
        let _turn = flight.lock().await;
        // Someone else may have fetched while we waited.
        {
            let map = cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = map.get(url)
                && let Some(answer) = decide(entry, Instant::now())
            {
                return answer;
            }
        }
        let outcome = fetch().await;
        let mut map = cache.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let entry = map
            .entry(url.to_string())
            .or_insert_with(|| Entry::new(now));
        match outcome {
            Ok(doc) => {
                let doc = Arc::new(doc);
                entry.good = Some((doc.clone(), now));
                entry.failed = None;
                Ok(doc)
            }
            Err(why) => {
                tracing::warn!(url, error = %why, "key fetch failed");
                entry.failed = Some((why.clone(), now));
                match &entry.good {
                    Some((doc, at)) if now.duration_since(*at) < STALE_LIMIT => Ok(doc.clone()),
                    _ => Err(why),
                }
            }
        }
    }

    async fn download(&self, url: &str, max: usize) -> Result<bytes::Bytes, String> {
        let uri: http::Uri = url.parse().map_err(|_| "not a valid URL".to_string())?;
        self.sender
            .fetch(uri, self.options.timeout, max)
            .await
            .map_err(|e| match e {
                FetchError::TooLarge(n) => format!("answer larger than {n} bytes"),
                other => other.to_string(),
            })
    }

    async fn jwks(
        &self,
        url: &str,
        kid: Option<&str>,
        alg: crate::crd::JwtAlgorithm,
    ) -> Result<Arc<JwkSet>, Rejection> {
        self.get(
            &self.jwks,
            url,
            |set: &JwkSet| set.has(kid, alg),
            JWKS_TTL,
            async || {
                let bytes = self.download(url, MAX_JWKS_BYTES).await?;
                JwkSet::parse(&bytes).map_err(|e| format!("not a usable JWKS: {e}"))
            },
        )
        .await
        .map_err(|reason| Rejection::JwksUnavailable { reason })
    }

    async fn certificate(&self, url: &str) -> Result<Arc<Certificate>, Rejection> {
        self.get(
            &self.certs,
            url,
            |_: &Certificate| true,
            CERT_TTL,
            async || {
                let bytes = self.download(url, MAX_CERT_BYTES).await?;
                der::parse_certificate(&bytes).map_err(|e| format!("not a usable certificate: {e}"))
            },
        )
        .await
        .map_err(|reason| Rejection::CertificateUnavailable { reason })
    }

    /// Confirms an SNS subscription by fetching its SubscribeURL; the Event says how it
    /// went.
    pub async fn confirm_subscription(
        &self,
        integration: &str,
        message: &sns::Message,
    ) -> Result<(), String> {
        let topic = message
            .field("TopicArn")
            .unwrap_or("(unknown topic)")
            .to_string();
        let outcome = match message.subscribe_url() {
            None => Err("the SubscriptionConfirmation has no SubscribeURL".to_string()),
            Some(url) => match sns::url_allowed(url, self.options.insecure_urls) {
                Err(why) => Err(format!("SubscribeURL refused: {why}")),
                Ok(()) => self.download(url, MAX_CERT_BYTES).await.map(|_| ()),
            },
        };
        match &outcome {
            Ok(()) => self.notice(
                integration,
                false,
                "SnsSubscriptionConfirmed",
                format!("confirmed the SNS subscription to {topic}"),
            ),
            Err(why) => self.notice(
                integration,
                true,
                "SnsSubscriptionConfirmFailed",
                format!(
                    "could not confirm the SNS subscription to {topic}: {why}; SNS resends the confirmation (or confirm it in the SNS console)"
                ),
            ),
        }
        outcome
    }

    /// An SNS message that needs a person: unsubscribed, or a confirmation left to them.
    pub fn sns_notice(&self, integration: &str, message: &sns::Message, auto_confirm: bool) {
        let topic = message.field("TopicArn").unwrap_or("(unknown topic)");
        match message.kind {
            sns::MessageType::UnsubscribeConfirmation => self.notice(
                integration,
                true,
                "SnsUnsubscribed",
                format!("the SNS subscription to {topic} was removed; no more messages will arrive"),
            ),
            sns::MessageType::SubscriptionConfirmation if !auto_confirm => self.notice(
                integration,
                false,
                "SnsSubscriptionPending",
                format!(
                    "SNS asks to confirm the subscription to {topic} (spec.sns.autoConfirm is false): confirm it in the SNS console or open the delivery's SubscribeURL"
                ),
            ),
            _ => {}
        }
    }
}

/// Verifies a delivery of a scheme whose keys are published (OIDC, SNS): fetches what
/// the delivery needs, then calls the domain. Without `remote` (no fetcher configured)
/// only inline keys are used.
pub async fn verify(
    remote: Option<&RemoteKeys>,
    scheme: &Scheme,
    secrets: &[&str],
    delivery: &Delivery<'_>,
    now: i64,
) -> Verdict {
    match verify_inner(remote, scheme, secrets, delivery, now).await {
        Ok(v) => v,
        Err(r) => Verdict::Invalid(r),
    }
}

async fn verify_inner(
    remote: Option<&RemoteKeys>,
    scheme: &Scheme,
    secrets: &[&str],
    delivery: &Delivery<'_>,
    now: i64,
) -> Result<Verdict, Rejection> {
    let insecure = remote.is_some_and(|r| r.options.insecure_urls);
    if let Some(policy) = &scheme.oidc {
        // Cheap refusals first: nothing is fetched for a token that cannot pass anyway.
        let token = oidc::bearer(delivery)?;
        let alg = oidc::allowed_algorithm(policy, &token)?;
        let inline = match remote {
            Some(r) => r.inline_sets(secrets)?,
            None => Arc::new(oidc::inline_sets(secrets)?),
        };
        let mut sets: Vec<&JwkSet> = inline.iter().collect();
        let fetched;
        if !sets.iter().any(|s| s.has(token.kid.as_deref(), alg))
            && let Some(url) = &policy.jwks_url
        {
            policy
                .jwks_url_allowed(url, insecure)
                .map_err(|reason| Rejection::KeyUrlNotAllowed { reason })?;
            let remote = remote.ok_or(Rejection::JwksUnavailable {
                reason: "this process fetches no keys".to_string(),
            })?;
            fetched = remote.jwks(url, token.kid.as_deref(), alg).await?;
            sets.push(&fetched);
        }
        let external = External {
            jwks: Some(&sets),
            certificate: None,
        };
        return Ok(signature::verify_with(
            scheme, secrets, delivery, now, external,
        ));
    }
    if scheme.sns.is_some() {
        let message = sns::parse(delivery.body)?;
        let url = message
            .signing_cert_url()
            .ok_or_else(|| Rejection::MissingSignature {
                header: "SigningCertURL".to_string(),
            })?;
        sns::url_allowed(url, insecure).map_err(|reason| Rejection::KeyUrlNotAllowed { reason })?;
        let remote = remote.ok_or(Rejection::CertificateUnavailable {
            reason: "this process fetches no certificates".to_string(),
        })?;
        let cert = remote.certificate(url).await?;
        let external = External {
            jwks: None,
            certificate: Some(&cert),
        };
        return Ok(signature::verify_with(
            scheme, secrets, delivery, now, external,
        ));
    }
    Ok(signature::verify(scheme, secrets, delivery, now))
}
