//! `hookwarden receiver` in a cluster (the API-server emulator) next to the real
//! controller: routes from route Secrets, acknowledged deliveries survive `kill -9`,
//! status catches up after an API outage without a write storm, Degraded after repeated
//! authentication failures, Events on incident opens.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookwarden::crd::WebhookIntegration;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt as _;
use kube::api::{Api, PostParams};
use kube_emulator::{Emulator, Failure, RequestFilter};
use serde_json::Value;

use crate::standalone::{datadog, datadog_raw};

const TOKEN: &str = "example-datadog-token-change-me";
const RECEIVER_SA: &str = "hookwarden-receiver";
const RECEIVER_CALLER: &str = "system:serviceaccount:hookwarden:hookwarden-receiver";

/// Creates the receiver's ServiceAccount, Role(Binding) and ClusterRole(Binding) exactly
/// as `manifests/install.yaml` (the rendered chart) declares them.
async fn install_receiver_rbac(client: &kube::Client) {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/install.yaml"),
    )
    .expect("install.yaml");
    let pp = PostParams::default();
    let ns = "hookwarden";
    let mut created = 0;
    for doc in serde_yaml::Deserializer::from_str(&manifest) {
        let value: Value = serde::Deserialize::deserialize(doc).expect("yaml");
        if value["metadata"]["name"] != RECEIVER_SA {
            continue;
        }
        match value["kind"].as_str().unwrap_or_default() {
            "ServiceAccount" => {
                let o: ServiceAccount = serde_json::from_value(value).expect("sa");
                Api::<ServiceAccount>::namespaced(client.clone(), ns)
                    .create(&pp, &o)
                    .await
                    .expect("create sa");
            }
            "Role" => {
                let o: Role = serde_json::from_value(value).expect("role");
                Api::<Role>::namespaced(client.clone(), ns)
                    .create(&pp, &o)
                    .await
                    .expect("create role");
            }
            "RoleBinding" => {
                let o: RoleBinding = serde_json::from_value(value).expect("rolebinding");
                Api::<RoleBinding>::namespaced(client.clone(), ns)
                    .create(&pp, &o)
                    .await
                    .expect("create rolebinding");
            }
            "ClusterRole" => {
                let o: ClusterRole = serde_json::from_value(value).expect("clusterrole");
                Api::<ClusterRole>::all(client.clone())
                    .create(&pp, &o)
                    .await
                    .expect("create clusterrole");
            }
            "ClusterRoleBinding" => {
                let o: ClusterRoleBinding =
                    serde_json::from_value(value).expect("clusterrolebinding");
                Api::<ClusterRoleBinding>::all(client.clone())
                    .create(&pp, &o)
                    .await
                    .expect("create clusterrolebinding");
            }
            _ => continue,
        }
        created += 1;
    }
    assert_eq!(
        created, 5,
        "the receiver's ServiceAccount and RBAC in manifests/install.yaml"
    );
}

/// Requests of the receivers that RBAC refused.
fn denied(emu: &Emulator) -> Vec<String> {
    emu.requests()
        .into_iter()
        .filter(|r| r.caller == RECEIVER_CALLER && r.code == Some(403))
        .map(|r| format!("{r:?}"))
        .collect()
}
const TEST_LIMIT: Duration = Duration::from_secs(150);

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port for a process the test starts next (and may restart on the same port
/// after a kill).
///
/// Taken below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`, 32768–60999
/// by default), not from `bind(…:0)`: a port from there is free only until another
/// socket in this busy binary takes it first (any listener on port 0, or a `connect()`
/// once its preferred even ports run short), between the check and the child's bind or
/// while a killed receiver is restarted. The child then cannot bind and the test waits on
/// a receiver that never serves. Below the range a port is only ever taken by an explicit
/// bind; this process walks the range from a pid-derived offset (another process using
/// this helper starts elsewhere) and hands each port out once, after checking it binds.
pub(crate) fn free_port() -> u16 {
    const LOW: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .min(u32::from(u16::MAX));
    assert!(
        high > LOW + 1_000,
        "the ephemeral port range starts at {high}: no room below it for test ports"
    );
    let span = high - LOW;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + (start + n) % span).expect("below 65536");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{high}");
}

fn start_receiver(kubeconfig: &Path, journal: &Path, port: u16, log: &Path) -> Process {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_hookwarden"))
        .args([
            "receiver",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--namespace",
            "hookwarden",
            "--status-interval",
            "200ms",
            "--log-format",
            "text",
        ])
        .arg("--journal-dir")
        .arg(journal)
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAME", "receiver-0")
        .stdout(Stdio::from(log.try_clone().expect("log clone")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start hookwarden receiver");
    Process(child)
}

async fn eventually(what: &str, limit: Duration, log: &Path, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}\nlogs:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn incident_ids(obj: &Value) -> BTreeSet<String> {
    ["recent", "tracked"]
        .iter()
        .flat_map(|l| {
            obj["status"]["incidents"][l]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|i| i["id"].as_str().map(str::to_string))
        .collect()
}

pub(crate) fn accepted(obj: &Value) -> i64 {
    obj["status"]["deliveries"]["accepted"]
        .as_i64()
        .unwrap_or(0)
}

fn degraded(obj: &Value) -> Option<(String, String)> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Degraded")
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

/// An emulated cluster with the CRD, the `hookwarden` namespace, the receiver's RBAC, a
/// Datadog integration with its token Secret, and the real controller running. Returns
/// the receiver's kubeconfig (its ServiceAccount).
async fn cluster() -> (Emulator, tempfile::TempDir, std::path::PathBuf, Process) {
    let emu = Emulator::start().await.expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("admin.kubeconfig");
    std::fs::write(&kubeconfig, emu.kubeconfig()).expect("kubeconfig");
    // Receivers run as their ServiceAccount, with exactly the chart's RBAC.
    let receiver_kubeconfig = dir.path().join("receiver.kubeconfig");
    std::fs::write(
        &receiver_kubeconfig,
        emu.kubeconfig_for_service_account("hookwarden", RECEIVER_SA),
    )
    .expect("receiver kubeconfig");
    let client = emu.client().await.expect("client");
    let pp = PostParams::default();
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&pp, &WebhookIntegration::crd())
        .await
        .expect("CRD");
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "hookwarden"}}))
            .expect("ns");
    Api::<Namespace>::all(client.clone())
        .create(&pp, &ns)
        .await
        .expect("namespace");
    install_receiver_rbac(&client).await;
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "datadog-webhook", "namespace": "default"},
        "stringData": {"token": TOKEN}
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), "default")
        .create(&pp, &secret)
        .await
        .expect("secret");
    let whi: WebhookIntegration = serde_json::from_value(serde_json::json!({
        "apiVersion": "hookwarden.dev/v1alpha1", "kind": "WebhookIntegration",
        "metadata": {"name": "datadog-prod", "namespace": "default"},
        "spec": {"provider": "datadog", "secretRef": {"name": "datadog-webhook", "key": "token"}}
    }))
    .expect("whi");
    Api::<WebhookIntegration>::namespaced(client.clone(), "default")
        .create(&pp, &whi)
        .await
        .expect("whi");

    let controller_log = std::fs::File::create(dir.path().join("controller.log")).expect("log");
    let controller = Process(
        Command::new(env!("CARGO_BIN_EXE_hookwarden"))
            .args([
                "controller",
                "--metrics-addr",
                "127.0.0.1:0",
                "--log-format",
                "text",
                "--namespace",
                "hookwarden",
            ])
            .args([
                "--identity",
                "controller-0",
                "--lease-duration-seconds",
                "5",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .stdout(Stdio::from(controller_log.try_clone().expect("clone")))
            .stderr(Stdio::from(controller_log))
            .spawn()
            .expect("start controller"),
    );
    (emu, dir, receiver_kubeconfig, controller)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_keeps_acknowledged_deliveries_through_kill_9_and_an_api_outage() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (emu, dir, kubeconfig, _controller) = cluster().await;
        let log = dir.path().join("processes.log");
        let port = free_port();
        let journal = dir.path().join("journal");
        let receiver = start_receiver(&kubeconfig, &journal, port, &log);

        let object = || {
            emu.object(
                "webhookintegrations.hookwarden.dev",
                "default",
                "datadog-prod",
            )
            .unwrap_or(Value::Null)
        };
        eventually(
            "the controller to assign a path",
            Duration::from_secs(30),
            &log,
            || object()["status"]["path"].is_string(),
        )
        .await;
        let url = format!(
            "http://127.0.0.1:{port}{}",
            object()["status"]["path"].as_str().unwrap_or_default()
        );
        let probe = url.clone();
        eventually(
            "the receiver to serve the route",
            Duration::from_secs(30),
            &log,
            move || datadog(&probe, "probe", "probe", "Recovered") == Some(202),
        )
        .await;

        // A burst from 8 senders; kill -9 once 100 are acknowledged.
        let acked: Arc<Mutex<Vec<usize>>> = Arc::default();
        let next = Arc::new(AtomicUsize::new(0));
        let senders: Vec<_> = (0..8)
            .map(|_| {
                let (acked, next, url) = (acked.clone(), next.clone(), url.clone());
                std::thread::spawn(move || {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= 1000 {
                            return;
                        }
                        match datadog(
                            &url,
                            &format!("evt-{i}"),
                            &format!("k-{}", i % 25),
                            "Triggered",
                        ) {
                            Some(202) => acked.lock().expect("lock").push(i),
                            Some(_) => {}
                            None => return,
                        }
                    }
                })
            })
            .collect();
        eventually(
            "100 acknowledged deliveries",
            Duration::from_secs(30),
            &log,
            || acked.lock().expect("lock").len() >= 100,
        )
        .await;
        drop(receiver); // SIGKILL
        for s in senders {
            s.join().expect("sender");
        }
        let acked = acked.lock().expect("lock").clone();
        assert!(acked.len() < 1000, "the kill should land mid-burst");
        let keys: BTreeSet<String> = acked.iter().map(|i| format!("k-{}", i % 25)).collect();

        let mut receiver = start_receiver(&kubeconfig, &journal, port, &log);
        // Replay can bring the status up to date before the restarted receiver has listed
        // its routes; until then it answers 503 (not 404), so wait for /readyz before
        // sending again.
        let ready = format!("http://127.0.0.1:{port}/readyz");
        eventually(
            "the restarted receiver to list its routes",
            Duration::from_secs(30),
            &log,
            || crate::standalone::get_body(&ready).is_some(),
        )
        .await;
        let want = acked.len() as i64 + 1; // + the probe
        eventually(
            "every acknowledged delivery on the status",
            Duration::from_secs(30),
            &log,
            || {
                let o = object();
                accepted(&o) >= want && keys.is_subset(&incident_ids(&o))
            },
        )
        .await;

        // API outage on status writes for 4 s while deliveries keep coming.
        let before = accepted(&object());
        let status_filter = || {
            RequestFilter::new()
                .resource("webhookintegrations")
                .subresource("status")
                .caller(RECEIVER_CALLER)
        };
        let writes_before = emu.count(&status_filter());
        emu.fail(
            Failure::status(503)
                .for_duration(Duration::from_secs(4))
                .matching(
                    RequestFilter::new()
                        .resource("webhookintegrations")
                        .subresource("status"),
                ),
        );
        let mut sent = 0;
        for i in 0..40 {
            assert_eq!(
                datadog(&url, &format!("outage-{i}"), "outage", "Triggered"),
                Some(202),
                "deliveries are acknowledged during an API outage"
            );
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let during = emu.count(&status_filter()) - writes_before;
        assert!(
            (1..=30).contains(&during),
            "{during} status requests during a 4 s outage at a 200 ms interval: none (no retry) or a write storm"
        );
        eventually(
            "the status to catch up after the outage",
            Duration::from_secs(40),
            &log,
            || accepted(&object()) >= before + sent,
        )
        .await;

        // Many authentication failures: Degraded=True (SignatureFailures); a success clears it.
        for _ in 0..25 {
            let (code, _) = crate::standalone::post_raw(
                &url,
                &[
                    ("Content-Type", "application/json"),
                    ("Authorization", "Bearer wrong"),
                ],
                "{}",
            )
            .expect("answered");
            assert_eq!(code, 401);
        }
        eventually("Degraded=True", Duration::from_secs(30), &log, || {
            degraded(&object()) == Some(("True".into(), "SignatureFailures".into()))
        })
        .await;
        assert_eq!(
            object()["status"]["deliveries"]["lastRejectReason"]
                .as_str()
                .map(|r| !r.is_empty()),
            Some(true)
        );
        assert_eq!(
            datadog_raw(&url, "after-failures", "x", "Triggered").map(|(c, _)| c),
            Some(202)
        );
        eventually(
            "Degraded=False after a success",
            Duration::from_secs(30),
            &log,
            || degraded(&object()).is_some_and(|(s, _)| s == "False"),
        )
        .await;

        // The controller's conditions survive the receiver's writes (separate field managers).
        let ready = object()["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            ready
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True"),
            "{ready:?}"
        );
        // Incident opens were announced as Events on the integration.
        let events = emu.objects("events");
        assert!(
            events.iter().any(|e| e["reason"] == "IncidentOpened"
                && (e["regarding"]["name"] == "datadog-prod"
                    || e["involvedObject"]["name"] == "datadog-prod")),
            "no IncidentOpened event among {} events",
            events.len()
        );
        assert!(
            denied(&emu).is_empty(),
            "the chart's RBAC refused: {:?}",
            denied(&emu)
        );

        // SIGTERM right after a delivery: the receiver stops accepting, drains, flushes the
        // status and closes the journal before it exits.
        let before = accepted(&object());
        assert_eq!(datadog(&url, "last-before-sigterm", "x", "Triggered"), Some(202));
        let pid = receiver.0.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = receiver.0.try_wait().expect("wait") {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "the receiver did not stop on SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let logs = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(status.success(), "receiver exited with {status}\nlogs:\n{logs}");
        assert_eq!(
            accepted(&object()),
            before + 1,
            "the final flush wrote the last delivery\nstatus: {:#}\nlogs:\n{logs}",
            object()["status"]
        );
        assert!(!logs.contains("did not close cleanly") && !logs.contains("still in use"), "{logs}");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_receiver_replicas_converge_on_one_status() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (emu, dir, kubeconfig, _controller) = cluster().await;
        let log = dir.path().join("processes.log");
        let ports = [free_port(), free_port()];
        let _replicas: Vec<Process> = ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                start_receiver(
                    &kubeconfig,
                    &dir.path().join(format!("journal-{i}")),
                    *port,
                    &log,
                )
            })
            .collect();
        let object = || {
            emu.object(
                "webhookintegrations.hookwarden.dev",
                "default",
                "datadog-prod",
            )
            .unwrap_or(Value::Null)
        };
        eventually(
            "the controller to assign a path",
            Duration::from_secs(30),
            &log,
            || object()["status"]["path"].is_string(),
        )
        .await;
        let path = object()["status"]["path"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let urls: Vec<String> = ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}{path}"))
            .collect();
        for (i, url) in urls.iter().enumerate() {
            let probe = url.clone();
            eventually(
                "each replica to serve the route",
                Duration::from_secs(30),
                &log,
                move || datadog(&probe, &format!("probe-{i}"), "shared", "Triggered") == Some(202),
            )
            .await;
        }
        // Each replica sees half of the deliveries, interleaved, for overlapping incidents;
        // the shared incident's recovery goes to replica 1, later than its triggers.
        for i in 0..60 {
            let url = &urls[i % 2];
            assert_eq!(
                datadog(url, &format!("d-{i}"), &format!("k-{}", i % 6), "Triggered"),
                Some(202)
            );
        }
        assert_eq!(
            datadog(&urls[1], "resolve-shared", "shared", "Recovered"),
            Some(202)
        );
        eventually(
            "both replicas' counts and incidents on one status",
            Duration::from_secs(30),
            &log,
            || {
                let o = object();
                let states: Vec<(String, String)> = ["recent", "tracked"]
                    .iter()
                    .flat_map(|l| {
                        o["status"]["incidents"][l]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                    })
                    .map(|i| {
                        (
                            i["id"].as_str().unwrap_or_default().to_string(),
                            i["state"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect();
                accepted(&o) == 63
                    && o["status"]["incidents"]["open"] == 6
                    && states.contains(&("shared".to_string(), "resolved".to_string()))
                    && (0..6).all(|k| states.contains(&(format!("k-{k}"), "open".to_string())))
            },
        )
        .await;
        // And it stays that way: neither replica overwrites the other with its own view.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let o = object();
        assert_eq!(
            (accepted(&o), o["status"]["incidents"]["open"].as_i64()),
            (63, Some(6)),
            "{}",
            o["status"]
        );
        assert!(
            denied(&emu).is_empty(),
            "the chart's RBAC refused: {:?}",
            denied(&emu)
        );
    })
    .await
    .expect("test finished in time");
}
