//! The outbox: pending and dead-lettered forwards, their bodies on disk.
//!
//! Why not the delivery journal itself: a dead letter lives for days (`deadLetterTTL`),
//! and a journal segment can only be dropped whole, so one dead letter would pin every
//! delivery journaled after it. The journal keeps a forward until the outbox has it:
//! the status loop imports a journaled delivery's forwards here (appended and fsync'd)
//! before its checkpoint may cover that delivery, and replays at start re-import what the
//! checkpoint does not cover (ids make that idempotent).
//!
//! Layout: `DIR/out-<n>.log` segments, append-only, each record framed as
//! `len:u32 crc:u32 payload` (crc over payload; little endian), payload =
//! `kind:u8 meta_len:u32 meta(JSON) body`. Kinds: a job (meta + rendered body), a state
//! change (attempts, next attempt, dead letter) and a tombstone (delivered, expired or
//! dropped). The newest record of an id wins. Only the index lives in memory, bodies are
//! read back with a positioned read when an attempt needs them; but each index entry
//! keeps the forward's whole metadata (~1 KiB a pending forward with the forwarder's own
//! copies of its id, measured in docs/bench.md "Forwarding").
//! Compaction copies the live jobs into a fresh segment once the dead bytes outweigh the
//! live ones, then deletes the older segments. A short or corrupt tail of the newest
//! segment (a crash mid-append: never acknowledged to anyone) is cut off at open.
//!
//! A small store of our own rather than an embedded database: one writer, sequential
//! appends, positioned reads and whole-segment deletes are all it needs, and the crate
//! avoids a C dependency and its build minutes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FRAME_HEADER: usize = 8;
const KIND_JOB: u8 = 1;
const KIND_STATE: u8 = 2;
const KIND_GONE: u8 = 3;
/// Largest record: a rendered body is bounded by `maxBodyBytes` (64 MiB at most) plus
/// its envelope.
const MAX_RECORD: usize = 96 * 1024 * 1024;
/// Segments roll over at this size.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Compaction waits until there is at least this much to reclaim.
const MIN_COMPACT_BYTES: u64 = 8 * 1024 * 1024;

/// What the outbox keeps of one forward besides its body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobMeta {
    /// The event's stable id (`webhook-id`) + `/` + target name: unique per forward.
    pub id: String,
    pub webhook_id: String,
    /// `namespace/name`.
    pub integration: String,
    pub uid: String,
    pub target: String,
    /// `delivery`, `incident.opened`, …
    pub event: String,
    pub content_type: String,
    /// The target's format when the job was rendered (`standard-webhooks`, `slack`, …):
    /// decides whether attempts are signed.
    #[serde(default)]
    pub format: String,
    /// Headers that belong to the body (`raw`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    pub created_ms: i64,
}

/// Where a forward stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobState {
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (Unix ms); ignored once dead.
    pub next_at_ms: i64,
    /// Set when dead-lettered (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct StateRecord<'a> {
    id: &'a str,
    #[serde(flatten)]
    state: JobState,
}

#[derive(Serialize, Deserialize)]
struct GoneRecord<'a> {
    id: &'a str,
}

/// A live forward: its metadata, its state and where its body is.
#[derive(Clone, Debug)]
pub struct Live {
    pub meta: JobMeta,
    pub state: JobState,
    segment: u64,
    offset: u64,
    len: u32,
}

impl Live {
    pub fn body_len(&self) -> usize {
        self.len as usize
    }
}

/// One change to append.
pub enum Change<'a> {
    Job {
        meta: &'a JobMeta,
        state: &'a JobState,
        body: &'a [u8],
    },
    State {
        id: &'a str,
        state: &'a JobState,
    },
    Gone {
        id: &'a str,
    },
}

/// The outbox: see the module docs. Not shared: one forwarder task owns it (through a
/// mutex, for `spawn_blocking`).
pub struct Outbox {
    dir: PathBuf,
    active: File,
    active_id: u64,
    active_len: u64,
    live: HashMap<String, Live>,
    /// Bytes of live job records (bodies and metadata).
    live_bytes: u64,
    /// Bytes in all segments.
    total_bytes: u64,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("dir", &self.dir)
            .field("live", &self.live.len())
            .field("live_bytes", &self.live_bytes)
            .field("total_bytes", &self.total_bytes)
            .finish()
    }
}

fn segment_name(id: u64) -> String {
    format!("out-{id:012}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("out-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

fn encode(kind: u8, meta: &[u8], body: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let payload_len = 1 + 4 + meta.len() + body.len();
    if payload_len > MAX_RECORD {
        return Err(io::Error::other("outbox record too large"));
    }
    let meta_len = u32::try_from(meta.len()).map_err(io::Error::other)?;
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    out.push(kind);
    out.extend_from_slice(&meta_len.to_le_bytes());
    out.extend_from_slice(meta);
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    let len = u32::try_from(payload_len).map_err(io::Error::other)?;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// One decoded record: kind, meta, and where its body is within `bytes`.
struct Decoded<'a> {
    kind: u8,
    meta: &'a [u8],
    body_at: usize,
    body_len: usize,
    next: usize,
}

fn decode(bytes: &[u8], at: usize) -> Option<Decoded<'_>> {
    let header = bytes.get(at..at + FRAME_HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if !(5..=MAX_RECORD).contains(&len) {
        return None;
    }
    let payload = bytes.get(at + FRAME_HEADER..at + FRAME_HEADER + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let kind = payload[0];
    let meta_len = u32::from_le_bytes(payload[1..5].try_into().ok()?) as usize;
    let meta = payload.get(5..5 + meta_len)?;
    Some(Decoded {
        kind,
        meta,
        body_at: at + FRAME_HEADER + 5 + meta_len,
        body_len: len - 5 - meta_len,
        next: at + FRAME_HEADER + len,
    })
}

impl Outbox {
    /// Opens (creating) the outbox in `dir` and rebuilds the index from its segments.
    pub fn open(dir: &Path) -> io::Result<Outbox> {
        std::fs::create_dir_all(dir)?;
        let mut ids: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| parse_segment_name(&e.file_name().to_string_lossy()))
            .collect();
        ids.sort_unstable();
        let mut live: HashMap<String, Live> = HashMap::new();
        let mut total_bytes = 0;
        let newest = ids.last().copied();
        for &id in &ids {
            let path = dir.join(segment_name(id));
            let mut bytes = Vec::new();
            File::open(&path)?.read_to_end(&mut bytes)?;
            let mut at = 0;
            while at < bytes.len() {
                let Some(record) = decode(&bytes, at) else {
                    break;
                };
                apply_record(&mut live, id, &record);
                at = record.next;
            }
            if at < bytes.len() {
                if Some(id) == newest {
                    // A crash cut the last append short: nothing in it was acknowledged.
                    tracing::warn!(segment = %path.display(), kept = at, dropped = bytes.len() - at, "outbox: cutting a torn tail");
                    OpenOptions::new()
                        .write(true)
                        .open(&path)?
                        .set_len(at as u64)?;
                } else {
                    tracing::error!(segment = %path.display(), at, "outbox: a damaged record in an older segment; the forwards after it in that segment are lost");
                }
            }
            total_bytes += at as u64;
        }
        let active_id = newest.map_or(1, |n| n + 1);
        let active = create_segment(dir, active_id)?;
        let live_bytes = live.values().map(live_record_bytes).sum();
        Ok(Outbox {
            dir: dir.to_path_buf(),
            active,
            active_id,
            active_len: 0,
            live,
            live_bytes,
            total_bytes,
        })
    }

    /// Every live forward (pending and dead-lettered).
    pub fn live(&self) -> impl Iterator<Item = &Live> {
        self.live.values()
    }

    pub fn get(&self, id: &str) -> Option<&Live> {
        self.live.get(id)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.live.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Bytes on disk (what the journal cap also counts).
    pub fn disk_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Appends `changes` and makes them durable (one write, one `fdatasync`).
    pub fn append(&mut self, changes: &[Change<'_>]) -> io::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        if self.active_len >= SEGMENT_BYTES {
            self.active.sync_data()?;
            self.active_id += 1;
            self.active = create_segment(&self.dir, self.active_id)?;
            self.active_len = 0;
        }
        let mut buf = Vec::new();
        let mut positions = Vec::with_capacity(changes.len());
        for change in changes {
            match change {
                Change::Job { meta, state, body } => {
                    let m = serde_json::to_vec(&(meta, state)).map_err(io::Error::other)?;
                    encode(KIND_JOB, &m, body, &mut buf)?;
                    positions.push(buf.len() - body.len());
                }
                Change::State { id, state } => {
                    let m = serde_json::to_vec(&StateRecord {
                        id,
                        state: (*state).clone(),
                    })
                    .map_err(io::Error::other)?;
                    encode(KIND_STATE, &m, &[], &mut buf)?;
                    positions.push(buf.len());
                }
                Change::Gone { id } => {
                    let m = serde_json::to_vec(&GoneRecord { id }).map_err(io::Error::other)?;
                    encode(KIND_GONE, &m, &[], &mut buf)?;
                    positions.push(buf.len());
                }
            }
        }
        let base = self.active_len;
        self.active.write_all(&buf)?;
        self.active.sync_data()?;
        self.active_len += buf.len() as u64;
        self.total_bytes += buf.len() as u64;
        for (change, body_at) in changes.iter().zip(positions) {
            match change {
                Change::Job { meta, state, body } => {
                    let record = Live {
                        meta: (*meta).clone(),
                        state: (*state).clone(),
                        segment: self.active_id,
                        offset: base + body_at as u64,
                        len: u32::try_from(body.len()).unwrap_or(u32::MAX),
                    };
                    self.live_bytes += live_record_bytes(&record);
                    if let Some(old) = self.live.insert(meta.id.clone(), record) {
                        self.live_bytes -= live_record_bytes(&old);
                    }
                }
                Change::State { id, state } => {
                    if let Some(l) = self.live.get_mut(*id) {
                        l.state = (*state).clone();
                    }
                }
                Change::Gone { id } => {
                    if let Some(old) = self.live.remove(*id) {
                        self.live_bytes -= live_record_bytes(&old);
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves a forward's next attempt without a record (a deferral that need not survive
    /// a restart).
    pub fn set_next_in_memory(&mut self, id: &str, at_ms: i64) {
        if let Some(l) = self.live.get_mut(id) {
            l.state.next_at_ms = at_ms;
        }
    }

    /// Sets a forward's state in the index after its record was appended.
    pub fn set_state_in_memory(&mut self, id: &str, state: JobState) {
        if let Some(l) = self.live.get_mut(id) {
            l.state = state;
        }
    }

    /// Drops a forward from the index (its tombstone is appended separately).
    pub fn forget_in_memory(&mut self, id: &str) {
        if let Some(old) = self.live.remove(id) {
            self.live_bytes -= live_record_bytes(&old);
        }
    }

    /// The body of a live forward, read from disk.
    pub fn read_body(&self, id: &str) -> io::Result<Vec<u8>> {
        let live = self
            .live
            .get(id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such forward"))?;
        let path = self.dir.join(segment_name(live.segment));
        let file = File::open(path)?;
        let mut buf = vec![0u8; live.len as usize];
        file.read_exact_at(&mut buf, live.offset)?;
        Ok(buf)
    }

    /// Copies the live forwards into a fresh segment and deletes the older ones, when the
    /// dead bytes outweigh the live ones. Returns whether it compacted. Memory stays
    /// bounded: one body at a time.
    pub fn compact_if_worth_it(&mut self) -> io::Result<bool> {
        let dead = self.total_bytes.saturating_sub(self.live_bytes);
        if dead < MIN_COMPACT_BYTES || dead < self.live_bytes {
            return Ok(false);
        }
        self.compact()?;
        Ok(true)
    }

    /// See [`Outbox::compact_if_worth_it`]; unconditional.
    pub fn compact(&mut self) -> io::Result<()> {
        let old: Vec<u64> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| parse_segment_name(&e.file_name().to_string_lossy()))
            .filter(|id| *id <= self.active_id)
            .collect();
        self.active.sync_data()?;
        self.active_id += 1;
        self.active = create_segment(&self.dir, self.active_id)?;
        self.active_len = 0;
        self.total_bytes = 0;
        let ids: Vec<String> = self.live.keys().cloned().collect();
        for chunk in ids.chunks(256) {
            let mut copied = Vec::with_capacity(chunk.len());
            for id in chunk {
                let body = self.read_body(id)?;
                let Some(l) = self.live.get(id) else { continue };
                copied.push((l.meta.clone(), l.state.clone(), body));
            }
            let changes: Vec<Change<'_>> = copied
                .iter()
                .map(|(meta, state, body)| Change::Job { meta, state, body })
                .collect();
            self.append(&changes)?;
        }
        for id in old {
            std::fs::remove_file(self.dir.join(segment_name(id)))?;
        }
        sync_dir(&self.dir)?;
        // Each copy replaced its own index entry (`append` adds the new record's bytes
        // and takes the old one's off): counted afresh, so the next check sees what is
        // really live. (Zeroing it before the copies left it at 0: every later write
        // found the whole outbox "dead" and compacted it again, holding the outbox lock
        // for seconds each time, and the next forget wrapped it below zero.)
        self.live_bytes = self.live.values().map(live_record_bytes).sum();
        Ok(())
    }
}

fn live_record_bytes(l: &Live) -> u64 {
    // The body plus a rough allowance for its frame and metadata.
    u64::from(l.len) + 256
}

fn apply_record(live: &mut HashMap<String, Live>, segment: u64, record: &Decoded<'_>) {
    match record.kind {
        KIND_JOB => {
            if let Ok((meta, state)) = serde_json::from_slice::<(JobMeta, JobState)>(record.meta) {
                let entry = Live {
                    meta,
                    state,
                    segment,
                    offset: record.body_at as u64,
                    len: u32::try_from(record.body_len).unwrap_or(u32::MAX),
                };
                live.insert(entry.meta.id.clone(), entry);
            }
        }
        KIND_STATE => {
            if let Ok(s) = serde_json::from_slice::<StateRecord<'_>>(record.meta)
                && let Some(l) = live.get_mut(s.id)
            {
                l.state = s.state;
            }
        }
        KIND_GONE => {
            if let Ok(g) = serde_json::from_slice::<GoneRecord<'_>>(record.meta) {
                live.remove(g.id);
            }
        }
        _ => {}
    }
}

fn create_segment(dir: &Path, id: u64) -> io::Result<File> {
    let path = dir.join(segment_name(id));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)?;
    file.seek(SeekFrom::End(0))?;
    sync_dir(dir)?;
    Ok(file)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str) -> JobMeta {
        JobMeta {
            id: id.into(),
            webhook_id: format!("msg_{id}"),
            integration: "ns/a".into(),
            uid: "u".into(),
            target: "t".into(),
            event: "delivery".into(),
            content_type: "application/json".into(),
            format: "standard-webhooks".into(),
            headers: Vec::new(),
            created_ms: 1,
        }
    }

    #[test]
    fn jobs_states_and_tombstones_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut o = Outbox::open(dir.path()).expect("open");
            let s = JobState::default();
            o.append(&[
                Change::Job {
                    meta: &meta("a"),
                    state: &s,
                    body: b"body-a",
                },
                Change::Job {
                    meta: &meta("b"),
                    state: &s,
                    body: b"body-b",
                },
            ])
            .expect("append");
            let retried = JobState {
                attempts: 2,
                next_at_ms: 99,
                dead_at_ms: None,
                last_failure: Some("503".into()),
            };
            o.append(&[
                Change::State {
                    id: "a",
                    state: &retried,
                },
                Change::Gone { id: "b" },
            ])
            .expect("append");
        }
        let o = Outbox::open(dir.path()).expect("reopen");
        assert_eq!(o.len(), 1);
        let a = o.get("a").expect("a");
        assert_eq!(a.state.attempts, 2);
        assert_eq!(a.state.last_failure.as_deref(), Some("503"));
        assert_eq!(o.read_body("a").expect("body"), b"body-a");
        assert!(!o.contains("b"));
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut o = Outbox::open(dir.path()).expect("open");
            o.append(&[Change::Job {
                meta: &meta("a"),
                state: &JobState::default(),
                body: b"kept",
            }])
            .expect("append");
        }
        // A crash mid-append: half a frame at the end of the newest segment.
        let newest = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false))
            .max()
            .expect("segment");
        let mut f = OpenOptions::new().append(true).open(&newest).expect("open");
        f.write_all(&[200, 0, 0, 0, 1, 2]).expect("write");
        drop(f);
        let o = Outbox::open(dir.path()).expect("reopen");
        assert_eq!(o.read_body("a").expect("body"), b"kept");
    }

    #[test]
    fn compaction_keeps_live_bodies_and_frees_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = Outbox::open(dir.path()).expect("open");
        let big = vec![7u8; 64 * 1024];
        for i in 0..200 {
            let id = format!("j{i}");
            o.append(&[Change::Job {
                meta: &meta(&id),
                state: &JobState::default(),
                body: &big,
            }])
            .expect("append");
            if i % 10 != 0 {
                o.append(&[Change::Gone { id: &id }]).expect("gone");
            }
        }
        let before = o.disk_bytes();
        assert!(o.compact_if_worth_it().expect("compact"));
        assert!(
            o.disk_bytes() < before / 5,
            "{} vs {before}",
            o.disk_bytes()
        );
        assert_eq!(o.len(), 20);
        drop(o);
        let o = Outbox::open(dir.path()).expect("reopen");
        assert_eq!(o.len(), 20);
        assert_eq!(o.read_body("j190").expect("body"), big);
    }

    /// After a compaction the live forwards still count as live: it is not due again at
    /// once (it used to be, on every write, while ≥ 8 MiB were live), and forgetting one
    /// afterwards does not take the count below zero.
    #[test]
    fn a_compaction_is_not_due_again_right_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = Outbox::open(dir.path()).expect("open");
        let big = vec![7u8; 64 * 1024];
        // 150 live (9.4 MiB, above the 8 MiB minimum), 300 delivered.
        for i in 0..450 {
            let id = format!("j{i}");
            o.append(&[Change::Job {
                meta: &meta(&id),
                state: &JobState::default(),
                body: &big,
            }])
            .expect("append");
            if i % 3 != 0 {
                o.append(&[Change::Gone { id: &id }]).expect("gone");
            }
        }
        assert!(o.compact_if_worth_it().expect("compact"));
        assert!(!o.compact_if_worth_it().expect("check"), "compacted again");
        o.forget_in_memory("j0");
        o.append(&[Change::Gone { id: "j0" }]).expect("gone");
        assert!(!o.compact_if_worth_it().expect("check"), "compacted again");
        assert_eq!(o.len(), 149);
    }
}
