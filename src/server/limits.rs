//! Bounded work per request: the memory pull queries and roll-ups may use
//! together (`--pull-memory`), the rows one pull query may return
//! (`--pull-rows`), the stored windows one roll-up may merge, and the
//! server-sent-event connections open at once (`--max-sse`).
//!
//! Pull queries run on one DataFusion runtime whose memory pool has the
//! configured size and no disk to spill to; the results tables they read
//! and the answers they build are reserved in the same pool. Going over a
//! limit is a `422 limit_exceeded` naming it; a full set of event streams
//! is a `503 busy` with `Retry-After`.
//!
//! The limits themselves are configuration ([`crate::config::limits`]).

use std::num::NonZeroUsize;
use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::dataframe::DataFrame;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryPool, MemoryReservation, TrackConsumersPool,
};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use crate::config::limits::Limits;
use crate::error::{Error, Result};

/// Most of a query's windows one roll-up request may span or merge.
pub const MAX_ROLLUP_WINDOWS: i64 = 100_000;

/// Rows read from a results table per page while loading it for a pull query.
const LOAD_PAGE_ROWS: usize = 8192;

/// The limits in force, with the shared memory pool and event-stream slots.
pub struct Guards {
    limits: Limits,
    runtime: Arc<RuntimeEnv>,
    sse: Arc<Semaphore>,
}

impl Guards {
    /// The pool and slots of `limits`.
    pub fn new(limits: Limits) -> Result<Self> {
        let pool: Arc<dyn MemoryPool> = Arc::new(TrackConsumersPool::new(
            GreedyMemoryPool::new(limits.pull_memory as usize),
            NonZeroUsize::new(3).expect("non-zero"),
        ));
        // No spilling: a pull query's work stays within its memory, and
        // never fills the disk instead.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()?;
        Ok(Guards {
            limits,
            runtime,
            sse: Arc::new(Semaphore::new(limits.max_sse)),
        })
    }

    /// A context for one pull query, on the bounded pool.
    pub fn context(&self) -> SessionContext {
        // A sort sets this much aside to merge spills; none happen here, so a
        // small pool need not give up 10 MB of itself to every sort.
        let reserve = (self.limits.pull_memory as usize / 16).min(10 << 20);
        let config = SessionConfig::new().with_sort_spill_reservation_bytes(reserve);
        crate::plan::new_context_on(config, self.runtime.clone())
    }

    /// A reservation named `what` in the pull pool.
    pub fn reservation(&self, what: &str) -> MemoryReservation {
        MemoryConsumer::new(what).register(&self.runtime.memory_pool)
    }

    /// Reserves `batch`'s memory in `r`, or says which limit it would break.
    pub fn admit(&self, r: &mut MemoryReservation, batch: &RecordBatch) -> Result<()> {
        r.try_grow(batch.get_array_memory_size())
            .map_err(|e| self.explain(e.into()))
    }

    /// Names the limit a [`Error::LimitExceeded`] from the pool broke.
    pub fn explain(&self, e: Error) -> Error {
        match e {
            Error::LimitExceeded(detail) => {
                // DataFusion lists the pool's top consumers first; the last
                // line says what failed to get how much.
                let detail = detail.rsplit("Error: ").next().unwrap_or(&detail);
                Error::LimitExceeded(format!(
                    "the query needs more memory than pull queries may use together \
                     ({}, --pull-memory): narrow it with WHERE or LIMIT, or raise \
                     --pull-memory ({})",
                    self.limits.memory(),
                    detail.trim()
                ))
            }
            e => e,
        }
    }

    /// Refuses an answer of more than `--pull-rows` rows.
    pub fn check_rows(&self, rows: usize) -> Result<()> {
        match rows > self.limits.pull_rows {
            true => Err(Error::LimitExceeded(format!(
                "the answer has more than {} rows, the most a pull query returns (--pull-rows): \
                 add LIMIT or narrow it with WHERE",
                self.limits.pull_rows
            ))),
            false => Ok(()),
        }
    }

    /// Runs `df`, holding its answer in the pool and stopping as soon as it
    /// has more rows than `--pull-rows`.
    pub async fn collect(&self, df: DataFrame) -> Result<Vec<RecordBatch>> {
        let mut answer = self.reservation("pull query answer");
        let mut stream = df
            .execute_stream()
            .await
            .map_err(|e| self.explain(e.into()))?;
        let (mut out, mut rows) = (Vec::new(), 0);
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| self.explain(e.into()))?;
            rows += batch.num_rows();
            self.check_rows(rows)?;
            self.admit(&mut answer, &batch)?;
            out.push(batch);
        }
        Ok(out)
    }

    /// Loads results table `query` page by page, reserving each page in `r`.
    pub fn load_results(
        &self,
        store: &crate::store::Store,
        query: &str,
        schema: &datafusion::arrow::datatypes::SchemaRef,
        r: &mut MemoryReservation,
    ) -> Result<Vec<RecordBatch>> {
        store.load_results_paged(query, schema, LOAD_PAGE_ROWS, |b| self.admit(r, b))
    }

    /// A slot for one event stream, held until the stream ends.
    pub fn sse_slot(&self) -> Result<OwnedSemaphorePermit> {
        self.sse.clone().try_acquire_owned().map_err(|_| {
            Error::Busy(format!(
                "this server already serves {} event streams, its most (--max-sse); retry later",
                self.limits.max_sse
            ))
        })
    }
}
