//! The end-to-end runs: a topic of a broker (librdkafka's mock cluster in a
//! child process, or an external one) read back through Runnel's Kafka
//! source, with and without prefetching.

use std::time::{Duration, Instant};

use super::measure::{Meter, RunStats, cpu_of_pid, peak_rss};
use super::{Dataset, QUERY_SQL, engine_for};
use crate::error::{Error, Result};
use crate::runtime::shared::{MAX_POLL, POLL_WAIT};
use crate::source::Source;
use crate::window::PartitionBatch;

pub(super) const TOPIC: &str = "bench-impressions";

/// Serves a mock cluster with the benchmark topic until standard input closes.
pub(super) fn broker_child(partitions: i32) -> Result<()> {
    use std::io::{Read, Write};
    let cluster = rdkafka::mocking::MockCluster::new(1)?;
    cluster.create_topic(TOPIC, partitions, 1)?;
    let mut out = std::io::stdout();
    writeln!(out, "{}", cluster.bootstrap_servers())?;
    out.flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(cluster);
    Ok(())
}

/// A mock cluster in a child process, so its CPU time is its own.
pub(super) struct BrokerProcess {
    child: std::process::Child,
    pub(super) bootstrap: String,
}

impl BrokerProcess {
    pub(super) fn start(partitions: i32) -> Result<BrokerProcess> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut child = Command::new(std::env::current_exe()?)
            .args(["bench", "--broker-child", &partitions.to_string()])
            .env("RUNNEL_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let bootstrap = line.trim().to_string();
        if bootstrap.is_empty() {
            let _ = child.kill();
            return Err(Error::Execution("the mock cluster did not start".into()));
        }
        Ok(BrokerProcess { child, bootstrap })
    }

    fn cpu(&self) -> Duration {
        cpu_of_pid(self.child.id())
    }
}

/// The broker of an end-to-end run.
enum Broker {
    /// The mock cluster in a child process.
    Mock(BrokerProcess),
    /// A broker already running, and its process when known.
    External { bootstrap: String, pid: Option<u32> },
}

impl Broker {
    fn bootstrap(&self) -> &str {
        match self {
            Broker::Mock(b) => &b.bootstrap,
            Broker::External { bootstrap, .. } => bootstrap,
        }
    }

    /// The broker's CPU time so far, when its process is known.
    fn cpu(&self) -> Option<Duration> {
        match self {
            Broker::Mock(b) => Some(b.cpu()),
            Broker::External { pid, .. } => pid.map(cpu_of_pid),
        }
    }
}

/// Creates `topic` with `partitions` on an external broker.
async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for r in admin.create_topics(&[new], &AdminOptions::new()).await? {
        r.map_err(|(t, e)| Error::Execution(format!("creating topic {t}: {e}")))?;
    }
    Ok(())
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

pub(super) fn producer(bootstrap: &str) -> Result<rdkafka::producer::BaseProducer> {
    Ok(rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("acks", "1")
        .create()?)
}

pub(super) fn send(
    p: &rdkafka::producer::BaseProducer,
    topic: &str,
    payload: &[u8],
    partition: i32,
) -> Result<()> {
    use rdkafka::producer::{BaseRecord, Producer};
    loop {
        match p.send(
            BaseRecord::<(), [u8]>::to(topic)
                .payload(payload)
                .partition(partition),
        ) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                _,
            )) => {
                p.poll(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e.into()),
        }
        let _ = p.flush(Duration::ZERO);
    }
}

/// Pre-fills a topic of the mock cluster (in its own process) with `ds`, then
/// reads it with Runnel's Kafka source, decoder and window engine, as a query
/// thread does: once polling on the query's own thread (the baseline), once
/// with the source read one poll ahead on a second thread (what queries run).
/// The mock cluster keeps only 5 MiB per partition, so the topic gets enough
/// partitions to hold the whole dataset.
pub async fn run_e2e(
    ds: &Dataset,
    partitions: i32,
    external: Option<(&str, Option<u32>)>,
) -> Result<Vec<RunStats>> {
    use rdkafka::producer::Producer;
    let (broker, topic, partitions) = match external {
        None => {
            let needed = (ds.bytes() / (4 << 20) + 1) as i32;
            let partitions = partitions.max(needed);
            let broker = BrokerProcess::start(partitions)?;
            (Broker::Mock(broker), TOPIC.to_string(), partitions)
        }
        Some((bootstrap, pid)) => {
            let topic = format!("{TOPIC}-{}", std::process::id());
            create_topic(bootstrap, &topic, partitions).await?;
            let broker = Broker::External {
                bootstrap: bootstrap.to_string(),
                pid,
            };
            (broker, topic, partitions)
        }
    };
    let t = Instant::now();
    let p = producer(broker.bootstrap())?;
    for i in 0..ds.len() {
        send(&p, &topic, ds.payload(i), (i % partitions as usize) as i32)?;
        if i % 10_000 == 0 {
            p.poll(Duration::ZERO);
        }
    }
    p.flush(Duration::from_secs(120))?;
    drop(p);
    println!(
        "e2e: produced {} records to {partitions} partitions in {:.1} s",
        ds.len(),
        t.elapsed().as_secs_f64()
    );
    let what = match &broker {
        Broker::Mock(_) => format!("e2e mock cluster ({partitions} partitions)"),
        Broker::External { .. } => format!("e2e external broker ({partitions} partitions)"),
    };
    let mut runs = Vec::new();
    // librdkafka's fetching first: the baseline of Runnel's own.
    for (prefetch, own) in [(false, false), (false, true), (true, true)] {
        let how = match own {
            false => "librdkafka's fetch",
            true => "Runnel's fetch",
        };
        let name = match prefetch {
            false => format!("{what}, {how}, one thread"),
            true => format!("{what}, {how}, prefetch"),
        };
        runs.push(consume_e2e(ds, &broker, &topic, name, prefetch, own).await?);
    }
    Ok(runs)
}

/// Reads the whole of `topic` from the start through the engine.
async fn consume_e2e(
    ds: &Dataset,
    broker: &Broker,
    topic: &str,
    name: String,
    prefetch: bool,
    own_fetch: bool,
) -> Result<RunStats> {
    use crate::source::prefetch::Prefetch;
    let (mut engine, mut decoder) = engine_for(QUERY_SQL).await?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let broker_cpu = broker.cpu();
    let meter = Meter::start();
    let kafka = crate::connect::kafka::KafkaConn {
        librdkafka_fetch: !own_fetch,
        ..crate::connect::kafka::KafkaConn::new(broker.bootstrap())
    };
    let src = crate::source::kafka::KafkaSource::connect(
        &kafka,
        topic,
        "runnel-bench",
        crate::model::StartFrom::Earliest,
        &Default::default(),
        crate::source::kafka::Waiting::until(&stop),
    )?;
    // As a query does: the watermark waits for every partition.
    engine.register_partitions(src.partitions());
    let wait = POLL_WAIT;
    // One poll decoded: per partition its records, and the counts of records
    // and of bad ones.
    type Decoded = (Vec<PartitionBatch>, usize, usize);
    let mut decode = move |chunks: Vec<crate::source::Chunk>| -> Result<Decoded> {
        let (mut batches, mut records, mut bad) = (Vec::with_capacity(chunks.len()), 0, 0);
        for chunk in &chunks {
            records += chunk.len();
            let (b, rejected) = decoder.decode(&chunk.payloads());
            bad += rejected.len();
            batches.extend(b.map(|b| PartitionBatch::new(chunk.partition, b)));
        }
        Ok((batches, records, bad))
    };
    enum Reader<F> {
        Direct(Box<crate::source::kafka::KafkaSource>, F),
        Ahead(Prefetch<Decoded>),
    }
    let mut src = match prefetch {
        true => Reader::Ahead(Prefetch::spawn(Source::Kafka(src), MAX_POLL, wait, decode)),
        false => Reader::Direct(Box::new(src), &mut decode),
    };
    let mut stats = RunStats {
        name,
        ..Default::default()
    };
    let mut seen = 0usize;
    let mut idle = Instant::now();
    while seen < ds.len() && idle.elapsed() < Duration::from_secs(10) {
        let (batches, records, bad) = match &mut src {
            Reader::Direct(direct, decode) => decode(direct.poll(MAX_POLL, wait)?)?,
            Reader::Ahead(ahead) => ahead.poll(wait)?.unwrap_or_default(),
        };
        if records > 0 {
            idle = Instant::now();
        }
        seen += records;
        stats.bad += bad;
        let out = engine.process_polled(batches, 0).await?;
        stats.rows += out.iter().map(|e| e.batch.num_rows()).sum::<usize>();
        stats.state_bytes = stats.state_bytes.max(engine.state_bytes());
    }
    let out = engine.close_all().await?;
    stats.rows += out.iter().map(|e| e.batch.num_rows()).sum::<usize>();
    drop(src);
    let (wall_s, cpu_s) = meter.stop();
    stats.records = seen;
    stats.wall_s = wall_s;
    stats.cpu_s = cpu_s;
    stats.peak_rss = peak_rss();
    stats.windows = engine
        .counters
        .windows_closed
        .load(std::sync::atomic::Ordering::Relaxed);
    stats.other_cpu_s = broker
        .cpu()
        .zip(broker_cpu)
        .map(|(after, before)| after.saturating_sub(before).as_secs_f64());
    if seen < ds.len() {
        println!(
            "e2e: only {seen} of {} records were read back (the mock cluster dropped some)",
            ds.len()
        );
    }
    Ok(stats)
}
