//! Object storage with one global, increasing `resourceVersion`, a bounded event history for
//! watches (older versions answer 410 Gone, as after an etcd compaction) and a broadcast of
//! every change to open watch streams.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

/// Storage key of the broadcast that tells open watches to end with 410.
pub const EXPIRE_WATCHES: &str = "\u{0}expire-watches";

/// How many change events are kept for watches that resume from a `resourceVersion`.
pub const HISTORY_LIMIT: usize = 20_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One stored change, as watch streams see it.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub storage_key: String,
    pub type_: EventType,
    pub object: Arc<Value>,
    /// The object before the change (for selector transitions), when there was one.
    pub old: Option<Arc<Value>>,
}

/// Stored objects are shared with the change history and with readers (lists copy
/// pointers under the lock, not objects), and are never mutated in place: a write stores a
/// new value.
pub type Objects = BTreeMap<(String, String), Arc<Value>>;

/// What the garbage collector has to look at since its last pass (`api::collect_garbage`).
/// Objects only become garbage when an owner goes away, an object with owners is written,
/// or a deletion starts (namespaces, Foreground/Orphan finalizers): a pass over every
/// object is due only after a removal or a deletion timestamp; objects written with owner
/// references are checked one by one. Without this the collector walked every stored
/// object every 100 ms under the global lock, which at 100,000 objects was most of the
/// emulator's time.
#[derive(Debug, Default)]
pub struct GcWork {
    /// Something was removed (an owner may be gone) or a deletion started: look at all.
    pub full: bool,
    /// `(storage key, namespace, name)` of objects written with owner references.
    pub candidates: Vec<(String, String, String)>,
}

/// All objects, keyed by storage key, then (namespace, name).
pub struct Store {
    rv: u64,
    objects: HashMap<String, Objects>,
    /// How many stored objects carry each `metadata.uid` (owner lookups of the collector).
    uids: HashMap<String, usize>,
    gc: GcWork,
    history: VecDeque<Arc<Change>>,
    /// Versions at or below this are gone from history: watching from them answers 410.
    compacted: u64,
    tx: broadcast::Sender<Arc<Change>>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(65_536);
        Store {
            rv: 1000,
            objects: HashMap::new(),
            uids: HashMap::new(),
            gc: GcWork::default(),
            history: VecDeque::new(),
            compacted: 1000,
            tx,
        }
    }

    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    pub fn compacted_rv(&self) -> u64 {
        self.compacted
    }

    /// Ends every open watch with 410 Gone (after forgetting history), as when the API
    /// server's watch cache drops too-slow or too-old watchers.
    pub fn expire_watches(&mut self) {
        self.compact();
        let change = Arc::new(Change {
            rv: self.rv,
            storage_key: EXPIRE_WATCHES.to_string(),
            type_: EventType::Modified,
            object: Arc::new(Value::Null),
            old: None,
        });
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(change);
    }

    /// Forgets all history: watches or exact lists from any version before now answer 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    pub fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    pub fn get(&self, key: &str, ns: &str, name: &str) -> Option<&Value> {
        self.get_shared(key, ns, name).map(|o| &**o)
    }

    /// The stored object itself (a pointer copy, to be read after the lock is released).
    pub fn get_shared(&self, key: &str, ns: &str, name: &str) -> Option<&Arc<Value>> {
        self.objects
            .get(key)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
    }

    pub fn list<'a>(&'a self, key: &str) -> impl Iterator<Item = &'a Value> + use<'a> {
        self.list_shared(key).map(|o| &**o)
    }

    /// The stored objects themselves, in (namespace, name) order.
    pub fn list_shared<'a>(&'a self, key: &str) -> impl Iterator<Item = &'a Arc<Value>> + use<'a> {
        self.objects.get(key).into_iter().flat_map(|m| m.values())
    }

    /// The stored objects of one namespace, in name order (a range of the map, not a scan).
    pub fn list_namespace<'a>(
        &'a self,
        key: &str,
        ns: &str,
    ) -> impl Iterator<Item = &'a Arc<Value>> + use<'a> {
        let from = (ns.to_string(), String::new());
        let ns = ns.to_string();
        self.objects
            .get(key)
            .into_iter()
            .flat_map(move |m| m.range(from.clone()..))
            .take_while(move |((n, _), _)| *n == ns)
            .map(|(_, o)| o)
    }

    /// Whether some stored object has this `metadata.uid`.
    pub fn has_uid(&self, uid: &str) -> bool {
        self.uids.contains_key(uid)
    }

    /// The collector's work since the last call (see [`GcWork`]).
    pub fn take_gc_work(&mut self) -> GcWork {
        std::mem::take(&mut self.gc)
    }

    fn count_uid(&mut self, object: &Value, delta: isize) {
        let Some(uid) = object.pointer("/metadata/uid").and_then(Value::as_str) else {
            return;
        };
        if delta > 0 {
            *self.uids.entry(uid.to_string()).or_default() += 1;
        } else if let Some(n) = self.uids.get_mut(uid) {
            *n -= 1;
            if *n == 0 {
                self.uids.remove(uid);
            }
        }
    }

    /// Stores `object` (whose `metadata.resourceVersion` the caller already set to `rv`).
    pub fn put(&mut self, key: &str, ns: &str, name: &str, object: Value, rv: u64) {
        let meta = &object["metadata"];
        if meta.get("deletionTimestamp").is_some() {
            self.gc.full = true;
        } else if meta["ownerReferences"]
            .as_array()
            .is_some_and(|o| !o.is_empty())
        {
            self.gc
                .candidates
                .push((key.to_string(), ns.to_string(), name.to_string()));
        }
        self.count_uid(&object, 1);
        let object = Arc::new(object);
        let old = self
            .objects
            .entry(key.to_string())
            .or_default()
            .insert((ns.to_string(), name.to_string()), object.clone());
        if let Some(old) = &old {
            self.count_uid(old, -1);
            if old["metadata"]["uid"] != object["metadata"]["uid"] {
                self.gc.full = true;
            }
        }
        let type_ = if old.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(Change {
            rv,
            storage_key: key.to_string(),
            type_,
            object,
            old,
        });
    }

    /// Removes an object; `final_object` is what the DELETED event carries (its RV = `rv`).
    pub fn remove(&mut self, key: &str, ns: &str, name: &str, final_object: Value, rv: u64) {
        let old = self
            .objects
            .get_mut(key)
            .and_then(|m| m.remove(&(ns.to_string(), name.to_string())));
        if let Some(old) = &old {
            self.count_uid(old, -1);
            self.gc.full = true;
        }
        if old.is_some() {
            self.record(Change {
                rv,
                storage_key: key.to_string(),
                type_: EventType::Deleted,
                object: Arc::new(final_object),
                old,
            });
        }
    }

    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(change.clone());
        while self.history.len() > HISTORY_LIMIT {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(change);
    }

    /// Changes after `rv` for `key`, or `None` when `rv` predates the retained history.
    pub fn since(&self, key: &str, rv: u64) -> Option<Vec<Arc<Change>>> {
        if rv < self.compacted {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|c| c.rv > rv && c.storage_key == key)
                .cloned()
                .collect(),
        )
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }
}

/// The current time as the API server writes it (`2024-01-02T03:04:05Z`).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| jiff::Timestamp::now().to_string())
}

/// A parsed label selector (`a=b,c!=d,e in (f,g),!h,i`).
#[derive(Clone, Debug, Default)]
pub struct LabelSelector {
    terms: Vec<LabelTerm>,
}

#[derive(Clone, Debug)]
enum LabelTerm {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let term = if let Some(rest) = part.strip_prefix('!') {
                LabelTerm::NotExists(rest.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                LabelTerm::NotEq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once("==") {
                LabelTerm::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once('=') {
                LabelTerm::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once(" notin ") {
                LabelTerm::NotIn(k.trim().to_string(), set_values(v)?)
            } else if let Some((k, v)) = part.split_once(" in ") {
                LabelTerm::In(k.trim().to_string(), set_values(v)?)
            } else if part.contains(' ') || part.contains('(') {
                return Err(format!("unable to parse requirement: {part}"));
            } else {
                LabelTerm::Exists(part.to_string())
            };
            terms.push(term);
        }
        Ok(LabelSelector { terms })
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.terms.iter().all(|t| match t {
            LabelTerm::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelTerm::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelTerm::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelTerm::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            LabelTerm::Exists(k) => get(k).is_some(),
            LabelTerm::NotExists(k) => get(k).is_none(),
        })
    }
}

fn set_values(v: &str) -> Result<Vec<String>, String> {
    let v = v.trim();
    let inner = v
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .ok_or_else(|| format!("unable to parse set: {v}"))?;
    Ok(inner.split(',').map(|s| s.trim().to_string()).collect())
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

/// A parsed field selector: `metadata.name`, `metadata.namespace` and a few well-known
/// fields (`type` of Secrets, `involvedObject.*` of Events, `spec.*`/`status.*` by path).
#[derive(Clone, Debug, Default)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            if let Some((k, v)) = part.split_once("!=") {
                terms.push((k.to_string(), false, v.to_string()));
            } else if let Some((k, v)) = part.split_once("==") {
                terms.push((k.to_string(), true, v.to_string()));
            } else if let Some((k, v)) = part.split_once('=') {
                terms.push((k.to_string(), true, v.to_string()));
            } else {
                return Err(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ));
            }
        }
        Ok(FieldSelector { terms })
    }

    /// Whether the selector has no terms (matches everything).
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The field labels the selector names.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.terms.iter().map(|(field, _, _)| field.as_str())
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|(field, eq, want)| {
            let pointer = format!("/{}", field.replace('.', "/"));
            let have = match object.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (have == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_follow_kubernetes_syntax() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let ok = |s: &str| LabelSelector::parse(s).map(|sel| sel.matches(&obj));
        assert_eq!(ok("app=web"), Ok(true));
        assert_eq!(ok("app=web,tier!=front"), Ok(false));
        assert_eq!(ok("tier in (back, front)"), Ok(true));
        assert_eq!(ok("tier notin (front)"), Ok(false));
        assert_eq!(ok("!missing,app"), Ok(true));
    }

    #[test]
    fn history_older_than_compaction_is_gone() {
        let mut store = Store::new();
        let rv = store.next_rv();
        store.put("secrets", "default", "a", json!({}), rv);
        assert_eq!(store.since("secrets", rv - 1).map(|v| v.len()), Some(1));
        store.compact();
        assert!(store.since("secrets", rv - 1).is_none());
        assert_eq!(store.since("secrets", rv).map(|v| v.len()), Some(0));
    }
}
