//! Apache/NCSA access log lines (`format = 'access_log'`).
//!
//! Each message is one line in the common log format
//! `host ident authuser [date] "request" status bytes`, optionally followed by
//! `"referer" "user-agent"` (the combined format; anything after the agent is
//! ignored). The stream declares any of these columns, in any order:
//!
//! | column | value |
//! |---|---|
//! | `ip` | the client host |
//! | `identity`, `user` | ident and authenticated user; `-` is NULL |
//! | `ts` | the request time converted to UTC (TIMESTAMP, or epoch ms as BIGINT, or the raw text as TEXT) |
//! | `method`, `endpoint`, `protocol` | the request line's parts; all NULL for a `"-"` request, `protocol` NULL for `GET /` |
//! | `request` | the whole request line |
//! | `status` | the response code; `-` is NULL |
//! | `size` | response bytes; `-` is NULL (Apache writes `-` for an empty body) |
//! | `referer`, `agent` | NULL for common-format lines and for `-` |
//!
//! A line that does not have this shape, or whose values do not fit the
//! declared types, is a bad record with reason `invalid_access_log`.
//!
//! ```
//! use std::sync::Arc;
//! use datafusion::arrow::datatypes::{DataType, Field, Schema};
//! use runnel::format::access_log::AccessLogDecoder;
//! let schema = Arc::new(Schema::new(vec![
//!     Field::new("status", DataType::Int32, true),
//!     Field::new("endpoint", DataType::Utf8, true),
//! ]));
//! let mut d = AccessLogDecoder::new(schema).unwrap();
//! let line = br#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326"#;
//! let (batch, bad) = d.decode(&[line.as_slice(), b"nonsense"]);
//! assert_eq!(batch.unwrap().num_rows(), 1);
//! assert_eq!(bad[0].reason, "invalid_access_log");
//! ```

use std::ops::Range;

use chrono::{DateTime, NaiveDate};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

use super::BadRecord;
use super::columns::{Rows, Value};

/// Reason code of a line that is not an access log line.
pub const INVALID: &str = "invalid_access_log";

/// The parts of an access log line, in the order they are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Ip,
    Identity,
    User,
    Ts,
    Method,
    Endpoint,
    Protocol,
    Request,
    Status,
    Size,
    Referer,
    Agent,
}

const PARTS: [(&str, Part); 12] = [
    ("ip", Part::Ip),
    ("identity", Part::Identity),
    ("user", Part::User),
    ("ts", Part::Ts),
    ("method", Part::Method),
    ("endpoint", Part::Endpoint),
    ("protocol", Part::Protocol),
    ("request", Part::Request),
    ("status", Part::Status),
    ("size", Part::Size),
    ("referer", Part::Referer),
    ("agent", Part::Agent),
];

/// The column names an access log stream may declare.
pub fn column_names() -> impl Iterator<Item = &'static str> {
    PARTS.iter().map(|(n, _)| *n)
}

/// Where each part of the current line is, as ranges into the decoder's buffer.
#[derive(Default)]
struct Line {
    parts: [Option<Range<usize>>; 12],
    ts_ms: i64,
}

impl Line {
    fn set(&mut self, p: Part, r: Option<Range<usize>>) {
        self.parts[p as usize] = r;
    }
}

/// Decodes access log lines into batches of a fixed schema.
pub struct AccessLogDecoder {
    rows: Rows,
    /// The part each column takes, in schema order.
    parts: Vec<Part>,
    /// The current line, followed by unescaped copies of quoted parts.
    buf: String,
    line: Line,
    values: Vec<Value>,
    /// The last time text parsed and its value: lines of one second share it.
    last_time: Vec<u8>,
    last_ms: i64,
}

impl AccessLogDecoder {
    /// A decoder filling the columns of `schema` by name; an error names a
    /// column that is not an access log part or whose type does not fit.
    pub fn new(schema: SchemaRef) -> Result<Self, ArrowError> {
        let rows = Rows::new(schema.clone())?;
        let mut parts = Vec::new();
        for f in schema.fields() {
            let name = f.name().to_ascii_lowercase();
            let part = PARTS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, p)| *p)
                .ok_or_else(|| {
                    ArrowError::InvalidArgumentError(format!(
                        "access_log has no column '{}'; columns: {}",
                        f.name(),
                        column_names().collect::<Vec<_>>().join(", ")
                    ))
                })?;
            if part == Part::Ts
                && !matches!(
                    f.data_type(),
                    DataType::Timestamp(TimeUnit::Millisecond, None)
                        | DataType::Int64
                        | DataType::Utf8
                )
            {
                return Err(ArrowError::InvalidArgumentError(format!(
                    "access_log column '{}' must be TIMESTAMP, BIGINT or TEXT",
                    f.name()
                )));
            }
            parts.push(part);
        }
        Ok(AccessLogDecoder {
            rows,
            parts,
            buf: String::new(),
            line: Line::default(),
            values: Vec::new(),
            last_time: Vec::new(),
            last_ms: 0,
        })
    }

    /// The schema of decoded batches.
    pub fn schema(&self) -> &SchemaRef {
        self.rows.schema()
    }

    /// Decodes `payloads`, returning the batch of good lines (in order) and the bad ones.
    pub fn decode(&mut self, payloads: &[&[u8]]) -> (Option<RecordBatch>, Vec<BadRecord>) {
        let bad = super::decode_each(payloads, INVALID, |p| self.record(p));
        (self.rows.finish(), bad)
    }

    /// Parses one line and appends its row.
    fn record(&mut self, payload: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(payload).map_err(|e| format!("not UTF-8: {e}"))?;
        let text = text.trim_end_matches(['\r', '\n']);
        self.buf.clear();
        self.buf.push_str(text);
        self.parse(text).map_err(|what| {
            let mut shown: String = text.chars().take(120).collect();
            if shown.len() < text.len() {
                shown.push_str("...");
            }
            format!("{what} in access log line: {shown}")
        })?;
        self.values.clear();
        let columns = self.rows.columns();
        for (c, part) in columns.iter().zip(&self.parts) {
            let range = self.line.parts[*part as usize].clone();
            let v = match range {
                None => Value::Null,
                Some(_) if *part == Part::Ts && !c.is_text() => Value::Int(self.line.ts_ms),
                Some(r) => c.convert(&self.buf, r, true).map_err(|e| {
                    let name = PARTS[*part as usize].0;
                    format!("{name}: {e}")
                })?,
            };
            self.values.push(v);
        }
        self.rows.push(&self.buf, &self.values);
        Ok(())
    }

    /// Finds the parts of `text`, a copy of which is at the start of `buf`.
    fn parse(&mut self, text: &str) -> Result<(), &'static str> {
        let b = text.as_bytes();
        let mut at = 0;
        let line = &mut self.line;
        line.parts = Default::default();
        let ip = token(b, &mut at).ok_or("no client host")?;
        line.set(Part::Ip, Some(ip));
        let identity = token(b, &mut at).ok_or("no identity")?;
        line.set(Part::Identity, dash_null(b, identity));
        let user = token(b, &mut at).ok_or("no user")?;
        line.set(Part::User, dash_null(b, user));

        skip_spaces(b, &mut at);
        if b.get(at) != Some(&b'[') {
            return Err("no [time]");
        }
        let end = b[at..]
            .iter()
            .position(|&c| c == b']')
            .ok_or("unterminated [time]")?;
        let time = at + 1..at + end;
        at += end + 1;
        let time_bytes = &b[time.clone()];
        if time_bytes != self.last_time.as_slice() {
            self.last_ms = clf_time_ms(time_bytes).ok_or("bad time")?;
            self.last_time.clear();
            self.last_time.extend_from_slice(time_bytes);
        }
        line.ts_ms = self.last_ms;
        line.set(Part::Ts, Some(time));

        let (request, escaped) = quoted(b, &mut at).ok_or("no \"request\"")?;
        let status = token(b, &mut at).ok_or("no status")?;
        let size = token(b, &mut at).ok_or("no size")?;
        let digits_or_dash = |r: &Range<usize>| {
            let t = &b[r.clone()];
            t == b"-" || t.iter().all(u8::is_ascii_digit)
        };
        if !digits_or_dash(&status) {
            return Err("bad status");
        }
        if !digits_or_dash(&size) {
            return Err("bad size");
        }
        line.set(Part::Status, dash_null(b, status));
        line.set(Part::Size, dash_null(b, size));

        skip_spaces(b, &mut at);
        let mut referer = None;
        let mut agent = None;
        if at < b.len() {
            referer = Some(quoted(b, &mut at).ok_or("bad \"referer\"")?);
            agent = Some(quoted(b, &mut at).ok_or("bad \"agent\"")?);
        }

        let request = self.unescape(text, request, escaped);
        self.split_request(request);
        for (part, quoted) in [(Part::Referer, referer), (Part::Agent, agent)] {
            if let Some((r, esc)) = quoted {
                let r = self.unescape(text, r, esc);
                let r = dash_null(self.buf.as_bytes(), r);
                self.line.set(part, r);
            }
        }
        Ok(())
    }

    /// Sets request, method, endpoint and protocol from the request line at `r`.
    fn split_request(&mut self, r: Range<usize>) {
        let b = self.buf.as_bytes();
        let text = &b[r.clone()];
        if text == b"-" || text.is_empty() {
            return;
        }
        self.line.set(Part::Request, Some(r.clone()));
        let Some(sp) = text.iter().position(|&c| c == b' ') else {
            self.line.set(Part::Endpoint, Some(r));
            return;
        };
        self.line.set(Part::Method, Some(r.start..r.start + sp));
        let rest = r.start + sp + 1..r.end;
        let rest_text = &b[rest.clone()];
        match rest_text.iter().rposition(|&c| c == b' ') {
            Some(last) if rest_text[last + 1..].starts_with(b"HTTP/") => {
                self.line
                    .set(Part::Endpoint, Some(rest.start..rest.start + last));
                self.line
                    .set(Part::Protocol, Some(rest.start + last + 1..rest.end));
            }
            _ => self.line.set(Part::Endpoint, Some(rest)),
        }
    }

    /// The range in `buf` of `text[r]` with `\"` and `\\` unescaped: `r`
    /// itself when there is nothing to unescape, else a copy appended to `buf`.
    fn unescape(&mut self, text: &str, r: Range<usize>, escaped: bool) -> Range<usize> {
        if !escaped {
            return r;
        }
        let start = self.buf.len();
        let mut rest = &text[r];
        while let Some(i) = rest.find('\\') {
            self.buf.push_str(&rest[..i]);
            match rest[i + 1..].chars().next() {
                Some(c @ ('"' | '\\')) => {
                    self.buf.push(c);
                    rest = &rest[i + 2..];
                }
                _ => {
                    self.buf.push('\\');
                    rest = &rest[i + 1..];
                }
            }
        }
        self.buf.push_str(rest);
        start..self.buf.len()
    }
}

fn skip_spaces(b: &[u8], at: &mut usize) {
    while *at < b.len() && (b[*at] == b' ' || b[*at] == b'\t') {
        *at += 1;
    }
}

/// The next space-separated token.
fn token(b: &[u8], at: &mut usize) -> Option<Range<usize>> {
    skip_spaces(b, at);
    let start = *at;
    while *at < b.len() && b[*at] != b' ' && b[*at] != b'\t' {
        *at += 1;
    }
    (start < *at).then_some(start..*at)
}

/// The next double-quoted string (inside the quotes), and whether it has backslash escapes.
fn quoted(b: &[u8], at: &mut usize) -> Option<(Range<usize>, bool)> {
    skip_spaces(b, at);
    if b.get(*at) != Some(&b'"') {
        return None;
    }
    let start = *at + 1;
    let mut i = start;
    let mut escaped = false;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                escaped = true;
                i += 2;
            }
            b'"' => {
                *at = i + 1;
                return Some((start..i, escaped));
            }
            _ => i += 1,
        }
    }
    None
}

/// `None` for a `-` placeholder.
fn dash_null(b: &[u8], r: Range<usize>) -> Option<Range<usize>> {
    (&b[r.clone()] != b"-").then_some(r)
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    b.iter().try_fold(0u32, |n, &d| {
        n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
}

/// Parses `10/Oct/2000:13:55:36 -0700` (optionally with `.mmm` after the
/// seconds) into UTC epoch milliseconds.
fn clf_time_ms(t: &[u8]) -> Option<i64> {
    let (date, zone) = match t.iter().rposition(|&c| c == b' ') {
        Some(sp) => (&t[..sp], &t[sp + 1..]),
        None => return None,
    };
    let mut it = date.splitn(4, |&c| c == b'/' || c == b':');
    let day = digits(it.next()?)?;
    let month = match it.next()?.to_ascii_lowercase().as_slice() {
        b"jan" => 1,
        b"feb" => 2,
        b"mar" => 3,
        b"apr" => 4,
        b"may" => 5,
        b"jun" => 6,
        b"jul" => 7,
        b"aug" => 8,
        b"sep" => 9,
        b"oct" => 10,
        b"nov" => 11,
        b"dec" => 12,
        _ => return None,
    };
    let year = digits(it.next()?)?;
    let clock = it.next()?;
    let (clock, millis) = match clock.iter().position(|&c| c == b'.') {
        Some(dot) => {
            let frac = &clock[dot + 1..];
            if frac.is_empty() || frac.len() > 9 {
                return None;
            }
            let f = digits(frac)?;
            let ms = match frac.len() {
                1 => f * 100,
                2 => f * 10,
                n => f / 10u32.pow(n as u32 - 3),
            };
            (&clock[..dot], ms)
        }
        None => (clock, 0),
    };
    let mut hms = clock.split(|&c| c == b':');
    let h = digits(hms.next()?)?;
    let m = digits(hms.next()?)?;
    let s = digits(hms.next()?)?;
    if hms.next().is_some() || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    let days = date
        .signed_duration_since(DateTime::UNIX_EPOCH.date_naive())
        .num_days();
    let (sign, hhmm) = match zone.first()? {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    let hhmm = match hhmm {
        [a, b, b':', c, d] | [a, b, c, d] => [*a, *b, *c, *d],
        _ => return None,
    };
    let zh = digits(&hhmm[..2])?;
    let zm = digits(&hhmm[2..])?;
    if zm > 59 {
        return None;
    }
    let offset = sign * i64::from(zh * 3600 + zm * 60);
    let local = days * 86_400 + i64::from(h * 3600 + m * 60 + s);
    Some((local - offset) * 1_000 + i64::from(millis))
}
#[cfg(test)]
mod tests;
