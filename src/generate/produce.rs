//! Where generated records go: a Kafka topic ([`produce`], with delivery
//! counting and rate pacing) or lines on any writer ([`write_lines`]).

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use super::{GenKind, Generator};

/// Current wall-clock time in epoch milliseconds, the event time of
/// generated records.
fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Keeps a target rate by checking the schedule once per chunk of records
/// (about every 10 ms), so high rates stay accurate without a sleep per record.
struct Pacer {
    rate: u64,
    chunk: u64,
    start: Instant,
}

impl Pacer {
    /// `None` (and `Some(0)`) mean no limit.
    fn new(rate: Option<u64>) -> Option<Self> {
        let rate = rate.filter(|&r| r > 0)?;
        Some(Self {
            rate,
            chunk: (rate / 100).max(1),
            start: Instant::now(),
        })
    }

    /// How long to wait before record number `n` (counted from 0) is due,
    /// checked only at chunk boundaries. A generator that fell behind gets no
    /// wait until it has caught up, so the average rate holds.
    fn wait_before(&self, n: u64) -> Option<Duration> {
        if !n.is_multiple_of(self.chunk) {
            return None;
        }
        let due_ns = u128::from(n) * 1_000_000_000 / u128::from(self.rate);
        let due = Duration::from_nanos(u64::try_from(due_ns).unwrap_or(u64::MAX));
        due.checked_sub(self.start.elapsed())
            .filter(|wait| !wait.is_zero())
    }
}

/// Options for producing generated records to Kafka.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    /// Kafka bootstrap servers (`host:port[,host:port...]`).
    pub brokers: String,
    /// Topic to produce to; it must exist unless the brokers create topics
    /// automatically.
    pub topic: String,
    /// Target records per second; `None` (or `Some(0)`) = as fast as possible.
    pub rate: Option<u64>,
    /// Records to produce; `None` = until `stop` is set.
    pub count: Option<u64>,
    /// Seed of the generator.
    pub seed: u64,
    /// `Some(n)`: spread records round-robin over partitions `0..n`.
    /// `None`: let the producer's partitioner pick by key (see
    /// [`Generator::key`]).
    pub partitions: Option<i32>,
}

/// Errors of [`produce`].
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// The options cannot work (empty topic, zero partitions...).
    #[error("invalid generator options: {0}")]
    InvalidOptions(String),
    /// Creating the producer, enqueuing or flushing failed.
    #[error("kafka error: {0}")]
    Kafka(#[from] KafkaError),
    /// Some records were not delivered; production stops at the first failure
    /// because the rest would most likely fail the same way.
    #[error("{failed} record(s) failed delivery ({delivered} delivered): {source}")]
    Delivery {
        /// Records acknowledged by the brokers.
        delivered: u64,
        /// Records that could not be delivered.
        failed: u64,
        /// The first delivery error.
        source: KafkaError,
    },
    /// The blocking producer task panicked or was cancelled.
    #[error("generator task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Counts delivery reports; they are served on the producing thread by
/// `poll`/`flush`, but the context must be shareable, hence atomics.
#[derive(Default)]
struct CountingContext {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<KafkaError>>,
}

impl ClientContext for CountingContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error while generating records");
    }
}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self
                    .first_error
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                first.get_or_insert_with(|| error.clone());
            }
        }
    }
}

/// How long the final flush may wait for outstanding deliveries.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Produces generated records; returns how many were delivered.
///
/// Each record's event time (and Kafka timestamp) is the wall clock at the
/// time it is generated. Production ends after `opts.count` records, or
/// when `stop` becomes true, or at the first delivery failure; outstanding
/// records are then flushed. The work runs on a blocking thread because the
/// producer is driven by polling.
///
/// ```no_run
/// # async fn run() -> Result<(), runnel::generate::GenError> {
/// use runnel::generate::{produce, GenKind, ProduceOptions};
///
/// let opts = ProduceOptions {
///     brokers: "localhost:9092".into(),
///     topic: "impressions".into(),
///     rate: Some(50_000),
///     count: Some(1_000_000),
///     seed: 1,
///     partitions: None,
/// };
/// let delivered = produce(GenKind::Impressions, &opts, None).await?;
/// # let _ = delivered;
/// # Ok(())
/// # }
/// ```
pub async fn produce(
    kind: GenKind,
    opts: &ProduceOptions,
    stop: Option<Arc<AtomicBool>>,
) -> Result<u64, GenError> {
    if opts.topic.is_empty() {
        return Err(GenError::InvalidOptions("the topic name is empty".into()));
    }
    if let Some(n) = opts.partitions
        && n <= 0
    {
        return Err(GenError::InvalidOptions(format!(
            "partition count must be positive, got {n}"
        )));
    }
    let opts = opts.clone();
    tokio::task::spawn_blocking(move || produce_blocking(kind, &opts, stop.as_deref())).await?
}

fn produce_blocking(
    kind: GenKind,
    opts: &ProduceOptions,
    stop: Option<&AtomicBool>,
) -> Result<u64, GenError> {
    let producer: BaseProducer<CountingContext> = ClientConfig::new()
        .set("bootstrap.servers", &opts.brokers)
        .set("client.id", "runnel-gen")
        // Throughput over latency: short linger so batches fill, large batches
        // and a deep local queue so the generator rarely waits on the broker.
        .set("linger.ms", "5")
        .set("batch.num.messages", "100000")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(CountingContext::default())?;

    let mut generator = Generator::new(kind, opts.seed);
    let pacer = Pacer::new(opts.rate);
    let mut payload = Vec::with_capacity(512);
    let mut sent: u64 = 0;

    while opts.count.is_none_or(|count| sent < count) {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            break;
        }
        if let Some(wait) = pacer.as_ref().and_then(|p| p.wait_before(sent)) {
            // Serve delivery reports while waiting instead of sleeping.
            producer.poll(wait);
        }
        if producer.context().failed.load(Ordering::Relaxed) > 0 {
            break;
        }

        let ts_ms = now_ms();
        payload.clear();
        generator.write_record(ts_ms, &mut payload);
        let mut record = BaseRecord::to(&opts.topic)
            .payload(&payload[..])
            .key(generator.key())
            .timestamp(ts_ms);
        if let Some(n) = opts.partitions {
            record = record.partition((sent % n as u64) as i32);
        }
        crate::connect::kafka::send_waiting(&producer, record)?;
        sent += 1;
        if sent.is_multiple_of(64) {
            producer.poll(Duration::ZERO);
        }
    }

    producer.flush(FLUSH_TIMEOUT)?;
    let context = producer.context();
    let delivered = context.delivered.load(Ordering::Relaxed);
    let failed = context.failed.load(Ordering::Relaxed);
    let first_error = context
        .first_error
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    match first_error {
        Some(source) if failed > 0 => Err(GenError::Delivery {
            delivered,
            failed,
            source,
        }),
        _ => Ok(delivered),
    }
}

/// Size at which [`write_lines`] hands its buffer to the writer.
const LINE_BUFFER: usize = 64 * 1024;

/// Writes generated records as lines to any writer (for `runnel gen ... --brokers -` / stdout use).
///
/// Records get the wall clock as event time and each is followed by `\n`.
/// Output is buffered internally and flushed whenever the rate limit makes
/// the generator wait, so rate-limited output shows up promptly. `rate` is in
/// records per second (`None` or `Some(0)` = unlimited), `count = None` runs
/// until the writer fails (for example with a broken pipe, which is returned
/// as an error). Returns the number of lines written.
///
/// ```
/// use runnel::generate::{write_lines, GenKind};
///
/// let mut out = Vec::new();
/// let n = write_lines(GenKind::AccessLog, &mut out, None, Some(3), 7).unwrap();
/// assert_eq!(n, 3);
/// assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 3);
/// ```
pub fn write_lines(
    kind: GenKind,
    w: &mut dyn Write,
    rate: Option<u64>,
    count: Option<u64>,
    seed: u64,
) -> io::Result<u64> {
    let mut generator = Generator::new(kind, seed);
    let pacer = Pacer::new(rate);
    let mut buf = Vec::with_capacity(LINE_BUFFER + 1024);
    let mut written: u64 = 0;

    while count.is_none_or(|c| written < c) {
        if let Some(wait) = pacer.as_ref().and_then(|p| p.wait_before(written)) {
            if !buf.is_empty() {
                w.write_all(&buf)?;
                buf.clear();
            }
            w.flush()?;
            std::thread::sleep(wait);
        }
        generator.write_record(now_ms(), &mut buf);
        buf.push(b'\n');
        written += 1;
        if buf.len() >= LINE_BUFFER {
            w.write_all(&buf)?;
            buf.clear();
        }
    }
    w.write_all(&buf)?;
    w.flush()?;
    Ok(written)
}
