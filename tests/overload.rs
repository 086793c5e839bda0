//! Overload: input produced far faster than the engine can go is consumed
//! with bounded memory, and a query over its state limit fails alone.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use runnel::generate::{GenKind, Generator};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_and_state_limit_fails_one_query() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("imps", 16, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runnel.toml");
    std::fs::write(&config, "max_state_rows = 50000\n").unwrap();
    let s = TestServer::start_with(
        &dir.path().join("data"),
        &brokers,
        &[("RUNNEL_CONFIG", config.to_str().unwrap())],
    );
    s.sql(
        "CREATE STREAM imps (ts TIMESTAMP, publisher TEXT, advertiser TEXT, website TEXT, geo TEXT, bid DOUBLE, cookie TEXT)
           WITH (kafka_topic = 'imps', event_time = 'ts', start = 'earliest');
         -- 60 windows per record: far slower than the producer.
         CREATE QUERY slow AS SELECT geo, count(*) AS n, approx_distinct(cookie) AS u
           FROM imps GROUP BY geo WINDOW 60s SLIDE 1s;
         -- Tens of thousands of groups: over the 50 000-row state limit.
         CREATE QUERY huge AS SELECT cookie, count(*) FROM imps GROUP BY cookie WINDOW 1h",
    )
    .await;

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut g = Generator::new(GenKind::Impressions, 3);
    let mut buf = Vec::new();
    let base = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let mut peak = 0;
    let produced: usize = 150_000;
    for i in 0..produced {
        buf.clear();
        g.write_record(base + i as i64, &mut buf);
        while let Err((e, _)) = producer.send(
            BaseRecord::<(), [u8]>::to("imps")
                .payload(&buf)
                .partition((i % 16) as i32),
        ) {
            assert!(e.to_string().contains("Queue full"), "{e}");
            producer.poll(Duration::from_millis(5));
        }
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
            peak = peak.max(rss_kib(s.pid()));
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let (_, q) = s.get("/queries/slow").await;
    let consumed_when_done = q["counters"]["records_in"].as_u64().unwrap();
    // Input outran processing: the query is behind, and keeps going.
    assert!(consumed_when_done < produced as u64, "engine kept up: {q}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        peak = peak.max(rss_kib(s.pid()));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, q) = s.get("/queries/slow").await;
    assert_eq!(q["status"], "running", "{q}");
    assert!(
        q["counters"]["records_in"].as_u64().unwrap() > consumed_when_done,
        "{q}"
    );
    eprintln!(
        "overload: produced {produced} records, consumed {consumed_when_done} by the end of production, peak RSS {} MiB",
        peak / 1024
    );
    // Generous bound for a debug build: memory does not grow with the backlog.
    assert!(peak < 1024 * 1024, "peak RSS {peak} KiB");

    let (_, h) = s.get("/queries/huge").await;
    assert_eq!(h["status"], "failed", "{h}");
    assert!(h["error"].as_str().unwrap().contains("state limit"), "{h}");
}
