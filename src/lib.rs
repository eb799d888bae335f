//! hookwarden: a Kubernetes operator for incoming webhooks.
//!
//! Layout: [`crd`] holds the resource types; [`domain`] is the pure core (provider
//! schemes, incident mapping and state, desired status) with no I/O and the clock passed
//! in; [`controller`], [`receiver`] and [`standalone`] are the adapters around it;
//! [`forwarder`] is the outbound HTTP sender (with its SSRF guard) for forwarding.

pub mod cli;
pub mod clock;
pub mod controller;
pub mod crd;
pub mod domain;
pub mod events;
pub mod forwarder;
pub mod journal;
pub mod plugin;
pub mod receiver;
pub mod route;
pub mod signal;
pub mod standalone;
pub mod telemetry;
pub mod tools;
