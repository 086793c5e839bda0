//! Session windows: the sessions of every group key and their partial states.
//!
//! A session of a key is the span `[first event, last event + gap]`; two
//! events of a key at most `gap` apart belong to one session. Records are
//! merged into their key's sessions as they are assigned, record by record
//! ([`Sessions::admit`]), so whether a record is late is judged against the
//! session it would join, not against its own `[t, t + gap]`:
//!
//! * a record touching a session that is closed at the record's running
//!   watermark is late — it never starts a second, overlapping session;
//! * otherwise a record touching open sessions joins (and may bridge) them,
//!   even when its own span alone would be closed;
//! * a record touching none starts a session unless its own span is closed.
//!
//! Partial states keep the span they were last labelled with, bucketed by
//! its end. A session can only close once the watermark passes its end, and
//! each state row's end is at most its session's, so closing looks only at
//! the buckets up to the largest end closing: rows of sessions that are
//! still open are relabelled with their session's span and move on, where
//! compaction merges them into one row per session.
//!
//! ```no_run
//! # fn f(plan: std::sync::Arc<runnel::plan::ContinuousPlan>) -> runnel::error::Result<()> {
//! use runnel::window::WindowEngine;
//! // A session query's engine keeps a `Sessions` instead of fixed windows.
//! let engine = WindowEngine::new(plan, Some(0), 5_000);
//! println!("{} open sessions", engine.open_windows());
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, TimestampMillisecondArray};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{
    DataType, Field, Int64Type, Schema, SchemaRef, TimestampMillisecondType,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};

use super::{WindowBuf, compact, take_rows, window_closed};
use crate::error::Result;
use crate::model::WindowKind;
use crate::plan::ContinuousPlan;

/// One session of a key: `[start, end]`, `end` being its last event + gap.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Span {
    start: i64,
    end: i64,
    /// Emitted; kept only while a record could still touch it.
    closed: bool,
}

impl Span {
    fn touches(&self, start: i64, end: i64) -> bool {
        self.start <= end && start <= self.end
    }
}

/// Sessions of every key, and the partial states of the open ones.
pub(crate) struct Sessions {
    gap: i64,
    grace: i64,
    /// Row-encoded group key → its sessions, none touching another.
    keys: HashMap<Box<[u8]>, Vec<Span>>,
    /// Open sessions by end, so closing walks them in end order.
    by_end: BTreeSet<(i64, Box<[u8]>)>,
    /// Closed sessions still remembered, in the order they closed (which is
    /// end order: a later close has a later watermark).
    closed: VecDeque<(i64, Box<[u8]>)>,
    /// Partial states by the bucket of the end of their label.
    states: BTreeMap<i64, WindowBuf>,
    /// Encodes the state's group key columns.
    converter: RowConverter,
    /// The state's group key columns (after the window columns).
    key_fields: Vec<Field>,
    /// A record joined or a session closed since the last
    /// [`Sessions::open_states`] (for `EMIT EVERY`).
    pub(crate) changed: bool,
}

impl Sessions {
    pub(crate) fn new(plan: &ContinuousPlan, grace: i64) -> Self {
        let WindowKind::Session { gap_ms } = plan.window.kind else {
            unreachable!("sessions of a query without session windows")
        };
        let key_fields: Vec<Field> = plan.state_schema.fields()[2..plan.group_columns]
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let converter = RowConverter::new(
            key_fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .expect("key types are checked when the query is planned");
        Sessions {
            gap: gap_ms,
            grace,
            keys: HashMap::new(),
            by_end: BTreeSet::new(),
            closed: VecDeque::new(),
            states: BTreeMap::new(),
            converter,
            key_fields,
            changed: false,
        }
    }

    /// Row-encodes key columns (cast to the state's types).
    pub(crate) fn encode(&self, cols: &[ArrayRef]) -> Result<Vec<Box<[u8]>>> {
        let n = cols.first().map_or(0, |c| c.len());
        if self.key_fields.is_empty() {
            return Ok(vec![Box::default(); n]);
        }
        let cols = cols
            .iter()
            .zip(&self.key_fields)
            .map(|(c, f)| match c.data_type() == f.data_type() {
                true => Ok(c.clone()),
                false => cast(c, f.data_type()),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let rows = self.converter.convert_columns(&cols)?;
        Ok(rows.iter().map(|r| r.as_ref().into()).collect())
    }

    /// The session a record of `key` at `t` is too late for at running
    /// watermark `frontier` (the rule is in the module doc): the closed
    /// session it touches, or its own `[t, t + gap)` when that alone would
    /// be closed; `None` when it may join its key's sessions.
    pub(crate) fn missed(&self, key: &[u8], t: i64, frontier: i64) -> Option<(i64, i64)> {
        let (start, end) = (t, t.saturating_add(self.gap));
        let kind = WindowKind::Session { gap_ms: self.gap };
        let closed = |e: i64| window_closed(kind, e, self.grace, frontier);
        let mut touched = false;
        for s in self.keys.get(key).into_iter().flatten() {
            if s.touches(start, end) {
                if s.closed || closed(s.end) {
                    return Some((s.start, s.end));
                }
                touched = true;
            }
        }
        (!touched && closed(end)).then_some((start, end))
    }

    /// Merges a record of `key` at `t` into its key's sessions.
    pub(crate) fn merge(&mut self, key: &[u8], t: i64) {
        self.changed = true;
        self.merge_span(key, t, t.saturating_add(self.gap));
    }

    /// Merges the span `[start, end]` into `key`'s sessions.
    fn merge_span(&mut self, key: &[u8], start: i64, end: i64) {
        let mut span = Span {
            start,
            end,
            closed: false,
        };
        let spans = self.keys.entry(key.into()).or_default();
        let mut k = 0;
        while k < spans.len() {
            if spans[k].touches(span.start, span.end) {
                let s = spans.remove(k);
                debug_assert!(!s.closed, "a record never joins a closed session");
                self.by_end.remove(&(s.end, key.into()));
                span.start = span.start.min(s.start);
                span.end = span.end.max(s.end);
            } else {
                k += 1;
            }
        }
        spans.push(span);
        self.by_end.insert((span.end, key.into()));
    }

    fn bucket(&self, end: i64) -> i64 {
        end.div_euclid(self.gap.max(1))
    }

    /// Adds partial states (labelled with their records' own spans, or
    /// with a session's), compacting the buckets that grew.
    pub(crate) async fn push(&mut self, plan: &ContinuousPlan, b: RecordBatch) -> Result<()> {
        for bucket in self.push_uncompacted(b)? {
            if let Some(buf) = self.states.get_mut(&bucket)
                && buf.needs_compaction()
            {
                compact(plan, buf).await?;
            }
        }
        Ok(())
    }

    /// Adds partial states to their buckets, returning the buckets.
    fn push_uncompacted(&mut self, b: RecordBatch) -> Result<Vec<i64>> {
        let ends = b.column(1).as_primitive::<TimestampMillisecondType>();
        let mut by_bucket: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (i, e) in ends.values().iter().enumerate() {
            by_bucket.entry(self.bucket(*e)).or_default().push(i as u32);
        }
        let whole = by_bucket.len() == 1;
        let mut touched = Vec::with_capacity(by_bucket.len());
        for (bucket, idx) in by_bucket {
            let part = match whole {
                true => b.clone(),
                false => take_rows(&b, idx)?,
            };
            self.states.entry(bucket).or_default().push(part);
            touched.push(bucket);
        }
        Ok(touched)
    }

    /// Closes every session the watermark `wm` has passed: their partial
    /// states, labelled with their sessions' spans, or `None`.
    pub(crate) async fn close(
        &mut self,
        plan: &ContinuousPlan,
        wm: i64,
    ) -> Result<Option<RecordBatch>> {
        let kind = WindowKind::Session { gap_ms: self.gap };
        let mut last_end = None;
        while let Some((end, _)) = self.by_end.first()
            && window_closed(kind, *end, self.grace, wm)
        {
            let (end, key) = self.by_end.pop_first().expect("present");
            if let Some(s) = self
                .keys
                .get_mut(&key)
                .and_then(|v| v.iter_mut().find(|s| s.end == end && !s.closed))
            {
                s.closed = true;
            }
            self.closed.push_back((end, key));
            last_end = Some(end);
            self.changed = true;
        }
        let out = match last_end {
            Some(e) => self.take_closed(plan, e).await?,
            None => None,
        };
        self.forget_closed(wm);
        Ok(out)
    }

    /// Splits the states of buckets up to `last_end`'s into those of closed
    /// sessions (returned) and those of open ones (relabelled and kept).
    async fn take_closed(
        &mut self,
        plan: &ContinuousPlan,
        last_end: i64,
    ) -> Result<Option<RecordBatch>> {
        let rest = self.states.split_off(&(self.bucket(last_end) + 1));
        let due = std::mem::replace(&mut self.states, rest);
        let batches: Vec<RecordBatch> = due.into_values().flat_map(|b| b.batches).collect();
        if batches.is_empty() {
            return Ok(None);
        }
        let all = concat_batches(&plan.state_schema, &batches)?;
        let keys = self.encode(&all.columns()[2..plan.group_columns])?;
        let starts = all.column(0).as_primitive::<TimestampMillisecondType>();
        let (mut done, mut done_span, mut open, mut open_span) = (vec![], vec![], vec![], vec![]);
        for (i, key) in keys.iter().enumerate() {
            let t = starts.value(i);
            let span = self
                .keys
                .get(key)
                .and_then(|v| v.iter().find(|s| s.start <= t && t <= s.end));
            match span {
                Some(s) if !s.closed => {
                    open.push(i as u32);
                    open_span.push((s.start, s.end));
                }
                Some(s) => {
                    done.push(i as u32);
                    done_span.push((s.start, s.end));
                }
                // A state outside every session cannot happen; finishing it
                // under its own label loses nothing.
                None => {
                    let e = all.column(1).as_primitive::<TimestampMillisecondType>();
                    done.push(i as u32);
                    done_span.push((t, e.value(i)));
                }
            }
        }
        if !open.is_empty() {
            let kept = relabel(&all, open, &open_span)?;
            self.push(plan, kept).await?;
        }
        if done.is_empty() {
            return Ok(None);
        }
        Ok(Some(relabel(&all, done, &done_span)?))
    }

    /// Forgets closed sessions no record can touch any more: one that could
    /// (`t <= end`) is late by its own span anyway once
    /// `end < wm − gap − grace`, since running watermarks are never below
    /// the closing watermark `wm`.
    fn forget_closed(&mut self, wm: i64) {
        let horizon = wm.saturating_sub(self.gap).saturating_sub(self.grace);
        while let Some((end, _)) = self.closed.front()
            && *end < horizon
        {
            let (end, key) = self.closed.pop_front().expect("present");
            if let Some(v) = self.keys.get_mut(&key) {
                v.retain(|s| !(s.closed && s.end == end));
                if v.is_empty() {
                    self.keys.remove(&key);
                }
            }
        }
    }

    /// The partial states of every open session, each row labelled with
    /// its session's current span, for provisional rows; `None` when no
    /// session is open. Clears [`Sessions::changed`].
    pub(crate) fn open_states(&mut self, plan: &ContinuousPlan) -> Result<Option<RecordBatch>> {
        self.changed = false;
        let batches: Vec<RecordBatch> = self.batches().cloned().collect();
        if batches.is_empty() {
            return Ok(None);
        }
        let all = concat_batches(&plan.state_schema, &batches)?;
        let keys = self.encode(&all.columns()[2..plan.group_columns])?;
        let starts = all.column(0).as_primitive::<TimestampMillisecondType>();
        let (mut idx, mut spans) = (vec![], vec![]);
        for (i, key) in keys.iter().enumerate() {
            let t = starts.value(i);
            if let Some(s) = self
                .keys
                .get(key)
                .and_then(|v| v.iter().find(|s| !s.closed && s.start <= t && t <= s.end))
            {
                idx.push(i as u32);
                spans.push((s.start, s.end));
            }
        }
        Ok(Some(relabel(&all, idx, &spans)?))
    }

    /// Number of open sessions.
    pub(crate) fn open(&self) -> usize {
        self.by_end.len()
    }

    /// Partial-state batches of the open sessions.
    pub(crate) fn batches(&self) -> impl Iterator<Item = &RecordBatch> {
        self.states.values().flat_map(|b| &b.batches)
    }

    /// Partial-state rows held.
    pub(crate) fn rows(&self) -> usize {
        self.states.values().map(|b| b.rows).sum()
    }

    /// Merges each bucket's states into one row per session label.
    pub(crate) async fn compact_all(&mut self, plan: &ContinuousPlan) -> Result<()> {
        for buf in self.states.values_mut() {
            if buf.batches.len() > 1 {
                compact(plan, buf).await?;
            }
        }
        Ok(())
    }

    /// The remembered closed sessions as a batch (key columns, start, end),
    /// for a checkpoint.
    pub(crate) fn closed_batch(&self) -> Result<RecordBatch> {
        let parser = self.converter.parser();
        let rows: Vec<_> = self.closed.iter().map(|(_, k)| parser.parse(k)).collect();
        let mut cols = match self.key_fields.is_empty() {
            true => vec![],
            false => self.converter.convert_rows(rows)?,
        };
        let mut starts = Vec::with_capacity(self.closed.len());
        for (end, key) in &self.closed {
            let s = self.keys[key]
                .iter()
                .find(|s| s.closed && s.end == *end)
                .map_or(*end, |s| s.start);
            starts.push(s);
        }
        let ends: Vec<i64> = self.closed.iter().map(|(e, _)| *e).collect();
        cols.push(Arc::new(Int64Array::from(starts)));
        cols.push(Arc::new(Int64Array::from(ends)));
        Ok(RecordBatch::try_new(self.closed_schema(), cols)?)
    }

    /// Schema of [`closed_batch`](Self::closed_batch).
    pub(crate) fn closed_schema(&self) -> SchemaRef {
        let mut fields = self.key_fields.clone();
        fields.push(Field::new("session_start", DataType::Int64, false));
        fields.push(Field::new("session_end", DataType::Int64, false));
        Arc::new(Schema::new(fields))
    }

    /// Rebuilds the sessions from a checkpoint's partial states and closed
    /// sessions.
    pub(crate) fn restore(
        &mut self,
        plan: &ContinuousPlan,
        states: Vec<RecordBatch>,
        closed: Vec<RecordBatch>,
    ) -> Result<()> {
        *self = Sessions::new(plan, self.grace);
        for b in &closed {
            let n = self.key_fields.len();
            let keys = self.encode(&b.columns()[..n])?;
            let starts = b.column(n).as_primitive::<Int64Type>();
            let ends = b.column(n + 1).as_primitive::<Int64Type>();
            for (i, key) in keys.into_iter().enumerate() {
                let span = Span {
                    start: starts.value(i),
                    end: ends.value(i),
                    closed: true,
                };
                self.keys.entry(key.clone()).or_default().push(span);
                self.closed.push_back((span.end, key));
            }
        }
        for b in states {
            let keys = self.encode(&b.columns()[2..plan.group_columns])?;
            let starts = b.column(0).as_primitive::<TimestampMillisecondType>();
            let ends = b.column(1).as_primitive::<TimestampMillisecondType>();
            for (i, key) in keys.iter().enumerate() {
                self.merge_span(key, starts.value(i), ends.value(i));
            }
            self.push_uncompacted(b)?;
        }
        Ok(())
    }
}

/// A record's index in its batch and one of its row-encoded group keys.
pub(crate) type RecordKey = (u32, Box<[u8]>);

/// `b`'s rows `idx`, their window columns set to `spans`.
fn relabel(b: &RecordBatch, idx: Vec<u32>, spans: &[(i64, i64)]) -> Result<RecordBatch> {
    let rows = take_rows(b, idx)?;
    let mut cols = rows.columns().to_vec();
    let ty = b.schema().field(0).data_type().clone();
    let starts: TimestampMillisecondArray = spans.iter().map(|s| Some(s.0)).collect();
    let ends: TimestampMillisecondArray = spans.iter().map(|s| Some(s.1)).collect();
    cols[0] = cast(&(Arc::new(starts) as ArrayRef), &ty)?;
    cols[1] = cast(&(Arc::new(ends) as ArrayRef), &ty)?;
    Ok(RecordBatch::try_new(rows.schema(), cols)?)
}

/// Each record's group keys from the key plan's output, in record order:
/// (record index, row-encoded key) pairs. The window-start column carries
/// the record's index through filters and joins.
pub(crate) fn keys_by_record(
    sessions: &Sessions,
    plan: &ContinuousPlan,
    out: &[RecordBatch],
) -> Result<Vec<RecordKey>> {
    let mut pairs = Vec::new();
    for b in out {
        let rec = cast(b.column(0), &DataType::Int64)?;
        let rec = rec.as_primitive::<Int64Type>();
        let keys = sessions.encode(&b.columns()[2..plan.group_columns])?;
        for (i, k) in keys.into_iter().enumerate() {
            pairs.push((rec.value(i) as u32, k));
        }
    }
    pairs.sort_by_key(|p| p.0);
    Ok(pairs)
}

/// `stream`'s records with the window columns of `schema` appended, the
/// start holding each record's index (see [`keys_by_record`]).
pub(crate) fn with_record_index(schema: &SchemaRef, stream: &RecordBatch) -> Result<RecordBatch> {
    let n = stream.num_rows();
    let mut cols = stream.columns().to_vec();
    cols.push(Arc::new(
        (0..n as i64)
            .map(Some)
            .collect::<TimestampMillisecondArray>(),
    ));
    cols.push(Arc::new(TimestampMillisecondArray::from(vec![0; n])));
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: i64, end: i64) -> Span {
        Span {
            start,
            end,
            closed: false,
        }
    }

    #[test]
    fn spans_touch_at_their_bounds() {
        assert!(span(25, 35).touches(35, 45));
        assert!(!span(25, 35).touches(36, 46));
    }
}
