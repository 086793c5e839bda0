//! Reading states: the checks that keep a damaged or hostile state from
//! making the sketch library panic, and the measure of a sketch's heap.

use super::*;

/// Parses a state produced by [`Accumulator::state`], rejecting anything
/// that could make the sketch library panic or corrupt the merged sketch.
pub(super) fn decode_sketch(bytes: &[u8]) -> Result<Sketch> {
    let Some((&version, body)) = bytes.split_first() else {
        return exec_err!("empty approx_distinct state");
    };
    let invalid = |e: &dyn fmt::Display| exec_datafusion_err!("invalid approx_distinct state: {e}");
    if version == COMPACT_VERSION {
        // Rewritten in the library's layout, which it can read.
        let mut codes = Vec::new();
        read_compact_state(body, &mut codes).map_err(|e| invalid(&e))?;
        codes.sort_unstable();
        codes.dedup();
        let mut library = Vec::new();
        write_library_sparse_state(&codes, &mut library);
        return decode_sketch(&library);
    }
    if version != FORMAT_VERSION {
        return exec_err!(
            "approx_distinct state has format version {version}, expected {FORMAT_VERSION} or {COMPACT_VERSION}"
        );
    }
    let repr: SketchRepr = codec::decode(body).map_err(|e| invalid(&e))?;
    repr.validate().map_err(|e| invalid(&e))?;
    codec::decode(body).map_err(|e| invalid(&e))
}

/// Field-for-field mirror of the serde layout of `hyperloglogplus` 0.4's
/// `HyperLogLogPlus`, whose fields are private. Decoding a state into it
/// first lets [`SketchRepr::validate`] check the invariants the library
/// relies on without checking itself.
#[derive(Deserialize)]
pub(super) struct SketchRepr {
    _hasher: (),
    precision: u8,
    /// Register count, sparse register count, sparse size limit in bytes.
    pub(super) counts: (u64, u64, u64),
    /// Hash codes not yet folded into `sparse`.
    tmpset: Vec<u32>,
    sparse: SparseRepr,
    /// Present once the sketch is dense.
    registers: Option<RegistersRepr>,
    _phantom: (),
}

/// Sorted sparse hash codes, difference- then varint-encoded.
#[derive(Deserialize)]
pub(super) struct SparseRepr {
    count: u64,
    last: u32,
    buf: Vec<u8>,
}

/// Dense registers: 6 bits each, five to a `u32` word.
#[derive(Deserialize)]
pub(super) struct RegistersRepr {
    buf: Vec<u32>,
    count: u64,
    zeros: u64,
}

/// Bits per dense register, and registers per `u32` word.
pub(super) const REGISTER_BITS: u32 = 6;
pub(super) const REGISTERS_PER_WORD: usize = 5;

/// Largest leading-zero count a sparse hash code can carry: the hash's
/// 64 bits minus the 25-bit sparse index, plus one.
pub(super) const MAX_SPARSE_RHO: u32 = 64 - 25 + 1;

/// The layout every valid state must share, taken from an empty sketch.
pub(super) static EMPTY_REPR: LazyLock<SketchRepr> = LazyLock::new(|| {
    let mut bytes = Vec::new();
    codec::encode(&empty_sketch(), &mut bytes).expect("an empty sketch encodes");
    codec::decode(&bytes).expect("an empty sketch decodes")
});

impl SketchRepr {
    fn validate(&self) -> std::result::Result<(), String> {
        let empty = &*EMPTY_REPR;
        if self.precision != empty.precision {
            return Err(format!(
                "precision {} (Runnel uses {})",
                self.precision, empty.precision
            ));
        }
        if self.counts != empty.counts {
            return Err(format!("unexpected layout {:?}", self.counts));
        }
        let register_count = self.counts.0;
        self.tmpset.iter().try_for_each(|&code| check_code(code))?;

        walk_sparse_list(
            &self.sparse.buf,
            self.sparse.count,
            self.sparse.last,
            |_| {},
        )?;

        if let Some(registers) = &self.registers {
            let register_count = usize::try_from(register_count).map_err(|e| e.to_string())?;
            if registers.count != self.counts.0
                || registers.buf.len() != register_count.div_ceil(REGISTERS_PER_WORD)
            {
                return Err("wrong number of registers".into());
            }
            let zeros = registers
                .buf
                .iter()
                .flat_map(|&word| {
                    (0..REGISTERS_PER_WORD as u32)
                        .map(move |i| (word >> (i * REGISTER_BITS)) & ((1 << REGISTER_BITS) - 1))
                })
                .take(register_count)
                .filter(|&register| register == 0)
                .count();
            if zeros as u64 != registers.zeros {
                return Err("register zero count does not match the registers".into());
            }
        }
        Ok(())
    }
}

/// Walks a sparse list the way the library does, minus its panics on
/// overlong varints and overflowing sums, calling `f` with each code. The
/// list must hold `count` codes and end with `last`.
pub(super) fn walk_sparse_list(
    buf: &[u8],
    count: u64,
    last: u32,
    mut f: impl FnMut(u32),
) -> std::result::Result<(), String> {
    let (mut at, mut decoded, mut value) = (0, 0u64, 0u32);
    while at < buf.len() {
        let mut difference = 0u32;
        for shift in (0..).step_by(7) {
            let Some(&byte) = buf.get(at) else {
                return Err("truncated sparse list".into());
            };
            at += 1;
            // A u32 takes at most five varint bytes, the last holding 4 bits.
            if shift == 28 && byte > 0x0f {
                return Err("overlong varint in sparse list".into());
            }
            difference |= u32::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        value = value
            .checked_add(difference)
            .ok_or("sparse list overflows")?;
        check_code(value)?;
        f(value);
        decoded += 1;
    }
    if decoded != count || value != last || count > SPARSE_REGISTERS as u64 {
        return Err("inconsistent sparse list".into());
    }
    Ok(())
}

/// A sparse hash code with its low bit set carries a leading-zero count in
/// bits 1..7; anything above [`MAX_SPARSE_RHO`] would spill into the
/// neighbouring dense register when the sketch goes dense.
pub(super) fn check_code(code: u32) -> std::result::Result<(), String> {
    if code & 1 == 1 && (code >> 1) & 0x3f > MAX_SPARSE_RHO {
        return Err(format!("invalid sparse hash code {code:#x}"));
    }
    Ok(())
}

/// Counts the bytes an encoding would take, which is (to within the slack
/// of Vec and HashSet capacities) the sketch's heap footprint: dense
/// registers are 4-byte words, the sparse list is bytes, pending hashes are
/// 4-byte codes.
#[derive(Default)]
pub(super) struct Measure {
    pub(super) bytes: usize,
    /// An `Option` was `Some`: the only one in a sketch is its dense registers.
    pub(super) saw_some: bool,
}

impl codec::Sink for Measure {
    fn put(&mut self, bytes: &[u8]) {
        self.bytes += bytes.len();
    }

    fn some(&mut self) {
        self.saw_some = true;
    }
}
