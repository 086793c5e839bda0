//! The bounds on one request's work an operator sets (`--pull-memory`,
//! `--pull-rows`, `--max-sse`, or `runnel.toml`); the server enforces them
//! (see `server::limits`).
//!
//! ```
//! let l = runnel::config::limits::Limits::from_file(Some("1MiB"), Some(10), None).unwrap();
//! assert_eq!((l.pull_memory, l.pull_rows, l.max_sse), (1 << 20, 10, 256));
//! ```

use bytesize::ByteSize;

use crate::error::{Error, Result};

/// The configured limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes pull queries and roll-ups may hold together.
    pub pull_memory: u64,
    /// Most rows one pull query or roll-up returns.
    pub pull_rows: usize,
    /// Most server-sent-event connections open at once.
    pub max_sse: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            pull_memory: 256 << 20,
            pull_rows: 100_000,
            max_sse: 256,
        }
    }
}

/// Parses a memory size such as `256MB`, `1.5GiB` or `1048576` (bytes).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let size: ByteSize = s.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    match size.as_u64() {
        0 => Err(format!("{s:?}: must be more than 0 bytes")),
        n => Ok(n),
    }
}

impl Limits {
    /// The limits `runnel.toml` sets (`pull_memory`, `pull_rows`,
    /// `max_sse`), defaults for the others.
    pub fn from_file(
        pull_memory: Option<&str>,
        pull_rows: Option<usize>,
        max_sse: Option<usize>,
    ) -> Result<Self> {
        let d = Limits::default();
        let positive = |key: &str, v: Option<usize>, default: usize| match v {
            Some(0) => Err(Error::BadRequest(format!("{key}: must be at least 1"))),
            v => Ok(v.unwrap_or(default)),
        };
        Ok(Limits {
            pull_memory: match pull_memory {
                Some(s) => {
                    parse_size(s).map_err(|e| Error::BadRequest(format!("pull_memory: {e}")))?
                }
                None => d.pull_memory,
            },
            pull_rows: positive("pull_rows", pull_rows, d.pull_rows)?,
            max_sse: positive("max_sse", max_sse, d.max_sse)?,
        })
    }

    /// Replaces the limits given on the command line or in the environment.
    pub fn set(
        &mut self,
        pull_memory: Option<u64>,
        pull_rows: Option<usize>,
        max_sse: Option<usize>,
    ) {
        self.pull_memory = pull_memory.unwrap_or(self.pull_memory);
        self.pull_rows = pull_rows.unwrap_or(self.pull_rows);
        self.max_sse = max_sse.unwrap_or(self.max_sse);
    }

    /// `pull_memory` as people read it (`256 MiB`).
    pub fn memory(&self) -> String {
        ByteSize::b(self.pull_memory).display().iec().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_limits() {
        assert_eq!(parse_size("256MB"), Ok(256_000_000));
        assert_eq!(parse_size("256 MiB"), Ok(256 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("lots").is_err());
        assert_eq!(
            Limits::from_file(None, None, None).unwrap(),
            Limits::default()
        );
        let e = Limits::from_file(Some("x"), None, None).unwrap_err();
        assert!(e.to_string().starts_with("pull_memory: "), "{e}");
        let e = Limits::from_file(None, Some(0), None).unwrap_err();
        assert_eq!(e.to_string(), "pull_rows: must be at least 1");
        let mut l = Limits::from_file(Some("1GB"), Some(5), Some(2)).unwrap();
        l.set(None, Some(7), None);
        assert_eq!(
            (l.pull_memory, l.pull_rows, l.max_sse),
            (1_000_000_000, 7, 2)
        );
    }
}
