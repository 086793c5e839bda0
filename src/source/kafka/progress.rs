//! Where a Kafka source stands: the next offset of each partition, its
//! lag behind the log end, which partitions are confirmed caught up (the
//! rule is in the parent module's docs), and what happens when a saved
//! offset is no longer in the log.

use std::collections::BTreeMap;
use std::time::Instant;

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use super::{ASK_TIMEOUT, Fetch, KafkaSource};
use crate::error::{Error, Result};
use crate::model::{OnOffsetLoss, StartFrom};

impl KafkaSource {
    /// Next offset to read per partition (for partitions read or restored).
    pub fn offsets(&self) -> &BTreeMap<i32, i64> {
        &self.offsets
    }

    /// Records not yet read per partition: the high watermark last reported
    /// by the broker minus the next offset to read (partitions read so far).
    pub fn lag(&self) -> Vec<(i32, i64)> {
        self.log_ends()
            .into_iter()
            .map(|(p, next, high)| (p, (high - next).max(0)))
            .collect()
    }

    /// Per assigned partition whose log end librdkafka knows: the next
    /// offset to read and the log end (high watermark) last reported.
    fn log_ends(&self) -> Vec<(i32, i64, i64)> {
        if let Some(Fetch::Wire(wire)) = &self.fetch {
            // Not read yet: the position is where the query starts.
            return (wire.log_ends().iter())
                .filter_map(|(p, e)| {
                    let next = self.offsets.get(p).copied().or_else(|| wire.position(*p))?;
                    Some((*p, next, e.high))
                })
                .collect();
        }
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
                (high >= 0).then_some((e.partition(), next, high))
            })
            .collect()
    }

    /// What losing a saved offset does (`fail` unless set).
    pub fn set_on_offset_loss(&mut self, policy: OnOffsetLoss) {
        self.on_offset_loss = policy;
    }

    /// Lag, caught-up confirmations and broker reachability.
    pub fn progress(&self) -> crate::source::Progress {
        let ctx = self.consumer.context();
        let ends = self.log_ends();
        crate::source::Progress {
            partitions: self.partitions.clone(),
            lag: ends.iter().map(|(p, n, h)| (*p, (h - n).max(0))).collect(),
            log_ends: ends.iter().map(|(p, _, h)| (*p, *h)).collect(),
            caught_up: self.caught_up(),
            unreachable_since: *ctx.down_since.lock().unwrap_or_else(|p| p.into_inner()),
            skipped: self.skipped,
            client_errors: ctx.recent_errors(),
        }
    }

    /// librdkafka found a partition's next offset outside its log: finds
    /// which, and fails or skips as the stream says.
    pub(super) fn on_offset_loss(&mut self) -> Result<()> {
        let mut lost = Vec::new();
        for (p, next) in &self.offsets {
            if !self.partitions.contains(p) {
                continue;
            }
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.topic, *p, ASK_TIMEOUT)?;
            if *next < low || *next > high {
                lost.push((*p, *next, low, high));
            }
        }
        for (p, next, low, high) in lost {
            let what = format!(
                "partition {p} of topic {}: the saved offset {next} is outside the log, which holds offsets {low} to {high} (records deleted, the topic recreated or the broker restarted empty)",
                self.topic
            );
            let (to, skipped) = match self.on_offset_loss {
                OnOffsetLoss::Fail => {
                    return Err(Error::Execution(format!(
                        "offsets lost on {what}; set on_offset_loss = 'earliest' or 'latest' on the stream to go on, or reset the query"
                    )));
                }
                // Records deleted before they were read; a log that starts
                // over after `next` holds only records not read yet.
                OnOffsetLoss::Earliest => (low, (low - next).max(0)),
                OnOffsetLoss::Latest => (high, high - next.min(high).max(low)),
            };
            tracing::warn!(
                "kafka: offsets lost on {what}; going on from offset {to}, {skipped} records skipped"
            );
            self.skipped += skipped as u64;
            self.offsets.insert(p, to);
            if let Some(Fetch::Wire(wire)) = &mut self.fetch {
                wire.seek(p, to);
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(to))?;
            self.consumer.incremental_unassign(&tpl)?;
            self.consumer.incremental_assign(&tpl)?;
            if let Some(Fetch::Queue(queue)) = &mut self.fetch {
                queue.moved(p, to);
            }
        }
        Ok(())
    }

    /// Per assigned partition that is caught up, when that was confirmed:
    /// everything up to the log end a live leader last reported has been
    /// read (and nothing fetched is waiting in the consumer's queue).
    pub fn caught_up(&self) -> BTreeMap<i32, Instant> {
        if let Some(Fetch::Wire(wire)) = &self.fetch {
            return wire.caught_up(&self.offsets);
        }
        let ends = self
            .consumer
            .context()
            .live_ends
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.partitions
            .iter()
            .filter_map(|p| {
                let e = ends.get(p)?;
                let read_all = match self.offsets.get(p) {
                    Some(next) => *next >= e.high,
                    None => e.queued == 0 && e.next_fetch >= e.high,
                };
                read_all.then_some((*p, e.at))
            })
            .collect()
    }
}
