//! The HTTP API (axum).
//!
//! | route | what |
//! |---|---|
//! | `POST /sql` | any statements, `;`-separated |
//! | `POST /queries` | `{"sql": ..., "name"?: ...}` or a `text/plain` SELECT → `201` |
//! | `GET /queries`, `GET /queries/{id}`, `DELETE /queries/{id}` | |
//! | `GET /queries/{id}/results?from=&to=&after=&limit=&format=json\|csv` | results, cursor-paged |
//! | `GET /streams`, `GET /streams/{name}` | |
//! | `GET /healthz` | |
//!
//! Every error is `{"error": {"code", "message", "line", "column"}}` with the
//! status from [`Error::status`].
//!
//! ```text
//! curl -d "SELECT geo, count(*) FROM impressions GROUP BY geo WINDOW 10s" localhost:8080/queries
//! curl "localhost:8080/queries/query_1/results?after=CURSOR"
//! ```

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rusqlite::types::Value as SqlValue;
use serde::Deserialize;
use serde_json::{Value, json};

use super::App;
use crate::error::Error;
use crate::sql::{Statement, parse_statement};
use crate::store::sqlite::{ResultFilter, normalize_ts};

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (line, column) = match self.location() {
            Some((l, c)) => (json!(l), json!(c)),
            None => (Value::Null, Value::Null),
        };
        let body = json!({"error": {"code": self.code(), "message": self.to_string(), "line": line, "column": column}});
        (status, axum::Json(body)).into_response()
    }
}

type Res = std::result::Result<Response, Error>;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// The API router over `app`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/sql", post(sql))
        .route("/queries", post(create_query).get(list_queries))
        .route("/queries/{id}", get(get_query).delete(delete_query))
        .route("/queries/{id}/results", get(results))
        .route("/streams", get(list_streams))
        .route("/streams/{name}", get(get_stream))
        .route("/healthz", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .fallback(|| async { Error::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            let body = json!({"error": {"code": "method_not_allowed", "message": "method not allowed on this route", "line": null, "column": null}});
            (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body))
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

fn utf8(body: &Bytes) -> Result<&str, Error> {
    std::str::from_utf8(body).map_err(|_| Error::BadRequest("request body is not UTF-8".into()))
}

async fn sql(State(app): State<Arc<App>>, body: Bytes) -> Res {
    let results = app.execute_sql(utf8(&body)?).await?;
    Ok(axum::Json(json!({"results": results})).into_response())
}

#[derive(Deserialize)]
struct CreateQueryBody {
    sql: String,
    name: Option<String>,
}

async fn create_query(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Res {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let (text, name) = if is_json {
        let b: CreateQueryBody = serde_json::from_slice(&body).map_err(|e| {
            Error::BadRequest(format!(
                "invalid JSON body: {e}; expected {{\"sql\": \"...\"}}"
            ))
        })?;
        (b.sql, b.name)
    } else {
        (utf8(&body)?.to_string(), None)
    };
    let parsed = parse_statement(&text)?;
    let (name, select) =
        match parsed.stmt {
            Statement::CreateQuery { name, select } => (Some(name), select),
            Statement::Select(select) => (name, select),
            _ => return Err(Error::BadRequest(
                "POST /queries takes a SELECT or CREATE QUERY; use POST /sql for other statements"
                    .into(),
            )),
        };
    let text = match &name {
        Some(n) if !parsed.text.to_ascii_uppercase().starts_with("CREATE") => {
            format!("CREATE QUERY {n} AS {}", parsed.text)
        }
        _ => parsed.text.clone(),
    };
    let q = app.create_query(name, &select, &text).await?;
    let v = app.query_json(&q, false);
    let body = json!({"id": v["id"], "name": v["name"], "columns": v["columns"]});
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

async fn list_queries(State(app): State<Arc<App>>) -> Res {
    let qs: Vec<Value> = app
        .queries()
        .iter()
        .map(|q| app.query_json(q, false))
        .collect();
    Ok(axum::Json(json!({"queries": qs})).into_response())
}

async fn get_query(State(app): State<Arc<App>>, Path(id): Path<String>) -> Res {
    let q = app.query(&id)?;
    Ok(axum::Json(app.query_json(&q, true)).into_response())
}

async fn delete_query(State(app): State<Arc<App>>, Path(id): Path<String>) -> Res {
    let app2 = app.clone();
    let id2 = id.clone();
    tokio::task::spawn_blocking(move || app2.drop_query(&id2))
        .await
        .map_err(|e| Error::Execution(e.to_string()))??;
    Ok(axum::Json(json!({"dropped": id})).into_response())
}

#[derive(Deserialize)]
struct ResultsParams {
    from: Option<String>,
    to: Option<String>,
    after: Option<String>,
    limit: Option<String>,
    format: Option<String>,
}

fn sql_to_json(v: SqlValue) -> Value {
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

fn csv_field(v: &SqlValue) -> String {
    let s = match v {
        SqlValue::Null => return String::new(),
        SqlValue::Integer(i) => i.to_string(),
        SqlValue::Real(f) => f.to_string(),
        SqlValue::Text(s) => s.clone(),
        SqlValue::Blob(b) => base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b),
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

async fn results(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    params: Query<ResultsParams>,
) -> Res {
    let q = app.query(&id)?;
    let p = params.0;
    let limit = match p.limit.as_deref() {
        None => 1000,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100_000).contains(n))
            .ok_or_else(|| {
                Error::BadRequest(format!("limit must be between 1 and 100000, not '{l}'"))
            })?,
    };
    let after = match p.after.as_deref() {
        None | Some("") => None,
        Some(a) => Some(
            a.parse::<i64>()
                .map_err(|_| Error::BadRequest(format!("invalid cursor '{a}'")))?,
        ),
    };
    let filter = ResultFilter {
        from: p.from.as_deref().map(normalize_ts).transpose()?,
        to: p.to.as_deref().map(normalize_ts).transpose()?,
        after,
        limit,
    };
    let store = app.store.clone();
    let name = q.name.clone();
    let page = tokio::task::spawn_blocking(move || store.read_results(&name, &filter))
        .await
        .map_err(|e| Error::Execution(e.to_string()))??;
    let cursor = page.cursor.map(|c| c.to_string()).unwrap_or_default();
    match p.format.as_deref().unwrap_or("json") {
        "json" => {
            let rows: Vec<Value> = page
                .rows
                .into_iter()
                .map(|r| {
                    let obj: serde_json::Map<String, Value> = page
                        .columns
                        .iter()
                        .cloned()
                        .zip(r.into_iter().map(sql_to_json))
                        .collect();
                    Value::Object(obj)
                })
                .collect();
            let body =
                json!({"query": q.name, "columns": page.columns, "rows": rows, "cursor": cursor});
            Ok(axum::Json(body).into_response())
        }
        "csv" => {
            let mut out = page.columns.join(",");
            out.push('\n');
            for r in &page.rows {
                out.push_str(&r.iter().map(csv_field).collect::<Vec<_>>().join(","));
                out.push('\n');
            }
            Ok((
                [
                    (header::CONTENT_TYPE, "text/csv".to_string()),
                    (header::HeaderName::from_static("x-runnel-cursor"), cursor),
                ],
                out,
            )
                .into_response())
        }
        f => Err(Error::BadRequest(format!(
            "format must be json or csv, not '{f}'"
        ))),
    }
}

async fn list_streams(State(app): State<Arc<App>>) -> Res {
    let ss: Vec<Value> = app.streams().iter().map(|s| app.stream_json(s)).collect();
    Ok(axum::Json(json!({"streams": ss})).into_response())
}

async fn get_stream(State(app): State<Arc<App>>, Path(name): Path<String>) -> Res {
    let s = app.stream(&name)?;
    Ok(axum::Json(app.stream_json(&s)).into_response())
}
