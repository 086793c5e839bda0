//! The batch plan's running executions, one per window that took records
//! not yet settled. A window's groups leave its run once, when something
//! needs that window's states: it closes or finishes ahead, a commit, an
//! emit tick, or [`LIVE_ROWS`] records taken. One run for every window
//! would hand out the next window's groups each time an earlier window is
//! settled, and merge them again later.
//!
//! ```text
//! poll 1: records of w1            → run(w1)
//! poll 2: records of w1 and w2     → run(w1), run(w2)   (the batch split by window)
//! w1 finishes ahead                → run(w1) settles; run(w2) keeps running
//! ```

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::TimestampMillisecondType;
use datafusion::arrow::record_batch::RecordBatch;

use super::split_on;
use crate::error::Result;
use crate::plan::{ContinuousPlan, PartialRun};

/// Records the running batch plans take before their states are settled
/// into the windows anyway; until then each counts as a state row.
pub const LIVE_ROWS: usize = 1 << 20;

/// The running batch plans, by the (end, start) window whose records each
/// takes.
#[derive(Debug, Default)]
pub(super) struct Running {
    runs: BTreeMap<(i64, i64), Run>,
    rows: usize,
}

#[derive(Debug)]
struct Run {
    run: PartialRun,
    rows: usize,
}

impl Running {
    /// Feeds window-assigned records (their window's start and end are
    /// the last two columns) to the runs of their windows; `windows`, when
    /// known, are the batch's windows in record order. Returns the partial
    /// states the plans let go of on the way.
    pub(super) fn push(
        &mut self,
        plan: &ContinuousPlan,
        batch: RecordBatch,
        windows: Option<&[(i64, i64)]>,
    ) -> Result<Vec<RecordBatch>> {
        // Most batches are one window: a partition's records of one poll
        // rarely span a window's edge.
        let parts = match windows {
            Some([w, rest @ ..]) if rest.iter().all(|r| r == w) => vec![(*w, batch)],
            _ => split_records(&batch)?,
        };
        let mut early = Vec::new();
        for (window, part) in parts {
            let run = match self.runs.entry(window) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(Run {
                    run: plan.open_partial()?,
                    rows: 0,
                }),
            };
            run.rows += part.num_rows();
            self.rows += part.num_rows();
            early.extend(run.run.push(part)?);
        }
        Ok(early)
    }

    /// Takes the runs of the windows ending at or before `end`.
    pub(super) fn take_through(&mut self, end: i64) -> Vec<PartialRun> {
        let later = match end.checked_add(1) {
            Some(next) => self.runs.split_off(&(next, i64::MIN)),
            None => BTreeMap::new(),
        };
        let taken = std::mem::replace(&mut self.runs, later);
        self.rows -= taken.values().map(|r| r.rows).sum::<usize>();
        taken.into_values().map(|r| r.run).collect()
    }

    /// Records taken and not yet settled.
    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    /// The (end, start) windows with a run.
    pub(super) fn windows(&self) -> impl Iterator<Item = &(i64, i64)> {
        self.runs.keys()
    }
}

/// Window-assigned records (their window's start and end are the last
/// two columns) split by their (end, start) window.
fn split_records(b: &RecordBatch) -> Result<Vec<((i64, i64), RecordBatch)>> {
    let n = b.num_columns();
    let col = |i: usize| b.column(i).as_primitive::<TimestampMillisecondType>();
    split_on(b, col(n - 2).values(), col(n - 1).values())
}
