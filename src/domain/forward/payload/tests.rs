use http::HeaderMap;
use serde_json::{Value, json};

use super::*;
use crate::domain::signature::{Delivery, Verdict, delivery_meta, verify};

const NS: IntegrationRef<'static> = IntegrationRef {
    namespace: "team-a",
    name: "alerts",
};
const AT: i64 = 1_718_000_000_123; // 2024-06-10T06:13:20.123Z
const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn key() -> SigningKey {
    SigningKey::parse(SW_SECRET).expect("published key")
}

fn delivery<'a>(content_type: Option<&'a str>, body: &'a [u8]) -> DeliveryFacts<'a> {
    DeliveryFacts {
        id: "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        event: Some("push"),
        provider: "github",
        received_at_ms: AT,
        content_type,
        body,
        meta_headers: &[],
    }
}

fn incident(change: IncidentChange, state: IncidentState) -> Event<'static> {
    Event::Incident {
        change,
        at_ms: AT,
        incident: IncidentFacts {
            id: "fp-1",
            title: "Disk <full> & slow on db-1",
            severity: Severity::Critical,
            state,
            opened_at_ms: Some(1_718_000_000_000),
            resolved_at_ms: (state == IncidentState::Resolved).then_some(1_718_000_060_000),
            link: Some("https://grafana.example.com/d/x?a=1&b=2"),
            order: Some("1718000000123:abc"),
        },
    }
}

fn body_json(r: &Rendered) -> Value {
    serde_json::from_slice(&r.body).expect("json body")
}

fn header<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn verifies(req: &OutboundRequest, secret: &str, now: i64) -> bool {
    let d = Delivery {
        method: "POST",
        url: "",
        headers: &req.headers,
        body: &req.body,
    };
    matches!(
        verify(
            &Scheme::preset(ProviderKind::StandardWebhooks),
            &[secret],
            &d,
            now
        ),
        Verdict::Valid(_)
    )
}

// ------------------------------------------------------------------ signatures

/// Published vectors: the Standard Webhooks spec/Svix libraries' example and the
/// standard-webhooks Rust library's sign test. Our outbound signature must be byte for
/// byte what those libraries compute.
#[test]
fn signatures_match_published_standard_webhooks_vectors() {
    let vectors = [
        (
            SW_SECRET,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            &br#"{"test": 2432232314}"#[..],
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
        (
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1_649_367_553,
            &br#"{"email":"test@example.com","username":"test_user"}"#[..],
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        ),
    ];
    for (secret, id, ts, body, want) in vectors {
        let rendered = Rendered {
            format: Format::StandardWebhooks,
            content_type: "application/json".into(),
            body: Bytes::copy_from_slice(body),
            headers: vec![],
        };
        let key = SigningKey::parse(secret).expect("key");
        let req = sign_request(&rendered, Some(&key), id, ts, &[]).expect("signed");
        assert_eq!(header(&req.headers, "webhook-signature"), Some(want));
        assert_eq!(header(&req.headers, "webhook-id"), Some(id));
        assert_eq!(
            header(&req.headers, "webhook-timestamp"),
            Some(&*ts.to_string())
        );
        assert!(verifies(&req, secret, ts));
    }
}

#[test]
fn every_signed_format_verifies_with_the_inbound_verifier() {
    let d = delivery(Some("application/json"), br#"{"a":1}"#);
    let cases = [
        (Event::Delivery(d), Format::StandardWebhooks),
        (Event::Delivery(d), Format::Raw),
        (Event::Delivery(d), Format::CloudEvents),
        (
            incident(IncidentChange::Opened, IncidentState::Open),
            Format::StandardWebhooks,
        ),
        (
            incident(IncidentChange::Resolved, IncidentState::Resolved),
            Format::CloudEvents,
        ),
    ];
    for (event, format) in cases {
        let r = render(&event, format, NS, "evt_1").expect("render");
        let req = sign_request(&r, Some(&key()), "evt_1", 1_718_000_100, &[]).expect("sign");
        assert!(verifies(&req, SW_SECRET, 1_718_000_100), "{format}");
        assert!(
            !verifies(
                &req,
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                1_718_000_100
            ),
            "{format}: another key must not verify"
        );
    }
}

#[test]
fn a_retry_re_signs_the_same_body_with_its_own_timestamp() {
    let ev = incident(IncidentChange::Opened, IncidentState::Open);
    let r = render(&ev, Format::StandardWebhooks, NS, "evt_1").expect("render");
    let first = sign_request(&r, Some(&key()), "evt_1", 1_000, &[]).expect("sign");
    let retry = sign_request(&r, Some(&key()), "evt_1", 2_000, &[]).expect("sign");
    assert_eq!(first.body, retry.body);
    assert_eq!(header(&retry.headers, "webhook-id"), Some("evt_1"));
    assert_eq!(header(&retry.headers, "webhook-timestamp"), Some("2000"));
    assert_ne!(
        header(&first.headers, "webhook-signature"),
        header(&retry.headers, "webhook-signature")
    );
    // Rendering again (after a crash, for a replay) gives the same bytes.
    assert_eq!(
        render(&ev, Format::StandardWebhooks, NS, "evt_1").expect("render"),
        r
    );
}

#[test]
fn signing_keys_are_checked_and_never_shown() {
    assert!(SigningKey::parse("whsec_not base64!").is_err());
    assert!(SigningKey::parse("").is_err());
    assert!(SigningKey::parse("  whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").is_ok());
    let generated = crate::domain::secret::generate_secret(ProviderKind::StandardWebhooks);
    let k = SigningKey::parse(&generated).expect("generated keys are usable");
    assert!(!format!("{k:?}").contains(&generated[6..]));
    let ev = incident(IncidentChange::Opened, IncidentState::Open);
    let r = render(&ev, Format::StandardWebhooks, NS, "evt_1").expect("render");
    assert_eq!(
        sign_request(&r, None, "evt_1", 1, &[]).map(|_| ()),
        Err(RenderError::MissingSigningKey(Format::StandardWebhooks))
    );
}

// ------------------------------------------------------------------ payloads

#[test]
fn standard_webhooks_delivery_payload() {
    let d = delivery(
        Some("application/json"),
        br#"{"zeta": 1, "alpha": 12345678901234567890123456789, "f": 1.10}"#,
    );
    let r = render(&Event::Delivery(d), Format::StandardWebhooks, NS, "evt_1").expect("render");
    assert_eq!(r.content_type, "application/json");
    // Exact bytes: the body is embedded verbatim (key order, big numbers, 1.10).
    assert_eq!(
        std::str::from_utf8(&r.body).expect("utf-8"),
        concat!(
            r#"{"type":"delivery","timestamp":"2024-06-10T06:13:20.123Z","#,
            r#""integration":{"namespace":"team-a","name":"alerts"},"#,
            r#""delivery":{"id":"72d3162e-cc78-11e3-81ab-4c9367dc0958","event":"push","#,
            r#""provider":"github","receivedAt":"2024-06-10T06:13:20.123Z","#,
            r#""contentType":"application/json","#,
            r#""body":{"zeta": 1, "alpha": 12345678901234567890123456789, "f": 1.10}}}"#,
        )
    );
}

#[test]
fn non_json_bodies_travel_as_base64_and_absent_fields_are_absent() {
    let form = DeliveryFacts {
        event: None,
        content_type: Some("application/x-www-form-urlencoded"),
        body: b"123",
        ..delivery(None, b"")
    };
    let v =
        body_json(&render(&Event::Delivery(form), Format::StandardWebhooks, NS, "e").expect("r"));
    assert_eq!(v["delivery"]["bodyBase64"], "MTIz");
    assert!(v["delivery"].get("body").is_none());
    assert!(v["delivery"].get("event").is_none());

    let broken = delivery(Some("application/json"), b"{not json");
    let v =
        body_json(&render(&Event::Delivery(broken), Format::StandardWebhooks, NS, "e").expect("r"));
    assert_eq!(v["delivery"]["bodyBase64"], "e25vdCBqc29u");

    let undeclared = delivery(None, br#"  {"a": [1, 2]} "#);
    let v = body_json(
        &render(
            &Event::Delivery(undeclared),
            Format::StandardWebhooks,
            NS,
            "e",
        )
        .expect("r"),
    );
    assert_eq!(v["delivery"]["body"], json!({"a": [1, 2]}));
    assert!(v["delivery"].get("contentType").is_none());

    let binary = delivery(Some("application/json"), &[0xff, 0xfe, b'{']);
    let v =
        body_json(&render(&Event::Delivery(binary), Format::StandardWebhooks, NS, "e").expect("r"));
    assert_eq!(v["delivery"]["bodyBase64"], "//57");
}

#[test]
fn standard_webhooks_incident_payload() {
    let ev = incident(IncidentChange::Resolved, IncidentState::Resolved);
    let v = body_json(&render(&ev, Format::StandardWebhooks, NS, "evt_9").expect("render"));
    assert_eq!(
        v,
        json!({
            "type": "incident.resolved",
            "timestamp": "2024-06-10T06:13:20.123Z",
            "integration": {"namespace": "team-a", "name": "alerts"},
            "incident": {
                "id": "fp-1",
                "title": "Disk <full> & slow on db-1",
                "severity": "critical",
                "state": "resolved",
                "openedAt": "2024-06-10T06:13:20Z",
                "resolvedAt": "2024-06-10T06:14:20Z",
                "link": "https://grafana.example.com/d/x?a=1&b=2",
                "order": "1718000000123:abc",
            },
        })
    );
    let open = incident(IncidentChange::Opened, IncidentState::Open);
    let v = body_json(&render(&open, Format::StandardWebhooks, NS, "evt_9").expect("render"));
    assert_eq!(v["type"], "incident.opened");
    assert!(v["incident"].get("resolvedAt").is_none());
}

#[test]
fn cloudevents_structured_mode() {
    let ev = incident(IncidentChange::Opened, IncidentState::Open);
    let r = render(&ev, Format::CloudEvents, NS, "evt_42").expect("render");
    assert_eq!(r.content_type, "application/cloudevents+json");
    let v = body_json(&r);
    assert_eq!(v["specversion"], "1.0");
    assert_eq!(v["id"], "evt_42");
    assert_eq!(v["source"], "hookwarden/team-a/alerts");
    assert_eq!(v["type"], "dev.hookwarden.incident.opened");
    assert_eq!(v["time"], "2024-06-10T06:13:20.123Z");
    assert_eq!(v["datacontenttype"], "application/json");
    assert_eq!(
        v["data"]["id"], "fp-1",
        "data is the incident object itself"
    );
    assert_eq!(v["data"]["state"], "open");

    let d = delivery(Some("application/json"), br#"{"x":true}"#);
    let v = body_json(&render(&Event::Delivery(d), Format::CloudEvents, NS, "evt_43").expect("r"));
    assert_eq!(v["type"], "dev.hookwarden.delivery");
    assert_eq!(v["data"]["body"], json!({"x": true}));
    assert_eq!(v["data"]["provider"], "github");
}

#[test]
fn slack_posts_one_readable_escaped_line_unsigned() {
    let ev = incident(IncidentChange::Opened, IncidentState::Open);
    let r = render(&ev, Format::Slack, NS, "evt_1").expect("render");
    let v = body_json(&r);
    assert_eq!(
        v,
        json!({"text": ":red_circle: *Disk &lt;full&gt; &amp; slow on db-1* opened — critical · team-a/alerts · <https://grafana.example.com/d/x?a=1&amp;b=2|details>"})
    );
    let req = sign_request(&r, None, "evt_1", 1, &[]).expect("slack needs no key");
    assert!(req.headers.get("webhook-signature").is_none());
    assert!(req.headers.get("webhook-id").is_none());
    assert_eq!(
        header(&req.headers, "content-type"),
        Some("application/json")
    );

    let resolved = incident(IncidentChange::Resolved, IncidentState::Resolved);
    let v = body_json(&render(&resolved, Format::Slack, NS, "e").expect("render"));
    let text = v["text"].as_str().expect("text");
    assert!(text.starts_with(":white_check_mark: *Disk"), "{text}");
    assert!(text.contains(" resolved — critical"), "{text}");

    // A link that is not http(s) is not turned into one.
    let Event::Incident {
        change,
        at_ms,
        incident: mut facts,
    } = ev
    else {
        unreachable!()
    };
    facts.link = Some("javascript:alert(1)|x");
    let v = body_json(
        &render(
            &Event::Incident {
                change,
                at_ms,
                incident: facts,
            },
            Format::Slack,
            NS,
            "e",
        )
        .expect("render"),
    );
    assert!(!v["text"].as_str().expect("text").contains("javascript"));
}

#[test]
fn raw_sends_the_original_body_and_no_sender_credentials() {
    let meta = vec![
        ("X-GitHub-Delivery".to_string(), "72d3".to_string()),
        ("X-GitHub-Event".to_string(), "push".to_string()),
        ("X-Hub-Signature-256".to_string(), "sha256=abc".to_string()),
        ("Authorization".to_string(), "Bearer t".to_string()),
        ("X-Gitlab-Token".to_string(), "t".to_string()),
        ("webhook-signature".to_string(), "v1,abc".to_string()),
        ("Content-Length".to_string(), "3".to_string()),
        ("I-Twilio-Idempotency-Token".to_string(), "id-1".to_string()),
    ];
    let d = DeliveryFacts {
        meta_headers: &meta,
        ..delivery(Some("application/x-www-form-urlencoded"), b"a=1")
    };
    let r = render(&Event::Delivery(d), Format::Raw, NS, "evt_1").expect("render");
    assert_eq!(&r.body[..], b"a=1");
    assert_eq!(r.content_type, "application/x-www-form-urlencoded");
    let names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "x-hookwarden-integration",
            "X-GitHub-Delivery",
            "X-GitHub-Event",
            "I-Twilio-Idempotency-Token"
        ]
    );
    let req = sign_request(&r, Some(&key()), "evt_1", 5, &[]).expect("sign");
    assert_eq!(
        header(&req.headers, "x-hookwarden-integration"),
        Some("team-a/alerts")
    );
    assert_eq!(header(&req.headers, "x-github-event"), Some("push"));
    assert!(verifies(&req, SW_SECRET, 5));

    let none = DeliveryFacts {
        content_type: None,
        ..delivery(None, b"\x00\x01")
    };
    let r = render(&Event::Delivery(none), Format::Raw, NS, "evt_1").expect("render");
    assert_eq!(r.content_type, "application/octet-stream");
}

#[test]
fn formats_refuse_events_they_cannot_carry() {
    let d = delivery(None, b"{}");
    assert_eq!(
        render(&Event::Delivery(d), Format::Slack, NS, "e"),
        Err(RenderError::FormatDoesNotCarry {
            format: Format::Slack,
            event: EventKind::Delivery
        })
    );
    let ev = incident(IncidentChange::Updated, IncidentState::Open);
    assert_eq!(
        render(&ev, Format::Raw, NS, "e").map(|_| ()),
        Err(RenderError::FormatDoesNotCarry {
            format: Format::Raw,
            event: EventKind::IncidentUpdated
        })
    );
}

#[test]
fn webhook_ids_and_times_are_checked() {
    let ev = incident(IncidentChange::Opened, IncidentState::Open);
    for bad in ["", "has space", "new\nline", &"x".repeat(257)] {
        assert_eq!(
            render(&ev, Format::StandardWebhooks, NS, bad).map(|_| ()),
            Err(RenderError::InvalidWebhookId),
            "{bad:?}"
        );
    }
    let far = DeliveryFacts {
        received_at_ms: i64::MAX,
        ..delivery(None, b"{}")
    };
    assert!(matches!(
        render(&Event::Delivery(far), Format::StandardWebhooks, NS, "e"),
        Err(RenderError::TimeOutOfRange { .. })
    ));
}

#[test]
fn headers_from_are_added_marked_sensitive_and_cannot_override_ours() {
    let ev = incident(IncidentChange::Opened, IncidentState::Open);
    let r = render(&ev, Format::StandardWebhooks, NS, "evt_1").expect("render");
    let extra = vec![("Authorization".to_string(), "Bearer s3cr3t".to_string())];
    let req = sign_request(&r, Some(&key()), "evt_1", 1, &extra).expect("sign");
    let auth = req.headers.get("authorization").expect("added");
    assert!(auth.is_sensitive());
    let debug = format!("{req:?}");
    assert!(!debug.contains("s3cr3t"), "{debug}");
    assert!(
        !format!("{r:?}").contains("Disk"),
        "bodies are not in Debug"
    );

    for reserved in [
        "Webhook-Signature",
        "content-type",
        "Host",
        "X-Hookwarden-Integration",
    ] {
        let extra = vec![(reserved.to_string(), "x".to_string())];
        assert_eq!(
            sign_request(&r, Some(&key()), "evt_1", 1, &extra).map(|_| ()),
            Err(RenderError::ReservedHeader {
                name: reserved.to_string()
            })
        );
    }
    let bad = vec![("X-Token".to_string(), "a\nb".to_string())];
    let err = sign_request(&r, Some(&key()), "evt_1", 1, &bad).expect_err("invalid value");
    assert!(!err.to_string().contains("a\nb"));
}

// ------------------------------------------------------------------ raw meta headers

/// Each name [`meta_header_names`] lists is one the provider's own id/event-type reading
/// uses: setting it alone gives `delivery_meta` an id or an event type.
#[test]
fn meta_header_names_are_what_delivery_meta_reads() {
    for provider in ProviderKind::ALL {
        let scheme = Scheme::preset(provider);
        for name in meta_header_names(&scheme) {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_static("x"),
            );
            let meta = delivery_meta(&scheme, &h, None);
            assert!(
                meta.id.is_some() || meta.event_type.is_some(),
                "{provider}: {name} is not a meta header"
            );
            assert!(passes_through(name), "{provider}: {name} would be dropped");
        }
    }
}

/// Whatever a caller passes, no header whose value depends on the sender's secret (a
/// signature, an HMAC, a token) is copied onto a `raw` forward: for every provider,
/// sign the same delivery with two secrets and check that each header that differs is
/// dropped.
#[test]
fn no_secret_derived_header_of_any_provider_passes_through() {
    let input = SignInput {
        body: br#"{"a":1}"#,
        url: "https://hooks.example.com/hooks/abc?bodySHA256=x",
        timestamp: 1_718_000_000,
        id: "id-1",
        content_type: "application/x-www-form-urlencoded",
    };
    let secrets = [
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        ),
        ("plain-secret-one", "plain-secret-two"),
    ];
    for provider in ProviderKind::ALL {
        if provider == ProviderKind::Generic {
            continue;
        }
        let scheme = Scheme::preset(provider);
        for (a, b) in secrets {
            let (Ok(sa), Ok(sb)) = (
                signature::sign(&scheme, a, &input),
                signature::sign(&scheme, b, &input),
            ) else {
                continue;
            };
            for ((name, va), (_, vb)) in sa.iter().zip(sb.iter()) {
                if va != vb {
                    assert!(
                        !passes_through(name),
                        "{provider}: secret-derived header {name} would be forwarded"
                    );
                    assert!(
                        !meta_header_names(&scheme).contains(&name.to_ascii_lowercase().as_str())
                    );
                }
            }
        }
    }
}
