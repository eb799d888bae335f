//! Fault injection and request accounting, so tests can make the API server misbehave the
//! ways a real one does (hang, 5xx, 429 with Retry-After, compaction) and assert how many
//! requests of which kind our components made.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// One served request, as counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`;
    /// discovery and other non-resource requests count as `get` with an empty resource.
    pub verb: String,
    /// Plural resource name (`webhookintegrations`), empty for non-resource paths.
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// `kubernetes-admin` or `system:serviceaccount:<ns>:<name>`.
    pub caller: String,
    /// For patches: `apply`, `merge`, `strategic` or `json`.
    pub patch_type: Option<String>,
    /// The HTTP status answered (`None` while the request is still being served; 200 for
    /// watches once their stream started).
    pub code: Option<u16>,
}

/// Selects requests by any combination of fields; unset fields match everything.
#[derive(Clone, Debug, Default)]
pub struct RequestFilter {
    verb: Option<String>,
    resource: Option<String>,
    subresource: Option<Option<String>>,
    namespace: Option<String>,
    name: Option<String>,
    caller: Option<String>,
    patch_type: Option<String>,
    code: Option<u16>,
}

impl RequestFilter {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn verb(mut self, verb: &str) -> Self {
        self.verb = Some(verb.to_string());
        self
    }
    pub fn resource(mut self, resource: &str) -> Self {
        self.resource = Some(resource.to_string());
        self
    }
    /// Only requests to this subresource (`status`).
    pub fn subresource(mut self, sub: &str) -> Self {
        self.subresource = Some(Some(sub.to_string()));
        self
    }
    /// Only requests to the main resource, no subresource.
    pub fn main_resource(mut self) -> Self {
        self.subresource = Some(None);
        self
    }
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.to_string());
        self
    }
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }
    /// `kubernetes-admin` or `system:serviceaccount:<ns>:<name>`.
    pub fn caller(mut self, caller: &str) -> Self {
        self.caller = Some(caller.to_string());
        self
    }
    pub fn patch_type(mut self, t: &str) -> Self {
        self.patch_type = Some(t.to_string());
        self
    }
    /// Only requests answered with this HTTP status (e.g. 403).
    pub fn code(mut self, code: u16) -> Self {
        self.code = Some(code);
        self
    }

    pub fn matches(&self, r: &RequestRecord) -> bool {
        self.verb.as_ref().is_none_or(|v| *v == r.verb)
            && self.resource.as_ref().is_none_or(|v| *v == r.resource)
            && self
                .subresource
                .as_ref()
                .is_none_or(|v| *v == r.subresource)
            && self
                .namespace
                .as_ref()
                .is_none_or(|v| Some(v) == r.namespace.as_ref())
            && self
                .name
                .as_ref()
                .is_none_or(|v| Some(v) == r.name.as_ref())
            && self.caller.as_ref().is_none_or(|v| *v == r.caller)
            && self
                .patch_type
                .as_ref()
                .is_none_or(|v| Some(v) == r.patch_type.as_ref())
    }
}

/// Requests answered with an error instead of being served.
#[derive(Clone, Debug)]
pub struct Failure {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<u32>,
    pub(crate) remaining: Option<u32>,
    pub(crate) until: Option<Instant>,
    pub(crate) filter: RequestFilter,
}

impl Failure {
    /// Answer with `status` (500, 503, 429, …), forever until cleared or limited.
    pub fn status(status: u16) -> Self {
        Failure {
            status,
            retry_after: None,
            remaining: None,
            until: None,
            filter: RequestFilter::default(),
        }
    }
    /// Only the next `n` matching requests.
    pub fn times(mut self, n: u32) -> Self {
        self.remaining = Some(n);
        self
    }
    /// Only for this long from now.
    pub fn for_duration(mut self, d: Duration) -> Self {
        self.until = Some(Instant::now() + d);
        self
    }
    /// Adds `Retry-After: secs` (and `details.retryAfterSeconds`).
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }
    /// Only requests matching `filter`.
    pub fn matching(mut self, filter: RequestFilter) -> Self {
        self.filter = filter;
        self
    }
}

/// What the emulator does to requests right now.
pub struct Faults {
    /// `Some(filter)`: requests matching `filter` hang (and so do their watch streams).
    paused: watch::Sender<Option<RequestFilter>>,
    failures: Mutex<Vec<Failure>>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            paused: watch::channel(None).0,
            failures: Mutex::new(Vec::new()),
        }
    }
}

impl Faults {
    pub fn pause(&self) {
        self.paused.send_replace(Some(RequestFilter::new()));
    }
    pub fn pause_matching(&self, filter: RequestFilter) {
        self.paused.send_replace(Some(filter));
    }
    pub fn resume(&self) {
        self.paused.send_replace(None);
    }
    pub fn is_paused_for(&self, r: &RequestRecord) -> bool {
        self.paused.borrow().as_ref().is_some_and(|f| f.matches(r))
    }
    /// Waits while `r` is paused (requests and watch streams hang, like an unreachable server).
    pub async fn wait_unpaused_for(&self, r: &RequestRecord) {
        let mut rx = self.paused.subscribe();
        // An error means the sender is gone: the emulator is shutting down.
        let _ = rx
            .wait_for(|p| p.as_ref().is_none_or(|f| !f.matches(r)))
            .await;
    }
    pub fn add_failure(&self, f: Failure) {
        lock(&self.failures).push(f);
    }
    pub fn clear_failures(&self) {
        lock(&self.failures).clear();
    }
    /// The failure this request gets, if any (consuming one of a counted failure).
    pub fn take_failure(&self, r: &RequestRecord) -> Option<(u16, Option<u32>)> {
        let mut fs = lock(&self.failures);
        let now = Instant::now();
        fs.retain(|f| f.remaining != Some(0) && f.until.is_none_or(|u| u > now));
        let f = fs.iter_mut().find(|f| f.filter.matches(r))?;
        if let Some(n) = f.remaining.as_mut() {
            *n -= 1;
        }
        Some((f.status, f.retry_after))
    }
}

/// Every request served, for assertions.
#[derive(Default)]
pub struct Counters {
    inner: Mutex<Records>,
}

#[derive(Default)]
struct Records {
    list: Vec<RequestRecord>,
    /// Records dropped from the front so far, so indexes stay stable.
    offset: usize,
}

/// Requests kept for counting; older ones are dropped so a long manual session stays bounded.
const MAX_RECORDS: usize = 1_000_000;

impl Counters {
    /// Stores a request; returns its index for [`Counters::set_code`].
    pub fn record(&self, r: RequestRecord) -> usize {
        let mut recs = lock(&self.inner);
        if recs.list.len() >= MAX_RECORDS {
            recs.list.drain(..MAX_RECORDS / 2);
            recs.offset += MAX_RECORDS / 2;
        }
        recs.list.push(r);
        recs.offset + recs.list.len() - 1
    }
    /// Notes the HTTP status a recorded request was answered with.
    pub fn set_code(&self, index: usize, code: u16) {
        let mut recs = lock(&self.inner);
        let offset = recs.offset;
        if let Some(r) = index.checked_sub(offset).and_then(|i| recs.list.get_mut(i)) {
            r.code = Some(code);
        }
    }
    pub fn count(&self, f: &RequestFilter) -> usize {
        lock(&self.inner)
            .list
            .iter()
            .filter(|r| f.matches(r))
            .count()
    }
    pub fn records(&self) -> Vec<RequestRecord> {
        lock(&self.inner).list.clone()
    }
    pub fn reset(&self) {
        let mut recs = lock(&self.inner);
        recs.offset += recs.list.len();
        recs.list.clear();
    }
}

/// Locks, recovering from poisoning: a panicking test thread must not wedge the emulator.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
