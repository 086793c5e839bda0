//! End-to-end benchmarks of the ad-network query (`runnel bench`).
//!
//! The dataset is generated deterministically in memory before anything is
//! measured: ad impressions of about 143 bytes of JSON (100 publishers, 50
//! advertisers, 1000 websites, 20 geos including `unknown`, 1M cookies)
//! spread over 60 s of event time with ±0.5 s of jitter. Each measured run
//! reports records per second of wall time and records per CPU-second of the
//! whole process (user plus system time from `/proc/self/stat`), so work on
//! any thread counts.
//!
//! * `engine`: payload bytes already in memory → JSON decoder → window engine
//!   → closed-window rows, one thread, the query's 10 s tumbling windows and
//!   5 s watermark delay.
//! * `pipelined`: the same with decoding on a second thread.
//! * `decode`: the JSON decoder alone, the ceiling of the engine.
//! * `scale`: `GROUP BY publisher` with 10, 1000 and 100 000 publishers:
//!   throughput and bytes of state per open group.
//! * `e2e`: records read from librdkafka's mock cluster (a separate process,
//!   whose CPU is reported apart) through Runnel's Kafka source.
//! * `latency`: the real server reading a live topic; time from the record
//!   that moves the watermark past a window's end until the window's rows are
//!   returned by `GET /queries/{id}/results`.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::record_batch::RecordBatch;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::format::json::JsonDecoder;
use crate::generate::{GEOS, NUM_ADVERTISERS, NUM_COOKIES, NUM_WEBSITES};
use crate::model::{SelectSql, StreamDef};
use crate::plan::ContinuousPlan;
use crate::source::Source;
use crate::sql::{Statement, parse_statement};
use crate::window::{PartitionBatch, WindowEngine};

/// Event time of the first window's start (a multiple of 10 s).
pub const BASE_MS: i64 = 1_700_000_000_000;
/// Event time covered by the dataset.
pub const SPAN_MS: i64 = 60_000;
/// Largest jitter added to event times, either way.
pub const JITTER_MS: i64 = 500;

/// The stream declaration of the benchmark (5 s watermark delay).
pub const STREAM_SQL: &str = "CREATE STREAM impressions (
  ts TIMESTAMP, publisher TEXT, advertiser TEXT, website TEXT,
  geo TEXT, bid DOUBLE, cookie TEXT
) WITH (kafka_topic = 'adnetwork-topic', format = 'json', event_time = 'ts',
        watermark_delay = '5s', start = 'earliest')";

/// The canonical ad-network query.
pub const QUERY_SQL: &str = "SELECT publisher, geo, avg(bid) AS avg_bid, count(*) AS imps,
       approx_distinct(cookie) AS uniques
FROM impressions
WHERE geo <> 'unknown'
GROUP BY publisher, geo
WINDOW 10s";

/// The session-window run: per-cookie sessions with a 1 s gap, so sessions
/// open, merge and close all through the run.
pub const SESSION_SQL: &str = "SELECT cookie, count(*) AS imps, avg(bid) AS avg_bid
FROM impressions
WHERE geo <> 'unknown'
GROUP BY cookie
WINDOW SESSION 1s";

/// The query of the state-scale runs: one group per publisher.
pub const SCALE_SQL: &str = "SELECT publisher, avg(bid) AS avg_bid, count(*) AS imps,
       approx_distinct(cookie) AS uniques
FROM impressions
WHERE geo <> 'unknown'
GROUP BY publisher
WINDOW 10s";

/// Generated impressions stored back to back.
pub struct Dataset {
    data: Vec<u8>,
    ends: Vec<usize>,
}

fn push_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends one impression with event time `ts` drawn from `rng`, in the
/// generator's format, with publishers `0..publishers`.
pub fn write_impression(rng: &mut SmallRng, ts: i64, publishers: u32, data: &mut Vec<u8>) {
    let publisher = rng.random_range(0..publishers.max(1));
    let advertiser = rng.random_range(0..NUM_ADVERTISERS);
    let website = rng.random_range(0..NUM_WEBSITES);
    let geo = GEOS[rng.random_range(0..GEOS.len())];
    let bid = rng.random_range(0..1_000_000u32);
    let cookie = rng.random_range(0..NUM_COOKIES);
    data.extend_from_slice(b"{\"ts\":");
    push_u64(data, ts as u64);
    data.extend_from_slice(b",\"publisher\":\"publisher_");
    push_u64(data, publisher.into());
    data.extend_from_slice(b"\",\"advertiser\":\"advertiser_");
    push_u64(data, advertiser.into());
    data.extend_from_slice(b"\",\"website\":\"website_");
    push_u64(data, website.into());
    data.extend_from_slice(b".com\",\"geo\":\"");
    data.extend_from_slice(geo.as_bytes());
    data.extend_from_slice(b"\",\"bid\":0.");
    let mut digits = [b'0'; 6];
    let mut v = bid;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let len = 6 - digits
        .iter()
        .rev()
        .take(5)
        .take_while(|d| **d == b'0')
        .count();
    data.extend_from_slice(&digits[..len]);
    data.extend_from_slice(b",\"cookie\":\"cookie_");
    push_u64(data, cookie.into());
    data.extend_from_slice(b"\"}");
}

impl Dataset {
    /// `records` impressions over [`SPAN_MS`] of event time from [`BASE_MS`],
    /// with `publishers` distinct publishers; the same arguments always give
    /// the same bytes.
    pub fn generate(records: usize, publishers: u32, seed: u64) -> Dataset {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut data = Vec::with_capacity(records * 146);
        let mut ends = Vec::with_capacity(records);
        let n = records.max(1) as i64;
        for i in 0..records as i64 {
            let jitter = rng.random_range(-JITTER_MS..=JITTER_MS);
            let ts = BASE_MS + i * SPAN_MS / n + jitter;
            write_impression(&mut rng, ts, publishers, &mut data);
            ends.push(data.len());
        }
        Dataset { data, ends }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when there is no record.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Total payload bytes.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The payloads of records `range`.
    pub fn payloads(&self, range: Range<usize>) -> Vec<&[u8]> {
        let mut start = if range.start == 0 {
            0
        } else {
            self.ends[range.start - 1]
        };
        self.ends[range]
            .iter()
            .map(|&e| {
                let s = &self.data[start..e];
                start = e;
                s
            })
            .collect()
    }

    /// The payload of record `i`.
    pub fn payload(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.data[start..self.ends[i]]
    }
}

/// User plus system CPU time of this process so far.
pub fn process_cpu() -> Duration {
    cpu_of("/proc/self/stat")
}

/// User plus system CPU time of process `pid` (zero when unknown).
pub fn cpu_of_pid(pid: u32) -> Duration {
    cpu_of(&format!("/proc/{pid}/stat"))
}

fn cpu_of(path: &str) -> Duration {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15, in USER_HZ (100 on Linux).
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Peak resident set size of this process in bytes (`VmHWM`).
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Resets the peak resident set size, so the next [`peak_rss`] covers only what follows.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// CPU and wall time of a measured section.
pub struct Meter {
    wall: Instant,
    cpu: Duration,
}

impl Meter {
    /// Starts measuring (and resets the peak RSS).
    pub fn start() -> Meter {
        reset_peak_rss();
        Meter {
            wall: Instant::now(),
            cpu: process_cpu(),
        }
    }

    /// (wall seconds, CPU seconds) since the start.
    pub fn stop(&self) -> (f64, f64) {
        (
            self.wall.elapsed().as_secs_f64(),
            process_cpu().saturating_sub(self.cpu).as_secs_f64(),
        )
    }
}

/// What a measured run did.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    /// What was run.
    pub name: String,
    /// Records fed in.
    pub records: usize,
    /// Wall seconds.
    pub wall_s: f64,
    /// CPU seconds of this process.
    pub cpu_s: f64,
    /// Result rows of closed windows.
    pub rows: usize,
    /// Windows closed.
    pub windows: u64,
    /// Records that could not be decoded.
    pub bad: usize,
    /// Peak resident set size during the run, bytes.
    pub peak_rss: u64,
    /// Per-window latency samples in ms (see each run).
    pub latency_ms: Vec<f64>,
    /// Most partial-state bytes held at once (in memory).
    pub state_bytes: usize,
    /// CPU seconds of other processes (the broker), when measured.
    pub other_cpu_s: Option<f64>,
}

impl RunStats {
    /// Records per second of wall time.
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.wall_s.max(1e-9)
    }

    /// Records per CPU-second of this process.
    pub fn per_cpu(&self) -> f64 {
        self.records as f64 / self.cpu_s.max(1e-9)
    }

    /// The `q` quantile of the latency samples.
    pub fn latency(&self, q: f64) -> Option<f64> {
        percentile(&self.latency_ms, q)
    }

    /// One line of the report.
    pub fn line(&self) -> String {
        let lat = match (self.latency(0.5), self.latency(0.99)) {
            (Some(a), Some(b)) => format!("  latency p50 {a:.1} ms p99 {b:.1} ms"),
            _ => String::new(),
        };
        let other = self
            .other_cpu_s
            .map(|c| format!("  broker cpu {c:.2} s"))
            .unwrap_or_default();
        format!(
            "{:<28} {:>10} rec  {:>7.3} s wall {:>7.3} s cpu  {:>11.0} rec/s {:>11.0} rec/cpu-s  rows {} windows {} bad {}  peak rss {:.0} MiB  state {:.1} MiB{lat}{other}",
            self.name,
            self.records,
            self.wall_s,
            self.cpu_s,
            self.rate(),
            self.per_cpu(),
            self.rows,
            self.windows,
            self.bad,
            self.peak_rss as f64 / 1048576.0,
            self.state_bytes as f64 / 1048576.0,
        )
    }
}

/// The `q` quantile (nearest rank) of `v`.
pub fn percentile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}

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
    let et = stream
        .event_time
        .as_ref()
        .map(|c| schema.index_of(c))
        .transpose()?;
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
        let out = engine.process(0, batch, 0).await?;
        if !out.is_empty() {
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
    let (mut engine, mut decoder) = engine_for(sql).await?;
    let mut c = Collector {
        stats: RunStats {
            name: name.to_string(),
            records: ds.len(),
            ..Default::default()
        },
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
    let checkpoint = engine.checkpoint()?.len() as f64;
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

/// Options of `runnel bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Runs to do, comma-separated: engine, sessions, pipelined, decode, batch, scale,
    /// linear, e2e, latency, or all.
    #[arg(long, default_value = "engine,pipelined,decode")]
    pub runs: String,
    /// Records of the main dataset.
    #[arg(long, default_value_t = 5_000_000)]
    pub records: usize,
    /// Records per decoded batch.
    #[arg(long, default_value_t = 100_000)]
    pub batch: usize,
    /// Seed of the dataset.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Partitions of the end-to-end topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Records per second produced in the latency run.
    #[arg(long, default_value_t = 100_000)]
    pub latency_rate: u64,
    /// Seconds the latency run produces for.
    #[arg(long, default_value_t = 45)]
    pub latency_secs: u64,
    /// A Kafka-protocol broker (e.g. tansu) for the end-to-end run instead of
    /// the mock cluster; a fresh topic of `--partitions` is created on it.
    #[arg(long)]
    pub brokers: Option<String>,
    /// The external broker's process id, to report its CPU time.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Serve a mock cluster for the end-to-end run (used by the run itself).
    #[arg(long, hide = true)]
    pub broker_child: Option<i32>,
}

fn wants(args: &BenchArgs, run: &str) -> bool {
    args.runs
        .split(',')
        .any(|r| r.trim() == run || r.trim() == "all")
}

/// Runs the benchmarks `args` asks for and prints a line per run.
pub async fn run(args: BenchArgs) -> Result<()> {
    if let Some(partitions) = args.broker_child {
        return broker_child(partitions);
    }
    println!(
        "runnel bench: {} cores, {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model()
    );
    let needs_main = ["engine", "sessions", "pipelined", "decode", "batch", "e2e"]
        .iter()
        .any(|r| wants(&args, r));
    if needs_main {
        let t = Instant::now();
        let ds = Dataset::generate(args.records, 100, args.seed);
        println!(
            "dataset: {} records, {:.1} bytes/record, generated in {:.1} s",
            ds.len(),
            ds.bytes() as f64 / ds.len().max(1) as f64,
            t.elapsed().as_secs_f64()
        );
        if wants(&args, "decode") {
            println!("{}", run_decode(&ds, args.batch)?.line());
        }
        if wants(&args, "engine") {
            let name = format!("engine (batch {})", args.batch);
            println!(
                "{}",
                run_engine(&ds, QUERY_SQL, args.batch, &name).await?.line()
            );
        }
        if wants(&args, "sessions") {
            // Beside the tumbling run over the same records: the ratio is
            // what per-key sessions cost.
            let name = format!("engine (batch {})", args.batch);
            let tumbling = run_engine(&ds, QUERY_SQL, args.batch, &name).await?;
            let name = format!("engine sessions (batch {})", args.batch);
            let sessions = run_engine(&ds, SESSION_SQL, args.batch, &name).await?;
            println!("{}\n{}", tumbling.line(), sessions.line());
            println!(
                "sessions / tumbling: {:.2}x records per CPU-second",
                sessions.per_cpu() / tumbling.per_cpu()
            );
        }
        if wants(&args, "pipelined") {
            println!(
                "{}",
                run_pipelined(&ds, QUERY_SQL, args.batch).await?.line()
            );
        }
        if wants(&args, "batch") {
            for b in [1_000, 10_000, 100_000, 1_000_000] {
                let name = format!("engine (batch {b})");
                println!("{}", run_engine(&ds, QUERY_SQL, b, &name).await?.line());
            }
        }
        if wants(&args, "e2e") {
            let external = args.brokers.as_deref().map(|b| (b, args.broker_pid));
            let runs = run_e2e(&ds, args.partitions, external).await?;
            for r in &runs {
                println!("{}", r.line());
            }
            if let [one, prefetch] = &runs[..] {
                println!(
                    "e2e: prefetch / one thread: {:.2}x records/s wall",
                    prefetch.rate() / one.rate()
                );
            }
        }
    }
    if wants(&args, "linear") {
        for n in [1_000_000, 5_000_000, 20_000_000] {
            let ds = Dataset::generate(n, 100, args.seed);
            let name = format!("engine {}M records", n / 1_000_000);
            println!(
                "{}",
                run_engine(&ds, QUERY_SQL, args.batch, &name).await?.line()
            );
        }
    }
    if wants(&args, "scale") {
        for publishers in [10, 1_000, 100_000] {
            let ds = Dataset::generate(args.records, publishers, args.seed);
            let name = format!("scale {publishers} groups");
            let stats = run_engine(&ds, SCALE_SQL, args.batch, &name).await?;
            let state = window_state(&ds, SCALE_SQL, args.batch).await?;
            println!(
                "{}\n    {} groups/window: {:.0} bytes/group in memory, {:.0} bytes/group checkpointed",
                stats.line(),
                state.groups,
                state.memory_per_group,
                state.checkpoint_per_group
            );
        }
    }
    if wants(&args, "latency") {
        println!(
            "{}",
            run_latency(args.latency_rate, args.latency_secs, args.partitions)
                .await?
                .line()
        );
    }
    Ok(())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into())
}

const TOPIC: &str = "bench-impressions";

/// Serves a mock cluster with the benchmark topic until standard input closes.
fn broker_child(partitions: i32) -> Result<()> {
    use std::io::{Read, Write};
    let cluster = rdkafka::mocking::MockCluster::new(1)?;
    cluster.create_topic(TOPIC, partitions, 1)?;
    let mut out = std::io::stdout();
    writeln!(out, "{}", cluster.bootstrap_servers())?;
    out.flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(cluster);
    Ok(())
}

/// A mock cluster in a child process, so its CPU time is its own.
struct BrokerProcess {
    child: std::process::Child,
    bootstrap: String,
}

impl BrokerProcess {
    fn start(partitions: i32) -> Result<BrokerProcess> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut child = Command::new(std::env::current_exe()?)
            .args(["bench", "--broker-child", &partitions.to_string()])
            .env("RUNNEL_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let bootstrap = line.trim().to_string();
        if bootstrap.is_empty() {
            let _ = child.kill();
            return Err(Error::Execution("the mock cluster did not start".into()));
        }
        Ok(BrokerProcess { child, bootstrap })
    }

    fn cpu(&self) -> Duration {
        cpu_of_pid(self.child.id())
    }
}

/// The broker of an end-to-end run.
enum Broker {
    /// The mock cluster in a child process.
    Mock(BrokerProcess),
    /// A broker already running, and its process when known.
    External { bootstrap: String, pid: Option<u32> },
}

impl Broker {
    fn bootstrap(&self) -> &str {
        match self {
            Broker::Mock(b) => &b.bootstrap,
            Broker::External { bootstrap, .. } => bootstrap,
        }
    }

    /// The broker's CPU time so far, when its process is known.
    fn cpu(&self) -> Option<Duration> {
        match self {
            Broker::Mock(b) => Some(b.cpu()),
            Broker::External { pid, .. } => pid.map(cpu_of_pid),
        }
    }
}

/// Creates `topic` with `partitions` on an external broker.
async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for r in admin.create_topics(&[new], &AdminOptions::new()).await? {
        r.map_err(|(t, e)| Error::Execution(format!("creating topic {t}: {e}")))?;
    }
    Ok(())
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn producer(bootstrap: &str) -> Result<rdkafka::producer::BaseProducer> {
    Ok(rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("acks", "1")
        .create()?)
}

fn send(
    p: &rdkafka::producer::BaseProducer,
    topic: &str,
    payload: &[u8],
    partition: i32,
) -> Result<()> {
    use rdkafka::producer::{BaseRecord, Producer};
    loop {
        match p.send(
            BaseRecord::<(), [u8]>::to(topic)
                .payload(payload)
                .partition(partition),
        ) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                _,
            )) => {
                p.poll(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e.into()),
        }
        let _ = p.flush(Duration::ZERO);
    }
}

/// Pre-fills a topic of the mock cluster (in its own process) with `ds`, then
/// reads it with Runnel's Kafka source, decoder and window engine, as a query
/// thread does: once polling on the query's own thread (the baseline), once
/// with the source read one poll ahead on a second thread (what queries run).
/// The mock cluster keeps only 5 MiB per partition, so the topic gets enough
/// partitions to hold the whole dataset.
pub async fn run_e2e(
    ds: &Dataset,
    partitions: i32,
    external: Option<(&str, Option<u32>)>,
) -> Result<Vec<RunStats>> {
    use rdkafka::producer::Producer;
    let (broker, topic, partitions) = match external {
        None => {
            let needed = (ds.bytes() / (4 << 20) + 1) as i32;
            let partitions = partitions.max(needed);
            let broker = BrokerProcess::start(partitions)?;
            (Broker::Mock(broker), TOPIC.to_string(), partitions)
        }
        Some((bootstrap, pid)) => {
            let topic = format!("{TOPIC}-{}", std::process::id());
            create_topic(bootstrap, &topic, partitions).await?;
            let broker = Broker::External {
                bootstrap: bootstrap.to_string(),
                pid,
            };
            (broker, topic, partitions)
        }
    };
    let t = Instant::now();
    let p = producer(broker.bootstrap())?;
    for i in 0..ds.len() {
        send(&p, &topic, ds.payload(i), (i % partitions as usize) as i32)?;
        if i % 10_000 == 0 {
            p.poll(Duration::ZERO);
        }
    }
    p.flush(Duration::from_secs(120))?;
    drop(p);
    println!(
        "e2e: produced {} records to {partitions} partitions in {:.1} s",
        ds.len(),
        t.elapsed().as_secs_f64()
    );
    let what = match &broker {
        Broker::Mock(_) => format!("e2e mock cluster ({partitions} partitions)"),
        Broker::External { .. } => format!("e2e external broker ({partitions} partitions)"),
    };
    let mut runs = Vec::new();
    for prefetch in [false, true] {
        let name = match prefetch {
            false => format!("{what}, one thread"),
            true => format!("{what}, prefetch"),
        };
        runs.push(consume_e2e(ds, &broker, &topic, name, prefetch).await?);
    }
    Ok(runs)
}

/// Reads the whole of `topic` from the start through the engine.
async fn consume_e2e(
    ds: &Dataset,
    broker: &Broker,
    topic: &str,
    name: String,
    prefetch: bool,
) -> Result<RunStats> {
    use crate::source::prefetch::Prefetch;
    let (mut engine, mut decoder) = engine_for(QUERY_SQL).await?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let broker_cpu = broker.cpu();
    let meter = Meter::start();
    let src = crate::source::kafka::KafkaSource::connect(
        &crate::connect::kafka::KafkaConn::new(broker.bootstrap()),
        topic,
        "runnel-bench",
        crate::model::StartFrom::Earliest,
        &Default::default(),
        crate::source::kafka::Waiting::until(&stop),
    )?;
    // As a query does: the watermark waits for every partition.
    engine.register_partitions(src.partitions());
    let wait = Duration::from_millis(100);
    // One poll decoded: per partition its records, and the counts of records
    // and of bad ones.
    type Decoded = (Vec<PartitionBatch>, usize, usize);
    let mut decode = move |chunks: Vec<crate::source::Chunk>| -> Result<Decoded> {
        let (mut batches, mut records, mut bad) = (Vec::with_capacity(chunks.len()), 0, 0);
        for chunk in &chunks {
            records += chunk.len();
            let (b, rejected) = decoder.decode(&chunk.payloads());
            bad += rejected.len();
            batches.extend(b.map(|b| PartitionBatch::new(chunk.partition, b)));
        }
        Ok((batches, records, bad))
    };
    enum Reader<F> {
        Direct(crate::source::kafka::KafkaSource, F),
        Ahead(Prefetch<Decoded>),
    }
    let mut src = match prefetch {
        true => Reader::Ahead(Prefetch::spawn(Source::Kafka(src), 100_000, wait, decode)),
        false => Reader::Direct(src, &mut decode),
    };
    let mut stats = RunStats {
        name,
        ..Default::default()
    };
    let mut seen = 0usize;
    let mut idle = Instant::now();
    while seen < ds.len() && idle.elapsed() < Duration::from_secs(10) {
        let (batches, records, bad) = match &mut src {
            Reader::Direct(direct, decode) => decode(direct.poll(100_000, wait)?)?,
            Reader::Ahead(ahead) => ahead.poll(wait)?.unwrap_or_default(),
        };
        if records > 0 {
            idle = Instant::now();
        }
        seen += records;
        stats.bad += bad;
        let out = engine.process_polled(batches, 0).await?;
        stats.rows += out.iter().map(|e| e.batch.num_rows()).sum::<usize>();
        stats.state_bytes = stats.state_bytes.max(engine.state_bytes());
    }
    let out = engine.close_all().await?;
    stats.rows += out.iter().map(|e| e.batch.num_rows()).sum::<usize>();
    drop(src);
    let (wall_s, cpu_s) = meter.stop();
    stats.records = seen;
    stats.wall_s = wall_s;
    stats.cpu_s = cpu_s;
    stats.peak_rss = peak_rss();
    stats.windows = engine
        .counters
        .windows_closed
        .load(std::sync::atomic::Ordering::Relaxed);
    stats.other_cpu_s = broker
        .cpu()
        .zip(broker_cpu)
        .map(|(after, before)| after.saturating_sub(before).as_secs_f64());
    if seen < ds.len() {
        println!(
            "e2e: only {seen} of {} records were read back (the mock cluster dropped some)",
            ds.len()
        );
    }
    Ok(stats)
}

/// The real server reading a live topic that receives `rate` records per
/// second stamped with the wall clock: for each window, the time from the
/// record that moves the watermark past its end (produced at end + delay)
/// until its rows are first returned by `GET /queries/{id}/results`.
pub async fn run_latency(rate: u64, secs: u64, partitions: i32) -> Result<RunStats> {
    use rdkafka::producer::Producer;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let broker = BrokerProcess::start(partitions.max(1))?;
    let data_dir = std::env::temp_dir().join(format!("runnel-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let config = crate::config::Config {
        listen: "127.0.0.1:0".into(),
        brokers: broker.bootstrap.clone(),
        data_dir: data_dir.clone(),
        ..crate::config::Config::default()
    };
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    let local = listener.local_addr()?;
    let url = format!("http://{local}");
    let app = crate::server::App::open(config).await?;
    let stream_sql = STREAM_SQL
        .replace("adnetwork-topic", TOPIC)
        .replace("'earliest'", "'latest'");
    app.execute_sql(&format!("{stream_sql};\nCREATE QUERY bench AS {QUERY_SQL}"))
        .await?;
    let server = tokio::spawn(
        axum::serve(listener, crate::server::http::router(app.clone(), local)).into_future(),
    );
    // Let the query connect before producing.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let bootstrap = broker.bootstrap.clone();
    let (stop2, produced2) = (stop.clone(), produced.clone());
    let prod = std::thread::spawn(move || -> Result<()> {
        let p = producer(&bootstrap)?;
        let mut rng = SmallRng::seed_from_u64(7);
        let start = Instant::now();
        let mut buf = Vec::with_capacity(256);
        let mut n: u64 = 0;
        while !stop2.load(Ordering::Relaxed) {
            let due = start + Duration::from_nanos(n * 1_000_000_000 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let ts = chrono::Utc::now().timestamp_millis();
            for _ in 0..100 {
                buf.clear();
                write_impression(&mut rng, ts, 100, &mut buf);
                send(&p, TOPIC, &buf, (n % partitions.max(1) as u64) as i32)?;
                n += 1;
            }
            p.poll(Duration::ZERO);
            produced2.store(n, Ordering::Relaxed);
        }
        p.flush(Duration::from_secs(30))?;
        Ok(())
    });

    let client = reqwest::Client::new();
    let meter = Meter::start();
    let mut cursor = String::new();
    let mut first_seen: std::collections::BTreeMap<String, i64> = Default::default();
    let mut rows = 0usize;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        let v: serde_json::Value = client
            .get(format!(
                "{url}/queries/bench/results?after={cursor}&limit=10000"
            ))
            .send()
            .await
            .map_err(|e| Error::Execution(e.to_string()))?
            .json()
            .await
            .map_err(|e| Error::Execution(e.to_string()))?;
        let now = chrono::Utc::now().timestamp_millis();
        if let Some(page) = v["rows"].as_array() {
            rows += page.len();
            for r in page {
                if let Some(we) = r["window_end"].as_str() {
                    first_seen.entry(we.to_string()).or_insert(now);
                }
            }
        }
        if let Some(c) = v["cursor"].as_str() {
            cursor = c.to_string();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (wall_s, cpu_s) = meter.stop();
    prod.join()
        .map_err(|_| Error::Execution("producer panicked".into()))??;
    server.abort();
    let app2 = app.clone();
    tokio::task::spawn_blocking(move || app2.shutdown())
        .await
        .map_err(|e| Error::Execution(e.to_string()))?;
    let _ = std::fs::remove_dir_all(&data_dir);
    let mut latency_ms = Vec::new();
    for (we, seen) in &first_seen {
        let Some(end_ms) = parse_ts(we) else { continue };
        latency_ms.push((seen - (end_ms + 5_000)) as f64);
    }
    // The first window began before production did.
    if !latency_ms.is_empty() {
        latency_ms.remove(0);
    }
    Ok(RunStats {
        name: format!("latency, server at {rate} rec/s"),
        records: produced.load(Ordering::Relaxed) as usize,
        wall_s,
        cpu_s,
        rows,
        windows: first_seen.len() as u64,
        peak_rss: peak_rss(),
        latency_ms,
        ..Default::default()
    })
}

fn parse_ts(text: &str) -> Option<i64> {
    let t = text.trim_end_matches('Z').replace('T', " ");
    let fmt = if t.contains('.') {
        "%Y-%m-%d %H:%M:%S%.f"
    } else {
        "%Y-%m-%d %H:%M:%S"
    };
    chrono::NaiveDateTime::parse_from_str(&t, fmt)
        .ok()
        .map(|d| d.and_utc().timestamp_millis())
}
