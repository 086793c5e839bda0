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
        Ok(JsonDecoder {
            schema,
            decoder,
            fast,
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
        // The unknown field is noted; the record is in the batch.
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!((bad[0].index, bad[0].reason), (2, "unknown_field"));
        assert!(bad[0].detail.contains("'extra'"), "{bad:?}");
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

    fn slow(schema: SchemaRef) -> JsonDecoder {
        let mut d = JsonDecoder::new(schema).unwrap();
        d.fast = None;
        d
    }

    #[test]
    fn fast_path_agrees_with_arrow_json() {
        let cases: Vec<&[u8]> = vec![
            br#"{"ts": 1000, "geo": "US", "bid": 0.5}"#,
            br#" {"ts":-5,"geo":null,"bid":1e3,"x":[1,{"a":2}]} "#,
            br#"{"geo": "caf\u00e9", "ts": 7}"#,
            br#"{"ts": 1, "ts": 2}"#,
            br#"{"ts": "1970-01-01T00:00:02Z"}"#,
            br#"{"bid": "1.5", "extra": true, "more": null, "n": -0.25E+2}"#,
            br#"{"bid": 01}"#,
            br#"{"bid": 1.}"#,
            br#"{"ts": 1.5}"#,
            br#"{}"#,
            b"{\"geo\": \"\xc3\xa9t\xc3\xa9\"}",
            br#"{"geo": 12, "bid": true}"#,
            br#"{"geo": "a"} x"#,
            br#"[1]"#,
            b"  ",
        ];
        let both = |payloads: &[&[u8]]| {
            let (fb, fbad) = JsonDecoder::new(schema()).unwrap().decode(payloads);
            let (sb, sbad) = slow(schema()).decode(payloads);
            assert_eq!(fb, sb, "{payloads:?}");
            assert_eq!(fbad, sbad, "{payloads:?}");
        };
        for c in &cases {
            both(&[c]);
        }
        both(&cases);
        both(&cases[..2]);
        // Projected: the read columns are the same, the rest may be NULL.
        let payloads = &[cases[0], cases[9]];
        let (p, _) = JsonDecoder::with_projection(schema(), &[0, 2])
            .unwrap()
            .decode(payloads);
        let (s, _) = slow(schema()).decode(payloads);
        let (p, s) = (p.unwrap(), s.unwrap());
        assert_eq!(p.column(0), s.column(0));
        assert_eq!(p.column(2), s.column(2));
        assert_eq!(p.column(1).null_count(), 2);
    }
}

/// A fast path for flat JSON objects: it scans each payload once and appends
/// straight to the columns the caller reads, skipping the values of the others
/// after checking that arrow-json would accept them. Anything it is not sure
/// about (escapes in kept strings, nested values, timestamps written as text,
/// duplicate keys, malformed input) makes it give up on the whole call, and
/// the arrow-json path decodes the payloads instead, so both paths always
/// agree.
mod fast {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
        TimestampMillisecondBuilder, new_null_array,
    };
    use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
    use datafusion::arrow::record_batch::RecordBatch;

    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Utf8,
        Float64,
        Int64,
        TimestampMs,
        Boolean,
    }

    enum Builder {
        Utf8(StringBuilder),
        Float64(Float64Builder),
        Int64(Int64Builder),
        TimestampMs(TimestampMillisecondBuilder),
        Boolean(BooleanBuilder),
        Skip,
    }

    struct Column {
        name: Box<[u8]>,
        kind: Kind,
        builder: Builder,
    }

    /// Decoder of flat objects whose columns are all of the supported types.
    pub(super) struct FastDecoder {
        schema: SchemaRef,
        columns: Vec<Column>,
    }

    fn kind(t: &DataType) -> Option<Kind> {
        Some(match t {
            DataType::Utf8 => Kind::Utf8,
            DataType::Float64 => Kind::Float64,
            DataType::Int64 => Kind::Int64,
            DataType::Timestamp(TimeUnit::Millisecond, None) => Kind::TimestampMs,
            DataType::Boolean => Kind::Boolean,
            _ => return None,
        })
    }

    /// Why a value cannot take the fast path.
    struct GiveUp;

    type R<T> = Result<T, GiveUp>;

    fn ws(b: &[u8], mut i: usize) -> usize {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    }

    /// End of the string starting at the quote `b[i]`, and whether it has escapes.
    fn string_end(b: &[u8], i: usize) -> R<(usize, bool)> {
        let mut j = i + 1;
        let mut escaped = false;
        while j < b.len() {
            match b[j] {
                b'"' => return Ok((j + 1, escaped)),
                b'\\' => {
                    escaped = true;
                    j += 2;
                }
                c if c < 0x20 => return Err(GiveUp),
                _ => j += 1,
            }
        }
        Err(GiveUp)
    }

    /// End of the JSON number starting at `b[i]`, checked against the grammar,
    /// and whether it is an integer.
    fn number_end(b: &[u8], i: usize) -> R<(usize, bool)> {
        let mut j = i;
        let digits = |j: &mut usize| {
            let s = *j;
            while *j < b.len() && b[*j].is_ascii_digit() {
                *j += 1;
            }
            *j - s
        };
        if j < b.len() && b[j] == b'-' {
            j += 1;
        }
        let n = digits(&mut j);
        if n == 0 || (n > 1 && b[j - n] == b'0') {
            return Err(GiveUp);
        }
        let mut integer = true;
        if j < b.len() && b[j] == b'.' {
            j += 1;
            integer = false;
            if digits(&mut j) == 0 {
                return Err(GiveUp);
            }
        }
        if j < b.len() && (b[j] == b'e' || b[j] == b'E') {
            j += 1;
            integer = false;
            if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
                j += 1;
            }
            if digits(&mut j) == 0 {
                return Err(GiveUp);
            }
        }
        Ok((j, integer))
    }

    /// A scalar token at `b[i]`.
    enum Token {
        Str(usize, usize, bool),
        Num(usize, usize, bool),
        Bool(bool),
        Null,
    }

    fn token(b: &[u8], i: usize) -> R<(Token, usize)> {
        let lit = |word: &[u8], t: Token| {
            if b[i..].starts_with(word) {
                Ok((t, i + word.len()))
            } else {
                Err(GiveUp)
            }
        };
        match b.get(i) {
            Some(b'"') => {
                let (e, esc) = string_end(b, i)?;
                Ok((Token::Str(i + 1, e - 1, esc), e))
            }
            Some(b'-' | b'0'..=b'9') => {
                let (e, int) = number_end(b, i)?;
                Ok((Token::Num(i, e, int), e))
            }
            Some(b't') => lit(b"true", Token::Bool(true)),
            Some(b'f') => lit(b"false", Token::Bool(false)),
            Some(b'n') => lit(b"null", Token::Null),
            _ => Err(GiveUp),
        }
    }

    fn text(b: &[u8], s: usize, e: usize) -> &str {
        // The whole payload was checked to be UTF-8 and token bounds are ASCII.
        std::str::from_utf8(&b[s..e]).unwrap_or_default()
    }

    impl Column {
        fn append(&mut self, b: &[u8], t: &Token) -> R<()> {
            match (&mut self.builder, t) {
                (Builder::Skip, t) => match (self.kind, t) {
                    (_, Token::Null) | (Kind::Utf8, _) => Ok(()),
                    (Kind::Float64, Token::Num(..)) => Ok(()),
                    (Kind::Int64 | Kind::TimestampMs, Token::Num(_, _, true)) => Ok(()),
                    (Kind::Boolean, Token::Bool(_)) => Ok(()),
                    _ => Err(GiveUp),
                },
                (Builder::Utf8(v), Token::Null) => {
                    v.append_null();
                    Ok(())
                }
                (Builder::Utf8(v), Token::Str(s, e, false)) => {
                    v.append_value(text(b, *s, *e));
                    Ok(())
                }
                (Builder::Float64(v), Token::Null) => {
                    v.append_null();
                    Ok(())
                }
                (Builder::Float64(v), Token::Num(s, e, _)) => {
                    v.append_value(text(b, *s, *e).parse().map_err(|_| GiveUp)?);
                    Ok(())
                }
                (Builder::Int64(v), Token::Null) => {
                    v.append_null();
                    Ok(())
                }
                (Builder::Int64(v), Token::Num(s, e, true)) => {
                    v.append_value(text(b, *s, *e).parse().map_err(|_| GiveUp)?);
                    Ok(())
                }
                (Builder::TimestampMs(v), Token::Null) => {
                    v.append_null();
                    Ok(())
                }
                (Builder::TimestampMs(v), Token::Num(s, e, true)) => {
                    v.append_value(text(b, *s, *e).parse().map_err(|_| GiveUp)?);
                    Ok(())
                }
                (Builder::Boolean(v), Token::Null) => {
                    v.append_null();
                    Ok(())
                }
                (Builder::Boolean(v), Token::Bool(x)) => {
                    v.append_value(*x);
                    Ok(())
                }
                _ => Err(GiveUp),
            }
        }

        fn append_null(&mut self) {
            match &mut self.builder {
                Builder::Utf8(v) => v.append_null(),
                Builder::Float64(v) => v.append_null(),
                Builder::Int64(v) => v.append_null(),
                Builder::TimestampMs(v) => v.append_null(),
                Builder::Boolean(v) => v.append_null(),
                Builder::Skip => {}
            }
        }

        fn finish(&mut self, t: &DataType, rows: usize) -> ArrayRef {
            match &mut self.builder {
                Builder::Utf8(v) => Arc::new(v.finish()),
                Builder::Float64(v) => Arc::new(v.finish()),
                Builder::Int64(v) => Arc::new(v.finish()),
                Builder::TimestampMs(v) => Arc::new(v.finish()),
                Builder::Boolean(v) => Arc::new(v.finish()),
                Builder::Skip => new_null_array(t, rows),
            }
        }
    }

    impl FastDecoder {
        /// A fast decoder for `schema` building only the columns `read`
        /// (all when `None`); `None` when a column type is not supported.
        pub(super) fn new(schema: &SchemaRef, read: Option<&[usize]>) -> Option<FastDecoder> {
            let mut columns = Vec::new();
            for (i, f) in schema.fields().iter().enumerate() {
                let kind = kind(f.data_type())?;
                let keep = read.is_none_or(|r| r.contains(&i));
                let builder = if !keep {
                    Builder::Skip
                } else {
                    match kind {
                        Kind::Utf8 => Builder::Utf8(StringBuilder::new()),
                        Kind::Float64 => Builder::Float64(Float64Builder::new()),
                        Kind::Int64 => Builder::Int64(Int64Builder::new()),
                        Kind::TimestampMs => {
                            Builder::TimestampMs(TimestampMillisecondBuilder::new())
                        }
                        Kind::Boolean => Builder::Boolean(BooleanBuilder::new()),
                    }
                };
                columns.push(Column {
                    name: f.name().as_bytes().into(),
                    kind,
                    builder,
                });
            }
            if columns.len() > 64 {
                return None;
            }
            Some(FastDecoder {
                schema: schema.clone(),
                columns,
            })
        }

        /// Appends one record; `Ok(Some(key))` names the first field that is
        /// not a column (the record is still used).
        fn record(&mut self, b: &[u8]) -> R<Option<String>> {
            if std::str::from_utf8(b).is_err() {
                return Err(GiveUp);
            }
            let mut i = ws(b, 0);
            if b.get(i) != Some(&b'{') {
                return Err(GiveUp);
            }
            i = ws(b, i + 1);
            let mut seen: u64 = 0;
            let mut unknown = None;
            if b.get(i) == Some(&b'}') {
                i += 1;
            } else {
                loop {
                    if b.get(i) != Some(&b'"') {
                        return Err(GiveUp);
                    }
                    let (ke, esc) = string_end(b, i)?;
                    if esc {
                        return Err(GiveUp);
                    }
                    let key = &b[i + 1..ke - 1];
                    i = ws(b, ke);
                    if b.get(i) != Some(&b':') {
                        return Err(GiveUp);
                    }
                    i = ws(b, i + 1);
                    let (t, e) = token(b, i)?;
                    i = e;
                    if let Some(c) = self.columns.iter().position(|c| &*c.name == key) {
                        if seen & (1 << c) != 0 {
                            return Err(GiveUp);
                        }
                        seen |= 1 << c;
                        self.columns[c].append(b, &t)?;
                    } else if unknown.is_none() {
                        unknown = Some(String::from_utf8_lossy(key).into_owned());
                    }
                    i = ws(b, i);
                    match b.get(i) {
                        Some(b',') => i = ws(b, i + 1),
                        Some(b'}') => {
                            i += 1;
                            break;
                        }
                        _ => return Err(GiveUp),
                    }
                }
            }
            if ws(b, i) != b.len() {
                return Err(GiveUp);
            }
            for (c, col) in self.columns.iter_mut().enumerate() {
                if seen & (1 << c) == 0 {
                    col.append_null();
                }
            }
            Ok(unknown)
        }

        /// Decodes all of `payloads`, with the first unknown field of each
        /// record that has one (by index), or `None` (leaving nothing behind)
        /// when one of them needs the general path.
        pub(super) fn decode(
            &mut self,
            payloads: &[&[u8]],
        ) -> Option<(RecordBatch, Vec<(usize, String)>)> {
            let mut ok = true;
            let mut unknown = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                match self.record(p) {
                    Ok(None) => {}
                    Ok(Some(key)) => unknown.push((i, key)),
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            let n = payloads.len();
            let cols: Vec<ArrayRef> = self
                .columns
                .iter_mut()
                .zip(self.schema.fields())
                .map(|(c, f)| c.finish(f.data_type(), n))
                .collect();
            if !ok {
                return None;
            }
            let batch = RecordBatch::try_new(self.schema.clone(), cols).ok()?;
            Some((batch, unknown))
        }
    }
}
