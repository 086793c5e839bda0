//! What the API answers look like: catalog entries, query status and rows
//! as JSON. Statements decide what to answer (`execute`); this module only
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

/// The rows of `batches` as JSON objects (NULL columns left out).
pub(super) fn batch_objects(
    batches: &[RecordBatch],
) -> Result<Vec<serde_json::Map<String, Value>>> {
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
pub(super) fn api_timestamps(batch: &RecordBatch) -> Result<RecordBatch> {
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
