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

    /// Whether `url` is a clean http(s) endpoint (see [`normalize_endpoint`]) whose host is
    /// allowed.
    pub fn allows(&self, url: &str) -> bool {
        if normalize_endpoint(url).is_err() {
            return false;
        }
        let Ok(u) = reqwest::Url::parse(url) else {
            return false;
        };
        match u.host() {
            Some(url::Host::Ipv4(ip)) => self.nets.iter().any(|n| n.contains(&IpAddr::V4(ip))),
            Some(url::Host::Ipv6(ip)) => self.nets.iter().any(|n| n.contains(&IpAddr::V6(ip))),
            Some(url::Host::Domain(d)) => self.names.iter().any(|n| n.eq_ignore_ascii_case(d)),
            None => false,
        }
    }
}

/// Longest endpoint accepted.
pub const MAX_ENDPOINT_LEN: usize = 2048;

/// Why an agent endpoint is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("the endpoint must be an http(s) URL with a host, at most 2048 characters")]
    NotHttp,
    #[error("the endpoint must not carry credentials (a user name or password before '@')")]
    Credentials,
    #[error(
        "the endpoint must not contain control, invisible or whitespace characters, or backslashes"
    )]
    Characters,
}

/// Bidirectional overrides and zero-width characters: they make text read as other text.
pub fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{061C}' | '\u{FEFF}')
}

/// The one form an agent endpoint is stored, shown and called in, or why it is refused.
/// Every entry (seed, admin API, neurogenesis template) goes through here, so no reader of
/// the graph — ours or another — ever sees a secret, a header injection, or a URL whose host
/// parsers disagree on (`http://127.0.0.1\@evil.example/`).
pub fn normalize_endpoint(raw: &str) -> Result<String, EndpointError> {
    if raw.len() > MAX_ENDPOINT_LEN {
        return Err(EndpointError::NotHttp);
    }
    if raw
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\' || is_invisible(c))
    {
        return Err(EndpointError::Characters);
    }
    let url = reqwest::Url::parse(raw).map_err(|_| EndpointError::NotHttp)?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(EndpointError::NotHttp);
    }
    let authority = raw.split_once("://").map_or("", |(_, rest)| {
        rest.split(['/', '?', '#']).next().unwrap_or_default()
    });
    if !url.username().is_empty() || url.password().is_some() || authority.contains('@') {
        return Err(EndpointError::Credentials);
    }
    Ok(url.to_string())
}

/// `endpoint` without any user name or password, for display. Endpoints stored before
/// normalization existed may still carry them; they are never shown.
pub fn redact_endpoint(endpoint: &str) -> String {
    if !endpoint.contains('@') {
        return endpoint.to_string();
    }
    match reqwest::Url::parse(endpoint) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => endpoint.to_string(),
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
    fn endpoints_are_normalized_and_hostile_forms_refused() {
        assert_eq!(
            normalize_endpoint("HTTP://LocalHost:80/query").unwrap(),
            "http://localhost/query"
        );
        assert_eq!(
            normalize_endpoint("http://127.0.0.1:5001/query").unwrap(),
            "http://127.0.0.1:5001/query"
        );
        for (raw, why) in [
            (
                "http://:s3cr3t@127.0.0.1:1/query",
                EndpointError::Credentials,
            ),
            ("http://user@127.0.0.1/query", EndpointError::Credentials),
            ("http://u:p@127.0.0.1/query", EndpointError::Credentials),
            ("http://@127.0.0.1/query", EndpointError::Credentials),
            (
                "http://127.0.0.1/query\r\nX-Injected: 1",
                EndpointError::Characters,
            ),
            (
                "http://127.0.0.1\\@evil.example/",
                EndpointError::Characters,
            ),
            ("http://127.0.0.1/a b", EndpointError::Characters),
            ("http://127.0.0.1/\u{202e}", EndpointError::Characters),
            ("\thttp://127.0.0.1/", EndpointError::Characters),
            ("ftp://127.0.0.1/", EndpointError::NotHttp),
            ("not a url", EndpointError::Characters),
            ("notaurl", EndpointError::NotHttp),
        ] {
            assert_eq!(normalize_endpoint(raw), Err(why), "{raw:?}");
        }
        let long = format!("http://127.0.0.1/{}", "a".repeat(MAX_ENDPOINT_LEN));
        assert_eq!(normalize_endpoint(&long), Err(EndpointError::NotHttp));
        let g = HostGuard::parse(DEFAULT_ALLOWED).unwrap();
        assert!(!g.allows("http://:pw@127.0.0.1/q"));
        assert_eq!(
            redact_endpoint("http://u:pw@127.0.0.1:1/q"),
            "http://127.0.0.1:1/q"
        );
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
