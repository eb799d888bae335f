//! Reconcile against a mocked API server: every request the controller makes is asserted,
//! in order (kube-rs controller-rs "scenario" style).

use std::sync::Arc;

use hookwarden::controller::metrics::ControllerMetrics;
use hookwarden::controller::reconcile::{Context, MissingRoute, forget_missing, reconcile};
use hookwarden::crd::WebhookIntegration;
use hookwarden::events::EventRecorder;
use hookwarden::route::Route;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use serde_json::{Value, json};
use tower_test::mock;

/// Unix seconds (the controller's clock reads milliseconds: `NOW * 1000`).
const NOW: i64 = 1_800_000_000;
const ROUTE_NS: &str = "hookwarden";

type Handle = mock::Handle<Request<Body>, Response<Body>>;

/// One expected request and the answer the fake API server gives.
struct Step {
    method: Method,
    path: String,
    /// Substrings the query must contain (e.g. the field manager).
    query: Vec<&'static str>,
    status: StatusCode,
    answer: Value,
}

impl Step {
    fn new(method: Method, path: impl Into<String>, status: StatusCode, answer: Value) -> Step {
        Step {
            method,
            path: path.into(),
            query: Vec::new(),
            status,
            answer,
        }
    }
    fn query(mut self, q: &'static str) -> Step {
        self.query.push(q);
        self
    }
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

/// Serves `steps` in order, returning the request bodies; panics on any unexpected request.
fn serve(mut handle: Handle, steps: Vec<Step>) -> tokio::task::JoinHandle<Vec<Value>> {
    tokio::spawn(async move {
        let mut bodies = Vec::new();
        for (i, step) in steps.into_iter().enumerate() {
            let (request, send) = handle.next_request().await.unwrap_or_else(|| {
                panic!(
                    "step {i}: no request, expected {} {}",
                    step.method, step.path
                )
            });
            let uri = request.uri().clone();
            assert_eq!(
                (request.method(), uri.path()),
                (&step.method, step.path.as_str()),
                "step {i}: unexpected request {} {uri}",
                request.method()
            );
            for q in &step.query {
                assert!(
                    uri.query().unwrap_or_default().contains(q),
                    "step {i}: {uri} lacks {q}"
                );
            }
            let bytes = http_body_util::BodyExt::collect(request.into_body())
                .await
                .expect("body")
                .to_bytes();
            bodies.push(if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("json body")
            });
            let answer = serde_json::to_vec(&step.answer).expect("answer");
            send.send_response(
                Response::builder()
                    .status(step.status)
                    .body(Body::from(answer))
                    .expect("response"),
            );
        }
        bodies
    })
}

fn context(handle_client: kube::Client) -> Arc<Context> {
    let mut registry = prometheus_client::registry::Registry::default();
    let recorder = EventRecorder::new(
        handle_client.clone(),
        Reporter {
            controller: "hookwarden-controller".into(),
            instance: None,
        },
    );
    let mut ctx = Context::new(
        handle_client,
        ROUTE_NS.to_string(),
        Some("https://hooks.example.com".to_string()),
        recorder,
        Arc::new(ControllerMetrics::register(&mut registry)),
    );
    ctx.clock = Arc::new(|| NOW * 1000);
    Arc::new(ctx)
}

fn integration(spec: Value, finalizer: bool) -> WebhookIntegration {
    let mut obj = json!({
        "apiVersion": "hookwarden.dev/v1alpha1",
        "kind": "WebhookIntegration",
        "metadata": {"name": "datadog-prod", "namespace": "payments", "uid": "uid-1", "generation": 1, "resourceVersion": "10"},
        "spec": spec,
    });
    if finalizer {
        obj["metadata"]["finalizers"] = json!(["hookwarden.dev/route"]);
    }
    serde_json::from_value(obj).expect("integration")
}

const WI_PATH: &str =
    "/apis/hookwarden.dev/v1alpha1/namespaces/payments/webhookintegrations/datadog-prod";
const WI_STATUS_PATH: &str =
    "/apis/hookwarden.dev/v1alpha1/namespaces/payments/webhookintegrations/datadog-prod/status";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/payments/events";

fn route_path() -> String {
    format!(
        "/api/v1/namespaces/{ROUTE_NS}/secrets/{}",
        Route::secret_name("payments", "datadog-prod")
    )
}

fn event_answer() -> Value {
    json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "payments"}, "eventTime": "2027-01-15T08:00:00.000000Z"})
}

fn mock_client() -> (kube::Client, Handle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

#[tokio::test]
async fn adds_the_finalizer_first() {
    let (client, handle) = mock_client();
    let wi = integration(json!({"provider": "datadog"}), false);
    let mut with_finalizer = serde_json::to_value(&wi).expect("json");
    with_finalizer["metadata"]["finalizers"] = json!(["hookwarden.dev/route"]);
    let server = serve(
        handle,
        vec![Step::new(
            Method::PATCH,
            WI_PATH,
            StatusCode::OK,
            with_finalizer,
        )],
    );
    let action = reconcile(Arc::new(wi), context(client))
        .await
        .expect("reconcile");
    assert_eq!(action, Action::await_change());
    let bodies = server.await.expect("server");
    let patch = bodies[0].to_string();
    assert!(
        patch.contains("/metadata/finalizers") && patch.contains("hookwarden.dev/route"),
        "{patch}"
    );
}

#[tokio::test]
async fn new_integration_gets_generated_secret_route_and_status() {
    let (client, handle) = mock_client();
    let wi = integration(json!({"provider": "datadog"}), true);
    let server = serve(
        handle,
        vec![
            Step::new(Method::GET, route_path(), StatusCode::NOT_FOUND, not_found()),
            Step::new(Method::GET, "/api/v1/namespaces/payments/secrets/datadog-prod-webhook", StatusCode::NOT_FOUND, not_found()),
            Step::new(Method::PATCH, "/api/v1/namespaces/payments/secrets/datadog-prod-webhook", StatusCode::OK, json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "datadog-prod-webhook"}}))
                .query("fieldManager=hookwarden-controller")
                .query("force=true"),
            Step::new(Method::PATCH, route_path(), StatusCode::OK, json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "r"}}))
                .query("fieldManager=hookwarden-controller"),
            Step::new(Method::PATCH, WI_STATUS_PATH, StatusCode::OK, serde_json::to_value(&wi).expect("json"))
                .query("fieldManager=hookwarden-controller"),
            Step::new(Method::POST, EVENTS_PATH, StatusCode::CREATED, event_answer()),
            Step::new(Method::POST, EVENTS_PATH, StatusCode::CREATED, event_answer()),
        ],
    );
    let action = reconcile(Arc::new(wi), context(client))
        .await
        .expect("reconcile");
    assert_eq!(
        action,
        Action::requeue(std::time::Duration::from_secs(3600))
    );
    let bodies = server.await.expect("server");

    // The generated Secret: owned by the integration, holding the secret and the URL.
    let generated = &bodies[2];
    assert_eq!(generated["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    let b64 = |v: &Value| {
        use base64::Engine as _;
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().expect("str"))
                .expect("b64"),
        )
        .expect("utf8")
    };
    let secret = b64(&generated["data"]["secret"]);
    assert_eq!(secret.len(), 64, "hex secret");
    let url = b64(&generated["data"]["url"]);
    assert!(url.starts_with("https://hooks.example.com/hooks/"), "{url}");

    // The route Secret carries the same secret and path, labelled for the receivers.
    let route_secret = &bodies[3];
    assert_eq!(route_secret["metadata"]["namespace"], ROUTE_NS);
    assert_eq!(
        route_secret["metadata"]["labels"]["hookwarden.dev/route"],
        "true"
    );
    let route: Route =
        serde_json::from_str(&b64(&route_secret["data"]["route.json"])).expect("route json");
    assert_eq!(route.secrets[0].value.expose(), secret);
    assert!(url.ends_with(&route.path));

    // Status: path, URL, secretName and the three conditions, nothing owned by receivers.
    let status = &bodies[4]["status"];
    assert_eq!(status["path"], route.path.as_str());
    assert_eq!(status["url"], url.as_str());
    assert_eq!(status["secretName"], "datadog-prod-webhook");
    assert_eq!(status["observedGeneration"], 1);
    let types: Vec<&str> = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .filter_map(|c| c["type"].as_str())
        .collect();
    assert_eq!(types, ["Ready", "SecretResolved", "RouteReady"]);
    assert!(status.get("deliveries").is_none() && status.get("incidents").is_none());
    // Never a secret in an Event.
    assert!(!bodies[5].to_string().contains(&secret) && !bodies[6].to_string().contains(&secret));
}

#[tokio::test]
async fn unchanged_integration_causes_no_write() {
    // First reconcile to learn what the controller would write.
    let (client, handle) = mock_client();
    let wi = integration(
        json!({"provider": "github", "secretRef": {"name": "gh", "key": "token"}}),
        true,
    );
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gh", "namespace": "payments"}, "data": {"token": "czNjcjN0"}});
    let server = serve(
        handle,
        vec![
            Step::new(
                Method::GET,
                route_path(),
                StatusCode::NOT_FOUND,
                not_found(),
            ),
            Step::new(
                Method::GET,
                "/api/v1/namespaces/payments/secrets/gh",
                StatusCode::OK,
                secret.clone(),
            ),
            Step::new(
                Method::PATCH,
                route_path(),
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "r"}}),
            ),
            Step::new(
                Method::PATCH,
                WI_STATUS_PATH,
                StatusCode::OK,
                serde_json::to_value(&wi).expect("json"),
            ),
            Step::new(
                Method::POST,
                EVENTS_PATH,
                StatusCode::CREATED,
                event_answer(),
            ),
        ],
    );
    reconcile(Arc::new(wi.clone()), context(client))
        .await
        .expect("reconcile");
    let bodies = server.await.expect("server");
    let route_secret = bodies[2].clone();
    let mut current = serde_json::to_value(&wi).expect("json");
    current["status"] = bodies[3]["status"].clone();
    let current: WebhookIntegration = serde_json::from_value(current).expect("wi");

    // Second reconcile with the world as written: reads only.
    let (client, handle) = mock_client();
    let server = serve(
        handle,
        vec![
            Step::new(Method::GET, route_path(), StatusCode::OK, route_secret),
            Step::new(
                Method::GET,
                "/api/v1/namespaces/payments/secrets/gh",
                StatusCode::OK,
                secret,
            ),
        ],
    );
    let action = reconcile(Arc::new(current), context(client.clone()))
        .await
        .expect("reconcile");
    assert_eq!(
        action,
        Action::requeue(std::time::Duration::from_secs(3600))
    );
    server.await.expect("server");
}

/// Our own writes trigger reconciles that can run before the watch brings the status write
/// back. Such a reconcile, on the very copy the write was planned from, reads but does not
/// write the same status (or announce it) again; a newer copy is judged afresh.
#[tokio::test]
async fn a_reconcile_on_the_copy_our_status_write_was_planned_from_does_not_repeat_it() {
    let (client, handle) = mock_client();
    let wi = integration(
        json!({"provider": "github", "secretRef": {"name": "gh", "key": "token"}}),
        true,
    );
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gh", "namespace": "payments"}, "data": {"token": "czNjcjN0"}});
    let written = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "r"}});
    let wi_json = serde_json::to_value(&wi).expect("json");
    let server = serve(
        handle,
        vec![
            Step::new(
                Method::GET,
                route_path(),
                StatusCode::NOT_FOUND,
                not_found(),
            ),
            Step::new(
                Method::GET,
                "/api/v1/namespaces/payments/secrets/gh",
                StatusCode::OK,
                secret.clone(),
            ),
            Step::new(Method::PATCH, route_path(), StatusCode::OK, written),
            Step::new(
                Method::PATCH,
                WI_STATUS_PATH,
                StatusCode::OK,
                wi_json.clone(),
            ),
            Step::new(
                Method::POST,
                EVENTS_PATH,
                StatusCode::CREATED,
                event_answer(),
            ),
        ],
    );
    let ctx = context(client);
    reconcile(Arc::new(wi.clone()), ctx.clone())
        .await
        .expect("reconcile");
    let bodies = server.await.expect("server");
    let route_secret = bodies[2].clone();

    // The same copy again (resourceVersion 10, no status yet): reads only.
    let (client, handle) = mock_client();
    let stale = context(client);
    let memo = std::mem::take(&mut *ctx.status_written.lock().expect("lock"));
    *stale.status_written.lock().expect("lock") = memo.clone();
    let server = serve(
        handle,
        vec![
            Step::new(
                Method::GET,
                route_path(),
                StatusCode::OK,
                route_secret.clone(),
            ),
            Step::new(
                Method::GET,
                "/api/v1/namespaces/payments/secrets/gh",
                StatusCode::OK,
                secret.clone(),
            ),
        ],
    );
    reconcile(Arc::new(wi.clone()), stale)
        .await
        .expect("reconcile");
    server.await.expect("server");

    // A newer copy without that status (someone cleared it): written again.
    let mut newer = wi.clone();
    newer.metadata.resource_version = Some("11".into());
    let (client, handle) = mock_client();
    let fresh = context(client);
    *fresh.status_written.lock().expect("lock") = memo;
    let server = serve(
        handle,
        vec![
            Step::new(Method::GET, route_path(), StatusCode::OK, route_secret),
            Step::new(
                Method::GET,
                "/api/v1/namespaces/payments/secrets/gh",
                StatusCode::OK,
                secret,
            ),
            Step::new(Method::PATCH, WI_STATUS_PATH, StatusCode::OK, wi_json),
        ],
    );
    reconcile(Arc::new(newer), fresh).await.expect("reconcile");
    server.await.expect("server");
}

/// Our own writes coming back, a relist and the periodic resync trigger reconciles that
/// would read exactly what the last one read: they send no request at all. A Secret the
/// integration reads showing up at another resourceVersion makes the next one read again.
#[tokio::test]
async fn a_settled_integration_is_not_read_again_until_a_secret_it_reads_changes() {
    let (client, handle) = mock_client();
    let wi = integration(
        json!({"provider": "github", "secretRef": {"name": "gh", "key": "token"}}),
        true,
    );
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gh", "namespace": "payments", "resourceVersion": "5"}, "data": {"token": "czNjcjN0"}});
    let route_written = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "r", "namespace": ROUTE_NS, "resourceVersion": "11"}});
    let mut status_written = serde_json::to_value(&wi).expect("json");
    status_written["metadata"]["resourceVersion"] = json!("12");
    let server = serve(
        handle,
        vec![
            Step::new(
                Method::GET,
                route_path(),
                StatusCode::NOT_FOUND,
                not_found(),
            ),
            Step::new(
                Method::GET,
                "/api/v1/namespaces/payments/secrets/gh",
                StatusCode::OK,
                secret.clone(),
            ),
            Step::new(Method::PATCH, route_path(), StatusCode::OK, route_written),
            Step::new(
                Method::PATCH,
                WI_STATUS_PATH,
                StatusCode::OK,
                status_written.clone(),
            ),
            Step::new(
                Method::POST,
                EVENTS_PATH,
                StatusCode::CREATED,
                event_answer(),
            ),
        ],
    );
    let ctx = context(client);
    reconcile(Arc::new(wi.clone()), ctx.clone())
        .await
        .expect("reconcile");
    let bodies = server.await.expect("server");
    let mut route_secret = bodies[2].clone();
    route_secret["metadata"]["resourceVersion"] = json!("11");
    // The copy the watch brings back after the status write.
    let mut current = status_written;
    current["status"] = bodies[3]["status"].clone();
    let current: WebhookIntegration = serde_json::from_value(current).expect("wi");
    let key = |ns: &str, n: &str| (ns.to_string(), n.to_string());
    let route_key = key(ROUTE_NS, &Route::secret_name("payments", "datadog-prod"));

    // The route write and the unchanged referenced Secret come back: mapped to the
    // integration, memo kept; its reconcile sends nothing (no server: any request fails).
    {
        let mut index = ctx.secret_index();
        assert_eq!(index.secret_changed(&route_key, Some("11")).len(), 1);
        assert_eq!(
            index
                .secret_changed(&key("payments", "gh"), Some("5"))
                .len(),
            1
        );
        assert!(
            index
                .secret_changed(&key("payments", "unrelated"), Some("7"))
                .is_empty()
        );
    }
    let action = reconcile(Arc::new(current.clone()), ctx.clone())
        .await
        .expect("a settled reconcile sends no request");
    assert_eq!(
        action,
        Action::requeue(std::time::Duration::from_secs(3600))
    );
    // The copy the status write was planned from is not settled: that write changed it.
    assert!(!ctx.secret_index().is_settled(&wi));

    // The referenced Secret rotated: read again (and nothing to write for the route here,
    // since the mock answers the same value).
    let (client, handle) = mock_client();
    let mut rotated = Arc::try_unwrap(context(client)).unwrap_or_else(|_| panic!("shared context"));
    rotated.secrets = std::sync::Mutex::new(std::mem::take(&mut *ctx.secret_index()));
    let rotated = Arc::new(rotated);
    assert_eq!(
        rotated
            .secret_index()
            .secret_changed(&key("payments", "gh"), Some("6"))
            .len(),
        1
    );
    let server = serve(
        handle,
        vec![
            Step::new(Method::GET, route_path(), StatusCode::OK, route_secret),
            Step::new(
                Method::GET,
                "/api/v1/namespaces/payments/secrets/gh",
                StatusCode::OK,
                secret,
            ),
        ],
    );
    reconcile(Arc::new(current.clone()), rotated.clone())
        .await
        .expect("reconcile");
    server.await.expect("server");
    assert!(rotated.secret_index().is_settled(&current));
}

#[tokio::test]
async fn missing_secret_is_a_condition_and_waits_instead_of_failing() {
    let (client, handle) = mock_client();
    let wi = integration(
        json!({"provider": "datadog", "secretRef": {"name": "dd", "key": "token"}}),
        true,
    );
    let server = serve(
        handle,
        vec![
            Step::new(
                Method::GET,
                route_path(),
                StatusCode::NOT_FOUND,
                not_found(),
            ),
            Step::new(
                Method::GET,
                "/api/v1/namespaces/payments/secrets/dd",
                StatusCode::NOT_FOUND,
                not_found(),
            ),
            Step::new(
                Method::PATCH,
                WI_STATUS_PATH,
                StatusCode::OK,
                serde_json::to_value(&wi).expect("json"),
            ),
            Step::new(
                Method::POST,
                EVENTS_PATH,
                StatusCode::CREATED,
                event_answer(),
            ),
        ],
    );
    // Ok (not Err): no error-policy retry loop; the Secret watch brings it back.
    let action = reconcile(Arc::new(wi), context(client))
        .await
        .expect("reconcile");
    assert_eq!(
        action,
        Action::requeue(std::time::Duration::from_secs(3600))
    );
    let bodies = server.await.expect("server");
    let ready = &bodies[2]["status"]["conditions"][0];
    assert_eq!(
        (
            ready["type"].as_str(),
            ready["status"].as_str(),
            ready["reason"].as_str()
        ),
        (Some("Ready"), Some("False"), Some("SecretNotFound"))
    );
    assert_eq!(bodies[3]["type"], "Warning");
    assert_eq!(bodies[3]["reason"], "SecretNotFound");
}

#[tokio::test]
async fn delete_removes_the_route_then_the_finalizer() {
    let (client, handle) = mock_client();
    let mut wi = integration(json!({"provider": "datadog"}), true);
    wi.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::from_second(NOW).expect("ts"),
    ));
    let server = serve(
        handle,
        vec![
            Step::new(
                Method::DELETE,
                route_path(),
                StatusCode::OK,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            ),
            Step::new(
                Method::POST,
                EVENTS_PATH,
                StatusCode::CREATED,
                event_answer(),
            ),
            Step::new(
                Method::PATCH,
                WI_PATH,
                StatusCode::OK,
                serde_json::to_value(&wi).expect("json"),
            ),
        ],
    );
    let action = reconcile(Arc::new(wi), context(client))
        .await
        .expect("reconcile");
    assert_eq!(action, Action::await_change());
    let bodies = server.await.expect("server");
    assert_eq!(bodies[1]["reason"], "RouteRemoved");
    assert!(
        bodies[2].to_string().contains("remove"),
        "finalizer removal patch: {}",
        bodies[2]
    );
}

#[tokio::test]
async fn api_errors_are_returned_for_backoff() {
    let (client, handle) = mock_client();
    let wi = integration(json!({"provider": "datadog"}), true);
    let server = serve(
        handle,
        vec![Step::new(
            Method::GET,
            route_path(),
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500, "message": "etcd down"}),
        )],
    );
    let err = reconcile(Arc::new(wi), context(client))
        .await
        .expect_err("transient error");
    assert_eq!(err.metric_label(), "read_route");
    server.await.expect("server");
}

fn route_secret_answer() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": Route::secret_name("payments", "datadog-prod"), "namespace": ROUTE_NS,
            "uid": "route-uid-7", "resourceVersion": "42",
            "labels": {"hookwarden.dev/route": "true"},
            "annotations": {"hookwarden.dev/integration": "payments/datadog-prod"},
        },
    })
}

/// The route Secret is there, the integration is not, then the guarded DELETE answers
/// `status` with `answer`.
fn read_then_delete(status: StatusCode, answer: Value) -> Vec<Step> {
    vec![
        Step::new(
            Method::GET,
            route_path(),
            StatusCode::OK,
            route_secret_answer(),
        ),
        Step::new(Method::GET, WI_PATH, StatusCode::NOT_FOUND, not_found()),
        Step::new(Method::DELETE, route_path(), status, answer),
    ]
}

#[tokio::test]
async fn a_missing_integration_without_a_route_costs_one_read() {
    let (client, handle) = mock_client();
    let ctx = context(client);
    // A failed reconcile left a backoff count behind.
    let wi = integration(json!({"provider": "datadog"}), true);
    let error = hookwarden::controller::reconcile::Error::NoNamespace;
    hookwarden::controller::reconcile::error_policy(Arc::new(wi), &error, ctx.clone());
    assert_eq!(ctx.remembered(), 1);
    let server = serve(
        handle,
        vec![Step::new(
            Method::GET,
            route_path(),
            StatusCode::NOT_FOUND,
            not_found(),
        )],
    );
    let outcome = forget_missing(&ctx, "payments", "datadog-prod")
        .await
        .expect("forget");
    assert_eq!(outcome, MissingRoute::None);
    assert_eq!(
        ctx.remembered(),
        0,
        "nothing kept for a deleted integration"
    );
    server.await.expect("server");
}

#[tokio::test]
async fn a_route_whose_integration_still_exists_is_left_to_its_reconcile() {
    let (client, handle) = mock_client();
    let wi = integration(json!({"provider": "datadog"}), true);
    let server = serve(
        handle,
        vec![
            Step::new(
                Method::GET,
                route_path(),
                StatusCode::OK,
                route_secret_answer(),
            ),
            Step::new(
                Method::GET,
                WI_PATH,
                StatusCode::OK,
                serde_json::to_value(&wi).expect("json"),
            ),
        ],
    );
    // A DELETE after the two reads would find the mock server gone and fail the call.
    let outcome = forget_missing(&context(client), "payments", "datadog-prod")
        .await
        .expect("forget");
    assert_eq!(outcome, MissingRoute::IntegrationExists);
    server.await.expect("server");
}

#[tokio::test]
async fn the_route_of_an_integration_deleted_past_its_finalizer_is_removed_guarded() {
    let (client, handle) = mock_client();
    let server = serve(
        handle,
        read_then_delete(
            StatusCode::OK,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        ),
    );
    let ctx = context(client);
    let outcome = forget_missing(&ctx, "payments", "datadog-prod")
        .await
        .expect("forget");
    assert_eq!(outcome, MissingRoute::Removed);
    assert_eq!(ctx.metrics.routes_left_behind_removed.get(), 1);
    let bodies = server.await.expect("server");
    assert_eq!(
        bodies[2]["preconditions"],
        json!({"uid": "route-uid-7", "resourceVersion": "42"}),
        "the delete is guarded by the route Secret it read"
    );
}

#[tokio::test]
async fn a_route_rewritten_between_the_read_and_the_delete_survives() {
    let (client, handle) = mock_client();
    let server = serve(
        handle,
        read_then_delete(
            StatusCode::CONFLICT,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "precondition failed"}),
        ),
    );
    let ctx = context(client);
    let outcome = forget_missing(&ctx, "payments", "datadog-prod")
        .await
        .expect("a conflict is not an error");
    assert_eq!(outcome, MissingRoute::Changed);
    assert_eq!(ctx.metrics.routes_left_behind_removed.get(), 0);
    server.await.expect("server");
}

fn b64(v: &Value) -> String {
    use base64::Engine as _;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("str"))
            .expect("b64"),
    )
    .expect("utf8")
}

const SLACK_URL: &str = "https://hooks.slack.com/services/T0/B0/s3cr3tpart";
const FORWARD_SECRET_PATH: &str = "/api/v1/namespaces/payments/secrets/datadog-prod-forward";

fn forwarding_spec() -> Value {
    json!({
        "provider": "github",
        "secretRef": {"name": "gh", "key": "token"},
        "forward": [
            {"name": "tickets", "url": "https://tickets.example.com/in"},
            {"name": "chat", "urlFrom": {"secretRef": {"name": "slack", "key": "url"}}, "format": "slack", "send": ["incident.opened"]},
        ],
    })
}

/// spec.forward: the Secrets it names are read one by one in the integration's
/// namespace, the generated signing key lands in `<name>-forward` (owned, applied), and
/// the route carries each target's URL and key.
#[tokio::test]
async fn forward_targets_are_resolved_into_the_route_and_a_generated_forward_secret() {
    let (client, handle) = mock_client();
    let wi = integration(forwarding_spec(), true);
    let gh = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gh", "namespace": "payments"}, "data": {"token": "czNjcjN0"}});
    let slack = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "slack", "namespace": "payments"}, "stringData": {"url": SLACK_URL}});
    let written = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "w"}});
    let server = serve(
        handle,
        vec![
            Step::new(
                Method::GET,
                route_path(),
                StatusCode::NOT_FOUND,
                not_found(),
            ),
            Step::new(
                Method::GET,
                "/api/v1/namespaces/payments/secrets/gh",
                StatusCode::OK,
                gh.clone(),
            ),
            Step::new(
                Method::GET,
                "/api/v1/namespaces/payments/secrets/slack",
                StatusCode::OK,
                slack.clone(),
            ),
            Step::new(
                Method::GET,
                FORWARD_SECRET_PATH,
                StatusCode::NOT_FOUND,
                not_found(),
            ),
            Step::new(
                Method::PATCH,
                FORWARD_SECRET_PATH,
                StatusCode::OK,
                written.clone(),
            )
            .query("fieldManager=hookwarden-controller")
            .query("force=true"),
            Step::new(Method::PATCH, route_path(), StatusCode::OK, written),
            Step::new(
                Method::PATCH,
                WI_STATUS_PATH,
                StatusCode::OK,
                serde_json::to_value(&wi).expect("json"),
            ),
            Step::new(
                Method::POST,
                EVENTS_PATH,
                StatusCode::CREATED,
                event_answer(),
            ),
            Step::new(
                Method::POST,
                EVENTS_PATH,
                StatusCode::CREATED,
                event_answer(),
            ),
        ],
    );
    reconcile(Arc::new(wi), context(client))
        .await
        .expect("reconcile");
    let bodies = server.await.expect("server");

    let forward_secret = &bodies[4];
    assert_eq!(
        forward_secret["metadata"]["ownerReferences"][0]["uid"],
        "uid-1"
    );
    assert_eq!(
        forward_secret["metadata"]["labels"]["hookwarden.dev/generated"],
        "true"
    );
    let keys: Vec<&String> = forward_secret["data"]
        .as_object()
        .expect("data")
        .keys()
        .collect();
    assert_eq!(keys, ["tickets"], "one key per target with a generated key");
    let key = b64(&forward_secret["data"]["tickets"]);
    assert!(key.starts_with("whsec_"), "a Standard Webhooks key");

    let route: Route =
        serde_json::from_str(&b64(&bodies[5]["data"]["route.json"])).expect("route json");
    let [tickets, chat] = &route.forward[..] else {
        panic!("{:?}", route.forward)
    };
    assert_eq!(tickets.name, "tickets");
    assert_eq!(tickets.url.expose(), "https://tickets.example.com/in");
    assert_eq!(
        tickets.signing_key.as_ref().map(|k| k.expose()),
        Some(key.as_str())
    );
    assert_eq!((chat.name.as_str(), chat.url.expose()), ("chat", SLACK_URL));
    assert!(chat.signing_key.is_none(), "slack is not signed");

    let conditions = &bodies[6]["status"]["conditions"];
    let forward_ready = conditions
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "ForwardReady")
        .expect("ForwardReady");
    assert_eq!(forward_ready["status"], "True");
    assert_eq!(forward_ready["reason"], "ForwardResolved");
    for event in &bodies[7..] {
        let text = event.to_string();
        assert!(
            !text.contains(&key) && !text.contains("s3cr3tpart"),
            "{text}"
        );
    }
    assert!(
        bodies[7..]
            .iter()
            .any(|e| e["reason"] == "ForwardKeyGenerated")
    );

    // The world as written: reads only (the generated key is kept, nothing is rewritten).
    let mut current = serde_json::to_value(integration(forwarding_spec(), true)).expect("json");
    current["status"] = bodies[6]["status"].clone();
    let current: WebhookIntegration = serde_json::from_value(current).expect("wi");
    let (client, handle) = mock_client();
    let server = serve(
        handle,
        vec![
            Step::new(Method::GET, route_path(), StatusCode::OK, bodies[5].clone()),
            Step::new(
                Method::GET,
                "/api/v1/namespaces/payments/secrets/gh",
                StatusCode::OK,
                gh,
            ),
            Step::new(
                Method::GET,
                "/api/v1/namespaces/payments/secrets/slack",
                StatusCode::OK,
                slack,
            ),
            Step::new(
                Method::GET,
                FORWARD_SECRET_PATH,
                StatusCode::OK,
                bodies[4].clone(),
            ),
        ],
    );
    reconcile(Arc::new(current), context(client))
        .await
        .expect("reconcile");
    server.await.expect("server");
}

/// A forward target whose Secret is missing: no route entry for it, ForwardReady False
/// naming it, a Warning Event; the endpoint itself is Ready and routed.
#[tokio::test]
async fn a_missing_forward_secret_is_a_forward_condition_not_an_outage() {
    let (client, handle) = mock_client();
    let mut spec = forwarding_spec();
    spec["forward"] = json!([spec["forward"][1].clone()]);
    let wi = integration(spec, true);
    let gh = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gh", "namespace": "payments"}, "data": {"token": "czNjcjN0"}});
    let written = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "w"}});
    let server = serve(
        handle,
        vec![
            Step::new(
                Method::GET,
                route_path(),
                StatusCode::NOT_FOUND,
                not_found(),
            ),
            Step::new(
                Method::GET,
                "/api/v1/namespaces/payments/secrets/gh",
                StatusCode::OK,
                gh,
            ),
            Step::new(
                Method::GET,
                "/api/v1/namespaces/payments/secrets/slack",
                StatusCode::NOT_FOUND,
                not_found(),
            ),
            // No generated key is needed and none exists: nothing to write.
            Step::new(
                Method::GET,
                FORWARD_SECRET_PATH,
                StatusCode::NOT_FOUND,
                not_found(),
            ),
            Step::new(Method::PATCH, route_path(), StatusCode::OK, written),
            Step::new(
                Method::PATCH,
                WI_STATUS_PATH,
                StatusCode::OK,
                serde_json::to_value(&wi).expect("json"),
            ),
            Step::new(
                Method::POST,
                EVENTS_PATH,
                StatusCode::CREATED,
                event_answer(),
            ),
            Step::new(
                Method::POST,
                EVENTS_PATH,
                StatusCode::CREATED,
                event_answer(),
            ),
        ],
    );
    reconcile(Arc::new(wi), context(client))
        .await
        .expect("reconcile");
    let bodies = server.await.expect("server");
    let route: Route =
        serde_json::from_str(&b64(&bodies[4]["data"]["route.json"])).expect("route json");
    assert!(route.forward.is_empty(), "{:?}", route.forward);
    let conditions = bodies[5]["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .clone();
    let find = |t: &str| {
        conditions
            .iter()
            .find(|c| c["type"] == t)
            .unwrap_or_else(|| panic!("{t}"))
            .clone()
    };
    assert_eq!(find("Ready")["status"], "True");
    let forward_ready = find("ForwardReady");
    assert_eq!(
        (&forward_ready["status"], &forward_ready["reason"]),
        (&json!("False"), &json!("ForwardSecretNotFound"))
    );
    let message = forward_ready["message"].as_str().expect("message");
    assert!(
        message.contains("spec.forward[chat].urlFrom.secretRef: Secret payments/slack not found"),
        "{message}"
    );
    let warning = bodies[6..]
        .iter()
        .find(|e| e["reason"] == "ForwardSecretNotFound")
        .expect("a Warning Event");
    assert_eq!(warning["type"], "Warning");
}
