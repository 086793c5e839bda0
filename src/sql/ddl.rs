//! The PostgreSQL-style modifiers of Runnel's catalog statements, found by
//! peeking at tokens: `CREATE [OR REPLACE] QUERY`, `CREATE STREAM|TABLE|QUERY
//! IF NOT EXISTS`, and `DROP QUERY|STREAM [IF EXISTS] name [KEEP RESULTS]`.
//!
//! ```
//! use runnel::sql::{parse_statement, CreateMode, Statement};
//! let p = parse_statement("CREATE STREAM IF NOT EXISTS s (a INT) WITH (kafka_topic = 't')").unwrap();
//! assert_eq!(p.create, CreateMode::IfNotExists);
//! let p = parse_statement("DROP QUERY IF EXISTS q KEEP RESULTS").unwrap();
//! assert!(matches!(p.stmt, Statement::DropQuery { if_exists: true, keep_results: true, .. }));
//! ```

use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

use super::{Source, Statement, end_of, loc, normalize_ident, start_of, word};
use crate::error::{Error, Result};

/// What a `CREATE` does when the name is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CreateMode {
    /// Plain `CREATE`: a taken name is a conflict.
    #[default]
    Create,
    /// `CREATE ... IF NOT EXISTS`: a taken name leaves things as they are.
    IfNotExists,
    /// `CREATE OR REPLACE QUERY`: an existing query is dropped first.
    OrReplace,
}

/// A `CREATE` statement's tokens without its modifiers, the char ranges
/// they occupied (to blank, so later positions still point into the text
/// as written), and what they asked for.
pub(super) type Stripped<'a> = (Vec<&'a TokenWithSpan>, Vec<(usize, usize)>, CreateMode);

fn is(t: Option<&&TokenWithSpan>, kw: &str) -> bool {
    t.and_then(|t| word(t)).as_deref() == Some(kw)
}

/// Takes `OR REPLACE` and `IF NOT EXISTS` out of a `CREATE` statement.
pub(super) fn create_modifiers<'a>(
    src: &Source,
    toks: &[&'a TokenWithSpan],
) -> Result<Stripped<'a>> {
    let mut skip = Vec::new();
    let mut mode = CreateMode::Create;
    if !is(toks.first(), "CREATE") {
        return Ok((toks.to_vec(), vec![], mode));
    }
    let mut at = 1;
    if is(toks.get(1), "OR") {
        if !is(toks.get(2), "REPLACE") {
            return Err(Error::sql("expected OR REPLACE", loc(toks[1])));
        }
        skip.extend([1, 2]);
        mode = CreateMode::OrReplace;
        at = 3;
    }
    let object = toks.get(at).and_then(|t| word(t)).unwrap_or_default();
    if is(toks.get(at + 1), "IF") {
        if !is(toks.get(at + 2), "NOT") || !is(toks.get(at + 3), "EXISTS") {
            return Err(Error::sql("expected IF NOT EXISTS", loc(toks[at + 1])));
        }
        if mode == CreateMode::OrReplace {
            return Err(Error::sql(
                "OR REPLACE and IF NOT EXISTS cannot be used together",
                loc(toks[at + 1]),
            ));
        }
        skip.extend([at + 1, at + 2, at + 3]);
        mode = CreateMode::IfNotExists;
    }
    if mode == CreateMode::OrReplace && object != "QUERY" {
        return Err(Error::sql(
            format!(
                "CREATE OR REPLACE applies to queries; drop the {} first",
                object.to_ascii_lowercase()
            ),
            loc(toks[1]),
        ));
    }
    let blanks = skip
        .iter()
        .map(|&i| (start_of(src, toks[i]), end_of(src, toks[i])))
        .collect();
    let kept = toks
        .iter()
        .enumerate()
        .filter(|(i, _)| !skip.contains(i))
        .map(|(_, t)| *t)
        .collect();
    Ok((kept, blanks, mode))
}

/// `DROP QUERY|STREAM [IF EXISTS] name [KEEP RESULTS]` (KEEP RESULTS for
/// queries only).
pub(super) fn drop_statement(toks: &[&TokenWithSpan]) -> Result<Statement> {
    let query = is(toks.get(1), "QUERY");
    let if_exists = is(toks.get(2), "IF");
    if if_exists && !is(toks.get(3), "EXISTS") {
        return Err(Error::sql("expected IF EXISTS", loc(toks[2])));
    }
    let at = if if_exists { 4 } else { 2 };
    let last = toks[toks.len() - 1];
    let t = toks
        .get(at)
        .ok_or_else(|| Error::sql("expected a name", loc(last)))?;
    let name = match &t.token {
        Token::Word(w) => normalize_ident(&w.value, w.quote_style.is_some()),
        _ => {
            return Err(Error::sql(
                format!("expected a name, found {}", t.token),
                loc(t),
            ));
        }
    };
    let keep_results = query && is(toks.get(at + 1), "KEEP");
    let end = if keep_results {
        if !is(toks.get(at + 2), "RESULTS") {
            return Err(Error::sql("expected KEEP RESULTS", loc(toks[at + 1])));
        }
        at + 3
    } else {
        at + 1
    };
    if let Some(t) = toks.get(end) {
        return Err(Error::sql(format!("unexpected {}", t.token), loc(t)));
    }
    Ok(match query {
        true => Statement::DropQuery {
            name,
            if_exists,
            keep_results,
        },
        false => Statement::DropStream { name, if_exists },
    })
}
