//! The circuit breaker of one target on one replica: closed → open after `failures`
//! consecutive retryable failures → half-open after `openFor`, where exactly one probe
//! goes through → closed on its success, open again on its failure.
//!
//! Pending forwards that meet an open circuit wait and are not charged an attempt: that
//! is the caller's side of [`Permit::Wait`]. The breaker lives in memory and starts closed
//! after a restart (DESIGN: per target, per receiver replica).

use std::time::Duration;

use super::{CircuitSettings, Outcome};

/// Extra time a half-open probe gets beyond the attempt timeout before it is presumed
/// lost (its result never recorded: the task was cancelled or panicked). Without it, one
/// lost probe would hold the circuit half-open for good.
pub const PROBE_GRACE: Duration = Duration::from_secs(5);

/// Whether an attempt may start now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// Closed: go.
    Allowed,
    /// Half-open: this attempt is the single probe; record its result with this permit.
    Probe,
    /// Open, or half-open with the probe in flight: ask again at `until_ms`.
    Wait { until_ms: i64 },
}

/// The state as written to `status.forwarding[].circuit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "halfOpen",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inner {
    Closed {
        consecutive: u32,
    },
    Open {
        until_ms: i64,
    },
    /// `probe_since_ms`: when the probe in flight was let through, if one is.
    HalfOpen {
        probe_since_ms: Option<i64>,
    },
}

/// One target's breaker. Time is Unix ms passed in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CircuitBreaker {
    failures: u32,
    open_for_ms: i64,
    probe_lease_ms: i64,
    inner: Inner,
}

impl CircuitBreaker {
    /// A closed breaker. `attempt_timeout` is the target's per-attempt timeout: a probe
    /// not recorded within it plus [`PROBE_GRACE`] is presumed lost and another one is let
    /// through. (The sender enforces the timeout, so a live probe is always recorded
    /// before that; there is never more than one probe actually in flight.)
    pub fn new(settings: CircuitSettings, attempt_timeout: Duration) -> CircuitBreaker {
        CircuitBreaker {
            failures: settings.failures.max(1),
            open_for_ms: ms(settings.open_for),
            probe_lease_ms: ms(attempt_timeout.saturating_add(PROBE_GRACE)),
            inner: Inner::Closed { consecutive: 0 },
        }
    }

    /// Asks to start an attempt now. `Probe` is handed out once per half-open period
    /// (again only when the previous probe is presumed lost).
    pub fn permit(&mut self, now_ms: i64) -> Permit {
        match self.inner {
            Inner::Closed { .. } => Permit::Allowed,
            Inner::Open { until_ms } if now_ms < until_ms => Permit::Wait { until_ms },
            Inner::Open { .. }
            | Inner::HalfOpen {
                probe_since_ms: None,
            } => {
                self.inner = Inner::HalfOpen {
                    probe_since_ms: Some(now_ms),
                };
                Permit::Probe
            }
            Inner::HalfOpen {
                probe_since_ms: Some(since),
            } => {
                let lease_end = since.saturating_add(self.probe_lease_ms);
                if now_ms >= lease_end {
                    self.inner = Inner::HalfOpen {
                        probe_since_ms: Some(now_ms),
                    };
                    Permit::Probe
                } else {
                    Permit::Wait {
                        until_ms: lease_end,
                    }
                }
            }
        }
    }

    /// Records the outcome of an attempt started under `permit`.
    ///
    /// - Closed: a retryable failure counts, a delivery resets the count, a terminal
    ///   answer neither counts nor resets (the target answered; the forward was bad).
    /// - The probe: delivered closes, retryable re-opens for `openFor`, terminal frees the
    ///   probe slot without deciding (the next attempt probes again).
    /// - Results of attempts let through before the circuit opened do not move an open or
    ///   half-open circuit: only the probe decides, so a burst of late answers cannot
    ///   close it or restart its clock.
    pub fn record(&mut self, permit: Permit, outcome: Outcome, now_ms: i64) {
        self.inner = match (self.inner, permit) {
            (Inner::HalfOpen { .. }, Permit::Probe) => match outcome {
                Outcome::Delivered => Inner::Closed { consecutive: 0 },
                Outcome::Retryable => self.open(now_ms),
                Outcome::Terminal => Inner::HalfOpen {
                    probe_since_ms: None,
                },
            },
            // A probe presumed lost whose answer arrives after another probe closed the
            // circuit is an ordinary closed-state result.
            (Inner::Closed { consecutive }, Permit::Allowed | Permit::Probe) => match outcome {
                Outcome::Delivered => Inner::Closed { consecutive: 0 },
                Outcome::Terminal => Inner::Closed { consecutive },
                Outcome::Retryable => {
                    let consecutive = consecutive.saturating_add(1);
                    if consecutive >= self.failures {
                        self.open(now_ms)
                    } else {
                        Inner::Closed { consecutive }
                    }
                }
            },
            (state, _) => state,
        };
    }

    fn open(&self, now_ms: i64) -> Inner {
        Inner::Open {
            until_ms: now_ms.saturating_add(self.open_for_ms),
        }
    }

    /// The state at `now_ms` (an open circuit whose `openFor` has passed reads as
    /// half-open: the next attempt will be the probe).
    pub fn state(&self, now_ms: i64) -> CircuitState {
        match self.inner {
            Inner::Closed { .. } => CircuitState::Closed,
            Inner::Open { until_ms } if now_ms < until_ms => CircuitState::Open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Consecutive retryable failures counted while closed.
    pub fn consecutive_failures(&self) -> u32 {
        match self.inner {
            Inner::Closed { consecutive } => consecutive,
            Inner::Open { .. } | Inner::HalfOpen { .. } => self.failures,
        }
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn breaker(failures: u32, open_for_s: u64) -> CircuitBreaker {
        CircuitBreaker::new(
            CircuitSettings {
                failures,
                open_for: Duration::from_secs(open_for_s),
            },
            TIMEOUT,
        )
    }

    fn fail(b: &mut CircuitBreaker, n: u32, now: i64) {
        for _ in 0..n {
            let p = b.permit(now);
            assert_eq!(p, Permit::Allowed);
            b.record(p, Outcome::Retryable, now);
        }
    }

    #[test]
    fn opens_after_n_consecutive_retryable_failures() {
        let mut b = breaker(3, 60);
        fail(&mut b, 2, 0);
        assert_eq!(b.state(0), CircuitState::Closed);
        assert_eq!(b.consecutive_failures(), 2);
        fail(&mut b, 1, 1_000);
        assert_eq!(b.state(1_000), CircuitState::Open);
        assert_eq!(b.permit(1_000), Permit::Wait { until_ms: 61_000 });
        assert_eq!(b.permit(60_999), Permit::Wait { until_ms: 61_000 });
    }

    #[test]
    fn a_success_resets_and_terminal_answers_do_not_count() {
        let mut b = breaker(3, 60);
        fail(&mut b, 2, 0);
        b.record(Permit::Allowed, Outcome::Delivered, 0);
        assert_eq!(b.consecutive_failures(), 0);
        fail(&mut b, 2, 0);
        for _ in 0..10 {
            b.record(Permit::Allowed, Outcome::Terminal, 0);
        }
        assert_eq!(
            b.consecutive_failures(),
            2,
            "terminal neither counts nor resets"
        );
        assert_eq!(b.state(0), CircuitState::Closed);
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through() {
        let mut b = breaker(1, 60);
        fail(&mut b, 1, 0);
        assert_eq!(b.state(60_000), CircuitState::HalfOpen);
        assert_eq!(b.permit(60_000), Permit::Probe);
        // The probe's lease is the attempt timeout plus the grace.
        assert_eq!(b.permit(60_001), Permit::Wait { until_ms: 75_000 });
        assert_eq!(b.permit(61_000), Permit::Wait { until_ms: 75_000 });
        b.record(Permit::Probe, Outcome::Delivered, 62_000);
        assert_eq!(b.state(62_000), CircuitState::Closed);
        assert_eq!(b.permit(62_000), Permit::Allowed);
    }

    #[test]
    fn a_failed_probe_reopens_for_open_for() {
        let mut b = breaker(1, 60);
        fail(&mut b, 1, 0);
        assert_eq!(b.permit(60_000), Permit::Probe);
        b.record(Permit::Probe, Outcome::Retryable, 65_000);
        assert_eq!(b.state(65_000), CircuitState::Open);
        assert_eq!(b.permit(65_000), Permit::Wait { until_ms: 125_000 });
        assert_eq!(b.permit(125_000), Permit::Probe);
    }

    #[test]
    fn a_terminal_probe_frees_the_slot_without_deciding() {
        let mut b = breaker(1, 60);
        fail(&mut b, 1, 0);
        assert_eq!(b.permit(60_000), Permit::Probe);
        b.record(Permit::Probe, Outcome::Terminal, 60_500);
        assert_eq!(b.state(60_500), CircuitState::HalfOpen);
        assert_eq!(b.permit(60_600), Permit::Probe);
    }

    #[test]
    fn late_answers_from_before_the_opening_do_not_move_the_circuit() {
        let mut b = breaker(2, 60);
        let early = b.permit(0);
        fail(&mut b, 2, 0);
        b.record(early, Outcome::Delivered, 100);
        assert_eq!(b.state(100), CircuitState::Open);
        assert_eq!(b.permit(100), Permit::Wait { until_ms: 60_000 });
        assert_eq!(b.permit(60_000), Permit::Probe);
        b.record(Permit::Allowed, Outcome::Delivered, 60_100);
        b.record(Permit::Allowed, Outcome::Retryable, 60_100);
        assert_eq!(b.state(60_100), CircuitState::HalfOpen);
        assert_eq!(b.permit(60_200), Permit::Wait { until_ms: 75_000 });
    }

    #[test]
    fn a_lost_probe_is_replaced_after_its_lease() {
        let mut b = breaker(1, 60);
        fail(&mut b, 1, 0);
        assert_eq!(b.permit(60_000), Permit::Probe);
        // Never recorded.
        assert_eq!(b.permit(74_999), Permit::Wait { until_ms: 75_000 });
        assert_eq!(b.permit(75_000), Permit::Probe);
    }

    #[test]
    fn zero_failures_is_read_as_one_and_names_are_stable() {
        let mut b = breaker(0, 1);
        fail(&mut b, 1, 0);
        assert_eq!(b.state(0), CircuitState::Open);
        assert_eq!(CircuitState::Closed.as_str(), "closed");
        assert_eq!(CircuitState::Open.as_str(), "open");
        assert_eq!(CircuitState::HalfOpen.as_str(), "halfOpen");
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Advance the clock (ms), finishing first every attempt that would outlive its
        /// timeout (the sender guarantees that).
        Advance(i64),
        /// Ask for a permit and start an attempt if given one.
        Start,
        /// Finish the in-flight attempt at this index with this outcome.
        Finish(prop::sample::Index, Outcome),
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Delivered),
            Just(Outcome::Terminal),
            Just(Outcome::Retryable),
            Just(Outcome::Retryable),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0i64..20_000).prop_map(Op::Advance),
            Just(Op::Start),
            Just(Op::Start),
            (any::<prop::sample::Index>(), outcome()).prop_map(|(i, o)| Op::Finish(i, o)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn never_two_probes_in_flight_and_opens_only_after_n_consecutive_failures(
            failures in 1u32..6,
            open_for_s in 1u64..120,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let mut b = breaker(failures, open_for_s);
            let timeout_ms = ms(TIMEOUT);
            let mut now = 0i64;
            let mut in_flight: Vec<(Permit, i64)> = Vec::new();
            // Reference count of consecutive retryable results recorded while closed.
            let mut model = 0u32;

            let finish = |b: &mut CircuitBreaker, in_flight: &mut Vec<(Permit, i64)>, i: usize, o: Outcome, now: i64, model: &mut u32| -> Result<(), TestCaseError> {
                let (permit, _) = in_flight.remove(i);
                let was_closed = b.state(now) == CircuitState::Closed;
                b.record(permit, o, now);
                if was_closed {
                    match o {
                        Outcome::Delivered => *model = 0,
                        Outcome::Terminal => {}
                        Outcome::Retryable => *model += 1,
                    }
                    let opened = b.state(now) == CircuitState::Open;
                    prop_assert_eq!(opened, *model >= failures,
                        "opened={} after {} consecutive failures (threshold {})", opened, model, failures);
                    if opened {
                        *model = 0;
                    }
                }
                Ok(())
            };

            for op in ops {
                match op {
                    Op::Advance(dt) => {
                        let target = now + dt;
                        // Attempts that would outlive their timeout end as timeouts, at
                        // their deadline, oldest first.
                        while let Some(i) = in_flight
                            .iter()
                            .enumerate()
                            .filter(|(_, (_, started))| started + timeout_ms <= target)
                            .min_by_key(|(_, (_, started))| *started)
                            .map(|(i, _)| i)
                        {
                            let deadline = in_flight[i].1 + timeout_ms;
                            now = now.max(deadline);
                            finish(&mut b, &mut in_flight, i, Outcome::Retryable, now, &mut model)?;
                        }
                        now = target;
                    }
                    Op::Start => match b.permit(now) {
                        Permit::Wait { until_ms } => prop_assert!(until_ms > now),
                        p => in_flight.push((p, now)),
                    },
                    Op::Finish(i, o) => {
                        if !in_flight.is_empty() {
                            let i = i.index(in_flight.len());
                            finish(&mut b, &mut in_flight, i, o, now, &mut model)?;
                        }
                    }
                }
                let probes = in_flight.iter().filter(|(p, _)| *p == Permit::Probe).count();
                prop_assert!(probes <= 1, "{} probes in flight", probes);
                if b.state(now) != CircuitState::Closed {
                    prop_assert!(!matches!(b.clone().permit(now), Permit::Allowed));
                }
            }
        }
    }
}
