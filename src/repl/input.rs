//! Reading input: the interactive line editor, scripts, and splitting
//! lines into statements and meta-commands.

use super::*;

impl Session {
    /// The prompt: `runnel=>` for a new statement, otherwise a marker of
    /// what is open (`-` statement, `'` or `"` quote, `*` comment, `(` paren).
    pub(super) fn prompt(&self) -> String {
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

    pub(super) fn interactive_loop(&mut self) -> i32 {
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
        // One editor for the whole session: it keeps input read past the
        // end of a line (pasted statements) for the next line. It installs
        // its own SIGINT handler, which would keep Ctrl-C from stopping a
        // \watch, a slow request or the pager: ours is put back. Reading a
        // line needs no SIGINT, as the raw terminal delivers Ctrl-C as a key.
        let editor = keeping_sigint(|| Editor::with_history(config, lines));
        let mut rl: Editor<ReplHelper, FileHistory> = match editor {
            Ok(rl) => rl,
            Err(e) => {
                eprintln!("runnel sql: error: cannot start line editing: {e}");
                return EXIT_ERROR;
            }
        };
        rl.set_helper(Some(ReplHelper::new(self.names.clone())));
        let mut entry: Vec<String> = Vec::new();
        let mut code = 0;
        loop {
            self.interrupt.clear();
            let read = rl.readline(&self.prompt());
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
                    let _ = rl.history_mut().add_owned(text);
                    if let Some(h) = &history {
                        let _ = rl.history_mut().append(h);
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
    pub(super) fn run_script(
        &mut self,
        lines: &mut dyn Iterator<Item = InputLine>,
        origin: Origin,
    ) -> Step {
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

    pub(super) fn run_lines(
        &mut self,
        lines: &mut dyn Iterator<Item = InputLine>,
        origin: &Origin,
    ) -> Step {
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
    pub(super) fn feed_line(&mut self, line: &str, lineno: usize, origin: &Origin) -> Step {
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
}

/// Runs `f` and then puts back the SIGINT handler in place before it.
fn keeping_sigint<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: `sigaction` only reads and writes the struct passed to it, and
    // the handler restored is one the process had installed.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    let saved = unsafe { libc::sigaction(libc::SIGINT, std::ptr::null(), &mut old) } == 0;
    let out = f();
    if saved {
        unsafe { libc::sigaction(libc::SIGINT, &old, std::ptr::null_mut()) };
    }
    out
}
