//! The query's `WHERE` on its stream, lifted out of the batch plan.
//!
//! A filter straight over the stream's leaf keeps the same records whether
//! it runs inside the batch plan or before it. Run before it, by the
//! engine, the queries sharing a read of a stream with the same predicate
//! filter each batch once between them (see `window::assign`): eight
//! dashboards that all leave out `geo = 'unknown'` evaluate the predicate
//! and copy the kept records once, not eight times. What the plan does
//! above the filter — projections, joins, the aggregate — is unchanged. A
//! volatile predicate (`random() < 0.1`) stays in the plan, as each query
//! draws its own, and so does a dynamic one, which a join narrows while
//! it runs.
//!
//! ```text
//! before: AggregateExec ← FilterExec: geo@1 != unknown, projection=[publisher@0, bid@2]
//!                          ← CooperativeExec ← SlotExec: projection=[publisher, geo, bid]
//! after:  AggregateExec ← ProjectionExec: publisher@0, bid@2
//!                          ← CooperativeExec ← SlotExec: projection=[publisher, geo, bid]
//!         filter, over the stream's columns and the window columns: geo@3 != unknown
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

/// `batch_plan` without the filter straight over its stream leaf, and that
/// filter's predicate over the leaf's whole input (the stream's columns and
/// the window columns); the plan as it is, and `None`, when it has no such
/// filter or its predicate is volatile or dynamic.
pub(super) fn lift_filter(
    batch_plan: Arc<dyn ExecutionPlan>,
) -> Result<(Arc<dyn ExecutionPlan>, Option<Predicate>)> {
    let mut lifted: Option<Predicate> = None;
    let plan = batch_plan.transform_up(|node| {
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
        lifted = Some(predicate.data);
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
    Ok((plan.data, lifted))
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
/// as in `WHERE`): the whole batch, uncopied, when it keeps all of them,
/// and a column holding nothing but nulls (one no query of the read
/// decodes) made anew rather than copied.
pub fn filter_batch(batch: &RecordBatch, predicate: &Predicate) -> Result<RecordBatch> {
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
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.null_count() == c.len() {
            true => Ok(new_null_array(c.data_type(), kept)),
            false => filter.filter(c.as_ref()),
        })
        .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

impl ContinuousPlan {
    /// The query's `WHERE` on its stream, when it runs before the batch
    /// plan rather than in it: every batch the batch plan takes passed it.
    pub fn filter(&self) -> Option<&Predicate> {
        self.filter.as_ref()
    }

    /// The records of `batch` (of [`input_schema`](Self::input_schema))
    /// the batch plan takes: those passing [`filter`](Self::filter).
    pub fn keep(&self, batch: RecordBatch) -> Result<RecordBatch> {
        match &self.filter {
            Some(f) => filter_batch(&batch, f),
            None => Ok(batch),
        }
    }
}
