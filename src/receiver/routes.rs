//! The route table: endpoint path → everything compiled that the pipeline needs for it.
//!
//! Reads are lock-free (an [`ArcSwap`] of an immutable map), so the hot path never waits
//! on a route update; writers serialise on a mutex and publish a new map. A route that
//! fails to compile is reported and not served; the others are untouched. The rate
//! limiter of a route survives an update while the integration's uid and limits stay the
//! same (dedup memory lives in [`super::dedup::Dedup`], keyed by integration, so it
//! survives any update).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use prometheus_client::metrics::gauge::Gauge;

use super::limits::RateLimit;
use super::metrics::{IntegrationMetrics, RouteMetrics};
use crate::domain::secret::is_valid_path;
use crate::domain::spec::{self, EffectiveSpec, SpecProblems};
use crate::route::{Route, ServedRoute};

/// One served integration: its route and its spec as [`spec::resolve`] made it, compiled
/// once per route update.
pub struct CompiledRoute {
    /// The route without its spec (resolved into `spec`).
    pub route: ServedRoute,
    /// `namespace/name`, precomputed for the hot path.
    pub key: String,
    /// Defaults applied; scheme, mapping and schema compiled.
    pub spec: EffectiveSpec,
    pub rate: Arc<RateLimit>,
    /// Body bytes (KiB) this integration's requests hold now (its share of the
    /// receiver's body budget); kept across route updates like the rate limiter.
    pub body_inflight: Arc<std::sync::atomic::AtomicU32>,
    /// The integration's `hookwarden_integration_*` handles, kept across route updates
    /// while uid and provider stay the same.
    pub metrics: Arc<RouteMetrics>,
}

impl std::fmt::Debug for CompiledRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRoute")
            .field("key", &self.key)
            .field("path", &self.route.path)
            .field("spec", &self.spec)
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

/// Why a route is not served; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum RouteProblem {
    #[error("path {0:?} is not a hookwarden endpoint path (/hooks/ + at least 128 random bits)")]
    InvalidPath(String),
    #[error("path is already served by integration {0}")]
    PathConflict(String),
    #[error("{0}")]
    Spec(#[from] SpecProblems),
}

/// A route that could not be compiled.
#[derive(Debug, thiserror::Error)]
#[error("route {integration}: {problem}")]
pub struct RouteError {
    /// `namespace/name`.
    pub integration: String,
    pub problem: RouteProblem,
}

/// Hashed with foldhash, not the standard SipHash: the path is hashed once per delivery
/// (issue #21: SipHash was 0.3 % of a standalone receiver's CPU samples under load,
/// foldhash a third of that). Still seeded per process; and the keys inserted are ours
/// (generated paths), so a request path chosen to collide lands in a bucket only as long
/// as our own paths make it.
type PathMap = HashMap<String, Arc<CompiledRoute>, foldhash::fast::RandomState>;

/// Path → compiled route. See the module docs.
pub struct RouteTable {
    by_path: ArcSwap<PathMap>,
    /// Serialises writers; readers never take it.
    writer: Mutex<()>,
    gauge: Gauge,
    integrations: IntegrationMetrics,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable::new()
    }
}

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTable")
            .field("routes", &self.len())
            .finish()
    }
}

impl RouteTable {
    pub fn new() -> RouteTable {
        RouteTable::with_gauge(Gauge::default())
    }

    /// A table that keeps `gauge` (e.g. [`super::metrics::ReceiverMetrics::routes`]) at
    /// the number of served routes.
    pub fn with_gauge(gauge: Gauge) -> RouteTable {
        RouteTable::with_metrics(gauge, IntegrationMetrics::default())
    }

    /// A table that keeps `gauge` at the number of served routes and the per-integration
    /// series of `integrations` to the integrations it serves (e.g. the
    /// [`super::metrics::ReceiverMetrics`] fields `routes` and `integrations`).
    pub fn with_metrics(gauge: Gauge, integrations: IntegrationMetrics) -> RouteTable {
        RouteTable {
            by_path: ArcSwap::from_pointee(PathMap::default()),
            writer: Mutex::new(()),
            gauge,
            integrations,
        }
    }

    /// The route serving `path`, if any. Lock-free.
    pub fn get(&self, path: &str) -> Option<Arc<CompiledRoute>> {
        self.by_path.load().get(path).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_path.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every served route.
    pub fn all(&self) -> impl Iterator<Item = Arc<CompiledRoute>> {
        let map = self.by_path.load_full();
        let routes: Vec<Arc<CompiledRoute>> = map.values().cloned().collect();
        routes.into_iter()
    }

    /// The served route of integration `namespace/name`.
    pub fn by_key(&self, namespace: &str, name: &str) -> Option<Arc<CompiledRoute>> {
        self.by_path
            .load()
            .values()
            .find(|r| r.route.namespace == namespace && r.route.name == name)
            .cloned()
    }

    /// Adds or replaces the route of `route.key()`. On error the integration is no longer
    /// served (its previous version is removed too): serving a spec the user has since
    /// changed would authenticate or map with stale settings.
    pub fn upsert(&self, route: Route) -> Result<(), RouteError> {
        let _guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.by_path.load_full();
        let mut next: PathMap = (*current).clone();
        let previous = take_integration(&mut next, &route.namespace, &route.name);
        let compiled = compile(route, previous.as_deref(), &next, &self.integrations);
        let outcome = match compiled {
            Ok(c) => {
                next.insert(c.route.path.clone(), Arc::new(c));
                Ok(())
            }
            Err(e) => Err(e),
        };
        self.publish(next);
        outcome
    }

    /// Stops serving integration `namespace/name`. Returns whether it was served.
    pub fn remove(&self, namespace: &str, name: &str) -> bool {
        let _guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next: PathMap = (*self.by_path.load_full()).clone();
        let removed = take_integration(&mut next, namespace, name).is_some();
        if removed {
            self.publish(next);
        }
        removed
    }

    /// Serves exactly `routes` (a full resync). Routes that fail to compile are returned
    /// and not served; the rest are published together. Each route is compiled as it is
    /// taken from `routes`, so a caller can hand them over one at a time instead of
    /// holding all of them next to their compiled form.
    pub fn replace_all(&self, routes: impl IntoIterator<Item = Route>) -> Vec<RouteError> {
        let _guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.by_path.load_full();
        let previous: HashMap<&str, &Arc<CompiledRoute>> =
            current.values().map(|r| (r.key.as_str(), r)).collect();
        let routes = routes.into_iter();
        let mut next = PathMap::with_capacity_and_hasher(
            routes.size_hint().0.max(current.len()),
            Default::default(),
        );
        let mut errors = Vec::new();
        for route in routes {
            let prev = previous.get(route.key().as_str()).map(|r| r.as_ref());
            match compile(route, prev, &next, &self.integrations) {
                Ok(c) => {
                    next.insert(c.route.path.clone(), Arc::new(c));
                }
                Err(e) => errors.push(e),
            }
        }
        drop(previous);
        self.publish(next);
        errors
    }

    /// Publishes `next` and removes the series of every integration it no longer serves
    /// (called with the writer lock held).
    fn publish(&self, next: PathMap) {
        self.gauge
            .set(i64::try_from(next.len()).unwrap_or(i64::MAX));
        let previous = self.by_path.swap(Arc::new(next));
        let current = self.by_path.load();
        let served: std::collections::HashSet<&str> =
            current.values().map(|r| r.key.as_str()).collect();
        for gone in previous
            .values()
            .filter(|r| !served.contains(r.key.as_str()))
        {
            self.integrations.forget(&gone.metrics);
        }
    }
}

fn take_integration(map: &mut PathMap, namespace: &str, name: &str) -> Option<Arc<CompiledRoute>> {
    let path = map
        .iter()
        .find(|(_, r)| r.route.namespace == namespace && r.route.name == name)
        .map(|(p, _)| p.clone())?;
    map.remove(&path)
}

/// Compiles `route`. `previous` is the integration's currently served route (its rate
/// limiter is kept when uid and limits are unchanged); `others` are the routes already
/// in the new table (path conflicts).
fn compile(
    route: Route,
    previous: Option<&CompiledRoute>,
    others: &PathMap,
    integrations: &IntegrationMetrics,
) -> Result<CompiledRoute, RouteError> {
    let integration = route.key();
    let fail = |problem: RouteProblem| RouteError {
        integration: integration.clone(),
        problem,
    };
    if !is_valid_path(&route.path) {
        return Err(fail(RouteProblem::InvalidPath(route.path.clone())));
    }
    if let Some(owner) = others.get(&route.path) {
        return Err(fail(RouteProblem::PathConflict(owner.key.clone())));
    }
    let (route, declared) = route.split_spec();
    let spec = spec::resolve(&declared).map_err(|p| fail(p.into()))?;
    drop(declared);
    let params = (spec.limits.requests_per_second, spec.limits.burst);
    let rate = match previous {
        Some(p) if p.route.uid == route.uid && p.rate.params == params => p.rate.clone(),
        _ => Arc::new(RateLimit::new(params.0, params.1)),
    };
    let body_inflight = match previous {
        Some(p) if p.route.uid == route.uid => p.body_inflight.clone(),
        _ => Arc::default(),
    };
    let provider = spec.provider.as_str();
    let metrics = match previous {
        Some(p) if p.route.uid == route.uid && p.metrics.provider() == provider => {
            p.metrics.clone()
        }
        Some(p) => {
            // Re-created, or the provider changed: the old info series must not linger.
            integrations.forget(&p.metrics);
            integrations.for_route(&route.namespace, &route.name, provider)
        }
        None => integrations.for_route(&route.namespace, &route.name, provider),
    };
    integrations.describe(&metrics, route.expected_interval_seconds);
    Ok(CompiledRoute {
        key: integration,
        spec,
        rate,
        body_inflight,
        metrics,
        route,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ProviderKind, WebhookIntegration, WebhookIntegrationSpec};

    /// One spec field's alternatives for [`the_controller_refuses_every_spec_the_receivers_would`]:
    /// valid and invalid values, `None` leaves the field out.
    fn field_choices() -> Vec<(&'static str, Vec<Option<serde_json::Value>>)> {
        use serde_json::json;
        vec![
            (
                "signature",
                vec![
                    None,
                    Some(
                        json!({"header": "X-Sig", "algorithm": "sha256", "encoding": "hex", "signedContent": "{body}"}),
                    ),
                    Some(
                        json!({"header": "X Sig", "algorithm": "sha256", "encoding": "hex", "signedContent": "{body}"}),
                    ),
                    Some(
                        json!({"header": "X-Sig", "algorithm": "sha256", "encoding": "hex", "signedContent": "{body}{nope}"}),
                    ),
                    Some(
                        json!({"header": "X-Sig", "algorithm": "sha1", "encoding": "base64", "signedContent": "{timestamp}.{body}", "timestampHeader": "X-Ts"}),
                    ),
                    Some(
                        json!({"header": "X-Sig", "algorithm": "sha1", "encoding": "base64", "signedContent": "{id}.{body}", "idHeader": "bad header"}),
                    ),
                ],
            ),
            (
                "tokenHeader",
                vec![None, Some(json!("X-Token")), Some(json!("bad header"))],
            ),
            (
                "incidents",
                vec![
                    None,
                    Some(json!({"idFrom": "/alert/id", "titleFrom": "body.title"})),
                    Some(json!({"idFrom": "body.alert.id", "resolvedWhen": "body.state == 'ok'"})),
                    Some(json!({"idFrom": "body.alert.(", "titleFrom": "/t"})),
                    Some(json!({"idFrom": "/a~2b"})),
                    Some(json!({"titleFrom": "/title"})),
                    Some(
                        json!({"idFrom": "/id", "resolvedWhen": "body.state ==", "severityMap": {"P1": "critical"}}),
                    ),
                    Some(json!({"idFrom": "/id", "severityMap": {"P1": "urgent"}})),
                ],
            ),
            (
                "schema",
                vec![
                    None,
                    Some(json!({"type": "object", "required": ["id"]})),
                    Some(json!({"type": 12})),
                ],
            ),
            (
                "allowedSourceRanges",
                vec![
                    None,
                    Some(json!(["10.0.0.0/8", "2001:db8::/32"])),
                    Some(json!(["10.0.0.0/33"])),
                ],
            ),
            (
                "limits",
                vec![
                    None,
                    Some(json!({"maxBodyBytes": 4096, "requestsPerSecond": 5, "burst": 10})),
                    Some(json!({"burst": 0})),
                ],
            ),
            (
                "dedupWindow",
                vec![None, Some(json!("1h30m")), Some(json!("an hour"))],
            ),
        ]
    }

    /// The controller and the receivers judge a spec alike: whatever the controller
    /// accepts (no InvalidSpec), a receiver compiles. Otherwise the controller would write
    /// the route with Ready=True and the receivers would drop it: the endpoint answers 404.
    #[test]
    fn the_controller_refuses_every_spec_the_receivers_would() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let fields = field_choices();
        let picks: Vec<_> = fields.iter().map(|(_, c)| 0..c.len()).collect();
        let mut runner = TestRunner::new(Config {
            cases: 3000,
            ..Config::default()
        });
        let refused = std::cell::Cell::new(0u32);
        let strategy = (prop::sample::select(ProviderKind::ALL.to_vec()), picks);
        runner
            .run(&strategy, |(provider, picked)| {
                let mut spec = serde_json::json!({"provider": provider});
                for ((name, choices), i) in fields.iter().zip(&picked) {
                    if let Some(value) = &choices[*i] {
                        spec[*name] = value.clone();
                    }
                }
                let spec: WebhookIntegrationSpec =
                    serde_json::from_value(spec.clone()).expect("spec shape");
                let problems = crate::domain::plan::validate(&spec);
                let route = Route {
                    namespace: "payments".into(),
                    name: "agree".into(),
                    uid: "uid-1".into(),
                    generation: 1,
                    path: "/hooks/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
                    secrets: Vec::new(),
                    spec: spec.clone(),
                    forward: Vec::new(),
                    replay: None,
                    expected_interval_seconds: None,
                };
                let compiled = RouteTable::new().upsert(route);
                if problems.is_empty() {
                    prop_assert!(
                        compiled.is_ok(),
                        "the controller accepts {spec:?} but a receiver refuses it: {compiled:?}"
                    );
                } else {
                    refused.set(refused.get() + 1);
                }
                Ok(())
            })
            .expect("controller and receiver agree");
        assert!(refused.get() > 0, "the cases include invalid specs");
    }

    /// Every invalid example the README lists that the API server's schema lets through
    /// (standalone has no API server) is refused alike by the controller's check and the
    /// route compiler, with the same problems.
    #[test]
    fn the_invalid_fixtures_are_refused_alike() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/invalid");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).expect("fixtures") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("read");
            let Ok(wi) = serde_yaml::from_str::<WebhookIntegration>(&text) else {
                continue; // not even the shape (e.g. an unknown provider)
            };
            let problems = crate::domain::plan::validate(&wi.spec);
            let route = Route {
                namespace: "default".into(),
                name: "fixture".into(),
                uid: "uid-1".into(),
                generation: 1,
                path: "/hooks/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
                secrets: Vec::new(),
                spec: wi.spec.clone(),
                forward: Vec::new(),
                replay: None,
                expected_interval_seconds: None,
            };
            match RouteTable::new().upsert(route) {
                Err(RouteError {
                    problem: RouteProblem::Spec(SpecProblems(found)),
                    ..
                }) => assert_eq!(found, problems, "{}", path.display()),
                other => {
                    // A fixture only the CRD's own schema refuses (e.g. an empty key).
                    assert!(problems.is_empty(), "{}: {other:?}", path.display());
                    continue;
                }
            }
            checked += 1;
        }
        assert!(checked >= 4, "only {checked} fixtures reached the resolver");
    }

    fn scrape(registry: &prometheus_client::registry::Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
        text
    }

    fn route(name: &str, path_char: char, uid: &str, interval: Option<u64>) -> Route {
        Route {
            namespace: "payments".into(),
            name: name.into(),
            uid: uid.into(),
            generation: 1,
            path: format!("/hooks/{}", path_char.to_string().repeat(32)),
            secrets: Vec::new(),
            spec: serde_json::from_value(serde_json::json!({"provider": "github"})).expect("spec"),
            forward: Vec::new(),
            replay: None,
            expected_interval_seconds: interval,
        }
    }

    /// Per-integration series exist while the route is served, keep counting across a
    /// route update, and are gone once the integration is no longer served (bounded by
    /// the number of integrations).
    #[test]
    fn integration_series_follow_the_routes_served() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = super::super::metrics::ReceiverMetrics::register(&mut registry);
        let table = RouteTable::with_metrics(metrics.routes.clone(), metrics.integrations.clone());
        table
            .upsert(route("stripe", 'A', "u1", Some(3600)))
            .expect("route");
        table
            .upsert(route("github", 'B', "u2", None))
            .expect("route");
        let served = table
            .get(&format!("/hooks/{}", "A".repeat(32)))
            .expect("served");
        served.metrics.answered("accepted", 1_700_000_000.5);
        served.metrics.rejected("signature_mismatch");
        served.metrics.rejected("signature_mismatch");
        served.metrics.rejected("body_too_large");
        let text = scrape(&registry);
        for line in [
            r#"hookwarden_integration_deliveries_total{namespace="payments",integration="stripe",outcome="accepted"} 1"#,
            r#"hookwarden_integration_deliveries_total{namespace="payments",integration="stripe",outcome="rejected"} 3"#,
            r#"hookwarden_integration_rejects_total{namespace="payments",integration="stripe",reason="signature_mismatch"} 2"#,
            r#"hookwarden_integration_rejects_total{namespace="payments",integration="stripe",reason="body_too_large"} 1"#,
            r#"hookwarden_integration_last_delivery_timestamp_seconds{namespace="payments",integration="stripe"} 1700000000.5"#,
            r#"hookwarden_integration_expected_interval_seconds{namespace="payments",integration="stripe"} 3600"#,
            r#"hookwarden_integration_info{namespace="payments",integration="stripe",provider="github"} 1"#,
            r#"hookwarden_integration_open_incidents{namespace="payments",integration="github"} 0"#,
            "hookwarden_receiver_routes 2",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(
            !text.contains(
                r#"expected_interval_seconds{namespace="payments",integration="github"}"#
            ),
            "no annotation, no series"
        );
        assert!(
            !text.contains(
                r#"last_delivery_timestamp_seconds{namespace="payments",integration="github"}"#
            ),
            "no delivery yet, no last-delivery series"
        );

        // An update of the same integration keeps its counters and drops the annotation.
        table
            .upsert(route("stripe", 'A', "u1", None))
            .expect("route");
        let text = scrape(&registry);
        assert!(text.contains(r#"hookwarden_integration_deliveries_total{namespace="payments",integration="stripe",outcome="accepted"} 1"#));
        assert!(
            !text.contains(
                r#"expected_interval_seconds{namespace="payments",integration="stripe"}"#
            )
        );

        assert!(table.remove("payments", "stripe"));
        let text = scrape(&registry);
        assert!(
            !text.contains(r#"integration="stripe""#),
            "series of a removed integration remain:\n{text}"
        );
        assert!(text.contains(r#"integration="github""#));
        table.replace_all(Vec::new());
        let text = scrape(&registry);
        assert!(!text.contains("integration=\""), "{text}");
        assert!(text.contains("hookwarden_receiver_routes 0"));
    }
}
