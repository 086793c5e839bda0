//! The PostgreSQL store (`--store postgres://user:pass@host/db`).
//!
//! It holds what the SQLite store holds, in the same shape: `runnel_`
//! catalog tables, checkpoints, and one typed results table per query
//! (`TIMESTAMP(3)` window bounds, `BIGINT`, `DOUBLE PRECISION`, `TEXT`,
//! `BYTEA`), so results are plain tables for `psql`:
//!
//! ```text
//! $ psql "$RUNNEL_STORE" -c 'SELECT * FROM adnetwork ORDER BY window_start DESC LIMIT 5'
//! ```
//!
//! Store calls are synchronous, made from query threads and from the HTTP
//! server's tasks alike, so the client lives on a small runtime of its own
//! and each call waits for its answer there.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use chrono::NaiveDateTime;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Float64Array, Int64Array, StringArray,
    TimestampMillisecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Float64Type, Int64Type, Schema, TimeUnit, TimestampMillisecondType,
};
use tokio::sync::Mutex;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Row};

use super::{Checkpoint, ResultFilter, ResultPage, TS_FORMAT, Value, quote};
use crate::error::{Error, Result};
use crate::window::Emission;

/// Versioned schema migrations, applied in order under an advisory lock so
/// servers starting together against one database do not race.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE runnel_streams (
    name TEXT PRIMARY KEY, sql TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(), seq BIGSERIAL
);
CREATE TABLE runnel_tables (
    name TEXT PRIMARY KEY, sql TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(), seq BIGSERIAL
);
CREATE TABLE runnel_queries (
    name TEXT PRIMARY KEY, sql TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(), seq BIGSERIAL
);
CREATE TABLE runnel_checkpoints (
    query TEXT PRIMARY KEY,
    offsets JSONB NOT NULL,
    state BYTEA,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"#];

/// Lock key of the migrations (any fixed number shared by all servers).
const MIGRATION_LOCK: i64 = 0x72756e6e656c;

/// At most this many bind parameters per statement (the protocol allows 65 535).
const MAX_PARAMS: usize = 30_000;

/// The runtime the client lives on; shut down without blocking, since the
/// last handle may be dropped inside another runtime.
struct PgRuntime(Option<tokio::runtime::Runtime>);

impl Drop for PgRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    rt: Arc<PgRuntime>,
    client: Arc<Mutex<Client>>,
}

type Param = Box<dyn ToSql + Sync + Send>;

fn refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

fn pg_type(dt: &DataType) -> &'static str {
    match dt {
        DataType::Boolean => "BOOLEAN",
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => "BIGINT",
        DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::Decimal128(_, _) => {
            "DOUBLE PRECISION"
        }
        DataType::Timestamp(_, _) => "TIMESTAMP(3)",
        DataType::Binary | DataType::LargeBinary => "BYTEA",
        _ => "TEXT",
    }
}

fn naive(ms: i64) -> Option<NaiveDateTime> {
    chrono::DateTime::from_timestamp_millis(ms).map(|d| d.naive_utc())
}

/// A column converted to the type of its results-table column.
enum Col {
    Bool(BooleanArray),
    Int(Int64Array),
    Real(Float64Array),
    Ts(TimestampMillisecondArray),
    Text(StringArray),
    Blob(BinaryArray),
}

impl Col {
    fn from_array(a: &ArrayRef) -> Result<Self> {
        Ok(match pg_type(a.data_type()) {
            "BOOLEAN" => Col::Bool(a.as_boolean().clone()),
            "BIGINT" => Col::Int(
                cast(a, &DataType::Int64)?
                    .as_primitive::<Int64Type>()
                    .clone(),
            ),
            "DOUBLE PRECISION" => Col::Real(
                cast(a, &DataType::Float64)?
                    .as_primitive::<Float64Type>()
                    .clone(),
            ),
            "TIMESTAMP(3)" => Col::Ts(
                cast(a, &DataType::Timestamp(TimeUnit::Millisecond, None))?
                    .as_primitive::<TimestampMillisecondType>()
                    .clone(),
            ),
            "BYTEA" => Col::Blob(cast(a, &DataType::Binary)?.as_binary::<i32>().clone()),
            _ => Col::Text(cast(a, &DataType::Utf8)?.as_string::<i32>().clone()),
        })
    }

    fn param(&self, i: usize) -> Param {
        fn opt<T>(valid: bool, v: impl FnOnce() -> T) -> Option<T> {
            valid.then(v)
        }
        match self {
            Col::Bool(a) => Box::new(opt(a.is_valid(i), || a.value(i))),
            Col::Int(a) => Box::new(opt(a.is_valid(i), || a.value(i))),
            Col::Real(a) => Box::new(opt(a.is_valid(i), || a.value(i))),
            Col::Ts(a) => Box::new(opt(a.is_valid(i), || naive(a.value(i))).flatten()),
            Col::Text(a) => Box::new(opt(a.is_valid(i), || a.value(i).to_string())),
            Col::Blob(a) => Box::new(opt(a.is_valid(i), || a.value(i).to_vec())),
        }
    }
}

/// A results-table value as the shared [`Value`] (timestamps as text in
/// the SQLite store's format, booleans as 0/1).
fn value(row: &Row, i: usize) -> Result<Value> {
    let t = row.columns()[i].type_();
    let v = if *t == Type::INT8 {
        row.try_get::<_, Option<i64>>(i)?.map(Value::Integer)
    } else if *t == Type::INT4 {
        row.try_get::<_, Option<i32>>(i)?
            .map(|v| Value::Integer(v.into()))
    } else if *t == Type::FLOAT8 {
        row.try_get::<_, Option<f64>>(i)?.map(Value::Real)
    } else if *t == Type::BOOL {
        row.try_get::<_, Option<bool>>(i)?
            .map(|v| Value::Integer(v.into()))
    } else if *t == Type::TIMESTAMP {
        row.try_get::<_, Option<NaiveDateTime>>(i)?
            .map(|v| Value::Text(v.format(TS_FORMAT).to_string()))
    } else if *t == Type::BYTEA {
        row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob)
    } else {
        row.try_get::<_, Option<String>>(i)?.map(Value::Text)
    };
    Ok(v.unwrap_or(Value::Null))
}

fn parse_ts(text: &str) -> Result<NaiveDateTime> {
    NaiveDateTime::parse_from_str(text, TS_FORMAT)
        .map_err(|e| Error::BadRequest(format!("bad time '{text}': {e}")))
}

fn results_ddl(name: &str, schema: &Schema) -> String {
    let cols: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", quote(f.name()), pg_type(f.data_type())))
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {t} (_seq BIGSERIAL PRIMARY KEY, {cols});
         CREATE INDEX IF NOT EXISTS {idx} ON {t} (window_start, window_end);",
        t = quote(name),
        cols = cols.join(", "),
        idx = quote(&format!("{name}_window")),
    )
}

impl PgStore {
    /// Connects to `url` (a libpq-style URL or key=value string) and applies
    /// migrations.
    pub fn connect(url: &str) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("runnel-postgres")
            .enable_all()
            .build()?;
        let url = url.to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let r = tokio_postgres::connect(&url, NoTls)
                .await
                .map(|(client, conn)| {
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::error!("postgres connection closed: {e}");
                        }
                    });
                    client
                });
            let _ = tx.send(r);
        });
        let client = rx
            .recv()
            .map_err(|_| Error::Execution("postgres connection task ended".into()))??;
        let store = PgStore {
            rt: Arc::new(PgRuntime(Some(rt))),
            client: Arc::new(Mutex::new(client)),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Runs `f` with the client on the store's runtime and waits for it.
    fn run<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Mutex<Client>>) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let fut = f(self.client.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let rt = self
            .rt
            .0
            .as_ref()
            .expect("runtime lives as long as the store");
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| Error::Execution("postgres store task ended".into()))?
    }

    fn migrate(&self) -> Result<()> {
        self.run(|c| async move {
            let mut c = c.lock().await;
            let tx = c.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS runnel_migrations (
                     version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .await?;
            let row = tx
                .query_one(
                    "SELECT coalesce(max(version), 0) FROM runnel_migrations",
                    &[],
                )
                .await?;
            let version: i32 = row.get(0);
            for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
                tx.batch_execute(m).await?;
                tx.execute(
                    "INSERT INTO runnel_migrations (version) VALUES ($1)",
                    &[&(i as i32 + 1)],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn execute(&self, sql: String, params: Vec<Param>) -> Result<()> {
        self.run(|c| async move {
            c.lock().await.execute(&sql, &refs(&params)).await?;
            Ok(())
        })
    }

    fn save(&self, table: &str, name: &str, sql: &str) -> Result<()> {
        self.execute(
            format!("INSERT INTO {table} (name, sql) VALUES ($1, $2)"),
            vec![Box::new(name.to_string()), Box::new(sql.to_string())],
        )
    }

    fn list(&self, table: &str) -> Result<Vec<(String, String)>> {
        let sql = format!("SELECT name, sql FROM {table} ORDER BY created_at, seq");
        self.run(|c| async move {
            let rows = c.lock().await.query(&sql, &[]).await?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    /// Saves a stream definition.
    pub fn save_stream(&self, name: &str, sql: &str) -> Result<()> {
        self.save("runnel_streams", name, sql)
    }

    /// Deletes a stream definition.
    pub fn delete_stream(&self, name: &str) -> Result<()> {
        self.execute(
            "DELETE FROM runnel_streams WHERE name = $1".into(),
            vec![Box::new(name.to_string())],
        )
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
        let (name, sql, ddl) = (name.to_string(), sql.to_string(), results_ddl(name, schema));
        self.run(|c| async move {
            let mut c = c.lock().await;
            let tx = c.transaction().await?;
            tx.execute(
                "INSERT INTO runnel_queries (name, sql) VALUES ($1, $2)",
                &[&name, &sql],
            )
            .await?;
            tx.batch_execute(&ddl).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Deletes a query, its checkpoint and its results table.
    pub fn delete_query(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.run(|c| async move {
            let mut c = c.lock().await;
            let tx = c.transaction().await?;
            tx.execute("DELETE FROM runnel_queries WHERE name = $1", &[&name])
                .await?;
            tx.execute("DELETE FROM runnel_checkpoints WHERE query = $1", &[&name])
                .await?;
            tx.batch_execute(&format!("DROP TABLE IF EXISTS {}", quote(&name)))
                .await?;
            tx.commit().await?;
            Ok(())
        })
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
        let table = quote(query);
        // Statements with their parameters, built before going async.
        let mut stmts: Vec<(String, Vec<Param>)> = Vec::new();
        for e in emissions {
            let b = &e.batch;
            if b.num_rows() == 0 && !e.cumulative {
                continue;
            }
            let cols: Vec<Col> = b
                .columns()
                .iter()
                .map(Col::from_array)
                .collect::<Result<_>>()?;
            if e.cumulative {
                stmts.push((format!("DELETE FROM {table}"), vec![]));
            } else {
                let mut seen = std::collections::HashSet::new();
                for i in 0..b.num_rows() {
                    let key = match (&cols[0], &cols[1]) {
                        (Col::Ts(s), Col::Ts(en)) => (s.value(i), en.value(i)),
                        _ => {
                            return Err(Error::Execution("window bounds are not timestamps".into()));
                        }
                    };
                    if seen.insert(key) {
                        stmts.push((
                            format!(
                                "DELETE FROM {table} WHERE window_start = $1 AND window_end = $2"
                            ),
                            vec![cols[0].param(i), cols[1].param(i)],
                        ));
                    }
                }
            }
            let names: Vec<String> = b
                .schema()
                .fields()
                .iter()
                .map(|f| quote(f.name()))
                .collect();
            let per_stmt = (MAX_PARAMS / names.len().max(1)).max(1);
            let mut start = 0;
            while start < b.num_rows() {
                let end = (start + per_stmt).min(b.num_rows());
                let mut params = Vec::with_capacity((end - start) * cols.len());
                let mut rows = Vec::with_capacity(end - start);
                for i in start..end {
                    let marks: Vec<String> = (0..cols.len())
                        .map(|c| format!("${}", params.len() + c + 1))
                        .collect();
                    rows.push(format!("({})", marks.join(", ")));
                    params.extend(cols.iter().map(|c| c.param(i)));
                }
                stmts.push((
                    format!(
                        "INSERT INTO {table} ({}) VALUES {}",
                        names.join(", "),
                        rows.join(", ")
                    ),
                    params,
                ));
                start = end;
            }
        }
        let offsets_json =
            serde_json::to_value(offsets).map_err(|e| Error::Execution(e.to_string()))?;
        let (query, state) = (query.to_string(), state.to_vec());
        self.run(|c| async move {
            let mut c = c.lock().await;
            let tx = c.transaction().await?;
            for (sql, params) in &stmts {
                tx.execute(sql.as_str(), &refs(params)).await?;
            }
            tx.execute(
                "INSERT INTO runnel_checkpoints (query, offsets, state, updated_at)
                 VALUES ($1, $2, $3, now())
                 ON CONFLICT (query) DO UPDATE SET offsets = excluded.offsets,
                 state = excluded.state, updated_at = excluded.updated_at",
                &[&query, &offsets_json, &state],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Forgets a query's saved offsets and state.
    pub fn delete_checkpoint(&self, query: &str) -> Result<()> {
        self.execute(
            "DELETE FROM runnel_checkpoints WHERE query = $1".into(),
            vec![Box::new(query.to_string())],
        )
    }

    /// The last checkpoint of a query: next offsets per partition and the state blob.
    pub fn load_checkpoint(&self, query: &str) -> Result<Option<Checkpoint>> {
        let query = query.to_string();
        let row = self.run(|c| async move {
            Ok(c.lock()
                .await
                .query_opt(
                    "SELECT offsets, state FROM runnel_checkpoints WHERE query = $1",
                    &[&query],
                )
                .await?)
        })?;
        let Some(row) = row else { return Ok(None) };
        let offsets: serde_json::Value = row.try_get(0)?;
        let state: Option<Vec<u8>> = row.try_get(1)?;
        let offsets = serde_json::from_value(offsets)
            .map_err(|e| Error::Execution(format!("corrupt checkpoint offsets: {e}")))?;
        Ok(Some((offsets, state.unwrap_or_default())))
    }

    /// Reads a page of a query's results, oldest write first.
    pub fn read_results(&self, query: &str, f: &ResultFilter) -> Result<ResultPage> {
        let mut sql = format!("SELECT * FROM {} WHERE true", quote(query));
        let mut params: Vec<Param> = Vec::new();
        if let Some(from) = &f.from {
            params.push(Box::new(parse_ts(from)?));
            sql.push_str(&format!(" AND window_start >= ${}", params.len()));
        }
        if let Some(to) = &f.to {
            params.push(Box::new(parse_ts(to)?));
            sql.push_str(&format!(" AND window_start < ${}", params.len()));
        }
        if let Some(after) = f.after {
            params.push(Box::new(after));
            sql.push_str(&format!(" AND _seq > ${}", params.len()));
        }
        sql.push_str(&format!(
            " ORDER BY _seq LIMIT {}",
            f.limit.min(i64::MAX as usize)
        ));
        let (columns, rows) = self.run(|c| async move {
            let c = c.lock().await;
            let st = c.prepare(&sql).await?;
            let columns: Vec<String> = st.columns().iter().map(|c| c.name().to_string()).collect();
            let rows = c.query(&st, &refs(&params)).await?;
            Ok((columns, rows))
        })?;
        let mut seqs = Vec::with_capacity(rows.len());
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            seqs.push(r.try_get::<_, i64>(0)?);
            out.push(
                (1..columns.len())
                    .map(|i| value(r, i))
                    .collect::<Result<Vec<_>>>()?,
            );
        }
        Ok(ResultPage {
            columns: columns[1..].to_vec(),
            rows: out,
            cursor: seqs.last().copied().or(f.after),
            seqs,
        })
    }
}
