//! Scale benchmark against the API-server emulator (DESIGN.md, "Performance and scale
//! targets"): N integrations applied → all Ready (target: 1,000 in ≤ 10 s), and how soon a
//! new or changed route serves (target: ≤ 1 s); then, issue #21, the controller's requests and
//! memory at steady state, across a relist, a resync and a restart, and a receiver's start-up
//! with every route in place (docs/bench.md).
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
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
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
    /// Unrelated Secrets created before the controller starts (a fifth in the integrations'
    /// namespace, the rest spread over ten `other-N` namespaces), each with
    /// `--other-secret-bytes` of data: the controller watches every Secret's metadata.
    #[arg(long, default_value_t = 0)]
    other_secrets: usize,
    /// Bytes of data in each unrelated Secret.
    #[arg(long, default_value_t = 512)]
    other_secret_bytes: usize,
    /// After all are Ready: seconds of steady state over which the controller's requests
    /// are counted and its RSS is read again.
    #[arg(long, default_value_t = 10)]
    settle_seconds: u64,
    /// Started with `--resync-seconds` this value, the controller re-checks every
    /// integration that often; the bench waits one interval (plus 10 s) after the steady
    /// state and counts the controller's reconciles and requests in it. 0: skip this phase.
    #[arg(long, default_value_t = 0)]
    resync_seconds: u64,
    /// Skip the relist phase (every watch ended with 410 Gone, so every watcher relists
    /// and every integration is reconciled again; the controller's requests are counted).
    #[arg(long)]
    no_relist: bool,
    /// Skip the restart phase (the controller stopped with SIGTERM and a new one started:
    /// time until it has reconciled everything, and its requests).
    #[arg(long)]
    no_restart: bool,
    /// Skip the receiver start-up phase (a second receiver started with every route in
    /// place: time until `/readyz` answers 200, and until a signed delivery to each of
    /// `--startup-sample` integrations spread over all of them is accepted).
    #[arg(long)]
    no_receiver_startup: bool,
    /// The controller's `--lease-duration-seconds`. On a loaded 2-core machine a 15 s
    /// lease (renewed 5 s before expiry, given up 1.7 s before) can lapse while the
    /// controller and the emulator share the CPUs with other builds; a stand-down starts
    /// the controller's watches (and memory) over, which this bench is not about.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Write the controller's and receivers' logs into this directory (kept after the
    /// bench) instead of the bench's temporary one.
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Integrations whose routes the start-up phase checks with a signed delivery.
    #[arg(long, default_value_t = 100)]
    startup_sample: usize,
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

/// `VmRSS` and `VmHWM` of a process, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One plain HTTP GET on 127.0.0.1; status and body.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((code, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// The controller's `hookwarden_controller_reconciles_total` (0 when unreadable).
async fn reconciles(metrics_port: u16) -> u64 {
    let Some((_, body)) = http_get(metrics_port, "/metrics").await else {
        return 0;
    };
    body.lines()
        .find_map(|l| l.strip_prefix("hookwarden_controller_reconciles_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

/// The requests of `caller` among `records`: how many, and how many of each kind
/// (`verb resource[/subresource] [(patch type)]`).
fn requests_by_kind(
    records: &[kube_emulator::RequestRecord],
    caller: &str,
) -> (usize, std::collections::BTreeMap<String, usize>) {
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    let mut total = 0;
    for r in records.iter().filter(|r| r.caller == caller) {
        total += 1;
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
    (total, kinds)
}

fn kinds_text(kinds: &std::collections::BTreeMap<String, usize>) -> String {
    if kinds.is_empty() {
        return "none".to_string();
    }
    kinds
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until `caller` has sent no request for `quiet` (at most `limit`); how long after
/// the call its last request came.
async fn until_quiet(emu: &Emulator, caller: &str, quiet: Duration, limit: Duration) -> Duration {
    let filter = kube_emulator::RequestFilter::new().caller(caller);
    let start = Instant::now();
    let (mut seen, mut last) = (emu.count(&filter), start);
    while start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = emu.count(&filter);
        if now != seen {
            (seen, last) = (now, Instant::now());
        } else if last.elapsed() >= quiet {
            break;
        }
    }
    last - start
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
    // `HOOKWARDEN_BENCH_WRAPPER="heaptrack -o /tmp/ht"` (words split on spaces) runs the
    // controller under a profiler; the receivers run as they are.
    let wrapper: Vec<String> = match std::env::var("HOOKWARDEN_BENCH_WRAPPER") {
        Ok(w) if args.first() == Some(&"controller") => {
            w.split_whitespace().map(str::to_string).collect()
        }
        _ => Vec::new(),
    };
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(env!("CARGO_BIN_EXE_hookwarden"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_hookwarden")),
    };
    // The image's allocator settings (Dockerfile), which its memory figures are about.
    let child = command
        .env("MIMALLOC_ARENA_EAGER_COMMIT", "0")
        .env("MIMALLOC_PURGE_DELAY", "1")
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

    // Unrelated Secrets first: a running cluster has them before hookwarden is installed.
    if args.other_secrets > 0 {
        let t0 = Instant::now();
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin.clone());
        for n in 0..10 {
            let ns = serde_json::from_value(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("other-{n}")}}),
            )?;
            namespaces.create(&PostParams::default(), &ns).await?;
        }
        let filler = "x".repeat(args.other_secret_bytes);
        let results: Vec<_> = futures::stream::iter(0..args.other_secrets)
            .map(|i| {
                let admin = admin.clone();
                let filler = filler.clone();
                async move {
                    let ns = if i % 5 == 0 {
                        NAMESPACE.to_string()
                    } else {
                        format!("other-{}", i % 10)
                    };
                    let secret: Secret = serde_json::from_value(json!({
                        "apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": format!("unrelated-{i:06}"), "namespace": ns,
                                     "labels": {"app": "unrelated"}},
                        "stringData": {"payload": filler},
                    }))?;
                    Api::<Secret>::namespaced(admin, &ns)
                        .create(&PostParams::default(), &secret)
                        .await?;
                    Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
                }
            })
            .buffer_unordered(args.concurrency.max(1))
            .collect()
            .await;
        println!(
            "{} unrelated Secrets ({} bytes of data each) created in {} ({} errors), before the controller starts",
            args.other_secrets,
            args.other_secret_bytes,
            secs(t0.elapsed()),
            results.iter().filter(|r| r.is_err()).count()
        );
    }

    let logs = args
        .log_dir
        .clone()
        .unwrap_or_else(|| dir.path().to_path_buf());
    std::fs::create_dir_all(&logs)?;
    let controller_log = logs.join("controller.log");
    let controller_metrics = free_port();
    let controller_metrics_addr = format!("127.0.0.1:{controller_metrics}");
    let resync = args.resync_seconds.to_string();
    let lease_duration = args.lease_duration_seconds.to_string();
    let mut controller_args = vec![
        "controller",
        "--namespace",
        &rbac.namespace,
        "--metrics-addr",
        &controller_metrics_addr,
        "--external-base-url",
        &base,
        "--log-format",
        "text",
        "--identity",
        "scale-controller",
        "--lease-duration-seconds",
        &lease_duration,
    ];
    if args.resync_seconds > 0 {
        controller_args.extend(["--resync-seconds", &resync]);
    }
    let mut controller = spawn(&controller_args, &controller_kc, &controller_log)?;
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
        &logs.join("receiver.log"),
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
    // A watch, not lists: listing 10,000 objects every 100 ms cost the emulator (in this
    // process, on the same two cores as the controller) more than the controller's work.
    let watched = kube::runtime::watcher(api.clone(), kube::runtime::watcher::Config::default());
    let poller = async {
        let mut ready_at: Vec<Option<Duration>> = vec![None; args.integrations];
        let mut events = 0u64;
        let limit = Duration::from_secs(args.limit_seconds);
        futures::pin_mut!(watched);
        while !ready_at.iter().all(Option::is_some) && start.elapsed() < limit {
            let next = tokio::time::timeout(Duration::from_secs(1), watched.next()).await;
            let wi = match next {
                Ok(Some(Ok(
                    kube::runtime::watcher::Event::Apply(wi)
                    | kube::runtime::watcher::Event::InitApply(wi),
                ))) => wi,
                Ok(None) => break,
                _ => continue,
            };
            events += 1;
            if !ready(&wi) {
                continue;
            }
            let index = wi
                .metadata
                .name
                .as_deref()
                .and_then(|n| n.strip_prefix("scale-"))
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(slot) = index.and_then(|i| ready_at.get_mut(i)) {
                slot.get_or_insert(start.elapsed());
            }
        }
        (ready_at, events)
    };
    let (created, (ready_at, events)) = tokio::join!(
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
    let records = emu.requests();
    let (controller_requests, kinds) = requests_by_kind(
        records.get(before..).unwrap_or_default(),
        &controller_caller,
    );
    let n = args.integrations.max(1) as f64;
    println!(
        "created {} in {} ({} errors); {} Ready {} after the first create (target: 10,000 in ≤ 30 s); Ready p50 {}, p99 {} after the first create (seen on a watch: {events} events)",
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
    );
    println!(
        "controller API requests meanwhile: {controller_requests} ({:.2} per integration): {}",
        controller_requests as f64 / n,
        kinds_text(&kinds)
    );
    let (rss, hwm) = memory(controller.0.id());
    println!("controller memory when all were Ready: VmRSS {rss:.1} MiB, VmHWM {hwm:.1} MiB");

    // Steady state: nothing changes; what does the controller still ask for?
    let mark = emu.requests().len();
    let reconciled = reconciles(controller_metrics).await;
    tokio::time::sleep(Duration::from_secs(args.settle_seconds)).await;
    let (steady, kinds) = requests_by_kind(
        emu.requests().get(mark..).unwrap_or_default(),
        &controller_caller,
    );
    let (rss, hwm) = memory(controller.0.id());
    println!(
        "steady state, {} s later: {} controller requests ({}), {} reconciles; VmRSS {rss:.1} MiB, VmHWM {hwm:.1} MiB (target ≤ 128 MiB)",
        args.settle_seconds,
        steady,
        kinds_text(&kinds),
        reconciles(controller_metrics)
            .await
            .saturating_sub(reconciled),
    );

    // The periodic resync: every integration re-checked, nothing changed.
    if args.resync_seconds > 0 {
        let mark = emu.requests().len();
        let reconciled = reconciles(controller_metrics).await;
        tokio::time::sleep(Duration::from_secs(args.resync_seconds + 10)).await;
        let (total, kinds) = requests_by_kind(
            emu.requests().get(mark..).unwrap_or_default(),
            &controller_caller,
        );
        let runs = reconciles(controller_metrics)
            .await
            .saturating_sub(reconciled);
        println!(
            "resync (--resync-seconds {}), over the next {} s: {runs} reconciles, {total} controller requests ({:.2} per reconcile): {}",
            args.resync_seconds,
            args.resync_seconds + 10,
            total as f64 / runs.max(1) as f64,
            kinds_text(&kinds)
        );
    }

    // A relist: every watch ends with 410 Gone; every watcher lists again and every
    // integration is reconciled again.
    if !args.no_relist {
        let mark = emu.requests().len();
        let reconciled = reconciles(controller_metrics).await;
        emu.expire_watches();
        let took = until_quiet(
            &emu,
            &controller_caller,
            Duration::from_secs(3),
            Duration::from_secs(120),
        )
        .await;
        let (total, kinds) = requests_by_kind(
            emu.requests().get(mark..).unwrap_or_default(),
            &controller_caller,
        );
        let runs = reconciles(controller_metrics)
            .await
            .saturating_sub(reconciled);
        let (rss, hwm) = memory(controller.0.id());
        println!(
            "relist (every watch ended with 410 Gone): controller quiet again after {}; {runs} reconciles, {total} controller requests ({:.2} per integration): {}; VmRSS {rss:.1} MiB, VmHWM {hwm:.1} MiB",
            secs(took),
            total as f64 / n,
            kinds_text(&kinds)
        );
    }

    // A restart: a new controller process knows nothing and checks every integration.
    if !args.no_restart {
        let pid = controller.0.id();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let _ = time_until(Duration::from_secs(30), || {
            let exited = controller.0.try_wait().ok().flatten().is_some();
            async move { exited }
        })
        .await;
        drop(controller);
        let _ = std::fs::rename(&controller_log, logs.join("controller-before-restart.log"));
        let mark = emu.requests().len();
        controller = spawn(&controller_args, &controller_kc, &controller_log)?;
        let took = until_quiet(
            &emu,
            &controller_caller,
            Duration::from_secs(3),
            Duration::from_secs(180),
        )
        .await;
        let (total, kinds) = requests_by_kind(
            emu.requests().get(mark..).unwrap_or_default(),
            &controller_caller,
        );
        let runs = reconciles(controller_metrics).await;
        let (rss, hwm) = memory(controller.0.id());
        println!(
            "restart (SIGTERM, new process): last request {} after the start; {runs} reconciles, {total} controller requests ({:.2} per integration): {}; VmRSS {rss:.1} MiB, VmHWM {hwm:.1} MiB",
            secs(took),
            total as f64 / n,
            kinds_text(&kinds)
        );
    }

    // Receiver start-up with every route in place.
    if !args.no_receiver_startup {
        let sample: Vec<(String, String)> = (0..args.startup_sample.min(args.integrations))
            .filter_map(|k| {
                let i = k * args.integrations / args.startup_sample.min(args.integrations).max(1);
                let name = format!("scale-{i:05}");
                let wi = emu.object("webhookintegrations.hookwarden.dev", NAMESPACE, &name)?;
                let path = wi["status"]["path"].as_str()?.to_string();
                let secret = emu.object("secrets", NAMESPACE, &format!("{name}-webhook"))?;
                use base64::Engine as _;
                let value = base64::engine::general_purpose::STANDARD
                    .decode(secret["data"]["secret"].as_str()?)
                    .ok()?;
                Some((path, String::from_utf8(value).ok()?))
            })
            .collect();
        let second = free_port();
        let second_listen = format!("127.0.0.1:{second}");
        let second_journal = dir.path().join("journal-2");
        let t0 = Instant::now();
        let receiver2 = spawn(
            &[
                "receiver",
                "--listen",
                &second_listen,
                "--metrics-addr",
                "127.0.0.1:0",
                "--namespace",
                &rbac.namespace,
                "--log-format",
                "text",
                "--journal-dir",
                &second_journal.to_string_lossy(),
            ],
            &receiver_kc,
            &logs.join("receiver-2.log"),
        )?;
        let ready = time_until(Duration::from_secs(60), || async {
            http_get(second, "/readyz")
                .await
                .is_some_and(|(c, _)| c == 200)
        })
        .await;
        let mut all_served = true;
        for (k, (path, secret)) in sample.iter().enumerate() {
            let served = time_until(Duration::from_secs(30), || async {
                deliver(
                    second,
                    path,
                    secret,
                    &format!("startup-{k}-{}", t0.elapsed().as_nanos()),
                )
                .await
                    == 202
            })
            .await;
            all_served &= served.is_some();
        }
        let (rss, hwm) = memory(receiver2.0.id());
        println!(
            "receiver start-up with {} routes: /readyz 200 after {}, a signed delivery accepted on each of {} sampled routes {} after the process started{} (target ≤ 5 s); VmRSS {rss:.1} MiB, VmHWM {hwm:.1} MiB",
            args.integrations + args.probes,
            ready
                .map(secs)
                .unwrap_or_else(|| "never (60 s)".to_string()),
            sample.len(),
            secs(t0.elapsed()),
            if all_served {
                ""
            } else {
                " (NOT ALL: some timed out)"
            },
        );
    }

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
        "new route serves (create → first 202): p50 {}, p99 {}, max {} over {} integrations (target ≤ 1 s)",
        secs(quantile(&new_route, 0.5)),
        secs(quantile(&new_route, 0.99)),
        secs(new_route.last().copied().unwrap_or_default()),
        new_route.len()
    );
    println!(
        "changed secret serves (Secret patched → 202 with the new value on each of the {} routes): p50 {}, p99 {}, max {} over {} rotations (target ≤ 1 s)",
        paths.len(),
        secs(quantile(&changed, 0.5)),
        secs(quantile(&changed, 0.99)),
        secs(changed.last().copied().unwrap_or_default()),
        args.probes.min(5)
    );
    Ok(())
}
