//! Golden vectors from the providers' own documentation and libraries, every failure
//! case a sender can produce, and round-trip properties for every preset.
//!
//! Vectors marked "published" are copied from the provider's docs or official SDK tests;
//! the others were computed independently of this code (Python `hmac`) from the
//! provider's documented algorithm.

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use super::*;
use crate::crd::{SignatureSpec, WebhookIntegrationSpec};

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        let name = HeaderName::from_bytes(k.as_bytes()).expect("header name");
        map.append(name, HeaderValue::from_str(v).expect("header value"));
    }
    map
}

fn run(
    provider: ProviderKind,
    secrets: &[&str],
    hdrs: &[(&str, &str)],
    body: &[u8],
    now: i64,
) -> Verdict {
    run_url(provider, secrets, hdrs, body, "", now)
}

fn run_url(
    provider: ProviderKind,
    secrets: &[&str],
    hdrs: &[(&str, &str)],
    body: &[u8],
    url: &str,
    now: i64,
) -> Verdict {
    let map = headers(hdrs);
    let delivery = Delivery {
        method: "POST",
        url,
        headers: &map,
        body,
    };
    verify(&Scheme::preset(provider), secrets, &delivery, now)
}

#[track_caller]
fn assert_valid(v: Verdict, index: usize) {
    match v {
        Verdict::Valid(ok) => assert_eq!(ok.secret_index, index, "matched the wrong secret"),
        Verdict::Invalid(r) => panic!("expected valid, got {} ({r})", r.code()),
    }
}

#[track_caller]
fn assert_rejected(v: Verdict, code: &str) {
    match v {
        Verdict::Valid(ok) => panic!("expected {code}, got valid {ok:?}"),
        Verdict::Invalid(r) => assert_eq!(r.code(), code, "{r}"),
    }
}

// ---------------------------------------------------------------- GitHub (published)

const GH_SECRET: &str = "It's a Secret to Everybody";
const GH_BODY: &[u8] = b"Hello, World!";
const GH_SIG256: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
const GH_SIG1: &str = "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59";

#[test]
fn github_docs_example_verifies() {
    assert_valid(
        run(
            ProviderKind::Github,
            &[GH_SECRET],
            &[("X-Hub-Signature-256", GH_SIG256)],
            GH_BODY,
            0,
        ),
        0,
    );
}

#[test]
fn github_header_names_are_case_insensitive() {
    assert_valid(
        run(
            ProviderKind::Github,
            &[GH_SECRET],
            &[("x-hub-signature-256", GH_SIG256)],
            GH_BODY,
            0,
        ),
        0,
    );
    assert_valid(
        run(
            ProviderKind::Github,
            &[GH_SECRET],
            &[("X-HUB-SIGNATURE-256", GH_SIG256)],
            GH_BODY,
            0,
        ),
        0,
    );
}

#[test]
fn github_failures() {
    let p = ProviderKind::Github;
    let h = [("X-Hub-Signature-256", GH_SIG256)];
    assert_rejected(
        run(p, &[GH_SECRET], &h, b"Hello, World?", 0),
        "signature_mismatch",
    );
    assert_rejected(run(p, &["wrong"], &h, GH_BODY, 0), "signature_mismatch");
    assert_rejected(run(p, &[GH_SECRET], &[], GH_BODY, 0), "missing_signature");
    assert_rejected(
        run(
            p,
            &[GH_SECRET],
            &[("X-Hub-Signature-256", "sha256=zz")],
            GH_BODY,
            0,
        ),
        "malformed_signature",
    );
    assert_rejected(
        run(
            p,
            &[GH_SECRET],
            &[("X-Hub-Signature-256", &GH_SIG256[7..])],
            GH_BODY,
            0,
        ),
        "malformed_signature",
    );
    assert_rejected(run(p, &[], &h, GH_BODY, 0), "no_secret");
    assert_rejected(run(p, &[""], &h, GH_BODY, 0), "no_secret");
}

#[test]
fn github_sha1_is_a_fallback_only_without_sha256() {
    let p = ProviderKind::Github;
    assert_valid(
        run(p, &[GH_SECRET], &[("X-Hub-Signature", GH_SIG1)], GH_BODY, 0),
        0,
    );
    let bad256 = "sha256=0000000000000000000000000000000000000000000000000000000000000000";
    assert_rejected(
        run(
            p,
            &[GH_SECRET],
            &[
                ("X-Hub-Signature-256", bad256),
                ("X-Hub-Signature", GH_SIG1),
            ],
            GH_BODY,
            0,
        ),
        "signature_mismatch",
    );
}

#[test]
fn rotation_accepts_the_previous_secret_and_says_which_matched() {
    let v = run(
        ProviderKind::Github,
        &["new-secret", GH_SECRET],
        &[("X-Hub-Signature-256", GH_SIG256)],
        GH_BODY,
        0,
    );
    assert_valid(v, 1);
    // An empty current secret is skipped, indexes stay those of the caller's list.
    let v = run(
        ProviderKind::Github,
        &["", GH_SECRET],
        &[("X-Hub-Signature-256", GH_SIG256)],
        GH_BODY,
        0,
    );
    assert_valid(v, 1);
}

// ---------------------------------------------------------------- Stripe

const STRIPE_BODY: &[u8] =
    br#"{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event","type":"payment_intent.succeeded"}"#;
const STRIPE_SECRET: &str = "whsec_5f8e2c1a9b7d4e6f";
const STRIPE_V1: &str = "4784865e0157a54ad054cd9a6e2df3c08409088f25c5c12a0431150e4384989d";
const STRIPE_OTHER_V1: &str = "0483bd85869462c6c15797ed60c20e10c6e29f4f292035367c3cff73aadee15b";

#[test]
fn stripe_uses_the_whole_secret_and_t_dot_body() {
    let h = format!("t=1700000000,v1={STRIPE_V1}");
    assert_valid(
        run(
            ProviderKind::Stripe,
            &[STRIPE_SECRET],
            &[("Stripe-Signature", &h)],
            STRIPE_BODY,
            1_700_000_000,
        ),
        0,
    );
}

#[test]
fn stripe_accepts_any_of_several_v1_and_ignores_v0() {
    let h = format!(
        "t=1700000000,v1={STRIPE_OTHER_V1},v1={STRIPE_V1},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39"
    );
    assert_valid(
        run(
            ProviderKind::Stripe,
            &[STRIPE_SECRET],
            &[("Stripe-Signature", &h)],
            STRIPE_BODY,
            1_700_000_000,
        ),
        0,
    );
    // Rolled secret: the old one still verifies through its own v1.
    let h = format!("t=1700000000,v1={STRIPE_OTHER_V1}");
    assert_valid(
        run(
            ProviderKind::Stripe,
            &[STRIPE_SECRET, "whsec_other"],
            &[("Stripe-Signature", &h)],
            STRIPE_BODY,
            1_700_000_000,
        ),
        1,
    );
}

#[test]
fn stripe_timestamp_window_is_300s_both_ways() {
    let h = format!("t=1700000000,v1={STRIPE_V1}");
    let hh = [("Stripe-Signature", h.as_str())];
    let p = ProviderKind::Stripe;
    assert_valid(run(p, &[STRIPE_SECRET], &hh, STRIPE_BODY, 1_700_000_300), 0);
    assert_valid(run(p, &[STRIPE_SECRET], &hh, STRIPE_BODY, 1_699_999_700), 0);
    assert_rejected(
        run(p, &[STRIPE_SECRET], &hh, STRIPE_BODY, 1_700_000_301),
        "timestamp_stale",
    );
    assert_rejected(
        run(p, &[STRIPE_SECRET], &hh, STRIPE_BODY, 1_699_999_699),
        "timestamp_future",
    );
}

#[test]
fn stripe_failures() {
    let p = ProviderKind::Stripe;
    let now = 1_700_000_000;
    let good = format!("t=1700000000,v1={STRIPE_V1}");
    assert_rejected(
        run(
            p,
            &[STRIPE_SECRET],
            &[("Stripe-Signature", &good)],
            b"{}",
            now,
        ),
        "signature_mismatch",
    );
    // The secret is not decoded: the part after whsec_ alone is a different key.
    assert_rejected(
        run(
            p,
            &["5f8e2c1a9b7d4e6f"],
            &[("Stripe-Signature", &good)],
            STRIPE_BODY,
            now,
        ),
        "signature_mismatch",
    );
    assert_rejected(
        run(p, &[STRIPE_SECRET], &[], STRIPE_BODY, now),
        "missing_signature",
    );
    let no_t = format!("v1={STRIPE_V1}");
    assert_rejected(
        run(
            p,
            &[STRIPE_SECRET],
            &[("Stripe-Signature", &no_t)],
            STRIPE_BODY,
            now,
        ),
        "missing_timestamp",
    );
    assert_rejected(
        run(
            p,
            &[STRIPE_SECRET],
            &[("Stripe-Signature", "t=1700000000")],
            STRIPE_BODY,
            now,
        ),
        "malformed_signature",
    );
    let bad_t = format!("t=soon,v1={STRIPE_V1}");
    assert_rejected(
        run(
            p,
            &[STRIPE_SECRET],
            &[("Stripe-Signature", &bad_t)],
            STRIPE_BODY,
            now,
        ),
        "malformed_timestamp",
    );
    // A forged signature with a stale timestamp is a forgery first.
    let forged = format!("t=1600000000,v1={STRIPE_V1}");
    assert_rejected(
        run(
            p,
            &[STRIPE_SECRET],
            &[("Stripe-Signature", &forged)],
            STRIPE_BODY,
            now,
        ),
        "signature_mismatch",
    );
}

// ---------------------------------------------------------------- Slack (published)

const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const SLACK_BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
const SLACK_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

#[test]
fn slack_docs_example_verifies_and_expires() {
    let h = [
        ("X-Slack-Request-Timestamp", "1531420618"),
        ("X-Slack-Signature", SLACK_SIG),
    ];
    let p = ProviderKind::Slack;
    assert_valid(run(p, &[SLACK_SECRET], &h, SLACK_BODY, 1_531_420_618), 0);
    assert_rejected(
        run(p, &[SLACK_SECRET], &h, SLACK_BODY, 1_531_420_919),
        "timestamp_stale",
    );
    assert_rejected(
        run(p, &[SLACK_SECRET], &h, SLACK_BODY, 1_531_420_317),
        "timestamp_future",
    );
    assert_rejected(
        run(p, &["wrong"], &h, SLACK_BODY, 1_531_420_618),
        "signature_mismatch",
    );
    assert_rejected(
        run(p, &[SLACK_SECRET], &h[1..], SLACK_BODY, 1_531_420_618),
        "missing_timestamp",
    );
    assert_rejected(
        run(p, &[SLACK_SECRET], &h[..1], SLACK_BODY, 1_531_420_618),
        "missing_signature",
    );
    let no_prefix = [
        ("X-Slack-Request-Timestamp", "1531420618"),
        ("X-Slack-Signature", &SLACK_SIG[3..]),
    ];
    assert_rejected(
        run(p, &[SLACK_SECRET], &no_prefix, SLACK_BODY, 1_531_420_618),
        "malformed_signature",
    );
}

#[test]
fn slack_url_verification_is_answered_with_the_challenge() {
    let body = serde_json::json!({"token": "t", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"});
    let none = HeaderMap::new();
    let (ct, answer) = handshake(ProviderKind::Slack, &none, &body, None).expect("handshake");
    assert_eq!(ct, "text/plain");
    assert_eq!(
        answer,
        b"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );
    assert!(
        handshake(
            ProviderKind::Slack,
            &none,
            &serde_json::json!({"type": "event_callback"}),
            None
        )
        .is_none()
    );
    assert!(handshake(ProviderKind::Github, &none, &body, None).is_none());
}

// ---------------------------------------------------------------- Standard Webhooks / Svix (published)

const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
const SW_TS: i64 = 1_614_265_330;

fn sw_headers<'a>(prefix: &str, sig: &'a str) -> Vec<(String, &'a str)> {
    vec![
        (format!("{prefix}-id"), SW_ID),
        (format!("{prefix}-timestamp"), "1614265330"),
        (format!("{prefix}-signature"), sig),
    ]
}

fn run_sw(
    p: ProviderKind,
    secrets: &[&str],
    h: &[(String, &str)],
    body: &[u8],
    now: i64,
) -> Verdict {
    let pairs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    run(p, secrets, &pairs, body, now)
}

#[test]
fn standard_webhooks_and_svix_library_vectors_verify() {
    assert_valid(
        run_sw(
            ProviderKind::StandardWebhooks,
            &[SW_SECRET],
            &sw_headers("webhook", SW_SIG),
            SW_BODY,
            SW_TS,
        ),
        0,
    );
    assert_valid(
        run_sw(
            ProviderKind::Svix,
            &[SW_SECRET],
            &sw_headers("svix", SW_SIG),
            SW_BODY,
            SW_TS,
        ),
        0,
    );
    // Svix's libraries fall back to the unbranded headers.
    assert_valid(
        run_sw(
            ProviderKind::Svix,
            &[SW_SECRET],
            &sw_headers("webhook", SW_SIG),
            SW_BODY,
            SW_TS,
        ),
        0,
    );
    // Secret without the prefix: still base64.
    assert_valid(
        run_sw(
            ProviderKind::StandardWebhooks,
            &[&SW_SECRET[6..]],
            &sw_headers("webhook", SW_SIG),
            SW_BODY,
            SW_TS,
        ),
        0,
    );
    // Vector from the standard-webhooks Rust library's sign test.
    let body = br#"{"email":"test@example.com","username":"test_user"}"#;
    let h = [
        ("webhook-id", "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk"),
        ("webhook-timestamp", "1649367553"),
        (
            "webhook-signature",
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        ),
    ];
    assert_valid(
        run(
            ProviderKind::StandardWebhooks,
            &["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"],
            &h,
            body,
            1_649_367_553,
        ),
        0,
    );
}

#[test]
fn standard_webhooks_accepts_one_of_several_space_separated_signatures() {
    let many = format!(
        "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg== v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU= {SW_SIG}"
    );
    assert_valid(
        run_sw(
            ProviderKind::StandardWebhooks,
            &[SW_SECRET],
            &sw_headers("webhook", &many),
            SW_BODY,
            SW_TS,
        ),
        0,
    );
}

#[test]
fn standard_webhooks_failures() {
    let p = ProviderKind::StandardWebhooks;
    let h = sw_headers("webhook", SW_SIG);
    assert_rejected(
        run_sw(p, &[SW_SECRET], &h, br#"{"test": 2432232315}"#, SW_TS),
        "signature_mismatch",
    );
    assert_rejected(
        run_sw(
            p,
            &["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"],
            &h,
            SW_BODY,
            SW_TS,
        ),
        "signature_mismatch",
    );
    assert_rejected(
        run_sw(p, &["whsec_not base64!"], &h, SW_BODY, SW_TS),
        "invalid_secret",
    );
    assert_rejected(
        run_sw(p, &[SW_SECRET], &h, SW_BODY, SW_TS + 301),
        "timestamp_stale",
    );
    assert_rejected(
        run_sw(p, &[SW_SECRET], &h, SW_BODY, SW_TS - 301),
        "timestamp_future",
    );
    assert_rejected(
        run_sw(p, &[SW_SECRET], &h[1..], SW_BODY, SW_TS),
        "missing_id",
    );
    assert_rejected(
        run_sw(
            p,
            &[SW_SECRET],
            &[h[0].clone(), h[2].clone()],
            SW_BODY,
            SW_TS,
        ),
        "missing_timestamp",
    );
    assert_rejected(
        run_sw(p, &[SW_SECRET], &h[..2], SW_BODY, SW_TS),
        "missing_signature",
    );
    assert_rejected(
        run_sw(
            p,
            &[SW_SECRET],
            &sw_headers("webhook", "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
            SW_BODY,
            SW_TS,
        ),
        "malformed_signature",
    );
    // The id is signed: another id is another message.
    let other_id = [
        ("webhook-id".to_string(), "msg_other"),
        h[1].clone(),
        h[2].clone(),
    ];
    assert_rejected(
        run_sw(p, &[SW_SECRET], &other_id, SW_BODY, SW_TS),
        "signature_mismatch",
    );
    // Svix headers mean nothing to the unbranded preset.
    assert_rejected(
        run_sw(p, &[SW_SECRET], &sw_headers("svix", SW_SIG), SW_BODY, SW_TS),
        "missing_signature",
    );
}

// ---------------------------------------------------------------- PagerDuty (published, go-pagerduty)

const PD_SECRET: &str = "lDQHScfUeXUKaQRNF+8XIiDKZ7XX3itBAYzwU0TARw8lJqRnkKl2iB1anSb0Z+IK";
const PD_BODY: &str = r#"{"event":{"id":"01BWDWL3NYY7LUFPZCC28QUCMK","event_type":"incident.priority_updated","resource_type":"incident","occurred_at":"2021-04-26T17:36:27.458Z","agent":{"html_url":"https://acme.pagerduty.com/users/PLH1HKV","id":"PLH1HKV","self":"https://api.pagerduty.com/users/PLH1HKV","summary":"Tenex Engineer","type":"user_reference"},"client":null,"data":{"id":"PGR0VU2","type":"incident","self":"https://api.pagerduty.com/incidents/PGR0VU2","html_url":"https://acme.pagerduty.com/incidents/PGR0VU2","number":2,"status":"triggered","title":"A little bump in the road","service":{"html_url":"https://acme.pagerduty.com/services/PF9KMXH","id":"PF9KMXH","self":"https://api.pagerduty.com/services/PF9KMXH","summary":"API Service","type":"service_reference"},"assignees":[{"html_url":"https://acme.pagerduty.com/users/PTUXL6G","id":"PTUXL6G","self":"https://api.pagerduty.com/users/PTUXL6G","summary":"User 123","type":"user_reference"}],"escalation_policy":{"html_url":"https://acme.pagerduty.com/escalation_policies/PUS0KTE","id":"PUS0KTE","self":"https://api.pagerduty.com/escalation_policies/PUS0KTE","summary":"Default","type":"escalation_policy_reference"},"teams":[{"html_url":"https://acme.pagerduty.com/teams/PFCVPS0","id":"PFCVPS0","self":"https://api.pagerduty.com/teams/PFCVPS0","summary":"Engineering","type":"team_reference"}],"priority":{"html_url":"https://acme.pagerduty.com/account/incident_priorities","id":"PSO75BM","self":"https://api.pagerduty.com/priorities/PSO75BM","summary":"P1","type":"priority_reference"},"urgency":"high","conference_bridge":{"conference_number":1000,"conference_url":"https://example.com"},"resolve_reason":null}}}"#;
const PD_SIG: &str = "v1=0c0b9495b893a39e70d1fea2fe11fbe0a825f88b9f67846f6cc07dd2bc5476cd";
const PD_WRONG: &str = "v1=7020c8a7ec668a9b7012bc3dd82e483394b038f4230acc6785efbf2a7d8bcaf5";

#[test]
fn pagerduty_library_vector_and_signature_lists() {
    let p = ProviderKind::Pagerduty;
    let body = PD_BODY.as_bytes();
    assert_valid(
        run(
            p,
            &[PD_SECRET],
            &[("X-PagerDuty-Signature", PD_SIG)],
            body,
            0,
        ),
        0,
    );
    assert_rejected(
        run(
            p,
            &[PD_SECRET],
            &[("X-PagerDuty-Signature", PD_WRONG)],
            body,
            0,
        ),
        "signature_mismatch",
    );
    let list = format!("{PD_WRONG},{PD_SIG}");
    assert_valid(
        run(
            p,
            &[PD_SECRET],
            &[("X-PagerDuty-Signature", &list)],
            body,
            0,
        ),
        0,
    );
    let spaced = format!("{PD_WRONG}, {PD_SIG}");
    assert_valid(
        run(
            p,
            &[PD_SECRET],
            &[("X-PagerDuty-Signature", &spaced)],
            body,
            0,
        ),
        0,
    );
    assert_rejected(run(p, &[PD_SECRET], &[], body, 0), "missing_signature");
    assert_rejected(
        run(
            p,
            &[PD_SECRET],
            &[("X-PagerDuty-Signature", "v2=abcd")],
            body,
            0,
        ),
        "malformed_signature",
    );
    assert_rejected(
        run(
            p,
            &[PD_SECRET],
            &[("X-PagerDuty-Signature", PD_SIG)],
            &body[1..],
            0,
        ),
        "signature_mismatch",
    );
}

// ---------------------------------------------------------------- Twilio (published)

const TW_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
const TW_FORM: &[u8] = b"CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234&From=%2B12349013030&To=%2B18005551212";

fn run_twilio(sig: &str, ct: &str, body: &[u8], url: &str) -> Verdict {
    run_url(
        ProviderKind::Twilio,
        &["12345"],
        &[("X-Twilio-Signature", sig), ("Content-Type", ct)],
        body,
        url,
        0,
    )
}

#[test]
fn twilio_docs_example_verifies() {
    let form = "application/x-www-form-urlencoded";
    assert_valid(
        run_twilio("0/KCTR6DLpKmkAf8muzZqo1nDgQ=", form, TW_FORM, TW_URL),
        0,
    );
    // Parameter order in the body does not matter: Twilio sorts by name.
    let reordered = b"To=%2B18005551212&Digits=1234&CallSid=CA1234567890ABCDE&From=%2B12349013030&Caller=%2B12349013030";
    assert_valid(
        run_twilio("0/KCTR6DLpKmkAf8muzZqo1nDgQ=", form, reordered, TW_URL),
        0,
    );
    assert_rejected(
        run_twilio(
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ=",
            form,
            b"CallSid=CA1234567890ABCDE",
            TW_URL,
        ),
        "signature_mismatch",
    );
    assert_rejected(
        run_twilio(
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ=",
            form,
            TW_FORM,
            "https://mycompany.com/myapp.php?foo=1&bar=3",
        ),
        "signature_mismatch",
    );
    assert_rejected(
        run_twilio("0/KCTR6DLpKmkAf8muzZqo1nDgQ=", form, TW_FORM, ""),
        "missing_url",
    );
}

#[test]
fn twilio_tries_the_url_with_and_without_the_default_port() {
    let form = "application/x-www-form-urlencoded";
    // Signed with :443, received without it.
    assert_valid(
        run_twilio("EpDEmp1PyjDYp77YxYU3GILBWzE=", form, TW_FORM, TW_URL),
        0,
    );
    // Signed without, received with it.
    assert_valid(
        run_twilio(
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ=",
            form,
            TW_FORM,
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
        ),
        0,
    );
    let variants = twilio::url_variants("http://h.example:8080/x?y=1");
    assert!(
        variants.contains(&"http://h.example/x?y=1".to_string()),
        "{variants:?}"
    );
}

/// A hand-made body with a literal `+` (a phone number pasted as is) was signed with the
/// `+`: it verifies through the literal reading, with the URL as given or another
/// spelling of it, and a `+` that really stood for a space still verifies as one.
#[test]
fn twilio_literal_plus_bodies_verify_with_every_url_spelling() {
    let form = "application/x-www-form-urlencoded";
    let literal = b"CallSid=CA1234567890ABCDE&Caller=+12349013030&Digits=1234&From=+12349013030&To=+18005551212";
    assert_valid(
        run_twilio("0/KCTR6DLpKmkAf8muzZqo1nDgQ=", form, literal, TW_URL),
        0,
    );
    // Signed with :443, received without it, `+` literal.
    assert_valid(
        run_twilio("EpDEmp1PyjDYp77YxYU3GILBWzE=", form, literal, TW_URL),
        0,
    );
    // Signed over a space: the body's `+` is a space, as the form encoding says.
    let spaced = twilio::sign(
        "12345",
        &SignInput {
            body: b"Body=hello+there",
            url: TW_URL,
            timestamp: 0,
            id: "",
            content_type: form,
        },
    )
    .expect("signed");
    assert_valid(
        run_twilio(&spaced[0].1, form, b"Body=hello+there", TW_URL),
        0,
    );
    // Neither reading of a body that was not signed verifies.
    assert_rejected(
        run_twilio(
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ=",
            form,
            b"CallSid=CA1234567890ABCDE&Caller=+12349013030",
            TW_URL,
        ),
        "signature_mismatch",
    );
}

/// Repeated names: signed once per distinct value, values in order, names in order
/// (twilio-node's `Object.keys(params).sort()` with each value list sorted and
/// de-duplicated); the expected string is written out by hand.
#[test]
fn twilio_repeated_parameters_are_signed_sorted_and_once() {
    let form = "application/x-www-form-urlencoded";
    let body = b"b=2&a=1&b=1&b=2&c=%2Bx&a=0";
    let data = format!("{TW_URL}a0a1b1b2c+x");
    let sig = crypto::encode_base64(&crypto::mac(
        crypto::Algorithm::Sha1,
        b"12345",
        &[data.as_bytes()],
    ));
    assert_valid(run_twilio(&sig, form, body, TW_URL), 0);
    let once = format!("{TW_URL}a0a1b1b2b2c+x");
    let twice = crypto::encode_base64(&crypto::mac(
        crypto::Algorithm::Sha1,
        b"12345",
        &[once.as_bytes()],
    ));
    assert_rejected(run_twilio(&twice, form, body, TW_URL), "signature_mismatch");
}

/// twilio-node's own test cases: a `'` in the query signed one way verifies the other.
#[test]
fn twilio_query_quote_encodings_are_equivalent() {
    let scheme = Scheme::preset(ProviderKind::Twilio);
    for (server, target) in [
        (
            "https://example.com/path?test=param'WithQuote",
            "https://example.com/path?test=param%27WithQuote",
        ),
        (
            "https://example.com/path?test=param%27WithQuote",
            "https://example.com/path?test=param'WithQuote",
        ),
        (
            "https://example.com:443/path?test=param",
            "https://example.com/path?test=param",
        ),
    ] {
        let input = SignInput {
            body: b"",
            url: server,
            timestamp: 0,
            id: "",
            content_type: "application/x-www-form-urlencoded",
        };
        let signed = sign(&scheme, "s3cr3t", &input).expect("sign");
        let map = headers(&[("X-Twilio-Signature", signed[0].1.as_str())]);
        let d = Delivery {
            method: "POST",
            url: target,
            headers: &map,
            body: b"",
        };
        assert_valid(verify(&scheme, &["s3cr3t"], &d, 0), 0);
    }
    let input = SignInput {
        body: b"",
        url: "https://example.com/path?test=param",
        timestamp: 0,
        id: "",
        content_type: "application/x-www-form-urlencoded",
    };
    let signed = sign(&scheme, "s3cr3t", &input).expect("sign");
    let map = headers(&[("X-Twilio-Signature", signed[0].1.as_str())]);
    let d = Delivery {
        method: "POST",
        url: "https://example.com/path?test=param2",
        headers: &map,
        body: b"",
    };
    assert_rejected(verify(&scheme, &["s3cr3t"], &d, 0), "signature_mismatch");
}

/// Finding 2 of issue 18: thousands of parameters with a bad signature made Twilio
/// verification quadratic before authentication. Beyond the cap the delivery is refused
/// before anything is decoded or MAC'd; at the cap a signed delivery still verifies.
#[test]
fn twilio_parameter_count_is_bounded_before_any_mac() {
    let scheme = Scheme::preset(ProviderKind::Twilio);
    let form = "application/x-www-form-urlencoded";
    let params = |n: usize| {
        (0..n)
            .map(|i| format!("P{i}=v{i}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let over = params(8_000);
    let started = std::time::Instant::now();
    let v = run_twilio(
        "0/KCTR6DLpKmkAf8muzZqo1nDgQ=",
        form,
        over.as_bytes(),
        TW_URL,
    );
    assert_rejected(v.clone(), "too_many_parameters");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let Verdict::Invalid(r) = v else {
        panic!("expected invalid")
    };
    assert_eq!(
        r.to_string(),
        "8002 query/form parameters, more than the 1000 this provider's signature is checked over"
    );
    // Parameters in the query count too (GET callbacks carry them there).
    let url = format!("https://example.com/cb?{}", params(1_001));
    assert_rejected(
        run_twilio("0/KCTR6DLpKmkAf8muzZqo1nDgQ=", form, b"", &url),
        "too_many_parameters",
    );
    // At the cap (2 in the URL + 998 in the body): an authentic delivery verifies.
    let body = params(twilio::MAX_PARAMETERS - 2);
    let input = SignInput {
        body: body.as_bytes(),
        url: TW_URL,
        timestamp: 0,
        id: "",
        content_type: form,
    };
    let signed = sign(&scheme, "12345", &input).expect("sign");
    assert_valid(run_twilio(&signed[0].1, form, body.as_bytes(), TW_URL), 0);
}

#[test]
fn twilio_json_bodies_are_checked_through_body_sha256() {
    let url = "https://example.com/myapp?bodySHA256=5ccde7145dfb8f56479710896586cb9d5911809d83afbe34627818790db0aec9";
    let body = br#"{"CallSid":"CA1234567890ABCDE","Caller":"+12349013030"}"#;
    assert_valid(
        run_twilio(
            "hPXmLwIy3Fgqv1i9KPmH/HhQ6zo=",
            "application/json",
            body,
            url,
        ),
        0,
    );
    assert_rejected(
        run_twilio(
            "hPXmLwIy3Fgqv1i9KPmH/HhQ6zo=",
            "application/json",
            br#"{"CallSid":"CA1234567890ABCDF","Caller":"+12349013030"}"#,
            url,
        ),
        "body_hash_mismatch",
    );
    assert_eq!(
        twilio_url_with_body_hash("https://example.com/myapp", body),
        url
    );
}

// ---------------------------------------------------------------- Zendesk (published)

#[test]
fn zendesk_docs_example_verifies() {
    let secret = "HRkRd4BeOAoUkfZr-mhauJT64rvBASlJRoIyPsd3zeA=";
    let body = br#"{"say": "hello"}"#;
    let ts = "2021-07-25T10:00:00Z";
    let now = 1_627_207_200;
    let p = ProviderKind::Zendesk;
    let h = |sig: &'static str| {
        [
            ("X-Zendesk-Webhook-Signature", sig),
            ("X-Zendesk-Webhook-Signature-Timestamp", ts),
        ]
    };
    // As published (body then timestamp) and as documented in prose (timestamp then body).
    assert_valid(
        run(
            p,
            &[secret],
            &h("tRDSF7URY8BLCDlaBcQ7FHu051Zk+aAB0NKMP53teMw="),
            body,
            now,
        ),
        0,
    );
    assert_valid(
        run(
            p,
            &[secret],
            &h("Rry/4TtIdFyawtXXp8QdI6tlAUUQ/5kL1OTp5qo/ZIk="),
            body,
            now,
        ),
        0,
    );
    assert_rejected(
        run(
            p,
            &[secret],
            &h("Rry/4TtIdFyawtXXp8QdI6tlAUUQ/5kL1OTp5qo/ZIk="),
            body,
            now + 301,
        ),
        "timestamp_stale",
    );
    assert_rejected(
        run(
            p,
            &[secret],
            &h("Rry/4TtIdFyawtXXp8QdI6tlAUUQ/5kL1OTp5qo/ZIk="),
            b"{}",
            now,
        ),
        "signature_mismatch",
    );
    assert_rejected(
        run(
            p,
            &[secret],
            &[(
                "X-Zendesk-Webhook-Signature",
                "Rry/4TtIdFyawtXXp8QdI6tlAUUQ/5kL1OTp5qo/ZIk=",
            )],
            body,
            now,
        ),
        "missing_timestamp",
    );
}

// ---------------------------------------------------------------- computed vectors

#[test]
fn grafana_signs_timestamp_colon_body_when_the_timestamp_is_sent() {
    let p = ProviderKind::Grafana;
    let s = "grafana-hmac-secret";
    let body = br#"{"status":"firing"}"#;
    let with_ts = [
        (
            "X-Grafana-Alerting-Signature",
            "d8d33a8c004f4208e55b4f06afd580d05fb212a55b4b554822a4ee92b30f10cb",
        ),
        ("X-Grafana-Alerting-Timestamp", "1700000000"),
    ];
    assert_valid(run(p, &[s], &with_ts, body, 1_700_000_000), 0);
    assert_rejected(
        run(p, &[s], &with_ts, body, 1_700_000_301),
        "timestamp_stale",
    );
    assert_rejected(
        run(p, &[s], &with_ts, body, 1_699_999_699),
        "timestamp_future",
    );
    let plain = [(
        "X-Grafana-Alerting-Signature",
        "1c0a294cfc62a3a54be979f6eeebaab8a9fa9256064ea2a71a9e1a06f7c28f8d",
    )];
    assert_valid(run(p, &[s], &plain, body, 0), 0);
    // The body-only MAC does not pass once a timestamp header is added.
    let mixed = [plain[0], ("X-Grafana-Alerting-Timestamp", "1700000000")];
    assert_rejected(
        run(p, &[s], &mixed, body, 1_700_000_000),
        "signature_mismatch",
    );
}

#[test]
fn shopify_sentry_jira_bitbucket_vectors() {
    assert_valid(
        run(
            ProviderKind::Shopify,
            &["shpss_0123456789abcdef"],
            &[(
                "X-Shopify-Hmac-Sha256",
                "ne+Twf3BMrJ3AMcsdK/cwASHZl8vw1iJXvr4ORLXiaU=",
            )],
            br#"{"id":820982911946154508,"email":"jon@example.com"}"#,
            0,
        ),
        0,
    );
    assert_valid(
        run(
            ProviderKind::Sentry,
            &["sentry-client-secret"],
            &[(
                "Sentry-Hook-Signature",
                "b10510cd905833559149fd3a96f900dd812f55c0b58d2570a5892de6d37d9865",
            )],
            br#"{"action":"created","data":{}}"#,
            0,
        ),
        0,
    );
    let jira = [(
        "X-Hub-Signature",
        "sha256=4ce4f83412227a95fec604b770261b97c7f5650cf98949a1edb42156781a6f57",
    )];
    let body = br#"{"webhookEvent":"jira:issue_created"}"#;
    for p in [ProviderKind::Jira, ProviderKind::Bitbucket] {
        assert_valid(run(p, &["jira-secret"], &jira, body, 0), 0);
        let sha1 = hex::encode(crypto::mac(
            crypto::Algorithm::Sha1,
            b"jira-secret",
            &[body],
        ));
        let sha1 = format!("sha1={sha1}");
        assert_rejected(
            run(p, &["jira-secret"], &[("X-Hub-Signature", &sha1)], body, 0),
            "malformed_signature",
        );
        assert_rejected(run(p, &["jira-secret"], &[], body, 0), "missing_signature");
    }
}

#[test]
fn linear_checks_the_signed_body_timestamp_within_60s() {
    let p = ProviderKind::Linear;
    let s = "lin_wh_secret";
    let body = br#"{"action":"create","type":"Issue","webhookTimestamp":1700000000123}"#;
    let h = [(
        "Linear-Signature",
        "4ff58c16bddf3142f867243ebe039e306fcc4206e60072da0c5497bdde40248b",
    )];
    assert_valid(run(p, &[s], &h, body, 1_700_000_000), 0);
    assert_valid(run(p, &[s], &h, body, 1_700_000_060), 0);
    assert_rejected(run(p, &[s], &h, body, 1_700_000_062), "timestamp_stale");
    assert_rejected(run(p, &[s], &h, body, 1_699_999_939), "timestamp_future");
    // A fresh unsigned header cannot rescue a stale signed body.
    let fresh = [h[0], ("Linear-Timestamp", "1700000100000")];
    assert_rejected(run(p, &[s], &fresh, body, 1_700_000_100), "timestamp_stale");
    let no_ts = br#"{"action":"create"}"#;
    let sig = hex::encode(crypto::mac(
        crypto::Algorithm::Sha256,
        s.as_bytes(),
        &[no_ts],
    ));
    assert_rejected(
        run(p, &[s], &[("Linear-Signature", &sig)], no_ts, 1_700_000_000),
        "missing_timestamp",
    );
}

#[test]
fn token_presets_accept_bearer_basic_and_the_configured_header() {
    let secret = "dd-token-9f8e7d";
    let basic = format!(
        "Basic {}",
        crypto::encode_base64(format!("datadog:{secret}").as_bytes())
    );
    for p in [ProviderKind::Datadog, ProviderKind::Alertmanager] {
        assert_valid(
            run(
                p,
                &[secret],
                &[("Authorization", "Bearer dd-token-9f8e7d")],
                b"{}",
                0,
            ),
            0,
        );
        assert_valid(
            run(
                p,
                &[secret],
                &[("authorization", "bearer dd-token-9f8e7d")],
                b"{}",
                0,
            ),
            0,
        );
        assert_valid(run(p, &[secret], &[("Authorization", &basic)], b"{}", 0), 0);
        assert_valid(run(p, &[secret], &[("Authorization", secret)], b"{}", 0), 0);
        assert_valid(
            run(
                p,
                &["old", secret],
                &[("Authorization", "Bearer dd-token-9f8e7d")],
                b"{}",
                0,
            ),
            1,
        );
        assert_rejected(
            run(p, &[secret], &[("Authorization", "Bearer nope")], b"{}", 0),
            "token_mismatch",
        );
        assert_rejected(run(p, &[secret], &[], b"{}", 0), "missing_signature");
        // The token alone in an arbitrary header is not accepted unless configured.
        assert_rejected(
            run(p, &[secret], &[("X-Token", secret)], b"{}", 0),
            "missing_signature",
        );
        let scheme = Scheme {
            provider: p,
            generic: None,
            auth: None,
            token_header: Some("x-token".to_string()),
            oidc: None,
            sns: None,
        };
        let map = headers(&[("X-Token", secret)]);
        let d = Delivery {
            method: "POST",
            url: "",
            headers: &map,
            body: b"{}",
        };
        assert_valid(verify(&scheme, &[secret], &d, 0), 0);
        let signed = sign(&scheme, secret, &input(b"{}", 0)).expect("sign");
        assert_eq!(signed, vec![("x-token".to_string(), secret.to_string())]);
    }
}

#[test]
fn gitlab_plain_token_and_signing_token() {
    let p = ProviderKind::Gitlab;
    assert_valid(
        run(
            p,
            &["glpat-hook"],
            &[("X-Gitlab-Token", "glpat-hook")],
            b"{}",
            0,
        ),
        0,
    );
    assert_rejected(
        run(p, &["glpat-hook"], &[("X-Gitlab-Token", "other")], b"{}", 0),
        "token_mismatch",
    );
    assert_rejected(run(p, &["glpat-hook"], &[], b"{}", 0), "missing_signature");
    // Signing token: Standard Webhooks headers, key = base64 after whsec_.
    assert_valid(
        run_sw(
            p,
            &[SW_SECRET],
            &sw_headers("webhook", SW_SIG),
            SW_BODY,
            SW_TS,
        ),
        0,
    );
    assert_rejected(
        run_sw(
            p,
            &[SW_SECRET],
            &sw_headers("webhook", SW_SIG),
            SW_BODY,
            SW_TS + 400,
        ),
        "timestamp_stale",
    );
    // A whsec_ secret is never compared as a plain token.
    assert_rejected(
        run(p, &[SW_SECRET], &[("X-Gitlab-Token", SW_SECRET)], b"{}", 0),
        "missing_signature",
    );
    // Rotation between modes: both live.
    assert_valid(
        run(
            p,
            &[SW_SECRET, "glpat-hook"],
            &[("X-Gitlab-Token", "glpat-hook")],
            b"{}",
            0,
        ),
        1,
    );
    assert_valid(
        run_sw(
            p,
            &["glpat-hook", SW_SECRET],
            &sw_headers("webhook", SW_SIG),
            SW_BODY,
            SW_TS,
        ),
        1,
    );
}

fn generic_spec(signed_content: &str) -> SignatureSpec {
    SignatureSpec {
        header: "X-Signature".to_string(),
        algorithm: HmacAlgorithm::Sha512,
        encoding: SignatureEncoding::Base64,
        prefix: "sig=".to_string(),
        signed_content: signed_content.to_string(),
        timestamp_header: Some("X-Timestamp".to_string()),
        id_header: Some("X-Id".to_string()),
        tolerance_seconds: Some(120),
    }
}

fn spec_for(provider: ProviderKind, signature: Option<SignatureSpec>) -> WebhookIntegrationSpec {
    let yaml = format!("provider: {provider}");
    let mut spec: WebhookIntegrationSpec = serde_yaml::from_str(&yaml).expect("spec");
    spec.signature = signature.map(Box::new);
    spec
}

#[test]
fn generic_scheme_follows_its_spec() {
    let scheme = Scheme::from_spec(&spec_for(
        ProviderKind::Generic,
        Some(generic_spec("{timestamp}.{id}.{body}")),
    ))
    .expect("scheme");
    let sig = "sig=ZjLhEACnAswEsDgmRwoMgigwkHmQ+v4zv5HZzV4f88YITzSYhFP7zEFeP5tyXjLoPga/T0snU8NCJigY6wWHMg==";
    let body = br#"{"a":1}"#;
    let check = |pairs: &[(&str, &str)], now: i64| {
        let map = headers(pairs);
        verify(
            &scheme,
            &["generic-secret"],
            &Delivery {
                method: "POST",
                url: "",
                headers: &map,
                body,
            },
            now,
        )
    };
    let good = [
        ("X-Signature", sig),
        ("X-Timestamp", "1700000000"),
        ("X-Id", "msg_1"),
    ];
    assert_valid(check(&good, 1_700_000_000), 0);
    assert_rejected(check(&good, 1_700_000_121), "timestamp_stale");
    assert_rejected(check(&good[..2], 1_700_000_000), "missing_id");
    assert_rejected(
        check(&[good[0], good[2]], 1_700_000_000),
        "missing_timestamp",
    );
    assert_rejected(
        check(
            &[("X-Signature", &sig[4..]), good[1], good[2]],
            1_700_000_000,
        ),
        "malformed_signature",
    );
    assert_rejected(
        check(&[good[0], good[1], ("X-Id", "msg_2")], 1_700_000_000),
        "signature_mismatch",
    );
    let signed = sign(
        &scheme,
        "generic-secret",
        &SignInput {
            body,
            url: "",
            timestamp: 1_700_000_000,
            id: "msg_1",
            content_type: "application/json",
        },
    )
    .expect("sign");
    assert_eq!(signed[0], ("x-signature".to_string(), sig.to_string()));
}

#[test]
fn scheme_from_spec_refuses_inconsistent_specs() {
    assert_eq!(
        Scheme::from_spec(&spec_for(ProviderKind::Generic, None)),
        Err(SchemeError::MissingGenericSignature)
    );
    assert_eq!(
        Scheme::from_spec(&spec_for(
            ProviderKind::Github,
            Some(generic_spec("{body}"))
        )),
        Err(SchemeError::UnexpectedSignature)
    );
    assert!(matches!(
        Scheme::from_spec(&spec_for(
            ProviderKind::Generic,
            Some(generic_spec("{body}{nonce}"))
        )),
        Err(SchemeError::InvalidSignedContent(_))
    ));
    assert!(matches!(
        Scheme::from_spec(&spec_for(
            ProviderKind::Generic,
            Some(generic_spec("{timestamp}"))
        )),
        Err(SchemeError::InvalidSignedContent(_))
    ));
    let mut no_ts = generic_spec("{timestamp}.{body}");
    no_ts.timestamp_header = None;
    assert!(matches!(
        Scheme::from_spec(&spec_for(ProviderKind::Generic, Some(no_ts))),
        Err(SchemeError::InvalidSignedContent(_))
    ));
    let mut spec = spec_for(ProviderKind::Github, None);
    spec.token_header = Some("X-Token".to_string());
    assert_eq!(
        Scheme::from_spec(&spec),
        Err(SchemeError::UnexpectedTokenHeader)
    );
    let mut spec = spec_for(ProviderKind::Datadog, None);
    spec.token_header = Some("X-Token".to_string());
    assert_eq!(
        Scheme::from_spec(&spec)
            .expect("scheme")
            .token_header
            .as_deref(),
        Some("x-token")
    );
}

#[test]
fn rejections_never_show_secrets_or_expected_signatures() {
    let expected = hex::encode(crypto::mac(
        crypto::Algorithm::Sha256,
        GH_SECRET.as_bytes(),
        &[b"other".as_slice()],
    ));
    let v = run(
        ProviderKind::Github,
        &[GH_SECRET],
        &[("X-Hub-Signature-256", GH_SIG256)],
        b"other",
        0,
    );
    let Verdict::Invalid(r) = v else {
        panic!("expected invalid")
    };
    let text = format!("{r} {r:?}");
    assert!(
        !text.contains(GH_SECRET) && !text.contains(&expected),
        "{text}"
    );
    assert!(Rejection::CODES.contains(&r.code()));
}

#[test]
fn delivery_meta_finds_ids_and_event_types() {
    let gh = headers(&[
        ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("X-GitHub-Event", "issues"),
    ]);
    let m = delivery_meta(&Scheme::preset(ProviderKind::Github), &gh, None);
    assert_eq!(
        m.id.as_deref(),
        Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
    );
    assert_eq!(m.event_type.as_deref(), Some("issues"));
    let stripe = serde_json::json!({"id": "evt_1", "type": "invoice.paid"});
    let m = delivery_meta(
        &Scheme::preset(ProviderKind::Stripe),
        &HeaderMap::new(),
        Some(&stripe),
    );
    assert_eq!(
        (m.id.as_deref(), m.event_type.as_deref()),
        (Some("evt_1"), Some("invoice.paid"))
    );
    let pd: serde_json::Value = serde_json::from_str(PD_BODY).expect("json");
    let m = delivery_meta(
        &Scheme::preset(ProviderKind::Pagerduty),
        &HeaderMap::new(),
        Some(&pd),
    );
    assert_eq!(m.id.as_deref(), Some("01BWDWL3NYY7LUFPZCC28QUCMK"));
    assert_eq!(m.event_type.as_deref(), Some("incident.priority_updated"));
    let slack = serde_json::json!({"type": "event_callback", "event_id": "Ev123", "event": {"type": "app_mention"}});
    let m = delivery_meta(
        &Scheme::preset(ProviderKind::Slack),
        &HeaderMap::new(),
        Some(&slack),
    );
    assert_eq!(
        (m.id.as_deref(), m.event_type.as_deref()),
        (Some("Ev123"), Some("app_mention"))
    );
    let sw = headers(&[("svix-id", "msg_1")]);
    assert_eq!(
        delivery_meta(&Scheme::preset(ProviderKind::Svix), &sw, None)
            .id
            .as_deref(),
        Some("msg_1")
    );
    // Datadog: the recovery of an alert is not a duplicate of its trigger.
    let dd = Scheme::preset(ProviderKind::Datadog);
    let t = delivery_meta(
        &dd,
        &HeaderMap::new(),
        Some(&serde_json::json!({"id": "42", "alert_transition": "Triggered"})),
    );
    let r = delivery_meta(
        &dd,
        &HeaderMap::new(),
        Some(&serde_json::json!({"id": "42", "alert_transition": "Recovered"})),
    );
    assert_ne!(t.id, r.id);
    // Its key joins id, transition and times, and is bounded as a whole: 256 bytes at
    // most, cut at a character boundary.
    let meta = |body: serde_json::Value| delivery_meta(&dd, &HeaderMap::new(), Some(&body)).id;
    assert_eq!(
        meta(
            serde_json::json!({"id": " 42 ", "alert_transition": "Warn", "date": 17, "last_updated": "x"})
        ),
        Some("42:Warn:17:x".to_string())
    );
    assert_eq!(meta(serde_json::json!({"id": 7})), Some("7".to_string()));
    let long =
        meta(serde_json::json!({"id": "a".repeat(250), "alert_transition": "ééé"})).expect("an id");
    assert_eq!(long, format!("{}:éé", "a".repeat(250)));
    let longer = meta(serde_json::json!({"id": "a".repeat(300)})).expect("an id");
    assert_eq!(longer, "a".repeat(256));
    assert_eq!(meta(serde_json::json!({"id": "  ", "date": 1})), None);
}

/// The receiver skips building the JSON tree for providers `meta_reads_body` says never
/// read it: for those, a body full of every field any provider reads must change nothing.
#[test]
fn providers_said_not_to_read_the_body_do_not() {
    let rich = serde_json::json!({
        "id": "body-id", "type": "url_verification", "challenge": "c",
        "event_id": "Ev1", "eventType": "t", "object_kind": "push",
        "status": "firing", "webhookEvent": "jira:issue_created",
        "event_type": "e", "alert_transition": "Triggered", "date": 1, "last_updated": 2,
        "event": {"id": "ev", "type": "app_mention", "event_type": "incident.triggered"},
    });
    let hdrs = headers(&[
        ("X-GitHub-Delivery", "d1"),
        ("X-GitHub-Event", "push"),
        ("X-Shopify-Webhook-Id", "s1"),
        ("X-Shopify-Topic", "orders/create"),
        ("I-Twilio-Idempotency-Token", "tw1"),
        ("Request-ID", "r1"),
        ("Sentry-Hook-Resource", "issue"),
        ("X-Request-UUID", "b1"),
        ("X-Event-Key", "repo:push"),
    ]);
    let mut header_only = 0;
    for p in ProviderKind::ALL {
        if meta_reads_body(p) {
            continue;
        }
        header_only += 1;
        let scheme = Scheme::preset(p);
        assert_eq!(
            delivery_meta(&scheme, &hdrs, Some(&rich)),
            delivery_meta(&scheme, &hdrs, None),
            "{p:?} reads the body"
        );
        assert!(
            handshake(p, &hdrs, &rich, Some("k")).is_none(),
            "{p:?} has a handshake"
        );
    }
    assert_eq!(header_only, 7);
    // And the check itself can fail: Slack answers this body's handshake.
    assert!(meta_reads_body(ProviderKind::Slack));
    assert!(handshake(ProviderKind::Slack, &hdrs, &rich, None).is_some());
}

#[test]
fn content_types_providers_never_send_are_refused() {
    assert!(accepts_content_type(
        ProviderKind::Stripe,
        Some("application/json; charset=utf-8")
    ));
    assert!(!accepts_content_type(
        ProviderKind::Stripe,
        Some("application/x-www-form-urlencoded")
    ));
    assert!(accepts_content_type(
        ProviderKind::Twilio,
        Some("application/x-www-form-urlencoded")
    ));
    assert!(accepts_content_type(
        ProviderKind::Slack,
        Some("application/x-www-form-urlencoded")
    ));
    assert!(!accepts_content_type(
        ProviderKind::Pagerduty,
        Some("text/plain")
    ));
    assert!(accepts_content_type(
        ProviderKind::Generic,
        Some("text/plain")
    ));
    assert!(accepts_content_type(ProviderKind::Github, None));
}

// ---------------------------------------------------------------- properties

fn input(body: &[u8], timestamp: i64) -> SignInput<'_> {
    SignInput {
        body,
        url: "",
        timestamp,
        id: "msg_2Kw5",
        content_type: "application/json",
    }
}

/// A scheme, the sender's key (what `sign` takes) and the integration's key (what
/// `verify` takes; the same for shared secrets) for every provider, derived from random
/// bytes. `whsec` picks the other form where there are two (GitLab signing tokens,
/// Standard Webhooks symmetric vs `v1a`).
fn scheme_and_secret(provider: ProviderKind, key: &[u8], whsec: bool) -> (Scheme, String, String) {
    use sha2::Digest as _;
    let seed: [u8; 32] = sha2::Sha256::digest(key).into();
    let ed = ed25519_dalek::SigningKey::from_bytes(&seed);
    let (sign_secret, verify_secret) = match provider {
        ProviderKind::StandardWebhooks | ProviderKind::Svix if !whsec => (
            format!("whsk_{}", crypto::encode_base64(&seed)),
            format!(
                "whpk_{}",
                crypto::encode_base64(ed.verifying_key().as_bytes())
            ),
        ),
        ProviderKind::StandardWebhooks | ProviderKind::Svix => {
            let s = format!("whsec_{}", crypto::encode_base64(key));
            (s.clone(), s)
        }
        ProviderKind::Gitlab if whsec => {
            let s = format!("whsec_{}", crypto::encode_base64(key));
            (s.clone(), s)
        }
        ProviderKind::Discord => (
            hex::encode(seed),
            hex::encode(ed.verifying_key().as_bytes()),
        ),
        ProviderKind::Sendgrid => (SG_PRIV.to_string(), SG_PUB.to_string()),
        _ => (hex::encode(key), hex::encode(key)),
    };
    let scheme = match provider {
        ProviderKind::Generic => Scheme::from_spec(&spec_for(
            provider,
            Some(generic_spec("{timestamp}.{id}.{body}")),
        ))
        .unwrap_or_else(|_| Scheme::preset(provider)),
        _ => Scheme::preset(provider),
    };
    (scheme, sign_secret, verify_secret)
}

/// Providers whose body is not authenticated (a token only proves who sent it).
fn body_is_signed(provider: ProviderKind, secret: &str) -> bool {
    match provider {
        ProviderKind::Datadog | ProviderKind::Alertmanager | ProviderKind::AzureEventGrid => false,
        ProviderKind::Gitlab => secret.starts_with("whsec_"),
        _ => true,
    }
}

/// The header carrying the MAC or token, which the property mutates.
fn signature_header(headers: &[(String, String)]) -> usize {
    // GitHub also sends the legacy SHA-1 header, which is ignored next to the SHA-256 one.
    if let Some(i) = headers
        .iter()
        .position(|(k, _)| k.eq_ignore_ascii_case("X-Hub-Signature-256"))
    {
        return i;
    }
    headers
        .iter()
        .position(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k.contains("signature")
                || k.contains("hmac")
                || k == "authorization"
                || k == "x-gitlab-token"
        })
        .unwrap_or(0)
}

fn to_map(pairs: &[(String, String)], content_type: &str) -> Option<HeaderMap> {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).ok()?,
            HeaderValue::from_str(v).ok()?,
        );
    }
    map.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).ok()?,
    );
    Some(map)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn sign_then_verify_is_valid_and_any_byte_change_is_rejected(
        body in proptest::collection::vec(any::<u8>(), 1..256),
        key in proptest::collection::vec(any::<u8>(), 16..48),
        ts in 1_000_000_000i64..2_000_000_000,
        whsec in any::<bool>(),
        pos in any::<prop::sample::Index>(),
        replacement in any::<u8>(),
        sig_pos in any::<prop::sample::Index>(),
    ) {
        for provider in ProviderKind::ALL {
            // Private-key senders: oidc.rs and sns.rs tests, tests/it/oidc_sns.rs.
            if matches!(provider, ProviderKind::GooglePubsub | ProviderKind::GithubActions | ProviderKind::AwsSns) {
                continue;
            }
            let (scheme, signing_secret, secret) = scheme_and_secret(provider, &key, whsec);
            // Twilio signs JSON bodies through the URL's bodySHA256.
            let url = twilio_url_with_body_hash("https://hooks.example.com/hooks/abc?x=1", &body);
            let content_type = "application/json";
            let signed = sign(&scheme, &signing_secret, &SignInput { body: &body, url: &url, timestamp: ts, id: "msg_2Kw5", content_type })
                .map_err(|e| TestCaseError::fail(format!("{provider}: {e}")))?;
            let map = to_map(&signed, content_type).ok_or_else(|| TestCaseError::fail(format!("{provider}: bad header")))?;
            let d = Delivery { method: "POST", url: &url, headers: &map, body: &body };
            let verdict = verify(&scheme, &["unrelated-old-secret", &secret], &d, ts);
            prop_assert_eq!(&verdict, &Verdict::Valid(Verified { secret_index: 1, timestamp: verdict_ts(&verdict) }), "{}", provider);

            if body_is_signed(provider, &secret) {
                let mut tampered = body.clone();
                let i = pos.index(tampered.len());
                if tampered[i] != replacement {
                    tampered[i] = replacement;
                    let d = Delivery { method: "POST", url: &url, headers: &map, body: &tampered };
                    prop_assert!(!verify(&scheme, &[&secret], &d, ts).is_valid(), "{}: tampered body accepted", provider);
                }
            }

            let which = signature_header(&signed);
            let original = signed[which].1.clone();
            let mut bytes = original.clone().into_bytes();
            let i = sig_pos.index(bytes.len());
            bytes[i] = replacement;
            if let Ok(mutated) = String::from_utf8(bytes) {
                // A change of letter case in hex digits or a prefix is the same signature;
                // so is base64 padding turned into whitespace (header values are trimmed,
                // and unpadded base64 decodes to the same bytes).
                let unpadded = |s: &str| {
                    s.trim_matches(|c: char| c.is_ascii_whitespace())
                        .trim_end_matches('=')
                        .to_string()
                };
                if !mutated.eq_ignore_ascii_case(&original)
                    && unpadded(&mutated) != unpadded(&original)
                {
                    let mut changed = signed.clone();
                    changed[which].1 = mutated;
                    if let Some(map) = to_map(&changed, content_type) {
                        let d = Delivery { method: "POST", url: &url, headers: &map, body: &body };
                        prop_assert!(!verify(&scheme, &[&secret], &d, ts).is_valid(), "{}: tampered signature accepted", provider);
                    }
                }
            }
        }
    }

    #[test]
    fn twilio_form_values_are_signed(
        values in proptest::collection::vec("[A-Za-z0-9]{1,12}", 1..6),
        pos in any::<prop::sample::Index>(),
        replacement in "[A-Za-z0-9]",
    ) {
        let body = values.iter().enumerate().map(|(i, v)| format!("P{i}={v}")).collect::<Vec<_>>().join("&");
        let scheme = Scheme::preset(ProviderKind::Twilio);
        let url = "https://hooks.example.com/hooks/abc";
        let ct = "application/x-www-form-urlencoded";
        let signed = sign(&scheme, "auth-token", &SignInput { body: body.as_bytes(), url, timestamp: 0, id: "", content_type: ct })
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let map = to_map(&signed, ct).ok_or_else(|| TestCaseError::fail("header"))?;
        let ok = Delivery { method: "POST", url, headers: &map, body: body.as_bytes() };
        prop_assert!(verify(&scheme, &["auth-token"], &ok, 0).is_valid());
        // Change one character of one value.
        let i = pos.index(values.len());
        let mut changed = values.clone();
        let v = &changed[i];
        let j = v.len() - 1;
        if v[j..] != replacement[..] {
            changed[i] = format!("{}{}", &v[..j], replacement);
            let body2 = changed.iter().enumerate().map(|(i, v)| format!("P{i}={v}")).collect::<Vec<_>>().join("&");
            let bad = Delivery { method: "POST", url, headers: &map, body: body2.as_bytes() };
            prop_assert!(!verify(&scheme, &["auth-token"], &bad, 0).is_valid());
        }
    }
}

fn verdict_ts(v: &Verdict) -> Option<i64> {
    match v {
        Verdict::Valid(ok) => ok.timestamp,
        Verdict::Invalid(_) => None,
    }
}

#[test]
fn check_secret_explains_unusable_standard_webhooks_keys() {
    assert!(check_secret(ProviderKind::StandardWebhooks, SW_SECRET).is_ok());
    assert!(check_secret(ProviderKind::Svix, "whsec_!!").is_err());
    assert!(check_secret(ProviderKind::Gitlab, "whsec_!!").is_err());
    assert!(check_secret(ProviderKind::Gitlab, "plain").is_ok());
    assert_eq!(
        check_secret(ProviderKind::Github, ""),
        Err(SignError::EmptySecret)
    );
}

#[test]
fn delivery_debug_hides_header_values_and_body() {
    let map = headers(&[("Authorization", "Bearer top-secret-token")]);
    let d = Delivery {
        method: "POST",
        url: "",
        headers: &map,
        body: b"private body",
    };
    let text = format!("{d:?}");
    assert!(text.contains("authorization"), "{text}");
    assert!(
        !text.contains("top-secret-token") && !text.contains("private body"),
        "{text}"
    );
}

// ---------------------------------------------------------------- further senders (issue 19)
//
// Asymmetric vectors were produced with PyNaCl 1.5.0 (libsodium) and Python
// `cryptography` (OpenSSL), independent of the RustCrypto crates used here; HMAC vectors
// with Python `hmac`. No provider publishes a complete vector (key, body, signature) for
// these schemes.

/// A P-256 key pair made with `cryptography` (PKCS#8 DER private key, SPKI DER public
/// key, base64: the form SendGrid shows its verification key in).
const SG_PRIV: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg0S8NU4NxliBZyVD9k2jN857hrm8DeI9ccKkLTK/0BK2hRANCAARjZfJ0c+Vw4mqCdLMWKMFajqZR/C+MggDy0S5TO9fLLwORaScGCryCFPrGGXoFrplcjaAFczZGp3PBvOlyGs2k";
const SG_PUB: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEY2XydHPlcOJqgnSzFijBWo6mUfwvjIIA8tEuUzvXyy8DkWknBgq8ghT6xhl6Ba6ZXI2gBXM2RqdzwbzpchrNpA==";
const SG_BODY: &[u8] = br#"[{"email":"a@example.com","event":"delivered","sg_event_id":"e1"}]"#;
const SG_SIG: &str = "MEYCIQC5pyyF2TXlvveLhyAOa0T+s9ozvQ2zImIrwtApZ35h0wIhAM/QcxrK/sm4slOXi3d1hTiWkr6D2+tepeRCcGunOpTb";
const SG_SIG_HEADER: &str = "X-Twilio-Email-Event-Webhook-Signature";
const SG_TS_HEADER: &str = "X-Twilio-Email-Event-Webhook-Timestamp";

#[test]
fn sendgrid_ecdsa_vector_from_openssl_verifies() {
    let h = [(SG_SIG_HEADER, SG_SIG), (SG_TS_HEADER, "1700000000")];
    let p = ProviderKind::Sendgrid;
    assert_valid(run(p, &[SG_PUB], &h, SG_BODY, 1_700_000_000), 0);
    // PEM, as some users paste it, is the same key.
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n{}\n-----END PUBLIC KEY-----\n",
        &SG_PUB[..64],
        &SG_PUB[64..]
    );
    assert_valid(run(p, &["not-a-key", &pem], &h, SG_BODY, 1_700_000_000), 1);
    assert_rejected(
        run(p, &[SG_PUB], &h, b"[]", 1_700_000_000),
        "signature_mismatch",
    );
    // The timestamp is signed: another one is a mismatch, not a window problem.
    let other_ts = [(SG_SIG_HEADER, SG_SIG), (SG_TS_HEADER, "1700000001")];
    assert_rejected(
        run(p, &[SG_PUB], &other_ts, SG_BODY, 1_700_000_001),
        "signature_mismatch",
    );
    assert_rejected(
        run(p, &[SG_PUB], &h, SG_BODY, 1_700_000_301),
        "timestamp_stale",
    );
    assert_rejected(
        run(p, &[SG_PUB], &h, SG_BODY, 1_699_999_699),
        "timestamp_future",
    );
    assert_rejected(
        run(p, &["c2VuZGdyaWQ="], &h, SG_BODY, 1_700_000_000),
        "invalid_secret",
    );
    assert_rejected(
        run(
            p,
            &[SG_PUB],
            &[
                (SG_SIG_HEADER, "bm90IGRlcg=="),
                (SG_TS_HEADER, "1700000000"),
            ],
            SG_BODY,
            1_700_000_000,
        ),
        "malformed_signature",
    );
    assert_rejected(
        run(
            p,
            &[SG_PUB],
            &[(SG_TS_HEADER, "1700000000")],
            SG_BODY,
            1_700_000_000,
        ),
        "missing_signature",
    );
    assert_rejected(
        run(
            p,
            &[SG_PUB],
            &[(SG_SIG_HEADER, SG_SIG)],
            SG_BODY,
            1_700_000_000,
        ),
        "missing_timestamp",
    );
    assert!(check_secret(p, SG_PUB).is_ok());
    assert!(check_secret(p, "c2VuZGdyaWQ=").is_err());
    // sign takes the private key and round-trips.
    let signed = sign(&Scheme::preset(p), SG_PRIV, &input(SG_BODY, 1_700_000_000)).expect("sign");
    let pairs: Vec<(&str, &str)> = signed
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_valid(run(p, &[SG_PUB], &pairs, SG_BODY, 1_700_000_000), 0);
    assert!(
        sign(&Scheme::preset(p), SG_PUB, &input(SG_BODY, 1)).is_err(),
        "a public key cannot sign"
    );
}

const D_PRIV: &str = "6465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f80818283";
const D_PUB: &str = "0bbc346a57667c380120bd9c7fd7e51d2c5fdfea37cd2f5bf405b2c6bf6f2d78";
const D_BODY: &[u8] = br#"{"type":1,"id":"1","application_id":"2","version":1,"token":"t"}"#;
const D_SIG: &str = "98bd9300c3ec1723b74fde889e0def2ead95ebb22868f2a136dd7baa6749e9eee1110feab1865aa124a2c9f796d28bf919a45f6358558d293cefe39739c9db05";

#[test]
fn discord_pynacl_vector_verifies_and_ping_is_answered() {
    let p = ProviderKind::Discord;
    let h = [
        ("X-Signature-Ed25519", D_SIG),
        ("X-Signature-Timestamp", "1700000000"),
    ];
    assert_valid(run(p, &[D_PUB], &h, D_BODY, 1_700_000_000), 0);
    assert_valid(
        run(p, &[&D_PUB.to_uppercase()], &h, D_BODY, 1_700_000_000),
        0,
    );
    assert_rejected(
        run(p, &[D_PUB], &h, br#"{"type":2}"#, 1_700_000_000),
        "signature_mismatch",
    );
    let later = [
        ("X-Signature-Ed25519", D_SIG),
        ("X-Signature-Timestamp", "1700000001"),
    ];
    assert_rejected(
        run(p, &[D_PUB], &later, D_BODY, 1_700_000_000),
        "signature_mismatch",
    );
    assert_rejected(
        run(p, &[D_PUB], &h, D_BODY, 1_700_000_400),
        "timestamp_stale",
    );
    assert_rejected(run(p, &["00"], &h, D_BODY, 1_700_000_000), "invalid_secret");
    // The private key in the Secret is a mistake the message explains.
    assert_rejected(run(p, &["zz"], &h, D_BODY, 1_700_000_000), "invalid_secret");
    assert_rejected(
        run(
            p,
            &[D_PUB],
            &[
                ("X-Signature-Ed25519", "abcd"),
                ("X-Signature-Timestamp", "1700000000"),
            ],
            D_BODY,
            1_700_000_000,
        ),
        "malformed_signature",
    );
    assert!(check_secret(p, D_PUB).is_ok());
    assert!(check_secret(p, "abc").is_err());
    // sign with the seed reproduces PyNaCl's signature (ed25519 is deterministic).
    let signed = sign(&Scheme::preset(p), D_PRIV, &input(D_BODY, 1_700_000_000)).expect("sign");
    assert_eq!(
        signed[0],
        ("X-Signature-Ed25519".to_string(), D_SIG.to_string())
    );
    // The 64-byte libsodium form (seed + public key) works too; a mismatched one does not.
    assert!(
        sign(
            &Scheme::preset(p),
            &format!("{D_PRIV}{D_PUB}"),
            &input(D_BODY, 1)
        )
        .is_ok()
    );
    assert!(
        sign(
            &Scheme::preset(p),
            &format!("{D_PRIV}{}", "00".repeat(32)),
            &input(D_BODY, 1)
        )
        .is_err()
    );
    // PING → {"type":1}; other interactions are deliveries.
    let none = HeaderMap::new();
    let ping: serde_json::Value = serde_json::from_slice(D_BODY).expect("json");
    assert_eq!(
        handshake(p, &none, &ping, None),
        Some(("application/json", br#"{"type":1}"#.to_vec()))
    );
    assert!(handshake(p, &none, &serde_json::json!({"type": 2}), None).is_none());
}

const V1A_PK: &str = "whpk_A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=";
const V1A_SK: &str = "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// PyNaCl's ed25519 signature of `{SW_ID}.{SW_TS}.{SW_BODY}` under the seed 00..1f.
const V1A_SIG: &str =
    "v1a,yoUrgEkc12aGqm0n4Sydmdz55xJfTz4AsAgieHFjmkR7LJtqVCZOQYzvvHjI5kAey+r4iaBGxTFRrl2iBQxtDQ==";

#[test]
fn standard_webhooks_v1a_verifies_with_whpk_and_mixes_with_v1() {
    for (p, prefix) in [
        (ProviderKind::StandardWebhooks, "webhook"),
        (ProviderKind::Svix, "svix"),
    ] {
        assert_valid(
            run_sw(p, &[V1A_PK], &sw_headers(prefix, V1A_SIG), SW_BODY, SW_TS),
            0,
        );
        // One header with both kinds: either key passes on its own entry.
        let mixed = format!("{SW_SIG} {V1A_SIG}");
        assert_valid(
            run_sw(p, &[V1A_PK], &sw_headers(prefix, &mixed), SW_BODY, SW_TS),
            0,
        );
        assert_valid(
            run_sw(p, &[SW_SECRET], &sw_headers(prefix, &mixed), SW_BODY, SW_TS),
            0,
        );
        // A bad v1 next to a good v1a (and the reverse) still passes.
        let bad_v1 = format!("v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU= {V1A_SIG}");
        assert_valid(
            run_sw(
                p,
                &[SW_SECRET, V1A_PK],
                &sw_headers(prefix, &bad_v1),
                SW_BODY,
                SW_TS,
            ),
            1,
        );
        assert_rejected(
            run_sw(p, &[V1A_PK], &sw_headers(prefix, V1A_SIG), b"{}", SW_TS),
            "signature_mismatch",
        );
        assert_rejected(
            run_sw(
                p,
                &[V1A_PK],
                &sw_headers(prefix, V1A_SIG),
                SW_BODY,
                SW_TS + 301,
            ),
            "timestamp_stale",
        );
        // Kinds that no configured key can check say so.
        assert_rejected(
            run_sw(p, &[V1A_PK], &sw_headers(prefix, SW_SIG), SW_BODY, SW_TS),
            "malformed_signature",
        );
        assert_rejected(
            run_sw(
                p,
                &[SW_SECRET],
                &sw_headers(prefix, V1A_SIG),
                SW_BODY,
                SW_TS,
            ),
            "malformed_signature",
        );
        // Keys in the wrong place.
        assert_rejected(
            run_sw(p, &[V1A_SK], &sw_headers(prefix, V1A_SIG), SW_BODY, SW_TS),
            "invalid_secret",
        );
        assert_rejected(
            run_sw(
                p,
                &["whpk_AAAA"],
                &sw_headers(prefix, V1A_SIG),
                SW_BODY,
                SW_TS,
            ),
            "invalid_secret",
        );
        // sign with whsk_ reproduces PyNaCl; with whpk_ it refuses.
        let signed = sign(
            &Scheme::preset(p),
            V1A_SK,
            &SignInput {
                body: SW_BODY,
                url: "",
                timestamp: SW_TS,
                id: SW_ID,
                content_type: "application/json",
            },
        )
        .expect("sign");
        assert_eq!(signed[2].1, V1A_SIG);
        assert!(sign(&Scheme::preset(p), V1A_PK, &input(SW_BODY, SW_TS)).is_err());
    }
    let msg = match run_sw(
        ProviderKind::StandardWebhooks,
        &[V1A_SK],
        &sw_headers("webhook", V1A_SIG),
        SW_BODY,
        SW_TS,
    ) {
        Verdict::Invalid(r) => r.to_string(),
        Verdict::Valid(_) => String::new(),
    };
    assert!(msg.contains("whpk_"), "{msg}");
    // GitLab signing tokens may be asymmetric too.
    assert_valid(
        run_sw(
            ProviderKind::Gitlab,
            &[V1A_PK],
            &sw_headers("webhook", V1A_SIG),
            SW_BODY,
            SW_TS,
        ),
        0,
    );
}

#[test]
fn zoom_signature_and_url_validation() {
    let p = ProviderKind::Zoom;
    let secret = "zoom-secret-token-1";
    let body =
        br#"{"event":"meeting.started","event_ts":1700000000123,"payload":{"account_id":"A1"}}"#;
    let sig = "v0=f5d9ea1ecdbda43b584c756bd9cd681da3261b159999ee6014f0d49c71fdabd3";
    let h = [
        ("x-zm-signature", sig),
        ("x-zm-request-timestamp", "1700000000"),
    ];
    assert_valid(run(p, &["old", secret], &h, body, 1_700_000_000), 1);
    assert_rejected(
        run(p, &["other"], &h, body, 1_700_000_000),
        "signature_mismatch",
    );
    assert_rejected(
        run(p, &[secret], &h, body, 1_700_000_301),
        "timestamp_stale",
    );
    assert_rejected(
        run(
            p,
            &[secret],
            &[
                ("x-zm-signature", "f5d9"),
                ("x-zm-request-timestamp", "1700000000"),
            ],
            body,
            1_700_000_000,
        ),
        "malformed_signature",
    );
    let validation = serde_json::json!({"payload": {"plainToken": "qgg8vlvZRS6UYooatFL8Aw"}, "event_ts": 1654503849680_i64, "event": "endpoint.url_validation"});
    let (ct, answer) = handshake(p, &HeaderMap::new(), &validation, Some(secret)).expect("answer");
    assert_eq!(ct, "application/json");
    let answer: serde_json::Value = serde_json::from_slice(&answer).expect("json");
    assert_eq!(
        answer,
        serde_json::json!({"plainToken": "qgg8vlvZRS6UYooatFL8Aw", "encryptedToken": "0e5b0d12b8a75ee80179999fbb875d29b1469544a54e8863e0687da36bade919"})
    );
    assert!(
        handshake(p, &HeaderMap::new(), &validation, None).is_none(),
        "no secret, no answer"
    );
    assert!(
        handshake(
            p,
            &HeaderMap::new(),
            &serde_json::json!({"event": "meeting.started"}),
            Some(secret)
        )
        .is_none()
    );
}

#[test]
fn twitch_signature_and_callback_verification() {
    let p = ProviderKind::Twitch;
    let secret = "s3cre77890ab";
    let body = br#"{"challenge":"pogchamp-kappa-360noscope-vohiyo","subscription":{"type":"channel.follow"}}"#;
    let sig = "sha256=4b7736fabc66b1e30e706614188fdad9f1bb57adc2d634be904d372ad6d14852";
    let ts = "2023-11-14T22:13:20.634234626Z"; // 1_700_000_000
    let h = [
        (
            "Twitch-Eventsub-Message-Id",
            "e76c6bd4-55c9-4987-8304-da1588d8988b",
        ),
        ("Twitch-Eventsub-Message-Timestamp", ts),
        ("Twitch-Eventsub-Message-Signature", sig),
        (
            "Twitch-Eventsub-Message-Type",
            "webhook_callback_verification",
        ),
    ];
    let v = run(p, &[secret], &h, body, 1_700_000_000);
    assert_valid(v.clone(), 0);
    assert_eq!(verdict_ts(&v), Some(1_700_000_000));
    // Ten minutes, as Twitch's guide says; not eleven.
    assert_valid(run(p, &[secret], &h, body, 1_700_000_600), 0);
    assert_rejected(
        run(p, &[secret], &h, body, 1_700_000_601),
        "timestamp_stale",
    );
    let mut other_id = h;
    other_id[0].1 = "e76c6bd4-55c9-4987-8304-da1588d8988c";
    assert_rejected(
        run(p, &[secret], &other_id, body, 1_700_000_000),
        "signature_mismatch",
    );
    assert_rejected(
        run(p, &[secret], &h[1..], body, 1_700_000_000),
        "missing_id",
    );
    let map = headers(&h);
    let parsed: serde_json::Value = serde_json::from_slice(body).expect("json");
    assert_eq!(
        handshake(p, &map, &parsed, None),
        Some(("text/plain", b"pogchamp-kappa-360noscope-vohiyo".to_vec()))
    );
    let notification = headers(&[("Twitch-Eventsub-Message-Type", "notification")]);
    assert!(handshake(p, &notification, &parsed, None).is_none());
}

#[test]
fn azure_event_grid_key_in_query_or_header_and_validation() {
    let p = ProviderKind::AzureEventGrid;
    let body = br#"[{"id":"2d1781af-3a4c-4d7c-bd0c-e34b19da4e66","eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","data":{"validationCode":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6","validationUrl":"https://rp-eastus2.eventgrid.azure.net/x"}}]"#;
    let url = "/hooks/abc?code=eg-key-1";
    assert_valid(run_url(p, &["eg-key-1"], &[], body, url, 0), 0);
    assert_valid(
        run_url(
            p,
            &["eg-key-1"],
            &[],
            body,
            "/hooks/abc?x=1&key=eg-key-1",
            0,
        ),
        0,
    );
    assert_valid(
        run(
            p,
            &["eg-key-1"],
            &[("Authorization", "Bearer eg-key-1")],
            body,
            0,
        ),
        0,
    );
    assert_rejected(
        run_url(p, &["eg-key-1"], &[], body, "/hooks/abc?code=eg-key-2", 0),
        "token_mismatch",
    );
    assert_rejected(
        run_url(p, &["eg-key-1"], &[], body, "/hooks/abc", 0),
        "missing_signature",
    );
    let map = headers(&[("aeg-event-type", "SubscriptionValidation")]);
    let parsed: serde_json::Value = serde_json::from_slice(body).expect("json");
    let (ct, answer) = handshake(p, &map, &parsed, None).expect("answer");
    assert_eq!(ct, "application/json");
    assert_eq!(
        answer,
        br#"{"validationResponse":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}"#.to_vec()
    );
    let notification = headers(&[("aeg-event-type", "Notification")]);
    assert!(handshake(p, &notification, &parsed, None).is_none());
}

#[test]
fn gitea_forgejo_and_paddle_vectors() {
    let body = br#"{"ref":"refs/heads/main"}"#;
    let sig = "6aab54046b413afedbc6d4ff0d3b4fd694c1af82c19c0be7ee9b80438b90223d";
    assert_valid(
        run(
            ProviderKind::Gitea,
            &["gitea-secret"],
            &[("X-Gitea-Signature", sig)],
            body,
            0,
        ),
        0,
    );
    assert_valid(
        run(
            ProviderKind::Forgejo,
            &["gitea-secret"],
            &[("X-Forgejo-Signature", sig)],
            body,
            0,
        ),
        0,
    );
    assert_valid(
        run(
            ProviderKind::Forgejo,
            &["gitea-secret"],
            &[("X-Gitea-Signature", sig)],
            body,
            0,
        ),
        0,
    );
    // Forgejo's own header decides when both are sent.
    assert_rejected(
        run(
            ProviderKind::Forgejo,
            &["gitea-secret"],
            &[
                ("X-Forgejo-Signature", &"0".repeat(64)),
                ("X-Gitea-Signature", sig),
            ],
            body,
            0,
        ),
        "signature_mismatch",
    );
    assert_rejected(
        run(
            ProviderKind::Gitea,
            &["gitea-secret"],
            &[("X-Gitea-Signature", sig)],
            b"{}",
            0,
        ),
        "signature_mismatch",
    );
    assert_rejected(
        run(ProviderKind::Gitea, &["gitea-secret"], &[], body, 0),
        "missing_signature",
    );

    let p = ProviderKind::Paddle;
    let secret = "pdl_ntfset_01gkpjp8bkm3tm53kdgkx6sms7_6h3qd3uFSi9YCD3OLYAShQI90XTI5vEI";
    let body = br#"{"event_id":"evt_01","event_type":"subscription.activated"}"#;
    let good = "eeb58fb4c04eef79f86173a84a511db873e5c5877a4ed30785da5aa5deea65f4";
    let h = format!("ts=1700000000;h1={good}");
    assert_valid(
        run(
            p,
            &[secret],
            &[("Paddle-Signature", &h)],
            body,
            1_700_000_000,
        ),
        0,
    );
    // Rotation: two h1 entries, either passes.
    let two = format!("ts=1700000000;h1={};h1={good}", "1".repeat(64));
    assert_valid(
        run(
            p,
            &[secret],
            &[("Paddle-Signature", &two)],
            body,
            1_700_000_000,
        ),
        0,
    );
    // Paddle's SDKs allow 5 s of drift.
    assert_valid(
        run(
            p,
            &[secret],
            &[("Paddle-Signature", &h)],
            body,
            1_700_000_005,
        ),
        0,
    );
    assert_rejected(
        run(
            p,
            &[secret],
            &[("Paddle-Signature", &h)],
            body,
            1_700_000_006,
        ),
        "timestamp_stale",
    );
    assert_rejected(
        run(
            p,
            &[secret],
            &[("Paddle-Signature", &format!("ts=1700000001;h1={good}"))],
            body,
            1_700_000_001,
        ),
        "signature_mismatch",
    );
    assert_rejected(
        run(
            p,
            &[secret],
            &[("Paddle-Signature", &format!("h1={good}"))],
            body,
            1_700_000_000,
        ),
        "missing_timestamp",
    );
    assert_rejected(
        run(
            p,
            &[secret],
            &[("Paddle-Signature", "ts=1700000000")],
            body,
            1_700_000_000,
        ),
        "malformed_signature",
    );
}

fn generic_auth_scheme(yaml: &str) -> Result<Scheme, SchemeError> {
    let spec: WebhookIntegrationSpec = serde_yaml::from_str(yaml).expect("yaml");
    Scheme::from_spec(&spec)
}

#[test]
fn generic_token_auth_checks_only_its_own_place() {
    let run_auth = |scheme: &Scheme, secrets: &[&str], h: &[(&str, &str)]| {
        let map = headers(h);
        verify(
            scheme,
            secrets,
            &Delivery {
                method: "POST",
                url: "",
                headers: &map,
                body: b"{}",
            },
            0,
        )
    };
    let bearer = generic_auth_scheme("provider: generic\nauth: bearer").expect("bearer");
    assert_valid(
        run_auth(
            &bearer,
            &["old", "tok-1"],
            &[("Authorization", "Bearer tok-1")],
        ),
        1,
    );
    assert_rejected(
        run_auth(&bearer, &["tok-1"], &[("Authorization", "Bearer tok-2")]),
        "token_mismatch",
    );
    // A bare token or Basic is not what bearer means.
    assert_rejected(
        run_auth(&bearer, &["tok-1"], &[("Authorization", "tok-1")]),
        "missing_signature",
    );
    assert_rejected(
        run_auth(
            &bearer,
            &["tok-1"],
            &[("Authorization", "Basic dTp0b2stMQ==")],
        ),
        "missing_signature",
    );
    let basic = generic_auth_scheme("provider: generic\nauth: basic").expect("basic");
    assert_valid(
        run_auth(
            &basic,
            &["tok-1"],
            &[("Authorization", "Basic dTp0b2stMQ==")],
        ),
        0,
    ); // u:tok-1
    assert_rejected(
        run_auth(&basic, &["tok-1"], &[("Authorization", "Basic !!!")]),
        "malformed_signature",
    );
    assert_rejected(
        run_auth(&basic, &["tok-1"], &[("Authorization", "Bearer tok-1")]),
        "missing_signature",
    );
    let header = generic_auth_scheme("provider: generic\nauth: header\ntokenHeader: X-Quay-Token")
        .expect("header");
    assert_valid(
        run_auth(&header, &["tok-1"], &[("x-quay-token", "tok-1")]),
        0,
    );
    assert_rejected(
        run_auth(&header, &["tok-1"], &[("Authorization", "Bearer tok-1")]),
        "missing_signature",
    );
    // Sign produces what verify accepts, for each.
    for scheme in [&bearer, &basic, &header] {
        let signed = sign(scheme, "tok-1", &input(b"{}", 0)).expect("sign");
        let pairs: Vec<(&str, &str)> = signed
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_valid(run_auth(scheme, &["tok-1"], &pairs), 0);
    }
    // none: valid without any secret or header, and only when spelled out.
    let none = generic_auth_scheme("provider: generic\nauth: none").expect("none");
    assert!(run_auth(&none, &[], &[]).is_valid());
    assert_eq!(sign(&none, "", &input(b"{}", 0)), Ok(vec![]));
    assert_eq!(
        generic_auth_scheme("provider: generic").err(),
        Some(SchemeError::MissingGenericSignature)
    );
    assert_eq!(
        generic_auth_scheme("provider: generic\nauth: bearer\nsignature: {header: X-Sig, algorithm: sha256, encoding: hex}").err(),
        Some(SchemeError::SignatureAndAuth)
    );
    assert_eq!(
        generic_auth_scheme("provider: github\nauth: none").err(),
        Some(SchemeError::UnexpectedAuth)
    );
    assert_eq!(
        generic_auth_scheme("provider: generic\nauth: header").err(),
        Some(SchemeError::AuthHeaderWithoutTokenHeader)
    );
    assert_eq!(
        generic_auth_scheme("provider: generic\nauth: bearer\ntokenHeader: X-T").err(),
        Some(SchemeError::UnexpectedTokenHeader)
    );
}

#[test]
fn another_providers_handshake_is_named_in_the_rejection() {
    let zoom = br#"{"payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1654503849680,"event":"endpoint.url_validation"}"#;
    let v = run(
        ProviderKind::Slack,
        &["s"],
        &[("x-zm-signature", "v0=00"), ("x-zm-request-timestamp", "1")],
        zoom,
        1,
    );
    assert_rejected(v.clone(), "handshake_wrong_provider");
    let Verdict::Invalid(r) = v else {
        unreachable!()
    };
    assert!(r.to_string().contains("provider: zoom"), "{r}");
    assert!(r.to_string().contains("provider is slack"), "{r}");
    let twitch = [(
        "Twitch-Eventsub-Message-Type",
        "webhook_callback_verification",
    )];
    assert_rejected(
        run(ProviderKind::Github, &["s"], &twitch, b"{}", 1),
        "handshake_wrong_provider",
    );
    let azure = [("aeg-event-type", "SubscriptionValidation")];
    assert_rejected(
        run(ProviderKind::Zoom, &["s"], &azure, b"[]", 1),
        "handshake_wrong_provider",
    );
    let slack = br#"{"token":"t","challenge":"c","type":"url_verification"}"#;
    assert_rejected(
        run(ProviderKind::Discord, &[D_PUB], &[], slack, 1),
        "handshake_wrong_provider",
    );
    // The provider's own handshake, unauthenticated, is an ordinary rejection.
    assert_rejected(
        run(ProviderKind::Zoom, &["s"], &[], zoom, 1),
        "missing_signature",
    );
    assert_rejected(
        run(ProviderKind::Twitch, &["s"], &twitch, b"{}", 1),
        "missing_signature",
    );
}

#[test]
fn media_type_is_the_lower_case_essence_borrowed_when_already_lower_case() {
    use std::borrow::Cow;
    assert_eq!(
        media_type("Application/JSON; charset=utf-8"),
        "application/json"
    );
    assert!(matches!(
        media_type(" application/json ;charset=utf-8"),
        Cow::Borrowed("application/json")
    ));
    assert_eq!(media_type("text/plain"), "text/plain");
    assert_eq!(media_type(""), "");
    assert_eq!(media_type("; charset=utf-8"), "");
}
