//! End to end through the API-server emulator: the real `hookwarden controller` binary and the
//! real `kubectl`, the way a platform team meets the product. (The receiver scenarios join here
//! once `hookwarden receiver` serves routes from the cluster.)
//!
//! When the repository carries the rendered install manifest (`manifests/install.yaml`), the
//! controller runs as its ServiceAccount with exactly the RBAC that manifest grants; otherwise
//! with the admin token.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube_emulator::{Emulator, RequestFilter};
use serde_json::Value;

const CRD: &str = include_str!("../../crds/webhookintegrations.yaml");
const TEST_LIMIT: Duration = Duration::from_secs(120);

fn kubectl_binary() -> PathBuf {
    if let Ok(path) = std::env::var("HOOKWARDEN_KUBECTL") {
        return PathBuf::from(path);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-kube-tools.sh");
    let out = Command::new("bash")
        .arg(script)
        .output()
        .expect("run scripts/install-kube-tools.sh");
    assert!(
        out.status.success(),
        "install-kube-tools.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("kubectl")
}

/// A child process killed when the test ends, whatever happens.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Already exited is fine.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    emu: Emulator,
    dir: tempfile::TempDir,
    kubectl: PathBuf,
}

impl Cluster {
    async fn start() -> Cluster {
        let emu = Emulator::start().await.expect("start emulator");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("admin.kubeconfig"), emu.kubeconfig()).expect("kubeconfig");
        Cluster {
            emu,
            dir,
            kubectl: kubectl_binary(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg("--kubeconfig")
            .arg(self.path("admin.kubeconfig"))
            .arg("--cache-dir")
            .arg(self.path("cache"))
            .arg("--request-timeout=20s")
            .args(args)
            .env_remove("KUBECONFIG");
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("join")
            .expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn kubectl_ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.kubectl(args).await;
        assert!(ok, "kubectl {args:?} failed:\n{stdout}\n{stderr}");
        stdout
    }

    async fn apply(&self, name: &str, yaml: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, yaml).expect("manifest");
        self.kubectl_ok(&["apply", "-f", &path.to_string_lossy()])
            .await
    }
}

/// The controller's ServiceAccount and RBAC from the rendered install manifest, if present:
/// (namespace, service account, YAML of the RBAC objects).
fn install_rbac(manifest: &Path) -> Option<(String, String, String)> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let mut keep = Vec::new();
    let mut controller_sa = None;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let Ok(value) = <Value as serde::Deserialize>::deserialize(doc) else {
            continue;
        };
        let kind = value["kind"].as_str().unwrap_or_default();
        let name = value["metadata"]["name"].as_str().unwrap_or_default();
        if kind == "Deployment" && name.contains("controller") {
            let ns = value["metadata"]["namespace"]
                .as_str()
                .unwrap_or("hookwarden")
                .to_string();
            let sa = value["spec"]["template"]["spec"]["serviceAccountName"]
                .as_str()?
                .to_string();
            controller_sa = Some((ns, sa));
        }
        if matches!(
            kind,
            "Namespace"
                | "ServiceAccount"
                | "ClusterRole"
                | "ClusterRoleBinding"
                | "Role"
                | "RoleBinding"
        ) {
            keep.push(serde_yaml::to_string(&value).ok()?);
        }
    }
    let (ns, sa) = controller_sa?;
    Some((ns, sa, keep.join("---\n")))
}

async fn wait_for(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> bool,
    logs: &dyn Fn() -> String,
) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}\ncontroller log:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn condition(obj: &Value, type_: &str) -> Option<String> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_serves_an_integration_from_apply_to_delete() {
    tokio::time::timeout(TEST_LIMIT, async {
        let cluster = Cluster::start().await;
        let emu = &cluster.emu;
        cluster.apply("crd.yaml", CRD).await;

        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/install.yaml");
        let (namespace, kubeconfig, caller) = match install_rbac(&manifest) {
            Some((ns, sa, rbac)) => {
                cluster.apply("rbac.yaml", &rbac).await;
                (ns.clone(), emu.kubeconfig_for_service_account(&ns, &sa), format!("system:serviceaccount:{ns}:{sa}"))
            }
            None => {
                cluster.apply("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: hookwarden\n").await;
                ("hookwarden".to_string(), emu.kubeconfig(), "kubernetes-admin".to_string())
            }
        };
        let kubeconfig_path = cluster.path("controller.kubeconfig");
        std::fs::write(&kubeconfig_path, kubeconfig).expect("controller kubeconfig");

        cluster
            .apply("whi.yaml", "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata:\n  name: datadog-prod\n  namespace: default\nspec:\n  provider: datadog\n")
            .await;

        let log = cluster.path("controller.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_hookwarden"))
            .args(["controller", "--metrics-addr", "127.0.0.1:0", "--external-base-url", "https://hooks.example.com", "--log-format", "text", "--namespace", &namespace, "--identity", "controller-0", "--lease-duration-seconds", "5"])
            .env("KUBECONFIG", &kubeconfig_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log_file.try_clone().expect("log clone")))
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("start hookwarden controller");
        let controller = Process { child, log };
        let logs = || controller.log();

        // Route appears: Ready, URL, generated Secret owned by the integration, route Secret.
        let whi = || emu.object("webhookintegrations.hookwarden.dev", "default", "datadog-prod").unwrap_or(Value::Null);
        wait_for("Ready=True", Duration::from_secs(20), || condition(&whi(), "Ready").as_deref() == Some("True"), &logs).await;
        let obj = whi();
        let url = obj["status"]["url"].as_str().unwrap_or_default().to_string();
        assert!(url.starts_with("https://hooks.example.com/hooks/"), "{obj}");
        assert_eq!(obj["status"]["observedGeneration"], obj["metadata"]["generation"]);
        let wide = cluster.kubectl_ok(&["get", "whi", "-o", "wide"]).await;
        let row: Vec<&str> = wide.lines().nth(1).unwrap_or_default().split_whitespace().collect();
        assert_eq!(&row[..3], ["datadog-prod", "datadog", "True"], "{wide}");
        assert!(wide.contains(&url), "{wide}");

        let routes: Vec<Value> = emu
            .objects("secrets")
            .into_iter()
            .filter(|s| s["metadata"]["namespace"] == namespace.as_str() && s["metadata"]["labels"]["hookwarden.dev/route"] == "true")
            .collect();
        assert_eq!(routes.len(), 1, "one route Secret in {namespace}");
        if let Some(generated) = obj["status"]["secretName"].as_str() {
            let secret = emu.object("secrets", "default", generated).expect("generated secret");
            assert_eq!(secret["metadata"]["ownerReferences"][0]["uid"], obj["metadata"]["uid"], "generated Secret owned by the integration");
        }
        assert!(emu.object("leases.coordination.k8s.io", &namespace, "hookwarden-controller").is_some(), "leader Lease taken");
        assert!(emu.count(&RequestFilter::new().caller(&caller)) > 0, "the controller called as {caller}");
        let denied: Vec<_> = emu.requests().into_iter().filter(|r| r.caller == caller && r.code == Some(403)).collect();
        assert!(denied.is_empty(), "the controller's RBAC lacks: {denied:?}");

        // Settled: the controller does not keep rewriting status.
        let status_writes = || emu.count(&RequestFilter::new().resource("webhookintegrations").subresource("status").caller(&caller));
        let settled = status_writes();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(status_writes() <= settled + 1, "status writes after settling: {} -> {}", settled, status_writes());

        // An API-server stall: the controller's watches resume and it acts on the next change.
        emu.pause();
        tokio::time::sleep(Duration::from_secs(3)).await;
        emu.resume();
        cluster.kubectl_ok(&["patch", "whi", "datadog-prod", "--type", "merge", "-p", r#"{"spec":{"suspend":true}}"#]).await;
        wait_for("observedGeneration 2 after the stall", Duration::from_secs(20), || whi()["status"]["observedGeneration"] == 2, &logs).await;
        assert_eq!(whi()["status"]["url"], url.as_str(), "URL stable across spec changes");

        // Delete: the finalizer removes the route, then the integration and its Secret go.
        cluster.kubectl_ok(&["delete", "whi", "datadog-prod", "--wait=false"]).await;
        wait_for(
            "integration and route gone",
            Duration::from_secs(20),
            || {
                emu.object("webhookintegrations.hookwarden.dev", "default", "datadog-prod").is_none()
                    && !emu.objects("secrets").iter().any(|s| s["metadata"]["labels"]["hookwarden.dev/route"] == "true")
            },
            &logs,
        )
        .await;
        if let Some(generated) = obj["status"]["secretName"].as_str() {
            wait_for("generated Secret garbage-collected", Duration::from_secs(5), || emu.object("secrets", "default", generated).is_none(), &logs).await;
        }
    })
    .await
    .expect("test finished in time");
}
