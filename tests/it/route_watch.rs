//! The receiver's route watch against a mocked API server: the initial list makes it
//! ready, later watch events add and remove routes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hookwarden::domain::secret::generate_path;
use hookwarden::receiver::cluster::watch_routes;
use hookwarden::receiver::service::ReceiverHandle;
use hookwarden::route::{Route, RouteSecret, SecretValue};
use k8s_openapi::api::core::v1::Secret;
use tokio_util::sync::CancellationToken;

type ApiHandle =
    tower_test::mock::Handle<http::Request<kube::client::Body>, http::Response<kube::client::Body>>;

fn route(name: &str) -> Route {
    Route {
        namespace: "payments".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        generation: 1,
        path: generate_path(),
        secrets: vec![RouteSecret {
            value: SecretValue("s3cret".into()),
            expires_at: None,
        }],
        spec: serde_json::from_value(serde_json::json!({"provider": "datadog"})).expect("spec"),
        forward: Vec::new(),
        replay: None,
        expected_interval_seconds: None,
    }
}

fn secret_json(route: &Route, resource_version: &str) -> serde_json::Value {
    let mut secret: Secret = route.to_secret("hookwarden").expect("route secret");
    secret.metadata.resource_version = Some(resource_version.into());
    serde_json::to_value(secret).expect("json")
}

fn respond(send: tower_test::mock::SendResponse<http::Response<kube::client::Body>>, body: String) {
    send.send_response(
        http::Response::builder()
            .status(200)
            .body(kube::client::Body::from(body.into_bytes()))
            .expect("response"),
    );
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within 1 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn routes_follow_the_route_secrets_and_readiness_waits_for_the_first_list() {
    let (service, mut api): (_, ApiHandle) = tower_test::mock::pair();
    let client = kube::Client::new(service, "hookwarden");
    let handle = ReceiverHandle::new();
    let synced = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    let flag = synced.clone();
    let task = tokio::spawn(watch_routes(
        kube::Api::namespaced(client, "hookwarden"),
        handle.clone(),
        move || flag.store(true, Ordering::SeqCst),
        stop.clone(),
    ));

    let first = route("datadog");
    let second = route("github");

    // Initial list: only route Secrets, selected by label.
    let (request, send) = api.next_request().await.expect("list");
    let uri = request.uri().to_string();
    assert!(
        uri.starts_with("/api/v1/namespaces/hookwarden/secrets?"),
        "{uri}"
    );
    assert!(
        uri.contains("labelSelector=hookwarden.dev%2Froute%3Dtrue"),
        "{uri}"
    );
    assert!(!synced.load(Ordering::SeqCst), "not ready before the list");
    respond(
        send,
        serde_json::json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {"resourceVersion": "10"}, "items": [secret_json(&first, "9")]})
            .to_string(),
    );
    eventually("ready after the initial list", || {
        synced.load(Ordering::SeqCst)
    })
    .await;
    assert!(handle.routes().get(&first.path).is_some());

    // Watch: a new route serves within a second, a deleted one stops.
    let (request, send) = api.next_request().await.expect("watch");
    assert!(
        request.uri().to_string().contains("watch=true"),
        "{}",
        request.uri()
    );
    let events = [
        serde_json::json!({"type": "ADDED", "object": secret_json(&second, "11")}),
        serde_json::json!({"type": "DELETED", "object": secret_json(&first, "12")}),
    ]
    .iter()
    .map(|e| format!("{e}\n"))
    .collect::<String>();
    respond(send, events);
    eventually("the new route to serve", || {
        handle.routes().get(&second.path).is_some()
    })
    .await;
    eventually("the deleted route to stop", || {
        handle.routes().get(&first.path).is_none()
    })
    .await;

    stop.cancel();
    task.await.expect("watch task");
}
