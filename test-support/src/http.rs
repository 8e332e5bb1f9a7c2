//! Blocking HTTP/1.1 `GET`s on loopback, as a scraper sends them, and a free port.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// `GET path` from `addr` (`host:port`) with `Connection: close`: (status, body), or the I/O
/// error (nothing listening yet, no complete answer within `timeout`).
pub fn try_http_get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8(raw).map_err(|_| invalid("answer is not UTF-8"))?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("no status code"))?;
    Ok((status, body.to_owned()))
}

/// [`try_http_get`] that panics on an I/O error: (status, body, elapsed).
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> (u16, String, Duration) {
    let t0 = Instant::now();
    let (status, body) = try_http_get(addr, path, timeout)
        .unwrap_or_else(|e| panic!("GET {path}: no complete answer within {timeout:?}: {e}"));
    (status, body, t0.elapsed())
}

/// A free loopback port (bound, then released: the server under test binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
