//! Runnel: continuous windowed SQL over streams.
pub mod bench;
pub mod cluster;
pub mod config;
pub mod connect;
pub mod error;
pub mod format;
pub mod plan;
pub mod repl;
pub mod runtime;
pub mod server;
pub mod sink;
pub mod source;
pub mod sql;
pub mod store;
pub mod udaf;
pub mod window;
