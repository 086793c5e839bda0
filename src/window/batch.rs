//! What a query takes from a read: one partition's records of a poll
//! ([`PartitionBatch`]), with what the engine needs beside the records —
//! their times in the log, their offsets, and their windows once a query
//! worked them out ([`WindowMemo`]). The queries sharing a read each get a
//! clone of one batch, so the clone shares all of it.

use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;

use super::WindowMemo;

/// One partition's records of a poll, in partition order.
#[derive(Debug, Clone)]
pub struct PartitionBatch {
    /// The partition.
    pub partition: i32,
    /// Its records.
    pub batch: RecordBatch,
    /// Per record, its time in the log (Kafka's message timestamp): a
    /// record moves its partition's event-time frontier at most to it, so
    /// one record stamped far ahead cannot make the partition's following
    /// on-time records late; the log keeps it, so a replay decides the
    /// same. `None` for sources without one. Shared by the batch's clones.
    pub log_times: Option<Arc<[i64]>>,
    /// Per record, its offset in the partition: what the late table
    /// (`late.rs`) names a late record by. Read only for late records.
    pub offsets: Offsets,
    /// The records' windows, worked out once for all the queries that read
    /// this batch (or its clones): a new batch starts with an empty memo.
    pub windows: WindowMemo,
}

/// Where a batch's records are in their partition. The usual case costs
/// one number per batch: consecutive records, none dropped before the
/// engine, are `From(first)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Offsets {
    /// Not known (records made by hand).
    #[default]
    Unknown,
    /// Record `i` is at this offset plus `i`.
    From(i64),
    /// Each record's offset.
    Each(Vec<i64>),
}

impl Offsets {
    /// The offset of record `i`, if known.
    pub fn get(&self, i: usize) -> Option<i64> {
        match self {
            Offsets::Unknown => None,
            Offsets::From(first) => Some(first + i as i64),
            Offsets::Each(v) => v.get(i).copied(),
        }
    }
}

impl PartitionBatch {
    /// Records of `partition` without log times or offsets.
    pub fn new(partition: i32, batch: RecordBatch) -> Self {
        PartitionBatch {
            partition,
            batch,
            log_times: None,
            offsets: Offsets::Unknown,
            windows: WindowMemo::default(),
        }
    }
}
