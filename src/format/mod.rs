//! Payload formats: decoding message bytes straight into Arrow batches.
//!
//! [`Decoder::for_format`] picks the decoder of a stream's `format`:
//! [`json`], [`access_log`], [`csv`] or [`lines`].

pub mod access_log;
mod columns;
pub mod csv;
pub mod encode;
pub mod json;
pub mod lines;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

use crate::model::Format;

use access_log::AccessLogDecoder;
use csv::CsvDecoder;
use json::JsonDecoder;
use lines::LinesDecoder;

/// Runs `record` on each payload, collecting the failures as bad records
/// with `reason`; formats that decode one row per message share this loop.
pub(crate) fn decode_each(
    payloads: &[&[u8]],
    reason: &'static str,
    mut record: impl FnMut(&[u8]) -> Result<(), String>,
) -> Vec<BadRecord> {
    payloads
        .iter()
        .enumerate()
        .filter_map(|(index, p)| {
            record(p).err().map(|detail| BadRecord {
                index,
                reason,
                detail,
            })
        })
        .collect()
}

/// Reason of a record used despite fields that are not columns: it is
/// counted and sampled like a bad record, but not dropped.
pub const UNKNOWN_FIELD: &str = "unknown_field";

/// Reason of a record used although its event time is decades before the
/// wall clock: most likely seconds read as milliseconds.
pub const EVENT_TIME_DECADES_OLD: &str = "event_time_decades_old";

/// Whether records noted with `reason` are still used (see [`UNKNOWN_FIELD`]).
pub fn is_kept(reason: &str) -> bool {
    reason == UNKNOWN_FIELD || reason == EVENT_TIME_DECADES_OLD
}

/// Why a record could not be used, or (for [`UNKNOWN_FIELD`]) what was
/// ignored in a record that was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// Index of the record in the decoded slice.
    pub index: usize,
    /// Reason code, e.g. `invalid_json`.
    pub reason: &'static str,
    /// Details for the error sample.
    pub detail: String,
}

/// A decoder of one payload format into batches of a fixed schema.
///
/// ```
/// use std::sync::Arc;
/// use datafusion::arrow::datatypes::{DataType, Field, Schema};
/// use runnel::format::Decoder;
/// use runnel::model::Format;
/// let schema = Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, true)]));
/// let mut d = Decoder::for_format(Format::Lines, schema).unwrap();
/// let (batch, bad) = d.decode(&[b"a b c".as_slice()]);
/// assert_eq!(batch.unwrap().num_rows(), 1);
/// assert!(bad.is_empty());
/// ```
pub enum Decoder {
    /// `format = 'json'`.
    Json(JsonDecoder),
    /// `format = 'access_log'`.
    AccessLog(Box<AccessLogDecoder>),
    /// `format = 'csv'`.
    Csv(CsvDecoder),
    /// `format = 'lines'`.
    Lines(LinesDecoder),
}

impl Decoder {
    /// The decoder of `format` for records of `schema`; an error when the
    /// schema does not suit the format (see [`check_schema`]).
    pub fn for_format(format: Format, schema: SchemaRef) -> Result<Decoder, ArrowError> {
        Ok(match format {
            Format::Json => Decoder::Json(JsonDecoder::new(schema)?),
            Format::AccessLog => Decoder::AccessLog(Box::new(AccessLogDecoder::new(schema)?)),
            Format::Csv => Decoder::Csv(CsvDecoder::new(schema)?),
            Format::Lines => Decoder::Lines(LinesDecoder::new(schema)?),
        })
    }

    /// Like [`for_format`](Self::for_format), but only the columns at indices
    /// `read` need values (the others may be all NULL); formats that cannot
    /// skip columns decode them all.
    pub fn with_projection(
        format: Format,
        schema: SchemaRef,
        read: &[usize],
    ) -> Result<Decoder, ArrowError> {
        match format {
            Format::Json => Ok(Decoder::Json(JsonDecoder::with_projection(schema, read)?)),
            _ => Self::for_format(format, schema),
        }
    }

    /// The schema of decoded batches.
    pub fn schema(&self) -> &SchemaRef {
        match self {
            Decoder::Json(d) => d.schema(),
            Decoder::AccessLog(d) => d.schema(),
            Decoder::Csv(d) => d.schema(),
            Decoder::Lines(d) => d.schema(),
        }
    }

    /// Decodes `payloads`, returning the batch of good records (in order, one
    /// row per good payload) and the bad ones, by index; the notes on kept
    /// records (see [`is_kept`]) are among the bad ones but their rows are in
    /// the batch.
    pub fn decode(&mut self, payloads: &[&[u8]]) -> (Option<RecordBatch>, Vec<BadRecord>) {
        if payloads.is_empty() {
            return (None, vec![]);
        }
        match self {
            Decoder::Json(d) => d.decode(payloads),
            Decoder::AccessLog(d) => d.decode(payloads),
            Decoder::Csv(d) => d.decode(payloads),
            Decoder::Lines(d) => d.decode(payloads),
        }
    }
}

/// Checks that a stream of `schema` can be decoded as `format`, e.g. that an
/// access log stream only declares access log columns; the error says why not.
pub fn check_schema(format: Format, schema: SchemaRef) -> Result<(), String> {
    Decoder::for_format(format, schema)
        .map(|_| ())
        .map_err(|e| match e {
            ArrowError::InvalidArgumentError(m) => m,
            e => e.to_string(),
        })
}
