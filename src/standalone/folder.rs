//! Reading a folder of Kubernetes YAML: the WebhookIntegration and Secret documents a
//! cluster would get, from every `*.yaml` / `*.yml` file (multi-document files too).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;

use crate::crd::WebhookIntegration;

/// Namespace of documents that name none (as `kubectl apply` would use).
pub const DEFAULT_NAMESPACE: &str = "default";

/// What a folder declares.
#[derive(Clone, Debug, Default)]
pub struct Folder {
    /// Integrations by `namespace/name`.
    pub integrations: BTreeMap<String, WebhookIntegration>,
    /// Secrets by `namespace/name`.
    pub secrets: BTreeMap<String, Secret>,
    /// The file each Secret was read from, by `namespace/name` (to tell users where).
    pub secret_files: BTreeMap<String, PathBuf>,
    /// Problems found (file and what is wrong); the rest of the folder still loads.
    pub problems: Vec<String>,
}

impl Folder {
    /// The Secret `name` in `namespace`, if declared.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<&Secret> {
        self.secrets.get(&format!("{namespace}/{name}"))
    }
}

/// Why a folder cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("cannot read folder {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why a `metadata.name` or `metadata.namespace` is not one Kubernetes would accept.
/// Standalone mode builds file paths from both (`secrets/<ns>/<name>`,
/// `objects/<ns>/<name>.json`, `status/…`), so a name like `../../x` must never get
/// that far: it is refused when the folder is loaded, as the API server would refuse it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{field} {value:?} is not a valid name: {rule}")]
    Invalid {
        field: &'static str,
        value: String,
        rule: &'static str,
    },
}

const SUBDOMAIN_RULE: &str = "use at most 253 characters of lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, with a letter or digit on both sides of every '.' (a DNS-1123 subdomain, as Kubernetes requires for object names)";
const LABEL_RULE: &str = "use at most 63 characters of lower-case letters, digits and '-', starting and ending with a letter or digit (a DNS-1123 label, as Kubernetes requires for namespaces)";

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, the piece both formats are made of.
fn is_label_shaped(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && is_label_shaped(s)
}

/// A DNS-1123 subdomain (Kubernetes' `IsDNS1123Subdomain`): label-shaped pieces joined by
/// dots, at most 253 characters (like Kubernetes, the pieces have no length limit of
/// their own). Never `.`, `..`, empty, or anything with `/`.
pub fn validate_name(field: &'static str, value: &str) -> Result<(), NameError> {
    if value.len() <= 253 && value.split('.').all(is_label_shaped) {
        Ok(())
    } else {
        Err(NameError::Invalid {
            field,
            value: value.to_string(),
            rule: SUBDOMAIN_RULE,
        })
    }
}

/// A DNS-1123 label (Kubernetes' `IsDNS1123Label`), what a namespace must be.
pub fn validate_namespace(field: &'static str, value: &str) -> Result<(), NameError> {
    if is_dns1123_label(value) {
        Ok(())
    } else {
        Err(NameError::Invalid {
            field,
            value: value.to_string(),
            rule: LABEL_RULE,
        })
    }
}

/// Both checks, for a document's `metadata`.
fn validate_meta(namespace: &str, name: &str) -> Result<(), NameError> {
    validate_namespace("metadata.namespace", namespace)?;
    validate_name("metadata.name", name)
}

/// The YAML files of `dir`, sorted by name (not recursive: a folder is one "cluster").
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, FolderError> {
    let entries = std::fs::read_dir(dir).map_err(|source| FolderError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// A cheap fingerprint of the folder (names, sizes, modification times) to notice edits.
pub fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    yaml_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (p, len, modified)
        })
        .collect()
}

/// Loads every WebhookIntegration and Secret document in `dir`. Other kinds are skipped
/// silently (a folder may hold a whole app); malformed documents become `problems`.
pub fn load(dir: &Path) -> Result<Folder, FolderError> {
    let mut folder = Folder::default();
    for path in yaml_files(dir)? {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                folder.problems.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        parse_file(&mut folder, &path, &text);
    }
    Ok(folder)
}

/// Adds the documents of one YAML file (`text`, read from `path`) to `folder`: what
/// [`load`] does per file, without the file system (and what `fuzz/` drives with
/// arbitrary text).
pub fn parse_file(folder: &mut Folder, path: &Path, text: &str) {
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match serde_yaml::Value::deserialize(document) {
            Ok(v) => v,
            Err(e) => {
                folder
                    .problems
                    .push(format!("{} (document {}): {e}", path.display(), index + 1));
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        load_document(folder, path, index, value);
    }
}

fn load_document(folder: &mut Folder, path: &Path, index: usize, value: serde_yaml::Value) {
    let where_ = || format!("{} (document {})", path.display(), index + 1);
    // Only the two type fields are read before the document is converted (no copy of the
    // whole document: a folder of 10,000 integrations is parsed at start).
    let text = |key: &str| {
        value
            .get(key)
            .and_then(serde_yaml::Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    match (api_version.split('/').next().unwrap_or(""), kind.as_str()) {
        ("hookwarden.dev", "WebhookIntegration") => {
            match serde_yaml::from_value::<WebhookIntegration>(value) {
                Ok(mut integration) => {
                    let namespace = integration
                        .metadata
                        .namespace
                        .get_or_insert_with(|| DEFAULT_NAMESPACE.to_string())
                        .clone();
                    let Some(name) = integration.metadata.name.clone() else {
                        folder.problems.push(format!(
                            "{}: WebhookIntegration without metadata.name",
                            where_()
                        ));
                        return;
                    };
                    if let Err(e) = validate_meta(&namespace, &name) {
                        folder
                            .problems
                            .push(format!("{}: WebhookIntegration skipped: {e}", where_()));
                        return;
                    }
                    if folder
                        .integrations
                        .insert(format!("{namespace}/{name}"), integration)
                        .is_some()
                    {
                        folder.problems.push(format!("{}: WebhookIntegration {namespace}/{name} is declared twice; the later one wins", where_()));
                    }
                }
                Err(e) => folder
                    .problems
                    .push(format!("{}: invalid WebhookIntegration: {e}", where_())),
            }
        }
        ("v1", "Secret") => match serde_yaml::from_value::<Secret>(value) {
            Ok(mut secret) => {
                let namespace = secret
                    .metadata
                    .namespace
                    .get_or_insert_with(|| DEFAULT_NAMESPACE.to_string())
                    .clone();
                let Some(name) = secret.metadata.name.clone() else {
                    folder
                        .problems
                        .push(format!("{}: Secret without metadata.name", where_()));
                    return;
                };
                if let Err(e) = validate_meta(&namespace, &name) {
                    folder
                        .problems
                        .push(format!("{}: Secret skipped: {e}", where_()));
                    return;
                }
                folder
                    .secret_files
                    .insert(format!("{namespace}/{name}"), path.to_path_buf());
                folder.secrets.insert(format!("{namespace}/{name}"), secret);
            }
            Err(e) => folder
                .problems
                .push(format!("{}: invalid Secret: {e}", where_())),
        },
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::plan::{RefLookup, lookup_key};

    #[test]
    fn loads_multi_document_files_and_defaults_the_namespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("a.yaml"),
            "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata: {name: dd}\nspec: {provider: datadog, secretRef: {name: tok, key: token}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: tok}\nstringData: {token: s3cret}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: other}\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("b.yml"), "apiVersion: v1\nkind: Secret\nmetadata: {name: b64, namespace: ops}\ndata: {token: aGVsbG8=}\n").expect("write");
        std::fs::write(dir.path().join("notes.txt"), "not yaml: [").expect("write");

        let folder = load(dir.path()).expect("load");
        assert!(folder.problems.is_empty(), "{:?}", folder.problems);
        assert_eq!(
            folder.integrations.keys().collect::<Vec<_>>(),
            vec!["default/dd"]
        );
        let tok = folder.secret("default", "tok").expect("secret");
        assert_eq!(lookup_key(tok, "token"), RefLookup::Value("s3cret".into()));
        let b64 = folder.secret("ops", "b64").expect("secret");
        assert_eq!(lookup_key(b64, "token"), RefLookup::Value("hello".into()));
    }

    #[test]
    fn names_and_namespaces_follow_kubernetes_rules() {
        for ok in ["a", "gh", "my-hook", "a.b-c.d", "0x", &"a".repeat(253)] {
            assert_eq!(validate_name("metadata.name", ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../../../x",
            "a/b",
            "/etc",
            "A",
            "a_b",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a.",
            "é",
            "a\0",
        ] {
            assert!(validate_name("metadata.name", bad).is_err(), "{bad:?}");
        }
        assert!(validate_name("metadata.name", &"a".repeat(254)).is_err());
        assert_eq!(validate_namespace("metadata.namespace", "ops-1"), Ok(()));
        assert_eq!(
            validate_namespace("metadata.namespace", &"a".repeat(63)),
            Ok(())
        );
        for bad in ["a.b", "..", "", "Ops", &"a".repeat(64)] {
            assert!(
                validate_namespace("metadata.namespace", bad).is_err(),
                "{bad:?}"
            );
        }
    }

    /// Issue 18, finding 8: such a document is reported with its file and what to fix,
    /// and skipped before any path is built from it; the rest of the folder loads.
    #[test]
    fn documents_with_path_like_names_are_reported_and_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("evil.yaml"),
            "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata: {name: ../../../x}\nspec: {provider: github}\n---\napiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata: {name: ok, namespace: ../up}\nspec: {provider: github}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: ../s}\nstringData: {k: v}\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("good.yaml"), "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata: {name: gh}\nspec: {provider: github}\n").expect("write");
        let folder = load(dir.path()).expect("load");
        assert_eq!(
            folder.integrations.keys().collect::<Vec<_>>(),
            vec!["default/gh"]
        );
        assert!(folder.secrets.is_empty());
        assert_eq!(folder.problems.len(), 3, "{:?}", folder.problems);
        assert!(
            folder.problems[0].contains("evil.yaml (document 1)")
                && folder.problems[0].contains("metadata.name \"../../../x\"")
                && folder.problems[0].contains("DNS-1123 subdomain"),
            "{:?}",
            folder.problems
        );
        assert!(
            folder.problems[1].contains("metadata.namespace \"../up\"")
                && folder.problems[1].contains("DNS-1123 label"),
            "{:?}",
            folder.problems
        );
    }

    #[test]
    fn a_broken_document_is_reported_and_the_rest_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("bad.yaml"), "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata: {name: x}\nspec: {provider: nosuch}\n").expect("write");
        std::fs::write(dir.path().join("good.yaml"), "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata: {name: gh}\nspec: {provider: github}\n").expect("write");
        let folder = load(dir.path()).expect("load");
        assert_eq!(folder.integrations.len(), 1);
        assert_eq!(folder.problems.len(), 1);
        assert!(
            folder.problems[0].contains("bad.yaml"),
            "{:?}",
            folder.problems
        );
    }
}
