//! Event times in seconds: read as milliseconds they land in January 1970
//! and every record is late, so such records are noted with the likely
//! fix, and `event_time_unit = 's'` reads them right.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::Value;

async fn wait_for(s: &TestServer, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = s.get(path).await;
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{path}: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn seconds_are_noted_and_event_time_unit_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let path = data.path().join("clicks.jsonl");
    // 40 records a second apart, in epoch seconds, an hour ago.
    let base = chrono::Utc::now().timestamp() / 10 * 10 - 3600;
    let lines: String = (0..40)
        .map(|i| format!("{{\"ts\": {}, \"page\": \"p{}\"}}\n", base + i, i % 2))
        .collect();
    std::fs::write(&path, lines).unwrap();
    let allow = [("RUNNEL_ALLOW_FILES", data.path().to_str().unwrap())];
    let s = TestServer::start_with(dir.path(), "127.0.0.1:1", &allow);
    let stream = |name: &str, unit: &str| {
        format!(
            "CREATE STREAM {name} (ts TIMESTAMP, page TEXT) WITH (source = 'file', path = '{}', \
             event_time = 'ts', start = 'earliest'{unit})",
            path.display()
        )
    };

    // Without the unit: used, but each noted with the likely fix.
    s.sql(&stream("as_ms", "")).await;
    s.sql("CREATE QUERY q_ms AS SELECT page, count(*) AS n FROM as_ms GROUP BY page WINDOW 10s")
        .await;
    let v = wait_for(&s, "/streams/as_ms", |v| {
        v["kept_records_by_reason"]["event_time_decades_old"] == 40
    })
    .await;
    assert_eq!(v["bad_records"], 0, "{v}");
    let (_, errors) = s.get("/streams/as_ms/errors").await;
    let detail = errors["kept_samples"][0]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(detail.contains("1970-01-"), "{errors}");
    assert!(detail.contains("event_time_unit = 's'"), "{errors}");

    // With it: windows of the right time, nothing noted.
    s.sql(&stream("as_s", ", event_time_unit = 's'")).await;
    s.sql("CREATE QUERY q_s AS SELECT page, count(*) AS n FROM as_s GROUP BY page WINDOW 10s")
        .await;
    let first = chrono::DateTime::from_timestamp(base, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let v = wait_for(&s, "/queries/q_s/results?limit=100", |v| {
        v["rows"].as_array().is_some_and(|r| r.len() >= 6)
    })
    .await;
    let rows = v["rows"].as_array().unwrap();
    let in_first: Vec<&Value> = rows.iter().filter(|r| r["window_start"] == first).collect();
    assert_eq!(in_first.len(), 2, "{first}: {v}");
    assert!(in_first.iter().all(|r| r["n"] == 5), "{v}");
    let (_, v) = s.get("/streams/as_s").await;
    assert!(
        v["kept_records_by_reason"]
            .get("event_time_decades_old")
            .is_none(),
        "{v}"
    );

    // Mistakes are 400s.
    for (sql, says) in [
        (stream("bad_unit", ", event_time_unit = 'minutes'"), "must be 's', 'ms' or 'us'"),
        (
            "CREATE STREAM n (ts BIGINT) WITH (kafka_topic = 't', event_time = 'ts', event_time_unit = 's')".to_string(),
            "TIMESTAMP event_time column",
        ),
    ] {
        let (st, v) = s.post("/sql", &sql).await;
        assert_eq!(st, 400, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(says), "{v}");
    }
}
