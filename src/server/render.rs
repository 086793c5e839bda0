//! What the API answers look like: catalog entries, query status and
//! statement answers as JSON (rows themselves are written by
//! [`super::encode`]). Statements decide what to answer (`execute`); this module only
//! writes it down.

use super::*;

pub(super) fn columns_json(schema: &SchemaRef) -> Value {
    Value::Array(
        schema
            .fields()
            .iter()
            .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
            .collect(),
    )
}

/// One statement's answer: JSON, or the rows of a pull query as Arrow
/// batches, written straight from them by [`crate::format::encode`] (over
/// HTTP) or as typed rows (over the PostgreSQL protocol).
pub enum Answer {
    /// An answer built as JSON.
    Json(Value),
    /// A pull query's rows, written as `{"columns", "rows", "kind": "rows", "statement"}`.
    Rows {
        /// Their schema.
        schema: SchemaRef,
        /// The rows.
        batches: Vec<RecordBatch>,
        /// The statement answered.
        statement: String,
    },
}

impl Answer {
    /// The answer to a pull query: its rows as arrays in `schema` order.
    pub(super) fn rows(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Self> {
        Ok(Answer::Rows {
            schema: schema.clone(),
            batches: batches.to_vec(),
            statement: String::new(),
        })
    }

    /// Names the statement answered.
    pub(super) fn set_statement(&mut self, text: String) {
        match self {
            Answer::Json(v) => v["statement"] = Value::String(text),
            Answer::Rows { statement, .. } => *statement = text,
        }
    }

    /// Appends the answer as JSON to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) -> Result<()> {
        use crate::format::encode::{json, json_body, json_rows};
        match self {
            Answer::Json(v) => out.extend_from_slice(&json(v)),
            Answer::Rows {
                schema,
                batches,
                statement,
            } => out.extend_from_slice(&json_body(&[
                ("columns", &json(&columns_json(schema))),
                ("rows", &json_rows(batches, false)?),
                ("kind", b"\"rows\""),
                ("statement", &json(statement)),
            ])),
        }
        Ok(())
    }
}

impl From<Value> for Answer {
    fn from(v: Value) -> Self {
        Answer::Json(v)
    }
}

pub(super) fn table_rows(columns: &[&str], rows: Vec<Vec<Value>>) -> Value {
    let cols: Vec<Value> = columns
        .iter()
        .map(|c| json!({"name": c, "type": "Utf8"}))
        .collect();
    json!({"columns": cols, "rows": rows})
}

pub(super) fn fmt_ms(ms: i64) -> Value {
    if ms == i64::MIN {
        Value::Null
    } else {
        Value::String(crate::store::format_api_ts(ms))
    }
}

impl App {
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
            "window": q.plan.window_text(),
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
            QueryStatus::WaitingForStore(e) => v["store_error"] = json!(e),
            _ => {}
        }
        if let Some(sink) = crate::model::SinkStatus::json(&c.sink) {
            v["sink"] = sink;
        }
        if with_plan {
            v["plan"] = json!(q.plan.explain());
            v["partitions"] = json!(q.metrics.positions());
            let (commits, secs) = q.metrics.commit_totals();
            v["commits"] = json!({"count": commits, "seconds": secs});
        }
        let notes = self.query_notes(q);
        if !notes.is_empty() {
            v["notes"] = json!(notes);
        }
        v
    }

    /// What a reader of query `q`'s rows should know about them.
    pub(super) fn query_notes(&self, q: &QueryEntry) -> Vec<String> {
        let mut notes = Vec::new();
        if let crate::model::WindowKind::Cumulative { emit_ms } = q.plan.window.kind {
            notes.push(format!(
                "no WINDOW: a cumulative table over the whole stream, re-emitted every {} ms; window_start is NULL (its rows belong to no window) and window_end the event time it was computed as of (add WINDOW <size> for windows)",
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
}

/// A `200` answer of `body`, already JSON.
pub(super) fn json_response(body: Vec<u8>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let ct = axum::http::HeaderValue::from_static("application/json");
    ([(axum::http::header::CONTENT_TYPE, ct)], body).into_response()
}
