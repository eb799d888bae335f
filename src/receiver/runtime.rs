//! What happens after the pipeline accepts a delivery: the durable journal append before
//! the 2xx ([`JournaledSink`]), and the background [`StatusLoop`] that folds journal
//! entries into the [`Ledger`], writes coalesced status updates, marks entries applied
//! and checkpoints the folded state so the journal compacts.
//!
//! Invariant: a delivery is answered 2xx only after its journal entry is fsync'd, and
//! every fsync'd entry reaches the status — either through the live queue or, after a
//! crash, through replay at start ([`replay`]).
//!
//! # Deferred forwards
//!
//! A delivery that a target is sent is journaled with its body, so its forward is durable
//! before the 2xx. Turning it into an outbox job (rendering, writing it to the outbox)
//! costs about a third of the delivery's own CPU, so while intake saturates the workers
//! ([`IntakePressure`]) the status loop does not do it: it notes the span of sequence
//! numbers whose `delivery` forwards stay in the journal (incident events, rare and
//! depending on the ledger as it stood at the fold, are imported as usual). Once intake
//! eases — or the span is `--forward-max-lag` old, or a checkpoint is due (none can be
//! taken while a span exists), or the journal is half of its cap — the span is read
//! back from the journal on the blocking pool ([`DeliveryJournal::read_entries`]),
//! rendered and imported in batches, and no new span opens until the checkpoint is
//! taken. Nothing of the body is held in memory meanwhile. Replay at start does the same with the replayed
//! entries (only the sequence numbers are kept), so a restart after a long burst does
//! not hold every replayed body either.
//!
//! The journal's applied mark stays below the oldest span not read back, and no
//! checkpoint is taken while one exists (the ledger already covers it): after a crash,
//! replay re-imports those entries' forwards. A span is exact: it starts above every
//! sequence number folded before it, every delivery folded into it while it is open is
//! deferred, and it is closed only up to what the ledger covers without gaps, so no
//! forward imported at its fold is read back a second time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::domain::incident::state::Incident;
use crate::domain::spec;
use crate::journal::{Journal, RecoveryVisitor};
use crate::receiver::forward::{
    Folded, ForwardLookup, Forwarder, IntakePressure, NewJob, jobs_for,
};
use crate::receiver::ledger::Ledger;
use crate::receiver::metrics::{ReceiverMetrics, WriteLabels};
use crate::receiver::sink::{Accepted, DeliverySink, Duplicate, Rejected, SinkError};
use crate::receiver::status::{StatusUpdate, StatusWriteError, StatusWriter};

/// Queued messages the status loop folds per wake-up.
const FOLD_BATCH: usize = 256;
/// Folded deliveries' forwards go to the outbox in batches of this many, or once the
/// oldest has waited [`IMPORT_DELAY`]: each import is an `fdatasync` on the outbox, and
/// one per fold batch (hundreds a second under load) took CPU from intake.
const IMPORT_BATCH: usize = 1024;
/// Forwards rendered between two yields of the status loop (~1.2 µs each).
const RENDER_SLICE: usize = 64;
/// How often the open span of deferred forwards is looked at (intake eased? max lag?).
const SPAN_CHECK: Duration = Duration::from_millis(20);
/// The longest a folded delivery's forwards wait for an import (their latency floor).
const IMPORT_DELAY: Duration = Duration::from_millis(50);

/// The durable log the sink appends to. Implemented by [`Journal`]; a trait so the
/// runtime does not depend on how the journal stores bytes.
pub trait DeliveryJournal: Send + Sync + 'static {
    /// Appends and fsyncs one record; resolves with its sequence number once durable.
    /// Any failure (disk full, I/O error, closed) is [`SinkError::Unavailable`].
    fn append(&self, record: Vec<u8>) -> impl Future<Output = Result<u64, SinkError>> + Send;
    /// Records that every entry up to `seq` reached the status.
    fn mark_applied(&self, seq: u64);
    /// True once the journal refuses every write until it is reopened (a failed fsync).
    fn failed(&self) -> bool {
        false
    }
    /// Bytes the journal holds on disk (for the cap it shares with the forward outbox).
    fn bytes_on_disk(&self) -> u64 {
        0
    }
    /// Stores `snapshot` as the state covering every entry up to `covers`, so those
    /// entries can be dropped.
    fn checkpoint(
        &self,
        snapshot: Vec<u8>,
        covers: u64,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Whether [`DeliveryJournal::read_entries`] works: only then are forwards deferred
    /// ("Deferred forwards" above).
    fn reads_back(&self) -> bool {
        false
    }
    /// Reads the entries `from..=to` back (blocking), handing each to `visit` until it
    /// returns false.
    fn read_entries(
        &self,
        _from: u64,
        _to: u64,
        _visit: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> std::io::Result<()> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

impl DeliveryJournal for Journal {
    async fn append(&self, record: Vec<u8>) -> Result<u64, SinkError> {
        Journal::append(self, record)
            .await
            .map_err(|e| SinkError::Unavailable(e.to_string()))
    }
    fn mark_applied(&self, seq: u64) {
        Journal::mark_applied(self, seq);
    }
    fn failed(&self) -> bool {
        self.stats().failed
    }
    fn bytes_on_disk(&self) -> u64 {
        self.stats().bytes_on_disk
    }
    async fn checkpoint(&self, snapshot: Vec<u8>, covers: u64) -> Result<(), String> {
        Journal::checkpoint(self, snapshot, covers)
            .await
            .map_err(|e| e.to_string())
    }
    fn reads_back(&self) -> bool {
        true
    }
    fn read_entries(
        &self,
        from: u64,
        to: u64,
        visit: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> std::io::Result<()> {
        Journal::read_entries(self, from, to, visit)
    }
}

/// Tuning of the background half.
#[derive(Clone)]
pub struct RuntimeConfig {
    /// At most one status write per integration per interval.
    pub status_interval: Duration,
    /// Consecutive authentication failures that set `Degraded` (0: never).
    pub degraded_after: u64,
    /// Accepted deliveries waiting to be folded; full → 503.
    pub queue_capacity: usize,
    /// Minimum time between journal checkpoints (each writes the whole ledger, with up to
    /// [`crate::receiver::ledger::MAX_REMEMBERED_IDS`] delivery ids, so not too often; a
    /// refused append makes the next one due at once).
    pub checkpoint_interval: Duration,
    /// Concurrent status writes in one pass.
    pub write_concurrency: usize,
    /// How long shutdown may spend on the final status flush.
    pub flush_timeout: Duration,
    /// Where queue depth, journal appends and status writes are counted.
    pub metrics: ReceiverMetrics,
    /// Wall-clock time for status and pruning.
    pub clock: Clock,
    /// Cap on the journal and the forward outbox together (`--journal-max-bytes`).
    pub journal_cap: u64,
    /// Status writes per second this replica makes at most, across integrations
    /// (`--status-writes-per-second`; 0: no global budget, only the per-integration
    /// interval). Integrations are written least recently written first, so none starves
    /// and the busiest coalesce longer; nothing is lost, only written later.
    pub status_writes_per_second: f64,
    /// This replica's name (the pod name): its share of the current numbers on the
    /// status (`status.replicas`).
    pub replica: String,
    /// How often a share that is not all zero is rewritten with nothing new, so other
    /// replicas do not take it for a gone replica's
    /// ([`crate::receiver::status::SHARE_REFRESH`]; shorter in tests).
    pub share_refresh: Duration,
}

/// Default of `--status-writes-per-second`.
pub const DEFAULT_STATUS_WRITES_PER_SECOND: f64 = 50.0;

impl std::fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeConfig")
            .field("status_interval", &self.status_interval)
            .field("degraded_after", &self.degraded_after)
            .field("queue_capacity", &self.queue_capacity)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("write_concurrency", &self.write_concurrency)
            .field("flush_timeout", &self.flush_timeout)
            .field("status_writes_per_second", &self.status_writes_per_second)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            status_interval: Duration::from_secs(2),
            degraded_after: 20,
            queue_capacity: 65_536,
            checkpoint_interval: Duration::from_secs(30),
            write_concurrency: 16,
            flush_timeout: Duration::from_secs(10),
            metrics: ReceiverMetrics::default(),
            clock: crate::clock::system_clock(),
            journal_cap: u64::MAX,
            status_writes_per_second: DEFAULT_STATUS_WRITES_PER_SECOND,
            replica: "standalone".to_string(),
            share_refresh: crate::receiver::status::SHARE_REFRESH,
        }
    }
}

/// Per-integration settings the background half needs from the route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntegrationSettings {
    pub keep_recent: usize,
    pub dedup_window_ms: i64,
    /// Incidents kept whole (`spec.incidents.maxTracked`).
    pub max_tracked: usize,
    /// Whether these come from a served route (false: the defaults, e.g. during replay
    /// before the routes are loaded, when the spec's values are not known yet).
    pub served: bool,
}

impl Default for IntegrationSettings {
    fn default() -> Self {
        // A route that is not served (any more): the spec defaults.
        IntegrationSettings {
            keep_recent: spec::defaults::KEEP_RECENT,
            dedup_window_ms: i64::try_from(spec::defaults::DEDUP_WINDOW.as_millis())
                .unwrap_or(i64::MAX),
            max_tracked: spec::defaults::MAX_TRACKED,
            served: false,
        }
    }
}

/// Looks up [`IntegrationSettings`] by `namespace/name`.
pub type SettingsLookup = Arc<dyn Fn(&str) -> IntegrationSettings + Send + Sync>;

/// A message from the request path to the status loop.
enum Queued {
    Accepted(u64, Box<Accepted>),
    Rejected(Rejected),
    Duplicate(Duplicate),
}

/// Counts shared between the sink and the loop (also exported as metrics).
#[derive(Debug, Default)]
pub struct RuntimeCounters {
    /// Appends started and not yet queued.
    inflight: AtomicUsize,
    /// Highest sequence number queued so far.
    max_seq: AtomicU64,
    /// Rejects/duplicates not counted because the queue was busy.
    pub dropped_side_events: AtomicU64,
    /// Status writes that succeeded.
    pub status_writes: AtomicU64,
    /// Status writes that failed (and will be retried).
    pub status_write_failures: AtomicU64,
    /// Integrations whose status was behind but waited for a later pass because the
    /// status-write budget was spent (summed over passes).
    pub status_writes_deferred: AtomicU64,
    /// Integrations whose status is behind right now (after the last pass was built).
    pub status_backlog: AtomicUsize,
    /// Journal appends refused (full or I/O error): a reason to compact at once.
    pub append_failures: AtomicU64,
}

impl RuntimeCounters {
    /// Highest journal sequence number queued so far: grows with every accepted
    /// delivery (the forwarder's sign that intake is busy).
    pub fn max_seq(&self) -> u64 {
        self.max_seq.load(Ordering::Relaxed)
    }
}

/// The [`DeliverySink`] that makes accepted deliveries durable before the 2xx.
pub struct JournaledSink<J> {
    journal: Arc<J>,
    queue: mpsc::Sender<Queued>,
    capacity: usize,
    counters: Arc<RuntimeCounters>,
    metrics: ReceiverMetrics,
    /// Bytes of the forward outbox (pending forwards and dead letters), kept up to date
    /// by the forwarder; with the journal's own bytes it counts against `config.journal_cap`.
    pub(crate) outbox_bytes: Arc<AtomicU64>,
    journal_cap: u64,
    /// `journal_appends{outcome="ok"}`, resolved once: a family lookup (label hash under
    /// a lock) per delivery is measurable at intake rates.
    appends_ok: prometheus_client::metrics::counter::Counter,
}

impl<J> JournaledSink<J> {
    /// Deliveries waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.capacity - self.queue.capacity()
    }

    pub fn counters(&self) -> &Arc<RuntimeCounters> {
        &self.counters
    }

    /// Side events (rejects, duplicates) may only take the first half of the queue, so an
    /// unauthenticated flood can never crowd out accepted deliveries.
    fn push_side(&self, event: Queued) {
        if self.queue.capacity() <= self.capacity / 2 || self.queue.try_send(event).is_err() {
            self.counters
                .dropped_side_events
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Decrements the in-flight count however `accept` ends (including cancellation).
struct InflightGuard<'a>(&'a AtomicUsize);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<J: DeliveryJournal> DeliverySink for JournaledSink<J> {
    async fn accept(&self, delivery: Accepted) -> Result<(), SinkError> {
        // Reserve the queue slot before the append: an entry that is durable must also
        // be queued, or a 503 would be answered for a delivery that later takes effect.
        let permit = self.queue.try_reserve().map_err(|e| match e {
            mpsc::error::TrySendError::Full(()) => SinkError::Overloaded,
            mpsc::error::TrySendError::Closed(()) => {
                SinkError::Unavailable("receiver is shutting down".into())
            }
        })?;
        // Pending forwards and dead letters count against the journal's cap: when the two
        // together reach it, new deliveries wait (503); a pending forward never gives up
        // its place for them.
        let outbox = self.outbox_bytes.load(Ordering::Relaxed);
        if outbox > 0 && self.journal.bytes_on_disk().saturating_add(outbox) >= self.journal_cap {
            return Err(SinkError::Unavailable(
                "the journal and the forward outbox reached --journal-max-bytes together".into(),
            ));
        }
        let record = delivery
            .to_record()
            .map_err(|e| SinkError::Unavailable(format!("cannot encode journal record: {e}")))?;
        self.counters.inflight.fetch_add(1, Ordering::SeqCst);
        let _guard = InflightGuard(&self.counters.inflight);
        let seq = match self.journal.append(record).await {
            Ok(seq) => {
                self.appends_ok.inc();
                seq
            }
            Err(e) => {
                self.metrics
                    .journal_appends
                    .get_or_create(&WriteLabels { outcome: "error" })
                    .inc();
                self.counters
                    .append_failures
                    .fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        self.counters.max_seq.fetch_max(seq, Ordering::SeqCst);
        permit.send(Queued::Accepted(seq, Box::new(delivery)));
        self.metrics
            .queue_depth
            .set(i64::try_from(self.queue_depth()).unwrap_or(i64::MAX));
        Ok(())
    }

    fn reject(&self, rejected: Rejected) {
        self.push_side(Queued::Rejected(rejected));
    }

    fn duplicate(&self, duplicate: Duplicate) {
        self.push_side(Queued::Duplicate(duplicate));
    }

    fn health(&self) -> Result<(), &'static str> {
        if self.journal.failed() {
            Err(
                "journal failed after an fsync error: it refuses writes until the receiver restarts and reopens it",
            )
        } else {
            Ok(())
        }
    }
}

/// Until when an accepted delivery's id is remembered: its arrival plus its
/// integration's dedup window (live folds and replay must agree).
fn dedup_expiry(accepted: &Accepted, settings: &SettingsLookup) -> i64 {
    accepted
        .received_at_ms
        .saturating_add(settings(&accepted.integration).dedup_window_ms)
}

/// [`fold_accepted`] with the integration's settings (dedup expiry, tracking cap): the
/// one way live folds and replay fold an entry.
fn fold_with_settings(
    ledger: &mut Ledger,
    seq: u64,
    accepted: &Accepted,
    settings: &SettingsLookup,
) -> Option<Folded> {
    let s = settings(&accepted.integration);
    let expires = accepted.received_at_ms.saturating_add(s.dedup_window_ms);
    if s.served && !ledger.contains(seq) {
        ledger.set_max_tracked(&accepted.integration, &accepted.uid, s.max_tracked);
    }
    fold_accepted(ledger, seq, accepted, expires)
}

/// What replaying the journal at start found.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Journal entries folded (not covered by the checkpoint).
    pub replayed: usize,
    /// Entries that could not be decoded (skipped, logged).
    pub undecodable: usize,
    /// Highest sequence number seen.
    pub max_seq: u64,
    /// What the replayed entries may forward, for the status loop to import once routes
    /// are loaded (the outbox skips the forwards it already has): the incident events
    /// here (their bodies dropped), and the `delivery` forwards of the entries in
    /// `deferred`, read back from the journal ("Deferred forwards").
    pub forwards: Vec<Folded>,
    /// Sequence numbers of the replayed entries that carry a body to forward, ascending.
    pub deferred: Vec<u64>,
}

/// Folds what the journal recovers into a ledger as recovery reads it (a
/// [`RecoveryVisitor`] for [`Journal::open_visiting`]): no record is held after it is
/// folded, so a restart with a million unapplied deliveries needs one journal segment in
/// memory, not all of them. Idempotent: entries the checkpoint covers are skipped, so
/// replaying twice gives the same ledger.
pub struct Replayer {
    ledger: Ledger,
    report: ReplayReport,
    settings: SettingsLookup,
    max_ids: usize,
    /// (integration, key, expiry) of the entries already applied: remembered once every
    /// unapplied entry is folded.
    applied_ids: Vec<(String, String, i64)>,
}

impl Replayer {
    pub fn new(settings: SettingsLookup, max_ids: usize) -> Replayer {
        let mut ledger = Ledger::default();
        ledger.set_max_remembered(max_ids);
        Replayer {
            ledger,
            report: ReplayReport::default(),
            settings,
            max_ids,
            applied_ids: Vec::new(),
        }
    }

    /// The rebuilt ledger (its prefix settled up to the highest entry seen) and what the
    /// replay found.
    pub fn finish(self) -> (Ledger, ReplayReport) {
        let Replayer {
            mut ledger,
            report,
            applied_ids,
            ..
        } = self;
        // Every entry that exists was handed over: gaps below the highest one never fill.
        ledger.settle(report.max_seq);
        let mut report = report;
        report.deferred.sort_unstable();
        // Entries already on the status (applied after the last checkpoint): not counted
        // again, but their delivery ids must still be caught as duplicates after a restart.
        for (integration, key, expires) in applied_ids {
            ledger.remember_id(&integration, &key, expires);
        }
        (ledger, report)
    }
}

impl RecoveryVisitor for Replayer {
    /// `written`: the journal's applied mark lies beyond the checkpoint. A mark is only
    /// set after a status write built later than every fold in the checkpoint, so
    /// everything the checkpoint counted is already on the status: its counts must not be
    /// added again (the entries between checkpoint and mark are not replayed at all).
    fn snapshot(&mut self, payload: Option<&[u8]>, written: bool) {
        let mut ledger = match payload {
            Some(bytes) => Ledger::from_snapshot(bytes).unwrap_or_else(|e| {
                tracing::error!(error = %e, "journal checkpoint is unreadable; rebuilding from the remaining entries");
                Ledger::default()
            }),
            None => Ledger::default(),
        };
        ledger.set_max_remembered(self.max_ids);
        if written {
            ledger.mark_all_written();
        }
        self.report.max_seq = self.report.max_seq.max(ledger.covered_seq());
        self.ledger = ledger;
    }

    fn entry(&mut self, seq: u64, bytes: &[u8]) {
        self.report.max_seq = self.report.max_seq.max(seq);
        match Accepted::from_record(bytes) {
            Ok(accepted) => {
                if self.ledger.contains(seq) {
                    return;
                }
                self.report.replayed += 1;
                if let Some(mut folded) =
                    fold_with_settings(&mut self.ledger, seq, &accepted, &self.settings)
                {
                    if folded.accepted.forward.is_some() && !folded.accepted.ignored {
                        self.report.deferred.push(seq);
                        folded.accepted.forward = None;
                    }
                    if !folded.changes.is_empty() {
                        self.report.forwards.push(folded);
                    }
                }
            }
            Err(e) => {
                self.report.undecodable += 1;
                tracing::error!(seq, error = %e, "skipping undecodable journal entry");
            }
        }
    }

    fn applied(&mut self, _seq: u64, bytes: &[u8]) {
        if let Ok(accepted) = Accepted::from_record(bytes) {
            let expires = dedup_expiry(&accepted, &self.settings);
            for key in accepted
                .delivery_id
                .iter()
                .chain(accepted.replay_key.iter())
            {
                self.applied_ids
                    .push((accepted.integration.clone(), key.clone(), expires));
            }
        }
    }
}

/// Rebuilds the ledger from a checkpoint and the entries after it ([`Replayer`] over
/// records already in memory). The receiver streams instead ([`Journal::open_visiting`]);
/// the tests drive replay with these two.
///
/// `snapshot_written`: see [`Replayer`]'s `snapshot`.
#[cfg(test)]
pub fn replay(
    snapshot: Option<&[u8]>,
    snapshot_written: bool,
    entries: impl IntoIterator<Item = (u64, Vec<u8>)>,
    settings: &SettingsLookup,
    max_ids: usize,
) -> (Ledger, ReplayReport) {
    let mut replayer = Replayer::new(settings.clone(), max_ids);
    replayer.snapshot(snapshot, snapshot_written);
    for (seq, bytes) in entries {
        replayer.entry(seq, &bytes);
    }
    replayer.finish()
}

/// [`replay`] over what [`Journal::open`] recovered; `stats` is the journal's right
/// after opening (its applied mark and checkpoint position).
#[cfg(test)]
pub fn replay_recovered(
    recovered: crate::journal::Recovered,
    stats: &crate::journal::JournalStats,
    settings: &SettingsLookup,
    max_ids: usize,
) -> (Ledger, ReplayReport) {
    let crate::journal::Recovered {
        snapshot,
        entries,
        applied,
    } = recovered;
    let mut replayer = Replayer::new(settings.clone(), max_ids);
    replayer.snapshot(snapshot.as_deref(), stats.applied_seq > stats.snapshot_seq);
    for (seq, bytes) in entries {
        replayer.entry(seq, &bytes);
    }
    for (seq, bytes) in applied {
        replayer.applied(seq, &bytes);
    }
    replayer.finish()
}

/// The background half: owns the ledger; folds queued entries; once per interval writes
/// every integration whose status is behind; marks applied and checkpoints.
pub struct StatusLoop<J, W> {
    journal: Arc<J>,
    writer: Arc<W>,
    ledger: Ledger,
    queue: mpsc::Receiver<Queued>,
    counters: Arc<RuntimeCounters>,
    settings: SettingsLookup,
    config: RuntimeConfig,
    last_checkpoint: Option<Instant>,
    checkpointed_seq: u64,
    /// Per integration: failures in a row and when the next attempt may happen.
    backoff: HashMap<String, (u32, Instant)>,
    /// What the ledger covered when the running write pass was built.
    pass_covers: u64,
    /// `append_failures` at the last checkpoint: more failures since (a full journal)
    /// make the next checkpoint due at once, since it is what frees space.
    failures_at_checkpoint: u64,
    /// Forwarding, when the receiver forwards: jobs of folded entries wait here until the
    /// outbox has them; no checkpoint covers an entry whose jobs are not imported.
    forwarding: Option<Forwarding>,
    /// Folded deliveries not yet turned into jobs (routes not loaded yet).
    unrendered: Vec<Folded>,
    unimported: Vec<NewJob>,
    /// The global status-write budget.
    budget: WriteBudget,
    /// When each integration's status was last written (or first found behind): the
    /// least recently written go first when the budget is short.
    last_write: HashMap<String, Instant>,
    /// Integrations whose last write carried a share (`status.replicas`) that is not all
    /// zero: rewritten every [`crate::receiver::status::SHARE_REFRESH`] so it does not age out.
    live_shares: HashSet<String>,
    /// Whether the running (or last) pass writes every integration that was behind: only
    /// then may the journal mark what the pass covers as applied.
    pass_complete: bool,
    /// When the oldest folded delivery not yet imported was folded.
    forwards_since: Option<Instant>,
    /// The open span of deferred forwards (first and last seq, when it opened).
    deferring: Option<(u64, u64, Instant)>,
    /// Deliveries deferred into the open span (moved to its [`ReadBack`] when closed).
    deferred_in_span: i64,
    /// Deliveries deferred by integration in the current fold batch, not yet counted as
    /// pending ([`StatusLoop::count_deferred`]).
    deferred_now: HashMap<String, i64>,
    /// What the open span added to each (integration, target)'s `pending`.
    span_pending: HashMap<(String, String), i64>,
    /// Closed spans waiting to be read back, oldest first.
    read_backs: VecDeque<ReadBack>,
    /// The highest seq folded so far (a new span starts above it).
    max_folded: u64,
    /// The replayed entries' forwards are not all read back yet: the forwarder waits.
    replay_unread: bool,
    /// When the last read-back failed (the next waits a status interval).
    read_back_failed: Option<Instant>,
    /// When [`StatusLoop::close_span`] last looked at intake.
    span_checked: Option<Instant>,
    /// Start, or the last checkpoint: spans stop opening once a checkpoint is due.
    span_gap_since: Instant,
}

/// Journal entries whose `delivery` forwards are read back from the journal.
#[derive(Clone, Debug)]
struct ReadBack {
    from: u64,
    to: u64,
    /// Only these seqs (ascending; replay at start), else every entry in `from..=to`.
    only: Option<Arc<Vec<u64>>>,
    /// Deliveries it holds (for `hookwarden_receiver_forwards_deferred`).
    deliveries: i64,
    /// What it added to each (integration, target)'s `pending`, taken off once read back
    /// (its imports count them again).
    pending: Vec<((String, String), i64)>,
}

/// Reads `span` back from the journal on the blocking pool, renders the forwards of its
/// deliveries and imports them in batches of [`IMPORT_BATCH`] (at most two batches in
/// memory). Returns how many forwards it imported.
async fn read_back<J: DeliveryJournal>(
    journal: Arc<J>,
    forwarding: Forwarding,
    span: ReadBack,
) -> std::io::Result<usize> {
    let (tx, mut rx) = mpsc::channel::<Vec<NewJob>>(1);
    let lookup = forwarding.lookup.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let mut batch = Vec::new();
        journal.read_entries(span.from, span.to, &mut |seq, bytes| {
            if let Some(only) = &span.only
                && only.binary_search(&seq).is_err()
            {
                return true;
            }
            match Accepted::from_record(bytes) {
                Ok(accepted) if accepted.forward.is_some() && !accepted.ignored => {
                    // An integration deleted and created again under the same name
                    // since (another uid) does not inherit the old one's forwards.
                    if let Some(config) = lookup(&accepted.integration)
                        .filter(|c| c.uid.is_empty() || c.uid == accepted.uid)
                    {
                        batch.extend(jobs_for(
                            &config,
                            &Folded {
                                accepted,
                                changes: Vec::new(),
                            },
                        ));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(seq, error = %e, "cannot decode a journal entry read back for its forwards; they are not sent");
                }
            }
            if batch.len() >= IMPORT_BATCH {
                return tx.blocking_send(std::mem::take(&mut batch)).is_ok();
            }
            true
        })?;
        if !batch.is_empty() {
            let _ = tx.blocking_send(batch);
        }
        Ok::<(), std::io::Error>(())
    });
    let mut imported = 0;
    let mut failed = None;
    while let Some(jobs) = rx.recv().await {
        imported += jobs.len();
        if let Err(e) = forwarding.forwarder.import(jobs).await {
            failed = Some(e);
            break;
        }
    }
    drop(rx);
    reader.await.map_err(std::io::Error::other)??;
    match failed {
        Some(e) => Err(e),
        None => Ok(imported),
    }
}

/// A token bucket over status writes: `rate` per second, at most one interval's worth
/// saved up.
#[derive(Debug)]
struct WriteBudget {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl WriteBudget {
    fn new(rate: f64, interval: Duration) -> WriteBudget {
        let burst = (rate * interval.as_secs_f64()).max(1.0);
        WriteBudget {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Writes allowed now (`usize::MAX` without a budget).
    fn available(&mut self, now: Instant) -> usize {
        if self.rate <= 0.0 || !self.rate.is_finite() {
            return usize::MAX;
        }
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        self.tokens.floor() as usize
    }

    fn spend(&mut self, writes: usize) {
        if self.rate > 0.0 && self.rate.is_finite() {
            self.tokens = (self.tokens - writes as f64).max(0.0);
        }
    }
}

/// What the status loop needs to hand folded deliveries to the forwarder.
#[derive(Clone)]
pub struct Forwarding {
    pub forwarder: Forwarder,
    pub lookup: ForwardLookup,
    /// Whether the routes are loaded: before that, what an integration forwards is not
    /// known, so folded deliveries wait (and so does the checkpoint).
    pub routes_ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// Renders the forwards of `folded` into `out`, yielding to the runtime after every
/// [`RENDER_SLICE`]: on a receiver with one worker, a whole import batch (~1 ms) in one
/// poll held every delivery's answer behind it (docs/bench.md "Forwarding": p99 with
/// forwarding 4.4–5.2 ms before, 2.9–4.1 ms after).
async fn render_sliced(folded: Vec<Folded>, lookup: &ForwardLookup, out: &mut Vec<NewJob>) {
    for (n, folded) in folded.into_iter().enumerate() {
        if let Some(config) = lookup(&folded.accepted.integration) {
            out.extend(jobs_for(&config, &folded));
        }
        if n % RENDER_SLICE == RENDER_SLICE - 1 {
            tokio::task::yield_now().await;
        }
    }
}

/// Folds `accepted` into `ledger`; returns what it may forward (`None` when it was folded
/// before or can forward nothing). Live folds and replay share it.
pub fn fold_accepted(
    ledger: &mut Ledger,
    seq: u64,
    accepted: &Accepted,
    expires_at_ms: i64,
) -> Option<Folded> {
    let notices_before = ledger
        .get(&accepted.integration)
        .map_or(0, |e| e.notices.len());
    if !ledger.fold(seq, accepted, expires_at_ms) {
        return None;
    }
    let entry = ledger.get(&accepted.integration)?;
    let changes: Vec<(Incident, bool)> = entry
        .notices
        .get(notices_before..)
        .unwrap_or_default()
        .iter()
        .filter_map(|n| entry.incidents.get(&n.id).map(|i| (i.clone(), n.resolved)))
        .collect();
    // Checked before the copy: most deliveries forward nothing, and this runs per fold.
    if accepted.forward.is_none() && changes.is_empty() {
        return None;
    }
    Some(Folded {
        accepted: accepted.clone(),
        changes,
    })
}

/// Builds the sink (for the HTTP pipeline) and the loop (to spawn) around a replayed ledger.
pub fn build<J: DeliveryJournal, W: StatusWriter>(
    journal: Arc<J>,
    writer: Arc<W>,
    ledger: Ledger,
    settings: SettingsLookup,
    config: RuntimeConfig,
) -> (Arc<JournaledSink<J>>, StatusLoop<J, W>) {
    let capacity = config.queue_capacity.max(2);
    let (tx, rx) = mpsc::channel(capacity);
    let counters = Arc::new(RuntimeCounters::default());
    counters
        .max_seq
        .store(ledger.covered_seq(), Ordering::SeqCst);
    let sink = Arc::new(JournaledSink {
        journal: journal.clone(),
        queue: tx,
        capacity,
        counters: counters.clone(),
        metrics: config.metrics.clone(),
        outbox_bytes: Arc::new(AtomicU64::new(0)),
        journal_cap: config.journal_cap,
        appends_ok: config
            .metrics
            .journal_appends
            .get_or_create(&WriteLabels { outcome: "ok" })
            .clone(),
    });
    let checkpointed_seq = ledger.covered_seq();
    let budget = WriteBudget::new(config.status_writes_per_second, config.status_interval);
    let status_loop = StatusLoop {
        journal,
        writer,
        ledger,
        queue: rx,
        counters,
        settings,
        config,
        last_checkpoint: None,
        checkpointed_seq,
        backoff: HashMap::new(),
        pass_covers: 0,
        failures_at_checkpoint: 0,
        forwarding: None,
        unrendered: Vec::new(),
        unimported: Vec::new(),
        budget,
        last_write: HashMap::new(),
        live_shares: HashSet::new(),
        pass_complete: true,
        forwards_since: None,
        deferring: None,
        deferred_in_span: 0,
        deferred_now: HashMap::new(),
        span_pending: HashMap::new(),
        read_backs: VecDeque::new(),
        max_folded: 0,
        replay_unread: false,
        read_back_failed: None,
        span_checked: None,
        span_gap_since: Instant::now(),
    };
    (sink, status_loop)
}

type PassResult = Vec<(StatusUpdate, u64, Result<(), StatusWriteError>)>;

impl<J: DeliveryJournal, W: StatusWriter> StatusLoop<J, W> {
    /// Hands folded deliveries' forwards to `forwarding`; `replayed` are the replayed
    /// entries' incident events ([`ReplayReport::forwards`]) and `deferred` the replayed
    /// entries whose delivery forwards are read back ([`ReplayReport::deferred`]).
    pub fn with_forwarding(
        mut self,
        forwarding: Forwarding,
        replayed: Vec<Folded>,
        deferred: Vec<u64>,
    ) -> Self {
        self.forwarding = Some(forwarding);
        self.unrendered = replayed;
        if let (Some(&from), Some(&to)) = (deferred.first(), deferred.last()) {
            self.max_folded = self.max_folded.max(to);
            let deliveries = i64::try_from(deferred.len()).unwrap_or(i64::MAX);
            self.config.metrics.forwards_deferred.inc_by(deliveries);
            self.read_backs.push_back(ReadBack {
                from,
                to,
                only: Some(Arc::new(deferred)),
                deliveries,
                pending: Vec::new(),
            });
            self.replay_unread = true;
        }
        self
    }

    /// The gate forwarding yields to, when this loop may defer forwards at all.
    fn pressure(&self) -> Option<Arc<IntakePressure>> {
        if !self.journal.reads_back() {
            return None;
        }
        self.forwarding.as_ref()?.forwarder.pressure()
    }

    /// Whether a new span of deferred forwards may open now: intake is saturated, no
    /// span is open or waiting to be read back, and no checkpoint is due. A checkpoint
    /// cannot be taken while a span exists (the ledger covers it), so under a sustained
    /// overload the spans leave a gap for one every `checkpoint_interval`, and whenever
    /// the journal is half full or refused an append: checkpoints are what free it.
    fn may_open_span(&self) -> bool {
        if self.deferring.is_some() || !self.read_backs.is_empty() {
            return false;
        }
        !self.checkpoint_wanted() && self.pressure().is_some_and(|p| p.saturated())
    }

    /// A checkpoint is due (its interval passed since the last one, an append was
    /// refused since) or the journal is half full: spans close and none opens.
    fn checkpoint_wanted(&self) -> bool {
        self.span_gap_since.elapsed() >= self.config.checkpoint_interval
            || self.appends_refused_since_checkpoint()
            || self.journal.bytes_on_disk() >= self.config.journal_cap / 2
    }

    /// Appends were refused (a full journal) since the last checkpoint, which is what
    /// frees space: the next one is due at once.
    fn appends_refused_since_checkpoint(&self) -> bool {
        self.counters.append_failures.load(Ordering::Relaxed) != self.failures_at_checkpoint
    }

    /// The oldest seq whose forwards are still in the journal only.
    fn unread_from(&self) -> Option<u64> {
        let open = self.deferring.map(|(from, _, _)| from);
        let closed = self.read_backs.front().map(|r| r.from);
        match (open, closed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Closes the open span once it should be read back (intake eased, the max lag
    /// passed, a checkpoint wanted, or `now`): up to what the ledger covers without gaps.
    fn close_span(&mut self, now: bool) {
        let Some((from, to, since)) = self.deferring else {
            return;
        };
        // One closed span at a time: the open one keeps growing meanwhile, so the tail
        // of a burst is read back in one piece, not a span per fold batch.
        if !self.read_backs.is_empty() {
            return;
        }
        if !now {
            // Looked at once per gate window, not per fold batch.
            if self.span_checked.is_some_and(|t| t.elapsed() < SPAN_CHECK) {
                return;
            }
            self.span_checked = Some(Instant::now());
            let pressure = self.pressure();
            let saturated = pressure.as_ref().is_some_and(|p| p.saturated());
            let lagging = pressure.is_none_or(|p| since.elapsed() >= p.max_lag());
            if saturated && !lagging && !self.checkpoint_wanted() {
                return;
            }
        }
        let covered = self.ledger.covered_seq();
        if covered < from {
            return;
        }
        let end = to.min(covered);
        // The count goes with the part that closes the span (a split span's first part
        // carries none): the gauge falls once its last part is read back.
        self.count_deferred();
        let (deliveries, pending) = if end < to {
            (0, Vec::new())
        } else {
            (
                std::mem::take(&mut self.deferred_in_span),
                self.span_pending.drain().collect(),
            )
        };
        self.read_backs.push_back(ReadBack {
            from,
            to: end,
            only: None,
            deliveries,
            pending,
        });
        self.deferring = (end < to).then_some((end + 1, to, since));
    }

    /// Counts the deliveries deferred since the last call as pending forwards of the
    /// targets their integration sends every delivery (once per fold batch: a lookup
    /// per integration, not per delivery).
    fn count_deferred(&mut self) {
        if self.deferred_now.is_empty() {
            return;
        }
        let Some(f) = &self.forwarding else {
            self.deferred_now.clear();
            return;
        };
        for (integration, n) in self.deferred_now.drain() {
            let Some(config) = (f.lookup)(&integration) else {
                continue;
            };
            for target in config
                .targets
                .iter()
                .filter(|t| t.spec.sends(crate::domain::forward::EventKind::Delivery))
            {
                f.forwarder.add_deferred(&integration, &target.spec.name, n);
                *self
                    .span_pending
                    .entry((integration.clone(), target.spec.name.clone()))
                    .or_default() += n;
            }
        }
    }

    /// Starts reading back the oldest closed span, when none is running and the routes
    /// are loaded.
    fn next_read_back(&mut self) -> Option<JoinHandle<std::io::Result<usize>>> {
        let f = self.forwarding.as_ref()?;
        let span = self.read_backs.front()?.clone();
        if !(f.routes_ready)()
            || self
                .read_back_failed
                .is_some_and(|t| t.elapsed() < self.config.status_interval)
        {
            return None;
        }
        Some(tokio::spawn(read_back(
            self.journal.clone(),
            f.clone(),
            span,
        )))
    }

    /// A read-back finished: the span is done, or stays to be tried again.
    fn read_back_done(&mut self, result: Result<std::io::Result<usize>, tokio::task::JoinError>) {
        let error = match result {
            Ok(Ok(imported)) => {
                if let Some(span) = self.read_backs.pop_front() {
                    self.config
                        .metrics
                        .forwards_deferred
                        .dec_by(span.deliveries);
                    if let Some(f) = &self.forwarding {
                        for ((integration, target), n) in &span.pending {
                            f.forwarder.add_deferred(integration, target, -n);
                        }
                    }
                    tracing::debug!(
                        from = span.from,
                        to = span.to,
                        imported,
                        "deferred forwards read back from the journal"
                    );
                    if span.only.is_some() {
                        self.replay_unread = false;
                    }
                }
                self.read_back_failed = None;
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::error!(error = %error, "cannot read deferred forwards back from the journal; the journal keeps them and this is retried");
        self.read_back_failed = Some(Instant::now());
    }

    /// Imports the jobs of folded entries into the outbox. False while some are not
    /// imported (the outbox cannot write): the checkpoint waits. Once the routes are
    /// loaded and everything is imported (the replayed entries' jobs first of all), the
    /// forwarder is released ([`Forwarder::release`]).
    async fn import_forwards(&mut self) -> bool {
        let Some(f) = &self.forwarding else {
            return true;
        };
        let routes_ready = (f.routes_ready)();
        if !self.unrendered.is_empty() {
            if !routes_ready {
                return false;
            }
            render_sliced(
                std::mem::take(&mut self.unrendered),
                &f.lookup,
                &mut self.unimported,
            )
            .await;
        }
        if !self.unimported.is_empty() {
            let jobs = std::mem::take(&mut self.unimported);
            if let Err(e) = f.forwarder.import(jobs.clone()).await {
                tracing::error!(error = %e, "cannot add forwards to the outbox; the journal keeps them and this is retried");
                self.unimported = jobs;
                return false;
            }
        }
        if routes_ready && !self.replay_unread {
            f.forwarder.release();
        }
        if self.unrendered.is_empty() && self.unimported.is_empty() {
            self.forwards_since = None;
        }
        true
    }

    /// Whether enough forwards wait (or the oldest long enough) for an import now.
    fn import_due(&self) -> bool {
        self.unrendered.len() + self.unimported.len() >= IMPORT_BATCH
            || self
                .forwards_since
                .is_some_and(|t| t.elapsed() >= IMPORT_DELAY)
    }

    /// Read access for tests and `get`.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Runs until `shutdown` fires, then drains the queue, flushes status (bounded by
    /// `flush_timeout`) and checkpoints. Returns the final ledger.
    pub async fn run(mut self, shutdown: CancellationToken) -> Ledger {
        let mut tick = tokio::time::interval(self.config.status_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pass: Option<JoinHandle<PassResult>> = None;
        let mut reading: Option<JoinHandle<std::io::Result<usize>>> = None;
        let mut inbox = Vec::with_capacity(FOLD_BATCH);
        // One waiter for the whole run, not one registered and dropped per wake-up.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        loop {
            let import_at = self
                .forwards_since
                .map(|t| tokio::time::Instant::from_std(t + IMPORT_DELAY));
            tokio::select! {
                biased;
                () = &mut cancelled => break,
                Some(result) = async { match reading.as_mut() { Some(h) => Some(h.await), None => None } } => {
                    reading = None;
                    self.read_back_done(result);
                }
                Some(result) = async { match pass.as_mut() { Some(h) => Some(h.await), None => None } } => {
                    pass = None;
                    match result {
                        Ok(results) => {
                            if self.finish_pass(results) {
                                self.mark_applied().await;
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "status write pass panicked"),
                    }
                    self.maybe_checkpoint(false).await;
                }
                // Folded in batches: one wake-up of this task per burst, not per delivery.
                received = self.queue.recv_many(&mut inbox, FOLD_BATCH) => {
                    if received == 0 {
                        break;
                    }
                    let defer = self.may_open_span();
                    for message in inbox.drain(..) {
                        self.fold(message, defer);
                    }
                    self.count_deferred();
                    self.close_span(false);
                    if self.import_due() {
                        self.import_forwards().await;
                    }
                }
                () = async { if let Some(at) = import_at { tokio::time::sleep_until(at).await } }, if import_at.is_some() => {
                    if !self.import_forwards().await {
                        // Routes not loaded yet, or the outbox cannot write: try again
                        // after another delay, not in a loop.
                        self.forwards_since = Some(Instant::now());
                    }
                }
                _ = tick.tick() => {
                    // Also what releases the forwarder after a start with no traffic.
                    self.import_forwards().await;
                    self.settle();
                    self.count_deferred();
                    self.close_span(false);
                    if pass.is_none() {
                        let updates = self.build_updates(Instant::now(), true);
                        if !updates.is_empty() {
                            pass = Some(tokio::spawn(write_all(self.writer.clone(), updates, self.config.write_concurrency)));
                        } else if self.backoff.is_empty() && self.pass_complete {
                            // Nothing is behind: everything folded so far is on the status.
                            self.mark_applied().await;
                        }
                    }
                    self.maybe_checkpoint(false).await;
                }
            }
            if reading.is_none() {
                reading = self.next_read_back();
            }
        }
        self.shutdown(pass, reading).await;
        self.ledger
    }

    async fn shutdown(
        &mut self,
        pass: Option<JoinHandle<PassResult>>,
        mut reading: Option<JoinHandle<std::io::Result<usize>>>,
    ) {
        let deadline = Instant::now() + self.config.flush_timeout;
        if let Some(handle) = pass {
            match tokio::time::timeout(self.config.flush_timeout, handle).await {
                Ok(Ok(results)) => {
                    if self.finish_pass(results) {
                        self.mark_applied().await;
                    }
                }
                Ok(Err(e)) => tracing::error!(error = %e, "status write pass panicked"),
                Err(_) => tracing::warn!("status write pass did not finish before shutdown"),
            }
        }
        // The HTTP server has stopped: wait (briefly) for appends still running.
        while self.counters.inflight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.settle();
        while let Ok(m) = self.queue.try_recv() {
            self.fold(m, false);
        }
        // Final flush (backoff and the write budget ignored): the last chance before the process ends, and with an emptyDir
        // journal what is not on the status now is lost with the pod. So backoff is
        // ignored and failed writes (a slow or briefly refusing API server on a
        // rollout) are retried until the deadline; what is left is reported.
        let mut unwritten;
        loop {
            self.backoff.clear();
            let updates = self.build_updates(Instant::now(), false);
            unwritten = updates.len();
            if updates.is_empty() {
                break;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            match tokio::time::timeout(
                remaining.max(Duration::from_millis(500)),
                write_all(self.writer.clone(), updates, self.config.write_concurrency),
            )
            .await
            {
                Ok(results) => {
                    if self.finish_pass(results) {
                        self.mark_applied().await;
                    }
                }
                Err(_) => break,
            }
            let pause = Duration::from_millis(200);
            if Instant::now() + pause >= deadline {
                continue;
            }
            tokio::time::sleep(pause).await;
        }
        // Deferred forwards go to the outbox now, within the deadline; what is left stays
        // in the journal (no checkpoint covers it) and is imported at the next start.
        loop {
            self.close_span(true);
            if reading.is_none() {
                self.read_back_failed = None;
                reading = self.next_read_back();
            }
            let Some(handle) = reading.take() else { break };
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, handle).await {
                Ok(result) => {
                    let failed = result.as_ref().map_or(true, |r| r.is_err());
                    self.read_back_done(result);
                    if failed {
                        break;
                    }
                }
                Err(_) => {
                    tracing::warn!(
                        "shutdown: deferred forwards not all read back from the journal in time; the next start imports them"
                    );
                    break;
                }
            }
        }
        if unwritten > 0 {
            tracing::error!(
                integrations = unwritten,
                flush_timeout = ?self.config.flush_timeout,
                "shutdown: the status of {unwritten} integrations could not be written in time; their deliveries stay in the journal, replayed by the next receiver on this volume (with an emptyDir volume they are lost with the pod: raise terminationGracePeriodSeconds or use persistence)"
            );
        }
        self.maybe_checkpoint(true).await;
    }

    /// `defer`: intake is saturated, so a new span of deferred forwards may open.
    fn fold(&mut self, message: Queued, defer: bool) {
        self.config
            .metrics
            .queue_depth
            .set(i64::try_from(self.queue.len()).unwrap_or(i64::MAX));
        match message {
            Queued::Accepted(seq, mut accepted) => {
                let above = seq > self.max_folded;
                self.max_folded = self.max_folded.max(seq);
                if self.forwarding.is_some() && accepted.forward.is_some() && !accepted.ignored {
                    let span = match &mut self.deferring {
                        Some(span) if seq >= span.0 => Some(span),
                        Some(_) => None,
                        None if defer && above => {
                            Some(self.deferring.insert((seq, seq, Instant::now())))
                        }
                        None => None,
                    };
                    if let Some(span) = span {
                        span.1 = span.1.max(seq);
                        self.deferred_in_span += 1;
                        self.config.metrics.forwards_deferred.inc();
                        match self.deferred_now.get_mut(&accepted.integration) {
                            Some(n) => *n += 1,
                            None => {
                                self.deferred_now.insert(accepted.integration.clone(), 1);
                            }
                        }
                        // The body stays in the journal only; incident events of this
                        // delivery are still imported below.
                        accepted.forward = None;
                    }
                }
                if let Some(folded) =
                    fold_with_settings(&mut self.ledger, seq, &accepted, &self.settings)
                    && self.forwarding.is_some()
                {
                    if self.unrendered.is_empty() {
                        self.forwards_since.get_or_insert_with(Instant::now);
                    }
                    self.unrendered.push(folded);
                }
            }
            Queued::Rejected(rejected) => self.ledger.record_reject(&rejected),
            Queued::Duplicate(duplicate) => self.ledger.record_duplicate(&duplicate),
        }
    }

    /// When no append is running, every sequence number up to the highest queued one has
    /// been queued: fold them all and close any gaps, so the ledger covers a clean prefix.
    fn settle(&mut self) {
        let limit = self.counters.max_seq.load(Ordering::SeqCst);
        if self.counters.inflight.load(Ordering::SeqCst) != 0 {
            return;
        }
        while let Ok(m) = self.queue.try_recv() {
            self.fold(m, false);
        }
        self.ledger.settle(limit);
    }

    /// The updates of the next pass: every integration whose status is behind and not
    /// backing off — or, when `budgeted` and the write budget is short, the least
    /// recently written of them (the rest wait for a later pass; their counts stay in the
    /// ledger, so nothing is lost).
    fn build_updates(&mut self, now: Instant, budgeted: bool) -> Vec<(StatusUpdate, u64)> {
        if let Some(f) = &self.forwarding {
            for key in f.forwarder.board.take_dirty() {
                self.ledger.touch(&key);
            }
        }
        // Shares that are not all zero are refreshed before they could age out.
        for key in &self.live_shares {
            if self
                .last_write
                .get(key)
                .is_none_or(|t| now.saturating_duration_since(*t) >= self.config.share_refresh)
            {
                self.ledger.touch(key);
            }
        }
        let covered = self.ledger.covered_seq();
        let degraded_after = self.config.degraded_after;
        let now_ms = (self.config.clock)();
        let unwritten = self.ledger.unwritten();
        let total_behind = unwritten.len();
        let mut due: Vec<String> = unwritten
            .into_iter()
            .filter(|key| self.backoff.get(key).is_none_or(|(_, next)| *next <= now))
            .collect();
        for key in &due {
            self.last_write.entry(key.clone()).or_insert(now);
        }
        let allowed = if budgeted {
            self.budget.available(now)
        } else {
            usize::MAX
        };
        let behind = due.len();
        if due.len() > allowed {
            // Least recently written first (ties by name, so the order is stable).
            due.sort_by(|a, b| {
                self.last_write
                    .get(a)
                    .cmp(&self.last_write.get(b))
                    .then_with(|| a.cmp(b))
            });
            due.truncate(allowed);
            self.counters
                .status_writes_deferred
                .fetch_add((behind - allowed) as u64, Ordering::Relaxed);
        }
        // Complete only when nothing behind waits, for the budget or for a backoff: the
        // journal's applied mark must not pass an entry whose counts are not written.
        self.pass_complete = due.len() == total_behind;
        self.counters
            .status_backlog
            .store(total_behind - due.len(), Ordering::Relaxed);
        if budgeted {
            self.budget.spend(due.len());
        }
        let mut updates = Vec::new();
        for key in due {
            let settings = (self.settings)(&key);
            let Some(entry) = self.ledger.get_mut(&key) else {
                continue;
            };
            // Replay folded with the default cap when the routes were not loaded yet.
            if settings.served && entry.incidents.capacity() != settings.max_tracked {
                entry.incidents.set_capacity(settings.max_tracked);
            }
            let Some((namespace, name)) = key.split_once('/') else {
                continue;
            };
            // Only for a served integration: its route created the series (and removes it).
            self.config.metrics.integrations.set_open_incidents(
                namespace,
                name,
                entry.incidents.open_count(),
            );
            let update = StatusUpdate {
                namespace: namespace.to_string(),
                name: name.to_string(),
                uid: entry.uid.clone(),
                totals: entry.totals,
                delta: entry.totals.since(&entry.written),
                last_received_ms: entry.last_received_ms,
                last_rejected_ms: entry.last_rejected_ms,
                last_reject_reason: entry.last_reject_reason.clone(),
                incidents: entry.incidents.clone(),
                keep_recent: settings.keep_recent,
                degraded: entry.degraded(degraded_after),
                consecutive_auth_failures: entry.consecutive_auth_failures,
                notices: std::mem::take(&mut entry.notices),
                built_at_ms: now_ms,
                forwarding: self
                    .forwarding
                    .as_ref()
                    .map(|f| f.forwarder.board.of(&key))
                    .filter(|v| !v.is_empty()),
                forward_events: self
                    .forwarding
                    .as_ref()
                    .map(|f| f.forwarder.board.take_events(&key))
                    .unwrap_or_default(),
                forward_targets: self.forwarding.as_ref().and_then(|f| {
                    (f.routes_ready)().then(|| {
                        (f.lookup)(&key)
                            .map(|c| c.targets.iter().map(|t| t.spec.name.clone()).collect())
                            .unwrap_or_default()
                    })
                }),
                replica: self.config.replica.clone(),
            };
            updates.push((update, entry.version));
        }
        self.pass_covers = covered;
        updates
    }

    /// Applies a pass's results; true when everything it covered reached the status (the
    /// caller then marks the journal: [`StatusLoop::mark_applied`]).
    fn finish_pass(&mut self, results: PassResult) -> bool {
        let mut all_ok = true;
        let now = Instant::now();
        for (update, version, result) in results {
            let key = update.key();
            match result {
                Ok(()) => {
                    self.counters.status_writes.fetch_add(1, Ordering::Relaxed);
                    self.config
                        .metrics
                        .status_writes
                        .get_or_create(&WriteLabels { outcome: "ok" })
                        .inc();
                    self.backoff.remove(&key);
                    if has_share(&update) {
                        self.live_shares.insert(key.clone());
                    } else {
                        self.live_shares.remove(&key);
                    }
                    self.last_write.insert(key.clone(), now);
                    self.ledger
                        .mark_written(&key, &update.uid, update.totals, version);
                    if let (Some(f), Some(sent)) = (&self.forwarding, &update.forwarding) {
                        f.forwarder.board.mark_written(&key, sent);
                    }
                }
                Err(StatusWriteError::Gone(_)) => {
                    self.config
                        .metrics
                        .status_writes
                        .get_or_create(&WriteLabels { outcome: "gone" })
                        .inc();
                    tracing::info!(integration = %key, "integration is gone; dropping its pending status");
                    self.backoff.remove(&key);
                    self.last_write.remove(&key);
                    self.live_shares.remove(&key);
                    self.ledger.remove(&key);
                }
                Err(StatusWriteError::Transient(reason)) => {
                    all_ok = false;
                    self.counters
                        .status_write_failures
                        .fetch_add(1, Ordering::Relaxed);
                    let failures = self
                        .backoff
                        .get(&key)
                        .map_or(0, |(n, _)| *n)
                        .saturating_add(1);
                    let delay = backoff_delay(self.config.status_interval, failures);
                    tracing::warn!(integration = %key, %reason, retry_in_ms = delay.as_millis() as u64, "status write failed");
                    self.backoff.insert(key.clone(), (failures, now + delay));
                    // Events not sent yet go out with the next successful write.
                    if let Some(entry) = self.ledger.get_mut(&key)
                        && entry.uid == update.uid
                    {
                        let mut notices = update.notices;
                        notices.append(&mut entry.notices);
                        entry.notices = notices;
                    }
                }
            }
        }
        all_ok && self.pass_complete
    }

    /// Tells the journal that everything the last pass covered reached the status. A
    /// writer that stores whole totals (standalone files) needs every entry after the
    /// checkpoint at replay, so its entries are released by checkpoints only.
    ///
    /// Entries under the mark are not replayed after a restart, so their forwards must be
    /// in the outbox, durably, first: imported ([`StatusLoop::import_forwards`]) and
    /// synced ([`Forwarder::sync`]). Otherwise the mark waits for the next pass.
    async fn mark_applied(&mut self) {
        if self.pass_covers == 0 || self.writer.stores_totals() {
            return;
        }
        if !self.forwards_durable().await {
            return;
        }
        // Entries whose forwards are still in the journal only must be replayed after a
        // crash.
        let covers = match self.unread_from() {
            Some(from) => self.pass_covers.min(from.saturating_sub(1)),
            None => self.pass_covers,
        };
        if covers > 0 {
            self.journal.mark_applied(covers);
        }
    }

    /// Imports every folded delivery's forwards and syncs the outbox: true once the
    /// journal may forget those deliveries (or when nothing forwards).
    async fn forwards_durable(&mut self) -> bool {
        if !self.import_forwards().await {
            return false;
        }
        let Some(f) = &self.forwarding else {
            return true;
        };
        match f.forwarder.sync().await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot sync the forward outbox; the journal keeps the deliveries until it can");
                false
            }
        }
    }

    async fn maybe_checkpoint(&mut self, force: bool) {
        let covered = self.ledger.covered_seq();
        if covered <= self.checkpointed_seq {
            return;
        }
        let failures = self.counters.append_failures.load(Ordering::Relaxed);
        let due = self.appends_refused_since_checkpoint()
            || self
                .last_checkpoint
                .is_none_or(|t| t.elapsed() >= self.config.checkpoint_interval);
        if !force && !due {
            return;
        }
        // The ledger covers deferred entries whose forwards are not read back yet.
        if self.unread_from().is_some() {
            return;
        }
        if !self.forwards_durable().await {
            return;
        }
        self.ledger.prune((self.config.clock)());
        let snapshot = match self.ledger.to_snapshot() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the ledger checkpoint");
                return;
            }
        };
        match self.journal.checkpoint(snapshot, covered).await {
            Ok(()) => {
                self.checkpointed_seq = covered;
                self.last_checkpoint = Some(Instant::now());
                self.span_gap_since = Instant::now();
                self.failures_at_checkpoint = failures;
            }
            Err(e) => tracing::warn!(error = %e, "journal checkpoint failed; will retry"),
        }
    }
}

/// Whether the share this update writes (`status.replicas[]`) is not all zero.
fn has_share(update: &StatusUpdate) -> bool {
    update.incidents.untracked_open() > 0
        || update
            .forwarding
            .iter()
            .flatten()
            .any(|f| f.pending != 0 || f.dead_lettered != 0)
}

/// Exponential backoff from one interval up to 30 s, with jitter so replicas that
/// failed together do not retry together.
fn backoff_delay(interval: Duration, failures: u32) -> Duration {
    let base = interval
        .saturating_mul(1u32 << failures.min(6))
        .min(Duration::from_secs(30));
    let mut byte = [0u8; 1];
    rand::fill(&mut byte);
    base + base.mul_f64(f64::from(byte[0]) / 1024.0)
}

async fn write_all<W: StatusWriter>(
    writer: Arc<W>,
    updates: Vec<(StatusUpdate, u64)>,
    concurrency: usize,
) -> PassResult {
    use futures::StreamExt as _;
    futures::stream::iter(updates)
        .map(|(update, version)| {
            let writer = writer.clone();
            async move {
                let result = writer.write(&update).await;
                (update, version, result)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{JournalStats, Recovered};
    use crate::receiver::ledger::MAX_REMEMBERED_IDS;

    fn entry(seq: u64) -> (u64, Vec<u8>) {
        let accepted = Accepted {
            integration: "ns/dd".into(),
            uid: "u".into(),
            delivery_id: Some(format!("d{seq}")),
            event_type: None,
            received_at_ms: 1_000 * seq as i64,
            ignored: false,
            incidents: Vec::new(),
            alerts_dropped: 0,
            replay_key: None,
            forward: None,
        };
        (seq, serde_json::to_vec(&accepted).expect("json"))
    }

    fn settings() -> SettingsLookup {
        Arc::new(|_: &str| IntegrationSettings::default())
    }

    fn delta(ledger: &Ledger) -> u64 {
        let e = ledger.get("ns/dd").expect("entry");
        e.totals.since(&e.written).accepted
    }

    /// Another task runs between two slices of a render, not only after the whole batch.
    #[tokio::test(flavor = "current_thread")]
    async fn a_render_batch_lets_other_tasks_run_between_slices() {
        let looked_up = Arc::new(AtomicUsize::new(0));
        let counter = looked_up.clone();
        let lookup: ForwardLookup = Arc::new(move |_: &str| {
            counter.fetch_add(1, Ordering::Relaxed);
            None
        });
        let folded: Vec<Folded> = (1..=(3 * RENDER_SLICE as u64))
            .map(|seq| Folded {
                accepted: serde_json::from_slice(&entry(seq).1).expect("accepted"),
                changes: Vec::new(),
            })
            .collect();
        let seen = looked_up.clone();
        let other = tokio::spawn(async move { seen.load(Ordering::Relaxed) });
        let mut out = Vec::new();
        render_sliced(folded, &lookup, &mut out).await;
        let when_the_other_ran = other.await.expect("task");
        assert_eq!(when_the_other_ran, RENDER_SLICE);
        assert_eq!(looked_up.load(Ordering::Relaxed), 3 * RENDER_SLICE);
    }

    #[test]
    fn replay_adds_only_what_the_status_does_not_show() {
        // Checkpoint after 3 entries, none written yet.
        let (at_checkpoint, _) = replay(
            None,
            false,
            (1..=3).map(entry),
            &settings(),
            MAX_REMEMBERED_IDS,
        );
        let snapshot = at_checkpoint.to_snapshot().expect("snapshot");

        // Applied mark not past the checkpoint: the checkpoint's 3 are still to write,
        // plus the 2 replayed entries.
        let (ledger, report) = replay(
            Some(&snapshot),
            false,
            (4..=5).map(entry),
            &settings(),
            MAX_REMEMBERED_IDS,
        );
        assert_eq!((delta(&ledger), report.replayed), (5, 2));

        // Applied mark past the checkpoint (the journal then skips entries up to it, here
        // 4): everything the checkpoint counted is on the status already.
        let (ledger, _) = replay(
            Some(&snapshot),
            true,
            (5..=5).map(entry),
            &settings(),
            MAX_REMEMBERED_IDS,
        );
        assert_eq!(delta(&ledger), 1);
        assert_eq!(ledger.covered_seq(), 5);
    }

    #[test]
    fn applied_entries_after_the_checkpoint_reseed_dedup_without_counting() {
        let (at_checkpoint, _) = replay(
            None,
            false,
            (1..=3).map(entry),
            &settings(),
            MAX_REMEMBERED_IDS,
        );
        let snapshot = at_checkpoint.to_snapshot().expect("snapshot");
        let recovered = Recovered {
            snapshot: Some(snapshot),
            entries: vec![entry(6)],
            applied: vec![entry(4), entry(5)],
        };
        let stats = JournalStats {
            applied_seq: 5,
            snapshot_seq: 3,
            ..JournalStats::default()
        };
        let (ledger, report) = replay_recovered(recovered, &stats, &settings(), MAX_REMEMBERED_IDS);
        // Only entry 6 is counted again; 4 and 5 are on the status already.
        assert_eq!((delta(&ledger), report.replayed), (1, 1));
        // …but a retry of delivery d4 or d5 after the restart is still a duplicate.
        let ids: Vec<u128> = ledger.remembered_ids(0).map(|r| r.digest()).collect();
        for id in ["d1", "d4", "d5", "d6"] {
            let digest = crate::receiver::dedup::digest("ns/dd", id);
            assert!(ids.contains(&digest), "{id} not remembered");
        }
    }

    #[test]
    fn undecodable_entries_are_skipped_and_reported() {
        let entries = vec![entry(1), (2, b"not json".to_vec()), entry(3)];
        let (ledger, report) = replay(None, false, entries, &settings(), MAX_REMEMBERED_IDS);
        assert_eq!(
            (report.replayed, report.undecodable, report.max_seq),
            (2, 1, 3)
        );
        assert_eq!(ledger.covered_seq(), 3);
    }
}
