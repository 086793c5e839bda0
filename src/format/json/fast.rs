//! A fast path for flat JSON objects: it scans each payload once and appends
//! straight to the columns the caller reads, skipping the values of the others
//! after checking that arrow-json would accept them. Anything it is not sure
//! about (escapes in kept strings, nested values, timestamps written as text,
//! duplicate keys, malformed input) makes it give up on the whole call, and
//! the arrow-json path decodes the payloads instead, so both paths always
//! agree.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, PrimitiveBuilder, StringBuilder,
    TimestampMillisecondBuilder, new_null_array,
};
use datafusion::arrow::datatypes::{ArrowPrimitiveType, DataType, SchemaRef, TimeUnit};
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
    /// The name written in JSON is the name itself, quoted: no `"`, `\`
    /// or control bytes to escape.
    plain: bool,
    /// A plain name of up to 15 bytes and its closing quote as two
    /// little-endian words, with the masks of their bytes: the key is then
    /// compared in two loads.
    quoted: Option<([u64; 2], [u64; 2])>,
    kind: Kind,
    builder: Builder,
}

/// [`Column::quoted`] for `name`, when it is plain and short enough.
fn quoted(name: &[u8], plain: bool) -> Option<([u64; 2], [u64; 2])> {
    if !plain || name.len() >= 16 {
        return None;
    }
    let (mut bytes, mut mask) = ([0u8; 16], [0u8; 16]);
    bytes[..name.len()].copy_from_slice(name);
    bytes[name.len()] = b'"';
    mask[..=name.len()].fill(0xff);
    Some((
        [word(&bytes, 0), word(&bytes, 1)],
        [word(&mask, 0), word(&mask, 1)],
    ))
}

/// The `k`-th little-endian word of `a` (which holds at least `8k + 8` bytes).
#[inline]
fn word(a: &[u8], k: usize) -> u64 {
    u64::from_le_bytes(a[8 * k..8 * k + 8].try_into().expect("eight bytes"))
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
pub(super) struct GiveUp;

pub(super) type R<T> = Result<T, GiveUp>;

fn ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Whether two (short) keys are equal, compared in line: a `memcmp` call
/// per field costs more than the comparison.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// End of the string starting at the quote `b[i]`, and whether it has
/// escapes. Text that is not valid UTF-8 gives up: bytes past ASCII can
/// only be in strings (the grammar refuses them elsewhere), so checking
/// the strings that hold some checks the whole record.
pub(super) fn string_end(b: &[u8], i: usize) -> R<(usize, bool)> {
    let mut j = i + 1;
    let mut escaped = false;
    let mut ascii = true;
    loop {
        // Plain text eight bytes at a time, up to the next byte that matters.
        while let Some(w) = b.get(j..j + 8) {
            let flags = stops(u64::from_le_bytes(w.try_into().expect("eight bytes")));
            if flags != 0 {
                j += (flags.trailing_zeros() / 8) as usize;
                break;
            }
            j += 8;
        }
        match b.get(j) {
            Some(b'"') if ascii => return Ok((j + 1, escaped)),
            Some(b'"') => {
                simdutf8::basic::from_utf8(&b[i + 1..j]).map_err(|_| GiveUp)?;
                return Ok((j + 1, escaped));
            }
            Some(b'\\') => {
                escaped = true;
                ascii &= b.get(j + 1).is_none_or(|c| *c < 0x80);
                j += 2;
            }
            Some(c) if *c < 0x20 => return Err(GiveUp),
            Some(c) => {
                ascii &= *c < 0x80;
                j += 1;
            }
            None => return Err(GiveUp),
        }
    }
}

/// The high bit of each byte of `w` (eight bytes, the first lowest) that
/// ends plain ASCII string text: `"`, `\`, a control byte below 0x20 or
/// a byte past ASCII. The lowest flag is exact; flags above it may be
/// spurious (a borrow), which does not matter as scanning stops at the
/// lowest.
fn stops(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // High bit set in each byte of `x` below `n` (n <= 0x80).
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * n as u64) & !x & HIGH;
    let quote = below(w ^ (ONES * b'"' as u64), 1);
    quote | below(w ^ (ONES * b'\\' as u64), 1) | below(w, 0x20) | (w & HIGH)
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

/// A number token's sign (whether it is negative) and its digits.
fn split_sign(t: &[u8]) -> (bool, &[u8]) {
    match t.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, t),
    }
}

/// The value of an integer token (`number_end` checked its grammar: an
/// optional `-`, then digits); out of `i64`'s range gives up.
fn integer(t: &[u8]) -> R<i64> {
    let (negative, digits) = split_sign(t);
    // Accumulated negatively, so `i64::MIN` fits.
    let mut n: i64 = 0;
    for d in digits {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_sub((d - b'0') as i64))
            .ok_or(GiveUp)?;
    }
    if negative {
        Ok(n)
    } else {
        n.checked_neg().ok_or(GiveUp)
    }
}

/// Powers of ten that `f64` holds exactly.
const EXACT_POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The value of a number token (`number_end` checked its grammar).
///
/// A plain decimal whose digits, read as one integer, fit `f64`'s 53-bit
/// mantissa and whose fraction has at most 22 digits is that integer
/// divided by an exact power of ten: both operands exact, the one
/// division correctly rounded, so the result is the nearest `f64` — what
/// `str::parse` gives — without its general algorithm. Anything else (an
/// exponent, more digits) goes to `str::parse`.
pub(super) fn float(t: &[u8]) -> R<f64> {
    let (negative, digits) = split_sign(t);
    let mut mantissa: u64 = 0;
    let mut fraction = None;
    for (i, &d) in digits.iter().enumerate() {
        match d {
            b'0'..=b'9' if mantissa < 1 << 53 => mantissa = mantissa * 10 + (d - b'0') as u64,
            b'.' => fraction = Some(digits.len() - i - 1),
            _ => return slow_float(t),
        }
    }
    let scale = fraction.unwrap_or(0);
    if mantissa > 1 << 53 || scale >= EXACT_POWERS_OF_TEN.len() {
        return slow_float(t);
    }
    let v = mantissa as f64 / EXACT_POWERS_OF_TEN[scale];
    Ok(if negative { -v } else { v })
}

fn slow_float(t: &[u8]) -> R<f64> {
    // SAFETY: a number token.
    unsafe { text(t, 0, t.len()) }.parse().map_err(|_| GiveUp)
}

/// The token `b[s..e]` as text.
///
/// # Safety
/// `b[s..e]` must be a token [`token`] read: a number or a literal (ASCII
/// by the grammar), or a string's text, which [`string_end`] checked is
/// UTF-8.
unsafe fn text(b: &[u8], s: usize, e: usize) -> &str {
    // SAFETY: ASCII, or text checked to be UTF-8.
    unsafe { std::str::from_utf8_unchecked(&b[s..e]) }
}

impl Column {
    /// Whether `b[at..]` is the column's name followed by its closing quote.
    #[inline]
    fn is_key_at(&self, b: &[u8], at: usize) -> bool {
        if let (Some((words, masks)), Some(w)) = (self.quoted, b.get(at..at + 16)) {
            return word(w, 0) & masks[0] == words[0] && word(w, 1) & masks[1] == words[1];
        }
        let end = at + self.name.len();
        self.plain && b.get(end) == Some(&b'"') && same(&b[at..end], &self.name)
    }

    /// Appends token `t` of record `b`.
    ///
    /// # Safety
    /// `t` must be one of `b`'s tokens (see [`text`]).
    unsafe fn append(&mut self, b: &[u8], t: &Token) -> R<()> {
        // A null fits every type, read or skipped.
        if let Token::Null = t {
            self.append_null();
            return Ok(());
        }
        match (&mut self.builder, t) {
            (Builder::Skip, t) => match (self.kind, t) {
                (Kind::Utf8, _) => Ok(()),
                (Kind::Float64, Token::Num(..)) => Ok(()),
                (Kind::Int64 | Kind::TimestampMs, Token::Num(_, _, true)) => Ok(()),
                (Kind::Boolean, Token::Bool(_)) => Ok(()),
                _ => Err(GiveUp),
            },
            (Builder::Utf8(v), Token::Str(s, e, false)) => {
                v.append_value(unsafe { text(b, *s, *e) });
                Ok(())
            }
            (Builder::Float64(v), Token::Num(s, e, _)) => {
                v.append_value(float(&b[*s..*e])?);
                Ok(())
            }
            (Builder::Int64(v), Token::Num(s, e, true)) => {
                v.append_value(integer(&b[*s..*e])?);
                Ok(())
            }
            (Builder::TimestampMs(v), Token::Num(s, e, true)) => {
                v.append_value(integer(&b[*s..*e])?);
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

    /// The column's values so far. The builder starts again with room for
    /// an eighth more than these: the next batch is likely about as large,
    /// and a builder that grows copies what it holds.
    fn finish(&mut self, t: &DataType, rows: usize) -> ArrayRef {
        let room = more(rows);
        match &mut self.builder {
            Builder::Utf8(v) => {
                let a = v.finish();
                *v = StringBuilder::with_capacity(room, more(a.values().len()));
                Arc::new(a)
            }
            Builder::Float64(v) => restart(v, room),
            Builder::Int64(v) => restart(v, room),
            Builder::TimestampMs(v) => restart(v, room),
            Builder::Boolean(v) => {
                let a = v.finish();
                *v = BooleanBuilder::with_capacity(room);
                Arc::new(a)
            }
            Builder::Skip => new_null_array(t, rows),
        }
    }
}

/// An eighth more than `n`: room for a batch about as large as the last.
fn more(n: usize) -> usize {
    n + n / 8
}

/// `v`'s values so far; `v` starts again with room for `room` values.
fn restart<T: ArrowPrimitiveType>(v: &mut PrimitiveBuilder<T>, room: usize) -> ArrayRef {
    let a = v.finish();
    *v = PrimitiveBuilder::with_capacity(room);
    Arc::new(a)
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
                    Kind::TimestampMs => Builder::TimestampMs(TimestampMillisecondBuilder::new()),
                    Kind::Boolean => Builder::Boolean(BooleanBuilder::new()),
                }
            };
            let name = f.name().as_bytes();
            let plain = !name.iter().any(|b| matches!(b, b'"' | b'\\' | 0..0x20));
            columns.push(Column {
                name: name.into(),
                plain,
                quoted: quoted(name, plain),
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
        let mut i = ws(b, 0);
        if b.get(i) != Some(&b'{') {
            return Err(GiveUp);
        }
        i = ws(b, i + 1);
        let mut seen: u64 = 0;
        let mut unknown = None;
        let mut next = 0;
        if b.get(i) == Some(&b'}') {
            i += 1;
        } else {
            loop {
                if b.get(i) != Some(&b'"') {
                    return Err(GiveUp);
                }
                // Records mostly list their fields in one order: the key
                // is likely the column after the last one, quoted.
                let expected = (self.columns.get(next)).filter(|col| col.is_key_at(b, i + 1));
                let ke = match expected {
                    Some(col) => i + 2 + col.name.len(),
                    None => match string_end(b, i)? {
                        (_, true) => return Err(GiveUp),
                        (ke, false) => ke,
                    },
                };
                let key = &b[i + 1..ke - 1];
                let c = match expected {
                    Some(_) => Some(next),
                    None => self.columns.iter().position(|c| same(&c.name, key)),
                };
                i = ws(b, ke);
                if b.get(i) != Some(&b':') {
                    return Err(GiveUp);
                }
                i = ws(b, i + 1);
                let (t, e) = token(b, i)?;
                i = e;
                if let Some(c) = c {
                    next = c + 1;
                    if seen & (1 << c) != 0 {
                        return Err(GiveUp);
                    }
                    seen |= 1 << c;
                    // SAFETY: `t` is a token of `b`, read just above.
                    unsafe { self.columns[c].append(b, &t)? };
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
