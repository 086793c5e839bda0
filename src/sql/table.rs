//! `CREATE TABLE name (cols) WITH (source = 'file', path = '...', format = 'csv')`:
//! static reference tables for stream–table joins and pull queries.
//!
//! ```
//! use runnel::sql::{parse_statement, Statement};
//! let p = parse_statement(
//!     "CREATE TABLE publishers (id TEXT, name TEXT) WITH (source = 'file', path = 'pubs.csv', format = 'csv')",
//! ).unwrap();
//! let Statement::CreateTable(t) = p.stmt else { unreachable!() };
//! assert_eq!(t.path, "pubs.csv");
//! assert!(t.header);
//! ```

use std::collections::BTreeMap;

use datafusion::sql::sqlparser::ast::SqlOption;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;

use super::{column_defs, normalize_ident, option_value};
use crate::error::{Error, Result, parser_error};
use crate::model::TableDef;

/// Parses a `CREATE TABLE` statement (text blanked outside the statement).
pub fn create_table(text: &str) -> Result<TableDef> {
    let mut p = Parser::new(&GenericDialect {})
        .try_with_sql(text)
        .map_err(parser_error)?;
    p.expect_keyword(Keyword::CREATE).map_err(parser_error)?;
    p.expect_keyword(Keyword::TABLE).map_err(parser_error)?;
    let name = p.parse_identifier().map_err(parser_error)?;
    let name = normalize_ident(&name.value, name.quote_style.is_some());
    let (cols, _) = p.parse_columns().map_err(parser_error)?;
    let with_tok = p.peek_token();
    let here = Some((with_tok.span.start.line, with_tok.span.start.column));
    let opts = p.parse_options(Keyword::WITH).map_err(parser_error)?;
    let trailing = p.peek_token();
    if trailing.token != Token::EOF && trailing.token != Token::SemiColon {
        return Err(Error::sql(
            format!("unexpected {}", trailing.token),
            Some((trailing.span.start.line, trailing.span.start.column)),
        ));
    }
    let columns = column_defs(cols)?;
    if columns.is_empty() {
        return Err(Error::sql("a table needs at least one column", here));
    }
    let mut options = BTreeMap::new();
    for o in opts {
        if let SqlOption::KeyValue { key, value } = o {
            options.insert(key.value.to_ascii_lowercase(), option_value(&value));
        } else {
            return Err(Error::sql(format!("unsupported option {o}"), here));
        }
    }
    let bad = |m: String| Error::sql(m, here);
    for k in options.keys() {
        if !["source", "path", "format", "header", "delimiter"].contains(&k.as_str()) {
            return Err(bad(format!(
                "unknown table option '{k}'; known: source, path, format, header, delimiter"
            )));
        }
    }
    if options
        .get("source")
        .is_some_and(|s| !s.eq_ignore_ascii_case("file"))
    {
        return Err(bad("a table's source must be 'file'".into()));
    }
    if options
        .get("format")
        .is_some_and(|s| !s.eq_ignore_ascii_case("csv"))
    {
        return Err(bad("a table's format must be 'csv'".into()));
    }
    let path = options.get("path").cloned().ok_or_else(|| {
        bad("a table needs WITH (source = 'file', path = '...', format = 'csv')".into())
    })?;
    let header = match options
        .get("header")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("true") => true,
        Some("false") => false,
        Some(h) => return Err(bad(format!("header must be true or false, not '{h}'"))),
    };
    let delimiter = match options.get("delimiter").map(|d| d.as_bytes()) {
        None => b',',
        Some([d]) => *d,
        Some(_) => return Err(bad("delimiter must be one character".into())),
    };
    Ok(TableDef {
        name,
        columns,
        path,
        header,
        delimiter,
    })
}
