//! A query's saved progress: the checkpoint (the offsets consumed and the
//! engine's header), the pieces of its open windows' state, written in the
//! transaction of the rows they account for ([`Store::commit`]), and the
//! closed windows' states kept for roll-ups, pruned past their retention.
//!
//! ```text
//! commit ── closed windows' states (roll-ups) ── runnel_window_states
//!        ├─ their rows ───────────────────────── "q"
//!        ├─ changed pieces of open windows ───── runnel_state_pieces
//!        └─ offsets + header ─────────────────── runnel_checkpoints
//! ```

use std::collections::BTreeMap;

use super::backend::{Param, Value};
use super::{Store, int, text};
use crate::error::{Error, Result};
use crate::model::Emission;
use crate::window::delta::{Saved, StatePiece};

/// A closed window's partial states as stored for roll-ups:
/// (window start, window end, Arrow IPC bytes).
pub type WindowState = (i64, i64, Vec<u8>);

/// A saved checkpoint: the next offset per partition and the engine state.
pub type Checkpoint = (BTreeMap<i32, i64>, Vec<u8>);

/// The bytes of a stored value that is a blob (a state); none otherwise.
fn blob(v: Option<Value>) -> Vec<u8> {
    match v {
        Some(Value::Blob(b)) => b,
        _ => Vec::new(),
    }
}

impl Store {
    /// Writes emitted rows, the offsets consumed so far and what changed in
    /// the engine's state, atomically. A closed window's rows replace any
    /// earlier rows of the same window; a cumulative emission replaces the
    /// whole table.
    pub fn commit(
        &self,
        query: &str,
        emissions: &[Emission],
        offsets: &BTreeMap<i32, i64>,
        saved: &Saved,
    ) -> Result<()> {
        self.commit_with_late(query, emissions, &[], offsets, saved)
    }

    /// Whether the store takes writes: a write transaction that changes
    /// nothing (it still needs SQLite's write lock and a live PostgreSQL
    /// connection).
    pub fn probe_write(&self) -> Result<()> {
        self.write(|tx| {
            tx.execute("DELETE FROM runnel_checkpoints WHERE 1 = 0", &[])
                .map(drop)
        })
    }

    /// Forgets a query's saved offsets and state.
    pub fn delete_checkpoint(&self, query: &str) -> Result<()> {
        let params = [Param::Text(query.into())];
        self.write(|tx| {
            tx.execute("DELETE FROM runnel_checkpoints WHERE query = $1", &params)?;
            tx.execute("DELETE FROM runnel_state_pieces WHERE query = $1", &params)
                .map(drop)
        })
    }

    /// The stored pieces of a query's window state, in the order written.
    pub fn load_state_pieces(&self, query: &str) -> Result<Vec<StatePiece>> {
        let params = [Param::Text(query.into())];
        let (_, rows) = self.read(|tx| {
            tx.query(
                "SELECT window_start, window_end, kept, state FROM runnel_state_pieces
                 WHERE query = $1 ORDER BY seq",
                &params,
            )
        })?;
        Ok(rows
            .into_iter()
            .map(|mut r| {
                let state = blob(r.pop());
                let n = |i: usize| int(&r[i]).unwrap_or(0);
                StatePiece {
                    window: (n(0), n(1)),
                    kept: n(2) != 0,
                    state,
                }
            })
            .collect())
    }

    /// The last checkpoint of a query: next offsets per partition and the state blob.
    pub fn load_checkpoint(&self, query: &str) -> Result<Option<Checkpoint>> {
        let params = [Param::Text(query.into())];
        let (_, rows) = self.read(|tx| {
            tx.query(
                "SELECT offsets, state FROM runnel_checkpoints WHERE query = $1",
                &params,
            )
        })?;
        let Some(mut row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let state = blob(row.pop());
        let offsets = serde_json::from_str(text(&row[0]).unwrap_or_default())
            .map_err(|e| Error::Execution(format!("corrupt checkpoint offsets: {e}")))?;
        Ok(Some((offsets, state)))
    }

    /// Stored window states of `query` whose window starts in `[from, to)`
    /// (epoch ms), oldest first.
    pub fn load_window_states(
        &self,
        query: &str,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<Vec<WindowState>> {
        let params = [
            Param::Text(query.into()),
            Param::Int(from.unwrap_or(i64::MIN)),
            Param::Int(to.unwrap_or(i64::MAX)),
        ];
        let (_, rows) = self.read(|tx| {
            tx.query(
                "SELECT window_start, window_end, state FROM runnel_window_states
                 WHERE query = $1 AND window_start >= $2 AND window_start < $3
                 ORDER BY window_start, window_end",
                &params,
            )
        })?;
        Ok(rows
            .into_iter()
            .map(|mut r| {
                let state = blob(r.pop());
                (int(&r[0]).unwrap_or(0), int(&r[1]).unwrap_or(0), state)
            })
            .collect())
    }

    /// The latest end among `query`'s stored window states: windows close
    /// in end order, so every window ending by then has closed.
    pub fn newest_window_state_end(&self, query: &str) -> Result<Option<i64>> {
        self.scalar(
            "SELECT MAX(window_end) FROM runnel_window_states WHERE query = $1",
            &[Param::Text(query.into())],
        )
    }

    /// Deletes the stored window states of `query` that ended before `before`.
    pub fn prune_window_states(&self, query: &str, before: i64) -> Result<usize> {
        let params = [Param::Text(query.into()), Param::Int(before)];
        self.write(|tx| {
            tx.execute(
                "DELETE FROM runnel_window_states WHERE query = $1 AND window_end < $2",
                &params,
            )
        })
        .map(|n| n as usize)
    }
}
