//! `\watch`: re-running the query buffer every few seconds, as psql does,
//! or following a continuous query's newly closed windows.

use super::*;

impl Session {
    /// `\watch [SEC] [c=N]` re-runs the query buffer (or the last statement)
    /// every SEC seconds, as psql does; `\watch [SEC] NAME` follows the
    /// continuous query NAME's newly closed windows. Both stop on Ctrl-C or
    /// after N rounds.
    pub(super) fn watch(&mut self, args: &[String], origin: &Origin, line: usize) -> Step {
        let usage = || {
            eprintln!("usage: \\watch [SECONDS] [QUERY]   (also i=SECONDS, c=COUNT)");
            Err(Fail::Error)
        };
        let mut interval = 2.0f64;
        let mut count: Option<u64> = None;
        let mut name: Option<String> = None;
        for a in args {
            let (key, val) = match a.split_once('=') {
                Some((k, v)) => (Some(k), v),
                None => (None, a.as_str()),
            };
            match key {
                Some("i" | "interval") | None if val.parse::<f64>().is_ok() => {
                    interval = val.parse().unwrap_or(2.0);
                }
                Some("c" | "count") => match val.parse::<u64>() {
                    Ok(n) if n > 0 => count = Some(n),
                    _ => return usage(),
                },
                None if name.is_none() => name = Some(val.to_string()),
                _ => return usage(),
            }
        }
        if !interval.is_finite() || interval <= 0.0 {
            return usage();
        }
        if let Some(name) = name {
            return self.watch_query(&name, interval, count, origin, line);
        }
        if has_code(&self.buffer) {
            let text = std::mem::take(&mut self.buffer);
            let at = self.buffer_line;
            return self.watch_statement(&text, interval, count, origin, at);
        }
        // Re-running a statement that created a continuous query would
        // create another each time: follow the query it created instead.
        if let Some(name) = self.last_query.clone() {
            return self.watch_query(&name, interval, count, origin, line);
        }
        match self.last_statement.clone() {
            Some(text) => self.watch_statement(&text, interval, count, origin, line),
            None => {
                eprintln!("\\watch cannot be used with an empty query");
                Err(Fail::Error)
            }
        }
    }

    /// psql's `\watch`: runs `text` every `interval` seconds under a header
    /// with the time, until Ctrl-C, an error or `count` runs.
    fn watch_statement(
        &mut self,
        text: &str,
        interval: f64,
        count: Option<u64>,
        origin: &Origin,
        line: usize,
    ) -> Step {
        self.interrupt.clear();
        let mut rounds = 0;
        let result = loop {
            let header = format!(
                "{} (every {interval}s)\n\n",
                chrono::Local::now().format("%a %d %b %Y %H:%M:%S")
            );
            if self.out.write_unpaged(&header).is_err() {
                break Err(Fail::Error);
            }
            // Results must not wait in a pager while the next run is due.
            self.watching = true;
            let run = self.execute(text, line, origin);
            self.watching = false;
            if let Err(f) = run {
                break Err(f);
            }
            rounds += 1;
            if let Some(name) = self.last_query.clone() {
                self.notice(&format!("Following {name}'s newly closed windows."));
                let left = count.map(|c| c.saturating_sub(rounds).max(1));
                break self.watch_query(&name, interval, left, origin, line);
            }
            if count.is_some_and(|c| rounds >= c) || self.interrupt.sleep(secs(interval)) {
                break Ok(Flow::Continue);
            }
        };
        self.end_watch();
        result
    }

    /// Follows the continuous query `name`: polls its results with the
    /// cursor and shows each batch of newly closed windows.
    fn watch_query(
        &mut self,
        name: &str,
        interval: f64,
        count: Option<u64>,
        origin: &Origin,
        line: usize,
    ) -> Step {
        let q = self.api(self.client.query(name), origin, line)?;
        let numeric: HashMap<String, bool> = q
            .columns
            .iter()
            .map(|c| (c.name.clone(), is_numeric_type(&c.data_type)))
            .collect();
        self.interrupt.clear();
        let every = format!("every {interval}s");
        let mut cursor = String::new();
        // Catch up to the newest closed window, without showing the history.
        let mut newest = Vec::new();
        let mut columns;
        loop {
            let page = self.api(
                self.client.results(&q.name, Some(&cursor), WATCH_PAGE),
                origin,
                line,
            )?;
            let full = page.rows.len() >= WATCH_PAGE;
            if !page.cursor.is_empty() {
                cursor = page.cursor;
            }
            columns = page.columns;
            newest = newest_windows(newest, page.rows);
            if !full {
                break;
            }
        }
        if newest.is_empty() {
            self.notice(&format!(
                "Waiting for {}'s next window to close ({every}; Ctrl-C stops).",
                q.name
            ));
        } else {
            self.show_windows(&q.name, &every, &columns, &numeric, newest)?;
        }
        let mut rounds = 1;
        loop {
            if count.is_some_and(|c| rounds >= c) {
                break;
            }
            if self.interrupt.sleep(secs(interval)) {
                break;
            }
            let mut fresh = Vec::new();
            loop {
                let page = match self.client.results(&q.name, Some(&cursor), WATCH_PAGE) {
                    Ok(p) => p,
                    // Ctrl-C during a poll ends the watch like Ctrl-C between polls.
                    Err(ApiError::Interrupted) => break,
                    Err(e) => return Err(self.report(&e, None, line, origin)),
                };
                let full = page.rows.len() >= WATCH_PAGE;
                if !page.cursor.is_empty() {
                    cursor = page.cursor;
                }
                columns = page.columns;
                fresh.extend(page.rows);
                if !full {
                    break;
                }
            }
            if self.interrupt.is_set() {
                break;
            }
            if !fresh.is_empty() {
                self.show_windows(&q.name, &every, &columns, &numeric, fresh)?;
            }
            rounds += 1;
        }
        self.end_watch();
        Ok(Flow::Continue)
    }

    fn end_watch(&mut self) {
        if self.interrupt.is_set() && self.interactive {
            // The terminal echoed ^C; start the prompt on a line of its own.
            self.notice("");
        }
        self.interrupt.clear();
    }

    pub(super) fn show_windows(
        &mut self,
        name: &str,
        every: &str,
        columns: &[String],
        numeric: &HashMap<String, bool>,
        rows: Vec<serde_json::Map<String, Value>>,
    ) -> Result<(), Fail> {
        let last_end = rows
            .iter()
            .filter_map(|r| r.get("window_end").and_then(Value::as_str))
            .max()
            .map(|e| format!(", newest window ends {e}"))
            .unwrap_or_default();
        let values = rows
            .into_iter()
            .map(|mut r| {
                columns
                    .iter()
                    .map(|c| r.remove(c).unwrap_or(Value::Null))
                    .collect()
            })
            .collect();
        let mut rows = Rows::new(columns.to_vec(), values);
        for (i, c) in columns.iter().enumerate() {
            if numeric.get(c).copied().unwrap_or(false) {
                rows.numeric[i] = true;
            }
        }
        let header = format!(
            "{} ({every}) {name}{last_end}\n\n",
            chrono::Local::now().format("%a %d %b %Y %H:%M:%S")
        );
        let text = format!("{header}{}", self.render(&rows));
        self.out.write_unpaged(&text).map_err(|e| {
            eprintln!("runnel sql: error: cannot write output: {e}");
            Fail::Error
        })
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Keeps the rows of the newest window seen in `kept` plus `more` (by
/// `window_end`; results are written in window order, so later pages win ties).
fn newest_windows(
    mut kept: Vec<serde_json::Map<String, Value>>,
    more: Vec<serde_json::Map<String, Value>>,
) -> Vec<serde_json::Map<String, Value>> {
    let end = |r: &serde_json::Map<String, Value>| {
        r.get("window_end")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    for r in more {
        match (kept.first().and_then(end), end(&r)) {
            (Some(k), Some(e)) if e > k => {
                kept.clear();
                kept.push(r);
            }
            (Some(k), Some(e)) if e < k => {}
            _ => kept.push(r),
        }
    }
    // Without window columns there is no "newest window": keep the latest rows.
    if kept.first().and_then(end).is_none() && kept.len() > 1000 {
        kept.drain(..kept.len() - 1000);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn newest_window_kept() {
        let row = |end: &str, k: i64| {
            json!({"window_end": end, "k": k})
                .as_object()
                .unwrap()
                .clone()
        };
        let kept = newest_windows(vec![], vec![row("a", 1), row("b", 2), row("b", 3)]);
        assert_eq!(kept.len(), 2);
        let kept = newest_windows(kept, vec![row("a", 4), row("c", 5)]);
        assert_eq!(kept, vec![row("c", 5)]);
    }
}
