//! Reading a source one poll ahead of the query.
//!
//! A query thread that polls, decodes and aggregates in turn leaves the
//! second core idle while it waits on the consumer, and the consumer idle
//! while it aggregates. [`Prefetch`] moves polling (and copying payloads
//! into [`Chunk`]s) to a thread of its own: while the query decodes and
//! aggregates one poll's records, the next poll is read. At most one poll
//! waits in between, so memory stays bounded and a slow query still slows
//! fetching down.
//!
//! Offsets follow what the query has taken, not what was read ahead, so a
//! checkpoint written with [`Prefetch::offsets`] never skips records.
//!
//! ```no_run
//! # use std::collections::BTreeMap;
//! # use std::sync::atomic::AtomicBool;
//! # use std::time::Duration;
//! # use runnel::source::{Source, prefetch::Prefetch};
//! # fn demo(stream: &runnel::sql::StreamDef) -> runnel::error::Result<()> {
//! let src = Source::connect(stream, "127.0.0.1:9092", "runnel-q",
//!                           stream.start, &BTreeMap::new(), &AtomicBool::new(false))?;
//! let mut src = Prefetch::spawn(src, 100_000, Duration::from_millis(100));
//! let chunks = src.poll(Duration::from_millis(100))?;
//! println!("{} chunks, next offsets {:?}", chunks.len(), src.offsets());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Chunk, Source};
use crate::error::{Error, Result};

/// How often the reader refreshes the lag it reports.
const LAG_EVERY: Duration = Duration::from_millis(250);

/// One poll's records and the next offset of every partition after them.
type Polled = Result<(Vec<Chunk>, BTreeMap<i32, i64>)>;

/// A [`Source`] polled on its own thread, one poll ahead of the caller.
pub struct Prefetch {
    rx: Option<Receiver<Polled>>,
    partitions: Vec<i32>,
    offsets: BTreeMap<i32, i64>,
    lag: Arc<Mutex<Vec<(i32, i64)>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Prefetch {
    /// Starts reading `src` on a new thread, up to `max` records per poll,
    /// each poll waiting at most `wait` for its first record.
    pub fn spawn(src: Source, max: usize, wait: Duration) -> Prefetch {
        let (tx, rx) = sync_channel(1);
        let partitions = src.partitions();
        let offsets = src.offsets().clone();
        let lag = Arc::new(Mutex::new(src.lag()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (lag, stop) = (lag.clone(), stop.clone());
            std::thread::Builder::new()
                .name("runnel-prefetch".into())
                .spawn(move || read(src, max, wait, &tx, &lag, &stop))
                .expect("spawn prefetch thread")
        };
        Prefetch {
            rx: Some(rx),
            partitions,
            offsets,
            lag,
            stop,
            reader: Some(reader),
        }
    }

    /// The next poll's records, waiting at most `wait`; empty when none came.
    pub fn poll(&mut self, wait: Duration) -> Result<Vec<Chunk>> {
        let rx = self.rx.as_ref().expect("receiver lives until drop");
        match rx.recv_timeout(wait) {
            Ok(polled) => {
                let (chunks, offsets) = polled?;
                self.offsets = offsets;
                Ok(chunks)
            }
            Err(RecvTimeoutError::Timeout) => Ok(Vec::new()),
            Err(RecvTimeoutError::Disconnected) => {
                Err(Error::Execution("the source's reader stopped".into()))
            }
        }
    }

    /// The partitions read.
    pub fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    /// Next offset per partition after the records returned so far.
    pub fn offsets(&self) -> &BTreeMap<i32, i64> {
        &self.offsets
    }

    /// Records not yet read per partition, as of the reader's last refresh
    /// (at most [`LAG_EVERY`] old; records read ahead count as read).
    pub fn lag(&self) -> Vec<(i32, i64)> {
        self.lag.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // A reader blocked handing over a poll sees the channel closed.
        drop(self.rx.take());
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn read(
    mut src: Source,
    max: usize,
    wait: Duration,
    tx: &SyncSender<Polled>,
    lag: &Mutex<Vec<(i32, i64)>>,
    stop: &AtomicBool,
) {
    let mut refreshed = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let polled = src.poll(max, wait);
        if refreshed.elapsed() >= LAG_EVERY {
            *lag.lock().unwrap_or_else(|p| p.into_inner()) = src.lag();
            refreshed = Instant::now();
        }
        let failed = polled.is_err();
        let polled = match polled {
            Ok(chunks) if chunks.is_empty() => continue,
            Ok(chunks) => Ok((chunks, src.offsets().clone())),
            Err(e) => Err(e),
        };
        if tx.send(polled).is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::file::FileSource;
    use crate::sql::StartFrom;

    /// Reads the lines of a new file through a prefetching reader that takes
    /// at most `max` lines per poll.
    fn prefetch_lines(lines: &[&str], max: usize) -> (tempfile::TempDir, Prefetch) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.log");
        std::fs::write(
            &path,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
        let stop = AtomicBool::new(false);
        let src = FileSource::open(&path, StartFrom::Earliest, &BTreeMap::new(), &stop).unwrap();
        (
            dir,
            Prefetch::spawn(Source::File(src), max, Duration::from_millis(20)),
        )
    }

    #[test]
    fn offsets_follow_what_was_taken_not_what_was_read_ahead() {
        let (_dir, mut src) = prefetch_lines(&["aa", "bb", "cc", "dd", "ee"], 2);
        let wait = Duration::from_secs(10);
        let mut taken = Vec::new();
        while taken.len() < 5 {
            let chunks = src.poll(wait).unwrap();
            assert!(!chunks.is_empty(), "the reader hands over every poll");
            for c in &chunks {
                taken.extend(c.payloads().iter().map(|p| p.to_vec()));
            }
            // Each line is 3 bytes: the next offset is right after the
            // last line returned, even though the reader may be a poll ahead.
            assert_eq!(src.offsets().get(&0), Some(&(3 * taken.len() as i64)));
        }
        assert_eq!(
            taken,
            [b"aa", b"bb", b"cc", b"dd", b"ee"].map(|l| l.to_vec())
        );
        assert_eq!(src.partitions(), &[0]);
        // Nothing more: an empty poll after the wait, offsets unchanged.
        assert!(src.poll(Duration::from_millis(50)).unwrap().is_empty());
        assert_eq!(src.offsets().get(&0), Some(&15));
    }

    #[test]
    fn drop_stops_a_reader_blocked_handing_over_a_poll() {
        // One poll read ahead fills the channel; the next blocks in `send`
        // until the receiver goes away with the Prefetch.
        let lines: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        let lines: Vec<&str> = lines.iter().map(|l| l.as_str()).collect();
        let (_dir, mut src) = prefetch_lines(&lines, 10);
        assert_eq!(src.poll(Duration::from_secs(10)).unwrap()[0].len(), 10);
        std::thread::sleep(Duration::from_millis(50));
        drop(src); // joins the reader thread: returning at all is the check
    }
}
