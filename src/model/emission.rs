//! What a query emits: the rows of windows that closed (or of a cumulative
//! table), the unit that the store, the sinks and the HTTP layer pass on.

use datafusion::arrow::record_batch::RecordBatch;

/// Rows produced when windows close (or a cumulative table is emitted).
#[derive(Debug, Clone)]
pub struct Emission {
    /// Output rows; columns 0 and 1 are `window_start` and `window_end`.
    pub batch: RecordBatch,
    /// The whole cumulative table: replaces all earlier rows.
    pub cumulative: bool,
    /// The window's partial states, kept for roll-ups (see
    /// `WindowEngine::keep_window_states` in the engine).
    pub state: Option<RecordBatch>,
}
