//! Running a continuous query: the one query loop, source → decode →
//! engine → coordinator → store → sinks.
//!
//! Each query runs on a thread of its own ([`QueryTask::spawn`], the loop
//! in `query_loop.rs`; this file holds the task and its helpers). Every
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
mod query_loop;
pub mod shared;
pub mod telemetry;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::model::{Counters, QueryStatus, StreamDef};
use crate::plan::ContinuousPlan;
use crate::sink::exact::ExactSink;
use crate::source::Progress;
use crate::source::stats::StreamStats;
use crate::store::Store;
use crate::window::WindowEngine;
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
}
