//! JSON payloads decoded with arrow-json's tape decoder.
//!
//! All payloads of a poll are pushed through one decoder into one
//! `RecordBatch`; no `serde_json::Value` is built per record. A payload that
//! is not exactly one JSON object, or whose values do not fit the declared
//! types, is reported as a [`BadRecord`] and the rest still decode.
//!
//! ```
//! use std::sync::Arc;
//! use datafusion::arrow::datatypes::{DataType, Field, Schema};
//! use runnel::format::json::JsonDecoder;
//! let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
//! let mut d = JsonDecoder::new(schema).unwrap();
//! let (batch, bad) = d.decode(&[b"{\"n\": 1}".as_slice(), b"oops", b"{\"n\": 3}"]);
//! assert_eq!(batch.unwrap().num_rows(), 2);
//! assert_eq!(bad[0].index, 1);
//! ```

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

use arrow_json::reader::{Decoder, ReaderBuilder};

use super::BadRecord;

/// Decodes JSON payloads into batches of a fixed schema.
pub struct JsonDecoder {
    schema: SchemaRef,
    decoder: Decoder,
}

const MAX_ROWS: usize = 1 << 20;

fn build(schema: &SchemaRef) -> Result<Decoder, ArrowError> {
    ReaderBuilder::new(schema.clone())
        .with_batch_size(MAX_ROWS)
        .with_coerce_primitive(true)
        .build_decoder()
}

fn classify(e: &ArrowError) -> &'static str {
    let m = e.to_string();
    if m.contains("utf-8") || m.contains("UTF-8") || m.contains("utf8") {
        "invalid_utf8"
    } else if m.contains("Error while parsing value")
        || m.contains("Failed to parse")
        || m.contains("expected") && m.contains("got")
    {
        "wrong_type"
    } else {
        "invalid_json"
    }
}

impl JsonDecoder {
    /// A decoder for records of `schema`; unknown fields are ignored, missing ones are NULL.
    pub fn new(schema: SchemaRef) -> Result<Self, ArrowError> {
        let decoder = build(&schema)?;
        Ok(JsonDecoder { schema, decoder })
    }

    /// The schema of decoded batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn reset(&mut self) {
        self.decoder = build(&self.schema).expect("decoder was built before");
    }

    /// Pushes one payload; Ok when it held exactly one JSON object.
    fn push(&mut self, payload: &[u8]) -> Result<(), (&'static str, String)> {
        if payload.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(("empty", "empty message".into()));
        }
        let before = self.decoder.len();
        let used = self
            .decoder
            .decode(payload)
            .map_err(|e| (classify(&e), e.to_string()))?;
        // A trailing newline closes a value the decoder may still be waiting on.
        if used == payload.len() {
            self.decoder
                .decode(b"\n")
                .map_err(|e| (classify(&e), e.to_string()))?;
        }
        if self.decoder.has_partial_record() {
            return Err(("invalid_json", "truncated JSON value".into()));
        }
        match self.decoder.len() - before {
            1 => Ok(()),
            0 => Err(("invalid_json", "no JSON object in message".into())),
            n => Err((
                "invalid_json",
                format!("{n} JSON values in one message; expected one"),
            )),
        }
    }

    /// Decodes `payloads`, returning the batch of good records (in order) and the bad ones.
    pub fn decode(&mut self, payloads: &[&[u8]]) -> (Option<RecordBatch>, Vec<BadRecord>) {
        let mut bad = Vec::new();
        let mut parts = Vec::new();
        let mut chunk_start = 0;
        let mut i = 0;
        while i < payloads.len() {
            if let Err((reason, detail)) = self.push(payloads[i]) {
                // The decoder may hold half a value: rebuild it from the good records before.
                self.reset();
                self.decode_slice(&payloads[chunk_start..i], chunk_start, &mut parts, &mut bad);
                bad.push(BadRecord {
                    index: i,
                    reason,
                    detail,
                });
                chunk_start = i + 1;
            } else if self.decoder.len() >= MAX_ROWS {
                self.finish_chunk(
                    &payloads[chunk_start..=i],
                    chunk_start,
                    &mut parts,
                    &mut bad,
                );
                chunk_start = i + 1;
            }
            i += 1;
        }
        self.finish_chunk(&payloads[chunk_start..], chunk_start, &mut parts, &mut bad);
        bad.sort_by_key(|b| b.index);
        let batch = match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => Some(concat_batches(&self.schema, &parts).expect("same schema")),
        };
        (batch, bad)
    }

    /// Flushes what the decoder holds for `chunk`; on a type error, finds the
    /// offending records one by one.
    fn finish_chunk(
        &mut self,
        chunk: &[&[u8]],
        base: usize,
        parts: &mut Vec<RecordBatch>,
        bad: &mut Vec<BadRecord>,
    ) {
        match self.decoder.flush() {
            Ok(Some(b)) => parts.push(b),
            Ok(None) => {}
            Err(_) => {
                self.reset();
                for (j, p) in chunk.iter().enumerate() {
                    let one = self.push(p).and_then(|_| {
                        self.decoder
                            .flush()
                            .map_err(|e| (classify(&e), e.to_string()))
                    });
                    match one {
                        Ok(Some(b)) => parts.push(b),
                        Ok(None) => {}
                        Err((reason, detail)) => {
                            self.reset();
                            bad.push(BadRecord {
                                index: base + j,
                                reason,
                                detail,
                            });
                        }
                    }
                }
            }
        }
    }

    /// Re-decodes records known to be well-formed JSON and flushes them.
    fn decode_slice(
        &mut self,
        chunk: &[&[u8]],
        base: usize,
        parts: &mut Vec<RecordBatch>,
        bad: &mut Vec<BadRecord>,
    ) {
        for p in chunk {
            // These parsed before; a failure here would be reported by finish_chunk.
            let _ = self.push(p);
        }
        self.finish_chunk(chunk, base, parts, bad);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray, Float64Array};
    use datafusion::arrow::datatypes::{
        DataType, Field, Schema, TimeUnit, TimestampMillisecondType,
    };
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("geo", DataType::Utf8, true),
            Field::new("bid", DataType::Float64, true),
        ]))
    }

    #[test]
    fn timestamps_in_three_forms() {
        let mut d = JsonDecoder::new(schema()).unwrap();
        let (b, bad) = d.decode(&[
            br#"{"ts": 1000, "geo": "US", "bid": 0.5}"#.as_slice(),
            br#"{"ts": "1970-01-01T00:00:02Z", "geo": "FR"}"#,
            br#"{"ts": "1970-01-01 00:00:03", "bid": 1, "extra": [1,2]}"#,
        ]);
        assert!(bad.is_empty(), "{bad:?}");
        let b = b.unwrap();
        let ts = b.column(0).as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.values().to_vec(), vec![1000, 2000, 3000]);
        let bid = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
        assert!(bid.is_null(1));
        assert_eq!(bid.value(2), 1.0);
    }

    #[test]
    fn bad_records_are_isolated() {
        let mut d = JsonDecoder::new(schema()).unwrap();
        let payloads: Vec<&[u8]> = vec![
            br#"{"ts": 1, "geo": "a"}"#,
            b"{not json",
            br#"{"ts": 2, "geo": "b"}"#,
            b"",
            br#"{"ts": 3} {"ts": 4}"#,
            br#"{"ts": 5, "bid": "lots"}"#,
            b"\xff\xfe",
            br#"{"ts": 6, "geo": "c"}"#,
        ];
        let (b, bad) = d.decode(&payloads);
        let b = b.unwrap();
        let ts = b.column(0).as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.values().to_vec(), vec![1, 2, 6]);
        let idx: Vec<usize> = bad.iter().map(|b| b.index).collect();
        assert_eq!(idx, vec![1, 3, 4, 5, 6]);
        assert_eq!(bad[1].reason, "empty");
    }
}
