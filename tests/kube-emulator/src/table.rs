//! `meta.k8s.io/v1` Table responses: what `kubectl get` prints. Columns come from a CRD's
//! `additionalPrinterColumns` (a JSONPath subset: fields, `[n]`, `[*]`, `[?(@.k=="v")]`), `date`
//! cells become ages the way the API server renders them.

use serde_json::{Value, json};

use crate::registry::{PrinterColumn, ResourceType};

/// Evaluates a printer-column JSONPath (`.status.conditions[?(@.type=="Ready")].status`).
pub fn json_path(object: &Value, path: &str) -> Vec<Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let path = path.strip_prefix('$').unwrap_or(path);
    let mut current = vec![object.clone()];
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            rest = &r[end..];
            if key.is_empty() {
                continue;
            }
            current = current.iter().filter_map(|v| v.get(key).cloned()).collect();
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = find_bracket_end(r) else {
                return Vec::new();
            };
            let inner = &r[..end];
            rest = &r[end + 1..];
            current = select(&current, inner);
        } else {
            return Vec::new();
        }
    }
    current
}

fn find_bracket_end(s: &str) -> Option<usize> {
    let mut depth = 0;
    let mut in_quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        match (c, in_quote) {
            ('"' | '\'', None) => in_quote = Some(c),
            (q, Some(open)) if q == open => in_quote = None,
            ('[', None) => depth += 1,
            (']', None) if depth == 0 => return Some(i),
            (']', None) => depth -= 1,
            _ => {}
        }
    }
    None
}

fn select(current: &[Value], inner: &str) -> Vec<Value> {
    let inner = inner.trim();
    if inner == "*" {
        return current
            .iter()
            .flat_map(|v| match v {
                Value::Array(a) => a.clone(),
                Value::Object(m) => m.values().cloned().collect(),
                _ => Vec::new(),
            })
            .collect();
    }
    if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
        let (lhs, want, negate) = if let Some((l, r)) = filter.split_once("!=") {
            (l, r, true)
        } else if let Some((l, r)) = filter.split_once("==") {
            (l, r, false)
        } else {
            return Vec::new();
        };
        let field = lhs.trim().trim_start_matches('@');
        let want = want.trim().trim_matches('"').trim_matches('\'');
        return current
            .iter()
            .filter_map(Value::as_array)
            .flatten()
            .filter(|item| {
                let got = json_path(item, field);
                let equal = got.first().is_some_and(|g| match g {
                    Value::String(s) => s == want,
                    other => {
                        // Numbers and booleans compare by their JSON text (`@.n==1`).
                        let text = other.to_string();
                        text == want
                    }
                });
                equal != negate
            })
            .cloned()
            .collect();
    }
    if let Ok(i) = inner.parse::<i64>() {
        return current
            .iter()
            .filter_map(Value::as_array)
            .filter_map(|a| {
                let idx = if i < 0 { a.len() as i64 + i } else { i };
                usize::try_from(idx).ok().and_then(|i| a.get(i).cloned())
            })
            .collect();
    }
    let key = inner.trim_matches('\'').trim_matches('"');
    current.iter().filter_map(|v| v.get(key).cloned()).collect()
}

/// `kubectl`'s and the API server's short age format (`45s`, `3m20s`, `5h`, `3d`).
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        let rem = s % 60;
        return if rem == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{rem}s")
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = m / 60;
    if h < 8 {
        let rem = m % 60;
        return if rem == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{rem}m")
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    let d = h / 24;
    if d < 8 {
        let rem = h % 24;
        return if rem == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{rem}h")
        };
    }
    if d < 365 * 2 {
        return format!("{d}d");
    }
    format!("{}y", d / 365)
}

fn cell(object: &Value, col: &PrinterColumn) -> Value {
    match col.json_path.as_str() {
        "#lastSeen" => {
            let when = [
                "/lastTimestamp",
                "/series/lastObservedTime",
                "/deprecatedLastTimestamp",
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find_map(|p| {
                object
                    .pointer(p)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            });
            return match when.and_then(|s| s.parse::<jiff::Timestamp>().ok()) {
                Some(ts) => json!(human_duration(
                    jiff::Timestamp::now().as_second() - ts.as_second()
                )),
                None => json!("<unknown>"),
            };
        }
        "#object" => {
            let r = object
                .get("involvedObject")
                .or_else(|| object.get("regarding"));
            let kind = r
                .and_then(|r| r["kind"].as_str())
                .unwrap_or_default()
                .to_ascii_lowercase();
            let name = r.and_then(|r| r["name"].as_str()).unwrap_or_default();
            return json!(format!("{kind}/{name}"));
        }
        "#message" => {
            return object
                .get("message")
                .or_else(|| object.get("note"))
                .cloned()
                .unwrap_or(json!(""));
        }
        _ => {}
    }
    if let Some(field) = col.json_path.strip_prefix('#') {
        return json!(
            object
                .get(field)
                .and_then(Value::as_object)
                .map(|m| m.len())
                .unwrap_or(0)
        );
    }
    let values = json_path(object, &col.json_path);
    let Some(first) = values.first() else {
        return Value::Null;
    };
    match col.type_.as_str() {
        "date" => match first
            .as_str()
            .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        {
            Some(ts) => json!(human_duration(
                jiff::Timestamp::now().as_second() - ts.as_second()
            )),
            None => json!("<unknown>"),
        },
        "integer" | "number" | "boolean" => first.clone(),
        _ => match first {
            Value::String(s) => json!(s),
            other => json!(other.to_string()),
        },
    }
}

/// `includeObject` of a Table request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

fn row_object(object: &Value, include: IncludeObject) -> Value {
    match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => object.clone(),
        IncludeObject::Metadata => partial_object_metadata(object),
    }
}

/// An object as `PartialObjectMetadata`: its metadata only (a Table row's
/// `includeObject=Metadata`, and metadata-only reads,
/// `staging/src/k8s.io/apiserver/pkg/endpoints/handlers/response.go`).
pub fn partial_object_metadata(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// A Table of `objects` with the type's columns.
pub fn table(
    rt: &ResourceType,
    objects: &[Value],
    resource_version: &str,
    include: IncludeObject,
    cont: Option<&str>,
) -> Value {
    let columns: Vec<Value> = rt
        .printer_columns
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.type_,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let cells: Vec<Value> = rt.printer_columns.iter().map(|c| cell(o, c)).collect();
            let mut row = json!({"cells": cells});
            let obj = row_object(o, include);
            if !obj.is_null() {
                row["object"] = obj;
            }
            row
        })
        .collect();
    let mut metadata = json!({"resourceVersion": resource_version});
    if let Some(c) = cont {
        metadata["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_filter_picks_the_ready_status() {
        let obj = json!({"status": {"conditions": [{"type": "Degraded", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(
            json_path(&obj, r#".status.conditions[?(@.type=="Ready")].status"#),
            vec![json!("True")]
        );
        assert!(json_path(&obj, ".status.missing").is_empty());
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(3 * 3600), "3h");
        assert_eq!(human_duration(3 * 86400), "3d");
    }
}
