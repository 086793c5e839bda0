//! Durations as users write them (`500ms`, `10s`, `1m`, `10 seconds`,
//! `INTERVAL '10' SECOND`) and as Runnel prints them.
//!
//! ```
//! use runnel::model::duration::{fmt_duration, parse_duration};
//! assert_eq!(parse_duration("INTERVAL '90' SECOND").unwrap(), 90_000);
//! assert_eq!(fmt_duration(90_000), "90s");
//! ```

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

/// The words of a duration or clause: parentheses, commas and quotes dropped.
pub fn words(text: &str) -> Vec<String> {
    text.replace(['(', ')', ','], " ")
        .split_whitespace()
        .map(|w| w.trim_matches('\'').to_string())
        .collect()
}

/// A positive duration starting at `words[*pos]`; `pos` moves past it.
pub fn duration(words: &[String], pos: &mut usize) -> Result<i64, String> {
    match length(words, pos)? {
        0 => Err("a window duration must be positive".into()),
        ms => Ok(ms),
    }
}

/// A duration of zero or more ms starting at `words[*pos]`; `pos` moves past it.
pub fn length(words: &[String], pos: &mut usize) -> Result<i64, String> {
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
    match n.checked_mul(ms) {
        Some(ms) if ms <= MAX_MS => Ok(ms),
        _ => Err(format!(
            "the duration {n}{unit} is too long: at most {}",
            fmt_duration(MAX_MS)
        )),
    }
}

/// The longest duration: about a century, so a window's end, a grace or a
/// lateness added to any event time stays a timestamp (`WINDOW
/// 9223372036854775807ms` made windows without an end).
pub const MAX_MS: i64 = 36_500 * 86_400_000;

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
        assert_eq!(parse_duration_or_zero("0s").unwrap(), 0);
        assert_eq!(parse_duration_or_zero("0 hours").unwrap(), 0);
        assert_eq!(parse_duration_or_zero("24h").unwrap(), 86_400_000);
        assert!(parse_duration_or_zero("-1s").is_err());
        assert!(parse_duration_or_zero("0").is_err());
        assert_eq!(parse_duration("36500d").unwrap(), MAX_MS);
        for long in ["36501d", "9223372036854775807ms", "300000000d"] {
            let e = parse_duration(long).unwrap_err();
            assert!(e.contains("at most 36500d"), "{long}: {e}");
        }
        assert_eq!(fmt_duration(60_000), "1m");
        assert_eq!(fmt_duration(1500), "1500ms");
    }

    #[test]
    fn huge_durations_are_refused() {
        let e = parse_duration("9223372036854775807d").unwrap_err();
        assert!(e.contains("too long"), "{e}");
    }
}
