//! Sinks: where emitted rows go besides the store.
//!
//! `INTO TOPIC 'name'` publishes each row of a query's results table as one
//! JSON message to a Kafka topic, exactly once and in the table's write
//! order ([`exact::ExactSink`]): rows are published from the store after
//! they are committed there, in Kafka transactions, and a restarted server
//! finds where publishing stopped from the topic itself
//! ([`recover::last_published`]). Every message carries three headers:
//! `runnel-query` (the query's name), `runnel-cursor` (the row's cursor,
//! the same as `results?after=` and the SSE event id) and `runnel-after`
//! (the cursor its batch followed). A broker without transactions gets
//! at-least-once delivery: consumers drop repeats by `runnel-cursor`.
//! `SinkStatus` is what `GET /queries/{id}` shows of it.
//!
//! In cluster mode the one member reading partition 0 of the stream
//! publishes, from the shared store, the rows every member wrote; a member
//! taking over fences the previous one with the same `transactional.id`
//! and goes on from what the topic shows, so a handover neither loses nor
//! repeats a row.

pub mod exact;
pub mod recover;

use datafusion::arrow::record_batch::RecordBatch;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{BaseProducer, BaseRecord};

use crate::connect::kafka::KafkaConn;
use crate::error::{Error, Result};

/// Checks that `topic` can be published to: a valid name that exists (or
/// that the broker creates when asked for it).
pub fn check_topic(kafka: &KafkaConn, topic: &str) -> Result<()> {
    crate::connect::kafka::check_topic_name(topic).map_err(|e| Error::Execution(e.to_string()))?;
    let consumer: BaseConsumer = kafka.create(
        &[("allow.auto.create.topics", "true")],
        rdkafka::consumer::DefaultConsumerContext,
    )?;
    recover::topic_partitions(&consumer, topic).map(drop)
}

/// Each row of `batch` as one JSON object, written as every answer writes
/// rows (timestamps RFC 3339 with `Z`, binary as base64).
pub fn json_lines(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let rows = crate::format::encode::row_texts(batch)?;
    Ok(rows.into_iter().map(String::into_bytes).collect())
}

/// Queues `record`, waiting while the producer's queue is full.
fn send(producer: &BaseProducer, record: BaseRecord<'_, (), [u8]>) -> Result<()> {
    Ok(crate::connect::kafka::send_waiting(producer, record)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::RDKafkaErrorCode;

    #[test]
    fn transactions_refused_only_for_lasting_reasons() {
        assert!(exact::transactions_unsupported(
            RDKafkaErrorCode::UnsupportedFeature
        ));
        assert!(exact::transactions_unsupported(
            RDKafkaErrorCode::TransactionalIdAuthorizationFailed
        ));
        assert!(!exact::transactions_unsupported(
            RDKafkaErrorCode::CoordinatorNotAvailable
        ));
        assert!(!exact::transactions_unsupported(
            RDKafkaErrorCode::BrokerTransportFailure
        ));
    }
}
