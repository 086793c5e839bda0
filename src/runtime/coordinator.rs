//! [`Coordinator`]: what one server and a cluster member do differently
//! when running a query. The single server's is [`super::local::Local`];
//! cluster mode's is `cluster::Member`. Everything else is the one loop of
//! [`super::QueryTask`].

use std::collections::BTreeMap;

use super::QueryTask;
use super::decode::Decoded;
use crate::error::Result;
use crate::model::Emission;
use crate::source::Progress;
use crate::window::WindowEngine;

/// What one server and a cluster member do differently when running a
/// query: who reads which partitions, where progress and partial states
/// are committed, and when a window is final. Everything else is the loop
/// of [`QueryTask`] (see the module doc).
pub trait Coordinator: Send {
    /// Restores what was committed into `engine` and connects to the
    /// stream; `Ok(false)` when the query was stopped while waiting.
    fn start(&mut self, task: &QueryTask, engine: &mut WindowEngine) -> Result<bool>;

    /// The next poll's decoded records and the source's progress; `None`
    /// while this server may not use what it reads.
    fn poll(
        &mut self,
        task: &QueryTask,
        engine: &mut WindowEngine,
    ) -> Result<Option<(Vec<Decoded>, Progress)>>;

    /// Whether commits wait for records (one server) or also run on the
    /// checkpoint interval alone (a cluster member: other servers' progress
    /// can finish windows).
    fn commits_only_records(&self) -> bool {
        true
    }

    /// Makes the engine's progress durable together with the rows it
    /// `emitted`; returns the rows written (a cluster member writes the
    /// windows it finished, not the engine's).
    fn commit(
        &mut self,
        task: &QueryTask,
        rt: &tokio::runtime::Runtime,
        engine: &mut WindowEngine,
        emitted: Vec<Emission>,
    ) -> Result<Vec<Emission>>;

    /// Publishes rows written to the query's `INTO TOPIC`, if it has one
    /// (called every turn, with no rows when none were written).
    fn publish(&mut self, task: &QueryTask, written: &[Emission]) -> Result<()>;

    /// The next offset to read per partition read.
    fn offsets(&self) -> BTreeMap<i32, i64>;

    /// Stops reading while the store is unavailable (the loop starts again
    /// with [`start`](Self::start) once it answers): drops the consumer and
    /// the producer, so nothing holds partitions or transactions meanwhile.
    fn pause(&mut self);

    /// Whether the query's late records are written to its late table
    /// (one server: with its commits) or only counted (a cluster member).
    fn keeps_late_records(&self) -> bool {
        false
    }

    /// Whether [`start`](Self::start) restores the query's counters from a
    /// checkpoint (then they start again from their values at start when
    /// there is none, so records read again are not counted twice).
    fn restores_counters(&self) -> bool {
        true
    }
}
