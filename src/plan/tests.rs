//! Tests of the continuous query plans: concurrent executions each read
//! their own input, and a stream read twice in one query is refused.

use super::*;
use crate::sql::{Statement, parse_sql};
use datafusion::arrow::array::{Array, ArrayRef, Int64Array, StringArray};
use datafusion::arrow::compute::{cast, concat_batches};

/// The plan of the `SELECT` after the `CREATE STREAM` of `sql`.
pub(crate) async fn plan(sql: &str) -> ContinuousPlan {
    let stmts = parse_sql(sql).unwrap();
    let Statement::CreateStream(stream) = &stmts[0].stmt else {
        panic!("first statement must be CREATE STREAM")
    };
    let Statement::Select(select) = &stmts[1].stmt else {
        panic!("second statement must be a SELECT")
    };
    ContinuousPlan::build(stream, select).await.unwrap()
}

/// `rows` records of key `key`, values 1..=rows, all in window [0, 10s).
fn input(plan: &ContinuousPlan, key: &str, rows: usize) -> RecordBatch {
    let columns: [ArrayRef; 5] = [
        Arc::new(Int64Array::from_iter_values(
            (0..rows as i64).map(|i| i * 10),
        )),
        Arc::new(StringArray::from(vec![key; rows])),
        Arc::new(Int64Array::from_iter_values(1..=rows as i64)),
        Arc::new(Int64Array::from(vec![0; rows])),
        Arc::new(Int64Array::from(vec![10_000; rows])),
    ];
    let columns = columns
        .iter()
        .zip(plan.input_schema.fields())
        .map(|(c, f)| cast(c, f.data_type()).unwrap())
        .collect();
    RecordBatch::try_new(plan.input_schema.clone(), columns).unwrap()
}

fn column<T: Array + Clone + 'static>(b: &RecordBatch, name: &str, ty: &DataType) -> T {
    let c = cast(b.column_by_name(name).unwrap(), ty).unwrap();
    c.as_any().downcast_ref::<T>().unwrap().clone()
}

/// The engine's thread closes windows while HTTP handlers run roll-ups
/// through the same plan: each execution must read its own input.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_executions_read_their_own_input() {
    let plan = Arc::new(
        plan(
            "CREATE STREAM s (ts TIMESTAMP, k TEXT, v BIGINT) WITH (kafka_topic = 's', event_time = 'ts');
             SELECT k, count(*) AS n, sum(v) AS total FROM s GROUP BY k WINDOW 10s",
        )
        .await,
    );
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let plan = plan.clone();
            tokio::spawn(async move {
                let key = format!("k{task}");
                for round in 0..100 {
                    let rows = 1 + (task * 7 + round) % 5;
                    let states = plan.partial(input(&plan, &key, rows)).await.unwrap();
                    let states = plan.reduce(states).await.unwrap();
                    let out = plan.close(states).await.unwrap();
                    let out = concat_batches(&plan.output_schema, &out).unwrap();
                    assert_eq!(out.num_rows(), 1, "{key} round {round}: {out:?}");
                    let k: StringArray = column(&out, "k", &DataType::Utf8);
                    let n: Int64Array = column(&out, "n", &DataType::Int64);
                    let total: Int64Array = column(&out, "total", &DataType::Int64);
                    assert_eq!(k.value(0), key, "round {round}");
                    assert_eq!(n.value(0), rows as i64, "{key} round {round}");
                    assert_eq!(
                        total.value(0),
                        (rows * (rows + 1) / 2) as i64,
                        "{key} round {round}"
                    );
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Every execution gives its batch to one stream leaf: a query reading
/// its stream twice is refused rather than left reading nothing the
/// second time.
#[tokio::test]
async fn a_stream_read_twice_is_refused() {
    let stmts = parse_sql(
        "CREATE STREAM s (ts TIMESTAMP, k TEXT, v BIGINT) WITH (kafka_topic = 's', event_time = 'ts');
         SELECT k, count(*) AS n FROM s WHERE k IN (SELECT k FROM s WHERE v > 1) GROUP BY k WINDOW 10s",
    )
    .unwrap();
    let (Statement::CreateStream(stream), Statement::Select(select)) =
        (&stmts[0].stmt, &stmts[1].stmt)
    else {
        panic!("a stream and a select")
    };
    let e = ContinuousPlan::build(stream, select).await.unwrap_err();
    assert!(e.to_string().contains("reads its stream once"), "{e}");
}

async fn plan_error(select: &str) -> Error {
    let stmts = parse_sql(&format!(
        "CREATE STREAM s (ts TIMESTAMP, k TEXT, v BIGINT) WITH (kafka_topic = 's', event_time = 'ts'); {select}"
    ))
    .unwrap();
    let (Statement::CreateStream(stream), Statement::Select(select)) =
        (&stmts[0].stmt, &stmts[1].stmt)
    else {
        panic!("a stream and a select")
    };
    ContinuousPlan::build(stream, select).await.unwrap_err()
}

/// An aggregate's arguments that it checks only when it starts
/// accumulating are checked when the query is planned: refused at CREATE
/// rather than failing the query at its first record.
#[tokio::test]
async fn aggregate_arguments_are_checked_when_planned() {
    for (select, says) in [
        ("approx_percentile_cont(v, 2)", "between 0.0 and 1.0"),
        ("approx_percentile_cont(v, v)", "literal"),
    ] {
        let e = plan_error(&format!(
            "SELECT k, {select} AS p FROM s GROUP BY k WINDOW 10s"
        ))
        .await;
        assert!(e.to_string().contains(says), "{select}: {e}");
        assert!(matches!(e, Error::Sql { .. }), "{select}: {e:?}");
    }
    plan("CREATE STREAM s (ts TIMESTAMP, k TEXT, v BIGINT) WITH (kafka_topic = 's', event_time = 'ts');
          SELECT k, approx_percentile_cont(v, 0.5) AS p, approx_distinct(k) AS d FROM s GROUP BY k WINDOW 10s")
        .await;
}

/// Early rows add a `final` column after the query's own; sessions, whose
/// bounds move while open, and a query with its own `final` column are
/// refused with a message saying why.
#[tokio::test]
async fn early_rows_add_a_final_column() {
    let p = plan(
        "CREATE STREAM s (ts TIMESTAMP, k TEXT, v BIGINT) WITH (kafka_topic = 's', event_time = 'ts');
         SELECT k, count(*) AS n FROM s GROUP BY k WINDOW 1h EMIT EVERY 10s",
    )
    .await;
    assert_eq!(p.early_ms, Some(10_000));
    let names: Vec<&String> = p.output_schema.fields().iter().map(|f| f.name()).collect();
    assert_eq!(names, ["window_start", "window_end", "k", "n", "final"]);
    assert!(
        p.explain()
            .starts_with("Window: TUMBLING 1h EMIT EVERY 10s")
    );
    let e =
        plan_error("SELECT k, count(*) AS final FROM s GROUP BY k WINDOW 1m EMIT EVERY 1s").await;
    assert!(e.to_string().contains("rename"), "{e}");
}

/// Closing several windows' states in one run gives each window the rows
/// a run of its own gives, whenever the close plan says it may (`HAVING`,
/// `ORDER BY` without a limit); with `ORDER BY ... LIMIT` it may not (one
/// limit over all windows would cut some windows' rows).
#[tokio::test]
async fn windows_closed_together_get_the_rows_of_their_own_close() {
    let stream = "CREATE STREAM s (ts TIMESTAMP, k TEXT, v BIGINT) WITH (kafka_topic = 's', event_time = 'ts');";
    let cases = [
        (
            "SELECT k, count(*) AS n, sum(v) AS total FROM s GROUP BY k WINDOW 10s",
            true,
        ),
        (
            "SELECT k, sum(v) AS total FROM s GROUP BY k HAVING sum(v) > 3 WINDOW 10s",
            true,
        ),
        (
            "SELECT k, count(*) AS n FROM s GROUP BY k WINDOW 10s ORDER BY n DESC, k",
            true,
        ),
        (
            "SELECT k, count(*) AS n FROM s GROUP BY k WINDOW 10s ORDER BY n DESC, k LIMIT 2",
            false,
        ),
        ("SELECT k FROM s GROUP BY k WINDOW 10s LIMIT 2", false),
    ];
    for (select, apart) in cases {
        let p = plan(&format!("{stream} {select}")).await;
        assert_eq!(p.closes_windows_apart(), apart, "{select}");
        // Window w (of three) holds key k{j} 1 + (w + j) % 4 times, each
        // record's value its key's number plus the window's.
        let mut recs: Vec<(i64, String, i64)> = Vec::new();
        for w in 0..3i64 {
            for j in 0..4i64 {
                for r in 0..1 + (w + j) % 4 {
                    recs.push((w * 10_000 + r, format!("k{j}"), j + w));
                }
            }
        }
        let col = |f: &dyn Fn(&(i64, String, i64)) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(recs.iter().map(f)))
        };
        let columns: [ArrayRef; 5] = [
            col(&|r| r.0),
            Arc::new(StringArray::from_iter_values(
                recs.iter().map(|r| r.1.clone()),
            )),
            col(&|r| r.2),
            col(&|r| r.0 / 10_000 * 10_000),
            col(&|r| r.0 / 10_000 * 10_000 + 10_000),
        ];
        let columns = (columns.iter().zip(p.input_schema.fields()))
            .map(|(c, f)| cast(c, f.data_type()).unwrap())
            .collect();
        let batch = RecordBatch::try_new(p.input_schema.clone(), columns).unwrap();
        let states = p.partial(batch).await.unwrap();
        let together = p
            .close(p.reduce(states.clone()).await.unwrap())
            .await
            .unwrap();
        let together = concat_batches(&p.output_schema, &together).unwrap();
        let mut together = by_window(&together);
        let states = concat_batches(&p.state_schema, &states).unwrap();
        let mut alone_rows = 0;
        for (key, state) in by_window(&states) {
            let alone = p.close(vec![state]).await.unwrap();
            let alone = concat_batches(&p.output_schema, &alone).unwrap();
            alone_rows += alone.num_rows();
            let empty = RecordBatch::new_empty(p.output_schema.clone());
            let got = together.remove(&key).unwrap_or(empty);
            if apart {
                assert_eq!(got, alone, "{select}: window {key:?}");
            }
        }
        assert!(together.is_empty(), "{select}: rows of no window");
        // Every case has rows to compare; the limit cuts rows alone.
        assert!(alone_rows >= 6, "{select}: {alone_rows} rows");
    }
}

/// The rows (or states) of `b` by their window's start (its first column).
fn by_window(b: &RecordBatch) -> std::collections::HashMap<i64, RecordBatch> {
    use datafusion::arrow::compute::filter_record_batch;
    let starts = cast(b.column(0), &DataType::Int64).unwrap();
    let starts = starts.as_any().downcast_ref::<Int64Array>().unwrap();
    let keys: std::collections::BTreeSet<i64> = starts.values().iter().copied().collect();
    keys.into_iter()
        .map(|k| {
            let mask = BooleanArray::from_iter(starts.values().iter().map(|s| Some(*s == k)));
            (k, filter_record_batch(b, &mask).unwrap())
        })
        .collect()
}

/// The rows of a window of `states`, in the order of their column `k`.
async fn rows_by_k(p: &ContinuousPlan, states: Vec<RecordBatch>) -> RecordBatch {
    let out = p.close(p.reduce(states).await.unwrap()).await.unwrap();
    let out = concat_batches(&p.output_schema, &out).unwrap();
    let k = out.column_by_name("k").expect("a column k");
    datafusion::arrow::compute::sort_to_indices(k, None, None)
        .and_then(|idx| datafusion::arrow::compute::take_record_batch(&out, &idx))
        .unwrap()
}

/// A `WHERE` straight over the stream can run before the batch plan, so
/// the queries sharing a read can filter once; the plan without it then
/// takes the records it keeps, the plan with it every record, and both
/// give the rows the clause means. A volatile predicate stays in the
/// plan: each query draws its own.
#[tokio::test]
async fn a_filter_over_the_stream_can_run_before_the_batch_plan() {
    let stream = "CREATE STREAM s (ts TIMESTAMP, k TEXT, v BIGINT) WITH (kafka_topic = 's', event_time = 'ts');";
    let p = plan(&format!(
        "{stream} SELECT k, count(*) AS n, sum(v) AS total FROM s
         WHERE v % 3 <> 0 AND k <> 'b' GROUP BY k WINDOW 10s"
    ))
    .await;
    let explain = p.explain();
    let filter = p
        .filter()
        .unwrap_or_else(|| panic!("not lifted: {explain}"));
    let lifted = format!("{}", displayable(p.batch_plan(true).as_ref()).indent(true));
    assert!(!lifted.contains("FilterExec"), "{lifted}");
    assert!(explain.contains("FilterExec"), "{explain}");
    assert!(
        explain.contains(&format!(
            "Filter run before the per-batch plan when queries of the read share it: {}",
            filter.predicate
        )),
        "{explain}"
    );
    // Of ts, k, v, window_start, window_end the plan reads all but ts of
    // the records kept (k and v to aggregate, the window to group by).
    assert_eq!(filter.columns, [1, 2, 3, 4]);
    // Keys a, b and c with v = 1..=9 each, then one NULL v for a.
    let mut keys: Vec<&str> = ["a", "b", "c"].iter().flat_map(|k| [*k; 9]).collect();
    let mut values: Vec<Option<i64>> = (0..3).flat_map(|_| (1..=9).map(Some)).collect();
    keys.push("a");
    values.push(None);
    let n = keys.len();
    let columns: [ArrayRef; 5] = [
        Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i * 10))),
        Arc::new(StringArray::from(keys)),
        Arc::new(Int64Array::from(values)),
        Arc::new(Int64Array::from(vec![0; n])),
        Arc::new(Int64Array::from(vec![10_000; n])),
    ];
    let columns = (columns.iter().zip(p.input_schema.fields()))
        .map(|(c, f)| cast(c, f.data_type()).unwrap())
        .collect();
    let batch = RecordBatch::try_new(p.input_schema.clone(), columns).unwrap();
    let kept = p.keep(batch.clone()).unwrap();
    // v not a multiple of 3 (1, 2, 4, 5, 7, 8) of a and c; b's and the
    // NULL v's (`NULL <> 0` is NULL, which WHERE drops) are left out.
    assert_eq!(kept.num_rows(), 12);
    // A column not read of the records kept is not kept.
    assert_eq!(kept.column(0).null_count(), 12);
    let mut lifted = p.open_partial(true).unwrap();
    let mut states = lifted.push(kept).unwrap();
    states.extend(lifted.finish().await.unwrap());
    let mut whole = p.open_partial(false).unwrap();
    let mut states_whole = whole.push(batch).unwrap();
    states_whole.extend(whole.finish().await.unwrap());
    let out = rows_by_k(&p, states).await;
    assert_eq!(out, rows_by_k(&p, states_whole).await);
    let k: StringArray = column(&out, "k", &DataType::Utf8);
    let count: Int64Array = column(&out, "n", &DataType::Int64);
    let total: Int64Array = column(&out, "total", &DataType::Int64);
    assert_eq!(k.iter().flatten().collect::<Vec<_>>(), ["a", "c"]);
    assert_eq!(count.values(), &[6, 6]);
    assert_eq!(total.values(), &[27, 27]);

    let p = plan(&format!(
        "{stream} SELECT k, count(*) AS n FROM s WHERE random() < 0.5 GROUP BY k WINDOW 10s"
    ))
    .await;
    assert!(p.filter().is_none());
    assert!(p.explain().contains("FilterExec"), "{}", p.explain());
}
