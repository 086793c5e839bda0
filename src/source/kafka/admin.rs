//! Creating a topic that does not exist yet, for `runnel gen`: producing
//! into a missing topic would otherwise wait out every delivery timeout.
//!
//! ```no_run
//! # async fn f() -> runnel::error::Result<()> {
//! use runnel::connect::kafka::KafkaConn;
//! use runnel::source::kafka::admin::ensure_topic;
//! let how = ensure_topic(&KafkaConn::new("127.0.0.1:9092"), "clicks", 4).await?;
//! println!("{how:?}");
//! # Ok(()) }
//! ```

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};

use super::ASK_TIMEOUT;
use super::discover::layout_of;
use crate::connect::kafka::KafkaConn;
use crate::error::{Error, Result};

/// How a topic came to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// It was there.
    Existed,
    /// Created with the partitions asked for.
    Created,
    /// The broker does not create topics on request (CreateTopics) but
    /// created it when asked for its metadata, with its default partitions.
    AutoCreated,
}

/// Whether `topic` exists, asking the brokers for at most `timeout`
/// without letting them auto-create it; `None` when they cannot be reached.
pub fn topic_exists(kafka: &KafkaConn, topic: &str, timeout: Duration) -> Option<bool> {
    lookup(kafka, topic, false, timeout).ok()
}

/// Whether `topic` exists after asking the brokers for its metadata,
/// letting them auto-create it when `auto_create`.
fn lookup(kafka: &KafkaConn, topic: &str, auto_create: bool, timeout: Duration) -> Result<bool> {
    let allow = if auto_create { "true" } else { "false" };
    let consumer: BaseConsumer = kafka.create(
        &[("allow.auto.create.topics", allow)],
        DefaultConsumerContext,
    )?;
    let md = consumer.fetch_metadata(Some(topic), timeout).map_err(|e| {
        Error::Execution(format!(
            "cannot reach the brokers at {} to look up topic {topic}: {e}",
            kafka.brokers
        ))
    })?;
    Ok(!layout_of(&md, topic).partitions.is_empty())
}

/// Makes sure `topic` exists: creates it with `partitions` partitions (the
/// broker's default replication), or failing that lets the broker
/// auto-create it; an error says why neither worked.
pub async fn ensure_topic(kafka: &KafkaConn, topic: &str, partitions: i32) -> Result<Ensured> {
    let exists = |auto_create: bool| lookup(kafka, topic, auto_create, ASK_TIMEOUT);
    if exists(false)? {
        return Ok(Ensured::Existed);
    }
    let admin: AdminClient<DefaultClientContext> = kafka.create(&[], DefaultClientContext)?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let failed = |why: String| {
        Error::Execution(format!(
            "topic {topic} does not exist and could not be created ({why}); create it on the broker, or let runnel gen create it with rights to create topics"
        ))
    };
    let options = AdminOptions::new()
        .operation_timeout(Some(ASK_TIMEOUT))
        .request_timeout(Some(ASK_TIMEOUT));
    let created = match admin.create_topics([&new], &options).await {
        Ok(results) => results
            .into_iter()
            .try_for_each(|r| r.map(drop).map_err(|(_, code)| code.to_string())),
        Err(e) => Err(e.to_string()),
    };
    match created {
        Ok(()) => Ok(Ensured::Created),
        Err(why) => match exists(true)? {
            true => Ok(Ensured::AutoCreated),
            false => Err(failed(why)),
        },
    }
}
