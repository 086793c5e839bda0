//! `GET /metrics` after a run with good, bad and late records, and the
//! server-sent results stream across a reconnect with `Last-Event-ID`.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::TestServer;
use common::sse::Sse;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::json;

fn producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

fn send(p: &BaseProducer, topic: &str, payloads: &[String]) {
    for v in payloads {
        p.send(BaseRecord::<(), str>::to(topic).payload(v).partition(0))
            .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

fn record(ts: i64, k: &str, v: i64) -> String {
    json!({"ts": ts, "k": k, "v": v}).to_string()
}

/// `name{labels} value` lines of a Prometheus text exposition.
fn scrape(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

async fn metrics(s: &TestServer) -> (String, BTreeMap<String, f64>) {
    let r = reqwest::get(format!("{}/metrics", s.url)).await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain"), "{ct}");
    let text = r.text().await.unwrap();
    let m = scrape(&text);
    (text, m)
}

async fn wait_for(s: &TestServer, key: &str, want: f64) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (text, m) = metrics(s).await;
        if m.get(key) == Some(&want) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{key} never reached {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const STREAM: &str = "CREATE STREAM events (ts TIMESTAMP, k TEXT, v BIGINT)
    WITH (kafka_topic = 'events', format = 'json', event_time = 'ts',
          watermark_delay = '1s', start = 'earliest')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_good_bad_and_late_records() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(STREAM).await;
    s.sql("CREATE QUERY per_k AS SELECT k, count(*) AS n, sum(v) AS total FROM events GROUP BY k WINDOW 10s")
        .await;

    // 300 good records over 30 s of event time, 7 undecodable ones, then 5
    // records for the first window, which has closed by then.
    let base = chrono::Utc::now().timestamp_millis() - 600_000;
    let base = base - base.rem_euclid(10_000);
    let mut payloads: Vec<String> = (0..300)
        .map(|i| record(base + i * 100, ["a", "b", "c"][i as usize % 3], i))
        .collect();
    for i in 0..7 {
        payloads.insert(40 * (i + 1), format!("{{not json {i}"));
    }
    for i in 0..5 {
        payloads.push(record(base + i * 10, "late", 1));
    }
    send(&producer(&brokers), "events", &payloads);

    let stream = r#"{stream="events"}"#;
    let query = r#"{query="per_k",stream="events"}"#;
    let m = wait_for(
        &s,
        &format!("runnel_stream_records_in_total{stream}"),
        312.0,
    )
    .await;
    let m = wait_for(&s, &format!("runnel_query_late_records_total{query}"), 5.0)
        .await
        .into_iter()
        .chain(m)
        .collect::<BTreeMap<_, _>>();
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in {m:?}"));
    assert_eq!(
        get(r#"runnel_stream_bad_records_total{reason="invalid_json",stream="events"}"#),
        7.0
    );
    assert_eq!(
        get(&format!("runnel_query_records_processed_total{query}")),
        305.0
    );
    assert!(get(&format!("runnel_stream_bytes_in_total{stream}")) > 312.0 * 20.0);
    assert!(get("runnel_process_resident_memory_bytes") > 1e6);
    assert_eq!(get("runnel_queries"), 1.0);

    // The stream goes quiet: every window closes and is counted. The
    // engine counts a window as it closes; the query loop observes its
    // close latency once the engine hands the rows back, a moment later.
    let (text, m) = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (text, m) = metrics(&s).await;
            let closed = m.get(&format!("runnel_query_windows_closed_total{query}"));
            let timed = m.get(&format!(
                "runnel_query_window_close_latency_seconds_count{query}"
            ));
            if closed == Some(&3.0) && timed == Some(&3.0) {
                break (text, m);
            }
            assert!(Instant::now() < deadline, "windows never closed:\n{text}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in\n{text}"));
    assert_eq!(get(&format!("runnel_query_rows_emitted_total{query}")), 9.0);
    assert!(get(&format!("runnel_query_batch_duration_seconds_count{query}")) >= 1.0);
    assert!(
        get(&format!(
            "runnel_query_window_close_latency_seconds_sum{query}"
        )) > 3.0 * 500.0,
        "windows ended ten minutes ago"
    );
    assert_eq!(
        get(r#"runnel_stream_consumer_lag_records{partition="0",query="per_k",stream="events"}"#),
        0.0
    );
    assert!(get(&format!("runnel_stream_watermark_seconds{stream}")) > (base / 1000) as f64);
    for family in [
        "runnel_query_open_groups",
        "runnel_query_state_bytes",
        "runnel_query_running",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} gauge")),
            "{family}:\n{text}"
        );
    }

    // A dropped query's series go away.
    let (st, _) = s.client_delete("/queries/per_k").await;
    assert_eq!(st, 200);
    let (text, _) = metrics(&s).await;
    assert!(!text.contains(r#"query="per_k""#), "{text}");
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_delivers_every_row_once_across_a_reconnect() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(STREAM).await;
    s.sql("CREATE QUERY per_k AS SELECT k, count(*) AS n FROM events GROUP BY k WINDOW 10s")
        .await;
    let p = producer(&brokers);
    let base = chrono::Utc::now().timestamp_millis() - 600_000;
    let base = base - base.rem_euclid(10_000);
    let keys = ["a", "b", "c", "d"];
    let batch = |from: i64, windows: i64| -> Vec<String> {
        (0..windows * 40)
            .map(|i| record(base + from * 10_000 + i * 250, keys[i as usize % 4], 1))
            .collect()
    };
    // Ten windows of four keys: nine close on the watermark, the last when
    // the stream goes quiet.
    send(&p, "events", &batch(0, 10));

    let url = format!("{}/queries/per_k/stream", s.url);
    let mut got = Vec::new();
    let mut first = Sse::connect(&url, None).await;
    first.rows(10, &mut got).await;
    drop(first);
    let last = got.last().unwrap().0.to_string();

    // Resume after the last id seen.
    let mut second = Sse::connect(&url, Some(&last)).await;
    second.rows(40 - 10, &mut got).await;

    // `?after=` resumes the same way.
    let mut third = Sse::connect(&format!("{url}?after={}", got[19].0), None).await;
    let mut again = Vec::new();
    third.rows(20, &mut again).await;
    assert_eq!(
        again.iter().map(|r| r.0).collect::<Vec<_>>(),
        got[20..].iter().map(|r| r.0).collect::<Vec<_>>()
    );

    // Exactly the rows of the results endpoint, each once, in cursor order.
    let (_, page) = s.get("/queries/per_k/results?limit=1000").await;
    let rows = page["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 40, "{page}");
    let ids: Vec<i64> = got.iter().map(|r| r.0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 40);
    assert_eq!(
        got.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
        *rows,
        "same rows as GET /results"
    );
    assert_eq!(page["cursor"].as_str().unwrap(), ids[39].to_string());
    for r in rows {
        assert_eq!(r["n"], 10, "{r}");
    }

    // Bad cursors are rejected; unknown queries are 404.
    let r = reqwest::Client::new()
        .get(&url)
        .header("Last-Event-ID", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = reqwest::get(format!("{}/queries/missing/stream", s.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Dropping the query ends the stream with a `dropped` event.
    let (st, _) = s.client_delete("/queries/per_k").await;
    assert_eq!(st, 200);
    let ev = third.next().await;
    assert_eq!(ev.event, "dropped", "{ev:?}");
    s.stop();
}
