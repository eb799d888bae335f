//! A running receiver, assembled the same way in the cluster and in standalone mode:
//! open the journal, replay it (re-fold the ledger, re-seed dedup), build the
//! [`JournaledSink`] and the [`StatusLoop`], serve the HTTP pipeline, and on shutdown
//! stop accepting → drain the queue → flush status → checkpoint → close the journal.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ipnet::IpNet;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::domain::spec::EffectiveSpec;
use crate::forwarder::{EgressPolicy, Sender, SenderOptions};
use crate::journal::{Journal, JournalConfig, JournalError};
use crate::receiver::dedup::Dedup;
use crate::receiver::forward::{
    self, ForwardConfig, ForwardConfigs, ForwardMetrics, Forwarder, ForwarderOptions, TargetConfig,
};
use crate::receiver::http::{PipelineConfig, ReceiverState, app};
use crate::receiver::metrics::ReceiverMetrics;
use crate::receiver::routes::CompiledRoute;
use crate::receiver::routes::{RouteError, RouteTable};
use crate::receiver::runtime::Forwarding;
use crate::receiver::runtime::{
    self, IntegrationSettings, JournaledSink, RuntimeConfig, SettingsLookup, StatusLoop,
};
use crate::receiver::server::ServerOptions;
use crate::receiver::status::StatusWriter;
use crate::route::Route;

/// Delivery ids remembered at most by default (`--dedup-max-ids`; DESIGN.md: 100,000
/// within 64 MiB).
pub const DEDUP_CAPACITY: u64 = crate::receiver::ledger::MAX_REMEMBERED_IDS as u64;

/// Default cap on the journal's size on disk (1 GiB).
pub const DEFAULT_JOURNAL_MAX_BYTES: u64 = 1 << 30;

/// Default group commit window: how long a journal commit may wait for the deliveries
/// that are still on their way when it is smaller than the one before (see
/// [`JournalConfig::group_commit_window`]). Measured on a virtio disk (docs/bench.md): a
/// third of the fsyncs, +18% deliveries/s and a lower p99 at the same offered load.
pub const DEFAULT_JOURNAL_COMMIT_WINDOW: Duration = Duration::from_micros(400);

/// Longest accepted commit window: every acknowledgement may wait this long.
pub const MAX_JOURNAL_COMMIT_WINDOW: Duration = Duration::from_millis(100);

/// Parses `--journal-commit-window` (`400us`, `0.5ms`, `0` for none), at most
/// [`MAX_JOURNAL_COMMIT_WINDOW`].
pub fn parse_commit_window(s: &str) -> Result<Duration, String> {
    let window = crate::domain::duration::parse(s).map_err(|e| e.to_string())?;
    if window > MAX_JOURNAL_COMMIT_WINDOW {
        return Err(format!(
            "{s} is longer than {}ms: every acknowledgement could wait that long; 0 to 2ms suits local disks",
            MAX_JOURNAL_COMMIT_WINDOW.as_millis()
        ));
    }
    Ok(window)
}

/// How to start a receiver.
#[derive(Clone, Debug)]
pub struct ReceiverOptions {
    pub journal_dir: PathBuf,
    /// Cap on the journal's size on disk; beyond it deliveries get 503 until compaction.
    pub journal_max_bytes: u64,
    /// How long a journal commit may wait for company (group commit window).
    pub journal_commit_window: Duration,
    /// Delivery ids remembered for deduplication, across all integrations
    /// (`--dedup-max-ids`).
    pub dedup_max_ids: u64,
    pub trusted_proxies: Vec<IpNet>,
    pub external_base_url: Option<String>,
    pub runtime: RuntimeConfig,
    /// Request-body bytes held at once across integrations (one integration: a quarter).
    pub max_body_bytes_in_flight: u64,
    /// Connections served at once; over it 503 + Retry-After, nothing read.
    pub max_connections: usize,
    /// On shutdown, how long readiness is off while requests are still served (so the
    /// load balancer stops sending here first). Zero in standalone.
    pub drain_delay: Duration,
    /// Where forwards may connect (cluster: no loopback, link-local, metadata or denied
    /// CIDRs; standalone: loopback allowed).
    pub forward_egress: EgressPolicy,
    /// While the workers are saturated with deliveries, forwards wait up to this long
    /// past their due time (`--forward-max-lag`; zero: they never wait).
    pub forward_max_lag: Duration,
}

/// Why a receiver could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the delivery journal in {dir}: {source}")]
    Journal { dir: PathBuf, source: JournalError },
    #[error("cannot start forwarding: {0}")]
    Forwarder(String),
}

/// Route changes go through here so the runtime's per-integration settings (dedup window,
/// incidents kept on status) follow the served routes.
#[derive(Clone)]
pub struct ReceiverHandle {
    routes: Arc<RouteTable>,
    settings: Arc<RwLock<HashMap<String, IntegrationSettings>>>,
    forward: ForwardConfigs,
}

/// The forward targets of a served route: its resolved spec and the route's material.
fn forward_config_of(route: &CompiledRoute) -> Option<ForwardConfig> {
    if route.spec.forward.is_empty() {
        return None;
    }
    Some(ForwardConfig {
        namespace: route.route.namespace.clone(),
        name: route.route.name.clone(),
        uid: route.route.uid.clone(),
        provider: route.spec.provider,
        targets: route
            .spec
            .forward
            .iter()
            .map(|t| TargetConfig {
                spec: t.clone(),
                material: route
                    .route
                    .forward
                    .iter()
                    .find(|m| m.name == t.name)
                    .cloned(),
            })
            .collect(),
        replay: route.route.replay.clone(),
    })
}

fn settings_of(spec: &EffectiveSpec) -> IntegrationSettings {
    IntegrationSettings {
        keep_recent: spec.keep_recent,
        dedup_window_ms: i64::try_from(spec.dedup_window.as_millis()).unwrap_or(i64::MAX),
    }
}

impl Default for ReceiverHandle {
    fn default() -> Self {
        ReceiverHandle::new()
    }
}

impl ReceiverHandle {
    /// An empty route table.
    pub fn new() -> ReceiverHandle {
        ReceiverHandle {
            routes: Arc::new(RouteTable::new()),
            settings: Arc::default(),
            forward: ForwardConfigs::default(),
        }
    }

    pub fn routes(&self) -> &Arc<RouteTable> {
        &self.routes
    }

    /// Serves exactly `routes`; returns the ones that could not be served.
    pub fn replace_all(&self, routes: Vec<Route>) -> Vec<RouteError> {
        let errors = self.routes.replace_all(routes);
        let served: Vec<Arc<CompiledRoute>> = self.routes.all().collect();
        let settings: HashMap<String, IntegrationSettings> = served
            .iter()
            .map(|r| (r.key.clone(), settings_of(&r.spec)))
            .collect();
        let unserved: std::collections::HashSet<String> =
            errors.iter().map(|e| e.integration.clone()).collect();
        self.forward.replace_all(
            served
                .iter()
                .filter_map(|r| Some((r.key.clone(), Arc::new(forward_config_of(r)?))))
                .collect(),
            &unserved,
        );
        *self
            .settings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = settings;
        errors
    }

    /// Adds or replaces one route.
    pub fn upsert(&self, route: Route) -> Result<(), RouteError> {
        let (namespace, name) = (route.namespace.clone(), route.name.clone());
        let outcome = self.routes.upsert(route);
        let mut settings = self
            .settings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = format!("{namespace}/{name}");
        match self.routes.by_key(&namespace, &name) {
            Some(served) => {
                self.forward.set(key.clone(), forward_config_of(&served));
                settings.insert(key, settings_of(&served.spec))
            }
            None => {
                // Not served (its spec does not compile): its forwards wait.
                self.forward.suspend(&key);
                settings.remove(&key)
            }
        };
        outcome
    }

    /// Stops serving one integration.
    pub fn remove(&self, namespace: &str, name: &str) -> bool {
        self.settings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&format!("{namespace}/{name}"));
        self.forward.remove(&format!("{namespace}/{name}"));
        self.routes.remove(namespace, name)
    }

    fn lookup(&self) -> SettingsLookup {
        let settings = self.settings.clone();
        Arc::new(move |key: &str| {
            settings
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(key)
                .copied()
                .unwrap_or_default()
        })
    }
}

/// A started (not yet serving) receiver.
pub struct Receiver<W> {
    handle: ReceiverHandle,
    state: Arc<ReceiverState<JournaledSink<Journal>>>,
    journal: Arc<Journal>,
    status_loop: StatusLoop<Journal, W>,
    forwarder: Forwarder,
    forwarder_task: tokio::task::JoinHandle<()>,
    forwarder_stop: CancellationToken,
    /// Journal entries replayed at start.
    pub replayed: usize,
}

impl<W: StatusWriter> Receiver<W> {
    /// Opens and replays the journal and builds everything; nothing is served yet.
    pub async fn start(
        options: ReceiverOptions,
        writer: Arc<W>,
        registry: Option<&mut Registry>,
    ) -> Result<Receiver<W>, StartError> {
        let journal_config = JournalConfig {
            max_bytes: options.journal_max_bytes,
            group_commit_window: options.journal_commit_window,
            ..JournalConfig::new(options.journal_dir.clone())
        };
        let forward_metrics = ForwardMetrics::new();
        let (metrics, journal_registry) = match registry {
            Some(r) => {
                forward_metrics.register(r);
                (ReceiverMetrics::register(r), Some(r))
            }
            None => (ReceiverMetrics::default(), None),
        };
        let (journal, recovered) = Journal::open(journal_config, journal_registry)
            .await
            .map_err(|source| StartError::Journal {
                dir: options.journal_dir.clone(),
                source,
            })?;
        let handle = ReceiverHandle::new();
        let lookup = handle.lookup();
        let max_ids = usize::try_from(options.dedup_max_ids).unwrap_or(usize::MAX);
        let (mut ledger, report) =
            runtime::replay_recovered(recovered, &journal.stats(), &lookup, max_ids);
        // Entries the journal skipped (marked applied, their counts already on the
        // status) leave a gap below its last sequence number: close it, so the
        // ledger's covered prefix keeps growing with new appends.
        ledger.settle(journal.stats().last_seq);
        if report.replayed > 0 || report.undecodable > 0 {
            tracing::info!(
                replayed = report.replayed,
                undecodable = report.undecodable,
                "replayed the delivery journal"
            );
        }
        let config = PipelineConfig {
            external_base_url: options.external_base_url.clone(),
            trusted_proxies: options.trusted_proxies.clone(),
            body_budget: Arc::new(crate::receiver::limits::BodyBudget::new(
                options.max_body_bytes_in_flight,
            )),
            max_connections: options.max_connections,
            drain_delay: options.drain_delay,
            ..PipelineConfig::default()
        };
        let dedup = Dedup::with_counter(
            options.dedup_max_ids,
            config.clock.clone(),
            metrics.dedup_evicted_early.clone(),
        );
        let now = (config.clock)();
        for id in ledger.remembered_ids(now) {
            dedup.remember_digest(id.digest(), id.expires_at_ms);
        }
        let journal = Arc::new(journal);
        // The runtime counts journal appends, queue depth and status writes into the
        // same (registered) metrics as the pipeline.
        let runtime_config = RuntimeConfig {
            metrics: metrics.clone(),
            clock: config.clock.clone(),
            journal_cap: options.journal_max_bytes,
            ..options.runtime.clone()
        };
        let clock = config.clock.clone();
        let (sink, status_loop) =
            runtime::build(journal.clone(), writer, ledger, lookup, runtime_config);
        let outbox_bytes = sink.outbox_bytes.clone();
        let counters = sink.counters().clone();
        let state = Arc::new(ReceiverState::new(
            config,
            handle.routes.clone(),
            dedup,
            sink,
            metrics,
        ));
        let sender = Sender::new(options.forward_egress.clone(), SenderOptions::default())
            .map_err(|e| StartError::Forwarder(e.to_string()))?;
        let forwarder_stop = CancellationToken::new();
        let (forwarder, forwarder_task) = forward::start(
            ForwarderOptions {
                dir: options.journal_dir.join("outbox"),
                max_in_flight: 256,
                per_target_in_flight: 32,
                max_lag: Some(options.forward_max_lag),
                intake_progress: Some(forward::IntakeProgress(Arc::new(move || {
                    counters.max_seq()
                }))),
            },
            sender,
            &handle.forward,
            outbox_bytes,
            clock,
            forward_metrics,
            forwarder_stop.clone(),
        )
        .map_err(|e| StartError::Forwarder(format!("cannot open the outbox: {e}")))?;
        let ready_state = state.clone();
        let status_loop = status_loop.with_forwarding(
            Forwarding {
                forwarder: forwarder.clone(),
                lookup: handle.forward.lookup(),
                routes_ready: Arc::new(move || ready_state.is_ready()),
            },
            report.forwards,
        );
        Ok(Receiver {
            handle,
            state,
            journal,
            status_loop,
            forwarder,
            forwarder_task,
            forwarder_stop,
            replayed: report.replayed,
        })
    }

    pub fn handle(&self) -> ReceiverHandle {
        self.handle.clone()
    }

    /// The forwarder (replay of dead letters, its status board).
    pub fn forwarder(&self) -> Forwarder {
        self.forwarder.clone()
    }

    /// The shared pipeline state (ready flag, metrics, sink).
    pub fn state(&self) -> &Arc<ReceiverState<JournaledSink<Journal>>> {
        &self.state
    }

    /// Serves until `shutdown` fires, then drains, flushes and closes the journal.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let Receiver {
            state,
            journal,
            status_loop,
            forwarder,
            forwarder_task,
            forwarder_stop,
            ..
        } = self;
        let loop_stop = CancellationToken::new();
        let status_task = tokio::spawn(status_loop.run(loop_stop.clone()));
        let server_options = ServerOptions {
            shed: state.metrics.shed_counter(),
            ..state.config.server_options()
        };
        let stop = shutdown.clone();
        let draining = state.clone();
        let drain_delay = draining.config.drain_delay;
        let served = crate::receiver::server::serve_with(
            listener,
            app(state.clone()),
            server_options,
            async move {
                stop.cancelled().await;
                // Drain: readiness fails first, so the Service stops sending new
                // deliveries here, while requests that still arrive meanwhile are served;
                // then the server stops accepting and lets in-flight requests finish.
                draining.set_ready(false);
                if !drain_delay.is_zero() {
                    tracing::info!(delay = ?drain_delay, "shutting down: not ready; serving what still arrives before closing");
                    tokio::time::sleep(drain_delay).await;
                }
            },
        )
        .await;
        state.set_ready(false);
        loop_stop.cancel();
        if let Err(e) = status_task.await {
            tracing::error!(error = %e, "status loop failed during shutdown");
        }
        // After the status loop: its last imports into the outbox are done. Attempts in
        // flight are abandoned; their forwards stay pending for the next start.
        forwarder_stop.cancel();
        drop(forwarder);
        if let Err(e) = forwarder_task.await {
            tracing::error!(error = %e, "forwarder failed during shutdown");
        }
        drop(state);
        match Arc::try_unwrap(journal) {
            Ok(journal) => {
                if let Err(e) = journal.close().await {
                    tracing::warn!(error = %e, "journal did not close cleanly; it will be replayed at the next start");
                }
            }
            Err(_) => tracing::warn!(
                "journal still in use at shutdown; it will be replayed at the next start"
            ),
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The runtime's per-integration settings are the resolver's, and follow the served
    /// route; a route that is not served gets the defaults.
    #[test]
    fn settings_follow_the_served_routes() {
        let route = |keep: i32| Route {
            namespace: "payments".into(),
            name: "a".into(),
            uid: "uid-1".into(),
            generation: 1,
            path: crate::domain::secret::generate_path(),
            secrets: Vec::new(),
            spec: serde_json::from_value(serde_json::json!({
                "provider": "datadog",
                "dedupWindow": "1h",
                "incidents": {"keepRecent": keep},
            }))
            .expect("spec"),
            forward: Vec::new(),
            replay: None,
        };
        let handle = ReceiverHandle::new();
        let lookup = handle.lookup();
        handle.upsert(route(5)).expect("compiles");
        assert_eq!(
            lookup("payments/a"),
            IntegrationSettings {
                keep_recent: 5,
                dedup_window_ms: 3_600_000
            }
        );
        // keepRecent: -1 is refused (the route is not served), not read as 0 or 20.
        assert!(handle.upsert(route(-1)).is_err());
        assert_eq!(lookup("payments/a"), IntegrationSettings::default());
        assert!(handle.replace_all(vec![route(7)]).is_empty());
        assert_eq!(lookup("payments/a").keep_recent, 7);
    }
}
