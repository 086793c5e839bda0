//! What a store backend must provide, and the statements both run.
//!
//! A backend ([`super::sqlite::SqliteStore`], [`super::postgres::PgStore`])
//! only executes statements: [`Backend::transaction`] and
//! [`Backend::session`] hand a [`Tx`] to a closure. Everything else is
//! written once: here the statements' shape, an insert's rows bound from
//! Arrow columns, the results tables' DDL and the migrations' bookkeeping;
//! in [`super::statements`] how an emission becomes statements; in
//! [`super::Store`] the order of a commit. The differences between the SQL
//! of the two databases are data, a [`Dialect`]. Shared statements number their
//! parameters `$1, $2, ...`; SQLite's backend reads them as `?1, ?2, ...`.

use std::borrow::Cow;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Float64Array, Int64Array, RecordBatch,
    StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Float64Type, Int64Type, Schema, TimeUnit, TimestampMillisecondType,
};

use super::results::ResultColumns;
use super::{ColumnKind, column_kind, quote};
use crate::error::Result;

/// A value a catalog query answers, whatever the backend (results tables
/// are read as Arrow instead: [`Tx::query_results`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An integer (SQLite's booleans are 0/1).
    Integer(i64),
    /// A double.
    Real(f64),
    /// Text (PostgreSQL's JSON as its text).
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

/// A statement parameter, bound by each backend in its own types.
#[derive(Debug, Clone)]
pub enum Param {
    /// SQL NULL.
    Null,
    /// SQLite: 0/1; PostgreSQL: `BOOLEAN`.
    Bool(bool),
    /// A 64-bit integer.
    Int(i64),
    /// A double.
    Real(f64),
    /// Epoch ms. SQLite: text in [`super::TS_FORMAT`]; PostgreSQL: `TIMESTAMP(3)`.
    Ts(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
    /// JSON text. SQLite: `TEXT`; PostgreSQL: `JSONB`.
    Json(String),
}

/// A statement and its parameters.
pub struct Stmt {
    /// The SQL, parameters numbered `$1, $2, ...`; for a row insert, the
    /// statement up to `VALUES`.
    pub sql: String,
    /// The parameters (none for a row insert).
    pub params: Vec<Param>,
    /// A row insert's rows. Each backend inserts them as it does best
    /// ([`Tx::run`]): SQLite prepared statements of a few rows bound value
    /// by value from the columns, PostgreSQL multi-row `VALUES` (one round
    /// trip per statement).
    pub rows: Option<Rows>,
}

/// One statement of [`Stmt::expanded`]: its SQL and its parameters.
pub type Part<'a> = (Cow<'a, str>, Cow<'a, [Param]>);

/// A row insert's rows: a batch's columns in their results-table types.
/// They become parameters only where a backend needs them, a statement's
/// worth at a time, so a window of a million rows never lies in memory
/// as a million rows of parameters too.
pub struct Rows {
    cols: Vec<Col>,
    len: usize,
}

impl Rows {
    /// The rows of `b`, its columns converted.
    pub(crate) fn new(b: &RecordBatch) -> Result<Self> {
        let cols = b
            .columns()
            .iter()
            .map(Col::from_array)
            .collect::<Result<_>>()?;
        Ok(Rows {
            cols,
            len: b.num_rows(),
        })
    }

    /// Values per row.
    pub(crate) fn width(&self) -> usize {
        self.cols.len()
    }

    /// Number of rows.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Rows per statement of an insert: at most [`MAX_PARAMS`] values.
    fn per_stmt(&self) -> usize {
        (MAX_PARAMS / self.width().max(1)).max(1)
    }

    /// The columns.
    pub(crate) fn cols(&self) -> &[Col] {
        &self.cols
    }

    /// The values of rows `range`, one row after the other.
    pub(crate) fn params(&self, range: std::ops::Range<usize>) -> Vec<Param> {
        let mut out = Vec::with_capacity(range.len() * self.cols.len());
        for i in range {
            out.extend(self.cols.iter().map(|c| c.param(i)));
        }
        out
    }
}

impl Stmt {
    /// A statement run once with `params`.
    pub fn new(sql: impl Into<String>, params: Vec<Param>) -> Self {
        Stmt {
            sql: sql.into(),
            params,
            rows: None,
        }
    }

    /// The insert of `rows` by `sql`, the statement up to `VALUES`.
    pub fn insert(sql: impl Into<String>, rows: Rows) -> Self {
        Stmt {
            sql: sql.into(),
            params: Vec::new(),
            rows: Some(rows),
        }
    }

    /// The statement as SQL texts with their parameters: a row insert as
    /// multi-row `VALUES` of at most [`MAX_PARAMS`] parameters each, made
    /// one statement at a time.
    pub fn expanded(&self) -> Box<dyn Iterator<Item = Part<'_>> + '_> {
        let Some(rows) = self.rows.as_ref().filter(|r| r.width() > 0) else {
            let plain = (
                Cow::from(self.sql.as_str()),
                Cow::from(self.params.as_slice()),
            );
            return Box::new(std::iter::once(plain));
        };
        let per_stmt = rows.per_stmt();
        Box::new((0..rows.len()).step_by(per_stmt).map(move |from| {
            let to = (from + per_stmt).min(rows.len());
            (
                self.values_sql(to - from).into(),
                rows.params(from..to).into(),
            )
        }))
    }

    /// The distinct SQL texts of [`expanded`](Self::expanded), without
    /// making any parameter: a row insert's full statements share one.
    pub fn texts(&self) -> Vec<Cow<'_, str>> {
        let Some(rows) = self.rows.as_ref().filter(|r| r.width() > 0) else {
            return vec![self.sql.as_str().into()];
        };
        let (n, per_stmt) = (rows.len(), rows.per_stmt());
        let sizes = [(n >= per_stmt).then_some(per_stmt), Some(n % per_stmt)];
        (sizes.into_iter().flatten().filter(|k| *k > 0))
            .map(|k| self.values_sql(k).into())
            .collect()
    }

    /// A row insert's SQL for `rows` rows.
    pub fn values_sql(&self, rows: usize) -> String {
        let width = self.rows.as_ref().map_or(0, Rows::width);
        let mut sql = String::with_capacity(self.sql.len() + rows * width * 6);
        sql.push_str(&self.sql);
        for r in 0..rows {
            sql.push_str(if r == 0 { " (" } else { ", (" });
            for c in 0..width {
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push('$');
                sql.push_str(&(r * width + c + 1).to_string());
            }
            sql.push(')');
        }
        sql
    }
}

/// Takes one row of a query, with the query's column names.
pub type EachRow<'a> = dyn FnMut(&[String], Vec<Value>) -> Result<()> + 'a;

/// What a closure may run inside [`Backend::transaction`] or
/// [`Backend::session`].
pub trait Tx {
    /// Runs one statement; returns the rows it changed.
    fn execute(&mut self, sql: &str, params: &[Param]) -> Result<u64>;
    /// Runs statements without parameters (`;`-separated).
    fn batch(&mut self, sql: &str) -> Result<()>;
    /// Runs a query, handing each row to `each` with the result's column
    /// names; an error from `each` stops it. Returns the column names.
    fn query_each(
        &mut self,
        sql: &str,
        params: &[Param],
        each: &mut EachRow<'_>,
    ) -> Result<Vec<String>>;

    /// Runs a results query (`SELECT _seq, <columns of out> ...`), appending
    /// each row to `out`, each value read as its column's kind; `each` sees
    /// `out` after every row (it may take the rows so far), and an error
    /// from it stops the query.
    fn query_results(
        &mut self,
        sql: &str,
        params: &[Param],
        out: &mut ResultColumns,
        each: &mut dyn FnMut(&mut ResultColumns) -> Result<()>,
    ) -> Result<()>;

    /// Runs a statement of a commit, a row insert as multi-row `VALUES`.
    fn run(&mut self, s: &Stmt) -> Result<()> {
        for (sql, params) in s.expanded() {
            self.execute(&sql, &params)?;
        }
        Ok(())
    }

    /// Runs a query and returns its column names and rows.
    fn query(&mut self, sql: &str, params: &[Param]) -> Result<(Vec<String>, Vec<Vec<Value>>)> {
        let mut rows = Vec::new();
        let columns = self.query_each(sql, params, &mut |_, r| {
            rows.push(r);
            Ok(())
        })?;
        Ok((columns, rows))
    }
}

/// A database Runnel keeps its store in.
pub trait Backend: Send + Sync {
    /// `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;
    /// How its SQL differs.
    fn dialect(&self) -> &'static Dialect;
    /// Runs `f` in one transaction, committed when `f` succeeds.
    fn transaction(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()>;
    /// Runs `f`'s statements each on its own (reads).
    fn session(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()>;
    /// The PostgreSQL store, when this is one.
    fn postgres(&self) -> Option<&super::postgres::PgStore> {
        None
    }
}

/// The SQL that differs between the backends.
pub struct Dialect {
    /// The results tables' `_seq` row cursor column.
    pub seq: &'static str,
    /// The column type of a results column.
    pub column_type: fn(ColumnKind) -> &'static str,
    /// The current time, as the catalog's `created_at` and `updated_at` hold it.
    pub now: &'static str,
    /// What orders catalog rows created at the same time.
    pub tie_break: &'static str,
    /// The schema migrations, in order.
    pub migrations: &'static [&'static str],
    /// Run first in the migrations' transaction: the bookkeeping's own
    /// table, a lock against servers starting together.
    pub migrations_setup: &'static str,
    /// How many migrations are applied (one integer).
    pub version_query: &'static str,
    /// Records that `n` migrations are applied.
    pub set_version: fn(usize) -> String,
    /// Tables whose rows of a query (column `query`) go with it.
    pub query_tables: &'static [&'static str],
    /// A row when a table named `$1` exists.
    pub table_exists: &'static str,
}

/// At most this many bind parameters per statement (SQLite allows 32 766,
/// PostgreSQL 65 535).
pub(crate) const MAX_PARAMS: usize = 30_000;

/// Applies the migrations not applied yet, in one transaction.
pub(crate) fn migrate(b: &dyn Backend) -> Result<()> {
    let d = b.dialect();
    b.transaction(&mut |tx| {
        if !d.migrations_setup.is_empty() {
            tx.batch(d.migrations_setup)?;
        }
        let (_, rows) = tx.query(d.version_query, &[])?;
        let applied = match rows.first().and_then(|r| r.first()) {
            Some(Value::Integer(v)) => *v as usize,
            _ => 0,
        };
        for (i, m) in d.migrations.iter().enumerate().skip(applied) {
            tx.batch(m)?;
            tx.batch(&(d.set_version)(i + 1))?;
        }
        Ok(())
    })
}

/// The DDL of a results table: a `_seq` row cursor, one column per field
/// of `schema`, and an index on the window's start. Its start names a
/// window for every read and every replacement of its rows (a session's end
/// is checked on the few rows sharing its start); indexing the end as well
/// made a window's commit ~1.5× as slow in SQLite (`benches/store.rs`:
/// 15.7–21.4 ms vs 11.2–12.6 ms for 19 000 rows), for no lookup that
/// needs it. Tables made before keep their two-column index.
pub(crate) fn results_ddl(d: &Dialect, name: &str, schema: &Schema) -> String {
    rows_table_ddl(d, name, schema, ("window", "window_start"))
}

/// The DDL of a table of rows shaped `schema` after a `_seq` row cursor,
/// with an index `<name>_<suffix>` on `columns` (`index`).
pub(crate) fn rows_table_ddl(
    d: &Dialect,
    name: &str,
    schema: &Schema,
    index: (&str, &str),
) -> String {
    let cols: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| {
            let ty = (d.column_type)(column_kind(f.data_type()));
            format!("{} {ty}", quote(f.name()))
        })
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {t} (_seq {seq}, {cols});
         CREATE INDEX IF NOT EXISTS {idx} ON {t} ({on});",
        t = quote(name),
        seq = d.seq,
        cols = cols.join(", "),
        idx = quote(&format!("{name}_{}", index.0)),
        on = index.1,
    )
}

/// The statements removing query `name`'s results table, or keeping it as
/// `keep_as` (without its index, whose name a new query `name` will need).
pub(crate) fn drop_results_sql(name: &str, keep_as: Option<&str>) -> String {
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

/// A column converted to the type of its results-table column.
pub(crate) enum Col {
    Bool(BooleanArray),
    Int(Int64Array),
    Real(Float64Array),
    Ts(TimestampMillisecondArray),
    Text(StringArray),
    Blob(BinaryArray),
}

impl Col {
    fn from_array(a: &ArrayRef) -> Result<Self> {
        Ok(match column_kind(a.data_type()) {
            ColumnKind::Bool => Col::Bool(a.as_boolean().clone()),
            ColumnKind::Int => Col::Int(
                cast(a, &DataType::Int64)?
                    .as_primitive::<Int64Type>()
                    .clone(),
            ),
            ColumnKind::Real => Col::Real(
                cast(a, &DataType::Float64)?
                    .as_primitive::<Float64Type>()
                    .clone(),
            ),
            ColumnKind::Timestamp => Col::Ts(
                cast(a, &DataType::Timestamp(TimeUnit::Millisecond, None))?
                    .as_primitive::<TimestampMillisecondType>()
                    .clone(),
            ),
            ColumnKind::Blob => Col::Blob(cast(a, &DataType::Binary)?.as_binary::<i32>().clone()),
            ColumnKind::Text => Col::Text(cast(a, &DataType::Utf8)?.as_string::<i32>().clone()),
        })
    }

    /// Whether value `i` is not null.
    pub(crate) fn is_valid(&self, i: usize) -> bool {
        match self {
            Col::Bool(a) => a.is_valid(i),
            Col::Int(a) => a.is_valid(i),
            Col::Real(a) => a.is_valid(i),
            Col::Ts(a) => a.is_valid(i),
            Col::Text(a) => a.is_valid(i),
            Col::Blob(a) => a.is_valid(i),
        }
    }

    fn param(&self, i: usize) -> Param {
        if !self.is_valid(i) {
            return Param::Null;
        }
        match self {
            Col::Bool(a) => Param::Bool(a.value(i)),
            Col::Int(a) => Param::Int(a.value(i)),
            Col::Real(a) => Param::Real(a.value(i)),
            Col::Ts(a) => Param::Ts(a.value(i)),
            Col::Text(a) => Param::Text(a.value(i).to_string()),
            Col::Blob(a) => Param::Blob(a.value(i).to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch};

    use super::{MAX_PARAMS, Param, Rows, Stmt};

    /// A row insert expands into multi-row statements of at most
    /// [`MAX_PARAMS`] parameters, numbered from `$1` in each, every row once.
    #[test]
    fn a_row_insert_expands_into_bounded_multi_row_statements() {
        let rows = 25_000;
        let col =
            |k: i64| Arc::new(Int64Array::from_iter_values((0..rows).map(|i| 3 * i + k))) as _;
        let batch =
            RecordBatch::try_from_iter([("a", col(0)), ("b", col(1)), ("c", col(2))]).unwrap();
        let s = Stmt::insert("INSERT INTO t (a, b, c) VALUES", Rows::new(&batch).unwrap());
        assert_eq!(
            s.values_sql(2),
            "INSERT INTO t (a, b, c) VALUES ($1, $2, $3), ($4, $5, $6)"
        );
        let parts: Vec<_> = s.expanded().collect();
        assert_eq!(parts.len(), 3);
        // The texts to prepare: the full statements' one, then the rest's.
        let texts = s.texts();
        assert_eq!(texts, [parts[0].0.clone(), parts[2].0.clone()]);
        assert_eq!(parts[1].0, parts[0].0);
        let mut seen = 0;
        for (sql, params) in &parts {
            assert!(params.len() <= MAX_PARAMS && params.len() % 3 == 0);
            let n = params.len();
            assert!(
                sql.ends_with(&format!("${n})")),
                "{}",
                &sql[sql.len() - 20..]
            );
            assert!(!sql.contains(&format!("${}", n + 1)));
            // Each value in its place: row r's column k holds 3r + k.
            for (j, p) in params.iter().enumerate() {
                assert!(matches!(p, Param::Int(v) if *v == (seen + j) as i64), "{j}");
            }
            seen += n;
        }
        assert_eq!(seen, rows as usize * 3);
        let plain = Stmt::new("DELETE FROM t WHERE a = $1", vec![Param::Int(1)]);
        let parts: Vec<_> = plain.expanded().collect();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].0, "DELETE FROM t WHERE a = $1");
    }
}
