//! One attempt of one forward over a pooled HTTP/1.1 client: POST, bounded in time and in
//! what it reads back, redirects never followed, every connection through the SSRF guard.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::{ConfigBuilderExt as _, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use super::connect::{ConnectError, GuardedConnector};
use super::egress::{EgressPolicy, Refusal};
use crate::domain::forward::{Attempt, Classification, TransportFailure, classify};

/// Most of an answer's body that is read. Reading a small body to its end lets the
/// connection go back to the pool; anything longer is dropped with its connection, so a
/// 50 MB or endless answer costs 4 KiB and no time.
pub const MAX_RESPONSE_BYTES: usize = 4096;
/// Default bound on resolving and connecting (the attempt's total timeout still applies:
/// the effective bound is the smaller one).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the sender is built.
#[derive(Clone, Debug)]
pub struct SenderOptions {
    pub connect_timeout: Duration,
    /// Idle pooled connections are closed after this.
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per host.
    pub pool_max_idle_per_host: usize,
}

impl Default for SenderOptions {
    fn default() -> Self {
        SenderOptions {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pool_idle_timeout: Duration::from_secs(90),
            // As many as the receiver lets attempts run to one target at once (32): with
            // fewer, every burst to a busy target closed the connections beyond this and
            // opened new ones (a connect, an accept and a close per forward; ~5% of the
            // receiver's CPU in the forward benchmark).
            pool_max_idle_per_host: 32,
        }
    }
}

/// Which certificate authorities the sender trusts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustRoots {
    /// The system store (`/etc/ssl/certs`, or `SSL_CERT_FILE` / `SSL_CERT_DIR`).
    System,
    /// Mozilla's roots compiled in: only when the system store is empty or unreadable.
    Mozilla,
    /// A TLS configuration the caller built (tests, private CAs).
    Custom,
}

/// Why the sender could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// One request of one attempt.
#[derive(Clone)]
pub struct Request {
    /// `http` or `https`; may carry a credential in its path (Slack webhook URLs), so it
    /// is never logged or shown in `Debug`.
    pub url: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("scheme", &self.url.scheme_str())
            .field("host", &self.url.host())
            .field(
                "headers",
                &self.headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            )
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptResult {
    pub attempt: Attempt,
    pub classification: Classification,
    /// The answer's `Retry-After`, parsed (and capped) by the domain.
    pub retry_after: Option<Duration>,
    /// The SSRF refusal, when the policy refused the target.
    pub refusal: Option<Refusal>,
    /// Human text for `lastFailure` (`HTTP 503 (server_error)`, the refusal, the TLS
    /// error). Never the URL, never text from the answer's body.
    pub detail: String,
    pub elapsed: Duration,
}

/// The outbound HTTP client: build once, share (it is cheap to clone).
#[derive(Clone)]
pub struct Sender {
    client: Client<HttpsConnector<GuardedConnector>, Full<Bytes>>,
    roots: TrustRoots,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// A sender trusting the system's certificate store.
    ///
    /// Why the system store (hyper-rustls `native-tokio`) rather than only the compiled-in
    /// Mozilla roots (`webpki-tokio`): forwards go to in-cluster services and partners
    /// whose certificates often come from a company CA that the platform team installs
    /// into the image or mounts (`SSL_CERT_FILE`); the distroless base image ships the
    /// usual public roots in the same store. The feature costs nothing to build here:
    /// kube-client already enables it on the same hyper-rustls, so no crate is added or
    /// rebuilt. When the store is empty or unreadable (a scratch image), Mozilla's roots
    /// are used and [`Sender::roots`] says so.
    pub fn new(policy: EgressPolicy, options: SenderOptions) -> Result<Sender, SenderError> {
        let builder = || {
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
        };
        let (config, roots) = match builder()?.with_native_roots() {
            Ok(b) => (b.with_no_client_auth(), TrustRoots::System),
            Err(e) => {
                tracing::warn!(error = %e, "no usable system CA certificates; forwarding trusts Mozilla's roots");
                (
                    builder()?.with_webpki_roots().with_no_client_auth(),
                    TrustRoots::Mozilla,
                )
            }
        };
        Ok(Sender::build(policy, options, config, roots))
    }

    /// A sender with the caller's TLS configuration (a private CA, tests).
    pub fn with_tls_config(
        policy: EgressPolicy,
        options: SenderOptions,
        tls: rustls::ClientConfig,
    ) -> Sender {
        Sender::build(policy, options, tls, TrustRoots::Custom)
    }

    fn build(
        policy: EgressPolicy,
        options: SenderOptions,
        tls: rustls::ClientConfig,
        roots: TrustRoots,
    ) -> Sender {
        let tcp = GuardedConnector::new(Arc::new(policy), options.connect_timeout);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(options.pool_idle_timeout)
            .pool_max_idle_per_host(options.pool_max_idle_per_host)
            .build(https);
        Sender { client, roots }
    }

    pub fn roots(&self) -> TrustRoots {
        self.roots
    }

    /// Makes one attempt: POST `request` and wait at most `timeout` for all of it
    /// (connection, request, the answer's head, and up to [`MAX_RESPONSE_BYTES`] of its
    /// body). Never follows a redirect; never fails: every way it can go is an
    /// [`AttemptResult`].
    pub async fn send(&self, request: Request, timeout: Duration) -> AttemptResult {
        let started = Instant::now();
        let deadline = started + timeout;
        if !matches!(request.url.scheme_str(), Some("http" | "https")) {
            // The resolver only lets http(s) URLs through; this keeps any other scheme
            // from reaching the TLS layer, whose error would read like a TLS problem.
            let attempt = Attempt::Failed(TransportFailure::Connect);
            return AttemptResult {
                attempt,
                classification: classify(attempt),
                retry_after: None,
                refusal: None,
                detail: "the target URL is not http or https".to_string(),
                elapsed: started.elapsed(),
            };
        }
        let mut req = http::Request::new(Full::new(request.body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = request.url;
        *req.headers_mut() = request.headers;

        let (attempt, retry_after, refusal, detail) =
            match tokio::time::timeout_at(deadline, self.client.request(req)).await {
                Err(_) => (
                    Attempt::Failed(TransportFailure::Timeout),
                    None,
                    None,
                    format!("no answer within {}", seconds(timeout)),
                ),
                Ok(Err(e)) => {
                    let (failure, refusal, detail) = transport_failure(&e);
                    (Attempt::Failed(failure), None, refusal, detail)
                }
                Ok(Ok(response)) => {
                    let status = response.status();
                    let now_ms = jiff::Timestamp::now().as_millisecond();
                    let retry_after = response
                        .headers()
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| crate::domain::forward::parse_retry_after(v, now_ms));
                    drain(response.into_body(), deadline).await;
                    let code = status.as_u16();
                    let c = classify(Attempt::Status(code));
                    (
                        Attempt::Status(code),
                        retry_after,
                        None,
                        format!("HTTP {code} ({})", c.reason),
                    )
                }
            };
        AttemptResult {
            attempt,
            classification: classify(attempt),
            retry_after,
            refusal,
            detail,
            elapsed: started.elapsed(),
        }
    }
}

/// Why [`Sender::fetch`] got no document.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("no complete answer within {0}")]
    Timeout(String),
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("{0}")]
    Transport(String),
}

impl Sender {
    /// GETs a small document (a JWKS, a certificate, an SNS SubscribeURL): the same
    /// pool and SSRF guard as forwards, redirects not followed, at most `max_bytes` read
    /// (a larger answer is dropped with its connection: bounded memory whatever the
    /// server sends) and all of it within `timeout`.
    pub async fn fetch(
        &self,
        url: Uri,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Bytes, FetchError> {
        let deadline = Instant::now() + timeout;
        if !matches!(url.scheme_str(), Some("http" | "https")) {
            return Err(FetchError::Transport("not an http(s) URL".to_string()));
        }
        let mut req = http::Request::new(Full::new(Bytes::new()));
        *req.method_mut() = Method::GET;
        *req.uri_mut() = url;
        let response = match tokio::time::timeout_at(deadline, self.client.request(req)).await {
            Err(_) => return Err(FetchError::Timeout(seconds(timeout))),
            Ok(Err(e)) => return Err(FetchError::Transport(transport_failure(&e).2)),
            Ok(Ok(r)) => r,
        };
        if response.status() != http::StatusCode::OK {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        if response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > max_bytes as u64)
        {
            return Err(FetchError::TooLarge(max_bytes));
        }
        let mut body = response.into_body();
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => return Err(FetchError::Timeout(seconds(timeout))),
                Ok(None) => return Ok(Bytes::from(out)),
                Ok(Some(Err(e))) => {
                    return Err(FetchError::Transport(format!("answer broken: {e}")));
                }
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        if out.len() + data.len() > max_bytes {
                            return Err(FetchError::TooLarge(max_bytes));
                        }
                        out.extend_from_slice(data);
                    }
                }
            }
        }
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Reads at most [`MAX_RESPONSE_BYTES`] of the answer, until `deadline`, and drops the
/// rest. The status already decided the attempt; this is only so a short answer leaves
/// its connection reusable.
async fn drain(mut body: hyper::body::Incoming, deadline: Instant) {
    let mut read = 0usize;
    while read < MAX_RESPONSE_BYTES {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    read += data.len();
                }
            }
            // End of body, a broken body, or out of time: either way, done.
            Ok(None) | Ok(Some(Err(_))) | Err(_) => return,
        }
    }
}

/// What a client error means, with the `lastFailure` text. hyper-util and hyper-rustls
/// wrap errors in `io::Error`s (twice, for a TLS failure), and `io::Error::source` skips
/// the error it wraps, so the walk steps into `io::Error::get_ref` instead.
fn transport_failure(
    e: &hyper_util::client::legacy::Error,
) -> (TransportFailure, Option<Refusal>, String) {
    let mut current: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(c) = err.downcast_ref::<ConnectError>() {
            return match c {
                ConnectError::Refused(r) => (
                    TransportFailure::RefusedByPolicy,
                    Some(r.clone()),
                    r.to_string(),
                ),
                other => (TransportFailure::Connect, None, other.to_string()),
            };
        }
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return (TransportFailure::Tls, None, format!("TLS error: {tls}"));
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && (h.is_parse() || h.is_parse_status() || h.is_parse_too_large())
        {
            return (
                TransportFailure::Protocol,
                None,
                format!("not an HTTP/1.1 answer: {h}"),
            );
        }
        current = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    if e.is_connect() {
        // The connector's own errors were matched above: what is left came from the
        // TLS layer (e.g. a host name that is not a valid TLS server name).
        return (
            TransportFailure::Tls,
            None,
            format!("TLS error: {}", chain(e)),
        );
    }
    (
        TransportFailure::Reset,
        None,
        format!("connection broken: {}", chain(e)),
    )
}

/// The error and its sources, `: `-separated (hyper's top-level messages alone say
/// little: "client error (SendRequest)").
fn chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
