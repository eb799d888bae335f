//! The controller half of standalone mode: folder → routes and controller status, using
//! the same pure [`plan`] the in-cluster controller uses.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sha2::{Digest, Sha256};

use super::folder::{self, Folder};
use super::state::{Assignment, StateDir, StateError, new_uid};
use crate::crd::ProviderKind;
use crate::crd::{WebhookIntegration, WebhookIntegrationStatus};
use crate::domain::plan::{
    self, FORWARD_READY, GeneratedForwardLookup, GeneratedLookup, PlanInput, RefLookup,
    SECRET_RESOLVED, SecretData, SecretSource, lookup_key,
};
use crate::domain::secret::{generate_forward_signing_keys, generate_path, generate_secret};
use crate::route::Route;

/// One integration as the startup table shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub namespace: String,
    pub name: String,
    pub provider: ProviderKind,
    pub url: String,
    /// How to read the secret the sender must use.
    pub secret_hint: String,
    pub ready: bool,
    /// Why it is not ready (the Ready condition's message).
    pub problem: Option<String>,
}

/// The result of one folder sync.
#[derive(Clone, Debug, Default)]
pub struct Synced {
    /// The routes to serve, in `namespace/name` order.
    pub routes: Routes,
    pub rows: Vec<Row>,
    pub problems: Vec<String>,
}

/// The routes of a sync, still in the assignments they were planned into: handed to the
/// receiver one at a time ([`IntoIterator`]), each freed as it is compiled, never all
/// copied into one list (10,000 routes: a 10-16 MiB vector at the start-up peak).
#[derive(Clone, Debug, Default)]
pub struct Routes(BTreeMap<String, Assignment>);

impl Routes {
    /// The routes, by reference.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.0.values().filter_map(|a| a.route.as_ref())
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// The `i`th route.
    pub fn get(&self, i: usize) -> Option<&Route> {
        self.iter().nth(i)
    }
}

impl IntoIterator for Routes {
    type Item = Route;
    type IntoIter = std::iter::FilterMap<
        std::collections::btree_map::IntoValues<String, Assignment>,
        fn(Assignment) -> Option<Route>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_values().filter_map(|a| a.route)
    }
}

/// Why a sync failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Folder(#[from] folder::FolderError),
    #[error(transparent)]
    State(#[from] StateError),
}

fn spec_digest(integration: &WebhookIntegration) -> String {
    let json = serde_json::to_vec(&integration.spec).unwrap_or_default();
    hex::encode(Sha256::digest(json))
}

fn lookup_ref(folder: &Folder, namespace: &str, integration: &WebhookIntegration) -> RefLookup {
    let Some(reference) = &integration.spec.secret_ref else {
        return RefLookup::SecretMissing;
    };
    let Some(secret) = folder.secret(namespace, &reference.name) else {
        return RefLookup::SecretMissing;
    };
    lookup_key(secret, &reference.key)
}

/// Reads `dir`, plans every integration, stores paths/UIDs/generated secrets and the
/// controller part of each status under `state`, and returns the routes to serve.
pub fn sync(
    dir: &Path,
    state: &StateDir,
    base_url: &str,
    now: jiff::Timestamp,
) -> Result<Synced, SyncError> {
    let folder = folder::load(dir)?;
    let mut assignments = state.load_assignments()?;
    let mut synced = Synced {
        problems: folder.problems.clone(),
        ..Synced::default()
    };

    // One integration parsed at a time; its route moves into `assignments` (saved below)
    // and from there into `synced.routes`, never copied.
    folder.each_integration(|key, mut integration| -> Result<(), SyncError> {
        let namespace = integration
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| folder::DEFAULT_NAMESPACE.to_string());
        let name = integration.metadata.name.clone().unwrap_or_default();
        let digest = spec_digest(&integration);
        let assignment = assignments
            .entry(key.to_string())
            .or_insert_with(|| Assignment {
                uid: new_uid(),
                created_at: now,
                generation: 1,
                spec_digest: digest.clone(),
                route: None,
            });
        if assignment.spec_digest != digest {
            assignment.generation += 1;
            assignment.spec_digest = digest;
        }
        integration.metadata.uid = Some(assignment.uid.clone());
        integration.metadata.generation = Some(assignment.generation);
        integration.metadata.creation_timestamp = Some(Time(assignment.created_at));
        integration.metadata.managed_fields = None;
        integration.metadata.resource_version = None;
        // The last written status keeps condition transition times stable.
        integration.status = state.read_object(&namespace, &name).and_then(|o| o.status);

        let generated = integration.spec.secret_ref.is_none();
        let secret = if generated {
            SecretSource::Generated(match state.read_generated_secret(&namespace, &name) {
                Some(v) => GeneratedLookup::Owned(Some(v)),
                None => GeneratedLookup::Absent,
            })
        } else {
            SecretSource::Referenced(lookup_ref(&folder, &namespace, &integration))
        };
        // The folder's Secret documents are the cluster's Secrets; the state folder holds
        // what the cluster's generated `<name>-forward` Secret would.
        let forward_secrets = plan::forward_secret_names(&integration.spec)
            .into_iter()
            .map(|n| {
                let found = folder.secret(&namespace, &n).map(SecretData::from_secret);
                (n, found)
            })
            .collect();
        let generated_forward = match state.read_forward_keys(&namespace, &name) {
            Some(keys) => GeneratedForwardLookup::Owned(keys.into_iter().collect()),
            None => GeneratedForwardLookup::Absent,
        };
        let mut planned = plan::plan(PlanInput {
            integration: &integration,
            secret,
            previous_route: assignment.route.as_ref(),
            external_base_url: Some(base_url),
            now: now.as_second(),
            fresh_path: generate_path(),
            fresh_secret: generate_secret(integration.spec.provider),
            forward_secrets,
            generated_forward,
            fresh_forward_keys: generate_forward_signing_keys(&integration.spec),
        });
        if let Some(g) = &planned.generated_secret
            && state.read_generated_secret(&namespace, &name).as_deref() != Some(g.value.expose())
        {
            state.write_generated_secret(&namespace, &name, g.value.expose())?;
        }
        if let Some(g) = &planned.generated_forward_secret {
            state.write_forward_keys(&namespace, &name, &g.keys)?;
        }
        let secret_file = state.secret_path(&namespace, &name);
        let mut conditions = std::mem::take(&mut planned.status.conditions);
        if generated {
            // No Secret object exists in standalone mode: point at the file instead.
            for c in conditions
                .iter_mut()
                .filter(|c| c.type_ == SECRET_RESOLVED && c.status == "True")
            {
                c.message = format!("generated secret in {}", secret_file.display());
            }
        }
        // Likewise for generated forward keys: files, not the Secret `<name>-forward`.
        let forward_secret = format!(
            "Secret {namespace}/{} (key = target name)",
            plan::generated_forward_secret_name(&name)
        );
        let forward_dir = format!(
            "{} (one file per target)",
            state.forward_keys_dir(&namespace, &name).display()
        );
        for c in conditions.iter_mut().filter(|c| c.type_ == FORWARD_READY) {
            c.message = c.message.replace(&forward_secret, &forward_dir);
        }
        let ready = conditions.iter().find(|c| c.type_ == plan::READY);
        let row = Row {
            namespace: namespace.clone(),
            name: name.clone(),
            provider: integration.spec.provider,
            url: planned.status.url.clone().unwrap_or_default(),
            secret_hint: match &integration.spec.secret_ref {
                None => format!("cat {}", secret_file.display()),
                Some(r) => {
                    let file = folder
                        .secret_files
                        .get(&format!("{namespace}/{}", r.name))
                        .map_or_else(|| dir.display().to_string(), |f| f.display().to_string());
                    format!("key {} of Secret {} in {file}", r.key, r.name)
                }
            },
            ready: ready.is_some_and(|c| c.status == "True"),
            problem: ready
                .filter(|c| c.status != "True")
                .map(|c| c.message.clone()),
        };
        integration.status = Some(WebhookIntegrationStatus {
            observed_generation: planned.status.observed_generation,
            url: planned.status.url.clone(),
            path: planned.status.path.clone(),
            secret_name: None,
            conditions,
            deliveries: None,
            incidents: None,
            forwarding: Vec::new(),
            forwarding_totals: None,
            replicas: Vec::new(),
        });
        state.write_object(&integration)?;
        // `hookwarden replay --dir` plays the replay annotation's part in standalone.
        if let Some(route) = planned.route.as_mut()
            && route.replay.is_none()
        {
            route.replay = state.read_replay_request(&route.namespace, &route.name);
        }
        assignment.route = planned.route;
        synced.rows.push(row);
        Ok(())
    })?;

    let gone: Vec<String> = assignments
        .keys()
        .filter(|k| !folder.integrations.contains_key(*k))
        .cloned()
        .collect();
    for key in gone {
        if let Some((namespace, name)) = key.split_once('/') {
            // Like the generated Secret an integration owns in a cluster, its generated
            // secret goes with it.
            state.remove_object(namespace, name);
            state.remove_generated_secret(namespace, name);
            state.remove_forward_keys(namespace, name);
        }
        assignments.remove(&key);
    }
    state.save_assignments(&assignments)?;
    // In `namespace/name` order, as `assignments` (and the table) are.
    // In `namespace/name` order, as the table is.
    synced.routes = Routes(assignments);
    synced
        .rows
        .sort_by_cached_key(|r| format!("{}/{}", r.namespace, r.name));
    Ok(synced)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "http://127.0.0.1:8080";

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::write(dir.join(file), text).expect("write");
    }

    fn datadog(token: &str) -> String {
        format!(
            "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata: {{name: dd}}\nspec: {{provider: datadog, secretRef: {{name: tok, key: token}}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: tok}}\nstringData: {{token: {token}}}\n"
        )
    }

    fn now(offset: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + offset).expect("ts")
    }

    #[test]
    fn paths_uids_and_generations_behave_like_a_cluster() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::create(&dir.path().join(".state")).expect("state");
        write(dir.path(), "dd.yaml", &datadog("one"));
        let first = sync(dir.path(), &state, BASE, now(0)).expect("sync");
        let route = first.routes.get(0).expect("route").clone();
        assert!(first.rows[0].ready);
        assert_eq!(first.rows[0].url, format!("{BASE}{}", route.path));
        assert_eq!(route.generation, 1);

        // Unchanged folder: same path, uid and generation.
        let again = sync(dir.path(), &state, BASE, now(10)).expect("sync");
        assert_eq!(again.routes.get(0).expect("route"), &route);

        // Secret rotated: the old value stays accepted for previousSecretTTL (24 h default).
        write(dir.path(), "dd.yaml", &datadog("two"));
        let rotated = sync(dir.path(), &state, BASE, now(20))
            .expect("sync")
            .routes
            .get(0)
            .expect("route")
            .clone();
        assert_eq!(
            (rotated.path.as_str(), rotated.uid.as_str()),
            (route.path.as_str(), route.uid.as_str())
        );
        let live: Vec<&str> = rotated
            .live_secrets(1_800_000_030)
            .map(|s| s.expose())
            .collect();
        assert_eq!(live, ["two", "one"]);

        // Spec change: generation bumps, path stays.
        write(
            dir.path(),
            "dd.yaml",
            &datadog("two").replace("provider: datadog,", "provider: datadog, suspend: true,"),
        );
        let suspended = sync(dir.path(), &state, BASE, now(30)).expect("sync");
        assert_eq!(suspended.routes.get(0).expect("route").generation, 2);
        assert_eq!(suspended.routes.get(0).expect("route").path, route.path);
        assert!(!suspended.rows[0].ready, "suspended is not Ready");

        // Deleted and re-created: a new integration (new uid, new path).
        std::fs::remove_file(dir.path().join("dd.yaml")).expect("rm");
        assert!(
            sync(dir.path(), &state, BASE, now(40))
                .expect("sync")
                .routes
                .is_empty()
        );
        write(dir.path(), "dd.yaml", &datadog("two"));
        let recreated = sync(dir.path(), &state, BASE, now(50))
            .expect("sync")
            .routes
            .get(0)
            .expect("route")
            .clone();
        assert_ne!(recreated.uid, route.uid);
        assert_ne!(recreated.path, route.path);
    }

    #[test]
    fn a_missing_secret_is_a_condition_and_a_generated_one_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::create(&dir.path().join(".state")).expect("state");
        write(
            dir.path(),
            "x.yaml",
            "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata: {name: dd}\nspec: {provider: datadog, secretRef: {name: nope, key: token}}\n---\napiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata: {name: gh, namespace: dev}\nspec: {provider: github}\n",
        );
        let synced = sync(dir.path(), &state, BASE, now(0)).expect("sync");
        let dd = synced.rows.iter().find(|r| r.name == "dd").expect("dd");
        assert!(!dd.ready);
        assert!(
            dd.problem
                .as_deref()
                .is_some_and(|p| p.contains("default/nope")),
            "{:?}",
            dd.problem
        );
        assert_eq!(synced.routes.len(), 1, "no route without a secret");
        let generated = state.read_generated_secret("dev", "gh").expect("generated");
        assert_eq!(
            synced.routes.get(0).expect("route").secrets[0]
                .value
                .expose(),
            generated
        );
        let again = sync(dir.path(), &state, BASE, now(5)).expect("sync");
        assert_eq!(
            again.routes.get(0).expect("route").secrets[0]
                .value
                .expose(),
            generated,
            "the generated secret is stable"
        );
        // The object `get` prints carries the controller's conditions.
        let objects = state.read_objects().expect("objects");
        let dd = objects
            .iter()
            .find(|o| o.metadata.name.as_deref() == Some("dd"))
            .expect("dd object");
        let ready = dd
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "SecretNotFound")
        );
    }

    #[test]
    fn generated_forward_keys_follow_the_targets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::create(&dir.path().join(".state")).expect("state");
        let with = |targets: &str| {
            format!(
                "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata: {{name: gh}}\nspec:\n  provider: github\n  forward: {targets}\n"
            )
        };
        write(
            dir.path(),
            "gh.yaml",
            &with(
                "[{name: a, url: 'http://127.0.0.1:9/a'}, {name: b, url: 'http://127.0.0.1:9/b'}]",
            ),
        );
        let first = sync(dir.path(), &state, BASE, now(0)).expect("sync");
        let keys = state.read_forward_keys("default", "gh").expect("keys");
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(
            first.routes.get(0).expect("route").forward[0]
                .signing_key
                .as_ref()
                .map(|k| k.expose()),
            Some(keys["a"].as_str())
        );

        // Target b removed: its key goes, a's stays.
        write(
            dir.path(),
            "gh.yaml",
            &with("[{name: a, url: 'http://127.0.0.1:9/a'}]"),
        );
        sync(dir.path(), &state, BASE, now(10)).expect("sync");
        let after = state.read_forward_keys("default", "gh").expect("keys");
        assert_eq!(after.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(after["a"], keys["a"]);

        // The integration removed: its keys go with it.
        std::fs::remove_file(dir.path().join("gh.yaml")).expect("rm");
        sync(dir.path(), &state, BASE, now(20)).expect("sync");
        assert!(state.read_forward_keys("default", "gh").is_none());
    }
}
