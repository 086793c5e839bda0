//! The query's `WHERE` on its stream, lifted out of the batch plan.
//!
//! A filter straight over the stream's leaf keeps the same records whether
//! it runs inside the batch plan or before it. Run before it, by the
//! engine, the queries sharing a read of a stream with the same predicate
//! filter each batch once between them (see `window::assign`): eight
//! dashboards that all leave out `geo = 'unknown'` evaluate the predicate
//! and copy the kept records once, not eight times. A query whose filter
//! no other query of its read shares runs the plan as DataFusion made it,
//! the filter inside: its `FilterExec` copies only the columns read above
//! it, into batches of 8 192 records, which the aggregate takes faster than
//! the small batches of one partition's poll. What the plan does above the
//! filter — projections, joins, the aggregate — is the same in both. A
//! volatile predicate (`random() < 0.1`) is never lifted, as each query
//! draws its own, nor is a dynamic one, which a join narrows while it runs.
//!
//! ```text
//! as made:  AggregateExec ← FilterExec: geo@1 != unknown, projection=[publisher@0, bid@2]
//!                            ← CooperativeExec ← SlotExec: projection=[publisher, geo, bid]
//! lifted:   AggregateExec ← ProjectionExec: publisher@0, bid@2
//!                            ← CooperativeExec ← SlotExec: projection=[publisher, geo, bid]
//!           filter, over the stream's columns and the window columns: geo@3 != unknown,
//!           the columns read of the records it keeps: publisher, bid
//! ```
//!
//! The leaf still reads the predicate's columns, so they are still decoded
//! ([`ContinuousPlan::stream_columns_read`]).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, new_null_array};
use datafusion::arrow::compute::FilterBuilder;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr_common::physical_expr::{is_volatile, snapshot_generation};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;

use super::ContinuousPlan;
use super::slot::SlotExec;
use crate::error::{Error, Result};

/// A predicate over a batch of the plan's input schema.
pub type Predicate = Arc<dyn PhysicalExpr>;

/// A query's `WHERE` on its stream, lifted out of its batch plan.
#[derive(Debug)]
pub struct Lifted {
    /// The predicate, over the plan's input schema (the stream's columns
    /// and the window columns).
    pub predicate: Predicate,
    /// The columns of the input schema the plan reads of the records the
    /// predicate keeps, in order: the others need not be kept.
    pub columns: Vec<usize>,
    /// The batch plan without the filter.
    plan: Arc<dyn ExecutionPlan>,
}

/// The filter straight over `batch_plan`'s stream leaf, lifted out of it;
/// `None` when it has no such filter or its predicate is volatile or
/// dynamic.
pub(super) fn lift_filter(batch_plan: &Arc<dyn ExecutionPlan>) -> Result<Option<Lifted>> {
    let mut lifted: Option<(Predicate, Vec<usize>)> = None;
    let plan = batch_plan.clone().transform_up(|node| {
        let Some(filter) = node.downcast_ref::<FilterExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some(leaf) = stream_leaf(filter.input()) else {
            return Ok(Transformed::no(node));
        };
        // A dynamic filter (one a join's build side narrows as it runs)
        // belongs to its execution.
        let predicate = filter.predicate();
        if lifted.is_some() || is_volatile(predicate) || snapshot_generation(predicate) != 0 {
            return Ok(Transformed::no(node));
        }
        // The filter's columns are the leaf's output; name them by the
        // leaf's input instead.
        let leaf_columns: Vec<usize> = match leaf.projection() {
            Some(p) => p.to_vec(),
            None => (0..leaf.schema().fields().len()).collect(),
        };
        let predicate = predicate.clone().transform(|e| {
            let Some(c) = e.downcast_ref::<Column>() else {
                return Ok(Transformed::no(e));
            };
            let column: Predicate = Arc::new(Column::new(c.name(), leaf_columns[c.index()]));
            Ok(Transformed::new(column, true, TreeNodeRecursion::Jump))
        })?;
        let mut columns: Vec<usize> = match filter.projection() {
            Some(kept) => kept.iter().map(|&i| leaf_columns[i]).collect(),
            None => leaf_columns.clone(),
        };
        columns.sort_unstable();
        columns.dedup();
        lifted = Some((predicate.data, columns));
        let input = filter.input().clone();
        let Some(kept) = filter.projection() else {
            return Ok(Transformed::yes(input));
        };
        let schema = input.schema();
        let columns = kept.iter().map(|&i| {
            let name = schema.field(i).name().clone();
            (Arc::new(Column::new(&name, i)) as Predicate, name)
        });
        let project: Arc<dyn ExecutionPlan> = Arc::new(ProjectionExec::try_new(columns, input)?);
        Ok(Transformed::yes(project))
    })?;
    Ok(lifted.map(|(predicate, columns)| Lifted {
        predicate,
        columns,
        plan: plan.data,
    }))
}

/// `plan` as the stream's leaf, if it is one, or one behind the operator
/// that makes it yield to the runtime now and then.
fn stream_leaf(plan: &Arc<dyn ExecutionPlan>) -> Option<&SlotExec> {
    match plan.downcast_ref::<CooperativeExec>() {
        Some(coop) => coop.input().downcast_ref::<SlotExec>(),
        None => plan.downcast_ref::<SlotExec>(),
    }
}

/// The records of `batch` that `predicate` keeps (a NULL drops the record,
/// as in `WHERE`), their `columns` (in order) copied and the others nulls:
/// the whole batch, uncopied, when it keeps all of them, and a column
/// holding nothing but nulls (one no query of the read decodes) made anew
/// rather than copied.
pub fn filter_batch(
    batch: &RecordBatch,
    predicate: &Predicate,
    columns: &[usize],
) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let mask = predicate.evaluate(batch)?.into_array(n)?;
    if mask.data_type() != &DataType::Boolean {
        return Err(Error::Execution(format!(
            "a WHERE predicate gave {} values, not booleans",
            mask.data_type()
        )));
    }
    let mask = mask.as_boolean();
    if mask.null_count() == 0 && mask.true_count() == n {
        return Ok(batch.clone());
    }
    let filter = FilterBuilder::new(mask).optimize().build();
    let kept = filter.count();
    let out = (batch.columns().iter().enumerate())
        .map(
            |(i, c)| match c.null_count() == c.len() || columns.binary_search(&i).is_err() {
                true => Ok(new_null_array(c.data_type(), kept)),
                false => filter.filter(c.as_ref()),
            },
        )
        .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
    Ok(RecordBatch::try_new(batch.schema(), out)?)
}

impl ContinuousPlan {
    /// The query's `WHERE` on its stream, when it can run before the batch
    /// plan rather than in it.
    pub fn filter(&self) -> Option<&Lifted> {
        self.filter.as_ref()
    }

    /// The batch plan: with its filter when it takes batches the engine
    /// did not filter, without it when it takes records the
    /// [`filter`](Self::filter) kept.
    pub(super) fn batch_plan(&self, filtered: bool) -> &Arc<dyn ExecutionPlan> {
        match (&self.filter, filtered) {
            (Some(f), true) => &f.plan,
            _ => &self.batch_plan,
        }
    }

    /// The records of `batch` (of [`input_schema`](Self::input_schema))
    /// the [`filter`](Self::filter) keeps, with the columns the batch plan
    /// reads of them.
    pub fn keep(&self, batch: RecordBatch) -> Result<RecordBatch> {
        match &self.filter {
            Some(f) => filter_batch(&batch, &f.predicate, &f.columns),
            None => Ok(batch),
        }
    }
}
