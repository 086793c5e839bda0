//! `ALLOW LATE` end to end: records arriving after their windows closed
//! correct them, so each window's row converges to an exact count of every
//! record, on a server that runs calmly and on one killed with SIGKILL
//! while corrections are being written; revised rows reach the event
//! stream as `update` events.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::TestServer;
use common::sse::Sse;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const SQL: &str = "
CREATE STREAM clicks (ts TIMESTAMP, page TEXT)
  WITH (kafka_topic = 'clicks', event_time = 'ts', watermark_delay = '1s', start = 'earliest');
CREATE QUERY per_page AS
SELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 10s ALLOW LATE 1h";

const PAGES: [&str; 5] = ["a", "b", "c", "d", "e"];

type Record = (i32, i64, &'static str);

fn send(p: &BaseProducer, records: &[Record]) {
    for (partition, ts, page) in records {
        let payload = format!(r#"{{"ts": {ts}, "page": "{page}"}}"#);
        p.send(
            BaseRecord::<(), str>::to("clicks")
                .payload(&payload)
                .partition(*partition),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// Counts per "window_start|page" of `records`: what every row must show
/// once each window has taken all of its records.
fn oracle(records: &[Record]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for (_, ts, page) in records {
        let start = ts - ts.rem_euclid(10_000);
        let start = chrono::DateTime::from_timestamp_millis(start)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ");
        *out.entry(format!("{start}|{page}")).or_default() += 1;
    }
    out
}

/// The server's rows as "window_start|page" → (n, revision); one row per key.
async fn rows(s: &TestServer) -> BTreeMap<String, (i64, i64)> {
    let (status, v) = s.get("/queries/per_page/results?limit=100000").await;
    assert_eq!(status, 200, "{v}");
    let mut out = BTreeMap::new();
    for r in v["rows"].as_array().unwrap() {
        let key = format!(
            "{}|{}",
            r["window_start"].as_str().unwrap(),
            r["page"].as_str().unwrap()
        );
        let value = (r["n"].as_i64().unwrap(), r["revision"].as_i64().unwrap());
        assert!(
            out.insert(key.clone(), value).is_none(),
            "two rows for {key}"
        );
    }
    out
}

async fn wait_for(s: &TestServer, want: &BTreeMap<String, i64>) -> BTreeMap<String, (i64, i64)> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = rows(s).await;
        let counts: BTreeMap<String, i64> = got.iter().map(|(k, v)| (k.clone(), v.0)).collect();
        if &counts == want {
            return got;
        }
        if Instant::now() > deadline {
            let wrong: Vec<_> = want
                .iter()
                .filter(|(k, n)| counts.get(*k) != Some(n))
                .take(5)
                .map(|(k, n)| format!("{k}: want {n}, have {:?}", counts.get(k)))
                .collect();
            panic!("rows never matched the oracle: {wrong:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_records_correct_closed_windows_exactly_across_kill_dash_nine() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("clicks", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let (calm_dir, crash_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let calm = TestServer::start(calm_dir.path(), &brokers);
    calm.sql(SQL).await;
    let mut crashing = TestServer::start(crash_dir.path(), &brokers);
    crashing.sql(SQL).await;
    let mut sse = Sse::connect(&format!("{}/queries/per_page/stream", calm.url), None).await;
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();

    // Two hours ago, so only records (never the wall clock) close windows.
    let now = chrono::Utc::now().timestamp_millis();
    let t0 = now - 7_200_000 - now.rem_euclid(10_000);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    let record = |rng: &mut rand::rngs::SmallRng| -> Record {
        let page = PAGES[rng.random_range(0..PAGES.len())];
        (
            rng.random_range(0..2),
            t0 + rng.random_range(0..60_000),
            page,
        )
    };
    // Six windows' records, then one at 2 min on each partition: the
    // watermark passes them all and every one of the six closes.
    let mut all: Vec<Record> = (0..2_000).map(|_| record(&mut rng)).collect();
    all.extend([(0, t0 + 120_000, "z"), (1, t0 + 120_000, "z")]);
    send(&p, &all);
    let on_time = oracle(&all);
    wait_for(&calm, &on_time).await;

    // Late bursts into the closed windows; every other one is followed at
    // once by a kill, while its corrections are being written.
    for burst in 0..6 {
        let late: Vec<Record> = (0..300).map(|_| record(&mut rng)).collect();
        send(&p, &late);
        all.extend(late);
        if burst % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
            crashing.kill9();
            crashing = TestServer::start(crash_dir.path(), &brokers);
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..900))).await;
    }
    let want = oracle(&all);
    let calm_rows = wait_for(&calm, &want).await;
    let crash_rows = wait_for(&crashing, &want).await;
    assert!(
        calm_rows.values().any(|(_, revision)| *revision > 0),
        "no window was revised: {calm_rows:?}"
    );
    // Revision numbers depend on how the late records were polled; the
    // counts must not.
    assert_eq!(calm_rows.len(), crash_rows.len());
    let (_, q) = calm.get("/queries/per_page").await;
    assert_eq!(q["counters"]["late_records"], 0, "{q}");
    assert_eq!(q["counters"]["records_in"], all.len() as u64, "{q}");

    // The event stream told the revisions apart.
    let mut updates = 0;
    while updates == 0 {
        let ev = sse.next().await;
        assert!(ev.event == "row" || ev.event == "update", "{ev:?}");
        let row: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(
            ev.event == "update",
            row["revision"].as_i64().unwrap() > 0,
            "{ev:?}"
        );
        updates += usize::from(ev.event == "update");
    }
    calm.stop();
}
