//! The command line as a new user meets it: help that shows the defaults,
//! and `runnel gen` into a topic that does not exist yet.

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
