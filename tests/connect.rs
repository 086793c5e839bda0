//! Where streams may connect and how: hosts the operator did not list with
//! `--allow-connect` are refused at CREATE (per-stream brokers, socket
//! hosts, and so `INTO TOPIC`), a stored stream no longer allowed stops the
//! server from starting, and Kafka properties given per stream reach
//! librdkafka while their secrets stay out of every answer and the log.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

fn refused(status: u16, v: &Value, what: &str, needles: &[&str]) {
    assert_eq!(status, 400, "{what}: {v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    for n in needles {
        assert!(message.contains(n), "{what}: {message}");
    }
}

fn kafka_stream(name: &str, brokers: &str) -> String {
    format!(
        "CREATE STREAM {name} (k TEXT) WITH (kafka_topic = 't', format = 'json', start = 'earliest', brokers = '{brokers}')"
    )
}

fn socket_stream(name: &str, host: &str, port: u16) -> String {
    format!(
        "CREATE STREAM {name} (line TEXT) WITH (source = 'socket', host = '{host}', port = '{port}', format = 'lines')"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_connect_only_to_allowed_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let own = "127.0.0.1:1";
    let s = TestServer::start(dir.path(), own);

    // By default only the server's own brokers are allowed.
    let (st, v) = s
        .post("/sql", &kafka_stream("far", "kafka.example:9092"))
        .await;
    refused(
        st,
        &v,
        "per-stream brokers",
        &["'kafka.example:9092'", "--allow-connect"],
    );
    let (st, v) = s
        .post("/sql", &kafka_stream("mixed", "127.0.0.1:1,10.9.9.9:9092"))
        .await;
    refused(st, &v, "one broker of several", &["'10.9.9.9:9092'"]);
    let (st, v) = s
        .post("/sql", &socket_stream("redis", "127.0.0.1", 6379))
        .await;
    refused(
        st,
        &v,
        "socket host",
        &["'127.0.0.1:6379'", "--allow-connect"],
    );
    // INTO TOPIC publishes to its stream's brokers: a query meaning to
    // publish far away is refused with its stream, and nothing is created.
    let (st, v) = s
        .post(
            "/sql",
            &format!(
                "{}; CREATE QUERY out AS SELECT k, count(*) AS n FROM far GROUP BY k WINDOW 10s INTO TOPIC 'leak'",
                kafka_stream("far", "kafka.example:9092")
            ),
        )
        .await;
    refused(
        st,
        &v,
        "INTO TOPIC through such a stream",
        &["'kafka.example:9092'"],
    );
    assert_eq!(s.get("/queries/out").await.0, 404);
    assert_eq!(s.get("/streams/far").await.0, 404);

    // The server's own brokers, and INTO TOPIC through them, are accepted.
    s.sql(&kafka_stream("near", own)).await;
    s.sql("CREATE QUERY near_out AS SELECT k, count(*) AS n FROM near GROUP BY k WINDOW 10s INTO TOPIC 'out'")
        .await;
    s.stop();

    // A host without a port allows every port; with a port, that one only.
    let dir = tempfile::tempdir().unwrap();
    let allow = [("RUNNEL_ALLOW_CONNECT", "kafka.example,127.0.0.1:7000")];
    let s = TestServer::start_with(dir.path(), own, &allow);
    s.sql(&kafka_stream("far", "kafka.example:19092")).await;
    s.sql(&kafka_stream("far2", "KAFKA.example:9092,127.0.0.1:1"))
        .await;
    s.sql(&socket_stream("lines", "127.0.0.1", 7000)).await;
    let (st, v) = s
        .post("/sql", &socket_stream("other", "127.0.0.1", 7001))
        .await;
    refused(
        st,
        &v,
        "another port",
        &["'127.0.0.1:7001'", "kafka.example"],
    );
    let (st, v) = s
        .post("/sql", &kafka_stream("elsewhere", "kafka.example.net:9092"))
        .await;
    refused(st, &v, "another host", &["kafka.example.net"]);
    s.stop();

    // A stored stream that is no longer allowed stops the server from
    // starting, naming the stream and the flag.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["serve", "--listen", "127.0.0.1:0", "--brokers", own])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--allow-connect", "kafka.example"])
        .env("RUNNEL_LOG", "warn")
        .env_remove("RUNNEL_CONFIG")
        .env_remove("RUNNEL_ALLOW_CONNECT")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stored stream lines") && err.contains("--allow-connect"),
        "{err}"
    );
}

/// Every answer and the server's log, checked for the password.
async fn assert_hidden(s: &TestServer, secret: &str, log: &std::path::Path) {
    for sql in ["SHOW STREAMS", "DESCRIBE sasl"] {
        let v = s.sql(sql).await;
        assert!(!v.to_string().contains(secret), "{sql}: {v}");
    }
    for path in [
        "/streams",
        "/streams/sasl",
        "/queries",
        "/queries/per_k",
        "/metrics",
    ] {
        let (st, v) = s.get(path).await;
        assert_eq!(st, 200, "{path}: {v}");
        assert!(!v.to_string().contains(secret), "{path}: {v}");
    }
    let log = std::fs::read_to_string(log).unwrap();
    // Debug logging was on: statements and librdkafka's lines were logged.
    assert!(log.contains("DEBUG"), "log: {log}");
    assert!(!log.contains(secret), "log: {log}");
}

/// Per-stream `kafka.*` properties reach librdkafka: a mechanism it does not
/// know is a 400 naming it, and a SASL stream's consumer authenticates (which
/// the mock broker cannot answer). The password never shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_properties_reach_librdkafka_and_secrets_stay_hidden() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let data = dir.path().join("data");
    let s = TestServer::start_logged(
        &data,
        &brokers,
        &[("RUNNEL_LOG", "debug,rdkafka=debug")],
        &[],
        Some(&log),
    );
    let secret = "hunter2-pw";
    let stream = |name: &str, mechanism: &str| {
        format!(
            "CREATE STREAM {name} (k TEXT) WITH (kafka_topic = 'events', format = 'json', start = 'earliest', \
             \"kafka.security.protocol\" = 'SASL_PLAINTEXT', \"kafka.sasl.mechanism\" = '{mechanism}', \
             \"kafka.sasl.username\" = 'ann', \"kafka.sasl.password\" = '{secret}')"
        )
    };

    // librdkafka's own verdict on the properties, at CREATE.
    let (st, v) = s.post("/sql", &stream("nope", "NOPE")).await;
    refused(st, &v, "unknown SASL mechanism", &["NOPE"]);
    // Even where librdkafka repeats a value, the password is not shown.
    let (st, v) = s.post("/sql", &stream("echo", secret)).await;
    assert_eq!(st, 400, "{v}");
    assert!(!v.to_string().contains(secret), "{v}");
    let (st, v) = s
        .post(
            "/sql",
            "CREATE STREAM bad (k TEXT) WITH (kafka_topic = 'events', \"kafka.no.such.property\" = '1')",
        )
        .await;
    refused(st, &v, "unknown property", &["no.such.property"]);
    // Properties Runnel manages are refused, listing them.
    let (st, v) = s
        .post(
            "/sql",
            "CREATE STREAM bad (k TEXT) WITH (kafka_topic = 'events', \"kafka.enable.auto.commit\" = 'true')",
        )
        .await;
    refused(
        st,
        &v,
        "managed property",
        &["enable.auto.commit", "group.id", "isolation.level"],
    );
    let (st, v) = s
        .post(
            "/sql",
            "CREATE STREAM bad (k TEXT) WITH (kafka_topic = 'events', \"kafka.bootstrap.servers\" = 'kafka.example:9092')",
        )
        .await;
    refused(st, &v, "brokers as a property", &["--allow-connect"]);
    let (st, v) = s
        .post(
            "/sql",
            "CREATE STREAM bad (k TEXT) WITH (kafka_topic = 'events', \"kafka.ssl.ca.location\" = '/etc/passwd')",
        )
        .await;
    refused(st, &v, "file property per stream", &["server-wide"]);

    // SASL/PLAIN: librdkafka's mock broker does not speak SASL, so a
    // consumer that uses the stream's properties cannot read from it, while
    // the same topic without them is read.
    let v = s.sql(&stream("sasl", "PLAIN")).await;
    assert!(!v.to_string().contains(secret), "echo: {v}");
    s.sql("CREATE QUERY per_k AS SELECT k, count(*) AS n FROM sasl GROUP BY k EMIT EVERY 1s")
        .await;
    s.sql("CREATE STREAM plain (k TEXT) WITH (kafka_topic = 'events', format = 'json', start = 'earliest')")
        .await;
    s.sql("CREATE QUERY plain_k AS SELECT k, count(*) AS n FROM plain GROUP BY k EMIT EVERY 1s")
        .await;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for k in ["a", "b", "a"] {
        let payload = format!("{{\"k\": \"{k}\"}}");
        producer
            .send(BaseRecord::<(), str>::to("events").payload(&payload))
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = s.post("/sql", "SELECT k, n FROM plain_k ORDER BY k").await;
        let (_, q) = s.get("/queries/per_k").await;
        if v["results"][0]["rows"] == serde_json::json!([["a", 2], ["b", 1]])
            && q["status"] == "broker_unreachable"
        {
            assert_eq!(q["counters"]["records_in"], 0, "{q}");
            break;
        }
        assert!(Instant::now() < deadline, "{v}; {q}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, v) = s.get("/streams/sasl").await;
    assert_eq!(v["options"]["kafka.sasl.password"], "***", "{v}");
    assert_eq!(v["options"]["kafka.sasl.username"], "ann", "{v}");
    assert!(v["sql"].as_str().unwrap().contains("'***'"), "{v}");
    assert_hidden(&s, secret, &log).await;
    s.stop();
}
