//! The Helm chart starts the binary with flags the binary accepts.
//!
//! The chart spells every flag in one place (`templates/_helpers.tpl`: values → args).
//! These tests render it with the default and the non-default CI values and parse each
//! container's command line with the binary's own `clap` definition, so a renamed or
//! removed flag fails here rather than as a CrashLoopBackOff after `helm install`.
//! `helm` comes from `HOOKWARDEN_HELM` (set by scripts/test.sh) or PATH; without it the
//! tests say so and pass, except under `CI=true`, where a missing helm is a failure.

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use clap::{CommandFactory as _, Parser as _};
use hookwarden::cli::{Cli, Command};
use serde::Deserialize as _;

const RELEASE_NAMESPACE: &str = "hookwarden";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn helm() -> Option<PathBuf> {
    let explicit = std::env::var_os("HOOKWARDEN_HELM").map(PathBuf::from);
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("helm"))
            .find(|p| p.is_file())
    });
    let found = explicit.filter(|p| p.is_file()).or(on_path);
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "helm not found (HOOKWARDEN_HELM or PATH); scripts/install-kube-tools.sh installs it"
        );
        eprintln!(
            "SKIPPED: helm not found (HOOKWARDEN_HELM or PATH); chart command lines not checked"
        );
    }
    found
}

/// `helm template` of the chart with an optional values file, as YAML documents.
fn render(helm: &Path, values: Option<&str>) -> Vec<serde_yaml::Value> {
    let out = template(helm, values, &[]);
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("helm renders valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Runs `helm template` with an optional values file and `--set` assignments.
fn template(helm: &Path, values: Option<&str>, set: &[&str]) -> std::process::Output {
    let mut cmd = Process::new(helm);
    cmd.current_dir(repo())
        .args([
            "template",
            "hookwarden",
            "charts/hookwarden",
            "--namespace",
            RELEASE_NAMESPACE,
        ])
        .args(["--kube-version", "1.34.0"]);
    if let Some(v) = values {
        cmd.args(["-f", v]);
    }
    for assignment in set {
        cmd.args(["--set", assignment]);
    }
    cmd.output().expect("run helm template")
}

/// (component label, args) of every container of every workload.
fn command_lines(docs: &[serde_yaml::Value]) -> Vec<(String, Vec<String>)> {
    let mut lines = Vec::new();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if kind != "Deployment" && kind != "StatefulSet" {
            continue;
        }
        let component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
            .as_str()
            .expect("workloads carry a component label")
            .to_owned();
        let containers = doc["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .expect("workloads have containers");
        for container in containers {
            let args = container["args"]
                .as_sequence()
                .expect("containers have args")
                .iter()
                .map(|a| a.as_str().expect("args are strings"))
                // The kubelet expands $(VAR) from the container's env before exec.
                .map(|a| a.replace("$(POD_NAMESPACE)", RELEASE_NAMESPACE))
                .collect();
            lines.push((component.clone(), args));
        }
    }
    lines
}

/// Whether a subcommand defines any flag yet (a stub `Args {}` cannot be checked).
fn has_flags(subcommand: &str) -> bool {
    Cli::command().find_subcommand(subcommand).is_some_and(|c| {
        c.get_arguments()
            .any(|a| !matches!(a.get_id().as_str(), "help" | "version"))
    })
}

fn parse(args: &[String]) -> Cli {
    let argv = std::iter::once("hookwarden".to_owned()).chain(args.iter().cloned());
    Cli::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("the chart's args {args:?} do not parse:\n{e}"))
}

fn check_values(values: Option<&str>) -> Vec<Cli> {
    let Some(helm) = helm() else {
        return Vec::new();
    };
    let lines = command_lines(&render(&helm, values));
    let components: Vec<&str> = lines.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        components,
        ["controller", "receiver"],
        "one workload per component"
    );
    let mut parsed = Vec::new();
    for (component, args) in &lines {
        assert_eq!(
            args.first(),
            Some(component),
            "the first arg is the subcommand"
        );
        if !has_flags(component) {
            eprintln!(
                "SKIPPED: `hookwarden {component}` defines no flags yet; its chart args are not checked"
            );
            continue;
        }
        let cli = parse(args);
        match (&cli.command, component.as_str()) {
            (Command::Controller(_), "controller") | (Command::Receiver(_), "receiver") => {}
            (other, _) => panic!("{component} workload runs {other:?}"),
        }
        parsed.push(cli);
    }
    parsed
}

#[test]
fn default_values_start_components_with_accepted_flags() {
    for cli in check_values(None) {
        match cli.command {
            Command::Controller(args) => {
                assert_eq!(args.namespace, RELEASE_NAMESPACE);
                assert_eq!(args.metrics_addr.to_string(), "0.0.0.0:9090");
                assert_eq!(
                    args.external_base_url, None,
                    "no public URL is configured by default"
                );
            }
            Command::Receiver(args) => {
                assert_eq!(
                    args.journal_max_bytes,
                    768 << 20,
                    "the journal cap is 75% of the 1Gi emptyDir, not all of it"
                );
                assert_eq!(
                    args.journal_commit_window,
                    hookwarden::receiver::service::DEFAULT_JOURNAL_COMMIT_WINDOW,
                    "the chart's default commit window is the binary's"
                );
                assert_eq!(
                    args.dedup_max_ids,
                    hookwarden::receiver::service::DEDUP_CAPACITY,
                    "the chart's default dedup capacity is the binary's"
                );
                // Issue 18, finding 10: the drain gets what the grace period leaves
                // (60 s − 5 s preStop − 5 s shutdown delay − 5 s to close the journal).
                assert_eq!(
                    args.shutdown_flush_timeout,
                    std::time::Duration::from_secs(45),
                    "the default grace period leaves 45 s of status flush"
                );
            }
            _ => {}
        }
    }
}

/// A grace period too short for the drain to apply the journal is refused at install.
#[test]
fn a_grace_period_without_room_for_the_final_flush_is_refused() {
    let Some(helm) = helm() else {
        return;
    };
    let refused = template(&helm, None, &["receiver.terminationGracePeriodSeconds=20"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("receiver.terminationGracePeriodSeconds"),
        "{stderr}"
    );
    let fits = template(&helm, None, &["receiver.terminationGracePeriodSeconds=25"]);
    let text = String::from_utf8_lossy(&fits.stdout);
    assert!(
        fits.status.success(),
        "{}",
        String::from_utf8_lossy(&fits.stderr)
    );
    assert!(text.contains("--shutdown-flush-timeout=10s"), "{text}");
}

#[test]
fn journal_cap_follows_the_volume_and_an_oversized_cap_is_refused() {
    let Some(helm) = helm() else {
        return;
    };
    let cap = |values: Option<&str>, set: &[&str]| -> u64 {
        let out = template(&helm, values, set);
        assert!(
            out.status.success(),
            "helm template {set:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let flag = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("- --journal-max-bytes="))
            .unwrap_or_else(|| panic!("no --journal-max-bytes for {set:?}"));
        flag.parse().expect("a byte count")
    };
    // StatefulSet mode: 75% of the claim (5Gi in the CI values).
    assert_eq!(
        cap(Some("charts/hookwarden/ci/full-values.yaml"), &[]),
        3840 << 20
    );
    assert_eq!(cap(None, &["receiver.journal.sizeLimit=1.5Gi"]), 1152 << 20);
    assert_eq!(cap(None, &["receiver.journal.maxBytes=700Mi"]), 700 << 20);
    assert_eq!(
        cap(None, &["receiver.journal.maxBytes=524288000"]),
        524_288_000
    );

    let refused = template(&helm, None, &["receiver.journal.maxBytes=1Gi"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("receiver.journal.maxBytes"),
        "a cap as large as the emptyDir must be refused with the value's name: {stderr}"
    );
    // No size limit: an emptyDir without one (not an empty `sizeLimit:`), and no cap
    // passed, so the binary's default applies.
    let unlimited = template(&helm, None, &["receiver.journal.sizeLimit=null"]);
    let text = String::from_utf8_lossy(&unlimited.stdout);
    assert!(unlimited.status.success(), "{text}");
    assert!(
        text.contains("emptyDir: {}") && !text.contains("sizeLimit:"),
        "an unlimited journal volume renders as emptyDir: {{}}:\n{text}"
    );
    assert!(!text.contains("--journal-max-bytes"), "{text}");

    let unreadable = template(&helm, None, &["receiver.journal.sizeLimit=2e9"]);
    let stderr = String::from_utf8_lossy(&unreadable.stderr);
    assert!(
        !unreadable.status.success() && stderr.contains("receiver.journal.sizeLimit"),
        "{stderr}"
    );
}

/// The receiver refuses a commit window above 100 ms at start (a CrashLoop after a
/// successful install); the chart's schema refuses it at install instead.
#[test]
fn commit_windows_the_receiver_would_refuse_are_refused_at_install() {
    let Some(helm) = helm() else {
        return;
    };
    for window in ["0", "100ms", "1.5ms", "400us", "250µs", "100000ns"] {
        let assignment = format!("receiver.journal.commitWindow={window}");
        let out = template(&helm, None, &[assignment.as_str()]);
        assert!(
            out.status.success(),
            "{window}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            hookwarden::receiver::service::parse_commit_window(window).is_ok(),
            "the chart accepts {window}, the receiver does not"
        );
    }
    for window in ["101ms", "100.5ms", "2s", "1m", "100001us", "soon"] {
        let assignment = format!("receiver.journal.commitWindow={window}");
        let out = template(&helm, None, &[assignment.as_str()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("commitWindow"),
            "{window} must be refused with the value's name: {stderr}"
        );
        assert!(
            hookwarden::receiver::service::parse_commit_window(window).is_err(),
            "{window} is refused by the chart only"
        );
    }
}

#[test]
fn non_default_values_reach_the_components() {
    for cli in check_values(Some("charts/hookwarden/ci/full-values.yaml")) {
        if let Command::Receiver(args) = &cli.command {
            assert_eq!(
                args.journal_commit_window,
                std::time::Duration::from_micros(1500)
            );
            assert_eq!(
                args.dedup_max_ids, 2_000_000,
                "a large count is rendered as an integer, not 2e+06"
            );
            let cidrs = |v: &[ipnet::IpNet]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
            assert_eq!(
                cidrs(&args.forward_deny_cidrs),
                ["10.0.0.0/8", "fd00::/8"],
                "receiver.forward.denyCIDRs"
            );
            assert_eq!(
                cidrs(&args.forward_allow_cidrs),
                ["0.0.0.0/0"],
                "receiver.forward.allowCIDRs"
            );
            assert!(!args.forward_allow_loopback, "never from the chart");
        }
        if let Command::Controller(args) = cli.command {
            assert_eq!(
                args.external_base_url.as_deref(),
                Some("https://hooks.example.com")
            );
            assert_eq!(
                args.metrics_addr.to_string(),
                "[::]:9090",
                "bindAddress :: is bracketed"
            );
            assert_eq!(
                args.lease_duration_seconds, 20,
                "extraArgs are passed through"
            );
        }
    }
}
