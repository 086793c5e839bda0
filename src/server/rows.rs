//! The `after=` cursor of results pages and server-sent events (the rows
//! themselves are written by [`super::encode`]).
//!
//! A cursor is a row's sequence in its results table. `after=N` must be a
//! cursor the query has issued (at most its newest), so a client holding a
//! cursor from elsewhere hears of it instead of silently missing rows;
//! `after=now` starts after the newest row. `final=true` leaves out the
//! provisional rows of open windows (queries with `EMIT EVERY`). A row late
//! records revised is an `update` event rather than a `row` one.

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;

use super::App;
use crate::error::{Error, Result};
use crate::model::emission::REVISION;

/// Each row's server-sent event: `update` for a row that late records
/// revised (`revision` > 0, `ALLOW LATE`), else `row`.
pub(super) fn event_kinds(batch: &RecordBatch) -> Vec<&'static str> {
    let revised = batch
        .column_by_name(REVISION)
        .and_then(|c| c.as_primitive_opt::<Int64Type>());
    (0..batch.num_rows())
        .map(|i| match revised {
            Some(r) if r.is_valid(i) && r.value(i) > 0 => "update",
            _ => "row",
        })
        .collect()
}

/// The `final=` parameter: whether to leave out provisional rows.
pub(super) fn final_only(param: Option<&str>) -> Result<bool> {
    match param.map(str::trim) {
        None | Some("") | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(Error::BadRequest(format!(
            "final must be true or false, not '{v}'"
        ))),
    }
}

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
