//! An exact oracle of produced impressions: a [`Feed`] produces records
//! into a topic and keeps, per 10 s window and group, what a query over
//! them must report; [`wait_and_check`] compares a server's rows with it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use runnel::generate::{GenKind, Generator};
use serde_json::Value;

use super::TestServer;

/// The topic fed.
pub const TOPIC: &str = "imps";

/// One window and group: window_start, publisher, geo.
pub type Key = Vec<String>;

/// A group's exact aggregates: `count(*)`, `sum(bid)`, the cookies.
#[derive(Default, Clone)]
pub struct Agg {
    pub n: i64,
    pub sum: f64,
    pub cookies: BTreeSet<String>,
}

impl Agg {
    /// Adds `other`'s records.
    fn add(&mut self, other: &Agg) {
        self.n += other.n;
        self.sum += other.sum;
        self.cookies.extend(other.cookies.iter().cloned());
    }
}

/// Produces impressions and keeps the exact oracle of what it produced:
/// record `i` has event time `base + i * step_ms` (the wall clock when
/// `step_ms` is 0) and goes to partition `i % partitions`.
pub struct Feed {
    producer: BaseProducer,
    generator: Generator,
    pub base: i64,
    step_ms: i64,
    partitions: usize,
    next: usize,
    /// Of every record not in geo `unknown`, by window, publisher and geo.
    pub oracle: BTreeMap<Key, Agg>,
}

impl Feed {
    /// `base` is rounded down to a window start.
    pub fn new(brokers: &str, partitions: usize, base: i64, step_ms: i64) -> Self {
        Feed {
            producer: ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("linger.ms", "5")
                .create()
                .unwrap(),
            generator: Generator::new(GenKind::Impressions, 42),
            base: base.div_euclid(10_000) * 10_000,
            step_ms,
            partitions,
            next: 0,
            oracle: BTreeMap::new(),
        }
    }

    /// Event time of the next record.
    fn next_ts(&self) -> i64 {
        match self.step_ms {
            0 => chrono::Utc::now().timestamp_millis(),
            step => self.base + self.next as i64 * step,
        }
    }

    /// Sends one record stamped `ts` to `partition`, outside the oracle.
    pub fn stray(&mut self, ts: i64, partition: i32) {
        let mut buf = Vec::new();
        self.generator.write_record(ts, &mut buf);
        self.producer
            .send(
                BaseRecord::<(), [u8]>::to(TOPIC)
                    .payload(&buf)
                    .partition(partition),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        self.producer.flush(Duration::from_secs(10)).unwrap();
    }

    /// Produces `count` records at about `rate` records/s, then flushes.
    pub fn burst(&mut self, count: usize, rate: f64) {
        let start = Instant::now();
        let mut buf = Vec::new();
        for k in 0..count {
            let ts = self.next_ts();
            buf.clear();
            self.generator.write_record(ts, &mut buf);
            let v: Value = serde_json::from_slice(&buf).unwrap();
            let geo = v["geo"].as_str().unwrap().to_string();
            if geo != "unknown" {
                let ws = ts.div_euclid(10_000) * 10_000;
                let key = vec![
                    runnel::store::format_api_ts(ws),
                    v["publisher"].as_str().unwrap().to_string(),
                    geo,
                ];
                let a = self.oracle.entry(key).or_default();
                a.n += 1;
                a.sum += v["bid"].as_f64().unwrap();
                a.cookies.insert(v["cookie"].as_str().unwrap().to_string());
            }
            let partition = (self.next % self.partitions) as i32;
            while let Err((e, _)) = self.producer.send(
                BaseRecord::<(), [u8]>::to(TOPIC)
                    .payload(&buf)
                    .partition(partition),
            ) {
                assert!(e.to_string().contains("Queue full"), "{e}");
                self.producer.poll(Duration::from_millis(5));
            }
            self.next += 1;
            if k % 200 == 0 {
                self.producer.poll(Duration::ZERO);
                let due = Duration::from_secs_f64(k as f64 / rate);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        self.producer.flush(Duration::from_secs(30)).unwrap();
    }
}

/// Every result row of `query`, read page by page, keyed by
/// `window_start` and the `group` columns; a duplicate row fails.
pub async fn all_rows(s: &TestServer, query: &str, group: &[&str]) -> BTreeMap<Key, Value> {
    let mut out = BTreeMap::new();
    let mut cursor = String::new();
    loop {
        let path = match cursor.is_empty() {
            true => format!("/queries/{query}/results?limit=1000"),
            false => format!("/queries/{query}/results?limit=1000&after={cursor}"),
        };
        let (st, v) = s.get(&path).await;
        assert_eq!(st, 200, "{v}");
        let page = v["rows"].as_array().unwrap();
        if page.is_empty() {
            return out;
        }
        for r in page {
            let mut key = vec![r["window_start"].as_str().unwrap().to_string()];
            key.extend(group.iter().map(|c| r[*c].as_str().unwrap().to_string()));
            let prev = out.insert(key.clone(), r.clone());
            assert!(prev.is_none(), "duplicate row {key:?}");
        }
        cursor = v["cursor"].as_str().unwrap().to_string();
    }
}

/// Waits until query `query` has taken `n` records.
pub async fn wait_for_records(s: &TestServer, query: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, q) = s.get(&format!("/queries/{query}")).await;
        if q["counters"]["records_in"] == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{query} has not taken {n} records: {q}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`wait_and_check_query`] for query `adnetwork`, by publisher and geo.
pub async fn wait_and_check(s: &TestServer, oracle: &BTreeMap<Key, Agg>) {
    wait_and_check_query(s, "adnetwork", &["publisher", "geo"], oracle).await
}

/// The oracle by window and geo alone.
pub fn by_geo(oracle: &BTreeMap<Key, Agg>) -> BTreeMap<Key, Agg> {
    let mut out: BTreeMap<Key, Agg> = BTreeMap::new();
    for (k, a) in oracle {
        out.entry(vec![k[0].clone(), k[2].clone()])
            .or_default()
            .add(a);
    }
    out
}

/// An oracle of 10 s windows starting at or after `base` (a window start)
/// by windows of `size_ms` instead (a multiple of 10 s).
pub fn by_window(oracle: &BTreeMap<Key, Agg>, base: i64, size_ms: i64) -> BTreeMap<Key, Agg> {
    let last = oracle
        .keys()
        .map(|k| k[0].clone())
        .max()
        .unwrap_or_default();
    let mut start_of = BTreeMap::new();
    let mut ws = base;
    while runnel::store::format_api_ts(ws) <= last {
        start_of.insert(runnel::store::format_api_ts(ws), ws);
        ws += 10_000;
    }
    let mut out: BTreeMap<Key, Agg> = BTreeMap::new();
    for (k, a) in oracle {
        let start = start_of[&k[0]].div_euclid(size_ms) * size_ms;
        let mut key = k.clone();
        key[0] = runnel::store::format_api_ts(start);
        out.entry(key).or_default().add(a);
    }
    out
}

/// Waits until `query` (columns `imps`, `total_bid`, `cookies`,
/// `uniques`, grouped by `group`) has as many rows as the oracle has
/// groups (the last window closes once the stream has been quiet long
/// enough), then checks every row against the oracle.
pub async fn wait_and_check_query(
    s: &TestServer,
    query: &str,
    group: &[&str],
    oracle: &BTreeMap<Key, Agg>,
) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut rows = all_rows(s, query, group).await;
    while rows.len() < oracle.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rows = all_rows(s, query, group).await;
    }
    // Nothing more may come (no window twice, no stray group).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = all_rows(s, query, group).await;
    let missing: Vec<_> = oracle.keys().filter(|k| !rows.contains_key(*k)).collect();
    let extra: Vec<_> = rows.keys().filter(|k| !oracle.contains_key(*k)).collect();
    let (_, q) = s.get(&format!("/queries/{query}")).await;
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{query}: {} of {} rows missing (first {:?}), {} extra (first {:?}); query: {q}",
        missing.len(),
        oracle.len(),
        missing.first(),
        extra.len(),
        extra.first()
    );
    for (key, a) in oracle {
        let r = &rows[key];
        assert_eq!(r["imps"].as_i64(), Some(a.n), "{key:?}: {r}");
        assert_eq!(
            r["cookies"].as_i64(),
            Some(a.cookies.len() as i64),
            "{key:?}: {r}"
        );
        let total = r["total_bid"].as_f64().unwrap();
        assert!(
            (total - a.sum).abs() <= 1e-9 * a.sum.abs().max(1.0),
            "{key:?}: {total} vs {}",
            a.sum
        );
        let exact = a.cookies.len() as f64;
        let u = r["uniques"].as_f64().unwrap();
        assert!(
            (u - exact).abs() <= (exact * 0.02).max(1.0),
            "{key:?}: {u} vs {exact}"
        );
    }
}

/// librdkafka's mock cluster with topic [`TOPIC`] of `partitions`.
pub fn mock_topic(
    partitions: i32,
) -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
) {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, partitions, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    (cluster, brokers)
}

/// The wall clock ten minutes ago, in epoch ms.
pub fn ten_minutes_ago() -> i64 {
    chrono::Utc::now().timestamp_millis() - 600_000
}

/// Produces `bursts` bursts of 2 500 records over 4 partitions (event times
/// 2 ms apart from ten minutes ago: 5 s of event time per burst, so the
/// data ends on a window boundary), with random pauses of 100 ms up to
/// `max_pause_ms` between them, while the server `s` is killed with
/// SIGKILL and started again on `data_dir` `kills` times at random moments
/// 0.3–2 s apart. `seeds` seed the pauses and the kills. Returns the last
/// server and the oracle of everything produced.
pub async fn bursts_through_kill_nines(
    mut s: TestServer,
    data_dir: &Path,
    brokers: &str,
    (bursts, max_pause_ms, kills): (usize, u64, usize),
    seeds: (u64, u64),
) -> (TestServer, BTreeMap<Key, Agg>) {
    let producer = {
        let brokers = brokers.to_string();
        std::thread::spawn(move || {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seeds.0);
            let mut feed = Feed::new(&brokers, 4, ten_minutes_ago(), 2);
            for _ in 0..bursts {
                feed.burst(2_500, 8_000.0);
                let pause = rng.random_range(100..max_pause_ms);
                std::thread::sleep(Duration::from_millis(pause));
            }
            feed.oracle
        })
    };
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seeds.1);
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2_000))).await;
        s.kill9();
        s = TestServer::start(data_dir, brokers);
    }
    (s, producer.join().unwrap())
}
