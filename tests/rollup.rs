//! Roll-ups: hourly windows merged from the stored 10 s sketches, over HTTP
//! and in SQL; hourly uniques are the union of the windows' cookies, within
//! HyperLogLog++'s error of the exact count. With `window_state_retention =
//! '0s'` no states are kept and roll-ups are empty.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::TestServer;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hourly_uniques_merge_the_window_sketches() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("imps", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(
        "CREATE STREAM imps (ts TIMESTAMP, geo TEXT, cookie TEXT)
           WITH (kafka_topic = 'imps', event_time = 'ts', start = 'earliest');
         CREATE QUERY per_geo AS SELECT geo, count(*) AS n, approx_distinct(cookie) AS u
           FROM imps GROUP BY geo WINDOW 10s",
    )
    .await;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    // One hour of event time, two hours ago: one record every 50 ms.
    let hour = (chrono::Utc::now().timestamp_millis() / 3_600_000 - 2) * 3_600_000;
    let n = 72_000;
    let mut exact: BTreeMap<String, HashSet<i64>> = BTreeMap::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..n {
        let geo = if i % 3 == 0 { "FR" } else { "US" };
        let cookie = (i * 7919) % 20_000;
        exact.entry(geo.into()).or_default().insert(cookie);
        *counts.entry(geo.into()).or_default() += 1;
        let rec = format!(
            r#"{{"ts": {}, "geo": "{geo}", "cookie": "c{cookie}"}}"#,
            hour + i * 50
        );
        while let Err((e, _)) = producer.send(
            BaseRecord::<(), str>::to("imps")
                .payload(&rec)
                .partition((i % 2) as i32),
        ) {
            assert!(e.to_string().contains("Queue full"), "{e}");
            producer.poll(Duration::from_millis(5));
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    // All 360 ten-second windows close once the stream is quiet.
    let deadline = Instant::now() + Duration::from_secs(120);
    let windows = loop {
        let (_, v) = s.get("/queries/per_geo/results?limit=100000").await;
        let rows = v["rows"].as_array().cloned().unwrap_or_default();
        if rows.iter().map(|r| r["n"].as_u64().unwrap()).sum::<u64>() == n as u64 {
            break rows;
        }
        assert!(Instant::now() < deadline, "windows not closed: {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(windows.len(), 720);

    let (status, v) = s.get("/queries/per_geo/results?rollup=1h").await;
    assert_eq!(status, 200, "{v}");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    let start = runnel::store::format_api_ts(hour);
    let end = runnel::store::format_api_ts(hour + 3_600_000);
    for r in rows {
        let geo = r["geo"].as_str().unwrap();
        assert_eq!(r["window_start"], start.as_str(), "{r}");
        assert_eq!(r["window_end"], end.as_str(), "{r}");
        assert_eq!(r["n"].as_u64().unwrap(), counts[geo], "{r}");
        let want = exact[geo].len() as f64;
        let got = r["u"].as_u64().unwrap() as f64;
        eprintln!("rollup: {geo}: hourly uniques {got} from 360 sketches, exact {want}");
        assert!(
            (got - want).abs() / want <= 0.02,
            "{geo}: hourly uniques {got} vs exact {want}"
        );
        // A union, not a sum: many cookies come back in several windows.
        let summed: u64 = windows
            .iter()
            .filter(|w| w["geo"] == geo)
            .map(|w| w["u"].as_u64().unwrap())
            .sum();
        assert!(summed as f64 > 1.1 * want, "{summed} vs {want}");
    }

    // The same through SQL, and minutes between the two.
    let sql = s
        .sql("SELECT geo, n, u FROM rollup('per_geo', '1h') ORDER BY geo")
        .await;
    let sql_rows = &sql["results"][0]["rows"];
    for (i, r) in sql_rows.as_array().unwrap().iter().enumerate() {
        let http = rows.iter().find(|h| h["geo"] == r[0]).unwrap();
        assert_eq!((&r[1], &r[2]), (&http["n"], &http["u"]), "row {i}");
    }
    let (_, minutes) = s.get("/queries/per_geo/results?rollup=1m").await;
    let minutes = minutes["rows"].as_array().unwrap();
    assert_eq!(minutes.len(), 120);
    assert_eq!(
        minutes
            .iter()
            .map(|r| r["n"].as_u64().unwrap())
            .sum::<u64>(),
        n as u64
    );
    let (_, window) = s
        .get(&format!(
            "/queries/per_geo/results?rollup=1m&from={}&to={}",
            hour,
            hour + 120_000
        ))
        .await;
    assert_eq!(window["rows"].as_array().unwrap().len(), 4, "{window}");

    // Sizes that do not tile the window are refused.
    let (status, err): (u16, Value) = s.get("/queries/per_geo/results?rollup=15s").await;
    assert_eq!(status, 400, "{err}");
    assert!(err.to_string().contains("multiple"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_retention_keeps_no_window_states() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("imps", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runnel.toml");
    std::fs::write(&config, "window_state_retention = '0s'\n").unwrap();
    let s = TestServer::start_with(
        &dir.path().join("data"),
        &brokers,
        &[("RUNNEL_CONFIG", config.to_str().unwrap())],
    );
    s.sql(
        "CREATE STREAM imps (ts TIMESTAMP, geo TEXT)
           WITH (kafka_topic = 'imps', event_time = 'ts', start = 'earliest');
         CREATE QUERY per_geo AS SELECT geo, count(*) AS n FROM imps GROUP BY geo WINDOW 10s",
    )
    .await;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    // One minute of event time, two hours ago: six windows.
    let minute = (chrono::Utc::now().timestamp_millis() / 60_000 - 120) * 60_000;
    let n = 600;
    for i in 0..n {
        let rec = format!(r#"{{"ts": {}, "geo": "FR"}}"#, minute + i * 100);
        producer
            .send(BaseRecord::<(), str>::to("imps").payload(&rec))
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = s.get("/queries/per_geo/results").await;
        let rows = v["rows"].as_array().cloned().unwrap_or_default();
        if rows.iter().map(|r| r["n"].as_u64().unwrap()).sum::<u64>() == n as u64 {
            assert_eq!(rows.len(), 6, "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "windows not closed: {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The windows closed and were written, their states were not.
    let (status, v) = s.get("/queries/per_geo/results?rollup=1m").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rows"].as_array().unwrap().len(), 0, "{v}");
    let sql = s
        .sql("SELECT count(*) AS c FROM rollup('per_geo', '1m')")
        .await;
    assert_eq!(sql["results"][0]["rows"][0][0], 0, "{sql}");
}
