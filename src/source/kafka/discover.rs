//! Partitions added to a topic while a source reads it. A thread of the
//! source's own asks the brokers for the topic's partitions every
//! [`DISCOVER_EVERY`], waiting up to 8 s (`ASK_AT_MOST`) for each answer, and
//! leaves what it learnt for the source's next poll, which assigns the new
//! ones from their beginning. Asking apart from the reading means brokers
//! that answer slowly (stalled, overloaded, far away) hold no poll up, and
//! added partitions are still found while every answer takes seconds.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::time::Duration;
//! # use rdkafka::consumer::BaseConsumer;
//! # fn demo(consumer: Arc<BaseConsumer<runnel::source::kafka::SourceContext>>) {
//! use runnel::source::kafka::discover::Discovery;
//! let discovery = Discovery::start(consumer, "clicks", Duration::from_secs(5));
//! // ... later, at a poll:
//! if let Some(layout) = discovery.take() {
//!     println!("the topic has partitions {:?}", layout.partitions);
//! }
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::{ASK_AT_MOST, SourceContext};

/// How often a source reading every partition looks for partitions added
/// to its topic.
pub const DISCOVER_EVERY: Duration = Duration::from_secs(5);

/// The asking thread of one source; it ends when this is dropped (at once
/// while it waits, after its answer while it asks).
pub struct Discovery {
    /// The topic's layout at the last answer not yet taken.
    found: Arc<Mutex<Option<Layout>>>,
    /// Wakes the thread to ask now; dropped, ends it.
    wake: Sender<()>,
}

impl Discovery {
    /// Starts asking for `topic`'s partitions through `consumer` every
    /// `every`.
    pub fn start(consumer: Arc<BaseConsumer<SourceContext>>, topic: &str, every: Duration) -> Self {
        let found = Arc::new(Mutex::new(None));
        let (wake, woken) = channel();
        let (into, topic) = (found.clone(), topic.to_string());
        let spawned = std::thread::Builder::new()
            .name(format!("discover-{topic}"))
            .spawn(move || ask(&consumer, &topic, every, &woken, &into));
        if let Err(e) = spawned {
            tracing::warn!("kafka: no thread to look for partitions added to the topic: {e}");
        }
        Discovery { found, wake }
    }

    /// The topic's partitions and their leaders, if the brokers answered
    /// since the last take.
    pub fn take(&self) -> Option<Layout> {
        self.found.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Asks at once instead of at the next period.
    pub fn ask_now(&self) {
        let _ = self.wake.send(());
    }
}

/// The thread: asks every `every` (or when woken) until its `Discovery` is
/// dropped.
fn ask(
    consumer: &BaseConsumer<SourceContext>,
    topic: &str,
    every: Duration,
    woken: &Receiver<()>,
    found: &Mutex<Option<Layout>>,
) {
    loop {
        match woken.recv_timeout(every) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        match consumer.fetch_metadata(Some(topic), ASK_AT_MOST) {
            Ok(md) => {
                let layout = layout_of(&md, topic);
                if !layout.partitions.is_empty() {
                    *found.lock().unwrap_or_else(|p| p.into_inner()) = Some(layout);
                }
            }
            Err(e) => tracing::debug!("kafka: metadata of {topic}: {e}"),
        }
    }
}

/// A topic's partitions and, per partition with a leader, the leader's
/// address (`host:port`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Layout {
    /// The partitions.
    pub partitions: Vec<i32>,
    /// Per partition, its leader's address.
    pub leaders: BTreeMap<i32, String>,
}

/// The layout of `topic` in a metadata answer (no partitions if it is
/// missing).
pub(super) fn layout_of(md: &rdkafka::metadata::Metadata, topic: &str) -> Layout {
    let brokers: BTreeMap<i32, String> = (md.brokers().iter())
        .map(|b| {
            let host = b.host();
            let addr = match host.contains(':') {
                true => format!("[{host}]:{}", b.port()),
                false => format!("{host}:{}", b.port()),
            };
            (b.id(), addr)
        })
        .collect();
    let partitions = (md.topics().iter())
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions());
    let mut layout = Layout::default();
    for p in partitions {
        layout.partitions.push(p.id());
        if let Some(addr) = brokers.get(&p.leader()) {
            layout.leaders.insert(p.id(), addr.clone());
        }
    }
    layout
}
