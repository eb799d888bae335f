//! Scale benchmark against the API-server emulator (DESIGN.md, "Performance and scale
//! targets"): N integrations applied → all Ready (target: 1,000 in ≤ 10 s), and how soon a
//! new or changed route serves (target: ≤ 1 s).
//!
//! The emulator runs in this process; `hookwarden controller` and one `hookwarden
//! receiver` (this build's binary) run as child processes under their ServiceAccounts with
//! exactly the RBAC of `manifests/install.yaml`, as the end-to-end tests run them. The
//! controller leads before anything is applied (a running installation already has a
//! leader). `cargo bench --bench scale -- --help`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt as _;
use hookwarden::crd::ProviderKind;
use hookwarden::crd::WebhookIntegration;
use hookwarden::domain::signature::{Scheme, SignInput, sign};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube_emulator::Emulator;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[derive(Parser, Debug)]
#[command(
    about = "Apply many WebhookIntegrations to the API-server emulator; time Ready and route serving"
)]
struct Args {
    /// Integrations applied at once (GitHub, generated secrets).
    #[arg(long, default_value_t = 1000)]
    integrations: usize,
    /// Creates in flight at a time.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// New integrations (and then secret rotations) timed one by one until they serve.
    #[arg(long, default_value_t = 10)]
    probes: usize,
    /// Give up waiting for Ready after this many seconds.
    #[arg(long, default_value_t = 120)]
    limit_seconds: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

const NAMESPACE: &str = "default";
const PROBE_SECRET: &str = "scale-probe-secret";

/// A child process killed when the bench ends, whatever happens.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[path = "../tests/support/install_rbac.rs"]
mod install_rbac;

/// Server-side applies a document whose kind's plural is its lowercase name plus "s"
/// (true of every kind applied here).
async fn apply(client: &kube::Client, doc: &Value) -> Result<(), Box<dyn std::error::Error>> {
    let (group, version) = match doc["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .split_once('/')
    {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (
            String::new(),
            doc["apiVersion"].as_str().unwrap_or_default().to_string(),
        ),
    };
    let kind = doc["kind"].as_str().unwrap_or_default();
    let plural = format!("{}s", kind.to_ascii_lowercase());
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(&group, &version, kind), &plural);
    let name = doc["metadata"]["name"].as_str().unwrap_or_default();
    let api: Api<DynamicObject> = match doc["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.patch(
        name,
        &PatchParams::apply("scale-bench").force(),
        &Patch::Apply(doc),
    )
    .await?;
    Ok(())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18080)
}

fn spawn(
    args: &[&str],
    kubeconfig: &Path,
    log: &Path,
) -> Result<Process, Box<dyn std::error::Error>> {
    let log = std::fs::File::create(log)?;
    let child = Command::new(env!("CARGO_BIN_EXE_hookwarden"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()?;
    Ok(Process(child))
}

fn ready(wi: &WebhookIntegration) -> bool {
    wi.status
        .as_ref()
        .map(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .unwrap_or(false)
}

fn integration(name: &str, secret_ref: bool) -> Result<WebhookIntegration, serde_json::Error> {
    let mut spec = json!({"provider": "github"});
    if secret_ref {
        spec["secretRef"] = json!({"name": PROBE_SECRET, "key": "secret"});
        spec["previousSecretTTL"] = json!("0s");
    }
    serde_json::from_value(json!({
        "apiVersion": "hookwarden.dev/v1alpha1",
        "kind": "WebhookIntegration",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }))
}

/// One signed GitHub delivery over a fresh connection; the status code (0: no answer).
async fn deliver(port: u16, path: &str, secret: &str, id: &str) -> u16 {
    let body = json!({"ref": "refs/heads/main", "zen": id}).to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let input = SignInput {
        body: body.as_bytes(),
        url: "",
        timestamp: now,
        id,
        content_type: "application/json",
    };
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\nx-github-event: push\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in
        sign(&Scheme::preset(ProviderKind::Github), secret, &input).unwrap_or_default()
    {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let line = String::from_utf8_lossy(&answer);
        line.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// Polls `check` every 10 ms until it holds or `limit` passes; the time it took.
async fn time_until<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir()?;
    let emu = Emulator::start().await?;
    let admin = emu.client().await?;

    // The CRD and the install manifest's RBAC, then the components as their ServiceAccounts.
    let crd: Value = serde_yaml::from_str(&std::fs::read_to_string(
        repo.join("crds/webhookintegrations.yaml"),
    )?)?;
    apply(&admin, &crd).await?;
    let rbac = install_rbac::install_rbac(&repo.join("manifests/install.yaml"))
        .ok_or("manifests/install.yaml names no controller or receiver ServiceAccount")?;
    for doc in &rbac.docs {
        apply(&admin, doc).await?;
    }
    let kubeconfig = |sa: &str, file: &str| -> Result<PathBuf, std::io::Error> {
        let path = dir.path().join(file);
        std::fs::write(
            &path,
            emu.kubeconfig_for_service_account(&rbac.namespace, sa),
        )?;
        Ok(path)
    };
    let controller_kc = kubeconfig(&rbac.controller_sa, "controller.kubeconfig")?;
    let receiver_kc = kubeconfig(&rbac.receiver_sa, "receiver.kubeconfig")?;
    let controller_caller = format!(
        "system:serviceaccount:{}:{}",
        rbac.namespace, rbac.controller_sa
    );
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let controller_log = dir.path().join("controller.log");
    let _controller = spawn(
        &[
            "controller",
            "--namespace",
            &rbac.namespace,
            "--metrics-addr",
            "127.0.0.1:0",
            "--external-base-url",
            &base,
            "--log-format",
            "text",
            "--identity",
            "scale-controller",
        ],
        &controller_kc,
        &controller_log,
    )?;
    let journal = dir.path().join("journal");
    let listen = format!("127.0.0.1:{port}");
    let _receiver = spawn(
        &[
            "receiver",
            "--listen",
            &listen,
            "--metrics-addr",
            "127.0.0.1:0",
            "--namespace",
            &rbac.namespace,
            "--log-format",
            "text",
            "--journal-dir",
            &journal.to_string_lossy(),
        ],
        &receiver_kc,
        &dir.path().join("receiver.log"),
    )?;
    let lease = || {
        emu.object(
            "leases.coordination.k8s.io",
            &rbac.namespace,
            "hookwarden-controller",
        )
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    };
    let leading = time_until(Duration::from_secs(30), || async { lease().is_some() }).await;
    if leading.is_none() {
        return Err(format!(
            "the controller did not take the lease:\n{}",
            std::fs::read_to_string(&controller_log).unwrap_or_default()
        )
        .into());
    }
    // The route watch starts with the controller's first list; give the receiver a moment.
    let _ = time_until(Duration::from_secs(30), || async {
        deliver(port, "/hooks/none", "x", "warmup").await == 404
    })
    .await;

    let api: Api<WebhookIntegration> = Api::namespaced(admin.clone(), NAMESPACE);
    let before = emu.requests().len();
    println!(
        "scale: {} GitHub integrations with generated secrets on the API-server emulator; controller and one receiver as this build's binaries with the chart's RBAC; {} creates in flight",
        args.integrations, args.concurrency
    );

    // 1. N integrations at once: time until every one is Ready.
    let start = Instant::now();
    let creates = futures::stream::iter(0..args.integrations)
        .map(|i| {
            let api = api.clone();
            async move {
                let wi = integration(&format!("scale-{i:05}"), false)?;
                api.create(&PostParams::default(), &wi).await?;
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            }
        })
        .buffer_unordered(args.concurrency.max(1));
    let poller = async {
        let mut ready_at: Vec<Option<Duration>> = vec![None; args.integrations];
        let (mut polls, mut slowest) = (0u32, Duration::ZERO);
        loop {
            let asked = Instant::now();
            let listed = api.list(&ListParams::default()).await;
            polls += 1;
            slowest = slowest.max(asked.elapsed());
            if let Ok(list) = listed {
                // Judged at the time of asking: Ready then or earlier.
                let now = asked - start;
                for wi in list.items.iter().filter(|wi| ready(wi)) {
                    let index = wi
                        .metadata
                        .name
                        .as_deref()
                        .and_then(|n| n.strip_prefix("scale-"))
                        .and_then(|n| n.parse::<usize>().ok());
                    if let Some(slot) = index.and_then(|i| ready_at.get_mut(i)) {
                        slot.get_or_insert(now);
                    }
                }
            }
            if ready_at.iter().all(Option::is_some)
                || start.elapsed() > Duration::from_secs(args.limit_seconds)
            {
                return (ready_at, polls, slowest);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (created, (ready_at, polls, slowest)) = tokio::join!(
        async {
            let results: Vec<_> = creates.collect().await;
            (
                start.elapsed(),
                results.iter().filter(|r| r.is_err()).count(),
            )
        },
        poller
    );
    let (created_in, create_errors) = created;
    let mut times: Vec<Duration> = ready_at.iter().flatten().copied().collect();
    times.sort();
    let all_ready = ready_at.iter().all(Option::is_some);
    // What the controller asked the API server for them, by kind of request.
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    let mut controller_requests = 0;
    for r in emu
        .requests()
        .iter()
        .skip(before)
        .filter(|r| r.caller == controller_caller)
    {
        controller_requests += 1;
        let sub = r
            .subresource
            .as_deref()
            .map(|s| format!("/{s}"))
            .unwrap_or_default();
        let patch = r
            .patch_type
            .as_deref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default();
        *kinds
            .entry(format!("{} {}{sub}{patch}", r.verb, r.resource))
            .or_default() += 1;
    }
    println!(
        "created {} in {} ({} errors); {} Ready {} after the first create (target: 1,000 in ≤ 10 s); Ready p50 {}, p99 {} after the first create ({polls} lists 100 ms apart, the slowest took {})",
        args.integrations,
        secs(created_in),
        create_errors,
        if all_ready {
            "all".to_string()
        } else {
            format!("only {}", times.len())
        },
        secs(times.last().copied().unwrap_or_default()),
        secs(quantile(&times, 0.5)),
        secs(quantile(&times, 0.99)),
        secs(slowest),
    );
    println!(
        "controller API requests meanwhile: {controller_requests} ({:.1} per integration): {}",
        controller_requests as f64 / args.integrations.max(1) as f64,
        kinds
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // 2. New routes, one at a time: create → the receiver answers a signed delivery 202.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NAMESPACE);
    let secret = |value: &str| -> Result<Secret, serde_json::Error> {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": PROBE_SECRET, "namespace": NAMESPACE},
            "stringData": {"secret": value},
        }))
    };
    secrets
        .create(&PostParams::default(), &secret("probe-secret-0")?)
        .await?;
    let mut new_route = Vec::new();
    let mut paths = Vec::new();
    for k in 0..args.probes {
        let name = format!("probe-{k:03}");
        let t0 = Instant::now();
        api.create(&PostParams::default(), &integration(&name, true)?)
            .await?;
        // The URL comes from the controller (status.url), the serving from the receiver.
        let mut path = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while path.is_none() && Instant::now() < deadline {
            path = api
                .get(&name)
                .await
                .ok()
                .and_then(|wi| wi.status.and_then(|s| s.url))
                .and_then(|u| u.strip_prefix(&base).map(str::to_string));
            if path.is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let path = path.ok_or_else(|| format!("{name} got no status.url within 30 s"))?;
        time_until(Duration::from_secs(30), || async {
            let id = format!("{name}-{}", t0.elapsed().as_nanos());
            deliver(port, &path, "probe-secret-0", &id).await == 202
        })
        .await
        .ok_or_else(|| format!("{name} did not serve within 30 s"))?;
        new_route.push(t0.elapsed());
        paths.push(path);
    }

    // 3. Changed routes: the shared Secret rotated → every probe route takes the new value.
    let mut changed = Vec::new();
    for round in 1..=args.probes.min(5) {
        let value = format!("probe-secret-{round}");
        let t0 = Instant::now();
        secrets
            .patch(
                PROBE_SECRET,
                &PatchParams::default(),
                &Patch::Merge(json!({"stringData": {"secret": value}})),
            )
            .await?;
        for (k, p) in paths.iter().enumerate() {
            time_until(Duration::from_secs(30), || async {
                deliver(
                    port,
                    p,
                    &value,
                    &format!("rot-{round}-{k}-{}", t0.elapsed().as_nanos()),
                )
                .await
                    == 202
            })
            .await
            .ok_or("a rotated secret was not accepted within 30 s")?;
            changed.push(t0.elapsed());
        }
    }
    new_route.sort();
    changed.sort();
    println!(
        "new route serves (create → first 202): p50 {}, max {} over {} integrations (target ≤ 1 s)",
        secs(quantile(&new_route, 0.5)),
        secs(new_route.last().copied().unwrap_or_default()),
        new_route.len()
    );
    println!(
        "changed secret serves (Secret patched → 202 with the new value on each of the {} routes): p50 {}, max {} over {} rotations (target ≤ 1 s)",
        paths.len(),
        secs(quantile(&changed, 0.5)),
        secs(changed.last().copied().unwrap_or_default()),
        args.probes.min(5)
    );
    Ok(())
}
