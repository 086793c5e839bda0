//! The single-server coordinator: this server reads every partition of the
//! stream, a window is final when this server's watermark passes it, and
//! rows, offsets and the engine's checkpoint are committed together in one
//! store transaction, with the late records the engine dropped since the
//! last commit (the query's late table). A Kafka stream's records are read
//! and decoded by a reader the server's queries over it share
//! ([`super::shared`]); a file's or a socket's one poll ahead on a thread
//! of the query's own ([`Prefetch`]). `INTO TOPIC` rows are published from
//! the store, exactly once ([`ExactSink`]).

use std::collections::BTreeMap;

use super::decode::{ChunkDecoder, Decoded};
use super::shared::{MAX_POLL, POLL_WAIT, Subscription};
use super::{Coordinator, QueryTask};
use crate::error::{Error, Result};
use crate::model::{Emission, SourceKind};
use crate::sink::exact::ExactSink;
use crate::source::file::allowed_file;
use crate::source::prefetch::Prefetch;
use crate::source::{Progress, Source};
use crate::window::WindowEngine;

/// One server running a query on its own.
#[derive(Default)]
pub struct Local {
    src: Option<Input>,
    sink: Option<ExactSink>,
}

/// Where a query's decoded records come from.
pub enum Input {
    /// A reader shared with the server's other queries over the stream.
    Shared(Box<Subscription>),
    /// A thread of the query's own.
    Own(Prefetch<Vec<Decoded>>),
}

impl Input {
    /// Reads `src` for `task` on a thread of the query's own (a Kafka
    /// stream the server's queries share is read through [`Input::kafka`]).
    pub fn open(task: &QueryTask, src: Source) -> Result<Input> {
        let mut decoder = ChunkDecoder::new(task)?;
        Ok(Input::Own(Prefetch::spawn(
            src,
            MAX_POLL,
            POLL_WAIT,
            move |chunks| decoder.decode_poll(&chunks),
        )))
    }

    /// Reads `task`'s Kafka stream from `saved` offsets (a cluster
    /// member's `share` of its partitions, or all): through a reader the
    /// server's queries share when they do — joining one needs no consumer
    /// of the query's own, see [`Readers::open`](super::shared::Readers::open)
    /// — else from the source `connect` makes. `None` when the query
    /// stopped first.
    pub fn kafka(
        task: &QueryTask,
        saved: &BTreeMap<i32, i64>,
        share: Option<Vec<i32>>,
        connect: impl FnOnce() -> Result<Option<Source>>,
    ) -> Result<Option<Input>> {
        match &task.readers {
            Some(readers) => Ok(readers
                .open(task, saved, share, connect)?
                .map(|sub| Input::Shared(Box::new(sub)))),
            None => connect()?.map(|src| Input::open(task, src)).transpose(),
        }
    }

    /// The next poll's decoded records (none after [`POLL_WAIT`]).
    pub fn poll(&mut self) -> Result<Vec<Decoded>> {
        match self {
            Input::Shared(s) => s.poll(POLL_WAIT),
            Input::Own(s) => Ok(s.poll(POLL_WAIT)?.unwrap_or_default()),
        }
    }

    /// The next offset to take per partition: what a commit saves.
    pub fn offsets(&self) -> &BTreeMap<i32, i64> {
        match self {
            Input::Shared(s) => s.offsets(),
            Input::Own(s) => s.offsets(),
        }
    }

    /// The source's progress as of the last poll.
    pub fn progress(&self) -> Progress {
        match self {
            Input::Shared(s) => s.progress(),
            Input::Own(s) => s.progress(),
        }
    }

    /// The partitions read.
    pub fn partitions(&self) -> Vec<i32> {
        match self {
            Input::Shared(s) => s.partitions(),
            Input::Own(s) => s.partitions().to_vec(),
        }
    }
}

impl Local {
    fn src(&self) -> &Input {
        self.src.as_ref().expect("started")
    }
}

impl Coordinator for Local {
    fn start(&mut self, task: &QueryTask, engine: &mut WindowEngine) -> Result<bool> {
        engine.save_incrementally();
        let saved = match task.store.load_checkpoint(&task.name)? {
            Some((offsets, state)) => {
                if !state.is_empty() {
                    let pieces = task.store.load_state_pieces(&task.name)?;
                    engine.restore_saved(&state, pieces).map_err(|e| {
                        Error::Execution(format!(
                            "{e}; the saved state was not resumed. Reset the query with POST /queries/{}/reset?from=earliest or ?from=latest",
                            task.name
                        ))
                    })?;
                }
                offsets
            }
            None => BTreeMap::new(),
        };
        let (client, start) = (task.client_id(), task.start_from());
        let connect = || {
            task.connect(|waiting| {
                Source::connect(&task.stream, &task.kafka, &client, start, &saved, waiting)
            })
        };
        let meet_the_others = || {
            if let Some(ticket) = &task.start_gate {
                ticket.wait(&task.stop);
            }
        };
        let src = if task.stream.source == SourceKind::Kafka {
            // Before connecting: a query joining a reader needs no consumer.
            meet_the_others();
            match Input::kafka(task, &saved, None, connect)? {
                Some(src) => src,
                None => return Ok(false),
            }
        } else {
            let Some(src) = connect()? else {
                return Ok(false);
            };
            if task.stream.source == SourceKind::File {
                let path = task.stream.options.get("path").map(String::as_str);
                allowed_file(path.unwrap_or(""), &task.allow_files, false)?;
            }
            meet_the_others();
            Input::open(task, src)?
        };
        engine.register_partitions(&src.partitions());
        if !task.late_retention.is_zero() {
            engine.keep_late_records();
        }
        self.src = Some(src);
        self.sink = task.exact_sink();
        Ok(true)
    }

    fn poll(
        &mut self,
        _task: &QueryTask,
        _engine: &mut WindowEngine,
    ) -> Result<Option<(Vec<Decoded>, Progress)>> {
        let src = self.src.as_mut().expect("started");
        let decoded = src.poll()?;
        Ok(Some((decoded, src.progress())))
    }

    fn commit(
        &mut self,
        task: &QueryTask,
        rt: &tokio::runtime::Runtime,
        engine: &mut WindowEngine,
        emitted: Vec<Emission>,
    ) -> Result<Vec<Emission>> {
        let saved = rt.block_on(engine.save())?;
        // Late records go with the offsets past them: a replay drops them
        // again only when this transaction did not commit.
        let late = engine.take_late(super::now_ms())?;
        let offsets = self.src().offsets();
        (task.store).commit_with_late(&task.name, &emitted, &late, offsets, &saved)?;
        if let Some(sink) = &mut self.sink
            && !emitted.is_empty()
        {
            sink.mark_pending();
        }
        task.metrics
            .set_state(engine.state_rows(), engine.open_windows(), saved.bytes());
        Ok(emitted)
    }

    fn keeps_late_records(&self) -> bool {
        true
    }

    fn publish(&mut self, task: &QueryTask, _written: &[Emission]) -> Result<()> {
        match &mut self.sink {
            Some(sink) => task.drive_sink(sink),
            None => Ok(()),
        }
    }

    fn pause(&mut self) {
        self.src = None;
        self.sink = None;
    }

    fn offsets(&self) -> BTreeMap<i32, i64> {
        self.src().offsets().clone()
    }
}
