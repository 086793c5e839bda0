//! The seed use cases, run from the `.sql` files in `queries/` against the
//! real server and the mock-cluster broker, checked against oracles.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::TestServer;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use runnel::generate::{GenKind, Generator};
use serde_json::Value;

fn query_file(name: &str) -> String {
    std::fs::read_to_string(format!("{}/queries/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// Produces `n` generated records with event times `step_ms` apart from
/// `base`, round-robin over `partitions`; returns their JSON.
fn produce(
    p: &BaseProducer,
    topic: &str,
    kind: GenKind,
    n: usize,
    base: i64,
    step_ms: i64,
    partitions: i32,
) -> Vec<Value> {
    let mut g = Generator::new(kind, 11);
    let mut out = Vec::with_capacity(n);
    let mut buf = Vec::new();
    for i in 0..n {
        buf.clear();
        g.write_record(base + i as i64 * step_ms, &mut buf);
        out.push(serde_json::from_slice(&buf).unwrap());
        let part = i as i32 % partitions;
        while let Err((e, _)) = p.send(
            BaseRecord::<(), [u8]>::to(topic)
                .payload(&buf)
                .partition(part),
        ) {
            assert!(e.to_string().contains("Queue full"), "{e}");
            p.poll(Duration::from_millis(5));
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
    out
}

async fn all_rows(s: &TestServer, query: &str, want: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, v) = s
            .get(&format!("/queries/{query}/results?limit=100000"))
            .await;
        let rows = v["rows"].as_array().cloned().unwrap_or_default();
        if rows.len() >= want {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{query}: {} of {want} rows",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adnetwork_and_stream_table_join() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("adnetwork-topic", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    // dstreams.sql joins the stream to queries/publishers.csv.
    let s = TestServer::start_with(dir.path(), &brokers, &[("RUNNEL_ALLOW_FILES", "queries")]);
    s.sql(&query_file("adnetwork.sql")).await;
    s.sql(&query_file("dstreams.sql")).await;

    let base = (chrono::Utc::now().timestamp_millis() - 300_000) / 10_000 * 10_000;
    let records = produce(
        &producer(&brokers),
        "adnetwork-topic",
        GenKind::Impressions,
        20_000,
        base,
        2,
        2,
    );

    // Oracles: per (window, tier) for the join; per (10 s window, geo) counts
    // over 30 s windows sliding by 10 s for countByValueAndWindow.
    let tier = |p: &str| {
        ["gold", "silver", "bronze"]
            [p.trim_start_matches("publisher_").parse::<usize>().unwrap() % 3]
    };
    let mut by_tier: HashMap<(i64, &str), (i64, f64)> = HashMap::new();
    let mut by_geo: HashMap<(i64, String), i64> = HashMap::new();
    for r in &records {
        let ts = r["ts"].as_i64().unwrap();
        let geo = r["geo"].as_str().unwrap().to_string();
        let mut s = ts.div_euclid(10_000) * 10_000;
        while s > ts - 30_000 {
            *by_geo.entry((s, geo.clone())).or_default() += 1;
            s -= 10_000;
        }
        if geo != "unknown" {
            let e = by_tier
                .entry((
                    ts.div_euclid(10_000) * 10_000,
                    tier(r["publisher"].as_str().unwrap()),
                ))
                .or_default();
            e.0 += 1;
            e.1 += r["bid"].as_f64().unwrap();
        }
    }
    let rows = all_rows(&s, "revenue_by_tier", by_tier.len()).await;
    assert_eq!(rows.len(), by_tier.len());
    for r in &rows {
        let start = chrono::DateTime::parse_from_rfc3339(r["window_start"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        let (n, sum) = by_tier[&(start, r["tier"].as_str().unwrap())];
        assert_eq!(r["imps"].as_i64().unwrap(), n, "{r}");
        assert!((r["spend"].as_f64().unwrap() - sum).abs() < 1e-6, "{r}");
    }
    let rows = all_rows(&s, "geo_counts", by_geo.len()).await;
    assert_eq!(rows.len(), by_geo.len());
    for r in &rows {
        let start = chrono::DateTime::parse_from_rfc3339(r["window_start"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        assert_eq!(
            r["n"].as_i64().unwrap(),
            by_geo[&(start, r["geo"].as_str().unwrap().to_string())],
            "{r}"
        );
    }
}

/// Queries grouping a stream by the columns of a reference table it joins
/// run through the server and emit what the join implies: a LEFT JOIN puts
/// orders without a customer row, or without a customer, in the NULL group;
/// an inner join drops them, and HAVING filters its groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_table_joins_grouped_by_table_columns() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("orders", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(
        dir.path(),
        &brokers,
        &[("RUNNEL_ALLOW_FILES", "tests/queries")],
    );
    s.sql(
        "CREATE STREAM orders (ts TIMESTAMP, customer TEXT, amount BIGINT)
           WITH (kafka_topic = 'orders', format = 'json', event_time = 'ts', start = 'earliest');
         CREATE TABLE customers (id TEXT, name TEXT, region TEXT)
           WITH (source = 'file', path = 'tests/queries/customers.csv', format = 'csv', header = true);
         CREATE QUERY by_region AS
         SELECT c.region, count(*) AS n, sum(o.amount) AS total
         FROM orders o LEFT JOIN customers c ON o.customer = c.id
         GROUP BY c.region WINDOW 10s;
         CREATE QUERY busy_regions AS
         SELECT c.region, count(*) AS n
         FROM orders o JOIN customers c ON o.customer = c.id
         GROUP BY c.region HAVING sum(o.amount) > 10 WINDOW 10s;",
    )
    .await;

    // customers.csv: c1 and c3 in east, c2 in west, c4 in north; c8 and c9
    // have no row.
    let base = (chrono::Utc::now().timestamp_millis() - 300_000) / 10_000 * 10_000;
    let orders: [(i32, i64, Option<&str>, i64); 12] = [
        (0, 1_000, Some("c1"), 10),
        (1, 1_500, Some("c9"), 7),
        (0, 2_000, Some("c2"), 20),
        (1, 2_500, Some("c3"), 30),
        (0, 3_000, None, 5),
        (1, 4_000, Some("c1"), 1),
        (0, 11_000, Some("c2"), 2),
        (1, 12_000, Some("c4"), 4),
        (0, 13_000, Some("c2"), 3),
        (1, 14_000, Some("c8"), 9),
        // Both partitions pass 20 s: the first two windows close.
        (0, 30_000, Some("c1"), 100),
        (1, 30_000, Some("c3"), 100),
    ];
    let p = producer(&brokers);
    for (partition, at, customer, amount) in orders {
        let record = serde_json::json!({"ts": base + at, "customer": customer, "amount": amount});
        p.send(
            BaseRecord::<(), str>::to("orders")
                .payload(&record.to_string())
                .partition(partition),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();

    // Both queries close both windows and keep running.
    for q in ["by_region", "busy_regions"] {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (_, v) = s.get(&format!("/queries/{q}")).await;
            assert_ne!(v["status"], "failed", "{v}");
            if v["counters"]["windows_closed"] == 2 {
                assert_eq!(v["status"], "running", "{v}");
                break;
            }
            assert!(Instant::now() < deadline, "{q}: windows not closed: {v}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let key = |r: &Value| {
        (
            r["window_start"].as_str().unwrap().to_string(),
            r["region"].as_str().map(str::to_string),
        )
    };
    let window = |at: i64| runnel::store::format_api_ts(base + at);
    let region = |r: &str| Some(r.to_string()).filter(|r| !r.is_empty());
    // [0 s, 10 s): east c1 10 + c3 30 + c1 1, west c2 20, NULL c9 7 + 5;
    // [10 s, 20 s): north c4 4, west c2 2 + 3, NULL c8 9.
    let want: HashMap<(String, Option<String>), (i64, i64)> = [
        (0, "east", 3, 41),
        (0, "west", 1, 20),
        (0, "", 2, 12),
        (10_000, "north", 1, 4),
        (10_000, "west", 2, 5),
        (10_000, "", 1, 9),
    ]
    .into_iter()
    .map(|(w, r, n, total)| ((window(w), region(r)), (n, total)))
    .collect();
    let rows = all_rows(&s, "by_region", want.len()).await;
    let got: HashMap<_, _> = rows
        .iter()
        .map(|r| {
            (
                key(r),
                (r["n"].as_i64().unwrap(), r["total"].as_i64().unwrap()),
            )
        })
        .collect();
    assert_eq!((rows.len(), got), (want.len(), want));

    // Sums over 10: east 41 and west 20 in [0 s, 10 s); none in [10 s, 20 s).
    let want: HashMap<(String, Option<String>), i64> = [
        (window(0), region("east"), 3),
        (window(0), region("west"), 1),
    ]
    .into_iter()
    .map(|(w, r, n)| ((w, r), n))
    .collect();
    let rows = all_rows(&s, "busy_regions", want.len()).await;
    let got: HashMap<_, _> = rows
        .iter()
        .map(|r| (key(r), r["n"].as_i64().unwrap()))
        .collect();
    assert_eq!((rows.len(), got), (want.len(), want));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn popular_users_published_to_kafka() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("activity", 2, 1).unwrap();
    cluster.create_topic("popular_users", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(&query_file("popular_users.sql")).await;

    let base = chrono::Utc::now().timestamp_millis() - 60_000;
    let records = produce(
        &producer(&brokers),
        "activity",
        GenKind::Activity,
        20_000,
        base,
        1,
        2,
    );
    let mut scores: HashMap<String, i64> = HashMap::new();
    for r in &records {
        let points = match r["activity"].as_str().unwrap() {
            "profile.picture.like" => 2,
            "profile.view" => 1,
            "message.private" => 3,
            _ => 0,
        };
        *scores
            .entry(r["user_id"].as_str().unwrap().to_string())
            .or_default() += points;
    }
    let mut sorted: Vec<i64> = scores.values().copied().collect();
    sorted.sort_unstable();
    let pct = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];

    // Read the topic with a real consumer until an emission covering every record arrives.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "seeds-test")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("popular_users", 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let total: i64 = scores.values().sum();
    let mut latest: HashMap<String, Value> = HashMap::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "no complete emission on popular_users"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let v: Value = serde_json::from_slice(m.unwrap().payload().unwrap()).unwrap();
            latest.insert(v["user_id"].as_str().unwrap().to_string(), v);
        }
        // Done once every published score equals the final score.
        let complete = !latest.is_empty()
            && latest
                .iter()
                .all(|(u, v)| v["score"].as_i64() == scores.get(u).copied())
            && latest.len() as i64 >= 1;
        let (_, q) = s.get("/queries/popular_users").await;
        if complete
            && q["counters"]["records_in"].as_i64() == Some(records.len() as i64)
            && total > 0
        {
            let (_, now) = s.get("/queries/popular_users/results?limit=100000").await;
            let users: HashSet<String> = now["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["user_id"].as_str().unwrap().to_string())
                .collect();
            if users.iter().all(|u| latest.contains_key(u)) {
                // t-digest bound: everyone at the exact 99th percentile is in,
                // nobody below the exact 90th.
                for (u, sc) in &scores {
                    if *sc >= pct(0.99) {
                        assert!(users.contains(u), "{u} ({sc}) missing; p99 = {}", pct(0.99));
                    }
                }
                for u in &users {
                    assert!(
                        scores[u] >= pct(0.90),
                        "{u} ({}) below p90 {}",
                        scores[u],
                        pct(0.90)
                    );
                }
                assert!(!users.is_empty());
                return;
            }
        }
    }
}

/// Splits a combined log line the simple way: ip, endpoint, status, size.
fn parse_access(line: &str) -> (String, String, i64, Option<i64>) {
    let ip = line.split(' ').next().unwrap().to_string();
    let request = line.split('"').nth(1).unwrap();
    let endpoint = request.split(' ').nth(1).unwrap().to_string();
    let after = line.split('"').nth(2).unwrap().trim();
    let mut it = after.split(' ');
    let status = it.next().unwrap().parse().unwrap();
    let size = it.next().unwrap().parse().ok();
    (ip, endpoint, status, size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_analytics() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("access-log", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(&query_file("access_logs.sql")).await;

    // Generated lines carry second-precision times: 20 000 lines over 40 s.
    let base = (chrono::Utc::now().timestamp_millis() - 300_000) / 10_000 * 10_000;
    let p = producer(&brokers);
    let mut g = Generator::new(GenKind::AccessLog, 5);
    let mut buf = Vec::new();
    let mut parsed = Vec::new();
    for i in 0..20_000i64 {
        buf.clear();
        let ts = base + i * 2;
        g.write_record(ts, &mut buf);
        parsed.push((
            ts / 1000 * 1000,
            parse_access(std::str::from_utf8(&buf).unwrap()),
        ));
        while let Err((e, _)) = p.send(
            BaseRecord::<(), [u8]>::to("access-log")
                .payload(&buf)
                .partition((i % 2) as i32),
        ) {
            assert!(e.to_string().contains("Queue full"), "{e}");
            p.poll(Duration::from_millis(5));
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();

    let win = |ts: i64| runnel::store::format_api_ts(ts.div_euclid(10_000) * 10_000);
    let mut sizes: HashMap<String, (i64, i64, i64, i64, i64)> = HashMap::new(); // min, max, sum, n_sized, n
    let mut codes: HashMap<(String, i64), i64> = HashMap::new();
    let mut ips: HashMap<(String, String), i64> = HashMap::new();
    let mut endpoints: HashMap<String, HashMap<String, i64>> = HashMap::new();
    for (ts, (ip, endpoint, status, size)) in &parsed {
        let w = win(*ts);
        let e = sizes
            .entry(w.clone())
            .or_insert((i64::MAX, i64::MIN, 0, 0, 0));
        if let Some(sz) = size {
            e.0 = e.0.min(*sz);
            e.1 = e.1.max(*sz);
            e.2 += sz;
            e.3 += 1;
        }
        e.4 += 1;
        *codes.entry((w.clone(), *status)).or_default() += 1;
        *ips.entry((w.clone(), ip.clone())).or_default() += 1;
        *endpoints
            .entry(w)
            .or_default()
            .entry(endpoint.clone())
            .or_default() += 1;
    }

    let rows = all_rows(&s, "content_size", sizes.len()).await;
    for r in &rows {
        let e = sizes[r["window_start"].as_str().unwrap()];
        assert_eq!(
            (
                r["min_size"].as_i64().unwrap(),
                r["max_size"].as_i64().unwrap()
            ),
            (e.0, e.1),
            "{r}"
        );
        assert!(
            (r["avg_size"].as_f64().unwrap() - e.2 as f64 / e.3 as f64).abs() < 1e-6,
            "{r}"
        );
        assert_eq!(r["requests"].as_i64().unwrap(), e.4);
    }
    let rows = all_rows(&s, "response_codes", codes.len()).await;
    assert_eq!(rows.len(), codes.len());
    for r in &rows {
        let k = (
            r["window_start"].as_str().unwrap().to_string(),
            r["status"].as_i64().unwrap(),
        );
        assert_eq!(r["n"].as_i64().unwrap(), codes[&k], "{r}");
    }
    let busy: HashMap<_, _> = ips.iter().filter(|(_, n)| **n > 10).collect();
    let rows = all_rows(&s, "busy_ips", busy.len()).await;
    assert_eq!(rows.len(), busy.len());
    for r in &rows {
        let k = (
            r["window_start"].as_str().unwrap().to_string(),
            r["ip"].as_str().unwrap().to_string(),
        );
        assert_eq!(r["requests"].as_i64().unwrap(), *busy[&k], "{r}");
    }
    let want: usize = endpoints.values().map(|m| m.len().min(10)).sum();
    let rows = all_rows(&s, "top_endpoints", want).await;
    assert_eq!(rows.len(), want);
    for (w, m) in &endpoints {
        let mut top: Vec<(&String, &i64)> = m.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let expected: Vec<(String, i64)> = top
            .into_iter()
            .take(10)
            .map(|(e, n)| (e.clone(), *n))
            .collect();
        let got: Vec<(String, i64)> = rows
            .iter()
            .filter(|r| r["window_start"] == w.as_str())
            .map(|r| {
                (
                    r["endpoint"].as_str().unwrap().to_string(),
                    r["hits"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, expected, "window {w}");
    }
}
