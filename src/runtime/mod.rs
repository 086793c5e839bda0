//! Running a continuous query: source → decoder → window engine → store.
//!
//! Each query runs on two threads. A reader ([`Prefetch`]) polls its Kafka
//! partitions and decodes each partition's records of a poll into one batch
//! ([`ChunkDecoder`]), one poll ahead of the query thread, which feeds the
//! window engine and commits emitted rows together with the offsets of the
//! records it took and the engine's checkpoint in one store transaction — at
//! every window close and at least every `checkpoint_interval` while records
//! flow.

pub mod telemetry;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray, BooleanArray, TimestampMillisecondArray};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{
    DataType, Field, Int64Type, Schema, SchemaRef, TimestampMillisecondType,
};
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};
use crate::format::Decoder;
use crate::model::QueryStatus;
use crate::model::WindowKind;
use crate::model::{Counters, Emission};
use crate::model::{OnError, SourceKind, StreamDef};
use crate::plan::ContinuousPlan;
use crate::sink::exact::ExactSink;
use crate::source::file::allowed_file;
use crate::source::kafka::Waiting;
use crate::source::prefetch::Prefetch;
use crate::source::stats::StreamStats;
use crate::source::{Chunk, Progress, Source};
use crate::store::Store;
use crate::window::{PartitionBatch, WindowEngine};

/// Everything a query thread needs.
pub struct QueryTask {
    /// Query name (its results table).
    pub name: String,
    /// The stream it reads.
    pub stream: StreamDef,
    /// Its compiled plan.
    pub plan: Arc<ContinuousPlan>,
    /// How the stream's Kafka clients (its consumer, the `INTO TOPIC`
    /// producer) connect.
    pub kafka: crate::connect::kafka::KafkaConn,
    /// Store for results and checkpoints.
    pub store: Store,
    /// Shared counters.
    pub counters: Arc<Counters>,
    /// Shared status.
    pub status: Arc<Mutex<QueryStatus>>,
    /// Set to stop the thread.
    pub stop: Arc<AtomicBool>,
    /// Longest time between checkpoints while records flow.
    pub checkpoint_interval: Duration,
    /// Confirmed quiet time after which a caught-up partition is idle (see
    /// [`crate::window::watermark`]).
    pub idle_after: Duration,
    /// Input statistics of the stream, shared by its readers.
    pub stats: Arc<StreamStats>,
    /// Most partial-state rows (groups × open windows) the query may hold.
    pub max_state_rows: usize,
    /// Kafka topic each emitted row is also published to, as JSON.
    pub into_topic: Option<String>,
    /// Start position overriding the saved offsets (after a reset).
    pub reset: Option<crate::model::StartFrom>,
    /// Timings, lag and state size for `GET /metrics`.
    pub metrics: Arc<telemetry::QueryMetrics>,
    /// Cluster name: run as one member of it (see [`crate::cluster`]).
    pub cluster: Option<String>,
    /// How long closed windows' partial states are kept for roll-ups.
    pub state_retention: Duration,
    /// Directories a file stream's file must be under (checked again once
    /// the file exists, as it may have appeared after the stream was made).
    pub allow_files: Vec<std::path::PathBuf>,
}

/// The status of query `name` once `run` has returned: stopped, or failed
/// with a message naming the query. A bug (a panic) must fail the query
/// visibly, not take the server down or leave the query looking alive.
fn outcome(name: &str, run: impl FnOnce() -> Result<()>) -> QueryStatus {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|p| {
        Err(Error::Execution(format!(
            "internal error: {}",
            crate::error::panic_message(p.as_ref())
        )))
    });
    match result {
        Ok(()) => QueryStatus::Stopped,
        Err(e) => {
            tracing::error!("query {name} failed: {e}");
            QueryStatus::Failed(format!("query {name}: {e}"))
        }
    }
}

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

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
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
/// source's reader thread (see [`Prefetch`]).
pub(crate) struct ChunkDecoder {
    decoder: Decoder,
    /// The stream's schema, when the decoder's differs: an event time in
    /// seconds or microseconds is decoded as a number, then scaled.
    scaled: Option<(SchemaRef, (i64, i64))>,
    /// Index of the event-time column, if the stream has one.
    pub event_time: Option<usize>,
    stream: StreamDef,
    stats: Arc<StreamStats>,
    counters: Arc<Counters>,
}

impl ChunkDecoder {
    /// A decoder for `task`'s stream that materialises only the columns its
    /// plan reads (and the event time).
    pub(crate) fn new(task: &QueryTask) -> Result<Self> {
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
        let log_times = (chunk.log_times.len() == payloads.len()).then(|| {
            let lost = rejected.iter().filter(|b| !crate::format::is_kept(b.1));
            good_indices(payloads.len(), lost.map(|b| b.0))
                .into_iter()
                .map(|i| chunk.log_times[i])
                .collect()
        });
        Ok(Some(PartitionBatch {
            partition: chunk.partition,
            batch,
            log_times,
        }))
    }

    /// Decodes one poll's chunks: per chunk, its partition and its good
    /// records.
    pub(crate) fn decode_poll(&mut self, chunks: &[Chunk]) -> Result<Vec<Decoded>> {
        let now = now_ms();
        chunks
            .iter()
            .map(|c| Ok((c.partition, self.decode(c, now)?)))
            .collect()
    }
}

/// One chunk decoded: its partition and its good records, if any.
pub(crate) type Decoded = (i32, Option<PartitionBatch>);

impl QueryTask {
    /// Fails the query when its state is over `max_state_rows`.
    pub(crate) fn check_state_limit(
        &self,
        rt: &tokio::runtime::Runtime,
        engine: &mut WindowEngine,
    ) -> Result<()> {
        // Unmerged partial batches count too: merge them before judging the
        // state by its groups x open windows.
        if engine.state_rows() > self.max_state_rows {
            rt.block_on(engine.compact_all())?;
        }
        if engine.state_rows() > self.max_state_rows {
            return Err(Error::Execution(format!(
                "state limit exceeded: {} partial-state rows (groups x open windows) > {}; narrow the GROUP BY, shorten the window or raise max_state_rows",
                engine.state_rows(),
                self.max_state_rows
            )));
        }
        Ok(())
    }

    /// Tells the engine's clocks which partitions delivered records this
    /// turn and which were confirmed caught up and quiet since the last;
    /// notes whether the broker is reachable and the records skipped.
    pub(crate) fn tick_clock(
        &self,
        engine: &mut WindowEngine,
        progress: &Progress,
        decoded: &[Decoded],
        last_tick: &mut Instant,
    ) {
        self.note_reachability(progress.unreachable_since, QueryStatus::Running);
        self.counters
            .records_skipped
            .store(progress.skipped, Ordering::Relaxed);
        // A turn longer than a second (a slow commit, a paused process)
        // counts as one second of quiet at most.
        let elapsed = last_tick.elapsed().min(Duration::from_secs(1));
        *last_tick = Instant::now();
        let delivered: Vec<i32> = decoded.iter().map(|(p, _)| *p).collect();
        engine.clock_mut().tick(
            &progress.partitions,
            &delivered,
            |p| progress.is_caught_up(p),
            elapsed.as_millis() as i64,
            self.idle_after.as_millis() as i64,
        );
    }

    /// Deletes window states past their retention, once a minute.
    pub(crate) fn prune_window_states(&self, last: &mut Option<Instant>) -> Result<()> {
        if self.state_retention.is_zero()
            || last.is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return Ok(());
        }
        *last = Some(Instant::now());
        let before = now_ms().saturating_sub(self.state_retention.as_millis() as i64);
        self.store.prune_window_states(&self.name, before)?;
        Ok(())
    }

    /// A broker unreachable for more than two seconds is a status of its
    /// own (brief reconnects are not); reachable again, the query runs.
    pub(crate) fn note_reachability(
        &self,
        since: Option<std::time::SystemTime>,
        back: QueryStatus,
    ) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match since {
            Some(t)
                if t.elapsed().is_ok_and(|d| d >= Duration::from_secs(2))
                    && !matches!(*status, QueryStatus::Failed(_) | QueryStatus::Stopped) =>
            {
                let at = chrono::DateTime::<chrono::Utc>::from(t);
                *status = QueryStatus::BrokerUnreachable(
                    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                );
            }
            None if matches!(*status, QueryStatus::BrokerUnreachable(_)) => *status = back,
            _ => {}
        }
    }

    /// Publishes the store's new rows to the query's topic; a failure to be
    /// retried shows in the query's status until publishing works again.
    fn drive_sink(&self, sink: &mut ExactSink) -> Result<()> {
        let waiting = sink.drive(&self.store)?;
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match waiting {
            Some(m) if matches!(*status, QueryStatus::Running | QueryStatus::SinkWaiting(_)) => {
                *status = QueryStatus::SinkWaiting(m)
            }
            None if matches!(*status, QueryStatus::SinkWaiting(_)) => {
                *status = QueryStatus::Running
            }
            _ => {}
        }
        Ok(())
    }

    fn set_status(&self, s: QueryStatus) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// Starts the query on its own thread.
    pub fn spawn(self) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name(format!("query-{}", self.name))
            .spawn(move || {
                let status = outcome(&self.name, || self.run());
                self.set_status(status);
            })
            .expect("spawn query thread")
    }

    fn run(&self) -> Result<()> {
        if let Some(cluster) = &self.cluster {
            return crate::cluster::run(self, cluster, |s| self.set_status(s));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut decoder = ChunkDecoder::new(self)?;
        let et = decoder.event_time;
        let mut engine = WindowEngine::new(self.plan.clone(), et, self.stream.watermark_delay_ms);
        engine.counters = self.counters.clone();
        if !self.state_retention.is_zero() {
            engine.keep_window_states();
        }
        let saved = match self.store.load_checkpoint(&self.name)? {
            Some((offsets, state)) => {
                if !state.is_empty() {
                    engine.restore(&state).map_err(|e| {
                        Error::Execution(format!(
                            "{e}; the saved state was not resumed. Reset the query with POST /queries/{}/reset?from=earliest or ?from=latest",
                            self.name
                        ))
                    })?;
                }
                offsets
            }
            None => BTreeMap::new(),
        };
        self.set_status(QueryStatus::WaitingForTopic);
        let client = format!("runnel-{}", self.name);
        let src = match Source::connect(
            &self.stream,
            &self.kafka,
            &client,
            self.reset.unwrap_or(self.stream.start),
            &saved,
            Waiting {
                stop: &self.stop,
                unreachable: &|since| self.note_reachability(since, QueryStatus::WaitingForTopic),
            },
        ) {
            Ok(s) => s,
            Err(_) if self.stop.load(Ordering::Relaxed) => return Ok(()),
            Err(e) => return Err(e),
        };
        if self.stream.source == SourceKind::File {
            let path = self.stream.options.get("path").map(String::as_str);
            allowed_file(path.unwrap_or(""), &self.allow_files, false)?;
        }
        // Records are read and decoded one poll ahead on a second thread.
        let wait = Duration::from_millis(100);
        let mut src = Prefetch::spawn(src, 100_000, wait, move |chunks| {
            decoder.decode_poll(&chunks)
        });
        let mut sink = self.into_topic.as_ref().map(|t| {
            let schema = self.plan.output_schema.clone();
            ExactSink::new(
                &self.kafka,
                &self.name,
                t,
                schema,
                self.counters.sink.clone(),
            )
        });
        self.set_status(QueryStatus::Running);
        engine.register_partitions(src.partitions());
        let emit_ms = match self.plan.window.kind {
            WindowKind::Cumulative { emit_ms } => Some(emit_ms),
            _ => None,
        };
        let mut next_emit = now_ms() + emit_ms.unwrap_or(0);
        let mut last_tick = Instant::now();
        let mut last_commit = Instant::now();
        let mut uncommitted = false;
        let mut last_lag = Instant::now();
        let mut last_prune: Option<Instant> = None;
        let mut last_progress = (
            Instant::now(),
            self.counters.records_in.load(Ordering::Relaxed),
        );
        while !self.stop.load(Ordering::Relaxed) {
            let decoded = src.poll(wait)?.unwrap_or_default();
            let batch_start = Instant::now();
            let got_records = !decoded.is_empty();
            uncommitted |= got_records;
            let mut emitted: Vec<Emission> = Vec::new();
            let now = now_ms();
            self.tick_clock(&mut engine, &src.progress(), &decoded, &mut last_tick);
            let batches: Vec<PartitionBatch> = decoded.into_iter().filter_map(|(_, b)| b).collect();
            if !batches.is_empty() {
                emitted.extend(rt.block_on(engine.process_polled(batches, now))?);
                self.check_state_limit(&rt, &mut engine)?;
            } else {
                emitted.extend(rt.block_on(engine.close_ready())?);
            }
            if let Some(ms) = emit_ms
                && now >= next_emit
            {
                emitted.extend(rt.block_on(engine.emit_cumulative(now))?);
                next_emit = now + ms;
            }
            if !emitted.is_empty()
                || (uncommitted && last_commit.elapsed() >= self.checkpoint_interval)
            {
                let state = engine.checkpoint()?;
                self.store
                    .commit(&self.name, &emitted, src.offsets(), &state)?;
                if let Some(sink) = &mut sink
                    && !emitted.is_empty()
                {
                    sink.mark_pending();
                }
                self.metrics
                    .set_state(engine.state_rows(), engine.open_windows(), state.len());
                self.metrics.observe_emissions(&emitted, now_ms());
                last_commit = Instant::now();
                uncommitted = false;
            }
            if let Some(sink) = &mut sink {
                self.drive_sink(sink)?;
            }
            if got_records {
                self.metrics.observe_batch(batch_start.elapsed());
            }
            if last_lag.elapsed() >= Duration::from_secs(1) {
                last_lag = Instant::now();
                self.prune_window_states(&mut last_prune)?;
                self.metrics.set_lag(&src.lag());
                let lag = self.metrics.total_lag().unwrap_or(0);
                let secs = last_progress.0.elapsed().as_secs_f64();
                if lag > 10_000 && secs >= 5.0 {
                    let records = self.counters.records_in.load(Ordering::Relaxed);
                    tracing::info!(
                        query = %self.name,
                        records_per_sec = ((records - last_progress.1) as f64 / secs).round(),
                        lag,
                        "catching up on a backlog"
                    );
                    last_progress = (Instant::now(), records);
                } else if lag <= 10_000 {
                    last_progress = (
                        Instant::now(),
                        self.counters.records_in.load(Ordering::Relaxed),
                    );
                }
            }
        }
        if uncommitted {
            self.store
                .commit(&self.name, &[], src.offsets(), &engine.checkpoint()?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::{Statement, parse_sql};
    use datafusion::arrow::array::{ArrayRef, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::Field;

    fn failure(status: QueryStatus) -> String {
        match status {
            QueryStatus::Failed(m) => m,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn a_query_ends_stopped_or_failed_naming_it() {
        assert_eq!(outcome("quiet", || Ok(())), QueryStatus::Stopped);
        let m = failure(outcome("strict", || {
            Err(Error::Execution("state limit exceeded".into()))
        }));
        assert!(
            m.starts_with("query strict: ") && m.contains("state limit"),
            "{m}"
        );
        let m = failure(outcome("buggy", || panic!("index out of bounds")));
        assert!(
            m.starts_with("query buggy: ") && m.contains("internal error: index out of bounds"),
            "{m}"
        );
    }

    /// A panic inside an operator of a plan fails the query with a status
    /// naming the query and the plan.
    #[test]
    fn a_panic_inside_a_plan_fails_the_query_naming_it() {
        let stmts = parse_sql(
            "CREATE STREAM clicks (ts TIMESTAMP, page TEXT) WITH (kafka_topic = 'c', event_time = 'ts');
             SELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 10s",
        )
        .unwrap();
        let (Statement::CreateStream(stream), Statement::Select(select)) =
            (&stmts[0].stmt, &stmts[1].stmt)
        else {
            panic!("a stream and a select")
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let plan = rt.block_on(ContinuousPlan::build(stream, select)).unwrap();
        // A partial state whose count is text: the count's merge panics on it.
        let mut fields: Vec<Field> = plan
            .state_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let count = fields.pop().unwrap();
        fields.push(Field::new(count.name(), DataType::Utf8, true));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampMillisecondArray::from(vec![0])),
            Arc::new(TimestampMillisecondArray::from(vec![10_000])),
            Arc::new(StringArray::from(vec!["a"])),
            Arc::new(StringArray::from(vec!["one"])),
        ];
        let state = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        let m = failure(outcome("clicks_by_page", || {
            rt.block_on(plan.close(vec![state])).map(drop)
        }));
        assert!(
            m.starts_with("query clicks_by_page: ")
                && m.contains("internal error in the window-close plan"),
            "{m}"
        );
    }
}
