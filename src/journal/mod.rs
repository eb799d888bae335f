//! The receiver's durable delivery journal: an append-only segment log with group commit.
//!
//! A delivery is acknowledged (2xx) only after its effect is in this journal and fsync'd,
//! so a `kill -9`, a node drain or an API-server outage cannot lose it: on start the
//! receiver replays what the API server has not confirmed yet.
//!
//! # Why a hand-written segment log and not an embedded database
//!
//! The journal's workload is the easy case for a log and the awkward one for a database:
//! records are opaque, written once in order, read back only at start, and dropped in bulk
//! once folded into a snapshot. There are no keys, no updates and no range queries. An
//! embedded store (sled, redb, RocksDB, SQLite) would bring its own write amplification
//! (B-tree pages or LSM compaction for data that is deleted minutes later), its own
//! durability knobs that must be set exactly right, its own background threads and file
//! formats to explain to an operator, and for RocksDB/SQLite a C toolchain in the build.
//! The log needed here is about 1,500 lines (half of them comments) that say precisely
//! when data is durable:
//!
//! * **Group commit.** One dedicated OS thread owns the active segment. Appends queue to it
//!   over a channel; it writes every queued record as one *batch* with one `write` and one
//!   `sync_data`, then wakes all of that batch's waiters. While one fsync runs, the next
//!   batch fills by itself, so fsyncs per second stay flat as appenders grow and an
//!   append waits at most for the fsync in progress plus its own ("natural" group
//!   commit: the bound is the disk's fsync latency, 0.1–0.3 ms on a local SSD, a few ms
//!   on network block storage). [`JournalConfig::group_commit_window`] adds a wait for
//!   company: the writer keeps collecting while the batch is smaller than the previous
//!   one, until the oldest waiter has waited that long (never beyond
//!   [`JournalConfig::max_batch`] records). Every fsync costs CPU and, on virtual disks,
//!   a host flush whose slow tail stalls the batch in flight, so fewer, larger commits
//!   are both cheaper and steadier (the receiver's default is 400 µs). The async runtime
//!   never blocks on disk I/O.
//! * **Framing.** Each record carries its length, its seq and a CRC32; each batch has a
//!   checksummed header with its length and first seq (format in `format.rs`). The batch
//!   header is what makes recovery precise: only the *last batch of the newest segment*
//!   can be a write cut short by a crash (the writer never starts a batch before the
//!   previous one was fsync'd). Such a batch is short or has sectors that read as zeros
//!   (it is only ever written over zeros): it is truncated with a warning. The last batch
//!   complete but failing its checksum was fsync'd and acknowledged before it was
//!   damaged: it is cut off too, so the receiver can start, but reported as lost
//!   deliveries (error log, `hookwarden_journal_corrupt_batches_total`,
//!   [`JournalStats::corrupt_batches`], [`Journal::lost_at_open`]) with its bytes copied
//!   beside the segment, and its seqs are never handed out again. Damage followed by an
//!   intact batch, or in an older segment, is also acknowledged data: [`Journal::open`]
//!   fails with [`JournalError::Corrupt`] naming the file and byte offset and leaves the
//!   file untouched for the operator.
//! * **Zeros written ahead.** When a batch reaches past the end of the active segment's
//!   file, the writer also writes zeros up to the next 256 KiB boundary, so the following
//!   batches overwrite zeros in place and their `fdatasync` need not write the inode too
//!   (2 device requests per commit instead of 3 on ext4). Recovery reads zeros where a
//!   batch would start as the segment's end; sealed segments are trimmed.
//! * **Durability.** New segment files and the snapshot rename are followed by an fsync of
//!   the directory, so a file that holds acknowledged records cannot vanish in a crash.
//! * **Fsync gate.** After a failed fsync Linux may have dropped the dirty pages and a
//!   retried fsync can report success for data that is gone. So a failed fsync marks the
//!   journal *failed*: every later append and checkpoint answers [`JournalError::Io`]
//!   until the journal is reopened, which re-reads and validates what is really on disk.
//!   A failed `write` (typically `ENOSPC`) is different: nothing was acknowledged, the
//!   segment is truncated back to its last fsync'd length and the journal stays usable.
//!   So is an fsync that fails with `ENOSPC`/`EDQUOT` (a full volume reported at
//!   writeback): block allocation failed before any device write, so acknowledged data
//!   is untouched; the batch is cut off, the cut fsync'd, and the journal stays usable
//!   (if that fsync fails too, the journal fails as above).
//! * **Compaction.** [`Journal::checkpoint`] writes the caller's folded state as a
//!   snapshot (temp file, fsync, rename, directory fsync) covering everything up to a seq,
//!   on the blocking pool so appends keep committing meanwhile, then has the writer
//!   delete the segments wholly covered by it. Size is capped by
//!   [`JournalConfig::max_bytes`]; beyond it appends fail with [`JournalError::Full`] until
//!   a checkpoint frees space. Checkpoints themselves are never refused for size.
//! * **Applied marker.** [`Journal::mark_applied`] is an atomic store. The writer thread
//!   writes it to a small `applied` file (rename, *no* fsync) at most once a second and
//!   at close; every checkpoint also records it in the fsync'd snapshot. Replay returns
//!   entries after both the snapshot and the applied marker. A marker that a crash loses
//!   only means entries are replayed again, never that an entry is skipped: marks made
//!   before the last checkpoint are never re-delivered, later ones may be (consumers must
//!   be idempotent, which the status writer is: it merges by id and ordering).
//!
//! Two processes must never append to one directory: a `LOCK` file is held with an
//! exclusive advisory lock for the writer's lifetime.

mod format;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;

use self::writer::{Append, Request, Writer};

/// Position of a record in the journal: assigned on append, strictly increasing from 1,
/// never reused (not even across restarts or compactions).
pub type Seq = u64;

/// Where and how the journal keeps its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalConfig {
    /// Directory holding segments, snapshot and markers; created when missing. One
    /// journal per directory (locked).
    pub dir: PathBuf,
    /// Cap on bytes on disk (segments + snapshot). Appends beyond it fail with
    /// [`JournalError::Full`] until a checkpoint frees space.
    pub max_bytes: u64,
    /// A new segment is started when the active one reaches this size (it may exceed it
    /// by one batch). Smaller segments are compacted sooner; larger ones mean fewer files.
    pub segment_bytes: u64,
    /// Extra time the oldest queued append may wait for company before its batch is
    /// written (only while the batch is smaller than the previous one, so a lone append
    /// after a quiet spell is written at once). Zero, the default here, writes whatever
    /// queued during the previous fsync at once. The receiver sets 400 µs
    /// (`--journal-commit-window`): on a virtio disk that cut fsyncs to a third, which
    /// gave +18% deliveries/s and a lower p99 (docs/bench.md).
    pub group_commit_window: Duration,
    /// Most records written by one group commit.
    pub max_batch: usize,
}

impl JournalConfig {
    /// Defaults for a receiver: 1 GiB cap, 64 MiB segments, no extra commit wait, 1024
    /// records per batch.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: 1 << 30,
            segment_bytes: 64 << 20,
            group_commit_window: Duration::ZERO,
            max_batch: 1024,
        }
    }
}

/// What [`Journal::open`] found on disk.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The state of the last [`Journal::checkpoint`], if any.
    pub snapshot: Option<Vec<u8>>,
    /// Entries appended after the snapshot and not marked applied, in seq order.
    pub entries: Vec<(Seq, Vec<u8>)>,
    /// Entries after the snapshot that were already marked applied, in seq order: their
    /// effects are on the status, but what they carry (delivery ids for deduplication)
    /// is not yet in any snapshot, so consumers may re-learn it without re-applying.
    pub applied: Vec<(Seq, Vec<u8>)>,
}

impl std::fmt::Debug for Recovered {
    // Records are opaque and may be large: show their shape, not their bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovered")
            .field("snapshot_bytes", &self.snapshot.as_ref().map(Vec::len))
            .field("entries", &self.entries.len())
            .field("applied", &self.applied.len())
            .field("first_seq", &self.entries.first().map(|(s, _)| *s))
            .field("last_seq", &self.entries.last().map(|(s, _)| *s))
            .finish()
    }
}

/// Receives what [`Journal::open_visiting`] recovers, while the segments are scanned:
/// first the checkpoint, then every record after it in seq order, each either
/// [`applied`](RecoveryVisitor::applied) (marked applied) or
/// [`entry`](RecoveryVisitor::entry) (to replay). Only records of intact batches are
/// handed over. A receiver restarting with a million unapplied deliveries folds them as
/// they are read instead of holding them all (~390 MiB for 1,000,000 in a `Vec`).
pub trait RecoveryVisitor: Send {
    /// The last checkpoint's payload, if any; `written`: the applied mark lies beyond it,
    /// so everything it counted is already on the status.
    fn snapshot(&mut self, payload: Option<&[u8]>, written: bool);
    /// A record after the checkpoint that is not marked applied: replay it.
    fn entry(&mut self, seq: Seq, record: &[u8]);
    /// A record after the checkpoint already marked applied: its effects are on the
    /// status, but what it carries (delivery ids) is in no checkpoint yet.
    fn applied(&mut self, seq: Seq, record: &[u8]);
}

impl RecoveryVisitor for Recovered {
    fn snapshot(&mut self, payload: Option<&[u8]>, _written: bool) {
        self.snapshot = payload.map(<[u8]>::to_vec);
    }
    fn entry(&mut self, seq: Seq, record: &[u8]) {
        self.entries.push((seq, record.to_vec()));
    }
    fn applied(&mut self, seq: Seq, record: &[u8]) {
        self.applied.push((seq, record.to_vec()));
    }
}

/// A batch of acknowledged deliveries that [`Journal::open`] found damaged and cut off:
/// the newest segment's last batch, complete (so it had been fsync'd and answered 2xx)
/// but failing its checksum. Its deliveries are lost; the receiver should say so where
/// an operator looks (a condition, an Event), not only in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostBatch {
    /// The segment it was cut from.
    pub path: PathBuf,
    /// Byte offset of the damage in that file.
    pub offset: u64,
    pub reason: String,
    /// First seq of the batch and how many records it held, as its header says (`None`
    /// when the header itself is damaged).
    pub first_seq: Option<Seq>,
    pub records: Option<u32>,
    /// Where its bytes were copied before the cut (`<segment>.damaged-<offset>`), if
    /// the copy could be written.
    pub kept_at: Option<PathBuf>,
}

/// A point-in-time view of the journal, for `/metrics`, logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Bytes of segments and snapshot on disk.
    pub bytes_on_disk: u64,
    /// Entries a restart would replay now: after both the snapshot and the applied mark.
    pub pending_entries: u64,
    /// Seq of the last durable entry (0 when none was ever appended).
    pub last_seq: Seq,
    /// Highest seq marked applied.
    pub applied_seq: Seq,
    /// Seq covered by the last checkpoint's snapshot.
    pub snapshot_seq: Seq,
    /// Segment files on disk.
    pub segments: u64,
    /// Segment fsyncs (group commits) since open.
    pub fsyncs: u64,
    /// Entries appended since open.
    pub appended_entries: u64,
    /// True after an fsync failure: every write is refused until reopened.
    pub failed: bool,
    /// Complete batches found damaged by the last open (acknowledged deliveries lost;
    /// details in [`Journal::lost_at_open`]). Zero unless the disk corrupted data.
    pub corrupt_batches: u64,
}

/// Why an append, checkpoint or open did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The size cap is reached; space is freed by the next checkpoint. Transient: answer
    /// 503 + Retry-After.
    #[error("journal is full (size cap reached); retry after the next checkpoint")]
    Full,
    /// The disk refused a read or write (or an fsync failed earlier: see the fsync gate in
    /// the module docs). Transient from the sender's point of view: 503 + Retry-After.
    #[error("journal I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Data that had been fsync'd cannot be read back. `open` refuses to start rather than
    /// silently drop acknowledged deliveries; the file is left untouched.
    #[error(
        "journal file {} is corrupt at byte offset {offset}: {reason}; it is left untouched: \
         keep a copy for analysis, then move it out of the journal directory (entries in it \
         will not be replayed) to start again",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The journal was closed.
    #[error("journal is closed")]
    Closed,
}

/// The journal's Prometheus metrics. [`Journal::open`] creates and registers them; a
/// process that reopens its journal (after an fsync failure) creates them once, registers
/// them once, and passes clones to [`Journal::open_with_metrics`], so the names are never
/// registered twice and the series continue across the reopen.
#[derive(Clone, Debug)]
pub struct JournalMetrics {
    bytes: Gauge,
    pending: Gauge,
    replayed: Counter,
    fsync_seconds: Histogram,
    batch_entries: Histogram,
    corrupt_batches: Counter,
    /// `JournalConfig::max_bytes`, so alerts can compare `bytes` with the cap.
    limit_bytes: Gauge,
    /// fsyncs that failed (volume full or an I/O error); see the fsync gate above.
    fsync_failures: Counter,
}

impl Default for JournalMetrics {
    fn default() -> Self {
        Self {
            bytes: Gauge::default(),
            pending: Gauge::default(),
            replayed: Counter::default(),
            corrupt_batches: Counter::default(),
            limit_bytes: Gauge::default(),
            fsync_failures: Counter::default(),
            // 50 µs .. ~1.6 s
            fsync_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            // 1 .. 4096
            batch_entries: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
        }
    }
}

impl JournalMetrics {
    /// Registers every journal metric on `registry` (once per registry).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "hookwarden_journal_bytes",
            "Bytes of journal segments and snapshot on disk",
            self.bytes.clone(),
        );
        registry.register(
            "hookwarden_journal_pending_entries",
            "Journal entries not yet applied to the API server (replayed after a restart)",
            self.pending.clone(),
        );
        registry.register(
            "hookwarden_journal_replayed_entries",
            "Journal entries replayed when the journal was opened",
            self.replayed.clone(),
        );
        registry.register(
            "hookwarden_journal_fsync_seconds",
            "Duration of journal segment fsyncs (one per group commit)",
            self.fsync_seconds.clone(),
        );
        registry.register(
            "hookwarden_journal_batch_entries",
            "Entries written per group commit",
            self.batch_entries.clone(),
        );
        registry.register(
            "hookwarden_journal_corrupt_batches",
            "Complete journal batches found damaged when the journal was opened: acknowledged deliveries lost (a torn write cut short by a crash is not counted)",
            self.corrupt_batches.clone(),
        );
        registry.register(
            "hookwarden_journal_limit_bytes",
            "The journal's cap (--journal-max-bytes): appends fail with 503 once the journal, with the forward outbox, reaches it",
            self.limit_bytes.clone(),
        );
        registry.register(
            "hookwarden_journal_fsync_failures",
            "Journal fsyncs that failed: volume full (appends refused until space is freed) or an I/O error (the journal refuses writes until the receiver reopens it)",
            self.fsync_failures.clone(),
        );
    }
}

/// Test-only fault injection: a disk that fails writes or fsyncs on demand.
#[cfg(test)]
#[derive(Default)]
struct Faults {
    fail_write: AtomicBool,
    fail_sync: AtomicBool,
    /// Non-zero: every fsync fails with this errno (28 ENOSPC, 122 EDQUOT, 5 EIO).
    sync_errno: std::sync::atomic::AtomicI32,
}

/// State the writer thread publishes and the handles read without locking.
struct Shared {
    last_seq: AtomicU64,
    applied_seq: AtomicU64,
    snapshot_seq: AtomicU64,
    bytes: AtomicU64,
    segments: AtomicU64,
    fsyncs: AtomicU64,
    appended: AtomicU64,
    /// Appends put on the channel so far (counted after each send).
    sent: AtomicU64,
    /// While the writer waits for company: the `sent` count that completes its batch, at
    /// which the appender unparks it (`u64::MAX`: not waiting that way).
    wake_at: AtomicU64,
    failed: AtomicBool,
    corrupt_batches: AtomicU64,
    metrics: JournalMetrics,
    #[cfg(test)]
    faults: Faults,
}

impl Shared {
    fn pending(&self) -> u64 {
        let done = self
            .applied_seq
            .load(Ordering::Acquire)
            .max(self.snapshot_seq.load(Ordering::Acquire));
        self.last_seq.load(Ordering::Acquire).saturating_sub(done)
    }

    fn update_pending(&self) {
        self.metrics
            .pending
            .set(i64::try_from(self.pending()).unwrap_or(i64::MAX));
    }
}

struct Inner {
    requests: mpsc::Sender<Request>,
    /// The writer thread, to unpark it (see `Writer::collect`).
    writer: std::thread::Thread,
    shared: Arc<Shared>,
    dir: PathBuf,
    checkpointing: tokio::sync::Mutex<()>,
    lost: Option<LostBatch>,
}

/// Handle to an open journal. Cheap to clone; all clones share one writer thread, which
/// stops after [`Journal::close`] or when the last clone is dropped.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Journal {
    /// Opens (or creates) the journal in `config.dir`, recovering after a crash: a torn
    /// tail is truncated, a damaged but complete last batch is cut off and reported (see
    /// [`Journal::lost_at_open`]), a corrupt middle is [`JournalError::Corrupt`].
    /// Returns the last snapshot and the entries to replay. Metrics are registered on
    /// `registry` when given (see [`JournalMetrics`] for reopening in one process).
    pub async fn open(
        config: JournalConfig,
        registry: Option<&mut Registry>,
    ) -> Result<(Journal, Recovered), JournalError> {
        Self::open_visiting(config, registry, Recovered::default()).await
    }

    /// [`Journal::open`] handing what it recovers to `visitor` as the segments are
    /// scanned, instead of collecting it; returns the visitor.
    pub async fn open_visiting<V: RecoveryVisitor + 'static>(
        config: JournalConfig,
        registry: Option<&mut Registry>,
        visitor: V,
    ) -> Result<(Journal, V), JournalError> {
        let metrics = JournalMetrics::default();
        let opened = Self::open_with_metrics(config, metrics.clone(), visitor).await?;
        if let Some(registry) = registry {
            metrics.register(registry);
        }
        Ok(opened)
    }

    /// [`Journal::open`] reporting into metrics the caller created and registered.
    pub async fn open_with_metrics<V: RecoveryVisitor + 'static>(
        config: JournalConfig,
        metrics: JournalMetrics,
        mut visitor: V,
    ) -> Result<(Journal, V), JournalError> {
        let invalid = |what: &str| {
            JournalError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("journal config: {what}"),
            ))
        };
        if config.max_batch == 0 {
            return Err(invalid("max_batch must be at least 1"));
        }
        if config.segment_bytes == 0 || config.max_bytes == 0 {
            return Err(invalid("segment_bytes and max_bytes must be positive"));
        }
        metrics
            .limit_bytes
            .set(i64::try_from(config.max_bytes).unwrap_or(i64::MAX));
        let shared = Arc::new(Shared {
            last_seq: AtomicU64::new(0),
            applied_seq: AtomicU64::new(0),
            snapshot_seq: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            segments: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            wake_at: AtomicU64::new(u64::MAX),
            failed: AtomicBool::new(false),
            corrupt_batches: AtomicU64::new(0),
            metrics,
            #[cfg(test)]
            faults: Faults::default(),
        });
        let for_writer = Arc::clone(&shared);
        let dir = config.dir.clone();
        let (writer, replayed, lost, visitor) = tokio::task::spawn_blocking(move || {
            Writer::open(config, for_writer, &mut visitor)
                .map(|(writer, replayed, lost)| (writer, replayed, lost, visitor))
        })
        .await
        .map_err(|e| {
            JournalError::Io(std::io::Error::other(format!(
                "journal open task failed: {e}"
            )))
        })??;
        let (requests, rx) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("hookwarden-journal".into())
            .spawn(move || writer.run(rx))?
            .thread()
            .clone();
        tracing::info!(replayed, "journal opened");
        Ok((
            Journal {
                inner: Arc::new(Inner {
                    requests,
                    writer,
                    shared,
                    dir,
                    checkpointing: tokio::sync::Mutex::new(()),
                    lost,
                }),
            },
            visitor,
        ))
    }

    /// Appends one opaque record; resolves only after it is fsync'd. Concurrent appends
    /// share one write + fsync (group commit). Dropping the future does not withdraw the
    /// record: it may still be written (and then replayed), like any unanswered delivery.
    pub async fn append(&self, record: Vec<u8>) -> Result<Seq, JournalError> {
        let (reply, done) = oneshot::channel();
        let append = Append {
            record,
            enqueued: Instant::now(),
            reply,
        };
        self.inner
            .requests
            .send(Request::Append(append))
            .map_err(|_| JournalError::Closed)?;
        let shared = &self.inner.shared;
        let sent = shared.sent.fetch_add(1, Ordering::SeqCst) + 1;
        let wake_at = shared.wake_at.load(Ordering::SeqCst);
        if sent >= wake_at
            && shared
                .wake_at
                .compare_exchange(wake_at, u64::MAX, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.inner.writer.unpark();
        }
        done.await.map_err(|_| JournalError::Closed)?
    }

    /// Everything up to and including `seq` has been applied downstream (status confirmed
    /// by the API server): those entries need not be replayed. Never blocks; persisted
    /// within a second and at every checkpoint. Marks never move backwards, and cannot
    /// reach past the last appended entry.
    pub fn mark_applied(&self, seq: Seq) {
        let shared = &self.inner.shared;
        let clamped = seq.min(shared.last_seq.load(Ordering::Acquire));
        shared.applied_seq.fetch_max(clamped, Ordering::AcqRel);
        shared.update_pending();
    }

    /// Compaction: writes `snapshot` (the caller's folded state) as covering every entry
    /// up to `covers_seq`, durably (fsync + atomic rename + directory fsync), then deletes
    /// segments it wholly covers. After a restart `open` returns this snapshot plus the
    /// entries after `covers_seq` (and after the applied mark). `covers_seq` must lie
    /// between the previous checkpoint's and the last appended seq.
    pub async fn checkpoint(&self, snapshot: Vec<u8>, covers_seq: Seq) -> Result<(), JournalError> {
        // One checkpoint at a time: two concurrent ones would race on the temp file.
        let _one = self.inner.checkpointing.lock().await;
        let shared = &self.inner.shared;
        if shared.failed.load(Ordering::Acquire) {
            return Err(JournalError::Io(std::io::Error::other(
                "journal failed earlier (fsync error); it refuses writes until it is reopened",
            )));
        }
        let last = shared.last_seq.load(Ordering::Acquire);
        let previous = shared.snapshot_seq.load(Ordering::Acquire);
        if covers_seq > last || covers_seq < previous {
            return Err(JournalError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "checkpoint must cover a seq between the previous checkpoint ({previous}) and the last appended entry ({last}), got {covers_seq}"
                ),
            )));
        }
        let applied = shared.applied_seq.load(Ordering::Acquire);
        // The snapshot (possibly megabytes) is written and fsync'd on the blocking pool,
        // not on the writer thread: appends keep committing meanwhile.
        let dir = self.inner.dir.clone();
        let snapshot_len = tokio::task::spawn_blocking(move || {
            writer::write_snapshot(&dir, covers_seq, applied, &snapshot)
        })
        .await
        .map_err(|e| {
            JournalError::Io(std::io::Error::other(format!(
                "journal checkpoint task failed: {e}"
            )))
        })??;
        let (reply, done) = oneshot::channel();
        self.inner
            .requests
            .send(Request::Compact {
                covers_seq,
                snapshot_len,
                applied,
                reply,
            })
            .map_err(|_| JournalError::Closed)?;
        self.inner.writer.unpark();
        done.await.map_err(|_| JournalError::Closed)?
    }

    /// Reads back the entries with seq in `from..=to`, in order, handing each to `visit`
    /// until it returns false. Blocking (positioned reads of the segment files): call it
    /// on the blocking pool. Meant for entries already committed and not yet compacted
    /// (the caller holds the checkpoint below `from`); seqs that were never written (a
    /// failed append) are simply absent. What the receiver uses it for: forwards deferred
    /// while intake was saturated are read back from the journal rather than held in
    /// memory (`receiver::runtime`, "Deferred forwards").
    pub fn read_entries(
        &self,
        from: Seq,
        to: Seq,
        visit: &mut dyn FnMut(Seq, &[u8]) -> bool,
    ) -> std::io::Result<()> {
        if from > to {
            return Ok(());
        }
        let names = writer::list_segments(&self.inner.dir)?;
        // The segment holding `from` is the last one named at or below it.
        let start = names
            .iter()
            .rposition(|(first, _)| *first <= from)
            .unwrap_or(0);
        for (first, path) in &names[start..] {
            if *first > to {
                break;
            }
            let file = match std::fs::File::open(path) {
                Ok(f) => f,
                // Compacted meanwhile: it held only entries below the checkpoint.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if format::read_range(&file, *first, from, to, visit)? {
                break;
            }
        }
        Ok(())
    }

    /// Current sizes and positions.
    pub fn stats(&self) -> JournalStats {
        let shared = &self.inner.shared;
        JournalStats {
            bytes_on_disk: shared.bytes.load(Ordering::Acquire),
            pending_entries: shared.pending(),
            last_seq: shared.last_seq.load(Ordering::Acquire),
            applied_seq: shared.applied_seq.load(Ordering::Acquire),
            snapshot_seq: shared.snapshot_seq.load(Ordering::Acquire),
            segments: shared.segments.load(Ordering::Acquire),
            fsyncs: shared.fsyncs.load(Ordering::Relaxed),
            appended_entries: shared.appended.load(Ordering::Relaxed),
            failed: shared.failed.load(Ordering::Acquire),
            corrupt_batches: shared.corrupt_batches.load(Ordering::Acquire),
        }
    }

    /// The batch of acknowledged deliveries that opening found damaged and cut off, if
    /// any (see [`LostBatch`]; counted in [`JournalStats::corrupt_batches`] and
    /// `hookwarden_journal_corrupt_batches_total`).
    pub fn lost_at_open(&self) -> Option<&LostBatch> {
        self.inner.lost.as_ref()
    }

    /// Writes everything queued before this call, persists the applied mark and stops the
    /// writer thread (releasing the directory lock). Other clones then get
    /// [`JournalError::Closed`]. Returns the failure if the journal had failed.
    pub async fn close(self) -> Result<(), JournalError> {
        let (reply, done) = oneshot::channel();
        self.inner
            .requests
            .send(Request::Close { reply })
            .map_err(|_| JournalError::Closed)?;
        self.inner.writer.unpark();
        done.await.map_err(|_| JournalError::Closed)?
    }
}

/// Entry points for the fuzz targets in `fuzz/` (the on-disk decoders are private).
/// Not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use super::{Seq, format};

    /// What [`scan_segment`] found: the records yielded, then `Ok(Some(valid_len))`,
    /// `Ok(None)` for an unborn segment, or `Err(offset)` of the corruption.
    pub type ScanResult = (Vec<(Seq, Vec<u8>)>, Result<Option<u64>, u64>);

    /// Recovery's scan of one segment file.
    pub fn scan_segment(bytes: &[u8], first_seq: Seq, is_last: bool) -> ScanResult {
        let mut seen = Vec::new();
        let result = format::scan_segment(bytes, first_seq, is_last, |seq, payload| {
            seen.push((seq, payload.to_vec()))
        });
        let result = match result {
            Ok(format::Scan::Unborn) => Ok(None),
            Ok(format::Scan::Valid { valid_len, .. }) => Ok(Some(valid_len)),
            Err(damage) => Err(damage.offset),
        };
        (seen, result)
    }

    /// A segment holding `batches` (each a list of records), numbered from `first_seq`,
    /// exactly as the writer lays it out.
    pub fn encode_segment(first_seq: Seq, batches: &[Vec<Vec<u8>>]) -> Vec<u8> {
        let mut out = format::encode_segment_header(first_seq).to_vec();
        let mut seq = first_seq;
        let mut buf = Vec::new();
        for batch in batches {
            let mut encoder = format::BatchEncoder::begin(&mut buf, seq);
            for record in batch {
                encoder.push(seq, record);
                seq += 1;
            }
            encoder.finish();
            out.extend_from_slice(&buf);
        }
        out
    }

    /// The snapshot file: `(covers_seq, applied_seq, payload)` when it decodes.
    pub fn decode_snapshot(bytes: &[u8]) -> Option<(Seq, Seq, Vec<u8>)> {
        format::decode_snapshot(bytes)
            .ok()
            .map(|s| (s.covers_seq, s.applied_seq, s.payload))
    }

    pub fn encode_snapshot(covers_seq: Seq, applied_seq: Seq, payload: &[u8]) -> Vec<u8> {
        format::encode_snapshot(covers_seq, applied_seq, payload)
    }

    /// The applied marker file.
    pub fn decode_applied(bytes: &[u8]) -> Option<Seq> {
        format::decode_applied(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path) -> JournalConfig {
        JournalConfig::new(dir.join("journal"))
    }

    #[tokio::test]
    async fn failed_fsync_fails_the_journal_until_reopened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, _) = Journal::open(config(dir.path()), None).await.expect("open");
        assert_eq!(journal.append(b"before".to_vec()).await.expect("append"), 1);

        journal
            .inner
            .shared
            .faults
            .fail_sync
            .store(true, Ordering::Release);
        assert!(matches!(
            journal.append(b"lost".to_vec()).await,
            Err(JournalError::Io(_))
        ));
        // The disk "recovers", but the journal must not retry fsync on the same file.
        journal
            .inner
            .shared
            .faults
            .fail_sync
            .store(false, Ordering::Release);
        assert!(matches!(
            journal.append(b"after".to_vec()).await,
            Err(JournalError::Io(_))
        ));
        assert!(matches!(
            journal.checkpoint(b"s".to_vec(), 1).await,
            Err(JournalError::Io(_))
        ));
        assert!(journal.stats().failed);
        assert!(matches!(journal.close().await, Err(JournalError::Io(_))));

        // Reopening re-reads what is on disk and accepts writes again. The record whose
        // fsync failed was cut off: it was never acknowledged.
        let (journal, recovered) = Journal::open(config(dir.path()), None)
            .await
            .expect("reopen");
        assert_eq!(recovered.entries, vec![(1, b"before".to_vec())]);
        assert!(!journal.stats().failed);
        let seq = journal
            .append(b"again".to_vec())
            .await
            .expect("append after reopen");
        assert_eq!(seq, 2);
        journal.close().await.expect("close");
    }

    /// Issue 18, finding 13: a volume that fills up, reported at fsync (delayed
    /// allocation, copy-on-write, quotas), must not become a restart loop: the appends
    /// fail (the receiver answers 503 + Retry-After), `/healthz` stays green, and the
    /// retry succeeds when space is back. Everything acknowledged stays readable and the
    /// refused batch never comes back.
    #[tokio::test]
    async fn out_of_space_at_fsync_fails_the_appends_not_the_journal() {
        for errno in [28, 122] {
            let dir = tempfile::tempdir().expect("tempdir");
            let (journal, _) = Journal::open(config(dir.path()), None).await.expect("open");
            assert_eq!(journal.append(b"one".to_vec()).await.expect("append"), 1);
            let bytes_before = journal.stats().bytes_on_disk;
            let faults = &journal.inner.shared.faults;
            faults.sync_errno.store(errno, Ordering::Release);
            for _ in 0..3 {
                match journal.append(b"refused".to_vec()).await {
                    Err(JournalError::Io(e)) => {
                        assert_eq!(e.raw_os_error(), None, "{e}");
                        assert!(
                            matches!(
                                e.kind(),
                                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                            ),
                            "errno {errno}: {e:?}"
                        );
                        assert!(e.to_string().contains("full"), "{e}");
                    }
                    other => panic!("errno {errno}: expected a disk-full error, got {other:?}"),
                }
                assert!(
                    !journal.stats().failed,
                    "errno {errno}: not a failed journal"
                );
                assert_eq!(journal.stats().bytes_on_disk, bytes_before);
            }
            faults.sync_errno.store(0, Ordering::Release);
            assert_eq!(journal.append(b"two".to_vec()).await.expect("retry"), 2);
            journal.close().await.expect("close");
            let (journal, recovered) = Journal::open(config(dir.path()), None)
                .await
                .expect("reopen");
            assert_eq!(
                recovered.entries,
                vec![(1, b"one".to_vec()), (2, b"two".to_vec())]
            );
            journal.close().await.expect("close");
        }
    }

    /// An I/O error at fsync keeps the fail-stop behaviour (the fsync gate).
    #[tokio::test]
    async fn an_io_error_at_fsync_still_fails_the_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, _) = Journal::open(config(dir.path()), None).await.expect("open");
        journal.append(b"one".to_vec()).await.expect("append");
        let faults = &journal.inner.shared.faults;
        faults.sync_errno.store(5, Ordering::Release);
        assert!(journal.append(b"lost".to_vec()).await.is_err());
        faults.sync_errno.store(0, Ordering::Release);
        assert!(journal.stats().failed);
        assert!(matches!(
            journal.append(b"after".to_vec()).await,
            Err(JournalError::Io(_))
        ));
        assert!(journal.close().await.is_err());
    }

    #[tokio::test]
    async fn failed_write_is_undone_and_the_journal_stays_usable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, _) = Journal::open(config(dir.path()), None).await.expect("open");
        journal.append(b"one".to_vec()).await.expect("append");
        let bytes_before = journal.stats().bytes_on_disk;

        journal
            .inner
            .shared
            .faults
            .fail_write
            .store(true, Ordering::Release);
        match journal.append(b"two".to_vec()).await {
            Err(JournalError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::StorageFull),
            other => panic!("expected a disk-full error, got {other:?}"),
        }
        assert!(
            !journal.stats().failed,
            "a failed write is not an fsync failure"
        );
        assert_eq!(journal.stats().bytes_on_disk, bytes_before);

        // Space is back: the sender's retry succeeds, with the next seq.
        journal
            .inner
            .shared
            .faults
            .fail_write
            .store(false, Ordering::Release);
        assert_eq!(journal.append(b"two".to_vec()).await.expect("retry"), 2);
        journal.close().await.expect("close");
        let (journal, recovered) = Journal::open(config(dir.path()), None)
            .await
            .expect("reopen");
        assert_eq!(
            recovered.entries,
            vec![(1, b"one".to_vec()), (2, b"two".to_vec())]
        );
        journal.close().await.expect("close");
    }

    #[test]
    fn handles_and_futures_can_cross_threads() {
        fn send_sync<T: Send + Sync + Clone>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<Journal>();
        let mut registry = Registry::default();
        send(&Journal::open(
            JournalConfig::new("unused"),
            Some(&mut registry),
        ));
    }

    #[tokio::test]
    async fn metrics_are_registered_and_exported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut registry = Registry::default();
        let (journal, _) = Journal::open(config(dir.path()), Some(&mut registry))
            .await
            .expect("open");
        journal.append(b"x".to_vec()).await.expect("append");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for name in [
            "hookwarden_journal_bytes ",
            "hookwarden_journal_pending_entries 1",
            "hookwarden_journal_replayed_entries_total 0",
            "hookwarden_journal_fsync_seconds_count 1",
            "hookwarden_journal_batch_entries_count 1",
        ] {
            assert!(text.contains(name), "missing {name:?} in\n{text}");
        }
        journal.close().await.expect("close");
    }

    #[tokio::test]
    async fn metrics_continue_across_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut registry = Registry::default();
        let metrics = JournalMetrics::default();
        metrics.register(&mut registry);
        let (journal, _) =
            Journal::open_with_metrics(config(dir.path()), metrics.clone(), Recovered::default())
                .await
                .expect("open");
        journal.append(b"x".to_vec()).await.expect("append");
        journal.close().await.expect("close");
        let (journal, _) =
            Journal::open_with_metrics(config(dir.path()), metrics.clone(), Recovered::default())
                .await
                .expect("reopen");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("hookwarden_journal_replayed_entries_total 1"),
            "{text}"
        );
        assert!(
            text.contains("hookwarden_journal_pending_entries 1"),
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE hookwarden_journal_bytes gauge")
                .count(),
            1
        );
        journal.close().await.expect("close");
    }

    #[tokio::test]
    async fn invalid_config_and_out_of_range_checkpoint_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bad = config(dir.path());
        bad.max_batch = 0;
        assert!(matches!(
            Journal::open(bad, None).await,
            Err(JournalError::Io(_))
        ));
        let (journal, _) = Journal::open(config(dir.path()), None).await.expect("open");
        journal.append(b"x".to_vec()).await.expect("append");
        assert!(matches!(
            journal.checkpoint(Vec::new(), 2).await,
            Err(JournalError::Io(_))
        ));
        journal.checkpoint(Vec::new(), 1).await.expect("checkpoint");
        assert!(matches!(
            journal.checkpoint(Vec::new(), 0).await,
            Err(JournalError::Io(_))
        ));
        journal.close().await.expect("close");
    }
}
