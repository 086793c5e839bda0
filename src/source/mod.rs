//! Sources.
//!
//! Where Runnel's input records come from. [`kafka`] reads a topic's
//! partitions for a query, [`socket`] reads newline-delimited records from a
//! TCP server, and [`file`](mod@file) reads a file's lines and follows it as it grows.
//! [`Source`] picks one of them from a stream's `source` option, and
//! [`prefetch`] reads it on a thread of its own, one poll ahead of the query.
//! (The producers of test records, `runnel gen`, are in `generate`.)

pub mod file;
pub mod kafka;
pub mod prefetch;
pub mod socket;
pub mod stats;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::connect::kafka::KafkaConn;
use crate::error::{Error, Result};
use crate::model::{SourceKind, StartFrom, StreamDef};
use file::FileSource;
use kafka::{KafkaSource, Waiting};
use socket::SocketSource;

/// Consecutive records of one partition, payloads stored back to back.
#[derive(Debug, Default)]
pub struct Chunk {
    /// Partition (always 0 for sockets and files).
    pub partition: i32,
    data: Vec<u8>,
    ends: Vec<usize>,
    /// Offset of the first record.
    pub first_offset: i64,
    /// Per record, its time in the log (Kafka's message timestamp, ms);
    /// empty for sources without one.
    pub log_times: Vec<i64>,
    /// Per record, its offset, once one is not the previous plus one (a
    /// Kafka partition's offsets skip transaction markers and compacted
    /// records; a file's are byte positions); empty while record `i` is at
    /// `first_offset + i`.
    pub offsets: Vec<i64>,
}

impl Chunk {
    /// An empty chunk of `partition` whose first record will be at `first_offset`.
    pub fn new(partition: i32, first_offset: i64) -> Self {
        Chunk {
            partition,
            first_offset,
            ..Default::default()
        }
    }

    /// Appends one record's payload.
    pub fn push(&mut self, payload: &[u8]) {
        self.data.extend_from_slice(payload);
        self.ends.push(self.data.len());
    }

    /// Appends one record at `offset` with its time in the log.
    pub fn push_logged(&mut self, payload: &[u8], offset: i64, log_time: i64) {
        self.push_at(payload, offset);
        self.log_times.push(log_time);
    }

    /// Appends one record at `offset` (see [`push`](Self::push)): the
    /// offsets are listed only from the first that skips.
    pub fn push_at(&mut self, payload: &[u8], offset: i64) {
        let i = self.len() as i64;
        if self.offsets.is_empty() && offset != self.first_offset + i {
            self.offsets.extend((0..i).map(|k| self.first_offset + k));
        }
        if !self.offsets.is_empty() {
            self.offsets.push(offset);
        }
        self.push(payload);
    }

    /// Makes room for `records` more records of `bytes` bytes in all.
    pub fn reserve(&mut self, bytes: usize, records: usize) {
        self.data.reserve(bytes);
        self.ends.reserve(records);
        self.log_times.reserve(records);
    }

    /// Splits off the records from `at` on into a chunk of their own.
    pub fn split_off(&mut self, at: usize) -> Chunk {
        let first_offset = self.offset(at);
        let byte = at.checked_sub(1).map_or(0, |i| self.ends[i]);
        let split = |v: &mut Vec<i64>| {
            if v.len() > at {
                v.split_off(at)
            } else {
                Vec::new()
            }
        };
        Chunk {
            partition: self.partition,
            first_offset,
            log_times: split(&mut self.log_times),
            offsets: split(&mut self.offsets),
            data: self.data.split_off(byte),
            ends: (self.ends.split_off(at).into_iter())
                .map(|e| e - byte)
                .collect(),
        }
    }

    /// The offset of record `i`.
    pub fn offset(&self, i: usize) -> i64 {
        match self.offsets.get(i) {
            Some(o) => *o,
            None => self.first_offset + i as i64,
        }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when the chunk holds no record.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The payloads, in partition order.
    pub fn payloads(&self) -> Vec<&[u8]> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&e| {
                let s = &self.data[start..e];
                start = e;
                s
            })
            .collect()
    }
}

/// Most bytes a socket or file source buffers for one line: a longer line
/// is emitted in pieces (which then usually fail to decode as bad records).
pub const MAX_LINE: usize = 16 << 20;

/// The size of each partition's last chunk. A source starts a partition's
/// next chunk with room for an eighth more records and bytes (record
/// lengths vary a little from poll to poll), so it fills without regrowing
/// and copying its buffers.
#[derive(Debug, Default)]
pub(crate) struct ChunkSizes(BTreeMap<i32, Room>);

/// How many records, bytes, listed offsets and log times a chunk held.
#[derive(Debug, Default, Clone, Copy)]
struct Room {
    records: usize,
    bytes: usize,
    offsets: usize,
    log_times: usize,
}

impl ChunkSizes {
    /// An empty chunk of `partition` whose first record will be at
    /// `first_offset`, with room for about as much as its last one.
    pub(crate) fn chunk(&self, partition: i32, first_offset: i64) -> Chunk {
        let room = self.0.get(&partition).copied().unwrap_or_default();
        let more = |n: usize| n + n / 8;
        let mut c = Chunk::new(partition, first_offset);
        c.data.reserve(more(room.bytes));
        c.ends.reserve(more(room.records));
        c.offsets.reserve(more(room.offsets));
        c.log_times.reserve(more(room.log_times));
        c
    }

    /// Notes the sizes of the chunks a poll returns.
    pub(crate) fn note(&mut self, chunks: &[Chunk]) {
        for c in chunks {
            let room = Room {
                records: c.ends.len(),
                bytes: c.data.len(),
                offsets: c.offsets.len(),
                log_times: c.log_times.len(),
            };
            self.0.insert(c.partition, room);
        }
    }
}

/// Splits complete lines off the front of `buf`, pushing each (without its
/// `\n` or `\r\n`) to `chunk` until it holds `max` records; returns the bytes
/// consumed. A trailing partial line stays in `buf` for the caller. With
/// `at`, the position of `buf`'s first byte, each line's offset is its
/// position (a file's); without, lines are numbered on (a socket's).
fn take_lines(buf: &[u8], chunk: &mut Chunk, max: usize, at: Option<i64>) -> usize {
    let mut start = 0;
    while chunk.len() < max {
        let Some(nl) = memchr::memchr(b'\n', &buf[start..]) else {
            break;
        };
        let line = &buf[start..start + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match at {
            Some(at) => chunk.push_at(line, at + start as i64),
            None => chunk.push(line),
        }
        start += nl + 1;
    }
    start
}

/// A query's input: one of the source kinds a stream can declare.
pub enum Source {
    /// Every partition of a Kafka topic.
    Kafka(KafkaSource),
    /// Lines from a TCP server.
    Socket(SocketSource),
    /// Lines of a file, followed as it grows.
    File(FileSource),
}

impl Source {
    /// Opens the source `stream` declares, resuming from `saved` offsets
    /// where the source can replay (Kafka, files). Waits as `waiting` says
    /// until a Kafka topic or a file exists; a socket connects (and
    /// reconnects) while polling.
    pub fn connect(
        stream: &StreamDef,
        kafka: &KafkaConn,
        client_id: &str,
        start: StartFrom,
        saved: &BTreeMap<i32, i64>,
        waiting: Waiting,
    ) -> Result<Self> {
        let opt = |k: &str| {
            stream.options.get(k).cloned().ok_or_else(|| {
                Error::Execution(format!("stream {} has no '{k}' option", stream.name))
            })
        };
        Ok(match stream.source {
            SourceKind::Kafka => {
                let mut src =
                    KafkaSource::connect(kafka, &stream.topic, client_id, start, saved, waiting)?;
                src.set_on_offset_loss(stream.on_offset_loss);
                Source::Kafka(src)
            }
            SourceKind::Socket => {
                let port = opt("port")?;
                let port = port
                    .parse()
                    .map_err(|_| Error::Execution(format!("bad port '{port}'")))?;
                Source::Socket(SocketSource::connect(&opt("host")?, port))
            }
            SourceKind::File => Source::File(FileSource::open(
                opt("path")?.as_ref(),
                start,
                saved,
                waiting.stop,
            )?),
        })
    }

    /// Reads up to `max` records, waiting at most `wait` for the first one,
    /// grouped into per-partition chunks in arrival order.
    pub fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Chunk>> {
        match self {
            Source::Kafka(s) => s.poll(max, wait),
            Source::Socket(s) => s.poll(max, wait),
            Source::File(s) => s.poll(max, wait),
        }
    }

    /// The fixed share of a topic's partitions a cluster member reads
    /// (see [`KafkaSource::share`]); `None` for every other source.
    pub fn share(&self) -> Option<Vec<i32>> {
        match self {
            Source::Kafka(s) => s.share().map(<[i32]>::to_vec),
            _ => None,
        }
    }

    /// The partitions records come from.
    pub fn partitions(&self) -> Vec<i32> {
        match self {
            Source::Kafka(s) => s.partitions().to_vec(),
            Source::Socket(_) | Source::File(_) => vec![0],
        }
    }

    /// Next offset to read per partition.
    pub fn offsets(&self) -> &BTreeMap<i32, i64> {
        match self {
            Source::Kafka(s) => s.offsets(),
            Source::Socket(s) => s.offsets(),
            Source::File(s) => s.offsets(),
        }
    }

    /// How far the source is known to be caught up, as of now.
    pub fn progress(&self) -> Progress {
        match self {
            Source::Kafka(s) => s.progress(),
            // A file read to its end, or a socket with nothing buffered, has
            // nothing more to give until new lines come.
            Source::Socket(_) | Source::File(_) => Progress {
                partitions: vec![0],
                caught_up: BTreeMap::from([(0, Instant::now())]),
                ..Progress::default()
            },
        }
    }
}

/// How far a source's partitions are known to be read.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The partitions read.
    pub partitions: Vec<i32>,
    /// Records not yet read per partition, where known.
    pub lag: Vec<(i32, i64)>,
    /// Partitions confirmed caught up with a live broker's log end, and
    /// when that was last confirmed.
    pub caught_up: BTreeMap<i32, Instant>,
    /// Since when no broker has been reachable.
    pub unreachable_since: Option<std::time::SystemTime>,
    /// Records skipped because their offsets were lost (on_offset_loss).
    pub skipped: u64,
    /// Log end (high watermark) per partition, where known.
    pub log_ends: BTreeMap<i32, i64>,
    /// The Kafka client's latest errors and warnings, as logged (once per
    /// kind every 30 s), oldest first.
    pub client_errors: Vec<(std::time::SystemTime, String)>,
}

/// A confirmation that a partition is caught up counts for this long: a
/// live broker confirms several times a second, so a stalled one stops
/// counting within about a second.
pub const CONFIRMATION_FRESH: Duration = Duration::from_millis(600);

impl Progress {
    /// Whether `partition` was confirmed caught up within
    /// [`CONFIRMATION_FRESH`].
    pub fn is_caught_up(&self, partition: i32) -> bool {
        self.caught_up
            .get(&partition)
            .is_some_and(|at| at.elapsed() <= CONFIRMATION_FRESH)
    }
}
