//! Runnel: continuous windowed SQL over streams.
pub mod error;
pub mod format;
pub mod plan;
pub mod source;
pub mod sql;
pub mod udaf;
pub mod window;
