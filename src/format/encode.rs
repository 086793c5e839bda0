//! Writing result rows: an Arrow batch straight to the API's JSON (objects
//! keyed in select-list order, or arrays), to CSV, and to the one JSON
//! object per row of server-sent events and `INTO TOPIC` messages, without
//! an intermediate value per row.
//!
//! Every answer writes values alike: timestamps as RFC 3339 UTC with
//! milliseconds (`2026-12-04T13:40:20.000Z`, [`API_TS_FORMAT`]),
//! binary as base64, NULL as `null` (an empty CSV field), floats as the
//! shortest text that reads back the same (JSON; CSV writes them as Rust
//! displays them, `1` for 1.0). Types with no plain JSON form (lists,
//! structs, decimals, dates) are written by `arrow_json`, and in CSV as
//! Arrow displays them.

use std::io::Write;
use std::sync::LazyLock;

use arrow_json::writer::{EncoderOptions, NullableEncoder, make_encoder};
use base64::Engine;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Float32Array, Float64Array, Int64Array,
    RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, FieldRef, TimeUnit};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::error::Result;

/// Options of the `arrow_json` encoders of nested and other types.
static OPTIONS: LazyLock<EncoderOptions> = LazyLock::new(EncoderOptions::default);

/// One column, ready to write.
enum Col<'a> {
    Bool(BooleanArray),
    Int(Int64Array),
    UInt(UInt64Array),
    F64(Float64Array),
    F32(Float32Array),
    Ts(TimestampMillisecondArray),
    Text(StringArray),
    Blob(BinaryArray),
    /// Any other type: `arrow_json` for JSON, Arrow's display for CSV.
    Other(&'a ArrayRef, NullableEncoder<'a>),
}

/// The columns of one batch, written row by row.
pub(super) struct Rows<'a> {
    /// Column names as JSON strings followed by `:`.
    keys: Vec<Vec<u8>>,
    names: Vec<&'a str>,
    cols: Vec<Col<'a>>,
    rows: usize,
}

fn col<'a>(field: &'a FieldRef, a: &'a ArrayRef) -> Result<Col<'a>> {
    use DataType::*;
    let as_type = |t: &DataType| cast(a, t);
    Ok(match a.data_type() {
        Boolean => Col::Bool(a.as_boolean().clone()),
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 => {
            Col::Int(as_type(&Int64)?.as_primitive().clone())
        }
        UInt64 => Col::UInt(a.as_primitive().clone()),
        Float16 | Float64 => Col::F64(as_type(&Float64)?.as_primitive().clone()),
        Float32 => Col::F32(a.as_primitive().clone()),
        Timestamp(_, _) => Col::Ts(
            as_type(&Timestamp(TimeUnit::Millisecond, None))?
                .as_primitive()
                .clone(),
        ),
        Utf8 | LargeUtf8 | Utf8View => Col::Text(as_type(&Utf8)?.as_string::<i32>().clone()),
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => {
            Col::Blob(as_type(&Binary)?.as_binary::<i32>().clone())
        }
        _ => Col::Other(a, make_encoder(field, a.as_ref(), &OPTIONS)?),
    })
}

impl<'a> Rows<'a> {
    /// The rows of `batch`.
    pub fn new(batch: &'a RecordBatch) -> Result<Self> {
        let schema = batch.schema_ref();
        let mut keys = Vec::new();
        let mut cols = Vec::new();
        for (f, a) in schema.fields().iter().zip(batch.columns()) {
            let mut key = json(f.name());
            key.push(b':');
            keys.push(key);
            cols.push(col(f, a)?);
        }
        Ok(Rows {
            keys,
            names: schema.fields().iter().map(|f| f.name().as_str()).collect(),
            cols,
            rows: batch.num_rows(),
        })
    }

    /// How many rows there are.
    pub fn len(&self) -> usize {
        self.rows
    }

    fn is_null(&self, c: usize, i: usize) -> bool {
        match &self.cols[c] {
            Col::Bool(a) => a.is_null(i),
            Col::Int(a) => a.is_null(i),
            Col::UInt(a) => a.is_null(i),
            Col::F64(a) => a.is_null(i),
            Col::F32(a) => a.is_null(i),
            Col::Ts(a) => a.is_null(i),
            Col::Text(a) => a.is_null(i),
            Col::Blob(a) => a.is_null(i),
            Col::Other(a, _) => a.is_null(i),
        }
    }

    /// Writes column `c` of row `i` as JSON.
    fn json_value(&mut self, c: usize, i: usize, out: &mut Vec<u8>) {
        if self.is_null(c, i) {
            out.extend_from_slice(b"null");
            return;
        }
        match &mut self.cols[c] {
            Col::Bool(a) => write_json(out, &a.value(i)),
            Col::Int(a) => write_json(out, &a.value(i)),
            Col::UInt(a) => write_json(out, &a.value(i)),
            Col::F64(a) => write_json(out, &a.value(i)),
            Col::F32(a) => write_json(out, &a.value(i)),
            Col::Ts(a) => {
                out.push(b'"');
                write_ts(a.value(i), out);
                out.push(b'"');
            }
            Col::Text(a) => write_json(out, a.value(i)),
            Col::Blob(a) => {
                out.push(b'"');
                base64_to(a.value(i), out);
                out.push(b'"');
            }
            Col::Other(_, e) => e.encode(i, out),
        }
    }

    /// Writes row `i` as a JSON object, keys in column order.
    pub fn json_object(&mut self, i: usize, out: &mut Vec<u8>) {
        out.push(b'{');
        for c in 0..self.cols.len() {
            if c > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&self.keys[c]);
            self.json_value(c, i, out);
        }
        out.push(b'}');
    }

    /// Writes row `i` as a JSON array, values in column order.
    pub fn json_array(&mut self, i: usize, out: &mut Vec<u8>) {
        out.push(b'[');
        for c in 0..self.cols.len() {
            if c > 0 {
                out.push(b',');
            }
            self.json_value(c, i, out);
        }
        out.push(b']');
    }

    /// Writes the CSV header row.
    pub fn csv_header(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.names.join(",").as_bytes());
        out.push(b'\n');
    }

    /// Writes row `i` as a CSV row.
    pub fn csv_row(&self, i: usize, out: &mut Vec<u8>) -> Result<()> {
        for c in 0..self.cols.len() {
            if c > 0 {
                out.push(b',');
            }
            if self.is_null(c, i) {
                continue;
            }
            match &self.cols[c] {
                Col::Bool(a) => write!(out, "{}", a.value(i))?,
                Col::Int(a) => write!(out, "{}", a.value(i))?,
                Col::UInt(a) => write!(out, "{}", a.value(i))?,
                Col::F64(a) => write!(out, "{}", a.value(i))?,
                Col::F32(a) => write!(out, "{}", a.value(i))?,
                Col::Ts(a) => write_ts(a.value(i), out),
                Col::Text(a) => csv_text(a.value(i), out),
                Col::Blob(a) => base64_to(a.value(i), out),
                Col::Other(a, _) => {
                    let options = FormatOptions::default();
                    let f = ArrayFormatter::try_new(a.as_ref(), &options)?;
                    csv_text(&f.value(i).to_string(), out);
                }
            }
        }
        out.push(b'\n');
        Ok(())
    }
}

/// Writes a scalar as JSON (serde_json's text: shortest round-trip floats,
/// `null` for a float that is not finite).
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    let _ = serde_json::to_writer(out, v);
}

/// Writes epoch ms as the API writes timestamps ([`API_TS_FORMAT`]).
fn write_ts(ms: i64, out: &mut Vec<u8>) {
    if !push_ts(ms, b'T', b"Z", out) {
        out.extend_from_slice(format_api_ts(ms).as_bytes());
    }
}

/// Appends epoch ms as `YYYY-MM-DD<sep>HH:MM:SS.mmm<zone>` and returns
/// true, or appends nothing and returns false outside years 0–9999.
/// Digits are written directly: this runs once per timestamp of every row
/// written, where a parsed format string costs several times more.
pub(crate) fn push_ts(ms: i64, sep: u8, zone: &[u8], out: &mut Vec<u8>) -> bool {
    use chrono::{Datelike, Timelike};
    let Some(d) = chrono::DateTime::from_timestamp_millis(ms) else {
        return false;
    };
    let year = d.year();
    if !(0..=9999).contains(&year) {
        return false;
    }
    let digits = |out: &mut Vec<u8>, v: u32, n: usize| {
        let mut buf = [b'0'; 4];
        let mut v = v;
        for b in buf[..n].iter_mut().rev() {
            *b = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&buf[..n]);
    };
    digits(out, year as u32, 4);
    out.push(b'-');
    digits(out, d.month(), 2);
    out.push(b'-');
    digits(out, d.day(), 2);
    out.push(sep);
    digits(out, d.hour(), 2);
    out.push(b':');
    digits(out, d.minute(), 2);
    out.push(b':');
    digits(out, d.second(), 2);
    out.push(b'.');
    digits(out, d.timestamp_subsec_millis(), 3);
    out.extend_from_slice(zone);
    true
}

fn base64_to(bytes: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    let len = base64::encoded_len(bytes.len(), true).unwrap_or(0);
    out.resize(start + len, 0);
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(bytes, &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + n);
}

/// Writes a CSV field, quoted when it must be.
fn csv_text(s: &str, out: &mut Vec<u8>) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        out.extend_from_slice(s.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

/// Format of timestamps in the API's answers (results, pull queries, SSE,
/// CSV): RFC 3339 in UTC with milliseconds, `2026-12-04T13:40:20.000Z`.
pub const API_TS_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";

/// Formats epoch ms as the API writes timestamps.
pub fn format_api_ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format(API_TS_FORMAT).to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// The rows of `batches` as a JSON array of objects (`objects`) or of arrays.
pub fn json_rows(batches: &[RecordBatch], objects: bool) -> Result<Vec<u8>> {
    let mut out = vec![b'['];
    for b in batches {
        let mut rows = Rows::new(b)?;
        for i in 0..rows.len() {
            if out.len() > 1 {
                out.push(b',');
            }
            match objects {
                true => rows.json_object(i, &mut out),
                false => rows.json_array(i, &mut out),
            }
        }
    }
    out.push(b']');
    Ok(out)
}

/// `batch` as a CSV document: a header row of its column names, then its rows.
pub fn csv(batch: &RecordBatch) -> Result<Vec<u8>> {
    let rows = Rows::new(batch)?;
    let mut out = Vec::new();
    rows.csv_header(&mut out);
    for i in 0..rows.len() {
        rows.csv_row(i, &mut out)?;
    }
    Ok(out)
}

/// Each row of `batch` as a JSON object, for one event each.
pub fn row_texts(batch: &RecordBatch) -> Result<Vec<String>> {
    let mut rows = Rows::new(batch)?;
    let mut out = Vec::with_capacity(rows.len());
    let mut buf = Vec::new();
    for i in 0..rows.len() {
        buf.clear();
        rows.json_object(i, &mut buf);
        out.push(String::from_utf8_lossy(&buf).into_owned());
    }
    Ok(out)
}

/// A JSON answer from parts already written: `{"key": value, ...}`.
pub fn json_body(parts: &[(&str, &[u8])]) -> Vec<u8> {
    let len: usize = parts.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    let mut out = Vec::with_capacity(len + 2);
    out.push(b'{');
    for (i, (k, v)) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut out, k);
        out.push(b':');
        out.extend_from_slice(v);
    }
    out.push(b'}');
    out
}

/// A value written as JSON, for [`json_body`].
pub fn json<T: serde::Serialize + ?Sized>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        ArrayRef, BinaryArray, BooleanArray, Float32Array, Float64Array, Int32Array, RecordBatch,
        StringArray, TimestampMillisecondArray, TimestampNanosecondArray,
    };

    use super::{csv, json_rows, row_texts};

    fn batch() -> RecordBatch {
        let cols: Vec<(&str, ArrayRef)> = vec![
            (
                "window_start",
                Arc::new(TimestampMillisecondArray::from(vec![
                    Some(1_796_391_620_000),
                    None,
                ])),
            ),
            (
                "t_ns",
                Arc::new(
                    TimestampNanosecondArray::from(vec![Some(1_500_000_123), Some(-1)])
                        .with_timezone("+02:00"),
                ),
            ),
            (
                "z",
                Arc::new(StringArray::from(vec![Some("a,\"b\""), None])),
            ),
            ("n", Arc::new(Int32Array::from(vec![Some(3), None]))),
            (
                "f",
                Arc::new(Float64Array::from(vec![Some(1.0), Some(1e20)])),
            ),
            (
                "g",
                Arc::new(Float64Array::from(vec![Some(0.1), Some(f64::NAN)])),
            ),
            ("h", Arc::new(Float32Array::from(vec![Some(0.1f32), None]))),
            ("b", Arc::new(BooleanArray::from(vec![Some(true), None]))),
            (
                "bin",
                Arc::new(BinaryArray::from(vec![Some(&[0u8, 0xff, 1][..]), None])),
            ),
        ];
        RecordBatch::try_from_iter(cols).unwrap()
    }

    #[test]
    fn rows_are_json_objects_in_column_order_with_api_values() {
        let text = String::from_utf8(json_rows(&[batch()], true).unwrap()).unwrap();
        assert_eq!(
            text,
            r#"[{"window_start":"2026-12-04T13:40:20.000Z","t_ns":"1970-01-01T00:00:01.500Z","z":"a,\"b\"","n":3,"f":1.0,"g":0.1,"h":0.1,"b":true,"bin":"AP8B"},"#
                .to_string()
                + r#"{"window_start":null,"t_ns":"1970-01-01T00:00:00.000Z","z":null,"n":null,"f":1e+20,"g":null,"h":null,"b":null,"bin":null}]"#
        );
        assert_eq!(row_texts(&batch()).unwrap()[1].chars().next(), Some('{'));
        let arrays = String::from_utf8(json_rows(&[batch().slice(1, 1)], false).unwrap());
        assert_eq!(
            arrays.unwrap(),
            r#"[[null,"1970-01-01T00:00:00.000Z",null,null,1e+20,null,null,null,null]]"#
        );
        assert_eq!(json_rows(&[], false).unwrap(), b"[]");
    }

    #[test]
    fn rows_are_csv_with_quoted_text_and_empty_nulls() {
        let text = String::from_utf8(csv(&batch()).unwrap()).unwrap();
        assert_eq!(
            text,
            "window_start,t_ns,z,n,f,g,h,b,bin\n\
             2026-12-04T13:40:20.000Z,1970-01-01T00:00:01.500Z,\"a,\"\"b\"\"\",3,1,0.1,0.1,true,AP8B\n\
             ,1970-01-01T00:00:00.000Z,,,100000000000000000000,NaN,,,\n"
        );
    }
}
