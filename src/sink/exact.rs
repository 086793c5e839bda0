//! `INTO TOPIC` for a single server: rows published from the store, in
//! Kafka transactions, exactly once.
//!
//! The sink never publishes what the engine emits; after each store commit
//! it reads the results table after its published cursor and sends those
//! rows, in write order, in one transaction (at most [`BATCH_ROWS`] each),
//! then advances its cursor in memory. Its producer's `transactional.id` is
//! derived from the query and the topic, so a restarted server's
//! `init_transactions` fences the previous one and aborts its open
//! transaction; the sink then reads the topic's tail (`read_committed`) for
//! the last cursor published ([`super::recover`]) and goes on from there.
//! Any publish error is handled the same way: drop the producer, wait
//! (backoff), start again from what the topic shows. The rows wait in the
//! store meanwhile, so nothing is lost and nothing is sent twice.
//!
//! A broker that refuses transactions gets an idempotent producer instead:
//! at-least-once, resuming from the start of the last batch seen on the
//! topic; consumers drop repeats by the `runnel-cursor` header.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::json_lines;
use super::recover::{self, AFTER_HEADER, CURSOR_HEADER, QUERY_HEADER};
use crate::connect::kafka::KafkaConn;
use crate::error::{Error, Result};
use crate::model::SinkStatus;
use crate::store::Store;

/// Most rows in one transaction.
pub const BATCH_ROWS: usize = 10_000;

const TXN_TIMEOUT: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Whether `init_transactions` failing with `code` means the broker does
/// not offer transactions (rather than a passing failure).
pub fn transactions_unsupported(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnsupportedFeature
            | RDKafkaErrorCode::UnsupportedVersion
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::InvalidTransactionTimeout
    )
}

/// A connected producer and the cursor after which rows are still to go.
struct Connected {
    producer: BaseProducer,
    transactional: bool,
    cursor: Option<i64>,
}

/// Publishes one query's results to a topic (see the module doc).
pub struct ExactSink {
    kafka: KafkaConn,
    query: String,
    topic: String,
    schema: SchemaRef,
    status: Arc<Mutex<SinkStatus>>,
    conn: Option<Connected>,
    /// Whether the store may hold rows not yet published.
    pending: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl ExactSink {
    /// A sink for `query`'s results on `topic`; it connects on first use.
    pub fn new(
        kafka: &KafkaConn,
        query: &str,
        topic: &str,
        schema: SchemaRef,
        status: Arc<Mutex<SinkStatus>>,
    ) -> Self {
        *status.lock().unwrap_or_else(|p| p.into_inner()) = SinkStatus {
            topic: topic.to_string(),
            ..Default::default()
        };
        ExactSink {
            kafka: kafka.clone(),
            query: query.to_string(),
            topic: topic.to_string(),
            schema,
            status,
            conn: None,
            // After a restart the store may hold rows the topic lacks.
            pending: true,
            retry_at: None,
            backoff: FIRST_BACKOFF,
        }
    }

    fn status(&self) -> MutexGuard<'_, SinkStatus> {
        lock(&self.status)
    }

    /// Notes that the store has new rows.
    pub fn mark_pending(&mut self) {
        self.pending = true;
    }

    /// Lets go of the producer (another server publishes now); the next
    /// [`drive`](Self::drive) fences it and goes on from what the topic shows.
    pub fn release(&mut self) {
        self.conn = None;
        self.pending = true;
    }

    /// Publishes whatever the store holds past the sink's cursor, unless
    /// waiting out a backoff. `Ok(Some(message))` when publishing failed and
    /// will be retried; `Err` only when it never can succeed.
    pub fn drive(&mut self, store: &Store) -> Result<Option<String>> {
        if !self.pending || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return Ok(self.status().error.clone());
        }
        match self.publish(store) {
            Ok(()) => {
                self.pending = false;
                self.retry_at = None;
                self.backoff = FIRST_BACKOFF;
                self.status().error = None;
                Ok(None)
            }
            Err(e) if is_permanent(&e) => Err(e),
            Err(e) => {
                // Start again from what the topic shows, with a new producer
                // (whose init aborts whatever the old one left open).
                self.conn = None;
                let message = match e {
                    Error::Execution(m) if m.starts_with("INTO TOPIC") => m,
                    e => format!("INTO TOPIC '{}': publishing failed: {e}", self.topic),
                };
                tracing::warn!(query = %self.query, retry_in = ?self.backoff, "{message}");
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                let mut s = self.status();
                s.errors += 1;
                s.error = Some(message.clone());
                Ok(Some(message))
            }
        }
    }

    fn publish(&mut self, store: &Store) -> Result<()> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        loop {
            let conn = self.conn.as_mut().expect("connected");
            let (batch, seqs) =
                store.rows_after(&self.query, conn.cursor, BATCH_ROWS, &self.schema)?;
            let Some(&last) = seqs.last() else {
                let mut s = lock(&self.status);
                s.lag_rows = 0;
                return Ok(());
            };
            lock(&self.status).store_cursor = Some(last);
            lock(&self.status).lag_rows = seqs.len() as u64;
            let lines = json_lines(&batch)?;
            let after = conn.cursor.map(|c| c.to_string());
            if conn.transactional {
                conn.producer.begin_transaction()?;
            }
            for (line, seq) in lines.iter().zip(&seqs) {
                let cursor = seq.to_string();
                let mut headers = OwnedHeaders::new()
                    .insert(Header {
                        key: QUERY_HEADER,
                        value: Some(self.query.as_str()),
                    })
                    .insert(Header {
                        key: CURSOR_HEADER,
                        value: Some(cursor.as_str()),
                    });
                if let Some(a) = &after {
                    headers = headers.insert(Header {
                        key: AFTER_HEADER,
                        value: Some(a.as_str()),
                    });
                }
                let record = BaseRecord::<(), [u8]>::to(&self.topic)
                    .payload(line)
                    .headers(headers);
                super::send(&conn.producer, record)?;
            }
            if conn.transactional {
                conn.producer.commit_transaction(TXN_TIMEOUT)?;
            } else {
                conn.producer.flush(TXN_TIMEOUT)?;
            }
            conn.cursor = Some(last);
            let mut s = lock(&self.status);
            s.published_cursor = Some(last);
            s.lag_rows = 0;
            s.rows_published += seqs.len() as u64;
        }
    }

    /// A producer that has fenced any previous one, and the cursor the topic
    /// shows as published.
    fn connect(&self) -> Result<Connected> {
        let base = |transactional: bool| {
            let mut c = self.kafka.config(&[]);
            c.set("linger.ms", "5")
                .set("enable.idempotence", "true")
                .set("message.timeout.ms", "30000");
            if transactional {
                c.set(
                    "transactional.id",
                    format!("runnel-{}-{}", self.query, self.topic),
                )
                .set("transaction.timeout.ms", "60000");
            }
            c
        };
        super::check_topic(&self.kafka, &self.topic)?;
        let producer: BaseProducer = base(true).create()?;
        let (producer, transactional) = match producer.init_transactions(TXN_TIMEOUT) {
            Ok(()) => (producer, true),
            Err(e) if e.rdkafka_error_code().is_some_and(transactions_unsupported) => {
                tracing::warn!(query = %self.query, topic = %self.topic, "the broker refuses transactions ({e}); publishing at-least-once");
                (base(false).create()?, false)
            }
            Err(e) => return Err(e.into()),
        };
        let last = recover::last_published(&self.kafka, &self.topic, &self.query, transactional)?;
        // Without transactions the last batch may be on the topic in part:
        // it is sent again whole.
        let cursor = match last {
            Some(p) if transactional => Some(p.cursor),
            Some(p) => p.after,
            None => None,
        };
        let mut s = self.status();
        s.mode = if transactional {
            "exactly_once"
        } else {
            "at_least_once"
        };
        s.published_cursor = last.map(|p| p.cursor);
        Ok(Connected {
            producer,
            transactional,
            cursor,
        })
    }
}

fn lock(s: &Mutex<SinkStatus>) -> MutexGuard<'_, SinkStatus> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Errors publishing can never get past: a topic name Kafka refuses.
fn is_permanent(e: &Error) -> bool {
    match e {
        Error::Kafka(k) => matches!(k.rdkafka_error_code(), Some(RDKafkaErrorCode::InvalidTopic)),
        Error::Execution(m) => m.contains("is not a valid Kafka topic name"),
        _ => false,
    }
}
