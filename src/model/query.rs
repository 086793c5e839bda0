//! A continuous query's definition: its select with Runnel's clauses
//! separated out, and how it groups records in time.
//!
//! ```
//! use runnel::model::query::{WindowKind, WindowSpec};
//! let w = WindowSpec { kind: WindowKind::Hopping { size_ms: 60_000, slide_ms: 10_000 }, grace_ms: 5_000, allow_late_ms: 0 };
//! assert_eq!(w.describe(), "HOPPING 1m SLIDE 10s GRACE 5s");
//! ```

use serde::{Deserialize, Serialize};

use super::duration::fmt_duration;

/// Longest query name, in bytes: the tables named after a query
/// (`<name>:late`, `<name>_kept_<time>`) stay within PostgreSQL's 63-byte
/// identifiers.
pub const MAX_NAME_BYTES: usize = 40;

/// Why `name` cannot name a new query, if it cannot. A name is letters
/// (no ASCII upper case: a query is looked up by its name lower-cased, as
/// SQL reads unquoted names), digits and `_`, not first a digit, so it
/// names its results table, URLs and metrics as it is, and no other
/// query's tables (`<query>:late`).
pub fn name_problem(name: &str) -> Option<String> {
    let problem = if name.is_empty() {
        "a query name cannot be empty".to_string()
    } else if name.len() > MAX_NAME_BYTES {
        format!("a query name is at most {MAX_NAME_BYTES} bytes")
    } else if !(name.chars()).all(|c| (c.is_alphanumeric() && !c.is_ascii_uppercase()) || c == '_')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        "a query name is lower-case letters, digits and _, not starting with a digit".to_string()
    } else if name.starts_with("runnel_") || name.starts_with("sqlite_") {
        "names starting with runnel_ or sqlite_ are reserved".to_string()
    } else {
        return None;
    };
    Some(format!("'{name}': {problem}"))
}

/// A `SELECT` with Runnel's clauses separated out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SelectSql {
    /// DataFusion SQL: the statement with Runnel's clauses blanked out.
    pub sql: String,
    /// The window clause, if any.
    pub window: Option<WindowSpec>,
    /// `EMIT EVERY` interval in ms, if given.
    pub emit_ms: Option<i64>,
    /// `INTO TOPIC 'name'`, if given.
    pub into_topic: Option<String>,
}

/// How records are grouped in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WindowKind {
    /// Fixed, non-overlapping windows aligned to the epoch.
    Tumbling {
        /// Window length in ms.
        size_ms: i64,
    },
    /// Overlapping windows of `size_ms` starting every `slide_ms`.
    Hopping {
        /// Window length in ms.
        size_ms: i64,
        /// Distance between window starts in ms.
        slide_ms: i64,
    },
    /// Per-key sessions closed after `gap_ms` without records.
    Session {
        /// Inactivity gap in ms.
        gap_ms: i64,
    },
    /// No window: one cumulative table, emitted every `emit_ms`.
    Cumulative {
        /// Emit interval in ms.
        emit_ms: i64,
    },
}

/// A parsed window clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    /// The window type.
    pub kind: WindowKind,
    /// Extra lateness allowed on top of the stream's watermark delay.
    pub grace_ms: i64,
    /// `ALLOW LATE`: how long after a window closed a record may still
    /// correct it (its row is written again with the next `revision`).
    #[serde(default)]
    pub allow_late_ms: i64,
}

impl WindowSpec {
    /// The cumulative (no window) spec.
    pub fn cumulative(emit_ms: i64) -> Self {
        WindowSpec {
            kind: WindowKind::Cumulative { emit_ms },
            grace_ms: 0,
            allow_late_ms: 0,
        }
    }

    /// A human-readable form, e.g. `TUMBLING 10s`.
    pub fn describe(&self) -> String {
        let base = match self.kind {
            WindowKind::Tumbling { size_ms } => format!("TUMBLING {}", fmt_duration(size_ms)),
            WindowKind::Hopping { size_ms, slide_ms } => format!(
                "HOPPING {} SLIDE {}",
                fmt_duration(size_ms),
                fmt_duration(slide_ms)
            ),
            WindowKind::Session { gap_ms } => format!("SESSION {}", fmt_duration(gap_ms)),
            WindowKind::Cumulative { emit_ms } => {
                format!("CUMULATIVE EMIT EVERY {}", fmt_duration(emit_ms))
            }
        };
        let mut out = base;
        if self.grace_ms > 0 {
            out.push_str(&format!(" GRACE {}", fmt_duration(self.grace_ms)));
        }
        if self.allow_late_ms > 0 {
            out.push_str(&format!(" ALLOW LATE {}", fmt_duration(self.allow_late_ms)));
        }
        out
    }
}
