//! Dirty input: every kind of bad record is counted by reason and sampled
//! with its partition and offset, and the good records around them all count.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

fn send(p: &BaseProducer, topic: &str, partition: i32, payload: &[u8]) {
    p.send(
        BaseRecord::<(), [u8]>::to(topic)
            .payload(payload)
            .partition(partition),
    )
    .map_err(|(e, _)| e)
    .unwrap();
    p.poll(Duration::ZERO);
}

async fn wait_for(s: &TestServer, path: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = s.get(path).await;
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting on {path}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_counted_sampled_and_skipped() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("dirty", 2, 1).unwrap();
    cluster.create_topic("strict", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(
        "CREATE STREAM dirty (ts TIMESTAMP, k TEXT, n BIGINT)
           WITH (kafka_topic = 'dirty', event_time = 'ts', start = 'earliest');
         CREATE QUERY per_k AS SELECT k, count(*) AS c, sum(n) AS total FROM dirty GROUP BY k WINDOW 10s;
         CREATE STREAM strict (ts TIMESTAMP, k TEXT)
           WITH (kafka_topic = 'strict', event_time = 'ts', start = 'earliest', on_error = 'fail');
         CREATE QUERY strict_q AS SELECT k, count(*) FROM strict GROUP BY k WINDOW 10s",
    )
    .await;

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let base = now - 60_000;
    // Stamped like the last good record, so it is never late whatever the
    // window boundaries.
    let big = format!(
        r#"{{"ts": {}, "k": "big", "n": 1, "padding": "{}"}}"#,
        base + 490,
        "x".repeat(900_000)
    );
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "invalid_json"),
        (
            br#"{"ts": 1, "k": "a", "n": "many"}"#.to_vec(),
            "wrong_type",
        ),
        (br#"{"k": "a", "n": 1}"#.to_vec(), "missing_event_time"),
        // Dropped, so not also noted as used despite an unknown field.
        (
            br#"{"K": "a", "n": 1, "TS": 5}"#.to_vec(),
            "missing_event_time",
        ),
        (Vec::new(), "empty"),
        (b"\xff\xfe\x00garbage".to_vec(), "invalid_json"),
        (
            format!(r#"{{"ts": {}, "k": "a", "n": 1}}"#, now + 86_400_000).into_bytes(),
            "future_timestamp",
        ),
        (
            br#"{"ts": -5000, "k": "a", "n": 1}"#.to_vec(),
            "before_epoch",
        ),
    ];
    // Good records interleaved with bad ones on both partitions.
    let mut good = 0;
    for round in 0..50 {
        for p in 0..2 {
            let rec = format!(
                r#"{{"ts": {}, "k": "k{}", "n": {round}, "unknown_field": true}}"#,
                base + round * 10,
                p
            );
            send(&producer, "dirty", p, rec.as_bytes());
            good += 1;
            if round % 10 == 0 {
                let (payload, _) = &bad[(round / 10) as usize % bad.len()];
                send(&producer, "dirty", p, payload);
            }
        }
    }
    for (payload, _) in &bad {
        send(&producer, "dirty", 0, payload);
    }
    send(&producer, "dirty", 1, big.as_bytes());
    good += 1;
    producer.flush(Duration::from_secs(10)).unwrap();
    let bad_total = 10 + bad.len() as u64;

    let v = wait_for(&s, "/streams/dirty", |v| {
        v["records_in"].as_u64() == Some(good + bad_total)
    })
    .await;
    assert_eq!(v["bad_records"].as_u64(), Some(bad_total), "{v}");
    let by_reason = &v["bad_records_by_reason"];
    for (_, reason) in &bad {
        assert!(
            by_reason[reason].as_u64().unwrap_or(0) >= 1,
            "{reason} not counted: {v}"
        );
    }
    // Unknown fields are noted, and those records are still used.
    assert_eq!(
        v["kept_records_by_reason"]["unknown_field"].as_u64(),
        Some(good),
        "{v}"
    );
    let (_, errors) = s.get("/streams/dirty/errors").await;
    let kept = errors["kept_samples"].as_array().unwrap();
    assert!(
        !kept.is_empty() && kept.iter().all(|e| e["kept"] == true),
        "{errors}"
    );
    assert!(
        kept.iter()
            .any(|e| e["detail"].as_str().unwrap().contains("'unknown_field'")),
        "{errors}"
    );
    let samples = errors["samples"].as_array().unwrap();
    assert_eq!(samples.len() as u64, bad_total);
    assert!(
        samples
            .iter()
            .all(|e| e["partition"].is_i64() && e["offset"].is_i64() && e["reason"].is_string())
    );
    let future = samples
        .iter()
        .find(|e| e["reason"] == "future_timestamp")
        .unwrap();
    assert_eq!(future["partition"], 0);

    // All good records are in the results once the windows close (the stream goes quiet).
    let rows = wait_for(&s, "/queries/per_k/results", |v| {
        v["rows"]
            .as_array()
            .is_some_and(|r| r.iter().map(|x| x["c"].as_u64().unwrap()).sum::<u64>() == good)
    })
    .await;
    let big_row = rows["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["k"] == "big")
        .unwrap();
    assert_eq!(big_row["c"], 1);
    let (_, q) = s.get("/queries/per_k").await;
    assert_eq!(q["status"], "running");
    assert_eq!(q["counters"]["bad_records"].as_u64(), Some(bad_total));

    // on_error = 'fail': the query stops and says where.
    send(
        &producer,
        "strict",
        0,
        format!(r#"{{"ts": {base}, "k": "a"}}"#).as_bytes(),
    );
    send(&producer, "strict", 0, b"{broken");
    producer.flush(Duration::from_secs(10)).unwrap();
    let q = wait_for(&s, "/queries/strict_q", |v| v["status"] == "failed").await;
    let msg = q["error"].as_str().unwrap();
    assert!(
        msg.contains("partition 0 offset 1") && msg.contains("invalid_json"),
        "{msg}"
    );
}
