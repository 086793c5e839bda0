//! A query's life on this server: created (planned, saved, its start
//! offsets fixed), started on its own thread with the coordinator of this
//! server's mode, reset, and dropped with or without its results.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use super::{App, QueryEntry};
use crate::error::{Error, Result};
use crate::model::{Counters, QueryStatus, SelectSql, StartFrom, StreamDef};
use crate::plan::ContinuousPlan;
use crate::runtime::QueryTask;
use crate::sql::{Statement, parse_statement};

impl App {
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
        if let Some(problem) = crate::model::query::name_problem(&name) {
            return Err(Error::BadRequest(problem));
        }
        if self.name_taken(&name) {
            return Err(Error::Conflict(format!("'{name}' already exists")));
        }
        // Plan before saving, so a bad query leaves nothing behind.
        self.start_query(&name, &sql, select, true, None).await
    }

    pub(super) async fn start_query(
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
        // Queries made before late tables existed get theirs here.
        if self.config.cluster.is_none() {
            let late = crate::window::late_schema(&plan, stream.def.event_time_index());
            self.store.ensure_late_table(name, &late)?;
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
            kafka: self.config.kafka_conn(&stream.def),
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
            state_retention: self.config.window_state_retention,
            late_retention: self.config.late_record_retention,
            allow_files: self.config.allow_files.clone(),
            readers: self.config.shared_reads.then(|| self.readers.clone()),
            start_gate: match self.config.cluster {
                Some(_) => None,
                None => self
                    .start_gate
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map(|g| g.ticket()),
            },
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
            handle: Mutex::new(Some(task.spawn(match &self.config.cluster {
                Some(c) => Box::new(crate::cluster::Member::new(c, self.groups.clone())),
                None => Box::new(crate::runtime::local::Local::default()),
            }))),
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
            || stream.source != crate::model::SourceKind::Kafka
            || self.config.cluster.is_some()
        {
            return Ok(());
        }
        let kafka = self.config.kafka_conn(stream);
        let topic = stream.topic.clone();
        let ends =
            tokio::task::spawn_blocking(move || crate::source::kafka::end_offsets(&kafka, &topic))
                .await
                .map_err(|e| Error::Execution(e.to_string()))?;
        match ends {
            Ok(offsets) => {
                self.store
                    .commit(name, &[], &offsets, &crate::window::delta::Saved::cleared())
            }
            Err(e) => {
                tracing::warn!(query = name, "start offsets not saved: {e}");
                Ok(())
            }
        }
    }

    /// Stops and deletes a query with its results.
    pub fn drop_query(&self, name: &str) -> Result<()> {
        self.drop_query_keeping(name, None).map(drop)
    }

    /// Stops and deletes a query, its results table with it or renamed to `keep_as`.
    pub(super) fn drop_query_keeping(
        &self,
        name: &str,
        keep_as: Option<&str>,
    ) -> Result<Option<String>> {
        let q = self.query(name)?;
        q.stop();
        // Gone from the catalog before its table goes, so readers see "dropped".
        self.queries.write().expect("lock").remove(&q.name);
        self.store.delete_query(&q.name, keep_as).inspect_err(|_| {
            // Nothing was deleted: the query stays listed (stopped), so a
            // drop can be tried again and its name is still taken.
            self.queries
                .write()
                .expect("lock")
                .insert(q.name.clone(), q);
        })
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
}
