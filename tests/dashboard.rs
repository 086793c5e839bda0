//! The dashboard in a real browser: headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`, which `.ci/run` installs).
//! It loads `/`, sees a query's rows arrive, registers a query through the
//! SQL box, has no console errors, and saves a screenshot to
//! `$CARGO_TARGET_TMPDIR/dashboard.png`. The selected query's detail panels
//! (plan, partitions, errors and warnings, commit time) each have a test
//! over a two-partition topic.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use browser::{Driver, browser, programs, severe_logs, texts, wait_until};
use common::TestServer;
use fantoccini::{Client, Locator};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::json;

/// Produces `n` records into the first `partitions` partitions of `topic`
/// in turn, 100 ms of event time apart, starting at a 10 s boundary five
/// minutes ago; every 97th is broken.
/// Produces `n` records, a tenth of a second apart in event time from a
/// window boundary five minutes ago.
fn produce(brokers: &str, topic: &str, n: i64, partitions: i32) {
    produce_from(brokers, topic, n, partitions, 300_000);
}

/// Produces `n` records, a tenth of a second apart in event time from the
/// window boundary `ago_ms` before now.
fn produce_from(brokers: &str, topic: &str, n: i64, partitions: i32, ago_ms: i64) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let base = chrono::Utc::now().timestamp_millis() - ago_ms;
    let base = base - base.rem_euclid(10_000);
    for i in 0..n {
        let geo = ["US", "DE", "FR", "JP"][(i % 4) as usize];
        let v = json!({"ts": base + i * 100, "geo": geo, "bid": (i % 10) as f64 / 10.0});
        let v = if i % 97 == 0 {
            "{broken".to_string()
        } else {
            v.to_string()
        };
        producer
            .send(
                BaseRecord::<(), str>::to(topic)
                    .payload(&v)
                    .partition((i % partitions as i64) as i32),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let Some((chromium, driver)) = programs("dashboard_in_headless_chromium") else {
        return;
    };

    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(
        "CREATE STREAM events (ts TIMESTAMP, geo TEXT, bid DOUBLE)
         WITH (kafka_topic = 'events', format = 'json', event_time = 'ts',
               watermark_delay = '1s', start = 'earliest')",
    )
    .await;
    s.sql("CREATE QUERY by_geo AS SELECT geo, count(*) AS imps, avg(bid) AS avg_bid FROM events GROUP BY geo WINDOW 10s")
        .await;
    // The records come in one burst once the stream has been sampled, as
    // when a query catches up on a backlog.
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.get("/dashboard/history").await.1["streams"]["events"].is_null() {
        assert!(Instant::now() < deadline, "the stream was never sampled");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    produce(&brokers, "events", 600, 1);

    let (_driver, c) = browser(&chromium, &driver).await;

    c.goto(&format!("{}/", s.url)).await.unwrap();
    assert_eq!(c.title().await.unwrap(), "Runnel");

    // The query is listed and selected, and its rows arrive over SSE.
    wait_until(&c, "the query list", || async {
        texts(&c, "#queries li .name")
            .await
            .contains(&"by_geo".to_string())
    })
    .await;
    wait_until(&c, "result rows", || async {
        texts(&c, "#results tbody td.num").await.len() >= 8
    })
    .await;
    let headers = texts(&c, "#results thead th").await;
    assert_eq!(
        headers,
        ["window_start", "window_end", "geo", "imps", "avg_bid"]
    );
    let geos = texts(&c, "#results tbody tr td:nth-child(3)").await;
    assert!(geos.iter().any(|g| g == "US"), "{geos:?}");
    wait_until(&c, "the per-group chart", || async {
        c.find_all(Locator::Css("#group-chart polyline"))
            .await
            .is_ok_and(|v| v.len() == 4)
    })
    .await;
    wait_until(&c, "the error sample", || async {
        texts(&c, "#errors tbody td")
            .await
            .iter()
            .any(|t| t == "invalid_json")
    })
    .await;

    // The 600 records arrive in one burst; the input rate is taken over
    // 10 s, so no point of the chart is above 600 / 10 s, as its top
    // y-axis label shows.
    wait_until(&c, "the input-rate chart", || async {
        c.find_all(Locator::Css("#rate-chart polyline"))
            .await
            .is_ok_and(|v| !v.is_empty())
    })
    .await;
    let note = texts(&c, "#rate-chart").await;
    let y_labels: Vec<String> = texts(&c, "#rate-chart .axis text[text-anchor=end]")
        .await
        .into_iter()
        .filter(|t| !t.contains(':'))
        .collect();
    let top: f64 = y_labels
        .last()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("y-axis labels {y_labels:?} in {note:?}"));
    assert!(top <= 60.0, "y-axis up to {top}: {y_labels:?}");
    assert!(
        texts(&c, "#rate-note").await[0].contains("over 10 s"),
        "{:?}",
        texts(&c, "#rate-note").await
    );

    // Register a query through the SQL box.
    let sql = c.find(Locator::Id("sql")).await.unwrap();
    sql.send_keys("SELECT geo, max(bid) AS top_bid FROM events GROUP BY geo WINDOW 10s")
        .await
        .unwrap();
    c.find(Locator::Id("register"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_until(&c, "the registration message", || async {
        texts(&c, "#sql-out .ok")
            .await
            .iter()
            .any(|t| t.contains("registered"))
    })
    .await;
    let (_, qs) = s.get("/queries").await;
    let names: Vec<&str> = qs["queries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{qs}");
    let new = names.iter().find(|n| **n != "by_geo").unwrap().to_string();
    wait_until(&c, "the new query selected with rows", || async {
        texts(&c, "#q-title").await == [new.clone()]
            && texts(&c, "#results thead th")
                .await
                .contains(&"top_bid".to_string())
            && !texts(&c, "#results tbody td.num").await.is_empty()
    })
    .await;

    // A pull query through the Run button renders a table.
    sql.clear().await.unwrap();
    sql.send_keys("SELECT geo, sum(imps) AS n FROM by_geo GROUP BY geo ORDER BY geo")
        .await
        .unwrap();
    c.find(Locator::Id("run"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_until(&c, "the pull query's table", || async {
        texts(&c, "#sql-out td").await.contains(&"DE".to_string())
    })
    .await;

    // The selected query's event-time charts.
    wait_until(&c, "the watermark-lag and late-record charts", || async {
        let lag = c.find_all(Locator::Css("#lag-chart polyline")).await;
        let late = c.find_all(Locator::Css("#late-chart polyline")).await;
        lag.is_ok_and(|v| v.len() == 1) && late.is_ok_and(|v| v.len() == 1)
    })
    .await;
    let lag = texts(&c, "#lag-chart polyline title").await;
    assert!(lag[0].starts_with(&format!("{new}: latest ")), "{lag:?}");

    // Stop drops the selected query, after a confirmation.
    c.find(Locator::Id("q-stop"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.accept_alert().await.unwrap();
    wait_until(&c, "the stopped query gone", || async {
        !texts(&c, "#queries li .name").await.contains(&new)
            && texts(&c, "#q-action-out .ok")
                .await
                .contains(&format!("Query {new} stopped."))
    })
    .await;
    let (_, qs) = s.get("/queries").await;
    assert_eq!(qs["queries"].as_array().unwrap().len(), 1, "{qs}");
    let legend = texts(&c, "#proc-chart .legend span").await;
    assert!(!legend.contains(&new), "{legend:?}");
    // by_geo is selected again; Reset restarts it and its rows come back.
    wait_until(&c, "by_geo selected", || async {
        texts(&c, "#q-title").await == ["by_geo"]
    })
    .await;
    c.find(Locator::Id("q-reset"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.accept_alert().await.unwrap();
    wait_until(&c, "the reset message and rows", || async {
        texts(&c, "#q-action-out .ok")
            .await
            .contains(&"Query by_geo reset.".to_string())
            && texts(&c, "#results tbody td.num").await.len() >= 8
    })
    .await;

    let shot = c.screenshot().await.unwrap();
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&path, shot).unwrap();
    eprintln!("dashboard screenshot: {}", path.display());

    let errors = severe_logs(&c).await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    c.close().await.unwrap();
    s.stop();
}

/// Opened after windows have closed, the page loads the newest windows as
/// results already there (not flashed as rows just arrived), and the
/// results stream goes on after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_opened_late_shows_closed_windows() {
    let Some((chromium, driver)) = programs("dashboard_opened_late_shows_closed_windows") else {
        return;
    };
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("late", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(
        "CREATE STREAM late (ts TIMESTAMP, geo TEXT, bid DOUBLE)
         WITH (kafka_topic = 'late', format = 'json', event_time = 'ts',
               watermark_delay = '1s', start = 'earliest');
         CREATE QUERY late_geo AS SELECT geo, count(*) AS imps FROM late GROUP BY geo WINDOW 10s",
    )
    .await;
    produce(&brokers, "late", 600, 1);
    // All six windows close (the partition goes idle) before the page opens.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, q) = s.get("/queries/late_geo").await;
        if q["counters"]["windows_closed"].as_u64().unwrap_or(0) >= 6 {
            break;
        }
        assert!(Instant::now() < deadline, "windows did not close: {q}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let (_driver, c) = browser(&chromium, &driver).await;
    c.goto(&format!("{}/#late_geo", s.url)).await.unwrap();
    wait_until(&c, "the closed windows' rows", || async {
        texts(&c, "#results tbody td.num").await.len() >= 24
    })
    .await;
    wait_until(&c, "the per-group chart", || async {
        c.find_all(Locator::Css("#group-chart polyline"))
            .await
            .is_ok_and(|v| v.len() == 4)
    })
    .await;
    let starts = texts(&c, "#results tbody tr td:nth-child(1)").await;
    let (_, page) = s.get("/queries/late_geo/results?limit=1000").await;
    let rows = page["rows"].as_array().unwrap();
    let newest = rows
        .iter()
        .filter_map(|r| r["window_start"].as_str())
        .max()
        .unwrap();
    assert_eq!(
        starts.first().map(String::as_str),
        Some(newest),
        "{starts:?}"
    );
    assert_eq!(starts.len(), rows.len(), "{starts:?}");
    let fresh = c
        .find_all(Locator::Css("#results tbody tr.fresh"))
        .await
        .unwrap();
    assert!(
        fresh.is_empty(),
        "{} rows shown as just arrived",
        fresh.len()
    );
    let errors = severe_logs(&c).await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    c.close().await.unwrap();
    s.stop();
}

/// A query over a two-partition topic holding 600 records (some broken),
/// its server, and a browser showing it in the dashboard.
struct Panels {
    c: Client,
    s: TestServer,
    brokers: String,
    _driver: Driver,
    _dir: tempfile::TempDir,
    _cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
}

impl Panels {
    async fn open(test: &str) -> Option<Panels> {
        let (chromium, driver) = programs(test)?;
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("clicks", 2, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let dir = tempfile::tempdir().unwrap();
        let s = TestServer::start(dir.path(), &brokers);
        s.sql(
            "CREATE STREAM clicks (ts TIMESTAMP, geo TEXT, bid DOUBLE)
             WITH (kafka_topic = 'clicks', format = 'json', event_time = 'ts',
                   watermark_delay = '1s', start = 'earliest');
             CREATE QUERY per_geo AS SELECT geo, count(*) AS n FROM clicks GROUP BY geo WINDOW 10s",
        )
        .await;
        produce(&brokers, "clicks", 600, 2);
        let (driver, c) = browser(&chromium, &driver).await;
        c.goto(&format!("{}/#per_geo", s.url)).await.unwrap();
        wait_until(&c, "the query selected", || async {
            texts(&c, "#q-title").await == ["per_geo"]
        })
        .await;
        Some(Panels {
            c,
            s,
            brokers,
            _driver: driver,
            _dir: dir,
            _cluster: cluster,
        })
    }

    async fn close(self) {
        let errors = severe_logs(&self.c).await;
        assert!(errors.is_empty(), "console errors: {errors:?}");
        self.c.close().await.unwrap();
        self.s.stop();
    }
}

/// The plan panel draws the query's three stages from its EXPLAIN output,
/// each listing its operators.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_plan_panel_shows_the_three_stages() {
    let Some(p) = Panels::open("dashboard_plan_panel_shows_the_three_stages").await else {
        return;
    };
    let c = &p.c;
    wait_until(c, "the plan's stages", || async {
        texts(c, "#plan .stage h4").await.len() == 3
    })
    .await;
    assert_eq!(
        texts(c, "#plan .stage h4").await,
        ["1 · Per batch", "2 · Window merge", "3 · Window close"]
    );
    let stages = texts(c, "#plan .stage .ops").await;
    assert!(
        stages.iter().all(|s| s.contains("AggregateExec")),
        "{stages:?}"
    );
    let (_, q) = p.s.get("/queries/per_geo").await;
    let plan = q["plan"].as_str().unwrap();
    assert!(
        plan.contains("mode=Partial") && plan.contains("mode=Final"),
        "{plan}"
    );
    assert!(
        texts(c, "#plan-window").await[0].contains("10"),
        "{:?}",
        texts(c, "#plan-window").await
    );
    p.close().await;
}

/// The partitions panel has one row per partition of the two-partition
/// topic, each with its consumed offset and the log end once all is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_partitions_panel_shows_each_partition() {
    let Some(p) = Panels::open("dashboard_partitions_panel_shows_each_partition").await else {
        return;
    };
    let c = &p.c;
    // 600 records in turn: 300 in each partition, all read.
    let want = vec![vec!["0", "300", "300", "0"], vec!["1", "300", "300", "0"]];
    wait_until(c, "both partitions read to their log end", || async {
        let cells = texts(c, "#partitions tbody td").await;
        let rows: Vec<Vec<&str>> = cells
            .chunks(4)
            .map(|r| r.iter().map(String::as_str).collect())
            .collect();
        rows == want
    })
    .await;
    let (_, q) = p.s.get("/queries/per_geo").await;
    assert_eq!(q["partitions"].as_array().map(Vec::len), Some(2), "{q}");
    p.close().await;
}

/// The errors-and-warnings panel shows the broken records the test wrote,
/// with a sample of one, counted together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_events_panel_shows_bad_records() {
    let Some(p) = Panels::open("dashboard_events_panel_shows_bad_records").await else {
        return;
    };
    let c = &p.c;
    wait_until(c, "the bad-record warning", || async {
        texts(c, "#events tbody td")
            .await
            .iter()
            .any(|t| t.contains("invalid_json"))
    })
    .await;
    let row = texts(c, "#events tbody tr.ev-warning td").await;
    assert!(row.iter().any(|t| t == "bad_record"), "{row:?}");
    assert!(row.iter().any(|t| t.contains("{broken")), "{row:?}");
    // Seven of the 600 records are broken: one event counts them all.
    let (_, v) = p.s.get("/queries/per_geo/events").await;
    let bad: u64 = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "bad_record")
        .map(|e| e["count"].as_u64().unwrap())
        .sum();
    assert_eq!(bad, 7, "{v}");
    p.close().await;
}

/// The commit-time chart plots the query's store commits.
///
/// A point is the mean commit time between two samples ten seconds apart,
/// so commits that all happened before the server's first samples (the
/// first burst is read within a second) may plot none: a second burst,
/// produced once the page is open, commits while the sampler runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_commit_chart_has_points() {
    let Some(p) = Panels::open("dashboard_commit_chart_has_points").await else {
        return;
    };
    let c = &p.c;
    // A minute ago: after the first burst's windows, so nothing is late.
    produce_from(&p.brokers, "clicks", 600, 2, 60_000);
    wait_until(c, "points on the commit-time chart", || async {
        c.find_all(Locator::Css("#commit-chart polyline, #commit-chart circle"))
            .await
            .is_ok_and(|v| !v.is_empty())
    })
    .await;
    let legend = texts(c, "#commit-chart .legend span").await;
    assert_eq!(legend, ["per_geo"]);
    let metrics = reqwest::get(format!("{}/metrics", p.s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("runnel_query_commit_duration_seconds_count{query=\"per_geo\""),
        "{metrics}"
    );
    p.close().await;
}

/// With `EMIT EVERY`, the results panel shows an open window filling in:
/// one row per group, marked provisional and updated in place, until the
/// window closes and the row turns final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_an_open_window_filling_in() {
    let Some((chromium, driver)) = programs("dashboard_shows_an_open_window_filling_in") else {
        return;
    };
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("fill", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    s.sql(
        "CREATE STREAM fill (ts TIMESTAMP, geo TEXT)
         WITH (kafka_topic = 'fill', event_time = 'ts', watermark_delay = '1s', start = 'earliest');
         CREATE QUERY fill_geo AS SELECT geo, count(*) AS n FROM fill GROUP BY geo WINDOW 1m EMIT EVERY 1s",
    )
    .await;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let t0 = now - 3_600_000 - now.rem_euclid(60_000);
    let send = |records: &[(i64, &str)]| {
        for (ts, geo) in records {
            let v = json!({"ts": t0 + ts, "geo": geo}).to_string();
            producer
                .send(BaseRecord::<(), str>::to("fill").payload(&v).partition(0))
                .unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    };
    let (_driver, c) = browser(&chromium, &driver).await;
    c.goto(&format!("{}/#fill_geo", s.url)).await.unwrap();
    wait_until(&c, "the query selected", || async {
        texts(&c, "#q-title").await == ["fill_geo"]
    })
    .await;
    // Rows of the results panel as (geo, n, provisional), read in one
    // script: the panel re-renders as rows arrive.
    let rows = || async {
        let script = "return Array.from(document.querySelectorAll('#results tbody tr'))
            .map(tr => [tr.className, Array.from(tr.querySelectorAll('td')).map(td => td.textContent.trim())])
            .filter(([, cells]) => cells.length >= 4)
            .map(([class_, cells]) => [cells[2], cells[3], class_.includes('provisional')]);";
        let rows: Vec<(String, String, bool)> = match c.execute(script, vec![]).await {
            Ok(v) => serde_json::from_value(v).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        rows
    };
    let de = |n: &str, provisional: bool| vec![("DE".to_string(), n.to_string(), provisional)];

    send(&[(1_000, "DE"), (2_000, "DE")]);
    wait_until(&c, "a provisional row of the open window", || async {
        rows().await == de("2", true)
    })
    .await;
    send(&[(3_000, "DE")]);
    wait_until(&c, "the same row, updated", || async {
        rows().await == de("3", true)
    })
    .await;
    // A record past the window's end plus the delay closes it.
    send(&[(62_000, "FR")]);
    wait_until(&c, "the row turned final", || async {
        let r = rows().await;
        r.len() == 2 && r.contains(&("DE".into(), "3".into(), false))
    })
    .await;
    let errors = severe_logs(&c).await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    c.close().await.unwrap();
    s.stop();
}
