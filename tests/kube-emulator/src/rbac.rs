//! RBAC evaluation for ServiceAccount callers: Roles and ClusterRoles reached through
//! RoleBindings (namespace-scoped) and ClusterRoleBindings (everywhere), matched on API group,
//! resource (`webhookintegrations/status` for subresources), verb and resourceNames.

use serde_json::Value;

use crate::store::Store;

/// Who is calling, as the authenticator established it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum User {
    /// The kubeconfig's admin token: `system:masters`, never checked.
    Admin,
    /// A ServiceAccount token.
    ServiceAccount { namespace: String, name: String },
    /// Any other user, reached by impersonation (`kubectl --as NAME --as-group G`).
    Named { name: String, groups: Vec<String> },
}

impl User {
    /// The user for an impersonated user name (`system:serviceaccount:<ns>:<name>` becomes
    /// that ServiceAccount).
    pub fn impersonated(name: &str, groups: Vec<String>) -> User {
        if let Some((ns, sa)) = name
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        {
            return User::ServiceAccount {
                namespace: ns.to_string(),
                name: sa.to_string(),
            };
        }
        User::Named {
            name: name.to_string(),
            groups,
        }
    }
}

impl User {
    pub fn username(&self) -> String {
        match self {
            User::Admin => "kubernetes-admin".to_string(),
            User::ServiceAccount { namespace, name } => {
                format!("system:serviceaccount:{namespace}:{name}")
            }
            User::Named { name, .. } => name.clone(),
        }
    }

    fn groups(&self) -> Vec<String> {
        match self {
            User::Admin => vec!["system:masters".into(), "system:authenticated".into()],
            User::ServiceAccount { namespace, .. } => vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
            User::Named { groups, .. } => {
                let mut g = groups.clone();
                g.push("system:authenticated".into());
                g
            }
        }
    }
}

/// What a request wants to do, in RBAC terms.
#[derive(Clone, Debug)]
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn rule_allows(rule: &Value, a: &Attributes<'_>) -> bool {
    let groups = strings(&rule["apiGroups"]);
    let resources = strings(&rule["resources"]);
    let verbs = strings(&rule["verbs"]);
    let names = strings(&rule["resourceNames"]);
    let wanted = match a.subresource {
        Some(sub) => format!("{}/{sub}", a.resource),
        None => a.resource.to_string(),
    };
    let resource_ok = resources.iter().any(|r| {
        *r == "*"
            || *r == wanted
            || a.subresource.is_some_and(|sub| *r == format!("*/{sub}"))
            || (a.subresource.is_some() && *r == format!("{}/*", a.resource))
    });
    groups.iter().any(|g| *g == "*" || *g == a.group)
        && resource_ok
        && verbs.iter().any(|v| *v == "*" || *v == a.verb)
        && (names.is_empty() || a.name.is_some_and(|n| names.contains(&n)))
}

fn subject_matches(subject: &Value, user: &User, binding_ns: Option<&str>) -> bool {
    let kind = subject["kind"].as_str().unwrap_or_default();
    let name = subject["name"].as_str().unwrap_or_default();
    match kind {
        "ServiceAccount" => match user {
            User::ServiceAccount {
                namespace,
                name: sa,
            } => {
                let ns = subject["namespace"]
                    .as_str()
                    .or(binding_ns)
                    .unwrap_or_default();
                ns == namespace && name == sa
            }
            _ => false,
        },
        "User" => name == user.username(),
        "Group" => user.groups().iter().any(|g| g == name),
        _ => false,
    }
}

fn role_rules<'s>(store: &'s Store, role_ref: &Value, binding_ns: Option<&str>) -> Vec<&'s Value> {
    let name = role_ref["name"].as_str().unwrap_or_default();
    let role = match role_ref["kind"].as_str() {
        Some("ClusterRole") => store.get("clusterroles.rbac.authorization.k8s.io", "", name),
        Some("Role") => {
            binding_ns.and_then(|ns| store.get("roles.rbac.authorization.k8s.io", ns, name))
        }
        _ => None,
    };
    role.and_then(|r| r["rules"].as_array())
        .map(|rules| rules.iter().collect())
        .unwrap_or_default()
}

/// Whether `user` may do `a`. Discovery and OpenAPI are open to every authenticated caller.
pub fn allowed(store: &Store, user: &User, a: &Attributes<'_>) -> bool {
    if *user == User::Admin || user.groups().iter().any(|g| g == "system:masters") {
        return true;
    }
    for crb in store.list("clusterrolebindings.rbac.authorization.k8s.io") {
        let subjects = crb["subjects"].as_array().into_iter().flatten();
        if subjects.clone().any(|s| subject_matches(s, user, None))
            && role_rules(store, &crb["roleRef"], None)
                .iter()
                .any(|r| rule_allows(r, a))
        {
            return true;
        }
    }
    if let Some(ns) = a.namespace {
        for rb in store.list("rolebindings.rbac.authorization.k8s.io") {
            if rb.pointer("/metadata/namespace").and_then(Value::as_str) != Some(ns) {
                continue;
            }
            let subjects = rb["subjects"].as_array().into_iter().flatten();
            if subjects.clone().any(|s| subject_matches(s, user, Some(ns)))
                && role_rules(store, &rb["roleRef"], Some(ns))
                    .iter()
                    .any(|r| rule_allows(r, a))
            {
                return true;
            }
        }
    }
    false
}

/// The real server's 403 message.
pub fn forbidden_message(user: &User, a: &Attributes<'_>, qualified_resource: &str) -> String {
    let resource = match a.subresource {
        Some(sub) => format!("{}/{sub}", a.resource),
        None => a.resource.to_string(),
    };
    let scope = match a.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    let subject = match a.name {
        Some(n) => format!("{qualified_resource} \"{n}\" is forbidden"),
        None => format!("{qualified_resource} is forbidden"),
    };
    format!(
        "{subject}: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
        user.username(),
        a.verb,
        a.group
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn role_binding_grants_only_listed_subresource_in_its_namespace() {
        let mut store = Store::new();
        let rv = store.next_rv();
        store.put("roles.rbac.authorization.k8s.io", "apps", "status-writer", json!({"rules": [{"apiGroups": ["hookwarden.dev"], "resources": ["webhookintegrations/status"], "verbs": ["patch"]}]}), rv);
        store.put("rolebindings.rbac.authorization.k8s.io", "apps", "b", json!({"metadata": {"namespace": "apps"}, "roleRef": {"kind": "Role", "name": "status-writer"}, "subjects": [{"kind": "ServiceAccount", "name": "rcv"}]}), rv);
        let user = User::ServiceAccount {
            namespace: "apps".into(),
            name: "rcv".into(),
        };
        let mut a = Attributes {
            verb: "patch",
            group: "hookwarden.dev",
            resource: "webhookintegrations",
            subresource: Some("status"),
            namespace: Some("apps"),
            name: Some("x"),
        };
        assert!(allowed(&store, &user, &a));
        a.subresource = None;
        assert!(!allowed(&store, &user, &a));
        a.subresource = Some("status");
        a.namespace = Some("other");
        assert!(!allowed(&store, &user, &a));
    }
}
