//! A fast local forward target for the benches: answers every request with 200 after
//! reading its body, counts them and remembers when the last one arrived. Runs on its own
//! tokio runtime thread(s), so it does not share the receiver's or the client's workers.
//!
//! Included by more than one bench (`#[path]`); not every bench uses every method.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

pub struct CountingTarget {
    pub addr: SocketAddr,
    counts: Arc<Counts>,
}

struct Counts {
    base: Instant,
    requests: AtomicU64,
    connections: AtomicU64,
    /// Nanoseconds after `base` of the latest arrival (0: none yet).
    last_ns: AtomicU64,
}

impl CountingTarget {
    /// Listens on `addr` (port 0: any free port) with `threads` runtime threads.
    pub fn start(addr: SocketAddr, threads: usize) -> std::io::Result<CountingTarget> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts {
            base: Instant::now(),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("bench-target")
            .enable_all()
            .build()?;
        let shared = counts.clone();
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                while let Ok((stream, _)) = listener.accept().await {
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.set_nodelay(true);
                    let counts = shared.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(
                            move |request: hyper::Request<hyper::body::Incoming>| {
                                let counts = counts.clone();
                                async move {
                                    let _ = request.into_body().collect().await;
                                    counts.requests.fetch_add(1, Ordering::Relaxed);
                                    let ns = u64::try_from(counts.base.elapsed().as_nanos())
                                        .unwrap_or(u64::MAX)
                                        .max(1);
                                    counts.last_ns.fetch_max(ns, Ordering::Relaxed);
                                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                        Full::new(Bytes::from_static(b"ok")),
                                    ))
                                }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        Ok(CountingTarget { addr, counts })
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.counts.requests.load(Ordering::Relaxed)
    }

    /// Connections accepted so far (a pooled client reuses them).
    pub fn connections(&self) -> u64 {
        self.counts.connections.load(Ordering::Relaxed)
    }

    /// When the latest request arrived.
    pub fn last_arrival(&self) -> Option<Instant> {
        match self.counts.last_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.counts.base + Duration::from_nanos(ns)),
        }
    }

    /// Waits until `expected` requests arrived, or no new one for `quiet`, or `bound`
    /// passed; returns the count then.
    pub fn wait_for(&self, expected: u64, quiet: Duration, bound: Duration) -> u64 {
        let started = Instant::now();
        let mut last = self.requests();
        let mut last_change = Instant::now();
        loop {
            let now = self.requests();
            if now >= expected || started.elapsed() >= bound {
                return now;
            }
            if now != last {
                last = now;
                last_change = Instant::now();
            } else if last_change.elapsed() >= quiet {
                return now;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
