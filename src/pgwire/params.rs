//! The text of statements: splitting a simple query at its `;`, and the
//! extended protocol's `$n` parameters written in as SQL literals of their
//! bound types (strings quoted, numbers checked, timestamps and bytea as
//! typed literals), outside of strings, quoted names and comments.

use chrono::NaiveDateTime;
use pgwire::api::Type;
use pgwire::api::portal::Portal;
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};

/// A piece of SQL text as the scanner sees it.
#[derive(Debug, PartialEq)]
enum Piece {
    /// Code (also strings, names and comments, copied as they are).
    Text(usize, usize),
    /// `$n` at (start, end).
    Param(usize, usize, usize),
    /// A top-level `;` at this byte.
    Semi(usize),
}

/// Scans `sql` into code, parameters and semicolons.
fn scan(sql: &str) -> Vec<Piece> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut start) = (0, 0);
    let skip_to = |from: usize, end: &str| {
        sql[from..]
            .find(end)
            .map_or(b.len(), |j| from + j + end.len())
    };
    while i < b.len() {
        match b[i] {
            b'\'' => {
                // '' inside a string is a quote: scanning on from it works.
                i = skip_to(i + 1, "'");
            }
            b'"' => i = skip_to(i + 1, "\""),
            b'-' if b.get(i + 1) == Some(&b'-') => i = skip_to(i, "\n"),
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_to(i + 2, "*/"),
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let end = i + 1 + sql[i + 1..].bytes().take_while(u8::is_ascii_digit).count();
                out.push(Piece::Text(start, i));
                let n = sql[i + 1..end].parse().unwrap_or(0);
                out.push(Piece::Param(i, end, n));
                (i, start) = (end, end);
            }
            b'$' => {
                // A dollar-quoted string: $tag$ ... $tag$.
                let tag_len = sql[i + 1..]
                    .bytes()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_')
                    .count();
                if b.get(i + 1 + tag_len) == Some(&b'$') {
                    let tag = &sql[i..i + tag_len + 2];
                    i = skip_to(i + tag.len(), tag);
                } else {
                    i += 1;
                }
            }
            b';' => {
                out.push(Piece::Text(start, i));
                out.push(Piece::Semi(i));
                (i, start) = (i + 1, i + 1);
            }
            _ => i += 1,
        }
    }
    out.push(Piece::Text(start, b.len().min(sql.len())));
    out
}

/// The statements of `sql`, split at top-level semicolons (slices of it).
pub fn split(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for p in scan(sql) {
        if let Piece::Semi(at) = p {
            out.push(&sql[start..at]);
            start = at + 1;
        }
    }
    out.push(&sql[start..]);
    out
}

/// The number of parameters `sql` uses (its highest `$n`).
pub fn count(sql: &str) -> usize {
    scan(sql)
        .iter()
        .filter_map(|p| match p {
            Piece::Param(_, _, n) => Some(*n),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// `sql` with each `$n` replaced by `value(n)`.
fn substitute(
    sql: &str,
    mut value: impl FnMut(usize) -> PgWireResult<String>,
) -> PgWireResult<String> {
    let mut out = String::with_capacity(sql.len());
    for p in scan(sql) {
        match p {
            Piece::Text(a, b) => out.push_str(&sql[a..b]),
            Piece::Param(_, _, n) => out.push_str(&value(n)?),
            Piece::Semi(_) => out.push(';'),
        }
    }
    Ok(out)
}

/// `sql` with every parameter NULL (to learn its columns before binding).
pub fn with_nulls(sql: &str) -> String {
    substitute(sql, |_| Ok("NULL".into())).unwrap_or_else(|_| sql.to_string())
}

/// A string as a SQL literal.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn bad(message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "22P02".into(),
        message,
    )))
}

/// The portal's statement with its bound parameters written in.
pub fn bind(portal: &Portal<String>) -> PgWireResult<String> {
    let types = &portal.statement.parameter_types;
    substitute(&portal.statement.statement, |n| {
        let i = n
            .checked_sub(1)
            .ok_or_else(|| bad("there is no parameter $0".into()))?;
        if i >= portal.parameter_len() {
            return Err(bad(format!(
                "there is no parameter ${n}: {} were bound",
                portal.parameter_len()
            )));
        }
        let t = types.get(i).cloned().flatten().unwrap_or(Type::UNKNOWN);
        literal(portal, i, &t)
    })
}

/// Parameter `i` of `portal`, of type `t`, as a SQL literal.
fn literal(portal: &Portal<String>, i: usize, t: &Type) -> PgWireResult<String> {
    fn show<T: ToString>(v: Option<T>) -> String {
        v.map_or("NULL".into(), |v| v.to_string())
    }
    Ok(match *t {
        Type::INT2 => show(portal.parameter::<i16>(i, t)?),
        Type::INT4 => show(portal.parameter::<i32>(i, t)?),
        Type::INT8 => show(portal.parameter::<i64>(i, t)?),
        Type::OID => show(portal.parameter::<u32>(i, t)?),
        Type::FLOAT4 => float(portal.parameter::<f32>(i, t)?.map(f64::from)),
        Type::FLOAT8 => float(portal.parameter::<f64>(i, t)?),
        Type::BOOL => show(portal.parameter::<bool>(i, t)?).to_ascii_uppercase(),
        Type::NUMERIC => match portal.parameter::<String>(i, &Type::TEXT) {
            Ok(Some(s)) if s.parse::<f64>().is_ok() => s,
            Ok(None) => "NULL".into(),
            _ => return Err(bad(format!("parameter ${} is not a number", i + 1))),
        },
        Type::TIMESTAMP => match portal.parameter::<NaiveDateTime>(i, t)? {
            Some(ts) => format!("TIMESTAMP '{}'", ts.format("%Y-%m-%d %H:%M:%S%.f")),
            None => "NULL".into(),
        },
        Type::TIMESTAMPTZ => {
            match portal.parameter::<chrono::DateTime<chrono::FixedOffset>>(i, t)? {
                Some(ts) => format!(
                    "TIMESTAMP '{}'",
                    ts.naive_utc().format("%Y-%m-%d %H:%M:%S%.f")
                ),
                None => "NULL".into(),
            }
        }
        Type::BYTEA => match portal.parameter::<Vec<u8>>(i, t)? {
            Some(b) => format!(
                "X'{}'",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            ),
            None => "NULL".into(),
        },
        _ => {
            let raw = portal.parameters.get(i).cloned().flatten();
            match raw {
                None => "NULL".into(),
                Some(bytes) => quote(
                    std::str::from_utf8(&bytes)
                        .map_err(|_| bad(format!("parameter ${} is not UTF-8 text", i + 1)))?,
                ),
            }
        }
    })
}

fn float(v: Option<f64>) -> String {
    match v {
        None => "NULL".into(),
        Some(f) if f.is_finite() => format!("{f:?}"),
        Some(f) => format!("CAST('{f}' AS DOUBLE)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_outside_strings_and_comments() {
        let sql = "SELECT ';' AS a; -- x;\nSELECT $$;$$; SELECT \"a;b\" /* ; */";
        assert_eq!(
            split(sql),
            [
                "SELECT ';' AS a",
                " -- x;\nSELECT $$;$$",
                " SELECT \"a;b\" /* ; */"
            ]
        );
    }

    #[test]
    fn parameters() {
        assert_eq!(
            count("SELECT * FROM t WHERE a = $1 AND b = '$3' AND c > $2"),
            2
        );
        assert_eq!(with_nulls("SELECT $1, '$1'"), "SELECT NULL, '$1'");
        assert_eq!(quote("it's"), "'it''s'");
    }
}
