//! Late records kept, end to end: records arriving after their window
//! closed land in `GET /queries/{id}/late` and `late('q')` with their
//! partitions and offsets (produced to a mock Kafka cluster, so offsets
//! are known), and after kill -9 in the middle of a run of late records the
//! late table holds each of them exactly once.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::TestServer;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

const SQL: &str = "
CREATE STREAM clicks (ts TIMESTAMP, page TEXT, n BIGINT)
  WITH (kafka_topic = 'clicks', event_time = 'ts', watermark_delay = '1ms', start = 'earliest');
CREATE QUERY q AS SELECT page, count(*) AS c FROM clicks GROUP BY page WINDOW 10s";

fn producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .create()
        .unwrap()
}

/// Produces `(partition, event time, page)` records in order and waits
/// until they are delivered.
fn produce(p: &BaseProducer, records: &[(i32, i64, &str)]) {
    for (partition, ts, page) in records {
        let payload = format!(r#"{{"ts": {ts}, "page": "{page}", "n": 1}}"#);
        loop {
            let r = BaseRecord::<(), str>::to("clicks")
                .payload(payload.as_str())
                .partition(*partition);
            match p.send(r) {
                Ok(()) => break,
                Err(_) => {
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_secs(10)).unwrap();
}

async fn counter(s: &TestServer, name: &str) -> u64 {
    let (_, q) = s.get("/queries/q").await;
    q["counters"][name].as_u64().unwrap_or(0)
}

async fn wait_for(s: &TestServer, what: &str, mut done: impl AsyncFnMut(&TestServer) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(s).await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every late row, by (partition, offset), read page by page; panics on a
/// (partition, offset) seen twice.
async fn late_rows(s: &TestServer) -> BTreeMap<(i64, i64), Value> {
    let mut out = BTreeMap::new();
    let mut after = String::new();
    loop {
        let (status, v) = s
            .get(&format!("/queries/q/late?limit=500&after={after}"))
            .await;
        assert_eq!(status, 200, "{v}");
        for r in v["rows"].as_array().unwrap() {
            let key = (
                r["_partition"].as_i64().unwrap(),
                r["_offset"].as_i64().unwrap(),
            );
            assert!(
                out.insert(key, r.clone()).is_none(),
                "late record {key:?} twice"
            );
        }
        if v["has_more"] != true {
            return out;
        }
        after = v["cursor"].as_str().unwrap().to_string();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_records_land_in_the_late_table_once_across_kill_dash_nine() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("clicks", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path(), &brokers);
    s.sql(SQL).await;
    let p = producer(&brokers);
    // Windows of 10 s from `base`, ten minutes ago.
    let base = (chrono::Utc::now().timestamp_millis() - 600_000) / 10_000 * 10_000;

    // p0 offsets 0, 1 and p1 offsets 0, 1: each partition's watermark passes
    // 25 s, so [base, base + 10s) is closed for both.
    produce(
        &p,
        &[
            (0, base + 1_000, "a"),
            (1, base + 2_000, "b"),
            (0, base + 25_000, "a"),
            (1, base + 26_000, "b"),
        ],
    );
    wait_for(&s, "the first window to close", async |s| {
        let (_, v) = s.get("/queries/q/results").await;
        v["rows"].as_array().is_some_and(|r| !r.is_empty())
    })
    .await;
    // p0 offset 2: late (its partition's watermark 25 s − 1 ms of delay,
    // past the window's end 10 s); p1 offset 2: late (26 s − 1 ms); p1
    // offset 3: on time; p1 offset 4: late (27 s − 1 ms). `_late_ms` is
    // that watermark minus the record's event time.
    produce(
        &p,
        &[
            (0, base + 3_000, "x"),
            (1, base + 5_000, "y"),
            (1, base + 27_000, "b"),
            (1, base + 4_000, "z"),
        ],
    );
    wait_for(&s, "three late records", async |s| {
        counter(s, "late_records").await == 3 && late_rows(s).await.len() == 3
    })
    .await;
    let rows = late_rows(&s).await;
    let got: Vec<_> = rows
        .iter()
        .map(|(k, r)| (*k, r["_late_ms"].as_i64().unwrap(), r["page"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            ((0, 2), 25_000 - 1 - 3_000, Value::from("x")),
            ((1, 2), 26_000 - 1 - 5_000, Value::from("y")),
            ((1, 4), 27_000 - 1 - 4_000, Value::from("z")),
        ]
    );
    let first = &rows[&(0, 2)];
    assert_eq!(first["_missed"].as_str().unwrap().matches('/').count(), 1);
    // The same through SQL.
    let v = s
        .sql("SELECT _partition, _offset, page FROM late('q') ORDER BY _partition, _offset")
        .await;
    let sql_rows = v["results"][0]["rows"].as_array().unwrap().clone();
    let sql_keys: Vec<(i64, i64)> = sql_rows
        .iter()
        .map(|r| (r[0].as_i64().unwrap(), r[1].as_i64().unwrap()))
        .collect();
    assert_eq!(sql_keys, [(0, 2), (1, 2), (1, 4)], "{v}");
    let (status, v) = s.get("/queries/q/late?format=xml").await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = s.get("/queries/q/late?after=soon").await;
    assert_eq!(status, 400, "{v}");

    // A run of late records on p0 (offsets 3 ..), every one late for
    // [base, base + 10s), with kill -9 in its middle.
    const RUN: i64 = 3_000;
    let producing = {
        let brokers = brokers.clone();
        std::thread::spawn(move || {
            let p = producer(&brokers);
            for chunk in 0..30 {
                let recs: Vec<(i32, i64, &str)> = (0..RUN / 30)
                    .map(|i| (0, base + (chunk * 100 + i) % 9_000, "late"))
                    .collect();
                produce(&p, &recs);
                std::thread::sleep(Duration::from_millis(60));
            }
        })
    };
    wait_for(&s, "some of the run to be counted", async |s| {
        counter(s, "late_records").await > 3 + RUN as u64 / 10
    })
    .await;
    s.kill9();
    s = TestServer::start(dir.path(), &brokers);
    producing.join().unwrap();
    wait_for(&s, "the whole run in the late table", async |s| {
        late_rows(s).await.len() as i64 >= 3 + RUN
    })
    .await;
    // Settle: nothing more arrives, and nothing is duplicated.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows = late_rows(&s).await;
    let p0: Vec<i64> = rows.keys().filter(|k| k.0 == 0).map(|k| k.1).collect();
    assert_eq!(p0, (2..3 + RUN).collect::<Vec<_>>());
    assert_eq!(rows.len() as i64, 3 + RUN);
    assert_eq!(counter(&s, "late_records").await, 3 + RUN as u64);
    // Dropping the query drops its late table.
    let tables = || {
        let db = rusqlite::Connection::open(dir.path().join("runnel.db")).unwrap();
        let sql = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'q:late'";
        db.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap()
    };
    assert_eq!(tables(), 1);
    let (status, v) = s.client_delete("/queries/q").await;
    assert_eq!(status, 200, "{v}");
    let (status, _) = s.get("/queries/q/late").await;
    assert_eq!(status, 404);
    assert_eq!(tables(), 0);
}
