//! The outbound HTTP side of forwarding: a pooled HTTP/1.1 client over rustls whose every
//! connection passes the SSRF guard, one bounded attempt at a time.
//!
//! What to send, when, and what an answer means is decided in
//! [`crate::domain::forward`]; this module only makes the attempt and reports it as an
//! [`AttemptResult`] (classified by the domain). The journal, scheduling loop, status
//! and metrics wire it in.
//!
//! - [`EgressPolicy`]: which addresses may be reached (cluster: no loopback, link-local
//!   or metadata, plus deny/allow CIDRs; standalone and `--forward-allow-loopback`:
//!   loopback allowed, the API server's port still refused);
//! - [`Sender`]: `send(request, timeout)`;
//! - [`TargetLimits`]: attempts in flight per target.

pub mod connect;
pub mod egress;
pub mod limit;
pub mod sender;

pub use connect::{ConnectError, GuardedConnector};
pub use egress::{EgressPolicy, Refusal, RefusalRule};
pub use limit::TargetLimits;
pub use sender::{
    AttemptResult, DEFAULT_CONNECT_TIMEOUT, FetchError, MAX_RESPONSE_BYTES, Request, Sender,
    SenderError, SenderOptions, TrustRoots,
};
