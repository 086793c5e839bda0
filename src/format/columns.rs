//! Typed Arrow column builders fed from text fields, shared by the text formats.
//!
//! A record's fields are first converted into [`Value`]s (which may fail) and
//! only appended once every field of the record converted, so a bad record
//! never leaves a partial row behind.

use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder, Float64Builder,
    Int32Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::compute::kernels::cast_utils::{
    Parser, parse_decimal, string_to_timestamp_nanos,
};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::datatypes::{DataType, Date32Type, Decimal128Type, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};

/// A converted field, ready to append. Text is a range into the record's
/// field buffer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Text(Range<usize>),
    Int(i64),
    Float(f64),
    Bool(bool),
    Decimal(i128),
}

/// One output column.
pub(crate) enum Column {
    Utf8(StringBuilder),
    Boolean(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    TimestampMs(TimestampMillisecondBuilder),
    Date32(Date32Builder),
    Decimal128(Decimal128Builder, u8, i8),
}

/// Parses an integer, tolerating a leading `+`.
fn int(s: &str) -> Option<i64> {
    s.strip_prefix('+').unwrap_or(s).parse().ok()
}

impl Column {
    /// A builder for `t`; an error names the column when the type is not supported.
    pub(crate) fn new(name: &str, t: &DataType) -> Result<Column, ArrowError> {
        Ok(match t {
            DataType::Utf8 => Column::Utf8(StringBuilder::new()),
            DataType::Boolean => Column::Boolean(BooleanBuilder::new()),
            DataType::Int32 => Column::Int32(Int32Builder::new()),
            DataType::Int64 => Column::Int64(Int64Builder::new()),
            DataType::Float32 => Column::Float32(Float32Builder::new()),
            DataType::Float64 => Column::Float64(Float64Builder::new()),
            DataType::Timestamp(TimeUnit::Millisecond, None) => {
                Column::TimestampMs(TimestampMillisecondBuilder::new())
            }
            DataType::Date32 => Column::Date32(Date32Builder::new()),
            DataType::Decimal128(p, s) => Column::Decimal128(Decimal128Builder::new(), *p, *s),
            other => {
                return Err(ArrowError::InvalidArgumentError(format!(
                    "column {name}: type {other} is not supported by text formats"
                )));
            }
        })
    }

    /// Whether the column holds text.
    pub(crate) fn is_text(&self) -> bool {
        matches!(self, Column::Utf8(_))
    }

    /// Converts the field `buf[range]`; an empty field is NULL except in a
    /// text column when `keep_empty` is set.
    pub(crate) fn convert(
        &self,
        buf: &str,
        range: Range<usize>,
        keep_empty: bool,
    ) -> Result<Value, String> {
        if let Column::Utf8(_) = self {
            return Ok(if range.is_empty() && !keep_empty {
                Value::Null
            } else {
                Value::Text(range)
            });
        }
        let s = buf[range].trim();
        if s.is_empty() {
            return Ok(Value::Null);
        }
        let fail = || format!("cannot parse '{s}' as {}", self.type_name());
        Ok(match self {
            Column::Utf8(_) => unreachable!("handled above"),
            Column::Boolean(_) => Value::Bool(match s.to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "y" | "1" => true,
                "false" | "f" | "no" | "n" | "0" => false,
                _ => return Err(fail()),
            }),
            Column::Int32(_) => {
                let v = int(s).ok_or_else(fail)?;
                i32::try_from(v).map_err(|_| fail())?;
                Value::Int(v)
            }
            Column::Int64(_) => Value::Int(int(s).ok_or_else(fail)?),
            Column::Float32(_) | Column::Float64(_) => Value::Float(s.parse().map_err(|_| fail())?),
            Column::TimestampMs(_) => match int(s) {
                Some(ms) => Value::Int(ms),
                None => Value::Int(
                    string_to_timestamp_nanos(s)
                        .map_err(|_| fail())?
                        .div_euclid(1_000_000),
                ),
            },
            Column::Date32(_) => Value::Int(i64::from(Date32Type::parse(s).ok_or_else(fail)?)),
            Column::Decimal128(_, p, sc) => {
                Value::Decimal(parse_decimal::<Decimal128Type>(s, *p, *sc).map_err(|_| fail())?)
            }
        })
    }

    fn type_name(&self) -> &'static str {
        match self {
            Column::Utf8(_) => "TEXT",
            Column::Boolean(_) => "BOOLEAN",
            Column::Int32(_) => "INT",
            Column::Int64(_) => "BIGINT",
            Column::Float32(_) => "REAL",
            Column::Float64(_) => "DOUBLE",
            Column::TimestampMs(_) => "TIMESTAMP",
            Column::Date32(_) => "DATE",
            Column::Decimal128(..) => "DECIMAL",
        }
    }

    /// Appends a value produced by [`convert`](Self::convert) (or built for
    /// this column's type) with text taken from `buf`.
    pub(crate) fn append(&mut self, buf: &str, v: &Value) {
        match (self, v) {
            (Column::Utf8(b), Value::Text(r)) => b.append_value(&buf[r.clone()]),
            (Column::Boolean(b), Value::Bool(x)) => b.append_value(*x),
            (Column::Int32(b), Value::Int(x)) => b.append_value(*x as i32),
            (Column::Int64(b), Value::Int(x)) => b.append_value(*x),
            (Column::Float32(b), Value::Float(x)) => b.append_value(*x as f32),
            (Column::Float64(b), Value::Float(x)) => b.append_value(*x),
            (Column::TimestampMs(b), Value::Int(x)) => b.append_value(*x),
            (Column::Date32(b), Value::Int(x)) => b.append_value(*x as i32),
            (Column::Decimal128(b, ..), Value::Decimal(x)) => b.append_value(*x),
            (c, _) => c.append_null(),
        }
    }

    /// Appends NULL.
    pub(crate) fn append_null(&mut self) {
        match self {
            Column::Utf8(b) => b.append_null(),
            Column::Boolean(b) => b.append_null(),
            Column::Int32(b) => b.append_null(),
            Column::Int64(b) => b.append_null(),
            Column::Float32(b) => b.append_null(),
            Column::Float64(b) => b.append_null(),
            Column::TimestampMs(b) => b.append_null(),
            Column::Date32(b) => b.append_null(),
            Column::Decimal128(b, ..) => b.append_null(),
        }
    }

    /// The rows appended so far, leaving the builder empty.
    pub(crate) fn finish(&mut self) -> ArrayRef {
        match self {
            Column::Utf8(b) => Arc::new(b.finish()),
            Column::Boolean(b) => Arc::new(b.finish()),
            Column::Int32(b) => Arc::new(b.finish()),
            Column::Int64(b) => Arc::new(b.finish()),
            Column::Float32(b) => Arc::new(b.finish()),
            Column::Float64(b) => Arc::new(b.finish()),
            Column::TimestampMs(b) => Arc::new(b.finish()),
            Column::Date32(b) => Arc::new(b.finish()),
            Column::Decimal128(b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s)
                    .expect("precision and scale come from a valid type"),
            ),
        }
    }
}

/// The columns of one schema and the rows appended to them.
pub(crate) struct Rows {
    schema: SchemaRef,
    columns: Vec<Column>,
    rows: usize,
}

impl Rows {
    /// Builders for every column of `schema`.
    pub(crate) fn new(schema: SchemaRef) -> Result<Rows, ArrowError> {
        let columns = schema
            .fields()
            .iter()
            .map(|f| Column::new(f.name(), f.data_type()))
            .collect::<Result<_, _>>()?;
        Ok(Rows {
            schema,
            columns,
            rows: 0,
        })
    }

    /// The schema of the rows.
    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The column builders, in schema order.
    pub(crate) fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// Appends one row: a value per column, text taken from `buf`.
    pub(crate) fn push(&mut self, buf: &str, values: &[Value]) {
        debug_assert_eq!(values.len(), self.columns.len());
        for (c, v) in self.columns.iter_mut().zip(values) {
            c.append(buf, v);
        }
        self.rows += 1;
    }

    /// The rows pushed since the last call, or `None` when there are none.
    pub(crate) fn finish(&mut self) -> Option<RecordBatch> {
        let cols: Vec<ArrayRef> = self.columns.iter_mut().map(Column::finish).collect();
        let n = std::mem::take(&mut self.rows);
        if n == 0 {
            return None;
        }
        let options = RecordBatchOptions::new().with_row_count(Some(n));
        Some(
            RecordBatch::try_new_with_options(self.schema.clone(), cols, &options)
                .expect("builders match the schema"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_text_to_types() {
        let c = |t: DataType, s: &str| Column::new("c", &t).unwrap().convert(s, 0..s.len(), false);
        assert_eq!(c(DataType::Int32, " 42 "), Ok(Value::Int(42)));
        assert!(c(DataType::Int32, "4294967296").is_err());
        assert_eq!(c(DataType::Int64, ""), Ok(Value::Null));
        assert_eq!(c(DataType::Float64, "1.5"), Ok(Value::Float(1.5)));
        assert_eq!(c(DataType::Boolean, "TRUE"), Ok(Value::Bool(true)));
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        assert_eq!(c(ts.clone(), "1000"), Ok(Value::Int(1000)));
        assert_eq!(c(ts.clone(), "1970-01-01T00:00:02Z"), Ok(Value::Int(2000)));
        assert_eq!(c(ts.clone(), "1970-01-01 00:00:03"), Ok(Value::Int(3000)));
        assert!(c(ts, "yesterday").is_err());
        assert_eq!(c(DataType::Date32, "1970-01-11"), Ok(Value::Int(10)));
        assert_eq!(
            c(DataType::Decimal128(10, 2), "1.25"),
            Ok(Value::Decimal(125))
        );
        assert_eq!(c(DataType::Utf8, ""), Ok(Value::Null));
        let text = Column::new("c", &DataType::Utf8).unwrap();
        assert_eq!(text.convert("", 0..0, true), Ok(Value::Text(0..0)));
        assert!(Column::new("c", &DataType::Binary).is_err());
    }
}
