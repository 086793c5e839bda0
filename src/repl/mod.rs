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

mod commands;
mod describe;
mod input;
mod watch;

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
    /// The continuous query the last statement created, which `\watch`
    /// follows instead of running the statement again.
    last_query: Option<String>,
    /// Inside `\watch`: results are written without the pager.
    watching: bool,
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
        watching: false,
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

impl Session {
    // ----- output ----------------------------------------------------------

    /// Informational text (not results): to standard output, never to `\o`.
    fn notice(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    /// Results: to `\o` or standard output, through the pager when long.
    fn emit(&mut self, text: &str) -> Result<(), Fail> {
        let written = if self.watching {
            self.out.write_unpaged(text)
        } else {
            self.out.write(text)
        };
        written.map_err(|e| {
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
        self.last_query = None;
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
    fn durations() {
        assert_eq!(crate::model::duration::fmt_duration(2000), "2s");
        assert_eq!(crate::model::duration::fmt_duration(1500), "1500ms");
        assert_eq!(crate::model::duration::fmt_duration(60_000), "1m");
    }
}
