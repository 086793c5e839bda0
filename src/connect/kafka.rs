//! librdkafka client properties: server-wide ones (`[kafka]` in
//! `runnel.toml`, `RUNNEL_KAFKA_<PROP>` variables) and a stream's own
//! (`WITH ("kafka.<prop>" = '...')`), applied to every client Runnel makes
//! for the stream: its consumers, the producer of `INTO TOPIC`, and the
//! metadata and log-end lookups. That is how SASL (PLAIN, SCRAM) and TLS
//! are configured.
//!
//! Runnel manages some properties itself (offsets, groups, statistics):
//! setting them would break exactly-once, so they are refused everywhere
//! ([`MANAGED`]). A stream may not set properties naming a file, a program,
//! a library or a URL (`ssl.ca.location`, `sasl.kerberos.kinit.cmd`, ...):
//! those are for the operator, server-wide, as the hosts a stream may reach
//! are (see [`super::hosts`]).
//!
//! ```
//! use runnel::connect::kafka::{KafkaConn, KafkaProps};
//! let server = KafkaProps::from_env([("RUNNEL_KAFKA_SECURITY_PROTOCOL".to_string(), "SASL_SSL".to_string())]);
//! assert_eq!(server.get("security.protocol"), Some("SASL_SSL"));
//! let conn = KafkaConn { brokers: "kafka:9093".into(), props: server, ..Default::default() };
//! assert!(format!("{conn:?}").contains("SASL_SSL"));
//! ```

use std::collections::BTreeMap;

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use super::secret::{self, is_secret};
use crate::error::{Error, Result};

/// The option prefix of a stream's own properties.
pub const STREAM_PREFIX: &str = "kafka.";

/// Properties Runnel sets itself: offsets live in Runnel's store and the
/// group, statistics and topic handling follow from that.
pub const MANAGED: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "group.instance.id",
    "group.protocol",
    "client.id",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "auto.offset.reset",
    "isolation.level",
    "statistics.interval.ms",
    "allow.auto.create.topics",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "transactional.id",
];

/// Ends of property names that name a file, a program, a library or a URL.
const PATHLIKE: &[&str] = &[
    ".location",
    ".file",
    ".keytab",
    ".cmd",
    ".url",
    ".paths",
    ".providers",
    ".directory",
];

/// Whether a stream may not set `prop` because it names something on the
/// server's machine or network.
fn names_a_place(prop: &str) -> bool {
    PATHLIKE.iter().any(|end| prop.ends_with(end))
}

/// A set of librdkafka properties; its `Debug` hides secret values.
#[derive(Clone, Default, PartialEq)]
pub struct KafkaProps(BTreeMap<String, String>);

impl std::fmt::Debug for KafkaProps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, secret::shown(k, v))))
            .finish()
    }
}

impl KafkaProps {
    /// Properties from `(name, value)` pairs as given.
    pub fn new(props: impl IntoIterator<Item = (String, String)>) -> Self {
        KafkaProps(props.into_iter().collect())
    }

    /// The `RUNNEL_KAFKA_<PROP>` variables among `vars`: `<PROP>` lower-cased
    /// with `_` for `.` (`RUNNEL_KAFKA_SASL_MECHANISM` is `sasl.mechanism`).
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        KafkaProps(
            vars.into_iter()
                .filter_map(|(k, v)| {
                    let prop = k.strip_prefix("RUNNEL_KAFKA_")?;
                    Some((prop.to_ascii_lowercase().replace('_', "."), v))
                })
                .filter(|(k, _)| !k.is_empty())
                .collect(),
        )
    }

    /// The stream options `kafka.<prop>`, as properties.
    pub fn of_stream(options: &BTreeMap<String, String>) -> Self {
        KafkaProps(
            options
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(STREAM_PREFIX)?.to_string(), v.clone())))
                .collect(),
        )
    }

    /// The value of `prop`.
    pub fn get(&self, prop: &str) -> Option<&str> {
        self.0.get(prop).map(String::as_str)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `other`'s properties over these.
    pub fn merged(&self, other: &KafkaProps) -> KafkaProps {
        let mut all = self.0.clone();
        all.extend(other.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        KafkaProps(all)
    }

    /// Refuses properties Runnel manages; `source` says where they were set.
    pub fn check_server(&self, source: &str) -> Result<()> {
        let managed: Vec<&str> = self
            .0
            .keys()
            .map(String::as_str)
            .filter(|k| MANAGED.contains(k))
            .collect();
        if managed.is_empty() {
            return Ok(());
        }
        Err(Error::BadRequest(format!(
            "{source}: Runnel sets {} itself (offsets live in its store; brokers come from --brokers); \
             properties it manages: {}",
            managed.join(", "),
            MANAGED.join(", ")
        )))
    }

    /// Refuses a stream's properties that Runnel manages or that name a
    /// file, a program, a library or a URL.
    pub fn check_stream(&self) -> std::result::Result<(), String> {
        for k in self.0.keys() {
            if k == "bootstrap.servers" || k == "metadata.broker.list" {
                return Err(format!(
                    "option '{STREAM_PREFIX}{k}' is not allowed; use brokers = '...' (hosts must be allowed with --allow-connect)"
                ));
            }
            if MANAGED.contains(&k.as_str()) {
                return Err(format!(
                    "option '{STREAM_PREFIX}{k}' is managed by Runnel and cannot be set per stream; managed: {}",
                    MANAGED.join(", ")
                ));
            }
            if names_a_place(k) {
                return Err(format!(
                    "option '{STREAM_PREFIX}{k}' names a file, program or URL on the server and can be set only server-wide \
                     ([kafka] in runnel.toml or RUNNEL_KAFKA_*); per stream, give certificates inline (e.g. \"kafka.ssl.ca.pem\")"
                ));
            }
        }
        Ok(())
    }

    /// Secret values, for taking out of messages.
    pub fn secrets(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, v)| is_secret(k) && !v.is_empty())
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Where and how a stream's Kafka clients connect.
#[derive(Clone, Default, PartialEq, Debug)]
pub struct KafkaConn {
    /// Bootstrap servers.
    pub brokers: String,
    /// librdkafka properties, server-wide then the stream's.
    pub props: KafkaProps,
    /// librdkafka fetches records even on a plain connection (runnel.toml
    /// `own_fetch = false`): see [`wire_fetch`](Self::wire_fetch).
    pub librdkafka_fetch: bool,
}

impl KafkaConn {
    /// Plain connections to `brokers`.
    pub fn new(brokers: &str) -> Self {
        KafkaConn {
            brokers: brokers.to_string(),
            ..Default::default()
        }
    }

    /// Whether sources read with Runnel's own fetching
    /// (`source::kafka::wire`) rather than librdkafka's: on plain
    /// connections with no client property set (TLS, SASL and tuning
    /// properties are librdkafka's), unless the operator chose librdkafka.
    pub fn wire_fetch(&self) -> bool {
        let plain = (self.props.0.iter())
            .all(|(k, v)| k == "security.protocol" && v.eq_ignore_ascii_case("plaintext"));
        plain && !self.librdkafka_fetch
    }

    /// A client configuration: Runnel's `base` settings, the properties
    /// over them, and the brokers.
    pub fn config(&self, base: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in base {
            c.set(*k, *v);
        }
        for (k, v) in &self.props.0 {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.brokers);
        c
    }

    /// Creates a client from [`config`](Self::config), with librdkafka's
    /// complaints about the properties as 400s naming them (and no secret).
    pub fn create<T, C>(&self, base: &[(&str, &str)], context: C) -> Result<T>
    where
        C: ClientContext,
        T: FromClientConfigAndContext<C>,
    {
        self.config(base)
            .create_with_context(context)
            .map_err(|e| self.client_error(e))
    }

    /// Checks the properties by making a client that connects nowhere, so
    /// librdkafka's verdict (unknown property, bad value, unsupported SASL
    /// mechanism, missing certificate) comes when a stream is created.
    pub fn check(&self) -> Result<()> {
        let mut c = self.config(&[]);
        c.remove("bootstrap.servers");
        let _: BaseConsumer = c.create().map_err(|e| self.client_error(e))?;
        Ok(())
    }

    fn client_error(&self, e: KafkaError) -> Error {
        let hide = |s: &str| secret::scrub(s, &self.props.secrets());
        Error::BadRequest(match e {
            KafkaError::ClientConfig(_, desc, key, _) => {
                format!("kafka property '{key}': {}", hide(&desc))
            }
            KafkaError::ClientCreation(msg) => format!("kafka client: {}", hide(&msg)),
            other => format!("kafka client: {}", hide(&other.to_string())),
        })
    }
}

/// Refuses a name Kafka would refuse as a topic: 1 to 249 ASCII letters,
/// digits, `.`, `_` and `-`, and not `.` or `..`.
pub fn check_topic_name(topic: &str) -> Result<()> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(format!(
            "INTO TOPIC '{topic}' is not a valid Kafka topic name: use 1 to 249 letters, digits, '.', '_' and '-'"
        )))
    }
}

/// Queues `record` on `producer`, waiting while its local queue is full
/// (letting the brokers drain it); any other error is returned.
pub fn send_waiting<K, P, C>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> std::result::Result<(), KafkaError>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
    C: ProducerContext,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(std::time::Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_kafka_refuses_are_refused() {
        for ok in ["out", "popular_users", "a.b-c_1", &"x".repeat(249)] {
            check_topic_name(ok).unwrap();
        }
        for bad in ["", ".", "..", "has space", "ünï", "a/b", &"x".repeat(250)] {
            let e = check_topic_name(bad).unwrap_err().to_string();
            assert!(e.contains("not a valid Kafka topic name"), "{e}");
        }
    }

    fn props(pairs: &[(&str, &str)]) -> KafkaProps {
        KafkaProps::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn env_names_become_properties() {
        let p = KafkaProps::from_env([
            ("RUNNEL_KAFKA_SASL_MECHANISM".into(), "PLAIN".into()),
            ("RUNNEL_KAFKA_SSL_CA_LOCATION".into(), "/etc/ca.pem".into()),
            ("RUNNEL_BROKERS".into(), "k:9092".into()),
            ("RUNNEL_KAFKA_".into(), "x".into()),
        ]);
        assert_eq!(
            p,
            props(&[
                ("sasl.mechanism", "PLAIN"),
                ("ssl.ca.location", "/etc/ca.pem")
            ])
        );
    }

    #[test]
    fn managed_properties_are_refused() {
        let e = props(&[("group.id", "g")])
            .check_server("[kafka]")
            .unwrap_err();
        assert!(e.to_string().contains("group.id"), "{e}");
        assert_eq!(e.status(), 400);
        assert!(
            props(&[("sasl.mechanism", "PLAIN")])
                .check_server("x")
                .is_ok()
        );
        for managed in ["enable.auto.commit", "isolation.level", "auto.offset.reset"] {
            let e = props(&[(managed, "x")]).check_stream().unwrap_err();
            assert!(e.contains(managed) && e.contains("managed"), "{e}");
        }
        let e = props(&[("bootstrap.servers", "evil:9092")])
            .check_stream()
            .unwrap_err();
        assert!(e.contains("--allow-connect"), "{e}");
    }

    #[test]
    fn places_are_server_wide_only() {
        for place in [
            "ssl.ca.location",
            "ssl.key.location",
            "sasl.kerberos.kinit.cmd",
            "sasl.kerberos.keytab",
            "plugin.library.paths",
            "sasl.oauthbearer.token.endpoint.url",
        ] {
            let e = props(&[(place, "x")]).check_stream().unwrap_err();
            assert!(e.contains("server-wide"), "{place}: {e}");
        }
        assert!(
            props(&[("ssl.ca.pem", "-----BEGIN"), ("sasl.password", "p")])
                .check_stream()
                .is_ok()
        );
    }

    #[test]
    fn runnel_fetches_on_plain_connections_unless_told_not_to() {
        let conn = |p: &[(&str, &str)], librdkafka_fetch| KafkaConn {
            brokers: "k:9092".into(),
            props: props(p),
            librdkafka_fetch,
        };
        assert!(conn(&[], false).wire_fetch());
        assert!(conn(&[("security.protocol", "PLAINTEXT")], false).wire_fetch());
        assert!(!conn(&[], true).wire_fetch());
        assert!(!conn(&[("security.protocol", "SSL")], false).wire_fetch());
        assert!(!conn(&[("fetch.max.bytes", "1000")], false).wire_fetch());
    }

    #[test]
    fn librdkafka_refusals_are_400s_without_secrets() {
        let conn = KafkaConn {
            brokers: "127.0.0.1:1".into(),
            props: props(&[
                ("security.protocol", "SASL_PLAINTEXT"),
                ("sasl.mechanism", "NOPE"),
                ("sasl.username", "u"),
                ("sasl.password", "hunter2"),
            ]),
            ..Default::default()
        };
        let e = conn.check().unwrap_err();
        assert_eq!(e.status(), 400);
        let m = e.to_string();
        assert!(m.contains("NOPE"), "{m}");
        assert!(!m.contains("hunter2"), "{m}");
        let e = KafkaConn {
            brokers: String::new(),
            props: props(&[("no.such.property", "1")]),
            ..Default::default()
        }
        .check()
        .unwrap_err();
        assert!(e.to_string().contains("no.such.property"), "{e}");
        let ok = KafkaConn {
            brokers: String::new(),
            props: props(&[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "u"),
                ("sasl.password", "p"),
            ]),
            ..Default::default()
        };
        ok.check().unwrap();
    }

    #[test]
    fn debug_hides_secrets() {
        let p = props(&[("sasl.password", "hunter2"), ("sasl.username", "ann")]);
        let shown = format!("{p:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("ann"),
            "{shown}"
        );
    }
}
