//! The in-process runs: decoding alone, the window engine on one thread or
//! fed by a decoding thread, and the state held per open group.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::record_batch::RecordBatch;

use super::measure::{Meter, RunStats, peak_rss};
use super::{Dataset, QUERY_SQL, SPAN_MS, STREAM_SQL};
use crate::error::{Error, Result};
use crate::format::json::JsonDecoder;
use crate::model::{SelectSql, StreamDef};
use crate::plan::ContinuousPlan;
use crate::sql::{Statement, parse_statement};
use crate::window::WindowEngine;

/// The benchmark stream and a continuous query over it.
pub fn parse_query(sql: &str) -> Result<(StreamDef, SelectSql)> {
    let Statement::CreateStream(stream) = parse_statement(STREAM_SQL)?.stmt else {
        return Err(Error::Execution("expected CREATE STREAM".into()));
    };
    let select = match parse_statement(sql)?.stmt {
        Statement::Select(s) => s,
        Statement::CreateQuery { select, .. } => select,
        _ => return Err(Error::Execution("expected a SELECT".into())),
    };
    Ok((stream, select))
}

/// A window engine and decoder for `sql` over the benchmark stream.
pub async fn engine_for(sql: &str) -> Result<(WindowEngine, JsonDecoder)> {
    let (stream, select) = parse_query(sql)?;
    let plan = Arc::new(ContinuousPlan::build(&stream, &select).await?);
    let schema = Arc::new(Schema::new(stream.fields()));
    let et = stream.event_time_index();
    let mut read = plan.stream_columns_read();
    read.extend(et);
    let engine = WindowEngine::new(plan, et, stream.watermark_delay_ms);
    let decoder = if std::env::var_os("RUNNEL_BENCH_FULL_DECODE").is_some() {
        JsonDecoder::new(schema)?
    } else {
        JsonDecoder::with_projection(schema, &read)?
    };
    Ok((engine, decoder))
}

/// Decodes every record of `ds` in batches of `batch`, keeping nothing.
pub fn run_decode(ds: &Dataset, batch: usize) -> Result<RunStats> {
    let (stream, _) = parse_query(QUERY_SQL)?;
    let mut decoder = JsonDecoder::new(Arc::new(Schema::new(stream.fields())))?;
    let meter = Meter::start();
    let mut bad = 0;
    let mut rows = 0;
    for start in (0..ds.len()).step_by(batch) {
        let payloads = ds.payloads(start..(start + batch).min(ds.len()));
        let (b, errs) = decoder.decode(&payloads);
        bad += errs.len();
        rows += b.map_or(0, |b| b.num_rows());
    }
    let (wall_s, cpu_s) = meter.stop();
    Ok(RunStats {
        name: format!("decode only (batch {batch})"),
        records: rows + bad,
        wall_s,
        cpu_s,
        bad,
        peak_rss: peak_rss(),
        ..Default::default()
    })
}

struct Collector {
    stats: RunStats,
    /// Emit the open windows' early rows after every batch (`EMIT EVERY`),
    /// timing each emit instead of the closes.
    early: bool,
}

impl Collector {
    async fn feed(
        &mut self,
        engine: &mut WindowEngine,
        batch: Option<RecordBatch>,
        bad: usize,
    ) -> Result<()> {
        self.stats.bad += bad;
        let Some(batch) = batch else { return Ok(()) };
        let t = Instant::now();
        let mut out = engine.process(0, batch, 0).await?;
        if self.early {
            let t = Instant::now();
            let early = engine.emit_open(0).await?;
            self.stats
                .latency_ms
                .push(t.elapsed().as_secs_f64() * 1000.0);
            out.extend(early);
        } else if !out.is_empty() {
            // Time from handing the engine the batch that moved the watermark
            // past a window's end to having that window's rows.
            self.stats
                .latency_ms
                .push(t.elapsed().as_secs_f64() * 1000.0);
        }
        self.stats.state_bytes = self.stats.state_bytes.max(engine.state_bytes());
        self.stats.rows += out.iter().map(|e| e.batch.num_rows()).sum::<usize>();
        Ok(())
    }

    async fn finish(&mut self, engine: &mut WindowEngine) -> Result<()> {
        let out = engine.close_all().await?;
        self.stats.rows += out.iter().map(|e| e.batch.num_rows()).sum::<usize>();
        self.stats.windows = engine
            .counters
            .windows_closed
            .load(std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// Runs `sql` over `ds` on one thread: decode a batch, process it, repeat;
/// then closes the remaining windows.
pub async fn run_engine(ds: &Dataset, sql: &str, batch: usize, name: &str) -> Result<RunStats> {
    run_engine_emitting(ds, sql, batch, name, false).await
}

/// [`run_engine`], emitting early rows after every batch when `early` (the
/// query has `EMIT EVERY`); its latencies are then each emit's time.
pub async fn run_engine_emitting(
    ds: &Dataset,
    sql: &str,
    batch: usize,
    name: &str,
    early: bool,
) -> Result<RunStats> {
    let (mut engine, mut decoder) = engine_for(sql).await?;
    let mut c = Collector {
        stats: RunStats {
            name: name.to_string(),
            records: ds.len(),
            ..Default::default()
        },
        early,
    };
    let meter = Meter::start();
    for start in (0..ds.len()).step_by(batch) {
        let payloads = ds.payloads(start..(start + batch).min(ds.len()));
        let (b, errs) = decoder.decode(&payloads);
        c.feed(&mut engine, b, errs.len()).await?;
    }
    c.finish(&mut engine).await?;
    let (wall_s, cpu_s) = meter.stop();
    c.stats.wall_s = wall_s;
    c.stats.cpu_s = cpu_s;
    c.stats.peak_rss = peak_rss();
    Ok(c.stats)
}

/// Like [`run_engine`], with decoding on a second thread feeding the engine.
pub async fn run_pipelined(ds: &Dataset, sql: &str, batch: usize) -> Result<RunStats> {
    let (mut engine, mut decoder) = engine_for(sql).await?;
    let mut c = Collector {
        stats: RunStats {
            name: format!("engine, 2 threads (batch {batch})"),
            records: ds.len(),
            ..Default::default()
        },
        early: false,
    };
    let meter = Meter::start();
    let result: Result<()> = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Option<RecordBatch>, usize)>(2);
        scope.spawn(move || {
            for start in (0..ds.len()).step_by(batch) {
                let payloads = ds.payloads(start..(start + batch).min(ds.len()));
                let (b, errs) = decoder.decode(&payloads);
                if tx.send((b, errs.len())).is_err() {
                    break;
                }
            }
        });
        let c = &mut c;
        let engine = &mut engine;
        let aggregate = scope.spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread().build()?;
            rt.block_on(async {
                while let Ok((b, bad)) = rx.recv() {
                    c.feed(engine, b, bad).await?;
                }
                c.finish(engine).await
            })
        });
        aggregate
            .join()
            .map_err(|_| Error::Execution("the aggregating thread panicked".into()))?
    });
    result?;
    let (wall_s, cpu_s) = meter.stop();
    c.stats.wall_s = wall_s;
    c.stats.cpu_s = cpu_s;
    c.stats.peak_rss = peak_rss();
    Ok(c.stats)
}

/// State held for a window at a given number of groups.
#[derive(Debug, Clone)]
pub struct StateSize {
    /// Groups of the fullest window (rows it emitted).
    pub groups: usize,
    /// Partial-state bytes in memory per open group.
    pub memory_per_group: f64,
    /// Checkpoint bytes per open group.
    pub checkpoint_per_group: f64,
}

/// Feeds the records of the first window of `ds`, compacts, and measures the state per open group; the groups are counted
/// from the rows each window emits when it is then closed.
pub async fn window_state(ds: &Dataset, sql: &str, batch: usize) -> Result<StateSize> {
    let (mut engine, mut decoder) = engine_for(sql).await?;
    let n = ds.len() * 10_000 / SPAN_MS as usize;
    for start in (0..n).step_by(batch) {
        let (b, _) = decoder.decode(&ds.payloads(start..(start + batch).min(n)));
        if let Some(b) = b {
            // Jittered records of the window before may close it: it is no
            // longer open state, so it is left out.
            engine.process(0, b, 0).await?;
        }
    }
    engine.compact_all().await?;
    let memory = engine.state_bytes() as f64;
    let checkpoint = engine.checkpoint().await?.len() as f64;
    let out = engine.close_all().await?;
    let total: usize = out.iter().map(|e| e.batch.num_rows()).sum();
    let groups = out.iter().map(|e| e.batch.num_rows()).max().unwrap_or(0);
    let total = total.max(1) as f64;
    Ok(StateSize {
        groups,
        memory_per_group: memory / total,
        checkpoint_per_group: checkpoint / total,
    })
}
