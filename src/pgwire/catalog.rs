//! Enough of `pg_catalog` and `information_schema` for psql's `\d`, and for
//! the schema browsers of Grafana, Metabase and JDBC tools: small DataFusion
//! tables built from Runnel's catalog (each query's results table and each
//! reference table, with their columns), empty ones for what Runnel's tables
//! never have (descriptions, defaults, constraints, enums, extensions), and
//! the functions of [`super::functions`]. A catalog query is put in
//! DataFusion's SQL by [`super::rewrite`] first.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, StringArray, new_empty_array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
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

/// Whether `sql` reads PostgreSQL's catalog rather than Runnel's tables:
/// it names a catalog word or a `pg_` relation or function.
pub fn is_catalog_query(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    // Words outside string literals: a value like 'pg_x' names nothing.
    let outside: String = lower.split('\'').step_by(2).collect::<Vec<_>>().join(" ");
    CATALOG_WORDS.iter().any(|w| lower.contains(w))
        || outside
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|w| w.starts_with("pg_") && w.len() > 3)
}

/// Settings `SHOW name` and `current_setting(name)` answer.
pub fn setting(name: &str) -> Option<&'static str> {
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

fn nulls(n: usize, t: DataType) -> ArrayRef {
    datafusion::arrow::array::new_null_array(&t, n)
}

/// A column type of an empty catalog table.
#[derive(Clone, Copy)]
enum Col {
    Oid,
    Text,
    Bool,
}

impl Col {
    fn data_type(self) -> DataType {
        match self {
            Col::Oid => DataType::Int64,
            Col::Text => DataType::Utf8,
            Col::Bool => DataType::Boolean,
        }
    }
}

use Col::{Bool, Oid, Text};

/// Catalog tables with no rows for Runnel's tables: what clients join to
/// read descriptions, defaults, keys, enums, views and extensions.
const EMPTY: &[(&str, &[(&str, Col)])] = &[
    (
        "pg_description",
        &[
            ("objoid", Oid),
            ("classoid", Oid),
            ("objsubid", Oid),
            ("description", Text),
        ],
    ),
    (
        "pg_attrdef",
        &[
            ("oid", Oid),
            ("adrelid", Oid),
            ("adnum", Oid),
            ("adbin", Text),
        ],
    ),
    (
        "pg_enum",
        &[
            ("oid", Oid),
            ("enumtypid", Oid),
            ("enumsortorder", Oid),
            ("enumlabel", Text),
        ],
    ),
    (
        "pg_extension",
        &[("oid", Oid), ("extname", Text), ("extversion", Text)],
    ),
    (
        "pg_views",
        &[
            ("schemaname", Text),
            ("viewname", Text),
            ("viewowner", Text),
            ("definition", Text),
        ],
    ),
    (
        "pg_matviews",
        &[
            ("schemaname", Text),
            ("matviewname", Text),
            ("matviewowner", Text),
            ("ispopulated", Bool),
        ],
    ),
    (
        "pg_index",
        &[
            ("indexrelid", Oid),
            ("indrelid", Oid),
            ("indisprimary", Bool),
            ("indisunique", Bool),
        ],
    ),
    (
        "pg_constraint",
        &[
            ("oid", Oid),
            ("conname", Text),
            ("conrelid", Oid),
            ("confrelid", Oid),
            ("contype", Text),
            ("connamespace", Oid),
        ],
    ),
    (
        "information_schema.table_constraints",
        &[
            ("constraint_name", Text),
            ("table_schema", Text),
            ("table_name", Text),
            ("constraint_type", Text),
        ],
    ),
    (
        "information_schema.key_column_usage",
        &[
            ("constraint_name", Text),
            ("table_schema", Text),
            ("table_name", Text),
            ("column_name", Text),
            ("ordinal_position", Oid),
        ],
    ),
    (
        "information_schema.views",
        &[
            ("table_schema", Text),
            ("table_name", Text),
            ("view_definition", Text),
        ],
    ),
];

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
    let mut udt_names = vec![];
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
            let oid = t.oid() as i64;
            udt_names.push(TYPES.iter().find(|t| t.0 == oid).map_or("text", |t| t.1));
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
            ("data_type", texts(cols.3)),
            ("udt_catalog", texts(vec!["runnel"; k])),
            ("udt_schema", texts(vec!["pg_catalog"; k])),
            ("udt_name", texts(udt_names)),
            ("is_nullable", texts(vec!["YES"; k])),
            ("column_default", nulls(k, DataType::Utf8)),
            ("character_maximum_length", nulls(k, DataType::Int64)),
            ("numeric_precision", nulls(k, DataType::Int64)),
            ("numeric_scale", nulls(k, DataType::Int64)),
            ("datetime_precision", nulls(k, DataType::Int64)),
            ("is_identity", texts(vec!["NO"; k])),
            ("is_generated", texts(vec!["NEVER"; k])),
            ("is_updatable", texts(vec!["NO"; k])),
        ])?,
    )?;
    ctx.register_table(
        "pg_tables",
        table(vec![
            ("schemaname", texts(vec!["public"; n])),
            ("tablename", texts(rels.iter().map(|r| r.0.as_str()))),
            ("tableowner", texts(vec!["runnel"; n])),
            ("tablespace", nulls(n, DataType::Utf8)),
            ("hasindexes", bools(n, false)),
            ("hasrules", bools(n, false)),
            ("hastriggers", bools(n, false)),
            ("rowsecurity", bools(n, false)),
        ])?,
    )?;
    ctx.register_table(
        "pg_stat_user_tables",
        table(vec![
            ("relid", ints(oids())),
            ("schemaname", texts(vec!["public"; n])),
            ("relname", texts(rels.iter().map(|r| r.0.as_str()))),
            ("n_live_tup", nulls(n, DataType::Int64)),
        ])?,
    )?;
    for (name, columns) in EMPTY {
        let columns = columns
            .iter()
            .map(|(c, t)| (*c, new_empty_array(&t.data_type())))
            .collect();
        ctx.register_table(*name, table(columns)?)?;
    }
    ctx.register_table(
        "information_schema.schemata",
        table(vec![
            ("catalog_name", texts(["runnel"])),
            ("schema_name", texts(["public"])),
            ("schema_owner", texts(["runnel"])),
        ])?,
    )?;
    for f in super::functions::functions() {
        ctx.register_udf(f);
    }
    Ok(ctx)
}

/// Answers catalog query `sql`. One over catalog tables Runnel does not
/// have (policies, publications, inheritance, ...) has no rows: what a
/// client asks them about Runnel's tables, none exist.
pub async fn query(app: &App, sql: &str) -> Result<Rows> {
    let ctx = session(app)?;
    let rewritten = super::rewrite::rewrite(sql)?;
    let rewritten = super::rewrite::inline_subqueries(&ctx, &rewritten).await?;
    let answer = async {
        let df = ctx.sql(&rewritten).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        arrow_rows(&schema, &batches)
    };
    match answer.await {
        Ok(rows) => Ok(rows),
        Err(e) if is_missing_table(&e) => {
            tracing::debug!("catalog query answered with no rows: {e}: {rewritten}");
            Ok(no_rows(&rewritten))
        }
        Err(e) => Err(e),
    }
}

/// Whether `e` says a relation is missing (the catalog tables Runnel does
/// not have); any other error is the client's to see.
fn is_missing_table(e: &Error) -> bool {
    let text = e.to_string();
    text.contains("table '") && text.contains("' not found")
}

/// No rows, with the columns the SELECT list of `sql` names.
fn no_rows(sql: &str) -> Rows {
    use datafusion::sql::sqlparser::ast::{Expr, SelectItem, SetExpr, Statement};
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
    #[test]
    fn pg_relations_and_functions_make_catalog_queries_values_do_not() {
        use super::is_catalog_query as cat;
        assert!(cat("SELECT extversion FROM pg_extension"));
        assert!(cat("SELECT pg_get_expr(1, 2)"));
        assert!(!cat("SELECT * FROM pages WHERE page = 'pg_x'"));
        assert!(!cat("SELECT * FROM pages"));
    }
}
