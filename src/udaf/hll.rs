//! `approx_distinct` backed by HyperLogLog++.
//!
//! Runnel replaces DataFusion's built-in `approx_distinct` with this one
//! because windowed queries keep per-batch partial aggregates, checkpoint
//! them, and merge them later, possibly in another process. That needs:
//!
//! * a hash with a fixed seed ([`SketchHasher`], XxHash64 with
//!   [`HASH_SEED`]), so sketches saved by one process merge correctly in
//!   another;
//! * a compact, versioned state: one `Binary` value holding the serialised
//!   sketch (a few dozen bytes for a handful of values, about 13 KiB at most).
//!   Dense sketches keep the sketch library's layout (version 1); sparse
//!   ones use a denser layout of their own (version 2: Rice-coded hash
//!   codes, about a quarter smaller). States of both versions are read, so
//!   sketches checkpointed before version 2 still merge;
//! * good accuracy at low cardinality: HyperLogLog++ keeps a sparse list of
//!   hashes until it would outgrow the dense registers, so small counts are
//!   exact or very nearly so. Large counts have a standard error of about
//!   0.8 % ([`PRECISION`] 14).
//!
//! With `GROUP BY`, DataFusion uses [`ApproxDistinctGroupsAccumulator`]:
//! every group's sketch in one vector, updated in one pass per batch, with
//! the same states and estimates as [`ApproxDistinctAccumulator`].
//!
//! Any input type is accepted. Each value is hashed from a canonical byte
//! form: integers widened to 64 bits, floats widened to `f64` (bit pattern),
//! strings and binaries as their bytes whatever the Arrow encoding
//! (`Utf8`, `LargeUtf8`, `Utf8View`, dictionary, run-end encoded, ...).
//! Nested values (lists, structs, maps, unions) are hashed from their Arrow
//! row encoding. NULLs are ignored. The result is a non-null `UInt64`.
//!
//! # Example
//!
//! Partial states from separate accumulators merge into the same estimate a
//! single accumulator would give:
//!
//! ```
//! use std::sync::Arc;
//!
//! use datafusion::arrow::array::{ArrayRef, StringArray};
//! use datafusion::common::ScalarValue;
//! use datafusion::logical_expr::Accumulator;
//! use runnel::udaf::hll::ApproxDistinctAccumulator;
//!
//! # fn main() -> datafusion::error::Result<()> {
//! let batch = |values: &[&str]| -> ArrayRef { Arc::new(StringArray::from(values.to_vec())) };
//!
//! // Two windows' worth of partial aggregates ...
//! let mut morning = ApproxDistinctAccumulator::new();
//! morning.update_batch(&[batch(&["alice", "bob", "carol"])])?;
//! let mut evening = ApproxDistinctAccumulator::new();
//! evening.update_batch(&[batch(&["bob", "dave"])])?;
//!
//! // ... saved as states and merged into a fresh accumulator.
//! let states = [morning.state()?, evening.state()?].map(|mut s| s.remove(0));
//! let mut day = ApproxDistinctAccumulator::new();
//! day.merge_batch(&[ScalarValue::iter_to_array(states)?])?;
//!
//! assert_eq!(day.evaluate()?, ScalarValue::UInt64(Some(4)));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::mem::size_of_val;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, BinaryArray, BooleanArray, UInt64Array,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal32Type, Decimal64Type, Decimal128Type, Decimal256Type,
    DurationMicrosecondType, DurationMillisecondType, DurationNanosecondType, DurationSecondType,
    Field, FieldRef, Float16Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, IntervalDayTimeType, IntervalMonthDayNanoType, IntervalUnit, IntervalYearMonthType,
    Time32MillisecondType, Time32SecondType, Time64MicrosecondType, Time64NanosecondType, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{Result, ScalarValue, exec_datafusion_err, exec_err, internal_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, DocSection, Documentation, EmitTo,
    GroupsAccumulator, Signature, Volatility,
};
use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
use serde::{Deserialize, Serialize};
use twox_hash::XxHash64;

/// HyperLogLog++ precision: 2^14 registers, standard error ≈ 1.04 / √16384 ≈ 0.8 %.
///
/// Part of the state format: sketches of different precisions cannot be merged.
pub const PRECISION: u8 = 14;

/// Seed of the XxHash64 value hash.
///
/// Part of the state format: changing it makes new sketches count values
/// already present in saved ones a second time.
pub const HASH_SEED: u64 = 0;

/// First byte of a state in the sketch library's serde layout: every dense
/// state, and the sparse ones written before [`COMPACT_VERSION`] existed.
const FORMAT_VERSION: u8 = 1;

/// First byte of a sparse state in the compact layout of
/// [`write_sparse_state`]. States of either version are read.
const COMPACT_VERSION: u8 = 2;

/// The sketch type. Values go in as their 64-bit hash (see [`PreHashed`]).
type Sketch = HyperLogLogPlus<u64, PreHashed>;

/// Builds the value hasher: XxHash64 seeded with [`HASH_SEED`], over a
/// value's canonical bytes (see the module docs).
///
/// Unlike std's `RandomState` the hash is the same in every process, which
/// is what lets checkpointed sketches merge with fresh ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SketchHasher;

impl BuildHasher for SketchHasher {
    type Hasher = XxHash64;

    fn build_hasher(&self) -> XxHash64 {
        XxHash64::with_seed(HASH_SEED)
    }
}

/// What [`SketchHasher`] computes for `bytes`, in one call.
fn hash_bytes(bytes: &[u8]) -> u64 {
    XxHash64::oneshot(HASH_SEED, bytes)
}

/// The hasher builder of [`Sketch`]: values are hashed once, up front, and
/// the sketch is handed the `u64`, which this passes through unchanged.
///
/// It serialises to nothing, as [`SketchHasher`] does, so the state bytes
/// are the same whichever of the two a sketch is built with.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct PreHashed;

impl BuildHasher for PreHashed {
    type Hasher = PassThrough;

    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

/// Returns the `u64` it was given (`<u64 as Hash>` calls `write_u64`).
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, _bytes: &[u8]) {
        unreachable!("sketches are only fed u64 hashes");
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

/// Runnel's `approx_distinct` as an [`AggregateUDF`], ready for
/// `SessionContext::register_udaf` (which replaces DataFusion's built-in
/// function of the same name).
pub fn approx_distinct_udaf() -> AggregateUDF {
    AggregateUDF::new_from_impl(ApproxDistinctHll::new())
}

/// The `approx_distinct(expr)` aggregate: HyperLogLog++ estimate of the
/// number of distinct non-null values of `expr`, as a non-null `UInt64`.
///
/// State: one non-null `Binary` field holding the serialised sketch.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ApproxDistinctHll {
    signature: Signature,
}

impl ApproxDistinctHll {
    /// Creates the function; it accepts one argument of any type.
    pub fn new() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl Default for ApproxDistinctHll {
    fn default() -> Self {
        Self::new()
    }
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DocSection {
            include: true,
            label: "Approximate Functions",
            description: None,
        },
        "Returns the approximate number of distinct non-null input values, \
         estimated with HyperLogLog++ (precision 14, about 0.8 % standard error; \
         exact or nearly so at low cardinality).",
        "approx_distinct(expression)",
    )
    .with_sql_example("```sql\n> SELECT approx_distinct(user_id) FROM clicks;\n```")
    .with_standard_argument("expression", None)
    .build()
});

impl AggregateUDFImpl for ApproxDistinctHll {
    fn name(&self) -> &str {
        "approx_distinct"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::UInt64)
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        Ok(ScalarValue::UInt64(Some(0)))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "hll_sketch"),
            DataType::Binary,
            false,
        ))])
    }

    fn accumulator(&self, _acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(ApproxDistinctAccumulator::new()))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(ApproxDistinctGroupsAccumulator::new()))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

/// Accumulator of [`ApproxDistinctHll`]: one HyperLogLog++ sketch.
///
/// [`Accumulator::state`] and [`Accumulator::merge_batch`] round-trip
/// exactly: merging the states of accumulators that each saw part of the
/// data gives the same estimate as one accumulator that saw all of it.
/// `state()` is canonical: the same set of values always yields the same
/// bytes.
pub struct ApproxDistinctAccumulator {
    sketch: Sketch,
    /// Heap bytes held by the sketch, refreshed after every mutation so
    /// that `size()` (called after each update) stays O(1).
    heap_bytes: usize,
    /// The sketch switched to dense registers. It never switches back and
    /// its size no longer changes, so there is nothing left to measure.
    dense: bool,
}

impl ApproxDistinctAccumulator {
    /// Creates an accumulator holding an empty sketch.
    pub fn new() -> Self {
        Self {
            sketch: empty_sketch(),
            heap_bytes: 0,
            dense: false,
        }
    }

    /// Folds the sketch's pending hashes into its sparse list (which may
    /// make it dense) and returns the estimate.
    fn flush(&mut self) -> f64 {
        let estimate = self.sketch.count();
        self.measure();
        estimate
    }

    fn measure(&mut self) {
        if self.dense {
            return;
        }
        let mut measure = Measure::default();
        // Encoding a sketch cannot fail; on the impossible error keep the old figure.
        if codec::encode(&self.sketch, &mut measure).is_ok() {
            self.heap_bytes = measure.bytes;
            self.dense = measure.saw_some;
        }
    }
}

impl Default for ApproxDistinctAccumulator {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ApproxDistinctAccumulator {
    // The sketch itself is thousands of register words: show only its shape.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApproxDistinctAccumulator")
            .field("dense", &self.dense)
            .field("heap_bytes", &self.heap_bytes)
            .finish_non_exhaustive()
    }
}

impl Accumulator for ApproxDistinctAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let [values] = values else {
            return internal_err!("approx_distinct expects 1 argument, got {}", values.len());
        };
        let sketch = &mut self.sketch;
        hash_array(values, None, &mut |_, hash| sketch.insert_any(&hash))?;
        self.measure();
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        // `count` needs `&mut`: it folds pending hashes in, which leaves the
        // set of hashes, and so every later estimate, unchanged.
        let estimate = self.flush();
        Ok(ScalarValue::UInt64(Some(estimate.round() as u64)))
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.heap_bytes
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        // Pending hashes sit in a HashSet whose order varies from run to run;
        // folding them in first makes the bytes canonical and smaller.
        self.flush();
        let mut bytes = Vec::with_capacity(1 + self.heap_bytes);
        bytes.push(FORMAT_VERSION);
        codec::encode(&self.sketch, &mut bytes)
            .map_err(|e| exec_datafusion_err!("cannot serialise approx_distinct sketch: {e}"))?;
        // A sparse sketch is written in the compact layout instead.
        let mut codes = Vec::new();
        if !self.dense && read_library_sparse_state(&bytes, &mut codes).is_some() {
            codes.sort_unstable();
            bytes.clear();
            write_sparse_state(&codes, &mut bytes);
        }
        Ok(vec![ScalarValue::Binary(Some(bytes))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let [states] = states else {
            return internal_err!(
                "approx_distinct expects 1 state column, got {}",
                states.len()
            );
        };
        for_each_state(states, |_, bytes| {
            let other = decode_sketch(bytes)?;
            self.sketch
                .merge(&other)
                .map_err(|e| exec_datafusion_err!("cannot merge approx_distinct sketches: {e}"))
        })?;
        self.measure();
        Ok(())
    }
}

/// Calls `f(row, state)` for every non-null state in `states`: a NULL state
/// carries no values.
fn for_each_state(states: &ArrayRef, mut f: impl FnMut(usize, &[u8]) -> Result<()>) -> Result<()> {
    fn each<'a>(
        states: impl Iterator<Item = Option<&'a [u8]>>,
        f: &mut impl FnMut(usize, &[u8]) -> Result<()>,
    ) -> Result<()> {
        states
            .enumerate()
            .try_for_each(|(row, state)| state.map_or(Ok(()), |bytes| f(row, bytes)))
    }
    // Binary is what `state()` produces; the other binary encodings are
    // accepted in case a checkpoint store hands states back re-encoded.
    match states.data_type() {
        DataType::Binary => each(states.as_binary::<i32>().iter(), &mut f),
        DataType::LargeBinary => each(states.as_binary::<i64>().iter(), &mut f),
        DataType::BinaryView => each(states.as_binary_view().iter(), &mut f),
        other => internal_err!("approx_distinct state must be Binary, got {other}"),
    }
}

/// [`GroupsAccumulator`] of [`ApproxDistinctHll`]: one sketch per group,
/// all updated in a single pass over each batch.
///
/// States and estimates are those of [`ApproxDistinctAccumulator`], byte
/// for byte, so either accumulator merges the other's states.
///
/// Most groups of a large `GROUP BY` see a handful of values per batch. A
/// group therefore keeps its HyperLogLog++ sparse hash codes in a plain
/// vector, sorted only when needed, and writes its state from them
/// directly. It builds dense registers when its codes outgrow the sparse
/// list, which is exactly when the sketch library would.
#[derive(Default)]
pub struct ApproxDistinctGroupsAccumulator {
    groups: Vec<GroupSketch>,
    /// Heap bytes held by the sketches in `groups`, kept up to date by every
    /// change so that `size()` is O(1).
    heap_bytes: usize,
    /// Hash codes of the state being merged.
    scratch: Vec<u32>,
}

impl ApproxDistinctGroupsAccumulator {
    /// Creates an accumulator with no groups.
    pub fn new() -> Self {
        Self::default()
    }

    fn resize(&mut self, total_num_groups: usize) {
        if self.groups.len() < total_num_groups {
            self.groups
                .resize_with(total_num_groups, GroupSketch::default);
        }
    }

    /// Removes the groups `emit_to` asks for, no longer counting their memory.
    fn take(&mut self, emit_to: EmitTo) -> Vec<GroupSketch> {
        let taken = emit_to.take_needed(&mut self.groups);
        self.heap_bytes -= taken.iter().map(GroupSketch::heap_bytes).sum::<usize>();
        taken
    }
}

impl fmt::Debug for ApproxDistinctGroupsAccumulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApproxDistinctGroupsAccumulator")
            .field("groups", &self.groups.len())
            .field("heap_bytes", &self.heap_bytes)
            .finish_non_exhaustive()
    }
}

impl GroupsAccumulator for ApproxDistinctGroupsAccumulator {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let [values] = values else {
            return internal_err!("approx_distinct expects 1 argument, got {}", values.len());
        };
        self.resize(total_num_groups);
        let mask = opt_filter.map(filter_mask);
        let Self {
            groups, heap_bytes, ..
        } = self;
        hash_array(values, mask.as_ref(), &mut |row, hash| {
            let group = &mut groups[group_indices[row]];
            let before = group.heap_bytes();
            group.insert(hash);
            *heap_bytes = *heap_bytes + group.heap_bytes() - before;
        })
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let mut groups = self.take(emit_to);
        let estimates = groups.iter_mut().map(GroupSketch::estimate);
        Ok(Arc::new(UInt64Array::from_iter_values(estimates)))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let groups = self.take(emit_to);
        let mut states = StatesBuilder::with_capacity(groups.len());
        for mut group in groups {
            group.write_state(&mut states.values)?;
            states.end_state()?;
        }
        Ok(vec![states.finish()])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        let [states] = values else {
            return internal_err!(
                "approx_distinct expects 1 state column, got {}",
                values.len()
            );
        };
        self.resize(total_num_groups);
        let Self {
            groups,
            heap_bytes,
            scratch,
        } = self;
        for_each_state(states, |row, bytes| {
            let group = &mut groups[group_indices[row]];
            let before = group.heap_bytes();
            let merged = group.merge_state(bytes, scratch);
            *heap_bytes = *heap_bytes + group.heap_bytes() - before;
            merged
        })
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let [values] = values else {
            return internal_err!("approx_distinct expects 1 argument, got {}", values.len());
        };
        // Each row on its own: the state of its value, or an empty one.
        let mut codes = vec![None; values.len()];
        let mask = opt_filter.map(filter_mask);
        hash_array(values, mask.as_ref(), &mut |row, hash| {
            codes[row] = Some(sparse_code(hash));
        })?;
        let mut states = StatesBuilder::with_capacity(codes.len());
        for code in codes {
            write_sparse_state(code.as_slice(), &mut states.values);
            states.end_state()?;
        }
        Ok(vec![states.finish()])
    }

    fn size(&self) -> usize {
        size_of_val(self)
            + self.groups.capacity() * size_of::<GroupSketch>()
            + self.heap_bytes
            + self.scratch.capacity() * size_of::<u32>()
    }
}

/// The rows a `FILTER (WHERE ...)` clause keeps: true, not NULL.
fn filter_mask(filter: &BooleanArray) -> NullBuffer {
    match filter.nulls() {
        Some(nulls) => NullBuffer::new(filter.values() & nulls.inner()),
        None => NullBuffer::new(filter.values().clone()),
    }
}

/// Builds the `Binary` state column without spare capacity: the state
/// batches are what a window holds in memory until it closes.
struct StatesBuilder {
    values: Vec<u8>,
    offsets: Vec<i32>,
}

impl StatesBuilder {
    fn with_capacity(states: usize) -> Self {
        let mut offsets = Vec::with_capacity(states + 1);
        offsets.push(0);
        Self {
            values: Vec::new(),
            offsets,
        }
    }

    /// Ends the state appended to `values` since the previous one.
    fn end_state(&mut self) -> Result<()> {
        let end = i32::try_from(self.values.len())
            .map_err(|_| exec_datafusion_err!("approx_distinct states exceed 2 GiB"))?;
        self.offsets.push(end);
        Ok(())
    }

    fn finish(mut self) -> ArrayRef {
        self.values.shrink_to_fit();
        Arc::new(BinaryArray::new(
            OffsetBuffer::new(self.offsets.into()),
            self.values.into(),
            None,
        ))
    }
}

/// One group's sketch.
enum GroupSketch {
    /// Sparse: the hash codes the sketch library would keep in its sparse list.
    Sparse(SparseCodes),
    /// Dense: a library sketch that has switched to registers.
    Dense(Box<Sketch>),
}

/// Sparse hash codes: `codes[..sorted]` is sorted and distinct; the codes
/// after it came since, in any order, possibly repeated.
#[derive(Default)]
struct SparseCodes {
    codes: Vec<u32>,
    sorted: usize,
}

/// Codes a sparse group takes before it first sorts them.
const MIN_UNSORTED_CODES: usize = 32;

/// Heap bytes of a dense group: the sketch and its registers (its sparse
/// list and pending set are empty and unallocated).
const DENSE_HEAP_BYTES: usize =
    size_of::<Sketch>() + size_of::<u32>() * REGISTERS.div_ceil(REGISTERS_PER_WORD);

impl Default for GroupSketch {
    fn default() -> Self {
        Self::Sparse(SparseCodes::default())
    }
}

impl GroupSketch {
    fn heap_bytes(&self) -> usize {
        match self {
            Self::Sparse(sparse) => sparse.codes.capacity() * size_of::<u32>(),
            Self::Dense(_) => DENSE_HEAP_BYTES,
        }
    }

    #[inline]
    fn insert(&mut self, hash: u64) {
        match self {
            Self::Sparse(sparse) => {
                sparse.codes.push(sparse_code(hash));
                // Sorting once the unsorted tail is as long as the sorted
                // head keeps the cost at O(log n) per code.
                if sparse.codes.len() < 2 * sparse.sorted + MIN_UNSORTED_CODES {
                    return;
                }
            }
            Self::Dense(sketch) => return sketch.insert_any(&hash),
        }
        self.normalize();
    }

    /// Sorts and deduplicates a sparse group's codes, and makes the group
    /// dense if they no longer fit the sparse list.
    fn normalize(&mut self) {
        let Self::Sparse(sparse) = self else { return };
        if sparse.sorted < sparse.codes.len() {
            sparse.codes.sort_unstable();
            sparse.codes.dedup();
            sparse.sorted = sparse.codes.len();
        }
        // Each code takes 1 to 5 bytes of the sparse list.
        if sparse.codes.len() * 5 > SPARSE_LIMIT && sparse_list_len(&sparse.codes) > SPARSE_LIMIT {
            *self = Self::Dense(dense_from_codes(&sparse.codes));
        }
    }

    /// The estimate, rounded as [`ApproxDistinctAccumulator`] rounds it.
    fn estimate(&mut self) -> u64 {
        self.normalize();
        let estimate = match self {
            Self::Sparse(sparse) => sparse_estimate(sparse.codes.len()),
            Self::Dense(sketch) => sketch.count(),
        };
        estimate.round() as u64
    }

    /// Appends the state [`ApproxDistinctAccumulator::state`] would give.
    fn write_state(&mut self, out: &mut Vec<u8>) -> Result<()> {
        self.normalize();
        match self {
            Self::Sparse(sparse) => write_sparse_state(&sparse.codes, out),
            Self::Dense(sketch) => {
                out.push(FORMAT_VERSION);
                codec::encode(&**sketch, out).map_err(|e| {
                    exec_datafusion_err!("cannot serialise approx_distinct sketch: {e}")
                })?;
            }
        }
        Ok(())
    }

    /// Merges a serialised state in; `scratch` is working space.
    fn merge_state(&mut self, bytes: &[u8], scratch: &mut Vec<u32>) -> Result<()> {
        scratch.clear();
        if read_sparse_state(bytes, scratch) {
            self.merge_codes(scratch);
            return Ok(());
        }
        // Dense, invalid, or sparse in a form `write_sparse_state` does not
        // produce: let the full decoder sort it out.
        let other = decode_sketch(bytes)?;
        if is_dense(&other) {
            if let Self::Sparse(sparse) = self {
                *self = Self::Dense(dense_from_codes(&sparse.codes));
            }
            let Self::Dense(sketch) = self else {
                unreachable!("made dense above")
            };
            return sketch
                .merge(&other)
                .map_err(|e| exec_datafusion_err!("cannot merge approx_distinct sketches: {e}"));
        }
        let mut canonical = vec![FORMAT_VERSION];
        codec::encode(&other, &mut canonical)
            .map_err(|e| exec_datafusion_err!("cannot serialise approx_distinct sketch: {e}"))?;
        scratch.clear();
        if !read_sparse_state(&canonical, scratch) {
            return internal_err!("approx_distinct cannot re-read a sparse state it wrote");
        }
        self.merge_codes(scratch);
        Ok(())
    }

    fn merge_codes(&mut self, codes: &[u32]) {
        match self {
            Self::Sparse(sparse) => {
                sparse.codes.extend_from_slice(codes);
                if sparse.codes.len() >= 2 * sparse.sorted + MIN_UNSORTED_CODES {
                    self.normalize();
                }
            }
            Self::Dense(sketch) => {
                for &code in codes {
                    sketch.insert_any(&register_hash(code));
                }
            }
        }
    }
}

/// Whether a library sketch has switched to dense registers.
fn is_dense(sketch: &Sketch) -> bool {
    let mut measure = Measure::default();
    codec::encode(sketch, &mut measure).is_ok() && measure.saw_some
}

/// A dense sketch holding `codes`.
fn dense_from_codes(codes: &[u32]) -> Box<Sketch> {
    let mut sketch = Box::new(EMPTY_DENSE.clone());
    for &code in codes {
        sketch.insert_any(&register_hash(code));
    }
    sketch
}

/// A dense sketch with every register zero, decoded from a state so that it
/// is dense from the start (the library has no constructor for that).
static EMPTY_DENSE: LazyLock<Sketch> = LazyLock::new(|| {
    let mut bytes = Vec::new();
    write_library_sparse_state(&[], &mut bytes);
    // Swap "no registers" for all-zero registers.
    bytes.pop();
    bytes.push(1);
    let words = vec![0u32; REGISTERS.div_ceil(REGISTERS_PER_WORD)];
    codec::encode(&(words, REGISTERS as u64, REGISTERS as u64), &mut bytes)
        .expect("registers encode");
    decode_sketch(&bytes).expect("empty dense sketch decodes")
});

fn empty_sketch() -> Sketch {
    Sketch::new(PRECISION, PreHashed).expect("PRECISION is within HyperLogLog++'s 4..=18")
}

/// Calls `f(row, hash)` for every row of `array` that is neither NULL nor
/// masked out by `mask`, with the hash of the value's canonical bytes (see
/// the module docs).
fn hash_array<F: FnMut(usize, u64)>(
    array: &ArrayRef,
    mask: Option<&NullBuffer>,
    f: &mut F,
) -> Result<()> {
    // Widening keeps sketches compatible when a column's integer, float or
    // temporal width changes, and makes the bytes independent of the platform.
    fn signed(v: impl Into<i64>) -> [u8; 8] {
        v.into().to_le_bytes()
    }
    fn unsigned(v: impl Into<u64>) -> [u8; 8] {
        v.into().to_le_bytes()
    }
    fn decimal(v: impl Into<i128>) -> [u8; 16] {
        v.into().to_le_bytes()
    }
    // Raw bits, so that -0.0 / 0.0 and NaN payloads count as distinct, as
    // they do in DataFusion's COUNT(DISTINCT).
    fn float(v: f64) -> [u8; 8] {
        v.to_bits().to_le_bytes()
    }

    let a = array.as_ref();
    match a.data_type() {
        // Decoded so a value hashes the same whether or not it is encoded.
        DataType::Dictionary(_, value_type) => return hash_array(&cast(a, value_type)?, mask, f),
        DataType::RunEndEncoded(_, values) => {
            return hash_array(&cast(a, values.data_type())?, mask, f);
        }
        _ => {}
    }
    // Logical nulls, so NULLs of `Null` arrays count too.
    let valid = NullBuffer::union(a.logical_nulls().as_ref(), mask);
    let s = &mut Rows {
        valid: valid.as_ref(),
        len: a.len(),
        f,
    };
    match a.data_type() {
        DataType::Null => {}
        DataType::Boolean => {
            let values = a.as_boolean();
            s.each(|i| [u8::from(values.value(i))]);
        }
        DataType::Int8 => primitive::<Int8Type, 8>(s, a, signed),
        DataType::Int16 => primitive::<Int16Type, 8>(s, a, signed),
        DataType::Int32 => primitive::<Int32Type, 8>(s, a, signed),
        DataType::Int64 => primitive::<Int64Type, 8>(s, a, signed),
        DataType::UInt8 => primitive::<UInt8Type, 8>(s, a, unsigned),
        DataType::UInt16 => primitive::<UInt16Type, 8>(s, a, unsigned),
        DataType::UInt32 => primitive::<UInt32Type, 8>(s, a, unsigned),
        DataType::UInt64 => primitive::<UInt64Type, 8>(s, a, unsigned),
        DataType::Float16 => primitive::<Float16Type, 8>(s, a, |v| float(v.to_f64())),
        DataType::Float32 => primitive::<Float32Type, 8>(s, a, |v| float(v.into())),
        DataType::Float64 => primitive::<Float64Type, 8>(s, a, float),
        DataType::Decimal32(..) => primitive::<Decimal32Type, 16>(s, a, decimal),
        DataType::Decimal64(..) => primitive::<Decimal64Type, 16>(s, a, decimal),
        DataType::Decimal128(..) => primitive::<Decimal128Type, 16>(s, a, decimal),
        DataType::Decimal256(..) => primitive::<Decimal256Type, 32>(s, a, |v| v.to_le_bytes()),
        DataType::Date32 => primitive::<Date32Type, 8>(s, a, signed),
        DataType::Date64 => primitive::<Date64Type, 8>(s, a, signed),
        DataType::Time32(TimeUnit::Second) => primitive::<Time32SecondType, 8>(s, a, signed),
        DataType::Time32(TimeUnit::Millisecond) => {
            primitive::<Time32MillisecondType, 8>(s, a, signed)
        }
        DataType::Time64(TimeUnit::Microsecond) => {
            primitive::<Time64MicrosecondType, 8>(s, a, signed)
        }
        DataType::Time64(TimeUnit::Nanosecond) => {
            primitive::<Time64NanosecondType, 8>(s, a, signed)
        }
        DataType::Timestamp(unit, _) => match unit {
            TimeUnit::Second => primitive::<TimestampSecondType, 8>(s, a, signed),
            TimeUnit::Millisecond => primitive::<TimestampMillisecondType, 8>(s, a, signed),
            TimeUnit::Microsecond => primitive::<TimestampMicrosecondType, 8>(s, a, signed),
            TimeUnit::Nanosecond => primitive::<TimestampNanosecondType, 8>(s, a, signed),
        },
        DataType::Duration(unit) => match unit {
            TimeUnit::Second => primitive::<DurationSecondType, 8>(s, a, signed),
            TimeUnit::Millisecond => primitive::<DurationMillisecondType, 8>(s, a, signed),
            TimeUnit::Microsecond => primitive::<DurationMicrosecondType, 8>(s, a, signed),
            TimeUnit::Nanosecond => primitive::<DurationNanosecondType, 8>(s, a, signed),
        },
        DataType::Interval(IntervalUnit::YearMonth) => {
            primitive::<IntervalYearMonthType, 8>(s, a, signed)
        }
        DataType::Interval(IntervalUnit::DayTime) => {
            primitive::<IntervalDayTimeType, 8>(s, a, |v| {
                let mut bytes = [0; 8];
                bytes[..4].copy_from_slice(&v.days.to_le_bytes());
                bytes[4..].copy_from_slice(&v.milliseconds.to_le_bytes());
                bytes
            })
        }
        DataType::Interval(IntervalUnit::MonthDayNano) => {
            primitive::<IntervalMonthDayNanoType, 16>(s, a, |v| {
                let mut bytes = [0; 16];
                bytes[..4].copy_from_slice(&v.months.to_le_bytes());
                bytes[4..8].copy_from_slice(&v.days.to_le_bytes());
                bytes[8..].copy_from_slice(&v.nanoseconds.to_le_bytes());
                bytes
            })
        }
        DataType::Utf8 => {
            let values = a.as_string::<i32>();
            s.each(|i| values.value(i).as_bytes());
        }
        DataType::LargeUtf8 => {
            let values = a.as_string::<i64>();
            s.each(|i| values.value(i).as_bytes());
        }
        DataType::Utf8View => {
            let values = a.as_string_view();
            s.each(|i| values.value(i).as_bytes());
        }
        DataType::Binary => {
            let values = a.as_binary::<i32>();
            s.each(|i| values.value(i));
        }
        DataType::LargeBinary => {
            let values = a.as_binary::<i64>();
            s.each(|i| values.value(i));
        }
        DataType::BinaryView => {
            let values = a.as_binary_view();
            s.each(|i| values.value(i));
        }
        DataType::FixedSizeBinary(_) => {
            let values = a.as_fixed_size_binary();
            s.each(|i| values.value(i));
        }
        DataType::Dictionary(..) | DataType::RunEndEncoded(..) => unreachable!("decoded above"),
        // Lists, structs, maps, unions: Arrow's row format is a canonical,
        // self-delimiting byte form of any value.
        data_type => {
            let converter = RowConverter::new(vec![SortField::new(data_type.clone())])?;
            let rows = converter.convert_columns(std::slice::from_ref(array))?;
            s.each(|i| rows.row(i));
        }
    }
    Ok(())
}

/// The rows [`hash_array`] visits, and where their hashes go.
struct Rows<'a, F> {
    /// `None` when every row is visited.
    valid: Option<&'a NullBuffer>,
    len: usize,
    f: &'a mut F,
}

impl<F: FnMut(usize, u64)> Rows<'_, F> {
    /// Hashes `bytes(row)` for every visited row.
    #[inline]
    fn each<B: AsRef<[u8]>>(&mut self, bytes: impl Fn(usize) -> B) {
        let f = &mut *self.f;
        match self.valid {
            Some(valid) => valid
                .valid_indices()
                .for_each(|i| f(i, hash_bytes(bytes(i).as_ref()))),
            None => (0..self.len).for_each(|i| f(i, hash_bytes(bytes(i).as_ref()))),
        }
    }
}

/// Hashes each visited value of a primitive array as `to_bytes(value)`.
fn primitive<T: ArrowPrimitiveType, const N: usize>(
    rows: &mut Rows<'_, impl FnMut(usize, u64)>,
    array: &dyn Array,
    to_bytes: impl Fn(T::Native) -> [u8; N],
) {
    let values = array.as_primitive::<T>().values();
    rows.each(|i| to_bytes(values[i]));
}

/// Dense registers of a sketch.
const REGISTERS: usize = 1 << PRECISION;

/// Bits of the index of a sparse hash code (fixed by the sketch library).
const SPARSE_PRECISION: u32 = 25;

/// Registers the sparse estimate counts over (the library's choice).
const SPARSE_REGISTERS: usize = 1 << (SPARSE_PRECISION - 1);

/// Bytes the sparse list may take before the sketch turns dense: what the
/// dense registers take, rounded the library's way.
const SPARSE_LIMIT: usize = 4 * REGISTERS / REGISTERS_PER_WORD;

/// The hash code the sketch library keeps in its sparse list for `hash`:
/// the top [`SPARSE_PRECISION`] bits shifted left by one, or, when the bits
/// between [`PRECISION`] and [`SPARSE_PRECISION`] are all zero (so they
/// cannot give the dense register's leading-zero count), the top bits
/// shifted by seven over that count and a set low bit.
#[inline]
fn sparse_code(hash: u64) -> u32 {
    let index = (hash >> (64 - SPARSE_PRECISION)) as u32;
    let between = (hash << PRECISION) >> (64 - (SPARSE_PRECISION - u32::from(PRECISION)));
    if between == 0 {
        let zeros =
            1 + ((hash << SPARSE_PRECISION) | (1 << (SPARSE_PRECISION - 1))).leading_zeros();
        (index << 7) | (zeros << 1) | 1
    } else {
        index << 1
    }
}

/// A hash that sets the same dense register to the same value as `code`
/// does, for feeding sparse codes into a dense sketch.
fn register_hash(code: u32) -> u64 {
    let precision = u32::from(PRECISION);
    // Decoded as the library decodes codes when a sketch turns dense.
    let (index, zeros) = if code & 1 == 1 {
        (
            code >> (32 - precision),
            ((code >> 1) & 0x3f) + SPARSE_PRECISION - precision,
        )
    } else {
        (
            (code << (32 - SPARSE_PRECISION - 1)) >> (32 - precision),
            (code << (32 - SPARSE_PRECISION + precision - 1)).leading_zeros() + 1,
        )
    };
    // A dense insert takes the register from the top bits and its value
    // from the leading zeros after them, plus one; past the 50 bits after
    // the index it counts 51.
    let hash_bits = 64 - precision;
    (u64::from(index) << hash_bits) | (1u64 << hash_bits).checked_shr(zeros).unwrap_or(0)
}

/// Bytes of the sparse list holding `codes` (sorted, distinct): each
/// difference from the previous code as a varint.
fn sparse_list_len(codes: &[u32]) -> usize {
    let mut previous = 0;
    codes
        .iter()
        .map(|&code| {
            let len = varint_len(code - previous);
            previous = code;
            len
        })
        .sum()
}

fn varint_len(value: u32) -> usize {
    (32 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The library's estimate for a sparse sketch of `codes` distinct codes:
/// linear counting over [`SPARSE_REGISTERS`], computed exactly as it does.
fn sparse_estimate(codes: usize) -> f64 {
    let (registers, zeros) = (SPARSE_REGISTERS as f64, (SPARSE_REGISTERS - codes) as f64);
    registers * (registers / zeros).ln()
}

/// What every state begins with: the format version and the sketch's
/// fixed layout (precision and sizes).
static STATE_PREFIX: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut bytes = vec![FORMAT_VERSION];
    codec::encode(&empty_sketch(), &mut bytes).expect("an empty sketch encodes");
    // Drop what follows the layout: no pending codes (1), an empty sparse
    // list (1 + 4 + 1) and no registers (1).
    let layout = bytes.len() - 8;
    assert_eq!(bytes[layout..], [0; 8], "empty sketch layout");
    bytes.truncate(layout);
    bytes
});

/// Appends the state of a sparse sketch holding `codes` (sorted, distinct)
/// in the library's layout, exactly as it serialises such a sketch once its
/// pending codes are merged.
fn write_library_sparse_state(codes: &[u32], out: &mut Vec<u8>) {
    let list_len = sparse_list_len(codes);
    out.reserve(STATE_PREFIX.len() + 16 + list_len);
    out.extend_from_slice(&STATE_PREFIX);
    out.push(0); // no pending codes
    put_varint(out, codes.len() as u64);
    out.extend_from_slice(&codes.last().copied().unwrap_or(0).to_le_bytes());
    put_varint(out, list_len as u64);
    let mut previous = 0;
    for &code in codes {
        put_varint(out, u64::from(code - previous));
        previous = code;
    }
    out.push(0); // no dense registers
}

/// Appends the codes of a sparse state (of either version) to `codes` and
/// returns true, without building a sketch. Returns false, leaving `codes`
/// in an unspecified state, for anything else: a dense state, an invalid
/// one, or one in a form the writers here do not produce. It accepts nothing
/// that [`decode_sketch`] rejects.
fn read_sparse_state(bytes: &[u8], codes: &mut Vec<u32>) -> bool {
    match bytes.split_first() {
        Some((&COMPACT_VERSION, body)) => read_compact_state(body, codes).is_ok(),
        Some((&FORMAT_VERSION, _)) => read_library_sparse_state(bytes, codes).is_some(),
        _ => false,
    }
}

fn read_library_sparse_state(bytes: &[u8], codes: &mut Vec<u32>) -> Option<()> {
    let input = bytes.strip_prefix(STATE_PREFIX.as_slice())?;
    let (pending, mut input) = read_varint(input)?;
    for _ in 0..pending {
        let (code, rest) = input.split_first_chunk::<4>()?;
        input = rest;
        let code = u32::from_le_bytes(*code);
        check_code(code).ok()?;
        codes.push(code);
    }
    let (count, rest) = read_varint(input)?;
    let (last, rest) = rest.split_first_chunk::<4>()?;
    let (list_len, rest) = read_varint(rest)?;
    let list_len = usize::try_from(list_len).ok()?;
    let list = rest.get(..list_len)?;
    // No dense registers, and nothing after.
    if rest[list_len..] != [0] {
        return None;
    }
    walk_sparse_list(list, count, u32::from_le_bytes(*last), |code| {
        codes.push(code)
    })
    .ok()
}

/// Appends the state of a sparse sketch holding `codes` (sorted, distinct)
/// in the compact layout, after [`COMPACT_VERSION`]:
///
/// * the number of even codes and of odd codes, as varints;
/// * the odd codes (rare: they carry a leading-zero count), as varint gaps;
/// * if there are even codes, a Rice parameter `k` (one byte), then the
///   even codes halved, as Rice-coded gaps (quotient in unary, then `k` low
///   bits; least significant bit first), zero-padded to a whole byte.
///
/// A gap is the difference from the previous value less one (the first
/// value itself). Even codes are the top 25 bits of a hash, nearly uniform,
/// so their gaps are close to geometric, which Rice coding suits: about
/// 17 bits a code at 800 codes, where the library's varints of doubled
/// differences take 23.
fn write_sparse_state(codes: &[u32], out: &mut Vec<u8>) {
    let halved_evens = || codes.iter().filter(|&&c| c & 1 == 0).map(|&c| c >> 1);
    let odds = || codes.iter().filter(|&&c| c & 1 == 1).copied();
    let evens = halved_evens().count();
    out.push(COMPACT_VERSION);
    put_varint(out, evens as u64);
    put_varint(out, (codes.len() - evens) as u64);
    for gap in gaps(odds()) {
        put_varint(out, u64::from(gap));
    }
    if evens > 0 {
        let k = rice_parameter(|| gaps(halved_evens()), evens as u64);
        out.push(k as u8);
        let mut bits = BitWriter::new(out);
        for gap in gaps(halved_evens()) {
            bits.rice(gap, k);
        }
        bits.finish();
    }
}

/// Gaps between the values of a strictly increasing sequence: each value
/// less the previous one less one, the first value as it is.
fn gaps(values: impl Iterator<Item = u32>) -> impl Iterator<Item = u32> {
    let mut next = 0u32;
    values.map(move |value| {
        let gap = value - next;
        next = value.wrapping_add(1);
        gap
    })
}

/// The Rice parameter that codes `gaps` (`count` of them) in the fewest
/// bits, among those next to the log of their mean.
fn rice_parameter<I: Iterator<Item = u32>>(gaps: impl Fn() -> I, count: u64) -> u32 {
    let mean = (gaps().map(u64::from).sum::<u64>() / count).max(1);
    let guess = mean.ilog2();
    let bits =
        |k: u32| gaps().map(|gap| u64::from(gap >> k)).sum::<u64>() + count * u64::from(k + 1);
    (guess.saturating_sub(1)..=(guess + 1).min(31))
        .min_by_key(|&k| bits(k))
        .expect("a non-empty range")
}

/// Reads the body of a [`COMPACT_VERSION`] state (see
/// [`write_sparse_state`]), appending its codes to `codes`.
fn read_compact_state(body: &[u8], codes: &mut Vec<u32>) -> std::result::Result<(), String> {
    let truncated = || "truncated compact state".to_string();
    let (evens, rest) = read_varint(body).ok_or_else(truncated)?;
    let (odds, mut rest) = read_varint(rest).ok_or_else(truncated)?;
    if evens.saturating_add(odds) > SPARSE_REGISTERS as u64 {
        return Err("too many codes in a compact state".into());
    }
    let mut next = 0u32;
    for _ in 0..odds {
        let (gap, tail) = read_varint(rest).ok_or_else(truncated)?;
        rest = tail;
        let code = u32::try_from(gap)
            .ok()
            .and_then(|gap| next.checked_add(gap))
            .filter(|code| code & 1 == 1)
            .ok_or("invalid odd code in compact state")?;
        check_code(code)?;
        codes.push(code);
        next = code.wrapping_add(1);
    }
    if evens == 0 {
        return if rest.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes after a compact state".into())
        };
    }
    let (&k, rest) = rest.split_first().ok_or_else(truncated)?;
    let k = u32::from(k);
    if k > 31 {
        return Err(format!("invalid Rice parameter {k}"));
    }
    let mut bits = BitReader::new(rest);
    let mut next = 0u32;
    for _ in 0..evens {
        let gap = bits.rice(k).ok_or_else(truncated)?;
        // Halved even codes have 31 bits.
        let half = u64::from(next).saturating_add(gap);
        if half > u64::from(u32::MAX >> 1) {
            return Err("invalid even code in compact state".into());
        }
        codes.push((half as u32) << 1);
        next = half as u32 + 1;
    }
    if !bits.at_padded_end() {
        return Err("trailing bits after a compact state".into());
    }
    Ok(())
}

/// Writes bits least significant first.
struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    pending: u64,
    len: u32,
}

impl<'a> BitWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        Self {
            out,
            pending: 0,
            len: 0,
        }
    }

    /// Writes the low `bits` (at most 32) bits of `value`.
    fn put(&mut self, value: u64, bits: u32) {
        self.pending |= value << self.len;
        self.len += bits;
        while self.len >= 8 {
            self.out.push(self.pending as u8);
            self.pending >>= 8;
            self.len -= 8;
        }
    }

    /// Writes `value` Rice-coded with parameter `k`.
    fn rice(&mut self, value: u32, k: u32) {
        let mut quotient = value >> k;
        while quotient >= 32 {
            self.put(u64::from(u32::MAX), 32);
            quotient -= 32;
        }
        // `quotient` ones, then a zero.
        self.put((1 << quotient) - 1, quotient + 1);
        self.put(u64::from(value) & ((1 << k) - 1), k);
    }

    /// Writes what is left, zero-padded to a whole byte.
    fn finish(self) {
        if self.len > 0 {
            self.out.push(self.pending as u8);
        }
    }
}

/// Reads what [`BitWriter`] writes.
struct BitReader<'a> {
    input: &'a [u8],
    /// Bits read from `input` but not consumed, lowest first; the bits
    /// above `len` are zero.
    pending: u64,
    len: u32,
}

impl<'a> BitReader<'a> {
    fn new(input: &'a [u8]) -> Self {
        Self {
            input,
            pending: 0,
            len: 0,
        }
    }

    fn refill(&mut self) {
        while self.len <= 56 {
            let Some((&byte, rest)) = self.input.split_first() else {
                return;
            };
            self.pending |= u64::from(byte) << self.len;
            self.len += 8;
            self.input = rest;
        }
    }

    fn consume(&mut self, bits: u32) {
        self.pending = self.pending.checked_shr(bits).unwrap_or(0);
        self.len -= bits;
    }

    /// Reads a Rice-coded value with parameter `k`, or None if the input
    /// ends first.
    fn rice(&mut self, k: u32) -> Option<u64> {
        let mut quotient = 0u64;
        loop {
            self.refill();
            let ones = self.pending.trailing_ones().min(self.len);
            quotient += u64::from(ones);
            if ones < self.len {
                self.consume(ones + 1);
                break;
            }
            if self.input.is_empty() {
                return None;
            }
            self.consume(ones);
        }
        // Larger values are invalid anyway; this keeps the shift in range.
        if quotient > u64::from(u32::MAX) >> k {
            return Some(u64::MAX);
        }
        self.refill();
        if self.len < k {
            return None;
        }
        let low = self.pending & ((1 << k) - 1);
        self.consume(k);
        Some((quotient << k) | low)
    }

    /// Whether all input was read, leaving only zero padding of less than
    /// a byte.
    fn at_padded_end(&self) -> bool {
        self.input.is_empty() && self.len < 8 && self.pending == 0
    }
}

/// Reads a varint as the state codec writes it (see `codec`).
fn read_varint(input: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (at, &byte) in input.iter().enumerate().take(10) {
        // The tenth byte may only hold the top bit of a u64.
        if at == 9 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << (7 * at);
        if byte & 0x80 == 0 {
            return Some((value, &input[at + 1..]));
        }
    }
    None
}

/// Parses a state produced by [`Accumulator::state`], rejecting anything
/// that could make the sketch library panic or corrupt the merged sketch.
fn decode_sketch(bytes: &[u8]) -> Result<Sketch> {
    let Some((&version, body)) = bytes.split_first() else {
        return exec_err!("empty approx_distinct state");
    };
    let invalid = |e: &dyn fmt::Display| exec_datafusion_err!("invalid approx_distinct state: {e}");
    if version == COMPACT_VERSION {
        // Rewritten in the library's layout, which it can read.
        let mut codes = Vec::new();
        read_compact_state(body, &mut codes).map_err(|e| invalid(&e))?;
        codes.sort_unstable();
        codes.dedup();
        let mut library = Vec::new();
        write_library_sparse_state(&codes, &mut library);
        return decode_sketch(&library);
    }
    if version != FORMAT_VERSION {
        return exec_err!(
            "approx_distinct state has format version {version}, expected {FORMAT_VERSION} or {COMPACT_VERSION}"
        );
    }
    let repr: SketchRepr = codec::decode(body).map_err(|e| invalid(&e))?;
    repr.validate().map_err(|e| invalid(&e))?;
    codec::decode(body).map_err(|e| invalid(&e))
}

/// Field-for-field mirror of the serde layout of `hyperloglogplus` 0.4's
/// `HyperLogLogPlus`, whose fields are private. Decoding a state into it
/// first lets [`SketchRepr::validate`] check the invariants the library
/// relies on without checking itself.
#[derive(Deserialize)]
struct SketchRepr {
    _hasher: (),
    precision: u8,
    /// Register count, sparse register count, sparse size limit in bytes.
    counts: (u64, u64, u64),
    /// Hash codes not yet folded into `sparse`.
    tmpset: Vec<u32>,
    sparse: SparseRepr,
    /// Present once the sketch is dense.
    registers: Option<RegistersRepr>,
    _phantom: (),
}

/// Sorted sparse hash codes, difference- then varint-encoded.
#[derive(Deserialize)]
struct SparseRepr {
    count: u64,
    last: u32,
    buf: Vec<u8>,
}

/// Dense registers: 6 bits each, five to a `u32` word.
#[derive(Deserialize)]
struct RegistersRepr {
    buf: Vec<u32>,
    count: u64,
    zeros: u64,
}

/// Bits per dense register, and registers per `u32` word.
const REGISTER_BITS: u32 = 6;
const REGISTERS_PER_WORD: usize = 5;

/// Largest leading-zero count a sparse hash code can carry: the hash's
/// 64 bits minus the 25-bit sparse index, plus one.
const MAX_SPARSE_RHO: u32 = 64 - 25 + 1;

/// The layout every valid state must share, taken from an empty sketch.
static EMPTY_REPR: LazyLock<SketchRepr> = LazyLock::new(|| {
    let mut bytes = Vec::new();
    codec::encode(&empty_sketch(), &mut bytes).expect("an empty sketch encodes");
    codec::decode(&bytes).expect("an empty sketch decodes")
});

impl SketchRepr {
    fn validate(&self) -> std::result::Result<(), String> {
        let empty = &*EMPTY_REPR;
        if self.precision != empty.precision {
            return Err(format!(
                "precision {} (Runnel uses {})",
                self.precision, empty.precision
            ));
        }
        if self.counts != empty.counts {
            return Err(format!("unexpected layout {:?}", self.counts));
        }
        let register_count = self.counts.0;
        self.tmpset.iter().try_for_each(|&code| check_code(code))?;

        walk_sparse_list(
            &self.sparse.buf,
            self.sparse.count,
            self.sparse.last,
            |_| {},
        )?;

        if let Some(registers) = &self.registers {
            let register_count = usize::try_from(register_count).map_err(|e| e.to_string())?;
            if registers.count != self.counts.0
                || registers.buf.len() != register_count.div_ceil(REGISTERS_PER_WORD)
            {
                return Err("wrong number of registers".into());
            }
            let zeros = registers
                .buf
                .iter()
                .flat_map(|&word| {
                    (0..REGISTERS_PER_WORD as u32)
                        .map(move |i| (word >> (i * REGISTER_BITS)) & ((1 << REGISTER_BITS) - 1))
                })
                .take(register_count)
                .filter(|&register| register == 0)
                .count();
            if zeros as u64 != registers.zeros {
                return Err("register zero count does not match the registers".into());
            }
        }
        Ok(())
    }
}

/// Walks a sparse list the way the library does, minus its panics on
/// overlong varints and overflowing sums, calling `f` with each code. The
/// list must hold `count` codes and end with `last`.
fn walk_sparse_list(
    buf: &[u8],
    count: u64,
    last: u32,
    mut f: impl FnMut(u32),
) -> std::result::Result<(), String> {
    let (mut at, mut decoded, mut value) = (0, 0u64, 0u32);
    while at < buf.len() {
        let mut difference = 0u32;
        for shift in (0..).step_by(7) {
            let Some(&byte) = buf.get(at) else {
                return Err("truncated sparse list".into());
            };
            at += 1;
            // A u32 takes at most five varint bytes, the last holding 4 bits.
            if shift == 28 && byte > 0x0f {
                return Err("overlong varint in sparse list".into());
            }
            difference |= u32::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        value = value
            .checked_add(difference)
            .ok_or("sparse list overflows")?;
        check_code(value)?;
        f(value);
        decoded += 1;
    }
    if decoded != count || value != last || count > SPARSE_REGISTERS as u64 {
        return Err("inconsistent sparse list".into());
    }
    Ok(())
}

/// A sparse hash code with its low bit set carries a leading-zero count in
/// bits 1..7; anything above [`MAX_SPARSE_RHO`] would spill into the
/// neighbouring dense register when the sketch goes dense.
fn check_code(code: u32) -> std::result::Result<(), String> {
    if code & 1 == 1 && (code >> 1) & 0x3f > MAX_SPARSE_RHO {
        return Err(format!("invalid sparse hash code {code:#x}"));
    }
    Ok(())
}

/// Counts the bytes an encoding would take, which is (to within the slack
/// of Vec and HashSet capacities) the sketch's heap footprint: dense
/// registers are 4-byte words, the sparse list is bytes, pending hashes are
/// 4-byte codes.
#[derive(Default)]
struct Measure {
    bytes: usize,
    /// An `Option` was `Some`: the only one in a sketch is its dense registers.
    saw_some: bool,
}

impl codec::Sink for Measure {
    fn put(&mut self, bytes: &[u8]) {
        self.bytes += bytes.len();
    }

    fn some(&mut self) {
        self.saw_some = true;
    }
}

/// A compact binary serde format for sketches (no new dependencies needed).
///
/// Non-self-describing, like bincode: values in declaration order, no field
/// names. `u8` as one byte, `u16`/`u32` (register words, hash codes) as
/// fixed little-endian, `u64`/`usize` (counts, lengths) as LEB128 varints,
/// signed integers zigzag-varint, sequences length-prefixed, `Option` as a
/// 0/1 tag. Only what a sketch contains is supported; anything else is an
/// error rather than a guess.
mod codec {
    use std::fmt;

    use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
    use serde::ser::{self, Impossible, Serialize};

    /// Encoding or decoding failure.
    #[derive(Debug)]
    pub(super) struct Error(String);

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for Error {}

    impl ser::Error for Error {
        fn custom<T: fmt::Display>(msg: T) -> Self {
            Self(msg.to_string())
        }
    }

    impl de::Error for Error {
        fn custom<T: fmt::Display>(msg: T) -> Self {
            Self(msg.to_string())
        }
    }

    fn unsupported(what: &str) -> Error {
        Error(format!("the sketch format has no {what}"))
    }

    fn truncated() -> Error {
        Error("unexpected end of input".into())
    }

    /// Where encoded bytes go.
    pub(super) trait Sink {
        fn put(&mut self, bytes: &[u8]);

        /// Called when an `Option` is `Some`, before its value.
        fn some(&mut self) {}
    }

    impl Sink for Vec<u8> {
        fn put(&mut self, bytes: &[u8]) {
            self.extend_from_slice(bytes);
        }
    }

    /// Encodes `value` into `sink`.
    pub(super) fn encode<T: Serialize + ?Sized, S: Sink>(
        value: &T,
        sink: &mut S,
    ) -> Result<(), Error> {
        value.serialize(&mut Encoder { sink })
    }

    /// Decodes a `T` that must span all of `bytes`.
    pub(super) fn decode<'de, T: de::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, Error> {
        let mut decoder = Decoder { input: bytes };
        let value = T::deserialize(&mut decoder)?;
        if !decoder.input.is_empty() {
            return Err(Error(format!("{} trailing bytes", decoder.input.len())));
        }
        Ok(value)
    }

    struct Encoder<'a, S> {
        sink: &'a mut S,
    }

    impl<S: Sink> Encoder<'_, S> {
        fn varint(&mut self, mut value: u64) {
            let mut buf = [0; 10];
            let mut len = 0;
            while value >= 0x80 {
                buf[len] = value as u8 | 0x80;
                value >>= 7;
                len += 1;
            }
            buf[len] = value as u8;
            self.sink.put(&buf[..=len]);
        }
    }

    impl<'a, 'b, S: Sink> ser::Serializer for &'a mut Encoder<'b, S> {
        type Ok = ();
        type Error = Error;
        type SerializeSeq = Self;
        type SerializeTuple = Self;
        type SerializeTupleStruct = Self;
        type SerializeTupleVariant = Impossible<(), Error>;
        type SerializeMap = Impossible<(), Error>;
        type SerializeStruct = Self;
        type SerializeStructVariant = Impossible<(), Error>;

        fn serialize_bool(self, v: bool) -> Result<(), Error> {
            self.sink.put(&[u8::from(v)]);
            Ok(())
        }

        fn serialize_i8(self, v: i8) -> Result<(), Error> {
            self.sink.put(&v.to_le_bytes());
            Ok(())
        }

        fn serialize_i16(self, v: i16) -> Result<(), Error> {
            self.sink.put(&v.to_le_bytes());
            Ok(())
        }

        fn serialize_i32(self, v: i32) -> Result<(), Error> {
            self.sink.put(&v.to_le_bytes());
            Ok(())
        }

        fn serialize_i64(self, v: i64) -> Result<(), Error> {
            self.varint(((v << 1) ^ (v >> 63)) as u64);
            Ok(())
        }

        fn serialize_u8(self, v: u8) -> Result<(), Error> {
            self.sink.put(&[v]);
            Ok(())
        }

        fn serialize_u16(self, v: u16) -> Result<(), Error> {
            self.sink.put(&v.to_le_bytes());
            Ok(())
        }

        fn serialize_u32(self, v: u32) -> Result<(), Error> {
            self.sink.put(&v.to_le_bytes());
            Ok(())
        }

        fn serialize_u64(self, v: u64) -> Result<(), Error> {
            self.varint(v);
            Ok(())
        }

        fn serialize_f32(self, v: f32) -> Result<(), Error> {
            self.sink.put(&v.to_le_bytes());
            Ok(())
        }

        fn serialize_f64(self, v: f64) -> Result<(), Error> {
            self.sink.put(&v.to_le_bytes());
            Ok(())
        }

        fn serialize_char(self, _v: char) -> Result<(), Error> {
            Err(unsupported("chars"))
        }

        fn serialize_str(self, _v: &str) -> Result<(), Error> {
            Err(unsupported("strings"))
        }

        fn serialize_bytes(self, _v: &[u8]) -> Result<(), Error> {
            Err(unsupported("byte strings"))
        }

        fn serialize_none(self) -> Result<(), Error> {
            self.sink.put(&[0]);
            Ok(())
        }

        fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
            self.sink.put(&[1]);
            self.sink.some();
            value.serialize(self)
        }

        fn serialize_unit(self) -> Result<(), Error> {
            Ok(())
        }

        fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
            Ok(())
        }

        fn serialize_unit_variant(
            self,
            _name: &'static str,
            _index: u32,
            _variant: &'static str,
        ) -> Result<(), Error> {
            Err(unsupported("enums"))
        }

        fn serialize_newtype_struct<T: Serialize + ?Sized>(
            self,
            _name: &'static str,
            value: &T,
        ) -> Result<(), Error> {
            value.serialize(self)
        }

        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _name: &'static str,
            _index: u32,
            _variant: &'static str,
            _value: &T,
        ) -> Result<(), Error> {
            Err(unsupported("enums"))
        }

        fn serialize_seq(self, len: Option<usize>) -> Result<Self, Error> {
            let len = len.ok_or_else(|| unsupported("sequences of unknown length"))?;
            self.varint(len as u64);
            Ok(self)
        }

        fn serialize_tuple(self, _len: usize) -> Result<Self, Error> {
            Ok(self)
        }

        fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Self, Error> {
            Ok(self)
        }

        fn serialize_tuple_variant(
            self,
            _name: &'static str,
            _index: u32,
            _variant: &'static str,
            _len: usize,
        ) -> Result<Self::SerializeTupleVariant, Error> {
            Err(unsupported("enums"))
        }

        fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Error> {
            Err(unsupported("maps"))
        }

        fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self, Error> {
            Ok(self)
        }

        fn serialize_struct_variant(
            self,
            _name: &'static str,
            _index: u32,
            _variant: &'static str,
            _len: usize,
        ) -> Result<Self::SerializeStructVariant, Error> {
            Err(unsupported("enums"))
        }

        fn is_human_readable(&self) -> bool {
            false
        }
    }

    impl<S: Sink> ser::SerializeSeq for &mut Encoder<'_, S> {
        type Ok = ();
        type Error = Error;

        fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
            value.serialize(&mut **self)
        }

        fn end(self) -> Result<(), Error> {
            Ok(())
        }
    }

    impl<S: Sink> ser::SerializeTuple for &mut Encoder<'_, S> {
        type Ok = ();
        type Error = Error;

        fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
            value.serialize(&mut **self)
        }

        fn end(self) -> Result<(), Error> {
            Ok(())
        }
    }

    impl<S: Sink> ser::SerializeTupleStruct for &mut Encoder<'_, S> {
        type Ok = ();
        type Error = Error;

        fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
            value.serialize(&mut **self)
        }

        fn end(self) -> Result<(), Error> {
            Ok(())
        }
    }

    impl<S: Sink> ser::SerializeStruct for &mut Encoder<'_, S> {
        type Ok = ();
        type Error = Error;

        fn serialize_field<T: Serialize + ?Sized>(
            &mut self,
            _key: &'static str,
            value: &T,
        ) -> Result<(), Error> {
            value.serialize(&mut **self)
        }

        fn end(self) -> Result<(), Error> {
            Ok(())
        }
    }

    struct Decoder<'de> {
        input: &'de [u8],
    }

    impl<'de> Decoder<'de> {
        fn take<const N: usize>(&mut self) -> Result<[u8; N], Error> {
            let (head, rest) = self.input.split_first_chunk::<N>().ok_or_else(truncated)?;
            self.input = rest;
            Ok(*head)
        }

        fn byte(&mut self) -> Result<u8, Error> {
            let [byte] = self.take()?;
            Ok(byte)
        }

        fn varint(&mut self) -> Result<u64, Error> {
            let mut value = 0u64;
            for shift in (0..64).step_by(7) {
                let byte = self.byte()?;
                // The tenth byte may only hold the top bit of a u64.
                if shift == 63 && byte > 1 {
                    return Err(Error("varint overflows u64".into()));
                }
                value |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    return Ok(value);
                }
            }
            unreachable!("the tenth byte either ends the varint or is rejected")
        }

        fn len(&mut self) -> Result<usize, Error> {
            usize::try_from(self.varint()?).map_err(|_| Error("length overflows usize".into()))
        }
    }

    impl<'de> de::Deserializer<'de> for &mut Decoder<'de> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
            Err(unsupported("self-describing values"))
        }

        fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self.byte()? {
                0 => visitor.visit_bool(false),
                1 => visitor.visit_bool(true),
                other => Err(Error(format!("invalid bool {other}"))),
            }
        }

        fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_i8(i8::from_le_bytes(self.take()?))
        }

        fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_i16(i16::from_le_bytes(self.take()?))
        }

        fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_i32(i32::from_le_bytes(self.take()?))
        }

        fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let zigzag = self.varint()?;
            visitor.visit_i64((zigzag >> 1) as i64 ^ -((zigzag & 1) as i64))
        }

        fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_u8(self.byte()?)
        }

        fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_u16(u16::from_le_bytes(self.take()?))
        }

        fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_u32(u32::from_le_bytes(self.take()?))
        }

        fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_u64(self.varint()?)
        }

        fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_f32(f32::from_le_bytes(self.take()?))
        }

        fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_f64(f64::from_le_bytes(self.take()?))
        }

        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self.byte()? {
                0 => visitor.visit_none(),
                1 => visitor.visit_some(self),
                other => Err(Error(format!("invalid option tag {other}"))),
            }
        }

        fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_unit()
        }

        fn deserialize_unit_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            visitor: V,
        ) -> Result<V::Value, Error> {
            visitor.visit_unit()
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            visitor: V,
        ) -> Result<V::Value, Error> {
            visitor.visit_newtype_struct(self)
        }

        fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let left = self.len()?;
            visitor.visit_seq(Elements {
                decoder: self,
                left,
            })
        }

        fn deserialize_tuple<V: Visitor<'de>>(
            self,
            len: usize,
            visitor: V,
        ) -> Result<V::Value, Error> {
            visitor.visit_seq(Elements {
                decoder: self,
                left: len,
            })
        }

        fn deserialize_tuple_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            len: usize,
            visitor: V,
        ) -> Result<V::Value, Error> {
            self.deserialize_tuple(len, visitor)
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            self.deserialize_tuple(fields.len(), visitor)
        }

        fn is_human_readable(&self) -> bool {
            false
        }

        serde::forward_to_deserialize_any! {
            i128 u128 char str string bytes byte_buf map enum identifier ignored_any
        }
    }

    /// The elements of a sequence, tuple or struct, `left` of them to go.
    struct Elements<'a, 'de> {
        decoder: &'a mut Decoder<'de>,
        left: usize,
    }

    impl<'de> SeqAccess<'de> for Elements<'_, 'de> {
        type Error = Error;

        fn next_element_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<Option<T::Value>, Error> {
            if self.left == 0 {
                return Ok(None);
            }
            self.left -= 1;
            seed.deserialize(&mut *self.decoder).map(Some)
        }

        fn size_hint(&self) -> Option<usize> {
            Some(self.left)
        }
    }
}

#[cfg(test)]
mod tests {
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
                        let (start, end) =
                            (b * n / batches, ((b + 1) * n / batches + n / 10).min(n));
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
}
