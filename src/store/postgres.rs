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
use tokio_postgres::{Client, Row};

use super::{
    Checkpoint, ColumnKind, ResultFilter, ResultPage, TS_FORMAT, Value, column_kind, quote,
};
use crate::error::{Error, Result};
use crate::model::Emission;
use crate::window::watermark::{self, PartitionMark};

/// Versioned schema migrations, applied in order under an advisory lock so
/// servers starting together against one database do not race.
const MIGRATIONS: &[&str] = &[
    r#"
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
"#,
    // Cluster mode: who owns each partition and how far it is, the partial
    // states flushed per window until the window is final, and each final
    // window's merged state (for roll-ups).
    r#"
CREATE TABLE runnel_partition_progress (
    query TEXT NOT NULL,
    partition INT NOT NULL,
    owner TEXT NOT NULL,
    next_offset BIGINT,
    max_event_time BIGINT,
    idle BOOLEAN NOT NULL DEFAULT false,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (query, partition)
);
CREATE TABLE runnel_window_partials (
    id BIGSERIAL PRIMARY KEY,
    query TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    window_end BIGINT NOT NULL,
    state BYTEA NOT NULL
);
CREATE INDEX runnel_window_partials_query ON runnel_window_partials (query, window_end);
-- Windows whose end plus grace is at or before closed_wm are final.
CREATE TABLE runnel_query_watermarks (query TEXT PRIMARY KEY, closed_wm BIGINT NOT NULL);
CREATE TABLE runnel_window_states (
    query TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    window_end BIGINT NOT NULL,
    state BYTEA NOT NULL,
    PRIMARY KEY (query, window_start, window_end)
);
"#,
    // An idle partition's watermark, advanced by its confirmed quiet time
    // (see crate::window::watermark).
    r#"
ALTER TABLE runnel_partition_progress ADD COLUMN idle_watermark BIGINT;
"#,
];

/// A partition's idle mark is trusted for this long after its owner
/// flushed it (owners flush every checkpoint interval, 1 s by default).
const IDLE_MARK_FRESH_SECS: f64 = 5.0;

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

/// Runs `stmts` in `tx`, preparing each distinct statement once.
async fn execute_all(
    tx: &tokio_postgres::Transaction<'_>,
    stmts: &[(String, Vec<Param>)],
) -> std::result::Result<(), tokio_postgres::Error> {
    let mut prepared = std::collections::HashMap::new();
    for (sql, params) in stmts {
        if !prepared.contains_key(sql.as_str()) {
            prepared.insert(sql.as_str(), tx.prepare(sql).await?);
        }
        tx.execute(&prepared[sql.as_str()], &refs(params)).await?;
    }
    Ok(())
}

fn refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

fn pg_type(dt: &DataType) -> &'static str {
    match column_kind(dt) {
        ColumnKind::Bool => "BOOLEAN",
        ColumnKind::Int => "BIGINT",
        ColumnKind::Real => "DOUBLE PRECISION",
        ColumnKind::Timestamp => "TIMESTAMP(3)",
        ColumnKind::Blob => "BYTEA",
        ColumnKind::Text => "TEXT",
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

/// The statements writing `emissions` into `query`'s results table: a
/// closed window's rows replace earlier rows of that window, a cumulative
/// emission replaces the whole table.
fn result_statements(query: &str, emissions: &[Emission]) -> Result<Vec<(String, Vec<Param>)>> {
    let table = quote(query);
    let mut stmts: Vec<(String, Vec<Param>)> = Vec::new();
    for e in emissions {
        if let Some((start, end, state)) = super::window_state(e)? {
            stmts.push((
                "INSERT INTO runnel_window_states (query, window_start, window_end, state)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (query, window_start, window_end) DO UPDATE SET state = excluded.state"
                    .into(),
                vec![Box::new(query.to_string()), Box::new(start), Box::new(end), Box::new(state)],
            ));
        }
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
            for (s, en) in super::replaced_windows(b)? {
                stmts.push((
                    format!("DELETE FROM {table} WHERE window_start = $1 AND window_end = $2"),
                    vec![Box::new(naive(s)), Box::new(naive(en))],
                ));
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
    Ok(stmts)
}

impl PgStore {
    /// Connects to `url` (a libpq-style URL or key=value string, TLS as its
    /// `sslmode` says: see [`super::pg_tls`]) and applies migrations.
    pub fn connect(url: &str) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("runnel-postgres")
            .enable_all()
            .build()?;
        let shown = crate::connect::secret::redact_url(url);
        let (url, tls) = super::pg_tls::split_tls(url)?;
        let connector = super::pg_tls::connector(&tls)?;
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let r = tokio_postgres::connect(&url, connector)
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
            .map_err(|_| Error::Execution("postgres connection task ended".into()))?
            .map_err(|e| {
                // The cause (a TLS or certificate failure) is in the source chain.
                let mut message = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    message = format!("{message}: {c}");
                    cause = c.source();
                }
                Error::Execution(format!("connecting to the store {shown}: {message}"))
            })?;
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
        let (name, sql, ddl) = (
            name.to_string(),
            sql.to_string(),
            super::results_ddl(name, schema, "BIGSERIAL PRIMARY KEY", pg_type),
        );
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

    /// Deletes a query, its checkpoint and its results table (or renames
    /// the table to `keep_as`).
    pub fn delete_query(&self, name: &str, keep_as: Option<&str>) -> Result<()> {
        let drop_results = super::drop_results_sql(name, keep_as);
        let name = name.to_string();
        self.run(|c| async move {
            let mut c = c.lock().await;
            let tx = c.transaction().await?;
            tx.execute("DELETE FROM runnel_queries WHERE name = $1", &[&name])
                .await?;
            for t in [
                "runnel_checkpoints",
                "runnel_partition_progress",
                "runnel_window_partials",
                "runnel_window_states",
                "runnel_query_watermarks",
            ] {
                tx.execute(&format!("DELETE FROM {t} WHERE query = $1"), &[&name])
                    .await?;
            }
            tx.batch_execute(&drop_results).await?;
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
        let stmts = result_statements(query, emissions)?;
        let offsets_json =
            serde_json::to_value(offsets).map_err(|e| Error::Execution(e.to_string()))?;
        let (query, state) = (query.to_string(), state.to_vec());
        self.run(|c| async move {
            let mut c = c.lock().await;
            let tx = c.transaction().await?;
            execute_all(&tx, &stmts).await?;
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

    /// Stored window states of `query` starting in `[from, to)`, oldest first.
    pub fn load_window_states(
        &self,
        query: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<super::WindowState>> {
        let query = query.to_string();
        self.run(move |c| async move {
            let rows = c
                .lock()
                .await
                .query(
                    "SELECT window_start, window_end, state FROM runnel_window_states
                     WHERE query = $1 AND window_start >= $2 AND window_start < $3
                     ORDER BY window_start, window_end",
                    &[&query, &from, &to],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect())
        })
    }

    /// The latest end among `query`'s stored window states.
    pub fn newest_window_state_end(&self, query: &str) -> Result<Option<i64>> {
        let query = query.to_string();
        self.run(move |c| async move {
            let c = c.lock().await;
            Ok(c.query_one(
                "SELECT MAX(window_end) FROM runnel_window_states WHERE query = $1",
                &[&query],
            )
            .await?
            .try_get::<_, Option<i64>>(0)?)
        })
    }

    /// Deletes the stored window states of `query` that ended before `before`.
    pub fn prune_window_states(&self, query: &str, before: i64) -> Result<usize> {
        let query = query.to_string();
        self.run(move |c| async move {
            let n = c
                .lock()
                .await
                .execute(
                    "DELETE FROM runnel_window_states WHERE query = $1 AND window_end < $2",
                    &[&query, &before],
                )
                .await?;
            Ok(n as usize)
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
            // One row more than asked tells whether the page is the last.
            f.limit.min(i64::MAX as usize - 1) + 1
        ));
        let (columns, rows) = self.run(|c| async move {
            let c = c.lock().await;
            let st = c.prepare(&sql).await?;
            let columns: Vec<String> = st.columns().iter().map(|c| c.name().to_string()).collect();
            let rows = c.query(&st, &refs(&params)).await?;
            Ok((columns, rows))
        })?;
        let has_more = rows.len() > f.limit;
        let mut seqs = Vec::with_capacity(rows.len());
        let mut out = Vec::with_capacity(rows.len());
        for r in rows.iter().take(f.limit) {
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
            has_more,
        })
    }

    /// The largest row sequence of a query's results.
    pub fn newest_cursor(&self, query: &str) -> Result<Option<i64>> {
        let sql = format!("SELECT MAX(_seq) FROM {}", quote(query));
        self.run(|c| async move {
            let c = c.lock().await;
            Ok(c.query_one(&sql, &[]).await?.try_get::<_, Option<i64>>(0)?)
        })
    }

    /// Claims `partitions` of `query` for `owner` (a token unique to one
    /// assignment of one server) and returns where each one stands. A
    /// previous owner's later writes to them are refused from now on.
    pub fn claim_partitions(
        &self,
        query: &str,
        owner: &str,
        partitions: &[i32],
    ) -> Result<BTreeMap<i32, Progress>> {
        let (query, owner, partitions) =
            (query.to_string(), owner.to_string(), partitions.to_vec());
        self.run(|c| async move {
            let mut c = c.lock().await;
            let tx = c.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&query])
                .await?;
            // A query dropped meanwhile leaves nothing behind to claim.
            let exists = tx
                .query_opt("SELECT 1 FROM runnel_queries WHERE name = $1", &[&query])
                .await?
                .is_some();
            if !exists {
                return Err(Error::NotFound(format!("query '{query}' was dropped")));
            }
            let mut out = BTreeMap::new();
            for p in partitions {
                let row = tx
                    .query_one(
                        "INSERT INTO runnel_partition_progress (query, partition, owner)
                         VALUES ($1, $2, $3)
                         ON CONFLICT (query, partition) DO UPDATE
                         SET owner = excluded.owner, idle = false, updated_at = now()
                         RETURNING next_offset, max_event_time",
                        &[&query, &p, &owner],
                    )
                    .await?;
                out.insert(
                    p,
                    Progress {
                        next_offset: row.get(0),
                        max_event_time: row.get(1),
                    },
                );
            }
            tx.commit().await?;
            Ok(out)
        })
    }

    /// Saves the progress of the partitions `owner` holds and the partial
    /// states read since its last flush, atomically. `false` (nothing
    /// written) when another server has claimed one of the partitions since.
    pub fn flush_partials(
        &self,
        query: &str,
        owner: &str,
        progress: &[PartitionFlush],
        partials: Vec<(i64, i64, Vec<u8>)>,
    ) -> Result<bool> {
        let (query, owner, progress) = (query.to_string(), owner.to_string(), progress.to_vec());
        self.run(|c| async move {
            let mut c = c.lock().await;
            let tx = c.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&query])
                .await?;
            let update = tx
                .prepare(
                    "UPDATE runnel_partition_progress
                     SET next_offset = $4, max_event_time = $5, idle = $6, idle_watermark = $7,
                         updated_at = now()
                     WHERE query = $1 AND partition = $2 AND owner = $3",
                )
                .await?;
            for f in &progress {
                let n = tx
                    .execute(
                        &update,
                        &[
                            &query,
                            &f.partition,
                            &owner,
                            &f.next_offset,
                            &f.mark.max_event,
                            &f.mark.idle.is_some(),
                            &f.mark.idle.flatten(),
                        ],
                    )
                    .await?;
                if n == 0 {
                    return Ok(false);
                }
            }
            let insert = tx
                .prepare(
                    "INSERT INTO runnel_window_partials (query, window_start, window_end, state)
                     VALUES ($1, $2, $3, $4)",
                )
                .await?;
            for (start, end, state) in &partials {
                tx.execute(&insert, &[&query, start, end, state]).await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// The windows of `query` every partition is past: the watermark combines
    /// the stored marks of the topic's `partitions` by the one rule
    /// ([`watermark::combine`]); windows whose end plus `grace` is at or
    /// before it are returned with their partial states.
    /// Partial states of windows already final (from records read after the
    /// window was finished) are deleted and counted in `late`.
    pub fn final_windows(
        &self,
        query: &str,
        partitions: usize,
        delay: i64,
        grace: i64,
    ) -> Result<FinalWindows> {
        let query = query.to_string();
        self.run(move |c| async move {
            let mut c = c.lock().await;
            let tx = c.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&query])
                .await?;
            let closed_wm: i64 = tx
                .query_opt(
                    "SELECT closed_wm FROM runnel_query_watermarks WHERE query = $1",
                    &[&query],
                )
                .await?
                .map_or(i64::MIN, |r| r.get(0));
            // Stored as the last final window's end plus grace.
            let late = tx
                .execute(
                    "DELETE FROM runnel_window_partials WHERE query = $1 AND window_end <= $2",
                    &[&query, &closed_wm.saturating_sub(grace)],
                )
                .await?;
            let rows = tx
                .query(
                    // An idle mark counts only while its owner keeps
                    // flushing: a dead server's partitions hold the
                    // watermark at their event-time frontier until their
                    // new owner has read what was written meanwhile.
                    "SELECT max_event_time, idle AND updated_at > now() - make_interval(secs => $2),
                            idle_watermark
                     FROM runnel_partition_progress WHERE query = $1",
                    &[&query, &IDLE_MARK_FRESH_SECS],
                )
                .await?;
            let marks = rows.iter().map(|r| {
                let (max_event, idle, idle_wm): (Option<i64>, bool, Option<i64>) =
                    (r.get(0), r.get(1), r.get(2));
                PartitionMark {
                    max_event,
                    idle: idle.then_some(idle_wm),
                }
            });
            // A topic not fully claimed yet holds everything back.
            let wm = match rows.len() < partitions {
                true => i64::MIN,
                false => watermark::combine(marks, delay).unwrap_or(i64::MIN),
            };
            let parts = tx
                .query(
                    "SELECT id, window_start, window_end, state FROM runnel_window_partials
                     WHERE query = $1 AND window_end <= $2 ORDER BY window_end, window_start, id",
                    &[&query, &wm.saturating_sub(grace)],
                )
                .await?;
            tx.commit().await?;
            let mut windows: Vec<FinalWindow> = Vec::new();
            for r in parts {
                let (id, start, end, state): (i64, i64, i64, Vec<u8>) =
                    (r.get(0), r.get(1), r.get(2), r.get(3));
                match windows.last_mut() {
                    Some(w) if w.start == start && w.end == end => {
                        w.ids.push(id);
                        w.states.push(state);
                    }
                    _ => windows.push(FinalWindow {
                        start,
                        end,
                        ids: vec![id],
                        states: vec![state],
                    }),
                }
            }
            Ok(FinalWindows {
                closed_wm,
                late,
                windows,
            })
        })
    }

    /// Writes a final window's emissions (rows and merged state) and deletes
    /// its partial states, atomically; `false` (nothing written) when another
    /// server finalised it first.
    pub fn finish_window(
        &self,
        query: &str,
        window: &FinalWindow,
        grace: i64,
        rows: &[Emission],
    ) -> Result<bool> {
        let stmts = result_statements(query, rows)?;
        let closed = window.end.saturating_add(grace);
        let (query, ids) = (query.to_string(), window.ids.clone());
        self.run(move |c| async move {
            let mut c = c.lock().await;
            let tx = c.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&query])
                .await?;
            let n = tx
                .execute(
                    "DELETE FROM runnel_window_partials WHERE id = ANY($1)",
                    &[&ids],
                )
                .await?;
            if n as usize != ids.len() {
                return Ok(false);
            }
            execute_all(&tx, &stmts).await?;
            // Windows are finished in end order, so every window ending by
            // then is final: later partial states for them are late.
            tx.execute(
                "INSERT INTO runnel_query_watermarks (query, closed_wm) VALUES ($1, $2)
                 ON CONFLICT (query) DO UPDATE
                 SET closed_wm = greatest(runnel_query_watermarks.closed_wm, excluded.closed_wm)",
                &[&query, &closed],
            )
            .await?;
            tx.commit().await?;
            Ok(true)
        })
    }
}

/// Where a partition of a cluster query stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Next offset to read; `None` before the first flush.
    pub next_offset: Option<i64>,
    /// Highest event time read so far.
    pub max_event_time: Option<i64>,
}

/// One partition's progress in a flush.
#[derive(Debug, Clone, Copy)]
pub struct PartitionFlush {
    /// The partition.
    pub partition: i32,
    /// Next offset to read.
    pub next_offset: Option<i64>,
    /// What it contributes to the watermark.
    pub mark: PartitionMark,
}

/// What [`PgStore::final_windows`] found.
#[derive(Debug, Clone)]
pub struct FinalWindows {
    /// Windows whose end plus grace is at or before this are final
    /// (`i64::MIN` before the first).
    pub closed_wm: i64,
    /// Partial states of final windows deleted as late.
    pub late: u64,
    /// Windows to finish now, in end order.
    pub windows: Vec<FinalWindow>,
}

/// A window every partition is past, with its partial states (Arrow IPC).
#[derive(Debug, Clone)]
pub struct FinalWindow {
    /// Window start, epoch ms.
    pub start: i64,
    /// Window end, epoch ms.
    pub end: i64,
    /// Ids of the partial states.
    pub ids: Vec<i64>,
    /// The partial states.
    pub states: Vec<Vec<u8>>,
}
