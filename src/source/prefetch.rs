//! Reading a source one poll ahead of the query.
//!
//! A query thread that polls, decodes and aggregates in turn leaves the
//! second core idle while it waits on the consumer, and the consumer idle
//! while it aggregates. [`Prefetch`] moves polling, copying payloads into
//! [`Chunk`]s and a step of the caller's choice (queries decode there) to a
//! thread of its own: while the query aggregates one poll's records, the
//! next poll is read and decoded. At most one poll waits in between, so
//! memory stays bounded and a slow query still slows fetching down.
//!
//! Offsets follow what the query has taken, not what was read ahead, so a
//! checkpoint written with [`Prefetch::offsets`] never skips records.
//!
//! ```no_run
//! # use std::collections::BTreeMap;
//! # use std::sync::atomic::AtomicBool;
//! # use std::time::Duration;
//! # use runnel::source::{Source, kafka::Waiting, prefetch::Prefetch};
//! # fn demo(stream: &runnel::model::StreamDef) -> runnel::error::Result<()> {
//! let kafka = runnel::connect::kafka::KafkaConn::new("127.0.0.1:9092");
//! let src = Source::connect(stream, &kafka, "runnel-q",
//!                           stream.start, &BTreeMap::new(), Waiting::until(&AtomicBool::new(false)))?;
//! // Counted on the reader thread; the query gets the counts.
//! let mut src = Prefetch::spawn(src, 100_000, Duration::from_millis(100), |chunks| {
//!     Ok(chunks.iter().map(|c| c.len()).sum::<usize>())
//! });
//! if let Some(records) = src.poll(Duration::from_millis(100))? {
//!     println!("{records} records, next offsets {:?}", src.offsets());
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Chunk, Progress, Source};
use crate::error::{Error, Result};

/// How often the reader refreshes the progress it reports when records flow
/// (after every empty poll otherwise).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// One poll's records, as the reader's step made them, and the next offset
/// of every partition after them.
type Polled<T> = Result<(T, BTreeMap<i32, i64>)>;

/// A [`Source`] polled on its own thread, one poll ahead of the caller, each
/// poll's chunks turned into a `T` there.
pub struct Prefetch<T> {
    rx: Option<Receiver<Polled<T>>>,
    partitions: Vec<i32>,
    offsets: BTreeMap<i32, i64>,
    progress: Arc<Mutex<Progress>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Prefetch<T> {
    /// Starts reading `src` on a new thread, up to `max` records per poll,
    /// each poll waiting at most `wait` for its first record; `step` turns
    /// each non-empty poll's chunks into what [`poll`](Self::poll) returns.
    /// An error from `step` or the source ends the reader and is returned
    /// in order, after the polls before it.
    pub fn spawn(
        src: Source,
        max: usize,
        wait: Duration,
        step: impl FnMut(Vec<Chunk>) -> Result<T> + Send + 'static,
    ) -> Prefetch<T> {
        let (tx, rx) = sync_channel(1);
        let partitions = src.partitions();
        let offsets = src.offsets().clone();
        let progress = Arc::new(Mutex::new(src.progress()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (progress, stop) = (progress.clone(), stop.clone());
            std::thread::Builder::new()
                .name("runnel-prefetch".into())
                .spawn(move || read(src, max, wait, step, &tx, &progress, &stop))
                .expect("spawn prefetch thread")
        };
        Prefetch {
            rx: Some(rx),
            partitions,
            offsets,
            progress,
            stop,
            reader: Some(reader),
        }
    }

    /// The next poll's records, waiting at most `wait`; `None` when none came.
    pub fn poll(&mut self, wait: Duration) -> Result<Option<T>> {
        let rx = self.rx.as_ref().expect("receiver lives until drop");
        match rx.recv_timeout(wait) {
            Ok(polled) => {
                let (records, offsets) = polled?;
                self.offsets = offsets;
                Ok(Some(records))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
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
    /// (at most `PROGRESS_EVERY` old; records read ahead count as read).
    pub fn lag(&self) -> Vec<(i32, i64)> {
        self.progress().lag
    }

    /// The source's progress as of the reader's last refresh. It is taken
    /// after the reader handed over its poll, so a partition confirmed
    /// caught up has had all its records up to that log end handed over.
    pub fn progress(&self) -> Progress {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl<T> Drop for Prefetch<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // A reader blocked handing over a poll sees the channel closed.
        drop(self.rx.take());
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn read<T>(
    mut src: Source,
    max: usize,
    wait: Duration,
    mut step: impl FnMut(Vec<Chunk>) -> Result<T>,
    tx: &SyncSender<Polled<T>>,
    progress: &Mutex<Progress>,
    stop: &AtomicBool,
) {
    let mut refreshed = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let polled = match src.poll(max, wait) {
            Ok(chunks) if chunks.is_empty() => None,
            Ok(chunks) => Some(step(chunks).map(|records| (records, src.offsets().clone()))),
            Err(e) => Some(Err(e)),
        };
        let empty = polled.is_none();
        if let Some(polled) = polled {
            let failed = polled.is_err();
            if tx.send(polled).is_err() || failed {
                return;
            }
        }
        // Refreshed after the hand-over: what it confirms was handed over.
        if empty || refreshed.elapsed() >= PROGRESS_EVERY {
            *progress.lock().unwrap_or_else(|p| p.into_inner()) = src.progress();
            refreshed = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StartFrom;
    use crate::source::file::FileSource;

    /// Reads the lines of a new file through a prefetching reader that takes
    /// at most `max` lines per poll and applies `step` to each poll.
    fn prefetch_lines<T: Send + 'static>(
        lines: &[&str],
        max: usize,
        step: impl FnMut(Vec<Chunk>) -> Result<T> + Send + 'static,
    ) -> (tempfile::TempDir, Prefetch<T>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.log");
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let stop = AtomicBool::new(false);
        let src = FileSource::open(&path, StartFrom::Earliest, &BTreeMap::new(), &stop).unwrap();
        let wait = Duration::from_millis(20);
        (dir, Prefetch::spawn(Source::File(src), max, wait, step))
    }

    #[test]
    fn offsets_follow_what_was_taken_not_what_was_read_ahead() {
        let (_dir, mut src) = prefetch_lines(&["aa", "bb", "cc", "dd", "ee"], 2, Ok);
        let wait = Duration::from_secs(10);
        let mut taken = Vec::new();
        while taken.len() < 5 {
            let chunks = src
                .poll(wait)
                .unwrap()
                .expect("the reader hands over every poll");
            for c in &chunks {
                taken.extend(c.payloads().iter().map(|p| p.to_vec()));
            }
            // Each line is 3 bytes: the next offset is right after the
            // last line returned, even though the reader may be a poll ahead.
            assert_eq!(src.offsets().get(&0), Some(&(3 * taken.len() as i64)));
        }
        let expected: Vec<Vec<u8>> = ["aa", "bb", "cc", "dd", "ee"].map(|l| l.into()).into();
        assert_eq!(taken, expected);
        assert_eq!(src.partitions(), &[0]);
        // Nothing more: no poll after the wait, offsets unchanged.
        assert!(src.poll(Duration::from_millis(50)).unwrap().is_none());
        assert_eq!(src.offsets().get(&0), Some(&15));
    }

    #[test]
    fn a_failing_step_is_returned_after_the_polls_before_it() {
        // The step runs on the reader: it counts lines and fails on "bad".
        let (_dir, mut src) = prefetch_lines(&["a", "b", "bad", "c"], 2, |chunks| {
            let lines: Vec<Vec<u8>> = chunks
                .iter()
                .flat_map(|c| c.payloads().into_iter().map(<[u8]>::to_vec))
                .collect();
            match lines.iter().any(|l| l == b"bad") {
                true => Err(Error::Execution("bad line".into())),
                false => Ok(lines.len()),
            }
        });
        let wait = Duration::from_secs(10);
        assert_eq!(src.poll(wait).unwrap(), Some(2));
        assert_eq!(src.offsets().get(&0), Some(&4));
        let err = src.poll(wait).unwrap_err().to_string();
        assert!(err.contains("bad line"), "{err}");
        // The failed poll's records were not taken.
        assert_eq!(src.offsets().get(&0), Some(&4));
        // The reader has stopped: its end is reported, not a hang.
        let err = src.poll(wait).unwrap_err().to_string();
        assert!(err.contains("reader stopped"), "{err}");
    }

    #[test]
    fn drop_stops_a_reader_blocked_handing_over_a_poll() {
        // One poll read ahead fills the channel; the next blocks in `send`
        // until the receiver goes away with the Prefetch.
        let lines: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        let lines: Vec<&str> = lines.iter().map(|l| l.as_str()).collect();
        let (_dir, mut src) = prefetch_lines(&lines, 10, Ok);
        let first = src.poll(Duration::from_secs(10)).unwrap().unwrap();
        assert_eq!(first[0].len(), 10);
        std::thread::sleep(Duration::from_millis(50));
        drop(src); // joins the reader thread: returning at all is the check
    }
}
