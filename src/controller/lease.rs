//! A check on the leader Lease that does not take the election library's word alone.
//!
//! kube-lease-manager (0.13) keeps reporting leadership while its renewals fail: it logs
//! the error, backs off and retries, and its `leader` flag stays true. A leader cut off
//! from the API server (or refused its renewals) would go on reconciling after its lease
//! expired and another replica took over. So while it leads, the controller reads the
//! Lease itself and stands down shortly *before* the lease lapses in the other replicas'
//! eyes, as client-go's renew deadline does; it also reconciles only once the Lease shows
//! it as the holder with time left.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio::sync::watch;
use tracing::debug;

/// When the guard reads the Lease and when it gives up, from the lease duration and the
/// grace within which the library renews before expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardTiming {
    /// `--lease-duration-seconds`.
    pub duration: Duration,
    /// The library renews this long before the lease would expire.
    pub grace: Duration,
}

impl GuardTiming {
    pub fn new(duration_seconds: u64, grace_seconds: u64) -> GuardTiming {
        GuardTiming {
            duration: Duration::from_secs(duration_seconds),
            grace: Duration::from_secs(grace_seconds),
        }
    }

    /// Stand down this long before the lease expires by this replica's clock: room for
    /// clock skew between replicas.
    pub fn margin(&self) -> Duration {
        self.grace / 3
    }

    /// How often the Lease is read while a renewal is due. A renewal is seen at most this
    /// late, so a renewal on time (grace before expiry) is always seen before the margin:
    /// grace − margin − poll = 5/12 of the grace is left for the renewal's own latency.
    pub fn poll(&self) -> Duration {
        (self.grace / 4).max(Duration::from_millis(100))
    }
}

/// Why a Lease does not let this replica lead.
#[derive(Debug, PartialEq, Eq)]
pub enum NotHeld {
    /// Another identity, or none, holds it: stand down at once.
    Holder(String),
    /// This replica holds it, but with no renewal time to judge by.
    NoRenewTime,
}

/// Until when `lease` lets `identity` lead (its last renewal plus its duration, less the
/// margin); that time may already have passed.
pub fn held_until(
    lease: &Lease,
    identity: &str,
    timing: &GuardTiming,
) -> Result<Timestamp, NotHeld> {
    let spec = lease.spec.as_ref();
    let holder = spec.and_then(|s| s.holder_identity.as_deref());
    if holder != Some(identity) {
        return Err(NotHeld::Holder(holder.unwrap_or("nobody").to_string()));
    }
    let spec = spec.expect("a holder implies a spec");
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .ok_or(NotHeld::NoRenewTime)?
        .0;
    // Other replicas judge expiry by the duration written in the Lease.
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(timing.duration, Duration::from_secs);
    let left = SignedDuration::try_from(duration.saturating_sub(timing.margin()))
        .unwrap_or(SignedDuration::ZERO);
    Ok(renewed.saturating_add(left).unwrap_or(renewed))
}

/// How long to wait before the next read, at `now`, with the Lease held `until`: no
/// read before the next renewal is due (a grace before expiry), then one every poll until
/// it shows, never past `until`. About two reads per renewal, not one per poll.
fn next_read(now: Timestamp, until: Timestamp, timing: &GuardTiming) -> Duration {
    let left = Duration::try_from(now.duration_until(until)).unwrap_or_default();
    let before_due = left.saturating_sub(timing.grace.saturating_sub(timing.margin()));
    before_due.max(timing.poll()).min(left)
}

/// Reads Lease `name` while this replica leads. Sets `confirmed` once the Lease shows
/// `identity` holding it with time left, and returns why it stopped: another holder,
/// the lease about to lapse without a renewal seen, or no confirmation within one lease
/// duration of starting.
pub async fn guard(
    api: Api<Lease>,
    name: &'static str,
    identity: String,
    timing: GuardTiming,
    confirmed: watch::Sender<bool>,
) -> String {
    let started = tokio::time::Instant::now();
    let mut until: Option<Timestamp> = None;
    loop {
        let now = Timestamp::now();
        let left = until.map(|u| Duration::try_from(now.duration_until(u)).unwrap_or_default());
        let wait = left.map_or(timing.poll(), |l| l.min(timing.poll()));
        match tokio::time::timeout(wait.max(Duration::from_millis(10)), api.get(name)).await {
            Ok(Ok(lease)) => match held_until(&lease, &identity, &timing) {
                Ok(t) => until = Some(until.map_or(t, |u| u.max(t))),
                Err(NotHeld::Holder(other)) => return format!("the Lease is held by {other}"),
                Err(NotHeld::NoRenewTime) => debug!("the Lease has no renewTime yet"),
            },
            Ok(Err(e)) => debug!(error = %e, "reading the leader Lease failed"),
            Err(_) => debug!("reading the leader Lease timed out"),
        }
        let now = Timestamp::now();
        match until {
            Some(u) if u > now => {
                confirmed.send_replace(true);
                tokio::time::sleep(next_read(now, u, &timing)).await;
            }
            Some(u) => {
                return format!(
                    "no renewal of the Lease seen in time: it lets this replica lead until {u} at most (lease duration {}s, less a {}ms margin for clock skew)",
                    timing.duration.as_secs(),
                    timing.margin().as_millis()
                );
            }
            None if started.elapsed() >= timing.duration => {
                return format!(
                    "could not confirm holding the Lease within {}s",
                    timing.duration.as_secs()
                );
            }
            None => tokio::time::sleep(timing.poll()).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(holder: Option<&str>, renewed: Option<Timestamp>, seconds: Option<i32>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                renew_time: renewed.map(MicroTime),
                lease_duration_seconds: seconds,
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn timing_leaves_room_for_a_renewal_on_time_and_for_clock_skew() {
        let t = GuardTiming::new(15, 5);
        assert_eq!(t.margin().as_millis(), 1666);
        assert_eq!(t.poll(), Duration::from_millis(1250));
        // The library renews `grace` before expiry; the guard sees it at most `poll`
        // later, and must see it before `margin` before expiry.
        assert!(t.grace > t.margin() + t.poll() + Duration::from_secs(2));
        assert_eq!(GuardTiming::new(1, 1).poll(), Duration::from_millis(250));
    }

    #[test]
    fn a_lease_is_held_until_its_renewal_plus_duration_less_the_margin() {
        let t = GuardTiming::new(15, 5);
        let renewed: Timestamp = "2026-11-23T10:00:00Z".parse().expect("time");
        let until = held_until(&lease(Some("me"), Some(renewed), Some(15)), "me", &t);
        assert_eq!(
            until,
            Ok("2026-11-23T10:00:13.333333334Z".parse().expect("time"))
        );
        // The Lease's own duration counts, as the other replicas read it.
        let until = held_until(&lease(Some("me"), Some(renewed), Some(30)), "me", &t);
        assert_eq!(
            until,
            Ok("2026-11-23T10:00:28.333333334Z".parse().expect("time"))
        );
    }

    #[test]
    fn reads_wait_for_the_renewal_to_be_due_then_poll_until_the_deadline() {
        let t = GuardTiming::new(15, 5);
        let renewed: Timestamp = "2026-11-23T10:00:00Z".parse().expect("time");
        let until =
            held_until(&lease(Some("me"), Some(renewed), Some(15)), "me", &t).expect("held");
        let at = |s: i64| renewed + SignedDuration::from_millis(s);
        // Just renewed: the next read when the next renewal is due, 10 s after this one.
        assert_eq!(next_read(at(0), until, &t), Duration::from_secs(10));
        assert_eq!(next_read(at(4_000), until, &t), Duration::from_secs(6));
        // Due: every poll.
        assert_eq!(next_read(at(10_000), until, &t), t.poll());
        assert_eq!(next_read(at(11_500), until, &t), t.poll());
        // Never past the deadline.
        assert_eq!(
            next_read(at(13_000), until, &t),
            Duration::from_nanos(333_333_334)
        );
        assert_eq!(next_read(at(14_000), until, &t), Duration::ZERO);
    }

    #[test]
    fn another_holder_or_none_is_not_held() {
        let t = GuardTiming::new(15, 5);
        let now = Timestamp::now();
        assert_eq!(
            held_until(&lease(Some("other"), Some(now), Some(15)), "me", &t),
            Err(NotHeld::Holder("other".into()))
        );
        assert_eq!(
            held_until(&lease(None, Some(now), Some(15)), "me", &t),
            Err(NotHeld::Holder("nobody".into()))
        );
        assert_eq!(
            held_until(&Lease::default(), "me", &t),
            Err(NotHeld::Holder("nobody".into()))
        );
        assert_eq!(
            held_until(&lease(Some("me"), None, Some(15)), "me", &t),
            Err(NotHeld::NoRenewTime)
        );
    }
}
