//! The SQL a continuous query is planned from, and planning errors turned
//! into 400s that point into the user's SQL.
//!
//! DataFusion plans a continuous query as a batch query over the stream's
//! columns plus the two window columns, so the user's `SELECT` is rewritten
//! to carry them:
//!
//! ```text
//! SELECT geo, count(*) FROM imps GROUP BY geo WINDOW 10s
//!   → SELECT window_start, window_end, geo, count(*) FROM imps
//!     GROUP BY window_start, window_end, geo
//! ```
//!
//! (`WINDOW 10s` itself was blanked out by the parser, `crate::sql`.)

use datafusion::sql::sqlparser::ast::{self, Expr, GroupByExpr, Ident, SelectItem};

use super::{WINDOW_END, WINDOW_START};
use crate::error::{Error, Result};
use crate::model::{SelectSql, StreamDef};

fn ident(name: &str) -> Expr {
    Expr::Identifier(Ident::new(name))
}

/// Adds the window columns to the select list and the `GROUP BY`.
pub(super) fn rewrite(select: &SelectSql, stream: &StreamDef) -> Result<ast::Statement> {
    let mut stmt = crate::sql::parse_plain(&select.sql)?;
    let ast::Statement::Query(q) = &mut stmt else {
        return Err(Error::sql("a continuous query must be a SELECT", None));
    };
    let ast::SetExpr::Select(sel) = q.body.as_mut() else {
        return Err(Error::sql(
            "a continuous query must be a single SELECT (no UNION or VALUES)",
            None,
        ));
    };
    // One stream, optionally joined with reference tables.
    if sel.from.len() != 1 {
        return Err(Error::sql(
            format!(
                "a continuous query reads exactly one stream ({}); join reference tables with JOIN ... ON",
                stream.name
            ),
            None,
        ));
    }
    for (i, name) in [WINDOW_START, WINDOW_END].iter().enumerate() {
        sel.projection
            .insert(i, SelectItem::UnnamedExpr(ident(name)));
    }
    match &mut sel.group_by {
        GroupByExpr::Expressions(v, _) => {
            v.insert(0, ident(WINDOW_START));
            v.insert(1, ident(WINDOW_END));
        }
        GroupByExpr::All(_) => {
            return Err(Error::sql(
                "GROUP BY ALL is not supported in continuous queries; list the keys",
                None,
            ));
        }
    }
    // Ordinals in ORDER BY refer to the user's select list, now shifted by two.
    if let Some(ob) = &mut q.order_by
        && let ast::OrderByKind::Expressions(exprs) = &mut ob.kind
    {
        for e in exprs {
            if let Expr::Value(v) = &mut e.expr
                && let ast::Value::Number(n, _) = &mut v.value
                && let Ok(i) = n.parse::<usize>()
            {
                *n = (i + 2).to_string();
            }
        }
    }
    Ok(stmt)
}

/// Finds the identifier DataFusion complains about, to point at it.
pub fn locate_in(sql: &str, message: &str) -> Option<(u64, u64)> {
    let name = ["No field named ", "table '", "Invalid function '"]
        .iter()
        .find_map(|p| message.find(p).map(|i| &message[i + p.len()..]))?;
    let name: String = name
        .trim_start_matches(['"', '\''])
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
        .collect();
    let name = name
        .trim_end_matches('.')
        .rsplit('.')
        .next()?
        .to_ascii_lowercase();
    if name.is_empty() {
        return None;
    }
    for (l, line) in sql.lines().enumerate() {
        let lower = line.to_ascii_lowercase();
        let mut from = 0;
        while let Some(i) = lower[from..].find(&name) {
            let at = from + i;
            let before = lower[..at].chars().last();
            let after = lower[at + name.len()..].chars().next();
            let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            if !word(before) && !word(after) {
                return Some((l as u64 + 1, lower[..at].chars().count() as u64 + 1));
            }
            from = at + name.len();
        }
    }
    None
}

/// Maps a planning error to a 400 pointing into the user's SQL.
pub fn plan_error(sql: &str, e: datafusion::error::DataFusionError) -> Error {
    if let Some(d) = e.diagnostic()
        && let Some(span) = d.span
        && span.start.line > 0
    {
        return Error::sql(
            d.message.clone(),
            Some((span.start.line, span.start.column)),
        );
    }
    let message = e.strip_backtrace();
    let location = locate_in(sql, &message);
    let message = message
        .trim_start_matches("Error during planning: ")
        .trim_start_matches("Schema error: ")
        .to_string();
    Error::sql(message, location)
}
