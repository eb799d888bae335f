use serde_json::json;

use super::*;
use crate::domain::incident::{IncidentBook, Transition};

const RECEIVED: i64 = 1_700_000_500_000;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/payloads/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn spec(yaml: &str) -> WebhookIntegrationSpec {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
}

fn mapping(yaml: &str) -> Mapping {
    match Mapping::for_spec(&spec(yaml)) {
        Ok(Some(m)) => m,
        other => panic!("{yaml}: {other:?}"),
    }
}

fn event(
    id: &str,
    title: &str,
    severity: Severity,
    link: Option<&str>,
    resolve: bool,
    at: i64,
) -> IncidentEvent {
    IncidentEvent {
        id: id.to_string(),
        title: title.to_string(),
        severity,
        link: link.map(str::to_string),
        resolve,
        event_time_ms: at,
    }
}

#[test]
fn mapping_is_shareable_across_request_tasks() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Mapping>();
}

#[test]
fn datadog_template_is_the_json_the_preset_reads() {
    let template: Value = serde_json::from_str(DATADOG_TEMPLATE).expect("template is JSON");
    for field in [
        "id",
        "alert_name",
        "alert_type",
        "severity",
        "message",
        "host",
        "tags",
        "link",
        "alert_transition",
        "aggreg_key",
        "date",
    ] {
        assert!(template.get(field).is_some(), "template lacks {field}");
    }
    assert_eq!(template["aggreg_key"], "$AGGREG_KEY");
    // The doc comment users read shows exactly this template.
    let source = include_str!("../mapping.rs");
    let documented: Vec<&str> = source
        .lines()
        .skip_while(|l| *l != "/// ```json")
        .skip(1)
        .take_while(|l| *l != "/// ```")
        .map(|l| l.strip_prefix("/// ").unwrap_or(""))
        .collect();
    assert_eq!(documented, DATADOG_TEMPLATE.lines().collect::<Vec<_>>());
    // And so does the README's Datadog section, the copy users paste.
    let readme = include_str!("../../../../README.md");
    let pasted: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("*Payload* — paste this template"))
        .skip_while(|l| *l != "```json")
        .skip(1)
        .take_while(|l| *l != "```")
        .collect();
    assert_eq!(pasted, DATADOG_TEMPLATE.lines().collect::<Vec<_>>());
    assert_eq!(template["alert_transition"], "$ALERT_TRANSITION");
}

#[test]
fn datadog_trigger_and_recovery_share_the_aggregation_key() {
    let m = mapping("provider: datadog");
    let link = "https://app.datadoghq.com/event/event?id=7372812094830114432";
    assert_eq!(
        m.extract(&fixture("datadog-triggered.json"), None, RECEIVED),
        Ok(vec![event(
            "9bd4ac313a4d1e8fae2482df7b77628",
            "Checkout latency high",
            Severity::High,
            Some(link),
            false,
            1_700_000_000_000
        )])
    );
    let recovered = m
        .extract(&fixture("datadog-recovered.json"), None, RECEIVED)
        .expect("maps");
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].id, "9bd4ac313a4d1e8fae2482df7b77628");
    assert_eq!(recovered[0].title, "Checkout latency high");
    assert!(recovered[0].resolve);
    assert_eq!(recovered[0].event_time_ms, 1_700_000_900_000);
}

#[test]
fn datadog_table() {
    let m = mapping("provider: datadog");
    // (payload, id, severity, resolve)
    let rows = [
        (
            json!({"id": "1", "aggreg_key": "", "alert_transition": "Warn", "severity": "P3"}),
            "1",
            Severity::Medium,
            false,
        ),
        (
            json!({"id": "1", "alert_transition": "Re-Triggered", "severity": "", "alert_type": "error"}),
            "1",
            Severity::High,
            false,
        ),
        (
            json!({"id": "1", "alert_transition": "No Data", "alert_type": "warning"}),
            "1",
            Severity::Medium,
            false,
        ),
        (
            json!({"id": "1", "alert_transition": "Recovered", "severity": "P5"}),
            "1",
            Severity::Info,
            true,
        ),
        (
            json!({"id": "1", "alert_type": "success"}),
            "1",
            Severity::Info,
            true,
        ),
        (
            json!({"id": 42, "aggreg_key": "k", "severity": "critical"}),
            "k",
            Severity::Critical,
            false,
        ),
        (
            json!({"id": "1", "severity": "whatever"}),
            "1",
            Severity::Info,
            false,
        ),
    ];
    for (body, id, severity, resolve) in rows {
        let got = m
            .extract(&body, None, RECEIVED)
            .unwrap_or_else(|e| panic!("{body}: {e}"));
        assert_eq!(
            (got[0].id.as_str(), got[0].severity, got[0].resolve),
            (id, severity, resolve),
            "{body}"
        );
        assert_eq!(got[0].event_time_ms, RECEIVED, "no date: arrival time");
        assert_eq!(got[0].title, id, "no title: the id stands in");
    }
    let err = m
        .extract(
            &json!({"alert_name": "x", "aggreg_key": ""}),
            None,
            RECEIVED,
        )
        .expect_err("no id");
    assert!(!err.is_spec_error());
    assert_eq!(
        err.to_string(),
        "payload has no incident id at aggreg_key or id (a non-empty string or number is required)"
    );
}

#[test]
fn datadog_title_tags_are_stripped() {
    for (raw, want) in [
        ("[Triggered] [Memory Alert]", "[Memory Alert]"),
        (
            "[P1] [Re-Triggered on {host:ip-012345}] Host is Down",
            "Host is Down",
        ),
        ("[Recovered] Host is Down", "Host is Down"),
        ("[prod] Host is Down", "[prod] Host is Down"),
        ("[Triggered]", "[Triggered]"),
        ("Plain", "Plain"),
    ] {
        assert_eq!(strip_datadog_tags(raw), want, "{raw}");
    }
}

#[test]
fn alertmanager_maps_each_alert_by_fingerprint() {
    let m = mapping("provider: alertmanager");
    let got = m
        .extract(&fixture("alertmanager.json"), None, RECEIVED)
        .expect("maps");
    assert_eq!(
        got,
        vec![
            event(
                "5f6e0a5c8d9b1c2e",
                "Pod is crash looping.",
                Severity::Medium,
                Some(
                    "http://prometheus.monitoring.svc:9090/graph?g0.expr=max_over_time%28kube_pod_container_status_waiting_reason%5B5m%5D%29+%3E%3D+1"
                ),
                false,
                1_700_000_000_123,
            ),
            event(
                "a1b2c3d4e5f60718",
                "Pod is crash looping.",
                Severity::Critical,
                Some(
                    "http://prometheus.monitoring.svc:9090/graph?g0.expr=kube_pod_container_status_waiting_reason"
                ),
                true,
                1_699_999_800_500,
            ),
        ]
    );
}

#[test]
fn alertmanager_rejects_what_it_never_sends() {
    let m = mapping("provider: alertmanager");
    let err = m
        .extract(&json!({"status": "firing"}), None, RECEIVED)
        .expect_err("no alerts");
    assert_eq!(
        err,
        MappingError::Malformed {
            provider: "alertmanager",
            reason: "no alerts array"
        }
    );
    assert!(!err.is_spec_error());
    let err = m
        .extract(
            &json!({"alerts": [{"status": "firing", "labels": {}}]}),
            None,
            RECEIVED,
        )
        .expect_err("no fingerprint");
    assert_eq!(
        err,
        MappingError::MissingId {
            from: "alerts[].fingerprint".into()
        }
    );
    assert_eq!(
        m.extract(&json!({"alerts": []}), None, RECEIVED),
        Ok(vec![])
    );
}

#[test]
fn grafana_maps_each_alert_and_prefers_the_rule_link() {
    let m = mapping("provider: grafana");
    let got = m
        .extract(&fixture("grafana.json"), None, RECEIVED)
        .expect("maps");
    assert_eq!(
        got,
        vec![
            event(
                "c6eadffa33fcdf37",
                "This alert was triggered for zone us-1",
                Severity::Info,
                Some("https://grafana.example.com/alerting/grafana/1afz29v7z/view"),
                false,
                1_700_000_000_000,
            ),
            event(
                "bc97ff14869b13e3",
                "High CPU usage",
                Severity::Critical,
                Some("https://grafana.example.com/d/def456"),
                true,
                1_699_999_920_000,
            ),
        ]
    );
}

#[test]
fn pagerduty_lifecycle_events() {
    let m = mapping("provider: pagerduty");
    let link = Some("https://acme.pagerduty.com/incidents/PGR0VU2");
    assert_eq!(
        m.extract(
            &fixture("pagerduty-triggered.json"),
            Some("incident.triggered"),
            RECEIVED
        ),
        Ok(vec![event(
            "PGR0VU2",
            "Checkout API error rate above 5%",
            Severity::Critical,
            link,
            false,
            1_700_000_000_456
        )])
    );
    assert_eq!(
        m.extract(&fixture("pagerduty-resolved.json"), None, RECEIVED),
        Ok(vec![event(
            "PGR0VU2",
            "Checkout API error rate above 5%",
            Severity::Critical,
            link,
            true,
            1_700_001_600_000
        )])
    );
    // A note on a resolved incident must not re-open it.
    assert_eq!(
        m.extract(&fixture("pagerduty-annotated.json"), None, RECEIVED),
        Ok(vec![])
    );

    let mut low = fixture("pagerduty-triggered.json");
    low["event"]["event_type"] = json!("incident.acknowledged");
    low["event"]["data"]["priority"] = Value::Null;
    low["event"]["data"]["urgency"] = json!("low");
    let got = m.extract(&low, None, RECEIVED).expect("maps");
    assert_eq!((got[0].severity, got[0].resolve), (Severity::Low, false));

    let err = m
        .extract(&json!({"messages": []}), None, RECEIVED)
        .expect_err("v2 payload");
    assert!(matches!(
        err,
        MappingError::Malformed {
            provider: "pagerduty",
            ..
        }
    ));
}

#[test]
fn sentry_metric_alert_opens_and_resolves_one_incident() {
    let m = mapping("provider: sentry");
    let link = Some("https://sentry.io/organizations/acme/alerts/1/");
    assert_eq!(
        m.extract(
            &fixture("sentry-metric-alert-critical.json"),
            Some("metric_alert"),
            RECEIVED
        ),
        Ok(vec![event(
            "metric_alert:4",
            "Too many checkout errors",
            Severity::Critical,
            link,
            false,
            RECEIVED
        )])
    );
    let mut warning = fixture("sentry-metric-alert-critical.json");
    warning["action"] = json!("warning");
    let got = m
        .extract(&warning, Some("metric_alert"), RECEIVED)
        .expect("maps");
    assert_eq!(got[0].severity, Severity::Medium);
    assert_eq!(
        m.extract(
            &fixture("sentry-metric-alert-resolved.json"),
            Some("metric_alert"),
            RECEIVED + 1
        ),
        Ok(vec![event(
            "metric_alert:4",
            "Too many checkout errors",
            Severity::Critical,
            link,
            true,
            RECEIVED + 1
        )])
    );
}

#[test]
fn sentry_issue_alert_and_issue_resolution_share_the_issue_key() {
    let m = mapping("provider: sentry");
    assert_eq!(
        m.extract(
            &fixture("sentry-event-alert.json"),
            Some("event_alert"),
            RECEIVED
        ),
        Ok(vec![event(
            "issue:1117540176",
            "ReferenceError: heck is not defined",
            Severity::High,
            Some(
                "https://sentry.io/organizations/acme/issues/1117540176/events/bb78c1407cea4519aa397afc059c793d/"
            ),
            false,
            RECEIVED,
        )])
    );
    // Without the resource header the shape tells.
    let resolved = m
        .extract(&fixture("sentry-issue-resolved.json"), None, RECEIVED + 1)
        .expect("maps");
    assert_eq!(
        resolved,
        vec![event(
            "issue:1117540176",
            "ReferenceError: heck is not defined",
            Severity::High,
            Some("https://sentry.io/organizations/acme/issues/1117540176/"),
            true,
            RECEIVED + 1,
        )]
    );
    let mut assigned = fixture("sentry-issue-resolved.json");
    assigned["action"] = json!("assigned");
    assert_eq!(m.extract(&assigned, Some("issue"), RECEIVED), Ok(vec![]));
    assert_eq!(
        m.extract(
            &json!({"action": "created", "data": {"installation": {}}}),
            Some("installation"),
            RECEIVED
        ),
        Ok(vec![])
    );
}

#[test]
fn preset_overrides_use_pointers_relative_to_the_alert_and_cel() {
    let m = mapping(
        r#"
provider: alertmanager
incidents:
  titleFrom: /labels/pod
  severityFrom: 'alert.labels.severity == "warning" ? "page" : body.commonLabels.namespace'
  severityMap: {page: critical, payments: low}
"#,
    );
    let got = m
        .extract(&fixture("alertmanager.json"), None, RECEIVED)
        .expect("maps");
    let summary: Vec<(&str, &str, Severity)> = got
        .iter()
        .map(|e| (e.id.as_str(), e.title.as_str(), e.severity))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "5f6e0a5c8d9b1c2e",
                "checkout-7d9f8-abcde",
                Severity::Critical
            ),
            ("a1b2c3d4e5f60718", "ledger-5c4b3-fghij", Severity::Low)
        ]
    );
}

const GENERIC: &str = r#"
provider: generic
signature: {header: X-Signature, algorithm: sha256, encoding: hex}
incidents:
  idFrom: body.check.id
  titleFrom: /check/name
  severityFrom: /level
  severityMap: {Sev-A: critical}
  linkFrom: '"https://status.example.com/checks/" + string(body.check.id)'
  timeFrom: /ts
  resolvedWhen: 'has(body.status) && body.status.lowerAscii() == "ok" || eventType == "check.recovered"'
"#;

#[test]
fn generic_maps_with_pointers_and_cel() {
    let m = mapping(GENERIC);
    let body = json!({"check": {"id": 17, "name": "API health"}, "level": "Sev-A", "status": "FAILING", "ts": 1_700_000_000});
    assert_eq!(
        m.extract(&body, None, RECEIVED),
        Ok(vec![event(
            "17",
            "API health",
            Severity::Critical,
            Some("https://status.example.com/checks/17"),
            false,
            1_700_000_000_000
        )])
    );
    let ok = json!({"check": {"id": 17, "name": "API health"}, "level": "sev-a", "status": "OK"});
    let got = m.extract(&ok, None, RECEIVED).expect("maps");
    assert_eq!(
        (got[0].severity, got[0].resolve, got[0].event_time_ms),
        (Severity::Critical, true, RECEIVED)
    );
    // A missing key in resolvedWhen is "not resolved", the event type is visible to CEL.
    let bare = json!({"check": {"id": "x"}});
    assert!(!m.extract(&bare, None, RECEIVED).expect("maps")[0].resolve);
    assert!(
        m.extract(&bare, Some("check.recovered"), RECEIVED)
            .expect("maps")[0]
            .resolve
    );
}

#[test]
fn generic_payload_errors_are_per_delivery() {
    let m = mapping(GENERIC);
    let err = m
        .extract(&json!({"level": "high"}), None, RECEIVED)
        .expect_err("no id");
    assert_eq!(
        err,
        MappingError::MissingId {
            from: "idFrom \"body.check.id\"".into()
        }
    );
    assert!(!err.is_spec_error());

    let long = json!({"check": {"id": "x".repeat(MAX_ID_BYTES + 1)}});
    assert!(matches!(
        m.extract(&long, None, RECEIVED),
        Err(MappingError::IdTooLong { .. })
    ));

    let not_bool = mapping("provider: generic\nincidents: {idFrom: /id, resolvedWhen: body.state}");
    let err = not_bool
        .extract(&json!({"id": "a", "state": "ok"}), None, RECEIVED)
        .expect_err("string");
    assert_eq!(
        err,
        MappingError::NotBool {
            got: "string".into()
        }
    );

    let bad_type = mapping("provider: generic\nincidents: {idFrom: 'body.n + 1'}");
    let err = bad_type
        .extract(&json!({"n": "one"}), None, RECEIVED)
        .expect_err("type error");
    assert!(
        matches!(
            err,
            MappingError::Evaluation {
                field: "idFrom",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn failing_display_expressions_fall_back_instead_of_refusing() {
    let m = mapping(
        "provider: generic\nincidents: {idFrom: /id, titleFrom: 'body.t + 1', severityFrom: 'body.s.x', linkFrom: 'body.l[3]'}",
    );
    let got = m
        .extract(
            &json!({"id": "a", "t": "text", "s": 5, "l": []}),
            None,
            RECEIVED,
        )
        .expect("an incident still opens");
    assert_eq!(
        got,
        vec![event("a", "a", Severity::Info, None, false, RECEIVED)]
    );
}

#[test]
fn titles_and_links_are_bounded() {
    let m = mapping("provider: generic\nincidents: {idFrom: /id, titleFrom: /t, linkFrom: /l}");
    let got = m
        .extract(
            &json!({"id": "a", "t": "é".repeat(300), "l": "javascript:alert(1)"}),
            None,
            RECEIVED,
        )
        .expect("maps");
    assert_eq!(got[0].title.chars().count(), MAX_TITLE_CHARS);
    assert_eq!(got[0].link, None);
}

#[test]
fn which_specs_map_incidents() {
    let none = |yaml: &str| assert!(matches!(Mapping::for_spec(&spec(yaml)), Ok(None)), "{yaml}");
    none("provider: github");
    none("provider: generic\nsignature: {header: X-Sig, algorithm: sha256, encoding: hex}");
    none("provider: stripe\nincidents: {keepRecent: 5}");
    assert!(matches!(
        Mapping::for_spec(&spec("provider: datadog")),
        Ok(Some(_))
    ));
    assert!(matches!(
        Mapping::for_spec(&spec("provider: github\nincidents: {idFrom: /issue/id}")),
        Ok(Some(_))
    ));
}

#[test]
fn spec_errors_say_what_to_fix() {
    let err = |yaml: &str| match Mapping::for_spec(&spec(yaml)) {
        Err(e) => {
            assert!(e.is_spec_error(), "{e}");
            e.to_string()
        }
        other => panic!("{yaml}: {other:?}"),
    };
    assert_eq!(
        err("provider: github\nincidents: {titleFrom: /title}"),
        "spec.incidents.idFrom is required: provider github has no preset incident mapping"
    );
    assert!(
        err("provider: datadog\nincidents: {titleFrom: 'body.title +'}").starts_with(
            "spec.incidents.titleFrom: \"body.title +\" is not a valid CEL expression"
        )
    );
    assert_eq!(
        err("provider: datadog\nincidents: {idFrom: /a~2b}"),
        "spec.incidents.idFrom: JSON pointer \"/a~2b\" is invalid: `~` must be followed by 0 or 1"
    );
    assert_eq!(
        err("provider: datadog\nincidents: {severityMap: {sev1: urgent}}"),
        "spec.incidents.severityMap[\"sev1\"] is \"urgent\": use critical, high, medium, low or info"
    );
    assert!(
        err("provider: datadog\nincidents: {resolvedWhen: /resolved}")
            .contains("not a JSON pointer")
    );
}

#[test]
fn time_values() {
    for (value, want) in [
        (json!("2023-11-14T22:13:20Z"), Some(1_700_000_000_000)),
        (
            json!("2023-11-14T23:13:20.5+01:00"),
            Some(1_700_000_000_500),
        ),
        (json!("0001-01-01T00:00:00Z"), None),
        (json!(1_700_000_000), Some(1_700_000_000_000)),
        (json!(1_700_000_000.25), Some(1_700_000_000_250)),
        (json!("1700000000000"), Some(1_700_000_000_000)),
        (json!(0), None),
        (json!("yesterday"), None),
        (json!(1e300), None),
    ] {
        assert_eq!(time_ms(&value), want, "{value}");
    }
}

/// The whole path a receiver takes: deliveries → events → book → status.
#[test]
fn alertmanager_firing_then_resolved_through_the_book() {
    let m = mapping("provider: alertmanager");
    let mut book = IncidentBook::default();
    let firing = fixture("alertmanager.json");
    let transitions: Vec<Transition> = m
        .extract(&firing, None, RECEIVED)
        .expect("maps")
        .iter()
        .map(|ev| book.apply(ev, &ev.content_tiebreak()))
        .collect();
    // The second alert arrives already resolved: nothing to open.
    assert_eq!(transitions, [Transition::Opened, Transition::Unchanged]);
    assert_eq!(book.open_count(), 1);

    let mut resolved = firing.clone();
    resolved["alerts"][0]["status"] = json!("resolved");
    resolved["alerts"][0]["endsAt"] = json!("2023-11-14T22:30:00Z");
    let ev = m
        .extract(&resolved, None, RECEIVED)
        .expect("maps")
        .remove(0);
    assert_eq!(
        book.apply(&ev, &ev.content_tiebreak()),
        Transition::Resolved
    );
    // Alertmanager repeats the old firing notification late: it must not re-open.
    let late = m.extract(&firing, None, RECEIVED).expect("maps").remove(0);
    assert_eq!(
        book.apply(&late, &late.content_tiebreak()),
        Transition::Unchanged
    );

    let status = book.to_status(20);
    assert_eq!(status.open, 0);
    assert_eq!(status.recent[0].id, "5f6e0a5c8d9b1c2e");
    assert_eq!(status.recent[0].state, "resolved");
}

/// The Datadog preset read from a body's top-level fields (the receiver's path when no
/// override or schema needs the tree) maps every body as the tree does, and takes the
/// same delivery id and event type from it.
#[test]
fn datadog_from_top_level_fields_agrees_with_the_tree() {
    use crate::domain::signature::{Scheme, datadog_meta, delivery_meta};
    let bodies: Vec<Value> = vec![
        fixture("datadog-triggered.json"),
        fixture("datadog-recovered.json"),
        json!({"id": "bench-1", "aggreg_key": "agg-7", "alert_name": "CPU high on web-1",
            "alert_type": "error", "severity": "high", "alert_transition": "Triggered",
            "date": 17, "host": "web-1", "tags": "env:bench",
            "link": "https://app.datadoghq.com/monitors/1", "message": "CPU above 90%"}),
        json!({"id": "1", "alert_type": "success", "title": "[Recovered] disk", "event_type": "query_alert_monitor"}),
        json!({"id": 42, "aggreg_key": "", "severity": "P1", "date": "2024-05-01T10:00:00Z"}),
        json!({"id": "1", "last_updated": 1_700_000_000, "link": "javascript:alert(1)"}),
        json!({"id": "  ", "aggreg_key": "  "}),
        json!({"alert_name": "no id"}),
        json!({"id": true, "alert_transition": ["Recovered"], "date": {"ms": 1}}),
        json!({"id": "x".repeat(600)}),
        json!({"id": null, "aggreg_key": 7.5, "severity": null, "alert_type": "warning"}),
        json!([{"id": "a list"}]),
        json!("text"),
    ];
    let plain = mapping("provider: datadog");
    let with_map = mapping("provider: datadog\nincidents: {severityMap: {high: low}}");
    for m in [&plain, &with_map] {
        let top = m
            .top_level()
            .expect("the preset without overrides reads top-level fields");
        for body in &bodies {
            let bytes = serde_json::to_vec(body).expect("JSON");
            let fields = TopLevel::parse(&bytes, top.fields()).expect("JSON");
            for max_events in [0, 1, 50] {
                assert_eq!(
                    top.extract(&fields, RECEIVED, max_events),
                    m.extract_bounded(body, None, RECEIVED, max_events, &Interrupt::new()),
                    "{body} (max {max_events})"
                );
            }
            assert_eq!(
                datadog_meta(|name| fields.get(name).map(Scalar::borrowed)),
                delivery_meta(
                    &Scheme::preset(ProviderKind::Datadog),
                    &http::HeaderMap::new(),
                    Some(body)
                ),
                "{body}"
            );
        }
    }
    for overridden in [
        "provider: datadog\nincidents: {titleFrom: /message}",
        "provider: datadog\nincidents: {resolvedWhen: 'body.alert_type == \"success\"'}",
        "provider: alertmanager",
    ] {
        assert!(mapping(overridden).top_level().is_none(), "{overridden}");
    }
}
