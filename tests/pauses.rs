//! Pauses never change results: input that stops and bursts, a broker that
//! goes down, clean restarts and `kill -9` in the middle of it all give
//! exactly the rows an exact oracle computes from the records produced.
//!
//! Every test produces from the test process (a producer separate from the
//! server) into librdkafka's mock cluster, with event times minutes in the
//! past unless it says otherwise, `watermark_delay = '5s'` and the default
//! `idle_after` of one second — so any pause longer than a second would,
//! under a wall-clock idle rule, close windows early and drop what follows.
//!
//! Run: `cargo test --test pauses`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::TestServer;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use runnel::generate::{GenKind, Generator};
use serde_json::Value;

const TOPIC: &str = "imps";

/// Exact aggregates only (besides the sketch), so every row is checkable.
const SQL: &str = "
CREATE STREAM impressions (ts TIMESTAMP, publisher TEXT, advertiser TEXT, website TEXT,
                           geo TEXT, bid DOUBLE, cookie TEXT)
  WITH (kafka_topic = 'imps', event_time = 'ts', watermark_delay = '5s', start = 'earliest');
CREATE QUERY adnetwork AS
SELECT publisher, geo, count(*) AS imps, sum(bid) AS total_bid,
       count(DISTINCT cookie) AS cookies, approx_distinct(cookie) AS uniques
FROM impressions WHERE geo <> 'unknown' GROUP BY publisher, geo WINDOW 10s";

/// One window and group: (window_start, publisher, geo).
type Key = (String, String, String);

#[derive(Default)]
struct Agg {
    n: i64,
    sum: f64,
    cookies: BTreeSet<String>,
}

/// Produces impressions and keeps the exact oracle of what it produced:
/// record `i` has event time `base + i * step_ms` (the wall clock when
/// `step_ms` is 0) and goes to partition `i % partitions`.
struct Feed {
    producer: BaseProducer,
    generator: Generator,
    base: i64,
    step_ms: i64,
    partitions: usize,
    next: usize,
    oracle: BTreeMap<Key, Agg>,
}

impl Feed {
    /// `base` is rounded down to a window start.
    fn new(brokers: &str, partitions: usize, base: i64, step_ms: i64) -> Self {
        Feed {
            producer: ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("linger.ms", "5")
                .create()
                .unwrap(),
            generator: Generator::new(GenKind::Impressions, 42),
            base: base.div_euclid(10_000) * 10_000,
            step_ms,
            partitions,
            next: 0,
            oracle: BTreeMap::new(),
        }
    }

    /// Event time of the next record.
    fn next_ts(&self) -> i64 {
        match self.step_ms {
            0 => chrono::Utc::now().timestamp_millis(),
            step => self.base + self.next as i64 * step,
        }
    }

    /// Sends one record stamped `ts` to `partition`, outside the oracle.
    fn stray(&mut self, ts: i64, partition: i32) {
        let mut buf = Vec::new();
        self.generator.write_record(ts, &mut buf);
        self.producer
            .send(
                BaseRecord::<(), [u8]>::to(TOPIC)
                    .payload(&buf)
                    .partition(partition),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        self.producer.flush(Duration::from_secs(10)).unwrap();
    }

    /// Produces `count` records at about `rate` records/s, then flushes.
    fn burst(&mut self, count: usize, rate: f64) {
        let start = Instant::now();
        let mut buf = Vec::new();
        for k in 0..count {
            let ts = self.next_ts();
            buf.clear();
            self.generator.write_record(ts, &mut buf);
            let v: Value = serde_json::from_slice(&buf).unwrap();
            let geo = v["geo"].as_str().unwrap().to_string();
            if geo != "unknown" {
                let ws = ts.div_euclid(10_000) * 10_000;
                let key = (
                    runnel::store::format_api_ts(ws),
                    v["publisher"].as_str().unwrap().to_string(),
                    geo,
                );
                let a = self.oracle.entry(key).or_default();
                a.n += 1;
                a.sum += v["bid"].as_f64().unwrap();
                a.cookies.insert(v["cookie"].as_str().unwrap().to_string());
            }
            let partition = (self.next % self.partitions) as i32;
            while let Err((e, _)) = self.producer.send(
                BaseRecord::<(), [u8]>::to(TOPIC)
                    .payload(&buf)
                    .partition(partition),
            ) {
                assert!(e.to_string().contains("Queue full"), "{e}");
                self.producer.poll(Duration::from_millis(5));
            }
            self.next += 1;
            if k % 200 == 0 {
                self.producer.poll(Duration::ZERO);
                let due = Duration::from_secs_f64(k as f64 / rate);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        self.producer.flush(Duration::from_secs(30)).unwrap();
    }
}

/// Every result row, read page by page, keyed by window and group; a
/// duplicate row fails.
async fn all_rows(s: &TestServer) -> BTreeMap<Key, Value> {
    let mut out = BTreeMap::new();
    let mut cursor = String::new();
    loop {
        let path = match cursor.is_empty() {
            true => "/queries/adnetwork/results?limit=1000".to_string(),
            false => format!("/queries/adnetwork/results?limit=1000&after={cursor}"),
        };
        let (st, v) = s.get(&path).await;
        assert_eq!(st, 200, "{v}");
        let page = v["rows"].as_array().unwrap();
        if page.is_empty() {
            return out;
        }
        for r in page {
            let key = (
                r["window_start"].as_str().unwrap().to_string(),
                r["publisher"].as_str().unwrap().to_string(),
                r["geo"].as_str().unwrap().to_string(),
            );
            let prev = out.insert(key.clone(), r.clone());
            assert!(prev.is_none(), "duplicate row {key:?}");
        }
        cursor = v["cursor"].as_str().unwrap().to_string();
    }
}

/// Waits until the server has as many rows as the oracle has groups (the
/// last window closes once the stream has been quiet long enough), then
/// checks every row against the oracle.
async fn wait_and_check(s: &TestServer, oracle: &BTreeMap<Key, Agg>) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut rows = all_rows(s).await;
    while rows.len() < oracle.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rows = all_rows(s).await;
    }
    // Nothing more may come (no window twice, no stray group).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = all_rows(s).await;
    let missing: Vec<_> = oracle.keys().filter(|k| !rows.contains_key(*k)).collect();
    let extra: Vec<_> = rows.keys().filter(|k| !oracle.contains_key(*k)).collect();
    let (_, q) = s.get("/queries/adnetwork").await;
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} of {} rows missing (first {:?}), {} extra (first {:?}); query: {q}",
        missing.len(),
        oracle.len(),
        missing.first(),
        extra.len(),
        extra.first()
    );
    for (key, a) in oracle {
        let r = &rows[key];
        assert_eq!(r["imps"].as_i64(), Some(a.n), "{key:?}: {r}");
        assert_eq!(
            r["cookies"].as_i64(),
            Some(a.cookies.len() as i64),
            "{key:?}: {r}"
        );
        let total = r["total_bid"].as_f64().unwrap();
        assert!(
            (total - a.sum).abs() <= 1e-9 * a.sum.abs().max(1.0),
            "{key:?}: {total} vs {}",
            a.sum
        );
        let exact = a.cookies.len() as f64;
        let u = r["uniques"].as_f64().unwrap();
        assert!(
            (u - exact).abs() <= (exact * 0.02).max(1.0),
            "{key:?}: {u} vs {exact}"
        );
    }
}

fn mock_topic(
    partitions: i32,
) -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
) {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, partitions, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    (cluster, brokers)
}

fn ten_minutes_ago() -> i64 {
    chrono::Utc::now().timestamp_millis() - 600_000
}

/// A replay of old event times (15 s of event time per second) that pauses
/// 3 s, then pauses 3 s again with a clean restart of the server inside the
/// pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_event_times_with_pauses_and_a_restart_in_one() {
    let (_cluster, brokers) = mock_topic(4);
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path(), &brokers);
    s.sql(SQL).await;
    let mut feed = Feed::new(&brokers, 4, ten_minutes_ago(), 1);
    // 30 s of event time per burst: the data ends on a window boundary.
    feed.burst(30_000, 15_000.0);
    std::thread::sleep(Duration::from_secs(3));
    feed.burst(30_000, 15_000.0);
    std::thread::sleep(Duration::from_millis(1_500));
    s.stop();
    s = TestServer::start(dir.path(), &brokers);
    std::thread::sleep(Duration::from_millis(1_500));
    feed.burst(30_000, 15_000.0);
    wait_and_check(&s, &feed.oracle).await;
    let (_, q) = s.get("/queries/adnetwork").await;
    assert_eq!(q["counters"]["late_records"], 0, "{q}");
}

/// Twenty `kill -9` cycles at random moments while a producer sends bursts
/// with random pauses of 0.1–3 s between them, over 4 partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kill_nines_between_bursts_and_pauses() {
    let (_cluster, brokers) = mock_topic(4);
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path(), &brokers);
    s.sql(SQL).await;
    let producer = {
        let brokers = brokers.clone();
        std::thread::spawn(move || {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(12);
            let mut feed = Feed::new(&brokers, 4, ten_minutes_ago(), 2);
            // 24 bursts of 2 500 records: 5 s of event time each, so the
            // data ends on a window boundary.
            for _ in 0..24 {
                feed.burst(2_500, 8_000.0);
                let pause = rng.random_range(100..3_000);
                std::thread::sleep(Duration::from_millis(pause));
            }
            feed.oracle
        })
    };
    let mut rng = rand::rngs::SmallRng::seed_from_u64(21);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2_000))).await;
        s.kill9();
        s = TestServer::start(dir.path(), &brokers);
    }
    let oracle = producer.join().unwrap();
    wait_and_check(&s, &oracle).await;
}

/// A broker that stalls (every request answered 3 s late, for 4 s) while
/// old event times flow, with the producer pausing around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_event_times_through_a_broker_stall() {
    let (cluster, brokers) = mock_topic(4);
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(SQL).await;
    let mut feed = Feed::new(&brokers, 4, ten_minutes_ago(), 1);
    feed.burst(20_000, 10_000.0);
    cluster
        .broker_round_trip_time(1, Duration::from_secs(3))
        .unwrap();
    let stalled = Instant::now();
    feed.burst(10_000, 10_000.0);
    if let Some(rest) = Duration::from_secs(4).checked_sub(stalled.elapsed()) {
        std::thread::sleep(rest);
    }
    cluster.broker_round_trip_time(1, Duration::ZERO).unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    feed.burst(20_000, 10_000.0);
    wait_and_check(&s, &feed.oracle).await;
    let (_, q) = s.get("/queries/adnetwork").await;
    assert_eq!(q["counters"]["late_records"], 0, "{q}");
}

/// A backfill of 200 000 records already in the topic, the broker down for
/// 3 s while the query catches up, then a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_with_the_broker_down_during_catch_up() {
    // 12 partitions: the mock cluster keeps about 5 MiB per partition.
    let (cluster, brokers) = mock_topic(12);
    let mut feed = Feed::new(&brokers, 12, ten_minutes_ago() - 3_600_000, 1);
    feed.burst(200_000, 1e9);
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(SQL).await;
    // Take the broker down once the query is part-way through.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, q) = s.get("/queries/adnetwork").await;
        if q["counters"]["records_in"].as_u64().unwrap_or(0) > 20_000 {
            break;
        }
        assert!(Instant::now() < deadline, "the query read nothing: {q}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.broker_up(1).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.stop();
    let s = TestServer::start(dir.path(), &brokers);
    wait_and_check(&s, &feed.oracle).await;
}

/// A live stream (event time = wall clock) that stops: its last window
/// still closes on the wall clock, with the right rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_that_stops_closes_its_last_window() {
    let (_cluster, brokers) = mock_topic(4);
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(SQL).await;
    // Start at a window boundary about now: 1 record per ms is the wall
    // clock's own pace, so event time stays about now.
    let now = chrono::Utc::now().timestamp_millis();
    let mut feed = Feed::new(&brokers, 4, now + 10_000, 1);
    let wait = Duration::from_millis((feed.base - now).max(0) as u64);
    std::thread::sleep(wait);
    feed.burst(12_000, 1_000.0);
    // The last record is at base + 12 s: its window [base + 10 s,
    // base + 20 s) closes once the wall clock passes its end plus the delay
    // (plus idle_after at most): about 13 s from now.
    wait_and_check(&s, &feed.oracle).await;
    let (_, q) = s.get("/queries/adnetwork").await;
    assert_eq!(q["counters"]["late_records"], 0, "{q}");
}

/// One record stamped 30 minutes ahead among 100 000 on-time ones (event
/// time = the wall clock when produced): every on-time record is counted,
/// and the same again when the query replays the topic from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_stamped_record_makes_no_on_time_record_late() {
    // 8 partitions: the replay needs every record still in the mock
    // broker, which keeps about 5 MiB per partition.
    let (_cluster, brokers) = mock_topic(8);
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(SQL).await;
    let mut feed = Feed::new(&brokers, 8, 0, 0);
    feed.burst(50_000, 25_000.0);
    feed.stray(chrono::Utc::now().timestamp_millis() + 1_800_000, 0);
    feed.burst(50_000, 25_000.0);
    // Its window stays open: the oracle holds only the on-time records.
    wait_and_check(&s, &feed.oracle).await;
    let (_, q) = s.get("/queries/adnetwork").await;
    assert_eq!(q["counters"]["late_records"], 0, "{q}");
    let (st, v) = s.post("/queries/adnetwork/reset?from=earliest", "").await;
    assert_eq!(st, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, q) = s.get("/queries/adnetwork").await;
        if q["counters"]["records_in"] == 100_001 {
            break;
        }
        assert!(Instant::now() < deadline, "the replay did not finish: {q}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_and_check(&s, &feed.oracle).await;
    let (_, q) = s.get("/queries/adnetwork").await;
    assert_eq!(q["counters"]["late_records"], 0, "{q}");
}
