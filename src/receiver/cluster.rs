//! `hookwarden receiver`: the in-cluster data plane. Watches the route Secrets in its own
//! namespace, serves the pipeline, and writes status back with server-side apply.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::forwarder::EgressPolicy;
use crate::receiver::service::{Receiver, ReceiverHandle, ReceiverOptions};
use crate::receiver::status::KubeStatusWriter;
use crate::route::{INTEGRATION_ANNOTATION, ROUTE_LABEL, Route};
use crate::telemetry::LogFormat;

/// Flags of `hookwarden receiver`.
#[derive(Debug, clap::Args)]
pub struct ReceiverArgs {
    /// Address serving /hooks/…, /healthz and /readyz.
    #[arg(long, env = "HOOKWARDEN_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address serving /metrics.
    #[arg(long, env = "HOOKWARDEN_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// hookwarden's own namespace, where the controller writes route Secrets.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// This replica's name, shown on the Kubernetes Events it emits.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Public base URL senders call (e.g. https://hooks.example.com); Twilio signs it.
    #[arg(long, env = "HOOKWARDEN_EXTERNAL_BASE_URL")]
    pub external_base_url: Option<String>,
    /// Folder of the durable delivery journal (a volume that survives container restarts).
    #[arg(
        long,
        env = "HOOKWARDEN_JOURNAL_DIR",
        default_value = "/var/lib/hookwarden/journal"
    )]
    pub journal_dir: PathBuf,
    /// Cap on the journal's size on disk; beyond it deliveries get 503 + Retry-After.
    #[arg(long, env = "HOOKWARDEN_JOURNAL_MAX_BYTES", default_value_t = crate::receiver::service::DEFAULT_JOURNAL_MAX_BYTES)]
    pub journal_max_bytes: u64,
    /// How long a journal commit may wait for deliveries still on their way, so more of
    /// them share one fsync (0: commit as soon as the previous fsync is done).
    #[arg(long, env = "HOOKWARDEN_JOURNAL_COMMIT_WINDOW", default_value = "400us", value_parser = crate::receiver::service::parse_commit_window)]
    pub journal_commit_window: Duration,
    /// Delivery ids remembered for deduplication, across all integrations (about 130
    /// bytes of memory each). When full, the oldest are forgotten before their dedup
    /// window ends (counted in hookwarden_receiver_dedup_evicted_early_total) and a late
    /// copy of such a delivery is accepted again. The default covers 24 h at an average of
    /// 2.3 accepted deliveries per second.
    #[arg(long, env = "HOOKWARDEN_DEDUP_MAX_IDS", default_value_t = crate::receiver::service::DEDUP_CAPACITY, value_parser = clap::value_parser!(u64).range(1_000..=100_000_000))]
    pub dedup_max_ids: u64,
    /// At most one status write per integration per this interval.
    #[arg(long, env = "HOOKWARDEN_STATUS_INTERVAL", default_value = "2s", value_parser = crate::domain::duration::parse_arg)]
    pub status_interval: Duration,
    /// Status writes per second this replica makes at most, across all integrations (its
    /// share of API-server load, whatever the webhook rate). When more integrations are
    /// behind, the least recently written go first: none starves, busy ones coalesce
    /// longer, nothing is lost (only written later). 0: no global budget.
    #[arg(long, env = "HOOKWARDEN_STATUS_WRITES_PER_SECOND", default_value_t = crate::receiver::runtime::DEFAULT_STATUS_WRITES_PER_SECOND, value_parser = parse_writes_per_second)]
    pub status_writes_per_second: f64,
    /// Consecutive authentication failures that set Degraded (SignatureFailures).
    #[arg(long, env = "HOOKWARDEN_DEGRADED_AFTER", default_value_t = 20)]
    pub degraded_after: u64,
    /// Proxies whose X-Forwarded-For is trusted (CIDRs, comma-separated). Empty: none.
    #[arg(long, env = "HOOKWARDEN_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpNet>,
    /// Request-body bytes the receiver holds at once, across integrations (one
    /// integration gets at most a quarter); over it deliveries get 503 + Retry-After before
    /// any byte is read. Size it to the pod's memory limit (a quarter of it).
    #[arg(long, env = "HOOKWARDEN_MAX_BODY_BYTES_IN_FLIGHT", default_value_t = crate::receiver::limits::DEFAULT_BODY_BUDGET)]
    pub max_body_bytes_in_flight: u64,
    /// Connections served at once; one more is answered 503 + Retry-After and closed
    /// without reading (each holds buffers and file descriptors).
    #[arg(long, env = "HOOKWARDEN_MAX_CONNECTIONS", default_value_t = crate::receiver::server::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// On SIGTERM: how long /readyz fails while deliveries are still served, before the
    /// receiver stops accepting (so endpoints drop the pod first). Keep it well under the
    /// pod's terminationGracePeriodSeconds, which must also cover the final status flush.
    #[arg(long, env = "HOOKWARDEN_SHUTDOWN_DELAY", default_value = "5s", value_parser = crate::domain::duration::parse_arg)]
    pub shutdown_delay: Duration,
    /// On SIGTERM, after the shutdown delay: how long the receiver keeps writing the
    /// status of what it journaled, retrying failed writes, before it exits (what is
    /// still unwritten then stays in the journal: replayed by the next receiver on the
    /// same volume, lost with an emptyDir). The chart sets it from
    /// terminationGracePeriodSeconds.
    #[arg(long, env = "HOOKWARDEN_SHUTDOWN_FLUSH_TIMEOUT", default_value = "10s", value_parser = crate::domain::duration::parse_arg)]
    pub shutdown_flush_timeout: Duration,
    /// Forwards never connect to these CIDRs (comma-separated), besides loopback,
    /// link-local/cloud metadata and the API server's addresses, which are always refused.
    #[arg(long, env = "HOOKWARDEN_FORWARD_DENY_CIDRS", value_delimiter = ',')]
    pub forward_deny_cidrs: Vec<IpNet>,
    /// When set, forwards connect only to these CIDRs (comma-separated; the refusals
    /// above still apply).
    #[arg(long, env = "HOOKWARDEN_FORWARD_ALLOW_CIDRS", value_delimiter = ',')]
    pub forward_allow_cidrs: Vec<IpNet>,
    /// Intake first: while the receiver's workers are saturated with deliveries, new
    /// forwards stay in the journal and forward attempts wait, up to this long (then they
    /// go out at full speed, sharing the workers). 0 = forwards never wait for intake.
    #[arg(long, env = "HOOKWARDEN_FORWARD_MAX_LAG", default_value = "10s", value_parser = crate::domain::duration::parse_arg)]
    pub forward_max_lag: Duration,
    /// Let forwards connect to loopback addresses. Only for tests and single-node dev
    /// clusters: in a pod, loopback is the receiver's own ports and its sidecars'.
    /// Link-local and cloud metadata stay refused, and so does the API server's port.
    #[arg(long, env = "HOOKWARDEN_FORWARD_ALLOW_LOOPBACK", value_parser = clap::builder::BoolishValueParser::new())]
    pub forward_allow_loopback: bool,
    /// Longest wait for an OIDC issuer's JWKS or an SNS signing certificate (the
    /// delivery waiting for it gets 401 jwks_unavailable / certificate_unavailable after).
    #[arg(long, env = "HOOKWARDEN_KEY_FETCH_TIMEOUT", default_value = "5s", value_parser = crate::domain::duration::parse_arg)]
    pub key_fetch_timeout: Duration,
    /// Tests only: JWKS, SNS certificate and SubscribeURL fetches may use http and any
    /// host (normally https only, from the issuer's host / sns.<region>.amazonaws.com).
    #[arg(long, env = "HOOKWARDEN_INSECURE_KEY_URLS", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_key_urls: bool,
    /// Log format.
    #[arg(long, env = "HOOKWARDEN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// `--status-writes-per-second`: a finite number ≥ 0.
pub fn parse_writes_per_second(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number (status writes per second, e.g. 50)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!(
            "{text} is not a rate: give writes per second ≥ 0 (0 turns the global budget off)"
        ));
    }
    Ok(value)
}

/// This replica's name on the status (`status.replicas[].name`): the pod name, else the
/// host name (which is the pod name in a pod), else a fixed name.
pub fn replica_name(pod_name: Option<&str>) -> String {
    pod_name
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| "receiver".to_string())
}

/// The egress policy of a cluster receiver: the flags' CIDRs plus the API server's
/// addresses (the in-cluster Service address and the kubeconfig's, when they are IPs).
pub fn cluster_egress(args: &ReceiverArgs, api_server: Option<&http::Uri>) -> EgressPolicy {
    let service = std::env::var("KUBERNETES_SERVICE_HOST").ok().map(|host| {
        let port = std::env::var("KUBERNETES_SERVICE_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(443);
        (host, port)
    });
    let configured = api_server.and_then(|u| {
        let default_port = if u.scheme_str() == Some("http") {
            80
        } else {
            443
        };
        Some((u.host()?.to_string(), u.port_u16().unwrap_or(default_port)))
    });
    let api_servers: Vec<(String, u16)> = service.into_iter().chain(configured).collect();
    egress_policy(args, &api_servers)
}

/// [`cluster_egress`] with the API server's (host, port)s given.
fn egress_policy(args: &ReceiverArgs, api_servers: &[(String, u16)]) -> EgressPolicy {
    let mut deny = args.forward_deny_cidrs.clone();
    let mut sockets = Vec::new();
    for (host, port) in api_servers {
        let Ok(ip) = host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() else {
            continue;
        };
        sockets.push(SocketAddr::new(ip, *port));
        // With loopback allowed (the receiver runs next to a local API server: tests,
        // single-node dev clusters), the whole address would refuse every local target;
        // its port alone is refused (`EgressPolicy::api_servers`).
        let loopback = match ip {
            std::net::IpAddr::V4(v4) => v4.is_loopback(),
            std::net::IpAddr::V6(v6) => {
                v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
        };
        if !(loopback && args.forward_allow_loopback) {
            deny.push(IpNet::from(ip));
        }
    }
    let allow = (!args.forward_allow_cidrs.is_empty()).then(|| args.forward_allow_cidrs.clone());
    EgressPolicy {
        allow_loopback: args.forward_allow_loopback,
        api_servers: sockets,
        ..EgressPolicy::cluster(deny, allow)
    }
}

pub async fn run(args: ReceiverArgs) -> anyhow::Result<ExitCode> {
    crate::telemetry::init_logging(args.log_format);
    let kube_config = kube::Config::infer()
        .await
        .context("cannot find a Kubernetes API configuration")?;
    let api_server = kube_config.cluster_url.clone();
    let client = kube::Client::try_from(kube_config).context("cannot reach the Kubernetes API")?;
    let mut registry = Registry::default();
    let writer = Arc::new(KubeStatusWriter::new(client.clone(), args.pod_name.clone()));
    let options = ReceiverOptions {
        journal_dir: args.journal_dir.clone(),
        journal_max_bytes: args.journal_max_bytes,
        journal_commit_window: args.journal_commit_window,
        dedup_max_ids: args.dedup_max_ids,
        trusted_proxies: args.trusted_proxies.clone(),
        external_base_url: args.external_base_url.clone(),
        runtime: crate::receiver::runtime::RuntimeConfig {
            status_interval: args.status_interval,
            degraded_after: args.degraded_after,
            status_writes_per_second: args.status_writes_per_second,
            replica: replica_name(args.pod_name.as_deref()),
            flush_timeout: args.shutdown_flush_timeout,
            ..Default::default()
        },
        forward_egress: cluster_egress(&args, Some(&api_server)),
        remote_keys: crate::receiver::keys::RemoteKeyOptions {
            timeout: args.key_fetch_timeout,
            insecure_urls: args.insecure_key_urls,
            ..Default::default()
        },
        max_body_bytes_in_flight: args.max_body_bytes_in_flight,
        max_connections: args.max_connections,
        drain_delay: args.shutdown_delay,
        forward_max_lag: args.forward_max_lag,
    };
    let receiver = Receiver::start(options, writer, Some(&mut registry)).await?;
    if let Some(lost) = receiver.lost_at_open() {
        report_journal_loss(
            &client,
            &args.namespace,
            args.pod_name.as_deref(),
            &crate::receiver::service::loss_message(lost),
        )
        .await;
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;

    let shutdown = CancellationToken::new();
    let metrics_task = crate::receiver::metrics::spawn_metrics_server(
        metrics_listener,
        registry,
        shutdown.clone(),
    );
    let watch_stop = shutdown.clone();
    // Weak: the watch must not keep the pipeline (and so the journal) alive at shutdown,
    // or the journal could not be closed cleanly.
    let state = Arc::downgrade(receiver.state());
    let watch_task = tokio::spawn(watch_routes(
        Api::namespaced(client, &args.namespace),
        receiver.handle(),
        move || {
            if let Some(state) = state.upgrade() {
                state.set_ready(true);
            }
        },
        watch_stop,
    ));
    let signal = shutdown.clone();
    let stop_signal = crate::signal::shutdown_signal();
    tokio::spawn(async move {
        stop_signal.await;
        tracing::info!("shutting down: no new deliveries, draining the queue, flushing status");
        signal.cancel();
    });
    tracing::info!(listen = %args.listen, namespace = %args.namespace, "receiver starting");
    let served = receiver.serve(listener, shutdown.clone()).await;
    shutdown.cancel();
    let _ = watch_task.await;
    let _ = metrics_task.await;
    served.context("receiver server failed")?;
    Ok(ExitCode::SUCCESS)
}

/// A Warning Event `JournalDataLost` on this receiver's Pod: the object whose volume
/// held the damaged batch (`kubectl describe pod`, `kubectl get events -n <namespace>`).
/// Best effort: the log line and the metric already carry it.
async fn report_journal_loss(
    client: &kube::Client,
    namespace: &str,
    pod_name: Option<&str>,
    message: &str,
) {
    use kube::runtime::events::{Event as KubeEvent, EventType, Reporter};
    let Some(pod) = pod_name else {
        tracing::warn!("POD_NAME is not set: the journal loss is reported in this log only");
        return;
    };
    let reporter = Reporter {
        controller: crate::receiver::status::FIELD_MANAGER.to_string(),
        instance: Some(pod.to_string()),
    };
    let recorder = crate::events::EventRecorder::new(client.clone(), reporter);
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(pod.to_string()),
        namespace: Some(namespace.to_string()),
        ..Default::default()
    };
    let note: String = message.chars().take(1000).collect();
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: "JournalDataLost".into(),
        note: Some(note),
        action: "OpenJournal".into(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &reference).await {
        tracing::warn!(%error, "cannot publish the JournalDataLost Event");
    }
}

fn decode(secret: &Secret) -> Option<Route> {
    match Route::from_secret(secret) {
        Ok(route) => Some(route),
        Err(e) => {
            tracing::warn!(secret = secret.metadata.name.as_deref().unwrap_or(""), error = %e, "ignoring unreadable route Secret");
            None
        }
    }
}

/// Keeps the route table equal to the route Secrets in `api`'s namespace. `on_synced`
/// runs once the first full list is served (that is when `/readyz` turns ready).
pub async fn watch_routes(
    api: Api<Secret>,
    handle: ReceiverHandle,
    on_synced: impl Fn() + Send + 'static,
    stop: CancellationToken,
) {
    let config = watcher::Config::default().labels(&format!("{ROUTE_LABEL}=true"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    // Boxed: a `Vec<Route>` of 10,000 routes grows by doubling to 16 MiB of ~1 KiB slots
    // (and copies itself on the way), the largest allocation of a receiver's start-up.
    let mut initial: Vec<Box<Route>> = Vec::new();
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            e = events.next() => match e {
                Some(e) => e,
                None => return,
            },
        };
        match event {
            Ok(Event::Init) => initial.clear(),
            Ok(Event::InitApply(secret)) => initial.extend(decode(&secret).map(Box::new)),
            Ok(Event::InitDone) => {
                let routes = std::mem::take(&mut initial);
                let count = routes.len();
                for error in handle.replace_all(routes.into_iter().map(|r| *r)) {
                    tracing::warn!(%error, "route not served");
                }
                tracing::info!(routes = count, "routes synced");
                on_synced();
            }
            Ok(Event::Apply(secret)) => match decode(&secret) {
                Some(route) => {
                    let key = route.key();
                    if let Err(error) = handle.upsert(route) {
                        tracing::warn!(integration = %key, %error, "route not served");
                    }
                }
                None => remove_by_annotation(&handle, &secret),
            },
            Ok(Event::Delete(secret)) => match decode(&secret) {
                Some(route) => {
                    handle.remove(&route.namespace, &route.name);
                }
                None => remove_by_annotation(&handle, &secret),
            },
            Err(e) => tracing::warn!(error = %e, "route watch interrupted; retrying"),
        }
    }
}

/// An unreadable route Secret must not keep serving its old version.
fn remove_by_annotation(handle: &ReceiverHandle, secret: &Secret) {
    if let Some((namespace, name)) = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INTEGRATION_ANNOTATION))
        .and_then(|k| k.split_once('/'))
    {
        handle.remove(namespace, name);
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ReceiverArgs,
    }

    fn args(flags: &[&str]) -> ReceiverArgs {
        let argv = ["receiver", "--namespace", "hookwarden"]
            .into_iter()
            .chain(flags.iter().copied());
        Cli::try_parse_from(argv).expect("flags parse").args
    }

    fn refused(policy: &EgressPolicy, socket: &str) -> Option<&'static str> {
        policy
            .check_socket(socket.parse().expect("socket"))
            .err()
            .map(|r| r.rule.as_str())
    }

    #[test]
    fn loopback_is_refused_unless_the_flag_allows_it_and_metadata_always_is() {
        let local_api = [("127.0.0.1".to_string(), 6443)];
        let default = egress_policy(&args(&[]), &local_api);
        assert_eq!(refused(&default, "127.0.0.1:8080"), Some("loopback"));
        assert_eq!(refused(&default, "[::1]:8080"), Some("loopback"));

        let open = egress_policy(&args(&["--forward-allow-loopback"]), &local_api);
        assert_eq!(refused(&open, "127.0.0.1:8080"), None);
        assert_eq!(refused(&open, "[::1]:8080"), None);
        assert_eq!(refused(&open, "127.0.0.1:6443"), Some("api_server"));
        assert_eq!(refused(&open, "169.254.169.254:80"), Some("cloud_metadata"));
        assert_eq!(refused(&open, "169.254.10.1:80"), Some("link_local"));
    }

    #[test]
    fn the_api_servers_address_is_refused_whole_when_it_is_not_loopback() {
        let api = [
            ("10.96.0.1".to_string(), 443),
            ("[2001:db8::1]".to_string(), 6443),
            ("kubernetes.default.svc".to_string(), 443),
        ];
        let policy = egress_policy(
            &args(&[
                "--forward-allow-loopback",
                "--forward-deny-cidrs=10.200.0.0/16",
            ]),
            &api,
        );
        assert_eq!(refused(&policy, "10.96.0.1:443"), Some("denied"));
        assert_eq!(refused(&policy, "10.96.0.1:8080"), Some("denied"));
        assert_eq!(refused(&policy, "[2001:db8::1]:80"), Some("denied"));
        assert_eq!(refused(&policy, "10.200.3.4:80"), Some("denied"));
        assert_eq!(refused(&policy, "10.1.2.3:80"), None);
    }

    #[test]
    fn the_flag_defaults_off() {
        assert!(!args(&[]).forward_allow_loopback);
        assert!(args(&["--forward-allow-loopback"]).forward_allow_loopback);
    }
}
