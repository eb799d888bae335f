//! The standalone state folder (`--state`, default `DIR/.hookwarden-state`):
//!
//! ```text
//! assignments.json          per integration: uid, creation time, generation, last route (0600)
//! secrets/<ns>/<name>       generated secrets, one value per file (0600), for `cat`
//! forward-keys/<ns>/<name>/<target>  generated forward signing keys (the cluster's
//!                           `<name>-forward` Secret), one per file (0600), for `cat`
//! objects/<ns>/<name>.json  the integration as the controller sees it (metadata, spec, controller status)
//! status/<ns>/<name>.json   the receiver-owned status (deliveries, incidents)
//! journal/                  the delivery journal
//! ```
//!
//! Paths and UIDs are assigned once and kept here, so URLs survive restarts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::crd::WebhookIntegration;
use crate::receiver::status::{FileStatusWriter, temp_beside, write_atomic, write_atomic_with};
use crate::route::{Route, SecretValue};

/// What standalone mode assigned to one integration, kept across restarts.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    pub uid: String,
    pub created_at: jiff::Timestamp,
    pub generation: i64,
    /// SHA-256 of the spec JSON: a change bumps `generation`, as the API server would.
    pub spec_digest: String,
    /// The route served last time (path, accepted secrets with their expiry), the input
    /// the controller's plan needs to keep the path and handle rotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
}

/// Why the state folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot use state folder {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A name that is not DNS-1123 would make a path outside the state folder. The
    /// folder loader refuses such documents first; this is the last line of defence.
    #[error("refusing to store state for {namespace:?}/{name:?}: {source}")]
    InvalidName {
        namespace: String,
        name: String,
        source: super::folder::NameError,
    },
}

/// Names become path components here: only DNS-1123 ones may (see [`StateError::InvalidName`]).
fn check_names(namespace: &str, name: &str) -> Result<(), StateError> {
    super::folder::validate_namespace("namespace", namespace)
        .and_then(|()| super::folder::validate_name("name", name))
        .map_err(|source| StateError::InvalidName {
            namespace: namespace.to_string(),
            name: name.to_string(),
            source,
        })
}

/// The state folder.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn restrict(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

impl StateDir {
    /// Opens (creating, owner-only) the state folder.
    pub fn create(root: &Path) -> Result<StateDir, StateError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        restrict(root, 0o700).map_err(io(root))?;
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    /// Opens an existing state folder without changing it (for `get`).
    pub fn existing(root: &Path) -> StateDir {
        StateDir {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn journal_dir(&self) -> PathBuf {
        self.root.join("journal")
    }

    /// Where a journal loss found at start is written down for `hookwarden get`.
    pub fn journal_loss_path(&self) -> PathBuf {
        self.root.join("journal-loss.txt")
    }

    /// Appends one report of acknowledged deliveries lost at journal open (see
    /// `receiver::service::loss_message`), with when it was found. It stays until the
    /// operator deletes the file, so `get` keeps saying it after restarts.
    pub fn record_journal_loss(&self, at: jiff::Timestamp, message: &str) -> std::io::Result<()> {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.journal_loss_path())?;
        writeln!(file, "{at}: {message}")
    }

    /// The recorded journal losses, one per line, if any.
    pub fn journal_losses(&self) -> Vec<String> {
        std::fs::read_to_string(self.journal_loss_path())
            .map(|text| text.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    pub fn status_writer(&self) -> FileStatusWriter {
        FileStatusWriter::new(&self.root)
    }

    fn assignments_path(&self) -> PathBuf {
        self.root.join("assignments.json")
    }

    pub fn load_assignments(&self) -> Result<BTreeMap<String, Assignment>, StateError> {
        let path = self.assignments_path();
        // Read through a buffer, not whole: with 10,000 integrations the file is ~8 MB,
        // which would sit next to the parsed map at start-up.
        match std::fs::File::open(&path) {
            Ok(file) => serde_json::from_reader(std::io::BufReader::new(file))
                .map_err(|source| StateError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    pub fn save_assignments(
        &self,
        assignments: &BTreeMap<String, Assignment>,
    ) -> Result<(), StateError> {
        let path = self.assignments_path();
        // Streamed to the file: a ~8 MB buffer (grown by doubling, so up to 16 MB) for
        // 10,000 integrations was the largest single allocation of a start-up.
        write_atomic_with(&path, |file| {
            use std::io::Write as _;
            let mut out = std::io::BufWriter::new(file);
            serde_json::to_writer_pretty(&mut out, assignments)?;
            out.flush()
        })
        .map_err(io(&path))?;
        restrict(&path, 0o600).map_err(io(&path))
    }

    /// Where the generated secret of an integration is kept.
    pub fn secret_path(&self, namespace: &str, name: &str) -> PathBuf {
        self.root.join("secrets").join(namespace).join(name)
    }

    /// The generated secret of an integration, if one was stored.
    pub fn read_generated_secret(&self, namespace: &str, name: &str) -> Option<String> {
        check_names(namespace, name).ok()?;
        let value = std::fs::read_to_string(self.secret_path(namespace, name)).ok()?;
        let value = value.trim();
        (!value.is_empty()).then(|| value.to_string())
    }

    /// Stores the generated secret of an integration (owner-only file).
    pub fn write_generated_secret(
        &self,
        namespace: &str,
        name: &str,
        value: &str,
    ) -> Result<(), StateError> {
        check_names(namespace, name)?;
        let path = self.secret_path(namespace, name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            restrict(dir, 0o700).map_err(io(dir))?;
        }
        write_atomic(&path, format!("{value}\n").as_bytes()).map_err(io(&path))?;
        restrict(&path, 0o600).map_err(io(&path))
    }

    /// Deletes the generated secret of an integration that was removed.
    pub fn remove_generated_secret(&self, namespace: &str, name: &str) {
        // Names may come from an assignments.json written before names were validated.
        if check_names(namespace, name).is_ok() {
            let _ = std::fs::remove_file(self.secret_path(namespace, name));
        }
    }

    /// Where the generated forward signing keys of an integration are kept, one file per
    /// target (named after it).
    pub fn forward_keys_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.root.join("forward-keys").join(namespace).join(name)
    }

    /// The generated forward signing keys of an integration by target name; `None` when
    /// none were ever stored (or all were dropped).
    pub fn read_forward_keys(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<BTreeMap<String, String>> {
        let entries = std::fs::read_dir(self.forward_keys_dir(namespace, name)).ok()?;
        let keys = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let target = e.file_name().into_string().ok()?;
                let value = std::fs::read_to_string(e.path()).ok()?;
                Some((target, value.trim().to_string()))
            })
            .collect();
        Some(keys)
    }

    /// Stores exactly `keys` (target name → signing key) as the generated forward keys of
    /// an integration: changed files rewritten (owner-only), removed targets' files
    /// deleted, the folder removed when no key is left.
    pub fn write_forward_keys(
        &self,
        namespace: &str,
        name: &str,
        keys: &BTreeMap<String, SecretValue>,
    ) -> Result<(), StateError> {
        let dir = self.forward_keys_dir(namespace, name);
        let existing = self.read_forward_keys(namespace, name).unwrap_or_default();
        for target in existing.keys().filter(|t| !keys.contains_key(*t)) {
            let path = dir.join(target);
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
        if keys.is_empty() {
            self.remove_forward_keys(namespace, name);
            return Ok(());
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        restrict(&dir, 0o700).map_err(io(&dir))?;
        for (target, key) in keys {
            if existing.get(target).map(String::as_str) == Some(key.expose()) {
                continue;
            }
            let path = dir.join(target);
            write_atomic(&path, format!("{}\n", key.expose()).as_bytes()).map_err(io(&path))?;
            restrict(&path, 0o600).map_err(io(&path))?;
        }
        Ok(())
    }

    /// Where `hookwarden replay` leaves a replay request for a running (or the next)
    /// standalone: it plays the `hookwarden.dev/replay` annotation's part.
    pub fn replay_request_path(&self, namespace: &str, name: &str) -> PathBuf {
        self.root
            .join("replay")
            .join(namespace)
            .join(format!("{name}.json"))
    }

    /// The replay request of an integration, if `hookwarden replay` left one.
    pub fn read_replay_request(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<crate::route::ReplayRequest> {
        let bytes = std::fs::read(self.replay_request_path(namespace, name)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Leaves a replay request (a new value each time).
    pub fn write_replay_request(
        &self,
        namespace: &str,
        name: &str,
        request: &crate::route::ReplayRequest,
    ) -> Result<(), StateError> {
        let path = self.replay_request_path(namespace, name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let bytes = serde_json::to_vec(request).map_err(|e| StateError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&path, &bytes).map_err(io(&path))
    }

    /// A cheap fingerprint of the replay requests (names and modification times), so a
    /// running standalone notices a new one.
    pub fn replay_fingerprint(&self) -> Vec<(PathBuf, Option<std::time::SystemTime>)> {
        let mut out = Vec::new();
        let Ok(namespaces) = std::fs::read_dir(self.root.join("replay")) else {
            return out;
        };
        for ns in namespaces.filter_map(Result::ok) {
            let Ok(files) = std::fs::read_dir(ns.path()) else {
                continue;
            };
            for f in files.filter_map(Result::ok) {
                let modified = f.metadata().ok().and_then(|m| m.modified().ok());
                out.push((f.path(), modified));
            }
        }
        out.sort();
        out
    }

    /// Deletes the generated forward keys of an integration that was removed.
    pub fn remove_forward_keys(&self, namespace: &str, name: &str) {
        let _ = std::fs::remove_dir_all(self.forward_keys_dir(namespace, name));
    }

    /// Whether the state knows the integration (it was synced at least once).
    pub fn has_object(&self, namespace: &str, name: &str) -> bool {
        self.object_path(namespace, name).is_file()
    }

    fn object_path(&self, namespace: &str, name: &str) -> PathBuf {
        self.root
            .join("objects")
            .join(namespace)
            .join(format!("{name}.json"))
    }

    pub fn write_object(&self, object: &WebhookIntegration) -> Result<(), StateError> {
        let namespace = object
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(super::folder::DEFAULT_NAMESPACE);
        let name = object.metadata.name.as_deref().unwrap_or_default();
        check_names(namespace, name)?;
        let path = self.object_path(namespace, name);
        let bytes = serde_json::to_vec_pretty(object).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        // Every sync (start-up, each reload) rewrites every object; most are unchanged.
        if std::fs::read(&path).is_ok_and(|on_disk| on_disk == bytes) {
            return Ok(());
        }
        write_replaceable(&path, &bytes).map_err(io(&path))
    }

    pub fn remove_object(&self, namespace: &str, name: &str) {
        if check_names(namespace, name).is_ok() {
            let _ = std::fs::remove_file(self.object_path(namespace, name));
        }
    }

    /// Every stored integration object, with the receiver-owned status overlaid.
    pub fn read_objects(&self) -> Result<Vec<WebhookIntegration>, StateError> {
        let dir = self.root.join("objects");
        let mut objects = Vec::new();
        let namespaces = match std::fs::read_dir(&dir) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(objects),
            Err(e) => return Err(io(&dir)(e)),
        };
        let writer = self.status_writer();
        for namespace in namespaces.filter_map(Result::ok) {
            let Ok(files) = std::fs::read_dir(namespace.path()) else {
                continue;
            };
            for file in files.filter_map(Result::ok) {
                let path = file.path();
                if path.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                let mut object: WebhookIntegration =
                    serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                        path: path.clone(),
                        source,
                    })?;
                let ns = object.metadata.namespace.clone().unwrap_or_default();
                let name = object.metadata.name.clone().unwrap_or_default();
                let uid = object.metadata.uid.clone().unwrap_or_default();
                if let Some(receiver) = writer.read(&ns, &name, &uid) {
                    receiver.apply_to(object.status.get_or_insert_with(Default::default));
                }
                objects.push(object);
            }
        }
        objects.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        Ok(objects)
    }

    /// The last object written for an integration (to keep condition transition times).
    pub fn read_object(&self, namespace: &str, name: &str) -> Option<WebhookIntegration> {
        check_names(namespace, name).ok()?;
        let bytes = std::fs::read(self.object_path(namespace, name)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Replaces `path` with `bytes` through a rename (readers never see half a file), without
/// fsync: for the integration objects, which the next sync recomputes from the folder and
/// `assignments.json` (both durable), so a crash can at worst reset a condition's
/// transition time. Paths, UIDs and generated secrets keep [`write_atomic`]'s fsyncs; with
/// 10,000 integrations, two fsyncs per object made a start take over 30 s.
fn write_replaceable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let (_, tmp) = temp_beside(path)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// A fresh random UID in the usual 8-4-4-4-12 hex form.
pub fn new_uid() -> String {
    let mut b = [0u8; 16];
    rand::fill(&mut b);
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_like_names_never_reach_the_file_system() {
        let outer = tempfile::tempdir().expect("tempdir");
        let state = StateDir::create(&outer.path().join("state")).expect("state");
        let err = state
            .write_generated_secret("default", "../../x", "s3cret")
            .expect_err("refused");
        assert!(matches!(err, StateError::InvalidName { .. }), "{err}");
        assert!(!err.to_string().contains("s3cret"));
        assert!(state.write_generated_secret("..", "x", "v").is_err());
        assert_eq!(state.read_generated_secret("default", "../../x"), None);
        let mut object: WebhookIntegration = serde_json::from_value(serde_json::json!({
            "apiVersion": "hookwarden.dev/v1alpha1",
            "kind": "WebhookIntegration",
            "metadata": {"name": "../../y", "namespace": "default"},
            "spec": {"provider": "github"}
        }))
        .expect("object");
        assert!(state.write_object(&object).is_err());
        object.metadata.name = Some("fine".into());
        state.write_object(&object).expect("a valid name is stored");
        // Nothing was written next to the state folder.
        let beside: Vec<_> = std::fs::read_dir(outer.path())
            .expect("list")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(beside, vec![std::ffi::OsString::from("state")]);
    }
}
