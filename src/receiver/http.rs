//! The receiver's HTTP pipeline: the checks of DESIGN.md's HTTP table, cheapest first,
//! as typed stages; the first that fails answers with its [`Refusal`].
//!
//! route lookup (404) → [`admit`]: method (405), suspended (503), content type (415),
//! source range (403) → [`read_body`] (413/408) → [`authenticate`]: signature, token,
//! timestamp window (401), the only way to an `Authentic` delivery → rate (429: only
//! authentic deliveries spend the integration's budget, so unsigned floods cannot starve
//! its real sender) →
//! [`parse`]: JSON/form, schema (400) → [`classify`]: handshake, event filter (ignored),
//! incident mapping (400) → dedup (duplicate) → [`DeliverySink::accept`] (journaled,
//! fsync'd) → 202. A sink that cannot make the delivery durable turns into 503 +
//! `Retry-After`, never a 2xx. Every refusal's status, reason and headers are decided by
//! [`Refusal`] alone.
//!
//! Forwarding (DESIGN.md "Forwarding") is to branch off at the journal: the forwards of
//! a delivery are to be journaled with it, in the same commit, before the answer.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http::request::Parts;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use ipnet::IpNet;
use serde_json::Value;
use tracing::Instrument as _;

use super::Clock;
use super::dedup::{Check, Dedup};
use super::evaluator::{EvalRefusal, Evaluator};
use super::forward::ForwardedBody;
use super::limits;
use super::metrics::ReceiverMetrics;
use super::routes::{CompiledRoute, RouteTable};
use super::server::{ServerOptions, peer_addr};
use super::sink::{Accepted, DeliverySink, Duplicate, Rejected, SinkError};
use crate::crd::ProviderKind;
use crate::domain::incident::cost::Interrupt;
use crate::domain::incident::mapping::{Extracted, MappingError};
use crate::domain::json::{Scalar, TopLevel};
use crate::domain::signature::{self, Delivery, Verdict};
use crate::domain::spec::EffectiveSpec;

/// Settings of the pipeline that do not come from routes.
#[derive(Clone)]
pub struct PipelineConfig {
    /// Base URL senders call (e.g. `https://hooks.example.com`), used to rebuild the URL
    /// Twilio signed. Without it the URL is `http://{Host}{path}?{query}`.
    pub external_base_url: Option<String>,
    /// Peers whose `X-Forwarded-For` is believed (ingress controllers, load balancers).
    /// Empty: the TCP peer is the source, whatever the header says.
    pub trusted_proxies: Vec<IpNet>,
    /// Longest wait for a complete request head (see [`ServerOptions`]).
    pub header_read_timeout: Duration,
    /// Longest time to receive the whole body once the head arrived; then 408.
    pub body_timeout: Duration,
    /// `Retry-After` seconds on 503 (suspended, overloaded, journal unavailable).
    pub retry_after_seconds: u64,
    /// Unix milliseconds; injected so tests can pin timestamp windows and expiries.
    pub clock: Clock,
    /// Request-body bytes held at once, across integrations (`--max-body-bytes-in-flight`).
    pub body_budget: Arc<limits::BodyBudget>,
    /// Connections served at once (`--max-connections`).
    pub max_connections: usize,
    /// On shutdown, readiness is off this long before the server stops accepting.
    pub drain_delay: Duration,
    /// Fetches and caches published keys (OIDC JWKS, SNS certificates). `None`: only
    /// keys inline in the Secret are used.
    pub remote_keys: Option<Arc<super::keys::RemoteKeys>>,
    /// Where CEL incident mappings run: bounded threads off the async workers, a
    /// wall-clock budget per delivery.
    pub evaluator: Arc<Evaluator>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            external_base_url: None,
            trusted_proxies: Vec::new(),
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            retry_after_seconds: 5,
            clock: super::system_clock(),
            body_budget: Arc::new(limits::BodyBudget::default()),
            max_connections: super::server::DEFAULT_MAX_CONNECTIONS,
            drain_delay: Duration::ZERO,
            remote_keys: None,
            evaluator: Arc::new(Evaluator::default()),
        }
    }
}

impl PipelineConfig {
    /// Connection settings for [`super::server::serve_with`].
    pub fn server_options(&self) -> ServerOptions {
        ServerOptions {
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
            ..ServerOptions::default()
        }
    }
}

impl std::fmt::Debug for PipelineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineConfig")
            .field("external_base_url", &self.external_base_url)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("retry_after_seconds", &self.retry_after_seconds)
            .finish_non_exhaustive()
    }
}

/// Everything the handler shares across requests.
pub struct ReceiverState<S> {
    pub config: PipelineConfig,
    pub routes: Arc<RouteTable>,
    pub dedup: Dedup,
    pub sink: Arc<S>,
    pub metrics: ReceiverMetrics,
    ready: AtomicBool,
}

impl<S: DeliverySink> ReceiverState<S> {
    pub fn new(
        config: PipelineConfig,
        routes: Arc<RouteTable>,
        dedup: Dedup,
        sink: Arc<S>,
        metrics: ReceiverMetrics,
    ) -> Self {
        ReceiverState {
            config,
            routes,
            dedup,
            sink,
            metrics,
            ready: AtomicBool::new(false),
        }
    }

    /// `/readyz` answers 200 only after this is set (routes synced); until then a path
    /// without a route is answered 503 + Retry-After, not 404.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// The receiver's HTTP service: `/hooks/…` (every other path is an unknown route: 404),
/// `/healthz`, `/readyz`. Metrics are separate: [`super::metrics::metrics_router`].
pub fn app<S: DeliverySink>(state: Arc<ReceiverState<S>>) -> Receiver<S> {
    Receiver {
        probes: Router::new()
            .route("/healthz", get(healthz::<S>))
            .route("/readyz", get(readyz::<S>))
            .with_state(state.clone()),
        state,
    }
}

/// [`app`]: every path but the two probes' is a delivery, handed to the pipeline
/// directly; the probes go through an axum [`Router`]. Routing every delivery through
/// the router (a path match that always fell through to its fallback, the URL-parameter
/// and state plumbing, three layers of wrapped futures) was ~4 % of a delivery's CPU
/// (issue #21).
pub struct Receiver<S> {
    state: Arc<ReceiverState<S>>,
    probes: Router,
}

impl<S> Clone for Receiver<S> {
    fn clone(&self) -> Self {
        Receiver {
            state: self.state.clone(),
            probes: self.probes.clone(),
        }
    }
}

impl<S, B> tower::Service<http::Request<B>> for Receiver<S>
where
    S: DeliverySink,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Response, std::convert::Infallible>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> Poll<Result<(), std::convert::Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use tower::ServiceExt as _;
        let request = request.map(Body::new);
        match request.uri().path() {
            "/healthz" | "/readyz" => Box::pin(self.probes.clone().oneshot(request)),
            _ => {
                let state = self.state.clone();
                Box::pin(async move { Ok(deliver(state, request).await) })
            }
        }
    }
}

/// Live unless the sink is broken beyond what a retry fixes (a failed journal fsync):
/// then the liveness probe fails and the container restarts, which reopens and validates
/// the journal and replays it.
async fn healthz<S: DeliverySink>(State(state): State<Arc<ReceiverState<S>>>) -> Response {
    match state.sink.health() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

/// Ready once routes are synced, and while the sink can keep what it acknowledges (so a
/// receiver with a failed journal leaves the Service before its restart).
async fn readyz<S: DeliverySink>(State(state): State<Arc<ReceiverState<S>>>) -> Response {
    if let Err(why) = state.sink.health() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response()
    } else if state.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "routes not synced yet\n").into_response()
    }
}

/// A JSON answer `{"status": …, "reason": …}` from static parts (no serialisation on the
/// hot path, nothing from the request echoed).
fn answer(status: StatusCode, outcome: &'static str, reason: Option<&'static str>) -> Response {
    // The answers of accepted deliveries are static: no allocation per delivery.
    let body = match (outcome, reason) {
        ("accepted", None) => Body::from("{\"status\":\"accepted\"}\n"),
        ("ignored", None) => Body::from("{\"status\":\"ignored\"}\n"),
        ("duplicate", None) => Body::from("{\"status\":\"duplicate\"}\n"),
        (_, Some(r)) => Body::from(format!("{{\"status\":\"{outcome}\",\"reason\":\"{r}\"}}\n")),
        (_, None) => Body::from(format!("{{\"status\":\"{outcome}\"}}\n")),
    };
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Every way the receiver refuses a request. Status code, reason string (the
/// `lastRejectReason` and the `reason` metric label), `Retry-After`, `Allow` and
/// `Connection: close` are decided here and nowhere else: the README's "HTTP answers"
/// table reads off [`Refusal::status`] and [`Refusal::reason`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A path without a route before the first full list of routes arrived: 503, since
    /// the receiver cannot tell unknown from not loaded yet, and a 404 would make many
    /// senders give up on a valid endpoint for good (Alertmanager and Grafana do not
    /// retry 4xx).
    RoutesNotSynced,
    /// Unknown path: the same 404 for every one, so nothing tells a prober how close it got.
    NotFound,
    MethodNotAllowed,
    Suspended,
    UnsupportedMediaType,
    SourceNotAllowed,
    RateLimited {
        retry_after_seconds: u64,
    },
    BodyTooLarge,
    BodyIncomplete,
    BodyTimeout,
    /// Missing or invalid signature or token, or a timestamp outside the window; the
    /// reason is the verifier's code (`signature_mismatch`, `timestamp_stale`, …).
    Unauthenticated(&'static str),
    MalformedPayload,
    SchemaMismatch,
    MappingFailed,
    /// The same delivery id is being journaled by a request still in flight.
    RetryInFlight,
    /// The queue of accepted deliveries waiting for the status writer is full.
    Overloaded,
    /// The journal cannot keep the delivery (cap reached, disk full, failed fsync).
    JournalUnavailable,
    /// The receiver's budget of body bytes in flight, or this integration's fair share
    /// of it, is spent: shed before reading anything.
    OverBudget,
    /// More query/form parameters than any sender uses (Twilio): refused before any MAC.
    TooManyParameters,
    /// An authentic SNS SubscriptionConfirmation whose SubscribeURL could not be fetched
    /// (our side: SNS is asked to retry; an Event says why).
    SubscriptionNotConfirmed,
    /// The integration's CEL mapping ran past its run-time budget on this payload and
    /// was stopped. 422: the delivery is authentic and well-formed, and sending it again
    /// would cost the same; the spec (or the sender's payload) has to change.
    MappingBudgetExceeded,
    /// Every CEL evaluation slot stayed busy for the whole budget: a transient overload.
    MappingBusy,
}

impl Refusal {
    /// Every refusal, for the table test (payload-carrying variants with a sample).
    pub const ALL: [Refusal; 22] = [
        Refusal::RoutesNotSynced,
        Refusal::NotFound,
        Refusal::MethodNotAllowed,
        Refusal::Suspended,
        Refusal::UnsupportedMediaType,
        Refusal::SourceNotAllowed,
        Refusal::RateLimited {
            retry_after_seconds: 1,
        },
        Refusal::BodyTooLarge,
        Refusal::BodyIncomplete,
        Refusal::BodyTimeout,
        Refusal::Unauthenticated("signature_mismatch"),
        Refusal::MalformedPayload,
        Refusal::SchemaMismatch,
        Refusal::MappingFailed,
        Refusal::RetryInFlight,
        Refusal::Overloaded,
        Refusal::JournalUnavailable,
        Refusal::OverBudget,
        Refusal::TooManyParameters,
        Refusal::SubscriptionNotConfirmed,
        Refusal::MappingBudgetExceeded,
        Refusal::MappingBusy,
    ];

    pub fn status(self) -> StatusCode {
        match self {
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::SourceNotAllowed => StatusCode::FORBIDDEN,
            Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::MappingBudgetExceeded => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refusal::BodyIncomplete
            | Refusal::MalformedPayload
            | Refusal::SchemaMismatch
            | Refusal::MappingFailed
            | Refusal::TooManyParameters => StatusCode::BAD_REQUEST,
            Refusal::RoutesNotSynced
            | Refusal::Suspended
            | Refusal::RetryInFlight
            | Refusal::Overloaded
            | Refusal::JournalUnavailable
            | Refusal::OverBudget
            | Refusal::SubscriptionNotConfirmed
            | Refusal::MappingBusy => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Stable snake_case reason: the answer's `reason`, `lastRejectReason`, and the
    /// `reason` label of `hookwarden_rejected_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::RoutesNotSynced => "routes_not_synced",
            Refusal::NotFound => "not_found",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::Suspended => "suspended",
            Refusal::UnsupportedMediaType => "unsupported_media_type",
            Refusal::SourceNotAllowed => "source_not_allowed",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::BodyIncomplete => "body_incomplete",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::Unauthenticated(code) => code,
            Refusal::MalformedPayload => "malformed_payload",
            Refusal::SchemaMismatch => "schema_mismatch",
            Refusal::MappingFailed => "mapping_failed",
            Refusal::RetryInFlight => "retry_in_flight",
            Refusal::Overloaded => "overloaded",
            Refusal::JournalUnavailable => "journal_unavailable",
            Refusal::OverBudget => "over_budget",
            Refusal::TooManyParameters => "too_many_parameters",
            Refusal::SubscriptionNotConfirmed => "subscription_not_confirmed",
            Refusal::MappingBudgetExceeded => "mapping_budget_exceeded",
            Refusal::MappingBusy => "mapping_busy",
        }
    }

    /// Authentication failures feed `Degraded`.
    pub fn is_auth_failure(self) -> bool {
        matches!(self, Refusal::Unauthenticated(_))
    }

    /// `Retry-After` seconds; `default` is the configured answer for 503s.
    pub fn retry_after(self, default: u64) -> Option<u64> {
        match self {
            Refusal::RoutesNotSynced => Some(1),
            Refusal::RateLimited {
                retry_after_seconds,
            } => Some(retry_after_seconds),
            Refusal::Suspended
            | Refusal::RetryInFlight
            | Refusal::Overloaded
            | Refusal::JournalUnavailable
            | Refusal::OverBudget
            | Refusal::SubscriptionNotConfirmed
            | Refusal::MappingBusy => Some(default),
            _ => None,
        }
    }

    /// The rest of the body is unread: the connection cannot carry another request.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            Refusal::BodyTooLarge
                | Refusal::BodyIncomplete
                | Refusal::BodyTimeout
                | Refusal::OverBudget
        )
    }

    /// The answer, with every header the refusal calls for.
    pub fn response(self, retry_after_default: u64) -> Response {
        let mut response = answer(self.status(), "rejected", Some(self.reason()));
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after(retry_after_default) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        if self.closes_connection() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self == Refusal::MethodNotAllowed {
            headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        response
    }
}

/// What an admitted delivery came to, when it was not refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Journaled: 202.
    Accepted,
    /// Journaled, but `spec.events` filters its type out: 202, counted as ignored.
    Ignored,
    /// Seen within the dedup window: 200, no second effect.
    Duplicate,
    /// A provider handshake (e.g. Slack `url_verification`) answered with its body.
    Handshake,
}

impl Outcome {
    /// The `outcome` metric label and span field.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Ignored => "ignored",
            Outcome::Duplicate => "duplicate",
            Outcome::Handshake => "handshake",
        }
    }

    fn response(self) -> Response {
        match self {
            Outcome::Accepted | Outcome::Ignored => {
                answer(StatusCode::ACCEPTED, self.label(), None)
            }
            Outcome::Duplicate => answer(StatusCode::OK, self.label(), None),
            // The handshake's own body is built where it is recognised.
            Outcome::Handshake => StatusCode::OK.into_response(),
        }
    }
}

async fn deliver<S: DeliverySink>(state: Arc<ReceiverState<S>>, request: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let Some(route) = state.routes.get(parts.uri.path()) else {
        let refusal = if state.is_ready() {
            Refusal::NotFound
        } else {
            Refusal::RoutesNotSynced
        };
        state.metrics.reject("none", refusal.reason());
        return refusal.response(state.config.retry_after_seconds);
    };
    let provider = route.spec.provider.as_str();
    let span = tracing::info_span!(
        "delivery",
        integration = %route.key,
        provider,
        delivery_id = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    // Only the per-delivery lines (debug) are logged once the outcome is known, so only
    // they need the span afterwards: recording the outcome into a span no line will
    // show re-formats its fields for nothing, and a second handle costs a clone and a
    // close in the subscriber's registry.
    let debug_span = tracing::enabled!(tracing::Level::DEBUG).then(|| span.clone());
    let response = match run(&state, &route, parts, body).instrument(span).await {
        Ok((outcome, response, authenticated_at_ms)) => {
            if let Some(span) = &debug_span {
                span.record("outcome", outcome.label());
                tracing::debug!(parent: span, status = response.status().as_u16(), "delivery answered");
            }
            state
                .metrics
                .outcome_of(route.spec.provider, outcome.label());
            // The clock reading authentication judged the delivery by (microseconds
            // before this; one clock read less per delivery), milliseconds → seconds:
            // Prometheus' base unit for a timestamp.
            let now_seconds = authenticated_at_ms as f64 / 1000.0;
            route.metrics.answered(outcome.label(), now_seconds);
            response
        }
        Err(refusal) => {
            if let Some(span) = &debug_span {
                span.record("outcome", refusal.reason());
                tracing::debug!(parent: span, status = refusal.status().as_u16(), "delivery refused");
            }
            state.metrics.outcome_of(route.spec.provider, "rejected");
            state.metrics.reject_reason(provider, refusal.reason());
            route.metrics.rejected(refusal.reason());
            state.sink.reject(Rejected {
                integration: route.key.clone(),
                uid: route.route.uid.clone(),
                reason: refusal.reason(),
                auth_failure: refusal.is_auth_failure(),
                at_ms: (state.config.clock)(),
            });
            refusal.response(state.config.retry_after_seconds)
        }
    };
    state
        .metrics
        .observe_latency(route.spec.provider, started.elapsed().as_secs_f64());
    response
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// What the body is, from its declared media type.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Form,
    /// XML and other opaque types a provider may send: authenticated, not parsed.
    Opaque,
}

fn body_kind(content_type: Option<&str>) -> BodyKind {
    let Some(ct) = content_type else {
        return BodyKind::Json;
    };
    let essence = crate::domain::signature::media_type(ct);
    if essence == "application/x-www-form-urlencoded" {
        BodyKind::Form
    } else if essence == "application/json"
        || essence == "text/json"
        || essence.ends_with("+json")
        || essence.is_empty()
    {
        BodyKind::Json
    } else {
        BodyKind::Opaque
    }
}

/// Whether `body` is one JSON value, judged as strictly as parsing it into a
/// [`Value`] would, without building one: UTF-8 throughout (skipping a string does not
/// check it), nothing but whitespace after the value. Two things the JSON grammar allows
/// pass here and fail there: an unpaired surrogate escape (`"\ud800"`, which a Rust
/// string cannot hold) and nesting deeper than 128 levels (skipping does not recurse).
fn is_json(body: &[u8]) -> bool {
    std::str::from_utf8(body).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// Most fields a form body may have once it is authentic: the bound Twilio's pre-auth
/// count already applies (no sender needs more), so an authentic body with tens of
/// thousands of `&` costs a count, not a map of that size.
pub const MAX_FORM_PARAMETERS: usize = 1_000;

/// A form body as a JSON object of its fields. GitHub's and Slack's form encodings put
/// the real JSON payload in a `payload` field: that payload is the body then. More than
/// [`MAX_FORM_PARAMETERS`] fields: [`Refusal::TooManyParameters`], counted (a scan, no
/// allocation) before anything is decoded.
fn parse_form(body: &[u8]) -> Result<Value, Refusal> {
    let count = body.split(|&b| b == b'&').filter(|p| !p.is_empty()).count();
    if count > MAX_FORM_PARAMETERS {
        return Err(Refusal::TooManyParameters);
    }
    let mut fields = serde_json::Map::new();
    for (k, v) in form_urlencoded::parse(body) {
        fields.insert(k.into_owned(), Value::String(v.into_owned()));
    }
    if let Some(Value::String(payload)) = fields.get("payload")
        && let Ok(inner @ Value::Object(_)) = serde_json::from_str::<Value>(payload)
    {
        return Ok(inner);
    }
    Ok(Value::Object(fields))
}

/// The URL Twilio signed: external base URL + path + query, else `http://{Host}…`.
fn twilio_url(config: &PipelineConfig, parts: &Parts) -> String {
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    match &config.external_base_url {
        Some(base) => format!("{}{path_and_query}", base.trim_end_matches('/')),
        None => match parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
        {
            Some(host) => format!("http://{host}{path_and_query}"),
            None => String::new(),
        },
    }
}

/// The checks that need no body, cheapest first: method (405), suspended (503), content
/// type (415), source range (403). The rate is checked after authentication: requests
/// that do not verify must not spend the budget of the sender that signs correctly.
fn admit(config: &PipelineConfig, route: &CompiledRoute, parts: &Parts) -> Result<(), Refusal> {
    if parts.method != Method::POST {
        return Err(Refusal::MethodNotAllowed);
    }
    if route.spec.suspend {
        return Err(Refusal::Suspended);
    }
    if !signature::accepts_content_type(route.spec.provider, content_type(&parts.headers)) {
        return Err(Refusal::UnsupportedMediaType);
    }
    if !source_allowed(config, route, parts) {
        return Err(Refusal::SourceNotAllowed);
    }
    Ok(())
}

/// The body, never buffered past `maxBodyBytes` (413) nor waited for past the body
/// timeout (408).
async fn read_body(
    config: &PipelineConfig,
    route: &CompiledRoute,
    parts: &Parts,
    body: Body,
) -> Result<(Bytes, limits::BodyPermit), Refusal> {
    let max = route.spec.limits.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(Refusal::BodyTooLarge);
    }
    // Reserved before a byte is read: the declared length (or the body's exact size when
    // it is already known), else (chunked) the most the route accepts. Held until the
    // request is answered.
    let known = declared.or_else(|| hyper::body::Body::size_hint(&body).exact());
    let permit = config
        .body_budget
        .reserve(&route.body_inflight, known.unwrap_or(max as u64))
        .ok_or(Refusal::OverBudget)?;
    // A small body usually came with the head: its one frame is taken as it is, without
    // arming the timer (registered in tokio's timer wheel, then removed) or collecting
    // into a list; anything else is collected under the timer.
    let mut limited = Limited::new(body, max);
    let first = std::future::poll_fn(|cx| {
        Poll::Ready(hyper::body::Body::poll_frame(
            std::pin::Pin::new(&mut limited),
            cx,
        ))
    })
    .await;
    let first = match first {
        Poll::Ready(None) => return Ok((Bytes::new(), permit)),
        Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
            Ok(data) if hyper::body::Body::is_end_stream(&limited) => return Ok((data, permit)),
            Ok(data) => data,
            // Trailers: nothing of the body (collecting ignores them too).
            Err(_) => Bytes::new(),
        },
        Poll::Ready(Some(Err(e))) => return Err(body_error(&e)),
        Poll::Pending => Bytes::new(),
    };
    match tokio::time::timeout(config.body_timeout, limited.collect()).await {
        Ok(Ok(rest)) if first.is_empty() => Ok((rest.to_bytes(), permit)),
        Ok(Ok(rest)) => {
            let rest = rest.to_bytes();
            let mut whole = Vec::with_capacity(first.len() + rest.len());
            whole.extend_from_slice(&first);
            whole.extend_from_slice(&rest);
            Ok((Bytes::from(whole), permit))
        }
        Ok(Err(e)) => Err(body_error(&e)),
        Err(_) => Err(Refusal::BodyTimeout),
    }
}

/// A body that failed to arrive: over `maxBodyBytes` (413), else cut short (400).
fn body_error(e: &axum::BoxError) -> Refusal {
    if e.downcast_ref::<LengthLimitError>().is_some() {
        Refusal::BodyTooLarge
    } else {
        Refusal::BodyIncomplete
    }
}

fn source_allowed(state_config: &PipelineConfig, route: &CompiledRoute, parts: &Parts) -> bool {
    let ranges = &route.spec.source_ranges;
    if ranges.is_empty() {
        return true;
    }
    let peer: Option<IpAddr> = peer_addr(&parts.extensions).map(|a| a.ip());
    match limits::client_ip(peer, &parts.headers, &state_config.trusted_proxies) {
        Some(ip) => limits::contains(ranges, ip),
        // No peer address known: fail closed.
        None => false,
    }
}

/// A delivery whose signature or token verified against one of the route's live
/// secrets. Its fields are private to this module and [`authenticate`] is the only
/// constructor: nothing can parse, map or journal a body that did not verify.
struct Authentic {
    parts: Parts,
    body: Bytes,
    /// The clock reading the verification judged the timestamp window at.
    now_ms: i64,
    /// Which of the route's live secrets verified it (Zoom's handshake answer is keyed
    /// with that secret).
    secret_index: usize,
}

/// Signature, token and timestamp window (401). Schemes with published keys (OIDC,
/// SNS) may wait for a bounded, cached fetch of them.
async fn authenticate(
    config: &PipelineConfig,
    route: &CompiledRoute,
    parts: Parts,
    body: Bytes,
) -> Result<Authentic, Refusal> {
    let now_ms = (config.clock)();
    let now_s = now_ms.div_euclid(1000);
    let secrets: Vec<&str> = route
        .route
        .live_secrets(now_s)
        .map(|s| s.expose())
        .collect();
    let url = match route.spec.provider {
        ProviderKind::Twilio => twilio_url(config, &parts),
        // Event Grid's key may be a query parameter of the URL it calls.
        ProviderKind::AzureEventGrid => parts.uri.to_string(),
        _ => String::new(),
    };
    let delivery = Delivery {
        method: parts.method.as_str(),
        url: &url,
        headers: &parts.headers,
        body: &body,
    };
    let scheme = &route.spec.scheme;
    let verdict = if signature::is_asymmetric(scheme) {
        // Boxed: the key fetch it may wait on is most of this future's size, and every
        // delivery's future (HMAC and token presets too) would otherwise be laid out, and
        // copied as it is wrapped, at that size. A public-key verification costs far
        // more than the allocation.
        Box::pin(super::keys::verify(
            config.remote_keys.as_deref(),
            scheme,
            &secrets,
            &delivery,
            now_s,
        ))
        .await
    } else {
        signature::verify(scheme, &secrets, &delivery, now_s)
    };
    match verdict {
        // Refused before any MAC: the request is malformed, not an authentication
        // failure (it does not feed Degraded).
        Verdict::Invalid(signature::Rejection::TooManyParameters { .. }) => {
            Err(Refusal::TooManyParameters)
        }
        Verdict::Invalid(rejection) => Err(Refusal::Unauthenticated(rejection.code())),
        Verdict::Valid(verified) => Ok(Authentic {
            parts,
            body,
            now_ms,
            secret_index: verified.secret_index,
        }),
    }
}

/// An authentic delivery, parsed as far as anything reads it and checked against the
/// schema (400).
struct Parsed {
    authentic: Authentic,
    /// The body as a tree, only when something reads one (a schema, a mapping, the
    /// provider's id or type fields); otherwise it was validated without building one,
    /// or it is read for its top-level fields only ([`Parsed::top_level`]).
    value: Option<Value>,
    /// A JSON body whose mapping and delivery id read only top-level fields
    /// ([`Mapping::top_level`]): it is read (and validated) with [`TopLevel`] in
    /// [`classify_now`], with no tree built.
    top_level: bool,
}

/// Whether this route's JSON deliveries are read only for their top-level fields: the
/// mapping reads only those, and so do the delivery id and type (the Datadog preset,
/// the one mapping that can), and no schema needs the tree.
fn reads_top_level(spec: &EffectiveSpec) -> bool {
    spec.provider == ProviderKind::Datadog
        && spec.schema.is_none()
        && spec
            .mapping
            .as_ref()
            .is_some_and(|m| m.top_level().is_some())
}

fn parse(route: &CompiledRoute, authentic: Authentic) -> Result<Parsed, Refusal> {
    let spec = &route.spec;
    let bytes = &authentic.body;
    // SNS posts its JSON as text/plain.
    let kind = if spec.provider == ProviderKind::AwsSns {
        BodyKind::Json
    } else {
        body_kind(content_type(&authentic.parts.headers))
    };
    if kind == BodyKind::Json && reads_top_level(spec) {
        return Ok(Parsed {
            authentic,
            value: None,
            top_level: true,
        });
    }
    let needs_value = spec.schema.is_some()
        || spec.mapping.is_some()
        || signature::meta_reads_body(spec.provider);
    let mut value = match kind {
        BodyKind::Json if needs_value => match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => Some(v),
            Err(_) => return Err(Refusal::MalformedPayload),
        },
        BodyKind::Json if is_json(bytes) => None,
        BodyKind::Json => return Err(Refusal::MalformedPayload),
        BodyKind::Form if needs_value => Some(parse_form(bytes)?),
        BodyKind::Form | BodyKind::Opaque => None,
    };
    if spec.provider == ProviderKind::AwsSns
        && let Some(v) = value.as_mut()
    {
        signature::sns::expand_message(v);
    }
    if let Some(schema) = &spec.schema
        && !value.as_ref().is_some_and(|v| schema.is_valid(v))
    {
        return Err(Refusal::SchemaMismatch);
    }
    Ok(Parsed {
        authentic,
        value,
        top_level: false,
    })
}

/// What a parsed delivery is: a handshake to answer, or a delivery to journal.
enum Classified {
    Handshake(Response),
    Delivery(Accepted),
}

/// Provider handshake, event filter (ignored), incident mapping (400; a CEL mapping
/// past its budget 422). A mapping with CEL runs on the [`Evaluator`], off the async
/// workers; preset mappings are linear in the body and run in place.
async fn classify(
    config: &PipelineConfig,
    route: &Arc<CompiledRoute>,
    parsed: Parsed,
) -> Result<Classified, Refusal> {
    if route.spec.mapping.as_ref().is_some_and(|m| m.uses_cel()) {
        let route = route.clone();
        // Boxed for the same reason as the key fetch in `authenticate`: only CEL
        // mappings wait here.
        return Box::pin(
            config
                .evaluator
                .run(move |interrupt| classify_now(&route, parsed, interrupt)),
        )
        .await
        .map_err(|refusal| match refusal {
            EvalRefusal::BudgetExceeded => Refusal::MappingBudgetExceeded,
            EvalRefusal::Busy => Refusal::MappingBusy,
        })?;
    }
    classify_now(route, parsed, &Interrupt::new())
}

fn classify_now(
    route: &CompiledRoute,
    parsed: Parsed,
    interrupt: &Interrupt,
) -> Result<Classified, Refusal> {
    let spec = &route.spec;
    let Parsed {
        authentic,
        value,
        top_level,
    } = parsed;
    if top_level {
        return classify_top_level(route, authentic);
    }
    // Only Zoom's answer needs the secret; the others are not handed one.
    let secret = (spec.provider == ProviderKind::Zoom)
        .then(|| {
            route
                .route
                .live_secrets(authentic.now_ms.div_euclid(1000))
                .nth(authentic.secret_index)
        })
        .flatten();
    if let Some(v) = &value
        && let Some((media_type, payload)) = signature::handshake(
            spec.provider,
            &authentic.parts.headers,
            v,
            secret.map(|s| s.expose()),
        )
    {
        return Ok(Classified::Handshake(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, media_type)],
                payload,
            )
                .into_response(),
        ));
    }
    let meta = signature::delivery_meta(&spec.scheme, &authentic.parts.headers, value.as_ref());
    let ignored = spec.events.ignores(meta.event_type.as_deref());
    // Bounded work before and after the 202 (mapping, incident book, status, Events,
    // forwards): at most maxAlertsPerDelivery events per delivery are mapped, the rest
    // counted on the status.
    let extracted = match (&spec.mapping, ignored) {
        (Some(mapping), false) => match &value {
            Some(v) => mapping
                .extract_bounded(
                    v,
                    meta.event_type.as_deref(),
                    authentic.now_ms,
                    spec.max_alerts_per_delivery,
                    interrupt,
                )
                .map_err(|e| match e {
                    MappingError::BudgetExceeded { .. } => Refusal::MappingBudgetExceeded,
                    _ => Refusal::MappingFailed,
                })?,
            None => return Err(Refusal::MappingFailed),
        },
        _ => Extracted::default(),
    };
    Ok(Classified::Delivery(delivery(
        route, authentic, meta, ignored, extracted,
    )))
}

/// [`classify_now`] of a body read only for its top-level fields ([`Parsed::top_level`]):
/// the same answers and the same delivery as from its tree (the body is validated here,
/// 400 when it is no JSON; the Datadog preset has no handshake).
fn classify_top_level(route: &CompiledRoute, authentic: Authentic) -> Result<Classified, Refusal> {
    let spec = &route.spec;
    let mapping = spec
        .mapping
        .as_ref()
        .and_then(|m| m.top_level())
        .ok_or(Refusal::MappingFailed)?;
    let body = TopLevel::parse(&authentic.body, mapping.fields())
        .map_err(|_| Refusal::MalformedPayload)?;
    let meta = signature::datadog_meta(|name| body.get(name).map(Scalar::borrowed));
    let ignored = spec.events.ignores(meta.event_type.as_deref());
    let extracted = if ignored {
        Extracted::default()
    } else {
        mapping
            .extract(&body, authentic.now_ms, spec.max_alerts_per_delivery)
            .map_err(|_| Refusal::MappingFailed)?
    };
    drop(body);
    Ok(Classified::Delivery(delivery(
        route, authentic, meta, ignored, extracted,
    )))
}

/// The delivery to journal, with its body when a target forwards every delivery.
fn delivery(
    route: &CompiledRoute,
    authentic: Authentic,
    meta: signature::DeliveryMeta,
    ignored: bool,
    extracted: Extracted,
) -> Accepted {
    let Extracted {
        events: incidents,
        dropped: alerts_dropped,
    } = extracted;
    let spec = &route.spec;
    // A target sent every delivery: the body is journaled with the delivery.
    let forward = (!ignored
        && spec
            .forward
            .iter()
            .any(|t| t.sends(crate::domain::forward::EventKind::Delivery)))
    .then(|| {
        let headers = &authentic.parts.headers;
        ForwardedBody {
            content_type: content_type(headers).map(str::to_string),
            meta_headers: crate::domain::forward::meta_header_names(&spec.scheme)
                .into_iter()
                .filter_map(|name| {
                    let value = headers.get(name)?.to_str().ok()?;
                    Some((name.to_string(), value.to_string()))
                })
                .collect(),
            body: authentic.body.to_vec(),
        }
    });
    Accepted {
        integration: route.key.clone(),
        uid: route.route.uid.clone(),
        delivery_id: meta.id,
        event_type: meta.event_type,
        received_at_ms: authentic.now_ms,
        ignored,
        incidents,
        alerts_dropped: u32::try_from(alerts_dropped).unwrap_or(u32::MAX),
        replay_key: None,
        forward,
    }
}

/// An authentic SNS SubscriptionConfirmation is answered by confirming it (fetching its
/// SubscribeURL) unless `spec.sns.autoConfirm` is false; then, like an
/// UnsubscribeConfirmation, it is a delivery with an Event for a person.
async fn sns_handshake(
    config: &PipelineConfig,
    route: &CompiledRoute,
    policy: &signature::sns::SnsPolicy,
    authentic: &Authentic,
) -> Result<Option<Response>, Refusal> {
    let Ok(message) = signature::sns::parse(&authentic.body) else {
        return Ok(None);
    };
    let Some(remote) = config.remote_keys.as_deref() else {
        return Ok(None);
    };
    if message.kind == signature::sns::MessageType::SubscriptionConfirmation && policy.auto_confirm
    {
        return match remote.confirm_subscription(&route.key, &message).await {
            Ok(()) => Ok(Some(answer(StatusCode::OK, "confirmed", None))),
            Err(_) => Err(Refusal::SubscriptionNotConfirmed),
        };
    }
    remote.sns_notice(&route.key, &message, policy.auto_confirm);
    Ok(None)
}

/// The stages of DESIGN.md's HTTP table, in order; each refuses with one [`Refusal`]. An
/// answer comes with the clock reading the delivery was authenticated at.
async fn run<S: DeliverySink>(
    state: &ReceiverState<S>,
    route: &Arc<CompiledRoute>,
    parts: Parts,
    body: Body,
) -> Result<(Outcome, Response, i64), Refusal> {
    let config = &state.config;
    admit(config, route, &parts)?;
    let (bytes, _body_permit) = read_body(config, route, &parts, body).await?;
    let authentic = authenticate(config, route, parts, bytes).await?;
    let now_ms = authentic.now_ms;
    route
        .rate
        .check()
        .map_err(|retry_after_seconds| Refusal::RateLimited {
            retry_after_seconds,
        })?;
    // For presets whose id header is unsigned, a digest of what is signed is a second
    // dedup key: a captured delivery re-sent with a fresh id is still a duplicate.
    let replay_key = signature::id_is_unsigned(route.spec.provider).then(|| {
        use sha2::Digest as _;
        format!(
            "signed:{}",
            hex::encode(&sha2::Sha256::digest(&authentic.body)[..16])
        )
    });
    if let Some(policy) = &route.spec.scheme.sns
        && let Some(answer) = Box::pin(sns_handshake(config, route, policy, &authentic)).await?
    {
        return Ok((Outcome::Handshake, answer, now_ms));
    }
    let parsed = parse(route, authentic)?;
    let mut accepted = match classify(config, route, parsed).await? {
        Classified::Handshake(response) => return Ok((Outcome::Handshake, response, now_ms)),
        Classified::Delivery(accepted) => accepted,
    };
    accepted.replay_key = replay_key;
    if let Some(id) = &accepted.delivery_id {
        tracing::Span::current().record("delivery_id", id.as_str());
    }
    let mut claims = Vec::new();
    if !route.spec.dedup_window.is_zero() {
        for key in accepted
            .delivery_id
            .iter()
            .chain(accepted.replay_key.iter())
        {
            match state
                .dedup
                .claim(&route.key, key, route.spec.dedup_window)
                .await
            {
                Check::Fresh(claim) => claims.push(claim),
                Check::Duplicate => {
                    state.metrics.dedup_hit(route.spec.provider.as_str());
                    state.sink.duplicate(Duplicate {
                        integration: route.key.clone(),
                        uid: route.route.uid.clone(),
                        at_ms: accepted.received_at_ms,
                    });
                    return Ok((Outcome::Duplicate, Outcome::Duplicate.response(), now_ms));
                }
                Check::RetryLater => return Err(Refusal::RetryInFlight),
            }
        }
    }
    let outcome = if accepted.ignored {
        Outcome::Ignored
    } else {
        Outcome::Accepted
    };
    match state.sink.accept(accepted).await {
        Ok(()) => {
            for claim in claims {
                claim.accepted();
            }
            Ok((outcome, outcome.response(), now_ms))
        }
        Err(e) => {
            // Dropping the claims forgets the keys, so the sender's retry is accepted.
            drop(claims);
            tracing::warn!(error = %e, "delivery not kept; answering 503");
            Err(match e {
                SinkError::Overloaded => Refusal::Overloaded,
                SinkError::Unavailable(_) => Refusal::JournalUnavailable,
            })
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_become_objects_and_payload_fields_unwrap() {
        let plain = parse_form(b"CallSid=CA1&From=%2B1555&Body=hi+there").expect("form");
        assert_eq!(plain["From"], "+1555");
        assert_eq!(plain["Body"], "hi there");
        let wrapped = parse_form(b"payload=%7B%22type%22%3A%22block_actions%22%7D").expect("form");
        assert_eq!(wrapped, serde_json::json!({"type": "block_actions"}));
    }

    #[test]
    fn authentic_form_bodies_are_bounded_in_fields() {
        let form = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join("&")
        };
        let at_limit = parse_form(form(MAX_FORM_PARAMETERS).as_bytes()).expect("at the cap");
        assert_eq!(
            at_limit.as_object().expect("an object").len(),
            MAX_FORM_PARAMETERS
        );
        // Empty pieces (`&&`) are no fields, so they do not count.
        let padded = format!("{}&&&&", form(MAX_FORM_PARAMETERS));
        assert!(parse_form(padded.as_bytes()).is_ok());
        assert_eq!(
            parse_form(form(MAX_FORM_PARAMETERS + 1).as_bytes()),
            Err(Refusal::TooManyParameters)
        );
    }

    #[test]
    fn json_validation_agrees_with_parsing_into_a_tree() {
        let cases: &[&[u8]] = &[
            br#"{"a": [1, 2.5e3, -0, true, null, "x\u00e9\n"], "b": {}}"#,
            b" [] \n",
            b"\"just a string\"",
            b"",
            b"{",
            b"{} x",
            b"{}{}",
            br#"{"a": 1,}"#,
            br#"{"a": "\q"}"#,
            b"{\"a\": \"\xff\"}",
            b"{\"a\": \"tab\there\"}",
            b"[01]",
            b"NaN",
        ];
        for case in cases {
            assert_eq!(
                is_json(case),
                serde_json::from_slice::<Value>(case).is_ok(),
                "{}",
                String::from_utf8_lossy(case)
            );
        }
        // The two differences, both JSON by the grammar: an unpaired surrogate escape
        // (RFC 8259 §8.2 leaves its meaning open; a `String` cannot hold it), and nesting
        // deeper than the tree parser's recursion limit of 128 (skipping does not recurse).
        assert!(is_json(br#"{"a": "\ud800"}"#));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(is_json(deep.as_bytes()));
        assert!(!is_json(
            format!("{}{}", "[".repeat(200), "]".repeat(199)).as_bytes()
        ));
    }

    #[test]
    fn media_types_decide_how_the_body_is_read() {
        assert!(body_kind(None) == BodyKind::Json);
        assert!(body_kind(Some("application/json; charset=utf-8")) == BodyKind::Json);
        assert!(body_kind(Some("application/vnd.api+json")) == BodyKind::Json);
        assert!(body_kind(Some("application/x-www-form-urlencoded")) == BodyKind::Form);
        assert!(body_kind(Some("application/xml")) == BodyKind::Opaque);
    }

    #[test]
    fn twilio_url_prefers_the_external_base() {
        let (parts, ()) = http::Request::builder()
            .uri("/hooks/abc?x=1&bodySHA256=ff")
            .header("host", "10.0.0.5:8080")
            .body(())
            .expect("request")
            .into_parts();
        let mut config = PipelineConfig::default();
        assert_eq!(
            twilio_url(&config, &parts),
            "http://10.0.0.5:8080/hooks/abc?x=1&bodySHA256=ff"
        );
        config.external_base_url = Some("https://hooks.example.com/".into());
        assert_eq!(
            twilio_url(&config, &parts),
            "https://hooks.example.com/hooks/abc?x=1&bodySHA256=ff"
        );
    }
}

#[cfg(test)]
mod refusal_table {
    use super::*;

    /// The README's "HTTP answers" table is read off [`Refusal`]: every refusal has a row
    /// with its status code and reason, and its headers are the ones the row names.
    #[test]
    fn the_readme_table_matches_the_refusals() {
        let readme = include_str!("../../README.md");
        let start = readme.find("## HTTP answers").expect("section");
        let table: Vec<&str> = readme[start..]
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .collect();
        for refusal in Refusal::ALL {
            let reason = match refusal {
                Refusal::Unauthenticated(_) => "signature_mismatch",
                other => other.reason(),
            };
            let row = table
                .iter()
                .find(|l| l.contains(&format!("`{reason}`")))
                .unwrap_or_else(|| panic!("no README row for {refusal:?} ({reason})"));
            let code = refusal.status().as_u16().to_string();
            assert!(row.contains(&code), "{refusal:?}: {row}");
            let response = refusal.response(5);
            assert_eq!(response.status(), refusal.status());
            let has = |h: header::HeaderName| response.headers().contains_key(h);
            assert_eq!(
                has(header::RETRY_AFTER),
                row.contains("Retry-After"),
                "{refusal:?}"
            );
            assert_eq!(has(header::ALLOW), row.contains("Allow"), "{refusal:?}");
            assert_eq!(
                has(header::CONNECTION),
                row.contains("connection closed"),
                "{refusal:?}"
            );
        }
    }
}
#[cfg(test)]
mod future_size {
    use super::*;

    struct Discard;

    impl DeliverySink for Discard {
        async fn accept(&self, _: Accepted) -> Result<(), SinkError> {
            Ok(())
        }
        fn reject(&self, _: Rejected) {}
        fn duplicate(&self, _: Duplicate) {}
    }

    /// Every delivery's future is laid out at the size of its largest await and copied
    /// whole as it is wrapped (span, handler box): waits only some presets have (key
    /// fetches, CEL, the SNS handshake) are boxed so that HMAC and token deliveries do
    /// not carry them. Before they were, `run` was 3,248 bytes and `deliver` 3,872.
    #[test]
    fn the_delivery_future_does_not_carry_the_rare_waits() {
        let table = RouteTable::new();
        let path = format!("/hooks/{}", "A".repeat(32));
        table
            .upsert(crate::route::Route {
                namespace: "payments".into(),
                name: "github".into(),
                uid: "u1".into(),
                generation: 1,
                path: path.clone(),
                secrets: Vec::new(),
                spec: serde_json::from_value(serde_json::json!({"provider": "github"}))
                    .expect("spec"),
                forward: Vec::new(),
                replay: None,
                expected_interval_seconds: None,
            })
            .expect("route");
        let route = table.get(&path).expect("route");
        let state = Arc::new(ReceiverState::new(
            PipelineConfig::default(),
            Arc::new(RouteTable::new()),
            Dedup::new(10, super::super::system_clock()),
            Arc::new(Discard),
            ReceiverMetrics::default(),
        ));
        let (parts, _) = Request::new(Body::empty()).into_parts();
        let authenticate = authenticate(&state.config, &route, parts, Bytes::new());
        assert!(
            std::mem::size_of_val(&authenticate) <= 1_024,
            "authenticate: {} bytes",
            std::mem::size_of_val(&authenticate)
        );
        let (parts, _) = Request::new(Body::empty()).into_parts();
        let run = run(&state, &route, parts, Body::empty());
        assert!(
            std::mem::size_of_val(&run) <= 2_048,
            "run: {} bytes",
            std::mem::size_of_val(&run)
        );
    }
}
