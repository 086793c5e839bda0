//! Kafka faults are loud, never silent: a query that starts at `latest`
//! reads what is produced right after it is created, a saved offset that is
//! no longer in the log stops the query (or is skipped, counted, when the
//! stream says so), and a broker that cannot be reached is a status of its
//! own, in `/healthz` and `/metrics` too.
//!
//! Run: `cargo test --test kafka_faults`.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use serde_json::Value;

type Mock = MockCluster<'static, DefaultProducerContext>;

fn mock(partitions: i32) -> (Mock, String) {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", partitions, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    (cluster, brokers)
}

fn stream_sql(name: &str, extra: &str) -> String {
    format!(
        "CREATE STREAM {name} (ts TIMESTAMP, geo TEXT, pad TEXT)
           WITH (kafka_topic = 't', event_time = 'ts', watermark_delay = '1s'{extra});
         CREATE QUERY q_{name} AS SELECT geo, count(*) AS n FROM {name} GROUP BY geo WINDOW 10s"
    )
}

/// Produces `n` records to `partition`, each padded to about `size` bytes.
fn produce(brokers: &str, partition: i32, n: usize, size: usize) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let pad = "x".repeat(size.saturating_sub(60));
    let now = chrono::Utc::now().timestamp_millis();
    for i in 0..n {
        let rec = format!(r#"{{"ts": {}, "geo": "g{}", "pad": "{pad}"}}"#, now, i % 3);
        while let Err((e, _)) = producer.send(
            BaseRecord::<(), str>::to("t")
                .payload(&rec)
                .partition(partition),
        ) {
            assert!(e.to_string().contains("Queue full"), "{e}");
            producer.poll(Duration::from_millis(5));
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Polls `GET path` until `ok` holds (30 s at most); returns the last answer.
async fn wait_for(s: &TestServer, path: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = s.get(path).await;
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn records_in(q: &Value) -> u64 {
    q["counters"]["records_in"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_starts_where_the_log_ended_when_the_query_was_created() {
    let (_cluster, brokers) = mock(2);
    // Already in the topic: not for a query that starts at `latest`.
    produce(&brokers, 0, 300, 100);
    produce(&brokers, 1, 300, 100);
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(&stream_sql("s", ", start = 'latest'")).await;
    // Right after CREATE QUERY, before its consumer is assigned.
    produce(&brokers, 0, 50, 100);
    produce(&brokers, 1, 70, 100);
    wait_for(&s, "/queries/q_s", "all 120 new records read", |q| {
        records_in(q) == 120
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, q) = s.get("/queries/q_s").await;
    assert_eq!(records_in(&q), 120, "none of the older records: {q}");
    // The starting offsets were saved at once: records sent while the
    // server is down are read after the restart, and only those (the
    // counters carry over the restart).
    s.stop();
    produce(&brokers, 1, 40, 100);
    let s = TestServer::start(dir.path(), &brokers);
    wait_for(&s, "/queries/q_s", "the 40 records sent while down", |q| {
        records_in(q) == 120 + 40
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_came_back_empty_stops_the_query_unless_told_to_skip() {
    let (first, brokers) = mock(2);
    produce(&brokers, 0, 500, 100);
    produce(&brokers, 1, 500, 100);
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(&stream_sql("strict", ", start = 'earliest'")).await;
    s.sql(&stream_sql(
        "lenient",
        ", start = 'earliest', on_offset_loss = 'earliest'",
    ))
    .await;
    for q in ["q_strict", "q_lenient"] {
        wait_for(&s, &format!("/queries/{q}"), "everything read", |v| {
            records_in(v) == 1000
        })
        .await;
    }
    // Wait for the checkpoint (every second while records flow).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.stop();
    drop(first);

    // Another broker, the same topic, a shorter log: saved offsets (500)
    // are past its end (10).
    let (_second, brokers) = mock(2);
    produce(&brokers, 0, 10, 100);
    let s = TestServer::start(dir.path(), &brokers);
    let q = wait_for(&s, "/queries/q_strict", "the strict query fails", |v| {
        v["status"] == "failed"
    })
    .await;
    let err = q["error"].as_str().unwrap();
    for part in [
        "saved offset 500",
        "partition 0",
        "offsets 0 to 10",
        "on_offset_loss",
    ] {
        assert!(err.contains(part), "{part:?} not in {err}");
    }
    // The lenient one goes on from the new log's start: nothing skipped
    // that it had not read, and the 10 new records read after the 1000.
    let q = wait_for(
        &s,
        "/queries/q_lenient",
        "the lenient query reads on",
        |v| records_in(v) == 1000 + 10,
    )
    .await;
    assert_eq!(q["status"], "running", "{q}");
    assert_eq!(q["counters"]["records_skipped"], 0, "{q}");
    let (_, h) = s.get("/healthz").await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(
        h["queries"]["q_strict"]
            .as_str()
            .unwrap()
            .contains("failed"),
        "{h}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_before_they_were_read_are_counted_as_skipped() {
    let (_cluster, brokers) = mock(1);
    produce(&brokers, 0, 100, 100);
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(&stream_sql(
        "s",
        ", start = 'earliest', on_offset_loss = 'earliest'",
    ))
    .await;
    wait_for(&s, "/queries/q_s", "the first 100 read", |v| {
        records_in(v) == 100
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.stop();
    // The mock broker keeps about 5 MiB per partition: 10 MB while the
    // server is down pushes the log's start past offset 100.
    produce(&brokers, 0, 10_000, 1_000);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let (low, high) = consumer
        .fetch_watermarks("t", 0, Duration::from_secs(5))
        .unwrap();
    assert!(low > 100, "the log still starts at {low}");
    let s = TestServer::start(dir.path(), &brokers);
    let q = wait_for(&s, "/queries/q_s", "the rest of the log read", |v| {
        records_in(v) == 100 + (high - low) as u64
    })
    .await;
    assert_eq!(q["status"], "running", "{q}");
    assert_eq!(q["counters"]["records_skipped"], low - 100, "{q}");
    let text = reqwest::get(format!("{}/metrics", s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!(
        "runnel_query_records_skipped_total{{query=\"q_s\",stream=\"s\"}} {}",
        low - 100
    );
    assert!(text.contains(&line), "{line} not in metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_a_status_of_its_own() {
    let (cluster, brokers) = mock(1);
    cluster.broker_down(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(&stream_sql("s", ", start = 'earliest'")).await;
    let q = wait_for(&s, "/queries/q_s", "broker_unreachable", |v| {
        v["status"] == "broker_unreachable"
    })
    .await;
    assert!(q["broker_unreachable_since"].is_string(), "{q}");
    let (_, h) = s.get("/healthz").await;
    assert_eq!(h["status"], "degraded", "{h}");
    let metrics = reqwest::get(format!("{}/metrics", s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("runnel_query_broker_unreachable{query=\"q_s\",stream=\"s\"} 1"),
        "{metrics}"
    );
    // Back up: the query runs and reads.
    cluster.broker_up(1).unwrap();
    produce(&brokers, 0, 25, 100);
    let q = wait_for(&s, "/queries/q_s", "the records read", |v| {
        records_in(v) == 25
    })
    .await;
    assert_eq!(q["status"], "running", "{q}");
    let (_, h) = s.get("/healthz").await;
    assert_eq!(h["status"], "ok", "{h}");
}
