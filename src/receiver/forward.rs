//! Forwarding after the 202 (DESIGN.md "Forwarding"): the receiver-side runtime.
//!
//! 1. The pipeline puts a delivery's body into its journal record when one of the
//!    route's targets is sent `delivery` events ([`ForwardedBody`]): the forward is
//!    durable in the same group commit as the delivery, before the 2xx.
//! 2. The status loop folds the record; [`jobs_for`] turns it (and the incidents it
//!    opened or resolved) into one rendered job per target, and [`Forwarder::import`]
//!    appends them to the [`Outbox`]; [`Forwarder::sync`] makes the outbox durable before
//!    the status loop's applied mark or checkpoint may cover the journal entry. After a
//!    crash, replay re-imports whatever the checkpoint did not cover; job ids (stable
//!    `webhook-id` + target) make that idempotent.
//! 3. The [`Forwarder`] task schedules attempts (retry schedule with jitter,
//!    `Retry-After`, a circuit breaker per target), sends them with
//!    [`crate::forwarder::Sender`] (SSRF guard on every connection), journals each
//!    outcome in the outbox, dead-letters what is terminal or exhausted, and keeps dead
//!    letters for `deadLetterTTL`. Bodies stay on disk.
//!
//! Delivery is at least once: a crash between an attempt's 2xx and its tombstone (for a
//! crash of the machine: its next sync, at most a status interval later), or before the
//! checkpoint that follows an import, sends again with the same `webhook-id`, so the
//! receiving side can drop the copy.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::outbox::{Change, JobMeta, JobState, Key, Lane, Outbox, StoredJob, key_of};
use super::sink::Accepted;
use crate::clock::Clock;
use crate::crd::{ForwardStatus, ProviderKind};
use crate::domain::forward::{
    CircuitBreaker, CircuitState, DeliveryFacts, Event, EventKind, IncidentChange, IncidentFacts,
    IntegrationRef, Outcome, Permit, SigningKey, next_attempt_at, render, sign_request,
};
use crate::domain::incident::state::Incident;
use crate::domain::spec::EffectiveForward;
use crate::forwarder::{Request, Sender};
use crate::route::{ReplayRequest, RouteForward};

/// The body of a delivery that is to be forwarded, kept in its journal record.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardedBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Not in the record's JSON: [`crate::receiver::sink::Accepted::to_record`] appends
    /// the bytes after it. Records of earlier versions carry it here, as base64.
    #[serde(
        default,
        skip_serializing,
        deserialize_with = "base64_bytes::deserialize"
    )]
    pub body: Vec<u8>,
    /// The provider's delivery-id and event-type headers (for `raw`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meta_headers: Vec<(String, String)>,
}

impl std::fmt::Debug for ForwardedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardedBody")
            .field("content_type", &self.content_type)
            .field("body_bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// One integration's forward targets, as its served route has them.
#[derive(Debug, PartialEq, Eq)]
pub struct ForwardConfig {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub provider: ProviderKind,
    pub targets: Vec<TargetConfig>,
    /// The integration's replay request, if its route carries one.
    pub replay: Option<ReplayRequest>,
}

/// One target: its resolved spec and the material the controller put in the route
/// (`None` while its Secrets do not resolve: its forwards wait).
#[derive(Debug, PartialEq, Eq)]
pub struct TargetConfig {
    pub spec: EffectiveForward,
    pub material: Option<RouteForward>,
}

impl ForwardConfig {
    /// Whether any target is sent every delivery (the pipeline then journals the body).
    pub fn wants_deliveries(&self) -> bool {
        self.targets
            .iter()
            .any(|t| t.spec.sends(EventKind::Delivery))
    }

    fn target(&self, name: &str) -> Option<&TargetConfig> {
        self.targets.iter().find(|t| t.spec.name == name)
    }
}

/// `namespace/name` → the integration's forward targets (absent: none).
pub type ForwardLookup = Arc<dyn Fn(&str) -> Option<Arc<ForwardConfig>> + Send + Sync>;

/// A forward to import: its outbox metadata and rendered (unsigned) body.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub meta: JobMeta,
    pub body: Bytes,
}

fn digest_id(prefix: &str, parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    format!("{prefix}{}", &hex::encode(h.finalize())[..32])
}

/// What one folded delivery may forward: the delivery (its journaled body) and the
/// incidents it opened (or re-opened) and resolved, as they stood after the fold.
#[derive(Clone, Debug)]
pub struct Folded {
    pub accepted: Accepted,
    /// (incident after the change, resolved?)
    pub changes: Vec<(Incident, bool)>,
}

/// The jobs one folded delivery causes: one per target and event it is sent, rendered.
pub fn jobs_for(config: &ForwardConfig, folded: &Folded) -> Vec<NewJob> {
    let accepted = &folded.accepted;
    let mut jobs = Vec::new();
    let integration = IntegrationRef {
        namespace: &config.namespace,
        name: &config.name,
    };
    let mut push = |kind: EventKind, webhook_id: &str, event: &Event<'_>| {
        for target in &config.targets {
            if !target.spec.sends(kind) {
                continue;
            }
            match render(event, target.spec.format, integration, webhook_id) {
                Ok(rendered) => jobs.push(NewJob {
                    meta: JobMeta {
                        id: format!("{webhook_id}/{}", target.spec.name),
                        webhook_id: webhook_id.to_string(),
                        integration: accepted.integration.clone(),
                        uid: accepted.uid.clone(),
                        target: target.spec.name.clone(),
                        event: kind.as_str().to_string(),
                        content_type: rendered.content_type.clone(),
                        format: rendered.format.as_str().to_string(),
                        headers: rendered.headers.clone(),
                        created_ms: accepted.received_at_ms,
                    },
                    body: rendered.body,
                }),
                Err(e) => {
                    tracing::warn!(target = %target.spec.name, error = %e, "cannot render a forward; not queued")
                }
            }
        }
    };
    if !accepted.ignored
        && let Some(fb) = &accepted.forward
    {
        let own_id;
        let delivery_id = match &accepted.delivery_id {
            Some(id) => id.as_str(),
            None => {
                own_id = digest_id(
                    "hw_",
                    &[
                        accepted.uid.as_bytes(),
                        &accepted.received_at_ms.to_le_bytes(),
                        &fb.body,
                    ],
                );
                own_id.as_str()
            }
        };
        let webhook_id = digest_id(
            "msg_",
            &[accepted.uid.as_bytes(), b"d", delivery_id.as_bytes()],
        );
        let event = Event::Delivery(DeliveryFacts {
            id: delivery_id,
            event: accepted.event_type.as_deref(),
            provider: config.provider.as_str(),
            received_at_ms: accepted.received_at_ms,
            content_type: fb.content_type.as_deref(),
            body: &fb.body,
            meta_headers: &fb.meta_headers,
        });
        push(EventKind::Delivery, &webhook_id, &event);
    }
    for (incident, resolved) in &folded.changes {
        let id = &incident.id;
        let change = if *resolved {
            IncidentChange::Resolved
        } else {
            IncidentChange::Opened
        };
        let order = incident.last_order.encode();
        let webhook_id = digest_id(
            "msg_",
            &[
                accepted.uid.as_bytes(),
                b"i",
                id.as_bytes(),
                change.kind().as_str().as_bytes(),
                order.as_bytes(),
            ],
        );
        let event = Event::Incident {
            change,
            at_ms: incident.last_event_ms,
            incident: IncidentFacts {
                id,
                title: &incident.title,
                severity: incident.severity,
                state: incident.state,
                opened_at_ms: incident.opened_at_ms,
                resolved_at_ms: incident.resolved_at_ms,
                link: incident.link.as_deref(),
                order: Some(&order),
            },
        };
        push(change.kind(), &webhook_id, &event);
    }
    jobs
}

/// Tuning of the forwarder.
#[derive(Clone, Debug)]
pub struct ForwarderOptions {
    /// Where the outbox lives (under the journal's folder).
    pub dir: PathBuf,
    /// Attempts in flight across all targets.
    pub max_in_flight: usize,
    /// Attempts in flight to one target.
    pub per_target_in_flight: usize,
    /// Intake first: while the receiver's workers are saturated and taking deliveries,
    /// new attempts wait, for at most this long past their due time (`None`: never
    /// wait). See [`IntakeGate`].
    pub max_lag: Option<Duration>,
    /// How far intake has got (the journal's highest queued sequence number): whether
    /// deliveries are arriving at all.
    pub intake_progress: Option<IntakeProgress>,
}

/// Reads how far intake has got (a count that grows with every accepted delivery).
#[derive(Clone)]
pub struct IntakeProgress(pub Arc<dyn Fn() -> u64 + Send + Sync>);

impl std::fmt::Debug for IntakeProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IntakeProgress")
    }
}

/// Default of `--forward-max-lag`.
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(10);

/// Share of the runtime's worker time above which the workers count as saturated…
const SATURATED: f64 = 0.8;
/// …and, once they are, the share they must fall below (for [`EASE`]) to count as
/// eased: while forwarding yields, the workers only answer deliveries, and where the
/// load's clients share the node's cores that alone hovers around [`SATURATED`].
const EASED: f64 = 0.5;
/// Staged outcome records are written at least this often…
const FLUSH_DELAY: Duration = Duration::from_millis(20);
/// …or as soon as this many wait.
const FLUSH_BATCH: usize = 1024;
/// How often the gate looks at the workers (a shorter window is mostly noise).
const GATE_WINDOW: Duration = Duration::from_millis(20);

/// How long intake must stay below [`EASED`] (while deliveries keep arriving) before
/// forwarding stops yielding: a single quiet window between two busy ones is noise, and
/// every switch back costs a read-back of deferred forwards from the journal.
const EASE: Duration = Duration::from_millis(200);

/// Decides whether forwarding yields to intake; shared by the forwarder (attempts) and
/// the status loop (imports: see `receiver::runtime`, "Deferred forwards").
///
/// Why: every forward is a second HTTP exchange, this time as a client, on the same
/// workers that answer deliveries, and importing it (rendering, writing it to the
/// outbox) costs about a third of a delivery's own CPU; on a small node a forwarder
/// working as fast as it can takes a third to a half of intake (docs/bench.md
/// "Forwarding"). Forwards are durable in the journal before the 2xx, so they can wait
/// out a burst. Intake is *saturated* once, over a [`GATE_WINDOW`], the runtime's
/// workers were busy ≥ [`SATURATED`] of the time *and* deliveries were accepted; it
/// stays so until deliveries stop or the workers stay below [`EASED`] for [`EASE`]. While
/// saturated, only forwards due more than `max_lag` ago start, and the status loop
/// leaves new forwards in the journal for at most `max_lag` (the backlog is sent at full
/// speed again once it is that late: under a sustained overload forwards run `max_lag`
/// behind and the two share the workers). Busy workers without intake (a backlog
/// draining) do not count.
pub struct IntakePressure {
    state: Mutex<GateState>,
    max_lag: Duration,
    /// 0: measured; 1: saturated; 2: not ([`IntakePressure::force`]).
    forced: std::sync::atomic::AtomicU8,
}

impl std::fmt::Debug for IntakePressure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntakePressure")
            .field("max_lag", &self.max_lag)
            .finish_non_exhaustive()
    }
}

struct GateState {
    progress: Arc<dyn Fn() -> u64 + Send + Sync>,
    last_at: std::time::Instant,
    last_progress: u64,
    last_busy: Duration,
    yielding: bool,
    /// Since when intake has been below saturation while still yielding.
    eased_since: Option<std::time::Instant>,
    /// When the current yield began (for the log).
    since: Option<std::time::Instant>,
}

fn workers_busy() -> Duration {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return Duration::ZERO;
    };
    let metrics = handle.metrics();
    (0..metrics.num_workers())
        .map(|w| metrics.worker_total_busy_duration(w))
        .sum()
}

impl IntakePressure {
    pub fn new(progress: Arc<dyn Fn() -> u64 + Send + Sync>, max_lag: Duration) -> IntakePressure {
        IntakePressure {
            state: Mutex::new(GateState {
                last_progress: progress(),
                progress,
                last_at: std::time::Instant::now(),
                last_busy: workers_busy(),
                yielding: false,
                eased_since: None,
                since: None,
            }),
            max_lag,
            forced: std::sync::atomic::AtomicU8::new(0),
        }
    }

    /// Overrides the measurement (`None`: measure again). For tests, which cannot make a
    /// machine's workers busy on cue.
    pub fn force(&self, saturated: Option<bool>) {
        let v = match saturated {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        };
        self.forced.store(v, Ordering::Relaxed);
    }

    /// How long forwards may wait for intake (`--forward-max-lag`).
    pub fn max_lag(&self) -> Duration {
        self.max_lag
    }

    /// Looks again once a window has passed; returns whether intake is saturated.
    pub fn saturated(&self) -> bool {
        match self.forced.load(Ordering::Relaxed) {
            1 => return true,
            2 => return false,
            _ => {}
        }
        let mut g = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = std::time::Instant::now();
        let elapsed = now.duration_since(g.last_at);
        if elapsed < GATE_WINDOW {
            return g.yielding;
        }
        let busy = workers_busy();
        let progress = (g.progress)();
        let workers = tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_workers())
            .unwrap_or(1)
            .max(1);
        let share = busy.saturating_sub(g.last_busy).as_secs_f64()
            / (elapsed.as_secs_f64() * workers as f64);
        let arriving = progress > g.last_progress;
        let busy_enough = share >= SATURATED || (g.yielding && share >= EASED);
        let yielding = if busy_enough && arriving {
            g.eased_since = None;
            true
        } else if g.yielding && arriving {
            let eased = *g.eased_since.get_or_insert(now);
            now.duration_since(eased) < EASE
        } else {
            false
        };
        if !yielding {
            g.eased_since = None;
        }
        tracing::trace!(share, arriving, yielding, "intake gate");
        if yielding != g.yielding {
            match (yielding, g.since.take()) {
                (true, _) => g.since = Some(now),
                (false, Some(since)) => tracing::debug!(
                    yielded_ms = now.duration_since(since).as_millis() as u64,
                    "forwarding: intake eased, sending and importing again"
                ),
                (false, None) => {}
            }
        }
        g.yielding = yielding;
        g.last_at = now;
        g.last_busy = busy;
        g.last_progress = progress;
        yielding
    }

    /// What [`IntakePressure::saturated`] last said, without looking again.
    fn yielding(&self) -> bool {
        match self.forced.load(Ordering::Relaxed) {
            1 => true,
            2 => false,
            _ => {
                self.state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .yielding
            }
        }
    }

    /// Forwards due at or before this may start now.
    fn cutoff(&self, now_ms: i64) -> i64 {
        if self.yielding() {
            now_ms.saturating_sub(i64::try_from(self.max_lag.as_millis()).unwrap_or(i64::MAX))
        } else {
            now_ms
        }
    }
}

/// Prometheus handles of forwarding (DESIGN "Forwarding": observable).
#[derive(Clone, Debug)]
pub struct ForwardMetrics {
    pub attempts: Family<TargetOutcome, prometheus_client::metrics::counter::Counter>,
    pub duration: Histogram,
    pub pending: Family<TargetLabels, Gauge>,
    pub dead_letters: Family<TargetLabels, Gauge>,
    /// 1 while a target's circuit is not closed (open, or half-open waiting for its probe).
    pub circuit_open: Family<TargetLabels, Gauge>,
}

impl Default for ForwardMetrics {
    fn default() -> Self {
        ForwardMetrics::new()
    }
}

impl ForwardMetrics {
    pub fn new() -> ForwardMetrics {
        ForwardMetrics {
            attempts: Family::default(),
            duration: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            pending: Family::default(),
            dead_letters: Family::default(),
            circuit_open: Family::default(),
        }
    }

    /// Removes the series of `integration`'s `target` (the target or the integration
    /// went away), so they stay bounded by the targets that exist.
    fn forget(&self, integration: &str, target: &str) {
        let l = labels(integration, target);
        for outcome in ["delivered", "retryable", "terminal"] {
            self.attempts.remove(&TargetOutcome {
                namespace: l.namespace.clone(),
                integration: l.integration.clone(),
                target: l.target.clone(),
                outcome,
            });
        }
        self.pending.remove(&l);
        self.dead_letters.remove(&l);
        self.circuit_open.remove(&l);
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "hookwarden_forward_attempts",
            "Forward attempts by integration, target and outcome (delivered, retryable, terminal)",
            self.attempts.clone(),
        );
        registry.register(
            "hookwarden_forward_duration_seconds",
            "Time of one forward attempt, connect to answer",
            self.duration.clone(),
        );
        registry.register(
            "hookwarden_forward_pending",
            "Forwards waiting for an attempt (held by an open circuit included)",
            self.pending.clone(),
        );
        registry.register(
            "hookwarden_forward_dead_letters",
            "Dead-lettered forwards kept for replay",
            self.dead_letters.clone(),
        );
        registry.register(
            "hookwarden_forward_circuit_open",
            "1 while a target's circuit breaker is open or half-open (forwards to it wait), 0 when closed",
            self.circuit_open.clone(),
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub namespace: String,
    pub integration: String,
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetOutcome {
    pub namespace: String,
    pub integration: String,
    pub target: String,
    pub outcome: &'static str,
}

/// What this replica knows of each target, for `status.forwarding`. `delivered` and
/// `failed` count since the process started; the part already added to the stored
/// status is kept apart, so each write adds only the rest (several replicas, and
/// restarts, add up instead of overwriting each other).
#[derive(Default)]
pub struct ForwardBoard {
    targets: Mutex<HashMap<String, BTreeMap<String, ForwardStatus>>>,
    written: Mutex<HashMap<(String, String), (i64, i64)>>,
    events: Mutex<HashMap<String, Vec<ForwardEvent>>>,
    dirty: Mutex<HashSet<String>>,
}

/// An Event about forwarding, published with the integration's next status write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
    /// How many occurrences the message sums up.
    pub count: u32,
}

impl std::fmt::Debug for ForwardBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardBoard").finish_non_exhaustive()
    }
}

impl ForwardBoard {
    /// The entries of one integration, in target-name order, with `delivered` and
    /// `failed` as what is not yet on the stored status.
    pub fn of(&self, integration: &str) -> Vec<ForwardStatus> {
        let targets = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        let written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        targets
            .get(integration)
            .map(|t| {
                t.values()
                    .map(|s| {
                        let (d, f) = written
                            .get(&(integration.to_string(), s.name.clone()))
                            .copied()
                            .unwrap_or_default();
                        ForwardStatus {
                            delivered: s.delivered - d,
                            failed: s.failed - f,
                            ..s.clone()
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Adds `delta` to a target's `pending`. A negative delta applies only while the
    /// target is still on the board (one removed meanwhile took its forwards with it).
    fn adjust_pending(&self, integration: &str, target: &str, delta: i64) -> bool {
        if delta < 0 {
            let all = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
            if !all.get(integration).is_some_and(|t| t.contains_key(target)) {
                return false;
            }
        }
        self.update(integration, target, |s| {
            s.pending = (s.pending + delta).max(0)
        });
        true
    }

    /// Records that `sent` (from [`ForwardBoard::of`]) reached the stored status.
    pub fn mark_written(&self, integration: &str, sent: &[ForwardStatus]) {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        for s in sent {
            let w = written
                .entry((integration.to_string(), s.name.clone()))
                .or_default();
            w.0 += s.delivered;
            w.1 += s.failed;
        }
    }

    /// Records an Event to publish with the integration's next status write.
    pub fn event(&self, integration: &str, warning: bool, reason: &'static str, message: String) {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(integration.to_string())
            .or_default()
            .push(ForwardEvent {
                warning,
                reason,
                message,
                count: 1,
            });
        self.dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(integration.to_string());
    }

    /// A dead letter: one Warning per target per status write, however many.
    fn dead_lettered(&self, integration: &str, target: &str, why: &str) {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let list = events.entry(integration.to_string()).or_default();
        let prefix = format!("forwards to target {target} dead-lettered");
        match list.iter_mut().find(|e| e.message.starts_with(&prefix)) {
            Some(e) => {
                e.count += 1;
                e.message = format!("{prefix} ({}; last: {why})", e.count);
            }
            None => list.push(ForwardEvent {
                warning: true,
                reason: "ForwardDeadLettered",
                message: format!("{prefix} (1; last: {why})"),
                count: 1,
            }),
        }
    }

    /// The Events to publish with a status write of `integration`.
    pub fn take_events(&self, integration: &str) -> Vec<ForwardEvent> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(integration)
            .unwrap_or_default()
    }

    /// Integrations whose entries changed since the last call.
    pub fn take_dirty(&self) -> Vec<String> {
        let mut dirty = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
        dirty.drain().collect()
    }

    fn update(&self, integration: &str, target: &str, f: impl FnOnce(&mut ForwardStatus)) {
        let mut all = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = all
            .entry(integration.to_string())
            .or_default()
            .entry(target.to_string())
            .or_insert_with(|| ForwardStatus {
                name: target.to_string(),
                circuit: Some("closed".to_string()),
                ..ForwardStatus::default()
            });
        f(entry);
        self.dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(integration.to_string());
    }
}

enum Command {
    Import(Vec<NewJob>, oneshot::Sender<std::io::Result<()>>),
    Replay {
        integration: String,
        target: Option<String>,
        reply: oneshot::Sender<usize>,
    },
}

/// Handle to the forwarder task.
#[derive(Clone, Debug)]
pub struct Forwarder {
    tx: mpsc::Sender<Command>,
    pub board: Arc<ForwardBoard>,
    released: Arc<AtomicBool>,
    outbox: Arc<Mutex<Outbox>>,
    /// Whether intake is saturated (`None`: forwarding never yields).
    pressure: Option<Arc<IntakePressure>>,
    metrics: ForwardMetrics,
}

impl Forwarder {
    /// Counts `delta` forwards to `target` that wait in the journal (the status loop's
    /// deferred forwards) as pending, in `status.forwarding` and
    /// `hookwarden_forward_pending`, until they are read back and imported (the status
    /// loop then takes them off again).
    pub fn add_deferred(&self, integration: &str, target: &str, delta: i64) {
        if delta != 0 && self.board.adjust_pending(integration, target, delta) {
            self.metrics
                .pending
                .get_or_create(&labels(integration, target))
                .inc_by(delta);
        }
    }

    /// The intake gate the forwarder yields to, for the status loop to defer imports by
    /// (`None` with `--forward-max-lag 0`).
    pub fn pressure(&self) -> Option<Arc<IntakePressure>> {
        self.pressure.clone()
    }

    /// Lets attempts start: the routes are loaded and the forwards of the journal entries
    /// replayed at start are in the outbox. Until then the forwarder only queues.
    ///
    /// Why it waits: before the routes are loaded every integration looks removed, and a
    /// forward that fell due during the restart would be dropped as having no target (and
    /// dead letters expired on the default TTL). And a pending forward sent before its
    /// journal entry's forwards are re-imported is, once delivered, no longer in the
    /// outbox, so the import would queue it again and send it twice.
    pub fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            tracing::debug!("forwarder released: routes loaded, replayed forwards imported");
        }
    }

    /// Appends `jobs` to the outbox and schedules them. Jobs the outbox already has are
    /// skipped (replay after a restart). Durable against a crash of the machine after the
    /// next [`Forwarder::sync`]; until then their journal entries are what keeps them.
    pub async fn import(&self, jobs: Vec<NewJob>) -> std::io::Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Import(jobs, tx))
            .await
            .map_err(|_| std::io::Error::other("forwarder stopped"))?;
        rx.await
            .map_err(|_| std::io::Error::other("forwarder stopped"))?
    }

    /// Makes everything the outbox holds so far durable: imports and attempt outcomes
    /// (one `fdatasync` of the active segment, none when nothing is new; the outbox is
    /// not locked meanwhile). The status loop calls it before the journal may forget the
    /// deliveries whose forwards were imported (applied mark, checkpoint): one sync per
    /// status tick or checkpoint instead of one per import and per batch of outcomes,
    /// which took the disk's flushes from the journal's group commits under load.
    pub async fn sync(&self) -> std::io::Result<()> {
        let outbox = self.outbox.clone();
        tokio::task::spawn_blocking(move || {
            let handle = outbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .sync_handle()?;
            if let Some(handle) = handle {
                handle.sync()?;
                outbox
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .synced(&handle);
            }
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Re-queues the dead letters of `integration` (of one target, or all). Returns how
    /// many.
    pub async fn replay(&self, integration: &str, target: Option<&str>) -> usize {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .tx
            .send(Command::Replay {
                integration: integration.to_string(),
                target: target.map(str::to_string),
                reply,
            })
            .await;
        if sent.is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }
}

/// Opens the outbox and starts the forwarder task (stopped by `stop`).
pub fn start(
    options: ForwarderOptions,
    sender: Sender,
    configs: &ForwardConfigs,
    outbox_bytes: Arc<std::sync::atomic::AtomicU64>,
    clock: Clock,
    metrics: ForwardMetrics,
    stop: CancellationToken,
) -> std::io::Result<(Forwarder, tokio::task::JoinHandle<()>)> {
    let outbox = Outbox::open(&options.dir)?;
    outbox_bytes.store(outbox.disk_bytes(), std::sync::atomic::Ordering::Relaxed);
    let forwarder_metrics = metrics.clone();
    let replays_file = options.dir.join(REPLAYS_FILE);
    let handled_replays = match std::fs::read(&replays_file) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "outbox: unreadable replay record; replay requests may run once more");
            HashMap::new()
        }),
        Err(_) => HashMap::new(),
    };
    let changes = configs.subscribe();
    let lookup = configs.lookup();
    let (tx, rx) = mpsc::channel(64);
    let gate = match (&options.intake_progress, options.max_lag) {
        (Some(progress), Some(max_lag)) if !max_lag.is_zero() => {
            Some(Arc::new(IntakePressure::new(progress.0.clone(), max_lag)))
        }
        _ => None,
    };
    let board = Arc::new(ForwardBoard::default());
    let released = Arc::new(AtomicBool::new(false));
    let outbox = Arc::new(Mutex::new(outbox));
    let mut task = ForwardTask {
        released: released.clone(),
        outbox: outbox.clone(),
        queue: BinaryHeap::new(),
        sender,
        lookup,
        clock,
        metrics,
        board: board.clone(),
        circuits: HashMap::new(),
        in_flight: HashMap::new(),
        parked: HashMap::new(),
        running: JoinSet::new(),
        prepared: HashMap::new(),
        staged: Vec::new(),
        staged_since: None,
        outbox_bytes,
        handled_replays,
        gate: gate.clone(),
        options,
    };
    task.load();
    let handle = tokio::spawn(task.run(rx, changes, stop));
    Ok((
        Forwarder {
            tx,
            board,
            released,
            outbox,
            pressure: gate,
            metrics: forwarder_metrics,
        },
        handle,
    ))
}

struct AttemptDone {
    key: Key,
    lane: Lane,
    permit: Permit,
    result: Result<crate::forwarder::AttemptResult, AttemptError>,
}

enum AttemptError {
    /// The request could not be built (a bad key or header): permanent.
    Build(String),
    /// The job's record could not be read back from the outbox: tried again later.
    Read(String),
}

struct ForwardTask {
    outbox: Arc<Mutex<Outbox>>,
    /// (due, key): the next attempt of each pending forward. Stale entries (the forward
    /// moved on) are skipped when popped. 24 bytes an entry.
    queue: BinaryHeap<Reverse<(i64, Key)>>,
    sender: Sender,
    lookup: ForwardLookup,
    clock: Clock,
    metrics: ForwardMetrics,
    board: Arc<ForwardBoard>,
    /// Per lane (integration and target, interned by the outbox).
    circuits: HashMap<Lane, CircuitBreaker>,
    in_flight: HashMap<Lane, usize>,
    /// Per lane, (due, key) of forwards that were due but found the target busy (its
    /// `per_target_in_flight` attempts running, or its half-open circuit's probe out),
    /// in due order. Each finished attempt of the target hands back as many as it has
    /// free slots, so a backlog goes out as fast as the target answers, and is popped
    /// from the queue once rather than at every wake-up.
    parked: HashMap<Lane, VecDeque<(i64, Key)>>,
    running: JoinSet<AttemptDone>,
    /// Per lane, its target's parsed material and the route version it was parsed from
    /// (a new version, compared by pointer, parses again).
    prepared: HashMap<Lane, (Arc<ForwardConfig>, Arc<Prepared>)>,
    /// Outcome records not yet appended: written together, one write for every attempt
    /// that finished meanwhile (the index already reflects them; a crash before the
    /// write only means an attempt is made again).
    staged: Vec<OwnedChange>,
    /// Since when `staged` holds records.
    staged_since: Option<std::time::Instant>,
    /// The outbox's size on disk, shared with the journal's sink (the cap counts both).
    outbox_bytes: Arc<std::sync::atomic::AtomicU64>,
    /// Integration → the replay annotation value already acted on (persisted).
    handled_replays: HashMap<String, String>,
    options: ForwarderOptions,
    /// Set by [`Forwarder::release`]: until then no attempt starts, nothing is dropped
    /// for want of a target and no dead letter expires.
    released: Arc<AtomicBool>,
    /// Intake first (`None`: the forwarder never yields).
    gate: Option<Arc<IntakePressure>>,
}

/// Forwards a scheduling pass may put back (no route yet, target busy) before it stops:
/// the rest stay due for the next pass.
const MAX_DEFERRALS_PER_PASS: usize = 1024;

/// Where the handled replay requests are kept, in the outbox folder.
const REPLAYS_FILE: &str = "replays.json";

fn split_key(integration: &str) -> (&str, &str) {
    integration.split_once('/').unwrap_or(("", integration))
}

fn labels(integration: &str, target: &str) -> TargetLabels {
    let (namespace, name) = split_key(integration);
    TargetLabels {
        namespace: namespace.to_string(),
        integration: name.to_string(),
        target: target.to_string(),
    }
}

impl ForwardTask {
    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The integration and target of a lane.
    fn names(&self, lane: Lane) -> (Arc<str>, Arc<str>) {
        self.outbox()
            .lane(lane)
            .unwrap_or_else(|| (Arc::from(""), Arc::from("")))
    }

    /// Schedules what the outbox holds after a restart; counts pending and dead letters.
    fn load(&mut self) {
        let mut per_lane: HashMap<Lane, (i64, i64)> = HashMap::new();
        {
            let outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
            self.queue.reserve(outbox.len());
            for (key, slot) in outbox.slots() {
                let counts = per_lane.entry(slot.lane).or_default();
                if slot.dead {
                    counts.1 += 1;
                } else {
                    counts.0 += 1;
                    self.queue.push(Reverse((slot.at_ms, *key)));
                }
            }
        }
        for (lane, (pending, dead)) in per_lane {
            let (integration, target) = self.names(lane);
            self.count(&integration, &target, pending, dead);
        }
    }

    /// Adjusts the pending and dead-letter gauges and the board.
    fn count(&self, integration: &str, target: &str, pending: i64, dead: i64) {
        let l = labels(integration, target);
        if pending != 0 {
            self.metrics.pending.get_or_create(&l).inc_by(pending);
        }
        if dead != 0 {
            self.metrics.dead_letters.get_or_create(&l).inc_by(dead);
        }
        self.board.update(integration, target, |s| {
            s.pending = (s.pending + pending).max(0);
            s.dead_lettered = (s.dead_lettered + dead).max(0);
        });
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut changes: mpsc::UnboundedReceiver<ConfigChange>,
        stop: CancellationToken,
    ) {
        let mut sweep = tokio::time::interval(Duration::from_secs(30));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Outcome records go to the outbox in batches: one write per FLUSH_DELAY (or
            // per FLUSH_BATCH records), not one per wake-up. The index in memory is
            // already up to date; a crash before the write only repeats an attempt.
            if !self.staged.is_empty() && self.staged_since.is_none() {
                self.staged_since = Some(std::time::Instant::now());
            }
            if self.staged.len() >= FLUSH_BATCH
                || self
                    .staged_since
                    .is_some_and(|t| t.elapsed() >= FLUSH_DELAY)
            {
                self.flush().await;
            }
            let released = self.released.load(Ordering::Acquire);
            let yielding = self.gate.as_ref().is_some_and(|g| g.saturated());
            if released {
                self.start_due();
            }
            let next_due = self.queue.peek().map(|Reverse((at, _))| *at);
            let wait = match next_due {
                _ if !released => Duration::from_millis(50),
                Some(at) => {
                    let now = (self.clock)();
                    let wait =
                        Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0))
                            .min(Duration::from_secs(1));
                    // Yielding with forwards due: look at intake again soon.
                    if yielding {
                        wait.max(GATE_WINDOW)
                    } else {
                        wait
                    }
                }
                None => Duration::from_secs(1),
            };
            // Staged outcomes are written within FLUSH_DELAY even when nothing else
            // happens.
            let wait = match self.staged_since {
                Some(t) => wait.min(FLUSH_DELAY.saturating_sub(t.elapsed())),
                None => wait,
            };
            tokio::select! {
                () = stop.cancelled() => break,
                command = rx.recv() => match command {
                    Some(Command::Import(jobs, reply)) => {
                        let _ = reply.send(self.import(jobs).await);
                    }
                    Some(Command::Replay { integration, target, reply }) => {
                        let _ = reply.send(self.replay(&integration, target.as_deref()).await);
                    }
                    None => break,
                },
                Some(done) = self.running.join_next(), if !self.running.is_empty() => {
                    // Everything that finished meanwhile, recorded with one append.
                    let mut next = Some(done);
                    while let Some(done) = next {
                        match done {
                            Ok(done) => self.finish(done),
                            Err(e) => tracing::error!(error = %e, "forward attempt task failed"),
                        }
                        next = self.running.try_join_next();
                    }
                }
                Some(change) = changes.recv() => self.on_change(change).await,
                _ = sweep.tick(), if released => self.expire_dead_letters().await,
                () = tokio::time::sleep(wait) => {}
            }
        }
        // Attempts still running are abandoned: their forwards stay pending in the outbox
        // and are attempted again at the next start (same webhook-id).
        self.running.abort_all();
        self.flush().await;
    }

    async fn write(&self, changes: Vec<OwnedChange>) -> std::io::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let outbox = self.outbox.clone();
        let bytes = self.outbox_bytes.clone();
        tokio::task::spawn_blocking(move || {
            let borrowed: Vec<Change<'_>> = changes.iter().map(OwnedChange::borrow).collect();
            let lock = || outbox.lock().unwrap_or_else(PoisonError::into_inner);
            let mut guard = lock();
            let appended = guard.append(&borrowed);
            let compaction = match &appended {
                Ok(()) => guard.begin_compaction(),
                Err(_) => Ok(None),
            };
            bytes.store(guard.disk_bytes(), std::sync::atomic::Ordering::Relaxed);
            drop(guard);
            // The copies' fdatasync without the lock: attempts and imports go on.
            let compacted = compaction.and_then(|c| match c {
                Some(c) => c
                    .sync()
                    .and_then(|()| lock().finish_compaction(c))
                    .inspect_err(|_| lock().abandon_compaction()),
                None => Ok(()),
            });
            if let Err(e) = compacted {
                tracing::warn!(error = %e, "outbox compaction failed; it is retried later");
            }
            appended
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Appends the staged outcome records.
    async fn flush(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        self.staged_since = None;
        let changes = std::mem::take(&mut self.staged);
        if let Err(e) = self.write(changes).await {
            tracing::error!(error = %e, "cannot record forward outcomes in the outbox; after a restart those attempts are made again");
        }
    }

    async fn import(&mut self, jobs: Vec<NewJob>) -> std::io::Result<()> {
        let now = (self.clock)();
        let fresh: Vec<(Key, NewJob)> = {
            let outbox = self.outbox();
            let mut seen = HashSet::new();
            jobs.into_iter()
                .map(|j| (key_of(&j.meta.id), j))
                .filter(|(key, _)| !outbox.contains(key) && seen.insert(*key))
                .collect()
        };
        let mut per_target: HashMap<(String, String), i64> = HashMap::new();
        let mut keys = Vec::with_capacity(fresh.len());
        let changes = fresh
            .into_iter()
            .map(|(key, j)| {
                // Due since the delivery arrived: a forward deferred while intake was
                // saturated counts its wait against `--forward-max-lag` from then.
                let due = j.meta.created_ms.min(now);
                keys.push((key, due));
                *per_target
                    .entry((j.meta.integration.clone(), j.meta.target.clone()))
                    .or_default() += 1;
                OwnedChange::Job {
                    meta: Box::new(j.meta),
                    state: JobState {
                        next_at_ms: due,
                        ..JobState::default()
                    },
                    body: j.body,
                }
            })
            .collect();
        self.write(changes).await?;
        for ((integration, target), n) in per_target {
            self.count(&integration, &target, n, 0);
        }
        for (key, due) in keys {
            self.queue.push(Reverse((due, key)));
        }
        Ok(())
    }

    /// Starts every due attempt the limits and circuits allow.
    fn start_due(&mut self) {
        let now = (self.clock)();
        let cutoff = self.gate.as_ref().map_or(now, |g| g.cutoff(now));
        // A target with parked forwards and nothing in flight has no attempt left whose
        // end would hand them back (their first pick was stale, or an attempt task
        // failed): hand them back here.
        let idle: Vec<Lane> = self
            .parked
            .keys()
            .filter(|k| self.in_flight.get(*k).copied().unwrap_or(0) == 0)
            .copied()
            .collect();
        for lane in idle {
            self.unpark(lane);
        }
        let mut deferred = Vec::new();
        while self.running.len() < self.options.max_in_flight {
            let Some(Reverse((at, _))) = self.queue.peek() else {
                break;
            };
            if *at > cutoff {
                break;
            }
            let Some(Reverse((at, key))) = self.queue.pop() else {
                break;
            };
            let Some(slot) = self.outbox().get(&key) else {
                continue;
            };
            if slot.dead || slot.at_ms != at {
                continue; // dead, or rescheduled since this entry was pushed
            }
            let lane = slot.lane;
            let (integration, target_name) = self.names(lane);
            let Some(config) = (self.lookup)(&integration) else {
                // No route for it (yet: just started, or its spec does not compile). Only
                // a route change or the first full sync may drop it (`on_change`).
                deferred.push(Reverse((now + 1_000, key)));
                if deferred.len() >= MAX_DEFERRALS_PER_PASS {
                    break;
                }
                continue;
            };
            let Some(target) = config.target(&target_name) else {
                // The route is there and the target is not: it was removed.
                tracing::info!(integration = %integration, target = %target_name, key = %hex::encode(key), "dropping a forward whose target no longer exists");
                self.drop_job(&integration, &target_name, &key);
                continue;
            };
            let Some(material) = &target.material else {
                deferred.push(Reverse((now + 5_000, key)));
                continue;
            };
            let prepared = match self.prepared.get(&lane) {
                Some((from, p)) if Arc::ptr_eq(from, &config) => p.clone(),
                _ => {
                    let p = Arc::new(Prepared::new(material));
                    self.prepared.insert(lane, (config.clone(), p.clone()));
                    p
                }
            };
            if self.in_flight.get(&lane).copied().unwrap_or(0) >= self.options.per_target_in_flight
            {
                // Handed back when one of the target's attempts ends.
                self.parked.entry(lane).or_default().push_back((at, key));
                continue;
            }
            let circuit = self
                .circuits
                .entry(lane)
                .or_insert_with(|| CircuitBreaker::new(target.spec.circuit, target.spec.timeout));
            let half_open = circuit.state(now) == CircuitState::HalfOpen;
            let permit = circuit.permit(now);
            if let Permit::Wait { until_ms } = permit {
                // Not charged an attempt. Open: wait for the probe's turn. Half-open with
                // the probe out: its answer decides, and its end hands these back (at
                // once, not when the probe's lease would run out).
                if half_open {
                    self.parked.entry(lane).or_default().push_back((at, key));
                } else {
                    deferred.push(Reverse((until_ms, key)));
                }
                continue;
            }
            let job = match self.outbox().job_ref(&key) {
                Ok(job) => job,
                Err(e) => {
                    tracing::error!(key = %hex::encode(key), error = %e, "cannot open a forward's record in the outbox");
                    deferred.push(Reverse((now + 60_000, key)));
                    continue;
                }
            };
            *self.in_flight.entry(lane).or_insert(0) += 1;
            let timeout = target.spec.timeout;
            let sender = self.sender.clone();
            self.running.spawn(async move {
                // The record (metadata and body) is read here, not kept in memory.
                let result = match job.read() {
                    Ok(job) => attempt(&sender, job, &prepared, timeout, now).await,
                    Err(e) => Err(AttemptError::Read(e.to_string())),
                };
                AttemptDone {
                    key,
                    lane,
                    permit,
                    result,
                }
            });
        }
        for d in deferred {
            self.requeue_at(d);
        }
    }

    /// Puts parked forwards of `lane` back in the queue at their due time, as many as the
    /// target has free attempt slots (the next `start_due` starts them, or parks them
    /// again if the circuit says so).
    fn unpark(&mut self, lane: Lane) {
        let free = self
            .options
            .per_target_in_flight
            .saturating_sub(self.in_flight.get(&lane).copied().unwrap_or(0));
        let Some(parked) = self.parked.get_mut(&lane) else {
            return;
        };
        for (at, key) in parked.drain(..free.min(parked.len())) {
            self.queue.push(Reverse((at, key)));
        }
        if parked.is_empty() {
            self.parked.remove(&lane);
        }
    }

    /// Defers a forward without charging it an attempt (circuit open, material
    /// missing). Only the in-memory schedule moves: after a restart the
    /// forward is simply due at once.
    fn requeue_at(&mut self, Reverse((at, key)): Reverse<(i64, Key)>) {
        self.outbox().set_next_in_memory(&key, at);
        self.queue.push(Reverse((at, key)));
    }

    fn finish(&mut self, done: AttemptDone) {
        let now = (self.clock)();
        // Its slot is freed even when the forward was dropped while in flight.
        let lane = done.lane;
        if let Some(n) = self.in_flight.get_mut(&lane) {
            *n = n.saturating_sub(1);
        }
        self.unpark(lane);
        let Some(slot) = self.outbox().get(&done.key) else {
            return;
        };
        let (integration, target) = self.names(lane);
        let config = (self.lookup)(&integration);
        let spec = config
            .as_ref()
            .and_then(|c| c.target(&target))
            .map(|t| t.spec.clone());
        let mut state = JobState {
            attempts: slot.attempts,
            next_at_ms: slot.at_ms,
            dead_at_ms: None,
            last_failure: None,
        };
        let result = match done.result {
            Ok(r) => r,
            Err(AttemptError::Build(e)) => {
                self.dead_letter(&integration, &target, &done.key, state, e, now);
                return;
            }
            Err(AttemptError::Read(e)) => {
                tracing::error!(key = %hex::encode(done.key), error = %e, "cannot read a forward's record from the outbox; tried again in a minute");
                self.requeue_at(Reverse((now + 60_000, done.key)));
                return;
            }
        };
        let outcome = result.classification.outcome;
        let l = labels(&integration, &target);
        self.metrics
            .attempts
            .get_or_create(&TargetOutcome {
                namespace: l.namespace.clone(),
                integration: l.integration.clone(),
                target: target.to_string(),
                outcome: outcome.label(),
            })
            .inc();
        self.metrics.duration.observe(result.elapsed.as_secs_f64());
        if let Some(c) = self.circuits.get_mut(&lane) {
            c.record(done.permit, outcome, now);
            let state = c.state(now);
            self.metrics
                .circuit_open
                .get_or_create(&l)
                .set(i64::from(state != CircuitState::Closed));
            let state = state.as_str();
            self.board.update(&integration, &target, |s| {
                s.circuit = Some(state.to_string());
            });
        }
        state.attempts = state.attempts.saturating_add(1);
        match outcome {
            Outcome::Delivered => {
                self.staged.push(OwnedChange::Gone { key: done.key });
                self.outbox().forget_in_memory(&done.key);
                self.count(&integration, &target, -1, 0);
                self.board.update(&integration, &target, |s| {
                    s.delivered += 1;
                    s.last_delivered_time = time(now);
                });
            }
            Outcome::Terminal => {
                self.note_failure(&integration, &target, &result.detail, now);
                self.dead_letter(&integration, &target, &done.key, state, result.detail, now);
            }
            Outcome::Retryable => {
                self.note_failure(&integration, &target, &result.detail, now);
                let schedule = spec.map(|s| s.schedule).unwrap_or_default();
                let jitter = rand::random::<f64>() * 2.0 - 1.0;
                match next_attempt_at(&schedule, state.attempts, now, jitter, result.retry_after) {
                    Some(at) => {
                        state.next_at_ms = at;
                        state.last_failure = Some(result.detail);
                        self.set_state(&done.key, &state);
                        self.staged.push(OwnedChange::State {
                            key: done.key,
                            state,
                        });
                        self.queue.push(Reverse((at, done.key)));
                    }
                    None => {
                        self.dead_letter(
                            &integration,
                            &target,
                            &done.key,
                            state,
                            result.detail,
                            now,
                        );
                    }
                }
            }
        }
    }

    fn set_state(&self, key: &Key, state: &JobState) {
        self.outbox().set_state_in_memory(key, state);
    }

    fn note_failure(&self, integration: &str, target: &str, detail: &str, now: i64) {
        self.board.update(integration, target, |s| {
            s.failed += 1;
            s.last_failure_time = time(now);
            s.last_failure = Some(detail.to_string());
        });
    }

    fn dead_letter(
        &mut self,
        integration: &str,
        target: &str,
        key: &Key,
        mut state: JobState,
        why: String,
        now: i64,
    ) {
        tracing::warn!(%integration, %target, key = %hex::encode(key), reason = %why, "forward dead-lettered");
        self.board.dead_lettered(integration, target, &why);
        state.dead_at_ms = Some(now);
        state.last_failure = Some(why);
        self.set_state(key, &state);
        self.staged.push(OwnedChange::State { key: *key, state });
        self.count(integration, target, -1, 1);
    }

    fn drop_job(&mut self, integration: &str, target: &str, key: &Key) {
        let dead = self.outbox().get(key).is_some_and(|s| s.dead);
        // Written with the next flush; if that is lost, the forward is dropped again at
        // the next start.
        self.staged.push(OwnedChange::Gone { key: *key });
        self.outbox().forget_in_memory(key);
        if dead {
            self.count(integration, target, 0, -1);
        } else {
            self.count(integration, target, -1, 0);
        }
    }

    /// The live forwards of `integration` (of one target, or all): key, target name and
    /// slot. A scan of the index: route changes and replays are rare, and a per-
    /// integration set of keys would cost memory for every pending forward.
    fn forwards_of(
        &self,
        integration: &str,
        target: Option<&str>,
    ) -> Vec<(Key, Arc<str>, crate::receiver::outbox::Slot)> {
        let outbox = self.outbox();
        let lanes: HashMap<Lane, Arc<str>> = outbox
            .slots()
            .map(|(_, s)| s.lane)
            .collect::<HashSet<Lane>>()
            .into_iter()
            .filter_map(|lane| {
                let (i, t) = outbox.lane(lane)?;
                (&*i == integration && target.is_none_or(|want| want == &*t)).then_some((lane, t))
            })
            .collect();
        if lanes.is_empty() {
            return Vec::new();
        }
        outbox
            .slots()
            .filter_map(|(key, slot)| Some((*key, lanes.get(&slot.lane)?.clone(), *slot)))
            .collect()
    }

    /// A served route changed or an integration went away: drop the forwards of targets
    /// that no longer exist, and act on a new replay request.
    async fn on_change(&mut self, change: ConfigChange) {
        // Parsed material of an older route version is not used again (pointer check);
        // dropping it keeps the cache to the routes that exist.
        self.prepared.clear();
        let (key, config) = match change {
            ConfigChange::Synced { unserved } => {
                let gone: Vec<String> = self
                    .outbox()
                    .integrations()
                    .into_iter()
                    .filter(|k| !unserved.contains(&**k) && (self.lookup)(k).is_none())
                    .map(|k| k.to_string())
                    .collect();
                for key in gone {
                    Box::pin(self.on_change(ConfigChange::Removed(key))).await;
                }
                return;
            }
            ConfigChange::Updated(key) => {
                let config = (self.lookup)(&key);
                (key, config)
            }
            ConfigChange::Removed(key) => {
                if self.handled_replays.remove(&key).is_some() {
                    self.save_replays();
                }
                (key, None)
            }
        };
        let mut dropped = 0;
        for (job, target, _) in self.forwards_of(&key, None) {
            if config.as_ref().and_then(|c| c.target(&target)).is_none() {
                self.drop_job(&key, &target, &job);
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::info!(integration = %key, dropped, "dropped the forwards and dead letters of targets that were removed");
        }
        for gone in self
            .board
            .of(&key)
            .into_iter()
            .filter(|t| config.as_ref().and_then(|c| c.target(&t.name)).is_none())
        {
            self.metrics.forget(&key, &gone.name);
        }
        let Some(request) = config.as_ref().and_then(|c| c.replay.clone()) else {
            return;
        };
        if self.handled_replays.get(&key) == Some(&request.value) {
            return;
        }
        let n = self.replay(&key, request.target.as_deref()).await;
        tracing::info!(integration = %key, target = ?request.target, replayed = n, value = %request.value, "replay requested");
        // Every replica acts on the request; only those that had dead letters say so
        // (a fresh replica starting while the annotation is still set says nothing).
        if n > 0 {
            self.board.event(
                &key,
                false,
                "ForwardReplayed",
                match &request.target {
                    Some(t) => format!("replayed {n} dead letters of target {t}"),
                    None => format!("replayed {n} dead letters"),
                },
            );
        }
        self.handled_replays.insert(key, request.value);
        self.save_replays();
    }

    fn save_replays(&self) {
        let path = self.options.dir.join(REPLAYS_FILE);
        let tmp = self.options.dir.join(format!("{REPLAYS_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let bytes = serde_json::to_vec(&self.handled_replays).map_err(std::io::Error::other)?;
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.options.dir)?.sync_all()
        };
        if let Err(e) = write() {
            tracing::warn!(error = %e, "cannot record handled replay requests; a restart may replay once more");
        }
    }

    async fn replay(&mut self, integration: &str, target: Option<&str>) -> usize {
        let now = (self.clock)();
        let dead: Vec<(Key, Arc<str>)> = self
            .forwards_of(integration, target)
            .into_iter()
            .filter(|(_, _, slot)| slot.dead)
            .map(|(key, target, _)| (key, target))
            .collect();
        let fresh = JobState {
            next_at_ms: now,
            ..JobState::default()
        };
        let changes = dead
            .iter()
            .map(|(key, _)| OwnedChange::State {
                key: *key,
                state: fresh.clone(),
            })
            .collect();
        if let Err(e) = self.write(changes).await {
            tracing::error!(error = %e, "cannot record a replay; dead letters stay");
            return 0;
        }
        let mut per_target: HashMap<Arc<str>, i64> = HashMap::new();
        for (key, target) in &dead {
            self.set_state(key, &fresh);
            *per_target.entry(target.clone()).or_default() += 1;
            self.queue.push(Reverse((now, *key)));
        }
        for (target, n) in per_target {
            self.count(integration, &target, n, -n);
        }
        dead.len()
    }

    async fn expire_dead_letters(&mut self) {
        let now = (self.clock)();
        let mut ttl_of: HashMap<Lane, i64> = HashMap::new();
        let expired: Vec<(Key, Lane)> = {
            let outbox = self.outbox();
            outbox
                .slots()
                .filter(|(_, slot)| slot.dead)
                .filter_map(|(key, slot)| {
                    let ttl_ms = *ttl_of.entry(slot.lane).or_insert_with(|| {
                        let ttl = outbox
                            .lane(slot.lane)
                            .and_then(|(integration, target)| {
                                (self.lookup)(&integration)
                                    .and_then(|c| c.target(&target).map(|t| t.spec.dead_letter_ttl))
                            })
                            .unwrap_or(crate::domain::forward::DEFAULT_DEAD_LETTER_TTL);
                        i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
                    });
                    (slot.at_ms.saturating_add(ttl_ms) <= now).then_some((*key, slot.lane))
                })
                .collect()
        };
        if expired.is_empty() {
            return;
        }
        let changes = expired
            .iter()
            .map(|(key, _)| OwnedChange::Gone { key: *key })
            .collect();
        if self.write(changes).await.is_ok() {
            let mut per_lane: HashMap<Lane, i64> = HashMap::new();
            for (_, lane) in expired {
                *per_lane.entry(lane).or_default() += 1;
            }
            for (lane, n) in per_lane {
                let (integration, target) = self.names(lane);
                self.count(&integration, &target, 0, -n);
            }
        }
    }
}

fn time(ms: i64) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time> {
    jiff::Timestamp::from_millisecond(ms)
        .ok()
        .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time)
}

/// An outbox change that owns its data (for `spawn_blocking`).
enum OwnedChange {
    Job {
        meta: Box<JobMeta>,
        state: JobState,
        body: Bytes,
    },
    State {
        key: Key,
        state: JobState,
    },
    Gone {
        key: Key,
    },
}

impl OwnedChange {
    fn borrow(&self) -> Change<'_> {
        match self {
            OwnedChange::Job { meta, state, body } => Change::Job { meta, state, body },
            OwnedChange::State { key, state } => Change::State { key: *key, state },
            OwnedChange::Gone { key } => Change::Gone { key: *key },
        }
    }
}

/// A target's material parsed once per route version rather than at every attempt:
/// the signing key decoded, the URL parsed, the `headersFrom` values exposed. A part that
/// does not parse fails each attempt the way it always did ([`AttemptError::Build`]).
struct Prepared {
    key: Result<Option<SigningKey>, String>,
    url: Option<http::Uri>,
    extra: Vec<(String, String)>,
}

impl Prepared {
    fn new(material: &RouteForward) -> Prepared {
        Prepared {
            key: material
                .signing_key
                .as_ref()
                .map(|k| SigningKey::parse(k.expose()))
                .transpose()
                .map_err(|e| e.to_string()),
            url: material.url.expose().parse().ok(),
            extra: material
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_string()))
                .collect(),
        }
    }
}

/// One attempt: sign (this attempt's timestamp), send, classify.
async fn attempt(
    sender: &Sender,
    job: StoredJob,
    prepared: &Prepared,
    timeout: Duration,
    now_ms: i64,
) -> Result<crate::forwarder::AttemptResult, AttemptError> {
    let meta = job.meta;
    let rendered = crate::domain::forward::Rendered {
        format: crate::domain::forward::Format::parse(&meta.format).unwrap_or_default(),
        content_type: meta.content_type,
        body: job.body,
        headers: meta.headers,
    };
    let key = prepared
        .key
        .as_ref()
        .map_err(|e| AttemptError::Build(e.clone()))?;
    let request = sign_request(
        &rendered,
        key.as_ref(),
        &meta.webhook_id,
        now_ms.div_euclid(1000),
        &prepared.extra,
    )
    .map_err(|e| AttemptError::Build(e.to_string()))?;
    let url = prepared
        .url
        .clone()
        .ok_or_else(|| AttemptError::Build("the target URL does not parse".to_string()))?;
    Ok(sender
        .send(
            Request {
                url,
                headers: request.headers,
                body: request.body,
            },
            timeout,
        )
        .await)
}

/// A change the forwarder must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigChange {
    /// The integration's served route changed (targets, material, replay request).
    Updated(String),
    /// The integration is gone: its forwards and dead letters go too.
    Removed(String),
    /// A full list of routes was loaded: forwards of integrations that are not in it
    /// (deleted while this receiver was down) go; `unserved` are integrations whose
    /// routes did not compile (their forwards wait).
    Synced { unserved: HashSet<String> },
}

/// Keeps [`ForwardConfig`]s by integration for the status loop and the forwarder, and
/// tells the forwarder what changed.
#[derive(Clone, Default)]
pub struct ForwardConfigs {
    inner: Arc<RwLock<HashMap<String, Arc<ForwardConfig>>>>,
    changes: Arc<Mutex<Option<mpsc::UnboundedSender<ConfigChange>>>>,
}

impl std::fmt::Debug for ForwardConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardConfigs").finish_non_exhaustive()
    }
}

impl ForwardConfigs {
    fn notify(&self, change: ConfigChange) {
        if let Some(tx) = self
            .changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            let _ = tx.send(change);
        }
    }

    /// Where changes go from now on (the forwarder).
    pub(crate) fn subscribe(&self) -> mpsc::UnboundedReceiver<ConfigChange> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.changes.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
        rx
    }

    /// The served route of `key` now forwards as `config` (`None`: to no target).
    pub fn set(&self, key: String, config: Option<ForwardConfig>) {
        {
            let mut map = self.inner.write().unwrap_or_else(PoisonError::into_inner);
            match config {
                Some(c) if !c.targets.is_empty() => {
                    if map.get(&key).is_some_and(|old| **old == c) {
                        return;
                    }
                    map.insert(key.clone(), Arc::new(c));
                }
                _ => {
                    if map.remove(&key).is_none() {
                        return;
                    }
                }
            }
        }
        self.notify(ConfigChange::Updated(key));
    }

    /// `key` is not served for now (its spec does not compile): its forwards wait, they
    /// are not dropped.
    pub fn suspend(&self, key: &str) {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// The integration was deleted.
    pub fn remove(&self, key: &str) {
        self.suspend(key);
        self.notify(ConfigChange::Removed(key.to_string()));
    }

    /// Every served route at once; `unserved` are keys whose routes failed to compile
    /// (their forwards wait).
    pub fn replace_all(
        &self,
        configs: HashMap<String, Arc<ForwardConfig>>,
        unserved: &HashSet<String>,
    ) {
        let previous = {
            let mut map = self.inner.write().unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(&mut *map, configs.clone())
        };
        for key in previous.keys() {
            if !configs.contains_key(key) && !unserved.contains(key) {
                self.notify(ConfigChange::Updated(key.clone()));
            }
        }
        for (key, config) in configs {
            if previous.get(&key) != Some(&config) {
                self.notify(ConfigChange::Updated(key));
            }
        }
        self.notify(ConfigChange::Synced {
            unserved: unserved.clone(),
        });
    }

    pub fn lookup(&self) -> ForwardLookup {
        let inner = self.inner.clone();
        Arc::new(move |key: &str| {
            inner
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(key)
                .cloned()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn gate(progress: &Arc<AtomicU64>) -> IntakePressure {
        let p = progress.clone();
        IntakePressure::new(
            Arc::new(move || p.load(Ordering::Relaxed)),
            Duration::from_secs(10),
        )
    }

    /// The worker held for `ms`, then parked for a moment: tokio adds a worker's busy
    /// time up when it parks.
    fn busy(ms: u64) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            std::thread::sleep(Duration::from_millis(ms));
            tokio::time::sleep(Duration::from_millis(2)).await;
        })
    }

    /// A gate made in a task that then holds the worker while deliveries are accepted;
    /// with its verdict right after.
    async fn saturated_gate(progress: &Arc<AtomicU64>) -> (IntakePressure, bool) {
        let progress = progress.clone();
        tokio::spawn(async move {
            let g = gate(&progress);
            busy(60).await.expect("busy");
            progress.fetch_add(100, Ordering::Relaxed);
            let yielding = g.saturated();
            (g, yielding)
        })
        .await
        .expect("task")
    }

    fn one_worker() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Saturated workers *and* accepted deliveries: yield (only forwards overdue by the
    /// max lag may start). Saturated without intake (a backlog draining): do not.
    /// Intake without saturation: do not.
    #[test]
    fn the_gate_yields_only_to_intake_that_saturates_the_workers() {
        one_worker().block_on(async {
            let progress = Arc::new(AtomicU64::new(0));
            // Saturated, deliveries accepted.
            let (g, yielding) = saturated_gate(&progress).await;
            assert!(yielding, "saturated workers with intake must yield");
            assert_eq!(g.cutoff(100_000), 90_000);
            // Saturated, nothing accepted.
            busy(60).await.expect("busy");
            assert!(!g.saturated(), "a draining backlog alone must not yield");
            assert_eq!(g.cutoff(100_000), 100_000);
            // Deliveries accepted, workers idle.
            tokio::time::sleep(Duration::from_millis(60)).await;
            progress.fetch_add(100, Ordering::Relaxed);
            assert!(!g.saturated(), "idle workers must not yield");
        });
    }

    /// Once saturated, intake must stay below saturation for EASE (deliveries still
    /// arriving) before forwarding stops yielding: one quiet window is noise.
    #[test]
    fn the_gate_eases_only_after_intake_stays_below_saturation() {
        one_worker().block_on(async {
            let progress = Arc::new(AtomicU64::new(0));
            let (g, yielding) = saturated_gate(&progress).await;
            assert!(yielding);
            // A quiet window with deliveries: still yielding.
            tokio::time::sleep(Duration::from_millis(60)).await;
            progress.fetch_add(10, Ordering::Relaxed);
            assert!(g.saturated(), "one quiet window must not end the yield");
            // Quiet for longer than EASE: eased.
            tokio::time::sleep(EASE + Duration::from_millis(20)).await;
            progress.fetch_add(10, Ordering::Relaxed);
            assert!(
                !g.saturated(),
                "intake below saturation for EASE must end the yield"
            );
        });
    }
}
