//! The latency run: the real server reading a live topic, timed from the
//! record that closes a window to the window's rows in
//! `GET /queries/{id}/results`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::kafka::{BrokerProcess, TOPIC, producer, send};
use super::measure::{Meter, RunStats, peak_rss};
use super::{QUERY_SQL, STREAM_SQL};
use crate::error::{Error, Result};
use crate::generate::write_impression;

/// The real server reading a live topic that receives `rate` records per
/// second stamped with the wall clock: for each window, the time from the
/// record that moves the watermark past its end (produced at end + delay)
/// until its rows are first returned by `GET /queries/{id}/results`.
pub async fn run_latency(rate: u64, secs: u64, partitions: i32) -> Result<RunStats> {
    use rdkafka::producer::Producer;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let broker = BrokerProcess::start(partitions.max(1))?;
    let data_dir = std::env::temp_dir().join(format!("runnel-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let config = crate::config::Config {
        listen: "127.0.0.1:0".into(),
        brokers: broker.bootstrap.clone(),
        data_dir: data_dir.clone(),
        ..crate::config::Config::default()
    };
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    let local = listener.local_addr()?;
    let url = format!("http://{local}");
    let app = crate::server::App::open(config).await?;
    let stream_sql = STREAM_SQL
        .replace("adnetwork-topic", TOPIC)
        .replace("'earliest'", "'latest'");
    app.execute_sql(&format!("{stream_sql};\nCREATE QUERY bench AS {QUERY_SQL}"))
        .await?;
    let server = tokio::spawn(
        axum::serve(listener, crate::server::http::router(app.clone(), local)).into_future(),
    );
    // Let the query connect before producing.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let bootstrap = broker.bootstrap.clone();
    let (stop2, produced2) = (stop.clone(), produced.clone());
    let prod = std::thread::spawn(move || -> Result<()> {
        let p = producer(&bootstrap)?;
        let mut rng = SmallRng::seed_from_u64(7);
        let start = Instant::now();
        let mut buf = Vec::with_capacity(256);
        let mut n: u64 = 0;
        while !stop2.load(Ordering::Relaxed) {
            let due = start + Duration::from_nanos(n * 1_000_000_000 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let ts = chrono::Utc::now().timestamp_millis();
            for _ in 0..100 {
                buf.clear();
                write_impression(&mut rng, ts, 100, &mut buf);
                send(&p, TOPIC, &buf, (n % partitions.max(1) as u64) as i32)?;
                n += 1;
            }
            p.poll(Duration::ZERO);
            produced2.store(n, Ordering::Relaxed);
        }
        p.flush(Duration::from_secs(30))?;
        Ok(())
    });

    let client = reqwest::Client::new();
    let meter = Meter::start();
    let mut cursor = String::new();
    let mut first_seen: std::collections::BTreeMap<String, i64> = Default::default();
    let mut rows = 0usize;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        let v: serde_json::Value = client
            .get(format!(
                "{url}/queries/bench/results?after={cursor}&limit=10000"
            ))
            .send()
            .await
            .map_err(|e| Error::Execution(e.to_string()))?
            .json()
            .await
            .map_err(|e| Error::Execution(e.to_string()))?;
        let now = chrono::Utc::now().timestamp_millis();
        if let Some(page) = v["rows"].as_array() {
            rows += page.len();
            for r in page {
                if let Some(we) = r["window_end"].as_str() {
                    first_seen.entry(we.to_string()).or_insert(now);
                }
            }
        }
        if let Some(c) = v["cursor"].as_str() {
            cursor = c.to_string();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (wall_s, cpu_s) = meter.stop();
    prod.join()
        .map_err(|_| Error::Execution("producer panicked".into()))??;
    server.abort();
    let app2 = app.clone();
    tokio::task::spawn_blocking(move || app2.shutdown())
        .await
        .map_err(|e| Error::Execution(e.to_string()))?;
    let _ = std::fs::remove_dir_all(&data_dir);
    let mut latency_ms = Vec::new();
    for (we, seen) in &first_seen {
        let Some(end_ms) = parse_ts(we) else { continue };
        latency_ms.push((seen - (end_ms + 5_000)) as f64);
    }
    // The first window began before production did.
    if !latency_ms.is_empty() {
        latency_ms.remove(0);
    }
    Ok(RunStats {
        name: format!("latency, server at {rate} rec/s"),
        records: produced.load(Ordering::Relaxed) as usize,
        wall_s,
        cpu_s,
        rows,
        windows: first_seen.len() as u64,
        peak_rss: peak_rss(),
        latency_ms,
        ..Default::default()
    })
}

fn parse_ts(text: &str) -> Option<i64> {
    let t = text.trim_end_matches('Z').replace('T', " ");
    let fmt = if t.contains('.') {
        "%Y-%m-%d %H:%M:%S%.f"
    } else {
        "%Y-%m-%d %H:%M:%S"
    };
    chrono::NaiveDateTime::parse_from_str(&t, fmt)
        .ok()
        .map(|d| d.and_utc().timestamp_millis())
}
