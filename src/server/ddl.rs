//! What catalog statements do when their name is taken or missing, and
//! what they answer: `CREATE ... IF NOT EXISTS` leaves an existing object
//! alone, `CREATE OR REPLACE QUERY` drops the old query (and its results)
//! first, `DROP ... IF EXISTS` says when there was nothing to drop, and
//! `DROP QUERY ... KEEP RESULTS` keeps the results table under a new name.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{App, QueryEntry};
use crate::error::{Error, Result};
use crate::model::SelectSql;
use crate::plan::ContinuousPlan;
use crate::sql::CreateMode;

/// What a `CREATE QUERY` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// A new query.
    New,
    /// `IF NOT EXISTS` found the query there already.
    Existing,
    /// `OR REPLACE` dropped the old query and its results first.
    Replaced,
}

impl App {
    /// What kind of object `name` is, if it is one.
    fn kind_of(&self, name: &str) -> Option<&'static str> {
        if self.streams.read().expect("lock").contains_key(name) {
            Some("stream")
        } else if self.queries.read().expect("lock").contains_key(name) {
            Some("query")
        } else if self.tables.read().expect("lock").contains_key(name) {
            Some("table")
        } else {
            None
        }
    }

    /// Checks a new `kind` (stream or table) may be called `name`: None when
    /// it is free, the answer when `IF NOT EXISTS` finds one there already;
    /// a name taken otherwise is a conflict.
    pub(super) fn create_check(
        &self,
        mode: CreateMode,
        kind: &str,
        name: &str,
    ) -> Result<Option<Value>> {
        match self.kind_of(name) {
            None => Ok(None),
            Some(k) if k == kind && mode == CreateMode::IfNotExists => Ok(Some(json!({
                "kind": format!("create_{kind}"),
                "message": format!("{kind} {name} already exists; nothing created"),
                "created": false,
                kind: name,
            }))),
            Some(k) => Err(Error::Conflict(format!("'{name}' already exists (a {k})"))),
        }
    }

    /// `CREATE [OR REPLACE] QUERY [IF NOT EXISTS]`, or a bare SELECT over a
    /// stream when `name` is None.
    pub async fn create_query_as(
        &self,
        mode: CreateMode,
        name: Option<String>,
        select: &SelectSql,
        text: &str,
    ) -> Result<(Arc<QueryEntry>, Created)> {
        if self.config.cluster.is_some() && select.window.is_some() && select.emit_ms.is_some() {
            return Err(Error::BadRequest(
                "EMIT EVERY with a WINDOW (early rows) is not supported in cluster mode, \
                 where windows are finished across servers; drop EMIT EVERY"
                    .into(),
            ));
        }
        if self.config.cluster.is_some() && select.window.is_some_and(|w| w.allow_late_ms > 0) {
            return Err(Error::BadRequest(
                "ALLOW LATE is not supported in cluster mode, where windows are finished \
                 across servers; drop ALLOW LATE"
                    .into(),
            ));
        }
        let existing = name.as_deref().and_then(|n| self.query(n).ok());
        match (mode, existing) {
            (CreateMode::IfNotExists, Some(q)) => Ok((q, Created::Existing)),
            (CreateMode::OrReplace, Some(q)) => {
                if self.config.cluster.is_some() {
                    return Err(Error::BadRequest(
                        "CREATE OR REPLACE QUERY is not supported in cluster mode; \
                         DROP QUERY and CREATE QUERY instead"
                            .into(),
                    ));
                }
                // Plan the new query first, so a bad one leaves the old running.
                let stream = self.stream_of(&select.sql)?;
                ContinuousPlan::build_with_tables(&stream.def, select, &self.ref_tables()).await?;
                self.drop_query_keeping(&q.name, None)?;
                let q = self.create_query(name, select, text).await?;
                Ok((q, Created::Replaced))
            }
            _ => Ok((self.create_query(name, select, text).await?, Created::New)),
        }
    }

    /// `DROP QUERY [IF EXISTS] name [KEEP RESULTS]`.
    pub(super) fn drop_query_stmt(&self, name: &str, if_exists: bool, keep: bool) -> Result<Value> {
        if if_exists && self.query(name).is_err() {
            return Ok(json!({
                "kind": "drop_query",
                "message": format!("query {name} does not exist; nothing dropped"),
                "dropped": false,
            }));
        }
        let keep_as =
            keep.then(|| format!("{name}_kept_{}", chrono::Utc::now().format("%Y%m%d%H%M%S")));
        let keep_as = self.drop_query_keeping(name, keep_as.as_deref())?;
        let message = match &keep_as {
            Some(t) => format!("query {name} dropped; its results are kept in table {t}"),
            None => format!("query {name} dropped with its results table"),
        };
        Ok(
            json!({"kind": "drop_query", "message": message, "dropped": true, "results_table": keep_as}),
        )
    }

    /// `DROP STREAM [IF EXISTS] name`.
    pub(super) fn drop_stream_stmt(&self, name: &str, if_exists: bool) -> Result<Value> {
        if if_exists && self.stream(name).is_err() {
            return Ok(json!({
                "kind": "drop_stream",
                "message": format!("stream {name} does not exist; nothing dropped"),
                "dropped": false,
            }));
        }
        self.drop_stream(name)?;
        Ok(
            json!({"kind": "drop_stream", "message": format!("stream {name} dropped"), "dropped": true}),
        )
    }
}
