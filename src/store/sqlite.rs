//! The embedded SQLite store.
//!
//! Window results, the consumed Kafka offsets and the open-window state are
//! written in one transaction ([`Store::commit`]), so after a restart a query
//! resumes from exactly the point its results reflect. A closed window's rows
//! replace any earlier rows of the same window, so re-processing never
//! duplicates them.
//!
//! ```no_run
//! let store = runnel::store::sqlite::SqliteStore::open(std::path::Path::new("runnel-data")).unwrap();
//! for (name, sql) in store.list_streams().unwrap() {
//!     println!("{name}: {sql}");
//! }
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, Float64Array, Int64Array, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Float64Type, Int64Type, Schema, TimeUnit, TimestampMillisecondType,
};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Checkpoint, ColumnKind, ResultFilter, ResultPage, column_kind, format_ts, quote};
use crate::error::{Error, Result};
use crate::model::Emission;

fn sqlite_type(dt: &DataType) -> &'static str {
    match column_kind(dt) {
        ColumnKind::Bool | ColumnKind::Int => "INTEGER",
        ColumnKind::Real => "REAL",
        ColumnKind::Blob => "BLOB",
        // Timestamps are sortable text in TS_FORMAT.
        ColumnKind::Timestamp | ColumnKind::Text => "TEXT",
    }
}

/// A column converted to one of SQLite's storage classes.
enum Stored {
    Int(Int64Array),
    Real(Float64Array),
    Text(StringArray),
    Blob(BinaryArray),
}

impl Stored {
    fn from_array(a: &ArrayRef) -> Result<Self> {
        Ok(match column_kind(a.data_type()) {
            ColumnKind::Timestamp => {
                let ms = cast(a, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
                let ms = ms.as_primitive::<TimestampMillisecondType>();
                Stored::Text(ms.iter().map(|v| v.map(format_ts)).collect())
            }
            ColumnKind::Bool | ColumnKind::Int => Stored::Int(
                cast(a, &DataType::Int64)?
                    .as_primitive::<Int64Type>()
                    .clone(),
            ),
            ColumnKind::Real => Stored::Real(
                cast(a, &DataType::Float64)?
                    .as_primitive::<Float64Type>()
                    .clone(),
            ),
            ColumnKind::Blob => {
                Stored::Blob(cast(a, &DataType::Binary)?.as_binary::<i32>().clone())
            }
            ColumnKind::Text => Stored::Text(cast(a, &DataType::Utf8)?.as_string::<i32>().clone()),
        })
    }

    fn value(&self, i: usize) -> Value {
        match self {
            Stored::Int(a) if a.is_valid(i) => Value::Integer(a.value(i)),
            Stored::Real(a) if a.is_valid(i) => Value::Real(a.value(i)),
            Stored::Text(a) if a.is_valid(i) => Value::Text(a.value(i).to_string()),
            Stored::Blob(a) if a.is_valid(i) => Value::Blob(a.value(i).to_vec()),
            _ => Value::Null,
        }
    }
}

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

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
];

fn now_text() -> String {
    format_ts(chrono::Utc::now().timestamp_millis())
}

impl SqliteStore {
    /// Opens (creating if needed) `runnel.db` under `data_dir` and applies migrations.
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let conn = Connection::open(data_dir.join("runnel.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version) {
            conn.execute_batch(&format!(
                "BEGIN; {m}; PRAGMA user_version = {}; COMMIT;",
                i + 1
            ))?;
        }
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Saves a stream definition.
    pub fn save_stream(&self, name: &str, sql: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO runnel_streams (name, sql, created_at) VALUES (?1, ?2, ?3)",
            params![name, sql, now_text()],
        )?;
        Ok(())
    }

    /// Deletes a stream definition.
    pub fn delete_stream(&self, name: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM runnel_streams WHERE name = ?1", params![name])?;
        Ok(())
    }

    /// All stream definitions, oldest first.
    pub fn list_streams(&self) -> Result<Vec<(String, String)>> {
        self.list("runnel_streams")
    }

    /// Saves a reference table definition.
    pub fn save_table(&self, name: &str, sql: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO runnel_tables (name, sql, created_at) VALUES (?1, ?2, ?3)",
            params![name, sql, now_text()],
        )?;
        Ok(())
    }

    /// All reference table definitions, oldest first.
    pub fn list_tables(&self) -> Result<Vec<(String, String)>> {
        self.list("runnel_tables")
    }

    /// All query definitions, oldest first.
    pub fn list_queries(&self) -> Result<Vec<(String, String)>> {
        self.list("runnel_queries")
    }

    fn list(&self, table: &str) -> Result<Vec<(String, String)>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT name, sql FROM {table} ORDER BY created_at, rowid"
        ))?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Saves a query and creates its results table for `schema` (kept if it exists).
    pub fn save_query(&self, name: &str, sql: &str, schema: &Schema) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO runnel_queries (name, sql, created_at) VALUES (?1, ?2, ?3)",
            params![name, sql, now_text()],
        )?;
        tx.execute_batch(&super::results_ddl(
            name,
            schema,
            "INTEGER PRIMARY KEY AUTOINCREMENT",
            sqlite_type,
        ))?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes a query, its checkpoint and its results table (or renames
    /// the table to `keep_as`).
    pub fn delete_query(&self, name: &str, keep_as: Option<&str>) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM runnel_queries WHERE name = ?1", params![name])?;
        for t in ["runnel_checkpoints", "runnel_window_states"] {
            tx.execute(&format!("DELETE FROM {t} WHERE query = ?1"), params![name])?;
        }
        tx.execute_batch(&super::drop_results_sql(name, keep_as))?;
        tx.commit()?;
        Ok(())
    }

    /// Writes emitted rows, the offsets consumed so far and the open-window
    /// state, atomically.
    pub fn commit(
        &self,
        query: &str,
        emissions: &[Emission],
        offsets: &BTreeMap<i32, i64>,
        state: &[u8],
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let table = quote(query);
        for e in emissions {
            if let Some((start, end, state)) = super::window_state(e)? {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO runnel_window_states (query, window_start, window_end, state)
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![query, start, end, state])?;
            }
            let b = &e.batch;
            if b.num_rows() == 0 && !e.cumulative {
                continue;
            }
            let cols: Vec<Stored> = b
                .columns()
                .iter()
                .map(Stored::from_array)
                .collect::<Result<_>>()?;
            if e.cumulative {
                tx.execute(&format!("DELETE FROM {table}"), [])?;
            } else {
                let mut del = tx.prepare_cached(&format!(
                    "DELETE FROM {table} WHERE window_start = ?1 AND window_end = ?2"
                ))?;
                for (s, en) in super::replaced_windows(b)? {
                    del.execute(params![format_ts(s), format_ts(en)])?;
                }
            }
            let names: Vec<String> = b
                .schema()
                .fields()
                .iter()
                .map(|f| quote(f.name()))
                .collect();
            let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
            let mut ins = tx.prepare_cached(&format!(
                "INSERT INTO {table} ({}) VALUES ({})",
                names.join(", "),
                marks.join(", ")
            ))?;
            for i in 0..b.num_rows() {
                let row: Vec<Value> = cols.iter().map(|c| c.value(i)).collect();
                ins.execute(rusqlite::params_from_iter(row))?;
            }
        }
        let offsets_json =
            serde_json::to_string(offsets).map_err(|e| Error::Execution(e.to_string()))?;
        tx.execute(
            "INSERT INTO runnel_checkpoints (query, offsets, state, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(query) DO UPDATE SET offsets = excluded.offsets, state = excluded.state,
             updated_at = excluded.updated_at",
            params![query, offsets_json, state, now_text()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Stored window states of `query` starting in `[from, to)`, oldest first.
    pub fn load_window_states(
        &self,
        query: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<super::WindowState>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT window_start, window_end, state FROM runnel_window_states
             WHERE query = ?1 AND window_start >= ?2 AND window_start < ?3
             ORDER BY window_start, window_end",
        )?;
        let rows = st.query_map(params![query, from, to], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// The latest end among `query`'s stored window states.
    pub fn newest_window_state_end(&self, query: &str) -> Result<Option<i64>> {
        Ok(self.conn().query_row(
            "SELECT MAX(window_end) FROM runnel_window_states WHERE query = ?1",
            params![query],
            |r| r.get(0),
        )?)
    }

    /// Deletes the stored window states of `query` that ended before `before`.
    pub fn prune_window_states(&self, query: &str, before: i64) -> Result<usize> {
        Ok(self.conn().execute(
            "DELETE FROM runnel_window_states WHERE query = ?1 AND window_end < ?2",
            params![query, before],
        )?)
    }

    /// Forgets a query's saved offsets and state.
    pub fn delete_checkpoint(&self, query: &str) -> Result<()> {
        self.conn().execute(
            "DELETE FROM runnel_checkpoints WHERE query = ?1",
            params![query],
        )?;
        Ok(())
    }

    /// The last checkpoint of a query: next offsets per partition and the state blob.
    pub fn load_checkpoint(&self, query: &str) -> Result<Option<Checkpoint>> {
        let row: Option<(String, Option<Vec<u8>>)> = self
            .conn()
            .query_row(
                "SELECT offsets, state FROM runnel_checkpoints WHERE query = ?1",
                params![query],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match row {
            None => Ok(None),
            Some((offsets, state)) => {
                let offsets = serde_json::from_str(&offsets)
                    .map_err(|e| Error::Execution(format!("corrupt checkpoint offsets: {e}")))?;
                Ok(Some((offsets, state.unwrap_or_default())))
            }
        }
    }

    /// Reads all of a query's results in one statement (one consistent
    /// view, even while windows are replaced), handing them to `each` in
    /// pages of `page_rows`; an error from `each` stops the read.
    pub fn read_all_results(
        &self,
        query: &str,
        page_rows: usize,
        each: &mut dyn FnMut(ResultPage) -> Result<()>,
    ) -> Result<()> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!("SELECT * FROM {} ORDER BY _seq", quote(query)))?;
        let columns: Vec<String> = st.column_names()[1..]
            .iter()
            .map(|c| c.to_string())
            .collect();
        let n = columns.len() + 1;
        let mut rows = st.query([])?;
        let mut page = ResultPage {
            columns,
            ..Default::default()
        };
        loop {
            let row = rows.next()?;
            if let Some(r) = row {
                page.seqs.push(r.get(0)?);
                page.rows.push(
                    (1..n)
                        .map(|i| r.get::<_, Value>(i))
                        .collect::<std::result::Result<_, _>>()?,
                );
            }
            if page.rows.len() == page_rows || (row.is_none() && !page.rows.is_empty()) {
                page.cursor = page.seqs.last().copied();
                let next = ResultPage {
                    columns: page.columns.clone(),
                    ..Default::default()
                };
                each(std::mem::replace(&mut page, next))?;
            }
            if row.is_none() {
                return Ok(());
            }
        }
    }

    /// Reads a page of a query's results, oldest write first.
    pub fn read_results(&self, query: &str, f: &ResultFilter) -> Result<ResultPage> {
        let conn = self.conn();
        let mut sql = format!("SELECT * FROM {} WHERE 1 = 1", quote(query));
        let mut args: Vec<Value> = Vec::new();
        if let Some(from) = &f.from {
            sql.push_str(" AND window_start >= ?");
            args.push(Value::Text(from.clone()));
        }
        if let Some(to) = &f.to {
            sql.push_str(" AND window_start < ?");
            args.push(Value::Text(to.clone()));
        }
        if let Some(after) = f.after {
            sql.push_str(" AND _seq > ?");
            args.push(Value::Integer(after));
        }
        // One row more than asked tells whether the page is the last.
        sql.push_str(&format!(
            " ORDER BY _seq LIMIT {}",
            f.limit.min(i64::MAX as usize - 1) + 1
        ));
        let mut st = conn.prepare(&sql)?;
        let columns: Vec<String> = st.column_names().into_iter().map(String::from).collect();
        let n = columns.len();
        let rows = st.query_map(rusqlite::params_from_iter(args), |r| {
            (0..n)
                .map(|i| r.get::<_, Value>(i))
                .collect::<std::result::Result<Vec<_>, _>>()
        })?;
        let mut out: Vec<Vec<Value>> = rows.collect::<std::result::Result<_, _>>()?;
        let has_more = out.len() > f.limit;
        out.truncate(f.limit);
        let cursor = out.last().and_then(|r| match r[0] {
            Value::Integer(i) => Some(i),
            _ => None,
        });
        let seqs = out
            .iter_mut()
            .map(|r| match r.remove(0) {
                Value::Integer(i) => i,
                _ => 0,
            })
            .collect();
        Ok(ResultPage {
            columns: columns[1..].to_vec(),
            rows: out,
            cursor: cursor.or(f.after),
            seqs,
            has_more,
        })
    }

    /// The largest row sequence of a query's results.
    pub fn newest_cursor(&self, query: &str) -> Result<Option<i64>> {
        let sql = format!("SELECT MAX(_seq) FROM {}", quote(query));
        Ok(self.conn().query_row(&sql, [], |r| r.get(0))?)
    }
}
