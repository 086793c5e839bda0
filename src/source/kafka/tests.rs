//! The Kafka source against librdkafka's mock cluster, fetching both ways
//! (librdkafka's queue and Runnel's own fetching): order, offsets and log
//! times kept, log ends, partitions added, brokers that answer slowly and
//! leaders that move.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::{KafkaSource, Waiting, open};
use crate::connect::kafka::KafkaConn;
use crate::model::StartFrom;

/// Produces records `range` of topic `t`: record `i` goes to partition
/// `i % 3` with payload `record {i}` and timestamp `1_000_000 + i`.
fn produce(brokers: &str, range: std::ops::Range<usize>) {
    produce_compressed(brokers, range, "none");
}

/// As [`produce`], the producer compressing its batches with `codec`.
fn produce_compressed(brokers: &str, range: std::ops::Range<usize>, codec: &str) {
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("compression.type", codec)
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

/// What partition `p` holds, offset and payload, once records `0..n` were
/// produced (see [`produce`]).
fn held(p: i32, n: usize) -> Vec<(i64, String)> {
    (0..n)
        .filter(|i| i % 3 == p as usize)
        .enumerate()
        .map(|(k, i)| (k as i64, format!("record {i}")))
        .collect()
}

/// A source reading all of topic `t` from its earliest records, off
/// librdkafka's queue or (`wire`) with Runnel's own fetching.
fn connect(brokers: &str, client_id: &str, wire: bool) -> KafkaSource {
    let stop = AtomicBool::new(false);
    let kafka = KafkaConn::new(brokers);
    let (consumer, layout) = open(&kafka, "t", client_id, &[], Waiting::until(&stop)).unwrap();
    let all = layout.partitions.clone();
    let wire = wire.then_some(client_id);
    KafkaSource::assign(
        consumer,
        "t",
        &layout,
        all,
        StartFrom::Earliest,
        &BTreeMap::new(),
        wire,
    )
    .unwrap()
}

/// Polls `src` until `want` records were read in all (or `within`
/// passed); per partition, each record's offset and payload in the
/// order read.
fn read(src: &mut KafkaSource, want: usize, within: Duration) -> BTreeMap<i32, Vec<(i64, String)>> {
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
    let src = connect(&brokers, "log-ends-test", true);
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
    for wire in [false, true] {
        batches_keep_order(wire);
    }
}

fn batches_keep_order(wire: bool) {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 3, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let n = 3_000;
    produce(&brokers, 0..n);

    let mut src = connect(&brokers, "fetch-test", wire);
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
            opened.map(|(_, layout)| layout.partitions)
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
    for wire in [false, true] {
        partition_added(Duration::ZERO, wire);
    }
}

/// As above while the broker answers every request 3 s late, for
/// longer than a poll waits: the source still finds the partition
/// (looking for it holds no poll up) and reads it from its beginning.
#[test]
fn a_partition_added_while_the_broker_answers_slowly_is_found() {
    for wire in [false, true] {
        partition_added(Duration::from_secs(3), wire);
    }
}

/// A source reads partitions 0 and 1 of topic `t`, then the broker
/// answers `slow` late and the source looks for new partitions; it
/// must find partition 2 and read every record of the three once.
///
/// librdkafka's mock cluster cannot add partitions to a topic, so the
/// source starts as if the three-partition topic had two.
fn partition_added(slow: Duration, wire: bool) {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 3, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, 0..900);

    let stop = AtomicBool::new(false);
    let kafka = KafkaConn::new(&brokers);
    let start = StartFrom::Earliest;
    let (consumer, all) = open(&kafka, "t", "discover-test", &[], Waiting::until(&stop)).unwrap();
    assert_eq!(all.partitions, [0, 1, 2]);
    let wire = wire.then_some("discover-test");
    let mut src = KafkaSource::assign(
        consumer,
        "t",
        &all,
        vec![0, 1],
        start,
        &BTreeMap::new(),
        wire,
    )
    .unwrap();
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
        assert_eq!(got, held(p, 1_800), "partition {p}");
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

/// Three brokers, each partition led by another: a source reads them all
/// (Runnel's fetching from each leader), then partition 0's leadership
/// moves to another broker mid-read; every record of the three partitions
/// comes once, in order, the moved one's from its new leader.
#[test]
fn a_partition_whose_leader_moves_is_read_on_from_its_new_leader() {
    for wire in [false, true] {
        let cluster = MockCluster::new(3).unwrap();
        cluster.create_topic("t", 3, 3).unwrap();
        for p in 0..3 {
            cluster.partition_leader("t", p, Some(p + 1)).unwrap();
        }
        let brokers = cluster.bootstrap_servers();
        produce(&brokers, 0..900);
        let mut src = connect(&brokers, "leader-test", wire);
        let first = read(&mut src, 900, Duration::from_secs(20));

        cluster.partition_leader("t", 0, Some(2)).unwrap();
        produce(&brokers, 900..1_800);
        let second = read(&mut src, 900, Duration::from_secs(60));
        for p in 0..3 {
            let got: Vec<_> = (first.get(&p).into_iter().chain(second.get(&p)))
                .flatten()
                .cloned()
                .collect();
            assert_eq!(got, held(p, 1_800), "partition {p}, wire {wire}");
        }
        if wire {
            let Some(super::Fetch::Wire(w)) = &src.fetch else {
                panic!("fetching with librdkafka")
            };
            // Fetching from two brokers now: the first one's thread ended.
            assert_eq!(w.leaders(), 2);
        }
    }
}

/// Batches librdkafka's producer compressed, each codec in turn, are read
/// by Runnel's fetching record for record: order, offsets and payloads.
/// (This librdkafka is built without zstd: `wire/batches.rs` reads zstd
/// batches kafka-protocol's encoder made.)
#[test]
fn batches_a_producer_compressed_are_read_as_sent() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 3, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let codecs = ["gzip", "snappy", "lz4"];
    for (k, codec) in codecs.iter().enumerate() {
        produce_compressed(&brokers, k * 600..(k + 1) * 600, codec);
    }
    let mut src = connect(&brokers, "codec-test", true);
    let n = 600 * codecs.len();
    let seen = read(&mut src, n, Duration::from_secs(20));
    for p in 0..3 {
        assert_eq!(seen[&p], held(p, n), "partition {p}");
    }
}
