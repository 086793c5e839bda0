//! The HTTP API's first-hour rough edges: request bodies, cursors, page
//! caps, timestamps and column order, roll-up options, and what catalog
//! statements say back.

mod common;

use common::TestServer;
use reqwest::Method;

const STREAM: &str = "CREATE STREAM clicks (ts TIMESTAMP, page TEXT, ms BIGINT)
  WITH (kafka_topic = 'clicks', event_time = 'ts')";

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// `POST /sql` takes `{"sql": ...}` when it is declared JSON, as `POST
/// /queries` does; an empty body says so.
#[tokio::test]
async fn sql_takes_a_json_body() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    let body = serde_json::json!({ "sql": STREAM }).to_string();
    let (st, v) = s.request(Method::POST, "/sql", &[JSON], &body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["results"][0]["kind"], "create_stream", "{v}");

    let body = serde_json::json!({ "sql": "SHOW STREAMS" }).to_string();
    let (st, v) = s.request(Method::POST, "/sql", &[JSON], &body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["results"][0]["rows"][0][0], "clicks", "{v}");

    let (st, v) = s.request(Method::POST, "/sql", &[JSON], "{\"q\": 1}").await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("{\"sql\": \"...\"}"),
        "{v}"
    );

    for (path, headers) in [
        ("/sql", &[][..]),
        ("/sql", &[JSON][..]),
        ("/queries", &[][..]),
    ] {
        let (st, v) = s.request(Method::POST, path, headers, "  \n").await;
        assert_eq!(st, 400, "{path}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with("empty request body"), "{path}: {v}");
    }
    let (st, v) = s
        .request(Method::POST, "/sql", &[JSON], "{\"sql\": \" \"}")
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("empty request body")
    );
}
