//! The window clause of a continuous query, and durations.
//!
//! ```
//! use runnel::sql::window::{parse_window_clause, WindowKind};
//! let w = parse_window_clause("60s SLIDE 10s GRACE 5s").unwrap();
//! assert_eq!(w.kind, WindowKind::Hopping { size_ms: 60_000, slide_ms: 10_000 });
//! assert_eq!(w.grace_ms, 5_000);
//! ```

use serde::{Deserialize, Serialize};

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
}

impl WindowSpec {
    /// The cumulative (no window) spec.
    pub fn cumulative(emit_ms: i64) -> Self {
        WindowSpec {
            kind: WindowKind::Cumulative { emit_ms },
            grace_ms: 0,
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
        if self.grace_ms > 0 {
            format!("{base} GRACE {}", fmt_duration(self.grace_ms))
        } else {
            base
        }
    }
}

/// Formats ms as the shortest exact unit (`10s`, `1m`, `500ms`).
pub fn fmt_duration(ms: i64) -> String {
    for (unit, n) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms != 0 && ms % n == 0 {
            return format!("{}{unit}", ms / n);
        }
    }
    format!("{ms}ms")
}

fn unit_ms(unit: &str) -> Option<i64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "ms" | "millisecond" | "milliseconds" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        _ => return None,
    })
}

/// Parses a single positive duration string: `500ms`, `10s`, `1m`,
/// `10 seconds`, `INTERVAL '10' SECOND`.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    whole(text, duration)
}

/// Like [`parse_duration`], also accepting zero (`0s`), for settings where
/// zero means "none" (`window_state_retention`).
pub fn parse_duration_or_zero(text: &str) -> Result<i64, String> {
    whole(text, length)
}

fn whole(
    text: &str,
    parse: fn(&[String], &mut usize) -> Result<i64, String>,
) -> Result<i64, String> {
    let words = words(text);
    let mut pos = 0;
    let d = parse(&words, &mut pos)?;
    if pos != words.len() {
        return Err(format!("unexpected '{}' after duration", words[pos]));
    }
    Ok(d)
}

fn words(text: &str) -> Vec<String> {
    text.replace(['(', ')', ','], " ")
        .split_whitespace()
        .map(|w| w.trim_matches('\'').to_string())
        .collect()
}

/// A positive duration.
fn duration(words: &[String], pos: &mut usize) -> Result<i64, String> {
    match length(words, pos)? {
        0 => Err("a window duration must be positive".into()),
        ms => Ok(ms),
    }
}

/// A duration of zero or more ms.
fn length(words: &[String], pos: &mut usize) -> Result<i64, String> {
    let Some(first) = words.get(*pos) else {
        return Err("expected a duration such as 10s, 1m or INTERVAL '10' SECOND".into());
    };
    let mut w = first.as_str();
    if w.eq_ignore_ascii_case("interval") {
        *pos += 1;
        w = words
            .get(*pos)
            .ok_or("expected a number after INTERVAL")?
            .as_str();
    }
    let split = w.find(|c: char| !c.is_ascii_digit()).unwrap_or(w.len());
    let (num, unit) = w.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| format!("expected a duration such as 10s, found '{w}'"))?;
    *pos += 1;
    let unit = if unit.is_empty() {
        let u = words
            .get(*pos)
            .ok_or_else(|| format!("missing unit after {n} (use ms, s, m, h or d)"))?;
        *pos += 1;
        u.as_str()
    } else {
        unit
    };
    let ms = unit_ms(unit).ok_or_else(|| format!("unknown duration unit '{unit}'"))?;
    n.checked_mul(ms)
        .ok_or_else(|| format!("the duration {n}{unit} is too long"))
}

fn is_kw(words: &[String], pos: usize, kw: &str) -> bool {
    words.get(pos).is_some_and(|w| w.eq_ignore_ascii_case(kw))
}

/// Parses the text after the `WINDOW` keyword.
pub fn parse_window_clause(text: &str) -> Result<WindowSpec, String> {
    let w = words(text);
    let mut pos = 0;
    let kind = if is_kw(&w, 0, "session") {
        pos = 1;
        WindowKind::Session {
            gap_ms: duration(&w, &mut pos)?,
        }
    } else if is_kw(&w, 0, "tumbling") || is_kw(&w, 0, "hopping") {
        let hopping = is_kw(&w, 0, "hopping");
        pos = 1;
        if is_kw(&w, pos, "size") {
            pos += 1;
        }
        let size_ms = duration(&w, &mut pos)?;
        if hopping {
            if is_kw(&w, pos, "advance") && is_kw(&w, pos + 1, "by") {
                pos += 2;
            } else if is_kw(&w, pos, "slide") {
                pos += 1;
            } else {
                return Err("HOPPING needs ADVANCE BY <duration>".into());
            }
            let slide_ms = duration(&w, &mut pos)?;
            hopping_kind(size_ms, slide_ms)?
        } else {
            WindowKind::Tumbling { size_ms }
        }
    } else {
        let size_ms = duration(&w, &mut pos)?;
        if is_kw(&w, pos, "slide") {
            pos += 1;
            let slide_ms = duration(&w, &mut pos)?;
            hopping_kind(size_ms, slide_ms)?
        } else {
            WindowKind::Tumbling { size_ms }
        }
    };
    let mut grace_ms = 0;
    if is_kw(&w, pos, "grace") {
        pos += 1;
        if is_kw(&w, pos, "period") {
            pos += 1;
        }
        grace_ms = duration(&w, &mut pos)?;
    }
    if let Some(extra) = w.get(pos) {
        return Err(format!("unexpected '{extra}' in window clause"));
    }
    Ok(WindowSpec { kind, grace_ms })
}

/// Most windows one record may fall into: a hopping window's size divided by
/// its slide. Each record is copied into every window it belongs to, so a
/// larger ratio (`1d SLIDE 1ms` is 86 400 000) would exhaust memory.
pub const MAX_WINDOWS_PER_RECORD: i64 = 1000;

fn hopping_kind(size_ms: i64, slide_ms: i64) -> Result<WindowKind, String> {
    if slide_ms > size_ms {
        return Err("SLIDE must not be longer than the window".into());
    }
    // Windows start at multiples of the slide (as in Spark and Flink), so a
    // slide that does not divide the length puts a record in one window
    // more or fewer depending on where it falls: at most this many.
    let per_record = (size_ms + slide_ms - 1) / slide_ms;
    if per_record > MAX_WINDOWS_PER_RECORD {
        return Err(format!(
            "each record would fall into {per_record} windows ({} / {}); the limit is \
             {MAX_WINDOWS_PER_RECORD} windows per record (window length / SLIDE): \
             lengthen SLIDE or shorten the window",
            fmt_duration(size_ms),
            fmt_duration(slide_ms)
        ));
    }
    if size_ms == slide_ms {
        return Ok(WindowKind::Tumbling { size_ms });
    }
    Ok(WindowKind::Hopping { size_ms, slide_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), 500);
        assert_eq!(parse_duration("10s").unwrap(), 10_000);
        assert_eq!(parse_duration("1m").unwrap(), 60_000);
        assert_eq!(parse_duration("2 hours").unwrap(), 7_200_000);
        assert_eq!(parse_duration("1d").unwrap(), 86_400_000);
        assert_eq!(parse_duration("INTERVAL '10' SECOND").unwrap(), 10_000);
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_window_clause("0s").is_err());
        assert!(parse_window_clause("10s SLIDE 0ms").is_err());
        assert_eq!(parse_duration_or_zero("0s").unwrap(), 0);
        assert_eq!(parse_duration_or_zero("0 hours").unwrap(), 0);
        assert_eq!(parse_duration_or_zero("24h").unwrap(), 86_400_000);
        assert!(parse_duration_or_zero("-1s").is_err());
        assert!(parse_duration_or_zero("0").is_err());
    }

    #[test]
    fn clauses() {
        assert_eq!(
            parse_window_clause("10s").unwrap().kind,
            WindowKind::Tumbling { size_ms: 10_000 }
        );
        assert_eq!(
            parse_window_clause("TUMBLING (SIZE 10 SECONDS)")
                .unwrap()
                .kind,
            WindowKind::Tumbling { size_ms: 10_000 }
        );
        assert_eq!(
            parse_window_clause("HOPPING (SIZE 1 MINUTE, ADVANCE BY 10 SECONDS)")
                .unwrap()
                .kind,
            WindowKind::Hopping {
                size_ms: 60_000,
                slide_ms: 10_000
            }
        );
        let s = parse_window_clause("SESSION 30s GRACE 5s").unwrap();
        assert_eq!(s.kind, WindowKind::Session { gap_ms: 30_000 });
        assert_eq!(s.grace_ms, 5000);
        assert!(parse_window_clause("10s SLIDE 20s").is_err());
        // Any slide: windows start at multiples of it.
        assert_eq!(
            parse_window_clause("10s SLIDE 3s").unwrap().kind,
            WindowKind::Hopping {
                size_ms: 10_000,
                slide_ms: 3_000
            }
        );
        assert!(parse_window_clause("10s EXTRA").is_err());
        assert_eq!(fmt_duration(60_000), "1m");
        assert_eq!(fmt_duration(1500), "1500ms");
    }

    #[test]
    fn windows_per_record_are_bounded() {
        let e = parse_window_clause("1d SLIDE 1ms").unwrap_err();
        assert!(e.contains("86400000 windows"), "{e}");
        assert!(e.contains("(1d / 1ms)"), "{e}");
        assert!(e.contains("limit is 1000 windows per record"), "{e}");
        let e = parse_window_clause("HOPPING (SIZE 1 HOUR, ADVANCE BY 1 SECOND)").unwrap_err();
        assert!(e.contains("3600 windows"), "{e}");
        // The limit itself is allowed.
        assert_eq!(
            parse_window_clause("1000s SLIDE 1s").unwrap().kind,
            WindowKind::Hopping {
                size_ms: 1_000_000,
                slide_ms: 1000
            }
        );
        assert!(parse_window_clause("1001s SLIDE 1s").is_err());
    }

    #[test]
    fn huge_durations_are_refused() {
        let e = parse_duration("9223372036854775807d").unwrap_err();
        assert!(e.contains("too long"), "{e}");
        assert!(parse_window_clause("99999999999999999999s").is_err());
    }
}
