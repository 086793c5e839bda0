//! The statements a commit runs, written once for both backends: an
//! emission's rows and the window states and deletes that go before them,
//! the changed pieces of window state, and the checkpoint row.
//!
//! ```text
//! emission of window [0, 10)  →  INSERT INTO runnel_window_states ... (roll-ups)
//!                                DELETE FROM "q" WHERE window_start = $1 AND window_end = $2
//!                                INSERT INTO "q" (...) VALUES ($1, ...), ($5, ...)
//! ```

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMillisecondType};

use super::backend::{Dialect, Param, Rows, Stmt};
use super::{WindowState, quote};
use crate::error::Result;
use crate::model::Emission;
use crate::window::delta::{StateOp, StatePiece};

/// The statements writing `emissions` into `query`'s results table, in
/// order: each emission's window state (for roll-ups), then its rows. A
/// closed window's rows replace earlier rows of that window; a cumulative
/// emission replaces the whole table.
pub(crate) fn emission_statements(query: &str, emissions: &[Emission]) -> Result<Vec<Stmt>> {
    let table = quote(query);
    let mut stmts = Vec::new();
    for e in emissions {
        replace_statements(query, &table, e, &mut stmts)?;
        if e.batch.num_rows() > 0 {
            insert_statements(&table, &e.batch, &mut stmts)?;
        }
    }
    Ok(stmts)
}

/// [`emission_statements`] for the final rows of distinct windows, each
/// emission naming its own: the windows' states and the deletes of rows
/// they replace, then every window's rows in one insert (a statement per
/// [`MAX_PARAMS`](super::backend::MAX_PARAMS) values instead of one per window).
pub(crate) fn final_window_statements(query: &str, emissions: &[Emission]) -> Result<Vec<Stmt>> {
    let table = quote(query);
    let mut stmts = Vec::new();
    for e in emissions {
        debug_assert!(e.window.is_some(), "a final window's emission names it");
        replace_statements(query, &table, e, &mut stmts)?;
    }
    if let Some(first) = emissions.first() {
        let all = concat_batches(&first.batch.schema(), emissions.iter().map(|e| &e.batch))?;
        if all.num_rows() > 0 {
            insert_statements(&table, &all, &mut stmts)?;
        }
    }
    Ok(stmts)
}

/// Appends what writing `e` into `table` (quoted) starts with: its window
/// state (for roll-ups), then the delete of the rows it replaces.
fn replace_statements(query: &str, table: &str, e: &Emission, stmts: &mut Vec<Stmt>) -> Result<()> {
    if let Some((start, end, state)) = window_state(e)? {
        stmts.push(Stmt::new(
            "INSERT INTO runnel_window_states (query, window_start, window_end, state)
                  VALUES ($1, $2, $3, $4)
                  ON CONFLICT (query, window_start, window_end) DO UPDATE SET state = excluded.state",
            vec![
                Param::Text(query.to_string()),
                Param::Int(start),
                Param::Int(end),
                Param::Blob(state),
            ],
        ));
    }
    if e.cumulative {
        stmts.push(Stmt::new(format!("DELETE FROM {table}"), vec![]));
    } else if e.open_sessions {
        let provisional = quote(crate::model::emission::FINAL);
        stmts.push(Stmt::new(
            format!("DELETE FROM {table} WHERE NOT {provisional}"),
            vec![],
        ));
    } else {
        for (s, en) in replaced_windows(e)? {
            stmts.push(Stmt::new(
                format!("DELETE FROM {table} WHERE window_start = $1 AND window_end = $2"),
                vec![Param::Ts(s), Param::Ts(en)],
            ));
        }
    }
    Ok(())
}

/// Appends the statement inserting `b`'s rows into `table` (quoted), its
/// columns named as `b`'s.
pub(crate) fn insert_statements(table: &str, b: &RecordBatch, stmts: &mut Vec<Stmt>) -> Result<()> {
    let names: Vec<String> = b
        .schema()
        .fields()
        .iter()
        .map(|f| quote(f.name()))
        .collect();
    stmts.push(Stmt::insert(
        format!("INSERT INTO {table} ({}) VALUES", names.join(", ")),
        Rows::new(b)?,
    ));
    Ok(())
}

/// The statements applying a save's changes to the stored pieces of window
/// state ([`crate::window::delta`]).
pub(crate) fn piece_statements(query: &str, ops: &[StateOp]) -> Vec<Stmt> {
    let q = || Param::Text(query.to_string());
    let remove = |(start, end): (i64, i64), kept: bool| {
        Stmt::new(
            "DELETE FROM runnel_state_pieces
              WHERE query = $1 AND window_end = $2 AND window_start = $3 AND kept = $4",
            vec![
                q(),
                Param::Int(end),
                Param::Int(start),
                Param::Int(kept.into()),
            ],
        )
    };
    let insert = |p: &StatePiece| {
        Stmt::new(
            "INSERT INTO runnel_state_pieces (query, window_start, window_end, kept, state)
              VALUES ($1, $2, $3, $4, $5)",
            vec![
                q(),
                Param::Int(p.window.0),
                Param::Int(p.window.1),
                Param::Int(p.kept.into()),
                Param::Blob(p.state.clone()),
            ],
        )
    };
    let mut out = Vec::new();
    for op in ops {
        match op {
            StateOp::Clear => out.push(Stmt::new(
                "DELETE FROM runnel_state_pieces WHERE query = $1",
                vec![q()],
            )),
            StateOp::Append(p) => out.push(insert(p)),
            StateOp::Replace(p) => {
                out.push(remove(p.window, p.kept));
                out.push(insert(p));
            }
            StateOp::Remove(w, kept) => out.push(remove(*w, *kept)),
        }
    }
    out
}

/// The statement saving `query`'s checkpoint.
pub(crate) fn checkpoint_statement(
    d: &Dialect,
    query: &str,
    offsets: String,
    state: &[u8],
) -> Stmt {
    Stmt::new(
        format!(
            "INSERT INTO runnel_checkpoints (query, offsets, state, updated_at)
             VALUES ($1, $2, $3, {now})
             ON CONFLICT (query) DO UPDATE SET offsets = excluded.offsets,
             state = excluded.state, updated_at = excluded.updated_at",
            now = d.now
        ),
        vec![
            Param::Text(query.to_string()),
            Param::Json(offsets),
            Param::Blob(state.to_vec()),
        ],
    )
}

/// The stored form of an emission's window state, if it has one.
fn window_state(e: &Emission) -> Result<Option<WindowState>> {
    let Some(state) = &e.state else {
        return Ok(None);
    };
    if state.num_rows() == 0 {
        return Ok(None);
    }
    let bound = |c: usize| -> Result<i64> {
        let v = cast(state.column(c), &DataType::Int64)?;
        Ok(v.as_primitive::<Int64Type>().value(0))
    };
    let bytes = crate::window::states_to_ipc(&state.schema(), std::slice::from_ref(state))?;
    Ok(Some((bound(0)?, bound(1)?, bytes)))
}

/// The windows a windowed emission replaces: its one window if it names it,
/// else each distinct (window_start, window_end) of its rows, in epoch ms,
/// in first-seen order.
fn replaced_windows(e: &Emission) -> Result<Vec<(i64, i64)>> {
    if let Some(w) = e.window {
        return Ok(vec![w]);
    }
    let batch = &e.batch;
    let ms = DataType::Timestamp(TimeUnit::Millisecond, None);
    let (starts, ends) = (cast(batch.column(0), &ms)?, cast(batch.column(1), &ms)?);
    let (starts, ends) = (
        starts.as_primitive::<TimestampMillisecondType>(),
        ends.as_primitive::<TimestampMillisecondType>(),
    );
    let mut seen = std::collections::HashSet::new();
    Ok((0..batch.num_rows())
        .map(|i| (starts.value(i), ends.value(i)))
        .filter(|k| seen.insert(*k))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch};

    use crate::store::backend::{Param, Stmt};

    /// Final rows of several windows: each window's delete of the rows it
    /// replaces, by its own bounds, then one insert holding every window's
    /// rows in the windows' order (a window without rows deletes only).
    #[test]
    fn final_windows_replace_each_window_then_insert_all_rows_once() {
        use datafusion::arrow::array::{StringArray, TimestampMillisecondArray};
        use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

        use super::final_window_statements;
        use crate::model::Emission;

        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        let schema = Arc::new(Schema::new(vec![
            Field::new("window_start", ts.clone(), false),
            Field::new("window_end", ts, false),
            Field::new("geo", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let window = |start: i64, geos: &[&str]| {
            let k = geos.len();
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(TimestampMillisecondArray::from(vec![start; k])),
                    Arc::new(TimestampMillisecondArray::from(vec![start + 10; k])),
                    Arc::new(StringArray::from(geos.to_vec())),
                    Arc::new(Int64Array::from_iter_values(
                        (0..k as i64).map(|i| start + i),
                    )),
                ],
            )
            .unwrap();
            Emission {
                batch,
                cumulative: false,
                state: None,
                window: Some((start, start + 10)),
                open_sessions: false,
            }
        };
        let emissions = [
            window(0, &["FR", "US"]),
            window(10, &[]),
            window(20, &["DE", "FR", "US"]),
        ];
        let stmts = final_window_statements("q", &emissions).unwrap();
        let parts: Vec<_> = stmts.iter().flat_map(Stmt::expanded).collect();
        assert_eq!(parts.len(), 4, "three deletes, one insert");
        for (part, start) in parts.iter().zip([0, 10, 20]) {
            assert_eq!(
                part.0,
                "DELETE FROM \"q\" WHERE window_start = $1 AND window_end = $2"
            );
            assert!(
                matches!(part.1[..], [Param::Ts(s), Param::Ts(e)] if s == start && e == start + 10)
            );
        }
        let (sql, params) = &parts[3];
        assert!(sql.starts_with(
            "INSERT INTO \"q\" (\"window_start\", \"window_end\", \"geo\", \"n\") VALUES"
        ));
        let rows: Vec<(i64, String, i64)> = params
            .chunks(4)
            .map(|r| match r {
                [Param::Ts(s), Param::Ts(_), Param::Text(g), Param::Int(n)] => (*s, g.clone(), *n),
                other => panic!("{other:?}"),
            })
            .collect();
        let want = [
            (0, "FR", 0),
            (0, "US", 1),
            (20, "DE", 20),
            (20, "FR", 21),
            (20, "US", 22),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(s, g, n)| (*s, g.to_string(), *n))
            .collect();
        assert_eq!(rows, want);
    }
}
