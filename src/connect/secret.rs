//! Keeping secrets out of what Runnel shows: passwords and keys given as
//! stream options (`"kafka.sasl.password" = '...'`) or in the PostgreSQL
//! store's URL are shown as `'***'` in stream definitions (`GET /streams`,
//! the REPL's `\d`), statement echoes, error messages and logs.
//!
//! ```
//! use runnel::connect::secret::{redact_sql, redact_url};
//! let sql = r#"CREATE STREAM s (a TEXT) WITH (kafka_topic = 't', "kafka.sasl.password" = 'hunter2')"#;
//! assert!(redact_sql(sql).ends_with(r#""kafka.sasl.password" = '***')"#));
//! assert_eq!(redact_url("postgres://ann:hunter2@db/runnel"), "postgres://ann:***@db/runnel");
//! ```

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, Tokenizer};

/// What a secret is shown as.
pub const MASK: &str = "***";

/// Whether the property or option `name` holds a secret.
pub fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "sasl.jaas.config",
        "ssl.key.pem",
        "token",
    ]
    .iter()
    .any(|s| name.contains(s))
}

/// `value` as shown for the property `name`.
pub fn shown<'a>(name: &str, value: &'a str) -> &'a str {
    if is_secret(name) { MASK } else { value }
}

/// `text` with every occurrence of each of `secrets` masked.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s, MASK);
    }
    out
}

/// Byte offset of a 1-based tokenizer location in `text`.
fn offset(text: &str, lines: &[usize], at: Location) -> usize {
    let Some(start) = (at.line as usize).checked_sub(1).and_then(|l| lines.get(l)) else {
        return text.len();
    };
    text[*start..]
        .char_indices()
        .nth((at.column as usize).saturating_sub(1))
        .map_or(text.len(), |(i, _)| start + i)
}

/// A statement's text with the value of every secret `key = value` option
/// replaced by `'***'`; the rest is kept as written, so line and column
/// numbers still match. Text that does not tokenize is hidden whole if it
/// names anything secret, as its values cannot be told apart.
pub fn redact_sql(text: &str) -> String {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, text).tokenize_with_location() else {
        return match is_secret(text) {
            true => format!("-- statement hidden: it may hold a secret ({MASK})"),
            false => text.to_string(),
        };
    };
    let lines: Vec<usize> = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let solid: Vec<_> = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    let mut cuts = Vec::new();
    for w in solid.windows(3) {
        let key = match &w[0].token {
            Token::Word(word) => word.value.as_str(),
            Token::SingleQuotedString(s) => s.as_str(),
            _ => continue,
        };
        if w[1].token == Token::Eq && is_secret(key) && w[2].token != Token::EOF {
            let span = w[2].span;
            cuts.push((
                offset(text, &lines, span.start),
                offset(text, &lines, span.end),
            ));
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end) in cuts {
        if start < at || end < start {
            continue;
        }
        out.push_str(&text[at..start]);
        out.push_str(&format!("'{MASK}'"));
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

/// A PostgreSQL URL (or `key=value` string) with its password masked.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        // The user part ends at the last '@' before the path.
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let mut out = match rest[..authority_end].rfind('@') {
            Some(at) => {
                let user = &rest[..at];
                let user = match user.split_once(':') {
                    Some((name, _)) => format!("{name}:{MASK}"),
                    None => user.to_string(),
                };
                format!("{scheme}://{user}{}", &rest[at..])
            }
            None => url.to_string(),
        };
        // A password may also come as a query parameter.
        if let Some(q) = out.find('?') {
            let (head, query) = out.split_at(q + 1);
            let query = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}={MASK}"),
                    _ => kv.to_string(),
                })
                .collect::<Vec<_>>()
                .join("&");
            out = format!("{head}{query}");
        }
        return out;
    }
    url.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}={MASK}"),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names() {
        for name in [
            "kafka.sasl.password",
            "ssl.key.password",
            "sasl.oauthbearer.client.secret",
            "sasl.jaas.config",
            "ssl.key.pem",
            "kafka.sasl.oauthbearer.token",
        ] {
            assert!(is_secret(name), "{name}");
        }
        assert!(!is_secret("sasl.username"));
        assert!(!is_secret("ssl.certificate.pem"));
    }

    #[test]
    fn redacts_secret_option_values_only() {
        let sql = "CREATE STREAM s (a TEXT)\n  WITH (kafka_topic = 'it''s',\n \"kafka.sasl.password\" = 'o''brien pw', \"kafka.ssl.key.pem\"='k', \"kafka.sasl.username\" = 'ann')";
        let r = redact_sql(sql);
        assert_eq!(
            r,
            "CREATE STREAM s (a TEXT)\n  WITH (kafka_topic = 'it''s',\n \"kafka.sasl.password\" = '***', \"kafka.ssl.key.pem\"='***', \"kafka.sasl.username\" = 'ann')"
        );
        // Non-ASCII text before the secret keeps the offsets right.
        let r = redact_sql("CREATE STREAM s (é TEXT) WITH (\"kafka.sasl.password\" = 'pw')");
        assert!(r.ends_with("= '***')") && !r.contains("pw'"), "{r}");
        let r = redact_sql("SELECT 1 WHERE password = 12345");
        assert!(!r.contains("12345"), "{r}");
        assert!(!redact_sql("CREATE STREAM s WITH (password = 'x").contains('x'));
        assert_eq!(redact_sql("SELECT 'x"), "SELECT 'x");
    }

    #[test]
    fn redacts_urls() {
        assert_eq!(
            redact_url("postgres://ann:p%40ss@db:5432/r?sslmode=require"),
            "postgres://ann:***@db:5432/r?sslmode=require"
        );
        assert_eq!(redact_url("postgres://ann@db/r"), "postgres://ann@db/r");
        assert_eq!(
            redact_url("postgres://db/r?user=ann&password=pw"),
            "postgres://db/r?user=ann&password=***"
        );
        assert_eq!(
            redact_url("host=db user=ann password=pw"),
            "host=db user=ann password=***"
        );
    }
}
