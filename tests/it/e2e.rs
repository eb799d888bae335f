//! End to end through the API-server emulator: the real `hookwarden controller`, two real
//! `hookwarden receiver` processes, `hookwarden send-test` and the real `kubectl`, the way a
//! platform team and a sender meet the product.
//!
//! When the repository carries the rendered install manifest (`manifests/install.yaml`), the
//! controller and the receivers run as their ServiceAccounts with exactly the RBAC that
//! manifest grants, with tokens from the TokenRequest API (`kubectl create token`) — on the
//! emulator and on a real cluster alike; otherwise with the admin credentials. Every wait is a bounded poll; a timeout
//! prints the processes' logs (`HOOKWARDEN_E2E_DUMP=1` prints them on success too).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::GroupVersionKind;
use kube_emulator::{Emulator, RequestFilter};
use serde_json::Value;

const CRD: &str = include_str!("../../crds/webhookintegrations.yaml");
const TEST_LIMIT: Duration = Duration::from_secs(120);

use crate::emulator::kubectl_binary;

mod forward;
mod plugin;
mod watch_restart;

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

/// The kubectl builds the kubectl scenarios run with: the pinned one (`HOOKWARDEN_KUBECTL`,
/// else `scripts/install-kube-tools.sh`'s) and, when `HOOKWARDEN_KUBECTL_EXTRA` names
/// another binary (a kubectl of the real server's minor version, e.g. 1.36 built by hand
/// next to the server), that one after it. Prints which versions run, also when it is only
/// the pinned one, so a run never claims a second version silently.
fn kubectls() -> Vec<PathBuf> {
    let mut all = vec![kubectl_binary()];
    match std::env::var_os("HOOKWARDEN_KUBECTL_EXTRA").filter(|v| !v.is_empty()) {
        Some(extra) => all.push(PathBuf::from(extra)),
        None => eprintln!(
            "kubectl scenarios: running with kubectl {} only (HOOKWARDEN_KUBECTL_EXTRA is not set)",
            kubectl_version(&all[0])
        ),
    }
    if all.len() > 1 {
        let versions: Vec<String> = all.iter().map(|k| kubectl_version(k)).collect();
        eprintln!(
            "kubectl scenarios: running with kubectl {}",
            versions.join(" and ")
        );
    }
    all
}

/// `kubectl version --client`'s gitVersion and the path (`v1.34.5 (/…/kubectl)`); panics
/// when the binary does not run, so a wrong `HOOKWARDEN_KUBECTL_EXTRA` fails the test
/// instead of being skipped.
fn kubectl_version(kubectl: &Path) -> String {
    let out = Command::new(kubectl)
        .args(["version", "--client", "-o", "json"])
        .env_remove("KUBECONFIG")
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", kubectl.display()));
    assert!(
        out.status.success(),
        "{} version: {}",
        kubectl.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let version: Value = serde_json::from_slice(&out.stdout).expect("kubectl version JSON");
    format!(
        "{} ({})",
        version["clientVersion"]["gitVersion"]
            .as_str()
            .unwrap_or("unknown"),
        kubectl.display()
    )
}

/// The real-cluster scenarios share the `hookwarden` namespace and the controller's leader
/// Lease, so they take turns.
static REAL_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

#[path = "../support/install_rbac.rs"]
mod install_rbac;
use install_rbac::install_rbac;

/// The RBAC documents as one multi-document YAML, for `kubectl apply -f`.
fn rbac_yaml(rbac: &install_rbac::InstallRbac) -> String {
    rbac.docs
        .iter()
        .filter_map(|d| serde_yaml::to_string(d).ok())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Who the components run as: their ServiceAccounts with exactly the RBAC of
/// `manifests/install.yaml`, authenticated by tokens from the TokenRequest API (`kubectl
/// create token`), on the emulator and on a real cluster alike; the admin credentials when
/// the repository carries no rendered manifest.
struct Identities {
    namespace: String,
    controller_kubeconfig: PathBuf,
    receiver_kubeconfig: PathBuf,
    controller_caller: String,
    receiver_caller: String,
}

/// The admin kubeconfig with its user's credentials replaced by `token`.
fn kubeconfig_with_token(admin: &str, token: &str) -> String {
    let mut config: serde_yaml::Value = serde_yaml::from_str(admin).expect("kubeconfig YAML");
    if let Some(users) = config
        .get_mut("users")
        .and_then(serde_yaml::Value::as_sequence_mut)
    {
        for user in users {
            let mut creds = serde_yaml::Mapping::new();
            creds.insert("token".into(), token.into());
            user["user"] = serde_yaml::Value::Mapping(creds);
        }
    }
    serde_yaml::to_string(&config).expect("kubeconfig YAML")
}

/// Applies the CRD and hookwarden's namespace with the chart's RBAC and writes one
/// kubeconfig per component.
async fn install(cluster: &Cluster) -> Identities {
    cluster.apply("crd.yaml", CRD).await;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/install.yaml");
    let admin = std::fs::read_to_string(cluster.path("admin.kubeconfig")).expect("kubeconfig");
    let (namespace, controller, receiver) = match install_rbac(&manifest) {
        Some(rbac) => {
            cluster.apply("rbac.yaml", &rbac_yaml(&rbac)).await;
            let ns = rbac.namespace;
            let mut identities = Vec::new();
            for sa in [&rbac.controller_sa, &rbac.receiver_sa] {
                let token = cluster
                    .kubectl_ok(&["create", "token", sa, "-n", &ns, "--duration=2h"])
                    .await;
                identities.push((
                    kubeconfig_with_token(&admin, token.trim()),
                    format!("system:serviceaccount:{ns}:{sa}"),
                ));
            }
            let receiver = identities.pop().expect("receiver identity");
            let controller = identities.pop().expect("controller identity");
            (ns, controller, receiver)
        }
        None => {
            cluster
                .apply(
                    "ns.yaml",
                    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: hookwarden\n",
                )
                .await;
            let admin = (admin, "kubernetes-admin".to_string());
            ("hookwarden".to_string(), admin.clone(), admin)
        }
    };
    let controller_kubeconfig = cluster.path("controller.kubeconfig");
    std::fs::write(&controller_kubeconfig, controller.0).expect("controller kubeconfig");
    let receiver_kubeconfig = cluster.path("receiver.kubeconfig");
    std::fs::write(&receiver_kubeconfig, receiver.0).expect("receiver kubeconfig");
    Identities {
        namespace,
        controller_kubeconfig,
        receiver_kubeconfig,
        controller_caller: controller.1,
        receiver_caller: receiver.1,
    }
}

/// `hookwarden controller` as `ids` says, logging to `controller.log`.
fn start_controller(cluster: &Cluster, ids: &Identities) -> Process {
    start_controller_with_lease(cluster, ids, 5)
}

fn start_controller_with_lease(cluster: &Cluster, ids: &Identities, lease_seconds: u64) -> Process {
    start_controller_on(cluster, ids, lease_seconds, "127.0.0.1:0")
}

/// [`start_controller_with_lease`] with its /metrics on `metrics_addr`.
fn start_controller_on(
    cluster: &Cluster,
    ids: &Identities,
    lease_seconds: u64,
    metrics_addr: &str,
) -> Process {
    let lease_seconds = lease_seconds.to_string();
    let log = cluster.path("controller.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_hookwarden"))
        .args([
            "controller",
            "--metrics-addr",
            metrics_addr,
            "--external-base-url",
            "https://hooks.example.com",
            "--log-format",
            "text",
            "--namespace",
            &ids.namespace,
            "--identity",
            "controller-0",
            "--lease-duration-seconds",
            &lease_seconds,
        ])
        .env("KUBECONFIG", &ids.controller_kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log_file.try_clone().expect("log clone")))
        .stderr(Stdio::from(log_file))
        .spawn()
        .expect("start hookwarden controller");
    Process { child, log }
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
            "timed out waiting for {what}\nlogs:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deletes an integration an earlier run on a real cluster left behind, past its finalizer
/// (no controller runs yet to remove it), and waits until it is gone. Its route, if any,
/// is then one the controller removes at start as left behind.
async fn remove_integration(cluster: &Cluster, namespace: &str, name: &str) {
    if cluster
        .get(&whi_resource(), namespace, name)
        .await
        .is_none()
    {
        return;
    }
    // Gone between the read and the patch is fine.
    let _ = cluster
        .kubectl(&[
            "patch",
            "whi",
            name,
            "-n",
            namespace,
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ])
        .await;
    cluster
        .kubectl_ok(&[
            "delete",
            "whi",
            name,
            "-n",
            namespace,
            "--ignore-not-found",
            "--wait=true",
        ])
        .await;
}

fn condition(obj: &Value, type_: &str) -> Option<String> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

/// kube-lease-manager keeps saying "leader" while its renewals fail; the controller's own
/// check of the Lease must stand it down before the lease lapses for the other replicas,
/// and it must lead again once it can renew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_refused_its_renewals_stands_down_before_its_lease_lapses() {
    const LEASE_SECONDS: u64 = 6;
    let scenario = async {
        let cluster = Cluster::emulated().await;
        let emu = cluster.emu.as_ref().expect("emulator");
        let ids = install(&cluster).await;
        let controller = start_controller_with_lease(&cluster, &ids, LEASE_SECONDS);
        let logs = || controller.log();
        let terms = || logs().matches("became leader").count();
        wait_for("leadership", Duration::from_secs(30), &logs, || async {
            terms() == 1
        })
        .await;
        let renewed = || {
            emu.object(
                "leases.coordination.k8s.io",
                &ids.namespace,
                "hookwarden-controller",
            )
            .and_then(|l| l["spec"]["renewTime"].as_str().map(str::to_string))
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .expect("the Lease has a renewTime")
        };
        // A few renewals on time: no false alarm.
        let first = renewed();
        wait_for(
            "a renewal",
            Duration::from_secs(LEASE_SECONDS),
            &logs,
            || async { renewed() > first },
        )
        .await;
        assert!(
            !logs().contains("cannot confirm the leader Lease"),
            "{}",
            logs()
        );

        // Renewals refused from now on; reads still work.
        emu.fail(
            kube_emulator::Failure::status(503).matching(
                RequestFilter::new()
                    .verb("patch")
                    .resource("leases")
                    .caller(&ids.controller_caller),
            ),
        );
        wait_for(
            "the stand-down",
            Duration::from_secs(2 * LEASE_SECONDS),
            &logs,
            || async { logs().contains("cannot confirm the leader Lease") },
        )
        .await;
        let stood_down = jiff::Timestamp::now();
        let last_renewal = renewed();
        let lapses = last_renewal + jiff::SignedDuration::from_secs(LEASE_SECONDS as i64);
        assert!(
            stood_down < lapses,
            "stood down at {stood_down}, after the lease lapsed at {lapses}\n{}",
            logs()
        );
        // Not long before it had to, either: the renewal was due a grace (2 s) before then.
        assert!(
            stood_down > last_renewal + jiff::SignedDuration::from_secs(LEASE_SECONDS as i64 - 2),
            "stood down at {stood_down}, the last renewal was at {last_renewal}\n{}",
            logs()
        );
        assert_eq!(terms(), 1, "{}", logs());

        // Renewals work again: it leads again, and reconciles.
        emu.clear_failures();
        wait_for(
            "leadership again",
            Duration::from_secs(4 * LEASE_SECONDS),
            &logs,
            || async { terms() == 2 && renewed() > last_renewal },
        )
        .await;
        cluster
            .apply("whi.yaml", "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata:\n  name: after-stand-down\n  namespace: default\nspec:\n  provider: datadog\n")
            .await;
        wait_for("Ready=True", Duration::from_secs(30), &logs, || async {
            let obj = cluster
                .get(&whi_resource(), "default", "after-stand-down")
                .await
                .unwrap_or(Value::Null);
            condition(&obj, "Ready").as_deref() == Some("True")
        })
        .await;
    };
    tokio::time::timeout(TEST_LIMIT, scenario)
        .await
        .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_serves_an_integration_from_apply_to_delete() {
    tokio::time::timeout(TEST_LIMIT, controller_scenario(Cluster::emulated().await))
        .await
        .expect("test finished in time");
}

/// The same scenario against a real cluster: `KUBECONFIG=… cargo test --test it real_cluster -- --ignored`.
/// It installs the CRD, uses the `hookwarden` namespace and the `default` namespace's
/// `datadog-prod` integration, and runs the controller locally as the chart's controller
/// ServiceAccount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: set KUBECONFIG and pass --ignored"]
async fn real_cluster_controller_serves_an_integration_from_apply_to_delete() {
    let _one_at_a_time = REAL_CLUSTER.lock().await;
    tokio::time::timeout(TEST_LIMIT, controller_scenario(Cluster::real().await))
        .await
        .expect("test finished in time");
}

async fn controller_scenario(cluster: Cluster) {
    let ids = install(&cluster).await;
    let namespace = ids.namespace.clone();
    let caller = ids.controller_caller.clone();
    cluster
        .apply("whi.yaml", "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata:\n  name: datadog-prod\n  namespace: default\nspec:\n  provider: datadog\n")
        .await;
    let controller = start_controller(&cluster, &ids);
    let logs = || controller.log();
    let whi = || async {
        cluster
            .get(&whi_resource(), "default", "datadog-prod")
            .await
            .unwrap_or(Value::Null)
    };

    // Route appears: Ready, URL, generated Secret owned by the integration, route Secret.
    wait_for("Ready=True", Duration::from_secs(60), &logs, || async {
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
        Duration::from_secs(60),
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
        Duration::from_secs(60),
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
            Duration::from_secs(30),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_left_behind_by_a_deleted_integration_is_removed() {
    tokio::time::timeout(TEST_LIMIT, left_behind_scenario(Cluster::emulated().await))
        .await
        .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: set KUBECONFIG and pass --ignored"]
async fn real_cluster_a_route_left_behind_by_a_deleted_integration_is_removed() {
    let _one_at_a_time = REAL_CLUSTER.lock().await;
    tokio::time::timeout(TEST_LIMIT, left_behind_scenario(Cluster::real().await))
        .await
        .expect("test finished in time");
}

/// Routes whose integration went without its finalizer running: one deleted while no
/// controller ran (found at start), one whose finalizer was removed by hand before
/// `kubectl delete` (found on the delete). Both stop serving; a live integration's route
/// is never touched.
async fn left_behind_scenario(cluster: Cluster) {
    use hookwarden::route::Route;
    let ids = install(&cluster).await;
    let namespace = ids.namespace.clone();
    let ghost = Route {
        namespace: "default".into(),
        name: "ghost".into(),
        uid: "0b7c6f2e-deleted-long-ago".into(),
        generation: 1,
        path: "/hooks/ghost-route-left-behind".into(),
        secrets: Vec::new(),
        spec: serde_json::from_value(serde_json::json!({"provider": "datadog"})).expect("spec"),
        forward: Vec::new(),
        replay: None,
        expected_interval_seconds: None,
    };
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(cluster.client.clone(), &namespace);
    secrets
        .create(
            &kube::api::PostParams::default(),
            &ghost.to_secret(&namespace).expect("route secret"),
        )
        .await
        .expect("create the left-behind route");
    cluster
        .apply("kept.yaml", "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata:\n  name: kept\n  namespace: default\nspec:\n  provider: datadog\n")
        .await;
    let controller = start_controller(&cluster, &ids);
    let logs = || controller.log();
    let route_names = || async {
        let mut names: Vec<String> = cluster
            .list(&secret_resource(), &namespace, "hookwarden.dev/route=true")
            .await
            .iter()
            .filter_map(|s| s["metadata"]["annotations"]["hookwarden.dev/integration"].as_str())
            .map(str::to_string)
            .collect();
        names.sort();
        names
    };
    wait_for(
        "the left-behind route removed, the live one kept",
        Duration::from_secs(60),
        &logs,
        || async {
            condition(
                &cluster
                    .get(&whi_resource(), "default", "kept")
                    .await
                    .unwrap_or(Value::Null),
                "Ready",
            )
            .as_deref()
                == Some("True")
                && route_names().await == ["default/kept"]
        },
    )
    .await;
    assert!(
        logs().contains("no longer exists"),
        "the removal is logged:\n{}",
        logs()
    );

    // The finalizer removed by hand, then deleted: cleanup never runs.
    cluster
        .kubectl_ok(&[
            "patch",
            "whi",
            "kept",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ])
        .await;
    cluster
        .kubectl_ok(&["delete", "whi", "kept", "--wait=false"])
        .await;
    wait_for(
        "the route of the integration deleted past its finalizer removed",
        Duration::from_secs(60),
        &logs,
        || async { route_names().await.is_empty() },
    )
    .await;
    if let Some(emu) = &cluster.emu {
        let denied: Vec<_> = emu
            .requests()
            .into_iter()
            .filter(|r| r.caller == ids.controller_caller && r.code == Some(403))
            .collect();
        assert!(denied.is_empty(), "the controller's RBAC lacks: {denied:?}");
    }
}

// ---------------------------------------------------------------------------------------
// The whole product: controller + two receivers + send-test + kubectl.
// ---------------------------------------------------------------------------------------

/// The integration the delivery scenario uses: `manifests/examples/datadog.yaml` with a
/// `secretRef` and limits that let a 1,000-delivery burst through (the example's 50/s,
/// burst 100 would answer most of it 429, which is its own, separately tested behaviour).
const INTEGRATION: &str = "datadog-e2e";
const SECRET_NAME: &str = "datadog-e2e-webhook";
const TOKEN: &str = "example-datadog-token-change-me";
const ROTATED_TOKEN: &str = "rotated-datadog-token-0123456789";
const STATUS_INTERVAL: Duration = Duration::from_millis(500);
const SCENARIO_LIMIT: Duration = Duration::from_secs(300);

fn example_integration() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/examples/datadog.yaml");
    let text = std::fs::read_to_string(path).expect("manifests/examples/datadog.yaml");
    let mut whi: Value = serde_yaml::from_str(&text).expect("example YAML");
    assert_eq!(whi["spec"]["provider"], "datadog", "{whi}");
    whi["metadata"]["name"] = INTEGRATION.into();
    whi["metadata"]["namespace"] = "default".into();
    whi["spec"]["secretRef"] = serde_json::json!({"name": SECRET_NAME, "key": "token"});
    whi["spec"]["limits"] = serde_json::json!({"requestsPerSecond": 5000, "burst": 2000});
    serde_yaml::to_string(&whi).expect("YAML")
}

/// One `hookwarden receiver` process and where it listens.
struct Receiver {
    process: Process,
    port: u16,
}

fn start_receiver(cluster: &Cluster, ids: &Identities, replica: usize) -> Receiver {
    start_receiver_with(cluster, ids, replica, &[])
}

/// A receiver with `extra` flags. Its journal (`journal-REPLICA`) and log
/// (`receiver-REPLICA.log`, appended to) are the replica's: starting it again after a
/// kill is a restart of the same replica.
fn start_receiver_with(
    cluster: &Cluster,
    ids: &Identities,
    replica: usize,
    extra: &[&str],
) -> Receiver {
    let port = crate::cluster_receiver::free_port();
    let log = cluster.path(&format!("receiver-{replica}.log"));
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_hookwarden"))
        .args([
            "receiver",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-addr",
            "127.0.0.1:0",
            "--namespace",
            &ids.namespace,
            "--status-interval",
            "500ms",
            "--log-format",
            "text",
        ])
        .args(extra)
        .arg("--journal-dir")
        .arg(cluster.path(&format!("journal-{replica}")))
        .env("KUBECONFIG", &ids.receiver_kubeconfig)
        .env("POD_NAME", format!("receiver-{replica}"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log_file.try_clone().expect("log clone")))
        .stderr(Stdio::from(log_file))
        .spawn()
        .expect("start hookwarden receiver");
    Receiver {
        process: Process { child, log },
        port,
    }
}

/// `hookwarden send-test URL --provider datadog --secret SECRET EXTRA…`: (exit success,
/// first line of the output, e.g. `202 Accepted`).
async fn send_test(url: &str, secret: &str, extra: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookwarden"));
    cmd.args([
        "send-test",
        url,
        "--provider",
        "datadog",
        "--secret",
        secret,
    ])
    .args(["--timeout-seconds", "10"])
    .args(extra);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run hookwarden send-test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success(),
        text.lines().next().unwrap_or_default().to_string(),
    )
}

/// Every incident on the status (`recent` and `tracked`) as (id, state), duplicates kept.
fn incidents(obj: &Value) -> Vec<(String, String)> {
    ["recent", "tracked"]
        .iter()
        .flat_map(|l| {
            obj["status"]["incidents"][l]
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
        .collect()
}

fn counter(obj: &Value, name: &str) -> i64 {
    obj["status"]["deliveries"][name].as_i64().unwrap_or(0)
}

fn open_incidents(obj: &Value) -> i64 {
    obj["status"]["incidents"]["open"].as_i64().unwrap_or(0)
}

/// A kubectl age (`7s`, `2m5s`, `3h`, `4d`).
fn is_age(cell: &str) -> bool {
    cell.starts_with(|c: char| c.is_ascii_digit())
        && cell
            .chars()
            .all(|c| c.is_ascii_digit() || "smhdy".contains(c))
}

/// The row of `kubectl get whi NAME` (default Table columns), as cells.
async fn table_row(cluster: &Cluster) -> (String, Vec<String>) {
    let table = cluster
        .kubectl_ok(&["get", "whi", INTEGRATION, "-n", "default"])
        .await;
    let row = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    (table, row)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_from_send_test_to_kubectl_through_controller_and_two_receivers() {
    tokio::time::timeout(SCENARIO_LIMIT, delivery_scenario(Cluster::emulated().await))
        .await
        .expect("test finished in time");
}

/// The delivery scenario against a real cluster:
/// `KUBECONFIG=… cargo test --test it real_cluster -- --ignored`. The controller and both
/// receivers run on this machine with the kubeconfig's credentials (not in the cluster), so
/// the test reaches the receivers on 127.0.0.1, as the chart's ServiceAccounts (tokens from
/// TokenRequest); it needs cluster-admin to install the CRD and the RBAC, and hookwarden must
/// not also be installed in the cluster (its in-cluster
/// controller would hold the leader Lease). The API-pause and request-count checks exist only
/// on the emulator and are skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: set KUBECONFIG and pass --ignored"]
async fn real_cluster_deliveries_from_send_test_to_kubectl_through_controller_and_two_receivers() {
    let _one_at_a_time = REAL_CLUSTER.lock().await;
    tokio::time::timeout(SCENARIO_LIMIT, delivery_scenario(Cluster::real().await))
        .await
        .expect("test finished in time");
}

async fn delivery_scenario(cluster: Cluster) {
    let started = tokio::time::Instant::now();
    let ids = install(&cluster).await;
    // The Secret the integration references, created the way a user would.
    let (ok, _, stderr) = cluster
        .kubectl(&[
            "delete",
            "secret",
            SECRET_NAME,
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
            SECRET_NAME,
            "-n",
            "default",
            &format!("--from-literal=token={TOKEN}"),
        ])
        .await;
    cluster
        .apply("integration.yaml", &example_integration())
        .await;

    let controller = start_controller(&cluster, &ids);
    let replicas = [
        start_receiver(&cluster, &ids, 0),
        start_receiver(&cluster, &ids, 1),
    ];
    // The integration as the emulator stores it (not counted as a request, readable while
    // the API is paused); None without an emulator.
    let stored = || {
        cluster.emu.as_ref().and_then(|emu| {
            emu.object("webhookintegrations.hookwarden.dev", "default", INTEGRATION)
        })
    };
    let logs = || {
        let mut all = format!("--- controller ---\n{}", controller.log());
        for (i, r) in replicas.iter().enumerate() {
            all.push_str(&format!("--- receiver-{i} ---\n{}", r.process.log()));
        }
        // What a timed-out wait was looking at.
        if let Some(object) = stored() {
            all.push_str(&format!("--- status ---\n{:#}\n", object["status"]));
        }
        all
    };
    // Reads of the integration: on the emulator straight from storage (not counted, works
    // while the API is paused), else through the API.
    let whi = || async {
        match &cluster.emu {
            Some(_) => stored(),
            None => cluster.get(&whi_resource(), "default", INTEGRATION).await,
        }
        .unwrap_or(Value::Null)
    };

    // 1. The route appears; a signed Datadog trigger → 202 → `kubectl get whi` shows it.
    wait_for("status.path", Duration::from_secs(90), &logs, || async {
        whi().await["status"]["path"].is_string()
    })
    .await;
    let path = whi().await["status"]["path"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let url_before = whi().await["status"]["url"].clone();
    let urls: Vec<String> = replicas
        .iter()
        .map(|r| format!("http://127.0.0.1:{}{path}", r.port))
        .collect();
    // Until the receiver has loaded the route it answers 404 (or 503 before its first
    // list of routes), which counts nowhere; the same delivery id is retried, so at most
    // one copy is accepted.
    let trigger = ["--id", "e2e-trigger", "--incident-id", "disk-full"];
    wait_for(
        "receiver-0 to accept the first delivery",
        Duration::from_secs(90),
        &logs,
        || async {
            let (ok, line) = send_test(&urls[0], TOKEN, &trigger).await;
            assert!(
                ok || line.starts_with("404") || line.starts_with("503"),
                "send-test: {line}"
            );
            ok && line.starts_with("202")
        },
    )
    .await;
    wait_for(
        "kubectl get whi: Ready True, Open 1, a Last Delivery",
        Duration::from_secs(60),
        &logs,
        || async {
            let (_, row) = table_row(&cluster).await;
            row.len() == 6 && row[..4] == [INTEGRATION, "datadog", "True", "1"] && is_age(&row[4])
        },
    )
    .await;
    let (table, _) = table_row(&cluster).await;
    assert!(
        table.starts_with("NAME") && table.contains("LAST DELIVERY"),
        "{table}"
    );
    eprintln!("[{:?}] 1. delivered:\n{table}", started.elapsed());

    // 2. The recovery resolves the incident.
    let (ok, line) = send_test(
        &urls[0],
        TOKEN,
        &["--resolve", "--incident-id", "disk-full"],
    )
    .await;
    assert!(ok && line.starts_with("202"), "send-test --resolve: {line}");
    wait_for(
        "the incident resolved",
        Duration::from_secs(60),
        &logs,
        || async {
            let o = cluster
                .kubectl_ok(&["get", "whi", INTEGRATION, "-n", "default", "-o", "json"])
                .await;
            let o: Value = serde_json::from_str(&o).unwrap_or(Value::Null);
            open_incidents(&o) == 0
                && incidents(&o) == [("disk-full".to_string(), "resolved".to_string())]
                && counter(&o, "accepted") == 2
        },
    )
    .await;
    let (_, row) = table_row(&cluster).await;
    assert_eq!(row.get(3).map(String::as_str), Some("0"), "{row:?}");
    eprintln!("[{:?}] 2. resolved", started.elapsed());

    // 8. The same delivery to both replicas: one incident. Deduplication is per replica
    // (in memory and in each replica's journal), so each replica accepts its copy once.
    let before = whi().await;
    // Byte-identical copies: Datadog's delivery key has the body's `date` (the sample's is
    // the second it was made), so copies from separate `send-test` runs a second apart
    // would be two deliveries.
    let dup_body = cluster.path("dup-delivery.json");
    let sample = hookwarden::domain::sample::sample_with(
        hookwarden::crd::ProviderKind::Datadog,
        jiff::Timestamp::now().as_second(),
        "dup-1",
        &hookwarden::domain::sample::SampleOptions {
            incident_id: Some("dup-incident".to_string()),
            ..Default::default()
        },
    );
    std::fs::write(&dup_body, &sample.body).expect("write the duplicate's body");
    let dup_body = dup_body.to_string_lossy().into_owned();
    let dup = ["--body-file", dup_body.as_str()];
    let (ok, line) = send_test(&urls[0], TOKEN, &dup).await;
    assert!(ok && line.starts_with("202"), "{line}");
    wait_for(
        "receiver-1 to serve the route",
        Duration::from_secs(90),
        &logs,
        || async {
            let (ok, line) = send_test(&urls[1], TOKEN, &dup).await;
            assert!(
                ok || line.starts_with("404") || line.starts_with("503"),
                "send-test: {line}"
            );
            ok
        },
    )
    .await;
    // A repeat to the same replica is a duplicate: 2xx, no second effect.
    let (ok, line) = send_test(&urls[0], TOKEN, &dup).await;
    assert!(ok && line.starts_with("20"), "{line}");
    // One marker incident per replica, sent after the copies: once both markers are on the
    // status, both replicas have written everything they counted before them.
    for (i, url) in urls.iter().enumerate() {
        let marker = format!("marker-{i}");
        let (ok, line) = send_test(url, TOKEN, &["--id", &marker, "--incident-id", &marker]).await;
        assert!(ok && line.starts_with("202"), "{line}");
    }
    wait_for(
        "both replicas' writes",
        Duration::from_secs(60),
        &logs,
        || async {
            let o = whi().await;
            let ids: Vec<String> = incidents(&o).into_iter().map(|(id, _)| id).collect();
            ids.iter().any(|i| i == "marker-0")
                && ids.iter().any(|i| i == "marker-1")
                && counter(&o, "duplicates") > counter(&before, "duplicates")
        },
    )
    .await;
    let after = whi().await;
    let dup_incidents: Vec<_> = incidents(&after)
        .into_iter()
        .filter(|(id, _)| id == "dup-incident")
        .collect();
    assert_eq!(
        dup_incidents,
        [("dup-incident".to_string(), "open".to_string())],
        "one incident for one delivery sent to both replicas: {}",
        after["status"]
    );
    assert_eq!(
        open_incidents(&after),
        open_incidents(&before) + 3,
        "dup-incident, marker-0, marker-1"
    );
    // The open is announced as an Event (best effort, after the status write).
    let opened_events = || {
        cluster.emu.as_ref().map(|emu| {
            emu.objects("events")
                .iter()
                .filter(|e| {
                    e["reason"] == "IncidentOpened"
                        && e["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("incident dup-incident opened"))
                })
                .count()
        })
    };
    wait_for(
        "an IncidentOpened Event",
        Duration::from_secs(30),
        &logs,
        || async { opened_events() != Some(0) },
    )
    .await;
    let dup_accepted = counter(&after, "accepted") - counter(&before, "accepted") - 2;
    eprintln!(
        "[{:?}] 8. one delivery id sent to both replicas: 1 incident, accepted +{dup_accepted}, duplicates +{}, IncidentOpened Events: {:?}",
        started.elapsed(),
        counter(&after, "duplicates") - counter(&before, "duplicates"),
        opened_events()
    );
    // Pinned so that a change is noticed: cross-replica copies are counted once per replica
    // (see the report / README "HTTP answers": "no second effect" holds per replica).
    assert_eq!(
        dup_accepted, 2,
        "accepted counts a delivery once per replica that received it"
    );

    // 3. A bad token → 401 and the reason on the status.
    assert!(
        before["status"]["deliveries"]["lastRejectReason"].is_null(),
        "no rejection yet: {}",
        before["status"]
    );
    let (ok, line) = send_test(&urls[1], "not-the-token", &[]).await;
    assert!(
        !ok && line.starts_with("401"),
        "send-test with a wrong token: {line}"
    );
    wait_for(
        "lastRejectReason",
        Duration::from_secs(60),
        &logs,
        || async {
            let o = whi().await;
            o["status"]["deliveries"]["lastRejectReason"]
                .as_str()
                .is_some_and(|r| !r.is_empty())
                && counter(&o, "rejected") == 1
        },
    )
    .await;
    eprintln!(
        "[{:?}] 3. rejected: {}",
        started.elapsed(),
        whi().await["status"]["deliveries"]["lastRejectReason"]
    );

    // 6. 1,000 concurrent deliveries with unique ids over both replicas: all accepted,
    // counted exactly, for a handful of status writes.
    let status_filter = || {
        RequestFilter::new()
            .verb("patch")
            .resource("webhookintegrations")
            .subresource("status")
            .caller(&ids.receiver_caller)
    };
    let status_writes = || cluster.emu.as_ref().map(|emu| emu.count(&status_filter()));
    // Writes that landed; the rest are 409s of replicas racing each other, each retried.
    let landed_writes = || {
        cluster
            .emu
            .as_ref()
            .map(|emu| emu.count(&status_filter().code(200)))
    };
    let before = whi().await;
    let writes_before = status_writes();
    let landed_before = landed_writes();
    let burst_started = tokio::time::Instant::now();
    let answers = burst(&urls, ("burst", "burst"), 1000, 16);
    assert_eq!(answers.get(&202), Some(&1000), "answers: {answers:?}");
    let want = counter(&before, "accepted") + 1000;
    wait_for(
        "the burst counted",
        Duration::from_secs(90),
        &logs,
        || async { counter(&whi().await, "accepted") >= want },
    )
    .await;
    let burst_took = burst_started.elapsed();
    let after = whi().await;
    assert_eq!(counter(&after, "accepted"), want, "{}", after["status"]);
    let keys: Vec<String> = incidents(&after).into_iter().map(|(id, _)| id).collect();
    assert!(
        (0..20).all(|k| keys.contains(&format!("burst-k-{k}"))),
        "{keys:?}"
    );
    if let (Some(before), Some(now), Some(landed_before), Some(landed_now)) = (
        writes_before,
        status_writes(),
        landed_before,
        landed_writes(),
    ) {
        let (writes, landed) = (now - before, landed_now - landed_before);
        // Each replica writes about once per interval over the window up to the count just
        // taken (one more for a tick at each end of it and one of slack for a late tick),
        // and retries a write the other replica's write made stale. For a burst of about a
        // second at 500 ms that is at most 10 landed writes for 1,000 deliveries.
        let window = burst_started.elapsed();
        let intervals = window.as_millis() / STATUS_INTERVAL.as_millis() + 3;
        eprintln!(
            "[{:?}] 6. 1,000 deliveries in {burst_took:?}: {writes} status writes, {landed} landed (bound {} landed, {} in all)",
            started.elapsed(),
            2 * intervals,
            4 * intervals
        );
        assert!(
            landed as u128 <= 2 * intervals && writes as u128 <= 4 * intervals,
            "{writes} status writes ({landed} landed) for 1,000 deliveries in {burst_took:?}"
        );
    }

    // 7. A 30 s API-server pause while deliveries arrive: every acknowledged delivery is
    // counted once it resumes, and the backlog does not turn into a write storm.
    if let Some(emu) = &cluster.emu {
        let before = whi().await;
        let writes_before = status_writes().unwrap_or_default();
        // Every request of the receivers (reads, watches and writes): none may loop.
        let receiver_requests = || emu.count(&RequestFilter::new().caller(&ids.receiver_caller));
        let requests_before = receiver_requests();
        emu.pause();
        let paused = tokio::time::Instant::now();
        let mut acked = 0;
        for round in 0..10 {
            let answers = burst(&urls, (&format!("pause-{round}"), "pause"), 20, 4);
            acked += answers.get(&202).copied().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(
            acked, 200,
            "deliveries are acknowledged while the API hangs"
        );
        // The pause lasts 30 s by design, not as synchronisation.
        tokio::time::sleep_until(paused + Duration::from_secs(30)).await;
        let during = status_writes().unwrap_or_default() - writes_before;
        let requests_during = receiver_requests() - requests_before;
        emu.resume();
        let resumed = tokio::time::Instant::now();
        let want = counter(&before, "accepted") + acked as i64;
        wait_for(
            "the paused deliveries counted",
            Duration::from_secs(120),
            &logs,
            || async {
                let o = whi().await;
                let keys: Vec<String> = incidents(&o).into_iter().map(|(id, _)| id).collect();
                counter(&o, "accepted") >= want
                    && (0..20).all(|k| keys.contains(&format!("pause-k-{k}")))
            },
        )
        .await;
        let caught_up = resumed.elapsed();
        // Settled: nothing left to write, so no more writes.
        tokio::time::sleep(STATUS_INTERVAL * 4).await;
        let o = whi().await;
        assert_eq!(
            counter(&o, "accepted"),
            want,
            "counted once: {}",
            o["status"]
        );
        let after = status_writes().unwrap_or_default() - writes_before - during;
        // Each incident opened during the pause is announced by one Event of its own,
        // whichever replicas saw it: not folded into another incident's series, not
        // twice.
        let events = emu.objects("events");
        for k in 0..20 {
            let opened = format!("incident pause-k-{k} opened");
            let announced: Vec<&Value> = events
                .iter()
                .filter(|e| {
                    e["reason"] == "IncidentOpened"
                        && e["message"].as_str().is_some_and(|m| m.contains(&opened))
                })
                .collect();
            assert_eq!(
                announced.len(),
                1,
                "IncidentOpened Events for pause-k-{k}: {announced:?}"
            );
        }
        // What the receivers asked after the resume, by verb and resource (for the bounds
        // below): Event requests and the rest.
        let (mut event_requests_after, mut other_requests_after) = (0, 0);
        let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
        for r in emu
            .requests()
            .iter()
            .filter(|r| r.caller == ids.receiver_caller)
            .skip(requests_before + requests_during)
        {
            if r.resource == "events" {
                event_requests_after += 1;
            } else {
                other_requests_after += 1;
            }
            let kind = format!(
                "{} {}{} {}",
                r.verb,
                r.resource,
                r.subresource
                    .as_deref()
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default(),
                r.code.unwrap_or(0)
            );
            *kinds.entry(kind).or_default() += 1;
        }
        eprintln!(
            "[{:?}] 7. 200 deliveries during a 30 s pause: caught up {caught_up:?} after resume, {during} status writes while paused, {after} after; all receiver requests: {requests_during} while paused, {} after",
            started.elapsed(),
            event_requests_after + other_requests_after
        );
        eprintln!("    receiver requests after resume: {kinds:?}");
        if std::env::var_os("HOOKWARDEN_E2E_DUMP").is_some() {
            for r in emu
                .requests()
                .iter()
                .filter(|r| r.caller == ids.receiver_caller)
            {
                eprintln!("{r:?}");
            }
        }
        // Bounds: a few status writes (one per replica per interval while catching up);
        // Event requests at most one per incident change still unannounced: the 20
        // incidents opened during the pause (each checked above) and, when the pause
        // caught a replica before its last write of step 6, some of step 6's 20 (one run:
        // 31 in all); everything else a handful of reads, writes, conflict retries and
        // watch restarts per replica (typically 4), never one per delivery (200).
        assert!(
            during <= 4 && after <= 8,
            "status writes: {during} while paused, {after} after resume"
        );
        assert!(
            requests_during <= 20
                && event_requests_after <= 20 + 20 + 5
                && other_requests_after <= 20,
            "receiver requests: {requests_during} while paused; after resume {event_requests_after} on Events and {other_requests_after} others"
        );
    }

    // 4. Secret rotation: same URL; old and new accepted within previousSecretTTL; a wrong
    // one is not. A merge patch of the Secret, as `kubectl edit` would save it.
    let patch = format!(
        r#"{{"data":{{"token":"{}"}}}}"#,
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ROTATED_TOKEN)
    );
    cluster
        .kubectl_ok(&[
            "patch",
            "secret",
            SECRET_NAME,
            "-n",
            "default",
            "--type",
            "merge",
            "-p",
            &patch,
        ])
        .await;
    for (i, url) in urls.iter().enumerate() {
        let id = format!("rotated-{i}");
        wait_for(
            "the rotated secret accepted",
            Duration::from_secs(90),
            &logs,
            || async {
                let (ok, line) = send_test(url, ROTATED_TOKEN, &["--id", &id]).await;
                assert!(ok || line.starts_with("401"), "send-test: {line}");
                ok
            },
        )
        .await;
        let (ok, line) = send_test(url, TOKEN, &[]).await;
        assert!(ok && line.starts_with("202"), "the previous secret: {line}");
        let (ok, line) = send_test(url, "a-third-wrong-token", &[]).await;
        assert!(!ok && line.starts_with("401"), "a wrong secret: {line}");
    }
    let o = whi().await;
    assert_eq!(
        o["status"]["path"],
        path.as_str(),
        "the path survives rotation"
    );
    assert_eq!(o["status"]["url"], url_before, "the URL survives rotation");
    eprintln!("[{:?}] 4. rotated", started.elapsed());

    // 5. Delete: the finalizer removes the route; both replicas answer 404.
    cluster
        .kubectl_ok(&[
            "delete",
            "whi",
            INTEGRATION,
            "-n",
            "default",
            "--wait=false",
        ])
        .await;
    wait_for(
        "404 on both replicas, integration and route gone",
        Duration::from_secs(90),
        &logs,
        || async {
            urls.iter().all(|url| {
                crate::standalone::datadog(url, "after-delete", "x", "Triggered") == Some(404)
            }) && cluster
                .get(&whi_resource(), "default", INTEGRATION)
                .await
                .is_none()
                && cluster
                    .list(
                        &secret_resource(),
                        &ids.namespace,
                        "hookwarden.dev/route=true",
                    )
                    .await
                    .is_empty()
        },
    )
    .await;
    eprintln!(
        "[{:?}] 5. deleted (IncidentOpened Events for dup-incident by now: {:?})",
        started.elapsed(),
        opened_events()
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
    for r in &replicas {
        let log = r.process.log();
        assert!(!log.contains("panicked"), "{log}");
    }
    if std::env::var_os("HOOKWARDEN_E2E_DUMP").is_some() {
        eprintln!("{}", logs());
    }
    cluster
        .kubectl_ok(&[
            "delete",
            "secret",
            SECRET_NAME,
            "-n",
            "default",
            "--ignore-not-found",
        ])
        .await;
}

/// `count` Datadog triggers with ids `PREFIX-i` (incident keys `KEYS-k-(i % 20)`) from
/// `senders` threads, alternating over `urls`: how many got each status code (0: no answer).
fn burst(
    urls: &[String],
    (prefix, keys): (&str, &str),
    count: usize,
    senders: usize,
) -> std::collections::BTreeMap<u16, usize> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let next = Arc::new(AtomicUsize::new(0));
    let answers: Arc<Mutex<std::collections::BTreeMap<u16, usize>>> = Arc::default();
    let threads: Vec<_> = (0..senders)
        .map(|_| {
            let (next, answers, urls, prefix, keys) = (
                next.clone(),
                answers.clone(),
                urls.to_vec(),
                prefix.to_string(),
                keys.to_string(),
            );
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= count {
                        return;
                    }
                    let code = crate::standalone::datadog(
                        &urls[i % urls.len()],
                        &format!("{prefix}-{i}"),
                        &format!("{keys}-k-{}", i % 20),
                        "Triggered",
                    )
                    .unwrap_or(0);
                    *answers.lock().expect("lock").entry(code).or_default() += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("sender thread");
    }
    answers.lock().expect("lock").clone()
}

fn data_keys(secret: &Value) -> Vec<String> {
    secret["data"]
        .as_object()
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default()
}

fn forward_integration(targets: &str) -> String {
    format!(
        "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata:\n  name: fwd\n  namespace: default\nspec:\n  provider: datadog\n  forward:\n{targets}"
    )
}

/// spec.forward against the API-server emulator: a target waits on ForwardReady until the
/// Secret its urlFrom names appears (the controller's Secret watch maps it back to the
/// integration, no resync needed), generated keys land in `<name>-forward`, and a removed
/// target's key leaves that Secret (server-side apply drops what it no longer sets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_secrets_are_watched_and_generated_keys_follow_the_targets() {
    tokio::time::timeout(TEST_LIMIT, forward_scenario(Cluster::emulated().await))
        .await
        .expect("test finished in time");
}

/// The same against a real cluster (`KUBECONFIG=… cargo test --test it real_cluster --
/// --ignored`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: set KUBECONFIG and pass --ignored"]
async fn real_cluster_forward_secrets_are_watched_and_generated_keys_follow_the_targets() {
    let _one_at_a_time = REAL_CLUSTER.lock().await;
    tokio::time::timeout(TEST_LIMIT, forward_scenario(Cluster::real().await))
        .await
        .expect("test finished in time");
}

async fn forward_scenario(cluster: Cluster) {
    let ids = install(&cluster).await;
    // What an earlier run on a real cluster left: the integration, the Secret it waits
    // for, and its generated Secret (which the garbage collector may not have reached).
    remove_integration(&cluster, "default", "fwd").await;
    for secret in ["slack", "fwd-forward"] {
        let (ok, _, stderr) = cluster
            .kubectl(&[
                "delete",
                "secret",
                secret,
                "-n",
                "default",
                "--ignore-not-found",
            ])
            .await;
        assert!(ok, "{stderr}");
    }
    cluster
        .apply(
            "fwd.yaml",
            &forward_integration(
                "  - {name: tickets, url: 'https://tickets.example.com/in'}\n  - name: chat\n    urlFrom: {secretRef: {name: slack, key: url}}\n    format: slack\n    send: [incident.opened]\n",
            ),
        )
        .await;
    let controller = start_controller(&cluster, &ids);
    let logs = || controller.log();
    let whi = || async {
        cluster
            .get(&whi_resource(), "default", "fwd")
            .await
            .unwrap_or(Value::Null)
    };
    wait_for(
        "ForwardReady=False",
        Duration::from_secs(60),
        &logs,
        || async { condition(&whi().await, "ForwardReady").as_deref() == Some("False") },
    )
    .await;
    assert_eq!(condition(&whi().await, "Ready").as_deref(), Some("True"));
    let forward_secret = cluster
        .get(&secret_resource(), "default", "fwd-forward")
        .await
        .expect("fwd-forward");
    assert_eq!(data_keys(&forward_secret), ["tickets"]);
    let tickets_key = forward_secret["data"]["tickets"].clone();

    // The missing Secret appears: only the watch can bring the reconcile this soon.
    cluster
        .apply(
            "slack.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: slack, namespace: default}\nstringData: {url: 'https://hooks.slack.com/services/T/B/x'}\n",
        )
        .await;
    wait_for(
        "ForwardReady=True",
        Duration::from_secs(30),
        &logs,
        || async { condition(&whi().await, "ForwardReady").as_deref() == Some("True") },
    )
    .await;
    let routes = cluster
        .list(
            &secret_resource(),
            &ids.namespace,
            "hookwarden.dev/route=true",
        )
        .await;
    let route_json = routes[0]["data"]["route.json"]
        .as_str()
        .expect("route.json");
    use base64::Engine as _;
    let route: hookwarden::route::Route = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(route_json)
            .expect("base64"),
    )
    .expect("route");
    let names: Vec<&str> = route.forward.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["tickets", "chat"]);

    // tickets replaced by partner: its key goes, partner's comes.
    cluster
        .apply(
            "fwd.yaml",
            &forward_integration(
                "  - {name: partner, url: 'https://partner.example.com/in'}\n  - name: chat\n    urlFrom: {secretRef: {name: slack, key: url}}\n    format: slack\n    send: [incident.opened]\n",
            ),
        )
        .await;
    wait_for(
        "tickets' key dropped",
        Duration::from_secs(30),
        &logs,
        || async {
            cluster
                .get(&secret_resource(), "default", "fwd-forward")
                .await
                .is_some_and(|s| data_keys(&s) == ["partner"])
        },
    )
    .await;
    let forward_secret = cluster
        .get(&secret_resource(), "default", "fwd-forward")
        .await
        .expect("fwd-forward");
    assert_ne!(forward_secret["data"]["partner"], tickets_key);
    cluster
        .kubectl_ok(&["delete", "whi", "fwd", "-n", "default", "--wait=true"])
        .await;
    cluster
        .kubectl_ok(&["delete", "secret", "slack", "-n", "default"])
        .await;
}

// ---------------------------------------------------------------------------------------
// The CRD through kubectl: CEL rules, printer columns, server-side apply conflicts.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_meets_the_crd_rules_columns_and_apply_conflicts() {
    tokio::time::timeout(TEST_LIMIT, crd_through_kubectl(Cluster::emulated().await))
        .await
        .expect("test finished in time");
}

/// The same through a real API server: its CEL messages, its Table and its apply conflicts
/// are what the emulator copies. With `HOOKWARDEN_KUBECTL_EXTRA=/path/to/kubectl` (e.g. a
/// kubectl of the server's own version) the scenario runs with that kubectl too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: set KUBECONFIG and pass --ignored"]
async fn real_cluster_kubectl_meets_the_crd_rules_columns_and_apply_conflicts() {
    let _one_at_a_time = REAL_CLUSTER.lock().await;
    tokio::time::timeout(TEST_LIMIT, crd_through_kubectl(Cluster::real().await))
        .await
        .expect("test finished in time");
}

/// `kubectl apply` of a manifest that must be refused: its stderr.
async fn refused(cluster: &Cluster, name: &str, manifest: &str) -> String {
    let path = cluster.path(name);
    std::fs::write(&path, manifest).expect("manifest");
    let (ok, _, stderr) = cluster
        .kubectl(&["apply", "-f", &path.to_string_lossy()])
        .await;
    assert!(!ok, "{name} was accepted");
    stderr
}

/// [`crd_through_one_kubectl`] with every kubectl of [`kubectls`] in turn.
async fn crd_through_kubectl(mut cluster: Cluster) {
    for kubectl in kubectls() {
        cluster.kubectl = kubectl;
        crd_through_one_kubectl(&cluster).await;
    }
}

async fn crd_through_one_kubectl(cluster: &Cluster) {
    cluster.apply("crd.yaml", CRD).await;
    let head = "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata:\n  name: kubectl-rules\n  namespace: default\nspec:\n";
    let stderr = refused(
        cluster,
        "generic.yaml",
        &format!("{head}  provider: generic\n"),
    )
    .await;
    assert!(
        stderr.contains("The WebhookIntegration \"kubectl-rules\" is invalid: spec.signature: Invalid value: spec.signature must be set when provider is generic, and only then"),
        "{stderr}"
    );
    let stderr = refused(
        cluster,
        "cidr.yaml",
        &format!("{head}  provider: github\n  allowedSourceRanges: [10.0.0.0/8, not-a-cidr]\n"),
    )
    .await;
    assert!(
        stderr.contains("spec.allowedSourceRanges: Invalid value: every allowedSourceRanges entry must be a CIDR"),
        "{stderr}"
    );

    // Printer columns, as kubectl's Table shows them.
    let _ = cluster
        .kubectl(&[
            "delete",
            "whi",
            "kubectl-rules",
            "-n",
            "default",
            "--ignore-not-found",
        ])
        .await;
    let path = cluster.path("ok.yaml");
    std::fs::write(&path, format!("{head}  provider: datadog\n")).expect("manifest");
    let path = path.to_string_lossy().into_owned();
    cluster
        .kubectl_ok(&[
            "apply",
            "--server-side",
            "--field-manager=platform",
            "-f",
            &path,
        ])
        .await;
    let wide = cluster
        .kubectl_ok(&["get", "whi", "kubectl-rules", "-n", "default", "-o", "wide"])
        .await;
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or_default()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "PROVIDER",
            "READY",
            "OPEN",
            "LAST DELIVERY",
            "URL",
            "DEAD LETTERS",
            "AGE"
        ],
        "{wide}"
    );

    // A second manager applying another provider conflicts, names the first, and wins only
    // with --force-conflicts.
    std::fs::write(&path, format!("{head}  provider: github\n")).expect("manifest");
    let (ok, _, stderr) = cluster
        .kubectl(&[
            "apply",
            "--server-side",
            "--field-manager=team",
            "-f",
            &path,
        ])
        .await;
    assert!(!ok, "the conflicting apply was accepted");
    assert!(
        stderr.contains("Apply failed with 1 conflict: conflict with \"platform\": .spec.provider"),
        "{stderr}"
    );
    cluster
        .kubectl_ok(&[
            "apply",
            "--server-side",
            "--field-manager=team",
            "--force-conflicts",
            "-f",
            &path,
        ])
        .await;
    let provider = cluster
        .kubectl_ok(&[
            "get",
            "whi",
            "kubectl-rules",
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.provider}",
        ])
        .await;
    assert_eq!(provider, "github");
    cluster
        .kubectl_ok(&[
            "delete",
            "whi",
            "kubectl-rules",
            "-n",
            "default",
            "--wait=false",
        ])
        .await;
}

/// A real Prometheus scrapes the controller running against the emulator: its reconcile
/// and leader series arrive, and no shipped controller alert fires for a healthy
/// controller. An unparsable `hookwarden.dev/expected-interval` is reported as a Warning
/// Event that says what to write instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_controller_on_the_emulator() {
    prometheus_scenario(Cluster::emulated().await).await;
}

/// The same with the controller against a real cluster (`KUBECONFIG=… cargo test --test it
/// real_cluster -- --ignored`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: set KUBECONFIG and pass --ignored"]
async fn real_cluster_prometheus_scrapes_the_controller() {
    let _one_at_a_time = REAL_CLUSTER.lock().await;
    prometheus_scenario(Cluster::real().await).await;
}

fn event_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "Event"))
}

async fn prometheus_scenario(cluster: Cluster) {
    let Some(bin) = crate::monitoring::prometheus_bin() else {
        return;
    };
    let rendered = tempfile::tempdir().expect("tempdir");
    let Some(rules) = crate::monitoring::rules_with_test_values(rendered.path()) else {
        return;
    };
    tokio::time::timeout(TEST_LIMIT, async {
        let ids = install(&cluster).await;
        remove_integration(&cluster, "default", "datadog-prod").await;
        cluster
            .apply("whi.yaml", "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata:\n  name: datadog-prod\n  namespace: default\n  annotations:\n    hookwarden.dev/expected-interval: soon\nspec:\n  provider: datadog\n")
            .await;
        let port = crate::cluster_receiver::free_port();
        let addr = format!("127.0.0.1:{port}");
        let controller = start_controller_on(&cluster, &ids, 5, &addr);
        let logs = || controller.log();
        let prometheus = tokio::task::block_in_place(|| {
            crate::monitoring::Prometheus::start(&bin, "hookwarden-controller", &addr, &rules)
        });
        let value = |q: &str| {
            tokio::task::block_in_place(|| crate::monitoring::first_value(&prometheus.query(q)))
        };
        wait_for("reconciles in Prometheus", Duration::from_secs(60), &logs, || async {
            value(r#"hookwarden_controller_reconciles_total{job="hookwarden-controller"}"#)
                .is_some_and(|v| v >= 1.0)
                && value(r#"hookwarden_controller_leader{job="hookwarden-controller"}"#) == Some(1.0)
        })
        .await;
        assert_eq!(value(r#"up{job="hookwarden-controller"}"#), Some(1.0));
        // Through the core/v1 Events API, as `kubectl get events` reads them; this
        // integration's (a real cluster keeps Events of earlier runs for an hour).
        let uid = cluster
            .get(&whi_resource(), "default", "datadog-prod")
            .await
            .expect("the integration")["metadata"]["uid"]
            .clone();
        let invalid_annotation = || async {
            cluster.list(&event_resource(), "default", "").await.iter().any(|e| {
                e["reason"] == "InvalidAnnotation"
                    && e["type"] == "Warning"
                    && e["involvedObject"]["uid"] == uid
                    && e["message"].as_str().is_some_and(|m| {
                        m.contains("hookwarden.dev/expected-interval") && m.contains("\"soon\"")
                    })
            })
        };
        wait_for("the InvalidAnnotation Event", Duration::from_secs(30), &logs, invalid_annotation)
        .await;
        let alerts = tokio::task::block_in_place(|| prometheus.alerts());
        assert!(
            !alerts.iter().any(|(a, _, _)| a == "HookwardenReconcileErrors"),
            "a healthy controller raises no reconcile alert: {alerts:?}"
        );
        cluster
            .kubectl_ok(&["delete", "whi", "datadog-prod", "-n", "default", "--wait=true"])
            .await;
    })
    .await
    .expect("test finished in time");
}
