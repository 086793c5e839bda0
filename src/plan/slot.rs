//! A leaf operator that yields whatever batches were last put in its slot.
//!
//! Continuous queries plan once and execute many times: the physical plan's
//! leaf reads from a [`Slot`] that the engine fills before each execution, so
//! no SQL is re-planned per batch.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
    PlanProperties, ReplaceChildrenOptions,
};

/// Batches waiting to be read by the next execution of a plan.
#[derive(Debug, Default, Clone)]
pub struct Slot(Arc<Mutex<Vec<RecordBatch>>>);

impl Slot {
    /// Replaces the slot's contents.
    pub fn put(&self, batches: Vec<RecordBatch>) {
        *self.0.lock().expect("slot lock") = batches;
    }

    fn take(&self) -> Vec<RecordBatch> {
        std::mem::take(&mut *self.0.lock().expect("slot lock"))
    }
}

/// The leaf operator reading a [`Slot`].
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
    /// A leaf named `label` reading `slot`, projected by `projection`.
    pub fn new(
        label: &'static str,
        slot: Slot,
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
            slot,
            full_schema,
            projection,
            props: Arc::new(props),
        })
    }
}

impl SlotExec {
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
        Ok(Box::pin(MemoryStream::try_new(
            self.slot.take(),
            self.full_schema.clone(),
            self.projection.clone(),
        )?))
    }
}

/// A table whose scans read a [`Slot`]; used to register a stream's batches.
#[derive(Debug)]
pub struct SlotTable {
    schema: SchemaRef,
    slot: Slot,
}

impl SlotTable {
    /// A table of `schema` reading `slot`.
    pub fn new(schema: SchemaRef, slot: Slot) -> Self {
        SlotTable { schema, slot }
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
            self.slot.clone(),
            self.schema.clone(),
            projection.cloned(),
        )?))
    }
}
