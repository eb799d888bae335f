//! OIDC/JWT bearer senders and Amazon SNS, end to end through the receiver's router:
//! tokens minted by PyJWT and SNS messages signed with `cryptography`
//! (tests/fixtures/senders/mint.py), keys and certificates served by a server this test
//! starts on 127.0.0.1, fetched through the receiver's own fetcher (pooled client, SSRF
//! guard, caches). And the CLI: `sign` → `verify` for both, and `verify` of the
//! libraries' output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use hookwarden::domain::secret::generate_path;
use hookwarden::forwarder::{EgressPolicy, Sender, SenderOptions};
use hookwarden::receiver::dedup::Dedup;
use hookwarden::receiver::forward::ForwardBoard;
use hookwarden::receiver::http::{PipelineConfig, ReceiverState, app};
use hookwarden::receiver::keys::{RemoteKeyOptions, RemoteKeys};
use hookwarden::receiver::metrics::ReceiverMetrics;
use hookwarden::receiver::routes::RouteTable;
use hookwarden::receiver::sink::{Accepted, DeliverySink, Duplicate, Rejected, SinkError};
use hookwarden::route::{Route, RouteSecret, SecretValue};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

// ----- the sender's side: the libraries and a key server ----------------------------------

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

fn python() -> Option<PathBuf> {
    let venv = std::env::var_os("HOOKWARDEN_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hookwarden/venv"))
        })?;
    let py = venv.join("bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import jwt, cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(py);
    }
    assert!(
        !in_ci(),
        "{} cannot import jwt (PyJWT) and cryptography: run scripts/check-chart.sh, which installs its pinned packages",
        py.display()
    );
    eprintln!(
        "SKIPPED: PyJWT/cryptography not installed in {}",
        py.display()
    );
    None
}

/// Tokens, keys and SNS messages minted by the libraries for `base` at `now`.
fn mint(base: &str, now: i64) -> Option<Value> {
    let py = python()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/senders/mint.py");
    let out = Command::new(py)
        .arg(script)
        .arg(base)
        .arg(now.to_string())
        .output()
        .expect("run mint.py");
    assert!(
        out.status.success(),
        "mint.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("mint.py prints JSON"))
}

#[derive(Clone, Default)]
struct Served {
    jwks: Arc<Mutex<Vec<u8>>>,
    cert: Arc<Mutex<Vec<u8>>>,
    jwks_hits: Arc<AtomicUsize>,
    subscribe_hits: Arc<AtomicUsize>,
}

/// The issuer's and AWS's side: JWKS, certificate, SubscribeURL, and the broken ones (an
/// answer that never comes, 50 MB, not a key document).
async fn key_server() -> (String, Served) {
    let served = Served::default();
    let app = Router::new()
        .route(
            "/jwks",
            get(|State(s): State<Served>| async move {
                s.jwks_hits.fetch_add(1, Ordering::SeqCst);
                s.jwks.lock().expect("lock").clone()
            }),
        )
        .route(
            "/cert.pem",
            get(|State(s): State<Served>| async move { s.cert.lock().expect("lock").clone() }),
        )
        .route(
            "/subscribe",
            get(|State(s): State<Served>| async move {
                s.subscribe_hits.fetch_add(1, Ordering::SeqCst);
                "<ConfirmSubscriptionResponse/>"
            }),
        )
        .route(
            "/hang",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "never"
            }),
        )
        .route(
            "/huge",
            get(|| async {
                let chunk = bytes::Bytes::from(vec![b'{'; 1 << 20]);
                let stream = futures::stream::iter(
                    (0..50).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
                );
                Body::from_stream(stream)
            }),
        )
        .route("/not-a-cert", get(|| async { "hello" }))
        .route("/not-a-jwks", get(|| async { r#"{"keys": "nope"}"# }))
        .with_state(served.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, served)
}

// ----- the receiver's side --------------------------------------------------------------

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

struct Receiver {
    router: hookwarden::receiver::http::Receiver<Sink>,
    sink: Arc<Sink>,
    routes: Arc<RouteTable>,
    board: Arc<ForwardBoard>,
}

fn remote(insecure: bool) -> Arc<RemoteKeys> {
    let sender = Sender::new(
        EgressPolicy::standalone(Vec::new(), None),
        SenderOptions::default(),
    )
    .expect("sender");
    Arc::new(RemoteKeys::new(
        sender,
        RemoteKeyOptions {
            timeout: Duration::from_secs(1),
            insecure_urls: insecure,
            refresh_min_interval: Duration::from_millis(500),
        },
    ))
}

fn receiver(now: i64, remote: Arc<RemoteKeys>) -> Receiver {
    let board = Arc::new(ForwardBoard::default());
    remote.set_notices(board.clone());
    let config = PipelineConfig {
        clock: Arc::new(move || now * 1000),
        remote_keys: Some(remote),
        ..PipelineConfig::default()
    };
    let routes = Arc::new(RouteTable::new());
    let sink = Arc::new(Sink::default());
    let clock = config.clock.clone();
    let state = Arc::new(ReceiverState::new(
        config,
        routes.clone(),
        Dedup::new(10_000, clock),
        sink.clone(),
        ReceiverMetrics::default(),
    ));
    state.set_ready(true);
    Receiver {
        router: app(state),
        sink,
        routes,
        board,
    }
}

impl Receiver {
    /// Serves `spec` with `secret` under `name`; returns its path.
    fn serve(&self, name: &str, spec: Value, secret: &str) -> String {
        let route = Route {
            namespace: "ci".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            generation: 1,
            path: generate_path(),
            secrets: vec![RouteSecret {
                value: SecretValue(secret.into()),
                expires_at: None,
            }],
            spec: serde_json::from_value(spec).expect("spec"),
            forward: Vec::new(),
            replay: None,
            expected_interval_seconds: None,
        };
        let path = route.path.clone();
        self.routes.upsert(route).expect("route compiles");
        path
    }

    async fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (StatusCode, Value) {
        let mut req = Request::post(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = self
            .router
            .clone()
            .oneshot(req.body(Body::from(body.to_vec())).expect("request"))
            .await
            .expect("answer");
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn bearer(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let auth = format!("Bearer {token}");
        self.post(
            path,
            &[
                ("content-type", "application/json"),
                ("authorization", &auth),
            ],
            br#"{"type":"deployment.finished"}"#,
        )
        .await
    }

    fn last_reject_reason(&self) -> Option<&'static str> {
        self.sink
            .rejected
            .lock()
            .expect("lock")
            .last()
            .map(|r| r.reason)
    }

    fn accepted(&self) -> usize {
        self.sink.accepted.lock().expect("lock").len()
    }
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn tok<'a>(fx: &'a Value, name: &str) -> &'a str {
    fx["tokens"][name].as_str().expect("token")
}

#[tokio::test]
async fn oidc_tokens_from_pyjwt_verify_against_a_fetched_jwks_and_bad_ones_get_precise_401s() {
    let (base, served) = key_server().await;
    let now = now();
    let Some(fx) = mint(&base, now) else { return };
    *served.jwks.lock().expect("lock") = fx["jwks"].to_string().into_bytes();
    let rx = receiver(now, remote(true));
    let path = rx.serve(
        "actions",
        json!({
            "provider": "github-actions",
            "oidc": {
                "audiences": [fx["audience"]],
                "jwksURL": format!("{base}/jwks"),
                "claims": {"repository": "example-org/checkout", "ref": "refs/heads/main"},
            },
        }),
        "generated-secret-unused-by-oidc",
    );

    for alg in ["rs256", "es256", "eddsa"] {
        let (status, body) = rx.bearer(&path, tok(&fx, alg)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{alg}: {body}");
    }
    assert_eq!(rx.accepted(), 3);
    assert_eq!(
        served.jwks_hits.load(Ordering::SeqCst),
        1,
        "one fetch, then the cache"
    );

    let cases = [
        ("expired", "token_expired"),
        ("not_yet_valid", "token_not_yet_valid"),
        ("wrong_audience", "audience_mismatch"),
        ("wrong_issuer", "issuer_mismatch"),
        ("wrong_claim", "claim_mismatch"),
        ("no_exp", "token_malformed"),
        ("hs256_with_public_key", "algorithm_not_allowed"),
        ("alg_none", "algorithm_not_allowed"),
        ("tampered", "signature_mismatch"),
        ("garbage", "token_malformed"),
    ];
    for (name, reason) in cases {
        let (status, body) = rx.bearer(&path, tok(&fx, name)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        assert_eq!(body["reason"], reason, "{name}");
        assert_eq!(rx.last_reject_reason(), Some(reason), "{name}");
    }
    let (status, body) = rx
        .post(&path, &[("content-type", "application/json")], b"{}")
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("missing_signature"))
    );
    assert_eq!(rx.accepted(), 3, "nothing refused reached the journal");

    // Key rotation: the issuer publishes rsa-2; a token signed with it refreshes the
    // cached JWKS once (the refresh interval has passed) and verifies.
    *served.jwks.lock().expect("lock") = fx["rotated_jwks"].to_string().into_bytes();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, body) = rx.bearer(&path, tok(&fx, "rotated_key")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(served.jwks_hits.load(Ordering::SeqCst), 2);
    // Unknown kids within the refresh interval do not refetch: no fetch amplification.
    for _ in 0..5 {
        let (status, body) = rx.bearer(&path, tok(&fx, "unknown_kid")).await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unknown_key_id"))
        );
    }
    assert_eq!(served.jwks_hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn inline_jwks_in_the_secret_needs_no_fetch_and_urls_off_the_issuers_host_are_refused() {
    let (base, served) = key_server().await;
    let now = now();
    let Some(fx) = mint(&base, now) else { return };
    let rx = receiver(now, remote(false));
    let inline = rx.serve(
        "inline",
        json!({
            "provider": "generic",
            "auth": "oidc",
            "oidc": {"issuer": fx["issuer"], "audiences": [fx["audience"]], "algorithms": ["ES256", "EdDSA"]},
        }),
        &fx["jwks"].to_string(),
    );
    let (status, body) = rx.bearer(&inline, tok(&fx, "es256")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // RS256 is not in this integration's algorithms.
    let (_, body) = rx.bearer(&inline, tok(&fx, "rs256")).await;
    assert_eq!(body["reason"], "algorithm_not_allowed");
    let (_, body) = rx.bearer(&inline, tok(&fx, "unknown_kid")).await;
    assert_eq!(body["reason"], "algorithm_not_allowed");

    // Without --insecure-key-urls an http JWKS URL (or one off the issuer's host) is
    // never fetched.
    let remote_url = rx.serve(
        "remote",
        json!({
            "provider": "github-actions",
            "oidc": {"audiences": [fx["audience"]], "jwksURL": format!("{base}/jwks")},
        }),
        "unused",
    );
    let (status, body) = rx.bearer(&remote_url, tok(&fx, "rs256")).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("key_url_not_allowed"))
    );
    assert_eq!(served.jwks_hits.load(Ordering::SeqCst), 0);

    // A Secret holding a broken JWKS is the operator's mistake, said precisely.
    let broken = rx.serve(
        "broken",
        json!({
            "provider": "generic",
            "auth": "oidc",
            "oidc": {"issuer": fx["issuer"], "audiences": [fx["audience"]]},
        }),
        r#"{"keys": [{"kty": "RSA", "n": "short", "e": "AQAB"}]}"#,
    );
    let (status, body) = rx.bearer(&broken, tok(&fx, "rs256")).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_secret"))
    );
}

#[tokio::test]
async fn a_hanging_or_huge_jwks_endpoint_gets_401_in_bounded_time_and_blocks_no_one_else() {
    let (base, _served) = key_server().await;
    let now = now();
    let Some(fx) = mint(&base, now) else { return };
    let rx = Arc::new(receiver(now, remote(true)));
    let spec = |url: String| {
        json!({
            "provider": "github-actions",
            "oidc": {"audiences": [fx["audience"]], "jwksURL": url},
        })
    };
    let hang = rx.serve("hang", spec(format!("{base}/hang")), "unused");
    let huge = rx.serve("huge", spec(format!("{base}/huge")), "unused");
    let junk = rx.serve("junk", spec(format!("{base}/not-a-jwks")), "unused");
    let inline = rx.serve(
        "fine",
        json!({
            "provider": "generic",
            "auth": "oidc",
            "oidc": {"issuer": fx["issuer"], "audiences": [fx["audience"]]},
        }),
        &fx["jwks"].to_string(),
    );
    let token = tok(&fx, "rs256").to_string();

    let started = Instant::now();
    let waiting = {
        let rx = rx.clone();
        let token = token.clone();
        tokio::spawn(async move { rx.bearer(&hang, &token).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Meanwhile another integration is served at once.
    let t = Instant::now();
    let (status, _) = rx.bearer(&inline, &token).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    let (status, body) = waiting.await.expect("join");
    assert_eq!(
        (status, body["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("jwks_unavailable"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    for path in [&huge, &junk] {
        let (status, body) = rx.bearer(path, &token).await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("jwks_unavailable"))
        );
    }
    // Negative cache: the failure is remembered, the next delivery does not wait again.
    let t = Instant::now();
    let rx2 = rx.clone();
    let (status, _) = rx2
        .bearer(
            &rx.serve("hang2", spec(format!("{base}/hang")), "unused"),
            &token,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "negative cache: {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn sns_messages_signed_with_cryptography_verify_confirm_and_map_cloudwatch_alarms() {
    let (base, served) = key_server().await;
    let now = now();
    let Some(fx) = mint(&base, now) else { return };
    *served.cert.lock().expect("lock") = fx["sns"]["cert_pem"]
        .as_str()
        .expect("pem")
        .as_bytes()
        .to_vec();
    let rx = receiver(now, remote(true));
    let path = rx.serve(
        "alarms",
        json!({"provider": "aws-sns", "sns": {"topicArns": [fx["sns"]["topic"]]}}),
        "unused",
    );
    let send = |name: &str| {
        let msg = &fx["sns"][name];
        let body = msg.to_string().into_bytes();
        let kind = msg["Type"].as_str().unwrap_or("").to_string();
        let rx = &rx;
        let path = &path;
        async move {
            rx.post(
                path,
                &[
                    ("content-type", "text/plain; charset=UTF-8"),
                    ("x-amz-sns-message-type", &kind),
                ],
                &body,
            )
            .await
        }
    };

    // SignatureVersion 1 (SHA1withRSA): a CloudWatch ALARM opens an incident.
    let (status, body) = send("alarm_v1").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // SignatureVersion 2 (SHA256withRSA): OK resolves the same one.
    let (status, body) = send("ok_v2").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // A message that is not JSON is a delivery without incidents.
    let (status, _) = send("plain").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    {
        let accepted = rx.sink.accepted.lock().expect("lock");
        assert_eq!(accepted.len(), 3);
        let arn = "arn:aws:cloudwatch:eu-west-1:123456789012:alarm:checkout-5xx";
        assert_eq!(
            accepted[0].delivery_id.as_deref(),
            Some("11111111-1111-1111-1111-111111111111")
        );
        assert_eq!(accepted[0].incidents.len(), 1);
        assert_eq!(accepted[0].incidents[0].id, arn);
        assert!(!accepted[0].incidents[0].resolve);
        assert_eq!(accepted[1].incidents.len(), 1);
        assert!(accepted[1].incidents[0].resolve);
        assert!(accepted[2].incidents.is_empty());
    }

    // SubscriptionConfirmation: confirmed by fetching SubscribeURL, answered 200, an
    // Event says so; nothing journaled.
    let (status, body) = send("confirm").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("confirmed"))
    );
    assert_eq!(served.subscribe_hits.load(Ordering::SeqCst), 1);
    let events = rx.board.take_events("ci/alarms");
    assert!(
        events
            .iter()
            .any(|e| e.reason == "SnsSubscriptionConfirmed" && !e.warning),
        "{events:?}"
    );
    assert_eq!(rx.accepted(), 3);

    let cases = [
        ("other_topic", "topic_not_allowed"),
        ("tampered", "signature_mismatch"),
        ("hanging_cert", "certificate_unavailable"),
        ("huge_cert", "certificate_unavailable"),
        ("bad_cert", "certificate_unavailable"),
    ];
    for (name, reason) in cases {
        let (status, body) = send(name).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        assert_eq!(body["reason"], reason, "{name}");
        assert_eq!(rx.last_reject_reason(), Some(reason), "{name}");
    }
    let (status, body) = rx
        .post(&path, &[("content-type", "text/plain")], b"not json")
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("malformed_body"))
    );
    assert_eq!(rx.accepted(), 3);

    // Without --insecure-key-urls, a certificate anywhere but https://sns.<region>.amazonaws.com
    // is refused before any fetch (the local test server included).
    let strict = receiver(now, remote(false));
    let path = strict.serve("strict", json!({"provider": "aws-sns"}), "unused");
    for name in ["foreign_cert", "alarm_v1"] {
        let (status, body) = strict
            .post(
                &path,
                &[("content-type", "text/plain; charset=UTF-8")],
                fx["sns"][name].to_string().as_bytes(),
            )
            .await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("key_url_not_allowed")),
            "{name}"
        );
    }
}

// ----- the CLI ---------------------------------------------------------------------------

fn hookwarden(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hookwarden"))
        .args(args)
        .output()
        .expect("run hookwarden")
}

fn write(dir: &Path, name: &str, content: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).expect("write");
    p.to_str().expect("utf-8 path").to_string()
}

#[tokio::test]
async fn cli_sign_and_verify_cover_oidc_and_sns() {
    let (base, _served) = key_server().await;
    let now = now();
    let Some(fx) = mint(&base, now) else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let jwks = write(d, "jwks.json", fx["jwks"].to_string().as_bytes());
    let body = write(d, "body.json", br#"{"type":"deployment.finished"}"#);
    let now_s = now.to_string();
    let aud = fx["audience"].as_str().expect("aud");
    let oidc = [
        "--provider",
        "github-actions",
        "--audience",
        aud,
        "--claim",
        "repository=example-org/checkout",
    ];

    // PyJWT's tokens, verified offline against the JWKS file.
    let verify_token = |token: &str| {
        let header = format!("Authorization: Bearer {token}");
        let mut args = vec!["verify"];
        args.extend_from_slice(&oidc);
        args.extend_from_slice(&[
            "--key-file",
            &jwks,
            "--body-file",
            &body,
            "--header",
            &header,
            "--now",
            &now_s,
        ]);
        hookwarden(&args)
    };
    let ok = verify_token(tok(&fx, "eddsa"));
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let expired = verify_token(tok(&fx, "expired"));
    assert_eq!(expired.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&expired.stdout).contains("[token_expired]"),
        "{expired:?}"
    );

    // `sign` with each private key → `verify` accepts it.
    for (key, kid) in [("rsa", "rsa-1"), ("ec", "ec-1"), ("ed", "ed-1")] {
        let key_file = write(
            d,
            &format!("{key}.pem"),
            fx["keys"][key].as_str().expect("pem").as_bytes(),
        );
        let mut args = vec!["sign"];
        args.extend_from_slice(&oidc);
        args.extend_from_slice(&[
            "--private-key-file",
            &key_file,
            "--key-id",
            kid,
            "--body-file",
            &body,
            "--timestamp",
            &now_s,
        ]);
        let signed = hookwarden(&args);
        assert_eq!(signed.status.code(), Some(0), "{signed:?}");
        let line = String::from_utf8_lossy(&signed.stdout).trim().to_string();
        let token = line
            .strip_prefix("Authorization: Bearer ")
            .expect("bearer line");
        let ok = verify_token(token);
        assert_eq!(ok.status.code(), Some(0), "{key}: {ok:?}");
    }

    // SNS: the library's v1 message verifies against the certificate file; `sign`
    // (SignatureVersion 2) with the same key produces a body that verifies too.
    let cert = write(
        d,
        "cert.pem",
        fx["sns"]["cert_pem"].as_str().expect("pem").as_bytes(),
    );
    let sns_verify = |file: &str| {
        hookwarden(&[
            "verify",
            "--provider",
            "aws-sns",
            "--key-file",
            &cert,
            "--body-file",
            file,
            "--now",
            &now_s,
        ])
    };
    let alarm = write(
        d,
        "alarm.json",
        fx["sns"]["alarm_v1"].to_string().as_bytes(),
    );
    let ok = sns_verify(&alarm);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let tampered = write(
        d,
        "tampered.json",
        fx["sns"]["tampered"].to_string().as_bytes(),
    );
    let bad = sns_verify(&tampered);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stdout).contains("[signature_mismatch]"));

    let mut unsigned = fx["sns"]["plain"].clone();
    unsigned["Signature"] = json!("");
    let unsigned = write(d, "unsigned.json", unsigned.to_string().as_bytes());
    let sns_key = write(
        d,
        "sns.pem",
        fx["keys"]["sns"].as_str().expect("pem").as_bytes(),
    );
    let signed = hookwarden(&[
        "sign",
        "--provider",
        "aws-sns",
        "--private-key-file",
        &sns_key,
        "--body-file",
        &unsigned,
    ]);
    assert_eq!(signed.status.code(), Some(0), "{signed:?}");
    let text = String::from_utf8_lossy(&signed.stdout).to_string();
    let (headers, signed_body) = text.split_once("\n\n").expect("headers, blank line, body");
    assert!(
        headers.contains("x-amz-sns-message-type: Notification"),
        "{headers}"
    );
    let signed_file = write(d, "signed.json", signed_body.trim().as_bytes());
    let ok = sns_verify(&signed_file);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
}
