//! The PostgreSQL store (`--store postgres://user:pass@host/db`): a
//! `Backend` over one reconnecting connection, and PostgreSQL's
//! `Dialect`.
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
//! server's tasks alike: the connection is driven on a small runtime of its
//! own and each call waits for its answers on the caller's thread.
//!
//! A restart, a failover or a network cut closes the connection: the call
//! that finds it gone answers [`Error::Unavailable`], and the next one
//! connects again, waiting between attempts from 250 ms doubling to 4 s
//! (calls in between answer `Unavailable` at once). Queries pause on it and
//! resume from their last commit; HTTP reads answer 503.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use chrono::NaiveDateTime;
use futures::executor::block_on;
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Config, GenericClient, Row, Statement};

use super::ColumnKind;
use super::backend::{Backend, Dialect, EachRow, Param, Stmt, Tx, Value};
use super::results::{Cell, ResultColumns};
use crate::error::{Error, Result};

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
    // Pieces of open windows' partial states, saved incrementally
    // (crate::window::delta); `kept`: a closed window kept for corrections.
    r#"
CREATE TABLE runnel_state_pieces (
    seq BIGSERIAL PRIMARY KEY,
    query TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    window_end BIGINT NOT NULL,
    kept BIGINT NOT NULL,
    state BYTEA NOT NULL
);
CREATE INDEX runnel_state_pieces_window ON runnel_state_pieces (query, window_end, window_start);
"#,
];

fn pg_type(kind: ColumnKind) -> &'static str {
    match kind {
        ColumnKind::Bool => "BOOLEAN",
        ColumnKind::Int => "BIGINT",
        ColumnKind::Real => "DOUBLE PRECISION",
        ColumnKind::Timestamp => "TIMESTAMP(3)",
        ColumnKind::Blob => "BYTEA",
        ColumnKind::Text => "TEXT",
    }
}

/// PostgreSQL's SQL.
static DIALECT: Dialect = Dialect {
    seq: "BIGSERIAL PRIMARY KEY",
    column_type: pg_type,
    now: "now()",
    tie_break: "seq",
    migrations: MIGRATIONS,
    // The lock's key is any fixed number shared by all servers ("runnel").
    migrations_setup: "SELECT pg_advisory_xact_lock(125848689468780);
        CREATE TABLE IF NOT EXISTS runnel_migrations (
            version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    version_query: "SELECT coalesce(max(version), 0) FROM runnel_migrations",
    set_version: |n| format!("INSERT INTO runnel_migrations (version) VALUES ({n})"),
    table_exists: "SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = $1",
    query_tables: &[
        "runnel_checkpoints",
        "runnel_partition_progress",
        "runnel_window_partials",
        "runnel_window_states",
        "runnel_query_watermarks",
        "runnel_state_pieces",
    ],
};

/// Shortest and longest wait between two connection attempts.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(4);

/// How long one connection attempt may take, unless the URL says
/// (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The runtime the connection lives on; shut down without blocking, since
/// the last handle may be dropped inside another runtime.
struct PgRuntime(Option<tokio::runtime::Runtime>);

impl Drop for PgRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The connection, or why there is none and when to try again.
struct Conn {
    client: Option<Client>,
    /// What the last attempt or the lost connection said.
    error: String,
    retry_at: Instant,
    backoff: Duration,
}

struct Inner {
    rt: PgRuntime,
    config: Config,
    connector: MakeTlsConnector,
    /// The URL as logs and messages show it (no password).
    shown: String,
    conn: std::sync::Mutex<Conn>,
}

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    inner: std::sync::Arc<Inner>,
}

/// An error with its causes (a TLS or certificate failure is in the chain).
fn chain(e: &tokio_postgres::Error) -> String {
    let mut message = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        message = format!("{message}: {c}");
        cause = c.source();
    }
    message
}

/// Whether `e` means the server is gone or not accepting connections for
/// now (closed connection, I/O failure, SQLSTATE class 08, 57P01 admin
/// shutdown, 57P02 crash shutdown, 57P03 cannot connect now) rather than a
/// refusal of what was asked.
pub(crate) fn connection_lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let c = code.code();
        return c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03");
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    e.to_string().contains("timeout")
}

impl PgStore {
    /// Connects to `url` (a libpq-style URL or key=value string, TLS as its
    /// `sslmode` says: see [`super::pg_tls`]); the migrations are
    /// [`super::Store::connect`]'s.
    pub fn connect(url: &str) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("runnel-postgres")
            .enable_all()
            .build()?;
        let shown = crate::connect::secret::redact_url(url);
        let (url, tls) = super::pg_tls::split_tls(url)?;
        let connector = super::pg_tls::connector(&tls)?;
        let failed = |m: String| Error::Execution(format!("connecting to the store {shown}: {m}"));
        let mut config: Config = url.parse().map_err(|e| failed(chain(&e)))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let store = PgStore {
            inner: std::sync::Arc::new(Inner {
                rt: PgRuntime(Some(rt)),
                config,
                connector,
                shown: shown.clone(),
                conn: std::sync::Mutex::new(Conn {
                    client: None,
                    error: String::new(),
                    retry_at: Instant::now(),
                    backoff: Duration::ZERO,
                }),
            }),
        };
        let client = store.open().map_err(|e| failed(chain(&e)))?;
        store.conn().client = Some(client);
        Ok(store)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Conn> {
        self.inner.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a new connection, driven on the store's runtime.
    fn open(&self) -> std::result::Result<Client, tokio_postgres::Error> {
        let (config, connector) = (self.inner.config.clone(), self.inner.connector.clone());
        let shown = self.inner.shown.clone();
        let rt = self
            .inner
            .rt
            .0
            .as_ref()
            .expect("runtime lives as long as the store");
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let r = config.connect(connector).await.map(|(client, conn)| {
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::warn!("connection to the store {shown} closed: {e}");
                    }
                });
                client
            });
            let _ = tx.send(r);
        });
        rx.recv().expect("the store's runtime answers")
    }

    /// Runs `f` with the connection, connecting first when there is none.
    /// While the server cannot be reached this answers
    /// [`Error::Unavailable`]; a connection lost during `f` is dropped, and
    /// the next call connects again.
    pub fn with_client<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let shown = &self.inner.shown;
        let mut conn = self.conn();
        if conn.client.as_ref().is_none_or(Client::is_closed) {
            conn.client = None;
            if Instant::now() < conn.retry_at {
                return Err(Error::Unavailable(conn.error.clone()));
            }
            match self.open() {
                Ok(c) => {
                    tracing::info!("reconnected to the store {shown}");
                    conn.client = Some(c);
                    conn.backoff = Duration::ZERO;
                }
                Err(e) => {
                    conn.backoff = (conn.backoff * 2).clamp(RETRY_MIN, RETRY_MAX);
                    conn.retry_at = Instant::now() + conn.backoff;
                    conn.error = format!("PostgreSQL at {shown}: {}", chain(&e));
                    tracing::warn!(retry_in = ?conn.backoff, "{}", conn.error);
                    return Err(match connection_lost(&e) {
                        true => Error::Unavailable(conn.error.clone()),
                        false => Error::Execution(format!(
                            "connecting to the store {shown}: {}",
                            chain(&e)
                        )),
                    });
                }
            }
        }
        let client = conn.client.as_mut().expect("connected above");
        match f(client) {
            Err(Error::Postgres(e)) if connection_lost(&e) => {
                conn.client = None;
                conn.retry_at = Instant::now();
                conn.error = format!("PostgreSQL at {shown}: {}", chain(&e));
                tracing::warn!("lost the connection to the store: {}", conn.error);
                Err(Error::Unavailable(conn.error.clone()))
            }
            r => r,
        }
    }
}

impl Backend for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn dialect(&self) -> &'static Dialect {
        &DIALECT
    }

    fn transaction(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        self.with_client(|c| {
            let tx = block_on(c.transaction())?;
            f(&mut PgTx::new(&tx))?;
            block_on(tx.commit())?;
            Ok(())
        })
    }

    fn session(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        self.with_client(|c| f(&mut PgTx::new(&*c)))
    }

    fn postgres(&self) -> Option<&PgStore> {
        Some(self)
    }
}

fn naive(ms: i64) -> Option<NaiveDateTime> {
    chrono::DateTime::from_timestamp_millis(ms).map(|d| d.naive_utc())
}

impl ToSql for Param {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Null => Ok(IsNull::Yes),
            Param::Bool(b) => b.to_sql_checked(ty, out),
            Param::Int(i) => i.to_sql_checked(ty, out),
            Param::Real(f) => f.to_sql_checked(ty, out),
            Param::Ts(ms) => naive(*ms).to_sql_checked(ty, out),
            Param::Text(s) => s.to_sql_checked(ty, out),
            Param::Blob(b) => b.to_sql_checked(ty, out),
            Param::Json(s) => serde_json::from_str::<serde_json::Value>(s)?.to_sql_checked(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// Parameters of the statements sent together by [`execute_all`]: enough
/// for many small statements in one round trip, while a large row insert
/// is still made one statement's parameters at a time.
const PIPELINED_PARAMS: usize = 4 * super::backend::MAX_PARAMS;

/// Runs `stmts` in `tx` in order, preparing each distinct statement once.
/// The prepares are sent together, then the statements in groups of up to
/// [`PIPELINED_PARAMS`] parameters (tokio-postgres pipelines requests
/// polled together, and PostgreSQL runs them in the order sent): a round
/// trip per group instead of two per statement.
pub(crate) async fn execute_all(
    tx: &tokio_postgres::Transaction<'_>,
    stmts: &[Stmt],
) -> std::result::Result<(), tokio_postgres::Error> {
    use futures::future::try_join_all;
    let mut distinct: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for sql in stmts.iter().flat_map(Stmt::texts) {
        if seen.insert(sql.to_string()) {
            distinct.push(sql.into_owned());
        }
    }
    let statements = try_join_all(distinct.iter().map(|sql| tx.prepare(sql))).await?;
    let prepared: HashMap<&str, &Statement> = distinct
        .iter()
        .map(String::as_str)
        .zip(&statements)
        .collect();
    let mut parts = stmts.iter().flat_map(Stmt::expanded).peekable();
    while parts.peek().is_some() {
        let mut group = Vec::new();
        let mut params = 0;
        while let Some(part) = parts.next_if(|_| params < PIPELINED_PARAMS) {
            params += part.1.len().max(1);
            group.push(part);
        }
        let args: Vec<_> = group.iter().map(|(_, ps)| refs(ps)).collect();
        let sent = group.iter().zip(&args);
        try_join_all(sent.map(|((sql, _), a)| tx.execute(prepared[sql.as_ref()], a))).await?;
    }
    Ok(())
}

/// Statements on a client or a transaction, each distinct one prepared once.
struct PgTx<'a, C> {
    c: &'a C,
    prepared: HashMap<String, Statement>,
}

impl<'a, C: GenericClient + Sync> PgTx<'a, C> {
    fn new(c: &'a C) -> Self {
        PgTx {
            c,
            prepared: HashMap::new(),
        }
    }

    fn prepare(&mut self, sql: &str) -> Result<Statement> {
        if let Some(st) = self.prepared.get(sql) {
            return Ok(st.clone());
        }
        let st = block_on(self.c.prepare(sql))?;
        self.prepared.insert(sql.to_string(), st.clone());
        Ok(st)
    }
}

impl<C: GenericClient + Sync> Tx for PgTx<'_, C> {
    fn execute(&mut self, sql: &str, params: &[Param]) -> Result<u64> {
        let st = self.prepare(sql)?;
        Ok(block_on(self.c.execute(&st, &refs(params)))?)
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        Ok(block_on(self.c.batch_execute(sql))?)
    }

    fn query_each(
        &mut self,
        sql: &str,
        params: &[Param],
        each: &mut EachRow<'_>,
    ) -> Result<Vec<String>> {
        let st = block_on(self.c.prepare(sql))?;
        let columns: Vec<String> = st.columns().iter().map(|c| c.name().to_string()).collect();
        let rows = block_on(self.c.query(&st, &refs(params)))?;
        for r in &rows {
            let row = (0..columns.len())
                .map(|i| value(r, i))
                .collect::<Result<Vec<_>>>()?;
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
        let st = block_on(self.c.prepare(sql))?;
        let rows = block_on(self.c.query(&st, &refs(params)))?;
        let kinds = out.kinds().to_vec();
        for r in &rows {
            out.start_row(r.try_get(0)?);
            for (c, kind) in kinds.iter().enumerate() {
                out.push(c, cell(r, c + 1, *kind)?);
            }
            each(out)?;
        }
        Ok(())
    }
}

/// Column `i` of a results row, read as its `kind`'s PostgreSQL type.
fn cell(row: &Row, i: usize, kind: ColumnKind) -> Result<Cell<'_>> {
    let v = match kind {
        ColumnKind::Bool => row.try_get::<_, Option<bool>>(i)?.map(Cell::Bool),
        ColumnKind::Int => row.try_get::<_, Option<i64>>(i)?.map(Cell::Int),
        ColumnKind::Real => row.try_get::<_, Option<f64>>(i)?.map(Cell::Real),
        ColumnKind::Timestamp => row
            .try_get::<_, Option<NaiveDateTime>>(i)?
            .map(|t| Cell::Ts(t.and_utc().timestamp_millis())),
        ColumnKind::Text => row.try_get::<_, Option<&str>>(i)?.map(Cell::Text),
        ColumnKind::Blob => row.try_get::<_, Option<&[u8]>>(i)?.map(Cell::Blob),
    };
    Ok(v.unwrap_or(Cell::Null))
}

/// A catalog value as the shared [`Value`] (booleans as 0/1, JSON as text).
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
    } else if *t == Type::BYTEA {
        row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob)
    } else if *t == Type::JSONB || *t == Type::JSON {
        row.try_get::<_, Option<serde_json::Value>>(i)?
            .map(|v| Value::Text(v.to_string()))
    } else {
        row.try_get::<_, Option<String>>(i)?.map(Value::Text)
    };
    Ok(v.unwrap_or(Value::Null))
}
