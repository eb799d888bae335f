//! The TCP connector under the pooled client: resolves the host itself, checks every
//! resolved address against the [`EgressPolicy`], and connects only to addresses that
//! passed — the very `SocketAddr`s it checked, so there is no second resolution a
//! rebinding DNS server could answer differently. TLS (hyper-rustls) wraps this
//! connector, so the check happens before any byte goes out, HTTPS included.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::egress::{EgressPolicy, Refusal};

/// Why no connection was made. Never contains the URL (its path or user info can be
/// the credential, as with Slack webhook URLs).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the target URL has no host")]
    NoHost,
    #[error("{0}")]
    Refused(Refusal),
    #[error("DNS resolution failed: {0}")]
    Resolve(io::Error),
    #[error("the host name resolved to no address")]
    NoAddress,
    #[error("connect failed: {0}")]
    Connect(io::Error),
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
}

/// A `tower::Service<Uri>` for `hyper_util::client::legacy::Client`.
#[derive(Clone, Debug)]
pub struct GuardedConnector {
    policy: Arc<EgressPolicy>,
    connect_timeout: Duration,
}

impl GuardedConnector {
    pub fn new(policy: Arc<EgressPolicy>, connect_timeout: Duration) -> GuardedConnector {
        GuardedConnector {
            policy,
            connect_timeout,
        }
    }
}

impl tower::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let policy = self.policy.clone();
        let limit = self.connect_timeout;
        Box::pin(async move {
            // One budget for resolution and connection: a resolver that hangs is as bad
            // as a SYN that is never answered.
            match tokio::time::timeout(limit, connect(&policy, &uri)).await {
                Ok(result) => result.map(TokioIo::new),
                Err(_) => Err(ConnectError::Timeout(limit)),
            }
        })
    }
}

async fn connect(policy: &EgressPolicy, uri: &Uri) -> Result<TcpStream, ConnectError> {
    let host = uri.host().ok_or(ConnectError::NoHost)?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    // `Uri::host` keeps the brackets of an IPv6 literal.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(ConnectError::Resolve)?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(ConnectError::NoAddress);
    }
    // Every address, not only the first: a name that resolves to a public address and
    // to 127.0.0.1 is refused as a whole, so which one the connect loop below reaches
    // first never decides whether the guard applies.
    for addr in &addrs {
        policy.check_socket(*addr).map_err(ConnectError::Refused)?;
    }
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                // Small requests: do not let Nagle hold the body behind the headers.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(ConnectError::Connect(last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "no address to connect to")
    })))
}
