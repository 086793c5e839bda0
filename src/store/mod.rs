//! Where Runnel keeps its catalog, checkpoints and results.
//!
//! Two backends hold the same things in the same shape: the embedded SQLite
//! store ([`sqlite::SqliteStore`], the default, `runnel.db` under the data
//! dir) and PostgreSQL ([`postgres::PgStore`], `--store postgres://...`). The
//! catalog tables are prefixed `runnel_`; each query's results live in a
//! typed table named after the query, readable with `sqlite3` or `psql`:
//!
//! ```text
//! $ sqlite3 runnel-data/runnel.db 'SELECT * FROM adnetwork ORDER BY window_start DESC LIMIT 5'
//! ```
//!
//! Both apply versioned migrations when opened.

pub mod pg_tls;
pub mod postgres;
pub mod sqlite;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::array::{
    ArrayRef, BinaryArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Int64Type, Schema, SchemaRef, TimeUnit, TimestampMillisecondType,
};

pub use rusqlite::types::Value;

use crate::error::{Error, Result};
use crate::model::Emission;
use postgres::PgStore;
use sqlite::SqliteStore;

/// Format of timestamps in results pages: sortable and SQLite-friendly.
pub const TS_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.3f";

/// Formats epoch ms as a results-table timestamp.
pub fn format_ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format(TS_FORMAT).to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// Format of timestamps in the API's answers (results, pull queries, SSE,
/// CSV): RFC 3339 in UTC with milliseconds, `2026-12-04T13:40:20.000Z`.
pub const API_TS_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";

/// Formats epoch ms as the API writes timestamps.
pub fn format_api_ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format(API_TS_FORMAT).to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// A results-table timestamp ([`TS_FORMAT`]) as the API writes it.
pub fn api_ts(stored: &str) -> String {
    chrono::NaiveDateTime::parse_from_str(stored, TS_FORMAT)
        .map(|d| d.format(API_TS_FORMAT).to_string())
        .unwrap_or_else(|_| stored.to_string())
}

/// Parses a user-supplied time (epoch ms, RFC 3339 or `YYYY-MM-DD HH:MM:SS[.fff]`) into
/// the results-table format.
pub fn normalize_ts(text: &str) -> Result<String> {
    time_ms(text).map(format_ts)
}

/// Parses a user-supplied time (epoch ms, RFC 3339 or `YYYY-MM-DD HH:MM:SS[.fff]`, UTC)
/// into epoch ms.
pub fn time_ms(text: &str) -> Result<i64> {
    let t = text.trim();
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(d.timestamp_millis());
    }
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
    ] {
        if let Ok(d) = chrono::NaiveDateTime::parse_from_str(t, f) {
            return Ok(d.and_utc().timestamp_millis());
        }
    }
    Err(Error::BadRequest(format!(
        "cannot parse time '{t}': use epoch ms, RFC 3339 or YYYY-MM-DD HH:MM:SS"
    )))
}

/// Quotes an SQL identifier.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// How a results column is stored, whatever the backend: each store maps
/// these to its own column types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnKind {
    Bool,
    Int,
    Real,
    Timestamp,
    Blob,
    Text,
}

/// The storage kind of an Arrow type.
pub(crate) fn column_kind(dt: &DataType) -> ColumnKind {
    match dt {
        DataType::Boolean => ColumnKind::Bool,
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => ColumnKind::Int,
        DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::Decimal128(_, _) => {
            ColumnKind::Real
        }
        DataType::Timestamp(_, _) => ColumnKind::Timestamp,
        DataType::Binary | DataType::LargeBinary => ColumnKind::Blob,
        _ => ColumnKind::Text,
    }
}

/// One page of results read from a results table.
#[derive(Debug, Default)]
pub struct ResultPage {
    /// Column names, in table order.
    pub columns: Vec<String>,
    /// Rows; timestamps as text in [`TS_FORMAT`], booleans as 0/1.
    pub rows: Vec<Vec<Value>>,
    /// Cursor to pass as `after` for the next page (the last row's sequence).
    pub cursor: Option<i64>,
    /// Each row's own cursor (its sequence), in row order.
    pub seqs: Vec<i64>,
    /// More rows match than the page's limit let through.
    pub has_more: bool,
}

/// Filters for reading results.
#[derive(Debug, Default, Clone)]
pub struct ResultFilter {
    /// Only windows starting at or after this time (in [`TS_FORMAT`]).
    pub from: Option<String>,
    /// Only windows starting before this time (in [`TS_FORMAT`]).
    pub to: Option<String>,
    /// Only rows written after this cursor.
    pub after: Option<i64>,
    /// At most this many rows.
    pub limit: usize,
}

/// A closed window's partial states as stored for roll-ups:
/// (window start, window end, Arrow IPC bytes).
pub type WindowState = (i64, i64, Vec<u8>);

/// The stored form of an emission's window state, if it has one.
fn window_state(e: &Emission) -> Result<Option<WindowState>> {
    let Some(state) = &e.state else {
        return Ok(None);
    };
    if state.num_rows() == 0 {
        return Ok(None);
    }
    let bound = |c: usize| -> Result<i64> {
        let v = cast(state.column(c), &DataType::Int64)?;
        Ok(v.as_primitive::<Int64Type>().value(0))
    };
    let bytes = crate::window::states_to_ipc(&state.schema(), std::slice::from_ref(state))?;
    Ok(Some((bound(0)?, bound(1)?, bytes)))
}

/// The DDL of a results table: a `_seq` row cursor declared as `seq`, one
/// column per field of `schema` typed by `ty`, and an index on the window.
fn results_ddl(
    name: &str,
    schema: &Schema,
    seq: &str,
    ty: fn(&DataType) -> &'static str,
) -> String {
    let cols: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", quote(f.name()), ty(f.data_type())))
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {t} (_seq {seq}, {cols});
         CREATE INDEX IF NOT EXISTS {idx} ON {t} (window_start, window_end);",
        t = quote(name),
        cols = cols.join(", "),
        idx = quote(&format!("{name}_window")),
    )
}

/// The statements removing query `name`'s results table, or keeping it as
/// `keep_as` (without its index, whose name a new query `name` will need).
fn drop_results_sql(name: &str, keep_as: Option<&str>) -> String {
    match keep_as {
        None => format!("DROP TABLE IF EXISTS {}", quote(name)),
        Some(new) => format!(
            "DROP INDEX IF EXISTS {idx}; ALTER TABLE {t} RENAME TO {new}",
            idx = quote(&format!("{name}_window")),
            t = quote(name),
            new = quote(new),
        ),
    }
}

/// The windows a closed-window emission's rows replace: each distinct
/// (window_start, window_end) of its rows, in epoch ms, in first-seen order.
fn replaced_windows(batch: &RecordBatch) -> Result<Vec<(i64, i64)>> {
    let ms = DataType::Timestamp(TimeUnit::Millisecond, None);
    let (starts, ends) = (cast(batch.column(0), &ms)?, cast(batch.column(1), &ms)?);
    let (starts, ends) = (
        starts.as_primitive::<TimestampMillisecondType>(),
        ends.as_primitive::<TimestampMillisecondType>(),
    );
    let mut seen = std::collections::HashSet::new();
    Ok((0..batch.num_rows())
        .map(|i| (starts.value(i), ends.value(i)))
        .filter(|k| seen.insert(*k))
        .collect())
}

/// A saved checkpoint: the next offset per partition and the engine state.
pub type Checkpoint = (BTreeMap<i32, i64>, Vec<u8>);

/// The store of a server: SQLite or PostgreSQL.
#[derive(Clone)]
pub enum Store {
    /// The embedded SQLite store.
    Sqlite(SqliteStore),
    /// A PostgreSQL database.
    Postgres(PgStore),
}

/// Calls the same method on whichever backend.
macro_rules! both {
    ($self:ident . $m:ident ( $($a:expr),* )) => {
        match $self {
            Store::Sqlite(s) => s.$m($($a),*),
            Store::Postgres(s) => s.$m($($a),*),
        }
    };
}

impl Store {
    /// Opens the SQLite store under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        Ok(Store::Sqlite(SqliteStore::open(data_dir)?))
    }

    /// Opens the store at `url` (`postgres://...` or `postgresql://...`, or
    /// `sqlite:DIR` for the SQLite store under another directory), or the
    /// SQLite store under `data_dir` when there is none.
    pub fn connect(url: Option<&str>, data_dir: &Path) -> Result<Self> {
        match url {
            None => Self::open(data_dir),
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Ok(Store::Postgres(PgStore::connect(u)?))
            }
            Some(u) if u.starts_with("sqlite:") => Self::open(Path::new(
                u.trim_start_matches("sqlite:").trim_start_matches("//"),
            )),
            Some(u) => Err(Error::BadRequest(format!(
                "unsupported store '{}': use postgres://user:password@host/database, sqlite:DIR, or none for SQLite under the data dir",
                crate::connect::secret::redact_url(u)
            ))),
        }
    }

    /// The PostgreSQL store, which cluster mode needs.
    pub fn postgres(&self) -> Result<&PgStore> {
        match self {
            Store::Postgres(s) => Ok(s),
            Store::Sqlite(_) => Err(Error::BadRequest(
                "cluster mode keeps shared state in PostgreSQL: start with --store postgres://..."
                    .into(),
            )),
        }
    }

    /// Which backend this is (`sqlite` or `postgres`).
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Saves a stream definition.
    pub fn save_stream(&self, name: &str, sql: &str) -> Result<()> {
        both!(self.save_stream(name, sql))
    }

    /// Deletes a stream definition.
    pub fn delete_stream(&self, name: &str) -> Result<()> {
        both!(self.delete_stream(name))
    }

    /// All stream definitions, oldest first.
    pub fn list_streams(&self) -> Result<Vec<(String, String)>> {
        both!(self.list_streams())
    }

    /// Saves a reference table definition.
    pub fn save_table(&self, name: &str, sql: &str) -> Result<()> {
        both!(self.save_table(name, sql))
    }

    /// All reference table definitions, oldest first.
    pub fn list_tables(&self) -> Result<Vec<(String, String)>> {
        both!(self.list_tables())
    }

    /// All query definitions, oldest first.
    pub fn list_queries(&self) -> Result<Vec<(String, String)>> {
        both!(self.list_queries())
    }

    /// Saves a query and creates its results table for `schema` (kept if it exists).
    pub fn save_query(&self, name: &str, sql: &str, schema: &Schema) -> Result<()> {
        both!(self.save_query(name, sql, schema))
    }

    /// Deletes a query, its checkpoint and its results table (or renames
    /// the table to `keep_as`).
    pub fn delete_query(&self, name: &str, keep_as: Option<&str>) -> Result<()> {
        both!(self.delete_query(name, keep_as))
    }

    /// Writes emitted rows, the offsets consumed so far and the open-window
    /// state, atomically. A closed window's rows replace any earlier rows of
    /// the same window; a cumulative emission replaces the whole table.
    pub fn commit(
        &self,
        query: &str,
        emissions: &[Emission],
        offsets: &BTreeMap<i32, i64>,
        state: &[u8],
    ) -> Result<()> {
        both!(self.commit(query, emissions, offsets, state))
    }

    /// Forgets a query's saved offsets and state.
    pub fn delete_checkpoint(&self, query: &str) -> Result<()> {
        both!(self.delete_checkpoint(query))
    }

    /// The last checkpoint of a query: next offsets per partition and the state blob.
    pub fn load_checkpoint(&self, query: &str) -> Result<Option<Checkpoint>> {
        both!(self.load_checkpoint(query))
    }

    /// Reads a page of a query's results, oldest write first.
    pub fn read_results(&self, query: &str, f: &ResultFilter) -> Result<ResultPage> {
        both!(self.read_results(query, f))
    }

    /// The newest cursor of a query's results (its largest row sequence),
    /// None while it has no rows.
    pub fn newest_cursor(&self, query: &str) -> Result<Option<i64>> {
        both!(self.newest_cursor(query))
    }

    /// Stored window states of `query` whose window starts in `[from, to)`
    /// (epoch ms), oldest first.
    pub fn load_window_states(
        &self,
        query: &str,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<Vec<WindowState>> {
        both!(self.load_window_states(query, from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX)))
    }

    /// The latest end among `query`'s stored window states: windows close
    /// in end order, so every window ending by then has closed.
    pub fn newest_window_state_end(&self, query: &str) -> Result<Option<i64>> {
        both!(self.newest_window_state_end(query))
    }

    /// Deletes the stored window states of `query` that ended before `before`.
    pub fn prune_window_states(&self, query: &str, before: i64) -> Result<usize> {
        both!(self.prune_window_states(query, before))
    }

    /// Loads a whole results table as one batch of `schema`, for pull queries.
    pub fn load_results(&self, query: &str, schema: &SchemaRef) -> Result<RecordBatch> {
        let page = self.read_results(
            query,
            &ResultFilter {
                limit: i64::MAX as usize,
                ..Default::default()
            },
        )?;
        page_to_batch(&page, schema)
    }

    /// Loads a results table as batches of `schema` of at most `page_rows`
    /// rows each, handing each to `admit` first: an error from it stops the
    /// load, so a caller can refuse a table too big to hold before all of it
    /// is read.
    pub fn load_results_paged(
        &self,
        query: &str,
        schema: &SchemaRef,
        page_rows: usize,
        mut admit: impl FnMut(&RecordBatch) -> Result<()>,
    ) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        let mut each = |page: ResultPage| {
            let batch = page_to_batch(&page, schema)?;
            admit(&batch)?;
            out.push(batch);
            Ok(())
        };
        match self {
            Store::Sqlite(s) => s.read_all_results(query, page_rows, &mut each)?,
            // PostgreSQL sends the rows at once; they are converted and
            // admitted a page at a time.
            Store::Postgres(s) => {
                let all = ResultFilter {
                    limit: i64::MAX as usize,
                    ..Default::default()
                };
                let page = s.read_results(query, &all)?;
                for rows in page.rows.chunks(page_rows.max(1)) {
                    each(ResultPage {
                        columns: page.columns.clone(),
                        rows: rows.to_vec(),
                        ..Default::default()
                    })?;
                }
            }
        }
        if out.is_empty() {
            out.push(page_to_batch(&ResultPage::default(), schema)?);
        }
        Ok(out)
    }

    /// Up to `limit` rows of `query` written after cursor `after` (from the
    /// first row when `None`), oldest write first, as a batch of `schema`,
    /// with each row's cursor: what `INTO TOPIC` publishes.
    pub fn rows_after(
        &self,
        query: &str,
        after: Option<i64>,
        limit: usize,
        schema: &SchemaRef,
    ) -> Result<(RecordBatch, Vec<i64>)> {
        let page = self.read_results(
            query,
            &ResultFilter {
                after,
                limit,
                ..Default::default()
            },
        )?;
        Ok((page_to_batch(&page, schema)?, page.seqs))
    }
}

/// The rows of `page` as a batch of `schema` (all columns nullable).
fn page_to_batch(page: &ResultPage, schema: &SchemaRef) -> Result<RecordBatch> {
    let mut cols: Vec<ArrayRef> = Vec::new();
    for (c, field) in schema.fields().iter().enumerate() {
        let vals = page.rows.iter().map(|r| &r[c]);
        let raw: ArrayRef = match column_kind(field.data_type()) {
            ColumnKind::Bool | ColumnKind::Int => Arc::new(
                vals.map(|v| match v {
                    Value::Integer(i) => Some(*i),
                    _ => None,
                })
                .collect::<Int64Array>(),
            ),
            ColumnKind::Real => Arc::new(
                vals.map(|v| match v {
                    Value::Real(f) => Some(*f),
                    Value::Integer(i) => Some(*i as f64),
                    _ => None,
                })
                .collect::<Float64Array>(),
            ),
            ColumnKind::Blob => Arc::new(
                vals.map(|v| match v {
                    Value::Blob(b) => Some(b.clone()),
                    _ => None,
                })
                .collect::<BinaryArray>(),
            ),
            ColumnKind::Timestamp | ColumnKind::Text => Arc::new(
                vals.map(|v| match v {
                    Value::Text(s) => Some(s.clone()),
                    _ => None,
                })
                .collect::<StringArray>(),
            ),
        };
        cols.push(cast(&raw, field.data_type())?);
    }
    let schema = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    Ok(RecordBatch::try_new(schema, cols)?)
}
