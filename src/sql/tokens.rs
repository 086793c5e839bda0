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

/// How deep a statement's expressions may nest, bounded from its tokens:
/// DataFusion plans an expression by recursion, and a chain of a few
/// thousand operators (`1+1+...`, `a = 1 OR a = 2 OR ...`) overflows a
/// thread's stack, which aborts the process.
pub(super) const MAX_NESTING: usize = 500;

/// Refuses a statement whose expressions may nest deeper than
/// [`MAX_NESTING`], before anything builds or plans them. The bound at a
/// token is the operators since the last comma at its level of
/// parentheses, plus the deepest bound closed within them since, plus one
/// per open parenthesis: never less than the depth of the expression tree
/// the tokens parse into.
pub(super) fn check_nesting(toks: &[&TokenWithSpan]) -> crate::error::Result<()> {
    // Per open parenthesis (and the statement's level): operators since
    // its last comma, and the deepest bound of the parentheses closed
    // within since.
    let mut open: Vec<(usize, usize)> = vec![(0, 0)];
    for &t in toks {
        let top = open.len() - 1;
        match &t.token {
            Token::LParen => open.push((0, 0)),
            Token::RParen if top > 0 => {
                let (ops, inner) = open.pop().expect("an open parenthesis");
                let parent = &mut open[top - 1];
                parent.1 = parent.1.max(ops + inner + 1);
            }
            Token::Comma => open[top] = (0, 0),
            Token::Word(w) => {
                use datafusion::sql::sqlparser::keywords::Keyword::{AND, IS, NOT, OR, XOR};
                if matches!(w.keyword, AND | OR | NOT | XOR | IS) {
                    open[top].0 += 1;
                }
            }
            Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::Period
            | Token::Whitespace(_)
            | Token::EOF => {}
            _ => open[top].0 += 1,
        }
        let (ops, inner) = open[open.len() - 1];
        if ops + inner + open.len() - 1 > MAX_NESTING {
            return Err(crate::error::Error::sql(
                format!(
                    "expressions nest too deeply (over {MAX_NESTING} operators or parentheses \
                     in one chain); write a long list of alternatives as `x IN (v1, v2, ...)`"
                ),
                loc(t),
            ));
        }
    }
    Ok(())
}
