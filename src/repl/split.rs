//! Splits input into statements the way psql does: a statement ends at a `;`
//! outside quotes and comments, and a backslash outside them starts a
//! meta-command that runs to the end of the line.
//!
//! ```
//! use runnel::repl::split::{Open, scan};
//! let s = scan("SHOW STREAMS; SELECT ';' AS x;\nSELECT 1 /* ; */");
//! assert_eq!(s.statements.len(), 2);
//! assert_eq!(&"SHOW STREAMS; SELECT ';' AS x;\nSELECT 1 /* ; */"[s.rest..], "\nSELECT 1 /* ; */");
//! assert_eq!(s.open, Open::None);
//! assert!(scan("SELECT 'it''s").open == Open::Quote('\''));
//! ```

/// What the unfinished tail of the input is inside of; the REPL shows it in
/// the continuation prompt, like psql's `'>`, `*>` and `(>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// Nothing open.
    None,
    /// A quoted string or identifier, opened by this character.
    Quote(char),
    /// A `/* ... */` comment.
    Comment,
    /// An unclosed parenthesis.
    Paren,
}

/// One complete statement: `text[start..end]`, without its `;`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Byte offset of the first character after the previous `;`.
    pub start: usize,
    /// Byte offset of the terminating `;`.
    pub end: usize,
    /// Whether it holds anything besides whitespace and comments.
    pub has_code: bool,
}

/// The result of [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Complete statements, in order.
    pub statements: Vec<Piece>,
    /// Byte offset where the unfinished remainder starts.
    pub rest: usize,
    /// Whether the remainder holds anything besides whitespace and comments.
    pub rest_has_code: bool,
    /// Byte offset of a backslash that starts a meta-command; scanning stops
    /// there, so the remainder is `text[rest..meta]`.
    pub meta: Option<usize>,
    /// What the remainder is inside of.
    pub open: Open,
}

/// Scans `text` for complete statements, a meta-command and the open state.
pub fn scan(text: &str) -> Scan {
    let b = text.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut has_code = false;
    let mut depth: i32 = 0;
    let mut i = 0;
    let mut open = Open::None;
    let mut meta = None;
    // All delimiters are ASCII, so byte-wise scanning never splits a character.
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' | b'"' | b'`' => {
                has_code = true;
                open = Open::Quote(c as char);
                i += 1;
                while i < b.len() {
                    if b[i] == c {
                        // A doubled quote is an escaped quote, not the end.
                        if i + 1 < b.len() && b[i + 1] == c {
                            i += 2;
                            continue;
                        }
                        open = Open::None;
                        break;
                    }
                    i += 1;
                }
                if open != Open::None {
                    break;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Block comments nest, as in the server's SQL tokenizer.
                let mut level = 1;
                i += 2;
                while i < b.len() && level > 0 {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        level += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        level -= 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
                if level > 0 {
                    open = Open::Comment;
                    break;
                }
                continue;
            }
            b'\\' => {
                meta = Some(i);
                break;
            }
            b'(' => {
                has_code = true;
                depth += 1;
            }
            b')' => {
                has_code = true;
                depth -= 1;
            }
            b';' => {
                statements.push(Piece {
                    start,
                    end: i,
                    has_code,
                });
                start = i + 1;
                has_code = false;
                depth = 0;
            }
            c if c.is_ascii_whitespace() => {}
            _ => has_code = true,
        }
        i += 1;
    }
    if open == Open::None && depth > 0 {
        open = Open::Paren;
    }
    Scan {
        statements,
        rest: start,
        rest_has_code: has_code,
        meta,
        open,
    }
}

/// Whether `text` holds anything besides whitespace and comments.
pub fn has_code(text: &str) -> bool {
    let s = scan(text);
    s.rest_has_code || s.statements.iter().any(|p| p.has_code) || s.meta.is_some()
}

/// Splits a meta-command line (starting at its backslash) into the command
/// and its arguments; single-quoted arguments may hold spaces.
///
/// ```
/// use runnel::repl::split::meta_words;
/// assert_eq!(meta_words(r"\o 'my file.txt'"), vec![r"\o", "my file.txt"]);
/// ```
pub fn meta_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    if q == '\'' {
                        if chars.peek() == Some(&'\'') {
                            chars.next();
                            cur.push('\'');
                        } else {
                            break;
                        }
                    } else {
                        cur.push(q);
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_and_rest() {
        let t = "SELECT 1; SELECT 2;\n SELECT (3";
        let s = scan(t);
        assert_eq!(s.statements.len(), 2);
        assert_eq!(&t[s.statements[1].start..s.statements[1].end], " SELECT 2");
        assert_eq!(&t[s.rest..], "\n SELECT (3");
        assert_eq!(s.open, Open::Paren);
        assert!(s.rest_has_code);
    }

    #[test]
    fn quotes_and_comments_hide_semicolons() {
        let s = scan("SELECT 'a;b', \"c;d\" -- e;f\nFROM t /* g; /* h; */ i; */");
        assert!(s.statements.is_empty());
        assert_eq!(s.open, Open::None);
        assert_eq!(scan("SELECT /* x").open, Open::Comment);
        assert_eq!(scan("SELECT \"x").open, Open::Quote('"'));
    }

    #[test]
    fn comment_only_statement_has_no_code() {
        let s = scan("-- just a comment\n;");
        assert_eq!(s.statements.len(), 1);
        assert!(!s.statements[0].has_code);
        assert!(!has_code("  /* x */ -- y\n"));
    }

    #[test]
    fn backslash_starts_meta() {
        let t = "SELECT 1; \\x on";
        let s = scan(t);
        assert_eq!(s.statements.len(), 1);
        assert_eq!(s.meta, Some(10));
        assert_eq!(scan("SELECT '\\x'").meta, None);
    }

    #[test]
    fn meta_words_split() {
        assert_eq!(meta_words("\\watch 2  q"), vec!["\\watch", "2", "q"]);
        assert_eq!(meta_words("\\echo 'it''s'"), vec!["\\echo", "it's"]);
    }
}
