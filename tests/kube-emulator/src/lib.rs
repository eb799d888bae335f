//! A Kubernetes API-server emulator for hookwarden's tests — dev-only, never in the shipped
//! binary. It serves HTTPS on 127.0.0.1 with its own CA, writes kubeconfigs that the real
//! `kubectl` and `kube::Client` use, and behaves like kube-apiserver wherever our controller,
//! receiver, kube-rs and kubectl can tell the difference: discovery, OpenAPI v3, CRUD, patches
//! and server-side apply with managedFields, watches with 410 Gone, CRD schema validation with
//! CEL, pruning and defaults, Tables from printer columns, RBAC for ServiceAccount tokens, plus
//! fault injection and request counters for tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kube_emulator::EmulatorError> {
//! let emu = kube_emulator::Emulator::start().await?;
//! let client = emu.client().await?;               // admin kube::Client
//! std::fs::write("/tmp/kc", emu.kubeconfig())?;    // for kubectl --kubeconfig /tmp/kc
//! emu.fail(kube_emulator::Failure::status(503).times(2));
//! let writes = emu.count(&kube_emulator::RequestFilter::new().verb("patch").subresource("status"));
//! # let _ = (client, writes); Ok(()) }
//! ```

mod api;
mod faults;
mod openapi;
mod patch;
mod protobuf;
mod rbac;
mod registry;
mod schema;
mod store;
mod table;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use faults::{Failure, RequestFilter, RequestRecord};

use api::{Shared, error_response, json_response};
use faults::lock;

/// Why the emulator could not start or build a client.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("emulator I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("emulator TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("kube client: {0}")]
    Kube(#[from] kube::Error),
}

/// A running emulator. Dropping it stops the server.
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: String,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn fresh_token() -> String {
    let nanos = jiff::Timestamp::now().as_nanosecond() as u64;
    let mut h: u64 = 0xcbf29ce484222325 ^ u64::from(std::process::id());
    for b in nanos.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("admin-{h:016x}{nanos:016x}")
}

impl Emulator {
    /// Starts an emulator on 127.0.0.1 with a random port, a fresh CA and admin token, and the
    /// `default` and `kube-system` namespaces.
    pub async fn start() -> Result<Emulator, EmulatorError> {
        Self::start_on(
            "127.0.0.1:0"
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
            None,
        )
        .await
    }

    /// Like [`Emulator::start`], on a given address and optionally with a fixed admin token.
    pub async fn start_on(
        addr: SocketAddr,
        admin_token: Option<String>,
    ) -> Result<Emulator, EmulatorError> {
        let material = tls::generate()?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(
            admin_token.unwrap_or_else(fresh_token),
            addr.to_string(),
        ));
        let (stop, stop_rx) = watch::channel(false);
        let acceptor = tokio_rustls::TlsAcceptor::from(material.server_config.clone());
        tokio::spawn(serve(listener, acceptor, shared.clone(), stop_rx.clone()));
        tokio::spawn(garbage_collector(shared.clone(), stop_rx));
        Ok(Emulator {
            shared,
            addr,
            ca_pem: material.ca_pem,
            stop,
        })
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// PEM of the CA that signed the serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The admin bearer token (bypasses RBAC).
    pub fn admin_token(&self) -> &str {
        &self.shared.admin_token
    }

    /// The bearer token that authenticates as ServiceAccount `namespace/name`.
    pub fn service_account_token(namespace: &str, name: &str) -> String {
        format!("sa:{namespace}:{name}")
    }

    fn kubeconfig_with(&self, user: &str, token: &str, namespace: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-emulator\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\ncontexts:\n- name: kube-emulator\n  context:\n    cluster: kube-emulator\n    user: {user}\n    namespace: {namespace}\ncurrent-context: kube-emulator\nusers:\n- name: {user}\n  user:\n    token: {token}\npreferences: {{}}\n",
            url = self.url()
        )
    }

    /// A kubeconfig (YAML) for the admin, default namespace `default`.
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig_with("admin", &self.shared.admin_token, "default")
    }

    /// A kubeconfig (YAML) authenticating as ServiceAccount `namespace/name`, defaulting to its namespace.
    pub fn kubeconfig_for_service_account(&self, namespace: &str, name: &str) -> String {
        self.kubeconfig_with(
            &format!("{namespace}-{name}"),
            &Self::service_account_token(namespace, name),
            namespace,
        )
    }

    /// Writes the admin kubeconfig to `path`.
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> Result<(), EmulatorError> {
        std::fs::write(path, self.kubeconfig())?;
        Ok(())
    }

    async fn client_from(&self, kubeconfig: &str) -> Result<kube::Client, EmulatorError> {
        let kc = kube::config::Kubeconfig::from_yaml(kubeconfig)?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// An admin `kube::Client`.
    pub async fn client(&self) -> Result<kube::Client, EmulatorError> {
        self.client_from(&self.kubeconfig()).await
    }

    /// A `kube::Client` for ServiceAccount `namespace/name` (subject to RBAC).
    pub async fn client_for_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<kube::Client, EmulatorError> {
        self.client_from(&self.kubeconfig_for_service_account(namespace, name))
            .await
    }

    /// Hangs every request (and stalls open watches) until [`Emulator::resume`].
    pub fn pause(&self) {
        self.shared.faults.pause();
    }

    /// Hangs only requests (and watch streams) matching `filter`, e.g. one component's
    /// ServiceAccount, until [`Emulator::resume`]; a later pause replaces this one.
    pub fn pause_matching(&self, filter: RequestFilter) {
        self.shared.faults.pause_matching(filter);
    }

    pub fn resume(&self) {
        self.shared.faults.resume();
    }

    /// Answers matching requests with an error instead of serving them.
    pub fn fail(&self, failure: Failure) {
        self.shared.faults.add_failure(failure);
    }

    pub fn clear_failures(&self) {
        self.shared.faults.clear_failures();
    }

    /// Forgets the watch history: watches and exact lists from any earlier version get 410 Gone.
    pub fn compact(&self) {
        lock(&self.shared.state).store.compact();
    }

    /// Forgets history and ends every open watch with a 410 Gone ERROR event, so kube-rs
    /// watchers and reflectors must relist.
    pub fn expire_watches(&self) {
        lock(&self.shared.state).store.expire_watches();
    }

    /// How many requests matched `filter` so far.
    pub fn count(&self, filter: &RequestFilter) -> usize {
        self.shared.counters.count(filter)
    }

    /// Every request served so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.counters.records()
    }

    pub fn reset_counters(&self) {
        self.shared.counters.reset();
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.state).store.current_rv()
    }

    /// Reads an object straight from storage (not counted, no RBAC, works while paused):
    /// `resource` is the plural with its group (`webhookintegrations.hookwarden.dev`,
    /// `leases.coordination.k8s.io`), the bare plural for the core group (`secrets`), and
    /// `events` for Events of both APIs (stored in the core/v1 shape: `involvedObject`,
    /// `message`). Cluster-scoped objects have namespace `""`.
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.shared.state)
            .store
            .get(resource, namespace, name)
            .cloned()
    }

    /// All stored objects of a resource (`secrets`, `leases.coordination.k8s.io`, …).
    pub fn objects(&self, resource: &str) -> Vec<Value> {
        lock(&self.shared.state)
            .store
            .list(resource)
            .cloned()
            .collect()
    }

    /// Stops the server (also done on drop).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok((tcp, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        connections.spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(api::handle(shared, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // Connection errors are the client's business (it hung up); nothing to report.
            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
        });
    }
    // Dropping the JoinSet aborts open connections, ending their watches.
}

async fn garbage_collector(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let mut state = lock(&shared.state);
        api::collect_garbage(&mut state);
    }
}

/// `/_emulator/<action>` (admin token only): the fault API over HTTP, for manual sessions.
fn control(
    shared: &Shared,
    action: &str,
    query: &HashMap<String, String>,
) -> http::Response<api::Body> {
    let q = |k: &str| query.get(k).map(String::as_str);
    match action {
        "pause" => shared.faults.pause(),
        "resume" => shared.faults.resume(),
        "compact" => lock(&shared.state).store.compact(),
        "clear-failures" => shared.faults.clear_failures(),
        "fail" => {
            let status = q("status").and_then(|s| s.parse().ok()).unwrap_or(503);
            let mut f = Failure::status(status);
            if let Some(n) = q("count").and_then(|s| s.parse().ok()) {
                f = f.times(n);
            }
            if let Some(s) = q("seconds").and_then(|s| s.parse().ok()) {
                f = f.for_duration(Duration::from_secs(s));
            }
            if let Some(r) = q("retryAfter").and_then(|s| s.parse().ok()) {
                f = f.retry_after(r);
            }
            if let Some(v) = q("verb") {
                f = f.matching(RequestFilter::new().verb(v));
            }
            shared.faults.add_failure(f);
        }
        "requests" => {
            let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
            for r in shared.counters.records() {
                let key = format!(
                    "{} {}{} {}",
                    r.verb,
                    r.resource,
                    r.subresource.map(|s| format!("/{s}")).unwrap_or_default(),
                    r.caller
                );
                *counts.entry(key).or_default() += 1;
            }
            return json_response(200, &json!(counts));
        }
        _ => {
            return error_response(&api::ApiError::new(
                404,
                "NotFound",
                format!(
                    "unknown emulator action {action:?}; try pause, resume, compact, fail, clear-failures, requests"
                ),
            ));
        }
    }
    json_response(200, &json!({"ok": action}))
}
