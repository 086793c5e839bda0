//! Plain text payloads (`format = 'lines'`): each message is one row whose
//! first TEXT column holds the whole message (a trailing `\n` or `\r\n`
//! removed); the other columns are NULL. A message is never split, so a
//! message holding several lines is one row. A message that is not UTF-8 is
//! a bad record with reason `invalid_utf8`.
//!
//! ```
//! use std::sync::Arc;
//! use datafusion::arrow::datatypes::{DataType, Field, Schema};
//! use runnel::format::lines::LinesDecoder;
//! let schema = Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, true)]));
//! let mut d = LinesDecoder::new(schema).unwrap();
//! let (batch, bad) = d.decode(&[b"to be or not to be\n".as_slice(), b"\xff"]);
//! assert_eq!(batch.unwrap().num_rows(), 1);
//! assert_eq!(bad[0].reason, "invalid_utf8");
//! ```

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringBuilder, new_null_array};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

use super::BadRecord;

/// Reason code of a message that is not text.
pub const INVALID: &str = "invalid_utf8";

/// Decodes whole messages into one text column.
pub struct LinesDecoder {
    schema: SchemaRef,
    column: usize,
    builder: StringBuilder,
}

impl LinesDecoder {
    /// A decoder filling the first TEXT column of `schema`; an error when it has none.
    pub fn new(schema: SchemaRef) -> Result<Self, ArrowError> {
        let column = schema
            .fields()
            .iter()
            .position(|f| f.data_type() == &DataType::Utf8)
            .ok_or_else(|| {
                ArrowError::InvalidArgumentError(
                    "format 'lines' needs a TEXT column for the line".into(),
                )
            })?;
        Ok(LinesDecoder {
            schema,
            column,
            builder: StringBuilder::new(),
        })
    }

    /// The schema of decoded batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes `payloads`, returning the batch of text messages (in order) and the others.
    pub fn decode(&mut self, payloads: &[&[u8]]) -> (Option<RecordBatch>, Vec<BadRecord>) {
        let mut bad = Vec::new();
        for (index, p) in payloads.iter().enumerate() {
            match std::str::from_utf8(p) {
                Ok(text) => {
                    let text = text.strip_suffix('\n').unwrap_or(text);
                    let text = text.strip_suffix('\r').unwrap_or(text);
                    self.builder.append_value(text);
                }
                Err(e) => bad.push(BadRecord {
                    index,
                    reason: INVALID,
                    detail: format!("message is not UTF-8: {e}"),
                }),
            }
        }
        let lines = self.builder.finish();
        let n = lines.len();
        if n == 0 {
            return (None, bad);
        }
        let lines: ArrayRef = Arc::new(lines);
        let columns = self
            .schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if i == self.column {
                    lines.clone()
                } else {
                    new_null_array(f.data_type(), n)
                }
            })
            .collect();
        let batch = RecordBatch::try_new(self.schema.clone(), columns).expect("columns match");
        (Some(batch), bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};

    #[test]
    fn whole_message_in_first_text_column() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("line", DataType::Utf8, true),
            Field::new("other", DataType::Utf8, true),
        ]));
        let mut d = LinesDecoder::new(schema).unwrap();
        let (b, bad) = d.decode(&[
            b"hello world\n".as_slice(),
            b"\xc3(",
            b"",
            b"two\nlines\r\n",
        ]);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].index, 1);
        let b = b.unwrap();
        let line = b.column(1).as_string::<i32>();
        assert_eq!(line.len(), 3);
        assert_eq!(line.value(0), "hello world");
        assert_eq!(line.value(1), "");
        assert_eq!(line.value(2), "two\nlines");
        assert_eq!(b.column(0).null_count(), 3);
        assert_eq!(b.column(2).null_count(), 3);
        assert_eq!(d.decode(&[b"\xff".as_slice()]).0, None);
    }

    #[test]
    fn needs_a_text_column() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        assert!(LinesDecoder::new(schema).is_err());
    }
}
