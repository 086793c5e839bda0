//! Decoding a query's polled records: each partition's chunk of raw
//! messages becomes one record batch of the columns the plan reads, with
//! bad records counted, sampled and dropped (or failing the query, as the
//! stream's `on_error` says) and event times checked before they can move
//! the watermark.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, TimestampMillisecondArray};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{
    DataType, Field, Int64Type, Schema, SchemaRef, TimestampMillisecondType,
};
use datafusion::arrow::record_batch::RecordBatch;

use super::events::Level;
use super::telemetry::QueryMetrics;
use super::{QueryTask, now_ms};
use crate::error::{Error, Result};
use crate::format::Decoder;
use crate::model::{Counters, OnError, StreamDef};
use crate::source::Chunk;
use crate::source::stats::StreamStats;
use crate::window::{Offsets, PartitionBatch};

/// A rejected record: (index, reason, detail).
pub type Rejected = (usize, &'static str, String);

/// Indices of the records not among the sorted indices `bad`.
fn good_indices(n: usize, bad: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut bad_iter = bad.peekable();
    (0..n)
        .filter(|i| {
            if bad_iter.peek() == Some(i) {
                bad_iter.next();
                false
            } else {
                true
            }
        })
        .collect()
}

/// How far before the wall clock an event time must be to be noted as most
/// likely in the wrong unit (20 years): seconds read as milliseconds land in
/// January 1970.
const DECADES_MS: i64 = 20 * 365 * 86_400_000;

/// Drops records whose event time is missing, before 1970, or further than
/// `max_future_ms` ahead of the wall clock, so they cannot poison the
/// watermark; returns the rest and (row, reason, detail) of each dropped one,
/// and of each kept one whose event time is decades old (a note: the likely
/// unit mistake).
pub fn check_event_time(
    batch: RecordBatch,
    column: usize,
    now_ms: i64,
    max_future_ms: i64,
) -> Result<(RecordBatch, Vec<Rejected>)> {
    let ts = cast(batch.column(column), &DataType::Int64)?;
    let ts = ts.as_primitive::<Int64Type>();
    let limit = now_ms.saturating_add(max_future_ms);
    let mut rejected = Vec::new();
    for i in 0..ts.len() {
        if ts.is_null(i) {
            rejected.push((
                i,
                "missing_event_time",
                "the event time column is missing or null".to_string(),
            ));
        } else if ts.value(i) < 0 {
            rejected.push((
                i,
                "before_epoch",
                format!("event time {} ms is before 1970", ts.value(i)),
            ));
        } else if ts.value(i) < now_ms.saturating_sub(DECADES_MS) {
            let when = chrono::DateTime::from_timestamp_millis(ts.value(i))
                .map_or_else(String::new, |t| t.to_rfc3339());
            rejected.push((
                i,
                crate::format::EVENT_TIME_DECADES_OLD,
                format!(
                    "event time {when} is decades before the wall clock: if the numbers are seconds (or microseconds), declare event_time_unit = 's' (or 'us')"
                ),
            ));
        } else if ts.value(i) > limit {
            rejected.push((
                i,
                "future_timestamp",
                format!(
                    "event time {} ms is more than max_future ahead of the wall clock",
                    ts.value(i)
                ),
            ));
        }
    }
    if rejected.iter().all(|r| crate::format::is_kept(r.1)) {
        return Ok((batch, rejected));
    }
    let mut keep = vec![true; batch.num_rows()];
    for (i, reason, _) in &rejected {
        keep[*i] = crate::format::is_kept(reason);
    }
    let batch = filter_record_batch(&batch, &BooleanArray::from(keep))?;
    Ok((batch, rejected))
}

/// `batch` with its event-time column, numbers in the stream's
/// `event_time_unit`, turned into millisecond timestamps of `schema`.
fn scale_event_time(
    batch: RecordBatch,
    schema: &SchemaRef,
    column: usize,
    (mul, div): (i64, i64),
) -> Result<RecordBatch> {
    let n = batch.column(column).as_primitive::<Int64Type>();
    let ms: TimestampMillisecondArray = n.unary_opt::<_, TimestampMillisecondType>(|v| {
        v.checked_mul(mul).map(|v| v.div_euclid(div))
    });
    let mut cols = batch.columns().to_vec();
    cols[column] = Arc::new(ms);
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

/// A record dropped, or kept with a note, while decoding.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Its offset in the partition.
    pub offset: i64,
    /// Why (see [`crate::format::is_kept`]).
    pub reason: &'static str,
    /// What exactly.
    pub detail: String,
    /// Its first 200 bytes, for the query's events.
    sample: String,
}

/// One chunk decoded for every query that reads it: its good records and
/// what was dropped or noted. Counting and sampling those is each query's
/// own ([`QueryNotes`]).
#[derive(Debug)]
pub struct DecodedChunk {
    /// The chunk's partition.
    pub partition: i32,
    /// The offset after its last record.
    pub end: i64,
    /// Its good records, if any.
    pub batch: Option<PartitionBatch>,
    /// Its rejected and noted records, in order.
    pub rejected: Vec<Rejection>,
}

/// Decodes a stream's chunks into record batches of the columns asked for
/// (and the event time), checking event times. Owns what it needs, so it
/// can run on a reader thread (see [`crate::source::prefetch::Prefetch`]
/// and [`super::shared`]).
pub struct StreamDecoder {
    decoder: Decoder,
    /// The stream's schema, when the decoder's differs: an event time in
    /// seconds or microseconds is decoded as a number, then scaled.
    scaled: Option<(SchemaRef, (i64, i64))>,
    /// Index of the event-time column, if the stream has one.
    pub event_time: Option<usize>,
    columns: Vec<usize>,
    max_future_ms: i64,
    stats: Arc<StreamStats>,
}

impl StreamDecoder {
    /// A decoder for `stream` that materialises only `columns` (and the
    /// event time); the others come back all NULL.
    pub fn new(stream: &StreamDef, stats: Arc<StreamStats>, columns: &[usize]) -> Result<Self> {
        let schema = Arc::new(Schema::new(stream.fields()));
        let event_time = stream.event_time_index();
        let mut read = columns.to_vec();
        read.extend(event_time);
        read.sort_unstable();
        read.dedup();
        let (decode_schema, scaled) = match (stream.event_time_scale(), event_time) {
            (Some(scale), Some(c)) => {
                let mut fields: Vec<Field> =
                    schema.fields().iter().map(|f| f.as_ref().clone()).collect();
                fields[c] = Field::new(fields[c].name(), DataType::Int64, true);
                (Arc::new(Schema::new(fields)), Some((schema, scale)))
            }
            _ => (schema, None),
        };
        Ok(StreamDecoder {
            decoder: Decoder::with_projection(stream.format, decode_schema, &read)?,
            scaled,
            event_time,
            columns: columns.to_vec(),
            max_future_ms: stream.max_future_ms,
            stats,
        })
    }

    /// The columns asked for (the event time is decoded too).
    pub fn columns(&self) -> &[usize] {
        &self.columns
    }

    /// Decodes one chunk: its good records with an event time, if any,
    /// with their times in the log, and its rejected records.
    fn decode(&mut self, chunk: &Chunk, now: i64) -> Result<DecodedChunk> {
        let payloads = chunk.payloads();
        let (batch, decode_bad) = self.decoder.decode(&payloads);
        let batch = match (batch, &self.scaled, self.event_time) {
            (Some(b), Some((schema, scale)), Some(c)) => {
                Some(scale_event_time(b, schema, c, *scale)?)
            }
            (b, _, _) => b,
        };
        // Lost records and notes on kept ones, in record order.
        let mut rejected: Vec<Rejected> = decode_bad
            .into_iter()
            .map(|b| (b.index, b.reason, b.detail))
            .collect();
        let lost = |b: &&Rejected| !crate::format::is_kept(b.1);
        let batch = match (batch, self.event_time) {
            (Some(b), Some(c)) => {
                let lost_rows = rejected.iter().filter(lost).map(|b| b.0);
                let good = good_indices(payloads.len(), lost_rows);
                let (b, dropped) = check_event_time(b, c, now, self.max_future_ms)?;
                rejected.extend(dropped.into_iter().map(|(row, r, d)| (good[row], r, d)));
                rejected.sort_by_key(|b| b.0);
                // A record dropped for its event time keeps no note on how
                // it was used (an unknown field): it was not.
                let gone: Vec<usize> = rejected.iter().filter(lost).map(|b| b.0).collect();
                rejected
                    .retain(|b| !crate::format::is_kept(b.1) || gone.binary_search(&b.0).is_err());
                Some(b)
            }
            (b, _) => b,
        };
        self.stats
            .observe(chunk.partition, chunk.first_offset, &payloads, &rejected);
        // The records kept, by their index in the chunk: all of them, or
        // listed when some were lost (so offsets and log times stay aligned).
        let kept = match rejected.iter().any(|b| !crate::format::is_kept(b.1)) {
            false => None,
            true => Some(good_indices(
                payloads.len(),
                rejected.iter().filter(lost).map(|b| b.0),
            )),
        };
        let batch = batch.filter(|b| b.num_rows() > 0).map(|batch| {
            let log_times = (chunk.log_times.len() == payloads.len()).then(|| match &kept {
                None => chunk.log_times.as_slice().into(),
                Some(kept) => kept.iter().map(|&i| chunk.log_times[i]).collect(),
            });
            let offsets = match &kept {
                None if chunk.offsets.is_empty() => Offsets::From(chunk.first_offset),
                None => Offsets::Each(chunk.offsets.clone()),
                Some(kept) => Offsets::Each(kept.iter().map(|&i| chunk.offset(i)).collect()),
            };
            PartitionBatch {
                partition: chunk.partition,
                batch,
                log_times,
                offsets,
                windows: Default::default(),
            }
        });
        let rejected = rejected
            .into_iter()
            .map(|(i, reason, detail)| Rejection {
                offset: chunk.offset(i),
                reason,
                detail,
                sample: String::from_utf8_lossy(&payloads[i][..payloads[i].len().min(200)])
                    .into_owned(),
            })
            .collect();
        Ok(DecodedChunk {
            partition: chunk.partition,
            end: match chunk.len() {
                0 => chunk.first_offset,
                n => chunk.offset(n - 1) + 1,
            },
            batch,
            rejected,
        })
    }

    /// Decodes one poll's chunks.
    pub fn decode_poll(&mut self, chunks: &[Chunk]) -> Result<Vec<DecodedChunk>> {
        let now = now_ms();
        chunks.iter().map(|c| self.decode(c, now)).collect()
    }
}

/// What one query keeps of the records it reads that were rejected or
/// noted: its counters, its events (per reason, how many, the first as a
/// sample), and failing when the stream has `on_error = 'fail'`.
pub struct QueryNotes {
    stream: String,
    on_error: OnError,
    counters: Arc<Counters>,
    metrics: Arc<QueryMetrics>,
}

impl QueryNotes {
    /// `task`'s notes.
    pub fn new(task: &QueryTask) -> Self {
        QueryNotes {
            stream: task.stream.name.clone(),
            on_error: task.stream.on_error,
            counters: task.counters.clone(),
            metrics: task.metrics.clone(),
        }
    }

    /// Notes `chunk`'s rejected records at offset `from` or later.
    pub fn note(&self, chunk: &DecodedChunk, from: i64) -> Result<()> {
        let rejected = chunk.rejected.iter().filter(|r| r.offset >= from);
        let mut by_reason: BTreeMap<&'static str, (u64, &Rejection)> = BTreeMap::new();
        for r in rejected {
            by_reason.entry(r.reason).or_insert((0, r)).0 += 1;
        }
        for (reason, (n, first)) in by_reason {
            let kept = crate::format::is_kept(reason);
            let (level, kind, what) = match kept {
                true => (Level::Info, "noted_record", "used with a note"),
                false => (Level::Warning, "bad_record", "skipped"),
            };
            let message = format!(
                "stream {}: {reason} records {what} ({})",
                self.stream, first.detail
            );
            let sample = format!(
                "partition {} offset {}: {}",
                chunk.partition, first.offset, first.sample
            );
            self.metrics
                .events
                .note(level, kind, reason, &message, n, Some(sample));
        }
        let lost = |r: &&Rejection| r.offset >= from && !crate::format::is_kept(r.reason);
        let mut lost = chunk.rejected.iter().filter(lost);
        if let Some(first) = lost.next() {
            let n = 1 + lost.count() as u64;
            self.counters.records_in.fetch_add(n, Ordering::Relaxed);
            self.counters.bad_records.fetch_add(n, Ordering::Relaxed);
            if self.on_error == OnError::Fail {
                return Err(Error::Execution(format!(
                    "bad record in stream {} at partition {} offset {}: {} ({}); the stream has on_error = 'fail'",
                    self.stream, chunk.partition, first.offset, first.reason, first.detail,
                )));
            }
        }
        Ok(())
    }
}

/// Decodes one query's chunks into record batches of the columns its plan
/// reads, counting and sampling bad records as the stream says.
pub struct ChunkDecoder {
    decoder: StreamDecoder,
    notes: QueryNotes,
}

impl ChunkDecoder {
    /// A decoder for `task`'s stream that materialises only the columns its
    /// plan reads (and the event time).
    pub fn new(task: &QueryTask) -> Result<Self> {
        let columns = task.plan.stream_columns_read();
        Ok(ChunkDecoder {
            decoder: StreamDecoder::new(&task.stream, task.stats.clone(), &columns)?,
            notes: QueryNotes::new(task),
        })
    }

    /// Decodes one poll's chunks: per chunk, its partition and its good
    /// records.
    pub fn decode_poll(&mut self, chunks: &[Chunk]) -> Result<Vec<Decoded>> {
        let decoded = self.decoder.decode_poll(chunks)?;
        decoded
            .into_iter()
            .map(|c| {
                self.notes.note(&c, i64::MIN)?;
                Ok((c.partition, c.batch))
            })
            .collect()
    }
}

/// One chunk decoded: its partition and its good records, if any.
pub type Decoded = (i32, Option<PartitionBatch>);
