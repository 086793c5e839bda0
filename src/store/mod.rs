//! Where Runnel keeps its catalog, checkpoints and results.
//!
//! The embedded store is SQLite ([`sqlite::Store`]): the catalog tables are
//! prefixed `runnel_`, and each query's results live in a typed table named
//! after the query, readable with the `sqlite3` tool:
//!
//! ```text
//! $ sqlite3 runnel-data/runnel.db 'SELECT * FROM adnetwork ORDER BY window_start DESC LIMIT 5'
//! ```

pub mod sqlite;

pub use sqlite::Store;
