//! `/openapi/v3`: an index of group-versions and one document per group-version, built from
//! registered CRD schemas and minimal schemas for built-ins. kubectl reads it for
//! `kubectl explain` and to learn that the server validates fields itself (`fieldValidation`
//! on PATCH), so `kubectl apply` sends `fieldValidation=Strict` instead of validating locally.

use serde_json::{Map, Value, json};

use crate::registry::{Registry, ResourceType};

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// `api/v1` or `apis/<group>/<version>` for every served group-version.
pub fn group_version_paths(registry: &Registry) -> Vec<String> {
    let mut out = vec!["api/v1".to_string()];
    for (group, versions) in registry.groups() {
        for v in versions {
            out.push(format!("apis/{group}/{v}"));
        }
    }
    out
}

pub fn index(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for p in group_version_paths(registry) {
        let hash = document(registry, &p)
            .map(|d| fnv(&d.to_string()))
            .unwrap_or_default();
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash:016X}")}),
        );
    }
    json!({"paths": paths})
}

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The schema component name, like the real server's (`dev.hookwarden.v1alpha1.WebhookIntegration`).
pub fn schema_name(rt: &ResourceType) -> String {
    if rt.crd_name.is_some() {
        let reversed: Vec<&str> = rt.group.split('.').rev().collect();
        format!("{}.{}.{}", reversed.join("."), rt.version, rt.kind)
    } else {
        let group = if rt.group.is_empty() {
            "core".to_string()
        } else {
            rt.group.trim_end_matches(".k8s.io").replace('.', "")
        };
        format!("io.k8s.api.{group}.{}.{}", rt.version, rt.kind)
    }
}

fn object_meta() -> Value {
    let s = |d: &str| json!({"type": "string", "description": d});
    json!({
        "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects users must create.",
        "type": "object",
        "properties": {
            "name": s("Name must be unique within a namespace."),
            "generateName": s("GenerateName is an optional prefix, used by the server, to generate a unique name ONLY IF the Name field has not been provided."),
            "namespace": s("Namespace defines the space within which each name must be unique."),
            "uid": s("UID is the unique in time and space value for this object."),
            "resourceVersion": s("An opaque value that represents the internal version of this object."),
            "generation": {"type": "integer", "format": "int64", "description": "A sequence number representing a specific generation of the desired state."},
            "creationTimestamp": {"type": "string", "format": "date-time", "description": "CreationTimestamp is a timestamp representing the server time when this object was created."},
            "deletionTimestamp": {"type": "string", "format": "date-time", "description": "DeletionTimestamp is RFC 3339 date and time at which this resource will be deleted."},
            "labels": {"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": "Map of string keys and values that can be used to organize and categorize (scope and select) objects."},
            "annotations": {"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": "Annotations is an unstructured key value map stored with a resource."},
            "finalizers": {"type": "array", "items": {"type": "string", "default": ""}, "description": "Must be empty before the object is deleted from the registry."},
            "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "description": "List of objects depended by this object."},
            "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "description": "ManagedFields maps workflow-id and version to the set of fields that are managed by that workflow."},
        }
    })
}

fn gvk(rt: &ResourceType) -> Value {
    json!([{"group": rt.group, "version": rt.version, "kind": rt.kind}])
}

fn component(rt: &ResourceType) -> Value {
    let mut schema = rt.schema.as_deref().cloned().unwrap_or_else(|| {
        json!({
            "description": format!("{} (stored as sent by the emulator).", rt.kind),
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
        })
    });
    if let Some(m) = schema.as_object_mut() {
        let props = m.entry("properties").or_insert_with(|| json!({}));
        if let Some(p) = props.as_object_mut() {
            p.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
            p.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
            p.insert("metadata".into(), json!({"allOf": [{"$ref": format!("#/components/schemas/{OBJECT_META}")}], "default": {}, "description": "Standard object's metadata."}));
        }
        m.insert("x-kubernetes-group-version-kind".into(), gvk(rt));
    }
    schema
}

fn operation(rt: &ResourceType, action: &str, schema_ref: &Value, with_body: bool) -> Value {
    let mut op = json!({
        "operationId": format!("{action}{}", rt.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        "parameters": [
            {"name": "dryRun", "in": "query", "schema": {"type": "string"}, "uniqueItems": true},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string"}, "uniqueItems": true},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}, "uniqueItems": true},
        ],
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref}}}},
    });
    if with_body {
        let content = if action == "patch" {
            json!({
                "application/json-patch+json": {"schema": {"type": "object"}},
                "application/merge-patch+json": {"schema": {"type": "object"}},
                "application/apply-patch+yaml": {"schema": {"type": "object"}},
            })
        } else {
            json!({"application/json": {"schema": schema_ref}})
        };
        op["requestBody"] = json!({"content": content, "required": true});
    }
    op
}

/// The document for one group-version path (`api/v1`, `apis/hookwarden.dev/v1alpha1`).
pub fn document(registry: &Registry, gv_path: &str) -> Option<Value> {
    let (group, version) = match gv_path.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => (String::new(), v.to_string()),
        ["apis", g, v] => (g.to_string(), v.to_string()),
        _ => return None,
    };
    let mut schemas = Map::new();
    let mut paths = Map::new();
    let mut any = false;
    for rt in registry.in_group_version(&group, &version) {
        any = true;
        let name = schema_name(rt);
        let schema_ref = json!({"$ref": format!("#/components/schemas/{name}")});
        schemas.insert(name, component(rt));
        let base = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let collection = if rt.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", rt.plural)
        } else {
            format!("{base}/{}", rt.plural)
        };
        paths.insert(
            collection.clone(),
            json!({"get": operation(rt, "list", &schema_ref, false), "post": operation(rt, "post", &schema_ref, true)}),
        );
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({
                "get": operation(rt, "get", &schema_ref, false),
                "put": operation(rt, "put", &schema_ref, true),
                "patch": operation(rt, "patch", &schema_ref, true),
                "delete": operation(rt, "delete", &schema_ref, false),
            }),
        );
        if rt.status_subresource {
            paths.insert(
                format!("{collection}/{{name}}/status"),
                json!({
                    "get": operation(rt, "get", &schema_ref, false),
                    "put": operation(rt, "put", &schema_ref, true),
                    "patch": operation(rt, "patch", &schema_ref, true),
                }),
            );
        }
    }
    if !any {
        return None;
    }
    schemas.insert(OBJECT_META.to_string(), object_meta());
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "1.36"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// Rewrites OpenAPI v3 component references to Swagger 2.0 definition references.
fn v2_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref") {
                *r = r.replace("#/components/schemas/", "#/definitions/");
            }
            m.values_mut().for_each(v2_refs);
        }
        Value::Array(a) => a.iter_mut().for_each(v2_refs),
        _ => {}
    }
}

/// An operation of a v3 document in Swagger 2.0 form: parameters carry their type directly,
/// a request body becomes an `in: body` parameter, responses carry `schema`.
fn v2_operation(op: &Value) -> Value {
    let mut out = op.clone();
    let mut params: Vec<Value> = op["parameters"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut p| {
            let ty = p["schema"]["type"].clone();
            if let Some(m) = p.as_object_mut() {
                m.remove("schema");
                m.insert("type".into(), ty);
            }
            p
        })
        .collect();
    if let Some(content) = op
        .pointer("/requestBody/content")
        .and_then(Value::as_object)
    {
        let schema = content
            .get("application/json")
            .map(|c| c["schema"].clone())
            .unwrap_or_else(|| json!({"type": "object"}));
        params.push(json!({"name": "body", "in": "body", "required": true, "schema": schema}));
        out["consumes"] = json!(content.keys().collect::<Vec<_>>());
    }
    if let Some(m) = out.as_object_mut() {
        m.remove("requestBody");
    }
    out["parameters"] = json!(params);
    out["produces"] = json!(["application/json", "application/yaml"]);
    out["schemes"] = json!(["https"]);
    let schema = op
        .pointer("/responses/200/content/application~1json/schema")
        .cloned()
        .unwrap_or(Value::Null);
    out["responses"] = json!({"200": {"description": "OK", "schema": schema}, "401": {"description": "Unauthorized"}});
    out
}

/// `/openapi/v2`: one Swagger 2.0 document for every served group-version, built from the
/// same per-group-version documents as `/openapi/v3` (the real server's v2 comes from the
/// same definitions, `staging/src/k8s.io/kube-openapi/pkg/handler/handler.go`; CRDs' from
/// `apiextensions-apiserver/pkg/controller/openapi/builder`).
pub fn swagger_v2(registry: &Registry) -> Value {
    let mut definitions = Map::new();
    let mut paths = Map::new();
    for p in group_version_paths(registry) {
        let Some(mut doc) = document(registry, &p) else {
            continue;
        };
        v2_refs(&mut doc);
        if let Some(schemas) = doc["components"]["schemas"].as_object() {
            for (name, schema) in schemas {
                definitions.insert(name.clone(), schema.clone());
            }
        }
        if let Some(ps) = doc["paths"].as_object() {
            for (path, ops) in ps {
                let mut out = Map::new();
                for (method, op) in ops.as_object().into_iter().flatten() {
                    out.insert(method.clone(), v2_operation(op));
                }
                paths.insert(path.clone(), Value::Object(out));
            }
        }
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "1.36"},
        "paths": paths,
        "definitions": definitions,
        "securityDefinitions": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header", "description": "Bearer Token authentication"}},
        "security": [{"BearerToken": []}],
    })
}
