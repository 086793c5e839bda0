//! Per-stream input statistics and the bad-record sample.
//!
//! A stream may be read by more than one reader (a query catching up beside
//! live ones, see `runtime::shared`); a record is counted once per stream by remembering, per partition, the offset up to
//! which records were already counted.
//!
//! ```
//! use runnel::source::stats::StreamStats;
//! let s = StreamStats::new(10);
//! s.observe(0, 100, &[b"{}".as_slice(), b"oops"], &[(1, "invalid_json", "expected value".into())]);
//! // A second reader of the same records does not count them again.
//! s.observe(0, 100, &[b"{}".as_slice(), b"oops"], &[(1, "invalid_json", "expected value".into())]);
//! assert_eq!(s.records_in(), 2);
//! assert_eq!(s.bad_by_reason()["invalid_json"], 1);
//! assert_eq!(s.samples()[0].offset, 101);
//! // A record used despite an unknown field is noted, not counted as bad.
//! s.observe(0, 102, &[br#"{"x":1}"#.as_slice()], &[(0, "unknown_field", "unknown field 'x'".into())]);
//! assert_eq!(s.bad_records(), 1);
//! assert_eq!(s.kept_by_reason()["unknown_field"], 1);
//! assert_eq!(s.kept_samples()[0].offset, 102);
//! ```
//!
//! Each reason keeps its own newest samples: a flood of garbage never
//! pushes out the last record of the wrong type.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::format::is_kept;

/// One bad record kept for inspection.
#[derive(Debug, Clone, Serialize)]
pub struct BadSample {
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Reason code (`invalid_json`, `wrong_type`, `empty`, `invalid_utf8`,
    /// `missing_event_time`, `future_timestamp`, `before_epoch`, or
    /// `unknown_field` for a record that was used).
    pub reason: &'static str,
    /// Whether the record was used all the same (see [`is_kept`]).
    pub kept: bool,
    /// What the decoder said.
    pub detail: String,
    /// The start of the payload, lossily decoded.
    pub payload: String,
    /// Payload size in bytes.
    pub size: usize,
    /// When it was seen (RFC 3339).
    pub seen_at: String,
}

/// The newest samples of each reason, each with its arrival number so they
/// can be listed in the order they came.
type Rings = BTreeMap<&'static str, VecDeque<(u64, BadSample)>>;

#[derive(Default)]
struct Inner {
    counted_to: HashMap<i32, i64>,
    by_reason: BTreeMap<&'static str, u64>,
    kept_by_reason: BTreeMap<&'static str, u64>,
    samples: Rings,
    kept_samples: Rings,
    seen: u64,
}

/// Input statistics of one stream.
pub struct StreamStats {
    records_in: AtomicU64,
    bytes_in: AtomicU64,
    bad: AtomicU64,
    per_reason: usize,
    inner: Mutex<Inner>,
}

const PAYLOAD_EXCERPT: usize = 256;

impl StreamStats {
    /// Statistics keeping the newest `per_reason` bad records of each
    /// reason, so a flood of one kind never hides the others.
    pub fn new(per_reason: usize) -> Self {
        StreamStats {
            records_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bad: AtomicU64::new(0),
            per_reason,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Records a chunk of consecutive records of `partition` starting at
    /// `first_offset`; `bad` lists (index in chunk, reason, detail).
    pub fn observe(
        &self,
        partition: i32,
        first_offset: i64,
        payloads: &[&[u8]],
        bad: &[(usize, &'static str, String)],
    ) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let from = inner
            .counted_to
            .get(&partition)
            .copied()
            .unwrap_or(i64::MIN);
        let end = first_offset + payloads.len() as i64;
        if end <= from {
            return;
        }
        let skip = from
            .saturating_sub(first_offset)
            .clamp(0, payloads.len() as i64) as usize;
        let bytes: usize = payloads[skip..].iter().map(|p| p.len()).sum();
        self.records_in
            .fetch_add((payloads.len() - skip) as u64, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
        let (kept, lost): (Vec<_>, Vec<_>) = bad
            .iter()
            .filter(|b| b.0 >= skip)
            .partition(|b| is_kept(b.1));
        self.bad.fetch_add(lost.len() as u64, Ordering::Relaxed);
        for (_, reason, _) in &lost {
            *inner.by_reason.entry(reason).or_default() += 1;
        }
        for (_, reason, _) in &kept {
            *inner.kept_by_reason.entry(reason).or_default() += 1;
        }
        let seen_at = chrono::Utc::now().to_rfc3339();
        let max = self.per_reason;
        for (entries, is_kept) in [(lost, false), (kept, true)] {
            // Only the newest `max` of a reason stay: build just those (a
            // note can come with every record of a poll).
            let mut newer: HashMap<&str, usize> = HashMap::new();
            let newest: Vec<_> = entries
                .iter()
                .rev()
                .filter(|(_, reason, _)| {
                    let n = newer.entry(reason).or_default();
                    *n += 1;
                    *n <= max
                })
                .collect();
            for (i, reason, detail) in newest.into_iter().rev() {
                inner.seen += 1;
                let seq = inner.seen;
                // Notes on kept records have their own rings: they never
                // push out the samples of records that were lost.
                let rings = match is_kept {
                    true => &mut inner.kept_samples,
                    false => &mut inner.samples,
                };
                let ring = rings.entry(reason).or_default();
                if ring.len() == max {
                    ring.pop_front();
                }
                let p = payloads[*i];
                let excerpt = &p[..p.len().min(PAYLOAD_EXCERPT)];
                ring.push_back((
                    seq,
                    BadSample {
                        partition,
                        offset: first_offset + *i as i64,
                        reason,
                        kept: is_kept,
                        detail: detail.chars().take(300).collect(),
                        payload: String::from_utf8_lossy(excerpt).into_owned(),
                        size: p.len(),
                        seen_at: seen_at.clone(),
                    },
                ));
            }
        }
        inner.counted_to.insert(partition, end);
    }

    /// Records read (good and bad).
    pub fn records_in(&self) -> u64 {
        self.records_in.load(Ordering::Relaxed)
    }

    /// Payload bytes read.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Bad records.
    pub fn bad_records(&self) -> u64 {
        self.bad.load(Ordering::Relaxed)
    }

    /// Bad records per reason.
    pub fn bad_by_reason(&self) -> BTreeMap<&'static str, u64> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_reason
            .clone()
    }

    /// Records used despite a problem (e.g. `unknown_field`), per reason.
    pub fn kept_by_reason(&self) -> BTreeMap<&'static str, u64> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .kept_by_reason
            .clone()
    }

    /// The most recent bad records of each reason, oldest first.
    pub fn samples(&self) -> Vec<BadSample> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        in_order(&inner.samples)
    }

    /// The most recent notes of each reason on records that were used,
    /// oldest first.
    pub fn kept_samples(&self) -> Vec<BadSample> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        in_order(&inner.kept_samples)
    }
}

fn in_order(rings: &Rings) -> Vec<BadSample> {
    let mut all: Vec<&(u64, BadSample)> = rings.values().flatten().collect();
    all.sort_by_key(|(seq, _)| *seq);
    all.into_iter().map(|(_, s)| s.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_one_reason_keeps_the_others_samples() {
        let s = StreamStats::new(3);
        s.observe(0, 0, &[b"1".as_slice()], &[(0, "wrong_type", "x".into())]);
        let garbage: Vec<&[u8]> = vec![b"?".as_slice(); 100];
        let bad: Vec<_> = (0..100)
            .map(|i| (i, "invalid_json", String::new()))
            .collect();
        s.observe(0, 1, &garbage, &bad);
        let samples = s.samples();
        let reasons: Vec<_> = samples.iter().map(|b| (b.reason, b.offset)).collect();
        assert_eq!(
            reasons,
            [
                ("wrong_type", 0),
                ("invalid_json", 98),
                ("invalid_json", 99),
                ("invalid_json", 100)
            ]
        );
        assert_eq!(s.bad_by_reason()["invalid_json"], 100);
    }
}
