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

use std::time::{Duration, Instant};

use common::TestServer;
use common::oracle::{
    Feed, bursts_through_kill_nines, mock_topic, ten_minutes_ago, wait_and_check, wait_for_records,
};

/// Exact aggregates only (besides the sketch), so every row is checkable.
const SQL: &str = "
CREATE STREAM impressions (ts TIMESTAMP, publisher TEXT, advertiser TEXT, website TEXT,
                           geo TEXT, bid DOUBLE, cookie TEXT)
  WITH (kafka_topic = 'imps', event_time = 'ts', watermark_delay = '5s', start = 'earliest');
CREATE QUERY adnetwork AS
SELECT publisher, geo, count(*) AS imps, sum(bid) AS total_bid,
       count(DISTINCT cookie) AS cookies, approx_distinct(cookie) AS uniques
FROM impressions WHERE geo <> 'unknown' GROUP BY publisher, geo WINDOW 10s";

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

/// A backlog of 80 windows (80 000 records over 4 partitions, what the
/// mock cluster keeps; event times from twenty minutes ago) read from the
/// start by a query created after it, with a `kill -9` while it catches
/// up: the restarted server goes on from the last commit and ends with
/// exactly the oracle's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_read_from_the_start_through_a_kill_nine() {
    let (_cluster, brokers) = mock_topic(4);
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    let mut feed = Feed::new(&brokers, 4, ten_minutes_ago() - 600_000, 10);
    feed.burst(80_000, 1_000_000.0);
    s.sql(SQL).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, q) = s.get("/queries/adnetwork").await;
        if q["counters"]["records_in"].as_u64() >= Some(20_000) {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {q}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.kill9();
    let s = TestServer::start(dir.path(), &brokers);
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
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(SQL).await;
    // 24 bursts with pauses of 0.1–3 s, 20 kills.
    let (s, oracle) =
        bursts_through_kill_nines(s, dir.path(), &brokers, (24, 3_000, 20), (12, 21)).await;
    wait_and_check(&s, &oracle).await;
}

/// A server fetching with Runnel's own Kafka fetching (the default on
/// plain connections), or with librdkafka's (`own_fetch = false`, as TLS
/// and SASL connections always do).
fn start_fetching(dir: &std::path::Path, brokers: &str, own_fetch: bool) -> TestServer {
    let config = dir.join("runnel.toml");
    std::fs::write(&config, format!("own_fetch = {own_fetch}\n")).unwrap();
    let env = [("RUNNEL_CONFIG", config.to_str().unwrap())];
    TestServer::start_with(&dir.join("data"), brokers, &env)
}

/// A broker that stalls (every request answered 3 s late, for 4 s) while
/// old event times flow, with the producer pausing around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_event_times_through_a_broker_stall() {
    broker_stall(true).await;
}

/// The same, librdkafka fetching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_event_times_through_a_broker_stall_fetched_by_librdkafka() {
    broker_stall(false).await;
}

async fn broker_stall(own_fetch: bool) {
    let (cluster, brokers) = mock_topic(4);
    let dir = tempfile::tempdir().unwrap();
    let s = start_fetching(dir.path(), &brokers, own_fetch);
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
    backfill_broker_down(true).await;
}

/// The same, librdkafka fetching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_with_the_broker_down_during_catch_up_fetched_by_librdkafka() {
    backfill_broker_down(false).await;
}

async fn backfill_broker_down(own_fetch: bool) {
    // 12 partitions: the mock cluster keeps about 5 MiB per partition.
    let (cluster, brokers) = mock_topic(12);
    let mut feed = Feed::new(&brokers, 12, ten_minutes_ago() - 3_600_000, 1);
    feed.burst(200_000, 1e9);
    let dir = tempfile::tempdir().unwrap();
    let s = start_fetching(dir.path(), &brokers, own_fetch);
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
    let s = start_fetching(dir.path(), &brokers, own_fetch);
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
    wait_for_records(&s, "adnetwork", 100_001).await;
    wait_and_check(&s, &feed.oracle).await;
    let (_, q) = s.get("/queries/adnetwork").await;
    assert_eq!(q["counters"]["late_records"], 0, "{q}");
}
