//! Aggregate functions Runnel adds to DataFusion's.
//!
//! [`register`] installs them on a [`SessionContext`]:
//!
//! * `approx_distinct(expr)`: HyperLogLog++ distinct count ([`hll`]),
//!   replacing DataFusion's built-in function of the same name. Its state
//!   is a single serialised sketch that merges across batches, windows,
//!   checkpoints and processes.
//! * `approx_percentile(expr, q)`: another name for DataFusion's t-digest
//!   `approx_percentile_cont(expr, q)`.
//!
//! Registration affects SQL and name lookups. DataFrame code should build
//! the call from [`approx_distinct_udaf`] (`approx_distinct_udaf().call(args)`)
//! rather than `datafusion::functions_aggregate::expr_fn::approx_distinct`,
//! which is bound to the built-in.
//!
//! # Example
//!
//! ```
//! use datafusion::arrow::array::{AsArray, RecordBatch};
//! use datafusion::arrow::datatypes::{Float64Type, UInt64Type};
//! use datafusion::prelude::SessionContext;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> datafusion::error::Result<()> {
//! let ctx = SessionContext::new();
//! runnel::udaf::register(&ctx);
//!
//! let batches: Vec<RecordBatch> = ctx
//!     .sql(
//!         "SELECT approx_distinct(name) AS users, approx_percentile(latency, 0.5) AS p50 \
//!          FROM (VALUES ('ann', 10.0), ('bob', 20.0), ('ann', 30.0), (NULL, 40.0)) AS t(name, latency)",
//!     )
//!     .await?
//!     .collect()
//!     .await?;
//!
//! assert_eq!(batches[0].column(0).as_primitive::<UInt64Type>().value(0), 2);
//! let p50 = batches[0].column(1).as_primitive::<Float64Type>().value(0);
//! assert!((20.0..=30.0).contains(&p50));
//! # Ok(())
//! # }
//! ```

pub mod hll;

use datafusion::functions_aggregate::approx_percentile_cont::approx_percentile_cont_udaf;
use datafusion::logical_expr::AggregateUDF;
use datafusion::prelude::SessionContext;

pub use hll::{ApproxDistinctAccumulator, ApproxDistinctHll, approx_distinct_udaf};

/// Registers Runnel's aggregate functions on `ctx`: `approx_distinct`
/// (replacing the built-in one) and `approx_percentile`.
pub fn register(ctx: &SessionContext) {
    // Same name as the built-in, so this replaces it for SQL.
    ctx.register_udaf(approx_distinct_udaf());
    ctx.register_udaf(approx_percentile_udaf());
}

/// DataFusion's t-digest `approx_percentile_cont`, additionally callable
/// as `approx_percentile(expr, q)`.
pub fn approx_percentile_udaf() -> AggregateUDF {
    std::sync::Arc::unwrap_or_clone(approx_percentile_cont_udaf())
        .with_aliases(["approx_percentile"])
}
