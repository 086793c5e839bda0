//! A leader's thread: what the source placed on it fetched in a loop, each
//! answer sent to the source as chunks, the positions moved on without a
//! word from the source.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::batches::read_batches;
use super::conn::Conn;
use super::{
    Answer, MAX_BYTES, MAX_WAIT_MS, PARTITION_MAX_BYTES, Part, RETRY, STOP_CHECK, Wanted, lock,
};

/// A leader's thread: fetches the partitions `wanted` names from `addr`
/// until `stop`, sending what it reads to `tx`.
pub(super) fn lead(
    addr: &str,
    topic: &str,
    client_id: &str,
    wanted: &(Mutex<Wanted>, Condvar),
    stop: &AtomicBool,
    tx: &SyncSender<Answer>,
) {
    let stopped = || stop.load(Ordering::Relaxed);
    let mut conn: Option<Conn> = None;
    while !stopped() {
        let at: Vec<(i32, i64, u64)> = {
            let (m, woken) = wanted;
            let mut w = lock(m);
            while w.at.is_empty() && !stopped() {
                w = woken
                    .wait_timeout(w, STOP_CHECK)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            (w.at.iter()).map(|(p, (o, g))| (*p, *o, *g)).collect()
        };
        if stopped() {
            return;
        }
        let answers = (|| {
            let c = match &mut conn {
                Some(c) => c,
                None => conn.insert(Conn::open(addr, client_id, &stopped)?),
            };
            match at.iter().any(|(_, o, _)| *o < 0) {
                true => look_up(c, topic, &at, &stopped),
                false => fetch(c, topic, &at, &stopped),
            }
        })();
        let answers = match answers {
            Ok(a) => a,
            Err(e) => {
                // Connected anew after a pause: the source is told, and
                // asks where the partitions are now.
                conn = None;
                let down = Answer::Down {
                    addr: addr.to_string(),
                    error: e.to_string(),
                };
                if stopped() || tx.send(down).is_err() {
                    return;
                }
                std::thread::sleep(RETRY);
                continue;
            }
        };
        // Positions move on before the answer is sent: the next fetch
        // needs no word from the source. A partition placed again meanwhile
        // (another generation) keeps its new position.
        {
            let mut w = lock(&wanted.0);
            for a in &answers {
                match a {
                    Answer::Fetched(parts) => {
                        for part in parts {
                            if let Some(e) = w.at.get_mut(&part.partition)
                                && e.1 == part.generation
                            {
                                e.0 = part.next;
                            }
                        }
                    }
                    Answer::Refused {
                        partition,
                        generation,
                        ..
                    } => {
                        if w.at.get(partition).is_some_and(|e| e.1 == *generation) {
                            w.at.remove(partition);
                        }
                    }
                    Answer::Down { .. } => {}
                }
            }
        }
        for a in answers {
            if tx.send(a).is_err() {
                return;
            }
        }
    }
}

/// Looks up the positions still to look up in `at`: a fetched answer of no
/// records for each, whose `next` is the offset found.
fn look_up(
    c: &mut Conn,
    topic: &str,
    at: &[(i32, i64, u64)],
    stopped: &dyn Fn() -> bool,
) -> std::io::Result<Vec<Answer>> {
    let mut req = ListOffsetsRequest::default();
    req.replica_id = BrokerId(-1);
    req.isolation_level = 1;
    let mut t = ListOffsetsTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    for &(p, o, _) in at.iter().filter(|(_, o, _)| *o < 0) {
        let mut lp = ListOffsetsPartition::default();
        lp.partition_index = p;
        lp.timestamp = o;
        t.partitions.push(lp);
    }
    req.topics.push(t);
    let version = c.list_offsets_version;
    let answer: ListOffsetsResponse = c.call(ApiKey::ListOffsets, version, &req, stopped)?;
    let now = Instant::now();
    let mut out = Vec::new();
    let mut parts = Vec::new();
    for lp in answer.topics.iter().flat_map(|t| &t.partitions) {
        let p = lp.partition_index;
        let Some((_, generation)) = asked(at, p, lp.error_code, &mut out) else {
            continue;
        };
        parts.push(Part {
            partition: p,
            generation,
            chunk: None,
            next: lp.offset,
            high: None,
            at: now,
        });
    }
    out.push(Answer::Fetched(parts));
    Ok(out)
}

/// The position and generation `at` asked for `partition`; `None` when
/// it was not asked for, or when its leader answered with error `code`
/// (the refusal is added to `out`).
fn asked(
    at: &[(i32, i64, u64)],
    partition: i32,
    code: i16,
    out: &mut Vec<Answer>,
) -> Option<(i64, u64)> {
    let &(_, position, generation) = at.iter().find(|(p, ..)| *p == partition)?;
    if code != 0 {
        out.push(Answer::Refused {
            partition,
            generation,
            code,
        });
        return None;
    }
    Some((position, generation))
}

/// Fetches the partitions of `at` from their positions.
fn fetch(
    c: &mut Conn,
    topic: &str,
    at: &[(i32, i64, u64)],
    stopped: &dyn Fn() -> bool,
) -> std::io::Result<Vec<Answer>> {
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_wait_ms = MAX_WAIT_MS;
    req.min_bytes = 1;
    req.max_bytes = MAX_BYTES;
    req.isolation_level = 1;
    req.session_epoch = -1;
    let mut t = FetchTopic::default();
    t.topic = TopicName(StrBytes::from_string(topic.to_string()));
    for &(p, o, _) in at {
        let mut fp = FetchPartition::default();
        fp.partition = p;
        fp.fetch_offset = o;
        fp.partition_max_bytes = PARTITION_MAX_BYTES;
        fp.current_leader_epoch = -1;
        fp.last_fetched_epoch = -1;
        fp.log_start_offset = -1;
        t.partitions.push(fp);
    }
    req.topics.push(t);
    let version = c.fetch_version;
    let answer: FetchResponse = c.call(ApiKey::Fetch, version, &req, stopped)?;
    if answer.error_code != 0 {
        return Err(std::io::Error::other(format!(
            "fetch answered with error {}",
            answer.error_code
        )));
    }
    let now = Instant::now();
    let mut out = Vec::new();
    let mut parts = Vec::new();
    for pd in answer.responses.into_iter().flat_map(|t| t.partitions) {
        let p = pd.partition_index;
        let Some((from, generation)) = asked(at, p, pd.error_code, &mut out) else {
            continue;
        };
        let aborted: Vec<(i64, i64)> = (pd.aborted_transactions.iter().flatten())
            .map(|a| (a.producer_id.0, a.first_offset))
            .collect();
        let records = pd.records.unwrap_or_default();
        let (chunk, next) = read_batches(p, records, from, aborted).map_err(|e| {
            std::io::Error::other(format!("partition {p} of {topic} at offset {from}: {e}"))
        })?;
        // What `read_committed` may read ends at the last stable offset.
        let high = if pd.last_stable_offset >= 0 {
            pd.last_stable_offset.min(pd.high_watermark)
        } else {
            pd.high_watermark
        };
        parts.push(Part {
            partition: p,
            generation,
            chunk,
            next,
            high: Some(high),
            at: now,
        });
    }
    out.insert(0, Answer::Fetched(parts));
    Ok(out)
}
