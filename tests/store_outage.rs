//! A store that goes away is a pause, not a failure: PostgreSQL stopped
//! under load and started again, or SQLite kept busy by another process,
//! pauses the query (`waiting_for_store`, reads answer 503) and it resumes
//! from its last commit with every window's count exact.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::TestServer;
use common::postgres::Postgres;
use rdkafka::mocking::MockCluster;
use runnel::generate::{GenKind, Generator};

const RECORDS: u64 = 40_000;

/// Records produced per second.
const RATE: u64 = 2_000;
const SEED: u64 = 31;
const SQL: &str = "
CREATE STREAM impressions (ts TIMESTAMP, publisher TEXT, advertiser TEXT, website TEXT,
                           geo TEXT, bid DOUBLE, cookie TEXT)
  WITH (kafka_topic = 'imps', event_time = 'ts', watermark_delay = '2s', start = 'earliest');
CREATE QUERY per_geo AS
SELECT geo, count(*) AS n FROM impressions GROUP BY geo WINDOW 10s";

/// The exact count per (window start, geo) of the records the feed writes.
fn oracle(base: i64) -> BTreeMap<(i64, String), u64> {
    let mut g = Generator::new(GenKind::Impressions, SEED);
    let mut out = BTreeMap::new();
    let mut buf = Vec::new();
    for i in 0..RECORDS {
        buf.clear();
        let ts = base + i as i64;
        g.write_record(ts, &mut buf);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        let geo = v["geo"].as_str().unwrap().to_string();
        *out.entry((ts.div_euclid(10_000) * 10_000, geo))
            .or_default() += 1;
    }
    out
}

/// Starts the paced feed (4000 records/s over 4 partitions, event times
/// 1 ms apart from `base`); `done` is set once all are sent.
fn feed(brokers: &str, base: i64, done: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let brokers = brokers.to_string();
    std::thread::spawn(move || {
        // 20 s of input: the store goes away while records still flow, so
        // the query's next commit meets it, however slow the machine.
        common::feed::produce_paced(&brokers, SEED, base, 1, RATE, |i| i < RECORDS);
        done.store(true, Ordering::SeqCst);
    })
}

async fn query(s: &TestServer) -> serde_json::Value {
    s.get("/queries/per_geo").await.1
}

/// Polls until the query shows `waiting_for_store` and a results read
/// answers 503 naming the store; returns the two answers.
async fn see_the_pause(s: &TestServer) -> (serde_json::Value, serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut paused, mut refused) = (None, None);
    loop {
        let q = query(s).await;
        if q["status"] == "waiting_for_store" {
            paused.get_or_insert(q.clone());
        }
        let (code, r) = s.get("/queries/per_geo/results?limit=1").await;
        if code == 503 {
            refused.get_or_insert(r);
        }
        if let (Some(p), Some(r)) = (&paused, &refused) {
            return (p.clone(), r.clone());
        }
        assert!(
            Instant::now() < deadline,
            "no pause seen: {q}, last read {code}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every record is consumed and every window closed, then
/// checks the results row by row against the oracle.
async fn check_exact(s: &TestServer, expected: &BTreeMap<(i64, String), u64>) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let q = query(s).await;
        let (_, v) = s.get("/queries/per_geo/results?limit=100000").await;
        let mut got: BTreeMap<(i64, String), u64> = BTreeMap::new();
        let mut duplicate = None;
        for r in v["rows"].as_array().into_iter().flatten() {
            let start = runnel::store::time_ms(r["window_start"].as_str().unwrap()).unwrap();
            let key = (start, r["geo"].as_str().unwrap_or("").to_string());
            if got.insert(key.clone(), r["n"].as_u64().unwrap()).is_some() {
                duplicate = Some(key);
            }
        }
        assert!(duplicate.is_none(), "a window written twice: {duplicate:?}");
        if &got == expected {
            assert_eq!(q["counters"]["records_in"], RECORDS, "{q}");
            assert_eq!(q["counters"]["late_records"], 0, "{q}");
            assert_eq!(q["status"], "running", "{q}");
            return;
        }
        if Instant::now() > deadline {
            let wrong: Vec<_> = expected
                .iter()
                .filter(|(k, n)| got.get(*k) != Some(*n))
                .take(5)
                .map(|(k, n)| format!("{k:?}: expected {n}, got {:?}", got.get(k)))
                .collect();
            panic!(
                "results differ from the oracle ({} vs {} rows): {wrong:?}; query {q}",
                got.len(),
                expected.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the query has consumed some records.
async fn wait_consuming(s: &TestServer, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let q = query(s).await;
        if q["counters"]["records_in"].as_u64().unwrap_or(0) >= at_least {
            return;
        }
        assert!(Instant::now() < deadline, "not consuming: {q}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_for_five_seconds_under_load_then_exact_results() {
    let Some(pg) =
        Postgres::start("postgres_stopped_for_five_seconds_under_load_then_exact_results")
    else {
        return;
    };
    let url = pg.create_db("outage");
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("imps", 4, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let env = [("RUNNEL_STORE", url.as_str())];
    let s = TestServer::start_with(dir.path(), &brokers, &env);
    s.sql(SQL).await;
    let base = (chrono::Utc::now().timestamp_millis() - 600_000) / 10_000 * 10_000;
    let done = Arc::new(AtomicBool::new(false));
    let producer = feed(&brokers, base, done.clone());
    wait_consuming(&s, RATE).await;

    pg.stop_fast();
    let stopped = Instant::now();
    let (paused, refused) = see_the_pause(&s).await;
    let m = paused["store_error"].as_str().unwrap_or_default();
    assert!(m.contains("PostgreSQL"), "{paused}");
    let m = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(
        m.starts_with("the store is unavailable: ") && m.ends_with("; retrying"),
        "{refused}"
    );
    assert_eq!(refused["error"]["code"], "store_unavailable", "{refused}");
    if let Some(rest) = Duration::from_secs(5).checked_sub(stopped.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    pg.start_again();

    producer.join().unwrap();
    check_exact(&s, &oracle(base)).await;
    // psql sees the same total.
    assert_eq!(
        pg.psql("outage", "SELECT sum(n) FROM per_geo").trim(),
        RECORDS.to_string()
    );
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_busy_pauses_the_query_then_exact_results() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("imps", 4, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(SQL).await;
    let base = (chrono::Utc::now().timestamp_millis() - 600_000) / 10_000 * 10_000;
    let done = Arc::new(AtomicBool::new(false));
    let producer = feed(&brokers, base, done.clone());
    wait_consuming(&s, RATE).await;

    // Another process holds the write lock past the store's 5 s busy timeout.
    let db = rusqlite::Connection::open(dir.path().join("runnel.db")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let paused = loop {
        let q = query(&s).await;
        if q["status"] == "waiting_for_store" {
            break q;
        }
        assert!(Instant::now() < deadline, "no pause seen: {q}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let m = paused["store_error"].as_str().unwrap_or_default();
    assert!(m.contains("SQLite") && m.contains("locked"), "{paused}");
    db.execute_batch("COMMIT").unwrap();
    drop(db);

    producer.join().unwrap();
    check_exact(&s, &oracle(base)).await;
    s.stop();
}

/// A query that has not committed anything yet pauses too when its first
/// commit meets a busy store: it has no checkpoint to write back, so the
/// pause must find out with a write of its own that the store still refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_busy_before_the_first_commit_pauses_too() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("imps", 4, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(SQL).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while query(&s).await["status"] != "running" {
        assert!(
            Instant::now() < deadline,
            "not running: {}",
            query(&s).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Locked before any record arrives, so before the first commit.
    let db = rusqlite::Connection::open(dir.path().join("runnel.db")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let base = (chrono::Utc::now().timestamp_millis() - 600_000) / 10_000 * 10_000;
    let done = Arc::new(AtomicBool::new(false));
    let producer = feed(&brokers, base, done.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let q = query(&s).await;
        if q["status"] == "waiting_for_store" {
            assert_eq!(q["commits"]["count"], 0, "{q}");
            break;
        }
        assert!(Instant::now() < deadline, "no pause seen: {q}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.execute_batch("COMMIT").unwrap();
    drop(db);
    producer.join().unwrap();
    check_exact(&s, &oracle(base)).await;
    s.stop();
}
