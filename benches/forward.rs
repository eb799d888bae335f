//! Forwarding benchmark (see docs/bench.md, "Forwarding"): the library's receiver in this
//! process, one integration with one forward target on 127.0.0.1, forwards imported into
//! its outbox the way the status loop does (`jobs_for` + `Forwarder::import`).
//!
//! 1. **forwards/s**: `--jobs` forwards to a target answering 200, imported in batches of
//!    `--batch`; from the first import until the target counted all of them.
//! 2. **pending memory**: `--pending` forwards to a port where nothing listens (connection
//!    refused: retried, the circuit opens), then the process RSS against the RSS before
//!    the import, and the outbox's bytes on disk (bodies stay there).
//! 3. **backlog drain**: the target comes up on that port; from then until it counted
//!    every pending forward (1 s retry schedule, circuit `openFor: 1s`).
//!
//! cargo bench --bench forward -- [--jobs 50000] [--pending 100000] [--batch 1000] \
//!     [--workers 1] [--state-dir DIR] [--only throughput|pending]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hookwarden::crd::{ForwardStatus, WebhookIntegrationSpec};
use hookwarden::domain::secret::generate_path;
use hookwarden::domain::spec;
use hookwarden::forwarder::EgressPolicy;
use hookwarden::receiver::forward::{
    Folded, ForwardConfig, ForwardedBody, Forwarder, TargetConfig, jobs_for,
};
use hookwarden::receiver::service::{Receiver, ReceiverOptions};
use hookwarden::receiver::sink::Accepted;
use hookwarden::receiver::status::FileStatusWriter;
use hookwarden::route::{Route, RouteForward, RouteSecret, SecretValue};
use tokio_util::sync::CancellationToken;

#[path = "support/target.rs"]
mod support_target;
use support_target::CountingTarget;

/// The allocator the `hookwarden` binary uses, so memory is measured as shipped.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Standard Webhooks key (whsec_ + base64 of 24 bytes).
const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NAMESPACE: &str = "bench";
const NAME: &str = "forward";

#[derive(Debug, Parser)]
#[command(about = "Forwarding throughput, pending-forward memory and backlog drain")]
struct Options {
    /// Forwards for the throughput measurement.
    #[arg(long, default_value_t = 50_000)]
    jobs: usize,
    /// Pending forwards for the memory and drain measurements.
    #[arg(long, default_value_t = 100_000)]
    pending: usize,
    /// Forwards per import (the status loop imports what one fold pass produced).
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Tokio worker threads of the receiver's runtime (the target has its own thread).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Parent folder of the journal and outbox (its disk's fsync matters). Default:
    /// cargo's target/tmp.
    #[arg(long)]
    state_dir: Option<std::path::PathBuf>,
    /// Run one measurement only.
    #[arg(long, value_parser = ["throughput", "pending"])]
    only: Option<String>,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 240)]
    bound_seconds: u64,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

fn route(target_url: &str) -> Result<Route, Box<dyn std::error::Error>> {
    // 20 retries a second apart (the most the schedule allows): nothing is dead-lettered
    // while the target refuses connections for the length of a run; the circuit opens
    // after 5 failures and lets one probe through per second.
    let schedule = vec!["1s"; 20];
    let spec: WebhookIntegrationSpec = serde_json::from_value(serde_json::json!({
        "provider": "github",
        "forward": [{
            "name": "bench",
            "url": target_url,
            "send": ["delivery"],
            "retry": {"schedule": schedule},
            "circuitBreaker": {"failures": 5, "openFor": "1s"},
        }],
    }))?;
    Ok(Route {
        namespace: NAMESPACE.into(),
        name: NAME.into(),
        uid: "bench-forward-uid".into(),
        generation: 1,
        path: generate_path(),
        secrets: vec![RouteSecret {
            value: SecretValue("bench-secret-0123456789abcdef".into()),
            expires_at: None,
        }],
        spec,
        forward: vec![RouteForward {
            name: "bench".into(),
            url: SecretValue(target_url.into()),
            signing_key: Some(SecretValue(KEY.into())),
            headers: BTreeMap::new(),
        }],
        replay: None,
        expected_interval_seconds: None,
    })
}

/// The forward targets of `route` as the receiver has them (for `jobs_for`).
fn config_of(route: &Route) -> Result<ForwardConfig, Box<dyn std::error::Error>> {
    let effective = spec::resolve(&route.spec).map_err(|e| e.to_string())?;
    Ok(ForwardConfig {
        namespace: route.namespace.clone(),
        name: route.name.clone(),
        uid: route.uid.clone(),
        provider: effective.provider,
        targets: effective
            .forward
            .into_iter()
            .map(|t| TargetConfig {
                material: route.forward.iter().find(|m| m.name == t.name).cloned(),
                spec: t,
            })
            .collect(),
        replay: None,
    })
}

/// The folded delivery `seq` of run `run`: a ~350-byte GitHub push body, as the journal
/// keeps it for forwarding.
fn folded(run: u64, seq: u64) -> Folded {
    let id = format!("fwd-{run:x}-{seq}");
    let body = serde_json::to_vec(&serde_json::json!({
        "ref": "refs/heads/main", "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        "after": "59b20b8d5c6ff8d09518454d4dd8b7b30f095ab5", "seq": seq,
        "repository": {"full_name": "octo/bench", "private": false},
        "pusher": {"name": "octocat"}, "head_commit": {"id": id, "message": "bench"},
    }))
    .unwrap_or_default();
    Folded {
        accepted: Accepted {
            integration: format!("{NAMESPACE}/{NAME}"),
            uid: "bench-forward-uid".into(),
            delivery_id: Some(id),
            event_type: Some("push".into()),
            received_at_ms: jiff::Timestamp::now().as_millisecond(),
            ignored: false,
            incidents: Vec::new(),
            alerts_dropped: 0,
            replay_key: None,
            forward: Some(ForwardedBody {
                content_type: Some("application/json".into()),
                body,
                meta_headers: Vec::new(),
            }),
        },
        changes: Vec::new(),
    }
}

struct Bench {
    receiver_stop: CancellationToken,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    forwarder: Forwarder,
    config: ForwardConfig,
    dir: tempfile::TempDir,
}

impl Bench {
    async fn start(parent: &Path, target_url: &str) -> Result<Bench, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir_in(parent)?;
        let route = route(target_url)?;
        let config = config_of(&route)?;
        let options = ReceiverOptions {
            remote_keys: Default::default(),
            journal_dir: dir.path().join("journal"),
            journal_max_bytes: 16 << 30,
            journal_commit_window: Duration::from_micros(400),
            dedup_max_ids: 100_000,
            trusted_proxies: Vec::new(),
            external_base_url: None,
            runtime: Default::default(),
            forward_egress: EgressPolicy::standalone(Vec::new(), None),
            max_body_bytes_in_flight: hookwarden::receiver::limits::DEFAULT_BODY_BUDGET,
            max_connections: hookwarden::receiver::server::DEFAULT_MAX_CONNECTIONS,
            drain_delay: std::time::Duration::ZERO,
            forward_max_lag: hookwarden::receiver::forward::DEFAULT_MAX_LAG,
        };
        let writer = Arc::new(FileStatusWriter::new(dir.path()));
        let receiver: Receiver<FileStatusWriter> = Receiver::start(options, writer, None).await?;
        receiver.handle().upsert(route)?;
        receiver.state().set_ready(true);
        let forwarder = receiver.forwarder();
        // Served (status loop, forwarder) though no delivery is sent to it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let receiver_stop = CancellationToken::new();
        let served = tokio::spawn(receiver.serve(listener, receiver_stop.clone()));
        Ok(Bench {
            receiver_stop,
            served,
            forwarder,
            config,
            dir,
        })
    }

    /// Renders and imports `n` forwards, `batch` at a time; returns the time the imports
    /// took.
    async fn import(
        &self,
        run: u64,
        n: usize,
        batch: usize,
    ) -> Result<Duration, Box<dyn std::error::Error>> {
        let started = Instant::now();
        let mut seq = 0u64;
        while (seq as usize) < n {
            let end = (seq as usize + batch.max(1)).min(n) as u64;
            let jobs: Vec<_> = (seq..end)
                .flat_map(|s| jobs_for(&self.config, &folded(run, s)))
                .collect();
            self.forwarder.import(jobs).await?;
            seq = end;
        }
        Ok(started.elapsed())
    }

    fn status(&self) -> ForwardStatus {
        self.forwarder
            .board
            .of(&format!("{NAMESPACE}/{NAME}"))
            .into_iter()
            .next()
            .unwrap_or_default()
    }

    fn outbox_bytes(&self) -> u64 {
        folder_bytes(&self.dir.path().join("journal").join("outbox"))
    }

    async fn stop(self) {
        self.receiver_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.served).await;
    }
}

fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A field of /proc/self/status in MiB (VmRSS, VmHWM).
fn proc_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn run_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

async fn wait_until(bound: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while !done() {
        if started.elapsed() >= bound {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

async fn throughput(options: &Options, parent: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let target = CountingTarget::start(([127, 0, 0, 1], 0).into(), 1)?;
    let bench = Bench::start(parent, &format!("http://{}/", target.addr)).await?;
    let n = options.jobs;
    let started = Instant::now();
    let imported = bench.import(run_id(), n, options.batch).await?;
    let all_arrived = wait_until(Duration::from_secs(options.bound_seconds), || {
        target.requests() >= n as u64
    })
    .await;
    let arrived = started.elapsed();
    let all_recorded = wait_until(Duration::from_secs(options.bound_seconds), || {
        bench.status().pending == 0
    })
    .await;
    let recorded = started.elapsed();
    let got = target.requests();
    println!(
        "throughput: {n} forwards imported in batches of {} in {:.2} s ({:.0}/s, rendered, appended, fsync'd); \
         the target counted {got} after {:.2} s: {:.0} forwards/s{} over {} connections; pending 0 on the board after {:.2} s{}",
        options.batch,
        imported.as_secs_f64(),
        n as f64 / imported.as_secs_f64(),
        arrived.as_secs_f64(),
        got as f64 / arrived.as_secs_f64(),
        if all_arrived { "" } else { " (gave up)" },
        target.connections(),
        recorded.as_secs_f64(),
        if all_recorded { "" } else { " (gave up)" },
    );
    bench.stop().await;
    Ok(())
}

async fn pending(options: &Options, parent: &Path) -> Result<(), Box<dyn std::error::Error>> {
    // A port where nothing listens until the target comes up on it.
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let bench = Bench::start(parent, &format!("http://{addr}/")).await?;
    let n = options.pending;
    // Let the receiver settle (status loop, first checkpoint timers) before the baseline.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = proc_mib("VmRSS:");
    let imported = bench.import(run_id(), n, options.batch).await?;
    let all_pending = wait_until(Duration::from_secs(options.bound_seconds), || {
        bench.status().pending == n as i64
    })
    .await;
    let right_after = proc_mib("VmRSS:");
    // mimalloc returns freed pages after a delay: what a long-running receiver holds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = proc_mib("VmRSS:");
    let status = bench.status();
    let disk = bench.outbox_bytes();
    println!(
        "pending: {n} forwards imported in {:.2} s to a refusing target (circuit {}, {} failed attempts, {} dead letters){}",
        imported.as_secs_f64(),
        status.circuit.as_deref().unwrap_or("?"),
        status.failed,
        status.dead_lettered,
        if all_pending {
            ""
        } else {
            " (not all pending!)"
        },
    );
    println!(
        "pending: RSS {before:.1} MiB before, {right_after:.1} MiB right after, {settled:.1} MiB 3 s later: \
         +{:.1} MiB for {} pending ({:.0} bytes each); VmHWM {:.1} MiB; outbox on disk {:.1} MiB ({:.0} bytes each)",
        settled - before,
        status.pending,
        (settled - before) * 1024.0 * 1024.0 / n as f64,
        proc_mib("VmHWM:"),
        disk as f64 / (1024.0 * 1024.0),
        disk as f64 / n as f64,
    );
    // The target comes up: every pending forward is due within a second (retry 1 s,
    // circuit open for 1 s), after one probe closes the circuit.
    // How long the receiver's workers stop running tasks while the backlog drains (the
    // outbox lock held by a compaction, say): a task sleeping 1 ms at a time on the same
    // runtime records how late it wakes.
    let probe_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = tokio::spawn({
        let stop = probe_stop.clone();
        async move {
            let mut late = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                tokio::time::sleep(Duration::from_millis(1)).await;
                late.push(t.elapsed().saturating_sub(Duration::from_millis(1)));
            }
            late.sort();
            late
        }
    });
    let target = CountingTarget::start(addr, 1)?;
    let up = Instant::now();
    let first = wait_until(Duration::from_secs(options.bound_seconds), || {
        target.requests() > 0
    })
    .await;
    let first_at = up.elapsed();
    let all = wait_until(Duration::from_secs(options.bound_seconds), || {
        target.requests() >= n as u64
    })
    .await;
    let arrived = up.elapsed();
    let got = target.requests();
    let drained = wait_until(Duration::from_secs(options.bound_seconds), || {
        bench.status().pending == 0
    })
    .await;
    let recorded = up.elapsed();
    probe_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let late = probe.await?;
    let at = |q: f64| {
        late.get(((late.len() as f64 * q) as usize).min(late.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "drain: worker stalls (a 1 ms sleep's lateness, {} wake-ups): p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms; {} late by > 50 ms",
        late.len(),
        at(0.99),
        at(0.999),
        late.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        late.iter()
            .filter(|d| **d > Duration::from_millis(50))
            .count(),
    );
    println!(
        "drain: target up; first forward after {:.2} s{}, {got} of {n} after {:.2} s: {:.0} forwards/s \
         ({:.0}/s from the first arrival){} over {} connections; pending 0 on the board after {:.2} s{}; RSS then {:.1} MiB",
        first_at.as_secs_f64(),
        if first { "" } else { " (none!)" },
        arrived.as_secs_f64(),
        got as f64 / arrived.as_secs_f64(),
        got as f64 / (arrived - first_at).as_secs_f64().max(1e-9),
        if all { "" } else { " (gave up)" },
        target.connections(),
        recorded.as_secs_f64(),
        if drained { "" } else { " (gave up)" },
        proc_mib("VmRSS:"),
    );
    bench.stop().await;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = Options::parse();
    let parent = options
        .state_dir
        .clone()
        .unwrap_or_else(|| env!("CARGO_TARGET_TMPDIR").into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.workers.max(1))
        .enable_all()
        .build()?;
    println!(
        "forward bench: {} receiver worker(s), outbox under {}, one target on 127.0.0.1 (own thread)",
        options.workers,
        parent.display()
    );
    runtime.block_on(async {
        if options.only.as_deref() != Some("pending") {
            throughput(&options, &parent).await?;
        }
        if options.only.as_deref() != Some("throughput") {
            pending(&options, &parent).await?;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
