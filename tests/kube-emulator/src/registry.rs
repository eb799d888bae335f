//! Which resource types the emulator serves: the built-in kinds it knows and every version of
//! every CustomResourceDefinition applied to it. Discovery, OpenAPI, tables and validation all
//! read this one registry, so a CRD becomes visible everywhere at once, as on a real server.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// One `additionalPrinterColumns` entry of a CRD (or a built-in default column).
#[derive(Clone, Debug)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// A served (group, version, resource).
#[derive(Clone, Debug)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    /// Whether writes to the main resource ignore `status` (and status writes ignore the rest).
    pub status_subresource: bool,
    /// `openAPIV3Schema` of a CRD version; `None` for built-ins (stored as sent).
    pub schema: Option<std::sync::Arc<Value>>,
    pub printer_columns: Vec<PrinterColumn>,
    /// The CEL rules of `schema`, compiled once when the CRD is registered; `None` when the
    /// schema has no `x-kubernetes-validations`.
    pub cel: Option<std::sync::Arc<kube_cel::CompiledSchema>>,
    /// Set for types registered by a CRD: the CRD's name.
    pub crd_name: Option<String>,
    /// A CRD version's `selectableFields`, as field labels (`spec.color`).
    pub selectable_fields: Vec<String>,
}

impl ResourceType {
    /// `apiVersion` as written in objects (`v1` for the core group).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Storage key shared by all versions of one resource.
    pub fn storage_key(&self) -> String {
        // core/v1 and events.k8s.io/v1 Events are one resource in two shapes, as on a real server.
        if self.group.is_empty() || self.kind == "Event" {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Kind.group` the way the API server names a type in error messages.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// `resource.group` as used in RBAC-style messages (`webhookintegrations.hookwarden.dev`).
    pub fn qualified_resource(&self) -> String {
        self.storage_key()
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }

    /// Whether this kind has a user-facing `spec` that `metadata.generation` tracks.
    pub fn tracks_generation(&self) -> bool {
        self.crd_name.is_some()
            || matches!(
                self.kind.as_str(),
                "Deployment"
                    | "StatefulSet"
                    | "DaemonSet"
                    | "ReplicaSet"
                    | "PodDisruptionBudget"
                    | "NetworkPolicy"
                    | "Ingress"
                    | "CustomResourceDefinition"
                    | "HorizontalPodAutoscaler"
            )
    }
}

fn column(name: &str, type_: &str, json_path: &str, description: &str) -> PrinterColumn {
    PrinterColumn {
        name: name.to_string(),
        type_: type_.to_string(),
        format: String::new(),
        description: description.to_string(),
        priority: 0,
        json_path: json_path.to_string(),
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    short: &'static [&'static str],
    namespaced: bool,
    status: bool,
    categories: &'static [&'static str],
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        short: &["ns"],
        namespaced: false,
        status: true,
        categories: &[],
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        short: &[],
        namespaced: true,
        status: false,
        categories: &[],
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        short: &["cm"],
        namespaced: true,
        status: false,
        categories: &[],
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        short: &["ev"],
        namespaced: true,
        status: false,
        categories: &[],
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        short: &["sa"],
        namespaced: true,
        status: false,
        categories: &[],
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        short: &["svc"],
        namespaced: true,
        status: true,
        categories: &["all"],
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        short: &["po"],
        namespaced: true,
        status: true,
        categories: &["all"],
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "Endpoints",
        plural: "endpoints",
        short: &["ep"],
        namespaced: true,
        status: false,
        categories: &[],
    },
    Builtin {
        group: "events.k8s.io",
        version: "v1",
        kind: "Event",
        plural: "events",
        short: &["ev"],
        namespaced: true,
        status: false,
        categories: &[],
    },
    Builtin {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        short: &[],
        namespaced: true,
        status: false,
        categories: &[],
    },
    Builtin {
        group: "apiextensions.k8s.io",
        version: "v1",
        kind: "CustomResourceDefinition",
        plural: "customresourcedefinitions",
        short: &["crd", "crds"],
        namespaced: false,
        status: true,
        categories: &["api-extensions"],
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "Role",
        plural: "roles",
        short: &[],
        namespaced: true,
        status: false,
        categories: &[],
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "ClusterRole",
        plural: "clusterroles",
        short: &[],
        namespaced: false,
        status: false,
        categories: &[],
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "RoleBinding",
        plural: "rolebindings",
        short: &[],
        namespaced: true,
        status: false,
        categories: &[],
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "ClusterRoleBinding",
        plural: "clusterrolebindings",
        short: &[],
        namespaced: false,
        status: false,
        categories: &[],
    },
    Builtin {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        short: &["deploy"],
        namespaced: true,
        status: true,
        categories: &["all"],
    },
    Builtin {
        group: "apps",
        version: "v1",
        kind: "StatefulSet",
        plural: "statefulsets",
        short: &["sts"],
        namespaced: true,
        status: true,
        categories: &["all"],
    },
    Builtin {
        group: "apps",
        version: "v1",
        kind: "DaemonSet",
        plural: "daemonsets",
        short: &["ds"],
        namespaced: true,
        status: true,
        categories: &["all"],
    },
    Builtin {
        group: "apps",
        version: "v1",
        kind: "ReplicaSet",
        plural: "replicasets",
        short: &["rs"],
        namespaced: true,
        status: true,
        categories: &["all"],
    },
    Builtin {
        group: "policy",
        version: "v1",
        kind: "PodDisruptionBudget",
        plural: "poddisruptionbudgets",
        short: &["pdb"],
        namespaced: true,
        status: true,
        categories: &[],
    },
    Builtin {
        group: "networking.k8s.io",
        version: "v1",
        kind: "NetworkPolicy",
        plural: "networkpolicies",
        short: &["netpol"],
        namespaced: true,
        status: false,
        categories: &[],
    },
    Builtin {
        group: "networking.k8s.io",
        version: "v1",
        kind: "Ingress",
        plural: "ingresses",
        short: &["ing"],
        namespaced: true,
        status: true,
        categories: &[],
    },
    Builtin {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SelfSubjectAccessReview",
        plural: "selfsubjectaccessreviews",
        short: &[],
        namespaced: false,
        status: false,
        categories: &[],
    },
    Builtin {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SubjectAccessReview",
        plural: "subjectaccessreviews",
        short: &[],
        namespaced: false,
        status: false,
        categories: &[],
    },
    Builtin {
        group: "autoscaling",
        version: "v2",
        kind: "HorizontalPodAutoscaler",
        plural: "horizontalpodautoscalers",
        short: &["hpa"],
        namespaced: true,
        status: true,
        categories: &["all"],
    },
];

fn default_columns(kind: &str) -> Vec<PrinterColumn> {
    let mut cols = vec![column(
        "Name",
        "string",
        ".metadata.name",
        "Name must be unique within a namespace.",
    )];
    cols[0].format = "name".to_string();
    match kind {
        "Namespace" => cols.push(column(
            "Status",
            "string",
            ".status.phase",
            "The status of the namespace",
        )),
        "Secret" => {
            cols.push(column("Type", "string", ".type", "The type of the secret"));
            cols.push(column(
                "Data",
                "integer",
                "#data",
                "The number of keys in the secret",
            ));
        }
        "ConfigMap" => cols.push(column(
            "Data",
            "integer",
            "#data",
            "Number of keys in the config map",
        )),
        "ServiceAccount" => {}
        "Event" => {
            cols.remove(0);
            let mut last = column(
                "Last Seen",
                "date",
                "#lastSeen",
                "Time of the last occurrence",
            );
            last.format = String::new();
            cols.push(last);
            cols.push(column("Type", "string", ".type", "Normal or Warning"));
            cols.push(column(
                "Reason",
                "string",
                ".reason",
                "Why the event happened",
            ));
            cols.push(column(
                "Object",
                "string",
                "#object",
                "The object the event is about",
            ));
            cols.push(column("Message", "string", "#message", "What happened"));
            return cols;
        }
        "Lease" => cols.push(column(
            "Holder",
            "string",
            ".spec.holderIdentity",
            "The holder of the lease",
        )),
        "CustomResourceDefinition" => {
            cols.push(column(
                "Created At",
                "string",
                ".metadata.creationTimestamp",
                "",
            ));
            return cols;
        }
        _ => {}
    }
    cols.push(column("Age", "date", ".metadata.creationTimestamp", "CreationTimestamp is a timestamp representing the server time when this object was created."));
    cols
}

/// All served types, keyed by (group, version, plural).
#[derive(Clone, Debug, Default)]
pub struct Registry {
    types: BTreeMap<(String, String, String), ResourceType>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        let mut types = BTreeMap::new();
        for b in BUILTINS {
            let singular = b.kind.to_ascii_lowercase();
            let rt = ResourceType {
                group: b.group.to_string(),
                version: b.version.to_string(),
                kind: b.kind.to_string(),
                list_kind: format!("{}List", b.kind),
                plural: b.plural.to_string(),
                singular,
                short_names: b.short.iter().map(|s| s.to_string()).collect(),
                categories: b.categories.iter().map(|s| s.to_string()).collect(),
                namespaced: b.namespaced,
                status_subresource: b.status,
                schema: None,
                cel: None,
                printer_columns: default_columns(b.kind),
                crd_name: None,
                selectable_fields: Vec::new(),
            };
            types.insert(
                (rt.group.clone(), rt.version.clone(), rt.plural.clone()),
                rt,
            );
        }
        Registry { types }
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
    }

    pub fn all(&self) -> impl Iterator<Item = &ResourceType> {
        self.types.values()
    }

    /// Groups with their versions, in a stable order (core group excluded).
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for rt in self.types.values() {
            if rt.group.is_empty() {
                continue;
            }
            let versions = out.entry(rt.group.clone()).or_default();
            if !versions.contains(&rt.version) {
                versions.push(rt.version.clone());
            }
        }
        out
    }

    pub fn in_group_version<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a ResourceType> + 'a {
        self.types
            .values()
            .filter(move |rt| rt.group == group && rt.version == version)
    }

    /// Registers (or re-registers) every served version of a CRD object.
    pub fn register_crd(&mut self, crd: &Value) {
        let Some(name) = crd.pointer("/metadata/name").and_then(Value::as_str) else {
            return;
        };
        self.unregister_crd(name);
        let spec = &crd["spec"];
        let group = spec["group"].as_str().unwrap_or_default().to_string();
        let names = &spec["names"];
        let kind = names["kind"].as_str().unwrap_or_default().to_string();
        let plural = names["plural"].as_str().unwrap_or_default().to_string();
        let singular = names["singular"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_ascii_lowercase());
        let list_kind = names["listKind"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{kind}List"));
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        for version in spec["versions"].as_array().into_iter().flatten() {
            if version["served"].as_bool() == Some(false) {
                continue;
            }
            let vname = version["name"].as_str().unwrap_or_default().to_string();
            let mut columns = Vec::new();
            let mut name_col = column(
                "Name",
                "string",
                ".metadata.name",
                "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
            );
            name_col.format = "name".to_string();
            columns.push(name_col);
            let extra = version["additionalPrinterColumns"].as_array();
            for c in extra.into_iter().flatten() {
                columns.push(PrinterColumn {
                    name: c["name"].as_str().unwrap_or_default().to_string(),
                    type_: c["type"].as_str().unwrap_or("string").to_string(),
                    format: c["format"].as_str().unwrap_or_default().to_string(),
                    description: c["description"].as_str().unwrap_or_default().to_string(),
                    priority: c["priority"].as_i64().unwrap_or(0),
                    json_path: c["jsonPath"].as_str().unwrap_or_default().to_string(),
                });
            }
            if extra.is_none_or(|e| e.is_empty()) {
                columns.push(column("Age", "date", ".metadata.creationTimestamp", ""));
            }
            let rt = ResourceType {
                group: group.clone(),
                version: vname.clone(),
                kind: kind.clone(),
                list_kind: list_kind.clone(),
                plural: plural.clone(),
                singular: singular.clone(),
                short_names: strings(&names["shortNames"]),
                categories: strings(&names["categories"]),
                namespaced,
                status_subresource: version.pointer("/subresources/status").is_some(),
                schema: version
                    .pointer("/schema/openAPIV3Schema")
                    .cloned()
                    .map(std::sync::Arc::new),
                // Judged once here: asked per request, this test serialised the whole
                // schema for every write.
                cel: version
                    .pointer("/schema/openAPIV3Schema")
                    .filter(|s| s.to_string().contains("x-kubernetes-validations"))
                    .map(|s| std::sync::Arc::new(kube_cel::compile_schema(s))),
                printer_columns: columns,
                crd_name: Some(name.to_string()),
                selectable_fields: version["selectableFields"]
                    .as_array()
                    .map(|fs| {
                        fs.iter()
                            .filter_map(|f| f["jsonPath"].as_str())
                            .map(|p| p.trim_start_matches('.').to_string())
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            self.types
                .insert((group.clone(), vname, plural.clone()), rt);
        }
    }

    pub fn unregister_crd(&mut self, name: &str) {
        self.types
            .retain(|_, rt| rt.crd_name.as_deref() != Some(name));
    }
}

/// Accepted names written into a CRD's status, like the real server's naming controller.
pub fn crd_status(crd: &Value) -> Value {
    let now = crate::store::now_rfc3339();
    json!({
        "acceptedNames": crd["spec"]["names"].clone(),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
        "storedVersions": crd["spec"]["versions"].as_array().map(|vs| vs.iter().filter(|v| v["storage"].as_bool() == Some(true)).map(|v| v["name"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
    })
}
