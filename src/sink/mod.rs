//! Sinks: where emitted rows go besides the store.
//!
//! `INTO TOPIC 'name'` publishes each emitted row as one JSON message to a
//! Kafka topic, after the rows are committed to the store. A crash between
//! the commit and the publish can repeat the last rows on the topic
//! (at-least-once); the store stays exactly-once.
//!
//! ```no_run
//! use runnel::connect::kafka::KafkaConn;
//! let sink = runnel::sink::TopicSink::new(&KafkaConn::new("127.0.0.1:9092"), "popular_users").unwrap();
//! sink.publish(&[]).unwrap();
//! ```

use std::time::Duration;

use rdkafka::producer::DefaultProducerContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::connect::kafka::KafkaConn;
use crate::error::{Error, Result};
use crate::window::Emission;

/// Publishes rows as JSON messages to one topic.
pub struct TopicSink {
    producer: BaseProducer,
    topic: String,
}

impl TopicSink {
    /// A producer for `topic`, connecting as `kafka` says.
    pub fn new(kafka: &KafkaConn, topic: &str) -> Result<Self> {
        let producer: BaseProducer = kafka.create(&[("linger.ms", "5")], DefaultProducerContext)?;
        Ok(TopicSink {
            producer,
            topic: topic.to_string(),
        })
    }

    /// Sends every row of `emissions`, one JSON object per message, and waits
    /// for delivery.
    pub fn publish(&self, emissions: &[Emission]) -> Result<()> {
        if emissions.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        {
            let mut w = arrow_json::LineDelimitedWriter::new(&mut buf);
            for e in emissions {
                w.write(&e.batch)?;
            }
            w.finish()?;
        }
        for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let mut record = BaseRecord::<(), [u8]>::to(&self.topic).payload(line);
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((e, r)) if e.to_string().contains("Queue full") => {
                        record = r;
                        self.producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
        self.producer
            .flush(Duration::from_secs(30))
            .map_err(|e| Error::Execution(format!("publishing to topic {}: {e}", self.topic)))
    }
}
