//! A peer played from the fuzz input: reads come from the input, in pieces whose size the input's
//! first byte chooses (so that lines split across reads are covered), and writes are accepted
//! and dropped. At the end of the input the peer closes, so no call waits forever.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug)]
pub struct Script<'a> {
    data: &'a [u8],
    piece: usize,
}

impl<'a> Script<'a> {
    /// The first byte chooses the read size (1 to 256 bytes, 0 = 8 KiB); the rest is what the
    /// peer sends.
    pub fn new(input: &'a [u8]) -> Self {
        match input.split_first() {
            Some((&0, rest)) => Script {
                data: rest,
                piece: 8192,
            },
            Some((&n, rest)) => Script {
                data: rest,
                piece: usize::from(n),
            },
            None => Script {
                data: input,
                piece: 8192,
            },
        }
    }
}

impl AsyncRead for Script<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.piece.min(buf.remaining()).min(self.data.len());
        let (now, later) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = later;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Script<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
