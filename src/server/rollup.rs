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
//!
//! Only complete buckets are answered (every window ending by the bucket's
//! end has closed); `partial=true` over HTTP adds the open ones, flagged by
//! a `complete` column. HTTP answers honour `limit` (with `has_more`) and
//! `format=csv` like results pages.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{ArrayRef, BooleanArray, TimestampMillisecondArray};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::Expr;

use super::App;
use super::http::{Format, Res, ResultsParams, csv_response};
use super::limits::MAX_ROLLUP_WINDOWS;
use crate::error::{Error, Result};
use crate::format::encode;
use crate::model::WindowKind;
use crate::model::duration::parse_duration;
use crate::store::time_ms;
use crate::window::{states_from_ipc, window_closed};

/// What one roll-up asks for.
#[derive(Debug, Clone, Default)]
pub struct RollupRequest {
    /// Size of the coarser windows, e.g. `1h`.
    pub size: String,
    /// Windows starting in `[from, to)` (epoch ms).
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// At most this many rows (None: all, up to the pull-rows limit).
    pub limit: Option<usize>,
    /// Include buckets not complete yet, with a `complete` column.
    pub partial: bool,
}

/// A roll-up's rows, and whether `limit` cut some off.
#[derive(Debug)]
pub struct Rollup {
    pub batch: RecordBatch,
    pub has_more: bool,
}

/// The column that flags each row's bucket as complete, with `partial`.
pub const COMPLETE: &str = "complete";

impl App {
    /// Merges the stored window states of tumbling query `name` whose
    /// windows start in `[from, to)` into windows of `size` (a multiple of
    /// the query's window), and returns their rows, buckets in time order.
    /// A bucket is complete once the watermark has passed its end (by the
    /// rule of [`window_closed`]) or a window ending at or after it has
    /// closed (windows close in end order): the newest stored window state
    /// says so durably, the counters restored from the checkpoint too.
    /// Incomplete buckets are left out unless `partial` asks for them.
    pub async fn rollup(&self, name: &str, req: &RollupRequest) -> Result<Rollup> {
        let q = self.query(name)?;
        let plan = q.plan.clone();
        let WindowKind::Tumbling { size_ms } = plan.window.kind else {
            return Err(Error::BadRequest(format!(
                "roll-ups merge tumbling windows; {} has a {} window",
                q.name,
                plan.window.describe()
            )));
        };
        let size = &req.size;
        let bucket = parse_duration(size).map_err(Error::BadRequest)?;
        if bucket < size_ms || bucket % size_ms != 0 {
            return Err(Error::BadRequest(format!(
                "roll-up size {size} must be a multiple of {}'s window ({} ms)",
                q.name, size_ms
            )));
        }
        if req.partial && plan.output_schema.field_with_name(COMPLETE).is_ok() {
            return Err(Error::BadRequest(format!(
                "{} has a column named {COMPLETE}, which partial=true would add; \
                 rename it in the query, or leave partial out",
                q.name
            )));
        }
        let (from, to) = (req.from, req.to);
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
        let (stored, newest_end) = tokio::task::spawn_blocking(move || {
            let stored = store.load_window_states(&query, from, to)?;
            Ok::<_, Error>((stored, store.newest_window_state_end(&query)?))
        })
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
        let c = &q.counters;
        let watermark = c.watermark.load(Ordering::Relaxed);
        let closed = c
            .last_window_end
            .load(Ordering::Relaxed)
            .max(newest_end.unwrap_or(i64::MIN));
        let complete = |end: i64| {
            end <= closed
                || (watermark != i64::MIN
                    && window_closed(plan.window.kind, end, plan.window.grace_ms, watermark))
        };
        let limit = req.limit.unwrap_or(usize::MAX);
        let mut rows = Vec::new();
        let mut flags: Vec<bool> = Vec::new();
        // The close plan's final aggregation merges any number of partial
        // rows per group, as it does for a window's unmerged partials.
        let mut count = 0;
        'buckets: for (b_start, states) in buckets {
            let done = complete(b_start + bucket);
            if !done && !req.partial {
                continue;
            }
            for b in plan.close(states).await? {
                count += b.num_rows();
                flags.extend(std::iter::repeat_n(done, b.num_rows()));
                rows.push(b);
                // One row past the limit tells that more follow.
                if count > limit {
                    break 'buckets;
                }
                self.guards.check_rows(count)?;
            }
        }
        let has_more = count > limit;
        let mut batch = concat_batches(&plan.output_schema, &rows)?;
        if has_more {
            batch = batch.slice(0, limit);
            flags.truncate(limit);
        }
        if req.partial {
            batch = with_complete(&batch, flags)?;
        }
        Ok(Rollup { batch, has_more })
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
            let req = RollupRequest {
                size: size.clone(),
                ..Default::default()
            };
            let rollup = self.rollup(&query, &req).await?;
            tables.insert((query.to_ascii_lowercase(), size), rollup.batch);
        }
        Ok(Some(Arc::new(RollupFunction { tables })))
    }
}

/// `results?rollup=SIZE`: at most `limit` rows of the complete buckets (and
/// the incomplete ones with `partial=true`), `has_more` when cut.
pub(super) async fn results(
    app: &App,
    name: &str,
    size: &str,
    p: &ResultsParams,
    limit: usize,
    format: Format,
) -> Res {
    if p.after.is_some() {
        return Err(Error::BadRequest(
            "roll-ups are paged with from= and to=, not after=".into(),
        ));
    }
    let partial = match p.partial.as_deref().map(str::trim) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "partial must be true or false, not '{other}'"
            )));
        }
    };
    let ms = |t: &Option<String>| t.as_deref().map(time_ms).transpose();
    let req = RollupRequest {
        size: size.to_string(),
        from: ms(&p.from)?,
        to: ms(&p.to)?,
        limit: Some(limit),
        partial,
    };
    let rollup = app.rollup(name, &req).await?;
    if format == Format::Csv {
        let out = encode::csv(&rollup.batch)?;
        return Ok(csv_response(out, None, rollup.has_more));
    }
    let schema = rollup.batch.schema();
    let columns: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
    let body = encode::json_body(&[
        ("query", &encode::json(name)),
        ("rollup", &encode::json(size)),
        ("columns", &encode::json(&columns)),
        (
            "rows",
            &encode::json_rows(std::slice::from_ref(&rollup.batch), true)?,
        ),
        ("has_more", &encode::json(&rollup.has_more)),
    ]);
    Ok(super::render::json_response(body))
}

/// `batch` with a last boolean column [`COMPLETE`].
fn with_complete(batch: &RecordBatch, flags: Vec<bool>) -> Result<RecordBatch> {
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(COMPLETE, DataType::Boolean, false));
    let mut cols = batch.columns().to_vec();
    cols.push(Arc::new(BooleanArray::from(flags)));
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
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
    Ok(super::relations::table_calls(sql, "rollup")?
        .into_iter()
        .filter_map(|args| match args.as_slice() {
            [Some(query), Some(size)] => Some((query.clone(), size.clone())),
            _ => None,
        })
        .collect())
}
