//! What a query's thread records about its own work: batch durations,
//! window-close latency, consumer lag and state size. The server's
//! Prometheus registry (`server::metrics`) creates these and reads them at
//! scrape time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts};

use crate::model::Emission;

/// Buckets of the batch-duration histogram, in seconds.
pub const BATCH_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of the window-close-latency histogram, in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Where a query's consumer stands in one partition.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PartitionPosition {
    /// The partition.
    pub partition: i32,
    /// The next offset the query consumes (committed with its results), if
    /// it has one yet.
    pub offset: Option<i64>,
    /// The log end (high watermark) the broker last reported, if known.
    pub log_end: Option<i64>,
    /// Records between the two (when both are known).
    pub lag: Option<i64>,
}

/// What one query's thread records.
pub struct QueryMetrics {
    batch: Histogram,
    commit: Histogram,
    close_latency: Histogram,
    /// Consumer lag per partition.
    pub lag: Mutex<BTreeMap<i32, i64>>,
    positions: Mutex<Vec<PartitionPosition>>,
    /// The query's recent errors and warnings.
    pub events: super::events::EventLog,
    /// Open partial-state rows.
    pub open_groups: AtomicU64,
    /// Open windows.
    pub open_windows: AtomicU64,
    /// Bytes of the last saved state.
    pub state_bytes: AtomicU64,
}

impl QueryMetrics {
    /// Metrics not attached to any registry.
    pub fn detached() -> Self {
        let h = |name: &str, buckets: &[f64]| {
            Histogram::with_opts(HistogramOpts::new(name, name).buckets(buckets.to_vec()))
                .expect("valid histogram")
        };
        Self::new(
            h("batch", BATCH_BUCKETS),
            h("commit", BATCH_BUCKETS),
            h("close_latency", LATENCY_BUCKETS),
        )
    }

    /// Metrics recording into the given histograms.
    pub fn new(batch: Histogram, commit: Histogram, close_latency: Histogram) -> Self {
        QueryMetrics {
            batch,
            commit,
            close_latency,
            lag: Mutex::new(BTreeMap::new()),
            positions: Mutex::new(Vec::new()),
            events: Default::default(),
            open_groups: AtomicU64::new(0),
            open_windows: AtomicU64::new(0),
            state_bytes: AtomicU64::new(0),
        }
    }

    /// One poll's records decoded, windowed and committed in `d`.
    pub fn observe_batch(&self, d: Duration) {
        self.batch.observe(d.as_secs_f64());
    }

    /// One store commit (results, offsets and checkpoint) took `d`.
    pub fn observe_commit(&self, d: Duration) {
        self.commit.observe(d.as_secs_f64());
    }

    /// Commits observed and their total seconds.
    pub fn commit_totals(&self) -> (u64, f64) {
        (self.commit.get_sample_count(), self.commit.get_sample_sum())
    }

    /// Notes where the query stands in each of `partitions`: `offsets` are
    /// the next offsets it consumes, `log_ends` the brokers' last reported
    /// log ends.
    pub fn set_positions(
        &self,
        partitions: &[i32],
        offsets: &BTreeMap<i32, i64>,
        log_ends: &BTreeMap<i32, i64>,
    ) {
        let mut ps: Vec<i32> = partitions.to_vec();
        ps.sort_unstable();
        ps.dedup();
        let positions = ps
            .into_iter()
            .map(|p| {
                let (offset, log_end) = (offsets.get(&p).copied(), log_ends.get(&p).copied());
                PartitionPosition {
                    partition: p,
                    offset,
                    log_end,
                    lag: offset.zip(log_end).map(|(o, e)| (e - o).max(0)),
                }
            })
            .collect();
        *self.positions.lock().unwrap_or_else(|p| p.into_inner()) = positions;
    }

    /// The query's partitions as last noted, by partition.
    pub fn positions(&self) -> Vec<PartitionPosition> {
        self.positions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A window's rows committed `seconds` after the window's end.
    pub fn observe_close_latency(&self, seconds: f64) {
        self.close_latency.observe(seconds.max(0.0));
    }

    /// Replaces the consumer lag per partition.
    pub fn set_lag(&self, lag: &[(i32, i64)]) {
        let mut m = self.lag.lock().unwrap_or_else(|p| p.into_inner());
        for (p, l) in lag {
            m.insert(*p, *l);
        }
    }

    /// Total consumer lag over partitions, if known.
    pub fn total_lag(&self) -> Option<i64> {
        let m = self.lag.lock().unwrap_or_else(|p| p.into_inner());
        (!m.is_empty()).then(|| m.values().sum())
    }

    /// Open partial-state rows (about groups × windows), open windows and
    /// the size of the saved state.
    pub fn set_state(&self, groups: usize, windows: usize, bytes: usize) {
        self.open_groups.store(groups as u64, Ordering::Relaxed);
        self.open_windows.store(windows as u64, Ordering::Relaxed);
        self.state_bytes.store(bytes as u64, Ordering::Relaxed);
    }

    /// Batches observed and their total seconds.
    pub fn batch_totals(&self) -> (u64, f64) {
        (self.batch.get_sample_count(), self.batch.get_sample_sum())
    }
}

impl QueryMetrics {
    /// Observes the close latency of every window in `emitted`, written at `now_ms`.
    pub fn observe_emissions(&self, emitted: &[Emission], now_ms: i64) {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::compute::cast;
        use datafusion::arrow::datatypes::{DataType, Int64Type, TimeUnit};
        for e in emitted.iter().filter(|e| !e.cumulative) {
            let Some(col) = e.batch.columns().get(1) else {
                continue;
            };
            let Ok(ms) = cast(col, &DataType::Timestamp(TimeUnit::Millisecond, None))
                .and_then(|a| cast(&a, &DataType::Int64))
            else {
                continue;
            };
            let ends: BTreeSet<i64> = ms.as_primitive::<Int64Type>().iter().flatten().collect();
            for end in ends {
                self.observe_close_latency((now_ms - end) as f64 / 1000.0);
            }
        }
    }
}
