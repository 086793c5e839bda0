//! The queries run: one stream read by one query, then by eight different
//! queries (grouped by publisher, geo, advertiser, website, ...) sharing
//! one read of the stream (see `runtime::shared`), then the eight again
//! with a consumer each, on the real server (`App`) from the mock cluster,
//! from the earliest offset; the server process's CPU until every query
//! has read every record, closed every window the data closes and
//! committed their rows. The ratios to the one query are what each more
//! query over a stream costs. The one query is the cheapest of the eight (`GROUP BY
//! publisher`, count and average); the same round also runs the canonical
//! query alone and with the seven groupings other than its own beside it,
//! sharing one read and with a consumer each, so the cost of seven
//! more dashboards is also read against a user's usual first query. One
//! run of each varies by ±10 % on a shared machine, so several rounds
//! (each the six servers, over the records produced once) give the ratios'
//! spread and median.
//!
//! ```no_run
//! # async fn f(ds: &runnel::bench::Dataset) -> runnel::error::Result<()> {
//! for r in runnel::bench::run_queries(ds, 4, 1).await? {
//!     println!("{}", r.line());
//! }
//! # Ok(()) }
//! ```

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::kafka::{BrokerProcess, TOPIC, producer, send};
use super::measure::{Meter, RunStats, peak_rss, thread_cpu, threads_cpu_since};
use super::{Dataset, JITTER_MS, QUERY_SQL, SPAN_MS, STREAM_SQL};
use crate::error::{Error, Result};

/// Eight windowed queries over the impressions, each grouping differently.
const GROUPS: [&str; 8] = [
    "publisher",
    "geo",
    "advertiser",
    "website",
    "publisher, geo",
    "advertiser, geo",
    "website, geo",
    "publisher, advertiser",
];

/// Windows every query closes from the data alone: those ending at or
/// before the last event time less the stream's 5 s watermark delay (the
/// first holds the records jittered before the dataset's start); each of
/// them has rows in every query.
const CLOSED_WINDOWS: u64 = ((SPAN_MS + JITTER_MS - 5_000) / 10_000 + 1) as u64;

/// The grouping of the canonical query ([`QUERY_SQL`]).
const CANONICAL_GROUP: &str = "publisher, geo";

/// Runs in each round of [`run_queries`]: one query, eight sharing one
/// read, eight with a consumer each, the canonical query, and it with the
/// seven other groupings sharing one read and with a consumer each.
pub const QUERY_RUNS: usize = 6;

/// A query of the eight: count and average by `group`.
fn grouped(group: &str) -> String {
    format!(
        "SELECT {group}, count(*) AS imps, avg(bid) AS avg_bid \
         FROM impressions WHERE geo <> 'unknown' GROUP BY {group} WINDOW 10s"
    )
}

/// `rounds` times one query, eight sharing a read, eight apart, the
/// canonical query, and it with seven more sharing a read and apart, over
/// the same records produced once: `QUERY_RUNS` runs a round.
pub async fn run_queries(ds: &Dataset, partitions: i32, rounds: usize) -> Result<Vec<RunStats>> {
    use rdkafka::producer::Producer;
    // The mock cluster holds about 4 MiB per partition, as in `e2e`.
    let partitions = partitions.max((ds.bytes() / (4 << 20) + 1) as i32);
    let broker = BrokerProcess::start(partitions)?;
    let p = producer(&broker.bootstrap)?;
    for i in 0..ds.len() {
        send(&p, TOPIC, ds.payload(i), (i % partitions as usize) as i32)?;
        if i % 10_000 == 0 {
            p.poll(Duration::ZERO);
        }
    }
    p.flush(Duration::from_secs(120))?;
    drop(p);
    let mut runs = Vec::new();
    let eight: Vec<String> = GROUPS.iter().map(|g| grouped(g)).collect();
    let seven = GROUPS.iter().filter(|g| **g != CANONICAL_GROUP);
    let canonical: Vec<String> = std::iter::once(QUERY_SQL.to_string())
        .chain(seven.map(|g| grouped(g)))
        .collect();
    for _ in 0..rounds.max(1) {
        let sets = [
            ("1 queries", &eight[..1], true),
            ("8 queries", &eight[..], true),
            ("8 queries", &eight[..], false),
            ("canonical query", &canonical[..1], true),
            ("canonical + 7 queries", &canonical[..], true),
            ("canonical + 7 queries", &canonical[..], false),
        ];
        for (label, queries, shared) in sets {
            runs.push(serve_queries(ds, &broker.bootstrap, label, queries, shared).await?);
        }
    }
    Ok(runs)
}

/// A fresh server reading the topic with `queries`, sharing one read of the
/// stream or each with its own, until each has read every record, closed
/// the [`CLOSED_WINDOWS`] windows the data closes and committed their rows.
async fn serve_queries(
    ds: &Dataset,
    bootstrap: &str,
    label: &str,
    queries: &[String],
    shared: bool,
) -> Result<RunStats> {
    let n = queries.len();
    let data_dir =
        std::env::temp_dir().join(format!("runnel-bench-queries-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let config = crate::config::Config {
        brokers: bootstrap.to_string(),
        data_dir: data_dir.clone(),
        shared_reads: shared,
        ..crate::config::Config::default()
    };
    let threads_before = thread_cpu();
    let meter = Meter::start();
    let app = crate::server::App::open(config).await?;
    let mut sql = format!("{};\n", STREAM_SQL.replace("adnetwork-topic", TOPIC));
    for (i, q) in queries.iter().enumerate() {
        sql.push_str(&format!("CREATE QUERY q{i} AS {q};\n"));
    }
    app.execute_sql(&sql).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // Every record read, every window the data closes closed, and their
        // rows written (a commit may come after the close). A query counts
        // its records when it takes a poll, before its engine has worked
        // them, so records read alone could end the run before its last
        // polls' work.
        let done = (0..n).all(|i| {
            let name = format!("q{i}");
            app.query(&name).is_ok_and(|q| {
                let c = &q.counters;
                let rows = c.rows_emitted.load(Ordering::Relaxed) as i64;
                c.records_in.load(Ordering::Relaxed) >= ds.len() as u64
                    && c.windows_closed.load(Ordering::Relaxed) >= CLOSED_WINDOWS
                    && app.store.newest_cursor(&name).ok().flatten().unwrap_or(0) >= rows
            })
        });
        if done {
            break;
        }
        if Instant::now() > deadline {
            let read: Vec<String> = (0..n)
                .filter_map(|i| app.query(&format!("q{i}")).ok())
                .map(|q| {
                    let r = q.counters.records_in.load(Ordering::Relaxed);
                    format!("{} read {r} ({:?})", q.name, q.status())
                })
                .collect();
            return Err(Error::Execution(format!(
                "{n} queries did not read all {} records and commit the rows of {CLOSED_WINDOWS} windows in 2 minutes: {}",
                ds.len(),
                read.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (wall_s, cpu_s) = meter.stop();
    let (mut rows, mut windows) = (0, 0);
    for q in (0..n).filter_map(|i| app.query(&format!("q{i}")).ok()) {
        rows += q.counters.rows_emitted.load(Ordering::Relaxed) as usize;
        windows += q.counters.windows_closed.load(Ordering::Relaxed);
    }
    let mut threads = threads_cpu_since(&threads_before, part_of);
    let rest = cpu_s - threads.iter().map(|t| t.1).sum::<f64>();
    threads.push(("other".into(), rest.max(0.0)));
    let app2 = app.clone();
    tokio::task::spawn_blocking(move || app2.shutdown())
        .await
        .map_err(|e| Error::Execution(e.to_string()))?;
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(RunStats {
        name: format!(
            "server, {label} over one stream{}",
            if shared { "" } else { ", a consumer each" }
        ),
        records: ds.len(),
        wall_s,
        cpu_s,
        rows,
        windows,
        peak_rss: peak_rss(),
        threads,
        ..Default::default()
    })
}

/// The part of the server a thread named `name` does: each query's own
/// thread by its name, the others by what they do. "other" in a run's
/// parts is the CPU of threads that ended before it did.
fn part_of(name: &str) -> String {
    let part = match name {
        n if n.starts_with("query-") => n,
        n if n.starts_with("read-") => "reader",
        n if n.starts_with("rdk:") => "librdkafka",
        "runnel-prefetch" => "prefetch",
        n if n.starts_with("runnel-sqlite") => "store checkpoints",
        n => n,
    };
    part.to_string()
}
