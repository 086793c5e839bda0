//! Reading records with librdkafka's fetching: a consumer's records many
//! at a time, and the source's polls of them (`KafkaSource::poll_queue`,
//! `KafkaSource::poll_consumer`).
//!
//! rdkafka's `BaseConsumer::poll` hands out one record per call: an event
//! popped under the queue's lock, a clock read, an allocation. Caught up
//! on a backlog that costs more than decoding the record. A [`FetchQueue`]
//! is a queue of Runnel's to which the fetch queue of every partition the
//! source assigns itself is forwarded; [`FetchQueue::read`] drains it with
//! librdkafka's `rd_kafka_consume_batch_queue`, thousands of records per
//! call.
//!
//! Everything else the consumer reports (statistics, which the caught-up
//! rule reads, client errors) stays on the consumer's own queue, served by
//! `BaseConsumer::poll` as before.
//!
//! librdkafka drops a partition's forwarding when its fetcher stops, and
//! once an application forwarded a partition it never forwards it again
//! itself: a partition moved to another offset
//! ([`KafkaSource`](super::KafkaSource)'s offset loss, an unassign and an
//! assign) keeps its records on its own queue until forwarded anew. The
//! stop is asynchronous, so [`FetchQueue::moved`] forwards it again at every
//! read until one of its records from the new offset comes through.
//! Forwarding moves what the partition's queue already holds ahead of what
//! comes later, so the partition's order holds.
//!
//! ```text
//! partition 0 fetch queue ─┐
//! partition 1 fetch queue ─┼─▶ FetchQueue ──read(max)──▶ chunks
//! partition 2 fetch queue ─┘
//! consumer queue (statistics, errors) ──poll──▶ context
//! ```

use std::ffi::CString;
use std::time::{Duration, Instant};

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;

use super::{Chunk, ChunkSizes, Fetch, KafkaSource, advance};
use crate::error::{Error, Result};

/// Records taken per librdkafka call.
const BATCH: usize = 4096;

/// One record or error handed out by [`FetchQueue::read`].
pub(super) enum Fetched<'a> {
    /// A record of `partition` at `offset`; `log_time` is its timestamp in
    /// ms, if it has one.
    Record {
        partition: i32,
        offset: i64,
        payload: &'a [u8],
        log_time: Option<i64>,
    },
    /// A consumer error raised on a partition (e.g. its offset is outside
    /// the log).
    Error(RDKafkaErrorCode, String),
}

/// A queue the source's partitions are forwarded to, read in batches.
pub(super) struct FetchQueue {
    queue: *mut rd::rd_kafka_queue_t,
    topic: CString,
    /// Partitions whose fetch queue is forwarded here.
    forwarded: Vec<i32>,
    /// Partitions moved to another offset, forwarded again at each read
    /// until a record at or past that offset arrives.
    moved: Vec<(i32, i64)>,
    buf: Vec<*mut rd::rd_kafka_message_t>,
}

// SAFETY: librdkafka's queues are thread-safe; the pointers are only used
// through `&mut self` (or in drop).
unsafe impl Send for FetchQueue {}

impl FetchQueue {
    /// A new, empty queue of `consumer`'s for records of `topic`.
    pub(super) fn new<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str) -> Result<Self> {
        let topic = CString::new(topic)
            .map_err(|_| Error::Execution(format!("topic name {topic:?} holds a NUL")))?;
        // SAFETY: the client pointer is valid while `consumer` lives; the
        // queue returned is ours to destroy.
        let queue = unsafe { rd::rd_kafka_queue_new(consumer.client().native_ptr()) };
        Ok(FetchQueue {
            queue,
            topic,
            forwarded: Vec::new(),
            moved: Vec::new(),
            buf: Vec::with_capacity(BATCH),
        })
    }

    /// Routes `partition`'s records here. Done before the partition is
    /// assigned, so that its fetcher starts with the forwarding in place.
    pub(super) fn forward<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        partition: i32,
    ) {
        if !self.forwarded.contains(&partition) {
            self.route(consumer, partition, self.queue);
            self.forwarded.push(partition);
        }
    }

    /// `partition` was unassigned and assigned again at `offset`.
    pub(super) fn moved(&mut self, partition: i32, offset: i64) {
        self.moved.retain(|(p, _)| *p != partition);
        self.moved.push((partition, offset));
    }

    /// Forwards `partition`'s fetch queue to `to` (null: to none).
    fn route<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        partition: i32,
        to: *mut rd::rd_kafka_queue_t,
    ) {
        // SAFETY: valid client and NUL-terminated topic; the partition's
        // queue handle is released right after, the forwarding outlives it.
        unsafe {
            let pq = rd::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                self.topic.as_ptr(),
                partition,
            );
            if !pq.is_null() {
                rd::rd_kafka_queue_forward(pq, to);
                rd::rd_kafka_queue_destroy(pq);
            }
        }
    }

    /// Hands `each` up to `max` records (or errors), waiting at most
    /// `wait` for the first; returns how many were handed.
    pub(super) fn read<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        max: usize,
        wait: Duration,
        mut each: impl FnMut(Fetched),
    ) -> usize {
        for &(p, _) in &self.moved {
            self.route(consumer, p, self.queue);
        }
        let mut n = 0;
        // Waiting, librdkafka returns only when the batch is full or the
        // time is up: wait for one record, then take what is there.
        let mut wait_ms = wait.as_millis().min(i32::MAX as u128) as i32;
        while n < max {
            let size = if wait_ms > 0 { 1 } else { (max - n).min(BATCH) };
            // SAFETY: `buf` has room for `size` pointers; librdkafka writes
            // the count it returns.
            let got = unsafe {
                let got = rd::rd_kafka_consume_batch_queue(
                    self.queue,
                    wait_ms,
                    self.buf.as_mut_ptr(),
                    size,
                );
                let got = got.max(0) as usize;
                self.buf.set_len(got);
                got
            };
            for &m in &self.buf {
                // SAFETY: each message is valid until destroyed below.
                let f = unsafe { fetched(&*m) };
                if let Fetched::Record {
                    partition, offset, ..
                } = f
                    && !self.moved.is_empty()
                {
                    self.moved.retain(|&(p, at)| p != partition || offset < at);
                }
                each(f);
                // SAFETY: destroyed once, after its last use.
                unsafe { rd::rd_kafka_message_destroy(m) };
            }
            self.buf.clear();
            n += got;
            if got < size {
                break;
            }
            wait_ms = 0;
        }
        n
    }

    /// Stops forwarding, so nothing more is routed to a queue about to go.
    pub(super) fn close<C: ConsumerContext>(self, consumer: &BaseConsumer<C>) {
        for &p in &self.forwarded {
            self.route(consumer, p, std::ptr::null_mut());
        }
    }
}

impl Drop for FetchQueue {
    fn drop(&mut self) {
        // SAFETY: created by `rd_kafka_queue_new`, destroyed once.
        unsafe { rd::rd_kafka_queue_destroy(self.queue) };
    }
}

/// A message as Runnel reads it.
///
/// # Safety
/// `m` must be a valid message returned by librdkafka.
unsafe fn fetched(m: &rd::rd_kafka_message_t) -> Fetched<'_> {
    let bytes = |ptr: *mut std::ffi::c_void, len: usize| -> &[u8] {
        if ptr.is_null() || len == 0 {
            &[]
        } else {
            // SAFETY: librdkafka's payload of `len` bytes, alive with `m`.
            unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }
        }
    };
    if m.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        // An error's payload is its description.
        let text = String::from_utf8_lossy(bytes(m.payload, m.len)).into_owned();
        return Fetched::Error(RDKafkaErrorCode::from(m.err), text);
    }
    let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
    // SAFETY: reads the message's timestamp fields only.
    let ts = unsafe { rd::rd_kafka_message_timestamp(m, &mut kind) };
    let log_time =
        (kind != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE).then_some(ts);
    Fetched::Record {
        partition: m.partition,
        offset: m.offset,
        payload: bytes(m.payload, m.len),
        log_time,
    }
}

impl KafkaSource {
    /// Reads off librdkafka's queue (a [`FetchQueue`]).
    pub(super) fn poll_queue(
        &mut self,
        chunks: &mut Vec<Chunk>,
        max: usize,
        wait: Duration,
    ) -> Result<()> {
        // Statistics and errors first (records come on the consumer's
        // queue only if forwarding failed: read them all the same).
        let n = self.poll_consumer(chunks, max, Duration::ZERO)?;
        self.unforwarded += n as u64;
        let wait = if n > 0 { Duration::ZERO } else { wait };
        let Some(Fetch::Queue(fetch)) = &mut self.fetch else {
            unreachable!("read off the queue only")
        };
        let mut lost = false;
        fetch.read(&self.consumer, max - n, wait, |f| match f {
            Fetched::Record {
                partition,
                offset,
                payload,
                log_time,
            } => push(chunks, &self.sizes, partition, offset, payload, log_time),
            Fetched::Error(code, _) if offsets_lost(Some(code)) => lost = true,
            Fetched::Error(code, text) => {
                let e = format!("{code}: {text}");
                if self.consumer.context().should_log(&e) {
                    tracing::warn!("kafka: {e}");
                }
            }
        });
        advance(&mut self.offsets, chunks);
        if lost {
            self.on_offset_loss()?;
        }
        Ok(())
    }

    /// Reads records off the consumer's own queue into `chunks`, one call
    /// per record, serving its other events (statistics, rebalances,
    /// errors) on the way; returns how many records it read.
    pub(super) fn poll_consumer(
        &mut self,
        chunks: &mut Vec<Chunk>,
        max: usize,
        wait: Duration,
    ) -> Result<usize> {
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
                    if offsets_lost(e.rdkafka_error_code()) {
                        advance(&mut self.offsets, chunks);
                        self.on_offset_loss()?;
                    } else if self.consumer.context().should_log(&e.to_string()) {
                        tracing::warn!("kafka: {e}");
                    }
                    break;
                }
            };
            let log_time = msg.timestamp().to_millis();
            let payload = msg.payload().unwrap_or_default();
            push(
                chunks,
                &self.sizes,
                msg.partition(),
                msg.offset(),
                payload,
                log_time,
            );
            n += 1;
            // After the first record, take only what is already fetched.
            timeout = Duration::ZERO;
            // Reading the clock per record costs as much as copying it.
            if n % 1024 == 0 && Instant::now() > deadline {
                break;
            }
        }
        advance(&mut self.offsets, chunks);
        Ok(n)
    }
}

/// Whether a consumer error says a partition's next offset is outside its
/// log (see [`KafkaSource::on_offset_loss`]).
fn offsets_lost(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange)
    )
}

/// Appends one record to its partition's chunk (one chunk per partition per
/// poll: fewer, larger batches; order within a partition, all the engine
/// relies on, is kept); [`advance`](super::advance) then moves the
/// partitions' next offsets past them.
fn push(
    chunks: &mut Vec<Chunk>,
    sizes: &ChunkSizes,
    partition: i32,
    offset: i64,
    payload: &[u8],
    log_time: Option<i64>,
) {
    // A fetch brings a run of one partition's records: try the last first.
    let i = match chunks.last() {
        Some(c) if c.partition == partition => Some(chunks.len() - 1),
        _ => chunks.iter().position(|c| c.partition == partition),
    };
    let i = match i {
        Some(i) => i,
        None => {
            chunks.push(sizes.chunk(partition, offset));
            chunks.len() - 1
        }
    };
    // Without a timestamp the record's own event time is not capped.
    chunks[i].push_logged(payload, offset, log_time.unwrap_or(i64::MAX));
}
