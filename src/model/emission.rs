//! What a query emits: the rows of windows that closed, the provisional
//! rows of open windows (`EMIT EVERY`) or a cumulative table; the unit that
//! the store, the sinks and the HTTP layer pass on.

use datafusion::arrow::record_batch::RecordBatch;

/// The column telling a window's final rows from its provisional ones, last
/// in the output of queries that emit early (`EMIT EVERY` with a window).
pub const FINAL: &str = "final";

/// The column counting a window's corrections, last in the output of
/// queries that take late records (`ALLOW LATE`): 0 for the rows written
/// when the window closed, one more each time late records rewrite them.
pub const REVISION: &str = "revision";

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
    /// The one window (start, end) whose rows these are all of, when they
    /// are one window's: they replace its earlier rows even when there are
    /// none (a `HAVING` that now filters out every provisional row).
    pub window: Option<(i64, i64)>,
    /// The provisional rows of every open session (`EMIT EVERY` over
    /// session windows): they replace all earlier provisional rows, since a
    /// session's bounds move while it is open and its rows have no fixed
    /// window to replace.
    pub open_sessions: bool,
}
