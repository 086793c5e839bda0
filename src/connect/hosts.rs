//! The operator's list of hosts Runnel may connect to (`--allow-connect`):
//! the brokers a stream names, a socket stream's `host:port`, and so the
//! brokers `INTO TOPIC` publishes to. User SQL could otherwise make the
//! server open connections to any address it can reach (its own network,
//! cloud metadata services, loopback-only daemons).
//!
//! A rule `HOST` allows that host on any port, `HOST:PORT` on that port
//! only; `[v6]:PORT` and `[v6]` for IPv6. Names are compared as written
//! (case-insensitive), without resolving them. The server's own `--brokers`
//! are always allowed, on their ports (a broker without a port is on 9092,
//! Kafka's default).
//!
//! ```
//! use runnel::connect::hosts::HostRules;
//! let rules = HostRules::new(&["kafka-b".into(), "10.0.0.5:9093".into()], "kafka-a:9092");
//! assert!(rules.check_brokers("kafka-a:9092,kafka-b:19092").is_ok());
//! assert!(rules.check_brokers("10.0.0.5:9093").is_ok());
//! assert_eq!(rules.check_brokers("10.0.0.5:9092").unwrap_err().status(), 400);
//! assert!(rules.check_socket("kafka-b", 7000).is_ok());
//! ```

use crate::error::{Error, Result};

/// Kafka's port when a broker address names none.
const KAFKA_PORT: u16 = 9092;

/// One allowed host, on one port or (`None`) any.
#[derive(Debug, Clone, PartialEq)]
struct Rule {
    host: String,
    port: Option<u16>,
}

/// The hosts streams may connect to.
#[derive(Debug, Clone, Default)]
pub struct HostRules {
    rules: Vec<Rule>,
    /// As the operator wrote them, for messages.
    listed: Vec<String>,
}

/// Splits `host[:port]` (`[v6][:port]`, or a bare IPv6 address) into a
/// lower-cased host and its port, if any. `None` when the port is not a
/// number.
fn split(addr: &str) -> Option<(String, Option<u16>)> {
    let addr = addr.trim();
    // librdkafka accepts `PROTOCOL://host:port` in broker lists.
    let addr = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return None,
        }
    } else if addr.matches(':').count() > 1 {
        // A bare IPv6 address has no port.
        (addr, None)
    } else {
        match addr.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (addr, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0)?),
        None => None,
    };
    Some((host.to_ascii_lowercase(), port))
}

impl HostRules {
    /// The rules `allowed` lists plus the server's own `brokers`
    /// (comma-separated), each on its port.
    pub fn new(allowed: &[String], brokers: &str) -> Self {
        let mut rules = Vec::new();
        let mut listed = Vec::new();
        for a in allowed.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
            if let Some((host, port)) = split(a) {
                rules.push(Rule { host, port });
                listed.push(a.to_string());
            }
        }
        for b in brokers.split(',').filter(|b| !b.trim().is_empty()) {
            if let Some((host, port)) = split(b) {
                rules.push(Rule {
                    host,
                    port: Some(port.unwrap_or(KAFKA_PORT)),
                });
            }
        }
        HostRules { rules, listed }
    }

    /// Checks a rule written by the operator: `HOST` or `HOST:PORT`.
    pub fn validate(rule: &str) -> Result<()> {
        match split(rule) {
            Some((host, _)) if !host.is_empty() => Ok(()),
            _ => Err(Error::BadRequest(format!(
                "--allow-connect '{rule}': expected HOST or HOST:PORT"
            ))),
        }
    }

    fn allows(&self, host: &str, port: u16) -> bool {
        self.rules
            .iter()
            .any(|r| r.host == host && r.port.is_none_or(|p| p == port))
    }

    fn refuse(&self, what: &str, addr: &str) -> Error {
        let now = if self.listed.is_empty() {
            "none is listed besides the server's --brokers".to_string()
        } else {
            format!("listed: {}", self.listed.join(", "))
        };
        Error::BadRequest(format!(
            "{what} '{addr}' is not allowed: the server connects only to hosts its operator lists with --allow-connect HOST[:PORT] \
             (RUNNEL_ALLOW_CONNECT, allow_connect in runnel.toml) and to its own --brokers; {now}"
        ))
    }

    /// Refuses a broker list naming any host:port not allowed.
    pub fn check_brokers(&self, brokers: &str) -> Result<()> {
        let mut any = false;
        for b in brokers.split(',').map(str::trim).filter(|b| !b.is_empty()) {
            any = true;
            let Some((host, port)) = split(b) else {
                return Err(Error::BadRequest(format!("broker '{b}' is not HOST:PORT")));
            };
            if !self.allows(&host, port.unwrap_or(KAFKA_PORT)) {
                return Err(self.refuse("broker", b));
            }
        }
        match any {
            true => Ok(()),
            false => Err(Error::BadRequest("brokers is empty".into())),
        }
    }

    /// Refuses a socket stream's `host:port` unless allowed.
    pub fn check_socket(&self, host: &str, port: u16) -> Result<()> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match self.allows(&bare.to_ascii_lowercase(), port) {
            true => Ok(()),
            false => Err(self.refuse("socket host", &format!("{host}:{port}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_addresses() {
        assert_eq!(split("Kafka:9092"), Some(("kafka".into(), Some(9092))));
        assert_eq!(split("kafka"), Some(("kafka".into(), None)));
        assert_eq!(split("[::1]:9092"), Some(("::1".into(), Some(9092))));
        assert_eq!(split("[::1]"), Some(("::1".into(), None)));
        assert_eq!(split("::1"), Some(("::1".into(), None)));
        assert_eq!(
            split("SASL_SSL://k.example:9093"),
            Some(("k.example".into(), Some(9093)))
        );
        assert_eq!(split("kafka:x"), None);
        assert_eq!(split("kafka:0"), None);
    }

    #[test]
    fn host_without_port_allows_every_port() {
        let r = HostRules::new(&["kafka-b".into()], "");
        assert!(r.check_brokers("kafka-b:1").is_ok());
        assert!(r.check_brokers("KAFKA-B:65535,kafka-b").is_ok());
        assert!(r.check_socket("kafka-b", 7).is_ok());
        let e = r.check_brokers("kafka-b:1,kafka-c:1").unwrap_err();
        assert!(e.to_string().contains("'kafka-c:1'"), "{e}");
        assert!(e.to_string().contains("--allow-connect"), "{e}");
    }

    #[test]
    fn host_with_port_allows_that_port_only() {
        let r = HostRules::new(&["10.1.1.1:9093".into(), "[fd00::1]:5000".into()], "");
        assert!(r.check_brokers("10.1.1.1:9093").is_ok());
        assert!(r.check_brokers("10.1.1.1:9094").is_err());
        assert!(r.check_brokers("10.1.1.1").is_err());
        assert!(r.check_socket("fd00::1", 5000).is_ok());
        assert!(r.check_socket("[fd00::1]", 5000).is_ok());
        assert!(r.check_socket("fd00::1", 5001).is_err());
    }

    #[test]
    fn server_brokers_are_allowed_on_their_ports() {
        let r = HostRules::new(&[], "k1:9092,k2");
        assert!(r.check_brokers("k2:9092,k1:9092").is_ok());
        assert!(r.check_brokers("k2").is_ok());
        assert!(r.check_brokers("k1:9093").is_err());
        assert!(r.check_socket("k1", 22).is_err());
        let e = r.check_socket("127.0.0.1", 6379).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("none is listed"), "{e}");
    }

    #[test]
    fn validates_rules() {
        assert!(HostRules::validate("kafka:9092").is_ok());
        assert!(HostRules::validate("kafka").is_ok());
        assert!(HostRules::validate("kafka:port").is_err());
        assert!(HostRules::validate(":9092").is_err());
    }
}
