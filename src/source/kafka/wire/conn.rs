//! One connection to a broker: requests sent and their answers read, with
//! the versions both sides speak.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

use super::{
    ANSWER_TIMEOUT, CONNECT_TIMEOUT, FETCH_VERSION, LIST_OFFSETS_VERSION, MAX_ANSWER, STOP_CHECK,
};

/// An answer that could not be read or a request that could not be made.
fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, e.to_string())
}

/// One connection to a broker, its versions agreed.
pub(super) struct Conn {
    stream: TcpStream,
    client_id: StrBytes,
    correlation: i32,
    pub(super) fetch_version: i16,
    pub(super) list_offsets_version: i16,
}

impl Conn {
    /// Connects to `addr` and agrees on versions.
    pub(super) fn open(
        addr: &str,
        client_id: &str,
        stopped: &dyn Fn() -> bool,
    ) -> std::io::Result<Conn> {
        let mut last = std::io::Error::new(ErrorKind::NotFound, format!("{addr}: no address"));
        let mut stream = None;
        for sa in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let stream = stream.ok_or(last)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(STOP_CHECK))?;
        let mut c = Conn {
            stream,
            client_id: StrBytes::from_string(client_id.to_string()),
            correlation: 0,
            fetch_version: 0,
            list_offsets_version: 0,
        };
        let versions: ApiVersionsResponse = c.call(
            ApiKey::ApiVersions,
            0,
            &ApiVersionsRequest::default(),
            stopped,
        )?;
        let highest = |key: ApiKey, ours: i16| {
            (versions.api_keys.iter())
                .find(|k| k.api_key == key as i16)
                .map(|k| k.max_version.min(ours))
        };
        let old = |what: &str| {
            std::io::Error::other(format!("{addr} does not speak {what} recent enough"))
        };
        c.fetch_version = highest(ApiKey::Fetch, FETCH_VERSION)
            .filter(|v| *v >= 4)
            .ok_or_else(|| old("Fetch"))?;
        c.list_offsets_version = highest(ApiKey::ListOffsets, LIST_OFFSETS_VERSION)
            .filter(|v| *v >= 1)
            .ok_or_else(|| old("ListOffsets"))?;
        Ok(c)
    }

    /// Sends `req` and reads its answer.
    pub(super) fn call<Q, A>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Q,
        stopped: &dyn Fn() -> bool,
    ) -> std::io::Result<A>
    where
        Q: Encodable + HeaderVersion,
        A: Decodable + HeaderVersion,
    {
        self.correlation = self.correlation.wrapping_add(1);
        let mut header = RequestHeader::default();
        header.request_api_key = key as i16;
        header.request_api_version = version;
        header.correlation_id = self.correlation;
        header.client_id = Some(self.client_id.clone());
        let mut buf = BytesMut::with_capacity(256);
        buf.put_i32(0);
        header
            .encode(&mut buf, Q::header_version(version))
            .map_err(invalid)?;
        req.encode(&mut buf, version).map_err(invalid)?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&buf)?;
        let mut frame = self.read_frame(stopped)?;
        let answer =
            ResponseHeader::decode(&mut frame, A::header_version(version)).map_err(invalid)?;
        if answer.correlation_id != self.correlation {
            return Err(std::io::Error::new(
                ErrorKind::InvalidData,
                "an answer to another request",
            ));
        }
        A::decode(&mut frame, version).map_err(invalid)
    }

    /// Reads one answer's bytes, giving up after [`ANSWER_TIMEOUT`] or
    /// when `stopped`.
    fn read_frame(&mut self, stopped: &dyn Fn() -> bool) -> std::io::Result<Bytes> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut size = Vec::with_capacity(4);
        self.read_to(&mut size, 4, deadline, stopped)?;
        let n = i32::from_be_bytes(size[..4].try_into().expect("4 bytes"));
        if !(0..=MAX_ANSWER).contains(&n) {
            return Err(std::io::Error::new(
                ErrorKind::InvalidData,
                format!("an answer of {n} bytes"),
            ));
        }
        let mut body = Vec::with_capacity(n as usize);
        self.read_to(&mut body, n as usize, deadline, stopped)?;
        Ok(Bytes::from(body))
    }

    /// Reads into `buf` until it holds `n` bytes (reading into its spare
    /// room, not zeroed first).
    fn read_to(
        &mut self,
        buf: &mut Vec<u8>,
        n: usize,
        deadline: Instant,
        stopped: &dyn Fn() -> bool,
    ) -> std::io::Result<()> {
        while buf.len() < n {
            let want = (n - buf.len()) as u64;
            match (&mut self.stream).take(want).read_to_end(buf) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if stopped() {
                        return Err(std::io::Error::other("stopped"));
                    }
                    if Instant::now() > deadline {
                        return Err(std::io::Error::new(
                            ErrorKind::TimedOut,
                            "no answer within 30 s",
                        ));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
