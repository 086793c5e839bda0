//! Early rows end to end: a one-minute window with `EMIT EVERY 1s` shows
//! its provisional rows over HTTP and server-sent events while it fills in,
//! then exactly one final row per group once it closes.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::TestServer;
use common::sse::Sse;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

const SQL: &str = "
CREATE STREAM clicks (ts TIMESTAMP, page TEXT)
  WITH (kafka_topic = 'clicks', event_time = 'ts', watermark_delay = '1s', start = 'earliest');
CREATE QUERY per_page AS
SELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 1m EMIT EVERY 1s";

/// Sends `(partition, event time, page)` records and waits for them.
fn send(p: &BaseProducer, records: &[(i32, i64, &str)]) {
    for (partition, ts, page) in records {
        let payload = format!(r#"{{"ts": {ts}, "page": "{page}"}}"#);
        p.send(
            BaseRecord::<(), str>::to("clicks")
                .payload(&payload)
                .partition(*partition),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// The rows of the window starting at `start` (RFC 3339), as page → (n, final).
async fn window_rows(
    s: &TestServer,
    start: &str,
    only_final: bool,
) -> BTreeMap<String, (i64, bool)> {
    let path = format!("/queries/per_page/results?limit=1000&final={only_final}");
    let (status, v) = s.get(&path).await;
    assert_eq!(status, 200, "{v}");
    let mut out = BTreeMap::new();
    for r in v["rows"].as_array().unwrap() {
        if r["window_start"] != start {
            continue;
        }
        let page = r["page"].as_str().unwrap().to_string();
        let prev = out.insert(page.clone(), (r["n"].as_i64().unwrap(), r["final"] == true));
        assert!(
            prev.is_none(),
            "two rows of one window for page {page}: {v}"
        );
    }
    out
}

/// Polls until the window's rows equal `want`.
async fn wait_rows(s: &TestServer, start: &str, want: &[(&str, i64, bool)]) {
    let want: BTreeMap<String, (i64, bool)> = want
        .iter()
        .map(|(p, n, f)| (p.to_string(), (*n, *f)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = window_rows(s, start, false).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "window {start}: want {want:?}, have {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_window_fills_in_then_closes_with_one_final_row_per_group() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("clicks", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(SQL).await;
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    // A window an hour old: only records (or a long quiet) can close it.
    let now = chrono::Utc::now().timestamp_millis();
    let t0 = now - 3_600_000 - now.rem_euclid(60_000);
    let start = chrono::DateTime::from_timestamp_millis(t0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let mut sse = Sse::connect(&format!("{}/queries/per_page/stream", s.url), None).await;

    send(
        &p,
        &[
            (0, t0 + 1_000, "a"),
            (1, t0 + 2_000, "a"),
            (1, t0 + 3_000, "b"),
        ],
    );
    wait_rows(&s, &start, &[("a", 2, false), ("b", 1, false)]).await;
    // Nothing of the open window is final yet.
    assert!(window_rows(&s, &start, true).await.is_empty());

    // The window fills in: its rows are replaced, not added to.
    send(
        &p,
        &[
            (0, t0 + 10_000, "a"),
            (0, t0 + 20_000, "c"),
            (1, t0 + 30_000, "b"),
        ],
    );
    wait_rows(
        &s,
        &start,
        &[("a", 3, false), ("b", 2, false), ("c", 1, false)],
    )
    .await;

    // Records past the window's end plus the delay on both partitions close it.
    send(&p, &[(0, t0 + 62_000, "z"), (1, t0 + 62_000, "z")]);
    let closed = [("a", 3, true), ("b", 2, true), ("c", 1, true)];
    wait_rows(&s, &start, &closed).await;
    let finals = window_rows(&s, &start, true).await;
    assert_eq!(finals.len(), 3, "{finals:?}");

    // The event stream carried the provisional rows, then the final ones.
    let mut seen: Vec<Value> = Vec::new();
    while seen
        .iter()
        .filter(|r| r["window_start"] == start.as_str() && r["final"] == true)
        .count()
        < 3
    {
        let ev = sse.next().await;
        assert_eq!(ev.event, "row", "{ev:?}");
        seen.push(serde_json::from_str(&ev.data).unwrap());
    }
    let first_final = seen.iter().position(|r| r["final"] == true).unwrap();
    let early: Vec<&Value> = seen[..first_final]
        .iter()
        .filter(|r| r["window_start"] == start.as_str())
        .collect();
    assert!(
        early.iter().any(|r| r["page"] == "a" && r["n"] == 2),
        "the stream showed no provisional row before the close: {seen:?}"
    );
    assert!(early.iter().all(|r| r["final"] == false), "{seen:?}");
    // Pull SQL reads the same rows and can filter on `final`.
    let v = s
        .sql(&format!(
            "SELECT page, n FROM per_page WHERE final AND window_start = '{}' ORDER BY page",
            start.trim_end_matches('Z').replace('T', " ")
        ))
        .await;
    let rows = &v["results"][0]["rows"];
    assert_eq!(
        rows,
        &serde_json::json!([["a", 3], ["b", 2], ["c", 1]]),
        "{v}"
    );
    let (_, q) = s.get("/queries/per_page").await;
    assert_eq!(q["counters"]["late_records"], 0, "{q}");
    s.stop();
}

/// The rows of query `q`, as page → (window_start, window_end, n, final),
/// asserting one row per page.
async fn rows_by_page(s: &TestServer, q: &str) -> BTreeMap<String, (String, String, i64, bool)> {
    let (status, v) = s.get(&format!("/queries/{q}/results?limit=1000")).await;
    assert_eq!(status, 200, "{v}");
    let mut out = BTreeMap::new();
    for r in v["rows"].as_array().unwrap() {
        let page = r["page"].as_str().unwrap().to_string();
        let row = (
            r["window_start"].as_str().unwrap().to_string(),
            r["window_end"].as_str().unwrap().to_string(),
            r["n"].as_i64().unwrap(),
            r["final"] == true,
        );
        let prev = out.insert(page.clone(), row);
        assert!(prev.is_none(), "two rows for page {page}: {v}");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_sessions_fill_in_then_close_with_one_final_row_each() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("clicks", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(&SQL.replace(
        "per_page AS\nSELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 1m",
        "per_user AS\nSELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW SESSION 10s",
    ))
    .await;
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let t0 = now - 3_600_000 - now.rem_euclid(60_000);
    let at = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(t0 + ms)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string()
    };
    let want = |rows: &[(&str, i64, i64, i64, bool)]| -> BTreeMap<_, _> {
        rows.iter()
            .map(|(p, s, e, n, f)| (p.to_string(), (at(*s), at(*e), *n, *f)))
            .collect()
    };
    let wait = async |want: BTreeMap<String, (String, String, i64, bool)>| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = rows_by_page(&s, "per_user").await;
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "want {want:?}, have {got:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };

    // Watermark 3 s − 1 s delay on partition 0, 2 s − 1 s on partition 1.
    send(
        &p,
        &[(0, 1_000, "a"), (0, 3_000, "a"), (1, 2_000, "b")].map(|(q, t, k)| (q, t0 + t, k)),
    );
    wait(want(&[
        ("a", 1_000, 13_000, 2, false),
        ("b", 2_000, 12_000, 1, false),
    ]))
    .await;

    // a's session grows: its provisional row of the older span is replaced.
    send(&p, &[(0, t0 + 8_000, "a")]);
    wait(want(&[
        ("a", 1_000, 18_000, 3, false),
        ("b", 2_000, 12_000, 1, false),
    ]))
    .await;

    // Both partitions past 18 s + the delay: a and b close, z is open.
    send(&p, &[(0, t0 + 40_000, "z"), (1, t0 + 41_000, "z")]);
    wait(want(&[
        ("a", 1_000, 18_000, 3, true),
        ("b", 2_000, 12_000, 1, true),
        ("z", 40_000, 51_000, 2, false),
    ]))
    .await;
    let (_, q) = s.get("/queries/per_user").await;
    assert_eq!(q["counters"]["late_records"], 0, "{q}");
    s.stop();
}
