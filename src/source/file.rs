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
//! Only regular files under the directories the server allows
//! (`--allow-files`) may be read: [`allowed_file`] checks a path when a file
//! stream or table is created and when a stored one is loaded. A line longer
//! than [`MAX_LINE`] bytes is emitted in pieces, as the socket source does.
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
//! use runnel::model::StartFrom;
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

use super::{Chunk, ChunkSizes, MAX_LINE, take_lines};
use crate::error::{Error, Result};
use crate::model::StartFrom;

/// How often a file at its end is checked for new lines.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(20);
/// Most bytes read from the file per read call.
const READ_SIZE: usize = 1 << 20;

/// Checks that `path` names a regular file under one of the `allowed`
/// directories once symlinks and `..` are resolved, and returns its
/// canonical path. With `may_wait` (a file stream, which waits for its
/// file) a missing file passes when its directory is under an allowed one.
/// Refusals are [`Error::BadRequest`]s naming the allowed directories.
///
/// ```
/// use runnel::source::file::allowed_file;
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("a.csv"), "x\n").unwrap();
/// let roots = [dir.path().to_path_buf()];
/// let a = dir.path().join("a.csv");
/// assert!(allowed_file(a.to_str().unwrap(), &roots, false).is_ok());
/// assert_eq!(allowed_file("/etc/passwd", &roots, false).unwrap_err().status(), 400);
/// assert!(allowed_file(a.to_str().unwrap(), &[], false).is_err());
/// ```
pub fn allowed_file(path: &str, allowed: &[PathBuf], may_wait: bool) -> Result<PathBuf> {
    if allowed.is_empty() {
        return Err(Error::BadRequest(format!(
            "cannot read '{path}': no directory is allowed for file tables and streams; \
             start the server with --allow-files DIR"
        )));
    }
    let named = allowed
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let roots: Vec<PathBuf> = allowed
        .iter()
        .filter_map(|d| d.canonicalize().ok())
        .collect();
    let refused = |why: &str| {
        Error::BadRequest(format!(
            "cannot read '{path}': {why}; file tables and streams read regular files \
             under the allowed directories ({named}; see --allow-files)"
        ))
    };
    let under = |p: &Path| roots.iter().any(|r| p.starts_with(r));
    let given = Path::new(path);
    if path.is_empty() {
        return Err(refused("the path is empty"));
    }
    match given.canonicalize() {
        Ok(real) => {
            if !under(&real) {
                return Err(refused("it is not under an allowed directory"));
            }
            match std::fs::metadata(&real) {
                Ok(m) if m.is_file() => Ok(real),
                Ok(_) => Err(refused("it is not a regular file")),
                Err(e) => Err(refused(&e.to_string())),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_wait => {
            // Nothing there yet: the stream waits for the file, which will
            // appear in the (allowed) directory it names.
            if given.symlink_metadata().is_ok() {
                return Err(refused("it is a symbolic link to nothing"));
            }
            let Some(name) = given.file_name().filter(|_| {
                matches!(
                    given.components().next_back(),
                    Some(std::path::Component::Normal(_))
                )
            }) else {
                return Err(refused("it names no file"));
            };
            let parent = match given.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            match parent.canonicalize() {
                Ok(dir) if under(&dir) && dir.is_dir() => Ok(dir.join(name)),
                Ok(_) => Err(refused("its directory is not under an allowed directory")),
                Err(e) => Err(refused(&format!("its directory: {e}"))),
            }
        }
        Err(e) => Err(refused(&e.to_string())),
    }
}

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
    /// The last chunk's size, the next one's starting room.
    sizes: ChunkSizes,
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
            sizes: ChunkSizes::default(),
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
        if self.skip_partial {
            if let Some(nl) = memchr::memchr(b'\n', &self.buf) {
                self.buf.drain(..=nl);
                self.pos += nl as u64 + 1;
                self.skip_partial = false;
                self.offsets.insert(0, self.pos as i64);
            } else if self.buf.len() > MAX_LINE {
                // Still skipping: keep no more of the line than needed.
                self.pos += self.buf.len() as u64;
                self.buf.clear();
            }
        }
        Ok(n)
    }

    /// Reads up to `max` complete lines, waiting at most `wait` for the first one.
    pub fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Chunk>> {
        let deadline = Instant::now() + wait;
        let mut chunk = self.sizes.chunk(0, self.pos as i64);
        loop {
            if chunk.is_empty() {
                chunk.first_offset = self.pos as i64;
            }
            if !self.skip_partial {
                let used = take_lines(&self.buf, &mut chunk, max, Some(self.pos as i64));
                self.buf.drain(..used);
                self.pos += used as u64;
                // No newline in the first MAX_LINE bytes: emit them as they are.
                while chunk.len() < max && self.buf.len() >= MAX_LINE {
                    chunk.push_at(&self.buf[..MAX_LINE], self.pos as i64);
                    self.buf.drain(..MAX_LINE);
                    self.pos += MAX_LINE as u64;
                    let used = take_lines(&self.buf, &mut chunk, max, Some(self.pos as i64));
                    self.buf.drain(..used);
                    self.pos += used as u64;
                }
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
        let chunks = vec![chunk];
        self.sizes.note(&chunks);
        Ok(chunks)
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
    fn long_lines_are_emitted_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        // Longer than what is buffered when its first MAX_LINE bytes are.
        let long = "a".repeat(MAX_LINE + 2 * READ_SIZE + 10);
        append(&path, &format!("one\n{long}\ntwo\n"));
        let mut src = open(&path, StartFrom::Earliest, &BTreeMap::new());
        let lines = drain(&mut src, 100);
        let lens: Vec<usize> = lines.iter().map(|l| l.len()).collect();
        assert_eq!(lens, [3, MAX_LINE, 2 * READ_SIZE + 10, 3]);
        assert_eq!(lines[3], "two");
        // A line without a newline is not buffered past the bound either.
        append(&path, &long);
        let lines = drain(&mut src, 100);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert!(src.buf.len() < MAX_LINE);
    }

    #[test]
    fn only_regular_files_under_allowed_directories() {
        let root = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let roots = [root.path().to_path_buf()];
        let inside = root.path().join("in.csv");
        std::fs::write(&inside, "x\n").unwrap();
        let outside = other.path().join("out.csv");
        std::fs::write(&outside, "x\n").unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_string();
        let ok = |p: &str, wait: bool| allowed_file(p, &roots, wait);
        assert_eq!(
            ok(&s(&inside), false).unwrap(),
            inside.canonicalize().unwrap()
        );
        // A file stream may name a file that does not exist yet.
        let later = root.path().join("later.log");
        assert!(ok(&s(&later), false).is_err());
        assert!(ok(&s(&later), true).is_ok());
        let escape = format!("{}/../{}/out.csv", s(root.path()), s(other.path()));
        std::os::unix::fs::symlink(&outside, root.path().join("link.csv")).unwrap();
        std::os::unix::fs::symlink(other.path().join("nothing"), root.path().join("dangling"))
            .unwrap();
        let refused = [
            (s(&outside), false),
            ("/etc/passwd".into(), false),
            ("/dev/zero".into(), true),
            (escape, false),
            (s(&root.path().join("link.csv")), false),
            (s(&root.path().join("dangling")), true),
            (s(root.path()), true),
            (s(&other.path().join("later.log")), true),
            (format!("{}/..", s(root.path())), true),
            (String::new(), true),
        ];
        for (p, wait) in refused {
            let e = ok(&p, wait).unwrap_err();
            assert_eq!(e.status(), 400, "{p}: {e}");
            assert!(e.to_string().contains(&s(root.path())), "{p}: {e}");
        }
        let fifo = root.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        assert!(ok(&s(&fifo), true).is_err());
        let e = allowed_file(&s(&inside), &[], false).unwrap_err();
        assert!(e.to_string().contains("--allow-files"), "{e}");
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
