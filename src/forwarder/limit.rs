//! At most N attempts in flight per target, so one slow target cannot take every
//! connection and task the forwarder has (other targets and integrations keep going).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One semaphore per target key (e.g. `<namespace>/<integration>/<target>`), created on
/// first use. Idle entries (no permit out) are forgotten once there are more than
/// `max_targets`, so the map holds at most `max_targets` entries plus one per target
/// with an attempt in flight — bounded by the attempts in flight, which the caller
/// bounds.
#[derive(Debug)]
pub struct TargetLimits {
    per_target: usize,
    max_targets: usize,
    targets: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl TargetLimits {
    /// `per_target` at least 1.
    pub fn new(per_target: usize, max_targets: usize) -> TargetLimits {
        TargetLimits {
            per_target: per_target.max(1),
            max_targets,
            targets: Mutex::new(HashMap::new()),
        }
    }

    fn semaphore(&self, key: &str) -> Arc<Semaphore> {
        // A poisoned lock only means another thread panicked mid-insert; the map is
        // still a valid map.
        let mut targets = self
            .targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = targets.get(key) {
            return s.clone();
        }
        if targets.len() >= self.max_targets {
            let per_target = self.per_target;
            targets.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < per_target);
        }
        let s = Arc::new(Semaphore::new(self.per_target));
        targets.insert(key.to_string(), s.clone());
        s
    }

    /// Waits for a slot of `key`'s target; the slot is freed when the permit drops.
    pub async fn acquire(&self, key: &str) -> OwnedSemaphorePermit {
        self.semaphore(key)
            .acquire_owned()
            .await
            // Only a closed semaphore fails; these are private and never closed.
            .expect("target semaphores are never closed")
    }

    /// A slot now, or `None` when the target is at its limit (the caller leaves the
    /// forward pending and moves on to other targets).
    pub fn try_acquire(&self, key: &str) -> Option<OwnedSemaphorePermit> {
        self.semaphore(key).try_acquire_owned().ok()
    }

    /// Targets currently tracked.
    pub fn tracked(&self) -> usize {
        self.targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_each_target_separately() {
        let limits = TargetLimits::new(2, 100);
        let a1 = limits.try_acquire("ns/i/a").expect("first");
        let _a2 = limits.try_acquire("ns/i/a").expect("second");
        assert!(limits.try_acquire("ns/i/a").is_none(), "a is at its limit");
        assert!(limits.try_acquire("ns/i/b").is_some(), "b is not affected");
        drop(a1);
        assert!(limits.try_acquire("ns/i/a").is_some());
        let _a3 = limits.acquire("ns/i/a").await;
    }

    #[test]
    fn idle_targets_are_forgotten_beyond_the_bound() {
        let limits = TargetLimits::new(1, 3);
        let busy = limits.try_acquire("busy").expect("slot");
        for i in 0..50 {
            drop(limits.try_acquire(&format!("t{i}")));
        }
        assert!(limits.tracked() <= 4, "{}", limits.tracked());
        assert!(
            limits.try_acquire("busy").is_none(),
            "a busy target keeps its count"
        );
        drop(busy);
    }
}
