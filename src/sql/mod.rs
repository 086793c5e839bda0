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
mod stream;
pub mod table;
mod tokens;
pub mod window;

pub use ddl::CreateMode;
pub(crate) use stream::column_defs;

use datafusion::sql::sqlparser::ast::{self, Expr};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::error::parser_error;
use crate::error::{Error, Result};
use crate::model::duration::parse_duration;
use crate::model::{SelectSql, StreamDef};
use stream::create_stream;
use tokens::{Source, end_of, is_blank, loc, start_of, word};
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
fn parse_one(src: &Source, tokens: &[TokenWithSpan]) -> Result<Parsed> {
    let toks: Vec<&TokenWithSpan> = tokens.iter().filter(|t| !is_blank(&t.token)).collect();
    tokens::check_nesting(&toks)?;
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
    parse_plain(&out.sql)?;
    Ok(out)
}

/// Parses the first statement of `sql`, plain SQL (a `SELECT` with
/// Runnel's clauses blanked out): a syntax error points into it.
pub(crate) fn parse_plain(sql: &str) -> Result<ast::Statement> {
    Parser::new(&GenericDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statement())
        .map_err(parser_error)
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

#[cfg(test)]
mod tests {
    use super::*;

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
