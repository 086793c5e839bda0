//! Running statements: each parsed statement of `POST /sql` (and of the
//! REPL and the demo) against the catalog, with the answer it gives.

use super::*;

impl App {
    /// Runs every statement in `body` in order; stops at the first error.
    pub async fn execute_sql(&self, body: &str) -> Result<Vec<Answer>> {
        let _ddl = self.ddl.lock().await;
        let _together = self.start_together();
        let mut out = Vec::new();
        for p in parse_sql(body)? {
            let mut r = self.execute(&p).await?;
            r.set_statement(match p.stmt {
                Statement::CreateStream(_) => redact_sql(&p.text),
                _ => p.text.clone(),
            });
            out.push(r);
        }
        Ok(out)
    }

    /// Runs one parsed statement the way `POST /sql` does (under the same
    /// catalog lock).
    pub async fn execute_statement(&self, p: &Parsed) -> Result<Answer> {
        let _ddl = self.ddl.lock().await;
        self.execute(p).await
    }

    /// Whether `p` changes the catalog (creates or drops something; a bare
    /// SELECT over a stream creates a query) rather than only reading.
    pub fn changes_catalog(&self, p: &Parsed) -> Result<bool> {
        Ok(match &p.stmt {
            Statement::Select(select) => self.reads_stream(&select.sql)?,
            Statement::Explain(_)
            | Statement::ShowStreams
            | Statement::ShowQueries
            | Statement::ShowTables
            | Statement::Describe(_) => false,
            _ => true,
        })
    }

    pub(super) async fn execute(&self, p: &Parsed) -> Result<Answer> {
        Ok(Answer::Json(match &p.stmt {
            Statement::CreateStream(def) => {
                if let Some(v) = self.create_check(p.create, "stream", &def.name)? {
                    return Ok(v.into());
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
                let mut v = self.created_query(&q, message).await;
                v["created"] = json!(created != Created::Existing);
                v
            }
            Statement::Select(select) => {
                if self.reads_stream(&select.sql)? {
                    let q = self.create_query(None, select, &p.text).await?;
                    self.created_query(&q, format!("query {} created", q.name))
                        .await
                } else {
                    let (schema, batches) = self.pull(select).await?;
                    return Answer::rows(&schema, &batches);
                }
            }
            Statement::CreateTable(def) => {
                if let Some(v) = self.create_check(p.create, "table", &def.name)? {
                    return Ok(v.into());
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
                            json!(q.plan.window_text()),
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
                    v["sink"] = crate::model::SinkStatus::json(&q.counters.sink).into();
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
        }))
    }

    /// A warning when `def` reads a Kafka topic its brokers do not have
    /// (a typo, or a topic not created yet): queries over it wait for it.
    pub(super) async fn topic_warning(&self, def: &StreamDef) -> Option<String> {
        if def.source != crate::model::SourceKind::Kafka {
            return None;
        }
        let kafka = self.config.kafka_conn(def);
        let topic = def.topic.clone();
        let key = (kafka.brokers.clone(), topic.clone());
        let found = self.topics_found.lock().expect("lock").get(&key).copied();
        if found.is_some_and(|at| at.elapsed() < TOPIC_FOUND_FOR) {
            return None;
        }
        let (k, t) = (kafka.clone(), topic.clone());
        let wait = Duration::from_secs(1);
        let exists = tokio::task::spawn_blocking(move || {
            crate::source::kafka::admin::topic_exists(&k, &t, wait)
        })
        .await
        .ok()??;
        if exists {
            let mut found = self.topics_found.lock().expect("lock");
            found.insert(key, Instant::now());
            return None;
        }
        let w = format!(
            "topic '{topic}' does not exist on {} yet: queries over stream {} wait for it (check kafka_topic for a typo)",
            kafka.brokers, def.name
        );
        tracing::warn!("{w}");
        Some(w)
    }

    /// The answer to creating query `q`, with what the user should know
    /// about it: the notes of [`query_notes`](Self::query_notes) and a
    /// missing topic.
    pub(super) async fn created_query(&self, q: &QueryEntry, message: String) -> Value {
        let mut v =
            json!({"kind": "create_query", "message": message, "query": self.query_json(q, false)});
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
        v
    }
}
