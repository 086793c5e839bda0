//! Reading a query's late records (its late table, [`crate::store::late`]).
//!
//! Over HTTP, cursor-paged like results:
//! `GET /queries/adnetwork/late?after=CURSOR&limit=100&format=json|csv`.
//! In SQL, the `late(query)` table function:
//!
//! ```sql
//! SELECT _partition, _offset, _late_ms, _missed FROM late('adnetwork') ORDER BY _late_ms DESC
//! ```
//!
//! Cluster mode keeps no late records (they are only counted), so both
//! answer 400 there.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::datasource::MemTable;
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::logical_expr::Expr;
use serde::Deserialize;

use super::http::{Res, page_params, page_response};
use super::{App, QueryEntry};
use crate::error::{Error, Result};
use crate::store::late::late_table;

impl App {
    /// The shape of query `q`'s late table.
    fn late_schema(&self, q: &QueryEntry) -> Result<SchemaRef> {
        if self.config.cluster.is_some() {
            return Err(Error::BadRequest(format!(
                "cluster mode keeps no late records (query {} only counts them: runnel_query_late_records_total)",
                q.name
            )));
        }
        let stream = self.stream(&q.stream)?;
        let et = stream.def.event_time_index();
        Ok(crate::window::late_schema(&q.plan, et))
    }
}

#[derive(Deserialize)]
pub(super) struct LateParams {
    after: Option<String>,
    limit: Option<String>,
    format: Option<String>,
}

/// `GET /queries/{id}/late`: a page of the query's late records, oldest
/// write first.
pub(super) async fn late(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    params: Query<LateParams>,
) -> Res {
    let q = app.query(&id)?;
    let p = params.0;
    let (limit, format) = page_params(p.limit.as_deref(), p.format.as_deref())?;
    let after = match p.after.as_deref() {
        None | Some("") => None,
        Some(a) => Some(a.parse::<i64>().map_err(|_| {
            Error::BadRequest(format!(
                "after must be a cursor from an earlier page (a number), not '{a}'"
            ))
        })?),
    };
    let schema = app.late_schema(&q)?;
    let (store, name) = (app.store.clone(), q.name.clone());
    let page = tokio::task::spawn_blocking(move || store.read_late(&name, &schema, after, limit))
        .await
        .map_err(|e| Error::Execution(e.to_string()))??;
    page_response(&q.name, &page, format)
}

/// The `late(query)` table function of one pull query, its tables loaded
/// beforehand (table functions are called while planning).
#[derive(Debug)]
pub(super) struct LateFunction {
    tables: BTreeMap<String, (SchemaRef, Vec<RecordBatch>)>,
}

impl TableFunctionImpl for LateFunction {
    fn call_with_args(
        &self,
        args: TableFunctionArgs,
    ) -> datafusion::common::Result<Arc<dyn TableProvider>> {
        let query = match args.exprs() {
            [Expr::Literal(ScalarValue::Utf8(Some(s)), _)] => s.to_ascii_lowercase(),
            _ => return plan_err!("late takes a query name, e.g. late('adnetwork')"),
        };
        let Some((schema, batches)) = self.tables.get(&query) else {
            return plan_err!("no late table of '{query}' was loaded");
        };
        Ok(Arc::new(MemTable::try_new(
            schema.clone(),
            vec![batches.clone()],
        )?))
    }
}

impl App {
    /// Loads the late tables a pull query names (`late('q')` in its FROM
    /// clause), reserved in `loaded`, and returns the `late` table function
    /// serving them.
    pub(super) fn late_function(
        &self,
        sql: &str,
        loaded: &mut MemoryReservation,
    ) -> Result<Option<Arc<LateFunction>>> {
        let calls = late_calls(sql)?;
        if calls.is_empty() {
            return Ok(None);
        }
        let mut tables = BTreeMap::new();
        for name in calls {
            let q = self.query(&name)?;
            let schema = self.late_schema(&q)?;
            let table = late_table(&q.name);
            let batches = self
                .guards
                .load_results(&self.store, &table, &schema, loaded)?;
            let schema = batches.first().map_or(schema, |b| b.schema());
            tables.insert(name.to_ascii_lowercase(), (schema, batches));
        }
        Ok(Some(Arc::new(LateFunction { tables })))
    }
}

/// The query of each `late('query')` in a FROM clause.
fn late_calls(sql: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for args in super::relations::table_calls(sql, "late")? {
        let [Some(query)] = args.as_slice() else {
            return Err(Error::BadRequest(
                "late takes one query name in quotes, e.g. late('adnetwork')".into(),
            ));
        };
        out.push(query.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::late_calls;

    #[test]
    fn finds_late_calls() {
        let sql = "SELECT * FROM late('adnetwork') l JOIN rollup('q', '1h') r ON true";
        assert_eq!(late_calls(sql).unwrap(), ["adnetwork"]);
        assert!(late_calls("SELECT * FROM late(adnetwork)").is_err());
        assert!(late_calls("SELECT * FROM adnetwork").unwrap().is_empty());
    }
}
