//! The data plane: `hookwarden receiver`.
//!
//! [`runtime`] is what happens after the pipeline accepts a delivery (durable journal
//! append, then the background fold into the [`ledger`] and coalesced [`status`]
//! write-back); [`service`] assembles a running receiver for the cluster ([`cluster`])
//! and for standalone mode.

pub mod cluster;
pub mod ledger;
pub mod runtime;
pub mod service;
pub mod sink;
pub mod status;

pub use cluster::{ReceiverArgs, run};
