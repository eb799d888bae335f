//! Reading a folder of Kubernetes YAML: the WebhookIntegration and Secret documents a
//! cluster would get, from every `*.yaml` / `*.yml` file (multi-document files too).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;

use crate::crd::WebhookIntegration;

/// Namespace of documents that name none (as `kubectl apply` would use).
pub const DEFAULT_NAMESPACE: &str = "default";

/// What a folder declares: its Secrets, and where each integration is declared.
///
/// The integrations themselves are not kept: [`Folder::each_integration`] parses them
/// again one at a time, so a sync holds one parsed integration at a time rather than all
/// of them (10,000 parsed integrations are ~15 MiB more at start-up, the peak that
/// counts against the receiver's memory target; docs/bench.md).
#[derive(Clone, Debug, Default)]
pub struct Folder {
    /// Where each integration is declared, by `namespace/name` (the last declaration).
    pub integrations: BTreeMap<String, Declared>,
    /// Secrets by `namespace/name`.
    pub secrets: BTreeMap<String, Secret>,
    /// The file each Secret was read from, by `namespace/name` (to tell users where).
    pub secret_files: BTreeMap<String, PathBuf>,
    /// Problems found (file and what is wrong); the rest of the folder still loads.
    pub problems: Vec<String>,
    /// The files read, with their text: [`Folder::each_integration`] reads the same
    /// snapshot the Secrets and problems came from, even if a file changes meanwhile.
    files: Vec<(PathBuf, String)>,
}

/// Where an integration is declared: its file (in the order read) and document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Declared {
    pub file: usize,
    pub document: usize,
}

impl Folder {
    /// The Secret `name` in `namespace`, if declared.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<&Secret> {
        self.secrets.get(&format!("{namespace}/{name}"))
    }

    /// Calls `visit` with each integration of [`Folder::integrations`] and its key, in
    /// the order of the files and documents, parsed again from the text read (each one
    /// dropped before the next is parsed). Stops at `visit`'s first error.
    pub fn each_integration<E>(
        &self,
        mut visit: impl FnMut(&str, WebhookIntegration) -> Result<(), E>,
    ) -> Result<(), E> {
        let declared: HashMap<Declared, &str> = self
            .integrations
            .iter()
            .map(|(key, at)| (*at, key.as_str()))
            .collect();
        for (file, (_, text)) in self.files.iter().enumerate() {
            for (document, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
                // Every document is read, declared or not: serde_yaml hands a document
                // out again until it is deserialized, so skipping an unreadable one
                // looped forever (found by the fuzz smoke on a one-byte file). The first
                // pass stopped at the first error, and so does this one.
                let Ok(value) = serde_yaml::Value::deserialize(de) else {
                    break;
                };
                let Some(key) = declared.get(&Declared { file, document }) else {
                    continue;
                };
                if let Ok(Some(integration)) = integration_of(value) {
                    visit(key, integration)?;
                }
            }
        }
        Ok(())
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
        parse_file(&mut folder, &path, text);
    }
    Ok(folder)
}

/// Adds the documents of one YAML file (`text`, read from `path`) to `folder`: what
/// [`load`] does per file, without the file system (and what `fuzz/` drives with
/// arbitrary text).
pub fn parse_file(folder: &mut Folder, path: &Path, text: String) {
    let file = folder.files.len();
    for (document, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = match serde_yaml::Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                folder.problems.push(format!(
                    "{} (document {}): {e}",
                    path.display(),
                    document + 1
                ));
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        load_document(folder, path, Declared { file, document }, value);
    }
    folder.files.push((path.to_path_buf(), text));
}

/// What a document is, read from its two type fields only (no copy of the whole
/// document: a folder of 10,000 integrations is parsed at start).
fn kind_of(value: &serde_yaml::Value) -> (&str, &str) {
    let text = |key: &str| {
        value
            .get(key)
            .and_then(serde_yaml::Value::as_str)
            .unwrap_or_default()
    };
    let api_version = text("apiVersion");
    (api_version.split('/').next().unwrap_or(""), text("kind"))
}

/// `value` as a WebhookIntegration with its namespace defaulted, if it is one (`None`:
/// another kind).
fn integration_of(
    value: serde_yaml::Value,
) -> Result<Option<WebhookIntegration>, serde_yaml::Error> {
    if kind_of(&value) != ("hookwarden.dev", "WebhookIntegration") {
        return Ok(None);
    }
    let mut integration = serde_yaml::from_value::<WebhookIntegration>(value)?;
    integration
        .metadata
        .namespace
        .get_or_insert_with(|| DEFAULT_NAMESPACE.to_string());
    Ok(Some(integration))
}

fn load_document(folder: &mut Folder, path: &Path, at: Declared, value: serde_yaml::Value) {
    let where_ = || format!("{} (document {})", path.display(), at.document + 1);
    match kind_of(&value) {
        ("hookwarden.dev", "WebhookIntegration") => match integration_of(value) {
            Ok(Some(integration)) => {
                let namespace = integration
                    .metadata
                    .namespace
                    .as_deref()
                    .unwrap_or_default();
                let Some(name) = integration.metadata.name.as_deref() else {
                    folder.problems.push(format!(
                        "{}: WebhookIntegration without metadata.name",
                        where_()
                    ));
                    return;
                };
                if let Err(e) = validate_meta(namespace, name) {
                    folder
                        .problems
                        .push(format!("{}: WebhookIntegration skipped: {e}", where_()));
                    return;
                }
                // Only where it is declared is kept; the sync parses it again.
                if folder
                    .integrations
                    .insert(format!("{namespace}/{name}"), at)
                    .is_some()
                {
                    folder.problems.push(format!("{}: WebhookIntegration {namespace}/{name} is declared twice; the later one wins", where_()));
                }
            }
            Ok(None) => {}
            Err(e) => folder
                .problems
                .push(format!("{}: invalid WebhookIntegration: {e}", where_())),
        },
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
    fn the_second_pass_ends_on_unreadable_documents_and_visits_each_declared_one_once() {
        let mut folder = Folder::default();
        // An unreadable first document (a control character), and a file whose second
        // document is unreadable after a Secret and an integration.
        parse_file(&mut folder, Path::new("a.yaml"), "\u{1e}".to_string());
        parse_file(
            &mut folder,
            Path::new("b.yaml"),
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n---\napiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata: {name: gh}\nspec: {provider: github}\n---\n: : [\n".to_string(),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let folder = std::sync::Arc::new(folder);
        let f = folder.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            f.each_integration(|key, _| {
                seen.push(key.to_string());
                Ok::<(), ()>(())
            })
            .expect("visit");
            tx.send(seen).expect("send");
        });
        let seen = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("each_integration must end");
        assert_eq!(seen, ["default/gh"]);
        assert_eq!(folder.problems.len(), 2, "{:?}", folder.problems);
    }

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

    /// The second pass yields each declared integration once, the later declaration of a
    /// name (as the first pass decided), parsed from the text the first pass read.
    #[test]
    fn integrations_are_parsed_again_one_at_a_time_and_the_later_declaration_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let doc = |name: &str, provider: &str| {
            format!(
                "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata: {{name: {name}}}\nspec: {{provider: {provider}}}\n"
            )
        };
        std::fs::write(
            dir.path().join("a.yaml"),
            [
                doc("one", "github"),
                doc("two", "stripe"),
                doc("one", "gitlab"),
            ]
            .join("---\n"),
        )
        .expect("write");
        std::fs::write(
            dir.path().join("b.yaml"),
            [doc("three", "github"), doc("two", "nosuch")].join("---\n"),
        )
        .expect("write");
        let folder = load(dir.path()).expect("load");
        // Files change after the first pass: the second reads what the first read.
        std::fs::write(dir.path().join("a.yaml"), "").expect("write");
        let mut seen = Vec::new();
        folder
            .each_integration(|key, integration| {
                seen.push((key.to_string(), integration.spec.provider.as_str()));
                Ok::<(), ()>(())
            })
            .expect("visit");
        assert_eq!(
            seen,
            [
                ("default/two".to_string(), "stripe"),
                ("default/one".to_string(), "gitlab"),
                ("default/three".to_string(), "github"),
            ]
        );
        assert_eq!(folder.problems.len(), 2, "{:?}", folder.problems);
        assert!(
            folder.problems[0].contains("declared twice"),
            "{:?}",
            folder.problems
        );
        assert!(
            folder.problems[1].contains("b.yaml (document 2): invalid WebhookIntegration"),
            "{:?}",
            folder.problems
        );

        // `visit`'s error stops the walk.
        let mut calls = 0;
        let stopped = folder.each_integration(|_, _| {
            calls += 1;
            Err("stop")
        });
        assert_eq!((stopped, calls), (Err("stop"), 1));
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
