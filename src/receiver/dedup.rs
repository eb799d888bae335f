//! Delivery-id deduplication: bounded memory, per-entry TTL (the route's dedup window),
//! and exactly one winner among concurrent copies of the same delivery.
//!
//! Senders retry on timeouts, so two copies of one delivery can be in flight at once.
//! The first copy *claims* the id; later copies wait for its outcome instead of being
//! answered at once: when the claim ends in a durable accept they are duplicates (2xx);
//! when it fails (sink overloaded, client gone) the id is forgotten and they are told to
//! retry, so a 2xx never stands for a delivery that was not kept.

use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use moka::policy::Expiry;
use moka::sync::Cache;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::Clock;

/// Default number of remembered ids across all integrations (about 200 bytes each).
pub const DEFAULT_MAX_ENTRIES: u64 = 200_000;

/// Default dedup window when `spec.dedupWindow` is absent.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Ids longer than this are keyed by their SHA-256, so a sender cannot make one entry
/// arbitrarily large.
const MAX_ID_BYTES: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Pending,
    Accepted,
    Failed,
}

#[derive(Clone)]
struct Mark {
    ttl: Duration,
    /// Present while the first copy is still being made durable.
    pending: Option<watch::Receiver<Outcome>>,
}

struct MarkExpiry;

impl Expiry<String, Mark> for MarkExpiry {
    fn expire_after_create(&self, _key: &String, value: &Mark, _at: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Mark,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Remembered delivery ids, shared by every route (keys carry the integration).
/// Cloning is cheap and shares the memory.
#[derive(Clone)]
pub struct Dedup {
    cache: Cache<String, Mark>,
    clock: Clock,
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

impl Dedup {
    /// At most `max_entries` ids are remembered; beyond that the least useful are evicted
    /// early (a bounded cache trades a rare late duplicate for bounded memory).
    pub fn new(max_entries: u64, clock: Clock) -> Dedup {
        let cache = Cache::builder()
            .max_capacity(max_entries)
            .expire_after(MarkExpiry)
            .build();
        Dedup { cache, clock }
    }

    fn key(integration: &str, id: &str) -> String {
        if id.len() <= MAX_ID_BYTES {
            format!("{integration}\n{id}")
        } else {
            format!(
                "{integration}\n#{}",
                hex::encode(Sha256::digest(id.as_bytes()))
            )
        }
    }

    /// Claims `id` for `integration` (`namespace/name`) for `window`, waiting for a
    /// concurrent copy's outcome when there is one.
    pub async fn claim(&self, integration: &str, id: &str, window: Duration) -> Check {
        let key = Self::key(integration, id);
        let (tx, rx) = watch::channel(Outcome::Pending);
        let entry = self.cache.entry(key.clone()).or_insert_with(|| Mark {
            ttl: window,
            pending: Some(rx),
        });
        if entry.is_fresh() {
            return Check::Fresh(Claim {
                cache: self.cache.clone(),
                key,
                window,
                tx: Some(tx),
            });
        }
        let Some(mut other) = entry.into_value().pending else {
            return Check::Duplicate;
        };
        match other.wait_for(|o| *o != Outcome::Pending).await.map(|o| *o) {
            Ok(Outcome::Accepted) => Check::Duplicate,
            _ => Check::RetryLater,
        }
    }

    /// Marks `id` as accepted until `expires_at_ms` (Unix ms): how the runtime re-seeds
    /// the memory from the journal after a restart. Past expiries are ignored.
    pub fn remember(&self, integration: &str, id: &str, expires_at_ms: i64) {
        let left_ms = expires_at_ms.saturating_sub((self.clock)());
        if left_ms <= 0 {
            return;
        }
        let ttl = Duration::from_millis(left_ms.unsigned_abs());
        self.cache
            .insert(Self::key(integration, id), Mark { ttl, pending: None });
    }

    /// Whether `id` is currently remembered (accepted or in flight).
    pub fn contains(&self, integration: &str, id: &str) -> bool {
        self.cache.contains_key(&Self::key(integration, id))
    }

    /// Remembered ids (approximate: pending evictions may still be counted).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for Dedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedup")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

/// The right to deliver one id. See [`Check::Fresh`].
pub struct Claim {
    cache: Cache<String, Mark>,
    key: String,
    window: Duration,
    tx: Option<watch::Sender<Outcome>>,
}

impl Claim {
    /// The sink kept the delivery: remember the id for the window and release waiters
    /// as duplicates.
    pub fn accepted(mut self) {
        self.cache.insert(
            self.key.clone(),
            Mark {
                ttl: self.window,
                pending: None,
            },
        );
        if let Some(tx) = self.tx.take() {
            tx.send_replace(Outcome::Accepted);
        }
    }
}

impl Drop for Claim {
    /// Not accepted (sink failed, or the client went away mid-request): forget the id so
    /// the retry is accepted, and tell waiting copies to retry too.
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        // Remove only our own pending mark, never a newer one (e.g. a re-seed).
        let _ = self
            .cache
            .entry(self.key.clone())
            .and_compute_with(|current| match current {
                Some(entry)
                    if entry
                        .value()
                        .pending
                        .as_ref()
                        .is_some_and(|rx| rx.same_channel(&tx.subscribe())) =>
                {
                    Op::Remove
                }
                _ => Op::Nop,
            });
        tx.send_replace(Outcome::Failed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn dedup(now_ms: i64) -> Dedup {
        Dedup::new(1_000, Arc::new(move || now_ms))
    }

    #[tokio::test]
    async fn second_copy_is_a_duplicate_after_accept() {
        let d = dedup(0);
        let Check::Fresh(claim) = d.claim("ns/a", "id-1", DEFAULT_WINDOW).await else {
            panic!("first copy is fresh")
        };
        claim.accepted();
        assert!(matches!(
            d.claim("ns/a", "id-1", DEFAULT_WINDOW).await,
            Check::Duplicate
        ));
        // Same id on another integration is unrelated.
        assert!(matches!(
            d.claim("ns/b", "id-1", DEFAULT_WINDOW).await,
            Check::Fresh(_)
        ));
    }

    #[tokio::test]
    async fn a_failed_claim_forgets_the_id() {
        let d = dedup(0);
        let Check::Fresh(claim) = d.claim("ns/a", "id-1", DEFAULT_WINDOW).await else {
            panic!("fresh")
        };
        drop(claim);
        assert!(!d.contains("ns/a", "id-1"));
        assert!(matches!(
            d.claim("ns/a", "id-1", DEFAULT_WINDOW).await,
            Check::Fresh(_)
        ));
    }

    #[tokio::test]
    async fn waiters_follow_the_first_copy() {
        let d = dedup(0);
        let Check::Fresh(claim) = d.claim("ns/a", "x", DEFAULT_WINDOW).await else {
            panic!("fresh")
        };
        let d2 = d.clone();
        let waiter = tokio::spawn(async move {
            matches!(
                d2.claim("ns/a", "x", DEFAULT_WINDOW).await,
                Check::RetryLater
            )
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(claim);
        assert!(
            waiter.await.expect("join"),
            "a copy waiting on a failed claim is told to retry"
        );

        let Check::Fresh(claim) = d.claim("ns/a", "y", DEFAULT_WINDOW).await else {
            panic!("fresh")
        };
        let d2 = d.clone();
        let waiter = tokio::spawn(async move {
            matches!(
                d2.claim("ns/a", "y", DEFAULT_WINDOW).await,
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

    #[tokio::test]
    async fn remember_reseeds_until_expiry() {
        let d = dedup(10_000);
        d.remember("ns/a", "old", 5_000);
        d.remember("ns/a", "live", 60_000);
        assert!(!d.contains("ns/a", "old"));
        assert!(matches!(
            d.claim("ns/a", "live", DEFAULT_WINDOW).await,
            Check::Duplicate
        ));
    }

    #[tokio::test]
    async fn entries_expire_after_the_window() {
        let d = dedup(0);
        let Check::Fresh(claim) = d.claim("ns/a", "z", Duration::from_millis(50)).await else {
            panic!("fresh")
        };
        claim.accepted();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(matches!(
            d.claim("ns/a", "z", DEFAULT_WINDOW).await,
            Check::Fresh(_)
        ));
    }

    #[tokio::test]
    async fn long_ids_are_hashed() {
        let d = dedup(0);
        let long = "x".repeat(10_000);
        let Check::Fresh(claim) = d.claim("ns/a", &long, DEFAULT_WINDOW).await else {
            panic!("fresh")
        };
        claim.accepted();
        assert!(Dedup::key("ns/a", &long).len() < 100);
        assert!(matches!(
            d.claim("ns/a", &long, DEFAULT_WINDOW).await,
            Check::Duplicate
        ));
    }
}
