//! The pure core: no Kubernetes, no network, no files, no clock of its own.

pub mod duration;
pub mod forward;
pub mod incident;
pub mod provider;
pub mod sample;
pub mod secret;
pub mod signature;
