//! One read per stream: the queries one server runs over the same Kafka
//! stream share its consumer and its decoder.
//!
//! A reader polls the stream's topic with one consumer on a thread of its
//! own, decodes each poll once — the union of the columns its subscribers
//! read, and the event time — and hands the decoded poll to every
//! subscriber over a channel holding one poll (more for a query that took
//! kept polls when it joined): the reader runs one poll ahead, as
//! [`crate::source::prefetch::Prefetch`] does, and the slowest subscriber
//! paces it, so memory stays bounded. Each query keeps its own offsets,
//! watermark, lateness, state and checkpoint: its [`Subscription`]
//! (`subscription.rs`) takes of each poll only the records at or past its
//! own next offsets, and counts and samples its own bad records
//! ([`QueryNotes`](super::decode::QueryNotes)). The reader also counts
//! the `WHERE` clauses its subscribers share ([`SharedFilters`]): queries
//! with the same window and filter keep each batch's records of it once
//! between them (`window::memo`). The reader's thread is in `reader.rs`.
//!
//! A query joins a reader of its stream that is not past its offsets on
//! any partition and at most [`NEAR`] records behind them (a partition the
//! reader has not begun counts as behind by the query's whole offset
//! there). A reader keeps
//! its latest polls ([`KEEP`] records), so a query a little behind it
//! (queries created one after another over a backlog) joins too and takes
//! those first; kept polls lacking a column it reads are decoded again
//! from the records as read, once, with that column added. Otherwise it
//! starts a reader of its own from its offsets (a query starting from
//! `earliest` while others are live, or restored from an older
//! checkpoint), which later queries may join too. Only a query that starts
//! a reader connects a consumer ([`Readers::open`]): a consumer made only
//! to be dropped on joining had fetched ahead already, and cost each
//! joining query about 0.06 CPU-s (BENCHMARKS.md). A reader at or past
//! another's position on every partition, and near it, hands its
//! subscribers over and ends: a catch-up reader that reached the live
//! one, or the live one once a catch-up is within [`NEAR`] behind it, so
//! the live queries wait for at most that many records of a catch-up,
//! which ends in one read. A reader with no
//! subscribers left ends too. In cluster mode a reader reads the share of
//! the partitions the stream's consumer group gave the server (see
//! `cluster::group`), and serves the queries reading that same share.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # fn demo(task: &runnel::runtime::QueryTask, src: runnel::source::Source) -> runnel::error::Result<()> {
//! use runnel::runtime::shared::{KEEP, Readers};
//! let readers = Arc::new(Readers::new(KEEP));
//! let saved = std::collections::BTreeMap::new(); // from the earliest offsets
//! // Joins a reader of the stream, or connects (here: `src`) to start one.
//! let Some(mut sub) = readers.open(task, &saved, None, || Ok(Some(src)))? else {
//!     return Ok(()); // stopped first
//! };
//! for (partition, records) in sub.poll(std::time::Duration::from_millis(100))? {
//!     println!("{partition}: {:?} records", records.map(|b| b.batch.num_rows()));
//! }
//! println!("next offsets {:?}", sub.offsets());
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::QueryTask;
use super::decode::DecodedChunk;
use crate::error::Result;
use crate::model::{StartFrom, StreamDef};
use crate::source::stats::StreamStats;
use crate::source::{Chunk, Progress, Source};
use crate::window::{FilterNeed, SharedFilters};

mod reader;
mod subscription;
pub use subscription::Subscription;

/// Most records one poll reads. Polls of 50 000 records cost 5–10 % less
/// CPU than polls of 100 000, 250 000 cost 10 % more and 25 000 no less
/// (BENCHMARKS.md, "Polls of 50 000 records"); likely because a smaller
/// poll's decoded columns stay in cache while it is aggregated.
pub const MAX_POLL: usize = 50_000;

/// How long one poll waits for records.
pub const POLL_WAIT: Duration = Duration::from_millis(100);

/// How far (in records, over all partitions) a reader may be behind a
/// query's offsets and still serve it: about two polls, so joining never
/// means waiting long for records already read.
pub const NEAR: i64 = 2 * MAX_POLL as i64;

/// Records of its latest polls a reader keeps by default (runnel.toml
/// `shared_read_keep`), decoded and as read, for queries that subscribe a
/// little behind it (several queries created one after another over a
/// backlog): they take those polls first instead of a reader of their own.
pub const KEEP: usize = 4 * MAX_POLL;

/// One poll of a reader, decoded, as every subscriber receives it; an
/// error ends the reader and fails its subscribers.
type Delivery = std::result::Result<Arc<Poll>, String>;

/// One decoded poll.
#[derive(Debug)]
struct Poll {
    chunks: Vec<DecodedChunk>,
    /// The records as read, for a query that joins later and reads a
    /// column the reader did not decode (see [`KEEP`]).
    raw: Arc<Vec<Chunk>>,
    /// Records read (good and bad).
    records: usize,
    /// The stream columns decoded (besides the event time).
    columns: Vec<usize>,
    /// The reader's next offset per partition after this poll.
    ends: BTreeMap<i32, i64>,
    /// Partitions the consumer moved back to an earlier offset in this
    /// poll (a log that lost the saved offsets, see `on_offset_loss`):
    /// every subscriber moves with it.
    rewound: Vec<i32>,
    progress: Progress,
}

/// The readers of one server, over all its streams.
#[derive(Default)]
pub struct Readers {
    readers: Mutex<Vec<Arc<Reader>>>,
    /// Records of its latest polls each reader keeps (see [`KEEP`]).
    keep: usize,
    /// Per stream, the readers started (one per stream when its queries
    /// share one read, one more per catch-up) and the consumers queries
    /// connected (one per reader started: a query that joins one connects
    /// none) since the server started; `readers` is not kept here.
    counts: Mutex<BTreeMap<String, StreamReads>>,
    /// Streams one of whose queries is connecting to start a reader (see
    /// [`Readers::open`]), and the news that one is done.
    starting: (Mutex<std::collections::BTreeSet<String>>, Condvar),
}

/// How often a query waiting for another query of its stream to connect
/// looks whether it was stopped meanwhile.
const TURN_WAIT: Duration = Duration::from_millis(100);

/// A query's turn to connect to its stream and start a reader: the only
/// one of the stream's until dropped.
struct Turn<'a> {
    readers: &'a Readers,
    stream: String,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let (starting, started) = &self.readers.starting;
        lock(starting).remove(&self.stream);
        started.notify_all();
    }
}

/// One consumer and decoder serving the queries subscribed to it.
struct Reader {
    stream: StreamDef,
    /// The partitions it reads when they are a cluster member's share of
    /// the topic's ([`Source::share`]): it serves only queries reading the
    /// same share. `None`: every partition.
    share: Option<Vec<i32>>,
    /// Where the consumer starts a partition it has no offset for.
    start: StartFrom,
    stats: Arc<StreamStats>,
    /// Records of its latest polls it keeps (see [`KEEP`]).
    keep: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The next offset per partition of the next poll handed out.
    position: BTreeMap<i32, i64>,
    /// The latest polls handed out (at most [`KEEP`] records, and always
    /// the last one), and where the oldest of them starts.
    recent: VecDeque<Arc<Poll>>,
    recent_from: BTreeMap<i32, i64>,
    partitions: Vec<i32>,
    subs: Vec<Sub>,
    /// The filters the subscribers share, counted as they come and go:
    /// they keep each batch's records of one once (see `window::memo`).
    filters: Arc<SharedFilters>,
    /// Ended: nothing may join it any more.
    closed: bool,
}

struct Sub {
    /// Unique in the process: subscribers move between readers.
    id: u64,
    /// The stream columns the query reads.
    columns: Vec<usize>,
    /// What the query asks of the records its filter keeps, which the
    /// queries asking the same keep once between them.
    filter: Option<FilterNeed>,
    tx: SyncSender<Delivery>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a reader that can hand out its records from `from` on (its
/// kept polls, then new ones), now at `position`, starting new partitions
/// at `start`, can serve a query whose next offsets are `offsets` without
/// a gap, and is near enough (see [`NEAR`]).
fn can_serve(
    from: &BTreeMap<i32, i64>,
    position: &BTreeMap<i32, i64>,
    start: StartFrom,
    offsets: &BTreeMap<i32, i64>,
) -> bool {
    let earliest = start == StartFrom::Earliest;
    // A partition first read in a kept poll was read from its start.
    let no_gap = position.iter().all(|(p, at)| {
        let o = offsets.get(p);
        match from.get(p) {
            Some(f) => o.is_some_and(|o| o >= f),
            None => earliest || o.is_some_and(|o| o >= at),
        }
    }) && (earliest || offsets.keys().all(|p| position.contains_key(p)));
    // A partition the reader has not begun starts at the log's start, at
    // or after offset 0: the query is at most its offset ahead there.
    let ahead: i64 = (offsets.iter())
        .map(|(p, o)| (o - position.get(p).copied().unwrap_or(0)).max(0))
        .sum();
    no_gap && ahead <= NEAR
}

impl Readers {
    /// Readers that keep `keep` records of their latest polls.
    pub fn new(keep: usize) -> Self {
        Readers {
            keep,
            ..Readers::default()
        }
    }

    /// Subscribes `task`, resuming at `saved` offsets and reading `share`
    /// (see [`Source::share`]), to a reader of its Kafka stream: joins one
    /// that can serve it, with no consumer of its own, or else connects
    /// (`connect`, `None` when the query stopped first) and starts one.
    /// One query of a stream connects at a time, so queries starting
    /// together (see [`super::gate`]) connect once: the others join the
    /// reader it starts. A query starting from `latest` without saved
    /// offsets needs its consumer for the log ends, so it connects first.
    pub fn open(
        self: &Arc<Self>,
        task: &QueryTask,
        saved: &BTreeMap<i32, i64>,
        share: Option<Vec<i32>>,
        connect: impl FnOnce() -> Result<Option<Source>>,
    ) -> Result<Option<Subscription>> {
        // From the earliest offset, the saved offsets are the query's next
        // ones (see `KafkaSource::assign`); from the latest, they lack the
        // log ends of partitions never read.
        let known = task.start_from() == StartFrom::Earliest;
        let (starting, started) = &self.starting;
        let mut streams = lock(starting);
        let _turn = loop {
            // Under the lock of the streams being started, so a reader
            // started meanwhile is either found here or started after.
            if known {
                let readers = lock(&self.readers);
                if let Some(sub) = Self::join(&readers, task, saved, &share)? {
                    return Ok(Some(sub));
                }
            }
            if streams.insert(task.stream.name.clone()) {
                break Turn {
                    readers: self,
                    stream: task.stream.name.clone(),
                };
            }
            if task.stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            // Another query of the stream is connecting: its reader, once
            // started, may serve this one too.
            streams = started
                .wait_timeout(streams, TURN_WAIT)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        drop(streams);
        let Some(src) = connect()? else {
            return Ok(None);
        };
        lock(&self.counts)
            .entry(task.stream.name.clone())
            .or_default()
            .consumers += 1;
        self.subscribe(task, src).map(Some)
    }

    /// Joins `task`, resuming at `offsets`, to a reader of its stream
    /// reading `share` that can serve it, if there is one.
    fn join(
        readers: &[Arc<Reader>],
        task: &QueryTask,
        offsets: &BTreeMap<i32, i64>,
        share: &Option<Vec<i32>>,
    ) -> Result<Option<Subscription>> {
        let columns = task.plan.stream_columns_read();
        for reader in (readers.iter()).filter(|r| r.stream == task.stream && &r.share == share) {
            let mut inner = lock(&reader.inner);
            let (from, at) = (&inner.recent_from, &inner.position);
            if !inner.closed && can_serve(from, at, reader.start, offsets) {
                reader.widen(&mut inner, &columns)?;
                // The kept polls first: room for them and the next one.
                let (tx, rx) = sync_channel(inner.recent.len() + 1);
                for poll in &inner.recent {
                    tx.try_send(Ok(poll.clone()))
                        .expect("room for the kept polls");
                }
                inner.add(task, tx);
                tracing::info!(query = %task.name, stream = %task.stream.name, "joined the stream's reader");
                let partitions = inner.partitions.clone();
                return Ok(Some(Subscription::new(task, rx, partitions, offsets)));
            }
        }
        Ok(None)
    }

    /// Subscribes `task` to a reader of its stream that can serve it from
    /// `src`'s offsets, or starts a reader of its own with `src`.
    fn subscribe(self: &Arc<Self>, task: &QueryTask, src: Source) -> Result<Subscription> {
        let offsets = src.offsets().clone();
        let share = src.share();
        let mut readers = lock(&self.readers);
        if let Some(sub) = Self::join(&readers, task, &offsets, &share)? {
            return Ok(sub);
        }
        let (tx, rx) = sync_channel(1);
        let mut inner = Inner {
            position: offsets.clone(),
            recent_from: offsets.clone(),
            partitions: src.partitions(),
            ..Inner::default()
        };
        inner.add(task, tx);
        let partitions = inner.partitions.clone();
        let reader = Arc::new(Reader {
            stream: task.stream.clone(),
            share,
            start: task.start_from(),
            stats: task.stats.clone(),
            keep: self.keep,
            inner: Mutex::new(inner),
        });
        readers.push(reader.clone());
        drop(readers);
        let all = self.clone();
        std::thread::Builder::new()
            .name(format!("read-{}", task.stream.name))
            .spawn(move || {
                // A bug must fail the subscribed queries, not leave them
                // waiting on a reader that is gone.
                let run = std::panic::AssertUnwindSafe(|| reader.clone().run(&all, src));
                if let Err(p) = std::panic::catch_unwind(run) {
                    let message = crate::error::panic_message(p.as_ref());
                    reader.fail(&all, format!("internal error: {message}"));
                }
            })?;
        tracing::info!(query = %task.name, stream = %task.stream.name, "started a reader of the stream");
        lock(&self.counts)
            .entry(task.stream.name.clone())
            .or_default()
            .started += 1;
        Ok(Subscription::new(task, rx, partitions, &offsets))
    }

    /// Per stream: its readers now, the readers started and the consumers
    /// connected since the server started.
    pub fn per_stream(&self) -> BTreeMap<String, StreamReads> {
        let mut out = lock(&self.counts).clone();
        for r in lock(&self.readers).iter() {
            out.entry(r.stream.name.clone()).or_default().readers += 1;
        }
        out
    }
}

/// How a stream is read (see [`Readers::per_stream`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamReads {
    /// Readers now: one, more while a query catches up.
    pub readers: usize,
    /// Readers started since the server started.
    pub started: u64,
    /// Consumers connected since the server started.
    pub consumers: u64,
}

impl Inner {
    /// Keeps `poll` for queries that join a little behind, the latest polls
    /// up to `keep` records (see [`KEEP`]); a consumer that moved back
    /// starts the kept polls over.
    fn keep(&mut self, poll: &Arc<Poll>, keep: usize) {
        if !poll.rewound.is_empty() || keep == 0 {
            self.recent.clear();
            self.recent_from = self.position.clone();
            return;
        }
        if poll.records == 0 {
            return;
        }
        self.recent.push_back(poll.clone());
        let mut kept: usize = self.recent.iter().map(|p| p.records).sum();
        while kept > keep && self.recent.len() > 1 {
            let oldest = self.recent.pop_front().expect("more than one");
            kept -= oldest.records;
            self.recent_from = oldest.ends.clone();
        }
    }

    fn add(&mut self, task: &QueryTask, tx: SyncSender<Delivery>) {
        static IDS: AtomicU64 = AtomicU64::new(0);
        let event_time = task.stream.event_time_index();
        self.subs.push(Sub {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            columns: task.plan.stream_columns_read(),
            filter: FilterNeed::of(&task.plan, event_time),
            tx,
        });
        self.count_filters();
    }

    /// Takes over `subs` (handed over by another reader).
    fn adopt(&mut self, subs: &mut Vec<Sub>) {
        self.subs.append(subs);
        self.count_filters();
    }

    /// Drops the subscribers `gone`.
    fn drop_subs(&mut self, gone: &[u64]) {
        self.subs.retain(|s| !gone.contains(&s.id));
        self.count_filters();
    }

    fn count_filters(&self) {
        (self.filters).set(self.subs.iter().filter_map(|s| s.filter.as_ref()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_serves_queries_not_behind_what_it_can_hand_out_and_near_it() {
        let at = |v: &[(i32, i64)]| v.iter().copied().collect::<BTreeMap<i32, i64>>();
        let position = at(&[(0, 100), (1, 50)]);
        use StartFrom::{Earliest, Latest};
        let serve =
            |start, offsets: &[(i32, i64)]| can_serve(&position, &position, start, &at(offsets));
        // At or past the reader on every partition: no gap.
        assert!(serve(Earliest, &[(0, 100), (1, 60)]));
        // Behind it on one partition: those records were handed out already.
        assert!(!serve(Earliest, &[(0, 99), (1, 60)]));
        // Nothing read of partition 1 yet (starting from earliest).
        assert!(!serve(Earliest, &[(0, 100)]));
        // Far ahead: joining would mean waiting for the reader to catch up.
        assert!(!serve(Earliest, &[(0, 100 + NEAR + 1), (1, 50)]));
        // A partition the reader has not read: from its start, which only
        // `earliest` guarantees is not past the query's offset, and which
        // is as far behind as that offset at most.
        assert!(serve(Earliest, &[(0, 100), (1, 50), (2, 7)]));
        assert!(!serve(Latest, &[(0, 100), (1, 50), (2, 7)]));
        assert!(!serve(Earliest, &[(0, 100), (1, 50), (2, NEAR + 1)]));
        // A reader that has read nothing serves a query starting from
        // earliest, or near the partitions' starts, and no query further on:
        // a reader just started from earliest takes no live query over.
        let none = BTreeMap::new();
        assert!(can_serve(&none, &none, Earliest, &none));
        assert!(can_serve(&none, &none, Earliest, &at(&[(0, 10), (1, 20)])));
        assert!(!can_serve(
            &none,
            &none,
            Earliest,
            &at(&[(0, NEAR / 2), (1, NEAR / 2 + 1)])
        ));

        // With polls kept from offsets 40 and 20 on: a query behind the
        // position but not behind those takes them first.
        let from = at(&[(0, 40), (1, 20)]);
        assert!(can_serve(
            &from,
            &position,
            Latest,
            &at(&[(0, 40), (1, 30)])
        ));
        assert!(!can_serve(
            &from,
            &position,
            Latest,
            &at(&[(0, 39), (1, 30)])
        ));
        // Partition 1 first read in a kept poll: from its start.
        let from = at(&[(0, 40)]);
        assert!(can_serve(&from, &position, Earliest, &at(&[(0, 40)])));
        assert!(!can_serve(&from, &position, Latest, &at(&[(0, 40)])));
    }

    fn poll(records: usize, ends: &[(i32, i64)], rewound: bool) -> Arc<Poll> {
        Arc::new(Poll {
            chunks: Vec::new(),
            raw: Arc::default(),
            records,
            columns: vec![0],
            ends: ends.iter().copied().collect(),
            rewound: if rewound { vec![0] } else { Vec::new() },
            progress: Progress::default(),
        })
    }

    #[test]
    fn a_reader_keeps_its_latest_polls_up_to_a_bound() {
        let mut inner = Inner::default();
        inner.keep(&poll(KEEP / 2, &[(0, 10)], false), KEEP);
        inner.keep(&poll(0, &[(0, 10)], false), KEEP); // nothing to keep
        inner.keep(&poll(KEEP / 2, &[(0, 20)], false), KEEP);
        assert_eq!(inner.recent.len(), 2);
        assert!(inner.recent_from.is_empty());
        // One more: the oldest goes, and the kept polls start where it ended.
        inner.keep(&poll(KEEP / 2, &[(0, 30)], false), KEEP);
        assert_eq!(inner.recent.len(), 2);
        assert_eq!(inner.recent_from, BTreeMap::from([(0, 10)]));
        // A poll larger than the bound is kept alone.
        inner.keep(&poll(KEEP * 2, &[(0, 40)], false), KEEP);
        assert_eq!(inner.recent.len(), 1);
        assert_eq!(inner.recent_from, BTreeMap::from([(0, 30)]));
        // A consumer that moved back starts over from its position.
        inner.position = BTreeMap::from([(0, 5)]);
        inner.keep(&poll(10, &[(0, 5)], true), KEEP);
        assert!(inner.recent.is_empty());
        assert_eq!(inner.recent_from, BTreeMap::from([(0, 5)]));
    }
}
