//! A declared stream: where its records come from, how they are encoded,
//! which column is event time, and what bad records and lost offsets do.

use std::collections::BTreeMap;

use datafusion::arrow::datatypes::{DataType, Field};
use serde::{Deserialize, Serialize};

/// Where a stream's records come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A Kafka topic.
    Kafka,
    /// Newline-delimited records read from a TCP server (`host`, `port`).
    Socket,
    /// A file's lines, followed as it grows (`path`).
    File,
}

/// Where a new query starts reading when it has no saved offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The oldest retained record.
    Earliest,
    /// Only records produced after the query starts.
    Latest,
}

/// What a malformed record does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Count it, keep a sample, and go on.
    Skip,
    /// Stop the query with an error naming the record.
    Fail,
}

/// What a query does when the offset it must read next is no longer in the
/// log (records deleted by retention, a topic recreated, a broker that came
/// back empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnOffsetLoss {
    /// Stop the query with a status naming the partition, the saved offset
    /// and the log's range.
    Fail,
    /// Go on from the log's first record, counting the records skipped.
    Earliest,
    /// Go on from the log's end, counting the records skipped.
    Latest,
}

/// Default `max_future`: one hour.
pub const DEFAULT_MAX_FUTURE_MS: i64 = 3_600_000;

/// Payload formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One JSON object per message.
    Json,
    /// One Apache/NCSA common or combined log line per message.
    AccessLog,
    /// One CSV record per message, fields in column order.
    Csv,
    /// The whole message as the first TEXT column.
    Lines,
}

/// A declared stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamDef {
    /// Stream name (lower case).
    pub name: String,
    /// Declared columns.
    pub columns: Vec<ColumnDef>,
    /// Source kind.
    pub source: SourceKind,
    /// Kafka topic (empty for socket and file streams).
    pub topic: String,
    /// Payload format.
    pub format: Format,
    /// Event-time column; arrival time when absent.
    pub event_time: Option<String>,
    /// Watermark delay in ms.
    pub watermark_delay_ms: i64,
    /// Starting position.
    pub start: StartFrom,
    /// Broker list overriding the server default.
    pub brokers: Option<String>,
    /// What a bad record does to the queries reading the stream.
    pub on_error: OnError,
    /// Records stamped further than this ahead of the wall clock are bad (ms).
    pub max_future_ms: i64,
    /// What losing the saved offset does.
    pub on_offset_loss: OnOffsetLoss,
    /// All options as written.
    pub options: BTreeMap<String, String>,
}

/// A declared column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDef {
    /// Column name (lower case).
    pub name: String,
    /// SQL type as written.
    pub sql_type: String,
    /// Arrow type.
    pub data_type: DataType,
}

impl StreamDef {
    /// How numbers in the event-time column become milliseconds, from
    /// `event_time_unit`: (multiply by, divide by); `None` for milliseconds.
    pub fn event_time_scale(&self) -> Option<(i64, i64)> {
        match self.options.get("event_time_unit").map(String::as_str) {
            Some("s") => Some((1000, 1)),
            Some("us") => Some((1, 1000)),
            _ => None,
        }
    }

    /// The index of the event-time column among the declared columns;
    /// `None` when records take their arrival time (or the column named is
    /// not declared, which creating the stream refuses).
    pub fn event_time_index(&self) -> Option<usize> {
        let name = self.event_time.as_ref()?;
        self.columns.iter().position(|c| &c.name == name)
    }

    /// The arrow fields of the declared columns.
    pub fn fields(&self) -> Vec<Field> {
        self.columns
            .iter()
            .map(|c| Field::new(&c.name, c.data_type.clone(), true))
            .collect()
    }
}
