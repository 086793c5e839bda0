//! Finding where a query's `INTO TOPIC` publishing stopped, from the topic
//! itself.
//!
//! Each message Runnel publishes carries the query's name (`runnel-query`),
//! the row's results cursor (`runnel-cursor`) and the cursor its batch
//! followed (`runnel-after`). The last one a query published is the largest
//! `runnel-cursor` of that query over the tails of all partitions, read as
//! downstream consumers read them: `read_committed` when the sink publishes
//! in transactions (aborted batches and control records are skipped). Each
//! partition is read from a little before its end, and further back when
//! that tail holds none of the query's messages.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::connect::kafka::KafkaConn;
use crate::error::{Error, Result};

/// Message header holding the query's name.
pub const QUERY_HEADER: &str = "runnel-query";
/// Message header holding the row's results cursor.
pub const CURSOR_HEADER: &str = "runnel-cursor";
/// Message header holding the cursor the row's batch was read after.
pub const AFTER_HEADER: &str = "runnel-after";

/// The newest message a query published: its cursor, and the cursor its
/// batch was read after (`None`: from the first row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The row's results cursor.
    pub cursor: i64,
    /// Where the batch holding it started.
    pub after: Option<i64>,
}

/// How many messages before a partition's end are read first; each further
/// attempt reads eight times as far back.
const FIRST_TAIL: i64 = 64;

/// How long the whole search may take.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(30);

/// The partitions of `topic`, or a message naming the topic when it does
/// not exist or cannot be used.
pub fn topic_partitions<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> Result<Vec<i32>> {
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Err(missing_topic(topic));
    };
    if let Some(e) = t.error() {
        let code = RDKafkaErrorCode::from(e);
        return Err(match code {
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                missing_topic(topic)
            }
            other => Error::Execution(format!("INTO TOPIC '{topic}': {other}")),
        });
    }
    if t.partitions().is_empty() {
        return Err(missing_topic(topic));
    }
    Ok(t.partitions().iter().map(|p| p.id()).collect())
}

fn missing_topic(topic: &str) -> Error {
    Error::Execution(format!(
        "INTO TOPIC '{topic}': the topic does not exist and the broker did not create it; create it (rows wait in the store meanwhile)"
    ))
}

/// The search consumer's context: reaching a partition's end is how the
/// search knows it has read it, not an error to log.
struct EndIsExpected;

impl ClientContext for EndIsExpected {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::warn!("librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for EndIsExpected {}

/// The header `key` of `m` as an integer.
fn header_i64(m: &impl Message, key: &str) -> Option<i64> {
    let h = m.headers()?;
    let v = h.iter().find(|h| h.key == key)?.value?;
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn is_ours(m: &impl Message, query: &str) -> bool {
    m.headers()
        .and_then(|h| h.iter().find(|h| h.key == QUERY_HEADER))
        .and_then(|h| h.value)
        == Some(query.as_bytes())
}

/// The newest message `query` published to `topic`, or `None` if it has
/// published nothing there (that the consumer can see).
pub fn last_published(
    kafka: &KafkaConn,
    topic: &str,
    query: &str,
    read_committed: bool,
) -> Result<Option<Published>> {
    let consumer: BaseConsumer<EndIsExpected> = kafka
        .config(&[])
        .set("group.id", format!("runnel-sink-{query}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create_with_context(EndIsExpected)?;
    let deadline = Instant::now() + SEARCH_TIMEOUT;
    let mut bounds = BTreeMap::new();
    for p in topic_partitions(&consumer, topic)? {
        let (lo, hi) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if hi > lo {
            bounds.insert(p, (lo, hi));
        }
    }
    let mut best: Option<Published> = None;
    let mut back = FIRST_TAIL;
    while !bounds.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for (p, (lo, hi)) in &bounds {
            tpl.add_partition_offset(topic, *p, Offset::Offset((*hi - back).max(*lo)))?;
        }
        consumer.assign(&tpl)?;
        let mut open: Vec<i32> = bounds.keys().copied().collect();
        let mut found = BTreeMap::new();
        while !open.is_empty() {
            if Instant::now() > deadline {
                return Err(Error::Execution(format!(
                    "INTO TOPIC '{topic}': reading the topic's end to find the last row published took over {}s",
                    SEARCH_TIMEOUT.as_secs()
                )));
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(m)) => {
                    if is_ours(&m, query)
                        && let Some(cursor) = header_i64(&m, CURSOR_HEADER)
                    {
                        let after = header_i64(&m, AFTER_HEADER);
                        found.insert(m.partition(), Published { cursor, after });
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => open.retain(|x| *x != p),
                Some(Err(e)) => return Err(e.into()),
            }
        }
        for (p, pubd) in found {
            if best.is_none_or(|b| pubd.cursor > b.cursor) {
                best = Some(pubd);
            }
            bounds.remove(&p);
        }
        // Partitions read to their start have nothing more to show.
        bounds.retain(|_, (lo, hi)| *hi - back > *lo);
        back = back.saturating_mul(8);
    }
    Ok(best)
}
