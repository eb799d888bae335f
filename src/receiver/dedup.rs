//! Delivery-id deduplication: bounded memory, per-entry expiry (the route's dedup
//! window), and exactly one winner among concurrent copies of the same delivery.
//!
//! Senders retry on timeouts, so two copies of one delivery can be in flight at once.
//! The first copy *claims* the id; later copies wait for its outcome instead of being
//! answered at once: when the claim ends in a durable accept they are duplicates (2xx);
//! when it fails (sink overloaded, client gone) the id is forgotten and they are told to
//! retry, so a 2xx never stands for a delivery that was not kept. (A copy still in
//! flight when its whole window has passed is replaced by the next copy; copies waiting
//! on it are told to retry, and find the new claim when they do.)
//!
//! Memory is the design constraint (DESIGN.md: 100,000 remembered ids within the
//! receiver's 64 MiB), so ids are kept as 128-bit digests of (integration, id) in
//! sharded hash maps with an insertion-ordered eviction queue: about 100 bytes per id,
//! against ~500 for a general-purpose cache with string keys and timer wheels. Expiry is
//! judged with the injected clock on every lookup; expired and surplus entries are
//! dropped oldest first as new ones arrive.
//!
//! Fairness: the memory is shared by every integration, so one tenant's stream of unique
//! ids would push everyone else's out early. Each integration may hold at most a share
//! of it ([`SHARE_DIVISOR`]: a quarter, like the body budget); past its share an
//! integration forgets its *own* oldest ids, not the others'. Early evictions are
//! counted by cause ([`EvictionCause`]). Ids re-seeded from a checkpoint after a restart
//! carry no integration (checkpoints store digests) and only count against the whole.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU8, Ordering};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;

use super::Clock;

/// Default number of remembered ids across all integrations.
pub const DEFAULT_MAX_ENTRIES: u64 = 200_000;

/// One integration holds at most `max_entries / SHARE_DIVISOR` ids.
pub const SHARE_DIVISOR: u64 = 4;

/// Why an id was forgotten before its window ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EvictionCause {
    /// The whole memory (`--dedup-max-ids`) was full.
    Capacity,
    /// Its integration held its full share: its own oldest id made room for its newest.
    IntegrationShare,
}

impl EvictionCause {
    /// The `cause` label of `hookwarden_receiver_dedup_evicted_early_by_cause_total`.
    pub fn label(self) -> &'static str {
        match self {
            EvictionCause::Capacity => "capacity",
            EvictionCause::IntegrationShare => "integration_share",
        }
    }
}

/// Early evictions by cause (registered metric handles, or standalone counters).
#[derive(Clone, Debug, Default)]
pub struct EvictionCounters {
    pub capacity: Counter,
    pub integration_share: Counter,
}

/// Owner queues are swept of expired ids once per this many claims.
const SWEEP_EVERY: u64 = 4096;

/// Per integration, the ids it claimed, oldest first (an entry whose slot is gone or
/// re-inserted with another expiry is stale and skipped).
type OwnerQueues = HashMap<Arc<str>, VecDeque<(u128, i64)>, NameHash>;

const SHARDS: usize = 16;

const PENDING: u8 = 0;
const ACCEPTED: u8 = 1;
const FAILED: u8 = 2;

/// The outcome of the first copy of a delivery, for copies that arrive meanwhile.
struct InFlight {
    state: AtomicU8,
    done: Notify,
}

impl InFlight {
    fn finish(&self, outcome: u8) {
        self.state.store(outcome, Ordering::Release);
        self.done.notify_waiters();
    }

    async fn outcome(&self) -> u8 {
        loop {
            let notified = self.done.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the state is read, so a finish in between still wakes us.
            notified.as_mut().enable();
            let state = self.state.load(Ordering::Acquire);
            if state != PENDING {
                return state;
            }
            notified.await;
        }
    }
}

/// Latest expiry a slot holds (Unix ms; ~73 million years): one bit of the word is the
/// in-flight flag.
const MAX_EXPIRY_MS: i64 = i64::MAX >> 1;

/// One remembered id: 16 bytes, so a map bucket with its key is 32.
struct Slot {
    /// `expires_at_ms << 1 | in_flight`: whether the first copy is still being made
    /// durable shares the word with the expiry.
    word: i64,
    /// Made by the first later copy that has to wait for the first one's outcome; most
    /// claims never have one, and allocate nothing.
    waiters: Option<Arc<InFlight>>,
}

impl Slot {
    fn kept(expires_at_ms: i64) -> Slot {
        Slot {
            word: expires_at_ms.min(MAX_EXPIRY_MS) << 1,
            waiters: None,
        }
    }

    fn in_flight(expires_at_ms: i64) -> Slot {
        Slot {
            word: (expires_at_ms.min(MAX_EXPIRY_MS) << 1) | 1,
            waiters: None,
        }
    }

    fn expires_at_ms(&self) -> i64 {
        self.word >> 1
    }

    fn is_in_flight(&self) -> bool {
        self.word & 1 == 1
    }

    /// The first copy's outcome is known: no longer in flight; its waiters, if any.
    fn settle(&mut self) -> Option<Arc<InFlight>> {
        self.word &= !1;
        self.waiters.take()
    }
}

/// Hashes a [`digest`] for the maps. A digest is already uniform, so running it through
/// SipHash again is wasted work on every request; its two halves are folded with a
/// per-process seed and spread by one multiplication instead. (Only authenticated
/// deliveries reach the memory, and their ids are hashed with SHA-256 first, so there is
/// no attacker-chosen key to defend against here either.)
#[derive(Clone)]
struct DigestHash {
    seed: u64,
}

impl Default for DigestHash {
    fn default() -> Self {
        DigestHash {
            seed: rand::random(),
        }
    }
}

impl std::hash::BuildHasher for DigestHash {
    type Hasher = DigestHasher;
    fn build_hasher(&self) -> DigestHasher {
        DigestHasher { state: self.seed }
    }
}

struct DigestHasher {
    state: u64,
}

impl std::hash::Hasher for DigestHasher {
    fn write_u128(&mut self, n: u128) {
        let folded = (n as u64) ^ ((n >> 64) as u64) ^ self.state;
        self.state = folded.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    /// Not used by `u128` keys; any bytes still hash deterministically.
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(16) {
            let mut word = [0u8; 16];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u128(u128::from_le_bytes(word));
        }
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

/// Hashes integration names (`namespace/name`) for the owner queues. They come from the
/// route table, not from requests, and there are at most as many as integrations, so
/// SipHash's defence against chosen keys buys nothing here while costing two hashes of
/// the name per delivery; this folds eight bytes at a time with a per-process seed and
/// mixes the result once (MurmurHash3's finaliser), so names that differ in one byte
/// still spread over the table.
#[derive(Clone)]
struct NameHash {
    seed: u64,
}

impl Default for NameHash {
    fn default() -> Self {
        NameHash {
            seed: rand::random(),
        }
    }
}

impl std::hash::BuildHasher for NameHash {
    type Hasher = NameHasher;
    fn build_hasher(&self) -> NameHasher {
        NameHasher { state: self.seed }
    }
}

struct NameHasher {
    state: u64,
}

impl std::hash::Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.state = (self.state ^ u64::from_le_bytes(word))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(29);
        }
    }

    fn finish(&self) -> u64 {
        let mut h = self.state;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// What [`Shard::forget`] found for a queue entry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Forgotten {
    /// Its id is still in flight: left as it was.
    InFlight,
    /// Its slot was removed.
    Removed,
    /// Its slot was already gone or re-inserted: nothing to remove.
    Stale,
}

#[derive(Default)]
struct Shard {
    slots: HashMap<u128, Slot, DigestHash>,
    /// Insertion order, for eviction. An entry whose expiry no longer matches its slot is
    /// stale (the id was re-inserted) and is skipped.
    order: VecDeque<(u128, i64)>,
}

impl Shard {
    /// Drops expired entries from the front, then the oldest while over `cap`. Returns how
    /// many of those were still within their window (forgotten early for lack of room).
    /// Only the caller knows whether such a loss is news (see [`Inner::make_room`]).
    fn trim(&mut self, now_ms: i64, cap: usize) -> u64 {
        let mut early = 0;
        while let Some(&(key, expires)) = self.order.front() {
            // Not due, and room left: nothing to drop, and no need to look the entry up
            // (a random read of the map, a cache miss per delivery at this size). A stale
            // entry waiting at the front is dropped once it is due, or by the queue's
            // bound in `insert`.
            if expires > now_ms && self.slots.len() < cap {
                break;
            }
            match self.forget(key, expires) {
                Forgotten::InFlight => {
                    // In flight: its claim decides; look at it again later.
                    self.order.pop_front();
                    self.order.push_back((key, expires));
                    break;
                }
                Forgotten::Removed if expires > now_ms => early += 1,
                Forgotten::Removed | Forgotten::Stale => {}
            }
            self.bound_queue();
        }
        early
    }

    /// Too many stale queue entries (ids re-inserted, forgotten by their integration's
    /// share, or failed): rebuild the queue from the live slots.
    fn bound_queue(&mut self) {
        if self.order.len() > self.slots.len().saturating_mul(2) + 64 {
            let mut live: Vec<(u128, i64)> = self
                .slots
                .iter()
                .map(|(k, s)| (*k, s.expires_at_ms()))
                .collect();
            live.sort_unstable_by_key(|(_, e)| *e);
            self.order = live.into();
        }
    }

    /// Forgets `key`'s slot if it is still the one queued with `expires`, in one lookup,
    /// unless that id is in flight (its claim decides; nothing changes). Otherwise the
    /// queue entry goes too when it is at the front: the trim's own entry always is, and
    /// an integration's oldest id is usually its shard's oldest, so it is not looked up
    /// again by a later trim.
    fn forget(&mut self, key: u128, expires: i64) -> Forgotten {
        let found = match self.slots.entry(key) {
            Entry::Occupied(slot) if slot.get().expires_at_ms() == expires => {
                if slot.get().is_in_flight() {
                    return Forgotten::InFlight;
                }
                slot.remove();
                Forgotten::Removed
            }
            // Already gone, or re-inserted (a later queue entry stands for it).
            _ => Forgotten::Stale,
        };
        if self.order.front() == Some(&(key, expires)) {
            self.order.pop_front();
        }
        found
    }

    fn insert(&mut self, key: u128, slot: Slot) {
        self.order.push_back((key, slot.expires_at_ms()));
        self.slots.insert(key, slot);
        self.bound_queue();
    }
}

struct Inner {
    shards: Vec<Mutex<Shard>>,
    per_shard_cap: usize,
    /// Most ids one integration holds.
    share: usize,
    /// By integration, sharded by its name. Lock order: an owner shard, then id
    /// shards; never the other way round.
    owners: Vec<Mutex<OwnerQueues>>,
    /// Claims booked, to sweep the owner queues every [`SWEEP_EVERY`].
    notes: std::sync::atomic::AtomicU64,
    clock: Clock,
    /// Ids forgotten before their window ended, whatever the cause.
    evicted_early: Counter,
    by_cause: EvictionCounters,
}

/// Why an insert needs room: decides whether ids it pushes out count as evicted early.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Insert {
    /// A delivery seen for the first time while it is running: a live id pushed out now
    /// is a real loss, counted.
    New,
    /// An id already in the map gets a new slot (an expired one re-accepted, or a later
    /// expiry re-seeded): the map does not grow, so nothing live has to go for it.
    Replacing,
    /// Re-seeding after a restart from the journal: the ids pushed out here were pushed
    /// out of this memory before the restart as well (same cap, same shards: the shard is
    /// a function of the digest), and were counted then. Counting them again would make
    /// every rollout look like capacity pressure.
    Reseed,
}

impl Inner {
    /// Trims `shard` before an insert; ids forgotten within their window count as evicted
    /// early only for [`Insert::New`].
    fn make_room(&self, shard: &mut Shard, now_ms: i64, insert: Insert) {
        let cap = match insert {
            // The replaced slot is counted in `slots.len()` and stays one slot.
            Insert::Replacing => self.per_shard_cap.saturating_add(1),
            Insert::New | Insert::Reseed => self.per_shard_cap,
        };
        let early = shard.trim(now_ms, cap);
        if early > 0 && insert == Insert::New {
            self.evicted_early.inc_by(early);
            self.by_cause.capacity.inc_by(early);
        }
    }

    /// Books a freshly claimed id to `integration`; past its share, its own oldest ids
    /// are forgotten (an id still in flight stops the trim: its claim decides).
    fn note_owner(&self, integration: &str, key: u128, expires_at_ms: i64, now_ms: i64) {
        let index = owner_shard(integration);
        let mut owners = self.owners[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Now and then, the queues of integrations that stopped sending (or were
        // deleted) are emptied of expired ids and dropped when nothing is left.
        if self
            .notes
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY)
        {
            owners.retain(|_, queue| {
                while queue.front().is_some_and(|&(_, e)| e <= now_ms) {
                    queue.pop_front();
                }
                !queue.is_empty()
            });
        }
        let queue = match owners.get_mut(integration) {
            Some(queue) => queue,
            None => owners.entry(Arc::from(integration)).or_default(),
        };
        // Expired at the front: their slots go with the id shards' own trim.
        while queue.front().is_some_and(|&(_, e)| e <= now_ms) {
            queue.pop_front();
        }
        queue.push_back((key, expires_at_ms));
        let mut early = 0;
        while queue.len() > self.share {
            let Some((old, expires)) = queue.pop_front() else {
                break;
            };
            match self.shard(old).forget(old, expires) {
                Forgotten::InFlight => {
                    queue.push_front((old, expires));
                    break;
                }
                Forgotten::Removed if expires > now_ms => early += 1,
                Forgotten::Removed | Forgotten::Stale => {}
            }
        }
        if early > 0 {
            self.evicted_early.inc_by(early);
            self.by_cause.integration_share.inc_by(early);
        }
    }

    fn shard(&self, key: u128) -> MutexGuard<'_, Shard> {
        let index = (key as usize) % SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Remembered delivery ids, shared by every route (keys carry the integration).
/// Cloning is cheap and shares the memory.
#[derive(Clone)]
pub struct Dedup {
    inner: Arc<Inner>,
}

/// What [`Dedup::claim`] found.
pub enum Check {
    /// First copy: proceed, then call [`Claim::accepted`] once the sink kept it. Dropping
    /// the claim without that forgets the id.
    Fresh(Claim),
    /// Already accepted within the window.
    Duplicate,
    /// Another copy was in flight and was not kept; the sender should retry.
    RetryLater,
}

/// The key an id is remembered under: the first 128 bits of SHA-256 over
/// `integration \0 id` (also what journal checkpoints store).
pub fn digest(integration: &str, id: &str) -> u128 {
    let mut h = Sha256::new();
    h.update(integration.as_bytes());
    h.update([0u8]);
    h.update(id.as_bytes());
    let out = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&out[..16]);
    u128::from_le_bytes(first)
}

fn owner_shard(integration: &str) -> usize {
    use std::hash::BuildHasher as _;
    (NameHash { seed: 0 }.hash_one(integration) as usize) % SHARDS
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Dedup {
    /// At most about `max_entries` ids are remembered; beyond that the oldest are
    /// forgotten early (bounded memory over a rare late duplicate).
    pub fn new(max_entries: u64, clock: Clock) -> Dedup {
        Dedup::with_counter(max_entries, clock, Counter::default())
    }

    /// [`Dedup::new`], counting ids forgotten early in `evicted_early` (a registered
    /// metric).
    pub fn with_counter(max_entries: u64, clock: Clock, evicted_early: Counter) -> Dedup {
        Dedup::with_counters(
            max_entries,
            clock,
            evicted_early,
            EvictionCounters::default(),
        )
    }

    /// [`Dedup::with_counter`], also counting early evictions by cause.
    pub fn with_counters(
        max_entries: u64,
        clock: Clock,
        evicted_early: Counter,
        by_cause: EvictionCounters,
    ) -> Dedup {
        let per_shard_cap = usize::try_from(max_entries.div_ceil(SHARDS as u64))
            .unwrap_or(usize::MAX)
            .max(1);
        let share = usize::try_from(max_entries / SHARE_DIVISOR)
            .unwrap_or(usize::MAX)
            .max(1);
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect();
        let owners = (0..SHARDS)
            .map(|_| Mutex::new(HashMap::with_hasher(NameHash::default())))
            .collect();
        Dedup {
            inner: Arc::new(Inner {
                shards,
                per_shard_cap,
                share,
                owners,
                notes: std::sync::atomic::AtomicU64::new(1),
                clock,
                evicted_early,
                by_cause,
            }),
        }
    }

    /// Early evictions by cause.
    pub fn evictions_by_cause(&self) -> EvictionCounters {
        self.inner.by_cause.clone()
    }

    /// Counts ids forgotten before their window ended because `max_entries` was reached:
    /// a copy of such a delivery arriving later is accepted again.
    pub fn evicted_early(&self) -> Counter {
        self.inner.evicted_early.clone()
    }

    /// Claims `id` for `integration` (`namespace/name`) for `window`, waiting for a
    /// concurrent copy's outcome when there is one.
    pub async fn claim(&self, integration: &str, id: &str, window: Duration) -> Check {
        let key = digest(integration, id);
        let now = (self.inner.clock)();
        let flight = {
            let mut shard = self.inner.shard(key);
            match shard.slots.get_mut(&key) {
                Some(slot) if slot.expires_at_ms() > now => {
                    if !slot.is_in_flight() {
                        return Check::Duplicate;
                    }
                    // The first copy to wait makes the flight the first one settles.
                    let flight = slot.waiters.get_or_insert_with(|| {
                        Arc::new(InFlight {
                            state: AtomicU8::new(PENDING),
                            done: Notify::new(),
                        })
                    });
                    flight.clone()
                }
                replaced => {
                    let insert = if replaced.is_some() {
                        Insert::Replacing
                    } else {
                        Insert::New
                    };
                    // A copy still in flight past its whole window is replaced; copies
                    // waiting on it are told to retry (never a 2xx for what may not be
                    // kept), and find this claim when they do.
                    let orphaned = replaced.and_then(|slot| {
                        if slot.is_in_flight() {
                            slot.waiters.take()
                        } else {
                            None
                        }
                    });
                    self.inner.make_room(&mut shard, now, insert);
                    let slot = Slot::in_flight(now.saturating_add(millis(window)));
                    let expires_at_ms = slot.expires_at_ms();
                    shard.insert(key, slot);
                    drop(shard);
                    if let Some(orphaned) = orphaned {
                        orphaned.finish(FAILED);
                    }
                    self.inner.note_owner(integration, key, expires_at_ms, now);
                    return Check::Fresh(Claim {
                        inner: self.inner.clone(),
                        key,
                        expires_at_ms,
                        settled: false,
                    });
                }
            }
        };
        match flight.outcome().await {
            ACCEPTED => Check::Duplicate,
            _ => Check::RetryLater,
        }
    }

    /// Marks `id` as accepted until `expires_at_ms` (Unix ms): how the runtime re-seeds
    /// the memory from the journal after a restart, oldest first (the cap keeps the
    /// newest). Past expiries are ignored. Ids pushed out by a re-seed are not counted in
    /// [`Dedup::evicted_early`]: they were counted when they were pushed out before the
    /// restart.
    pub fn remember(&self, integration: &str, id: &str, expires_at_ms: i64) {
        self.remember_digest(digest(integration, id), expires_at_ms);
    }

    /// [`Dedup::remember`] by [`digest`], as journal checkpoints store ids.
    pub fn remember_digest(&self, key: u128, expires_at_ms: i64) {
        let now = (self.inner.clock)();
        if expires_at_ms <= now {
            return;
        }
        let mut shard = self.inner.shard(key);
        let insert = match shard.slots.get(&key) {
            // A copy is in flight right now; its outcome decides.
            Some(slot) if slot.is_in_flight() => return,
            // Seen twice (a checkpoint and a replayed entry): keep the later expiry.
            Some(slot) if slot.expires_at_ms() >= expires_at_ms.min(MAX_EXPIRY_MS) => return,
            Some(_) => Insert::Replacing,
            None => Insert::Reseed,
        };
        self.inner.make_room(&mut shard, now, insert);
        shard.insert(key, Slot::kept(expires_at_ms));
    }

    /// Whether `id` is currently remembered (accepted or in flight).
    pub fn contains(&self, integration: &str, id: &str) -> bool {
        let key = digest(integration, id);
        let now = (self.inner.clock)();
        self.inner
            .shard(key)
            .slots
            .get(&key)
            .is_some_and(|s| s.expires_at_ms() > now)
    }

    /// Remembered ids, expired ones not yet dropped included.
    pub fn len(&self) -> u64 {
        self.inner
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).slots.len() as u64)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for Dedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedup")
            .field("entries", &self.len())
            .finish()
    }
}

/// The right to deliver one id. See [`Check::Fresh`].
pub struct Claim {
    inner: Arc<Inner>,
    key: u128,
    /// With the key, which slot is this claim's: a slot replaced after its window ended
    /// has a later expiry.
    expires_at_ms: i64,
    settled: bool,
}

impl Claim {
    /// Settles this claim's slot if it is still this claim's and in flight: kept
    /// (`forget: false`) or removed. Copies that waited for it are then told `outcome`.
    fn settle(&mut self, forget: bool, outcome: u8) {
        self.settled = true;
        let waiters = {
            let mut shard = self.inner.shard(self.key);
            match shard.slots.get_mut(&self.key) {
                Some(slot) if slot.is_in_flight() && slot.expires_at_ms() == self.expires_at_ms => {
                    if forget {
                        shard
                            .slots
                            .remove(&self.key)
                            .and_then(|mut slot| slot.settle())
                    } else {
                        slot.settle()
                    }
                }
                _ => None,
            }
        };
        if let Some(waiters) = waiters {
            waiters.finish(outcome);
        }
    }

    /// The sink kept the delivery: remember the id for the window and release waiters
    /// as duplicates.
    pub fn accepted(mut self) {
        self.settle(false, ACCEPTED);
    }
}

impl Drop for Claim {
    /// Not accepted (sink failed, or the client went away mid-request): forget the id so
    /// the retry is accepted, and tell waiting copies to retry too.
    fn drop(&mut self) {
        if !self.settled {
            self.settle(true, FAILED);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicI64;

    use super::*;

    fn dedup_at(now: Arc<AtomicI64>, cap: u64) -> Dedup {
        Dedup::new(cap, Arc::new(move || now.load(Ordering::SeqCst)))
    }

    fn dedup(now_ms: i64) -> Dedup {
        dedup_at(Arc::new(AtomicI64::new(now_ms)), 1_000)
    }

    #[tokio::test]
    async fn ids_forgotten_within_their_window_are_counted_expired_ones_are_not() {
        let now = Arc::new(AtomicI64::new(0));
        let d = dedup_at(now.clone(), 1_000);
        let window = Duration::from_secs(60);
        // 400 ids fit in 1,000 (16 shards of 63) however the digests fall.
        for i in 0..400 {
            d.remember("ns/a", &format!("old-{i}"), 60_000);
        }
        assert_eq!(d.evicted_early().get(), 0, "within the cap");
        // A minute later every one of them has expired: making room for new ones
        // forgets nothing early. (Spread over 8 integrations, each within its share.)
        now.store(60_000, Ordering::SeqCst);
        for i in 0..400 {
            let tenant = format!("ns/t{}", i % 8);
            let Check::Fresh(claim) = d.claim(&tenant, &format!("new-{i}"), window).await else {
                panic!("fresh")
            };
            claim.accepted();
        }
        assert_eq!(d.evicted_early().get(), 0, "only expired ids made room");
        // 2,400 ids within their window in room for 1,008: the rest is forgotten early.
        for i in 0..2_000 {
            let tenant = format!("ns/t{}", i % 8);
            let Check::Fresh(claim) = d.claim(&tenant, &format!("more-{i}"), window).await else {
                panic!("fresh")
            };
            claim.accepted();
        }
        let early = d.evicted_early().get();
        assert!((1_392..=1_600).contains(&early), "{early}");
    }

    /// Issue 18, finding 13: the counter is for alerting (`increase() > 0`), so only a
    /// live id pushed out by a new delivery counts — not an id replaced in place, and not
    /// the re-seeding at a restart (a rollout is not capacity pressure).
    #[tokio::test]
    async fn only_live_ids_pushed_out_by_new_deliveries_count_as_evicted_early() {
        let now = Arc::new(AtomicI64::new(0));
        // One slot per shard: every shard is full after its first id.
        let d = dedup_at(now.clone(), 16);
        let window = Duration::from_secs(60);
        // Re-seeding 2,000 ids into room for 16 pushes most of them out: not counted.
        for i in 0..2_000 {
            d.remember("ns/a", &format!("seed-{i}"), 60_000);
        }
        assert!(d.len() <= 16, "{}", d.len());
        assert_eq!(d.evicted_early().get(), 0, "re-seeding is not an eviction");
        assert!(
            d.contains("ns/a", "seed-1999"),
            "re-seeding keeps the newest"
        );
        // A remembered id re-seeded with a later expiry replaces its own slot.
        d.remember("ns/a", "seed-1999", 90_000);
        assert!(d.contains("ns/a", "seed-1999"));
        assert_eq!(
            d.evicted_early().get(),
            0,
            "a replacement is not an eviction"
        );
        // An id whose window ended, re-accepted: it takes its own slot back, pushing no
        // live neighbour out.
        now.store(90_000, Ordering::SeqCst);
        let Check::Fresh(claim) = d.claim("ns/a", "seed-1999", window).await else {
            panic!("expired id is fresh again")
        };
        claim.accepted();
        assert_eq!(d.evicted_early().get(), 0, "replacing an expired id");
        // New deliveries over a full memory of live ids: those are real losses (the
        // seeds pushed out for lack of room, at most 16, and ns/a's own beyond its
        // share of 4: 201 claimed ids, the re-accepted seed included).
        for i in 0..200 {
            if let Check::Fresh(claim) = d.claim("ns/a", &format!("new-{i}"), window).await {
                claim.accepted();
            }
        }
        let early = d.evicted_early().get();
        assert!((150..=216).contains(&early), "{early}");
    }

    #[tokio::test]
    async fn second_copy_is_a_duplicate_after_accept() {
        let d = dedup(0);
        let Check::Fresh(claim) = d
            .claim("ns/a", "id-1", crate::domain::spec::defaults::DEDUP_WINDOW)
            .await
        else {
            panic!("first copy is fresh")
        };
        claim.accepted();
        assert!(matches!(
            d.claim("ns/a", "id-1", crate::domain::spec::defaults::DEDUP_WINDOW)
                .await,
            Check::Duplicate
        ));
        // Same id on another integration is unrelated.
        assert!(matches!(
            d.claim("ns/b", "id-1", crate::domain::spec::defaults::DEDUP_WINDOW)
                .await,
            Check::Fresh(_)
        ));
    }

    #[tokio::test]
    async fn a_failed_claim_forgets_the_id() {
        let d = dedup(0);
        let Check::Fresh(claim) = d
            .claim("ns/a", "id-1", crate::domain::spec::defaults::DEDUP_WINDOW)
            .await
        else {
            panic!("fresh")
        };
        drop(claim);
        assert!(!d.contains("ns/a", "id-1"));
        assert!(matches!(
            d.claim("ns/a", "id-1", crate::domain::spec::defaults::DEDUP_WINDOW)
                .await,
            Check::Fresh(_)
        ));
    }

    #[tokio::test]
    async fn waiters_follow_the_first_copy() {
        let d = dedup(0);
        let Check::Fresh(claim) = d
            .claim("ns/a", "x", crate::domain::spec::defaults::DEDUP_WINDOW)
            .await
        else {
            panic!("fresh")
        };
        let d2 = d.clone();
        let waiter = tokio::spawn(async move {
            matches!(
                d2.claim("ns/a", "x", crate::domain::spec::defaults::DEDUP_WINDOW)
                    .await,
                Check::RetryLater
            )
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(claim);
        assert!(
            waiter.await.expect("join"),
            "a copy waiting on a failed claim is told to retry"
        );

        let Check::Fresh(claim) = d
            .claim("ns/a", "y", crate::domain::spec::defaults::DEDUP_WINDOW)
            .await
        else {
            panic!("fresh")
        };
        let d2 = d.clone();
        let waiter = tokio::spawn(async move {
            matches!(
                d2.claim("ns/a", "y", crate::domain::spec::defaults::DEDUP_WINDOW)
                    .await,
                Check::Duplicate
            )
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        claim.accepted();
        assert!(
            waiter.await.expect("join"),
            "a copy waiting on an accepted claim is a duplicate"
        );
    }

    /// A copy still in flight when its window ends is replaced by the next copy; copies
    /// that were waiting on it are told to retry, and its late outcome does not settle
    /// the slot that replaced it.
    #[tokio::test]
    async fn a_claim_in_flight_past_its_window_is_replaced_and_its_waiters_retry() {
        let now = Arc::new(AtomicI64::new(0));
        let d = dedup_at(now.clone(), 1_000);
        let window = Duration::from_secs(1);
        let Check::Fresh(old) = d.claim("ns/a", "x", window).await else {
            panic!("fresh")
        };
        let d2 = d.clone();
        let waiter = tokio::spawn(async move { d2.claim("ns/a", "x", window).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        now.store(5_000, Ordering::SeqCst);
        let Check::Fresh(new) = d.claim("ns/a", "x", window).await else {
            panic!("a copy past the first one's window is fresh")
        };
        assert!(
            matches!(waiter.await.expect("join"), Check::RetryLater),
            "the waiter of the replaced claim retries"
        );
        // The old claim's outcome, late: neither kept nor forgotten for the new one.
        old.accepted();
        let d3 = d.clone();
        let second_waiter = tokio::spawn(async move { d3.claim("ns/a", "x", window).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !second_waiter.is_finished(),
            "still waiting on the new claim"
        );
        drop(new);
        assert!(matches!(
            second_waiter.await.expect("join"),
            Check::RetryLater
        ));
        assert!(
            !d.contains("ns/a", "x"),
            "the failed new claim forgot the id"
        );
        assert_eq!(std::mem::size_of::<Slot>(), 16, "a bucket stays 32 bytes");
    }

    #[tokio::test]
    async fn remember_reseeds_until_expiry() {
        let d = dedup(10_000);
        d.remember("ns/a", "old", 5_000);
        d.remember("ns/a", "live", 60_000);
        assert!(!d.contains("ns/a", "old"));
        assert!(matches!(
            d.claim("ns/a", "live", crate::domain::spec::defaults::DEDUP_WINDOW)
                .await,
            Check::Duplicate
        ));
    }

    #[tokio::test]
    async fn entries_expire_after_the_window() {
        let now = Arc::new(AtomicI64::new(0));
        let d = dedup_at(now.clone(), 1_000);
        let Check::Fresh(claim) = d.claim("ns/a", "z", Duration::from_secs(60)).await else {
            panic!("fresh")
        };
        claim.accepted();
        now.store(59_999, Ordering::SeqCst);
        assert!(matches!(
            d.claim("ns/a", "z", crate::domain::spec::defaults::DEDUP_WINDOW)
                .await,
            Check::Duplicate
        ));
        now.store(60_000, Ordering::SeqCst);
        assert!(matches!(
            d.claim("ns/a", "z", crate::domain::spec::defaults::DEDUP_WINDOW)
                .await,
            Check::Fresh(_)
        ));
    }

    #[tokio::test]
    async fn memory_stays_bounded_oldest_forgotten_first() {
        let d = dedup_at(Arc::new(AtomicI64::new(0)), 160);
        for i in 0..10_000 {
            d.remember("ns/a", &format!("id-{i}"), 1_000_000);
        }
        assert!(d.len() <= 160, "{}", d.len());
        assert!(d.contains("ns/a", "id-9999"), "the newest ids are kept");
        assert!(!d.contains("ns/a", "id-0"), "the oldest ids went first");
    }

    #[tokio::test]
    async fn long_ids_cost_no_more_than_short_ones() {
        let d = dedup(0);
        let long = "x".repeat(10_000);
        let Check::Fresh(claim) = d
            .claim("ns/a", &long, crate::domain::spec::defaults::DEDUP_WINDOW)
            .await
        else {
            panic!("fresh")
        };
        claim.accepted();
        assert!(matches!(
            d.claim("ns/a", &long, crate::domain::spec::defaults::DEDUP_WINDOW)
                .await,
            Check::Duplicate
        ));
        assert!(matches!(
            d.claim(
                "ns/a",
                &long[1..],
                crate::domain::spec::defaults::DEDUP_WINDOW
            )
            .await,
            Check::Fresh(_)
        ));
    }

    /// Finding 12: one integration's stream of unique ids pushes out only its own ids
    /// once it holds its share (a quarter), never the other integrations'; early
    /// evictions are counted by cause.
    #[tokio::test]
    async fn one_integration_s_flood_evicts_its_own_ids_not_the_others() {
        let now = Arc::new(AtomicI64::new(1_000));
        let clock_now = now.clone();
        let by_cause = EvictionCounters::default();
        let d = Dedup::with_counters(
            1_000,
            Arc::new(move || clock_now.load(Ordering::SeqCst)),
            Counter::default(),
            by_cause.clone(),
        );
        let window = Duration::from_secs(3600);
        async fn accept(d: &Dedup, integration: &str, id: &str, window: Duration) {
            match d.claim(integration, id, window).await {
                Check::Fresh(claim) => claim.accepted(),
                _ => panic!("{integration}/{id} was not fresh"),
            }
        }
        for i in 0..100 {
            accept(&d, "quiet/b", &format!("b-{i}"), window).await;
        }
        for i in 0..5_000 {
            now.fetch_add(1, Ordering::SeqCst);
            accept(&d, "noisy/a", &format!("a-{i}"), window).await;
        }
        for i in 0..100 {
            assert!(
                d.contains("quiet/b", &format!("b-{i}")),
                "b-{i} was pushed out by another integration's ids"
            );
        }
        // The flood keeps its newest quarter of the memory.
        assert!(d.contains("noisy/a", "a-4999"));
        assert!(!d.contains("noisy/a", "a-0"));
        assert!(d.len() <= 100 + 250, "{}", d.len());
        assert_eq!(by_cause.integration_share.get(), 5_000 - 250);
        assert_eq!(by_cause.capacity.get(), 0);
        assert_eq!(d.evicted_early().get(), 5_000 - 250);

        // Many integrations each within their share still fill the whole: then the
        // oldest go, counted as capacity.
        for tenant in 0..8 {
            for i in 0..200 {
                now.fetch_add(1, Ordering::SeqCst);
                accept(&d, &format!("t/{tenant}"), &format!("{i}"), window).await;
            }
        }
        assert!(by_cause.capacity.get() > 0);
        assert!(d.len() <= 1_000 + SHARDS as u64, "{}", d.len());
    }

    /// Ids an integration forgets past its share leave their shard's queue entry behind
    /// (the trim no longer looks up an entry that is not due): the queues stay within
    /// their bound all the same, with one integration or many, whatever the window.
    #[tokio::test]
    async fn eviction_queues_stay_bounded_under_a_long_window_flood() {
        let now = Arc::new(AtomicI64::new(1_000));
        let d = dedup_at(now.clone(), 1_000);
        let window = Duration::from_secs(86_400);
        async fn accept(d: &Dedup, integration: &str, id: &str, window: Duration) {
            match d.claim(integration, id, window).await {
                Check::Fresh(claim) => claim.accepted(),
                _ => panic!("{integration}/{id} was not fresh"),
            }
        }
        // A quiet integration's ids hold the front of every shard's queue for the day, so
        // the flood's forgotten ids queue up behind them.
        for i in 0..200 {
            accept(&d, "quiet/b", &format!("b-{i}"), window).await;
        }
        for i in 0..20_000 {
            now.fetch_add(1, Ordering::SeqCst);
            accept(&d, "noisy/a", &format!("a-{i}"), window).await;
        }
        assert!(d.len() <= 200 + 250, "{}", d.len());
        assert!(d.contains("quiet/b", "b-0"));
        assert!(d.contains("noisy/a", "a-19999"));
        assert!(!d.contains("noisy/a", "a-0"));
        for shard in &d.inner.shards {
            let shard = shard.lock().expect("shard lock");
            assert!(
                shard.order.len() <= shard.slots.len() * 2 + 65,
                "queue {} for {} slots",
                shard.order.len(),
                shard.slots.len()
            );
        }
    }

    /// Integration names that differ in one character spread over the owner shards.
    #[test]
    fn owner_shards_spread_similar_names() {
        let mut counts = [0u32; SHARDS];
        for i in 0..16_000 {
            counts[owner_shard(&format!("team-a/integration-{i:05}"))] += 1;
        }
        for (shard, n) in counts.iter().enumerate() {
            assert!((800..=1_200).contains(n), "shard {shard}: {n} of 16,000");
        }
    }
}
