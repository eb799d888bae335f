//! Forwarding end to end through a real receiver on 127.0.0.1: verified deliveries and
//! the incidents they open and resolve reach a local target, signed as Standard Webhooks;
//! failures are retried on the schedule, terminal answers dead-lettered and replayed,
//! and pending forwards survive a restart of the receiver (they live in the outbox).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hookwarden::crd::ProviderKind;
use hookwarden::domain::secret::generate_path;
use hookwarden::domain::signature::{self, Delivery, Scheme, Verdict};
use hookwarden::forwarder::EgressPolicy;
use hookwarden::receiver::service::{Receiver, ReceiverOptions};
use hookwarden::receiver::status::FileStatusWriter;
use hookwarden::route::{Route, RouteForward, RouteSecret, SecretValue};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "forward-test-token";
/// A Standard Webhooks key (whsec_ + base64 of 24 bytes).
const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const BOUND: Duration = Duration::from_secs(20);

/// What the target saw: headers and body of each request, and what it answers next.
#[derive(Default)]
struct Target {
    seen: Mutex<Vec<(HeaderMap, Bytes)>>,
    /// Requests to the `/slack` path (the slack-format target).
    slack: Mutex<Vec<(HeaderMap, Bytes)>>,
    /// Answers to give, in order; 200 once empty.
    script: Mutex<VecDeque<u16>>,
}

async fn record(
    State(t): State<Arc<Target>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if uri.path().ends_with("/slack") {
        t.slack.lock().expect("lock").push((headers, body));
        return StatusCode::OK;
    }
    t.seen.lock().expect("lock").push((headers, body));
    let code = t.script.lock().expect("lock").pop_front().unwrap_or(200);
    StatusCode::from_u16(code).expect("status")
}

async fn start_target(target: Arc<Target>) -> SocketAddr {
    let app = axum::Router::new()
        .fallback(axum::routing::post(record))
        .with_state(target);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn route(path: &str, target_url: &str, schedule: &[&str]) -> Route {
    Route {
        namespace: "payments".into(),
        name: "dd".into(),
        uid: "uid-fwd".into(),
        generation: 1,
        path: path.to_string(),
        secrets: vec![RouteSecret {
            value: SecretValue(TOKEN.into()),
            expires_at: None,
        }],
        spec: serde_json::from_value(json!({
            "provider": "datadog",
            "forward": [{
                "name": "tickets",
                "url": target_url,
                "send": ["delivery", "incident.opened", "incident.resolved"],
                "retry": {"schedule": schedule},
                "circuitBreaker": {"failures": 100},
            }, {
                "name": "chat",
                "url": format!("{target_url}/slack"),
                "format": "slack",
                "send": ["incident.opened"],
            }],
        }))
        .expect("spec"),
        forward: vec![
            RouteForward {
                name: "tickets".into(),
                url: SecretValue(target_url.into()),
                signing_key: Some(SecretValue(KEY.into())),
                headers: BTreeMap::from([(
                    "authorization".to_string(),
                    SecretValue("Bearer to-the-target".into()),
                )]),
            },
            RouteForward {
                name: "chat".into(),
                url: SecretValue(format!("{target_url}/slack")),
                signing_key: None,
                headers: BTreeMap::new(),
            },
        ],
        replay: None,
        expected_interval_seconds: None,
    }
}

struct Running {
    url: String,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    forwarder: hookwarden::receiver::forward::Forwarder,
}

async fn start_receiver(dir: &Path, route: Route) -> Running {
    start_receiver_capped(dir, route, 64 << 20).await
}

async fn start_receiver_capped(dir: &Path, route: Route, cap: u64) -> Running {
    start_receiver_with(dir, route, cap, Duration::ZERO).await
}

/// The same, named for the tests that came with the forwarder's release gate.
async fn start_receiver_loading(dir: &Path, route: Route, cap: u64, delay: Duration) -> Running {
    start_receiver_with(dir, route, cap, delay).await
}

/// `route_after`: how long the receiver runs before its route arrives (a cluster
/// receiver's route watch takes a moment after a restart).
async fn start_receiver_with(dir: &Path, route: Route, cap: u64, route_after: Duration) -> Running {
    start_receiver_checkpointing(dir, route, cap, route_after, Duration::from_secs(30)).await
}

async fn start_receiver_checkpointing(
    dir: &Path,
    route: Route,
    cap: u64,
    route_after: Duration,
    checkpoint_interval: Duration,
) -> Running {
    let options = ReceiverOptions {
        remote_keys: Default::default(),
        journal_dir: dir.join("journal"),
        journal_max_bytes: cap,
        journal_commit_window: Duration::ZERO,
        dedup_max_ids: 10_000,
        trusted_proxies: Vec::new(),
        external_base_url: None,
        runtime: hookwarden::receiver::runtime::RuntimeConfig {
            status_interval: Duration::from_millis(100),
            checkpoint_interval,
            ..Default::default()
        },
        forward_egress: EgressPolicy::standalone(Vec::new(), None),
        max_body_bytes_in_flight: hookwarden::receiver::limits::DEFAULT_BODY_BUDGET,
        max_connections: hookwarden::receiver::server::DEFAULT_MAX_CONNECTIONS,
        drain_delay: Duration::ZERO,
        forward_max_lag: hookwarden::receiver::forward::DEFAULT_MAX_LAG,
    };
    let writer = Arc::new(FileStatusWriter::new(dir));
    let receiver: Receiver<FileStatusWriter> = Receiver::start(options, writer, None)
        .await
        .expect("receiver starts");
    let path = route.path.clone();
    let handle = receiver.handle();
    let state = receiver.state().clone();
    let load_route = async move {
        tokio::time::sleep(route_after).await;
        handle.replace_all(vec![route]);
        state.set_ready(true);
    };
    if route_after.is_zero() {
        load_route.await;
    } else {
        tokio::spawn(load_route);
    }
    let forwarder = receiver.forwarder();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}{path}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let served = tokio::spawn(receiver.serve(listener, stop.clone()));
    Running {
        url,
        stop,
        served,
        forwarder,
    }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(BOUND, self.served).await;
    }
}

async fn send_datadog(url: &str, id: &str, transition: &str) -> u16 {
    send_datadog_padded(url, id, transition, 0).await
}

/// A Datadog delivery with `padding` bytes of message text.
async fn send_datadog_padded(url: &str, id: &str, transition: &str, padding: usize) -> u16 {
    let body = json!({
        "id": id, "aggreg_key": "disk-db-1", "alert_name": "disk full on db-1",
        "alert_transition": transition, "severity": "high",
        "link": "https://app.datadoghq.com/monitors/1",
        "message": "x".repeat(padding),
    })
    .to_string();
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let rest = url.strip_prefix("http://").expect("http");
        let (authority, path) = rest.split_at(rest.find('/').expect("path"));
        let mut stream = std::net::TcpStream::connect(authority).expect("connect");
        use std::io::{Read as _, Write as _};
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Type: application/json\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    })
    .await
    .expect("join")
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn types(target: &Target) -> Vec<String> {
    target
        .seen
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, body)| {
            serde_json::from_slice::<Value>(body).expect("json")["type"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// Checks a forwarded request's Standard Webhooks signature with the receiver's own
/// verifier (the official library's check is tests/it/forward_sdk.rs).
fn assert_signed(headers: &HeaderMap, body: &[u8]) {
    let delivery = Delivery {
        method: "POST",
        url: "",
        headers,
        body,
    };
    let now = jiff::Timestamp::now().as_second();
    let verdict = signature::verify(
        &Scheme::preset(ProviderKind::StandardWebhooks),
        &[KEY],
        &delivery,
        now,
    );
    assert!(matches!(verdict, Verdict::Valid(_)), "{verdict:?}");
}

/// The `tickets` target's entry of `status.forwarding`.
fn forwarding_status(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("status/payments/dd.json")).unwrap_or_default();
    let status = serde_json::from_str::<Value>(&text).unwrap_or(Value::Null);
    status["forwarding"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["name"] == "tickets").cloned())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_and_incidents_reach_the_target_signed_and_failures_are_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = Arc::new(Target::default());
    let addr = start_target(target.clone()).await;
    let running = start_receiver(
        dir.path(),
        route(&generate_path(), &format!("http://{addr}/in"), &["1s"]),
    )
    .await;

    assert_eq!(send_datadog(&running.url, "evt-1", "Triggered").await, 202);
    wait_for("the delivery and incident.opened", || {
        types(&target).len() >= 2
    })
    .await;
    let mut seen = types(&target);
    seen.sort();
    assert_eq!(seen, ["delivery", "incident.opened"]);
    for (headers, body) in target.seen.lock().expect("lock").iter() {
        assert_signed(headers, body);
        assert_eq!(headers["authorization"], "Bearer to-the-target");
        let payload: Value = serde_json::from_slice(body).expect("json");
        assert_eq!(
            payload["integration"],
            json!({"namespace": "payments", "name": "dd"})
        );
    }

    // The slack-format target got the opened incident as a message, unsigned.
    wait_for("the slack message", || {
        !target.slack.lock().expect("lock").is_empty()
    })
    .await;
    {
        let slack = target.slack.lock().expect("lock");
        let (headers, body) = &slack[0];
        let text: Value = serde_json::from_slice(body).expect("json");
        assert!(
            text["text"]
                .as_str()
                .is_some_and(|t| t.contains("disk full on db-1")),
            "{text}"
        );
        assert!(!headers.contains_key("webhook-signature"));
    }

    // The target fails twice (503), then takes it: retried on the 1 s schedule.
    target.script.lock().expect("lock").extend([503, 503]);
    assert_eq!(send_datadog(&running.url, "evt-2", "Recovered").await, 202);
    let started = Instant::now();
    wait_for("incident.resolved delivered after retries", || {
        types(&target)
            .iter()
            .filter(|t| *t == "incident.resolved")
            .count()
            >= 1
            && types(&target).iter().filter(|t| *t == "delivery").count() >= 2
            && target.script.lock().expect("lock").is_empty()
            && forwarding_status(dir.path())["delivered"].as_i64() == Some(4)
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "retried before the schedule's delay"
    );
    let status = forwarding_status(dir.path());
    assert_eq!(status["name"], "tickets");
    assert_eq!(status["failed"], 2, "{status}");
    assert_eq!(status["pending"], 0, "{status}");
    assert!(
        status["lastFailure"]
            .as_str()
            .is_some_and(|f| f.contains("503")),
        "{status}"
    );

    // A terminal answer dead-letters at once; replay sends it again.
    target.script.lock().expect("lock").push_back(410);
    let before = types(&target).len();
    assert_eq!(send_datadog(&running.url, "evt-3", "Triggered").await, 202);
    wait_for("the dead letter", || {
        forwarding_status(dir.path())["deadLettered"].as_i64() == Some(1)
    })
    .await;
    let replayed = running
        .forwarder
        .replay("payments/dd", Some("tickets"))
        .await;
    assert_eq!(replayed, 1);
    wait_for("the replayed forward", || {
        let s = forwarding_status(dir.path());
        s["deadLettered"].as_i64() == Some(0) && types(&target).len() >= before + 2
    })
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_forwards_survive_a_restart_and_go_out_with_the_same_webhook_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = Arc::new(Target::default());
    let addr = start_target(target.clone()).await;
    let path = generate_path();
    // The target refuses the first attempt of each forward.
    target.script.lock().expect("lock").extend([503, 503]);
    let running = start_receiver(
        dir.path(),
        route(&path, &format!("http://{addr}/in"), &["2s"]),
    )
    .await;
    assert_eq!(send_datadog(&running.url, "evt-1", "Triggered").await, 202);
    wait_for("two refused attempts", || types(&target).len() >= 2).await;
    let first_ids: Vec<String> = target
        .seen
        .lock()
        .expect("lock")
        .iter()
        .map(|(h, _)| h["webhook-id"].to_str().expect("id").to_string())
        .collect();
    wait_for("the refusals on the status", || {
        forwarding_status(dir.path())["failed"].as_i64() == Some(2)
    })
    .await;
    running.stop().await;

    // A new receiver over the same folder: the outbox still has both forwards.
    let running = start_receiver(
        dir.path(),
        route(&path, &format!("http://{addr}/in"), &["2s"]),
    )
    .await;
    wait_for("both forwards delivered after the restart", || {
        types(&target).len() >= 4
    })
    .await;
    let later_ids: Vec<String> = target.seen.lock().expect("lock")[2..]
        .iter()
        .map(|(h, _)| h["webhook-id"].to_str().expect("id").to_string())
        .collect();
    let mut a = first_ids.clone();
    let mut b = later_ids.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b, "the same events, with the same webhook-ids");
    // The running totals add up across the restart instead of starting again.
    wait_for("status totals across the restart", || {
        let s = forwarding_status(dir.path());
        s["delivered"].as_i64() == Some(2) && s["failed"].as_i64() == Some(2)
    })
    .await;
    running.stop().await;
}

/// Enough delivered forwards to compact the outbox (8 MiB of dead records, the copies
/// synced outside its lock while intake and attempts go on): the outbox shrinks, nothing
/// is lost, and a restart sends nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_compacts_while_forwards_flow_and_a_restart_resends_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = Arc::new(Target::default());
    let addr = start_target(target.clone()).await;
    let path = generate_path();
    let url = format!("http://{addr}/in");
    let running = start_receiver(dir.path(), route(&path, &url, &["1s"])).await;
    const N: usize = 160;
    for i in 0..N {
        let code =
            send_datadog_padded(&running.url, &format!("evt-{i}"), "Triggered", 60_000).await;
        assert_eq!(code, 202, "delivery {i}");
    }
    let deliveries = || {
        types(&target)
            .iter()
            .filter(|t| t.as_str() == "delivery")
            .count()
    };
    wait_for("every delivery forwarded", || deliveries() == N).await;
    let outbox_bytes = || -> u64 {
        std::fs::read_dir(dir.path().join("journal").join("outbox"))
            .expect("outbox dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("out-"))
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum()
    };
    // ~9.6 MiB of forwards were written; once their tombstones are, it compacts.
    wait_for("the outbox compacted", || outbox_bytes() < 4 << 20).await;
    let sent = target.seen.lock().expect("lock").len();
    running.stop().await;
    let running = start_receiver(dir.path(), route(&path, &url, &["1s"])).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        target.seen.lock().expect("lock").len(),
        sent,
        "nothing delivered is sent again after the compaction and a restart"
    );
    running.stop().await;
}

/// A forward that fell due while the receiver was down is sent once the routes are
/// loaded: before that every integration looks removed, and the forwarder must neither
/// drop it for want of a target nor send it early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_due_during_a_restart_waits_for_the_routes_instead_of_being_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = Arc::new(Target::default());
    let addr = start_target(target.clone()).await;
    let path = generate_path();
    let url = format!("http://{addr}/in");
    target.script.lock().expect("lock").extend([503, 503]);
    let running = start_receiver(dir.path(), route(&path, &url, &["1s"])).await;
    assert_eq!(send_datadog(&running.url, "evt-1", "Triggered").await, 202);
    wait_for("the refusals on the status", || {
        forwarding_status(dir.path())["failed"].as_i64() == Some(2)
    })
    .await;
    running.stop().await;
    // Down past the retries' due time; back up with the routes loading slowly.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let running = start_receiver_loading(
        dir.path(),
        route(&path, &url, &["1s"]),
        64 << 20,
        Duration::from_millis(500),
    )
    .await;
    wait_for("both forwards delivered after the routes loaded", || {
        let s = forwarding_status(dir.path());
        s["delivered"].as_i64() == Some(2) && s["pending"].as_i64() == Some(0)
    })
    .await;
    assert_eq!(types(&target).len(), 4, "{:?}", types(&target));
    running.stop().await;
}

/// A target that comes back gets its backlog as soon as the circuit's probe succeeds:
/// the forwards that found the probe out go when it ends, not when its lease (the
/// attempt timeout plus grace, 15 s here) would run out, and more forwards than a target
/// may have in flight go out back to back, without a timer between batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_target_gets_its_backlog_as_soon_as_the_probe_succeeds() {
    const N: usize = 80; // more than the 32 attempts one target may have in flight
    let dir = tempfile::tempdir().expect("tempdir");
    let target = Arc::new(Target::default());
    let addr = start_target(target.clone()).await;
    // 503 until the script is cleared.
    target.script.lock().expect("lock").extend([503; 10_000]);
    let url = format!("http://{addr}/in");
    let mut route = route(&generate_path(), &url, &[]);
    route.spec = serde_json::from_value(json!({
        "provider": "datadog",
        "forward": [{
            "name": "tickets",
            "url": url,
            "send": ["delivery"],
            "retry": {"schedule": ["1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s"]},
            "circuitBreaker": {"failures": 3, "openFor": "1s"},
        }],
    }))
    .expect("spec");
    route.forward.truncate(1);
    let running = start_receiver(dir.path(), route).await;
    for i in 0..N {
        assert_eq!(
            send_datadog(&running.url, &format!("evt-{i}"), "Triggered").await,
            202
        );
    }
    let board = || {
        running
            .forwarder
            .board
            .of("payments/dd")
            .into_iter()
            .find(|s| s.name == "tickets")
            .unwrap_or_default()
    };
    wait_for("every forward pending behind the open circuit", || {
        let s = board();
        s.pending == N as i64 && s.circuit.as_deref() == Some("open")
    })
    .await;

    target.script.lock().expect("lock").clear();
    let recovered = Instant::now();
    wait_for("the backlog delivered", || board().pending == 0).await;
    let took = recovered.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "the backlog took {took:?} after the target recovered (the circuit is open for 1 s)"
    );
    let delivered = target
        .seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|(h, _)| h.contains_key("webhook-id"))
        .map(|(h, _)| h["webhook-id"].to_str().expect("id").to_string())
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert_eq!(delivered, N, "every event reached the target");
    assert_eq!(board().dead_lettered, 0);
    running.stop().await;
}

/// Pending forwards count against the journal cap: once the journal and the outbox
/// together reach it, new deliveries get 503 and every pending forward keeps its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_turns_new_deliveries_away_and_keeps_every_pending_forward() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A closed port: every attempt is refused, the forwards stay pending (long schedule).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let running = start_receiver_capped(
        dir.path(),
        route(
            &generate_path(),
            &format!("http://127.0.0.1:{port}/in"),
            &["1h"],
        ),
        1 << 20,
    )
    .await;
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..400 {
        match send_datadog_padded(&running.url, &format!("evt-{i}"), "Triggered", 16 * 1024).await {
            202 => accepted += 1,
            code => {
                refused = Some(code);
                break;
            }
        }
    }
    assert_eq!(
        refused,
        Some(503),
        "the cap was reached after {accepted} deliveries"
    );
    assert!(accepted > 10, "only {accepted} accepted");
    // Every accepted delivery's forward is pending (and the incident the first one
    // opened): none was dropped to make room.
    wait_for("every forward pending", || {
        forwarding_status(dir.path())["pending"].as_i64() == Some(accepted + 1)
    })
    .await;
    running.stop().await;
}

/// After a restart, forwards that are due before the receiver has its routes wait for
/// them instead of being taken for forwards of a deleted integration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_due_before_the_routes_arrive_wait_for_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let path = generate_path();
    let url = format!("http://127.0.0.1:{port}/in");
    let running = start_receiver(dir.path(), route(&path, &url, &["1s"])).await;
    assert_eq!(send_datadog(&running.url, "evt-1", "Triggered").await, 202);
    wait_for("a refused attempt", || {
        forwarding_status(dir.path())["failed"].as_i64() >= Some(1)
    })
    .await;
    running.stop().await;

    // The target comes up; the receiver restarts and gets its route only after the
    // forwards' next attempts are due.
    let target = Arc::new(Target::default());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the target's port again");
    let app = axum::Router::new()
        .fallback(axum::routing::post(record))
        .with_state(target.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let running = start_receiver_with(
        dir.path(),
        route(&path, &url, &["1s"]),
        64 << 20,
        Duration::from_millis(2500),
    )
    .await;
    wait_for("both forwards delivered once the route arrived", || {
        let s = forwarding_status(dir.path());
        s["delivered"].as_i64() == Some(2) && s["pending"].as_i64() == Some(0)
    })
    .await;
    assert_eq!(types(&target).len(), 2);
    running.stop().await;
}

/// Graceful drain: on shutdown readiness fails at once while deliveries that still arrive
/// are served for the drain delay; then the receiver stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_readiness_fails_first_and_deliveries_are_still_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = ReceiverOptions {
        remote_keys: Default::default(),
        journal_dir: dir.path().join("journal"),
        journal_max_bytes: 64 << 20,
        journal_commit_window: Duration::ZERO,
        dedup_max_ids: 10_000,
        trusted_proxies: Vec::new(),
        external_base_url: None,
        runtime: Default::default(),
        forward_egress: EgressPolicy::standalone(Vec::new(), None),
        max_body_bytes_in_flight: hookwarden::receiver::limits::DEFAULT_BODY_BUDGET,
        max_connections: hookwarden::receiver::server::DEFAULT_MAX_CONNECTIONS,
        drain_delay: Duration::from_millis(1500),
        forward_max_lag: hookwarden::receiver::forward::DEFAULT_MAX_LAG,
    };
    let writer = Arc::new(FileStatusWriter::new(dir.path()));
    let receiver: Receiver<FileStatusWriter> =
        Receiver::start(options, writer, None).await.expect("start");
    let route = route(&generate_path(), "http://127.0.0.1:9/in", &["1h"]);
    let path = route.path.clone();
    receiver.handle().upsert(route).expect("route");
    receiver.state().set_ready(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let served = tokio::spawn(receiver.serve(listener, stop.clone()));
    let readyz = |addr: SocketAddr| async move {
        tokio::task::spawn_blocking(move || {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect(addr).ok()?;
            s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            out.split_whitespace().nth(1)?.parse::<u16>().ok()
        })
        .await
        .expect("join")
    };
    assert_eq!(readyz(addr).await, Some(200));
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(readyz(addr).await, Some(503), "not ready once draining");
    let url = format!("http://{addr}{path}");
    assert_eq!(
        send_datadog(&url, "during-drain", "Triggered").await,
        202,
        "still served while draining"
    );
    tokio::time::timeout(BOUND, served)
        .await
        .expect("stops after the drain")
        .expect("join")
        .expect("served");
}

/// The webhook-ids of the `delivery` forwards the target saw, and of all forwards.
fn delivery_ids(target: &Target) -> (Vec<String>, usize) {
    let seen = target.seen.lock().expect("lock");
    let ids = seen
        .iter()
        .filter(|(_, body)| {
            serde_json::from_slice::<Value>(body).expect("json")["type"] == "delivery"
        })
        .map(|(h, _)| h["webhook-id"].to_str().expect("id").to_string())
        .collect();
    (ids, seen.len())
}

fn assert_each_once(ids: &[String], n: usize) {
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), n, "{ids:?}");
    assert_eq!(ids.len(), n, "a delivery forwarded twice: {ids:?}");
}

/// While intake is saturated, new deliveries' forwards stay in the journal: nothing of
/// them is imported into the outbox (only the incident event is) and nothing is sent.
/// Once intake eases they are read back from the journal and each goes out once; a
/// restart sends none of them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_deferred_while_intake_is_saturated_are_read_back_from_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = Arc::new(Target::default());
    let addr = start_target(target.clone()).await;
    let path = generate_path();
    let target_url = format!("http://{addr}/in");
    let running = start_receiver(dir.path(), route(&path, &target_url, &["1s"])).await;
    let pressure = running.forwarder.pressure().expect("the intake gate");
    pressure.force(Some(true));
    const N: usize = 40;
    for i in 0..N {
        assert_eq!(
            send_datadog(&running.url, &format!("evt-{i}"), "Triggered").await,
            202
        );
    }
    // Several status intervals: the deliveries are folded and counted, their forwards
    // are not imported (the one incident event is, and waits for the gate).
    wait_for("the deliveries on the status", || {
        let text =
            std::fs::read_to_string(dir.path().join("status/payments/dd.json")).unwrap_or_default();
        serde_json::from_str::<Value>(&text)
            .is_ok_and(|s| s["deliveries"]["accepted"].as_i64() == Some(N as i64))
    })
    .await;
    // Pending: the incident event (in the outbox) and the N deferred deliveries (in the
    // journal only).
    wait_for("the deferred forwards counted as pending", || {
        forwarding_status(dir.path())["pending"].as_i64() == Some(N as i64 + 1)
    })
    .await;
    // The outbox holds one job, not N + 1 (each delivery's would be ~1 KiB).
    let outbox_bytes: u64 = std::fs::read_dir(dir.path().join("journal/outbox"))
        .expect("outbox")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("out-"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(
        outbox_bytes < 8 * 1024,
        "deliveries imported while saturated: {outbox_bytes} bytes"
    );
    assert_eq!(
        target.seen.lock().expect("lock").len(),
        0,
        "nothing is sent while saturated"
    );

    pressure.force(Some(false));
    wait_for("every delivery forwarded", || {
        delivery_ids(&target).0.len() >= N
    })
    .await;
    wait_for("the incident event too", || {
        types(&target).contains(&"incident.opened".to_string())
    })
    .await;
    // Read back, imported and delivered: counted once, then not at all.
    wait_for("nothing pending", || {
        forwarding_status(dir.path())["pending"].as_i64() == Some(0)
    })
    .await;
    let (ids, total) = delivery_ids(&target);
    assert_each_once(&ids, N);
    for (headers, body) in target.seen.lock().expect("lock").iter() {
        assert_signed(headers, body);
    }
    running.stop().await;

    // A restart sends nothing again.
    let running = start_receiver(dir.path(), route(&path, &target_url, &["1s"])).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(delivery_ids(&target).1, total, "a restart re-sent forwards");
    running.stop().await;
}

/// A receiver that dies (its runtime dropped, nothing flushed: as after `kill -9`) while
/// forwards are deferred: the next start replays the journal, reads their bodies back
/// from it and sends each once.
#[test]
fn deferred_forwards_survive_a_crash_and_are_read_back_at_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = Arc::new(Target::default());
    let served = tokio::runtime::Runtime::new().expect("runtime");
    let addr = served.block_on(start_target(target.clone()));
    let path = generate_path();
    let target_url = format!("http://{addr}/in");
    const N: usize = 25;

    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    first.block_on(async {
        let running = start_receiver(dir.path(), route(&path, &target_url, &["1s"])).await;
        running
            .forwarder
            .pressure()
            .expect("the intake gate")
            .force(Some(true));
        for i in 0..N {
            assert_eq!(
                send_datadog(&running.url, &format!("evt-{i}"), "Triggered").await,
                202
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::mem::forget(running);
    });
    // Every task dropped where it stood: no shutdown path runs.
    first.shutdown_timeout(Duration::from_secs(5));
    assert_eq!(target.seen.lock().expect("lock").len(), 0);

    let second = tokio::runtime::Runtime::new().expect("runtime");
    second.block_on(async {
        // The dead receiver's journal thread lets go of the directory lock as it stops.
        let running = start_receiver(dir.path(), route(&path, &target_url, &["1s"])).await;
        wait_for("every delivery forwarded after the restart", || {
            delivery_ids(&target).0.len() >= N
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_each_once(&delivery_ids(&target).0, N);
        running.stop().await;
    });
}

/// Under a sustained overload spans of deferred forwards keep opening, and no checkpoint
/// can be taken while one exists: each checkpoint interval the open span is read back and
/// none opens until the checkpoint is written, so the journal still compacts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_still_checkpoints_while_intake_stays_saturated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = Arc::new(Target::default());
    let addr = start_target(target.clone()).await;
    let path = generate_path();
    let running = start_receiver_checkpointing(
        dir.path(),
        route(&path, &format!("http://{addr}/in"), &["1s"]),
        64 << 20,
        Duration::ZERO,
        Duration::from_millis(300),
    )
    .await;
    let pressure = running.forwarder.pressure().expect("the intake gate");
    pressure.force(Some(true));
    let snapshot = dir.path().join("journal").join("snapshot");
    let mut sent = 0;
    // Well inside the 10 s max lag, after which a span would close anyway.
    let deadline = Instant::now() + Duration::from_secs(4);
    while !snapshot.exists() {
        assert!(
            Instant::now() < deadline,
            "no checkpoint while intake stayed saturated"
        );
        assert_eq!(
            send_datadog(&running.url, &format!("evt-{sent}"), "Triggered").await,
            202
        );
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The spans read back for the checkpoint were imported, though still held back
    // from sending (the gate is saturated and none is max-lag late).
    assert_eq!(delivery_ids(&target).0.len(), 0);
    pressure.force(Some(false));
    wait_for("every delivery forwarded", || {
        delivery_ids(&target).0.len() >= sent
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_each_once(&delivery_ids(&target).0, sent);
    running.stop().await;
}
