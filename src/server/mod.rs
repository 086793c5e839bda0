//! The Runnel server: catalog of streams and queries, statement execution,
//! and the HTTP API ([`http`]).
//!
//! This file holds the catalog ([`App`]: streams, tables, queries, their
//! threads); `execute` runs statements against it, `render` writes its
//! answers as JSON, `ddl` the `IF [NOT] EXISTS` / `OR REPLACE` cases,
//! `relations` finds what a `SELECT` reads, and `http`, `rows`, `rollup`,
//! `limits` and `guard` serve it.
//!
//! ```no_run
//! # async fn f() -> runnel::error::Result<()> {
//! use runnel::config::Config;
//! use runnel::server::App;
//! let app = App::open(Config::default()).await?;
//! app.execute_sql("CREATE STREAM s (ts TIMESTAMP, k TEXT) WITH (kafka_topic = 't', event_time = 'ts')").await?;
//! app.execute_sql("CREATE QUERY per_k AS SELECT k, count(*) FROM s GROUP BY k WINDOW 10s").await?;
//! # Ok(()) }
//! ```

pub mod dashboard;
mod ddl;
mod execute;
pub mod guard;
pub mod history;
pub mod http;
mod late;
mod lifecycle;
pub mod limits;
pub mod metrics;
mod relations;
mod render;
mod rollup;
mod rows;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SQLOptions;
use serde_json::{Value, json};

use crate::config::Config;
use crate::connect::secret::{redact_sql, shown};
use crate::error::{Error, Result};
use crate::model::QueryStatus;
use crate::model::TableDef;
use crate::model::{SelectSql, SourceKind, StreamDef};
use crate::plan::{ContinuousPlan, RefTable, plan_error};
use crate::source::file::allowed_file;
use crate::source::stats::StreamStats;
use crate::sql::{Parsed, Statement, parse_sql, parse_statement};
use crate::store::Store;
pub use ddl::Created;
use relations::relations;
pub use render::Answer;
use render::*;

/// Bad records kept per stream and reason for `GET /streams/{name}/errors`.
pub const BAD_SAMPLES: usize = 20;
use crate::model::Counters;

/// A declared stream.
pub struct StreamEntry {
    /// Its definition.
    pub def: StreamDef,
    /// The statement that created it.
    pub sql: String,
    /// Input statistics and the bad-record sample.
    pub stats: Arc<StreamStats>,
}

impl StreamEntry {
    fn new(def: StreamDef, sql: String) -> Self {
        StreamEntry {
            def,
            sql,
            stats: Arc::new(StreamStats::new(BAD_SAMPLES)),
        }
    }
}

/// A registered continuous query.
pub struct QueryEntry {
    /// Name; also its id and its results table.
    pub name: String,
    /// The `CREATE QUERY` statement.
    pub sql: String,
    /// The stream it reads.
    pub stream: String,
    /// Compiled plan.
    pub plan: Arc<ContinuousPlan>,
    /// Live counters.
    pub counters: Arc<Counters>,
    /// Run status.
    pub status: Arc<Mutex<QueryStatus>>,
    /// Timings, lag and state size recorded by the query's thread.
    pub metrics: Arc<crate::runtime::telemetry::QueryMetrics>,
    stop: Arc<AtomicBool>,
    handle: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl QueryEntry {
    /// Current status.
    pub fn status(&self) -> QueryStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn stop(&self) {
        self.ask_to_stop();
        self.join();
    }

    /// Tells the query's thread to stop after its current poll.
    fn ask_to_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits for the query's thread to commit and end.
    fn join(&self) {
        if let Some(h) = self.handle.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
    }
}

/// The server's state.
pub struct App {
    /// Settings.
    pub config: Config,
    /// The store.
    pub store: Store,
    /// This process's Prometheus registry.
    pub metrics: metrics::Metrics,
    /// Bounds on pull queries, roll-ups and event streams.
    pub guards: limits::Guards,
    streams: RwLock<BTreeMap<String, Arc<StreamEntry>>>,
    tables: RwLock<BTreeMap<String, (String, RefTable)>>,
    queries: RwLock<BTreeMap<String, Arc<QueryEntry>>>,
    /// The readers queries over the same Kafka stream share.
    pub(crate) readers: Arc<crate::runtime::shared::Readers>,
    /// Cluster mode: this server's memberships of its streams' groups.
    pub(crate) groups: Arc<crate::cluster::group::Groups>,
    /// Held while the catalog changes, so statements and the cluster's
    /// catalog sync never interleave.
    ddl: tokio::sync::Mutex<()>,
    /// While a script runs (under `ddl`), the gate the queries it creates
    /// start together at ([`crate::runtime::gate`]).
    start_gate: std::sync::Mutex<Option<crate::runtime::gate::StartGate>>,
    /// When each (brokers, topic) was last found on its brokers: a script
    /// creating eight queries over one stream asks them once, not nine
    /// times, each with a Kafka client of its own (see
    /// [`TOPIC_FOUND_FOR`]).
    topics_found: Mutex<HashMap<(String, String), Instant>>,
}

/// How long a topic found on its brokers is taken to be there without
/// asking again, for the missing-topic warning only.
const TOPIC_FOUND_FOR: Duration = Duration::from_secs(60);

/// Queries created while it lives start together when it is dropped.
struct StartTogether<'a> {
    app: &'a App,
    gate: crate::runtime::gate::StartGate,
}

impl Drop for StartTogether<'_> {
    fn drop(&mut self) {
        *self
            .app
            .start_gate
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        self.gate.open();
    }
}

impl App {
    /// Opens the store under the configured data dir and resumes every saved query.
    pub async fn open(config: Config) -> Result<Arc<Self>> {
        let store = Store::connect(config.store.as_deref(), &config.data_dir)?;
        let guards = limits::Guards::new(config.limits)?;
        let readers = crate::runtime::shared::Readers::new(config.shared_read_keep);
        let app = Arc::new(App {
            config,
            store: store.clone(),
            metrics: metrics::Metrics::new(),
            guards,
            streams: RwLock::new(BTreeMap::new()),
            tables: RwLock::new(BTreeMap::new()),
            queries: RwLock::new(BTreeMap::new()),
            readers: Arc::new(readers),
            groups: Arc::default(),
            ddl: tokio::sync::Mutex::new(()),
            start_gate: std::sync::Mutex::new(None),
            topics_found: Default::default(),
        });
        if app.config.cluster.is_some() {
            app.store.postgres()?;
        }
        let (streams, tables, queries) = (
            store.list_streams()?,
            store.list_tables()?,
            store.list_queries()?,
        );
        app.adopt(&streams, &tables, &queries, true).await?;
        if app.config.cluster.is_some() {
            let weak = Arc::downgrade(&app);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let Some(app) = weak.upgrade() else { break };
                    if let Err(e) = app.sync_catalog().await {
                        tracing::warn!("cluster catalog sync: {e}");
                    }
                }
            });
        }
        Ok(app)
    }

    /// Sets a start gate for the queries created until the guard returned
    /// is dropped, which opens it: they start together.
    fn start_together(&self) -> StartTogether<'_> {
        let gate = crate::runtime::gate::StartGate::default();
        *self.start_gate.lock().unwrap_or_else(|p| p.into_inner()) = Some(gate.clone());
        StartTogether { app: self, gate }
    }

    /// Loads the stored streams and tables and starts the stored queries that
    /// are not loaded yet, as (name, SQL) pairs. `strict` (at startup) fails
    /// on a stored stream or query of the wrong kind; a catalog sync skips it.
    async fn adopt(
        &self,
        streams: &[(String, String)],
        tables: &[(String, String)],
        queries: &[(String, String)],
        strict: bool,
    ) -> Result<()> {
        let _together = self.start_together();
        let wrong = |what: &str, name: &str, kind: &str| match strict {
            true => Err(Error::Execution(format!(
                "stored {what} {name} is not a {kind}"
            ))),
            false => Ok(()),
        };
        for (name, sql) in streams {
            if self.streams.read().expect("lock").contains_key(name) {
                continue;
            }
            match parse_statement(sql)?.stmt {
                Statement::CreateStream(def) => {
                    self.check_stream(&def)
                        .map_err(|e| Error::BadRequest(format!("stored stream {name}: {e}")))?;
                    self.streams
                        .write()
                        .expect("lock")
                        .insert(name.clone(), Arc::new(StreamEntry::new(def, sql.clone())));
                }
                _ => wrong("stream", name, "CREATE STREAM")?,
            }
        }
        for (name, sql) in tables {
            if !self.tables.read().expect("lock").contains_key(name)
                && let Statement::CreateTable(def) = parse_statement(sql)?.stmt
            {
                self.load_table(&def, sql).await?;
            }
        }
        for (name, sql) in queries {
            if self.queries.read().expect("lock").contains_key(name) {
                continue;
            }
            let stored = |e: Error| Error::Execution(format!("stored query {name}: {e}"));
            match parse_statement(sql).map_err(stored)?.stmt {
                Statement::CreateQuery { select, .. } => {
                    self.start_query(name, sql, &select, false, None)
                        .await
                        .map_err(stored)?;
                }
                _ => wrong("query", name, "CREATE QUERY")?,
            }
        }
        Ok(())
    }

    /// Cluster mode: adopts the streams, tables and queries other servers
    /// created, and stops those they dropped.
    async fn sync_catalog(&self) -> Result<()> {
        let _ddl = self.ddl.lock().await;
        let store = self.store.clone();
        let (streams, tables, queries) = tokio::task::spawn_blocking(move || {
            Ok::<_, Error>((
                store.list_streams()?,
                store.list_tables()?,
                store.list_queries()?,
            ))
        })
        .await
        .map_err(|e| Error::Execution(e.to_string()))??;
        self.adopt(&streams, &tables, &queries, false).await?;
        let stored: std::collections::BTreeSet<&str> =
            queries.iter().map(|(n, _)| n.as_str()).collect();
        for q in self.queries() {
            if !stored.contains(q.name.as_str()) {
                let stopping = q.clone();
                tokio::task::spawn_blocking(move || stopping.stop())
                    .await
                    .map_err(|e| Error::Execution(e.to_string()))?;
                self.queries.write().expect("lock").remove(&q.name);
            }
        }
        let stored: std::collections::BTreeSet<&str> =
            streams.iter().map(|(n, _)| n.as_str()).collect();
        self.streams
            .write()
            .expect("lock")
            .retain(|n, _| stored.contains(n.as_str()));
        Ok(())
    }

    /// The stream named `name`.
    pub fn stream(&self, name: &str) -> Result<Arc<StreamEntry>> {
        self.streams
            .read()
            .expect("lock")
            .get(&name.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("stream '{name}' does not exist")))
    }

    /// The query named `name`.
    pub fn query(&self, name: &str) -> Result<Arc<QueryEntry>> {
        self.queries
            .read()
            .expect("lock")
            .get(&name.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("query '{name}' does not exist")))
    }

    /// All queries.
    pub fn queries(&self) -> Vec<Arc<QueryEntry>> {
        self.queries
            .read()
            .expect("lock")
            .values()
            .cloned()
            .collect()
    }

    /// All streams.
    pub fn streams(&self) -> Vec<Arc<StreamEntry>> {
        self.streams
            .read()
            .expect("lock")
            .values()
            .cloned()
            .collect()
    }

    fn name_taken(&self, name: &str) -> bool {
        self.streams.read().expect("lock").contains_key(name)
            || self.queries.read().expect("lock").contains_key(name)
            || self.tables.read().expect("lock").contains_key(name)
    }

    /// Refuses a file stream whose file is not under an allowed directory,
    /// and a stream connecting to a host not allowed or with Kafka
    /// properties librdkafka rejects.
    fn check_stream(&self, def: &StreamDef) -> Result<()> {
        if def.source == SourceKind::File {
            let path = def.options.get("path").map(String::as_str).unwrap_or("");
            allowed_file(path, &self.config.allow_files, true)?;
        }
        self.config.check_stream(def)
    }

    /// Reads a reference table's CSV file, which must be under an allowed
    /// directory, into memory and registers it.
    async fn load_table(&self, def: &TableDef, sql: &str) -> Result<usize> {
        let real = allowed_file(&def.path, &self.config.allow_files, false)
            .map_err(|e| Error::BadRequest(format!("table {}: {e}", def.name)))?;
        let read = TableDef {
            path: real.to_string_lossy().into_owned(),
            ..def.clone()
        };
        let table = RefTable::load(&read).await?;
        let rows = table.rows();
        self.tables
            .write()
            .expect("lock")
            .insert(def.name.clone(), (sql.to_string(), table));
        Ok(rows)
    }

    /// All reference tables.
    pub fn ref_tables(&self) -> Vec<RefTable> {
        self.tables
            .read()
            .expect("lock")
            .values()
            .map(|(_, t)| t.clone())
            .collect()
    }

    fn reads_stream(&self, sql: &str) -> Result<bool> {
        let streams = self.streams.read().expect("lock");
        Ok(relations(sql)?.iter().any(|(n, _)| streams.contains_key(n)))
    }

    fn stream_of(&self, sql: &str) -> Result<Arc<StreamEntry>> {
        let rels = relations(sql)?;
        let streams = self.streams.read().expect("lock");
        for (n, _) in &rels {
            if let Some(s) = streams.get(n) {
                return Ok(s.clone());
            }
        }
        let (name, loc) = rels
            .first()
            .cloned()
            .ok_or_else(|| Error::sql("a continuous query needs FROM <stream>", None))?;
        Err(Error::sql(format!("stream '{name}' does not exist"), loc))
    }

    /// Queries reading stream `name`.
    pub fn readers(&self, name: &str) -> Vec<String> {
        self.queries()
            .iter()
            .filter(|q| q.stream == name)
            .map(|q| q.name.clone())
            .collect()
    }

    /// Answers a one-shot SELECT over query results.
    pub async fn pull(&self, select: &SelectSql) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let ctx = self.guards.context();
        if let Some(f) = self.rollup_function(&select.sql).await? {
            ctx.register_udtf("rollup", f);
        }
        let mut tables = Vec::new();
        for (name, loc) in relations(&select.sql)? {
            if let Some((_, t)) = self.tables.read().expect("lock").get(&name) {
                ctx.register_table(name.as_str(), t.provider()?)?;
                continue;
            }
            let q = self.query(&name).map_err(|_| {
                Error::sql(format!("no stream, table or query named '{name}'"), loc)
            })?;
            tables.push(q);
        }
        if select.window.is_some() || select.emit_ms.is_some() {
            return Err(Error::sql(
                "WINDOW and EMIT apply to continuous queries over streams; this SELECT reads no stream",
                None,
            ));
        }
        // The tables read stay reserved in the pull pool until the answer is built.
        let mut loaded = self.guards.reservation("results tables");
        if let Some(f) = self.late_function(&select.sql, &mut loaded)? {
            ctx.register_udtf("late", f);
        }
        for q in tables {
            let (store, name, schema) = (&self.store, &q.name, &q.plan.output_schema);
            let batches = self.guards.load_results(store, name, schema, &mut loaded)?;
            // Batches are built nullable from the stored rows: their schema rules.
            let schema = batches.first().map_or(schema.clone(), |b| b.schema());
            let table = MemTable::try_new(schema, vec![batches])?;
            ctx.register_table(q.name.as_str(), Arc::new(table))?;
        }
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let df = ctx
            .sql_with_options(&select.sql, options)
            .await
            .map_err(|e| plan_error(&select.sql, e))?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = self.guards.collect(df).await?;
        drop(loaded);
        Ok((schema, batches))
    }

    /// Stops every query, checkpointing its state.
    pub fn shutdown(&self) {
        // All at once: each finishes its poll and commits in parallel.
        let queries = self.queries();
        for q in &queries {
            q.ask_to_stop();
        }
        for q in &queries {
            q.join();
        }
    }
}
