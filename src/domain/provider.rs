//! The provider presets a `WebhookIntegration` can name in `spec.provider`.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A sender preset: how deliveries are authenticated and how they map to incidents.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// GitHub: `X-Hub-Signature-256` (HMAC-SHA256, hex, `sha256=` prefix).
    Github,
    /// GitLab: plain `X-Gitlab-Token`, or a `whsec_` signing token in Standard Webhooks form.
    Gitlab,
    /// Stripe: `Stripe-Signature: t=…,v1=…` over `{t}.{body}`.
    Stripe,
    /// Slack: `X-Slack-Signature: v0=…` over `v0:{timestamp}:{body}`; answers `url_verification`.
    Slack,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature` (`v1,` base64).
    StandardWebhooks,
    /// Svix: the Standard Webhooks scheme with `svix-` headers.
    Svix,
    /// Shopify: `X-Shopify-Hmac-Sha256`, base64 HMAC-SHA256 of the body.
    Shopify,
    /// PagerDuty v3: `X-PagerDuty-Signature: v1=…[,v1=…]`.
    Pagerduty,
    /// Twilio: `X-Twilio-Signature`, base64 HMAC-SHA1 over URL + sorted form params.
    Twilio,
    /// Sentry: `Sentry-Hook-Signature`, hex HMAC-SHA256 of the body.
    Sentry,
    /// Linear: `Linear-Signature`, hex HMAC-SHA256; `webhookTimestamp` in the body.
    Linear,
    /// Grafana alerting: `X-Grafana-Alerting-Signature`, optionally with a timestamp header.
    Grafana,
    /// Zendesk: `X-Zendesk-Webhook-Signature` (base64) over timestamp + body.
    Zendesk,
    /// Jira (Atlassian): `X-Hub-Signature: sha256=…`.
    Jira,
    /// Bitbucket Cloud: `X-Hub-Signature: sha256=…`.
    Bitbucket,
    /// Datadog: no signature; a token in a bearer, basic or custom header.
    Datadog,
    /// Prometheus Alertmanager: no signature; bearer or basic auth token.
    Alertmanager,
    /// Configurable HMAC (`spec.signature`).
    Generic,
}

impl ProviderKind {
    /// Every preset, in documentation order.
    pub const ALL: [ProviderKind; 18] = [
        ProviderKind::Github,
        ProviderKind::Gitlab,
        ProviderKind::Stripe,
        ProviderKind::Slack,
        ProviderKind::StandardWebhooks,
        ProviderKind::Svix,
        ProviderKind::Shopify,
        ProviderKind::Pagerduty,
        ProviderKind::Twilio,
        ProviderKind::Sentry,
        ProviderKind::Linear,
        ProviderKind::Grafana,
        ProviderKind::Zendesk,
        ProviderKind::Jira,
        ProviderKind::Bitbucket,
        ProviderKind::Datadog,
        ProviderKind::Alertmanager,
        ProviderKind::Generic,
    ];

    /// The name used in `spec.provider` and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Github => "github",
            ProviderKind::Gitlab => "gitlab",
            ProviderKind::Stripe => "stripe",
            ProviderKind::Slack => "slack",
            ProviderKind::StandardWebhooks => "standard-webhooks",
            ProviderKind::Svix => "svix",
            ProviderKind::Shopify => "shopify",
            ProviderKind::Pagerduty => "pagerduty",
            ProviderKind::Twilio => "twilio",
            ProviderKind::Sentry => "sentry",
            ProviderKind::Linear => "linear",
            ProviderKind::Grafana => "grafana",
            ProviderKind::Zendesk => "zendesk",
            ProviderKind::Jira => "jira",
            ProviderKind::Bitbucket => "bitbucket",
            ProviderKind::Datadog => "datadog",
            ProviderKind::Alertmanager => "alertmanager",
            ProviderKind::Generic => "generic",
        }
    }

    /// Presets whose deliveries become incidents without any `spec.incidents` mapping.
    pub fn is_monitoring(self) -> bool {
        matches!(
            self,
            ProviderKind::Datadog
                | ProviderKind::Alertmanager
                | ProviderKind::Grafana
                | ProviderKind::Pagerduty
                | ProviderKind::Sentry
        )
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown provider name.
#[derive(Debug, thiserror::Error)]
#[error("unknown provider {0:?}; known providers: {known}", known = known_list())]
pub struct UnknownProvider(pub String);

fn known_list() -> String {
    ProviderKind::ALL
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for ProviderKind {
    type Err = UnknownProvider;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProviderKind::ALL
            .iter()
            .copied()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownProvider(s.to_string()))
    }
}
