//! `hookwarden controller`: reconciles WebhookIntegrations into route Secrets, generated
//! Secrets and conditions. Several replicas may run; only the holder of the
//! `hookwarden-controller` Lease reconciles.

pub mod lease;
pub mod metrics;
pub mod reconcile;
pub mod settled;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt as _, reflector};
use kube::{Api, Client, Resource as _, ResourceExt as _};
use kube_lease_manager::LeaseManagerBuilder;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::crd::WebhookIntegration;
use crate::route::{INTEGRATION_ANNOTATION, ROUTE_LABEL};
use crate::telemetry::{LogFormat, init_logging};
use metrics::ControllerMetrics;
use reconcile::Context;

/// Name of the leader-election Lease in hookwarden's namespace.
pub const LEASE_NAME: &str = "hookwarden-controller";
/// Tries at checking a missing integration's route (1 s, 2 s, … backoff: ~14 min in all).
const MISSING_ATTEMPTS: u32 = 11;
/// Missing-integration route checks in flight at once (each is a GET or two and a DELETE).
const MISSING_CONCURRENCY: usize = 4;

/// Flags of `hookwarden controller`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// hookwarden's own namespace: route Secrets and the leader Lease live here.
    #[arg(long, env = "POD_NAMESPACE", default_value = "hookwarden")]
    pub namespace: String,
    /// Public base URL of the receivers (e.g. https://hooks.example.com); status.url is
    /// this plus the integration's path.
    #[arg(long, env = "HOOKWARDEN_EXTERNAL_BASE_URL")]
    pub external_base_url: Option<String>,
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, env = "HOOKWARDEN_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// Identity in the leader Lease (default: the pod name from POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Lease duration in seconds; a new leader takes over this long after the old one died.
    /// At least 3: the leader renews a third of it before expiry and stands down a ninth
    /// before, and shorter leases leave no room for a renewal's own latency.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub lease_duration_seconds: u64,
    /// How often every integration is checked again when nothing triggers it. A check
    /// that finds the integration and every Secret it reads unchanged since its last
    /// reconcile (by resourceVersion, from the watches) sends no request.
    #[arg(long, env = "HOOKWARDEN_RESYNC_SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub resync_seconds: u64,
    /// Reconciles running at once. Each holds a connection to the API server while it
    /// reads and writes, and kube's client keeps every connection it opened: unbounded, a
    /// burst of 10,000 new integrations opened ~3,000 TLS connections and ~120 MiB of their
    /// buffers stayed (docs/bench.md "Controller memory").
    #[arg(long, env = "HOOKWARDEN_MAX_CONCURRENT_RECONCILES", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,
    /// Reconcile without leader election (a single replica, or tests).
    #[arg(long)]
    pub no_leader_election: bool,
    /// Log format.
    #[arg(
        long,
        value_enum,
        env = "HOOKWARDEN_LOG_FORMAT",
        default_value = "json"
    )]
    pub log_format: LogFormat,
}

#[derive(Clone)]
struct Health {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
}

async fn metrics_handler(
    State(h): State<Health>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &h.registry) {
        Ok(()) => {
            let (content_type, body) = crate::telemetry::negotiate_metrics(&headers, body);
            (StatusCode::OK, [("content-type", content_type)], body).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    if h.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: API server not reached yet",
        )
    }
}

/// Router of the metrics/health port.
fn health_router(health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

fn default_identity() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("hookwarden-controller-{}", std::process::id()))
}

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    let client = Client::try_default().await?;
    let mut registry = Registry::default();
    let metrics = Arc::new(ControllerMetrics::register(&mut registry));
    let ready = Arc::new(AtomicBool::new(false));
    let health = Health {
        registry: Arc::new(registry),
        ready: ready.clone(),
    };
    let listener = tokio::net::TcpListener::bind(args.metrics_addr).await?;
    info!(addr = %args.metrics_addr, "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, health_router(health)).await {
            error!(error = %e, "metrics server stopped");
        }
    });

    // Readiness: the API server answers. A standby replica is ready too: it can take over.
    client.apiserver_version().await?;
    ready.store(true, Ordering::Relaxed);

    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_signal = crate::signal::shutdown_signal();
    tokio::spawn(async move {
        stop_signal.await;
        info!("shutdown signal received");
        let _ = stop_tx.send(true);
    });

    if args.no_leader_election {
        metrics.leader.set(1);
        run_controller(client, &args, metrics, stop_rx).await;
        return Ok(ExitCode::SUCCESS);
    }

    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let grace = args.lease_duration_seconds.div_ceil(3).max(1);
    let timing = lease::GuardTiming::new(args.lease_duration_seconds, grace);
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), &args.namespace);
    let mut stop = stop_rx.clone();
    // One lease manager per round: after the guard stood the controller down, the old
    // manager still believes it leads, so a fresh one rejoins the election.
    'manager: loop {
        let leases = loop {
            let built = LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
                .with_namespace(&args.namespace)
                .with_identity(&identity)
                .with_duration(args.lease_duration_seconds)
                .with_grace(grace)
                .with_field_manager("hookwarden-controller-lease")
                .build()
                .await;
            match built {
                Ok(leases) => break leases,
                Err(e) => {
                    warn!(error = %e, "cannot set up leader election yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                        _ = stop.changed() => return Ok(ExitCode::SUCCESS),
                    }
                }
            }
        };
        let (mut leader, lease_task) = leases.watch().await;
        info!(%identity, lease = LEASE_NAME, namespace = %args.namespace, "waiting for leadership");
        loop {
            // Wait to become leader (or to be told to stop).
            while !*leader.borrow_and_update() {
                tokio::select! {
                    changed = leader.changed() => if changed.is_err() { anyhow::bail!("leader election stopped") },
                    _ = stop.changed() => { drop(leader); let _ = lease_task.await; return Ok(ExitCode::SUCCESS) }
                }
            }
            // Lead while the library says so, the Lease itself confirms it, and no
            // shutdown was asked for; whichever ends first says why.
            let (lost_tx, lost_rx) = watch::channel(false);
            let (confirmed_tx, mut confirmed_rx) = watch::channel(false);
            let mut leader_watch = leader.clone();
            let mut stop_watch = stop_rx.clone();
            let guard = lease::guard(
                lease_api.clone(),
                LEASE_NAME,
                identity.clone(),
                timing,
                confirmed_tx,
            );
            let watch_leadership = async move {
                tokio::pin!(guard);
                let why = tokio::select! {
                    reason = &mut guard => Ended::Guard(reason),
                    _ = async {
                        while leader_watch.changed().await.is_ok() && *leader_watch.borrow() {}
                    } => Ended::Library,
                    _ = stop_watch.changed() => Ended::Stop,
                };
                let _ = lost_tx.send(true);
                why
            };
            let relay = tokio::spawn(watch_leadership);
            let mut lost = lost_rx.clone();
            let confirmed = tokio::select! {
                c = confirmed_rx.wait_for(|c| *c) => c.is_ok(),
                _ = lost.wait_for(|l| *l) => false,
            };
            if confirmed {
                info!(%identity, "became leader");
                metrics.leader.set(1);
                run_controller(client.clone(), &args, metrics.clone(), lost_rx).await;
                metrics.leader.set(0);
            }
            let why = relay.await.unwrap_or(Ended::Stop);
            if *stop_rx.borrow() || why == Ended::Stop {
                info!("releasing the leader lease");
                drop(leader);
                let _ = lease_task.await;
                return Ok(ExitCode::SUCCESS);
            }
            match why {
                Ended::Guard(reason) => {
                    error!(%identity, %reason, "cannot confirm the leader Lease: stood down before it could lapse; rejoining the election");
                    lease_task.abort();
                    continue 'manager;
                }
                _ => warn!(%identity, "lost leadership; standing by"),
            }
        }
    }
}

/// What ended a term as leader.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The lease guard: another holder, or no renewal seen in time.
    Guard(String),
    /// kube-lease-manager reported the lease lost.
    Library,
    /// Shutdown.
    Stop,
}

/// Runs `kube::runtime::Controller` until `stop` turns true.
pub async fn run_controller(
    client: Client,
    args: &ControllerArgs,
    metrics: Arc<ControllerMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let reporter = Reporter {
        controller: "hookwarden-controller".to_string(),
        instance: args
            .identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok()),
    };
    let recorder = crate::events::EventRecorder::new(client.clone(), reporter);
    let mut ctx = Context::new(
        client.clone(),
        args.namespace.clone(),
        args.external_base_url.clone(),
        recorder,
        metrics,
    );
    ctx.resync = std::time::Duration::from_secs(args.resync_seconds);
    let ctx = Arc::new(ctx);
    let integrations: Api<WebhookIntegration> = Api::all(client.clone());
    // The cache of integrations keeps neither managedFields nor kubectl's last-applied
    // annotation: nothing reads them, and at 10,000 integrations they were most of the
    // cache (~9 KiB an object with three field managers; docs/bench.md "Controller memory").
    let (store, writer) = reflector::store();
    let integration_events = watcher(integrations, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|wi| slim_metadata(&mut wi.metadata))
        .reflect(writer)
        .applied_objects();
    let controller = Controller::for_stream(integration_events, store).with_config(
        ControllerConfig::default()
            .debounce(std::time::Duration::from_millis(200))
            .concurrency(args.max_concurrent_reconciles),
    );
    // Every Secret's metadata (never its data: a cluster's Helm release Secrets alone can be
    // hundreds of MiB; the reconcile reads the data of the Secrets it needs by name), mapped
    // to the integrations that read it by the controller's own index, which also tells
    // settled reconciles apart (see `settled`): generated `<name>-webhook` and
    // `<name>-forward` Secrets, referenced Secrets (secretRef, and spec.forward's urlFrom,
    // signingSecretRef and headersFrom: rotation and late creation take effect at once),
    // and route Secrets.
    let secret_events = watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff();
    let index_ctx = ctx.clone();
    let route_namespace = args.namespace.clone();
    let triggers = secret_events.flat_map(move |event| {
        let refs = match event {
            Ok(event) => secret_triggers(&index_ctx, &route_namespace, event),
            Err(e) => {
                warn!(error = %e, "Secret watch failed; retrying");
                Vec::new()
            }
        };
        futures::stream::iter(refs)
    });
    let controller = controller.reconcile_on(triggers);
    // Checks of missing integrations run beside the result stream (which drives every
    // reconcile) and end with this leadership: dropping the set aborts them.
    let mut missing = MissingChecks::default();
    controller
        .graceful_shutdown_on(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|result| {
            match result {
                Ok((obj, _)) => tracing::debug!(integration = %obj.name, namespace = ?obj.namespace, "reconciled"),
                // A reconcile was due for an integration the cache no longer holds.
                Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                    if let Some(namespace) = obj.namespace.clone() {
                        check_missing(&mut missing, &ctx, namespace, obj.name.clone());
                    }
                }
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
            std::future::ready(())
        })
        .await;
}

/// Drops from a cached integration's metadata what no reconcile reads (see
/// `run_controller`).
pub(crate) fn slim_metadata(meta: &mut kube::api::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// kubectl's copy of the last applied manifest (client-side apply).
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The integrations to reconcile for one event of the Secret watch, after updating the
/// controller's Secret index with it.
fn secret_triggers(
    ctx: &Context,
    route_namespace: &str,
    event: watcher::Event<PartialObjectMeta<Secret>>,
) -> Vec<ObjectRef<WebhookIntegration>> {
    let mut index = ctx.secret_index();
    let (secret, deleted) = match event {
        watcher::Event::Init => {
            index.relist_started();
            return Vec::new();
        }
        watcher::Event::InitDone => {
            // What a relist did not show was deleted while the watch was away.
            let mut refs = Vec::new();
            for key in index.relist_done() {
                refs.extend(index.secret_changed(&key, None));
            }
            return refs;
        }
        watcher::Event::InitApply(s) | watcher::Event::Apply(s) => (s, false),
        watcher::Event::Delete(s) => (s, true),
    };
    let namespace = secret.namespace().unwrap_or_default();
    let version = if deleted {
        None
    } else {
        secret.resource_version()
    };
    let mut refs =
        index.secret_changed(&(namespace.clone(), secret.name_any()), version.as_deref());
    drop(index);
    // A generated Secret's owner (what `Controller::owns` would map), also when the
    // integration has not registered it yet.
    refs.extend(
        secret
            .owner_references()
            .iter()
            .filter(|o| {
                o.kind == WebhookIntegration::kind(&())
                    && o.api_version == WebhookIntegration::api_version(&())
            })
            .map(|o| ObjectRef::new(&o.name).within(&namespace)),
    );
    // A route Secret changed or vanished: put it back if someone else touched it.
    if namespace == route_namespace
        && secret.labels().get(ROUTE_LABEL).map(String::as_str) == Some("true")
        && let Some((ns, n)) = secret
            .annotations()
            .get(INTEGRATION_ANNOTATION)
            .and_then(|k| k.split_once('/'))
    {
        refs.push(ObjectRef::new(n).within(ns));
    }
    refs
}

/// The route checks of integrations missing from the cache (see
/// [`reconcile::forget_missing`]): a few at a time, aborted when dropped.
struct MissingChecks {
    tasks: tokio::task::JoinSet<()>,
    limit: Arc<tokio::sync::Semaphore>,
}

impl Default for MissingChecks {
    fn default() -> MissingChecks {
        MissingChecks {
            tasks: tokio::task::JoinSet::new(),
            limit: Arc::new(tokio::sync::Semaphore::new(MISSING_CONCURRENCY)),
        }
    }
}

/// Checks whether missing integration `namespace/name` left its route behind, retrying API
/// errors with the reconcile backoff.
fn check_missing(checks: &mut MissingChecks, ctx: &Arc<Context>, namespace: String, name: String) {
    while checks.tasks.try_join_next().is_some() {}
    let ctx = ctx.clone();
    let limit = checks.limit.clone();
    checks.tasks.spawn(async move {
        let mut attempt = 0;
        loop {
            // A permit per attempt, not across the backoff: a check that keeps failing
            // must not hold one of the few slots while it sleeps (four failing checks
            // stalled every other one for their whole backoff).
            let result = {
                let Ok(_permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                reconcile::forget_missing(&ctx, &namespace, &name).await
            };
            let Err(e) = result else {
                return;
            };
            attempt += 1;
            if attempt == MISSING_ATTEMPTS {
                tracing::error!(integration = %name, %namespace, error = %e, "gave up checking whether a deleted integration left its route behind; a controller restart checks again");
                return;
            }
            let delay = reconcile::backoff(attempt);
            tracing::warn!(integration = %name, %namespace, error = %e, attempt, retry_in = ?delay, "cannot check whether a deleted integration left its route behind");
            tokio::time::sleep(delay).await;
        }
    });
}
