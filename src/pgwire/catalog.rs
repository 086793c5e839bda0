//! Enough of `pg_catalog` and `information_schema` for psql's `\d`, and for
//! the schema browsers of Grafana, Metabase and drivers: small DataFusion
//! tables built from Runnel's catalog (each query's results table and each
//! reference table, with their columns) and the PostgreSQL functions those
//! clients call. A catalog query is rewritten into DataFusion's SQL first:
//! `pg_catalog.` prefixes, `OPERATOR(pg_catalog.~)`, `COLLATE` and `::regclass`
//! casts go, and scalar subqueries (column defaults, collations) answer NULL.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Signature, Volatility, create_udf};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, DataType as SqlType, Expr, ObjectNamePart, Value, visit_expressions_mut,
    visit_relations_mut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use pgwire::api::Type;
use pgwire::error::ErrorInfo;

use super::auth::SERVER_VERSION;
use super::encode::{Cell, Rows, arrow_rows, pg_error, pg_type, type_name};
use crate::error::{Error, Result};
use crate::server::App;

/// Names that make a statement a catalog query.
const CATALOG_WORDS: &[&str] = &[
    "pg_catalog",
    "information_schema",
    "pg_class",
    "pg_namespace",
    "pg_attribute",
    "pg_type",
    "pg_database",
    "pg_settings",
    "pg_roles",
    "version()",
    "current_schema",
    "current_database",
    "current_setting",
    "has_table_privilege",
];

/// Whether `sql` reads PostgreSQL's catalog rather than Runnel's tables.
pub fn is_catalog_query(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    CATALOG_WORDS.iter().any(|w| lower.contains(w))
}

/// Settings `SHOW name` and `current_setting(name)` answer.
fn setting(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "server_version" => SERVER_VERSION,
        "server_version_num" => "160006",
        "server_encoding" | "client_encoding" => "UTF8",
        "standard_conforming_strings" => "on",
        "integer_datetimes" => "on",
        "timezone" => "UTC",
        "datestyle" => "ISO, MDY",
        "intervalstyle" => "postgres",
        "search_path" => "public",
        "transaction_isolation" | "default_transaction_isolation" => "read committed",
        "transaction_read_only" | "default_transaction_read_only" => "off",
        "max_identifier_length" => "63",
        "is_superuser" => "off",
        "application_name" => "",
        "lc_collate" | "lc_ctype" => "C.UTF-8",
        _ => return None,
    })
}

/// `SHOW name` for a setting.
pub fn show(name: &str) -> std::result::Result<Rows, Box<ErrorInfo>> {
    match setting(name) {
        Some(v) => Ok(Rows {
            columns: vec![(name.to_ascii_lowercase(), Type::TEXT)],
            rows: vec![vec![Cell::Text(v.into())]],
        }),
        None => Err(pg_error(
            "42704",
            format!("unrecognized configuration parameter \"{name}\""),
        )),
    }
}

/// Object ids: namespaces fixed, relations numbered from here.
const PG_CATALOG: i64 = 11;
const PUBLIC: i64 = 2200;
const INFORMATION_SCHEMA: i64 = 13000;
const FIRST_RELATION: i64 = 16384;

/// Runnel's relations as (name, kind, columns).
fn relations(app: &App) -> Vec<(String, &'static str, SchemaRef)> {
    let mut out: Vec<(String, &'static str, SchemaRef)> = app
        .queries()
        .iter()
        .map(|q| (q.name.clone(), "results", q.plan.output_schema.clone()))
        .collect();
    for t in app.ref_tables() {
        out.push((t.name.clone(), "reference", t.schema.clone()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn table(columns: Vec<(&str, ArrayRef)>) -> Result<Arc<MemTable>> {
    let schema = Schema::new(
        columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    );
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        columns.into_iter().map(|(_, a)| a).collect(),
    )?;
    Ok(Arc::new(MemTable::try_new(
        batch.schema(),
        vec![vec![batch]],
    )?))
}

fn ints(v: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(v))
}
fn texts<S: AsRef<str>>(v: impl IntoIterator<Item = S>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(v))
}
fn bools(n: usize, b: bool) -> ArrayRef {
    Arc::new(BooleanArray::from(vec![b; n]))
}

/// The types clients look up by oid.
const TYPES: &[(i64, &str, i64)] = &[
    (16, "bool", 1),
    (17, "bytea", -1),
    (20, "int8", 8),
    (23, "int4", 4),
    (25, "text", -1),
    (701, "float8", 8),
    (1043, "varchar", -1),
    (1114, "timestamp", 8),
    (1184, "timestamptz", 8),
];

/// A session holding the catalog tables and functions.
fn session(app: &App) -> Result<SessionContext> {
    let config = SessionConfig::new().with_default_catalog_and_schema("runnel", "public");
    let ctx = SessionContext::new_with_config(config);
    let catalog = ctx
        .catalog("runnel")
        .ok_or_else(|| Error::Execution("no catalog".into()))?;
    catalog.register_schema("information_schema", Arc::new(MemorySchemaProvider::new()))?;
    let rels = relations(app);
    let n = rels.len();
    let oids = || (0..n as i64).map(|i| FIRST_RELATION + i);
    ctx.register_table(
        "pg_namespace",
        table(vec![
            ("oid", ints([PG_CATALOG, PUBLIC, INFORMATION_SCHEMA])),
            (
                "nspname",
                texts(["pg_catalog", "public", "information_schema"]),
            ),
            ("nspowner", ints([10, 10, 10])),
            ("nspacl", texts([None::<&str>; 3].map(|_| ""))),
        ])?,
    )?;
    let zeros = || ints(vec![0; n]);
    ctx.register_table(
        "pg_class",
        table(vec![
            ("oid", ints(oids())),
            ("relname", texts(rels.iter().map(|r| r.0.as_str()))),
            ("relnamespace", ints(vec![PUBLIC; n])),
            ("relkind", texts(vec!["r"; n])),
            ("relowner", ints(vec![10; n])),
            ("relam", zeros()),
            ("relchecks", zeros()),
            ("relhasindex", bools(n, false)),
            ("relhasrules", bools(n, false)),
            ("relhastriggers", bools(n, false)),
            ("relrowsecurity", bools(n, false)),
            ("relforcerowsecurity", bools(n, false)),
            ("relispartition", bools(n, false)),
            ("reltablespace", zeros()),
            ("reloftype", zeros()),
            ("relpersistence", texts(vec!["p"; n])),
            ("relreplident", texts(vec!["d"; n])),
            ("reltoastrelid", zeros()),
            (
                "relnatts",
                ints(rels.iter().map(|r| r.2.fields().len() as i64)),
            ),
            ("reltuples", zeros()),
            ("relpages", zeros()),
            ("relkind_label", texts(rels.iter().map(|r| r.1))),
        ])?,
    )?;
    let mut attrs: (Vec<i64>, Vec<String>, Vec<i64>, Vec<i64>) = Default::default();
    let mut cols: (Vec<String>, Vec<String>, Vec<i64>, Vec<String>) = Default::default();
    for ((name, _, schema), oid) in rels.iter().zip(oids()) {
        for (i, f) in schema.fields().iter().enumerate() {
            let t = pg_type(f.data_type());
            attrs.0.push(oid);
            attrs.1.push(f.name().clone());
            attrs.2.push(t.oid() as i64);
            attrs.3.push(i as i64 + 1);
            cols.0.push(name.clone());
            cols.1.push(f.name().clone());
            cols.2.push(i as i64 + 1);
            cols.3.push(type_name(&t).to_string());
        }
    }
    let m = attrs.0.len();
    ctx.register_table(
        "pg_attribute",
        table(vec![
            ("attrelid", ints(attrs.0)),
            ("attname", texts(attrs.1)),
            ("atttypid", ints(attrs.2)),
            ("attnum", ints(attrs.3)),
            ("atttypmod", ints(vec![-1; m])),
            ("attnotnull", bools(m, false)),
            ("attisdropped", bools(m, false)),
            ("atthasdef", bools(m, false)),
            ("attidentity", texts(vec![""; m])),
            ("attgenerated", texts(vec![""; m])),
            ("attcollation", ints(vec![0; m])),
            ("attlen", ints(vec![-1; m])),
        ])?,
    )?;
    ctx.register_table(
        "pg_type",
        table(vec![
            ("oid", ints(TYPES.iter().map(|t| t.0))),
            ("typname", texts(TYPES.iter().map(|t| t.1))),
            ("typnamespace", ints(vec![PG_CATALOG; TYPES.len()])),
            ("typlen", ints(TYPES.iter().map(|t| t.2))),
            ("typtype", texts(vec!["b"; TYPES.len()])),
            ("typbasetype", ints(vec![0; TYPES.len()])),
            ("typrelid", ints(vec![0; TYPES.len()])),
            ("typelem", ints(vec![0; TYPES.len()])),
            ("typarray", ints(vec![0; TYPES.len()])),
            ("typcollation", ints(vec![0; TYPES.len()])),
            ("typnotnull", bools(TYPES.len(), false)),
            ("typtypmod", ints(vec![-1; TYPES.len()])),
        ])?,
    )?;
    ctx.register_table(
        "pg_database",
        table(vec![
            ("oid", ints([16383])),
            ("datname", texts(["runnel"])),
            ("datdba", ints([10])),
            ("encoding", ints([6])),
            ("datallowconn", bools(1, true)),
            ("datistemplate", bools(1, false)),
        ])?,
    )?;
    ctx.register_table(
        "pg_roles",
        table(vec![
            ("oid", ints([10])),
            ("rolname", texts(["runnel"])),
            ("rolsuper", bools(1, false)),
        ])?,
    )?;
    ctx.register_table(
        "pg_am",
        table(vec![("oid", ints([2])), ("amname", texts(["heap"]))])?,
    )?;
    let settings = [
        "server_version",
        "server_encoding",
        "client_encoding",
        "standard_conforming_strings",
        "timezone",
        "datestyle",
        "search_path",
        "max_identifier_length",
    ];
    ctx.register_table(
        "pg_settings",
        table(vec![
            ("name", texts(settings)),
            ("setting", texts(settings.map(|s| setting(s).unwrap_or("")))),
        ])?,
    )?;
    let k = cols.0.len();
    ctx.register_table(
        "information_schema.tables",
        table(vec![
            ("table_catalog", texts(vec!["runnel"; n])),
            ("table_schema", texts(vec!["public"; n])),
            ("table_name", texts(rels.iter().map(|r| r.0.as_str()))),
            ("table_type", texts(vec!["BASE TABLE"; n])),
        ])?,
    )?;
    ctx.register_table(
        "information_schema.columns",
        table(vec![
            ("table_catalog", texts(vec!["runnel"; k])),
            ("table_schema", texts(vec!["public"; k])),
            ("table_name", texts(cols.0)),
            ("column_name", texts(cols.1)),
            ("ordinal_position", ints(cols.2)),
            ("data_type", texts(cols.3.clone())),
            ("udt_name", texts(cols.3)),
            ("is_nullable", texts(vec!["YES"; k])),
            ("column_default", texts(vec![""; k])),
        ])?,
    )?;
    ctx.register_table(
        "information_schema.schemata",
        table(vec![
            ("catalog_name", texts(["runnel"])),
            ("schema_name", texts(["public"])),
            ("schema_owner", texts(["runnel"])),
        ])?,
    )?;
    for f in functions() {
        ctx.register_udf(f);
    }
    Ok(ctx)
}

/// A function answering `value` whatever its arguments.
fn constant(name: &str, args: usize, value: ScalarValue) -> ScalarUDF {
    let t = value.data_type();
    let sig = match args {
        0 => Signature::nullary(Volatility::Stable),
        n => Signature::any(n, Volatility::Stable),
    };
    ScalarUDF::from(Constant {
        name: name.to_string(),
        sig,
        value,
        t,
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Constant {
    name: String,
    sig: Signature,
    value: ScalarValue,
    t: DataType,
}

impl datafusion::logical_expr::ScalarUDFImpl for Constant {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.sig
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(self.t.clone())
    }
    fn invoke_with_args(
        &self,
        _: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value.clone()))
    }
}

fn functions() -> Vec<ScalarUDF> {
    let text = |s: &str| ScalarValue::Utf8(Some(s.to_string()));
    let null = ScalarValue::Utf8(None);
    let yes = ScalarValue::Boolean(Some(true));
    let mut fs = vec![
        constant("version", 0, text(&format!("PostgreSQL {SERVER_VERSION}"))),
        constant("current_schema", 0, text("public")),
        constant("current_database", 0, text("runnel")),
        constant("pg_backend_pid", 0, ScalarValue::Int64(Some(1))),
        constant("pg_get_userbyid", 1, text("runnel")),
        constant("pg_encoding_to_char", 1, text("UTF8")),
        constant("pg_table_is_visible", 1, yes.clone()),
        constant("pg_type_is_visible", 1, yes.clone()),
        constant("obj_description", 1, null.clone()),
        constant("obj_description", 2, null.clone()),
        constant("col_description", 2, null.clone()),
        constant("shobj_description", 2, null.clone()),
        constant("pg_get_expr", 2, null.clone()),
        constant("pg_get_expr", 3, null),
        constant("has_table_privilege", 2, yes.clone()),
        constant("has_schema_privilege", 2, yes.clone()),
        constant("has_database_privilege", 2, yes),
    ];
    // Same name, several arities: the last registered wins, so keep one of each.
    fs.dedup_by(|a, b| a.name() == b.name());
    fs.push(create_udf(
        "format_type",
        vec![DataType::Int64, DataType::Int64],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(format_type),
    ));
    fs.push(create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(current_setting),
    ));
    fs
}

fn map_column(
    args: &[ColumnarValue],
    f: impl Fn(&ScalarValue) -> ScalarValue,
) -> datafusion::error::Result<ColumnarValue> {
    Ok(match &args[0] {
        ColumnarValue::Scalar(s) => ColumnarValue::Scalar(f(s)),
        ColumnarValue::Array(a) => {
            let vals = (0..a.len())
                .map(|i| ScalarValue::try_from_array(a, i).map(|s| f(&s)))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            ColumnarValue::Array(ScalarValue::iter_to_array(vals)?)
        }
    })
}

fn format_type(args: &[ColumnarValue]) -> datafusion::error::Result<ColumnarValue> {
    map_column(args, |v| match v {
        ScalarValue::Int64(Some(oid)) => ScalarValue::Utf8(Some(
            Type::from_oid(*oid as u32)
                .map_or("text", |t| type_name(&t))
                .to_string(),
        )),
        _ => ScalarValue::Utf8(None),
    })
}

fn current_setting(args: &[ColumnarValue]) -> datafusion::error::Result<ColumnarValue> {
    map_column(args, |v| match v {
        ScalarValue::Utf8(Some(name)) => ScalarValue::Utf8(setting(name).map(String::from)),
        _ => ScalarValue::Utf8(None),
    })
}

/// `sql` in DataFusion's terms (see the module documentation).
fn rewrite(sql: &str) -> Result<String> {
    let mut stmts =
        Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(crate::error::parser_error)?;
    let Some(mut stmt) = stmts.pop() else {
        return Err(Error::sql("empty statement", None));
    };
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
                expr,
                data_type: SqlType::Custom(..) | SqlType::Regclass,
                ..
            } => Some((**expr).clone()),
            Expr::Function(f) => {
                strip(&mut f.name.0);
                None
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

/// Answers catalog query `sql`. One over catalog tables Runnel does not
/// have (policies, publications, inheritance, ...) has no rows: what a
/// client asks them about Runnel's tables, none exist.
pub async fn query(app: &App, sql: &str) -> Result<Rows> {
    let ctx = session(app)?;
    let rewritten = rewrite(sql)?;
    let answer = async {
        let df = ctx.sql(&rewritten).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        arrow_rows(&schema, &batches)
    };
    match answer.await {
        Ok(rows) => Ok(rows),
        Err(e) => {
            tracing::debug!("catalog query answered with no rows: {e}: {rewritten}");
            Ok(no_rows(&rewritten))
        }
    }
}

/// No rows, with the columns the SELECT list of `sql` names.
fn no_rows(sql: &str) -> Rows {
    use datafusion::sql::sqlparser::ast::{SelectItem, SetExpr, Statement};
    let Ok(mut stmts) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return Rows::default();
    };
    let Some(Statement::Query(q)) = stmts.pop() else {
        return Rows::default();
    };
    let SetExpr::Select(select) = *q.body else {
        return Rows::default();
    };
    let columns = select
        .projection
        .iter()
        .map(|item| {
            let name = match item {
                SelectItem::ExprWithAlias { alias, .. } => alias.value.clone(),
                SelectItem::UnnamedExpr(Expr::Identifier(id)) => id.value.clone(),
                SelectItem::UnnamedExpr(Expr::CompoundIdentifier(ids)) => {
                    ids.last().map_or("?column?".into(), |id| id.value.clone())
                }
                SelectItem::UnnamedExpr(Expr::Function(f)) => f.name.to_string(),
                _ => "?column?".into(),
            };
            (name, Type::TEXT)
        })
        .collect();
    Rows {
        columns,
        rows: vec![],
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
}
