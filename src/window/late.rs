//! Late records kept: each record dropped as late (see [`super::assign`]) is
//! described by one row of the query's late table, with the shape of
//! [`late_schema`]:
//!
//! | column | what |
//! |---|---|
//! | `_partition` | the record's partition |
//! | `_offset` | its offset in the partition (NULL when the source has none) |
//! | `_event_time` | its event time (its arrival time when the stream has none) |
//! | `_late_ms` | `_watermark − _event_time`: how far behind the watermark it came |
//! | `_watermark` | the running watermark of its partition it was judged against |
//! | `_missed` | the closed windows it belonged to, each `start/end` (ISO 8601, UTC), in start order |
//! | `_written_at` | when the commit storing it ran (wall clock) |
//! | the stream's columns | as decoded: those the query reads and the event time |
//!
//! A hopping record that missed some of its windows but not all is kept
//! too (it still counts in its open windows); `_missed` lists only the
//! closed ones. A session record misses the closed session it touches, or
//! its own `[t, t + gap)` when that alone is already closed.
//!
//! Nothing is allocated for a batch with no late record: the marks of late
//! records are collected only once one is found, and the rows are built
//! from them at the end of the batch.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Int64Array, StringArray, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;

use super::{Offsets, WindowEngine};
use crate::error::Result;
use crate::plan::ContinuousPlan;

/// The late table's own columns, before the stream's.
pub const LATE_COLUMNS: [&str; 7] = [
    "_partition",
    "_offset",
    "_event_time",
    "_late_ms",
    "_watermark",
    "_missed",
    "_written_at",
];

/// Index of `_written_at`, stamped when the rows are taken for a commit.
const WRITTEN_AT: usize = 6;

/// The stream columns a late row keeps: those `plan` reads and the event
/// time, in stream order (the others are not decoded).
pub fn late_stream_columns(plan: &ContinuousPlan, event_time: Option<usize>) -> Vec<usize> {
    let mut cols = plan.stream_columns_read();
    cols.extend(event_time);
    cols.sort_unstable();
    cols.dedup();
    cols
}

/// The shape of a query's late table (module doc). A stream column named
/// like one of [`LATE_COLUMNS`] is kept with a `_` appended.
pub fn late_schema(plan: &ContinuousPlan, event_time: Option<usize>) -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Millisecond, None);
    let mut fields = vec![
        Field::new(LATE_COLUMNS[0], DataType::Int64, false),
        Field::new(LATE_COLUMNS[1], DataType::Int64, true),
        Field::new(LATE_COLUMNS[2], ts(), false),
        Field::new(LATE_COLUMNS[3], DataType::Int64, false),
        Field::new(LATE_COLUMNS[4], ts(), false),
        Field::new(LATE_COLUMNS[5], DataType::Utf8, false),
        Field::new(LATE_COLUMNS[6], ts(), false),
    ];
    let input = &plan.input_schema;
    for c in late_stream_columns(plan, event_time) {
        let f = input.field(c);
        let name = match LATE_COLUMNS.contains(&f.name().as_str()) {
            true => format!("{}_", f.name()),
            false => f.name().clone(),
        };
        fields.push(Field::new(name, f.data_type().clone(), true));
    }
    Arc::new(Schema::new(fields))
}

/// A late record found while assigning a batch.
pub(super) struct LateMark {
    /// Its index in the batch.
    pub row: u32,
    /// The running watermark it was judged against.
    pub watermark: i64,
    /// The closed windows it missed, (start, end).
    pub missed: Vec<(i64, i64)>,
}

/// The late rows an engine keeps until they are taken for a commit.
pub(super) struct LateRecords {
    schema: SchemaRef,
    columns: Vec<usize>,
    /// Rows without `_written_at`.
    pending: Vec<RecordBatch>,
}

impl LateRecords {
    pub(super) fn new(plan: &ContinuousPlan, event_time: Option<usize>) -> Self {
        LateRecords {
            schema: late_schema(plan, event_time),
            columns: late_stream_columns(plan, event_time),
            pending: Vec::new(),
        }
    }

    /// Rows for the late records `marks` of one partition's `batch`, whose
    /// event times are `ts` and offsets `offsets`.
    pub(super) fn push(
        &mut self,
        partition: i32,
        batch: &RecordBatch,
        ts: &[i64],
        offsets: &Offsets,
        marks: Vec<LateMark>,
    ) -> Result<()> {
        let rows = || marks.iter().map(|m| m.row as usize);
        let event: Vec<i64> = rows().map(|i| ts[i]).collect();
        let missed: StringArray = marks.iter().map(|m| Some(missed_text(&m.missed))).collect();
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![i64::from(partition); marks.len()])),
            Arc::new(rows().map(|i| offsets.get(i)).collect::<Int64Array>()),
            Arc::new(TimestampMillisecondArray::from(event.clone())),
            Arc::new(Int64Array::from_iter_values(
                marks
                    .iter()
                    .zip(&event)
                    .map(|(m, t)| m.watermark.saturating_sub(*t)),
            )),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                marks.iter().map(|m| m.watermark),
            )),
            Arc::new(missed),
        ];
        let indices = UInt32Array::from_iter_values(marks.iter().map(|m| m.row));
        for &c in &self.columns {
            cols.push(take(batch.column(c).as_ref(), &indices, None)?);
        }
        let mut fields: Vec<Field> = self.schema.fields().iter().map(|f| (**f).clone()).collect();
        fields.remove(WRITTEN_AT);
        self.pending
            .push(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?);
        Ok(())
    }

    /// The rows kept since the last call, `_written_at` set to `now`.
    fn take(&mut self, now: i64) -> Result<Vec<RecordBatch>> {
        std::mem::take(&mut self.pending)
            .into_iter()
            .map(|b| {
                let mut cols = b.columns().to_vec();
                let at = TimestampMillisecondArray::from(vec![now; b.num_rows()]);
                cols.insert(WRITTEN_AT, Arc::new(at));
                Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
            })
            .collect()
    }
}

/// Windows as `start/end` intervals (ISO 8601, UTC), in start order.
fn missed_text(missed: &[(i64, i64)]) -> String {
    let iso = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms).map_or_else(
            || ms.to_string(),
            |d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        )
    };
    let mut w = missed.to_vec();
    w.sort_unstable();
    w.iter()
        .map(|(s, e)| format!("{}/{}", iso(*s), iso(*e)))
        .collect::<Vec<_>>()
        .join(" ")
}

impl WindowEngine {
    /// Keeps each record dropped as late, to be taken with
    /// [`take_late`](Self::take_late); without it they are only counted.
    pub fn keep_late_records(&mut self) {
        self.late = Some(LateRecords::new(&self.plan, self.event_time));
    }

    /// The late rows kept since the last call (the module doc has their
    /// shape), with `_written_at` = `now`; none unless
    /// [`keep_late_records`](Self::keep_late_records) was called.
    pub fn take_late(&mut self, now: i64) -> Result<Vec<RecordBatch>> {
        match &mut self.late {
            Some(l) => l.take(now),
            None => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::missed_text;

    #[test]
    fn missed_windows_in_start_order() {
        assert_eq!(
            missed_text(&[(60_000, 120_000), (0, 60_000)]),
            "1970-01-01T00:00:00.000Z/1970-01-01T00:01:00.000Z 1970-01-01T00:01:00.000Z/1970-01-01T00:02:00.000Z"
        );
    }
}
