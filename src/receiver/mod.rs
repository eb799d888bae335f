//! The data plane: `hookwarden receiver`.
//!
//! [`http::app`] is the HTTP pipeline (DESIGN.md's HTTP table), [`routes::RouteTable`]
//! what it serves, [`dedup::Dedup`] the delivery-id memory, [`metrics`] the Prometheus
//! handles, [`server::serve`] the hyper server with header/body timeouts and graceful
//! shutdown, and [`sink::DeliverySink`] the seam to the durable journal behind it.

pub mod dedup;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod sink;

use std::process::ExitCode;
use std::sync::Arc;

/// Current time in Unix milliseconds. Injected so tests can pin timestamp windows,
/// secret expiries and dedup re-seeding.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock as a [`Clock`].
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    })
}

/// Flags of `hookwarden receiver`.
#[derive(Debug, clap::Args)]
pub struct ReceiverArgs {}

pub async fn run(_args: ReceiverArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("hookwarden receiver is not built yet")
}
