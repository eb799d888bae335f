//! Status write-back: the receiver-owned part of a `WebhookIntegration`'s status
//! (`deliveries`, `incidents`, the `Degraded` condition), written by a [`StatusWriter`].
//!
//! Two writers exist: [`KubeStatusWriter`] patches the resource in the cluster with
//! server-side apply (field manager [`FIELD_MANAGER`]), adding only the counts this
//! replica has not written yet and merging incidents by id, so several replicas converge;
//! [`FileStatusWriter`] keeps the same shape in files for standalone mode. Coalescing
//! (one write per integration per interval) is the caller's job (see `runtime`).

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Reporter};
use kube::{Client, Resource as _};
use serde::{Deserialize, Serialize};

use crate::crd::{DeliveryStatus, IncidentsStatus, WebhookIntegration, WebhookIntegrationStatus};
use crate::crd::{ForwardShare, ForwardStatus, ForwardingTotals, ReplicaShare};
use crate::domain::incident::IncidentState;
use crate::domain::incident::state::{IncidentBook, open_display};
use crate::events::EventRecorder;
use crate::receiver::ledger::{Counters, IncidentNotice};

/// Field manager of every receiver status write.
pub const FIELD_MANAGER: &str = "hookwarden-receiver";
/// Condition type the receiver owns.
pub const DEGRADED: &str = "Degraded";
/// Reason of `Degraded=True`: the sender's secret is probably wrong.
pub const REASON_SIGNATURE_FAILURES: &str = "SignatureFailures";
/// Reason of `Degraded=False`.
pub const REASON_DELIVERIES_AUTHENTICATED: &str = "DeliveriesAuthenticated";
/// Event reason: more incidents are open than the status lists.
pub const REASON_INCIDENTS_TRUNCATED: &str = "IncidentsTruncated";
/// Event reason: the status lists every open incident again.
pub const REASON_INCIDENTS_TRACKED: &str = "IncidentsTracked";

/// A replica's share (`status.replicas[]`) older than this is dropped by the next write
/// of any replica: its replica is gone (scaled down, or its pod and journal replaced).
pub const SHARE_TTL: Duration = Duration::from_secs(600);
/// A replica whose share is not all zero rewrites it at least this often, so that it is
/// never mistaken for a gone replica's (well inside [`SHARE_TTL`]).
pub const SHARE_REFRESH: Duration = Duration::from_secs(180);

/// The part of the status the receiver owns.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceiverStatus {
    #[serde(default)]
    pub deliveries: DeliveryStatus,
    #[serde(default)]
    pub incidents: IncidentsStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwarding: Vec<crate::crd::ForwardStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding_totals: Option<ForwardingTotals>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaShare>,
}

impl ReceiverStatus {
    /// The receiver-owned part of a full status.
    pub fn from_status(status: Option<&WebhookIntegrationStatus>) -> ReceiverStatus {
        let Some(status) = status else {
            return ReceiverStatus::default();
        };
        ReceiverStatus {
            deliveries: status.deliveries.clone().unwrap_or_default(),
            incidents: status.incidents.clone().unwrap_or_default(),
            degraded: status
                .conditions
                .iter()
                .find(|c| c.type_ == DEGRADED)
                .cloned(),
            forwarding: status.forwarding.clone(),
            forwarding_totals: status.forwarding_totals.clone(),
            replicas: status.replicas.clone(),
        }
    }

    /// Overlays this part onto a full status (replacing any `Degraded` condition there).
    pub fn apply_to(&self, status: &mut WebhookIntegrationStatus) {
        status.deliveries = Some(self.deliveries.clone());
        status.incidents = Some(self.incidents.clone());
        status.forwarding = self.forwarding.clone();
        status.forwarding_totals = self.forwarding_totals.clone();
        status.replicas = self.replicas.clone();
        status.conditions.retain(|c| c.type_ != DEGRADED);
        if let Some(degraded) = &self.degraded {
            status.conditions.push(degraded.clone());
        }
    }
}

/// Everything one status write for one integration needs.
#[derive(Clone, Debug)]
pub struct StatusUpdate {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// All counts this receiver has for the integration.
    pub totals: Counters,
    /// The part of `totals` not yet written (what a multi-replica writer adds).
    pub delta: Counters,
    pub last_received_ms: Option<i64>,
    pub last_rejected_ms: Option<i64>,
    pub last_reject_reason: Option<String>,
    pub incidents: IncidentBook,
    pub keep_recent: usize,
    /// Whether `Degraded` should be true (many consecutive authentication failures).
    pub degraded: bool,
    pub consecutive_auth_failures: u64,
    /// Opens/resolves to announce as Events once the write succeeded.
    pub notices: Vec<IncidentNotice>,
    /// When the update was built (Unix ms, the receiver's clock): the time of any
    /// condition transition it writes.
    pub built_at_ms: i64,
    /// `status.forwarding` news from this replica (see `merge_forwarding`).
    pub forwarding: Option<Vec<crate::crd::ForwardStatus>>,
    /// Forwarding Events to publish once the write succeeded (replays, dead letters).
    pub forward_events: Vec<crate::receiver::forward::ForwardEvent>,
    /// The spec's forward targets: `status.forwarding` lists exactly these (`None`:
    /// not known, e.g. routes not loaded yet: the stored entries stay).
    pub forward_targets: Option<Vec<String>>,
    /// This replica's name: its share of the current numbers is `status.replicas[name]`.
    pub replica: String,
}

impl StatusUpdate {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// How counters combine with what is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterMode {
    /// Stored + delta: several writers share one object (cluster, several replicas).
    Delta,
    /// Totals replace what is stored: the only writer (standalone).
    Absolute,
}

/// Why a status write failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusWriteError {
    /// The integration no longer exists (or was re-created): drop what is pending for it.
    #[error("integration {0} no longer exists")]
    Gone(String),
    /// Worth retrying later (conflict, API server unavailable, throttled, disk error).
    #[error("status write failed, will retry: {0}")]
    Transient(String),
}

/// Writes the receiver-owned status of one integration.
pub trait StatusWriter: Send + Sync + 'static {
    fn write(
        &self,
        update: &StatusUpdate,
    ) -> impl Future<Output = Result<(), StatusWriteError>> + Send;

    /// True when the writer stores the receiver's totals ([`CounterMode::Absolute`]), so
    /// the ledger must be rebuilt exactly after a restart: journal entries are then never
    /// marked applied, only covered by checkpoints. False (the default) for writers that
    /// add deltas, where an applied entry's counts already live in the stored status.
    fn stores_totals(&self) -> bool {
        false
    }
}

fn time_from_ms(ms: i64) -> Option<Time> {
    jiff::Timestamp::from_millisecond(ms).ok().map(Time)
}

fn later(a: Option<&Time>, b: Option<Time>) -> Option<Time> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.0 > a.0 { b } else { a.clone() }),
        (Some(a), None) => Some(a.clone()),
        (None, b) => b,
    }
}

fn add(stored: i64, delta: u64) -> i64 {
    stored.saturating_add(i64::try_from(delta).unwrap_or(i64::MAX))
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The receiver-owned status after applying `update` to what is stored (`current`).
///
/// Pure: the same inputs always give the same output, so a retried write after a
/// conflict recomputes from the fresh `current` and never counts twice.
pub fn merge_status(
    current: &ReceiverStatus,
    update: &StatusUpdate,
    mode: CounterMode,
    now: jiff::Timestamp,
) -> ReceiverStatus {
    let stored = &current.deliveries;
    let (received, accepted, rejected, duplicates, ignored, alerts_dropped) = match mode {
        CounterMode::Delta => (
            add(stored.received, update.delta.received),
            add(stored.accepted, update.delta.accepted),
            add(stored.rejected, update.delta.rejected),
            add(stored.duplicates, update.delta.duplicates),
            add(stored.ignored, update.delta.ignored),
            add(stored.alerts_dropped, update.delta.alerts_dropped),
        ),
        CounterMode::Absolute => (
            as_i64(update.totals.received),
            as_i64(update.totals.accepted),
            as_i64(update.totals.rejected),
            as_i64(update.totals.duplicates),
            as_i64(update.totals.ignored),
            as_i64(update.totals.alerts_dropped),
        ),
    };
    let last_rejected_time = later(
        stored.last_rejected_time.as_ref(),
        update.last_rejected_ms.and_then(time_from_ms),
    );
    let ours_is_latest_reject = match (
        &stored.last_rejected_time,
        update.last_rejected_ms.and_then(time_from_ms),
    ) {
        (Some(s), Some(u)) => u.0 >= s.0,
        (None, Some(_)) => true,
        _ => false,
    };
    let last_reject_reason = if ours_is_latest_reject {
        update.last_reject_reason.clone()
    } else {
        stored.last_reject_reason.clone()
    };
    let deliveries = DeliveryStatus {
        received,
        accepted,
        rejected,
        duplicates,
        ignored,
        alerts_dropped,
        last_received_time: later(
            stored.last_received_time.as_ref(),
            update.last_received_ms.and_then(time_from_ms),
        ),
        last_rejected_time,
        last_reject_reason,
    };

    let mut book = update.incidents.clone();
    book.merge(&current.incidents);
    let mut incidents = book.to_status(update.keep_recent);

    let replicas = merge_shares(&current.replicas, update, book.untracked_open(), now);
    // Open incidents a replica counts without listing them are not in the merged lists;
    // replicas may have dropped the same ones, so the largest share is what is known
    // for certain (a lower bound, flagged as such).
    let untracked = replicas
        .iter()
        .map(|r| usize::try_from(r.untracked_open).unwrap_or(0))
        .max()
        .unwrap_or(0);
    let open = book.tracked_open_count() + untracked;
    incidents.open = i64::try_from(open).unwrap_or(i64::MAX);
    incidents.truncated = book.truncated() || untracked > 0;
    incidents.open_display = Some(open_display(open, incidents.truncated));

    let forwarding = merge_forwarding(&current.forwarding, update, &replicas);
    let forwarding_totals = (!forwarding.is_empty()).then(|| ForwardingTotals {
        pending: forwarding.iter().map(|f| f.pending).sum(),
        dead_lettered: forwarding.iter().map(|f| f.dead_lettered).sum(),
    });
    ReceiverStatus {
        deliveries,
        incidents,
        degraded: Some(degraded_condition(current.degraded.as_ref(), update, now)),
        forwarding,
        forwarding_totals,
        replicas,
    }
}

/// This replica's share of the current numbers: open incidents it counts but no longer
/// lists, and its pending forwards and dead letters per target.
fn own_share(update: &StatusUpdate, untracked_open: usize, now: jiff::Timestamp) -> ReplicaShare {
    let forwarding = update
        .forwarding
        .iter()
        .flatten()
        .filter(|f| f.pending != 0 || f.dead_lettered != 0)
        .filter(|f| {
            update
                .forward_targets
                .as_ref()
                .is_none_or(|names| names.contains(&f.name))
        })
        .map(|f| ForwardShare {
            target: f.name.clone(),
            pending: f.pending,
            dead_lettered: f.dead_lettered,
        })
        .collect();
    ReplicaShare {
        name: update.replica.clone(),
        updated_time: Some(Time(now)),
        untracked_open: i64::try_from(untracked_open).unwrap_or(i64::MAX),
        forwarding,
    }
}

/// Whether a share carries anything (an all-zero share is not written).
pub fn share_is_zero(share: &ReplicaShare) -> bool {
    share.untracked_open == 0 && share.forwarding.is_empty()
}

/// `status.replicas`: the other replicas' shares that are not stale, plus this one's
/// (unless it is all zero), sorted by name.
fn merge_shares(
    stored: &[ReplicaShare],
    update: &StatusUpdate,
    untracked_open: usize,
    now: jiff::Timestamp,
) -> Vec<ReplicaShare> {
    let ttl_ms = i64::try_from(SHARE_TTL.as_millis()).unwrap_or(i64::MAX);
    let fresh = |s: &ReplicaShare| {
        s.updated_time
            .as_ref()
            .is_some_and(|t| now.as_millisecond() - t.0.as_millisecond() <= ttl_ms)
    };
    let mut shares: Vec<ReplicaShare> = stored
        .iter()
        .filter(|s| s.name != update.replica && fresh(s))
        .cloned()
        .collect();
    let ours = own_share(update, untracked_open, now);
    if !share_is_zero(&ours) {
        shares.push(ours);
    }
    shares.sort_by(|a, b| a.name.cmp(&b.name));
    shares
}

/// `status.forwarding`: one entry per target of the spec. `delivered`/`failed` in the
/// update are what this replica has not written yet, added to what is stored; `pending`
/// and `deadLettered` are the sums of the replicas' shares (`replicas`, this one's
/// included); circuit and last failure are this replica's view, the later time wins.
fn merge_forwarding(
    stored: &[ForwardStatus],
    update: &StatusUpdate,
    replicas: &[ReplicaShare],
) -> Vec<ForwardStatus> {
    let summed = |name: &str| {
        replicas
            .iter()
            .flat_map(|r| &r.forwarding)
            .filter(|f| f.target == name)
            .fold((0i64, 0i64), |(p, d), f| {
                (
                    p.saturating_add(f.pending),
                    d.saturating_add(f.dead_lettered),
                )
            })
    };
    let ours = update.forwarding.as_deref().unwrap_or_default();
    let later_time = |a: &Option<Time>, b: &Option<Time>| match (a, b) {
        (Some(x), Some(y)) => Some(if y.0 > x.0 { y.clone() } else { x.clone() }),
        (x, y) => x.clone().or_else(|| y.clone()),
    };
    let names: Vec<String> = match &update.forward_targets {
        Some(names) => names.clone(),
        None => {
            let mut names: Vec<String> = stored.iter().map(|s| s.name.clone()).collect();
            names.extend(ours.iter().map(|s| s.name.clone()));
            names.sort();
            names.dedup();
            names
        }
    };
    names
        .iter()
        .map(|name| {
            let old = stored.iter().find(|s| &s.name == name);
            let (pending, dead_lettered) = summed(name);
            let entry = match (old, ours.iter().find(|s| &s.name == name)) {
                (Some(old), Some(new)) => {
                    let newer_failure = match (&old.last_failure_time, &new.last_failure_time) {
                        (Some(o), Some(n)) => n.0 >= o.0,
                        (None, Some(_)) => true,
                        _ => false,
                    };
                    ForwardStatus {
                        name: name.clone(),
                        delivered: old.delivered.saturating_add(new.delivered),
                        failed: old.failed.saturating_add(new.failed),
                        pending,
                        dead_lettered,
                        circuit: new.circuit.clone(),
                        last_delivered_time: later_time(
                            &old.last_delivered_time,
                            &new.last_delivered_time,
                        ),
                        last_failure_time: later_time(
                            &old.last_failure_time,
                            &new.last_failure_time,
                        ),
                        last_failure: if newer_failure {
                            new.last_failure.clone()
                        } else {
                            old.last_failure.clone()
                        },
                    }
                }
                (Some(old), None) => old.clone(),
                (None, Some(new)) => new.clone(),
                (None, None) => ForwardStatus {
                    name: name.clone(),
                    circuit: Some("closed".into()),
                    ..ForwardStatus::default()
                },
            };
            ForwardStatus {
                pending,
                dead_lettered,
                ..entry
            }
        })
        .collect()
}

fn degraded_condition(
    current: Option<&Condition>,
    update: &StatusUpdate,
    now: jiff::Timestamp,
) -> Condition {
    let status = if update.degraded { "True" } else { "False" };
    let (reason, message) = if update.degraded {
        (
            REASON_SIGNATURE_FAILURES,
            format!(
                "{} consecutive deliveries failed authentication: possibly the sender's secret or token is wrong, or someone without it is sending to this URL",
                update.consecutive_auth_failures
            ),
        )
    } else {
        (
            REASON_DELIVERIES_AUTHENTICATED,
            "deliveries authenticate".to_string(),
        )
    };
    let last_transition_time = match current {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    Condition {
        type_: DEGRADED.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time,
        observed_generation: None,
    }
}

/// Writes `bytes` to `path` atomically: a reader sees the old or the new content, never
/// a torn file, even across a crash (temp file + fsync + rename + directory fsync).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// [`write_atomic`] with the bytes written by `write` to the file (streamed, not built in
/// memory first).
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let (dir, tmp) = temp_beside(path)?;
    {
        let mut file = std::fs::File::create(&tmp)?;
        write(&mut file)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        // Directory fsync makes the rename durable; some filesystems refuse it, which
        // only weakens durability of the last rename.
        let _ = d.sync_all();
    }
    Ok(())
}

/// `path`'s folder (created if missing) and the temporary file beside it that an atomic
/// write renames over `path`.
pub fn temp_beside(path: &Path) -> std::io::Result<(&Path, std::path::PathBuf)> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp"));
    Ok((dir, tmp))
}

/// Receiver status of one integration as standalone mode stores it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredStatus {
    pub uid: String,
    #[serde(flatten)]
    pub status: ReceiverStatus,
}

/// Standalone status writer: one JSON file per integration under `DIR/status/`.
#[derive(Clone, Debug)]
pub struct FileStatusWriter {
    dir: PathBuf,
}

impl FileStatusWriter {
    /// Writer storing under `state_dir/status`.
    pub fn new(state_dir: &Path) -> FileStatusWriter {
        FileStatusWriter {
            dir: state_dir.join("status"),
        }
    }

    fn path(&self, namespace: &str, name: &str) -> PathBuf {
        self.dir.join(namespace).join(format!("{name}.json"))
    }

    /// The stored receiver status of an integration, if its UID matches.
    pub fn read(&self, namespace: &str, name: &str, uid: &str) -> Option<ReceiverStatus> {
        let bytes = std::fs::read(self.path(namespace, name)).ok()?;
        let stored: StoredStatus = serde_json::from_slice(&bytes).ok()?;
        (stored.uid == uid).then_some(stored.status)
    }
}

impl StatusWriter for FileStatusWriter {
    fn stores_totals(&self) -> bool {
        true
    }

    async fn write(&self, update: &StatusUpdate) -> Result<(), StatusWriteError> {
        // Standalone has no Events: what a cluster would announce is logged.
        for e in &update.forward_events {
            if e.warning {
                tracing::warn!(integration = %update.key(), reason = e.reason, "{}", e.message);
            } else {
                tracing::info!(integration = %update.key(), reason = e.reason, "{}", e.message);
            }
        }
        let this = self.clone();
        let update = update.clone();
        tokio::task::spawn_blocking(move || {
            let current = this
                .read(&update.namespace, &update.name, &update.uid)
                .unwrap_or_default();
            let status = merge_status(
                &current,
                &update,
                CounterMode::Absolute,
                crate::clock::timestamp(update.built_at_ms),
            );
            // Standalone has no Events: the truncation warning is logged.
            if let Some(e) = truncation_event(&current, &status) {
                if e.warning {
                    tracing::warn!(integration = %update.key(), reason = e.reason, "{}", e.message);
                } else {
                    tracing::info!(integration = %update.key(), reason = e.reason, "{}", e.message);
                }
            }
            let stored = StoredStatus {
                uid: update.uid.clone(),
                status,
            };
            let bytes = serde_json::to_vec_pretty(&stored)
                .map_err(|e| StatusWriteError::Transient(e.to_string()))?;
            write_atomic(&this.path(&update.namespace, &update.name), &bytes)
                .map_err(|e| StatusWriteError::Transient(format!("cannot write status file: {e}")))
        })
        .await
        .map_err(|e| StatusWriteError::Transient(format!("status file task failed: {e}")))?
    }
}

/// Conflicts are retried at once (fresh read, fresh merge) this many times per write.
const CONFLICT_RETRIES: usize = 4;
/// A single API call slower than this counts as an outage.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Cluster status writer: server-side apply on the status subresource.
#[derive(Clone)]
pub struct KubeStatusWriter {
    client: Client,
    recorder: EventRecorder,
}

impl KubeStatusWriter {
    /// `instance` names this replica in Events (the pod name).
    pub fn new(client: Client, instance: Option<String>) -> KubeStatusWriter {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance,
        };
        KubeStatusWriter {
            recorder: EventRecorder::new(client.clone(), reporter),
            client,
        }
    }

    async fn try_write(
        &self,
        api: &Api<WebhookIntegration>,
        update: &StatusUpdate,
    ) -> Result<(WebhookIntegration, ReceiverStatus), Attempt> {
        let object = match tokio::time::timeout(API_TIMEOUT, api.get_status(&update.name)).await {
            Err(_) => {
                return Err(Attempt::Failed(StatusWriteError::Transient(
                    "API server timed out".into(),
                )));
            }
            Ok(Err(kube::Error::Api(e))) if e.code == 404 => {
                return Err(Attempt::Failed(StatusWriteError::Gone(update.key())));
            }
            Ok(Err(e)) => return Err(Attempt::Failed(StatusWriteError::Transient(e.to_string()))),
            Ok(Ok(o)) => o,
        };
        if object.metadata.uid.as_deref() != Some(update.uid.as_str()) {
            return Err(Attempt::Failed(StatusWriteError::Gone(update.key())));
        }
        let current = ReceiverStatus::from_status(object.status.as_ref());
        let merged = merge_status(
            &current,
            update,
            CounterMode::Delta,
            crate::clock::timestamp(update.built_at_ms),
        );
        let mut status = serde_json::json!({
            "deliveries": merged.deliveries,
            "incidents": merged.incidents,
            "conditions": merged.degraded.iter().collect::<Vec<_>>(),
            "forwarding": merged.forwarding,
            "replicas": merged.replicas,
        });
        if let Some(totals) = &merged.forwarding_totals {
            status["forwardingTotals"] = serde_json::json!(totals);
        }
        let patch = serde_json::json!({
            "apiVersion": "hookwarden.dev/v1alpha1",
            "kind": "WebhookIntegration",
            "metadata": {
                "name": update.name,
                "namespace": update.namespace,
                // Optimistic concurrency: another replica's write in between → 409, and
                // we re-read and re-merge instead of overwriting its counts.
                "resourceVersion": object.metadata.resource_version,
            },
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match tokio::time::timeout(
            API_TIMEOUT,
            api.patch_status(&update.name, &params, &Patch::Apply(&patch)),
        )
        .await
        {
            Err(_) => Err(Attempt::Failed(StatusWriteError::Transient(
                "API server timed out".into(),
            ))),
            Ok(Err(kube::Error::Api(e))) if e.code == 409 => Err(Attempt::Conflict),
            Ok(Err(kube::Error::Api(e))) if e.code == 404 => {
                Err(Attempt::Failed(StatusWriteError::Gone(update.key())))
            }
            Ok(Err(e)) => Err(Attempt::Failed(StatusWriteError::Transient(e.to_string()))),
            Ok(Ok(_)) => Ok((object, merged)),
        }
    }

    async fn announce(&self, object: &WebhookIntegration, notices: &[&IncidentNotice]) {
        let reference = object.object_ref(&());
        let integration = format!(
            "{}/{}",
            object.metadata.namespace.as_deref().unwrap_or_default(),
            object.metadata.name.as_deref().unwrap_or_default()
        );
        for notice in notices {
            let (reason, type_, verb) = if notice.resolved {
                ("IncidentResolved", EventType::Normal, "resolved")
            } else {
                ("IncidentOpened", EventType::Warning, "opened")
            };
            let event = Event {
                type_,
                reason: reason.to_string(),
                note: Some(truncate(
                    &format!(
                        "{} incident {} {}: {}",
                        notice.severity, notice.id, verb, notice.title
                    ),
                    1000,
                )),
                action: "MapDelivery".to_string(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&event, &reference).await {
                // Events are best effort: the status already shows the incident.
                tracing::warn!(integration = %integration, error = %e, "cannot publish incident event");
            }
        }
    }
}

impl KubeStatusWriter {
    async fn announce_forwarding(
        &self,
        object: &WebhookIntegration,
        events: &[crate::receiver::forward::ForwardEvent],
    ) {
        let reference = object.object_ref(&());
        for e in events {
            let event = Event {
                type_: if e.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: e.reason.to_string(),
                note: Some(truncate(&e.message, 1000)),
                action: "Forward".to_string(),
                secondary: None,
            };
            if let Err(err) = self.recorder.publish(&event, &reference).await {
                tracing::warn!(reason = e.reason, error = %err, "cannot publish forwarding event");
            }
        }
    }
}

impl KubeStatusWriter {
    async fn announce_truncation(&self, object: &WebhookIntegration, event: TruncationEvent) {
        let event = Event {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: event.reason.to_string(),
            note: Some(event.message),
            action: "MapDelivery".to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(error = %e, "cannot publish incident truncation event");
        }
    }
}

/// An Event about `status.incidents.truncated` changing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TruncationEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The Event a write that changed `status.incidents.truncated` owes (one per change,
/// not per write: coalesced however many incidents open meanwhile).
pub fn truncation_event(
    before: &ReceiverStatus,
    written: &ReceiverStatus,
) -> Option<TruncationEvent> {
    let (was, is) = (before.incidents.truncated, written.incidents.truncated);
    let listed = written.incidents.recent.len() + written.incidents.tracked.len();
    match (was, is) {
        (false, true) => Some(TruncationEvent {
            warning: true,
            reason: REASON_INCIDENTS_TRUNCATED,
            message: format!(
                "{} incidents are open, more than the status lists ({listed}, spec.incidents.maxTracked): open counts them all and shows {}, the lists show only the newest; raise spec.incidents.maxTracked (at most 1000) or resolve the alert storm at its source",
                written.incidents.open,
                written
                    .incidents
                    .open_display
                    .as_deref()
                    .unwrap_or_default()
            ),
        }),
        (true, false) => Some(TruncationEvent {
            warning: false,
            reason: REASON_INCIDENTS_TRACKED,
            message: format!(
                "the status lists every open incident again ({} open)",
                written.incidents.open
            ),
        }),
        _ => None,
    }
}

enum Attempt {
    Conflict,
    Failed(StatusWriteError),
}

/// The notices to announce as Events. Every replica announces the opens and resolves it
/// saw, and with several replicas the same incident reaches more than one of them. Two
/// statuses decide:
/// - `before`, the status this write was merged into (read under optimistic concurrency,
///   so a concurrent writer forces a re-read): an open of an incident it shows open, or a
///   resolve of one it shows resolved, was announced by the replica that wrote it first;
/// - `written`, the merged status: the last change of an incident in this write is
///   announced only if the incident ended up in that state (an open that reached this
///   replica late, after another replica wrote a newer resolve, is not news).
///
/// An incident neither status shows (dropped for space) is announced.
fn unannounced<'a>(
    before: &ReceiverStatus,
    written: &ReceiverStatus,
    notices: &'a [IncidentNotice],
) -> Vec<&'a IncidentNotice> {
    let mut open = incident_states(before);
    let written = incident_states(written);
    notices
        .iter()
        .enumerate()
        .filter(|(i, notice)| {
            let opens = !notice.resolved;
            let was_open = open.insert(notice.id.as_str(), opens);
            let last = !notices[i + 1..].iter().any(|n| n.id == notice.id);
            let outcome = written.get(notice.id.as_str()).copied();
            was_open != Some(opens) && (!last || outcome.is_none_or(|o| o == opens))
        })
        .map(|(_, notice)| notice)
        .collect()
}

/// Incident id → whether the status shows it open.
fn incident_states(status: &ReceiverStatus) -> std::collections::HashMap<&str, bool> {
    status
        .incidents
        .recent
        .iter()
        .chain(&status.incidents.tracked)
        .map(|i| (i.id.as_str(), i.state == IncidentState::Open.as_str()))
        .collect()
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl StatusWriter for KubeStatusWriter {
    async fn write(&self, update: &StatusUpdate) -> Result<(), StatusWriteError> {
        let api: Api<WebhookIntegration> = Api::namespaced(self.client.clone(), &update.namespace);
        for _ in 0..CONFLICT_RETRIES {
            match self.try_write(&api, update).await {
                Ok((object, written)) => {
                    // `object` is the status this write was merged into: what other
                    // replicas wrote (and announced) before it.
                    let before = ReceiverStatus::from_status(object.status.as_ref());
                    let fresh = unannounced(&before, &written, &update.notices);
                    self.announce(&object, &fresh).await;
                    if let Some(event) = truncation_event(&before, &written) {
                        self.announce_truncation(&object, event).await;
                    }
                    self.announce_forwarding(&object, &update.forward_events)
                        .await;
                    return Ok(());
                }
                Err(Attempt::Conflict) => continue,
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
        Err(StatusWriteError::Transient(
            "status kept conflicting with other writers".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::incident::{IncidentEvent, Severity};

    fn update(delta: u64, totals: u64, degraded: bool) -> StatusUpdate {
        let mut incidents = IncidentBook::default();
        incidents.apply(
            &IncidentEvent {
                id: "mine".into(),
                title: "cpu".into(),
                severity: Severity::High,
                link: None,
                resolve: false,
                event_time_ms: 1_700_000_000_000,
            },
            "1",
        );
        StatusUpdate {
            namespace: "ns".into(),
            name: "dd".into(),
            uid: "u".into(),
            totals: Counters {
                received: totals,
                accepted: totals,
                ..Counters::default()
            },
            delta: Counters {
                received: delta,
                accepted: delta,
                ..Counters::default()
            },
            last_received_ms: Some(1_700_000_000_000),
            last_rejected_ms: Some(1_600_000_000_000),
            last_reject_reason: Some("token_mismatch".into()),
            incidents,
            keep_recent: 20,
            degraded,
            consecutive_auth_failures: if degraded { 25 } else { 0 },
            notices: Vec::new(),
            built_at_ms: 1_700_000_001_000,
            forwarding: None,
            forward_events: Vec::new(),
            forward_targets: None,
            replica: "replica-a".into(),
        }
    }

    fn stored() -> ReceiverStatus {
        let mut other = IncidentBook::default();
        other.apply(
            &IncidentEvent {
                id: "theirs".into(),
                title: "disk".into(),
                severity: Severity::Low,
                link: None,
                resolve: false,
                event_time_ms: 1_700_000_100_000,
            },
            "7",
        );
        ReceiverStatus {
            deliveries: DeliveryStatus {
                received: 10,
                accepted: 10,
                last_rejected_time: time_from_ms(1_700_000_200_000),
                last_reject_reason: Some("timestamp_stale".into()),
                ..DeliveryStatus::default()
            },
            incidents: other.to_status(20),
            ..ReceiverStatus::default()
        }
    }

    #[test]
    fn delta_mode_adds_and_keeps_the_newest_reject_reason() {
        let now = jiff::Timestamp::from_second(1_800_000_000).expect("ts");
        let merged = merge_status(&stored(), &update(5, 99, false), CounterMode::Delta, now);
        assert_eq!(
            (merged.deliveries.received, merged.deliveries.accepted),
            (15, 15)
        );
        // The stored reject is newer than ours: its reason stays.
        assert_eq!(
            merged.deliveries.last_reject_reason.as_deref(),
            Some("timestamp_stale")
        );
        assert_eq!(
            merged.incidents.open, 2,
            "both replicas' incidents are kept"
        );
    }

    #[test]
    fn absolute_mode_writes_totals() {
        let now = jiff::Timestamp::from_second(1_800_000_000).expect("ts");
        let merged = merge_status(&stored(), &update(5, 99, false), CounterMode::Absolute, now);
        assert_eq!(merged.deliveries.accepted, 99);
    }

    #[test]
    fn degraded_is_set_with_a_reason_and_keeps_its_transition_time() {
        let t1 = jiff::Timestamp::from_second(1_800_000_000).expect("ts");
        let t2 = jiff::Timestamp::from_second(1_800_000_060).expect("ts");
        let first = merge_status(&stored(), &update(1, 1, true), CounterMode::Delta, t1);
        let degraded = first.degraded.clone().expect("condition");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", REASON_SIGNATURE_FAILURES)
        );
        assert!(
            degraded.message.contains("25 consecutive"),
            "{}",
            degraded.message
        );
        let again = merge_status(&first, &update(1, 2, true), CounterMode::Delta, t2);
        assert_eq!(
            again.degraded.expect("condition").last_transition_time.0,
            t1
        );
        let cleared = merge_status(&first, &update(1, 3, false), CounterMode::Delta, t2);
        let c = cleared.degraded.expect("condition");
        assert_eq!((c.status.as_str(), c.last_transition_time.0), ("False", t2));
    }

    #[test]
    fn file_writer_round_trips_and_ignores_a_recreated_integration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let writer = FileStatusWriter::new(dir.path());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime
            .block_on(writer.write(&update(3, 3, false)))
            .expect("write");
        let read = writer.read("ns", "dd", "u").expect("stored");
        assert_eq!(read.deliveries.accepted, 3);
        assert_eq!(read.incidents.open, 1);
        assert!(writer.read("ns", "dd", "other-uid").is_none());
    }

    fn forwarding(pending: i64, dead: i64, delivered: i64) -> Option<Vec<ForwardStatus>> {
        Some(vec![ForwardStatus {
            name: "tickets".into(),
            delivered,
            pending,
            dead_lettered: dead,
            circuit: Some("closed".into()),
            ..ForwardStatus::default()
        }])
    }

    /// Issue 17: pending and dead letters were the last writer's view; with two
    /// replicas they are the sum of each replica's share, and a gone replica's share
    /// ages out.
    #[test]
    fn pending_and_dead_letters_are_summed_over_replicas_and_stale_shares_age_out() {
        let t0 = jiff::Timestamp::from_second(1_800_000_000).expect("ts");
        let mut a = update(1, 1, false);
        a.forwarding = forwarding(3, 1, 5);
        a.forward_targets = Some(vec!["tickets".into()]);
        let mut b = a.clone();
        b.replica = "replica-b".into();
        b.forwarding = forwarding(4, 2, 7);

        let after_a = merge_status(&ReceiverStatus::default(), &a, CounterMode::Delta, t0);
        let after_b = merge_status(&after_a, &b, CounterMode::Delta, t0);
        let f = &after_b.forwarding[0];
        assert_eq!((f.pending, f.dead_lettered, f.delivered), (7, 3, 12));
        assert_eq!(
            after_b.forwarding_totals,
            Some(ForwardingTotals {
                pending: 7,
                dead_lettered: 3
            })
        );
        // A writes again with its backlog drained: B's share stays.
        a.forwarding = forwarding(0, 0, 0);
        let t1 = t0 + jiff::SignedDuration::from_secs(60);
        let drained = merge_status(&after_b, &a, CounterMode::Delta, t1);
        assert_eq!(
            (
                drained.forwarding[0].pending,
                drained.forwarding[0].dead_lettered
            ),
            (4, 2)
        );
        assert_eq!(
            drained
                .replicas
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            ["replica-b"],
            "an all-zero share is not written"
        );
        // B is gone: after SHARE_TTL its share no longer counts.
        let late = t0 + jiff::SignedDuration::from_secs(601);
        let aged = merge_status(&drained, &a, CounterMode::Delta, late);
        assert_eq!(
            (aged.forwarding[0].pending, aged.forwarding[0].dead_lettered),
            (0, 0)
        );
        assert!(aged.replicas.is_empty());
        assert_eq!(aged.forwarding[0].delivered, 12, "running totals stay");
    }

    /// Issue 18, finding 9: another replica's count of open incidents it no longer lists
    /// keeps `open` from dropping back when this replica writes.
    #[test]
    fn open_counts_incidents_another_replica_no_longer_lists() {
        let now = jiff::Timestamp::from_second(1_800_000_000).expect("ts");
        let mut storm = update(1, 1, false);
        storm.incidents = IncidentBook::new(5);
        for i in 0..12 {
            storm.incidents.apply(
                &IncidentEvent {
                    id: format!("a{i}"),
                    title: "t".into(),
                    severity: Severity::High,
                    link: None,
                    resolve: false,
                    event_time_ms: 1_700_000_000_000 + i,
                },
                "1",
            );
        }
        let first = merge_status(&ReceiverStatus::default(), &storm, CounterMode::Delta, now);
        assert_eq!(
            (first.incidents.open, first.incidents.truncated),
            (12, true)
        );
        assert_eq!(first.incidents.open_display.as_deref(), Some("12+"));
        let event = truncation_event(&ReceiverStatus::default(), &first).expect("event");
        assert!(event.warning && event.reason == REASON_INCIDENTS_TRUNCATED);
        assert!(event.message.contains("maxTracked"), "{}", event.message);
        assert!(
            truncation_event(&first, &first).is_none(),
            "once per change"
        );

        let mut quiet = update(1, 1, false);
        quiet.replica = "replica-b".into();
        quiet.incidents = IncidentBook::new(5);
        let second = merge_status(&first, &quiet, CounterMode::Delta, now);
        assert_eq!(
            (second.incidents.open, second.incidents.truncated),
            (12, true),
            "replica-b lists 5 (merged) and replica-a still counts 7 more"
        );
    }

    fn on_status(incidents: &[(&str, &str)]) -> ReceiverStatus {
        let summary = |(id, state): &(&str, &str)| {
            serde_json::from_value::<crate::crd::IncidentSummary>(
                serde_json::json!({"id": id, "state": state}),
            )
            .expect("summary")
        };
        let mut status = ReceiverStatus::default();
        // One in `recent`, the rest in `tracked`: both count.
        status.incidents.recent = incidents.iter().take(1).map(summary).collect();
        status.incidents.tracked = incidents.iter().skip(1).map(summary).collect();
        status
    }

    fn notice(id: &str, resolved: bool) -> IncidentNotice {
        IncidentNotice {
            id: id.into(),
            title: "t".into(),
            severity: "high".into(),
            resolved,
        }
    }

    #[test]
    fn changes_another_replica_already_wrote_are_not_announced_again() {
        let before = on_status(&[
            ("open-1", "open"),
            ("done-1", "resolved"),
            ("open-2", "open"),
            ("late", "resolved"),
        ]);
        let written = on_status(&[
            ("open-1", "open"),
            ("done-1", "open"),
            ("open-2", "resolved"),
            ("late", "resolved"),
            ("new", "resolved"),
        ]);
        let notices = vec![
            notice("open-1", false), // the other replica opened it: skip
            notice("done-1", true),  // already resolved there: skip
            notice("open-2", true),  // resolved only here: announce
            notice("done-1", false), // re-opened: announce
            notice("new", false),    // unknown to the status: announce
            notice("new", true),     // opened and resolved within one interval: both
            notice("gone", true),    // no longer on the status: announce, never lose one
            notice("late", false),   // older than the resolve another replica wrote: skip
        ];
        let announced: Vec<(&str, bool)> = unannounced(&before, &written, &notices)
            .into_iter()
            .map(|n| (n.id.as_str(), n.resolved))
            .collect();
        assert_eq!(
            announced,
            [
                ("open-2", true),
                ("done-1", false),
                ("new", false),
                ("new", true),
                ("gone", true)
            ]
        );
        let nothing = ReceiverStatus::default();
        assert!(unannounced(&nothing, &nothing, &[]).is_empty());
    }
}
