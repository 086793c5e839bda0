//! Reading a topic's records over Kafka's fetch protocol, without
//! librdkafka's work per record.
//!
//! librdkafka hands every record to the application as an event of its own:
//! an allocation on its broker thread, a lock and a free when taken off its
//! queue. Measured end to end, that was more than half of what a record
//! cost (BENCHMARKS.md, "Where the consumer path's time goes"). A
//! [`WireFetch`] sends Fetch requests itself on one connection per
//! partition leader, from a thread per leader, and turns each answer into
//! [`Chunk`]s on that thread: a record batch's payloads copied once, from
//! the answer into the chunk. [`kafka_protocol`] encodes the requests and
//! decodes the answers and record batches (checking their CRCs and
//! decompressing them).
//!
//! What librdkafka did for the source, done here the same way:
//! - committed records only (`read_committed`): records of aborted
//!   transactions and transaction markers are skipped, as the answer's list
//!   of aborted transactions says;
//! - a position of [`EARLIEST`] or [`LATEST`] is looked up (ListOffsets) by
//!   the leader before its first fetch;
//! - a leader that cannot be reached is asked again every [`RETRY`]; one
//!   that refuses a partition (no longer its leader, offset outside the log)
//!   stops fetching it until the source places it again, after asking the
//!   brokers where its partitions are now (see [`WireFetch::relocate`]).
//!
//! Each answer brings every partition's log end: a partition is caught up
//! when everything up to the log end of an answer received within
//! [`CONFIRMATION_FRESH`](crate::source::CONFIRMATION_FRESH) has been
//! handed out ([`WireFetch::caught_up`]). Leaders answer at least every
//! [`MAX_WAIT_MS`], so a stalled one stops confirming at once.
//!
//! ```text
//! leader thread (one per broker) ──Fetch──▶ broker
//!        │ answers as chunks (bounded: QUEUED answers)
//!        ▼
//! WireFetch::poll ──chunks──▶ KafkaSource
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;

use super::Chunk;
use leader::lead;

mod batches;
mod conn;
mod leader;

/// A position to look up: the log's start.
pub(super) const EARLIEST: i64 = -2;
/// A position to look up: the log's end.
pub(super) const LATEST: i64 = -1;

/// The highest Fetch version asked for: topics by name (13 and later name
/// them by id).
const FETCH_VERSION: i16 = 11;
/// The highest ListOffsets version asked for.
const LIST_OFFSETS_VERSION: i16 = 5;
/// How long a leader may hold a fetch while it has nothing new, as
/// `fetch.wait.max.ms` on the librdkafka path: a caught-up partition is
/// confirmed that often.
const MAX_WAIT_MS: i32 = 10;
/// Most bytes of one answer, and of one partition in it (a batch larger
/// than either still comes whole, alone).
const MAX_BYTES: i32 = 8 << 20;
const PARTITION_MAX_BYTES: i32 = 1 << 20;
/// Answers read but not taken by a poll, over all leaders: when input
/// outruns the query, leaders stop fetching instead of memory growing.
const QUEUED: usize = 2;
/// The largest answer read: more than [`MAX_BYTES`] for a batch larger
/// than that (a broker's `message.max.bytes` may be raised).
const MAX_ANSWER: i32 = 256 << 20;
/// How long an answer may take before its connection is given up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a leader thread waits before trying a broker again.
pub(super) const RETRY: Duration = Duration::from_millis(500);
/// How often a thread blocked on a broker looks whether it should stop.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Kafka's error codes the source acts on.
const OFFSET_OUT_OF_RANGE: i16 = 1;

/// The offsets and generations a leader thread fetches, set by the source.
#[derive(Default)]
struct Wanted {
    /// Per partition: its next offset to fetch (or [`EARLIEST`] /
    /// [`LATEST`] to look up) and the generation of that position.
    at: BTreeMap<i32, (i64, u64)>,
}

/// A leader's thread, as the source sees it: what it fetches, and its stop.
struct Leader {
    wanted: Arc<(Mutex<Wanted>, Condvar)>,
    stop: Arc<AtomicBool>,
}

/// What a leader thread tells the source.
enum Answer {
    /// A fetch answer: per partition fetched, what it gave.
    Fetched(Vec<Part>),
    /// A partition the leader refused (Kafka error `code`); it is no longer
    /// fetched until placed again.
    Refused {
        partition: i32,
        generation: u64,
        code: i16,
    },
    /// The leader at `addr` could not be reached or broke its connection.
    Down { addr: String, error: String },
}

/// One partition of a fetch answer.
struct Part {
    partition: i32,
    generation: u64,
    /// The records, if any.
    chunk: Option<Chunk>,
    /// The offset after the last record (or transaction marker) read.
    next: i64,
    /// The log end (high watermark, or last stable offset) it reported;
    /// `None` for a position looked up.
    high: Option<i64>,
    at: Instant,
}

/// The log end of a partition and when its leader reported it.
#[derive(Debug, Clone, Copy)]
pub(super) struct LogEnd {
    pub(super) high: i64,
    pub(super) at: Instant,
}

/// A source's fetching: a thread per partition leader.
pub(super) struct WireFetch {
    topic: String,
    client_id: String,
    leaders: BTreeMap<String, Leader>,
    /// Per partition placed: its leader's address and its generation (a new
    /// one each time it is placed, so answers fetched before are dropped).
    placed: BTreeMap<i32, (String, u64)>,
    generations: u64,
    /// Per partition: the next offset after the records taken from answers
    /// (or its position to look up, before any).
    taken: BTreeMap<i32, i64>,
    /// Partitions refused or whose leader is down: placed again at the next
    /// [`relocate`](Self::relocate).
    astray: BTreeSet<i32>,
    tx: SyncSender<Answer>,
    rx: Receiver<Answer>,
    /// Chunks taken from answers, not yet handed out.
    pending: VecDeque<Chunk>,
    pending_records: usize,
    ends: BTreeMap<i32, LogEnd>,
    /// What went wrong since the last [`troubles`](Self::troubles).
    troubles: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WireFetch {
    /// Fetches nothing until partitions are [`place`](Self::place)d.
    pub(super) fn new(topic: &str, client_id: &str) -> Self {
        let (tx, rx) = sync_channel(QUEUED);
        WireFetch {
            topic: topic.to_string(),
            client_id: client_id.to_string(),
            leaders: BTreeMap::new(),
            placed: BTreeMap::new(),
            generations: 0,
            taken: BTreeMap::new(),
            astray: BTreeSet::new(),
            tx,
            rx,
            pending: VecDeque::new(),
            pending_records: 0,
            ends: BTreeMap::new(),
            troubles: Vec::new(),
        }
    }

    /// Fetches `partition` from `leader` (an address; `None` while
    /// unknown), from offset `at` (or [`EARLIEST`] / [`LATEST`]); answers
    /// fetched before and not taken yet are dropped.
    pub(super) fn place(&mut self, partition: i32, at: i64, leader: Option<&String>) {
        self.unplace(partition);
        self.generations += 1;
        let generation = self.generations;
        self.taken.insert(partition, at);
        self.ends.remove(&partition);
        let Some(addr) = leader else {
            self.placed.insert(partition, (String::new(), generation));
            self.astray.insert(partition);
            return;
        };
        let (wanted, woken) = &*self.leader(addr).wanted;
        lock(wanted).at.insert(partition, (at, generation));
        woken.notify_all();
        self.placed.insert(partition, (addr.clone(), generation));
        self.astray.remove(&partition);
    }

    /// Stops fetching `partition`.
    fn unplace(&mut self, partition: i32) {
        if let Some((addr, _)) = self.placed.remove(&partition)
            && let Some(leader) = self.leaders.get(&addr)
        {
            lock(&leader.wanted.0).at.remove(&partition);
        }
    }

    /// The thread fetching from `addr`, started if there is none.
    fn leader(&mut self, addr: &str) -> &Leader {
        self.leaders.entry(addr.to_string()).or_insert_with(|| {
            let leader = Leader {
                wanted: Arc::default(),
                stop: Arc::default(),
            };
            let (wanted, stop, tx) = (leader.wanted.clone(), leader.stop.clone(), self.tx.clone());
            let (at, topic, client) =
                (addr.to_string(), self.topic.clone(), self.client_id.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("fetch-{topic}"))
                .spawn(move || lead(&at, &topic, &client, &wanted, &stop, &tx));
            if let Err(e) = spawned {
                let topic = &self.topic;
                tracing::error!("kafka: no thread to fetch {topic} from {addr}: {e}");
            }
            leader
        })
    }

    /// Moves `partition` to offset `at` (its offset was lost): what was
    /// fetched of it and not handed out yet is dropped.
    pub(super) fn seek(&mut self, partition: i32, at: i64) {
        self.pending.retain(|c| c.partition != partition);
        self.pending_records = self.pending.iter().map(Chunk::len).sum();
        if let Some((addr, _)) = self.placed.get(&partition).cloned() {
            self.place(partition, at, (!addr.is_empty()).then_some(&addr));
        }
    }

    /// How many leaders are fetched from.
    #[cfg(test)]
    pub(super) fn leaders(&self) -> usize {
        self.leaders.len()
    }

    /// Whether a partition waits for the brokers to say where it is now.
    pub(super) fn astray(&self) -> bool {
        !self.astray.is_empty()
    }

    /// Places again, at the leaders the brokers named last (`leaders`:
    /// partition to address), the partitions whose leader changed, was
    /// down or refused them; ends the threads of brokers leading none.
    pub(super) fn relocate(&mut self, leaders: &BTreeMap<i32, String>) {
        let moved: Vec<(i32, String)> = (self.placed.iter())
            .filter_map(|(p, (addr, _))| {
                let now = leaders.get(p)?;
                (now != addr || self.astray.contains(p)).then(|| (*p, now.clone()))
            })
            .collect();
        for (p, addr) in moved {
            let at = self.taken[&p];
            tracing::info!(topic = %self.topic, partition = p, leader = %addr, "fetching from the partition's leader");
            self.place(p, at, Some(&addr));
        }
        let used: BTreeSet<&String> = self.placed.values().map(|(a, _)| a).collect();
        let idle: Vec<String> = (self.leaders.keys())
            .filter(|a| !used.contains(a))
            .cloned()
            .collect();
        for addr in idle {
            if let Some(l) = self.leaders.remove(&addr) {
                l.stop.store(true, Ordering::Relaxed);
                l.wanted.1.notify_all();
            }
        }
    }

    /// Hands out up to `max` records, in chunks, waiting at most `wait` for
    /// the first; returns them and the partitions refused as their offsets
    /// are outside the log.
    pub(super) fn poll(&mut self, max: usize, wait: Duration) -> (Vec<Chunk>, Vec<i32>) {
        let deadline = Instant::now() + wait;
        let mut lost = Vec::new();
        while self.pending_records < max {
            let answer = if self.pending_records > 0 {
                self.rx.try_recv().ok()
            } else {
                let left = deadline.saturating_duration_since(Instant::now());
                self.rx.recv_timeout(left).ok()
            };
            let Some(answer) = answer else { break };
            self.take(answer, &mut lost);
        }
        let mut out = Vec::new();
        let mut room = max;
        while room > 0 {
            let Some(mut chunk) = self.pending.pop_front() else {
                break;
            };
            if chunk.len() > room {
                let rest = chunk.split_off(room);
                self.pending.push_front(rest);
            }
            room -= chunk.len();
            self.pending_records -= chunk.len();
            out.push(chunk);
        }
        (out, lost)
    }

    /// Takes one answer: its records into `pending`, its log ends, its
    /// refusals.
    fn take(&mut self, answer: Answer, lost: &mut Vec<i32>) {
        let current = |placed: &BTreeMap<i32, (String, u64)>, p: i32, g: u64| {
            placed.get(&p).is_some_and(|(_, now)| *now == g)
        };
        match answer {
            Answer::Fetched(parts) => {
                for part in parts {
                    if !current(&self.placed, part.partition, part.generation) {
                        continue;
                    }
                    self.taken.insert(part.partition, part.next);
                    if let Some(high) = part.high {
                        let end = LogEnd { high, at: part.at };
                        self.ends.insert(part.partition, end);
                    }
                    if let Some(chunk) = part.chunk {
                        self.pending_records += chunk.len();
                        self.pending.push_back(chunk);
                    }
                }
            }
            Answer::Refused {
                partition,
                generation,
                code,
            } if current(&self.placed, partition, generation) => {
                if code == OFFSET_OUT_OF_RANGE {
                    lost.push(partition);
                } else {
                    let topic = &self.topic;
                    let error = ResponseError::try_from_code(code).map(|e| e.to_string());
                    let error = error.unwrap_or_default();
                    let what = format!(
                        "fetching partition {partition} of {topic}: {error} (asking where it is now)"
                    );
                    self.troubles.push(what);
                    self.astray.insert(partition);
                }
            }
            Answer::Refused { .. } => {}
            Answer::Down { addr, error } => {
                self.troubles.push(format!("fetching from {addr}: {error}"));
                let on: Vec<i32> = (self.placed.iter())
                    .filter(|(_, (a, _))| *a == addr)
                    .map(|(p, _)| *p)
                    .collect();
                self.astray.extend(on);
            }
        }
    }

    /// What went wrong since the last call: leaders unreachable, fetches
    /// refused.
    pub(super) fn troubles(&mut self) -> Vec<String> {
        std::mem::take(&mut self.troubles)
    }

    /// The next offset of `partition` after the records taken from answers,
    /// once known (not while its start is still to look up).
    pub(super) fn position(&self, partition: i32) -> Option<i64> {
        self.taken.get(&partition).copied().filter(|o| *o >= 0)
    }

    /// Per partition, its log end as last reported.
    pub(super) fn log_ends(&self) -> &BTreeMap<i32, LogEnd> {
        &self.ends
    }

    /// Per partition whose records up to the log end last reported have
    /// all been handed out (`handed`: the next offset after them), when
    /// that log end was reported.
    pub(super) fn caught_up(&self, handed: &BTreeMap<i32, i64>) -> BTreeMap<i32, Instant> {
        (self.ends.iter())
            .filter(|(p, e)| {
                let next = handed.get(p).copied().or_else(|| self.position(**p));
                next.is_some_and(|n| n >= e.high)
                    && !self.pending.iter().any(|c| c.partition == **p)
            })
            .map(|(p, e)| (*p, e.at))
            .collect()
    }
}

impl Drop for WireFetch {
    fn drop(&mut self) {
        for l in self.leaders.values() {
            l.stop.store(true, Ordering::Relaxed);
            l.wanted.1.notify_all();
        }
    }
}
