//! Roll-ups: coarser windows merged from the stored partial states of a
//! tumbling query's windows, not from its rows, so uniques over an hour are
//! the union of the 10 s sketches rather than a sum of estimates.
//!
//! Over HTTP: `GET /queries/adnetwork/results?rollup=1h`. In SQL, the
//! `rollup(query, size)` table function:
//!
//! ```sql
//! SELECT window_start, sum(imps), max(uniques) FROM rollup('adnetwork', '1h') GROUP BY window_start
//! ```
//!
//! Each coarser window goes through the query's own close plan (final
//! aggregates, `HAVING`, `ORDER BY ... LIMIT`, projection), as if the query
//! had been declared with that window size. States are kept for the
//! server's `window_state_retention` (24 h by default).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, TimestampMillisecondArray};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::Expr;
use datafusion::sql::sqlparser::ast::{self, FunctionArg, FunctionArgExpr, TableFactor, Value};

use super::App;
use super::limits::MAX_ROLLUP_WINDOWS;
use crate::error::{Error, Result};
use crate::sql::window::{WindowKind, parse_duration};
use crate::window::states_from_ipc;

impl App {
    /// Merges the stored window states of tumbling query `name` whose
    /// windows start in `[from, to)` (epoch ms) into windows of `size`
    /// (e.g. `1h`, a multiple of the query's window), and returns their rows.
    pub async fn rollup(
        &self,
        name: &str,
        size: &str,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<RecordBatch> {
        let q = self.query(name)?;
        let plan = q.plan.clone();
        let WindowKind::Tumbling { size_ms } = plan.window.kind else {
            return Err(Error::BadRequest(format!(
                "roll-ups merge tumbling windows; {} has a {} window",
                q.name,
                plan.window.describe()
            )));
        };
        let bucket = parse_duration(size).map_err(Error::BadRequest)?;
        if bucket < size_ms || bucket % size_ms != 0 {
            return Err(Error::BadRequest(format!(
                "roll-up size {size} must be a multiple of {}'s window ({} ms)",
                q.name, size_ms
            )));
        }
        // A range spanning more windows than one request may merge is
        // refused before anything is read; an open range is bounded by
        // what is stored (the retention), counted below.
        if let Some(from) = from {
            let to = to.unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
            let spanned = to.saturating_sub(from) / size_ms;
            if spanned > MAX_ROLLUP_WINDOWS {
                return Err(too_many_windows(&q.name, spanned));
            }
        }
        let store = self.store.clone();
        let query = q.name.clone();
        let stored =
            tokio::task::spawn_blocking(move || store.load_window_states(&query, from, to))
                .await
                .map_err(|e| Error::Execution(e.to_string()))??;
        if stored.len() as i64 > MAX_ROLLUP_WINDOWS {
            return Err(too_many_windows(&q.name, stored.len() as i64));
        }
        let mut held = self.guards.reservation("roll-up window states");
        let bytes = stored.iter().map(|(_, _, b)| b.len()).sum();
        held.try_grow(bytes)
            .map_err(|e| self.guards.explain(e.into()))?;
        let ty = plan.state_schema.field(0).data_type().clone();
        let mut buckets: BTreeMap<i64, Vec<RecordBatch>> = BTreeMap::new();
        for (start, _, bytes) in stored {
            let b_start = start.div_euclid(bucket) * bucket;
            for b in states_from_ipc(&plan.state_schema, &bytes)? {
                self.guards.admit(&mut held, &b)?;
                let bound = |t: i64| -> Result<ArrayRef> {
                    let a: ArrayRef =
                        Arc::new(TimestampMillisecondArray::from(vec![t; b.num_rows()]));
                    Ok(cast(&a, &ty)?)
                };
                let mut cols = b.columns().to_vec();
                cols[0] = bound(b_start)?;
                cols[1] = bound(b_start + bucket)?;
                buckets
                    .entry(b_start)
                    .or_default()
                    .push(RecordBatch::try_new(b.schema(), cols)?);
            }
        }
        let mut rows = Vec::new();
        // The close plan's final aggregation merges any number of partial
        // rows per group, as it does for a window's unmerged partials.
        let mut count = 0;
        for (_, states) in buckets {
            for b in plan.close(states).await? {
                count += b.num_rows();
                self.guards.check_rows(count)?;
                rows.push(b);
            }
        }
        Ok(concat_batches(&plan.output_schema, &rows)?)
    }

    /// Computes the roll-ups a pull query names (`rollup('q', '1h')` in its
    /// FROM clause) and returns the `rollup` table function serving them.
    pub(super) async fn rollup_function(&self, sql: &str) -> Result<Option<Arc<RollupFunction>>> {
        let calls = rollup_calls(sql)?;
        if calls.is_empty() {
            return Ok(None);
        }
        let mut tables = BTreeMap::new();
        for (query, size) in calls {
            let batch = self.rollup(&query, &size, None, None).await?;
            tables.insert((query.to_ascii_lowercase(), size), batch);
        }
        Ok(Some(Arc::new(RollupFunction { tables })))
    }
}

fn too_many_windows(query: &str, windows: i64) -> Error {
    Error::LimitExceeded(format!(
        "the roll-up range covers {windows} of {query}'s windows; one request merges at most \
         {MAX_ROLLUP_WINDOWS}: narrow it with from= and to= on GET /queries/{query}/results?rollup=, \
         or keep fewer window states (window_state_retention)"
    ))
}

/// The `rollup(query, size)` table function of one pull query, its tables
/// computed beforehand (table functions are called while planning).
#[derive(Debug)]
pub(super) struct RollupFunction {
    tables: BTreeMap<(String, String), RecordBatch>,
}

impl TableFunctionImpl for RollupFunction {
    fn call_with_args(
        &self,
        args: TableFunctionArgs,
    ) -> datafusion::common::Result<Arc<dyn TableProvider>> {
        let text = |e: &Expr| match e {
            Expr::Literal(ScalarValue::Utf8(Some(s)), _) => Some(s.clone()),
            _ => None,
        };
        let (Some(query), Some(size)) = (
            args.exprs().first().and_then(text),
            args.exprs().get(1).and_then(text),
        ) else {
            return plan_err!(
                "rollup takes a query name and a size, e.g. rollup('adnetwork', '1h')"
            );
        };
        let Some(batch) = self.tables.get(&(query.to_ascii_lowercase(), size)) else {
            return plan_err!("no roll-up of '{query}' was prepared");
        };
        Ok(Arc::new(MemTable::try_new(
            batch.schema(),
            vec![vec![batch.clone()]],
        )?))
    }
}

/// The `(query, size)` of each `rollup('query', 'size')` in a FROM clause.
fn rollup_calls(sql: &str) -> Result<Vec<(String, String)>> {
    let stmts = datafusion::sql::sqlparser::parser::Parser::parse_sql(
        &datafusion::sql::sqlparser::dialect::GenericDialect {},
        sql,
    )
    .map_err(crate::sql::parser_error)?;
    let mut out = Vec::new();
    for stmt in &stmts {
        collect_rollups(stmt, &mut out);
    }
    Ok(out)
}

fn collect_rollups(stmt: &ast::Statement, out: &mut Vec<(String, String)>) {
    for f in super::from_factors(stmt) {
        let TableFactor::Table {
            name,
            args: Some(args),
            ..
        } = f
        else {
            continue;
        };
        if !name.to_string().eq_ignore_ascii_case("rollup") {
            continue;
        }
        let text: Vec<String> = args
            .args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(ast::Expr::Value(v))) => {
                    match &v.value {
                        Value::SingleQuotedString(s) => Some(s.clone()),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect();
        if let [query, size] = text.as_slice() {
            out.push((query.clone(), size.clone()));
        }
    }
}
