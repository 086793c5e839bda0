//! The command line as a new user meets it: help that shows the defaults,
//! and `runnel gen` into a topic that does not exist yet.

mod common;

use std::process::Command;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;

fn runnel(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(args)
        .env_remove("RUNNEL_BROKERS")
        .env_remove("RUNNEL_LISTEN")
        .env_remove("RUNNEL_DATA_DIR")
        .output()
        .unwrap()
}

#[test]
fn serve_help_shows_the_defaults() {
    let out = runnel(&["serve", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for default in ["127.0.0.1:8080", "127.0.0.1:9092", "runnel-data"] {
        assert!(help.contains(default), "no {default} in:\n{help}");
    }
}

#[test]
fn gen_makes_sure_its_topic_exists() {
    // librdkafka's mock cluster does not take CreateTopics requests, but
    // creates a topic when asked for its metadata: the fallback.
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let out = runnel(&[
        "gen",
        "impressions",
        "--brokers",
        &brokers,
        "--topic",
        "fresh",
        "--count",
        "300",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("topic fresh was created by the broker with its default partitions"),
        "{err}"
    );
    assert!(err.contains("produced 300 records"), "{err}");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some("fresh"), Duration::from_secs(5))
        .unwrap();
    let total: i64 = md.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (lo, hi) = consumer
                .fetch_watermarks("fresh", p.id(), Duration::from_secs(5))
                .unwrap();
            hi - lo
        })
        .sum();
    assert_eq!(total, 300);
}

#[test]
fn gen_without_a_broker_fails_at_once_saying_so() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let brokers = format!("127.0.0.1:{port}");
    let out = runnel(&[
        "gen",
        "impressions",
        "--brokers",
        &brokers,
        "--count",
        "50000",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // Not 50 000 failed deliveries after their timeout: one error naming the
    // brokers and the topic.
    assert!(
        err.contains(&format!(
            "cannot reach the brokers at {brokers} to look up topic adnetwork-topic"
        )),
        "{err}"
    );
    assert!(!err.contains("failed"), "{err}");
}

#[tokio::test]
async fn startup_log_names_store_brokers_and_resumed_queries_with_offsets() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("clicks", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = common::TestServer::start(dir.path(), &brokers);
    s.sql(
        "CREATE STREAM clicks (ts TIMESTAMP, user_id TEXT) WITH (kafka_topic = 'clicks', event_time = 'ts');
         CREATE QUERY per_user AS SELECT user_id, count(*) AS n FROM clicks GROUP BY user_id WINDOW 10s;",
    )
    .await;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for i in 0..10 {
        let payload = format!(r#"{{"ts": {}, "user_id": "u{i}"}}"#, 1_000 + i);
        producer
            .send(BaseRecord::<(), str>::to("clicks").payload(&payload))
            .unwrap();
    }
    producer.flush(Duration::from_secs(5)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while s.get("/queries/per_user").await.1["counters"]["records_in"] != 10 {
        assert!(std::time::Instant::now() < deadline, "records not read");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.stop();

    let log = dir.path().join("server.log");
    let s = common::TestServer::start_logged(
        dir.path(),
        &brokers,
        &[("RUNNEL_LOG", "info")],
        &[],
        Some(&log),
    );
    let text = std::fs::read_to_string(&log).unwrap();
    s.stop();
    for want in [
        "runnel started",
        "store=sqlite",
        &format!("brokers={brokers}"),
        "streams=1",
        "queries=1",
        "resumed query query=per_user offsets=0:10",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
}

/// Ctrl-C with a dashboard's event stream open: the demo still stops, says
/// what it waits for, and removes its store.
#[test]
fn demo_stops_on_ctrl_c_with_an_event_stream_open_and_cleans_up() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::Stdio;

    let mut child = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["demo", "--listen", "127.0.0.1:0", "--rate", "200"])
        .env_remove("RUNNEL_LISTEN")
        .env("RUNNEL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let data_dir = std::env::temp_dir().join(format!("runnel-demo-{}", child.id()));
    // Drained as it comes: a full pipe would block the demo's writes.
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut err = String::new();
        stderr.read_to_string(&mut err).unwrap();
        err
    });
    let mut addr = None;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        if let Some(rest) = line.trim().strip_prefix("dashboard: http://") {
            addr = Some(rest.trim_end_matches('/').to_string());
            break;
        }
        line.clear();
    }
    let addr = addr.expect("the demo printed its dashboard");
    assert!(data_dir.exists(), "{}", data_dir.display());
    // An event stream, as the dashboard keeps open: it never ends by itself.
    let mut sse = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        sse,
        "GET /queries/adnetwork/stream HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    sse.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // A liveness bound, not a speed one: before, it never exited.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the demo did not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = err_reader.join().unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("stopping: waiting for 9 queries"), "{err}");
    assert!(err.contains("removed the demo's store"), "{err}");
    assert!(!data_dir.exists(), "{} still there", data_dir.display());
    drop(sse);
}
