//! The watermark rule, written once: how far event time has surely
//! progressed, from each partition's records and, for a stream that has gone
//! quiet, from the wall clock.
//!
//! * An **active** partition's watermark is the largest event time read from
//!   it minus the stream's `watermark_delay`. Until it has delivered a record
//!   it holds the stream's watermark back.
//! * A partition is **idle** once its source has confirmed it caught up (its
//!   position equals the log end a live broker just reported) and it has been
//!   silent for `idle_after`, counting only time the confirmation was fresh.
//!   A stalled or unreachable broker, a failed fetch or an unknown log end
//!   never makes a partition idle, and the time they last does not count.
//! * The stream's watermark is the minimum over active partitions. When every
//!   partition is idle it advances from where each stood at the wall clock's
//!   pace: `largest event time + confirmed quiet time − delay`, minimum over
//!   the partitions that have delivered a record.
//!
//! So a live stream (event time ≈ wall clock) that stops still closes its
//! last window about `delay + grace` after its end, while a backlog, a
//! replay or a stream of old event times that pauses for a moment moves its
//! watermark by the length of the pause, not to the wall clock.
//!
//! ```
//! use runnel::window::watermark::Watermarks;
//! let mut w = Watermarks::new(5_000);
//! w.register(0);
//! w.register(1);
//! w.observe(0, 60_000);
//! assert_eq!(w.current(), None); // partition 1 has not delivered a record
//! w.observe(1, 61_000);
//! assert_eq!(w.current(), Some(55_000));
//! // Both partitions caught up and silent for 2 s of confirmed quiet:
//! w.quiet(0, 2_000, 1_000);
//! w.quiet(1, 2_000, 1_000);
//! assert_eq!(w.current(), Some(57_000));
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What one partition contributes to the stream's watermark. Cluster mode
/// stores it per partition and combines it with [`combine`], as a single
/// server does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMark {
    /// Largest event time read, `None` before the first record.
    pub max_event: Option<i64>,
    /// Set while the partition is idle: its watermark advanced by the
    /// confirmed quiet time (`None` when it never delivered a record).
    pub idle: Option<Option<i64>>,
}

/// The stream's watermark from its partitions' marks: the minimum over
/// active partitions of `max_event − delay` (`None` while one of them has
/// no record), or when all are idle the minimum of their advanced watermarks.
pub fn combine(marks: impl IntoIterator<Item = PartitionMark>, delay: i64) -> Option<i64> {
    let mut active: Option<Option<i64>> = None;
    let mut idle: Option<i64> = None;
    for m in marks {
        match m.idle {
            None => {
                let w = m.max_event.map(|t| t.saturating_sub(delay));
                active = Some(match active {
                    None => w,
                    Some(a) => a.zip(w).map(|(a, w)| a.min(w)),
                });
            }
            Some(w) => idle = idle.into_iter().chain(w).min(),
        }
    }
    match active {
        Some(a) => a,
        None => idle,
    }
}

#[derive(Debug, Clone, Copy)]
struct Partition {
    /// Largest event time read (`i64::MIN` before any).
    max: i64,
    /// Confirmed quiet time since its last record, ms.
    quiet_ms: i64,
    idle: bool,
}

impl Partition {
    fn mark(&self, delay: i64) -> PartitionMark {
        let max_event = (self.max != i64::MIN).then_some(self.max);
        PartitionMark {
            max_event,
            idle: self
                .idle
                .then(|| max_event.map(|m| m.saturating_add(self.quiet_ms).saturating_sub(delay))),
        }
    }
}

/// The per-partition clocks of one query's stream.
#[derive(Debug, Clone)]
pub struct Watermarks {
    delay: i64,
    partitions: BTreeMap<i32, Partition>,
}

impl Watermarks {
    /// No partitions yet; `delay_ms` is the stream's `watermark_delay`.
    pub fn new(delay_ms: i64) -> Self {
        Watermarks {
            delay: delay_ms,
            partitions: BTreeMap::new(),
        }
    }

    /// The stream's delay.
    pub fn delay(&self) -> i64 {
        self.delay
    }

    /// Declares a partition the source reads: until it delivers a record or
    /// is idle it holds the watermark back.
    pub fn register(&mut self, partition: i32) {
        self.partitions.entry(partition).or_insert(Partition {
            max: i64::MIN,
            quiet_ms: 0,
            idle: false,
        });
    }

    /// Largest event time read from `partition` (`i64::MIN` when none).
    pub fn max_event(&self, partition: i32) -> i64 {
        self.partitions.get(&partition).map_or(i64::MIN, |p| p.max)
    }

    /// Records of `partition` were read, the largest event time among them
    /// `max` (`i64::MIN` when none had one): the partition is active again.
    pub fn observe(&mut self, partition: i32, max: i64) {
        self.register(partition);
        let p = self.partitions.get_mut(&partition).expect("registered");
        p.max = p.max.max(max);
        p.quiet_ms = 0;
        p.idle = false;
    }

    /// `partition` delivered nothing for another `elapsed_ms` while its
    /// source confirmed it caught up with a live broker: it counts toward
    /// its quiet time, and the partition is idle once that reaches
    /// `idle_after_ms`.
    pub fn quiet(&mut self, partition: i32, elapsed_ms: i64, idle_after_ms: i64) {
        self.register(partition);
        let p = self.partitions.get_mut(&partition).expect("registered");
        p.quiet_ms = p.quiet_ms.saturating_add(elapsed_ms.max(0));
        p.idle = p.quiet_ms >= idle_after_ms;
    }

    /// `partition` could not be confirmed caught up (behind its log end, or
    /// its broker stalled or unreachable): it is active; its quiet time so
    /// far is kept but stops growing.
    pub fn unconfirmed(&mut self, partition: i32) {
        self.register(partition);
        self.partitions
            .get_mut(&partition)
            .expect("registered")
            .idle = false;
    }

    /// One turn of a query's loop, `elapsed_ms` after the last: the
    /// partitions in `delivered` gave records (they were observed as they
    /// were read), each other partition of `partitions` is quiet if
    /// `caught_up` confirms it, and unconfirmed otherwise. Partitions new
    /// to the clock are registered, so they hold the watermark back.
    pub fn tick(
        &mut self,
        partitions: &[i32],
        delivered: &[i32],
        caught_up: impl Fn(i32) -> bool,
        elapsed_ms: i64,
        idle_after_ms: i64,
    ) {
        for &p in partitions {
            if delivered.contains(&p) {
                self.observe(p, i64::MIN);
            } else if caught_up(p) {
                self.quiet(p, elapsed_ms, idle_after_ms);
            } else {
                self.unconfirmed(p);
            }
        }
    }

    /// Whether `partition` is idle.
    pub fn is_idle(&self, partition: i32) -> bool {
        self.partitions.get(&partition).is_some_and(|p| p.idle)
    }

    /// What `partition` contributes to the watermark (cluster mode stores
    /// it); an unknown partition is active without a record.
    pub fn mark(&self, partition: i32) -> PartitionMark {
        self.partitions.get(&partition).map_or(
            PartitionMark {
                max_event: None,
                idle: None,
            },
            |p| p.mark(self.delay),
        )
    }

    /// The stream's watermark by [`combine`], `None` while unknown.
    pub fn current(&self) -> Option<i64> {
        let marks = self.partitions.values().map(|p| p.mark(self.delay));
        combine(marks, self.delay)
    }

    /// Largest event time read per partition (`i64::MIN` when none), as
    /// checkpoints keep it.
    pub fn maxima(&self) -> BTreeMap<i32, i64> {
        self.partitions.iter().map(|(k, p)| (*k, p.max)).collect()
    }

    /// Forgets every partition and restarts from `maxima` (all active).
    pub fn reset(&mut self, maxima: BTreeMap<i32, i64>) {
        self.partitions.clear();
        for (p, m) in maxima {
            self.register(p);
            self.partitions.get_mut(&p).expect("registered").max = m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(max: Option<i64>) -> PartitionMark {
        PartitionMark {
            max_event: max,
            idle: None,
        }
    }

    #[test]
    fn the_slowest_active_partition_holds_the_watermark() {
        let marks = [active(Some(10_000)), active(Some(4_000))];
        assert_eq!(combine(marks, 1_000), Some(3_000));
        // A partition without a record holds everything back.
        let marks = [active(Some(10_000)), active(None)];
        assert_eq!(combine(marks, 1_000), None);
        // Unless it is idle: then it does not count while others are active.
        let idle_empty = PartitionMark {
            max_event: None,
            idle: Some(None),
        };
        assert_eq!(
            combine([active(Some(10_000)), idle_empty], 1_000),
            Some(9_000)
        );
        assert_eq!(combine([idle_empty], 1_000), None);
        assert_eq!(combine([], 1_000), None);
    }

    #[test]
    fn idle_partitions_advance_from_where_they_stood_by_the_quiet_time() {
        let mut w = Watermarks::new(5_000);
        w.observe(0, 600_000);
        w.observe(1, 590_000);
        assert_eq!(w.current(), Some(585_000));
        // Partition 1 goes idle: partition 0 alone holds the watermark.
        w.quiet(1, 1_500, 1_000);
        assert!(w.is_idle(1));
        assert_eq!(w.current(), Some(595_000));
        // Both idle: each advances by its own confirmed quiet time.
        // Both idle: each advances from its own frontier by its own
        // confirmed quiet time (600 000 + 1 000 and 590 000 + 1 500).
        w.quiet(0, 1_000, 1_000);
        assert_eq!(w.current(), Some(586_500));
        w.quiet(0, 3_000, 1_000);
        w.quiet(1, 3_000, 1_000);
        assert_eq!(w.current(), Some(589_500));
        // A stall: partition 0 is not confirmed; it holds the watermark at
        // its event-time frontier again, and the stall does not count.
        w.unconfirmed(0);
        assert_eq!(w.current(), Some(595_000));
        w.quiet(0, 100, 1_000);
        assert_eq!(w.current(), Some(589_500));
        // A record makes a partition active again and resets its quiet time.
        w.observe(1, 591_000);
        assert_eq!(w.current(), Some(586_000));
    }

    #[test]
    fn a_short_quiet_spell_is_not_idle() {
        let mut w = Watermarks::new(5_000);
        w.observe(0, 100_000);
        w.quiet(0, 400, 1_000);
        w.quiet(0, 400, 1_000);
        assert!(!w.is_idle(0));
        assert_eq!(w.current(), Some(95_000));
        w.quiet(0, 400, 1_000);
        assert!(w.is_idle(0));
        assert_eq!(w.current(), Some(96_200));
    }
}
