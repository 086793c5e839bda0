//! Result formatting: psql-style aligned tables (laid out by comfy-table),
//! expanded records, CSV and JSON.
//!
//! ```
//! use runnel::repl::render::{Rows, Settings};
//! use serde_json::json;
//! let rows = Rows::new(vec!["geo".into(), "n".into()], vec![vec![json!("us"), json!(3)]]);
//! let text = rows.render(&Settings::default(), None);
//! assert_eq!(text, " geo | n\n-----+---\n us  | 3\n(1 row)\n\n");
//! ```

use comfy_table::{Cell, CellAlignment, ContentArrangement, Table};
use serde_json::Value;

/// psql's aligned look: no outer border, `|` between columns and a `-+-`
/// rule under the header (comfy-table preset string, see `TableComponent`).
pub const PSQL_PRESET: &str = "     -+ |          ";

/// Expanded records only: a `|` between name and value, nothing else.
const EXPANDED_PRESET: &str = "        |          ";

/// Output format (`\pset format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns, like psql's default.
    Aligned,
    /// RFC 4180 CSV with a header line.
    Csv,
    /// A JSON array with one object per row, keys in column order.
    Json,
}

impl Format {
    /// Parses `aligned`, `csv` or `json` (any unique prefix).
    pub fn parse(s: &str) -> Option<Format> {
        let s = s.to_ascii_lowercase();
        if s.is_empty() {
            return None;
        }
        [
            ("aligned", Format::Aligned),
            ("csv", Format::Csv),
            ("json", Format::Json),
        ]
        .into_iter()
        .find(|(name, _)| name.starts_with(&s))
        .map(|(_, f)| f)
    }

    /// The name `\pset` shows.
    pub fn name(self) -> &'static str {
        match self {
            Format::Aligned => "aligned",
            Format::Csv => "csv",
            Format::Json => "json",
        }
    }
}

/// Expanded display (`\x`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expanded {
    /// One row per line.
    Off,
    /// One `-[ RECORD n ]-` block per row.
    On,
    /// Expanded only when the aligned table is wider than the terminal.
    Auto,
}

/// Display settings shared by every result.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Output format.
    pub format: Format,
    /// Expanded display.
    pub expanded: Expanded,
    /// How NULL is shown.
    pub null: String,
    /// Whether the `(N rows)` footer is shown.
    pub footer: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            format: Format::Aligned,
            expanded: Expanded::Off,
            null: String::new(),
            footer: true,
        }
    }
}

/// A result set to display.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, each in column order.
    pub rows: Vec<Vec<Value>>,
    /// Columns to right-align regardless of their values (numeric types).
    pub numeric: Vec<bool>,
    /// A title shown above aligned tables (`\d` uses it).
    pub title: Option<String>,
}

/// `(1 row)` / `(N rows)`.
pub fn row_count(n: usize) -> String {
    if n == 1 {
        "(1 row)".to_string()
    } else {
        format!("({n} rows)")
    }
}

/// The text of one value as shown in tables and CSV.
pub fn cell_text(v: &Value, null: &str) -> String {
    match v {
        Value::Null => null.to_string(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Display width of a line as comfy-table measures it.
fn width(line: &str) -> usize {
    line.chars().count()
}

impl Rows {
    /// Rows with the given column names; numeric columns are detected from the values.
    pub fn new(columns: Vec<String>, rows: Vec<Vec<Value>>) -> Self {
        let numeric = (0..columns.len())
            .map(|i| {
                let mut any = false;
                for r in &rows {
                    match r.get(i) {
                        Some(Value::Number(_)) => any = true,
                        Some(Value::Null) | None => {}
                        Some(_) => return false,
                    }
                }
                any
            })
            .collect();
        Rows {
            columns,
            rows,
            numeric,
            title: None,
        }
    }

    /// Sets the title shown above aligned output.
    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// Formats the rows per `settings`; `term_width` (when known) drives `\x auto`.
    /// The text ends with a newline (and, like psql's aligned output, a blank
    /// line after the footer).
    pub fn render(&self, settings: &Settings, term_width: Option<usize>) -> String {
        match settings.format {
            Format::Csv => self.csv(settings),
            Format::Json => self.json(),
            Format::Aligned => {
                let table = self.aligned(settings);
                let expand = match settings.expanded {
                    Expanded::On => true,
                    Expanded::Off => false,
                    Expanded::Auto => {
                        term_width.is_some_and(|w| table.lines().map(width).max().unwrap_or(0) > w)
                    }
                };
                if expand {
                    self.expanded(settings)
                } else {
                    table
                }
            }
        }
    }

    fn titled(&self, body: String) -> String {
        match &self.title {
            None => body,
            Some(t) => {
                // Centred over the table, as psql does.
                let w = body.lines().map(width).max().unwrap_or(0);
                let pad = w.saturating_sub(width(t)) / 2;
                format!("{}{t}\n{body}", " ".repeat(pad))
            }
        }
    }

    fn aligned(&self, settings: &Settings) -> String {
        let mut t = Table::new();
        t.load_preset(PSQL_PRESET)
            .set_content_arrangement(ContentArrangement::Disabled)
            .force_no_tty();
        t.set_header(
            self.columns
                .iter()
                .map(|c| Cell::new(c).set_alignment(CellAlignment::Center)),
        );
        for r in &self.rows {
            t.add_row(r.iter().map(|v| cell_text(v, &settings.null)));
        }
        for (i, col) in t.column_iter_mut().enumerate() {
            if self.numeric.get(i).copied().unwrap_or(false) {
                col.set_cell_alignment(CellAlignment::Right);
            }
        }
        let mut out = t.trim_fmt();
        out.push('\n');
        if settings.footer {
            out.push_str(&row_count(self.rows.len()));
            out.push_str("\n\n");
        }
        self.titled(out)
    }

    fn expanded(&self, settings: &Settings) -> String {
        if self.rows.is_empty() {
            return if settings.footer {
                "(0 rows)\n\n".to_string()
            } else {
                String::new()
            };
        }
        // One table for all records keeps the name column equally wide in every record.
        let mut t = Table::new();
        t.load_preset(EXPANDED_PRESET)
            .set_content_arrangement(ContentArrangement::Disabled)
            .force_no_tty();
        let mut heights = Vec::new();
        for r in &self.rows {
            for (i, c) in self.columns.iter().enumerate() {
                let v = cell_text(r.get(i).unwrap_or(&Value::Null), &settings.null);
                heights.push(1 + v.matches('\n').count().max(c.matches('\n').count()));
                t.add_row(vec![c.clone(), v]);
            }
        }
        if let Some(c) = t.column_mut(0) {
            c.set_padding((0, 1));
        }
        if let Some(c) = t.column_mut(1) {
            c.set_padding((1, 0));
        }
        let body = t.trim_fmt();
        let lines: Vec<&str> = body.lines().collect();
        let total = lines.iter().map(|l| width(l)).max().unwrap_or(0);
        let divider = lines
            .first()
            .and_then(|l| l.chars().position(|c| c == '|'))
            .unwrap_or(0);
        let mut out = String::new();
        let mut at = 0;
        for (n, _) in self.rows.iter().enumerate() {
            let label = format!("-[ RECORD {} ]", n + 1);
            let mut header = label.clone();
            if width(&label) < divider {
                header.push_str(&"-".repeat(divider - width(&label)));
                header.push('+');
            }
            let rest = total.saturating_sub(width(&header));
            header.push_str(&"-".repeat(rest));
            out.push_str(&header);
            out.push('\n');
            let count: usize = heights[n * self.columns.len()..(n + 1) * self.columns.len()]
                .iter()
                .sum();
            for l in lines.iter().skip(at).take(count) {
                out.push_str(l);
                out.push('\n');
            }
            at += count;
        }
        out.push('\n');
        self.titled(out)
    }

    fn csv(&self, settings: &Settings) -> String {
        let mut out = self
            .columns
            .iter()
            .map(|c| csv_field(c))
            .collect::<Vec<_>>()
            .join(",");
        out.push('\n');
        for r in &self.rows {
            let line = r
                .iter()
                .map(|v| match v {
                    // An empty field is NULL in CSV unless \pset null says otherwise.
                    Value::Null => csv_field(&settings.null),
                    v => csv_field(&cell_text(v, "")),
                })
                .collect::<Vec<_>>()
                .join(",");
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    fn json(&self) -> String {
        if self.rows.is_empty() {
            return "[]\n".to_string();
        }
        // Written by hand so keys keep the column order.
        let objects: Vec<String> = self
            .rows
            .iter()
            .map(|r| {
                let fields: Vec<String> = self
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        format!(
                            "{}:{}",
                            Value::String(c.clone()),
                            r.get(i).unwrap_or(&Value::Null)
                        )
                    })
                    .collect();
                format!("{{{}}}", fields.join(","))
            })
            .collect();
        format!("[\n{}\n]\n", objects.join(",\n"))
    }
}

/// Whether an Arrow or SQL type name is numeric (right-aligned like psql).
pub fn is_numeric_type(t: &str) -> bool {
    let t = t.to_ascii_lowercase();
    let base = t.split('(').next().unwrap_or("").trim();
    let base = base.trim_end_matches(|c: char| c.is_ascii_digit());
    matches!(
        base,
        "int"
            | "uint"
            | "integer"
            | "bigint"
            | "smallint"
            | "tinyint"
            | "float"
            | "double"
            | "real"
            | "decimal"
            | "numeric"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Rows {
        Rows::new(
            vec!["name".into(), "n".into()],
            vec![
                vec![json!("alpha"), json!(10)],
                vec![json!("b"), Value::Null],
            ],
        )
    }

    #[test]
    fn aligned_like_psql() {
        let s = sample().render(&Settings::default(), None);
        assert_eq!(
            s,
            "  name |  n\n-------+----\n alpha | 10\n b     |\n(2 rows)\n\n"
        );
    }

    #[test]
    fn expanded_records() {
        let settings = Settings {
            expanded: Expanded::On,
            ..Settings::default()
        };
        let s = sample().render(&settings, None);
        assert_eq!(
            s,
            "-[ RECORD 1 ]\nname | alpha\nn    | 10\n-[ RECORD 2 ]\nname | b\nn    |\n\n"
        );
    }

    #[test]
    fn auto_expands_when_too_wide() {
        let settings = Settings {
            expanded: Expanded::Auto,
            ..Settings::default()
        };
        assert!(
            sample()
                .render(&settings, Some(5))
                .starts_with("-[ RECORD 1 ]")
        );
        assert!(sample().render(&settings, Some(80)).starts_with("  name"));
    }

    #[test]
    fn csv_and_json() {
        let mut settings = Settings {
            format: Format::Csv,
            ..Settings::default()
        };
        let rows = Rows::new(vec!["a,b".into()], vec![vec![json!("x\"y")]]);
        assert_eq!(rows.render(&settings, None), "\"a,b\"\n\"x\"\"y\"\n");
        settings.format = Format::Json;
        assert_eq!(
            sample().render(&settings, None),
            "[\n{\"name\":\"alpha\",\"n\":10},\n{\"name\":\"b\",\"n\":null}\n]\n"
        );
    }

    #[test]
    fn numeric_types() {
        for t in [
            "Int64",
            "UInt8",
            "Float64",
            "Decimal128(38, 10)",
            "BIGINT",
            "DOUBLE",
        ] {
            assert!(is_numeric_type(t), "{t}");
        }
        for t in [
            "Utf8",
            "Interval(MonthDayNano)",
            "Timestamp(ms)",
            "TEXT",
            "Boolean",
        ] {
            assert!(!is_numeric_type(t), "{t}");
        }
    }

    #[test]
    fn format_prefixes() {
        assert_eq!(Format::parse("al"), Some(Format::Aligned));
        assert_eq!(Format::parse("JSON"), Some(Format::Json));
        assert_eq!(Format::parse("x"), None);
    }
}
