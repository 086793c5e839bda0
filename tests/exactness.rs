//! Exactness of windowed aggregates against a plain-Rust oracle.
//!
//! Records are fed to a [`WindowEngine`] in batches of uneven sizes over
//! several partitions, so partial states are split across batches, windows
//! and compactions; the emitted rows must equal what a direct computation
//! over the same records gives.
//!
//! Run: `cargo test --test exactness`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use runnel::format::json::JsonDecoder;
use runnel::generate::{GenKind, Generator};
use runnel::model::Emission;
use runnel::plan::ContinuousPlan;
use runnel::sql::{Statement, parse_sql};
use runnel::window::WindowEngine;

/// A deterministic pseudo-random sequence (64-bit LCG, high bits).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    /// A batch size in `1..=5000`, often small.
    fn batch_size(&mut self) -> usize {
        let r = self.next();
        let size = if r.is_multiple_of(4) {
            1 + r / 4 % 50
        } else {
            1 + r / 4 % 5_000
        };
        size as usize
    }
}

/// Builds an engine and a decoder schema from a `CREATE STREAM` and a `SELECT`.
async fn engine_for(sql: &str) -> (WindowEngine, Arc<Schema>) {
    let stmts = parse_sql(sql).unwrap();
    let Statement::CreateStream(stream) = &stmts[0].stmt else {
        panic!("first statement must be CREATE STREAM")
    };
    let (Statement::Select(select) | Statement::CreateQuery { select, .. }) = &stmts[1].stmt else {
        panic!("second statement must be a SELECT")
    };
    let plan = Arc::new(ContinuousPlan::build(stream, select).await.unwrap());
    let schema = Arc::new(Schema::new(stream.fields()));
    let et = stream
        .event_time
        .as_ref()
        .map(|e| schema.index_of(e).unwrap());
    let engine = WindowEngine::new(plan, et, stream.watermark_delay_ms);
    (engine, schema)
}

/// Feeds `payloads` of `partition` to the engine as one batch.
async fn feed(
    engine: &mut WindowEngine,
    decoder: &mut JsonDecoder,
    partition: i32,
    payloads: &[&[u8]],
    out: &mut Vec<Emission>,
) {
    let (batch, bad) = decoder.decode(payloads);
    assert!(bad.is_empty(), "bad input records: {bad:?}");
    let batch = batch.expect("a batch of good records");
    assert_eq!(batch.num_rows(), payloads.len());
    out.extend(engine.process(partition, batch, 0).await.unwrap());
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> &'a Arc<dyn Array> {
    let i = batch
        .schema()
        .index_of(name)
        .unwrap_or_else(|_| panic!("no column {name} in {:?}", batch.schema()));
    batch.column(i)
}

fn i64_values(batch: &RecordBatch, name: &str) -> Vec<i64> {
    let c = cast(column(batch, name), &DataType::Int64).unwrap();
    assert_eq!(c.null_count(), 0, "{name} has NULLs");
    c.as_primitive::<Int64Type>().values().to_vec()
}

fn f64_values(batch: &RecordBatch, name: &str) -> Vec<f64> {
    let c = column(batch, name);
    assert_eq!(c.data_type(), &DataType::Float64, "type of {name}");
    assert_eq!(c.null_count(), 0, "{name} has NULLs");
    c.as_primitive::<Float64Type>().values().to_vec()
}

fn str_values(batch: &RecordBatch, name: &str) -> Vec<String> {
    let c = cast(column(batch, name), &DataType::Utf8).unwrap();
    assert_eq!(c.null_count(), 0, "{name} has NULLs");
    c.as_string::<i32>()
        .iter()
        .map(|s| s.unwrap().to_string())
        .collect()
}

fn close_rel(actual: f64, expected: f64, tol: f64) -> bool {
    (actual - expected).abs() <= tol * expected.abs().max(f64::MIN_POSITIVE)
}

#[derive(Debug, Default)]
struct Agg {
    n: i64,
    sum: f64,
    lo: f64,
    hi: f64,
}

const IMPRESSIONS: i64 = 200_000;
const PARTITIONS: i64 = 4;
/// Window-aligned epoch ms (a multiple of both 10 s and 1 h).
const BASE_MS: i64 = 1_699_999_200_000;

#[tokio::test]
async fn aggregates_match_oracle() {
    let sql = "CREATE STREAM impressions (ts TIMESTAMP, publisher TEXT, advertiser TEXT, \
               website TEXT, geo TEXT, bid DOUBLE, cookie TEXT) \
               WITH (kafka_topic = 'x', event_time = 'ts');\n\
               SELECT publisher, geo, count(*) AS n, sum(bid) AS s, avg(bid) AS a, \
               min(bid) AS lo, max(bid) AS hi \
               FROM impressions WHERE geo <> 'unknown' GROUP BY publisher, geo WINDOW 10s";
    let (mut engine, schema) = engine_for(sql).await;

    // Record i at BASE + 0.3 ms * i (floored), in partition i % 4: event
    // times increase within each partition and span 60 s, six windows.
    let mut generator = Generator::new(GenKind::Impressions, 7);
    let mut per_partition: Vec<Vec<Vec<u8>>> = vec![Vec::new(); PARTITIONS as usize];
    let mut oracle: BTreeMap<(i64, String, String), Agg> = BTreeMap::new();
    for i in 0..IMPRESSIONS {
        let ts = BASE_MS + i * 3 / 10;
        let mut buf = Vec::with_capacity(160);
        generator.write_record(ts, &mut buf);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["ts"].as_i64(), Some(ts));
        let geo = v["geo"].as_str().unwrap();
        if geo != "unknown" {
            let publisher = v["publisher"].as_str().unwrap().to_string();
            let bid = v["bid"].as_f64().unwrap();
            let start = ts.div_euclid(10_000) * 10_000;
            let a = oracle
                .entry((start, publisher, geo.to_string()))
                .or_insert(Agg {
                    lo: f64::INFINITY,
                    hi: f64::NEG_INFINITY,
                    ..Agg::default()
                });
            a.n += 1;
            a.sum += bid;
            a.lo = a.lo.min(bid);
            a.hi = a.hi.max(bid);
        }
        per_partition[(i % PARTITIONS) as usize].push(buf);
    }
    let windows: BTreeSet<i64> = oracle.keys().map(|k| k.0).collect();
    assert_eq!(windows.len(), 6, "test data should span six windows");
    assert!(
        oracle.len() >= 6 * 1_800,
        "too few groups: {}",
        oracle.len()
    );

    // Round-robin over partitions, each turn a batch of uneven size. The
    // first round is one record each, so every partition takes part in the
    // watermark before any window can close.
    let mut decoders: Vec<JsonDecoder> = (0..PARTITIONS)
        .map(|_| JsonDecoder::new(schema.clone()).unwrap())
        .collect();
    let mut next = vec![0usize; PARTITIONS as usize];
    let mut sizes = Lcg(0x5EED);
    let mut out: Vec<Emission> = Vec::new();
    let mut batches = 0;
    let mut first_round = true;
    while next
        .iter()
        .zip(&per_partition)
        .any(|(n, recs)| *n < recs.len())
    {
        for p in 0..PARTITIONS as usize {
            let recs = &per_partition[p];
            if next[p] >= recs.len() {
                continue;
            }
            let size = if first_round { 1 } else { sizes.batch_size() };
            let end = (next[p] + size).min(recs.len());
            let payloads: Vec<&[u8]> = recs[next[p]..end].iter().map(Vec::as_slice).collect();
            feed(&mut engine, &mut decoders[p], p as i32, &payloads, &mut out).await;
            next[p] = end;
            batches += 1;
        }
        first_round = false;
    }
    assert!(batches > 50, "only {batches} batches");
    let closed_while_running = out.len();
    out.extend(engine.close_all().await.unwrap());
    assert!(
        closed_while_running > 0,
        "no window closed while records were flowing"
    );
    assert!(out.iter().all(|e| !e.cumulative));
    assert_eq!(engine.open_windows(), 0);

    let mut seen: HashSet<(i64, String, String)> = HashSet::new();
    let mut mismatches: Vec<String> = Vec::new();
    for e in &out {
        let b = &e.batch;
        let starts = i64_values(b, "window_start");
        let ends = i64_values(b, "window_end");
        let publishers = str_values(b, "publisher");
        let geos = str_values(b, "geo");
        let ns = i64_values(b, "n");
        let ss = f64_values(b, "s");
        let avgs = f64_values(b, "a");
        let los = f64_values(b, "lo");
        let his = f64_values(b, "hi");
        for r in 0..b.num_rows() {
            let key = (starts[r], publishers[r].clone(), geos[r].clone());
            assert_eq!(ends[r], starts[r] + 10_000, "window bounds of {key:?}");
            assert!(seen.insert(key.clone()), "{key:?} emitted twice");
            let Some(x) = oracle.get(&key) else {
                mismatches.push(format!("{key:?}: emitted but not expected"));
                continue;
            };
            let avg = x.sum / x.n as f64;
            if ns[r] != x.n
                || los[r] != x.lo
                || his[r] != x.hi
                || !close_rel(ss[r], x.sum, 1e-9)
                || !close_rel(avgs[r], avg, 1e-9)
            {
                mismatches.push(format!(
                    "{key:?}: got n={} s={} a={} lo={} hi={}, expected n={} s={} a={} lo={} hi={}",
                    ns[r], ss[r], avgs[r], los[r], his[r], x.n, x.sum, avg, x.lo, x.hi
                ));
            }
        }
    }
    for key in oracle.keys() {
        if !seen.contains(key) {
            mismatches.push(format!("{key:?}: expected but not emitted"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first ones:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(20)].join("\n")
    );

    let c = &engine.counters;
    assert_eq!(c.records_in.load(Ordering::Relaxed), IMPRESSIONS as u64);
    assert_eq!(c.late_records.load(Ordering::Relaxed), 0);
    assert_eq!(c.bad_records.load(Ordering::Relaxed), 0);
    assert_eq!(c.windows_closed.load(Ordering::Relaxed), 6);
    assert_eq!(c.rows_emitted.load(Ordering::Relaxed), oracle.len() as u64);
}

#[tokio::test]
async fn approx_distinct_within_two_percent() {
    const DISTINCT: u64 = 100_000;
    const RECORDS: u64 = 2 * DISTINCT;
    let sql = "CREATE STREAM s (ts TIMESTAMP, k TEXT, v TEXT) \
               WITH (kafka_topic = 'x', event_time = 'ts');\n\
               SELECT k, approx_distinct(v) AS u, count(DISTINCT v) AS exact \
               FROM s GROUP BY k WINDOW 1h";
    let (mut engine, schema) = engine_for(sql).await;

    // Record j carries value_(perm(j) mod 100000), with perm a permutation
    // of 0..200000 (7919 is coprime with 200000): every value appears
    // exactly twice, far apart and in scrambled order. All records fall in
    // the first two seconds of one hour.
    let records: Vec<Vec<u8>> = (0..RECORDS)
        .map(|j| {
            let value = (j * 7_919 + 13) % RECORDS % DISTINCT;
            let ts = BASE_MS + (j / 100) as i64;
            format!(r#"{{"ts": {ts}, "k": "a", "v": "value_{value}"}}"#).into_bytes()
        })
        .collect();

    let mut decoder = JsonDecoder::new(schema).unwrap();
    let mut sizes = Lcg(0xD15_71C7);
    let mut out: Vec<Emission> = Vec::new();
    let mut start = 0;
    let mut batches = 0;
    while start < records.len() {
        // Up to 10_000 records per batch: at least 20 batches, enough to
        // force compaction of the window's partial states.
        let end = (start + sizes.batch_size() * 2).min(records.len());
        let payloads: Vec<&[u8]> = records[start..end].iter().map(Vec::as_slice).collect();
        feed(&mut engine, &mut decoder, 0, &payloads, &mut out).await;
        start = end;
        batches += 1;
    }
    assert!(batches >= 20, "only {batches} batches");
    assert!(out.is_empty(), "the window closed before the stream ended");
    out.extend(engine.close_all().await.unwrap());
    assert_eq!(out.len(), 1, "one window, one emission");
    let b = &out[0].batch;
    assert_eq!(b.num_rows(), 1);
    assert_eq!(str_values(b, "k"), ["a"]);
    assert_eq!(i64_values(b, "window_start"), [BASE_MS]);
    assert_eq!(i64_values(b, "window_end"), [BASE_MS + 3_600_000]);
    let u = i64_values(b, "u")[0];
    let exact = i64_values(b, "exact")[0];
    assert_eq!(exact, DISTINCT as i64, "count(DISTINCT v)");
    let error = (u - DISTINCT as i64).abs() as f64 / DISTINCT as f64;
    assert!(
        error <= 0.02,
        "approx_distinct(v) = {u}, {:.2} % off {DISTINCT}",
        error * 100.0
    );

    let c = &engine.counters;
    assert_eq!(c.records_in.load(Ordering::Relaxed), RECORDS);
    assert_eq!(c.late_records.load(Ordering::Relaxed), 0);
    assert_eq!(c.bad_records.load(Ordering::Relaxed), 0);
    assert_eq!(c.windows_closed.load(Ordering::Relaxed), 1);
}

/// A checkpoint cut short or damaged anywhere is refused with a message
/// when restored, never a panic, and an intact one restores the same state.
#[tokio::test]
async fn damaged_checkpoints_are_refused_with_a_message() {
    let sql = "CREATE STREAM s (ts TIMESTAMP, k TEXT, v TEXT) \
               WITH (kafka_topic = 'x', event_time = 'ts');\n\
               SELECT k, count(*) AS n, approx_distinct(v) AS u FROM s GROUP BY k WINDOW 10s";
    let (mut engine, schema) = engine_for(sql).await;
    let mut decoder = JsonDecoder::new(schema).unwrap();
    let records: Vec<Vec<u8>> = (0..200)
        .map(|i| format!(r#"{{"ts": {}, "k": "k{}", "v": "v{i}"}}"#, i * 100, i % 7).into_bytes())
        .collect();
    let payloads: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    let mut out = Vec::new();
    feed(&mut engine, &mut decoder, 0, &payloads, &mut out).await;
    let bytes = engine.checkpoint().await.unwrap();
    let (mut fresh, _) = engine_for(sql).await;
    fresh.restore(&bytes).unwrap();
    assert_eq!(fresh.checkpoint().await.unwrap(), bytes);
    for cut in 0..bytes.len() {
        let (mut e, _) = engine_for(sql).await;
        let err = e.restore(&bytes[..cut]).unwrap_err().to_string();
        assert!(err.contains("checkpoint is corrupt"), "cut at {cut}: {err}");
    }
    // Bytes flipped anywhere: refused or restored, never a panic.
    for at in (0..bytes.len()).step_by(7) {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x5a;
        let (mut e, _) = engine_for(sql).await;
        if let Err(err) = e.restore(&damaged) {
            assert!(err.to_string().contains("checkpoint is corrupt"), "{err}");
        }
    }
}
