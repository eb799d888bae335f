//! `hookwarden standalone` and `hookwarden get`: the product without a cluster.
//!
//! Standalone mode is the controller and the receiver in one process over a folder of
//! YAML: [`sync`] plans every integration with the controller's pure plan, the receiver
//! pipeline serves the routes with the same durable journal, and status lands in files
//! under `--state` that `hookwarden get` prints like `kubectl get whi`.

pub mod folder;
pub mod get;
pub mod state;
pub mod sync;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use self::get::OutputFormat;
use self::state::StateDir;
use self::sync::{Row, Synced};
use crate::receiver::runtime::RuntimeConfig;
use crate::receiver::service::{Receiver, ReceiverHandle, ReceiverOptions};
use crate::telemetry::LogFormat;

/// Name of the default state folder inside `--dir`.
pub const DEFAULT_STATE_DIR: &str = ".hookwarden-state";
/// How often the folder is checked for edits.
const RELOAD_EVERY: Duration = Duration::from_millis(500);

/// Flags of `hookwarden standalone`.
#[derive(Debug, clap::Args)]
pub struct StandaloneArgs {
    /// Folder of WebhookIntegration and Secret YAML (every *.yaml / *.yml file).
    #[arg(long)]
    pub dir: PathBuf,
    /// Address to serve /hooks/… on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Also serve Prometheus /metrics (deliveries, journal size, fsync latency, pending
    /// and replayed entries: the cluster receiver's series) on this address. Off unless
    /// given; port 0 picks a free port. Kept off the --listen address, which may be
    /// exposed to senders through a tunnel.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Where paths, generated secrets, the journal and status are kept
    /// (default DIR/.hookwarden-state).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Base URL senders use, when not http://LISTEN (e.g. behind a tunnel).
    #[arg(long)]
    pub external_base_url: Option<String>,
    /// At most one status write per integration per this interval.
    #[arg(long, default_value = "2s", value_parser = crate::domain::duration::parse_arg)]
    pub status_interval: Duration,
    /// Status writes per second at most, across integrations (least recently written
    /// first; nothing lost, only later). 0: no global budget.
    #[arg(long, default_value_t = crate::receiver::runtime::DEFAULT_STATUS_WRITES_PER_SECOND, value_parser = crate::receiver::cluster::parse_writes_per_second)]
    pub status_writes_per_second: f64,
    /// Request-body bytes held at once across integrations (one integration: at most a
    /// quarter); over it 503 + Retry-After before any byte is read.
    #[arg(long, default_value_t = crate::receiver::limits::DEFAULT_BODY_BUDGET)]
    pub max_body_bytes_in_flight: u64,
    /// Connections served at once; one more gets 503 + Retry-After, nothing read.
    #[arg(long, default_value_t = crate::receiver::server::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Forwards never connect to these CIDRs (comma-separated). Loopback is allowed in
    /// standalone (a laptop forwards to localhost); link-local/metadata never is.
    #[arg(long, value_delimiter = ',')]
    pub forward_deny_cidrs: Vec<ipnet::IpNet>,
    /// When set, forwards connect only to these CIDRs (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub forward_allow_cidrs: Vec<ipnet::IpNet>,
    /// Intake first: while the receiver's workers are saturated with deliveries, new
    /// forwards stay in the journal and forward attempts wait, up to this long. 0 = they
    /// never wait.
    #[arg(long, default_value = "10s", value_parser = crate::domain::duration::parse_arg)]
    pub forward_max_lag: Duration,
    /// Consecutive authentication failures that set Degraded.
    #[arg(long, default_value_t = 20)]
    pub degraded_after: u64,
    /// Cap on the delivery journal's size on disk; beyond it deliveries get 503 +
    /// Retry-After until status catches up and the journal compacts.
    #[arg(long, default_value_t = crate::receiver::service::DEFAULT_JOURNAL_MAX_BYTES)]
    pub journal_max_bytes: u64,
    /// How long a journal commit may wait for deliveries still on their way, so more of
    /// them share one fsync (0: commit as soon as the previous fsync is done).
    #[arg(long, default_value = "400us", value_parser = crate::receiver::service::parse_commit_window)]
    pub journal_commit_window: Duration,
    /// Delivery ids remembered for deduplication, across all integrations (about 130
    /// bytes of memory each). When full, the oldest are forgotten before their dedup
    /// window ends (counted in hookwarden_receiver_dedup_evicted_early_total) and a late
    /// copy of such a delivery is accepted again. The default covers 24 h at an average of
    /// 2.3 accepted deliveries per second.
    #[arg(long, default_value_t = crate::receiver::service::DEDUP_CAPACITY, value_parser = clap::value_parser!(u64).range(1_000..=100_000_000))]
    pub dedup_max_ids: u64,
    /// Longest wait for an OIDC issuer's JWKS or an SNS signing certificate.
    #[arg(long, default_value = "5s", value_parser = crate::domain::duration::parse_arg)]
    pub key_fetch_timeout: Duration,
    /// Tests only: JWKS, SNS certificate and SubscribeURL fetches may use http and any
    /// host (normally https only, from the issuer's host / sns.<region>.amazonaws.com).
    #[arg(long)]
    pub insecure_key_urls: bool,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Flags of `hookwarden get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// Show only this integration (prints the object itself with -o json|yaml).
    pub name: Option<String>,
    /// State folder of a standalone run.
    #[arg(long, conflicts_with = "dir")]
    pub state: Option<PathBuf>,
    /// Folder a standalone run serves (its state is DIR/.hookwarden-state). Default: the
    /// current folder's .hookwarden-state, else examples/.hookwarden-state.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Output format: wide, yaml or json (default: the table).
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<OutputFormat>,
    /// Namespace to list (default "default").
    #[arg(short = 'n', long = "namespace", conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// List integrations in every namespace.
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
}

fn display_base_url(addr: SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}", addr.port())
}

/// Prints the table of `rows`, one line at a time (no copy of the cells: with 10,000
/// integrations they were megabytes at the start-up peak).
fn print_table(rows: &[Row]) {
    use std::io::Write as _;
    let header = ["NAMESPACE/NAME", "PROVIDER", "URL", "SECRET"];
    let widths = rows.iter().fold(
        [header[0].len(), header[1].len(), header[2].len()],
        |[w0, w1, w2], r| {
            [
                w0.max(r.namespace.len() + 1 + r.name.len()),
                w1.max(r.provider.as_str().len()),
                w2.max(r.url.len()),
            ]
        },
    );
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut line =
        |key: &dyn std::fmt::Display, provider: &str, url: &str, secret: &dyn std::fmt::Display| {
            // Width applies to the whole `namespace/name`, so it is formatted first.
            let key = key.to_string();
            writeln!(
                out,
                "{key:<w0$}  {provider:<w1$}  {url:<w2$}  {secret}",
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            )
        };
    let mut printed = line(&header[0], header[1], header[2], &header[3]);
    for r in rows {
        if printed.is_err() {
            break;
        }
        let key = format_args!("{}/{}", r.namespace, r.name);
        printed = match &r.problem {
            Some(p) => line(
                &key,
                r.provider.as_str(),
                &r.url,
                &format_args!("{} (NOT READY: {p})", r.secret_hint),
            ),
            None => line(&key, r.provider.as_str(), &r.url, &r.secret_hint),
        };
    }
    // As println!, but a closed stdout must not stop the server.
    let _ = printed.and_then(|()| out.flush());
}

fn report(synced: &Synced) {
    for problem in &synced.problems {
        tracing::warn!(%problem, "skipped a document");
    }
}

pub async fn run(args: StandaloneArgs) -> anyhow::Result<ExitCode> {
    crate::telemetry::init_logging(args.log_format);
    let dir = args.dir.clone();
    anyhow::ensure!(dir.is_dir(), "--dir {} is not a folder", dir.display());
    let state_root = args
        .state
        .clone()
        .unwrap_or_else(|| dir.join(DEFAULT_STATE_DIR));
    let state = StateDir::create(&state_root)?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let base_url = args
        .external_base_url
        .clone()
        .unwrap_or_else(|| display_base_url(local));

    let config = RuntimeConfig {
        status_interval: args.status_interval,
        degraded_after: args.degraded_after,
        status_writes_per_second: args.status_writes_per_second,
        ..RuntimeConfig::default()
    };
    let options = ReceiverOptions {
        journal_dir: state.journal_dir(),
        journal_max_bytes: args.journal_max_bytes,
        journal_commit_window: args.journal_commit_window,
        dedup_max_ids: args.dedup_max_ids,
        trusted_proxies: Vec::new(),
        external_base_url: args.external_base_url.clone(),
        runtime: config,
        max_body_bytes_in_flight: args.max_body_bytes_in_flight,
        max_connections: args.max_connections,
        drain_delay: Duration::ZERO,
        forward_max_lag: args.forward_max_lag,
        forward_egress: crate::forwarder::EgressPolicy::standalone(
            args.forward_deny_cidrs.clone(),
            (!args.forward_allow_cidrs.is_empty()).then(|| args.forward_allow_cidrs.clone()),
        ),
        remote_keys: crate::receiver::keys::RemoteKeyOptions {
            timeout: args.key_fetch_timeout,
            insecure_urls: args.insecure_key_urls,
            ..Default::default()
        },
    };
    // With --metrics-addr: its listener and the registry the receiver fills.
    let mut metrics = match args.metrics_addr {
        Some(addr) => Some((
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?,
            Registry::default(),
        )),
        None => None,
    };
    // The journal's lock comes first: a second standalone on the same state stops here,
    // before it touches assignments or status.
    let receiver = Receiver::start(
        options,
        Arc::new(state.status_writer()),
        metrics.as_mut().map(|(_, registry)| registry),
    )
    .await?;
    if let Some(lost) = receiver.lost_at_open() {
        let message = crate::receiver::service::loss_message(lost);
        eprintln!("warning: {message}");
        if let Err(error) = state.record_journal_loss(jiff::Timestamp::now(), &message) {
            tracing::warn!(%error, "cannot note the journal loss for `hookwarden get`");
        }
    }
    // Before the table is printed: whoever reads it may stop us right away.
    let stop_signal = crate::signal::shutdown_signal();
    let synced = sync::sync(&dir, &state, &base_url, jiff::Timestamp::now())?;
    report(&synced);
    // Moved, not copied: the receiver keeps the compiled routes, and the table's rows are
    // dropped once printed (10,000 integrations' worth of both otherwise stay for the
    // life of the process).
    let Synced { routes, rows, .. } = synced;
    for error in receiver.handle().replace_all(routes) {
        tracing::warn!(%error, "route not served");
    }
    receiver.state().set_ready(true);

    println!(
        "hookwarden standalone: serving {} on {base_url} (state in {})",
        dir.display(),
        state_root.display()
    );
    print_table(&rows);
    drop(rows);
    let shutdown = CancellationToken::new();
    let metrics_task = match metrics {
        Some((listener, registry)) => {
            println!("Metrics: http://{}/metrics", listener.local_addr()?);
            Some(crate::receiver::metrics::spawn_metrics_server(
                listener,
                registry,
                shutdown.clone(),
            ))
        }
        None => None,
    };
    println!("Status: hookwarden get --state {}", state_root.display());

    let reload = tokio::spawn(reload_loop(
        dir.clone(),
        state.clone(),
        base_url.clone(),
        receiver.handle(),
        shutdown.clone(),
    ));
    let signal = shutdown.clone();
    tokio::spawn(async move {
        stop_signal.await;
        signal.cancel();
    });
    receiver.serve(listener, shutdown.clone()).await?;
    shutdown.cancel();
    let _ = reload.await;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    Ok(ExitCode::SUCCESS)
}

async fn reload_loop(
    dir: PathBuf,
    state: StateDir,
    base_url: String,
    receiver: ReceiverHandle,
    shutdown: CancellationToken,
) {
    let mut seen = (folder::fingerprint(&dir), state.replay_fingerprint());
    let mut tick = tokio::time::interval(RELOAD_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = (folder::fingerprint(&dir), state.replay_fingerprint());
        if now == seen {
            continue;
        }
        seen = now;
        let (d, s, b) = (dir.clone(), state.clone(), base_url.clone());
        match tokio::task::spawn_blocking(move || sync::sync(&d, &s, &b, jiff::Timestamp::now()))
            .await
        {
            Ok(Ok(synced)) => {
                report(&synced);
                let Synced { routes, rows, .. } = synced;
                for error in receiver.replace_all(routes) {
                    tracing::warn!(%error, "route not served");
                }
                tracing::info!(integrations = rows.len(), "reloaded {}", dir.display());
                print_table(&rows);
            }
            Ok(Err(e)) => tracing::error!(error = %e, "cannot reload {}", dir.display()),
            Err(e) => tracing::error!(error = %e, "reload task failed"),
        }
    }
}

fn state_for_get(args: &GetArgs) -> PathBuf {
    if let Some(s) = &args.state {
        return s.clone();
    }
    if let Some(d) = &args.dir {
        return d.join(DEFAULT_STATE_DIR);
    }
    let here = Path::new(DEFAULT_STATE_DIR);
    if here.is_dir() {
        return here.to_path_buf();
    }
    Path::new("examples").join(DEFAULT_STATE_DIR)
}

pub async fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let root = state_for_get(&args);
    if !root.is_dir() {
        eprintln!(
            "error: no standalone state at {} (start `hookwarden standalone --dir DIR` first, or pass --state/--dir)",
            root.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let state = StateDir::existing(&root);
    let losses = state.journal_losses();
    for loss in &losses {
        eprintln!("warning: {loss}");
    }
    if !losses.is_empty() {
        eprintln!(
            "(noted in {}; delete it once handled)",
            state.journal_loss_path().display()
        );
    }
    let mut objects = state.read_objects()?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| folder::DEFAULT_NAMESPACE.to_string());
    if !args.all_namespaces {
        objects.retain(|o| o.metadata.namespace.as_deref() == Some(namespace.as_str()));
    }
    if let Some(name) = &args.name {
        objects.retain(|o| o.metadata.name.as_deref() == Some(name.as_str()));
        if objects.is_empty() {
            eprintln!(
                "Error from server (NotFound): webhookintegrations.hookwarden.dev \"{name}\" not found"
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    let single = args.name.is_some();
    match args.output {
        Some(OutputFormat::Json) => println!(
            "{}",
            serde_json::to_string_pretty(&get::as_json_value(&objects, single))?
        ),
        Some(OutputFormat::Yaml) => print!(
            "{}",
            serde_yaml::to_string(&get::as_json_value(&objects, single))?
        ),
        wide => {
            if objects.is_empty() {
                if args.all_namespaces {
                    eprintln!("No resources found");
                } else {
                    eprintln!("No resources found in {namespace} namespace.");
                }
            } else {
                print!(
                    "{}",
                    get::table(
                        &objects,
                        wide == Some(OutputFormat::Wide),
                        args.all_namespaces,
                        jiff::Timestamp::now()
                    )
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `hookwarden replay`: re-queue an integration's dead-lettered forwards.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The integration.
    pub name: String,
    /// Its namespace (default "default" in standalone; the kubeconfig's in a cluster).
    #[arg(short = 'n', long = "namespace")]
    pub namespace: Option<String>,
    /// Only this forward target's dead letters.
    #[arg(long)]
    pub target: Option<String>,
    /// State folder of a standalone run (acts there instead of on a cluster).
    #[arg(long, conflicts_with = "dir")]
    pub state: Option<PathBuf>,
    /// Folder a standalone run serves (its state is DIR/.hookwarden-state).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// A new replay value: the time, to the millisecond (each request differs).
fn replay_value() -> String {
    jiff::Timestamp::now().to_string()
}

pub async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let request = crate::route::ReplayRequest {
        value: replay_value(),
        target: args.target.clone(),
    };
    let root = match (&args.state, &args.dir) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(d)) => Some(d.join(DEFAULT_STATE_DIR)),
        (None, None) => None,
    };
    if let Some(root) = root {
        let namespace = args.namespace.clone().unwrap_or_else(|| "default".into());
        let state = StateDir::existing(&root);
        if !state.has_object(&namespace, &args.name) {
            eprintln!(
                "error: no integration {namespace}/{} in the standalone state at {}",
                args.name,
                root.display()
            );
            return Ok(ExitCode::from(1));
        }
        state.write_replay_request(&namespace, &args.name, &request)?;
        println!(
            "replay requested for {namespace}/{}{}: a running standalone re-queues its dead letters within 2 s, a stopped one at its next start",
            args.name,
            args.target
                .as_deref()
                .map(|t| format!(" (target {t})"))
                .unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    crate::tools::replay_in_cluster(&args.name, args.namespace.as_deref(), &request).await
}
