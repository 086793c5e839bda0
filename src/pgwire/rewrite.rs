//! A catalog query in DataFusion's SQL: `pg_catalog.` prefixes go,
//! `OPERATOR(pg_catalog.~)` becomes `~`, `COLLATE` and casts to
//! `regclass`/`oid` go (a relation named in a string cast to `regclass`
//! has no oid: NULL), scalar subqueries (column defaults, collations)
//! answer NULL, `user`/`current_user` is Runnel's one role, arrays' lower
//! bounds are 1, and a function in FROM is a one-column table named by its
//! alias, as in PostgreSQL (`generate_series(..) AS i`, `f(..) s`).

use std::ops::ControlFlow;

use datafusion::common::ScalarValue;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, DataType as SqlType, Expr, FunctionArguments, ObjectNamePart, Query, SetExpr,
    Statement, TableFactor, Value, visit_expressions, visit_expressions_mut, visit_relations_mut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::error::{Error, Result};

fn parse(sql: &str) -> Result<Vec<Statement>> {
    Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(crate::error::parser_error)
}

/// `sql` in DataFusion's terms (see the module documentation).
pub fn rewrite(sql: &str) -> Result<String> {
    let Some(mut stmt) = parse(sql)?.pop() else {
        return Err(Error::sql("empty statement", None));
    };
    if let Statement::Query(q) = &mut stmt {
        from_functions(q)?;
    }
    let mut failed = None;
    let _ = visit_expressions_mut(&mut stmt, |e| {
        if let Expr::InSubquery { subquery, .. } | Expr::Exists { subquery, .. } = e
            && let Err(err) = from_functions(subquery)
        {
            failed = Some(err);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    if let Some(e) = failed {
        return Err(e);
    }
    let strip = |parts: &mut Vec<ObjectNamePart>| {
        if parts.len() > 1
            && let Some(ObjectNamePart::Identifier(id)) = parts.first()
            && id.value.eq_ignore_ascii_case("pg_catalog")
        {
            parts.remove(0);
        }
    };
    let _ = visit_relations_mut(&mut stmt, |name| {
        strip(&mut name.0);
        ControlFlow::<()>::Continue(())
    });
    let _ = visit_expressions_mut(&mut stmt, |e| {
        let replaced = match e {
            Expr::Subquery(_) => Some(Expr::Value(Value::Null.into())),
            Expr::Collate { expr, .. } => Some((**expr).clone()),
            Expr::Cast {
                expr, data_type, ..
            } => cast(expr, data_type),
            Expr::Function(f) => {
                strip(&mut f.name.0);
                let name = f.name.to_string().to_ascii_lowercase();
                match (name.as_str(), &f.args) {
                    ("user" | "current_user" | "session_user", FunctionArguments::None) => Some(
                        Expr::Value(Value::SingleQuotedString("runnel".into()).into()),
                    ),
                    ("array_lower", _) => {
                        Some(Expr::Value(Value::Number("1".into(), false).into()))
                    }
                    ("array_upper", _) => {
                        f.name = datafusion::sql::sqlparser::ast::ObjectName::from(vec![
                            datafusion::sql::sqlparser::ast::Ident::new("array_length"),
                        ]);
                        None
                    }
                    _ => None,
                }
            }
            Expr::BinaryOp { op, .. } => {
                if let BinaryOperator::PGCustomBinaryOperator(parts) = op {
                    *op = match parts.last().map(String::as_str) {
                        Some("~") => BinaryOperator::PGRegexMatch,
                        Some("!~") => BinaryOperator::PGRegexNotMatch,
                        Some("~*") => BinaryOperator::PGRegexIMatch,
                        Some("=") => BinaryOperator::Eq,
                        Some("<>") => BinaryOperator::NotEq,
                        _ => op.clone(),
                    };
                }
                None
            }
            _ => None,
        };
        if let Some(r) = replaced {
            *e = r;
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(stmt.to_string())
}

/// `sql` with each uncorrelated `x IN (SELECT ...)` answered first and
/// written as `x IN (values)`: DataFusion plans such subqueries in few
/// places (not in ORDER BY, where Grafana puts one). A subquery that fails
/// alone (it reads the outer query's columns) stays.
pub async fn inline_subqueries(ctx: &SessionContext, sql: &str) -> Result<String> {
    let Some(mut stmt) = parse(sql)?.pop() else {
        return Ok(sql.to_string());
    };
    let mut subqueries = vec![];
    let _ = visit_expressions(&stmt, |e| {
        if let Expr::InSubquery { subquery, .. } = e {
            subqueries.push(subquery.to_string());
        }
        ControlFlow::<()>::Continue(())
    });
    if subqueries.is_empty() {
        return Ok(sql.to_string());
    }
    let mut answers = std::collections::HashMap::new();
    for q in subqueries {
        let Ok(df) = ctx.sql(&q).await else { continue };
        let Ok(batches) = df.collect().await else {
            continue;
        };
        let mut values = vec![];
        for b in batches.iter().filter(|b| b.num_columns() == 1) {
            for i in 0..b.num_rows() {
                let v = ScalarValue::try_from_array(b.column(0), i)?;
                values.push(match v {
                    ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
                        Expr::Value(Value::SingleQuotedString(s).into())
                    }
                    v if v.is_null() => Expr::Value(Value::Null.into()),
                    v => Expr::Value(Value::Number(v.to_string(), false).into()),
                });
            }
        }
        answers.insert(q, values);
    }
    let _ = visit_expressions_mut(&mut stmt, |e| {
        if let Expr::InSubquery {
            expr,
            subquery,
            negated,
        } = e
            && let Some(values) = answers.get(&subquery.to_string())
        {
            *e = if values.is_empty() {
                Expr::Value(Value::Boolean(*negated).into())
            } else {
                Expr::InList {
                    expr: expr.clone(),
                    list: values.clone(),
                    negated: *negated,
                }
            };
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(stmt.to_string())
}

/// A cast DataFusion has no type for: to `regclass`, a relation's name in a
/// string has no oid here (NULL) and a number stays; other casts to
/// PostgreSQL's own types (`oid`, `regtype`, ...) keep the value.
fn cast(expr: &Expr, to: &SqlType) -> Option<Expr> {
    let regclass = match to {
        SqlType::Regclass => true,
        SqlType::Custom(name, _) => name.to_string().eq_ignore_ascii_case("regclass"),
        _ => false,
    };
    match (to, expr) {
        (_, Expr::Value(v)) if regclass => match &v.value {
            Value::SingleQuotedString(s) if s.parse::<i64>().is_err() => {
                Some(Expr::Value(Value::Null.into()))
            }
            _ => Some(expr.clone()),
        },
        (SqlType::Regclass | SqlType::Custom(..), _) => Some(expr.clone()),
        _ => None,
    }
}

/// Functions in the FROM clauses of `q` (and its derived tables) as
/// one-column tables: `f(args) AS s` reads `(SELECT f(args) AS s) AS s`,
/// and the set-returning `generate_series(a, b) AS i` reads
/// `(SELECT unnest(generate_series(a, b)) AS i) AS i`.
fn from_functions(q: &mut Query) -> Result<()> {
    if let Some(with) = &mut q.with {
        for cte in &mut with.cte_tables {
            from_functions(&mut cte.query)?;
        }
    }
    from_functions_in(&mut q.body)
}

fn from_functions_in(body: &mut SetExpr) -> Result<()> {
    match body {
        SetExpr::Select(select) => {
            for t in &mut select.from {
                table(&mut t.relation)?;
                for j in &mut t.joins {
                    table(&mut j.relation)?;
                }
            }
            Ok(())
        }
        SetExpr::Query(q) => from_functions(q),
        SetExpr::SetOperation { left, right, .. } => {
            from_functions_in(left)?;
            from_functions_in(right)
        }
        _ => Ok(()),
    }
}

fn table(t: &mut TableFactor) -> Result<()> {
    match t {
        TableFactor::Derived { subquery, .. } => from_functions(subquery),
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => {
            table(&mut table_with_joins.relation)?;
            for j in &mut table_with_joins.joins {
                table(&mut j.relation)?;
            }
            Ok(())
        }
        TableFactor::Table {
            name,
            alias: Some(alias),
            args: Some(args),
            ..
        } if alias.columns.is_empty() => {
            let call = format!(
                "{name}({})",
                args.args
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let call = match name.to_string().to_ascii_lowercase().as_str() {
                "generate_series" | "pg_catalog.generate_series" => format!("unnest({call})"),
                _ => call,
            };
            let column = alias.name.clone();
            let Some(Statement::Query(q)) = parse(&format!("SELECT {call} AS {column}"))?.pop()
            else {
                return Ok(());
            };
            *t = TableFactor::Derived {
                lateral: false,
                subquery: q,
                alias: Some(alias.clone()),
                sample: None,
            };
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psql_catalog_queries_become_datafusion_sql() {
        let sql = "SELECT c.oid, n.nspname FROM pg_catalog.pg_class c WHERE c.relname OPERATOR(pg_catalog.~) '^(adnetwork)$' COLLATE pg_catalog.default AND pg_catalog.pg_table_is_visible(c.oid) AND c.oid = '1'::pg_catalog.regclass";
        let r = rewrite(sql).unwrap();
        assert!(!r.contains("pg_catalog"), "{r}");
        assert!(r.contains("c.relname ~ '^(adnetwork)$'"), "{r}");
    }

    #[test]
    fn functions_in_from_are_tables_named_by_their_alias() {
        let sql = "SELECT trim(s[i]) FROM generate_series(array_lower(string_to_array('a,b', ','), 1), array_upper(string_to_array('a,b', ','), 1)) AS i, string_to_array('a,b', ',') s WHERE user = 'x'";
        let r = rewrite(sql).unwrap();
        assert!(
            r.contains("FROM (SELECT unnest(generate_series(1, array_length(string_to_array('a,b', ','), 1))) AS i) AS i, (SELECT string_to_array('a,b', ',') AS s) s"),
            "{r}"
        );
        assert!(r.contains("WHERE 'runnel' = 'x'"), "{r}");
    }
}
