//! Runnel's SQL dialect: DataFusion SQL plus streaming statements.
//!
//! Statements are tokenized with sqlparser; Runnel's own syntax (`CREATE
//! STREAM`, `CREATE QUERY`, the `WINDOW`, `EMIT EVERY` and `INTO TOPIC`
//! clauses, `SHOW`/`DESCRIBE`/`DROP`) is recognised by peeking at tokens, and
//! everything else is handed to sqlparser and DataFusion unchanged. Clauses
//! that are cut out are blanked with spaces, so line and column numbers in
//! later errors still point into the text the user wrote.
//!
//! ```
//! use runnel::sql::{parse_sql, Statement};
//! let stmts = parse_sql("SELECT geo, count(*) FROM imps GROUP BY geo WINDOW 10s; SHOW QUERIES").unwrap();
//! assert_eq!(stmts.len(), 2);
//! match &stmts[0].stmt {
//!     Statement::Select(s) => assert_eq!(s.window.unwrap().describe(), "TUMBLING 10s"),
//!     _ => unreachable!(),
//! }
//! ```

mod ddl;
pub mod table;
pub mod window;

pub use ddl::CreateMode;

use std::collections::BTreeMap;

use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
use datafusion::sql::sqlparser::ast::{self, Expr, SqlOption};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::connect::kafka;
use crate::error::parser_error;
use crate::error::{Error, Result};
use crate::model::duration::parse_duration;
use crate::model::{
    ColumnDef, DEFAULT_MAX_FUTURE_MS, Format, OnError, OnOffsetLoss, SelectSql, SourceKind,
    StartFrom, StreamDef,
};
use window::parse_window_clause;

/// One parsed statement with its source text.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The statement.
    pub stmt: Statement,
    /// The statement's own text, trimmed.
    pub text: String,
    /// What a `CREATE` does when its name is taken.
    pub create: CreateMode,
}

/// A Runnel statement.
#[derive(Debug, Clone)]
pub enum Statement {
    /// `CREATE STREAM name (cols) WITH (...)`.
    CreateStream(StreamDef),
    /// `CREATE TABLE name (cols) WITH (source = 'file', ...)`.
    CreateTable(crate::model::TableDef),
    /// `CREATE QUERY name AS SELECT ...`.
    CreateQuery {
        /// Query name.
        name: String,
        /// Its select.
        select: SelectSql,
    },
    /// A bare `SELECT`: continuous when it reads a stream, a pull query otherwise.
    Select(SelectSql),
    /// `EXPLAIN SELECT ...`.
    Explain(SelectSql),
    /// `SHOW STREAMS`.
    ShowStreams,
    /// `SHOW QUERIES`.
    ShowQueries,
    /// `SHOW TABLES`: reference tables and each query's results table.
    ShowTables,
    /// `DESCRIBE name`.
    Describe(String),
    /// `DROP QUERY name`.
    DropQuery {
        /// Query name.
        name: String,
        /// `IF EXISTS` given.
        if_exists: bool,
        /// `KEEP RESULTS` given: the results table stays.
        keep_results: bool,
    },
    /// `DROP STREAM name`.
    DropStream {
        /// Stream name.
        name: String,
        /// `IF EXISTS` given.
        if_exists: bool,
    },
}

/// Splits `body` into statements and parses each one.
pub fn parse_sql(body: &str) -> Result<Vec<Parsed>> {
    let src = Source::new(body);
    let tokens = Tokenizer::new(&GenericDialect {}, body)
        .tokenize_with_location()
        .map_err(|e| {
            Error::sql(
                e.message.clone(),
                Some((e.location.line, e.location.column)),
            )
        })?;
    let mut out = Vec::new();
    let mut stmt: Vec<TokenWithSpan> = Vec::new();
    for tok in tokens {
        if tok.token == Token::SemiColon {
            if stmt.iter().any(|t| !is_blank(&t.token)) {
                out.push(parse_one(&src, &std::mem::take(&mut stmt))?);
            }
            stmt.clear();
        } else {
            stmt.push(tok);
        }
    }
    if stmt.iter().any(|t| !is_blank(&t.token)) {
        out.push(parse_one(&src, &stmt)?);
    }
    if out.is_empty() {
        return Err(Error::sql("empty statement", None));
    }
    Ok(out)
}

/// Parses exactly one statement.
pub fn parse_statement(text: &str) -> Result<Parsed> {
    let mut v = parse_sql(text)?;
    if v.len() != 1 {
        return Err(Error::sql("expected exactly one statement", None));
    }
    Ok(v.remove(0))
}

fn is_blank(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_) | Token::EOF)
}

/// The statement body as chars, with line starts, for blanking ranges while
/// keeping every line and column where it was.
struct Source {
    chars: Vec<char>,
    line_starts: Vec<usize>,
}

impl Source {
    fn new(body: &str) -> Self {
        let chars: Vec<char> = body.chars().collect();
        let mut line_starts = vec![0];
        for (i, c) in chars.iter().enumerate() {
            if *c == '\n' {
                line_starts.push(i + 1);
            }
        }
        Source { chars, line_starts }
    }

    fn offset(&self, line: u64, column: u64) -> usize {
        let l = (line.max(1) - 1) as usize;
        let base = self.line_starts.get(l).copied().unwrap_or(self.chars.len());
        (base + column.max(1) as usize - 1).min(self.chars.len())
    }

    /// The whole body with everything outside `keep` (char ranges) blanked.
    fn keep_only(&self, keep: (usize, usize), blank: &[(usize, usize)]) -> String {
        self.chars
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let inside =
                    i >= keep.0 && i < keep.1 && !blank.iter().any(|b| i >= b.0 && i < b.1);
                if inside || *c == '\n' { *c } else { ' ' }
            })
            .collect()
    }
}

fn start_of(src: &Source, t: &TokenWithSpan) -> usize {
    src.offset(t.span.start.line, t.span.start.column)
}

fn end_of(src: &Source, t: &TokenWithSpan) -> usize {
    src.offset(t.span.end.line, t.span.end.column)
}

fn loc(t: &TokenWithSpan) -> Option<(u64, u64)> {
    Some((t.span.start.line, t.span.start.column))
}

fn word(t: &TokenWithSpan) -> Option<String> {
    match &t.token {
        Token::Word(w) => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

fn parse_one(src: &Source, tokens: &[TokenWithSpan]) -> Result<Parsed> {
    let toks: Vec<&TokenWithSpan> = tokens.iter().filter(|t| !is_blank(&t.token)).collect();
    let first = toks[0];
    let range = (start_of(src, first), end_of(src, toks[toks.len() - 1]));
    let text: String = src.chars[range.0..range.1].iter().collect();
    let (toks, modifiers, create) = ddl::create_modifiers(src, &toks)?;
    let kw: Vec<String> = toks
        .iter()
        .take(3)
        .map(|t| word(t).unwrap_or_default())
        .collect();
    let kw = |i: usize| kw.get(i).map(String::as_str).unwrap_or("");
    let name_at = |i: usize| -> Result<String> {
        let t = toks
            .get(i)
            .ok_or_else(|| Error::sql("expected a name", loc(toks[toks.len() - 1])))?;
        match &t.token {
            Token::Word(w) => Ok(normalize_ident(&w.value, w.quote_style.is_some())),
            _ => Err(Error::sql(
                format!("expected a name, found {}", t.token),
                loc(t),
            )),
        }
    };
    let expect_end = |i: usize| -> Result<()> {
        match toks.get(i) {
            Some(t) => Err(Error::sql(format!("unexpected {}", t.token), loc(t))),
            None => Ok(()),
        }
    };
    let stmt = match (kw(0), kw(1)) {
        ("CREATE", "TABLE") => {
            Statement::CreateTable(table::create_table(&src.keep_only(range, &modifiers))?)
        }
        ("CREATE", "STREAM") => {
            Statement::CreateStream(create_stream(&src.keep_only(range, &modifiers))?)
        }
        ("CREATE", "QUERY") => {
            let name = name_at(2)?;
            let as_tok = toks.get(3).filter(|t| word(t).as_deref() == Some("AS"));
            let as_tok = as_tok.ok_or_else(|| {
                Error::sql(
                    "expected AS SELECT ... after the query name",
                    toks.get(3).and_then(|t| loc(t)),
                )
            })?;
            let sel_start = end_of(src, as_tok);
            Statement::CreateQuery {
                name,
                select: select(src, &toks[4..], (sel_start, range.1))?,
            }
        }
        ("SELECT", _) | ("WITH", _) => Statement::Select(select(src, &toks, range)?),
        ("EXPLAIN", _) => {
            let rest = toks
                .get(1)
                .ok_or_else(|| Error::sql("EXPLAIN needs a SELECT", loc(first)))?;
            Statement::Explain(select(src, &toks[1..], (start_of(src, rest), range.1))?)
        }
        ("SHOW", "STREAMS") => {
            expect_end(2)?;
            Statement::ShowStreams
        }
        ("SHOW", "QUERIES") => {
            expect_end(2)?;
            Statement::ShowQueries
        }
        ("SHOW", "TABLES") => {
            expect_end(2)?;
            Statement::ShowTables
        }
        ("DESCRIBE", _) | ("DESC", _) => {
            let name = name_at(1)?;
            expect_end(2)?;
            Statement::Describe(name)
        }
        ("DROP", "QUERY") | ("DROP", "STREAM") => ddl::drop_statement(&toks)?,
        _ => {
            return Err(Error::sql(
                format!(
                    "unsupported statement starting with {}; expected CREATE STREAM, CREATE TABLE, CREATE QUERY, SELECT, EXPLAIN, SHOW, DESCRIBE or DROP",
                    first.token
                ),
                loc(first),
            ));
        }
    };
    Ok(Parsed { stmt, text, create })
}

/// Lower-cases unquoted identifiers, as DataFusion does.
pub fn normalize_ident(value: &str, quoted: bool) -> String {
    if quoted {
        value.to_string()
    } else {
        value.to_ascii_lowercase()
    }
}

/// Finds `WINDOW ...`, `EMIT EVERY ...` and `INTO TOPIC '...'` at the top level of
/// a select and blanks them out.
fn select(src: &Source, toks: &[&TokenWithSpan], range: (usize, usize)) -> Result<SelectSql> {
    let mut depth = 0i32;
    // (clause keyword index, token index)
    let mut marks: Vec<(&'static str, usize)> = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        match &t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::Word(w) if depth == 0 && w.quote_style.is_none() => {
                let next = toks.get(i + 1).and_then(|t| word(t));
                let upper = w.value.to_ascii_uppercase();
                match w.keyword {
                    // `WINDOW w AS (...)` is SQL's named window; ours is never followed by AS.
                    Keyword::WINDOW
                        if toks.get(i + 2).and_then(|t| word(t)).as_deref() != Some("AS") =>
                    {
                        marks.push(("WINDOW", i))
                    }
                    _ if upper == "EMIT" && next.as_deref() == Some("EVERY") => {
                        marks.push(("EMIT", i))
                    }
                    Keyword::INTO if next.as_deref() == Some("TOPIC") => marks.push(("INTO", i)),
                    Keyword::ORDER | Keyword::LIMIT => marks.push(("", i)),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let mut out = SelectSql {
        sql: String::new(),
        window: None,
        emit_ms: None,
        into_topic: None,
    };
    let mut blanks = Vec::new();
    for (m, &(kind, i)) in marks.iter().enumerate() {
        if kind.is_empty() {
            continue;
        }
        let end_tok = marks.get(m + 1).map(|&(_, j)| j).unwrap_or(toks.len());
        let clause_start = start_of(src, toks[i]);
        let clause_end = if end_tok < toks.len() {
            start_of(src, toks[end_tok])
        } else {
            range.1
        };
        let body_start = if kind == "WINDOW" { i + 1 } else { i + 2 };
        let body_from = toks
            .get(body_start)
            .map(|t| start_of(src, t))
            .unwrap_or(clause_end);
        let body: String = src.chars[body_from.min(clause_end)..clause_end]
            .iter()
            .collect();
        let here = loc(toks[i]);
        match kind {
            "WINDOW" => {
                if out.window.is_some() {
                    return Err(Error::sql("only one WINDOW clause is allowed", here));
                }
                out.window = Some(parse_window_clause(&body).map_err(|e| Error::sql(e, here))?);
            }
            "EMIT" => {
                out.emit_ms = Some(parse_duration(&body).map_err(|e| Error::sql(e, here))?);
            }
            _ => {
                let topic = body.trim();
                let topic = topic
                    .strip_prefix('\'')
                    .and_then(|t| t.strip_suffix('\''))
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| Error::sql("expected INTO TOPIC 'name'", here))?;
                crate::connect::kafka::check_topic_name(topic)
                    .map_err(|e| Error::sql(e.to_string(), here))?;
                out.into_topic = Some(topic.to_string());
            }
        }
        blanks.push((clause_start, clause_end));
    }
    out.sql = src.keep_only(range, &blanks);
    // Validate now so syntax errors carry the user's line and column.
    Parser::new(&GenericDialect {})
        .try_with_sql(&out.sql)
        .and_then(|mut p| p.parse_statement())
        .map_err(parser_error)?;
    Ok(out)
}

pub(crate) fn option_value(e: &Expr) -> String {
    match e {
        Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        Expr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

fn create_stream(text: &str) -> Result<StreamDef> {
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
    let source = match options
        .get("source")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("kafka") => SourceKind::Kafka,
        Some("socket") => SourceKind::Socket,
        Some("file") => SourceKind::File,
        Some(s) => {
            return Err(bad(format!(
                "unsupported source '{s}'; supported: kafka, socket, file"
            )));
        }
    };
    let topic = source_options(source, &options).map_err(bad)?;
    let format = match options
        .get("format")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("json") => Format::Json,
        Some("access_log") => Format::AccessLog,
        Some("csv") => Format::Csv,
        Some("lines") => Format::Lines,
        Some(f) => {
            return Err(bad(format!(
                "unsupported format '{f}'; supported: json, access_log, csv, lines"
            )));
        }
    };
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
    let start = match options
        .get("start")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("latest") => StartFrom::Latest,
        Some("earliest") => StartFrom::Earliest,
        Some(s) => {
            return Err(bad(format!(
                "start must be 'earliest' or 'latest', not '{s}'"
            )));
        }
    };
    let on_error = match options
        .get("on_error")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("skip") => OnError::Skip,
        Some("fail") => OnError::Fail,
        Some(s) => return Err(bad(format!("on_error must be 'skip' or 'fail', not '{s}'"))),
    };
    let max_future_ms = match options.get("max_future") {
        Some(d) => parse_duration(d).map_err(|e| bad(format!("max_future: {e}")))?,
        None => DEFAULT_MAX_FUTURE_MS,
    };
    let on_offset_loss = match options
        .get("on_offset_loss")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("fail") => OnOffsetLoss::Fail,
        Some("earliest") => OnOffsetLoss::Earliest,
        Some("latest") => OnOffsetLoss::Latest,
        Some(s) => {
            return Err(bad(format!(
                "on_offset_loss must be 'fail', 'earliest' or 'latest', not '{s}'"
            )));
        }
    };
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
    cols.into_iter()
        .map(|c| {
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
                name: normalize_ident(&c.name.value, c.name.quote_style.is_some()),
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

    #[test]
    fn select_clauses_are_blanked_in_place() {
        let sql = "SELECT geo, count(*)\nFROM imps GROUP BY geo\nWINDOW 60s SLIDE 10s GRACE 2s\nORDER BY 2 DESC LIMIT 3";
        let p = parse_statement(sql).unwrap();
        let Statement::Select(s) = p.stmt else {
            panic!()
        };
        assert_eq!(s.sql.len(), sql.len());
        assert!(!s.sql.contains("WINDOW"));
        assert!(s.sql.contains("ORDER BY 2 DESC LIMIT 3"));
        assert_eq!(s.window.unwrap().grace_ms, 2000);
        assert_eq!(s.sql.lines().count(), 4);
    }

    #[test]
    fn create_query_with_emit_and_topic() {
        let p = parse_statement(
            "CREATE QUERY scores AS SELECT user_id, sum(score) FROM a GROUP BY user_id EMIT EVERY 5s INTO TOPIC 'out'",
        )
        .unwrap();
        let Statement::CreateQuery { name, select } = p.stmt else {
            panic!()
        };
        assert_eq!(name, "scores");
        assert_eq!(select.emit_ms, Some(5000));
        assert_eq!(select.into_topic.as_deref(), Some("out"));
        assert!(select.window.is_none());
    }

    #[test]
    fn errors_carry_locations() {
        let e = parse_statement("SELECT a,\n  count(* FROM t GROUP BY a WINDOW 10s").unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(e.location().unwrap().0, 2);
        let e = parse_statement("SELECT a FROM t GROUP BY a\nWINDOW 10 parsecs").unwrap_err();
        assert_eq!(e.location(), Some((2, 1)));
        let e = parse_statement("FROBNICATE everything").unwrap_err();
        assert_eq!(e.location(), Some((1, 1)));
        assert!(parse_statement("CREATE STREAM s (a INT) WITH (format = 'json')").is_err());
    }

    #[test]
    fn multiple_statements() {
        let v = parse_sql("SHOW STREAMS; ;\nDROP QUERY IF EXISTS q;\nDESCRIBE s").unwrap();
        assert!(matches!(
            parse_sql("SHOW TABLES").unwrap()[0].stmt,
            Statement::ShowTables
        ));
        assert_eq!(v.len(), 3);
        assert!(matches!(
            v[1].stmt,
            Statement::DropQuery {
                if_exists: true,
                ..
            }
        ));
    }
}
