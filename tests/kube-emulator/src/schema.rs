//! CRD structural schemas: pruning of unknown fields, defaults, OpenAPI validation and CEL
//! `x-kubernetes-validations` (through `kube-cel`, which implements Kubernetes' CEL libraries
//! such as `isCIDR`). Errors carry the real server's wording so kubectl prints what it would.

use serde_json::{Map, Value};

/// One field error, rendered like `k8s.io/apimachinery/pkg/util/validation/field.Error`.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub reason: &'static str,
    /// The part after `field: `, e.g. `Invalid value: 0: spec.x in body should be …`.
    pub detail: String,
}

impl FieldError {
    pub fn invalid(field: &str, value: &Value, detail: impl std::fmt::Display) -> Self {
        FieldError {
            field: field.to_string(),
            reason: "FieldValueInvalid",
            detail: format!("Invalid value: {}: {detail}", display_value(value)),
        }
    }

    pub fn required(field: &str) -> Self {
        FieldError {
            field: field.to_string(),
            reason: "FieldValueRequired",
            detail: "Required value".to_string(),
        }
    }

    pub fn rendered(&self) -> String {
        if self.field.is_empty() {
            format!("<nil>: {}", self.detail)
        } else {
            format!("{}: {}", self.field, self.detail)
        }
    }
}

/// How the API server prints a bad value inside `Invalid value: …`.
pub fn display_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".to_string(),
        Value::Array(_) => "\"array\"".to_string(),
        Value::Null => "\"null\"".to_string(),
        other => other.to_string(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Removes fields the schema does not declare (unless `x-kubernetes-preserve-unknown-fields`)
/// and `null`s of non-nullable fields; returns the dotted paths of dropped unknown fields.
pub fn prune(schema: &Value, object: &mut Value) -> Vec<String> {
    let mut unknown = Vec::new();
    if let Value::Object(map) = object {
        let props = schema.get("properties").and_then(Value::as_object);
        let keys: Vec<String> = map.keys().cloned().collect();
        for key in keys {
            if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match props.and_then(|p| p.get(&key)) {
                Some(sub) => {
                    if let Some(v) = map.get_mut(&key) {
                        if v.is_null() && sub.get("nullable").and_then(Value::as_bool) != Some(true)
                        {
                            map.remove(&key);
                        } else {
                            prune_node(sub, v, &key, &mut unknown);
                        }
                    }
                }
                None if preserves(schema) => {}
                None => {
                    map.remove(&key);
                    unknown.push(key);
                }
            }
        }
    }
    unknown
}

fn preserves(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
}

fn prune_node(schema: &Value, value: &mut Value, path: &str, unknown: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            if props.is_none() && additional.is_none() {
                if !preserves(schema)
                    && schema.get("type").and_then(Value::as_str) == Some("object")
                {
                    for k in map.keys() {
                        unknown.push(join(path, k));
                    }
                    map.clear();
                }
                return;
            }
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let sub = props.and_then(|p| p.get(&key)).or(additional);
                match sub {
                    Some(sub) => {
                        if let Some(v) = map.get_mut(&key) {
                            if v.is_null()
                                && sub.get("nullable").and_then(Value::as_bool) != Some(true)
                            {
                                map.remove(&key);
                            } else {
                                prune_node(sub, v, &join(path, &key), unknown);
                            }
                        }
                    }
                    None if preserves(schema) => {}
                    None => {
                        map.remove(&key);
                        unknown.push(join(path, &key));
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_node(item_schema, item, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Applies schema `default`s where the parent object exists and the field is absent.
#[cfg(test)]
fn apply_defaults(schema: &Value, object: &Value) -> Value {
    apply_defaults_owned(schema, object.clone())
}

/// CRD defaults on an object the caller owns, filled in place. The same
/// walk as `kube_cel::apply_defaults` (which copies every object level it passes through,
/// so each level's subtree was copied once per level above it: on every read and watch
/// event of a custom resource, most of the emulator's time at 10,000 integrations).
pub fn apply_defaults_owned(schema: &Value, mut object: Value) -> Value {
    default_in_place(schema, &mut object, 0);
    object
}

/// `kube_cel`'s schema depth limit: deeper values are left as they are.
const MAX_DEFAULT_DEPTH: usize = 64;

fn default_in_place(schema: &Value, value: &mut Value, depth: usize) {
    if depth > MAX_DEFAULT_DEPTH {
        return;
    }
    match value {
        Value::Object(obj) => {
            let preserve_unknown = schema
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                == Some(true);
            let additional = if preserve_unknown {
                None
            } else {
                schema.get("additionalProperties").filter(|a| a.is_object())
            };
            let empty = serde_json::Map::new();
            let props = schema
                .get("properties")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            if props.is_empty() && additional.is_none() {
                return;
            }
            // Existing children first: defaults inserted below are not walked into, as
            // upstream's walk recurses only into the keys the object had.
            for (key, child) in obj.iter_mut() {
                if let Some(prop_schema) = props.get(key) {
                    default_in_place(prop_schema, child, depth + 1);
                } else if let Some(add_schema) = additional {
                    default_in_place(add_schema, child, depth + 1);
                }
            }
            for (key, prop_schema) in props {
                if !obj.contains_key(key)
                    && let Some(default) = prop_schema.get("default")
                {
                    obj.insert(key.clone(), default.clone());
                }
            }
        }
        Value::Array(items) => {
            if let Some(items_schema) = schema.get("items") {
                for item in items {
                    default_in_place(items_schema, item, depth + 1);
                }
            }
        }
        _ => {}
    }
}

/// OpenAPI validation of the whole object (root level: everything except apiVersion/kind/metadata).
pub fn validate(schema: &Value, object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let (Some(props), Some(map)) = (
        schema.get("properties").and_then(Value::as_object),
        object.as_object(),
    ) {
        for (key, sub) in props {
            if let Some(v) = map.get(key) {
                validate_node(sub, v, key, &mut errors);
            }
        }
        required(schema, map, "", &mut errors);
    }
    errors
}

fn required(schema: &Value, map: &Map<String, Value>, path: &str, errors: &mut Vec<FieldError>) {
    for r in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !map.contains_key(r) {
            errors.push(FieldError::required(&join(path, r)));
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn num_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

fn validate_node(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) {
            errors.push(FieldError::invalid(
                path,
                &Value::String("null".into()),
                format!(
                    "{path} in body must be of type {}: \"null\"",
                    schema
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("object")
                ),
            ));
        }
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let have = type_name(value);
        let ok = have == t
            || (t == "number" && have == "integer")
            || int_or_string && (have == "integer" || have == "string");
        if !ok {
            let mut e = FieldError::invalid(
                path,
                &Value::String(have.to_string()),
                format!("{path} in body must be of type {t}: \"{have}\""),
            );
            e.reason = "FieldValueTypeInvalid";
            errors.push(e);
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list = allowed
            .iter()
            .map(|v| match v {
                Value::String(s) => format!("{s:?}"),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        errors.push(FieldError {
            field: path.to_string(),
            reason: "FieldValueNotSupported",
            detail: format!(
                "Unsupported value: {}: supported values: {list}",
                display_value(value)
            ),
        });
    }
    match value {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                let excl = schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
                if x < min || (excl && x == min) {
                    let rel = if excl {
                        "greater than"
                    } else {
                        "greater than or equal to"
                    };
                    errors.push(FieldError::invalid(
                        path,
                        value,
                        format!("{path} in body should be {rel} {}", num_text(min)),
                    ));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                let excl = schema.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
                if x > max || (excl && x == max) {
                    let rel = if excl {
                        "less than"
                    } else {
                        "less than or equal to"
                    };
                    errors.push(FieldError::invalid(
                        path,
                        value,
                        format!("{path} in body should be {rel} {}", num_text(max)),
                    ));
                }
            }
            if schema.get("format").and_then(Value::as_str) == Some("int32")
                && (x > i32::MAX as f64 || x < i32::MIN as f64)
            {
                errors.push(FieldError::invalid(
                    path,
                    value,
                    format!("{path} in body must be of type int32: \"{}\"", num_text(x)),
                ));
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                errors.push(FieldError {
                    field: path.to_string(),
                    reason: "FieldValueTooLong",
                    detail: format!("Too long: may not be more than {max} bytes"),
                });
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                errors.push(FieldError::invalid(
                    path,
                    value,
                    format!("{path} in body should be at least {min} chars long"),
                ));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                match regex_lite_match(pattern, s) {
                    Some(true) | None => {}
                    Some(false) => errors.push(FieldError::invalid(
                        path,
                        value,
                        format!("{path} in body should match '{pattern}'"),
                    )),
                }
            }
            if let Some(format) = schema.get("format").and_then(Value::as_str) {
                let ok = match format {
                    "date-time" => s.parse::<jiff::Timestamp>().is_ok(),
                    "date" => s.parse::<jiff::civil::Date>().is_ok(),
                    "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
                    "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
                    "cidr" => crate::schema::is_cidr(s),
                    "byte" => {
                        use base64::Engine;
                        base64::engine::general_purpose::STANDARD.decode(s).is_ok()
                    }
                    _ => true,
                };
                if !ok {
                    errors.push(FieldError::invalid(
                        path,
                        value,
                        format!("{path} in body must be of type {format}: {s:?}"),
                    ));
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > max
            {
                errors.push(FieldError {
                    field: path.to_string(),
                    reason: "FieldValueTooMany",
                    detail: format!("Too many: {}: must have at most {max} items", items.len()),
                });
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                errors.push(FieldError::invalid(
                    path,
                    value,
                    format!("{path} in body should have at least {min} items"),
                ));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate_node(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(map) => {
            if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
                && map.len() as u64 > max
            {
                errors.push(FieldError {
                    field: path.to_string(),
                    reason: "FieldValueTooMany",
                    detail: format!("Too many: {}: must have at most {max} items", map.len()),
                });
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, v) in map {
                if let Some(sub) = props.and_then(|p| p.get(k)).or(additional) {
                    validate_node(sub, v, &join(path, k), errors);
                }
            }
            required(schema, map, path, errors);
        }
        _ => {}
    }
}

/// Evaluates `pattern` with the CEL library's regex engine (RE2 syntax, like the API server's);
/// `None` when the pattern does not compile (the CRD would have been rejected).
fn regex_lite_match(pattern: &str, s: &str) -> Option<bool> {
    use kube_cel::cel::{Context, Program, Value as CelValue};
    let program = Program::compile("s.matches(p)").ok()?;
    let mut ctx = Context::default();
    ctx.add_variable_from_value("s", CelValue::String(s.to_string().into()));
    ctx.add_variable_from_value("p", CelValue::String(pattern.to_string().into()));
    match program.execute(&ctx) {
        Ok(CelValue::Bool(b)) => Some(b),
        _ => None,
    }
}

pub fn is_cidr(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else {
        return false;
    };
    let Ok(bits) = bits.parse::<u8>() else {
        return false;
    };
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => bits <= 32,
        Ok(std::net::IpAddr::V6(_)) => bits <= 128,
        Err(_) => false,
    }
}

thread_local! {
    /// Registering Kubernetes' CEL libraries is costly; one validator per server thread.
    static VALIDATOR: kube_cel::Validator = kube_cel::Validator::new();
}

/// Runs every `x-kubernetes-validations` rule (transition rules see `old`), from rules compiled
/// once per CRD version.
pub fn validate_cel(
    compiled: &kube_cel::CompiledSchema,
    object: &Value,
    old: Option<&Value>,
    api_version: &str,
    group: &str,
    kind: &str,
) -> Vec<FieldError> {
    let root = kube_cel::RootContext {
        api_version: api_version.to_string(),
        api_group: group.to_string(),
        kind: kind.to_string(),
    };
    let result =
        VALIDATOR.with(|v| v.validate_compiled_with_context(compiled, object, old, Some(&root)));
    match result {
        Ok(()) => Vec::new(),
        Err(errs) => {
            errs.into_vec()
                .into_iter()
                .map(|e| {
                    let field = e.field_path.trim_start_matches('.').to_string();
                    let message = match e.kind {
                        kube_cel::ErrorKind::ValidationFailure
                        | kube_cel::ErrorKind::InvalidResult => e.message.clone(),
                        _ => format!("rule {:?} could not be evaluated: {}", e.rule, e.message),
                    };
                    // kube-apiserver v1.36 shows no value here (measured: `spec: Invalid
                    // value: <message>`; older servers showed the node's type, `"object"`).
                    FieldError {
                        field,
                        reason: "FieldValueInvalid",
                        detail: format!("Invalid value: {message}"),
                    }
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn minimum_is_worded_like_the_api_server() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {"limits": {"type": "object", "properties": {"burst": {"type": "integer", "minimum": 1.0}}}}}}});
        let errs = validate(&schema, &json!({"spec": {"limits": {"burst": 0}}}));
        assert_eq!(
            errs[0].rendered(),
            "spec.limits.burst: Invalid value: 0: spec.limits.burst in body should be greater than or equal to 1"
        );
    }

    #[test]
    fn pruning_drops_undeclared_fields_but_keeps_preserved_ones() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {"a": {"type": "string"}, "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}});
        let mut obj = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {}, "spec": {"a": "x", "bogus": 1, "free": {"any": 2}}, "other": 3});
        let mut unknown = prune(&schema, &mut obj);
        unknown.sort();
        assert_eq!(unknown, vec!["other".to_string(), "spec.bogus".to_string()]);
        assert_eq!(obj["spec"]["free"]["any"], 2);
    }

    #[test]
    fn defaults_in_place_match_kube_cel() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {
                "a": {"type": "integer", "default": 1},
                "b": {"type": "object", "default": {"x": 1}, "properties": {"y": {"type": "integer", "default": 2}}},
                "list": {"type": "array", "items": {"type": "object", "properties": {"z": {"type": "string", "default": "z"}}}},
                "map": {"type": "object", "additionalProperties": {"type": "object", "properties": {"m": {"type": "integer", "default": 3}}}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "additionalProperties": {"type": "object", "properties": {"n": {"default": 4}}}},
            }},
            "status": {"type": "object", "properties": {"count": {"type": "integer", "default": 0}}},
        }});
        for object in [
            json!({}),
            json!({"spec": {}}),
            json!({"spec": {"b": {}, "list": [{}, {"z": "q"}], "map": {"k": {}}, "free": {"k": {}}}, "status": {}}),
            json!({"metadata": {"name": "x"}, "spec": {"a": 5}, "other": [1, 2]}),
        ] {
            assert_eq!(
                apply_defaults(&schema, &object),
                kube_cel::apply_defaults(&schema, &object),
                "{object}"
            );
        }
    }

    #[test]
    fn cel_is_cidr_rejects_bad_ranges() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {"r": {"type": "array", "items": {"type": "string"}, "x-kubernetes-validations": [{"rule": "self.all(c, isCIDR(c))", "message": "must be CIDRs"}]}}}}});
        let compiled = kube_cel::compile_schema(&schema);
        let errs = validate_cel(
            &compiled,
            &json!({"spec": {"r": ["10.0.0.0/8", "nope"]}}),
            None,
            "x/v1",
            "x",
            "K",
        );
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].rendered(), "spec.r: Invalid value: must be CIDRs");
        assert!(
            validate_cel(
                &compiled,
                &json!({"spec": {"r": ["10.0.0.0/8"]}}),
                None,
                "x/v1",
                "x",
                "K"
            )
            .is_empty()
        );
    }
}
