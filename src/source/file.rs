//! The file source: a file's lines, then the lines appended to it (`tail -f`).
//!
//! Each line (without its `\n` or `\r\n`) is one record of partition 0. A
//! last line without its newline is held back until the newline arrives.
//! The offset is the byte position of the next line to read; it is saved
//! with each checkpoint, so a restarted query resumes exactly after the
//! last line its results include (exactly-once, as with Kafka). Without a
//! saved offset, `start = 'earliest'` reads the file from its beginning and
//! `'latest'` only the lines completed after the query starts.
//!
//! A file that does not exist yet is waited for. A file that shrinks below
//! the read position (truncated or replaced by a shorter one) is read again
//! from its beginning.
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use std::sync::atomic::AtomicBool;
//! use std::time::Duration;
//! use runnel::source::file::FileSource;
//! use runnel::sql::StartFrom;
//! let stop = AtomicBool::new(false);
//! let mut src = FileSource::open("/var/log/app.log".as_ref(), StartFrom::Earliest,
//!                                &BTreeMap::new(), &stop).unwrap();
//! for chunk in src.poll(10_000, Duration::from_millis(100)).unwrap() {
//!     println!("{} lines from byte {}", chunk.len(), chunk.first_offset);
//! }
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Chunk, take_lines};
use crate::error::{Error, Result};
use crate::sql::StartFrom;

/// How often a file at its end is checked for new lines.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(20);
/// Most bytes read from the file per read call.
const READ_SIZE: usize = 1 << 20;

/// A reader following one file.
pub struct FileSource {
    path: PathBuf,
    file: File,
    /// Byte position of the first byte in `buf` (the next line to emit).
    pos: u64,
    /// Bytes read past `pos` that do not complete a line yet.
    buf: Vec<u8>,
    /// Bytes to drop up to and including the next `\n` (a line that was
    /// half written when a `latest` source started).
    skip_partial: bool,
    offsets: BTreeMap<i32, i64>,
}

impl FileSource {
    /// Opens `path` (waiting until it exists) at the `saved` byte position,
    /// or at its start or end when nothing was saved.
    pub fn open(
        path: &Path,
        start: StartFrom,
        saved: &BTreeMap<i32, i64>,
        stop: &AtomicBool,
    ) -> Result<Self> {
        let mut logged = false;
        let mut file = loop {
            if stop.load(Ordering::Relaxed) {
                return Err(Error::Execution("stopped before the file appeared".into()));
            }
            match File::open(path) {
                Ok(f) => break f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if !logged {
                        tracing::info!("waiting for {} to exist", path.display());
                        logged = true;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(Error::Execution(format!("{}: {e}", path.display())));
                }
            }
        };
        let meta = file
            .metadata()
            .map_err(|e| Error::Execution(format!("{}: {e}", path.display())))?;
        if meta.is_dir() {
            return Err(Error::Execution(format!(
                "{} is a directory; a file stream reads one file",
                path.display()
            )));
        }
        let len = meta.len();
        let (pos, skip_partial) = match (saved.get(&0), start) {
            (Some(&p), _) if p >= 0 && p as u64 <= len => (p as u64, false),
            (Some(&p), _) => {
                tracing::warn!(
                    "{} is shorter than the saved position {p}; reading it from the beginning",
                    path.display()
                );
                (0, false)
            }
            (None, StartFrom::Earliest) => (0, false),
            (None, StartFrom::Latest) if len == 0 => (0, false),
            (None, StartFrom::Latest) => {
                let mut last = [0u8];
                file.seek(SeekFrom::Start(len - 1))?;
                file.read_exact(&mut last)?;
                (len, last[0] != b'\n')
            }
        };
        file.seek(SeekFrom::Start(pos))?;
        let mut offsets = BTreeMap::new();
        if !skip_partial {
            offsets.insert(0, pos as i64);
        }
        Ok(FileSource {
            path: path.to_path_buf(),
            file,
            pos,
            buf: Vec::new(),
            skip_partial,
            offsets,
        })
    }

    /// Byte position of the next line, as partition 0's offset.
    pub fn offsets(&self) -> &BTreeMap<i32, i64> {
        &self.offsets
    }

    /// Whether the path now names another file than the one being read
    /// (log rotation), once the new one exists.
    #[cfg(unix)]
    fn replaced(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(&self.path), self.file.metadata()) {
            (Ok(now), Ok(open)) => now.ino() != open.ino() || now.dev() != open.dev(),
            _ => false,
        }
    }

    #[cfg(not(unix))]
    fn replaced(&self) -> bool {
        false
    }

    /// Appends what the file has beyond what was read to `buf`; returns
    /// the number of bytes read.
    fn read_more(&mut self) -> Result<usize> {
        let read_to = self.pos + self.buf.len() as u64;
        let len = self.file.metadata()?.len();
        if len < read_to {
            tracing::warn!(
                "{} shrank below byte {read_to}; reading it again from the beginning",
                self.path.display()
            );
            self.file.seek(SeekFrom::Start(0))?;
            self.pos = 0;
            self.buf.clear();
            self.skip_partial = false;
        }
        let old = self.buf.len();
        self.buf.resize(old + READ_SIZE, 0);
        let n = match self.file.read(&mut self.buf[old..]) {
            Ok(n) => n,
            Err(e) => {
                self.buf.truncate(old);
                return Err(Error::Execution(format!("{}: {e}", self.path.display())));
            }
        };
        self.buf.truncate(old + n);
        if n == 0 && self.replaced() {
            tracing::warn!(
                "{} was replaced by a new file; reading the new one from the beginning",
                self.path.display()
            );
            self.file = File::open(&self.path)?;
            self.pos = 0;
            self.buf.clear();
            self.skip_partial = false;
            return self.read_more();
        }
        if self.skip_partial
            && let Some(nl) = self.buf.iter().position(|&b| b == b'\n')
        {
            self.buf.drain(..=nl);
            self.pos += nl as u64 + 1;
            self.skip_partial = false;
            self.offsets.insert(0, self.pos as i64);
        }
        Ok(n)
    }

    /// Reads up to `max` complete lines, waiting at most `wait` for the first one.
    pub fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Chunk>> {
        let deadline = Instant::now() + wait;
        let mut chunk = Chunk::new(0, self.pos as i64);
        loop {
            if chunk.is_empty() {
                chunk.first_offset = self.pos as i64;
            }
            if !self.skip_partial {
                let used = take_lines(&self.buf, &mut chunk, max);
                self.buf.drain(..used);
                self.pos += used as u64;
            }
            if chunk.len() >= max {
                break;
            }
            if self.read_more()? > 0 {
                continue;
            }
            let now = Instant::now();
            if !chunk.is_empty() || now >= deadline {
                break;
            }
            std::thread::sleep(FOLLOW_INTERVAL.min(deadline - now));
        }
        if chunk.is_empty() {
            return Ok(Vec::new());
        }
        self.offsets.insert(0, self.pos as i64);
        Ok(vec![chunk])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn drain(src: &mut FileSource, max: usize) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let chunks = src.poll(max, Duration::from_millis(30)).unwrap();
            if chunks.is_empty() {
                return out;
            }
            for c in &chunks {
                assert!(c.len() <= max);
                out.extend(
                    c.payloads()
                        .iter()
                        .map(|p| String::from_utf8(p.to_vec()).unwrap()),
                );
            }
        }
    }

    fn open(path: &Path, start: StartFrom, saved: &BTreeMap<i32, i64>) -> FileSource {
        FileSource::open(path, start, saved, &AtomicBool::new(false)).unwrap()
    }

    #[test]
    fn follows_appends_and_holds_partial_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        append(&path, "one\ntwo\r\nthr");
        let mut src = open(&path, StartFrom::Earliest, &BTreeMap::new());
        assert_eq!(drain(&mut src, 100), ["one", "two"]);
        assert_eq!(src.offsets().get(&0), Some(&9));
        // The partial line is not emitted until its newline is written.
        assert!(drain(&mut src, 100).is_empty());
        append(&path, "ee\n\nfive\n");
        assert_eq!(drain(&mut src, 100), ["three", "", "five"]);
        assert_eq!(src.offsets().get(&0), Some(&21));
    }

    #[test]
    fn resume_from_saved_offset_yields_exactly_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let all: Vec<String> = (0..50).map(|i| format!("{{\"n\": {i}}}")).collect();
        for l in &all[..20] {
            append(&path, &format!("{l}\n"));
        }
        let mut src = open(&path, StartFrom::Earliest, &BTreeMap::new());
        // A checkpoint after the first 7 lines.
        let first = src.poll(7, Duration::from_millis(10)).unwrap();
        assert_eq!(first[0].len(), 7);
        assert_eq!(first[0].first_offset, 0);
        let saved = src.offsets().clone();
        assert_eq!(
            src.poll(1000, Duration::from_millis(10)).unwrap()[0].len(),
            13
        );
        drop(src);
        // A writer appends while the reader is down, and more after the restart.
        for l in &all[20..35] {
            append(&path, &format!("{l}\n"));
        }
        let mut src = open(&path, StartFrom::Latest, &saved);
        let got = std::thread::scope(|s| {
            s.spawn(|| {
                for l in &all[35..] {
                    append(&path, &format!("{l}\n"));
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(5);
            while got.len() < 43 && Instant::now() < deadline {
                got.extend(drain(&mut src, 5));
            }
            got
        });
        assert_eq!(got, all[7..]);
        let len = std::fs::metadata(&path).unwrap().len() as i64;
        assert_eq!(src.offsets().get(&0), Some(&len));
    }

    #[test]
    fn latest_skips_existing_lines_and_a_half_written_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        append(&path, "old\nhalf");
        let mut src = open(&path, StartFrom::Latest, &BTreeMap::new());
        assert!(drain(&mut src, 10).is_empty());
        append(&path, " done\nnew\n");
        assert_eq!(drain(&mut src, 10), ["new"]);
    }

    #[test]
    fn waits_for_the_file_and_rereads_a_truncated_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later.log");
        let p2 = path.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            append(&p2, "first\nsecond\n");
        });
        let mut src = open(&path, StartFrom::Earliest, &BTreeMap::new());
        writer.join().unwrap();
        assert_eq!(drain(&mut src, 10), ["first", "second"]);
        std::fs::write(&path, "new\n").unwrap();
        assert_eq!(drain(&mut src, 10), ["new"]);
        // Rotation: the path now names a new file.
        std::fs::rename(&path, dir.path().join("later.log.1")).unwrap();
        append(&path, "rotated\n");
        assert_eq!(drain(&mut src, 10), ["rotated"]);
        let stop = AtomicBool::new(true);
        assert!(
            FileSource::open(
                &dir.path().join("never"),
                StartFrom::Earliest,
                &BTreeMap::new(),
                &stop
            )
            .is_err()
        );
        assert!(
            FileSource::open(
                dir.path(),
                StartFrom::Earliest,
                &BTreeMap::new(),
                &AtomicBool::new(false)
            )
            .is_err()
        );
    }
}
