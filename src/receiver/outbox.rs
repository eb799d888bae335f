//! The outbox: pending and dead-lettered forwards, their bodies on disk.
//!
//! Why not the delivery journal itself: a dead letter lives for days (`deadLetterTTL`),
//! and a journal segment can only be dropped whole, so one dead letter would pin every
//! delivery journaled after it. The journal keeps a forward until the outbox has it:
//! the status loop imports a journaled delivery's forwards here and syncs the outbox
//! ([`Outbox::sync`]) before its applied mark or checkpoint may cover that delivery, and
//! replays at start re-import what the checkpoint does not cover (ids make that
//! idempotent). Appends are not synced one by one: a killed process loses nothing the
//! kernel has, and what a crash of the machine loses since the last sync is either still
//! in the journal (imports) or an outcome, whose loss means one more attempt.
//!
//! Layout: `DIR/out-<n>.log` segments, append-only, each record framed as
//! `len:u32 crc:u32 payload` (crc over payload; little endian), payload =
//! `kind:u8 meta_len:u32 meta body`. Kinds: a job (JSON metadata + rendered body), a state
//! change (attempts, next attempt or dead letter) and a tombstone (delivered, expired or
//! dropped); the newest record of a forward wins. State changes and tombstones name the
//! forward by its [`Key`] in a fixed binary layout (older outboxes named it by its id in
//! JSON: still read).
//!
//! **Memory holds only what scheduling needs**: per forward one fixed-size [`Slot`]
//! (its [`Key`], the interned integration/target [`Lane`], attempts, when it is due or
//! when it died, where its record is), ~60 bytes with the map's own overhead, whatever
//! the body or headers. Everything else (ids, event, format, content type, headers, body)
//! is read back from disk with one positioned read when an attempt starts
//! ([`JobRef::read`]). docs/bench.md "Forwarding" has the measured cost.
//!
//! Compaction copies the live jobs into a fresh segment once the dead bytes outweigh the
//! live ones, then deletes the older segments. A short or corrupt tail of the newest
//! segment (a crash mid-append: never acknowledged to anyone) is cut off at open.
//!
//! A small store of our own rather than an embedded database: one writer, sequential
//! appends, positioned reads and whole-segment deletes are all it needs, and the crate
//! avoids a C dependency and its build minutes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const FRAME_HEADER: usize = 8;
const KIND_JOB: u8 = 1;
/// Older outboxes: a state change naming the forward by its id, in JSON.
const KIND_STATE_JSON: u8 = 2;
/// Older outboxes: a tombstone naming the forward by its id, in JSON.
const KIND_GONE_JSON: u8 = 3;
/// `key:16 attempts:u32 at_ms:i64 dead:u8 last_failure:utf8…`
const KIND_STATE: u8 = 4;
/// `key:16`
const KIND_GONE: u8 = 5;
const STATE_FIXED: usize = 16 + 4 + 8 + 1;
/// Largest record: a rendered body is bounded by `maxBodyBytes` (64 MiB at most) plus
/// its envelope.
const MAX_RECORD: usize = 96 * 1024 * 1024;
/// Segments roll over at this size.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Compaction waits until there is at least this much to reclaim.
const MIN_COMPACT_BYTES: u64 = 8 * 1024 * 1024;
/// A stored `lastFailure` is cut to this many bytes (it is for people reading the file).
const MAX_FAILURE_BYTES: usize = 512;

/// A forward's name in memory and in state records: the first 16 bytes of SHA-256 of its
/// id (`webhook-id/target`). Fixed-size where the id is ~45 bytes plus a heap allocation
/// in every structure that holds it; 128 bits make a collision among the forwards one
/// outbox holds out of reach.
pub type Key = [u8; 16];

pub fn key_of(id: &str) -> Key {
    let digest = Sha256::digest(id.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// An interned (integration, target) pair.
pub type Lane = u32;

/// Keys are SHA-256 bytes already: their first eight bytes are the hash.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 16]` hashes as its length then its bytes: keep the first 8 key bytes.
        if bytes.len() >= 8 {
            let mut first = [0u8; 8];
            first.copy_from_slice(&bytes[..8]);
            self.0 ^= u64::from_le_bytes(first);
        }
    }

    fn write_usize(&mut self, _len: usize) {}
}

pub type KeyMap<V> = HashMap<Key, V, BuildHasherDefault<KeyHasher>>;

/// What the outbox keeps of one forward besides its body (on disk, in its job record).
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

/// Where a forward stands, as written to disk.
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

#[derive(Deserialize)]
struct JsonStateRecord<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(flatten)]
    state: JobState,
}

#[derive(Deserialize)]
struct JsonGoneRecord<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
}

/// A live forward in memory: what scheduling needs and where the rest is. `Copy`, 40
/// bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub lane: Lane,
    /// Attempts made so far.
    pub attempts: u32,
    /// Pending: when the next attempt is due. Dead: when it was dead-lettered (Unix ms).
    pub at_ms: i64,
    pub dead: bool,
    segment: u32,
    meta_len: u32,
    body_len: u32,
    /// Where the job record's metadata starts (its body follows).
    offset: u64,
}

impl Slot {
    pub fn body_len(&self) -> usize {
        self.body_len as usize
    }

    fn apply(&mut self, state: &JobState) {
        self.attempts = state.attempts;
        match state.dead_at_ms {
            Some(at) => {
                self.dead = true;
                self.at_ms = at;
            }
            None => {
                self.dead = false;
                self.at_ms = state.next_at_ms;
            }
        }
    }

    /// Bytes of its job record (what compaction would copy).
    fn record_bytes(&self) -> u64 {
        u64::from(self.meta_len) + u64::from(self.body_len) + (FRAME_HEADER + 5) as u64
    }
}

/// An interned integration/target pair and how many live forwards it has.
#[derive(Debug)]
struct LaneEntry {
    integration: Arc<str>,
    target: Arc<str>,
    live: usize,
}

/// A job read back from disk.
#[derive(Debug)]
pub struct StoredJob {
    pub meta: JobMeta,
    /// A view of the buffer the record was read into (no copy).
    pub body: bytes::Bytes,
}

/// Where a live job's record is: read it with [`JobRef::read`], off the outbox's lock
/// (the file stays readable after a compaction deletes it).
#[derive(Clone, Debug)]
pub struct JobRef {
    file: Arc<File>,
    offset: u64,
    meta_len: u32,
    body_len: u32,
}

impl JobRef {
    /// One positioned read of the metadata and body.
    pub fn read(&self) -> io::Result<StoredJob> {
        let meta_len = self.meta_len as usize;
        let mut buf = vec![0u8; meta_len + self.body_len as usize];
        self.file.read_exact_at(&mut buf, self.offset)?;
        let (meta, _): (JobMeta, JobState) =
            serde_json::from_slice(&buf[..meta_len]).map_err(io::Error::other)?;
        Ok(StoredJob {
            meta,
            body: bytes::Bytes::from(buf).slice(meta_len..),
        })
    }
}

/// The active segment at one moment, to `fdatasync` without holding the outbox.
#[derive(Debug)]
pub struct SyncHandle {
    file: File,
    segment: u64,
    len: u64,
}

impl SyncHandle {
    /// One `fdatasync` of the segment (it covers every byte written before it).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
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
        key: Key,
        state: &'a JobState,
    },
    Gone {
        key: Key,
    },
}

/// The outbox: see the module docs. Not shared: one forwarder task owns it (through a
/// mutex, for `spawn_blocking`).
pub struct Outbox {
    dir: PathBuf,
    active: File,
    active_id: u64,
    active_len: u64,
    live: KeyMap<Slot>,
    lanes: Vec<LaneEntry>,
    lane_index: HashMap<Arc<str>, HashMap<Arc<str>, Lane>>,
    /// Read handles of the segments live jobs are in.
    readers: HashMap<u32, Arc<File>>,
    /// Bytes of live job records (bodies and metadata).
    live_bytes: u64,
    /// Bytes in all segments.
    total_bytes: u64,
    /// How much of the active segment an `fdatasync` has covered ([`Outbox::sync`]).
    synced_len: u64,
    /// A compaction's copies are written and not yet synced ([`Compaction`]).
    compacting: bool,
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

fn encode_state(key: &Key, state: &JobState, out: &mut Vec<u8>) {
    out.extend_from_slice(key);
    out.extend_from_slice(&state.attempts.to_le_bytes());
    let (at, dead) = match state.dead_at_ms {
        Some(at) => (at, 1u8),
        None => (state.next_at_ms, 0u8),
    };
    out.extend_from_slice(&at.to_le_bytes());
    out.push(dead);
    if let Some(failure) = &state.last_failure {
        let mut end = failure.len().min(MAX_FAILURE_BYTES);
        while !failure.is_char_boundary(end) {
            end -= 1;
        }
        out.extend_from_slice(&failure.as_bytes()[..end]);
    }
}

/// A binary state record: the key and the state (without `last_failure`, which memory
/// does not keep).
fn decode_state(meta: &[u8]) -> Option<(Key, JobState)> {
    if meta.len() < STATE_FIXED {
        return None;
    }
    let key: Key = meta[..16].try_into().ok()?;
    let attempts = u32::from_le_bytes(meta[16..20].try_into().ok()?);
    let at = i64::from_le_bytes(meta[20..28].try_into().ok()?);
    let dead = meta[28] != 0;
    Some((
        key,
        JobState {
            attempts,
            next_at_ms: if dead { 0 } else { at },
            dead_at_ms: dead.then_some(at),
            last_failure: None,
        },
    ))
}

/// One decoded record: kind, meta, and where its meta and body are within `bytes`.
struct Decoded<'a> {
    kind: u8,
    meta: &'a [u8],
    meta_at: usize,
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
        meta_at: at + FRAME_HEADER + 5,
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
        let newest = ids.last().copied();
        let active_id = newest.map_or(1, |n| n + 1);
        let active = create_segment(dir, active_id)?;
        let mut outbox = Outbox {
            dir: dir.to_path_buf(),
            active,
            active_id,
            active_len: 0,
            live: KeyMap::default(),
            lanes: Vec::new(),
            lane_index: HashMap::new(),
            readers: HashMap::new(),
            live_bytes: 0,
            total_bytes: 0,
            synced_len: 0,
            compacting: false,
        };
        for &id in &ids {
            let path = dir.join(segment_name(id));
            let mut bytes = Vec::new();
            File::open(&path)?.read_to_end(&mut bytes)?;
            let segment = u32::try_from(id).map_err(io::Error::other)?;
            let mut at = 0;
            while at < bytes.len() {
                let Some(record) = decode(&bytes, at) else {
                    break;
                };
                outbox.apply_record(segment, &record);
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
            outbox.total_bytes += at as u64;
        }
        outbox.live_bytes = outbox.live.values().map(Slot::record_bytes).sum();
        let mut wanted: Vec<u32> = outbox.live.values().map(|s| s.segment).collect();
        wanted.sort_unstable();
        wanted.dedup();
        for segment in wanted {
            outbox.reader(segment)?;
        }
        let active_reader = outbox.active.try_clone()?;
        outbox.readers.insert(
            u32::try_from(active_id).map_err(io::Error::other)?,
            Arc::new(active_reader),
        );
        Ok(outbox)
    }

    fn reader(&mut self, segment: u32) -> io::Result<Arc<File>> {
        if let Some(f) = self.readers.get(&segment) {
            return Ok(f.clone());
        }
        let file = Arc::new(File::open(self.dir.join(segment_name(u64::from(segment))))?);
        self.readers.insert(segment, file.clone());
        Ok(file)
    }

    /// Interns an integration/target pair.
    fn intern(&mut self, integration: &str, target: &str) -> Lane {
        if let Some(lane) = self.lane_index.get(integration).and_then(|t| t.get(target)) {
            return *lane;
        }
        let lane = Lane::try_from(self.lanes.len()).unwrap_or(Lane::MAX);
        let integration: Arc<str> = match self.lane_index.get_key_value(integration) {
            Some((k, _)) => k.clone(),
            None => Arc::from(integration),
        };
        let target: Arc<str> = Arc::from(target);
        self.lanes.push(LaneEntry {
            integration: integration.clone(),
            target: target.clone(),
            live: 0,
        });
        self.lane_index
            .entry(integration)
            .or_default()
            .insert(target, lane);
        lane
    }

    fn insert(&mut self, key: Key, slot: Slot) {
        self.live_bytes += slot.record_bytes();
        if let Some(old) = self.live.insert(key, slot) {
            self.live_bytes -= old.record_bytes();
            self.lane_mut(old.lane).live -= 1;
        }
        self.lane_mut(slot.lane).live += 1;
    }

    fn remove(&mut self, key: &Key) -> Option<Slot> {
        let old = self.live.remove(key)?;
        self.live_bytes -= old.record_bytes();
        self.lane_mut(old.lane).live -= 1;
        Some(old)
    }

    fn lane_mut(&mut self, lane: Lane) -> &mut LaneEntry {
        &mut self.lanes[lane as usize]
    }

    fn apply_record(&mut self, segment: u32, record: &Decoded<'_>) {
        match record.kind {
            KIND_JOB => {
                if let Ok((meta, state)) =
                    serde_json::from_slice::<(JobMeta, JobState)>(record.meta)
                {
                    let lane = self.intern(&meta.integration, &meta.target);
                    let mut slot = Slot {
                        lane,
                        attempts: 0,
                        at_ms: 0,
                        dead: false,
                        segment,
                        meta_len: u32::try_from(record.meta.len()).unwrap_or(u32::MAX),
                        body_len: u32::try_from(record.body_len).unwrap_or(u32::MAX),
                        offset: record.meta_at as u64,
                    };
                    slot.apply(&state);
                    self.insert(key_of(&meta.id), slot);
                }
            }
            KIND_STATE => {
                if let Some((key, state)) = decode_state(record.meta)
                    && let Some(slot) = self.live.get_mut(&key)
                {
                    slot.apply(&state);
                }
            }
            KIND_GONE => {
                if let Ok(key) = Key::try_from(record.meta) {
                    self.remove(&key);
                }
            }
            KIND_STATE_JSON => {
                if let Ok(s) = serde_json::from_slice::<JsonStateRecord<'_>>(record.meta)
                    && let Some(slot) = self.live.get_mut(&key_of(&s.id))
                {
                    slot.apply(&s.state);
                }
            }
            KIND_GONE_JSON => {
                if let Ok(g) = serde_json::from_slice::<JsonGoneRecord<'_>>(record.meta) {
                    self.remove(&key_of(&g.id));
                }
            }
            _ => {}
        }
    }

    /// Every live forward (pending and dead-lettered).
    pub fn slots(&self) -> impl Iterator<Item = (&Key, &Slot)> {
        self.live.iter()
    }

    pub fn get(&self, key: &Key) -> Option<Slot> {
        self.live.get(key).copied()
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.live.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The integration (`namespace/name`) and target of a lane.
    pub fn lane(&self, lane: Lane) -> Option<(Arc<str>, Arc<str>)> {
        self.lanes
            .get(lane as usize)
            .map(|l| (l.integration.clone(), l.target.clone()))
    }

    /// The lane of an integration/target pair, if any forward of it was ever seen.
    pub fn lane_of(&self, integration: &str, target: &str) -> Option<Lane> {
        self.lane_index.get(integration)?.get(target).copied()
    }

    /// Integrations with live forwards.
    pub fn integrations(&self) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = self
            .lanes
            .iter()
            .filter(|l| l.live > 0)
            .map(|l| l.integration.clone())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Bytes on disk (what the journal cap also counts).
    pub fn disk_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Appends `changes` with one write. A crashed or killed process loses none of it
    /// (the kernel has it); it is durable against a crash of the machine once
    /// [`Outbox::sync`] (or [`Outbox::sync_handle`]) has covered it: the status loop syncs
    /// before the journal may forget the deliveries these forwards came from, so an
    /// import lost with the machine is imported again from the journal, and a lost
    /// outcome means one more attempt (at least once, same `webhook-id`).
    pub fn append(&mut self, changes: &[Change<'_>]) -> io::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        // Sized once: a job's record is its body, its metadata (~300 bytes of JSON plus
        // its headers) and framing; state and tombstone records are small.
        let mut buf = Vec::with_capacity(
            changes
                .iter()
                .map(|c| match c {
                    Change::Job { meta, body, .. } => {
                        body.len()
                            + 512
                            + meta
                                .headers
                                .iter()
                                .map(|(n, v)| n.len() + v.len() + 8)
                                .sum::<usize>()
                    }
                    Change::State { .. } => 64,
                    Change::Gone { .. } => 32,
                })
                .sum(),
        );
        let mut metas = Vec::with_capacity(changes.len());
        let mut state = Vec::new();
        for change in changes {
            match change {
                Change::Job { meta, state, body } => {
                    let m = serde_json::to_vec(&(meta, state)).map_err(io::Error::other)?;
                    encode(KIND_JOB, &m, body, &mut buf)?;
                    let meta_at = buf.len() - body.len() - m.len();
                    metas.push((meta_at, m.len()));
                }
                Change::State { key, state: s } => {
                    state.clear();
                    encode_state(key, s, &mut state);
                    encode(KIND_STATE, &state, &[], &mut buf)?;
                    metas.push((0, 0));
                }
                Change::Gone { key } => {
                    encode(KIND_GONE, key, &[], &mut buf)?;
                    metas.push((0, 0));
                }
            }
        }
        self.write(&buf)?;
        let base = self.active_len - buf.len() as u64;
        let segment = u32::try_from(self.active_id).map_err(io::Error::other)?;
        for (change, (meta_at, meta_len)) in changes.iter().zip(metas) {
            match change {
                Change::Job { meta, state, body } => {
                    let lane = self.intern(&meta.integration, &meta.target);
                    let mut slot = Slot {
                        lane,
                        attempts: 0,
                        at_ms: 0,
                        dead: false,
                        segment,
                        meta_len: u32::try_from(meta_len).unwrap_or(u32::MAX),
                        body_len: u32::try_from(body.len()).unwrap_or(u32::MAX),
                        offset: base + meta_at as u64,
                    };
                    slot.apply(state);
                    self.insert(key_of(&meta.id), slot);
                }
                Change::State { key, state } => self.set_state_in_memory(key, state),
                Change::Gone { key } => {
                    self.remove(key);
                }
            }
        }
        Ok(())
    }

    /// Writes `buf` at the end of the active segment, rolling over to a new one first if
    /// it is full (the full one is `fdatasync`ed then, so only the active segment can hold
    /// unsynced bytes).
    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.active_len >= SEGMENT_BYTES {
            self.active.sync_data()?;
            self.active_id += 1;
            self.active = create_segment(&self.dir, self.active_id)?;
            self.active_len = 0;
            self.synced_len = 0;
            let segment = u32::try_from(self.active_id).map_err(io::Error::other)?;
            self.readers
                .insert(segment, Arc::new(self.active.try_clone()?));
        }
        self.active.write_all(buf)?;
        self.active_len += buf.len() as u64;
        self.total_bytes += buf.len() as u64;
        Ok(())
    }

    /// Whether some appended bytes are not covered by an `fdatasync` yet.
    pub fn unsynced(&self) -> bool {
        self.active_len > self.synced_len
    }

    /// Makes everything appended so far durable (one `fdatasync`, none when nothing is
    /// new).
    pub fn sync(&mut self) -> io::Result<()> {
        if let Some(handle) = self.sync_handle()? {
            handle.sync()?;
            self.synced(&handle);
        }
        Ok(())
    }

    /// What an `fdatasync` outside the lock needs: the active segment's handle and how
    /// much of it is written; `None` when everything is synced. Call
    /// [`SyncHandle::sync`] without holding the outbox, then [`Outbox::synced`].
    pub fn sync_handle(&self) -> io::Result<Option<SyncHandle>> {
        if !self.unsynced() {
            return Ok(None);
        }
        Ok(Some(SyncHandle {
            file: self.active.try_clone()?,
            segment: self.active_id,
            len: self.active_len,
        }))
    }

    /// Records that `handle`'s sync covered its length (a no-op if the segment rolled
    /// over meanwhile: roll-over syncs the old segment itself).
    pub fn synced(&mut self, handle: &SyncHandle) {
        if handle.segment == self.active_id {
            self.synced_len = self.synced_len.max(handle.len);
        }
    }

    /// Moves a forward's next attempt without a record (a deferral that need not survive
    /// a restart).
    pub fn set_next_in_memory(&mut self, key: &Key, at_ms: i64) {
        if let Some(slot) = self.live.get_mut(key)
            && !slot.dead
        {
            slot.at_ms = at_ms;
        }
    }

    /// Sets a forward's state in the index after its record was appended (or before,
    /// when the record is staged for the next append).
    pub fn set_state_in_memory(&mut self, key: &Key, state: &JobState) {
        if let Some(slot) = self.live.get_mut(key) {
            slot.apply(state);
        }
    }

    /// Drops a forward from the index (its tombstone is appended separately).
    pub fn forget_in_memory(&mut self, key: &Key) {
        self.remove(key);
    }

    /// Where a live forward's record is, to read it off the lock.
    pub fn job_ref(&mut self, key: &Key) -> io::Result<JobRef> {
        let slot = self
            .live
            .get(key)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such forward"))?;
        Ok(JobRef {
            file: self.reader(slot.segment)?,
            offset: slot.offset,
            meta_len: slot.meta_len,
            body_len: slot.body_len,
        })
    }

    /// A live forward's metadata and body, read from disk.
    pub fn read_job(&mut self, key: &Key) -> io::Result<StoredJob> {
        self.job_ref(key)?.read()
    }

    /// Copies the live forwards into a fresh segment and deletes the older ones, when the
    /// dead bytes outweigh the live ones. Returns whether it compacted. Memory stays
    /// bounded: one chunk of records at a time. Holds `self` throughout, `fdatasync`s
    /// included: the forwarder, which shares the outbox, uses
    /// [`Outbox::begin_compaction`] instead; this is the tests' one-call form.
    #[cfg(test)]
    pub fn compact_if_worth_it(&mut self) -> io::Result<bool> {
        match self.begin_compaction()? {
            Some(c) => {
                c.sync()?;
                self.finish_compaction(c)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// See [`Outbox::compact_if_worth_it`]; unconditional.
    #[cfg(test)]
    pub fn compact(&mut self) -> io::Result<()> {
        let c = self.copy_live()?;
        c.sync()?;
        self.finish_compaction(c)
    }

    /// The first step of a compaction, when one is worth it (and none is under way):
    /// copies the live forwards into a fresh segment, which new appends share. The
    /// copies are not durable yet and the old segments still exist: call
    /// [`Compaction::sync`] without holding the outbox (the `fdatasync` of tens of MiB
    /// took the lock, and with it every async worker touching the outbox, for as long),
    /// then [`Outbox::finish_compaction`] (or [`Outbox::abandon_compaction`] if the sync
    /// failed).
    pub fn begin_compaction(&mut self) -> io::Result<Option<Compaction>> {
        let dead = self.total_bytes.saturating_sub(self.live_bytes);
        if self.compacting || dead < MIN_COMPACT_BYTES || dead < self.live_bytes {
            return Ok(None);
        }
        self.copy_live().map(Some)
    }

    /// Copies each live job's record byte for byte, followed by a state record with its
    /// current state.
    fn copy_live(&mut self) -> io::Result<Compaction> {
        let old: Vec<u64> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| parse_segment_name(&e.file_name().to_string_lossy()))
            .filter(|id| *id <= self.active_id)
            .collect();
        // The old active segment's unsynced tail is synced with the copies.
        let old_active = self.active.try_clone()?;
        self.active_id += 1;
        self.active = create_segment(&self.dir, self.active_id)?;
        self.active_len = 0;
        self.synced_len = 0;
        self.total_bytes = 0;
        // The copies are read through the old segments' handles; new ones go to the map.
        let mut old_readers = std::mem::take(&mut self.readers);
        self.readers.insert(
            u32::try_from(self.active_id).map_err(io::Error::other)?,
            Arc::new(self.active.try_clone()?),
        );
        let keys: Vec<Key> = self.live.keys().copied().collect();
        let mut record = Vec::new();
        let mut state = Vec::new();
        for chunk in keys.chunks(256) {
            let mut buf = Vec::new();
            let mut moved = Vec::with_capacity(chunk.len());
            for key in chunk {
                let Some(slot) = self.live.get(key).copied() else {
                    continue;
                };
                let file = match old_readers.get(&slot.segment) {
                    Some(f) => f.clone(),
                    None => {
                        let f = Arc::new(File::open(
                            self.dir.join(segment_name(u64::from(slot.segment))),
                        )?);
                        old_readers.insert(slot.segment, f.clone());
                        f
                    }
                };
                let meta_len = slot.meta_len as usize;
                record.clear();
                record.resize(meta_len + slot.body_len as usize, 0);
                file.read_exact_at(&mut record, slot.offset)?;
                let (meta, body) = record.split_at(meta_len);
                encode(KIND_JOB, meta, body, &mut buf)?;
                let meta_at = buf.len() - record.len();
                state.clear();
                encode_state(
                    key,
                    &JobState {
                        attempts: slot.attempts,
                        next_at_ms: slot.at_ms,
                        dead_at_ms: slot.dead.then_some(slot.at_ms),
                        last_failure: None,
                    },
                    &mut state,
                );
                encode(KIND_STATE, &state, &[], &mut buf)?;
                moved.push((*key, meta_at));
            }
            self.write(&buf)?;
            // After any roll-over: the chunk is in the active segment.
            let segment = u32::try_from(self.active_id).map_err(io::Error::other)?;
            let base = self.active_len - buf.len() as u64;
            for (key, meta_at) in moved {
                if let Some(slot) = self.live.get_mut(&key) {
                    slot.segment = segment;
                    slot.offset = base + meta_at as u64;
                }
            }
        }
        self.live_bytes = self.live.values().map(Slot::record_bytes).sum();
        // Attempts still holding a handle of an old segment read it all the same.
        drop(old_readers);
        let new = SyncHandle {
            file: self.active.try_clone()?,
            segment: self.active_id,
            len: self.active_len,
        };
        // Only once nothing can fail: a flag left set would stop every later compaction.
        self.compacting = true;
        Ok(Compaction {
            old,
            old_active,
            new,
        })
    }

    /// The last step of a compaction whose copies [`Compaction::sync`] made durable:
    /// deletes the old segments.
    pub fn finish_compaction(&mut self, c: Compaction) -> io::Result<()> {
        self.compacting = false;
        self.synced(&c.new);
        for id in c.old {
            match std::fs::remove_file(self.dir.join(segment_name(id))) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        sync_dir(&self.dir)
    }

    /// A compaction whose sync failed: the old segments stay (replay reads both copies;
    /// the next compaction deletes them once its own copies are durable).
    pub fn abandon_compaction(&mut self) {
        self.compacting = false;
    }
}

/// A compaction between its copy and the deletion of the old segments (see
/// [`Outbox::begin_compaction`]).
#[derive(Debug)]
pub struct Compaction {
    old: Vec<u64>,
    old_active: File,
    new: SyncHandle,
}

impl Compaction {
    /// Makes the copies (and the old active segment's tail) durable; no outbox lock
    /// needed.
    pub fn sync(&self) -> io::Result<()> {
        self.old_active.sync_data()?;
        self.new.sync()
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
    fn appends_are_synced_on_request_once_and_the_handle_syncs_without_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = Outbox::open(dir.path()).expect("open");
        assert!(!o.unsynced());
        assert!(
            o.sync_handle().expect("handle").is_none(),
            "nothing to sync"
        );
        let s = JobState::default();
        o.append(&[Change::Job {
            meta: &meta("a"),
            state: &s,
            body: b"body-a",
        }])
        .expect("append");
        assert!(o.unsynced(), "an append is not synced by itself");
        let handle = o.sync_handle().expect("handle").expect("something to sync");
        // More bytes after the handle was taken: its sync does not cover them.
        o.append(&[Change::Gone { key: key_of("a") }])
            .expect("append");
        handle.sync().expect("fdatasync");
        o.synced(&handle);
        assert!(o.unsynced(), "the later append is still unsynced");
        o.sync().expect("sync");
        assert!(!o.unsynced());
        assert!(o.sync_handle().expect("handle").is_none());
        // A handle taken before a compaction (a new active segment) marks nothing.
        o.append(&[Change::Job {
            meta: &meta("b"),
            state: &s,
            body: b"body-b",
        }])
        .expect("append");
        let stale = o.sync_handle().expect("handle").expect("unsynced");
        o.compact().expect("compact");
        assert!(!o.unsynced(), "compaction syncs what it copied");
        o.append(&[Change::Gone { key: key_of("b") }])
            .expect("append");
        stale.sync().expect("fdatasync");
        o.synced(&stale);
        assert!(
            o.unsynced(),
            "a stale handle does not mark the new segment synced"
        );
        drop(o);
        // What was written (synced or not) is read back by the next process.
        let o = Outbox::open(dir.path()).expect("reopen");
        assert!(o.is_empty(), "a and b were delivered: {o:?}");
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
                    key: key_of("a"),
                    state: &retried,
                },
                Change::Gone { key: key_of("b") },
            ])
            .expect("append");
        }
        let mut o = Outbox::open(dir.path()).expect("reopen");
        assert_eq!(o.len(), 1);
        let a = o.get(&key_of("a")).expect("a");
        assert_eq!((a.attempts, a.at_ms, a.dead), (2, 99, false));
        let job = o.read_job(&key_of("a")).expect("job");
        assert_eq!(job.body, &b"body-a"[..]);
        assert_eq!(job.meta, meta("a"));
        assert!(!o.contains(&key_of("b")));
        let (integration, target) = o.lane(a.lane).expect("lane");
        assert_eq!((&*integration, &*target), ("ns/a", "t"));
        assert_eq!(o.integrations(), vec![Arc::<str>::from("ns/a")]);
    }

    /// An outbox written before state records named forwards by key (JSON records with
    /// the id) still opens with its states and tombstones applied.
    #[test]
    fn json_state_and_tombstone_records_of_older_outboxes_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut buf = Vec::new();
        for id in ["a", "b"] {
            let m = serde_json::to_vec(&(meta(id), JobState::default())).expect("json");
            encode(KIND_JOB, &m, id.as_bytes(), &mut buf).expect("encode");
        }
        let state = br#"{"id":"a","attempts":3,"nextAtMs":0,"deadAtMs":77,"lastFailure":"410"}"#;
        encode(KIND_STATE_JSON, state, &[], &mut buf).expect("encode");
        encode(KIND_GONE_JSON, br#"{"id":"b"}"#, &[], &mut buf).expect("encode");
        std::fs::write(dir.path().join(segment_name(1)), &buf).expect("write");
        let mut o = Outbox::open(dir.path()).expect("open");
        assert_eq!(o.len(), 1);
        let a = o.get(&key_of("a")).expect("a");
        assert_eq!((a.attempts, a.at_ms, a.dead), (3, 77, true));
        assert_eq!(o.read_job(&key_of("a")).expect("job").body, &b"a"[..]);
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
        let mut o = Outbox::open(dir.path()).expect("reopen");
        assert_eq!(o.read_job(&key_of("a")).expect("job").body, &b"kept"[..]);
    }

    #[test]
    fn a_compaction_syncs_outside_and_the_outbox_goes_on_meanwhile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = Outbox::open(dir.path()).expect("open");
        let big = vec![3u8; 64 * 1024];
        let job = |o: &mut Outbox, id: &str| {
            o.append(&[Change::Job {
                meta: &meta(id),
                state: &JobState::default(),
                body: &big,
            }])
            .expect("append")
        };
        for i in 0..200 {
            job(&mut o, &format!("j{i}"));
            if i % 10 != 0 {
                o.append(&[Change::Gone {
                    key: key_of(&format!("j{i}")),
                }])
                .expect("gone");
            }
        }
        let segments = |dir: &Path| {
            std::fs::read_dir(dir)
                .expect("dir")
                .filter_map(|e| parse_segment_name(&e.ok()?.file_name().to_string_lossy()))
                .count()
        };
        assert_eq!(segments(dir.path()), 1);
        let c = o
            .begin_compaction()
            .expect("copy")
            .expect("worth compacting");
        // While the copies wait for their sync (the lock is free): no second compaction,
        // appends, state changes and reads go on, against old and new segments.
        assert!(o.begin_compaction().expect("check").is_none());
        assert_eq!(
            segments(dir.path()),
            2,
            "the old segment stays until the sync"
        );
        job(&mut o, "during");
        let retry = JobState {
            attempts: 2,
            next_at_ms: 99,
            dead_at_ms: None,
            last_failure: Some("HTTP 503".into()),
        };
        o.append(&[Change::State {
            key: key_of("j10"),
            state: &retry,
        }])
        .expect("state");
        o.append(&[Change::Gone { key: key_of("j20") }])
            .expect("gone");
        assert_eq!(o.read_job(&key_of("j30")).expect("moved job").body, big);
        c.sync().expect("sync");
        o.finish_compaction(c).expect("finish");
        assert_eq!(segments(dir.path()), 1, "the old segment is gone");
        drop(o);
        let mut o = Outbox::open(dir.path()).expect("reopen");
        // 20 kept, one more during the compaction, one delivered during it.
        assert_eq!(o.len(), 20);
        assert_eq!(o.read_job(&key_of("during")).expect("job").body, big);
        assert!(o.get(&key_of("j20")).is_none());
        let slot = o.get(&key_of("j10")).expect("slot");
        assert_eq!((slot.attempts, slot.at_ms, slot.dead), (2, 99, false));
        // An abandoned compaction (its sync failed) leaves the old segments to the next.
        for i in 0..300 {
            job(&mut o, &format!("k{i}"));
            o.append(&[Change::Gone {
                key: key_of(&format!("k{i}")),
            }])
            .expect("gone");
        }
        let before = segments(dir.path());
        let c = o.begin_compaction().expect("copy").expect("worth it");
        drop(c);
        o.abandon_compaction();
        assert_eq!(segments(dir.path()), before + 1);
        o.compact().expect("compact");
        assert_eq!(segments(dir.path()), 1);
        assert_eq!(o.len(), 20);
    }

    #[test]
    fn compaction_keeps_live_bodies_and_states_and_frees_the_rest() {
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
                o.append(&[Change::Gone { key: key_of(&id) }])
                    .expect("gone");
            }
        }
        let dead = JobState {
            attempts: 6,
            next_at_ms: 0,
            dead_at_ms: Some(1234),
            last_failure: Some("HTTP 410".into()),
        };
        o.append(&[Change::State {
            key: key_of("j190"),
            state: &dead,
        }])
        .expect("state");
        // A reader taken before the compaction still reads its (deleted) segment.
        let before_ref = o.job_ref(&key_of("j180")).expect("ref");
        let before = o.disk_bytes();
        assert!(o.compact_if_worth_it().expect("compact"));
        assert!(
            o.disk_bytes() < before / 5,
            "{} vs {before}",
            o.disk_bytes()
        );
        assert_eq!(o.len(), 20);
        assert_eq!(before_ref.read().expect("old read").body, big);
        assert_eq!(o.read_job(&key_of("j180")).expect("job").body, big);
        drop(o);
        let mut o = Outbox::open(dir.path()).expect("reopen");
        assert_eq!(o.len(), 20);
        let job = o.read_job(&key_of("j190")).expect("job");
        assert_eq!(job.body, big);
        assert_eq!(job.meta.id, "j190");
        let slot = o.get(&key_of("j190")).expect("slot");
        assert_eq!((slot.attempts, slot.at_ms, slot.dead), (6, 1234, true));
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
                o.append(&[Change::Gone { key: key_of(&id) }])
                    .expect("gone");
            }
        }
        assert!(o.compact_if_worth_it().expect("compact"));
        assert!(!o.compact_if_worth_it().expect("check"), "compacted again");
        o.forget_in_memory(&key_of("j0"));
        o.append(&[Change::Gone { key: key_of("j0") }])
            .expect("gone");
        assert!(!o.compact_if_worth_it().expect("check"), "compacted again");
        assert_eq!(o.len(), 149);
    }

    /// What memory holds per forward is fixed: no id, metadata or body.
    #[test]
    fn a_slot_is_small_and_fixed_size() {
        assert!(
            std::mem::size_of::<Slot>() <= 40,
            "{}",
            std::mem::size_of::<Slot>()
        );
        assert_eq!(std::mem::size_of::<Key>(), 16);
    }

    /// Lanes count their live forwards: an integration whose forwards are all gone is no
    /// longer listed.
    #[test]
    fn integrations_lists_only_those_with_live_forwards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = Outbox::open(dir.path()).expect("open");
        let mut other = meta("x");
        other.integration = "ns/b".into();
        o.append(&[
            Change::Job {
                meta: &meta("a"),
                state: &JobState::default(),
                body: b"",
            },
            Change::Job {
                meta: &other,
                state: &JobState::default(),
                body: b"",
            },
        ])
        .expect("append");
        assert_eq!(o.integrations().len(), 2);
        o.append(&[Change::Gone { key: key_of("x") }])
            .expect("gone");
        assert_eq!(o.integrations(), vec![Arc::<str>::from("ns/a")]);
        assert_eq!(o.lane_of("ns/b", "t").map(|_| ()), Some(()));
    }
}
