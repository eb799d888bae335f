//! Forwarded requests verify with the **official** Standard Webhooks library, not only
//! with our own verifier: the Python `standardwebhooks` package from PyPI, pinned in
//! scripts/check-chart.sh and installed there into the venv at `HOOKWARDEN_VENV`
//! (default `~/.cache/hookwarden/venv`).
//!
//! The test signs a few requests (each format that is signed, JSON and binary bodies,
//! a published and a freshly generated key), writes them to a file, and has the library
//! verify each one — and reject a tampered body and a wrong key, so a verifier that
//! accepted anything would fail here. Without the venv or the package the test says so
//! and passes, except under `CI=true`, where that is a failure.

use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hookwarden::domain::forward::{
    DeliveryFacts, Event, Format, IncidentChange, IncidentFacts, IntegrationRef, SigningKey,
    render, sign_request,
};
use hookwarden::domain::incident::{IncidentState, Severity};
use hookwarden::domain::secret::generate_secret;
use hookwarden::domain::signature::ProviderKind;
use serde_json::{Value, json};

const PUBLISHED_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// Verifies every case; prints one line per case; exits 1 on any surprise.
const VERIFY_PY: &str = r#"
import base64, json, sys
from importlib.metadata import version
from standardwebhooks import Webhook, WebhookVerificationError

print("standardwebhooks", version("standardwebhooks"))
failed = 0
for case in json.load(open(sys.argv[1])):
    body = base64.b64decode(case["body"])
    try:
        Webhook(case["secret"]).verify(body, case["headers"], json_parse=False)
        got = "valid"
    except WebhookVerificationError as e:
        got = "invalid (%s)" % e
    ok = got.startswith(case["expect"])
    failed += not ok
    print("ok  " if ok else "FAIL", case["name"], "->", got)
sys.exit(1 if failed else 0)
"#;

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// The venv's python, if it has the package.
fn python() -> Option<PathBuf> {
    let venv = std::env::var_os("HOOKWARDEN_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hookwarden/venv"))
        });
    let problem = match &venv {
        None => "neither HOOKWARDEN_VENV nor HOME is set".to_string(),
        Some(v) => {
            let py = v.join("bin/python");
            let has_package = Command::new(&py)
                .args(["-c", "import standardwebhooks"])
                .output()
                .is_ok_and(|o| o.status.success());
            if has_package {
                return Some(py);
            }
            format!(
                "{} cannot import standardwebhooks (run scripts/check-chart.sh, which installs its pinned packages there)",
                py.display()
            )
        }
    };
    assert!(
        !in_ci(),
        "official Standard Webhooks library check cannot run under CI=true: {problem}"
    );
    eprintln!(
        "SKIPPED: forwarded signatures not checked with the official standardwebhooks library: {problem}"
    );
    None
}

fn case(name: &str, secret: &str, body: &[u8], headers: &http::HeaderMap, expect: &str) -> Value {
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), json!(v.to_str().ok()?))))
        .collect();
    json!({
        "name": name,
        "secret": secret,
        "body": STANDARD.encode(body),
        "headers": headers,
        "expect": expect,
    })
}

#[test]
fn forwarded_signatures_verify_with_the_official_python_library() {
    let Some(python) = python() else { return };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let now = i64::try_from(now).expect("seconds fit i64");
    let integration = IntegrationRef {
        namespace: "team-a",
        name: "alerts",
    };
    let json_body = br#"{"action": "opened", "number": 12345678901234567890}"#;
    const BINARY_BODY: &[u8] = &[0, 0xff, 0xfe, b'\n', b'.', 0x80];
    let delivery = |content_type: &'static str, body: &'static [u8]| DeliveryFacts {
        id: "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        event: Some("pull_request"),
        provider: "github",
        received_at_ms: now * 1000,
        content_type: Some(content_type),
        body,
        meta_headers: &[],
    };
    let incident = Event::Incident {
        change: IncidentChange::Opened,
        at_ms: now * 1000,
        incident: IncidentFacts {
            id: "fp-1",
            title: "Disk full on db-1 — ünïcödé",
            severity: Severity::High,
            state: IncidentState::Open,
            opened_at_ms: Some(now * 1000),
            resolved_at_ms: None,
            link: None,
            order: None,
        },
    };
    let generated = generate_secret(ProviderKind::StandardWebhooks);
    let events = [
        (
            "delivery/standard-webhooks",
            Event::Delivery(delivery("application/json", json_body)),
            Format::StandardWebhooks,
        ),
        (
            "delivery/raw-json",
            Event::Delivery(delivery("application/json", json_body)),
            Format::Raw,
        ),
        (
            "delivery/raw-binary",
            Event::Delivery(delivery("application/octet-stream", BINARY_BODY)),
            Format::Raw,
        ),
        (
            "delivery/cloudevents",
            Event::Delivery(delivery("application/json", json_body)),
            Format::CloudEvents,
        ),
        (
            "incident/standard-webhooks",
            incident,
            Format::StandardWebhooks,
        ),
        ("incident/cloudevents", incident, Format::CloudEvents),
    ];

    let mut cases = Vec::new();
    for (secret_name, secret) in [
        ("published", PUBLISHED_SECRET),
        ("generated", generated.as_str()),
    ] {
        let key = SigningKey::parse(secret).expect("usable key");
        for (i, (name, event, format)) in events.iter().enumerate() {
            let id = format!("evt_{secret_name}_{i}");
            let rendered = render(event, *format, integration, &id).expect("render");
            let req = sign_request(&rendered, Some(&key), &id, now, &[]).expect("sign");
            let label = format!("{name} ({secret_name} key)");
            cases.push(case(&label, secret, &req.body, &req.headers, "valid"));
            if i == 0 {
                let mut tampered = req.body.to_vec();
                tampered.push(b' ');
                cases.push(case(
                    &format!("{label}, body changed"),
                    secret,
                    &tampered,
                    &req.headers,
                    "invalid",
                ));
                cases.push(case(
                    &format!("{label}, other key"),
                    OTHER_SECRET,
                    &req.body,
                    &req.headers,
                    "invalid",
                ));
            }
        }
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("cases.json");
    std::fs::write(&file, serde_json::to_vec(&cases).expect("json")).expect("write cases");
    let out = Command::new(&python)
        .args(["-c", VERIFY_PY])
        .arg(&file)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the official library disagreed:\n{stdout}"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        cases.len(),
        "every case was checked"
    );
}
