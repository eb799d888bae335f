//! Issue 18's remaining findings against a real receiver on 127.0.0.1: CEL cost
//! (admission and run time), form parameters after authentication.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookwarden::crd::ProviderKind;
use hookwarden::domain::secret::generate_path;
use hookwarden::domain::signature::{Scheme, SignInput, sign};
use hookwarden::receiver::dedup::Dedup;
use hookwarden::receiver::evaluator::Evaluator;
use hookwarden::receiver::http::{PipelineConfig, ReceiverState, app};
use hookwarden::receiver::metrics::ReceiverMetrics;
use hookwarden::receiver::routes::RouteTable;
use hookwarden::receiver::server::{ServerOptions, serve_with};
use hookwarden::receiver::sink::{Accepted, DeliverySink, Duplicate, Rejected, SinkError};
use hookwarden::route::{Route, RouteSecret, SecretValue};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SECRET: &str = "hardening-secret";

#[derive(Default)]
struct Sink {
    accepted: Mutex<Vec<Accepted>>,
    rejected: Mutex<Vec<Rejected>>,
}

impl DeliverySink for Sink {
    async fn accept(&self, delivery: Accepted) -> Result<(), SinkError> {
        self.accepted.lock().expect("lock").push(delivery);
        Ok(())
    }
    fn reject(&self, rejected: Rejected) {
        self.rejected.lock().expect("lock").push(rejected);
    }
    fn duplicate(&self, _: Duplicate) {}
}

struct Server {
    addr: SocketAddr,
    path: String,
    sink: Arc<Sink>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve(spec: Value, config: PipelineConfig) -> Server {
    let routes = Arc::new(RouteTable::new());
    let route = Route {
        namespace: "payments".into(),
        name: "hooks".into(),
        uid: "uid-h".into(),
        generation: 1,
        path: generate_path(),
        secrets: vec![RouteSecret {
            value: SecretValue(SECRET.into()),
            expires_at: None,
        }],
        spec: serde_json::from_value(spec).expect("spec"),
        forward: Vec::new(),
        replay: None,
        expected_interval_seconds: None,
    };
    let path = route.path.clone();
    routes.upsert(route).expect("route compiles");
    let sink = Arc::new(Sink::default());
    let clock = config.clock.clone();
    let state = Arc::new(ReceiverState::new(
        config,
        routes,
        Dedup::new(10_000, clock),
        sink.clone(),
        ReceiverMetrics::default(),
    ));
    state.set_ready(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = app(state);
    tokio::spawn(async move {
        let _ = serve_with(listener, router, ServerOptions::default(), async {
            let _ = stopped.await;
        })
        .await;
    });
    Server {
        addr,
        path,
        sink,
        _stop: stop,
    }
}

/// One HTTP/1.1 exchange on a fresh connection; the status code and the body.
async fn exchange(addr: SocketAddr, head: String, body: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(body).await.expect("body");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

/// A POST signed the way `provider` signs it.
async fn post_signed(
    server: &Server,
    provider: ProviderKind,
    content_type: &str,
    body: &[u8],
    id: &str,
) -> (u16, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let input = SignInput {
        body,
        url: &format!("http://{}{}", server.addr, server.path),
        timestamp: now,
        id,
        content_type,
    };
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        server.path,
        server.addr,
        body.len()
    );
    for (name, value) in sign(&Scheme::preset(provider), SECRET, &input).expect("sign") {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    exchange(server.addr, head, body).await
}

async fn healthz(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let (status, _) = exchange(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
        b"",
    )
    .await;
    assert_eq!(status, 200);
    started.elapsed()
}

const QUADRATIC: &str = "string(body.a.map(x, body.a.map(y, x + y)).size())";

/// Finding 3, admission: the review's expression is refused by the one resolver (so the
/// controller's InvalidSpec and the receiver's route compiler), naming the field; a
/// single pass over the body is admitted.
#[test]
fn a_quadratic_cel_expression_is_refused_at_admission_naming_its_field() {
    let spec = |id_from: &str| {
        serde_json::from_value::<hookwarden::crd::WebhookIntegrationSpec>(json!({
            "provider": "github",
            "incidents": {"idFrom": id_from},
        }))
        .expect("spec")
    };
    let problems = match hookwarden::domain::spec::resolve(&spec(QUADRATIC)) {
        Ok(_) => panic!("the quadratic expression was admitted"),
        Err(problems) => problems.to_string(),
    };
    assert!(
        problems.contains("spec.incidents.idFrom") && problems.contains("evaluation steps"),
        "{problems}"
    );
    if let Err(problems) =
        hookwarden::domain::spec::resolve(&spec("string(body.a.map(x, [x, x]).size())"))
    {
        panic!("one pass over the body must be admitted: {problems}");
    }
    // The receiver compiles routes with the same resolver: it refuses to serve it too.
    let routes = RouteTable::new();
    let refused = routes.upsert(Route {
        namespace: "payments".into(),
        name: "hooks".into(),
        uid: "uid-q".into(),
        generation: 1,
        path: generate_path(),
        secrets: Vec::new(),
        spec: spec(QUADRATIC),
        forward: Vec::new(),
        replay: None,
        expected_interval_seconds: None,
    });
    assert!(refused.is_err());
}

/// Finding 3, run time: two deliveries whose CEL mapping runs long do not stall the
/// async workers (`/healthz` stays under 100 ms on a 2-worker runtime); each is
/// stopped at its budget with 422 `mapping_budget_exceeded`, recorded as the reject
/// reason, while the same mapping over a small payload is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_cel_evaluations_stay_off_the_async_workers_and_stop_at_their_budget() {
    let config = PipelineConfig {
        evaluator: Arc::new(Evaluator::new(2, Duration::from_millis(100))),
        ..PipelineConfig::default()
    };
    let server = serve(
        json!({
            "provider": "github",
            "limits": {"maxBodyBytes": 65_536},
            "incidents": {"idFrom": "string(body.a.map(x, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10].map(y, [x, y])).size())"},
        }),
        config,
    )
    .await;
    let server = Arc::new(server);

    let (status, answer) = post_signed(
        &server,
        ProviderKind::Github,
        "application/json",
        br#"{"a":[1,2,3]}"#,
        "small-1",
    )
    .await;
    assert_eq!(status, 202, "{answer}");

    // 60 KB of list items: admitted (one pass over the body with a ten-item inner
    // loop: ~2.6 million steps at most), but 300,000 inner steps take longer than the
    // 100 ms budget. A small body keeps the work before the mapping (HMAC, JSON parse,
    // on the async workers by design) short, so the probe measures the mapping.
    let items = vec!["0"; 30_000].join(",");
    let big = format!("{{\"a\":[{items}]}}");
    let deliveries: Vec<_> = (0..2)
        .map(|i| {
            let server = server.clone();
            let big = big.clone();
            tokio::spawn(async move {
                post_signed(
                    &server,
                    ProviderKind::Github,
                    "application/json",
                    big.as_bytes(),
                    &format!("big-{i}"),
                )
                .await
            })
        })
        .collect();
    // Probe while both are being evaluated.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..8 {
        slowest = slowest.max(healthz(server.addr).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for delivery in deliveries {
        let (status, answer) = delivery.await.expect("joined");
        assert_eq!(status, 422, "{answer}");
        assert!(answer.contains("mapping_budget_exceeded"), "{answer}");
    }
    assert!(
        slowest < Duration::from_millis(100),
        "/healthz took {slowest:?} while CEL ran"
    );
    let rejected = server.sink.rejected.lock().expect("lock").clone();
    assert_eq!(rejected.len(), 2);
    assert!(
        rejected
            .iter()
            .all(|r| r.reason == "mapping_budget_exceeded")
    );
    assert_eq!(server.sink.accepted.lock().expect("lock").len(), 1);
}

/// Finding 12/13 leftover: an authentic form body is bounded in fields like Twilio's
/// pre-auth count (400 `too_many_parameters`), not decoded into a map of any size.
#[tokio::test]
async fn authentic_form_bodies_over_the_parameter_cap_are_400() {
    let server = serve(json!({"provider": "slack"}), PipelineConfig::default()).await;
    let form = |n: usize| {
        (0..n)
            .map(|i| format!("f{i}=v"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let ct = "application/x-www-form-urlencoded";
    let (status, answer) =
        post_signed(&server, ProviderKind::Slack, ct, form(20).as_bytes(), "f-1").await;
    assert_eq!(status, 202, "{answer}");
    let (status, answer) = post_signed(
        &server,
        ProviderKind::Slack,
        ct,
        form(5_000).as_bytes(),
        "f-2",
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("too_many_parameters"), "{answer}");
    assert_eq!(server.sink.accepted.lock().expect("lock").len(), 1);
}

/// Finding 12 leftover: a complete but damaged last journal batch (acknowledged
/// deliveries) is not only a metric: `Receiver::lost_at_open` reports it, and in
/// standalone the start warns and `hookwarden get` keeps saying it until the note is
/// deleted. (Cluster mode publishes the same message as a Warning Event
/// `JournalDataLost` on the receiver's Pod.)
#[tokio::test]
async fn acknowledged_deliveries_lost_at_journal_open_are_reported_by_get() {
    use hookwarden::journal::{Journal, JournalConfig};
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/datadog.yaml"),
        dir.path().join("datadog.yaml"),
    )
    .expect("copy example");
    let journal_dir = dir.path().join(".hookwarden-state").join("journal");
    std::fs::create_dir_all(&journal_dir).expect("state dir");
    let first = b"not a delivery".to_vec();
    let (journal, _) = Journal::open(JournalConfig::new(journal_dir.clone()), None)
        .await
        .expect("open");
    journal.append(first.clone()).await.expect("append");
    journal
        .append(vec![b'x'; 1_400])
        .await
        .expect("append the batch to damage");
    journal.close().await.expect("close");
    let segment = std::fs::read_dir(&journal_dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).expect("read");
    // Segment header (16), the first batch (header 24, frame 16, record), then the
    // second batch: one bit of its record flipped, its length intact.
    let last_at = 16 + 24 + 16 + first.len();
    bytes[last_at + 24 + 16 + 700] ^= 0x01;
    std::fs::write(&segment, &bytes).expect("damage");

    let bin = env!("CARGO_BIN_EXE_hookwarden");
    let mut child = std::process::Command::new(bin)
        .args(["standalone", "--dir"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--log-format", "text"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start standalone");
    let note = dir
        .path()
        .join(".hookwarden-state")
        .join("journal-loss.txt");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !note.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("stopped");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(note.exists(), "no journal-loss note; log:\n{log}");
    assert!(
        log.contains("possible loss of acknowledged deliveries")
            && log.contains("1 acknowledged deliveries (journal seq 2..2)"),
        "{log}"
    );

    let get = std::process::Command::new(bin)
        .args(["get", "--dir"])
        .arg(dir.path())
        .output()
        .expect("get");
    let stderr = String::from_utf8_lossy(&get.stderr);
    assert!(get.status.success(), "{stderr}");
    assert!(
        stderr.contains("possible loss of acknowledged deliveries")
            && stderr.contains("journal-loss.txt"),
        "{stderr}"
    );
}
