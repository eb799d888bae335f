//! The monitoring a user enables from the chart, against the real tools: `promtool check
//! metrics` over a real scrape of the receiver after deliveries; every dashboard query and
//! alert expression parses as PromQL (promtool) and names only series the binary exports;
//! and a real Prometheus on 127.0.0.1 scraping a standalone receiver sees the
//! per-integration series with their labels and fires the shipped alerts (rendered from the
//! chart with tests/monitoring/values.yaml: short `for:`).
//!
//! `prometheus` and `promtool` come from `HOOKWARDEN_PROMETHEUS_BIN` (set by scripts/test.sh,
//! from scripts/install-prometheus.sh), PATH, or the installer's cache folder; without them
//! the tests say so and pass, except under `CI=true`, where that is a failure.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::standalone::{Standalone, folder_with, get_body, post_raw, sample};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The folder holding `prometheus` and `promtool`, or `None` (skip; a failure in CI).
pub(crate) fn prometheus_bin() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("HOOKWARDEN_PROMETHEUS_BIN") {
        candidates.push(dir.into());
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cache/hookwarden/prometheus/bin"));
    }
    let found = candidates
        .into_iter()
        .find(|d| d.join("promtool").is_file() && d.join("prometheus").is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "prometheus/promtool not found (HOOKWARDEN_PROMETHEUS_BIN or PATH); scripts/install-prometheus.sh installs them"
        );
        eprintln!(
            "SKIPPED: prometheus/promtool not found (HOOKWARDEN_PROMETHEUS_BIN or PATH); run scripts/install-prometheus.sh"
        );
    }
    found
}

/// The datadog and github examples; `github-repo` (which receives nothing here) and
/// `datadog-prod` get the expected-interval annotation `interval`.
fn integrations(interval: &str) -> tempfile::TempDir {
    let dir = folder_with(&["datadog.yaml", "github.yaml"]);
    for (file, name) in [
        ("datadog.yaml", "datadog-prod"),
        ("github.yaml", "github-repo"),
    ] {
        let path = dir.path().join(file);
        let text = std::fs::read_to_string(&path).expect("example");
        let annotated = text.replacen(
            &format!("  name: {name}\n"),
            &format!(
                "  name: {name}\n  annotations:\n    hookwarden.dev/expected-interval: {interval}\n"
            ),
            1,
        );
        assert_ne!(annotated, text, "{file}: metadata.name found");
        std::fs::write(&path, annotated).expect("write");
    }
    dir
}

const TOKEN: &str = "example-datadog-token-change-me";

fn datadog_with_token(url: &str, id: &str, token: &str) -> u16 {
    let body = serde_json::json!({
        "id": id, "aggreg_key": "disk", "alert_name": "[Triggered] disk",
        "alert_type": "error", "alert_transition": "Triggered", "severity": "high",
        "message": "disk almost full", "host": "db-1", "tags": "env:prod",
    })
    .to_string();
    let auth = format!("Bearer {token}");
    post_raw(
        url,
        &[
            ("Content-Type", "application/json"),
            ("Authorization", auth.as_str()),
        ],
        &body,
    )
    .map(|(code, _)| code)
    .unwrap_or(0)
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tool");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().expect("tool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Sample names a scrape exposes: from its `# TYPE` lines, with the suffixes each type's
/// samples carry (counters `_total`, histograms `_bucket`/`_sum`/`_count`).
fn exposed_names(scrape: &str, names: &mut BTreeSet<String>) {
    for line in scrape.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#") || words.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        match kind {
            // OpenMetrics names the family without `_total`, the classic format with it.
            "counter" => {
                names.insert(format!("{}_total", name.trim_end_matches("_total")));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
}

/// Every `hookwarden_*` name an expression uses.
fn referenced_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("hookwarden_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(expr.len(), |e| start + e);
        if boundary {
            names.insert(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

/// Every series name the binary registers, including families that have no series yet
/// in a scrape (no forwarding, no reconcile error): the components' own `register`
/// functions fill a registry, and one series of each family is created.
fn registered_names(names: &mut BTreeSet<String>) {
    use hookwarden::receiver::forward::{ForwardMetrics, TargetLabels, TargetOutcome};
    use hookwarden::receiver::metrics::{ProviderLabels, ReceiverMetrics, WriteLabels};
    let mut registry = prometheus_client::registry::Registry::default();
    let controller = hookwarden::controller::metrics::ControllerMetrics::register(&mut registry);
    controller.observe(Duration::from_millis(1), Some("apply_status"));
    let forward = ForwardMetrics::new();
    forward.register(&mut registry);
    let target = TargetLabels {
        namespace: "n".into(),
        integration: "i".into(),
        target: "t".into(),
    };
    drop(forward.attempts.get_or_create(&TargetOutcome {
        namespace: "n".into(),
        integration: "i".into(),
        target: "t".into(),
        outcome: "delivered",
    }));
    drop(forward.pending.get_or_create(&target));
    drop(forward.dead_letters.get_or_create(&target));
    drop(forward.circuit_open.get_or_create(&target));
    let receiver = ReceiverMetrics::register(&mut registry);
    drop(
        receiver
            .dedup_hits
            .get_or_create(&ProviderLabels { provider: "github" }),
    );
    drop(
        receiver
            .status_writes
            .get_or_create(&WriteLabels { outcome: "ok" }),
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    exposed_names(&text, names);
}

/// A real scrape after accepted and refused deliveries passes `promtool check metrics`
/// and carries the per-integration series with their labels; every dashboard panel's
/// query and every shipped alert parses as PromQL and names only series the binary
/// exports.
#[test]
fn promtool_checks_the_scrape_the_dashboard_and_the_rules() {
    let Some(bin) = prometheus_bin() else { return };
    let promtool = bin.join("promtool");
    let dir = integrations("1h");
    let receiver = Standalone::start_with(dir.path(), &["--metrics-addr", "127.0.0.1:0"]);
    let url = receiver.url("default/datadog-prod").to_string();
    for i in 0..3 {
        assert_eq!(datadog_with_token(&url, &format!("ok-{i}"), TOKEN), 202);
    }
    for i in 0..2 {
        assert_eq!(datadog_with_token(&url, &format!("bad-{i}"), "wrong"), 401);
    }
    let metrics = receiver.metrics.clone().expect("a Metrics: line");
    let scrape = get_body(&metrics).expect("GET /metrics answers 200");
    for (series, want) in [
        (
            r#"hookwarden_integration_deliveries_total{namespace="default",integration="datadog-prod",outcome="accepted"}"#,
            3.0,
        ),
        (
            r#"hookwarden_integration_deliveries_total{namespace="default",integration="datadog-prod",outcome="rejected"}"#,
            2.0,
        ),
        (
            r#"hookwarden_integration_rejects_total{namespace="default",integration="datadog-prod",reason="token_mismatch"}"#,
            2.0,
        ),
        (
            r#"hookwarden_integration_deliveries_total{namespace="default",integration="github-repo",outcome="accepted"}"#,
            0.0,
        ),
        (
            r#"hookwarden_integration_expected_interval_seconds{namespace="default",integration="github-repo"}"#,
            3600.0,
        ),
        (
            r#"hookwarden_integration_info{namespace="default",integration="datadog-prod",provider="datadog"}"#,
            1.0,
        ),
        ("hookwarden_receiver_routes", 2.0),
        ("hookwarden_journal_fsync_failures_total", 0.0),
    ] {
        assert_eq!(sample(&scrape, series), Some(want), "{series} in\n{scrape}");
    }
    let last = sample(
        &scrape,
        r#"hookwarden_integration_last_delivery_timestamp_seconds{namespace="default",integration="datadog-prod"}"#,
    )
    .expect("last delivery time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        (now - 60.0..=now + 1.0).contains(&last),
        "last delivery {last}, now {now}"
    );
    assert!(
        sample(&scrape, "hookwarden_journal_limit_bytes").is_some_and(|b| b > 0.0),
        "{scrape}"
    );

    let (ok, out) = run(
        Command::new(&promtool).args(["check", "metrics"]),
        Some(&scrape),
    );
    assert!(ok, "promtool check metrics found problems:\n{out}");

    let mut exposed = BTreeSet::new();
    exposed_names(&scrape, &mut exposed);
    registered_names(&mut exposed);
    receiver.stop();

    // Dashboard queries, Grafana's variables replaced by what Grafana would send.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("charts/hookwarden/dashboards/hookwarden.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut exprs: Vec<(String, String)> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr").to_string();
            exprs.push((panel["title"].as_str().unwrap_or("?").to_string(), expr));
        }
    }
    assert!(
        exprs.len() >= 15,
        "the dashboard has its panels: {}",
        exprs.len()
    );
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(q) = var["query"]["query"].as_str() {
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(','))
                .map(|(selector, _)| selector.to_string())
                .expect("label_values(selector, label)");
            exprs.push((format!("variable {}", var["name"]), inner));
        }
    }
    let rules_text =
        std::fs::read_to_string(repo().join("manifests/monitoring/prometheus-rules.yaml"))
            .expect("rules");
    let rules: serde_yaml::Value = serde_yaml::from_str(&rules_text).expect("rules YAML");
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            alerts += 1;
            exprs.push((
                format!("alert {}", rule["alert"].as_str().expect("alert")),
                rule["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    assert_eq!(alerts, 9, "the nine alerts of the README's runbook");
    let mut unknown = Vec::new();
    let mut check = String::from("groups:\n  - name: parse\n    rules:\n");
    for (i, (title, expr)) in exprs.iter().enumerate() {
        for name in referenced_names(expr) {
            if !exposed.contains(&name) {
                unknown.push(format!("{title}: {name}"));
            }
        }
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "1h")
            .replace("$namespace", ".*")
            .replace("$integration", ".*");
        check.push_str(&format!(
            "      - record: parse:expr_{i}\n        expr: {}\n",
            serde_json::Value::String(expr)
        ));
    }
    assert!(
        unknown.is_empty(),
        "queries name series the binary does not export: {unknown:#?}"
    );
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), &check).expect("write");
    let (ok, out) = run(
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(file.path()),
        None,
    );
    assert!(ok, "a query does not parse as PromQL:\n{out}\n{check}");
}

/// A running `prometheus`; killed when dropped.
pub(crate) struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `target` (HOST:PORT) every second as job `job`, evaluating `rules`.
    pub(crate) fn start(bin: &Path, job: &str, target: &str, rules: &Path) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n  scrape_timeout: 900ms\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("config");
        let port = super::cluster_receiver::free_port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(bin.join("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.get("/-/ready").is_none_or(|(code, _)| code != 200) {
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// One GET over HTTP/1.0 (the server closes the connection: no chunked body).
    fn get(&self, path_and_query: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(&self.addr).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET {path_and_query} HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        let (_, body) = response.split_once("\r\n\r\n")?;
        Some((code, body.to_string()))
    }

    fn api(&self, path_and_query: &str) -> serde_json::Value {
        let (code, body) = self.get(path_and_query).expect("prometheus answers");
        assert_eq!(code, 200, "{path_and_query}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    pub(crate) fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let v = self.api(&format!("/api/v1/query?query={encoded}"));
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// `(alertname, integration, state)` of every active alert.
    pub(crate) fn alerts(&self) -> Vec<(String, String, String)> {
        let v = self.api("/api/v1/alerts");
        v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                let label = |k: &str| a["labels"][k].as_str().unwrap_or_default().to_string();
                (
                    label("alertname"),
                    label("integration"),
                    a["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Waits (bounded) until `alert` for `integration` ("" for none) is firing.
    pub(crate) fn wait_firing(&self, alert: &str, integration: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let alerts = self.alerts();
            if alerts
                .iter()
                .any(|(a, i, s)| a == alert && i == integration && s == "firing")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{alert} {integration} did not fire within {within:?}; active: {alerts:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// The chart's alerts, rendered with the test values (short `for:`), as a rule file.
pub(crate) fn rules_with_test_values(dir: &Path) -> Option<PathBuf> {
    let helm = super::chart::helm()?;
    let status = Command::new(repo().join("scripts/render-monitoring.sh"))
        .arg(dir)
        .args(["-f", "tests/monitoring/values.yaml"])
        .env("HOOKWARDEN_HELM", helm)
        .stderr(Stdio::null())
        .status()
        .expect("run scripts/render-monitoring.sh");
    assert!(status.success(), "render-monitoring.sh failed");
    Some(dir.join("prometheus-rules.yaml"))
}

/// A real Prometheus scrapes a standalone receiver: the per-integration series arrive
/// with their labels, and the shipped alerts fire when their condition holds — wrong
/// tokens (HookwardenAuthFailures), an annotated integration that receives nothing
/// (HookwardenIntegrationSilent), and the receiver gone (HookwardenReceiverDown).
#[test]
fn a_real_prometheus_sees_the_series_and_fires_the_shipped_alerts() {
    let Some(bin) = prometheus_bin() else { return };
    let rendered = tempfile::tempdir().expect("tempdir");
    let Some(rules) = rules_with_test_values(rendered.path()) else {
        return;
    };
    let dir = integrations("2s");
    let receiver = Standalone::start_with(dir.path(), &["--metrics-addr", "127.0.0.1:0"]);
    let url = receiver.url("default/datadog-prod").to_string();
    let metrics = receiver.metrics.clone().expect("a Metrics: line");
    let target = metrics
        .strip_prefix("http://")
        .and_then(|m| m.strip_suffix("/metrics"))
        .expect("http://HOST:PORT/metrics")
        .to_string();
    let prometheus = Prometheus::start(&bin, "hookwarden-receiver", &target, &rules);

    // Over a few scrapes: one good delivery and three with a wrong token each round, so
    // the rates over the rule's window see the counters move.
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(6) {
        assert_eq!(
            datadog_with_token(&url, &format!("good-{round}"), TOKEN),
            202
        );
        for i in 0..3 {
            assert_eq!(
                datadog_with_token(&url, &format!("bad-{round}-{i}"), "wrong"),
                401
            );
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(250));
    }

    let accepted = prometheus.query(
        r#"hookwarden_integration_deliveries_total{job="hookwarden-receiver",outcome="accepted"}"#,
    );
    let labels: Vec<(String, String)> = accepted
        .iter()
        .map(|s| {
            (
                s["metric"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                s["metric"]["integration"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert!(
        labels.contains(&("default".into(), "datadog-prod".into()))
            && labels.contains(&("default".into(), "github-repo".into())),
        "one series per integration: {accepted:?}"
    );
    let rejects = prometheus.query(
        r#"hookwarden_integration_rejects_total{namespace="default",integration="datadog-prod",reason="token_mismatch"}"#,
    );
    let value: f64 = rejects
        .first()
        .and_then(|s| s["value"][1].as_str())
        .and_then(|v| v.parse().ok())
        .expect("the rejects series");
    assert!(value >= 3.0, "token_mismatch rejects: {value}");

    prometheus.wait_firing(
        "HookwardenAuthFailures",
        "datadog-prod",
        Duration::from_secs(30),
    );
    prometheus.wait_firing(
        "HookwardenIntegrationSilent",
        "github-repo",
        Duration::from_secs(30),
    );
    // datadog-prod received within its 2 s moments ago; it must not be among the silent
    // ones before its interval has passed — but it will be after, so check only that the
    // silent alert names integrations, never the whole receiver.
    assert!(
        prometheus
            .alerts()
            .iter()
            .filter(|(a, _, _)| a == "HookwardenIntegrationSilent")
            .all(|(_, i, _)| !i.is_empty())
    );
    assert!(
        !prometheus
            .alerts()
            .iter()
            .any(|(a, _, _)| a == "HookwardenReceiverDown"),
        "the receiver is up"
    );

    receiver.crash();
    prometheus.wait_firing("HookwardenReceiverDown", "", Duration::from_secs(30));
}

/// The value of the first sample of an instant query, if any.
pub(crate) fn first_value(result: &[serde_json::Value]) -> Option<f64> {
    result
        .first()
        .and_then(|s| s["value"][1].as_str())
        .and_then(|v| v.parse().ok())
}
