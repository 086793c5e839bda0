//! Which requests a web browser may make: the `Host` and `Origin` checks.
//!
//! A page on another site can make the browser of someone running Runnel
//! send it requests. Two rules keep such pages out:
//!
//! - **Host.** Every request's `Host` must name this server: `localhost` or
//!   an IP address literal with the listening port (a browser sends an IP
//!   literal only to a page loaded from that very address, so DNS rebinding
//!   cannot produce one), or a name the operator allowed (`--allow-host`:
//!   `name` for any port, `name:port` for one, `*` for any host). A request
//!   without `Host` (HTTP/1.0 tools) is not a browser's and passes.
//! - **Origin.** A call that changes something (any method but `GET`, `HEAD`
//!   and `OPTIONS`) carrying an `Origin` must come from the server's own
//!   origin: `http` or `https` with the same host and port as `Host`.
//!   Browsers send `Origin` with every cross-site `POST`, form or `fetch`;
//!   clients that send none (curl, `runnel sql`) are not affected.
//!
//! The router applies both to every request (`browser_guard`).
//!
//! ```
//! use runnel::server::guard::HostRule;
//! let rule = HostRule::new("127.0.0.1:8080".parse().unwrap(), &["runnel.internal".into()]);
//! assert!(rule.allows("localhost:8080"));
//! assert!(rule.allows("runnel.internal"));
//! assert!(!rule.allows("evil.example:8080"));
//! assert!(runnel::server::guard::same_origin("http://localhost:8080", "localhost:8080"));
//! assert!(!runnel::server::guard::same_origin("http://evil.example", "localhost:8080"));
//! ```

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::error::Error;

/// The accepted `Host` values of a server listening on one address.
#[derive(Debug, Clone)]
pub struct HostRule {
    port: u16,
    any: bool,
    /// Operator-allowed (lower-case name, port or any port).
    names: Vec<(String, Option<u16>)>,
}

impl HostRule {
    /// The rule for a server bound to `local` with the operator's `allow`
    /// list (entries that do not parse as `name[:port]` match nothing).
    pub fn new(local: SocketAddr, allow: &[String]) -> Self {
        let any = allow.iter().any(|a| a.trim() == "*");
        let names = allow.iter().filter_map(|a| split_host(a.trim())).collect();
        HostRule {
            port: local.port(),
            any,
            names,
        }
    }

    /// Whether a request with this `Host` header value is served.
    pub fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        let Some((name, port)) = split_host(host) else {
            return false;
        };
        if port.unwrap_or(80) == self.port && (name == "localhost" || is_ip_literal(&name)) {
            return true;
        }
        self.names
            .iter()
            .any(|(n, p)| *n == name && p.is_none_or(|p| Some(p) == port))
    }
}

/// `name[:port]` split, the name lower-cased (IPv6 keeps its brackets);
/// `None` when it is not a valid host.
fn split_host(s: &str) -> Option<(String, Option<u16>)> {
    let (name, port) = if s.starts_with('[') {
        let end = s.find(']')?;
        let rest = &s[end + 1..];
        let port = match rest {
            "" => None,
            r => Some(r.strip_prefix(':')?),
        };
        (&s[..=end], port)
    } else {
        match s.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (s, None),
        }
    };
    let bad = |c: char| !(c.is_ascii_alphanumeric() || "-._[]:".contains(c));
    if name.is_empty() || name.contains(bad) {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some((name.to_ascii_lowercase(), port))
}

fn is_ip_literal(name: &str) -> bool {
    match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        None => !name.contains(':') && name.parse::<IpAddr>().is_ok(),
    }
}

/// Whether `origin` (an `Origin` header) is the origin of a page served by
/// the server a request with `host` (its `Host` header) reached.
pub fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    match (split_host(authority), split_host(host)) {
        // A `Host` without a port got it left out as the default of the
        // scheme the page was loaded with.
        (Some((on, op)), Some((hn, hp))) => {
            on == hn && op.unwrap_or(default) == hp.unwrap_or(default)
        }
        _ => false,
    }
}

/// Refuses requests a web page may have made the browser send: a `Host`
/// that does not name this server (DNS rebinding), and a call that changes
/// something with an `Origin` other than the server's own.
pub(super) async fn browser_guard(
    State(rule): State<Arc<HostRule>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = req.headers();
    let host = match headers.get(header::HOST) {
        Some(h) => Some(h.to_str().unwrap_or("")),
        // HTTP/2 carries the host in the request line.
        None => req.uri().authority().map(|a| a.as_str()),
    };
    if let Some(host) = host
        && !rule.allows(host)
    {
        return Error::Forbidden(format!(
            "Host {host:?} is not a name of this server; \
             start it with --allow-host NAME to accept another name"
        ))
        .into_response();
    }
    let safe = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    if !safe && let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !host.is_some_and(|h| same_origin(origin, h)) {
            return Error::Forbidden(format!(
                "cross-origin request refused: Origin {origin:?} is not this server's \
                 origin; changes are accepted from its own pages or from clients \
                 that send no Origin"
            ))
            .into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(local: &str, allow: &[&str]) -> HostRule {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        HostRule::new(local.parse().unwrap(), &allow)
    }

    #[test]
    fn loopback_names_and_ip_literals_on_the_port() {
        let r = rule("127.0.0.1:8080", &[]);
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST:8080",
            "[::1]:8080",
            "10.0.0.5:8080",
        ] {
            assert!(r.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost:9090",
            "localhost",
            "127.0.0.1",
            "127.1:8080",
            "[::1]",
            "localhost:8080:1",
            "::1:8080",
            "",
            "localhost:",
            "local host:8080",
        ] {
            assert!(!r.allows(bad), "{bad}");
        }
        let r = rule("0.0.0.0:80", &[]);
        assert!(r.allows("localhost"));
        assert!(r.allows("192.168.1.9"));
        assert!(!r.allows("evil.example"));
        let r = rule("[::]:8080", &[]);
        assert!(r.allows("[fe80::1]:8080"));
        assert!(!r.allows("evil.example:8080"));
    }

    #[test]
    fn configured_names() {
        let r = rule("0.0.0.0:8080", &["Runnel.Internal", "proxy.example:443"]);
        assert!(r.allows("runnel.internal"));
        assert!(r.allows("runnel.internal:9000"));
        assert!(r.allows("proxy.example:443"));
        assert!(!r.allows("proxy.example"));
        assert!(!r.allows("proxy.example:8080"));
        assert!(!r.allows("internal"));
        let r = rule("0.0.0.0:8080", &["*"]);
        assert!(r.allows("anything.example:1"));
    }

    #[test]
    fn origins() {
        assert!(same_origin("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(same_origin("http://LocalHost:8080", "localhost:8080"));
        assert!(same_origin("http://[::1]:8080", "[::1]:8080"));
        assert!(same_origin("http://localhost", "localhost:80"));
        assert!(same_origin("http://localhost:80", "localhost"));
        assert!(same_origin("https://runnel.example", "runnel.example"));
        assert!(same_origin("https://runnel.example", "runnel.example:443"));
        for (o, h) in [
            ("http://evil.example", "localhost:8080"),
            ("http://localhost:9090", "localhost:8080"),
            ("http://127.0.0.1:8080", "localhost:8080"),
            ("null", "localhost:8080"),
            ("file://", "localhost:8080"),
            ("ftp://localhost:8080", "localhost:8080"),
            ("https://runnel.example", "runnel.example:80"),
            ("http://localhost:8080/x", "localhost:8080"),
        ] {
            assert!(!same_origin(o, h), "{o} vs {h}");
        }
    }
}
