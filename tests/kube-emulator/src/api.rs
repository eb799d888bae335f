//! The HTTP side: authentication, fault injection, counting, RBAC, routing, and every verb of
//! the Kubernetes REST API the emulator supports.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::faults::{Counters, Faults, RequestRecord, lock};
use crate::patch::{self, Scope};
use crate::rbac::{self, Attributes, User};
use crate::registry::{Registry, ResourceType, crd_status};
use crate::store::{Change, EventType, FieldSelector, LabelSelector, Store, now_rfc3339};
use crate::table::{self, IncludeObject};
use crate::{openapi, schema};

pub type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted (the real server's limit is 3 MiB for most requests).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Everything behind the lock: objects and the types they belong to.
pub struct State {
    pub store: Store,
    pub registry: Registry,
}

/// State shared by all connections and the handle tests hold.
pub struct Shared {
    pub state: Mutex<State>,
    pub admin_token: String,
    pub faults: Faults,
    pub counters: Counters,
    pub address: String,
    uid_counter: AtomicU64,
}

impl Shared {
    pub fn new(admin_token: String, address: String) -> Self {
        let mut state = State {
            store: Store::new(),
            registry: Registry::with_builtins(),
        };
        for ns in ["default", "kube-system"] {
            let rv = state.store.next_rv();
            let obj = json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "uid": format!("00000000-0000-4000-8000-{rv:012x}"), "resourceVersion": rv.to_string(), "creationTimestamp": now_rfc3339(), "labels": {"kubernetes.io/metadata.name": ns}},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            });
            state.store.put("namespaces", "", ns, obj, rv);
            put_default_service_account(
                &mut state,
                ns,
                format!("00000000-0000-4000-8001-{rv:012x}"),
            );
        }
        Shared {
            state: Mutex::new(state),
            admin_token,
            faults: Faults::default(),
            counters: Counters::default(),
            address,
            uid_counter: AtomicU64::new(1),
        }
    }

    fn new_uid(&self) -> String {
        let n = self.uid_counter.fetch_add(1, Ordering::Relaxed);
        let nanos = jiff::Timestamp::now().as_nanosecond() as u64;
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (nanos >> 16) as u32,
            (n >> 32) as u16,
            (n >> 20) & 0xfff,
            (n >> 8) & 0xfff,
            (n & 0xff) | ((nanos & 0xffff_ffff) << 8)
        )
    }
}

/// An error answered as a `Status` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }
    fn details(mut self, d: Value) -> Self {
        self.details = Some(d);
        self
    }
    pub fn status_json(&self) -> Value {
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(d) = &self.details {
            let mut d = d.clone();
            // Go's `omitempty`: an empty group (the core group) or name is left out.
            if let Some(m) = d.as_object_mut() {
                m.retain(|k, v| !(matches!(k.as_str(), "group" | "name") && v == ""));
            }
            s["details"] = d;
        }
        if self.reason.is_empty()
            && let Some(m) = s.as_object_mut()
        {
            m.remove("reason");
        }
        s
    }
    fn not_found(rt: &ResourceType, name: &str) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", rt.qualified_resource()),
        )
        .details(json!({"name": name, "group": rt.group, "kind": rt.plural}))
    }
    fn conflict(rt: &ResourceType, name: &str) -> Self {
        ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", rt.qualified_resource()))
            .details(json!({"name": name, "group": rt.group, "kind": rt.plural}))
    }
    fn bad_request(msg: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", msg)
    }
    fn invalid(rt: &ResourceType, name: &str, errors: &[schema::FieldError]) -> Self {
        let rendered: Vec<String> = errors.iter().map(|e| e.rendered()).collect();
        let joined = if rendered.len() == 1 {
            rendered[0].clone()
        } else {
            format!("[{}]", rendered.join(", "))
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason, "message": e.detail, "field": e.field}))
            .collect();
        ApiError::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {joined}", rt.qualified_kind()),
        )
        .details(json!({"name": name, "group": rt.group, "kind": rt.kind, "causes": causes}))
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn json_response(code: u16, value: &Value) -> Response<Body> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    let mut resp = json_response(e.code, &e.status_json());
    if let Some(secs) = e.retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// The parts of a request every handler needs.
struct Ctx {
    user: User,
    query: HashMap<String, String>,
    accept: String,
    content_type: String,
    user_agent: String,
}

impl Ctx {
    fn q(&self, k: &str) -> Option<&str> {
        self.query
            .get(k)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
    fn wants_table(&self) -> bool {
        self.accept.contains("as=Table")
    }
    /// `Accept: application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`: only
    /// the metadata of each object, as client-go's and kube's metadata clients ask
    /// (`staging/src/k8s.io/apiserver/pkg/endpoints/handlers/response.go`,
    /// `asPartialObjectMetadata` / `asPartialObjectMetadataList`).
    fn wants_metadata(&self) -> bool {
        !self.wants_table() && self.accept.contains("as=PartialObjectMetadata")
    }
    fn field_manager(&self) -> String {
        self.q("fieldManager")
            .map(str::to_string)
            .unwrap_or_else(|| {
                self.user_agent
                    .split('/')
                    .next()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("unknown")
                    .to_string()
            })
    }
    fn dry_run(&self) -> bool {
        self.q("dryRun") == Some("All")
    }
}

/// A request for objects of one type.
#[derive(Clone, Debug)]
struct ResourcePath {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

/// The audience of tokens the emulator issues when a TokenRequest names none (the API
/// server's `--api-audiences`, by default its `--service-account-issuer`).
const TOKEN_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// `POST .../serviceaccounts/NAME/token` (TokenRequest), as
/// `pkg/registry/core/serviceaccount/storage/token.go` answers: 404 for a missing
/// ServiceAccount, 422 from `pkg/apis/authentication/validation` (`expirationSeconds` at
/// least 600), else 201 with `status.token` and `status.expirationTimestamp`. The token is
/// JWT-shaped (`sub` `system:serviceaccount:NS:NAME`, `exp`) and authenticates as the
/// ServiceAccount until it expires; it is not signed, the emulator being a test double.
fn create_token(state: &State, rp: &ResourcePath, ctx: &Ctx, body: &[u8]) -> Reply {
    use base64::Engine;
    let mut req = parse_body(ctx, body)?;
    let name = rp.name.clone().unwrap_or_default();
    let ns = rp.namespace.clone().unwrap_or_default();
    let sa = state
        .store
        .get("serviceaccounts", &ns, &name)
        .ok_or_else(|| ApiError::not_found(&rp.rt, &name))?;
    let invalid = |field: &str, value: &Value, detail: &str| {
        let e = schema::FieldError::invalid(field, value, detail);
        ApiError::new(
            422,
            "Invalid",
            format!(
                "TokenRequest.authentication.k8s.io \"\" is invalid: {}",
                e.rendered()
            ),
        )
        .details(
            json!({"group": "authentication.k8s.io", "kind": "TokenRequest", "causes": [
                {"reason": e.reason, "message": e.detail, "field": e.field},
            ]}),
        )
    };
    let expiration = req
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(3600);
    if expiration < 600 {
        return Err(invalid(
            "spec.expirationSeconds",
            &json!(expiration),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if expiration > 1 << 32 {
        return Err(invalid(
            "spec.expirationSeconds",
            &json!(expiration),
            "may not specify a duration longer than 2^32 seconds",
        ));
    }
    let audiences = req
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .cloned()
        .unwrap_or_else(|| vec![json!(TOKEN_AUDIENCE)]);
    let now = jiff::Timestamp::now();
    let exp = now.as_second() + expiration;
    let claims = json!({
        "iss": TOKEN_AUDIENCE, "aud": audiences, "exp": exp, "iat": now.as_second(),
        "sub": format!("system:serviceaccount:{ns}:{name}"),
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": name, "uid": sa["metadata"]["uid"]}},
    });
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let token = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": "kube-emulator"})),
        b64(&claims),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b"kube-emulator")
    );
    let expires = jiff::Timestamp::from_second(exp)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    req["apiVersion"] = json!("authentication.k8s.io/v1");
    req["kind"] = json!("TokenRequest");
    req["metadata"] = json!({"name": name, "namespace": ns, "creationTimestamp": now_rfc3339()});
    req["spec"]["audiences"] = json!(audiences);
    req["spec"]["expirationSeconds"] = json!(expiration);
    if req["spec"].get("boundObjectRef").is_none() {
        req["spec"]["boundObjectRef"] = Value::Null;
    }
    req["status"] = json!({"token": token, "expirationTimestamp": expires});
    Ok((201, req, vec![]))
}

/// The ServiceAccount a token from [`create_token`] stands for, while it has not expired.
fn token_subject(token: &str) -> Option<(String, String)> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?,
    )
    .ok()?;
    if claims["exp"].as_i64()? <= jiff::Timestamp::now().as_second() {
        return None;
    }
    let rest = claims["sub"]
        .as_str()?
        .strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    Some((ns.to_string(), name.to_string()))
}

fn authenticate(shared: &Shared, req: &Request<Incoming>) -> Option<User> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    if token == shared.admin_token {
        // `kubectl --as`: only the admin may impersonate (it holds the impersonate verb).
        if let Some(name) = req
            .headers()
            .get("impersonate-user")
            .and_then(|v| v.to_str().ok())
        {
            let groups = req
                .headers()
                .get_all("impersonate-group")
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_string))
                .collect();
            return Some(User::impersonated(name, groups));
        }
        return Some(User::Admin);
    }
    if let Some((namespace, name)) = token_subject(token) {
        return Some(User::ServiceAccount { namespace, name });
    }
    let rest = token.strip_prefix("sa:")?;
    let (ns, name) = rest.split_once(':')?;
    if ns.is_empty() || name.is_empty() {
        return None;
    }
    Some(User::ServiceAccount {
        namespace: ns.to_string(),
        name: name.to_string(),
    })
}

fn parse_resource_path(registry: &Registry, segs: &[&str]) -> Option<ResourcePath> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if registry
                .get(group, version, plural)
                .is_some_and(|rt| rt.namespaced) =>
        {
            (Some(ns.to_string()), {
                let mut v = vec![*plural];
                v.extend_from_slice(tail);
                v
            })
        }
        other => (None, other.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    let rt = registry.get(group, version, plural)?.clone();
    Some(ResourcePath {
        rt,
        namespace,
        name,
        sub,
    })
}

fn verb_for(method: &Method, path: &ResourcePath, watch: bool) -> &'static str {
    match *method {
        Method::GET if watch => "watch",
        Method::GET if path.name.is_some() => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if path.name.is_some() => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

fn patch_kind(content_type: &str) -> &'static str {
    if content_type.starts_with("application/apply-patch") {
        "apply"
    } else if content_type.starts_with("application/merge-patch+json") {
        "merge"
    } else if content_type.starts_with("application/strategic-merge-patch+json") {
        "strategic"
    } else if content_type.starts_with("application/json-patch+json") {
        "json"
    } else {
        "unknown"
    }
}

/// Entry point for one HTTP request.
pub async fn handle(shared: std::sync::Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let mut slot = None;
    let resp = handle_counted(shared.clone(), req, &mut slot).await;
    if let Some(index) = slot {
        shared.counters.set_code(index, resp.status().as_u16());
    }
    resp
}

async fn handle_counted(
    shared: std::sync::Arc<Shared>,
    req: Request<Incoming>,
    slot: &mut Option<usize>,
) -> Response<Body> {
    let Some(user) = authenticate(&shared, &req) else {
        return error_response(&ApiError::new(401, "Unauthorized", "Unauthorized"));
    };
    let uri = req.uri().clone();
    let path = uri.path().to_string();
    let query: HashMap<String, String> = uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let header_str = |h: header::HeaderName| {
        req.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let ctx = Ctx {
        user: user.clone(),
        query,
        accept: header_str(header::ACCEPT),
        content_type: header_str(header::CONTENT_TYPE),
        user_agent: header_str(header::USER_AGENT),
    };
    let method = req.method().clone();

    if let Some(action) = path.strip_prefix("/_emulator/") {
        if user != User::Admin {
            return error_response(&ApiError::new(
                403,
                "Forbidden",
                "the emulator control API is for the admin token only",
            ));
        }
        return crate::control(&shared, action, &ctx.query);
    }

    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let resource = {
        let state = lock(&shared.state);
        parse_resource_path(&state.registry, &segs)
    };
    let watch = ctx.q("watch").is_some_and(|w| w == "true" || w == "1");
    let record = match &resource {
        Some(rp) => RequestRecord {
            verb: verb_for(&method, rp, watch).to_string(),
            resource: rp.rt.plural.clone(),
            subresource: rp.sub.clone(),
            namespace: rp.namespace.clone(),
            name: rp.name.clone(),
            caller: user.username(),
            patch_type: (method == Method::PATCH)
                .then(|| patch_kind(&ctx.content_type).to_string()),
            code: None,
        },
        None => RequestRecord {
            verb: method.as_str().to_ascii_lowercase(),
            resource: String::new(),
            subresource: None,
            namespace: None,
            name: None,
            caller: user.username(),
            patch_type: None,
            code: None,
        },
    };
    *slot = Some(shared.counters.record(record.clone()));
    if shared.faults.is_paused_for(&record) {
        shared.faults.wait_unpaused_for(&record).await;
    }
    if let Some((code, retry_after)) = shared.faults.take_failure(&record) {
        let (reason, message) = match code {
            429 => (
                "TooManyRequests",
                "the server has received too many requests and has asked us to try again later",
            ),
            503 => (
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            504 => (
                "Timeout",
                "the server was unable to return a response in the time allotted",
            ),
            _ => (
                "InternalError",
                "Internal error occurred: injected by the emulator",
            ),
        };
        let mut e = ApiError::new(code, reason, message);
        e.retry_after = retry_after;
        if let Some(secs) = retry_after {
            e.details = Some(json!({"retryAfterSeconds": secs}));
        }
        return error_response(&e);
    }

    let Some(rp) = resource else {
        return non_resource(&shared, &method, &segs, &ctx);
    };

    if let Some(ns) = &rp.namespace
        && !rp.rt.namespaced
    {
        return error_response(
            &ApiError::new(
                404,
                "NotFound",
                format!(
                    "the server could not find the requested resource ({} {})",
                    method, path
                ),
            )
            .details(json!({ "namespace": ns })),
        );
    }
    let token_request = rp.sub.as_deref() == Some("token")
        && rp.rt.group.is_empty()
        && rp.rt.kind == "ServiceAccount";
    if let Some(sub) = &rp.sub
        && !(sub == "status" && rp.rt.status_subresource)
        && !(sub == "scale" && has_scale(&rp.rt))
        && !token_request
    {
        return error_response(&ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    let verb = verb_for(&method, &rp, watch);
    {
        let state = lock(&shared.state);
        let attrs = Attributes {
            verb,
            group: &rp.rt.group,
            resource: &rp.rt.plural,
            subresource: rp.sub.as_deref(),
            namespace: rp.namespace.as_deref(),
            name: rp.name.as_deref(),
        };
        // Every authenticated user may ask what it may do (system:basic-user).
        let self_review = rp.rt.kind == "SelfSubjectAccessReview";
        if !self_review && !rbac::allowed(&state.store, &user, &attrs) {
            let msg = rbac::forbidden_message(&user, &attrs, &rp.rt.qualified_resource());
            let mut details = json!({"group": rp.rt.group, "kind": rp.rt.plural});
            if let Some(n) = &rp.name {
                details["name"] = json!(n);
            }
            return error_response(&ApiError::new(403, "Forbidden", msg).details(details));
        }
    }

    let body = if matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        match read_body(req).await {
            Ok(b) => b,
            Err(e) => return error_response(&e),
        }
    } else {
        Bytes::new()
    };

    if token_request {
        let result = if method == Method::POST {
            let state = lock(&shared.state);
            create_token(&state, &rp, &ctx, &body)
        } else {
            Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ))
        };
        return match result {
            Ok((code, value, _)) => json_response(code, &value),
            Err(e) => error_response(&e),
        };
    }
    if rp.sub.as_deref() == Some("scale") {
        let result = scale(&shared, &rp, &ctx, verb, &body);
        return match result {
            Ok((code, value, _)) => json_response(code, &value),
            Err(e) => error_response(&e),
        };
    }
    let result = match verb {
        "watch" => return watch_response(shared.clone(), rp, &ctx, record),
        "get" => get(&shared, &rp, &ctx),
        "list" => list(&shared, &rp, &ctx),
        "create" => create(&shared, &rp, &ctx, &body),
        "update" => update(&shared, &rp, &ctx, &body),
        "patch" => patch_request(&shared, &rp, &ctx, &body),
        "delete" => delete(&shared, &rp, &ctx, &body),
        "deletecollection" => delete_collection(&shared, &rp, &ctx),
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".to_string(),
        )),
    };
    match result {
        Ok((code, value, warnings)) => {
            let mut resp = json_response(code, &value);
            for w in warnings {
                if let Ok(v) = HeaderValue::from_str(&format!("299 - {:?}", w)) {
                    resp.headers_mut().append(header::WARNING, v);
                }
            }
            resp
        }
        Err(e) => error_response(&e),
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    limited
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ApiError::new(413, "RequestEntityTooLarge", format!("request body: {e}")))
}

fn parse_body(ctx: &Ctx, body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    if ctx
        .content_type
        .starts_with("application/vnd.kubernetes.protobuf")
    {
        return crate::protobuf::decode(body)
            .map_err(|e| ApiError::new(415, "UnsupportedMediaType", e));
    }
    if ctx.content_type.contains("yaml") {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body of the request was in an unknown format - accepted media types include: application/json ({e})")))
    }
}

type Reply = Result<(u16, Value, Vec<String>), ApiError>;

/// The media type of aggregated discovery (`apidiscovery.k8s.io/v2`).
const AGGREGATED_DISCOVERY: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// One group's entry of aggregated discovery, as
/// `staging/src/k8s.io/apiserver/pkg/endpoints/discovery/aggregated/handler.go` serves it
/// (types in `k8s.io/api/apidiscovery/v2`).
fn discovery_group(registry: &Registry, group: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            let resources: Vec<Value> = registry
                .in_group_version(group, v)
                .map(|rt| {
                    // Measured on v1.36: the core group's responseKind has an empty version, and
                    // CRDs list their verbs in the apiextensions handler's order.
                    let version = if rt.group.is_empty() { "" } else { rt.version.as_str() };
                    let kind = json!({"group": rt.group, "version": version, "kind": rt.kind});
                    let verbs = if rt.crd_name.is_some() {
                        json!(["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"])
                    } else {
                        json!(rt.verbs())
                    };
                    let mut r = json!({
                        "resource": rt.plural, "responseKind": kind,
                        "scope": if rt.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": rt.singular, "verbs": verbs,
                    });
                    if !rt.short_names.is_empty() {
                        r["shortNames"] = json!(rt.short_names);
                    }
                    if !rt.categories.is_empty() {
                        r["categories"] = json!(rt.categories);
                    }
                    let mut subs = Vec::new();
                    if rt.status_subresource {
                        subs.push(json!({"subresource": "status", "responseKind": kind, "verbs": ["get", "patch", "update"]}));
                    }
                    if has_scale(rt) {
                        subs.push(json!({"subresource": "scale", "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}, "verbs": ["get", "patch", "update"]}));
                    }
                    if rt.group.is_empty() && rt.kind == "ServiceAccount" {
                        subs.push(json!({"subresource": "token", "responseKind": {"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"}, "verbs": ["create"]}));
                    }
                    if !subs.is_empty() {
                        r["subresources"] = json!(subs);
                    }
                    r
                })
                .collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    let mut metadata = json!({"creationTimestamp": null});
    if !group.is_empty() {
        metadata["name"] = json!(group);
    }
    json!({"metadata": metadata, "versions": versions})
}

fn non_resource(shared: &Shared, method: &Method, segs: &[&str], ctx: &Ctx) -> Response<Body> {
    if *method != Method::GET {
        return error_response(&ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    let state = lock(&shared.state);
    let registry = &state.registry;
    // kubectl and client-go ask for aggregated discovery first and fall back to the
    // per-group documents when a server answers with those.
    if ctx.accept.contains("as=APIGroupDiscoveryList") && matches!(segs, ["api"] | ["apis"]) {
        let items: Vec<Value> = if segs == ["api"] {
            vec![discovery_group(registry, "", &["v1".to_string()])]
        } else {
            registry
                .groups()
                .into_iter()
                .map(|(g, vs)| discovery_group(registry, &g, &vs))
                .collect()
        };
        let doc = json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items});
        let mut resp = json_response(200, &doc);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(AGGREGATED_DISCOVERY),
        );
        return resp;
    }
    let found = match segs {
        // The release the conformance recording comes from, with the fields 1.36 reports
        // (`staging/src/k8s.io/apimachinery/pkg/version/types.go`), so kubectl 1.36 sees no
        // version skew here either.
        ["version"] => Some(json!({
            "major": "1", "minor": "36", "emulationMajor": "1", "emulationMinor": "36",
            "minCompatibilityMajor": "1", "minCompatibilityMinor": "35",
            "gitVersion": "v1.36.2-kube-emulator", "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.26.4", "compiler": "gc", "platform": "linux/amd64",
        })),
        ["healthz"] | ["readyz"] | ["livez"] => {
            let mut resp = Response::new(full("ok"));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            return resp;
        }
        ["api"] => Some(json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.address}],
        })),
        ["apis"] => {
            let groups: Vec<Value> = registry
                .groups()
                .into_iter()
                .map(|(g, vs)| api_group(&g, &vs))
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        ["apis", g] => registry.groups().get(*g).map(|vs| api_group(g, vs)),
        ["api", "v1"] => Some(resource_list(registry, "", "v1")),
        ["apis", g, v] => registry
            .groups()
            .get(*g)
            .filter(|vs| vs.iter().any(|x| x == v))
            .map(|_| resource_list(registry, g, v)),
        ["openapi", "v2"] => Some(openapi::swagger_v2(registry)),
        ["openapi", "v3"] => Some(openapi::index(registry)),
        ["openapi", "v3", rest @ ..] => openapi::document(registry, &rest.join("/")),
        _ => None,
    };
    match found {
        Some(v) => json_response(200, &v),
        None => error_response(&ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
    }
}

fn api_group(g: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(Value::Null)})
}

fn resource_list(registry: &Registry, group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for rt in registry.in_group_version(group, version) {
        let mut r = json!({
            "name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced,
            "kind": rt.kind, "verbs": rt.verbs(),
        });
        if !rt.short_names.is_empty() {
            r["shortNames"] = json!(rt.short_names);
        }
        if !rt.categories.is_empty() {
            r["categories"] = json!(rt.categories);
        }
        resources.push(r);
        if has_scale(rt) {
            resources.push(json!({"name": format!("{}/scale", rt.plural), "singularName": "", "namespaced": rt.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
        }
        if rt.status_subresource {
            resources.push(json!({"name": format!("{}/status", rt.plural), "singularName": "", "namespaced": rt.namespaced, "kind": rt.kind, "verbs": ["get", "patch", "update"]}));
        }
        if rt.group.is_empty() && rt.kind == "ServiceAccount" {
            resources.push(json!({"name": "serviceaccounts/token", "singularName": "", "namespaced": true, "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]}));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

/// Field renames between core/v1 Events (storage shape) and events.k8s.io/v1 Events.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

fn rename_fields(mut obj: Value, to_v1: bool) -> Value {
    if let Some(m) = obj.as_object_mut() {
        for (core, v1) in EVENT_FIELDS {
            let (from, to) = if to_v1 { (core, v1) } else { (v1, core) };
            if let Some(v) = m.remove(*from) {
                m.insert(to.to_string(), v);
            }
        }
    }
    obj
}

/// An object as the requested API version shows it (only Events differ between versions).
fn to_view(rt: &ResourceType, obj: Value) -> Value {
    if rt.kind == "Event" && rt.group == "events.k8s.io" {
        rename_fields(obj, true)
    } else {
        obj
    }
}

/// An object as sent to a version, in its storage shape.
fn to_storage(rt: &ResourceType, obj: Value) -> Value {
    if rt.kind == "Event" && rt.group == "events.k8s.io" {
        rename_fields(obj, false)
    } else {
        obj
    }
}

/// Sets the output `apiVersion`/`kind` of an object to the requested version's.
/// An object as read from storage: for custom resources with the CRD's *current* defaults
/// applied, so objects stored before a default was added read with it
/// (`apiextensions-apiserver/pkg/apiserver/customresource_handler.go`: the storage codec's
/// decoder runs `structuraldefaulting.Default` on every read from etcd).
fn read_view(rt: &ResourceType, obj: Value) -> Value {
    let obj = to_view(rt, obj);
    match (&rt.crd_name, &rt.schema) {
        (Some(_), Some(schema)) => schema::apply_defaults_owned(schema, obj),
        _ => obj,
    }
}

fn present(rt: &ResourceType, obj: Value) -> Value {
    let mut obj = read_view(rt, obj);
    obj["apiVersion"] = json!(rt.api_version());
    obj["kind"] = json!(rt.kind);
    obj
}

fn obj_ns(obj: &Value) -> &str {
    obj.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn obj_name(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn include_object(ctx: &Ctx) -> IncludeObject {
    match ctx.q("includeObject") {
        Some("None") => IncludeObject::None,
        Some("Object") => IncludeObject::Object,
        _ => IncludeObject::Metadata,
    }
}

fn get(shared: &Shared, rp: &ResourcePath, ctx: &Ctx) -> Reply {
    let state = lock(&shared.state);
    let name = rp.name.as_deref().unwrap_or_default();
    let obj = state
        .store
        .get(
            &rp.rt.storage_key(),
            rp.namespace.as_deref().unwrap_or_default(),
            name,
        )
        .cloned()
        .ok_or_else(|| ApiError::not_found(&rp.rt, name))?;
    let obj = present(&rp.rt, obj);
    if ctx.wants_table() {
        let rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        return Ok((
            200,
            table::table(&rp.rt, &[obj], &rv, include_object(ctx), None),
            vec![],
        ));
    }
    if ctx.wants_metadata() {
        return Ok((200, table::partial_object_metadata(&obj), vec![]));
    }
    Ok((200, obj, vec![]))
}

fn selectors(rt: &ResourceType, ctx: &Ctx) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(ctx.q("labelSelector").unwrap_or_default())
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(ctx.q("fieldSelector").unwrap_or_default())
        .map_err(ApiError::bad_request)?;
    for label in fields.labels() {
        check_field_label(rt, label).map_err(ApiError::bad_request)?;
    }
    Ok((labels, fields))
}

/// The field labels a type can be selected by, as the handlers check them before listing
/// (`apiserver/pkg/endpoints/handlers/get.go` → `ConvertFieldLabel`): the conversions of
/// `pkg/apis/core/v1/conversion.go` for Pods, Nodes, Events, Namespaces, Secrets and
/// Services; `metadata.name`/`metadata.namespace` for other built-ins
/// (`apimachinery/pkg/runtime/conversion.go` `DefaultMetaV1FieldSelectorConversion`); and
/// for custom resources the same two plus the CRD's `selectableFields`
/// (`apiextensions-apiserver/pkg/apiserver/conversion/converter.go`).
fn check_field_label(rt: &ResourceType, label: &str) -> Result<(), String> {
    let meta = label == "metadata.name"
        || (label == "metadata.namespace"
            && (rt.namespaced
                || (rt.crd_name.is_none() && !matches!(rt.kind.as_str(), "Namespace" | "Node"))));
    if meta {
        return Ok(());
    }
    let extra: &[&str] = match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Pod") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
            "spec.host",
        ],
        ("", "Node") => &["spec.unschedulable"],
        ("", "Event") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "Namespace") => &["status.phase"],
        ("", "Secret") => &["type"],
        ("", "Service") => &["spec.clusterIP", "spec.type"],
        ("", "ReplicationController") => &["status.replicas"],
        // events.k8s.io shares core Events' storage and its own conversions; not narrowed here.
        ("events.k8s.io", _) => return Ok(()),
        _ => &[],
    };
    if extra.contains(&label) || rt.selectable_fields.iter().any(|f| f == label) {
        return Ok(());
    }
    if rt.crd_name.is_some() || !extra.is_empty() {
        Err(format!("field label not supported: {label}"))
    } else {
        Err(format!(
            "\"{label}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
        ))
    }
}

/// Under the lock: the list's resourceVersion and the stored objects it covers (pointer
/// copies), after the resourceVersion and continue-token checks.
type Snapshot = (u64, Vec<std::sync::Arc<Value>>);

fn list_snapshot(shared: &Shared, rp: &ResourcePath, ctx: &Ctx) -> Result<Snapshot, ApiError> {
    let state = lock(&shared.state);
    let current = state.store.current_rv();
    if let (Some(rv), Some("Exact")) = (ctx.q("resourceVersion"), ctx.q("resourceVersionMatch"))
        && rv
            .parse::<u64>()
            .is_ok_and(|rv| rv < state.store.compacted_rv())
    {
        return Err(ApiError::new(
            410,
            "Expired",
            "The resourceVersion for the provided list is too old.",
        ));
    }
    if let Some(token) = ctx.q("continue") {
        let (rv, _) = decode_continue(token)
            .map_err(|e| ApiError::bad_request(format!("invalid continue token: {e}")))?;
        if rv < state.store.compacted_rv() {
            return Err(ApiError::new(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
            ));
        }
    }
    let key = rp.rt.storage_key();
    let objects = match rp.namespace.as_deref() {
        Some(ns) => state.store.list_namespace(&key, ns).cloned().collect(),
        None => state.store.list_shared(&key).cloned().collect(),
    };
    Ok((current, objects))
}

fn list(shared: &Shared, rp: &ResourcePath, ctx: &Ctx) -> Reply {
    let (labels, fields) = selectors(&rp.rt, ctx)?;
    let (current, objects) = list_snapshot(shared, rp, ctx)?;
    // Defaults, selectors and the answer are worked out after the lock is released: a
    // list of 10,000 objects held every other request for its whole length.
    // Labels are the same on the stored object and on its view (defaults and
    // apiVersion/kind do not touch them), so without a field selector the match is decided
    // on the stored objects and only the page is shown (copied, defaulted). kube's watchers
    // list in pages of 500: showing every object for every page made listing N objects
    // cost N²/500 copies (a Secret watch's first list over 60,000 Secrets took minutes).
    let shown_late = fields.is_empty();
    let matching: Vec<std::sync::Arc<Value>> = if shown_late {
        objects.into_iter().filter(|o| labels.matches(o)).collect()
    } else {
        objects
            .into_iter()
            .map(|o| present(&rp.rt, std::sync::Arc::unwrap_or_clone(o)))
            .filter(|o| labels.matches(o) && fields.matches(o))
            .map(std::sync::Arc::new)
            .collect()
    };
    let offset: usize = match ctx.q("continue") {
        Some(token) => decode_continue(token).map(|(_, off)| off).unwrap_or(0),
        None => 0,
    };
    let limit = ctx
        .q("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let end = limit
        .map(|l| (offset + l).min(matching.len()))
        .unwrap_or(matching.len());
    let page: Vec<Value> = matching
        .get(offset.min(matching.len())..end)
        .unwrap_or_default()
        .iter()
        .map(|o| {
            if shown_late {
                present(&rp.rt, (**o).clone())
            } else {
                (**o).clone()
            }
        })
        .collect();
    let cont = (end < matching.len()).then(|| encode_continue(current, end));
    if ctx.wants_table() {
        return Ok((
            200,
            table::table(
                &rp.rt,
                &page,
                &current.to_string(),
                include_object(ctx),
                cont.as_deref(),
            ),
            vec![],
        ));
    }
    let mut metadata = json!({"resourceVersion": current.to_string()});
    if let Some(c) = cont {
        metadata["continue"] = json!(c);
        // Only an unfiltered list knows how many remain (`storage/etcd3/store.go` `GetList`:
        // `if pred.Empty()`).
        if ctx.q("labelSelector").is_none() && ctx.q("fieldSelector").is_none() {
            metadata["remainingItemCount"] = json!(matching.len() - end);
        }
    }
    if ctx.wants_metadata() {
        let items: Vec<Value> = page.iter().map(table::partial_object_metadata).collect();
        return Ok((
            200,
            json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "items": items}),
            vec![],
        ));
    }
    Ok((
        200,
        json!({"kind": rp.rt.list_kind, "apiVersion": rp.rt.api_version(), "metadata": metadata, "items": page}),
        vec![],
    ))
}

/// A continue token shaped like upstream's (`staging/src/k8s.io/apiserver/pkg/storage/continue.go`:
/// unpadded URL-safe base64 of `{"v":"meta.k8s.io/v1","rv":N,"start":…}`); the emulator's
/// `start` is the offset into the (rv-consistent) list.
fn encode_continue(rv: u64, offset: usize) -> String {
    use base64::Engine;
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": offset.to_string()});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

/// Decodes a continue token with upstream's error texts (`DecodeContinue`).
fn decode_continue(token: &str) -> Result<(u64, usize), String> {
    use base64::Engine;
    const INVALID: &str = "continue key is not valid";
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|e| match e {
            base64::DecodeError::InvalidByte(at, _) => {
                format!("{INVALID}: illegal base64 data at input byte {at}")
            }
            other => format!("{INVALID}: {other}"),
        })?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("{INVALID}: {e}"))?;
    if v["v"] != "meta.k8s.io/v1" {
        return Err(format!(
            "{INVALID}: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"
        ));
    }
    let rv = v["rv"].as_u64().filter(|rv| *rv > 0).ok_or_else(|| {
        format!("{INVALID}: incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
    })?;
    let offset = v["start"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{INVALID}: {}", v["start"]))?;
    Ok((rv, offset))
}

/// Spec-like content: everything except metadata (and status when it is a subresource).
fn spec_part(rt: &ResourceType, obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("apiVersion");
        m.remove("kind");
        if rt.status_subresource {
            m.remove("status");
        }
    }
    v
}

/// Validation, pruning and defaulting for CRD-backed objects; returns unknown-field warnings.
fn admit_custom(
    rt: &ResourceType,
    obj: &mut Value,
    old: Option<&Value>,
    ctx: &Ctx,
) -> Result<Vec<String>, ApiError> {
    let Some(schema) = &rt.schema else {
        return Ok(Vec::new());
    };
    let name = obj_name(obj).to_string();
    let unknown = schema::prune(schema, obj);
    let mut warnings = Vec::new();
    if !unknown.is_empty() {
        match ctx.q("fieldValidation") {
            Some("Strict") => {
                let list = unknown
                    .iter()
                    .map(|u| format!("unknown field \"{u}\""))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {list}",
                    rt.kind, rt.version, rt.kind
                )));
            }
            Some("Ignore") => {}
            _ => warnings.extend(unknown.iter().map(|u| format!("unknown field \"{u}\""))),
        }
    }
    *obj = schema::apply_defaults_owned(schema, std::mem::take(obj));
    let mut errors = schema::validate(schema, obj);
    errors.extend(metadata_errors(obj));
    // `apiextensions-apiserver/pkg/registry/customresource/strategy.go`: CEL rules run unless a
    // "blocking" schema error (`hasBlockingErr`) makes them unsafe to evaluate, which is
    // then said instead.
    if let Some(compiled) = &rt.cel {
        let blocking = errors.iter().any(|e| {
            matches!(
                e.reason,
                "FieldValueNotSupported"
                    | "FieldValueRequired"
                    | "FieldValueTooLong"
                    | "FieldValueTooMany"
                    | "FieldValueTypeInvalid"
            )
        });
        if blocking {
            errors.push(schema::FieldError {
                field: "<nil>".into(),
                reason: "FieldValueInvalid",
                detail: "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation".into(),
            });
        } else {
            errors.extend(schema::validate_cel(
                compiled,
                obj,
                old,
                &rt.api_version(),
                &rt.group,
                &rt.kind,
            ));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(rt, &name, &errors));
    }
    Ok(warnings)
}

/// `apimachinery/pkg/util/validation/validation.go` `IsQualifiedName`: messages for `value`.
fn qualified_name_errors(value: &str) -> Vec<String> {
    const NAME_FMT: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
    let mut errs = Vec::new();
    let name = match value.split_once('/') {
        Some((prefix, name)) => {
            let label_ok = |l: &str| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            };
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else if prefix.len() > 253 || !prefix.split('.').all(label_ok) {
                errs.push("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_string());
            }
            name
        }
        None => value,
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 bytes".to_string());
    }
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if !ok {
        errs.push(NAME_FMT.to_string());
    }
    errs
}

/// Event validation (`pkg/apis/core/validation/events.go`, `ValidateEventCreate`) on the
/// storage (core) shape: core/v1 gets the legacy checks only; events.k8s.io/v1 also needs
/// eventTime and a Normal/Warning type and must leave the deprecated fields unset. Field
/// paths are the internal type's (`reportingController` is `reportingComponent` for core/v1).
fn event_errors(rt: &ResourceType, obj: &Value) -> Vec<schema::FieldError> {
    use schema::FieldError;
    let s = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or_default();
    let core = rt.group.is_empty();
    let ns = obj_ns(obj);
    let involved_ns = obj
        .pointer("/involvedObject/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let has_event_time = !s("eventTime").is_empty();
    let mut errs = Vec::new();
    let ns_mismatch = || {
        FieldError::invalid(
            "involvedObject.namespace",
            &json!(involved_ns),
            "does not match event.namespace",
        )
    };
    let len_error = |field: &str, limit: usize| {
        FieldError::invalid(
            field,
            &json!(""),
            format!("can have at most {limit} characters"),
        )
    };
    if !has_event_time {
        if (involved_ns.is_empty() && !ns.is_empty() && ns != "default")
            || (!involved_ns.is_empty() && ns != involved_ns)
        {
            errs.push(ns_mismatch());
        }
    } else {
        if involved_ns.is_empty() && ns != "default" && ns != "kube-system" {
            errs.push(ns_mismatch());
        }
        let controller_field = if core {
            "reportingComponent"
        } else {
            "reportingController"
        };
        let controller = s("reportingComponent");
        if controller.is_empty() {
            errs.push(FieldError::required(controller_field));
        }
        for msg in qualified_name_errors(controller) {
            errs.push(FieldError::invalid(
                controller_field,
                &json!(controller),
                msg,
            ));
        }
        if s("reportingInstance").is_empty() {
            errs.push(FieldError::required("reportingInstance"));
        }
        if s("reportingInstance").len() > 128 {
            errs.push(len_error("reportingInstance", 128));
        }
        if s("action").is_empty() {
            errs.push(FieldError::required("action"));
        }
        if s("action").len() > 128 {
            errs.push(len_error("action", 128));
        }
        if s("reason").is_empty() {
            errs.push(FieldError::required("reason"));
        }
        if s("reason").len() > 128 {
            errs.push(len_error("reason", 128));
        }
        if s("message").len() > 1024 {
            errs.push(len_error("message", 1024));
        }
    }
    if core {
        return errs;
    }
    if let Some(series) = obj.get("series").filter(|v| v.is_object()) {
        if series["count"].as_i64().unwrap_or(0) < 2 {
            errs.push(FieldError::invalid(
                "series.count",
                &json!(""),
                "should be at least 2",
            ));
        }
        if series["lastObservedTime"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            errs.push(FieldError::required("series.lastObservedTime"));
        }
    }
    if !has_event_time {
        errs.push(FieldError::required("eventTime"));
    }
    let type_ = s("type");
    if type_ != "Normal" && type_ != "Warning" {
        errs.push(FieldError::invalid(
            "type",
            &json!(""),
            format!("has invalid value: {type_}"),
        ));
    }
    for (field, what) in [
        ("firstTimestamp", "firstTimestamp"),
        ("lastTimestamp", "lastTimestamp"),
    ] {
        if !s(field).is_empty() {
            errs.push(FieldError::invalid(what, &json!(""), "needs to be unset"));
        }
    }
    if obj["count"].as_i64().is_some_and(|c| c != 0) {
        errs.push(FieldError::invalid(
            "count",
            &json!(""),
            "needs to be unset",
        ));
    }
    if obj["source"].as_object().is_some_and(|m| {
        m.values()
            .any(|v| v.as_str().is_some_and(|x| !x.is_empty()))
    }) {
        errs.push(FieldError::invalid(
            "source",
            &json!(""),
            "needs to be unset",
        ));
    }
    errs
}

/// Label keys and values (`apimachinery/pkg/apis/meta/v1/validation/validation.go`
/// `ValidateLabels`: keys are qualified names, values `IsValidLabelValue`).
fn metadata_errors(obj: &Value) -> Vec<schema::FieldError> {
    const VALUE_FMT: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
    let mut errs = Vec::new();
    for (k, v) in obj
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        for msg in qualified_name_errors(k) {
            errs.push(schema::FieldError::invalid(
                "metadata.labels",
                &json!(k),
                msg,
            ));
        }
        let v = v.as_str().unwrap_or_default();
        let ok = v.is_empty()
            || (v.len() <= 63
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && v.as_bytes()[0].is_ascii_alphanumeric()
                && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric());
        if v.len() > 63 {
            errs.push(schema::FieldError::invalid(
                "metadata.labels",
                &json!(v),
                "must be no more than 63 characters",
            ));
        }
        if !ok {
            errs.push(schema::FieldError::invalid(
                "metadata.labels",
                &json!(v),
                VALUE_FMT,
            ));
        }
    }
    errs
}

/// Built-in validation the real server does that clients notice.
fn admit_builtin(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    if rt.crd_name.is_none() {
        let errors = metadata_errors(obj);
        if !errors.is_empty() {
            return Err(ApiError::invalid(rt, obj_name(obj), &errors));
        }
    }
    // `pkg/apis/coordination/validation/validation.go` `ValidateLeaseSpec`.
    if rt.kind == "Lease" && rt.group == "coordination.k8s.io" {
        let mut errors = Vec::new();
        for (field, minimum, what) in [
            ("leaseDurationSeconds", 1, "must be greater than 0"),
            ("leaseTransitions", 0, "must be greater than or equal to 0"),
        ] {
            if let Some(n) = obj["spec"][field].as_i64()
                && n < minimum
            {
                errors.push(schema::FieldError::invalid(
                    &format!("spec.{field}"),
                    &json!(n),
                    what,
                ));
            }
        }
        if !errors.is_empty() {
            return Err(ApiError::invalid(rt, obj_name(obj), &errors));
        }
    }
    if rt.kind == "Event" {
        let errors = event_errors(rt, obj);
        if !errors.is_empty() {
            // Both Event APIs validate the internal (core) type, and name it so.
            let core = ResourceType {
                group: String::new(),
                ..rt.clone()
            };
            return Err(ApiError::invalid(&core, obj_name(obj), &errors));
        }
    }
    if rt.kind == "Secret" {
        let data = obj.get("data").cloned();
        if let Some(string_data) = obj.get("stringData").and_then(Value::as_object).cloned() {
            use base64::Engine;
            let mut d = data
                .and_then(|d| d.as_object().cloned())
                .unwrap_or_default();
            for (k, v) in string_data {
                d.insert(
                    k,
                    json!(
                        base64::engine::general_purpose::STANDARD
                            .encode(v.as_str().unwrap_or_default())
                    ),
                );
            }
            obj["data"] = Value::Object(d);
            if let Some(m) = obj.as_object_mut() {
                m.remove("stringData");
            }
        }
        if obj
            .get("type")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            obj["type"] = json!("Opaque");
        }
    }
    if rt.kind == "CustomResourceDefinition" {
        let group = obj
            .pointer("/spec/group")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let plural = obj
            .pointer("/spec/names/plural")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if obj_name(obj) != format!("{plural}.{group}") {
            let errors = [schema::FieldError::invalid(
                "metadata.name",
                &json!(obj_name(obj)),
                "must be spec.names.plural+\".\"+spec.group",
            )];
            return Err(ApiError::invalid(rt, obj_name(obj), &errors));
        }
    }
    Ok(())
}

fn has_scale(rt: &ResourceType) -> bool {
    rt.group == "apps"
        && matches!(
            rt.kind.as_str(),
            "Deployment" | "StatefulSet" | "ReplicaSet"
        )
}

fn scale_view(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": obj_name(obj), "namespace": obj_ns(obj),
            "uid": obj["metadata"]["uid"], "resourceVersion": obj["metadata"]["resourceVersion"],
            "creationTimestamp": obj["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

/// The `scale` subresource of Deployments, StatefulSets and ReplicaSets (`kubectl scale`).
fn scale(shared: &Shared, rp: &ResourcePath, ctx: &Ctx, verb: &str, body: &[u8]) -> Reply {
    let rt = &rp.rt;
    let name = rp.name.clone().unwrap_or_default();
    let ns = rp.namespace.clone().unwrap_or_default();
    let mut state = lock(&shared.state);
    let old = state
        .store
        .get(&rt.storage_key(), &ns, &name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(rt, &name))?;
    let view = scale_view(&old);
    let new_view = match verb {
        "get" => return Ok((200, view, vec![])),
        "update" => parse_body(ctx, body)?,
        "patch" => {
            let patch_body: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            let mut v = view.clone();
            match patch_kind(&ctx.content_type) {
                "json" => patch::json_patch(&mut v, &patch_body)
                    .map_err(|e| ApiError::new(422, "Invalid", e))?,
                _ => patch::merge_patch(&mut v, &patch_body),
            }
            v
        }
        _ => {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ));
        }
    };
    let mut new = old.clone();
    new["spec"]["replicas"] = new_view
        .pointer("/spec/replicas")
        .cloned()
        .unwrap_or(json!(1));
    let main = ResourcePath {
        sub: None,
        ..rp.clone()
    };
    let (code, stored, _) = update_object(&mut state, &main, ctx, &old, new, false, false)?;
    Ok((code, scale_view(&stored), vec![]))
}

/// RFC 1123 subdomain (most names) or label (namespaces), as the real server requires.
fn validate_name(rt: &ResourceType, name: &str) -> Result<(), ApiError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let (ok, what) = if rt.kind == "Namespace" {
        (
            label_ok(name),
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
        )
    } else if matches!(
        rt.kind.as_str(),
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding"
    ) {
        // RBAC names are path segments: anything but '/', '%' and '..'.
        (
            !name.is_empty()
                && !name.contains('/')
                && !name.contains('%')
                && name != ".."
                && name != ".",
            "may not contain '/' or '%'",
        )
    } else {
        (
            name.len() <= 253 && name.split('.').all(label_ok),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        )
    };
    if ok {
        Ok(())
    } else {
        let errors = [schema::FieldError::invalid(
            "metadata.name",
            &json!(name),
            what,
        )];
        Err(ApiError::invalid(rt, name, &errors))
    }
}

/// The NamespaceLifecycle admission plugin
/// (`staging/src/k8s.io/apiserver/pkg/admission/plugin/namespace/lifecycle/admission.go`):
/// creates in a missing namespace are 404 (namespaces "x" not found); in a terminating one 403,
/// named by the object's name, else its generateName, else `Unknown`
/// (`admission/errors.go` `extractResourceName`), with a `NamespaceTerminating` cause.
fn check_namespace(
    state: &State,
    rt: &ResourceType,
    ns: &str,
    admission_name: &str,
) -> Result<(), ApiError> {
    if !rt.namespaced {
        return Ok(());
    }
    match state.store.get("namespaces", "", ns) {
        None => Err(
            ApiError::new(404, "NotFound", format!("namespaces \"{ns}\" not found"))
                .details(json!({"name": ns, "kind": "namespaces"})),
        ),
        Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "{} \"{admission_name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                rt.qualified_resource(),
            ),
        )
        .details(json!({
            "name": admission_name, "group": rt.group, "kind": rt.plural,
            "causes": [{"reason": "NamespaceTerminating", "message": format!("namespace {ns} is being terminated"), "field": "metadata.namespace"}],
        }))),
        Some(_) => Ok(()),
    }
}

fn generated_name(prefix: &str, seed: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x =
        seed.wrapping_mul(0x9E3779B97F4A7C15) ^ (jiff::Timestamp::now().as_nanosecond() as u64);
    let mut s = prefix.to_string();
    for _ in 0..5 {
        s.push(ALPHABET[(x % ALPHABET.len() as u64) as usize] as char);
        x /= ALPHABET.len() as u64;
    }
    s
}

/// Creates `obj` (already merged/applied) for `rp`; used by POST and by apply-create.
fn create_object(
    shared: &Shared,
    state: &mut State,
    rp: &ResourcePath,
    ctx: &Ctx,
    obj: Value,
    applied: bool,
) -> Reply {
    let rt = &rp.rt;
    let mut obj = to_storage(rt, obj);
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be an object",
        ));
    }
    let ns = if rt.namespaced {
        let url_ns = rp.namespace.clone().unwrap_or_default();
        let body_ns = obj_ns(&obj).to_string();
        if !body_ns.is_empty() && body_ns != url_ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        url_ns
    } else {
        String::new()
    };
    if obj.get("metadata").is_none_or(|m| !m.is_object()) {
        obj["metadata"] = json!({});
    }
    let mut name = obj_name(&obj).to_string();
    let admission_name = match obj
        .pointer("/metadata/generateName")
        .and_then(Value::as_str)
    {
        Some(prefix) if name.is_empty() && !prefix.is_empty() => prefix.to_string(),
        _ if name.is_empty() => "Unknown".to_string(),
        _ => name.clone(),
    };
    if name.is_empty() {
        if let Some(prefix) = obj
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
        {
            name = generated_name(prefix, shared.uid_counter.fetch_add(1, Ordering::Relaxed));
        } else {
            let errors = [schema::FieldError::required("metadata.name")];
            return Err(ApiError::invalid(rt, "", &errors));
        }
    }
    if let Some(url_name) = &rp.name
        && *url_name != name
    {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    // Admission (the namespace check) runs before validation, as upstream.
    check_namespace(state, rt, &ns, &admission_name)?;
    validate_name(rt, &name)?;
    if state.store.get(&rt.storage_key(), &ns, &name).is_some() {
        return Err(ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", rt.qualified_resource()),
        )
        .details(json!({"name": name, "group": rt.group, "kind": rt.plural})));
    }
    obj["apiVersion"] = json!(rt.api_version());
    obj["kind"] = json!(rt.kind);
    {
        let meta = &mut obj["metadata"];
        meta["name"] = json!(name);
        if rt.namespaced {
            meta["namespace"] = json!(ns);
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        if let Some(m) = meta.as_object_mut() {
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("resourceVersion");
            m.remove("selfLink");
        }
        meta["uid"] = json!(shared.new_uid());
        meta["creationTimestamp"] = json!(now_rfc3339());
        if rt.tracks_generation() {
            meta["generation"] = json!(1);
        }
    }
    if rt.status_subresource
        && rt.crd_name.is_some()
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    match rt.kind.as_str() {
        "Namespace" => {
            obj["status"] = json!({"phase": "Active"});
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            if obj.pointer("/spec/finalizers").is_none() {
                obj["spec"]["finalizers"] = json!(["kubernetes"]);
            }
        }
        "CustomResourceDefinition" => obj["status"] = crd_status(&obj),
        _ => {}
    }
    admit_builtin(rt, &mut obj)?;
    let warnings = admit_custom(rt, &mut obj, None, ctx)?;
    if !applied {
        let scope = Scope::Main {
            status_subresource: rt.status_subresource,
        };
        patch::track_update(
            None,
            &mut obj,
            &ctx.field_manager(),
            rt.schema.as_deref(),
            scope,
            &rt.api_version(),
        );
    }
    if ctx.dry_run() {
        return Ok((201, obj, warnings));
    }
    let rv = state.store.next_rv();
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    state
        .store
        .put(&rt.storage_key(), &ns, &name, obj.clone(), rv);
    if rt.kind == "CustomResourceDefinition" {
        state.registry.register_crd(&obj);
    }
    if rt.kind == "Namespace" {
        put_default_service_account(state, &name, shared.new_uid());
    }
    Ok((201, present(rt, obj), warnings))
}

/// The `default` ServiceAccount every namespace gets. On a real cluster kube-controller-manager's
/// serviceaccount controller creates it moments after the namespace
/// (`pkg/controller/serviceaccount/serviceaccounts_controller.go`, `DefaultServiceAccountsControllerOptions`);
/// here it comes with the namespace, so `kubectl create token default` and pods' default
/// identity work as there.
fn put_default_service_account(state: &mut State, namespace: &str, uid: String) {
    if state
        .store
        .get("serviceaccounts", namespace, "default")
        .is_some()
    {
        return;
    }
    let rv = state.store.next_rv();
    let sa = json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "default", "namespace": namespace, "uid": uid, "resourceVersion": rv.to_string(), "creationTimestamp": now_rfc3339()},
    });
    state
        .store
        .put("serviceaccounts", namespace, "default", sa, rv);
}

fn create(shared: &Shared, rp: &ResourcePath, ctx: &Ctx, body: &[u8]) -> Reply {
    if rp.name.is_some() {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        ));
    }
    let obj = parse_body(ctx, body)?;
    let mut state = lock(&shared.state);
    if matches!(
        rp.rt.kind.as_str(),
        "SelfSubjectAccessReview" | "SubjectAccessReview"
    ) {
        return Ok((201, access_review(&state, &rp.rt, &ctx.user, obj), vec![]));
    }
    create_object(shared, &mut state, rp, ctx, obj, false)
}

/// Stores `new` as the next version of `old`, applying subresource separation, immutable
/// metadata, generation, validation, managedFields bookkeeping and finalizer completion.
#[allow(clippy::too_many_arguments)]
fn update_object(
    state: &mut State,
    rp: &ResourcePath,
    ctx: &Ctx,
    old: &Value,
    new: Value,
    applied: bool,
    check_rv: bool,
) -> Reply {
    let rt = &rp.rt;
    let mut new = to_storage(rt, new);
    let name = rp.name.clone().unwrap_or_default();
    let ns = rp.namespace.clone().unwrap_or_default();
    let current_rv = old
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if check_rv {
        match new
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|rv| !rv.is_empty())
        {
            Some(rv) if rv != current_rv => return Err(ApiError::conflict(rt, &name)),
            Some(_) => {}
            // `generic/registry/store.go` `Update`: an unconditional update where the strategy
            // does not allow one is Invalid, named by resource (not kind), as upstream does.
            None if !allows_unconditional_update(rt) => {
                let error = schema::FieldError::invalid(
                    "metadata.resourceVersion",
                    &json!(0),
                    "must be specified for an update",
                );
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "{} \"{name}\" is invalid: {}",
                        rt.qualified_resource(),
                        error.rendered()
                    ),
                )
                .details(
                    json!({"name": name, "group": rt.group, "kind": rt.plural, "causes": [
                        {"reason": error.reason, "message": error.detail, "field": error.field},
                    ]}),
                ));
            }
            None => {}
        }
    }
    if !new.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be an object",
        ));
    }
    if obj_name(&new) != name && !obj_name(&new).is_empty() {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            obj_name(&new)
        )));
    }
    let status_write = rp.sub.as_deref() == Some("status");
    if status_write {
        let status = new.get("status").cloned();
        let managed = new.pointer("/metadata/managedFields").cloned();
        new = old.clone();
        if applied {
            match managed {
                Some(m) => new["metadata"]["managedFields"] = m,
                None => {
                    if let Some(meta) = new["metadata"].as_object_mut() {
                        meta.remove("managedFields");
                    }
                }
            }
        }
        match status {
            Some(s) => new["status"] = s,
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    } else {
        if rt.status_subresource {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        if new.get("metadata").is_none_or(|m| !m.is_object()) {
            new["metadata"] = json!({});
        }
        for key in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
            "name",
        ] {
            match old["metadata"].get(key) {
                Some(v) => new["metadata"][key] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(key);
                    }
                }
            }
        }
        if old.pointer("/metadata/managedFields").is_some()
            && new.pointer("/metadata/managedFields").is_none()
            && !applied
        {
            new["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
        }
        if rt.kind == "Namespace" {
            new["status"] = old["status"].clone();
        }
    }
    new["apiVersion"] = json!(rt.api_version());
    new["kind"] = json!(rt.kind);
    if !status_write {
        admit_builtin(rt, &mut new)?;
    }
    let warnings = admit_custom(rt, &mut new, Some(old), ctx)?;
    if rt.tracks_generation() && spec_part(rt, old) != spec_part(rt, &new) {
        let g = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        new["metadata"]["generation"] = json!(g + 1);
    }
    if !applied {
        let scope = if status_write {
            Scope::Status
        } else {
            Scope::Main {
                status_subresource: rt.status_subresource,
            }
        };
        patch::track_update(
            Some(old),
            &mut new,
            &ctx.field_manager(),
            rt.schema.as_deref(),
            scope,
            &rt.api_version(),
        );
    }
    new["metadata"]["resourceVersion"] = json!(current_rv);
    let mut unchanged = new == *old;
    if rt.kind == "CustomResourceDefinition" && !status_write {
        new["status"] = crd_status(&new);
        unchanged = new == *old;
    }
    if ctx.dry_run() || unchanged {
        return Ok((200, present(rt, new), warnings));
    }
    let rv = state.store.next_rv();
    new["metadata"]["resourceVersion"] = json!(rv.to_string());
    let finalizing = new.pointer("/metadata/deletionTimestamp").is_some()
        && new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty());
    if finalizing && rt.kind != "Namespace" {
        state
            .store
            .remove(&rt.storage_key(), &ns, &name, new.clone(), rv);
        after_delete(state, rt, &new);
    } else {
        state
            .store
            .put(&rt.storage_key(), &ns, &name, new.clone(), rv);
        if rt.kind == "CustomResourceDefinition" {
            state.registry.register_crd(&new);
        }
    }
    Ok((200, present(rt, new), warnings))
}

/// Whether PUT without `metadata.resourceVersion` overwrites (the strategies'
/// `AllowUnconditionalUpdate`): false for custom resources and CRDs
/// (`apiextensions-apiserver/pkg/registry/customresource/strategy.go`,
/// `.../customresourcedefinition/strategy.go`), Leases (`pkg/registry/coordination/lease/strategy.go`),
/// admission configuration, PodDisruptionBudgets and the CSI types; true for the rest.
fn allows_unconditional_update(rt: &ResourceType) -> bool {
    if rt.crd_name.is_some() || rt.kind == "CustomResourceDefinition" {
        return false;
    }
    match rt.group.as_str() {
        "coordination.k8s.io" | "admissionregistration.k8s.io" | "node.k8s.io" => false,
        "policy" => rt.kind != "PodDisruptionBudget",
        "storage.k8s.io" => !matches!(
            rt.kind.as_str(),
            "CSIDriver" | "CSINode" | "CSIStorageCapacity" | "VolumeAttachment"
        ),
        _ => true,
    }
}

/// Whether PUT of a missing object creates it (the strategies' `AllowCreateOnUpdate`):
/// Leases, RBAC roles and bindings, Events, Services, Endpoints and LimitRanges
/// (`pkg/registry/{coordination/lease,rbac/*,core/event,core/service,core/endpoint,core/limitrange}/strategy.go`).
fn allows_create_on_update(rt: &ResourceType) -> bool {
    match rt.group.as_str() {
        "" => matches!(
            rt.kind.as_str(),
            "Event" | "Service" | "Endpoints" | "LimitRange"
        ),
        "coordination.k8s.io" | "rbac.authorization.k8s.io" | "events.k8s.io" => true,
        "node.k8s.io" => rt.kind == "RuntimeClass",
        _ => false,
    }
}

fn update(shared: &Shared, rp: &ResourcePath, ctx: &Ctx, body: &[u8]) -> Reply {
    let new = parse_body(ctx, body)?;
    let mut state = lock(&shared.state);
    let name = rp.name.clone().unwrap_or_default();
    let old = state
        .store
        .get(
            &rp.rt.storage_key(),
            rp.namespace.as_deref().unwrap_or_default(),
            &name,
        )
        .cloned();
    match old {
        Some(old) => update_object(&mut state, rp, ctx, &old, new, false, true),
        None if rp.sub.is_none() && allows_create_on_update(&rp.rt) => {
            create_object(shared, &mut state, rp, ctx, new, false)
        }
        None => Err(ApiError::not_found(&rp.rt, &name)),
    }
}

fn patch_request(shared: &Shared, rp: &ResourcePath, ctx: &Ctx, body: &[u8]) -> Reply {
    let kind = patch_kind(&ctx.content_type);
    let rt = &rp.rt;
    let name = rp.name.clone().unwrap_or_default();
    let ns = rp.namespace.clone().unwrap_or_default();
    let unsupported = || {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml{}",
                if rt.crd_name.is_none() {
                    ", application/strategic-merge-patch+json"
                } else {
                    ""
                }
            ),
        )
    };
    let patch_body: Value = if kind == "apply" {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
    };
    let mut state = lock(&shared.state);
    let stored = state.store.get(&rt.storage_key(), &ns, &name).cloned();
    let existing = stored.clone().map(|o| read_view(rt, o));
    match kind {
        "apply" => {
            let Some(manager) = ctx.q("fieldManager") else {
                let errors = [schema::FieldError {
                    field: "fieldManager".into(),
                    reason: "FieldValueRequired",
                    detail: "Required value: is required for apply patch".into(),
                }];
                let causes: Vec<Value> = errors
                    .iter()
                    .map(|e| json!({"reason": e.reason, "message": e.detail, "field": e.field}))
                    .collect();
                // `apimachinery/pkg/apis/meta/v1/validation` `ValidatePatchOptions`, named as
                // the PatchOptions kind (no object name).
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                )
                .details(json!({"group": "meta.k8s.io", "kind": "PatchOptions", "causes": causes})));
            };
            let force = ctx.q("force") == Some("true");
            let scope = if rp.sub.as_deref() == Some("status") {
                Scope::Status
            } else {
                Scope::Main {
                    status_subresource: rt.status_subresource,
                }
            };
            if !patch_body.is_object() {
                return Err(ApiError::bad_request("apply patch must be an object"));
            }
            // `handlers/patch.go` (applyPatcher): the applied object must name its type.
            let applied_version = patch_body["apiVersion"].as_str().unwrap_or_default();
            if applied_version.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "invalid object type: /, Kind={}",
                    patch_body["kind"].as_str().unwrap_or_default()
                )));
            }
            if let Some(existing) = &existing
                && let Some(rv) = patch_body
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                && Some(rv)
                    != existing
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
            {
                return Err(ApiError::conflict(rt, &name));
            }
            let merged = patch::apply(
                existing.as_ref(),
                &patch_body,
                manager,
                force,
                rt.schema.as_deref(),
                scope,
                &rt.api_version(),
            )
            .map_err(|conflicts| apply_conflict(&conflicts))?;
            match stored {
                Some(old) => update_object(&mut state, rp, ctx, &old, merged, true, false),
                None => {
                    if scope == Scope::Status {
                        return Err(ApiError::not_found(rt, &name));
                    }
                    let mut obj = merged;
                    obj["metadata"]["name"] = json!(name);
                    if rt.namespaced {
                        obj["metadata"]["namespace"] = json!(ns);
                    }
                    let create_rp = ResourcePath {
                        name: Some(name.clone()),
                        ..rp.clone()
                    };
                    create_object(shared, &mut state, &create_rp, ctx, obj, true)
                }
            }
        }
        "merge" | "json" | "strategic" => {
            if kind == "strategic" && rt.crd_name.is_some() {
                return Err(unsupported());
            }
            let old = stored.ok_or_else(|| ApiError::not_found(rt, &name))?;
            let mut patched = existing.unwrap_or_default();
            match kind {
                "merge" => patch::merge_patch(&mut patched, &patch_body),
                "json" => patch::json_patch(&mut patched, &patch_body)
                    .map_err(|e| ApiError::new(422, "Invalid", e))?,
                _ => patch::strategic_merge(&mut patched, &patch_body),
            }
            update_object(&mut state, rp, ctx, &old, patched, false, true)
        }
        _ => Err(unsupported()),
    }
}

/// `apiserver/pkg/endpoints/handlers/fieldmanager` → structured-merge-diff `Conflicts.Error()`
/// and `internal/conflict.go` `NewConflictError`: a manager is named with its subresource,
/// and one that updated (not applied) with ` using <apiVersion>`; the Status carries only the
/// causes.
fn apply_conflict(conflicts: &[patch::Conflict]) -> ApiError {
    // `apimachinery/pkg/util/managedfields/internal/conflict.go` `printManager`.
    let who = |c: &patch::Conflict| {
        let mut m = format!("\"{}\"", c.manager);
        if let Some(sub) = c.subresource.as_deref().filter(|s| !s.is_empty()) {
            m.push_str(&format!(" with subresource \"{sub}\""));
        }
        if c.operation != "Apply" {
            m.push_str(&format!(" using {}", c.api_version));
        }
        m
    };
    let message = if conflicts.len() == 1 {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            who(&conflicts[0]),
            conflicts[0].field
        )
    } else {
        let mut by_manager: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
        for c in conflicts {
            by_manager.entry(who(c)).or_default().push(c.field.as_str());
        }
        let parts: Vec<String> = by_manager
            .iter()
            .map(|(m, fields)| {
                if fields.len() == 1 {
                    format!("conflicts with {m}: {}", fields[0])
                } else {
                    format!("conflicts with {m}:\n- {}", fields.join("\n- "))
                }
            })
            .collect();
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            parts.join("\n")
        )
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {}", who(c)), "field": c.field}))
        .collect();
    ApiError::new(409, "Conflict", message).details(json!({"causes": causes}))
}

/// Answers a (Self)SubjectAccessReview with the same RBAC evaluation requests get.
fn access_review(state: &State, rt: &ResourceType, caller: &User, mut review: Value) -> Value {
    let spec = review["spec"].clone();
    let user = if rt.kind == "SubjectAccessReview" {
        let groups = spec["groups"]
            .as_array()
            .map(|g| {
                g.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        User::impersonated(spec["user"].as_str().unwrap_or_default(), groups)
    } else {
        caller.clone()
    };
    let allowed = match spec.get("resourceAttributes") {
        Some(ra) => {
            let s = |k: &str| ra.get(k).and_then(Value::as_str).filter(|v| !v.is_empty());
            let attrs = Attributes {
                verb: s("verb").unwrap_or_default(),
                group: s("group").unwrap_or_default(),
                resource: s("resource").unwrap_or_default(),
                subresource: s("subresource"),
                namespace: s("namespace"),
                name: s("name"),
            };
            rbac::allowed(&state.store, &user, &attrs)
        }
        // Non-resource URLs (discovery, /version, /healthz) are open to authenticated users.
        None => true,
    };
    review["apiVersion"] = json!(rt.api_version());
    review["kind"] = json!(rt.kind);
    review["status"] = json!({"allowed": allowed});
    review
}

/// Side effects of an object leaving the store: CRDs take their objects and types along.
fn after_delete(state: &mut State, rt: &ResourceType, obj: &Value) {
    if rt.kind == "CustomResourceDefinition" {
        let name = obj_name(obj).to_string();
        let key = {
            let group = obj
                .pointer("/spec/group")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let plural = obj
                .pointer("/spec/names/plural")
                .and_then(Value::as_str)
                .unwrap_or_default();
            format!("{plural}.{group}")
        };
        for o in state.store.list(&key).cloned().collect::<Vec<_>>() {
            let rv = state.store.next_rv();
            let mut o = o;
            o["metadata"]["resourceVersion"] = json!(rv.to_string());
            state.store.remove(
                &key,
                obj_ns(&o).to_string().as_str(),
                obj_name(&o).to_string().as_str(),
                o.clone(),
                rv,
            );
        }
        state.registry.unregister_crd(&name);
    }
}

/// Types whose registry answers a completed DELETE with the deleted object
/// (`ReturnDeletedObject: true` in their `pkg/registry/**/storage/storage.go`); every other
/// type, custom resources included, answers with a `Status` (Success, name/group/kind/uid), as
/// `staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go` `finalizeDelete` does.
fn returns_deleted_object(rt: &ResourceType) -> bool {
    match rt.group.as_str() {
        "" => matches!(
            rt.kind.as_str(),
            "Namespace"
                | "ServiceAccount"
                | "Pod"
                | "Service"
                | "PersistentVolume"
                | "PersistentVolumeClaim"
                | "ResourceQuota"
                | "PodTemplate"
        ),
        "storage.k8s.io" | "resource.k8s.io" => true,
        _ => false,
    }
}

/// What `finalizeDelete` returns for an object that is (or would be) gone.
fn deleted_answer(rt: &ResourceType, obj: Value) -> Value {
    if returns_deleted_object(rt) {
        return present(rt, obj);
    }
    let mut status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": obj_name(&obj), "kind": rt.plural, "uid": obj["metadata"]["uid"]},
    });
    if !rt.group.is_empty() {
        status["details"]["group"] = json!(rt.group);
    }
    status
}

/// The parts of DeleteOptions the emulator honours.
#[derive(Default)]
pub struct DeleteOptions {
    pub dry_run: bool,
    /// `propagationPolicy` (`Foreground`, `Background`, `Orphan`).
    pub propagation: Option<String>,
    /// The deprecated `orphanDependents`.
    pub orphan_dependents: Option<bool>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
}

impl DeleteOptions {
    fn from_body(opts: &Value, query_dry_run: bool) -> Self {
        let s = |k: &str| opts.get(k).and_then(Value::as_str).map(str::to_string);
        DeleteOptions {
            dry_run: query_dry_run
                || opts
                    .get("dryRun")
                    .and_then(Value::as_array)
                    .is_some_and(|d| d.iter().any(|x| x == "All")),
            propagation: s("propagationPolicy"),
            orphan_dependents: opts.get("orphanDependents").and_then(Value::as_bool),
            precondition_uid: opts
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_string),
            precondition_rv: opts
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string),
        }
    }

    /// The finalizer the garbage collector works through for this deletion
    /// (`deletionFinalizersForGarbageCollection` in `generic/registry/store.go`).
    fn gc_finalizer(&self) -> Option<&'static str> {
        match (self.propagation.as_deref(), self.orphan_dependents) {
            (Some("Foreground"), _) => Some(FOREGROUND),
            (Some("Orphan"), _) | (None, Some(true)) => Some(ORPHAN),
            _ => None,
        }
    }
}

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// Deletes (or starts deleting, when finalizers remain) one object, the way
/// `generic/registry/store.go` `Delete` and `handlers/delete.go` answer: 200 with a `Status`
/// or the object when it is gone; 200 with the object when finalizers keep it (202 only when
/// `orphanDependents: false` was asked); a second DELETE of an object already being deleted
/// changes nothing and answers 200 with the object.
pub fn delete_object(
    state: &mut State,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    opts: &DeleteOptions,
) -> Result<(u16, Value), ApiError> {
    let key = rt.storage_key();
    let mut obj = state
        .store
        .get(&key, ns, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    // `staging/src/k8s.io/apiserver/pkg/registry/rest/delete.go` `BeforeDelete`.
    let uid = obj["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let rv = obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let precondition = |what: String| {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {what}",
                rt.qualified_kind()
            ),
        )
        .details(json!({"name": name, "group": rt.group, "kind": rt.kind}))
    };
    if let Some(want) = &opts.precondition_uid
        && *want != uid
    {
        return Err(precondition(format!(
            "the UID in the precondition ({want}) does not match the UID in record ({uid}). The object might have been deleted and then recreated"
        )));
    }
    if let Some(want) = &opts.precondition_rv
        && *want != rv
    {
        return Err(precondition(format!(
            "the ResourceVersion in the precondition ({want}) does not match the ResourceVersion in record ({rv}). The object might have been modified"
        )));
    }
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        // Measured on kube-apiserver v1.36: the object, as it stands, with 200.
        return Ok((200, present(rt, obj)));
    }
    let mut finalizers: Vec<Value> = obj
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(f) = opts.gc_finalizer()
        && !finalizers.iter().any(|x| x == f)
    {
        finalizers.push(json!(f));
    }
    let stays = !finalizers.is_empty() || rt.kind == "Namespace";
    if opts.dry_run {
        return Ok((
            200,
            if stays {
                present(rt, obj)
            } else {
                deleted_answer(rt, obj)
            },
        ));
    }
    if stays {
        let rv = state.store.next_rv();
        obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        if !finalizers.is_empty() {
            obj["metadata"]["finalizers"] = json!(finalizers);
        }
        if rt.kind == "Namespace" {
            obj["status"] = json!({"phase": "Terminating"});
        }
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        state.store.put(&key, ns, name, obj.clone(), rv);
        let code = if opts.orphan_dependents == Some(false) {
            202
        } else {
            200
        };
        return Ok((code, present(rt, obj)));
    }
    let rv = state.store.next_rv();
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    state.store.remove(&key, ns, name, obj.clone(), rv);
    after_delete(state, rt, &obj);
    Ok((200, deleted_answer(rt, obj)))
}

fn delete(shared: &Shared, rp: &ResourcePath, ctx: &Ctx, body: &[u8]) -> Reply {
    // Typed clients send DeleteOptions as protobuf; their defaults are what the emulator does anyway.
    let opts = if body.is_empty() || ctx.content_type.contains("protobuf") {
        Value::Null
    } else {
        parse_body(ctx, body)?
    };
    let mut opts = DeleteOptions::from_body(&opts, ctx.dry_run());
    if let Some(p) = ctx.q("propagationPolicy") {
        opts.propagation = Some(p.to_string());
    }
    let mut state = lock(&shared.state);
    let name = rp.name.clone().unwrap_or_default();
    let ns = rp.namespace.clone().unwrap_or_default();
    let (code, obj) = delete_object(&mut state, &rp.rt, &ns, &name, &opts)?;
    Ok((code, obj, vec![]))
}

fn delete_collection(shared: &Shared, rp: &ResourcePath, ctx: &Ctx) -> Reply {
    let (labels, fields) = selectors(&rp.rt, ctx)?;
    let mut state = lock(&shared.state);
    let targets: Vec<(String, String)> = state
        .store
        .list(&rp.rt.storage_key())
        .filter(|o| rp.namespace.as_deref().is_none_or(|ns| obj_ns(o) == ns))
        .filter(|o| labels.matches(o) && fields.matches(o))
        .map(|o| (obj_ns(o).to_string(), obj_name(o).to_string()))
        .collect();
    let mut items = Vec::new();
    for (ns, name) in targets {
        let opts = DeleteOptions {
            dry_run: ctx.dry_run(),
            ..Default::default()
        };
        // `Store.DeleteCollection` lists the objects it deleted, not their Statuses.
        let before = state.store.get(&rp.rt.storage_key(), &ns, &name).cloned();
        if let (Ok((_, o)), Some(before)) =
            (delete_object(&mut state, &rp.rt, &ns, &name, &opts), before)
        {
            items.push(if o["kind"] == "Status" {
                present(&rp.rt, before)
            } else {
                o
            });
        }
    }
    Ok((
        200,
        json!({"kind": rp.rt.list_kind, "apiVersion": rp.rt.api_version(), "metadata": {"resourceVersion": state.store.current_rv().to_string()}, "items": items}),
        vec![],
    ))
}

/// Takes `finalizer` off `obj`; the last finalizer of an object being deleted takes it away.
fn remove_finalizer(state: &mut State, rt: &ResourceType, obj: &Value, finalizer: &str) {
    let (ns, name) = (obj_ns(obj).to_string(), obj_name(obj).to_string());
    let Some(mut obj) = state.store.get(&rt.storage_key(), &ns, &name).cloned() else {
        return;
    };
    if let Some(fs) = obj["metadata"]["finalizers"].as_array_mut() {
        fs.retain(|f| f != finalizer);
    }
    let rv = state.store.next_rv();
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    if obj["metadata"]["finalizers"]
        .as_array()
        .is_none_or(|f| f.is_empty())
    {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("finalizers");
        }
        state
            .store
            .remove(&rt.storage_key(), &ns, &name, obj.clone(), rv);
        after_delete(state, rt, &obj);
    } else {
        state.store.put(&rt.storage_key(), &ns, &name, obj, rv);
    }
}

/// Whether an object's owners are all gone (`garbagecollector.go`: an object whose every
/// owner reference names a uid that no longer exists is deleted).
fn orphaned(store: &Store, o: &Value) -> bool {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|os| {
            !os.is_empty()
                && os
                    .iter()
                    .all(|r| r["uid"].as_str().is_none_or(|u| !store.has_uid(u)))
        })
}

/// Garbage collection and namespace termination, run periodically in the background. Only
/// what changed since the last pass is looked at ([`crate::store::GcWork`]).
pub fn collect_garbage(state: &mut State) {
    let work = state.store.take_gc_work();
    if !work.full {
        let doomed: Vec<(ResourceType, String, String)> = work
            .candidates
            .into_iter()
            .filter_map(|(key, ns, name)| {
                let o = state.store.get(&key, &ns, &name)?;
                if o.pointer("/metadata/deletionTimestamp").is_some() || !orphaned(&state.store, o)
                {
                    return None;
                }
                let rt = state.registry.all().find(|rt| rt.storage_key() == key)?;
                Some((rt.clone(), ns, name))
            })
            .collect();
        for (rt, ns, name) in doomed {
            let _ = delete_object(state, &rt, &ns, &name, &DeleteOptions::default());
        }
        return;
    }
    let types: Vec<ResourceType> = {
        let mut seen = std::collections::HashSet::new();
        state
            .registry
            .all()
            .filter(|rt| seen.insert(rt.storage_key()))
            .cloned()
            .collect()
    };
    let terminating: Vec<String> = state
        .store
        .list("namespaces")
        .filter(|n| n.pointer("/metadata/deletionTimestamp").is_some())
        .map(|n| obj_name(n).to_string())
        .collect();
    let mut doomed = Vec::new();
    for rt in &types {
        for o in state.store.list(&rt.storage_key()) {
            if o.pointer("/metadata/deletionTimestamp").is_some() {
                continue;
            }
            let in_terminating = rt.namespaced && terminating.iter().any(|ns| ns == obj_ns(o));
            if in_terminating || orphaned(&state.store, o) {
                doomed.push((rt.clone(), obj_ns(o).to_string(), obj_name(o).to_string()));
            }
        }
    }
    for (rt, ns, name) in doomed {
        // Already gone (a CRD deletion took it along) is fine.
        let _ = delete_object(state, &rt, &ns, &name, &DeleteOptions::default());
    }
    // Owners deleted with `propagationPolicy: Foreground` or `Orphan` carry the matching
    // finalizer until the garbage collector has dealt with their dependents
    // (`pkg/controller/garbagecollector/garbagecollector.go`, `processDeletingDependentsItem`
    // and `orphanDependents`).
    let mut owners = Vec::new();
    for rt in &types {
        for o in state.store.list(&rt.storage_key()) {
            let finalizers = o.pointer("/metadata/finalizers").and_then(Value::as_array);
            for f in [FOREGROUND, ORPHAN] {
                if o.pointer("/metadata/deletionTimestamp").is_some()
                    && finalizers.is_some_and(|fs| fs.iter().any(|x| x == f))
                {
                    owners.push((rt.clone(), o.clone(), f));
                }
            }
        }
    }
    for (owner_rt, owner, finalizer) in owners {
        let uid = owner["metadata"]["uid"].clone();
        let dependents: Vec<(ResourceType, Value)> = types
            .iter()
            .flat_map(|rt| {
                state
                    .store
                    .list(&rt.storage_key())
                    .filter(|o| {
                        o.pointer("/metadata/ownerReferences")
                            .and_then(Value::as_array)
                            .is_some_and(|rs| rs.iter().any(|r| r["uid"] == uid))
                    })
                    .map(|o| (rt.clone(), o.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (rt, mut dep) in dependents.iter().cloned() {
            if finalizer == ORPHAN {
                if let Some(rs) = dep["metadata"]["ownerReferences"].as_array_mut() {
                    rs.retain(|r| r["uid"] != uid);
                }
                let rv = state.store.next_rv();
                dep["metadata"]["resourceVersion"] = json!(rv.to_string());
                let (ns, name) = (obj_ns(&dep).to_string(), obj_name(&dep).to_string());
                state.store.put(&rt.storage_key(), &ns, &name, dep, rv);
            } else {
                let _ = delete_object(
                    state,
                    &rt,
                    obj_ns(&dep),
                    obj_name(&dep),
                    &DeleteOptions::default(),
                );
            }
        }
        if finalizer == ORPHAN || dependents.is_empty() {
            remove_finalizer(state, &owner_rt, &owner, finalizer);
        }
    }
    for ns in terminating {
        let empty = types
            .iter()
            .filter(|rt| rt.namespaced)
            .all(|rt| state.store.list(&rt.storage_key()).all(|o| obj_ns(o) != ns));
        if empty && let Some(mut obj) = state.store.get("namespaces", "", &ns).cloned() {
            let rv = state.store.next_rv();
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            state.store.remove("namespaces", "", &ns, obj, rv);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Watch

struct WatchFilter {
    key: String,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl WatchFilter {
    fn matches(&self, obj: &Value) -> bool {
        self.namespace.as_deref().is_none_or(|ns| obj_ns(obj) == ns)
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }

    /// The event a watcher sees for a change, after selector transitions.
    fn event_for(&self, change: &Change) -> Option<&'static str> {
        if change.storage_key != self.key {
            return None;
        }
        let now = self.matches(&change.object);
        let before = change.old.as_ref().is_some_and(|o| self.matches(o));
        match change.type_ {
            EventType::Added if now => Some("ADDED"),
            EventType::Modified if now && before => Some("MODIFIED"),
            EventType::Modified if now => Some("ADDED"),
            EventType::Modified if before => Some("DELETED"),
            EventType::Deleted if before || now => Some("DELETED"),
            _ => None,
        }
    }
}

/// The object a watch event carries. An update that makes the object stop matching the
/// watcher's selectors is sent as DELETED with the object as it was before (still matching),
/// at the update's resourceVersion (`staging/src/k8s.io/apiserver/pkg/storage/cacher/cache_watcher.go`
/// `convertToWatchEvent`: `!curObjPasses && oldObjPasses`).
fn event_object(change: &Change, event: &str) -> Value {
    match (&change.type_, event, &change.old) {
        (EventType::Modified, "DELETED", Some(old)) => {
            let mut old = (**old).clone();
            old["metadata"]["resourceVersion"] = json!(change.rv.to_string());
            old
        }
        _ => (*change.object).clone(),
    }
}

fn expired_event(rv: &str, compacted: u64) -> Value {
    let e = ApiError::new(
        410,
        "Expired",
        format!("too old resource version: {rv} ({compacted})"),
    );
    json!({"type": "ERROR", "object": e.status_json()})
}

fn watch_response(
    shared: std::sync::Arc<Shared>,
    rp: ResourcePath,
    ctx: &Ctx,
    record: RequestRecord,
) -> Response<Body> {
    let (labels, fields) = match selectors(&rp.rt, ctx) {
        Ok(s) => s,
        Err(e) => return error_response(&e),
    };
    let filter = WatchFilter {
        key: rp.rt.storage_key(),
        namespace: rp.namespace.clone(),
        labels,
        fields,
    };
    let single_name = rp.name.clone();
    let bookmarks = ctx.q("allowWatchBookmarks") == Some("true");
    let send_initial = ctx.q("sendInitialEvents") == Some("true");
    let timeout = ctx
        .q("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let as_table = ctx.wants_table();
    let as_metadata = ctx.wants_metadata();
    let rt = rp.rt.clone();
    let rv_param = ctx.q("resourceVersion").map(str::to_string);
    let name_ok = move |o: &Value| single_name.as_deref().is_none_or(|n| obj_name(o) == n);

    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    // Objects of the initial ADDED events, sent before `initial`; shown (defaults, apiVersion)
    // by the stream's task, not under the lock.
    let mut initial_objects: Vec<std::sync::Arc<Value>> = Vec::new();
    let mut initial: Vec<Value> = Vec::new();
    let (mut sub, mut last_rv) = {
        let state = lock(&shared.state);
        let current = state.store.current_rv();
        let from_rv = rv_param
            .as_deref()
            .filter(|r| *r != "0")
            .and_then(|r| r.parse::<u64>().ok());
        if send_initial || from_rv.is_none() {
            let objects: Box<dyn Iterator<Item = &std::sync::Arc<Value>>> =
                match filter.namespace.as_deref() {
                    Some(ns) => Box::new(state.store.list_namespace(&filter.key, ns)),
                    None => Box::new(state.store.list_shared(&filter.key)),
                };
            initial_objects.extend(objects.filter(|o| filter.matches(o) && name_ok(o)).cloned());
            if send_initial {
                initial.push(json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": current.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}}));
            }
            (state.store.subscribe(), current)
        } else {
            let from = from_rv.unwrap_or(current);
            match state.store.since(&filter.key, from) {
                None => {
                    initial.push(expired_event(
                        rv_param.as_deref().unwrap_or_default(),
                        state.store.compacted_rv(),
                    ));
                    let body = initial.iter().map(|e| format!("{e}\n")).collect::<String>();
                    return stream_response(full(body));
                }
                Some(changes) => {
                    for c in &changes {
                        if let Some(t) = filter.event_for(c)
                            && name_ok(&c.object)
                        {
                            initial.push(
                                json!({"type": t, "object": present(&rt, event_object(c, t))}),
                            );
                        }
                    }
                    (state.store.subscribe(), current.max(from))
                }
            }
        }
    };

    let encode = {
        let rt = rt.clone();
        move |mut ev: Value| -> Bytes {
            if as_table && ev["type"] != "ERROR" && ev["type"] != "BOOKMARK" {
                let obj = ev["object"].clone();
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                ev["object"] = table::table(&rt, &[obj], &rv, IncludeObject::Metadata, None);
            } else if as_metadata && ev["type"] != "ERROR" {
                ev["object"] = table::partial_object_metadata(&ev["object"]);
            }
            Bytes::from(format!("{ev}\n"))
        }
    };

    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        for o in initial_objects {
            let ev = json!({"type": "ADDED", "object": present(&rt, std::sync::Arc::unwrap_or_clone(o))});
            if tx.send(encode(ev)).await.is_err() {
                return;
            }
        }
        for ev in initial {
            if tx.send(encode(ev)).await.is_err() {
                return;
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    let bm = json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": last_rv.to_string()}}});
                    if !shared.faults.is_paused_for(&record) && tx.send(encode(bm)).await.is_err() {
                        return;
                    }
                }
                msg = sub.recv() => {
                    match msg {
                        Ok(change) => {
                            if change.storage_key == crate::store::EXPIRE_WATCHES {
                                let _ = tx.send(encode(expired_event(&last_rv.to_string(), change.rv))).await;
                                return;
                            }
                            if change.rv <= last_rv && change.storage_key == filter.key {
                                continue;
                            }
                            if change.storage_key != filter.key {
                                continue;
                            }
                            last_rv = change.rv;
                            if shared.faults.is_paused_for(&record) {
                                shared.faults.wait_unpaused_for(&record).await;
                            }
                            if let Some(t) = filter.event_for(&change)
                                && name_ok(&change.object)
                            {
                                let ev = json!({"type": t, "object": present(&rt, event_object(&change, t))});
                                if tx.send(encode(ev)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            let _ = tx.send(encode(expired_event(&last_rv.to_string(), last_rv))).await;
                            return;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        }
    });

    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    stream_response(BodyExt::boxed(StreamBody::new(stream)))
}

fn stream_response(body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    resp
}
