//! Sources.
//!
//! Where Runnel's input records come from. [`generator`] holds the built-in
//! load generators (ad impressions, user activity, access logs) that feed
//! Kafka topics or standard output with deterministic, seeded records.

pub mod generator;
