//! Load benchmark of the receiver over HTTP on 127.0.0.1 (see docs/bench.md).
//!
//! Sends correctly signed, unique deliveries over N keep-alive connections for a bounded
//! time, then prints requests/s, p50 and p99; runs a second pass at half that rate for
//! the latency target; and, when `nginx` is on PATH, runs the same client against nginx
//! answering a fixed 200 with the same worker count and prints the ratio.
//!
//! cargo bench --bench receiver -- [--connections 32] [--seconds 5] [--workers 1] \
//!     [--provider PRESET] [--url URL --secret S | --standalone [--forward] | --fsync-floor DIR] [--no-nginx]
//! cargo bench --bench receiver -- --serve --provider P     # serve only (load it with --url … --count N)
//! cargo bench --bench receiver -- --provider P --count N   # exactly N deliveries (scripts/cpu-per-delivery.sh)
//! cargo bench --bench receiver -- --verify-cost 20000   # µs per verification, per scheme (HMAC, token, ed25519, P-256, JWT)

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hookwarden::crd::ProviderKind;
use hookwarden::domain::sample::{SampleOptions, sample_with};
use hookwarden::domain::secret::generate_path;
use hookwarden::domain::signature::{Scheme, SignInput, sign};
use hookwarden::receiver::dedup::{DEFAULT_MAX_ENTRIES, Dedup};
use hookwarden::receiver::http::{PipelineConfig, ReceiverState, app};
use hookwarden::receiver::metrics::ReceiverMetrics;
use hookwarden::receiver::routes::RouteTable;
use hookwarden::receiver::server::{App, ServerOptions, serve_with};
use hookwarden::receiver::sink::{Accepted, DeliverySink, Duplicate, Rejected, SinkError};
use hookwarden::route::{Route, RouteSecret, SecretValue};
use hookwarden::standalone::DEFAULT_STATE_DIR;
use hookwarden::standalone::state::StateDir;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

#[path = "support/target.rs"]
mod support_target;
use support_target::CountingTarget;

#[derive(Debug, Parser)]
#[command(about = "Load the hookwarden receiver with signed unique deliveries; compare with nginx")]
struct Options {
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Length of each measured pass, seconds.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Server worker threads (tokio workers in-process; nginx worker_processes).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Ids the in-process receiver's dedup memory holds (the product's `--dedup-max-ids`;
    /// default: the product's default). Once an integration holds its share (a quarter),
    /// every new id forgets its oldest: the bench runs there after its first seconds, and
    /// a larger memory makes each of those lookups a cache miss farther out.
    #[arg(long, default_value_t = DEFAULT_MAX_ENTRIES)]
    dedup_max_ids: u64,
    /// Client threads.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Delivery flavour: any preset but aws-sns in-process (github: HMAC-SHA256 and a
    /// ~350-byte push; datadog: bearer token and incident mapping; the others: their
    /// `send-test` sample, signed as the preset signs, preset incident mapping on;
    /// standard-webhooks/svix and discord with ed25519, sendgrid with P-256,
    /// github-actions/google-pubsub with an RS256 OIDC token); --standalone: github, datadog.
    #[arg(long, default_value = "github")]
    provider: ProviderKind,
    /// Load a running receiver (e.g. `hookwarden standalone`) at this endpoint URL instead
    /// of an in-process one; needs --secret.
    #[arg(long)]
    url: Option<String>,
    /// The endpoint's secret (with --url).
    #[arg(long)]
    secret: Option<String>,
    /// Start `hookwarden standalone` (this build's binary) on one bench integration and
    /// load it: the whole product path, durable journal with fsync included. Its tokio
    /// runtime gets --workers threads (TOKIO_WORKER_THREADS), like nginx.
    #[arg(long, conflicts_with = "url")]
    standalone: bool,
    /// Parent folder of the standalone run's YAML and state (the journal's disk matters:
    /// tmpfs makes fsync free). Default: cargo's target/tmp.
    #[arg(long, requires = "standalone")]
    state_dir: Option<std::path::PathBuf>,
    /// Pass `--journal-commit-window` to the standalone receiver (e.g. 0, 400us, 1ms).
    /// Default: the binary's own default.
    #[arg(long, requires = "standalone")]
    journal_commit_window: Option<String>,
    /// With --standalone: the bench integration forwards every delivery (`spec.forward`,
    /// `send: [delivery]`) to a local target this bench starts (answers 200, counts). After
    /// the passes it prints how many forwards arrived and when the last one did.
    #[arg(long, requires = "standalone")]
    forward: bool,
    /// Instead of the nginx comparison: the in-process receiver with its budgets
    /// (connection cap, in-flight body bytes) against the same receiver with them
    /// effectively off, passes alternated in one run; prints the median ratio.
    #[arg(long, conflicts_with_all = ["url", "standalone", "fsync_floor"])]
    compare_budgets: bool,
    /// Skip the nginx comparison.
    #[arg(long)]
    no_nginx: bool,
    /// Receiver/nginx pass pairs; the median ratio is printed.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Skip the half-rate latency pass.
    #[arg(long)]
    no_half_rate: bool,
    /// Offer this many requests per second in the latency pass instead of half the
    /// measured rate: compares configurations (disks, builds) at the same load.
    #[arg(long, conflicts_with = "no_half_rate")]
    latency_rate: Option<f64>,
    /// Instead of loading: build N routes and remember M delivery ids in-process, then
    /// print the resident memory (DESIGN target: 10,000 routes + 100,000 ids ≤ 64 MiB).
    #[arg(long, value_names = ["ROUTES", "IDS"], num_args = 2)]
    memory: Option<Vec<u64>>,
    /// Diagnostic: the in-process pipeline with a sink that only appends 64 bytes per
    /// delivery to a preallocated file in DIR and answers after one shared `fdatasync`
    /// (group commit: every append queued while the previous flush ran shares the next).
    /// No journal format, status or ledger: the floor any receiver that flushes before
    /// its 2xx pays on this disk.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["url", "standalone"])]
    fsync_floor: Option<std::path::PathBuf>,
    /// With --fsync-floor: wait up to this many microseconds for a batch as large as the
    /// previous one before flushing (the journal's commit window policy); 0 flushes
    /// whatever queued behind the previous flush.
    #[arg(long, default_value_t = 0, requires = "fsync_floor")]
    fsync_floor_window_us: u64,
    /// Diagnostic: instead of the receiver, the same HTTP stack with no pipeline behind it
    /// (the receiver's `serve_with` and an axum router whose one handler reads the body and
    /// answers 202), against nginx as usual: how much of the gap to nginx is tokio, hyper
    /// and axum, and how much is verification, dedup, mapping and the sink.
    #[arg(long, conflicts_with_all = ["url", "standalone", "fsync_floor", "compare_budgets"])]
    transport_floor: bool,
    /// Instead of loading: time N verifications of one signed delivery per scheme as the
    /// receiver runs them (HMAC presets, tokens, ed25519, ECDSA P-256 through
    /// `signature::verify`; OIDC bearer RS256, ES256 and EdDSA against the Secret's
    /// inline JWKS, parsed once and cached) and print microseconds per delivery.
    #[arg(long, value_name = "N")]
    verify_cost: Option<u32>,
    /// Send exactly N deliveries over --connections, print the pass and exit: no warm-up,
    /// no nginx, no half-rate pass. For instructions per delivery
    /// (scripts/cpu-per-delivery.sh runs it with N and 2N and takes the slope).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// The status every answer must have (with --url: 200 for nginx's `return 200`).
    #[arg(long, default_value_t = 202)]
    expect_status: u16,
    /// Only serve: start the in-process receiver (memory sink) for --provider, print
    /// `serving URL CLIENT-SECRET` and serve until stdin closes, then print how many
    /// deliveries it accepted and exit. Load it from another process with `--url URL
    /// --secret CLIENT-SECRET --provider P --count N` (e.g. the receiver under callgrind).
    #[arg(long, conflicts_with_all = ["url", "standalone", "fsync_floor", "compare_budgets"])]
    serve: bool,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

/// Keeps every accepted delivery in memory only: measures the pipeline without a journal.
#[derive(Default)]
struct CountingSink {
    accepted: Arc<AtomicU64>,
}

impl DeliverySink for CountingSink {
    async fn accept(&self, _delivery: Accepted) -> Result<(), SinkError> {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn reject(&self, _rejected: Rejected) {}
    fn duplicate(&self, _duplicate: Duplicate) {}
}

/// Answers once the delivery's 64 bytes are flushed to disk by a writer thread that
/// flushes everything queued behind the previous flush at once (see `--fsync-floor`).
struct FsyncFloorSink {
    queue: std::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
}

impl FsyncFloorSink {
    const FILE_BYTES: u64 = 64 << 20;

    /// Starts the writer thread on a file in a new temporary folder under `dir`; the
    /// folder goes when the returned guard is dropped.
    fn start(
        dir: &std::path::Path,
        window: Duration,
    ) -> std::io::Result<(FsyncFloorSink, tempfile::TempDir)> {
        use std::io::Write as _;
        use std::os::unix::fs::FileExt as _;
        let folder = tempfile::tempdir_in(dir)?;
        let path = folder.path().join("fsync-floor.bin");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)?;
        // Written zeros: a flush of an overwrite need not touch the inode.
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(Self::FILE_BYTES >> 20) {
            file.write_all(&zeros)?;
        }
        file.sync_all()?;
        let (tx, rx) = std::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>();
        std::thread::spawn(move || {
            let mut offset = 0u64;
            let mut buffer = Vec::new();
            let mut previous = 1;
            while let Ok(first) = rx.recv() {
                let deadline = Instant::now() + window;
                let mut batch = vec![first];
                batch.extend(rx.try_iter());
                while batch.len() < previous {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    match rx.recv_timeout(deadline - now) {
                        Ok(waiter) => batch.push(waiter),
                        Err(_) => break,
                    }
                }
                previous = batch.len();
                buffer.clear();
                buffer.resize(batch.len() * 64, 0xa5);
                if offset + buffer.len() as u64 > Self::FILE_BYTES {
                    offset = 0;
                }
                if file
                    .write_all_at(&buffer, offset)
                    .and_then(|()| file.sync_data())
                    .is_err()
                {
                    return;
                }
                offset += buffer.len() as u64;
                for waiter in batch {
                    let _ = waiter.send(());
                }
            }
        });
        let sink = FsyncFloorSink { queue: tx };
        Ok((sink, folder))
    }
}

impl DeliverySink for FsyncFloorSink {
    async fn accept(&self, _delivery: Accepted) -> Result<(), SinkError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue
            .send(tx)
            .map_err(|_| SinkError::Unavailable("fsync floor writer gone".into()))?;
        rx.await
            .map_err(|_| SinkError::Unavailable("fsync floor flush failed".into()))
    }
    fn reject(&self, _rejected: Rejected) {}
    fn duplicate(&self, _duplicate: Duplicate) {}
}

struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
    secret: String,
}

/// The bench's RS256 issuer key (a throwaway 2048-bit key, used for nothing else).
const BENCH_RS256_KEY: &str = include_str!("support/bench-rs256-key.pem");
const BENCH_ISSUER: &str = "https://token.actions.githubusercontent.com";
const BENCH_AUDIENCE: &str = "https://github.com/bench";

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An OIDC issuer for the bench: its JWKS (inline in the route's Secret) and a token
/// valid for an hour (bearer tokens are reused across deliveries, as senders do).
fn bench_issuer(alg: &str) -> (String, String) {
    bench_issuer_for(alg, BENCH_ISSUER)
}

/// [`bench_issuer`] for `issuer` (Google Pub/Sub's preset checks its own).
fn bench_issuer_for(alg: &str, issuer: &str) -> (String, String) {
    use hookwarden::domain::signature::jose::{PrivateKey, encode_token};
    use ring::signature::KeyPair as _;
    let rng = ring::rand::SystemRandom::new();
    let (key, jwk) = match alg {
        "ES256" => {
            let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
            let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("key");
            let pair =
                ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("key");
            let point = pair.public_key().as_ref().to_vec();
            let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "bench", "x": b64url(&point[1..33]), "y": b64url(&point[33..])});
            (PrivateKey::P256(pair), jwk)
        }
        "EdDSA" => {
            let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
            let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
            let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": "bench", "x": b64url(pair.public_key().as_ref())});
            (PrivateKey::Ed25519(pair), jwk)
        }
        _ => {
            let key = PrivateKey::from_pem(BENCH_RS256_KEY).expect("bench key");
            let PrivateKey::Rsa(pair) = &key else {
                unreachable!("an RSA key")
            };
            let c: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
            let jwk = serde_json::json!({"kty": "RSA", "kid": "bench", "n": b64url(&c.n), "e": b64url(&c.e)});
            (key, jwk)
        }
    };
    let now = jiff::Timestamp::now().as_second();
    let claims = serde_json::json!({"iss": issuer, "aud": BENCH_AUDIENCE, "sub": "repo:octo/bench", "iat": now, "exp": now + 3600});
    let token = encode_token(&key, Some("bench"), &claims, &rng).expect("token");
    (serde_json::json!({"keys": [jwk]}).to_string(), token)
}

/// `--verify-cost N`: microseconds per verification of each scheme, measured the way
/// the receiver verifies (the OIDC path through `receiver::keys::verify`).
fn verify_cost(n: u32) -> Result<(), Box<dyn std::error::Error>> {
    use hookwarden::domain::signature::{Delivery, verify};
    use hookwarden::receiver::keys::{RemoteKeyOptions, RemoteKeys};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sender = hookwarden::forwarder::Sender::new(
        hookwarden::forwarder::EgressPolicy::standalone(Vec::new(), None),
        hookwarden::forwarder::SenderOptions::default(),
    )?;
    let remote = RemoteKeys::new(sender, RemoteKeyOptions::default());
    let body = br#"{"ref":"refs/heads/main","after":"59b20b8d5c6ff8d09518454d4dd8b7b30f095ab5","repository":{"full_name":"octo/bench"}}"#;
    let now = jiff::Timestamp::now().as_second();
    println!("verification cost per delivery ({n} each, one thread):");
    // HMAC preset.
    let secret = "bench-secret-0123456789abcdef";
    let github = Scheme::preset(ProviderKind::Github);
    let input = SignInput {
        body,
        url: "",
        timestamp: now,
        id: "d1",
        content_type: "application/json",
    };
    let mut headers = http::HeaderMap::new();
    for (k, v) in sign(&github, secret, &input)? {
        headers.insert(http::HeaderName::from_bytes(k.as_bytes())?, v.parse()?);
    }
    let d = Delivery {
        method: "POST",
        url: "",
        headers: &headers,
        body,
    };
    let started = Instant::now();
    for _ in 0..n {
        assert!(verify(&github, &[secret], &d, now).is_valid());
    }
    let hmac_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    println!("  github (HMAC-SHA256)            {hmac_us:8.2} us");
    for alg in ["RS256", "ES256", "EdDSA"] {
        let (jwks, token) = bench_issuer(alg);
        let spec: hookwarden::crd::WebhookIntegrationSpec =
            serde_json::from_value(serde_json::json!({
                "provider": "github-actions",
                "oidc": {"audiences": [BENCH_AUDIENCE]},
            }))?;
        let scheme = hookwarden::domain::spec::resolve(&spec)
            .map_err(|p| p.to_string())?
            .scheme;
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", format!("Bearer {token}").parse()?);
        let d = Delivery {
            method: "POST",
            url: "",
            headers: &headers,
            body,
        };
        let secrets = [jwks.as_str()];
        let started = Instant::now();
        runtime.block_on(async {
            for _ in 0..n {
                let v =
                    hookwarden::receiver::keys::verify(Some(&remote), &scheme, &secrets, &d, now)
                        .await;
                assert!(v.is_valid(), "{alg}: {v:?}");
            }
        });
        let us = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        println!(
            "  github-actions OIDC {alg:<6}      {us:8.2} us  ({:.1}x HMAC)",
            us / hmac_us
        );
    }
    Ok(())
}

// Bench-only key pairs (ed25519 seed and its public key, as Discord and Standard Webhooks
// `whsk_`/`whpk_` write them; a P-256 PKCS#8 / SPKI pair as SendGrid shows its key).
const ED25519_SEED_HEX: &str = "6465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f80818283";
const ED25519_PUBLIC_HEX: &str = "0bbc346a57667c380120bd9c7fd7e51d2c5fdfea37cd2f5bf405b2c6bf6f2d78";
const WHSK: &str = "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const WHPK: &str = "whpk_A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=";
const P256_PRIVATE: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg0S8NU4NxliBZyVD9k2jN857hrm8DeI9ccKkLTK/0BK2hRANCAARjZfJ0c+Vw4mqCdLMWKMFajqZR/C+MggDy0S5TO9fLLwORaScGCryCFPrGGXoFrplcjaAFczZGp3PBvOlyGs2k";
const P256_PUBLIC: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEY2XydHPlcOJqgnSzFijBWo6mUfwvjIIA8tEuUzvXyy8DkWknBgq8ghT6xhl6Ba6ZXI2gBXM2RqdzwbzpchrNpA==";

/// (what the route verifies with, what the client signs with) for `provider`.
fn bench_keys(provider: ProviderKind) -> (String, String) {
    let pair = |v: &str, s: &str| (v.to_string(), s.to_string());
    match provider {
        ProviderKind::Discord => pair(ED25519_PUBLIC_HEX, ED25519_SEED_HEX),
        ProviderKind::Sendgrid => pair(P256_PUBLIC, P256_PRIVATE),
        ProviderKind::StandardWebhooks | ProviderKind::Svix => pair(WHPK, WHSK),
        _ => pair(
            "bench-secret-0123456789abcdef",
            "bench-secret-0123456789abcdef",
        ),
    }
}

/// The bench integration's spec for `provider`: the preset as a user would write it
/// (its incident mapping included where the preset has one), with the rate limit out of
/// the way. The client resolves the same spec to sign, so both sides agree.
fn bench_spec(provider: ProviderKind) -> serde_json::Value {
    let mut spec = serde_json::json!({
        "provider": provider.as_str(),
        "limits": {"requestsPerSecond": 1_000_000, "burst": 1_000_000},
    });
    match provider {
        ProviderKind::GithubActions | ProviderKind::GooglePubsub => {
            spec["oidc"] = serde_json::json!({"audiences": [BENCH_AUDIENCE]});
        }
        ProviderKind::Generic => {
            spec["signature"] = serde_json::json!({
                "header": "X-Signature", "algorithm": "sha256", "encoding": "hex",
            });
        }
        _ => {}
    }
    spec
}

/// The scheme the route built from [`bench_spec`] verifies with (the client signs with it).
fn bench_scheme(provider: ProviderKind) -> Scheme {
    serde_json::from_value::<hookwarden::crd::WebhookIntegrationSpec>(bench_spec(provider))
        .ok()
        .and_then(|spec| hookwarden::domain::spec::resolve(&spec).ok())
        .map(|effective| effective.scheme)
        .unwrap_or_else(|| Scheme::preset(provider))
}

/// Providers the in-process bench cannot serve: SNS signs with a certificate the receiver
/// fetches from an `sns.<region>.amazonaws.com` URL.
fn in_process_supported(provider: ProviderKind) -> Result<(), String> {
    if provider == ProviderKind::AwsSns {
        return Err("aws-sns is not covered: its certificate is fetched from an amazonaws.com URL (its floor is one RSA verification, like OIDC RS256 in --verify-cost)".into());
    }
    Ok(())
}

/// `--verify-cost N`: µs per `signature::verify` of one correctly signed ~350-byte body,
/// for HMAC presets next to the token and asymmetric schemes.
fn verify_cost_schemes(iterations: u64) {
    use hookwarden::domain::signature::{Delivery, verify};
    let body = serde_json::to_vec(&serde_json::json!({
        "ref": "refs/heads/main", "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        "after": "59b20b8d5c6ff8d09518454d4dd8b7b30f095ab5", "seq": 1,
        "repository": {"full_name": "octo/bench", "private": false},
        "pusher": {"name": "octocat"}, "head_commit": {"id": "bench-1", "message": "bench"},
    }))
    .unwrap_or_default();
    let now = 1_700_000_000;
    let whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let cases: [(&str, ProviderKind, String, String); 11] = [
        (
            "github (HMAC-SHA256)",
            ProviderKind::Github,
            "s".repeat(32),
            "s".repeat(32),
        ),
        (
            "stripe (HMAC-SHA256, t=)",
            ProviderKind::Stripe,
            "s".repeat(32),
            "s".repeat(32),
        ),
        (
            "standard-webhooks v1 (HMAC)",
            ProviderKind::StandardWebhooks,
            whsec.into(),
            whsec.into(),
        ),
        (
            "paddle (HMAC-SHA256)",
            ProviderKind::Paddle,
            "s".repeat(32),
            "s".repeat(32),
        ),
        (
            "zoom (HMAC-SHA256)",
            ProviderKind::Zoom,
            "s".repeat(32),
            "s".repeat(32),
        ),
        (
            "twitch (HMAC-SHA256)",
            ProviderKind::Twitch,
            "s".repeat(32),
            "s".repeat(32),
        ),
        (
            "datadog (bearer token)",
            ProviderKind::Datadog,
            "s".repeat(32),
            "s".repeat(32),
        ),
        (
            "azure-event-grid (?code= token)",
            ProviderKind::AzureEventGrid,
            "s".repeat(32),
            "s".repeat(32),
        ),
        (
            "standard-webhooks v1a (ed25519)",
            ProviderKind::StandardWebhooks,
            WHSK.into(),
            WHPK.into(),
        ),
        (
            "discord (ed25519)",
            ProviderKind::Discord,
            ED25519_SEED_HEX.into(),
            ED25519_PUBLIC_HEX.into(),
        ),
        (
            "sendgrid (ECDSA P-256)",
            ProviderKind::Sendgrid,
            P256_PRIVATE.into(),
            P256_PUBLIC.into(),
        ),
    ];
    println!(
        "verify cost: {iterations} verifications of a {}-byte body per scheme, one thread",
        body.len()
    );
    for (label, provider, signing, verifying) in cases {
        let scheme = Scheme::preset(provider);
        let input = SignInput {
            body: &body,
            url: "",
            timestamp: now,
            id: "msg_bench",
            content_type: "application/json",
        };
        let Ok(signed) = sign(&scheme, &signing, &input) else {
            println!("{label:<34} cannot sign");
            continue;
        };
        let mut headers = http::HeaderMap::new();
        for (k, v) in signed {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(&v),
            ) {
                headers.insert(k, v);
            }
        }
        let url = format!("/hooks/x?code={verifying}");
        let delivery = Delivery {
            method: "POST",
            url: &url,
            headers: &headers,
            body: &body,
        };
        let secrets = [verifying.as_str()];
        assert!(
            verify(&scheme, &secrets, &delivery, now).is_valid(),
            "{label}: does not verify"
        );
        let started = Instant::now();
        let mut valid = 0u64;
        for _ in 0..iterations {
            valid += u64::from(
                verify(&scheme, std::hint::black_box(&secrets), &delivery, now).is_valid(),
            );
        }
        let us = started.elapsed().as_secs_f64() * 1e6 / iterations.max(1) as f64;
        assert_eq!(valid, iterations);
        println!(
            "{label:<34} {us:>8.2} µs/delivery  ({:>9.0} verifications/s per core)",
            1e6 / us
        );
    }
}

/// `--dedup-max-ids`, for every in-process receiver this run starts.
static DEDUP_MAX_IDS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(DEFAULT_MAX_ENTRIES);

/// Starts the receiver app with `sink` on its own runtime; returns its target.
fn start_in_process<S: DeliverySink>(
    provider: ProviderKind,
    workers: usize,
    sink: S,
) -> std::io::Result<Target> {
    start_in_process_with(provider, workers, sink, true)
}

/// [`start_in_process`]; `budgets: false` sets the connection cap and the in-flight body
/// budget so high they never bite ("effectively off"), for `--compare-budgets`.
fn start_in_process_with<S: DeliverySink>(
    provider: ProviderKind,
    workers: usize,
    sink: S,
    budgets: bool,
) -> std::io::Result<Target> {
    // OIDC: the route's Secret holds the issuer's JWKS; the client's "secret" is the
    // bearer token it presents. Asymmetric schemes: the route holds the public key, the
    // client signs with the private one.
    in_process_supported(provider).map_err(std::io::Error::other)?;
    let (mut secret, mut client_secret) = bench_keys(provider);
    let path = generate_path();
    let spec = bench_spec(provider);
    match provider {
        ProviderKind::GithubActions => (secret, client_secret) = bench_issuer("RS256"),
        ProviderKind::GooglePubsub => {
            (secret, client_secret) = bench_issuer_for("RS256", "https://accounts.google.com");
        }
        _ => {}
    }
    let route = Route {
        namespace: "bench".into(),
        name: "receiver".into(),
        uid: "bench-uid".into(),
        generation: 1,
        path: path.clone(),
        secrets: vec![RouteSecret {
            value: SecretValue(secret),
            expires_at: None,
        }],
        spec: serde_json::from_value(spec).map_err(std::io::Error::other)?,
        forward: Vec::new(),
        replay: None,
        expected_interval_seconds: None,
    };
    let routes = Arc::new(RouteTable::new());
    routes.upsert(route).map_err(std::io::Error::other)?;
    let mut config = PipelineConfig::default();
    let mut server_options = ServerOptions::default();
    if !budgets {
        config.body_budget = Arc::new(hookwarden::receiver::limits::BodyBudget::new(1 << 60));
        config.max_connections = 1 << 30;
        server_options.max_connections = 1 << 30;
    }
    let dedup = Dedup::new(
        DEDUP_MAX_IDS.load(std::sync::atomic::Ordering::Relaxed),
        config.clock.clone(),
    );
    let state = Arc::new(ReceiverState::new(
        config,
        routes,
        dedup,
        Arc::new(sink),
        ReceiverMetrics::default(),
    ));
    state.set_ready(true);
    let addr = serve_on_own_runtime(workers, app(state), server_options)?;
    Ok(Target {
        addr,
        host: addr.to_string(),
        path,
        secret: client_secret,
    })
}

/// Serves `app` with the receiver's `serve_with` on 127.0.0.1 from a runtime of `workers`
/// threads on a thread of its own, until the process ends. Returns the address.
fn serve_on_own_runtime(
    workers: usize,
    app: impl App,
    server_options: ServerOptions,
) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                let _ = serve_with(listener, app, server_options, std::future::pending()).await;
            }
        })
    });
    Ok(addr)
}

/// The receiver's HTTP stack with nothing behind it (`--transport-floor`): the same
/// `serve_with` and server options, an axum router whose fallback reads the body and
/// answers 202 with no body.
fn start_transport_floor(workers: usize) -> std::io::Result<Target> {
    async fn accept(body: Bytes) -> http::StatusCode {
        std::hint::black_box(body.len());
        http::StatusCode::ACCEPTED
    }
    let app = axum::Router::new().fallback(accept);
    let addr = serve_on_own_runtime(workers, app, ServerOptions::default())?;
    Ok(Target {
        addr,
        host: addr.to_string(),
        path: generate_path(),
        secret: String::new(),
    })
}

/// A `hookwarden standalone` child process serving one bench integration; killed on drop.
struct Standalone {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const BENCH_TOKEN: &str = "bench-token-0123456789abcdef";

fn start_standalone(
    provider: ProviderKind,
    workers: usize,
    parent: Option<&std::path::Path>,
    commit_window: Option<&str>,
    forward_to: Option<SocketAddr>,
) -> Result<(Target, Standalone), Box<dyn std::error::Error>> {
    use std::io::BufRead as _;
    let dir = match parent {
        Some(p) => tempfile::tempdir_in(p)?,
        None => tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?,
    };
    let mut limits = "  limits:\n    requestsPerSecond: 1000000\n    burst: 1000000\n".to_string();
    if let Some(addr) = forward_to {
        // Every delivery to one local target (standalone allows loopback targets).
        limits.push_str(&format!(
            "  forward:\n    - name: bench\n      url: http://{addr}/\n      send: [delivery]\n"
        ));
    }
    let yaml = match provider {
        ProviderKind::Github => format!(
            "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata:\n  name: bench\nspec:\n  provider: github\n{limits}"
        ),
        ProviderKind::Datadog => format!(
            "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata:\n  name: bench\nspec:\n  provider: datadog\n  secretRef:\n    name: bench\n    key: token\n{limits}---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: bench\nstringData:\n  token: {BENCH_TOKEN}\n"
        ),
        other => {
            return Err(format!("--standalone supports github and datadog, not {other}").into());
        }
    };
    std::fs::write(dir.path().join("bench.yaml"), yaml)?;
    let log = std::fs::File::create(dir.path().join("standalone.log"))?;
    // HOOKWARDEN_BENCH_BIN runs another build's binary with this client (A/B comparisons).
    let binary = std::env::var_os("HOOKWARDEN_BENCH_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_hookwarden").into());
    let mut child = Command::new(binary)
        .args([
            "standalone",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "text",
            "--dir",
        ])
        .arg(dir.path())
        .args(commit_window.map(|w| format!("--journal-commit-window={w}")))
        .env("TOKIO_WORKER_THREADS", workers.to_string())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut url = None;
    for line in lines.by_ref() {
        let line = line?;
        if let Some(found) = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") && w.contains("/hooks/"))
        {
            url = Some(found.to_string());
            break;
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let running = Standalone { child, dir };
    let Some(url) = url else {
        let log =
            std::fs::read_to_string(running.dir.path().join("standalone.log")).unwrap_or_default();
        return Err(
            format!("hookwarden standalone printed no endpoint URL; its log:\n{log}").into(),
        );
    };
    let secret = match provider {
        ProviderKind::Datadog => BENCH_TOKEN.to_string(),
        _ => StateDir::existing(&running.dir.path().join(DEFAULT_STATE_DIR))
            .read_generated_secret("default", "bench")
            .ok_or("hookwarden standalone stored no generated secret for the bench")?,
    };
    Ok((parse_url(&url, secret)?, running))
}

fn parse_url(url: &str, secret: String) -> Result<Target, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("--url {url}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("--url must be http:// on this machine".into());
    }
    let host = uri.authority().ok_or("--url needs a host")?.to_string();
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&host)
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or("no address")?;
    if !addr.ip().is_loopback() {
        return Err("the benchmark only loads loopback addresses".into());
    }
    Ok(Target {
        addr,
        host,
        path: uri.path().to_string(),
        secret,
    })
}

/// One unique, correctly signed delivery. GitHub and Datadog keep the bodies of the
/// earlier runs (a ~350-byte push; a Datadog alert); every other preset sends its
/// `hookwarden send-test` sample (`domain::sample`) with a unique delivery id, and the
/// monitoring presets one of 500 incident ids, as a fleet of alerts would.
fn delivery(
    provider: ProviderKind,
    scheme: &Scheme,
    target: &Target,
    run: u64,
    seq: u64,
) -> http::Request<Full<Bytes>> {
    let id = format!("bench-{run:x}-{seq}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let json = |value: serde_json::Value| serde_json::to_vec(&value).unwrap_or_default();
    let (body, content_type, headers) = match provider {
        ProviderKind::Datadog => (
            json(serde_json::json!({
                "id": id, "aggreg_key": format!("agg-{}", seq % 500), "alert_name": "CPU high on web-1",
                "alert_type": "error", "severity": "high", "alert_transition": "Triggered",
                "date": seq, "host": "web-1", "tags": "env:bench,team:payments",
                "link": "https://app.datadoghq.com/monitors/1", "message": "CPU above 90% for 5 minutes",
            })),
            "application/json",
            Vec::new(),
        ),
        ProviderKind::Github => (
            json(serde_json::json!({
                "ref": "refs/heads/main", "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
                "after": "59b20b8d5c6ff8d09518454d4dd8b7b30f095ab5", "seq": seq,
                "repository": {"full_name": "octo/bench", "private": false},
                "pusher": {"name": "octocat"}, "head_commit": {"id": id, "message": "bench"},
            })),
            "application/json",
            vec![("x-github-event".to_string(), "push".to_string())],
        ),
        _ => {
            let options = SampleOptions {
                resolve: false,
                incident_id: Some(format!("inc-{}", seq % 500)),
            };
            let mut sample = sample_with(provider, now, &id, &options);
            // Presets whose delivery id is unsigned (or absent) also dedup on a digest of
            // the signed body, and some samples carry a fixed id: a counter makes every
            // body unique. Discord's sample is the PING handshake; the bench sends a
            // command interaction instead (a delivery, with the interaction id as its id).
            if let Ok(serde_json::Value::Object(mut fields)) =
                serde_json::from_slice::<serde_json::Value>(&sample.body)
            {
                fields.insert("hookwarden_bench_seq".into(), seq.into());
                if provider == ProviderKind::Discord {
                    fields.insert("type".into(), 2.into());
                    fields.insert(
                        "id".into(),
                        (1_100_000_000_000_000_000u64 + seq).to_string().into(),
                    );
                    fields.insert("data".into(), serde_json::json!({"name": "bench"}));
                }
                sample.body = json(serde_json::Value::Object(fields));
            }
            (sample.body, sample.content_type, sample.headers)
        }
    };
    let input = SignInput {
        body: &body,
        url: &format!("http://{}{}", target.host, target.path),
        timestamp: now,
        id: &id,
        content_type,
    };
    let mut builder = http::Request::builder()
        .method("POST")
        .uri(&target.path)
        .header("host", &target.host)
        .header("content-type", content_type);
    for (name, value) in &headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    if scheme.oidc.is_some() {
        // A job or a push subscription reuses its token; the delivery id is a header.
        builder = builder
            .header("authorization", format!("Bearer {}", target.secret))
            .header("x-request-id", &id);
    } else {
        for (name, value) in sign(scheme, &target.secret, &input).unwrap_or_default() {
            builder = builder.header(name, value);
        }
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

struct Pass {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl Pass {
    /// Requests answered with the expected status.
    fn accepted(&self) -> u64 {
        self.requests.saturating_sub(self.errors)
    }

    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }

    fn line(&self, label: &str) -> String {
        format!(
            "{label:<44} {:>9.0} req/s   p50 {:>6.3} ms   p99 {:>6.3} ms   ({} requests, {} errors)",
            self.rate(),
            self.percentile(0.50),
            self.percentile(0.99),
            self.requests,
            self.errors
        )
    }
}

/// Closed loop over `connections` keep-alive connections for `seconds`; with `rate` set,
/// a pacer thread releases that many requests per second in 100 µs steps (tokio timers
/// tick per millisecond, which would send the load in bursts and measure the bursts).
async fn load(
    target: Arc<Target>,
    provider: ProviderKind,
    connections: usize,
    seconds: u64,
    rate: Option<f64>,
    expect_status: u16,
) -> Pass {
    load_counted(
        target,
        provider,
        connections,
        seconds,
        rate,
        expect_status,
        None,
    )
    .await
}

/// [`load`]; with `limit`, exactly that many requests are sent (whatever the time) and
/// `seconds` is ignored: `--count` for per-delivery cost measurements.
async fn load_counted(
    target: Arc<Target>,
    provider: ProviderKind,
    connections: usize,
    seconds: u64,
    rate: Option<f64>,
    expect_status: u16,
    limit: Option<u64>,
) -> Pass {
    let scheme = Arc::new(bench_scheme(provider));
    let seconds = if limit.is_some() { 1 << 30 } else { seconds };
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let seq = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let permits = rate.map(|r| {
        let permits = Arc::new(tokio::sync::Semaphore::new(0));
        let pacer = permits.clone();
        std::thread::spawn(move || {
            let mut released = 0u64;
            while Instant::now() < deadline {
                let due = (started.elapsed().as_secs_f64() * r) as u64;
                if due > released {
                    pacer.add_permits(usize::try_from(due - released).unwrap_or(usize::MAX));
                    released = due;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            pacer.close();
        });
        permits
    });
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let target = target.clone();
            let seq = seq.clone();
            let permits = permits.clone();
            let scheme = scheme.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let Ok(stream) = tokio::net::TcpStream::connect(target.addr).await else {
                    return (latencies, 1);
                };
                let _ = stream.set_nodelay(true);
                let Ok((mut sender, conn)) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                else {
                    return (latencies, 1);
                };
                tokio::spawn(conn);
                while Instant::now() < deadline {
                    if let Some(p) = &permits {
                        match p.acquire().await {
                            Ok(permit) => permit.forget(),
                            Err(_) => break,
                        }
                    }
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    if limit.is_some_and(|limit| n >= limit) {
                        break;
                    }
                    let request = delivery(provider, &scheme, &target, run, n);
                    let t = Instant::now();
                    if sender.ready().await.is_err() {
                        errors += 1;
                        break;
                    }
                    match sender.send_request(request).await {
                        Ok(response) => {
                            let ok = response.status().as_u16() == expect_status;
                            let _ = response.into_body().collect().await;
                            latencies
                                .push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                            if !ok {
                                errors += 1;
                            }
                        }
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    Pass {
        requests: all.len() as u64,
        errors,
        elapsed,
        latencies_us: all,
    }
}

/// nginx on loopback answering a fixed 200, `workers` worker processes.
struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Nginx {
    fn start(workers: usize) -> Option<Nginx> {
        let binary = ["nginx", "/usr/sbin/nginx"].into_iter().find(|b| {
            Command::new(b)
                .arg("-v")
                .stderr(Stdio::null())
                .status()
                .is_ok()
        })?;
        let dir = tempfile::tempdir().ok()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let prefix = dir.path().display().to_string();
        let conf = format!(
            "worker_processes {workers};\ndaemon off;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {prefix}/body;\n  keepalive_requests 1000000;\n\
               server {{\n    listen 127.0.0.1:{port};\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).ok()?;
        let child = Command::new(binary)
            .args([
                "-p",
                &prefix,
                "-c",
                &format!("{prefix}/nginx.conf"),
                "-e",
                &format!("{prefix}/error.log"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
        let mut nginx = Nginx {
            child,
            _dir: dir,
            addr,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Some(nginx);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nginx.child.kill();
        None
    }
}

impl Drop for Nginx {
    /// SIGTERM to the master, which stops its workers; SIGKILL would orphan them.
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Resident set size of this process, from /proc (Linux).
fn rss_mib() -> Option<f64> {
    proc_status_mib("VmRSS:")
}

/// A memory line of /proc/self/status (`VmRSS:`, `VmHWM:` …) in MiB (Linux).
fn proc_status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn memory(routes: u64, ids: u64) -> Result<(), Box<dyn std::error::Error>> {
    let before = rss_mib().unwrap_or(f64::NAN);
    let table = RouteTable::new();
    let providers = [
        ProviderKind::Github,
        ProviderKind::Datadog,
        ProviderKind::Stripe,
        ProviderKind::Alertmanager,
    ];
    let batch: Vec<Route> = (0..routes)
        .map(|i| {
            let provider = providers[(i % providers.len() as u64) as usize];
            let spec = serde_json::json!({"provider": provider.as_str(), "allowedSourceRanges": ["10.0.0.0/8"]});
            Ok(Route {
                namespace: format!("team-{}", i % 100),
                name: format!("integration-{i}"),
                uid: format!("00000000-0000-0000-0000-{i:012}"),
                generation: 1,
                path: generate_path(),
                secrets: vec![RouteSecret { value: SecretValue(format!("{i:064x}")), expires_at: None }],
                spec: serde_json::from_value(spec)?,
                forward: Vec::new(),
                replay: None,
                expected_interval_seconds: None,
            })
        })
        .collect::<Result<_, serde_json::Error>>()?;
    let errors = table.replace_all(batch);
    if let Some(e) = errors.first() {
        return Err(e.to_string().into());
    }
    let dedup = Dedup::new(
        DEFAULT_MAX_ENTRIES.max(ids),
        hookwarden::receiver::system_clock(),
    );
    // A receiver remembers each id twice: in the dedup memory (the request path) and in
    // the ledger (what journal checkpoints store so dedup survives a restart).
    let mut ledger = hookwarden::receiver::ledger::Ledger::default();
    let far = i64::MAX / 2;
    for i in 0..ids {
        let integration = format!("team-{}/integration-{}", i % 100, i % routes.max(1));
        let id = format!("{:08x}-7c1e-4b6a-9f0e-{i:012}", i);
        dedup.remember(&integration, &id, far);
        ledger.remember_id(&integration, &id, far);
    }
    let after = rss_mib().unwrap_or(f64::NAN);
    // The allocator hands freed pages back to the OS after a delay (mimalloc: 1 s) and
    // on later allocator activity: what a long-running receiver holds.
    std::thread::sleep(Duration::from_millis(1500));
    drop(std::hint::black_box(vec![0u8; 1 << 20]));
    let settled = rss_mib().unwrap_or(f64::NAN);
    let peak = proc_status_mib("VmHWM:").unwrap_or(f64::NAN);
    println!(
        "memory: {} routes + {} remembered ids (dedup + ledger): RSS {after:.1} MiB right after building them, \
         {settled:.1} MiB 1.5 s later, peak (VmHWM) {peak:.1} MiB (process before building them: {before:.1} MiB)",
        table.len(),
        dedup.len()
    );
    drop(ledger);
    Ok(())
}

/// The allocator the `hookwarden` binary uses, so the in-process pipeline is measured as
/// shipped.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = Options::parse();
    DEDUP_MAX_IDS.store(options.dedup_max_ids, std::sync::atomic::Ordering::Relaxed);
    if let Some(sizes) = &options.memory {
        return memory(sizes[0], sizes.get(1).copied().unwrap_or(0));
    }
    if let Some(n) = options.verify_cost {
        verify_cost_schemes(u64::from(n));
        return verify_cost(n);
    }
    let provider = options.provider;
    if options.serve {
        return serve(&options);
    }
    let mut standalone = None;
    let mut floor_folder = None;
    // The forward target runs on its own runtime thread in this process.
    let forward_target = if options.forward {
        Some(CountingTarget::start(([127, 0, 0, 1], 0).into(), 1)?)
    } else {
        None
    };
    if options.compare_budgets {
        return compare_budgets(&options);
    }
    let (target, label) = match &options.url {
        Some(url) => {
            let secret = options.secret.clone().ok_or("--url needs --secret")?;
            (parse_url(url, secret)?, format!("receiver at {url}"))
        }
        None if options.standalone => {
            let (target, running) = start_standalone(
                provider,
                options.workers,
                options.state_dir.as_deref(),
                options.journal_commit_window.as_deref(),
                forward_target.as_ref().map(|t| t.addr),
            )?;
            let label = format!(
                "hookwarden standalone, journal in {} ({} workers, commit window {}{})",
                running.dir.path().display(),
                options.workers,
                options
                    .journal_commit_window
                    .as_deref()
                    .unwrap_or("default"),
                match &forward_target {
                    Some(t) => format!(", forwarding every delivery to {}", t.addr),
                    None => String::new(),
                }
            );
            standalone = Some(running);
            (target, label)
        }
        None if options.fsync_floor.is_some() => {
            let dir = options
                .fsync_floor
                .as_deref()
                .unwrap_or(std::path::Path::new("."));
            let window = Duration::from_micros(options.fsync_floor_window_us);
            let (sink, folder) = FsyncFloorSink::start(dir, window)?;
            let label = format!(
                "receiver in-process ({provider}, fsync floor in {}, window {} us, {} workers)",
                folder.path().display(),
                options.fsync_floor_window_us,
                options.workers
            );
            floor_folder = Some(folder);
            (start_in_process(provider, options.workers, sink)?, label)
        }
        None if options.transport_floor => (
            start_transport_floor(options.workers)?,
            format!(
                "transport floor in-process (serve_with + axum, no pipeline, {} workers)",
                options.workers
            ),
        ),
        None => (
            start_in_process(provider, options.workers, CountingSink::default())?,
            format!(
                "receiver in-process ({provider}, memory sink, {} workers)",
                options.workers
            ),
        ),
    };
    let target = Arc::new(target);
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.client_threads)
        .enable_all()
        .build()?;
    println!(
        "load: {} keep-alive connections, {} s per pass, {} round(s), {} client thread(s), unique signed {provider} deliveries",
        options.connections, options.seconds, options.rounds, options.client_threads
    );
    let nginx = if options.no_nginx || options.count.is_some() {
        None
    } else {
        Nginx::start(options.workers)
    };
    if !options.no_nginx && nginx.is_none() {
        println!(
            "nginx: not installed or failed to start; no comparison (apt-get install -y nginx-light)"
        );
    }
    let nginx_target = nginx.as_ref().map(|n| {
        Arc::new(Target {
            addr: n.addr,
            host: n.addr.to_string(),
            path: target.path.clone(),
            secret: target.secret.clone(),
        })
    });
    if let Some(n) = options.count {
        let expect = if options.url.is_some() {
            options.expect_status
        } else {
            202
        };
        let pass = client.block_on(load_counted(
            target.clone(),
            provider,
            options.connections,
            0,
            None,
            expect,
            Some(n),
        ));
        println!("{}", pass.line(&label));
        drop(standalone);
        drop(floor_folder);
        return if pass.errors == 0 && pass.requests == n {
            Ok(())
        } else {
            Err(format!(
                "{} of {n} requests answered, {} errors",
                pass.requests, pass.errors
            )
            .into())
        };
    }
    // Warm-up: connection setup, allocator, caches.
    let warm = client.block_on(load(
        target.clone(),
        provider,
        options.connections,
        1,
        None,
        202,
    ));
    // Deliveries the receiver answered 202 (each is one forward with --forward).
    let mut accepted = warm.accepted();
    if let Some(t) = &nginx_target {
        client.block_on(load(t.clone(), provider, options.connections, 1, None, 200));
    }
    // Alternate receiver and nginx passes so a noisy neighbour hits both alike; the
    // median of the per-round ratios is the figure.
    let mut rates = Vec::new();
    let mut ratios = Vec::new();
    for _ in 0..options.rounds.max(1) {
        let forwarded_before = forward_target.as_ref().map(CountingTarget::requests);
        let pass = client.block_on(load(
            target.clone(),
            provider,
            options.connections,
            options.seconds,
            None,
            202,
        ));
        accepted += pass.accepted();
        println!("{}", pass.line(&label));
        if let (Some(t), Some(before)) = (&forward_target, forwarded_before) {
            let during = t.requests() - before;
            println!(
                "  forwards received by the target during the pass: {during} ({:.0}/s; {} accepted so far, {} forwarded)",
                during as f64 / pass.elapsed.as_secs_f64(),
                accepted,
                t.requests()
            );
        }
        rates.push(pass.rate());
        if let Some(t) = &nginx_target {
            let reference = client.block_on(load(
                t.clone(),
                provider,
                options.connections,
                options.seconds,
                None,
                200,
            ));
            println!(
                "{}",
                reference.line(&format!("nginx return 200 ({} workers)", options.workers))
            );
            ratios.push(pass.rate() / reference.rate());
        }
    }
    let rate = median(&mut rates);
    if !ratios.is_empty() {
        println!(
            "ratio receiver / nginx (median of {} rounds): {:.2}",
            ratios.len(),
            median(&mut ratios)
        );
    }
    let offered = options.latency_rate.unwrap_or(rate / 2.0);
    if !options.no_half_rate && offered > 0.0 {
        let paced = client.block_on(load(
            target.clone(),
            provider,
            options.connections,
            options.seconds,
            Some(offered),
            202,
        ));
        accepted += paced.accepted();
        let label = match options.latency_rate {
            Some(_) => format!("receiver at a set rate ({offered:.0} req/s offered)"),
            None => format!("receiver at half rate ({offered:.0} req/s offered)"),
        };
        println!("{}", paced.line(&label));
    }
    if let Some(t) = &forward_target {
        // The backlog the passes left: wait for all of it (or 30 s without progress).
        let load_end = Instant::now();
        let at_end = t.requests();
        let got = t.wait_for(accepted, Duration::from_secs(30), Duration::from_secs(900));
        let last = t
            .last_arrival()
            .map(|l| l.saturating_duration_since(load_end).as_secs_f64());
        let drained = last.unwrap_or(0.0);
        println!(
            "forwards: {got} of {accepted} accepted deliveries reached the target ({at_end} when the load stopped); \
             the last arrived {drained:.2} s after the load stopped ({:.0} forwards/s meanwhile); \
             {} connections",
            if drained > 0.0 {
                (got - at_end) as f64 / drained
            } else {
                0.0
            },
            t.connections()
        );
    }
    // The child is stopped (and its folder removed) only now, after every pass.
    drop(standalone);
    drop(floor_folder);
    Ok(())
}

/// `--serve`: the in-process receiver alone, until stdin closes.
fn serve(options: &Options) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::{Read as _, Write as _};
    let sink = CountingSink::default();
    let accepted = sink.accepted.clone();
    let target = start_in_process(options.provider, options.workers, sink)?;
    println!(
        "serving http://{}{} {}",
        target.host, target.path, target.secret
    );
    std::io::stdout().flush()?;
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    eprintln!("accepted {}", accepted.load(Ordering::Relaxed));
    // The server runtime's thread never returns: leave without joining it.
    std::process::exit(0)
}

/// `--compare-budgets`: two in-process receivers (memory sink), one with the default
/// budgets and one with them effectively off, loaded alternately with the same client;
/// the median of the per-round ratios is the budgets' throughput cost.
fn compare_budgets(options: &Options) -> Result<(), Box<dyn std::error::Error>> {
    let provider = options.provider;
    let on = Arc::new(start_in_process_with(
        provider,
        options.workers,
        CountingSink::default(),
        true,
    )?);
    let off = Arc::new(start_in_process_with(
        provider,
        options.workers,
        CountingSink::default(),
        false,
    )?);
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.client_threads)
        .enable_all()
        .build()?;
    println!(
        "load: {} keep-alive connections, {} s per pass, {} round(s), {} client thread(s), unique signed {provider} deliveries",
        options.connections, options.seconds, options.rounds, options.client_threads
    );
    for target in [&on, &off] {
        client.block_on(load(
            target.clone(),
            provider,
            options.connections,
            1,
            None,
            202,
        ));
    }
    let mut ratios = Vec::new();
    for round in 0..options.rounds.max(1) {
        // Alternate which goes first, so a drifting neighbour hits both alike.
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        let mut rate = [0.0; 2];
        for budgets in order {
            let target = if budgets { &on } else { &off };
            let pass = client.block_on(load(
                target.clone(),
                provider,
                options.connections,
                options.seconds,
                None,
                202,
            ));
            let label = if budgets {
                format!("budgets on ({} workers)", options.workers)
            } else {
                format!("budgets effectively off ({} workers)", options.workers)
            };
            println!("{}", pass.line(&label));
            rate[usize::from(!budgets)] = pass.rate();
        }
        ratios.push(rate[0] / rate[1]);
    }
    println!(
        "ratio budgets on / off (median of {} rounds): {:.3}",
        ratios.len(),
        median(&mut ratios)
    );
    Ok(())
}
