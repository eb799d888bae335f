//! The components' ServiceAccounts and RBAC from the rendered install manifest
//! (`manifests/install.yaml`), so the end-to-end tests and the scale benchmark run the
//! controller and the receivers with exactly the chart's permissions. Shared by
//! `tests/it/e2e.rs` and `benches/scale.rs` through `#[path]`.

use std::path::Path;

use serde_json::Value;

/// What the install manifest grants, and to whom.
pub struct InstallRbac {
    /// hookwarden's namespace (the controller Deployment's).
    pub namespace: String,
    pub controller_sa: String,
    pub receiver_sa: String,
    /// The Namespace, ServiceAccounts, (Cluster)Roles and bindings.
    pub docs: Vec<Value>,
}

/// The RBAC part of the manifest at `manifest`; None when it cannot be read or names no
/// controller or receiver ServiceAccount.
pub fn install_rbac(manifest: &Path) -> Option<InstallRbac> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let mut docs = Vec::new();
    let mut namespace = None;
    let mut controller_sa = None;
    let mut receiver_sa = None;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let Ok(value) = <Value as serde::Deserialize>::deserialize(doc) else {
            continue;
        };
        let kind = value["kind"].as_str().unwrap_or_default();
        let name = value["metadata"]["name"].as_str().unwrap_or_default();
        if kind == "Deployment" || kind == "StatefulSet" {
            let sa = value["spec"]["template"]["spec"]["serviceAccountName"]
                .as_str()
                .map(str::to_string);
            if name.contains("controller") {
                namespace = value["metadata"]["namespace"].as_str().map(str::to_string);
                controller_sa = sa;
            } else if name.contains("receiver") {
                receiver_sa = sa;
            }
        }
        if matches!(
            kind,
            "Namespace"
                | "ServiceAccount"
                | "ClusterRole"
                | "ClusterRoleBinding"
                | "Role"
                | "RoleBinding"
        ) {
            docs.push(value);
        }
    }
    Some(InstallRbac {
        namespace: namespace.unwrap_or_else(|| "hookwarden".to_string()),
        controller_sa: controller_sa?,
        receiver_sa: receiver_sa?,
        docs,
    })
}
