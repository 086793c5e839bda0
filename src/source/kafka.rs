//! The Kafka source: one consumer per query, assigned every partition of the
//! topic at the offsets the query's last checkpoint saved.
//!
//! Offsets live in Runnel's store, committed with the results they produced,
//! so the consumer never commits to Kafka and needs no group coordination.
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use std::sync::atomic::AtomicBool;
//! use std::time::Duration;
//! use runnel::source::kafka::KafkaSource;
//! use runnel::sql::StartFrom;
//! let stop = AtomicBool::new(false);
//! let mut src = KafkaSource::connect("127.0.0.1:9092", "clicks", "runnel-q", StartFrom::Earliest,
//!                                    &BTreeMap::new(), &stop).unwrap();
//! for chunk in src.poll(10_000, Duration::from_millis(100)).unwrap() {
//!     println!("partition {}: {} records", chunk.partition, chunk.len());
//! }
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

pub use super::Chunk;
use crate::error::{Error, Result};
use crate::sql::StartFrom;

/// A consumer reading every partition of one topic.
pub struct KafkaSource {
    consumer: BaseConsumer,
    start: StartFrom,
    partitions: Vec<i32>,
    offsets: BTreeMap<i32, i64>,
}

impl KafkaSource {
    /// Connects, waits until the topic exists, and assigns all its partitions,
    /// resuming from `saved` offsets where known.
    pub fn connect(
        brokers: &str,
        topic: &str,
        client_id: &str,
        start: StartFrom,
        saved: &BTreeMap<i32, i64>,
        stop: &AtomicBool,
    ) -> Result<Self> {
        let reset = match start {
            StartFrom::Earliest => "earliest",
            StartFrom::Latest => "latest",
        };
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", client_id)
            .set("client.id", client_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", reset)
            .set("fetch.wait.max.ms", "10")
            // Bound what is fetched ahead of processing: when input outruns
            // the engine, fetching pauses instead of memory growing.
            .set("queued.max.messages.kbytes", "4096")
            .set("allow.auto.create.topics", "false")
            .create()?;
        let partitions = loop {
            if stop.load(Ordering::Relaxed) {
                return Err(Error::Execution("stopped before the topic appeared".into()));
            }
            match consumer.fetch_metadata(Some(topic), Duration::from_secs(2)) {
                Ok(md) => {
                    let ps: Vec<i32> = md
                        .topics()
                        .iter()
                        .filter(|t| t.name() == topic && t.error().is_none())
                        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                        .collect();
                    if !ps.is_empty() {
                        break ps;
                    }
                }
                Err(e) => tracing::debug!("metadata for {topic}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            let offset = match (saved.get(p), start) {
                (Some(o), _) => Offset::Offset(*o),
                (None, StartFrom::Earliest) => Offset::Beginning,
                (None, StartFrom::Latest) => Offset::End,
            };
            tpl.add_partition_offset(topic, *p, offset)?;
        }
        consumer.assign(&tpl)?;
        Ok(KafkaSource {
            consumer,
            start,
            offsets: saved.clone(),
            partitions,
        })
    }

    /// The assigned partitions.
    pub fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    /// Next offset to read per partition (for partitions read or restored).
    pub fn offsets(&self) -> &BTreeMap<i32, i64> {
        &self.offsets
    }

    /// Records not yet read per partition: the high watermark last reported
    /// by the broker minus the next offset to read (partitions read so far).
    pub fn lag(&self) -> Vec<(i32, i64)> {
        let Ok(tpl) = self.consumer.assignment() else {
            return Vec::new();
        };
        tpl.elements()
            .iter()
            .filter_map(|e| {
                let topic = std::ffi::CString::new(e.topic()).ok()?;
                let (mut low, mut high) = (-1i64, -1i64);
                // SAFETY: the client pointer lives as long as `self.consumer`,
                // the topic is NUL-terminated, and librdkafka only reads its
                // cached watermarks into the two out-parameters.
                let err = unsafe {
                    rdkafka::bindings::rd_kafka_get_watermark_offsets(
                        self.consumer.client().native_client().ptr(),
                        topic.as_ptr(),
                        e.partition(),
                        &mut low,
                        &mut high,
                    )
                };
                if err != rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
                    return None;
                }
                // Not read yet: the position is where the query starts.
                let next = match (self.offsets.get(&e.partition()), self.start) {
                    (Some(o), _) => *o,
                    (None, StartFrom::Earliest) => low,
                    (None, StartFrom::Latest) => high,
                };
                (high >= 0).then(|| (e.partition(), (high - next).max(0)))
            })
            .collect()
    }

    /// Reads up to `max` records, waiting at most `wait` for the first one,
    /// grouped into one chunk per partition.
    pub fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Chunk>> {
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut n = 0;
        let deadline = Instant::now() + wait;
        let mut timeout = wait;
        while n < max {
            let Some(msg) = self.consumer.poll(timeout) else {
                break;
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("kafka: {e}");
                    break;
                }
            };
            // One chunk per partition per poll: fewer, larger batches. Order
            // within a partition is kept, which is all the engine relies on.
            let p = msg.partition();
            let i = match chunks.iter().position(|c| c.partition == p) {
                Some(i) => i,
                None => {
                    chunks.push(Chunk::new(p, msg.offset()));
                    chunks.len() - 1
                }
            };
            let c = &mut chunks[i];
            c.push(msg.payload().unwrap_or_default());
            self.offsets.insert(p, msg.offset() + 1);
            n += 1;
            // After the first record, take only what is already fetched.
            timeout = Duration::ZERO;
            if Instant::now() > deadline {
                break;
            }
        }
        Ok(chunks)
    }
}
