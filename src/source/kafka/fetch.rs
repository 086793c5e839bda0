//! Reading a consumer's records many at a time.
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
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaErrorCode;

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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    use crate::connect::kafka::KafkaConn;
    use crate::model::StartFrom;
    use crate::source::kafka::{KafkaSource, Waiting, open};

    /// Produces records `range` of topic `t`: record `i` goes to partition
    /// `i % 3` with payload `record {i}` and timestamp `1_000_000 + i`.
    fn produce(brokers: &str, range: std::ops::Range<usize>) {
        let producer: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .unwrap();
        for i in range {
            let payload = format!("record {i}");
            let record = BaseRecord::<(), _>::to("t")
                .payload(&payload)
                .partition((i % 3) as i32)
                .timestamp(1_000_000 + i as i64);
            producer.send(record).unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
    }

    /// A source reading all of topic `t` from its earliest records.
    fn connect(brokers: &str, client_id: &str) -> KafkaSource {
        let stop = AtomicBool::new(false);
        KafkaSource::connect(
            &KafkaConn::new(brokers),
            "t",
            client_id,
            StartFrom::Earliest,
            &BTreeMap::new(),
            Waiting::until(&stop),
        )
        .unwrap()
    }

    /// Polls `src` until `want` records were read in all (or `within`
    /// passed); per partition, each record's offset and payload in the
    /// order read.
    fn read(
        src: &mut KafkaSource,
        want: usize,
        within: Duration,
    ) -> BTreeMap<i32, Vec<(i64, String)>> {
        let mut seen: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
        let deadline = Instant::now() + within;
        while seen.values().map(Vec::len).sum::<usize>() < want && Instant::now() < deadline {
            for c in src.poll(700, Duration::from_millis(100)).unwrap() {
                let got = seen.entry(c.partition).or_default();
                for (i, payload) in c.payloads().into_iter().enumerate() {
                    got.push((c.offset(i), String::from_utf8(payload.to_vec()).unwrap()));
                }
            }
        }
        seen
    }

    /// The log end of every partition, asked in one request: record `i`
    /// goes to partition `i % 3`, so after `n` records partition `p` ends
    /// at the count of those, and grows with what is produced after.
    #[test]
    fn log_ends_are_each_partitions_count_of_records() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 3, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let src = connect(&brokers, "log-ends-test");
        let ends = |n: usize| -> BTreeMap<i32, i64> {
            (0..3)
                .map(|p| (p, n.saturating_sub(p as usize).div_ceil(3) as i64))
                .collect()
        };
        let ask = || src.topic_log_ends(Duration::from_secs(10));
        assert_eq!(ask(), Some(ends(0)));
        produce(&brokers, 0..1_000);
        assert_eq!(ask(), Some(ends(1_000)));
        produce(&brokers, 1_000..1_005);
        assert_eq!(ask(), Some(ends(1_005)));
    }

    /// Records of three partitions, produced interleaved, come back in
    /// batches with every partition's order, offsets and timestamps as
    /// sent, while the consumer's own queue still serves the statistics
    /// the caught-up rule reads.
    #[test]
    fn batches_keep_each_partitions_order_and_statistics_flow() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 3, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let n = 3_000;
        produce(&brokers, 0..n);

        let mut src = connect(&brokers, "fetch-test");
        let mut seen: BTreeMap<i32, Vec<(i64, String, i64)>> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut polls = 0;
        while seen.values().map(Vec::len).sum::<usize>() < n && Instant::now() < deadline {
            for c in src.poll(700, Duration::from_millis(100)).unwrap() {
                let got = seen.entry(c.partition).or_default();
                for (i, payload) in c.payloads().into_iter().enumerate() {
                    let text = String::from_utf8(payload.to_vec()).unwrap();
                    got.push((c.offset(i), text, c.log_times[i]));
                }
            }
            polls += 1;
        }
        // At most 700 a poll: the records came in several batches.
        assert!(polls >= n / 700, "{polls} polls");
        for p in 0..3 {
            let got = &seen[&p];
            assert_eq!(got.len(), n / 3, "partition {p}");
            for (k, (offset, text, logged)) in got.iter().enumerate() {
                let i = 3 * k + p as usize;
                assert_eq!(*offset, k as i64, "partition {p}");
                assert_eq!(text, &format!("record {i}"));
                assert_eq!(*logged, 1_000_000 + i as i64);
            }
            assert_eq!(src.offsets()[&p], (n / 3) as i64);
        }
        // Statistics arrive on the consumer's queue, served by each poll:
        // every partition is confirmed caught up.
        let deadline = Instant::now() + Duration::from_secs(20);
        while src.caught_up().len() < 3 && Instant::now() < deadline {
            assert!(
                src.poll(700, Duration::from_millis(100))
                    .unwrap()
                    .is_empty()
            );
        }
        assert_eq!(src.caught_up().len(), 3, "{:?}", src.progress().log_ends);
        assert_eq!(src.unforwarded, 0, "records read one at a time");
    }

    /// A source opened while the broker answers every request 3 s late
    /// still finds its topic: each unanswered ask waits longer than the
    /// last (asks of 2 s each would time out for as long as the broker
    /// stays slow; the test then stops the source after 90 s and fails).
    #[test]
    fn a_source_opened_while_the_broker_answers_slowly_finds_its_topic() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 3, 1).unwrap();
        cluster
            .broker_round_trip_time(1, Duration::from_secs(3))
            .unwrap();
        let kafka = KafkaConn::new(&cluster.bootstrap_servers());
        let stop = AtomicBool::new(false);
        let (done, finished) = std::sync::mpsc::channel();
        let opened = std::thread::scope(|scope| {
            let opening = scope.spawn(|| {
                let opened = open(&kafka, "t", "slow-test", &[], Waiting::until(&stop));
                let _ = done.send(());
                opened.map(|(_, partitions)| partitions)
            });
            if finished.recv_timeout(Duration::from_secs(90)).is_err() {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            opening.join().unwrap()
        });
        assert_eq!(opened.unwrap(), [0, 1, 2]);
    }

    /// A partition added to the topic while a source reads it is found at
    /// the source's next look and read from its beginning, through the
    /// batch queue like the others: its records produced before and after
    /// it was found, each once and in order, while the partitions read all
    /// along go on where they were.
    #[test]
    fn a_partition_added_later_is_read_from_its_beginning() {
        partition_added(Duration::ZERO);
    }

    /// As above while the broker answers every request 3 s late, for
    /// longer than a poll waits: the source still finds the partition
    /// (looking for it holds no poll up) and reads it from its beginning.
    #[test]
    fn a_partition_added_while_the_broker_answers_slowly_is_found() {
        partition_added(Duration::from_secs(3));
    }

    /// A source reads partitions 0 and 1 of topic `t`, then the broker
    /// answers `slow` late and the source looks for new partitions; it
    /// must find partition 2 and read every record of the three once.
    ///
    /// librdkafka's mock cluster cannot add partitions to a topic, so the
    /// source starts as if the three-partition topic had two.
    fn partition_added(slow: Duration) {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 3, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        produce(&brokers, 0..900);

        let stop = AtomicBool::new(false);
        let kafka = KafkaConn::new(&brokers);
        let start = StartFrom::Earliest;
        let (consumer, all) =
            open(&kafka, "t", "discover-test", &[], Waiting::until(&stop)).unwrap();
        assert_eq!(all, [0, 1, 2]);
        let mut src =
            KafkaSource::assign(consumer, "t", vec![0, 1], start, &BTreeMap::new()).unwrap();
        // No look for new partitions until the test asks for one.
        src.discover_every = Duration::from_secs(3600);
        let first = read(&mut src, 600, Duration::from_secs(20));
        assert_eq!(first.keys().copied().collect::<Vec<_>>(), [0, 1]);

        produce(&brokers, 900..1_800);
        cluster.broker_round_trip_time(1, slow).unwrap();
        src.discovery.as_ref().expect("started").ask_now();
        let second = read(&mut src, 1_200, Duration::from_secs(90));
        assert_eq!(src.partitions(), [0, 1, 2]);
        assert_eq!(src.topic_partitions(), 3);
        assert_eq!(src.unforwarded, 0, "records read one at a time");
        for p in 0..3 {
            let got: Vec<_> = first
                .get(&p)
                .into_iter()
                .chain(second.get(&p))
                .flatten()
                .cloned()
                .collect();
            let want: Vec<_> = (0..1_800)
                .filter(|i| i % 3 == p as usize)
                .enumerate()
                .map(|(k, i)| (k as i64, format!("record {i}")))
                .collect();
            assert_eq!(got, want, "partition {p}");
        }
        // Nothing more: every record came once.
        cluster.broker_round_trip_time(1, Duration::ZERO).unwrap();
        for _ in 0..10 {
            assert!(
                src.poll(700, Duration::from_millis(100))
                    .unwrap()
                    .is_empty()
            );
        }
    }
}
