//! Runnel's answers in PostgreSQL's terms: Arrow columns and JSON rows as
//! typed values (text or binary, as the client asks), and Runnel's errors as
//! SQLSTATEs with a cursor position.

use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime};
use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMicrosecondType};
use datafusion::arrow::record_batch::RecordBatch;
use futures::stream;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldInfo, QueryResponse};
use pgwire::error::{ErrorInfo, PgWireResult};
use serde_json::Value;

use crate::error::Error;

/// One value of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// `boolean`.
    Bool(bool),
    /// `bigint`.
    Int(i64),
    /// `double precision`.
    Float(f64),
    /// `text`.
    Text(String),
    /// `bytea`.
    Bytes(Vec<u8>),
    /// `timestamp` (without time zone, as Runnel stores them).
    Timestamp(NaiveDateTime),
}

/// Rows with their columns' names and types.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    /// (name, type) of each column.
    pub columns: Vec<(String, Type)>,
    /// The rows, each with one cell per column.
    pub rows: Vec<Vec<Cell>>,
}

/// The PostgreSQL type an Arrow type is answered as.
pub fn pg_type(t: &DataType) -> Type {
    match t {
        DataType::Boolean => Type::BOOL,
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => Type::INT8,
        DataType::Float16 | DataType::Float32 | DataType::Float64 => Type::FLOAT8,
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => Type::TIMESTAMP,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Type::BYTEA,
        DataType::FixedSizeBinary(_) => Type::BYTEA,
        _ => Type::TEXT,
    }
}

/// The SQL name of a PostgreSQL type, as `format_type` and
/// `information_schema.columns.data_type` write it.
pub fn type_name(t: &Type) -> &'static str {
    match *t {
        Type::BOOL => "boolean",
        Type::INT8 => "bigint",
        Type::FLOAT8 => "double precision",
        Type::TIMESTAMP => "timestamp without time zone",
        Type::BYTEA => "bytea",
        _ => "text",
    }
}

/// The rows of Arrow `batches`.
pub fn arrow_rows(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Rows, Error> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), pg_type(f.data_type())))
        .collect::<Vec<_>>();
    let mut rows = Vec::new();
    for b in batches {
        let cols = b
            .columns()
            .iter()
            .zip(&columns)
            .map(|(c, (_, t))| column_cells(c, t))
            .collect::<Result<Vec<_>, Error>>()?;
        for i in 0..b.num_rows() {
            rows.push(cols.iter().map(|c| c[i].clone()).collect());
        }
    }
    Ok(Rows { columns, rows })
}

/// The cells of one Arrow column answered as `t`.
fn column_cells(c: &ArrayRef, t: &Type) -> Result<Vec<Cell>, Error> {
    let n = c.len();
    let valid = |i: usize| c.is_valid(i);
    let cells = match *t {
        Type::BOOL => {
            let a = c.as_boolean();
            (0..n)
                .map(|i| valid(i).then(|| Cell::Bool(a.value(i))))
                .collect::<Vec<_>>()
        }
        Type::INT8 => {
            let a = cast(c, &DataType::Int64)?;
            let a = a.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            (0..n)
                .map(|i| valid(i).then(|| Cell::Int(a.value(i))))
                .collect()
        }
        Type::FLOAT8 => {
            let a = cast(c, &DataType::Float64)?;
            let a = a.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
            (0..n)
                .map(|i| valid(i).then(|| Cell::Float(a.value(i))))
                .collect()
        }
        Type::TIMESTAMP => {
            let a = cast(c, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
            let a = a.as_primitive::<TimestampMicrosecondType>();
            (0..n)
                .map(|i| {
                    valid(i).then(|| {
                        DateTime::from_timestamp_micros(a.value(i))
                            .map_or(Cell::Null, |d| Cell::Timestamp(d.naive_utc()))
                    })
                })
                .collect()
        }
        Type::BYTEA => {
            let a = cast(c, &DataType::LargeBinary)?;
            let a = a.as_binary::<i64>();
            (0..n)
                .map(|i| valid(i).then(|| Cell::Bytes(a.value(i).to_vec())))
                .collect()
        }
        _ => {
            let a = cast(c, &DataType::LargeUtf8)?;
            let a = a.as_string::<i64>();
            (0..n)
                .map(|i| valid(i).then(|| Cell::Text(a.value(i).to_string())))
                .collect()
        }
    };
    Ok(cells.into_iter().map(|c| c.unwrap_or(Cell::Null)).collect())
}

/// The rows of a JSON answer (`{"columns": [{"name"}...], "rows": [[...]]}`,
/// as SHOW, DESCRIBE and EXPLAIN give them), every column as text.
pub fn json_rows(v: &Value) -> Rows {
    let columns = v["columns"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or("?column?").to_string(),
                        Type::TEXT,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let rows = v["rows"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    r.as_array()
                        .map(|cells| cells.iter().map(json_cell).collect())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    Rows { columns, rows }
}

fn json_cell(v: &Value) -> Cell {
    match v {
        Value::Null => Cell::Null,
        Value::String(s) => Cell::Text(s.clone()),
        other => Cell::Text(other.to_string()),
    }
}

/// The row description of `rows` with the formats the client asked for.
pub fn fields(rows: &Rows, format: &Format) -> Vec<FieldInfo> {
    rows.columns
        .iter()
        .enumerate()
        .map(|(i, (name, t))| {
            FieldInfo::new(name.clone(), None, None, t.clone(), format.format_for(i))
        })
        .collect()
}

/// `rows` as a query response in `format`.
pub fn response(rows: Rows, format: &Format) -> PgWireResult<QueryResponse> {
    let fields = Arc::new(fields(&rows, format));
    let mut encoder = DataRowEncoder::new(fields.clone());
    let mut out = Vec::with_capacity(rows.rows.len());
    for row in rows.rows {
        for (cell, (_, t)) in row.iter().zip(&rows.columns) {
            match (cell, t) {
                (Cell::Null, _) => encoder.encode_field(&None::<i64>)?,
                (Cell::Bool(b), _) => encoder.encode_field(b)?,
                (Cell::Int(i), _) => encoder.encode_field(i)?,
                (Cell::Float(f), _) => encoder.encode_field(f)?,
                (Cell::Text(s), _) => encoder.encode_field(&s.as_str())?,
                (Cell::Bytes(b), _) => encoder.encode_field(&b.as_slice())?,
                (Cell::Timestamp(t), _) => encoder.encode_field(t)?,
            }
        }
        out.push(Ok(encoder.take_row()));
    }
    Ok(QueryResponse::new(fields, stream::iter(out)))
}

/// The SQLSTATE of a Runnel error.
pub fn sqlstate(e: &Error) -> &'static str {
    match e {
        Error::Sql { message, .. }
            if message.contains("named '") || message.contains("does not exist") =>
        {
            "42P01"
        }
        Error::Sql { .. } => "42601",
        Error::NotFound(m) if m.contains("does not exist") || m.contains("no stream") => "42P01",
        Error::NotFound(_) => "42704",
        Error::Conflict(m) if m.contains("already exists") => "42710",
        Error::Conflict(_) => "55006",
        Error::BadRequest(_) => "22023",
        Error::Unauthorized(_) => "28P01",
        Error::Forbidden(_) => "42501",
        Error::PayloadTooLarge(_) | Error::LimitExceeded(_) => "53400",
        Error::Busy(_) => "53300",
        Error::Unavailable(_) => "57P03",
        Error::Execution(_)
        | Error::Store(_)
        | Error::Postgres(_)
        | Error::Kafka(_)
        | Error::Io(_) => "XX000",
    }
}

/// A Runnel error about statement `sql` as a PostgreSQL error, with the
/// 1-based character position of its (line, column) when it has one.
pub fn error_info(e: &Error, sql: &str) -> Box<ErrorInfo> {
    let mut info = Box::new(ErrorInfo::new(
        "ERROR".into(),
        sqlstate(e).into(),
        e.to_string(),
    ));
    info.position = e
        .location()
        .and_then(|(l, c)| position(sql, l, c))
        .map(|p| p.to_string());
    info
}

/// The 1-based character offset of (line, column) in `sql`.
pub fn position(sql: &str, line: u64, column: u64) -> Option<usize> {
    if line == 0 || column == 0 {
        return None;
    }
    let mut offset = 0;
    for (i, l) in sql.split('\n').enumerate() {
        if i as u64 + 1 == line {
            return Some(offset + column as usize);
        }
        offset += l.chars().count() + 1;
    }
    None
}

/// An error of `code` with `message`.
pub fn pg_error(code: &str, message: impl Into<String>) -> Box<ErrorInfo> {
    Box::new(ErrorInfo::new("ERROR".into(), code.into(), message.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_characters_across_lines() {
        assert_eq!(position("SELECT x", 1, 8), Some(8));
        assert_eq!(position("SELECT\n  é, x", 2, 6), Some(13));
        assert_eq!(position("SELECT", 3, 1), None);
    }

    #[test]
    fn errors_have_sqlstates() {
        let e = Error::sql("Expected: an expression", Some((2, 3)));
        let info = error_info(&e, "SELECT\nx FROM");
        assert_eq!(
            (info.code.as_str(), info.position.as_deref()),
            ("42601", Some("10"))
        );
        assert_eq!(
            sqlstate(&Error::Conflict("'q' already exists".into())),
            "42710"
        );
        assert_eq!(sqlstate(&Error::LimitExceeded("rows".into())), "53400");
        assert_eq!(sqlstate(&Error::Unavailable("down".into())), "57P03");
    }
}
