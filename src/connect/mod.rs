//! What Runnel may connect to and how: the operator's list of hosts
//! ([`hosts`], `--allow-connect`), the librdkafka properties of every Kafka
//! client ([`kafka`], SASL and TLS), and keeping the secrets among them out
//! of what Runnel shows ([`secret`]).

pub mod hosts;
pub mod kafka;
pub mod secret;
