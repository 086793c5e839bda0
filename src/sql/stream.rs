//! `CREATE STREAM`: columns, the `WITH` options every stream takes (format,
//! event time, watermark, start, error handling) and the options each source
//! kind needs (Kafka's topic, a socket's host and port, a file's path), and
//! the arrow type each SQL column type is decoded as.
//!
//! ```
//! use runnel::sql::{parse_statement, Statement};
//! let p = parse_statement(
//!     "CREATE STREAM logs (line TEXT) WITH (source = 'file', path = '/var/log/app.log', format = 'lines')",
//! ).unwrap();
//! let Statement::CreateStream(s) = p.stmt else { unreachable!() };
//! assert_eq!(s.columns[0].name, "line");
//! assert!(s.topic.is_empty());
//! ```

use std::collections::BTreeMap;

use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
use datafusion::sql::sqlparser::ast::{self, SqlOption};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;

use super::tokens::loc;
use super::{normalize_ident, option_value};
use crate::connect::kafka;
use crate::error::parser_error;
use crate::error::{Error, Result};
use crate::model::duration::parse_duration;
use crate::model::{
    ColumnDef, DEFAULT_MAX_FUTURE_MS, Format, OnError, OnOffsetLoss, SourceKind, StartFrom,
    StreamDef,
};

pub(super) fn create_stream(text: &str) -> Result<StreamDef> {
    let mut p = Parser::new(&GenericDialect {})
        .try_with_sql(text)
        .map_err(parser_error)?;
    p.expect_keyword(Keyword::CREATE).map_err(parser_error)?;
    p.next_token(); // STREAM, checked by the caller
    let name_tok = p.peek_token();
    let name = p.parse_identifier().map_err(parser_error)?;
    let name = normalize_ident(&name.value, name.quote_style.is_some());
    let (cols, _) = p.parse_columns().map_err(parser_error)?;
    if cols.is_empty() {
        return Err(Error::sql(
            "a stream needs at least one column",
            loc(&name_tok),
        ));
    }
    let with_tok = p.peek_token();
    let opts = p.parse_options(Keyword::WITH).map_err(parser_error)?;
    let trailing = p.peek_token();
    if trailing.token != Token::EOF && trailing.token != Token::SemiColon {
        return Err(Error::sql(
            format!("unexpected {}", trailing.token),
            loc(&trailing),
        ));
    }
    let mut columns = column_defs(cols)?;
    let mut options = BTreeMap::new();
    for o in opts {
        match o {
            SqlOption::KeyValue { key, value } => {
                options.insert(key.value.to_ascii_lowercase(), option_value(&value));
            }
            other => {
                return Err(Error::sql(
                    format!("unsupported option {other}"),
                    loc(&with_tok),
                ));
            }
        }
    }
    let bad = |m: String| Error::sql(m, loc(&with_tok));
    const KNOWN: &[&str] = &[
        "kafka_topic",
        "format",
        "event_time",
        "watermark_delay",
        "start",
        "brokers",
        "source",
        "on_error",
        "max_future",
        "on_offset_loss",
        "event_time_unit",
        "host",
        "port",
        "path",
    ];
    for k in options.keys() {
        if !KNOWN.contains(&k.as_str()) && !k.starts_with(kafka::STREAM_PREFIX) {
            return Err(bad(format!(
                "unknown stream option '{k}'; known: {}, and \"kafka.<librdkafka property>\"",
                KNOWN.join(", ")
            )));
        }
    }
    kafka::KafkaProps::of_stream(&options)
        .check_stream()
        .map_err(bad)?;
    let source = choice(
        &options,
        "source",
        &[
            ("kafka", SourceKind::Kafka),
            ("socket", SourceKind::Socket),
            ("file", SourceKind::File),
        ],
        |s| format!("unsupported source '{s}'; supported: kafka, socket, file"),
    )
    .map_err(bad)?;
    let topic = source_options(source, &options).map_err(bad)?;
    let format = choice(
        &options,
        "format",
        &[
            ("json", Format::Json),
            ("access_log", Format::AccessLog),
            ("csv", Format::Csv),
            ("lines", Format::Lines),
        ],
        |f| format!("unsupported format '{f}'; supported: json, access_log, csv, lines"),
    )
    .map_err(bad)?;
    let schema = datafusion::arrow::datatypes::Schema::new(
        columns
            .iter()
            .map(|c| Field::new(&c.name, c.data_type.clone(), true))
            .collect::<Vec<_>>(),
    );
    crate::format::check_schema(format, std::sync::Arc::new(schema)).map_err(bad)?;
    let event_time = options.get("event_time").map(|s| s.to_ascii_lowercase());
    if let Some(et) = &event_time {
        let col = columns.iter_mut().find(|c| &c.name == et).ok_or_else(|| {
            bad(format!(
                "event_time column '{et}' is not a column of the stream"
            ))
        })?;
        if !matches!(col.data_type, DataType::Timestamp(_, _) | DataType::Int64) {
            return Err(bad(format!(
                "event_time column '{et}' must be TIMESTAMP or BIGINT"
            )));
        }
    }
    if let Some(unit) = options.get("event_time_unit") {
        if !matches!(unit.as_str(), "s" | "ms" | "us") {
            return Err(bad(format!(
                "event_time_unit must be 's', 'ms' or 'us', not '{unit}'"
            )));
        }
        let is_ts = event_time
            .as_ref()
            .and_then(|et| columns.iter().find(|c| &c.name == et));
        if !is_ts.is_some_and(|c| matches!(c.data_type, DataType::Timestamp(_, _))) {
            return Err(bad(
                "event_time_unit applies to a TIMESTAMP event_time column whose values are numbers"
                    .into(),
            ));
        }
    }
    let watermark_delay_ms = match options.get("watermark_delay") {
        Some(d) => parse_duration(d).map_err(|e| bad(format!("watermark_delay: {e}")))?,
        None => 0,
    };
    let start = choice(
        &options,
        "start",
        &[
            ("latest", StartFrom::Latest),
            ("earliest", StartFrom::Earliest),
        ],
        |s| format!("start must be 'earliest' or 'latest', not '{s}'"),
    )
    .map_err(bad)?;
    let on_error = choice(
        &options,
        "on_error",
        &[("skip", OnError::Skip), ("fail", OnError::Fail)],
        |s| format!("on_error must be 'skip' or 'fail', not '{s}'"),
    )
    .map_err(bad)?;
    let max_future_ms = match options.get("max_future") {
        Some(d) => parse_duration(d).map_err(|e| bad(format!("max_future: {e}")))?,
        None => DEFAULT_MAX_FUTURE_MS,
    };
    let on_offset_loss = choice(
        &options,
        "on_offset_loss",
        &[
            ("fail", OnOffsetLoss::Fail),
            ("earliest", OnOffsetLoss::Earliest),
            ("latest", OnOffsetLoss::Latest),
        ],
        |s| format!("on_offset_loss must be 'fail', 'earliest' or 'latest', not '{s}'"),
    )
    .map_err(bad)?;
    Ok(StreamDef {
        name,
        on_error,
        max_future_ms,
        on_offset_loss,
        columns,
        source,
        topic,
        format,
        event_time,
        watermark_delay_ms,
        start,
        brokers: options.get("brokers").cloned(),
        options,
    })
}

/// The value of the option `key` among `choices` (names in lower case, any
/// case accepted); the first choice when the option is not given, `unknown`'s
/// message for a value that is none of them.
fn choice<T: Copy>(
    options: &BTreeMap<String, String>,
    key: &str,
    choices: &[(&str, T)],
    unknown: impl Fn(&str) -> String,
) -> std::result::Result<T, String> {
    let Some(value) = options.get(key) else {
        return Ok(choices[0].1);
    };
    let value = value.to_ascii_lowercase();
    choices
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, v)| *v)
        .ok_or_else(|| unknown(&value))
}

/// Checks the options `source` needs and returns the Kafka topic (empty
/// for other sources).
fn source_options(
    source: SourceKind,
    options: &BTreeMap<String, String>,
) -> std::result::Result<String, String> {
    let only = |keys: &[&str], kind: &str| -> std::result::Result<(), String> {
        if kind != "kafka"
            && let Some(k) = options.keys().find(|k| k.starts_with(kafka::STREAM_PREFIX))
        {
            return Err(format!("option '{k}' does not apply to a {kind} stream"));
        }
        match keys.iter().find(|k| options.contains_key(**k)) {
            Some(k) => Err(format!("option '{k}' does not apply to a {kind} stream")),
            None => Ok(()),
        }
    };
    match source {
        SourceKind::Kafka => {
            only(&["host", "port", "path"], "kafka")?;
            options
                .get("kafka_topic")
                .cloned()
                .ok_or_else(|| "a stream needs WITH (kafka_topic = '...')".to_string())
        }
        SourceKind::Socket => {
            only(&["kafka_topic", "brokers", "path"], "socket")?;
            let (Some(host), Some(port)) = (options.get("host"), options.get("port")) else {
                return Err("a socket stream needs WITH (host = '...', port = '...')".into());
            };
            if host.is_empty() {
                return Err("a socket stream needs a non-empty host".into());
            }
            match port.parse::<u16>() {
                Ok(p) if p > 0 => Ok(String::new()),
                _ => Err(format!(
                    "port must be a number from 1 to 65535, not '{port}'"
                )),
            }
        }
        SourceKind::File => {
            only(&["kafka_topic", "brokers", "host", "port"], "file")?;
            match options.get("path") {
                Some(p) if !p.is_empty() => Ok(String::new()),
                _ => Err("a file stream needs WITH (path = '...')".into()),
            }
        }
    }
}

/// Converts parsed column definitions to Runnel's, with arrow types.
pub(crate) fn column_defs(cols: Vec<ast::ColumnDef>) -> Result<Vec<ColumnDef>> {
    let mut seen = std::collections::HashSet::new();
    cols.into_iter()
        .map(|c| {
            let name = normalize_ident(&c.name.value, c.name.quote_style.is_some());
            if !seen.insert(name.clone()) {
                return Err(Error::sql(
                    format!("column {name} is declared twice"),
                    Some((c.name.span.start.line, c.name.span.start.column)),
                ));
            }
            let data_type = arrow_type(&c.data_type).ok_or_else(|| {
                Error::sql(
                    format!(
                        "unsupported column type {} for column {}",
                        c.data_type, c.name
                    ),
                    Some((c.name.span.start.line, c.name.span.start.column)),
                )
            })?;
            Ok(ColumnDef {
                name,
                sql_type: c.data_type.to_string(),
                data_type,
            })
        })
        .collect()
}

/// Maps a SQL column type to the arrow type Runnel decodes it as.
pub(crate) fn arrow_type(t: &ast::DataType) -> Option<DataType> {
    use ast::DataType as D;
    Some(match t {
        D::Boolean | D::Bool => DataType::Boolean,
        D::TinyInt(_) | D::SmallInt(_) | D::Int(_) | D::Integer(_) | D::Int4(_) | D::Int32 => {
            DataType::Int32
        }
        D::BigInt(_) | D::Int8(_) | D::Int64 => DataType::Int64,
        D::Real | D::Float4 | D::Float32 => DataType::Float32,
        D::Float(_) | D::Double(_) | D::DoublePrecision | D::Float8 | D::Float64 => {
            DataType::Float64
        }
        D::Text
        | D::String(_)
        | D::Varchar(_)
        | D::Char(_)
        | D::CharVarying(_)
        | D::Character(_) => DataType::Utf8,
        D::Timestamp(_, _) | D::Datetime(_) => DataType::Timestamp(TimeUnit::Millisecond, None),
        D::Date => DataType::Date32,
        D::Decimal(info) | D::Numeric(info) => match info {
            ast::ExactNumberInfo::PrecisionAndScale(p, s) => {
                DataType::Decimal128(*p as u8, *s as i8)
            }
            ast::ExactNumberInfo::Precision(p) => DataType::Decimal128(*p as u8, 0),
            ast::ExactNumberInfo::None => DataType::Decimal128(38, 10),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::{Statement, parse_sql, parse_statement};

    fn create_format(sql: &str) -> Result<Format, String> {
        let mut parsed = parse_sql(sql).map_err(|e| e.to_string())?;
        match parsed.remove(0).stmt {
            Statement::CreateStream(def) => Ok(def.format),
            _ => Err("not a stream".into()),
        }
    }

    #[test]
    fn create_stream_formats() {
        let logs = "CREATE STREAM logs (ip TEXT, ts TIMESTAMP, status INT, size BIGINT, endpoint TEXT) \
                    WITH (kafka_topic = 'logs', format = 'access_log', event_time = 'ts')";
        assert_eq!(create_format(logs), Ok(Format::AccessLog));
        let words = "CREATE STREAM words (line TEXT) WITH (kafka_topic = 'w', format = 'LINES')";
        assert_eq!(create_format(words), Ok(Format::Lines));
        let csv = "CREATE STREAM c (a TEXT, n BIGINT) WITH (kafka_topic = 'c', format = 'csv')";
        assert_eq!(create_format(csv), Ok(Format::Csv));
        let err = create_format(
            "CREATE STREAM l (url TEXT) WITH (kafka_topic = 'l', format = 'access_log')",
        )
        .unwrap_err();
        assert!(err.contains("no column 'url'"), "{err}");
        let err =
            create_format("CREATE STREAM w (n BIGINT) WITH (kafka_topic = 'w', format = 'lines')")
                .unwrap_err();
        assert!(err.contains("TEXT column"), "{err}");
        let err =
            create_format("CREATE STREAM w (n BIGINT) WITH (kafka_topic = 'w', format = 'xml')")
                .unwrap_err();
        assert!(
            err.contains("supported: json, access_log, csv, lines"),
            "{err}"
        );
        assert_eq!(
            serde_json::to_string(&Format::AccessLog).unwrap(),
            "\"access_log\""
        );
    }

    #[test]
    fn create_stream_parses() {
        let p = parse_statement(
            "CREATE STREAM impressions (ts TIMESTAMP, publisher TEXT, bid DOUBLE)\n WITH (kafka_topic = 'adnetwork-topic', format = 'json', event_time = 'ts', watermark_delay = '5s', start = 'earliest')",
        )
        .unwrap();
        let Statement::CreateStream(s) = p.stmt else {
            panic!()
        };
        assert_eq!(s.name, "impressions");
        assert_eq!(s.topic, "adnetwork-topic");
        assert_eq!(s.columns.len(), 3);
        assert_eq!(s.columns[2].data_type, DataType::Float64);
        assert_eq!(s.event_time.as_deref(), Some("ts"));
        assert_eq!(s.watermark_delay_ms, 5000);
        assert_eq!(s.start, StartFrom::Earliest);
        // A column declared twice (as written, or once quoted) is refused
        // here, not by every query over the stream.
        for cols in ["a INT, a TEXT", "a INT, \"a\" TEXT", "A INT, a TEXT"] {
            let e = parse_statement(&format!(
                "CREATE STREAM d ({cols}) WITH (kafka_topic = 'd')"
            ))
            .unwrap_err();
            assert!(
                e.to_string().contains("column a is declared twice"),
                "{cols}: {e}"
            );
        }
    }

    #[test]
    fn socket_and_file_streams() {
        let stream = |with: &str| {
            parse_statement(&format!("CREATE STREAM s (line TEXT) WITH ({with})")).map(|p| {
                let Statement::CreateStream(s) = p.stmt else {
                    panic!()
                };
                s
            })
        };
        let s = stream("source = 'socket', host = '127.0.0.1', port = '9999'").unwrap();
        assert_eq!(s.source, SourceKind::Socket);
        assert_eq!(s.topic, "");
        assert_eq!(s.options["port"], "9999");
        let s = stream("source = 'file', path = '/var/log/x.log', start = 'earliest'").unwrap();
        assert_eq!(s.source, SourceKind::File);
        assert_eq!(s.start, StartFrom::Earliest);
        let err = |with: &str| stream(with).unwrap_err().to_string();
        assert!(err("source = 'socket', host = 'h'").contains("needs WITH (host = '...', port"));
        assert!(err("source = 'socket', host = 'h', port = 'x'").contains("port must be"));
        assert!(err("source = 'file'").contains("a file stream needs WITH (path"));
        assert!(
            err("source = 'file', path = 'p', kafka_topic = 't'")
                .contains("'kafka_topic' does not apply to a file stream")
        );
        assert!(err("kafka_topic = 't', path = 'p'").contains("does not apply to a kafka"));
        assert!(err("source = 'pigeon'").contains("supported: kafka, socket, file"));
    }
}
