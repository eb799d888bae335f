//! The single writer: recovery on open, then one dedicated OS thread that owns the
//! segment files and turns queued appends into group commits.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::format::{self, BatchEncoder, Scan, TailKind};
use super::{JournalConfig, JournalError, LostBatch, RecoveryVisitor, Seq, Shared};

/// How often a changed applied marker is written out (it is cheap but not free).
const APPLIED_PERSIST_INTERVAL: Duration = Duration::from_secs(1);
/// How long `open` waits for a previous writer in this process to let go of the lock.
const LOCK_WAIT: Duration = Duration::from_secs(3);
/// The active segment's file is extended with zeros this much at a time, ahead of the
/// batches (see [`Writer::write_active`]). Measured on the virtio disk of docs/bench.md:
/// writing and syncing 256 KiB of zeros takes 0.55 ms, 1 MiB 1.4 ms, 4 MiB 24 ms; a
/// commit that extends the file pays that once per 256 KiB of journal.
const PREALLOCATE_CHUNK: u64 = 256 << 10;
static ZEROS: [u8; PREALLOCATE_CHUNK as usize] = [0; PREALLOCATE_CHUNK as usize];

pub(super) struct Append {
    pub record: Vec<u8>,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Result<Seq, JournalError>>,
}

pub(super) enum Request {
    Append(Append),
    /// A snapshot covering `covers_seq` is durable on disk (written by
    /// [`write_snapshot`] off this thread): adopt it and delete the segments it covers.
    Compact {
        covers_seq: Seq,
        snapshot_len: u64,
        applied: Seq,
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    Close {
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
}

struct Segment {
    first_seq: Seq,
    last_seq: Option<Seq>,
    len: u64,
    path: PathBuf,
}

/// Why the journal stopped accepting writes (kept as kind + text: `io::Error` is not
/// `Clone`, and every later caller gets its own copy).
struct Failure {
    kind: io::ErrorKind,
    message: String,
}

impl Failure {
    fn to_error(&self) -> JournalError {
        JournalError::Io(io::Error::new(self.kind, self.message.clone()))
    }
}

pub(super) struct Writer {
    config: JournalConfig,
    shared: Arc<Shared>,
    /// Held for the writer's lifetime: two processes appending to one directory would
    /// interleave batches and corrupt each other.
    _lock: File,
    /// Oldest first; the last one is the active segment.
    segments: VecDeque<Segment>,
    active: File,
    /// Size of the active segment's file: its batches, then zeros written ahead of them.
    allocated: u64,
    next_seq: Seq,
    snapshot_seq: Seq,
    snapshot_len: u64,
    persisted_applied: Seq,
    last_applied_persist: Instant,
    failed: Option<Failure>,
    last_batch_len: usize,
    /// Appends taken from the channel so far (compared with [`Shared::sent`]).
    received: u64,
    buf: Vec<u8>,
}

fn corrupt(path: &Path, damage: format::Damage) -> JournalError {
    JournalError::Corrupt {
        path: path.to_path_buf(),
        offset: damage.offset,
        reason: damage.reason,
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format::LOCK_FILE))
        .map_err(at(dir, "cannot open the lock file in"))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(JournalError::Io(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!(
                        "journal directory {} is in use by another writer",
                        dir.display()
                    ),
                )));
            }
            Err(fs::TryLockError::Error(e)) => return Err(e.into()),
        }
    }
}

/// Adds the path to an I/O error: "Is a directory (os error 21)" alone does not tell an
/// operator which file to look at.
fn at(path: &Path, what: &str) -> impl FnOnce(io::Error) -> io::Error {
    let context = format!("{what} {}", path.display());
    move |e| io::Error::new(e.kind(), format!("{context}: {e}"))
}

/// ENOSPC or EDQUOT: the file system had no block to give, and wrote nothing.
fn is_out_of_space(error: &io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(error.raw_os_error(), Some(ENOSPC | EDQUOT))
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Writer {
    /// Recovers the directory: validates the snapshot, scans every segment, truncates
    /// a torn tail, finishes an interrupted compaction, and hands what to replay to
    /// `visitor` as it is scanned (one segment in memory at a time); returns how many
    /// unapplied entries it handed over.
    pub(super) fn open(
        config: JournalConfig,
        shared: Arc<Shared>,
        visitor: &mut dyn RecoveryVisitor,
    ) -> Result<(Self, u64, Option<LostBatch>), JournalError> {
        let dir = config.dir.clone();
        let created = !dir.exists();
        fs::create_dir_all(&dir).map_err(at(&dir, "cannot create journal directory"))?;
        if created && let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        let lock = lock_dir(&dir)?;
        remove_if_exists(&dir.join(format::SNAPSHOT_TMP_FILE))?;
        remove_if_exists(&dir.join(format::APPLIED_TMP_FILE))?;

        let snapshot_path = dir.join(format::SNAPSHOT_FILE);
        let snapshot = match fs::read(&snapshot_path) {
            Ok(bytes) => {
                let len = bytes.len() as u64;
                Some((
                    format::decode_snapshot(&bytes).map_err(|d| corrupt(&snapshot_path, d))?,
                    len,
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let applied_path = dir.join(format::APPLIED_FILE);
        let applied_file = match fs::read(&applied_path) {
            Ok(bytes) => {
                let seq = format::decode_applied(&bytes);
                if seq.is_none() {
                    tracing::warn!(path = %applied_path.display(), "journal applied marker unreadable; replaying from the snapshot");
                }
                seq
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let (snapshot_seq, snapshot_applied, snapshot_len) = snapshot
            .as_ref()
            .map_or((0, 0, 0), |(s, len)| (s.covers_seq, s.applied_seq, *len));
        let applied = snapshot_applied.max(applied_file.unwrap_or(0));
        let replay_after = snapshot_seq.max(applied);
        // The applied mark beyond the checkpoint: everything the checkpoint counted is
        // already on the status (see `RecoveryVisitor::snapshot`).
        visitor.snapshot(
            snapshot.as_ref().map(|(s, _)| s.payload.as_slice()),
            applied > snapshot_seq,
        );

        let names = list_segments(&dir).map_err(at(&dir, "cannot list"))?;

        let mut segments: VecDeque<Segment> = VecDeque::new();
        let mut handed_over: u64 = 0;
        let mut dir_changed = false;
        let mut lost = None;
        let count = names.len();
        for (i, (first_seq, path)) in names.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let bytes = fs::read(&path).map_err(at(&path, "cannot read journal segment"))?;
            let mut first_entry = None;
            let scan = format::scan_segment(&bytes, first_seq, is_last, |seq, payload| {
                first_entry.get_or_insert(seq);
                if seq > replay_after {
                    handed_over += 1;
                    visitor.entry(seq, payload);
                } else if seq > snapshot_seq {
                    visitor.applied(seq, payload);
                }
            })
            .map_err(|d| corrupt(&path, d))?;
            match scan {
                Scan::Unborn => {
                    tracing::warn!(path = %path.display(), "removing journal segment whose creation was interrupted");
                    fs::remove_file(&path)?;
                    dir_changed = true;
                }
                Scan::Valid {
                    valid_len,
                    last_seq,
                    tail,
                } => {
                    if let Some(tail) = tail {
                        let damage = &tail.damage;
                        match tail.kind {
                            TailKind::Torn => tracing::warn!(
                                path = %path.display(),
                                offset = damage.offset,
                                dropped_bytes = bytes.len() as u64 - valid_len,
                                reason = %damage.reason,
                                "truncating the journal's torn tail (a write cut short by a crash; never acknowledged)"
                            ),
                            TailKind::Corrupt { first_seq, records } => {
                                let report = keep_damaged_tail(
                                    &path, &bytes, valid_len, damage, first_seq, records,
                                );
                                dir_changed |= report.kept_at.is_some();
                                tracing::error!(
                                    path = %path.display(),
                                    offset = damage.offset,
                                    reason = %damage.reason,
                                    first_seq = ?first_seq,
                                    records = ?records,
                                    kept_at = ?report.kept_at.as_ref().map(|p| p.display().to_string()),
                                    "the journal's last batch is complete but damaged: it had been fsync'd and its deliveries acknowledged, which are now lost; the batch is cut off so the journal can start, its bytes are kept beside it for analysis"
                                );
                                shared.metrics.corrupt_batches.inc();
                                shared.corrupt_batches.fetch_add(1, Ordering::AcqRel);
                                lost = Some(report);
                            }
                        }
                        let truncate = || {
                            let file = OpenOptions::new().write(true).open(&path)?;
                            file.set_len(valid_len)?;
                            file.sync_all()
                        };
                        truncate().map_err(at(&path, "cannot truncate the torn tail of"))?;
                    }
                    let prev_last = segments.iter().rev().find_map(|s| s.last_seq);
                    if let (Some(prev), Some(first)) = (prev_last, first_entry)
                        && first > prev + 1
                    {
                        tracing::error!(
                            path = %path.display(),
                            missing_from = prev + 1,
                            missing_to = first - 1,
                            "journal entries are missing between segments (a segment file was removed); continuing without them"
                        );
                    }
                    segments.push_back(Segment {
                        first_seq,
                        last_seq,
                        len: valid_len,
                        path,
                    });
                }
            }
        }

        // Segments wholly covered by the snapshot: a compaction was interrupted.
        while segments.len() > 1 && segments[0].last_seq.is_none_or(|last| last <= snapshot_seq) {
            if let Some(seg) = segments.pop_front() {
                fs::remove_file(&seg.path)?;
                dir_changed = true;
            }
        }

        let last_frame = segments
            .iter()
            .filter_map(|s| s.last_seq)
            .max()
            .unwrap_or(0);
        let last_named = segments.back().map_or(0, |s| s.first_seq.saturating_sub(1));
        // The seqs of a lost batch were acknowledged, and may be covered by the applied
        // mark: they are never given to new entries (which would then count as applied).
        let lost_last = lost
            .as_ref()
            .and_then(|l: &LostBatch| Some(l.first_seq?.saturating_add(u64::from(l.records?))))
            .map_or(0, |end| end.saturating_sub(1));
        let next_seq = last_frame
            .max(snapshot_seq)
            .max(applied)
            .max(last_named)
            .max(lost_last)
            + 1;

        let active = match segments.back() {
            // Inside a segment seqs are consecutive (recovery checks it): when the next
            // seq does not follow the active segment's last entry (seqs skipped above),
            // a new segment starts at it.
            Some(seg) if seg.last_seq.is_none_or(|last| last + 1 == next_seq) => OpenOptions::new()
                .write(true)
                .open(&seg.path)
                .map_err(at(&seg.path, "cannot open journal segment"))?,
            Some(_) | None => {
                let (file, seg) = create_segment(&dir, next_seq)?;
                segments.push_back(seg);
                dir_changed = false;
                file
            }
        };
        if dir_changed {
            sync_dir(&dir)?;
        }
        // After a crash the active segment still ends in the zeros written ahead of its
        // batches: the next batches go over them.
        let allocated = active
            .metadata()
            .map_err(at(&dir, "cannot read the active segment's size in"))?
            .len();

        let last_seq = next_seq - 1;
        shared.last_seq.store(last_seq, Ordering::Release);
        shared
            .applied_seq
            .store(applied.min(last_seq), Ordering::Release);
        shared.snapshot_seq.store(snapshot_seq, Ordering::Release);
        shared.metrics.replayed.inc_by(handed_over);

        let writer = Writer {
            shared,
            _lock: lock,
            segments,
            active,
            allocated,
            next_seq,
            snapshot_seq,
            snapshot_len,
            persisted_applied: applied,
            last_applied_persist: Instant::now(),
            failed: None,
            last_batch_len: 0,
            received: 0,
            buf: Vec::new(),
            config,
        };
        writer.publish_sizes();
        Ok((writer, handed_over, lost))
    }

    /// The writer thread's loop; returns when closed or when every handle is gone.
    pub(super) fn run(mut self, rx: Receiver<Request>) {
        let mut carried: Option<Request> = None;
        loop {
            let request = match carried.take() {
                Some(request) => request,
                None => match rx.recv_timeout(APPLIED_PERSIST_INTERVAL) {
                    Ok(request) => request,
                    Err(RecvTimeoutError::Timeout) => {
                        self.persist_applied();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        self.persist_applied();
                        return;
                    }
                },
            };
            match request {
                Request::Append(first) => {
                    self.received += 1;
                    let mut batch = vec![first];
                    carried = self.collect(&rx, &mut batch);
                    self.commit(batch);
                    if self.last_applied_persist.elapsed() >= APPLIED_PERSIST_INTERVAL {
                        self.persist_applied();
                    }
                }
                Request::Compact {
                    covers_seq,
                    snapshot_len,
                    applied,
                    reply,
                } => {
                    self.compact(covers_seq, snapshot_len, applied);
                    let _ = reply.send(Ok(()));
                }
                Request::Close { reply } => {
                    self.persist_applied();
                    self.trim_active();
                    let result = match &self.failed {
                        Some(failure) => Err(failure.to_error()),
                        None => Ok(()),
                    };
                    // Release the files and the lock before the caller may reopen.
                    drop(self);
                    let _ = reply.send(result);
                    return;
                }
            }
        }
    }

    /// Gathers more appends into `batch`: everything already queued, then — only while
    /// the batch is smaller than the previous one — waits for more until the oldest
    /// waiter has waited `group_commit_window`. The previous batch's size is the best
    /// estimate of how many appenders are active: under steady load the wait ends as
    /// soon as they are all back instead of always sitting out the window, and a lone
    /// append after a quiet period (previous batch of one) is written at once. Returns
    /// a non-append request that ended the batch, to be handled next.
    ///
    /// While it waits the thread is parked, not blocked on the channel: appends do not
    /// wake it one by one (a futex wake and, on a VM, an inter-processor interrupt each,
    /// paid by the async worker that appends). The append that makes the batch as large
    /// as the previous one unparks it ([`Shared::wake_at`]); the window's end is the
    /// park's timeout; checkpoints and close unpark it at once.
    fn collect(&mut self, rx: &Receiver<Request>, batch: &mut Vec<Append>) -> Option<Request> {
        let deadline = batch[0].enqueued + self.config.group_commit_window;
        let mut bytes = batch[0].record.len();
        while batch.len() < self.config.max_batch && bytes < format::MAX_BATCH_BYTES {
            let request = match rx.try_recv() {
                Ok(request) => request,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let now = Instant::now();
                    if batch.len() >= self.last_batch_len || now >= deadline {
                        break;
                    }
                    let target = self.received + (self.last_batch_len - batch.len()) as u64;
                    // SeqCst pairs with `Journal::append`: either this load sees the
                    // append that reaches the target, or that append sees `wake_at`.
                    self.shared.wake_at.store(target, Ordering::SeqCst);
                    if self.shared.sent.load(Ordering::SeqCst) < target {
                        std::thread::park_timeout(deadline - now);
                    }
                    self.shared.wake_at.store(u64::MAX, Ordering::SeqCst);
                    continue;
                }
            };
            match request {
                Request::Append(append) => {
                    self.received += 1;
                    bytes += append.record.len();
                    batch.push(append);
                }
                other => return Some(other),
            }
        }
        None
    }

    fn bytes_on_disk(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum::<u64>() + self.snapshot_len
    }

    fn publish_sizes(&self) {
        let bytes = self.bytes_on_disk();
        self.shared.bytes.store(bytes, Ordering::Release);
        self.shared
            .segments
            .store(self.segments.len() as u64, Ordering::Release);
        self.shared
            .metrics
            .bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.shared.update_pending();
    }

    fn fail(&mut self, failure: Failure) {
        tracing::error!(error = %failure.message, "journal failed; refusing writes until it is reopened");
        self.shared.failed.store(true, Ordering::Release);
        self.failed = Some(failure);
    }

    /// One group commit: frames every append that fits, writes them with one `write`,
    /// `sync_data`s the segment, and only then wakes the waiters.
    fn commit(&mut self, batch: Vec<Append>) {
        if let Some(failure) = &self.failed {
            for append in batch {
                let _ = append.reply.send(Err(failure.to_error()));
            }
            return;
        }
        let active_has_entries = self.segments.back().is_some_and(|s| s.last_seq.is_some());
        let active_len = self.active_len();
        if active_has_entries
            && active_len >= self.config.segment_bytes
            && let Err(e) = self.roll()
        {
            let message = format!("cannot start a new journal segment: {e}");
            for append in batch {
                let _ = append.reply.send(Err(JournalError::Io(io::Error::new(
                    e.kind(),
                    message.clone(),
                ))));
            }
            return;
        }

        let used = self.bytes_on_disk();
        let mut buf = std::mem::take(&mut self.buf);
        let mut encoder = BatchEncoder::begin(&mut buf, self.next_seq);
        let mut waiters = Vec::with_capacity(batch.len());
        let mut size = format::BATCH_HEADER_LEN as u64;
        let mut seq = self.next_seq;
        for append in batch {
            if append.record.len() > format::MAX_RECORD_BYTES {
                let _ = append.reply.send(Err(JournalError::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "journal record of {} bytes exceeds the {} byte limit",
                        append.record.len(),
                        format::MAX_RECORD_BYTES
                    ),
                ))));
                continue;
            }
            let frame = format::frame_len(append.record.len()) as u64;
            if used + size + frame > self.config.max_bytes {
                let _ = append.reply.send(Err(JournalError::Full));
                continue;
            }
            encoder.push(seq, &append.record);
            waiters.push((seq, append.reply));
            seq += 1;
            size += frame;
        }
        if encoder.count() == 0 {
            self.buf = buf;
            return;
        }
        encoder.finish();
        self.last_batch_len = waiters.len();

        let result = self.write_and_sync(&buf);
        self.buf = buf;
        if let Err(error) = result {
            for (_, reply) in waiters {
                let _ = reply.send(Err(JournalError::Io(io::Error::new(
                    error.kind(),
                    error.to_string(),
                ))));
            }
            return;
        }

        self.next_seq = seq;
        let last = seq - 1;
        if let Some(active) = self.segments.back_mut() {
            active.len += size;
            active.last_seq = Some(last);
        }
        self.shared.last_seq.store(last, Ordering::Release);
        self.shared
            .appended
            .fetch_add(waiters.len() as u64, Ordering::Relaxed);
        self.shared
            .metrics
            .batch_entries
            .observe(waiters.len() as f64);
        self.publish_sizes();
        for (seq, reply) in waiters {
            let _ = reply.send(Ok(seq));
        }
    }

    /// Writes one batch and makes it durable. A failed `write` is undone by truncating
    /// back (the journal stays usable: disk full is usually temporary); a failed fsync
    /// fails the journal (see the module docs on the fsync gate).
    fn write_and_sync(&mut self, bytes: &[u8]) -> io::Result<()> {
        let path = self
            .segments
            .back()
            .map(|s| s.path.clone())
            .unwrap_or_default();
        if let Err(error) = self.write_active(bytes) {
            if let Err(undo) = self.cut_to_batches() {
                self.fail(Failure {
                    kind: undo.kind(),
                    message: format!(
                        "journal write to {} failed ({error}) and could not be undone ({undo})",
                        path.display()
                    ),
                });
            }
            return Err(io::Error::new(
                error.kind(),
                format!("journal write to {} failed: {error}", path.display()),
            ));
        }
        let started = Instant::now();
        let synced = self.sync_active();
        self.shared
            .metrics
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = synced {
            self.shared.metrics.fsync_failures.inc();
            if is_out_of_space(&error) {
                // The file system could not allocate blocks for this batch (ENOSPC,
                // EDQUOT: delayed allocation, copy-on-write, thin provisioning and network
                // file systems report it at fsync, not at write). That failure happens
                // before any device write, so the batches fsync'd earlier are untouched
                // on disk: unlike an I/O error, it says nothing about data already
                // acknowledged. The batch itself was never acknowledged; it is cut off,
                // and the cut made durable, so the file on disk and in the page cache is
                // again exactly its fsync'd batches. Then the journal stays usable: these
                // appends fail (503 + Retry-After, as for a full journal), and the
                // sender's retry succeeds once space is back, without a restart loop.
                let cut = self.cut_to_batches().and_then(|()| self.active.sync_all());
                match cut {
                    Ok(()) => {
                        tracing::warn!(%error, path = %path.display(), "journal fsync found the volume full; the batch was not acknowledged and is cut off, appends fail until space is freed");
                        return Err(io::Error::new(
                            error.kind(),
                            format!(
                                "journal volume is full (fsync of {}: {error}); retry later",
                                path.display()
                            ),
                        ));
                    }
                    Err(undo) => {
                        let message = format!(
                            "journal fsync of {} failed ({error}) and the unacknowledged batch could not be cut off durably ({undo}); the journal refuses writes until it is reopened",
                            path.display()
                        );
                        self.fail(Failure {
                            kind: error.kind(),
                            message: message.clone(),
                        });
                        return Err(io::Error::new(error.kind(), message));
                    }
                }
            }
            // Any other failure (EIO): the device may have written part of a block that
            // held acknowledged data, and Linux may have dropped the dirty pages, so a
            // later fsync could report success for data that is gone. Cut the
            // never-acknowledged batch off (best effort, no fsync): otherwise a reopen in
            // this process could read it back from the page cache although it may never
            // reach the disk, and write new batches after it.
            let _ = self.cut_to_batches();
            let message = format!(
                "journal fsync of {} failed ({error}); the journal refuses writes until it is reopened",
                path.display()
            );
            self.fail(Failure {
                kind: error.kind(),
                message: message.clone(),
            });
            return Err(io::Error::new(error.kind(), message));
        }
        Ok(())
    }

    /// Writes a batch where the active segment's batches end. When it reaches past the
    /// end of the file, zeros up to the next [`PREALLOCATE_CHUNK`] boundary are written
    /// after it, so that the next batches land inside the file: a write that does not
    /// change the file's size needs no inode update, and its `fdatasync` is then one data
    /// write and one cache flush instead of three device requests (measured with
    /// `/proc/diskstats` on ext4). Recovery reads the zeros as the segment's end
    /// (`format.rs`). The zeros are best effort: if they cannot be written (a full
    /// disk), the batch stands alone.
    fn write_active(&mut self, bytes: &[u8]) -> io::Result<()> {
        let at = self.active_len();
        let end = at + bytes.len() as u64;
        #[cfg(test)]
        if self.shared.faults.fail_write.load(Ordering::Acquire) {
            // A disk that fills up halfway through the batch.
            self.active.write_all_at(&bytes[..bytes.len() / 2], at)?;
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        self.active.write_all_at(bytes, at)?;
        if end > self.allocated {
            let target = end.next_multiple_of(PREALLOCATE_CHUNK);
            // `target - end` < PREALLOCATE_CHUNK, the length of ZEROS.
            let zeros = &ZEROS[..usize::try_from(target - end).unwrap_or(0)];
            self.allocated = match self.active.write_all_at(zeros, end) {
                Ok(()) => target,
                Err(error) => {
                    tracing::debug!(%error, "cannot write zeros ahead of the journal's batches");
                    end
                }
            };
        }
        Ok(())
    }

    /// Gives back the zeros written ahead of the active segment's batches (at close and
    /// when the segment is sealed). Best effort and without fsync: a crash before the
    /// trim reaches the disk leaves zeros, which recovery reads as the end.
    fn trim_active(&mut self) {
        if self.failed.is_some() || self.allocated <= self.active_len() {
            return;
        }
        if let Err(error) = self.cut_to_batches() {
            tracing::debug!(%error, "cannot trim the zeros after the journal's batches");
        }
    }

    /// End of the active segment's batches: everything written and fsync'd (a batch
    /// counts only once its commit succeeded).
    fn active_len(&self) -> u64 {
        self.segments.back().map_or(0, |s| s.len)
    }

    /// Truncates the active segment's file to its batches: drops a batch whose write or
    /// fsync failed, and the zeros written ahead.
    fn cut_to_batches(&mut self) -> io::Result<()> {
        let len = self.active_len();
        self.active.set_len(len)?;
        self.allocated = len;
        Ok(())
    }

    fn sync_active(&self) -> io::Result<()> {
        #[cfg(test)]
        if self.shared.faults.fail_sync.load(Ordering::Acquire) {
            return Err(io::Error::other("injected fsync failure"));
        }
        #[cfg(test)]
        match self.shared.faults.sync_errno.load(Ordering::Acquire) {
            0 => {}
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
        self.active.sync_data()
    }

    /// Starts a new active segment. The old one is complete and already fsync'd.
    fn roll(&mut self) -> io::Result<()> {
        let (file, segment) = create_segment(&self.config.dir, self.next_seq)?;
        self.trim_active();
        self.active = file;
        self.allocated = segment.len;
        self.segments.push_back(segment);
        self.publish_sizes();
        Ok(())
    }

    /// Adopts a snapshot that [`write_snapshot`] made durable, then deletes the segments
    /// it wholly covers. The snapshot was written off this thread, so a large ledger never
    /// holds up group commits; until this runs, the older segments simply stay.
    fn compact(&mut self, covers_seq: Seq, snapshot_len: u64, applied: Seq) {
        // A failed journal is reopened before it is used again, and reopening adopts the
        // snapshot on disk (and removes what it covers) anyway.
        if self.failed.is_some() || covers_seq < self.snapshot_seq {
            return;
        }
        let dir = self.config.dir.clone();
        self.snapshot_seq = covers_seq;
        self.snapshot_len = snapshot_len;
        self.persisted_applied = self.persisted_applied.max(applied);
        self.shared
            .snapshot_seq
            .store(covers_seq, Ordering::Release);

        // Compaction. An active segment wholly covered is retired by rolling first.
        let active_covered = self
            .segments
            .back()
            .and_then(|s| s.last_seq)
            .is_some_and(|l| l <= covers_seq);
        if active_covered && let Err(error) = self.roll() {
            tracing::warn!(%error, "journal checkpoint written, but starting a new segment failed; compaction postponed");
        }
        let mut removed = false;
        while self.segments.len() > 1 && self.segments[0].last_seq.is_none_or(|l| l <= covers_seq) {
            let path = self.segments[0].path.clone();
            if let Err(error) = fs::remove_file(&path) {
                tracing::warn!(%error, path = %path.display(), "cannot delete a compacted journal segment");
                break;
            }
            self.segments.pop_front();
            removed = true;
        }
        if removed && let Err(error) = sync_dir(&dir) {
            tracing::warn!(%error, "journal directory fsync after compaction failed");
        }
        self.publish_sizes();
    }

    /// Writes the applied marker when it moved. Deliberately without fsync: a marker
    /// lost or torn by a crash only means entries are replayed again, which consumers
    /// tolerate; a marker can never claim more than was really marked applied.
    fn persist_applied(&mut self) {
        let applied = self.shared.applied_seq.load(Ordering::Acquire);
        self.last_applied_persist = Instant::now();
        if applied <= self.persisted_applied {
            return;
        }
        let dir = &self.config.dir;
        let tmp = dir.join(format::APPLIED_TMP_FILE);
        let written = fs::write(&tmp, format::encode_applied(applied))
            .and_then(|()| fs::rename(&tmp, dir.join(format::APPLIED_FILE)));
        match written {
            Ok(()) => self.persisted_applied = applied,
            Err(error) => {
                tracing::warn!(%error, "cannot write the journal applied marker; more entries will be replayed after a restart")
            }
        }
    }
}

/// Copies the damaged tail of `path` (from `valid_len`, without the zeros written ahead
/// after it) to `<segment>.damaged-<offset>` beside it, durably, before the segment is
/// cut: the bytes of acknowledged deliveries are evidence, and may be partly readable.
/// A copy that cannot be written (a full disk) is logged and the start goes on: the
/// deliveries are lost either way, and refusing to start would only add an outage.
fn keep_damaged_tail(
    path: &Path,
    bytes: &[u8],
    valid_len: u64,
    damage: &format::Damage,
    first_seq: Option<Seq>,
    records: Option<u32>,
) -> LostBatch {
    let start = usize::try_from(valid_len)
        .unwrap_or(bytes.len())
        .min(bytes.len());
    let end = bytes[start..]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(start, |i| start + i + 1);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".damaged-{}", damage.offset));
    let copy = path.with_file_name(name);
    let written = (|| {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&copy)?;
        file.write_all(&bytes[start..end])?;
        file.sync_all()
    })();
    let kept_at = match written {
        Ok(()) => Some(copy),
        Err(error) => {
            tracing::error!(%error, path = %copy.display(), "cannot keep a copy of the journal's damaged batch");
            let _ = fs::remove_file(&copy);
            None
        }
    };
    LostBatch {
        path: path.to_path_buf(),
        offset: damage.offset,
        reason: damage.reason.clone(),
        first_seq,
        records,
        kept_at,
    }
}

/// Writes a checkpoint snapshot durably (temp file, fsync, atomic rename, directory
/// fsync) and returns its size. Runs off the writer thread; the segments are untouched,
/// so whichever snapshot is on disk when a crash strikes is consistent with them.
pub(super) fn write_snapshot(
    dir: &Path,
    covers_seq: Seq,
    applied: Seq,
    payload: &[u8],
) -> io::Result<u64> {
    let bytes = format::encode_snapshot(covers_seq, applied, payload);
    let tmp = dir.join(format::SNAPSHOT_TMP_FILE);
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_data()?;
        fs::rename(&tmp, dir.join(format::SNAPSHOT_FILE))?;
        sync_dir(dir)
    })();
    if let Err(error) = written {
        let _ = remove_if_exists(&tmp);
        return Err(at(dir, "cannot write the journal checkpoint in")(error));
    }
    Ok(bytes.len() as u64)
}

/// The segment files in `dir` with the first seq their names carry, oldest first.
pub(super) fn list_segments(dir: &Path) -> io::Result<Vec<(Seq, PathBuf)>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(first) = entry
            .file_name()
            .to_str()
            .and_then(format::parse_segment_name)
        {
            names.push((first, entry.path()));
        }
    }
    names.sort_by_key(|(first, _)| *first);
    Ok(names)
}

/// Creates a segment durably: header written and fsync'd, directory entry fsync'd.
/// `create_new`, so an existing file is never overwritten.
fn create_segment(dir: &Path, first_seq: Seq) -> io::Result<(File, Segment)> {
    let path = dir.join(format::segment_file_name(first_seq));
    // Not `append`: batches are positioned writes, which Linux ignores on `O_APPEND`.
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .map_err(at(&path, "cannot create"))?;
    let made = file
        .write_all(&format::encode_segment_header(first_seq))
        .and_then(|()| file.sync_data())
        .and_then(|()| sync_dir(dir));
    if let Err(error) = made {
        drop(file);
        let _ = fs::remove_file(&path);
        return Err(at(&path, "cannot initialise")(error));
    }
    let segment = Segment {
        first_seq,
        last_seq: None,
        len: format::SEGMENT_HEADER_LEN as u64,
        path,
    };
    Ok((file, segment))
}
