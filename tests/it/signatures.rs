//! The real `hookwarden` binary: `verify` / `sign` exit codes and output, and
//! `send-test` against a local HTTP listener.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use hookwarden::crd::ProviderKind;
use hookwarden::domain::signature::{self, Delivery, Scheme};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const BIN: &str = env!("CARGO_BIN_EXE_hookwarden");

fn hookwarden(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run hookwarden")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn body_file(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).expect("create body file");
    f.write_all(body).expect("write body file");
    path
}

const GH_SECRET: &str = "It's a Secret to Everybody";
const GH_SIG: &str =
    "X-Hub-Signature-256: sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

#[test]
fn verify_accepts_githubs_published_example() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = body_file(dir.path(), "body", b"Hello, World!");
    let out = hookwarden(&[
        "verify",
        "--provider",
        "github",
        "--secret",
        GH_SECRET,
        "--body-file",
        body.to_str().expect("path"),
        "--header",
        GH_SIG,
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout(&out).starts_with("valid"), "{}", stdout(&out));
}

#[test]
fn verify_reports_which_secret_matched_during_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = body_file(dir.path(), "body", b"Hello, World!");
    let path = body.to_str().expect("path");
    let out = hookwarden(&[
        "verify",
        "--provider",
        "github",
        "--secret",
        "new-one",
        "--secret",
        GH_SECRET,
        "--body-file",
        path,
        "--header",
        GH_SIG,
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout(&out).contains("#2 of 2"), "{}", stdout(&out));
}

#[test]
fn verify_exits_1_with_a_reason_for_bad_deliveries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = body_file(dir.path(), "good", b"Hello, World!");
    let tampered = body_file(dir.path(), "tampered", b"Hello, World?");
    let good = good.to_str().expect("path");
    let tampered = tampered.to_str().expect("path");
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--secret",
                GH_SECRET,
                "--body-file",
                tampered,
                "--header",
                GH_SIG,
            ],
            "signature_mismatch",
        ),
        (
            &["--secret", "wrong", "--body-file", good, "--header", GH_SIG],
            "signature_mismatch",
        ),
        (
            &["--secret", GH_SECRET, "--body-file", good],
            "missing_signature",
        ),
        (
            &[
                "--secret",
                GH_SECRET,
                "--body-file",
                good,
                "--header",
                "X-Hub-Signature-256: sha256=nothex",
            ],
            "malformed_signature",
        ),
    ];
    for (args, code) in cases {
        let mut all = vec!["verify", "--provider", "github"];
        all.extend_from_slice(args);
        let out = hookwarden(&all);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let text = stdout(&out);
        assert!(
            text.starts_with("invalid: ") && text.contains(code),
            "{args:?}: {text}"
        );
        assert!(!text.contains(GH_SECRET), "the secret leaked: {text}");
    }
}

#[test]
fn verify_judges_timestamps_at_now() {
    // Slack's published example, signed at 1531420618.
    let dir = tempfile::tempdir().expect("tempdir");
    let body = body_file(dir.path(), "body", b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c");
    let path = body.to_str().expect("path");
    let run = |now: &str| {
        hookwarden(&[
            "verify",
            "--provider",
            "slack",
            "--secret",
            "8f742231b10e8888abcd99yyyzzz85a5",
            "--body-file",
            path,
            "--header",
            "X-Slack-Request-Timestamp: 1531420618",
            "--header",
            "X-Slack-Signature: v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
            "--now",
            now,
        ])
    };
    assert_eq!(run("1531420618").status.code(), Some(0));
    let stale = run("1531420919");
    assert_eq!(stale.status.code(), Some(1));
    assert!(
        stdout(&stale).contains("timestamp_stale"),
        "{}",
        stdout(&stale)
    );
    let future = run("1531420317");
    assert_eq!(future.status.code(), Some(1));
    assert!(
        stdout(&future).contains("timestamp_future"),
        "{}",
        stdout(&future)
    );
}

#[test]
fn verify_exits_2_on_usage_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = body_file(dir.path(), "body", b"{}");
    let path = body.to_str().expect("path");
    let missing = dir.path().join("absent");
    let cases: [Vec<&str>; 5] = [
        vec![
            "verify",
            "--provider",
            "nosuch",
            "--secret",
            "s",
            "--body-file",
            path,
        ],
        vec![
            "verify",
            "--provider",
            "github",
            "--secret",
            "s",
            "--body-file",
            missing.to_str().expect("path"),
        ],
        vec![
            "verify",
            "--provider",
            "github",
            "--secret",
            "s",
            "--body-file",
            path,
            "--header",
            "no colon here",
        ],
        vec![
            "verify",
            "--provider",
            "twilio",
            "--secret",
            "s",
            "--body-file",
            path,
            "--header",
            "X-Twilio-Signature: abc=",
        ],
        vec!["verify", "--provider", "github", "--body-file", path],
    ];
    for args in cases {
        let out = hookwarden(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}

/// `sign` prints `Name: value` lines; feeding them back to `verify` is valid, and a
/// moved clock or a changed body is not.
#[test]
fn sign_is_the_inverse_of_verify_for_every_preset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = br#"{"webhookTimestamp":1700000000000,"type":"Issue","id":"evt_1"}"#;
    let body = body_file(dir.path(), "body", json);
    let other = body_file(
        dir.path(),
        "other",
        br#"{"webhookTimestamp":1700000000000,"type":"Issue","id":"evt_2"}"#,
    );
    let body = body.to_str().expect("path");
    let other = other.to_str().expect("path");
    let url = "https://hooks.example.com/hooks/abc?bodySHA256=0000";
    for provider in ProviderKind::ALL {
        // Private-key senders (OIDC, SNS) are covered by tests/it/oidc_sns.rs.
        if matches!(
            provider,
            ProviderKind::Generic
                | ProviderKind::GooglePubsub
                | ProviderKind::GithubActions
                | ProviderKind::AwsSns
        ) {
            continue;
        }
        let p = provider.as_str();
        // Asymmetric schemes: `sign` takes the private key, `verify` the public one.
        let (signing_secret, secret) = match provider {
            ProviderKind::StandardWebhooks | ProviderKind::Svix => (
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
            ProviderKind::Discord => (
                "6465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f80818283",
                "0bbc346a57667c380120bd9c7fd7e51d2c5fdfea37cd2f5bf405b2c6bf6f2d78",
            ),
            ProviderKind::Sendgrid => (
                "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg0S8NU4NxliBZyVD9k2jN857hrm8DeI9ccKkLTK/0BK2hRANCAARjZfJ0c+Vw4mqCdLMWKMFajqZR/C+MggDy0S5TO9fLLwORaScGCryCFPrGGXoFrplcjaAFczZGp3PBvOlyGs2k",
                "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEY2XydHPlcOJqgnSzFijBWo6mUfwvjIIA8tEuUzvXyy8DkWknBgq8ghT6xhl6Ba6ZXI2gBXM2RqdzwbzpchrNpA==",
            ),
            _ => (
                "0123456789abcdef0123456789abcdef",
                "0123456789abcdef0123456789abcdef",
            ),
        };
        let mut sign = vec![
            "sign",
            "--provider",
            p,
            "--secret",
            signing_secret,
            "--body-file",
            body,
            "--timestamp",
            "1700000000",
            "--id",
            "msg_1",
        ];
        let twilio_url =
            signature::twilio_url_with_body_hash("https://hooks.example.com/hooks/abc", json);
        if provider == ProviderKind::Twilio {
            sign.extend_from_slice(&["--url", &twilio_url]);
        }
        let signed = hookwarden(&sign);
        assert_eq!(signed.status.code(), Some(0), "{p}: {signed:?}");
        let lines: Vec<String> = stdout(&signed).lines().map(str::to_string).collect();
        assert!(
            !lines.is_empty() && lines.iter().all(|l| l.contains(": ")),
            "{p}: {lines:?}"
        );
        let verify = |file: &str, now: &str| {
            let mut args = vec![
                "verify",
                "--provider",
                p,
                "--secret",
                secret,
                "--body-file",
                file,
                "--now",
                now,
                "--header",
                "Content-Type: application/json",
            ];
            for l in &lines {
                args.extend_from_slice(&["--header", l]);
            }
            if provider == ProviderKind::Twilio {
                args.extend_from_slice(&["--url", &twilio_url]);
            } else {
                args.extend_from_slice(&["--url", url]);
            }
            hookwarden(&args)
        };
        let ok = verify(body, "1700000000");
        assert_eq!(ok.status.code(), Some(0), "{p}: {}", stdout(&ok));
        let body_signed = !matches!(
            provider,
            ProviderKind::Datadog
                | ProviderKind::Alertmanager
                | ProviderKind::Gitlab
                | ProviderKind::AzureEventGrid
        );
        if body_signed {
            let changed = verify(other, "1700000000");
            assert_eq!(
                changed.status.code(),
                Some(1),
                "{p}: changed body accepted: {}",
                stdout(&changed)
            );
        }
        let timestamped = matches!(
            provider,
            ProviderKind::Stripe
                | ProviderKind::Slack
                | ProviderKind::StandardWebhooks
                | ProviderKind::Svix
                | ProviderKind::Grafana
                | ProviderKind::Zendesk
                | ProviderKind::Linear
                | ProviderKind::Discord
                | ProviderKind::Sendgrid
                | ProviderKind::Zoom
                | ProviderKind::Paddle
        );
        if timestamped {
            let late = verify(body, "1700000400");
            assert_eq!(late.status.code(), Some(1), "{p}: stale delivery accepted");
            assert!(
                stdout(&late).contains("timestamp_stale"),
                "{p}: {}",
                stdout(&late)
            );
        }
    }
}

#[test]
fn generic_scheme_comes_from_a_spec_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = body_file(
        dir.path(),
        "whi.yaml",
        br#"apiVersion: hookwarden.dev/v1alpha1
kind: WebhookIntegration
metadata: {name: acme}
spec:
  provider: generic
  signature:
    header: X-Acme-Signature
    algorithm: sha512
    encoding: base64
    prefix: "sig="
    signedContent: "{timestamp}.{id}.{body}"
    timestampHeader: X-Acme-Timestamp
    idHeader: X-Acme-Id
"#,
    );
    let body = body_file(dir.path(), "body", br#"{"a":1}"#);
    let spec = spec.to_str().expect("path");
    let body = body.to_str().expect("path");
    let out = hookwarden(&[
        "verify",
        "--spec",
        spec,
        "--secret",
        "generic-secret",
        "--body-file",
        body,
        "--now",
        "1700000000",
        "--header",
        "X-Acme-Signature: sig=ZjLhEACnAswEsDgmRwoMgigwkHmQ+v4zv5HZzV4f88YITzSYhFP7zEFeP5tyXjLoPga/T0snU8NCJigY6wWHMg==",
        "--header",
        "X-Acme-Timestamp: 1700000000",
        "--header",
        "X-Acme-Id: msg_1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let signed = hookwarden(&[
        "sign",
        "--spec",
        spec,
        "--secret",
        "generic-secret",
        "--body-file",
        body,
        "--timestamp",
        "1700000000",
        "--id",
        "msg_1",
    ]);
    assert!(
        stdout(&signed).contains("x-acme-signature: sig=ZjLhEACnAswEs"),
        "{}",
        stdout(&signed)
    );
}

/// One request captured by [`serve_once`].
struct Captured {
    head: String,
    body: Vec<u8>,
}

/// Accepts one connection on 127.0.0.1, answers `status`, returns what it received.
async fn serve_once(status: &'static str) -> (String, tokio::task::JoinHandle<Option<Captured>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = tokio::spawn(async move {
        let (mut sock, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
            .await
            .ok()?
            .ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head_end, length) = loop {
            let n = sock.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..pos]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (pos + 4, length);
            }
        };
        while buf.len() < head_end + length {
            let n = sock.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: 8\r\nconnection: close\r\n\r\nreceived"
        );
        sock.write_all(answer.as_bytes()).await.ok()?;
        Some(Captured {
            head: String::from_utf8_lossy(&buf[..head_end]).into_owned(),
            body: buf[head_end..].to_vec(),
        })
    });
    (format!("http://{addr}/hooks/test"), handle)
}

fn header_map(head: &str) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for line in head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':')
            && let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.trim().as_bytes()),
                http::HeaderValue::from_str(v.trim()),
            )
        {
            map.append(k, v);
        }
    }
    map
}

async fn send_test(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .output()
            .expect("run hookwarden")
    })
    .await
    .expect("join")
}

#[tokio::test]
async fn send_test_delivers_a_signed_sample_and_prints_the_answer() {
    let (url, server) = serve_once("202 Accepted").await;
    let out = send_test(
        [
            "send-test",
            &url,
            "--provider",
            "datadog",
            "--secret",
            "dd-token",
            "--resolve",
            "--incident-id",
            "inc-42",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("202") && text.contains("received"), "{text}");
    let got = server.await.expect("join").expect("request received");
    let headers = header_map(&got.head);
    let delivery = Delivery {
        method: "POST",
        url: &url,
        headers: &headers,
        body: &got.body,
    };
    let verdict = signature::verify(
        &Scheme::preset(ProviderKind::Datadog),
        &["dd-token"],
        &delivery,
        0,
    );
    assert!(verdict.is_valid(), "{verdict:?}");
    let body: serde_json::Value = serde_json::from_slice(&got.body).expect("json body");
    assert_eq!(body["alert_transition"], "Recovered");
    assert_eq!(body["aggreg_key"], "inc-42");
}

#[tokio::test]
async fn send_test_signs_exactly_as_the_provider_would() {
    const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    // (provider, what send-test signs with, what the integration verifies with)
    for (provider, signing_secret, secret) in [
        (ProviderKind::Github, "s3cret", "s3cret"),
        (ProviderKind::Stripe, "s3cret", "s3cret"),
        (ProviderKind::Twilio, "s3cret", "s3cret"),
        (ProviderKind::Svix, WHSEC, WHSEC),
        (
            ProviderKind::StandardWebhooks,
            "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            "whpk_A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=",
        ),
        (
            ProviderKind::Discord,
            "6465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f80818283",
            "0bbc346a57667c380120bd9c7fd7e51d2c5fdfea37cd2f5bf405b2c6bf6f2d78",
        ),
        (
            ProviderKind::Sendgrid,
            "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg0S8NU4NxliBZyVD9k2jN857hrm8DeI9ccKkLTK/0BK2hRANCAARjZfJ0c+Vw4mqCdLMWKMFajqZR/C+MggDy0S5TO9fLLwORaScGCryCFPrGGXoFrplcjaAFczZGp3PBvOlyGs2k",
            "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEY2XydHPlcOJqgnSzFijBWo6mUfwvjIIA8tEuUzvXyy8DkWknBgq8ghT6xhl6Ba6ZXI2gBXM2RqdzwbzpchrNpA==",
        ),
        (ProviderKind::Zoom, "s3cret", "s3cret"),
        (ProviderKind::Twitch, "s3cret", "s3cret"),
        (ProviderKind::Paddle, "s3cret", "s3cret"),
        (ProviderKind::Forgejo, "s3cret", "s3cret"),
        (ProviderKind::AzureEventGrid, "s3cret", "s3cret"),
    ] {
        let (url, server) = serve_once("200 OK").await;
        let out = send_test(vec![
            "send-test".into(),
            url.clone(),
            "--provider".into(),
            provider.to_string(),
            "--secret".into(),
            signing_secret.into(),
        ])
        .await;
        assert_eq!(out.status.code(), Some(0), "{provider}: {out:?}");
        let got = server.await.expect("join").expect("request received");
        let headers = header_map(&got.head);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let delivery = Delivery {
            method: "POST",
            url: &url,
            headers: &headers,
            body: &got.body,
        };
        let verdict = signature::verify(&Scheme::preset(provider), &[secret], &delivery, now);
        assert!(verdict.is_valid(), "{provider}: {verdict:?}");
    }
}

#[tokio::test]
async fn send_test_fails_on_non_2xx_and_on_connection_errors() {
    let (url, server) = serve_once("500 Internal Server Error").await;
    let out = send_test(
        [
            "send-test",
            &url,
            "--provider",
            "alertmanager",
            "--secret",
            "t",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout(&out).contains("500"), "{}", stdout(&out));
    let _ = server.await;

    // Nothing listens on this port any more.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let url = format!("http://{closed}/hooks/x");
    let out = send_test(
        [
            "send-test",
            &url,
            "--provider",
            "github",
            "--secret",
            "t",
            "--timeout-seconds",
            "5",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

#[test]
fn verify_checks_twilio_against_the_url_it_called() {
    // Twilio's published example: auth token 12345.
    let dir = tempfile::tempdir().expect("tempdir");
    let body = body_file(
        dir.path(),
        "body",
        b"CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234&From=%2B12349013030&To=%2B18005551212",
    );
    let path = body.to_str().expect("path");
    let run = |url: &str| {
        hookwarden(&[
            "verify",
            "--provider",
            "twilio",
            "--secret",
            "12345",
            "--body-file",
            path,
            "--url",
            url,
            "--header",
            "Content-Type: application/x-www-form-urlencoded",
            "--header",
            "X-Twilio-Signature: 0/KCTR6DLpKmkAf8muzZqo1nDgQ=",
        ])
    };
    assert_eq!(
        run("https://mycompany.com/myapp.php?foo=1&bar=2")
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        run("https://mycompany.com:443/myapp.php?foo=1&bar=2")
            .status
            .code(),
        Some(0)
    );
    let other = run("https://mycompany.com/myapp.php?foo=1&bar=3");
    assert_eq!(other.status.code(), Some(1));
    assert!(
        stdout(&other).contains("signature_mismatch"),
        "{}",
        stdout(&other)
    );
}

/// Exit 1 is "the thing checked is invalid": a spec the receivers would refuse is refused
/// by `verify --spec` with the resolver's own words; exit 2 stays for usage errors.
#[test]
fn a_spec_the_receivers_would_refuse_exits_1_and_an_unreadable_one_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = body_file(
        dir.path(),
        "whi.yaml",
        b"kind: WebhookIntegration\nspec:\n  provider: generic\n  signature: {header: X-Sig, algorithm: sha256, encoding: hex, idHeader: X-Id}\n",
    );
    let body = body_file(dir.path(), "body", b"{}");
    let (spec, body) = (spec.to_str().expect("path"), body.to_str().expect("path"));
    let out = hookwarden(&[
        "verify",
        "--spec",
        spec,
        "--secret",
        "s",
        "--body-file",
        body,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "invalid: spec: spec.signature.idHeader is set but signedContent does not use {id}"
        ),
        "{stderr}"
    );
    let missing = dir.path().join("nope.yaml");
    let out = hookwarden(&[
        "verify",
        "--spec",
        missing.to_str().expect("path"),
        "--secret",
        "s",
        "--body-file",
        body,
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
