//! Prometheus metrics (`GET /metrics`); the rates the dashboard charts are
//! sampled into [`History`].
//!
//! Each [`App`] owns its own [`Metrics`] registry. Counters that already live
//! in the query engine and the stream statistics are copied into the registry
//! at scrape time; batch durations, window-close latency, consumer lag and
//! state size are recorded by each query's thread through its
//! [`QueryMetrics`], which also holds the query's partitions' positions and
//! its recent events (`events.rs`).
//!
//! | metric | labels |
//! |---|---|
//! | `runnel_stream_records_in_total`, `runnel_stream_bytes_in_total` | `stream` |
//! | `runnel_stream_bad_records_total`, `runnel_stream_kept_records_noted_total` | `stream`, `reason` |
//! | `runnel_stream_watermark_seconds` | `stream` |
//! | `runnel_stream_readers` (consumers reading the stream: one, or more while a query catches up), `runnel_stream_readers_started_total`, `runnel_stream_consumers_started_total` (one per reader started: a query joining a reader connects none) | `stream` |
//! | `runnel_stream_consumer_lag_records` | `stream`, `query`, `partition` |
//! | `runnel_query_records_processed_total`, `runnel_query_late_records_total`, `runnel_query_records_skipped_total`, `runnel_query_windows_closed_total`, `runnel_query_rows_emitted_total` | `query`, `stream` |
//! | `runnel_query_open_groups`, `runnel_query_open_windows`, `runnel_query_state_bytes`, `runnel_query_watermark_seconds`, `runnel_query_running`, `runnel_query_broker_unreachable`, `runnel_query_waiting_for_store` | `query`, `stream` |
//! | `runnel_query_batch_duration_seconds`, `runnel_query_commit_duration_seconds`, `runnel_query_window_close_latency_seconds` (histograms) | `query`, `stream` |
//! | `runnel_process_resident_memory_bytes`, `runnel_streams`, `runnel_queries` | |

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use super::App;
use super::history::History;
pub use super::history::{SAMPLE_EVERY, spawn_sampler};
use crate::model::QueryStatus;
use crate::runtime::telemetry::{BATCH_BUCKETS, LATENCY_BUCKETS, QueryMetrics};

struct Gauges {
    stream_records: IntCounterVec,
    readers_started: IntCounterVec,
    consumers_started: IntCounterVec,
    stream_bytes: IntCounterVec,
    stream_bad: IntCounterVec,
    stream_kept: IntCounterVec,
    stream_watermark: GaugeVec,
    stream_readers: IntGaugeVec,
    lag: IntGaugeVec,
    processed: IntCounterVec,
    late: IntCounterVec,
    skipped: IntCounterVec,
    windows_closed: IntCounterVec,
    rows_emitted: IntCounterVec,
    open_groups: IntGaugeVec,
    open_windows: IntGaugeVec,
    state_bytes: IntGaugeVec,
    watermark: GaugeVec,
    running: IntGaugeVec,
    unreachable: IntGaugeVec,
    store_waiting: IntGaugeVec,
    memory: IntGauge,
    streams: IntGauge,
    queries: IntGauge,
}

/// The process's metrics registry.
pub struct Metrics {
    registry: Registry,
    g: Gauges,
    batch: HistogramVec,
    commit: HistogramVec,
    close_latency: HistogramVec,
    live: Mutex<BTreeSet<(String, String)>>,
    scrape: Mutex<()>,
    /// Rates over time for the dashboard's charts.
    pub history: History,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn set_counter(c: &IntCounterVec, labels: &[&str], v: u64) {
    c.with_label_values(labels).inc_by(v);
}

/// Resident set size of this process in bytes (Linux).
fn resident_bytes() -> Option<i64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl Metrics {
    /// A fresh registry with every Runnel metric.
    pub fn new() -> Self {
        let r = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let igauge = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let fgauge = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let plain =
            |name: &str, help: &str| reg(&r, IntGauge::new(name, help).expect("valid metric"));
        let qs = &["query", "stream"][..];
        let g = Gauges {
            stream_records: counter(
                "runnel_stream_records_in_total",
                "Records read from the stream's topic (good and bad).",
                &["stream"],
            ),
            stream_bytes: counter(
                "runnel_stream_bytes_in_total",
                "Payload bytes read from the stream's topic.",
                &["stream"],
            ),
            stream_bad: counter(
                "runnel_stream_bad_records_total",
                "Records that could not be used, by reason.",
                &["stream", "reason"],
            ),
            stream_kept: counter(
                "runnel_stream_kept_records_noted_total",
                "Records used despite a problem (e.g. an unknown field), by reason.",
                &["stream", "reason"],
            ),
            stream_watermark: fgauge(
                "runnel_stream_watermark_seconds",
                "Lowest watermark among the stream's queries, in Unix seconds.",
                &["stream"],
            ),
            stream_readers: igauge(
                "runnel_stream_readers",
                "Consumers reading the stream's topic for this server's queries: one, more while a query catches up.",
                &["stream"],
            ),
            readers_started: counter(
                "runnel_stream_readers_started_total",
                "Readers started to read the stream's topic for this server's queries: one per shared read, one more per catch-up.",
                &["stream"],
            ),
            consumers_started: counter(
                "runnel_stream_consumers_started_total",
                "Kafka consumers this server's queries connected to read the stream's topic: one per reader started (a query joining a reader connects none).",
                &["stream"],
            ),
            lag: igauge(
                "runnel_stream_consumer_lag_records",
                "Records in the partition not yet read by the query's consumer.",
                &["stream", "query", "partition"],
            ),
            processed: counter(
                "runnel_query_records_processed_total",
                "Records fed to the query's windows.",
                qs,
            ),
            late: counter(
                "runnel_query_late_records_total",
                "Records dropped from windows that had closed.",
                qs,
            ),
            skipped: counter(
                "runnel_query_records_skipped_total",
                "Records skipped because their offsets were lost (on_offset_loss).",
                qs,
            ),
            windows_closed: counter(
                "runnel_query_windows_closed_total",
                "Windows closed and written.",
                qs,
            ),
            rows_emitted: counter(
                "runnel_query_rows_emitted_total",
                "Result rows written.",
                qs,
            ),
            open_groups: igauge(
                "runnel_query_open_groups",
                "Partial-state rows held by open windows (about groups x windows).",
                qs,
            ),
            open_windows: igauge("runnel_query_open_windows", "Windows holding state.", qs),
            state_bytes: igauge(
                "runnel_query_state_bytes",
                "Bytes of state the query's last commit wrote: the pieces that changed, and the header.",
                qs,
            ),
            watermark: fgauge(
                "runnel_query_watermark_seconds",
                "The query's watermark, in Unix seconds.",
                qs,
            ),
            running: igauge(
                "runnel_query_running",
                "1 while the query consumes, 0 when waiting, stopped or failed.",
                qs,
            ),
            unreachable: igauge(
                "runnel_query_broker_unreachable",
                "1 while no broker of the query's stream answers.",
                qs,
            ),
            store_waiting: igauge(
                "runnel_query_waiting_for_store",
                "1 while the query is paused because the store cannot be reached.",
                qs,
            ),
            memory: plain(
                "runnel_process_resident_memory_bytes",
                "Resident memory of the Runnel process.",
            ),
            streams: plain("runnel_streams", "Declared streams."),
            queries: plain("runnel_queries", "Registered continuous queries."),
        };
        let hist = |name: &str, help: &str, buckets: &[f64]| {
            reg(
                &r,
                HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), qs)
                    .expect("valid metric"),
            )
        };
        let batch = hist(
            "runnel_query_batch_duration_seconds",
            "Time to decode, window and commit one poll's records.",
            BATCH_BUCKETS,
        );
        let commit = hist(
            "runnel_query_commit_duration_seconds",
            "Time to commit results, offsets and the checkpoint in one store transaction.",
            BATCH_BUCKETS,
        );
        let close_latency = hist(
            "runnel_query_window_close_latency_seconds",
            "Wall-clock time from a window's end to its rows being written.",
            LATENCY_BUCKETS,
        );
        Metrics {
            registry: r,
            g,
            batch,
            commit,
            close_latency,
            live: Mutex::new(BTreeSet::new()),
            scrape: Mutex::new(()),
            history: History::default(),
        }
    }

    /// Fresh metrics for query `name` reading `stream`, replacing earlier
    /// series of the same name.
    pub fn query(&self, name: &str, stream: &str) -> Arc<QueryMetrics> {
        let labels = [name, stream];
        let _ = self.batch.remove_label_values(&labels);
        let _ = self.commit.remove_label_values(&labels);
        let _ = self.close_latency.remove_label_values(&labels);
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((name.to_string(), stream.to_string()));
        Arc::new(QueryMetrics::new(
            self.batch.with_label_values(&labels),
            self.commit.with_label_values(&labels),
            self.close_latency.with_label_values(&labels),
        ))
    }

    /// The registry, in the Prometheus text format, with `app`'s current values.
    pub fn render(&self, app: &App) -> String {
        let _guard = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let g = &self.g;
        for c in [
            &g.stream_records,
            &g.stream_bytes,
            &g.stream_bad,
            &g.stream_kept,
            &g.readers_started,
            &g.consumers_started,
            &g.processed,
            &g.late,
            &g.skipped,
            &g.windows_closed,
            &g.rows_emitted,
        ] {
            c.reset();
        }
        for c in [
            &g.lag,
            &g.open_groups,
            &g.open_windows,
            &g.state_bytes,
            &g.running,
            &g.unreachable,
            &g.store_waiting,
        ] {
            c.reset();
        }
        g.stream_watermark.reset();
        g.stream_readers.reset();
        for (stream, reads) in app.readers.per_stream() {
            let readers = g.stream_readers.with_label_values(&[&stream]);
            readers.set(reads.readers as i64);
            set_counter(&g.readers_started, &[&stream], reads.started);
            set_counter(&g.consumers_started, &[&stream], reads.consumers);
        }
        g.watermark.reset();
        let streams = app.streams();
        let queries = app.queries();
        g.streams.set(streams.len() as i64);
        g.queries.set(queries.len() as i64);
        if let Some(m) = resident_bytes() {
            g.memory.set(m);
        }
        for s in &streams {
            let n = s.def.name.as_str();
            set_counter(&g.stream_records, &[n], s.stats.records_in());
            set_counter(&g.stream_bytes, &[n], s.stats.bytes_in());
            for (reason, v) in s.stats.bad_by_reason() {
                set_counter(&g.stream_bad, &[n, reason], v);
            }
            for (reason, v) in s.stats.kept_by_reason() {
                set_counter(&g.stream_kept, &[n, reason], v);
            }
        }
        let mut stream_wm: BTreeMap<&str, i64> = BTreeMap::new();
        let mut live = BTreeSet::new();
        for q in &queries {
            let labels = [q.name.as_str(), q.stream.as_str()];
            live.insert((q.name.clone(), q.stream.clone()));
            let c = &q.counters;
            let bad = c.bad_records.load(Ordering::Relaxed);
            let records = c.records_in.load(Ordering::Relaxed);
            set_counter(&g.processed, &labels, records.saturating_sub(bad));
            set_counter(&g.late, &labels, c.late_records.load(Ordering::Relaxed));
            set_counter(
                &g.skipped,
                &labels,
                c.records_skipped.load(Ordering::Relaxed),
            );
            set_counter(
                &g.windows_closed,
                &labels,
                c.windows_closed.load(Ordering::Relaxed),
            );
            set_counter(
                &g.rows_emitted,
                &labels,
                c.rows_emitted.load(Ordering::Relaxed),
            );
            let m = &q.metrics;
            g.open_groups
                .with_label_values(&labels)
                .set(m.open_groups.load(Ordering::Relaxed) as i64);
            g.open_windows
                .with_label_values(&labels)
                .set(m.open_windows.load(Ordering::Relaxed) as i64);
            g.state_bytes
                .with_label_values(&labels)
                .set(m.state_bytes.load(Ordering::Relaxed) as i64);
            g.running
                .with_label_values(&labels)
                .set(i64::from(q.status() == QueryStatus::Running));
            g.unreachable
                .with_label_values(&labels)
                .set(i64::from(matches!(
                    q.status(),
                    QueryStatus::BrokerUnreachable(_)
                )));
            g.store_waiting
                .with_label_values(&labels)
                .set(i64::from(matches!(
                    q.status(),
                    QueryStatus::WaitingForStore(_)
                )));
            for (p, l) in m.lag.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                g.lag
                    .with_label_values(&[q.stream.as_str(), q.name.as_str(), &p.to_string()])
                    .set(*l);
            }
            let wm = c.watermark.load(Ordering::Relaxed);
            if wm != i64::MIN {
                g.watermark
                    .with_label_values(&labels)
                    .set(wm as f64 / 1000.0);
                let e = stream_wm.entry(q.stream.as_str()).or_insert(wm);
                *e = (*e).min(wm);
            }
        }
        for (s, wm) in stream_wm {
            g.stream_watermark
                .with_label_values(&[s])
                .set(wm as f64 / 1000.0);
        }
        {
            let mut known = self.live.lock().unwrap_or_else(|p| p.into_inner());
            for (q, s) in known.difference(&live) {
                let _ = self.batch.remove_label_values(&[q, s]);
                let _ = self.commit.remove_label_values(&[q, s]);
                let _ = self.close_latency.remove_label_values(&[q, s]);
            }
            *known = live;
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding");
        String::from_utf8(out).unwrap_or_default()
    }
}

/// `GET /metrics`.
pub async fn handler(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = app.metrics.render(&app);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
