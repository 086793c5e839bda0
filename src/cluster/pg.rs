//! Cluster mode's shared state in PostgreSQL: who owns each partition of
//! a query and how far it is, the partial states servers flush per window,
//! and the watermark up to which windows are final. Every step is one
//! transaction under a per-query advisory lock.

use std::collections::BTreeMap;

use futures::executor::block_on;
use futures::try_join;
use tokio_postgres::types::{ToSql, Type};

use crate::error::{Error, Result};
use crate::model::Emission;
use crate::model::WindowSpec;
use crate::store::postgres::{PgStore, execute_all};
use crate::store::statements::final_window_statements;
use crate::window::closed_through;
use crate::window::watermark::{self, PartitionMark};

/// A partition's idle mark is trusted for this long after its owner
/// flushed it (owners flush every checkpoint interval, 1 s by default).
const IDLE_MARK_FRESH_SECS: f64 = 5.0;

/// Takes the per-query lock every step of a query runs under.
const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext($1))";

/// A statement's parameter with its type. Statements run with typed
/// parameters take one round trip, not a prepare and then an execute, and
/// the statements of a step that do not depend on one another are sent
/// together (pipelined): round trips are what a cluster query's commit
/// costs, every second.
type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// The cluster's tables in the PostgreSQL store.
#[derive(Clone)]
pub(crate) struct Shared {
    pg: PgStore,
}

impl Shared {
    /// The cluster state kept in `pg`.
    pub(crate) fn new(pg: PgStore) -> Self {
        Shared { pg }
    }

    /// Claims `partitions` of `query` for `owner` (a token unique to one
    /// assignment of one server) and returns where each one stands. A
    /// previous owner's later writes to them are refused from now on.
    pub fn claim_partitions(
        &self,
        query: &str,
        owner: &str,
        partitions: &[i32],
    ) -> Result<BTreeMap<i32, Progress>> {
        let (query, owner, partitions) =
            (query.to_string(), owner.to_string(), partitions.to_vec());
        self.pg.with_client(|c| {
            block_on(async move {
                let tx = c.transaction().await?;
                let q: [Param; 1] = [(&query, Type::TEXT)];
                // A query dropped meanwhile leaves nothing behind to claim.
                let (_, exists) = try_join!(
                    tx.execute_typed(LOCK, &q),
                    tx.query_typed_opt("SELECT 1 FROM runnel_queries WHERE name = $1", &q),
                )?;
                if exists.is_none() {
                    return Err(Error::NotFound(format!("query '{query}' was dropped")));
                }
                let mut out = BTreeMap::new();
                for p in partitions {
                    let row = tx
                        .query_one(
                            "INSERT INTO runnel_partition_progress (query, partition, owner)
                         VALUES ($1, $2, $3)
                         ON CONFLICT (query, partition) DO UPDATE
                         SET owner = excluded.owner, idle = false, updated_at = now()
                         RETURNING next_offset, max_event_time",
                            &[&query, &p, &owner],
                        )
                        .await?;
                    out.insert(
                        p,
                        Progress {
                            next_offset: row.get(0),
                            max_event_time: row.get(1),
                        },
                    );
                }
                tx.commit().await?;
                Ok(out)
            })
        })
    }

    /// Saves the progress of the partitions `owner` holds and the partial
    /// states read since its last flush, atomically. `false` (nothing
    /// written) when another server has claimed one of the partitions since.
    pub fn flush_partials(
        &self,
        query: &str,
        owner: &str,
        progress: &[PartitionFlush],
        partials: Vec<(i64, i64, Vec<u8>)>,
    ) -> Result<bool> {
        let (query, owner, progress) = (query.to_string(), owner.to_string(), progress.to_vec());
        self.pg.with_client(|c| {
            block_on(async move {
                let tx = c.transaction().await?;
                // One statement per table, whatever the partitions and
                // windows, all sent at once.
                let col = |f: fn(&PartitionFlush) -> Option<i64>| -> Vec<Option<i64>> {
                    progress.iter().map(f).collect()
                };
                let partitions: Vec<i32> = progress.iter().map(|f| f.partition).collect();
                let idle: Vec<bool> = progress.iter().map(|f| f.mark.idle.is_some()).collect();
                let (next, max_event, idle_wm) = (
                    col(|f| f.next_offset),
                    col(|f| f.mark.max_event),
                    col(|f| f.mark.idle.flatten()),
                );
                let update: [Param; 7] = [
                    (&query, Type::TEXT),
                    (&owner, Type::TEXT),
                    (&partitions, Type::INT4_ARRAY),
                    (&next, Type::INT8_ARRAY),
                    (&max_event, Type::INT8_ARRAY),
                    (&idle, Type::BOOL_ARRAY),
                    (&idle_wm, Type::INT8_ARRAY),
                ];
                let starts: Vec<i64> = partials.iter().map(|p| p.0).collect();
                let ends: Vec<i64> = partials.iter().map(|p| p.1).collect();
                let states: Vec<&[u8]> = partials.iter().map(|p| &p.2[..]).collect();
                let insert: [Param; 4] = [
                    (&query, Type::TEXT),
                    (&starts, Type::INT8_ARRAY),
                    (&ends, Type::INT8_ARRAY),
                    (&states, Type::BYTEA_ARRAY),
                ];
                let q: [Param; 1] = [(&query, Type::TEXT)];
                let (_, updated, _) = try_join!(
                    tx.execute_typed(LOCK, &q),
                    tx.execute_typed(
                        "UPDATE runnel_partition_progress p
                         SET next_offset = u.next_offset, max_event_time = u.max_event_time,
                             idle = u.idle, idle_watermark = u.idle_watermark, updated_at = now()
                         FROM unnest($3::int[], $4::bigint[], $5::bigint[], $6::bool[], $7::bigint[])
                              AS u(partition, next_offset, max_event_time, idle, idle_watermark)
                         WHERE p.query = $1 AND p.owner = $2 AND p.partition = u.partition",
                        &update,
                    ),
                    tx.execute_typed(
                        "INSERT INTO runnel_window_partials (query, window_start, window_end, state)
                         SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::bytea[])",
                        &insert,
                    ),
                )?;
                // A partition another server claimed since: nothing is
                // written (the transaction is dropped).
                if updated != progress.len() as u64 {
                    return Ok(false);
                }
                tx.commit().await?;
                Ok(true)
            })
        })
    }

    /// The windows of `query` every partition is past: the watermark combines
    /// the stored marks of the topic's `partitions` by the one rule
    /// ([`watermark::combine`]); windows it closes (by the one closing rule,
    /// [`closed_through`]) are returned with their partial states.
    /// A partition's idle mark counts only if its stored next offset has
    /// reached its log end in `log_ends` (asked of the brokers just before).
    /// Partial states of windows already final (from records read after the
    /// window was finished) are deleted and counted in `late`.
    pub fn final_windows(
        &self,
        query: &str,
        partitions: usize,
        log_ends: &BTreeMap<i32, i64>,
        delay: i64,
        window: WindowSpec,
    ) -> Result<FinalWindows> {
        let grace = window.grace_ms;
        let query = query.to_string();
        self.pg.with_client(|c| {
            block_on(async move {
                let tx = c.transaction().await?;
                let q: [Param; 1] = [(&query, Type::TEXT)];
                let fresh: [Param; 2] = [q[0].clone(), (&IDLE_MARK_FRESH_SECS, Type::FLOAT8)];
                let (_, closed_wm, rows) = try_join!(
                    tx.execute_typed(LOCK, &q),
                    tx.query_typed_opt(
                        "SELECT closed_wm FROM runnel_query_watermarks WHERE query = $1",
                        &q,
                    ),
                    tx.query_typed(
                        // An idle mark counts only while its owner keeps
                        // flushing: a dead server's partitions hold the
                        // watermark at their event-time frontier until their
                        // new owner has read what was written meanwhile.
                        "SELECT max_event_time, idle AND updated_at > now() - make_interval(secs => $2),
                                idle_watermark, partition, next_offset
                         FROM runnel_partition_progress WHERE query = $1",
                        &fresh,
                    ),
                )?;
                let closed_wm: i64 = closed_wm.map_or(i64::MIN, |r| r.get(0));
                let marks = rows.iter().map(|r| {
                    let (max_event, idle, idle_wm): (Option<i64>, bool, Option<i64>) =
                        (r.get(0), r.get(1), r.get(2));
                    let (partition, next): (i32, Option<i64>) = (r.get(3), r.get(4));
                    // Idle only while the log holds nothing past what was
                    // read: records its owner has not read (it may be dead)
                    // hold the watermark back like any unread record.
                    let caught_up = match (next, log_ends.get(&partition)) {
                        (Some(next), Some(end)) => next >= *end,
                        _ => false,
                    };
                    PartitionMark {
                        max_event,
                        idle: (idle && caught_up).then_some(idle_wm),
                    }
                });
                // A topic not fully claimed yet holds everything back.
                let wm = match rows.len() < partitions {
                    true => i64::MIN,
                    false => watermark::combine(marks, delay).unwrap_or(i64::MIN),
                };
                // Stored as the last final window's end plus grace.
                let (late_end, final_end) = (
                    closed_wm.saturating_sub(grace),
                    closed_through(window.kind, grace, wm),
                );
                let late_params: [Param; 2] = [q[0].clone(), (&late_end, Type::INT8)];
                let final_params: [Param; 2] = [q[0].clone(), (&final_end, Type::INT8)];
                let (late, parts) = try_join!(
                    tx.execute_typed(
                        "DELETE FROM runnel_window_partials WHERE query = $1 AND window_end <= $2",
                        &late_params,
                    ),
                    tx.query_typed(
                        "SELECT id, window_start, window_end, state FROM runnel_window_partials
                         WHERE query = $1 AND window_end <= $2 ORDER BY window_end, window_start, id",
                        &final_params,
                    ),
                )?;
                tx.commit().await?;
                let mut windows: Vec<FinalWindow> = Vec::new();
                for r in parts {
                    let (id, start, end, state): (i64, i64, i64, Vec<u8>) =
                        (r.get(0), r.get(1), r.get(2), r.get(3));
                    match windows.last_mut() {
                        Some(w) if w.start == start && w.end == end => {
                            w.ids.push(id);
                            w.states.push(state);
                        }
                        _ => windows.push(FinalWindow {
                            start,
                            end,
                            ids: vec![id],
                            states: vec![state],
                        }),
                    }
                }
                Ok(FinalWindows {
                    closed_wm,
                    late,
                    windows,
                })
            })
        })
    }

    /// Writes final windows' emissions (rows and merged states, one per
    /// window, in the windows' order) and deletes their partial states, in
    /// one transaction; `false` (nothing written) when another server
    /// finished one of them first (it finishes the others too, or the next
    /// search finds them).
    pub fn finish_windows(
        &self,
        query: &str,
        windows: &[FinalWindow],
        grace: i64,
        emissions: &[Emission],
    ) -> Result<bool> {
        let Some(last) = windows.last() else {
            return Ok(true);
        };
        let stmts = final_window_statements(query, emissions)?;
        // Windows are finished in end order, so every window ending by the
        // last one's end is final: later partial states for them are late.
        let closed = last.end.saturating_add(grace);
        let query = query.to_string();
        let ids: Vec<i64> = windows.iter().flat_map(|w| w.ids.iter().copied()).collect();
        self.pg.with_client(|c| {
            block_on(async move {
                let tx = c.transaction().await?;
                let (q, ids_param): ([Param; 1], [Param; 1]) =
                    ([(&query, Type::TEXT)], [(&ids, Type::INT8_ARRAY)]);
                let (_, n) = try_join!(
                    tx.execute_typed(LOCK, &q),
                    tx.execute_typed(
                        "DELETE FROM runnel_window_partials WHERE id = ANY($1)",
                        &ids_param,
                    ),
                )?;
                if n as usize != ids.len() {
                    return Ok(false);
                }
                let watermark = [q[0].clone(), (&closed, Type::INT8)];
                try_join!(
                    execute_all(&tx, &stmts),
                    tx.execute_typed(
                        "INSERT INTO runnel_query_watermarks (query, closed_wm) VALUES ($1, $2)
                         ON CONFLICT (query) DO UPDATE
                         SET closed_wm = greatest(runnel_query_watermarks.closed_wm, excluded.closed_wm)",
                        &watermark,
                    ),
                )?;
                tx.commit().await?;
                Ok(true)
            })
        })
    }
}

/// Where a partition of a cluster query stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Next offset to read; `None` before the first flush.
    pub next_offset: Option<i64>,
    /// Highest event time read so far.
    pub max_event_time: Option<i64>,
}

/// One partition's progress in a flush.
#[derive(Debug, Clone, Copy)]
pub struct PartitionFlush {
    /// The partition.
    pub partition: i32,
    /// Next offset to read.
    pub next_offset: Option<i64>,
    /// What it contributes to the watermark.
    pub mark: PartitionMark,
}

/// What [`Shared::final_windows`] found.
#[derive(Debug, Clone)]
pub struct FinalWindows {
    /// Windows whose end plus grace is at or before this are final
    /// (`i64::MIN` before the first).
    pub closed_wm: i64,
    /// Partial states of final windows deleted as late.
    pub late: u64,
    /// Windows to finish now, in end order.
    pub windows: Vec<FinalWindow>,
}

/// A window every partition is past, with its partial states (Arrow IPC).
#[derive(Debug, Clone)]
pub struct FinalWindow {
    /// Window start, epoch ms.
    pub start: i64,
    /// Window end, epoch ms.
    pub end: i64,
    /// Ids of the partial states.
    pub ids: Vec<i64>,
    /// The partial states.
    pub states: Vec<Vec<u8>>,
}
