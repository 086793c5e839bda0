//! Checkpoints of a window engine: its open windows' partial states (Arrow
//! IPC), each partition's event-time maximum, the lateness frontier, the
//! closed sessions a record could still touch, the closed windows late
//! records may still correct (`ALLOW LATE`) and the query's counters,
//! behind a length and an XxHash64, so a damaged or truncated checkpoint
//! fails the query with a message instead of restoring the wrong state.

use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use serde::{Deserialize, Serialize};
use std::sync::atomic::AtomicU64;
use twox_hash::XxHash64;

use super::*;

#[derive(Serialize, Deserialize)]
pub(super) struct CheckpointHeader {
    version: u32,
    partition_max: Vec<(i32, i64)>,
    closed_wm: i64,
    /// Length and XxHash64 of the partial states that follow (version 2):
    /// an IPC stream cut between two batches still reads, so only these
    /// tell a truncated or damaged checkpoint from a whole one.
    #[serde(default)]
    states: Option<(usize, u64)>,
    /// Length of the closed sessions' IPC stream at the end of the states.
    #[serde(default)]
    closed_sessions: Option<usize>,
    /// The query's counters, so a restart carries them on.
    #[serde(default)]
    counters: Option<SavedCounters>,
    /// Open windows (end, start) changed since their last provisional rows
    /// (`EMIT EVERY`), so a restart emits what an uninterrupted run would.
    #[serde(default)]
    changed: Vec<(i64, i64)>,
    /// Sessions changed since their last provisional rows (`EMIT EVERY`).
    #[serde(default)]
    sessions_changed: bool,
    /// Closed windows kept for corrections, (end, start, revision), and the
    /// length of their states' IPC stream, which follows the open windows'.
    #[serde(default)]
    retained: Vec<(i64, i64, i64)>,
    #[serde(default)]
    retained_len: Option<usize>,
}

/// [`Counters`] as saved in a checkpoint.
#[derive(Serialize, Deserialize)]
pub struct SavedCounters {
    records_in: u64,
    late_records: u64,
    bad_records: u64,
    records_skipped: u64,
    windows_closed: u64,
    rows_emitted: u64,
    /// Watermark and last closed window's end, so a restarted query still
    /// tells which roll-up buckets are complete before its first poll.
    #[serde(default = "unset")]
    watermark: i64,
    #[serde(default = "unset")]
    last_window_end: i64,
}

pub(super) fn unset() -> i64 {
    i64::MIN
}

impl Counters {
    /// The counters as they stand, to be put back with [`Counters::put_back`].
    pub fn snapshot(&self) -> SavedCounters {
        self.save()
    }

    /// Sets the counters to `saved` (the watermarks only move forward).
    pub fn put_back(&self, saved: &SavedCounters) {
        self.load(saved)
    }

    fn save(&self) -> SavedCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SavedCounters {
            records_in: get(&self.records_in),
            late_records: get(&self.late_records),
            bad_records: get(&self.bad_records),
            records_skipped: get(&self.records_skipped),
            windows_closed: get(&self.windows_closed),
            rows_emitted: get(&self.rows_emitted),
            watermark: self.watermark.load(Ordering::Relaxed),
            last_window_end: self.last_window_end.load(Ordering::Relaxed),
        }
    }

    fn load(&self, saved: &SavedCounters) {
        let set = |c: &AtomicU64, v: u64| c.store(v, Ordering::Relaxed);
        set(&self.records_in, saved.records_in);
        set(&self.late_records, saved.late_records);
        set(&self.bad_records, saved.bad_records);
        set(&self.records_skipped, saved.records_skipped);
        set(&self.windows_closed, saved.windows_closed);
        set(&self.rows_emitted, saved.rows_emitted);
        self.watermark.fetch_max(saved.watermark, Ordering::Relaxed);
        self.last_window_end
            .fetch_max(saved.last_window_end, Ordering::Relaxed);
    }
}

/// Seed of the checkpoint checksum.
pub(super) const CHECKSUM_SEED: u64 = 0x72756e6e;

impl WindowEngine {
    /// Serialises the open windows (settled first), watermarks and
    /// lateness frontier.
    pub async fn checkpoint(&mut self) -> Result<Vec<u8>> {
        self.settle().await?;
        self.checkpoint_with(true)
    }

    /// The checkpoint without any window's partial states, which are saved
    /// as pieces apart ([`super::delta`]).
    pub(super) fn checkpoint_header(&self) -> Result<Vec<u8>> {
        self.checkpoint_with(false)
    }

    pub(super) fn checkpoint_with(&self, with_states: bool) -> Result<Vec<u8>> {
        let mut states = Vec::new();
        let batches = self
            .windows
            .values()
            .flat_map(|w| &w.batches)
            .filter(|_| with_states);
        let sessions = self.sessions.iter().flat_map(Sessions::batches);
        write_ipc(
            &mut states,
            &self.plan.state_schema,
            batches.chain(sessions),
        )?;
        let mut retained_len = None;
        if with_states && !self.retained.is_empty() {
            let at = states.len();
            let kept = self.retained.values().map(|r| &r.state);
            write_ipc(&mut states, &self.plan.state_schema, kept)?;
            retained_len = Some(states.len() - at);
        }
        // Closed sessions a record could still touch follow the states.
        let mut closed_sessions = None;
        if let Some(s) = &self.sessions {
            let at = states.len();
            write_ipc(&mut states, &s.closed_schema(), [&s.closed_batch()?])?;
            closed_sessions = Some(states.len() - at);
        }
        let header = CheckpointHeader {
            version: 2,
            partition_max: self.clock.maxima().into_iter().collect(),
            closed_wm: self.closed_wm,
            states: Some((states.len(), XxHash64::oneshot(CHECKSUM_SEED, &states))),
            closed_sessions,
            counters: Some(self.counters.save()),
            changed: self.changed.iter().copied().collect(),
            sessions_changed: self.sessions.as_ref().is_some_and(|s| s.changed),
            retained: self
                .retained
                .iter()
                .map(|(&(end, start), r)| (end, start, r.revision))
                .collect(),
            retained_len,
        };
        let header = serde_json::to_vec(&header).map_err(|e| Error::Execution(e.to_string()))?;
        let mut out = (header.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&header);
        out.extend_from_slice(&states);
        Ok(out)
    }

    /// Restores a [`checkpoint`](Self::checkpoint) taken by an engine of the same plan.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<()> {
        let bad = |m: &str| {
            Error::Execution(format!(
                "the saved checkpoint is corrupt or does not match the query: {m}"
            ))
        };
        let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
            return Err(bad("too short"));
        };
        let hl = u32::from_le_bytes(*len) as usize;
        if hl > rest.len() {
            return Err(bad("truncated"));
        }
        let (header, states) = rest.split_at(hl);
        let header: CheckpointHeader =
            serde_json::from_slice(header).map_err(|e| bad(&e.to_string()))?;
        if let Some((len, hash)) = header.states
            && (states.len() != len || XxHash64::oneshot(CHECKSUM_SEED, states) != hash)
        {
            return Err(bad("its partial states are truncated or damaged"));
        }
        let closed_len = header.closed_sessions.unwrap_or(0);
        if closed_len > states.len() {
            return Err(bad("truncated"));
        }
        let (states, closed) = states.split_at(states.len() - closed_len);
        let retained_len = header.retained_len.unwrap_or(0);
        if retained_len > states.len() {
            return Err(bad("truncated"));
        }
        let (states, retained) = states.split_at(states.len() - retained_len);
        // Arrow's IPC reader trusts lengths inside the bytes; a damaged
        // checkpoint must fail the query with a message, not panic.
        let read = |schema: SchemaRef, bytes: &[u8]| {
            std::panic::catch_unwind(|| read_ipc(&schema, bytes))
                .map_err(|_| bad("unreadable partial states"))?
                .map_err(|e| bad(&e.to_string()))?
                .ok_or_else(|| bad("state schema differs"))
        };
        let states = read(self.plan.state_schema.clone(), states)?;
        self.clock.reset(header.partition_max.into_iter().collect());
        self.closed_wm = header.closed_wm;
        if let Some(c) = &header.counters {
            self.counters.load(c);
        }
        self.windows.clear();
        self.changed = header.changed.into_iter().collect();
        self.retained.clear();
        // Saved as pieces: their states follow (`WindowEngine::restore_saved`).
        if retained_len == 0 {
            for &(end, start, revision) in &header.retained {
                let state = RecordBatch::new_empty(self.plan.state_schema.clone());
                self.retained
                    .insert((end, start), Retained { state, revision });
            }
        }
        if retained_len > 0 {
            let kept = read(self.plan.state_schema.clone(), retained)?;
            let mut by_window: BTreeMap<(i64, i64), Vec<RecordBatch>> = BTreeMap::new();
            for b in kept {
                for (key, part) in split_by_window(&b)? {
                    by_window.entry(key).or_default().push(part);
                }
            }
            for (end, start, revision) in header.retained {
                let parts = by_window.remove(&(end, start)).unwrap_or_default();
                let state = concat_batches(&self.plan.state_schema, &parts)?;
                self.retained
                    .insert((end, start), Retained { state, revision });
            }
        }
        if let Some(s) = &mut self.sessions {
            let closed = match closed.is_empty() {
                true => vec![],
                false => read(s.closed_schema(), closed)?,
            };
            s.restore(&self.plan, states, closed)?;
            s.changed = header.sessions_changed;
        } else {
            self.add_states_sync(states)?;
        }
        if let Some(w) = self.watermark() {
            self.counters.watermark.store(w, Ordering::Relaxed);
        }
        Ok(())
    }

    pub(super) fn add_states_sync(&mut self, states: Vec<RecordBatch>) -> Result<()> {
        for s in states {
            for (key, part) in split_by_window(&s)? {
                self.windows.entry(key).or_default().push(part);
            }
        }
        self.dirty = !self.windows.is_empty();
        Ok(())
    }
}

/// Appends `batches` to `out` as one Arrow IPC stream.
pub(super) fn write_ipc<'a>(
    out: &mut Vec<u8>,
    schema: &SchemaRef,
    batches: impl IntoIterator<Item = &'a RecordBatch>,
) -> Result<()> {
    let mut w = StreamWriter::try_new(out, schema)?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    Ok(())
}

/// The batches of an Arrow IPC stream, or `None` when its schema is not
/// `schema`'s.
pub(super) fn read_ipc(schema: &SchemaRef, bytes: &[u8]) -> Result<Option<Vec<RecordBatch>>> {
    let reader = StreamReader::try_new(bytes, None)?;
    if reader.schema().fields() != schema.fields() {
        return Ok(None);
    }
    Ok(Some(reader.collect::<std::result::Result<_, _>>()?))
}

/// Partial states as Arrow IPC stream bytes (how they are stored).
pub fn states_to_ipc(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    write_ipc(&mut out, schema, batches)?;
    Ok(out)
}

/// Reads partial states written by [`states_to_ipc`], checking their schema.
pub fn states_from_ipc(schema: &SchemaRef, bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    read_ipc(schema, bytes)?.ok_or_else(|| {
        Error::Execution("stored partial state does not match the query's state schema".into())
    })
}
