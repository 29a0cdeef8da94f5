//! SSRF guard: the hosts agent endpoints may point at (`AGENT_ALLOWED_HOSTS`).
//!
//! Endpoints come from seed files, the admin API and neurogenesis; each is checked when it
//! enters the graph and again before every call, and redirects are never followed. An
//! entry is a host name (exact, case-insensitive) or a CIDR; an IP literal must fall in
//! one of the CIDRs.

use std::{fmt, net::IpAddr};

use ipnet::IpNet;

/// Loopback, plus the service names of the compose stack.
pub const DEFAULT_ALLOWED: &str =
    "127.0.0.0/8,::1/128,localhost,demo-definition,demo-function,factbase";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostGuard {
    names: Vec<String>,
    nets: Vec<IpNet>,
}

impl HostGuard {
    /// Parses a comma-separated list; the error is the first entry that is neither.
    pub fn parse(list: &str) -> Result<HostGuard, String> {
        let mut g = HostGuard::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if let Ok(net) = entry.parse::<IpNet>() {
                g.nets.push(net);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                g.nets.push(IpNet::from(ip));
            } else if entry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                g.names.push(entry.to_ascii_lowercase());
            } else {
                return Err(entry.to_string());
            }
        }
        Ok(g)
    }

    /// Whether `url` is an http(s) URL whose host is allowed.
    pub fn allows(&self, url: &str) -> bool {
        let Ok(u) = reqwest::Url::parse(url) else {
            return false;
        };
        if !matches!(u.scheme(), "http" | "https") || !u.username().is_empty() {
            return false;
        }
        match u.host() {
            Some(url::Host::Ipv4(ip)) => self.nets.iter().any(|n| n.contains(&IpAddr::V4(ip))),
            Some(url::Host::Ipv6(ip)) => self.nets.iter().any(|n| n.contains(&IpAddr::V6(ip))),
            Some(url::Host::Domain(d)) => self.names.iter().any(|n| n.eq_ignore_ascii_case(d)),
            None => false,
        }
    }
}

impl fmt::Display for HostGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<String> = self
            .names
            .iter()
            .cloned()
            .chain(self.nets.iter().map(ToString::to_string))
            .collect();
        f.write_str(&all.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_listed_names_only() {
        let g = HostGuard::parse(DEFAULT_ALLOWED).unwrap();
        assert!(g.allows("http://127.0.0.1:5001/query"));
        assert!(g.allows("http://127.9.9.9/query"));
        assert!(g.allows("http://[::1]:80/q"));
        assert!(g.allows("http://Demo-Definition:5001/query"));
        assert!(!g.allows("http://169.254.169.254/latest/meta-data"));
        assert!(!g.allows("http://10.0.0.5/q"));
        assert!(!g.allows("http://evil.example/q"));
        assert!(!g.allows("http://127.0.0.1.nip.io/q"));
        assert!(!g.allows("file:///etc/passwd"));
        assert!(!g.allows("http://user:pw@127.0.0.1/q"));
        assert!(!g.allows("not a url"));
    }

    #[test]
    fn bad_entries_are_named() {
        assert_eq!(
            HostGuard::parse("10.0.0.0/8,bad host").unwrap_err(),
            "bad host"
        );
        let g = HostGuard::parse("10.0.0.0/8, agents.internal").unwrap();
        assert!(g.allows("https://agents.internal/q") && g.allows("http://10.1.2.3/q"));
    }
}
