//! What one attempt's result means for its forward: delivered, dead-lettered at once, or
//! retried on the schedule.

use std::fmt;

/// What happened to one attempt, as the sender saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The target answered with this status (redirects included: they are never
    /// followed, so a 3xx is an answer like any other).
    Status(u16),
    /// No answer.
    Failed(TransportFailure),
}

/// Why an attempt got no HTTP answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportFailure {
    /// DNS failure, connection refused, unreachable network, connect timeout.
    Connect,
    /// TLS handshake failed (untrusted or expired certificate, wrong name, protocol).
    Tls,
    /// The attempt's total timeout passed before the answer's status arrived.
    Timeout,
    /// The connection broke after it was established (reset, closed mid-answer).
    Reset,
    /// The target answered something that is not HTTP/1.1 (or a malformed head).
    Protocol,
    /// The egress policy (SSRF guard) refused every address of the target: hookwarden
    /// would not connect at all.
    RefusedByPolicy,
}

impl TransportFailure {
    /// Stable name, used as the classification reason.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportFailure::Connect => "connect_error",
            TransportFailure::Tls => "tls_error",
            TransportFailure::Timeout => "timeout",
            TransportFailure::Reset => "connection_reset",
            TransportFailure::Protocol => "protocol_error",
            TransportFailure::RefusedByPolicy => "refused_by_policy",
        }
    }
}

/// What to do with the forward after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// 2xx: done.
    Delivered,
    /// Retrying cannot help: dead-lettered at once (replay is the way back).
    Terminal,
    /// Try again on the schedule (dead letter once it is exhausted).
    Retryable,
}

impl Outcome {
    /// The `outcome` label of `hookwarden_forward_attempts_total` (three values).
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Terminal => "terminal",
            Outcome::Retryable => "retryable",
        }
    }

    /// Whether the attempt counts as a failure of the target for the circuit breaker.
    /// Terminal answers do not: the target is up and answering, the forward is the
    /// problem (and an SSRF refusal never reached the target at all).
    pub fn is_target_failure(self) -> bool {
        self == Outcome::Retryable
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// An [`Outcome`] with the stable, short reason written to `lastFailure` and logs
/// (`server_error`, `gone`, `tls_error`, …; a bounded set, never text from the target).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classification {
    pub outcome: Outcome,
    pub reason: &'static str,
}

/// Classifies one attempt, following DESIGN "Outcomes":
///
/// | answer | outcome | reason |
/// |---|---|---|
/// | 2xx | delivered | `delivered` |
/// | 400, 401, 403, 404, 410, 413, 422 | terminal | `bad_request`, `unauthorized`, `forbidden`, `not_found`, `gone`, `payload_too_large`, `unprocessable` |
/// | refused by the egress policy | terminal | `refused_by_policy` |
/// | 408, 425, 429 | retryable | `request_timeout`, `too_early`, `rate_limited` |
/// | 5xx | retryable | `server_error` |
/// | 3xx (never followed) | retryable | `redirect_not_followed` |
/// | timeout, connect, TLS, reset | retryable | `timeout`, `connect_error`, `tls_error`, `connection_reset` |
/// | **not an HTTP answer** | retryable | `protocol_error` |
/// | **any other 4xx** (402, 405, 409, 415, 423, 451, …) | retryable | `client_error` |
/// | **1xx, or outside 100..=599** | retryable | `unexpected_status` |
///
/// The last two rows are where DESIGN is silent. DESIGN names the terminal codes
/// exhaustively, so everything it does not name is retried: a wrongly retried forward
/// costs a few bounded attempts and still ends in a dead letter, while a wrongly
/// dead-lettered one waits for a human to replay it — and codes like 409 (conflict),
/// 423 (locked) or 402 (payment required) often do clear up on the target's side.
pub fn classify(attempt: Attempt) -> Classification {
    let (outcome, reason) = match attempt {
        Attempt::Failed(TransportFailure::RefusedByPolicy) => (
            Outcome::Terminal,
            TransportFailure::RefusedByPolicy.as_str(),
        ),
        Attempt::Failed(failure) => (Outcome::Retryable, failure.as_str()),
        Attempt::Status(code) => match code {
            200..=299 => (Outcome::Delivered, "delivered"),
            300..=399 => (Outcome::Retryable, "redirect_not_followed"),
            400..=499 => client_error(code),
            500..=599 => (Outcome::Retryable, "server_error"),
            _ => (Outcome::Retryable, "unexpected_status"),
        },
    };
    Classification { outcome, reason }
}

fn client_error(code: u16) -> (Outcome, &'static str) {
    match code {
        400 => (Outcome::Terminal, "bad_request"),
        401 => (Outcome::Terminal, "unauthorized"),
        403 => (Outcome::Terminal, "forbidden"),
        404 => (Outcome::Terminal, "not_found"),
        410 => (Outcome::Terminal, "gone"),
        413 => (Outcome::Terminal, "payload_too_large"),
        422 => (Outcome::Terminal, "unprocessable"),
        408 => (Outcome::Retryable, "request_timeout"),
        425 => (Outcome::Retryable, "too_early"),
        429 => (Outcome::Retryable, "rate_limited"),
        _ => (Outcome::Retryable, "client_error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(code: u16) -> (&'static str, &'static str) {
        let c = classify(Attempt::Status(code));
        (c.outcome.label(), c.reason)
    }

    #[test]
    fn statuses_follow_design() {
        for code in [200, 201, 202, 204, 299] {
            assert_eq!(of(code), ("delivered", "delivered"), "{code}");
        }
        let terminal = [
            (400, "bad_request"),
            (401, "unauthorized"),
            (403, "forbidden"),
            (404, "not_found"),
            (410, "gone"),
            (413, "payload_too_large"),
            (422, "unprocessable"),
        ];
        for (code, reason) in terminal {
            assert_eq!(of(code), ("terminal", reason), "{code}");
        }
        let retried = [
            (408, "request_timeout"),
            (425, "too_early"),
            (429, "rate_limited"),
            (500, "server_error"),
            (502, "server_error"),
            (503, "server_error"),
            (599, "server_error"),
            (301, "redirect_not_followed"),
            (302, "redirect_not_followed"),
            (307, "redirect_not_followed"),
            (308, "redirect_not_followed"),
            (304, "redirect_not_followed"),
        ];
        for (code, reason) in retried {
            assert_eq!(of(code), ("retryable", reason), "{code}");
        }
    }

    #[test]
    fn codes_design_does_not_name_are_retried() {
        for code in [402, 405, 406, 409, 411, 412, 415, 418, 423, 451, 499] {
            assert_eq!(of(code), ("retryable", "client_error"), "{code}");
        }
        for code in [0, 100, 101, 199, 600, 999] {
            assert_eq!(of(code), ("retryable", "unexpected_status"), "{code}");
        }
    }

    #[test]
    fn transport_failures() {
        let f = |t| {
            let c = classify(Attempt::Failed(t));
            (c.outcome, c.reason)
        };
        assert_eq!(
            f(TransportFailure::RefusedByPolicy),
            (Outcome::Terminal, "refused_by_policy")
        );
        assert_eq!(f(TransportFailure::Tls), (Outcome::Retryable, "tls_error"));
        assert_eq!(
            f(TransportFailure::Timeout),
            (Outcome::Retryable, "timeout")
        );
        assert_eq!(
            f(TransportFailure::Connect),
            (Outcome::Retryable, "connect_error")
        );
        assert_eq!(
            f(TransportFailure::Reset),
            (Outcome::Retryable, "connection_reset")
        );
        assert_eq!(
            f(TransportFailure::Protocol),
            (Outcome::Retryable, "protocol_error")
        );
    }

    #[test]
    fn only_retryable_outcomes_count_against_the_target() {
        assert!(Outcome::Retryable.is_target_failure());
        assert!(!Outcome::Terminal.is_target_failure());
        assert!(!Outcome::Delivered.is_target_failure());
    }
}
