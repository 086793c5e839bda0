//! The PostgreSQL functions catalog queries call, as DataFusion functions:
//! what names, settings and privileges are (`version()`, `current_setting`,
//! `current_schemas`, `quote_ident`, `parse_ident`, `format`, `format_type`,
//! `has_*_privilege`), and the descriptions and defaults Runnel's tables do
//! not have (NULL).

use std::sync::Arc;

use datafusion::arrow::array::new_empty_array;
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use pgwire::api::Type;

use super::auth::SERVER_VERSION;
use super::catalog::setting;
use super::encode::type_name;

type Answer = datafusion::error::Result<ColumnarValue>;

/// A function of any arguments, answering `f` of their values row by row
/// (a constant when `f` ignores them).
#[derive(Debug)]
struct Function {
    name: &'static str,
    sig: Signature,
    t: DataType,
    f: fn(&[ScalarValue]) -> ScalarValue,
}

impl PartialEq for Function {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for Function {}
impl std::hash::Hash for Function {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}

impl ScalarUDFImpl for Function {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.sig
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(self.t.clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Answer {
        let rows = args.args.iter().find_map(|a| match a {
            ColumnarValue::Array(a) => Some(a.len()),
            ColumnarValue::Scalar(_) => None,
        });
        let row = |i: usize| {
            args.args
                .iter()
                .map(|a| match a {
                    ColumnarValue::Scalar(s) => Ok(s.clone()),
                    ColumnarValue::Array(a) => ScalarValue::try_from_array(a, i),
                })
                .collect::<datafusion::error::Result<Vec<_>>>()
        };
        let rows = match rows {
            None => return Ok(ColumnarValue::Scalar((self.f)(&row(0)?))),
            Some(0) => return Ok(ColumnarValue::Array(new_empty_array(&self.t))),
            Some(n) => n,
        };
        let values = (0..rows)
            .map(|i| row(i).map(|r| (self.f)(&r)))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        Ok(ColumnarValue::Array(ScalarValue::iter_to_array(values)?))
    }
}

fn udf(name: &'static str, t: DataType, f: fn(&[ScalarValue]) -> ScalarValue) -> ScalarUDF {
    let sig = Signature::one_of(
        vec![
            datafusion::logical_expr::TypeSignature::Nullary,
            datafusion::logical_expr::TypeSignature::VariadicAny,
        ],
        Volatility::Stable,
    );
    ScalarUDF::from(Function { name, sig, t, f })
}

fn text(s: &str) -> ScalarValue {
    ScalarValue::Utf8(Some(s.to_string()))
}

/// The string value of argument `i`, if any.
fn arg(args: &[ScalarValue], i: usize) -> Option<String> {
    match args.get(i)? {
        ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => s.clone(),
        v if v.is_null() => None,
        v => Some(v.to_string()),
    }
}

fn texts(items: &[String]) -> ScalarValue {
    let values: Vec<ScalarValue> = items.iter().map(|s| text(s)).collect();
    ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Utf8))
}

fn list_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
}

/// `name` as PostgreSQL quotes an identifier: bare when it is lower case
/// letters, digits and `_`, else in double quotes.
fn quote_ident(name: &str) -> String {
    let bare = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if bare {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// The parts of a qualified name (`public."My Table"`), unquoted.
fn parse_ident(name: &str) -> Vec<String> {
    let (mut parts, mut part, mut quoted, mut chars) =
        (vec![], String::new(), false, name.chars().peekable());
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                part.push('"');
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut part)),
            c if quoted => part.push(c),
            c => part.push(c.to_ascii_lowercase()),
        }
    }
    parts.push(part);
    parts
}

/// PostgreSQL's `format`: `%s` a value, `%I` an identifier, `%L` a literal.
fn format(args: &[ScalarValue]) -> ScalarValue {
    let Some(fmt) = arg(args, 0) else {
        return ScalarValue::Utf8(None);
    };
    let (mut out, mut next, mut chars) = (String::new(), 1, fmt.chars());
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let value = || arg(args, next);
        match chars.next() {
            Some('s') => out.push_str(&value().unwrap_or_default()),
            Some('I') => out.push_str(&quote_ident(&value().unwrap_or_default())),
            Some('L') => out.push_str(
                &value().map_or("NULL".into(), |v| format!("'{}'", v.replace('\'', "''"))),
            ),
            Some(c) => {
                out.push(c);
                continue;
            }
            None => break,
        }
        next += 1;
    }
    text(&out)
}

/// The functions catalog queries call.
pub fn functions() -> Vec<ScalarUDF> {
    let t = DataType::Utf8;
    let b = DataType::Boolean;
    vec![
        udf("version", t.clone(), |_| {
            text(&format!("PostgreSQL {SERVER_VERSION}"))
        }),
        udf("current_schema", t.clone(), |_| text("public")),
        udf("current_database", t.clone(), |_| text("runnel")),
        udf("current_schemas", list_type(), |a| {
            let system = matches!(a.first(), Some(ScalarValue::Boolean(Some(true))));
            let mut schemas = vec!["public".to_string()];
            if system {
                schemas.insert(0, "pg_catalog".into());
            }
            texts(&schemas)
        }),
        udf("pg_backend_pid", DataType::Int64, |_| {
            ScalarValue::Int64(Some(1))
        }),
        udf("pg_get_userbyid", t.clone(), |_| text("runnel")),
        udf("pg_encoding_to_char", t.clone(), |_| text("UTF8")),
        udf("obj_description", t.clone(), |_| ScalarValue::Utf8(None)),
        udf("col_description", t.clone(), |_| ScalarValue::Utf8(None)),
        udf("shobj_description", t.clone(), |_| ScalarValue::Utf8(None)),
        udf("pg_get_expr", t.clone(), |_| ScalarValue::Utf8(None)),
        udf("pg_table_is_visible", b.clone(), |_| {
            ScalarValue::Boolean(Some(true))
        }),
        udf("pg_type_is_visible", b.clone(), |_| {
            ScalarValue::Boolean(Some(true))
        }),
        udf("has_table_privilege", b.clone(), |_| {
            ScalarValue::Boolean(Some(true))
        }),
        udf("has_any_column_privilege", b.clone(), |_| {
            ScalarValue::Boolean(Some(true))
        }),
        udf("has_schema_privilege", b.clone(), |_| {
            ScalarValue::Boolean(Some(true))
        }),
        udf("has_database_privilege", b, |_| {
            ScalarValue::Boolean(Some(true))
        }),
        udf("format_type", t.clone(), |a| match a.first() {
            Some(ScalarValue::Int64(Some(oid))) => {
                text(Type::from_oid(*oid as u32).map_or("text", |t| type_name(&t)))
            }
            _ => ScalarValue::Utf8(None),
        }),
        udf("current_setting", t.clone(), |a| {
            ScalarValue::Utf8(arg(a, 0).and_then(|n| setting(&n)).map(String::from))
        }),
        udf("quote_ident", t.clone(), |a| {
            ScalarValue::Utf8(arg(a, 0).map(|n| quote_ident(&n)))
        }),
        udf("parse_ident", list_type(), |a| match arg(a, 0) {
            Some(n) => texts(&parse_ident(&n)),
            None => texts(&[]),
        }),
        udf("format", t, format),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_quote_and_parse_as_in_postgresql() {
        assert_eq!(quote_ident("pages"), "pages");
        assert_eq!(quote_ident("My \"x\""), "\"My \"\"x\"\"\"");
        assert_eq!(parse_ident("public.\"My.T\""), ["public", "My.T"]);
        assert_eq!(parse_ident("Pages"), ["pages"]);
        let f = format(&[
            text("%I.%I=%L %s%%"),
            text("public"),
            text("A b"),
            text("it's"),
        ]);
        assert_eq!(f, text("public.\"A b\"='it''s' %"));
    }
}
