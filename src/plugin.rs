//! `kubectl hookwarden`: the same binary installed as `kubectl-hookwarden` (a symlink or a
//! copy on `PATH`), so kubectl's plugin mechanism finds it. Everything goes through the
//! current kubeconfig context like kubectl itself: `-n/--namespace`, `--context`,
//! `--kubeconfig`.
//!
//! - `url NAME`: the two things to paste into the sender (the URL, and which Secret key
//!   holds the secret).
//! - `secret NAME`: prints the secret (with a warning on stderr).
//! - `send-test NAME`: a signed sample delivery for the integration's provider, sent to
//!   its URL (`--base-url` to go through a port-forward instead).
//! - `status NAME`: conditions, deliveries, incidents, forwarding and recent Events,
//!   readable like `kubectl describe`.
//! - `replay NAME`: re-queues dead-lettered forwards (sets `hookwarden.dev/replay`).
//!
//! Exit codes as the other commands: 0 done, 1 the integration or its answer is not as
//! hoped (not found, not ready, refused by RBAC, non-2xx), 2 usage error.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};

use crate::crd::{WebhookIntegration, WebhookIntegrationStatus};
use crate::domain::plan::{GENERATED_SECRET_KEY, generated_secret_name};
use crate::standalone::get::human_age;
use crate::tools::{self, CliError, SendOptions};

/// The name kubectl looks for on `PATH`: `kubectl hookwarden …` runs it.
pub const PLUGIN_BINARY: &str = "kubectl-hookwarden";

/// `kubectl hookwarden` (also `hookwarden kubectl …`).
#[derive(Debug, clap::Parser)]
#[command(
    name = "kubectl-hookwarden",
    bin_name = "kubectl hookwarden",
    version,
    about = "Find, test and inspect hookwarden WebhookIntegrations through your kubeconfig"
)]
pub struct PluginCli {
    #[command(flatten)]
    pub args: PluginArgs,
}

/// The plugin's flags and subcommand.
#[derive(Debug, clap::Args)]
pub struct PluginArgs {
    /// Namespace of the integration (default: the context's namespace, else "default").
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    pub command: PluginCommand,
}

/// What `kubectl hookwarden` does.
#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// The endpoint URL and where its secret is: the two things to paste into the sender.
    Url {
        /// The WebhookIntegration.
        name: String,
    },
    /// Print the integration's shared secret or token (keep it out of shell history and logs).
    Secret {
        /// The WebhookIntegration.
        name: String,
    },
    /// Send a signed sample delivery for the integration's provider to its URL.
    SendTest(SendTestArgs),
    /// Conditions, deliveries, incidents, forwarding and recent Events, readable.
    Status {
        /// The WebhookIntegration.
        name: String,
    },
    /// Re-queue the integration's dead-lettered forwards on every receiver.
    Replay {
        /// The WebhookIntegration.
        name: String,
        /// Only this forward target's dead letters.
        #[arg(long)]
        target: Option<String>,
    },
}

/// Flags of `kubectl hookwarden send-test`.
#[derive(Debug, clap::Args)]
pub struct SendTestArgs {
    /// The WebhookIntegration.
    pub name: String,
    /// Send to this scheme://host[:port] with the integration's path, e.g. the local end
    /// of `kubectl port-forward svc/hookwarden-receiver 8080:80` (default: status.url).
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// Monitoring providers: send the recovery of the incident instead of its trigger.
    #[arg(long)]
    pub resolve: bool,
    /// The sender's incident id (default hookwarden-send-test).
    #[arg(long, value_name = "ID")]
    pub incident_id: Option<String>,
    /// Delivery id (default: random). Datadog's delivery key also holds the sample's `date`
    /// (the second it is sent), so to send one delivery again byte for byte, use --body-file.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Send this body instead of the provider's sample.
    #[arg(long, value_name = "PATH")]
    pub body_file: Option<PathBuf>,
    /// Give up after this many seconds (connect + answer).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub timeout_seconds: u64,
    /// OIDC and SNS integrations verify a signature made with the sender's private key,
    /// which no Secret holds: the key to sign the sample with.
    #[command(flatten)]
    pub key: tools::PrivateKeyFlags,
}

/// Whether the process was started under the plugin's name (`argv[0]` is
/// `kubectl-hookwarden`, however it was linked or copied).
pub fn invoked_as_plugin(argv0: Option<&std::ffi::OsStr>) -> bool {
    argv0
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|f| f.to_str())
        .is_some_and(|f| f == PLUGIN_BINARY || f.starts_with("kubectl-hookwarden."))
}

/// Why a plugin command stopped: printed as `error: …`, exit 1 (or 2 for usage).
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
        }
    }

    fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
}

/// A client and namespace from the kubeconfig, as kubectl would pick them.
struct Target {
    client: kube::Client,
    namespace: String,
}

async fn connect(args: &PluginArgs) -> Result<Target, Failure> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let options = KubeConfigOptions {
        context: args.context.clone(),
        cluster: None,
        user: None,
    };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                Failure::usage(format!("cannot read --kubeconfig {}: {e}", path.display()))
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| e.to_string())
        }
        None if args.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| e.to_string()),
        None => kube::Config::infer().await.map_err(|e| e.to_string()),
    }
    .map_err(|e| Failure::new(format!("no cluster to talk to: {e}")))?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config)
        .map_err(|e| Failure::new(format!("cannot build a client from the kubeconfig: {e}")))?;
    Ok(Target { client, namespace })
}

/// A failed API call said in a user's terms: missing, or which permission is lacking.
fn api_failure(e: kube::Error, verb: &str, what: &str, namespace: &str, name: &str) -> Failure {
    match e {
        kube::Error::Api(s) if s.code == 404 => {
            Failure::new(format!("{what} {namespace}/{name} not found"))
        }
        kube::Error::Api(s) if s.code == 403 => Failure::new(format!(
            "not allowed to {verb} {what} {namespace}/{name}: {} (ask your cluster admin for {verb} on {what} in namespace {namespace})",
            s.message
        )),
        kube::Error::Api(s) if s.code == 401 => Failure::new(format!(
            "the API server does not accept your credentials ({}); log in again or pick another --context",
            s.message
        )),
        e => Failure::new(format!("cannot {verb} {what} {namespace}/{name}: {e}")),
    }
}

async fn integration(target: &Target, name: &str) -> Result<WebhookIntegration, Failure> {
    let api: Api<WebhookIntegration> = Api::namespaced(target.client.clone(), &target.namespace);
    api.get(name).await.map_err(|e| {
        api_failure(
            e,
            "get",
            "webhookintegrations.hookwarden.dev",
            &target.namespace,
            name,
        )
    })
}

/// Where the integration's shared secret lives: (Secret name, key), or None for a
/// generated secret the controller has not written yet.
fn secret_location(whi: &WebhookIntegration) -> Option<(String, String)> {
    if let Some(r) = &whi.spec.secret_ref {
        return Some((r.name.clone(), r.key.clone()));
    }
    let name = whi.metadata.name.as_deref().unwrap_or_default();
    let generated = whi
        .status
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .unwrap_or_else(|| generated_secret_name(name));
    Some((generated, GENERATED_SECRET_KEY.to_string()))
}

async fn read_secret(
    target: &Target,
    whi: &WebhookIntegration,
) -> Result<(String, String, String), Failure> {
    let (secret, key) =
        secret_location(whi).ok_or_else(|| Failure::new("the integration names no secret"))?;
    let api: Api<Secret> = Api::namespaced(target.client.clone(), &target.namespace);
    let found = api
        .get(&secret)
        .await
        .map_err(|e| api_failure(e, "get", "secrets", &target.namespace, &secret))?;
    let value = found
        .data
        .as_ref()
        .and_then(|d| d.get(&key))
        .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
        .or_else(|| {
            found
                .string_data
                .as_ref()
                .and_then(|d| d.get(&key))
                .map(|v| v.trim().to_string())
        })
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            Failure::new(format!(
                "Secret {}/{secret} has no (non-empty) key {key:?}",
                target.namespace
            ))
        })?;
    Ok((secret, key, value))
}

fn ready_url(whi: &WebhookIntegration, namespace: &str) -> Result<String, Failure> {
    let name = whi.metadata.name.as_deref().unwrap_or_default();
    whi.status
        .as_ref()
        .and_then(|s| s.url.clone())
        .ok_or_else(|| {
            Failure::new(format!(
                "webhookintegration {namespace}/{name} has no URL yet: is the controller running? (kubectl hookwarden status {name} -n {namespace})"
            ))
        })
}

/// `base` (scheme://host[:port]) with the path of `url`.
fn rebase(url: &str, base: &str) -> Result<String, Failure> {
    let parsed: http::Uri = url
        .parse()
        .map_err(|e| Failure::new(format!("status.url {url:?} is not a URL: {e}")))?;
    let path = parsed.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let base_uri: http::Uri = base
        .parse()
        .map_err(|e| Failure::usage(format!("--base-url {base:?} is not a URL: {e}")))?;
    if base_uri.scheme().is_none() || base_uri.authority().is_none() {
        return Err(Failure::usage(format!(
            "--base-url {base:?}: expected scheme://host[:port], e.g. http://127.0.0.1:8080"
        )));
    }
    Ok(format!("{}{path}", base.trim_end_matches('/')))
}

/// `kubectl hookwarden` as the binary's entry point under the plugin's name.
pub async fn run(args: PluginArgs) -> ExitCode {
    match run_command(&args).await {
        Ok(code) => code,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn run_command(args: &PluginArgs) -> Result<ExitCode, Failure> {
    let target = connect(args).await?;
    match &args.command {
        PluginCommand::Url { name } => {
            let whi = integration(&target, name).await?;
            let url = ready_url(&whi, &target.namespace)?;
            print!("{}", url_text(&whi, &url, &target.namespace));
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Secret { name } => {
            let whi = integration(&target, name).await?;
            let (secret, key, value) = read_secret(&target, &whi).await?;
            eprintln!(
                "warning: this is the shared secret of {}/{name} (Secret {secret}, key {key}); anyone holding it can send deliveries that verify",
                target.namespace
            );
            println!("{value}");
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::SendTest(send) => {
            let whi = integration(&target, &send.name).await?;
            let mut url = ready_url(&whi, &target.namespace)?;
            if let Some(base) = &send.base_url {
                url = rebase(&url, base)?;
            }
            let scheme = tools::scheme_of(&whi.spec).map_err(|e| {
                Failure::new(format!(
                    "{}/{}: the receivers refuse this {e}",
                    target.namespace, send.name
                ))
            })?;
            let (_, _, secret) = read_secret(&target, &whi).await?;
            let options = SendOptions {
                resolve: send.resolve,
                incident_id: send.incident_id.clone(),
                id: send.id.clone(),
                body_file: send.body_file.clone(),
                key: Some(send.key.clone()),
            };
            let prepared =
                tools::prepare_send(&scheme, &url, &secret, &options).map_err(|e| match e {
                    CliError::Usage(m) => Failure::usage(m),
                    CliError::Invalid(m) => Failure::new(m),
                })?;
            eprintln!("sending a signed {} sample to {url}", whi.spec.provider);
            Ok(tools::send_prepared(prepared, &url, send.timeout_seconds).await)
        }
        PluginCommand::Status { name } => {
            let whi = integration(&target, name).await?;
            let events = recent_events(&target, name).await;
            print!(
                "{}",
                describe(&whi, &target.namespace, &events, jiff::Timestamp::now())
            );
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Replay { name, target: only } => {
            let request = crate::route::ReplayRequest {
                value: jiff::Timestamp::now().to_string(),
                target: only.clone(),
            };
            Ok(
                tools::request_replay(target.client.clone(), &target.namespace, name, &request)
                    .await,
            )
        }
    }
}

/// The text of `url`: the URL, then where its secret is and how to print it.
fn url_text(whi: &WebhookIntegration, url: &str, namespace: &str) -> String {
    let name = whi.metadata.name.as_deref().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "URL:     {url}");
    match secret_location(whi) {
        Some((secret, key)) => {
            let _ = writeln!(
                out,
                "Secret:  Secret {namespace}/{secret}, key {key:?} (print it: kubectl hookwarden secret {name} -n {namespace})"
            );
        }
        None => {
            let _ = writeln!(out, "Secret:  none");
        }
    }
    let _ = writeln!(out, "Provider: {}", whi.spec.provider);
    out
}

/// An Event as `status` prints it.
#[derive(Debug, Clone, PartialEq)]
struct EventLine {
    type_: String,
    reason: String,
    age_seconds: Option<i64>,
    note: String,
}

/// The integration's newest Events (events.k8s.io/v1, what the controller and receivers
/// publish), or why they could not be read.
async fn recent_events(target: &Target, name: &str) -> Result<Vec<EventLine>, String> {
    use k8s_openapi::api::events::v1::Event;
    let api: Api<Event> = Api::namespaced(target.client.clone(), &target.namespace);
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 403 => format!(
                "not allowed to list events in {}: {}",
                target.namespace, s.message
            ),
            e => format!("cannot list events: {e}"),
        })?;
    let now = jiff::Timestamp::now();
    let mut lines: Vec<(i64, EventLine)> = list
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.name.as_deref() == Some(name) && r.kind.as_deref() == Some("WebhookIntegration")
            })
        })
        .map(|e| {
            let when = e
                .series
                .as_ref()
                .map(|s| s.last_observed_time.0)
                .or(e.event_time.as_ref().map(|t| t.0))
                .or(e.deprecated_last_timestamp.as_ref().map(|t| t.0))
                .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0));
            let seconds = when.map(|t| t.as_second()).unwrap_or(0);
            (
                seconds,
                EventLine {
                    type_: e.type_.unwrap_or_default(),
                    reason: e.reason.unwrap_or_default(),
                    age_seconds: when.map(|t| now.as_second() - t.as_second()),
                    note: e.note.unwrap_or_default(),
                },
            )
        })
        .collect();
    lines.sort_by_key(|(t, _)| *t);
    let keep = lines.len().saturating_sub(MAX_EVENTS);
    Ok(lines.into_iter().skip(keep).map(|(_, l)| l).collect())
}

/// Events `status` shows (the newest).
const MAX_EVENTS: usize = 10;

fn age(
    t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    now: jiff::Timestamp,
) -> String {
    t.map(|t| format!("{} ago", human_age(now.as_second() - t.0.as_second())))
        .unwrap_or_else(|| "never".to_string())
}

/// `kubectl hookwarden status`: the integration in `kubectl describe` style.
fn describe(
    whi: &WebhookIntegration,
    namespace: &str,
    events: &Result<Vec<EventLine>, String>,
    now: jiff::Timestamp,
) -> String {
    let empty = WebhookIntegrationStatus::default();
    let status = whi.status.as_ref().unwrap_or(&empty);
    let mut out = String::new();
    let name = whi.metadata.name.as_deref().unwrap_or_default();
    let _ = writeln!(out, "Name:          {name}");
    let _ = writeln!(out, "Namespace:     {namespace}");
    let _ = writeln!(out, "Provider:      {}", whi.spec.provider);
    let _ = writeln!(
        out,
        "URL:           {}",
        status.url.as_deref().unwrap_or("<none yet>")
    );
    if let Some((secret, key)) = secret_location(whi) {
        let _ = writeln!(out, "Secret:        {secret} (key {key:?})");
    }
    if whi.spec.suspend {
        let _ = writeln!(out, "Suspended:     true (deliveries are refused)");
    }
    let generation = whi.metadata.generation.unwrap_or(0);
    match status.observed_generation {
        Some(g) if g == generation => {}
        Some(g) => {
            let _ = writeln!(
                out,
                "Observed:      generation {g} of {generation} (the controller has not acted on the newest spec yet)"
            );
        }
        None => {
            let _ = writeln!(
                out,
                "Observed:      not yet (is the hookwarden controller running?)"
            );
        }
    }

    let _ = writeln!(out, "Conditions:");
    if status.conditions.is_empty() {
        let _ = writeln!(out, "  <none>");
    } else {
        let rows: Vec<[String; 5]> = status
            .conditions
            .iter()
            .map(|c| {
                [
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    human_age(now.as_second() - c.last_transition_time.0.as_second()),
                    c.message.clone(),
                ]
            })
            .collect();
        table_into(
            &mut out,
            ["Type", "Status", "Reason", "Age", "Message"],
            &rows,
        );
    }

    let _ = writeln!(out, "Deliveries:");
    match &status.deliveries {
        None => {
            let _ = writeln!(out, "  none received yet");
        }
        Some(d) => {
            let _ = writeln!(
                out,
                "  Received {}   Accepted {}   Rejected {}   Duplicates {}   Ignored {}",
                d.received, d.accepted, d.rejected, d.duplicates, d.ignored
            );
            let _ = writeln!(
                out,
                "  Last received: {}",
                age(d.last_received_time.as_ref(), now)
            );
            if d.rejected > 0 || d.last_reject_reason.is_some() {
                let _ = writeln!(
                    out,
                    "  Last rejected: {} ({})",
                    age(d.last_rejected_time.as_ref(), now),
                    d.last_reject_reason
                        .as_deref()
                        .unwrap_or("no reason recorded")
                );
            }
            if d.alerts_dropped > 0 {
                let _ = writeln!(
                    out,
                    "  Alerts dropped: {} (deliveries over spec.incidents.maxAlertsPerDelivery)",
                    d.alerts_dropped
                );
            }
        }
    }

    if let Some(i) = &status.incidents {
        let _ = writeln!(out, "Incidents:");
        if i.truncated {
            let _ = writeln!(
                out,
                "  Open: {} (at least: more open incidents than spec.incidents.maxTracked are listed)",
                i.open_display
                    .clone()
                    .unwrap_or_else(|| format!("{}+", i.open))
            );
        } else {
            let _ = writeln!(out, "  Open: {}", i.open);
        }
        if !i.recent.is_empty() {
            let rows: Vec<[String; 5]> = i
                .recent
                .iter()
                .map(|r| {
                    [
                        r.id.clone(),
                        r.state.clone(),
                        r.severity.clone(),
                        r.updated_at
                            .as_ref()
                            .or(r.opened_at.as_ref())
                            .map(|t| human_age(now.as_second() - t.0.as_second()))
                            .unwrap_or_default(),
                        r.title.clone(),
                    ]
                })
                .collect();
            table_into(
                &mut out,
                ["Id", "State", "Severity", "Updated", "Title"],
                &rows,
            );
        }
    }

    if !whi.spec.forward.is_empty() || !status.forwarding.is_empty() {
        let _ = writeln!(out, "Forwarding:");
        if status.forwarding.is_empty() {
            let _ = writeln!(out, "  nothing forwarded yet");
        } else {
            let rows: Vec<[String; 6]> = status
                .forwarding
                .iter()
                .map(|f| {
                    [
                        f.name.clone(),
                        format!("{}/{}", f.delivered, f.failed),
                        f.pending.to_string(),
                        f.dead_lettered.to_string(),
                        f.circuit.clone().unwrap_or_else(|| "closed".to_string()),
                        match (&f.last_failure, &f.last_failure_time) {
                            (Some(why), t) => format!("{} ({})", why, age(t.as_ref(), now)),
                            (None, _) => "-".to_string(),
                        },
                    ]
                })
                .collect();
            table_into(
                &mut out,
                [
                    "Target",
                    "Delivered/Failed",
                    "Pending",
                    "Dead",
                    "Circuit",
                    "Last failure",
                ],
                &rows,
            );
            if status.forwarding.iter().any(|f| f.dead_lettered > 0) {
                let _ = writeln!(
                    out,
                    "  Dead letters are kept for deadLetterTTL; re-send them: kubectl hookwarden replay {name} -n {namespace}"
                );
            }
        }
    }

    let _ = writeln!(out, "Events:");
    match events {
        Err(why) => {
            let _ = writeln!(out, "  <{why}>");
        }
        Ok(list) if list.is_empty() => {
            let _ = writeln!(out, "  <none>");
        }
        Ok(list) => {
            let rows: Vec<[String; 4]> = list
                .iter()
                .map(|e| {
                    [
                        e.type_.clone(),
                        e.reason.clone(),
                        e.age_seconds.map(human_age).unwrap_or_default(),
                        e.note.clone(),
                    ]
                })
                .collect();
            table_into(&mut out, ["Type", "Reason", "Age", "Message"], &rows);
        }
    }
    out
}

/// Rows under a header, columns padded, indented two spaces (the last column unpadded).
fn table_into<const N: usize>(out: &mut String, header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::from("  ");
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                s.push_str(cell);
            } else {
                let _ = write!(s, "{cell:<width$}  ", width = widths[i]);
            }
        }
        s.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn integration(yaml: &str) -> WebhookIntegration {
        serde_yaml::from_str(yaml).expect("integration YAML")
    }

    const NOW: &str = "2026-12-07T10:00:00Z";

    fn with_status() -> WebhookIntegration {
        integration(
            r#"
apiVersion: hookwarden.dev/v1alpha1
kind: WebhookIntegration
metadata: {name: am, namespace: team, generation: 2}
spec:
  provider: alertmanager
  forward:
    - name: chat
      url: https://chat.example.com/hook
status:
  observedGeneration: 2
  url: https://hooks.example.com/hooks/abc
  secretName: am-webhook
  conditions:
    - {type: Ready, status: "True", reason: Ready, message: serving, lastTransitionTime: "2026-12-07T09:58:00Z"}
  deliveries: {received: 7, accepted: 5, rejected: 2, duplicates: 0, ignored: 0,
    lastReceivedTime: "2026-12-07T09:59:50Z", lastRejectedTime: "2026-12-07T09:59:00Z",
    lastRejectReason: signature_mismatch}
  incidents:
    open: 1
    recent:
      - {id: disk-full, title: Disk full, severity: critical, state: open, updatedAt: "2026-12-07T09:59:50Z"}
  forwarding:
    - {name: chat, delivered: 4, failed: 3, pending: 1, deadLettered: 2, circuit: open,
       lastFailure: "503 Service Unavailable", lastFailureTime: "2026-12-07T09:59:30Z"}
"#,
        )
    }

    #[test]
    fn plugin_name_is_recognised_however_it_is_linked() {
        use std::ffi::OsStr;
        for yes in [
            "kubectl-hookwarden",
            "/usr/local/bin/kubectl-hookwarden",
            "./kubectl-hookwarden.exe",
        ] {
            assert!(invoked_as_plugin(Some(OsStr::new(yes))), "{yes}");
        }
        for no in [
            "hookwarden",
            "/bin/hookwarden",
            "kubectl",
            "kubectl-hookwardens",
        ] {
            assert!(!invoked_as_plugin(Some(OsStr::new(no))), "{no}");
        }
        assert!(!invoked_as_plugin(None));
    }

    #[test]
    fn flags_parse_before_and_after_the_subcommand_like_kubectl() {
        use clap::Parser as _;
        for argv in [
            &["kubectl-hookwarden", "-n", "team", "url", "am"][..],
            &["kubectl-hookwarden", "url", "am", "--namespace", "team"][..],
        ] {
            let cli = PluginCli::try_parse_from(argv).expect("parses");
            assert_eq!(cli.args.namespace.as_deref(), Some("team"));
            assert!(matches!(cli.args.command, PluginCommand::Url { ref name } if name == "am"));
        }
        assert!(PluginCli::try_parse_from(["kubectl-hookwarden", "url"]).is_err());
    }

    #[test]
    fn the_secret_is_the_referenced_key_or_the_generated_one() {
        let referenced = integration(
            "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata: {name: gh}\nspec: {provider: github, secretRef: {name: gh-secret, key: webhook}}\n",
        );
        assert_eq!(
            secret_location(&referenced),
            Some(("gh-secret".to_string(), "webhook".to_string()))
        );
        let generated = integration(
            "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata: {name: gh}\nspec: {provider: github}\n",
        );
        assert_eq!(
            secret_location(&generated),
            Some(("gh-webhook".to_string(), GENERATED_SECRET_KEY.to_string()))
        );
        let text = url_text(
            &with_status(),
            "https://hooks.example.com/hooks/abc",
            "team",
        );
        assert!(
            text.contains("URL:     https://hooks.example.com/hooks/abc"),
            "{text}"
        );
        assert!(
            text.contains("Secret team/am-webhook, key \"secret\""),
            "{text}"
        );
    }

    #[test]
    fn base_url_keeps_the_integration_path() {
        let url = "https://hooks.example.com/hooks/abc?x=1";
        assert_eq!(
            rebase(url, "http://127.0.0.1:8080/").ok().as_deref(),
            Some("http://127.0.0.1:8080/hooks/abc?x=1")
        );
        let Err(refused) = rebase(url, "127.0.0.1:8080") else {
            panic!("a base URL without a scheme is refused")
        };
        assert_eq!(refused.code, 2);
        assert!(
            refused.message.contains("scheme://host"),
            "{}",
            refused.message
        );
    }

    #[test]
    fn status_reads_like_kubectl_describe() {
        let now: jiff::Timestamp = NOW.parse().expect("time");
        let events = Ok(vec![EventLine {
            type_: "Warning".to_string(),
            reason: "ForwardDeadLettered".to_string(),
            age_seconds: Some(30),
            note: "2 forwards to chat dead-lettered".to_string(),
        }]);
        let text = describe(&with_status(), "team", &events, now);
        for expected in [
            "Name:          am\n",
            "URL:           https://hooks.example.com/hooks/abc\n",
            "Secret:        am-webhook (key \"secret\")\n",
            "  Ready  True    Ready   2m   serving\n",
            "Received 7   Accepted 5   Rejected 2",
            "Last received: 10s ago",
            "Last rejected: 60s ago (signature_mismatch)",
            "Open: 1",
            "disk-full  open   critical  10s",
            "chat    4/3               1        2     open     503 Service Unavailable (30s ago)",
            "kubectl hookwarden replay am -n team",
            "Warning  ForwardDeadLettered  30s  2 forwards to chat dead-lettered",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
        assert!(!text.contains("Observed:"), "{text}");

        let mut behind = with_status();
        behind.metadata.generation = Some(3);
        let text = describe(
            &behind,
            "team",
            &Err("not allowed to list events".into()),
            now,
        );
        assert!(text.contains("generation 2 of 3"), "{text}");
        assert!(text.contains("<not allowed to list events>"), "{text}");

        let fresh = integration(
            "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata: {name: new}\nspec: {provider: github}\n",
        );
        let text = describe(&fresh, "team", &Ok(vec![]), now);
        assert!(text.contains("URL:           <none yet>"), "{text}");
        assert!(
            text.contains("is the hookwarden controller running?"),
            "{text}"
        );
        assert!(text.contains("none received yet"), "{text}");
        assert!(!text.contains("Forwarding:"), "{text}");
    }
}
