//! `runnel gen`: built-in producers of deterministic, seeded test records
//! for Kafka topics or standard output.
//!
//! Three record shapes are available, each modelled on a classic streaming
//! analytics workload:
//!
//! * [`GenKind::Impressions`]: ad-network impression logs, one compact JSON
//!   object per record (about 140 bytes):
//!   `{"ts":1700000000000,"publisher":"publisher_42","advertiser":"advertiser_7","website":"website_512.com","geo":"FR","bid":0.318274,"cookie":"cookie_90125"}`.
//!   `geo` is one of [`GEOS`] (including `"unknown"`, for unresolved
//!   locations), `bid` is in `[0, 1)` and always written with a decimal point.
//! * [`GenKind::Activity`]: user activity for "popular users" queries:
//!   `{"ts":1700000000000,"user_id":"user_23711","activity":"profile.view"}`.
//!   Users follow a Zipf-like distribution (a few users get most of the
//!   activity); `activity` is one of [`ACTIVITIES`].
//! * [`GenKind::AccessLog`]: web server access logs as plain text lines in the
//!   Apache combined log format:
//!   `66.249.66.1 - - [14/Nov/2023:22:13:20 +0000] "GET /products HTTP/1.1" 200 23811 "-" "Mozilla/5.0 (...)"`.
//!   A few client IPs and endpoints are hot, most responses are `200` with
//!   some `304`, `404`, `401`, `500` and `503`. Times are written in UTC.
//!
//! A [`Generator`] is deterministic: the same kind and seed, given the same
//! event times, always writes the same bytes (on a given platform and build),
//! so benchmark inputs are reproducible. Records are written into a
//! caller-owned, reusable buffer without building intermediate JSON values,
//! which keeps the generator far faster than any broker it feeds.
//!
//! [`produce`] sends records to a Kafka topic and [`write_lines`] writes them
//! as newline-separated lines to any writer (standard output, a file).
//!
//! ```
//! use runnel::generate::{GenKind, Generator};
//!
//! let mut generator = Generator::new(GenKind::Impressions, 42);
//! let mut buf = Vec::new();
//! generator.write_record(1_700_000_000_000, &mut buf);
//! let record: serde_json::Value = serde_json::from_slice(&buf).unwrap();
//! assert_eq!(record["ts"], 1_700_000_000_000_i64);
//! assert!(record["publisher"].as_str().unwrap().starts_with("publisher_"));
//!
//! // The same seed reproduces the same record.
//! let mut again = Vec::new();
//! Generator::new(GenKind::Impressions, 42).write_record(1_700_000_000_000, &mut again);
//! assert_eq!(buf, again);
//! ```

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

/// Which built-in generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GenKind {
    /// Ad-network impressions as JSON (`ts`, `publisher`, `advertiser`,
    /// `website`, `geo`, `bid`, `cookie`).
    Impressions,
    /// User activity as JSON (`ts`, `user_id`, `activity`), with skewed users.
    Activity,
    /// Apache combined log format text lines.
    AccessLog,
}

/// Number of distinct publishers (`publisher_0` .. `publisher_99`).
pub const NUM_PUBLISHERS: u32 = 100;
/// Number of distinct advertisers (`advertiser_0` .. `advertiser_49`).
pub const NUM_ADVERTISERS: u32 = 50;
/// Number of distinct websites (`website_0.com` .. `website_999.com`).
pub const NUM_WEBSITES: u32 = 1_000;
/// Number of distinct cookies (`cookie_0` .. `cookie_999999`).
pub const NUM_COOKIES: u32 = 1_000_000;

/// Geos of impressions; `"unknown"` stands for a location that could not be
/// resolved, which queries typically filter out.
pub const GEOS: [&str; 20] = [
    "US", "UK", "FR", "DE", "ES", "IT", "NL", "BE", "SE", "NO", "PL", "BR", "CA", "MX", "IN", "JP",
    "CN", "AU", "ZA", "unknown",
];

/// Activity types of [`GenKind::Activity`] records. A popularity score is
/// commonly derived from them: `profile.view` = 1, `profile.picture.like` = 2,
/// `message.private` = 3.
pub const ACTIVITIES: [&str; 3] = ["profile.picture.like", "profile.view", "message.private"];

/// Number of distinct users of [`GenKind::Activity`] records.
pub const NUM_USERS: u64 = 100_000;
/// Smallest user number: user ids are `user_1000` .. `user_100999`.
pub const FIRST_USER: u64 = 1_000;

/// Client IPs that send a large share of access-log traffic (crawlers,
/// monitoring, a busy proxy), so "top IPs" queries have clear winners.
const HOT_IPS: [&str; 5] = [
    "66.249.66.1",
    "157.55.39.200",
    "198.51.100.23",
    "203.0.113.54",
    "192.0.2.147",
];
/// User agent index used by each hot IP, so a crawler always looks like one.
const HOT_IP_AGENTS: [usize; 5] = [6, 7, 5, 0, 3];
/// Share of access-log requests coming from [`HOT_IPS`], in per mille.
const HOT_IP_PER_MILLE: u32 = 300;
/// Number of ordinary clients, each with a stable IP and user agent.
const NUM_CLIENTS: u64 = 50_000;

/// Method, path and typical response size of each endpoint, most popular
/// first: endpoints are picked with a Zipf-like skew over this order.
const ENDPOINTS: [(&str, &str, u32); 16] = [
    ("GET", "/", 7_800),
    ("GET", "/products", 24_000),
    ("GET", "/js/app.js", 96_000),
    ("GET", "/css/site.css", 18_000),
    ("GET", "/images/logo.png", 12_400),
    ("GET", "/search", 15_000),
    ("GET", "/product/detail", 21_000),
    ("GET", "/api/v1/products", 3_200),
    ("POST", "/api/v1/cart", 450),
    ("GET", "/cart", 9_600),
    ("POST", "/login", 1_200),
    ("GET", "/index.html", 7_800),
    ("POST", "/api/v1/checkout", 820),
    ("GET", "/about.html", 5_400),
    ("GET", "/favicon.ico", 1_150),
    ("GET", "/robots.txt", 68),
];

/// Referers of requests that have one (the rest send `-`).
const REFERERS: [&str; 6] = [
    "https://www.google.com/",
    "https://www.bing.com/search?q=runnel+shop",
    "https://duckduckgo.com/",
    "https://news.ycombinator.com/",
    "https://t.co/x7Qm2pLk",
    "https://shop.example.com/products",
];
/// Share of access-log requests with a referer, in per mille.
const REFERER_PER_MILLE: u32 = 450;

/// User agents; ordinary clients use indexes `0..ORDINARY_AGENTS`, the rest
/// are crawlers used only by hot IPs.
const AGENTS: [&str; 8] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "curl/8.5.0",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
];
const ORDINARY_AGENTS: u64 = 6;

/// A deterministic record generator of one [`GenKind`].
///
/// Each call to [`Generator::write_record`] draws the next record from a
/// seeded [`SmallRng`], so a generator replays the same sequence for the same
/// seed and event times.
pub struct Generator {
    kind: GenKind,
    rng: SmallRng,
    written: u64,
    /// Partitioning key of the last record (see [`Generator::key`]).
    key: Vec<u8>,
    /// Access-log timestamps change once per second while records come much
    /// faster, so the formatted time of the last second is reused.
    clf_second: i64,
    clf_time: Vec<u8>,
}

impl Generator {
    /// Creates a generator of `kind` whose output is fully determined by `seed`.
    pub fn new(kind: GenKind, seed: u64) -> Self {
        Self {
            kind,
            rng: SmallRng::seed_from_u64(seed),
            written: 0,
            key: Vec::with_capacity(32),
            clf_second: i64::MIN,
            clf_time: Vec::with_capacity(32),
        }
    }

    /// The kind of records this generator writes.
    pub fn kind(&self) -> GenKind {
        self.kind
    }

    /// How many records this generator has written so far.
    pub fn records_written(&self) -> u64 {
        self.written
    }

    /// The natural partitioning key of the last record written: the cookie of
    /// an impression, the user id of an activity, the client IP of an access
    /// log line. Empty before the first record.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// Appends one record (no trailing newline) with event time `ts_ms` to `out`.
    ///
    /// Existing contents of `out` are kept, so several records can be batched
    /// into one buffer; clear it between records to reuse its allocation.
    pub fn write_record(&mut self, ts_ms: i64, out: &mut Vec<u8>) {
        match self.kind {
            GenKind::Impressions => self.write_impression(ts_ms, out),
            GenKind::Activity => self.write_activity(ts_ms, out),
            GenKind::AccessLog => self.write_access_log(ts_ms, out),
        }
        self.written += 1;
    }

    fn write_impression(&mut self, ts_ms: i64, out: &mut Vec<u8>) {
        let publisher = self.rng.random_range(0..NUM_PUBLISHERS);
        let advertiser = self.rng.random_range(0..NUM_ADVERTISERS);
        let website = self.rng.random_range(0..NUM_WEBSITES);
        let geo = GEOS[self.rng.random_range(0..GEOS.len())];
        let bid_micros = self.rng.random_range(0..1_000_000u32);
        let cookie = self.rng.random_range(0..NUM_COOKIES);

        self.key.clear();
        self.key.extend_from_slice(b"cookie_");
        push_u64(&mut self.key, u64::from(cookie));

        out.extend_from_slice(b"{\"ts\":");
        push_i64(out, ts_ms);
        out.extend_from_slice(b",\"publisher\":\"publisher_");
        push_u64(out, u64::from(publisher));
        out.extend_from_slice(b"\",\"advertiser\":\"advertiser_");
        push_u64(out, u64::from(advertiser));
        out.extend_from_slice(b"\",\"website\":\"website_");
        push_u64(out, u64::from(website));
        out.extend_from_slice(b".com\",\"geo\":\"");
        out.extend_from_slice(geo.as_bytes());
        out.extend_from_slice(b"\",\"bid\":");
        push_micros_fraction(out, bid_micros);
        out.extend_from_slice(b",\"cookie\":\"");
        out.extend_from_slice(&self.key);
        out.extend_from_slice(b"\"}");
    }

    fn write_activity(&mut self, ts_ms: i64, out: &mut Vec<u8>) {
        let rank = zipf_rank(&mut self.rng, NUM_USERS);
        // Scatter popularity ranks over the id space so the popular users are
        // not simply the smallest ids; 7919 is prime and coprime with
        // NUM_USERS, which makes this a permutation.
        let user = FIRST_USER + (rank * 7_919 + 4_271) % NUM_USERS;
        let activity = ACTIVITIES[self.rng.random_range(0..ACTIVITIES.len())];

        self.key.clear();
        self.key.extend_from_slice(b"user_");
        push_u64(&mut self.key, user);

        out.extend_from_slice(b"{\"ts\":");
        push_i64(out, ts_ms);
        out.extend_from_slice(b",\"user_id\":\"");
        out.extend_from_slice(&self.key);
        out.extend_from_slice(b"\",\"activity\":\"");
        out.extend_from_slice(activity.as_bytes());
        out.extend_from_slice(b"\"}");
    }

    fn write_access_log(&mut self, ts_ms: i64, out: &mut Vec<u8>) {
        // Client: a hot IP, or one of many ordinary clients whose IP and user
        // agent are derived from the client number so they stay consistent.
        self.key.clear();
        let agent = if self.rng.random_range(0..1_000u32) < HOT_IP_PER_MILLE {
            let hot = self.rng.random_range(0..HOT_IPS.len());
            self.key.extend_from_slice(HOT_IPS[hot].as_bytes());
            AGENTS[HOT_IP_AGENTS[hot]]
        } else {
            let client = self.rng.random_range(0..NUM_CLIENTS);
            let h = mix64(client ^ 0x5EED_1F00_u64);
            let mut first = 11 + (h % 212) as u8;
            if first == 127 {
                first = 128;
            }
            push_u64(&mut self.key, u64::from(first));
            for octet in [(h >> 8) as u8, (h >> 16) as u8, 1 + ((h >> 24) % 254) as u8] {
                self.key.push(b'.');
                push_u64(&mut self.key, u64::from(octet));
            }
            AGENTS[((h >> 32) % ORDINARY_AGENTS) as usize]
        };

        let (method, path, typical_size) =
            ENDPOINTS[zipf_rank(&mut self.rng, ENDPOINTS.len() as u64) as usize];
        let roll = self.rng.random_range(0..1_000u32);
        let (status, size): (u32, u32) = match roll {
            0..850 => (
                200,
                typical_size / 2 + self.rng.random_range(0..=typical_size),
            ),
            850..910 => (304, 0),
            910..960 => (404, self.rng.random_range(196..=230)),
            960..980 => (401, 381),
            980..995 => (500, self.rng.random_range(520..=540)),
            _ => (503, 299),
        };
        let referer = if self.rng.random_range(0..1_000u32) < REFERER_PER_MILLE {
            REFERERS[self.rng.random_range(0..REFERERS.len())]
        } else {
            "-"
        };

        out.extend_from_slice(&self.key);
        out.extend_from_slice(b" - - [");
        self.push_clf_time(ts_ms, out);
        out.extend_from_slice(b"] \"");
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\" ");
        push_u64(out, u64::from(status));
        out.push(b' ');
        push_u64(out, u64::from(size));
        out.extend_from_slice(b" \"");
        out.extend_from_slice(referer.as_bytes());
        out.extend_from_slice(b"\" \"");
        out.extend_from_slice(agent.as_bytes());
        out.push(b'"');
    }

    /// Writes `ts_ms` as a common log format time (`10/Oct/2000:13:55:36 +0000`).
    fn push_clf_time(&mut self, ts_ms: i64, out: &mut Vec<u8>) {
        let second = ts_ms.div_euclid(1_000);
        if second != self.clf_second {
            let time = DateTime::<Utc>::from_timestamp(second, 0).unwrap_or(DateTime::UNIX_EPOCH);
            self.clf_time.clear();
            write!(self.clf_time, "{}", time.format("%d/%b/%Y:%H:%M:%S +0000"))
                .expect("a constant time format writes into a Vec");
            self.clf_second = second;
        }
        out.extend_from_slice(&self.clf_time);
    }
}

/// Draws a rank in `0..n` where rank `k` has probability close to
/// `1 / ((k + 1.5) ln(n + 1))`: a continuous Zipf (s = 1) by inverse
/// transform, which needs no table and is cheap per record. With
/// `n = 100_000` the top rank gets about 6% of draws and the top 5% of ranks
/// about three quarters.
fn zipf_rank(rng: &mut SmallRng, n: u64) -> u64 {
    let u: f64 = rng.random();
    let rank = ((n as f64 + 1.0).powf(u) as u64).saturating_sub(1);
    rank.min(n - 1)
}

/// SplitMix64 finalizer: turns consecutive client numbers into unrelated
/// looking bits for their IPs and user agents.
fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Appends the decimal form of `v`; avoids the formatting machinery because
/// it runs several times per record.
fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

fn push_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    push_u64(out, v.unsigned_abs());
}

/// Appends `micros / 1e6` (with `micros < 1_000_000`) as `0.` followed by at
/// most six digits. There is always a decimal point, so JSON readers infer a
/// float column even when a value happens to be round (`0.5`, `0.0`).
fn push_micros_fraction(out: &mut Vec<u8>, micros: u32) {
    debug_assert!(micros < 1_000_000);
    let mut digits = [b'0'; 6];
    let mut v = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let mut len = digits.len();
    while len > 1 && digits[len - 1] == b'0' {
        len -= 1;
    }
    out.extend_from_slice(b"0.");
    out.extend_from_slice(&digits[..len]);
}

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
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is full: let the brokers drain it.
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::mocking::MockCluster;
    use rdkafka::{Offset, TopicPartitionList};

    const TS: i64 = 1_700_000_000_123;

    fn records(kind: GenKind, seed: u64, n: usize) -> Vec<Vec<u8>> {
        let mut generator = Generator::new(kind, seed);
        (0..n)
            .map(|i| {
                let mut buf = Vec::new();
                generator.write_record(TS + i as i64 * 250, &mut buf);
                buf
            })
            .collect()
    }

    #[test]
    fn same_seed_same_bytes() {
        for kind in [GenKind::Impressions, GenKind::Activity, GenKind::AccessLog] {
            let a = records(kind, 7, 2_000);
            let b = records(kind, 7, 2_000);
            assert_eq!(a, b, "{kind:?} is not deterministic");
            let c = records(kind, 8, 2_000);
            assert_ne!(a, c, "{kind:?} ignores its seed");
            assert!(
                a.iter().all(|r| !r.contains(&b'\n') && !r.is_empty()),
                "{kind:?} wrote an empty or multi-line record"
            );
        }
    }

    #[test]
    fn buffer_is_appended_and_key_matches() {
        let mut generator = Generator::new(GenKind::Impressions, 3);
        let mut buf = b"prefix|".to_vec();
        generator.write_record(TS, &mut buf);
        assert!(buf.starts_with(b"prefix|{\"ts\":"));
        let v: serde_json::Value = serde_json::from_slice(&buf[7..]).unwrap();
        assert_eq!(v["cookie"].as_str().unwrap().as_bytes(), generator.key());
        assert_eq!(generator.records_written(), 1);
        assert_eq!(generator.kind(), GenKind::Impressions);
    }

    #[test]
    fn impressions_are_json_with_expected_fields() {
        let mut geos = HashSet::new();
        let mut total_len = 0;
        let recs = records(GenKind::Impressions, 11, 20_000);
        for (i, rec) in recs.iter().enumerate() {
            total_len += rec.len();
            let v: serde_json::Value = serde_json::from_slice(rec)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(rec)));
            let obj = v.as_object().unwrap();
            assert_eq!(obj.len(), 7);
            assert_eq!(obj["ts"].as_i64(), Some(TS + i as i64 * 250));

            let numbered = |field: &str, prefix: &str, suffix: &str, n: u64| {
                let s = obj[field].as_str().unwrap();
                let num = s
                    .strip_prefix(prefix)
                    .and_then(|s| s.strip_suffix(suffix))
                    .unwrap_or_else(|| panic!("bad {field}: {s}"));
                assert!(num.parse::<u64>().unwrap() < n, "{field} out of range: {s}");
            };
            numbered("publisher", "publisher_", "", u64::from(NUM_PUBLISHERS));
            numbered("advertiser", "advertiser_", "", u64::from(NUM_ADVERTISERS));
            numbered("website", "website_", ".com", u64::from(NUM_WEBSITES));
            numbered("cookie", "cookie_", "", u64::from(NUM_COOKIES));

            let geo = obj["geo"].as_str().unwrap();
            assert!(GEOS.contains(&geo), "unexpected geo {geo}");
            geos.insert(geo.to_owned());

            assert!(obj["bid"].is_f64(), "bid is not a float: {}", obj["bid"]);
            let bid = obj["bid"].as_f64().unwrap();
            assert!((0.0..1.0).contains(&bid), "bid out of range: {bid}");
        }
        assert!(geos.contains("unknown"));
        assert_eq!(geos.len(), GEOS.len());
        let avg = total_len / recs.len();
        assert!((120..=160).contains(&avg), "average size {avg}");
    }

    #[test]
    fn bid_formatting() {
        let fmt = |m| {
            let mut v = Vec::new();
            push_micros_fraction(&mut v, m);
            String::from_utf8(v).unwrap()
        };
        assert_eq!(fmt(0), "0.0");
        assert_eq!(fmt(500_000), "0.5");
        assert_eq!(fmt(1), "0.000001");
        assert_eq!(fmt(999_999), "0.999999");
        assert_eq!(fmt(123_450), "0.12345");
        let mut v = Vec::new();
        push_i64(&mut v, -42);
        push_u64(&mut v, u64::MAX);
        assert_eq!(v, format!("-42{}", u64::MAX).as_bytes());
    }

    #[test]
    fn activity_is_json_and_skewed() {
        let recs = records(GenKind::Activity, 5, 50_000);
        let mut per_user: HashMap<String, u64> = HashMap::new();
        let mut activities = HashSet::new();
        for rec in &recs {
            let v: serde_json::Value = serde_json::from_slice(rec).unwrap();
            let obj = v.as_object().unwrap();
            assert_eq!(obj.len(), 3);
            assert!(obj["ts"].is_i64());
            let user = obj["user_id"].as_str().unwrap();
            let n: u64 = user.strip_prefix("user_").unwrap().parse().unwrap();
            assert!((FIRST_USER..FIRST_USER + NUM_USERS).contains(&n));
            *per_user.entry(user.to_owned()).or_default() += 1;
            let activity = obj["activity"].as_str().unwrap();
            assert!(ACTIVITIES.contains(&activity), "unexpected {activity}");
            activities.insert(activity.to_owned());
        }
        assert_eq!(activities.len(), ACTIVITIES.len());
        // Skew: the most active user dwarfs the average one, yet many users
        // show up at all.
        let max = *per_user.values().max().unwrap();
        let mean = recs.len() as f64 / per_user.len() as f64;
        assert!(max as f64 > 100.0 * mean, "max {max}, mean {mean}");
        assert!(per_user.len() > 5_000, "only {} users", per_user.len());
    }

    /// Checks one Apache combined log line and returns (ip, status, time).
    fn parse_combined(line: &str) -> (String, u32, DateTime<chrono::FixedOffset>) {
        let (ip, rest) = line.split_once(' ').unwrap();
        let octets: Vec<u8> = ip.split('.').map(|o| o.parse().unwrap()).collect();
        assert_eq!(octets.len(), 4, "bad ip {ip}");
        let rest = rest.strip_prefix("- - [").unwrap();
        let (time, rest) = rest.split_once("] \"").unwrap();
        let time = DateTime::parse_from_str(time, "%d/%b/%Y:%H:%M:%S %z").unwrap();
        let (request, rest) = rest.split_once("\" ").unwrap();
        let parts: Vec<&str> = request.split(' ').collect();
        assert_eq!(parts.len(), 3, "bad request {request}");
        assert!(["GET", "POST"].contains(&parts[0]));
        assert!(parts[1].starts_with('/'));
        assert_eq!(parts[2], "HTTP/1.1");
        let (status, rest) = rest.split_once(' ').unwrap();
        assert_eq!(status.len(), 3);
        let status: u32 = status.parse().unwrap();
        let (size, rest) = rest.split_once(' ').unwrap();
        size.parse::<u64>().unwrap();
        let rest = rest.strip_prefix('"').unwrap();
        let (referer, rest) = rest.split_once("\" \"").unwrap();
        assert!(referer == "-" || referer.starts_with("https://"));
        let agent = rest.strip_suffix('"').unwrap();
        assert!(!agent.is_empty() && !agent.contains('"'));
        (ip.to_owned(), status, time)
    }

    #[test]
    fn access_log_lines_are_combined_format() {
        let recs = records(GenKind::AccessLog, 9, 20_000);
        let mut statuses: HashMap<u32, u64> = HashMap::new();
        let mut ips: HashMap<String, u64> = HashMap::new();
        for (i, rec) in recs.iter().enumerate() {
            let line = std::str::from_utf8(rec).unwrap();
            let (ip, status, time) = parse_combined(line);
            let expected_ms = TS + i as i64 * 250;
            assert_eq!(time.timestamp(), expected_ms.div_euclid(1_000), "{line}");
            *statuses.entry(status).or_default() += 1;
            *ips.entry(ip).or_default() += 1;
        }
        let ok = statuses[&200] as f64 / recs.len() as f64;
        assert!((0.8..0.9).contains(&ok), "200 share {ok}");
        for status in [304, 404, 401, 500, 503] {
            assert!(
                statuses.contains_key(&status),
                "no {status} in {statuses:?}"
            );
        }
        let hottest = *ips.values().max().unwrap();
        assert!(hottest > 800, "no hot ip: max {hottest}");
        assert!(ips.len() > 5_000, "only {} ips", ips.len());

        // A known time renders as Apache does, in UTC.
        let mut generator = Generator::new(GenKind::AccessLog, 1);
        let mut buf = Vec::new();
        generator.write_record(971_185_736_000, &mut buf);
        let line = String::from_utf8(buf).unwrap();
        assert!(
            line.contains(" - - [10/Oct/2000:13:48:56 +0000] \""),
            "{line}"
        );
    }

    #[test]
    fn write_lines_counts_and_paces() {
        let mut out = Vec::new();
        let n = write_lines(GenKind::Activity, &mut out, None, Some(1_000), 4).unwrap();
        assert_eq!(n, 1_000);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1_000);
        assert!(text.ends_with('\n'));

        // 2000 records at 4000/s take about half a second.
        let start = Instant::now();
        let mut out = Vec::new();
        let n = write_lines(GenKind::Impressions, &mut out, Some(4_000), Some(2_000), 4).unwrap();
        let elapsed = start.elapsed();
        assert_eq!(n, 2_000);
        assert!(
            elapsed >= Duration::from_millis(450) && elapsed < Duration::from_millis(1_500),
            "took {elapsed:?}"
        );
    }

    /// Reads `topic` from the beginning of partitions `0..partitions` until
    /// `expected` records arrived (or a timeout), returning records per partition.
    fn consume_all(
        brokers: &str,
        topic: &str,
        partitions: i32,
        expected: u64,
    ) -> HashMap<i32, Vec<Vec<u8>>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("runnel-gen-test-{topic}"))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut by_partition: HashMap<i32, Vec<Vec<u8>>> = HashMap::new();
        let mut received = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while received < expected && Instant::now() < deadline {
            if let Some(msg) = consumer.poll(Duration::from_millis(100)) {
                let msg = msg.unwrap();
                by_partition
                    .entry(msg.partition())
                    .or_default()
                    .push(msg.payload().unwrap().to_vec());
                received += 1;
            }
        }
        by_partition
    }

    #[test]
    fn produce_to_mock_cluster() {
        let cluster = MockCluster::new(1).unwrap();
        let brokers = cluster.bootstrap_servers();
        cluster.create_topic("imps-by-key", 4, 1).unwrap();
        cluster.create_topic("imps-round-robin", 4, 1).unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();

        let mut opts = ProduceOptions {
            brokers: brokers.clone(),
            topic: "imps-by-key".into(),
            rate: None,
            count: Some(2_000),
            seed: 21,
            partitions: None,
        };
        let delivered = runtime
            .block_on(produce(GenKind::Impressions, &opts, None))
            .unwrap();
        assert_eq!(delivered, 2_000);
        let got = consume_all(&brokers, "imps-by-key", 4, 2_000);
        assert_eq!(got.values().map(Vec::len).sum::<usize>(), 2_000);
        assert_eq!(got.len(), 4, "keys should spread over all partitions");
        for payload in got.values().flatten() {
            let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
            assert!(v["cookie"].as_str().unwrap().starts_with("cookie_"));
        }

        opts.topic = "imps-round-robin".into();
        opts.partitions = Some(4);
        let delivered = runtime
            .block_on(produce(GenKind::Impressions, &opts, None))
            .unwrap();
        assert_eq!(delivered, 2_000);
        let got = consume_all(&brokers, "imps-round-robin", 4, 2_000);
        for p in 0..4 {
            assert_eq!(got.get(&p).map_or(0, Vec::len), 500, "partition {p}");
        }
    }

    #[test]
    fn produce_until_stopped_at_rate() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("activity", 2, 1).unwrap();
        let opts = ProduceOptions {
            brokers: cluster.bootstrap_servers(),
            topic: "activity".into(),
            rate: Some(5_000),
            count: None,
            seed: 2,
            partitions: None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopper = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(400));
                stop.store(true, Ordering::Relaxed);
            })
        };
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let delivered = runtime
            .block_on(produce(GenKind::Activity, &opts, Some(stop)))
            .unwrap();
        stopper.join().unwrap();
        // About 400 ms at 5000/s; generous bounds for a busy machine.
        assert!((1_000..=3_000).contains(&delivered), "{delivered}");
    }

    #[test]
    fn produce_rejects_bad_options() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut opts = ProduceOptions {
            brokers: "127.0.0.1:1".into(),
            topic: String::new(),
            rate: None,
            count: Some(1),
            seed: 0,
            partitions: None,
        };
        let err = runtime.block_on(produce(GenKind::Activity, &opts, None));
        assert!(matches!(err, Err(GenError::InvalidOptions(_))));
        opts.topic = "t".into();
        opts.partitions = Some(0);
        let err = runtime.block_on(produce(GenKind::Activity, &opts, None));
        assert!(matches!(err, Err(GenError::InvalidOptions(_))));
    }
}
