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
//!
//! Memory: a returned line takes the reader's buffer with it (no copy), and what the reader
//! keeps afterwards is only the input after that line, so a connection does not hold on to a
//! large buffer between replies. Readers of many connections can share a [`LineBudget`]: a line
//! that grows past [`LineBudget::THRESHOLD`] first takes a whole line's worth of the budget, and
//! gives it back when the line leaves the reader, so at most the budget's worth of large lines
//! is buffered at once across all of them; the others wait (their peers' writes wait in the
//! kernel's socket buffers) within their callers' timeouts.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// Bytes that large lines may hold at once, shared by the [`LineReader`]s of many connections.
#[derive(Debug, Clone)]
pub struct LineBudget {
    /// One permit per KiB.
    kib: Arc<Semaphore>,
    total_kib: u32,
    /// Buffers of earlier large lines, handed back with [`LineReader::recycle`], for the next
    /// ones (at most the budget's worth): a large line is read into memory that is already
    /// there, and the heap is not fragmented by a line-sized block freed at every reply.
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl LineBudget {
    /// A line is charged to the budget once it holds this many bytes; shorter lines (honest
    /// replies: about 400 bytes a guest disk) never wait.
    pub const THRESHOLD: usize = 64 * 1024;

    /// A budget of `bytes` (at least one KiB).
    pub fn new(bytes: usize) -> Self {
        let total_kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX / 2).max(1);
        LineBudget {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            spare: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Bytes of the budget not held by a line now.
    pub fn available(&self) -> usize {
        self.kib.available_permits().saturating_mul(1024)
    }

    /// A spare buffer of at least `capacity` bytes, else a new one.
    fn buffer(&self, capacity: usize) -> Vec<u8> {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        match spare.iter().position(|b| b.capacity() >= capacity) {
            Some(i) => spare.swap_remove(i),
            None => Vec::with_capacity(capacity),
        }
    }

    /// Keeps `buf` for a later large line, if the spares stay within the budget.
    fn keep(&self, mut buf: Vec<u8>) {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        let kept: usize = spare.iter().map(Vec::capacity).sum();
        if kept.saturating_add(buf.capacity()) <= (self.total_kib as usize).saturating_mul(1024) {
            buf.clear();
            spare.push(buf);
        }
    }

    /// Waits for room for a line of up to `max_line_bytes` (the whole budget if that is more).
    /// `None` only if the semaphore were closed, which nothing does.
    async fn acquire(&self, max_line_bytes: usize) -> Option<OwnedSemaphorePermit> {
        let want = u32::try_from(max_line_bytes.saturating_add(2).div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.total_kib);
        self.kib.clone().acquire_many_owned(want).await.ok()
    }
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
    /// Shared with other readers: large lines wait for room in it.
    budget: Option<LineBudget>,
    /// The budget the current large line holds.
    held: Option<OwnedSemaphorePermit>,
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
            budget: None,
            held: None,
        }
    }

    /// Charges lines longer than [`LineBudget::THRESHOLD`] to `budget` (see the module docs).
    pub fn set_budget(&mut self, budget: Option<LineBudget>) {
        self.budget = budget;
        self.held = None;
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
            if self.held.is_none() && self.buf.len() >= LineBudget::THRESHOLD {
                // A whole line's room at once (pages are only resident once written), not a
                // doubling copy per growth: a spare buffer of the budget, or a new one.
                let line = self.max_line_bytes.saturating_add(2).min(CHUNK * 256);
                if let Some(budget) = &self.budget {
                    self.held = budget.acquire(self.max_line_bytes).await;
                    let mut big = budget.buffer(line);
                    big.extend_from_slice(&self.buf);
                    self.buf = big;
                } else {
                    self.buf.reserve_exact(line.saturating_sub(self.buf.len()));
                }
            }
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
                self.release();
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

    /// Hands a returned line's buffer back when it came from the budget's spares (a large
    /// line), for the next large line of any reader sharing the budget.
    pub fn recycle(&mut self, line: Vec<u8>) {
        if let Some(budget) = &self.budget {
            if line.capacity() > LineBudget::THRESHOLD {
                budget.keep(line);
            }
        }
    }

    /// Drops the buffered input and its budget; its memory goes back to the spares.
    fn release(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.recycle(buf);
        self.scanned = 0;
        self.held = None;
    }

    /// Returns a complete line from the buffer, or an error if the buffer holds more than a
    /// line's worth without a newline.
    fn take_buffered_line(&mut self) -> Result<Option<Line>> {
        let newline = self.buf[self.scanned..].iter().position(|&b| b == b'\n');
        if let Some(i) = newline.map(|i| i + self.scanned) {
            self.scanned = 0;
            let mut bytes = if i >= LineBudget::THRESHOLD {
                // A large line takes the buffer; the reader keeps a copy of what came after.
                let rest = self.buf.split_off(i + 1);
                std::mem::replace(&mut self.buf, rest)
            } else {
                self.buf.drain(..=i).collect()
            };
            if self.buf.len() < LineBudget::THRESHOLD {
                self.held = None;
            }
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
            self.release();
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
    use std::time::Duration;
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

    /// A reader sharing `budget`, for lines of up to 512 KiB.
    fn budgeted(budget: &LineBudget) -> LineReader {
        let mut r = LineReader::new(512 * 1024);
        r.set_budget(Some(budget.clone()));
        r
    }

    #[tokio::test]
    async fn a_large_line_holds_the_budget_until_it_is_returned() {
        let budget = LineBudget::new(2 * 1024 * 1024);
        let (mut peer, mut ours) = tokio::io::duplex(1024 * 1024);
        let mut r = budgeted(&budget);
        peer.write_all(b"small\n").await.unwrap();
        assert_eq!(r.read_line(&mut ours).await.unwrap().bytes, b"small");
        assert_eq!(budget.available(), 2 * 1024 * 1024, "a small line is free");
        peer.write_all(&vec![b'x'; 300 * 1024]).await.unwrap();
        // The line is not complete: the read waits, holding a whole line's room.
        let wait = tokio::time::timeout(Duration::from_millis(100), r.read_line(&mut ours));
        assert!(wait.await.is_err());
        assert_eq!(budget.available(), 2 * 1024 * 1024 - 513 * 1024);
        peer.write_all(b"\nnext\n").await.unwrap();
        let line = r.read_line(&mut ours).await.unwrap();
        assert_eq!(line.bytes.len(), 300 * 1024);
        assert_eq!(
            budget.available(),
            2 * 1024 * 1024,
            "given back with the line"
        );
        // The reader kept only what came after the line, not a line-sized buffer.
        assert!(
            r.buf.capacity() < LineBudget::THRESHOLD,
            "{}",
            r.buf.capacity()
        );
        let big = line.bytes.as_ptr();
        r.recycle(line.bytes);
        assert_eq!(r.read_line(&mut ours).await.unwrap().bytes, b"next");
        // The next large line is read into the recycled buffer.
        peer.write_all(&vec![b'y'; 200 * 1024]).await.unwrap();
        peer.write_all(b"\n").await.unwrap();
        let again = r.read_line(&mut ours).await.unwrap();
        assert_eq!(again.bytes.len(), 200 * 1024);
        assert_eq!(again.bytes.as_ptr(), big);
    }

    #[tokio::test]
    async fn a_second_large_line_waits_for_the_first_to_leave() {
        // Room for one line of 512 KiB.
        let budget = LineBudget::new(600 * 1024);
        let (mut peer_a, mut a_in) = tokio::io::duplex(1024 * 1024);
        let (mut peer_b, mut b_in) = tokio::io::duplex(1024 * 1024);
        let (mut a, mut b) = (budgeted(&budget), budgeted(&budget));
        peer_a.write_all(&vec![b'a'; 100 * 1024]).await.unwrap();
        peer_b.write_all(&vec![b'b'; 100 * 1024]).await.unwrap();
        let short = Duration::from_millis(100);
        assert!(tokio::time::timeout(short, a.read_line(&mut a_in))
            .await
            .is_err());
        assert!(a.held.is_some());
        // B stops at the threshold: the budget is A's.
        assert!(tokio::time::timeout(short, b.read_line(&mut b_in))
            .await
            .is_err());
        assert!(b.held.is_none());
        assert!(
            b.buf.len() <= LineBudget::THRESHOLD + CHUNK,
            "{}",
            b.buf.len()
        );
        peer_a.write_all(b"\n").await.unwrap();
        peer_b.write_all(b"\n").await.unwrap();
        assert_eq!(
            a.read_line(&mut a_in).await.unwrap().bytes.len(),
            100 * 1024
        );
        assert_eq!(
            b.read_line(&mut b_in).await.unwrap().bytes.len(),
            100 * 1024
        );
        assert_eq!(budget.available(), 600 * 1024);
    }

    #[tokio::test]
    async fn an_over_long_line_gives_its_budget_back() {
        let budget = LineBudget::new(1024 * 1024);
        let mut r = LineReader::new(100 * 1024);
        r.set_budget(Some(budget.clone()));
        let mut input = vec![b'z'; 200 * 1024];
        input.extend_from_slice(b"\nok\n");
        let mut src = input.as_slice();
        assert!(matches!(
            r.read_line(&mut src).await,
            Err(Error::LineTooLong { .. })
        ));
        assert_eq!(budget.available(), 1024 * 1024);
        assert_eq!(r.read_line(&mut src).await.unwrap().bytes, b"ok");
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
