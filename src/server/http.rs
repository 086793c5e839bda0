//! The HTTP API (axum).
//!
//! | route | what |
//! |---|---|
//! | `POST /sql` | any statements, `;`-separated; the body, or `{"sql": ...}` as `application/json` |
//! | `POST /queries` | `{"sql": ..., "name"?: ...}` or a `text/plain` SELECT → `201` |
//! | `GET /queries`, `GET /queries/{id}`, `DELETE /queries/{id}` | |
//! | `GET /queries/{id}/results?from=&to=&after=&limit=&format=json\|csv&final=` | results, cursor-paged (`after=now` for only new rows), `has_more` when a page stops at its limit; `final=true` leaves out provisional rows (`EMIT EVERY`) |
//! | `GET /queries/{id}/late?after=&limit=&format=json\|csv` | late records kept (`late.rs`), cursor-paged like results |
//! | `GET /queries/{id}/results?rollup=1h&from=&to=&limit=&format=&partial=` | roll-up of the complete buckets (`rollup.rs`); `partial=true` adds the open ones, flagged by a `complete` column |
//! | `GET /queries/{id}/events` | the query's recent errors and warnings ([`crate::runtime::events`]) |
//! | `GET /streams`, `GET /streams/{name}` | |
//! | `GET /healthz` | `{"status": "ok"}`, or `"degraded"` with the queries that cannot read their broker or have failed (still 200: the server itself is alive) |
//!
//! Requests with a foreign `Host`, and cross-origin calls that change
//! something, get `403` (see [`super::guard`]).
//!
//! Every error is `{"error": {"code", "message", "line", "column"}}` with the
//! status from [`Error::status`]; `503 busy` (a full set of event streams,
//! see [`super::limits`]) also carries `Retry-After`.
//!
//! ```text
//! curl -d "SELECT geo, count(*) FROM impressions GROUP BY geo WINDOW 10s" localhost:8080/queries
//! curl "localhost:8080/queries/query_1/results?after=CURSOR"
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::App;
use super::guard::{HostRule, browser_guard};
use crate::error::Error;
use crate::format::encode;
use crate::sql::{Statement, parse_statement};
use crate::store::{ResultFilter, ResultPage, normalize_ts};

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (line, column) = match self.location() {
            Some((l, c)) => (json!(l), json!(c)),
            None => (Value::Null, Value::Null),
        };
        let body = json!({"error": {"code": self.code(), "message": self.to_string(), "line": line, "column": column}});
        let mut response = (status, axum::Json(body)).into_response();
        if let Error::Busy(_) | Error::Unavailable(_) = self {
            // Event streams end when their clients leave: a slot soon frees;
            // a store reconnects within seconds.
            let retry = header::HeaderValue::from_static("5");
            response.headers_mut().insert(header::RETRY_AFTER, retry);
        }
        response
    }
}

pub(super) type Res = std::result::Result<Response, Error>;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// The API router over `app`, served on `local` (the address as bound).
pub fn router(app: Arc<App>, local: SocketAddr) -> Router {
    let rule = Arc::new(HostRule::new(local, &app.config.allow_hosts));
    super::metrics::spawn_sampler(Arc::downgrade(&app));
    Router::new()
        .route("/sql", post(sql))
        .route("/queries", post(create_query).get(list_queries))
        .route("/queries/{id}", get(get_query).delete(delete_query))
        .route("/queries/{id}/results", get(results))
        .route("/queries/{id}/late", get(super::late::late))
        .route("/streams", get(list_streams))
        .route("/streams/{name}", get(get_stream))
        .route("/streams/{name}/errors", get(stream_errors))
        .route("/queries/{id}/reset", post(reset_query))
        .route("/queries/{id}/events", get(query_events))
        .route("/healthz", get(healthz))
        .route("/queries/{id}/stream", get(stream_results))
        .route("/metrics", get(super::metrics::handler))
        .merge(super::dashboard::routes())
        .fallback(|| async { Error::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            let body = json!({"error": {"code": "method_not_allowed", "message": "method not allowed on this route", "line": null, "column": null}});
            (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body))
        })
        .layer(axum::middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(app.clone(), authorize))
        .layer(axum::middleware::from_fn_with_state(rule, browser_guard))
        .with_state(app)
}

/// Gives the refusals axum's extractors answer in plain text (a path or
/// query string that does not parse, a body over [`MAX_BODY`]) the API's
/// JSON error form, keeping their status.
async fn json_errors(response: Response) -> Response {
    let plain = (response.headers().get(header::CONTENT_TYPE))
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !response.status().is_client_error() || !plain {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .unwrap_or_default();
    let reason = parts.status.canonical_reason().unwrap_or("client error");
    let code = reason.to_ascii_lowercase().replace(' ', "_");
    let message = String::from_utf8_lossy(&text);
    let body = json!({"error": {"code": code, "message": message, "line": null, "column": null}});
    (parts.status, axum::Json(body)).into_response()
}

/// Compares in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// With a token configured, mutating calls (and reads, if protected) need
/// `Authorization: Bearer <token>`.
async fn authorize(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // Refuse an oversized body from its declared length, before reading it.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Error::PayloadTooLarge(format!("request body is larger than {MAX_BODY} bytes"))
            .into_response();
    }
    if let Some(token) = &app.config.token {
        let read = matches!(
            *req.method(),
            axum::http::Method::GET | axum::http::Method::HEAD
        );
        let open = req.uri().path() == "/healthz" || (read && !app.config.protect_reads);
        if !open {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
                return Error::Unauthorized("this call needs Authorization: Bearer <token>".into())
                    .into_response();
            }
        }
    }
    next.run(req).await
}

/// The request body, with size and read errors in Runnel's error shape.
fn body(b: Result<Bytes, axum::extract::rejection::BytesRejection>) -> Result<Bytes, Error> {
    b.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge(format!("request body is larger than {MAX_BODY} bytes"))
        } else {
            Error::BadRequest(r.body_text())
        }
    })
}

fn utf8(body: &Bytes) -> Result<&str, Error> {
    std::str::from_utf8(body).map_err(|_| Error::BadRequest("request body is not UTF-8".into()))
}

async fn sql(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    b: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Res {
    let (text, _) = sql_body(&headers, &body(b)?)?;
    let results = app.execute_sql(&text).await?;
    let mut out = b"{\"results\":[".to_vec();
    for (i, r) in results.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        r.write_json(&mut out)?;
    }
    out.extend_from_slice(b"]}");
    Ok(super::render::json_response(out))
}

#[derive(Deserialize)]
struct SqlBody {
    sql: String,
    name: Option<String>,
}

/// The SQL text of a request (and the query name a JSON body may give):
/// `{"sql": "...", "name"?: "..."}` when the body is declared
/// `application/json`, the body itself otherwise.
fn sql_body(headers: &HeaderMap, body: &Bytes) -> Result<(String, Option<String>), Error> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let (text, name) = if is_json && !body.iter().all(u8::is_ascii_whitespace) {
        let b: SqlBody = serde_json::from_slice(body).map_err(|e| {
            Error::BadRequest(format!(
                "invalid JSON body: {e}; expected {{\"sql\": \"...\"}}"
            ))
        })?;
        (b.sql, b.name)
    } else {
        (utf8(body)?.to_string(), None)
    };
    if text.trim().is_empty() {
        return Err(Error::BadRequest(
            "empty request body: send SQL as text/plain, or {\"sql\": \"...\"} as application/json"
                .into(),
        ));
    }
    Ok((text, name))
}

async fn create_query(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    b: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Res {
    let (text, name) = sql_body(&headers, &body(b)?)?;
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
    // Read as SQL reads an unquoted name.
    let name = name.map(|n| crate::sql::normalize_ident(&n, false));
    if let Some(problem) = name.as_deref().and_then(crate::model::query::name_problem) {
        return Err(Error::BadRequest(problem));
    }
    let text = match &name {
        Some(n) if !parsed.text.to_ascii_uppercase().starts_with("CREATE") => {
            // Quoted, so the name is read back as given when the server starts.
            format!(
                "CREATE QUERY \"{}\" AS {}",
                n.replace('"', "\"\""),
                parsed.text
            )
        }
        _ => parsed.text.clone(),
    };
    let (q, created) = app
        .create_query_as(parsed.create, name, &select, &text)
        .await?;
    let v = app.query_json(&q, false);
    let body = json!({"id": v["id"], "name": v["name"], "columns": v["columns"]});
    let status = match created {
        crate::server::Created::Existing => StatusCode::OK,
        _ => StatusCode::CREATED,
    };
    Ok((status, axum::Json(body)).into_response())
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
    let message = format!("query {id} dropped with its results table");
    Ok(axum::Json(json!({"dropped": id, "message": message})).into_response())
}

#[derive(Deserialize)]
pub(super) struct ResultsParams {
    pub(super) from: Option<String>,
    pub(super) to: Option<String>,
    pub(super) after: Option<String>,
    pub(super) limit: Option<String>,
    pub(super) format: Option<String>,
    pub(super) rollup: Option<String>,
    pub(super) partial: Option<String>,
    #[serde(rename = "final")]
    pub(super) final_only: Option<String>,
}

/// The answer formats of results pages and roll-ups.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Format {
    Json,
    Csv,
}

/// A page's `limit=` (default 1000, at most 100 000) and `format=`.
pub(super) fn page_params(
    limit: Option<&str>,
    format: Option<&str>,
) -> Result<(usize, Format), Error> {
    let limit = match limit {
        None => 1000,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100_000).contains(n))
            .ok_or_else(|| {
                Error::BadRequest(format!("limit must be between 1 and 100000, not '{l}'"))
            })?,
    };
    let format = match format.unwrap_or("json") {
        "json" => Format::Json,
        "csv" => Format::Csv,
        f => {
            return Err(Error::BadRequest(format!(
                "format must be json or csv, not '{f}'"
            )));
        }
    };
    Ok((limit, format))
}

async fn results(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    params: Query<ResultsParams>,
) -> Res {
    let q = app.query(&id)?;
    let p = params.0;
    let (limit, format) = page_params(p.limit.as_deref(), p.format.as_deref())?;
    if let Some(size) = &p.rollup {
        return super::rollup::results(&app, &q.name, size, &p, limit, format).await;
    }
    if p.partial.is_some() {
        return Err(Error::BadRequest(
            "partial= applies to roll-ups only (with rollup=SIZE)".into(),
        ));
    }
    let after = app.resolve_after(&q.name, p.after.as_deref()).await?;
    let filter = ResultFilter {
        from: p.from.as_deref().map(normalize_ts).transpose()?,
        to: p.to.as_deref().map(normalize_ts).transpose()?,
        after,
        limit,
        final_only: super::rows::final_only(p.final_only.as_deref())?,
    };
    let store = app.store.clone();
    let (name, schema) = (q.name.clone(), q.plan.output_schema.clone());
    let page = tokio::task::spawn_blocking(move || store.read_results(&name, &schema, &filter))
        .await
        .map_err(|e| Error::Execution(e.to_string()))??;
    page_response(&q.name, &page, format)
}

/// A page of query `query`'s rows (results or late records) in `format`:
/// JSON with its columns, rows, cursor and `has_more`, or CSV with them in
/// headers.
pub(super) fn page_response(query: &str, page: &ResultPage, format: Format) -> Res {
    let cursor = page.cursor.map(|c| c.to_string()).unwrap_or_default();
    if format == Format::Csv {
        let out = encode::csv(&page.batch)?;
        return Ok(csv_response(out, Some(cursor), page.has_more));
    }
    let columns: Vec<&String> = page
        .batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name())
        .collect();
    let body = encode::json_body(&[
        ("query", &encode::json(&query)),
        ("columns", &encode::json(&columns)),
        (
            "rows",
            &encode::json_rows(std::slice::from_ref(&page.batch), true)?,
        ),
        ("cursor", &encode::json(&cursor)),
        ("has_more", &encode::json(&page.has_more)),
    ]);
    Ok(super::render::json_response(body))
}

/// A CSV answer: `X-Runnel-Cursor` (results pages) and `X-Runnel-Has-More`.
pub(super) fn csv_response(body: Vec<u8>, cursor: Option<String>, has_more: bool) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/csv"),
    );
    if let Some(c) = cursor.and_then(|c| header::HeaderValue::from_str(&c).ok()) {
        headers.insert(header::HeaderName::from_static("x-runnel-cursor"), c);
    }
    headers.insert(
        header::HeaderName::from_static("x-runnel-has-more"),
        header::HeaderValue::from_static(if has_more { "true" } else { "false" }),
    );
    (headers, body).into_response()
}

async fn list_streams(State(app): State<Arc<App>>) -> Res {
    let ss: Vec<Value> = app.streams().iter().map(|s| app.stream_json(s)).collect();
    Ok(axum::Json(json!({"streams": ss})).into_response())
}

async fn get_stream(State(app): State<Arc<App>>, Path(name): Path<String>) -> Res {
    let s = app.stream(&name)?;
    Ok(axum::Json(app.stream_json(&s)).into_response())
}

async fn stream_errors(State(app): State<Arc<App>>, Path(name): Path<String>) -> Res {
    let s = app.stream(&name)?;
    let body = json!({
        "stream": s.def.name,
        "bad_records": s.stats.bad_records(),
        "by_reason": s.stats.bad_by_reason(),
        "kept_by_reason": s.stats.kept_by_reason(),
        "samples": s.stats.samples(),
        "kept_samples": s.stats.kept_samples(),
    });
    Ok(axum::Json(body).into_response())
}

#[derive(Deserialize)]
struct ResetParams {
    from: Option<String>,
}

async fn reset_query(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    params: Query<ResetParams>,
) -> Res {
    let from = match params.0.from.as_deref() {
        Some("earliest") => crate::model::StartFrom::Earliest,
        Some("latest") => crate::model::StartFrom::Latest,
        other => {
            let got = other.map(|v| format!(", not '{v}'")).unwrap_or_default();
            return Err(Error::BadRequest(format!(
                "reset needs ?from=earliest or ?from=latest{got}"
            )));
        }
    };
    let q = app.reset_query(&id, from).await?;
    Ok(axum::Json(app.query_json(&q, false)).into_response())
}

#[derive(Deserialize)]
struct StreamParams {
    after: Option<String>,
    #[serde(rename = "final")]
    final_only: Option<String>,
}

/// How often a results stream looks for new rows.
const STREAM_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// `GET /queries/{id}/stream`: server-sent events, one `row` event per result
/// row in write order (`update` for a row late records revised), each with
/// the row's cursor as its id. A client resumes
/// with `Last-Event-ID` (or `?after=CURSOR`); a `dropped` event ends the
/// stream when the query is dropped.
async fn stream_results(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(p): Query<StreamParams>,
) -> Res {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let q = app.query(&id)?;
    let from = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .or(p.after.as_deref().filter(|v| !v.is_empty()));
    let after = app.resolve_after(&q.name, from).await?;
    let final_only = super::rows::final_only(p.final_only.as_deref())?;
    // Held by the stream: dropping it when the client leaves frees the slot.
    let slot = app.guards.sse_slot()?;
    let name = q.name.clone();
    let state = (
        (app, slot),
        name,
        after,
        std::collections::VecDeque::<Event>::new(),
        false,
    );
    let events = futures::stream::unfold(
        state,
        move |((app, slot), name, mut after, mut pending, mut done)| async move {
            loop {
                if let Some(ev) = pending.pop_front() {
                    return Some((
                        Ok::<Event, std::convert::Infallible>(ev),
                        ((app, slot), name, after, pending, done),
                    ));
                }
                if done {
                    return None;
                }
                let Ok(q) = app.query(&name) else {
                    done = true;
                    pending.push_back(Event::default().event("dropped").data(name.clone()));
                    continue;
                };
                let store = app.store.clone();
                let (table, schema) = (name.clone(), q.plan.output_schema.clone());
                let filter = ResultFilter {
                    after,
                    limit: 1000,
                    final_only,
                    ..Default::default()
                };
                let page = tokio::task::spawn_blocking(move || {
                    let page = store.read_results(&table, &schema, &filter)?;
                    let kinds = super::rows::event_kinds(&page.batch);
                    Ok::<_, Error>((encode::row_texts(&page.batch)?, page.seqs, kinds))
                })
                .await;
                match page {
                    Ok(Ok((rows, seqs, kinds))) if !rows.is_empty() => {
                        for ((row, seq), kind) in rows.into_iter().zip(seqs).zip(kinds) {
                            pending.push_back(
                                Event::default().event(kind).id(seq.to_string()).data(row),
                            );
                            after = Some(seq);
                        }
                    }
                    Ok(Ok(_)) => tokio::time::sleep(STREAM_POLL).await,
                    Ok(Err(e)) => {
                        done = true;
                        // The query may have been dropped while its page was read.
                        let ev = if app.query(&name).is_err() {
                            Event::default().event("dropped").data(name.clone())
                        } else {
                            Event::default().event("error").data(e.to_string())
                        };
                        pending.push_back(ev);
                    }
                    Err(_) => return None,
                }
            }
        },
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// `ok`, or `degraded` naming each query whose broker is unreachable,
/// that waits for the store or that has failed.
async fn healthz(State(app): State<Arc<App>>) -> axum::Json<Value> {
    let mut problems = serde_json::Map::new();
    for q in app.queries() {
        match q.status() {
            crate::model::QueryStatus::BrokerUnreachable(since) => {
                problems.insert(
                    q.name.clone(),
                    json!(format!("broker unreachable since {since}")),
                );
            }
            crate::model::QueryStatus::Failed(e) => {
                problems.insert(q.name.clone(), json!(format!("failed: {e}")));
            }
            crate::model::QueryStatus::WaitingForStore(e) => {
                problems.insert(q.name.clone(), json!(format!("waiting for the store: {e}")));
            }
            _ => {}
        }
    }
    match problems.is_empty() {
        true => axum::Json(json!({"status": "ok"})),
        false => axum::Json(json!({"status": "degraded", "queries": problems})),
    }
}
/// `GET /queries/{id}/events`: `{"query", "events": [...]}`, oldest first.
async fn query_events(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<axum::Json<serde_json::Value>, crate::error::Error> {
    let q = app.query(&id)?;
    let events = q.metrics.events.list();
    Ok(axum::Json(
        serde_json::json!({"query": q.name, "kept": crate::runtime::events::KEPT, "events": events}),
    ))
}
