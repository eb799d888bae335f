//! Realistic sample deliveries per provider, for `hookwarden send-test`: the payload
//! shapes the providers document, so the receiver's parsing, event filters and incident
//! mapping are exercised exactly as a real delivery would exercise them.
//!
//! Monitoring providers have a trigger and a recovery variant for one incident id, so a
//! test can open an incident and then resolve the same one.

use serde_json::{Value, json};

use crate::crd::ProviderKind;

/// Incident id used when none is given: trigger and `--resolve` then hit the same incident.
pub const DEFAULT_INCIDENT_ID: &str = "hookwarden-send-test";

/// A body to send and how to label it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// The provider event type this delivery carries (also in `headers` where the
    /// provider puts it in a header).
    pub event_type: Option<String>,
    /// Non-authentication headers the provider sends with this event (`X-GitHub-Event`, …).
    pub headers: Vec<(String, String)>,
}

/// Variants of a sample.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SampleOptions {
    /// Monitoring providers: send the recovery of the incident instead of its trigger.
    pub resolve: bool,
    /// The sender's incident id (Datadog `aggreg_key`, Alertmanager fingerprint, PagerDuty
    /// incident id, …). Default [`DEFAULT_INCIDENT_ID`].
    pub incident_id: Option<String>,
}

/// The trigger sample of `provider`, with delivery id `id`, at `now_unix`.
pub fn sample(provider: ProviderKind, now_unix: i64, id: &str) -> Sample {
    sample_with(provider, now_unix, id, &SampleOptions::default())
}

fn rfc3339(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| unix.to_string())
}

fn json_sample(body: Value, event_type: Option<&str>, headers: Vec<(&str, String)>) -> Sample {
    Sample {
        content_type: "application/json",
        body: serde_json::to_vec(&body).unwrap_or_default(),
        event_type: event_type.map(str::to_string),
        headers: headers
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }
}

/// A sample with explicit options.
pub fn sample_with(
    provider: ProviderKind,
    now_unix: i64,
    id: &str,
    opts: &SampleOptions,
) -> Sample {
    let incident = opts
        .incident_id
        .clone()
        .unwrap_or_else(|| DEFAULT_INCIDENT_ID.to_string());
    let resolve = opts.resolve;
    let now = rfc3339(now_unix);
    let started = rfc3339(now_unix - 600);
    match provider {
        ProviderKind::Datadog => {
            let (transition, alert_type) = if resolve {
                ("Recovered", "success")
            } else {
                ("Triggered", "error")
            };
            let body = json!({
                "id": id,
                "alert_name": "[P1] High error rate on checkout",
                "alert_type": alert_type,
                "severity": "critical",
                "message": "Error rate on checkout-api is above 5% for the last 5 minutes. @webhook-hookwarden",
                "host": "checkout-api-7d9f8-abcde",
                "tags": "env:prod,service:checkout-api,team:payments",
                "link": "https://app.datadoghq.com/monitors/12345678",
                "alert_transition": transition,
                "aggreg_key": incident,
                "event_type": "query_alert_monitor",
                "date": (now_unix * 1000).to_string(),
                "last_updated": (now_unix * 1000).to_string(),
                "org": {"id": "123456", "name": "Example Inc"}
            });
            json_sample(body, Some("query_alert_monitor"), vec![])
        }
        ProviderKind::Alertmanager => {
            let status = if resolve { "resolved" } else { "firing" };
            let ends = if resolve {
                now.clone()
            } else {
                "0001-01-01T00:00:00Z".to_string()
            };
            let alert = |fingerprint: String, instance: &str| {
                json!({
                    "status": status,
                    "labels": {"alertname": "KubePodCrashLooping", "severity": "critical", "namespace": "payments", "pod": instance, "instance": instance},
                    "annotations": {"summary": format!("Pod payments/{instance} is crash looping"), "description": "Pod has restarted 5 times in the last 10 minutes.", "runbook_url": "https://runbooks.example.com/KubePodCrashLooping"},
                    "startsAt": started,
                    "endsAt": ends,
                    "generatorURL": "http://prometheus.example.com/graph?g0.expr=rate%28kube_pod_container_status_restarts_total%5B5m%5D%29+%3E+0",
                    "fingerprint": fingerprint
                })
            };
            let body = json!({
                "version": "4",
                "groupKey": "{}/{severity=\"critical\"}:{alertname=\"KubePodCrashLooping\"}",
                "truncatedAlerts": 0,
                "status": status,
                "receiver": "hookwarden",
                "groupLabels": {"alertname": "KubePodCrashLooping"},
                "commonLabels": {"alertname": "KubePodCrashLooping", "severity": "critical", "namespace": "payments"},
                "commonAnnotations": {},
                "externalURL": "http://alertmanager.example.com",
                "alerts": [alert(incident.clone(), "checkout-api-0"), alert(format!("{incident}-2"), "checkout-api-1")]
            });
            json_sample(body, Some(status), vec![])
        }
        ProviderKind::Grafana => {
            let status = if resolve { "resolved" } else { "firing" };
            let ends = if resolve {
                now.clone()
            } else {
                "0001-01-01T00:00:00Z".to_string()
            };
            let alert = |fingerprint: String, instance: &str| {
                json!({
                    "status": status,
                    "labels": {"alertname": "HighLatency", "grafana_folder": "Checkout", "instance": instance, "severity": "high"},
                    "annotations": {"summary": format!("p99 latency above 1s on {instance}")},
                    "startsAt": started,
                    "endsAt": ends,
                    "generatorURL": "https://grafana.example.com/alerting/grafana/abc123/view",
                    "fingerprint": fingerprint,
                    "silenceURL": "https://grafana.example.com/alerting/silence/new",
                    "dashboardURL": "https://grafana.example.com/d/checkout",
                    "panelURL": "https://grafana.example.com/d/checkout?viewPanel=2",
                    "values": {"B": 1.42},
                    "valueString": "[ var='B' labels={instance=checkout-api-0} value=1.42 ]"
                })
            };
            let body = json!({
                "receiver": "hookwarden",
                "status": status,
                "orgId": 1,
                "alerts": [alert(incident.clone(), "checkout-api-0"), alert(format!("{incident}-2"), "checkout-api-1")],
                "groupLabels": {"alertname": "HighLatency", "grafana_folder": "Checkout"},
                "commonLabels": {"alertname": "HighLatency", "grafana_folder": "Checkout", "severity": "high"},
                "commonAnnotations": {},
                "externalURL": "https://grafana.example.com/",
                "version": "1",
                "groupKey": "{}/{alertname=\"HighLatency\"}:{alertname=\"HighLatency\", grafana_folder=\"Checkout\"}",
                "truncatedAlerts": 0,
                "title": format!("[{}] HighLatency Checkout", if resolve { "RESOLVED" } else { "FIRING:2" }),
                "state": if resolve { "ok" } else { "alerting" },
                "message": "**Firing**\n\nValue: B=1.42\nLabels:\n - alertname = HighLatency\n"
            });
            json_sample(body, Some(status), vec![])
        }
        ProviderKind::Pagerduty => {
            let (event_type, status) = if resolve {
                ("incident.resolved", "resolved")
            } else {
                ("incident.triggered", "triggered")
            };
            let body = json!({
                "event": {
                    "id": id,
                    "event_type": event_type,
                    "resource_type": "incident",
                    "occurred_at": now,
                    "agent": {"html_url": "https://acme.pagerduty.com/users/PLH1HKV", "id": "PLH1HKV", "self": "https://api.pagerduty.com/users/PLH1HKV", "summary": "Tenex Engineer", "type": "user_reference"},
                    "client": null,
                    "data": {
                        "id": incident,
                        "type": "incident",
                        "self": format!("https://api.pagerduty.com/incidents/{incident}"),
                        "html_url": format!("https://acme.pagerduty.com/incidents/{incident}"),
                        "number": 2,
                        "status": status,
                        "incident_key": incident,
                        "created_at": started,
                        "title": "Checkout error rate above threshold",
                        "service": {"html_url": "https://acme.pagerduty.com/services/PF9KMXH", "id": "PF9KMXH", "self": "https://api.pagerduty.com/services/PF9KMXH", "summary": "Checkout API", "type": "service_reference"},
                        "assignees": [{"html_url": "https://acme.pagerduty.com/users/PTUXL6G", "id": "PTUXL6G", "self": "https://api.pagerduty.com/users/PTUXL6G", "summary": "User 123", "type": "user_reference"}],
                        "escalation_policy": {"html_url": "https://acme.pagerduty.com/escalation_policies/PUS0KTE", "id": "PUS0KTE", "self": "https://api.pagerduty.com/escalation_policies/PUS0KTE", "summary": "Default", "type": "escalation_policy_reference"},
                        "teams": [],
                        "priority": {"html_url": "https://acme.pagerduty.com/account/incident_priorities", "id": "PSO75BM", "self": "https://api.pagerduty.com/priorities/PSO75BM", "summary": "P1", "type": "priority_reference"},
                        "urgency": "high",
                        "conference_bridge": null,
                        "resolve_reason": null
                    }
                }
            });
            json_sample(body, Some(event_type), vec![])
        }
        ProviderKind::Sentry => {
            let (action, status) = if resolve {
                ("resolved", "resolved")
            } else {
                ("created", "unresolved")
            };
            let body = json!({
                "action": action,
                "installation": {"uuid": "7a485448-a9e2-4c85-8a3c-4f44175783c9"},
                "data": {
                    "issue": {
                        "id": incident,
                        "shortId": "CHECKOUT-API-3F",
                        "title": "TypeError: Cannot read properties of undefined (reading 'amount')",
                        "culprit": "checkout/payment.ts in computeTotal",
                        "level": "error",
                        "status": status,
                        "substatus": if resolve { "resolved" } else { "new" },
                        "platform": "javascript",
                        "project": {"id": "4505", "name": "checkout-api", "slug": "checkout-api", "platform": "node"},
                        "permalink": format!("https://example.sentry.io/issues/{incident}/"),
                        "web_url": format!("https://example.sentry.io/issues/{incident}/"),
                        "firstSeen": started,
                        "lastSeen": now,
                        "count": "42",
                        "userCount": 7
                    }
                },
                "actor": {"type": "application", "id": "sentry", "name": "Sentry"}
            });
            json_sample(
                body,
                Some("issue"),
                vec![("Sentry-Hook-Resource", "issue".to_string())],
            )
        }
        ProviderKind::Github => {
            let (action, state) = if resolve {
                ("closed", "closed")
            } else {
                ("opened", "open")
            };
            let body = json!({
                "action": action,
                "issue": {
                    "url": "https://api.github.com/repos/octo-org/checkout/issues/1347",
                    "html_url": "https://github.com/octo-org/checkout/issues/1347",
                    "id": 1_876_543_210_i64,
                    "number": 1347,
                    "title": "Checkout fails with a 500 on empty carts",
                    "user": {"login": "octocat", "id": 1, "type": "User"},
                    "labels": [{"name": "bug"}],
                    "state": state,
                    "comments": 0,
                    "created_at": started,
                    "updated_at": now,
                    "body": "Steps to reproduce: open checkout with an empty cart."
                },
                "repository": {"id": 1_296_269, "name": "checkout", "full_name": "octo-org/checkout", "private": true, "html_url": "https://github.com/octo-org/checkout", "default_branch": "main"},
                "organization": {"login": "octo-org", "id": 9_919},
                "sender": {"login": "octocat", "id": 1, "type": "User"}
            });
            json_sample(
                body,
                Some("issues"),
                vec![
                    ("X-GitHub-Event", "issues".to_string()),
                    ("X-GitHub-Hook-ID", "292430182".to_string()),
                ],
            )
        }
        ProviderKind::Gitlab => {
            let (action, state) = if resolve {
                ("close", "closed")
            } else {
                ("open", "opened")
            };
            let body = json!({
                "object_kind": "issue",
                "event_type": "issue",
                "user": {"id": 1, "name": "Administrator", "username": "root"},
                "project": {"id": 1, "name": "checkout", "path_with_namespace": "payments/checkout", "web_url": "https://gitlab.example.com/payments/checkout"},
                "object_attributes": {
                    "id": 301, "iid": 23, "title": "Checkout fails with a 500 on empty carts",
                    "state": state, "action": action, "created_at": started, "updated_at": now,
                    "url": "https://gitlab.example.com/payments/checkout/-/issues/23"
                },
                "labels": [{"title": "bug"}]
            });
            json_sample(
                body,
                Some("Issue Hook"),
                vec![("X-Gitlab-Event", "Issue Hook".to_string())],
            )
        }
        ProviderKind::Stripe => {
            let body = json!({
                "id": format!("evt_{}", id.trim_start_matches("evt_")),
                "object": "event",
                "api_version": "2024-06-20",
                "created": now_unix,
                "data": {"object": {"id": "pi_3MtwBwLkdIwHu7ix28a3tqPa", "object": "payment_intent", "amount": 2000, "currency": "usd", "status": "succeeded", "livemode": false}},
                "livemode": false,
                "pending_webhooks": 1,
                "request": {"id": "req_8r5jQy3EgGz9Fd", "idempotency_key": "a3f5c1e2-7b4d-4c1a-9e2f-1d3b5a7c9e0f"},
                "type": "payment_intent.succeeded"
            });
            json_sample(body, Some("payment_intent.succeeded"), vec![])
        }
        ProviderKind::Slack => {
            let body = json!({
                "token": "XXYYZZ",
                "team_id": "T0001",
                "api_app_id": "A0001",
                "event": {"type": "app_mention", "user": "U061F7AUR", "text": "<@U0LAN0Z89> is checkout down?", "ts": format!("{now_unix}.000200"), "channel": "C0LAN2Q65", "event_ts": format!("{now_unix}.000200")},
                "type": "event_callback",
                "event_id": format!("Ev{}", id),
                "event_time": now_unix
            });
            json_sample(body, Some("app_mention"), vec![])
        }
        ProviderKind::StandardWebhooks | ProviderKind::Svix => {
            let body = json!({
                "type": "invoice.paid",
                "timestamp": now,
                "data": {"id": "inv_1f81eb52", "customer": "cus_4599", "amount": 4200, "currency": "eur"}
            });
            json_sample(body, Some("invoice.paid"), vec![])
        }
        ProviderKind::Shopify => {
            let body = json!({
                "id": 820_982_911_946_154_508_i64,
                "admin_graphql_api_id": "gid://shopify/Order/820982911946154508",
                "email": "jon@example.com",
                "created_at": now,
                "currency": "USD",
                "financial_status": "paid",
                "name": "#9999",
                "total_price": "403.00",
                "line_items": [{"id": 487_817_672_276_298_554_i64, "title": "Aviator sunglasses", "quantity": 1, "price": "199.00"}]
            });
            json_sample(
                body,
                Some("orders/create"),
                vec![
                    ("X-Shopify-Topic", "orders/create".to_string()),
                    ("X-Shopify-Shop-Domain", "example.myshopify.com".to_string()),
                    ("X-Shopify-API-Version", "2024-07".to_string()),
                ],
            )
        }
        ProviderKind::Twilio => {
            let sid = format!("SM{}", hex_id(id));
            let body = form_urlencoded::Serializer::new(String::new())
                .append_pair("ToCountry", "US")
                .append_pair("SmsMessageSid", &sid)
                .append_pair("NumMedia", "0")
                .append_pair("SmsSid", &sid)
                .append_pair("SmsStatus", "received")
                .append_pair("Body", "Is checkout down? Reply STOP to opt out")
                .append_pair("To", "+15017122661")
                .append_pair("MessageSid", &sid)
                .append_pair("AccountSid", "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX")
                .append_pair("From", "+15558675310")
                .append_pair("ApiVersion", "2010-04-01")
                .finish();
            Sample {
                content_type: "application/x-www-form-urlencoded",
                body: body.into_bytes(),
                event_type: Some("sms.received".to_string()),
                headers: vec![],
            }
        }
        ProviderKind::Linear => {
            let body = json!({
                "action": if resolve { "update" } else { "create" },
                "type": "Issue",
                "data": {"id": "2174add1-f7c8-44e3-bbf3-2d60b5ea8bc9", "identifier": "ENG-123", "title": "Checkout fails on empty carts", "priority": 1, "state": {"name": if resolve { "Done" } else { "Todo" }}, "createdAt": started, "updatedAt": now},
                "url": "https://linear.app/example/issue/ENG-123",
                "createdAt": now,
                "organizationId": "e9b8c2a4-8c1d-4b6a-a0f3-3b2d1c4e5f60",
                "webhookTimestamp": now_unix * 1000,
                "webhookId": "000042e3-d123-4980-b49f-8e140eef9329"
            });
            json_sample(
                body,
                Some("Issue"),
                vec![("Linear-Event", "Issue".to_string())],
            )
        }
        ProviderKind::Zendesk => {
            let body = json!({
                "type": "zen:event-type:ticket.created",
                "account_id": 22_129_848,
                "id": id,
                "time": now,
                "zendesk_event_version": "2022-11-06",
                "subject": "zen:ticket:35436",
                "detail": {"id": "35436", "subject": "Checkout is broken", "status": "NEW", "priority": "HIGH", "created_at": now, "updated_at": now, "requester_id": "1234"},
                "event": {}
            });
            json_sample(body, Some("zen:event-type:ticket.created"), vec![])
        }
        ProviderKind::Jira => {
            let event = if resolve {
                "jira:issue_updated"
            } else {
                "jira:issue_created"
            };
            let body = json!({
                "timestamp": now_unix * 1000,
                "webhookEvent": event,
                "issue_event_type_name": if resolve { "issue_resolved" } else { "issue_created" },
                "user": {"accountId": "5b10a2844c20165700ede21g", "displayName": "Mia Krystof"},
                "issue": {"id": "10002", "key": "OPS-42", "self": "https://example.atlassian.net/rest/api/2/issue/10002", "fields": {"summary": "Checkout fails on empty carts", "status": {"name": if resolve { "Done" } else { "To Do" }}, "priority": {"name": "Highest"}}}
            });
            json_sample(body, Some(event), vec![])
        }
        ProviderKind::Bitbucket => {
            let event = if resolve {
                "issue:updated"
            } else {
                "issue:created"
            };
            let body = json!({
                "actor": {"display_name": "Emma", "uuid": "{d301aafa-d676-4ee0-88be-962be7417567}", "type": "user"},
                "repository": {"full_name": "example/checkout", "name": "checkout", "uuid": "{b2c4d6e8-0000-4000-8000-123456789abc}", "type": "repository"},
                "issue": {"id": 42, "title": "Checkout fails on empty carts", "state": if resolve { "resolved" } else { "new" }, "priority": "critical", "kind": "bug", "created_on": started, "updated_on": now}
            });
            json_sample(body, Some(event), vec![("X-Event-Key", event.to_string())])
        }
        ProviderKind::GooglePubsub => {
            use base64::Engine as _;
            let data = json!({"kind": "storage#object", "name": "reports/2026-12.csv", "bucket": "example-reports"});
            let body = json!({
                "message": {
                    "attributes": {"eventType": "OBJECT_FINALIZE", "bucketId": "example-reports"},
                    "data": base64::engine::general_purpose::STANDARD.encode(data.to_string()),
                    "messageId": id,
                    "message_id": id,
                    "publishTime": now,
                    "publish_time": now
                },
                "subscription": "projects/example-project/subscriptions/hookwarden-push"
            });
            json_sample(body, Some("OBJECT_FINALIZE"), vec![])
        }
        ProviderKind::GithubActions => {
            let body = json!({
                "type": "deployment.finished",
                "id": id,
                "repository": "example-org/checkout",
                "environment": "production",
                "sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e",
                "time": now
            });
            json_sample(body, Some("deployment.finished"), vec![])
        }
        ProviderKind::AwsSns => {
            // A CloudWatch alarm state change, as SNS wraps it (Message is JSON text).
            let (state, old) = if resolve {
                ("OK", "ALARM")
            } else {
                ("ALARM", "OK")
            };
            let alarm = json!({
                "AlarmName": incident,
                "AlarmDescription": "5XX rate of the checkout load balancer above 5%",
                "AWSAccountId": "123456789012",
                "AlarmConfigurationUpdatedTimestamp": started,
                "NewStateValue": state,
                "NewStateReason": "Threshold Crossed: 1 out of the last 1 datapoints [7.2 (07/12/26 08:00:00)] was greater than the threshold (5.0).",
                "StateChangeTime": now,
                "Region": "EU (Ireland)",
                "AlarmArn": format!("arn:aws:cloudwatch:eu-west-1:123456789012:alarm:{incident}"),
                "OldStateValue": old,
                "Trigger": {"MetricName": "HTTPCode_ELB_5XX_Count", "Namespace": "AWS/ApplicationELB", "Statistic": "SUM", "Period": 60, "EvaluationPeriods": 1, "ComparisonOperator": "GreaterThanThreshold", "Threshold": 5.0}
            });
            let body = json!({
                "Type": "Notification",
                "MessageId": id,
                "TopicArn": "arn:aws:sns:eu-west-1:123456789012:alarms",
                "Subject": format!("{state}: \"{incident}\" in EU (Ireland)"),
                "Message": alarm.to_string(),
                "Timestamp": now,
                "SignatureVersion": "2",
                "Signature": "",
                "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem",
                "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:eu-west-1:123456789012:alarms:0"
            });
            Sample {
                content_type: "text/plain; charset=UTF-8",
                body: serde_json::to_vec(&body).unwrap_or_default(),
                event_type: Some("Notification".to_string()),
                headers: Vec::new(),
            }
        }
        // What Discord sends when the Interactions Endpoint URL is saved; answered 200 {"type":1}.
        ProviderKind::Discord => {
            let body = json!({
                "id": format!("{}", 1_100_000_000_000_000_000_u64 + (now_unix as u64 % 1_000_000)),
                "application_id": "1099999999999999999",
                "type": 1,
                "version": 1,
                "token": format!("aW50ZXJhY3Rpb246{}", hex_id(id))
            });
            json_sample(body, Some("1"), vec![])
        }
        ProviderKind::Sendgrid => {
            let body = json!([{
                "email": "oncall@example.com",
                "timestamp": now_unix,
                "smtp-id": format!("<{}@ismtpd0001p1lon1.sendgrid.net>", hex_id(id)),
                "event": "bounce",
                "category": ["incident-notifications"],
                "sg_event_id": format!("{}", hex_id(id)),
                "sg_message_id": format!("{}.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0", &hex_id(id)[..22]),
                "reason": "550 5.1.1 The email account that you tried to reach does not exist",
                "status": "5.1.1",
                "type": "bounce"
            }]);
            json_sample(body, Some("bounce"), vec![])
        }
        ProviderKind::Zoom => {
            let body = json!({
                "event": "meeting.started",
                "event_ts": now_unix * 1000,
                "payload": {"account_id": "AAAAAABBBB", "object": {"id": "85283014325", "uuid": "4444AAAiAAAAAiAiAiiAii==", "host_id": "x1yCzABCDEfg23HiJKl4mN", "topic": "Incident bridge: checkout", "type": 2, "start_time": now, "timezone": "UTC", "duration": 60}}
            });
            json_sample(body, Some("meeting.started"), vec![])
        }
        ProviderKind::Twitch => {
            let body = json!({
                "subscription": {"id": "f1c2a387-161a-49f9-a165-0f21d7a4e1c4", "type": "stream.online", "version": "1", "status": "enabled", "cost": 0, "condition": {"broadcaster_user_id": "1337"}, "transport": {"method": "webhook", "callback": "https://hooks.example.com/hooks/twitch"}, "created_at": started},
                "event": {"id": "9001", "broadcaster_user_id": "1337", "broadcaster_user_login": "cool_user", "broadcaster_user_name": "Cool_User", "type": "live", "started_at": now}
            });
            json_sample(
                body,
                Some("stream.online"),
                vec![
                    ("Twitch-Eventsub-Message-Type", "notification".to_string()),
                    (
                        "Twitch-Eventsub-Subscription-Type",
                        "stream.online".to_string(),
                    ),
                    ("Twitch-Eventsub-Subscription-Version", "1".to_string()),
                ],
            )
        }
        ProviderKind::AzureEventGrid => {
            let body = json!([{
                "id": id,
                "topic": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/ops/providers/Microsoft.Storage/storageAccounts/backups",
                "subject": "/blobServices/default/containers/nightly/blobs/db.dump",
                "eventType": "Microsoft.Storage.BlobCreated",
                "eventTime": now,
                "data": {"api": "PutBlockList", "contentType": "application/octet-stream", "contentLength": 524288, "blobType": "BlockBlob", "url": "https://backups.blob.core.windows.net/nightly/db.dump"},
                "dataVersion": "",
                "metadataVersion": "1"
            }]);
            json_sample(
                body,
                Some("Microsoft.Storage.BlobCreated"),
                vec![("aeg-event-type", "Notification".to_string())],
            )
        }
        ProviderKind::Gitea | ProviderKind::Forgejo => {
            let body = json!({
                "ref": "refs/heads/main",
                "before": "28e1879d029cb852e4844d9c718537df08844e03",
                "after": "bffeb74224043ba2feb48d137756c8a9331c449a",
                "compare_url": "https://git.example.com/ops/checkout/compare/28e1879d029c...bffeb7422404",
                "commits": [{"id": "bffeb74224043ba2feb48d137756c8a9331c449a", "message": "Roll back checkout to v1.41\n", "url": "https://git.example.com/ops/checkout/commit/bffeb74224043ba2feb48d137756c8a9331c449a", "author": {"name": "Alice", "email": "alice@example.com", "username": "alice"}, "timestamp": now}],
                "repository": {"id": 140, "name": "checkout", "full_name": "ops/checkout", "html_url": "https://git.example.com/ops/checkout", "private": true},
                "pusher": {"id": 1, "login": "alice", "full_name": "Alice"},
                "sender": {"id": 1, "login": "alice", "full_name": "Alice"}
            });
            let mut headers = vec![("X-Gitea-Event", "push".to_string())];
            if provider == ProviderKind::Forgejo {
                headers.push(("X-Forgejo-Event", "push".to_string()));
            }
            json_sample(body, Some("push"), headers)
        }
        ProviderKind::Paddle => {
            let body = json!({
                "event_id": format!("evt_{}", &hex_id(id)[..26]),
                "event_type": "subscription.past_due",
                "occurred_at": now,
                "notification_id": format!("ntf_{}", &hex_id(id)[..26]),
                "data": {"id": "sub_01h04vsc0qhwtsbsxh3422wjs4", "status": "past_due", "customer_id": "ctm_01h04vsbhqc62t8hmd4z3b578c", "currency_code": "USD", "billing_cycle": {"interval": "month", "frequency": 1}, "updated_at": now}
            });
            json_sample(body, Some("subscription.past_due"), vec![])
        }
        ProviderKind::Generic => {
            let body = json!({
                "type": "hookwarden.test",
                "id": id,
                "time": now,
                "message": "Sample delivery from hookwarden send-test"
            });
            json_sample(body, Some("hookwarden.test"), vec![])
        }
    }
}

/// 32 hex characters derived from `id`, for Twilio-style SIDs.
fn hex_id(id: &str) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(id.as_bytes())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_json_sample_parses_and_names_its_event() {
        for p in ProviderKind::ALL {
            let s = sample(p, 1_700_000_000, "d1");
            assert!(s.event_type.is_some(), "{p}");
            if s.content_type == "application/json" {
                serde_json::from_slice::<Value>(&s.body).unwrap_or_else(|e| panic!("{p}: {e}"));
            }
        }
    }

    #[test]
    fn datadog_sample_has_the_documented_fields_and_a_recovery() {
        let opts = SampleOptions {
            resolve: false,
            incident_id: Some("inc-7".to_string()),
        };
        let trigger: Value =
            serde_json::from_slice(&sample_with(ProviderKind::Datadog, 1, "d", &opts).body)
                .expect("json");
        for f in [
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
        ] {
            assert!(trigger.get(f).is_some(), "missing {f}");
        }
        assert_eq!(trigger["alert_transition"], "Triggered");
        assert_eq!(trigger["aggreg_key"], "inc-7");
        let opts = SampleOptions {
            resolve: true,
            ..opts
        };
        let recovery: Value =
            serde_json::from_slice(&sample_with(ProviderKind::Datadog, 2, "e", &opts).body)
                .expect("json");
        assert_eq!(recovery["alert_transition"], "Recovered");
        assert_eq!(recovery["aggreg_key"], "inc-7");
    }

    #[test]
    fn alertmanager_group_carries_several_fingerprinted_alerts_that_resolve_together() {
        let opts = SampleOptions {
            resolve: true,
            incident_id: Some("fp1".to_string()),
        };
        let v: Value =
            serde_json::from_slice(&sample_with(ProviderKind::Alertmanager, 1, "d", &opts).body)
                .expect("json");
        let alerts = v["alerts"].as_array().expect("alerts");
        assert!(alerts.len() >= 2);
        assert_eq!(alerts[0]["fingerprint"], "fp1");
        assert!(alerts.iter().all(|a| a["status"] == "resolved"));
        assert_eq!(v["status"], "resolved");
    }
}
