//! The receiver's HTTP pipeline: one handler that runs the checks of DESIGN.md's HTTP
//! table cheapest first, and answers honestly at the first that fails.
//!
//! Order: route lookup (404) → method (405) → suspended (503) → content type (415) →
//! source range (403) → rate limit (429) → bounded body read (413/408) → signature,
//! token and timestamp window (401) → parse (400) → JSON Schema (400) → provider
//! handshake → event filter (ignored) → incident mapping (400) → dedup (duplicate) →
//! [`DeliverySink::accept`] (durable) → 202. Nothing reaches the sink before every
//! check passed; a sink that cannot make the delivery durable turns into 503 +
//! `Retry-After`, never a 2xx.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

use super::Clock;
use super::dedup::{Check, Dedup};
use super::limits;
use super::metrics::ReceiverMetrics;
use super::routes::{CompiledRoute, RouteTable};
use super::server::{ServerOptions, peer_addr};
use super::sink::{Accepted, DeliverySink, Duplicate, Rejected, SinkError};
use crate::domain::provider::ProviderKind;
use crate::domain::signature::{self, Delivery, Verdict};

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
        }
    }
}

impl PipelineConfig {
    /// Connection settings for [`super::server::serve_with`].
    pub fn server_options(&self) -> ServerOptions {
        ServerOptions {
            header_read_timeout: self.header_read_timeout,
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

/// The receiver's router: `/hooks/…` (every other path is an unknown route: 404),
/// `/healthz`, `/readyz`. Metrics are separate: [`super::metrics::metrics_router`].
pub fn app<S: DeliverySink>(state: Arc<ReceiverState<S>>) -> Router {
    Router::new()
        .route("/healthz", get(healthz::<S>))
        .route("/readyz", get(readyz::<S>))
        .fallback(deliver::<S>)
        .with_state(state)
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
    let body = match reason {
        Some(r) => format!("{{\"status\":\"{outcome}\",\"reason\":\"{r}\"}}\n"),
        None => format!("{{\"status\":\"{outcome}\"}}\n"),
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

fn with_retry_after(mut response: Response, seconds: u64) -> Response {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

fn closing(mut response: Response) -> Response {
    // The rest of the body is unread: the connection cannot carry another request.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// How a refused request is answered and reported.
struct Refusal {
    status: StatusCode,
    reason: &'static str,
    auth_failure: bool,
    retry_after: Option<u64>,
    close: bool,
    /// 405: say which method works.
    allow_post: bool,
}

impl Refusal {
    fn new(status: StatusCode, reason: &'static str) -> Refusal {
        Refusal {
            status,
            reason,
            auth_failure: false,
            retry_after: None,
            close: false,
            allow_post: false,
        }
    }
}

async fn deliver<S: DeliverySink>(
    State(state): State<Arc<ReceiverState<S>>>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let Some(route) = state.routes.get(parts.uri.path()) else {
        if !state.is_ready() {
            // Before its first full list of routes (just started) the receiver cannot
            // tell an unknown path from one it has not loaded yet. A 404 would make many
            // senders give up on a valid endpoint for good (Alertmanager and Grafana do not
            // retry 4xx); 503 + Retry-After has them come back.
            state.metrics.reject("none", "routes_not_synced");
            return with_retry_after(
                answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "rejected",
                    Some("routes_not_synced"),
                ),
                1,
            );
        }
        state.metrics.reject("none", "not_found");
        // Same answer for every unknown path: nothing tells a prober how close it got.
        return answer(StatusCode::NOT_FOUND, "rejected", Some("not_found"));
    };
    let provider = route.provider.as_str();
    let response = match run(&state, &route, parts, body).await {
        Ok(response) => response,
        Err(refusal) => {
            state.metrics.reject(provider, refusal.reason);
            state.sink.reject(Rejected {
                integration: route.key.clone(),
                uid: route.route.uid.clone(),
                reason: refusal.reason,
                auth_failure: refusal.auth_failure,
                at_ms: (state.config.clock)(),
            });
            tracing::debug!(integration = %route.key, reason = refusal.reason, status = refusal.status.as_u16(), "delivery refused");
            let mut response = answer(refusal.status, "rejected", Some(refusal.reason));
            if let Some(seconds) = refusal.retry_after {
                response = with_retry_after(response, seconds);
            }
            if refusal.close {
                response = closing(response);
            }
            if refusal.allow_post {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            response
        }
    };
    state
        .metrics
        .observe_latency(provider, started.elapsed().as_secs_f64());
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

/// A form body as a JSON object of its fields. GitHub's and Slack's form encodings put
/// the real JSON payload in a `payload` field: that payload is the body then.
fn parse_form(body: &[u8]) -> Value {
    let mut fields = serde_json::Map::new();
    for (k, v) in form_urlencoded::parse(body) {
        fields.insert(k.into_owned(), Value::String(v.into_owned()));
    }
    if let Some(Value::String(payload)) = fields.get("payload")
        && let Ok(inner @ Value::Object(_)) = serde_json::from_str::<Value>(payload)
    {
        return inner;
    }
    Value::Object(fields)
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

async fn read_body(
    route: &CompiledRoute,
    parts: &Parts,
    body: Body,
    timeout: Duration,
) -> Result<Bytes, Refusal> {
    let too_large = || Refusal {
        close: true,
        ..Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > route.max_body_bytes as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(timeout, Limited::new(body, route.max_body_bytes).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(_)) => Err(Refusal {
            close: true,
            ..Refusal::new(StatusCode::BAD_REQUEST, "body_incomplete")
        }),
        Err(_) => Err(Refusal {
            close: true,
            ..Refusal::new(StatusCode::REQUEST_TIMEOUT, "body_timeout")
        }),
    }
}

fn source_allowed(state_config: &PipelineConfig, route: &CompiledRoute, parts: &Parts) -> bool {
    if route.source_ranges.is_empty() {
        return true;
    }
    let peer: Option<IpAddr> = peer_addr(&parts.extensions).map(|a| a.ip());
    match limits::client_ip(peer, &parts.headers, &state_config.trusted_proxies) {
        Some(ip) => limits::contains(&route.source_ranges, ip),
        // No peer address known: fail closed.
        None => false,
    }
}

async fn run<S: DeliverySink>(
    state: &ReceiverState<S>,
    route: &CompiledRoute,
    parts: Parts,
    body: Body,
) -> Result<Response, Refusal> {
    let config = &state.config;
    if parts.method != Method::POST {
        return Err(Refusal {
            allow_post: true,
            ..Refusal::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        });
    }
    if route.route.spec.suspend {
        return Err(Refusal {
            retry_after: Some(config.retry_after_seconds),
            ..Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "suspended")
        });
    }
    let declared_type = content_type(&parts.headers);
    if !signature::accepts_content_type(route.provider, declared_type) {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ));
    }
    if !source_allowed(config, route, &parts) {
        return Err(Refusal::new(StatusCode::FORBIDDEN, "source_not_allowed"));
    }
    if let Err(seconds) = route.rate.check() {
        return Err(Refusal {
            retry_after: Some(seconds),
            ..Refusal::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited")
        });
    }
    let bytes = read_body(route, &parts, body, config.body_timeout).await?;

    let now_ms = (config.clock)();
    let now_s = now_ms.div_euclid(1000);
    let secrets: Vec<&str> = route
        .route
        .live_secrets(now_s)
        .map(|s| s.expose())
        .collect();
    let url = if route.provider == ProviderKind::Twilio {
        twilio_url(config, &parts)
    } else {
        String::new()
    };
    let delivery = Delivery {
        method: parts.method.as_str(),
        url: &url,
        headers: &parts.headers,
        body: &bytes,
    };
    if let Verdict::Invalid(rejection) =
        signature::verify(&route.scheme, &secrets, &delivery, now_s)
    {
        return Err(Refusal {
            auth_failure: true,
            ..Refusal::new(StatusCode::UNAUTHORIZED, rejection.code())
        });
    }

    // Authentic from here on: only now is the body worth parsing, and only into a tree
    // when something reads one (a schema, a mapping, the provider's id or type fields).
    let needs_value = route.schema.is_some()
        || route.mapping.is_some()
        || signature::meta_reads_body(route.provider);
    let value: Option<Value> = match body_kind(declared_type) {
        BodyKind::Json if needs_value => match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => Some(v),
            Err(_) => return Err(Refusal::new(StatusCode::BAD_REQUEST, "malformed_payload")),
        },
        BodyKind::Json if is_json(&bytes) => None,
        BodyKind::Json => return Err(Refusal::new(StatusCode::BAD_REQUEST, "malformed_payload")),
        BodyKind::Form if needs_value => Some(parse_form(&bytes)),
        BodyKind::Form | BodyKind::Opaque => None,
    };
    if let Some(schema) = &route.schema {
        let valid = value.as_ref().is_some_and(|v| schema.is_valid(v));
        if !valid {
            return Err(Refusal::new(StatusCode::BAD_REQUEST, "schema_mismatch"));
        }
    }
    if let Some(v) = &value
        && let Some((media_type, payload)) = signature::handshake(route.provider, v)
    {
        state.metrics.outcome(route.provider.as_str(), "handshake");
        return Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, media_type)],
            payload,
        )
            .into_response());
    }

    let meta = signature::delivery_meta(&route.scheme, &parts.headers, value.as_ref());
    let ignored = route.ignores(meta.event_type.as_deref());
    let incidents = match (&route.mapping, ignored) {
        (Some(mapping), false) => match &value {
            Some(v) => mapping
                .extract(v, meta.event_type.as_deref(), now_ms)
                .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "mapping_failed"))?,
            None => return Err(Refusal::new(StatusCode::BAD_REQUEST, "mapping_failed")),
        },
        _ => Vec::new(),
    };

    let claim = match (&meta.id, route.dedup_window.is_zero()) {
        (Some(id), false) => match state.dedup.claim(&route.key, id, route.dedup_window).await {
            Check::Fresh(claim) => Some(claim),
            Check::Duplicate => {
                state.metrics.dedup_hit(route.provider.as_str());
                state.metrics.outcome(route.provider.as_str(), "duplicate");
                state.sink.duplicate(Duplicate {
                    integration: route.key.clone(),
                    uid: route.route.uid.clone(),
                    at_ms: now_ms,
                });
                return Ok(answer(StatusCode::OK, "duplicate", None));
            }
            Check::RetryLater => {
                return Err(Refusal {
                    retry_after: Some(config.retry_after_seconds),
                    ..Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "retry_in_flight")
                });
            }
        },
        _ => None,
    };

    let accepted = Accepted {
        integration: route.key.clone(),
        uid: route.route.uid.clone(),
        delivery_id: meta.id,
        event_type: meta.event_type,
        received_at_ms: now_ms,
        ignored,
        incidents,
    };
    match state.sink.accept(accepted).await {
        Ok(()) => {
            if let Some(claim) = claim {
                claim.accepted();
            }
            let outcome = if ignored { "ignored" } else { "accepted" };
            state.metrics.outcome(route.provider.as_str(), outcome);
            Ok(answer(StatusCode::ACCEPTED, outcome, None))
        }
        Err(e) => {
            // Dropping the claim forgets the id, so the sender's retry is accepted.
            drop(claim);
            tracing::warn!(integration = %route.key, error = %e, "delivery not kept; answering 503");
            let reason = match e {
                SinkError::Overloaded => "overloaded",
                SinkError::Unavailable(_) => "journal_unavailable",
            };
            Err(Refusal {
                retry_after: Some(config.retry_after_seconds),
                ..Refusal::new(StatusCode::SERVICE_UNAVAILABLE, reason)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_become_objects_and_payload_fields_unwrap() {
        let plain = parse_form(b"CallSid=CA1&From=%2B1555&Body=hi+there");
        assert_eq!(plain["From"], "+1555");
        assert_eq!(plain["Body"], "hi there");
        let wrapped = parse_form(b"payload=%7B%22type%22%3A%22block_actions%22%7D");
        assert_eq!(wrapped, serde_json::json!({"type": "block_actions"}));
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
