//! What the receiver knows about each integration, folded from journal entries.
//!
//! The ledger is pure state: the background worker feeds it accepted deliveries (with
//! their journal sequence number), rejects and duplicates, and reads status updates out
//! of it. It is also what a journal checkpoint stores, so it must be exactly "the fold
//! of every entry up to the checkpoint": replay after a restart folds the entries the
//! checkpoint does not cover and skips the ones it does, so replaying twice never counts
//! twice or re-opens a resolved incident.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::domain::incident::state::{IncidentBook, Transition};
use crate::receiver::sink::{Accepted, Duplicate, Rejected};

/// Delivery counters of one integration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub received: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub duplicates: u64,
    pub ignored: u64,
    /// Alerts beyond `incidents.maxAlertsPerDelivery` in accepted deliveries: counted,
    /// not mapped.
    #[serde(default)]
    pub alerts_dropped: u64,
}

impl Counters {
    /// `self - earlier`, field by field (never below zero).
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            received: self.received.saturating_sub(earlier.received),
            accepted: self.accepted.saturating_sub(earlier.accepted),
            rejected: self.rejected.saturating_sub(earlier.rejected),
            duplicates: self.duplicates.saturating_sub(earlier.duplicates),
            ignored: self.ignored.saturating_sub(earlier.ignored),
            alerts_dropped: self.alerts_dropped.saturating_sub(earlier.alerts_dropped),
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Counters::default()
    }
}

/// An incident change worth a Kubernetes Event (not persisted: Events are best effort).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncidentNotice {
    pub id: String,
    pub title: String,
    pub severity: String,
    /// True when the incident resolved, false when it opened or re-opened.
    pub resolved: bool,
}

/// Folded state of one integration.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationLedger {
    /// UID of the integration these numbers belong to; a different UID under the same
    /// name is a re-created integration and starts from zero.
    pub uid: String,
    /// Everything this receiver counted for the integration.
    pub totals: Counters,
    /// The part of `totals` already added to the stored status (multi-replica writers add
    /// only `totals - written`).
    pub written: Counters,
    pub last_received_ms: Option<i64>,
    pub last_rejected_ms: Option<i64>,
    pub last_reject_reason: Option<String>,
    #[serde(with = "book_serde")]
    pub incidents: IncidentBook,
    /// Authentication failures since the last accepted delivery (feeds `Degraded`).
    pub consecutive_auth_failures: u64,
    /// Bumped on every change; compared with `written_version` to know whether the
    /// stored status is behind.
    pub version: u64,
    /// `version` as of the last successful status write.
    pub written_version: u64,
    /// Incident opens/resolves not yet announced as Events.
    #[serde(skip)]
    pub notices: Vec<IncidentNotice>,
}

impl IntegrationLedger {
    fn for_uid(uid: &str) -> IntegrationLedger {
        IntegrationLedger {
            uid: uid.to_string(),
            ..IntegrationLedger::default()
        }
    }

    /// Whether there is anything the stored status does not show yet.
    pub fn has_unwritten(&self) -> bool {
        self.version != self.written_version || !self.totals.since(&self.written).is_zero()
    }

    /// Whether the `Degraded` condition should be set at `threshold` consecutive failures.
    pub fn degraded(&self, threshold: u64) -> bool {
        threshold > 0 && self.consecutive_auth_failures >= threshold
    }

    fn note_received(&mut self, at_ms: i64) {
        self.totals.received += 1;
        self.last_received_ms = Some(self.last_received_ms.map_or(at_ms, |t| t.max(at_ms)));
        self.version += 1;
    }
}

/// A delivery id remembered for deduplication across restarts: the dedup digest of
/// (integration, id) (see [`crate::receiver::dedup::digest`]) and when it expires.
/// 24 bytes, so 200,000 of them cost under 5 MiB in memory and in a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RememberedId {
    digest: [u8; 16],
    pub expires_at_ms: i64,
}

impl RememberedId {
    const ENCODED_LEN: usize = 24;

    pub fn new(digest: u128, expires_at_ms: i64) -> RememberedId {
        RememberedId {
            digest: digest.to_le_bytes(),
            expires_at_ms,
        }
    }

    pub fn digest(&self) -> u128 {
        u128::from_le_bytes(self.digest)
    }
}

/// Why a checkpoint snapshot cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("ledger is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("remembered delivery ids section is {0} bytes, not a multiple of 24")]
    Ids(usize),
}

/// The folded state of every integration, plus which journal entries it contains.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    /// Every entry with a sequence number ≤ this is folded in.
    covered: u64,
    /// Entries above `covered` that are folded in too (they can arrive out of order
    /// because concurrent appends finish in any order).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    extra: BTreeSet<u64>,
    integrations: BTreeMap<String, IntegrationLedger>,
    /// Delivery ids accepted recently, oldest first, so dedup survives a restart. Not
    /// part of the JSON: a checkpoint stores them as a packed binary section after it
    /// (see [`Ledger::to_snapshot`]).
    #[serde(skip)]
    remembered: VecDeque<RememberedId>,
    /// Ids of the entries this ledger folded itself since it was restored, oldest first.
    /// Kept apart from `remembered` (the checkpoint's ids, then those of entries already
    /// applied, see [`Ledger::remember_id`]) because replay learns them in the wrong
    /// order: the applied entries come last but are older than every entry folded. The
    /// ids read as `remembered` then `recent`, oldest first, so a cap that bites drops
    /// the oldest and keeps the newest.
    #[serde(skip)]
    recent: VecDeque<RememberedId>,
    /// Checkpoints written before 0.1.0 kept the ids as strings (integration → id →
    /// expiry); read for upgrades, never written.
    #[serde(default, rename = "remembered", skip_serializing)]
    legacy_remembered: BTreeMap<String, BTreeMap<String, i64>>,
    /// Cap on `remembered` (`--dedup-max-ids`); `None`: [`MAX_REMEMBERED_IDS`].
    #[serde(skip)]
    max_remembered: Option<usize>,
}

/// By default at most this many delivery ids are kept for re-seeding dedup (oldest
/// dropped first); `--dedup-max-ids` sets it with the dedup memory's own cap.
pub const MAX_REMEMBERED_IDS: usize = 200_000;

impl Ledger {
    /// Restores a ledger from a checkpoint snapshot.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Ledger, SnapshotError> {
        // Compact JSON never contains a raw newline, so the first one ends it.
        let (json, ids) = match bytes.iter().position(|b| *b == b'\n') {
            Some(at) => (&bytes[..at], &bytes[at + 1..]),
            None => (bytes, &[][..]),
        };
        let mut ledger: Ledger = serde_json::from_slice(json)?;
        if ids.len() % RememberedId::ENCODED_LEN != 0 {
            return Err(SnapshotError::Ids(ids.len()));
        }
        ledger.remembered = ids
            .chunks_exact(RememberedId::ENCODED_LEN)
            .map(|chunk| {
                let (digest, expires) = chunk.split_at(16);
                RememberedId {
                    digest: digest.try_into().unwrap_or_default(),
                    expires_at_ms: i64::from_le_bytes(expires.try_into().unwrap_or_default()),
                }
            })
            .collect();
        for (integration, ids) in std::mem::take(&mut ledger.legacy_remembered) {
            for (id, expires_at_ms) in ids {
                ledger.remember_id(&integration, &id, expires_at_ms);
            }
        }
        Ok(ledger)
    }

    /// The checkpoint form of this ledger: compact JSON, a newline, then every
    /// remembered id as 16 digest bytes + 8 expiry bytes (little endian). Megabytes of
    /// ids are copied, not formatted.
    pub fn to_snapshot(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut bytes = serde_json::to_vec(self)?;
        bytes.reserve(1 + self.remembered_len() * RememberedId::ENCODED_LEN);
        bytes.push(b'\n');
        for id in self.remembered.iter().chain(&self.recent) {
            bytes.extend_from_slice(&id.digest);
            bytes.extend_from_slice(&id.expires_at_ms.to_le_bytes());
        }
        Ok(bytes)
    }

    /// Highest sequence number below which every entry is folded: what a checkpoint of
    /// this ledger covers.
    pub fn covered_seq(&self) -> u64 {
        self.covered
    }

    /// Whether the entry `seq` is already part of this ledger.
    pub fn contains(&self, seq: u64) -> bool {
        seq <= self.covered || self.extra.contains(&seq)
    }

    /// Declares that no entry at or below `seq` is still to come (every append that could
    /// have produced one has finished and was folded), closing gaps in the sequence.
    pub fn settle(&mut self, seq: u64) {
        if seq > self.covered {
            self.covered = seq;
        }
        let covered = self.covered;
        self.extra.retain(|s| *s > covered);
        self.advance();
    }

    fn advance(&mut self) {
        while self.extra.remove(&(self.covered + 1)) {
            self.covered += 1;
        }
    }

    /// Folds one accepted delivery. Returns false (and changes nothing) when the entry
    /// was folded before, which makes replay idempotent.
    pub fn fold(&mut self, seq: u64, accepted: &Accepted, dedup_expires_at_ms: i64) -> bool {
        if self.contains(seq) {
            return false;
        }
        self.extra.insert(seq);
        self.advance();

        let entry = self.entry(&accepted.integration, &accepted.uid);
        entry.note_received(accepted.received_at_ms);
        if accepted.ignored {
            entry.totals.ignored += 1;
        } else {
            entry.totals.accepted += 1;
        }
        entry.consecutive_auth_failures = 0;
        entry.totals.alerts_dropped += u64::from(accepted.alerts_dropped);
        for event in &accepted.incidents {
            // Zero-padded so the tiebreak sorts like the sequence (delivery order).
            let transition = entry.incidents.apply(event, &format!("{seq:020}"));
            if let Some(notice) = notice_for(&transition, event) {
                entry.notices.push(notice);
            }
        }
        for key in accepted
            .delivery_id
            .iter()
            .chain(accepted.replay_key.iter())
        {
            self.remember(&accepted.integration, key, dedup_expires_at_ms);
        }
        true
    }

    /// Sets how many incidents the integration's book keeps whole
    /// (`spec.incidents.maxTracked`); called before each fold, so a changed spec applies
    /// from the next delivery on.
    pub fn set_max_tracked(&mut self, integration: &str, uid: &str, max_tracked: usize) {
        let entry = self.entry(integration, uid);
        if entry.incidents.capacity() != max_tracked {
            entry.incidents.set_capacity(max_tracked);
            entry.version += 1;
        }
    }

    /// Marks an integration's status as behind (something outside the ledger changed,
    /// e.g. its forwarding), so the next pass writes it.
    pub fn touch(&mut self, integration: &str) {
        if let Some(entry) = self.integrations.get_mut(integration) {
            entry.version += 1;
        }
    }

    /// Counts a refused request (not journaled: best effort).
    pub fn record_reject(&mut self, rejected: &Rejected) {
        let entry = self.entry(&rejected.integration, &rejected.uid);
        entry.note_received(rejected.at_ms);
        entry.totals.rejected += 1;
        entry.last_rejected_ms = Some(
            entry
                .last_rejected_ms
                .map_or(rejected.at_ms, |t| t.max(rejected.at_ms)),
        );
        entry.last_reject_reason = Some(rejected.reason.to_string());
        if rejected.auth_failure {
            entry.consecutive_auth_failures += 1;
        }
    }

    /// Counts a duplicate delivery (not journaled: best effort).
    pub fn record_duplicate(&mut self, duplicate: &Duplicate) {
        let entry = self.entry(&duplicate.integration, &duplicate.uid);
        entry.note_received(duplicate.at_ms);
        entry.totals.duplicates += 1;
    }

    fn entry(&mut self, integration: &str, uid: &str) -> &mut IntegrationLedger {
        // Looked up before inserting: the key is allocated once per integration, not
        // once per delivery.
        if !self.integrations.contains_key(integration) {
            self.integrations
                .insert(integration.to_string(), IntegrationLedger::for_uid(uid));
        }
        let Some(entry) = self.integrations.get_mut(integration) else {
            unreachable!("inserted above")
        };
        if entry.uid != uid {
            *entry = IntegrationLedger::for_uid(uid);
        }
        entry
    }

    /// Keeps at most `max` delivery ids from now on (the oldest go first).
    pub fn set_max_remembered(&mut self, max: usize) {
        self.max_remembered = Some(max.max(1));
        self.trim_remembered();
    }

    fn remembered_len(&self) -> usize {
        self.remembered.len() + self.recent.len()
    }

    fn trim_remembered(&mut self) {
        let max = self.max_remembered.unwrap_or(MAX_REMEMBERED_IDS);
        while self.remembered_len() > max {
            if self.remembered.pop_front().is_none() {
                self.recent.pop_front();
            }
        }
    }

    /// Remembers a delivery id without counting anything: for journal entries whose
    /// effects already reached the status but whose ids no snapshot holds yet. Such an
    /// entry is older than every entry this ledger folded since it was restored (replay
    /// folds only the entries after the applied mark), so its id is placed before theirs.
    pub fn remember_id(&mut self, integration: &str, id: &str, expires_at_ms: i64) {
        let digest = crate::receiver::dedup::digest(integration, id);
        self.remembered
            .push_back(RememberedId::new(digest, expires_at_ms));
        self.trim_remembered();
    }

    fn remember(&mut self, integration: &str, id: &str, expires_at_ms: i64) {
        let digest = crate::receiver::dedup::digest(integration, id);
        self.recent
            .push_back(RememberedId::new(digest, expires_at_ms));
        // The oldest go first; an id remembered twice (re-accepted after it expired)
        // simply appears twice until the older copy ages out.
        self.trim_remembered();
    }

    /// Drops remembered ids that expired at `now_ms` (once per checkpoint: windows
    /// differ per integration, so expiry is not in insertion order).
    pub fn prune(&mut self, now_ms: i64) {
        self.remembered.retain(|id| id.expires_at_ms > now_ms);
        self.recent.retain(|id| id.expires_at_ms > now_ms);
    }

    /// Remembered delivery ids still valid at `now_ms`, oldest first, to re-seed dedup
    /// after a restart (whose cap then keeps the newest).
    pub fn remembered_ids(&self, now_ms: i64) -> impl Iterator<Item = RememberedId> + '_ {
        self.remembered
            .iter()
            .chain(&self.recent)
            .filter(move |id| id.expires_at_ms > now_ms)
            .copied()
    }

    pub fn get(&self, integration: &str) -> Option<&IntegrationLedger> {
        self.integrations.get(integration)
    }

    pub fn get_mut(&mut self, integration: &str) -> Option<&mut IntegrationLedger> {
        self.integrations.get_mut(integration)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &IntegrationLedger)> {
        self.integrations.iter()
    }

    /// Keys of integrations with something the stored status does not show yet.
    pub fn unwritten(&self) -> Vec<String> {
        self.integrations
            .iter()
            .filter(|(_, l)| l.has_unwritten())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Records that the stored status now shows `totals` and every change up to `version`
    /// (what a status update was built from). Ignored when the integration was re-created
    /// in between.
    pub fn mark_written(&mut self, integration: &str, uid: &str, totals: Counters, version: u64) {
        if let Some(entry) = self.integrations.get_mut(integration)
            && entry.uid == uid
        {
            entry.written = totals;
            entry.written_version = entry.written_version.max(version);
        }
    }

    /// Records that the stored status shows everything this ledger counted (see
    /// `runtime::replay`: the journal's applied mark passed the checkpoint).
    pub fn mark_all_written(&mut self) {
        for entry in self.integrations.values_mut() {
            entry.written = entry.totals;
            entry.written_version = entry.version;
        }
    }

    /// Forgets an integration (it was deleted).
    pub fn remove(&mut self, integration: &str) {
        // Its remembered ids stay until they expire: they are keyed by digest, and a
        // re-created integration of the same name keeps the same dedup keys in memory too.
        self.integrations.remove(integration);
    }
}

fn notice_for(
    transition: &Transition,
    event: &crate::domain::incident::IncidentEvent,
) -> Option<IncidentNotice> {
    let resolved = match transition {
        Transition::Opened | Transition::Reopened => false,
        Transition::Resolved => true,
        Transition::Updated | Transition::Unchanged => return None,
    };
    Some(IncidentNotice {
        id: event.id.clone(),
        title: event.title.clone(),
        severity: event.severity.as_str().to_string(),
        resolved,
    })
}

/// The book is stored in checkpoints in its status form (every incident it tracks),
/// which `IncidentBook::merge` reads back losslessly, plus its cap and the digests of the
/// open incidents it counts without tracking them (absent in older checkpoints: the
/// default cap, none untracked).
mod book_serde {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::crd::IncidentsStatus;
    use crate::domain::incident::state::{DEFAULT_CAPACITY, IncidentBook};

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct BookForm {
        #[serde(flatten)]
        status: IncidentsStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        capacity: Option<usize>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        untracked_digests: Vec<u64>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        untracked_overflow: bool,
    }

    pub fn serialize<S: Serializer>(book: &IncidentBook, serializer: S) -> Result<S::Ok, S::Error> {
        let (digests, overflow) = book.untracked();
        BookForm {
            status: book.to_status(usize::MAX),
            capacity: (book.capacity() != DEFAULT_CAPACITY).then_some(book.capacity()),
            untracked_digests: digests.collect(),
            untracked_overflow: overflow,
        }
        .serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<IncidentBook, D::Error> {
        let form = BookForm::deserialize(deserializer)?;
        let mut book = IncidentBook::new(form.capacity.unwrap_or(DEFAULT_CAPACITY));
        book.merge(&form.status);
        book.restore_untracked(form.untracked_digests, form.untracked_overflow);
        Ok(book)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::incident::{IncidentEvent, Severity};

    const KEY: &str = "payments/datadog";
    const DAY_MS: i64 = 86_400_000;

    fn event(id: &str, resolve: bool, at_ms: i64) -> IncidentEvent {
        IncidentEvent {
            id: id.to_string(),
            title: format!("alert {id}"),
            severity: Severity::High,
            link: None,
            resolve,
            event_time_ms: at_ms,
        }
    }

    fn accepted(delivery: &str, incidents: Vec<IncidentEvent>, at_ms: i64) -> Accepted {
        Accepted {
            integration: KEY.to_string(),
            uid: "uid-1".to_string(),
            delivery_id: Some(delivery.to_string()),
            event_type: None,
            received_at_ms: at_ms,
            ignored: false,
            incidents,
            alerts_dropped: 0,
            replay_key: None,
            forward: None,
        }
    }

    /// Trigger, update, resolve, plus an ignored delivery.
    fn history() -> Vec<(u64, Accepted)> {
        let mut ignored = accepted("d4", vec![], 4_000);
        ignored.ignored = true;
        vec![
            (1, accepted("d1", vec![event("i1", false, 1_000)], 1_000)),
            (2, accepted("d2", vec![event("i2", false, 2_000)], 2_000)),
            (3, accepted("d3", vec![event("i1", true, 3_000)], 3_000)),
            (4, ignored),
        ]
    }

    fn fold_all(ledger: &mut Ledger, entries: &[(u64, Accepted)]) {
        for (seq, a) in entries {
            ledger.fold(*seq, a, a.received_at_ms + DAY_MS);
        }
    }

    fn summary(ledger: &Ledger) -> (Counters, i64, Vec<(String, String)>) {
        let entry = ledger.get(KEY).expect("integration");
        let status = entry.incidents.to_status(20);
        (
            entry.totals,
            status.open,
            status.recent.into_iter().map(|i| (i.id, i.state)).collect(),
        )
    }

    #[test]
    fn folding_counts_and_tracks_incidents() {
        let mut ledger = Ledger::default();
        fold_all(&mut ledger, &history());
        let (totals, open, incidents) = summary(&ledger);
        assert_eq!(
            totals,
            Counters {
                received: 4,
                accepted: 3,
                ignored: 1,
                ..Counters::default()
            }
        );
        assert_eq!(open, 1);
        assert!(
            incidents.contains(&("i1".to_string(), "resolved".to_string())),
            "{incidents:?}"
        );
        assert!(
            incidents.contains(&("i2".to_string(), "open".to_string())),
            "{incidents:?}"
        );
        let notices = &ledger.get(KEY).expect("integration").notices;
        assert_eq!(
            notices
                .iter()
                .map(|n| (n.id.as_str(), n.resolved))
                .collect::<Vec<_>>(),
            vec![("i1", false), ("i2", false), ("i1", true)]
        );
        assert_eq!(ledger.covered_seq(), 4);
    }

    #[test]
    fn replaying_the_same_entries_twice_changes_nothing() {
        let mut once = Ledger::default();
        fold_all(&mut once, &history());
        let mut twice = Ledger::default();
        fold_all(&mut twice, &history());
        fold_all(&mut twice, &history());
        assert_eq!(summary(&once), summary(&twice));
        // A resolved incident is not re-opened by replaying its trigger.
        assert_eq!(
            summary(&twice)
                .2
                .iter()
                .find(|(id, _)| id == "i1")
                .map(|(_, s)| s.as_str()),
            Some("resolved")
        );
    }

    #[test]
    fn checkpoint_plus_replay_of_all_entries_equals_one_fold() {
        let entries = history();
        let mut live = Ledger::default();
        fold_all(&mut live, &entries[..2]);
        let snapshot = live.to_snapshot().expect("snapshot");
        fold_all(&mut live, &entries[2..]);

        // Restart: the checkpoint covers 1..=2, the journal still holds everything (it
        // may not have compacted yet). Replay twice, as two crashes in a row would.
        for _ in 0..2 {
            let mut restored = Ledger::from_snapshot(&snapshot).expect("restore");
            fold_all(&mut restored, &entries);
            fold_all(&mut restored, &entries);
            assert_eq!(summary(&restored), summary(&live));
        }
    }

    #[test]
    fn out_of_order_entries_are_folded_once_and_the_covered_prefix_only_grows_contiguously() {
        let entries = history();
        let mut ledger = Ledger::default();
        fold_all(&mut ledger, &[entries[2].clone(), entries[0].clone()]);
        assert_eq!(ledger.covered_seq(), 1, "entry 2 is still missing");
        let snapshot = ledger.to_snapshot().expect("snapshot");
        let mut restored = Ledger::from_snapshot(&snapshot).expect("restore");
        fold_all(&mut restored, &entries);
        fold_all(&mut ledger, &entries);
        assert_eq!(summary(&restored), summary(&ledger));
        assert_eq!(ledger.covered_seq(), 4);
        assert_eq!(summary(&ledger).0.accepted, 3);
    }

    #[test]
    fn settle_closes_gaps_that_will_never_fill() {
        let entries = history();
        let mut ledger = Ledger::default();
        fold_all(&mut ledger, &[entries[0].clone(), entries[2].clone()]);
        ledger.settle(3);
        assert_eq!(ledger.covered_seq(), 3);
        assert!(
            !ledger.fold(2, &entries[1].1, 0),
            "a settled sequence number is not folded later"
        );
    }

    #[test]
    fn written_watermark_gives_deltas_and_survives_a_checkpoint() {
        let entries = history();
        let mut ledger = Ledger::default();
        fold_all(&mut ledger, &entries[..2]);
        let entry = ledger.get(KEY).expect("integration");
        let (totals, version) = (entry.totals, entry.version);
        ledger.mark_written(KEY, "uid-1", totals, version);
        assert!(ledger.unwritten().is_empty());
        fold_all(&mut ledger, &entries[2..]);
        let restored =
            Ledger::from_snapshot(&ledger.to_snapshot().expect("snapshot")).expect("restore");
        let entry = restored.get(KEY).expect("integration");
        assert_eq!(
            entry.totals.since(&entry.written),
            Counters {
                received: 2,
                accepted: 1,
                ignored: 1,
                ..Counters::default()
            }
        );
        assert_eq!(restored.unwritten(), vec![KEY.to_string()]);
    }

    #[test]
    fn rejects_feed_degraded_until_an_accepted_delivery() {
        let mut ledger = Ledger::default();
        for i in 0..20 {
            ledger.record_reject(&Rejected {
                integration: KEY.into(),
                uid: "uid-1".into(),
                reason: "signature_mismatch",
                auth_failure: true,
                at_ms: 1_000 + i,
            });
        }
        ledger.record_duplicate(&Duplicate {
            integration: KEY.into(),
            uid: "uid-1".into(),
            at_ms: 5_000,
        });
        let entry = ledger.get(KEY).expect("integration");
        assert!(entry.degraded(20));
        assert!(!entry.degraded(21));
        assert_eq!(entry.totals.rejected, 20);
        assert_eq!(entry.totals.duplicates, 1);
        assert_eq!(entry.totals.received, 21);
        assert_eq!(
            entry.last_reject_reason.as_deref(),
            Some("signature_mismatch")
        );
        ledger.fold(1, &accepted("d1", vec![], 6_000), DAY_MS);
        assert!(!ledger.get(KEY).expect("integration").degraded(20));
    }

    #[test]
    fn a_recreated_integration_starts_from_zero() {
        let mut ledger = Ledger::default();
        fold_all(&mut ledger, &history()[..1]);
        let mut again = accepted("d9", vec![], 9_000);
        again.uid = "uid-2".into();
        ledger.fold(9, &again, DAY_MS);
        let entry = ledger.get(KEY).expect("integration");
        assert_eq!((entry.uid.as_str(), entry.totals.accepted), ("uid-2", 1));
        assert_eq!(entry.incidents.open_count(), 0);
    }

    /// Issue 18, finding 9: what a kill -9 and restart rebuild from a checkpoint keeps
    /// the open incidents past the cap counted, and the integration's cap.
    #[test]
    fn open_incidents_past_the_cap_survive_a_checkpoint() {
        let mut ledger = Ledger::default();
        for i in 0..150u64 {
            let at = 1_000 + i as i64;
            ledger.set_max_tracked(KEY, "uid-1", 120);
            ledger.fold(
                i + 1,
                &accepted(
                    &format!("d{i}"),
                    vec![event(&format!("a{i}"), false, at)],
                    at,
                ),
                DAY_MS,
            );
        }
        let book = &ledger.get(KEY).expect("integration").incidents;
        assert_eq!(
            (book.len(), book.open_count(), book.truncated()),
            (120, 150, true)
        );
        let restored =
            Ledger::from_snapshot(&ledger.to_snapshot().expect("snapshot")).expect("restore");
        let again = &restored.get(KEY).expect("integration").incidents;
        assert_eq!(
            (again.len(), again.open_count(), again.capacity()),
            (120, 150, 120)
        );
        assert_eq!(summary(&restored), summary(&ledger));
    }

    #[test]
    fn remembered_ids_expire_and_survive_checkpoints() {
        let mut ledger = Ledger::default();
        fold_all(&mut ledger, &history());
        let restored =
            Ledger::from_snapshot(&ledger.to_snapshot().expect("snapshot")).expect("restore");
        let ids: Vec<u128> = restored.remembered_ids(0).map(|r| r.digest()).collect();
        let expected: Vec<u128> = ["d1", "d2", "d3", "d4"]
            .iter()
            .map(|d| crate::receiver::dedup::digest(KEY, d))
            .collect();
        assert_eq!(ids, expected);
        // d1 expires at 1_000 + DAY_MS.
        assert_eq!(restored.remembered_ids(1_000 + DAY_MS).count(), 3);
    }

    #[test]
    fn snapshots_with_ids_as_json_strings_are_still_read() {
        // The layout before the binary id section: ids inside the JSON.
        let legacy = format!(
            r#"{{"covered":4,"integrations":{{}},"remembered":{{"{KEY}":{{"d1":{}}}}},"rememberedCount":1}}"#,
            1_000 + DAY_MS
        );
        let restored = Ledger::from_snapshot(legacy.as_bytes()).expect("legacy snapshot");
        assert_eq!(restored.covered_seq(), 4);
        let ids: Vec<RememberedId> = restored.remembered_ids(0).collect();
        assert_eq!(
            ids,
            vec![RememberedId::new(
                crate::receiver::dedup::digest(KEY, "d1"),
                1_000 + DAY_MS
            )]
        );
        // Written back in the current layout, and read again the same.
        let again =
            Ledger::from_snapshot(&restored.to_snapshot().expect("snapshot")).expect("restore");
        assert_eq!(again.remembered_ids(0).collect::<Vec<_>>(), ids);
    }

    #[test]
    fn a_cut_id_section_is_an_error_not_a_silent_loss() {
        let mut ledger = Ledger::default();
        fold_all(&mut ledger, &history());
        let mut snapshot = ledger.to_snapshot().expect("snapshot");
        snapshot.truncate(snapshot.len() - 5);
        assert!(matches!(
            Ledger::from_snapshot(&snapshot),
            Err(SnapshotError::Ids(_))
        ));
    }

    #[test]
    fn the_remembered_id_cap_can_be_set() {
        let mut ledger = Ledger::default();
        for i in 0..100 {
            ledger.remember_id(KEY, &format!("d{i}"), DAY_MS);
        }
        ledger.set_max_remembered(30);
        let ids: Vec<u128> = ledger.remembered_ids(0).map(|r| r.digest()).collect();
        assert_eq!(ids.len(), 30);
        assert_eq!(ids[0], crate::receiver::dedup::digest(KEY, "d70"));
        ledger.remember_id(KEY, "d100", DAY_MS);
        assert_eq!(ledger.remembered_ids(0).count(), 30);
    }

    /// Issue 18, finding 13: replay learns the ids of already-applied entries after
    /// folding the newer unapplied ones; a cap that bites must still keep the newest.
    #[test]
    fn replayed_ids_read_oldest_first_so_a_biting_cap_keeps_the_newest() {
        let mut checkpointed = Ledger::default();
        for i in 0..10 {
            checkpointed.remember_id(KEY, &format!("snap-{i}"), DAY_MS);
        }
        let mut ledger =
            Ledger::from_snapshot(&checkpointed.to_snapshot().expect("snapshot")).expect("restore");
        ledger.set_max_remembered(15);
        // What runtime::replay_recovered does: fold the entries after the applied mark
        // (the newest), then re-learn the ids of the applied ones (older).
        for i in 0..10 {
            ledger.fold(
                100 + i,
                &accepted(&format!("new-{i}"), vec![], 5_000),
                DAY_MS,
            );
        }
        for i in 0..10 {
            ledger.remember_id(KEY, &format!("applied-{i}"), DAY_MS);
        }
        let digest = |id: &str| crate::receiver::dedup::digest(KEY, id);
        let ids: Vec<u128> = ledger.remembered_ids(0).map(|r| r.digest()).collect();
        let want: Vec<u128> = (5..10)
            .map(|i| digest(&format!("applied-{i}")))
            .chain((0..10).map(|i| digest(&format!("new-{i}"))))
            .collect();
        assert_eq!(ids, want);
        // The order survives a checkpoint, and later folds still come last.
        let mut restored =
            Ledger::from_snapshot(&ledger.to_snapshot().expect("snapshot")).expect("restore");
        restored.fold(200, &accepted("later", vec![], 6_000), DAY_MS);
        let ids: Vec<u128> = restored.remembered_ids(0).map(|r| r.digest()).collect();
        assert_eq!(ids[..15], want[..]);
        assert_eq!(ids[15], digest("later"));
        restored.prune(DAY_MS);
        assert_eq!(restored.remembered_ids(0).count(), 0);
    }

    #[test]
    fn remembered_ids_are_bounded_oldest_first() {
        let mut ledger = Ledger::default();
        for i in 0..(MAX_REMEMBERED_IDS + 10) {
            ledger.remember_id(KEY, &format!("d{i}"), DAY_MS);
        }
        let ids: Vec<u128> = ledger.remembered_ids(0).map(|r| r.digest()).collect();
        assert_eq!(ids.len(), MAX_REMEMBERED_IDS);
        assert_eq!(ids[0], crate::receiver::dedup::digest(KEY, "d10"));
        ledger.prune(DAY_MS);
        assert_eq!(ledger.remembered_ids(0).count(), 0);
    }
}
