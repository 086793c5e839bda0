//! Assigning records to windows: each partition's records, one by one
//! against the partition's running watermark, go to their tumbling or
//! hopping windows, their sessions, or the cumulative table; late and bad
//! records are counted and dropped (late ones kept, if asked: `late.rs`).
//!
//! Most batches of tumbling and cumulative queries have no late record.
//! For those, a batch's windows and what judging them takes ([`Spans`])
//! are worked out once, in one pass, and shared by every query of the
//! stream with the same window (`memo.rs`: the queries sharing a read
//! get clones of one batch); each query then judges the whole batch in
//! constant time against its own watermark, and hands a batch with a late
//! record to the record-by-record pass. When several queries of the read
//! have the same window and the same `WHERE` on the stream (the read
//! counts them), the records an on-time batch keeps — with their windows,
//! and the columns those queries read of them — are kept once for all of
//! them, and their batch plans run without the filter (`plan::filter`);
//! any other batch goes to the batch plan whole, for its own filter to
//! judge.
//!
//! ```text
//! reader ── PartitionBatch ──┬── q1: Spans (made) ── on time? ── kept (made) ── plan without its filter
//!    (one WindowMemo, the    ├── q2: Spans (shared) ── on time? ── kept (shared) ── ...
//!     read's SharedFilters)  ├── q3: Spans (shared) ── on time? ── (filter not shared) ── plan with it
//!                            └── q4: hopping ── record by record ── plan with its filter
//! ```

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
use crate::plan::filter_batch;

/// Records assigned to windows: the batch plan's input, and the batch's
/// windows when its [`Spans`] named them.
pub(super) struct Assigned {
    pub(super) batch: RecordBatch,
    pub(super) spans: Option<Arc<Spans>>,
    /// The records are those a filter the queries of the read share kept:
    /// for the batch plan without it.
    pub(super) filtered: bool,
}

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
        keys: Option<&[session::RecordKey]>,
        arrival_ms: i64,
    ) -> Result<Option<Assigned>> {
        let (partition, batch) = (pb.partition, &pb.batch);
        // The batch's own log times: what its shared spans were made with.
        let log_times = pb.log_times.as_deref();
        let n = batch.num_rows();
        self.counters
            .records_in
            .fetch_add(n as u64, Ordering::Relaxed);
        if n == 0 {
            return Ok(None);
        }
        let time_col = self.event_time.map(|c| batch.column(c));
        let nulls = time_col.and_then(|col| col.logical_nulls());
        let mut pm = self.clock.max_event(partition);
        let delay = self.clock.delay();
        let kind = self.plan.window.kind;
        let grace = self.grace;
        if lean(kind) && nulls.as_ref().is_none_or(|nb| nb.null_count() == 0) {
            let spans = match (self.event_time, time_col) {
                (Some(c), Some(col)) => pb.windows.get_or_make((c, kind), || {
                    Ok(Spans::new(kind, &ts_values(col)?, log_times))
                })?,
                // Arrival time is each query's own: nothing to share.
                _ => Arc::new(Spans::new(kind, &vec![arrival_ms; n], log_times)),
            };
            if spans.on_time(kind, (pm, delay, self.closed_wm, grace)) {
                self.clock.observe(partition, pm.max(spans.max_event));
                let (starts, ends) = (spans.starts.clone(), spans.ends.clone());
                let all = self.with_windows(batch, None, starts, ends)?;
                // The records kept are the same for every query of the read
                // with this window and filter: kept once for all of them,
                // when others share it.
                let kept = match (self.event_time, self.plan.filter()) {
                    (Some(c), Some(f)) => {
                        let make = |columns: &[usize]| filter_batch(&all, &f.predicate, columns);
                        pb.windows.kept((c, kind), &f.predicate, &f.columns, make)?
                    }
                    _ => None,
                };
                let (batch, filtered) = match kept {
                    Some(kept) => (kept, true),
                    None => (all, false),
                };
                let spans = Some(spans);
                return Ok(Some(Assigned {
                    batch,
                    spans,
                    filtered,
                }));
            }
        }
        let ts = match time_col {
            Some(col) => ts_values(col)?,
            None => vec![arrival_ms; n],
        };
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
        let starts = Arc::new(TimestampMillisecondArray::from(starts));
        let ends = Arc::new(TimestampMillisecondArray::from(ends));
        let batch = self.with_windows(batch, idx, starts, ends)?;
        Ok(Some(Assigned {
            batch,
            spans: None,
            filtered: false,
        }))
    }

    /// `batch`'s records at `idx` (all of them, in order, when `None`) with
    /// their windows' `starts` and `ends` appended: the batch plan's input.
    fn with_windows(
        &self,
        batch: &RecordBatch,
        idx: Option<Vec<u32>>,
        starts: ArrayRef,
        ends: ArrayRef,
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
        cols.push(starts);
        cols.push(ends);
        Ok(RecordBatch::try_new(self.plan.input_schema.clone(), cols)?)
    }
}

/// Whether batches without a late record take the lean path: one
/// window per record, worked out once per batch ([`Spans`]).
pub(super) fn lean(kind: WindowKind) -> bool {
    matches!(
        kind,
        WindowKind::Tumbling { .. } | WindowKind::Cumulative { .. }
    )
}

/// The windows of one partition batch's records under one tumbling or
/// cumulative window spec, and what judging them against a query's
/// watermark takes (see [`Spans::on_time`]).
#[derive(Debug)]
pub(super) struct Spans {
    /// The largest event time in the batch, each record's capped at its
    /// time in the log.
    max_event: i64,
    /// The earliest window end in the batch.
    first_end: i64,
    /// The least, over each record but the first, of its window's end less
    /// the largest capped event time before it (`None` for one record).
    min_lead: Option<i128>,
    starts: ArrayRef,
    ends: ArrayRef,
    /// The batch's windows by (end, start), once per run of records in one.
    pub(super) windows: Vec<(i64, i64)>,
}

impl Spans {
    /// The spans of records at event times `ts` (no nulls), each capped at
    /// its `log_times` entry, under a tumbling or cumulative `kind`: one pass,
    /// the previous record's window reused.
    pub(super) fn new(kind: WindowKind, ts: &[i64], log_times: Option<&[i64]>) -> Spans {
        let n = ts.len();
        let capped = |i: usize| log_times.map_or(ts[i], |l| ts[i].min(l[i]));
        let WindowKind::Tumbling { size_ms: size } = kind else {
            // Cumulative: one table, never late.
            let zeros: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![0; n]));
            return Spans {
                max_event: (0..n).map(capped).max().unwrap_or(i64::MIN),
                first_end: i64::MAX,
                min_lead: None,
                starts: zeros.clone(),
                ends: zeros,
                windows: vec![(0, 0)],
            };
        };
        let mut starts = Vec::with_capacity(n);
        let mut windows = Vec::new();
        let (mut max_event, mut min_lead) = (i64::MIN, None::<i128>);
        // The window of the previous record: the next is usually in it.
        let mut start = i64::MIN;
        for (i, &t) in ts.iter().enumerate() {
            if t < start || t >= start + size {
                start = t.div_euclid(size) * size;
                windows.push((start + size, start));
            }
            starts.push(start);
            if i > 0 {
                let lead = i128::from(start + size) - i128::from(max_event);
                min_lead = Some(min_lead.map_or(lead, |m| m.min(lead)));
            }
            max_event = max_event.max(capped(i));
        }
        let ends: Vec<i64> = starts.iter().map(|s| s + size).collect();
        Spans {
            max_event,
            first_end: windows.iter().map(|w| w.0).min().unwrap_or(i64::MAX),
            min_lead,
            starts: Arc::new(TimestampMillisecondArray::from(starts)),
            ends: Arc::new(TimestampMillisecondArray::from(ends)),
            windows,
        }
    }

    /// Whether none of the records is late nor would correct a closed window
    /// under `ALLOW LATE` (closed by the grace alone), for a query whose
    /// `bounds` are the partition's largest event time before the batch, the
    /// watermark delay, the watermark windows were closed through, and the
    /// grace: exactly when the record-by-record pass finds none.
    ///
    /// That pass finds record `i` late when its window ended at or before
    /// [`closed_through`] the running watermark before it — the larger of
    /// the closed watermark and the largest event time before it less the
    /// delay. The bound only rises with that largest time, so it is the
    /// larger of the bound at the batch's start (which no window end may
    /// reach: `first_end`) and the bound at the largest time of the records
    /// before `i` in the batch, which for these windows is that time less
    /// the delay and the grace (which no window may end within: `min_lead`).
    fn on_time(&self, kind: WindowKind, bounds: (i64, i64, i64, i64)) -> bool {
        let (max_before, delay, closed_wm, grace) = bounds;
        if let WindowKind::Cumulative { .. } = kind {
            return true;
        }
        let at_start = max_before.saturating_sub(delay).max(closed_wm);
        let within = -(i128::from(delay) + i128::from(grace));
        self.first_end > closed_through(kind, grace, at_start)
            && self.min_lead.is_none_or(|lead| lead > within)
    }
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
            let spans = Spans::new(kind, &ts, with_caps.then_some(&caps[..]));
            let case = format!("{ts:?} capped {caps_used:?} bounds {bounds:?}");
            // The windows are the records' whatever the verdict.
            let starts: Vec<i64> = ts.iter().map(|t| t.div_euclid(size) * size).collect();
            let ends: Vec<i64> = starts.iter().map(|s| s + size).collect();
            assert_eq!(values(&spans.starts), starts, "{case}");
            assert_eq!(values(&spans.ends), ends, "{case}");
            let mut runs: Vec<(i64, i64)> = ends.iter().copied().zip(starts).collect();
            runs.dedup();
            assert_eq!(spans.windows, runs, "{case}");
            if !spans.on_time(kind, bounds) {
                assert!(late > 0, "{case}: declined with no record late");
                declined += 1;
                continue;
            }
            assert_eq!(late, 0, "{case}: passed with a record late");
            assert_eq!(spans.max_event.max(bounds.0), pm, "{case}");
            passed += 1;
        }
        // Both outcomes were met many times, or the cases prove nothing.
        assert!(
            passed > 1_000 && declined > 1_000,
            "{passed} passed, {declined} declined"
        );
    }

    fn values(a: &ArrayRef) -> Vec<i64> {
        let a = a.as_any().downcast_ref::<TimestampMillisecondArray>();
        a.expect("timestamps").values().to_vec()
    }

    #[test]
    fn cumulative_records_are_never_late() {
        let kind = WindowKind::Cumulative { emit_ms: 1_000 };
        let spans = Spans::new(kind, &[7, 3, 9], Some(&[7, 3, 5]));
        assert_eq!(spans.max_event, 7);
        assert_eq!(values(&spans.starts), [0, 0, 0]);
        assert_eq!(values(&spans.ends), [0, 0, 0]);
        assert_eq!(spans.windows, [(0, 0)]);
        assert!(spans.on_time(kind, (i64::MAX, 0, i64::MAX, 0)));
    }
}
