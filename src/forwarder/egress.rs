//! Which addresses a forward may connect to (the SSRF guard's policy).
//!
//! A tenant writes the target URL, but the receiver makes the connection: without a
//! policy, `url: http://169.254.169.254/latest/meta-data/` reads the node's cloud
//! credentials, and `http://127.0.0.1:9090/` reaches the receiver's own admin port. The
//! policy is checked on the resolved address of every connection (see
//! [`super::connect`]), so a DNS name pointing at a refused address is refused too.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// Where forwards may go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Refused ranges on top of the built-in ones: `--forward-deny-cidrs` and the API
    /// server's addresses (the caller adds those).
    pub deny: Vec<IpNet>,
    /// When set, only these ranges are allowed (`--forward-allow-cidrs`); it narrows,
    /// never widens: the built-in refusals and `deny` still apply.
    pub allow: Option<Vec<IpNet>>,
    /// Standalone mode (a laptop forwards to localhost), and a cluster receiver run with
    /// `--forward-allow-loopback` (tests, single-node dev clusters).
    pub allow_loopback: bool,
    /// The API server's own socket addresses, refused whatever else allows them. Its
    /// address is normally refused as a whole (in `deny`); when it is a loopback address
    /// and loopback is allowed, refusing the whole address would refuse every local
    /// target, so only its port is.
    pub api_servers: Vec<SocketAddr>,
}

/// Why an address is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefusalRule {
    Loopback,
    /// A well-known cloud metadata endpoint (AWS, GCP, Azure, Oracle: 169.254.169.254;
    /// AWS IPv6: fd00:ec2::254; Alibaba: 100.100.100.200).
    CloudMetadata,
    LinkLocal,
    /// `0.0.0.0`, `::` and `0.0.0.0/8`: connecting there reaches this host.
    Unspecified,
    Multicast,
    Broadcast,
    /// In a `deny` range.
    Denied(IpNet),
    /// Outside every `allow` range.
    NotAllowed,
    /// The API server's own port on an address that is otherwise allowed.
    ApiServer {
        port: u16,
    },
}

impl RefusalRule {
    /// Short stable name (logs, tests).
    pub fn as_str(&self) -> &'static str {
        match self {
            RefusalRule::Loopback => "loopback",
            RefusalRule::CloudMetadata => "cloud_metadata",
            RefusalRule::LinkLocal => "link_local",
            RefusalRule::Unspecified => "unspecified",
            RefusalRule::Multicast => "multicast",
            RefusalRule::Broadcast => "broadcast",
            RefusalRule::Denied(_) => "denied",
            RefusalRule::NotAllowed => "not_allowed",
            RefusalRule::ApiServer { .. } => "api_server",
        }
    }
}

/// A refused address: its `Display` is the `lastFailure` text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Refusal {
    pub addr: IpAddr,
    pub rule: RefusalRule,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = self.addr;
        let what = match &self.rule {
            RefusalRule::Loopback => "a loopback address".to_string(),
            RefusalRule::CloudMetadata => "link-local (cloud metadata)".to_string(),
            RefusalRule::LinkLocal => "link-local".to_string(),
            RefusalRule::Unspecified => "unspecified (it reaches this host)".to_string(),
            RefusalRule::Multicast => "multicast".to_string(),
            RefusalRule::Broadcast => "broadcast".to_string(),
            RefusalRule::Denied(net) => format!(
                "in the denied range {net} (--forward-deny-cidrs or the API server's addresses)"
            ),
            RefusalRule::NotAllowed => "outside --forward-allow-cidrs".to_string(),
            RefusalRule::ApiServer { port } => format!("the Kubernetes API server (port {port})"),
        };
        write!(
            f,
            "refused: {addr} is {what}; forwarding to it is not allowed"
        )
    }
}

impl EgressPolicy {
    /// Cluster mode: loopback refused.
    pub fn cluster(deny: Vec<IpNet>, allow: Option<Vec<IpNet>>) -> EgressPolicy {
        EgressPolicy {
            deny,
            allow,
            allow_loopback: false,
            api_servers: Vec::new(),
        }
    }

    /// Standalone mode: loopback allowed, everything else as in cluster mode.
    pub fn standalone(deny: Vec<IpNet>, allow: Option<Vec<IpNet>>) -> EgressPolicy {
        EgressPolicy {
            deny,
            allow,
            allow_loopback: true,
            api_servers: Vec::new(),
        }
    }

    /// Whether a connection to `addr` is allowed. IPv4-mapped (`::ffff:a.b.c.d`) and
    /// NAT64 (`64:ff9b::a.b.c.d`) forms are judged by the IPv4 address they reach, so
    /// `::ffff:169.254.169.254` is the metadata endpoint too.
    pub fn check(&self, addr: IpAddr) -> Result<(), Refusal> {
        let refuse = |rule| Err(Refusal { addr, rule });
        let reached = reached_address(addr);
        if let Some(rule) = builtin_rule(reached)
            && !(rule == RefusalRule::Loopback && self.allow_loopback)
        {
            return refuse(rule);
        }
        if let Some(net) = self.deny.iter().find(|n| n.contains(&reached)) {
            return refuse(RefusalRule::Denied(*net));
        }
        if let Some(allow) = &self.allow
            && !allow.iter().any(|n| n.contains(&reached))
        {
            return refuse(RefusalRule::NotAllowed);
        }
        Ok(())
    }

    /// Whether a connection to `addr` (address and port) is allowed: [`Self::check`] on
    /// its address, then the API server's own ports.
    pub fn check_socket(&self, addr: SocketAddr) -> Result<(), Refusal> {
        self.check(addr.ip())?;
        let reached = reached_address(addr.ip());
        if self
            .api_servers
            .iter()
            .any(|s| s.port() == addr.port() && reached_address(s.ip()) == reached)
        {
            return Err(Refusal {
                addr: addr.ip(),
                rule: RefusalRule::ApiServer { port: addr.port() },
            });
        }
        Ok(())
    }
}

/// The address a connection to `addr` actually reaches, for the address forms that
/// embed an IPv4 address.
fn reached_address(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            // NAT64 well-known prefix (RFC 6052): a NAT64 gateway turns it into IPv4.
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return IpAddr::V4(Ipv4Addr::new(a, b, c, d));
            }
            addr
        }
    }
}

const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

fn builtin_rule(addr: IpAddr) -> Option<RefusalRule> {
    match addr {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some(RefusalRule::Loopback)
            } else if v4 == Ipv4Addr::new(169, 254, 169, 254)
                || v4 == Ipv4Addr::new(100, 100, 100, 200)
            {
                Some(RefusalRule::CloudMetadata)
            } else if v4.is_link_local() {
                Some(RefusalRule::LinkLocal)
            } else if v4.octets()[0] == 0 {
                Some(RefusalRule::Unspecified)
            } else if v4.is_multicast() {
                Some(RefusalRule::Multicast)
            } else if v4.is_broadcast() {
                Some(RefusalRule::Broadcast)
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                Some(RefusalRule::Loopback)
            } else if v6 == AWS_METADATA_V6 {
                Some(RefusalRule::CloudMetadata)
            } else if v6.is_unicast_link_local() {
                Some(RefusalRule::LinkLocal)
            } else if v6.is_unspecified() {
                Some(RefusalRule::Unspecified)
            } else if v6.is_multicast() {
                Some(RefusalRule::Multicast)
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    fn rule(p: &EgressPolicy, s: &str) -> Option<&'static str> {
        p.check(ip(s)).err().map(|r| r.rule.as_str())
    }

    #[test]
    fn cluster_mode_refuses_what_a_tenant_should_not_reach() {
        let p = EgressPolicy::cluster(vec![], None);
        let table = [
            ("127.0.0.1", Some("loopback")),
            ("127.255.0.9", Some("loopback")),
            ("::1", Some("loopback")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("169.254.169.254", Some("cloud_metadata")),
            ("::ffff:169.254.169.254", Some("cloud_metadata")),
            ("64:ff9b::a9fe:a9fe", Some("cloud_metadata")),
            ("fd00:ec2::254", Some("cloud_metadata")),
            ("100.100.100.200", Some("cloud_metadata")),
            ("169.254.1.1", Some("link_local")),
            ("fe80::1", Some("link_local")),
            ("febf::1", Some("link_local")),
            ("0.0.0.0", Some("unspecified")),
            ("0.1.2.3", Some("unspecified")),
            ("::", Some("unspecified")),
            ("224.0.0.1", Some("multicast")),
            ("ff02::1", Some("multicast")),
            ("255.255.255.255", Some("broadcast")),
            // In-cluster Services and ordinary public addresses are fine.
            ("10.96.12.7", None),
            ("192.168.1.10", None),
            ("172.16.0.1", None),
            ("93.184.216.34", None),
            ("2606:2800:220:1:248:1893:25c8:1946", None),
            ("fd00::1", None),
        ];
        for (addr, want) in table {
            assert_eq!(rule(&p, addr), want, "{addr}");
        }
    }

    #[test]
    fn standalone_allows_loopback_only() {
        let p = EgressPolicy::standalone(vec![], None);
        assert_eq!(rule(&p, "127.0.0.1"), None);
        assert_eq!(rule(&p, "::1"), None);
        assert_eq!(rule(&p, "169.254.169.254"), Some("cloud_metadata"));
        assert_eq!(rule(&p, "0.0.0.0"), Some("unspecified"));
    }

    #[test]
    fn deny_adds_and_allow_narrows() {
        let p = EgressPolicy::cluster(
            vec![net("10.96.0.1/32"), net("192.168.0.0/16")],
            Some(vec![net("10.0.0.0/8"), net("203.0.113.0/24")]),
        );
        assert_eq!(rule(&p, "10.96.0.1"), Some("denied"));
        assert_eq!(rule(&p, "::ffff:10.96.0.1"), Some("denied"));
        assert_eq!(rule(&p, "10.1.2.3"), None);
        assert_eq!(rule(&p, "203.0.113.9"), None);
        assert_eq!(rule(&p, "93.184.216.34"), Some("not_allowed"));
        assert_eq!(
            rule(&p, "192.168.1.1"),
            Some("denied"),
            "deny wins over allow"
        );
        // allow never re-opens a built-in refusal.
        let p = EgressPolicy::cluster(vec![], Some(vec![net("0.0.0.0/0")]));
        assert_eq!(rule(&p, "169.254.169.254"), Some("cloud_metadata"));
        assert_eq!(rule(&p, "127.0.0.1"), Some("loopback"));
    }

    #[test]
    fn an_api_server_on_an_allowed_loopback_address_is_refused_on_its_port() {
        let p = EgressPolicy {
            allow_loopback: true,
            api_servers: vec!["127.0.0.1:6443".parse().expect("socket")],
            ..EgressPolicy::cluster(vec![], None)
        };
        let socket = |s: &str| {
            p.check_socket(s.parse().expect("socket"))
                .err()
                .map(|r| r.to_string())
        };
        assert_eq!(socket("127.0.0.1:8080"), None);
        assert_eq!(
            socket("127.0.0.1:6443").as_deref(),
            Some(
                "refused: 127.0.0.1 is the Kubernetes API server (port 6443); forwarding to it is not allowed"
            )
        );
        assert!(socket("[::ffff:127.0.0.1]:6443").is_some());
        // Loopback allowed never opens metadata or link-local.
        assert!(socket("169.254.169.254:80").is_some_and(|m| m.contains("cloud metadata")));
        assert!(socket("169.254.1.1:80").is_some_and(|m| m.contains("link-local")));
    }

    #[test]
    fn refusals_read_as_last_failure_text() {
        let p = EgressPolicy::cluster(vec![net("10.96.0.1/32")], None);
        let msg = |a: &str| p.check(ip(a)).expect_err("refused").to_string();
        assert_eq!(
            msg("169.254.169.254"),
            "refused: 169.254.169.254 is link-local (cloud metadata); forwarding to it is not allowed"
        );
        assert_eq!(
            msg("127.0.0.1"),
            "refused: 127.0.0.1 is a loopback address; forwarding to it is not allowed"
        );
        assert!(msg("10.96.0.1").contains("in the denied range 10.96.0.1/32"));
    }
}
