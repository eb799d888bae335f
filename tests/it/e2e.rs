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

use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::GroupVersionKind;
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

/// Where the scenario runs: the emulator (default), or a real cluster (`#[ignore]`d tests,
/// `KUBECONFIG`). Reads go through a kube client so they work on both; fault injection and
/// request counting exist only on the emulator.
struct Cluster {
    emu: Option<Emulator>,
    client: kube::Client,
    dir: tempfile::TempDir,
    kubectl: PathBuf,
}

impl Cluster {
    async fn emulated() -> Cluster {
        let emu = Emulator::start().await.expect("start emulator");
        let client = emu.client().await.expect("client");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("admin.kubeconfig"), emu.kubeconfig()).expect("kubeconfig");
        Cluster {
            emu: Some(emu),
            client,
            dir,
            kubectl: kubectl_binary(),
        }
    }

    async fn real() -> Cluster {
        let path =
            std::env::var("KUBECONFIG").expect("set KUBECONFIG to run the real-cluster scenarios");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(&path, dir.path().join("admin.kubeconfig")).expect("copy KUBECONFIG");
        let client = kube::Client::try_default()
            .await
            .expect("client from KUBECONFIG");
        Cluster {
            emu: None,
            client,
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

    async fn get(&self, ar: &ApiResource, namespace: &str, name: &str) -> Option<Value> {
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, ar);
        let obj = api.get_opt(name).await.ok()??;
        serde_json::to_value(obj).ok()
    }

    async fn list(&self, ar: &ApiResource, namespace: &str, labels: &str) -> Vec<Value> {
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, ar);
        api.list(&ListParams::default().labels(labels))
            .await
            .map(|l| {
                l.items
                    .into_iter()
                    .filter_map(|o| serde_json::to_value(o).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn whi_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("hookwarden.dev", "v1alpha1", "WebhookIntegration"),
        "webhookintegrations",
    )
}

fn secret_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "Secret"))
}

fn lease_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("coordination.k8s.io", "v1", "Lease"))
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

async fn wait_for<F, Fut>(what: &str, limit: Duration, logs: &dyn Fn() -> String, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
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
    tokio::time::timeout(TEST_LIMIT, controller_scenario(Cluster::emulated().await))
        .await
        .expect("test finished in time");
}

/// The same scenario against a real cluster: `KUBECONFIG=… cargo test --test it real_cluster -- --ignored`.
/// It installs the CRD, uses the `hookwarden` namespace and the `default` namespace's
/// `datadog-prod` integration, and runs the controller locally with your credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: set KUBECONFIG and pass --ignored"]
async fn real_cluster_controller_serves_an_integration_from_apply_to_delete() {
    tokio::time::timeout(TEST_LIMIT, controller_scenario(Cluster::real().await))
        .await
        .expect("test finished in time");
}

async fn controller_scenario(cluster: Cluster) {
    cluster.apply("crd.yaml", CRD).await;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/install.yaml");
    let rbac = cluster.emu.as_ref().and(install_rbac(&manifest));
    let (namespace, kubeconfig, caller) = match (&cluster.emu, rbac) {
        (Some(emu), Some((ns, sa, rbac))) => {
            cluster.apply("rbac.yaml", &rbac).await;
            (
                ns.clone(),
                emu.kubeconfig_for_service_account(&ns, &sa),
                format!("system:serviceaccount:{ns}:{sa}"),
            )
        }
        (emu, _) => {
            cluster
                .apply(
                    "ns.yaml",
                    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: hookwarden\n",
                )
                .await;
            let kubeconfig = match emu {
                Some(emu) => emu.kubeconfig(),
                None => {
                    std::fs::read_to_string(cluster.path("admin.kubeconfig")).expect("kubeconfig")
                }
            };
            (
                "hookwarden".to_string(),
                kubeconfig,
                "kubernetes-admin".to_string(),
            )
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
        .args([
            "controller",
            "--metrics-addr",
            "127.0.0.1:0",
            "--external-base-url",
            "https://hooks.example.com",
            "--log-format",
            "text",
            "--namespace",
            &namespace,
            "--identity",
            "controller-0",
            "--lease-duration-seconds",
            "5",
        ])
        .env("KUBECONFIG", &kubeconfig_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log_file.try_clone().expect("log clone")))
        .stderr(Stdio::from(log_file))
        .spawn()
        .expect("start hookwarden controller");
    let controller = Process { child, log };
    let logs = || controller.log();
    let whi = || async {
        cluster
            .get(&whi_resource(), "default", "datadog-prod")
            .await
            .unwrap_or(Value::Null)
    };

    // Route appears: Ready, URL, generated Secret owned by the integration, route Secret.
    wait_for("Ready=True", Duration::from_secs(20), &logs, || async {
        condition(&whi().await, "Ready").as_deref() == Some("True")
    })
    .await;
    let obj = whi().await;
    let url = obj["status"]["url"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(url.starts_with("https://hooks.example.com/hooks/"), "{obj}");
    assert_eq!(
        obj["status"]["observedGeneration"],
        obj["metadata"]["generation"]
    );
    let wide = cluster
        .kubectl_ok(&["get", "whi", "datadog-prod", "-o", "wide"])
        .await;
    let row: Vec<&str> = wide
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..3], ["datadog-prod", "datadog", "True"], "{wide}");
    assert!(wide.contains(&url), "{wide}");

    let routes = cluster
        .list(&secret_resource(), &namespace, "hookwarden.dev/route=true")
        .await;
    assert_eq!(routes.len(), 1, "one route Secret in {namespace}");
    let generated = obj["status"]["secretName"].as_str().map(str::to_string);
    if let Some(generated) = &generated {
        let secret = cluster
            .get(&secret_resource(), "default", generated)
            .await
            .expect("generated secret");
        assert_eq!(
            secret["metadata"]["ownerReferences"][0]["uid"], obj["metadata"]["uid"],
            "generated Secret owned by the integration"
        );
    }
    assert!(
        cluster
            .get(&lease_resource(), &namespace, "hookwarden-controller")
            .await
            .is_some(),
        "leader Lease taken"
    );

    if let Some(emu) = &cluster.emu {
        assert!(
            emu.count(&RequestFilter::new().caller(&caller)) > 0,
            "the controller called as {caller}"
        );
        let denied: Vec<_> = emu
            .requests()
            .into_iter()
            .filter(|r| r.caller == caller && r.code == Some(403))
            .collect();
        assert!(denied.is_empty(), "the controller's RBAC lacks: {denied:?}");

        // Settled: the controller does not keep rewriting status.
        let status_writes = || {
            emu.count(
                &RequestFilter::new()
                    .resource("webhookintegrations")
                    .subresource("status")
                    .caller(&caller),
            )
        };
        let settled = status_writes();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            status_writes() <= settled + 1,
            "status writes after settling: {} -> {}",
            settled,
            status_writes()
        );

        // An API-server stall: the controller's watches resume and it acts on the next change.
        emu.pause();
        tokio::time::sleep(Duration::from_secs(3)).await;
        emu.resume();
    }
    cluster
        .kubectl_ok(&[
            "patch",
            "whi",
            "datadog-prod",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"suspend":true}}"#,
        ])
        .await;
    wait_for(
        "observedGeneration 2",
        Duration::from_secs(20),
        &logs,
        || async { whi().await["status"]["observedGeneration"] == 2 },
    )
    .await;
    assert_eq!(
        whi().await["status"]["url"],
        url.as_str(),
        "URL stable across spec changes"
    );

    // Delete: the finalizer removes the route, then the integration and its Secret go.
    cluster
        .kubectl_ok(&["delete", "whi", "datadog-prod", "--wait=false"])
        .await;
    wait_for(
        "integration and route gone",
        Duration::from_secs(20),
        &logs,
        || async {
            cluster
                .get(&whi_resource(), "default", "datadog-prod")
                .await
                .is_none()
                && cluster
                    .list(&secret_resource(), &namespace, "hookwarden.dev/route=true")
                    .await
                    .is_empty()
        },
    )
    .await;
    if let Some(generated) = &generated {
        wait_for(
            "generated Secret garbage-collected",
            Duration::from_secs(10),
            &logs,
            || async {
                cluster
                    .get(&secret_resource(), "default", generated)
                    .await
                    .is_none()
            },
        )
        .await;
    }
}
