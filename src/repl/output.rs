//! Where results go: standard output, the pager, or a `\o` file.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The result sink.
#[derive(Debug)]
pub struct Output {
    file: Option<(PathBuf, File)>,
    /// Whether long output on a terminal goes through the pager.
    pub pager: bool,
}

/// Terminal rows and columns, when standard output is a terminal whose size is known.
///
/// `LINES` and `COLUMNS` win when set; otherwise `stty size` is asked about
/// the controlling terminal (the standard library has no ioctl).
pub fn terminal_size() -> Option<(usize, usize)> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let env = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
    };
    let (mut rows, mut cols) = (env("LINES"), env("COLUMNS"));
    if (rows.is_none() || cols.is_none())
        && let Ok(tty) = File::open("/dev/tty")
        && let Ok(out) = Command::new("stty")
            .arg("size")
            .stdin(tty)
            .stderr(Stdio::null())
            .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text.split_whitespace().map(|n| n.parse::<usize>().ok());
        if let (Some(Some(r)), Some(Some(c))) = (it.next(), it.next()) {
            rows = rows.or(Some(r));
            cols = cols.or(Some(c));
        }
    }
    match (rows, cols) {
        // A pseudo-terminal nobody sized reports 0 x 0: treat it as unknown.
        (Some(r), Some(c)) if r > 0 && c > 0 => Some((r, c)),
        _ => None,
    }
}

/// The pager command: `$RUNNEL_PAGER`, `$PAGER`, or `less -FRX`.
pub fn pager_command() -> Option<String> {
    for var in ["RUNNEL_PAGER", "PAGER"] {
        if let Ok(p) = std::env::var(var) {
            let p = p.trim().to_string();
            // An empty or "off" value turns paging off, as with psql's PSQL_PAGER.
            if p.is_empty() || p == "off" {
                return None;
            }
            return Some(p);
        }
    }
    Some("less -FRX".to_string())
}

impl Output {
    /// Output to standard output, paging when `pager` is set.
    pub fn new(pager: bool) -> Self {
        Output { file: None, pager }
    }

    /// Sends later results to `path` (created or truncated), or back to
    /// standard output when `None`.
    pub fn redirect(&mut self, path: Option<&Path>) -> std::io::Result<()> {
        self.file = match path {
            None => None,
            Some(p) => Some((p.to_path_buf(), File::create(p)?)),
        };
        Ok(())
    }

    /// The `\o` file, if any.
    pub fn target(&self) -> Option<&Path> {
        self.file.as_ref().map(|(p, _)| p.as_path())
    }

    /// Whether results currently reach a terminal.
    pub fn is_terminal(&self) -> bool {
        self.file.is_none() && std::io::stdout().is_terminal()
    }

    /// Writes `text`; through the pager when it would not fit on the screen.
    pub fn write(&mut self, text: &str) -> std::io::Result<()> {
        self.write_paged(text, true)
    }

    /// Writes `text`, never paging (for `\watch`, which must keep running).
    pub fn write_unpaged(&mut self, text: &str) -> std::io::Result<()> {
        self.write_paged(text, false)
    }

    fn write_paged(&mut self, text: &str, page: bool) -> std::io::Result<()> {
        if let Some((_, f)) = &mut self.file {
            f.write_all(text.as_bytes())?;
            return f.flush();
        }
        if page
            && self.pager
            && let Some((rows, cols)) = terminal_size()
        {
            let lines = text.lines().count();
            let widest = text.lines().map(|l| l.chars().count()).max().unwrap_or(0);
            if (lines >= rows || widest > cols)
                && let Some(cmd) = pager_command()
                && run_pager(&cmd, text)
            {
                return Ok(());
            }
        }
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()
    }
}

/// Pipes `text` into `cmd`; false when the pager could not be started.
fn run_pager(cmd: &str, text: &str) -> bool {
    let child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A pager quit before reading everything closes the pipe: not an error.
        let _ = stdin.write_all(text.as_bytes());
    }
    let _ = child.wait();
    true
}
