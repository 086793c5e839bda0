//! Sources.
//!
//! Where Runnel's input records come from. [`kafka`] reads a topic's
//! partitions for a query. [`generator`] holds the built-in
//! load generators (ad impressions, user activity, access logs) that feed
//! Kafka topics or standard output with deterministic, seeded records.

pub mod generator;
pub mod kafka;
pub mod stats;
