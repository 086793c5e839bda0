//! End to end: the real server, librdkafka's mock cluster as broker, a real
//! producer, the canonical ad-network query, every row checked against an
//! oracle, then a restart on the same data dir.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use common::TestServer;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use runnel::generate::{GenKind, Generator};
use serde_json::Value;

const TOPIC: &str = "impressions";

#[derive(Default, Debug, Clone)]
struct Agg {
    n: i64,
    sum: f64,
    cookies: HashSet<String>,
}

type Key = (String, String, String); // window_start, publisher, geo

fn ts_text(ms: i64) -> String {
    runnel::store::format_api_ts(ms)
}

/// Produces `count` impressions starting at record `from`, 4 partitions,
/// event times 0.4 ms apart from `base_ms`, and folds them into the oracle.
fn produce(
    producer: &BaseProducer,
    from: usize,
    count: usize,
    base_ms: i64,
    oracle: &mut HashMap<Key, Agg>,
) {
    let mut generator = Generator::new(GenKind::Impressions, 7 + from as u64);
    let mut buf = Vec::new();
    for i in from..from + count {
        let ts = base_ms + ((i - from) as i64 * 2) / 5;
        buf.clear();
        generator.write_record(ts, &mut buf);
        let v: Value = serde_json::from_slice(&buf).unwrap();
        let geo = v["geo"].as_str().unwrap().to_string();
        if geo != "unknown" {
            let ws = ts.div_euclid(10_000) * 10_000;
            let a = oracle
                .entry((
                    ts_text(ws),
                    v["publisher"].as_str().unwrap().to_string(),
                    geo,
                ))
                .or_default();
            a.n += 1;
            a.sum += v["bid"].as_f64().unwrap();
            a.cookies.insert(v["cookie"].as_str().unwrap().to_string());
        }
        let partition = (i % 4) as i32;
        loop {
            match producer.send(
                BaseRecord::<(), [u8]>::to(TOPIC)
                    .payload(&buf)
                    .partition(partition),
            ) {
                Ok(()) => break,
                Err((e, _)) => {
                    assert!(format!("{e}").contains("Queue full"), "{e}");
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        if i % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Polls results with the cursor until `want` rows arrived.
async fn collect(
    s: &TestServer,
    query: &str,
    cursor: &mut String,
    want: usize,
    rows: &mut Vec<Value>,
) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while rows.len() < want {
        assert!(
            Instant::now() < deadline,
            "only {} of {want} rows arrived",
            rows.len()
        );
        let (st, v) = s
            .get(&format!(
                "/queries/{query}/results?after={cursor}&limit=5000"
            ))
            .await;
        assert_eq!(st, 200, "{v}");
        let page = v["rows"].as_array().unwrap();
        if page.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        rows.extend(page.iter().cloned());
        *cursor = v["cursor"].as_str().unwrap().to_string();
    }
}

fn check(rows: &[Value], oracle: &HashMap<Key, Agg>) {
    let mut seen = HashSet::new();
    for r in rows {
        let key = (
            r["window_start"].as_str().unwrap().to_string(),
            r["publisher"].as_str().unwrap().to_string(),
            r["geo"].as_str().unwrap().to_string(),
        );
        assert!(seen.insert(key.clone()), "duplicate row {key:?}");
        let a = oracle
            .get(&key)
            .unwrap_or_else(|| panic!("row not in oracle: {r}"));
        assert_eq!(r["imps"].as_i64().unwrap(), a.n, "{key:?}");
        let avg = a.sum / a.n as f64;
        assert!(
            (r["avg_bid"].as_f64().unwrap() - avg).abs() < 1e-9,
            "{key:?}"
        );
        let exact = a.cookies.len() as f64;
        let u = r["uniques"].as_f64().unwrap();
        assert!(
            (u - exact).abs() <= (exact * 0.02).max(1.0),
            "{key:?}: {u} vs {exact}"
        );
    }
    assert_eq!(seen.len(), oracle.len(), "every oracle group has a row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adnetwork_end_to_end_and_restart() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 4, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(
        "CREATE STREAM impressions (
           ts TIMESTAMP, publisher TEXT, advertiser TEXT, website TEXT,
           geo TEXT, bid DOUBLE, cookie TEXT
         ) WITH (kafka_topic = 'impressions', format = 'json', event_time = 'ts',
                 watermark_delay = '2s', start = 'earliest')",
    )
    .await;
    let (st, v) = s
        .post(
            "/queries",
            "CREATE QUERY adnetwork AS
             SELECT publisher, geo, avg(bid) AS avg_bid, count(*) AS imps,
                    approx_distinct(cookie) AS uniques
             FROM impressions WHERE geo <> 'unknown'
             GROUP BY publisher, geo WINDOW 10s",
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["id"], "adnetwork");

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .unwrap();
    let mut oracle = HashMap::new();
    let started = Instant::now();
    // Event time two minutes behind the wall clock, spanning 40 s: windows
    // close on the watermark, the last one when the stream goes quiet.
    let now = chrono::Utc::now().timestamp_millis();
    produce(&producer, 0, 100_000, now - 120_000, &mut oracle);
    let mut cursor = String::new();
    let mut rows = Vec::new();
    collect(&s, "adnetwork", &mut cursor, oracle.len(), &mut rows).await;
    let elapsed = started.elapsed();
    check(&rows, &oracle);
    let (_, q) = s.get("/queries/adnetwork").await;
    assert_eq!(q["counters"]["records_in"], 100_000, "{q}");
    assert_eq!(q["counters"]["late_records"], 0, "{q}");
    assert_eq!(q["counters"]["bad_records"], 0, "{q}");
    eprintln!(
        "end to end: 100000 records, {} rows in {:.2}s ({:.0} records/s, debug build)",
        rows.len(),
        elapsed.as_secs_f64(),
        100_000.0 / elapsed.as_secs_f64()
    );

    // A cursor at the end returns nothing new.
    let (_, v) = s
        .get(&format!("/queries/adnetwork/results?after={cursor}"))
        .await;
    assert_eq!(v["rows"].as_array().unwrap().len(), 0);

    // Restart on the same data dir: nothing lost, nothing repeated.
    s.stop();
    let s = TestServer::start(dir.path(), &brokers);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, v) = s
        .get(&format!("/queries/adnetwork/results?after={cursor}"))
        .await;
    assert_eq!(
        v["rows"].as_array().unwrap().len(),
        0,
        "windows re-emitted after restart: {v}"
    );
    let mut all = Vec::new();
    collect(&s, "adnetwork", &mut String::new(), oracle.len(), &mut all).await;
    check(&all, &oracle);

    // New records after the restart form new windows; old ones stay as they
    // were. Closing on the quiet stream moved lateness up to the wall clock,
    // so these carry current event times.
    let before: BTreeMap<String, Value> = all
        .iter()
        .map(|r| {
            (
                format!("{}|{}|{}", r["window_start"], r["publisher"], r["geo"]),
                r.clone(),
            )
        })
        .collect();
    let mut later = HashMap::new();
    let now = chrono::Utc::now().timestamp_millis();
    produce(&producer, 150_000, 20_000, now, &mut later);
    let mut fresh = Vec::new();
    collect(&s, "adnetwork", &mut cursor, later.len(), &mut fresh).await;
    check(&fresh, &later);
    let (_, q) = s.get("/queries/adnetwork").await;
    // Resumed at the saved offsets, its counters carried over the restart.
    assert_eq!(q["counters"]["records_in"], 120_000, "{q}");
    let mut everything = Vec::new();
    collect(
        &s,
        "adnetwork",
        &mut String::new(),
        before.len() + later.len(),
        &mut everything,
    )
    .await;
    assert_eq!(everything.len(), before.len() + later.len());
    s.stop();
}
