//! Trusted proxies: whose `X-Forwarded-For` names the client, and what it says.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;

/// Networks whose `X-Forwarded-For` is believed. Anyone else's is ignored, so a client
/// cannot choose the address the request log records.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

#[derive(Clone, Copy, PartialEq, Eq)]
struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl TrustedProxies {
    pub fn loopback() -> Self {
        Self(vec![
            Cidr {
                net: IpAddr::from([127, 0, 0, 0]),
                prefix: 8,
            },
            Cidr {
                net: IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                prefix: 128,
            },
        ])
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The address to log. Only the last `X-Forwarded-For` entry is used: it is the one the
    /// trusted proxy itself appended; anything left of it came from the client and may be forged.
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .next_back()
            .and_then(|last| last.trim().parse::<IpAddr>().ok())
            .map_or(peer, |ip| ip.to_canonical())
    }
}

impl Cidr {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(net.to_bits()) << 96,
                u128::from(ip.to_bits()) << 96,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(net.to_bits(), ip.to_bits(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, prefix: u8) -> bool {
    prefix == 0 || (a ^ b) >> (128 - u32::from(prefix)) == 0
}

impl FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list of addresses or CIDR networks; `none` trusts nobody.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "none" {
            return Ok(Self::default());
        }
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|part| {
                let (addr, prefix) = part.split_once('/').unwrap_or((part, ""));
                let net: IpAddr = addr
                    .parse()
                    .map_err(|_| format!("{part:?} is not an IP address or CIDR network"))?;
                let max = if net.is_ipv4() { 32 } else { 128 };
                let prefix = if prefix.is_empty() {
                    max
                } else {
                    prefix
                        .parse::<u8>()
                        .ok()
                        .filter(|p| *p <= max)
                        .ok_or_else(|| format!("{part:?} has a prefix length outside 0..={max}"))?
                };
                Ok(Cidr { net, prefix })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl fmt::Debug for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|c| format!("{}/{}", c.net, c.prefix)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn xff(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert("x-forwarded-for", v);
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let trusted = TrustedProxies::loopback();
        let got = trusted.client_addr(ip("127.0.0.1"), &xff("6.6.6.6, 203.0.113.9"));
        assert_eq!(got, ip("203.0.113.9"));
    }

    #[test]
    fn an_untrusted_peer_cannot_forge_its_address() {
        let trusted = TrustedProxies::loopback();
        let got = trusted.client_addr(ip("198.51.100.7"), &xff("10.0.0.1"));
        assert_eq!(got, ip("198.51.100.7"));
    }

    #[test]
    fn garbage_in_the_header_falls_back_to_the_peer() {
        let trusted = TrustedProxies::loopback();
        let got = trusted.client_addr(ip("::ffff:127.0.0.1"), &xff("<script>"));
        assert_eq!(got, ip("127.0.0.1"));
    }

    #[test]
    fn parses_networks_and_rejects_nonsense() {
        let parsed: Result<TrustedProxies, _> = "172.16.0.0/12, ::1".parse();
        let Ok(parsed) = parsed else {
            panic!("valid list rejected: {parsed:?}");
        };
        assert!(parsed.trusts(ip("172.20.1.2")));
        assert!(!parsed.trusts(ip("172.32.0.1")));
        assert!(parsed.trusts(ip("::1")));
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("example.com".parse::<TrustedProxies>().is_err());
        assert!(
            "none"
                .parse::<TrustedProxies>()
                .is_ok_and(|t| !t.trusts(ip("127.0.0.1")))
        );
    }
}
