//! All integration tests in one binary (one link step instead of one per file).

mod chart;
mod cluster_receiver;
mod conformance;
mod controller;
mod e2e;
mod emulator;
mod forward_e2e;
mod forward_sdk;
mod forward_sender;
mod hardening;
mod journal;
mod monitoring;
mod oidc_sns;
mod receiver_http;
mod route_watch;
mod senders;
mod signatures;
mod standalone;
mod status_writer;
