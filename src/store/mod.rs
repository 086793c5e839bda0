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
//! Next to it, `<query>:late` keeps the query's late records ([`late`]).
//!
//! Both apply versioned migrations when opened. [`Store`] holds what the
//! backends share (the catalog, a query's saved progress and the order of
//! a commit (`progress.rs`, `statements.rs`), results pages); a backend
//! only runs statements (`backend::Backend`).

pub(crate) mod backend;
pub mod late;
pub mod pg_tls;
pub mod postgres;
mod progress;
pub mod results;
pub mod sqlite;
pub(crate) mod statements;

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Schema};

use crate::error::{Error, Result};
use backend::{Backend, Dialect, Param, Tx, Value};
use postgres::PgStore;
pub use progress::{Checkpoint, WindowState};
use sqlite::SqliteStore;

/// Format of timestamps in results pages: sortable and SQLite-friendly.
pub const TS_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.3f";

/// Formats epoch ms as a results-table timestamp.
pub fn format_ts(ms: i64) -> String {
    let mut out = Vec::with_capacity(23);
    if crate::format::encode::push_ts(ms, b' ', b"", &mut out) {
        return String::from_utf8(out).expect("ASCII digits and separators");
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format(TS_FORMAT).to_string())
        .unwrap_or_else(|| ms.to_string())
}

pub use crate::format::encode::{API_TS_FORMAT, format_api_ts};

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
#[derive(Debug)]
pub struct ResultPage {
    /// The rows, one column per column of the query's output in its stored
    /// type (`results::stored_type`: `Timestamp(ms)`, `Int64`, `Float64`,
    /// `Boolean`, `Utf8`, `Binary`).
    pub batch: RecordBatch,
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
    /// Only final rows: no provisional rows of open windows.
    pub final_only: bool,
    /// At most this many rows.
    pub limit: usize,
}

/// The store of a server: SQLite or PostgreSQL, behind one `Backend`.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

/// The text of a stored value, if it is text.
fn text(v: &Value) -> Option<&str> {
    match v {
        Value::Text(s) => Some(s),
        _ => None,
    }
}

/// The integer of a stored value, if it is one.
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        _ => None,
    }
}

/// A results-table timestamp as SQLite stores it ([`TS_FORMAT`]) as epoch
/// ms, read without parsing a format for the usual four-digit years.
pub(crate) fn parse_stored_ts(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b.get(r)?.iter().try_fold(0u32, |n, d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let fast = || -> Option<i64> {
        if b.len() != 23 || b[4] != b'-' || b[7] != b'-' || b[10] != b' ' || b[19] != b'.' {
            return None;
        }
        let date = chrono::NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
        let t = date.and_hms_milli_opt(num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?)?;
        Some(t.and_utc().timestamp_millis())
    };
    fast().or_else(|| {
        chrono::NaiveDateTime::parse_from_str(text, TS_FORMAT)
            .ok()
            .map(|d| d.and_utc().timestamp_millis())
    })
}

/// A results-table timestamp given in [`TS_FORMAT`] as epoch ms.
fn stored_ts(text: &str) -> Result<i64> {
    chrono::NaiveDateTime::parse_from_str(text, TS_FORMAT)
        .map(|d| d.and_utc().timestamp_millis())
        .map_err(|e| Error::BadRequest(format!("bad time '{text}': {e}")))
}

impl Store {
    fn new(backend: impl Backend + 'static) -> Result<Self> {
        backend::migrate(&backend)?;
        Ok(Store {
            backend: Arc::new(backend),
        })
    }

    /// Opens the SQLite store under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        Self::new(SqliteStore::open(data_dir)?)
    }

    /// Opens the store at `url` (`postgres://...` or `postgresql://...`, or
    /// `sqlite:DIR` for the SQLite store under another directory), or the
    /// SQLite store under `data_dir` when there is none.
    pub fn connect(url: Option<&str>, data_dir: &Path) -> Result<Self> {
        match url {
            None => Self::open(data_dir),
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Self::new(PgStore::connect(u)?)
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
        self.backend.postgres().ok_or_else(|| {
            Error::BadRequest(
                "cluster mode keeps shared state in PostgreSQL: start with --store postgres://..."
                    .into(),
            )
        })
    }

    /// Which backend this is (`sqlite` or `postgres`).
    pub fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    fn dialect(&self) -> &'static Dialect {
        self.backend.dialect()
    }

    /// Runs `f` in one transaction and returns what it returned.
    fn write<T>(&self, mut f: impl FnMut(&mut dyn Tx) -> Result<T>) -> Result<T> {
        let mut out = None;
        self.backend.transaction(&mut |tx| {
            out = Some(f(tx)?);
            Ok(())
        })?;
        Ok(out.expect("set when the transaction succeeds"))
    }

    /// Runs the reads of `f` and returns what it returned.
    fn read<T>(&self, mut f: impl FnMut(&mut dyn Tx) -> Result<T>) -> Result<T> {
        let mut out = None;
        self.backend.session(&mut |tx| {
            out = Some(f(tx)?);
            Ok(())
        })?;
        Ok(out.expect("set when the reads succeed"))
    }

    fn save(&self, table: &str, name: &str, sql: &str) -> Result<()> {
        let insert = format!(
            "INSERT INTO {table} (name, sql, created_at) VALUES ($1, $2, {})",
            self.dialect().now
        );
        let params = [Param::Text(name.into()), Param::Text(sql.into())];
        self.write(|tx| tx.execute(&insert, &params).map(drop))
    }

    fn list(&self, table: &str) -> Result<Vec<(String, String)>> {
        let sql = format!(
            "SELECT name, sql FROM {table} ORDER BY created_at, {}",
            self.dialect().tie_break
        );
        let (_, rows) = self.read(|tx| tx.query(&sql, &[]))?;
        Ok(rows
            .iter()
            .map(|r| {
                let s = |i: usize| text(&r[i]).unwrap_or_default().to_string();
                (s(0), s(1))
            })
            .collect())
    }

    /// Saves a stream definition.
    pub fn save_stream(&self, name: &str, sql: &str) -> Result<()> {
        self.save("runnel_streams", name, sql)
    }

    /// Deletes a stream definition.
    pub fn delete_stream(&self, name: &str) -> Result<()> {
        let params = [Param::Text(name.into())];
        self.write(|tx| {
            tx.execute("DELETE FROM runnel_streams WHERE name = $1", &params)
                .map(drop)
        })
    }

    /// All stream definitions, oldest first.
    pub fn list_streams(&self) -> Result<Vec<(String, String)>> {
        self.list("runnel_streams")
    }

    /// Saves a reference table definition.
    pub fn save_table(&self, name: &str, sql: &str) -> Result<()> {
        self.save("runnel_tables", name, sql)
    }

    /// All reference table definitions, oldest first.
    pub fn list_tables(&self) -> Result<Vec<(String, String)>> {
        self.list("runnel_tables")
    }

    /// All query definitions, oldest first.
    pub fn list_queries(&self) -> Result<Vec<(String, String)>> {
        self.list("runnel_queries")
    }

    /// Saves a query and creates its results table for `schema` (kept if it exists).
    pub fn save_query(&self, name: &str, sql: &str, schema: &Schema) -> Result<()> {
        let d = self.dialect();
        let insert = format!(
            "INSERT INTO runnel_queries (name, sql, created_at) VALUES ($1, $2, {})",
            d.now
        );
        let params = [Param::Text(name.into()), Param::Text(sql.into())];
        let ddl = backend::results_ddl(d, name, schema);
        self.write(|tx| {
            tx.execute(&insert, &params)?;
            tx.batch(&ddl)
        })
    }

    /// Deletes a query, its checkpoint, its late table and its results
    /// table, or renames the results table to `keep_as` (`keep_as_2`, ...
    /// when taken) and returns the name it kept.
    pub fn delete_query(&self, name: &str, keep_as: Option<&str>) -> Result<Option<String>> {
        let params = [Param::Text(name.into())];
        let drop_late = Self::drop_late_sql(name);
        let d = self.dialect();
        self.write(|tx| {
            tx.execute("DELETE FROM runnel_queries WHERE name = $1", &params)?;
            for t in d.query_tables {
                tx.execute(&format!("DELETE FROM {t} WHERE query = $1"), &params)?;
            }
            // A name taken (a drop earlier in the same second) gains `_2`, `_3`, ...
            let mut kept = keep_as.map(str::to_string);
            let mut n = 1;
            while let (Some(base), Some(name)) = (keep_as, &mut kept) {
                let mut taken = false;
                tx.query_each(d.table_exists, &[Param::Text(name.clone())], &mut |_, _| {
                    taken = true;
                    Ok(())
                })?;
                if !taken {
                    break;
                }
                n += 1;
                *name = format!("{base}_{n}");
            }
            tx.batch(&backend::drop_results_sql(name, kept.as_deref()))?;
            tx.batch(&drop_late)?;
            Ok(kept.clone())
        })
    }

    /// The newest cursor of a query's results (its largest row sequence),
    /// None while it has no rows.
    pub fn newest_cursor(&self, query: &str) -> Result<Option<i64>> {
        let sql = format!("SELECT MAX(_seq) FROM {}", quote(query));
        self.scalar(&sql, &[])
    }

    /// The one integer (or NULL) a query answers.
    fn scalar(&self, sql: &str, params: &[Param]) -> Result<Option<i64>> {
        let (_, rows) = self.read(|tx| tx.query(sql, params))?;
        Ok(rows.first().and_then(|r| r.first()).and_then(int))
    }
}

#[cfg(test)]
mod tests {
    /// The digits written directly read as chrono's formats do, before
    /// 1970, around leap days and at the ends of the range they cover.
    #[test]
    fn timestamps_written_directly_match_the_formats() {
        use super::{TS_FORMAT, format_ts};
        use crate::format::encode::{API_TS_FORMAT, push_ts};
        let mut samples = vec![
            0,
            -1,
            999,
            -86_400_000,
            951_782_400_000, // 2000-02-29
            1_764_855_620_123,
            253_402_300_799_999, // 9999-12-31 23:59:59.999
            -62_167_219_200_000, // 0000-01-01
        ];
        let mut x: i64 = 1;
        for _ in 0..2_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            samples
                .push(x.rem_euclid(253_402_300_800_000 + 62_167_219_200_000) - 62_167_219_200_000);
        }
        for ms in samples {
            let d = chrono::DateTime::from_timestamp_millis(ms).unwrap();
            let mut out = Vec::new();
            assert!(push_ts(ms, b' ', b"", &mut out));
            assert_eq!(
                String::from_utf8(out).unwrap(),
                d.format(TS_FORMAT).to_string()
            );
            assert_eq!(format_ts(ms), d.format(TS_FORMAT).to_string());
            let mut out = Vec::new();
            assert!(push_ts(ms, b'T', b"Z", &mut out));
            assert_eq!(
                String::from_utf8(out).unwrap(),
                d.format(API_TS_FORMAT).to_string()
            );
        }
        let mut out = Vec::new();
        assert!(!push_ts(253_402_300_800_000, b' ', b"", &mut out) && out.is_empty());
        assert_eq!(format_ts(253_402_300_800_000), "+10000-01-01 00:00:00.000");
    }
}
