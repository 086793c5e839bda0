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
//!   sketch (a few dozen bytes for a handful of values, about 13 KiB at most);
//! * good accuracy at low cardinality: HyperLogLog++ keeps a sparse list of
//!   hashes until it would outgrow the dense registers, so small counts are
//!   exact or very nearly so. Large counts have a standard error of about
//!   0.8 % ([`PRECISION`] 14).
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
use std::hash::{BuildHasher, Hash, Hasher};
use std::mem::size_of_val;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ArrayRef, ArrowPrimitiveType, AsArray};
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
    Accumulator, AggregateUDF, AggregateUDFImpl, DocSection, Documentation, Signature, Volatility,
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

/// First byte of every serialised sketch; bump it whenever the encoding changes.
const FORMAT_VERSION: u8 = 1;

/// The sketch type. Values are fed in as canonical byte strings, hence `[u8]`.
type Sketch = HyperLogLogPlus<[u8], SketchHasher>;

/// Builds the value hasher of every sketch: XxHash64 seeded with [`HASH_SEED`].
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

/// Hashes exactly the given bytes. `<[u8] as Hash>` would also hash a
/// `usize` length prefix, whose width differs between platforms.
struct RawBytes<'a>(&'a [u8]);

impl Hash for RawBytes<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0);
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
        insert_array(&mut self.sketch, values)?;
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
        Ok(vec![ScalarValue::Binary(Some(bytes))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let [states] = states else {
            return internal_err!(
                "approx_distinct expects 1 state column, got {}",
                states.len()
            );
        };
        // A NULL state carries no values: skip it.
        let mut merge = |bytes: Option<&[u8]>| -> Result<()> {
            let Some(bytes) = bytes else { return Ok(()) };
            let other = decode_sketch(bytes)?;
            self.sketch
                .merge(&other)
                .map_err(|e| exec_datafusion_err!("cannot merge approx_distinct sketches: {e}"))
        };
        // Binary is what `state()` produces; the other binary encodings are
        // accepted in case a checkpoint store hands states back re-encoded.
        match states.data_type() {
            DataType::Binary => states.as_binary::<i32>().iter().try_for_each(&mut merge)?,
            DataType::LargeBinary => states.as_binary::<i64>().iter().try_for_each(&mut merge)?,
            DataType::BinaryView => states.as_binary_view().iter().try_for_each(&mut merge)?,
            other => return internal_err!("approx_distinct state must be Binary, got {other}"),
        }
        self.measure();
        Ok(())
    }
}

fn empty_sketch() -> Sketch {
    Sketch::new(PRECISION, SketchHasher).expect("PRECISION is within HyperLogLog++'s 4..=18")
}

/// Adds every non-null value of `array` to `sketch`, hashed from its
/// canonical bytes (see the module docs).
fn insert_array(sketch: &mut Sketch, array: &ArrayRef) -> Result<()> {
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

    let s = sketch;
    let a = array.as_ref();
    match a.data_type() {
        DataType::Null => {}
        DataType::Boolean => {
            let values = a.as_boolean();
            for_each_valid(a, |i| insert(s, &[u8::from(values.value(i))]));
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
            for_each_valid(a, |i| insert(s, values.value(i).as_bytes()));
        }
        DataType::LargeUtf8 => {
            let values = a.as_string::<i64>();
            for_each_valid(a, |i| insert(s, values.value(i).as_bytes()));
        }
        DataType::Utf8View => {
            let values = a.as_string_view();
            for_each_valid(a, |i| insert(s, values.value(i).as_bytes()));
        }
        DataType::Binary => {
            let values = a.as_binary::<i32>();
            for_each_valid(a, |i| insert(s, values.value(i)));
        }
        DataType::LargeBinary => {
            let values = a.as_binary::<i64>();
            for_each_valid(a, |i| insert(s, values.value(i)));
        }
        DataType::BinaryView => {
            let values = a.as_binary_view();
            for_each_valid(a, |i| insert(s, values.value(i)));
        }
        DataType::FixedSizeBinary(_) => {
            let values = a.as_fixed_size_binary();
            for_each_valid(a, |i| insert(s, values.value(i)));
        }
        // Decoded so a value hashes the same whether or not it is encoded.
        DataType::Dictionary(_, value_type) => insert_array(s, &cast(a, value_type)?)?,
        DataType::RunEndEncoded(_, values) => insert_array(s, &cast(a, values.data_type())?)?,
        // Lists, structs, maps, unions: Arrow's row format is a canonical,
        // self-delimiting byte form of any value.
        data_type => {
            let converter = RowConverter::new(vec![SortField::new(data_type.clone())])?;
            let rows = converter.convert_columns(std::slice::from_ref(array))?;
            for_each_valid(a, |i| insert(s, rows.row(i).as_ref()));
        }
    }
    Ok(())
}

fn insert(sketch: &mut Sketch, bytes: &[u8]) {
    sketch.insert_any(&RawBytes(bytes));
}

/// Inserts each non-null value of a primitive array as `to_bytes(value)`.
fn primitive<T: ArrowPrimitiveType, const N: usize>(
    sketch: &mut Sketch,
    array: &dyn Array,
    to_bytes: impl Fn(T::Native) -> [u8; N],
) {
    let values = array.as_primitive::<T>().values();
    for_each_valid(array, |i| insert(sketch, &to_bytes(values[i])));
}

/// Calls `f` with the index of every row that is not NULL. Logical nulls,
/// so NULLs of `Null`, dictionary and run-end encoded arrays count too.
fn for_each_valid(array: &dyn Array, mut f: impl FnMut(usize)) {
    match array.logical_nulls() {
        Some(nulls) => nulls.valid_indices().for_each(f),
        None => (0..array.len()).for_each(&mut f),
    }
}

/// Parses a state produced by [`Accumulator::state`], rejecting anything
/// that could make the sketch library panic or corrupt the merged sketch.
fn decode_sketch(bytes: &[u8]) -> Result<Sketch> {
    let Some((&version, body)) = bytes.split_first() else {
        return exec_err!("empty approx_distinct state");
    };
    if version != FORMAT_VERSION {
        return exec_err!(
            "approx_distinct state has format version {version}, expected {FORMAT_VERSION}"
        );
    }
    let invalid = |e: &dyn fmt::Display| exec_datafusion_err!("invalid approx_distinct state: {e}");
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
        let (register_count, sparse_registers, _) = self.counts;
        self.tmpset.iter().try_for_each(|&code| check_code(code))?;

        // Walk the sparse list the way the library does, minus its panics
        // on overlong varints and overflowing sums.
        let sparse = &self.sparse;
        let (mut at, mut decoded, mut value) = (0, 0u64, 0u32);
        while at < sparse.buf.len() {
            let mut difference = 0u32;
            for shift in (0..).step_by(7) {
                let Some(&byte) = sparse.buf.get(at) else {
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
            decoded += 1;
        }
        if decoded != sparse.count || value != sparse.last || sparse.count > sparse_registers {
            return Err("inconsistent sparse list".into());
        }

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

    use datafusion::arrow::array::{
        BinaryArray, BooleanArray, DictionaryArray, Float32Array, Float64Array, Int32Array,
        Int64Array, LargeStringArray, RecordBatch, StringArray, StringViewArray,
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

    /// The state of a known input, pinned: a change here means sketches
    /// checkpointed by an earlier Runnel no longer merge with new ones.
    #[test]
    fn state_format_and_hash_are_stable() {
        let values: ArrayRef = Arc::new(StringArray::from(vec!["alice", "bob", "carol"]));
        let state = state_bytes(&mut accumulate(&values));
        let hex: String = state.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "010e80800180808008b3660003d23a07030ca89fba0e809dee03aab9f40500"
        );
    }

    #[test]
    fn corrupt_states_are_rejected_without_panicking() {
        let mut sparse = accumulate(&strings(0..50));
        let mut dense = accumulate(&strings(0..20_000));
        let sparse = state_bytes(&mut sparse);
        let dense = state_bytes(&mut dense);

        let decode = |bytes: &[u8]| decode_sketch(bytes).map(|_| ());
        assert!(decode(&[]).is_err());
        assert!(decode(&[FORMAT_VERSION + 1]).is_err());
        let mut wrong_version = sparse.clone();
        wrong_version[0] = FORMAT_VERSION + 1;
        assert!(decode(&wrong_version).is_err());
        for len in 0..sparse.len() {
            assert!(decode(&sparse[..len]).is_err(), "truncated to {len}");
        }
        assert!(decode(&dense[..dense.len() - 1]).is_err());
        assert!(decode(&[&sparse[..], &[0]].concat()).is_err());

        // Any damage either fails to decode or leaves a sketch that merges
        // and estimates without panicking.
        for (state, step) in [(&sparse, 1), (&dense, 97)] {
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
}
