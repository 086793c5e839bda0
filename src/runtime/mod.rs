//! Running a continuous query: the one query loop, source → decode →
//! engine → coordinator → store → sinks.
//!
//! Each query runs on a thread of its own ([`QueryTask::spawn`]). Every
//! turn it polls the stream's records, decoded per partition into one batch
//! each ([`decode`]) by a reader the server's queries over the stream share
//! ([`shared`]); tells the engine's clocks what arrived; folds the
//! records into the window engine, which emits the windows the watermark
//! has passed; commits, at every window close and at least every
//! `checkpoint_interval` while records flow; and publishes what was written
//! to the query's `INTO TOPIC`.
//!
//! What differs between one server and a cluster member is a
//! [`Coordinator`]: who reads which partitions, where progress and partial
//! states are committed, and when a window is final. [`local::Local`] is
//! the single server's; cluster mode's is `cluster::Member`.
//!
//! ```no_run
//! # fn demo(task: runnel::runtime::QueryTask) {
//! let handle = task.spawn(Box::new(runnel::runtime::local::Local::default()));
//! # }
//! ```

pub mod coordinator;
pub mod decode;
pub mod events;
pub mod gate;
pub mod local;
pub mod shared;
pub mod telemetry;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::Schema;

use crate::error::{Error, Result};
use crate::model::{Counters, Emission, QueryStatus, StreamDef, WindowKind};
use crate::plan::ContinuousPlan;
use crate::sink::exact::ExactSink;
use crate::source::Progress;
use crate::source::stats::StreamStats;
use crate::store::Store;
use crate::window::{PartitionBatch, SavedCounters, WindowEngine};
pub use coordinator::Coordinator;
use decode::Decoded;
use events::Level;

/// The wall clock in epoch ms.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Everything a query thread needs.
pub struct QueryTask {
    /// Query name (its results table).
    pub name: String,
    /// The stream it reads.
    pub stream: StreamDef,
    /// Its compiled plan.
    pub plan: Arc<ContinuousPlan>,
    /// How the stream's Kafka clients (its consumer, the `INTO TOPIC`
    /// producer) connect.
    pub kafka: crate::connect::kafka::KafkaConn,
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
    /// Confirmed quiet time after which a caught-up partition is idle (see
    /// [`crate::window::watermark`]).
    pub idle_after: Duration,
    /// Input statistics of the stream, shared by its readers.
    pub stats: Arc<StreamStats>,
    /// Most partial-state rows (groups × open windows) the query may hold.
    pub max_state_rows: usize,
    /// Kafka topic each emitted row is also published to, as JSON.
    pub into_topic: Option<String>,
    /// Start position overriding the saved offsets (after a reset).
    pub reset: Option<crate::model::StartFrom>,
    /// Timings, lag and state size for `GET /metrics`.
    pub metrics: Arc<telemetry::QueryMetrics>,
    /// How long closed windows' partial states are kept for roll-ups.
    pub state_retention: Duration,
    /// How long late records are kept in the late table (zero: not kept).
    pub late_retention: Duration,
    /// The server's readers, which queries over the same Kafka stream
    /// share; `None` reads with a consumer of the query's own.
    pub readers: Option<Arc<shared::Readers>>,
    /// Directories a file stream's file must be under (checked again once
    /// the file exists, as it may have appeared after the stream was made).
    pub allow_files: Vec<std::path::PathBuf>,
    /// Where the query, connected to its source, waits for the other
    /// queries of the script that created it before it subscribes to its
    /// stream's reader ([`gate`]).
    pub start_gate: Option<gate::Ticket>,
}

/// The status of query `name` once `run` has returned: stopped, or failed
/// with a message naming the query. A bug (a panic) must fail the query
/// visibly, not take the server down or leave the query looking alive.
fn outcome(name: &str, run: impl FnOnce() -> Result<()>) -> QueryStatus {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|p| {
        Err(Error::Execution(format!(
            "internal error: {}",
            crate::error::panic_message(p.as_ref())
        )))
    });
    match result {
        Ok(()) => QueryStatus::Stopped,
        Err(e) => {
            tracing::error!("query {name} failed: {e}");
            QueryStatus::Failed(format!("query {name}: {e}"))
        }
    }
}

impl QueryTask {
    /// Fails the query when its state is over `max_state_rows`.
    pub(crate) fn check_state_limit(
        &self,
        rt: &tokio::runtime::Runtime,
        engine: &mut WindowEngine,
    ) -> Result<()> {
        // Unmerged partial batches count too: merge them before judging the
        // state by its groups x open windows.
        if engine.state_rows() > self.max_state_rows {
            rt.block_on(engine.compact_all())?;
        }
        if engine.state_rows() > self.max_state_rows {
            return Err(Error::Execution(format!(
                "state limit exceeded: {} partial-state rows (groups x open windows) > {}; narrow the GROUP BY, shorten the window or raise max_state_rows",
                engine.state_rows(),
                self.max_state_rows
            )));
        }
        Ok(())
    }

    /// Tells the engine's clocks which partitions delivered records this
    /// turn and which were confirmed caught up and quiet since the last;
    /// notes whether the broker is reachable and the records skipped.
    pub(crate) fn tick_clock(
        &self,
        engine: &mut WindowEngine,
        progress: &Progress,
        decoded: &[Decoded],
        last_tick: &mut Instant,
    ) {
        self.note_reachability(progress.unreachable_since, QueryStatus::Running);
        self.counters
            .records_skipped
            .store(progress.skipped, Ordering::Relaxed);
        // A turn longer than a second (a slow commit, a paused process)
        // counts as one second of quiet at most.
        let elapsed = last_tick.elapsed().min(Duration::from_secs(1));
        *last_tick = Instant::now();
        let delivered: Vec<i32> = decoded.iter().map(|(p, _)| *p).collect();
        engine.clock_mut().tick(
            &progress.partitions,
            &delivered,
            |p| progress.is_caught_up(p),
            elapsed.as_millis() as i64,
            self.idle_after.as_millis() as i64,
        );
    }

    /// Deletes window states past their retention, once a minute.
    pub(crate) fn prune_window_states(&self, last: &mut Option<Instant>) -> Result<()> {
        if self.state_retention.is_zero()
            || last.is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return Ok(());
        }
        *last = Some(Instant::now());
        let before = now_ms().saturating_sub(self.state_retention.as_millis() as i64);
        self.store.prune_window_states(&self.name, before)?;
        Ok(())
    }

    /// Deletes late records written longer ago than their retention, once a
    /// minute.
    pub(crate) fn prune_late(&self, last: &mut Option<Instant>) -> Result<()> {
        if self.late_retention.is_zero()
            || last.is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return Ok(());
        }
        *last = Some(Instant::now());
        let before = now_ms().saturating_sub(self.late_retention.as_millis() as i64);
        self.store.prune_late(&self.name, before)?;
        Ok(())
    }

    /// A broker unreachable for more than two seconds is a status of its
    /// own (brief reconnects are not); reachable again, the query runs.
    pub(crate) fn note_reachability(
        &self,
        since: Option<std::time::SystemTime>,
        back: QueryStatus,
    ) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match since {
            Some(t)
                if t.elapsed().is_ok_and(|d| d >= Duration::from_secs(2))
                    && !matches!(*status, QueryStatus::Failed(_) | QueryStatus::Stopped) =>
            {
                let at = chrono::DateTime::<chrono::Utc>::from(t);
                let at = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                self.change_status(&mut status, QueryStatus::BrokerUnreachable(at));
            }
            None if matches!(*status, QueryStatus::BrokerUnreachable(_)) => {
                self.change_status(&mut status, back)
            }
            _ => {}
        }
    }

    /// The query's `INTO TOPIC` sink, if it has one.
    pub fn exact_sink(&self) -> Option<ExactSink> {
        self.into_topic.as_ref().map(|t| {
            ExactSink::new(
                &self.kafka,
                &self.name,
                t,
                self.plan.output_schema.clone(),
                self.counters.sink.clone(),
            )
        })
    }

    /// Publishes the store's new rows to the query's topic; a failure to be
    /// retried shows in the query's status until publishing works again.
    pub fn drive_sink(&self, sink: &mut ExactSink) -> Result<()> {
        let waiting = sink.drive(&self.store)?;
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match waiting {
            Some(m) if matches!(*status, QueryStatus::Running | QueryStatus::SinkWaiting(_)) => {
                self.change_status(&mut status, QueryStatus::SinkWaiting(m))
            }
            None if matches!(*status, QueryStatus::SinkWaiting(_)) => {
                self.change_status(&mut status, QueryStatus::Running)
            }
            _ => {}
        }
        Ok(())
    }

    /// Sets the query's status.
    pub fn set_status(&self, s: QueryStatus) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        self.change_status(&mut status, s);
    }

    /// Sets `status` to `new`, noting in the query's events a change a
    /// reader should know of.
    pub fn change_status(&self, status: &mut QueryStatus, new: QueryStatus) {
        if *status != new {
            let note = |level, kind, message: String| {
                self.metrics
                    .events
                    .note(level, kind, &message, &message, 1, None)
            };
            match (&*status, &new) {
                (_, QueryStatus::BrokerUnreachable(since)) => note(
                    Level::Error,
                    "broker_unreachable",
                    format!(
                        "no broker of stream {} reachable since {since}",
                        self.stream.name
                    ),
                ),
                (QueryStatus::BrokerUnreachable(_), _) => note(
                    Level::Info,
                    "broker_reachable",
                    "a broker is reachable again".to_string(),
                ),
                (_, QueryStatus::SinkWaiting(m)) => note(Level::Warning, "sink", m.clone()),
                (QueryStatus::SinkWaiting(_), _) => note(
                    Level::Info,
                    "sink",
                    "INTO TOPIC publishes again".to_string(),
                ),
                (_, QueryStatus::Failed(m)) => note(Level::Error, "failed", m.clone()),
                _ => {}
            }
        }
        *status = new;
    }

    /// Where a partition with no saved offset starts: the reset's choice,
    /// else the stream's.
    pub fn start_from(&self) -> crate::model::StartFrom {
        self.reset.unwrap_or(self.stream.start)
    }

    /// The Kafka client id of the query's consumers.
    pub fn client_id(&self) -> String {
        format!("runnel-{}", self.name)
    }

    /// Runs `connect` waiting as a query does (until it is stopped, noting
    /// a missing topic and unreachable brokers in its status); `None` when
    /// the query was stopped meanwhile.
    pub fn connect<T>(
        &self,
        connect: impl FnOnce(crate::source::kafka::Waiting) -> Result<T>,
    ) -> Result<Option<T>> {
        let unreachable = |since| self.note_reachability(since, QueryStatus::WaitingForTopic);
        let missing = |what: &str| self.note_missing_topic(what);
        let waiting = crate::source::kafka::Waiting {
            stop: &self.stop,
            unreachable: &unreachable,
            missing: &missing,
        };
        match connect(waiting) {
            Ok(v) => Ok(Some(v)),
            Err(_) if self.stop.load(Ordering::Relaxed) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Notes that the stream's topic is missing (see [`crate::source::kafka::Waiting`]).
    pub fn note_missing_topic(&self, what: &str) {
        let level = Level::Warning;
        self.metrics
            .events
            .note(level, "waiting_for_topic", what, what, 1, None)
    }

    /// Notes, once each, the Kafka client errors logged since `seen`.
    fn note_client_errors(&self, progress: &Progress, seen: &mut std::time::SystemTime) {
        for (at, message) in &progress.client_errors {
            if at > seen {
                *seen = *at;
                let key = message.split('(').next().unwrap_or(message);
                self.metrics
                    .events
                    .note(Level::Warning, "kafka_client", key, message, 1, None);
            }
        }
    }

    /// Starts the query on its own thread, coordinated by `coordinator`.
    pub fn spawn(self, mut coordinator: Box<dyn Coordinator>) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name(format!("query-{}", self.name))
            .spawn(move || {
                let status = outcome(&self.name, || self.run(coordinator.as_mut()));
                self.set_status(status);
            })
            .expect("spawn query thread")
    }

    /// Runs the query until it is stopped or fails; while the store is
    /// unavailable it pauses, then starts again from the last commit.
    fn run(&self, coord: &mut dyn Coordinator) -> Result<()> {
        let fresh = self.counters.snapshot();
        loop {
            match self.run_from_store(coord, &fresh) {
                Err(e) if e.is_unavailable() => coord.pause(),
                done => return done,
            }
            // What was read since the last commit is read again.
            if !self.wait_for_store()? {
                return Ok(());
            }
        }
    }

    /// Pauses while the store is unavailable, retrying from 250 ms doubling
    /// to 4 s; `false` when the query is stopped meanwhile.
    fn wait_for_store(&self) -> Result<bool> {
        let mut wait = Duration::from_millis(250);
        loop {
            // The store answers once it takes a write again (a query that
            // never committed has no checkpoint to write back, so the probe
            // is a write of its own).
            let answer = self.store.probe_write();
            match answer {
                Ok(_) => {
                    tracing::info!(query = %self.name, "the store answers again: resuming from the last commit");
                    return Ok(true);
                }
                Err(e) if e.is_unavailable() => {
                    if !matches!(self.status(), QueryStatus::WaitingForStore(_)) {
                        tracing::warn!(query = %self.name, "{e}: paused until it answers");
                    }
                    self.set_status(QueryStatus::WaitingForStore(e.to_string()));
                }
                Err(e) => return Err(e),
            }
            let until = Instant::now() + wait;
            while Instant::now() < until {
                if self.stop.load(Ordering::Relaxed) {
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            wait = (wait * 2).min(Duration::from_secs(4));
        }
    }

    fn status(&self) -> QueryStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The query loop, from the last commit until the query is stopped or
    /// fails: poll → decode → engine → commit → publish, the same for one
    /// server and a cluster member; `coord` does what differs. The counters
    /// start from `fresh` (as they stood when the query started) unless the
    /// last commit saved them.
    fn run_from_store(&self, coord: &mut dyn Coordinator, fresh: &SavedCounters) -> Result<()> {
        if coord.restores_counters() {
            self.counters.put_back(fresh);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let event_time = match &self.stream.event_time {
            Some(c) => Some(Schema::new(self.stream.fields()).index_of(c)?),
            None => None,
        };
        let mut engine = WindowEngine::new(
            self.plan.clone(),
            event_time,
            self.stream.watermark_delay_ms,
        );
        engine.counters = self.counters.clone();
        if !self.state_retention.is_zero() {
            engine.keep_window_states();
        }
        self.set_status(QueryStatus::WaitingForTopic);
        if !coord.start(self, &mut engine)? {
            return Ok(());
        }
        self.set_status(QueryStatus::Running);
        let emit_ms = match self.plan.window.kind {
            WindowKind::Cumulative { emit_ms } => Some(emit_ms),
            _ => self.plan.early_ms,
        };
        let mut next_emit = now_ms() + emit_ms.unwrap_or(0);
        let mut last_tick = Instant::now();
        let mut last_commit = Instant::now();
        let mut uncommitted = false;
        let mut last_lag = Instant::now();
        let mut last_prune: Option<Instant> = None;
        let mut last_late_prune: Option<Instant> = None;
        let mut backlog = Backlog::new(&self.counters);
        let mut progress = Progress::default();
        let mut errors_seen = std::time::UNIX_EPOCH;
        while !self.stop.load(Ordering::Relaxed) {
            let polled = coord.poll(self, &mut engine)?;
            let batch_start = Instant::now();
            let now = now_ms();
            let mut emitted: Vec<Emission> = Vec::new();
            let mut got_records = false;
            if let Some((decoded, polled_progress)) = polled {
                progress = polled_progress;
                got_records = !decoded.is_empty();
                self.tick_clock(&mut engine, &progress, &decoded, &mut last_tick);
                let batches: Vec<PartitionBatch> =
                    decoded.into_iter().filter_map(|(_, b)| b).collect();
                if !batches.is_empty() {
                    emitted.extend(rt.block_on(engine.process_polled(batches, now))?);
                    self.check_state_limit(&rt, &mut engine)?;
                } else {
                    emitted.extend(rt.block_on(engine.close_ready())?);
                }
            }
            uncommitted |= got_records;
            if let Some(ms) = emit_ms
                && now >= next_emit
            {
                emitted.extend(rt.block_on(engine.emit_open(now))?);
                next_emit = now + ms;
            }
            let due = !emitted.is_empty()
                || (uncommitted || !coord.commits_only_records())
                    && last_commit.elapsed() >= self.checkpoint_interval;
            if due {
                let started = Instant::now();
                let written = coord.commit(self, &rt, &mut engine, emitted)?;
                self.metrics.observe_commit(started.elapsed());
                self.metrics.observe_emissions(&written, now_ms());
                coord.publish(self, &written)?;
                last_commit = Instant::now();
                uncommitted = false;
            } else {
                coord.publish(self, &[])?;
            }
            if got_records {
                self.metrics.observe_batch(batch_start.elapsed());
            }
            if last_lag.elapsed() >= Duration::from_secs(1) {
                last_lag = Instant::now();
                self.prune_window_states(&mut last_prune)?;
                if coord.keeps_late_records() {
                    self.prune_late(&mut last_late_prune)?;
                }
                self.metrics.set_lag(&progress.lag);
                let (ps, ends) = (&progress.partitions, &progress.log_ends);
                self.metrics.set_positions(ps, &coord.offsets(), ends);
                self.note_client_errors(&progress, &mut errors_seen);
                backlog.note(&self.name, &self.counters, self.metrics.total_lag());
            }
        }
        if uncommitted {
            match coord.commit(self, &rt, &mut engine, Vec::new()) {
                Ok(written) => coord.publish(self, &written)?,
                // Read again from the last commit on the next start.
                Err(e) if e.is_unavailable() => tracing::warn!(query = %self.name, "{e}"),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Records behind its log ends past which a query logs its catch-up rate.
const BACKLOG_RECORDS: i64 = 10_000;

/// Logs the catch-up rate while a backlog of more than [`BACKLOG_RECORDS`]
/// records is being read, every 5 s at most.
struct Backlog {
    since: Instant,
    records: u64,
}

impl Backlog {
    fn new(counters: &Counters) -> Self {
        Backlog {
            since: Instant::now(),
            records: counters.records_in.load(Ordering::Relaxed),
        }
    }

    fn note(&mut self, query: &str, counters: &Counters, lag: Option<i64>) {
        let lag = lag.unwrap_or(0);
        let records = counters.records_in.load(Ordering::Relaxed);
        let secs = self.since.elapsed().as_secs_f64();
        if lag > BACKLOG_RECORDS && secs >= 5.0 {
            tracing::info!(
                query = %query,
                records_per_sec = ((records - self.records) as f64 / secs).round(),
                lag,
                "catching up on a backlog"
            );
        } else if lag > BACKLOG_RECORDS {
            return;
        }
        *self = Backlog {
            since: Instant::now(),
            records,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::{Statement, parse_sql};
    use datafusion::arrow::array::{ArrayRef, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::arrow::record_batch::RecordBatch;

    fn failure(status: QueryStatus) -> String {
        match status {
            QueryStatus::Failed(m) => m,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn a_query_ends_stopped_or_failed_naming_it() {
        assert_eq!(outcome("quiet", || Ok(())), QueryStatus::Stopped);
        let m = failure(outcome("strict", || {
            Err(Error::Execution("state limit exceeded".into()))
        }));
        assert!(
            m.starts_with("query strict: ") && m.contains("state limit"),
            "{m}"
        );
        let m = failure(outcome("buggy", || panic!("index out of bounds")));
        assert!(
            m.starts_with("query buggy: ") && m.contains("internal error: index out of bounds"),
            "{m}"
        );
    }

    /// A panic inside an operator of a plan fails the query with a status
    /// naming the query and the plan.
    #[test]
    fn a_panic_inside_a_plan_fails_the_query_naming_it() {
        let stmts = parse_sql(
            "CREATE STREAM clicks (ts TIMESTAMP, page TEXT) WITH (kafka_topic = 'c', event_time = 'ts');
             SELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 10s",
        )
        .unwrap();
        let (Statement::CreateStream(stream), Statement::Select(select)) =
            (&stmts[0].stmt, &stmts[1].stmt)
        else {
            panic!("a stream and a select")
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let plan = rt.block_on(ContinuousPlan::build(stream, select)).unwrap();
        // A partial state whose count is text: the count's merge panics on it.
        let mut fields: Vec<Field> = plan
            .state_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let count = fields.pop().unwrap();
        fields.push(Field::new(count.name(), DataType::Utf8, true));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampMillisecondArray::from(vec![0])),
            Arc::new(TimestampMillisecondArray::from(vec![10_000])),
            Arc::new(StringArray::from(vec!["a"])),
            Arc::new(StringArray::from(vec!["one"])),
        ];
        let state = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        let m = failure(outcome("clicks_by_page", || {
            rt.block_on(plan.close(vec![state])).map(drop)
        }));
        assert!(
            m.starts_with("query clicks_by_page: ")
                && m.contains("internal error in the window-close plan"),
            "{m}"
        );
    }
}
