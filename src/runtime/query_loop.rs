//! The one query loop: poll → decode → engine → commit → publish, from the
//! last commit until the query is stopped or fails, and what it does when
//! the store stops answering (pause, wait, start again from the last
//! commit). Its parts live beside it: the coordinator ([`super::coordinator`])
//! does what differs between one server and a cluster member; the engine
//! ([`crate::window`]) owns the windows; the store commits.
//!
//! ```text
//! spawn ─ run ─┬─ run_from_store ── loop { poll, process, commit?, publish }
//!              └─ store unavailable: wait_for_store, then run_from_store again
//! ```

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Coordinator, QueryTask, now_ms};
use crate::error::{Error, Result};
use crate::model::{Counters, Emission, QueryStatus, WindowKind};
use crate::source::Progress;
use crate::window::{PartitionBatch, SavedCounters, WindowEngine};

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
        let mut engine = WindowEngine::new(
            self.plan.clone(),
            self.stream.event_time_index(),
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
    use crate::plan::ContinuousPlan;
    use crate::sql::{Statement, parse_sql};
    use datafusion::arrow::array::{ArrayRef, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use std::sync::Arc;

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
