//! The reconcile pipeline for one integration: gather inputs → [`plan`] → apply the
//! generated Secret, the route Secret and the status, each only when it changed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt as _};
use serde_json::json;
use tracing::{Instrument as _, debug, info, warn};

use super::metrics::ControllerMetrics;
use super::settled::{SecretIndex, SecretKey, Seen};
use crate::clock::Clock;
use crate::crd::{FINALIZER, WebhookIntegration};
use crate::domain::plan::{
    self, GENERATED_SECRET_KEY, GENERATED_URL_KEY, GeneratedForwardLookup, GeneratedLookup, Plan,
    PlanInput, RefLookup, SecretData, SecretSource, lookup_key,
};
use crate::domain::secret::{generate_forward_signing_keys, generate_path, generate_secret};
use crate::events::EventRecorder;
use crate::route::Route;

/// Server-side apply field manager of the controller.
pub const FIELD_MANAGER: &str = "hookwarden-controller";
/// Label on the generated `<name>-webhook` and `<name>-forward` Secrets (the controller
/// watches them by it).
pub const GENERATED_LABEL: &str = "hookwarden.dev/generated";
/// Periodic re-check when nothing else triggers a reconcile (`--resync-seconds`).
pub const RESYNC: Duration = Duration::from_secs(3600);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Shared state handed to every reconcile.
pub struct Context {
    pub client: Client,
    /// hookwarden's own namespace, where route Secrets live.
    pub route_namespace: String,
    pub external_base_url: Option<String>,
    pub recorder: EventRecorder,
    pub metrics: Arc<ControllerMetrics>,
    /// Wall-clock time (Unix ms, the crate's one convention); replaceable in tests.
    pub clock: Clock,
    /// Consecutive transient failures per object, for exponential backoff.
    pub failures: Mutex<HashMap<ObjectRef<WebhookIntegration>, u32>>,
    /// The status this controller wrote last per integration (see [`StatusWritten`]).
    pub status_written: Mutex<HashMap<ObjectRef<WebhookIntegration>, StatusWritten>>,
    /// The Secrets each integration reads, and the reconciles that need not run again
    /// (see [`super::settled`]).
    pub secrets: Mutex<SecretIndex>,
    /// Periodic re-check of every integration.
    pub resync: Duration,
}

/// A status write and the copy of the integration it was planned from. Our own writes
/// trigger reconciles (the generated and route Secrets come back as watch events) that can
/// run before the watch has brought the status write back: such a reconcile still sees
/// exactly the copy the write was planned from, plans the same status, and need not write
/// it (and announce it) a second time. Any other change to the object changes its
/// resourceVersion, and the status is judged afresh.
#[derive(Clone, Debug)]
pub struct StatusWritten {
    uid: String,
    planned_from: Option<String>,
    status: plan::DesiredStatus,
}

impl Context {
    pub fn new(
        client: Client,
        route_namespace: String,
        external_base_url: Option<String>,
        recorder: EventRecorder,
        metrics: Arc<ControllerMetrics>,
    ) -> Context {
        Context {
            client,
            route_namespace,
            external_base_url,
            recorder,
            metrics,
            clock: crate::clock::system_clock(),
            failures: Mutex::new(HashMap::new()),
            status_written: Mutex::new(HashMap::new()),
            secrets: Mutex::new(SecretIndex::default()),
            resync: RESYNC,
        }
    }

    /// The Secret index, recovering from poisoning (it holds no invariant a panic breaks
    /// beyond a memo, and a dropped memo only costs a read).
    pub fn secret_index(&self) -> std::sync::MutexGuard<'_, SecretIndex> {
        self.secrets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn already_written(&self, wi: &WebhookIntegration, desired: &plan::DesiredStatus) -> bool {
        let Ok(mut written) = self.status_written.lock() else {
            return false;
        };
        let key = ObjectRef::from_obj(wi);
        let Some(w) = written.get(&key) else {
            return false;
        };
        if Some(&w.uid) != wi.uid().as_ref() || w.planned_from != wi.resource_version() {
            // The cache has moved past the copy the write was planned from (it never goes
            // back), so the memo can never match again.
            written.remove(&key);
            return false;
        }
        plan::same_status_but_transition_times(&w.status, desired)
    }

    fn remember_written(&self, wi: &WebhookIntegration, status: &plan::DesiredStatus) {
        if let Ok(mut written) = self.status_written.lock() {
            written.insert(
                super::settled::bare(&ObjectRef::from_obj(wi)),
                StatusWritten {
                    uid: wi.uid().unwrap_or_default(),
                    planned_from: wi.resource_version(),
                    status: status.clone(),
                },
            );
        }
    }

    fn forget_written(&self, wi: &WebhookIntegration) {
        if let Ok(mut written) = self.status_written.lock() {
            written.remove(&ObjectRef::from_obj(wi));
        }
    }

    /// Drops everything kept per integration (backoff count, status memo) for one that is
    /// gone.
    fn forget(&self, key: &ObjectRef<WebhookIntegration>) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(key);
        }
        if let Ok(mut written) = self.status_written.lock() {
            written.remove(key);
        }
        self.secret_index().remove(key);
    }

    /// How many integrations this controller keeps per-object memory for (tests).
    pub fn remembered(&self) -> usize {
        let failures = self.failures.lock().map(|f| f.len()).unwrap_or(0);
        let written = self.status_written.lock().map(|w| w.len()).unwrap_or(0);
        failures.max(written)
    }
}

/// What [`forget_missing`] did about a missing integration's route.
#[derive(Debug, PartialEq, Eq)]
pub enum MissingRoute {
    /// No route Secret: the finalizer removed it (the usual deletion).
    None,
    /// The integration exists after all (the cache lags): its own reconcile owns the route.
    IntegrationExists,
    /// The integration is gone and its route Secret was deleted.
    Removed,
    /// The route Secret changed or vanished between the read and the delete: left to the
    /// next event.
    Changed,
}

/// A reconcile came due for an integration that is not in the controller's cache: it was
/// deleted (after its finalizer ran, or with the finalizer removed by hand so cleanup never
/// ran), or a route Secret names an integration that no longer exists (deleted while no
/// controller ran). Forgets what the controller kept about it and, when a live read
/// confirms the integration is gone, deletes its route Secret, guarded by that Secret's
/// uid and resourceVersion: a route left behind would keep a deleted integration's endpoint
/// answering 202 to deliveries that can reach no status. The usual deletion costs one GET
/// (the route Secret is already gone).
pub async fn forget_missing(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<MissingRoute, kube::Error> {
    ctx.forget(&ObjectRef::new(name).within(namespace));
    let routes: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.route_namespace);
    let route_secret_name = Route::secret_name(namespace, name);
    let Some(secret) = routes.get_opt(&route_secret_name).await? else {
        return Ok(MissingRoute::None);
    };
    let integrations: Api<WebhookIntegration> = Api::namespaced(ctx.client.clone(), namespace);
    if integrations.get_opt(name).await?.is_some() {
        return Ok(MissingRoute::IntegrationExists);
    }
    let guard = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: secret.metadata.uid.clone(),
            resource_version: secret.metadata.resource_version.clone(),
        }),
        ..DeleteParams::default()
    };
    match routes.delete(&route_secret_name, &guard).await {
        Ok(_) => {
            ctx.metrics.routes_left_behind_removed.inc();
            warn!(
                integration = %name,
                %namespace,
                route = %route_secret_name,
                "removed the route of an integration that no longer exists (its finalizer did not run): its endpoint now answers 404"
            );
            Ok(MissingRoute::Removed)
        }
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {
            Ok(MissingRoute::Changed)
        }
        Err(e) => Err(e),
    }
}

/// Reconcile failures. Permanent problems with the user's objects are not errors: they
/// become conditions and Events and the reconcile waits for a change. What remains here
/// is transient (the API server) and is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the route Secret {name}: {source}")]
    ReadRoute { name: String, source: kube::Error },
    #[error("reading Secret {namespace}/{name}, which the integration names: {source}")]
    ResolveSecret {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("writing the generated Secret {namespace}/{name}: {source}")]
    WriteGeneratedSecret {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("encoding the route: {0}")]
    EncodeRoute(serde_json::Error),
    #[error("writing the route Secret {name}: {source}")]
    WriteRoute { name: String, source: kube::Error },
    #[error("encoding the status: {0}")]
    EncodeStatus(serde_json::Error),
    #[error("applying the status of {namespace}/{name}: {source}")]
    ApplyStatus {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("removing the route Secret {name}: {source}")]
    RemoveRoute { name: String, source: kube::Error },
    #[error("the integration has no namespace")]
    NoNamespace,
    /// Adding or removing the finalizer on the integration itself.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// The step that failed: the `step` label of the reconcile error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::ReadRoute { .. } => "read_route",
            Error::ResolveSecret { .. } => "resolve_secret",
            Error::WriteGeneratedSecret { .. } => "write_generated_secret",
            Error::EncodeRoute(_) => "encode_route",
            Error::WriteRoute { .. } => "write_route",
            Error::EncodeStatus(_) => "encode_status",
            Error::ApplyStatus { .. } => "apply_status",
            Error::RemoveRoute { .. } => "remove_route",
            Error::NoNamespace => "no_namespace",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

/// Entry point called by `kube::runtime::Controller`.
pub async fn reconcile(wi: Arc<WebhookIntegration>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = wi.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<WebhookIntegration> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = ObjectRef::from_obj(&*wi);
    // One span per reconcile, so every line it logs carries the object and generation.
    let span = tracing::info_span!(
        "reconcile",
        namespace = %namespace,
        integration = %wi.name_any(),
        generation = wi.metadata.generation.unwrap_or_default(),
    );
    let result = finalizer(&api, FINALIZER, wi, |event| async {
        match event {
            finalizer::Event::Apply(wi) => apply(&wi, &ctx).await,
            finalizer::Event::Cleanup(wi) => cleanup(&wi, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => inner,
        other => Error::Finalizer(Box::new(other)),
    });
    ctx.metrics.observe(
        started.elapsed(),
        result.as_ref().err().map(Error::metric_label),
    );
    if result.is_ok() {
        if let Ok(mut failures) = ctx.failures.lock() {
            failures.remove(&key);
        }
    } else {
        ctx.secret_index().unsettle(&key);
    }
    result
}

/// Requeue policy after a transient error: exponential per object, capped, with jitter so
/// many integrations failing together (API server down) do not retry in lockstep.
pub fn error_policy(wi: Arc<WebhookIntegration>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(&*wi);
    let attempt = match ctx.failures.lock() {
        Ok(mut failures) => {
            let n = failures.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            *n
        }
        Err(_) => 1,
    };
    let delay = backoff(attempt);
    warn!(integration = %wi.name_any(), namespace = ?wi.namespace(), %error, attempt, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// 1 s, 2 s, 4 s, … capped at 5 min, plus up to 10% jitter.
pub fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_secs(1u64 << attempt.saturating_sub(1).min(9)).min(MAX_BACKOFF);
    let jitter_ms = u64::from(rand::random::<u16>()) % (base.as_millis() as u64 / 10 + 1);
    base + Duration::from_millis(jitter_ms)
}

/// What one reconcile saw of the Secrets it registered, for [`SecretIndex::settle`].
struct SeenSecrets(Vec<(SecretKey, Seen)>);

impl SeenSecrets {
    fn new(registered: &[SecretKey]) -> SeenSecrets {
        SeenSecrets(
            registered
                .iter()
                .map(|k| (k.clone(), Seen::Unread))
                .collect(),
        )
    }

    /// Records a read (`None`: absent) or the answer to a write.
    fn saw(&mut self, namespace: &str, name: &str, secret: Option<&Secret>) {
        let seen = match secret {
            None => Seen::Absent,
            Some(s) => match &s.metadata.resource_version {
                Some(v) => Seen::At(v.clone()),
                // Nothing to compare later events with: never settle on it.
                None => Seen::At(String::new()),
            },
        };
        match self
            .0
            .iter_mut()
            .find(|((ns, n), _)| ns == namespace && n == name)
        {
            Some(entry) => entry.1 = seen,
            None => self
                .0
                .push(((namespace.to_string(), name.to_string()), seen)),
        }
    }
}

/// The Secrets a reconcile of `wi` may read, known from its spec alone: the route Secret,
/// the referenced or generated Secret, the Secrets `spec.forward` names and `<name>-forward`.
fn secret_reads(wi: &WebhookIntegration, namespace: &str, route: &SecretKey) -> Vec<SecretKey> {
    let name = wi.name_any();
    let own = |n: String| (namespace.to_string(), n);
    let mut reads = vec![route.clone()];
    reads.push(match &wi.spec.secret_ref {
        Some(r) => own(r.name.clone()),
        None => own(plan::generated_secret_name(&name)),
    });
    reads.extend(plan::forward_secret_names(&wi.spec).into_iter().map(own));
    reads.push(own(plan::generated_forward_secret_name(&name)));
    let mut unique = std::collections::HashSet::new();
    reads.retain(|k| unique.insert(k.clone()));
    reads
}

/// Whether `written` (the answer to the controller's status write) differs from `planned`
/// (the copy the reconcile planned from) in nothing but status and resourceVersion, so a
/// reconcile of `written` would plan what was just written.
fn only_status_differs(planned: &WebhookIntegration, written: &WebhookIntegration) -> bool {
    // What the cache keeps of each (it drops managedFields and kubectl's last-applied
    // annotation), without its resourceVersion.
    let meta = |wi: &WebhookIntegration| {
        let mut m = wi.metadata.clone();
        super::slim_metadata(&mut m);
        m.resource_version = None;
        m
    };
    planned.spec == written.spec && meta(planned) == meta(written)
}

/// One Secret of the integration's namespace, `None` when it does not exist; an API
/// failure is the `resolve_secret` step's error, naming the Secret.
async fn get_secret(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &str,
    seen: &mut SeenSecrets,
) -> Result<Option<Secret>, Error> {
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|source| Error::ResolveSecret {
            namespace: namespace.to_string(),
            name: name.to_string(),
            source,
        })?;
    seen.saw(namespace, name, secret.as_ref());
    Ok(secret)
}

/// What was found for the secret, plus the generated Secret's current data (so it is not
/// read twice).
async fn find_secret(
    ctx: &Context,
    wi: &WebhookIntegration,
    namespace: &str,
    seen: &mut SeenSecrets,
) -> Result<(SecretSource, Option<BTreeMap<String, ByteString>>), Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    match &wi.spec.secret_ref {
        Some(r) => {
            let Some(secret) = get_secret(&secrets, namespace, &r.name, seen).await? else {
                return Ok((SecretSource::Referenced(RefLookup::SecretMissing), None));
            };
            Ok((SecretSource::Referenced(lookup_key(&secret, &r.key)), None))
        }
        None => {
            let name = plan::generated_secret_name(&wi.name_any());
            let Some(secret) = get_secret(&secrets, namespace, &name, seen).await? else {
                return Ok((SecretSource::Generated(GeneratedLookup::Absent), None));
            };
            let uid = wi.uid().unwrap_or_default();
            let owned = secret.owner_references().iter().any(|o| o.uid == uid);
            if !owned {
                return Ok((SecretSource::Generated(GeneratedLookup::NotOwned), None));
            }
            let value = match lookup_key(&secret, GENERATED_SECRET_KEY) {
                RefLookup::Value(v) => Some(v),
                _ => None,
            };
            Ok((
                SecretSource::Generated(GeneratedLookup::Owned(value)),
                secret.data,
            ))
        }
    }
}

/// What was found for `spec.forward`: the Secrets it names and the generated
/// `<name>-forward` Secret.
struct ForwardFound {
    secrets: BTreeMap<String, Option<SecretData>>,
    generated: GeneratedForwardLookup,
    /// `<name>-forward`'s current data when owned (so it is not read twice).
    generated_data: Option<BTreeMap<String, ByteString>>,
}

/// Reads the Secrets `spec.forward` names, one GET each, and `<name>-forward` when the
/// integration forwards or did last time (so a removed target's key is dropped). An
/// integration that never forwarded costs no request.
async fn find_forward_secrets(
    ctx: &Context,
    wi: &WebhookIntegration,
    namespace: &str,
    previous_route: Option<&Route>,
    seen: &mut SeenSecrets,
) -> Result<ForwardFound, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut found = ForwardFound {
        secrets: BTreeMap::new(),
        generated: GeneratedForwardLookup::Absent,
        generated_data: None,
    };
    for name in plan::forward_secret_names(&wi.spec) {
        let secret = get_secret(&secrets, namespace, &name, seen).await?;
        found
            .secrets
            .insert(name, secret.as_ref().map(SecretData::from_secret));
    }
    let forwarded = previous_route.is_some_and(|r| !r.spec.forward.is_empty());
    if wi.spec.forward.is_empty() && !forwarded {
        return Ok(found);
    }
    let name = plan::generated_forward_secret_name(&wi.name_any());
    if let Some(secret) = get_secret(&secrets, namespace, &name, seen).await? {
        let uid = wi.uid().unwrap_or_default();
        if secret.owner_references().iter().any(|o| o.uid == uid) {
            found.generated = GeneratedForwardLookup::Owned(SecretData::from_secret(&secret));
            // The API server leaves `data` out of a Secret without keys.
            found.generated_data = Some(secret.data.unwrap_or_default());
        } else {
            found.generated = GeneratedForwardLookup::NotOwned;
        }
    }
    Ok(found)
}

async fn apply(wi: &WebhookIntegration, ctx: &Context) -> Result<Action, Error> {
    let namespace = wi.namespace().ok_or(Error::NoNamespace)?;
    let name = wi.name_any();
    let uid = wi.uid().unwrap_or_default();
    let routes: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.route_namespace);
    let route_secret_name = Route::secret_name(&namespace, &name);
    let route_key = (ctx.route_namespace.clone(), route_secret_name.clone());
    let key = ObjectRef::from_obj(wi);
    let reads = secret_reads(wi, &namespace, &route_key);
    let mut seen = SeenSecrets::new(&reads);
    {
        // Registered before anything is read: a change made while we read triggers
        // another reconcile.
        let mut index = ctx.secret_index();
        index.register(&key, reads);
        if index.is_settled(wi) {
            drop(index);
            // Settled at a version after any status write's planned-from copy: that
            // memo can no longer match.
            ctx.forget_written(wi);
            debug!(integration = %name, %namespace, "unchanged since it was settled: nothing read");
            return Ok(Action::requeue(ctx.resync));
        }
    }

    // A route of an earlier integration with the same name (different uid) is not ours.
    let route_secret =
        routes
            .get_opt(&route_secret_name)
            .await
            .map_err(|source| Error::ReadRoute {
                name: route_secret_name.clone(),
                source,
            })?;
    seen.saw(&route_key.0, &route_key.1, route_secret.as_ref());
    let previous_route = route_secret
        .and_then(|s| Route::from_secret(&s).ok())
        .filter(|r| r.uid == uid);
    let (secret, generated_data) = find_secret(ctx, wi, &namespace, &mut seen).await?;
    let forward =
        find_forward_secrets(ctx, wi, &namespace, previous_route.as_ref(), &mut seen).await?;
    let plan = plan::plan(PlanInput {
        integration: wi,
        secret,
        previous_route: previous_route.as_ref(),
        external_base_url: ctx.external_base_url.as_deref(),
        now: (ctx.clock)().div_euclid(1000),
        fresh_path: generate_path(),
        fresh_secret: generate_secret(wi.spec.provider),
        forward_secrets: forward.secrets,
        generated_forward: forward.generated,
        fresh_forward_keys: generate_forward_signing_keys(&wi.spec),
    });

    let mut changed = Vec::new();
    if let Some(generated) = &plan.generated_secret {
        let desired = BTreeMap::from([
            (GENERATED_SECRET_KEY.to_string(), generated.value.expose()),
            (GENERATED_URL_KEY.to_string(), generated.url.as_str()),
        ]);
        if write_generated_secret(
            ctx,
            wi,
            &namespace,
            &generated.name,
            desired,
            generated_data.as_ref(),
            &mut seen,
        )
        .await?
        {
            changed.push("generated secret");
        }
    }
    if let Some(generated) = &plan.generated_forward_secret {
        let desired = generated
            .keys
            .iter()
            .map(|(target, key)| (target.clone(), key.expose()))
            .collect();
        if write_generated_secret(
            ctx,
            wi,
            &namespace,
            &generated.name,
            desired,
            forward.generated_data.as_ref(),
            &mut seen,
        )
        .await?
        {
            changed.push("generated forward secret");
        }
    }
    if let Some(route) = &plan.route
        && previous_route.as_ref() != Some(route)
    {
        let secret = route
            .to_secret(&ctx.route_namespace)
            .map_err(Error::EncodeRoute)?;
        let written = routes
            .patch(
                &route_secret_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map_err(|source| Error::WriteRoute {
                name: route_secret_name.clone(),
                source,
            })?;
        seen.saw(&route_key.0, &route_key.1, Some(&written));
        changed.push("route");
        info!(integration = %name, %namespace, path = %route.path, generation = route.generation, "route written");
    }
    let status_changed = !plan::status_matches(wi.status.as_ref(), &plan.status)
        && !ctx.already_written(wi, &plan.status);
    // The copy of the integration a reconcile would see next, if nothing else changes.
    let mut settled_version = wi.resource_version();
    if status_changed {
        let written = write_status(ctx, &namespace, &name, &plan).await?;
        ctx.remember_written(wi, &plan.status);
        changed.push("status");
        settled_version = written
            .filter(|w| only_status_differs(wi, w))
            .and_then(|w| w.resource_version());
    }
    if status_changed || !changed.is_empty() {
        publish_events(ctx, wi, &plan, &changed).await;
    } else {
        debug!(integration = %name, %namespace, "up to date");
    }
    {
        // Settled only when nothing depends on the clock (a previous secret's expiry):
        // a later reconcile of the same copies would plan exactly this.
        let mut index = ctx.secret_index();
        match (&plan.requeue_after, settled_version) {
            (None, Some(version)) if !seen.0.iter().any(|(_, s)| *s == Seen::At(String::new())) => {
                index.settle(wi, version, seen.0)
            }
            _ => index.unsettle(&key),
        }
    }
    Ok(match plan.requeue_after {
        Some(d) => Action::requeue(d.min(ctx.resync)),
        None => Action::requeue(ctx.resync),
    })
}

/// Creates or updates a generated Secret the integration owns (`<name>-webhook`,
/// `<name>-forward`) with exactly `desired` as its data: keys this field manager wrote
/// before and `desired` lacks are dropped by the server-side apply. True when something
/// was written.
async fn write_generated_secret(
    ctx: &Context,
    wi: &WebhookIntegration,
    namespace: &str,
    name: &str,
    desired: BTreeMap<String, &str>,
    existing: Option<&BTreeMap<String, ByteString>>,
    seen: &mut SeenSecrets,
) -> Result<bool, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let desired: BTreeMap<String, ByteString> = desired
        .into_iter()
        .map(|(k, v)| (k, ByteString(v.as_bytes().to_vec())))
        .collect();
    if existing == Some(&desired) {
        return Ok(false);
    }
    let owner = OwnerReference {
        api_version: WebhookIntegration::api_version(&()).into_owned(),
        kind: WebhookIntegration::kind(&()).into_owned(),
        name: wi.name_any(),
        uid: wi.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    };
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (GENERATED_LABEL.to_string(), "true".to_string()),
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "hookwarden".to_string(),
                ),
            ])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(desired),
        ..Secret::default()
    };
    let written = secrets
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .map_err(|source| Error::WriteGeneratedSecret {
            namespace: namespace.to_string(),
            name: name.to_string(),
            source,
        })?;
    seen.saw(namespace, name, Some(&written));
    Ok(true)
}

/// Applies the controller's status fields; the integration as the API server answered
/// (`None` if the answer could not be read as one).
async fn write_status(
    ctx: &Context,
    namespace: &str,
    name: &str,
    plan: &Plan,
) -> Result<Option<WebhookIntegration>, Error> {
    let api: Api<WebhookIntegration> = Api::namespaced(ctx.client.clone(), namespace);
    let mut status = serde_json::Map::new();
    if let Some(g) = plan.status.observed_generation {
        status.insert("observedGeneration".into(), json!(g));
    }
    if let Some(url) = &plan.status.url {
        status.insert("url".into(), json!(url));
    }
    if let Some(path) = &plan.status.path {
        status.insert("path".into(), json!(path));
    }
    if let Some(secret_name) = &plan.status.secret_name {
        status.insert("secretName".into(), json!(secret_name));
    }
    status.insert(
        "conditions".into(),
        serde_json::to_value(&plan.status.conditions).map_err(Error::EncodeStatus)?,
    );
    let patch = json!({
        "apiVersion": WebhookIntegration::api_version(&()),
        "kind": WebhookIntegration::kind(&()),
        "status": status,
    });
    let written = api
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| Error::ApplyStatus {
            namespace: namespace.to_string(),
            name: name.to_string(),
            source,
        })?;
    Ok(Some(written))
}

async fn publish_events(ctx: &Context, wi: &WebhookIntegration, plan: &Plan, changed: &[&str]) {
    let reference = wi.object_ref(&());
    let mut events: Vec<Event> = plan
        .events
        .iter()
        .map(|e| Event {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.to_string(),
            note: Some(e.message.clone()),
            action: "Reconcile".to_string(),
            secondary: None,
        })
        .collect();
    if changed.contains(&"route") {
        events.push(Event {
            type_: EventType::Normal,
            reason: "RouteWritten".to_string(),
            note: Some(match &plan.status.url {
                Some(url) => format!(
                    "endpoint {url} serves generation {}",
                    wi.metadata.generation.unwrap_or_default()
                ),
                None => format!(
                    "path {} serves generation {}",
                    plan.status.path.as_deref().unwrap_or_default(),
                    wi.metadata.generation.unwrap_or_default()
                ),
            }),
            action: "WriteRoute".to_string(),
            secondary: None,
        });
    }
    for event in events {
        // Events are best effort: failing to record one must not fail the reconcile.
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(error = %e, reason = %event.reason, "cannot publish event");
        }
    }
}

async fn cleanup(wi: &WebhookIntegration, ctx: &Context) -> Result<Action, Error> {
    let namespace = wi.namespace().ok_or(Error::NoNamespace)?;
    ctx.forget_written(wi);
    ctx.secret_index().remove(&ObjectRef::from_obj(wi));
    let routes: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.route_namespace);
    let route_secret_name = Route::secret_name(&namespace, &wi.name_any());
    match routes
        .delete(&route_secret_name, &DeleteParams::default())
        .await
    {
        Ok(_) => info!(integration = %wi.name_any(), %namespace, "route removed"),
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(source) => {
            return Err(Error::RemoveRoute {
                name: route_secret_name,
                source,
            });
        }
    }
    let event = Event {
        type_: EventType::Normal,
        reason: "RouteRemoved".to_string(),
        note: Some("integration deleted: its endpoint now answers 404".to_string()),
        action: "Cleanup".to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &wi.object_ref(&())).await {
        warn!(error = %e, "cannot publish event");
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert!(backoff(1) >= Duration::from_secs(1) && backoff(1) < Duration::from_millis(1200));
        assert!(backoff(3) >= Duration::from_secs(4));
        assert!(backoff(30) <= MAX_BACKOFF + MAX_BACKOFF / 10);
        assert!(backoff(30) >= MAX_BACKOFF);
    }

    #[test]
    fn a_write_answer_matches_the_slimmed_cached_copy_it_was_planned_from() {
        let written: WebhookIntegration = serde_json::from_value(serde_json::json!({
            "apiVersion": "hookwarden.dev/v1alpha1", "kind": "WebhookIntegration",
            "metadata": {
                "name": "a", "namespace": "ns", "uid": "u", "resourceVersion": "12",
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"spec\":{}}",
                    "team": "payments",
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {"provider": "github"},
            "status": {"path": "/hooks/x"},
        }))
        .expect("integration");
        // The cache's copy: slimmed, an older resourceVersion, no status yet.
        let mut cached = written.clone();
        super::super::slim_metadata(&mut cached.metadata);
        cached.metadata.resource_version = Some("11".into());
        cached.status = None;
        assert!(cached.metadata.managed_fields.is_none());
        assert_eq!(
            cached.metadata.annotations.as_ref().map(|a| a.len()),
            Some(1),
            "only kubectl's annotation goes"
        );
        assert!(only_status_differs(&cached, &written));
        // Anything else in metadata still counts.
        let mut relabelled = written.clone();
        relabelled.metadata.labels = Some(BTreeMap::from([("x".into(), "y".into())]));
        assert!(!only_status_differs(&cached, &relabelled));
    }

    #[test]
    fn secret_values_are_trimmed_and_missing_keys_listed() {
        let secret = Secret {
            data: Some(BTreeMap::from([
                ("token".to_string(), ByteString(b"abc\n".to_vec())),
                ("blank".to_string(), ByteString(b"  \n".to_vec())),
            ])),
            ..Secret::default()
        };
        assert_eq!(lookup_key(&secret, "token"), RefLookup::Value("abc".into()));
        assert_eq!(lookup_key(&secret, "blank"), RefLookup::Empty);
        assert_eq!(
            lookup_key(&secret, "nope"),
            RefLookup::KeyMissing {
                available: vec!["blank".into(), "token".into()]
            }
        );
    }
}
