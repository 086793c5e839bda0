//! A leaf operator that yields the batches of one execution of a plan.
//!
//! Continuous queries plan once and execute many times: the physical plan's
//! leaf is a [`SlotExec`] and [`bind`] makes, for each execution, a copy of
//! the plan whose leaves read a [`Slot`] of that execution's own, so no SQL
//! is re-planned per batch. Executions of one plan may overlap (a window
//! closing on the query's thread while a roll-up runs from an HTTP handler);
//! as no slot is shared between two of them, neither can read the other's
//! batches. A slot is filled once ([`bind`]) or fed batch by batch through a
//! channel while its execution runs ([`bind_live`]): the batch plan of a
//! query runs that way across polls (see [`super::PartialRun`]).

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
    PlanProperties, ReplaceChildrenOptions,
};
use futures::StreamExt;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};

/// The batches one execution of a plan reads; its first [`SlotExec`] to
/// execute takes them.
#[derive(Debug, Default, Clone)]
pub struct Slot(Arc<Mutex<Feed>>);

/// What a slot holds: batches given at once, or a channel that hands them
/// over as they come and ends when its sender is dropped.
#[derive(Debug, Default)]
enum Feed {
    Batches(Vec<RecordBatch>),
    Live(UnboundedReceiver<RecordBatch>),
    /// Taken by the execution.
    #[default]
    Taken,
}

impl Slot {
    /// A slot holding `batches`.
    pub fn new(batches: Vec<RecordBatch>) -> Self {
        Slot(Arc::new(Mutex::new(Feed::Batches(batches))))
    }

    fn take(&self) -> Feed {
        std::mem::take(&mut *self.0.lock().expect("slot lock"))
    }
}

/// `plan` ready for one execution over `batches`: its [`SlotExec`] leaves
/// replaced by copies reading a new slot holding `batches`, and every other
/// operator's execution state reset (as
/// [`reset_plan_states`](datafusion::physical_plan::execution_plan::reset_plan_states)
/// does), in the one walk over the plan that reset takes anyway: nothing is
/// planned again.
pub fn bind(
    plan: &Arc<dyn ExecutionPlan>,
    batches: Vec<RecordBatch>,
) -> Result<Arc<dyn ExecutionPlan>> {
    bind_slot(plan, Slot::new(batches))
}

/// `plan` ready for one execution whose leaves read the batches sent on
/// the returned channel, until it is dropped.
pub fn bind_live(
    plan: &Arc<dyn ExecutionPlan>,
) -> Result<(Arc<dyn ExecutionPlan>, UnboundedSender<RecordBatch>)> {
    let (tx, rx) = unbounded();
    let slot = Slot(Arc::new(Mutex::new(Feed::Live(rx))));
    Ok((bind_slot(plan, slot)?, tx))
}

fn bind_slot(plan: &Arc<dyn ExecutionPlan>, slot: Slot) -> Result<Arc<dyn ExecutionPlan>> {
    Arc::clone(plan)
        .transform_up(|node| {
            let node = match node.downcast_ref::<SlotExec>() {
                Some(leaf) => Arc::new(leaf.with_slot(slot.clone())),
                None => node.reset_state()?,
            };
            Ok(Transformed::yes(node))
        })
        .map(|t| t.data)
}

/// The leaf operator reading a [`Slot`]; as planned it reads an empty one,
/// until [`bind`] gives a copy of it an execution's batches.
#[derive(Debug)]
pub struct SlotExec {
    label: &'static str,
    slot: Slot,
    /// Schema of the batches put in the slot.
    full_schema: SchemaRef,
    projection: Option<Vec<usize>>,
    props: Arc<PlanProperties>,
}

impl SlotExec {
    /// A leaf named `label` over batches of `full_schema`, projected by
    /// `projection`.
    pub fn new(
        label: &'static str,
        full_schema: SchemaRef,
        projection: Option<Vec<usize>>,
    ) -> Result<Self> {
        let schema = match &projection {
            Some(p) => Arc::new(full_schema.project(p)?),
            None => full_schema.clone(),
        };
        let props = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(SlotExec {
            label,
            slot: Slot::default(),
            full_schema,
            projection,
            props: Arc::new(props),
        })
    }
}

impl SlotExec {
    /// This leaf reading `slot`; its properties are shared, so operators
    /// above it need not recompute theirs.
    fn with_slot(&self, slot: Slot) -> Self {
        SlotExec {
            label: self.label,
            slot,
            full_schema: self.full_schema.clone(),
            projection: self.projection.clone(),
            props: self.props.clone(),
        }
    }

    /// Indices of the slot's columns this leaf passes on (all when `None`).
    pub fn projection(&self) -> Option<&[usize]> {
        self.projection.as_deref()
    }
}

impl DisplayAs for SlotExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.label)?;
        if let Some(p) = &self.projection {
            let names: Vec<&str> = p
                .iter()
                .map(|i| self.full_schema.field(*i).name().as_str())
                .collect();
            write!(f, ": projection=[{}]", names.join(", "))?;
        }
        Ok(())
    }
}

impl ExecutionPlan for SlotExec {
    fn name(&self) -> &'static str {
        "SlotExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
        _: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        // The stream advertises the projected schema, as the leaf does:
        // operators above may build batches from it (a hash join
        // concatenates its build side with it).
        let schema = self.schema();
        Ok(match self.slot.take() {
            Feed::Batches(b) => {
                Box::pin(MemoryStream::try_new(b, schema, self.projection.clone())?)
            }
            Feed::Live(rx) => {
                let projection = self.projection.clone();
                let batches = rx.map(move |b| match &projection {
                    Some(p) => Ok(b.project(p)?),
                    None => Ok(b),
                });
                Box::pin(RecordBatchStreamAdapter::new(schema, batches))
            }
            Feed::Taken => Box::pin(MemoryStream::try_new(vec![], schema, None)?),
        })
    }
}

/// A table whose scans are [`SlotExec`] leaves; used to register a stream
/// whose batches each execution supplies.
#[derive(Debug)]
pub struct SlotTable {
    schema: SchemaRef,
}

impl SlotTable {
    /// A table of `schema`.
    pub fn new(schema: SchemaRef) -> Self {
        SlotTable { schema }
    }
}

#[async_trait]
impl TableProvider for SlotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(SlotExec::new(
            "StreamBatch",
            self.schema.clone(),
            projection.cloned(),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    /// A projected leaf's stream advertises the schema of the batches it
    /// yields: a hash join building its side from the stream concatenates
    /// them with that schema.
    #[tokio::test]
    async fn projected_stream_advertises_its_schema() {
        let full = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Int64, true),
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec!["a", "b"])),
            Arc::new(Int64Array::from(vec![10, 20])),
        ];
        let batch = RecordBatch::try_new(full.clone(), columns).unwrap();
        let leaf: Arc<dyn ExecutionPlan> =
            Arc::new(SlotExec::new("StreamBatch", full, Some(vec![1, 2])).unwrap());
        let leaf = bind(&leaf, vec![batch]).unwrap();
        let mut stream = leaf.execute(0, Arc::new(TaskContext::default())).unwrap();
        assert_eq!(stream.schema(), leaf.schema());
        let out = stream.next().await.unwrap().unwrap();
        assert_eq!(out.schema(), leaf.schema());
        assert_eq!(out.num_columns(), 2);
    }
}
