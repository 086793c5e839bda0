//! Tests of the engine's window state: what one output of the batch plan
//! becomes in a window, and when a window's groups leave it.

use datafusion::arrow::array::{Int64Array, StringArray};
use datafusion::arrow::datatypes::Schema;

use super::*;

/// The engine of `SELECT k, count(*) AS n ... GROUP BY k WINDOW 10s` over
/// `(ts, k)`, and the stream's schema.
async fn engine() -> (WindowEngine, SchemaRef) {
    let plan = crate::plan::tests::plan(
        "CREATE STREAM s (ts TIMESTAMP, k TEXT) WITH (kafka_topic = 's', event_time = 'ts');
         SELECT k, count(*) AS n FROM s GROUP BY k WINDOW 10s",
    )
    .await;
    // The plan's input is the stream's columns, then the window's.
    let schema = Arc::new(Schema::new(plan.input_schema.fields()[..2].to_vec()));
    (WindowEngine::new(Arc::new(plan), Some(0), 0), schema)
}

/// Records of keys `keys` at event times `ts` (ms).
fn records(schema: &SchemaRef, ts: &[i64], keys: impl Iterator<Item = String>) -> RecordBatch {
    let ts = Arc::new(Int64Array::from(ts.to_vec())) as ArrayRef;
    let ts = cast(&ts, schema.field(0).data_type()).unwrap();
    let keys = Arc::new(StringArray::from_iter_values(keys));
    RecordBatch::try_new(schema.clone(), vec![ts, keys]).unwrap()
}

/// 12 000 groups: more than one output batch of the batch plan holds
/// (8 192), fewer than make a window merge its states (16 384). The window
/// takes the plan's output as one state, and every group stays whole.
#[tokio::test]
async fn one_output_of_the_batch_plan_is_one_state_of_its_window() {
    let (mut engine, schema) = engine().await;
    let n = 12_000;
    let ts: Vec<i64> = (0..n).map(|i| i % 9_000).collect();
    let batch = records(&schema, &ts, (0..n).map(|i| format!("k{i}")));
    assert!(engine.process(0, batch, 0).await.unwrap().is_empty());
    engine.settle().await.unwrap();

    let window = &engine.windows[&(10_000, 0)];
    assert_eq!(
        window.batches.len(),
        1,
        "one state, not one per output batch"
    );
    assert_eq!(window.rows, n as usize);

    let rows = engine.close_all().await.unwrap();
    assert_eq!(rows.len(), 1);
    let counts = rows[0].batch.column_by_name("n").unwrap();
    let counts = cast(counts, &DataType::Int64).unwrap();
    let counts = counts.as_primitive::<Int64Type>();
    assert_eq!(counts.len(), n as usize);
    assert!(counts.values().iter().all(|&c| c == 1), "each key once");
}

/// One poll's batch holds records of two windows, [0, 10 s) and
/// [10 s, 20 s); the watermark then closes the first, and a second poll
/// brings more records of the second, of the same keys. Closing the first
/// settles its own records only: the second window's groups leave the
/// batch plan once, as one state, and each key's count is its three
/// records.
#[tokio::test]
async fn closing_a_window_leaves_the_next_ones_records_running() {
    let (mut engine, schema) = engine().await;
    let keys = || (0..100).map(|i| format!("k{i}"));
    // Keys k0..k99 at 9 s (first window), then twice each at 10 s and 11 s.
    let ts: Vec<i64> = (0..300).map(|i| [9_000, 10_000, 11_000][i / 100]).collect();
    let first = records(&schema, &ts, keys().chain(keys()).chain(keys()));
    let closed = engine.process(0, first, 0).await.unwrap();
    assert_eq!(
        closed.len(),
        1,
        "the watermark (11 s) passed the first window"
    );
    assert_eq!(closed[0].window, Some((0, 10_000)));
    assert_eq!(closed[0].batch.num_rows(), 100);
    assert!(
        !engine.windows.contains_key(&(20_000, 10_000)),
        "still running"
    );

    let second = records(&schema, &[12_000; 100], keys());
    assert!(engine.process(0, second, 0).await.unwrap().is_empty());
    engine.settle().await.unwrap();
    let window = &engine.windows[&(20_000, 10_000)];
    assert_eq!(window.batches.len(), 1, "its groups left the plan once");

    let rows = engine.close_all().await.unwrap();
    let counts = rows[0].batch.column_by_name("n").unwrap();
    let counts = cast(counts, &DataType::Int64).unwrap();
    let counts = counts.as_primitive::<Int64Type>();
    assert_eq!(counts.len(), 100);
    assert!(
        counts.values().iter().all(|&c| c == 3),
        "two at first, one after"
    );
}
