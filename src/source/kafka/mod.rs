//! The Kafka source: one consumer per reader, assigned every partition of the
//! topic at the offsets the query's last checkpoint saved
//! ([`KafkaSource::connect`]), or in cluster mode the share of them Kafka's
//! group protocol gives the server ([`KafkaSource::connect_partitions`]),
//! learnt by a group member that reads nothing itself
//! ([`KafkaSource::membership`]).
//!
//! Offsets live in Runnel's store, committed with the results they produced,
//! so the consumer never commits to Kafka.
//!
//! Records are read one of two ways. On a plain connection (no TLS, SASL
//! or other client property) Runnel fetches them itself (`wire/`): a
//! thread per partition leader sends Fetch requests and turns each answer's
//! record batches into chunks, without librdkafka's work per record.
//! Otherwise (or with `own_fetch = false` in `runnel.toml`) librdkafka fetches them
//! and the source takes them thousands at a time from a queue its
//! partitions are all forwarded to (`fetch.rs`). Either way the consumer
//! answers the questions about the topic (its partitions and their leaders,
//! log ends) and rdkafka's own `poll` serves the statistics, errors and a
//! group member's rebalances.
//!
//! A partition is confirmed caught up when everything up to the log end its
//! leader last reported has been read and that leader answered lately: on
//! Runnel's own fetching, an answer within the confirmation's freshness
//! (leaders answer every few milliseconds); on librdkafka's, its statistics
//! (every [`STATS_INTERVAL_MS`]) with the leader heard from within
//! [`BROKER_FRESH_US`]. A stalled or unreachable broker therefore stops
//! confirming, and the window engine never takes its partitions for idle
//! (see [`crate::window::watermark`]). The consumer's context, which
//! receives the statistics, rebalances and client errors, is in
//! [`context`]; what a source reports of where it stands (offsets, lag,
//! caught-up partitions) and its handling of lost offsets, in
//! `progress.rs`; how it finds partitions added to its topic and where
//! their leaders are, in [`discover`].
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use std::sync::atomic::AtomicBool;
//! use std::time::Duration;
//! use runnel::source::kafka::{KafkaSource, Waiting};
//! use runnel::model::StartFrom;
//! let stop = AtomicBool::new(false);
//! # use runnel::connect::kafka::KafkaConn;
//! let mut src = KafkaSource::connect(&KafkaConn::new("127.0.0.1:9092"), "clicks", "runnel-q", StartFrom::Earliest,
//!                                    &BTreeMap::new(), Waiting::until(&stop)).unwrap();
//! for chunk in src.poll(10_000, Duration::from_millis(100)).unwrap() {
//!     println!("partition {}: {} records", chunk.partition, chunk.len());
//! }
//! ```

pub mod admin;
pub mod context;
pub mod discover;
mod fetch;
mod progress;
#[cfg(test)]
mod tests;
mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

pub use super::Chunk;
use super::ChunkSizes;
use crate::connect::kafka::KafkaConn;
use crate::error::{Error, Result};
use crate::model::{OnOffsetLoss, StartFrom};
pub use context::{BROKER_FRESH_US, STATS_INTERVAL_MS, SourceContext};
pub use discover::Layout;
use discover::{DISCOVER_EVERY, Discovery, layout_of};
use fetch::FetchQueue;
use wire::WireFetch;

fn start_offset(saved: Option<&i64>, start: StartFrom) -> Offset {
    match (saved, start) {
        (Some(o), _) => Offset::Offset(*o),
        (None, StartFrom::Earliest) => Offset::Beginning,
        (None, StartFrom::Latest) => Offset::End,
    }
}

/// How a source reads its records.
enum Fetch {
    /// In batches off a librdkafka queue.
    Queue(FetchQueue),
    /// With Runnel's own fetching.
    Wire(Box<WireFetch>),
}

/// A start as Runnel's own fetching takes it: an offset, or one to look up.
fn wire_offset(at: Offset) -> i64 {
    match at {
        Offset::Offset(o) => o,
        Offset::End => wire::LATEST,
        _ => wire::EARLIEST,
    }
}

/// How a source waits for its topic to appear: until `stop` is set,
/// telling `unreachable` since when no broker has answered (`None` once one
/// does).
#[derive(Clone, Copy)]
pub struct Waiting<'a> {
    /// Set to give up waiting.
    pub stop: &'a AtomicBool,
    /// Told of the brokers' reachability at each attempt.
    pub unreachable: &'a dyn Fn(Option<SystemTime>),
    /// Told, at each attempt the brokers answer without the topic, what
    /// is missing.
    pub missing: &'a dyn Fn(&str),
}

impl<'a> Waiting<'a> {
    /// Waits until `stop`, reporting nothing.
    pub fn until(stop: &'a AtomicBool) -> Self {
        Waiting {
            stop,
            unreachable: &|_| {},
            missing: &|_| {},
        }
    }
}

/// How long to wait for a broker's answer about partitions and log ends.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// The log end of every partition of `topic` now: where a query that starts
/// at `latest` begins, saved when it is created so that records produced
/// before its consumer is assigned are not skipped.
pub fn end_offsets(kafka: &KafkaConn, topic: &str) -> Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = kafka.create(
        &[("allow.auto.create.topics", "false")],
        DefaultConsumerContext,
    )?;
    let md = consumer.fetch_metadata(Some(topic), ASK_TIMEOUT)?;
    let partitions = layout_of(&md, topic).partitions;
    if partitions.is_empty() {
        return Err(Error::Execution(format!("topic {topic} does not exist")));
    }
    partitions
        .into_iter()
        .map(|p| Ok((p, consumer.fetch_watermarks(topic, p, ASK_TIMEOUT)?.1)))
        .collect()
}

/// A consumer reading every partition of one topic, or in a consumer group
/// the partitions the group assigns it.
pub struct KafkaSource {
    /// How records are read: in batches off librdkafka's queue (see
    /// [`fetch`]; closed before `consumer`, see `Drop`) or by Runnel's
    /// own fetching (see [`wire`]); `None` for a group member, which
    /// reads nothing.
    fetch: Option<Fetch>,
    /// Shared with `discovery`'s thread.
    consumer: Arc<BaseConsumer<SourceContext>>,
    topic: String,
    /// Reading every partition (not a group member): new partitions of the
    /// topic are picked up, looked for every `discover_every`.
    all_partitions: bool,
    discover_every: Duration,
    /// Started at the first poll.
    discovery: Option<Discovery>,
    /// When the brokers were last asked at once where partitions are.
    asked: Option<Instant>,
    start: StartFrom,
    on_offset_loss: OnOffsetLoss,
    /// Records skipped over because their offsets were lost.
    skipped: u64,
    /// Records that reached the consumer's own queue although `fetch`
    /// reads in batches: a partition not forwarded (the tests check none
    /// do).
    unforwarded: u64,
    partitions: Vec<i32>,
    offsets: BTreeMap<i32, i64>,
    /// Each partition's last chunk's size, its next one's starting room.
    sizes: ChunkSizes,
    /// Partitions of the topic.
    topic_partitions: usize,
    /// In a consumer group: the rebalance `partitions` came from.
    generation: u64,
}

impl KafkaSource {
    /// Connects, waits until the topic exists, and assigns all its partitions,
    /// resuming from `saved` offsets where known.
    pub fn connect(
        kafka: &KafkaConn,
        topic: &str,
        client_id: &str,
        start: StartFrom,
        saved: &BTreeMap<i32, i64>,
        waiting: Waiting,
    ) -> Result<Self> {
        let (consumer, layout) = open(kafka, topic, client_id, &[], waiting)?;
        let wire = kafka.wire_fetch().then_some(client_id);
        Self::assign(
            consumer,
            topic,
            &layout,
            layout.partitions.clone(),
            start,
            saved,
            wire,
        )
    }

    /// Connects, waits until the topic exists, and reads only `partitions`
    /// of it (a cluster member's share, see [`KafkaSource::membership`]),
    /// resuming from `saved` offsets where known. Partitions added to the
    /// topic later are not picked up: the group hands them out.
    pub fn connect_partitions(
        kafka: &KafkaConn,
        topic: &str,
        client_id: &str,
        start: StartFrom,
        partitions: &[i32],
        saved: &BTreeMap<i32, i64>,
        waiting: Waiting,
    ) -> Result<Self> {
        let (consumer, layout) = open(kafka, topic, client_id, &[], waiting)?;
        let wire = kafka.wire_fetch().then_some(client_id);
        let mut src = Self::assign(
            consumer,
            topic,
            &layout,
            partitions.to_vec(),
            start,
            saved,
            wire,
        )?;
        src.all_partitions = false;
        src.topic_partitions = layout.partitions.len();
        Ok(src)
    }

    /// The partitions read when they are a fixed share of the topic's
    /// ([`connect_partitions`](Self::connect_partitions)); `None` when
    /// every partition is read, or the group decides.
    pub fn share(&self) -> Option<&[i32]> {
        (!self.all_partitions && self.fetch.is_some()).then_some(&self.partitions[..])
    }

    /// Reads `partitions` of `topic` (laid out as `layout` says) with
    /// `consumer`, or with Runnel's own fetching if `wire` (its client id)
    /// is given, resuming from `saved` offsets where known; partitions
    /// added later are found by [`poll`](Self::poll).
    fn assign(
        consumer: BaseConsumer<SourceContext>,
        topic: &str,
        layout: &Layout,
        partitions: Vec<i32>,
        start: StartFrom,
        saved: &BTreeMap<i32, i64>,
        wire: Option<&str>,
    ) -> Result<Self> {
        let mut fetch = match wire {
            Some(client_id) => Fetch::Wire(Box::new(WireFetch::new(topic, client_id))),
            None => Fetch::Queue(FetchQueue::new(&consumer, topic)?),
        };
        let mut offsets = saved.clone();
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            if let Fetch::Queue(queue) = &mut fetch {
                queue.forward(&consumer, *p);
            }
            let mut at = start_offset(saved.get(p), start);
            // `latest` is the log end now, kept as an offset of its own so a
            // checkpoint saves it even before the partition gives a record.
            if at == Offset::End {
                match consumer.fetch_watermarks(topic, *p, ASK_TIMEOUT) {
                    Ok((_, high)) => {
                        offsets.insert(*p, high);
                        at = Offset::Offset(high);
                    }
                    Err(e) => tracing::warn!(
                        "kafka: log end of {topic}/{p} unknown ({e}); starting at the end when assigned"
                    ),
                }
            }
            match &mut fetch {
                Fetch::Wire(wire) => wire.place(*p, wire_offset(at), layout.leaders.get(p)),
                Fetch::Queue(_) => tpl.add_partition_offset(topic, *p, at)?,
            }
        }
        if let Fetch::Queue(_) = fetch {
            consumer.assign(&tpl)?;
        }
        Ok(KafkaSource {
            fetch: Some(fetch),
            consumer: Arc::new(consumer),
            topic: topic.to_string(),
            all_partitions: true,
            discover_every: DISCOVER_EVERY,
            discovery: None,
            asked: None,
            start,
            on_offset_loss: OnOffsetLoss::Fail,
            skipped: 0,
            unforwarded: 0,
            offsets,
            sizes: ChunkSizes::default(),
            topic_partitions: partitions.len(),
            partitions,
            generation: 0,
        })
    }

    /// Joins consumer group `group` on `topic` only to learn which
    /// partitions the group gives this member: they are assigned paused
    /// (see [`context`]), so nothing is fetched. [`poll`](Self::poll) it (it
    /// returns no records) and read the share with
    /// [`take_assignment`](Self::take_assignment). Nothing is committed to
    /// Kafka; offsets live with the state they produced.
    pub fn membership(
        kafka: &KafkaConn,
        topic: &str,
        group: &str,
        client_id: &str,
        waiting: Waiting,
    ) -> Result<Self> {
        let group_settings = [
            ("group.id", group),
            // A member that dies loses its partitions within seconds.
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "500"),
            ("partition.assignment.strategy", "range"),
        ];
        let (consumer, layout) = open(kafka, topic, client_id, &group_settings, waiting)?;
        consumer.subscribe(&[topic])?;
        Ok(KafkaSource {
            fetch: None,
            consumer: Arc::new(consumer),
            topic: topic.to_string(),
            all_partitions: false,
            discover_every: DISCOVER_EVERY,
            discovery: None,
            asked: None,
            // Nothing is read.
            start: StartFrom::Latest,
            on_offset_loss: OnOffsetLoss::Fail,
            skipped: 0,
            unforwarded: 0,
            offsets: BTreeMap::new(),
            sizes: ChunkSizes::default(),
            topic_partitions: layout.partitions.len(),
            partitions: Vec::new(),
            generation: 0,
        })
    }

    /// Number of partitions of the topic.
    pub fn topic_partitions(&self) -> usize {
        self.topic_partitions
    }

    /// The log end of every partition of the topic, asked of the brokers
    /// now; `None` when one does not answer within `timeout`.
    pub fn topic_log_ends(&self, timeout: Duration) -> Option<BTreeMap<i32, i64>> {
        // One request per leader for all the partitions (the offsets at
        // the "latest" time), not a round trip per partition.
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.topic_partitions as i32 {
            tpl.add_partition_offset(&self.topic, p, Offset::End).ok()?;
        }
        let ends = self.consumer.offsets_for_times(tpl, timeout).ok()?;
        (ends.elements().iter())
            .map(|e| match (e.error(), e.offset()) {
                (Ok(()), Offset::Offset(end)) => Some((e.partition(), end)),
                _ => None,
            })
            .collect()
    }

    /// In a consumer group: the newly assigned partitions, once after each
    /// rebalance.
    pub fn take_assignment(&mut self) -> Option<Vec<i32>> {
        let ctx = self.consumer.context();
        let g = ctx.generation.load(Ordering::SeqCst);
        if g == self.generation {
            return None;
        }
        self.generation = g;
        self.partitions = ctx
            .assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Some(self.partitions.clone())
    }

    /// The assigned partitions.
    pub fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    /// Assigns the partitions of `layout` (the topic's, as the brokers last
    /// told [`Discovery`]) not read yet, from their beginning: every record
    /// in them came after the query started reading the topic.
    fn assign_added(&mut self, layout: &Layout) -> Result<()> {
        let mut new = layout.partitions.clone();
        new.retain(|p| !self.partitions.contains(p));
        if new.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for p in &new {
            match &mut self.fetch {
                Some(Fetch::Wire(wire)) => {
                    wire.place(*p, wire::EARLIEST, layout.leaders.get(p));
                }
                Some(Fetch::Queue(queue)) => queue.forward(&self.consumer, *p),
                None => {}
            }
            tpl.add_partition_offset(&self.topic, *p, Offset::Beginning)?;
        }
        if !matches!(self.fetch, Some(Fetch::Wire(_))) {
            self.consumer.incremental_assign(&tpl)?;
        }
        tracing::info!(topic = %self.topic, partitions = ?new, "new partitions assigned");
        self.partitions.extend(&new);
        self.topic_partitions = self.partitions.len();
        Ok(())
    }

    /// Reads up to `max` records, waiting at most `wait` for the first one,
    /// grouped into chunks of one partition each (one per partition and
    /// poll off librdkafka's queue; one per record batch or more fetching
    /// with Runnel's own).
    pub fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Chunk>> {
        self.look_around()?;
        let mut chunks = Vec::new();
        match &self.fetch {
            None => {
                self.poll_consumer(&mut chunks, max, wait)?;
            }
            Some(Fetch::Wire(_)) => {
                // Statistics and errors: nothing else is on that queue.
                self.poll_consumer(&mut chunks, max, Duration::ZERO)?;
                let Some(Fetch::Wire(wire)) = &mut self.fetch else {
                    unreachable!("matched above")
                };
                let (mut got, lost) = wire.poll(max.saturating_sub(chunks.len()), wait);
                chunks.append(&mut got);
                for trouble in wire.troubles() {
                    self.consumer.context().report(trouble);
                }
                advance(&mut self.offsets, &chunks);
                if !lost.is_empty() {
                    self.on_offset_loss()?;
                }
                // Runnel's own fetching sizes each chunk from its answer.
                return Ok(chunks);
            }
            Some(Fetch::Queue(_)) => self.poll_queue(&mut chunks, max, wait)?,
        }
        // Room for the next poll's chunks of librdkafka's records.
        self.sizes.note(&chunks);
        Ok(chunks)
    }

    /// Takes what the brokers last said of the topic: partitions added
    /// (when reading every partition), and where Runnel's own fetching
    /// finds each partition's leader; asks again soon when a leader was
    /// lost.
    fn look_around(&mut self) -> Result<()> {
        let wire = matches!(self.fetch, Some(Fetch::Wire(_)));
        if !self.all_partitions && !wire {
            return Ok(());
        }
        let (consumer, topic, every) = (&self.consumer, &self.topic, self.discover_every);
        let discovery = (self.discovery)
            .get_or_insert_with(|| Discovery::start(consumer.clone(), topic, every));
        let layout = discovery.take();
        if let Some(layout) = &layout
            && self.all_partitions
        {
            self.assign_added(layout)?;
        }
        if let Some(Fetch::Wire(w)) = &mut self.fetch {
            if let Some(layout) = &layout {
                w.relocate(&layout.leaders);
            }
            if w.astray() && self.asked.is_none_or(|at| at.elapsed() >= wire::RETRY) {
                if let Some(d) = &self.discovery {
                    d.ask_now();
                }
                self.asked = Some(Instant::now());
            }
        }
        Ok(())
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        if let Some(Fetch::Queue(queue)) = self.fetch.take() {
            queue.close(&self.consumer);
        }
    }
}

/// Moves each partition's next offset past the last record of its chunk:
/// a map update per chunk instead of one per record.
fn advance(offsets: &mut BTreeMap<i32, i64>, chunks: &[Chunk]) {
    for c in chunks.iter().filter(|c| !c.is_empty()) {
        offsets.insert(c.partition, c.offset(c.len() - 1) + 1);
    }
}

/// The longest a source waits for one answer about its topic: what a stop
/// can wait for while the brokers are slow.
const ASK_AT_MOST: Duration = Duration::from_secs(8);

/// Creates a consumer and waits until `topic` exists; returns its layout.
fn open(
    kafka: &KafkaConn,
    topic: &str,
    client_id: &str,
    extra: &[(&str, &str)],
    waiting: Waiting,
) -> Result<(BaseConsumer<SourceContext>, Layout)> {
    let stats_interval = STATS_INTERVAL_MS.to_string();
    let mut settings = vec![
        ("group.id", client_id),
        ("client.id", client_id),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("enable.partition.eof", "false"),
        // A saved offset outside the log is reported, never silently
        // reset: see KafkaSource::on_offset_loss.
        ("auto.offset.reset", "error"),
        ("fetch.wait.max.ms", "10"),
        // Bound what is fetched ahead of processing (one queue shared by
        // all partitions): when input outruns the engine, fetching pauses
        // instead of memory growing. 16 MiB keeps several fetch responses
        // in flight; 4 MiB left the reader waiting on fetches.
        ("queued.max.messages.kbytes", "16384"),
        // Resume soon after the engine drains it: librdkafka's default
        // waits a whole second, which left the consumer idle most of the
        // time when catching up (34k records/s instead of 1M+).
        ("fetch.queue.backoff.ms", "5"),
        // Log ends and broker liveness, for telling caught up from stalled.
        ("statistics.interval.ms", &stats_interval),
        ("allow.auto.create.topics", "false"),
    ];
    settings.extend_from_slice(extra);
    let consumer: BaseConsumer<SourceContext> =
        kafka.create(&settings, SourceContext::new(topic))?;
    let brokers = &kafka.brokers;
    // A broker that answers slowly (stalled, overloaded, far away) still
    // answers: each unanswered ask waits twice as long as the last, up to
    // `ASK_AT_MOST`, so a query started during a stall starts once one
    // answer can arrive instead of asking again and again for ever.
    let mut ask = Duration::from_secs(2);
    let layout = loop {
        if waiting.stop.load(Ordering::Relaxed) {
            return Err(Error::Execution("stopped before the topic appeared".into()));
        }
        let ctx = consumer.context();
        let answer = consumer.fetch_metadata(Some(topic), ask);
        if answer.is_err() {
            ask = (ask * 2).min(ASK_AT_MOST);
        }
        ctx.set_reachable(answer.is_ok());
        (waiting.unreachable)(*ctx.down_since.lock().unwrap_or_else(|p| p.into_inner()));
        match answer {
            Ok(md) => {
                let layout = layout_of(&md, topic);
                if !layout.partitions.is_empty() {
                    break layout;
                }
                (waiting.missing)(&format!(
                    "topic '{topic}' does not exist on the brokers {brokers}; the query waits for it"
                ));
            }
            Err(e) if ctx.should_log(&e.to_string()) => {
                tracing::warn!("kafka: asking {brokers} for topic {topic}: {e}");
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    Ok((consumer, layout))
}
