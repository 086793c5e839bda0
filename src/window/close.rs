//! Closing windows: once the watermark passes a window's end plus grace its
//! partial states go through the close plan and its rows are emitted (with
//! its state when asked); sessions close the same way. Before that, on each
//! emit tick, a cumulative query emits its whole table when it changed, and
//! an `EMIT EVERY` query the provisional rows of each open window that
//! changed, which its next rows (provisional or final) replace — over
//! sessions, whose spans move, those of every open session after any
//! change, replacing all earlier provisional rows. With `ALLOW
//! LATE` a closed window's merged state is kept until the watermark passes
//! its end plus grace plus the allowance; late records until then correct
//! it, and it is closed again with the next `revision`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{TimestampMillisecondArray, new_null_array};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::record_batch::RecordBatch;

use super::{Retained, WindowEngine, closed_through, ts_values, window_closed};
use crate::error::Result;
use crate::model::{Emission, WindowKind};
use crate::plan::ContinuousPlan;

impl WindowEngine {
    /// Closes every window whose end plus grace is at or before `wm`, and
    /// closes again the closed windows late records corrected.
    pub(super) async fn close_until(&mut self, wm: i64) -> Result<Vec<Emission>> {
        if wm <= self.closed_wm && !self.corrections {
            return Ok(vec![]);
        }
        let wm = wm.max(self.closed_wm);
        let kind = self.plan.window.kind;
        let mut out = Vec::new();
        match kind {
            WindowKind::Cumulative { .. } => return Ok(out),
            WindowKind::Session { .. } => {
                if let Some(e) = self.close_sessions(wm).await? {
                    out.push(e);
                }
            }
            _ => {
                // The running batch plan may hold records of a window to
                // close or to correct.
                let due = self.live_reaches(closed_through(kind, self.grace, wm));
                if due || self.corrections {
                    self.settle().await?;
                }
                while let Some((&(end, start), _)) = self.windows.first_key_value() {
                    if !window_closed(kind, end, self.grace, wm) {
                        break;
                    }
                    if let Some(e) = self.close_window(start, end).await? {
                        out.push(e);
                    }
                }
                // Closed windows past what ALLOW LATE lets correct are done.
                let allow = self.grace.saturating_add(self.plan.window.allow_late_ms);
                let expired: Vec<(i64, i64)> = self
                    .retained
                    .keys()
                    .copied()
                    .filter(|&(end, _)| window_closed(kind, end, allow, wm))
                    .collect();
                for (end, start) in expired {
                    self.retained.remove(&(end, start));
                    self.note_expired(start, end);
                }
            }
        }
        self.closed_wm = wm;
        self.corrections = false;
        Ok(out)
    }

    /// Finishes window `[start, end)`: its rows, or with `ALLOW LATE` the
    /// next revision of a closed window that late records corrected.
    async fn close_window(&mut self, start: i64, end: i64) -> Result<Option<Emission>> {
        let key = (end, start);
        let mut buf = self.windows.remove(&key).expect("present");
        let ready = buf.ready.take();
        self.changed.remove(&key);
        let allow = self.plan.window.allow_late_ms > 0;
        let (batches, revision) = match self.retained.remove(&key) {
            Some(r) => {
                let mut b = vec![r.state];
                b.extend(buf.batches);
                (b, r.revision + 1)
            }
            None => (buf.batches, 0),
        };
        let merged = match allow {
            // Kept to merge the next late records into: one row per group.
            true => {
                let reduced = self.plan.reduce(batches.clone()).await?;
                Some(concat_batches(&self.plan.state_schema, &reduced)?)
            }
            false if self.keep_states => Some(concat_batches(&self.plan.state_schema, &batches)?),
            false => None,
        };
        let rows = match (revision, ready) {
            (0, Some(rows)) => rows,
            (0, None) => self.plan.close(batches).await?,
            (r, _) => self.plan.close_revision(batches, r).await?,
        };
        let kept = merged.as_ref().filter(|_| allow);
        self.note_closed(start, end, kept)?;
        if let Some(state) = kept {
            let state = state.clone();
            self.retained.insert(key, Retained { state, revision });
        }
        let state = merged.filter(|_| self.keep_states);
        let batch = concat(&self.plan, rows)?;
        // Rows are counted before the window, so whoever reads a window as
        // closed reads its rows as emitted.
        let n = batch.as_ref().map_or(0, |b| b.num_rows() as u64);
        self.counters.rows_emitted.fetch_add(n, Ordering::Relaxed);
        if revision == 0 {
            self.counters.windows_closed.fetch_add(1, Ordering::Relaxed);
            self.counters.last_window_end.store(end, Ordering::Relaxed);
        }
        // A window without rows (after HAVING) still keeps its state, and
        // still replaces its earlier rows.
        let replaces = self.plan.early_ms.is_some() || revision > 0;
        if batch.is_none() && state.is_none() && !replaces {
            return Ok(None);
        }
        Ok(Some(Emission {
            batch: batch.unwrap_or_else(|| RecordBatch::new_empty(self.plan.output_schema.clone())),
            cumulative: false,
            state,
            window: Some((start, end)),
            open_sessions: false,
        }))
    }

    /// Finishes ahead the rows of every window the input has moved past
    /// (a later window's start is at or after its end, and every partition
    /// has read past its end) that took no state since the last look: the
    /// watermark closes it only once the stream's delay has passed, and its
    /// close then only hands out these rows. A record that still joins it
    /// drops them (`WindowBuf::push`), so they are always what closing its
    /// states as they are gives. Waiting for the slowest partition keeps a
    /// backlog read unevenly across partitions from finishing a window
    /// again at each record a lagging partition still adds to it. Windows
    /// kept for late records are closed as usual.
    pub(super) async fn finish_ahead(&mut self) -> Result<()> {
        let ahead = matches!(
            self.plan.window.kind,
            WindowKind::Tumbling { .. } | WindowKind::Hopping { .. }
        );
        if !ahead || self.partials_only || self.plan.window.allow_late_ms > 0 {
            return Ok(());
        }
        let Some(newest) = self.newest_start() else {
            return Ok(());
        };
        // The slowest partition's event-time frontier.
        let read_past = match self.watermark() {
            Some(w) => newest.min(w.saturating_add(self.clock.delay())),
            None => i64::MIN,
        };
        if self.live_reaches(read_past) {
            self.settle().await?;
        }
        for (&(end, _), buf) in self.windows.iter_mut() {
            let touched = std::mem::take(&mut buf.touched);
            if end <= read_past && !touched && buf.ready.is_none() {
                buf.ready = Some(self.plan.close(buf.batches.clone()).await?);
            }
        }
        Ok(())
    }

    /// Closes every open window, as if the watermark had passed them all:
    /// the input has ended for good (benchmarks, tests).
    pub async fn close_all(&mut self) -> Result<Vec<Emission>> {
        self.close_until(i64::MAX).await
    }

    /// Emits what open windows hold so far, on an emit tick at wall time
    /// `now_ms`: a cumulative query's whole table if it changed, or an `EMIT
    /// EVERY` query's provisional rows of each open window that changed
    /// since its last ones (one emission per window, so its next rows
    /// replace these even when `HAVING` leaves none).
    pub async fn emit_open(&mut self, now_ms: i64) -> Result<Vec<Emission>> {
        if self.partials_only {
            return Ok(vec![]);
        }
        self.settle().await?;
        match self.plan.window.kind {
            WindowKind::Cumulative { .. } => self.emit_cumulative(now_ms).await,
            WindowKind::Session { .. } => self.emit_open_sessions().await,
            _ => self.emit_provisional().await,
        }
    }

    /// The provisional rows of every open session, when a record joined or
    /// a session closed since the last ones: all of them, since they
    /// replace all earlier provisional rows ([`Emission::open_sessions`]).
    async fn emit_open_sessions(&mut self) -> Result<Vec<Emission>> {
        let early = self.plan.early_ms.is_some();
        let Some(sessions) = self.sessions.as_mut().filter(|s| early && s.changed) else {
            return Ok(vec![]);
        };
        let rows = match sessions.open_states(&self.plan)? {
            Some(states) => self.plan.close_provisional(vec![states]).await?,
            None => vec![],
        };
        let batch = concat(&self.plan, rows)?
            .unwrap_or_else(|| RecordBatch::new_empty(self.plan.output_schema.clone()));
        self.counters
            .rows_emitted
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        Ok(vec![Emission {
            batch,
            cumulative: false,
            state: None,
            window: None,
            open_sessions: true,
        }])
    }

    async fn emit_provisional(&mut self) -> Result<Vec<Emission>> {
        let mut out = Vec::new();
        for (end, start) in std::mem::take(&mut self.changed) {
            let Some(buf) = self.windows.get_mut(&(end, start)) else {
                continue;
            };
            buf.merge_fresh(&self.plan).await?;
            let rows = self.plan.close_provisional(buf.batches.clone()).await?;
            let batch = concat(&self.plan, rows)?
                .unwrap_or_else(|| RecordBatch::new_empty(self.plan.output_schema.clone()));
            self.counters
                .rows_emitted
                .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
            out.push(Emission {
                batch,
                cumulative: false,
                state: None,
                window: Some((start, end)),
                open_sessions: false,
            });
        }
        Ok(out)
    }

    /// Emits the whole table of a cumulative query if it changed.
    async fn emit_cumulative(&mut self, now_ms: i64) -> Result<Vec<Emission>> {
        if !self.dirty {
            return Ok(vec![]);
        }
        self.dirty = false;
        let Some(buf) = self.windows.get_mut(&(0, 0)) else {
            return Ok(vec![]);
        };
        buf.merge_fresh(&self.plan).await?;
        let rows = self.plan.close(buf.batches.clone()).await?;
        let Some(batch) = concat(&self.plan, rows)? else {
            return Ok(vec![]);
        };
        // A cumulative row belongs to no window: window_start is NULL, and
        // window_end is the time the table was computed as of.
        let as_of = self.watermark().unwrap_or(now_ms);
        let mut cols = batch.columns().to_vec();
        cols[0] = new_null_array(cols[0].data_type(), batch.num_rows());
        cols[1] = Arc::new(TimestampMillisecondArray::from(vec![
            as_of;
            batch.num_rows()
        ]));
        let batch = RecordBatch::try_new(self.plan.output_schema.clone(), cols)?;
        self.counters
            .rows_emitted
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        Ok(vec![Emission {
            batch,
            cumulative: true,
            state: None,
            window: None,
            open_sessions: false,
        }])
    }

    async fn close_sessions(&mut self, wm: i64) -> Result<Option<Emission>> {
        let Some(sessions) = &mut self.sessions else {
            return Ok(None);
        };
        let Some(closed) = sessions.close(&self.plan, wm).await? else {
            return Ok(None);
        };
        let rows = self.plan.close(vec![closed]).await?;
        let batch = concat(&self.plan, rows)?;
        if let Some(b) = &batch {
            let ends = ts_values(b.column(1))?;
            let emitted = &self.counters.rows_emitted;
            emitted.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
            self.counters
                .windows_closed
                .fetch_add(b.num_rows() as u64, Ordering::Relaxed);
            if let Some(m) = ends.iter().max() {
                self.counters.last_window_end.store(*m, Ordering::Relaxed);
            }
        }
        Ok(batch.map(|batch| Emission {
            batch,
            cumulative: false,
            state: None,
            window: None,
            open_sessions: false,
        }))
    }
}

fn concat(plan: &ContinuousPlan, rows: Vec<RecordBatch>) -> Result<Option<RecordBatch>> {
    Ok(match rows.len() {
        0 => None,
        1 => rows.into_iter().next(),
        _ => Some(concat_batches(&plan.output_schema, &rows)?),
    })
}
