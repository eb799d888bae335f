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
use crate::receiver::dedup::{Dedup, EvictionCause};
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
    /// How OIDC JWKS and SNS certificates are fetched (same egress policy as forwards).
    pub remote_keys: crate::receiver::keys::RemoteKeyOptions,
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
    #[error(
        "--dedup-max-ids {ids} does not fit --journal-max-bytes {journal_max_bytes}: each remembered id takes {bytes} bytes in a checkpoint and two checkpoints coexist while one is written, {needed} bytes in all, more than half the journal's cap (the other half is for deliveries); raise --journal-max-bytes (chart: receiver.journal.maxBytes or the volume's size) to at least {min_journal} or lower --dedup-max-ids to at most {max_ids}"
    )]
    DedupTooLarge {
        ids: u64,
        journal_max_bytes: u64,
        bytes: u64,
        needed: u64,
        min_journal: u64,
        max_ids: u64,
    },
}

/// What an operator is told when opening the journal cut off a complete but damaged
/// batch: deliveries that were acknowledged (2xx) and may now be missing from the
/// status. Said in the log, in a Warning Event on the receiver's Pod (cluster) and by
/// `hookwarden get` (standalone), besides `hookwarden_journal_corrupt_batches_total`.
pub fn loss_message(lost: &crate::journal::LostBatch) -> String {
    let what = match (lost.first_seq, lost.records) {
        (Some(first), Some(n)) if n > 0 => format!(
            "{n} acknowledged deliveries (journal seq {first}..{})",
            first + u64::from(n) - 1
        ),
        _ => "an unknown number of acknowledged deliveries (up to 1,024: the batch header is damaged)".to_string(),
    };
    let kept = match &lost.kept_at {
        Some(path) => format!("its bytes are kept at {}", path.display()),
        None => "its bytes could not be copied aside".to_string(),
    };
    format!(
        "possible loss of acknowledged deliveries: the journal's last batch in {} at byte {} was complete but damaged ({}), so {what} were cut off at start and may be missing from the status (counts, incidents, forwards); the senders got 2xx and will not retry. {kept}. Check the volume (disk errors, a restored or copied volume); nothing else needs doing for the receiver to run",
        lost.path.display(),
        lost.offset,
        lost.reason,
    )
}

/// Bytes one remembered delivery id takes in a journal checkpoint (docs/journal.md).
pub const CHECKPOINT_BYTES_PER_ID: u64 = 24;

/// Whether `dedup_max_ids` fits the journal: a checkpoint carries every remembered id
/// ([`CHECKPOINT_BYTES_PER_ID`] each), the previous snapshot stays until the new one
/// is renamed over it, and what is left must still hold deliveries. So both snapshots
/// together get at most half of `--journal-max-bytes`; beyond that, raising the dedup
/// memory would let checkpoints fill the journal volume.
pub fn check_dedup_fits(dedup_max_ids: u64, journal_max_bytes: u64) -> Result<(), StartError> {
    let needed = dedup_max_ids.saturating_mul(2 * CHECKPOINT_BYTES_PER_ID);
    if needed <= journal_max_bytes / 2 {
        return Ok(());
    }
    Err(StartError::DedupTooLarge {
        ids: dedup_max_ids,
        journal_max_bytes,
        bytes: CHECKPOINT_BYTES_PER_ID,
        needed,
        min_journal: needed.saturating_mul(2),
        max_ids: journal_max_bytes / 2 / (2 * CHECKPOINT_BYTES_PER_ID),
    })
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
        max_tracked: spec.max_tracked,
        served: true,
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
        ReceiverHandle::with_metrics(&ReceiverMetrics::default())
    }

    /// An empty route table that keeps `metrics.routes` and the per-integration series
    /// of `metrics.integrations` in step with the routes served.
    pub fn with_metrics(metrics: &ReceiverMetrics) -> ReceiverHandle {
        ReceiverHandle {
            routes: Arc::new(RouteTable::with_metrics(
                metrics.routes.clone(),
                metrics.integrations.clone(),
            )),
            settings: Arc::default(),
            forward: ForwardConfigs::default(),
        }
    }

    pub fn routes(&self) -> &Arc<RouteTable> {
        &self.routes
    }

    /// Serves exactly `routes`; returns the ones that could not be served.
    pub fn replace_all(&self, routes: impl IntoIterator<Item = Route>) -> Vec<RouteError> {
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
    /// The batch of acknowledged deliveries that opening the journal found damaged and
    /// cut off ([`loss_message`] says it to an operator).
    pub fn lost_at_open(&self) -> Option<&crate::journal::LostBatch> {
        self.journal.lost_at_open()
    }

    /// Opens and replays the journal and builds everything; nothing is served yet.
    pub async fn start(
        options: ReceiverOptions,
        writer: Arc<W>,
        registry: Option<&mut Registry>,
    ) -> Result<Receiver<W>, StartError> {
        check_dedup_fits(options.dedup_max_ids, options.journal_max_bytes)?;
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
        let handle = ReceiverHandle::with_metrics(&metrics);
        let lookup = handle.lookup();
        let max_ids = usize::try_from(options.dedup_max_ids).unwrap_or(usize::MAX);
        // Each recovered record is folded as the journal's segments are scanned: none is
        // held after it is folded (a million unapplied deliveries would take ~390 MiB).
        let (journal, replayer) = Journal::open_visiting(
            journal_config,
            journal_registry,
            runtime::Replayer::new(lookup.clone(), max_ids),
        )
        .await
        .map_err(|source| StartError::Journal {
            dir: options.journal_dir.clone(),
            source,
        })?;
        if let Some(lost) = journal.lost_at_open() {
            tracing::error!(
                path = %lost.path.display(),
                offset = lost.offset,
                "{}",
                loss_message(lost)
            );
        }
        let (mut ledger, report) = replayer.finish();
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
        let sender = Sender::new(options.forward_egress.clone(), SenderOptions::default())
            .map_err(|e| StartError::Forwarder(e.to_string()))?;
        let remote_keys = Arc::new(crate::receiver::keys::RemoteKeys::new(
            sender.clone(),
            options.remote_keys.clone(),
        ));
        let config = PipelineConfig {
            remote_keys: Some(remote_keys.clone()),
            external_base_url: options.external_base_url.clone(),
            trusted_proxies: options.trusted_proxies.clone(),
            body_budget: Arc::new(crate::receiver::limits::BodyBudget::new(
                options.max_body_bytes_in_flight,
            )),
            max_connections: options.max_connections,
            drain_delay: options.drain_delay,
            ..PipelineConfig::default()
        };
        let cause = |cause| {
            metrics
                .dedup_evicted_early_by_cause
                .get_or_create(&crate::receiver::metrics::CauseLabels { cause })
                .clone()
        };
        let dedup = Dedup::with_counters(
            options.dedup_max_ids,
            config.clock.clone(),
            metrics.dedup_evicted_early.clone(),
            crate::receiver::dedup::EvictionCounters {
                capacity: cause(EvictionCause::Capacity.label()),
                integration_share: cause(EvictionCause::IntegrationShare.label()),
            },
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
        remote_keys.set_notices(forwarder.board.clone());
        let ready_state = state.clone();
        let status_loop = status_loop.with_forwarding(
            Forwarding {
                forwarder: forwarder.clone(),
                lookup: handle.forward.lookup(),
                routes_ready: Arc::new(move || ready_state.is_ready()),
            },
            report.forwards,
            report.deferred,
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

    /// Finding 13: `--dedup-max-ids` is bounded by what the journal cap leaves for the
    /// two checkpoints; the defaults fit with room, the message names both flags.
    #[test]
    fn dedup_capacity_is_bounded_by_the_journal_cap() {
        assert!(check_dedup_fits(DEDUP_CAPACITY, DEFAULT_JOURNAL_MAX_BYTES).is_ok());
        // The chart's default cap (75% of 1 GiB) holds ~8.4 million ids.
        let chart_cap = 768 << 20;
        assert!(check_dedup_fits(8_000_000, chart_cap).is_ok());
        let error = check_dedup_fits(100_000_000, chart_cap).expect_err("too many ids");
        let message = error.to_string();
        assert!(
            message.contains("--journal-max-bytes") && message.contains("--dedup-max-ids"),
            "{message}"
        );
        let StartError::DedupTooLarge {
            max_ids,
            min_journal,
            ..
        } = error
        else {
            panic!("{error}")
        };
        assert!(check_dedup_fits(max_ids, chart_cap).is_ok());
        assert!(check_dedup_fits(max_ids + 1, chart_cap).is_err());
        assert!(check_dedup_fits(100_000_000, min_journal).is_ok());
    }

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
            expected_interval_seconds: None,
        };
        let handle = ReceiverHandle::new();
        let lookup = handle.lookup();
        handle.upsert(route(5)).expect("compiles");
        assert_eq!(
            lookup("payments/a"),
            IntegrationSettings {
                keep_recent: 5,
                dedup_window_ms: 3_600_000,
                max_tracked: 100,
                served: true,
            }
        );
        // keepRecent: -1 is refused (the route is not served), not read as 0 or 20.
        assert!(handle.upsert(route(-1)).is_err());
        assert_eq!(lookup("payments/a"), IntegrationSettings::default());
        assert!(handle.replace_all(vec![route(7)]).is_empty());
        assert_eq!(lookup("payments/a").keep_recent, 7);
    }
}
