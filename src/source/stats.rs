//! Per-stream input statistics and the bad-record sample.
//!
//! Several queries may read one stream, each with its own consumer; a record
//! is counted once per stream by remembering, per partition, the offset up to
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

#[derive(Default)]
struct Inner {
    counted_to: HashMap<i32, i64>,
    by_reason: BTreeMap<&'static str, u64>,
    kept_by_reason: BTreeMap<&'static str, u64>,
    samples: VecDeque<BadSample>,
    kept_samples: VecDeque<BadSample>,
}

/// Input statistics of one stream.
pub struct StreamStats {
    records_in: AtomicU64,
    bytes_in: AtomicU64,
    bad: AtomicU64,
    max_samples: usize,
    inner: Mutex<Inner>,
}

const PAYLOAD_EXCERPT: usize = 256;

impl StreamStats {
    /// Statistics keeping at most `max_samples` bad records.
    pub fn new(max_samples: usize) -> Self {
        StreamStats {
            records_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bad: AtomicU64::new(0),
            max_samples,
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
        // Only the last `max_samples` of each kind stay in its ring: build
        // just those (a note can come with every record of a poll).
        let seen_at = chrono::Utc::now().to_rfc3339();
        let max = self.max_samples;
        for (entries, is_kept) in [(lost, false), (kept, true)] {
            // Notes on kept records have their own ring: they never push
            // out the samples of records that were lost.
            let ring = match is_kept {
                true => &mut inner.kept_samples,
                false => &mut inner.samples,
            };
            for (i, reason, detail) in &entries[entries.len().saturating_sub(max)..] {
                if ring.len() == max {
                    ring.pop_front();
                }
                let p = payloads[*i];
                let excerpt = &p[..p.len().min(PAYLOAD_EXCERPT)];
                ring.push_back(BadSample {
                    partition,
                    offset: first_offset + *i as i64,
                    reason,
                    kept: is_kept,
                    detail: detail.chars().take(300).collect(),
                    payload: String::from_utf8_lossy(excerpt).into_owned(),
                    size: p.len(),
                    seen_at: seen_at.clone(),
                });
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

    /// The most recent bad records, oldest first.
    pub fn samples(&self) -> Vec<BadSample> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.samples.iter().cloned().collect()
    }

    /// The most recent notes on records that were used, oldest first.
    pub fn kept_samples(&self) -> Vec<BadSample> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.kept_samples.iter().cloned().collect()
    }
}
