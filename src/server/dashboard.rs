//! The dashboard at `GET /`: one page, its scripts (`app.js`; `panels.js`
//! for the selected query's commit time, partitions, plan and events) and
//! stylesheet embedded in the binary, reading the HTTP API (`/streams`,
//! `/queries`, `/queries/{id}/events`, the results stream, `/sql`),
//! `GET /dashboard/history` for its charts and
//! `GET /dashboard/latest/{query}` for the newest windows when a query is
//! opened (the results stream then goes on from their cursor).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use serde_json::json;

use super::App;
use crate::error::Error;
use crate::store::{ResultFilter, Store};

/// Rows `GET /dashboard/latest/{query}` returns at most: enough for the
/// page's table and its chart of the last windows.
const LATEST_ROWS: usize = 5000;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const PANELS: &str = include_str!("assets/panels.js");
const STYLE: &str = include_str!("assets/app.css");
const ICON: &str = include_str!("assets/favicon.svg");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Routes of the dashboard and its assets.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/assets/panels.js",
            get(|| async { asset("text/javascript; charset=utf-8", PANELS) }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/favicon.svg",
            get(|| async { asset("image/svg+xml", ICON) }),
        )
        .route("/dashboard/history", get(history))
        .route("/dashboard/latest/{id}", get(latest))
}

async fn history(State(app): State<Arc<App>>) -> Response {
    axum::Json(app.metrics.history.json()).into_response()
}

/// The newest result rows of a query, whole windows only, oldest first, with
/// the cursor of the newest row: `{"columns", "rows", "cursor"}`.
async fn latest(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Response, Error> {
    let q = app.query(&id)?;
    let (store, name) = (app.store.clone(), q.name.clone());
    let schema = q.plan.output_schema.clone();
    let page = tokio::task::spawn_blocking(move || newest_rows(&store, &name, &schema))
        .await
        .map_err(|e| Error::Execution(e.to_string()))??;
    Ok(super::render::json_response(page))
}

fn newest_rows(
    store: &Store,
    name: &str,
    schema: &datafusion::arrow::datatypes::Schema,
) -> crate::error::Result<Vec<u8>> {
    use crate::format::encode::{json, json_body, json_rows};
    let Some(newest) = store.newest_cursor(name)? else {
        return Ok(json(&json!({"columns": [], "rows": [], "cursor": ""})));
    };
    let filter = ResultFilter {
        after: Some(newest.saturating_sub(LATEST_ROWS as i64)),
        limit: LATEST_ROWS,
        ..Default::default()
    };
    let page = store.read_results(name, schema, &filter)?;
    // A full page may start in the middle of a window: leave that one out.
    let mut batch = page.batch;
    if batch.num_rows() >= LATEST_ROWS
        && let Some(starts) = batch.column_by_name("window_start").cloned()
        && starts.is_valid(0)
    {
        let first = starts.slice(0, 1);
        let first = datafusion::arrow::array::Scalar::new(first);
        let other = datafusion::arrow::compute::kernels::cmp::distinct(&starts, &first)?;
        if other.true_count() > 0 {
            batch = datafusion::arrow::compute::filter_record_batch(&batch, &other)?;
        }
    }
    let columns: Vec<&String> = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name())
        .collect();
    Ok(json_body(&[
        ("columns", &json(&columns)),
        ("rows", &json_rows(std::slice::from_ref(&batch), true)?),
        ("cursor", &json(&newest.to_string())),
    ]))
}
