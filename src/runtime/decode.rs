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

/// Decodes a query's chunks into record batches, counting and sampling bad
/// records as the stream says. Owns what it needs, so it can run on the
/// source's reader thread (see [`crate::source::prefetch::Prefetch`]).
pub struct ChunkDecoder {
    decoder: Decoder,
    /// The stream's schema, when the decoder's differs: an event time in
    /// seconds or microseconds is decoded as a number, then scaled.
    scaled: Option<(SchemaRef, (i64, i64))>,
    /// Index of the event-time column, if the stream has one.
    pub event_time: Option<usize>,
    stream: StreamDef,
    stats: Arc<StreamStats>,
    counters: Arc<Counters>,
    metrics: Arc<QueryMetrics>,
}

impl ChunkDecoder {
    /// A decoder for `task`'s stream that materialises only the columns its
    /// plan reads (and the event time).
    pub fn new(task: &QueryTask) -> Result<Self> {
        let schema = Arc::new(Schema::new(task.stream.fields()));
        let event_time = match &task.stream.event_time {
            Some(c) => Some(schema.index_of(c)?),
            None => None,
        };
        let mut read = task.plan.stream_columns_read();
        read.extend(event_time);
        read.sort_unstable();
        read.dedup();
        let (decode_schema, scaled) = match (task.stream.event_time_scale(), event_time) {
            (Some(scale), Some(c)) => {
                let mut fields: Vec<Field> =
                    schema.fields().iter().map(|f| f.as_ref().clone()).collect();
                fields[c] = Field::new(fields[c].name(), DataType::Int64, true);
                (Arc::new(Schema::new(fields)), Some((schema, scale)))
            }
            _ => (schema, None),
        };
        Ok(ChunkDecoder {
            decoder: Decoder::with_projection(task.stream.format, decode_schema, &read)?,
            scaled,
            event_time,
            stream: task.stream.clone(),
            stats: task.stats.clone(),
            counters: task.counters.clone(),
            metrics: task.metrics.clone(),
        })
    }

    /// Decodes one chunk: counts and samples its bad records (failing the
    /// query if the stream says so) and returns the good ones with an event
    /// time, if any, with their times in the log.
    fn decode(&mut self, chunk: &Chunk, now: i64) -> Result<Option<PartitionBatch>> {
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
                let (b, dropped) = check_event_time(b, c, now, self.stream.max_future_ms)?;
                rejected.extend(dropped.into_iter().map(|(row, r, d)| (good[row], r, d)));
                rejected.sort_by_key(|b| b.0);
                Some(b)
            }
            (b, _) => b,
        };
        self.stats
            .observe(chunk.partition, chunk.first_offset, &payloads, &rejected);
        self.note_rejected(chunk, &payloads, &rejected);
        let mut lost = rejected.iter().filter(lost);
        if let Some((i, reason, detail)) = lost.next() {
            let n = 1 + lost.count() as u64;
            self.counters.records_in.fetch_add(n, Ordering::Relaxed);
            self.counters.bad_records.fetch_add(n, Ordering::Relaxed);
            if self.stream.on_error == OnError::Fail {
                return Err(Error::Execution(format!(
                    "bad record in stream {} at partition {} offset {}: {reason} ({detail}); the stream has on_error = 'fail'",
                    self.stream.name,
                    chunk.partition,
                    chunk.first_offset + *i as i64,
                )));
            }
        }
        let Some(batch) = batch.filter(|b| b.num_rows() > 0) else {
            return Ok(None);
        };
        // The records kept, by their index in the chunk: all of them, or
        // listed when some were lost (so offsets and log times stay aligned).
        let kept = match rejected.iter().any(|b| !crate::format::is_kept(b.1)) {
            false => None,
            true => {
                let lost = rejected.iter().filter(|b| !crate::format::is_kept(b.1));
                Some(good_indices(payloads.len(), lost.map(|b| b.0)))
            }
        };
        let log_times = (chunk.log_times.len() == payloads.len()).then(|| match &kept {
            None => chunk.log_times.clone(),
            Some(kept) => kept.iter().map(|&i| chunk.log_times[i]).collect(),
        });
        let offsets = match &kept {
            None if chunk.offsets.is_empty() => Offsets::From(chunk.first_offset),
            None => Offsets::Each(chunk.offsets.clone()),
            Some(kept) => Offsets::Each(kept.iter().map(|&i| chunk.offset(i)).collect()),
        };
        Ok(Some(PartitionBatch {
            partition: chunk.partition,
            batch,
            log_times,
            offsets,
        }))
    }

    /// Notes a chunk's bad records (and notes on kept ones) in the query's
    /// events: per reason, how many, with the first as a sample.
    fn note_rejected(&self, chunk: &Chunk, payloads: &[&[u8]], rejected: &[Rejected]) {
        let mut by_reason: BTreeMap<&'static str, (u64, usize, &str)> = BTreeMap::new();
        for (i, reason, detail) in rejected {
            by_reason.entry(reason).or_insert((0, *i, detail)).0 += 1;
        }
        for (reason, (n, i, detail)) in by_reason {
            let kept = crate::format::is_kept(reason);
            let (level, kind, what) = match kept {
                true => (Level::Info, "noted_record", "used with a note"),
                false => (Level::Warning, "bad_record", "skipped"),
            };
            let message = format!(
                "stream {}: {reason} records {what} ({detail})",
                self.stream.name
            );
            let payload =
                String::from_utf8_lossy(&payloads[i][..payloads[i].len().min(200)]).into_owned();
            let sample = format!(
                "partition {} offset {}: {payload}",
                chunk.partition,
                chunk.first_offset + i as i64
            );
            self.metrics
                .events
                .note(level, kind, reason, &message, n, Some(sample));
        }
    }

    /// Decodes one poll's chunks: per chunk, its partition and its good
    /// records.
    pub fn decode_poll(&mut self, chunks: &[Chunk]) -> Result<Vec<Decoded>> {
        let now = now_ms();
        chunks
            .iter()
            .map(|c| Ok((c.partition, self.decode(c, now)?)))
            .collect()
    }
}

/// One chunk decoded: its partition and its good records, if any.
pub type Decoded = (i32, Option<PartitionBatch>);
