//! Micro-benchmarks of the store: committing one closed window's rows
//! (19 000 groups, the shape of `GROUP BY website, geo` over the bench
//! dataset) into the embedded SQLite store, as a query's commit does.

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use runnel::model::Emission;
use runnel::store::Store;
use runnel::window::delta::Saved;

const ROWS: usize = 19_000;

fn window_rows(schema: &Arc<Schema>, start: i64) -> RecordBatch {
    let ts = |v: i64| Arc::new(TimestampMillisecondArray::from(vec![v; ROWS])) as ArrayRef;
    let cols: Vec<ArrayRef> = vec![
        ts(start),
        ts(start + 10_000),
        Arc::new(StringArray::from_iter_values(
            (0..ROWS).map(|i| format!("website_{}.com", i % 1000)),
        )),
        Arc::new(StringArray::from_iter_values(
            (0..ROWS).map(|i| format!("geo_{}", i / 1000)),
        )),
        Arc::new(Int64Array::from_iter_values(
            (0..ROWS).map(|i| i as i64 % 17),
        )),
        Arc::new(Float64Array::from_iter_values(
            (0..ROWS).map(|i| i as f64 / 7.0),
        )),
    ];
    RecordBatch::try_new(schema.clone(), cols).unwrap()
}

fn benches(c: &mut Criterion) {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    let schema = Arc::new(Schema::new(vec![
        Field::new("window_start", ts.clone(), false),
        Field::new("window_end", ts, false),
        Field::new("website", DataType::Utf8, true),
        Field::new("geo", DataType::Utf8, true),
        Field::new("imps", DataType::Int64, false),
        Field::new("avg_bid", DataType::Float64, true),
    ]));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.save_query("bench", "SELECT ...", &schema).unwrap();
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(ROWS as u64));
    let mut start = 1_700_000_000_000;
    g.bench_function("commit_window_19k_rows", |b| {
        b.iter_batched(
            || {
                start += 10_000;
                Emission {
                    batch: window_rows(&schema, start),
                    cumulative: false,
                    state: None,
                    window: Some((start, start + 10_000)),
                    open_sessions: false,
                }
            },
            |e| {
                let offsets = BTreeMap::from([(0, 0)]);
                store
                    .commit("bench", &[e], &offsets, &Saved::default())
                    .unwrap();
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = store;
    config = Criterion::default().sample_size(20);
    targets = benches
}
criterion_main!(store);
