//! Running a continuous query: source → decoder → window engine → store.
//!
//! Each query runs on its own thread: it polls its Kafka partitions, decodes
//! each partition's records into one batch, feeds the window engine, and
//! commits emitted rows together with the consumed offsets and the engine's
//! checkpoint in one store transaction — at every window close and at least
//! every `checkpoint_interval` while records flow.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::Schema;

use crate::error::Result;
use crate::format::json::JsonDecoder;
use crate::plan::ContinuousPlan;
use crate::source::kafka::KafkaSource;
use crate::sql::StreamDef;
use crate::sql::window::WindowKind;
use crate::store::Store;
use crate::window::{Counters, Emission, WindowEngine};

/// What a running query is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryStatus {
    /// Restoring state and connecting.
    Starting,
    /// Waiting for the stream's topic to exist.
    WaitingForTopic,
    /// Consuming.
    Running,
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
            QueryStatus::Running => "running",
            QueryStatus::Stopped => "stopped",
            QueryStatus::Failed(_) => "failed",
        }
    }
}

/// Everything a query thread needs.
pub struct QueryTask {
    /// Query name (its results table).
    pub name: String,
    /// The stream it reads.
    pub stream: StreamDef,
    /// Its compiled plan.
    pub plan: Arc<ContinuousPlan>,
    /// Broker list.
    pub brokers: String,
    /// Store for results and checkpoints.
    pub store: Store,
    /// Shared counters.
    pub counters: Arc<Counters>,
    /// Shared status.
    pub status: Arc<Mutex<QueryStatus>>,
    /// Set to stop the thread.
    pub stop: Arc<AtomicBool>,
    /// Longest time between checkpoints while records flow.
    pub checkpoint_interval: Duration,
    /// Quiet time after which windows may close on the wall clock.
    pub idle_after: Duration,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl QueryTask {
    fn set_status(&self, s: QueryStatus) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// Starts the query on its own thread.
    pub fn spawn(self) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name(format!("query-{}", self.name))
            .spawn(move || {
                let result = self.run();
                match result {
                    Ok(()) => self.set_status(QueryStatus::Stopped),
                    Err(e) => {
                        tracing::error!("query {} failed: {e}", self.name);
                        self.set_status(QueryStatus::Failed(e.to_string()));
                    }
                }
            })
            .expect("spawn query thread")
    }

    fn run(&self) -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let schema = Arc::new(Schema::new(self.stream.fields()));
        let et = match &self.stream.event_time {
            Some(c) => Some(schema.index_of(c)?),
            None => None,
        };
        let mut engine = WindowEngine::new(self.plan.clone(), et, self.stream.watermark_delay_ms);
        engine.counters = self.counters.clone();
        let saved = match self.store.load_checkpoint(&self.name)? {
            Some((offsets, state)) => {
                if !state.is_empty() {
                    engine.restore(&state)?;
                }
                offsets
            }
            None => BTreeMap::new(),
        };
        self.set_status(QueryStatus::WaitingForTopic);
        let brokers = self.stream.brokers.as_deref().unwrap_or(&self.brokers);
        let client = format!("runnel-{}", self.name);
        let mut src = match KafkaSource::connect(
            brokers,
            &self.stream.topic,
            &client,
            self.stream.start,
            &saved,
            &self.stop,
        ) {
            Ok(s) => s,
            Err(_) if self.stop.load(Ordering::Relaxed) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.set_status(QueryStatus::Running);
        let mut decoder = JsonDecoder::new(schema)?;
        let emit_ms = match self.plan.window.kind {
            WindowKind::Cumulative { emit_ms } => Some(emit_ms),
            _ => None,
        };
        let mut next_emit = now_ms() + emit_ms.unwrap_or(0);
        let mut last_record = Instant::now();
        let mut last_commit = Instant::now();
        let mut uncommitted = false;
        while !self.stop.load(Ordering::Relaxed) {
            let chunks = src.poll(100_000, Duration::from_millis(100))?;
            let mut emitted: Vec<Emission> = Vec::new();
            let now = now_ms();
            if chunks.is_empty() {
                if last_record.elapsed() >= self.idle_after {
                    emitted.extend(rt.block_on(engine.close_idle(now))?);
                }
            } else {
                last_record = Instant::now();
                uncommitted = true;
            }
            for chunk in &chunks {
                let (batch, bad) = decoder.decode(&chunk.payloads());
                if !bad.is_empty() {
                    self.counters
                        .records_in
                        .fetch_add(bad.len() as u64, Ordering::Relaxed);
                    self.counters
                        .bad_records
                        .fetch_add(bad.len() as u64, Ordering::Relaxed);
                    let b = &bad[0];
                    tracing::debug!(
                        "query {}: bad record at partition {} offset {}: {} ({})",
                        self.name,
                        chunk.partition,
                        chunk.first_offset + b.index as i64,
                        b.reason,
                        b.detail
                    );
                }
                if let Some(batch) = batch {
                    emitted.extend(rt.block_on(engine.process(chunk.partition, batch, now))?);
                }
            }
            if let Some(ms) = emit_ms
                && now >= next_emit
            {
                emitted.extend(rt.block_on(engine.emit_cumulative(now))?);
                next_emit = now + ms;
            }
            if !emitted.is_empty()
                || (uncommitted && last_commit.elapsed() >= self.checkpoint_interval)
            {
                self.store
                    .commit(&self.name, &emitted, src.offsets(), &engine.checkpoint()?)?;
                last_commit = Instant::now();
                uncommitted = false;
            }
        }
        if uncommitted {
            self.store
                .commit(&self.name, &[], src.offsets(), &engine.checkpoint()?)?;
        }
        Ok(())
    }
}
