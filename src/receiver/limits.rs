//! Cheap per-request guards that run before the body is read: who is calling (source
//! ranges, trusted proxies) and how often (rate limit). The spec's values for them come
//! from [`crate::domain::spec::resolve`].

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use std::num::NonZeroU32;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::HeaderMap;
use ipnet::IpNet;

/// The address the delivery came from.
///
/// `X-Forwarded-For` is honoured only when the TCP peer is one of `trusted_proxies`:
/// otherwise any sender could claim an allowed address. The header is walked from the
/// right (the hop nearest to us) past every trusted proxy; the first untrusted address is
/// the client. An unparsable hop stops the walk at the last trusted address, which then
/// has to pass the source ranges itself (fail closed).
pub fn client_ip(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted_proxies: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?;
    if trusted_proxies.is_empty() || !contains(trusted_proxies, peer) {
        return Some(peer);
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(value) = value.to_str() else {
            return Some(client);
        };
        for hop in value.rsplit(',') {
            let Some(addr) = parse_hop(hop.trim()) else {
                return Some(client);
            };
            client = addr;
            if !contains(trusted_proxies, addr) {
                return Some(client);
            }
        }
    }
    Some(client)
}

/// One `X-Forwarded-For` entry: a bare address, `[v6]`, or either with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(addr) = hop.parse::<IpAddr>() {
        return Some(addr);
    }
    if let Ok(sock) = hop.parse::<std::net::SocketAddr>() {
        return Some(sock.ip());
    }
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse().ok())
}

/// Whether `addr` is inside any of `ranges` (IPv4-mapped IPv6 peers count as IPv4).
pub fn contains(ranges: &[IpNet], addr: IpAddr) -> bool {
    let addr = match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    ranges.iter().any(|net| net.contains(&addr))
}

/// Per-integration token bucket (GCRA). Shared by every connection to the route and
/// kept across route updates while the uid and the limits stay the same.
pub struct RateLimit {
    limiter: DefaultDirectRateLimiter,
    /// (requests per second, burst) the limiter was built from.
    pub params: (u32, u32),
}

impl RateLimit {
    pub fn new(requests_per_second: u32, burst: u32) -> RateLimit {
        let rps = NonZeroU32::new(requests_per_second).unwrap_or(NonZeroU32::MIN);
        let burst_nz = NonZeroU32::new(burst).unwrap_or(rps);
        RateLimit {
            limiter: RateLimiter::direct(Quota::per_second(rps).allow_burst(burst_nz)),
            params: (requests_per_second, burst),
        }
    }

    /// `Ok` when the request may proceed, else the whole seconds (≥ 1) to put in
    /// `Retry-After`.
    pub fn check(&self) -> Result<(), u64> {
        match self.limiter.check() {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err((wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1))
            }
        }
    }
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("params", &self.params)
            .finish()
    }
}

/// The receiver's budget of request-body bytes held at once (being read, verified,
/// parsed, journaled), shared by every integration, with a fair share each: without it,
/// a few hundred slow uploads of a maximal body take the pod past its memory limit.
/// Reserved before any body byte is read (a request's declared length, else its route's
/// `maxBodyBytes`); over the budget the answer is 503 + `Retry-After`, read nothing.
#[derive(Debug)]
pub struct BodyBudget {
    global: Arc<Semaphore>,
    /// Units (KiB) one integration may hold while another request of it is in flight.
    share_units: u32,
}

/// A reservation of body bytes; released when dropped (the request is answered).
#[derive(Debug)]
pub struct BodyPermit {
    _global: OwnedSemaphorePermit,
    route: Arc<AtomicU32>,
    units: u32,
}

impl Drop for BodyPermit {
    fn drop(&mut self) {
        self.route.fetch_sub(self.units, Ordering::AcqRel);
    }
}

const BUDGET_UNIT: u64 = 1024;

/// Default `--max-body-bytes-in-flight`: a quarter of the chart's 256 MiB memory limit.
pub const DEFAULT_BODY_BUDGET: u64 = 64 * 1024 * 1024;

impl BodyBudget {
    /// `total` bytes in all; one integration holds at most a quarter of them (beyond
    /// its first request, which is always let through while the total allows).
    pub fn new(total: u64) -> BodyBudget {
        let units = u32::try_from(total.div_ceil(BUDGET_UNIT))
            .unwrap_or(u32::MAX)
            .min(u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX))
            .max(1);
        BodyBudget {
            global: Arc::new(Semaphore::new(units as usize)),
            share_units: (units / 4).max(1),
        }
    }

    /// Reserves `bytes` for a request of the route whose in-flight counter is `route`;
    /// `None` when the receiver or the route is over its budget.
    pub fn reserve(&self, route: &Arc<AtomicU32>, bytes: u64) -> Option<BodyPermit> {
        let units = u32::try_from(bytes.div_ceil(BUDGET_UNIT).max(1)).unwrap_or(u32::MAX);
        let held = route.fetch_add(units, Ordering::AcqRel);
        if held > 0 && held.saturating_add(units) > self.share_units {
            route.fetch_sub(units, Ordering::AcqRel);
            return None;
        }
        match self.global.clone().try_acquire_many_owned(units) {
            Ok(global) => Some(BodyPermit {
                _global: global,
                route: route.clone(),
                units,
            }),
            Err(_) => {
                route.fetch_sub(units, Ordering::AcqRel);
                None
            }
        }
    }
}

impl Default for BodyBudget {
    fn default() -> Self {
        BodyBudget::new(DEFAULT_BODY_BUDGET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().expect("header"));
        }
        h
    }

    fn nets(cidrs: &[&str]) -> Vec<IpNet> {
        cidrs.iter().map(|c| c.parse().expect("cidr")).collect()
    }

    #[test]
    fn forwarded_for_needs_a_trusted_peer() {
        let proxies = nets(&["10.0.0.0/8"]);
        let spoof = headers(&["203.0.113.7"]);
        let outsider: IpAddr = "198.51.100.1".parse().expect("ip");
        assert_eq!(client_ip(Some(outsider), &spoof, &proxies), Some(outsider));
        assert_eq!(client_ip(Some(outsider), &spoof, &[]), Some(outsider));
        let proxy: IpAddr = "10.1.2.3".parse().expect("ip");
        assert_eq!(
            client_ip(Some(proxy), &spoof, &proxies),
            Some("203.0.113.7".parse().expect("ip"))
        );
    }

    #[test]
    fn forwarded_for_skips_trusted_hops_from_the_right() {
        let proxies = nets(&["10.0.0.0/8"]);
        let proxy: IpAddr = "10.1.2.3".parse().expect("ip");
        let chain = headers(&["1.1.1.1, 203.0.113.7", "10.9.9.9"]);
        assert_eq!(
            client_ip(Some(proxy), &chain, &proxies),
            Some("203.0.113.7".parse().expect("ip"))
        );
        let garbage = headers(&["nonsense"]);
        assert_eq!(client_ip(Some(proxy), &garbage, &proxies), Some(proxy));
        assert_eq!(client_ip(None, &chain, &proxies), None);
    }

    #[test]
    fn mapped_v6_peers_match_v4_ranges() {
        let ranges = nets(&["127.0.0.0/8", "2001:db8::1/128"]);
        assert!(contains(&ranges, "::ffff:127.0.0.1".parse().expect("ip")));
        assert!(contains(&ranges, "2001:db8::1".parse().expect("ip")));
        assert!(!contains(&ranges, "192.0.2.1".parse().expect("ip")));
    }

    #[test]
    fn rate_limit_answers_retry_after_in_whole_seconds() {
        let limit = RateLimit::new(1, 2);
        assert!(limit.check().is_ok());
        assert!(limit.check().is_ok());
        let retry = limit
            .check()
            .expect_err("third request in the same second is over the burst");
        assert!((1..=2).contains(&retry), "{retry}");
    }

    #[test]
    fn the_body_budget_is_shared_fairly_and_released_when_answered() {
        let budget = BodyBudget::new(8 * 1024 * 1024);
        let (a, b) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        // One integration: its first request always, then up to a quarter (2 MiB).
        let first = budget.reserve(&a, 1024 * 1024).expect("first");
        let second = budget.reserve(&a, 1024 * 1024).expect("within the share");
        assert!(budget.reserve(&a, 1024 * 1024).is_none(), "over the share");
        // Another integration still gets its turn.
        let other = budget.reserve(&b, 1024 * 1024).expect("fair share of b");
        drop((first, second));
        assert_eq!(a.load(Ordering::Acquire), 0, "released on drop");
        assert!(budget.reserve(&a, 1024 * 1024).is_some());
        drop(other);
        // The global budget: many integrations together cannot exceed it.
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(budget.reserve(&Arc::new(AtomicU32::new(0)), 1024 * 1024));
        }
        assert!(held.iter().filter(|p| p.is_some()).count() <= 8);
        assert!(
            budget
                .reserve(&Arc::new(AtomicU32::new(0)), 1024 * 1024)
                .is_none()
        );
    }
}
