//! Cluster mode: several `runnel serve` processes started with the same
//! `--cluster NAME` and the same PostgreSQL store form one service.
//!
//! Runnel adds no cluster protocol of its own. Kafka's consumer-group
//! protocol decides which server reads which partitions (one group per
//! stream, `runnel.NAME.stream.STREAM`, so every query over a stream on a
//! server reads the same share with one shared read: [`group`]), and
//! PostgreSQL holds everything shared:
//!
//! * each partition's owner, next offset and highest event time
//!   (`runnel_partition_progress`);
//! * the partial aggregate states each server has read since its last flush,
//!   per window (`runnel_window_partials`), written in the same transaction
//!   as the offsets they cover;
//! * each final window's merged state (`runnel_window_states`) and rows.
//!
//! The statements on those tables are `pg.rs`'s.
//!
//! A server reads its partitions, folds records into per-window partial
//! states and flushes them every checkpoint interval. A window is final once
//! every partition's watermark (its highest event time minus the stream's
//! delay; idle partitions aside, and a partition counts as idle only while
//! its stored offset has reached the log end the brokers report) has
//! passed the window's end plus grace; any
//! server may then merge its partials, run the close plan and write the rows,
//! in one transaction under a per-query lock.
//!
//! Exactly once: a server's unflushed records are never written, so when a
//! rebalance moves a partition, or a server dies, the new owner re-reads them
//! from the last flushed offset. Claiming a partition records the new owner,
//! and a flush from anyone else is refused, so a server that lost a
//! partition without noticing cannot write it twice.
//!
//! `INTO TOPIC`: the member reading partition 0 publishes the rows every
//! member wrote, from the store, exactly once (see [`crate::sink`]).
//!
//! Only mergeable aggregates are allowed: sums, counts, averages, min/max,
//! HyperLogLog++ sketches (`approx_distinct`), t-digests
//! (`approx_percentile_cont`, `approx_median`). [`check_mergeable`] refuses
//! the others, naming the approximate alternative:
//!
//! ```
//! use runnel::cluster::check_mergeable_sql;
//! assert!(check_mergeable_sql("SELECT geo, approx_distinct(cookie) FROM imps GROUP BY geo").is_ok());
//! let err = check_mergeable_sql("SELECT geo, count(DISTINCT cookie) FROM imps GROUP BY geo").unwrap_err();
//! assert!(err.to_string().contains("approx_distinct"));
//! ```

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::sql::sqlparser::ast::{
    DuplicateTreatment, Expr, FunctionArguments, visit_expressions,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::error::{Error, Result};
use crate::model::{Emission, QueryStatus, SelectSql, SourceKind, WindowKind};
use crate::plan::ContinuousPlan;
use crate::runtime::decode::Decoded;
use crate::runtime::local::Input;
use crate::runtime::shared::POLL_WAIT;
use crate::runtime::{Coordinator, QueryTask, now_ms};
use crate::sink::exact::ExactSink;
use crate::source::Source;
use crate::source::kafka::KafkaSource;
use crate::window::{WindowEngine, split_by_window, states_from_ipc, states_to_ipc};
use group::{Group, Groups};
use pg::{FinalWindow, PartitionFlush, Shared};

pub mod group;
mod pg;

/// Aggregates whose partial states cannot be merged across servers (or grow
/// with every value), with what to use instead.
const NOT_MERGEABLE: &[(&str, &str)] = &[
    ("median", "approx_median"),
    ("percentile_cont", "approx_percentile_cont"),
    ("quantile_cont", "approx_percentile_cont"),
    (
        "array_agg",
        "an aggregate of the values instead of the values themselves",
    ),
    (
        "string_agg",
        "an aggregate of the values instead of the values themselves",
    ),
    ("first_value", "min or max"),
    ("last_value", "min or max"),
    ("nth_value", "min or max"),
];

/// Refuses a query whose aggregates cannot be merged across servers.
pub fn check_mergeable_sql(sql: &str) -> Result<()> {
    let stmts = Parser::parse_sql(&GenericDialect {}, sql).map_err(crate::error::parser_error)?;
    let mut refused: Option<String> = None;
    let _ = visit_expressions(&stmts, |e| {
        if let Expr::Function(f) = e {
            let name = f.name.to_string().to_ascii_lowercase();
            let distinct = matches!(
                &f.args,
                FunctionArguments::List(l) if l.duplicate_treatment == Some(DuplicateTreatment::Distinct)
            );
            if distinct {
                let alt = if name == "count" {
                    "approx_distinct(x)"
                } else {
                    "the aggregate without DISTINCT"
                };
                refused = Some(format!(
                    "{name}(DISTINCT ...) keeps every distinct value and cannot be merged across servers in cluster mode; use {alt}"
                ));
                return ControlFlow::Break(());
            }
            if let Some((_, alt)) = NOT_MERGEABLE.iter().find(|(n, _)| *n == name) {
                refused = Some(format!(
                    "{name} cannot be merged across servers in cluster mode; use {alt}"
                ));
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    match refused {
        Some(m) => Err(Error::sql(m, None)),
        None => Ok(()),
    }
}

/// Refuses a continuous query cluster mode cannot run.
pub fn check_mergeable(select: &SelectSql, plan: &ContinuousPlan) -> Result<()> {
    match plan.window.kind {
        WindowKind::Session { .. } => {
            return Err(Error::sql(
                "session windows span partitions' records and are not supported in cluster mode; use a tumbling or hopping window",
                None,
            ));
        }
        WindowKind::Cumulative { .. } => {
            return Err(Error::sql(
                "queries without a WINDOW are not supported in cluster mode; add WINDOW <size>",
                None,
            ));
        }
        _ => {}
    }
    check_mergeable_sql(&select.sql)
}

/// A token naming one server's claim on partitions.
fn owner_token(query: &str) -> String {
    format!(
        "{query}@{}:{}:{:x}",
        std::process::id(),
        now_ms(),
        rand::random::<u32>()
    )
}

/// How long the brokers may take to tell one partition's log end before
/// windows are finalised (without all of them no partition counts as idle).
const LOG_END_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a member whose flush was refused waits before it claims its
/// share again: another server's claim may have come from a share the group
/// had already taken from it (it then gives the partitions up at its next
/// flush); if not, the group reassigns meanwhile.
const RECLAIM_AFTER: Duration = Duration::from_secs(2);

/// One server running its share of a query as a member of a cluster.
pub struct Member {
    cluster: String,
    groups: Arc<Groups>,
    owner: String,
    pg: Option<Shared>,
    /// This server's membership of the stream's group: its share of the
    /// partitions.
    group: Option<Arc<Group>>,
    /// The number of the share adopted (`None`: none yet).
    generation: Option<u64>,
    /// The partitions of that share, claimed for this query.
    partitions: Vec<i32>,
    /// Reads them (none while fenced or given no partition).
    input: Option<Input>,
    sink: Option<ExactSink>,
    /// A commit ran since the last publishing turn.
    committed: bool,
    /// When a flush was refused: nothing is read until the group gives a
    /// new share or [`RECLAIM_AFTER`] has passed.
    fenced: Option<Instant>,
}

impl Member {
    /// A member of cluster `cluster`, joining the server's `groups`.
    pub fn new(cluster: &str, groups: Arc<Groups>) -> Self {
        Member {
            cluster: cluster.to_string(),
            groups,
            owner: String::new(),
            pg: None,
            group: None,
            generation: None,
            partitions: Vec::new(),
            input: None,
            sink: None,
            committed: false,
            fenced: None,
        }
    }

    /// Adopts a new share of the partitions: claims them for this query,
    /// restarts the engine from where they were flushed and reads them
    /// from there. What the engine held was read under the old share and
    /// is read again from the flushed offsets by whoever has it now.
    fn adopt(
        &mut self,
        task: &QueryTask,
        engine: &mut WindowEngine,
        generation: u64,
        partitions: Vec<i32>,
    ) -> Result<()> {
        self.input = None;
        self.generation = Some(generation);
        let pg = self.pg.as_ref().expect("started");
        let claimed = pg.claim_partitions(&task.name, &self.owner, &partitions)?;
        engine.reset(
            partitions
                .iter()
                .map(|p| {
                    let max = claimed.get(p).and_then(|x| x.max_event_time);
                    (*p, max.unwrap_or(i64::MIN))
                })
                .collect(),
        );
        self.fenced = None;
        tracing::info!(query = %task.name, ?partitions, "assigned");
        self.partitions = partitions;
        if self.partitions.is_empty() {
            return Ok(());
        }
        let saved = claimed
            .iter()
            .filter_map(|(p, x)| x.next_offset.map(|o| (*p, o)))
            .collect();
        let (topic, client, start) = (&task.stream.topic, task.client_id(), task.start_from());
        let share = &self.partitions;
        let connect = || {
            task.connect(|waiting| {
                let kafka = &task.kafka;
                let mut src = KafkaSource::connect_partitions(
                    kafka, topic, &client, start, share, &saved, waiting,
                )?;
                src.set_on_offset_loss(task.stream.on_offset_loss);
                Ok(Source::Kafka(src))
            })
        };
        self.input = Input::kafka(task, &saved, Some(share.clone()), connect)?;
        Ok(())
    }
}

impl Coordinator for Member {
    fn start(&mut self, task: &QueryTask, engine: &mut WindowEngine) -> Result<bool> {
        if task.stream.source != SourceKind::Kafka {
            return Err(Error::BadRequest(format!(
                "stream {} is not read from Kafka: cluster mode shares a topic's partitions between servers",
                task.stream.name
            )));
        }
        self.pg = Some(Shared::new(task.store.postgres()?.clone()));
        engine.keep_partials_only();
        self.fenced = None;
        self.generation = None;
        self.owner = owner_token(&task.name);
        let Some(group) = self.groups.join(&self.cluster, task)? else {
            return Ok(false);
        };
        self.group = Some(group);
        self.sink = task.exact_sink();
        Ok(true)
    }

    fn poll(
        &mut self,
        task: &QueryTask,
        engine: &mut WindowEngine,
    ) -> Result<Option<(Vec<Decoded>, crate::source::Progress)>> {
        if self.fenced.is_some_and(|at| at.elapsed() >= RECLAIM_AFTER) {
            self.generation = None;
        }
        let group = self.group.as_ref().expect("started");
        if let Some((generation, partitions)) = group.assignment_after(self.generation) {
            self.adopt(task, engine, generation, partitions)?;
        }
        let Some(input) = &mut self.input else {
            // Given no partition, or fenced: wait for the group.
            std::thread::sleep(POLL_WAIT);
            return Ok(None);
        };
        let decoded = input.poll()?;
        Ok(Some((decoded, input.progress())))
    }

    fn commits_only_records(&self) -> bool {
        false
    }

    /// Flushes this server's partial states with the offsets they cover,
    /// then finishes every window all partitions are past.
    fn commit(
        &mut self,
        task: &QueryTask,
        rt: &tokio::runtime::Runtime,
        engine: &mut WindowEngine,
        _emitted: Vec<Emission>,
    ) -> Result<Vec<Emission>> {
        let pg = self.pg.clone().expect("started");
        if let Some(input) = &self.input {
            let seen = input.progress();
            let offsets = input.offsets();
            // A partition nothing was read from yet, confirmed caught up, is
            // at its log end: stored so, its idle mark holds until the log
            // grows (and a new owner starts there).
            let caught_up_at = |p: i32| {
                seen.is_caught_up(p)
                    .then(|| seen.log_ends.get(&p).copied())
                    .flatten()
            };
            let progress: Vec<PartitionFlush> = (self.partitions.iter())
                .map(|p| PartitionFlush {
                    partition: *p,
                    next_offset: offsets.get(p).copied().or_else(|| caught_up_at(*p)),
                    mark: engine.clock().mark(*p),
                })
                .collect();
            let mut partials = Vec::new();
            for (start, end, state) in rt.block_on(engine.drain_states())? {
                partials.push((
                    start,
                    end,
                    states_to_ipc(&task.plan.state_schema, &[state])?,
                ));
            }
            if !pg.flush_partials(&task.name, &self.owner, &progress, partials)? {
                tracing::warn!(query = %task.name, "another server owns some of these partitions now; waiting for the group to reassign");
                engine.reset(BTreeMap::new());
                self.fenced = Some(Instant::now());
                self.input = None;
            }
        }
        let group = self.group.as_ref().expect("started");
        let log_ends = group.topic_log_ends(LOG_END_TIMEOUT).unwrap_or_default();
        let (closed_wm, written) = finalize(rt, &pg, task, group.topic_partitions(), &log_ends)?;
        // Records of windows already final are late here too.
        engine.close_before(closed_wm);
        self.committed = true;
        Ok(written)
    }

    /// The member reading partition 0 publishes what every member wrote
    /// (see [`crate::sink`]); the others let go of their producers.
    fn publish(&mut self, task: &QueryTask, _written: &[Emission]) -> Result<()> {
        let committed = std::mem::take(&mut self.committed);
        let Some(sink) = &mut self.sink else {
            return Ok(());
        };
        let leads = self.input.is_some() && self.partitions.contains(&0);
        if !leads {
            sink.release();
            let mut status = task.status.lock().unwrap_or_else(|p| p.into_inner());
            if matches!(*status, QueryStatus::SinkWaiting(_)) {
                task.change_status(&mut status, QueryStatus::Running);
            }
            return Ok(());
        }
        if committed {
            sink.mark_pending();
        }
        task.drive_sink(sink)
    }

    fn offsets(&self) -> BTreeMap<i32, i64> {
        (self.input.as_ref())
            .map(|s| s.offsets().clone())
            .unwrap_or_default()
    }

    /// Lets go of the group (left at once when no other query over the
    /// stream holds it, as when the store is down for every query), so
    /// the others take this server's partitions while it waits.
    fn pause(&mut self) {
        self.input = None;
        self.group = None;
        self.generation = None;
        self.sink = None;
    }

    /// Cluster mode keeps no checkpoint of the counters: they go on.
    fn restores_counters(&self) -> bool {
        false
    }
}

/// Finishes every window all partitions are past; returns the watermark
/// windows were final up to before, and the rows this server wrote.
fn finalize(
    rt: &tokio::runtime::Runtime,
    pg: &Shared,
    task: &QueryTask,
    partitions: usize,
    log_ends: &BTreeMap<i32, i64>,
) -> Result<(i64, Vec<Emission>)> {
    let plan = &task.plan;
    let found = pg.final_windows(
        &task.name,
        partitions,
        log_ends,
        task.stream.watermark_delay_ms,
        plan.window,
    )?;
    let c = &task.counters;
    // Partial states of finished windows: their records came too late.
    c.late_records.fetch_add(found.late, Ordering::Relaxed);
    let keep_state = !task.state_retention.is_zero();
    let out = close_windows(rt, plan, &found.windows, keep_state)?;
    // All of them in one transaction: a round trip per window was most of
    // what a cluster query's commits cost.
    if !pg.finish_windows(&task.name, &found.windows, plan.window.grace_ms, &out)? {
        return Ok((found.closed_wm, Vec::new()));
    }
    if let Some(last) = found.windows.last() {
        c.windows_closed
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        c.last_window_end.store(last.end, Ordering::Relaxed);
        let rows: usize = out.iter().map(|e| e.batch.num_rows()).sum();
        c.rows_emitted.fetch_add(rows as u64, Ordering::Relaxed);
    }
    Ok((found.closed_wm, out))
}

/// Merges final windows' partial states and runs the close plan: per
/// window its emission, its rows (possibly none) with its merged state when
/// `keep_state` (roll-ups keep window states), as a single server's window
/// close gives it. When the close plan finishes each group on its own, all
/// the windows go through one run of the reduce and close plans (a run per
/// window was most of what finishing small windows cost); otherwise each
/// window through a run of its own.
fn close_windows(
    rt: &tokio::runtime::Runtime,
    plan: &ContinuousPlan,
    windows: &[FinalWindow],
    keep_state: bool,
) -> Result<Vec<Emission>> {
    if plan.closes_windows_apart() {
        return close_together(rt, plan, windows, keep_state);
    }
    let mut out = Vec::with_capacity(windows.len());
    for w in windows.chunks(1) {
        out.extend(close_together(rt, plan, w, keep_state)?);
    }
    Ok(out)
}

/// [`close_windows`] in one run of the plans, rows and states split back
/// by window.
fn close_together(
    rt: &tokio::runtime::Runtime,
    plan: &ContinuousPlan,
    windows: &[FinalWindow],
    keep_state: bool,
) -> Result<Vec<Emission>> {
    let mut states = Vec::new();
    for s in windows.iter().flat_map(|w| &w.states) {
        states.extend(states_from_ipc(&plan.state_schema, s)?);
    }
    let merged = rt.block_on(plan.reduce(states))?;
    let rows = rt.block_on(plan.close(merged.clone()))?;
    let mut rows = by_window(concat_batches(&plan.output_schema, &rows)?)?;
    let mut merged = match keep_state {
        true => by_window(concat_batches(&plan.state_schema, &merged)?)?,
        false => Default::default(),
    };
    Ok(windows
        .iter()
        .map(|w| {
            let key = (w.end, w.start);
            Emission {
                batch: (rows.remove(&key))
                    .unwrap_or_else(|| RecordBatch::new_empty(plan.output_schema.clone())),
                cumulative: false,
                state: merged.remove(&key),
                window: Some((w.start, w.end)),
                open_sessions: false,
            }
        })
        .collect())
}

/// A batch's rows (or states) by their (end, start) window.
fn by_window(b: RecordBatch) -> Result<HashMap<(i64, i64), RecordBatch>> {
    Ok(split_by_window(&b)?.into_iter().collect())
}
