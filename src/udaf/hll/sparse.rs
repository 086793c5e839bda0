//! Sparse hash codes and the compact state layout (version 2): Rice-coded
//! gaps between sorted codes, and the sketch library's sparse list layout
//! (version 1) they are read from.

use super::*;

/// Bits of the index of a sparse hash code (fixed by the sketch library).
pub(super) const SPARSE_PRECISION: u32 = 25;

/// Registers the sparse estimate counts over (the library's choice).
pub(super) const SPARSE_REGISTERS: usize = 1 << (SPARSE_PRECISION - 1);

/// Bytes the sparse list may take before the sketch turns dense: what the
/// dense registers take, rounded the library's way.
pub(super) const SPARSE_LIMIT: usize = 4 * REGISTERS / REGISTERS_PER_WORD;

/// The hash code the sketch library keeps in its sparse list for `hash`:
/// the top [`SPARSE_PRECISION`] bits shifted left by one, or, when the bits
/// between [`PRECISION`] and [`SPARSE_PRECISION`] are all zero (so they
/// cannot give the dense register's leading-zero count), the top bits
/// shifted by seven over that count and a set low bit.
#[inline]
pub(super) fn sparse_code(hash: u64) -> u32 {
    let index = (hash >> (64 - SPARSE_PRECISION)) as u32;
    let between = (hash << PRECISION) >> (64 - (SPARSE_PRECISION - u32::from(PRECISION)));
    if between == 0 {
        let zeros =
            1 + ((hash << SPARSE_PRECISION) | (1 << (SPARSE_PRECISION - 1))).leading_zeros();
        (index << 7) | (zeros << 1) | 1
    } else {
        index << 1
    }
}

/// A hash that sets the same dense register to the same value as `code`
/// does, for feeding sparse codes into a dense sketch.
pub(super) fn register_hash(code: u32) -> u64 {
    let precision = u32::from(PRECISION);
    // Decoded as the library decodes codes when a sketch turns dense.
    let (index, zeros) = if code & 1 == 1 {
        (
            code >> (32 - precision),
            ((code >> 1) & 0x3f) + SPARSE_PRECISION - precision,
        )
    } else {
        (
            (code << (32 - SPARSE_PRECISION - 1)) >> (32 - precision),
            (code << (32 - SPARSE_PRECISION + precision - 1)).leading_zeros() + 1,
        )
    };
    // A dense insert takes the register from the top bits and its value
    // from the leading zeros after them, plus one; past the 50 bits after
    // the index it counts 51.
    let hash_bits = 64 - precision;
    (u64::from(index) << hash_bits) | (1u64 << hash_bits).checked_shr(zeros).unwrap_or(0)
}

/// Bytes of the sparse list holding `codes` (sorted, distinct): each
/// difference from the previous code as a varint.
pub(super) fn sparse_list_len(codes: &[u32]) -> usize {
    let mut previous = 0;
    codes
        .iter()
        .map(|&code| {
            let len = varint_len(code - previous);
            previous = code;
            len
        })
        .sum()
}

pub(super) fn varint_len(value: u32) -> usize {
    (32 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

pub(super) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The library's estimate for a sparse sketch of `codes` distinct codes:
/// linear counting over [`SPARSE_REGISTERS`], computed exactly as it does.
pub(super) fn sparse_estimate(codes: usize) -> f64 {
    let (registers, zeros) = (SPARSE_REGISTERS as f64, (SPARSE_REGISTERS - codes) as f64);
    registers * (registers / zeros).ln()
}

/// What every state begins with: the format version and the sketch's
/// fixed layout (precision and sizes).
pub(super) static STATE_PREFIX: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut bytes = vec![FORMAT_VERSION];
    codec::encode(&empty_sketch(), &mut bytes).expect("an empty sketch encodes");
    // Drop what follows the layout: no pending codes (1), an empty sparse
    // list (1 + 4 + 1) and no registers (1).
    let layout = bytes.len() - 8;
    assert_eq!(bytes[layout..], [0; 8], "empty sketch layout");
    bytes.truncate(layout);
    bytes
});

/// Appends the state of a sparse sketch holding `codes` (sorted, distinct)
/// in the library's layout, exactly as it serialises such a sketch once its
/// pending codes are merged.
pub(super) fn write_library_sparse_state(codes: &[u32], out: &mut Vec<u8>) {
    let list_len = sparse_list_len(codes);
    out.reserve(STATE_PREFIX.len() + 16 + list_len);
    out.extend_from_slice(&STATE_PREFIX);
    out.push(0); // no pending codes
    put_varint(out, codes.len() as u64);
    out.extend_from_slice(&codes.last().copied().unwrap_or(0).to_le_bytes());
    put_varint(out, list_len as u64);
    let mut previous = 0;
    for &code in codes {
        put_varint(out, u64::from(code - previous));
        previous = code;
    }
    out.push(0); // no dense registers
}

/// Appends the codes of a sparse state (of either version) to `codes` and
/// returns true, without building a sketch. Returns false, leaving `codes`
/// in an unspecified state, for anything else: a dense state, an invalid
/// one, or one in a form the writers here do not produce. It accepts nothing
/// that [`decode_sketch`] rejects.
pub(super) fn read_sparse_state(bytes: &[u8], codes: &mut Vec<u32>) -> bool {
    match bytes.split_first() {
        Some((&COMPACT_VERSION, body)) => read_compact_state(body, codes).is_ok(),
        Some((&FORMAT_VERSION, _)) => read_library_sparse_state(bytes, codes).is_some(),
        _ => false,
    }
}

pub(super) fn read_library_sparse_state(bytes: &[u8], codes: &mut Vec<u32>) -> Option<()> {
    let input = bytes.strip_prefix(STATE_PREFIX.as_slice())?;
    let (pending, mut input) = read_varint(input)?;
    for _ in 0..pending {
        let (code, rest) = input.split_first_chunk::<4>()?;
        input = rest;
        let code = u32::from_le_bytes(*code);
        check_code(code).ok()?;
        codes.push(code);
    }
    let (count, rest) = read_varint(input)?;
    let (last, rest) = rest.split_first_chunk::<4>()?;
    let (list_len, rest) = read_varint(rest)?;
    let list_len = usize::try_from(list_len).ok()?;
    let list = rest.get(..list_len)?;
    // No dense registers, and nothing after.
    if rest[list_len..] != [0] {
        return None;
    }
    walk_sparse_list(list, count, u32::from_le_bytes(*last), |code| {
        codes.push(code)
    })
    .ok()
}

/// Appends the state of a sparse sketch holding `codes` (sorted, distinct)
/// in the compact layout, after [`COMPACT_VERSION`]:
///
/// * the number of even codes and of odd codes, as varints;
/// * the odd codes (rare: they carry a leading-zero count), as varint gaps;
/// * if there are even codes, a Rice parameter `k` (one byte), then the
///   even codes halved, as Rice-coded gaps (quotient in unary, then `k` low
///   bits; least significant bit first), zero-padded to a whole byte.
///
/// A gap is the difference from the previous value less one (the first
/// value itself). Even codes are the top 25 bits of a hash, nearly uniform,
/// so their gaps are close to geometric, which Rice coding suits: about
/// 17 bits a code at 800 codes, where the library's varints of doubled
/// differences take 23.
pub(super) fn write_sparse_state(codes: &[u32], out: &mut Vec<u8>) {
    let halved_evens = || codes.iter().filter(|&&c| c & 1 == 0).map(|&c| c >> 1);
    let odds = || codes.iter().filter(|&&c| c & 1 == 1).copied();
    let evens = halved_evens().count();
    out.push(COMPACT_VERSION);
    put_varint(out, evens as u64);
    put_varint(out, (codes.len() - evens) as u64);
    for gap in gaps(odds()) {
        put_varint(out, u64::from(gap));
    }
    if evens > 0 {
        let k = rice_parameter(|| gaps(halved_evens()), evens as u64);
        out.push(k as u8);
        let mut bits = BitWriter::new(out);
        for gap in gaps(halved_evens()) {
            bits.rice(gap, k);
        }
        bits.finish();
    }
}

/// Gaps between the values of a strictly increasing sequence: each value
/// less the previous one less one, the first value as it is.
pub(super) fn gaps(values: impl Iterator<Item = u32>) -> impl Iterator<Item = u32> {
    let mut next = 0u32;
    values.map(move |value| {
        let gap = value - next;
        next = value.wrapping_add(1);
        gap
    })
}

/// The Rice parameter that codes `gaps` (`count` of them) in the fewest
/// bits, among those next to the log of their mean.
pub(super) fn rice_parameter<I: Iterator<Item = u32>>(gaps: impl Fn() -> I, count: u64) -> u32 {
    let mean = (gaps().map(u64::from).sum::<u64>() / count).max(1);
    let guess = mean.ilog2();
    let bits =
        |k: u32| gaps().map(|gap| u64::from(gap >> k)).sum::<u64>() + count * u64::from(k + 1);
    (guess.saturating_sub(1)..=(guess + 1).min(31))
        .min_by_key(|&k| bits(k))
        .expect("a non-empty range")
}

/// Reads the body of a [`COMPACT_VERSION`] state (see
/// [`write_sparse_state`]), appending its codes to `codes`.
pub(super) fn read_compact_state(
    body: &[u8],
    codes: &mut Vec<u32>,
) -> std::result::Result<(), String> {
    let truncated = || "truncated compact state".to_string();
    let (evens, rest) = read_varint(body).ok_or_else(truncated)?;
    let (odds, mut rest) = read_varint(rest).ok_or_else(truncated)?;
    if evens.saturating_add(odds) > SPARSE_REGISTERS as u64 {
        return Err("too many codes in a compact state".into());
    }
    let mut next = 0u32;
    for _ in 0..odds {
        let (gap, tail) = read_varint(rest).ok_or_else(truncated)?;
        rest = tail;
        let code = u32::try_from(gap)
            .ok()
            .and_then(|gap| next.checked_add(gap))
            .filter(|code| code & 1 == 1)
            .ok_or("invalid odd code in compact state")?;
        check_code(code)?;
        codes.push(code);
        next = code.wrapping_add(1);
    }
    if evens == 0 {
        return if rest.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes after a compact state".into())
        };
    }
    let (&k, rest) = rest.split_first().ok_or_else(truncated)?;
    let k = u32::from(k);
    if k > 31 {
        return Err(format!("invalid Rice parameter {k}"));
    }
    let mut bits = BitReader::new(rest);
    let mut next = 0u32;
    for _ in 0..evens {
        let gap = bits.rice(k).ok_or_else(truncated)?;
        // Halved even codes have 31 bits.
        let half = u64::from(next).saturating_add(gap);
        if half > u64::from(u32::MAX >> 1) {
            return Err("invalid even code in compact state".into());
        }
        codes.push((half as u32) << 1);
        next = half as u32 + 1;
    }
    if !bits.at_padded_end() {
        return Err("trailing bits after a compact state".into());
    }
    Ok(())
}

/// Writes bits least significant first.
pub(super) struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    pending: u64,
    len: u32,
}

impl<'a> BitWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        Self {
            out,
            pending: 0,
            len: 0,
        }
    }

    /// Writes the low `bits` (at most 32) bits of `value`.
    fn put(&mut self, value: u64, bits: u32) {
        self.pending |= value << self.len;
        self.len += bits;
        while self.len >= 8 {
            self.out.push(self.pending as u8);
            self.pending >>= 8;
            self.len -= 8;
        }
    }

    /// Writes `value` Rice-coded with parameter `k`.
    fn rice(&mut self, value: u32, k: u32) {
        let mut quotient = value >> k;
        while quotient >= 32 {
            self.put(u64::from(u32::MAX), 32);
            quotient -= 32;
        }
        // `quotient` ones, then a zero.
        self.put((1 << quotient) - 1, quotient + 1);
        self.put(u64::from(value) & ((1 << k) - 1), k);
    }

    /// Writes what is left, zero-padded to a whole byte.
    fn finish(self) {
        if self.len > 0 {
            self.out.push(self.pending as u8);
        }
    }
}

/// Reads what [`BitWriter`] writes.
pub(super) struct BitReader<'a> {
    input: &'a [u8],
    /// Bits read from `input` but not consumed, lowest first; the bits
    /// above `len` are zero.
    pending: u64,
    len: u32,
}

impl<'a> BitReader<'a> {
    fn new(input: &'a [u8]) -> Self {
        Self {
            input,
            pending: 0,
            len: 0,
        }
    }

    fn refill(&mut self) {
        while self.len <= 56 {
            let Some((&byte, rest)) = self.input.split_first() else {
                return;
            };
            self.pending |= u64::from(byte) << self.len;
            self.len += 8;
            self.input = rest;
        }
    }

    fn consume(&mut self, bits: u32) {
        self.pending = self.pending.checked_shr(bits).unwrap_or(0);
        self.len -= bits;
    }

    /// Reads a Rice-coded value with parameter `k`, or None if the input
    /// ends first.
    fn rice(&mut self, k: u32) -> Option<u64> {
        let mut quotient = 0u64;
        loop {
            self.refill();
            let ones = self.pending.trailing_ones().min(self.len);
            quotient += u64::from(ones);
            if ones < self.len {
                self.consume(ones + 1);
                break;
            }
            if self.input.is_empty() {
                return None;
            }
            self.consume(ones);
        }
        // Larger values are invalid anyway; this keeps the shift in range.
        if quotient > u64::from(u32::MAX) >> k {
            return Some(u64::MAX);
        }
        self.refill();
        if self.len < k {
            return None;
        }
        let low = self.pending & ((1 << k) - 1);
        self.consume(k);
        Some((quotient << k) | low)
    }

    /// Whether all input was read, leaving only zero padding of less than
    /// a byte.
    fn at_padded_end(&self) -> bool {
        self.input.is_empty() && self.len < 8 && self.pending == 0
    }
}

/// Reads a varint as the state codec writes it (see `codec`).
pub(super) fn read_varint(input: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (at, &byte) in input.iter().enumerate().take(10) {
        // The tenth byte may only hold the top bit of a u64.
        if at == 9 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << (7 * at);
        if byte & 0x80 == 0 {
            return Some((value, &input[at + 1..]));
        }
    }
    None
}
