//! How result rows leave the server: the `after=` cursor of results pages
//! and server-sent events, and rows as JSON objects (keys in column order)
//! or CSV fields, timestamps as RFC 3339 UTC with milliseconds.
//!
//! A cursor is a row's sequence in its results table. `after=N` must be a
//! cursor the query has issued (at most its newest), so a client holding a
//! cursor from elsewhere hears of it instead of silently missing rows;
//! `after=now` starts after the newest row.

use datafusion::arrow::datatypes::{DataType, Schema};
use serde_json::{Value, json};

use super::App;
use crate::error::{Error, Result};
use crate::store::{Value as SqlValue, api_ts};

impl App {
    /// The newest cursor of query `name`'s results (None while it has none).
    pub(super) async fn newest_cursor(&self, name: &str) -> Result<Option<i64>> {
        let store = self.store.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || store.newest_cursor(&name))
            .await
            .map_err(|e| Error::Execution(e.to_string()))?
    }

    /// Resolves an `after` cursor given for query `name`: None for none,
    /// the newest cursor for `now`, else a cursor the query has issued.
    pub(super) async fn resolve_after(
        &self,
        name: &str,
        after: Option<&str>,
    ) -> Result<Option<i64>> {
        let after = match after.map(str::trim) {
            None | Some("") => return Ok(None),
            Some(a) => a,
        };
        if after.eq_ignore_ascii_case("now") {
            return Ok(Some(self.newest_cursor(name).await?.unwrap_or(0)));
        }
        let n = after
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                Error::BadRequest(format!(
                    "invalid cursor '{after}': use a cursor this query returned, or 'now'"
                ))
            })?;
        let newest = self.newest_cursor(name).await?;
        if n > newest.unwrap_or(0) {
            let newest = match newest {
                Some(c) => format!("its newest is {c}"),
                None => "it has no rows yet".into(),
            };
            return Err(Error::BadRequest(format!(
                "cursor {n} was never issued by query {name}: {newest}; \
                 use after=now to start from the newest row"
            )));
        }
        Ok(Some(n))
    }
}

/// Rewrites the timestamp columns of `rows` (stored as [`TS_FORMAT`] text,
/// columns named as in `columns`) in the API's format.
///
/// [`TS_FORMAT`]: crate::store::TS_FORMAT
pub(super) fn api_rows(schema: &Schema, columns: &[String], rows: &mut [Vec<SqlValue>]) {
    let ts: Vec<usize> = columns
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            schema
                .field_with_name(c)
                .is_ok_and(|f| matches!(f.data_type(), DataType::Timestamp(_, _)))
        })
        .map(|(i, _)| i)
        .collect();
    for row in rows {
        for &i in &ts {
            if let Some(SqlValue::Text(t)) = row.get_mut(i) {
                *t = api_ts(t);
            }
        }
    }
}

/// A row as a JSON object, keys in column order.
pub(super) fn row_object(columns: &[String], row: Vec<SqlValue>) -> Value {
    Value::Object(
        columns
            .iter()
            .cloned()
            .zip(row.into_iter().map(sql_to_json))
            .collect(),
    )
}

/// A stored value as JSON (blobs in base64).
pub(super) fn sql_to_json(v: SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => json!(i),
        SqlValue::Real(f) => json!(f),
        SqlValue::Text(s) => Value::String(s),
        SqlValue::Blob(b) => Value::String(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            b,
        )),
    }
}

/// A stored value as a CSV field, quoted when it must be.
pub(super) fn csv_field(v: &SqlValue) -> String {
    let s = match v {
        SqlValue::Null => return String::new(),
        SqlValue::Integer(i) => i.to_string(),
        SqlValue::Real(f) => f.to_string(),
        SqlValue::Text(s) => s.clone(),
        SqlValue::Blob(b) => base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b),
    };
    csv_quote(s)
}

/// A JSON row value (see [`row_objects`](super::row_objects)) as a CSV field.
pub(super) fn json_csv_field(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => csv_quote(s.clone()),
        v => csv_quote(v.to_string()),
    }
}

/// A CSV document: a header row of `columns`, then `rows` of fields.
pub(super) fn csv_text(columns: &[String], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut out = columns.join(",");
    out.push('\n');
    for r in rows {
        out.push_str(&r.join(","));
        out.push('\n');
    }
    out
}

fn csv_quote(s: String) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}
