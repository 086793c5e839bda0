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
//! # Layout
//!
//! This file holds the function and its hash; `accumulator` the two
//! accumulators and each group's sparse-or-dense sketch; `hash` the
//! canonical bytes of every Arrow type; `sparse` the hash codes and the
//! compact state layout; `state` the checks on states read back; `codec`
//! the sketch library's serde layout, which dense states keep.
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

mod accumulator;
mod codec;
mod hash;
mod sparse;
mod state;
#[cfg(test)]
mod tests;

use accumulator::*;
pub use accumulator::{ApproxDistinctAccumulator, ApproxDistinctGroupsAccumulator};
use hash::*;
use sparse::*;
use state::*;
