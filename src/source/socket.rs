//! The socket source: a TCP client reading newline-delimited records, like
//! Spark's `socketTextStream`.
//!
//! The query connects to `host:port` and reads lines; each line (without its
//! `\n` or `\r\n`) is one record of partition 0. When the connection drops or
//! cannot be made, the source reconnects with exponential backoff (100 ms
//! doubling up to 5 s). A line cut off by a dropped connection is still
//! emitted, as a reader of the stream would see it.
//!
//! Offsets count the lines read since the source was started. A socket
//! cannot be replayed, so a restarted query starts fresh with whatever the
//! server sends next: results are at-most-once across restarts (lines
//! received after the last checkpoint are lost), exactly-once while running.
//!
//! ```no_run
//! use std::time::Duration;
//! use runnel::source::socket::SocketSource;
//! let mut src = SocketSource::connect("127.0.0.1", 9999);
//! for chunk in src.poll(10_000, Duration::from_millis(100)).unwrap() {
//!     for line in chunk.payloads() {
//!         println!("{}", String::from_utf8_lossy(line));
//!     }
//! }
//! ```

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::{Chunk, ChunkSizes, MAX_LINE, take_lines};
use crate::error::Result;

/// First reconnection delay.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnection delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest time one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A TCP client reading lines from one server.
pub struct SocketSource {
    host: String,
    port: u16,
    conn: Option<TcpStream>,
    /// Bytes read but not yet emitted (a partial line).
    buf: Vec<u8>,
    /// Lines read so far.
    next: i64,
    offsets: BTreeMap<i32, i64>,
    /// The last chunk's size, the next one's starting room.
    sizes: ChunkSizes,
    backoff: Duration,
    next_attempt: Instant,
    /// Whether the last attempt failed and was logged.
    failing: bool,
}

impl SocketSource {
    /// A source for `host:port`; the first connection attempt happens at
    /// the first [`poll`](Self::poll).
    pub fn connect(host: &str, port: u16) -> Self {
        SocketSource {
            host: host.to_string(),
            port,
            conn: None,
            buf: Vec::new(),
            next: 0,
            offsets: BTreeMap::new(),
            sizes: ChunkSizes::default(),
            backoff: BACKOFF_MIN,
            next_attempt: Instant::now(),
            failing: false,
        }
    }

    /// Lines read so far, as partition 0's next offset (empty before the first line).
    pub fn offsets(&self) -> &BTreeMap<i32, i64> {
        &self.offsets
    }

    /// Whether a connection is open.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    fn try_connect(&mut self) {
        let addrs = match (self.host.as_str(), self.port).to_socket_addrs() {
            Ok(a) => a.collect::<Vec<_>>(),
            Err(e) => return self.failed(&e.to_string()),
        };
        let mut last_err = format!("{} resolves to no address", self.host);
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    tracing::info!("socket source connected to {}:{}", self.host, self.port);
                    self.conn = Some(s);
                    self.backoff = BACKOFF_MIN;
                    self.failing = false;
                    return;
                }
                Err(e) => last_err = e.to_string(),
            }
        }
        self.failed(&last_err);
    }

    fn failed(&mut self, why: &str) {
        if !self.failing {
            tracing::warn!(
                "socket source {}:{}: {why}; retrying with backoff",
                self.host,
                self.port
            );
        }
        self.failing = true;
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    fn disconnected(&mut self, why: &str) {
        tracing::warn!(
            "socket source {}:{}: {why}; reconnecting",
            self.host,
            self.port
        );
        self.conn = None;
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Reads what the connection has, waiting at most `timeout` (`None`:
    /// not at all). Returns false when nothing could be read.
    fn read_some(&mut self, timeout: Option<Duration>) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        let set = match timeout {
            Some(t) => conn
                .set_nonblocking(false)
                .and_then(|_| conn.set_read_timeout(Some(t.max(Duration::from_millis(1))))),
            None => conn.set_nonblocking(true),
        };
        if let Err(e) = set {
            self.disconnected(&e.to_string());
            return false;
        }
        let mut tmp = [0u8; 64 * 1024];
        match conn.read(&mut tmp) {
            Ok(0) => {
                // The server closed: its last line counts even without `\n`.
                if !self.buf.is_empty() {
                    self.buf.push(b'\n');
                }
                self.disconnected("connection closed by the server");
                true
            }
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                if self.buf.len() > MAX_LINE && !self.buf.contains(&b'\n') {
                    self.buf.push(b'\n');
                }
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                false
            }
            Err(e) => {
                if !self.buf.is_empty() {
                    self.buf.push(b'\n');
                }
                self.disconnected(&e.to_string());
                true
            }
        }
    }

    /// Reads up to `max` lines, waiting at most `wait` for the first one.
    pub fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Chunk>> {
        let deadline = Instant::now() + wait;
        let mut chunk = self.sizes.chunk(0, self.next);
        loop {
            let used = take_lines(&self.buf, &mut chunk, max, None);
            self.buf.drain(..used);
            if chunk.len() >= max {
                break;
            }
            if !chunk.is_empty() {
                // Take only what has already arrived.
                if !self.read_some(None) {
                    break;
                }
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if self.conn.is_none() {
                if now < self.next_attempt {
                    std::thread::sleep((self.next_attempt - now).min(deadline - now));
                    continue;
                }
                self.try_connect();
                continue;
            }
            if !self.read_some(Some(deadline - now)) && Instant::now() >= deadline {
                break;
            }
        }
        if chunk.is_empty() {
            return Ok(Vec::new());
        }
        self.next += chunk.len() as i64;
        self.offsets.insert(0, self.next);
        let chunks = vec![chunk];
        self.sizes.note(&chunks);
        Ok(chunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn lines_of(chunks: &[Chunk]) -> Vec<String> {
        chunks
            .iter()
            .flat_map(|c| c.payloads())
            .map(|p| String::from_utf8(p.to_vec()).unwrap())
            .collect()
    }

    /// Polls until `n` lines arrived or 5 s passed.
    fn read_n(src: &mut SocketSource, n: usize) -> (Vec<String>, Vec<i64>) {
        let mut got = Vec::new();
        let mut firsts = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < n && Instant::now() < deadline {
            let chunks = src.poll(1000, Duration::from_millis(50)).unwrap();
            firsts.extend(chunks.iter().map(|c| c.first_offset));
            got.extend(lines_of(&chunks));
        }
        (got, firsts)
    }

    #[test]
    fn reads_lines_and_reconnects() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"hello world\r\nsecond line\nthi").unwrap();
            s.flush().unwrap();
            std::thread::sleep(Duration::from_millis(200));
            s.write_all(b"rd\n\nfourth without newline").unwrap();
            drop(s);
            // The client comes back after the drop.
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"after reconnect\n").unwrap();
            std::thread::sleep(Duration::from_millis(500));
        });
        let mut src = SocketSource::connect("127.0.0.1", port);
        let (got, firsts) = read_n(&mut src, 6);
        assert_eq!(
            got,
            [
                "hello world",
                "second line",
                "third",
                "",
                "fourth without newline",
                "after reconnect"
            ]
        );
        assert_eq!(firsts[0], 0);
        assert_eq!(src.offsets().get(&0), Some(&6));
        server.join().unwrap();
    }

    #[test]
    fn partial_line_waits_for_its_newline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut src = SocketSource::connect("127.0.0.1", port);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"a b").unwrap();
            rx.recv().unwrap();
            s.write_all(b" c\n").unwrap();
            rx.recv().unwrap();
        });
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            assert!(src.poll(10, Duration::from_millis(50)).unwrap().is_empty());
        }
        assert!(src.is_connected());
        tx.send(()).unwrap();
        let (got, _) = read_n(&mut src, 1);
        assert_eq!(got, ["a b c"]);
        tx.send(()).unwrap();
        server.join().unwrap();
    }

    #[test]
    fn waits_for_the_server_and_respects_max() {
        // Reserve a port, then free it: nobody listens at first.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut src = SocketSource::connect("127.0.0.1", port);
        assert!(src.poll(10, Duration::from_millis(150)).unwrap().is_empty());
        assert!(!src.is_connected());
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            for i in 0..25 {
                writeln!(s, "line {i}").unwrap();
            }
            std::thread::sleep(Duration::from_millis(500));
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut sizes = Vec::new();
        while sizes.iter().sum::<usize>() < 25 && Instant::now() < deadline {
            for c in src.poll(10, Duration::from_millis(50)).unwrap() {
                sizes.push(c.len());
            }
        }
        assert_eq!(sizes.iter().sum::<usize>(), 25);
        assert!(sizes.iter().all(|&n| n <= 10));
        assert_eq!(src.offsets().get(&0), Some(&25));
        server.join().unwrap();
    }
}
