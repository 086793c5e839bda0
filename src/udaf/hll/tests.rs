//! Tests of `approx_distinct`: accuracy, merging, every input encoding,
//! the pinned state formats and hostile states. One file: they share their
//! helpers.

use std::any::Any;
use std::hash::Hash;

use datafusion::arrow::array::{
    DictionaryArray, Float32Array, Float64Array, Int32Array, Int64Array, LargeStringArray,
    RecordBatch, StringArray, StringViewArray,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::datasource::MemTable;
use datafusion::execution::FunctionRegistry;
use datafusion::prelude::SessionContext;

use super::*;

fn context() -> SessionContext {
    let ctx = SessionContext::new();
    crate::udaf::register(&ctx);
    ctx
}

/// Registers `columns` as table `t`: `batch_rows`-row batches dealt
/// round-robin over `partitions` partitions, so the plan has partial and
/// final aggregation steps.
fn register_table(
    ctx: &SessionContext,
    columns: Vec<(&str, ArrayRef)>,
    partitions: usize,
    batch_rows: usize,
) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let mut parts = vec![Vec::new(); partitions];
    let mut offset = 0;
    while offset < batch.num_rows() {
        let len = batch_rows.min(batch.num_rows() - offset);
        parts[(offset / batch_rows) % partitions].push(batch.slice(offset, len));
        offset += len;
    }
    if batch.num_rows() == 0 {
        parts[0].push(batch.clone());
    }
    let table = MemTable::try_new(batch.schema(), parts).unwrap();
    ctx.register_table("t", Arc::new(table)).unwrap();
}

async fn query(ctx: &SessionContext, sql: &str) -> RecordBatch {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    concat_batches(&batches[0].schema(), &batches).unwrap()
}

fn u64_values(batch: &RecordBatch, column: usize) -> Vec<u64> {
    let column = batch.column(column);
    assert_eq!(column.data_type(), &DataType::UInt64);
    column.as_primitive::<UInt64Type>().values().to_vec()
}

fn strings(range: std::ops::Range<usize>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(
        range.map(|i| format!("user-{i}")),
    ))
}

fn accumulate(array: &ArrayRef) -> ApproxDistinctAccumulator {
    let mut acc = ApproxDistinctAccumulator::new();
    acc.update_batch(std::slice::from_ref(array)).unwrap();
    acc
}

fn estimate(acc: &mut ApproxDistinctAccumulator) -> u64 {
    match acc.evaluate().unwrap() {
        ScalarValue::UInt64(Some(n)) => n,
        other => panic!("unexpected estimate {other:?}"),
    }
}

fn state_bytes(acc: &mut ApproxDistinctAccumulator) -> Vec<u8> {
    match acc.state().unwrap().as_slice() {
        [ScalarValue::Binary(Some(bytes))] => bytes.clone(),
        other => panic!("unexpected state {other:?}"),
    }
}

fn states(states: &[Vec<u8>]) -> ArrayRef {
    Arc::new(BinaryArray::from_iter_values(states))
}

fn assert_within(actual: u64, expected: u64, tolerance: f64) {
    let error = (actual as f64 - expected as f64).abs() / expected as f64;
    assert!(
        error <= tolerance,
        "estimate {actual} is {:.3} % off {expected}",
        error * 100.0
    );
}

#[tokio::test]
async fn sql_estimate_is_within_two_percent_on_100k_distinct_strings() {
    // Every value twice (7919 is coprime with 100k), in scattered
    // order, with NULLs mixed in.
    let distinct = 100_000;
    let values: StringArray = (0..2 * distinct)
        .map(|i| (i % 17 != 0).then(|| format!("user-{}", (i * 7919) % distinct)))
        .collect();
    assert!(values.null_count() > 0);
    let expected = values
        .iter()
        .flatten()
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    let ctx = context();
    register_table(&ctx, vec![("s", Arc::new(values))], 4, 8192);

    let batch = query(&ctx, "SELECT approx_distinct(s) AS n FROM t").await;
    let [n] = u64_values(&batch, 0)[..] else {
        panic!("one row expected")
    };
    assert_within(n, expected, 0.02);
}

#[tokio::test]
async fn sql_group_by_estimates_each_group() {
    let sizes = [10, 1_000, 50_000];
    let (groups, values): (Vec<i32>, Vec<i64>) = sizes
        .iter()
        .enumerate()
        .flat_map(|(g, &n)| (0..2 * n).map(move |i| (g as i32, (i % n) as i64)))
        .unzip();
    let ctx = context();
    register_table(
        &ctx,
        vec![
            ("g", Arc::new(Int32Array::from(groups))),
            ("v", Arc::new(Int64Array::from(values))),
        ],
        3,
        4096,
    );

    let batch = query(
        &ctx,
        "SELECT g, approx_distinct(v) FROM t GROUP BY g ORDER BY g",
    )
    .await;
    let estimates = u64_values(&batch, 1);
    assert_eq!(estimates[0], 10);
    assert_within(estimates[1], 1_000, 0.005);
    assert_within(estimates[2], 50_000, 0.02);
}

#[tokio::test]
async fn register_replaces_the_builtin_approx_distinct() {
    let ctx = context();
    let udaf = ctx.udaf("approx_distinct").unwrap();
    let inner: &dyn Any = udaf.inner().as_ref();
    assert!(inner.downcast_ref::<ApproxDistinctHll>().is_some());

    // The built-in has no Float64 support; ours accepts any type.
    let sql = "SELECT approx_distinct(column1) FROM (VALUES (1.5), (2.5), (1.5))";
    let builtin = SessionContext::new()
        .sql(sql)
        .await
        .unwrap()
        .collect()
        .await;
    assert!(
        builtin.is_err(),
        "the built-in approx_distinct unexpectedly accepted Float64"
    );
    assert_eq!(u64_values(&query(&ctx, sql).await, 0), [2]);

    let state_fields = udaf
        .state_fields(StateFieldsArgs {
            name: "approx_distinct(x)",
            input_fields: &[Arc::new(Field::new("x", DataType::Float64, true))],
            return_field: Arc::new(Field::new("n", DataType::UInt64, false)),
            ordering_fields: &[],
            is_distinct: false,
        })
        .unwrap();
    assert_eq!(state_fields.len(), 1);
    assert_eq!(state_fields[0].data_type(), &DataType::Binary);
}

#[test]
fn merged_partial_states_equal_a_single_accumulator() {
    let cases: [&[usize]; 4] = [
        &[25_000, 25_000, 25_000, 25_000], // every part dense
        &[500, 500, 500, 500],             // every part sparse
        &[40_000, 100, 5, 0],              // dense, sparse and empty parts
        &[3_000, 3_000, 3_000, 3_000],     // sparse parts, dense union
    ];
    for sizes in cases {
        let mut start = 0;
        let parts: Vec<ArrayRef> = sizes
            .iter()
            .map(|&n| {
                // Overlapping ranges, so the parts share values.
                let part = strings(start / 2..start / 2 + n);
                start += n;
                part
            })
            .collect();
        let mut single = ApproxDistinctAccumulator::new();
        for part in &parts {
            single.update_batch(std::slice::from_ref(part)).unwrap();
        }

        let partial: Vec<Vec<u8>> = parts
            .iter()
            .map(|p| state_bytes(&mut accumulate(p)))
            .collect();
        let mut merged = ApproxDistinctAccumulator::new();
        merged.merge_batch(&[states(&partial)]).unwrap();
        let mut reversed = ApproxDistinctAccumulator::new();
        for state in partial.iter().rev() {
            reversed
                .merge_batch(&[states(std::slice::from_ref(state))])
                .unwrap();
        }

        let expected = estimate(&mut single);
        assert_eq!(estimate(&mut merged), expected, "parts {sizes:?}");
        assert_eq!(estimate(&mut reversed), expected, "parts {sizes:?}");
        // Same values, same sketch: the states are identical too.
        let single_state = state_bytes(&mut single);
        assert_eq!(state_bytes(&mut merged), single_state, "parts {sizes:?}");
        assert_eq!(state_bytes(&mut reversed), single_state, "parts {sizes:?}");
    }
}

#[test]
fn merge_skips_null_states_and_accepts_other_binary_encodings() {
    let mut part = accumulate(&strings(0..100));
    let state = state_bytes(&mut part);
    let with_null: ArrayRef = Arc::new(BinaryArray::from(vec![None, Some(&state[..]), None]));
    let mut acc = ApproxDistinctAccumulator::new();
    acc.merge_batch(std::slice::from_ref(&with_null)).unwrap();
    assert_eq!(estimate(&mut acc), 100);

    for data_type in [DataType::LargeBinary, DataType::BinaryView] {
        let mut acc = ApproxDistinctAccumulator::new();
        acc.merge_batch(&[cast(&with_null, &data_type).unwrap()])
            .unwrap();
        assert_eq!(estimate(&mut acc), 100);
    }
}

#[tokio::test]
async fn nulls_are_ignored_and_small_counts_are_exact() {
    for (values, expected) in [
        (vec![], 0),
        (vec![None, None], 0),
        (vec![Some(7), None, Some(7), Some(7)], 1),
        (
            (0..100).map(|i| (i % 3 != 0).then_some(i % 10)).collect(),
            10,
        ),
    ] {
        let ctx = context();
        register_table(
            &ctx,
            vec![("v", Arc::new(Int64Array::from(values.clone())))],
            2,
            7,
        );
        let batch = query(&ctx, "SELECT approx_distinct(v) FROM t").await;
        assert_eq!(u64_values(&batch, 0), [expected], "values {values:?}");
    }

    for n in [0, 1, 2, 10, 100, 1_000, 2_000] {
        let mut acc = accumulate(&strings(0..n));
        assert_eq!(estimate(&mut acc), n as u64, "{n} distinct");
    }
}

#[tokio::test]
async fn approx_percentile_is_an_alias_of_approx_percentile_cont() {
    let ctx = context();
    register_table(
        &ctx,
        vec![
            (
                "f",
                Arc::new(Float64Array::from_iter_values((1..=1000).map(f64::from))),
            ),
            ("i", Arc::new(Int64Array::from_iter_values(1..=1000))),
        ],
        4,
        100,
    );
    let batch = query(
        &ctx,
        "SELECT approx_percentile(f, 0.5), approx_percentile(i, 0.5), \
         approx_percentile_cont(f, 0.5) FROM t",
    )
    .await;
    let median = batch.column(0).as_primitive::<Float64Type>().value(0);
    assert!((median - 500.5).abs() / 500.5 <= 0.01, "median {median}");
    // Integer input is coerced to Float64, as for approx_percentile_cont.
    let int_median = batch.column(1).as_primitive::<Float64Type>().value(0);
    assert!(
        (int_median - 500.5).abs() / 500.5 <= 0.01,
        "median {int_median}"
    );
    assert_eq!(
        batch.column(2).as_primitive::<Float64Type>().value(0),
        median
    );
}

#[tokio::test]
async fn any_input_type_is_accepted() {
    let ctx = context();
    let cases = [
        ("(true), (false), (true), (NULL)", 2),
        ("(1.5), (2.5), (1.5), (-0.0), (0.0)", 4),
        ("(X'0102'), (X'0102'), (X'03'), (X'')", 3),
        (
            "(CAST(1.10 AS DECIMAL(10, 2))), (CAST(1.1 AS DECIMAL(10, 2))), (CAST(2 AS DECIMAL(10, 2)))",
            2,
        ),
        (
            "(TIMESTAMP '2024-01-01 00:00:00'), (TIMESTAMP '2024-01-01 00:00:01'), (TIMESTAMP '2024-01-01 00:00:00')",
            2,
        ),
        ("(DATE '2024-01-01'), (DATE '2024-01-02')", 2),
        (
            "(INTERVAL '1 day'), (INTERVAL '1 day'), (INTERVAL '2 months')",
            2,
        ),
        (
            "(make_array(1, 2)), (make_array(1, 2)), (make_array(2, 1)), (make_array())",
            3,
        ),
        (
            "(named_struct('a', 1, 'b', 'x')), (named_struct('a', 1, 'b', 'y')), (named_struct('a', 1, 'b', 'x'))",
            2,
        ),
        (
            "(arrow_cast('a', 'Dictionary(Int32, Utf8)')), (arrow_cast('b', 'Dictionary(Int32, Utf8)')), (arrow_cast('a', 'Dictionary(Int32, Utf8)'))",
            2,
        ),
        ("(''), ('a'), (''), (NULL)", 2),
        ("(NULL), (NULL)", 0),
    ];
    for (rows, expected) in cases {
        let sql = format!(
            "SELECT approx_distinct(column1), CAST(COUNT(DISTINCT column1) AS BIGINT UNSIGNED) \
             FROM (VALUES {rows})"
        );
        let batch = query(&ctx, &sql).await;
        // Same answer as the exact count, and the same notion of distinct.
        assert_eq!(u64_values(&batch, 0), [expected], "{rows}");
        assert_eq!(
            u64_values(&batch, 1),
            [expected],
            "COUNT(DISTINCT) of {rows}"
        );
    }
}

#[test]
fn hashing_does_not_depend_on_the_arrow_encoding() {
    let same_state = |arrays: Vec<ArrayRef>| {
        let states: Vec<Vec<u8>> = arrays
            .iter()
            .map(|a| state_bytes(&mut accumulate(a)))
            .collect();
        assert!(
            states.windows(2).all(|w| w[0] == w[1]),
            "{:?}",
            arrays[0].data_type()
        );
    };
    let ints = [Some(1), None, Some(-2), Some(300), Some(1)];
    same_state(vec![
        Arc::new(Int32Array::from(ints.to_vec())),
        Arc::new(Int64Array::from(ints.map(|v| v.map(i64::from)).to_vec())),
    ]);
    let floats = [Some(1.5f32), Some(-0.25), None];
    same_state(vec![
        Arc::new(Float32Array::from(floats.to_vec())),
        Arc::new(Float64Array::from(
            floats.map(|v| v.map(f64::from)).to_vec(),
        )),
    ]);
    let text = [
        Some("a"),
        None,
        Some(""),
        Some("long enough to be out of line"),
        Some("a"),
    ];
    let utf8: ArrayRef = Arc::new(StringArray::from(text.to_vec()));
    let dictionary: DictionaryArray<Int32Type> = text.into_iter().collect();
    same_state(vec![
        utf8.clone(),
        Arc::new(LargeStringArray::from(text.to_vec())),
        Arc::new(StringViewArray::from(text.to_vec())),
        Arc::new(dictionary),
        cast(
            &utf8,
            &DataType::RunEndEncoded(
                Arc::new(Field::new("run_ends", DataType::Int32, false)),
                Arc::new(Field::new("values", DataType::Utf8, true)),
            ),
        )
        .unwrap(),
        cast(&utf8, &DataType::Binary).unwrap(),
    ]);
}

/// A dense state of a known input, pinned as committed bytes: dense
/// states keep the sketch library's own serde layout, so a release of
/// the library that changed it would break every stored sketch.
#[test]
fn dense_state_format_is_stable() {
    const GOLDEN: &str = "tests/sketches/approx_distinct_dense_v1.bin";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    let values = strings(0..50_000);
    let state = state_bytes(&mut accumulate(&values));
    assert_eq!(state[0], FORMAT_VERSION);
    assert!(is_dense(&decode_sketch(&state).unwrap()));
    if std::env::var("RUNNEL_UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &state).unwrap();
    }
    let golden = std::fs::read(&path).unwrap();
    assert!(golden == state, "the dense state of 50 000 values changed");
    // Precision 14: a standard error of 0.81 %, so within 3 of them.
    for merged in [
        {
            let mut acc = ApproxDistinctAccumulator::new();
            acc.merge_batch(&[states(std::slice::from_ref(&golden))])
                .unwrap();
            estimate(&mut acc)
        },
        {
            let mut acc = ApproxDistinctGroupsAccumulator::new();
            acc.merge_batch(&[states(std::slice::from_ref(&golden))], &[0], 1)
                .unwrap();
            let n = acc.evaluate(EmitTo::All).unwrap();
            n.as_primitive::<UInt64Type>().value(0)
        },
    ] {
        assert_within(merged, 50_000, 0.025);
    }
}

/// The state of a known input, pinned: a change here means sketches
/// checkpointed by an earlier Runnel no longer merge with new ones.
#[test]
fn state_format_and_hash_are_stable() {
    let hex = |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("{b:02x}")).collect() };
    let values: ArrayRef = Arc::new(StringArray::from(vec!["alice", "bob", "carol"]));
    let state = state_bytes(&mut accumulate(&values));
    assert_eq!(hex(&state), "02030016477d74fa39eea372f400");

    // The same sketch in the library's layout, as Runnel wrote sparse
    // states before the compact layout: still read, by both accumulators.
    let library = "010e80800180808008b3660003d23a07030ca89fba0e809dee03aab9f40500";
    assert_eq!(hex(&library_bytes(&state)), library);
    let library: Vec<u8> = (0..library.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&library[i..i + 2], 16).unwrap())
        .collect();
    let mut acc = ApproxDistinctAccumulator::new();
    acc.merge_batch(&[states(std::slice::from_ref(&library))])
        .unwrap();
    assert_eq!(state_bytes(&mut acc), state);
    let mut acc = ApproxDistinctGroupsAccumulator::new();
    acc.merge_batch(&[states(&[library])], &[0], 1).unwrap();
    assert_eq!(group_states(&mut acc, EmitTo::All), [state]);
}

/// A state rewritten in the library's layout, as Runnel wrote every
/// state before the compact layout.
fn library_bytes(state: &[u8]) -> Vec<u8> {
    let mut bytes = vec![FORMAT_VERSION];
    codec::encode(&decode_sketch(state).unwrap(), &mut bytes).unwrap();
    bytes
}

#[test]
fn sparse_states_are_compact_and_library_layout_ones_still_merge() {
    for n in [1, 10, 100, 800, 3_000, 5_000] {
        let parts = [strings(0..n), strings(n / 2..n + n / 2)];
        let compact: Vec<Vec<u8>> = parts
            .iter()
            .map(|p| state_bytes(&mut accumulate(p)))
            .collect();
        let library: Vec<Vec<u8>> = compact.iter().map(|s| library_bytes(s)).collect();
        assert_eq!(library[0][0], FORMAT_VERSION);
        assert_eq!(compact[0][0], COMPACT_VERSION, "{n} values");
        // Same sketch, fewer bytes: a fifth to a quarter fewer from a
        // hundred values on.
        assert!(compact[0].len() < library[0].len(), "{n} values");
        if n >= 100 {
            assert!(compact[0].len() * 5 < library[0].len() * 4, "{n} values");
        }

        // Old and new layouts mix freely, in both accumulators.
        let expected = state_bytes(&mut accumulate(&strings(0..n + n / 2)));
        for mixed in [
            [compact[0].clone(), library[1].clone()],
            [library[0].clone(), compact[1].clone()],
            [library[0].clone(), library[1].clone()],
        ] {
            let mut plain = ApproxDistinctAccumulator::new();
            plain.merge_batch(&[states(&mixed)]).unwrap();
            assert_eq!(state_bytes(&mut plain), expected, "{n} values");
            let mut grouped = ApproxDistinctGroupsAccumulator::new();
            grouped.merge_batch(&[states(&mixed)], &[0, 0], 1).unwrap();
            assert_eq!(
                group_states(&mut grouped, EmitTo::All),
                std::slice::from_ref(&expected)
            );
        }
    }
}

#[test]
fn compact_layout_round_trips_unusual_codes() {
    // Odd codes (with a leading-zero count), the extremes of both
    // kinds, and long gaps.
    let cases: [&[u32]; 5] = [
        &[],
        &[1 | (40 << 1)],
        &[0, 2, 4, 6],
        &[
            0,
            3,
            1 << 20,
            u32::MAX - 1,
            (u32::MAX - 0x7f) | (40 << 1) | 1,
        ],
        &[2, 1 << 30, (1 << 31) + 4],
    ];
    for case in cases {
        let mut codes = case.to_vec();
        codes.sort_unstable();
        let mut state = Vec::new();
        write_sparse_state(&codes, &mut state);
        let mut read = Vec::new();
        read_compact_state(&state[1..], &mut read).unwrap();
        read.sort_unstable();
        assert_eq!(read, codes);
        let mut library = Vec::new();
        write_library_sparse_state(&codes, &mut library);
        assert_eq!(library_bytes(&state), library);
    }
}

#[test]
fn corrupt_states_are_rejected_without_panicking() {
    let mut sparse = accumulate(&strings(0..50));
    let mut dense = accumulate(&strings(0..20_000));
    let sparse = state_bytes(&mut sparse);
    let dense = state_bytes(&mut dense);

    let decode = |bytes: &[u8]| decode_sketch(bytes).map(|_| ());
    assert!(decode(&[]).is_err());
    let library = library_bytes(&sparse);
    assert!(decode(&[COMPACT_VERSION]).is_err());
    for version in [0, COMPACT_VERSION + 1] {
        let mut wrong_version = sparse.clone();
        wrong_version[0] = version;
        assert!(decode(&wrong_version).is_err());
    }
    for state in [&sparse, &library] {
        for len in 0..state.len() {
            assert!(decode(&state[..len]).is_err(), "truncated to {len}");
        }
        assert!(decode(&[&state[..], &[0]].concat()).is_err());
    }
    assert!(decode(&dense[..dense.len() - 1]).is_err());

    // Any damage either fails to decode or leaves a sketch that merges
    // and estimates without panicking.
    for (state, step) in [(&sparse, 1), (&library, 1), (&dense, 97)] {
        for at in (0..state.len()).step_by(step).chain(0..16) {
            for flip in [0x01, 0x80, 0xff] {
                let mut damaged = state.clone();
                damaged[at] ^= flip;
                let mut acc = accumulate(&strings(0..10));
                if acc.merge_batch(&[states(&[damaged])]).is_ok() {
                    acc.evaluate().unwrap();
                    acc.state().unwrap();
                }
            }
        }
    }
}

#[test]
fn evaluate_does_not_change_later_results() {
    let (first, second) = (strings(0..150), strings(100..5_000));
    let mut peeked = accumulate(&first);
    let early = estimate(&mut peeked);
    assert_eq!(early, 150);
    peeked.update_batch(std::slice::from_ref(&second)).unwrap();

    let mut plain = accumulate(&first);
    plain.update_batch(&[second]).unwrap();
    assert_eq!(estimate(&mut peeked), estimate(&mut plain));
    assert_eq!(state_bytes(&mut peeked), state_bytes(&mut plain));
}

#[test]
fn size_and_state_track_the_sketch() {
    let mut empty = ApproxDistinctAccumulator::new();
    let base = empty.size();
    assert!(state_bytes(&mut empty).len() < 32);

    let mut small = accumulate(&strings(0..10));
    assert!(
        small.size() > base && small.size() < base + 256,
        "{small:?}"
    );
    assert!(state_bytes(&mut small).len() < 64);

    let mut dense = accumulate(&strings(0..100_000));
    let registers = 4 * (1usize << PRECISION).div_ceil(REGISTERS_PER_WORD);
    assert!(dense.size() >= base + registers, "{dense:?}");
    assert!(dense.size() < base + registers + 256, "{dense:?}");
    let state = state_bytes(&mut dense);
    assert!(
        state.len() >= registers && state.len() < registers + 32,
        "{}",
        state.len()
    );

    let booleans: ArrayRef = Arc::new(BooleanArray::from(vec![true, false]));
    assert_eq!(estimate(&mut accumulate(&booleans)), 2);
}

/// Hashes exactly the given bytes, as sketches were first fed: through
/// [`SketchHasher`], without `<[u8] as Hash>`'s length prefix.
struct RawBytes<'a>(&'a [u8]);

impl Hash for RawBytes<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0);
    }
}

#[test]
fn hashing_once_matches_the_sketch_hasher() {
    for bytes in [&b""[..], b"a", b"user-12345", &[7; 100]] {
        assert_eq!(hash_bytes(bytes), SketchHasher.hash_one(RawBytes(bytes)));
    }
    // A sketch fed through `SketchHasher` directly, as before hashing
    // moved out of the sketch, has the same state.
    let values = strings(0..3_000);
    let mut direct = HyperLogLogPlus::<[u8], _>::new(PRECISION, SketchHasher).unwrap();
    for value in values.as_string::<i32>().iter().flatten() {
        direct.insert_any(&RawBytes(value.as_bytes()));
    }
    direct.count();
    let mut expected = vec![FORMAT_VERSION];
    codec::encode(&direct, &mut expected).unwrap();
    assert_eq!(
        library_bytes(&state_bytes(&mut accumulate(&values))),
        expected
    );
}

#[test]
fn sparse_layout_constants_match_the_library() {
    assert_eq!(
        EMPTY_REPR.counts,
        (
            REGISTERS as u64,
            SPARSE_REGISTERS as u64,
            SPARSE_LIMIT as u64
        )
    );
    let mut empty = Vec::new();
    write_sparse_state(&[], &mut empty);
    assert_eq!(empty, state_bytes(&mut ApproxDistinctAccumulator::new()));
    let mut library_empty = Vec::new();
    write_library_sparse_state(&[], &mut library_empty);
    let mut expected = vec![FORMAT_VERSION];
    codec::encode(&empty_sketch(), &mut expected).unwrap();
    assert_eq!(library_empty, expected);
    assert!(is_dense(&EMPTY_DENSE));
    assert_eq!(EMPTY_DENSE.clone().count(), 0.0);
}

#[test]
fn sparse_codes_set_the_registers_their_hashes_set() {
    let hashes: Vec<u64> = (0..50_000u64)
        .map(|i| hash_bytes(&i.to_le_bytes()))
        // Hashes whose bits between the two precisions are zero, which
        // the library encodes differently.
        .chain((0..2_000u64).map(|i| hash_bytes(&i.to_be_bytes()) & !(0x7ff << 39)))
        .collect();
    let mut direct = Box::new(EMPTY_DENSE.clone());
    hashes.iter().for_each(|hash| direct.insert_any(hash));
    let codes: Vec<u32> = hashes.iter().map(|&hash| sparse_code(hash)).collect();
    let via_codes = dense_from_codes(&codes);
    let encode = |sketch: &Sketch| {
        let mut bytes = Vec::new();
        codec::encode(sketch, &mut bytes).unwrap();
        bytes
    };
    assert_eq!(encode(&via_codes), encode(&direct));
}

/// Rows of `(group, value)` for groups of the given numbers of distinct
/// values, in `batches` batches that overlap, rows of all groups mixed.
fn grouped_batches(sizes: &[usize], batches: usize) -> Vec<(Vec<usize>, Vec<String>)> {
    (0..batches)
        .map(|b| {
            let mut rows: Vec<(usize, String)> = sizes
                .iter()
                .enumerate()
                .flat_map(|(group, &n)| {
                    let (start, end) = (b * n / batches, ((b + 1) * n / batches + n / 10).min(n));
                    (start..end).map(move |i| (group, format!("g{group}-{i}")))
                })
                .collect();
            rows.sort_by_key(|(_, value)| hash_bytes(value.as_bytes()));
            rows.into_iter().unzip()
        })
        .collect()
}

fn string_array(values: &[String]) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

/// One plain accumulator per group, fed the same rows.
fn plain_per_group(
    batches: &[(Vec<usize>, Vec<String>)],
    groups: usize,
) -> Vec<ApproxDistinctAccumulator> {
    let mut accs: Vec<_> = (0..groups)
        .map(|_| ApproxDistinctAccumulator::new())
        .collect();
    for (indices, values) in batches {
        for (group, acc) in accs.iter_mut().enumerate() {
            let mine: Vec<String> = indices
                .iter()
                .zip(values)
                .filter(|(g, _)| **g == group)
                .map(|(_, v)| v.clone())
                .collect();
            acc.update_batch(&[string_array(&mine)]).unwrap();
        }
    }
    accs
}

fn grouped(
    batches: &[(Vec<usize>, Vec<String>)],
    groups: usize,
) -> ApproxDistinctGroupsAccumulator {
    let mut acc = ApproxDistinctGroupsAccumulator::new();
    for (indices, values) in batches {
        acc.update_batch(&[string_array(values)], indices, None, groups)
            .unwrap();
    }
    acc
}

fn group_states(acc: &mut dyn GroupsAccumulator, emit_to: EmitTo) -> Vec<Vec<u8>> {
    let [states] = &acc.state(emit_to).unwrap()[..] else {
        panic!("one state column expected")
    };
    assert_eq!(states.null_count(), 0);
    states
        .as_binary::<i32>()
        .iter()
        .map(|s| s.unwrap().to_vec())
        .collect()
}

fn group_estimates(acc: &mut dyn GroupsAccumulator, emit_to: EmitTo) -> Vec<u64> {
    let estimates = acc.evaluate(emit_to).unwrap();
    assert_eq!(estimates.null_count(), 0);
    estimates.as_primitive::<UInt64Type>().values().to_vec()
}

/// Group sizes on both sides of the switch to dense registers (at about
/// 6 500 distinct values) and far from it.
const GROUP_SIZES: [usize; 11] = [
    0, 1, 3, 150, 2_000, 6_000, 6_400, 6_600, 6_800, 7_500, 30_000,
];

#[test]
fn groups_accumulator_matches_the_plain_accumulator() {
    let batches = grouped_batches(&GROUP_SIZES, 3);
    let n = GROUP_SIZES.len();
    let mut plain = plain_per_group(&batches, n);
    let expected_states: Vec<Vec<u8>> = plain.iter_mut().map(state_bytes).collect();
    let expected: Vec<u64> = plain.iter_mut().map(estimate).collect();
    // The sizes straddle the switch to dense registers.
    let dense = expected_states
        .iter()
        .filter(|s| is_dense(&decode_sketch(s).unwrap()))
        .count();
    assert!((3..n - 3).contains(&dense), "{dense} dense groups");

    assert_eq!(
        group_estimates(&mut grouped(&batches, n), EmitTo::All),
        expected
    );
    assert_eq!(
        group_states(&mut grouped(&batches, n), EmitTo::All),
        expected_states
    );

    // Seeing the same rows again changes nothing.
    let mut twice = grouped(&batches, n);
    for (indices, values) in &batches {
        twice
            .update_batch(&[string_array(values)], indices, None, n)
            .unwrap();
    }
    assert_eq!(group_states(&mut twice, EmitTo::All), expected_states);
}

#[test]
fn groups_accumulator_honours_filters_and_nulls() {
    let n = 4;
    let values: ArrayRef = Arc::new(StringArray::from_iter(
        (0..20_000).map(|i| (i % 7 != 0).then(|| format!("v{}", i % 9_000))),
    ));
    let indices: Vec<usize> = (0..20_000).map(|i| (i * 31 / 7) % n).collect();
    // true, false, NULL, true, ...: only true rows count.
    let filter: BooleanArray = (0..20_000)
        .map(|i| match i % 3 {
            0 => Some(true),
            1 => Some(false),
            _ => None,
        })
        .collect();

    let mut acc = ApproxDistinctGroupsAccumulator::new();
    acc.update_batch(std::slice::from_ref(&values), &indices, Some(&filter), n)
        .unwrap();
    let converted = acc
        .convert_to_state(std::slice::from_ref(&values), Some(&filter))
        .unwrap();

    let mut expected = Vec::new();
    for group in 0..n {
        let keep: BooleanArray = (0..20_000)
            .map(|i| Some(indices[i] == group && i % 3 == 0))
            .collect();
        let mine = datafusion::arrow::compute::filter(&values, &keep).unwrap();
        expected.push(accumulate(&mine));
    }
    let expected_states: Vec<Vec<u8>> = expected.iter_mut().map(state_bytes).collect();
    assert_eq!(group_states(&mut acc, EmitTo::All), expected_states);

    // convert_to_state: each row's own state, empty where filtered out
    // or NULL; merged by group they give the same states again.
    let converted = &converted[0];
    assert_eq!(converted.len(), 20_000);
    let empty = state_bytes(&mut ApproxDistinctAccumulator::new());
    for row in [0, 1, 2, 3, 7, 21] {
        let state = converted.as_binary::<i32>().value(row);
        if row % 3 == 0 && row % 7 != 0 {
            let one = values.slice(row, 1);
            assert_eq!(state, state_bytes(&mut accumulate(&one)), "row {row}");
        } else {
            assert_eq!(state, empty, "row {row}");
        }
    }
    let mut merged = ApproxDistinctGroupsAccumulator::new();
    merged
        .merge_batch(std::slice::from_ref(converted), &indices, n)
        .unwrap();
    assert_eq!(group_states(&mut merged, EmitTo::All), expected_states);
}

#[test]
fn groups_accumulator_emits_the_first_groups_and_keeps_the_rest() {
    let sizes = [5, 300, 9_000, 40, 7_000];
    let batches = grouped_batches(&sizes, 2);
    let n = sizes.len();
    let mut plain = plain_per_group(&batches, n);
    let expected_states: Vec<Vec<u8>> = plain.iter_mut().map(state_bytes).collect();
    let expected: Vec<u64> = plain.iter_mut().map(estimate).collect();

    // First batch, emit two groups, then the second batch with the
    // remaining groups renumbered from zero.
    let mut acc = grouped(&batches[..1], n);
    let mut first = acc.evaluate(EmitTo::First(2)).unwrap();
    let mut plain_first = plain_per_group(&batches[..1], 2);
    assert_eq!(
        first.as_primitive::<UInt64Type>().values().to_vec(),
        plain_first.iter_mut().map(estimate).collect::<Vec<_>>()
    );
    let (indices, values) = &batches[1];
    let (kept_indices, kept_values): (Vec<usize>, Vec<String>) = indices
        .iter()
        .zip(values)
        .filter(|(g, _)| **g >= 2)
        .map(|(g, v)| (g - 2, v.clone()))
        .unzip();
    acc.update_batch(&[string_array(&kept_values)], &kept_indices, None, n - 2)
        .unwrap();
    let mut states = group_states(&mut acc, EmitTo::First(1));
    states.extend(group_states(&mut acc, EmitTo::All));
    assert_eq!(states, expected_states[2..]);

    // The same with estimates.
    let mut acc = grouped(&batches, n);
    let mut estimates = group_estimates(&mut acc, EmitTo::First(3));
    estimates.extend(group_estimates(&mut acc, EmitTo::First(2)));
    assert_eq!(estimates, expected);
    first = acc.evaluate(EmitTo::All).unwrap();
    assert_eq!(first.len(), 0);
    assert_eq!(acc.size(), ApproxDistinctGroupsAccumulator::new().size());
}

#[test]
fn states_of_either_accumulator_merge_into_the_other() {
    let batches = grouped_batches(&GROUP_SIZES, 4);
    let n = GROUP_SIZES.len();
    let mut whole = plain_per_group(&batches, n);
    let expected: Vec<Vec<u8>> = whole.iter_mut().map(state_bytes).collect();

    // Batches 0 and 1 through the groups accumulator, 2 and 3 through
    // plain ones: every group gets a state of each kind.
    let mut grouped_states = group_states(&mut grouped(&batches[..2], n), EmitTo::All);
    let plain_states: Vec<Vec<u8>> = plain_per_group(&batches[2..], n)
        .iter_mut()
        .map(state_bytes)
        .collect();

    // Into a groups accumulator, in one batch, groups mixed.
    let mut indices: Vec<usize> = (0..n).chain(0..n).collect();
    let mut all_states = plain_states.clone();
    all_states.extend(grouped_states.iter().cloned());
    let mut acc = ApproxDistinctGroupsAccumulator::new();
    acc.merge_batch(&[states(&all_states)], &indices, n)
        .unwrap();
    assert_eq!(group_states(&mut acc, EmitTo::All), expected);

    // Into a groups accumulator that already holds values, with NULL
    // states and another binary encoding.
    let mut acc = grouped(&batches[..2], n);
    let mut with_null: Vec<Option<&[u8]>> = plain_states.iter().map(|s| Some(&s[..])).collect();
    with_null.push(None);
    indices = (0..n).chain([0]).collect();
    let with_null: ArrayRef = Arc::new(BinaryArray::from(with_null));
    acc.merge_batch(
        &[cast(&with_null, &DataType::BinaryView).unwrap()],
        &indices,
        n,
    )
    .unwrap();
    assert_eq!(group_states(&mut acc, EmitTo::All), expected);

    // Into plain accumulators.
    for (group, expected) in expected.iter().enumerate() {
        let mut acc = ApproxDistinctAccumulator::new();
        let pair = [plain_states[group].clone(), grouped_states.remove(0)];
        acc.merge_batch(&[states(&pair)]).unwrap();
        assert_eq!(&state_bytes(&mut acc), expected, "group {group}");
    }
}

#[test]
fn groups_accumulator_rejects_the_states_the_plain_one_rejects() {
    let mut sparse = accumulate(&strings(0..50));
    let mut dense = accumulate(&strings(0..20_000));
    let sparse = state_bytes(&mut sparse);
    let library = library_bytes(&sparse);
    let dense = state_bytes(&mut dense);
    let values = strings(0..10);

    for (state, step) in [(&sparse, 1), (&library, 1), (&dense, 97)] {
        for at in (0..state.len()).step_by(step).chain(0..16) {
            for flip in [0x01, 0x80, 0xff] {
                let mut damaged = state.clone();
                damaged[at] ^= flip;
                let damaged = states(&[damaged]);
                let mut plain = accumulate(&values);
                let mut acc = ApproxDistinctGroupsAccumulator::new();
                acc.update_batch(std::slice::from_ref(&values), &[0; 10], None, 1)
                    .unwrap();
                let plain_result = plain.merge_batch(std::slice::from_ref(&damaged));
                let result = acc.merge_batch(std::slice::from_ref(&damaged), &[0], 1);
                assert_eq!(
                    result.is_ok(),
                    plain_result.is_ok(),
                    "byte {at} ^ {flip:#x}"
                );
                // Rejected or not, the group ends as the plain sketch.
                assert_eq!(
                    group_states(&mut acc, EmitTo::All),
                    [state_bytes(&mut plain)],
                    "byte {at} ^ {flip:#x}"
                );
            }
        }
    }
    let mut acc = ApproxDistinctGroupsAccumulator::new();
    let truncated = states(&[sparse[..sparse.len() - 1].to_vec()]);
    assert!(acc.merge_batch(&[truncated], &[0], 1).is_err());
}

#[test]
fn groups_accumulator_size_tracks_its_sketches() {
    let mut acc = ApproxDistinctGroupsAccumulator::new();
    let base = acc.size();
    let small = strings(0..10);
    acc.update_batch(std::slice::from_ref(&small), &[0; 10], None, 1)
        .unwrap();
    let one_small = acc.size();
    assert!(one_small > base && one_small < base + 256, "{acc:?}");

    let big = strings(0..50_000);
    acc.update_batch(std::slice::from_ref(&big), &[1; 50_000], None, 2)
        .unwrap();
    let registers = 4 * REGISTERS.div_ceil(REGISTERS_PER_WORD);
    assert!(acc.size() >= one_small + registers, "{acc:?}");
    assert!(acc.size() < one_small + registers + 1024, "{acc:?}");

    let before = acc.size();
    group_states(&mut acc, EmitTo::First(1));
    assert!(
        acc.size() < before && acc.size() >= base + registers,
        "{acc:?}"
    );
    group_states(&mut acc, EmitTo::All);
    assert_eq!(acc.size(), base);
}

#[tokio::test]
async fn sql_filter_clause_with_group_by() {
    let n = 30_000i64;
    let ctx = context();
    register_table(
        &ctx,
        vec![
            (
                "g",
                Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 3))),
            ),
            (
                "v",
                Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 12_000))),
            ),
        ],
        2,
        4096,
    );
    let batch = query(
        &ctx,
        "SELECT g, approx_distinct(v) FILTER (WHERE v % 2 = 0), \
         approx_distinct(CASE WHEN v % 2 = 0 THEN v END) \
         FROM t GROUP BY g ORDER BY g",
    )
    .await;
    assert_eq!(u64_values(&batch, 1), u64_values(&batch, 2));
    assert_within(u64_values(&batch, 1)[0], 2_000, 0.01);
}
