//! Journal replay at start-up (docs/bench.md "Journal replay"): how long a receiver takes
//! to open a journal holding N unapplied deliveries and re-fold them into its ledger (the
//! crash case: killed before any status write applied them), and what that costs in
//! memory. DESIGN/issue target: 1,000,000 entries replayed in ≤ 10 s.
//!
//! cargo bench --bench journal -- [--entries 1000000] [--integrations 1000] \
//!     [--incident-every 10] [--dir DIR]
//!
//! Set-up (not timed): the entries are appended through [`Journal::append`] exactly as
//! the receiver's sink writes them (JSON `Accepted` records, group-committed), spread over
//! `--integrations` integrations; every `--incident-every`-th carries a Datadog-like
//! incident trigger or resolve. Timed: [`Journal::open_visiting`] with a
//! [`runtime::Replayer`] (segment scan, CRC checks, decode, fold, remember ids: each record
//! folded as it is read), the same call `receiver::service` makes at start.

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use futures::StreamExt as _;
use hookwarden::domain::incident::{IncidentEvent, Severity};
use hookwarden::journal::{Journal, JournalConfig};
use hookwarden::receiver::runtime::{self, IntegrationSettings, SettingsLookup};
use hookwarden::receiver::sink::Accepted;

#[derive(Debug, Parser)]
#[command(about = "Time journal replay at receiver start-up")]
struct Options {
    /// Unapplied entries in the journal.
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    /// Integrations the entries are spread over.
    #[arg(long, default_value_t = 1_000)]
    integrations: u64,
    /// Every N-th entry carries an incident event (0: none).
    #[arg(long, default_value_t = 10)]
    incident_every: u64,
    /// Remembered delivery ids (the receiver's --dedup-max-ids default).
    #[arg(long, default_value_t = 200_000)]
    max_ids: usize,
    /// Parent folder of the journal (its disk matters for the set-up's fsyncs, little for
    /// the timed read). Default: cargo's target/tmp.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

/// `VmRSS` and `VmHWM` of this process, MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn record(i: u64, options: &Options, start_ms: i64) -> Vec<u8> {
    let integration = format!("bench/integration-{}", i % options.integrations.max(1));
    let received_at_ms = start_ms + (i / 100) as i64;
    let incidents = if options.incident_every > 0 && i.is_multiple_of(options.incident_every) {
        let n = i / options.incident_every;
        vec![IncidentEvent {
            id: format!("host-{}:disk", n % 500),
            title: format!("[Triggered] disk full on host-{}", n % 500),
            severity: Severity::Critical,
            link: Some(format!("https://app.datadoghq.com/event/event?id={i}")),
            resolve: n % 3 == 2,
            event_time_ms: received_at_ms,
        }]
    } else {
        Vec::new()
    };
    let accepted = Accepted {
        integration,
        uid: format!(
            "00000000-0000-4000-8000-{:012}",
            i % options.integrations.max(1)
        ),
        delivery_id: Some(format!("delivery-{i:012}")),
        event_type: Some("triggered".to_string()),
        received_at_ms,
        ignored: false,
        incidents,
        alerts_dropped: 0,
        replay_key: None,
        forward: None,
    };
    serde_json::to_vec(&accepted).expect("an Accepted record serialises")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = Options::parse();
    let parent = options
        .dir
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&parent)?;
    let dir = tempfile::tempdir_in(&parent)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let config = || JournalConfig {
        // Room for the whole set-up: no compaction or 503 while writing it.
        max_bytes: 16 << 30,
        ..JournalConfig::new(dir.path())
    };
    let start_ms = 1_765_000_000_000;

    // Set-up: append every record through the journal, 4,096 in flight (group commit).
    let written = Instant::now();
    let bytes = runtime.block_on(async {
        let (journal, _) = Journal::open(config(), None).await?;
        let journal = Arc::new(journal);
        {
            let appends = futures::stream::iter(0..options.entries)
                .map(|i| {
                    let journal = Arc::clone(&journal);
                    let record = record(i, &options, start_ms);
                    async move { journal.append(record).await }
                })
                .buffer_unordered(4096);
            futures::pin_mut!(appends);
            while let Some(done) = appends.next().await {
                done?;
            }
        }
        let bytes = journal.stats().bytes_on_disk;
        match Arc::try_unwrap(journal) {
            Ok(journal) => journal.close().await?,
            Err(_) => return Err("journal still shared after the set-up".into()),
        }
        Ok::<u64, Box<dyn std::error::Error>>(bytes)
    })?;
    println!(
        "set-up: {} entries ({:.0} MiB on disk, {} integrations, an incident event every {}) written in {:.1} s",
        options.entries,
        bytes as f64 / (1 << 20) as f64,
        options.integrations,
        options.incident_every,
        written.elapsed().as_secs_f64()
    );

    let (rss_before, _) = memory();
    let settings: SettingsLookup = Arc::new(|_: &str| IntegrationSettings::default());
    let started = Instant::now();
    let (replayed, undecodable, ledger_integrations) = runtime.block_on(async {
        let (journal, replayer) = Journal::open_visiting(
            config(),
            None,
            runtime::Replayer::new(settings.clone(), options.max_ids),
        )
        .await?;
        let (ledger, report) = replayer.finish();
        let integrations = ledger.iter().count();
        journal.close().await?;
        Ok::<_, Box<dyn std::error::Error>>((report.replayed, report.undecodable, integrations))
    })?;
    let total = started.elapsed();
    let (rss_after, hwm) = memory();
    println!(
        "replay: {replayed} entries ({undecodable} undecodable) into {ledger_integrations} integrations in {:.2} s \
         (segment scan, CRC, decode and fold together) = {:.0} entries/s; target ≤ 10 s for 1,000,000",
        total.as_secs_f64(),
        replayed as f64 / total.as_secs_f64()
    );
    println!(
        "memory: RSS {rss_before:.1} MiB before the open, {rss_after:.1} MiB after (ledger dropped), peak (VmHWM) {hwm:.1} MiB"
    );
    if replayed as u64 != options.entries {
        return Err(format!(
            "replayed {replayed} of {} entries: the bench's journal is not what it wrote",
            options.entries
        )
        .into());
    }
    Ok(())
}
