//! Assigning records to windows: each partition's records, one by one
//! against the partition's running watermark, go to their tumbling or
//! hopping windows, their sessions, or the cumulative table; late and bad
//! records are counted and dropped (late ones kept, if asked: `late.rs`).
//!
//! Most batches of tumbling and cumulative queries have no late record:
//! [`on_time`] finds their windows in one lean pass (no record index, the
//! previous record's window reused) and hands the others to the full one.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{
    Array, ArrayRef, TimestampMillisecondArray, UInt32Array, new_null_array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::record_batch::RecordBatch;

use super::late::LateMark;
use super::{PartitionBatch, WindowEngine, closed_through, session, ts_values, window_closed};
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
        let kind = self.plan.window.kind;
        let grace = self.grace;
        if nulls.as_ref().is_none_or(|nb| nb.null_count() == 0) {
            let bounds = (pm, delay, self.closed_wm, grace);
            if let Some(w) = on_time(kind, &ts, log_times, bounds) {
                self.clock.observe(partition, w.max_event);
                return self.with_windows(batch, None, w.starts, w.ends).map(Some);
            }
        }
        let mut idx: Vec<u32> = Vec::with_capacity(n);
        let mut starts: Vec<i64> = Vec::with_capacity(n);
        let mut ends: Vec<i64> = Vec::with_capacity(n);
        let (mut late, mut bad) = (0u64, 0u64);
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
        let idx = (!identity).then_some(idx);
        self.with_windows(batch, idx, starts, ends).map(Some)
    }

    /// `batch`'s records at `idx` (all of them, in order, when `None`) with
    /// their windows' `starts` and `ends` appended: the batch plan's input.
    fn with_windows(
        &self,
        batch: &RecordBatch,
        idx: Option<Vec<u32>>,
        starts: Vec<i64>,
        ends: Vec<i64>,
    ) -> Result<RecordBatch> {
        let indices = idx.map(UInt32Array::from);
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns() + 2);
        for (i, c) in batch.columns().iter().enumerate() {
            cols.push(match &indices {
                None => c.clone(),
                Some(idx) if self.read.binary_search(&i).is_ok() => take(c.as_ref(), idx, None)?,
                Some(idx) => new_null_array(c.data_type(), idx.len()),
            });
        }
        cols.push(Arc::new(TimestampMillisecondArray::from(starts)));
        cols.push(Arc::new(TimestampMillisecondArray::from(ends)));
        Ok(RecordBatch::try_new(self.plan.input_schema.clone(), cols)?)
    }
}

/// The windows of a partition batch none of whose records is late.
#[derive(Debug, PartialEq)]
struct OnTime {
    /// The partition's largest event time after the batch (each record's
    /// capped at its log time), as the record-by-record pass leaves it.
    max_event: i64,
    starts: Vec<i64>,
    ends: Vec<i64>,
}

/// The windows of a tumbling or cumulative query's records `ts` (no nulls)
/// when none of them is late or corrects a closed window, else `None`.
/// `bounds` are the partition's largest event time before the batch, the
/// watermark delay, the watermark windows were closed through, and the
/// grace. The pass follows the record-by-record rule without its
/// bookkeeping: the running watermark closes windows through
/// [`closed_through`], so a record is late exactly when it falls before
/// the earliest window still open, which moves only as that bound crosses
/// a window's end; a record that would correct a closed window under
/// `ALLOW LATE` (closed by the grace alone) is left to the full pass too.
fn on_time(
    kind: WindowKind,
    ts: &[i64],
    log_times: Option<&[i64]>,
    (max_before, delay, closed_wm, grace): (i64, i64, i64, i64),
) -> Option<OnTime> {
    let n = ts.len();
    let capped = |i: usize| log_times.map_or(ts[i], |l| ts[i].min(l[i]));
    let mut max_event = max_before;
    let (starts, ends) = match kind {
        WindowKind::Cumulative { .. } => {
            max_event = (0..n).map(capped).fold(max_event, i64::max);
            (vec![0; n], vec![0; n])
        }
        WindowKind::Tumbling { size_ms: size } => {
            let mut starts = Vec::with_capacity(n);
            // The earliest open window's start, and the bound that closes it.
            let (mut open_from, mut open_until) = (i64::MIN, i64::MIN);
            // The window of the previous record: the next is usually in it.
            let mut start = i64::MIN;
            for (i, &t) in ts.iter().enumerate() {
                let frontier = max_event.saturating_sub(delay).max(closed_wm);
                let closed = closed_through(kind, grace, frontier);
                if closed >= open_until {
                    open_from = closed
                        .div_euclid(size)
                        .checked_mul(size)
                        .unwrap_or(i64::MIN);
                    open_until = open_from.saturating_add(size);
                }
                if t < open_from {
                    return None;
                }
                if t < start || t >= start + size {
                    start = t.div_euclid(size) * size;
                }
                starts.push(start);
                max_event = max_event.max(capped(i));
            }
            let ends = starts.iter().map(|s| s + size).collect();
            (starts, ends)
        }
        WindowKind::Hopping { .. } | WindowKind::Session { .. } => return None,
    };
    Some(OnTime {
        max_event,
        starts,
        ends,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which records the record-by-record rule finds late in a tumbling
    /// window of `size` (grace `grace`), and the largest event time after.
    fn late_one_by_one(
        size: i64,
        ts: &[i64],
        caps: &[i64],
        b: (i64, i64, i64, i64),
    ) -> (usize, i64) {
        let (mut pm, delay, closed_wm, grace) = b;
        let mut late = 0;
        for (t, cap) in ts.iter().zip(caps) {
            let frontier = pm.saturating_sub(delay).max(closed_wm);
            pm = pm.max(*t.min(cap));
            let end = t.div_euclid(size) * size + size;
            late += window_closed(WindowKind::Tumbling { size_ms: size }, end, grace, frontier)
                as usize;
        }
        (late, pm)
    }

    #[test]
    fn a_batch_passes_exactly_when_no_record_is_late() {
        let size = 1_000;
        let kind = WindowKind::Tumbling { size_ms: size };
        // A small generator, so the cases are the same on every run.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: i64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % m as u64) as i64
        };
        let (mut passed, mut declined) = (0, 0);
        for _ in 0..20_000 {
            // Rising times with jitter, across several windows and the
            // watermark delay, as a partition's records of one poll are.
            let n = 1 + next(40) as usize;
            let base = 10_000 + next(3_000);
            let step = next(300);
            let jitter = 1 + next(1_500);
            let ts: Vec<i64> = (0..n as i64)
                .map(|i| base + i * step + next(jitter) - jitter / 2)
                .collect();
            let caps: Vec<i64> = ts.iter().map(|t| t + next(800) - 400).collect();
            let with_caps = next(2) == 0;
            let caps_used = if with_caps { caps.clone() } else { ts.clone() };
            let bounds = (
                base + next(2_000) - 1_000,
                next(1_500),
                base - next(3_000),
                next(2) * 300,
            );
            let (late, pm) = late_one_by_one(size, &ts, &caps_used, bounds);
            let got = on_time(kind, &ts, with_caps.then_some(&caps[..]), bounds);
            let case = format!("{ts:?} capped {caps_used:?} bounds {bounds:?}");
            let Some(w) = got else {
                assert!(late > 0, "{case}: declined with no record late");
                declined += 1;
                continue;
            };
            assert_eq!(late, 0, "{case}: passed with a record late");
            assert_eq!(w.max_event, pm, "{case}");
            let starts: Vec<i64> = ts.iter().map(|t| t.div_euclid(size) * size).collect();
            assert_eq!(w.starts, starts, "{case}");
            assert!(w.ends.iter().zip(&starts).all(|(e, s)| *e == s + size));
            passed += 1;
        }
        // Both outcomes were met many times, or the cases prove nothing.
        assert!(
            passed > 1_000 && declined > 1_000,
            "{passed} passed, {declined} declined"
        );
    }

    #[test]
    fn hopping_and_session_windows_are_judged_record_by_record() {
        let b = (0, 0, i64::MIN, 0);
        let hop = WindowKind::Hopping {
            size_ms: 10,
            slide_ms: 5,
        };
        assert_eq!(on_time(hop, &[1, 2], None, b), None);
        assert_eq!(
            on_time(WindowKind::Session { gap_ms: 10 }, &[1], None, b),
            None
        );
        let cumulative =
            on_time(WindowKind::Cumulative { emit_ms: 1_000 }, &[7, 3], None, b).unwrap();
        assert_eq!(cumulative.max_event, 7);
        assert_eq!(
            (cumulative.starts, cumulative.ends),
            (vec![0, 0], vec![0, 0])
        );
    }
}
