//! A query's share of a reader ([`Subscription`]): of each poll the
//! reader hands out, the records at or past the query's own offsets, and
//! the query's own next offsets, progress and notes of bad records.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use super::Delivery;
use crate::error::{Error, Result};
use crate::runtime::QueryTask;
use crate::runtime::decode::{Decoded, QueryNotes};
use crate::source::Progress;
use crate::window::{Offsets, PartitionBatch};

/// A query's share of a reader: the records at or past its own offsets.
/// Every poll it receives decoded the columns it reads: the polls kept
/// before it joined were widened for it (`Reader::widen`), the later
/// ones decode the columns of every subscriber.
pub struct Subscription {
    rx: Receiver<Delivery>,
    offsets: BTreeMap<i32, i64>,
    progress: Progress,
    notes: QueryNotes,
    /// The stream's name, for errors.
    stream: String,
}

impl Subscription {
    pub(super) fn new(
        task: &QueryTask,
        rx: Receiver<Delivery>,
        partitions: Vec<i32>,
        offsets: &BTreeMap<i32, i64>,
    ) -> Self {
        Subscription {
            rx,
            progress: Progress {
                partitions,
                ..Progress::default()
            },
            offsets: offsets.clone(),
            notes: QueryNotes::new(task),
            stream: task.stream.name.clone(),
        }
    }

    /// The next poll's records past the query's offsets, per chunk (empty
    /// after `wait` without one).
    pub fn poll(&mut self, wait: Duration) -> Result<Vec<Decoded>> {
        let poll = match self.rx.recv_timeout(wait) {
            Ok(Ok(poll)) => poll,
            Ok(Err(e)) => return Err(Error::Execution(e)),
            Err(RecvTimeoutError::Timeout) => return Ok(Vec::new()),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Error::Execution(format!(
                    "the reader of stream {} stopped",
                    self.stream
                )));
            }
        };
        let mut taken = Vec::with_capacity(poll.chunks.len());
        for chunk in &poll.chunks {
            let from = self.offsets.get(&chunk.partition).copied();
            let from = from.unwrap_or(i64::MIN);
            if chunk.end <= from {
                continue;
            }
            self.notes.note(chunk, from)?;
            let batch = chunk.batch.as_ref().and_then(|b| from_offset(b, from));
            taken.push((chunk.partition, batch));
        }
        for (p, end) in &poll.ends {
            let next = self.offsets.entry(*p).or_insert(*end);
            *next = match poll.rewound.contains(p) {
                true => *end,
                false => (*next).max(*end),
            };
        }
        self.progress = poll.progress.clone();
        Ok(taken)
    }

    /// The next offset to take per partition: what a checkpoint saves.
    pub fn offsets(&self) -> &BTreeMap<i32, i64> {
        &self.offsets
    }

    /// The reader's progress as of the last poll taken.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// The partitions read.
    pub fn partitions(&self) -> Vec<i32> {
        self.progress.partitions.clone()
    }
}

/// The records of `b` at offset `from` or later.
fn from_offset(b: &PartitionBatch, from: i64) -> Option<PartitionBatch> {
    let n = b.batch.num_rows();
    let skip = match &b.offsets {
        Offsets::From(first) => from.saturating_sub(*first).clamp(0, n as i64) as usize,
        Offsets::Each(each) => each.partition_point(|o| *o < from),
        Offsets::Unknown => 0,
    };
    if skip == 0 {
        return Some(b.clone());
    }
    if skip == n {
        return None;
    }
    Some(PartitionBatch {
        partition: b.partition,
        batch: b.batch.slice(skip, n - skip),
        log_times: b.log_times.as_ref().map(|t| t[skip..].into()),
        offsets: match &b.offsets {
            Offsets::From(first) => Offsets::From(first + skip as i64),
            Offsets::Each(each) => Offsets::Each(each[skip..].to_vec()),
            Offsets::Unknown => Offsets::Unknown,
        },
        windows: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use std::sync::Arc;

    fn batch(offsets: Offsets, n: i64) -> PartitionBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let values = Arc::new(Int64Array::from_iter_values(0..n));
        PartitionBatch {
            partition: 3,
            batch: RecordBatch::try_new(schema, vec![values]).unwrap(),
            log_times: Some((100..100 + n).collect()),
            offsets,
            windows: Default::default(),
        }
    }

    fn values(b: &PartitionBatch) -> Vec<i64> {
        let col = b.batch.column(0).as_any().downcast_ref::<Int64Array>();
        col.unwrap().values().to_vec()
    }

    #[test]
    fn a_subscriber_takes_only_the_records_at_or_past_its_offset() {
        let b = batch(Offsets::From(10), 5); // offsets 10..15
        assert_eq!(values(&from_offset(&b, 0).unwrap()), vec![0, 1, 2, 3, 4]);
        let part = from_offset(&b, 12).unwrap();
        assert_eq!(values(&part), vec![2, 3, 4]);
        assert_eq!(part.log_times.as_deref(), Some(&[102, 103, 104][..]));
        assert!(matches!(part.offsets, Offsets::From(12)));
        assert!(from_offset(&b, 15).is_none());

        // Offsets that skip (transaction markers): by offset, not by index.
        let b = batch(Offsets::Each(vec![4, 6, 9, 11]), 4);
        let part = from_offset(&b, 7).unwrap();
        assert_eq!(values(&part), vec![2, 3]);
        assert!(matches!(&part.offsets, Offsets::Each(o) if *o == vec![9, 11]));
    }
}
