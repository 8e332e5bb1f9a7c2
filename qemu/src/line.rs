//! A line reader that never buffers more than a fixed number of bytes.
//!
//! Both protocols send one JSON document per line. QEMU is trusted more than a guest, but neither
//! may make us allocate without bound: a peer that sends an endless line (no `\n`) gets
//! [`Error::LineTooLong`] once `max_line_bytes` have arrived, and the reader then skips the rest
//! of that line on the next call, so the connection can recover (the guest agent resynchronises
//! after such an error instead of reconnecting).
//!
//! The guest agent's `guest-sync-delimited` reply is preceded by a 0xFF byte, which never occurs
//! in UTF-8 JSON. In [`LineReader::with_sentinel`] mode a 0xFF byte drops whatever partial line
//! came before it (as the QGA documentation asks of clients) and marks the next line as
//! [`Line::after_sentinel`].

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, Result};

/// The byte the guest agent sends before the reply to `guest-sync-delimited`.
pub const SENTINEL: u8 = 0xFF;

/// How much is read from the socket at once, at most.
const CHUNK: usize = 8 * 1024;

/// One line, without its `\n` (and without a trailing `\r`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub bytes: Vec<u8>,
    /// A sentinel byte came after the previous line and before this one.
    pub after_sentinel: bool,
}

/// Splits a byte stream into bounded lines. It holds only the buffer; the stream is passed to
/// each call, so the owner can keep writing to the same stream.
#[derive(Debug)]
pub struct LineReader {
    max_line_bytes: usize,
    sentinel: bool,
    /// Bytes read but not yet returned. Never more than `max_line_bytes + 1` without a `\n`.
    buf: Vec<u8>,
    /// The current line went over the limit: skip input up to the next `\n` (or sentinel).
    discarding: bool,
    /// A sentinel was seen since the last returned line.
    saw_sentinel: bool,
    /// `buf[..scanned]` holds no `\n`: each byte is searched once, not once per read.
    scanned: usize,
}

impl LineReader {
    /// A reader for QMP: 0xFF bytes are ordinary (invalid) line content.
    pub fn new(max_line_bytes: usize) -> Self {
        LineReader {
            max_line_bytes: max_line_bytes.max(1),
            sentinel: false,
            buf: Vec::new(),
            discarding: false,
            saw_sentinel: false,
            scanned: 0,
        }
    }

    /// A reader for the guest agent: 0xFF resets the current line and marks the next one.
    pub fn with_sentinel(max_line_bytes: usize) -> Self {
        LineReader {
            sentinel: true,
            ..LineReader::new(max_line_bytes)
        }
    }

    /// The longest line accepted.
    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }

    /// Reads the next line.
    ///
    /// Cancel-safe: bytes already read stay buffered in `self` if the future is dropped (for
    /// example by a timeout), and the next call continues where this one stopped.
    ///
    /// Errors: [`Error::LineTooLong`] (the rest of that line is skipped by the next call),
    /// [`Error::Closed`] at end of stream (a partial last line is dropped), [`Error::Io`].
    pub async fn read_line<R: AsyncRead + Unpin + ?Sized>(&mut self, r: &mut R) -> Result<Line> {
        loop {
            if let Some(line) = self.take_buffered_line()? {
                return Ok(line);
            }
            // A line of max_line_bytes, a '\r' (not counted) and the '\n'.
            let room = self
                .max_line_bytes
                .saturating_add(2)
                .saturating_sub(self.buf.len())
                .clamp(1, CHUNK);
            let mut chunk = [0u8; CHUNK];
            let n = r.read(&mut chunk[..room]).await?;
            if n == 0 {
                return Err(Error::Closed);
            }
            self.push(&chunk[..n]);
        }
    }

    /// Appends freshly read bytes, applying sentinel and discard rules.
    fn push(&mut self, mut data: &[u8]) {
        if self.sentinel {
            if let Some(i) = data.iter().rposition(|&b| b == SENTINEL) {
                // Everything before the last sentinel is stale, including complete lines
                // that were not yet returned: the agent's reply to our sync comes after it.
                self.buf.clear();
                self.scanned = 0;
                self.discarding = false;
                self.saw_sentinel = true;
                data = &data[i + 1..];
            }
        }
        if self.discarding {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.discarding = false;
                    data = &data[i + 1..];
                }
                None => return,
            }
        }
        self.buf.extend_from_slice(data);
    }

    /// Returns a complete line from the buffer, or an error if the buffer holds more than a
    /// line's worth without a newline.
    fn take_buffered_line(&mut self) -> Result<Option<Line>> {
        let newline = self.buf[self.scanned..].iter().position(|&b| b == b'\n');
        if let Some(i) = newline.map(|i| i + self.scanned) {
            self.scanned = 0;
            let mut bytes: Vec<u8> = self.buf.drain(..=i).collect();
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
            if bytes.len() > self.max_line_bytes {
                return Err(Error::LineTooLong {
                    limit: self.max_line_bytes,
                });
            }
            let after_sentinel = std::mem::take(&mut self.saw_sentinel);
            return Ok(Some(Line {
                bytes,
                after_sentinel,
            }));
        }
        self.scanned = self.buf.len();
        // Without a newline yet, the buffer may hold a whole line plus the '\r' of its CRLF,
        // which does not count toward the limit.
        let over = self.buf.len() > self.max_line_bytes.saturating_add(1)
            || (self.buf.len() == self.max_line_bytes.saturating_add(1)
                && self.buf.last() != Some(&b'\r'));
        if over {
            self.buf.clear();
            self.scanned = 0;
            self.discarding = true;
            return Err(Error::LineTooLong {
                limit: self.max_line_bytes,
            });
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn lines_of(input: &[u8], limit: usize, sentinel: bool) -> Vec<Result<Line>> {
        let mut r = if sentinel {
            LineReader::with_sentinel(limit)
        } else {
            LineReader::new(limit)
        };
        let mut src = input;
        let mut out = Vec::new();
        loop {
            match r.read_line(&mut src).await {
                Err(Error::Closed) => return out,
                other => out.push(other),
            }
        }
    }

    fn text(l: &Result<Line>) -> &str {
        std::str::from_utf8(&l.as_ref().unwrap().bytes).unwrap()
    }

    #[tokio::test]
    async fn splits_lines_and_strips_crlf() {
        let out = lines_of(b"{\"a\":1}\r\n{}\n\npartial", 64, false).await;
        assert_eq!(out.len(), 3);
        assert_eq!(text(&out[0]), "{\"a\":1}");
        assert_eq!(text(&out[1]), "{}");
        assert_eq!(text(&out[2]), "");
    }

    #[tokio::test]
    async fn long_line_is_an_error_then_the_reader_recovers() {
        let mut input = vec![b'x'; 1000];
        input.extend_from_slice(b"\nok\n");
        let out = lines_of(&input, 100, false).await;
        assert!(matches!(out[0], Err(Error::LineTooLong { limit: 100 })));
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(text(&out[1]), "ok");
    }

    #[tokio::test]
    async fn the_cr_of_crlf_does_not_count_toward_the_limit() {
        let out = lines_of(b"abc\r\nabcd\r\nab\r\r\n", 3, false).await;
        assert_eq!(text(&out[0]), "abc");
        assert!(matches!(out[1], Err(Error::LineTooLong { limit: 3 })));
        // Only the last '\r' is the CRLF's: one before it is content.
        assert_eq!(text(&out[2]), "ab\r");
        assert_eq!(out.len(), 3);
    }

    #[tokio::test]
    async fn a_line_of_exactly_the_limit_is_accepted() {
        let mut input = vec![b'y'; 100];
        input.push(b'\n');
        let out = lines_of(&input, 100, false).await;
        assert_eq!(out[0].as_ref().unwrap().bytes.len(), 100);
    }

    #[tokio::test]
    async fn endless_line_fails_without_buffering_it() {
        let (mut peer, mut ours) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            let junk = vec![b'['; 64 * 1024];
            // Stops when the reader side is dropped.
            while peer.write_all(&junk).await.is_ok() {}
        });
        let mut r = LineReader::new(1024 * 1024);
        let err = r.read_line(&mut ours).await.unwrap_err();
        assert!(matches!(err, Error::LineTooLong { .. }), "{err}");
        assert!(r.buf.capacity() <= 2 * 1024 * 1024 + CHUNK);
        drop(ours);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn sentinel_drops_stale_input_and_marks_the_next_line() {
        let input = b"{\"return\": 1}\n{\"err\xff{\"return\": 7}\n{\"return\": 8}\n";
        let out = lines_of(input, 64, true).await;
        assert_eq!(out.len(), 2);
        assert_eq!(text(&out[0]), "{\"return\": 7}");
        assert!(out[0].as_ref().unwrap().after_sentinel);
        assert!(!out[1].as_ref().unwrap().after_sentinel);
    }

    #[tokio::test]
    async fn sentinel_ends_discarding_of_a_long_line() {
        let mut input = vec![b'x'; 500];
        input.push(SENTINEL);
        input.extend_from_slice(b"{}\n");
        let out = lines_of(&input, 100, true).await;
        assert!(matches!(out[0], Err(Error::LineTooLong { .. })));
        assert_eq!(text(&out[1]), "{}");
        assert!(out[1].as_ref().unwrap().after_sentinel);
    }

    #[tokio::test]
    async fn without_sentinel_mode_ff_is_plain_content() {
        let out = lines_of(b"a\xffb\n", 64, false).await;
        assert_eq!(out[0].as_ref().unwrap().bytes, b"a\xffb");
    }

    #[tokio::test]
    async fn byte_at_a_time_input_works() {
        let (mut peer, mut ours) = tokio::io::duplex(1);
        tokio::spawn(async move {
            peer.write_all(b"hello\nworld\n").await.unwrap();
        });
        let mut r = LineReader::new(16);
        assert_eq!(r.read_line(&mut ours).await.unwrap().bytes, b"hello");
        assert_eq!(r.read_line(&mut ours).await.unwrap().bytes, b"world");
        assert!(matches!(r.read_line(&mut ours).await, Err(Error::Closed)));
    }
}
