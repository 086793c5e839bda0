//! The window clause of a continuous query (`WINDOW 1m SLIDE 10s GRACE 5s
//! ALLOW LATE 1h`).
//!
//! ```
//! use runnel::model::WindowKind;
//! use runnel::sql::window::parse_window_clause;
//! let w = parse_window_clause("60s SLIDE 10s GRACE 5s").unwrap();
//! assert_eq!(w.kind, WindowKind::Hopping { size_ms: 60_000, slide_ms: 10_000 });
//! assert_eq!(w.grace_ms, 5_000);
//! ```

use crate::model::duration::{duration, fmt_duration, words};
use crate::model::{WindowKind, WindowSpec};

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
    let mut allow_late_ms = 0;
    if is_kw(&w, pos, "allow") && is_kw(&w, pos + 1, "late") {
        pos += 2;
        allow_late_ms = duration(&w, &mut pos)?;
        if matches!(kind, WindowKind::Session { .. }) {
            return Err("ALLOW LATE applies to tumbling and hopping windows, not sessions".into());
        }
    }
    if let Some(extra) = w.get(pos) {
        return Err(format!("unexpected '{extra}' in window clause"));
    }
    Ok(WindowSpec {
        kind,
        grace_ms,
        allow_late_ms,
    })
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
        let w = parse_window_clause("10s GRACE 2s ALLOW LATE 1h").unwrap();
        assert_eq!((w.grace_ms, w.allow_late_ms), (2_000, 3_600_000));
        assert_eq!(w.describe(), "TUMBLING 10s GRACE 2s ALLOW LATE 1h");
        assert_eq!(
            parse_window_clause("1m SLIDE 10s ALLOW LATE 5m")
                .unwrap()
                .allow_late_ms,
            300_000
        );
        assert!(
            parse_window_clause("SESSION 30s ALLOW LATE 1h")
                .unwrap_err()
                .contains("not sessions")
        );
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
        assert!(parse_window_clause("99999999999999999999s").is_err());
    }
}
