//! The embedded SQLite store: a `Backend` over one connection to
//! `runnel.db` under the data dir, and SQLite's `Dialect`.
//!
//! Window results, the consumed Kafka offsets and the open-window state are
//! written in one transaction ([`super::Store::commit`]), so after a restart
//! a query resumes from exactly the point its results reflect.
//!
//! Commits append to SQLite's write-ahead log and never copy it into the
//! database themselves (`wal_autocheckpoint = 0`): copying ~2.5 MB of a
//! window close's writes took 10–15 ms inside the commit that made the
//! window's rows visible. A thread of the store's, on a connection of its
//! own, copies the log every [`CHECKPOINT_EVERY`] instead (a passive
//! checkpoint, which never holds up the writer), and stops when the store
//! is dropped.
//!
//! A database that is busy (another process holding a write lock past the
//! 5 s busy timeout), locked, full or failing I/O answers
//! [`Error::Unavailable`]: queries pause and retry, as they do while
//! PostgreSQL restarts.
//!
//! ```no_run
//! let store = runnel::store::Store::open(std::path::Path::new("runnel-data")).unwrap();
//! for (name, sql) in store.list_streams().unwrap() {
//!     println!("{name}: {sql}");
//! }
//! ```

use std::ops::Range;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{Connection, ErrorCode};

use datafusion::arrow::array::{Array, StringArray, StringBuilder, TimestampMillisecondArray};

use super::backend::{Backend, Col, Dialect, EachRow, MAX_PARAMS, Param, Rows, Stmt, Tx, Value};
use super::results::{Cell, ResultColumns};
use super::{ColumnKind, format_ts, parse_stored_ts};
use crate::error::{Error, Result};

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE runnel_streams (name TEXT PRIMARY KEY, sql TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE runnel_queries (name TEXT PRIMARY KEY, sql TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE runnel_checkpoints (
    query TEXT PRIMARY KEY,
    offsets TEXT NOT NULL,
    state BLOB,
    updated_at TEXT NOT NULL
);
"#,
    "CREATE TABLE runnel_tables (name TEXT PRIMARY KEY, sql TEXT NOT NULL, created_at TEXT NOT NULL);",
    // Closed windows' partial states, kept for roll-ups.
    r#"
CREATE TABLE runnel_window_states (
    query TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    window_end INTEGER NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (query, window_start, window_end)
);
"#,
    // Pieces of open windows' partial states, saved incrementally
    // (crate::window::delta); `kept`: a closed window kept for corrections.
    r#"
CREATE TABLE runnel_state_pieces (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    query TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    window_end INTEGER NOT NULL,
    kept INTEGER NOT NULL,
    state BLOB NOT NULL
);
CREATE INDEX runnel_state_pieces_window ON runnel_state_pieces (query, window_end, window_start);
"#,
];

fn sqlite_type(kind: ColumnKind) -> &'static str {
    match kind {
        ColumnKind::Bool | ColumnKind::Int => "INTEGER",
        ColumnKind::Real => "REAL",
        ColumnKind::Blob => "BLOB",
        // Timestamps are sortable text in TS_FORMAT.
        ColumnKind::Timestamp | ColumnKind::Text => "TEXT",
    }
}

/// SQLite's SQL.
static DIALECT: Dialect = Dialect {
    seq: "INTEGER PRIMARY KEY AUTOINCREMENT",
    column_type: sqlite_type,
    // TS_FORMAT, as the catalog has always held it.
    now: "strftime('%Y-%m-%d %H:%M:%f', 'now')",
    tie_break: "rowid",
    migrations: MIGRATIONS,
    migrations_setup: "",
    version_query: "PRAGMA user_version",
    set_version: |n| format!("PRAGMA user_version = {n}"),
    table_exists: "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1",
    query_tables: &[
        "runnel_checkpoints",
        "runnel_window_states",
        "runnel_state_pieces",
    ],
};

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Dropped with the last clone of the store: stops the checkpointer.
    _checkpointer: Arc<mpsc::Sender<()>>,
}

/// How often the write-ahead log is copied into the database.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

impl SqliteStore {
    /// Opens (creating if needed) `runnel.db` under `data_dir`; the
    /// migrations are [`super::Store::open`]'s.
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join("runnel.db");
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            _checkpointer: Arc::new(checkpointer(&path)?),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts copying the write-ahead log of the database at `path` into it
/// every [`CHECKPOINT_EVERY`], on a thread and connection of its own, until
/// the returned sender is dropped.
fn checkpointer(path: &Path) -> Result<mpsc::Sender<()>> {
    let conn = Connection::open(path)?;
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("runnel-sqlite-checkpoint".into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
                // Passive: copies what no reader still needs, waits for no one.
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::debug!("sqlite: checkpoint of the write-ahead log: {e}");
                }
            }
        })?;
    Ok(stop)
}

/// Whether SQLite failed for a while (busy, locked, full, I/O) rather than
/// for what was asked of it.
fn unavailable(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory
        )
    )
}

/// A passing failure as [`Error::Unavailable`], others as they are.
fn classify(e: Error) -> Error {
    match e {
        Error::Store(s) if unavailable(&s) => Error::Unavailable(format!("SQLite: {s}")),
        e => e,
    }
}

impl Backend for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn dialect(&self) -> &'static Dialect {
        &DIALECT
    }

    fn transaction(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        let mut conn = self.conn();
        let mut run = || -> Result<()> {
            let tx = conn.transaction()?;
            f(&mut SqliteTx(&tx))?;
            tx.commit()?;
            Ok(())
        };
        run().map_err(classify)
    }

    fn session(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        let conn = self.conn();
        f(&mut SqliteTx(&conn)).map_err(classify)
    }
}

/// Statements on a connection (or a transaction, which is one).
struct SqliteTx<'a>(&'a Connection);

/// `sql` with its `$N` parameters written `?N`, as SQLite numbers them.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (None, '\'' | '"') => quote = Some(c),
            (None, '$') if chars.peek().is_some_and(|n| n.is_ascii_digit()) => {
                out.push('?');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// Rows per prepared statement of a row insert.
const ROWS_PER_INSERT: usize = 64;

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Param::Null => ToSqlOutput::Owned(SqlValue::Null),
            Param::Bool(b) => ToSqlOutput::Owned(SqlValue::Integer(*b as i64)),
            Param::Int(i) => ToSqlOutput::Owned(SqlValue::Integer(*i)),
            Param::Real(f) => ToSqlOutput::Owned(SqlValue::Real(*f)),
            Param::Ts(ms) => ToSqlOutput::Owned(SqlValue::Text(format_ts(*ms))),
            Param::Text(s) | Param::Json(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Param::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

/// One value of a row insert as bound: text and bytes borrowed from their
/// column, so a row costs no allocation of its own.
enum Bound<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl rusqlite::ToSql for Bound<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            Bound::Null => ToSqlOutput::Owned(SqlValue::Null),
            Bound::Int(i) => ToSqlOutput::Owned(SqlValue::Integer(i)),
            Bound::Real(f) => ToSqlOutput::Owned(SqlValue::Real(f)),
            Bound::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Bound::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

/// A row insert's columns as SQLite takes them: timestamps as text, each
/// formatted once per run of equal values (a window's rows share their
/// bounds), the others as they are.
enum BoundCol<'a> {
    Ts(StringArray),
    As(&'a Col),
}

/// A row insert's rows, bound column by column ([`BoundCol`]).
struct BoundRows<'a>(Vec<BoundCol<'a>>);

impl<'a> BoundRows<'a> {
    fn new(rows: &'a Rows) -> Self {
        let cols = rows.cols().iter().map(|c| match c {
            Col::Ts(a) => BoundCol::Ts(ts_text(a)),
            c => BoundCol::As(c),
        });
        BoundRows(cols.collect())
    }

    /// Binds the values of rows `range`, one row after the other, to
    /// `st`'s parameters from the first, value by value: rusqlite's
    /// parameter list, fed by an iterator over rows and columns, cost
    /// a 19 000-row commit about 6 % more.
    fn bind(&self, st: &mut rusqlite::Statement<'_>, range: Range<usize>) -> Result<()> {
        let mut p = 0;
        for i in range {
            for c in &self.0 {
                p += 1;
                let v = match c {
                    BoundCol::Ts(t) if t.is_valid(i) => Bound::Text(t.value(i)),
                    BoundCol::As(c) if c.is_valid(i) => match c {
                        Col::Bool(a) => Bound::Int(a.value(i).into()),
                        Col::Int(a) => Bound::Int(a.value(i)),
                        Col::Real(a) => Bound::Real(a.value(i)),
                        Col::Text(a) => Bound::Text(a.value(i)),
                        Col::Blob(a) => Bound::Blob(a.value(i)),
                        Col::Ts(_) => unreachable!("timestamps are bound as text"),
                    },
                    _ => Bound::Null,
                };
                st.raw_bind_parameter(p, v)?;
            }
        }
        Ok(())
    }
}

/// `a`'s values as SQLite's text timestamps.
fn ts_text(a: &TimestampMillisecondArray) -> StringArray {
    let mut out = StringBuilder::with_capacity(a.len(), a.len() * 23);
    let (mut last, mut text) = (None, String::new());
    for v in a.iter() {
        let Some(ms) = v else {
            out.append_null();
            continue;
        };
        if last != Some(ms) {
            (last, text) = (Some(ms), format_ts(ms));
        }
        out.append_value(&text);
    }
    out.finish()
}

impl Tx for SqliteTx<'_> {
    fn execute(&mut self, sql: &str, params: &[Param]) -> Result<u64> {
        let mut st = self.0.prepare_cached(&numbered(sql))?;
        Ok(st.execute(rusqlite::params_from_iter(params))? as u64)
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        Ok(self.0.execute_batch(sql)?)
    }

    /// A row insert as prepared statements of [`ROWS_PER_INSERT`] rows,
    /// the rest one row at a time: parsing a statement of thousands of
    /// rows cost more than their inserts, and each statement run updates
    /// the `AUTOINCREMENT` sequence of `_seq` once. Values are bound from
    /// the columns ([`Bound`]).
    fn run(&mut self, s: &Stmt) -> Result<()> {
        let Some(rows) = s.rows.as_ref().filter(|r| r.width() > 0) else {
            self.execute(&s.sql, &s.params)?;
            return Ok(());
        };
        let bound = BoundRows::new(rows);
        let per_insert = (MAX_PARAMS / rows.width()).clamp(1, ROWS_PER_INSERT);
        let full = rows.len() / per_insert * per_insert;
        if full > 0 {
            let mut st = self
                .0
                .prepare_cached(&numbered(&s.values_sql(per_insert)))?;
            for from in (0..full).step_by(per_insert) {
                bound.bind(&mut st, from..from + per_insert)?;
                st.raw_execute()?;
            }
        }
        if full < rows.len() {
            let mut st = self.0.prepare_cached(&numbered(&s.values_sql(1)))?;
            for r in full..rows.len() {
                bound.bind(&mut st, r..r + 1)?;
                st.raw_execute()?;
            }
        }
        Ok(())
    }

    fn query_each(
        &mut self,
        sql: &str,
        params: &[Param],
        each: &mut EachRow<'_>,
    ) -> Result<Vec<String>> {
        let mut st = self.0.prepare(&numbered(sql))?;
        let columns: Vec<String> = st.column_names().into_iter().map(String::from).collect();
        let mut rows = st.query(rusqlite::params_from_iter(params))?;
        while let Some(r) = rows.next()? {
            let row = (0..columns.len())
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        ValueRef::Null => Value::Null,
                        ValueRef::Integer(i) => Value::Integer(i),
                        ValueRef::Real(f) => Value::Real(f),
                        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                    })
                })
                .collect::<Result<_>>()?;
            each(&columns, row)?;
        }
        Ok(columns)
    }

    fn query_results(
        &mut self,
        sql: &str,
        params: &[Param],
        out: &mut ResultColumns,
        each: &mut dyn FnMut(&mut ResultColumns) -> Result<()>,
    ) -> Result<()> {
        let mut st = self.0.prepare(&numbered(sql))?;
        let mut rows = st.query(rusqlite::params_from_iter(params))?;
        let kinds = out.kinds().to_vec();
        while let Some(r) = rows.next()? {
            out.start_row(r.get(0)?);
            for (c, kind) in kinds.iter().enumerate() {
                out.push(c, cell(*kind, r.get_ref(c + 1)?));
            }
            each(out)?;
        }
        Ok(())
    }
}

/// A stored value of a results column of `kind`: timestamps are text in
/// [`super::TS_FORMAT`], booleans 0/1; anything else is NULL.
fn cell(kind: ColumnKind, v: ValueRef<'_>) -> Cell<'_> {
    match (kind, v) {
        (ColumnKind::Bool, ValueRef::Integer(i)) => Cell::Bool(i != 0),
        (ColumnKind::Int, ValueRef::Integer(i)) => Cell::Int(i),
        (ColumnKind::Real, ValueRef::Real(f)) => Cell::Real(f),
        (ColumnKind::Real, ValueRef::Integer(i)) => Cell::Real(i as f64),
        (ColumnKind::Timestamp, ValueRef::Text(t)) => std::str::from_utf8(t)
            .ok()
            .and_then(parse_stored_ts)
            .map_or(Cell::Null, Cell::Ts),
        (ColumnKind::Text, ValueRef::Text(t)) => {
            std::str::from_utf8(t).map_or(Cell::Null, Cell::Text)
        }
        (ColumnKind::Blob, ValueRef::Blob(b)) => Cell::Blob(b),
        _ => Cell::Null,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use datafusion::arrow::array::{StringArray, TimestampMillisecondArray};

    use super::{Backend, Param, Rows, SqliteStore, Stmt, format_ts, numbered};

    /// A row insert of 150 rows (two statements of 64 rows, then 22 one
    /// by one) writes every row once, in order, each value in its place:
    /// nulls as NULL, booleans as 0/1, timestamps as text (formatted anew
    /// wherever the value changes).
    #[test]
    fn a_row_insert_writes_every_row_in_order() {
        use datafusion::arrow::array::{BooleanArray, Float64Array, Int64Array, RecordBatch};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let rows = 150i64;
        let text = |i: i64| (i % 7 != 3).then(|| format!("row {i}"));
        let ts = |i: i64| (i != 5).then_some(1_700_000_000_000 + (i / 40) * 10_000);
        let batch = RecordBatch::try_from_iter([
            ("a", Arc::new(Int64Array::from_iter_values(0..rows)) as _),
            (
                "b",
                Arc::new(StringArray::from_iter((0..rows).map(text))) as _,
            ),
            (
                "c",
                Arc::new(TimestampMillisecondArray::from_iter((0..rows).map(ts))) as _,
            ),
            (
                "d",
                Arc::new(Float64Array::from_iter_values(
                    (0..rows).map(|i| i as f64 / 4.0),
                )) as _,
            ),
            (
                "e",
                Arc::new(BooleanArray::from_iter((0..rows).map(|i| Some(i % 2 == 0)))) as _,
            ),
        ])
        .unwrap();
        let insert = Stmt::insert(
            "INSERT INTO t (a, b, c, d, e) VALUES",
            Rows::new(&batch).unwrap(),
        );
        store
            .transaction(&mut |tx| {
                tx.batch(
                    "CREATE TABLE t (_seq INTEGER PRIMARY KEY AUTOINCREMENT, a INTEGER, b TEXT,
                     c TEXT, d REAL, e INTEGER)",
                )?;
                tx.run(&insert)
            })
            .unwrap();
        let mut seen = Vec::new();
        store
            .session(&mut |tx| {
                let (_, rs) = tx.query("SELECT _seq, a, b, c, d, e FROM t ORDER BY _seq", &[])?;
                seen = rs;
                Ok(())
            })
            .unwrap();
        assert_eq!(seen.len(), rows as usize);
        for (i, r) in seen.iter().enumerate() {
            let i = i as i64;
            let or_null = |v: Option<String>| v.map_or(super::Value::Null, super::Value::Text);
            assert_eq!(
                r,
                &vec![
                    super::Value::Integer(i + 1),
                    super::Value::Integer(i),
                    or_null(text(i)),
                    or_null(ts(i).map(format_ts)),
                    super::Value::Real(i as f64 / 4.0),
                    super::Value::Integer((i % 2 == 0).into()),
                ],
                "row {i}"
            );
        }
    }

    #[test]
    fn parameters_are_numbered_for_sqlite_outside_quotes() {
        assert_eq!(
            numbered(r#"SELECT "a$1", '$2' FROM t WHERE x = $1 AND y = $12"#),
            r#"SELECT "a$1", '$2' FROM t WHERE x = ?1 AND y = ?12"#
        );
    }

    /// Commits leave the write-ahead log to the checkpointer, which copies
    /// it into the database so the log is reused instead of growing; the
    /// log goes when the store does.
    #[test]
    fn the_log_is_copied_into_the_database_apart_from_commits() {
        let dir = tempfile::tempdir().unwrap();
        let (db, wal) = (
            dir.path().join("runnel.db"),
            dir.path().join("runnel.db-wal"),
        );
        let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let store = SqliteStore::open(dir.path()).unwrap();
        let blob = vec![7u8; 4 << 20];
        let write = |store: &SqliteStore| {
            store
                .transaction(&mut |tx| {
                    tx.batch("CREATE TABLE IF NOT EXISTS t (b BLOB)")?;
                    tx.execute(
                        "INSERT INTO t (b) VALUES ($1)",
                        &[Param::Blob(blob.clone())],
                    )?;
                    Ok(())
                })
                .unwrap()
        };
        write(&store);
        // The commit wrote its 4 MiB to the log only.
        assert!(size(&wal) >= 4 << 20, "log {} bytes", size(&wal));
        assert!(size(&db) < 1 << 20, "database {} bytes", size(&db));
        let copied = |what: &str, ok: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !ok() {
                assert!(
                    Instant::now() < deadline,
                    "{what}: database {} bytes, log {} bytes",
                    size(&db),
                    size(&wal)
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        copied("first copy", &|| size(&db) >= 4 << 20);
        // The database grows while the copy is still under way: wait until
        // the log reads as wholly copied (a checkpoint that finds nothing
        // left to copy, or waits for the one running, says so).
        let probe = rusqlite::Connection::open(&db).unwrap();
        copied("copy finished", &|| {
            let (busy, logged, done): (i64, i64, i64) = probe
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .unwrap();
            busy == 0 && logged == done
        });
        drop(probe);
        // Once copied, the log starts over: 4 MiB more reuse it.
        write(&store);
        assert!(size(&wal) < 6 << 20, "log {} bytes", size(&wal));
        copied("second copy", &|| size(&db) >= 8 << 20);
        drop(store);
        // The last connection to close (the checkpointer's) removes the log.
        copied("log removed", &|| !wal.exists());
    }
}
