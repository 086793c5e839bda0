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
//! [`SinkStatus`] is what `GET /queries/{id}` shows of it.
//!
//! Cluster mode publishes each server's emitted rows right after writing
//! them ([`TopicSink`]): a crash in between loses them on the topic.

pub mod exact;
pub mod recover;

use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::connect::kafka::KafkaConn;
use crate::error::{Error, Result};
use crate::model::Emission;

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

/// Each row of `batch` as one JSON object.
pub fn json_lines(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let mut buf = Vec::new();
    {
        let mut w = arrow_json::LineDelimitedWriter::new(&mut buf);
        w.write(batch)?;
        w.finish()?;
    }
    Ok(buf
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// Queues `record`, waiting while the producer's queue is full.
fn send(producer: &BaseProducer, mut record: BaseRecord<'_, (), [u8]>) -> Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

/// Publishes emitted rows as JSON messages to one topic (cluster mode).
pub struct TopicSink {
    producer: BaseProducer,
    topic: String,
}

impl TopicSink {
    /// A producer for `topic`, connecting as `kafka` says.
    pub fn new(kafka: &KafkaConn, topic: &str) -> Result<Self> {
        let producer: BaseProducer = kafka.create(
            &[("linger.ms", "5")],
            rdkafka::producer::DefaultProducerContext,
        )?;
        Ok(TopicSink {
            producer,
            topic: topic.to_string(),
        })
    }

    /// Sends every row of `emissions`, one JSON object per message, and waits
    /// for delivery.
    pub fn publish(&self, emissions: &[Emission]) -> Result<()> {
        for e in emissions {
            for line in json_lines(&e.batch)? {
                send(
                    &self.producer,
                    BaseRecord::<(), [u8]>::to(&self.topic).payload(&line),
                )?;
            }
        }
        self.producer
            .flush(Duration::from_secs(30))
            .map_err(|e| Error::Execution(format!("publishing to topic {}: {e}", self.topic)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
