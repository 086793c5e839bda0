//! The dashboard in a real browser: headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`, which `.ci/run` installs).
//! It loads `/`, sees a query's rows arrive, registers a query through the
//! SQL box, has no console errors, and saves a screenshot to
//! `$CARGO_TARGET_TMPDIR/dashboard.png`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestServer, free_port};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{Value, json};

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Chromium's browser log (chromedriver's `se/log` command).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

async fn severe_logs(c: &Client) -> Vec<String> {
    let v = c.issue_cmd(BrowserLog).await.unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].to_string())
        .collect()
}

async fn wait_until<F, Fut>(c: &Client, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    while !f().await {
        if Instant::now() > deadline {
            let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-failed.png");
            if let Ok(png) = c.screenshot().await {
                let _ = std::fs::write(&path, png);
            }
            panic!(
                "timed out waiting for {what}; screenshot: {}",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The text of every element matching `css`, read in one script run: the
/// page re-renders its tables as rows arrive, and elements found by one
/// request may be gone by the next.
async fn texts(c: &Client, css: &str) -> Vec<String> {
    let script = "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.textContent.trim());";
    match c.execute(script, vec![json!(css)]).await {
        Ok(Value::Array(v)) => v
            .into_iter()
            .map(|t| t.as_str().unwrap_or_default().to_string())
            .collect(),
        _ => Vec::new(),
    }
}

/// Starts chromedriver and a headless Chromium session.
async fn browser(chromium: &Path, driver: &Path) -> (Driver, Client) {
    let port = free_port();
    let child = Driver(
        Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--hide-scrollbars", "--window-size=1400,1800"],
        },
        "goog:loggingPrefs": {"browser": "ALL"},
    }))
    .unwrap();
    let webdriver = format!("http://127.0.0.1:{port}");
    let mut client = None;
    for _ in 0..40 {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&webdriver)
            .await
        {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    let c = client.expect("connect to chromedriver");
    (child, c)
}

/// Chromium and chromedriver, or `None` (with a SKIPPED line) when they are
/// not installed.
fn programs(test: &str) -> Option<(PathBuf, PathBuf)> {
    match (
        find_program(&["chromium", "chromium-browser"]),
        find_program(&["chromedriver"]),
    ) {
        (Some(c), Some(d)) => Some((c, d)),
        _ => {
            eprintln!(
                "SKIPPED {test}: chromium and chromedriver are not installed \
                 (apt-get install chromium chromium-driver; .ci/run does this)"
            );
            None
        }
    }
}

/// Produces `n` records into partition 0 of `topic`, 100 ms of event time
/// apart, starting at a 10 s boundary five minutes ago; every 97th is broken.
fn produce(brokers: &str, topic: &str, n: i64) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let base = chrono::Utc::now().timestamp_millis() - 300_000;
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
            .send(BaseRecord::<(), str>::to(topic).payload(&v).partition(0))
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
    produce(&brokers, "events", 600);

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
    produce(&brokers, "late", 600);
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
