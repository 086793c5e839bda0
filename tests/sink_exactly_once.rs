//! `INTO TOPIC` exactly once: the topic, read as a `read_committed`
//! consumer reads it, holds each row of the results table exactly once, in
//! cursor order, with the same values — across `kill -9` cycles and publish
//! errors — and a topic that cannot be used is a query status naming it.
//!
//! librdkafka's mock cluster accepts transactions but keeps aborted and
//! open transactions' messages visible to `read_committed` consumers (a
//! probe: a committed, an aborted and an open message all read back). The
//! sink finds its position with the same view its consumers have, so these
//! tests check that no row is lost or doubled in that view. The output
//! topic has one partition: on the mock a transaction cut short can leave
//! some of its partitions' messages and not others, which a real broker
//! never shows.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestServer;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use runnel::generate::{GenKind, Generator};
use serde_json::Value;

const SQL: &str = "
CREATE STREAM impressions (ts TIMESTAMP, publisher TEXT, advertiser TEXT, website TEXT,
                           geo TEXT, bid DOUBLE, cookie TEXT)
  WITH (kafka_topic = 'imps', event_time = 'ts', watermark_delay = '2s', start = 'earliest');
CREATE QUERY adnetwork AS
SELECT publisher, geo, avg(bid) AS avg_bid, count(*) AS imps, approx_distinct(cookie) AS uniques
FROM impressions WHERE geo <> 'unknown' GROUP BY publisher, geo WINDOW 10s INTO TOPIC 'out'";

/// Event times advance 10 ms per record: at 2000 records/s about two
/// windows close every second.
const STEP_MS: i64 = 10;

/// Produces impressions at about `rate`/s over 4 partitions until `stop`;
/// returns how many.
fn produce(brokers: String, base: i64, rate: u64, stop: Arc<AtomicBool>) -> u64 {
    common::feed::produce_paced(&brokers, 11, base, STEP_MS, rate, |_| {
        !stop.load(Ordering::SeqCst)
    })
}

/// One message of the output topic: its cursor header and its row.
type Published = (i64, Value);

/// Reads topic `out` from the start as a `read_committed` consumer while it
/// is written (the mock cluster keeps only a few MiB per partition).
fn read_topic(brokers: String, got: Arc<Mutex<Vec<Published>>>, stop: Arc<AtomicBool>) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "sink-test-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("out", 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    while !stop.load(Ordering::SeqCst) {
        let Some(Ok(m)) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let h = m.headers().expect("every message has headers");
        let header = |k: &str| {
            h.iter()
                .find(|x| x.key == k)
                .and_then(|x| x.value)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
        };
        assert_eq!(header("runnel-query").as_deref(), Some("adnetwork"));
        let cursor: i64 = header("runnel-cursor").unwrap().parse().unwrap();
        let text = std::str::from_utf8(m.payload().unwrap()).unwrap();
        let mut row: Value = serde_json::from_str(text).unwrap();
        // serde_json's float parsing may be a bit off in the last place:
        // read the average's digits with Rust's exact parser.
        let digits = text.split("\"avg_bid\":").nth(1).unwrap();
        let digits = &digits[..digits.find([',', '}']).unwrap()];
        row["avg_bid"] = serde_json::json!(digits.parse::<f64>().unwrap());
        got.lock().unwrap().push((cursor, row));
    }
}

/// The results table, by cursor, read from the server's SQLite file.
fn table_rows(data_dir: &Path) -> BTreeMap<i64, Value> {
    let conn = rusqlite::Connection::open(data_dir.join("runnel.db")).unwrap();
    let mut st = conn
        .prepare("SELECT _seq, window_start, publisher, geo, avg_bid, imps, uniques FROM adnetwork")
        .unwrap();
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                serde_json::json!({
                    "window_start": runnel::store::time_ms(&r.get::<_, String>(1)?).unwrap(),
                    "publisher": r.get::<_, Option<String>>(2)?,
                    "geo": r.get::<_, Option<String>>(3)?,
                    "avg_bid": r.get::<_, f64>(4)?,
                    "imps": r.get::<_, i64>(5)?,
                    "uniques": r.get::<_, i64>(6)?,
                }),
            ))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// A topic message in the table's shape (its window start in epoch ms).
fn as_table_row(row: &Value) -> Value {
    serde_json::json!({
        "window_start": runnel::store::time_ms(row["window_start"].as_str().unwrap()).unwrap(),
        "publisher": row["publisher"],
        "geo": row["geo"],
        "avg_bid": row["avg_bid"],
        "imps": row["imps"],
        "uniques": row["uniques"],
    })
}

/// Waits until the results table holds window `last_start` and the topic
/// holds as many rows as the table, then checks they agree: each (window,
/// key) once on the topic, cursors in increasing order, the same values.
/// Returns the number of rows checked.
async fn check_topic_equals_table(
    s: &TestServer,
    got: &Mutex<Vec<Published>>,
    last_start: i64,
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(90);
    let table = loop {
        let table = table_rows(&s.data_dir);
        let complete = table
            .values()
            .any(|r| r["window_start"].as_i64() == Some(last_start));
        if complete && got.lock().unwrap().len() >= table.len() {
            // Anything doubled would arrive right behind.
            tokio::time::sleep(Duration::from_secs(2)).await;
            break table_rows(&s.data_dir);
        }
        let (_, q) = s.get("/queries/adnetwork").await;
        assert!(
            Instant::now() < deadline,
            "incomplete: {} rows in the table, {} on the topic; {q}",
            table.len(),
            got.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let got = got.lock().unwrap().clone();
    let mut keys = BTreeSet::new();
    let mut last = 0;
    for (cursor, row) in &got {
        let key = format!(
            "{}|{}|{}",
            row["window_start"], row["publisher"], row["geo"]
        );
        assert!(keys.insert(key.clone()), "row {key} twice on the topic");
        assert!(*cursor > last, "cursor {cursor} after {last}");
        last = *cursor;
        let want = table
            .get(cursor)
            .unwrap_or_else(|| panic!("cursor {cursor} not in the table"));
        assert_eq!(&as_table_row(row), want, "cursor {cursor}");
    }
    let on_topic: BTreeSet<i64> = got.iter().map(|(c, _)| *c).collect();
    let missing: Vec<_> = table
        .keys()
        .filter(|c| !on_topic.contains(c))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "rows missing from the topic: {missing:?}"
    );
    let (_, q) = s.get("/queries/adnetwork").await;
    assert_eq!(
        q["sink"]["published_cursor"],
        *table.keys().last().unwrap(),
        "{q}"
    );
    assert_eq!(q["sink"]["lag_cursor"], 0, "{q}");
    assert_eq!(q["sink"]["mode"], "exactly_once", "{q}");
    table.len()
}

/// Waits until the sink has counted `want` failed publishes.
async fn wait_errors(s: &TestServer, want: u64) -> (u64, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, q) = s.get("/queries/adnetwork").await;
        let n = q["sink"]["errors"].as_u64().unwrap_or(0);
        if n >= want {
            return (n, q);
        }
        assert!(Instant::now() < deadline, "no publish error seen: {q}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The start of the window holding the last of `n` records from `base`.
fn last_window(base: i64, n: u64) -> i64 {
    let t = base + (n as i64 - 1) * STEP_MS;
    t - t.rem_euclid(10_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_twenty_times_while_publishing_then_topic_equals_table() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("imps", 4, 1).unwrap();
    cluster.create_topic("out", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path(), &brokers);
    s.sql(SQL).await;

    let base = chrono::Utc::now().timestamp_millis() / 10_000 * 10_000 - 3_600_000;
    let (stop_in, stop_out) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let got = Arc::new(Mutex::new(Vec::new()));
    let producer = {
        let (b, st) = (brokers.clone(), stop_in.clone());
        std::thread::spawn(move || produce(b, base, 2000, st))
    };
    let reader = {
        let (b, g, st) = (brokers.clone(), got.clone(), stop_out.clone());
        std::thread::spawn(move || read_topic(b, g, st))
    };
    let mut rng = rand::rngs::SmallRng::seed_from_u64(17);
    let cycles = 20;
    let mut published_at_kill = Vec::new();
    for _ in 0..cycles {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1500..3500))).await;
        published_at_kill.push(got.lock().unwrap().len());
        s.kill9();
        s = TestServer::start(dir.path(), &brokers);
    }
    stop_in.store(true, Ordering::SeqCst);
    let n = producer.join().unwrap();
    let rows = check_topic_equals_table(&s, &got, last_window(base, n)).await;
    stop_out.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    // Publishing went on through the cycles, not only at the end.
    let progressed = published_at_kill.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(
        progressed >= cycles / 2,
        "topic rows at each kill: {published_at_kill:?}"
    );
    assert!(rows > 2000, "too few rows: {rows}");
    eprintln!(
        "{cycles} kill -9 cycles over {n} records: {rows} rows on the topic exactly once, equal to the results table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_errors_mid_run_lose_and_double_nothing() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("imps", 4, 1).unwrap();
    cluster.create_topic("out", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(SQL).await;

    let base = chrono::Utc::now().timestamp_millis() / 10_000 * 10_000 - 3_600_000;
    let (stop_in, stop_out) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let got = Arc::new(Mutex::new(Vec::new()));
    let producer = {
        let (b, st) = (brokers.clone(), stop_in.clone());
        std::thread::spawn(move || produce(b, base, 2000, st))
    };
    let reader = {
        let (b, g, st) = (brokers.clone(), got.clone(), stop_out.clone());
        std::thread::spawn(move || read_topic(b, g, st))
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = got.lock().unwrap().len();
    assert!(before > 0, "nothing published before the faults");
    // A partition that cannot join the transaction: nothing of it is sent.
    cluster.request_errors(
        RDKafkaApiKey::AddPartitionsToTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 2],
    );
    let (_, q) = wait_errors(&s, 1).await;
    assert_eq!(q["status"], "sink_waiting", "{q}");
    assert!(
        q["sink"]["error"].as_str().unwrap().contains("'out'"),
        "{q}"
    );
    wait_errors(&s, 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A commit that fails after its messages were written.
    cluster.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH],
    );
    let (n, _) = wait_errors(&s, 3).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop_in.store(true, Ordering::SeqCst);
    let records = producer.join().unwrap();
    let rows = check_topic_equals_table(&s, &got, last_window(base, records)).await;
    let (_, q) = s.get("/queries/adnetwork").await;
    assert_eq!(q["status"], "running", "{q}");
    stop_out.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    eprintln!(
        "{n} failed publishes retried: {rows} rows on the topic exactly once, equal to the results table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_a_status_naming_it_and_a_bad_name_a_400() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("imps", 1, 1).unwrap();
    cluster.create_topic("out", 1, 1).unwrap();
    cluster
        .topic_error(
            "out",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        )
        .unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);

    let stream = SQL.split("CREATE QUERY").next().unwrap();
    s.sql(stream).await;
    let (code, v) = s
        .post(
            "/sql",
            "SELECT geo, count(*) AS n FROM impressions GROUP BY geo WINDOW 10s INTO TOPIC 'no such topic'",
        )
        .await;
    assert_eq!(code, 400, "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("'no such topic'") && m.contains("not a valid Kafka topic name"),
        "{m}"
    );

    s.sql(&format!(
        "CREATE QUERY{}",
        SQL.split("CREATE QUERY").nth(1).unwrap()
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let q = loop {
        let (_, q) = s.get("/queries/adnetwork").await;
        if q["status"] == "sink_waiting" {
            break q;
        }
        assert!(Instant::now() < deadline, "{q}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let m = q["sink"]["error"].as_str().unwrap();
    assert!(
        m.contains("INTO TOPIC 'out'") && m.contains("does not exist"),
        "{m}"
    );

    // Rows written meanwhile go out once the topic is there.
    let base = chrono::Utc::now().timestamp_millis() / 10_000 * 10_000 - 3_600_000;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let mut g = Generator::new(GenKind::Impressions, 3);
    let mut buf = Vec::new();
    for i in 0..3000 {
        buf.clear();
        g.write_record(base + i * STEP_MS, &mut buf);
        producer
            .send(BaseRecord::<(), [u8]>::to("imps").payload(&buf))
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster
        .topic_error("out", RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        .unwrap();
    let (stop, got) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let reader = {
        let (b, g, st) = (brokers.clone(), got.clone(), stop.clone());
        std::thread::spawn(move || read_topic(b, g, st))
    };
    let rows = check_topic_equals_table(&s, &got, last_window(base, 3000)).await;
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    assert!(rows > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_refusing_transactions_gets_at_least_once_with_cursors() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("imps", 4, 1).unwrap();
    cluster.create_topic("out", 1, 1).unwrap();
    // The transactional producer's init is refused; the idempotent one's is not.
    cluster.request_errors(
        RDKafkaApiKey::InitProducerId,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED],
    );
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path(), &brokers);
    s.sql(SQL).await;
    let base = chrono::Utc::now().timestamp_millis() / 10_000 * 10_000 - 3_600_000;
    let (stop_in, stop_out) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let got = Arc::new(Mutex::new(Vec::new()));
    let producer = {
        let (b, st) = (brokers.clone(), stop_in.clone());
        std::thread::spawn(move || produce(b, base, 2000, st))
    };
    let reader = {
        let (b, g, st) = (brokers.clone(), got.clone(), stop_out.clone());
        std::thread::spawn(move || read_topic(b, g, st))
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, q) = s.get("/queries/adnetwork").await;
    assert_eq!(q["sink"]["mode"], "at_least_once", "{q}");
    for _ in 0..3 {
        s.kill9();
        cluster.request_errors(
            RDKafkaApiKey::InitProducerId,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED],
        );
        s = TestServer::start(dir.path(), &brokers);
        tokio::time::sleep(Duration::from_millis(2000)).await;
    }
    stop_in.store(true, Ordering::SeqCst);
    let n = producer.join().unwrap();
    let last_start = last_window(base, n);
    let deadline = Instant::now() + Duration::from_secs(90);
    let (table, topic) = loop {
        let table = table_rows(&s.data_dir);
        let topic: BTreeMap<i64, Value> = got.lock().unwrap().iter().cloned().collect();
        let complete = table
            .values()
            .any(|r| r["window_start"].as_i64() == Some(last_start));
        if complete && table.keys().all(|c| topic.contains_key(c)) {
            break (table, topic);
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} rows",
            topic.len(),
            table.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    stop_out.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    // Deduplicated by cursor, the topic is the table.
    assert_eq!(topic.len(), table.len());
    for (c, row) in &topic {
        assert_eq!(Some(&as_table_row(row)), table.get(c), "cursor {c}");
    }
    let (_, q) = s.get("/queries/adnetwork").await;
    assert_eq!(q["sink"]["mode"], "at_least_once", "{q}");
    eprintln!(
        "at-least-once: {} messages for {} rows",
        got.lock().unwrap().len(),
        table.len()
    );
}
