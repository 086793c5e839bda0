//! Incremental checkpoints: with 100 000 groups open and 1 % of them
//! changed, a commit writes at most 5 % of what writing the whole state
//! does (one commit, and on average over many, merges included), and a restart from the stored pieces finishes the window with the
//! same rows as an engine that never stopped. Polls between two commits
//! leave one state per group and window. (Bytes and rows, not time: the
//! counts do not depend on the machine.)

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use runnel::plan::ContinuousPlan;
use runnel::sql::{Statement, parse_sql};
use runnel::window::WindowEngine;
use runnel::window::delta::{MAX_PIECES, StateOp, StatePiece};

const GROUPS: usize = 100_000;

const SQL: &str = "
CREATE STREAM imps (ts TIMESTAMP, publisher TEXT, bid DOUBLE, cookie TEXT)
  WITH (kafka_topic = 'imps', event_time = 'ts');
SELECT publisher, avg(bid) AS avg_bid, count(*) AS n, approx_distinct(cookie) AS uniques
FROM imps GROUP BY publisher WINDOW 10s";

/// One record per publisher of `publishers`, at `ts`.
fn records(schema: &Arc<Schema>, publishers: impl Iterator<Item = usize>, ts: i64) -> RecordBatch {
    let p: Vec<usize> = publishers.collect();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from(vec![ts; p.len()])),
        Arc::new(StringArray::from_iter_values(
            p.iter().map(|i| format!("pub-{i}")),
        )),
        Arc::new(Float64Array::from_iter_values(
            p.iter().map(|i| (i % 97) as f64 / 10.0),
        )),
        Arc::new(StringArray::from_iter_values(
            p.iter().map(|i| format!("c{}", i * 7 + ts as usize)),
        )),
    ];
    RecordBatch::try_new(schema.clone(), cols).unwrap()
}

/// Hands `engine` one record per publisher of `publishers`, at `ts`.
async fn feed(
    engine: &mut WindowEngine,
    schema: &Arc<Schema>,
    publishers: impl Iterator<Item = usize>,
    ts: i64,
) {
    engine
        .process(0, records(schema, publishers, ts), 0)
        .await
        .unwrap();
}

fn apply(pieces: &mut Vec<StatePiece>, ops: &[StateOp]) {
    for op in ops {
        match op {
            StateOp::Clear => pieces.clear(),
            StateOp::Append(p) => pieces.push(p.clone()),
            StateOp::Replace(p) => {
                pieces.retain(|q| (q.window, q.kept) != (p.window, p.kept));
                pieces.push(p.clone());
            }
            StateOp::Remove(w, kept) => pieces.retain(|q| (q.window, q.kept) != (*w, *kept)),
        }
    }
}

async fn sorted_rows(engine: &mut WindowEngine) -> String {
    let out = engine.close_all().await.unwrap();
    let batches: Vec<RecordBatch> = out.into_iter().map(|e| e.batch).collect();
    let all = concat_batches(&batches[0].schema(), &batches).unwrap();
    let mut lines: Vec<String> = pretty_format_batches(&[all])
        .unwrap()
        .to_string()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines.join("\n")
}

/// The query's plan and its stream's schema.
async fn plan() -> (Arc<ContinuousPlan>, Arc<Schema>) {
    let stmts = parse_sql(SQL).unwrap();
    let (Statement::CreateStream(stream), Statement::Select(select)) =
        (&stmts[0].stmt, &stmts[1].stmt)
    else {
        panic!("a stream and a select")
    };
    let plan = Arc::new(ContinuousPlan::build(stream, select).await.unwrap());
    (plan, Arc::new(Schema::new(stream.fields())))
}

/// A new engine restored from a checkpoint's header and stored pieces.
fn restore(plan: &Arc<ContinuousPlan>, header: &[u8], pieces: Vec<StatePiece>) -> WindowEngine {
    let mut e = new_engine(plan);
    e.restore_saved(header, pieces).unwrap();
    e
}

fn new_engine(plan: &Arc<ContinuousPlan>) -> WindowEngine {
    let mut e = WindowEngine::new(plan.clone(), Some(0), 0);
    e.register_partitions(&[0]);
    e.save_incrementally();
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_writes_what_changed() {
    let (plan, schema) = plan().await;
    let new_engine = || new_engine(&plan);
    let mut engine = new_engine();
    let mut pieces = Vec::new();

    // Every group opens: the first save writes the whole state.
    feed(&mut engine, &schema, 0..GROUPS, 1_000).await;
    let saved = engine.save().await.unwrap();
    apply(&mut pieces, &saved.ops);
    let whole = saved.bytes();

    // 1 % of the groups take a record: the next save writes only them.
    let changed = (0..GROUPS).step_by(100);
    feed(&mut engine, &schema, changed, 2_000).await;
    let saved = engine.save().await.unwrap();
    apply(&mut pieces, &saved.ops);
    let delta = saved.bytes();
    eprintln!(
        "whole state {whole} bytes, 1 % changed {delta} bytes ({:.2} %)",
        100.0 * delta as f64 / whole as f64
    );
    assert!(delta * 20 <= whole, "{delta} of {whole} bytes");
    assert!(
        matches!(saved.ops[..], [StateOp::Append(_)]),
        "{:?}",
        saved.ops.len()
    );

    // Many more commits of 1 % each: appended pieces are merged into the
    // window's state once they outweigh it, so on average a commit still
    // writes at most 5 % of the whole, and the store holds at most
    // MAX_PIECES pieces of the window.
    let (mut total, mut merges, rounds) = (0, 0, 150);
    for round in 1..=rounds {
        let changed = (round..GROUPS).step_by(100);
        feed(&mut engine, &schema, changed, 2_000 + round as i64).await;
        let saved = engine.save().await.unwrap();
        apply(&mut pieces, &saved.ops);
        total += saved.bytes();
        merges += saved
            .ops
            .iter()
            .filter(|op| matches!(op, StateOp::Replace(_)))
            .count();
        assert!(pieces.len() <= MAX_PIECES, "{} pieces", pieces.len());
    }
    let mean = total / rounds;
    eprintln!(
        "{rounds} commits of 1 %: {mean} bytes each on average ({:.2} %), {merges} merged",
        100.0 * mean as f64 / whole as f64
    );
    assert!(merges > 0, "the pieces were never merged");
    assert!(mean * 20 <= whole, "{mean} of {whole} bytes on average");

    // A restart from the header and the pieces ends like the engine that
    // never stopped, after a few more records.
    let mut restarted = new_engine();
    restarted.restore_saved(&saved.header, pieces).unwrap();
    for e in [&mut engine, &mut restarted] {
        feed(e, &schema, (0..GROUPS).step_by(7), 3_000).await;
    }
    assert_eq!(
        sorted_rows(&mut engine).await,
        sorted_rows(&mut restarted).await
    );
}

/// Between two commits, a window's new partial states are merged as they
/// pile up (so the commit after a close has little left to merge); the
/// piece the commit writes still restores exactly what was processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_merged_between_commits_restore_the_same_rows() {
    let (plan, schema) = plan().await;
    let mut engine = new_engine(&plan);
    let mut pieces = Vec::new();
    apply(&mut pieces, &engine.save().await.unwrap().ops);
    // 40 polls of 2 000 groups each, well past what is merged on the way
    // (32 batches, or 16 384 rows beyond twice the last merge).
    for poll in 0..40 {
        let groups = (poll * 50)..(poll * 50 + 2_000);
        feed(&mut engine, &schema, groups, 1_000 + poll as i64).await;
    }
    let saved = engine.save().await.unwrap();
    apply(&mut pieces, &saved.ops);
    let mut restarted = new_engine(&plan);
    restarted.restore_saved(&saved.header, pieces).unwrap();
    for e in [&mut engine, &mut restarted] {
        feed(e, &schema, (0..4_000).step_by(3), 3_000).await;
    }
    assert_eq!(
        sorted_rows(&mut engine).await,
        sorted_rows(&mut restarted).await
    );
}

/// A restored engine's next commit appends only what it took after the
/// restore (what it restored is already stored), and merging all of a
/// window's states at once (as the state limit does) makes the next commit
/// write the state whole: after either, a restart from the stored pieces
/// ends like the engine that never stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_and_compacted_engines_store_each_state_once() {
    let (plan, schema) = plan().await;
    let mut engine = new_engine(&plan);
    let mut pieces = Vec::new();
    const N: usize = 20_000;
    feed(&mut engine, &schema, 0..N, 1_000).await;
    let saved = engine.save().await.unwrap();
    apply(&mut pieces, &saved.ops);
    let whole = saved.bytes();

    let mut restored = restore(&plan, &saved.header, pieces.clone());
    for e in [&mut engine, &mut restored] {
        feed(e, &schema, (0..N).step_by(100), 2_000).await;
    }
    let saved = restored.save().await.unwrap();
    assert!(
        matches!(saved.ops[..], [StateOp::Append(_)]),
        "{:?}",
        saved.ops.len()
    );
    assert!(
        saved.bytes() * 20 <= whole,
        "{} of {whole} bytes",
        saved.bytes()
    );
    apply(&mut pieces, &saved.ops);

    let mut compacted = restore(&plan, &saved.header, pieces.clone());
    for e in [&mut engine, &mut compacted] {
        feed(e, &schema, (0..N).step_by(3), 3_000).await;
    }
    compacted.compact_all().await.unwrap();
    let saved = compacted.save().await.unwrap();
    assert!(matches!(saved.ops[0], StateOp::Clear), "{:?}", saved.ops[0]);
    apply(&mut pieces, &saved.ops);

    let mut last = restore(&plan, &saved.header, pieces);
    for e in [&mut engine, &mut last] {
        feed(e, &schema, (0..N).step_by(11), 4_000).await;
    }
    assert_eq!(sorted_rows(&mut engine).await, sorted_rows(&mut last).await);
}

/// The batch plan keeps running across polls until a commit settles it:
/// 20 polls of the same 2 000 groups leave one state per group for the
/// commit to write, not one per group and poll; until then every record
/// counts towards the state limit; and the rows equal those of an engine
/// settled after every poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_between_commits_leave_one_state_per_group() {
    const G: usize = 2_000;
    let (plan, schema) = plan().await;
    let mut engine = new_engine(&plan);
    let mut each_poll = new_engine(&plan);
    let mut pieces = Vec::new();
    apply(&mut pieces, &engine.save().await.unwrap().ops);
    for poll in 0..20 {
        for e in [&mut engine, &mut each_poll] {
            feed(e, &schema, 0..G, 1_000 + poll).await;
        }
        each_poll.settle().await.unwrap();
    }
    assert_eq!(engine.state_rows(), 20 * G);
    assert_eq!(engine.open_windows(), 1);
    let saved = engine.save().await.unwrap();
    assert_eq!(engine.state_rows(), G);
    let [StateOp::Append(piece)] = &saved.ops[..] else {
        panic!("{} ops", saved.ops.len())
    };
    let states = runnel::window::states_from_ipc(&plan.state_schema, &piece.state).unwrap();
    assert_eq!(states.iter().map(RecordBatch::num_rows).sum::<usize>(), G);
    apply(&mut pieces, &saved.ops);
    let mut restarted = restore(&plan, &saved.header, pieces);
    let expected = sorted_rows(&mut each_poll).await;
    assert_eq!(sorted_rows(&mut engine).await, expected);
    assert_eq!(sorted_rows(&mut restarted).await, expected);
}
