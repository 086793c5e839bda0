//! The batch plan kept running across polls.
//!
//! Run once per poll, the batch plan's partial aggregate builds a hash
//! table of the poll's groups, emits it and drops it: a query with 20 000
//! groups a window, reading 50 000 records a poll, hands its windows about
//! 20 000 partial states per poll, and merges them all again later. A
//! [`PartialRun`] is one execution of the batch plan fed poll after poll
//! through a channel ([`bind_live`]): its hash table lives until
//! [`PartialRun::finish`], so a group seen in every poll until then leaves
//! one state, not one per poll. The operators are DataFusion's own; only
//! their input arrives in pieces.
//!
//! ```no_run
//! # async fn f(plan: runnel::plan::ContinuousPlan,
//! #            polls: Vec<datafusion::arrow::record_batch::RecordBatch>) -> runnel::error::Result<()> {
//! // Records the query's filter kept (`true`), or all of them (`false`).
//! let mut run = plan.open_partial(true)?;
//! let mut states = Vec::new();
//! for batch in polls {
//!     let batch = plan.keep(batch)?;
//!     // Mostly nothing: the aggregate lets go of states early only when
//!     // it stops aggregating (too many distinct groups) or runs short of memory.
//!     states.extend(run.push(batch)?);
//! }
//! states.extend(run.finish().await?);
//! # Ok(()) }
//! ```

use std::panic::AssertUnwindSafe;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use futures::channel::mpsc::UnboundedSender;
use futures::{FutureExt, StreamExt, TryStreamExt};

use super::ContinuousPlan;
use super::slot::bind_live;
use crate::error::{Error, Result, panic_message};

/// One execution of a query's batch plan, taking batches until finished.
pub struct PartialRun {
    feed: UnboundedSender<RecordBatch>,
    out: SendableRecordBatchStream,
}

impl std::fmt::Debug for PartialRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PartialRun")
    }
}

fn panicked(p: Box<dyn std::any::Any + Send>) -> Error {
    Error::Execution(format!(
        "internal error in the per-batch plan: {}",
        panic_message(p.as_ref())
    ))
}

impl ContinuousPlan {
    /// Starts an execution of the batch plan fed by [`PartialRun::push`]:
    /// with records the query's [`filter`](Self::filter) kept when
    /// `filtered`, or else with records for its filter to judge.
    pub fn open_partial(&self, filtered: bool) -> Result<PartialRun> {
        let (plan, feed) = bind_live(self.batch_plan(filtered))?;
        let out = plan.execute(0, self.task.clone())?;
        Ok(PartialRun { feed, out })
    }
}

impl PartialRun {
    /// Hands `batch` (of the plan's input schema, filtered as the run was
    /// opened for) to the run and lets the
    /// plan take it in. Returns the partial states the plan let go of on
    /// the way, if any; the rest come at [`finish`](Self::finish).
    pub fn push(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        self.feed
            .unbounded_send(batch)
            .map_err(|_| Error::Execution("the per-batch plan ended early".into()))?;
        let out = &mut self.out;
        // Polled without waiting: the operators take every batch sent so
        // far and stop at the empty channel.
        let poll = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut states = Vec::new();
            while let Some(next) = out.next().now_or_never() {
                match next {
                    Some(b) => states.push(b?),
                    None => break,
                }
            }
            Ok::<_, Error>(states)
        }));
        let states = poll.map_err(panicked)??;
        Ok(states.into_iter().filter(|b| b.num_rows() > 0).collect())
    }

    /// Ends the input and returns the partial states of everything pushed
    /// that [`push`](Self::push) did not return.
    pub async fn finish(self) -> Result<Vec<RecordBatch>> {
        let PartialRun { feed, out } = self;
        drop(feed);
        let states: Vec<RecordBatch> = AssertUnwindSafe(out.try_collect())
            .catch_unwind()
            .await
            .map_err(panicked)??;
        Ok(states.into_iter().filter(|b| b.num_rows() > 0).collect())
    }
}
