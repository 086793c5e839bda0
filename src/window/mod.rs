//! Window assignment, watermarks and per-window partial state.
//!
//! For each decoded batch the engine assigns every record to its windows,
//! drops it from windows that are already closed (judged against the running
//! watermark of its partition, record by record, so batching never changes
//! the outcome), feeds the query's batch plan, which keeps running across
//! polls ([`PartialRun`]), and settles its partial aggregate states into the
//! state of each open window when something needs them: a window to close
//! or finish ahead, a commit, an emit tick, or [`LIVE_ROWS`] records taken
//! ([`WindowEngine::settle`]). When the watermark
//! (the rule is in [`watermark`]) passes a window's end plus its grace, the
//! window's states go through the close plan and its rows are emitted.
//! What a query takes from a read is in `batch.rs`, assignment in
//! `assign.rs`, a window's states in `buf.rs`, late records kept in
//! `late.rs`, closing in `close.rs`, sessions in `session.rs` and saved
//! state in `checkpoint.rs`.
//!
//! ```no_run
//! # async fn f(plan: std::sync::Arc<runnel::plan::ContinuousPlan>,
//! #            batch: datafusion::arrow::record_batch::RecordBatch) -> runnel::error::Result<()> {
//! use runnel::window::WindowEngine;
//! let mut engine = WindowEngine::new(plan, Some(0), 5_000);
//! for emission in engine.process(0, batch, 0).await? {
//!     println!("{} rows", emission.batch.num_rows());
//! }
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{ArrayRef, AsArray, UInt32Array};
use datafusion::arrow::compute::{cast, concat_batches, max, min, take};
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};
use crate::model::WindowKind;
use crate::model::{Counters, Emission};
use crate::plan::{ContinuousPlan, PartialRun};

mod assign;
use assign::Assigned;
mod memo;
pub use memo::{FilterNeed, SharedFilters, WindowMemo};
mod batch;
pub use batch::{Offsets, PartitionBatch};
mod buf;
use buf::{Stored, WindowBuf, compact};
mod checkpoint;
pub use checkpoint::SavedCounters;
mod close;
pub mod delta;
mod late;
pub use late::{LATE_COLUMNS, late_schema};
mod session;
#[cfg(test)]
mod tests;
pub mod watermark;

pub use checkpoint::{states_from_ipc, states_to_ipc};
use session::Sessions;
use watermark::Watermarks;

/// Records of several small batches a session query aggregates together,
/// at most about this many rows at a time (other queries feed each batch
/// to their running batch plan).
const COALESCE_ROWS: usize = 65_536;

/// Records the running batch plan takes before its states are settled into
/// the windows anyway; until then each counts as a state row.
pub const LIVE_ROWS: usize = 1 << 20;

/// The batch plan running across polls and the windows, by (end, start),
/// of the records it took.
#[derive(Debug)]
struct Live {
    run: PartialRun,
    rows: usize,
    windows: BTreeSet<(i64, i64)>,
    /// The run takes the records its filter kept (the plan without it).
    filtered: bool,
}

impl Live {
    fn open(plan: &ContinuousPlan, filtered: bool) -> Result<Live> {
        Ok(Live {
            run: plan.open_partial(filtered)?,
            rows: 0,
            windows: BTreeSet::new(),
            filtered,
        })
    }
}

/// A closed window kept for corrections by late records.
#[derive(Debug, Clone)]
struct Retained {
    /// Its partial states merged to one row per group.
    state: RecordBatch,
    /// The revision of its latest rows (0: written when it closed).
    revision: i64,
}

/// The windowed state machine of one continuous query.
pub struct WindowEngine {
    plan: Arc<ContinuousPlan>,
    event_time: Option<usize>,
    grace: i64,
    /// Open windows by (end, start), so closing walks them in end order.
    windows: BTreeMap<(i64, i64), WindowBuf>,
    /// Open windows, by (end, start), that took records since their last
    /// provisional rows (`EMIT EVERY` queries only).
    changed: BTreeSet<(i64, i64)>,
    /// Closed windows late records may still correct (`ALLOW LATE`), by
    /// (end, start): their merged partial state and latest revision.
    retained: BTreeMap<(i64, i64), Retained>,
    /// A record joined a closed window since the last close: close again
    /// even if the watermark has not moved.
    corrections: bool,
    /// Saves state incrementally ([`WindowEngine::save_incrementally`]).
    incremental: bool,
    /// Changes to the stored state not yet saved (windows closed, kept or
    /// forgotten); `None` when the next save must write everything.
    state_ops: Option<Vec<delta::StateOp>>,
    /// Session windows: each key's sessions and their partial states.
    sessions: Option<Sessions>,
    /// The batch plan's execution taking records not yet settled into
    /// `windows` (never for sessions, which merge per key as records come).
    live: Option<Live>,
    /// Per-partition event-time clocks: the watermark.
    clock: Watermarks,
    /// The watermark windows have been closed up to ([`window_closed`]).
    closed_wm: i64,
    dirty: bool,
    /// Stream columns the batch plan reads.
    read: Vec<usize>,
    /// Keep partial states instead of closing windows (cluster mode: the
    /// states are flushed and windows are finalised across servers).
    partials_only: bool,
    /// Hand each closed window's partial states along with its rows.
    keep_states: bool,
    /// Late records kept, when asked ([`WindowEngine::keep_late_records`]).
    late: Option<late::LateRecords>,
    /// Live counters.
    pub counters: Arc<Counters>,
}

/// When a window is final, the one rule: once the watermark has passed the
/// last event time that could still join it, plus the grace. For tumbling
/// and hopping windows that is `end − 1 ms` (their end is exclusive), so
/// they close when the watermark reaches `end + grace`; a session's end is
/// its last event plus the gap, and a record exactly one gap later still
/// joins it, so it closes only once the watermark is past `end + grace`.
pub fn window_closed(kind: WindowKind, end: i64, grace: i64, watermark: i64) -> bool {
    end <= closed_through(kind, grace, watermark)
}

/// The largest window end that is closed at `watermark` (the rule of
/// [`window_closed`] as a bound, for stores that select closed windows).
pub fn closed_through(kind: WindowKind, grace: i64, watermark: i64) -> i64 {
    let bound = watermark.saturating_sub(grace);
    match kind {
        WindowKind::Session { .. } => bound.saturating_sub(1),
        _ => bound,
    }
}

fn ts_values(a: &ArrayRef) -> Result<Vec<i64>> {
    let c = cast(a, &DataType::Int64)?;
    Ok(c.as_primitive::<Int64Type>().values().to_vec())
}

impl WindowEngine {
    /// An engine for `plan`; `event_time` is the column index of event time
    /// in the stream's batches (arrival time when `None`).
    pub fn new(plan: Arc<ContinuousPlan>, event_time: Option<usize>, delay_ms: i64) -> Self {
        let grace = plan.window.grace_ms;
        let read = plan.stream_columns_read();
        let sessions = match plan.window.kind {
            WindowKind::Session { .. } => Some(Sessions::new(&plan, grace)),
            _ => None,
        };
        WindowEngine {
            read,
            plan,
            event_time,
            grace,
            windows: BTreeMap::new(),
            changed: BTreeSet::new(),
            retained: BTreeMap::new(),
            corrections: false,
            incremental: false,
            state_ops: None,
            sessions,
            live: None,
            clock: Watermarks::new(delay_ms),
            closed_wm: i64::MIN,
            partials_only: false,
            keep_states: false,
            dirty: false,
            late: None,
            counters: Arc::new(Counters::default()),
        }
    }

    /// The plan this engine runs.
    pub fn plan(&self) -> &Arc<ContinuousPlan> {
        &self.plan
    }

    /// Never closes windows: their partial states are taken with
    /// [`drain_states`](Self::drain_states) and finished elsewhere. Lateness
    /// still follows each partition's running watermark.
    pub fn keep_partials_only(&mut self) {
        self.partials_only = true;
    }

    /// Hands each closed tumbling or hopping window's partial states along
    /// with its rows ([`Emission::state`]), so coarser windows can be merged
    /// from them later.
    pub fn keep_window_states(&mut self) {
        self.keep_states = true;
    }

    /// Forgets every open window and restarts from `partition_max`, the
    /// highest event time read per partition (`i64::MIN` when none yet).
    pub fn reset(&mut self, partition_max: BTreeMap<i32, i64>) {
        self.live = None;
        self.windows.clear();
        self.changed.clear();
        self.retained.clear();
        self.state_ops = None;
        if let Some(s) = &mut self.sessions {
            *s = Sessions::new(&self.plan, self.grace);
        }
        self.clock.reset(partition_max);
        self.closed_wm = i64::MIN;
    }

    /// Treats windows closed by watermark `wm` ([`window_closed`]) as
    /// closed: their records are dropped as late from now on.
    pub fn close_before(&mut self, wm: i64) {
        self.closed_wm = self.closed_wm.max(wm);
    }

    /// The per-partition event-time clocks the watermark comes from.
    pub fn clock(&self) -> &Watermarks {
        &self.clock
    }

    /// The clocks, for telling them which partitions are quiet and caught up.
    pub fn clock_mut(&mut self) -> &mut Watermarks {
        &mut self.clock
    }

    /// Takes every open window's partial state, merged to one row per group,
    /// as (start, end, state); the engine is left with no open window.
    pub async fn drain_states(&mut self) -> Result<Vec<(i64, i64, RecordBatch)>> {
        self.settle().await?;
        let mut out = Vec::new();
        for ((end, start), mut buf) in std::mem::take(&mut self.windows) {
            if buf.batches.len() > 1 {
                compact(&self.plan, &mut buf).await?;
            }
            if let Some(b) = buf.batches.pop() {
                out.push((start, end, b));
            }
        }
        self.dirty = false;
        Ok(out)
    }

    /// Current watermark, by the rule in [`watermark`].
    pub fn watermark(&self) -> Option<i64> {
        self.clock.current()
    }

    /// Declares the partitions the source reads: until each has delivered a
    /// record (or is idle), the watermark does not advance, so a backlog
    /// read one partition at a time is not judged late.
    pub fn register_partitions(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.clock.register(*p);
        }
    }

    /// Partial-state rows held across all open windows (about groups ×
    /// windows), each record the running batch plan took counted as one.
    pub fn state_rows(&self) -> usize {
        self.windows.values().map(|w| w.rows).sum::<usize>()
            + self.sessions.as_ref().map_or(0, Sessions::rows)
            + self.live.as_ref().map_or(0, |l| l.rows)
    }

    /// Bytes of partial state held in memory by the open windows (and the
    /// closed ones kept for corrections), once settled.
    pub fn state_bytes(&self) -> usize {
        let sessions = self.sessions.iter().flat_map(Sessions::batches);
        let retained = self.retained.values().map(|r| &r.state);
        self.windows
            .values()
            .flat_map(|w| &w.batches)
            .chain(sessions)
            .chain(retained)
            .map(|b| b.get_array_memory_size())
            .sum()
    }

    /// Merges each open window's partial states into one row per group.
    pub async fn compact_all(&mut self) -> Result<()> {
        self.settle().await?;
        for buf in self.windows.values_mut() {
            if buf.batches.len() > 1 {
                compact(&self.plan, buf).await?;
                // What the store holds is merged in too: save it whole.
                if self.incremental {
                    self.state_ops = None;
                }
            }
        }
        if let Some(s) = &mut self.sessions {
            s.compact_all(&self.plan).await?;
        }
        Ok(())
    }

    /// Number of windows holding state.
    pub fn open_windows(&self) -> usize {
        let live = self.live.iter().flat_map(|l| &l.windows);
        let unsettled = live.filter(|k| !self.windows.contains_key(k)).count();
        self.windows.len() + unsettled + self.sessions.as_ref().map_or(0, Sessions::open)
    }

    /// Processes one batch of records from `partition`, in partition order.
    /// `arrival_ms` is the event time used when the stream has none.
    pub async fn process(
        &mut self,
        partition: i32,
        batch: RecordBatch,
        arrival_ms: i64,
    ) -> Result<Vec<Emission>> {
        self.process_polled(vec![PartitionBatch::new(partition, batch)], arrival_ms)
            .await
    }

    /// Processes one poll's batches, each of one partition and in that
    /// partition's order, then closes what the watermark has passed.
    ///
    /// Every batch's records are assigned to windows before any is
    /// aggregated; sessions aggregate small batches (many partitions, few
    /// records each) together, as an execution of the batch plan costs
    /// about the same for 500 records as for 50 000. Results equal those of calling
    /// [`process`](Self::process) per batch: the watermark is the minimum
    /// over partitions, so no window that closes at the end of the poll
    /// could have taken a later batch's records anyway.
    pub async fn process_polled(
        &mut self,
        batches: Vec<PartitionBatch>,
        arrival_ms: i64,
    ) -> Result<Vec<Emission>> {
        let mut pending: Vec<Assigned> = Vec::new();
        let mut rows = 0;
        for b in batches {
            let keys = match &self.sessions {
                Some(s) => {
                    let indexed = session::with_record_index(&self.plan.input_schema, &b.batch)?;
                    let out = self.plan.group_keys(indexed).await?;
                    Some(session::keys_by_record(s, &self.plan, &out)?)
                }
                None => None,
            };
            let assigned = self.assign(&b, keys.as_deref(), arrival_ms)?;
            let Some(expanded) = assigned else {
                continue;
            };
            rows += expanded.batch.num_rows();
            pending.push(expanded);
            if rows >= COALESCE_ROWS {
                self.aggregate(std::mem::take(&mut pending)).await?;
                rows = 0;
            }
        }
        self.aggregate(pending).await?;
        if self.live.as_ref().is_some_and(|l| l.rows >= LIVE_ROWS) {
            self.settle().await?;
        }
        let closed = self.close_ready().await?;
        self.finish_ahead().await?;
        Ok(closed)
    }

    /// Closes every window the current watermark has passed (after the
    /// clocks were told of quiet partitions, say).
    pub async fn close_ready(&mut self) -> Result<Vec<Emission>> {
        let Some(w) = self.watermark() else {
            return Ok(vec![]);
        };
        self.counters.watermark.store(w, Ordering::Relaxed);
        if self.partials_only {
            return Ok(vec![]);
        }
        self.close_until(w).await
    }

    /// Feeds window-assigned batches to the batch plan: to the running one,
    /// or for sessions to an execution of their own, as one batch.
    async fn aggregate(&mut self, expanded: Vec<Assigned>) -> Result<()> {
        if self.sessions.is_some() {
            let mut batches: Vec<RecordBatch> = expanded.into_iter().map(|a| a.batch).collect();
            let batch = match batches.len() {
                0 => return Ok(()),
                1 => batches.pop().expect("one batch"),
                _ => concat_batches(&self.plan.input_schema, &batches)?,
            };
            let states = self.plan.partial(batch).await?;
            return self.add_states(states).await;
        }
        for Assigned {
            batch,
            spans,
            filtered,
        } in expanded
        {
            // The read's queries began sharing the filter: the run with the
            // filter settles, and one without it takes the records kept.
            if filtered && self.live.as_ref().is_some_and(|l| !l.filtered) {
                self.settle().await?;
            }
            let live = match &mut self.live {
                Some(live) => live,
                None => self.live.insert(Live::open(&self.plan, filtered)?),
            };
            // Others to a run without the filter are filtered here.
            let batch = match (live.filtered, filtered) {
                (true, false) => self.plan.keep(batch)?,
                _ => batch,
            };
            live.rows += batch.num_rows();
            match spans {
                Some(spans) => live.windows.extend(&spans.windows),
                None => note_windows(&batch, &mut live.windows),
            }
            let early = live.run.push(batch)?;
            self.add_states(early).await?;
        }
        Ok(())
    }

    /// Settles the partial states of every record the running batch plan
    /// took into the open windows.
    pub async fn settle(&mut self) -> Result<()> {
        if let Some(live) = self.live.take() {
            let states = live.run.finish().await?;
            self.add_states(states).await?;
        }
        Ok(())
    }

    /// Whether the running batch plan holds records of a window ending at
    /// or before `end`: it must settle before such a window is finished.
    fn live_reaches(&self, end: i64) -> bool {
        let first = self.live.as_ref().and_then(|l| l.windows.first());
        first.is_some_and(|&(e, _)| e <= end)
    }

    /// The latest window start among records the batch plan took, settled
    /// or not.
    fn newest_start(&self) -> Option<i64> {
        let settled = self.windows.keys().map(|&(_, start)| start).max();
        let live = self.live.iter().flat_map(|l| &l.windows);
        settled.max(live.map(|&(_, start)| start).max())
    }

    async fn add_states(&mut self, states: Vec<RecordBatch>) -> Result<()> {
        if let Some(sessions) = &mut self.sessions {
            for s in states {
                sessions.push(&self.plan, s).await?;
            }
            return Ok(());
        }
        self.dirty = true;
        // A window's parts of one output of the batch plan go in as one
        // state: the output holds each group once, so merging the parts
        // would find nothing to merge.
        let Some(first) = states.first() else {
            return Ok(());
        };
        let output = concat_batches(&first.schema(), &states)?;
        let mut touched = Vec::new();
        for (key, state) in split_by_window(&output)? {
            self.windows.entry(key).or_default().push(state);
            touched.push(key);
        }
        if self.plan.early_ms.is_some() {
            self.changed.extend(touched.iter().copied());
        }
        for key in touched {
            let Some(buf) = self.windows.get_mut(&key) else {
                continue;
            };
            if buf.needs_compaction() {
                buf.merge_fresh(&self.plan).await?;
            }
        }
        Ok(())
    }
}

fn take_rows(b: &RecordBatch, idx: Vec<u32>) -> Result<RecordBatch> {
    let indices = UInt32Array::from(idx);
    let cols = b
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &indices, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(b.schema(), cols)?)
}

/// Adds the (end, start) windows of window-assigned records (their last
/// two columns) to `windows`. A window's end names it (its start follows
/// from the window spec), so a batch whose ends are all one — most are: a
/// partition's records of one poll rarely span a window's edge — is one
/// window.
fn note_windows(b: &RecordBatch, windows: &mut BTreeSet<(i64, i64)>) {
    let n = b.num_columns();
    let col = |i: usize| b.column(i).as_primitive::<TimestampMillisecondType>();
    let (ends, starts) = (col(n - 1), col(n - 2));
    let (Some(lo), Some(hi)) = (min(ends), max(ends)) else {
        return;
    };
    if lo == hi {
        windows.insert((lo, starts.value(0)));
        return;
    }
    let mut last = None;
    for key in ends
        .values()
        .iter()
        .copied()
        .zip(starts.values().iter().copied())
    {
        if last != Some(key) {
            windows.insert(key);
            last = Some(key);
        }
    }
}

/// Splits partial states (or rows: window columns first) by their (end,
/// start) window.
pub(crate) fn split_by_window(b: &RecordBatch) -> Result<Vec<((i64, i64), RecordBatch)>> {
    let starts = b
        .column(0)
        .as_primitive::<TimestampMillisecondType>()
        .values();
    let ends = b
        .column(1)
        .as_primitive::<TimestampMillisecondType>()
        .values();
    if starts.is_empty() {
        return Ok(vec![]);
    }
    if starts.iter().all(|s| *s == starts[0]) {
        return Ok(vec![((ends[0], starts[0]), b.clone())]);
    }
    let mut groups: HashMap<(i64, i64), Vec<u32>> = HashMap::new();
    for i in 0..starts.len() {
        groups
            .entry((ends[i], starts[i]))
            .or_default()
            .push(i as u32);
    }
    groups
        .into_iter()
        .map(|(k, idx)| Ok((k, take_rows(b, idx)?)))
        .collect()
}
