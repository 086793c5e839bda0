//! Compiling a continuous query into three Arrow operator plans.
//!
//! A continuous `SELECT ... GROUP BY k WINDOW ...` over a stream is planned by
//! DataFusion once, as if it were `SELECT window_start, window_end, ... GROUP
//! BY window_start, window_end, k` over a table holding the stream's columns
//! plus the two window columns. The physical plan is then cut at its
//! aggregate:
//!
//! * the **batch plan** — filter, projection and a `Partial` aggregate — runs
//!   on decoded batches and yields partial states, kept running across polls
//!   ([`PartialRun`]); a filter straight over the stream runs before it
//!   instead, once for the queries of a read that share it (`filter.rs`);
//! * the **reduce plan** — a `PartialReduce` aggregate — compacts the partial
//!   states a window has collected;
//! * the **close plan** — the `Final` aggregate and everything above it
//!   (`HAVING`, `ORDER BY ... LIMIT`, projection) — runs once per closing
//!   window and yields its rows.
//!
//! A query with `EMIT EVERY` next to its window also runs the close plan on
//! open windows that changed ([`ContinuousPlan::close_provisional`]); its
//! rows then end with a `final` column saying which rows are provisional.
//! A query with `ALLOW LATE` runs it again on a closed window that late
//! records corrected; its rows end with a `revision` column.
//!
//! ```no_run
//! # async fn f(stream: runnel::model::StreamDef) -> runnel::error::Result<()> {
//! use runnel::plan::ContinuousPlan;
//! use runnel::sql::{parse_statement, Statement};
//! let Statement::Select(select) = parse_statement(
//!     "SELECT geo, count(*) AS n FROM imps GROUP BY geo WINDOW 10s")?.stmt else { unreachable!() };
//! let plan = ContinuousPlan::build(&stream, &select).await?;
//! println!("{}", plan.explain());
//! # Ok(()) }
//! ```

pub mod bounded;
mod filter;
mod live;
mod rewrite;
pub mod slot;
mod table;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use datafusion::arrow::array::{BooleanArray, Int64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{ExecutionPlan, collect, displayable};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DFStatement;
use futures::FutureExt;

use crate::error::{Error, Result, panic_message};
use crate::model::{SelectSql, StreamDef};
use crate::model::{WindowKind, WindowSpec};
pub use filter::{Lifted, Predicate, filter_batch};
pub use live::PartialRun;
use rewrite::rewrite;
pub use rewrite::{locate_in, plan_error};
use slot::{SlotExec, SlotTable, bind};
pub use table::RefTable;

/// Name of the window start column.
pub const WINDOW_START: &str = "window_start";
/// Name of the window end column.
pub const WINDOW_END: &str = "window_end";
pub use crate::model::emission::{FINAL, REVISION};

/// The arrow type of window bounds.
pub fn window_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

/// A new DataFusion context with Runnel's functions and settings.
pub fn new_context() -> SessionContext {
    let config = SessionConfig::new()
        .with_target_partitions(1)
        .with_information_schema(false);
    let ctx = SessionContext::new_with_config(config);
    crate::udaf::register(&ctx);
    bounded::register(&ctx);
    ctx
}

/// Like [`new_context`], with `config`'s settings and on `runtime` (whose
/// memory pool bounds what the context's queries may use).
pub fn new_context_on(
    config: SessionConfig,
    runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
) -> SessionContext {
    let config = config
        .with_target_partitions(1)
        .with_information_schema(false);
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    crate::udaf::register(&ctx);
    bounded::register(&ctx);
    ctx
}

/// A continuous query compiled into its batch, reduce and close plans.
#[derive(Debug)]
pub struct ContinuousPlan {
    /// The window clause (cumulative when the query has none).
    pub window: WindowSpec,
    /// Stream columns plus `window_start` and `window_end`.
    pub input_schema: SchemaRef,
    /// Schema of partial states: group columns, then accumulator states.
    pub state_schema: SchemaRef,
    /// Schema of emitted rows.
    pub output_schema: SchemaRef,
    /// `EMIT EVERY` of a windowed query: how often, in ms of wall time, the
    /// open windows that changed emit provisional rows.
    pub early_ms: Option<i64>,
    /// Number of group columns in the state (including the two window columns).
    pub group_columns: usize,
    /// As DataFusion made it, with the query's filters.
    batch_plan: Arc<dyn ExecutionPlan>,
    /// The query's `WHERE` on its stream, lifted out of the batch plan to
    /// run before it when queries share it (see `filter.rs`).
    filter: Option<Lifted>,
    /// The batch plan without its aggregate: each surviving record's group
    /// columns (sessions merge per key before aggregation).
    key_plan: Arc<dyn ExecutionPlan>,
    reduce_plan: Arc<dyn ExecutionPlan>,
    close_plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
}

impl ContinuousPlan {
    /// Plans `select` over `stream`.
    pub async fn build(stream: &StreamDef, select: &SelectSql) -> Result<Self> {
        Self::build_with_tables(stream, select, &[]).await
    }

    /// Plans `select` over `stream`, with reference tables it may join.
    pub async fn build_with_tables(
        stream: &StreamDef,
        select: &SelectSql,
        tables: &[RefTable],
    ) -> Result<Self> {
        let window = select
            .window
            .unwrap_or_else(|| WindowSpec::cumulative(select.emit_ms.unwrap_or(1000)));
        let early_ms = select.window.and(select.emit_ms);
        let mut fields = stream.fields();
        fields.push(Field::new(WINDOW_START, window_type(), false));
        fields.push(Field::new(WINDOW_END, window_type(), false));
        let input_schema = Arc::new(Schema::new(fields));
        let ctx = new_context();
        ctx.register_table(
            stream.name.as_str(),
            Arc::new(SlotTable::new(input_schema.clone())),
        )?;
        for t in tables {
            ctx.register_table(t.name.as_str(), t.provider()?)?;
        }
        let stmt = rewrite(select, stream)?;
        let state = ctx.state();
        let logical = state
            .statement_to_plan(DFStatement::Statement(Box::new(stmt)))
            .await
            .map_err(|e| plan_error(&select.sql, e))?;
        let physical = state
            .create_physical_plan(&logical)
            .await
            .map_err(|e| plan_error(&select.sql, e))?;

        // The topmost aggregate splits the plan.
        let mut top: Option<Arc<dyn ExecutionPlan>> = None;
        physical.apply(|node| {
            if node.downcast_ref::<AggregateExec>().is_some() {
                top = Some(node.clone());
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        let top = top.ok_or_else(|| {
            Error::sql(
                "a continuous query needs an aggregate or GROUP BY (e.g. count(*))",
                None,
            )
        })?;
        let agg = top.downcast_ref::<AggregateExec>().expect("aggregate");
        // With one partition DataFusion plans a single-stage aggregate; find or
        // rebuild the partial stage.
        let partial: Arc<AggregateExec> = match agg.mode() {
            AggregateMode::Single => partial_of(agg)?,
            AggregateMode::Final => {
                let mut found = None;
                agg.input().apply(|n| {
                    if let Some(a) = n.downcast_ref::<AggregateExec>() {
                        found = Some(partial_of(a)?);
                        return Ok(TreeNodeRecursion::Stop);
                    }
                    Ok(TreeNodeRecursion::Continue)
                })?;
                found.ok_or_else(|| Error::Execution("partial aggregate not found".into()))?
            }
            other => {
                return Err(Error::Execution(format!(
                    "unexpected aggregate mode {other:?}"
                )));
            }
        };
        // Each execution hands its batch to one stream leaf; a second would
        // read nothing.
        let mut stream_leaves = 0;
        partial.input().apply(|node| {
            stream_leaves += usize::from(node.downcast_ref::<SlotExec>().is_some());
            Ok(TreeNodeRecursion::Continue)
        })?;
        if stream_leaves > 1 {
            return Err(Error::sql(
                format!(
                    "a continuous query reads its stream once; stream {} appears twice (joined with itself or in a subquery)",
                    stream.name
                ),
                None,
            ));
        }
        if partial.group_expr().groups().len() > 1 {
            return Err(Error::sql(
                "GROUPING SETS, CUBE and ROLLUP are not supported in continuous queries",
                None,
            ));
        }
        // Aggregates check their arguments when they start accumulating
        // (`approx_percentile(bid, 2)`): made once here, a mistake is the
        // CREATE's 400, not the running query's failure.
        for agg in partial.aggr_expr() {
            agg.create_accumulator()
                .map_err(|e| Error::sql(format!("{}: {e}", agg.name()), None))?;
        }
        let state_schema = partial.schema();
        let final_group = partial.group_expr().as_final();
        let group_columns = final_group.expr().len();
        // Sessions keep an index of their keys in Arrow's row format.
        if matches!(window.kind, WindowKind::Session { .. }) {
            let keys = state_schema.fields()[2..group_columns].iter();
            RowConverter::new(
                keys.map(|f| SortField::new(f.data_type().clone()))
                    .collect(),
            )
            .map_err(|e| {
                Error::sql(
                    format!("session windows cannot group by these keys: {e}"),
                    None,
                )
            })?;
        }

        let reduce_plan: Arc<dyn ExecutionPlan> = Arc::new(AggregateExec::try_new(
            AggregateMode::PartialReduce,
            final_group.clone(),
            partial.aggr_expr().to_vec(),
            partial.filter_expr().to_vec(),
            Arc::new(SlotExec::new("WindowState", state_schema.clone(), None)?),
            partial.input_schema(),
        )?);

        let final_agg: Arc<dyn ExecutionPlan> = Arc::new(AggregateExec::try_new(
            AggregateMode::Final,
            final_group,
            partial.aggr_expr().to_vec(),
            partial.filter_expr().to_vec(),
            Arc::new(SlotExec::new("WindowState", state_schema.clone(), None)?),
            partial.input_schema(),
        )?);
        let close_plan = physical
            .transform_down(|node| {
                if Arc::ptr_eq(&node, &top) {
                    Ok(Transformed::new(
                        final_agg.clone(),
                        true,
                        TreeNodeRecursion::Jump,
                    ))
                } else {
                    Ok(Transformed::no(node))
                }
            })?
            .data;
        let mut output_schema = close_plan.schema();
        if matches!(window.kind, WindowKind::Cumulative { .. }) {
            // A cumulative table's rows belong to no window: their
            // window_start is NULL (see `WindowEngine::emit_open`).
            let mut fields: Vec<Field> = output_schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields[0] = fields[0].clone().with_nullable(true);
            output_schema = Arc::new(Schema::new_with_metadata(
                fields,
                output_schema.metadata().clone(),
            ));
        }
        let added = [
            (early_ms.is_some(), FINAL, DataType::Boolean, "EMIT EVERY"),
            (
                window.allow_late_ms > 0,
                REVISION,
                DataType::Int64,
                "ALLOW LATE",
            ),
        ];
        for (_, name, ty, clause) in added.into_iter().filter(|a| a.0) {
            if output_schema.field_with_name(name).is_ok() {
                return Err(Error::sql(
                    format!(
                        "a query with {clause} adds a column named {name}: rename the query's own"
                    ),
                    None,
                ));
            }
            let mut fields: Vec<Field> = output_schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields.push(Field::new(name, ty, false));
            output_schema = Arc::new(Schema::new_with_metadata(
                fields,
                output_schema.metadata().clone(),
            ));
        }
        let key_plan: Arc<dyn ExecutionPlan> = Arc::new(ProjectionExec::try_new(
            partial.group_expr().expr().to_vec(),
            partial.input().clone(),
        )?);
        let batch_plan: Arc<dyn ExecutionPlan> = partial;
        let filter = filter::lift_filter(&batch_plan)?;
        Ok(ContinuousPlan {
            window,
            input_schema,
            state_schema,
            output_schema,
            early_ms,
            group_columns,
            batch_plan,
            filter,
            key_plan,
            reduce_plan,
            close_plan,
            task: ctx.task_ctx(),
        })
    }

    /// Executes `plan` (the `stage` plan) over `batches`. Each execution
    /// reads its own copy of the plan's leaves ([`bind`]), so executions may
    /// overlap: the query's thread closing a window while a roll-up runs the
    /// close plan. A panic inside an operator ends the execution with an
    /// error naming the stage, not the thread that ran it.
    async fn run(
        &self,
        stage: &str,
        plan: &Arc<dyn ExecutionPlan>,
        batches: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>> {
        let execution = async {
            let plan = bind(plan, batches)?;
            Ok::<_, Error>(collect(plan, self.task.clone()).await?)
        };
        let out = AssertUnwindSafe(execution)
            .catch_unwind()
            .await
            .map_err(|p| {
                Error::Execution(format!(
                    "internal error in the {stage} plan: {}",
                    panic_message(p.as_ref())
                ))
            })??;
        Ok(out.into_iter().filter(|b| b.num_rows() > 0).collect())
    }

    /// Runs the batch plan, with its filters, on one batch of
    /// `input_schema`, returning partial states.
    pub async fn partial(&self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        self.run("per-batch", &self.batch_plan, vec![batch]).await
    }

    /// The group columns of each record of `batch` that passes the query's
    /// filters and joins, window columns first, as the partial states
    /// would hold them; a record joined to several rows appears once per
    /// row, a filtered one not at all.
    pub async fn group_keys(&self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        self.run("per-batch key", &self.key_plan, vec![batch]).await
    }

    /// Merges partial states into fewer rows, still partial.
    pub async fn reduce(&self, states: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        self.run("window-merge", &self.reduce_plan, states).await
    }

    /// Whether the close plan finishes each group on its own (the final
    /// aggregate, `HAVING`, projections, sorts without a limit), so that
    /// the states of several windows closed in one run give each window
    /// the rows it would get alone. `ORDER BY ... LIMIT`, or anything
    /// else over the groups, needs a run per window.
    pub fn closes_windows_apart(&self) -> bool {
        fn per_group(plan: &Arc<dyn ExecutionPlan>) -> bool {
            let kind = matches!(
                plan.name(),
                "AggregateExec"
                    | "ProjectionExec"
                    | "FilterExec"
                    | "CoalesceBatchesExec"
                    | "CoalescePartitionsExec"
                    | "RepartitionExec"
                    | "SortExec"
                    | "SortPreservingMergeExec"
                    | "SlotExec"
            );
            kind && plan.fetch().is_none() && plan.children().into_iter().all(per_group)
        }
        per_group(&self.close_plan)
    }

    /// Finishes partial states into output rows.
    pub async fn close(&self, states: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        self.finish(states, true, 0).await
    }

    /// Finishes an open window's partial states into its provisional rows
    /// (`final` false).
    pub async fn close_provisional(&self, states: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        self.finish(states, false, 0).await
    }

    /// Finishes a closed window's partial states, corrected by late records
    /// for the `revision`-th time, into its rows.
    pub async fn close_revision(
        &self,
        states: Vec<RecordBatch>,
        revision: i64,
    ) -> Result<Vec<RecordBatch>> {
        self.finish(states, true, revision).await
    }

    async fn finish(
        &self,
        states: Vec<RecordBatch>,
        last: bool,
        revision: i64,
    ) -> Result<Vec<RecordBatch>> {
        let rows = self.run("window-close", &self.close_plan, states).await?;
        let revised = self.window.allow_late_ms > 0;
        if self.early_ms.is_none() && !revised {
            return Ok(rows);
        }
        rows.into_iter()
            .map(|b| {
                let n = b.num_rows();
                let mut cols = b.columns().to_vec();
                if self.early_ms.is_some() {
                    cols.push(Arc::new(BooleanArray::from(vec![last; n])));
                }
                if revised {
                    cols.push(Arc::new(Int64Array::from(vec![revision; n])));
                }
                Ok(RecordBatch::try_new(self.output_schema.clone(), cols)?)
            })
            .collect()
    }

    /// Indices of the stream columns the per-batch plan reads (the window
    /// columns excluded); the others never need decoding.
    pub fn stream_columns_read(&self) -> Vec<usize> {
        let stream_columns = self.input_schema.fields().len() - 2;
        let mut read: Option<Vec<usize>> = None;
        let _ = self.batch_plan.apply(|node| {
            if let Some(slot) = node.downcast_ref::<SlotExec>() {
                read = Some(match slot.projection() {
                    Some(p) => p.to_vec(),
                    None => (0..stream_columns + 2).collect(),
                });
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        });
        let mut read: Vec<usize> = read
            .unwrap_or_else(|| (0..stream_columns).collect())
            .into_iter()
            .filter(|i| *i < stream_columns)
            .collect();
        read.sort_unstable();
        read.dedup();
        read
    }

    /// The window clause as text, with `EMIT EVERY` when the query emits
    /// early rows (`TUMBLING 1h EMIT EVERY 10s`).
    pub fn window_text(&self) -> String {
        let early = self
            .early_ms
            .map(|ms| format!(" EMIT EVERY {}", crate::model::duration::fmt_duration(ms)))
            .unwrap_or_default();
        format!("{}{early}", self.window.describe())
    }

    /// The per-batch plan, its filter run before it when queries share
    /// it, and the window-close plans as text.
    pub fn explain(&self) -> String {
        let filter = match &self.filter {
            Some(f) => format!(
                "Filter run before the per-batch plan when queries of the read share it: {}\n\n",
                f.predicate
            ),
            None => String::new(),
        };
        format!(
            "Window: {}\n\n{filter}Per-batch plan:\n{}\nWindow-merge plan:\n{}\nWindow-close plan:\n{}",
            self.window_text(),
            displayable(self.batch_plan.as_ref()).indent(true),
            displayable(self.reduce_plan.as_ref()).indent(true),
            displayable(self.close_plan.as_ref()).indent(true),
        )
    }
}
/// The partial stage of `agg`: the same groups and aggregates over the same
/// input, producing partial states.
fn partial_of(agg: &AggregateExec) -> datafusion::error::Result<Arc<AggregateExec>> {
    Ok(Arc::new(AggregateExec::try_new(
        AggregateMode::Partial,
        agg.group_expr().clone(),
        agg.aggr_expr().to_vec(),
        agg.filter_expr().to_vec(),
        agg.input().clone(),
        agg.input_schema(),
    )?))
}

#[cfg(test)]
pub(crate) mod tests;
