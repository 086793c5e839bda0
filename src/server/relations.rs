//! What a `SELECT` reads, found by walking its syntax tree: the tables
//! in its FROM clauses at any depth ([`relations`]: which streams, tables
//! and queries' results a pull query needs), and the calls of a table
//! function with their arguments ([`table_calls`]: `rollup('q', '1h')`,
//! `late('q')`).
//!
//! ```text
//! WITH w AS (SELECT * FROM imps) SELECT * FROM w JOIN geos ON ...
//!   relations → [imps, geos]   (the CTE `w` left out)
//! ```

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{self, TableFactor, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::error::Result;
use crate::sql::normalize_ident;

/// A table name a statement reads, with where it appears.
pub(super) type Relation = (String, Option<(u64, u64)>);

/// Names of the tables a SELECT reads, in FROM and JOINs at any depth
/// (subqueries, derived tables, CTE bodies), CTE names and table functions
/// (`rollup(...)`) left out.
pub(super) fn relations(sql: &str) -> Result<Vec<Relation>> {
    let stmt = crate::sql::parse_plain(sql)?;
    let mut found = Relations::default();
    let _ = stmt.visit(&mut found);
    Ok(found.names)
}

/// Collects [`relations`].
#[derive(Default)]
struct Relations {
    names: Vec<Relation>,
    ctes: Vec<String>,
}

impl Visitor for Relations {
    type Break = ();

    fn pre_visit_query(&mut self, q: &ast::Query) -> ControlFlow<()> {
        for c in q.with.iter().flat_map(|w| &w.cte_tables) {
            let id = &c.alias.name;
            self.ctes
                .push(normalize_ident(&id.value, id.quote_style.is_some()));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, f: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            name, args: None, ..
        } = f
            && let Some(ast::ObjectNamePart::Identifier(id)) = name.0.last()
        {
            let n = normalize_ident(&id.value, id.quote_style.is_some());
            // A table named twice (a self-join, an IN subquery) is one relation.
            let cte = name.0.len() == 1 && self.ctes.contains(&n);
            if !cte && !self.names.iter().any(|(m, _)| *m == n) {
                let at = Some((id.span.start.line, id.span.start.column)).filter(|l| l.0 > 0);
                self.names.push((n, at));
            }
        }
        ControlFlow::Continue(())
    }
}

/// The arguments of each call of table function `function` in `sql`'s FROM
/// clauses, at any depth: each argument a single-quoted string, or `None`.
pub(super) fn table_calls(sql: &str, function: &str) -> Result<Vec<Vec<Option<String>>>> {
    let stmts = Parser::parse_sql(&GenericDialect {}, sql).map_err(crate::error::parser_error)?;
    let mut calls = TableCalls {
        function,
        calls: Vec::new(),
    };
    for stmt in &stmts {
        let _ = stmt.visit(&mut calls);
    }
    Ok(calls.calls)
}

/// Collects [`table_calls`].
struct TableCalls<'a> {
    function: &'a str,
    calls: Vec<Vec<Option<String>>>,
}

impl Visitor for TableCalls<'_> {
    type Break = ();

    fn pre_visit_table_factor(&mut self, f: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            name,
            args: Some(args),
            ..
        } = f
            && name.to_string().eq_ignore_ascii_case(self.function)
        {
            let text = |a: &ast::FunctionArg| match a {
                ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(ast::Expr::Value(v))) => {
                    match &v.value {
                        ast::Value::SingleQuotedString(s) => Some(s.clone()),
                        _ => None,
                    }
                }
                _ => None,
            };
            self.calls.push(args.args.iter().map(text).collect());
        }
        ControlFlow::Continue(())
    }
}
