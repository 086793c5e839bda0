//! What the queries sharing a read of a stream work out once per batch
//! ([`WindowMemo`]): a batch's windows under each window spec
//! (`assign::Spans`), and the records a `WHERE` several of them share
//! keeps ([`SharedFilters`], counted by the read as its queries come and
//! go from what each asks, [`FilterNeed`]). The first query to ask makes
//! it; the others, holding clones of the same batch, take it.
//!
//! ```text
//! read: q1, q2 ask `geo <> 'unknown'` (columns a, b and c, d), q3 `v > 0`
//!   SharedFilters: [geo <> 'unknown': a, b, c, d]   (q3's filter is its own)
//! batch 17, first asked by q2: kept records of a, b, c, d  ── q1 takes them too
//! ```

use std::sync::{Arc, Mutex};

use datafusion::arrow::record_batch::RecordBatch;

use super::assign::{Spans, lean};
use crate::error::Result;
use crate::model::WindowKind;
use crate::plan::{ContinuousPlan, Predicate};

/// What a query asks of the batches of a read it shares with others: its
/// window spec and event-time column, its `WHERE` on the stream, and the
/// columns its batch plan reads of the records the filter keeps.
#[derive(Debug, Clone)]
pub struct FilterNeed {
    key: Key,
    predicate: Predicate,
    columns: Vec<usize>,
}

impl FilterNeed {
    /// What the query of `plan`, with event time in column `event_time`,
    /// asks; `None` when its records are never kept for it by others: no
    /// filter to lift, arrival time, hopping windows or sessions.
    pub fn of(plan: &ContinuousPlan, event_time: Option<usize>) -> Option<FilterNeed> {
        let kind = plan.window.kind;
        let (Some(c), Some(f), true) = (event_time, plan.filter(), lean(kind)) else {
            return None;
        };
        Some(FilterNeed {
            key: (c, kind),
            predicate: f.predicate.clone(),
            columns: f.columns.clone(),
        })
    }

    /// Whether it asks for `filter` under `key`.
    fn same_filter(&self, key: Key, filter: &Predicate) -> bool {
        self.key == key && self.predicate.as_ref() == filter.as_ref()
    }
}

/// The filters that several queries of a read ask for ([`FilterNeed`]),
/// each with the columns any of them reads of the records it keeps; kept
/// by the read as its queries come and go. A filter only one query asks
/// for is not here: that query's batch plan runs it, copying only what it
/// reads into batches of the plan's size, cheaper than keeping records
/// for it before.
#[derive(Debug, Default)]
pub struct SharedFilters(Mutex<Vec<FilterNeed>>);

impl SharedFilters {
    /// Sets the filters to those shared among `needs`, one per query of
    /// the read. Filters are told apart by what they compute (DataFusion's
    /// equality of expressions), not by their text.
    pub fn set<'a>(&self, needs: impl IntoIterator<Item = &'a FilterNeed>) {
        let mut all: Vec<(FilterNeed, usize)> = Vec::new();
        for need in needs {
            match all
                .iter_mut()
                .find(|(a, _)| a.same_filter(need.key, &need.predicate))
            {
                Some((a, askers)) => {
                    a.columns.extend(&need.columns);
                    a.columns.sort_unstable();
                    a.columns.dedup();
                    *askers += 1;
                }
                None => all.push((need.clone(), 1)),
            }
        }
        let shared = all.into_iter().filter(|(_, askers)| *askers > 1);
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = shared.map(|(n, _)| n).collect();
    }

    /// The columns the queries sharing `filter` under `key` read of the
    /// records it keeps; `None` when no other query of the read shares it,
    /// or when they leave out one of `mine` (the asking query's, when the
    /// read has not counted it yet).
    fn columns(&self, key: Key, filter: &Predicate, mine: &[usize]) -> Option<Vec<usize>> {
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let need = all.iter().find(|n| n.same_filter(key, filter))?;
        covers(&need.columns, mine).then(|| need.columns.clone())
    }
}

/// Whether the sorted `columns` hold every one of `wanted`.
fn covers(columns: &[usize], wanted: &[usize]) -> bool {
    wanted.iter().all(|c| columns.binary_search(c).is_ok())
}

/// A partition batch's windows (`Spans`) per event-time column and window
/// spec, and its records with their windows that a shared filter keeps,
/// made by the first query that asks and shared by the batch's clones: the
/// queries sharing one read of a stream each get a clone of its batches.
#[derive(Debug, Clone, Default)]
pub struct WindowMemo {
    made: Arc<Mutex<Made>>,
    /// The filters the read's queries share (the read's own, as it is
    /// when a query asks).
    shared: Arc<SharedFilters>,
}

/// What was made so far, by event-time column and window spec.
#[derive(Debug, Default)]
struct Made {
    spans: Vec<(Key, Arc<Spans>)>,
    /// The records, with their windows' columns, a shared filter kept,
    /// with the columns kept of them.
    kept: Vec<(Key, Predicate, Vec<usize>, RecordBatch)>,
}
type Key = (usize, WindowKind);

impl WindowMemo {
    /// An empty memo for a batch of a read whose queries share the
    /// filters `shared`.
    pub fn new(shared: Arc<SharedFilters>) -> WindowMemo {
        WindowMemo {
            made: Arc::default(),
            shared,
        }
    }

    fn made(&self) -> std::sync::MutexGuard<'_, Made> {
        self.made.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The spans under `key`, made by `make` if no query made them yet
    /// (while the others wait, rather than make them too).
    pub(super) fn get_or_make(
        &self,
        key: Key,
        make: impl FnOnce() -> Result<Spans>,
    ) -> Result<Arc<Spans>> {
        let mut made = self.made();
        if let Some((_, spans)) = made.spans.iter().find(|(k, _)| *k == key) {
            return Ok(spans.clone());
        }
        let spans = Arc::new(make()?);
        made.spans.push((key, spans.clone()));
        Ok(spans)
    }

    /// The records, with their windows under `key`, that `filter` keeps,
    /// with the columns `mine` of them, when other queries of the read
    /// share the filter: made by `make`, given the columns those queries
    /// read, if no query made them yet — the predicate evaluated and the
    /// columns copied once for all of them. `None` when the filter is not
    /// shared.
    pub(super) fn kept(
        &self,
        key: Key,
        filter: &Predicate,
        mine: &[usize],
        make: impl FnOnce(&[usize]) -> Result<RecordBatch>,
    ) -> Result<Option<RecordBatch>> {
        let Some(columns) = self.shared.columns(key, filter, mine) else {
            return Ok(None);
        };
        let mut made = self.made();
        let same = |(k, p, c, _): &&(Key, Predicate, Vec<usize>, RecordBatch)| {
            *k == key && p.as_ref() == filter.as_ref() && covers(c, mine)
        };
        if let Some((.., batch)) = made.kept.iter().find(same) {
            return Ok(Some(batch.clone()));
        }
        let batch = make(&columns)?;
        made.kept
            .push((key, filter.clone(), columns, batch.clone()));
        Ok(Some(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, ArrayRef};

    #[test]
    fn kept_records_are_made_once_per_shared_filter_and_shared_by_clones() {
        use datafusion::arrow::array::Int64Array;
        use datafusion::logical_expr::Operator;
        use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
        use datafusion::scalar::ScalarValue;
        // `v > bound` over column 0, built anew each time as each query's
        // plan builds its own.
        let over = |bound: i64| -> Predicate {
            Arc::new(BinaryExpr::new(
                Arc::new(Column::new("v", 0)),
                Operator::Gt,
                Arc::new(Literal::new(ScalarValue::Int64(Some(bound)))),
            ))
        };
        let ints = |b: &RecordBatch| {
            let c = b.column(0).as_any().downcast_ref::<Int64Array>();
            c.expect("integers").values().to_vec()
        };
        let batch = RecordBatch::try_from_iter_with_nullable([
            (
                "v",
                Arc::new(Int64Array::from(vec![1, 5, 9])) as ArrayRef,
                true,
            ),
            (
                "w",
                Arc::new(Int64Array::from(vec![2, 6, 10])) as ArrayRef,
                true,
            ),
        ])
        .unwrap();
        let ten = WindowKind::Tumbling { size_ms: 10 };
        let need = |key: Key, bound: i64, columns: &[usize]| FilterNeed {
            key,
            predicate: over(bound),
            columns: columns.to_vec(),
        };
        // Two queries read v of what `v > 4` keeps, two all of what `v > 0`
        // keeps; one alone filters `v > 6`, one alone `v > 4` on another
        // window.
        let needs = [
            need((0, ten), 4, &[0]),
            need((0, ten), 4, &[0]),
            need((0, ten), 0, &[0, 1]),
            need((0, ten), 0, &[0, 1]),
            need((0, ten), 6, &[0]),
            need((0, WindowKind::Tumbling { size_ms: 5 }), 4, &[0]),
        ];
        let shared = Arc::new(SharedFilters::default());
        shared.set(&needs);
        let memo = WindowMemo::new(shared.clone());
        let clone = memo.clone();
        let made = std::cell::Cell::new(0);
        let kept = |m: &WindowMemo, key: Key, bound: i64, mine: &[usize]| {
            let f = over(bound);
            let make = |columns: &[usize]| {
                made.set(made.get() + 1);
                crate::plan::filter_batch(&batch, &f, columns)
            };
            m.kept(key, &f, mine, make).unwrap()
        };
        let a = kept(&memo, (0, ten), 4, &[0]).expect("shared");
        let b = kept(&clone, (0, ten), 4, &[0]).expect("shared");
        assert_eq!(made.get(), 1);
        assert!(Arc::ptr_eq(a.column(0), b.column(0)));
        assert_eq!(ints(&a), [5, 9]);
        // A column none of the queries sharing the filter reads is nulls.
        assert_eq!((a.column(1).len(), a.column(1).null_count()), (2, 2));
        // A filter keeping every record hands the batch over uncopied.
        let all = kept(&clone, (0, ten), 0, &[1]).expect("shared");
        assert!(Arc::ptr_eq(all.column(1), batch.column(1)));
        // A filter no other query shares is the query's own, as is one
        // whose sharers do not read a column the asking query reads.
        assert!(kept(&clone, (0, ten), 6, &[0]).is_none());
        assert!(kept(&clone, (0, WindowKind::Tumbling { size_ms: 5 }), 4, &[0]).is_none());
        assert!(kept(&clone, (1, ten), 4, &[0]).is_none());
        assert!(kept(&clone, (0, ten), 4, &[1]).is_none());
        assert_eq!(made.get(), 2);
        // Once a query reading w joins them, the records are kept anew
        // with w, for it.
        shared.set(needs.iter().chain([&need((0, ten), 4, &[1])]));
        let with_w = kept(&clone, (0, ten), 4, &[1]).expect("shared");
        assert_eq!(with_w.column(1).null_count(), 0);
        assert_eq!(made.get(), 3);
        // A memo of its own (a batch no read shares) shares nothing.
        assert!(kept(&WindowMemo::default(), (0, ten), 4, &[0]).is_none());
    }

    #[test]
    fn spans_are_made_once_per_window_spec_and_shared_by_clones() {
        let memo = WindowMemo::default();
        let shared = memo.clone();
        let ten = WindowKind::Tumbling { size_ms: 10 };
        let five = WindowKind::Tumbling { size_ms: 5 };
        let made = std::cell::Cell::new(0);
        let make = |kind| {
            made.set(made.get() + 1);
            Ok(Spans::new(kind, &[1, 12], None))
        };
        let a = memo.get_or_make((0, ten), || make(ten)).unwrap();
        let b = shared.get_or_make((0, ten), || make(ten)).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(made.get(), 1);
        // Another window spec, or another event-time column, is made anew.
        let c = shared.get_or_make((0, five), || make(five)).unwrap();
        assert_eq!(c.windows, [(5, 0), (15, 10)]);
        shared.get_or_make((1, ten), || make(ten)).unwrap();
        assert_eq!(made.get(), 3);
        // A memo of its own (a new batch) shares nothing.
        WindowMemo::default()
            .get_or_make((0, ten), || make(ten))
            .unwrap();
        assert_eq!(made.get(), 4);
    }
}
