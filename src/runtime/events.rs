//! Each query's recent errors and warnings (served at `GET
//! /queries/{id}/events` and in the dashboard's events panel): a bounded ring of the last [`KEPT`] events,
//! newest last. The query's threads note what a reader of its status would
//! otherwise only find in the log: bad records by reason (with a sample),
//! the topic missing, no broker reachable, Kafka client errors, `INTO TOPIC`
//! publishing failures, the query failing.
//!
//! An event repeating (the same kind and key) within [`MERGE_WITHIN`] of the
//! last one is counted on it rather than added, so a stream of garbage
//! cannot push everything else out.
//!
//! ```
//! use runnel::runtime::events::{EventLog, Level};
//! let log = EventLog::default();
//! log.note(Level::Warning, "bad_record", "invalid_json", "3 records: invalid JSON", 3, None);
//! log.note(Level::Warning, "bad_record", "invalid_json", "2 records: invalid JSON", 2, None);
//! let events = log.list();
//! assert_eq!(events.len(), 1);
//! assert_eq!(events[0].count, 5);
//! ```

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Events kept per query.
pub const KEPT: usize = 50;

/// Repeats closer than this to the previous one are merged into it.
pub const MERGE_WITHIN: Duration = Duration::from_secs(30);

/// How serious an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// The query stopped or cannot make progress.
    Error,
    /// Something was lost or is waiting (records skipped, a topic missing).
    Warning,
    /// Worth knowing (a record used despite a note, a broker back).
    Info,
}

/// One recent event of a query.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When it last happened (RFC 3339).
    pub at: String,
    /// When it first happened, if it repeated.
    pub first_at: String,
    /// Its level.
    pub level: Level,
    /// What kind of event (`bad_record`, `waiting_for_topic`,
    /// `broker_unreachable`, `kafka_client`, `sink`, `failed`, ...).
    pub kind: &'static str,
    /// What happened, for a person.
    pub message: String,
    /// How many times (records, for bad records) it happened.
    pub count: u64,
    /// An example: a bad record's partition, offset and payload excerpt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,
    #[serde(skip)]
    key: String,
    #[serde(skip)]
    seen: Instant,
}

/// The recent events of one query.
#[derive(Default)]
pub struct EventLog(Mutex<VecDeque<Event>>);

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl EventLog {
    /// Notes an event; `key` tells repeats of a kind apart (a bad-record
    /// reason, a message).
    pub fn note(
        &self,
        level: Level,
        kind: &'static str,
        key: &str,
        message: &str,
        count: u64,
        sample: Option<String>,
    ) {
        let mut ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some(i) = ring.iter().rposition(|e| e.kind == kind && e.key == key)
            && now.duration_since(ring[i].seen) < MERGE_WITHIN
        {
            // Moved to the end: it is the newest again.
            let mut e = ring.remove(i).expect("index found");
            e.count += count;
            e.at = now_text();
            e.seen = now;
            e.message = message.to_string();
            if sample.is_some() {
                e.sample = sample;
            }
            ring.push_back(e);
            return;
        }
        if ring.len() == KEPT {
            ring.pop_front();
        }
        let at = now_text();
        ring.push_back(Event {
            first_at: at.clone(),
            at,
            level,
            kind,
            message: message.to_string(),
            count,
            sample,
            key: key.to_string(),
            seen: now,
        });
    }

    /// The events kept, oldest first.
    pub fn list(&self) -> Vec<Event> {
        let ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_and_merges_repeats() {
        let log = EventLog::default();
        for i in 0..(KEPT + 10) {
            log.note(Level::Info, "x", &i.to_string(), "m", 1, None);
        }
        let events = log.list();
        assert_eq!(events.len(), KEPT);
        assert_eq!(events[0].key, "10");
        // A repeat of an older event moves it to the end with its count.
        log.note(Level::Info, "x", "10", "again", 2, Some("s".into()));
        let events = log.list();
        assert_eq!(events.len(), KEPT);
        let last = events.last().unwrap();
        assert_eq!((last.key.as_str(), last.count), ("10", 3));
        assert_eq!(last.message, "again");
        assert_eq!(last.sample.as_deref(), Some("s"));
    }
}
