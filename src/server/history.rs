//! The short history the dashboard charts (`GET /dashboard/history`): every
//! [`SAMPLE_EVERY`] the streams' and queries' counters are sampled, and
//! rates are the counter delta over the time elapsed between two samples at
//! least [`RATE_SPAN`] apart.
//!
//! Records are counted when a poll's batch is decoded, and a query that
//! falls behind reads its backlog in a few large batches: the delta between
//! two consecutive samples of a steady source then swings between zero and
//! many times its rate. Over a fixed span, the rate is the average the
//! counters show, and a burst of N records never plots above N / span.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use super::App;

/// Samples kept (ten minutes).
const HISTORY: usize = 300;

/// How often the counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// The least time a rate is taken over.
pub const RATE_SPAN: Duration = Duration::from_secs(10);

#[derive(Clone, Default)]
struct QuerySample {
    records: u64,
    batches: u64,
    batch_secs: f64,
    commits: u64,
    commit_secs: f64,
    rows: u64,
    lag: Option<i64>,
    /// Event-time watermark in epoch ms, `i64::MIN` before the first record.
    watermark: i64,
    late: u64,
}

#[derive(Default)]
struct Sample {
    t_ms: i64,
    streams: BTreeMap<String, (u64, u64)>,
    queries: BTreeMap<String, QuerySample>,
}

/// The sampled counters, oldest first.
#[derive(Default)]
pub struct History(Mutex<VecDeque<Sample>>);

impl History {
    /// Records one sample of `app`'s counters.
    pub fn sample(&self, app: &App) {
        let t_ms = chrono::Utc::now().timestamp_millis();
        let streams = app
            .streams()
            .iter()
            .map(|s| {
                (
                    s.def.name.clone(),
                    (s.stats.records_in(), s.stats.bad_records()),
                )
            })
            .collect();
        let queries = app
            .queries()
            .iter()
            .map(|q| {
                let (batches, batch_secs) = q.metrics.batch_totals();
                let (commits, commit_secs) = q.metrics.commit_totals();
                (
                    q.name.clone(),
                    QuerySample {
                        records: q.counters.records_in.load(Ordering::Relaxed),
                        rows: q.counters.rows_emitted.load(Ordering::Relaxed),
                        batches,
                        batch_secs,
                        commits,
                        commit_secs,
                        lag: q.metrics.total_lag(),
                        watermark: q.counters.watermark.load(Ordering::Relaxed),
                        late: q.counters.late_records.load(Ordering::Relaxed),
                    },
                )
            })
            .collect();
        self.push(Sample {
            t_ms,
            streams,
            queries,
        });
    }

    fn push(&self, s: Sample) {
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(s);
    }

    /// Per stream and per query still present in the newest sample, points
    /// `{t, rate, ...}`: records/s in over at least [`RATE_SPAN`], and for
    /// queries the mean batch time and the mean commit time (results,
    /// offsets and checkpoint in one store transaction) in ms over the
    /// same span, the consumer
    /// lag, the late records so far and the event-time lag: how far the
    /// watermark is behind the sample's wall-clock time, in seconds.
    pub fn json(&self) -> Value {
        let h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut streams: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let mut queries: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let span = RATE_SPAN.as_millis() as i64;
        // Dropped streams and queries have no series: their names leave the legends.
        if let Some(newest) = h.back() {
            for name in newest.streams.keys() {
                streams.insert(name.clone(), Vec::new());
            }
            for name in newest.queries.keys() {
                queries.insert(name.clone(), Vec::new());
            }
        }
        // `base` is the newest sample at least `span` before `b`; `next` the
        // first one not yet that far back.
        let (mut base, mut next) = (None, 0);
        for (j, b) in h.iter().enumerate() {
            while next < j && b.t_ms - h[next].t_ms >= span {
                base = Some(next);
                next += 1;
            }
            let Some(a) = base.map(|i| &h[i]) else {
                continue;
            };
            let dt = (b.t_ms - a.t_ms) as f64 / 1000.0;
            // A stream or query created since `a` started from zero.
            for (name, (rec, bad)) in &b.streams {
                if let Some(points) = streams.get_mut(name) {
                    let (rec0, bad0) = a.streams.get(name).copied().unwrap_or_default();
                    points.push(json!({
                        "t": b.t_ms,
                        "rate": rec.saturating_sub(rec0) as f64 / dt,
                        "bad_rate": bad.saturating_sub(bad0) as f64 / dt,
                    }));
                }
            }
            for (name, q) in &b.queries {
                if let Some(points) = queries.get_mut(name) {
                    let q0 = a.queries.get(name).cloned().unwrap_or_default();
                    let mean_ms =
                        |n: u64, n0: u64, secs: f64, secs0: f64| match n.saturating_sub(n0) {
                            0 => Value::Null,
                            d => json!((secs - secs0) * 1000.0 / d as f64),
                        };
                    let ms = mean_ms(q.batches, q0.batches, q.batch_secs, q0.batch_secs);
                    let commit_ms = mean_ms(q.commits, q0.commits, q.commit_secs, q0.commit_secs);
                    points.push(json!({
                        "t": b.t_ms,
                        "rate": q.records.saturating_sub(q0.records) as f64 / dt,
                        "rows_rate": q.rows.saturating_sub(q0.rows) as f64 / dt,
                        "batch_ms": ms,
                        "commit_ms": commit_ms,
                        "lag": q.lag,
                        "late": q.late,
                        "event_lag_s": (q.watermark != i64::MIN)
                            .then(|| (b.t_ms - q.watermark) as f64 / 1000.0),
                    }));
                }
            }
        }
        json!({
            "interval_ms": SAMPLE_EVERY.as_millis() as u64,
            "rate_span_ms": span,
            "streams": streams,
            "queries": queries,
        })
    }
}

/// Samples `app` every [`SAMPLE_EVERY`] until it is dropped.
pub fn spawn_sampler(app: std::sync::Weak<App>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        // After a stall, one late sample rather than a burst of them.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(app) = app.upgrade() else { break };
            app.metrics.history.sample(&app);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t_ms: i64, stream: u64, query: Option<u64>) -> Sample {
        let mut s = Sample {
            t_ms,
            ..Sample::default()
        };
        s.streams.insert("clicks".into(), (stream, 0));
        if let Some(n) = query {
            let q = QuerySample {
                records: n,
                ..QuerySample::default()
            };
            s.queries.insert("q".into(), q);
        }
        s
    }

    fn rates(v: &Value, kind: &str, name: &str) -> Vec<f64> {
        v[kind][name]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["rate"].as_f64().unwrap())
            .collect()
    }

    #[test]
    fn a_burst_is_spread_over_the_rate_span() {
        let h = History::default();
        // A steady 2000/s source read in one burst every 20 s, sampled
        // irregularly as a busy runtime does.
        let mut counted = 0;
        for t in [
            0, 2_000, 4_000, 4_001, 8_000, 10_000, 12_500, 14_000, 20_000, 22_000,
        ] {
            if t == 20_000 {
                counted = 40_000;
            }
            h.push(at(t, counted, None));
        }
        let v = h.json();
        let r = rates(&v, "streams", "clicks");
        assert!(!r.is_empty());
        // No point above the burst over the span, and the last ones equal
        // the counters' delta over the time between their samples.
        assert!(r.iter().all(|&x| x <= 40_000.0 / 10.0), "{r:?}");
        assert_eq!(*r.last().unwrap(), 40_000.0 / 12.0);
    }

    #[test]
    fn dropped_queries_have_no_series() {
        let h = History::default();
        for t in (0..=20_000).step_by(2_000) {
            h.push(at(t, t as u64, Some(t as u64)));
        }
        h.push(at(22_000, 22_000, None));
        let v = h.json();
        assert!(v["queries"].as_object().unwrap().is_empty(), "{v}");
        assert_eq!(rates(&v, "streams", "clicks").last(), Some(&1000.0));
    }

    #[test]
    fn a_new_stream_starts_from_zero() {
        let h = History::default();
        h.push(Sample::default());
        for t in (2_000..=10_000).step_by(2_000) {
            h.push(at(t, 500, None));
        }
        assert_eq!(rates(&h.json(), "streams", "clicks"), [50.0]);
    }

    #[test]
    fn event_time_lag_is_wall_clock_minus_watermark() {
        let h = History::default();
        for t in (0..=12_000).step_by(2_000) {
            let mut s = at(t, 0, Some(0));
            let q = s.queries.get_mut("q").unwrap();
            q.watermark = if t < 12_000 { i64::MIN } else { t - 3_500 };
            q.late = t as u64 / 1000;
            h.push(s);
        }
        let v = h.json();
        let points = v["queries"]["q"].as_array().unwrap();
        assert_eq!(points.len(), 2, "{v}");
        assert_eq!(points[0]["event_lag_s"], Value::Null);
        assert_eq!(points[1]["event_lag_s"], 3.5);
        assert_eq!(points[1]["late"], 12);
    }
}
