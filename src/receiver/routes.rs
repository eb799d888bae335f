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
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use prometheus_client::metrics::gauge::Gauge;

use super::dedup::DEFAULT_WINDOW;
use super::limits::{
    self, DEFAULT_BURST, DEFAULT_MAX_BODY_BYTES, DEFAULT_REQUESTS_PER_SECOND, RateLimit,
};
use crate::domain::incident::mapping::{Mapping, MappingError};
use crate::domain::provider::ProviderKind;
use crate::domain::secret::is_valid_path;
use crate::domain::signature::{Scheme, SchemeError};
use crate::route::Route;

/// One served integration, compiled once per route update.
pub struct CompiledRoute {
    pub route: Route,
    /// `namespace/name`, precomputed for the hot path.
    pub key: String,
    pub provider: ProviderKind,
    pub scheme: Scheme,
    /// Payload → incidents (monitoring presets, or `spec.incidents`).
    pub mapping: Option<Mapping>,
    pub rate: Arc<RateLimit>,
    /// Empty: any source.
    pub source_ranges: Vec<IpNet>,
    pub schema: Option<jsonschema::Validator>,
    /// Zero: no deduplication.
    pub dedup_window: Duration,
    pub max_body_bytes: usize,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl CompiledRoute {
    /// Whether `spec.events` filters this event type out (it is then acknowledged and
    /// counted as ignored). Exclude wins over include; with an include list, a delivery
    /// whose type is unknown is not one of the listed types.
    pub fn ignores(&self, event_type: Option<&str>) -> bool {
        match event_type {
            Some(t) if self.exclude.iter().any(|e| e == t) => true,
            Some(t) => !self.include.is_empty() && !self.include.iter().any(|i| i == t),
            None => !self.include.is_empty(),
        }
    }
}

impl std::fmt::Debug for CompiledRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRoute")
            .field("key", &self.key)
            .field("path", &self.route.path)
            .field("provider", &self.provider)
            .field("rate", &self.rate)
            .field("dedup_window", &self.dedup_window)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// Why a route is not served; each says what to fix in the spec.
#[derive(Debug, thiserror::Error)]
pub enum RouteProblem {
    #[error("path {0:?} is not a hookwarden endpoint path (/hooks/ + at least 128 random bits)")]
    InvalidPath(String),
    #[error("path is already served by integration {0}")]
    PathConflict(String),
    #[error("signature settings: {0}")]
    Scheme(#[from] SchemeError),
    #[error("incident mapping: {0}")]
    Mapping(#[from] MappingError),
    #[error("spec.allowedSourceRanges: {0:?} is not a CIDR")]
    SourceRange(String),
    #[error("spec.limits.{field} must be at least 1, got {value}")]
    Limit { field: &'static str, value: i64 },
    #[error("spec.dedupWindow: {0}")]
    DedupWindow(#[from] limits::DurationError),
    #[error("spec.schema is not a usable JSON Schema: {0}")]
    Schema(String),
}

/// A route that could not be compiled.
#[derive(Debug, thiserror::Error)]
#[error("route {integration}: {problem}")]
pub struct RouteError {
    /// `namespace/name`.
    pub integration: String,
    pub problem: RouteProblem,
}

type PathMap = HashMap<String, Arc<CompiledRoute>>;

/// Path → compiled route. See the module docs.
pub struct RouteTable {
    by_path: ArcSwap<PathMap>,
    /// Serialises writers; readers never take it.
    writer: Mutex<()>,
    gauge: Gauge,
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
        RouteTable {
            by_path: ArcSwap::from_pointee(HashMap::new()),
            writer: Mutex::new(()),
            gauge,
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
        let compiled = compile(route, previous.as_deref(), &next);
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
    /// and not served; the rest are published together.
    pub fn replace_all(&self, routes: Vec<Route>) -> Vec<RouteError> {
        let _guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.by_path.load_full();
        let previous: HashMap<&str, &Arc<CompiledRoute>> =
            current.values().map(|r| (r.key.as_str(), r)).collect();
        let mut next = PathMap::with_capacity(routes.len());
        let mut errors = Vec::new();
        for route in routes {
            let prev = previous.get(route.key().as_str()).map(|r| r.as_ref());
            match compile(route, prev, &next) {
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

    fn publish(&self, next: PathMap) {
        self.gauge
            .set(i64::try_from(next.len()).unwrap_or(i64::MAX));
        self.by_path.store(Arc::new(next));
    }
}

fn take_integration(map: &mut PathMap, namespace: &str, name: &str) -> Option<Arc<CompiledRoute>> {
    let path = map
        .iter()
        .find(|(_, r)| r.route.namespace == namespace && r.route.name == name)
        .map(|(p, _)| p.clone())?;
    map.remove(&path)
}

fn positive(field: &'static str, value: Option<i64>, default: u64) -> Result<u64, RouteProblem> {
    match value {
        None => Ok(default),
        Some(v) if v >= 1 => Ok(v.unsigned_abs()),
        Some(v) => Err(RouteProblem::Limit { field, value: v }),
    }
}

/// Compiles `route`. `previous` is the integration's currently served route (its rate
/// limiter is kept when uid and limits are unchanged); `others` are the routes already
/// in the new table (path conflicts).
fn compile(
    route: Route,
    previous: Option<&CompiledRoute>,
    others: &PathMap,
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
    let spec = &route.spec;
    let scheme = Scheme::from_spec(spec).map_err(|e| fail(e.into()))?;
    let mapping = Mapping::for_spec(spec).map_err(|e| fail(e.into()))?;
    let source_ranges = limits::parse_ranges(&spec.allowed_source_ranges)
        .map_err(|c| fail(RouteProblem::SourceRange(c)))?;
    let lim = spec.limits.as_ref();
    let max_body = positive(
        "maxBodyBytes",
        lim.and_then(|l| l.max_body_bytes),
        DEFAULT_MAX_BODY_BYTES as u64,
    )
    .map_err(fail)?;
    let rps = positive(
        "requestsPerSecond",
        lim.and_then(|l| l.requests_per_second).map(i64::from),
        DEFAULT_REQUESTS_PER_SECOND.into(),
    )
    .map_err(fail)?;
    let burst = positive(
        "burst",
        lim.and_then(|l| l.burst).map(i64::from),
        DEFAULT_BURST.into(),
    )
    .map_err(fail)?;
    let params = (
        u32::try_from(rps).unwrap_or(u32::MAX),
        u32::try_from(burst).unwrap_or(u32::MAX),
    );
    let rate = match previous {
        Some(p) if p.route.uid == route.uid && p.rate.params == params => p.rate.clone(),
        _ => Arc::new(RateLimit::new(params.0, params.1)),
    };
    let dedup_window = match &spec.dedup_window {
        None => DEFAULT_WINDOW,
        Some(text) => limits::parse_go_duration(text).map_err(|e| fail(e.into()))?,
    };
    let schema = match &spec.schema {
        None => None,
        Some(s) => Some(
            jsonschema::validator_for(s).map_err(|e| fail(RouteProblem::Schema(e.to_string())))?,
        ),
    };
    let (include, exclude) = match &spec.events {
        Some(f) => (f.include.clone(), f.exclude.clone()),
        None => (Vec::new(), Vec::new()),
    };
    Ok(CompiledRoute {
        key: integration.clone(),
        provider: spec.provider,
        scheme,
        mapping,
        rate,
        source_ranges,
        schema,
        dedup_window,
        max_body_bytes: usize::try_from(max_body).unwrap_or(usize::MAX),
        include,
        exclude,
        route,
    })
}
