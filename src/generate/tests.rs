//! Tests of the record generators and of producing to a mock cluster.

use super::json::push_micros_fraction;
use super::*;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::DateTime;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};

const TS: i64 = 1_700_000_000_123;

fn records(kind: GenKind, seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut generator = Generator::new(kind, seed);
    (0..n)
        .map(|i| {
            let mut buf = Vec::new();
            generator.write_record(TS + i as i64 * 250, &mut buf);
            buf
        })
        .collect()
}

#[test]
fn same_seed_same_bytes() {
    for kind in [GenKind::Impressions, GenKind::Activity, GenKind::AccessLog] {
        let a = records(kind, 7, 2_000);
        let b = records(kind, 7, 2_000);
        assert_eq!(a, b, "{kind:?} is not deterministic");
        let c = records(kind, 8, 2_000);
        assert_ne!(a, c, "{kind:?} ignores its seed");
        assert!(
            a.iter().all(|r| !r.contains(&b'\n') && !r.is_empty()),
            "{kind:?} wrote an empty or multi-line record"
        );
    }
}

#[test]
fn buffer_is_appended_and_key_matches() {
    let mut generator = Generator::new(GenKind::Impressions, 3);
    let mut buf = b"prefix|".to_vec();
    generator.write_record(TS, &mut buf);
    assert!(buf.starts_with(b"prefix|{\"ts\":"));
    let v: serde_json::Value = serde_json::from_slice(&buf[7..]).unwrap();
    assert_eq!(v["cookie"].as_str().unwrap().as_bytes(), generator.key());
    assert_eq!(generator.records_written(), 1);
    assert_eq!(generator.kind(), GenKind::Impressions);
}

#[test]
fn impressions_are_json_with_expected_fields() {
    let mut geos = HashSet::new();
    let mut total_len = 0;
    let recs = records(GenKind::Impressions, 11, 20_000);
    for (i, rec) in recs.iter().enumerate() {
        total_len += rec.len();
        let v: serde_json::Value = serde_json::from_slice(rec)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(rec)));
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 7);
        assert_eq!(obj["ts"].as_i64(), Some(TS + i as i64 * 250));

        let numbered = |field: &str, prefix: &str, suffix: &str, n: u64| {
            let s = obj[field].as_str().unwrap();
            let num = s
                .strip_prefix(prefix)
                .and_then(|s| s.strip_suffix(suffix))
                .unwrap_or_else(|| panic!("bad {field}: {s}"));
            assert!(num.parse::<u64>().unwrap() < n, "{field} out of range: {s}");
        };
        numbered("publisher", "publisher_", "", u64::from(NUM_PUBLISHERS));
        numbered("advertiser", "advertiser_", "", u64::from(NUM_ADVERTISERS));
        numbered("website", "website_", ".com", u64::from(NUM_WEBSITES));
        numbered("cookie", "cookie_", "", u64::from(NUM_COOKIES));

        let geo = obj["geo"].as_str().unwrap();
        assert!(GEOS.contains(&geo), "unexpected geo {geo}");
        geos.insert(geo.to_owned());

        assert!(obj["bid"].is_f64(), "bid is not a float: {}", obj["bid"]);
        let bid = obj["bid"].as_f64().unwrap();
        assert!((0.0..1.0).contains(&bid), "bid out of range: {bid}");
    }
    assert!(geos.contains("unknown"));
    assert_eq!(geos.len(), GEOS.len());
    let avg = total_len / recs.len();
    assert!((120..=160).contains(&avg), "average size {avg}");
}

#[test]
fn bid_formatting() {
    let fmt = |m| {
        let mut v = Vec::new();
        push_micros_fraction(&mut v, m);
        String::from_utf8(v).unwrap()
    };
    assert_eq!(fmt(0), "0.0");
    assert_eq!(fmt(500_000), "0.5");
    assert_eq!(fmt(1), "0.000001");
    assert_eq!(fmt(999_999), "0.999999");
    assert_eq!(fmt(123_450), "0.12345");
    let mut v = Vec::new();
    push_i64(&mut v, -42);
    push_u64(&mut v, u64::MAX);
    assert_eq!(v, format!("-42{}", u64::MAX).as_bytes());
}

#[test]
fn activity_is_json_and_skewed() {
    let recs = records(GenKind::Activity, 5, 50_000);
    let mut per_user: HashMap<String, u64> = HashMap::new();
    let mut activities = HashSet::new();
    for rec in &recs {
        let v: serde_json::Value = serde_json::from_slice(rec).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 3);
        assert!(obj["ts"].is_i64());
        let user = obj["user_id"].as_str().unwrap();
        let n: u64 = user.strip_prefix("user_").unwrap().parse().unwrap();
        assert!((FIRST_USER..FIRST_USER + NUM_USERS).contains(&n));
        *per_user.entry(user.to_owned()).or_default() += 1;
        let activity = obj["activity"].as_str().unwrap();
        assert!(ACTIVITIES.contains(&activity), "unexpected {activity}");
        activities.insert(activity.to_owned());
    }
    assert_eq!(activities.len(), ACTIVITIES.len());
    // Skew: the most active user dwarfs the average one, yet many users
    // show up at all.
    let max = *per_user.values().max().unwrap();
    let mean = recs.len() as f64 / per_user.len() as f64;
    assert!(max as f64 > 100.0 * mean, "max {max}, mean {mean}");
    assert!(per_user.len() > 5_000, "only {} users", per_user.len());
}

/// Checks one Apache combined log line and returns (ip, status, time).
fn parse_combined(line: &str) -> (String, u32, DateTime<chrono::FixedOffset>) {
    let (ip, rest) = line.split_once(' ').unwrap();
    let octets: Vec<u8> = ip.split('.').map(|o| o.parse().unwrap()).collect();
    assert_eq!(octets.len(), 4, "bad ip {ip}");
    let rest = rest.strip_prefix("- - [").unwrap();
    let (time, rest) = rest.split_once("] \"").unwrap();
    let time = DateTime::parse_from_str(time, "%d/%b/%Y:%H:%M:%S %z").unwrap();
    let (request, rest) = rest.split_once("\" ").unwrap();
    let parts: Vec<&str> = request.split(' ').collect();
    assert_eq!(parts.len(), 3, "bad request {request}");
    assert!(["GET", "POST"].contains(&parts[0]));
    assert!(parts[1].starts_with('/'));
    assert_eq!(parts[2], "HTTP/1.1");
    let (status, rest) = rest.split_once(' ').unwrap();
    assert_eq!(status.len(), 3);
    let status: u32 = status.parse().unwrap();
    let (size, rest) = rest.split_once(' ').unwrap();
    size.parse::<u64>().unwrap();
    let rest = rest.strip_prefix('"').unwrap();
    let (referer, rest) = rest.split_once("\" \"").unwrap();
    assert!(referer == "-" || referer.starts_with("https://"));
    let agent = rest.strip_suffix('"').unwrap();
    assert!(!agent.is_empty() && !agent.contains('"'));
    (ip.to_owned(), status, time)
}

#[test]
fn access_log_lines_are_combined_format() {
    let recs = records(GenKind::AccessLog, 9, 20_000);
    let mut statuses: HashMap<u32, u64> = HashMap::new();
    let mut ips: HashMap<String, u64> = HashMap::new();
    for (i, rec) in recs.iter().enumerate() {
        let line = std::str::from_utf8(rec).unwrap();
        let (ip, status, time) = parse_combined(line);
        let expected_ms = TS + i as i64 * 250;
        assert_eq!(time.timestamp(), expected_ms.div_euclid(1_000), "{line}");
        *statuses.entry(status).or_default() += 1;
        *ips.entry(ip).or_default() += 1;
    }
    let ok = statuses[&200] as f64 / recs.len() as f64;
    assert!((0.8..0.9).contains(&ok), "200 share {ok}");
    for status in [304, 404, 401, 500, 503] {
        assert!(
            statuses.contains_key(&status),
            "no {status} in {statuses:?}"
        );
    }
    let hottest = *ips.values().max().unwrap();
    assert!(hottest > 800, "no hot ip: max {hottest}");
    assert!(ips.len() > 5_000, "only {} ips", ips.len());

    // A known time renders as Apache does, in UTC.
    let mut generator = Generator::new(GenKind::AccessLog, 1);
    let mut buf = Vec::new();
    generator.write_record(971_185_736_000, &mut buf);
    let line = String::from_utf8(buf).unwrap();
    assert!(
        line.contains(" - - [10/Oct/2000:13:48:56 +0000] \""),
        "{line}"
    );
}

#[test]
fn write_lines_counts_and_paces() {
    let mut out = Vec::new();
    let n = write_lines(GenKind::Activity, &mut out, None, Some(1_000), 4).unwrap();
    assert_eq!(n, 1_000);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 1_000);
    assert!(text.ends_with('\n'));

    // 2000 records at 4000/s take about half a second.
    let start = Instant::now();
    let mut out = Vec::new();
    let n = write_lines(GenKind::Impressions, &mut out, Some(4_000), Some(2_000), 4).unwrap();
    let elapsed = start.elapsed();
    assert_eq!(n, 2_000);
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_millis(1_500),
        "took {elapsed:?}"
    );
}

/// Reads `topic` from the beginning of partitions `0..partitions` until
/// `expected` records arrived (or a timeout), returning records per partition.
fn consume_all(
    brokers: &str,
    topic: &str,
    partitions: i32,
    expected: u64,
) -> HashMap<i32, Vec<Vec<u8>>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("runnel-gen-test-{topic}"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut by_partition: HashMap<i32, Vec<Vec<u8>>> = HashMap::new();
    let mut received = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while received < expected && Instant::now() < deadline {
        if let Some(msg) = consumer.poll(Duration::from_millis(100)) {
            let msg = msg.unwrap();
            by_partition
                .entry(msg.partition())
                .or_default()
                .push(msg.payload().unwrap().to_vec());
            received += 1;
        }
    }
    by_partition
}

#[test]
fn produce_to_mock_cluster() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("imps-by-key", 4, 1).unwrap();
    cluster.create_topic("imps-round-robin", 4, 1).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let mut opts = ProduceOptions {
        brokers: brokers.clone(),
        topic: "imps-by-key".into(),
        rate: None,
        count: Some(2_000),
        seed: 21,
        partitions: None,
    };
    let delivered = runtime
        .block_on(produce(GenKind::Impressions, &opts, None))
        .unwrap();
    assert_eq!(delivered, 2_000);
    let got = consume_all(&brokers, "imps-by-key", 4, 2_000);
    assert_eq!(got.values().map(Vec::len).sum::<usize>(), 2_000);
    assert_eq!(got.len(), 4, "keys should spread over all partitions");
    for payload in got.values().flatten() {
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
        assert!(v["cookie"].as_str().unwrap().starts_with("cookie_"));
    }

    opts.topic = "imps-round-robin".into();
    opts.partitions = Some(4);
    let delivered = runtime
        .block_on(produce(GenKind::Impressions, &opts, None))
        .unwrap();
    assert_eq!(delivered, 2_000);
    let got = consume_all(&brokers, "imps-round-robin", 4, 2_000);
    for p in 0..4 {
        assert_eq!(got.get(&p).map_or(0, Vec::len), 500, "partition {p}");
    }
}

#[test]
fn produce_until_stopped_at_rate() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("activity", 2, 1).unwrap();
    let opts = ProduceOptions {
        brokers: cluster.bootstrap_servers(),
        topic: "activity".into(),
        rate: Some(5_000),
        count: None,
        seed: 2,
        partitions: None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            stop.store(true, Ordering::Relaxed);
        })
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let delivered = runtime
        .block_on(produce(GenKind::Activity, &opts, Some(stop)))
        .unwrap();
    stopper.join().unwrap();
    // About 400 ms at 5000/s; generous bounds for a busy machine.
    assert!((1_000..=3_000).contains(&delivered), "{delivered}");
}

#[test]
fn produce_rejects_bad_options() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut opts = ProduceOptions {
        brokers: "127.0.0.1:1".into(),
        topic: String::new(),
        rate: None,
        count: Some(1),
        seed: 0,
        partitions: None,
    };
    let err = runtime.block_on(produce(GenKind::Activity, &opts, None));
    assert!(matches!(err, Err(GenError::InvalidOptions(_))));
    opts.topic = "t".into();
    opts.partitions = Some(0);
    let err = runtime.block_on(produce(GenKind::Activity, &opts, None));
    assert!(matches!(err, Err(GenError::InvalidOptions(_))));
}
