//! A VM's monitor or agent socket, as a scrape uses it: connect (or take the pooled connection
//! with `--qmp.persistent`), run the scrape's calls, keep the connection only if those calls left
//! it in a known state, and reconnect once, within the scrape, when a pooled connection turns out
//! closed. Written once for QMP and the guest agent.
//!
//! Every step is bounded by the VM deadline; a connection whose call did not complete is
//! dropped, never reused.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use kvmio_qemu::{Error as QemuError, Limits};
use tokio::net::UnixStream;
use tokio::time::{timeout_at, Instant};

use crate::config::Config;
use crate::errors::chain;

/// A client that speaks over a Unix socket once its handshake is done.
pub(crate) trait SocketClient: Sized + Send {
    /// "QMP", "guest agent": for messages.
    const NAME: &'static str;
    /// The handshake's name in messages ("QMP handshake", "guest-sync-delimited").
    const HANDSHAKE: &'static str;
    /// What a scrape's calls timing out is called.
    const CALLS_TIMED_OUT: &'static str;
    /// The longest reply line accepted.
    const MAX_LINE_BYTES: usize;

    /// Runs the handshake on a connected stream.
    fn handshake(
        stream: UnixStream,
        limits: Limits,
    ) -> impl Future<Output = kvmio_qemu::Result<Self>> + Send;
}

/// A socket's connection between scrapes (`--qmp.persistent`) and the PID of the last peer.
#[derive(Debug)]
pub(crate) struct Pooled<C> {
    conn: Option<(C, Option<u32>)>,
    peer: Option<u32>,
}

impl<C> Default for Pooled<C> {
    fn default() -> Self {
        Pooled {
            conn: None,
            peer: None,
        }
    }
}

impl<C> Pooled<C> {
    /// Whether a connection is kept.
    pub(crate) fn is_some(&self) -> bool {
        self.conn.is_some()
    }

    /// The PID of the last peer connected to (also when its handshake or calls failed).
    pub(crate) fn peer(&self) -> Option<u32> {
        self.peer
    }
}

/// Whether an error means the connection is unusable (and a pooled one should be replaced).
fn connection_broken(e: &QemuError) -> bool {
    matches!(e, QemuError::Closed | QemuError::Io(_))
}

/// Time left until `deadline`, at least 1 ms (a zero timeout would fail at once, confusingly).
pub(crate) fn until(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

fn peer_pid(stream: &UnixStream) -> Option<u32> {
    stream
        .peer_cred()
        .ok()
        .and_then(|c| c.pid())
        .and_then(|p| u32::try_from(p).ok())
        .filter(|&p| p > 0)
}

/// Connects a Unix socket within `deadline` and returns it with its peer's PID.
pub(crate) async fn connect_unix(
    path: &Path,
    deadline: Instant,
) -> Result<(UnixStream, Option<u32>), QemuError> {
    match timeout_at(deadline, UnixStream::connect(path)).await {
        Ok(Ok(s)) => {
            let pid = peer_pid(&s);
            Ok((s, pid))
        }
        Ok(Err(source)) => Err(QemuError::Connect {
            path: path.to_owned(),
            source,
        }),
        Err(_) => Err(QemuError::Timeout {
            what: format!("a connection to {}", path.display()),
        }),
    }
}

/// A connection in use for one scrape.
#[derive(Debug)]
pub(crate) struct Conn<C> {
    pub client: C,
    /// The peer's PID.
    pub pid: Option<u32>,
    /// Taken from the pool (not connected for this scrape).
    reused: bool,
}

/// What to do after a scrape's calls on a connection.
#[derive(Debug)]
pub(crate) enum Step<T> {
    /// The scrape's answer (the connection is pooled or dropped already).
    Done(Result<T, String>),
    /// The pooled connection was broken: connect anew and call again.
    Retry,
}

/// The connection for this scrape's calls: the pooled one (`--qmp.persistent`), else a new
/// one (connect and handshake, bounded by `deadline`).
pub(crate) async fn acquire<C: SocketClient>(
    path: &Path,
    pooled: &mut Pooled<C>,
    config: &Config,
    deadline: Instant,
) -> Result<Conn<C>, String> {
    if !config.qmp_persistent {
        pooled.conn = None;
    }
    if let Some((client, pid)) = pooled.conn.take() {
        return Ok(Conn {
            client,
            pid,
            reused: true,
        });
    }
    // A pooled connection lives on across scrapes: its per-call bound is the scrape timeout;
    // every call is bounded by this scrape's deadline as well.
    let call_timeout = if config.qmp_persistent {
        config.scrape_timeout
    } else {
        until(deadline)
    };
    let limits = Limits::DEFAULT
        .with_call_timeout(call_timeout)
        .with_max_line_bytes(C::MAX_LINE_BYTES);
    let (stream, pid) = connect_unix(path, deadline).await.map_err(|e| chain(&e))?;
    pooled.peer = pid;
    match timeout_at(deadline, C::handshake(stream, limits)).await {
        Ok(Ok(client)) => Ok(Conn {
            client,
            pid,
            reused: false,
        }),
        Ok(Err(e)) => Err(format!("{}: {}", C::HANDSHAKE, chain(&e))),
        Err(_) => Err(format!("{} timed out", C::HANDSHAKE)),
    }
}

/// After the calls: `result` is their value and whether the connection may be kept, or
/// `Err(Some(e))` (a failed call) or `Err(None)` (the deadline). Pools the connection when
/// allowed; asks for one retry when a pooled connection turned out broken.
pub(crate) fn release<C: SocketClient, T>(
    path: &Path,
    pooled: &mut Pooled<C>,
    config: &Config,
    conn: Conn<C>,
    result: Result<(T, bool), Option<QemuError>>,
) -> Step<T> {
    pooled.peer = conn.pid;
    match result {
        Ok((value, keep)) => {
            if keep && config.qmp_persistent {
                pooled.conn = Some((conn.client, conn.pid));
            }
            Step::Done(Ok(value))
        }
        Err(Some(e)) if conn.reused && connection_broken(&e) => {
            tracing::debug!(
                socket = %path.display(),
                "pooled {} connection broken ({}); reconnecting",
                C::NAME,
                chain(&e)
            );
            Step::Retry
        }
        Err(Some(e)) => Step::Done(Err(chain(&e))),
        Err(None) => Step::Done(Err(C::CALLS_TIMED_OUT.to_owned())),
    }
}

/// A scrape's calls on one VM socket, for [`with_connection`].
pub(crate) trait Calls<C> {
    /// What the calls learn.
    type Out;

    /// Runs the calls on `client` (whose peer is `pid`): their answer and whether the
    /// connection may be kept, or `Err(Some(e))` (a failed call) / `Err(None)` (the deadline).
    fn run(
        &mut self,
        client: &mut C,
        pid: Option<u32>,
    ) -> impl Future<Output = Result<(Self::Out, bool), Option<QemuError>>> + Send;
}

/// Runs `calls` on the VM's connection ([`acquire`], then [`release`]): once, and once more on
/// a new connection when the pooled one turned out broken.
pub(crate) async fn with_connection<C: SocketClient, K: Calls<C>>(
    path: &Path,
    pooled: &mut Pooled<C>,
    config: &Config,
    deadline: Instant,
    mut calls: K,
) -> Result<K::Out, String> {
    for _ in 0..2 {
        let mut c = acquire(path, pooled, config, deadline).await?;
        let result = calls.run(&mut c.client, c.pid).await;
        match release(path, pooled, config, c, result) {
            Step::Done(r) => return r,
            Step::Retry => continue,
        }
    }
    // Even the retry asked for a retry (cannot happen: a new connection is not retried): a
    // plain error rather than a panic.
    Err(format!("{} connection failed twice", C::NAME))
}
