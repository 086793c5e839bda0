//! CSV payloads (`format = 'csv'`): one record per message, its fields in the
//! order the columns are declared.
//!
//! Fields are separated by commas and may be double-quoted (RFC 4180: a quote
//! inside a quoted field is written twice; quoted fields may hold commas and
//! newlines). An empty field is NULL, except that `""` is an empty string in a
//! TEXT column. Numbers and booleans may be surrounded by spaces; TIMESTAMP
//! fields take epoch milliseconds, RFC 3339 or `YYYY-MM-DD HH:MM:SS`. A record
//! with the wrong number of fields or a value that does not parse as its
//! column's type is a bad record with reason `invalid_csv`.
//!
//! ```
//! use std::sync::Arc;
//! use datafusion::arrow::datatypes::{DataType, Field, Schema};
//! use runnel::format::csv::CsvDecoder;
//! let schema = Arc::new(Schema::new(vec![
//!     Field::new("name", DataType::Utf8, true),
//!     Field::new("n", DataType::Int64, true),
//! ]));
//! let mut d = CsvDecoder::new(schema).unwrap();
//! let (batch, bad) = d.decode(&[b"\"a, b\",1".as_slice(), b"c,x", b"d"]);
//! assert_eq!(batch.unwrap().num_rows(), 1);
//! assert_eq!(bad.len(), 2);
//! ```

use std::ops::Range;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

use super::BadRecord;
use super::columns::{Rows, Value};

/// Reason code of a record that does not fit the declared columns.
pub const INVALID: &str = "invalid_csv";

/// Decodes CSV records into batches of a fixed schema.
pub struct CsvDecoder {
    rows: Rows,
    /// The current record's unquoted fields, one after another.
    buf: String,
    /// Each field's range in `buf` and whether it was quoted.
    fields: Vec<(Range<usize>, bool)>,
    values: Vec<Value>,
}

impl CsvDecoder {
    /// A decoder for records with the columns of `schema`, in order.
    pub fn new(schema: SchemaRef) -> Result<Self, ArrowError> {
        Ok(CsvDecoder {
            rows: Rows::new(schema)?,
            buf: String::new(),
            fields: Vec::new(),
            values: Vec::new(),
        })
    }

    /// The schema of decoded batches.
    pub fn schema(&self) -> &SchemaRef {
        self.rows.schema()
    }

    /// Decodes `payloads`, returning the batch of good records (in order) and the bad ones.
    pub fn decode(&mut self, payloads: &[&[u8]]) -> (Option<RecordBatch>, Vec<BadRecord>) {
        let bad = super::decode_each(payloads, INVALID, |p| self.record(p));
        (self.rows.finish(), bad)
    }

    fn record(&mut self, payload: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(payload).map_err(|e| format!("not UTF-8: {e}"))?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        self.split(text)?;
        let columns = self.rows.columns();
        if self.fields.len() != columns.len() {
            return Err(format!(
                "{} fields; expected {}",
                self.fields.len(),
                columns.len()
            ));
        }
        self.values.clear();
        for ((c, (r, quoted)), f) in columns
            .iter()
            .zip(&self.fields)
            .zip(self.rows.schema().fields())
        {
            let v = c
                .convert(&self.buf, r.clone(), *quoted)
                .map_err(|e| format!("column {}: {e}", f.name()))?;
            self.values.push(v);
        }
        self.rows.push(&self.buf, &self.values);
        Ok(())
    }

    /// Splits `text` into fields, unquoting them into `buf`.
    fn split(&mut self, text: &str) -> Result<(), String> {
        self.buf.clear();
        self.fields.clear();
        let mut rest = text;
        loop {
            let start = self.buf.len();
            let quoted = rest.starts_with('"');
            if quoted {
                rest = &rest[1..];
                loop {
                    let q = rest
                        .find('"')
                        .ok_or_else(|| "unterminated quoted field".to_string())?;
                    self.buf.push_str(&rest[..q]);
                    rest = &rest[q + 1..];
                    if let Some(r) = rest.strip_prefix('"') {
                        self.buf.push('"');
                        rest = r;
                    } else {
                        break;
                    }
                }
                if !(rest.is_empty() || rest.starts_with(',')) {
                    return Err("text after a closing quote".into());
                }
            } else {
                let end = rest.find(',').unwrap_or(rest.len());
                let field = &rest[..end];
                if field.contains('"') {
                    return Err("quote inside an unquoted field".into());
                }
                self.buf.push_str(field);
                rest = &rest[end..];
            }
            self.fields.push((start..self.buf.len(), quoted));
            match rest.strip_prefix(',') {
                Some(r) => rest = r,
                None => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{
        DataType, Field, Float64Type, Int32Type, Schema, TimeUnit, TimestampMillisecondType,
    };
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("name", DataType::Utf8, true),
            Field::new("n", DataType::Int32, true),
            Field::new("x", DataType::Float64, true),
        ]))
    }

    #[test]
    fn fields_in_declared_order_with_quotes() {
        let mut d = CsvDecoder::new(schema()).unwrap();
        let (b, bad) = d.decode(&[
            b"1000,plain,1,0.5".as_slice(),
            b"1970-01-01T00:00:02Z,\"with, comma\",2,1e3\n",
            b"1970-01-01 00:00:03,\"say \"\"hi\"\"\", 3 ,\r\n",
            b",\"\",,",
            b",,,",
            "4000,caf\u{e9},4,-1".as_bytes(),
        ]);
        assert!(bad.is_empty(), "{bad:?}");
        let b = b.unwrap();
        let ts = b.column(0).as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.value(0), 1000);
        assert_eq!(ts.value(1), 2000);
        assert_eq!(ts.value(2), 3000);
        assert!(ts.is_null(3));
        let name = b.column(1).as_string::<i32>();
        assert_eq!(name.value(0), "plain");
        assert_eq!(name.value(1), "with, comma");
        assert_eq!(name.value(2), "say \"hi\"");
        assert_eq!(name.value(3), "");
        assert!(name.is_null(4));
        assert_eq!(name.value(5), "caf\u{e9}");
        let n = b.column(2).as_primitive::<Int32Type>();
        assert_eq!(n.value(2), 3);
        assert!(n.is_null(3));
        let x = b.column(3).as_primitive::<Float64Type>();
        assert_eq!(x.value(1), 1000.0);
        assert!(x.is_null(2));
        assert_eq!(x.value(5), -1.0);
    }

    #[test]
    fn bad_records_are_isolated() {
        let mut d = CsvDecoder::new(schema()).unwrap();
        let payloads: Vec<&[u8]> = vec![
            b"1,a,1,1",
            b"2,b,1",
            b"3,c,1,1,1",
            b"4,d,one,1",
            b"5,\"e,1,1",
            b"6,f\"g,1,1",
            b"7,\"h\"x,1,1",
            b"later,i,1,1",
            b"\xff,j,1,1",
            b"8,k,2147483648,1",
            b"",
            b"9,l,2,2",
        ];
        let (b, bad) = d.decode(&payloads);
        let b = b.unwrap();
        let ts = b.column(0).as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.values().to_vec(), vec![1, 9]);
        let idx: Vec<usize> = bad.iter().map(|b| b.index).collect();
        assert_eq!(idx, (1..=10).collect::<Vec<_>>());
        assert!(bad.iter().all(|b| b.reason == INVALID));
        assert!(bad[0].detail.contains("3 fields; expected 4"), "{bad:?}");
        assert!(bad[2].detail.contains("column n"), "{bad:?}");
        // The decoder is reusable after a batch with bad records.
        let (b, bad) = d.decode(&[b"10,m,3,3".as_slice()]);
        assert!(bad.is_empty());
        assert_eq!(b.unwrap().num_rows(), 1);
        assert_eq!(d.decode(&[b"x".as_slice()]).0, None);
    }
}
