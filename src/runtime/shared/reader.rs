//! A reader's thread ([`Reader::run`]): polls the stream, decodes each
//! poll once for every subscriber and hands it out; widens kept polls for
//! a query that reads a column they lack; hands its subscribers to
//! another reader it has caught up with, and ends when none is left or
//! the source fails.

use std::sync::Arc;
use std::sync::mpsc::SyncSender;

use super::{Delivery, Inner, MAX_POLL, POLL_WAIT, Poll, Reader, Readers, can_serve, lock};
use crate::error::Result;
use crate::runtime::decode::{DecodedChunk, StreamDecoder};
use crate::source::{Chunk, Source};
use crate::window::{SharedFilters, WindowMemo};

impl Reader {
    /// Polls, decodes and hands out until no subscriber is left, the
    /// reader has handed its subscribers to another, or the source fails.
    pub(super) fn run(self: Arc<Self>, readers: &Readers, mut src: Source) {
        let mut decoder: Option<StreamDecoder> = None;
        loop {
            let chunks = match src.poll(MAX_POLL, POLL_WAIT) {
                Ok(chunks) => chunks,
                Err(e) => return self.fail(readers, e.to_string()),
            };
            // Joining waits while a poll is decoded: a query joins either
            // before it (and receives it) or after it is kept.
            let records = chunks.iter().map(|c| c.len()).sum();
            let (poll, subs) = {
                let mut inner = lock(&self.inner);
                let rewound: Vec<i32> = (src.offsets().iter())
                    .filter(|(p, at)| inner.position.get(p).is_some_and(|was| *at < was))
                    .map(|(p, _)| *p)
                    .collect();
                inner.position = src.offsets().clone();
                inner.partitions = src.partitions();
                let mut columns: Vec<usize> =
                    inner.subs.iter().flat_map(|s| s.columns.clone()).collect();
                columns.sort_unstable();
                columns.dedup();
                let decoded = match self.decode(&mut decoder, &inner.filters, &columns, &chunks) {
                    Ok(d) => d,
                    Err(e) => {
                        drop(inner);
                        return self.fail(readers, e.to_string());
                    }
                };
                let poll = Arc::new(Poll {
                    chunks: decoded,
                    raw: Arc::new(chunks),
                    records,
                    columns,
                    ends: src.offsets().clone(),
                    rewound,
                    progress: src.progress(),
                });
                inner.keep(&poll, self.keep);
                let subs: Vec<(u64, SyncSender<Delivery>)> =
                    inner.subs.iter().map(|s| (s.id, s.tx.clone())).collect();
                (poll, subs)
            };
            let gone: Vec<u64> = subs
                .into_iter()
                .filter(|(_, tx)| tx.send(Ok(poll.clone())).is_err())
                .map(|(id, _)| id)
                .collect();
            if !gone.is_empty() {
                lock(&self.inner).drop_subs(&gone);
            }
            if self.close_if_idle(readers) || self.hand_over(readers) {
                return;
            }
        }
    }

    /// Decodes `chunks` with a decoder of `columns` (made again when the
    /// columns changed: the subscribers', or a kept poll widened), each
    /// batch's memo reading the subscribers' shared `filters`.
    fn decode(
        &self,
        decoder: &mut Option<StreamDecoder>,
        filters: &Arc<SharedFilters>,
        columns: &[usize],
        chunks: &[Chunk],
    ) -> Result<Vec<DecodedChunk>> {
        if decoder.as_ref().is_none_or(|d| d.columns() != columns) {
            *decoder = Some(StreamDecoder::new(
                &self.stream,
                self.stats.clone(),
                columns,
            )?);
        }
        let mut decoded = decoder.as_mut().expect("made").decode_poll(chunks)?;
        for batch in decoded.iter_mut().filter_map(|c| c.batch.as_mut()) {
            batch.windows = WindowMemo::new(filters.clone());
        }
        Ok(decoded)
    }

    /// Decodes again, as read, the kept polls that lack one of `columns`,
    /// with those columns added: once per new column, for the query joining
    /// now and any later one.
    pub(super) fn widen(&self, inner: &mut Inner, columns: &[usize]) -> Result<()> {
        let mut decoder: Option<StreamDecoder> = None;
        for kept in inner.recent.iter_mut() {
            if columns.iter().all(|c| kept.columns.contains(c)) {
                continue;
            }
            let mut wider: Vec<usize> = kept.columns.iter().chain(columns).copied().collect();
            wider.sort_unstable();
            wider.dedup();
            let chunks = self.decode(&mut decoder, &inner.filters, &wider, &kept.raw)?;
            *kept = Arc::new(Poll {
                chunks,
                raw: kept.raw.clone(),
                records: kept.records,
                columns: wider,
                ends: kept.ends.clone(),
                rewound: kept.rewound.clone(),
                progress: kept.progress.clone(),
            });
        }
        Ok(())
    }

    /// Ends the reader when nothing is subscribed: removed from `readers`
    /// first, so no query joins it meanwhile.
    fn close_if_idle(self: &Arc<Self>, readers: &Readers) -> bool {
        let mut all = lock(&readers.readers);
        let mut inner = lock(&self.inner);
        if !inner.subs.is_empty() {
            return false;
        }
        inner.closed = true;
        all.retain(|r| !Arc::ptr_eq(r, self));
        true
    }

    /// Hands every subscriber to another reader of the stream that can
    /// serve this reader's position, and ends: the end of a catch-up.
    fn hand_over(self: &Arc<Self>, readers: &Readers) -> bool {
        let mut all = lock(&readers.readers);
        let mut inner = lock(&self.inner);
        let other = all.iter().find(|r| {
            !Arc::ptr_eq(r, self) && r.stream == self.stream && r.share == self.share && {
                let o = lock(&r.inner);
                // Queries handed over take no kept polls: from its position.
                !o.closed && can_serve(&o.position, &o.position, r.start, &inner.position)
            }
        });
        let Some(other) = other else {
            return false;
        };
        tracing::info!(stream = %self.stream.name, subscribers = inner.subs.len(), "a reader caught up with another and handed its queries over");
        lock(&other.inner).adopt(&mut inner.subs);
        inner.closed = true;
        all.retain(|r| !Arc::ptr_eq(r, self));
        true
    }

    /// Ends the reader with an error every subscriber receives.
    pub(super) fn fail(self: &Arc<Self>, readers: &Readers, error: String) {
        let mut all = lock(&readers.readers);
        let mut inner = lock(&self.inner);
        inner.closed = true;
        all.retain(|r| !Arc::ptr_eq(r, self));
        drop(all);
        for sub in inner.subs.drain(..) {
            let _ = sub.tx.send(Err(error.clone()));
        }
    }
}
