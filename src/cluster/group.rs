//! One consumer group per stream: which partitions of a stream's topic this
//! server reads, for every query over the stream.
//!
//! Each server of a cluster joins one group per stream it runs queries
//! over, `runnel.CLUSTER.stream.STREAM`, with a consumer that only takes
//! part in the group: the partitions it is given are paused and nothing
//! is fetched with it. Every query over the stream on this server reads
//! that share (claimed per query in PostgreSQL, see `pg.rs`), through one
//! reader the queries share ([`crate::runtime::shared`]): one read per
//! stream and server, whatever the number of queries. A query behind the
//! others (created from `earliest`, say) reads the same share with a
//! catch-up reader that hands it over once it has caught up.
//!
//! ```no_run
//! # fn f(task: &runnel::runtime::QueryTask) -> runnel::error::Result<()> {
//! use runnel::cluster::group::Groups;
//! let groups = Groups::default();
//! if let Some(group) = groups.join("prod", task)? {
//!     if let Some((generation, partitions)) = group.assignment_after(None) {
//!         println!("generation {generation}: partitions {partitions:?}");
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::error::Result;
use crate::model::StreamDef;
use crate::runtime::QueryTask;
use crate::source::kafka::KafkaSource;

/// How often the group's consumer is polled: rebalances are served in
/// polls (heartbeats are sent by the client's own thread).
const POLL_EVERY: Duration = Duration::from_millis(50);

/// The groups this server has joined, one per stream with a query running.
#[derive(Default)]
pub struct Groups {
    groups: Mutex<Vec<Weak<Group>>>,
}

/// This server's membership of one stream's group. It leaves the group
/// when the last query holding it lets go.
pub struct Group {
    cluster: String,
    stream: StreamDef,
    consumer: Mutex<KafkaSource>,
    /// The latest share the group gave this server, numbered.
    assignment: Mutex<(u64, Vec<i32>)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Groups {
    /// This server's membership of the group of `task`'s stream, joined
    /// now if no query holds it; `None` when the query was stopped while
    /// the topic was awaited.
    pub fn join(&self, cluster: &str, task: &QueryTask) -> Result<Option<Arc<Group>>> {
        if let Some(g) = find(&lock(&self.groups), cluster, &task.stream) {
            return Ok(Some(g));
        }
        // Joined outside the lock: waiting for a topic must not hold up
        // queries over other streams.
        let name = &task.stream.name;
        let (group, client) = (
            format!("runnel.{cluster}.stream.{name}"),
            format!("runnel-stream-{name}"),
        );
        let Some(consumer) = task.connect(|waiting| {
            KafkaSource::membership(&task.kafka, &task.stream.topic, &group, &client, waiting)
        })?
        else {
            return Ok(None);
        };
        let mut groups = lock(&self.groups);
        groups.retain(|g| g.strong_count() > 0);
        // Another query over the stream may have joined meanwhile.
        if let Some(g) = find(&groups, cluster, &task.stream) {
            return Ok(Some(g));
        }
        let group = Arc::new(Group {
            cluster: cluster.to_string(),
            stream: task.stream.clone(),
            consumer: Mutex::new(consumer),
            assignment: Mutex::new((0, Vec::new())),
        });
        groups.push(Arc::downgrade(&group));
        let weak = Arc::downgrade(&group);
        std::thread::Builder::new()
            .name(format!("group-{name}"))
            .spawn(move || {
                while let Some(g) = weak.upgrade() {
                    g.poll();
                    drop(g);
                    std::thread::sleep(POLL_EVERY);
                }
            })?;
        tracing::info!(stream = %name, "joined the stream's consumer group");
        Ok(Some(group))
    }
}

/// The group of `stream` in `cluster` among `groups`, if a query holds it.
fn find(groups: &[Weak<Group>], cluster: &str, stream: &StreamDef) -> Option<Arc<Group>> {
    (groups.iter())
        .filter_map(Weak::upgrade)
        .find(|g| g.cluster == cluster && g.stream == *stream)
}

impl Group {
    /// Serves the group's rebalances and notes a new share.
    fn poll(&self) {
        let mut consumer = lock(&self.consumer);
        if let Err(e) = consumer.poll(1, Duration::ZERO) {
            tracing::warn!(stream = %self.stream.name, "kafka: consumer group: {e}");
        }
        if let Some(partitions) = consumer.take_assignment() {
            tracing::info!(stream = %self.stream.name, ?partitions, "the group gave this server partitions");
            let mut a = lock(&self.assignment);
            *a = (a.0 + 1, partitions);
        }
    }

    /// The share of the partitions the group gave this server, with its
    /// number, if it is not the one numbered `seen`.
    pub fn assignment_after(&self, seen: Option<u64>) -> Option<(u64, Vec<i32>)> {
        let a = lock(&self.assignment);
        (Some(a.0) != seen).then(|| a.clone())
    }

    /// Number of partitions of the topic.
    pub fn topic_partitions(&self) -> usize {
        lock(&self.consumer).topic_partitions()
    }

    /// The log end of every partition of the topic, asked of the brokers
    /// now; `None` when one does not answer within `timeout`.
    pub fn topic_log_ends(&self, timeout: Duration) -> Option<BTreeMap<i32, i64>> {
        lock(&self.consumer).topic_log_ends(timeout)
    }
}
