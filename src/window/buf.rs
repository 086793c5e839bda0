//! One open window's partial states ([`WindowBuf`]): appended as the
//! batch plan settles them, merged once the recent ones outgrow their last
//! merge, and what the store holds of them ([`Stored`]).

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::Result;
use crate::plan::ContinuousPlan;

/// One open window's partial states (or one session's).
#[derive(Debug, Default)]
pub(super) struct WindowBuf {
    /// The window's partial states: first those the store holds (when
    /// saving incrementally), from `saved` on those added since. One merge
    /// of the recent states serves both the window and the next commit's
    /// delta, so no state is merged twice for their sake.
    pub(super) batches: Vec<RecordBatch>,
    pub(super) rows: usize,
    /// How many of `batches` the store holds; 0 unless saving
    /// incrementally, so then every state counts as recent.
    pub(super) saved: usize,
    /// Rows from `saved` on, and in them when they were last merged.
    pub(super) fresh_rows: usize,
    pub(super) fresh_merged: usize,
    /// The pieces of this window's state the store holds (see
    /// [`delta`](super::delta)).
    pub(super) stored: Stored,
    /// Its rows, finished ahead of its close from `batches` as they are
    /// (see [`WindowEngine::finish_ahead`](super::WindowEngine::finish_ahead)); dropped when `batches` change.
    pub(super) ready: Option<Vec<RecordBatch>>,
    /// Took a state since the last look for windows to finish ahead.
    pub(super) touched: bool,
}

/// What the store holds of one window's state: its pieces, the bytes of
/// the first (the merged state last written whole) and of those appended
/// after it.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Stored {
    pub(super) pieces: usize,
    pub(super) merged: usize,
    pub(super) appended: usize,
}

impl WindowBuf {
    pub(super) fn push(&mut self, b: RecordBatch) {
        self.rows += b.num_rows();
        self.fresh_rows += b.num_rows();
        self.batches.push(b);
        self.ready = None;
        self.touched = true;
    }

    /// The states added since the last save (all of them when not saving
    /// incrementally).
    pub(super) fn fresh(&self) -> &[RecordBatch] {
        &self.batches[self.saved..]
    }

    /// Whether the recent states have outgrown their last merge.
    pub(super) fn needs_compaction(&self) -> bool {
        outgrown(self.fresh().len(), self.fresh_rows, self.fresh_merged)
    }

    /// Counts every state as held by the store.
    pub(super) fn mark_saved(&mut self) {
        self.saved = self.batches.len();
        self.fresh_rows = 0;
        self.fresh_merged = 0;
    }

    /// Merges the recent states into one batch, one row per group, when
    /// there are several.
    pub(super) async fn merge_fresh(&mut self, plan: &ContinuousPlan) -> Result<()> {
        if self.fresh().len() < 2 {
            return Ok(());
        }
        let fresh = self.batches.split_off(self.saved);
        let merged = merge(plan, fresh).await?;
        self.rows = self.rows - self.fresh_rows + merged.num_rows();
        self.fresh_rows = merged.num_rows();
        self.fresh_merged = merged.num_rows();
        self.batches.push(merged);
        Ok(())
    }
}

/// Whether partial states appended since their last merge (`rows` in
/// `batches`, `merged_rows` after that merge) are due to be merged again:
/// growing past twice the merge bounds the work to a few merges per state.
fn outgrown(batches: usize, rows: usize, merged_rows: usize) -> bool {
    batches > 32 || rows > 2 * merged_rows + 16_384
}

/// `batches` of partial states merged into one batch, one row per group.
async fn merge(plan: &ContinuousPlan, batches: Vec<RecordBatch>) -> Result<RecordBatch> {
    let reduced = plan.reduce(batches).await?;
    Ok(concat_batches(&plan.state_schema, &reduced)?)
}

/// Merges all of a window's states into one batch, counted as recent: a
/// caller saving incrementally then saves the window whole.
pub(super) async fn compact(plan: &ContinuousPlan, buf: &mut WindowBuf) -> Result<()> {
    buf.saved = 0;
    buf.fresh_rows = buf.rows;
    buf.merge_fresh(plan).await
}
