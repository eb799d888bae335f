//! The data plane: `hookwarden receiver`.
//!
//! [`http::app`] is the HTTP pipeline (DESIGN.md's HTTP table), [`routes::RouteTable`]
//! what it serves, [`dedup::Dedup`] the delivery-id memory, [`metrics`] the Prometheus
//! handles, [`server::serve`] the hyper server with header/body timeouts and graceful
//! shutdown, and [`sink::DeliverySink`] the seam to the durable journal behind it.
//!
//! [`runtime`] is what happens after the pipeline accepts a delivery (durable journal
//! append, then the background fold into the [`ledger`] and coalesced [`status`]
//! write-back); [`service`] assembles a running receiver for the cluster ([`cluster`])
//! and for standalone mode.

pub mod cluster;
pub mod dedup;
pub mod evaluator;
pub mod forward;
pub mod http;
pub mod keys;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod outbox;
pub mod routes;
pub mod runtime;
pub mod server;
pub mod service;
pub mod sink;
pub mod status;

pub use crate::clock::{Clock, system_clock};
pub use cluster::{ReceiverArgs, run};
