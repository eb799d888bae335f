//! The pure core: no Kubernetes, no network, no files, no clock of its own.

pub mod duration;
pub mod forward;
pub mod incident;
pub mod json;
pub mod plan;
pub mod sample;
pub mod secret;
pub mod signature;
pub mod spec;
