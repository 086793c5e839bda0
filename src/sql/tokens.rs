//! The statement text as the other parsers see it: [`Source`] keeps the
//! body's characters and line starts so a clause can be blanked without
//! moving any line or column, and small helpers read tokens (position, upper
//! cased word, blank or not).

use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

pub(super) fn is_blank(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_) | Token::EOF)
}

/// The statement body as chars, with line starts, for blanking ranges while
/// keeping every line and column where it was.
pub(super) struct Source {
    pub(super) chars: Vec<char>,
    line_starts: Vec<usize>,
}

impl Source {
    pub(super) fn new(body: &str) -> Self {
        let chars: Vec<char> = body.chars().collect();
        let mut line_starts = vec![0];
        for (i, c) in chars.iter().enumerate() {
            if *c == '\n' {
                line_starts.push(i + 1);
            }
        }
        Source { chars, line_starts }
    }

    fn offset(&self, line: u64, column: u64) -> usize {
        let l = (line.max(1) - 1) as usize;
        let base = self.line_starts.get(l).copied().unwrap_or(self.chars.len());
        (base + column.max(1) as usize - 1).min(self.chars.len())
    }

    /// The whole body with everything outside `keep` (char ranges) blanked.
    pub(super) fn keep_only(&self, keep: (usize, usize), blank: &[(usize, usize)]) -> String {
        self.chars
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let inside =
                    i >= keep.0 && i < keep.1 && !blank.iter().any(|b| i >= b.0 && i < b.1);
                if inside || *c == '\n' { *c } else { ' ' }
            })
            .collect()
    }
}

pub(super) fn start_of(src: &Source, t: &TokenWithSpan) -> usize {
    src.offset(t.span.start.line, t.span.start.column)
}

pub(super) fn end_of(src: &Source, t: &TokenWithSpan) -> usize {
    src.offset(t.span.end.line, t.span.end.column)
}

pub(super) fn loc(t: &TokenWithSpan) -> Option<(u64, u64)> {
    Some((t.span.start.line, t.span.start.column))
}

pub(super) fn word(t: &TokenWithSpan) -> Option<String> {
    match &t.token {
        Token::Word(w) => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}
