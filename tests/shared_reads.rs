//! One read per stream: queries over the same stream on one server share
//! one consumer and decoder, and each still gives exactly the rows an exact
//! oracle computes — while another query catches up from the start of the
//! topic, after one is dropped, and across `kill -9`.
//!
//! Input pauses and bursts, with event times ten minutes in the past (see
//! `tests/pauses.rs` for why that is the hard case).
//!
//! Run: `cargo test --test shared_reads`.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use common::oracle::{
    Feed, bursts_through_kill_nines, by_geo, by_window, mock_topic, ten_minutes_ago,
    wait_and_check, wait_and_check_query, wait_for_records,
};

const STREAM: &str = "
CREATE STREAM impressions (ts TIMESTAMP, publisher TEXT, advertiser TEXT, website TEXT,
                           geo TEXT, bid DOUBLE, cookie TEXT)
  WITH (kafka_topic = 'imps', event_time = 'ts', watermark_delay = '5s', start = 'earliest')";

const ADNETWORK: &str = "
CREATE QUERY adnetwork AS
SELECT publisher, geo, count(*) AS imps, sum(bid) AS total_bid,
       count(DISTINCT cookie) AS cookies, approx_distinct(cookie) AS uniques
FROM impressions WHERE geo <> 'unknown' GROUP BY publisher, geo WINDOW 10s";

/// Reads columns `adnetwork` does not (`website`), so the shared decoder
/// must widen when it joins.
const BY_GEO: &str = "
CREATE QUERY by_geo AS
SELECT geo, count(*) AS imps, sum(bid) AS total_bid,
       count(DISTINCT cookie) AS cookies, approx_distinct(cookie) AS uniques
FROM impressions WHERE geo <> 'unknown' AND website <> '' GROUP BY geo WINDOW 10s";

/// Reads only columns `adnetwork` reads.
const GEO_ALL: &str = "
CREATE QUERY geo_all AS
SELECT geo, count(*) AS imps, sum(bid) AS total_bid,
       count(DISTINCT cookie) AS cookies, approx_distinct(cookie) AS uniques
FROM impressions WHERE geo <> 'unknown' GROUP BY geo WINDOW 10s";

const BY_ADVERTISER: &str = "
CREATE QUERY by_advertiser AS
SELECT advertiser, count(*) AS imps FROM impressions GROUP BY advertiser WINDOW 10s";

/// Metric `name` of stream `impressions`, from `GET /metrics`.
/// Another window over the same batches: 20 s, closed 3 s after its end.
const BY_GEO_20S: &str = "
CREATE QUERY by_geo_20s AS
SELECT geo, count(*) AS imps, sum(bid) AS total_bid,
       count(DISTINCT cookie) AS cookies, approx_distinct(cookie) AS uniques
FROM impressions WHERE geo <> 'unknown' GROUP BY geo WINDOW 20s GRACE 3s";

async fn stream_metric(s: &TestServer, name: &str) -> u64 {
    let prefix = format!("{name}{{stream=\"impressions\"}} ");
    let text = s.get_text("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// The number of readers of stream `impressions`.
async fn readers(s: &TestServer) -> u64 {
    stream_metric(s, "runnel_stream_readers").await
}

/// Waits until the stream has `n` readers.
async fn wait_for_readers(s: &TestServer, n: u64) {
    wait_for_metric(s, "runnel_stream_readers", n).await;
}

/// Waits until the stream's metric `name` is `n`.
async fn wait_for_metric(s: &TestServer, name: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = stream_metric(s, name).await;
        if now == n {
            return;
        }
        assert!(Instant::now() < deadline, "{name} {now}, not {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server on `dir`'s `data` folder whose readers keep their latest
/// `keep` records for late joiners; started again by [`restart`].
fn start_keeping(dir: &std::path::Path, brokers: &str, keep: usize) -> TestServer {
    let config = dir.join("runnel.toml");
    std::fs::write(&config, format!("shared_read_keep = {keep}\n")).unwrap();
    restart(dir, brokers)
}

/// Starts the server of [`start_keeping`] again, on the same data.
fn restart(dir: &std::path::Path, brokers: &str) -> TestServer {
    let config = dir.join("runnel.toml");
    let env = [("RUNNEL_CONFIG", config.to_str().unwrap())];
    TestServer::start_with(&dir.join("data"), brokers, &env)
}

/// Asserts that each of `queries` took `records` records, none late.
async fn assert_read_once(s: &TestServer, queries: &[&str], records: u64) {
    for q in queries {
        let (_, v) = s.get(&format!("/queries/{q}")).await;
        assert_eq!(v["counters"]["late_records"], 0, "{v}");
        assert_eq!(v["counters"]["records_in"], records, "{v}");
    }
}

/// Queries added from the start of the topic while another is live: two
/// 20 000 records behind take the polls the reader kept (one decoding them
/// again for a column the reader did not decode) and join at once; one
/// 60 000 records behind, past what the reader keeps, catches up on a
/// reader of its own, then joins the live one. One reader again, and every
/// query's rows equal the oracle; dropping the last one disturbs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_join_a_live_read_from_the_start_then_share_it() {
    let (_cluster, brokers) = mock_topic(4);
    let dir = tempfile::tempdir().unwrap();
    // The reader keeps its latest 30 000 records for late joiners.
    let s = start_keeping(dir.path(), &brokers, 30000);
    s.sql(&format!("{STREAM}; {ADNETWORK}")).await;
    let mut feed = Feed::new(&brokers, 4, ten_minutes_ago(), 1);
    feed.burst(20_000, 20_000.0);
    wait_for_readers(&s, 1).await;
    // 20 000 records behind the live reader, within the polls it keeps
    // (which lack `website`: `by_geo` decodes them again).
    s.sql(&format!("{GEO_ALL}; {BY_GEO}")).await;
    feed.burst(40_000, 20_000.0);
    // 60 000 behind, past what the reader keeps: a reader of its own, which
    // hands over once it has caught up.
    s.sql(BY_ADVERTISER).await;
    feed.burst(20_000, 10_000.0);
    wait_for_readers(&s, 1).await;
    let (st, v) = s.post("/sql", "DROP QUERY by_advertiser").await;
    assert_eq!(st, 200, "{v}");
    std::thread::sleep(Duration::from_millis(1_500));
    feed.burst(20_000, 10_000.0);
    wait_and_check(&s, &feed.oracle).await;
    wait_and_check_query(&s, "by_geo", &["geo"], &by_geo(&feed.oracle)).await;
    wait_and_check_query(&s, "geo_all", &["geo"], &by_geo(&feed.oracle)).await;
    assert_eq!(readers(&s).await, 1);
    // The live read and the catch-up: a consumer each, none for the joiners.
    for started in ["readers", "consumers"] {
        let metric = format!("runnel_stream_{started}_started_total");
        assert_eq!(stream_metric(&s, &metric).await, 2, "{metric}");
    }
    assert_read_once(&s, &["adnetwork", "by_geo", "geo_all"], 100_000).await;
}

/// Four queries one script creates over a backlog of 60 000 records, from
/// the start of the topic, with readers keeping only their last 1 000
/// records: they wait for the script and for one another, then subscribe
/// together, so all four take the first poll of one reader, which one of
/// them connected; started one by one, each later query would find the
/// reader past its offsets and catch up on a reader of its own. One reader
/// and one Kafka consumer in all (a query joining a reader connects none),
/// and every query's rows equal the oracle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_one_script_creates_over_a_backlog_share_one_read_from_the_start() {
    let (_cluster, brokers) = mock_topic(4);
    let dir = tempfile::tempdir().unwrap();
    let s = start_keeping(dir.path(), &brokers, 1000);
    let mut feed = Feed::new(&brokers, 4, ten_minutes_ago(), 1);
    feed.burst(60_000, 30_000.0);
    s.sql(&format!(
        "{STREAM}; {ADNETWORK}; {GEO_ALL}; {BY_GEO}; {BY_ADVERTISER}"
    ))
    .await;
    std::thread::sleep(Duration::from_millis(1_500));
    feed.burst(20_000, 10_000.0);
    wait_and_check(&s, &feed.oracle).await;
    wait_and_check_query(&s, "by_geo", &["geo"], &by_geo(&feed.oracle)).await;
    wait_and_check_query(&s, "geo_all", &["geo"], &by_geo(&feed.oracle)).await;
    assert_eq!(
        stream_metric(&s, "runnel_stream_readers_started_total").await,
        1
    );
    assert_eq!(
        stream_metric(&s, "runnel_stream_consumers_started_total").await,
        1
    );
    assert_eq!(readers(&s).await, 1);
}

/// Three queries sharing a reader through ten `kill -9`s at random moments
/// between bursts and pauses: each restart restores each query from its own
/// checkpoint (at offsets of its own), and every query's rows equal the
/// oracle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_sharing_a_read_through_kill_nines_equal_the_oracle() {
    let (_cluster, brokers) = mock_topic(4);
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(&format!("{STREAM}; {ADNETWORK}; {BY_GEO}; {BY_ADVERTISER}"))
        .await;
    // 16 bursts with pauses of 0.1–2.5 s, 10 kills.
    let (s, oracle) =
        bursts_through_kill_nines(s, dir.path(), &brokers, (16, 2_500, 10), (7, 70)).await;
    wait_and_check(&s, &oracle).await;
    wait_and_check_query(&s, "by_geo", &["geo"], &by_geo(&oracle)).await;
    wait_for_readers(&s, 1).await;
}

/// A query created from the start of the topic while another is live and
/// 80 000 records in, past what the reader keeps, so it catches up on a
/// reader of its own — and the broker stalls (every request answered 2 s
/// late, for 4 s) while the live reader reads, the new query starts and
/// the producer goes on; the server is killed with SIGKILL once the
/// catch-up reader has started.
/// After the restart both queries' rows equal the oracle, no record is
/// late, each query took every record once, and one reader is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_through_a_broker_stall_and_a_kill_nine_hands_over_exactly() {
    let (cluster, brokers) = mock_topic(4);
    let dir = tempfile::tempdir().unwrap();
    let s = start_keeping(dir.path(), &brokers, 1000);
    s.sql(&format!("{STREAM}; {ADNETWORK}")).await;
    let mut feed = Feed::new(&brokers, 4, ten_minutes_ago(), 1);
    feed.burst(20_000, 20_000.0);
    feed.burst(60_000, 1e9);
    wait_for_records(&s, "adnetwork", 80_000).await;
    cluster
        .broker_round_trip_time(1, Duration::from_secs(2))
        .unwrap();
    let stalled = Instant::now();
    s.sql(BY_GEO).await;
    feed.burst(10_000, 10_000.0);
    if let Some(rest) = Duration::from_secs(4).checked_sub(stalled.elapsed()) {
        std::thread::sleep(rest);
    }
    cluster.broker_round_trip_time(1, Duration::ZERO).unwrap();
    // 80 000 behind with 1 000 kept: the catch-up read is a reader of its
    // own. (How a source opened during a stall finds its topic is
    // `a_source_opened_while_the_broker_answers_slowly_finds_its_topic`.)
    wait_for_metric(&s, "runnel_stream_readers_started_total", 2).await;
    s.kill9();
    let s = restart(dir.path(), &brokers);
    std::thread::sleep(Duration::from_millis(1_500));
    feed.burst(10_000, 10_000.0);
    wait_and_check(&s, &feed.oracle).await;
    wait_and_check_query(&s, "by_geo", &["geo"], &by_geo(&feed.oracle)).await;
    wait_for_readers(&s, 1).await;
    assert_read_once(&s, &["adnetwork", "by_geo"], 100_000).await;
}

/// One of three queries sharing a read is reset to the start of the topic
/// while records flow: it replays everything on a catch-up reader of its
/// own and hands over, while the other two go on reading once. Every
/// query's rows equal the oracle; the two took each record once, the reset
/// one took each once since its reset (its counters start again), and no
/// record was late for any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_one_query_leaves_the_others_reading_once() {
    let (_cluster, brokers) = mock_topic(4);
    let dir = tempfile::tempdir().unwrap();
    let s = start_keeping(dir.path(), &brokers, 1000);
    s.sql(&format!("{STREAM}; {ADNETWORK}; {GEO_ALL}; {BY_GEO}"))
        .await;
    let mut feed = Feed::new(&brokers, 4, ten_minutes_ago(), 1);
    feed.burst(30_000, 20_000.0);
    std::thread::sleep(Duration::from_millis(1_200));
    feed.burst(30_000, 20_000.0);
    let (st, v) = s.post("/queries/geo_all/reset?from=earliest", "").await;
    assert_eq!(st, 200, "{v}");
    feed.burst(20_000, 10_000.0);
    std::thread::sleep(Duration::from_millis(1_200));
    feed.burst(20_000, 10_000.0);
    wait_and_check(&s, &feed.oracle).await;
    wait_and_check_query(&s, "by_geo", &["geo"], &by_geo(&feed.oracle)).await;
    wait_and_check_query(&s, "geo_all", &["geo"], &by_geo(&feed.oracle)).await;
    wait_for_readers(&s, 1).await;
    assert_eq!(
        stream_metric(&s, "runnel_stream_readers_started_total").await,
        2
    );
    assert_read_once(&s, &["adnetwork", "by_geo", "geo_all"], 100_000).await;
}

/// The query that started a reader is dropped, and another query sharing
/// it fails on a record it cannot compute (a website cast to an integer),
/// while records flow: the reader goes on for the rest, whose rows equal
/// the oracle and which took each record once; the failed query says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_dropped_or_failing_leaves_the_others_reading() {
    let (_cluster, brokers) = mock_topic(4);
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    // `website` is never a number: the cast fails on the first record.
    let failing = "
CREATE QUERY by_site_number AS
SELECT geo, sum(CAST(website AS INT)) AS n FROM impressions GROUP BY geo WINDOW 10s";
    s.sql(&format!("{STREAM}; {ADNETWORK}")).await;
    let mut feed = Feed::new(&brokers, 4, ten_minutes_ago(), 1);
    feed.burst(20_000, 20_000.0);
    wait_for_readers(&s, 1).await;
    s.sql(&format!("{GEO_ALL}; {BY_GEO}")).await;
    feed.burst(20_000, 20_000.0);
    s.sql(failing).await;
    let (st, v) = s.post("/sql", "DROP QUERY adnetwork").await;
    assert_eq!(st, 200, "{v}");
    feed.burst(20_000, 20_000.0);
    std::thread::sleep(Duration::from_millis(1_200));
    feed.burst(40_000, 20_000.0);
    wait_and_check_query(&s, "by_geo", &["geo"], &by_geo(&feed.oracle)).await;
    wait_and_check_query(&s, "geo_all", &["geo"], &by_geo(&feed.oracle)).await;
    let (_, v) = s.get("/queries/by_site_number").await;
    assert_eq!(v["status"], "failed", "{v}");
    let why = v.to_string();
    assert!(
        why.contains("website") || why.contains("Cannot cast"),
        "{v}"
    );
    for q in ["by_geo", "geo_all"] {
        let (_, v) = s.get(&format!("/queries/{q}")).await;
        assert_eq!(v["status"], "running", "{v}");
    }
    assert_read_once(&s, &["by_geo", "geo_all"], 100_000).await;
    assert_eq!(readers(&s).await, 1);
}

/// Queries with different windows (10 s; 20 s with a grace of 3 s) over
/// one read: each finds its own windows in the batches they share (two
/// sharing the 10 s ones) and judges them against its own watermark.
/// Bursts with pauses, and between them a record far behind every
/// watermark in a different partition each time: every query counts
/// each such record late, and every query's rows equal the oracle (by
/// 20 s windows for the one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_with_different_windows_over_one_read_judge_their_own_records() {
    let (_cluster, brokers) = mock_topic(4);
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(&format!("{STREAM}; {ADNETWORK}; {GEO_ALL}; {BY_GEO_20S}"))
        .await;
    // One event-time millisecond per record: a burst of 20 000 is 20 s.
    let base = ten_minutes_ago().div_euclid(20_000) * 20_000;
    let mut feed = Feed::new(&brokers, 4, base, 1);
    let mut late = 0;
    for round in 0..5 {
        feed.burst(20_000, 20_000.0);
        std::thread::sleep(Duration::from_millis(1_200));
        // From the second burst on, each partition's watermark is past
        // `base + 35 s`, so the first 20 s window closed, grace and all.
        if round > 0 {
            feed.stray(base + 1_000, round % 4);
            late += 1;
        }
    }
    wait_and_check(&s, &feed.oracle).await;
    wait_and_check_query(&s, "geo_all", &["geo"], &by_geo(&feed.oracle)).await;
    let by_20s = by_window(&by_geo(&feed.oracle), base, 20_000);
    wait_and_check_query(&s, "by_geo_20s", &["geo"], &by_20s).await;
    for q in ["adnetwork", "geo_all", "by_geo_20s"] {
        let (_, v) = s.get(&format!("/queries/{q}")).await;
        assert_eq!(v["counters"]["late_records"], late, "{v}");
        assert_eq!(v["counters"]["records_in"], 100_000 + late, "{v}");
    }
    assert_eq!(readers(&s).await, 1);
}
