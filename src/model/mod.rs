//! Runnel's model: what users declare and what queries produce. Streams
//! ([`StreamDef`]), reference tables ([`TableDef`]), continuous queries
//! ([`SelectSql`], [`WindowSpec`]), durations, the rows a query emits
//! ([`Emission`]) and what a running query reports ([`QueryStatus`],
//! [`Counters`], [`SinkStatus`]).
//!
//! Every other module may use these types; this one uses no other module
//! of Runnel, so the parser, the decoders, the engine, the stores and the
//! server share one vocabulary without depending on one another.
//!
//! ```
//! use runnel::model::{WindowKind, WindowSpec, duration::parse_duration};
//! let w = WindowSpec { kind: WindowKind::Tumbling { size_ms: parse_duration("10s").unwrap() }, grace_ms: 0, allow_late_ms: 0 };
//! assert_eq!(w.describe(), "TUMBLING 10s");
//! ```

pub mod duration;
pub mod emission;
pub mod query;
pub mod status;
pub mod stream;
pub mod table;

pub use emission::Emission;
pub use query::{SelectSql, WindowKind, WindowSpec};
pub use status::{Counters, QueryStatus, SinkStatus};
pub use stream::{
    ColumnDef, DEFAULT_MAX_FUTURE_MS, Format, OnError, OnOffsetLoss, SourceKind, StartFrom,
    StreamDef,
};
pub use table::TableDef;
