//! Decoding of the Kubernetes protobuf envelope for the few kinds that client-go's *typed*
//! clients send as protobuf (`kubectl create namespace|secret|configmap|serviceaccount|role…`,
//! Helm's release Secrets). Responses stay JSON, which those clients accept.

use base64::Engine;
use serde_json::{Map, Value, json};

const MAGIC: &[u8] = b"k8s\0";

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(out);
        }
    }
    Err("varint too long".into())
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, String> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (field, wire) = (key >> 3, key & 7);
        let value = match wire {
            0 => Wire::Varint(varint(buf, &mut pos)?),
            1 => {
                pos += 8;
                Wire::Fixed
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).map_err(|_| "length overflow")?;
                let end = pos
                    .checked_add(len)
                    .filter(|e| *e <= buf.len())
                    .ok_or("truncated field")?;
                let b = &buf[pos..end];
                pos = end;
                Wire::Bytes(b)
            }
            5 => {
                pos += 4;
                Wire::Fixed
            }
            other => return Err(format!("unsupported wire type {other}")),
        };
        if pos > buf.len() {
            return Err("truncated message".into());
        }
        out.push((field, value));
    }
    Ok(out)
}

fn text(b: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(b).into_owned())
}

fn bytes_b64(b: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(b))
}

/// A `map<string, X>` entry: key = 1, value = 2.
fn map_entry(b: &[u8], value: fn(&[u8]) -> Value) -> Result<(String, Value), String> {
    let mut k = String::new();
    let mut v = value(&[]);
    for (f, w) in fields(b)? {
        match (f, w) {
            (1, Wire::Bytes(x)) => k = String::from_utf8_lossy(x).into_owned(),
            (2, Wire::Bytes(x)) => v = value(x),
            _ => {}
        }
    }
    Ok((k, v))
}

fn insert_map(
    obj: &mut Value,
    key: &str,
    b: &[u8],
    value: fn(&[u8]) -> Value,
) -> Result<(), String> {
    let (k, v) = map_entry(b, value)?;
    if !obj.get(key).is_some_and(Value::is_object) {
        obj[key] = json!({});
    }
    obj[key][k] = v;
    Ok(())
}

fn push(obj: &mut Value, key: &str, v: Value) {
    if !obj.get(key).is_some_and(Value::is_array) {
        obj[key] = json!([]);
    }
    if let Some(a) = obj[key].as_array_mut() {
        a.push(v);
    }
}

/// A message whose fields are all strings / repeated strings / bools, by field number.
fn simple(b: &[u8], names: &[(u64, &str, Kind)]) -> Result<Value, String> {
    let mut obj = Value::Object(Map::new());
    for (f, w) in fields(b)? {
        let Some((_, name, kind)) = names.iter().find(|(n, _, _)| *n == f) else {
            continue;
        };
        match (kind, w) {
            (Kind::Str, Wire::Bytes(x)) => obj[*name] = text(x),
            (Kind::Strs, Wire::Bytes(x)) => push(&mut obj, name, text(x)),
            (Kind::Bool, Wire::Varint(v)) => obj[*name] = json!(v != 0),
            (Kind::Int, Wire::Varint(v)) => obj[*name] = json!(v as i64),
            _ => {}
        }
    }
    Ok(obj)
}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Strs,
    Bool,
    Int,
}

fn object_meta(b: &[u8]) -> Result<Value, String> {
    let mut meta = Value::Object(Map::new());
    for (f, w) in fields(b)? {
        let Wire::Bytes(x) = w else {
            continue;
        };
        match f {
            1 => meta["name"] = text(x),
            2 => meta["generateName"] = text(x),
            3 => meta["namespace"] = text(x),
            5 => meta["uid"] = text(x),
            6 => meta["resourceVersion"] = text(x),
            11 => insert_map(&mut meta, "labels", x, text)?,
            12 => insert_map(&mut meta, "annotations", x, text)?,
            13 => push(
                &mut meta,
                "ownerReferences",
                simple(
                    x,
                    &[
                        (1, "kind", Kind::Str),
                        (3, "name", Kind::Str),
                        (4, "uid", Kind::Str),
                        (5, "apiVersion", Kind::Str),
                        (6, "controller", Kind::Bool),
                        (7, "blockOwnerDeletion", Kind::Bool),
                    ],
                )?,
            ),
            14 => push(&mut meta, "finalizers", text(x)),
            _ => {}
        }
    }
    Ok(meta)
}

fn access_review_spec(b: &[u8]) -> Result<Value, String> {
    let mut spec = json!({});
    for (f, w) in fields(b)? {
        let Wire::Bytes(x) = w else {
            continue;
        };
        match f {
            1 => {
                spec["resourceAttributes"] = simple(
                    x,
                    &[
                        (1, "namespace", Kind::Str),
                        (2, "verb", Kind::Str),
                        (3, "group", Kind::Str),
                        (4, "version", Kind::Str),
                        (5, "resource", Kind::Str),
                        (6, "subresource", Kind::Str),
                        (7, "name", Kind::Str),
                    ],
                )?
            }
            2 => {
                spec["nonResourceAttributes"] =
                    simple(x, &[(1, "path", Kind::Str), (2, "verb", Kind::Str)])?
            }
            3 => spec["user"] = text(x),
            4 => push(&mut spec, "groups", text(x)),
            _ => {}
        }
    }
    Ok(spec)
}

const POLICY_RULE: &[(u64, &str, Kind)] = &[
    (1, "verbs", Kind::Strs),
    (2, "apiGroups", Kind::Strs),
    (3, "resources", Kind::Strs),
    (4, "resourceNames", Kind::Strs),
    (5, "nonResourceURLs", Kind::Strs),
];

fn body(kind: &str, raw: &[u8]) -> Result<Value, String> {
    let mut obj = json!({});
    for (f, w) in fields(raw)? {
        let x = match w {
            Wire::Bytes(x) => x,
            Wire::Varint(v) => {
                match (kind, f) {
                    ("Secret", 5) | ("ConfigMap", 4) => obj["immutable"] = json!(v != 0),
                    ("ServiceAccount", 4) => obj["automountServiceAccountToken"] = json!(v != 0),
                    _ => {}
                }
                continue;
            }
            Wire::Fixed => continue,
        };
        match (kind, f) {
            (_, 1) => obj["metadata"] = object_meta(x)?,
            ("Secret", 2) => insert_map(&mut obj, "data", x, bytes_b64)?,
            ("Secret", 3) => obj["type"] = text(x),
            ("Secret", 4) => insert_map(&mut obj, "stringData", x, text)?,
            ("ConfigMap", 2) => insert_map(&mut obj, "data", x, text)?,
            ("ConfigMap", 3) => insert_map(&mut obj, "binaryData", x, bytes_b64)?,
            ("Namespace", 2) => obj["spec"] = simple(x, &[(1, "finalizers", Kind::Strs)])?,
            ("ServiceAccount", 2) => push(
                &mut obj,
                "secrets",
                simple(
                    x,
                    &[
                        (1, "kind", Kind::Str),
                        (2, "namespace", Kind::Str),
                        (3, "name", Kind::Str),
                    ],
                )?,
            ),
            ("ServiceAccount", 3) => push(
                &mut obj,
                "imagePullSecrets",
                simple(x, &[(1, "name", Kind::Str)])?,
            ),
            ("Role" | "ClusterRole", 2) => push(&mut obj, "rules", simple(x, POLICY_RULE)?),
            ("RoleBinding" | "ClusterRoleBinding", 2) => push(
                &mut obj,
                "subjects",
                simple(
                    x,
                    &[
                        (1, "kind", Kind::Str),
                        (2, "apiGroup", Kind::Str),
                        (3, "name", Kind::Str),
                        (4, "namespace", Kind::Str),
                    ],
                )?,
            ),
            ("RoleBinding" | "ClusterRoleBinding", 3) => {
                obj["roleRef"] = simple(
                    x,
                    &[
                        (1, "apiGroup", Kind::Str),
                        (2, "kind", Kind::Str),
                        (3, "name", Kind::Str),
                    ],
                )?
            }
            ("SelfSubjectAccessReview" | "SubjectAccessReview", 2) => {
                obj["spec"] = access_review_spec(x)?
            }
            // `k8s.io/api/authentication/v1/generated.proto` TokenRequestSpec (`kubectl create
            // token`); a boundObjectRef (3) is not kept.
            ("TokenRequest", 2) => {
                obj["spec"] = simple(
                    x,
                    &[
                        (1, "audiences", Kind::Strs),
                        (4, "expirationSeconds", Kind::Int),
                    ],
                )?
            }
            ("Lease", 2) => {
                obj["spec"] = simple(
                    x,
                    &[
                        (1, "holderIdentity", Kind::Str),
                        (2, "leaseDurationSeconds", Kind::Int),
                        (5, "leaseTransitions", Kind::Int),
                    ],
                )?
            }
            _ => {}
        }
    }
    Ok(obj)
}

/// Decodes a `k8s\0`-prefixed protobuf body into the JSON form of the object.
pub fn decode(buf: &[u8]) -> Result<Value, String> {
    let rest = buf
        .strip_prefix(MAGIC)
        .ok_or("not a Kubernetes protobuf envelope")?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (f, w) in fields(rest)? {
        match (f, w) {
            (1, Wire::Bytes(tm)) => {
                for (tf, tw) in fields(tm)? {
                    match (tf, tw) {
                        (1, Wire::Bytes(x)) => {
                            api_version = String::from_utf8_lossy(x).into_owned()
                        }
                        (2, Wire::Bytes(x)) => kind = String::from_utf8_lossy(x).into_owned(),
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(x)) => raw = x,
            _ => {}
        }
    }
    let supported = [
        "Secret",
        "ConfigMap",
        "Namespace",
        "ServiceAccount",
        "Role",
        "ClusterRole",
        "RoleBinding",
        "ClusterRoleBinding",
        "Lease",
        "SelfSubjectAccessReview",
        "SubjectAccessReview",
        "TokenRequest",
    ];
    if !supported.contains(&kind.as_str()) {
        return Err(format!(
            "protobuf bodies of kind {kind:?} are not supported by the emulator; send JSON (kubectl apply -f)"
        ));
    }
    let mut obj = body(&kind, raw)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![((n << 3) | 2) as u8, payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decodes_a_secret_like_kubectl_create_sends() {
        let meta = [
            field(1, b"s1"),
            field(11, &[field(1, b"app"), field(2, b"web")].concat()),
        ]
        .concat();
        let secret = [
            field(1, &meta),
            field(2, &[field(1, b"token"), field(2, b"abc")].concat()),
            field(3, b"Opaque"),
        ]
        .concat();
        let type_meta = [field(1, b"v1"), field(2, b"Secret")].concat();
        let envelope = [MAGIC.to_vec(), field(1, &type_meta), field(2, &secret)].concat();
        let obj = decode(&envelope).expect("decode");
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1", "labels": {"app": "web"}}, "data": {"token": "YWJj"}, "type": "Opaque"})
        );
    }
}
