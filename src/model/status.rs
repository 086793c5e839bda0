//! What a running query is doing and how far it got: its status, its live
//! counters and where its `INTO TOPIC` sink stands. Written by the query's
//! thread, read by the HTTP layer and the metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};

use serde::Serialize;

/// What a running query is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryStatus {
    /// Restoring state and connecting.
    Starting,
    /// Waiting for the stream's topic to exist.
    WaitingForTopic,
    /// No broker has answered since this time (RFC 3339).
    BrokerUnreachable(String),
    /// Consuming.
    Running,
    /// Consuming, but `INTO TOPIC` cannot publish (the message says why);
    /// the rows wait in the store and publishing is retried.
    SinkWaiting(String),
    /// The store cannot be reached (the message says why): consuming is
    /// paused, and the query resumes from its last commit once the store
    /// answers again.
    WaitingForStore(String),
    /// Stopped on request.
    Stopped,
    /// Stopped by an error.
    Failed(String),
}

impl QueryStatus {
    /// Short label (`running`, `failed`, ...).
    pub fn label(&self) -> &'static str {
        match self {
            QueryStatus::Starting => "starting",
            QueryStatus::WaitingForTopic => "waiting_for_topic",
            QueryStatus::BrokerUnreachable(_) => "broker_unreachable",
            QueryStatus::Running => "running",
            QueryStatus::SinkWaiting(_) => "sink_waiting",
            QueryStatus::WaitingForStore(_) => "waiting_for_store",
            QueryStatus::Stopped => "stopped",
            QueryStatus::Failed(_) => "failed",
        }
    }
}

/// Live counters of one query, shared with the HTTP layer.
#[derive(Debug)]
pub struct Counters {
    /// Records received (good and bad).
    pub records_in: AtomicU64,
    /// Records dropped from at least one closed window.
    pub late_records: AtomicU64,
    /// Records that could not be decoded or lacked an event time.
    pub bad_records: AtomicU64,
    /// Records skipped because their offsets were lost (`on_offset_loss`).
    pub records_skipped: AtomicU64,
    /// Windows finished and emitted.
    pub windows_closed: AtomicU64,
    /// Result rows emitted.
    pub rows_emitted: AtomicU64,
    /// Current watermark in ms (`i64::MIN` before any record).
    pub watermark: AtomicI64,
    /// End of the last closed window in ms (`i64::MIN` when none).
    pub last_window_end: AtomicI64,
    /// Where `INTO TOPIC` publishing stands (an empty topic: no sink).
    pub sink: Arc<std::sync::Mutex<SinkStatus>>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            records_in: AtomicU64::new(0),
            late_records: AtomicU64::new(0),
            bad_records: AtomicU64::new(0),
            records_skipped: AtomicU64::new(0),
            windows_closed: AtomicU64::new(0),
            rows_emitted: AtomicU64::new(0),
            watermark: AtomicI64::new(i64::MIN),
            last_window_end: AtomicI64::new(i64::MIN),
            sink: Default::default(),
        }
    }
}

/// Where a query's `INTO TOPIC` publishing stands.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SinkStatus {
    /// The topic.
    pub topic: String,
    /// `exactly_once` (transactions), `at_least_once` (the broker refused
    /// transactions) or empty before the first connection.
    pub mode: &'static str,
    /// Cursor of the last row on the topic.
    pub published_cursor: Option<i64>,
    /// Cursor of the newest row read from the store.
    pub store_cursor: Option<i64>,
    /// Rows in the store not yet on the topic, as last seen (at most one
    /// batch's worth is counted).
    pub lag_rows: u64,
    /// Rows published by this server since it started.
    pub rows_published: u64,
    /// Failed publishing attempts (each retried).
    pub errors: u64,
    /// The last failure, while it lasts.
    pub error: Option<String>,
}

impl SinkStatus {
    /// The status as JSON, with `lag_cursor` (how far the store's newest
    /// row is past the published one); `None` for a query without a sink.
    pub fn json(status: &std::sync::Mutex<SinkStatus>) -> Option<serde_json::Value> {
        let s = status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if s.topic.is_empty() {
            return None;
        }
        let lag = match (s.store_cursor, s.published_cursor) {
            (Some(a), Some(b)) => (a - b).max(0),
            (Some(a), None) => a,
            _ => 0,
        };
        let mut v = serde_json::to_value(&s).ok()?;
        v["lag_cursor"] = serde_json::json!(lag);
        Some(v)
    }
}
