//! Meta-commands: the `\` commands a session understands besides `\watch`
//! and the informational ones, and their help text.

use super::*;

const HELP: &str = r#"General
  \q                     quit
  \?                     show this help
  \h                     summary of the SQL dialect
  \conninfo              show the server this session talks to
  \c [URL]               connect to another server (or reconnect)

Query buffer
  \g                     send the query buffer (or repeat the last statement)
  \e                     edit the query buffer (or the last statement) in $EDITOR,
                         then run what ends with ";"
  \p                     show the query buffer
  \r                     reset (clear) the query buffer
  \watch [SEC]           run the query buffer (or the last statement) every SEC
                         seconds (default 2; also c=COUNT); Ctrl-C stops

Informational
  \d                     list streams and queries
  \d NAME                describe a stream, query or table: columns, options, status, counters
  \d+ NAME               the same, with a query's plan
  \ds                    list streams
  \dq                    list queries with status, counters and rates
  \dt                    list tables: reference tables and queries' results tables
  \watch [SEC] QUERY     show QUERY's newly closed windows every SEC seconds
                         (default 2; also i=SEC, c=COUNT); Ctrl-C stops

Input/Output
  \i FILE                execute statements from FILE
  \o [FILE]              send results to FILE, or back to standard output
  \echo [TEXT]           write TEXT to standard output

Formatting
  \x [on|off|auto]       expanded display
  \pset [NAME [VALUE]]   format aligned|csv|json, pager on|off, null STRING, footer on|off
  \timing [on|off]       show how long each statement takes

Statements end with ";" and may span lines. Ctrl-C cancels the current input
or a running \watch; Ctrl-D quits. Tab completes keywords and names.
"#;

const SQL_HELP: &str = r#"CREATE STREAM name (col TYPE, ...) WITH (kafka_topic = 't', format = 'json',
    event_time = 'col', watermark_delay = '5s', start = 'earliest'|'latest', brokers = '...')
CREATE QUERY name AS SELECT ... FROM stream [WHERE ...] GROUP BY ...
    WINDOW 10s | WINDOW 60s SLIDE 10s | WINDOW SESSION 30s [GRACE 5s] | EMIT EVERY 10s
SELECT ... FROM stream ... WINDOW ...     a continuous query with a generated name
SELECT ... FROM query_name ...            a one-shot pull query over a query's results
SHOW STREAMS | SHOW QUERIES | SHOW TABLES | DESCRIBE name | EXPLAIN SELECT ...
DROP QUERY [IF EXISTS] name | DROP STREAM [IF EXISTS] name
"#;

impl Session {
    // ----- meta-commands ---------------------------------------------------

    pub(super) fn meta(&mut self, text: &str, line: usize, origin: &Origin) -> Step {
        let words = meta_words(text);
        let Some(cmd) = words.first().cloned() else {
            return Ok(Flow::Continue);
        };
        let args: Vec<String> = words[1..].to_vec();
        let arg = args.first().map(String::as_str);
        let fail = |msg: String| {
            eprintln!("{msg}");
            Err(Fail::Error)
        };
        match cmd.as_str() {
            "\\q" | "\\quit" => Ok(Flow::Quit),
            "\\?" => {
                self.emit(HELP)?;
                Ok(Flow::Continue)
            }
            "\\h" | "\\help" => {
                self.emit(SQL_HELP)?;
                Ok(Flow::Continue)
            }
            "\\conninfo" => self.conninfo(origin, line),
            "\\c" | "\\connect" => self.connect(arg, origin, line),
            "\\d" | "\\d+" => match arg {
                None => self.list_all(origin, line),
                Some(name) => self.describe(name, cmd == "\\d+", origin, line),
            },
            "\\ds" => self.list_streams(origin, line),
            "\\dq" => self.list_queries(origin, line),
            "\\dt" => self.list_tables(origin, line),
            "\\e" | "\\edit" => self.edit(origin),
            "\\watch" => self.watch(&args, origin, line),
            "\\i" | "\\include" => {
                let Some(path) = arg else {
                    return fail("\\i: missing required argument".into());
                };
                let text = match std::fs::read_to_string(path) {
                    Ok(t) => t,
                    Err(e) => return fail(format!("{path}: {e}")),
                };
                self.run_script(&mut text_lines(&text), Origin::File(path.to_string()))
            }
            "\\o" | "\\out" => {
                if let Err(e) = self.out.redirect(arg.map(std::path::Path::new)) {
                    return fail(format!("{}: {e}", arg.unwrap_or_default()));
                }
                Ok(Flow::Continue)
            }
            "\\echo" => {
                self.notice(&args.join(" "));
                Ok(Flow::Continue)
            }
            "\\g" => {
                let text = if has_code(&self.buffer) {
                    std::mem::take(&mut self.buffer)
                } else if let Some(last) = self.last_statement.clone() {
                    last
                } else {
                    return fail("\\g: there is no statement to send".into());
                };
                let at = self.buffer_line;
                self.buffer.clear();
                self.execute(&text, at, origin)
            }
            "\\p" | "\\print" => {
                if has_code(&self.buffer) {
                    let b = self.buffer.clone();
                    self.notice(b.trim());
                } else {
                    self.notice("Query buffer is empty.");
                }
                Ok(Flow::Continue)
            }
            "\\r" | "\\reset" => {
                self.buffer.clear();
                if !self.quiet {
                    self.notice("Query buffer reset (cleared).");
                }
                Ok(Flow::Continue)
            }
            "\\x" => {
                self.settings.expanded = match arg.map(|a| a.to_ascii_lowercase()).as_deref() {
                    Some("auto") => Expanded::Auto,
                    a => match parse_bool(a, self.settings.expanded == Expanded::On) {
                        Ok(true) => Expanded::On,
                        Ok(false) => Expanded::Off,
                        Err(e) => return fail(format!("\\x: {e}")),
                    },
                };
                if !self.quiet {
                    self.notice(match self.settings.expanded {
                        Expanded::On => "Expanded display is on.",
                        Expanded::Off => "Expanded display is off.",
                        Expanded::Auto => "Expanded display is used automatically.",
                    });
                }
                Ok(Flow::Continue)
            }
            "\\timing" => {
                match parse_bool(arg, self.timing) {
                    Ok(b) => self.timing = b,
                    Err(e) => return fail(format!("\\timing: {e}")),
                }
                if !self.quiet {
                    self.notice(&format!("Timing is {}.", on_off(self.timing)));
                }
                Ok(Flow::Continue)
            }
            "\\pset" => self.pset(&args),
            _ => fail(format!("invalid command {cmd}\nTry \\? for help.")),
        }
    }

    pub(super) fn pset(&mut self, args: &[String]) -> Step {
        let fail = |msg: String| {
            eprintln!("\\pset: {msg}");
            Err(Fail::Error)
        };
        let value = args.get(1).map(String::as_str);
        let msg = match args.first().map(String::as_str) {
            None => {
                let text = format!(
                    "expanded   {}\nfooter     {}\nformat     {}\nnull       '{}'\npager      {}",
                    match self.settings.expanded {
                        Expanded::On => "on",
                        Expanded::Off => "off",
                        Expanded::Auto => "auto",
                    },
                    on_off(self.settings.footer),
                    self.settings.format.name(),
                    self.settings.null,
                    on_off(self.out.pager)
                );
                self.notice(&text);
                return Ok(Flow::Continue);
            }
            Some("format") => {
                match value {
                    None => {}
                    Some(v) => match Format::parse(v) {
                        Some(f) => self.settings.format = f,
                        None => return fail("allowed formats are aligned, csv, json".into()),
                    },
                }
                format!("Output format is {}.", self.settings.format.name())
            }
            Some("pager") => {
                match parse_bool(value, self.out.pager) {
                    Ok(b) => self.out.pager = b,
                    Err(e) => return fail(e),
                }
                format!("Pager usage is {}.", on_off(self.out.pager))
            }
            Some("null") => {
                if let Some(v) = value {
                    self.settings.null = v.to_string();
                }
                format!("Null display is \"{}\".", self.settings.null)
            }
            Some("footer") => {
                match parse_bool(value, self.settings.footer) {
                    Ok(b) => self.settings.footer = b,
                    Err(e) => return fail(e),
                }
                format!("Default footer is {}.", on_off(self.settings.footer))
            }
            Some("expanded") | Some("x") => {
                return self.meta(
                    &format!("\\x {}", value.unwrap_or_default()),
                    0,
                    &Origin::Command,
                );
            }
            Some(other) => return fail(format!("unknown option: {other}")),
        };
        if !self.quiet {
            self.notice(&msg);
        }
        Ok(Flow::Continue)
    }

    /// `\c URL`: switches servers only once the new one answers, like psql
    /// keeping the old connection when the new one fails.
    pub(super) fn connect(&mut self, url: Option<&str>, origin: &Origin, line: usize) -> Step {
        let url = url.map(str::to_string).unwrap_or_else(|| self.client.url());
        let token = std::env::var("RUNNEL_TOKEN").ok();
        let client = match Client::new(&url, token, self.interrupt.clone()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return Err(Fail::Error);
            }
        };
        if let Err(e) = client.health() {
            let fail = self.report(&e, None, line, origin);
            if self.interactive {
                self.notice("Previous connection kept");
            }
            return Err(fail);
        }
        self.client = client;
        self.rate_sample = None;
        self.last_query = None;
        if self.interactive {
            self.refresh_names();
        }
        if !self.quiet {
            self.notice(&format!(
                "You are now connected to the Runnel server at \"{}\".",
                self.client.url()
            ));
        }
        Ok(Flow::Continue)
    }

    pub(super) fn conninfo(&mut self, origin: &Origin, line: usize) -> Step {
        let health = self.api(self.client.health(), origin, line)?;
        let status = health["status"].as_str().unwrap_or("unknown").to_string();
        let streams = self.api(self.client.streams(), origin, line)?.len();
        let queries = self.api(self.client.queries(), origin, line)?.len();
        self.notice(&format!(
            "You are connected to the Runnel server at \"{}\" (health: {status}; {}, {}){}.",
            self.client.url(),
            plural(streams, "stream", "streams"),
            plural(queries, "query", "queries"),
            if self.client.has_token() {
                ", sending a bearer token from RUNNEL_TOKEN"
            } else {
                ""
            }
        ));
        Ok(Flow::Continue)
    }

    /// psql's `\e`: the query buffer (or the last statement) goes through
    /// `$RUNNEL_EDITOR`, `$EDITOR` or `$VISUAL` (else `vi`); what comes back
    /// is input as if typed, so complete statements run and the rest stays
    /// in the buffer.
    pub(super) fn edit(&mut self, origin: &Origin) -> Step {
        let text = if has_code(&self.buffer) {
            std::mem::take(&mut self.buffer)
        } else {
            self.buffer.clear();
            self.last_statement
                .clone()
                .map(|s| format!("{s};"))
                .unwrap_or_default()
        };
        let path = std::env::temp_dir().join(format!("runnel-edit-{}.sql", std::process::id()));
        let edited = edit_file(&path, &text);
        let _ = std::fs::remove_file(&path);
        // Ctrl-C inside the editor is the editor's, not a cancel of what follows.
        self.interrupt.clear();
        let edited = match edited {
            Ok(t) => t,
            Err(e) => {
                eprintln!("\\e: {e}");
                return Err(Fail::Error);
            }
        };
        for l in edited.lines() {
            if self.feed_line(l, 0, origin)? == Flow::Quit {
                return Ok(Flow::Quit);
            }
        }
        Ok(Flow::Continue)
    }
}

/// Writes `text` to `path`, runs the user's editor on it and reads it back.
fn edit_file(path: &std::path::Path, text: &str) -> Result<String, String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    let editor = ["RUNNEL_EDITOR", "EDITOR", "VISUAL"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "vi".into());
    // Through the shell, so EDITOR may carry arguments ("code --wait").
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(path)
        .status()
        .map_err(|e| format!("cannot run {editor}: {e}"))?;
    if !status.success() {
        return Err(format!("{editor} exited with {status}"));
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}
