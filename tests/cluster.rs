//! Cluster mode: three servers, one PostgreSQL store, one 12-partition topic.
//! Their results equal a single server's, also after one of them is killed
//! mid-stream and the others take over its partitions; the queries over a
//! stream share each server's read of its partitions.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::TestServer;
use common::postgres::Postgres;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

const PARTITIONS: i32 = 12;

const STREAM: &str =
    "CREATE STREAM imps (ts TIMESTAMP, publisher TEXT, geo TEXT, bid DOUBLE, cookie TEXT)
  WITH (kafka_topic = 'imps', event_time = 'ts', watermark_delay = '2s', start = 'earliest')";

const QUERY: &str = "CREATE QUERY adnetwork AS
  SELECT publisher, geo, avg(bid) AS avg_bid, count(*) AS imps, approx_distinct(cookie) AS uniques
  FROM imps WHERE geo <> 'unknown' GROUP BY publisher, geo WINDOW 10s";

/// Records `range` of a deterministic feed: 100 per second of event time
/// from `t0`, spread over all partitions.
fn produce(producer: &BaseProducer, t0: i64, range: std::ops::Range<i64>) {
    produce_to(producer, t0, range, PARTITIONS)
}

/// [`produce`] over the first `partitions` partitions only.
fn produce_to(producer: &BaseProducer, t0: i64, range: std::ops::Range<i64>, partitions: i32) {
    let geos = ["FR", "US", "DE", "unknown"];
    for i in range {
        let rec = format!(
            r#"{{"ts": {}, "publisher": "p{}", "geo": "{}", "bid": {}, "cookie": "c{}"}}"#,
            t0 + i * 10,
            i % 7,
            geos[(i / 7) as usize % geos.len()],
            (i % 13) as f64 * 0.25,
            (i * 7919) % 1500
        );
        let partition = (i % partitions as i64) as i32;
        while let Err((e, _)) = producer.send(
            BaseRecord::<(), str>::to("imps")
                .payload(&rec)
                .partition(partition),
        ) {
            assert!(e.to_string().contains("Queue full"), "{e}");
            producer.poll(Duration::from_millis(5));
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Result rows keyed by (window_start, publisher, geo).
type Rows = BTreeMap<(String, String, String), (u64, f64, u64)>;

async fn results(s: &TestServer) -> Rows {
    let (_, v) = s.get("/queries/adnetwork/results?limit=100000").await;
    let mut out = Rows::new();
    for r in v["rows"].as_array().into_iter().flatten() {
        let key = (
            r["window_start"].as_str().unwrap().to_string(),
            r["publisher"].as_str().unwrap().to_string(),
            r["geo"].as_str().unwrap().to_string(),
        );
        let val = (
            r["imps"].as_u64().unwrap(),
            r["avg_bid"].as_f64().unwrap(),
            r["uniques"].as_u64().unwrap(),
        );
        assert!(
            out.insert(key.clone(), val).is_none(),
            "duplicate row {key:?}"
        );
    }
    out
}

async fn wait_rows(s: &TestServer, what: &str, total: u64) -> Rows {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rows = results(s).await;
        let n: u64 = rows.values().map(|v| v.0).sum();
        if n == total {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {n} of {total} records in the results; query: {}",
            s.get("/queries/adnetwork").await.1
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn assert_same(expected: &Rows, got: &Rows) {
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "windows or groups differ"
    );
    for (k, e) in expected {
        let g = got[k];
        assert_eq!(e.0, g.0, "imps of {k:?}");
        assert!(
            (e.1 - g.1).abs() < 1e-9,
            "avg_bid of {k:?}: {} vs {}",
            e.1,
            g.1
        );
        // Sketches merged in another order: the same values, so the same
        // estimate up to HyperLogLog++'s representation changes.
        let tolerance = (e.2 as f64 * 0.02).max(1.0);
        assert!(
            (e.2 as f64 - g.2 as f64).abs() <= tolerance,
            "uniques of {k:?}: {} vs {}",
            e.2,
            g.2
        );
    }
}

/// A mock topic `imps` of [`PARTITIONS`], a producer to it, and servers of
/// one cluster storing into one PostgreSQL database, with the default
/// `idle_after`: the last windows close once every partition is idle.
struct Fixture {
    kafka: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    brokers: String,
    producer: BaseProducer,
    dir: tempfile::TempDir,
    /// The servers' config file.
    config: String,
    url: String,
    cluster: &'static str,
}

impl Fixture {
    fn new(url: String, cluster: &'static str) -> Fixture {
        Fixture::with_config(url, cluster, "")
    }

    /// [`Fixture::new`] with `extra` lines in the servers' config.
    fn with_config(url: String, cluster: &'static str, extra: &str) -> Fixture {
        let kafka = MockCluster::new(1).unwrap();
        kafka.create_topic("imps", PARTITIONS, 1).unwrap();
        let brokers = kafka.bootstrap_servers();
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("runnel.toml");
        std::fs::write(&config, format!("checkpoint_interval = '1s'\n{extra}")).unwrap();
        Fixture {
            kafka,
            brokers,
            producer,
            config: config.to_str().unwrap().to_string(),
            dir,
            url,
            cluster,
        }
    }

    /// Starts cluster server `i` with a data dir of its own.
    fn server(&self, i: usize) -> TestServer {
        let env = [
            ("RUNNEL_CONFIG", self.config.as_str()),
            ("RUNNEL_STORE", self.url.as_str()),
            ("RUNNEL_CLUSTER", self.cluster),
        ];
        let data = self.dir.path().join(format!("s{i}"));
        TestServer::start_with(&data, &self.brokers, &env)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_equal_one_and_survive_a_kill() {
    let Some(pg) = Postgres::start("three_servers_equal_one_and_survive_a_kill") else {
        return;
    };
    let f = Fixture::new(pg.create_db("cluster"), "ads");
    let (brokers, producer, config) = (&f.brokers, &f.producer, f.config.as_str());
    let (a, b, c) = (f.server(0), f.server(1), f.server(2));

    // Created through one server, running on all three.
    a.sql(&format!("{STREAM}; {QUERY}")).await;
    for s in [&b, &c] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while s.get("/queries/adnetwork").await.1["status"] != "running" {
            assert!(
                Instant::now() < deadline,
                "the query did not reach every server"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Aggregates that do not merge are refused, naming the alternative.
    let (status, err) = b
        .post(
            "/sql",
            "CREATE QUERY exact AS SELECT geo, count(DISTINCT cookie) FROM imps GROUP BY geo WINDOW 10s",
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert!(err.to_string().contains("approx_distinct"), "{err}");

    // Kafka's group protocol shares the partitions out among the three.
    wait_owners(&pg, "cluster", 3).await;

    // 60 s of event time, well in the past; half before the kill.
    let t0 = (chrono::Utc::now().timestamp_millis() / 10_000 - 100) * 10_000;
    let n = 6_000;
    produce(producer, t0, 0..n / 2);
    // Mid-stream: once it has read some of its records.
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.get("/queries/adnetwork").await.1["counters"]["records_in"] == 0 {
        assert!(Instant::now() < deadline, "the third server reads nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.kill9();
    // A pause, while the group notices the death, then the rest.
    tokio::time::sleep(Duration::from_secs(3)).await;
    produce(producer, t0, n / 2..n);
    // Every record but those of `geo = 'unknown'`.
    let counted = (0..n).filter(|i| (i / 7) % 4 != 3).count() as u64;
    let got = wait_rows(&b, "cluster after a kill", counted).await;
    // Every server answers every read the same.
    assert_eq!(results(&a).await, got);

    // One server alone on the same topic.
    let single_dir = tempfile::tempdir().unwrap();
    let single = TestServer::start_with(single_dir.path(), brokers, &[("RUNNEL_CONFIG", config)]);
    single.sql(&format!("{STREAM}; {QUERY}")).await;
    let expected = wait_rows(&single, "single server", counted).await;
    assert_same(&expected, &got);
    // Minute roll-ups from the windows' merged sketches agree too (open
    // buckets included: each server's watermark decides which are complete).
    let minutes = |v: Value| -> Vec<(String, u64)> {
        let mut rows: Vec<(String, u64)> = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    format!("{}{}{}", r["window_start"], r["publisher"], r["geo"]),
                    r["imps"].as_u64().unwrap(),
                )
            })
            .collect();
        rows.sort();
        rows
    };
    let cluster_minutes = minutes(
        b.get("/queries/adnetwork/results?rollup=1m&partial=true")
            .await
            .1,
    );
    assert_eq!(
        cluster_minutes,
        minutes(
            single
                .get("/queries/adnetwork/results?rollup=1m&partial=true")
                .await
                .1
        )
    );
    assert_eq!(cluster_minutes.iter().map(|r| r.1).sum::<u64>(), counted);
    assert_eq!(
        expected.len(),
        6 * 7 * 3,
        "six windows of 7 publishers x 3 geos"
    );

    // The partitions were shared, and the survivors own them all.
    assert_eq!(owners(&pg, "cluster"), "2|12");
    let (_, q) = a.get("/queries/adnetwork").await;
    assert_eq!(q["status"], "running", "{q}");
}

/// `owners|partitions` of the cluster query's partitions in database `db`.
fn owners(pg: &Postgres, db: &str) -> String {
    pg.psql(
        db,
        "SELECT count(DISTINCT owner) || '|' || count(*) FROM runnel_partition_progress",
    )
    .trim()
    .to_string()
}

/// Waits until `servers` servers own all the partitions.
async fn wait_owners(pg: &Postgres, db: &str, servers: usize) {
    let want = format!("{servers}|{PARTITIONS}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = owners(pg, db);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "partitions not shared: {got}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// CPU seconds (user + system) used so far by process `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 12th and 13th of them, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// Records a cluster measurement produces: `RUNNEL_CLUSTER_BENCH_RECORDS`,
/// 400 000 by default.
fn bench_records() -> i64 {
    std::env::var("RUNNEL_CLUSTER_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400_000)
}

/// Throughput of 1, 2 and 3 servers on this machine (run with
/// `cargo test --release --test cluster -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: see BENCHMARKS.md"]
async fn cluster_throughput() {
    let Some(pg) = Postgres::start("cluster_throughput") else {
        return;
    };
    let n = bench_records();
    for servers in 1..=3usize {
        let f = Fixture::new(pg.create_db(&format!("bench{servers}")), "bench");
        let producer = &f.producer;
        let all: Vec<TestServer> = (0..servers).map(|i| f.server(i)).collect();
        all[0].sql(&format!("{STREAM}; {QUERY}")).await;
        wait_owners(&pg, &format!("bench{servers}"), servers).await;
        let cpu0: f64 = all.iter().map(|s| cpu_seconds(s.pid())).sum();
        let started = Instant::now();
        let t0 = (chrono::Utc::now().timestamp_millis() / 10_000 - 100) * 10_000;
        produce(producer, t0, 0..n);
        let counted = (0..n).filter(|i| (i / 7) % 4 != 3).count() as u64;
        wait_rows(&all[0], "throughput run", counted).await;
        let secs = started.elapsed().as_secs_f64();
        let cpu = all.iter().map(|s| cpu_seconds(s.pid())).sum::<f64>() - cpu0;
        eprintln!(
            "cluster throughput: {servers} server(s), {n} records in {secs:.1} s = {:.0} records/s wall; servers used {cpu:.1} CPU-s = {:.0} records per server CPU-second",
            n as f64 / secs,
            n as f64 / cpu
        );
    }
}

/// Eight different queries over the stream, each counting its records in
/// a column `n` (the first is the ad-network query without its filter).
const EIGHT: [&str; 8] = [
    "SELECT publisher, geo, avg(bid) AS avg_bid, count(*) AS n, approx_distinct(cookie) AS uniques FROM imps GROUP BY publisher, geo WINDOW 10s",
    "SELECT geo, count(*) AS n FROM imps GROUP BY geo WINDOW 10s",
    "SELECT publisher, count(*) AS n, sum(bid) AS spend FROM imps GROUP BY publisher WINDOW 10s",
    "SELECT geo, count(*) AS n, approx_distinct(cookie) AS uniques FROM imps GROUP BY geo WINDOW 10s",
    "SELECT publisher, count(*) AS n, max(bid) AS top FROM imps GROUP BY publisher WINDOW 10s",
    "SELECT cookie, count(*) AS n FROM imps GROUP BY cookie WINDOW 60s",
    "SELECT geo, publisher, count(*) AS n, min(bid) AS low FROM imps GROUP BY geo, publisher WINDOW 5s",
    "SELECT geo, count(*) AS n, avg(bid) AS avg_bid FROM imps GROUP BY geo WINDOW 30s",
];

/// Server CPU for one query and for eight over one stream, on one and two
/// servers (run with `RUNNEL_TEST_BIN=<a release build of runnel> cargo test
/// --test cluster -- --ignored --nocapture cluster_queries_cpu`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: see BENCHMARKS.md"]
async fn cluster_queries_cpu() {
    let Some(pg) = Postgres::start("cluster_queries_cpu") else {
        return;
    };
    let n = bench_records();
    for servers in [1usize, 2] {
        for queries in [1usize, 8] {
            let db = format!("queries{servers}x{queries}");
            let f = Fixture::new(pg.create_db(&db), "queries");
            let all: Vec<TestServer> = (0..servers).map(|i| f.server(i)).collect();
            all[0].sql(STREAM).await;
            for (i, q) in EIGHT.iter().take(queries).enumerate() {
                all[0].sql(&format!("CREATE QUERY q{i} AS {q}")).await;
            }
            // Each query's partitions claimed, by every server.
            let want = format!("{}|{}", servers * queries, PARTITIONS as usize * queries);
            let deadline = Instant::now() + Duration::from_secs(60);
            while owners(&pg, &db) != want {
                assert!(Instant::now() < deadline, "partitions not claimed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let cpu0: f64 = all.iter().map(|s| cpu_seconds(s.pid())).sum();
            let t0 = (chrono::Utc::now().timestamp_millis() / 60_000 - 100) * 60_000;
            produce(&f.producer, t0, 0..n);
            // Done when every query has finished the window of the last
            // record (asked of its counters: reading the results meanwhile
            // would cost the servers more than some queries do).
            let last = t0 + (n - 1) * 10;
            for (i, q) in EIGHT.iter().take(queries).enumerate() {
                let size: i64 = q
                    .rsplit_once("WINDOW ")
                    .unwrap()
                    .1
                    .trim_end_matches('s')
                    .parse()
                    .unwrap();
                let end = (last / (size * 1000) + 1) * size * 1000;
                let deadline = Instant::now() + Duration::from_secs(600);
                loop {
                    let mut closed = None;
                    for s in &all {
                        closed = closed.max(s.last_window_end(&format!("q{i}")).await);
                    }
                    if closed >= Some(end) {
                        break;
                    }
                    assert!(Instant::now() < deadline, "q{i} did not finish");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            let cpu = all.iter().map(|s| cpu_seconds(s.pid())).sum::<f64>() - cpu0;
            // Every record counted once by every query; the rows they
            // wrote (what the servers' commits scale with).
            let mut rows = Vec::new();
            for i in 0..queries {
                let (_, v) = all[0]
                    .post(
                        "/sql",
                        &format!("SELECT sum(n) AS total, count(*) AS rows FROM q{i}"),
                    )
                    .await;
                assert_eq!(v["results"][0]["rows"][0][0].as_i64(), Some(n), "q{i}: {v}");
                rows.push(v["results"][0]["rows"][0][1].as_i64().expect("a count"));
            }
            eprintln!(
                "cluster queries: {servers} server(s), {queries} quer(ies), {n} records, {} rows ({rows:?}): servers used {cpu:.2} CPU-s",
                rows.iter().sum::<i64>()
            );
        }
    }
}

/// A partition that never receives a record does not hold the cluster's
/// windows back: it is idle once its stored position has reached its log
/// end, like any caught-up partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_partition_does_not_hold_windows_back() {
    let Some(pg) = Postgres::start("an_empty_partition_does_not_hold_windows_back") else {
        return;
    };
    let f = Fixture::new(pg.create_db("cluster_empty"), "empty");
    let a = f.server(0);
    a.sql(&format!("{STREAM}; {QUERY}")).await;
    wait_owners(&pg, "cluster_empty", 1).await;
    let t0 = (chrono::Utc::now().timestamp_millis() / 10_000 - 100) * 10_000;
    let n = 3_000;
    // Every partition but the last.
    produce_to(&f.producer, t0, 0..n, PARTITIONS - 1);
    let counted = (0..n).filter(|i| (i / 7) % 4 != 3).count() as u64;
    let rows = wait_rows(&a, "with an empty partition", counted).await;
    assert_eq!(
        rows.len(),
        3 * 7 * 3,
        "three windows of 7 publishers x 3 geos"
    );
}

/// A cluster query's `INTO TOPIC`: the member reading partition 0
/// publishes what every member wrote. Killing it mid-stream hands the
/// producer over; the topic, read as a `read_committed` consumer reads it,
/// then holds each (window, geo) row of the results table exactly once,
/// with the same count. (The mock cluster keeps aborted transactions'
/// messages visible; the sink resumes from that same view, so the check is
/// that nothing is lost or doubled in it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn into_topic_exactly_once_across_a_handover() {
    let Some(pg) = Postgres::start("into_topic_exactly_once_across_a_handover") else {
        return;
    };
    let f = Fixture::new(pg.create_db("cluster_sink"), "sinks");
    f.kafka.create_topic("out", 1, 1).unwrap();
    let (a, b) = (f.server(0), f.server(1));
    a.sql(&format!(
        "{STREAM}; CREATE QUERY by_geo AS SELECT geo, count(*) AS n FROM imps GROUP BY geo WINDOW 10s INTO TOPIC 'out'"
    ))
    .await;
    wait_owners(&pg, "cluster_sink", 2).await;
    let t0 = (chrono::Utc::now().timestamp_millis() / 10_000 - 100) * 10_000;
    let n = 6_000;
    produce(&f.producer, t0, 0..n / 2);
    // Kill the publishing member once it has published something.
    let out = topic_rows(&f.brokers);
    let deadline = Instant::now() + Duration::from_secs(60);
    while out().is_empty() {
        assert!(Instant::now() < deadline, "nothing published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reads_zero = |q: &Value| {
        q["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["partition"] == 0)
    };
    let (leader, survivor) = match reads_zero(&a.get("/queries/by_geo").await.1) {
        true => (a, b),
        false => (b, a),
    };
    assert!(!reads_zero(&survivor.get("/queries/by_geo").await.1));
    leader.kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    produce(&f.producer, t0, n / 2..n);
    // Every record counted once in the results table ...
    let deadline = Instant::now() + Duration::from_secs(120);
    let table = loop {
        let (_, v) = survivor.get("/queries/by_geo/results?limit=100000").await;
        let rows: BTreeMap<(i64, String), u64> = v["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| (window_and_geo(r), r["n"].as_u64().unwrap()))
            .collect();
        if rows.values().sum::<u64>() == n as u64 {
            break rows;
        }
        assert!(Instant::now() < deadline, "results: {rows:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(table.len(), 6 * 4, "six windows of four geos");
    // ... and on the topic, each row once.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let published = out();
        let mut seen = BTreeMap::new();
        for row in &published {
            let key = window_and_geo(row);
            let n = row["n"].as_u64().unwrap();
            assert!(seen.insert(key.clone(), n).is_none(), "{key:?} twice");
        }
        if seen == table {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "topic {seen:?} != table {table:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The survivor took over: it published the rows the leader had not.
    let (_, q) = survivor.get("/queries/by_geo").await;
    assert_eq!(q["sink"]["mode"], "exactly_once", "{q}");
    let published = q["sink"]["rows_published"].as_u64().unwrap();
    assert!(published > 0 && published < table.len() as u64, "{q}");
}

/// A row's window start (in epoch ms) and geo.
fn window_and_geo(row: &Value) -> (i64, String) {
    let start = row["window_start"].as_str().unwrap();
    let start = runnel::store::time_ms(start).unwrap();
    (start, row["geo"].as_str().unwrap().to_string())
}

/// A reader of topic `out` from its start, as a `read_committed` consumer:
/// each call returns every row published so far.
fn topic_rows(brokers: &str) -> impl Fn() -> Vec<Value> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "cluster-sink-check")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("out", 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let rows = std::sync::Mutex::new(Vec::new());
    move || {
        let mut rows = rows.lock().unwrap();
        while let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            rows.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
        }
        rows.clone()
    }
}

/// `(window_start, geo) → n` rows of query `by_geo`.
async fn by_geo_rows(s: &TestServer) -> BTreeMap<(String, String), u64> {
    let (_, v) = s.get("/queries/by_geo/results?limit=100000").await;
    let mut out = BTreeMap::new();
    for r in v["rows"].as_array().into_iter().flatten() {
        let key = (
            r["window_start"].as_str().unwrap().to_string(),
            r["geo"].as_str().unwrap().to_string(),
        );
        assert!(out.insert(key, r["n"].as_u64().unwrap()).is_none());
    }
    out
}

/// Partitions whose two queries' claims are held by different servers (the
/// owner token names the process: `query@pid:...`).
fn split_claims(pg: &Postgres, db: &str) -> String {
    pg.psql(
        db,
        "SELECT count(*) || '|' || (SELECT count(*) FROM runnel_partition_progress) FROM (
           SELECT partition FROM runnel_partition_progress GROUP BY partition
           HAVING count(DISTINCT split_part(split_part(owner, '@', 2), ':', 1)) > 1) x",
    )
    .trim()
    .to_string()
}

/// Two queries over one stream on two servers: each server reads its share
/// of the partitions once for both (one consumer group per stream), the
/// second query, created from `earliest` once the first has read half the
/// records, catches up with a reader of its own that hands it over, and
/// both queries' rows are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_over_a_stream_share_each_servers_read() {
    let Some(pg) = Postgres::start("queries_over_a_stream_share_each_servers_read") else {
        return;
    };
    let db = "cluster_shared";
    // Readers keep no polls: a query behind them needs a reader of its own.
    let f = Fixture::with_config(pg.create_db(db), "shared", "shared_read_keep = 0\n");
    let (a, b) = (f.server(0), f.server(1));
    a.sql(&format!("{STREAM}; {QUERY}")).await;
    wait_owners(&pg, db, 2).await;
    let t0 = (chrono::Utc::now().timestamp_millis() / 10_000 - 100) * 10_000;
    let n = 6_000;
    produce(&f.producer, t0, 0..n / 2);
    // Both servers have read some of the first half.
    for s in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while s.get("/queries/adnetwork").await.1["counters"]["records_in"] == 0 {
            assert!(Instant::now() < deadline, "a server reads nothing");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    a.sql("CREATE QUERY by_geo AS SELECT geo, count(*) AS n FROM imps GROUP BY geo WINDOW 10s")
        .await;
    produce(&f.producer, t0, n / 2..n);

    let counted = (0..n).filter(|i| (i / 7) % 4 != 3).count() as u64;
    wait_rows(&a, "adnetwork", counted).await;
    // The rule: 100 records per second from t0, one 10 s window per 1 000.
    let geos = ["FR", "US", "DE", "unknown"];
    let mut expected: BTreeMap<(i64, String), u64> = BTreeMap::new();
    for i in 0..n {
        let key = ((i * 10) / 10_000, geos[(i / 7) as usize % 4].to_string());
        *expected.entry(key).or_default() += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let got = loop {
        let rows = by_geo_rows(&b).await;
        if rows.values().sum::<u64>() == n as u64 {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "by_geo: {} of {n} records; {}",
            rows.values().sum::<u64>(),
            b.get("/queries/by_geo").await.1
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut windows: Vec<&String> = got.keys().map(|k| &k.0).collect();
    windows.dedup();
    let got: BTreeMap<(i64, String), u64> = got
        .iter()
        .map(|((w, g), n)| {
            let i = windows.iter().position(|x| *x == w).unwrap() as i64;
            ((i, g.clone()), *n)
        })
        .collect();
    assert_eq!(got, expected);

    // Both queries' claims of each partition are one server's, and every
    // server reads the stream once, the catch-up having handed over.
    assert_eq!(split_claims(&pg, db), format!("0|{}", 2 * PARTITIONS));
    for s in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while stream_metric(s, "runnel_stream_readers").await != Some(1) {
            assert!(
                Instant::now() < deadline,
                "readers of the stream: {:?}",
                stream_metric(s, "runnel_stream_readers").await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The live reader, and by_geo's catch-up reader.
        let started = stream_metric(s, "runnel_stream_readers_started_total").await;
        assert!(started >= Some(2), "readers started: {started:?}");
    }
}

/// Metric `name` of stream `imps` from `GET /metrics`, if reported.
async fn stream_metric(s: &TestServer, name: &str) -> Option<u64> {
    let prefix = format!("{name}{{stream=\"imps\"}} ");
    let text = s.get_text("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|n| n.trim().parse().unwrap())
}

/// A claim the group did not make (a server that adopted a share the group
/// had already moved on from): the member's next flush is refused, it
/// writes nothing of what it read meanwhile, claims its share back a while
/// later and reads it again from its last flush; every record counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_claim_fences_then_the_owner_claims_back() {
    let Some(pg) = Postgres::start("a_stale_claim_fences_then_the_owner_claims_back") else {
        return;
    };
    let db = "cluster_fenced";
    let f = Fixture::new(pg.create_db(db), "fenced");
    let a = f.server(0);
    a.sql(&format!("{STREAM}; {QUERY}")).await;
    wait_owners(&pg, db, 1).await;
    let t0 = (chrono::Utc::now().timestamp_millis() / 10_000 - 100) * 10_000;
    let n = 6_000;
    produce(&f.producer, t0, 0..n / 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.get("/queries/adnetwork").await.1["counters"]["records_in"] == 0 {
        assert!(Instant::now() < deadline, "the server reads nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pg.psql(
        db,
        "UPDATE runnel_partition_progress SET owner = 'stale' WHERE partition < 4",
    );
    produce(&f.producer, t0, n / 2..n);
    let counted = (0..n).filter(|i| (i / 7) % 4 != 3).count() as u64;
    let rows = wait_rows(&a, "after a stale claim", counted).await;
    // Each (window, publisher, geo) holds what the feed put in it: 100
    // records a second from t0, so record i is in window i / 1000.
    let geos = ["FR", "US", "DE", "unknown"];
    let mut expected: BTreeMap<(i64, String, String), u64> = BTreeMap::new();
    for i in (0..n).filter(|i| (i / 7) % 4 != 3) {
        let key = (
            i / 1_000,
            format!("p{}", i % 7),
            geos[(i / 7) as usize % 4].into(),
        );
        *expected.entry(key).or_default() += 1;
    }
    let mut windows: Vec<&String> = rows.keys().map(|k| &k.0).collect();
    windows.dedup();
    let got: BTreeMap<(i64, String, String), u64> = rows
        .iter()
        .map(|((w, p, g), v)| {
            let i = windows.iter().position(|x| *x == w).unwrap() as i64;
            ((i, p.clone(), g.clone()), v.0)
        })
        .collect();
    assert_eq!(got, expected);
    // Claimed back by the server: no rebalance ran, only its reclaim.
    assert_eq!(owners(&pg, db), format!("1|{PARTITIONS}"), "claimed back");
}
