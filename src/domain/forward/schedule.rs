//! When the next attempt of a failed forward is due: the retry schedule with ±10 % jitter,
//! stretched (never shortened) by the target's `Retry-After`.

use std::time::Duration;

use jiff::civil::DateTime;
use jiff::tz::TimeZone;

use super::{MAX_RETRY_DELAY, RetrySchedule};

/// Jitter applied to every scheduled delay, as a fraction: ±10 % spreads a burst of
/// forwards that failed together (a target restart) instead of retrying them in lockstep.
pub const JITTER: f64 = 0.10;

/// Longest `Retry-After` honoured. The header comes from whoever controls the target URL
/// (a tenant, a partner, a compromised host): `Retry-After: 31536000`, or an HTTP date in
/// 2099 from a server with a broken clock, would otherwise park a forward — its body on
/// disk, counted against the journal cap — far past `deadLetterTTL`. 24 h is the longest
/// delay a spec's schedule may ask for itself ([`MAX_RETRY_DELAY`]), so honouring the
/// header never stretches a forward beyond what its owner could have configured.
pub const MAX_RETRY_AFTER: Duration = MAX_RETRY_DELAY;

/// When attempt `attempts_made + 1` is due, in Unix ms, or `None` when the schedule is
/// exhausted (the forward becomes a dead letter).
///
/// - `attempts_made`: attempts already made, the one that just failed included. `0` means
///   none yet: the first attempt is due at once (`failed_at_ms`).
/// - `jitter_sample`: a uniform sample in `[-1, 1]` from the caller's generator; the
///   scheduled delay is scaled by `1 + JITTER × sample`. Values outside are clamped, NaN
///   counts as 0, so a bad sample can never produce a negative or unbounded delay.
/// - `retry_after`: the target's parsed `Retry-After`; it wins when it is longer than the
///   jittered delay, never shortens it, and is capped at [`MAX_RETRY_AFTER`]. It never
///   adds an attempt to an exhausted schedule.
pub fn next_attempt_at(
    schedule: &RetrySchedule,
    attempts_made: u32,
    failed_at_ms: i64,
    jitter_sample: f64,
    retry_after: Option<Duration>,
) -> Option<i64> {
    let Some(index) = attempts_made.checked_sub(1) else {
        return Some(failed_at_ms);
    };
    let base = schedule.delays().get(usize::try_from(index).ok()?)?;
    let sample = if jitter_sample.is_nan() {
        0.0
    } else {
        jitter_sample.clamp(-1.0, 1.0)
    };
    // Delays are at most 24 h (8.64e7 ms): exact in f64, and the cast back cannot overflow.
    let jittered_ms = (base.as_millis() as f64 * (1.0 + JITTER * sample)).round() as i64;
    let retry_after_ms = retry_after.map_or(0, |d| millis(d.min(MAX_RETRY_AFTER)));
    Some(failed_at_ms.saturating_add(jittered_ms.max(retry_after_ms)))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Reads a `Retry-After` value (RFC 9110 §10.2.3): delta-seconds, or an HTTP date, which
/// is turned into a delay relative to `now_ms`. A date in the past is a delay of zero.
/// Values longer than [`MAX_RETRY_AFTER`] are capped to it; anything unreadable is
/// `None` (the schedule alone decides).
///
/// All three HTTP-date forms are accepted, as §5.6.7 requires of recipients: IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), the obsolete RFC 850 form
/// (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`).
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits but too many for u64: still "later than the cap".
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
    }
    let at_ms = parse_http_date(value, now_ms)?;
    let delay_ms = u64::try_from(at_ms.saturating_sub(now_ms)).unwrap_or(0);
    Some(Duration::from_millis(delay_ms).min(MAX_RETRY_AFTER))
}

/// An HTTP date in Unix ms. The weekday must be a weekday name but is not checked
/// against the date: senders get it wrong, and the date is what matters.
fn parse_http_date(value: &str, now_ms: i64) -> Option<i64> {
    let tokens: Vec<&str> = value.split_ascii_whitespace().collect();
    let (year, month, day, time) = match tokens.as_slice() {
        // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
        [weekday, day, month, year, time, "GMT"] => {
            short_weekday(weekday.strip_suffix(',')?)?;
            (
                number(year, 4)?,
                month_number(month)?,
                number(day, 2)?,
                *time,
            )
        }
        // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
        [weekday, date, time, "GMT"] => {
            long_weekday(weekday.strip_suffix(',')?)?;
            let mut parts = date.split('-');
            let (day, month, yy) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() {
                return None;
            }
            let year = two_digit_year(number(yy, 2)?, now_ms)?;
            (year, month_number(month)?, number(day, 2)?, *time)
        }
        // asctime: Sun Nov  6 08:49:37 1994
        [weekday, month, day, time, year] => {
            short_weekday(weekday)?;
            (
                number(year, 4)?,
                month_number(month)?,
                number(day, 2)?,
                *time,
            )
        }
        _ => return None,
    };
    let mut hms = time.split(':');
    let (h, m, s) = (hms.next()?, hms.next()?, hms.next()?);
    if hms.next().is_some() {
        return None;
    }
    let dt = DateTime::new(
        i16::try_from(year).ok()?,
        i8::try_from(month).ok()?,
        i8::try_from(day).ok()?,
        i8::try_from(number(h, 2)?).ok()?,
        i8::try_from(number(m, 2)?).ok()?,
        i8::try_from(number(s, 2)?).ok()?,
        0,
    )
    .ok()?;
    Some(
        dt.to_zoned(TimeZone::UTC)
            .ok()?
            .timestamp()
            .as_millisecond(),
    )
}

/// 1..=`max_len` ASCII digits.
fn number(s: &str, max_len: usize) -> Option<u32> {
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

const WEEKDAYS: [(&str, &str); 7] = [
    ("Mon", "Monday"),
    ("Tue", "Tuesday"),
    ("Wed", "Wednesday"),
    ("Thu", "Thursday"),
    ("Fri", "Friday"),
    ("Sat", "Saturday"),
    ("Sun", "Sunday"),
];

fn short_weekday(s: &str) -> Option<()> {
    WEEKDAYS.iter().any(|(short, _)| *short == s).then_some(())
}

fn long_weekday(s: &str) -> Option<()> {
    WEEKDAYS.iter().any(|(_, long)| *long == s).then_some(())
}

fn month_number(s: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let index = MONTHS.iter().position(|m| *m == s)?;
    u32::try_from(index + 1).ok()
}

/// RFC 9110 §5.6.7: a two-digit year more than 50 years in the future is the most recent
/// past year with those digits.
fn two_digit_year(yy: u32, now_ms: i64) -> Option<u32> {
    let now_year = jiff::Timestamp::from_millisecond(now_ms)
        .ok()?
        .to_zoned(TimeZone::UTC)
        .year();
    let now_year = u32::try_from(now_year).ok()?;
    let century = now_year - now_year % 100;
    let candidate = century + yy;
    Some(if candidate > now_year + 50 {
        candidate - 100
    } else {
        candidate
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 784_111_777_000; // Sun, 06 Nov 1994 08:49:37 GMT
    const MIN: Duration = Duration::from_secs(60);

    fn s(d: &[u64]) -> RetrySchedule {
        RetrySchedule::new(d.iter().map(|s| Duration::from_secs(*s)).collect()).expect("valid")
    }

    #[test]
    fn follows_the_schedule_then_gives_up() {
        let sched = RetrySchedule::default();
        let due: Vec<Option<i64>> = (0..=6)
            .map(|n| next_attempt_at(&sched, n, 1_000, 0.0, None))
            .collect();
        assert_eq!(
            due,
            [
                Some(1_000),
                Some(1_000 + 60_000),
                Some(1_000 + 300_000),
                Some(1_000 + 1_800_000),
                Some(1_000 + 7_200_000),
                Some(1_000 + 21_600_000),
                None,
            ]
        );
    }

    #[test]
    fn jitter_is_ten_percent_and_bad_samples_are_tamed() {
        let sched = s(&[100]);
        assert_eq!(next_attempt_at(&sched, 1, 0, 1.0, None), Some(110_000));
        assert_eq!(next_attempt_at(&sched, 1, 0, -1.0, None), Some(90_000));
        assert_eq!(next_attempt_at(&sched, 1, 0, 7.0, None), Some(110_000));
        assert_eq!(next_attempt_at(&sched, 1, 0, f64::NAN, None), Some(100_000));
        assert_eq!(
            next_attempt_at(&sched, 1, 0, f64::NEG_INFINITY, None),
            Some(90_000)
        );
    }

    #[test]
    fn retry_after_only_ever_stretches_the_delay() {
        let sched = s(&[60]);
        let longer = Some(Duration::from_secs(600));
        let shorter = Some(Duration::from_secs(5));
        assert_eq!(next_attempt_at(&sched, 1, 0, 0.0, longer), Some(600_000));
        assert_eq!(next_attempt_at(&sched, 1, 0, 0.0, shorter), Some(60_000));
        let absurd = Some(Duration::from_secs(u64::MAX));
        assert_eq!(
            next_attempt_at(&sched, 1, 0, 0.0, absurd),
            Some(86_400_000),
            "capped"
        );
        assert_eq!(
            next_attempt_at(&sched, 2, 0, 0.0, longer),
            None,
            "Retry-After never adds an attempt"
        );
    }

    #[test]
    fn retry_after_seconds() {
        assert_eq!(
            parse_retry_after("120", NOW),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", NOW), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("31536000", NOW), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("99999999999999999999999", NOW),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn retry_after_http_dates_in_all_three_forms() {
        for later in [
            "Sun, 06 Nov 1994 08:51:37 GMT",
            "Sunday, 06-Nov-94 08:51:37 GMT",
            "Sun Nov  6 08:51:37 1994",
        ] {
            assert_eq!(parse_retry_after(later, NOW), Some(2 * MIN), "{later}");
        }
        // The weekday is not checked against the date (senders get it wrong).
        assert_eq!(
            parse_retry_after("Mon, 06 Nov 1994 08:50:37 GMT", NOW),
            Some(MIN)
        );
        assert_eq!(
            parse_retry_after("Sat, 05 Nov 1994 08:49:37 GMT", NOW),
            Some(Duration::ZERO),
            "a past date means now"
        );
        assert_eq!(
            parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT", NOW),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn retry_after_garbage_is_ignored() {
        for bad in [
            "",
            "soon",
            "-5",
            "1.5",
            "+30",
            "0x10",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994 08:49:37 +0000",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "Sun 06 Nov 1994 08:49:37 GMT",
            "1994-11-06T08:49:37Z",
        ] {
            assert_eq!(parse_retry_after(bad, NOW), None, "{bad:?}");
        }
    }

    #[test]
    fn two_digit_years_follow_the_fifty_year_rule() {
        let now_2030 = 1_893_456_000_000; // 2030-01-01
        assert_eq!(two_digit_year(79, now_2030), Some(2079));
        assert_eq!(two_digit_year(81, now_2030), Some(1981));
        assert_eq!(two_digit_year(94, NOW), Some(1994));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn delays_stay_within_ten_percent(
            delays in proptest::collection::vec(1u64..=86_400, 1..=20),
            attempts in 1u32..=20,
            failed_at in 0i64..4_000_000_000_000,
            sample in -1.0f64..=1.0,
        ) {
            let sched = s(&delays);
            let due = next_attempt_at(&sched, attempts, failed_at, sample, None);
            match delays.get(attempts as usize - 1) {
                None => prop_assert_eq!(due, None),
                Some(base) => {
                    let due = due.ok_or_else(|| TestCaseError::fail("not exhausted yet"))?;
                    let base_ms = (*base * 1000) as f64;
                    let delay = (due - failed_at) as f64;
                    prop_assert!(delay >= (base_ms * 0.9).floor() && delay <= (base_ms * 1.1).ceil(),
                        "delay {} for base {}", delay, base_ms);
                }
            }
        }

        #[test]
        fn exhausted_after_len_plus_one_attempts(
            delays in proptest::collection::vec(1u64..=86_400, 1..=20),
            sample in -1.0f64..=1.0,
        ) {
            let sched = s(&delays);
            let n = u32::try_from(delays.len()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            for made in 0..=n {
                prop_assert!(next_attempt_at(&sched, made, 0, sample, None).is_some());
            }
            prop_assert_eq!(sched.max_attempts(), n + 1);
            prop_assert_eq!(next_attempt_at(&sched, n + 1, 0, sample, None), None);
            prop_assert_eq!(next_attempt_at(&sched, u32::MAX, 0, sample, Some(MIN)), None);
        }

        #[test]
        fn the_default_schedule_never_shrinks_whatever_the_jitter(
            a in -1.0f64..=1.0,
            b in -1.0f64..=1.0,
            attempts in 1u32..5,
        ) {
            let sched = RetrySchedule::default();
            let this = next_attempt_at(&sched, attempts, 0, a, None);
            let next = next_attempt_at(&sched, attempts + 1, 0, b, None);
            prop_assert!(this.is_some() && next.is_some());
            prop_assert!(this <= next, "{:?} then {:?}", this, next);
        }

        #[test]
        fn retry_after_is_a_floor_never_a_ceiling(
            base in 1u64..=86_400,
            retry_after in 0u64..=200_000,
            sample in -1.0f64..=1.0,
        ) {
            let sched = s(&[base]);
            let without = next_attempt_at(&sched, 1, 0, sample, None)
                .ok_or_else(|| TestCaseError::fail("due"))?;
            let with = next_attempt_at(&sched, 1, 0, sample, Some(Duration::from_secs(retry_after)))
                .ok_or_else(|| TestCaseError::fail("due"))?;
            let honoured = (retry_after.min(86_400) * 1000) as i64;
            prop_assert_eq!(with, without.max(honoured));
        }

        #[test]
        fn retry_after_never_panics_and_is_capped(value in "\\PC{0,40}", now in any::<i64>()) {
            if let Some(d) = parse_retry_after(&value, now) {
                prop_assert!(d <= MAX_RETRY_AFTER);
            }
        }
    }
}
