//! Hashing Arrow arrays: each value's canonical bytes through
//! [`SketchHasher`](super::SketchHasher), whatever its Arrow encoding.

use super::*;

/// Calls `f(row, hash)` for every row of `array` that is neither NULL nor
/// masked out by `mask`, with the hash of the value's canonical bytes (see
/// the module docs).
pub(super) fn hash_array<F: FnMut(usize, u64)>(
    array: &ArrayRef,
    mask: Option<&NullBuffer>,
    f: &mut F,
) -> Result<()> {
    // Widening keeps sketches compatible when a column's integer, float or
    // temporal width changes, and makes the bytes independent of the platform.
    fn signed(v: impl Into<i64>) -> [u8; 8] {
        v.into().to_le_bytes()
    }
    fn unsigned(v: impl Into<u64>) -> [u8; 8] {
        v.into().to_le_bytes()
    }
    fn decimal(v: impl Into<i128>) -> [u8; 16] {
        v.into().to_le_bytes()
    }
    // Raw bits, so that -0.0 / 0.0 and NaN payloads count as distinct, as
    // they do in DataFusion's COUNT(DISTINCT).
    fn float(v: f64) -> [u8; 8] {
        v.to_bits().to_le_bytes()
    }

    let a = array.as_ref();
    match a.data_type() {
        // Decoded so a value hashes the same whether or not it is encoded.
        DataType::Dictionary(_, value_type) => return hash_array(&cast(a, value_type)?, mask, f),
        DataType::RunEndEncoded(_, values) => {
            return hash_array(&cast(a, values.data_type())?, mask, f);
        }
        _ => {}
    }
    // Logical nulls, so NULLs of `Null` arrays count too.
    let valid = NullBuffer::union(a.logical_nulls().as_ref(), mask);
    let s = &mut Rows {
        valid: valid.as_ref(),
        len: a.len(),
        f,
    };
    match a.data_type() {
        DataType::Null => {}
        DataType::Boolean => {
            let values = a.as_boolean();
            s.each(|i| [u8::from(values.value(i))]);
        }
        DataType::Int8 => primitive::<Int8Type, 8>(s, a, signed),
        DataType::Int16 => primitive::<Int16Type, 8>(s, a, signed),
        DataType::Int32 => primitive::<Int32Type, 8>(s, a, signed),
        DataType::Int64 => primitive::<Int64Type, 8>(s, a, signed),
        DataType::UInt8 => primitive::<UInt8Type, 8>(s, a, unsigned),
        DataType::UInt16 => primitive::<UInt16Type, 8>(s, a, unsigned),
        DataType::UInt32 => primitive::<UInt32Type, 8>(s, a, unsigned),
        DataType::UInt64 => primitive::<UInt64Type, 8>(s, a, unsigned),
        DataType::Float16 => primitive::<Float16Type, 8>(s, a, |v| float(v.to_f64())),
        DataType::Float32 => primitive::<Float32Type, 8>(s, a, |v| float(v.into())),
        DataType::Float64 => primitive::<Float64Type, 8>(s, a, float),
        DataType::Decimal32(..) => primitive::<Decimal32Type, 16>(s, a, decimal),
        DataType::Decimal64(..) => primitive::<Decimal64Type, 16>(s, a, decimal),
        DataType::Decimal128(..) => primitive::<Decimal128Type, 16>(s, a, decimal),
        DataType::Decimal256(..) => primitive::<Decimal256Type, 32>(s, a, |v| v.to_le_bytes()),
        DataType::Date32 => primitive::<Date32Type, 8>(s, a, signed),
        DataType::Date64 => primitive::<Date64Type, 8>(s, a, signed),
        DataType::Time32(TimeUnit::Second) => primitive::<Time32SecondType, 8>(s, a, signed),
        DataType::Time32(TimeUnit::Millisecond) => {
            primitive::<Time32MillisecondType, 8>(s, a, signed)
        }
        DataType::Time64(TimeUnit::Microsecond) => {
            primitive::<Time64MicrosecondType, 8>(s, a, signed)
        }
        DataType::Time64(TimeUnit::Nanosecond) => {
            primitive::<Time64NanosecondType, 8>(s, a, signed)
        }
        DataType::Timestamp(unit, _) => match unit {
            TimeUnit::Second => primitive::<TimestampSecondType, 8>(s, a, signed),
            TimeUnit::Millisecond => primitive::<TimestampMillisecondType, 8>(s, a, signed),
            TimeUnit::Microsecond => primitive::<TimestampMicrosecondType, 8>(s, a, signed),
            TimeUnit::Nanosecond => primitive::<TimestampNanosecondType, 8>(s, a, signed),
        },
        DataType::Duration(unit) => match unit {
            TimeUnit::Second => primitive::<DurationSecondType, 8>(s, a, signed),
            TimeUnit::Millisecond => primitive::<DurationMillisecondType, 8>(s, a, signed),
            TimeUnit::Microsecond => primitive::<DurationMicrosecondType, 8>(s, a, signed),
            TimeUnit::Nanosecond => primitive::<DurationNanosecondType, 8>(s, a, signed),
        },
        DataType::Interval(IntervalUnit::YearMonth) => {
            primitive::<IntervalYearMonthType, 8>(s, a, signed)
        }
        DataType::Interval(IntervalUnit::DayTime) => {
            primitive::<IntervalDayTimeType, 8>(s, a, |v| {
                let mut bytes = [0; 8];
                bytes[..4].copy_from_slice(&v.days.to_le_bytes());
                bytes[4..].copy_from_slice(&v.milliseconds.to_le_bytes());
                bytes
            })
        }
        DataType::Interval(IntervalUnit::MonthDayNano) => {
            primitive::<IntervalMonthDayNanoType, 16>(s, a, |v| {
                let mut bytes = [0; 16];
                bytes[..4].copy_from_slice(&v.months.to_le_bytes());
                bytes[4..8].copy_from_slice(&v.days.to_le_bytes());
                bytes[8..].copy_from_slice(&v.nanoseconds.to_le_bytes());
                bytes
            })
        }
        DataType::Utf8 => {
            let values = a.as_string::<i32>();
            s.each(|i| values.value(i).as_bytes());
        }
        DataType::LargeUtf8 => {
            let values = a.as_string::<i64>();
            s.each(|i| values.value(i).as_bytes());
        }
        DataType::Utf8View => {
            let values = a.as_string_view();
            s.each(|i| values.value(i).as_bytes());
        }
        DataType::Binary => {
            let values = a.as_binary::<i32>();
            s.each(|i| values.value(i));
        }
        DataType::LargeBinary => {
            let values = a.as_binary::<i64>();
            s.each(|i| values.value(i));
        }
        DataType::BinaryView => {
            let values = a.as_binary_view();
            s.each(|i| values.value(i));
        }
        DataType::FixedSizeBinary(_) => {
            let values = a.as_fixed_size_binary();
            s.each(|i| values.value(i));
        }
        DataType::Dictionary(..) | DataType::RunEndEncoded(..) => unreachable!("decoded above"),
        // Lists, structs, maps, unions: Arrow's row format is a canonical,
        // self-delimiting byte form of any value.
        data_type => {
            let converter = RowConverter::new(vec![SortField::new(data_type.clone())])?;
            let rows = converter.convert_columns(std::slice::from_ref(array))?;
            s.each(|i| rows.row(i));
        }
    }
    Ok(())
}

/// The rows [`hash_array`] visits, and where their hashes go.
pub(super) struct Rows<'a, F> {
    /// `None` when every row is visited.
    valid: Option<&'a NullBuffer>,
    len: usize,
    f: &'a mut F,
}

impl<F: FnMut(usize, u64)> Rows<'_, F> {
    /// Hashes `bytes(row)` for every visited row.
    #[inline]
    fn each<B: AsRef<[u8]>>(&mut self, bytes: impl Fn(usize) -> B) {
        let f = &mut *self.f;
        match self.valid {
            Some(valid) => valid
                .valid_indices()
                .for_each(|i| f(i, hash_bytes(bytes(i).as_ref()))),
            None => (0..self.len).for_each(|i| f(i, hash_bytes(bytes(i).as_ref()))),
        }
    }
}

/// Hashes each visited value of a primitive array as `to_bytes(value)`.
pub(super) fn primitive<T: ArrowPrimitiveType, const N: usize>(
    rows: &mut Rows<'_, impl FnMut(usize, u64)>,
    array: &dyn Array,
    to_bytes: impl Fn(T::Native) -> [u8; N],
) {
    let values = array.as_primitive::<T>().values();
    rows.each(|i| to_bytes(values[i]));
}

/// Dense registers of a sketch.
pub(super) const REGISTERS: usize = 1 << PRECISION;
