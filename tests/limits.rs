//! Bounded work per request: the caller's runtime mistakes in a pull query.
//! No broker is needed.

mod common;

use common::TestServer;
use serde_json::Value;

const SETUP: &str = "CREATE STREAM clicks (ts TIMESTAMP, page TEXT, ms BIGINT)
    WITH (kafka_topic = 'clicks', event_time = 'ts', start = 'earliest');
  CREATE QUERY per_page AS SELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 10s";

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn pull_query_mistakes_are_400_with_datafusions_message() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    s.sql(SETUP).await;
    for (sql, says) in [
        ("SELECT CAST('x' AS INT)", "Cannot cast string 'x'"),
        ("SELECT 1 / 0", "Divide by zero"),
        ("SELECT nope FROM per_page", "nope"),
    ] {
        let (st, v) = s.post("/sql", sql).await;
        assert_eq!(st, 400, "{sql}: {v}");
        assert!(message(&v).contains(says), "{sql}: {v}");
    }
}
