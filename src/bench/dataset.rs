//! The benchmark dataset: generated impressions stored back to back, the
//! same bytes for the same arguments.

use std::ops::Range;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{BASE_MS, JITTER_MS, SPAN_MS};
use crate::generate::write_impression;

/// Generated impressions stored back to back.
pub struct Dataset {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Dataset {
    /// `records` impressions over [`SPAN_MS`] of event time from [`BASE_MS`],
    /// with `publishers` distinct publishers; the same arguments always give
    /// the same bytes.
    pub fn generate(records: usize, publishers: u32, seed: u64) -> Dataset {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut data = Vec::with_capacity(records * 146);
        let mut ends = Vec::with_capacity(records);
        let n = records.max(1) as i64;
        for i in 0..records as i64 {
            let jitter = rng.random_range(-JITTER_MS..=JITTER_MS);
            let ts = BASE_MS + i * SPAN_MS / n + jitter;
            write_impression(&mut rng, ts, publishers, &mut data);
            ends.push(data.len());
        }
        Dataset { data, ends }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when there is no record.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Total payload bytes.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The payloads of records `range`.
    pub fn payloads(&self, range: Range<usize>) -> Vec<&[u8]> {
        let mut start = if range.start == 0 {
            0
        } else {
            self.ends[range.start - 1]
        };
        self.ends[range]
            .iter()
            .map(|&e| {
                let s = &self.data[start..e];
                start = e;
                s
            })
            .collect()
    }

    /// The payload of record `i`.
    pub fn payload(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.data[start..self.ends[i]]
    }
}
