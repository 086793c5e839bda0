//! Informational meta-commands: `\d`, `\ds`, `\dq`, `\dt` and `\d NAME` (a
//! stream, a query or a reference table).

use super::*;

impl Session {
    pub(super) fn list_all(&mut self, origin: &Origin, line: usize) -> Step {
        let streams = self.api(self.client.streams(), origin, line)?;
        let queries = self.api(self.client.queries(), origin, line)?;
        if streams.is_empty() && queries.is_empty() {
            self.notice("Did not find any streams or queries.");
            return Ok(Flow::Continue);
        }
        let mut rows = Vec::new();
        for s in &streams {
            rows.push(vec![
                json!(s.name),
                json!("stream"),
                json!(format!("topic {} ({})", s.topic, s.format)),
                Value::Null,
                Value::Null,
            ]);
        }
        for q in &queries {
            rows.push(vec![
                json!(q.name),
                json!("query"),
                json!(q.stream),
                json!(q.window),
                json!(q.status),
            ]);
        }
        let rows = Rows::new(
            ["name", "type", "source", "window", "status"]
                .map(String::from)
                .to_vec(),
            rows,
        )
        .with_title("List of streams and queries");
        let text = self.render(&rows);
        self.emit(&text)?;
        Ok(Flow::Continue)
    }

    pub(super) fn list_streams(&mut self, origin: &Origin, line: usize) -> Step {
        let streams = self.api(self.client.streams(), origin, line)?;
        if streams.is_empty() {
            self.notice("Did not find any streams.");
            return Ok(Flow::Continue);
        }
        let rows = streams
            .iter()
            .map(|s| {
                vec![
                    json!(s.name),
                    json!(s.topic),
                    json!(s.format),
                    json!(s.event_time),
                    json!(s.queries.join(", ")),
                    json!(s.records_in),
                    json!(s.bad_records),
                ]
            })
            .collect();
        let rows = Rows::new(
            [
                "name",
                "topic",
                "format",
                "event_time",
                "queries",
                "records_in",
                "bad_records",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        )
        .with_title("List of streams");
        let text = self.render(&rows);
        self.emit(&text)?;
        Ok(Flow::Continue)
    }

    /// `\dq`: rates come from the previous sample when it is recent enough,
    /// otherwise from two samples a second apart.
    pub(super) fn list_queries(&mut self, origin: &Origin, line: usize) -> Step {
        let sample = |qs: &[QueryInfo]| -> HashMap<String, Counters> {
            qs.iter()
                .map(|q| (q.name.clone(), q.counters.clone()))
                .collect()
        };
        let mut queries = self.api(self.client.queries(), origin, line)?;
        let mut now = Instant::now();
        let usable = |t: &Instant| {
            let age = now.duration_since(*t);
            age >= Duration::from_millis(500) && age <= Duration::from_secs(600)
        };
        let previous = match self.rate_sample.take() {
            Some((t, s)) if usable(&t) => (t, s),
            _ if queries.is_empty() => (now, HashMap::new()),
            _ => {
                let first = (now, sample(&queries));
                if self.interrupt.sleep(Duration::from_secs(1)) {
                    return Err(self.report(&ApiError::Interrupted, None, line, origin));
                }
                queries = self.api(self.client.queries(), origin, line)?;
                now = Instant::now();
                first
            }
        };
        self.rate_sample = Some((now, sample(&queries)));
        if queries.is_empty() {
            self.notice("Did not find any queries.");
            return Ok(Flow::Continue);
        }
        let secs = now.duration_since(previous.0).as_secs_f64();
        let rate = |name: &str, f: fn(&Counters) -> u64, cur: u64| -> Value {
            match previous.1.get(name) {
                Some(c) if secs > 0.0 => {
                    let r = cur.saturating_sub(f(c)) as f64 / secs;
                    json!((r * 10.0).round() / 10.0)
                }
                _ => Value::Null,
            }
        };
        let rows = queries
            .iter()
            .map(|q| {
                let c = &q.counters;
                vec![
                    json!(q.name),
                    json!(q.stream),
                    json!(q.status),
                    json!(q.window),
                    json!(c.records_in),
                    rate(&q.name, |c| c.records_in, c.records_in),
                    json!(c.late_records),
                    json!(c.bad_records),
                    json!(c.windows_closed),
                    json!(c.rows_emitted),
                    rate(&q.name, |c| c.rows_emitted, c.rows_emitted),
                    json!(q.watermark),
                ]
            })
            .collect();
        let rows = Rows::new(
            [
                "name",
                "stream",
                "status",
                "window",
                "records_in",
                "in/s",
                "late",
                "bad",
                "windows",
                "rows_out",
                "out/s",
                "watermark",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        )
        .with_title(format!("List of queries (rates over the last {secs:.1} s)"));
        let text = self.render(&rows);
        self.emit(&text)?;
        Ok(Flow::Continue)
    }

    pub(super) fn describe(
        &mut self,
        name: &str,
        verbose: bool,
        origin: &Origin,
        line: usize,
    ) -> Step {
        let not_found = |e: &ApiError| matches!(e, ApiError::Server { status: 404, .. });
        let mut settings = self.settings.clone();
        settings.footer = false;
        let width = self.term_width();
        let columns = |cols: &[client::ColumnInfo], title: String| {
            Rows::new(
                vec!["column".into(), "type".into()],
                cols.iter()
                    .map(|c| vec![json!(c.name), json!(c.data_type)])
                    .collect(),
            )
            .with_title(title)
            .render(&settings, width)
        };
        let mut text;
        match self.client.stream(name) {
            Ok(s) => {
                text = columns(&s.columns, format!("Stream \"{}\"", s.name));
                let mut facts = vec![
                    ("Topic", s.topic.clone()),
                    ("Format", s.format.clone()),
                    (
                        "Event time",
                        s.event_time
                            .clone()
                            .unwrap_or_else(|| "(arrival time)".into()),
                    ),
                ];
                if let Some(ms) = s.watermark_delay_ms {
                    facts.push(("Watermark delay", crate::model::duration::fmt_duration(ms)));
                }
                if let Some(st) = &s.start {
                    facts.push(("Start", st.clone()));
                }
                let options: Vec<String> = s
                    .options
                    .iter()
                    .map(|(k, v)| match v {
                        Value::String(s) => format!("{k} = '{}'", s.replace('\'', "''")),
                        v => format!("{k} = {v}"),
                    })
                    .collect();
                facts.push(("Options", options.join(", ")));
                facts.push((
                    "Queries",
                    if s.queries.is_empty() {
                        "(none)".into()
                    } else {
                        s.queries.join(", ")
                    },
                ));
                facts.push(("Records in", s.records_in.to_string()));
                facts.push(("Bad records", s.bad_records.to_string()));
                for (k, v) in facts {
                    text.push_str(&format!("{k}: {v}\n"));
                }
            }
            Err(e) if not_found(&e) => match self.client.query(name) {
                Ok(q) => {
                    text = columns(&q.columns, format!("Query \"{}\"", q.name));
                    let c = &q.counters;
                    let none = || "(none)".to_string();
                    let mut facts = vec![
                        ("Stream", q.stream.clone()),
                        ("Window", q.window.clone()),
                        ("Status", q.status.clone()),
                    ];
                    if let Some(e) = &q.error {
                        facts.push(("Error", e.clone()));
                    }
                    facts.extend([
                        ("Records in", c.records_in.to_string()),
                        ("Late records", c.late_records.to_string()),
                        ("Bad records", c.bad_records.to_string()),
                        ("Windows closed", c.windows_closed.to_string()),
                        ("Rows emitted", c.rows_emitted.to_string()),
                        ("Watermark", q.watermark.clone().unwrap_or_else(none)),
                        (
                            "Last window end",
                            q.last_window_end.clone().unwrap_or_else(none),
                        ),
                    ]);
                    for (k, v) in facts {
                        text.push_str(&format!("{k}: {v}\n"));
                    }
                    text.push_str("Definition:\n");
                    for l in q.sql.trim().lines() {
                        text.push_str(&format!("    {l}\n"));
                    }
                    if verbose && let Some(plan) = &q.plan {
                        text.push_str("Plan:\n");
                        for l in plan.trim_end().lines() {
                            text.push_str(format!("    {l}").trim_end());
                            text.push('\n');
                        }
                    }
                }
                Err(e) if not_found(&e) => {
                    // Neither a stream nor a query: a reference table, if DESCRIBE knows it.
                    let plain = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    let table = plain
                        .then(|| self.client.sql(&format!("DESCRIBE {name}")).ok())
                        .flatten()
                        .and_then(|r| r.into_iter().next());
                    let Some(t) = table else {
                        eprintln!("Did not find any stream, query or table named \"{name}\".");
                        return Err(Fail::Error);
                    };
                    text = Rows::new(vec!["column".into(), "type".into()], t.rows)
                        .with_title(format!("Table \"{name}\""))
                        .render(&settings, width);
                }
                Err(e) => return Err(self.report(&e, None, line, origin)),
            },
            Err(e) => return Err(self.report(&e, None, line, origin)),
        }
        text.push('\n');
        self.emit(&text)?;
        Ok(Flow::Continue)
    }

    /// `\dt`: the server's `SHOW TABLES`.
    pub(super) fn list_tables(&mut self, origin: &Origin, line: usize) -> Step {
        let results = self.api(self.client.sql("SHOW TABLES"), origin, line)?;
        let Some(r) = results.into_iter().next() else {
            return Ok(Flow::Continue);
        };
        if r.rows.is_empty() {
            self.notice("Did not find any tables.");
            return Ok(Flow::Continue);
        }
        let mut rows = Rows::new(r.columns.iter().map(|c| c.name.clone()).collect(), r.rows)
            .with_title("List of tables");
        for (i, c) in r.columns.iter().enumerate() {
            if is_numeric_type(&c.data_type) {
                rows.numeric[i] = true;
            }
        }
        let text = self.render(&rows);
        self.emit(&text)?;
        Ok(Flow::Continue)
    }
}
