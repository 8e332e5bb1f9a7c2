//! A JSON-lines connection, as both clients hold one: the stream, its bounded [`LineReader`]
//! and the [`Limits`] it was opened with.

use std::future::Future;
use std::path::Path;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::error::Result;
use crate::limits::Limits;
use crate::line::{Line, LineReader};
use crate::qmp::is_blank;

/// A stream of one JSON document per line.
#[derive(Debug)]
pub(crate) struct Channel<S> {
    pub(crate) stream: S,
    pub(crate) lines: LineReader,
    pub(crate) limits: Limits,
}

/// Connects to a QEMU socket within `limits.call_timeout` ([`crate::socket::connect`]) and
/// runs the client's `open` (its handshake) on it.
pub(crate) async fn connect<C, F, Fut>(path: &Path, limits: Limits, open: F) -> Result<C>
where
    F: FnOnce(UnixStream, Limits) -> Fut,
    Fut: Future<Output = Result<C>>,
{
    let stream = crate::socket::connect(path, limits).await?;
    open(stream, limits).await
}

impl<S: AsyncRead + AsyncWrite + Unpin> Channel<S> {
    /// Writes a whole request and flushes it.
    pub(crate) async fn send(&mut self, request: &[u8]) -> Result<()> {
        self.stream.write_all(request).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// The next line, blank or not.
    pub(crate) async fn read_line(&mut self) -> Result<Line> {
        self.lines.read_line(&mut self.stream).await
    }

    /// The next line that is not blank.
    pub(crate) async fn next_line(&mut self) -> Result<Line> {
        loop {
            let line = self.read_line().await?;
            if !is_blank(&line.bytes) {
                return Ok(line);
            }
            self.lines.recycle(line.bytes);
        }
    }
}

/// For the clients' tests: `open` against a peer that never answers fails with a timeout, well
/// within 2 s.
#[cfg(test)]
pub(crate) async fn assert_times_out<T: std::fmt::Debug>(open: impl Future<Output = Result<T>>) {
    let started = std::time::Instant::now();
    let err = open.await.unwrap_err();
    assert!(matches!(err, crate::Error::Timeout { .. }), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}
