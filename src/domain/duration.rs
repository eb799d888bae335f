//! Go-style durations as used in Kubernetes specs (`24h`, `90m`, `1h30m`, `500ms`, `0s`).

use std::time::Duration;

/// A duration string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: use a number and unit such as 30s, 90m, 24h or 1h30m")]
pub struct InvalidDuration(pub String);

/// [`parse`] for command-line flags (clap's `value_parser`): `2s`, `500ms`, `1m`.
pub fn parse_arg(s: &str) -> Result<Duration, String> {
    parse(s).map_err(|e| e.to_string())
}

/// Parses a Go duration: one or more `<number><unit>` groups, units ns, us, µs, ms, s, m, h.
/// Negative durations are refused (no spec field here means "in the past").
pub fn parse(input: &str) -> Result<Duration, InvalidDuration> {
    let err = || InvalidDuration(input.to_string());
    let s = input.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_len == 0 {
            return Err(err());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total += value * seconds_per_unit;
    }
    if !total.is_finite() || total > 10.0 * 365.0 * 86400.0 {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let cases = [
            ("24h", 86_400_000),
            ("90m", 5_400_000),
            ("1h30m", 5_400_000),
            ("0s", 0),
            ("0", 0),
            ("500ms", 500),
            ("1.5s", 1500),
            ("2m3s", 123_000),
        ];
        for (s, ms) in cases {
            assert_eq!(parse(s).map(|d| d.as_millis()), Ok(ms), "{s}");
        }
    }

    #[test]
    fn refuses_garbage() {
        for s in ["", "h", "10", "10d", "-5s", "1h-", "s10", "1..5s"] {
            assert!(parse(s).is_err(), "{s}");
        }
    }
}
