//! Bounded work per request: pull queries over the memory or row limit, the
//! caller's runtime mistakes in a pull query, roll-ups over huge ranges and
//! the cap on server-sent-event connections. No broker is needed.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::Value;

const SETUP: &str = "CREATE STREAM clicks (ts TIMESTAMP, page TEXT, ms BIGINT)
    WITH (kafka_topic = 'clicks', event_time = 'ts', start = 'earliest');
  CREATE QUERY per_page AS SELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 10s";

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or_default()
}

/// `v` for a failure message, cut short: an answer can be huge.
fn short(v: &Value) -> String {
    v.to_string().chars().take(400).collect()
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

#[tokio::test]
async fn pull_query_over_the_memory_limit_is_422_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(dir.path(), "127.0.0.1:1", &[("RUNNEL_PULL_MEMORY", "1MiB")]);
    // Sorting 300 000 numbers needs more than 1 MiB; nothing spills to disk.
    let big = "SELECT x FROM (SELECT unnest(range(0, 300000)) AS x) ORDER BY x DESC";
    let (st, v) = s.post("/sql", big).await;
    assert_eq!(st, 422, "{}", short(&v));
    assert_eq!(v["error"]["code"], "limit_exceeded", "{v}");
    assert!(
        message(&v).contains("1.0 MiB") && message(&v).contains("--pull-memory"),
        "{v}"
    );
    // The memory is given back: a small sort still runs.
    let small = "SELECT x FROM (SELECT unnest(range(0, 1000)) AS x) ORDER BY x DESC LIMIT 2";
    let (st, v) = s.post("/sql", small).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["results"][0]["rows"], serde_json::json!([[999], [998]]));
}

/// Functions whose arguments choose how much they make are refused past
/// the bound before they allocate it (a gigabyte in one value, made before
/// any memory pool hears of it; continuous queries plan on the same
/// functions); within it they answer as DataFusion's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_asked_for_huge_results_are_refused_before_making_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    s.sql(SETUP).await;
    for (sql, says) in [
        ("SELECT repeat('x', 1000000000)", "1000000000 bytes"),
        ("SELECT repeat('ab', 40000000)", "80000000 bytes"),
        ("SELECT lpad('x', 100000000)", "100000000 characters"),
        ("SELECT rpad('x', 100000000, 'yz')", "100000000 characters"),
        ("SELECT array_repeat(1, 100000000)", "list elements"),
        ("SELECT range(0, 10000000000)", "list elements"),
        (
            "SELECT generate_series(10, 1000000000000, 2)",
            "list elements",
        ),
        (
            "SELECT repeat(page, 100000000) FROM (VALUES ('a'), ('b')) AS t(page)",
            "200000000 bytes",
        ),
    ] {
        let (st, v) = s.post("/sql", sql).await;
        assert_eq!(st, 422, "{sql}: {}", short(&v));
        assert!(
            message(&v).contains(says) && message(&v).contains("at most 67108864"),
            "{sql}: {v}"
        );
    }
    let (st, v) = s
        .post(
            "/sql",
            "SELECT repeat('ab', 3) AS r, lpad('7', 3, '0') AS p, cardinality(range(0, 5)) AS n",
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["results"][0]["rows"],
        serde_json::json!([["ababab", "007", 5]])
    );
}

#[tokio::test]
async fn pull_query_over_the_row_limit_is_422_suggesting_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_args(dir.path(), "127.0.0.1:1", &[], &["--pull-rows", "10"]);
    let (st, v) = s.post("/sql", "SELECT unnest(range(0, 10))").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["results"][0]["rows"].as_array().unwrap().len(), 10);
    let (st, v) = s.post("/sql", "SELECT unnest(range(0, 11))").await;
    assert_eq!(st, 422, "{}", short(&v));
    assert!(
        message(&v).contains("more than 10 rows")
            && message(&v).contains("--pull-rows")
            && message(&v).contains("LIMIT"),
        "{v}"
    );
    let (st, v) = s.post("/sql", "SELECT unnest(range(0, 11)) LIMIT 10").await;
    assert_eq!(st, 200, "{v}");
}

#[tokio::test]
async fn rollup_of_a_huge_range_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    s.sql(SETUP).await;
    // 1970 to 2100 is 410 million of the query's 10 s windows.
    let (st, v) = s
        .get("/queries/per_page/results?rollup=1h&from=0&to=4102444800000")
        .await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["error"]["code"], "limit_exceeded", "{v}");
    assert!(message(&v).contains("at most 100000"), "{v}");
    // A day is fine.
    let (st, v) = s
        .get("/queries/per_page/results?rollup=1h&from=0&to=86400000")
        .await;
    assert_eq!(st, 200, "{v}");
}

#[tokio::test]
async fn event_streams_are_capped_and_a_closed_one_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runnel.toml");
    std::fs::write(&config, "max_sse = 2\n").unwrap();
    let s = TestServer::start_with(
        &dir.path().join("data"),
        "127.0.0.1:1",
        &[("RUNNEL_CONFIG", config.to_str().unwrap())],
    );
    s.sql(SETUP).await;
    let url = format!("{}/queries/per_page/stream", s.url);
    let open = || reqwest::get(url.clone());
    let first = open().await.unwrap();
    let second = open().await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = open().await.unwrap();
    assert_eq!(third.status(), 503);
    assert_eq!(third.headers()["retry-after"], "5");
    let v: Value = third.json().await.unwrap();
    assert_eq!(v["error"]["code"], "busy", "{v}");
    assert!(message(&v).contains("--max-sse"), "{v}");

    // Closing a connection frees its slot once the server notices.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(60);
    let again = loop {
        let r = open().await.unwrap();
        if r.status() == 200 {
            break r;
        }
        assert_eq!(r.status(), 503);
        assert!(
            Instant::now() < deadline,
            "the closed stream's slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    drop((second, again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_tables_too_big_for_the_pull_memory_are_refused() {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    cluster.create_topic("clicks", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(SETUP).await;
    // 20 000 pages of 80 bytes in one window: about 2 MB of results.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let ts = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let n = 20_000;
    for i in 0..n {
        let rec = format!(
            r#"{{"ts": {ts}, "page": "/{i:06}/{}", "ms": 1}}"#,
            "x".repeat(72)
        );
        while let Err((e, _)) = producer.send(BaseRecord::<(), str>::to("clicks").payload(&rec)) {
            assert!(e.to_string().contains("Queue full"), "{e}");
            producer.poll(Duration::from_millis(5));
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let count = "SELECT count(*) AS rows, count(DISTINCT page) AS pages FROM per_page";
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = s.sql(count).await;
        if v["results"][0]["rows"] == serde_json::json!([[n, n]]) {
            break;
        }
        assert!(Instant::now() < deadline, "window never closed: {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    s.stop();

    // The same table with 1 MiB for pull queries: refused while it loads.
    let s = TestServer::start_args(dir.path(), &brokers, &[], &["--pull-memory", "1MiB"]);
    let (st, v) = s.post("/sql", count).await;
    assert_eq!(st, 422, "{}", short(&v));
    assert!(message(&v).contains("--pull-memory"), "{v}");
    // Results themselves are still served, a page at a time.
    let (st, v) = s.get("/queries/per_page/results?limit=10").await;
    assert_eq!(st, 200, "{}", short(&v));
}
