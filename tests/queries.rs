//! Golden query-semantics tests.
//!
//! Each `tests/queries/NAME.sql` holds a `CREATE STREAM`, the `CREATE
//! TABLE`s of the reference tables it joins (their CSV files named relative
//! to the crate's root) and one continuous `SELECT`; `NAME.input` holds the
//! records, one per line as `<partition>[@<ms in the log>] <json>`, plus
//! `quiet <ms> [<partition>]` (every partition of the input, or the one
//! named, was confirmed caught up and delivered nothing for another `ms` of
//! wall time; partitions go idle after [`IDLE_AFTER_MS`] of it), `stall` (no
//! partition can be confirmed caught up: a broker stalled), `emit <wall
//! ms>` (an emit tick: a cumulative table, or provisional rows of open
//! windows under `EMIT EVERY`) and `poll` (a poll boundary: the records
//! around it come in different polls, as when late records correct a
//! window that closed in between) lines, and `show late` (anywhere: list
//! the late records kept); `NAME.expected` holds every emission, in order,
//! the rows of each window sorted by their columns unless the query has an
//! `ORDER BY`, and `-- window [start, end): no rows` for a window emitted
//! without rows (they replace its earlier rows), `-- open sessions` for the
//! provisional rows of every open session (`EMIT EVERY` over sessions; they
//! replace all earlier provisional rows), then with `show late` a
//! `-- late` table of the late records the engine kept (the late table's
//! columns but `_watermark` and `_written_at`), by partition and offset: a
//! record's offset is its place among its partition's records in the
//! input, from 0. Each case runs three times — one record per batch; each
//! partition's consecutive records in one batch; and all records between
//! two `quiet`/`stall`/`emit`/`poll` lines as one poll, one batch per
//! partition, aggregated together as a query does — plus once more one
//! record at a time with the engine checkpointed and restored after each,
//! and once more saving incrementally into a store of pieces and restoring
//! from them after each; all runs must match, so results never depend on
//! batching or restarts.
//!
//! Run: `cargo test --test queries`. Update the expected files:
//! `RUNNEL_UPDATE_GOLDEN=1 cargo test --test queries`.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, UInt32Array};
use datafusion::arrow::compute::{SortColumn, lexsort_to_indices, take};
use datafusion::arrow::datatypes::TimestampMillisecondType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use runnel::format::json::JsonDecoder;
use runnel::model::Emission;
use runnel::plan::{ContinuousPlan, RefTable};
use runnel::sql::{Statement, parse_sql};
use runnel::window::delta::{StateOp, StatePiece};
use runnel::window::{Offsets, PartitionBatch, WindowEngine};

/// Confirmed quiet time after which a partition is idle, as `idle_after`.
const IDLE_AFTER_MS: i64 = 1_000;

enum Line {
    /// Partition, time in the log (`<partition>@<ms>`), record.
    Rec(i32, Option<i64>, String),
    Quiet(i64, Option<i32>),
    Stall,
    Emit(i64),
    /// A poll boundary: the records around it come in different polls.
    Poll,
    ShowLate,
}

fn parse_input(text: &str) -> Vec<Line> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            if l == "stall" {
                return Line::Stall;
            }
            if l == "poll" {
                return Line::Poll;
            }
            if l == "show late" {
                return Line::ShowLate;
            }
            let (head, rest) = l
                .split_once(' ')
                .expect("'<partition> <json>', 'quiet <ms> [<partition>]', 'stall' or 'emit <ms>'");
            match head {
                "quiet" => {
                    let mut words = rest.split_whitespace().map(|w| w.parse().unwrap());
                    let ms = words.next().unwrap();
                    Line::Quiet(ms, words.next().map(|p| p as i32))
                }
                "emit" => Line::Emit(rest.trim().parse().unwrap()),
                p => {
                    let (p, logged) = match p.split_once('@') {
                        Some((p, l)) => (p, Some(l.parse().unwrap())),
                        None => (p, None),
                    };
                    Line::Rec(p.parse().unwrap(), logged, rest.to_string())
                }
            }
        })
        .collect()
}

/// Applies a save's changes to `pieces` as the store does.
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

/// How a case's records are handed to the engine.
#[derive(Clone, Copy, PartialEq)]
enum Batching {
    /// One record per call.
    Single,
    /// Each run of one partition's consecutive records in one call.
    Grouped,
    /// Every record up to the next `quiet`/`stall`/`emit` line in one
    /// `process_polled` call, one batch per partition.
    Polled,
    /// As `Restarted`, saving incrementally: after each record the engine
    /// saves what changed into a store of pieces, and a new engine restores
    /// from the header and the pieces.
    RestartedFromPieces,
    /// One record per call, the engine checkpointed after each and restored
    /// into a new one (a restart; the counters carry over, as the server's
    /// do).
    Restarted,
}

async fn run_case(sql: &str, input: &[Line], batching: Batching) -> String {
    let ordered = sql.to_ascii_uppercase().contains("ORDER BY");
    let stmts = parse_sql(sql).unwrap();
    let Statement::CreateStream(stream) = &stmts[0].stmt else {
        panic!("first statement must be CREATE STREAM")
    };
    let mut tables = Vec::new();
    for s in &stmts[1..stmts.len() - 1] {
        let Statement::CreateTable(def) = &s.stmt else {
            panic!("only CREATE TABLE may come between the stream and the SELECT")
        };
        tables.push(RefTable::load(def).await.unwrap());
    }
    let (Statement::Select(select) | Statement::CreateQuery { select, .. }) =
        &stmts[stmts.len() - 1].stmt
    else {
        panic!("last statement must be a SELECT")
    };
    let plan = ContinuousPlan::build_with_tables(stream, select, &tables);
    let plan = Arc::new(plan.await.unwrap());
    let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(stream.fields()));
    let et = stream
        .event_time
        .as_ref()
        .map(|e| schema.index_of(e).unwrap());
    let mut engine = WindowEngine::new(plan, et, stream.watermark_delay_ms);
    // The store's pieces of window state (RestartedFromPieces).
    let mut pieces: Vec<StatePiece> = Vec::new();
    if batching == Batching::RestartedFromPieces {
        engine.save_incrementally();
    }
    engine.keep_late_records();
    let show_late = input.iter().any(|l| matches!(l, Line::ShowLate));
    let mut late: Vec<RecordBatch> = Vec::new();
    // Per partition, the offset of its next record.
    let mut next_offset: std::collections::BTreeMap<i32, i64> = Default::default();
    let mut decoder = JsonDecoder::new(schema).unwrap();
    let mut out: Vec<Emission> = Vec::new();
    // The source's partitions: every partition the input names.
    let partitions: std::collections::BTreeSet<i32> = input
        .iter()
        .filter_map(|l| match l {
            Line::Rec(p, ..) => Some(*p),
            _ => None,
        })
        .collect();
    engine.register_partitions(&partitions.iter().copied().collect::<Vec<_>>());
    let mut i = 0;
    while i < input.len() {
        match &input[i] {
            Line::Rec(..) => {
                // The records of this call, grouped per partition in order.
                let mut parts: Vec<(i32, Vec<&Line>)> = Vec::new();
                let first = i;
                while let Some(line @ Line::Rec(p, ..)) = input.get(i) {
                    let same = match batching {
                        Batching::Single | Batching::Restarted | Batching::RestartedFromPieces => {
                            i == first
                        }
                        Batching::Grouped => matches!(&input[first], Line::Rec(q, ..) if q == p),
                        Batching::Polled => true,
                    };
                    if !same {
                        break;
                    }
                    match parts.iter_mut().find(|(q, _)| q == p) {
                        Some((_, recs)) => recs.push(line),
                        None => parts.push((*p, vec![line])),
                    }
                    i += 1;
                }
                let mut batches = Vec::new();
                for (p, lines) in parts {
                    let (payloads, logged): (Vec<&[u8]>, Vec<Option<i64>>) = lines
                        .iter()
                        .map(|l| match l {
                            Line::Rec(_, logged, rec) => (rec.as_bytes(), *logged),
                            _ => unreachable!(),
                        })
                        .unzip();
                    let (batch, bad) = decoder.decode(&payloads);
                    assert!(bad.is_empty(), "bad input records: {bad:?}");
                    let log_times = logged
                        .iter()
                        .any(Option::is_some)
                        .then(|| logged.iter().map(|l| l.unwrap_or(i64::MAX)).collect());
                    let first = next_offset.entry(p).or_insert(0);
                    let offsets = Offsets::From(*first);
                    *first += lines.len() as i64;
                    batches.extend(batch.map(|batch| PartitionBatch {
                        partition: p,
                        batch,
                        log_times,
                        offsets,
                        windows: Default::default(),
                    }));
                }
                out.extend(engine.process_polled(batches, 0).await.unwrap());
                late.extend(engine.take_late(0).unwrap());
                if matches!(
                    batching,
                    Batching::Restarted | Batching::RestartedFromPieces
                ) {
                    let header = match batching {
                        Batching::Restarted => engine.checkpoint().await.unwrap(),
                        _ => {
                            let saved = engine.save().await.unwrap();
                            apply(&mut pieces, &saved.ops);
                            saved.header
                        }
                    };
                    let counters = engine.counters.clone();
                    engine =
                        WindowEngine::new(engine.plan().clone(), et, stream.watermark_delay_ms);
                    engine.counters = counters;
                    engine.keep_late_records();
                    engine.register_partitions(&partitions.iter().copied().collect::<Vec<_>>());
                    if batching == Batching::Restarted {
                        engine.restore(&header).unwrap();
                    } else {
                        engine.save_incrementally();
                        engine.restore_saved(&header, pieces.clone()).unwrap();
                    }
                }
            }
            Line::Quiet(ms, only) => {
                let parts: Vec<i32> = partitions
                    .iter()
                    .copied()
                    .filter(|p| only.is_none_or(|o| o == *p))
                    .collect();
                for p in parts {
                    engine.clock_mut().quiet(p, *ms, IDLE_AFTER_MS);
                }
                out.extend(engine.close_ready().await.unwrap());
                i += 1;
            }
            Line::Stall => {
                for p in &partitions {
                    engine.clock_mut().unconfirmed(*p);
                }
                out.extend(engine.close_ready().await.unwrap());
                i += 1;
            }
            Line::Poll => i += 1,
            Line::Emit(now) => {
                out.extend(engine.emit_open(*now).await.unwrap());
                i += 1;
            }
            Line::ShowLate => i += 1,
        }
    }
    let c = &engine.counters;
    // Windows closing together share an emission only by accident of batching:
    // show each window's rows on their own, in the order windows closed.
    let mut windows: Vec<(bool, (i64, i64), RecordBatch)> = Vec::new();
    // The provisional rows of every open session, in one table: (0, 0).
    for e in &out {
        if e.open_sessions {
            windows.push((false, (0, 0), sorted(&e.batch, ordered)));
            continue;
        }
        // One window's emission without rows still replaces its earlier rows.
        if let (0, Some(w)) = (e.batch.num_rows(), e.window) {
            windows.push((false, w, e.batch.clone()));
            continue;
        }
        let starts = e
            .batch
            .column(0)
            .as_primitive::<TimestampMillisecondType>()
            .values()
            .to_vec();
        let ends = e
            .batch
            .column(1)
            .as_primitive::<TimestampMillisecondType>()
            .values()
            .to_vec();
        let mut keys: Vec<(i64, i64)> = Vec::new();
        for k in starts.iter().zip(&ends).map(|(s, e)| (*s, *e)) {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        keys.sort_by_key(|(s, e)| (*e, *s));
        let order = row_order(&e.batch, ordered);
        for k in keys {
            let idx: Vec<u32> = order
                .iter()
                .copied()
                .filter(|&i| (starts[i as usize], ends[i as usize]) == k)
                .collect();
            let idx = UInt32Array::from(idx);
            let cols = e
                .batch
                .columns()
                .iter()
                .map(|c| take(c, &idx, None).unwrap())
                .collect();
            windows.push((
                e.cumulative,
                k,
                RecordBatch::try_new(e.batch.schema(), cols).unwrap(),
            ));
        }
    }
    let mut text = String::new();
    let time = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%S")
            .to_string()
    };
    for (cumulative, (start, end), b) in &windows {
        if (*start, *end) == (0, 0) && !cumulative {
            text.push_str("-- open sessions\n");
            if b.num_rows() == 0 {
                text.push_str("(none)\n");
                continue;
            }
        } else if b.num_rows() == 0 {
            text.push_str(&format!(
                "-- window [{}, {}): no rows\n",
                time(*start),
                time(*end)
            ));
            continue;
        }
        text.push_str(match (cumulative, (*start, *end) == (0, 0)) {
            (true, _) => "-- cumulative table\n",
            (false, true) => "",
            (false, false) => "-- window\n",
        });
        text.push_str(
            &pretty_format_batches(std::slice::from_ref(b))
                .unwrap()
                .to_string(),
        );
        text.push('\n');
    }
    if show_late {
        text.push_str("-- late\n");
        text.push_str(&late_table(&late));
        text.push('\n');
    }
    text.push_str(&format!(
        "-- records_in={} late={} bad={} windows_closed={} open_windows={}\n",
        c.records_in.load(std::sync::atomic::Ordering::Relaxed),
        c.late_records.load(std::sync::atomic::Ordering::Relaxed),
        c.bad_records.load(std::sync::atomic::Ordering::Relaxed),
        c.windows_closed.load(std::sync::atomic::Ordering::Relaxed),
        engine.open_windows(),
    ));
    text
}

/// Rows of one emission in a fixed order (by their columns) unless the
/// query orders them: aggregation gives groups in hash order.
fn row_order(b: &RecordBatch, ordered: bool) -> Vec<u32> {
    if ordered {
        return (0..b.num_rows() as u32).collect();
    }
    let cols: Vec<SortColumn> = b
        .columns()
        .iter()
        .map(|c| SortColumn {
            values: c.clone(),
            options: None,
        })
        .collect();
    lexsort_to_indices(&cols, None).unwrap().values().to_vec()
}

/// `b`'s rows in [`row_order`].
fn sorted(b: &RecordBatch, ordered: bool) -> RecordBatch {
    let idx = UInt32Array::from(row_order(b, ordered));
    let cols = b
        .columns()
        .iter()
        .map(|c| take(c, &idx, None).unwrap())
        .collect();
    RecordBatch::try_new(b.schema(), cols).unwrap()
}

/// The late rows kept, by partition and offset, without `_watermark` and
/// `_written_at` (which hold no more than `_late_ms` and the wall clock).
fn late_table(late: &[RecordBatch]) -> String {
    let schema = match late.first() {
        Some(b) => b.schema(),
        None => return "(none)".into(),
    };
    let all = datafusion::arrow::compute::concat_batches(&schema, late).unwrap();
    let sort = |name: &str| SortColumn {
        values: all.column_by_name(name).unwrap().clone(),
        options: None,
    };
    let order = lexsort_to_indices(&[sort("_partition"), sort("_offset")], None).unwrap();
    let keep: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| {
            !matches!(
                schema.field(i).name().as_str(),
                "_watermark" | "_written_at"
            )
        })
        .collect();
    let all = all.project(&keep).unwrap();
    let cols = all
        .columns()
        .iter()
        .map(|c| take(c, &order, None).unwrap())
        .collect();
    let sorted = RecordBatch::try_new(all.schema(), cols).unwrap();
    pretty_format_batches(&[sorted]).unwrap().to_string()
}

#[tokio::test]
async fn golden_queries() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/queries");
    let update = std::env::var("RUNNEL_UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 10,
        "expected the query-semantics suite, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for sql_path in &cases {
        let name = sql_path.file_stem().unwrap().to_string_lossy().to_string();
        let sql = std::fs::read_to_string(sql_path).unwrap();
        let input =
            parse_input(&std::fs::read_to_string(sql_path.with_extension("input")).unwrap());
        let single = run_case(&sql, &input, Batching::Single).await;
        let grouped = run_case(&sql, &input, Batching::Grouped).await;
        assert_eq!(single, grouped, "{name}: output depends on batching");
        let polled = run_case(&sql, &input, Batching::Polled).await;
        assert_eq!(single, polled, "{name}: output depends on polling");
        let restarted = run_case(&sql, &input, Batching::Restarted).await;
        assert_eq!(single, restarted, "{name}: output depends on restarts");
        let from_pieces = run_case(&sql, &input, Batching::RestartedFromPieces).await;
        assert_eq!(
            single, from_pieces,
            "{name}: output depends on restarts from incremental checkpoints"
        );
        let expected_path = sql_path.with_extension("expected");
        if update {
            std::fs::write(&expected_path, &single).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != single {
            failures.push(format!(
                "{name}:\n--- expected\n{expected}\n--- actual\n{single}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatches (RUNNEL_UPDATE_GOLDEN=1 to accept):\n{}",
        failures.join("\n")
    );
}
