//! RelyAuth `securityRules`: client IP allow/deny lists and header rules,
//! checked per mode once its credential is found.

use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;

use crate::request::Request;

/// Where the client IP is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpLocation {
    /// `X-Forwarded-For`, walked right to left past trusted proxies.
    ForwardedFor {
        trusted_proxies: u32,
        trusted_prefixes: Vec<IpNet>,
    },
    /// The first of these headers (sorted) holding an IP; the last entry of a list.
    Headers(Vec<String>),
    /// Envoy's `source.address`, or the TCP peer.
    RemoteAddr,
}

#[derive(Debug, Clone)]
pub struct IpRule {
    pub include: Vec<IpNet>,
    pub exclude: Vec<IpNet>,
    pub public_only: bool,
    pub location: IpLocation,
}

#[derive(Debug, Clone)]
pub struct HeaderRule {
    /// Lower-case header name.
    pub name: String,
    pub include: Vec<Regex>,
    pub exclude: Vec<Regex>,
}

#[derive(Debug, Clone, Default)]
pub struct SecurityRules {
    pub allowed_ips: Option<IpRule>,
    pub headers: Vec<HeaderRule>,
}

impl SecurityRules {
    pub fn is_empty(&self) -> bool {
        self.allowed_ips.is_none() && self.headers.is_empty()
    }

    /// Whether the request passes every rule.
    pub fn allows(&self, req: &Request) -> bool {
        if let Some(ip) = &self.allowed_ips {
            let Some(client) = client_ip(&ip.location, req) else {
                return false;
            };
            if !ip_allowed(ip, client) {
                return false;
            }
        }
        self.headers.iter().all(|rule| {
            let mut values = req.headers.get_all(&rule.name).peekable();
            if values.peek().is_none() {
                return false;
            }
            let value = values.collect::<Vec<_>>().join(", ");
            if rule.exclude.iter().any(|r| r.is_match(&value)) {
                return false;
            }
            rule.include.is_empty() || rule.include.iter().any(|r| r.is_match(&value))
        })
    }
}

/// RelyAuth's order: an included address is allowed outright; then
/// `publicOnly`, then `exclude`; a non-empty `include` list blocks the rest.
pub fn ip_allowed(rule: &IpRule, ip: IpAddr) -> bool {
    let ip = canonical(ip);
    if rule.include.iter().any(|n| n.contains(&ip)) {
        return true;
    }
    if rule.public_only && !is_public(ip) {
        return false;
    }
    if rule.exclude.iter().any(|n| n.contains(&ip)) {
        return false;
    }
    rule.include.is_empty()
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// A global unicast address outside private, shared (100.64/10) and
/// documentation-free special ranges.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80) // link local
        }
    }
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    // `1.2.3.4:567` or `[::1]:567`
    s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

/// The client address for a rule, or `None` (then the rule blocks).
pub fn client_ip(location: &IpLocation, req: &Request) -> Option<IpAddr> {
    match location {
        IpLocation::RemoteAddr => req.source_ip,
        IpLocation::Headers(names) => names.iter().find_map(|n| {
            let v = req.headers.get(n)?;
            parse_ip(v.rsplit(',').next().unwrap_or(v))
        }),
        IpLocation::ForwardedFor {
            trusted_proxies,
            trusted_prefixes,
        } => {
            let xff: Vec<&str> = req
                .headers
                .get_all("x-forwarded-for")
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            if *trusted_proxies == 0 && trusted_prefixes.is_empty() {
                return parse_ip(xff.last()?);
            }
            let mut remaining = if *trusted_proxies == 0 {
                u32::MAX
            } else {
                *trusted_proxies
            };
            for entry in xff.iter().rev() {
                let ip = parse_ip(entry)?;
                remaining -= 1;
                let trusted = trusted_prefixes.iter().any(|p| p.contains(&canonical(ip)));
                if (!trusted_prefixes.is_empty() && !trusted) || remaining == 0 {
                    return Some(ip);
                }
            }
            None
        }
    }
}

/// Parses an IP or CIDR (`10.0.0.1` is `10.0.0.1/32`).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<IpAddr>()
        .map(|ip| IpNet::from(canonical(ip)))
        .map_err(|_| format!("`{s}` is not an IP address or CIDR range"))
}

/// RelyAuth's header patterns are unanchored regular-expression searches:
/// a plain word is a substring, `^x$` is equality, `^x` a prefix, `x$` a suffix.
pub fn compile_pattern(p: &str) -> Result<Regex, String> {
    Regex::new(p).map_err(|e| format!("invalid pattern `{p}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Headers;

    fn req(headers: &[(&str, &str)], source: Option<&str>) -> Request {
        Request {
            headers: headers.iter().map(|(k, v)| (*k, *v)).collect::<Headers>(),
            source_ip: source.map(|s| s.parse().unwrap()),
            ..Default::default()
        }
    }

    fn xff(n: u32, prefixes: &[&str]) -> IpLocation {
        IpLocation::ForwardedFor {
            trusted_proxies: n,
            trusted_prefixes: prefixes.iter().map(|p| parse_net(p).unwrap()).collect(),
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    // RelyAuth's own vectors (auth/authmode/allowed_ips_test.go).
    #[test]
    fn forwarded_for_walk() {
        let h = |v: &str| req(&[("x-forwarded-for", v)], None);
        assert_eq!(
            client_ip(&xff(0, &[]), &h("1.2.3.4, 9.9.9.9")),
            ip("9.9.9.9")
        );
        assert_eq!(client_ip(&xff(1, &[]), &h("1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(
            client_ip(&xff(1, &[]), &h("1.2.3.4, 10.0.0.1")),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_ip(&xff(2, &[]), &h("5.5.5.5, 10.0.0.1, 10.0.0.2")),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_ip(&xff(0, &["10.0.0.0/8"]), &h("5.5.5.5, 10.0.0.1")),
            ip("5.5.5.5")
        );
        assert_eq!(
            client_ip(&xff(0, &["10.0.0.0/8"]), &h("10.0.0.2, 10.0.0.1")),
            None
        );
        assert_eq!(client_ip(&xff(1, &[]), &h("  , 1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(client_ip(&xff(2, &[]), &h("1.2.3.4, not-an-ip")), None);
        assert_eq!(client_ip(&xff(0, &[]), &req(&[], Some("1.1.1.1"))), None);
    }

    #[test]
    fn header_and_remote_addr() {
        let loc = IpLocation::Headers(vec!["x-real-ip".into()]);
        assert_eq!(
            client_ip(&loc, &req(&[("x-real-ip", "1.2.3.4, 9.9.9.9")], None)),
            ip("9.9.9.9")
        );
        assert_eq!(client_ip(&loc, &req(&[("x-real-ip", "junk")], None)), None);
        assert_eq!(
            client_ip(&IpLocation::RemoteAddr, &req(&[], Some("10.0.0.5"))),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn include_exclude_public_only() {
        let rule = |inc: &[&str], exc: &[&str], public_only| IpRule {
            include: inc.iter().map(|s| parse_net(s).unwrap()).collect(),
            exclude: exc.iter().map(|s| parse_net(s).unwrap()).collect(),
            public_only,
            location: IpLocation::RemoteAddr,
        };
        let r = rule(&["192.168.1.0/24"], &[], false);
        assert!(ip_allowed(&r, "192.168.1.100".parse().unwrap()));
        assert!(!ip_allowed(&r, "10.0.0.1".parse().unwrap()));
        let r = rule(&[], &["10.0.0.0/8"], false);
        assert!(!ip_allowed(&r, "10.1.2.3".parse().unwrap()));
        assert!(ip_allowed(&r, "8.8.8.8".parse().unwrap()));
        let r = rule(&["10.0.0.7"], &[], true);
        assert!(ip_allowed(&r, "10.0.0.7".parse().unwrap()), "include wins");
        let r = rule(&[], &[], true);
        for private in [
            "10.0.0.1",
            "192.168.0.1",
            "127.0.0.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!ip_allowed(&r, private.parse().unwrap()), "{private}");
        }
        assert!(ip_allowed(&r, "203.0.114.1".parse().unwrap()));
        assert!(ip_allowed(&r, "2001:4860::1".parse().unwrap()));
        assert!(parse_net("invalid-ip").is_err());
        assert_eq!(
            parse_net("192.168.1.100").unwrap().to_string(),
            "192.168.1.100/32"
        );
    }

    #[test]
    fn header_rules_follow_relyauth_patterns() {
        let rules = SecurityRules {
            allowed_ips: None,
            headers: vec![HeaderRule {
                name: "origin".into(),
                include: vec![
                    compile_pattern("localhost").unwrap(),
                    compile_pattern("^https://app\\.example\\.com$").unwrap(),
                ],
                exclude: vec![compile_pattern("evil").unwrap()],
            }],
        };
        assert!(rules.allows(&req(&[("origin", "http://localhost:1234")], None)));
        assert!(rules.allows(&req(&[("origin", "https://app.example.com")], None)));
        assert!(!rules.allows(&req(&[("origin", "https://app.example.com.evil")], None)));
        assert!(!rules.allows(&req(&[("origin", "https://other")], None)));
        assert!(!rules.allows(&req(&[], None)), "the header must be present");
    }
}
