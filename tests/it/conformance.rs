//! Differential conformance: the same raw HTTP requests against the API-server emulator and
//! a real kube-apiserver, compared on status codes and the body fields clients act on.
//!
//! - `conformance_emulator_agrees_with_the_recorded_real_server` (always runs) sends every
//!   case to a fresh emulator and compares what it saw with `conformance.golden.json`, which
//!   was recorded from a real kube-apiserver (the file names the version).
//! - `real_cluster_conformance_emulator_and_real_server_agree` (`#[ignore]`d; needs
//!   `KUBECONFIG` pointing at a real cluster, admin rights) sends every case to both and
//!   compares them with each other and with the recording. With
//!   `HOOKWARDEN_CONFORMANCE_RECORD=1` it rewrites the recording from the real server.
//!
//! An observation keeps only what does not vary between runs: generated names, uids,
//! timestamps, resourceVersions and continue tokens are reduced to their presence, and the
//! per-run namespace is written `NS`.

use std::collections::BTreeMap;
use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::{Value, json};

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/it/conformance.golden.json"
);
const GROUP: &str = "conformance.hookwarden.dev";
const CRD_NAME: &str = "widgets.conformance.hookwarden.dev";
const WIDGETS: &str = "/apis/conformance.hookwarden.dev/v1/namespaces/NS/widgets";
const FINALIZER: &str = "conformance.hookwarden.dev/hold";
const TEST_LIMIT: Duration = Duration::from_secs(180);

/// The test CRD: integer bounds, an enum, a string length, a required field, a CEL rule,
/// a status subresource and printer columns. `with_color` adds a defaulted field (the
/// schema change of the defaults-on-read case).
fn widget_crd(with_color: bool) -> Value {
    let mut spec_props = json!({
        "size": {"type": "integer", "minimum": 1, "maximum": 10},
        "mode": {"type": "string", "enum": ["fast", "slow"]},
        "label": {"type": "string", "maxLength": 5},
    });
    if with_color {
        spec_props["color"] = json!({"type": "string", "default": "blue"});
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["size"],
                            "properties": spec_props,
                            "x-kubernetes-validations": [{
                                "rule": "self.size <= 5 || (has(self.mode) && self.mode == 'slow')",
                                "message": "a size over 5 needs mode slow",
                            }],
                        },
                        "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
                    },
                }},
            }],
        },
    })
}

/// Where requests go: the emulator or a real server, through a kube client (its auth and TLS).
struct Target {
    client: kube::Client,
    config: kube::Config,
    ns: String,
}

struct Answer {
    code: u16,
    body: Value,
}

impl Target {
    async fn new(config: kube::Config) -> Target {
        let suffix = format!(
            "{:x}",
            jiff::Timestamp::now().as_nanosecond() as u64 & 0xffffff
        );
        let target = Target {
            client: kube::Client::try_from(config.clone()).expect("client"),
            config,
            ns: format!("conf-{suffix}"),
        };
        let a = target
            .call(
                "POST",
                "/api/v1/namespaces",
                Some(json!({"metadata": {"name": target.ns}})),
            )
            .await;
        assert_eq!(a.code, 201, "create namespace: {}", a.body);
        target
    }

    /// `NS` in a URL's `namespaces/NS` segment is the run's namespace.
    fn path(&self, path: &str) -> String {
        path.replace("namespaces/NS", &format!("namespaces/{}", self.ns))
    }

    /// `"NS"` as a JSON string in a body is the run's namespace.
    fn body(&self, body: &str) -> String {
        body.replace("\"NS\"", &format!("\"{}\"", self.ns))
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let content_type = match method {
            "PATCH" => "application/merge-patch+json",
            _ => "application/json",
        };
        self.call_as(method, path, content_type, body.map(|b| b.to_string()))
            .await
    }

    async fn call_as(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<String>,
    ) -> Answer {
        let req = http::Request::builder()
            .method(method)
            .uri(self.path(path))
            .header("content-type", content_type)
            .header("accept", "application/json")
            .body(
                body.map(|b| self.body(&b).into_bytes())
                    .unwrap_or_default()
                    .into(),
            )
            .expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(20), self.client.send(req))
            .await
            .expect("answer in time")
            .expect("send");
        let code = resp.status().as_u16();
        let bytes = resp.into_body().collect_bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Answer { code, body }
    }

    /// `GET` with an `Accept` header (discovery, metadata-only reads); `NS` in `path` is
    /// the test namespace, as in [`Target::call`].
    async fn get_accept(&self, path: &str, accept: &str) -> Answer {
        let req = http::Request::builder()
            .method("GET")
            .uri(self.path(path))
            .header("accept", accept)
            .body(Vec::new().into())
            .expect("request");
        let resp = self.client.send(req).await.expect("send");
        let code = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = resp.into_body().collect_bytes().await.expect("body");
        let mut body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if body.is_object() {
            body["__contentType"] = json!(ct);
        }
        Answer { code, body }
    }

    /// Applies the test CRD (server-side, forced) and waits until the API serves widgets with
    /// that schema.
    async fn install_crd(&self, with_color: bool) {
        let a = self
            .call_as(
                "PATCH",
                &format!(
                    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}?fieldManager=conformance&force=true"
                ),
                "application/apply-patch+yaml",
                Some(widget_crd(with_color).to_string()),
            )
            .await;
        assert!(matches!(a.code, 200 | 201), "apply CRD: {}", a.body);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let a = self.call("GET", &format!("{WIDGETS}?limit=1"), None).await;
            let crd = self
                .call(
                    "GET",
                    &format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"),
                    None,
                )
                .await;
            let established = crd.body["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Established" && c["status"] == "True")
                });
            if a.code == 200 && established {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "CRD not served: {}",
                a.body
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn cleanup(&self) {
        // Finalizers the cases left on widgets would hold the namespace.
        let list = self.call("GET", WIDGETS, None).await;
        for w in list.body["items"].as_array().cloned().unwrap_or_default() {
            let name = w["metadata"]["name"].as_str().unwrap_or_default();
            self.call(
                "PATCH",
                &format!("{WIDGETS}/{name}"),
                Some(json!({"metadata": {"finalizers": null}})),
            )
            .await;
        }
        self.call("DELETE", &format!("/api/v1/namespaces/{}", self.ns), None)
            .await;
    }
}

/// A Status (or any error body) reduced to what clients read.
fn status(a: &Answer) -> Value {
    let b = &a.body;
    let mut out = json!({"code": a.code, "kind": b["kind"]});
    for k in ["status", "reason", "message"] {
        if !b[k].is_null() {
            out[k] = b[k].clone();
        }
    }
    if let Some(d) = b.get("details") {
        let mut d = d.clone();
        if let Some(m) = d.as_object_mut()
            && m.remove("uid").is_some()
        {
            m.insert("uid".into(), json!("<present>"));
        }
        out["details"] = d;
    }
    if let Some(c) = b.pointer("/code") {
        out["bodyCode"] = c.clone();
    }
    sort_causes(&mut out);
    out
}

/// kube-apiserver reports schema errors in map order (it varies between requests): the
/// causes are compared sorted, and a message that lists exactly those causes
/// (`Kind "name" is invalid: [a, b]`) is rewritten with them in the same order.
fn sort_causes(out: &mut Value) {
    let Some(causes) = out
        .pointer("/details/causes")
        .and_then(Value::as_array)
        .cloned()
    else {
        return;
    };
    if causes.len() < 2 {
        return;
    }
    let rendered = |cs: &[Value]| {
        cs.iter()
            .map(|c| {
                format!(
                    "{}: {}",
                    c["field"].as_str().unwrap_or_default(),
                    c["message"].as_str().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut sorted = causes.clone();
    sorted.sort_by_key(|c| (c["field"].to_string(), c["message"].to_string()));
    if let Some(message) = out["message"].as_str()
        && let Some(prefix) = message.strip_suffix(&format!("[{}]", rendered(&causes)))
    {
        out["message"] = json!(format!("{prefix}[{}]", rendered(&sorted)));
    }
    out["details"]["causes"] = json!(sorted);
}

/// An object reduced to its kind and the named fields (JSON pointers); `<present>` stands
/// for values that vary between runs.
fn object(a: &Answer, fields: &[&str]) -> Value {
    let mut out = json!({"code": a.code, "kind": a.body["kind"]});
    for f in fields {
        let v = a.body.pointer(f).cloned().unwrap_or(Value::Null);
        out[*f] = v;
    }
    out
}

fn present(v: &Value) -> Value {
    if v.is_null() {
        json!("<absent>")
    } else {
        json!("<present>")
    }
}

/// What one case saw, in order.
#[derive(Default)]
struct Seen(Vec<(String, Value)>);

impl Seen {
    fn push(&mut self, label: &str, v: Value) {
        self.0.push((label.to_string(), v));
    }
}

fn widget(name: &str, spec: Value) -> Value {
    json!({"apiVersion": format!("{GROUP}/v1"), "kind": "Widget", "metadata": {"name": name}, "spec": spec})
}

// -----------------------------------------------------------------------------------------
// The cases. Each cites the kube-apiserver source that defines the behaviour.

/// DELETE answers. `staging/src/k8s.io/apiserver/pkg/endpoints/handlers/delete.go`: 200
/// unless the object stays (finalizers) *and* `orphanDependents=false` was asked (202); the
/// body is the object when the registry returns it (`ReturnDeletedObject`, set for custom
/// resources in `apiextensions-apiserver/pkg/registry/customresource/etcd.go`, and whenever
/// the object stays), else a `Status` Success with the name, group, kind and uid
/// (`apiserver/pkg/registry/generic/registry/store.go`, `Delete`).
async fn delete_answers(t: &Target, seen: &mut Seen) {
    t.call("POST", WIDGETS, Some(widget("plain", json!({"size": 1}))))
        .await;
    let a = t.call("DELETE", &format!("{WIDGETS}/plain"), None).await;
    seen.push(
        "custom resource without finalizers",
        object(
            &a,
            &[
                "/metadata/name",
                "/status",
                "/details/name",
                "/metadata/deletionTimestamp",
            ],
        ),
    );
    let a = t.call("DELETE", &format!("{WIDGETS}/plain"), None).await;
    seen.push("again: gone", status(&a));

    let mut held = widget("held", json!({"size": 1}));
    held["metadata"]["finalizers"] = json!([FINALIZER]);
    t.call("POST", WIDGETS, Some(held.clone())).await;
    let a = t.call("DELETE", &format!("{WIDGETS}/held"), None).await;
    let mut o = object(&a, &["/metadata/name", "/metadata/finalizers"]);
    o["deletionTimestamp"] = present(&a.body["metadata"]["deletionTimestamp"]);
    seen.push("custom resource with a finalizer", o);
    let a = t.call("DELETE", &format!("{WIDGETS}/held"), None).await;
    let mut o = object(&a, &["/metadata/name"]);
    o["deletionTimestamp"] = present(&a.body["metadata"]["deletionTimestamp"]);
    seen.push("again while finalizing", o);
    let a = t
        .call(
            "PATCH",
            &format!("{WIDGETS}/held"),
            Some(json!({"metadata": {"finalizers": null}})),
        )
        .await;
    seen.push("finalizer removed", json!({"code": a.code}));
    let a = t.call("GET", &format!("{WIDGETS}/held"), None).await;
    seen.push("then gone", json!({"code": a.code}));

    t.call("POST", WIDGETS, Some(held)).await;
    let a = t
        .call(
            "DELETE",
            &format!("{WIDGETS}/held"),
            Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"})),
        )
        .await;
    let mut o = object(&a, &["/metadata/name", "/metadata/finalizers"]);
    o["deletionTimestamp"] = present(&a.body["metadata"]["deletionTimestamp"]);
    seen.push("foreground with a finalizer", o);

    let cm = json!({"metadata": {"name": "plain"}, "data": {"a": "1"}});
    t.call("POST", "/api/v1/namespaces/NS/configmaps", Some(cm))
        .await;
    let a = t
        .call("DELETE", "/api/v1/namespaces/NS/configmaps/plain", None)
        .await;
    seen.push("built-in object", status(&a));
    let a = t
        .call(
            "DELETE",
            &format!("{WIDGETS}/plain"),
            Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": "not-this-one"}})),
        )
        .await;
    seen.push("precondition on a missing object", status(&a));
}

/// Updates without `metadata.resourceVersion`. `apiserver/pkg/registry/rest/update.go`
/// (`BeforeUpdate`) and `apiserver/pkg/registry/generic/registry/store.go` (`Update`): an
/// unconditional update is refused with 422 where the strategy's
/// `AllowUnconditionalUpdate` is false — custom resources
/// (`apiextensions-apiserver/pkg/registry/customresource/strategy.go`) — and accepted for
/// ConfigMaps; a stale one is 409.
async fn update_without_resource_version(t: &Target, seen: &mut Seen) {
    t.call("POST", WIDGETS, Some(widget("upd", json!({"size": 1}))))
        .await;
    let a = t
        .call(
            "PUT",
            &format!("{WIDGETS}/upd"),
            Some(widget("upd", json!({"size": 2}))),
        )
        .await;
    seen.push("custom resource", status(&a));
    let mut stale = widget("upd", json!({"size": 2}));
    stale["metadata"]["resourceVersion"] = json!("1");
    let a = t.call("PUT", &format!("{WIDGETS}/upd"), Some(stale)).await;
    seen.push("custom resource, stale resourceVersion", status(&a));
    let a = t
        .call(
            "PUT",
            &format!("{WIDGETS}/missing"),
            Some(widget("missing", json!({"size": 2}))),
        )
        .await;
    seen.push("custom resource that does not exist", status(&a));

    let cm = json!({"metadata": {"name": "upd"}, "data": {"a": "1"}});
    t.call("POST", "/api/v1/namespaces/NS/configmaps", Some(cm))
        .await;
    let a = t
        .call(
            "PUT",
            "/api/v1/namespaces/NS/configmaps/upd",
            Some(json!({"metadata": {"name": "upd"}, "data": {"a": "2"}})),
        )
        .await;
    seen.push("configmap", object(&a, &["/data/a"]));
    let a = t
        .call(
            "PUT",
            "/api/v1/namespaces/NS/configmaps/nothere",
            Some(json!({"metadata": {"name": "nothere"}, "data": {"a": "2"}})),
        )
        .await;
    seen.push("configmap that does not exist", status(&a));
}

/// Server-side apply errors. `apiserver/pkg/endpoints/handlers/patch.go` (fieldManager
/// required for apply), `apiserver/pkg/util/validation`-style messages from
/// `apimachinery/pkg/api/validation` for PatchOptions, and conflicts from
/// `apiserver/pkg/endpoints/handlers/fieldmanager` → `internal/conflict.go`
/// (`NewConflictError`: message from structured-merge-diff `Conflicts.Error()`, one cause
/// per field with reason `FieldManagerConflict`).
async fn apply_errors(t: &Target, seen: &mut Seen) {
    let apply = |manager: Option<&str>, force: bool, spec: Value| {
        let mut path = format!("{WIDGETS}/ssa?");
        if let Some(m) = manager {
            path.push_str(&format!("fieldManager={m}&"));
        }
        if force {
            path.push_str("force=true");
        }
        let body = widget("ssa", spec).to_string();
        async move {
            t.call_as("PATCH", &path, "application/apply-patch+yaml", Some(body))
                .await
        }
    };
    let a = apply(None, false, json!({"size": 1})).await;
    seen.push("apply without fieldManager", status(&a));
    let a = apply(Some("first"), false, json!({"size": 1, "mode": "fast"})).await;
    seen.push("first manager creates", object(&a, &["/spec"]));
    let a = apply(Some("second"), false, json!({"size": 2})).await;
    seen.push("second manager, one conflict", status(&a));
    let a = apply(Some("second"), false, json!({"size": 2, "mode": "slow"})).await;
    seen.push("second manager, two conflicts", status(&a));
    let a = apply(Some("second"), true, json!({"size": 2})).await;
    let managers: Vec<Value> = a.body["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| json!({"manager": m["manager"], "operation": m["operation"], "fields": m["fieldsV1"]}))
        .collect();
    seen.push(
        "forced",
        json!({"code": a.code, "spec": a.body["spec"], "managedFields": managers}),
    );
    let a = t
        .call(
            "PATCH",
            &format!("{WIDGETS}/ssa?fieldManager=editor"),
            Some(json!({"spec": {"size": 3}})),
        )
        .await;
    seen.push("merge patch takes size", object(&a, &["/spec/size"]));
    let a = apply(Some("second"), false, json!({"size": 2})).await;
    seen.push("apply after an update by another manager", status(&a));
    let a = t
        .call_as(
            "PATCH",
            &format!("{WIDGETS}/ssa?fieldManager=first"),
            "application/apply-patch+yaml",
            Some("kind: Widget\n".into()),
        )
        .await;
    seen.push("apply without apiVersion", status(&a));
}

/// Validation messages: `apiextensions-apiserver/pkg/apiserver/validation` (OpenAPI schema:
/// type, bounds, enum, maxLength, required), CEL rules from
/// `apiextensions-apiserver/pkg/apiserver/schema/cel/validation.go`, names from
/// `apimachinery/pkg/api/validation/objectmeta.go`; the message is joined by
/// `apimachinery/pkg/api/errors.NewInvalid`.
async fn validation_messages(t: &Target, seen: &mut Seen) {
    let cases = [
        ("too large", json!({"size": 11})),
        (
            "too small and a bad enum",
            json!({"size": 0, "mode": "medium"}),
        ),
        ("required field missing", json!({"mode": "fast"})),
        ("wrong type", json!({"size": "three"})),
        ("too long", json!({"size": 1, "label": "abcdefgh"})),
        ("CEL rule", json!({"size": 7, "mode": "fast"})),
    ];
    for (label, spec) in cases {
        let a = t.call("POST", WIDGETS, Some(widget("bad", spec))).await;
        seen.push(label, status(&a));
    }
    let a = t
        .call(
            "POST",
            WIDGETS,
            Some(widget("Bad_Name", json!({"size": 1}))),
        )
        .await;
    seen.push("invalid name", status(&a));
    let a = t
        .call(
            "POST",
            "/api/v1/namespaces/NS/configmaps",
            Some(json!({"metadata": {"name": "bad", "labels": {"a": "not valid!"}}})),
        )
        .await;
    seen.push("invalid label value", status(&a));
}

/// Field selectors: `apiserver/pkg/registry/generic/registry/store.go` lists with the
/// strategy's `GetAttrs`; ConfigMaps know `metadata.name` and `metadata.namespace`
/// (`pkg/registry/core/configmap/strategy.go`), Secrets also `type`
/// (`pkg/registry/core/secret/strategy.go`), custom resources the `selectableFields` of the
/// CRD (`apiextensions-apiserver/pkg/registry/customresource/strategy.go`); anything else is
/// 400 `field label not supported`.
async fn field_selectors(t: &Target, seen: &mut Seen) {
    for (label, path) in [
        (
            "configmaps by name",
            "/api/v1/namespaces/NS/configmaps?fieldSelector=metadata.name%3Dnone",
        ),
        (
            "configmaps by data",
            "/api/v1/namespaces/NS/configmaps?fieldSelector=data.a%3D1",
        ),
        (
            "secrets by type",
            "/api/v1/namespaces/NS/secrets?fieldSelector=type%3DOpaque",
        ),
        (
            "secrets by data",
            "/api/v1/namespaces/NS/secrets?fieldSelector=data.a%3D1",
        ),
        (
            "widgets by name",
            "/apis/conformance.hookwarden.dev/v1/namespaces/NS/widgets?fieldSelector=metadata.name%3Dnone",
        ),
        (
            "widgets by spec",
            "/apis/conformance.hookwarden.dev/v1/namespaces/NS/widgets?fieldSelector=spec.size%3D1",
        ),
        (
            "bad syntax",
            "/api/v1/namespaces/NS/configmaps?fieldSelector=metadata.name",
        ),
    ] {
        let a = t.call("GET", path, None).await;
        let v = if a.code == 200 {
            json!({"code": 200, "kind": a.body["kind"], "items": a.body["items"].as_array().map(Vec::len)})
        } else {
            status(&a)
        };
        seen.push(label, v);
    }
}

/// Pagination: `apiserver/pkg/storage/etcd3/store.go` (`GetList`): items in key order
/// (namespace/name), `continue` while more remain, `remainingItemCount` with label
/// selectors absent; a malformed token is 400 (`storage/continue.go`).
async fn pagination(t: &Target, seen: &mut Seen) {
    for name in ["p-c", "p-a", "p-e", "p-b", "p-d"] {
        let labels = if name == "p-c" || name == "p-e" {
            json!({"odd": "yes"})
        } else {
            json!({})
        };
        t.call(
            "POST",
            "/api/v1/namespaces/NS/configmaps",
            Some(json!({"metadata": {"name": name, "labels": labels}})),
        )
        .await;
    }
    let page = |a: &Answer| {
        if a.code != 200 {
            return status(a);
        }
        json!({
            "code": a.code,
            "names": a.body["items"].as_array().map(|i| i.iter().map(|o| o["metadata"]["name"].clone()).filter(|n| n.as_str().is_some_and(|n| n.starts_with("p-"))).collect::<Vec<_>>()),
            "continue": present(&a.body["metadata"]["continue"]),
            "remainingItemCount": a.body["metadata"]["remainingItemCount"],
        })
    };
    let mut path = "/api/v1/namespaces/NS/configmaps?limit=2&labelSelector=!kube-root".to_string();
    // kube-root-ca.crt (published by the controller-manager) sorts first; the selector
    // keeps the pages the same whether or not a publisher runs.
    path = path.replace(
        "labelSelector=!kube-root",
        "fieldSelector=metadata.name!%3Dkube-root-ca.crt",
    );
    let mut n = 0;
    loop {
        let a = t.call("GET", &path, None).await;
        seen.push(&format!("page {n}"), page(&a));
        n += 1;
        match a.body["metadata"]["continue"].as_str() {
            Some(c) if !c.is_empty() && n < 5 => {
                path = format!(
                    "/api/v1/namespaces/NS/configmaps?limit=2&fieldSelector=metadata.name!%3Dkube-root-ca.crt&continue={c}"
                );
            }
            _ => break,
        }
    }
    let a = t
        .call(
            "GET",
            "/api/v1/namespaces/NS/configmaps?limit=1&labelSelector=odd%3Dyes",
            None,
        )
        .await;
    seen.push("label selector, limit 1", page(&a));
    let a = t
        .call(
            "GET",
            "/api/v1/namespaces/NS/configmaps?limit=2&continue=!!!!",
            None,
        )
        .await;
    seen.push("malformed continue", status(&a));
}

/// Watch with a label selector: when an object stops matching, the watcher gets DELETED
/// carrying the object as it was (still labelled) at the new resourceVersion; when one
/// starts matching, ADDED (`apiserver/pkg/storage/cacher/cache_watcher.go`,
/// `convertToWatchEvent`).
async fn watch_selector_transitions(t: &Target, seen: &mut Seen) {
    let req = http::Request::builder()
        .method("GET")
        .uri(t.path(
            "/api/v1/namespaces/NS/configmaps?watch=true&labelSelector=app%3Dw&timeoutSeconds=20",
        ))
        .header("accept", "application/json")
        .body(Vec::new().into())
        .expect("request");
    let resp = t.client.send(req).await.expect("watch");
    let mut body = resp.into_body();
    let cm = |labels: Value, v: &str| json!({"metadata": {"name": "w", "labels": labels}, "data": {"v": v}});
    t.call(
        "POST",
        "/api/v1/namespaces/NS/configmaps",
        Some(cm(json!({"app": "w"}), "1")),
    )
    .await;
    let a = t
        .call(
            "PUT",
            "/api/v1/namespaces/NS/configmaps/w",
            Some(cm(json!({"app": "other"}), "2")),
        )
        .await;
    let left_rv = a.body["metadata"]["resourceVersion"].clone();
    let a = t
        .call(
            "PUT",
            "/api/v1/namespaces/NS/configmaps/w",
            Some(cm(json!({"app": "w"}), "3")),
        )
        .await;
    let back_rv = a.body["metadata"]["resourceVersion"].clone();
    t.call("DELETE", "/api/v1/namespaces/NS/configmaps/w", None)
        .await;

    let mut buf = Vec::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while events.len() < 4 && tokio::time::Instant::now() < deadline {
        let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await else {
            break;
        };
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            if let Ok(ev) = serde_json::from_slice::<Value>(&line) {
                events.push(ev);
            }
        }
    }
    let seen_events: Vec<Value> = events
        .iter()
        .map(|e| {
            let rv = &e["object"]["metadata"]["resourceVersion"];
            json!({
                "type": e["type"],
                "labels": e["object"]["metadata"]["labels"],
                "data": e["object"]["data"],
                "rv": if *rv == left_rv { json!("of the update that left") } else if *rv == back_rv { json!("of the update that came back") } else { present(rv) },
            })
        })
        .collect();
    seen.push("events", json!(seen_events));
}

/// Creating in a terminating namespace: the NamespaceLifecycle admission plugin
/// (`apiserver/pkg/admission/plugin/namespace/lifecycle/admission.go`) answers 403 Forbidden
/// with cause `NamespaceTerminating`; updates of existing objects still pass. A namespace
/// that does not exist is 404 from the same plugin.
async fn namespace_termination(t: &Target, seen: &mut Seen) {
    let ns = format!("{}-t", t.ns);
    t.call(
        "POST",
        "/api/v1/namespaces",
        Some(json!({"metadata": {"name": ns}})),
    )
    .await;
    let path = format!("/apis/{GROUP}/v1/namespaces/{ns}/widgets");
    let mut held = widget("held", json!({"size": 1}));
    held["metadata"]["finalizers"] = json!([FINALIZER]);
    t.call("POST", &path, Some(held)).await;
    let a = t
        .call("DELETE", &format!("/api/v1/namespaces/{ns}"), None)
        .await;
    let mut o = object(&a, &["/status/phase", "/spec/finalizers"]);
    o["deletionTimestamp"] = present(&a.body["metadata"]["deletionTimestamp"]);
    seen.push("delete namespace", o);
    let cms = format!("/api/v1/namespaces/{ns}/configmaps");
    let a = t
        .call("POST", &cms, Some(json!({"metadata": {"name": "late"}})))
        .await;
    seen.push("create a configmap", status(&a));
    let a = t
        .call(
            "POST",
            &cms,
            Some(json!({"metadata": {"generateName": "late-"}})),
        )
        .await;
    seen.push("create with generateName", status(&a));
    let a = t
        .call("POST", &path, Some(widget("late", json!({"size": 1}))))
        .await;
    seen.push("create a custom resource", status(&a));
    let a = t
        .call(
            "PATCH",
            &format!("{path}/held"),
            Some(json!({"metadata": {"labels": {"still": "editable"}}})),
        )
        .await;
    seen.push(
        "update an existing object",
        object(&a, &["/metadata/labels"]),
    );
    let a = t
        .call(
            "POST",
            "/api/v1/namespaces/conf-does-not-exist/configmaps",
            Some(json!({"metadata": {"name": "x"}})),
        )
        .await;
    seen.push("create in a missing namespace", status(&a));
    t.call(
        "PATCH",
        &format!("{path}/held"),
        Some(json!({"metadata": {"finalizers": null}})),
    )
    .await;
    let gone = async {
        loop {
            let a = t
                .call("GET", &format!("/api/v1/namespaces/{ns}"), None)
                .await;
            if a.code == 404 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let finished = tokio::time::timeout(Duration::from_secs(60), gone)
        .await
        .is_ok();
    seen.push("namespace gone after the finalizer", json!(finished));
}

/// `events.k8s.io/v1` validation: `pkg/apis/core/validation/events.go`
/// (`ValidateEventCreate`): eventTime, reportingController, reportingInstance, action,
/// reason and a known type are required for this API version.
async fn events_v1(t: &Target, seen: &mut Seen) {
    let path = "/apis/events.k8s.io/v1/namespaces/NS/events";
    let regarding =
        json!({"kind": "ConfigMap", "namespace": "NS", "name": "x", "apiVersion": "v1"});
    let a = t
        .call(
            "POST",
            path,
            Some(json!({"metadata": {"name": "e1"}, "regarding": regarding, "note": "hi"})),
        )
        .await;
    seen.push("only a note", status(&a));
    let full = json!({
        "metadata": {"name": "e2"}, "regarding": regarding, "note": "hi",
        "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "hookwarden.dev/controller",
        "reportingInstance": "controller-0", "action": "Reconcile", "reason": "Ready", "type": "Normal",
    });
    let a = t.call("POST", path, Some(full.clone())).await;
    seen.push(
        "complete",
        object(
            &a,
            &[
                "/reason",
                "/type",
                "/reportingController",
                "/action",
                "/note",
            ],
        ),
    );
    let mut bad = full.clone();
    bad["metadata"]["name"] = json!("e3");
    bad["type"] = json!("Urgent");
    bad["reportingController"] = json!("no-slash controller");
    let a = t.call("POST", path, Some(bad)).await;
    seen.push("bad type and controller", status(&a));
    let a = t.call("GET", "/api/v1/namespaces/NS/events/e2", None).await;
    seen.push(
        "read through core/v1",
        object(
            &a,
            &[
                "/reason",
                "/type",
                "/message",
                "/reportingComponent",
                "/involvedObject/name",
            ],
        ),
    );
}

/// Lease create-on-update: `pkg/registry/coordination/lease/strategy.go`
/// (`AllowCreateOnUpdate` true); ConfigMaps and custom resources answer 404.
async fn lease_create_on_update(t: &Target, seen: &mut Seen) {
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l1"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 5}});
    let a = t
        .call(
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/NS/leases/l1",
            Some(lease.clone()),
        )
        .await;
    seen.push(
        "PUT a missing lease",
        object(&a, &["/metadata/name", "/spec/holderIdentity"]),
    );
    let a = t
        .call(
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/NS/leases/l1",
            Some(lease),
        )
        .await;
    seen.push(
        "PUT it again without resourceVersion",
        object(&a, &["/spec/holderIdentity"]),
    );
    let bad = json!({"metadata": {"name": "l2"}, "spec": {"leaseDurationSeconds": 0}});
    let a = t
        .call(
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/NS/leases/l2",
            Some(bad),
        )
        .await;
    seen.push("invalid duration", status(&a));
}

/// Defaults on read: `apiextensions-apiserver/pkg/apiserver/schema/defaulting` is applied
/// when objects are decoded from etcd (`pkg/registry/customresource/etcd.go` codec), so an
/// object stored before a default was added reads with it.
async fn defaults_on_read(t: &Target, seen: &mut Seen) {
    t.call("POST", WIDGETS, Some(widget("old", json!({"size": 1}))))
        .await;
    t.install_crd(true).await;
    let path = format!("{WIDGETS}/old");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let a = loop {
        let a = t.call("GET", &path, None).await;
        if !a.body["spec"]["color"].is_null() || tokio::time::Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    seen.push("get", object(&a, &["/spec"]));
    let a = t.call("GET", WIDGETS, None).await;
    let specs: Vec<Value> = a.body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|o| o["metadata"]["name"] == "old")
        .map(|o| o["spec"].clone())
        .collect();
    seen.push("list", json!(specs));
    let a = t
        .call("POST", WIDGETS, Some(widget("new", json!({"size": 2}))))
        .await;
    seen.push("create", object(&a, &["/spec"]));
    t.install_crd(false).await;
}

/// Metadata-only reads (`Accept: application/json;as=PartialObjectMetadata[List];
/// g=meta.k8s.io;v=v1`), what kube's and client-go's metadata clients send: the controller
/// watches every Secret that way. `staging/src/k8s.io/apiserver/pkg/endpoints/handlers/
/// response.go` (`asPartialObjectMetadata`, `asPartialObjectMetadataList`).
async fn metadata_only(t: &Target, seen: &mut Seen) {
    let a = t
        .call(
            "POST",
            "/api/v1/namespaces/NS/configmaps",
            Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "meta-only", "labels": {"a": "b"}}, "data": {"big": "x"}})),
        )
        .await;
    seen.push(
        "create",
        json!({"code": a.code, "message": a.body["message"]}),
    );
    let list = t
        .get_accept(
            "/api/v1/namespaces/NS/configmaps?labelSelector=a%3Db",
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json",
        )
        .await;
    let items: Vec<Value> = list.body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|i| {
            json!({
                "kind": i["kind"], "apiVersion": i["apiVersion"],
                "name": i["metadata"]["name"], "labels": i["metadata"]["labels"],
                "data": present(&i["data"]),
            })
        })
        .collect();
    seen.push(
        "list",
        json!({"code": list.code, "kind": list.body["kind"], "apiVersion": list.body["apiVersion"], "items": items}),
    );
    let one = t
        .get_accept(
            "/api/v1/namespaces/NS/configmaps/meta-only",
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json",
        )
        .await;
    seen.push(
        "get",
        json!({
            "code": one.code, "kind": one.body["kind"], "apiVersion": one.body["apiVersion"],
            "name": one.body["metadata"]["name"], "data": present(&one.body["data"]),
        }),
    );
}

/// A namespace's `default` ServiceAccount: kube-controller-manager's serviceaccount
/// controller (`pkg/controller/serviceaccount/serviceaccounts_controller.go`) creates it for
/// every namespace, so `kubectl create token default -n NS` works right after the namespace.
async fn default_service_account(t: &Target, seen: &mut Seen) {
    let path = "/api/v1/namespaces/NS/serviceaccounts/default";
    // The controller acts moments after the namespace appears.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut a = t.call("GET", path, None).await;
    while a.code == 404 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        a = t.call("GET", path, None).await;
    }
    seen.push(
        "the default ServiceAccount",
        object(&a, &["/metadata/name", "/metadata/namespace"]),
    );
    let a = t
        .call(
            "POST",
            &format!("{path}/token"),
            Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})),
        )
        .await;
    seen.push(
        "a token for it",
        json!({"code": a.code, "kind": a.body["kind"], "token": present(&a.body["status"]["token"])}),
    );
}

/// TokenRequest: `pkg/registry/core/serviceaccount/storage/token.go` (201, a TokenRequest
/// with `status.token` and `status.expirationTimestamp`; 404 for a missing ServiceAccount)
/// and `pkg/apis/authentication/validation` (`expirationSeconds` at least 600).
async fn token_request(t: &Target, seen: &mut Seen) {
    t.call(
        "POST",
        "/api/v1/namespaces/NS/serviceaccounts",
        Some(json!({"metadata": {"name": "robot"}})),
    )
    .await;
    let req = |secs: u64| json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": secs}});
    let a = t
        .call(
            "POST",
            "/api/v1/namespaces/NS/serviceaccounts/robot/token",
            Some(req(3600)),
        )
        .await;
    seen.push(
        "token",
        json!({
            "code": a.code, "kind": a.body["kind"], "apiVersion": a.body["apiVersion"],
            "token": present(&a.body["status"]["token"]),
            "expirationTimestamp": present(&a.body["status"]["expirationTimestamp"]),
            "expirationSeconds": a.body["spec"]["expirationSeconds"],
        }),
    );
    let token = a.body["status"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let a = t
        .call(
            "POST",
            "/api/v1/namespaces/NS/serviceaccounts/robot/token",
            Some(req(60)),
        )
        .await;
    seen.push("too short", status(&a));
    let a = t
        .call(
            "POST",
            "/api/v1/namespaces/NS/serviceaccounts/nobody/token",
            Some(req(3600)),
        )
        .await;
    seen.push("missing service account", status(&a));

    // The token authenticates as the ServiceAccount (and RBAC then says no).
    let mut config = t.config.clone();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    let as_robot = Target {
        client: kube::Client::try_from(config).expect("client"),
        config: t.config.clone(),
        ns: t.ns.clone(),
    };
    let a = as_robot
        .call("GET", "/api/v1/namespaces/NS/secrets", None)
        .await;
    seen.push("list secrets with it", status(&a));
}

/// Discovery the way kubectl 1.34 and client-go ask first: aggregated discovery
/// (`apiserver/pkg/endpoints/discovery/aggregated/handler.go`, `apidiscovery.k8s.io/v2`),
/// and `/openapi/v2` (`kube-openapi/pkg/handler/handler.go`).
async fn discovery(t: &Target, seen: &mut Seen) {
    let accept =
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
    let a = t.get_accept("/apis", accept).await;
    let group = a.body["items"]
        .as_array()
        .and_then(|gs| gs.iter().find(|g| g["metadata"]["name"] == GROUP))
        .cloned()
        .unwrap_or(Value::Null);
    let version = &group["versions"][0];
    let widgets = version["resources"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["resource"] == "widgets"))
        .cloned()
        .unwrap_or(Value::Null);
    seen.push(
        "/apis aggregated",
        json!({
            "code": a.code, "kind": a.body["kind"], "apiVersion": a.body["apiVersion"],
            "contentType": a.body["__contentType"],
            "version": version["version"], "freshness": version["freshness"],
            "widgets": {
                "resource": widgets["resource"], "scope": widgets["scope"],
                "singularResource": widgets["singularResource"],
                "responseKind": widgets["responseKind"],
                "verbs": widgets["verbs"],
                "subresources": widgets["subresources"],
            },
        }),
    );
    let a = t.get_accept("/api", accept).await;
    let v1 = &a.body["items"][0]["versions"][0];
    let cms = v1["resources"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["resource"] == "configmaps"))
        .cloned()
        .unwrap_or(Value::Null);
    seen.push(
        "/api aggregated",
        json!({
            "code": a.code, "kind": a.body["kind"], "version": v1["version"],
            "configmaps": {"scope": cms["scope"], "shortNames": cms["shortNames"], "responseKind": cms["responseKind"], "verbs": cms["verbs"]},
        }),
    );
    let a = t.get_accept("/openapi/v2", "application/json").await;
    let def = &a.body["definitions"]["dev.hookwarden.conformance.v1.Widget"];
    seen.push(
        "/openapi/v2",
        json!({
            "code": a.code, "swagger": a.body["swagger"],
            "widget gvk": def["x-kubernetes-group-version-kind"],
            "widget size": def["properties"]["spec"]["properties"]["size"],
            "widget path": present(&a.body["paths"]["/apis/conformance.hookwarden.dev/v1/namespaces/{namespace}/widgets/{name}"]),
            "configmap": present(&a.body["definitions"]["io.k8s.api.core.v1.ConfigMap"]),
        }),
    );
}

async fn emulator_config(emu: &kube_emulator::Emulator) -> kube::Config {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&emu.kubeconfig()).expect("kubeconfig");
    kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config")
}

type Observations = BTreeMap<String, Vec<(String, Value)>>;

/// Runs every case on one server; the namespace name is written `NS` in what it returns.
async fn observe(config: kube::Config) -> Observations {
    let t = Target::new(config).await;
    t.install_crd(false).await;
    let mut all = Observations::new();
    macro_rules! case {
        ($f:ident) => {{
            let mut seen = Seen::default();
            $f(&t, &mut seen).await;
            all.insert(stringify!($f).to_string(), seen.0);
        }};
    }
    case!(delete_answers);
    case!(update_without_resource_version);
    case!(apply_errors);
    case!(validation_messages);
    case!(field_selectors);
    case!(pagination);
    case!(metadata_only);
    case!(watch_selector_transitions);
    case!(namespace_termination);
    case!(events_v1);
    case!(lease_create_on_update);
    case!(token_request);
    case!(default_service_account);
    case!(discovery);
    case!(defaults_on_read);
    t.cleanup().await;
    let text = serde_json::to_string(&all)
        .expect("json")
        .replace(&t.ns, "NS");
    serde_json::from_str(&text).expect("json")
}

/// Every difference, as `case / step: expected … got …` lines.
fn differences(expected: &Observations, got: &Observations) -> Vec<String> {
    let mut out = Vec::new();
    for (case, steps) in expected {
        let Some(theirs) = got.get(case) else {
            out.push(format!("{case}: not run"));
            continue;
        };
        for (i, (label, value)) in steps.iter().enumerate() {
            match theirs.get(i) {
                Some((l, v)) if l == label && v == value => {}
                Some((l, v)) => out.push(format!(
                    "{case} / {label}:\n  expected {value}\n  got ({l}) {v}"
                )),
                None => out.push(format!("{case} / {label}: missing")),
            }
        }
        if theirs.len() > steps.len() {
            out.push(format!(
                "{case}: {} extra steps",
                theirs.len() - steps.len()
            ));
        }
    }
    out
}

fn golden() -> Observations {
    let text = std::fs::read_to_string(GOLDEN).expect("tests/it/conformance.golden.json");
    let v: Value = serde_json::from_str(&text).expect("golden JSON");
    serde_json::from_value(v["cases"].clone()).expect("golden cases")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_emulator_agrees_with_the_recorded_real_server() {
    let run = async {
        let emu = kube_emulator::Emulator::start().await.expect("emulator");
        let got = observe(emulator_config(&emu).await).await;
        let diffs = differences(&golden(), &got);
        assert!(
            diffs.is_empty(),
            "{} differences:\n{}",
            diffs.len(),
            diffs.join("\n")
        );
    };
    tokio::time::timeout(TEST_LIMIT, run)
        .await
        .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: set KUBECONFIG and pass --ignored"]
async fn real_cluster_conformance_emulator_and_real_server_agree() {
    let run = async {
        let real = kube::Config::infer().await.expect("config from KUBECONFIG");
        let version = kube::Client::try_from(real.clone())
            .expect("client")
            .apiserver_version()
            .await
            .expect("version");
        let seen_real = observe(real).await;
        if std::env::var("HOOKWARDEN_CONFORMANCE_RECORD").is_ok_and(|v| v == "1") {
            // A server built without version stamping reports v0.0.0-master; say what it is.
            let server = std::env::var("HOOKWARDEN_CONFORMANCE_SERVER")
                .unwrap_or_else(|_| format!("kube-apiserver {}", version.git_version));
            let doc = json!({
                "recordedFrom": server,
                "cases": seen_real,
            });
            std::fs::write(GOLDEN, format!("{:#}\n", doc)).expect("write golden");
        }
        let emu = kube_emulator::Emulator::start().await.expect("emulator");
        let seen_emu = observe(emulator_config(&emu).await).await;
        let against_real = differences(&seen_real, &seen_emu);
        let against_recording = differences(&golden(), &seen_real);
        assert!(
            against_real.is_empty() && against_recording.is_empty(),
            "emulator vs real ({}):\n{}\n\nreal vs recording ({}):\n{}",
            against_real.len(),
            against_real.join("\n"),
            against_recording.len(),
            against_recording.join("\n")
        );
    };
    tokio::time::timeout(TEST_LIMIT * 2, run)
        .await
        .expect("in time");
}
