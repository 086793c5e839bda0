//! The consumer's context: what librdkafka tells a Kafka source outside the
//! records. In a consumer group it takes the partitions assigned, paused
//! (the member only learns its share); from the statistics it keeps each partition's log end as a
//! live leader last reported it, and whether any broker is reachable; it
//! logs client errors once per kind and state change, not per retry, and
//! keeps the latest of them for the query's events.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::TopicPartitionList;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use serde::Deserialize;

/// How often librdkafka reports statistics (the partitions' log ends and the
/// brokers' liveness).
pub const STATS_INTERVAL_MS: u64 = 200;

/// A broker that received nothing for longer than this (microseconds) is
/// not taken as live: a consumer that is caught up fetches every
/// `fetch.wait.max.ms` (10 ms).
pub const BROKER_FRESH_US: i64 = 250_000;

/// The parts of librdkafka's statistics JSON Runnel reads.
#[derive(Deserialize)]
struct Stats {
    #[serde(default)]
    brokers: HashMap<String, BrokerStats>,
    #[serde(default)]
    topics: HashMap<String, TopicStats>,
}

#[derive(Deserialize)]
struct BrokerStats {
    nodeid: i32,
    state: String,
    #[serde(default = "minus_one")]
    rxidle: i64,
}

#[derive(Deserialize)]
struct TopicStats {
    #[serde(default)]
    partitions: HashMap<String, PartitionStats>,
}

#[derive(Deserialize)]
struct PartitionStats {
    partition: i32,
    #[serde(default = "minus_one")]
    leader: i32,
    #[serde(default)]
    fetchq_cnt: i64,
    #[serde(default = "minus_one")]
    next_offset: i64,
    #[serde(default = "minus_one")]
    hi_offset: i64,
}

fn minus_one<T: From<i8>>() -> T {
    T::from(-1)
}

/// What the latest statistics say of one partition whose leader is live.
#[derive(Debug, Clone, Copy)]
pub(super) struct LiveEnd {
    /// Log end (high watermark) of the last fetch response.
    pub(super) high: i64,
    /// The consumer's fetch position and records fetched but not yet polled.
    pub(super) next_fetch: i64,
    pub(super) queued: i64,
    /// When the statistics were taken.
    pub(super) at: Instant,
}

/// The consumer's context: in a consumer group it takes the partitions
/// assigned, paused, and numbers the assignments (see
/// [`super::KafkaSource::membership`]). It keeps what the statistics say of
/// each partition's log end.
pub struct SourceContext {
    pub(super) topic: String,
    /// Rebalances so far.
    pub(super) generation: AtomicU64,
    /// The latest assignment.
    pub(super) assigned: Mutex<Vec<i32>>,
    /// Per partition, the log end last reported by a live leader.
    pub(super) live_ends: Mutex<BTreeMap<i32, LiveEnd>>,
    /// Since when no broker has been reachable.
    pub(super) down_since: Mutex<Option<SystemTime>>,
    /// When each kind of client error or log line was last logged.
    pub(super) logged: Mutex<HashMap<String, Instant>>,
    /// The latest client errors and log lines logged, with when.
    pub(super) errors: Mutex<VecDeque<(SystemTime, String)>>,
}

/// Client errors kept for the query's events.
const ERRORS_KEPT: usize = 10;

/// The same client error or log line is logged at most once this often:
/// librdkafka retries connections many times a second.
const LOG_EVERY: Duration = Duration::from_secs(30);

impl SourceContext {
    /// The context of a consumer of `topic`.
    pub(super) fn new(topic: &str) -> Self {
        SourceContext {
            topic: topic.to_string(),
            generation: AtomicU64::new(0),
            assigned: Mutex::new(Vec::new()),
            live_ends: Mutex::new(BTreeMap::new()),
            down_since: Mutex::new(None),
            logged: Mutex::new(HashMap::new()),
            errors: Mutex::new(VecDeque::new()),
        }
    }

    /// Logs `message`, a trouble of the source's own fetching, once per
    /// kind every [`LOG_EVERY`], and keeps it for the query's events.
    pub(super) fn report(&self, message: String) {
        if self.should_log(&message) {
            tracing::warn!(topic = %self.topic, "kafka: {message}");
            self.keep_error(message);
        }
    }

    /// Keeps a client error or log line just logged for the query's events.
    fn keep_error(&self, message: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() == ERRORS_KEPT {
            errors.pop_front();
        }
        errors.push_back((SystemTime::now(), message));
    }

    /// The latest client errors logged, oldest first.
    pub(super) fn recent_errors(&self) -> Vec<(SystemTime, String)> {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors.iter().cloned().collect()
    }

    /// Notes whether any broker is reachable, logging each change once.
    pub(super) fn set_reachable(&self, up: bool) {
        let mut since = self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        match (up, *since) {
            (false, None) => {
                tracing::warn!(topic = %self.topic, "kafka: no broker reachable");
                *since = Some(SystemTime::now());
            }
            (true, Some(t)) => {
                let secs = t.elapsed().map_or(0.0, |d| d.as_secs_f64());
                tracing::info!(topic = %self.topic, "kafka: a broker is reachable again after {secs:.1} s");
                *since = None;
            }
            _ => {}
        }
    }

    /// True when `message` was not logged within [`LOG_EVERY`]; what varies
    /// between retries (counts, durations in parentheses) is left out.
    pub(super) fn should_log(&self, message: &str) -> bool {
        let key = message.split('(').next().unwrap_or(message).to_string();
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match logged.get(&key) {
            Some(at) if now.duration_since(*at) < LOG_EVERY => false,
            _ => {
                logged.insert(key, now);
                true
            }
        }
    }
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let serious = (level as i32) <= (RDKafkaLogLevel::Warning as i32);
        if !serious || !self.should_log(log_message) {
            return;
        }
        tracing::warn!(target: "librdkafka", "librdkafka: {fac} {log_message}");
        self.keep_error(format!("{fac} {log_message}"));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.set_reachable(false);
        }
        if self.should_log(reason) {
            tracing::warn!("kafka: {error}: {reason}");
            self.keep_error(format!("{error}: {reason}"));
        }
    }

    fn stats_raw(&self, statistics: &[u8]) {
        let stats: Stats = match serde_json::from_slice(statistics) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("kafka: unreadable statistics: {e}");
                return;
            }
        };
        let live: Vec<i32> = stats
            .brokers
            .values()
            .filter(|b| b.state == "UP" && (0..=BROKER_FRESH_US).contains(&b.rxidle))
            .map(|b| b.nodeid)
            .collect();
        // Bootstrap entries count too: before the first metadata answer
        // they are the only brokers known.
        if !stats.brokers.is_empty() {
            self.set_reachable(stats.brokers.values().any(|b| b.state == "UP"));
        }
        let at = Instant::now();
        let mut ends = self.live_ends.lock().unwrap_or_else(|p| p.into_inner());
        for p in stats
            .topics
            .get(&self.topic)
            .into_iter()
            .flat_map(|t| t.partitions.values())
        {
            if p.partition < 0 {
                continue;
            }
            if p.hi_offset >= 0 && live.contains(&p.leader) {
                let end = LiveEnd {
                    high: p.hi_offset,
                    next_fetch: p.next_offset,
                    queued: p.fetchq_cnt,
                    at,
                };
                ends.insert(p.partition, end);
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    /// Takes the partitions assigned, paused: a group member only learns
    /// its share; readers of its own read it.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let mut assigned = Vec::new();
        if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            let ps: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            // At their ends, so no position needs looking up.
            let assign = tpl.set_all_offsets(rdkafka::Offset::End);
            match assign
                .and_then(|()| consumer.assign(tpl))
                .and_then(|()| consumer.pause(tpl))
            {
                Ok(()) => assigned = ps,
                Err(e) => tracing::error!("kafka: assigning {ps:?}: {e}"),
            }
        } else {
            let _ = consumer.unassign();
        }
        *self.assigned.lock().unwrap_or_else(|p| p.into_inner()) = assigned;
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Statistics as librdkafka 2.12 writes them, cut to what is read.
    fn stats(state: &str, rxidle: i64, hi: i64, next: i64) -> Vec<u8> {
        format!(
            r#"{{"name": "c", "type": "consumer", "ts": 1,
                "brokers": {{
                  "127.0.0.1:9092/bootstrap": {{"name": "b", "nodeid": -1, "state": "INIT", "rxidle": -1}},
                  "127.0.0.1:9092/1": {{"name": "b1", "nodeid": 1, "state": "{state}", "rxidle": {rxidle}}}
                }},
                "topics": {{"t": {{"topic": "t", "partitions": {{
                  "0": {{"partition": 0, "leader": 1, "fetchq_cnt": 0, "next_offset": {next}, "hi_offset": {hi}}},
                  "-1": {{"partition": -1, "leader": -1, "fetchq_cnt": 0, "next_offset": 0, "hi_offset": -1}}
                }}}}}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn a_live_leader_reports_the_log_end() {
        let ctx = SourceContext::new("t");
        ctx.stats_raw(&stats("UP", 5_000, 120, 120));
        let end = ctx.live_ends.lock().unwrap()[&0];
        assert_eq!((end.high, end.next_fetch, end.queued), (120, 120, 0));
        assert!(ctx.down_since.lock().unwrap().is_none());
    }

    #[test]
    fn a_stalled_or_down_broker_confirms_nothing() {
        let ctx = SourceContext::new("t");
        ctx.stats_raw(&stats("UP", 5_000, 120, 120));
        let first = ctx.live_ends.lock().unwrap()[&0].at;
        // Nothing received for a second: the last confirmation stays as it was.
        ctx.stats_raw(&stats("UP", 1_000_000, 130, 130));
        let end = ctx.live_ends.lock().unwrap()[&0];
        assert_eq!((end.high, end.at), (120, first));
        assert!(ctx.down_since.lock().unwrap().is_none());
        // Down: unreachable since now, and still nothing confirmed.
        ctx.stats_raw(&stats("DOWN", -1, 130, 130));
        assert_eq!(ctx.live_ends.lock().unwrap()[&0].high, 120);
        assert!(ctx.down_since.lock().unwrap().is_some());
        // Up again.
        ctx.stats_raw(&stats("UP", 3_000, 140, 140));
        assert_eq!(ctx.live_ends.lock().unwrap()[&0].high, 140);
        assert!(ctx.down_since.lock().unwrap().is_none());
    }
}
