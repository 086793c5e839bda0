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

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::{BadRecord, UNKNOWN_FIELD};

/// The top-level keys of a JSON object, in order, values skipped.
struct Keys(Vec<String>);

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = m.next_key::<String>()? {
                    m.next_value::<IgnoredAny>()?;
                    keys.push(k);
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_map(V)
    }
}

/// A number with a fraction given for one of `integers` (columns of an
/// integer type), which arrow-json would cut to its whole part.
struct Fraction<'a> {
    integers: &'a [String],
}

impl<'de> serde::de::DeserializeSeed<'de> for Fraction<'_> {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Fraction<'_> {
    type Value = Option<String>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(k) = m.next_key::<String>()? {
            if found.is_none() && self.integers.contains(&k) {
                if let serde_json::Value::Number(n) = m.next_value()?
                    && n.as_f64().is_some_and(|f| f.fract() != 0.0)
                {
                    found = Some(format!("{k}: {n} is not a whole number"));
                }
            } else {
                m.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// The note on a record kept despite a field that is not a column.
fn unknown_field(index: usize, key: &str) -> BadRecord {
    BadRecord {
        index,
        reason: UNKNOWN_FIELD,
        detail: format!("unknown field '{key}' ignored; the record was used"),
    }
}

/// Decodes JSON payloads into batches of a fixed schema.
pub struct JsonDecoder {
    schema: SchemaRef,
    decoder: Decoder,
    fast: Option<fast::FastDecoder>,
    /// The columns of an integer type.
    integers: Vec<String>,
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
    } else if m.contains("whilst decoding field")
        || m.contains("Error while parsing value")
        || m.to_ascii_lowercase().contains("failed to parse")
        || m.contains("expected") && m.contains("got")
    {
        "wrong_type"
    } else {
        "invalid_json"
    }
}

impl JsonDecoder {
    /// A decoder for records of `schema`; missing fields are NULL, unknown
    /// ones are ignored and noted as `unknown_field` (the record is used).
    pub fn new(schema: SchemaRef) -> Result<Self, ArrowError> {
        let decoder = build(&schema)?;
        let fast = fast::FastDecoder::new(&schema, None);
        let integers = (schema.fields().iter())
            .filter(|f| f.data_type().is_integer())
            .map(|f| f.name().clone())
            .collect();
        Ok(JsonDecoder {
            schema,
            decoder,
            fast,
            integers,
        })
    }

    /// Like [`new`](Self::new), but only the columns at indices `read` need
    /// values: the others may come back as all-NULL columns. Records are
    /// accepted or rejected exactly as with [`new`](Self::new).
    pub fn with_projection(schema: SchemaRef, read: &[usize]) -> Result<Self, ArrowError> {
        let mut d = Self::new(schema)?;
        d.fast = fast::FastDecoder::new(&d.schema, Some(read));
        Ok(d)
    }

    /// The schema of decoded batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The first top-level key of a well-formed object that is not a column.
    /// Only records that needed the general path come here.
    fn first_unknown_key(&self, payload: &[u8]) -> Option<String> {
        let Keys(keys) = serde_json::from_slice(payload).ok()?;
        keys.into_iter()
            .find(|k| self.schema.field_with_name(k).is_err())
    }

    fn reset(&mut self) {
        self.decoder = build(&self.schema).expect("decoder was built before");
    }

    /// Pushes one payload; Ok when it held exactly one JSON object.
    fn push(&mut self, payload: &[u8]) -> Result<(), (&'static str, String)> {
        if payload.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(("empty", "empty message".into()));
        }
        if !self.integers.is_empty() {
            use serde::de::DeserializeSeed;
            let seed = Fraction {
                integers: &self.integers,
            };
            let mut de = serde_json::Deserializer::from_slice(payload);
            if let Ok(Some(detail)) = seed.deserialize(&mut de) {
                return Err(("wrong_type", detail));
            }
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
        if payloads.is_empty() {
            return (None, vec![]);
        }
        if let Some((batch, unknown)) = self.fast.as_mut().and_then(|f| f.decode(payloads)) {
            let notes = unknown
                .into_iter()
                .map(|(index, key)| unknown_field(index, &key))
                .collect();
            return (Some(batch), notes);
        }
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
        // The records kept: note their unknown fields as the fast path does.
        let mut rejected = bad.iter().map(|b| b.index).peekable();
        let mut notes = Vec::new();
        for (index, p) in payloads.iter().enumerate() {
            if rejected.next_if_eq(&index).is_some() {
                continue;
            }
            if let Some(key) = self.first_unknown_key(p) {
                notes.push(unknown_field(index, &key));
            }
        }
        bad.extend(notes);
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

/// The fast path for flat objects, which gives the whole call back to
/// arrow-json whenever it is not sure.
mod fast;

#[cfg(test)]
mod tests;
