//! Which Secrets each integration's reconcile reads, and which reconciles need not run
//! again.
//!
//! A reconcile reads the integration's route Secret and its generated or referenced Secrets
//! from the API server, never from a watch cache: a stale cache could make it believe a
//! route or a generated Secret is absent and mint a new path or secret (docs/bench.md). But
//! most reconciles are triggered by nothing new at all: the controller's own writes coming
//! back as watch events, a relist, the periodic resync. [`SecretIndex`] lets those cost no
//! request, without trusting any cache for content:
//!
//! * Before a reconcile reads anything, it registers the Secrets it is about to read
//!   ([`SecretIndex::register`]). The Secret watch maps every change of a registered Secret to
//!   the integrations that read it ([`SecretIndex::secret_changed`]); this replaces a scan of
//!   every cached integration per Secret event, which cost O(integrations) for each of a
//!   cluster's Secrets.
//! * A reconcile that ends with nothing time-dependent pending records what it saw: the
//!   integration's resourceVersion and each Secret's resourceVersion (or its absence), taking
//!   the versions its own writes returned ([`SecretIndex::settle`]).
//! * A later reconcile of the same integration at the same resourceVersion, while no watch
//!   event has shown any of those Secrets at another version (or present when it was
//!   absent), would read exactly what the settled one read and plan the same: it returns at
//!   once ([`SecretIndex::is_settled`]). An event showing a different version drops the memo
//!   *before* the reconcile it triggers is scheduled, so that reconcile reads afresh.
//! * A relist of the Secret watch (after 410 Gone) reports no deletions: every memo is
//!   unconfirmed at its start, confirmed Secret by Secret as the list shows the same
//!   versions, and at its end the Secrets the list did not show are treated as deleted
//!   ([`SecretIndex::relist_started`], [`SecretIndex::relist_done`]).
//!
//! The memo never makes the controller act: it only skips a reconcile that would have found
//! nothing to do. Anything that changes shows up as a watch event first.

use std::collections::{HashMap, HashSet};

use kube::runtime::reflector::ObjectRef;

use crate::crd::WebhookIntegration;

/// A Secret: (namespace, name).
pub type SecretKey = (String, String);

/// What a settled reconcile saw of one Secret it registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The API server said it does not exist.
    Absent,
    /// Read or written at this resourceVersion.
    At(String),
    /// Registered but not read (its content did not matter to the plan).
    Unread,
}

#[derive(Clone, Debug)]
struct Settled {
    uid: String,
    integration_version: String,
    secrets: Vec<(SecretKey, Seen)>,
}

/// `integration` without the uid and resourceVersion `ObjectRef::from_obj` copies into it
/// (not part of its identity: two more strings for each of 10,000 kept keys).
pub fn bare(integration: &ObjectRef<WebhookIntegration>) -> ObjectRef<WebhookIntegration> {
    let r = ObjectRef::new(&integration.name);
    match &integration.namespace {
        Some(ns) => r.within(ns),
        None => r,
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct SecretIndex {
    /// Usually one reader a Secret (a Vec of capacity one, not a set: a set's smallest
    /// table is four entries, and at 40,000 registered Secrets that was ~18 MiB).
    readers: HashMap<SecretKey, Vec<ObjectRef<WebhookIntegration>>>,
    reads: HashMap<ObjectRef<WebhookIntegration>, Vec<SecretKey>>,
    settled: HashMap<ObjectRef<WebhookIntegration>, Settled>,
    /// During a relist: the Secrets settled reconciles saw present and the list has not
    /// shown yet.
    unconfirmed: Option<HashSet<SecretKey>>,
}

impl SecretIndex {
    /// `integration` reads `secrets` (replacing what it read before). Call before reading
    /// them, so that a change made while they are read triggers another reconcile.
    pub fn register(
        &mut self,
        integration: &ObjectRef<WebhookIntegration>,
        secrets: Vec<SecretKey>,
    ) {
        if self.reads.get(integration) == Some(&secrets) {
            return;
        }
        self.unregister(integration);
        let reader = bare(integration);
        for (i, key) in secrets.iter().enumerate() {
            // It was unregistered above; a key listed twice is pushed once.
            if secrets[..i].contains(key) {
                continue;
            }
            self.readers
                .entry(key.clone())
                .or_insert_with(|| Vec::with_capacity(1))
                .push(reader.clone());
        }
        self.reads.insert(reader, secrets);
    }

    fn unregister(&mut self, integration: &ObjectRef<WebhookIntegration>) {
        for key in self.reads.remove(integration).unwrap_or_default() {
            if let Some(readers) = self.readers.get_mut(&key) {
                readers.retain(|r| r != integration);
                if readers.is_empty() {
                    self.readers.remove(&key);
                }
            }
        }
    }

    /// Forgets an integration that is gone.
    pub fn remove(&mut self, integration: &ObjectRef<WebhookIntegration>) {
        self.unregister(integration);
        self.settled.remove(integration);
    }

    /// A watch event showed Secret `key` at `version` (`None`: deleted). Drops the memos
    /// it contradicts; returns the integrations that read it, to be reconciled.
    pub fn secret_changed(
        &mut self,
        key: &SecretKey,
        version: Option<&str>,
    ) -> Vec<ObjectRef<WebhookIntegration>> {
        if let (Some(unconfirmed), Some(_)) = (self.unconfirmed.as_mut(), version) {
            unconfirmed.remove(key);
        }
        let Some(readers) = self.readers.get(key) else {
            return Vec::new();
        };
        for integration in readers {
            let contradicted = self.settled.get(integration).is_some_and(|s| {
                s.secrets.iter().any(|(k, seen)| {
                    k == key
                        && match seen {
                            Seen::Absent => version.is_some(),
                            Seen::At(v) => version != Some(v.as_str()),
                            Seen::Unread => false,
                        }
                })
            });
            if contradicted {
                self.settled.remove(integration);
            }
        }
        readers.to_vec()
    }

    /// The Secret watch starts a relist: until [`SecretIndex::relist_done`], the Secrets
    /// settled reconciles saw present must show up in it.
    pub fn relist_started(&mut self) {
        let present = self
            .settled
            .values()
            .flat_map(|s| &s.secrets)
            .filter(|(_, seen)| matches!(seen, Seen::At(_)))
            .map(|(key, _)| key.clone())
            .collect();
        self.unconfirmed = Some(present);
    }

    /// The relist is complete: the Secrets it did not show were deleted meanwhile. Returns
    /// them; the caller reports each as a deletion ([`SecretIndex::secret_changed`] with
    /// `None`), which drops the memos and triggers their readers.
    pub fn relist_done(&mut self) -> Vec<SecretKey> {
        self.unconfirmed
            .take()
            .map(|u| u.into_iter().collect())
            .unwrap_or_default()
    }

    /// Whether a reconcile of `integration` at this uid and resourceVersion would read
    /// exactly what a settled one read.
    pub fn is_settled(&self, integration: &WebhookIntegration) -> bool {
        let key = ObjectRef::from_obj(integration);
        self.settled.get(&key).is_some_and(|s| {
            integration.metadata.uid.as_deref() == Some(s.uid.as_str())
                && integration.metadata.resource_version.as_deref()
                    == Some(s.integration_version.as_str())
        })
    }

    /// Records a reconcile that left nothing to do: the integration as it now stands
    /// (`integration_version`: after the controller's own status write, if any) and what it
    /// saw of each Secret it registered.
    pub fn settle(
        &mut self,
        integration: &WebhookIntegration,
        integration_version: String,
        secrets: Vec<(SecretKey, Seen)>,
    ) {
        self.settled.insert(
            bare(&ObjectRef::from_obj(integration)),
            Settled {
                uid: integration.metadata.uid.clone().unwrap_or_default(),
                integration_version,
                secrets,
            },
        );
    }

    /// Drops the memo of one integration (its reconcile failed, or must run again).
    pub fn unsettle(&mut self, integration: &ObjectRef<WebhookIntegration>) {
        self.settled.remove(integration);
    }

    /// How many integrations are registered and how many settled (tests, metrics).
    pub fn sizes(&self) -> (usize, usize) {
        (self.reads.len(), self.settled.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wi(name: &str, version: &str) -> WebhookIntegration {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "hookwarden.dev/v1alpha1", "kind": "WebhookIntegration",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "resourceVersion": version},
            "spec": {"provider": "github"},
        }))
        .expect("integration")
    }

    fn key(ns: &str, name: &str) -> SecretKey {
        (ns.to_string(), name.to_string())
    }

    #[test]
    fn readers_are_kept_once_each_and_dropped_with_their_last_reader() {
        let mut index = SecretIndex::default();
        let a = ObjectRef::from_obj(&wi("a", "10"));
        let b = ObjectRef::from_obj(&wi("b", "10"));
        let shared = key("ns", "shared");
        index.register(
            &a,
            vec![shared.clone(), shared.clone(), key("ns", "a-webhook")],
        );
        index.register(&b, vec![shared.clone()]);
        assert_eq!(
            index.secret_changed(&shared, Some("1")),
            vec![a.clone(), b.clone()]
        );
        // Stored without the uid and resourceVersion `from_obj` carries.
        assert!(index.readers[&shared].iter().all(|r| r.extra.uid.is_none()));
        index.register(&a, vec![key("ns", "a-webhook")]);
        assert_eq!(index.secret_changed(&shared, Some("2")), vec![b.clone()]);
        index.remove(&b);
        assert!(index.secret_changed(&shared, Some("3")).is_empty());
        assert!(!index.readers.contains_key(&shared));
    }

    #[test]
    fn a_settled_reconcile_holds_until_a_secret_shows_another_version() {
        let mut index = SecretIndex::default();
        let a = wi("a", "10");
        let r = ObjectRef::from_obj(&a);
        index.register(&r, vec![key("hw", "route-a"), key("ns", "a-webhook")]);
        assert!(!index.is_settled(&a));
        index.settle(
            &a,
            "12".into(),
            vec![
                (key("hw", "route-a"), Seen::At("11".into())),
                (key("ns", "a-webhook"), Seen::Absent),
            ],
        );
        // The watch brings the status write back: the same copy as settled.
        assert!(!index.is_settled(&a));
        let a12 = wi("a", "12");
        assert!(index.is_settled(&a12));
        // The controller's own route write coming back changes nothing.
        assert_eq!(
            index.secret_changed(&key("hw", "route-a"), Some("11")),
            vec![r.clone()]
        );
        assert!(index.is_settled(&a12));
        // Unrelated Secrets map to nobody.
        assert!(
            index
                .secret_changed(&key("ns", "other"), Some("99"))
                .is_empty()
        );
        assert!(index.is_settled(&a12));
        // A Secret that was absent appears: read again.
        assert_eq!(
            index.secret_changed(&key("ns", "a-webhook"), Some("13")),
            vec![r.clone()]
        );
        assert!(!index.is_settled(&a12));
    }

    #[test]
    fn a_changed_or_deleted_secret_drops_the_memo() {
        let mut index = SecretIndex::default();
        let a = wi("a", "10");
        let r = ObjectRef::from_obj(&a);
        index.register(&r, vec![key("hw", "route-a")]);
        index.settle(
            &a,
            "10".into(),
            vec![(key("hw", "route-a"), Seen::At("11".into()))],
        );
        index.secret_changed(&key("hw", "route-a"), Some("14"));
        assert!(!index.is_settled(&a));
        index.settle(
            &a,
            "10".into(),
            vec![(key("hw", "route-a"), Seen::At("14".into()))],
        );
        index.secret_changed(&key("hw", "route-a"), None);
        assert!(!index.is_settled(&a));
    }

    #[test]
    fn a_relist_that_misses_a_secret_reports_it_deleted() {
        let mut index = SecretIndex::default();
        let (a, b) = (wi("a", "10"), wi("b", "10"));
        index.register(&ObjectRef::from_obj(&a), vec![key("hw", "route-a")]);
        index.register(&ObjectRef::from_obj(&b), vec![key("hw", "route-b")]);
        index.settle(
            &a,
            "10".into(),
            vec![(key("hw", "route-a"), Seen::At("11".into()))],
        );
        index.settle(
            &b,
            "10".into(),
            vec![(key("hw", "route-b"), Seen::At("12".into()))],
        );
        index.relist_started();
        index.secret_changed(&key("hw", "route-a"), Some("11"));
        let missing = index.relist_done();
        assert_eq!(missing, vec![key("hw", "route-b")]);
        for k in &missing {
            index.secret_changed(k, None);
        }
        assert!(index.is_settled(&a));
        assert!(!index.is_settled(&b));
    }

    #[test]
    fn a_new_uid_or_a_removed_integration_is_not_settled() {
        let mut index = SecretIndex::default();
        let a = wi("a", "10");
        let r = ObjectRef::from_obj(&a);
        index.register(&r, vec![key("hw", "route-a")]);
        index.settle(&a, "10".into(), vec![]);
        let mut recreated = wi("a", "10");
        recreated.metadata.uid = Some("other".into());
        assert!(!index.is_settled(&recreated));
        index.remove(&r);
        assert!(!index.is_settled(&a));
        assert!(
            index
                .secret_changed(&key("hw", "route-a"), Some("1"))
                .is_empty()
        );
        assert_eq!(index.sizes(), (0, 0));
    }
}
