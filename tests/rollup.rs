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

/// One record per geo per 10 s window over hour `h` and the first five
/// minutes of the next: hour `h` is complete (later windows closed), the
/// next hour's bucket stays open for most of an hour of quiet.
fn produce_hour_and_a_bit(brokers: &str, h: i64) -> usize {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let mut n = 0;
    for w in 0..(65 * 6) {
        for geo in ["DE", "FR", "US"] {
            let rec = format!(r#"{{"ts": {}, "geo": "{geo}"}}"#, h + w * 10_000 + 1_000);
            producer
                .send(BaseRecord::<(), str>::to("imps").payload(&rec))
                .unwrap();
            n += 1;
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_page_write_csv_and_hold_back_open_buckets() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("imps", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(
        "CREATE STREAM imps (ts TIMESTAMP, geo TEXT)
           WITH (kafka_topic = 'imps', event_time = 'ts', start = 'earliest');
         CREATE QUERY per_geo AS SELECT geo, count(*) AS n FROM imps GROUP BY geo WINDOW 10s",
    )
    .await;
    let h = (chrono::Utc::now().timestamp_millis() / 3_600_000 - 3) * 3_600_000;
    let n = produce_hour_and_a_bit(&brokers, h);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, v) = s.get("/queries/per_geo/results?limit=100000").await;
        if v["rows"].as_array().map_or(0, Vec::len) == n {
            break;
        }
        assert!(Instant::now() < deadline, "windows not closed: {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // 65 complete minutes of 3 geos, cut at the limit.
    let (status, v) = s.get("/queries/per_geo/results?rollup=1m&limit=100").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rows"].as_array().unwrap().len(), 100, "{v}");
    assert_eq!(v["has_more"], true, "{v}");
    let (_, v) = s.get("/queries/per_geo/results?rollup=1m&limit=195").await;
    assert_eq!(v["rows"].as_array().unwrap().len(), 195, "{v}");
    assert_eq!(v["has_more"], false, "{v}");

    // CSV as plain pages write it: header, RFC 3339 times, has-more header.
    let url = format!("http://127.0.0.1:{}/queries/per_geo/results", s.port());
    let r = reqwest::get(format!("{url}?rollup=1m&limit=4&format=csv"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/csv");
    assert_eq!(r.headers()["x-runnel-has-more"], "true");
    let text = r.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (start, end) = (
        runnel::store::format_api_ts(h),
        runnel::store::format_api_ts(h + 60_000),
    );
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(lines[0], "window_start,window_end,geo,n");
    // Groups come in any order within a bucket.
    let mut first: Vec<&str> = lines[1..4].to_vec();
    first.sort();
    let want: Vec<String> = ["DE", "FR", "US"]
        .iter()
        .map(|g| format!("{start},{end},{g},6"))
        .collect();
    assert_eq!(first, want, "{text}");
    let second = format!("{end},{},", runnel::store::format_api_ts(h + 120_000));
    assert!(
        lines[4].starts_with(&second) && lines[4].ends_with(",6"),
        "{text}"
    );

    // Hours: the next hour's bucket is still open and left out...
    let hours = |v: &Value| -> Vec<(String, u64, Value)> {
        let rows = v["rows"].as_array().unwrap();
        rows.iter()
            .map(|r| {
                let start = r["window_start"].as_str().unwrap().to_string();
                (start, r["n"].as_u64().unwrap(), r["complete"].clone())
            })
            .collect()
    };
    let hour = runnel::store::format_api_ts(h);
    let next = runnel::store::format_api_ts(h + 3_600_000);
    let (_, v) = s.get("/queries/per_geo/results?rollup=1h").await;
    assert_eq!(hours(&v), vec![(hour.clone(), 360, Value::Null); 3], "{v}");
    assert_eq!(v["has_more"], false, "{v}");
    // ...and with partial=true included, flagged incomplete.
    let (_, v) = s
        .get("/queries/per_geo/results?rollup=1h&partial=true")
        .await;
    let mut want = vec![(hour.clone(), 360, Value::Bool(true)); 3];
    want.extend(vec![(next.clone(), 30, Value::Bool(false)); 3]);
    assert_eq!(hours(&v), want, "{v}");
    assert_eq!(v["columns"].as_array().unwrap().last().unwrap(), "complete");
    let text = reqwest::get(format!("{url}?rollup=1h&partial=true&format=csv"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        text.lines().next(),
        Some("window_start,window_end,geo,n,complete")
    );
    let last = text.lines().last().unwrap();
    assert!(last.ends_with(",30,false"), "{text}");

    // Callers' mistakes are 400s.
    for bad in [
        "rollup=1h&partial=maybe",
        "rollup=1h&after=3",
        "partial=true",
    ] {
        let (status, v) = s.get(&format!("/queries/per_geo/results?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {v}");
    }

    // After a restart, before any new record, the same buckets are complete.
    s.stop();
    let s = TestServer::start(dir.path(), &brokers);
    let (_, v) = s.get("/queries/per_geo/results?rollup=1h").await;
    assert_eq!(hours(&v), vec![(hour, 360, Value::Null); 3], "{v}");
}
