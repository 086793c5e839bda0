//! Tab completion of keywords, meta-commands, and the stream, query and
//! column names the server knows (refreshed after statements that change them).
//!
//! ```
//! use runnel::repl::complete::{Names, candidates};
//! let names = Names { streams: vec!["impressions".into()], ..Names::default() };
//! assert_eq!(candidates("SELECT * FROM imp", 17, &names).1, vec!["impressions"]);
//! assert_eq!(candidates("sel", 3, &names).1, vec!["select"]);
//! ```

use std::sync::{Arc, Mutex};

use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Helper};

/// Keywords of Runnel's dialect and the common SQL around it.
pub const KEYWORDS: &[&str] = &[
    "ADVANCE",
    "AND",
    "APPROX_DISTINCT",
    "APPROX_PERCENTILE",
    "AS",
    "ASC",
    "AVG",
    "BETWEEN",
    "BIGINT",
    "BOOLEAN",
    "BY",
    "CASE",
    "CAST",
    "COUNT",
    "CREATE",
    "DATE",
    "DESC",
    "DESCRIBE",
    "DISTINCT",
    "DOUBLE",
    "DROP",
    "ELSE",
    "EMIT",
    "END",
    "EVERY",
    "EXISTS",
    "EXPLAIN",
    "FALSE",
    "FROM",
    "GRACE",
    "GROUP",
    "HAVING",
    "HOPPING",
    "IF",
    "IN",
    "INT",
    "INTERVAL",
    "IS",
    "JOIN",
    "LIKE",
    "LIMIT",
    "MAX",
    "MIN",
    "MINUTES",
    "NOT",
    "NULL",
    "ON",
    "OR",
    "ORDER",
    "QUERIES",
    "QUERY",
    "SECONDS",
    "SELECT",
    "SESSION",
    "SHOW",
    "SIZE",
    "SLIDE",
    "STREAM",
    "STREAMS",
    "SUM",
    "TABLE",
    "TABLES",
    "TEXT",
    "THEN",
    "TIMESTAMP",
    "TRUE",
    "TUMBLING",
    "WHEN",
    "WHERE",
    "WINDOW",
    "WITH",
];

/// `WITH (...)` options of `CREATE STREAM`, completed in lower case.
pub const STREAM_OPTIONS: &[&str] = &[
    "brokers",
    "event_time",
    "format",
    "kafka_topic",
    "start",
    "watermark_delay",
];

/// Meta-commands, for completion after a backslash.
pub const META_COMMANDS: &[&str] = &[
    "\\?",
    "\\c",
    "\\conninfo",
    "\\d",
    "\\d+",
    "\\dq",
    "\\ds",
    "\\echo",
    "\\g",
    "\\h",
    "\\i",
    "\\o",
    "\\p",
    "\\pset",
    "\\q",
    "\\r",
    "\\timing",
    "\\watch",
    "\\x",
];

/// What the server knows, as last fetched.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// Stream names.
    pub streams: Vec<String>,
    /// Query names.
    pub queries: Vec<String>,
    /// Column names of every stream and query.
    pub columns: Vec<String>,
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Completions for `line` with the cursor at byte `pos`: where the replaced
/// word starts, and the sorted candidates.
pub fn candidates(line: &str, pos: usize, names: &Names) -> (usize, Vec<String>) {
    let before = &line[..pos];
    let start = before
        .char_indices()
        .rev()
        .take_while(|(_, c)| is_word(*c))
        .last()
        .map(|(i, _)| i)
        .unwrap_or(pos);
    let prefix = &before[start..];
    let head = &before[..start];
    let trimmed = head.trim_start();

    // A backslash word at the start of the line: meta-commands.
    if trimmed == "\\" {
        let typed = format!("\\{prefix}");
        let list = META_COMMANDS
            .iter()
            .filter(|m| m.starts_with(&typed))
            .map(|m| m.to_string())
            .collect();
        return (start.saturating_sub(1), list);
    }

    let words: Vec<String> = head
        .split(|c: char| !is_word(c) && c != '\\' && c != '+')
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let prev = words.last().map(String::as_str).unwrap_or("");
    let meta = trimmed.starts_with('\\');
    let objects_only = matches!(
        prev,
        "FROM" | "JOIN" | "DESCRIBE" | "STREAM" | "QUERY" | "\\D" | "\\D+" | "\\WATCH"
    ) || (meta && words.first().is_some_and(|w| w == "\\WATCH"));
    let lower = |s: &str| s.to_ascii_lowercase();
    let matches = |s: &str| lower(s).starts_with(&lower(prefix));

    let mut out: Vec<String> = Vec::new();
    let objects = names.streams.iter().chain(&names.queries);
    if objects_only {
        out.extend(objects.filter(|n| matches(n)).cloned());
    } else if !meta {
        // Keywords follow the case the user types, as psql's default does.
        let lower_case = !prefix.is_empty() && prefix.chars().all(|c| !c.is_uppercase());
        out.extend(
            KEYWORDS
                .iter()
                .filter(|k| matches(k))
                .map(|k| if lower_case { lower(k) } else { k.to_string() }),
        );
        if words.iter().any(|w| w == "WITH") {
            out.extend(
                STREAM_OPTIONS
                    .iter()
                    .filter(|o| matches(o))
                    .map(|o| o.to_string()),
            );
        }
        out.extend(
            objects
                .chain(&names.columns)
                .filter(|n| matches(n))
                .cloned(),
        );
    }
    out.sort();
    out.dedup();
    (start, out)
}

/// The rustyline helper: completion only (no hints, highlighting or validation).
pub struct ReplHelper {
    names: Arc<Mutex<Names>>,
    files: FilenameCompleter,
}

impl ReplHelper {
    /// A helper completing from `names`.
    pub fn new(names: Arc<Mutex<Names>>) -> Self {
        ReplHelper {
            names,
            files: FilenameCompleter::new(),
        }
    }
}

impl Completer for ReplHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let t = line.trim_start();
        if t.starts_with("\\i ") || t.starts_with("\\o ") {
            return self.files.complete(line, pos, ctx);
        }
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let (start, list) = candidates(line, pos, &names);
        Ok((
            start,
            list.into_iter()
                .map(|s| Pair {
                    // A trailing space, as psql's completion leaves, so typing goes on.
                    replacement: format!("{s} "),
                    display: s,
                })
                .collect(),
        ))
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
}

impl Highlighter for ReplHelper {}

impl Validator for ReplHelper {}

impl Helper for ReplHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            streams: vec!["impressions".into()],
            queries: vec!["adnetwork".into(), "adnetwork_sliding".into()],
            columns: vec!["publisher".into(), "geo".into()],
        }
    }

    #[test]
    fn keywords_follow_case() {
        let (start, c) = candidates("SELECT * FR", 11, &names());
        assert_eq!(start, 9);
        assert_eq!(c, vec!["FROM"]);
        assert_eq!(candidates("select * fr", 11, &names()).1, vec!["from"]);
    }

    #[test]
    fn objects_after_from_and_meta() {
        assert_eq!(
            candidates("SELECT * FROM ad", 16, &names()).1,
            vec!["adnetwork", "adnetwork_sliding"]
        );
        assert_eq!(candidates("\\d imp", 6, &names()).1, vec!["impressions"]);
        assert_eq!(
            candidates("\\watch 2 adnetwork_s", 20, &names()).1,
            vec!["adnetwork_sliding"]
        );
    }

    #[test]
    fn columns_and_meta_commands() {
        assert_eq!(candidates("SELECT pub", 10, &names()).1, vec!["publisher"]);
        let (start, c) = candidates("\\ti", 3, &names());
        assert_eq!(start, 0);
        assert_eq!(c, vec!["\\timing"]);
        assert_eq!(candidates("\\", 1, &names()).1.len(), META_COMMANDS.len());
    }
}
