//! Logging setup shared by every long-running subcommand, and the metrics exposition
//! format both components' `/metrics` negotiate.

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (default in cluster).
    Json,
    /// Human-readable lines.
    Text,
}

/// Installs the global tracing subscriber; `RUST_LOG` overrides the default `info` filter.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A second init (tests start several components in one process) keeps the first.
    match format {
        LogFormat::Json => {
            let _ = tracing::subscriber::set_global_default(json_logger(filter, std::io::stderr));
        }
        LogFormat::Text => {
            // Colour codes only for a terminal: redirected to a file or a log collector
            // they are noise around every field.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(ansi)
                .with_writer(std::io::stderr)
                .try_init();
        }
    }
}

/// The JSON log format: one object per line, the event's fields at the top level, and the
/// fields of the span it happened in under `span` (for a delivery: `integration`,
/// `provider`, `delivery_id` once known, `outcome`), every enclosing span under `spans`.
/// So `jq 'select(.span.delivery_id == "ID")'` collects one delivery's lines.
pub fn json_logger<W>(filter: EnvFilter, writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(writer)
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(true)
        .finish()
}

/// The body and content type of a `/metrics` answer for a request with `headers`, from
/// the OpenMetrics text `prometheus_client` encodes. Prometheus asks for OpenMetrics and
/// gets it; anything else (curl, `promtool check metrics`, older scrapers) gets the
/// classic text format (0.0.4), in which counters are named with their `_total`.
pub fn negotiate_metrics(headers: &http::HeaderMap, openmetrics: String) -> (&'static str, String) {
    let wants_openmetrics = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if wants_openmetrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            openmetrics,
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            classic_text(&openmetrics),
        )
    }
}

/// OpenMetrics text → the classic Prometheus text format: a counter family is named with
/// its `_total` suffix in `# HELP`/`# TYPE`, and `# UNIT`/`# EOF` go away.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta.and_then(|(p, rest)| rest.split_once(' ').map(|(n, t)| (p, n, t))) {
            Some((prefix, name, tail)) if counters.contains(name) => {
                out.push_str(prefix);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(tail);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_names_counters_with_total_and_drops_eof() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 3\n# HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n# EOF\n";
        assert_eq!(
            classic_text(om),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 3\n# HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n"
        );
        let mut headers = http::HeaderMap::new();
        assert!(
            negotiate_metrics(&headers, om.into())
                .0
                .starts_with("text/plain")
        );
        headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
            ),
        );
        assert_eq!(negotiate_metrics(&headers, om.into()).1, om);
    }
}
