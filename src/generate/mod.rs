//! `runnel gen`: built-in producers of deterministic, seeded test records
//! for Kafka topics or standard output.
//!
//! Three record shapes are available, each modelled on a classic streaming
//! analytics workload:
//!
//! * [`GenKind::Impressions`]: ad-network impression logs, one compact JSON
//!   object per record (about 140 bytes):
//!   `{"ts":1700000000000,"publisher":"publisher_42","advertiser":"advertiser_7","website":"website_512.com","geo":"FR","bid":0.318274,"cookie":"cookie_90125"}`.
//!   `geo` is one of [`GEOS`] (including `"unknown"`, for unresolved
//!   locations), `bid` is in `[0, 1)` and always written with a decimal point.
//! * [`GenKind::Activity`]: user activity for "popular users" queries:
//!   `{"ts":1700000000000,"user_id":"user_23711","activity":"profile.view"}`.
//!   Users follow a Zipf-like distribution (a few users get most of the
//!   activity); `activity` is one of [`ACTIVITIES`].
//! * [`GenKind::AccessLog`]: web server access logs as plain text lines in the
//!   Apache combined log format:
//!   `66.249.66.1 - - [14/Nov/2023:22:13:20 +0000] "GET /products HTTP/1.1" 200 23811 "-" "Mozilla/5.0 (...)"`.
//!   A few client IPs and endpoints are hot, most responses are `200` with
//!   some `304`, `404`, `401`, `500` and `503`. Times are written in UTC.
//!
//! A [`Generator`] is deterministic: the same kind and seed, given the same
//! event times, always writes the same bytes (on a given platform and build),
//! so benchmark inputs are reproducible. Records are written into a
//! caller-owned, reusable buffer without building intermediate JSON values,
//! which keeps the generator far faster than any broker it feeds.
//!
//! [`produce`] sends records to a Kafka topic and [`write_lines`] writes them
//! as newline-separated lines to any writer (standard output, a file).
//!
//! ```
//! use runnel::generate::{GenKind, Generator};
//!
//! let mut generator = Generator::new(GenKind::Impressions, 42);
//! let mut buf = Vec::new();
//! generator.write_record(1_700_000_000_000, &mut buf);
//! let record: serde_json::Value = serde_json::from_slice(&buf).unwrap();
//! assert_eq!(record["ts"], 1_700_000_000_000_i64);
//! assert!(record["publisher"].as_str().unwrap().starts_with("publisher_"));
//!
//! // The same seed reproduces the same record.
//! let mut again = Vec::new();
//! Generator::new(GenKind::Impressions, 42).write_record(1_700_000_000_000, &mut again);
//! assert_eq!(buf, again);
//! ```
//!
//! Files: `json.rs` writes the JSON shapes (impressions, activity),
//! `access_log.rs` the access-log lines, `produce.rs` sends records to Kafka
//! or writes them as lines.

mod access_log;
mod json;
mod produce;

pub use json::write_impression;
pub use produce::{GenError, ProduceOptions, produce, write_lines};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Which built-in generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GenKind {
    /// Ad-network impressions as JSON (`ts`, `publisher`, `advertiser`,
    /// `website`, `geo`, `bid`, `cookie`).
    Impressions,
    /// User activity as JSON (`ts`, `user_id`, `activity`), with skewed users.
    Activity,
    /// Apache combined log format text lines.
    AccessLog,
}

/// Number of distinct publishers (`publisher_0` .. `publisher_99`).
pub const NUM_PUBLISHERS: u32 = 100;
/// Number of distinct advertisers (`advertiser_0` .. `advertiser_49`).
pub const NUM_ADVERTISERS: u32 = 50;
/// Number of distinct websites (`website_0.com` .. `website_999.com`).
pub const NUM_WEBSITES: u32 = 1_000;
/// Number of distinct cookies (`cookie_0` .. `cookie_999999`).
pub const NUM_COOKIES: u32 = 1_000_000;

/// Geos of impressions; `"unknown"` stands for a location that could not be
/// resolved, which queries typically filter out.
pub const GEOS: [&str; 20] = [
    "US", "UK", "FR", "DE", "ES", "IT", "NL", "BE", "SE", "NO", "PL", "BR", "CA", "MX", "IN", "JP",
    "CN", "AU", "ZA", "unknown",
];

/// Activity types of [`GenKind::Activity`] records. A popularity score is
/// commonly derived from them: `profile.view` = 1, `profile.picture.like` = 2,
/// `message.private` = 3.
pub const ACTIVITIES: [&str; 3] = ["profile.picture.like", "profile.view", "message.private"];

/// Number of distinct users of [`GenKind::Activity`] records.
pub const NUM_USERS: u64 = 100_000;
/// Smallest user number: user ids are `user_1000` .. `user_100999`.
pub const FIRST_USER: u64 = 1_000;

/// A deterministic record generator of one [`GenKind`].
///
/// Each call to [`Generator::write_record`] draws the next record from a
/// seeded [`SmallRng`], so a generator replays the same sequence for the same
/// seed and event times.
pub struct Generator {
    kind: GenKind,
    rng: SmallRng,
    written: u64,
    /// Partitioning key of the last record (see [`Generator::key`]).
    key: Vec<u8>,
    /// Access-log timestamps change once per second while records come much
    /// faster, so the formatted time of the last second is reused.
    clf_second: i64,
    clf_time: Vec<u8>,
}

impl Generator {
    /// Creates a generator of `kind` whose output is fully determined by `seed`.
    pub fn new(kind: GenKind, seed: u64) -> Self {
        Self {
            kind,
            rng: SmallRng::seed_from_u64(seed),
            written: 0,
            key: Vec::with_capacity(32),
            clf_second: i64::MIN,
            clf_time: Vec::with_capacity(32),
        }
    }

    /// The kind of records this generator writes.
    pub fn kind(&self) -> GenKind {
        self.kind
    }

    /// How many records this generator has written so far.
    pub fn records_written(&self) -> u64 {
        self.written
    }

    /// The natural partitioning key of the last record written: the cookie of
    /// an impression, the user id of an activity, the client IP of an access
    /// log line. Empty before the first record.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// Appends one record (no trailing newline) with event time `ts_ms` to `out`.
    ///
    /// Existing contents of `out` are kept, so several records can be batched
    /// into one buffer; clear it between records to reuse its allocation.
    pub fn write_record(&mut self, ts_ms: i64, out: &mut Vec<u8>) {
        match self.kind {
            GenKind::Impressions => self.write_impression(ts_ms, out),
            GenKind::Activity => self.write_activity(ts_ms, out),
            GenKind::AccessLog => self.write_access_log(ts_ms, out),
        }
        self.written += 1;
    }

    fn write_impression(&mut self, ts_ms: i64, out: &mut Vec<u8>) {
        let cookie = write_impression(&mut self.rng, ts_ms, NUM_PUBLISHERS, out);
        self.key.clear();
        self.key.extend_from_slice(b"cookie_");
        push_u64(&mut self.key, u64::from(cookie));
    }
}

/// Draws a rank in `0..n` where rank `k` has probability close to
/// `1 / ((k + 1.5) ln(n + 1))`: a continuous Zipf (s = 1) by inverse
/// transform, which needs no table and is cheap per record. With
/// `n = 100_000` the top rank gets about 6% of draws and the top 5% of ranks
/// about three quarters.
fn zipf_rank(rng: &mut SmallRng, n: u64) -> u64 {
    let u: f64 = rng.random();
    let rank = ((n as f64 + 1.0).powf(u) as u64).saturating_sub(1);
    rank.min(n - 1)
}

/// Appends the decimal form of `v`; avoids the formatting machinery because
/// it runs several times per record.
fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

fn push_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    push_u64(out, v.unsigned_abs());
}

#[cfg(test)]
mod tests;
