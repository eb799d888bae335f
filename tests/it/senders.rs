//! Issue 19's senders end to end: a running `hookwarden standalone` on 127.0.0.1 gets
//! deliveries and handshakes signed by the providers' own libraries from PyPI where they
//! exist (PyNaCl for Discord and Standard Webhooks `v1a`, `cryptography` for SendGrid
//! with SendGrid's SDK confirming the signature, paddle-python-sdk's own HMAC for
//! Paddle; Python `hmac` for Zoom, Twitch and Gitea, which publish no SDK for it), and
//! `hookwarden sign`'s output is checked by those same libraries (SendGrid's
//! `EventWebhook`, Paddle's `PaddleSignature.verify`, PyNaCl's `VerifyKey`).
//!
//! Needs the venv of scripts/check-chart.sh (`HOOKWARDEN_VENV`, default
//! `~/.cache/hookwarden/venv`) with its pinned packages; without them the test says so
//! and passes, except under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::standalone::{Standalone, post_raw, wait_for_status};

const BIN: &str = env!("CARGO_BIN_EXE_hookwarden");

// Test keys (not secrets of anything): an ed25519 seed for Discord and one for Standard
// Webhooks, a P-256 key pair for SendGrid (the same as src/domain/signature/tests.rs).
const DISCORD_SEED: &str = "6465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f80818283";
const DISCORD_PUB: &str = "0bbc346a57667c380120bd9c7fd7e51d2c5fdfea37cd2f5bf405b2c6bf6f2d78";
const WHSK: &str = "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const WHPK: &str = "whpk_A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=";
const SG_PRIV: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg0S8NU4NxliBZyVD9k2jN857hrm8DeI9ccKkLTK/0BK2hRANCAARjZfJ0c+Vw4mqCdLMWKMFajqZR/C+MggDy0S5TO9fLLwORaScGCryCFPrGGXoFrplcjaAFczZGp3PBvOlyGs2k";
const SG_PUB: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEY2XydHPlcOJqgnSzFijBWo6mUfwvjIIA8tEuUzvXyy8DkWknBgq8ghT6xhl6Ba6ZXI2gBXM2RqdzwbzpchrNpA==";
const PADDLE_SECRET: &str =
    "pdl_ntfset_01gkpjp8bkm3tm53kdgkx6sms7_6h3qd3uFSi9YCD3OLYAShQI90XTI5vEI";
const ZOOM_SECRET: &str = "zoom-secret-token-1";
const TWITCH_SECRET: &str = "twitch-subscription-secret";
const AZURE_KEY: &str = "event-grid-key-1";
const GITEA_SECRET: &str = "gitea-secret";
const BEARER: &str = "generic-bearer-token";

/// Builds the cases: each request signed now by the provider's library, with the answer
/// hookwarden must give. Also checks `hookwarden sign` output with the same libraries.
const CASES_PY: &str = r#"
import base64, hashlib, hmac, json, sys, time
import nacl.signing
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid.helpers.eventwebhook import EventWebhook
from paddle_billing.Notifications.PaddleSignature import PaddleSignature
from paddle_billing.Notifications.Secret import Secret

cfg = json.load(open(sys.argv[1]))
now = str(int(time.time()))
cases = []
def case(name, integration, headers, body, status, contains="", query=""):
    headers = dict(headers, **{"Content-Type": "application/json"})
    cases.append(dict(name=name, integration=integration, headers=headers, body=body,
                      status=status, contains=contains, query=query))
def hexmac(key, msg):
    return hmac.new(key.encode(), msg.encode(), hashlib.sha256).hexdigest()

# Discord: PyNaCl, as in Discord's own verification example.
dsk = nacl.signing.SigningKey(bytes.fromhex(cfg["discord_seed"]))
def discord(body):
    return {"X-Signature-Ed25519": dsk.sign((now + body).encode()).signature.hex(),
            "X-Signature-Timestamp": now}
ping = json.dumps({"id": "1", "application_id": "2", "type": 1, "version": 1, "token": "t"})
case("discord PING", "discord", discord(ping), ping, 200, '{"type":1}')
cmd = json.dumps({"id": "3", "type": 2, "data": {"name": "incident"}})
case("discord command", "discord", discord(cmd), cmd, 202)
case("discord tampered", "discord", discord(cmd), cmd.replace("incident", "incidenT"), 401)

# Standard Webhooks v1a: ed25519 over {id}.{timestamp}.{body}.
wsk = nacl.signing.SigningKey(base64.b64decode(cfg["whsk"][len("whsk_"):]))
def sw(body, msg_id, before=""):
    sig = base64.b64encode(wsk.sign(f"{msg_id}.{now}.{body}".encode()).signature).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": now,
            "webhook-signature": (before + " " if before else "") + "v1a," + sig}
inv = json.dumps({"type": "invoice.paid", "data": {"id": "inv_1"}})
case("v1a", "standard", sw(inv, "msg_1"), inv, 202)
case("v1 (wrong) then v1a", "standard",
     sw(inv, "msg_2", "v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU="), inv, 202)
case("v1a over another id", "standard", dict(sw(inv, "msg_3"), **{"webhook-id": "msg_4"}), inv, 401)

# SendGrid: ECDSA P-256 over timestamp + body; SendGrid's SDK must accept it first.
sk = serialization.load_der_private_key(base64.b64decode(cfg["sendgrid_priv"]), None)
events = json.dumps([{"email": "a@example.com", "event": "bounce", "sg_event_id": "sg1",
                      "timestamp": int(now)}])
sig = base64.b64encode(sk.sign((now + events).encode(), ec.ECDSA(hashes.SHA256()))).decode()
assert EventWebhook(cfg["sendgrid_pub"]).verify_signature(events, sig, now)
sg = {"X-Twilio-Email-Event-Webhook-Signature": sig, "X-Twilio-Email-Event-Webhook-Timestamp": now}
case("sendgrid", "sendgrid", sg, events, 202)
case("sendgrid tampered", "sendgrid", sg, events.replace("bounce", "open"), 401)

# Paddle: the SDK's own HMAC.
pb = json.dumps({"event_id": "evt_1", "event_type": "subscription.activated", "data": {}})
h1 = PaddleSignature.calculate_hmac(cfg["paddle_secret"], f"{now}:{pb}".encode()).hexdigest()
case("paddle", "paddle", {"Paddle-Signature": f"ts={now};h1={h1}"}, pb, 202)
case("paddle stale", "paddle", {"Paddle-Signature": f"ts={int(now) - 60};h1=" +
     PaddleSignature.calculate_hmac(cfg["paddle_secret"], f"{int(now) - 60}:{pb}".encode()).hexdigest()}, pb, 401)

# Zoom: endpoint.url_validation, signed like every Zoom request.
zb = json.dumps({"payload": {"plainToken": "qgg8vlvZRS6UYooatFL8Aw"}, "event_ts": int(now) * 1000,
                 "event": "endpoint.url_validation"})
zh = {"x-zm-signature": "v0=" + hexmac(cfg["zoom_secret"], f"v0:{now}:{zb}"), "x-zm-request-timestamp": now}
case("zoom url_validation", "zoom", zh, zb, 200,
     '"encryptedToken":"%s"' % hexmac(cfg["zoom_secret"], "qgg8vlvZRS6UYooatFL8Aw"))
case("zoom url_validation at the twitch integration", "twitch", zh, zb, 401)

# Twitch: webhook_callback_verification, challenge echoed.
ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(now))) + ".123456789Z"
tb = json.dumps({"challenge": "pogchamp-kappa-360noscope-vohiyo",
                 "subscription": {"type": "stream.online", "version": "1"}})
th = {"Twitch-Eventsub-Message-Id": "e76c6bd4-55c9-4987-8304-da1588d8988b",
      "Twitch-Eventsub-Message-Timestamp": ts,
      "Twitch-Eventsub-Message-Type": "webhook_callback_verification",
      "Twitch-Eventsub-Message-Signature": "sha256=" + hexmac(cfg["twitch_secret"],
          "e76c6bd4-55c9-4987-8304-da1588d8988b" + ts + tb)}
case("twitch verification", "twitch", th, tb, 200, "\r\n\r\npogchamp-kappa-360noscope-vohiyo")

# Azure Event Grid: the key in the URL query; validation answered.
ab = json.dumps([{"id": "2d1781af", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                  "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}}])
ah = {"aeg-event-type": "SubscriptionValidation"}
case("azure validation", "azure", ah, ab, 200,
     '{"validationResponse":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}', "?code=" + cfg["azure_key"])
case("azure wrong key", "azure", ah, ab, 401, "", "?code=not-the-key")

# Gitea and generic token auth.
gb = json.dumps({"ref": "refs/heads/main"})
case("gitea", "gitea", {"X-Gitea-Signature": hexmac(cfg["gitea_secret"], gb), "X-Gitea-Event": "push"}, gb, 202)
case("generic bearer", "bearer", {"Authorization": "Bearer " + cfg["bearer"]}, gb, 202)
case("generic bearer wrong", "bearer", {"Authorization": "Bearer x" + cfg["bearer"]}, gb, 401)
case("generic none", "open", {}, gb, 202)

# hookwarden sign's output, checked by the providers' libraries.
ours = cfg["ours"]
body = ours["body"]
h = ours["sendgrid"]
assert EventWebhook(cfg["sendgrid_pub"]).verify_signature(
    body, h["X-Twilio-Email-Event-Webhook-Signature"], h["X-Twilio-Email-Event-Webhook-Timestamp"]), "sendgrid"
assert not EventWebhook(cfg["sendgrid_pub"]).verify_signature(
    body + " ", h["X-Twilio-Email-Event-Webhook-Signature"], h["X-Twilio-Email-Event-Webhook-Timestamp"])
assert PaddleSignature().verify(ours["paddle"]["Paddle-Signature"], body, Secret(cfg["paddle_secret"])), "paddle"
h = ours["discord"]
nacl.signing.VerifyKey(bytes.fromhex(cfg["discord_pub"])).verify(
    (h["X-Signature-Timestamp"] + body).encode(), bytes.fromhex(h["X-Signature-Ed25519"]))
h = ours["standard-webhooks"]
entry = h["webhook-signature"]
assert entry.startswith("v1a,"), entry
nacl.signing.VerifyKey(base64.b64decode(cfg["whpk"][len("whpk_"):])).verify(
    f'{h["webhook-id"]}.{h["webhook-timestamp"]}.{body}'.encode(), base64.b64decode(entry[4:]))
print(json.dumps(cases))
"#;

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
        .args(["-c", "import nacl, cryptography, sendgrid, paddle_billing"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok || !in_ci(),
        "{} lacks PyNaCl/cryptography/sendgrid/paddle-python-sdk (scripts/check-chart.sh installs them)",
        py.display()
    );
    if !ok {
        eprintln!("skipping: {} lacks the provider libraries", py.display());
    }
    ok.then_some(py)
}

fn integration(name: &str, spec: &str, secret: Option<&str>) -> String {
    let mut doc = format!(
        "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata:\n  name: {name}\nspec:\n{spec}"
    );
    if let Some(secret) = secret {
        doc.push_str(&format!(
            "  secretRef: {{name: {name}-key, key: key}}\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}-key\nstringData:\n  key: \"{secret}\"\n"
        ));
    }
    doc
}

/// `hookwarden sign` headers as a JSON object.
fn sign(provider: &str, secret: &str, body: &Path) -> serde_json::Value {
    let out = Command::new(BIN)
        .args([
            "sign",
            "--provider",
            provider,
            "--secret",
            secret,
            "--body-file",
        ])
        .arg(body)
        .output()
        .expect("run hookwarden sign");
    assert!(out.status.success(), "sign {provider}: {out:?}");
    let mut map = serde_json::Map::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (k, v) = line.split_once(": ").expect("Name: value");
        map.insert(k.to_string(), v.into());
    }
    serde_json::Value::Object(map)
}

#[test]
fn provider_libraries_deliveries_and_handshakes_reach_a_running_receiver() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let docs = [
        integration("discord", "  provider: discord\n", Some(DISCORD_PUB)),
        integration("standard", "  provider: standard-webhooks\n", Some(WHPK)),
        integration("sendgrid", "  provider: sendgrid\n", Some(SG_PUB)),
        integration("paddle", "  provider: paddle\n", Some(PADDLE_SECRET)),
        integration("zoom", "  provider: zoom\n", Some(ZOOM_SECRET)),
        integration("twitch", "  provider: twitch\n", Some(TWITCH_SECRET)),
        integration("azure", "  provider: azure-event-grid\n", Some(AZURE_KEY)),
        integration("gitea", "  provider: gitea\n", Some(GITEA_SECRET)),
        integration(
            "bearer",
            "  provider: generic\n  auth: bearer\n",
            Some(BEARER),
        ),
        integration("open", "  provider: generic\n  auth: none\n", None),
    ];
    std::fs::write(dir.path().join("senders.yaml"), docs.join("---\n")).expect("write specs");

    let work = tempfile::tempdir().expect("tempdir");
    let body_text = r#"{"type":"hookwarden.check","n":1}"#;
    let body = work.path().join("body.json");
    std::fs::write(&body, body_text).expect("body");
    let ours = serde_json::json!({
        "body": body_text,
        "sendgrid": sign("sendgrid", SG_PRIV, &body),
        "paddle": sign("paddle", PADDLE_SECRET, &body),
        "discord": sign("discord", DISCORD_SEED, &body),
        "standard-webhooks": sign("standard-webhooks", WHSK, &body),
    });
    let cfg = serde_json::json!({
        "discord_seed": DISCORD_SEED, "discord_pub": DISCORD_PUB, "whsk": WHSK, "whpk": WHPK,
        "sendgrid_priv": SG_PRIV, "sendgrid_pub": SG_PUB, "paddle_secret": PADDLE_SECRET,
        "zoom_secret": ZOOM_SECRET, "twitch_secret": TWITCH_SECRET, "azure_key": AZURE_KEY,
        "gitea_secret": GITEA_SECRET, "bearer": BEARER, "ours": ours,
    });
    let cfg_path = work.path().join("cfg.json");
    std::fs::write(&cfg_path, cfg.to_string()).expect("cfg");
    let script = work.path().join("cases.py");
    std::fs::write(&script, CASES_PY).expect("script");

    let standalone = Standalone::start(dir.path());
    let out = Command::new(&py)
        .arg(&script)
        .arg(&cfg_path)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "the provider libraries refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("cases JSON");
    assert!(cases.len() >= 19, "{} cases", cases.len());
    for c in &cases {
        let name = c["name"].as_str().unwrap_or_default();
        let key = format!("default/{}", c["integration"].as_str().unwrap_or_default());
        let url = format!(
            "{}{}",
            standalone.url(&key),
            c["query"].as_str().unwrap_or("")
        );
        let headers: Vec<(String, String)> = c["headers"]
            .as_object()
            .expect("headers")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (code, response) =
            post_raw(&url, &pairs, c["body"].as_str().expect("body")).expect("receiver answers");
        assert_eq!(
            code,
            c["status"].as_u64().unwrap_or(0) as u16,
            "{name}: {response}"
        );
        let contains = c["contains"].as_str().unwrap_or_default();
        assert!(response.contains(contains), "{name}: {response}");
    }

    // The Zoom handshake sent to the Twitch integration names the fix on the status.
    wait_for_status(dir.path(), "twitch", "lastRejectReason", |o| {
        o.pointer("/status/deliveries/lastRejectReason")
            .and_then(|v| v.as_str())
            == Some("handshake_wrong_provider")
    });
    // auth: none works, and says what it costs.
    let open = wait_for_status(dir.path(), "open", "the Warning condition", |o| {
        o["status"]["deliveries"]["accepted"].as_i64() == Some(1)
    });
    let warning = open["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Warning"))
        .unwrap_or_else(|| panic!("no Warning condition: {open}"));
    assert_eq!(warning["status"], "True");
    assert_eq!(warning["reason"], "Unauthenticated");
    assert!(
        warning["message"]
            .as_str()
            .unwrap_or_default()
            .contains("only secret"),
        "{warning}"
    );
    standalone.stop();
}
