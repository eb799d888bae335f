//! The HTTP/1.1 server under the pipeline: hyper with a header read timeout that answers
//! 408 to a client that started a request and stalled, peer addresses for source-range
//! checks, and graceful shutdown (stop accepting, finish in-flight requests).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

/// Connection-level settings.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Longest wait for a complete request head, also the keep-alive idle limit. A client
    /// that sent part of a request by then gets 408; an idle connection is just closed.
    pub header_read_timeout: Duration,
    /// Largest request head (request line + headers) in bytes; hyper answers 431 above it.
    pub max_header_bytes: usize,
    /// Connections served at once. One more is answered 503 + `Retry-After` and closed
    /// without reading: each connection holds buffers (up to the head limit) and file
    /// descriptors, so without a cap anyone can take the pod's memory and fds.
    pub max_connections: usize,
    /// Counts connections shed over `max_connections`.
    pub shed: Counter,
}

/// Default `--max-connections`: with 64 KiB heads, at most ~130 MiB of buffers in the worst
/// case, within the chart's 256 MiB limit beside the body budget.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shed: Counter::default(),
        }
    }
}

/// The answer to a connection over the cap: written without reading the request.
const SHED_ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 54\r\n\r\n{\"status\":\"rejected\",\"reason\":\"too_many_connections\"}\n";

async fn shed(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(SHED_ANSWER)).await;
    let _ = stream.shutdown().await;
}

/// What the server serves: an axum [`Router`](axum::Router), or the receiver's own
/// service ([`super::http::Receiver`]).
pub trait App:
    tower::Service<
        http::Request<Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<A> App for A where
    A: tower::Service<
            http::Request<Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Serves `app` on `listener` with [`ServerOptions::default`] until `shutdown` resolves,
/// then stops accepting and waits for in-flight requests to finish.
pub async fn serve<A: App>(
    listener: TcpListener,
    app: A,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_with(listener, app, ServerOptions::default(), shutdown).await
}

/// [`serve`] with explicit options.
pub async fn serve_with<A: App>(
    listener: TcpListener,
    app: A,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        // `max_buf_size` alone is not a head limit: hyper checks it only while the head is
        // incomplete, and one read may fill the buffer's spare capacity (it grows by
        // doubling) past it, so heads of up to ~128 KiB were accepted with a 64 KiB
        // setting. `max_header_size` is checked against the parsed head's exact length
        // (431 above it); the buffer bound stays as the per-connection memory cap.
        .max_header_size(options.max_header_bytes)
        .max_buf_size(options.max_header_bytes.max(8192))
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(options.max_connections.max(1)));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the listener stays.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            options.shed.inc();
            tokio::spawn(shed(stream));
            continue;
        };
        let Ok((stream, spare)) = with_spare_handle(stream) else {
            continue;
        };
        let partial = Arc::new(AtomicBool::new(false));
        let io = TokioIo::new(TrackedIo {
            inner: stream,
            partial: partial.clone(),
        });
        let service = app
            .clone()
            .map_request(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
        let conn = graceful.watch(builder.serve_connection(io, TowerToHyperService::new(service)));
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await
                && e.is_timeout()
                && partial.load(Ordering::Relaxed)
            {
                answer_timeout(spare).await;
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A second descriptor of the same socket, kept so that after hyper gives up on a slow
/// request head (hyper closes without answering) the client still gets a 408.
fn with_spare_handle(stream: TcpStream) -> io::Result<(TcpStream, std::net::TcpStream)> {
    let std = stream.into_std()?;
    let spare = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, spare))
}

async fn answer_timeout(spare: std::net::TcpStream) {
    const ANSWER: &[u8] =
        b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 16\r\n\r\nrequest timeout\n";
    if let Ok(mut stream) = TcpStream::from_std(spare) {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = stream.write_all(ANSWER).await;
            let _ = stream.shutdown().await;
        })
        .await;
    }
}

/// Remembers whether bytes of a request arrived since the last answer was written, to
/// tell a stalled request (408) from an idle keep-alive connection (silent close).
struct TrackedIo {
    inner: TcpStream,
    partial: Arc<AtomicBool>,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.partial.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.partial.store(false, Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.partial.store(false, Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The peer address the server attached to a request (absent under `oneshot` unless a
/// test inserts it).
pub fn peer_addr(extensions: &http::Extensions) -> Option<SocketAddr> {
    extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}
