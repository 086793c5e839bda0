//! Incremental checkpoints: what changed in the engine's state since the
//! last commit, as operations on the store's pieces of window state.
//!
//! A commit used to write every open window's partial states, so its cost
//! grew with the number of open groups rather than with what changed. Now
//! the store keeps each window's state as pieces: each commit appends, per
//! window that took records, the partial states of just those records
//! (merged to one row per changed group), and partial states merge, so the
//! pieces of a window together restore it. Once the pieces appended after
//! a window's first would outweigh it (or number [`MAX_PIECES`]), the
//! window's merged state replaces them, so a commit writes at most about
//! twice what changed, amortized, and the store holds at most about twice
//! the state; a window that closes is removed (or,
//! with `ALLOW LATE`, kept as a closed window's state). The rest of the
//! checkpoint (watermarks, counters, ...) is a small header written whole.
//! Sessions, whose states are relabelled as they grow, save everything.
//!
//! ```no_run
//! # async fn f(mut engine: runnel::window::WindowEngine) -> runnel::error::Result<()> {
//! engine.save_incrementally();
//! // ... records processed ...
//! let saved = engine.save().await?;
//! println!("{} bytes to write", saved.bytes());
//! # Ok(()) }
//! ```

use super::*;

/// Pieces a window's stored state may have before its merged state replaces
/// them: restoring merges at most this many per window.
pub const MAX_PIECES: usize = 64;

impl Stored {
    /// Notes a piece of `bytes` written after the others.
    fn note(&mut self, bytes: usize) {
        match self.pieces {
            0 => self.merged = bytes,
            _ => self.appended += bytes,
        }
        self.pieces += 1;
    }
}

/// A piece of window state: the window (start, end), whether it is a
/// closed window kept for `ALLOW LATE` corrections, and its partial states
/// as Arrow IPC.
#[derive(Debug, Clone, PartialEq)]
pub struct StatePiece {
    /// Window start and end, epoch ms.
    pub window: (i64, i64),
    /// A closed window kept for corrections rather than an open one.
    pub kept: bool,
    /// Partial states, Arrow IPC stream bytes.
    pub state: Vec<u8>,
}

/// A change to the stored pieces of a query's window state.
#[derive(Debug, Clone, PartialEq)]
pub enum StateOp {
    /// Forget every stored piece.
    Clear,
    /// Store one more piece.
    Append(StatePiece),
    /// Forget the pieces of a window (open or kept) and store this one.
    Replace(StatePiece),
    /// Forget the pieces of a window: (start, end), kept.
    Remove((i64, i64), bool),
}

/// What a commit saves of the engine: the checkpoint header (with every
/// state in it when `ops` starts with [`StateOp::Clear`] and the engine
/// does not save incrementally) and the changes to the stored pieces.
#[derive(Debug, Clone, Default)]
pub struct Saved {
    /// The checkpoint blob: header, watermarks, counters.
    pub header: Vec<u8>,
    /// Changes to the stored pieces, in order.
    pub ops: Vec<StateOp>,
}

impl Saved {
    /// Nothing saved: every piece forgotten and no header (a query reset).
    pub fn cleared() -> Self {
        Saved {
            header: Vec::new(),
            ops: vec![StateOp::Clear],
        }
    }

    /// Bytes this save writes: the header and the pieces.
    pub fn bytes(&self) -> usize {
        let pieces: usize = self
            .ops
            .iter()
            .map(|op| match op {
                StateOp::Append(p) | StateOp::Replace(p) => p.state.len(),
                _ => 0,
            })
            .sum();
        self.header.len() + pieces
    }
}

fn piece(
    plan: &ContinuousPlan,
    key: (i64, i64),
    kept: bool,
    b: &[RecordBatch],
) -> Result<StatePiece> {
    Ok(StatePiece {
        window: (key.1, key.0),
        kept,
        state: states_to_ipc(&plan.state_schema, b)?,
    })
}

impl WindowEngine {
    /// Saves state incrementally: [`save`](Self::save) then returns only
    /// what changed since the last save. Sessions always save everything.
    pub fn save_incrementally(&mut self) {
        self.incremental = self.sessions.is_none();
    }

    /// Whether changes to the stored pieces are being noted: saving
    /// incrementally, and the next save is not writing everything anyway.
    pub(super) fn noting_pieces(&self) -> bool {
        self.incremental && self.state_ops.is_some()
    }

    /// Notes that window `[start, end)` closed: its open pieces go, and with
    /// `ALLOW LATE` its merged `kept` state replaces any kept before.
    pub(super) fn note_closed(
        &mut self,
        start: i64,
        end: i64,
        kept: Option<&RecordBatch>,
    ) -> Result<()> {
        if !self.noting_pieces() {
            return Ok(());
        }
        let mut ops = vec![StateOp::Remove((start, end), false)];
        if let Some(k) = kept {
            let p = piece(&self.plan, (end, start), true, std::slice::from_ref(k))?;
            ops.push(StateOp::Replace(p));
        }
        self.state_ops.as_mut().expect("noting").extend(ops);
        Ok(())
    }

    /// Notes that a kept closed window `[start, end)` can no longer be corrected.
    pub(super) fn note_expired(&mut self, start: i64, end: i64) {
        if self.noting_pieces() {
            let ops = self.state_ops.as_mut().expect("noting");
            ops.push(StateOp::Remove((start, end), true));
        }
    }

    /// What a commit saves now: the checkpoint header and, when saving
    /// incrementally, the pieces that changed since the last save; else the
    /// whole state in the header.
    pub async fn save(&mut self) -> Result<Saved> {
        self.settle().await?;
        if !self.incremental {
            return Ok(Saved {
                header: self.checkpoint_with(true)?,
                ops: vec![StateOp::Clear],
            });
        }
        let ops = match self.state_ops.take() {
            Some(ops) => self.changed_pieces(ops).await?,
            None => self.all_pieces().await?,
        };
        self.state_ops = Some(Vec::new());
        Ok(Saved {
            header: self.checkpoint_header()?,
            ops,
        })
    }

    /// `ops`, then a piece for each window that took records since the
    /// last save: those records' states, or the window's merged state once
    /// the pieces appended would outweigh it or number [`MAX_PIECES`].
    async fn changed_pieces(&mut self, mut ops: Vec<StateOp>) -> Result<Vec<StateOp>> {
        let plan = self.plan.clone();
        for (&key, buf) in self.windows.iter_mut() {
            if buf.fresh().is_empty() {
                continue;
            }
            buf.merge_fresh(&plan).await?;
            let delta = piece(&plan, key, false, buf.fresh())?;
            buf.mark_saved();
            let s = &mut buf.stored;
            // Rewriting the window once its appended pieces reach its size
            // bounds both the store (at most twice the state) and the
            // bytes per commit (at most twice what changed, amortized).
            if s.pieces > 0 && (s.pieces >= MAX_PIECES || s.appended + delta.state.len() > s.merged)
            {
                if buf.batches.len() > 1 {
                    compact(&plan, buf).await?;
                }
                buf.mark_saved();
                let merged = piece(&plan, key, false, &buf.batches)?;
                buf.stored = Stored {
                    pieces: 1,
                    merged: merged.state.len(),
                    appended: 0,
                };
                ops.push(StateOp::Replace(merged));
                continue;
            }
            s.note(delta.state.len());
            ops.push(StateOp::Append(delta));
        }
        Ok(ops)
    }

    /// Every window's merged state, replacing whatever was stored.
    async fn all_pieces(&mut self) -> Result<Vec<StateOp>> {
        let plan = self.plan.clone();
        let mut ops = vec![StateOp::Clear];
        for (&key, buf) in self.windows.iter_mut() {
            if buf.batches.len() > 1 {
                compact(&plan, buf).await?;
            }
            buf.mark_saved();
            let p = piece(&plan, key, false, &buf.batches)?;
            buf.stored = Stored::default();
            buf.stored.note(p.state.len());
            ops.push(StateOp::Append(p));
        }
        for (&key, r) in &self.retained {
            let state = std::slice::from_ref(&r.state);
            ops.push(StateOp::Append(piece(&plan, key, true, state)?));
        }
        Ok(ops)
    }

    /// Restores a checkpoint saved by [`save`](Self::save): its header, then
    /// the stored pieces in the order they were written.
    pub fn restore_saved(&mut self, header: &[u8], pieces: Vec<StatePiece>) -> Result<()> {
        self.restore(header)?;
        if pieces.is_empty() {
            // An older checkpoint, with its states in the header: the next
            // save writes them all as pieces.
            self.state_ops = None;
            return Ok(());
        }
        for p in pieces {
            let states = states_from_ipc(&self.plan.state_schema, &p.state)?;
            let key = (p.window.1, p.window.0);
            if p.kept {
                let state = concat_batches(&self.plan.state_schema, &states)?;
                let revision = self.retained.get(&key).map_or(0, |r| r.revision);
                self.retained.insert(key, Retained { state, revision });
                continue;
            }
            let buf = self.windows.entry(key).or_default();
            for s in states {
                buf.push(s);
            }
            buf.stored.note(p.state.len());
            buf.mark_saved();
        }
        // An open piece of a kept window: a correction not yet closed.
        self.corrections = self.windows.keys().any(|k| self.retained.contains_key(k));
        self.dirty = !self.windows.is_empty();
        self.state_ops = Some(Vec::new());
        Ok(())
    }
}
