//! `runnel sql`: an interactive SQL client for a running Runnel server, in
//! the manner of psql. It speaks only the public HTTP API, so it works
//! against any server it can reach.
//!
//! ```text
//! $ runnel sql --server http://127.0.0.1:8080
//! runnel sql 0.1.0, connected to http://127.0.0.1:8080 (1 stream, 2 queries)
//! Type "\?" for help, "\q" to quit.
//! runnel=> SELECT publisher, sum(imps) AS imps
//! runnel->   FROM adnetwork GROUP BY publisher
//! runnel->   ORDER BY imps DESC LIMIT 3;
//!    publisher  | imps
//! --------------+------
//!  publisher_35 |   52
//!  publisher_67 |   51
//!  publisher_93 |   51
//! (3 rows)
//!
//! runnel=> SELECT geo, count(*)
//! runnel-> FORM impressions;
//! ERROR:  Expected: end of statement, found: impressions
//! LINE 2: FORM impressions
//!              ^
//! runnel=> \watch 5 adnetwork
//! ```
//!
//! Statements end with `;` and may span lines; lines starting with a
//! backslash are meta-commands (`\?` lists them). Non-interactive use:
//! `runnel sql -c "SHOW QUERIES"`, `runnel sql -f setup.sql`, or statements
//! piped on standard input; the first error stops the run with a non-zero
//! exit status (psql's `ON_ERROR_STOP`). From Rust:
//!
//! ```no_run
//! use clap::Parser;
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     sql: runnel::repl::Options,
//! }
//! // Blocking: call it from a thread that is not driving an async runtime.
//! std::process::exit(runnel::repl::run(Cli::parse().sql));
//! ```

pub mod client;
pub mod complete;
pub mod output;
pub mod render;
pub mod split;

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustyline::error::ReadlineError;
use rustyline::history::{FileHistory, History};
use rustyline::{CompletionType, Config, Editor};
use serde_json::{Value, json};

use client::{ApiError, Client, Counters, Interrupt, QueryInfo, StatementResult};
use complete::{Names, ReplHelper};
use output::{Output, terminal_size};
use render::{Expanded, Format, Rows, Settings, is_numeric_type};
use split::{Open, has_code, meta_words, scan};

/// The server address used when neither `--server` nor `RUNNEL_SERVER` is set.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Exit status: a statement or meta-command in `-c` failed, or a file could not be read.
pub const EXIT_ERROR: i32 = 1;
/// Exit status: the server could not be reached.
pub const EXIT_UNREACHABLE: i32 = 2;
/// Exit status: a statement in a `-f` file or on standard input failed.
pub const EXIT_SCRIPT_ERROR: i32 = 3;

/// Rows fetched per request while `\watch` catches up.
const WATCH_PAGE: usize = 10_000;
/// Deepest `\i` nesting, so a file including itself stops.
const MAX_INCLUDE_DEPTH: usize = 16;

/// Command-line options of `runnel sql`.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Server base URL. RUNNEL_TOKEN, when set, is sent as a bearer token.
    #[arg(long, short = 's', env = "RUNNEL_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Run this command (statements or one meta-command) and exit; repeatable.
    #[arg(short = 'c', long = "command", value_name = "COMMAND")]
    pub commands: Vec<String>,
    /// Run the statements in FILE (`-` for standard input) and exit; repeatable,
    /// and run after any `-c`.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print rows as CSV.
    #[arg(long)]
    pub csv: bool,
    /// Print rows as JSON.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Expanded display (one block per row).
    #[arg(short = 'x', long)]
    pub expanded: bool,
    /// Print only results: no banner, statement messages or notices.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Never use a pager.
    #[arg(long)]
    pub no_pager: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            server: DEFAULT_SERVER.to_string(),
            commands: Vec::new(),
            files: Vec::new(),
            csv: false,
            json: false,
            expanded: false,
            quiet: false,
            no_pager: false,
        }
    }
}

/// What to do after a line of input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Quit,
}

/// A failure whose message has already been printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    /// A statement or meta-command failed.
    Error,
    /// The server could not be reached.
    Unreachable,
}

type Step = Result<Flow, Fail>;

/// Where input comes from; decides error prefixes (psql's `psql:file:line:`).
#[derive(Debug, Clone)]
enum Origin {
    Interactive,
    Command,
    File(String),
}

/// The state of one `runnel sql` session.
struct Session {
    client: Client,
    interrupt: Interrupt,
    settings: Settings,
    timing: bool,
    quiet: bool,
    interactive: bool,
    out: Output,
    names: Arc<Mutex<Names>>,
    /// The statement being typed, not yet ended by `;`.
    buffer: String,
    /// Input line where `buffer` starts.
    buffer_line: usize,
    /// The last statement sent, for `\g` on an empty buffer.
    last_statement: Option<String>,
    /// The last query created, the default for `\watch`.
    last_query: Option<String>,
    /// Counters from the previous `\dq`, for rates.
    rate_sample: Option<(Instant, HashMap<String, Counters>)>,
    depth: usize,
}

/// Runs `runnel sql` and returns its exit status.
///
/// This blocks (it uses reqwest's blocking client), so it must not run on a
/// thread driving an async runtime: from async code, wrap it in
/// `tokio::task::spawn_blocking`.
pub fn run(opts: Options) -> i32 {
    let interrupt = Interrupt::default();
    let token = std::env::var("RUNNEL_TOKEN").ok();
    let client = match Client::new(&opts.server, token, interrupt.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("runnel sql: error: {e}");
            return EXIT_ERROR;
        }
    };
    // Ctrl-C must stop a \watch, a slow request or the pager, not the program.
    interrupt.install();
    let scripted = !opts.commands.is_empty() || !opts.files.is_empty();
    let interactive = !scripted && std::io::stdin().is_terminal();
    let mut session = Session {
        client,
        interrupt,
        settings: Settings {
            format: if opts.csv {
                Format::Csv
            } else if opts.json {
                Format::Json
            } else {
                Format::Aligned
            },
            expanded: if opts.expanded {
                Expanded::On
            } else {
                Expanded::Off
            },
            ..Settings::default()
        },
        timing: false,
        quiet: opts.quiet,
        interactive,
        out: Output::new(!opts.no_pager),
        names: Arc::new(Mutex::new(Names::default())),
        buffer: String::new(),
        buffer_line: 1,
        last_statement: None,
        last_query: None,
        rate_sample: None,
        depth: 0,
    };
    // Like psql, fail fast with a plain message when the server is not there.
    if let Err(e) = session.client.health() {
        eprintln!("runnel sql: error: {e}");
        if matches!(e, ApiError::Unreachable { .. }) {
            eprintln!(
                "Is `runnel serve` running there? Point --server or RUNNEL_SERVER at the server."
            );
        }
        return EXIT_UNREACHABLE;
    }
    if interactive {
        return session.interactive_loop();
    }
    let exit = |fail: Fail, script: bool| match fail {
        Fail::Unreachable => EXIT_UNREACHABLE,
        Fail::Error if script => EXIT_SCRIPT_ERROR,
        Fail::Error => EXIT_ERROR,
    };
    for c in &opts.commands {
        match session.run_script(&mut text_lines(c), Origin::Command) {
            Ok(Flow::Continue) => {}
            Ok(Flow::Quit) => return 0,
            Err(f) => return exit(f, false),
        }
    }
    let mut files = opts.files.clone();
    if !scripted {
        files.push(PathBuf::from("-"));
    }
    for f in &files {
        let result = if f.as_os_str() == "-" {
            // Line by line, so statements run as they arrive (`tail -f x.sql | runnel sql`).
            let stdin = std::io::stdin();
            let mut lines = stdin.lock().lines();
            session.run_script(&mut lines, Origin::File("<stdin>".into()))
        } else {
            match std::fs::read_to_string(f) {
                Ok(text) => session.run_script(
                    &mut text_lines(&text),
                    Origin::File(f.display().to_string()),
                ),
                Err(e) => {
                    eprintln!("runnel sql: error: {}: {e}", f.display());
                    return EXIT_ERROR;
                }
            }
        };
        match result {
            Ok(Flow::Continue) => {}
            Ok(Flow::Quit) => return 0,
            Err(f) => return exit(f, true),
        }
    }
    0
}

/// One line of script input.
type InputLine = std::io::Result<String>;

fn text_lines(text: &str) -> impl Iterator<Item = InputLine> + '_ {
    text.lines().map(|l| Ok(l.to_string()))
}

/// The history file: `$RUNNEL_HISTORY`, else `$HOME/.runnel_history`.
pub fn history_path() -> Option<PathBuf> {
    match std::env::var_os("RUNNEL_HISTORY") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".runnel_history")),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// Parses a boolean meta-command argument; `None` toggles.
fn parse_bool(arg: Option<&str>, current: bool) -> Result<bool, String> {
    match arg.map(|a| a.to_ascii_lowercase()) {
        None => Ok(!current),
        Some(a) => match a.as_str() {
            "on" | "true" | "yes" | "1" => Ok(true),
            "off" | "false" | "no" | "0" => Ok(false),
            _ => Err(format!("unrecognized value \"{a}\": Boolean expected")),
        },
    }
}

/// psql's `LINE n: ...` with a caret under the reported column; long lines
/// are cut around the column.
pub fn error_context(statement: &str, line: u64, column: u64) -> Option<String> {
    let text = statement.lines().nth(line.checked_sub(1)? as usize)?;
    // A tab would shift the caret, so show each as one space.
    let chars: Vec<char> = text
        .chars()
        .map(|c| if c == '\t' { ' ' } else { c })
        .collect();
    let col = (column.max(1) as usize - 1).min(chars.len());
    let (from, to) = if chars.len() > 76 {
        let from = col.saturating_sub(36);
        (from, (from + 72).min(chars.len()))
    } else {
        (0, chars.len())
    };
    let mut shown: String = chars[from..to].iter().collect();
    let mut caret_at = col - from;
    if from > 0 {
        shown.insert_str(0, "...");
        caret_at += 3;
    }
    if to < chars.len() {
        shown.push_str("...");
    }
    let label = format!("LINE {line}: ");
    Some(format!(
        "{label}{}\n{}^",
        shown.trim_end(),
        " ".repeat(label.len() + caret_at)
    ))
}

const HELP: &str = r#"General
  \q                     quit
  \?                     show this help
  \h                     summary of the SQL dialect
  \conninfo              show the server this session talks to
  \c [URL]               connect to another server (or reconnect)

Query buffer
  \g                     send the query buffer (or repeat the last statement)
  \p                     show the query buffer
  \r                     reset (clear) the query buffer

Informational
  \d                     list streams and queries
  \d NAME                describe a stream or query: columns, options, status, counters
  \d+ NAME               the same, with a query's plan
  \ds                    list streams
  \dq                    list queries with status, counters and rates
  \watch [SEC] [QUERY]   show QUERY's newly closed windows every SEC seconds
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
SHOW STREAMS | SHOW QUERIES | DESCRIBE name | EXPLAIN SELECT ...
DROP QUERY [IF EXISTS] name | DROP STREAM [IF EXISTS] name
"#;

impl Session {
    // ----- input -----------------------------------------------------------

    /// The prompt: `runnel=>` for a new statement, otherwise a marker of
    /// what is open (`-` statement, `'` or `"` quote, `*` comment, `(` paren).
    fn prompt(&self) -> String {
        let s = scan(&self.buffer);
        let mark = match s.open {
            Open::Quote(q) => q,
            Open::Comment => '*',
            Open::Paren => '(',
            Open::None if s.rest_has_code || !self.buffer.trim().is_empty() => '-',
            Open::None => '=',
        };
        format!("runnel{mark}> ")
    }

    fn interactive_loop(&mut self) -> i32 {
        let config = Config::builder()
            .auto_add_history(false)
            .history_ignore_space(true)
            .max_history_size(5000)
            .unwrap_or_else(|_| Config::builder())
            .completion_type(CompletionType::List)
            .build();
        let mut lines = FileHistory::with_config(&config);
        let history = history_path();
        if let Some(h) = &history {
            // A missing file just means a first session.
            let _ = lines.load(h);
        }
        let counts = self.refresh_names();
        if !self.quiet {
            let objects = counts
                .map(|(s, q)| {
                    format!(
                        " ({}, {})",
                        plural(s, "stream", "streams"),
                        plural(q, "query", "queries")
                    )
                })
                .unwrap_or_default();
            self.notice(&format!(
                "runnel sql {}, connected to {}{objects}\nType \"\\?\" for help, \"\\q\" to quit.",
                env!("CARGO_PKG_VERSION"),
                self.client.url()
            ));
        }
        let mut entry: Vec<String> = Vec::new();
        let mut code = 0;
        loop {
            self.interrupt.clear();
            // The editor lives only while a line is read: it installs its own
            // SIGINT handler, and dropping it restores ours, which a running
            // \watch, a slow request or the pager relies on.
            let mut rl: Editor<ReplHelper, FileHistory> =
                match Editor::with_history(config.clone(), std::mem::take(&mut lines)) {
                    Ok(rl) => rl,
                    Err(e) => {
                        eprintln!("runnel sql: error: cannot start line editing: {e}");
                        code = EXIT_ERROR;
                        break;
                    }
                };
            rl.set_helper(Some(ReplHelper::new(self.names.clone())));
            let read = rl.readline(&self.prompt());
            lines = std::mem::take(rl.history_mut());
            drop(rl);
            let line = match read {
                Ok(l) => l,
                Err(ReadlineError::Interrupted) => {
                    // Ctrl-C drops the statement being typed, as in psql.
                    self.buffer.clear();
                    entry.clear();
                    continue;
                }
                Err(ReadlineError::Eof) => {
                    self.notice("\\q");
                    break;
                }
                Err(e) => {
                    eprintln!("runnel sql: error: {e}");
                    code = EXIT_ERROR;
                    break;
                }
            };
            entry.push(line.clone());
            let word = line.trim().trim_end_matches(';').to_ascii_lowercase();
            let fresh = !has_code(&self.buffer);
            let flow = if fresh && (word == "quit" || word == "exit") {
                Flow::Quit
            } else if fresh && word == "help" {
                self.notice("You are using runnel sql, the command-line interface to Runnel.\nType:  \\? for help with commands\n       \\h for the SQL dialect\n       \\q to quit");
                Flow::Continue
            } else {
                let mut flow = Flow::Continue;
                for l in line.split('\n') {
                    // Errors were printed; an interactive session carries on.
                    if let Ok(Flow::Quit) = self.feed_line(l, 0, &Origin::Interactive) {
                        flow = Flow::Quit;
                        break;
                    }
                }
                flow
            };
            // A whole multi-line statement is one history entry, as in psql.
            if flow == Flow::Quit || !has_code(&self.buffer) {
                // Passwords given as stream options stay off the disk.
                let text = crate::connect::secret::redact_sql(&entry.join("\n"));
                if !text.trim().is_empty() {
                    let _ = lines.add_owned(text);
                    if let Some(h) = &history {
                        let _ = lines.append(h);
                    }
                }
                entry.clear();
            }
            if flow == Flow::Quit {
                break;
            }
        }
        code
    }

    /// Runs a whole script (a `-c` argument, a file or standard input).
    fn run_script(&mut self, lines: &mut dyn Iterator<Item = InputLine>, origin: Origin) -> Step {
        if self.depth >= MAX_INCLUDE_DEPTH {
            eprintln!("runnel sql: error: \\i nested too deeply");
            return Err(Fail::Error);
        }
        self.depth += 1;
        let saved = (std::mem::take(&mut self.buffer), self.buffer_line);
        self.buffer_line = 1;
        let result = self.run_lines(lines, &origin);
        (self.buffer, self.buffer_line) = saved;
        self.depth -= 1;
        result
    }

    fn run_lines(&mut self, lines: &mut dyn Iterator<Item = InputLine>, origin: &Origin) -> Step {
        for (i, line) in lines.enumerate() {
            let line = line.map_err(|e| {
                eprintln!("runnel sql: error: cannot read input: {e}");
                Fail::Error
            })?;
            if self.feed_line(&line, i + 1, origin)? == Flow::Quit {
                return Ok(Flow::Quit);
            }
        }
        // Like psql, an unterminated last statement still runs at end of input.
        if has_code(&self.buffer) {
            let text = std::mem::take(&mut self.buffer);
            let line = self.buffer_line;
            return self.execute(&text, line, origin);
        }
        self.buffer.clear();
        Ok(Flow::Continue)
    }

    /// Adds one input line (number `lineno`, 0 when interactive): runs the
    /// statements it completes and a meta-command it holds.
    fn feed_line(&mut self, line: &str, lineno: usize, origin: &Origin) -> Step {
        if self.buffer.is_empty() {
            self.buffer_line = lineno;
        } else {
            self.buffer.push('\n');
        }
        self.buffer.push_str(line);
        let buffer = std::mem::take(&mut self.buffer);
        let s = scan(&buffer);
        let base = self.buffer_line;
        let line_of = |offset: usize| base + buffer[..offset].matches('\n').count();
        let mut first_error = None;
        for p in &s.statements {
            if !p.has_code {
                continue;
            }
            let text = &buffer[p.start..p.end];
            let lead = text.len() - text.trim_start().len();
            match self.execute(text, line_of(p.start + lead), origin) {
                Ok(Flow::Continue) => {}
                Ok(Flow::Quit) => return Ok(Flow::Quit),
                // A script stops at its first error; a person carries on with the line.
                Err(f) if !matches!(origin, Origin::Interactive) => return Err(f),
                Err(f) => first_error = first_error.or(Some(f)),
            }
        }
        let end = s.meta.unwrap_or(buffer.len());
        self.buffer_line = line_of(s.rest);
        self.buffer = buffer[s.rest..end].to_string();
        if !has_code(&self.buffer) && s.meta.is_some() {
            self.buffer.clear();
        }
        if let Some(m) = s.meta {
            let at = line_of(m);
            return self.meta(&buffer[m..], at, origin);
        }
        match first_error {
            Some(f) => Err(f),
            None => Ok(Flow::Continue),
        }
    }

    // ----- output ----------------------------------------------------------

    /// Informational text (not results): to standard output, never to `\o`.
    fn notice(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    /// Results: to `\o` or standard output, through the pager when long.
    fn emit(&mut self, text: &str) -> Result<(), Fail> {
        self.out.write(text).map_err(|e| {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                eprintln!("runnel sql: error: cannot write output: {e}");
            }
            Fail::Error
        })
    }

    fn term_width(&self) -> Option<usize> {
        if self.out.is_terminal() {
            terminal_size().map(|(_, c)| c)
        } else {
            None
        }
    }

    fn render(&self, rows: &Rows) -> String {
        rows.render(&self.settings, self.term_width())
    }

    /// Prints an error the way psql does; `line` is where the statement
    /// starts in its input, for the `runnel:FILE:LINE:` prefix.
    fn report(&self, e: &ApiError, statement: Option<&str>, line: usize, origin: &Origin) -> Fail {
        let (at_line, context) = match (e, statement) {
            (
                ApiError::Server {
                    line: Some(l),
                    column,
                    ..
                },
                Some(stmt),
            ) => (
                line + (*l as usize).saturating_sub(1),
                error_context(stmt, *l, column.unwrap_or(1)),
            ),
            _ => (line, None),
        };
        let prefix = match origin {
            Origin::File(name) => format!("runnel:{name}:{at_line}: "),
            _ => String::new(),
        };
        match e {
            ApiError::Interrupted => {
                eprintln!(
                    "{prefix}canceled: stopped waiting for the server (the statement may still complete there)"
                );
            }
            ApiError::Unreachable { .. } => eprintln!("{prefix}error: {e}"),
            ApiError::Server {
                message,
                line: Some(l),
                column: Some(c),
                ..
            } => {
                // The location is shown below; drop the parser's copy of it.
                let suffix = format!(" at Line: {l}, Column: {c}");
                eprintln!(
                    "{prefix}ERROR:  {}",
                    message.strip_suffix(&suffix).unwrap_or(message)
                );
            }
            _ => eprintln!("{prefix}ERROR:  {e}"),
        }
        if let Some(c) = context {
            eprintln!("{c}");
        }
        match e {
            ApiError::Unreachable { .. } => Fail::Unreachable,
            _ => Fail::Error,
        }
    }

    fn api<T>(&self, r: Result<T, ApiError>, origin: &Origin, line: usize) -> Result<T, Fail> {
        r.map_err(|e| self.report(&e, None, line, origin))
    }

    // ----- statements ------------------------------------------------------

    /// Sends one statement and shows its result.
    fn execute(&mut self, text: &str, line: usize, origin: &Origin) -> Step {
        let text = text.trim();
        if self.interrupt.is_set() {
            return Err(self.report(&ApiError::Interrupted, None, line, origin));
        }
        self.last_statement = Some(text.to_string());
        let started = Instant::now();
        let results = self.client.sql(text);
        let elapsed = started.elapsed();
        let results = results.map_err(|e| self.report(&e, Some(text), line, origin))?;
        let mut changed = false;
        for r in results {
            changed |= r.kind != "rows";
            self.show_result(r)?;
        }
        if self.timing {
            self.notice(&format!("Time: {:.3} ms", elapsed.as_secs_f64() * 1000.0));
        }
        if changed && self.interactive {
            self.refresh_names();
        }
        Ok(Flow::Continue)
    }

    fn show_result(&mut self, r: StatementResult) -> Result<(), Fail> {
        if r.kind == "rows" {
            let mut rows = Rows::new(r.columns.iter().map(|c| c.name.clone()).collect(), r.rows);
            for (i, c) in r.columns.iter().enumerate() {
                if is_numeric_type(&c.data_type) {
                    rows.numeric[i] = true;
                }
            }
            let text = self.render(&rows);
            return self.emit(&text);
        }
        if let Some(q) = &r.query {
            self.last_query = Some(q.name.clone());
        }
        if self.quiet {
            return Ok(());
        }
        let mut text = r.message.unwrap_or_else(|| r.kind.to_uppercase());
        text.push('\n');
        self.emit(&text)?;
        if self.interactive
            && let Some(q) = &r.query
        {
            self.notice(&format!(
                "Results appear as windows close: \\watch {}",
                q.name
            ));
        }
        Ok(())
    }

    /// Refetches names for completion; returns (streams, queries) counts.
    fn refresh_names(&mut self) -> Option<(usize, usize)> {
        let streams = self.client.streams().ok()?;
        let queries = self.client.queries().ok()?;
        let mut columns: Vec<String> = streams
            .iter()
            .flat_map(|s| s.columns.iter().map(|c| c.name.clone()))
            .chain(
                queries
                    .iter()
                    .flat_map(|q| q.columns.iter().map(|c| c.name.clone())),
            )
            .collect();
        columns.sort();
        columns.dedup();
        let counts = (streams.len(), queries.len());
        *self.names.lock().unwrap_or_else(|p| p.into_inner()) = Names {
            streams: streams.into_iter().map(|s| s.name).collect(),
            queries: queries.into_iter().map(|q| q.name).collect(),
            columns,
        };
        Some(counts)
    }

    // ----- meta-commands ---------------------------------------------------

    fn meta(&mut self, text: &str, line: usize, origin: &Origin) -> Step {
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

    fn pset(&mut self, args: &[String]) -> Step {
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
    fn connect(&mut self, url: Option<&str>, origin: &Origin, line: usize) -> Step {
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

    fn conninfo(&mut self, origin: &Origin, line: usize) -> Step {
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

    fn list_all(&mut self, origin: &Origin, line: usize) -> Step {
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

    fn list_streams(&mut self, origin: &Origin, line: usize) -> Step {
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
    fn list_queries(&mut self, origin: &Origin, line: usize) -> Step {
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

    fn describe(&mut self, name: &str, verbose: bool, origin: &Origin, line: usize) -> Step {
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
                    facts.push(("Watermark delay", crate::sql::window::fmt_duration(ms)));
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
                    eprintln!("Did not find any stream or query named \"{name}\".");
                    return Err(Fail::Error);
                }
                Err(e) => return Err(self.report(&e, None, line, origin)),
            },
            Err(e) => return Err(self.report(&e, None, line, origin)),
        }
        text.push('\n');
        self.emit(&text)?;
        Ok(Flow::Continue)
    }

    /// `\watch [SEC] [QUERY]`: polls the query's results with the cursor and
    /// shows each batch of newly closed windows, until Ctrl-C (or `c=N` rounds).
    fn watch(&mut self, args: &[String], origin: &Origin, line: usize) -> Step {
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
        let Some(name) = name.or_else(|| self.last_query.clone()) else {
            return usage();
        };
        let q = self.api(self.client.query(&name), origin, line)?;
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
            if self.interrupt.sleep(Duration::from_secs_f64(interval)) {
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
        if self.interrupt.is_set() && self.interactive {
            // The terminal echoed ^C; start the prompt on a line of its own.
            self.notice("");
        }
        self.interrupt.clear();
        Ok(Flow::Continue)
    }

    fn show_windows(
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
    fn caret_under_column() {
        let c = error_context("SELECT x\nFORM t", 2, 1).unwrap();
        assert_eq!(c, "LINE 2: FORM t\n        ^");
        assert!(error_context("SELECT 1", 3, 1).is_none());
    }

    #[test]
    fn long_lines_are_cut_around_the_caret() {
        let stmt = format!("SELECT {} FROM t", "a + ".repeat(40));
        let c = error_context(&stmt, 1, 150).unwrap();
        let lines: Vec<&str> = c.lines().collect();
        assert!(lines[0].starts_with("LINE 1: ..."));
        let caret = lines[1].len() - 1;
        assert_eq!(lines[0].chars().nth(caret), stmt.chars().nth(149), "{c}");
    }

    #[test]
    fn newest_window_kept() {
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

    #[test]
    fn durations() {
        assert_eq!(crate::sql::window::fmt_duration(2000), "2s");
        assert_eq!(crate::sql::window::fmt_duration(1500), "1500ms");
        assert_eq!(crate::sql::window::fmt_duration(60_000), "1m");
    }
}
