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
