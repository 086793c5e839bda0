//! The Runnel server: catalog of streams and queries, statement execution,
//! and the HTTP API ([`http`]).
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
pub mod guard;
pub mod history;
pub mod http;
pub mod limits;
pub mod metrics;
mod rollup;
mod rows;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SQLOptions;
use datafusion::sql::sqlparser::ast::{self, SetExpr, TableFactor};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use serde_json::{Value, json};

use crate::config::Config;
use crate::connect::secret::{redact_sql, shown};
use crate::error::{Error, Result};
use crate::plan::{ContinuousPlan, RefTable, plan_error};
use crate::runtime::{QueryStatus, QueryTask};
use crate::source::file::allowed_file;
use crate::source::stats::StreamStats;
use crate::sql::StartFrom;
use crate::sql::table::TableDef;
use crate::sql::{
    Parsed, SelectSql, SourceKind, Statement, StreamDef, normalize_ident, parse_sql,
    parse_statement,
};
use crate::store::Store;
pub use ddl::Created;

/// Bad records kept per stream and reason for `GET /streams/{name}/errors`.
pub const BAD_SAMPLES: usize = 20;
use crate::window::Counters;

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
    pub metrics: Arc<metrics::QueryMetrics>,
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
    /// Held while the catalog changes, so statements and the cluster's
    /// catalog sync never interleave.
    ddl: tokio::sync::Mutex<()>,
}

fn columns_json(schema: &SchemaRef) -> Value {
    Value::Array(
        schema
            .fields()
            .iter()
            .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
            .collect(),
    )
}

/// The rows of `batches` as JSON objects (NULL columns left out).
fn batch_objects(batches: &[RecordBatch]) -> Result<Vec<serde_json::Map<String, Value>>> {
    let mut buf = Vec::new();
    {
        let mut w = arrow_json::ArrayWriter::new(&mut buf);
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    if buf.is_empty() {
        return Ok(vec![]);
    }
    serde_json::from_slice(&buf).map_err(|e| Error::Execution(e.to_string()))
}

/// Converts batches to `{"columns": [...], "rows": [[...]]}`, timestamps in
/// the API's format.
pub fn batches_json(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Value> {
    let batches = batches
        .iter()
        .map(api_timestamps)
        .collect::<Result<Vec<_>>>()?;
    let rows: Vec<Value> = batch_objects(&batches)?
        .into_iter()
        .map(|mut o| {
            Value::Array(
                schema
                    .fields()
                    .iter()
                    .map(|f| o.remove(f.name()).unwrap_or(Value::Null))
                    .collect(),
            )
        })
        .collect();
    Ok(json!({"columns": columns_json(schema), "rows": rows}))
}

/// `batch` with its timestamp columns as text in the API's format
/// ([`crate::store::API_TS_FORMAT`]).
fn api_timestamps(batch: &RecordBatch) -> Result<RecordBatch> {
    use datafusion::arrow::array::{ArrayRef, AsArray, StringArray};
    use datafusion::arrow::datatypes::{
        DataType, Field, Schema, TimeUnit, TimestampMillisecondType,
    };
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        let c = match c.data_type() {
            DataType::Timestamp(_, _) => {
                let ms = datafusion::arrow::compute::cast(
                    c,
                    &DataType::Timestamp(TimeUnit::Millisecond, None),
                )?;
                let text: StringArray = ms
                    .as_primitive::<TimestampMillisecondType>()
                    .iter()
                    .map(|v| v.map(crate::store::format_api_ts))
                    .collect();
                Arc::new(text) as ArrayRef
            }
            _ => c.clone(),
        };
        fields.push(Field::new(f.name(), c.data_type().clone(), true));
        cols.push(c);
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// The rows of `batch` as JSON objects with every column in schema order,
/// timestamps in the API's format.
pub fn row_objects(batch: &RecordBatch) -> Result<Vec<Value>> {
    let batch = api_timestamps(batch)?;
    let schema = batch.schema();
    Ok(batch_objects(&[batch])?
        .into_iter()
        .map(|mut o| {
            Value::Object(
                schema
                    .fields()
                    .iter()
                    .map(|f| (f.name().clone(), o.remove(f.name()).unwrap_or(Value::Null)))
                    .collect(),
            )
        })
        .collect())
}

fn table_rows(columns: &[&str], rows: Vec<Vec<Value>>) -> Value {
    let cols: Vec<Value> = columns
        .iter()
        .map(|c| json!({"name": c, "type": "Utf8"}))
        .collect();
    json!({"columns": cols, "rows": rows})
}

fn fmt_ms(ms: i64) -> Value {
    if ms == i64::MIN {
        Value::Null
    } else {
        Value::String(crate::store::format_api_ts(ms))
    }
}

/// A table name a statement reads, with where it appears.
type Relation = (String, Option<(u64, u64)>);

/// Names of the tables a SELECT reads at its top level (FROM and JOINs).
fn relations(sql: &str) -> Result<Vec<Relation>> {
    let stmt = Parser::new(&GenericDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statement())
        .map_err(crate::sql::parser_error)?;
    let mut out = Vec::new();
    for f in from_factors(&stmt) {
        // Table functions (`rollup(...)`) are not relations.
        if let TableFactor::Table {
            name, args: None, ..
        } = f
            && let Some(ast::ObjectNamePart::Identifier(id)) = name.0.last()
        {
            out.push((
                normalize_ident(&id.value, id.quote_style.is_some()),
                Some((id.span.start.line, id.span.start.column)).filter(|l| l.0 > 0),
            ));
        }
    }
    Ok(out)
}

/// The tables and table functions a SELECT's FROM clause names, joins
/// included (none for other statements).
fn from_factors(stmt: &ast::Statement) -> impl Iterator<Item = &TableFactor> {
    let from = match stmt {
        ast::Statement::Query(q) => match q.body.as_ref() {
            SetExpr::Select(s) => s.from.as_slice(),
            _ => &[],
        },
        _ => &[],
    };
    from.iter()
        .flat_map(|t| std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)))
}

impl App {
    /// Opens the store under the configured data dir and resumes every saved query.
    pub async fn open(config: Config) -> Result<Arc<Self>> {
        let store = Store::connect(config.store.as_deref(), &config.data_dir)?;
        let guards = limits::Guards::new(config.limits)?;
        let app = Arc::new(App {
            config,
            store: store.clone(),
            metrics: metrics::Metrics::new(),
            guards,
            streams: RwLock::new(BTreeMap::new()),
            tables: RwLock::new(BTreeMap::new()),
            queries: RwLock::new(BTreeMap::new()),
            ddl: tokio::sync::Mutex::new(()),
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

    /// Runs every statement in `body` in order; stops at the first error.
    pub async fn execute_sql(&self, body: &str) -> Result<Vec<Value>> {
        let _ddl = self.ddl.lock().await;
        let mut out = Vec::new();
        for p in parse_sql(body)? {
            let mut r = self.execute(&p).await?;
            r["statement"] = Value::String(match p.stmt {
                Statement::CreateStream(_) => redact_sql(&p.text),
                _ => p.text.clone(),
            });
            out.push(r);
        }
        Ok(out)
    }

    async fn execute(&self, p: &Parsed) -> Result<Value> {
        Ok(match &p.stmt {
            Statement::CreateStream(def) => {
                if let Some(v) = self.create_check(p.create, "stream", &def.name)? {
                    return Ok(v);
                }
                self.check_stream(def)?;
                self.store.save_stream(&def.name, &p.text)?;
                self.streams.write().expect("lock").insert(
                    def.name.clone(),
                    Arc::new(StreamEntry::new(def.clone(), p.text.clone())),
                );
                let mut v = json!({"kind": "create_stream", "message": format!("stream {} created", def.name), "stream": def.name});
                if let Some(w) = self.topic_warning(def).await {
                    v["warnings"] = json!([w]);
                }
                v
            }
            Statement::CreateQuery { name, select } => {
                let (q, created) = self
                    .create_query_as(p.create, Some(name.clone()), select, &p.text)
                    .await?;
                let message = match created {
                    Created::New => format!("query {} created", q.name),
                    Created::Existing => {
                        format!("query {} already exists; nothing created", q.name)
                    }
                    Created::Replaced => format!(
                        "query {} replaced; its previous results were deleted",
                        q.name
                    ),
                };
                let mut v = json!({"kind": "create_query", "message": message, "created": created != Created::Existing, "query": self.query_json(&q, false)});
                self.add_create_warnings(&q, &mut v).await;
                v
            }
            Statement::Select(select) => {
                if self.reads_stream(&select.sql)? {
                    let q = self.create_query(None, select, &p.text).await?;
                    let mut v = json!({"kind": "create_query", "message": format!("query {} created", q.name), "query": self.query_json(&q, false)});
                    self.add_create_warnings(&q, &mut v).await;
                    v
                } else {
                    let (schema, batches) = self.pull(select).await?;
                    let mut v = batches_json(&schema, &batches)?;
                    v["kind"] = json!("rows");
                    v
                }
            }
            Statement::CreateTable(def) => {
                if let Some(v) = self.create_check(p.create, "table", &def.name)? {
                    return Ok(v);
                }
                let rows = self.load_table(def, &p.text).await?;
                self.store.save_table(&def.name, &p.text)?;
                json!({"kind": "create_table", "message": format!("table {} created ({rows} rows)", def.name), "table": def.name})
            }
            Statement::Explain(select) => {
                let stream = self.stream_of(&select.sql)?;
                let plan =
                    ContinuousPlan::build_with_tables(&stream.def, select, &self.ref_tables())
                        .await?;
                let text = plan.explain();
                let rows = text
                    .lines()
                    .map(|l| vec![Value::String(l.to_string())])
                    .collect();
                let mut v = table_rows(&["plan"], rows);
                v["kind"] = json!("rows");
                v
            }
            Statement::ShowStreams => {
                let rows = self
                    .streams()
                    .iter()
                    .map(|s| {
                        vec![
                            json!(s.def.name),
                            json!(s.def.topic),
                            json!(format!("{:?}", s.def.format).to_lowercase()),
                            json!(s.def.event_time),
                            json!(self.readers(&s.def.name).len()),
                        ]
                    })
                    .collect();
                let mut v = table_rows(&["name", "topic", "format", "event_time", "queries"], rows);
                v["kind"] = json!("rows");
                v
            }
            Statement::ShowQueries => {
                let rows = self
                    .queries()
                    .iter()
                    .map(|q| {
                        let c = &q.counters;
                        vec![
                            json!(q.name),
                            json!(q.stream),
                            json!(q.status().label()),
                            json!(q.plan.window.describe()),
                            json!(c.records_in.load(Ordering::Relaxed)),
                            json!(c.windows_closed.load(Ordering::Relaxed)),
                            fmt_ms(c.watermark.load(Ordering::Relaxed)),
                        ]
                    })
                    .collect();
                let mut v = table_rows(
                    &[
                        "name",
                        "stream",
                        "status",
                        "window",
                        "records_in",
                        "windows_closed",
                        "watermark",
                    ],
                    rows,
                );
                v["kind"] = json!("rows");
                v
            }
            Statement::ShowTables => {
                let mut rows: Vec<Vec<Value>> = Vec::new();
                for (name, (sql, t)) in self.tables.read().expect("lock").iter() {
                    let path = match parse_statement(sql).map(|p| p.stmt) {
                        Ok(Statement::CreateTable(def)) => json!(def.path),
                        _ => Value::Null,
                    };
                    let n = t.schema.fields().len();
                    rows.push(vec![json!(name), json!("reference"), path, json!(n)]);
                }
                for q in self.queries() {
                    let n = q.plan.output_schema.fields().len();
                    let source = json!(format!("query {} over {}", q.name, q.stream));
                    rows.push(vec![json!(q.name), json!("results"), source, json!(n)]);
                }
                let mut v = table_rows(&["name", "type", "source", "columns"], rows);
                v["kind"] = json!("rows");
                v
            }
            Statement::Describe(name) => {
                let table = self
                    .tables
                    .read()
                    .expect("lock")
                    .get(name)
                    .map(|(_, t)| t.schema.clone());
                let (rows, kind) = if let Some(schema) = table {
                    let rows = schema
                        .fields()
                        .iter()
                        .map(|f| vec![json!(f.name()), json!(f.data_type().to_string())])
                        .collect();
                    (rows, "table")
                } else if let Ok(s) = self.stream(name) {
                    let rows = s
                        .def
                        .columns
                        .iter()
                        .map(|c| vec![json!(c.name), json!(c.sql_type)])
                        .collect();
                    (rows, "stream")
                } else {
                    let q = self.query(name).map_err(|_| {
                        Error::NotFound(format!("no stream or query named '{name}'"))
                    })?;
                    let rows = q
                        .plan
                        .output_schema
                        .fields()
                        .iter()
                        .map(|f| vec![json!(f.name()), json!(f.data_type().to_string())])
                        .collect();
                    (rows, "query")
                };
                let mut v = table_rows(&["column", "type"], rows);
                v["kind"] = json!("rows");
                v["object"] = json!(kind);
                if let Ok(q) = self.query(name) {
                    v["sink"] = crate::sink::SinkStatus::json(&q.counters.sink).into();
                    let notes = self.query_notes(&q);
                    if !notes.is_empty() {
                        v["notes"] = json!(notes);
                    }
                }
                v
            }
            Statement::DropQuery {
                name,
                if_exists,
                keep_results,
            } => self.drop_query_stmt(name, *if_exists, *keep_results)?,
            Statement::DropStream { name, if_exists } => self.drop_stream_stmt(name, *if_exists)?,
        })
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
        crate::connect::check_stream(&self.config, def)
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

    /// Registers and starts a continuous query (named automatically when `name` is None).
    pub async fn create_query(
        &self,
        name: Option<String>,
        select: &SelectSql,
        text: &str,
    ) -> Result<Arc<QueryEntry>> {
        let (name, sql) = match name {
            Some(n) => (n, text.to_string()),
            None => {
                let mut i = self.queries.read().expect("lock").len() + 1;
                while self.name_taken(&format!("query_{i}")) {
                    i += 1;
                }
                let n = format!("query_{i}");
                let sql = format!("CREATE QUERY {n} AS {text}");
                (n, sql)
            }
        };
        if self.name_taken(&name) {
            return Err(Error::Conflict(format!("'{name}' already exists")));
        }
        if name.starts_with("runnel_") || name.starts_with("sqlite_") {
            return Err(Error::BadRequest(format!(
                "'{name}': names starting with runnel_ or sqlite_ are reserved"
            )));
        }
        // Plan before saving, so a bad query leaves nothing behind.
        self.start_query(&name, &sql, select, true, None).await
    }

    async fn start_query(
        &self,
        name: &str,
        sql: &str,
        select: &SelectSql,
        save: bool,
        reset: Option<StartFrom>,
    ) -> Result<Arc<QueryEntry>> {
        let stream = self.stream_of(&select.sql)?;
        let plan = Arc::new(
            ContinuousPlan::build_with_tables(&stream.def, select, &self.ref_tables()).await?,
        );
        if self.config.cluster.is_some() {
            crate::cluster::check_mergeable(select, &plan)?;
        }
        if save {
            self.store.save_query(name, sql, &plan.output_schema)?;
        }
        if save || reset.is_some() {
            self.save_start_offsets(name, &stream.def, reset.unwrap_or(stream.def.start))
                .await?;
        }
        let counters = Arc::new(Counters::default());
        let query_metrics = self.metrics.query(name, &stream.def.name);
        let status = Arc::new(Mutex::new(QueryStatus::Starting));
        let stop = Arc::new(AtomicBool::new(false));
        let task = QueryTask {
            name: name.to_string(),
            stream: stream.def.clone(),
            plan: plan.clone(),
            kafka: crate::connect::kafka_conn(&self.config, &stream.def),
            store: self.store.clone(),
            counters: counters.clone(),
            status: status.clone(),
            stop: stop.clone(),
            checkpoint_interval: self.config.checkpoint_interval,
            idle_after: self.config.idle_after,
            stats: stream.stats.clone(),
            into_topic: select.into_topic.clone(),
            max_state_rows: self.config.max_state_rows,
            reset,
            metrics: query_metrics.clone(),
            cluster: self.config.cluster.clone(),
            state_retention: self.config.window_state_retention,
            allow_files: self.config.allow_files.clone(),
        };
        let entry = Arc::new(QueryEntry {
            name: name.to_string(),
            sql: sql.to_string(),
            stream: stream.def.name.clone(),
            plan,
            counters,
            status,
            metrics: query_metrics,
            stop,
            handle: Mutex::new(Some(task.spawn())),
        });
        self.queries
            .write()
            .expect("lock")
            .insert(name.to_string(), entry.clone());
        Ok(entry)
    }

    /// A query starting at `latest` begins at the log end of each partition
    /// as it is when the query is created (or reset), not when its consumer
    /// is later assigned: those offsets are saved with it at once. When the
    /// broker cannot tell (the topic does not exist yet, the broker is
    /// down), the query starts at the end as of its first assignment.
    async fn save_start_offsets(
        &self,
        name: &str,
        stream: &StreamDef,
        start: StartFrom,
    ) -> Result<()> {
        if start != StartFrom::Latest
            || stream.source != crate::sql::SourceKind::Kafka
            || self.config.cluster.is_some()
        {
            return Ok(());
        }
        let kafka = crate::connect::kafka_conn(&self.config, stream);
        let topic = stream.topic.clone();
        let ends =
            tokio::task::spawn_blocking(move || crate::source::kafka::end_offsets(&kafka, &topic))
                .await
                .map_err(|e| Error::Execution(e.to_string()))?;
        match ends {
            Ok(offsets) => self.store.commit(name, &[], &offsets, &[]),
            Err(e) => {
                tracing::warn!(query = name, "start offsets not saved: {e}");
                Ok(())
            }
        }
    }

    /// Stops and deletes a query with its results.
    pub fn drop_query(&self, name: &str) -> Result<()> {
        self.drop_query_keeping(name, None)
    }

    /// Stops and deletes a query, its results table with it or renamed to `keep_as`.
    fn drop_query_keeping(&self, name: &str, keep_as: Option<&str>) -> Result<()> {
        let q = self.query(name)?;
        q.stop();
        // Gone from the catalog before its table goes, so readers see "dropped".
        self.queries.write().expect("lock").remove(&q.name);
        self.store.delete_query(&q.name, keep_as)?;
        Ok(())
    }

    /// Restarts a query from `from`, discarding its saved state and offsets
    /// (results already written are kept; re-processed windows replace them).
    pub async fn reset_query(&self, name: &str, from: StartFrom) -> Result<Arc<QueryEntry>> {
        if self.config.cluster.is_some() {
            return Err(Error::BadRequest(
                "resetting a query is not supported in cluster mode; drop and create it again"
                    .into(),
            ));
        }
        let q = self.query(name)?;
        let stopping = q.clone();
        tokio::task::spawn_blocking(move || stopping.stop())
            .await
            .map_err(|e| Error::Execution(e.to_string()))?;
        self.store.delete_checkpoint(&q.name)?;
        let Statement::CreateQuery { select, .. } = parse_statement(&q.sql)?.stmt else {
            return Err(Error::Execution(format!(
                "stored query {name} is not a CREATE QUERY"
            )));
        };
        self.queries.write().expect("lock").remove(&q.name);
        self.start_query(&q.name, &q.sql, &select, false, Some(from))
            .await
    }

    /// Deletes a stream no query reads.
    pub fn drop_stream(&self, name: &str) -> Result<()> {
        let s = self.stream(name)?;
        let readers = self.readers(&s.def.name);
        if !readers.is_empty() {
            return Err(Error::Conflict(format!(
                "stream {} is read by {}; drop {} first",
                s.def.name,
                readers.join(", "),
                if readers.len() == 1 {
                    "that query"
                } else {
                    "those queries"
                }
            )));
        }
        self.store.delete_stream(&s.def.name)?;
        self.streams.write().expect("lock").remove(&s.def.name);
        Ok(())
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

    /// JSON description of a query.
    pub fn query_json(&self, q: &QueryEntry, with_plan: bool) -> Value {
        let c = &q.counters;
        let status = q.status();
        let mut v = json!({
            "id": q.name,
            "name": q.name,
            "sql": q.sql,
            "stream": q.stream,
            "status": status.label(),
            "window": q.plan.window.describe(),
            "columns": columns_json(&q.plan.output_schema),
            "counters": {
                "records_in": c.records_in.load(Ordering::Relaxed),
                "late_records": c.late_records.load(Ordering::Relaxed),
                "bad_records": c.bad_records.load(Ordering::Relaxed),
                "records_skipped": c.records_skipped.load(Ordering::Relaxed),
                "windows_closed": c.windows_closed.load(Ordering::Relaxed),
                "rows_emitted": c.rows_emitted.load(Ordering::Relaxed),
            },
            "watermark": fmt_ms(c.watermark.load(Ordering::Relaxed)),
            "last_window_end": fmt_ms(c.last_window_end.load(Ordering::Relaxed)),
        });
        match status {
            QueryStatus::Failed(e) => v["error"] = json!(e),
            QueryStatus::BrokerUnreachable(since) => v["broker_unreachable_since"] = json!(since),
            _ => {}
        }
        if let Some(sink) = crate::sink::SinkStatus::json(&c.sink) {
            v["sink"] = sink;
        }
        if with_plan {
            v["plan"] = json!(q.plan.explain());
        }
        let notes = self.query_notes(q);
        if !notes.is_empty() {
            v["notes"] = json!(notes);
        }
        v
    }

    /// A warning when `def` reads a Kafka topic its brokers do not have
    /// (a typo, or a topic not created yet): queries over it wait for it.
    async fn topic_warning(&self, def: &StreamDef) -> Option<String> {
        if def.source != crate::sql::SourceKind::Kafka {
            return None;
        }
        let kafka = crate::connect::kafka_conn(&self.config, def);
        let topic = def.topic.clone();
        let (k, t) = (kafka.clone(), topic.clone());
        let wait = std::time::Duration::from_secs(1);
        let exists = tokio::task::spawn_blocking(move || {
            crate::source::kafka::admin::topic_exists(&k, &t, wait)
        })
        .await
        .ok()??;
        if exists {
            return None;
        }
        let w = format!(
            "topic '{topic}' does not exist on {} yet: queries over stream {} wait for it (check kafka_topic for a typo)",
            kafka.brokers, def.name
        );
        tracing::warn!("{w}");
        Some(w)
    }

    /// Adds to a CREATE answer what the user should know about query `q`:
    /// the notes of [`query_notes`](Self::query_notes) and a missing topic.
    async fn add_create_warnings(&self, q: &QueryEntry, v: &mut Value) {
        let mut warnings = self.query_notes(q);
        let stream = self.streams.read().expect("lock").get(&q.stream).cloned();
        if let Some(s) = stream
            && let Some(w) = self.topic_warning(&s.def).await
        {
            warnings.push(w);
        }
        if !warnings.is_empty() {
            v["warnings"] = json!(warnings);
        }
    }

    /// What a reader of query `q`'s rows should know about them.
    fn query_notes(&self, q: &QueryEntry) -> Vec<String> {
        let mut notes = Vec::new();
        if let crate::sql::window::WindowKind::Cumulative { emit_ms } = q.plan.window.kind {
            notes.push(format!(
                "no WINDOW: a cumulative table over the whole stream, re-emitted every {} ms; window_start is always 1970-01-01 and window_end the event time it was computed as of (add WINDOW <size> for windows)",
                emit_ms
            ));
        }
        notes
    }

    /// JSON description of a stream.
    pub fn stream_json(&self, s: &StreamEntry) -> Value {
        let d = &s.def;
        let readers = self.readers(&d.name);
        json!({
            "name": d.name,
            "sql": redact_sql(&s.sql),
            "topic": d.topic,
            "format": format!("{:?}", d.format).to_lowercase(),
            "event_time": d.event_time,
            "watermark_delay_ms": d.watermark_delay_ms,
            "start": format!("{:?}", d.start).to_lowercase(),
            "columns": d.columns.iter().map(|c| json!({"name": c.name, "type": c.sql_type})).collect::<Vec<_>>(),
            "options": d.options.iter().map(|(k, v)| (k.clone(), shown(k, v))).collect::<BTreeMap<_, _>>(),
            "queries": readers,
            "on_error": format!("{:?}", d.on_error).to_lowercase(),
            "max_future_ms": d.max_future_ms,
            "records_in": s.stats.records_in(),
            "bytes_in": s.stats.bytes_in(),
            "bad_records": s.stats.bad_records(),
            "bad_records_by_reason": s.stats.bad_by_reason(),
            "kept_records_by_reason": s.stats.kept_by_reason(),
        })
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
