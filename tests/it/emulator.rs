//! The API-server emulator, checked the way our components and users meet it: through the real
//! `kubectl` (v1.34, pinned by `scripts/install-kube-tools.sh`) and through `kube-rs`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use hookwarden::crd::WebhookIntegration;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::core::GroupVersionKind;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube_emulator::{Emulator, Failure, RequestFilter};
use serde_json::{Value, json};

const CRD: &str = include_str!("../../crds/webhookintegrations.yaml");

/// Every test finishes well within this, even when the emulator misbehaves.
const TEST_LIMIT: Duration = Duration::from_secs(90);

/// The pinned kubectl: `HOOKWARDEN_KUBECTL` (set by the test command), else installed by
/// `scripts/install-kube-tools.sh`.
pub(crate) fn kubectl_binary() -> PathBuf {
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

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// The real kubectl with its own kubeconfig and discovery cache.
struct Kubectl {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Kubectl {
    fn with_kubeconfig(kubeconfig: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig).expect("write kubeconfig");
        Kubectl {
            bin: kubectl_binary(),
            dir,
        }
    }

    fn admin(emu: &Emulator) -> Self {
        Self::with_kubeconfig(&emu.kubeconfig())
    }

    fn file(&self, name: &str, content: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("write manifest");
        path.to_string_lossy().into_owned()
    }

    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .arg("--request-timeout=20s")
            .args(args)
            .env_remove("KUBECONFIG");
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("join kubectl")
            .expect("run kubectl");
        Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.ok,
            "kubectl {args:?} failed:\n{}\n{}",
            out.stdout, out.stderr
        );
        out.stdout
    }
}

fn whi_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("hookwarden.dev", "v1alpha1", "WebhookIntegration"),
        "webhookintegrations",
    )
}

async fn install_crd(emu: &Emulator) {
    let client = emu.client().await.expect("client");
    let crds: Api<DynamicObject> = Api::all_with(
        client,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let crd: DynamicObject = serde_yaml::from_str(CRD).expect("CRD YAML");
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("create CRD");
}

fn whi(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "hookwarden.dev/v1alpha1", "kind": "WebhookIntegration",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("object")
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn api_error(err: kube::Error) -> (u16, String, String) {
    match err {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_lists_with_printer_columns_and_explains() {
    tokio::time::timeout(TEST_LIMIT, async {
        let emu = Emulator::start().await.expect("start emulator");
        let kubectl = Kubectl::admin(&emu);

        let ns = kubectl.ok(&["get", "namespaces", "-o", "name"]).await;
        let mut names: Vec<&str> = ns.lines().collect();
        names.sort_unstable();
        assert_eq!(names, ["namespace/default", "namespace/kube-system"], "fresh cluster namespaces: {ns}");

        let crd = kubectl.file("crd.yaml", CRD);
        let out = kubectl.ok(&["apply", "-f", &crd]).await;
        assert!(out.contains("customresourcedefinition.apiextensions.k8s.io/webhookintegrations.hookwarden.dev created"), "{out}");

        let manifest = kubectl.file(
            "whi.yaml",
            "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata:\n  name: datadog-prod\nspec:\n  provider: datadog\n  allowedSourceRanges: [10.0.0.0/8]\n",
        );
        let out = kubectl.ok(&["apply", "-f", &manifest]).await;
        assert!(out.contains("webhookintegration.hookwarden.dev/datadog-prod created"), "{out}");

        // The controller would write this; do it through the status subresource.
        let api: Api<DynamicObject> = Api::namespaced_with(emu.client().await.expect("client"), "default", &whi_resource());
        let now = jiff::Timestamp::now().to_string();
        let status = json!({"apiVersion": "hookwarden.dev/v1alpha1", "kind": "WebhookIntegration", "status": {
            "url": "https://hooks.example.com/hooks/abc",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": "", "lastTransitionTime": now}],
            "incidents": {"open": 1, "openDisplay": "1"},
            "forwardingTotals": {"pending": 2, "deadLettered": 3},
            "deliveries": {"received": 1, "lastReceivedTime": now},
        }});
        api.patch_status("datadog-prod", &PatchParams::apply("test-controller"), &Patch::Apply(&status)).await.expect("status apply");

        let table = kubectl.ok(&["get", "whi"]).await;
        let mut lines = table.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(header, ["NAME", "PROVIDER", "READY", "OPEN", "LAST", "DELIVERY", "AGE"], "{table}");
        let row: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(&row[..4], ["datadog-prod", "datadog", "True", "1"], "{table}");
        assert!(row[4].ends_with('s'), "Last Delivery is an age: {table}");

        let wide = kubectl.ok(&["get", "webhookintegrations", "-o", "wide"]).await;
        assert!(wide.lines().next().unwrap_or_default().contains("URL"), "{wide}");
        assert!(wide.lines().next().unwrap_or_default().contains("DEAD LETTERS"), "{wide}");
        let wide_row: Vec<&str> = wide.lines().nth(1).unwrap_or_default().split_whitespace().collect();
        assert!(wide_row.contains(&"3"), "dead letters in -o wide: {wide}");
        assert!(wide.contains("https://hooks.example.com/hooks/abc"), "{wide}");
        let all_ns = kubectl.ok(&["get", "whi", "-A"]).await;
        assert!(all_ns.starts_with("NAMESPACE"), "{all_ns}");

        let explain = kubectl.ok(&["explain", "webhookintegration.spec.limits"]).await;
        assert!(explain.contains("KIND:       WebhookIntegration"), "{explain}");
        assert!(explain.contains("requestsPerSecond") && explain.contains("Requests allowed in a burst"), "{explain}");

        let patched = kubectl.ok(&["patch", "whi", "datadog-prod", "--type", "merge", "-p", r#"{"spec":{"suspend":true}}"#]).await;
        assert!(patched.contains("patched"), "{patched}");
        let json_out = kubectl.ok(&["get", "whi", "datadog-prod", "-o", "json"]).await;
        let obj: Value = serde_json::from_str(&json_out).expect("kubectl -o json");
        assert_eq!(obj["spec"]["suspend"], true);
        assert_eq!(obj["metadata"]["generation"], 2, "spec change bumps generation");
        assert_eq!(obj["status"]["incidents"]["open"], 1, "main-resource patch keeps status");

        let ssa = kubectl.ok(&["apply", "--server-side", "-f", &manifest]).await;
        assert!(ssa.contains("serverside-applied"), "{ssa}");

        let deleted = kubectl.ok(&["delete", "-f", &manifest]).await;
        assert!(deleted.contains("deleted"), "{deleted}");
        let gone = kubectl.run(&["get", "whi", "datadog-prod"]).await;
        assert!(!gone.ok && gone.stderr.contains("webhookintegrations.hookwarden.dev \"datadog-prod\" not found"), "{}", gone.stderr);
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_shows_schema_and_cel_rejections_like_the_api_server() {
    tokio::time::timeout(TEST_LIMIT, async {
        let emu = Emulator::start().await.expect("start emulator");
        install_crd(&emu).await;
        let kubectl = Kubectl::admin(&emu);
        let head = "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata:\n  name: bad\nspec:\n";

        let generic = kubectl.file("generic.yaml", &format!("{head}  provider: generic\n"));
        let out = kubectl.run(&["apply", "-f", &generic]).await;
        assert!(!out.ok);
        assert!(out.stderr.contains("The WebhookIntegration \"bad\" is invalid: spec.signature: Invalid value: spec.signature must be set when provider is generic, and only then"), "{}", out.stderr);

        let cidr = kubectl.file("cidr.yaml", &format!("{head}  provider: github\n  allowedSourceRanges: [10.0.0.0/8, not-a-cidr]\n"));
        let out = kubectl.run(&["apply", "-f", &cidr]).await;
        assert!(out.stderr.contains("spec.allowedSourceRanges: Invalid value: every allowedSourceRanges entry must be a CIDR"), "{}", out.stderr);

        let burst = kubectl.file("burst.yaml", &format!("{head}  provider: github\n  limits: {{burst: 0}}\n"));
        let out = kubectl.run(&["apply", "-f", &burst]).await;
        assert!(out.stderr.contains("spec.limits.burst: Invalid value: 0: spec.limits.burst in body should be greater than or equal to 1"), "{}", out.stderr);

        let provider = kubectl.file("provider.yaml", &format!("{head}  provider: carrier-pigeon\n"));
        let out = kubectl.run(&["apply", "-f", &provider]).await;
        assert!(out.stderr.contains("spec.provider: Unsupported value: \"carrier-pigeon\": supported values: \"github\""), "{}", out.stderr);

        // kubectl asks for strict field validation: an unknown field is an error ...
        let unknown = kubectl.file("unknown.yaml", &format!("{head}  provider: github\n  colour: blue\n"));
        let out = kubectl.run(&["apply", "-f", &unknown]).await;
        assert!(out.stderr.contains("unknown field \"spec.colour\""), "{}", out.stderr);
        // ... and without it the field is pruned, as on a real server.
        kubectl.ok(&["apply", "--validate=false", "-f", &unknown]).await;
        let spec = kubectl.ok(&["get", "whi", "bad", "-o", "jsonpath={.spec}"]).await;
        assert_eq!(serde_json::from_str::<Value>(&spec).expect("spec JSON"), json!({"provider": "github"}));

        // kube-rs creates without fieldValidation: pruned too, and defaults applied.
        let api: Api<DynamicObject> = Api::namespaced_with(emu.client().await.expect("client"), "default", &whi_resource());
        let created = api
            .create(&PostParams::default(), &whi("gen", json!({"provider": "generic", "signature": {"header": "X-Sig", "algorithm": "sha256", "encoding": "hex"}, "extra": 1})))
            .await
            .expect("create generic");
        assert!(created.data["spec"].get("extra").is_none(), "unknown field pruned");
        assert_eq!(created.data["spec"]["signature"]["signedContent"], "{body}", "schema default applied");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_concurrency_generation_and_status_separation() {
    tokio::time::timeout(TEST_LIMIT, async {
        let emu = Emulator::start().await.expect("start emulator");
        install_crd(&emu).await;
        let api: Api<DynamicObject> = Api::namespaced_with(
            emu.client().await.expect("client"),
            "default",
            &whi_resource(),
        );
        let first = api
            .create(
                &PostParams::default(),
                &whi("a", json!({"provider": "github"})),
            )
            .await
            .expect("create");
        assert_eq!(first.metadata.generation, Some(1));

        let mut changed = first.clone();
        changed.data["spec"]["suspend"] = json!(true);
        let second = api
            .replace("a", &PostParams::default(), &changed)
            .await
            .expect("replace");
        assert_eq!(second.metadata.generation, Some(2));
        assert!(
            second
                .metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
                > first
                    .metadata
                    .resource_version
                    .as_deref()
                    .and_then(|v| v.parse::<u64>().ok())
        );

        // Replacing from the stale copy is refused.
        let (code, reason, message) = api_error(
            api.replace("a", &PostParams::default(), &first)
                .await
                .expect_err("stale replace"),
        );
        assert_eq!((code, reason.as_str()), (409, "Conflict"));
        assert!(
            message.contains("the object has been modified"),
            "{message}"
        );

        // kubectl replace with the stale copy says the same.
        let kubectl = Kubectl::admin(&emu);
        let stale = kubectl.file("stale.json", &serde_json::to_string(&first).expect("json"));
        let out = kubectl.run(&["replace", "-f", &stale]).await;
        assert!(!out.ok && out.stderr.contains("Operation cannot be fulfilled on webhookintegrations.hookwarden.dev \"a\": the object has been modified; please apply your changes to the latest version and try again"), "{}", out.stderr);

        // Status writes do not bump generation and main writes cannot touch status.
        let status = Patch::Merge(json!({"status": {"observedGeneration": 2}}));
        let after_status = api
            .patch_status("a", &PatchParams::default(), &status)
            .await
            .expect("status patch");
        assert_eq!(after_status.metadata.generation, Some(2));
        let main_with_status = Patch::Merge(
            json!({"status": {"observedGeneration": 99}, "metadata": {"labels": {"team": "x"}}}),
        );
        let after_main = api
            .patch("a", &PatchParams::default(), &main_with_status)
            .await
            .expect("main patch");
        assert_eq!(after_main.data["status"]["observedGeneration"], 2);
        assert_eq!(
            after_main.metadata.generation,
            Some(2),
            "label change is not a spec change"
        );
        let by_label = api
            .list(&ListParams::default().labels("team=x"))
            .await
            .expect("list by label");
        assert_eq!(by_label.items.len(), 1);
        let by_field = api
            .list(&ListParams::default().fields("metadata.name=nope"))
            .await
            .expect("list by field");
        assert!(by_field.items.is_empty());
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_keeps_two_managers_apart_and_reports_conflicts() {
    tokio::time::timeout(TEST_LIMIT, async {
        let emu = Emulator::start().await.expect("start emulator");
        install_crd(&emu).await;
        let api: Api<DynamicObject> = Api::namespaced_with(emu.client().await.expect("client"), "default", &whi_resource());
        api.create(&PostParams::default(), &whi("shared", json!({"provider": "datadog"}))).await.expect("create");
        let head = json!({"apiVersion": "hookwarden.dev/v1alpha1", "kind": "WebhookIntegration"});
        let with_status = |status: Value| {
            let mut v = head.clone();
            v["status"] = status;
            v
        };
        let now = jiff::Timestamp::now().to_string();
        let controller = with_status(json!({"observedGeneration": 1, "url": "https://x/hooks/a", "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": "", "lastTransitionTime": now}]}));
        api.patch_status("shared", &PatchParams::apply("hookwarden-controller"), &Patch::Apply(&controller)).await.expect("controller apply");
        let receiver = with_status(json!({"deliveries": {"received": 5, "accepted": 5}, "incidents": {"open": 1}}));
        api.patch_status("shared", &PatchParams::apply("hookwarden-receiver"), &Patch::Apply(&receiver)).await.expect("receiver apply");
        // The controller applies again without the receiver's fields: they stay.
        let controller2 = with_status(json!({"observedGeneration": 1, "url": "https://x/hooks/a", "conditions": [{"type": "Ready", "status": "False", "reason": "RouteMissing", "message": "", "lastTransitionTime": now}]}));
        let obj = api.patch_status("shared", &PatchParams::apply("hookwarden-controller"), &Patch::Apply(&controller2)).await.expect("controller re-apply");
        assert_eq!(obj.data["status"]["deliveries"]["received"], 5);
        assert_eq!(obj.data["status"]["incidents"]["open"], 1);
        assert_eq!(obj.data["status"]["conditions"][0]["status"], "False");
        let managers: Vec<String> = obj.metadata.managed_fields.unwrap_or_default().into_iter().filter_map(|m| m.manager).collect();
        assert!(managers.contains(&"hookwarden-controller".to_string()) && managers.contains(&"hookwarden-receiver".to_string()), "{managers:?}");

        // The receiver claiming the controller's url conflicts ...
        let grab = with_status(json!({"url": "https://evil/hooks/b"}));
        let (code, reason, message) = api_error(api.patch_status("shared", &PatchParams::apply("hookwarden-receiver"), &Patch::Apply(&grab)).await.expect_err("conflict"));
        assert_eq!((code, reason.as_str()), (409, "Conflict"));
        // As kube-apiserver prints the manager (`managedfields/internal/conflict.go`).
        assert_eq!(message, "Apply failed with 1 conflict: conflict with \"hookwarden-controller\" with subresource \"status\": .status.url");
        // ... unless forced.
        let forced = api.patch_status("shared", &PatchParams::apply("hookwarden-receiver").force(), &Patch::Apply(&grab)).await.expect("forced");
        assert_eq!(forced.data["status"]["url"], "https://evil/hooks/b");

        // The same through kubectl: a second manager changing spec.provider gets 409.
        let kubectl = Kubectl::admin(&emu);
        let manifest = kubectl.file("other.yaml", "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata:\n  name: shared\nspec:\n  provider: github\n");
        let out = kubectl.run(&["apply", "--server-side", "--field-manager", "platform-team", "-f", &manifest]).await;
        assert!(!out.ok && out.stderr.contains("Apply failed with 1 conflict") && out.stderr.contains(".spec.provider"), "{}", out.stderr);
        kubectl.ok(&["apply", "--server-side", "--force-conflicts", "--field-manager", "platform-team", "-f", &manifest]).await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_relists_after_410_and_watcher_resumes() {
    tokio::time::timeout(TEST_LIMIT, async {
        let emu = Emulator::start().await.expect("start emulator");
        install_crd(&emu).await;
        let client = emu.client().await.expect("client");
        let api: Api<WebhookIntegration> = Api::namespaced(client.clone(), "default");
        let raw: Api<DynamicObject> = Api::namespaced_with(client, "default", &whi_resource());
        raw.create(
            &PostParams::default(),
            &whi("one", json!({"provider": "github"})),
        )
        .await
        .expect("create one");

        let (reader, writer) = reflector::store();
        let stream = reflector(writer, watcher(api, watcher::Config::default().timeout(30)))
            .applied_objects();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                // Errors (the 410) are what the watcher recovers from; keep polling.
                let _ = item;
            }
        });
        eventually("initial list", || {
            reader
                .get(&reflector::ObjectRef::new("one").within("default"))
                .is_some()
        })
        .await;
        // An object created now can only arrive through the watch: after this, a watch is open.
        raw.create(
            &PostParams::default(),
            &whi("zero", json!({"provider": "github"})),
        )
        .await
        .expect("create zero");
        eventually("watch established", || {
            reader
                .get(&reflector::ObjectRef::new("zero").within("default"))
                .is_some()
        })
        .await;
        let lists_before = emu.count(
            &RequestFilter::new()
                .verb("list")
                .resource("webhookintegrations"),
        );

        emu.expire_watches();
        raw.create(
            &PostParams::default(),
            &whi("two", json!({"provider": "gitlab"})),
        )
        .await
        .expect("create two");
        eventually("object created after the 410", || {
            reader
                .get(&reflector::ObjectRef::new("two").within("default"))
                .is_some()
        })
        .await;
        let lists_after = emu.count(
            &RequestFilter::new()
                .verb("list")
                .resource("webhookintegrations"),
        );
        assert!(
            lists_after > lists_before,
            "the reflector relisted after 410 ({lists_before} -> {lists_after})"
        );

        // Resuming from a compacted version is refused with 410 for a plain watch too.
        let old_rv = "1";
        let dynamic: Api<DynamicObject> = Api::namespaced_with(
            emu.client().await.expect("client"),
            "default",
            &whi_resource(),
        );
        let mut events = dynamic
            .watch(&kube::api::WatchParams::default().timeout(5), old_rv)
            .await
            .expect("watch")
            .boxed();
        match events.next().await {
            Some(Ok(kube::api::WatchEvent::Error(e))) => assert_eq!(e.code, 410),
            Some(Err(kube::Error::Api(e))) => assert_eq!(e.code, 410),
            other => panic!("expected 410 Gone, got {other:?}"),
        }

        // Deletes reach the reflector too.
        raw.delete("one", &DeleteParams::default())
            .await
            .expect("delete one");
        eventually("delete observed", || {
            reader
                .get(&reflector::ObjectRef::new("one").within("default"))
                .is_none()
        })
        .await;
        task.abort();
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_forbids_service_accounts_until_a_role_allows_them() {
    tokio::time::timeout(TEST_LIMIT, async {
        let emu = Emulator::start().await.expect("start emulator");
        install_crd(&emu).await;
        let admin = emu.client().await.expect("admin client");
        let sa = emu.client_for_service_account("default", "hookwarden-receiver").await.expect("sa client");
        let as_sa: Api<DynamicObject> = Api::namespaced_with(sa, "default", &whi_resource());
        let as_admin: Api<DynamicObject> = Api::namespaced_with(admin.clone(), "default", &whi_resource());
        as_admin.create(&PostParams::default(), &whi("w", json!({"provider": "github"}))).await.expect("create");

        let (code, reason, message) = api_error(as_sa.list(&ListParams::default()).await.expect_err("forbidden"));
        assert_eq!((code, reason.as_str()), (403, "Forbidden"));
        assert_eq!(message, "webhookintegrations.hookwarden.dev is forbidden: User \"system:serviceaccount:default:hookwarden-receiver\" cannot list resource \"webhookintegrations\" in API group \"hookwarden.dev\" in the namespace \"default\"");

        let kubectl = Kubectl::admin(&emu);
        let rbac = kubectl.file(
            "rbac.yaml",
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: status-writer\nrules:\n- apiGroups: [hookwarden.dev]\n  resources: [webhookintegrations]\n  verbs: [get, list, watch]\n- apiGroups: [hookwarden.dev]\n  resources: [webhookintegrations/status]\n  verbs: [patch]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: receiver\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: status-writer\nsubjects:\n- kind: ServiceAccount\n  name: hookwarden-receiver\n  namespace: default\n",
        );
        kubectl.ok(&["apply", "-f", &rbac]).await;

        assert_eq!(as_sa.list(&ListParams::default()).await.expect("list allowed").items.len(), 1);
        as_sa.patch_status("w", &PatchParams::default(), &Patch::Merge(json!({"status": {"observedGeneration": 1}}))).await.expect("status patch allowed");
        let (code, _, message) = api_error(as_sa.patch("w", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": true}}))).await.expect_err("spec patch forbidden"));
        assert_eq!(code, 403);
        assert!(message.contains("cannot patch resource \"webhookintegrations\""), "{message}");
        let other_ns: Api<DynamicObject> = Api::namespaced_with(emu.client_for_service_account("default", "hookwarden-receiver").await.expect("sa"), "kube-system", &whi_resource());
        assert_eq!(api_error(other_ns.list(&ListParams::default()).await.expect_err("other namespace")).0, 403);

        // kubectl with the ServiceAccount's kubeconfig sees the same.
        let sa_kubectl = Kubectl::with_kubeconfig(&emu.kubeconfig_for_service_account("default", "hookwarden-receiver"));
        sa_kubectl.ok(&["get", "whi"]).await;
        let out = sa_kubectl.run(&["get", "secrets"]).await;
        assert!(!out.ok && out.stderr.contains("Error from server (Forbidden): secrets is forbidden"), "{}", out.stderr);
        assert!(emu.count(&RequestFilter::new().caller("system:serviceaccount:default:hookwarden-receiver").verb("patch").subresource("status")) == 1);

        // `kubectl auth can-i` and `--as` impersonation answer from the same rules.
        let sa = "--as=system:serviceaccount:default:hookwarden-receiver";
        assert_eq!(kubectl.run(&["auth", "can-i", "patch", "webhookintegrations", "--subresource=status", sa]).await.stdout.trim(), "yes");
        assert_eq!(kubectl.run(&["auth", "can-i", "delete", "webhookintegrations", sa]).await.stdout.trim(), "no");
        assert_eq!(kubectl.run(&["auth", "can-i", "list", "webhookintegrations", "-n", "kube-system", sa]).await.stdout.trim(), "no");
        let out = kubectl.run(&["get", "secrets", sa]).await;
        assert!(!out.ok && out.stderr.contains("cannot list resource \"secrets\""), "{}", out.stderr);
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_fail_pause_and_counters() {
    tokio::time::timeout(TEST_LIMIT, async {
        let emu = Emulator::start().await.expect("start emulator");
        let client = emu.client().await.expect("client");
        let cms: Api<DynamicObject> = Api::namespaced_with(client, "default", &ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "ConfigMap")));
        let cm: DynamicObject = serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}})).expect("cm");
        cms.create(&PostParams::default(), &cm).await.expect("create");

        emu.fail(Failure::status(500).times(1).matching(RequestFilter::new().verb("get")));
        assert_eq!(api_error(cms.get("c").await.expect_err("injected 500")).0, 500);
        cms.get("c").await.expect("served again after one failure");
        // kube-rs retries 503 on its own: two injected 503s cost two extra requests, no error.
        emu.fail(Failure::status(503).times(2).matching(RequestFilter::new().verb("get")));
        cms.get("c").await.expect("kube-rs retried past the 503s");

        emu.fail(Failure::status(429).retry_after(7).for_duration(Duration::from_secs(30)));
        let raw = reqwest_like_get(&emu, "/api/v1/namespaces/default/configmaps/c").await;
        assert!(raw.starts_with("HTTP/1.1 429"), "{raw}");
        assert!(raw.to_ascii_lowercase().contains("retry-after: 7"), "{raw}");
        emu.clear_failures();

        emu.pause();
        let pending = tokio::spawn({
            let cms = cms.clone();
            async move { cms.get("c").await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!pending.is_finished(), "requests hang while paused");
        emu.resume();
        pending.await.expect("join").expect("served after resume");

        // Pausing one caller leaves the others served.
        emu.pause_matching(RequestFilter::new().caller("system:serviceaccount:default:stuck"));
        let stuck: Api<DynamicObject> = Api::namespaced_with(emu.client_for_service_account("default", "stuck").await.expect("sa client"), "default", &ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "ConfigMap")));
        let hanging = tokio::spawn(async move { stuck.get("c").await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!hanging.is_finished(), "the paused caller hangs");
        cms.get("c").await.expect("other callers are served during a targeted pause");
        emu.resume();
        let answer = hanging.await.expect("join");
        assert_eq!(api_error(answer.expect_err("no RBAC for the stuck SA")).0, 403, "served (and judged) after resume");

        let gets = emu.count(&RequestFilter::new().verb("get").resource("configmaps").caller("kubernetes-admin"));
        assert_eq!(gets, 8, "500 + ok + 503 + 503 + ok + 429 + after pause + during targeted pause: {:?}", emu.requests());
        assert_eq!(emu.count(&RequestFilter::new().verb("create").resource("configmaps")), 1);
    })
    .await
    .expect("test finished in time");
}

/// A bare HTTP/1.1 GET over TLS, to see status line and headers exactly as sent.
async fn reqwest_like_get(emu: &Emulator, path: &str) -> String {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls_pemfile_der(emu.ca_pem());
    roots.add(ca).expect("CA");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("tls versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(emu.addr())
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("tls");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        emu.admin_token()
    );
    tls.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    // A close_notify-less shutdown is an error for rustls; the bytes read so far are what count.
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn rustls_pemfile_der(pem: &str) -> rustls::pki_types::CertificateDer<'static> {
    use base64::Engine;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    rustls::pki_types::CertificateDer::from(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("CA base64"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_owner_references_and_namespace_deletion() {
    tokio::time::timeout(TEST_LIMIT, async {
        let emu = Emulator::start().await.expect("start emulator");
        install_crd(&emu).await;
        let client = emu.client().await.expect("client");
        let kubectl = Kubectl::admin(&emu);
        kubectl.ok(&["apply", "-f", &kubectl.file("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: payments\n")]).await;
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "payments", &whi_resource());
        let mut obj = whi("fin", json!({"provider": "github"}));
        obj.metadata.finalizers = Some(vec!["hookwarden.dev/route".into()]);
        let owner = api.create(&PostParams::default(), &obj).await.expect("create");

        let secrets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "payments", &ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "Secret")));
        let secret: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "fin-webhook", "ownerReferences": [{"apiVersion": "hookwarden.dev/v1alpha1", "kind": "WebhookIntegration", "name": "fin", "uid": owner.metadata.uid, "controller": true}]},
            "stringData": {"token": "s3cret"},
        }))
        .expect("secret");
        let stored = secrets.create(&PostParams::default(), &secret).await.expect("create secret");
        assert_eq!(stored.data["data"]["token"], "czNjcmV0", "stringData is folded into data");

        api.delete("fin", &DeleteParams::default()).await.expect("delete");
        let terminating = api.get("fin").await.expect("still there while finalizer remains");
        assert!(terminating.metadata.deletion_timestamp.is_some());
        api.patch("fin", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.expect("drop finalizer");
        assert_eq!(api_error(api.get("fin").await.expect_err("gone")).0, 404);

        let mut owned_gone = false;
        for _ in 0..100 {
            if emu.object("secrets", "payments", "fin-webhook").is_none() {
                owned_gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(owned_gone, "garbage collector deleted the owned Secret");

        api.create(&PostParams::default(), &whi("other", json!({"provider": "github"}))).await.expect("create other");
        let out = kubectl.ok(&["delete", "namespace", "payments"]).await;
        assert!(out.contains("namespace \"payments\" deleted"), "{out}");
        eventually("namespace removed with its objects", || emu.object("namespaces", "", "payments").is_none() && emu.objects("webhookintegrations.hookwarden.dev").is_empty()).await;
    })
    .await
    .expect("test finished in time");
}

fn helm_binary() -> PathBuf {
    match std::env::var("HOOKWARDEN_HELM") {
        Ok(path) => PathBuf::from(path),
        Err(_) => kubectl_binary().with_file_name("helm"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_kubectl_commands_and_helm_releases_work() {
    tokio::time::timeout(TEST_LIMIT, async {
        let emu = Emulator::start().await.expect("start emulator");
        let kubectl = Kubectl::admin(&emu);
        // These typed commands send protobuf bodies.
        kubectl.ok(&["create", "namespace", "payments"]).await;
        kubectl.ok(&["-n", "payments", "create", "secret", "generic", "token", "--from-literal=token=abc"]).await;
        kubectl.ok(&["-n", "payments", "create", "serviceaccount", "bot"]).await;
        kubectl.ok(&["-n", "payments", "create", "role", "read-secrets", "--verb=get,list", "--resource=secrets"]).await;
        kubectl.ok(&["-n", "payments", "create", "rolebinding", "bot", "--role=read-secrets", "--serviceaccount=payments:bot"]).await;
        let bad = kubectl.run(&["create", "namespace", "Bad_Name"]).await;
        assert!(!bad.ok && bad.stderr.contains("The Namespace \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 label"), "{}", bad.stderr);
        let secret = emu.object("secrets", "payments", "token").expect("secret stored");
        assert_eq!(secret["data"]["token"], "YWJj");
        assert_eq!(secret["type"], "Opaque");
        let bot = Kubectl::with_kubeconfig(&emu.kubeconfig_for_service_account("payments", "bot"));
        assert_eq!(bot.ok(&["get", "secret", "token", "-o", "jsonpath={.data.token}"]).await, "YWJj");

        // Helm 4 (server-side apply, release Secrets through the typed client).
        let chart = kubectl.dir.path().join("chart");
        std::fs::create_dir_all(chart.join("templates")).expect("chart dir");
        std::fs::write(chart.join("Chart.yaml"), "apiVersion: v2\nname: demo\nversion: 0.1.0\n").expect("Chart.yaml");
        std::fs::write(
            chart.join("templates/all.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\ndata:\n  replicas: \"{{ .Values.replicas | default 1 }}\"\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: demo\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: demo}}\n  template:\n    metadata: {labels: {app: demo}}\n    spec:\n      containers: [{name: demo, image: busybox}]\n",
        )
        .expect("template");
        let helm = |args: Vec<String>| {
            let mut cmd = Command::new(helm_binary());
            cmd.arg("--kubeconfig").arg(kubectl.dir.path().join("kubeconfig")).args(args).env_remove("KUBECONFIG").env("HELM_CACHE_HOME", kubectl.dir.path().join("helm-cache")).env("HELM_CONFIG_HOME", kubectl.dir.path().join("helm-config")).env("HELM_DATA_HOME", kubectl.dir.path().join("helm-data"));
            async move {
                let out = tokio::task::spawn_blocking(move || cmd.output()).await.expect("join").expect("run helm");
                assert!(out.status.success(), "helm failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        };
        let chart_path = chart.to_string_lossy().into_owned();
        helm(vec!["install".into(), "demo".into(), chart_path.clone(), "-n".into(), "payments".into(), "--timeout".into(), "30s".into()]).await;
        assert!(emu.object("deployments.apps", "payments", "demo").is_some());
        helm(vec!["upgrade".into(), "demo".into(), chart_path, "-n".into(), "payments".into(), "--set".into(), "replicas=3".into()]).await;
        assert_eq!(emu.object("configmaps", "payments", "demo").expect("cm")["data"]["replicas"], "3");
        assert!(kubectl.ok(&["-n", "payments", "scale", "deployment", "demo", "--replicas=4"]).await.contains("scaled"));
        assert_eq!(emu.object("deployments.apps", "payments", "demo").expect("deployment")["spec"]["replicas"], 4);
        // As on a real cluster, helm's next server-side apply of replicas now conflicts with kubectl's scale.
        let list = helm(vec!["list".into(), "-n".into(), "payments".into()]).await;
        assert!(list.contains("demo") && list.contains("deployed"), "{list}");
        helm(vec!["uninstall".into(), "demo".into(), "-n".into(), "payments".into()]).await;
        assert!(emu.object("deployments.apps", "payments", "demo").is_none());
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_events_show_in_kubectl_and_streaming_lists_work() {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    tokio::time::timeout(TEST_LIMIT, async {
        let emu = Emulator::start().await.expect("start emulator");
        install_crd(&emu).await;
        let client = emu.client().await.expect("client");
        let api: Api<WebhookIntegration> = Api::namespaced(client.clone(), "default");
        let raw: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), "default", &whi_resource());
        raw.create(
            &PostParams::default(),
            &whi("ev", json!({"provider": "github"})),
        )
        .await
        .expect("create");
        let obj = api.get("ev").await.expect("get typed");

        // kube-rs' Recorder writes events.k8s.io/v1; kubectl reads core/v1: one resource.
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "hookwarden-controller".into(),
                instance: None,
            },
        );
        let reference = kube::Resource::object_ref(&obj, &());
        let event = Event {
            type_: EventType::Warning,
            reason: "SecretMissing".into(),
            note: Some("Secret default/nope not found".into()),
            action: "Reconcile".into(),
            secondary: None,
        };
        recorder.publish(&event, &reference).await.expect("publish");
        recorder
            .publish(&event, &reference)
            .await
            .expect("publish again (series)");
        let kubectl = Kubectl::admin(&emu);
        let events = kubectl.ok(&["get", "events"]).await;
        let header: Vec<&str> = events
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
            "{events}"
        );
        assert!(
            events.contains("Warning")
                && events.contains("SecretMissing")
                && events.contains("webhookintegration/ev")
                && events.contains("Secret default/nope not found"),
            "{events}"
        );
        let describe = kubectl.ok(&["describe", "whi", "ev"]).await;
        assert!(
            describe.contains("SecretMissing"),
            "kubectl describe lists the object's events:\n{describe}"
        );

        // A watcher using streaming lists (sendInitialEvents + initial-events-end bookmark).
        let (reader, writer) = reflector::store();
        let stream = reflector(
            writer,
            watcher(
                api,
                watcher::Config::default().streaming_lists().timeout(30),
            ),
        )
        .applied_objects();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while stream.next().await.is_some() {}
        });
        eventually("streaming list delivers the object", || {
            reader
                .get(&reflector::ObjectRef::new("ev").within("default"))
                .is_some()
        })
        .await;
        assert!(
            emu.count(
                &RequestFilter::new()
                    .verb("list")
                    .resource("webhookintegrations")
            ) == 0,
            "no list call with streaming lists"
        );
        raw.create(
            &PostParams::default(),
            &whi("ev2", json!({"provider": "github"})),
        )
        .await
        .expect("create ev2");
        eventually("watch after the initial events", || {
            reader
                .get(&reflector::ObjectRef::new("ev2").within("default"))
                .is_some()
        })
        .await;
        task.abort();
    })
    .await
    .expect("test finished in time");
}

/// Every invalid example the README lists (tests/fixtures/invalid/*.yaml, each with an
/// `# expect:` line) is refused by `kubectl apply` with that message, and a valid example
/// next to it is accepted — so the table in the README stays true.
#[tokio::test]
async fn readme_invalid_examples_are_rejected_by_the_crd() {
    tokio::time::timeout(TEST_LIMIT, async {
        let emu = Emulator::start().await.expect("emulator");
        install_crd(&emu).await;
        let kubectl = Kubectl::admin(&emu);
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/invalid");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .expect("fixtures dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        assert!(files.len() >= 7, "fixtures missing: {files:?}");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("fixture");
            let expect = text
                .lines()
                .find_map(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{} has no '# expect:' line", file.display()));
            let path = file.to_string_lossy().into_owned();
            let out = kubectl.run(&["apply", "-n", "default", "-f", &path]).await;
            assert!(!out.ok, "{} was accepted:\n{}", file.display(), out.stdout);
            assert!(
                out.stderr.contains(expect),
                "{}: expected {expect:?} in:\n{}",
                file.display(),
                out.stderr
            );
        }
        let valid = kubectl.file(
            "valid.yaml",
            "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata: {name: ok}\nspec:\n  provider: generic\n  allowedSourceRanges: [10.0.0.0/8, \"2001:db8::/32\"]\n  signature: {header: X-Sig, algorithm: sha256, encoding: hex, signedContent: \"{timestamp}.{body}\", timestampHeader: X-Ts}\n",
        );
        kubectl.ok(&["apply", "-n", "default", "-f", &valid]).await;
    })
    .await
    .expect("test finished in time");
}
