//! The incident state machine: events and other replicas' views fold into one book.
//!
//! Rules (DESIGN.md, "Incidents"): incidents are keyed by the sender's id; a trigger opens
//! or updates, a recovery resolves; an older event never overwrites a newer one (event
//! time, then a deterministic tiebreak); a resolved incident re-opens on a newer trigger;
//! applying the same event twice changes nothing; several receiver replicas converge.
//!
//! # How convergence works
//!
//! Every incident is a small summary of all the events seen for its id:
//!
//! * the newest event (by [`Order`]) decides state, title, severity, link, `updatedAt`
//!   and `resolvedAt`;
//! * `openedAt` is the first trigger of the current episode, i.e. the earliest trigger
//!   after the last recovery before it, which the summary keeps as
//!   `previousResolvedAt`.
//!
//! [`IncidentBook::apply`] is the join of the book's summary with the one-event summary
//! of the new event, and [`IncidentBook::merge`] the join with summaries read back from
//! another replica's status. The join is commutative and idempotent, so replicas that
//! exchange their status end with the same incidents whatever the order of deliveries,
//! replays and merges. The newest-event fields are exactly what one replica seeing every
//! event would show; `openedAt` is too, except when one replica saw several triggers
//! of an episode across a recovery it did not see (it then keeps the best bound known).
//!
//! Display times are whole seconds, as Kubernetes `Time` writes them, so that a summary
//! survives the round trip through the status unchanged; ordering uses the full
//! millisecond event time in [`Order`].
//!
//! A recovery for an incident never seen open is remembered too (state resolved, no
//! `openedAt`): a late, older trigger for it must not open it.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{IncidentEvent, Severity};
use crate::crd::{IncidentSummary, IncidentsStatus};

/// Incidents one integration's book keeps by default (and so writes to its status, in
/// `recent` and `tracked` together): `spec.incidents.maxTracked`. Resolved incidents are
/// dropped first, oldest first.
pub const DEFAULT_CAPACITY: usize = 100;

/// Largest `spec.incidents.maxTracked`: every tracked incident is written to the status
/// (about 350 bytes each), and the object must stay well under etcd's 1.5 MiB and cheap
/// for every watcher to hold.
pub const MAX_CAPACITY: usize = 1000;

/// Open incidents dropped from tracking that the book still counts (by a 64-bit digest of
/// their id, 8 bytes each): past this many, `open` is only a lower bound until the book
/// is rebuilt (see [`IncidentBook::truncated`]).
pub const MAX_UNTRACKED: usize = 100_000;

/// Whether an incident is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IncidentState {
    Open,
    Resolved,
}

impl IncidentState {
    /// The name written on the status: `open` or `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentState::Open => "open",
            IncidentState::Resolved => "resolved",
        }
    }

    fn from_name(name: &str) -> Option<IncidentState> {
        match name {
            "open" => Some(IncidentState::Open),
            "resolved" => Some(IncidentState::Resolved),
            _ => None,
        }
    }
}

/// Total order of events for one incident: sender time first, then a tiebreak every
/// replica computes the same way (the delivery id, or
/// [`IncidentEvent::content_tiebreak`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Order {
    pub event_time_ms: i64,
    pub tiebreak: String,
}

impl Order {
    pub fn new(event_time_ms: i64, tiebreak: impl Into<String>) -> Order {
        Order {
            event_time_ms,
            tiebreak: tiebreak.into(),
        }
    }

    /// The form written to `status.incidents.*.order`: `<unix ms>:<tiebreak>`.
    pub fn encode(&self) -> String {
        format!("{}:{}", self.event_time_ms, self.tiebreak)
    }

    /// Reads [`Order::encode`]'s form; the tiebreak may itself contain `:`.
    pub fn parse(encoded: &str) -> Option<Order> {
        let (ms, tiebreak) = encoded.split_once(':')?;
        Some(Order {
            event_time_ms: ms.parse().ok()?,
            tiebreak: tiebreak.to_string(),
        })
    }
}

/// One incident as the book knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incident {
    pub id: String,
    pub title: String,
    pub severity: Severity,
    pub state: IncidentState,
    /// First trigger of the current episode (whole seconds); `None` for an incident only
    /// ever seen resolving.
    pub opened_at_ms: Option<i64>,
    /// When the newest event happened (whole seconds).
    pub updated_at_ms: i64,
    /// When it resolved (the newest recovery, whole seconds), while resolved.
    pub resolved_at_ms: Option<i64>,
    /// Last recovery before the episode that `opened_at_ms` starts (whole seconds).
    pub previous_resolved_at_ms: Option<i64>,
    pub link: Option<String>,
    /// The newest event's time, full precision.
    pub last_event_ms: i64,
    /// The newest event's ordering key.
    pub last_order: Order,
}

/// What applying one event did to its incident; the receiver turns the first four into
/// Kubernetes Events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// A trigger for an incident not open before (never seen, or only seen resolving).
    Opened,
    /// A newer trigger for an open incident.
    Updated,
    /// A newer recovery for an open incident.
    Resolved,
    /// A newer trigger for a resolved incident.
    Reopened,
    /// No lifecycle change: an older or duplicate event, a recovery for an unknown or
    /// already resolved incident. Bookkeeping may still advance (see
    /// [`IncidentBook::revision`]), e.g. to remember that recovery.
    Unchanged,
}

/// All incidents of one integration, bounded.
///
/// At most `capacity` incidents are kept whole. An open incident dropped to make room
/// is still counted: its id's digest goes to `untracked` until a later event for it
/// (a trigger tracks it again, a recovery resolves it), so `open` stays exact past the
/// cap — while the incident lists on the status no longer show every open incident,
/// which `truncated` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncidentBook {
    incidents: HashMap<String, Incident>,
    capacity: usize,
    revision: u64,
    /// Digests ([`id_digest`]) of open incidents dropped from `incidents`.
    untracked: BTreeSet<u64>,
    /// More open incidents were dropped than `untracked` can hold: `open` is a lower bound.
    untracked_overflow: bool,
}

/// A stable 64-bit digest of an incident id (FNV-1a): the same in every process and
/// version, since it is stored in journal checkpoints.
pub fn id_digest(id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl Default for IncidentBook {
    fn default() -> Self {
        IncidentBook::new(DEFAULT_CAPACITY)
    }
}

impl IncidentBook {
    /// A book keeping at most `capacity` incidents (at least 1).
    pub fn new(capacity: usize) -> IncidentBook {
        IncidentBook {
            incidents: HashMap::new(),
            capacity: capacity.clamp(1, MAX_CAPACITY),
            revision: 0,
            untracked: BTreeSet::new(),
            untracked_overflow: false,
        }
    }

    /// Incidents kept whole at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Changes how many incidents are kept whole (`spec.incidents.maxTracked` changed);
    /// a smaller cap drops incidents at once (open ones stay counted).
    pub fn set_capacity(&mut self, capacity: usize) {
        let capacity = capacity.clamp(1, MAX_CAPACITY);
        if capacity != self.capacity {
            self.capacity = capacity;
            self.evict();
        }
    }

    /// Folds one event in. `tiebreak` orders events with the same time; pass the same
    /// value whenever the same event is applied again (replay), e.g. the delivery id.
    ///
    /// An event for an open incident that was dropped from tracking is not news: a
    /// trigger tracks it again ([`Transition::Updated`]), a recovery resolves it
    /// ([`Transition::Resolved`]). Its earlier history is gone, so it then starts from
    /// this event, as an incident seen for the first time would.
    pub fn apply(&mut self, ev: &IncidentEvent, tiebreak: &str) -> Transition {
        let single = Incident::from_event(ev, tiebreak);
        let before = self.incidents.get(&ev.id);
        let after = match before {
            Some(known) => join(known, &single),
            None => single.rederived(&[], &[]),
        };
        let mut transition = classify(before, &after);
        if before.is_none() && self.untracked.remove(&id_digest(&ev.id)) {
            self.revision += 1;
            transition = match after.state {
                IncidentState::Open => Transition::Updated,
                IncidentState::Resolved => Transition::Resolved,
            };
        }
        self.store(after);
        self.evict();
        transition
    }

    /// Folds in another replica's view as read from the resource status. Idempotent and
    /// commutative with [`IncidentBook::apply`]: replicas that merge each other's status
    /// end with the same incidents. Entries that cannot be read (unknown state, no time)
    /// are skipped. The capacity is enforced once, after everything is folded in, so the
    /// result does not depend on the order of the entries.
    pub fn merge(&mut self, other: &IncidentsStatus) {
        for summary in other.recent.iter().chain(&other.tracked) {
            let Some(theirs) = Incident::from_summary(summary) else {
                continue;
            };
            let merged = match self.incidents.get(&theirs.id) {
                Some(ours) => join(ours, &theirs),
                None => {
                    // Tracked again (another replica still lists it): counted there now.
                    if self.untracked.remove(&id_digest(&theirs.id)) {
                        self.revision += 1;
                    }
                    theirs
                }
            };
            self.store(merged);
        }
        self.evict();
    }

    /// The status to write: the open count over every tracked incident, the `keep_recent`
    /// most recently updated incidents in `recent`, the rest in `tracked`, newest first.
    pub fn to_status(&self, keep_recent: usize) -> IncidentsStatus {
        let mut all: Vec<&Incident> = self.incidents.values().collect();
        all.sort_by(|a, b| newest_first(a, b));
        let mut summaries = all.into_iter().map(Incident::to_summary);
        let recent = summaries.by_ref().take(keep_recent).collect();
        let tracked = summaries.collect();
        let open = self.open_count();
        let truncated = self.truncated();
        IncidentsStatus {
            open: i64::try_from(open).unwrap_or(i64::MAX),
            truncated,
            open_display: Some(open_display(open, truncated)),
            recent,
            tracked,
        }
    }

    /// Incidents currently open: the tracked ones plus the open ones dropped from
    /// tracking. Exact unless more than [`MAX_UNTRACKED`] were dropped (then a lower
    /// bound, and [`IncidentBook::truncated`]).
    pub fn open_count(&self) -> usize {
        self.tracked_open_count() + self.untracked.len()
    }

    /// Open incidents kept whole (listed on the status).
    pub fn tracked_open_count(&self) -> usize {
        self.incidents
            .values()
            .filter(|i| i.state == IncidentState::Open)
            .count()
    }

    /// Open incidents dropped from tracking but still counted.
    pub fn untracked_open(&self) -> usize {
        self.untracked.len()
    }

    /// True when more incidents are open than the book keeps whole: the status lists do
    /// not show every open incident, and `open` is what the `N+` display marks as such.
    pub fn truncated(&self) -> bool {
        !self.untracked.is_empty() || self.untracked_overflow
    }

    /// The digests of open incidents dropped from tracking, and whether more were
    /// dropped than counted (for checkpoints; [`IncidentBook::restore_untracked`]).
    pub fn untracked(&self) -> (impl Iterator<Item = u64> + '_, bool) {
        (self.untracked.iter().copied(), self.untracked_overflow)
    }

    /// Restores what [`IncidentBook::untracked`] returned. Ids the book tracks are
    /// skipped (they are counted as tracked).
    pub fn restore_untracked(&mut self, digests: impl IntoIterator<Item = u64>, overflow: bool) {
        let tracked: std::collections::HashSet<u64> =
            self.incidents.keys().map(|id| id_digest(id)).collect();
        for digest in digests {
            if !tracked.contains(&digest) {
                self.note_untracked(digest);
            }
        }
        self.untracked_overflow |= overflow;
    }

    fn note_untracked(&mut self, digest: u64) {
        if self.untracked.len() < MAX_UNTRACKED {
            self.untracked.insert(digest);
        } else {
            self.untracked_overflow = true;
        }
    }

    /// One incident by id.
    pub fn get(&self, id: &str) -> Option<&Incident> {
        self.incidents.get(id)
    }

    /// Incidents tracked.
    pub fn len(&self) -> usize {
        self.incidents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.incidents.is_empty()
    }

    /// Grows by one whenever anything written by [`IncidentBook::to_status`] changes, so a
    /// status writer knows whether it has something new to write (even after an
    /// [`Transition::Unchanged`] that advanced bookkeeping).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    fn store(&mut self, incident: Incident) {
        if self.incidents.get(&incident.id) != Some(&incident) {
            self.revision += 1;
            self.incidents.insert(incident.id.clone(), incident);
        }
    }

    /// Drops the oldest resolved incidents first, then (only when every kept incident is
    /// open) the oldest open ones. Deterministic, so replicas holding the same incidents
    /// drop the same ones.
    fn evict(&mut self) {
        let excess = self.incidents.len().saturating_sub(self.capacity);
        if excess == 0 {
            return;
        }
        let mut by_priority: Vec<&Incident> = self.incidents.values().collect();
        by_priority.sort_by(|a, b| {
            (a.state == IncidentState::Open)
                .cmp(&(b.state == IncidentState::Open))
                .then_with(|| a.last_order.cmp(&b.last_order))
                .then_with(|| a.id.cmp(&b.id))
        });
        let victims: Vec<String> = by_priority[..excess].iter().map(|i| i.id.clone()).collect();
        for id in victims {
            if let Some(gone) = self.incidents.remove(&id)
                && gone.state == IncidentState::Open
            {
                // Still open: counted, only no longer listed.
                self.note_untracked(id_digest(&id));
            }
        }
        self.revision += 1;
    }
}

/// The Open column's text: the count, with `+` when it is a lower bound or the lists do
/// not show every open incident (e.g. `100+`).
pub fn open_display(open: usize, truncated: bool) -> String {
    if truncated {
        format!("{open}+")
    } else {
        open.to_string()
    }
}

fn newest_first(a: &Incident, b: &Incident) -> Ordering {
    b.last_order
        .cmp(&a.last_order)
        .then_with(|| a.id.cmp(&b.id))
}

fn classify(before: Option<&Incident>, after: &Incident) -> Transition {
    let Some(before) = before else {
        return match after.state {
            IncidentState::Open => Transition::Opened,
            IncidentState::Resolved => Transition::Unchanged,
        };
    };
    if before.last_order == after.last_order {
        return Transition::Unchanged;
    }
    match (before.state, after.state) {
        (IncidentState::Open, IncidentState::Open) => Transition::Updated,
        (IncidentState::Open, IncidentState::Resolved) => Transition::Resolved,
        (IncidentState::Resolved, IncidentState::Open) if before.opened_at_ms.is_none() => {
            Transition::Opened
        }
        (IncidentState::Resolved, IncidentState::Open) => Transition::Reopened,
        (IncidentState::Resolved, IncidentState::Resolved) => Transition::Unchanged,
    }
}

/// The winner among two versions of an incident: newest event first; the remaining keys
/// only make the choice deterministic should two versions ever share an order.
fn rank(i: &Incident) -> (&Order, IncidentState, &str, Severity, Option<&str>) {
    (
        &i.last_order,
        i.state,
        &i.title,
        i.severity,
        i.link.as_deref(),
    )
}

fn join(a: &Incident, b: &Incident) -> Incident {
    let winner = if rank(a) >= rank(b) { a } else { b };
    let mut resolves = Vec::with_capacity(4);
    let mut triggers = Vec::with_capacity(4);
    a.points(&mut resolves, &mut triggers);
    b.points(&mut resolves, &mut triggers);
    winner.rederived(&resolves, &triggers)
}

fn whole_seconds(ms: i64) -> i64 {
    ms.div_euclid(1000) * 1000
}

impl Incident {
    fn from_event(ev: &IncidentEvent, tiebreak: &str) -> Incident {
        let state = if ev.resolve {
            IncidentState::Resolved
        } else {
            IncidentState::Open
        };
        Incident {
            id: ev.id.clone(),
            title: ev.title.clone(),
            severity: ev.severity,
            state,
            opened_at_ms: None,
            updated_at_ms: whole_seconds(ev.event_time_ms),
            resolved_at_ms: None,
            previous_resolved_at_ms: None,
            link: ev.link.clone(),
            last_event_ms: ev.event_time_ms,
            last_order: Order::new(ev.event_time_ms, tiebreak),
        }
    }

    /// The recoveries and triggers this summary still knows of (whole seconds).
    fn points(&self, resolves: &mut Vec<i64>, triggers: &mut Vec<i64>) {
        resolves.extend(self.previous_resolved_at_ms);
        triggers.extend(self.opened_at_ms);
        match self.state {
            IncidentState::Open => triggers.push(self.updated_at_ms),
            IncidentState::Resolved => resolves.push(self.updated_at_ms),
        }
    }

    /// This version's newest event, with the episode fields recomputed from the known
    /// points (its own included).
    fn rederived(&self, resolves: &[i64], triggers: &[i64]) -> Incident {
        let mut resolves = resolves.to_vec();
        let mut triggers = triggers.to_vec();
        self.points(&mut resolves, &mut triggers);
        let last = self.updated_at_ms;
        let (opened, previous) = match self.state {
            IncidentState::Open => {
                let previous = resolves.iter().copied().filter(|&r| r <= last).max();
                let opened = triggers
                    .iter()
                    .copied()
                    .filter(|&t| t <= last && previous.is_none_or(|p| t > p))
                    .min()
                    .unwrap_or(last);
                (Some(opened), previous)
            }
            IncidentState::Resolved => {
                match triggers.iter().copied().filter(|&t| t <= last).max() {
                    None => (None, None),
                    Some(newest_trigger) => {
                        let previous = resolves
                            .iter()
                            .copied()
                            .filter(|&r| r < newest_trigger)
                            .max();
                        let opened = triggers
                            .iter()
                            .copied()
                            .filter(|&t| t <= newest_trigger && previous.is_none_or(|p| t > p))
                            .min();
                        (opened, previous)
                    }
                }
            }
        };
        Incident {
            opened_at_ms: opened,
            previous_resolved_at_ms: previous,
            resolved_at_ms: (self.state == IncidentState::Resolved).then_some(last),
            ..self.clone()
        }
    }

    /// The status entry for this incident.
    pub fn to_summary(&self) -> IncidentSummary {
        IncidentSummary {
            id: self.id.clone(),
            title: self.title.clone(),
            severity: self.severity.as_str().to_string(),
            state: self.state.as_str().to_string(),
            opened_at: self.opened_at_ms.and_then(to_time),
            updated_at: to_time(self.updated_at_ms),
            resolved_at: self.resolved_at_ms.and_then(to_time),
            link: self.link.clone(),
            last_event_time: to_time(self.last_event_ms),
            previous_resolved_at: self.previous_resolved_at_ms.and_then(to_time),
            order: Some(self.last_order.encode()),
        }
    }

    /// Reads a status entry back. Entries written without an order (by hand, or by an
    /// older receiver) are ordered by their last event or update time with an empty
    /// tiebreak, so any event of that second that carries a tiebreak wins over them.
    pub fn from_summary(summary: &IncidentSummary) -> Option<Incident> {
        let state = IncidentState::from_name(&summary.state)?;
        let order = summary
            .order
            .as_deref()
            .and_then(Order::parse)
            .or_else(|| {
                let time = summary
                    .last_event_time
                    .as_ref()
                    .or(summary.updated_at.as_ref())?;
                Some(Order::new(from_time(time), ""))
            })?;
        let severity = Severity::from_name(&summary.severity)
            .or_else(|| Severity::normalise(&summary.severity))
            .unwrap_or(Severity::Info);
        let incident = Incident {
            id: summary.id.clone(),
            title: summary.title.clone(),
            severity,
            state,
            opened_at_ms: summary
                .opened_at
                .as_ref()
                .map(|t| whole_seconds(from_time(t))),
            updated_at_ms: whole_seconds(order.event_time_ms),
            resolved_at_ms: None,
            previous_resolved_at_ms: summary
                .previous_resolved_at
                .as_ref()
                .map(|t| whole_seconds(from_time(t))),
            link: summary.link.clone(),
            last_event_ms: order.event_time_ms,
            last_order: order,
        };
        Some(incident.rederived(&[], &[]))
    }
}

fn to_time(ms: i64) -> Option<Time> {
    Timestamp::from_millisecond(ms).ok().map(Time)
}

fn from_time(time: &Time) -> i64 {
    time.0.as_millisecond()
}

#[cfg(test)]
mod tests;
