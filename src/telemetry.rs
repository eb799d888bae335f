//! Logging setup shared by every long-running subcommand, and the metrics exposition
//! format both components' `/metrics` negotiate.

use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber, span};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

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
            let _ = tracing_subscriber::registry()
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(ansi)
                        .with_writer(std::io::stderr),
                )
                .with(Filter::new(filter))
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
    // The filter is the outer layer: it decides what is enabled (and the level hint)
    // before the formatter sees anything, as `fmt().with_env_filter(…)` arranges it.
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(writer)
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(true),
        )
        .with(Filter::new(filter))
}

/// `RUST_LOG`'s [`EnvFilter`], told about spans only when one of its directives is about
/// spans.
///
/// `EnvFilter` takes a lock at every span's creation, each enter and exit (every poll of
/// an instrumented future: several per delivery) and its close, to track the spans its
/// span and field directives (`[span{field=value}]=debug`) match. Without such a
/// directive (the default `info`, `hookwarden=debug`, …) it tracks nothing and those
/// calls only take the lock; then they are not made. Which events and spans are enabled
/// is decided by the `EnvFilter` either way (issue #21: these calls were 1.0 % of a
/// standalone receiver's CPU samples under load).
struct Filter {
    inner: EnvFilter,
    /// Whether a directive names a span or a field: written with `[`, and the only
    /// directives `EnvFilter` tracks spans for.
    spans: bool,
}

impl Filter {
    fn new(inner: EnvFilter) -> Filter {
        let spans = inner.to_string().contains('[');
        Filter { inner, spans }
    }
}

impl<S: Subscriber> Layer<S> for Filter {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        Layer::<S>::register_callsite(&self.inner, metadata)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Layer::<S>::max_level_hint(&self.inner)
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        Layer::<S>::enabled(&self.inner, metadata, ctx)
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if self.spans {
            Layer::<S>::on_new_span(&self.inner, attrs, id, ctx);
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        if self.spans {
            Layer::<S>::on_record(&self.inner, id, values, ctx);
        }
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        if self.spans {
            Layer::<S>::on_enter(&self.inner, id, ctx);
        }
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        if self.spans {
            Layer::<S>::on_exit(&self.inner, id, ctx);
        }
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        if self.spans {
            Layer::<S>::on_close(&self.inner, id, ctx);
        }
    }
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

    /// Lines written by [`json_logger`] into memory.
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Lines {
        type Writer = Lines;
        fn make_writer(&'w self) -> Lines {
            self.clone()
        }
    }

    /// What `json_logger` with `directives` writes for an info and a debug line in a
    /// delivery span of integration `a`, then of `b`.
    fn logged(directives: &str) -> String {
        let lines = Lines::default();
        let logger = json_logger(EnvFilter::new(directives), lines.clone());
        tracing::subscriber::with_default(logger, || {
            tracing::callsite::rebuild_interest_cache();
            for integration in ["a", "b"] {
                let span = tracing::info_span!("delivery", integration);
                let _entered = span.enter();
                tracing::info!(n = 1, "info line");
                tracing::debug!(n = 2, "debug line");
            }
        });
        let bytes = lines.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn span_bookkeeping_is_skipped_only_without_span_directives() {
        for (directives, spans) in [
            ("info", false),
            ("hookwarden=debug,warn", false),
            ("[delivery]=debug", true),
            ("info,[delivery{integration=a}]=debug", true),
        ] {
            assert_eq!(
                Filter::new(EnvFilter::new(directives)).spans,
                spans,
                "{directives}"
            );
        }
        // The level hint is the filter's (debug callsites stay off at the macro's first
        // check), not the formatter's.
        let logger = json_logger(EnvFilter::new("info"), Lines::default());
        assert_eq!(logger.max_level_hint(), Some(LevelFilter::INFO));
        // Static directives: levels as EnvFilter decides them, span fields on every line.
        let out = logged("info");
        assert_eq!(out.matches("info line").count(), 2, "{out}");
        assert!(!out.contains("debug line"), "{out}");
        assert!(out.contains(r#""integration":"b""#), "{out}");
        // A span directive still selects by the span's field: debug inside `a` only.
        let out = logged("info,[delivery{integration=a}]=debug");
        assert_eq!(out.matches("info line").count(), 2, "{out}");
        let debug: Vec<&str> = out.lines().filter(|l| l.contains("debug line")).collect();
        assert_eq!(debug.len(), 1, "{out}");
        assert!(debug[0].contains(r#""integration":"a""#), "{out}");
    }
}
