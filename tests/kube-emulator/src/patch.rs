//! Patch semantics: JSON merge patch, strategic merge patch (a pragmatic subset: lists of
//! objects merge by `name`/`type`, `$patch` directives), and server-side apply with
//! `managedFields`: field sets per manager, conflicts (409 unless forced), and removal of
//! fields a manager stops applying when nobody else owns them.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// One path element in a field set, in `fieldsV1` spelling (`f:spec`, `k:{"type":"Ready"}`, `v:"x"`).
pub type FieldPath = Vec<String>;
pub type FieldSet = BTreeSet<FieldPath>;

/// Which part of an object a write may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything except `status` (when the type has a status subresource).
    Main { status_subresource: bool },
    /// Only `status`.
    Status,
}

impl Scope {
    pub fn subresource(self) -> Option<&'static str> {
        match self {
            Scope::Status => Some("status"),
            Scope::Main { .. } => None,
        }
    }
}

/// A field owned by another manager with a different value.
#[derive(Clone, Debug, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub field: String,
    /// The conflicting entry's operation (`Apply` or `Update`) and apiVersion.
    pub operation: String,
    pub api_version: String,
    pub subresource: Option<String>,
}

/// JSON merge patch (RFC 7386).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// JSON patch (RFC 6902), with the API server's leniency: a `test` for `null` passes when the
/// path does not exist (kube-runtime's finalizer helper relies on it).
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let ops: Vec<Value> =
        serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
    for op in ops {
        if op.get("op").and_then(Value::as_str) == Some("test")
            && op.get("value").is_none_or(Value::is_null)
            && op
                .get("path")
                .and_then(Value::as_str)
                .is_some_and(|p| target.pointer(p).is_none_or(Value::is_null))
        {
            continue;
        }
        let one: json_patch::Patch = serde_json::from_value(Value::Array(vec![op]))
            .map_err(|e| format!("invalid JSON patch: {e}"))?;
        json_patch::patch(target, &one).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Strategic merge patch for built-in kinds (no schema metadata: lists of objects that carry
/// `name` — or `type`, for conditions — merge by that key, other lists are replaced).
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            if p.get("$patch").and_then(Value::as_str) == Some("replace") {
                let mut clean = p.clone();
                clean.remove("$patch");
                *t = clean;
                return;
            }
            for (k, v) in p {
                if k.starts_with('$') {
                    continue;
                }
                if v.is_null() {
                    t.remove(k);
                    continue;
                }
                if v.get("$patch").and_then(Value::as_str) == Some("delete") {
                    t.remove(k);
                    continue;
                }
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        strategic_merge(existing, v)
                    }
                    Some(Value::Array(existing)) if v.is_array() => {
                        if let Some(merged) = merge_list(
                            existing,
                            v.as_array().map(Vec::as_slice).unwrap_or_default(),
                        ) {
                            *existing = merged;
                        } else {
                            t.insert(k.clone(), strip_directives(v));
                        }
                    }
                    _ => {
                        t.insert(k.clone(), strip_directives(v));
                    }
                }
            }
        }
        (t, p) => *t = strip_directives(p),
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn merge_list(existing: &[Value], patch: &[Value]) -> Option<Vec<Value>> {
    let key = ["name", "type"].into_iter().find(|k| {
        !patch.is_empty()
            && patch
                .iter()
                .all(|i| i.get(*k).is_some_and(Value::is_string))
            && existing
                .iter()
                .all(|i| i.get(*k).is_some_and(Value::is_string))
    })?;
    let mut out = existing.to_vec();
    for item in patch {
        let id = &item[key];
        let pos = out.iter().position(|e| &e[key] == id);
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (Some(i), false) => strategic_merge(&mut out[i], item),
            (None, false) => out.push(strip_directives(item)),
            (None, true) => {}
        }
    }
    Some(out)
}

/// The schema node of a child (`properties`, then `additionalProperties`).
fn child_schema<'a>(schema: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    let s = schema?;
    s.get("properties")
        .and_then(|p| p.get(key))
        .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
}

fn list_map_keys(schema: Option<&Value>) -> Option<Vec<String>> {
    let s = schema?;
    if s.get("x-kubernetes-list-type").and_then(Value::as_str) != Some("map") {
        return None;
    }
    s.get("x-kubernetes-list-map-keys")?.as_array().map(|a| {
        a.iter()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect()
    })
}

fn is_set(schema: Option<&Value>) -> bool {
    schema
        .and_then(|s| s.get("x-kubernetes-list-type"))
        .and_then(Value::as_str)
        == Some("set")
}

fn item_key(item: &Value, keys: &[String]) -> String {
    let mut m = Map::new();
    for k in keys {
        if let Some(v) = item.get(k) {
            m.insert(k.clone(), v.clone());
        }
    }
    format!("k:{}", Value::Object(m))
}

/// The fields an object sets, restricted to `scope`.
pub fn field_set(object: &Value, schema: Option<&Value>, scope: Scope) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(map) = object.as_object() else {
        return out;
    };
    for (k, v) in map {
        let include = match scope {
            Scope::Status => k == "status",
            Scope::Main { status_subresource } => {
                !(k == "apiVersion" || k == "kind" || (status_subresource && k == "status"))
            }
        };
        if !include {
            continue;
        }
        if k == "metadata" {
            if let Some(meta) = v.as_object() {
                for mk in ["labels", "annotations", "finalizers", "ownerReferences"] {
                    if let Some(mv) = meta.get(mk) {
                        collect(
                            mv,
                            None,
                            vec!["f:metadata".into(), format!("f:{mk}")],
                            &mut out,
                        );
                    }
                }
            }
            continue;
        }
        collect(v, child_schema(schema, k), vec![format!("f:{k}")], &mut out);
    }
    out
}

fn collect(value: &Value, schema: Option<&Value>, prefix: FieldPath, out: &mut FieldSet) {
    match value {
        Value::Object(m)
            if !m.is_empty()
                && schema
                    .and_then(|s| s.get("x-kubernetes-map-type"))
                    .and_then(Value::as_str)
                    != Some("atomic") =>
        {
            for (k, v) in m {
                let mut p = prefix.clone();
                p.push(format!("f:{k}"));
                collect(v, child_schema(schema, k), p, out);
            }
        }
        Value::Array(items) => {
            if let Some(keys) = list_map_keys(schema) {
                let item_schema = schema.and_then(|s| s.get("items"));
                for item in items {
                    let mut p = prefix.clone();
                    p.push(item_key(item, &keys));
                    out.insert(p.clone());
                    if let Some(m) = item.as_object() {
                        for (k, v) in m {
                            let mut pp = p.clone();
                            pp.push(format!("f:{k}"));
                            collect(v, child_schema(item_schema, k), pp, out);
                        }
                    }
                }
            } else if is_set(schema) {
                for item in items {
                    let mut p = prefix.clone();
                    p.push(format!("v:{item}"));
                    out.insert(p);
                }
            } else {
                out.insert(prefix);
            }
        }
        _ => {
            out.insert(prefix);
        }
    }
}

/// The value at a field path, if present.
pub fn value_at<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = object;
    for el in path {
        cur = step(cur, el)?;
    }
    Some(cur)
}

fn step<'a>(cur: &'a Value, el: &str) -> Option<&'a Value> {
    if let Some(name) = el.strip_prefix("f:") {
        cur.get(name)
    } else if let Some(k) = el.strip_prefix("k:") {
        let want: Map<String, Value> = serde_json::from_str(k).ok()?;
        cur.as_array()?
            .iter()
            .find(|i| want.iter().all(|(wk, wv)| i.get(wk) == Some(wv)))
    } else if let Some(v) = el.strip_prefix("v:") {
        let want: Value = serde_json::from_str(v).ok()?;
        cur.as_array()?.iter().find(|i| **i == want)
    } else {
        None
    }
}

/// Removes the field at `path` (a map key, or a list item matched by key or value).
pub fn remove_at(object: &mut Value, path: &[String]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let mut cur = object;
    for el in parent_path {
        let next = if let Some(name) = el.strip_prefix("f:") {
            cur.get_mut(name)
        } else if let Some(k) = el.strip_prefix("k:") {
            let Ok(want) = serde_json::from_str::<Map<String, Value>>(k) else {
                return;
            };
            cur.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|i| want.iter().all(|(wk, wv)| i.get(wk) == Some(wv)))
            })
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(name) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(name);
        }
    } else if let Some(k) = last.strip_prefix("k:") {
        if let (Ok(want), Some(a)) = (
            serde_json::from_str::<Map<String, Value>>(k),
            cur.as_array_mut(),
        ) {
            a.retain(|i| !want.iter().all(|(wk, wv)| i.get(wk) == Some(wv)));
        }
    } else if let Some(v) = last.strip_prefix("v:")
        && let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(v), cur.as_array_mut())
    {
        a.retain(|i| *i != want);
    }
}

/// `.spec.provider`, `.status.conditions[type="Ready"]` — how conflicts name fields.
pub fn display_path(path: &[String]) -> String {
    let mut out = String::new();
    for el in path {
        if let Some(name) = el.strip_prefix("f:") {
            out.push('.');
            out.push_str(name);
        } else if let Some(k) = el.strip_prefix("k:") {
            let inner = serde_json::from_str::<Map<String, Value>>(k)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            out.push_str(&format!("[{inner}]"));
        } else if let Some(v) = el.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        }
    }
    out
}

/// Deep merge of an applied configuration into the live object.
fn merge_applied(live: &mut Value, applied: &Value, schema: Option<&Value>) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, v) in a {
                let sub = child_schema(schema, k);
                match l.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        merge_applied(existing, v, sub)
                    }
                    Some(Value::Array(existing))
                        if v.is_array() && list_map_keys(sub).is_some() =>
                    {
                        let keys = list_map_keys(sub).unwrap_or_default();
                        let item_schema = sub.and_then(|s| s.get("items"));
                        for item in v.as_array().into_iter().flatten() {
                            let id = item_key(item, &keys);
                            let pos = existing.iter().position(|e| item_key(e, &keys) == id);
                            match pos {
                                Some(i) => merge_applied(&mut existing[i], item, item_schema),
                                None => existing.push(item.clone()),
                            }
                        }
                    }
                    _ => {
                        l.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (l, a) => *l = a.clone(),
    }
}

/// One `metadata.managedFields` entry.
#[derive(Clone, Debug)]
pub struct ManagedEntry {
    pub manager: String,
    pub operation: String,
    pub subresource: Option<String>,
    pub api_version: String,
    pub time: String,
    pub fields: FieldSet,
}

pub fn read_managed(object: &Value) -> Vec<ManagedEntry> {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| {
            let mut fields = FieldSet::new();
            if let Some(f) = e.get("fieldsV1") {
                parse_fields(f, Vec::new(), &mut fields);
            }
            ManagedEntry {
                manager: e["manager"].as_str().unwrap_or_default().to_string(),
                operation: e["operation"].as_str().unwrap_or("Update").to_string(),
                subresource: e["subresource"].as_str().map(str::to_string),
                api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
                time: e["time"].as_str().unwrap_or_default().to_string(),
                fields,
            }
        })
        .collect()
}

fn parse_fields(node: &Value, prefix: FieldPath, out: &mut FieldSet) {
    let Some(m) = node.as_object() else {
        return;
    };
    if m.is_empty() {
        if !prefix.is_empty() {
            out.insert(prefix);
        }
        return;
    }
    for (k, v) in m {
        if k == "." {
            out.insert(prefix.clone());
            continue;
        }
        let mut p = prefix.clone();
        p.push(k.clone());
        parse_fields(v, p, out);
    }
}

fn fields_v1(set: &FieldSet) -> Value {
    #[derive(Default)]
    struct Node {
        owned: bool,
        children: BTreeMap<String, Node>,
    }
    let mut root = Node::default();
    for path in set {
        let mut cur = &mut root;
        for el in path {
            cur = cur.children.entry(el.clone()).or_default();
        }
        cur.owned = true;
    }
    fn render(n: &Node) -> Value {
        let mut m = Map::new();
        if n.owned && !n.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, c) in &n.children {
            m.insert(k.clone(), render(c));
        }
        Value::Object(m)
    }
    render(&root)
}

pub fn write_managed(object: &mut Value, entries: &[ManagedEntry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": fields_v1(&e.fields),
            });
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn scope_matches(entry: &ManagedEntry, scope: Scope) -> bool {
    entry.subresource.as_deref() == scope.subresource()
}

/// Server-side apply of `applied` by `manager` onto `live` (or a new object when `None`).
/// Returns the merged object with updated `managedFields`, or the conflicts.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    schema: Option<&Value>,
    scope: Scope,
    api_version: &str,
) -> Result<Value, Vec<Conflict>> {
    let new_set = field_set(applied, schema, scope);
    let mut entries = live.map(read_managed).unwrap_or_default();
    let mut result = live.cloned().unwrap_or_else(
        || json!({"apiVersion": applied["apiVersion"], "kind": applied["kind"], "metadata": {}}),
    );

    let mut conflicts = Vec::new();
    for e in entries.iter().filter(|e| {
        !(e.manager == manager && e.operation == "Apply")
            && (scope_matches(e, scope) || e.subresource.is_none() && scope == Scope::Status)
    }) {
        for p in e.fields.intersection(&new_set) {
            if p.last().is_some_and(|l| l.starts_with("k:")) {
                continue;
            }
            if value_at(&result, p) != value_at(applied, p) {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    field: display_path(p),
                    operation: e.operation.clone(),
                    api_version: e.api_version.clone(),
                    subresource: e.subresource.clone(),
                });
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            return Err(conflicts);
        }
        for e in entries.iter_mut() {
            if !(e.manager == manager && e.operation == "Apply") {
                e.fields.retain(|p| {
                    !new_set.contains(p) || value_at(&result, p) == value_at(applied, p)
                });
            }
        }
    }

    let old_set = entries
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply" && scope_matches(e, scope))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    for p in old_set.difference(&new_set) {
        let owned_elsewhere = entries.iter().any(|e| {
            !(e.manager == manager && e.operation == "Apply" && scope_matches(e, scope))
                && e.fields.iter().any(|q| q.starts_with(p))
        }) || new_set.iter().any(|q| q.starts_with(p));
        if !owned_elsewhere {
            remove_at(&mut result, p);
        }
    }

    let mut filtered = applied.clone();
    if let Some(m) = filtered.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        match scope {
            Scope::Status => m.retain(|k, _| k == "status"),
            Scope::Main { status_subresource } => {
                if status_subresource {
                    m.remove("status");
                }
                if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.retain(|k, _| {
                        matches!(
                            k.as_str(),
                            "labels" | "annotations" | "finalizers" | "ownerReferences"
                        )
                    });
                }
            }
        }
    }
    merge_applied(&mut result, &filtered, schema);

    let now = crate::store::now_rfc3339();
    match entries
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == "Apply" && scope_matches(e, scope))
    {
        Some(e) => {
            e.fields = new_set;
            e.time = now;
            e.api_version = api_version.to_string();
        }
        None => entries.push(ManagedEntry {
            manager: manager.to_string(),
            operation: "Apply".into(),
            subresource: scope.subresource().map(str::to_string),
            api_version: api_version.to_string(),
            time: now,
            fields: new_set,
        }),
    }
    write_managed(&mut result, &entries);
    Ok(result)
}

/// Records a non-apply write (create/update/patch) by `manager`: the fields it changed become
/// its own (operation `Update`) and leave every other manager's set.
pub fn track_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    schema: Option<&Value>,
    scope: Scope,
    api_version: &str,
) {
    let mut entries = old.map(read_managed).unwrap_or_default();
    let new_set = field_set(new, schema, scope);
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| old.and_then(|o| value_at(o, p)) != value_at(new, p))
        .cloned()
        .collect();
    for e in entries.iter_mut() {
        let in_scope = scope_matches(e, scope);
        e.fields.retain(|p| {
            let gone = in_scope && !new_set.contains(p) && value_at(new, p).is_none();
            !(changed.contains(p) && !(e.manager == manager && e.operation == "Update")) && !gone
        });
    }
    if !changed.is_empty() {
        let now = crate::store::now_rfc3339();
        match entries
            .iter_mut()
            .find(|e| e.manager == manager && e.operation == "Update" && scope_matches(e, scope))
        {
            Some(e) => {
                e.fields.extend(changed);
                e.time = now;
            }
            None => entries.push(ManagedEntry {
                manager: manager.to_string(),
                operation: "Update".into(),
                subresource: scope.subresource().map(str::to_string),
                api_version: api_version.to_string(),
                time: now,
                fields: changed,
            }),
        }
    }
    write_managed(new, &entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: Scope = Scope::Main {
        status_subresource: true,
    };

    #[test]
    fn two_managers_keep_their_own_fields() {
        let a = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}});
        let obj = apply(None, &a, "alice", false, None, MAIN, "v1").expect("first apply");
        let b = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"b": "2"}});
        let obj = apply(Some(&obj), &b, "bob", false, None, MAIN, "v1").expect("second apply");
        assert_eq!(obj["data"], json!({"a": "1", "b": "2"}));
        // alice stops applying `a`: it goes, bob's `b` stays.
        let a2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"c": "3"}});
        let obj = apply(Some(&obj), &a2, "alice", false, None, MAIN, "v1").expect("third apply");
        assert_eq!(obj["data"], json!({"b": "2", "c": "3"}));
    }

    #[test]
    fn conflicting_value_is_refused_unless_forced() {
        let a = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}});
        let obj = apply(None, &a, "alice", false, None, MAIN, "v1").expect("first apply");
        let b = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "2"}});
        let err = apply(Some(&obj), &b, "bob", false, None, MAIN, "v1").expect_err("conflict");
        assert_eq!(
            err,
            vec![Conflict {
                manager: "alice".into(),
                field: ".data.a".into(),
                operation: "Apply".into(),
                api_version: "v1".into(),
                subresource: None,
            }]
        );
        let forced = apply(Some(&obj), &b, "bob", true, None, MAIN, "v1").expect("forced");
        assert_eq!(forced["data"]["a"], "2");
        let managers: Vec<_> = read_managed(&forced)
            .into_iter()
            .map(|e| e.manager)
            .collect();
        assert_eq!(managers, vec!["bob".to_string()]);
    }

    #[test]
    fn list_map_items_merge_by_key() {
        let schema = json!({"properties": {"status": {"properties": {"conditions": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"], "items": {"type": "object"}}}}}});
        let a = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let obj = apply(
            Some(&json!({"metadata": {}})),
            &a,
            "ctl",
            false,
            Some(&schema),
            Scope::Status,
            "v1",
        )
        .expect("apply");
        let b = json!({"status": {"conditions": [{"type": "Degraded", "status": "False"}]}});
        let obj = apply(
            Some(&obj),
            &b,
            "rcv",
            false,
            Some(&schema),
            Scope::Status,
            "v1",
        )
        .expect("apply");
        assert_eq!(
            obj["status"]["conditions"].as_array().map(Vec::len),
            Some(2)
        );
    }

    #[test]
    fn json_patch_test_for_null_passes_on_a_missing_field() {
        let mut obj = json!({"metadata": {"name": "x"}});
        let p = json!([{"op": "test", "path": "/metadata/finalizers", "value": null}, {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]);
        json_patch(&mut obj, &p).expect("patch");
        assert_eq!(obj["metadata"]["finalizers"], json!(["f"]));
        let stale = json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "other"}]);
        assert!(json_patch(&mut obj, &stale).is_err());
    }

    #[test]
    fn strategic_merge_merges_named_lists() {
        let mut t = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        strategic_merge(
            &mut t,
            &json!({"spec": {"containers": [{"name": "b", "image": "z"}]}}),
        );
        assert_eq!(t["spec"]["containers"][1]["image"], "z");
        assert_eq!(t["spec"]["containers"][0]["image"], "x");
    }
}
