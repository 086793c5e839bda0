//! Tests of the engine's window state: what one output of the batch plan
//! becomes in a window.

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

/// 12 000 groups: more than one output batch of the batch plan holds
/// (8 192), fewer than make a window merge its states (16 384). The window
/// takes the plan's output as one state, and every group stays whole.
#[tokio::test]
async fn one_output_of_the_batch_plan_is_one_state_of_its_window() {
    let (mut engine, schema) = engine().await;
    let n = 12_000;
    let ts = cast(
        &(Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 9_000))) as ArrayRef),
        schema.field(0).data_type(),
    )
    .unwrap();
    let keys = StringArray::from_iter_values((0..n).map(|i| format!("k{i}")));
    let batch = RecordBatch::try_new(schema, vec![ts, Arc::new(keys)]).unwrap();
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
