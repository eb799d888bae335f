//! The incident payload mappers (Datadog, Alertmanager, Grafana, PagerDuty, Sentry
//! presets and a spec with JSON-pointer and CEL overrides) over arbitrary JSON bodies:
//! errors are fine, panics are not, and every event has a non-empty id.
#![no_main]

use std::sync::OnceLock;

use hookwarden::crd::WebhookIntegrationSpec;
use hookwarden::domain::incident::Mapping;
use libfuzzer_sys::fuzz_target;

const SPECS: &[&str] = &[
    "provider: datadog",
    "provider: alertmanager",
    "provider: grafana",
    "provider: pagerduty",
    "provider: sentry",
    "provider: generic\nsignature: {header: X-Signature, algorithm: sha256, encoding: hex, signedContent: '{body}'}\nincidents: {idFrom: /id, titleFrom: /title, severityFrom: /severity, linkFrom: /link, timeFrom: /time, resolvedWhen: 'body.status == \"resolved\"'}",
    "provider: datadog\nincidents: {titleFrom: 'body.alert_name + \" on \" + string(body.host)', severityMap: {P1: critical, warn: medium}}",
];

const EVENT_TYPES: &[Option<&str>] = &[
    None,
    Some("incident.triggered"),
    Some("incident.resolved"),
    Some("issue"),
    Some("event_alert"),
    Some("metric_alert"),
];

fn mappings() -> &'static Vec<Mapping> {
    static MAPPINGS: OnceLock<Vec<Mapping>> = OnceLock::new();
    MAPPINGS.get_or_init(|| {
        SPECS
            .iter()
            .map(|yaml| {
                let spec: WebhookIntegrationSpec = serde_yaml::from_str(yaml).expect("spec");
                Mapping::for_spec(&spec).expect("valid").expect("maps")
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(json) else {
        return;
    };
    let mappings = mappings();
    let mapping = &mappings[usize::from(selector) % mappings.len()];
    let event_type = EVENT_TYPES[usize::from(selector >> 4) % EVENT_TYPES.len()];
    if let Ok(events) = mapping.extract(&body, event_type, 1_700_000_000_000) {
        for event in events {
            assert!(!event.id.is_empty(), "{event:?}");
        }
    }
});
