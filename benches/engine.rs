//! Micro-benchmarks of the engine's stages on the ad-network query:
//! JSON decoding, the per-batch plan, window merge and close, and
//! `approx_distinct` updates.

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use datafusion::arrow::array::{ArrayRef, TimestampMillisecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::logical_expr::{Accumulator, EmitTo, GroupsAccumulator};
use runnel::bench::{Dataset, QUERY_SQL, parse_query};
use runnel::format::json::JsonDecoder;
use runnel::plan::ContinuousPlan;
use runnel::udaf::hll::{ApproxDistinctAccumulator, ApproxDistinctGroupsAccumulator};

const N: usize = 20_000;

fn setup() -> (
    Dataset,
    Arc<ContinuousPlan>,
    Arc<Schema>,
    tokio::runtime::Runtime,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let ds = Dataset::generate(N, 100, 42);
    let (stream, select) = parse_query(QUERY_SQL).unwrap();
    let plan = Arc::new(
        rt.block_on(ContinuousPlan::build(&stream, &select))
            .unwrap(),
    );
    let schema = Arc::new(Schema::new(stream.fields()));
    (ds, plan, schema, rt)
}

fn decoded(ds: &Dataset, schema: &Arc<Schema>) -> RecordBatch {
    let mut d = JsonDecoder::new(schema.clone()).unwrap();
    d.decode(&ds.payloads(0..ds.len())).0.unwrap()
}

/// A decoded batch with its window columns (all records in one 10 s window).
fn expanded(plan: &ContinuousPlan, batch: &RecordBatch) -> RecordBatch {
    let ts = cast(batch.column(0), &DataType::Int64).unwrap();
    let ts = ts
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int64Array>()
        .unwrap();
    let starts: Vec<i64> = ts
        .values()
        .iter()
        .map(|t| t.div_euclid(10_000) * 10_000)
        .collect();
    let ends: Vec<i64> = starts.iter().map(|s| s + 10_000).collect();
    let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
    cols.push(Arc::new(TimestampMillisecondArray::from(starts)));
    cols.push(Arc::new(TimestampMillisecondArray::from(ends)));
    RecordBatch::try_new(plan.input_schema.clone(), cols).unwrap()
}

/// `batch` with window columns putting every record in the 10 s window
/// starting at `start`.
fn expanded_into(plan: &ContinuousPlan, batch: &RecordBatch, start: i64) -> RecordBatch {
    let n = batch.num_rows();
    let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
    cols.push(Arc::new(TimestampMillisecondArray::from(vec![start; n])));
    cols.push(Arc::new(TimestampMillisecondArray::from(vec![
        start
            + 10_000;
        n
    ])));
    RecordBatch::try_new(plan.input_schema.clone(), cols).unwrap()
}

fn benches(c: &mut Criterion) {
    let (ds, plan, schema, rt) = setup();
    let payloads = ds.payloads(0..ds.len());

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(N as u64));
    let mut decoder = JsonDecoder::new(schema.clone()).unwrap();
    g.bench_function("json_20k", |b| b.iter(|| decoder.decode(&payloads)));
    g.finish();

    let batch = decoded(&ds, &schema);
    let input = expanded(&plan, &batch);
    let mut g = c.benchmark_group("plan");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("partial_20k", |b| {
        b.iter(|| rt.block_on(plan.partial(input.clone())).unwrap())
    });
    g.finish();

    // Partial states of 10 batches of the same window, merged and closed.
    let states: Vec<RecordBatch> = (0..10)
        .flat_map(|_| rt.block_on(plan.partial(input.clone())).unwrap())
        .collect();
    let mut g = c.benchmark_group("window");
    g.throughput(Throughput::Elements(
        states.iter().map(|s| s.num_rows() as u64).sum(),
    ));
    g.bench_function("merge_10_partials", |b| {
        b.iter_batched(
            || states.clone(),
            |s| rt.block_on(plan.reduce(s)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("close_10_partials", |b| {
        b.iter_batched(
            || states.clone(),
            |s| rt.block_on(plan.close(s)).unwrap(),
            BatchSize::SmallInput,
        )
    });

    // One full window as the latency run closes it: a million records
    // (1,900 groups of ~500 distinct cookies each) merged into one batch
    // of partial states, then finished into its rows.
    let big = Dataset::generate(1_000_000, 100, 7);
    let mut decoder = JsonDecoder::new(schema.clone()).unwrap();
    let partials: Vec<RecordBatch> = (0..big.len())
        .step_by(N)
        .flat_map(|i| {
            let batch = decoder
                .decode(&big.payloads(i..(i + N).min(big.len())))
                .0
                .unwrap();
            let one_window = expanded_into(&plan, &batch, 0);
            rt.block_on(plan.partial(one_window)).unwrap()
        })
        .collect();
    let merged = rt.block_on(plan.reduce(partials)).unwrap();
    g.throughput(Throughput::Elements(
        merged.iter().map(|s| s.num_rows() as u64).sum(),
    ));
    g.bench_function("close_merged_1m_records", |b| {
        b.iter_batched(
            || merged.clone(),
            |s| rt.block_on(plan.close(s)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let cookies: ArrayRef = batch.column(6).clone();
    let mut g = c.benchmark_group("hll");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("update_20k_cookies", |b| {
        b.iter_batched(
            ApproxDistinctAccumulator::new,
            |mut acc| {
                acc.update_batch(std::slice::from_ref(&cookies)).unwrap();
                acc
            },
            BatchSize::SmallInput,
        )
    });
    // A partial step of a large GROUP BY: 20k cookies over 1000 groups,
    // then every group's state.
    let groups: Vec<usize> = (0..N).map(|i| (i * 7919) % 1000).collect();
    g.bench_function("groups_update_state_20k_cookies_1000_groups", |b| {
        b.iter_batched(
            ApproxDistinctGroupsAccumulator::new,
            |mut acc| {
                acc.update_batch(std::slice::from_ref(&cookies), &groups, None, 1000)
                    .unwrap();
                acc.state(EmitTo::All).unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = engine;
    config = Criterion::default().sample_size(20);
    targets = benches
}
criterion_main!(engine);
