//! Functions whose result size the caller's arguments choose, bounded.
//!
//! `repeat('x', 1000000000)` asks for a gigabyte in one allocation, made
//! before any memory pool hears of it, so neither `--pull-memory` nor a
//! query's state limit can stop it, and a larger count ends the process.
//! [`register`] replaces DataFusion's `repeat`, `lpad`, `rpad`,
//! `array_repeat` and the list-making `range` and `generate_series` with
//! the same functions that first add up what one call over a batch would
//! make and refuse more than [`MAX_RESULT`] (bytes, characters or list
//! elements): a 422 for a pull query, a failed query for a continuous one.
//!
//! ```
//! # async fn f() -> datafusion::error::Result<()> {
//! let ctx = runnel::plan::new_context();
//! assert!(ctx.sql("SELECT repeat('ab', 3)").await?.collect().await.is_ok());
//! let e = ctx.sql("SELECT repeat('ab', 100000000)").await?.collect().await.unwrap_err();
//! assert!(e.to_string().contains("at most 67108864"));
//! # Ok(()) }
//! ```

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::{cast, kernels::length::length};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, simplify::ExprSimplifyResult,
};
use datafusion::prelude::SessionContext;

/// Most bytes, characters or list elements one call of a bounded function
/// may make over one batch.
pub const MAX_RESULT: i64 = 1 << 26;

/// What a call makes, from its arguments as arrays of the batch's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Size {
    /// `repeat(text, n)`: each text's bytes times its count.
    Repeat,
    /// `lpad(text, n, ...)`, `rpad`: n characters each.
    Pad,
    /// `array_repeat(value, n)`: n elements each.
    Elements,
    /// `range(stop)`, `range(start, stop[, step])`, `generate_series`, of
    /// integers: the elements between. (Dates and timestamps step by an
    /// interval, which is not counted.)
    Range,
}

/// Replaces each bounded function registered on `ctx` with its bounded
/// form (see the module's documentation).
pub fn register(ctx: &SessionContext) {
    let bounded = [
        ("repeat", Size::Repeat),
        ("lpad", Size::Pad),
        ("rpad", Size::Pad),
        ("array_repeat", Size::Elements),
        ("range", Size::Range),
        ("generate_series", Size::Range),
    ];
    for (name, size) in bounded {
        if let Ok(inner) = ctx.udf(name) {
            let inner = Arc::unwrap_or_clone(inner);
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded { inner, size }));
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: ScalarUDF,
    size: Size,
}

impl Bounded {
    /// Refuses a call that would make more than [`MAX_RESULT`].
    fn check(&self, args: &[ColumnarValue], rows: usize) -> Result<()> {
        let int = |i: usize| -> Result<Option<Vec<i64>>> {
            let Some(a) = args.get(i) else {
                return Ok(None);
            };
            let a = a.to_array(rows)?;
            if !a.data_type().is_integer() {
                return Ok(None);
            }
            int64s(&a).map(Some)
        };
        let made: i64 = match self.size {
            Size::Repeat => {
                let (Some(text), Some(n)) = (args.first(), int(1)?) else {
                    return Ok(());
                };
                let bytes = byte_lengths(&text.to_array(rows)?)?;
                bytes
                    .iter()
                    .zip(n)
                    .map(|(b, n)| b.saturating_mul(n.max(0)))
                    .fold(0, i64::saturating_add)
            }
            Size::Pad | Size::Elements => {
                let Some(n) = int(1)? else { return Ok(()) };
                n.into_iter().map(|n| n.max(0)).fold(0, i64::saturating_add)
            }
            Size::Range => {
                let (start, stop, step) = match args.len() {
                    1 => (None, int(0)?, None),
                    _ => (int(0)?, int(1)?, int(2)?),
                };
                let Some(stop) = stop else { return Ok(()) };
                (0..stop.len())
                    .map(|r| {
                        let from = start.as_ref().map_or(0, |s| s[r]);
                        let step = step.as_ref().map_or(1, |s| s[r]);
                        let span = i128::from(stop[r]) - i128::from(from);
                        if step == 0 || span.signum() * i128::from(step.signum()) < 0 {
                            0
                        } else {
                            i64::try_from(span / i128::from(step)).unwrap_or(i64::MAX)
                        }
                    })
                    .fold(0, i64::saturating_add)
            }
        };
        if made > MAX_RESULT {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{}(...) would make {made} {} over {rows} rows, at most {MAX_RESULT} a call",
                self.inner.name(),
                match self.size {
                    Size::Repeat => "bytes",
                    Size::Pad => "characters",
                    Size::Elements | Size::Range => "list elements",
                }
            )));
        }
        Ok(())
    }
}

/// The byte length of each text of `a` (0 where null or not text).
fn byte_lengths(a: &ArrayRef) -> Result<Vec<i64>> {
    if !matches!(
        a.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        return Ok(vec![0; a.len()]);
    }
    int64s(&length(a)?)
}

/// `a`'s values as 64-bit integers, 0 where null.
fn int64s(a: &ArrayRef) -> Result<Vec<i64>> {
    let a = cast(a, &DataType::Int64)?;
    Ok(a.as_primitive::<Int64Type>()
        .iter()
        .map(|v| v.unwrap_or(0))
        .collect())
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check(&args.args, args.number_rows)?;
        self.inner.invoke_with_args(args)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}
