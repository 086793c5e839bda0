//! Tests of the engine's window state: what one output of the batch plan
//! becomes in a window, and which batch plan a read's records go to.

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

/// Queries of one read with the same window and `WHERE` keep each batch's
/// records once between them and run their batch plans without the
/// filter; a query whose filter no other shares runs it in its plan, as
/// does one reading a column the others do not. Every way gives the rows
/// the clause means.
#[tokio::test]
async fn queries_sharing_a_filter_run_their_plans_without_it() {
    let stream =
        "CREATE STREAM s (ts TIMESTAMP, k TEXT) WITH (kafka_topic = 's', event_time = 'ts');";
    let engine = |select: &'static str| async move {
        let plan = crate::plan::tests::plan(&format!("{stream} {select}")).await;
        WindowEngine::new(Arc::new(plan), Some(0), 0)
    };
    let by_key = "SELECT k, count(*) AS n FROM s WHERE k <> 'x' GROUP BY k WINDOW 10s";
    let mut by_key = engine(by_key).await;
    let mut total = engine("SELECT count(*) AS n FROM s WHERE k <> 'x' WINDOW 10s").await;
    let mut other = engine("SELECT count(*) AS n FROM s WHERE k <> 'a' WINDOW 10s").await;
    let needs: Vec<FilterNeed> = [&by_key, &total, &other]
        .iter()
        .filter_map(|e| FilterNeed::of(&e.plan, Some(0)))
        .collect();
    assert_eq!(needs.len(), 3);
    let shared = Arc::new(SharedFilters::default());
    shared.set(&needs);

    // 90 records of keys a, b, x in turn, all in the window [0, 10s).
    let schema = Arc::new(Schema::new(by_key.plan.input_schema.fields()[..2].to_vec()));
    let ts: ArrayRef = Arc::new(Int64Array::from_iter_values(0..90));
    let ts = cast(&ts, schema.field(0).data_type()).unwrap();
    let keys = StringArray::from_iter_values((0..90).map(|i| ["a", "b", "x"][i % 3]));
    let batch = RecordBatch::try_new(schema, vec![ts, Arc::new(keys)]).unwrap();
    let read = PartitionBatch {
        windows: WindowMemo::new(shared.clone()),
        ..PartitionBatch::new(0, batch.clone())
    };

    // A run opened for a batch of a read sharing nothing settles when
    // the read's queries begin sharing its filter; one without the filter
    // takes over.
    let mut alone_first =
        engine("SELECT k, count(*) AS n FROM s WHERE k <> 'x' GROUP BY k WINDOW 10s").await;
    let (head, tail) = (batch.slice(0, 30), batch.slice(30, 60));
    let tail = PartitionBatch {
        windows: WindowMemo::new(shared.clone()),
        ..PartitionBatch::new(0, tail)
    };
    let polls = [
        (vec![PartitionBatch::new(0, head)], false),
        (vec![tail], true),
    ];
    for (poll, filtered) in polls {
        alone_first.process_polled(poll, 0).await.unwrap();
        assert_eq!(alone_first.live.as_ref().unwrap().filtered, filtered);
    }
    assert_eq!(
        alone_first.windows[&(10_000, 0)].batches.len(),
        1,
        "settled once"
    );

    // `total` first: it keeps the records for `by_key` too, with the key
    // it does not read itself.
    for e in [&mut total, &mut by_key, &mut other] {
        e.process_polled(vec![read.clone()], 0).await.unwrap();
    }
    assert!(by_key.live.as_ref().unwrap().filtered);
    assert!(total.live.as_ref().unwrap().filtered);
    assert!(!other.live.as_ref().unwrap().filtered);
    // A query that joined the read after the batch was read, with the same
    // filter but reading ts of the records it keeps, which the others do
    // not: the records kept for them lack it, so it filters its own.
    let mut joined =
        engine("SELECT k, count(ts) AS n FROM s WHERE k <> 'x' GROUP BY k WINDOW 10s").await;
    joined.process_polled(vec![read.clone()], 0).await.unwrap();
    assert!(!joined.live.as_ref().unwrap().filtered);

    let counts = |rows: Vec<Emission>| -> Vec<(Option<String>, i64)> {
        let b = &rows[0].batch;
        let n = cast(b.column_by_name("n").unwrap(), &DataType::Int64).unwrap();
        let n = n.as_primitive::<Int64Type>();
        let k = b.column_by_name("k").map(|k| k.as_string::<i32>().clone());
        let mut out: Vec<(Option<String>, i64)> = (0..b.num_rows())
            .map(|i| (k.as_ref().map(|k| k.value(i).to_string()), n.value(i)))
            .collect();
        out.sort();
        out
    };
    // 30 records each of a, b and x: the filter on x leaves 30 of a and
    // of b, 60 in all; the filter on a leaves 60 of b and x.
    let a_b = vec![(Some("a".to_string()), 30), (Some("b".to_string()), 30)];
    assert_eq!(counts(by_key.close_all().await.unwrap()), a_b);
    assert_eq!(counts(alone_first.close_all().await.unwrap()), a_b);
    assert_eq!(counts(joined.close_all().await.unwrap()), a_b);
    assert_eq!(counts(total.close_all().await.unwrap()), [(None, 60)]);
    assert_eq!(counts(other.close_all().await.unwrap()), [(None, 60)]);
}
