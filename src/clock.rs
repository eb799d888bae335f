//! The one clock convention: Unix milliseconds, read through a [`Clock`] that every
//! component is handed, so tests can pin timestamp windows, secret expiries, dedup
//! re-seeding and condition times. Nothing outside this module reads the system clock
//! for a wall-clock time (monotonic `Instant`s for timeouts and intervals are fine).

use std::sync::Arc;

/// Current time in Unix milliseconds.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock as a [`Clock`].
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    })
}

/// A clock reading as a timestamp (the epoch for a reading out of range).
pub fn timestamp(ms: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}
