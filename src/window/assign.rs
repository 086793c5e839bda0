//! Assigning records to windows: each partition's records, one by one
//! against the partition's running watermark, go to their tumbling or
//! hopping windows, their sessions, or the cumulative table; late and bad
//! records are counted and dropped (late ones kept, if asked: `late.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{
    Array, ArrayRef, TimestampMillisecondArray, UInt32Array, new_null_array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::record_batch::RecordBatch;

use super::late::LateMark;
use super::{PartitionBatch, WindowEngine, session, ts_values, window_closed};
use crate::error::Result;
use crate::model::WindowKind;

impl WindowEngine {
    /// Assigns one partition's records to windows, advancing the partition's
    /// running watermark record by record (each record's advance capped at
    /// its time in the log, when known) and dropping late records: the
    /// records kept, with their windows' start and end appended. Session
    /// queries pass each record's group keys (record index, key), in record
    /// order: a record is judged against the sessions it would join.
    pub(super) fn assign(
        &mut self,
        pb: &PartitionBatch,
        log_times: Option<&[i64]>,
        keys: Option<&[session::RecordKey]>,
        arrival_ms: i64,
    ) -> Result<Option<RecordBatch>> {
        let (partition, batch) = (pb.partition, &pb.batch);
        let n = batch.num_rows();
        self.counters
            .records_in
            .fetch_add(n as u64, Ordering::Relaxed);
        if n == 0 {
            return Ok(None);
        }
        let (ts, nulls) = match self.event_time {
            Some(c) => {
                let col = batch.column(c);
                (ts_values(col)?, col.logical_nulls())
            }
            None => (vec![arrival_ms; n], None),
        };
        let mut pm = self.clock.max_event(partition);
        let delay = self.clock.delay();
        let mut idx: Vec<u32> = Vec::with_capacity(n);
        let mut starts: Vec<i64> = Vec::with_capacity(n);
        let mut ends: Vec<i64> = Vec::with_capacity(n);
        let (mut late, mut bad) = (0u64, 0u64);
        let kind = self.plan.window.kind;
        let grace = self.grace;
        let allow = self.plan.window.allow_late_ms;
        let mut corrections = false;
        let keys = keys.unwrap_or_default();
        let mut next_key = 0;
        // Late records kept, if the engine keeps them: allocated at the first.
        let keep_late = self.late.is_some();
        let mut marks: Vec<LateMark> = Vec::new();
        for (i, &t) in ts.iter().enumerate() {
            if nulls.as_ref().is_some_and(|nb| nb.is_null(i)) {
                bad += 1;
                continue;
            }
            // The running watermark of this partition before record i.
            let frontier = pm.saturating_sub(delay).max(self.closed_wm);
            pm = pm.max(log_times.map_or(t, |l| t.min(l[i])));
            if let (WindowKind::Session { gap_ms }, Some(sessions)) = (kind, &mut self.sessions) {
                let from = next_key + keys[next_key..].partition_point(|k| k.0 < i as u32);
                next_key = from + keys[from..].partition_point(|k| k.0 == i as u32);
                let mine = &keys[from..next_key];
                // Filtered out by WHERE or an inner join: nothing to join.
                if mine.is_empty() {
                    continue;
                }
                // Late for one of its keys (a join fanned it out): late.
                if let Some(w) = mine
                    .iter()
                    .find_map(|(_, k)| sessions.missed(k, t, frontier))
                {
                    late += 1;
                    if keep_late {
                        marks.push(LateMark {
                            row: i as u32,
                            watermark: frontier,
                            missed: vec![w],
                        });
                    }
                    continue;
                }
                for (_, k) in mine {
                    sessions.merge(k, t);
                }
                idx.push(i as u32);
                starts.push(t);
                ends.push(t.saturating_add(gap_ms));
                continue;
            }
            let mut missed: Vec<(i64, i64)> = Vec::new();
            let mut assign = |s: i64, e: i64| {
                // Late past what ALLOW LATE lets correct (the grace alone without it).
                if window_closed(kind, e, grace.saturating_add(allow), frontier) {
                    missed.push((s, e));
                } else {
                    corrections |= allow > 0 && window_closed(kind, e, grace, frontier);
                    idx.push(i as u32);
                    starts.push(s);
                    ends.push(e);
                }
            };
            match kind {
                WindowKind::Tumbling { size_ms } => {
                    let s = t.div_euclid(size_ms) * size_ms;
                    assign(s, s + size_ms);
                }
                WindowKind::Hopping { size_ms, slide_ms } => {
                    let mut s = t.div_euclid(slide_ms) * slide_ms;
                    while s > t - size_ms {
                        assign(s, s + size_ms);
                        s -= slide_ms;
                    }
                }
                WindowKind::Session { .. } => unreachable!("sessions are assigned above"),
                WindowKind::Cumulative { .. } => {
                    idx.push(i as u32);
                    starts.push(0);
                    ends.push(0);
                }
            }
            if !missed.is_empty() {
                late += 1;
                if keep_late {
                    marks.push(LateMark {
                        row: i as u32,
                        watermark: frontier,
                        missed,
                    });
                }
            }
        }
        if let (Some(kept), false) = (&mut self.late, marks.is_empty()) {
            kept.push(partition, batch, &ts, &pb.offsets, marks)?;
        }
        self.counters
            .late_records
            .fetch_add(late, Ordering::Relaxed);
        self.counters.bad_records.fetch_add(bad, Ordering::Relaxed);
        self.corrections |= corrections;
        self.clock.observe(partition, pm);
        if idx.is_empty() {
            return Ok(None);
        }
        // Every record in one window each, in order: the columns as they are.
        let identity = idx.len() == n && idx.iter().enumerate().all(|(k, &v)| v as usize == k);
        let indices = UInt32Array::from(idx);
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns() + 2);
        for (i, c) in batch.columns().iter().enumerate() {
            cols.push(if identity {
                c.clone()
            } else if self.read.binary_search(&i).is_ok() {
                take(c.as_ref(), &indices, None)?
            } else {
                new_null_array(c.data_type(), indices.len())
            });
        }
        cols.push(Arc::new(TimestampMillisecondArray::from(starts)));
        cols.push(Arc::new(TimestampMillisecondArray::from(ends)));
        Ok(Some(RecordBatch::try_new(
            self.plan.input_schema.clone(),
            cols,
        )?))
    }
}
