//! Watches broken under a running controller and receiver: the API server goes away (a real
//! kube-apiserver is stopped and started again; on the emulator every open watch ends with
//! `410 Gone`, the history is forgotten and the components' requests fail for a while), and
//! integrations created, changed and deleted around the outage must all be acted on exactly
//! once: Ready, the route served, one route Secret per integration, the generated Secret
//! garbage-collected, and a delivery accepted while the API was away counted on the status.
//!
//! On a real cluster the restart needs to be told how: `HOOKWARDEN_REAL_APISERVER_RESTART`
//! names the script that starts the local kube-apiserver (e.g. `/work/realk8s/start.sh`, see
//! docs/emulator.md), and the server's pid is read from `HOOKWARDEN_REAL_APISERVER_PIDFILE`
//! (default: `kube-apiserver.pid` next to that script). `HOOKWARDEN_REAL_ETCD=http://127.0.0.1:2379`
//! also compacts etcd while the server is down, so no watch can resume from an old
//! resourceVersion. Without `HOOKWARDEN_REAL_APISERVER_RESTART` the scenario runs without
//! the outage and says so.

use super::*;

/// Its generated Secret is garbage-collected when it is deleted after the outage.
const GENERATED: &str = "restart-generated";
/// Created while the watches are broken; references a Secret made by the test.
const CREATED: &str = "restart-created";
const CREATED_SECRET: &str = "restart-created-token";
const CREATED_TOKEN: &str = "restart-created-token-0123456789";
const OUTAGE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_broken_by_an_api_server_outage_resume_without_losing_or_repeating_work() {
    tokio::time::timeout(SCENARIO_LIMIT, restart_scenario(Cluster::emulated().await))
        .await
        .expect("test finished in time");
}

/// The same against a real cluster, with a real restart of kube-apiserver when
/// `HOOKWARDEN_REAL_APISERVER_RESTART` says how (module docs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: set KUBECONFIG and pass --ignored"]
async fn real_cluster_watches_broken_by_an_api_server_restart_resume_without_losing_or_repeating_work()
 {
    let _one_at_a_time = REAL_CLUSTER.lock().await;
    tokio::time::timeout(SCENARIO_LIMIT, restart_scenario(Cluster::real().await))
        .await
        .expect("test finished in time");
}

/// How the API server goes away and comes back.
enum Outage {
    /// Watches end with 410 Gone, history is forgotten, the components get 503s.
    Emulated,
    /// kube-apiserver stopped by its pid and started again by `start`.
    Restart {
        start: PathBuf,
        pid_file: PathBuf,
        etcd: Option<String>,
    },
    /// A real cluster the test was not told how to restart.
    Skipped(&'static str),
}

impl Outage {
    fn for_cluster(cluster: &Cluster) -> Outage {
        if cluster.emu.is_some() {
            return Outage::Emulated;
        }
        let Some(start) = std::env::var_os("HOOKWARDEN_REAL_APISERVER_RESTART")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
        else {
            return Outage::Skipped(
                "HOOKWARDEN_REAL_APISERVER_RESTART is not set: the test restarts only a local kube-apiserver it is told how to start",
            );
        };
        let pid_file = std::env::var_os("HOOKWARDEN_REAL_APISERVER_PIDFILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| start.with_file_name("kube-apiserver.pid"));
        let etcd = std::env::var("HOOKWARDEN_REAL_ETCD")
            .ok()
            .filter(|v| !v.is_empty());
        Outage::Restart {
            start,
            pid_file,
            etcd,
        }
    }
}

/// The pid in `pid_file`, if it is a running kube-apiserver (never anything else).
fn apiserver_pid(pid_file: &Path) -> u32 {
    let text = std::fs::read_to_string(pid_file)
        .unwrap_or_else(|e| panic!("read {}: {e}", pid_file.display()));
    let pid: u32 = text
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: not a pid: {e}", pid_file.display()));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    assert!(
        argv0.ends_with(b"kube-apiserver"),
        "pid {pid} from {} is not a running kube-apiserver",
        pid_file.display()
    );
    pid
}

/// A POST of `body` to etcd's JSON gateway on 127.0.0.1: the response body.
async fn etcd_post(base: &str, path: &str, body: &str) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base
        .strip_prefix("http://")
        .unwrap_or(base)
        .trim_end_matches('/');
    assert!(
        addr.starts_with("127.0.0.1:"),
        "HOOKWARDEN_REAL_ETCD must be http://127.0.0.1:PORT, not {base}"
    );
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to etcd");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write to etcd");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read from etcd");
    assert!(response.starts_with("HTTP/1.1 200"), "etcd: {response}");
    let (_, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("etcd answered {body}: {e}"))
}

/// Compacts etcd up to its current revision: afterwards nothing older can be watched.
async fn compact_etcd(base: &str) -> i64 {
    // The key "\0" (base64 AA==) does not exist; the header carries the revision.
    let range = etcd_post(base, "/v3/kv/range", r#"{"key":"AA=="}"#).await;
    let revision: i64 = range["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("etcd revision in {range}"));
    etcd_post(
        base,
        "/v3/kv/compaction",
        &format!(r#"{{"revision":"{revision}","physical":true}}"#),
    )
    .await;
    revision
}

async fn api_reachable(cluster: &Cluster) -> bool {
    cluster.client.apiserver_version().await.is_ok()
}

/// Route Secrets of this scenario's integrations, as `namespace/name`, sorted (duplicates
/// kept; a real cluster may serve other integrations too).
async fn route_names(cluster: &Cluster, namespace: &str) -> Vec<String> {
    let mut names: Vec<String> = cluster
        .list(&secret_resource(), namespace, "hookwarden.dev/route=true")
        .await
        .iter()
        .filter_map(|s| s["metadata"]["annotations"]["hookwarden.dev/integration"].as_str())
        .filter(|name| {
            [GENERATED, CREATED]
                .map(|n| format!("default/{n}"))
                .contains(&name.to_string())
        })
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

async fn restart_scenario(cluster: Cluster) {
    let outage = Outage::for_cluster(&cluster);
    let ids = install(&cluster).await;
    let namespace = ids.namespace.clone();
    for name in [GENERATED, CREATED] {
        remove_integration(&cluster, "default", name).await;
    }
    let (ok, _, stderr) = cluster
        .kubectl(&[
            "delete",
            "secret",
            CREATED_SECRET,
            "-n",
            "default",
            "--ignore-not-found",
        ])
        .await;
    assert!(ok, "{stderr}");
    cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            CREATED_SECRET,
            "-n",
            "default",
            &format!("--from-literal=token={CREATED_TOKEN}"),
        ])
        .await;
    cluster
        .apply(
            "generated.yaml",
            &format!("apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata:\n  name: {GENERATED}\n  namespace: default\nspec:\n  provider: datadog\n"),
        )
        .await;

    let controller = start_controller(&cluster, &ids);
    let receiver = start_receiver(&cluster, &ids, 0);
    let logs = || {
        format!(
            "--- controller ---\n{}\n--- receiver ---\n{}",
            controller.log(),
            receiver.process.log()
        )
    };
    let whi = |name: &'static str| {
        let cluster = &cluster;
        async move {
            cluster
                .get(&whi_resource(), "default", name)
                .await
                .unwrap_or(Value::Null)
        }
    };
    let url = |obj: &Value| {
        format!(
            "http://127.0.0.1:{}{}",
            receiver.port,
            obj["status"]["path"].as_str().unwrap_or_default()
        )
    };
    // Until the receiver has the route it answers 404 (503 before its first list).
    let accepted = |url: String, secret: String, id: &'static str| async move {
        let (ok, line) = send_test(&url, &secret, &["--id", id]).await;
        assert!(
            ok || line.starts_with("404") || line.starts_with("503"),
            "send-test: {line}"
        );
        ok && line.starts_with("202")
    };

    // Before: served, with its generated Secret.
    wait_for(
        "the generated integration Ready",
        Duration::from_secs(60),
        &logs,
        || async {
            let o = whi(GENERATED).await;
            condition(&o, "Ready").as_deref() == Some("True") && o["status"]["path"].is_string()
        },
    )
    .await;
    let before = whi(GENERATED).await;
    let generated_url = url(&before);
    let secret_name = before["status"]["secretName"]
        .as_str()
        .expect("status.secretName")
        .to_string();
    let secret = cluster
        .get(&secret_resource(), "default", &secret_name)
        .await
        .expect("generated Secret");
    use base64::Engine as _;
    let generated_secret = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(secret["data"]["secret"].as_str().expect("data.secret"))
            .expect("base64"),
    )
    .expect("UTF-8 secret");
    wait_for(
        "the receiver accepts a delivery",
        Duration::from_secs(60),
        &logs,
        || accepted(generated_url.clone(), generated_secret.clone(), "before"),
    )
    .await;

    // The outage. Deliveries keep being accepted from the routes the receiver holds.
    match &outage {
        Outage::Emulated => {
            let emu = cluster.emu.as_ref().expect("emulator");
            for caller in [&ids.controller_caller, &ids.receiver_caller] {
                emu.fail(
                    kube_emulator::Failure::status(503)
                        .for_duration(OUTAGE)
                        .matching(RequestFilter::new().caller(caller)),
                );
            }
            emu.expire_watches();
        }
        Outage::Restart { pid_file, etcd, .. } => {
            let pid = apiserver_pid(pid_file);
            let out = tokio::task::spawn_blocking(move || {
                Command::new("kill").arg(pid.to_string()).output()
            })
            .await
            .expect("join")
            .expect("run kill");
            assert!(
                out.status.success(),
                "kill {pid}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // It stops listening at once, but the kube-apiserver built here can then hang in
            // its storage-stats loop instead of exiting: SIGKILL what is left after 15 s
            // (the pid was checked to be kube-apiserver), so the restart finds it gone.
            let gone = || !Path::new(&format!("/proc/{pid}")).exists();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while !gone() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if !gone() {
                eprintln!(
                    "watch restart: kube-apiserver {pid} did not exit after SIGTERM; SIGKILL"
                );
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            wait_for(
                "kube-apiserver stopped",
                Duration::from_secs(15),
                &logs,
                || async { gone() },
            )
            .await;
            assert!(
                !api_reachable(&cluster).await,
                "the API server still answers"
            );
            if let Some(etcd) = etcd {
                let revision = compact_etcd(etcd).await;
                eprintln!("watch restart: etcd compacted at revision {revision}");
            }
        }
        Outage::Skipped(why) => eprintln!("watch restart: skipped the restart part: {why}"),
    }
    let (ok, line) = send_test(&generated_url, &generated_secret, &["--id", "during"]).await;
    assert!(
        ok && line.starts_with("202"),
        "a delivery during the outage: {line}"
    );
    if let Outage::Restart { start, .. } = &outage {
        let start = start.clone();
        let out = tokio::task::spawn_blocking(move || Command::new(&start).output())
            .await
            .expect("join")
            .expect("run the restart script");
        assert!(
            out.status.success(),
            "restart script: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for(
            "kube-apiserver back",
            Duration::from_secs(120),
            &logs,
            || api_reachable(&cluster),
        )
        .await;
    }

    // Right after (on the emulator: while the components' requests still fail): one
    // integration created, one changed. Only a relist can tell the components.
    cluster
        .apply(
            "created.yaml",
            &format!("apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata:\n  name: {CREATED}\n  namespace: default\nspec:\n  provider: datadog\n  secretRef:\n    name: {CREATED_SECRET}\n    key: token\n"),
        )
        .await;
    cluster
        .kubectl_ok(&[
            "patch",
            "whi",
            GENERATED,
            "-n",
            "default",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"limits":{"requestsPerSecond":40,"burst":80}}}"#,
        ])
        .await;

    wait_for(
        "the created integration Ready and served, the change observed",
        Duration::from_secs(90),
        &logs,
        || async {
            let created = whi(CREATED).await;
            let changed = whi(GENERATED).await;
            condition(&created, "Ready").as_deref() == Some("True")
                && created["status"]["path"].is_string()
                && changed["status"]["observedGeneration"] == changed["metadata"]["generation"]
                && changed["metadata"]["generation"] == 2
                && accepted(url(&created), CREATED_TOKEN.to_string(), "created").await
        },
    )
    .await;
    assert_eq!(
        whi(GENERATED).await["status"]["path"],
        before["status"]["path"],
        "the path is stable across the outage"
    );
    assert_eq!(
        route_names(&cluster, &namespace).await,
        [format!("default/{CREATED}"), format!("default/{GENERATED}")],
        "one route Secret per integration"
    );
    // Nothing lost, nothing counted twice: the deliveries before and during the outage,
    // and the one to the created integration.
    wait_for(
        "the counters of every accepted delivery on the status, once",
        Duration::from_secs(60),
        &logs,
        || async {
            counter(&whi(GENERATED).await, "accepted") == 2
                && counter(&whi(CREATED).await, "accepted") == 1
        },
    )
    .await;

    // Deleted after the outage: the route goes from the receiver, the generated Secret is
    // garbage-collected (by the controller-manager on a real cluster).
    cluster
        .kubectl_ok(&["delete", "whi", GENERATED, "-n", "default", "--wait=false"])
        .await;
    wait_for(
        "the deleted integration, its route and its generated Secret gone",
        Duration::from_secs(90),
        &logs,
        || async {
            cluster
                .get(&whi_resource(), "default", GENERATED)
                .await
                .is_none()
                && route_names(&cluster, &namespace).await == [format!("default/{CREATED}")]
                && cluster
                    .get(&secret_resource(), "default", &secret_name)
                    .await
                    .is_none()
        },
    )
    .await;
    wait_for(
        "the receiver stops serving the deleted route",
        Duration::from_secs(30),
        &logs,
        || async {
            let (_, line) = send_test(&generated_url, &generated_secret, &["--id", "after"]).await;
            line.starts_with("404")
        },
    )
    .await;
    assert_eq!(
        counter(&whi(CREATED).await, "accepted"),
        1,
        "the created integration's counter after the delete"
    );

    if let Some(emu) = &cluster.emu {
        let denied: Vec<_> = emu
            .requests()
            .into_iter()
            .filter(|r| {
                (r.caller == ids.receiver_caller || r.caller == ids.controller_caller)
                    && r.code == Some(403)
            })
            .collect();
        assert!(denied.is_empty(), "the chart's RBAC refused: {denied:?}");
    }
    assert!(!logs().contains("panicked"), "{}", logs());

    // Leave the cluster as found (the controller still runs to remove the finalizer).
    cluster
        .kubectl_ok(&["delete", "whi", CREATED, "-n", "default", "--wait=true"])
        .await;
    cluster
        .kubectl_ok(&["delete", "secret", CREATED_SECRET, "-n", "default"])
        .await;
}
