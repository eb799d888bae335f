//! Cheap per-request guards that run before the body is read: who is calling (source
//! ranges, trusted proxies) and how often (rate limit). The spec's values for them come
//! from [`crate::domain::spec::resolve`].

use std::net::IpAddr;
use std::num::NonZeroU32;

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
}
