//! What Runnel may connect to and how: the operator's list of hosts
//! ([`hosts`], `--allow-connect`), the librdkafka properties of every Kafka
//! client ([`kafka`], SASL and TLS), and keeping the secrets among them out
//! of what Runnel shows ([`secret`]).

pub mod hosts;
pub mod kafka;
pub mod secret;

use crate::config::Config;
use crate::error::Result;
use crate::sql::{SourceKind, StreamDef};
use hosts::HostRules;
use kafka::{KafkaConn, KafkaProps};

/// How the Kafka clients of stream `def` connect: its brokers (the
/// server's by default) with the server-wide properties and its own over
/// them.
pub fn kafka_conn(config: &Config, def: &StreamDef) -> KafkaConn {
    KafkaConn {
        brokers: def
            .brokers
            .clone()
            .unwrap_or_else(|| config.brokers.clone()),
        props: config.kafka.merged(&KafkaProps::of_stream(&def.options)),
    }
}

/// Refuses a stream that would connect where the operator did not allow
/// (its brokers, and so its `INTO TOPIC` producer, or its socket's
/// `host:port`), or whose Kafka properties librdkafka rejects.
pub fn check_stream(config: &Config, def: &StreamDef) -> Result<()> {
    let hosts = HostRules::new(&config.allow_connect, &config.brokers);
    match def.source {
        SourceKind::Kafka => {
            let conn = kafka_conn(config, def);
            hosts.check_brokers(&conn.brokers)?;
            conn.check()
        }
        SourceKind::Socket => {
            let host = def.options.get("host").map(String::as_str).unwrap_or("");
            let port = def.options.get("port").and_then(|p| p.parse().ok());
            hosts.check_socket(host, port.unwrap_or(0))
        }
        SourceKind::File => Ok(()),
    }
}
