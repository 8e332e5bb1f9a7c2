//! kvmio-nbd: an NBD server over a unix socket that simulates a disk with a volatile write cache,
//! so that the crash tester can simulate a host power loss precisely.
//!
//! The server serves one export, backed by a regular file (the durable layer). Writes land in an
//! in-memory volatile layer; reads see the volatile layer over the backing file. `NBD_CMD_FLUSH`
//! writes every volatile write received before it to the backing file and `fdatasync`s it; a write
//! with `NBD_CMD_FLAG_FUA` is written and synced by itself before it is acknowledged. At a
//! simulated power failure ([`ServerHandle::power_fail`]) the volatile layer is discarded, or a
//! seeded random subset of the unflushed writes is persisted, optionally torn at 512-byte sector
//! granularity (see [`PowerFailMode`]).
//!
//! Protocol: fixed newstyle handshake with `NBD_OPT_GO`, `NBD_OPT_INFO` (`NBD_INFO_EXPORT`,
//! `NBD_INFO_BLOCK_SIZE` when asked), `NBD_OPT_EXPORT_NAME`, `NBD_OPT_LIST` and `NBD_OPT_ABORT`;
//! structured replies are refused (simple replies only); every other option gets
//! `NBD_REP_ERR_UNSUP`. Transmission flags: `HAS_FLAGS`, `SEND_FLUSH`, `SEND_FUA`,
//! `SEND_WRITE_ZEROES`. Commands: `READ`, `WRITE` (FUA), `WRITE_ZEROES` (FUA, NO_HOLE), `FLUSH`,
//! `DISC`. Requests are processed in order, pipelined requests are read from one buffer and the
//! replies are written in batches.
//!
//! Errors are NBD error replies and the connection carries on: reads out of range or longer than
//! [`MAX_PAYLOAD`] get `EINVAL`, writes out of range `ENOSPC` (as the spec asks), oversized writes
//! `EINVAL` (their payload is read and dropped to stay in sync), unknown commands or flags
//! `EINVAL`, backing-file failures `EIO`/`ENOSPC`. Only a broken stream (bad magic, a client that
//! hangs up) ends a connection; the server keeps accepting. A client that requested
//! `NBD_INFO_BLOCK_SIZE` (as QEMU does) is told 512/4096/32 MiB and must send sector-aligned
//! requests; other clients may send unaligned ones, which the server widens to whole sectors by
//! read-modify-write, so the volatile layer always works in 512-byte sectors.
//!
//! A FUA write that overlaps older unflushed writes also acts as a barrier: a power failure never
//! replays an older write over data that a FUA write made durable. When the volatile layer grows
//! past [`ServerOptions::max_volatile_bytes`] it is written back whole, as a full disk cache is.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kvmio_nbd::Error> {
//! use kvmio_nbd::{PowerFailMode, Server, ServerOptions};
//! let server = Server::bind("/tmp/disk.sock", "/tmp/disk.img", ServerOptions::default())?;
//! let handle = server.spawn();
//! // ... run QEMU with `-drive file=nbd+unix:///?socket=/tmp/disk.sock,format=raw` and kill it ...
//! let report = handle.power_fail(PowerFailMode::Subset { seed: 42 }).await?;
//! println!("{report:?} {:?}", handle.stats());
//! handle.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Modules: `proto` (the wire constants), `conn` (one connection: handshake, then requests in
//! order, the two writes through one step), [`disk`] (the volatile layer, also each file of
//! kvmio-fusedisk); this file holds the server, its options, statistics and power failures.

mod conn;
pub mod disk;
mod proto;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::net::Shutdown;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use crate::disk::Disk;
use crate::disk::Persisted;

/// Sector size: the unit of the volatile layer and of torn writes.
pub const SECTOR_SIZE: u64 = 512;

/// Largest READ/WRITE payload (and WRITE_ZEROES length) accepted, the spec's recommended maximum
/// (2^25 bytes). Larger requests get `EINVAL`.
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// Server configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// Acknowledge FLUSH and FUA writes without persisting anything: a lying disk, for proving
    /// that the crash tester's checker can fail.
    pub lie_about_flush: bool,
    /// Export name accepted besides the default (empty) name.
    pub export_name: String,
    /// Bytes of unflushed writes kept (superseded writes included; default 512 MiB). When a write
    /// takes the volatile layer past this, the whole layer is written back and synced, as a real
    /// disk destages its cache when it fills up; the writes then survive a power failure.
    pub max_volatile_bytes: u64,
    /// Simultaneous client connections; more are closed at once.
    pub max_connections: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            lie_about_flush: false,
            export_name: String::new(),
            max_volatile_bytes: 512 << 20,
            max_connections: 16,
        }
    }
}

/// What a simulated power failure does with the writes that were not yet durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PowerFailMode {
    /// Every unflushed write is lost (`drop-all`).
    #[default]
    DropAll,
    /// Each unflushed write survives whole with probability 1/2, decided by a generator seeded
    /// with `seed` in write order (`subset:SEED`). Surviving writes are applied in write order.
    Subset { seed: u64 },
    /// Each unflushed write is lost, survives whole, or is torn, with probability 1/3 each; a
    /// torn write keeps each of its 512-byte sectors with probability 1/2
    /// (`subset-torn:SEED`).
    SubsetTorn { seed: u64 },
}

impl fmt::Display for PowerFailMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PowerFailMode::DropAll => f.write_str("drop-all"),
            PowerFailMode::Subset { seed } => write!(f, "subset:{seed}"),
            PowerFailMode::SubsetTorn { seed } => write!(f, "subset-torn:{seed}"),
        }
    }
}

impl FromStr for PowerFailMode {
    type Err = Error;

    /// Parses `drop-all`, `subset:SEED` and `subset-torn:SEED` (`=` or a space may replace `:`).
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::InvalidMode(s.to_string());
        let s = s.trim();
        if s == "drop-all" {
            return Ok(PowerFailMode::DropAll);
        }
        let (kind, seed) = s.split_once([':', '=', ' ']).ok_or_else(bad)?;
        let seed: u64 = seed.trim().parse().map_err(|_| bad())?;
        match kind {
            "subset" => Ok(PowerFailMode::Subset { seed }),
            "subset-torn" => Ok(PowerFailMode::SubsetTorn { seed }),
            _ => Err(bad()),
        }
    }
}

/// What a power failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PowerFailReport {
    pub mode: PowerFailMode,
    /// Writes that were not durable when the power failed.
    pub unflushed_writes: u64,
    /// Of those, persisted whole.
    pub persisted_writes: u64,
    /// Of those, persisted in part (some sectors only).
    pub torn_writes: u64,
    /// Of those, lost entirely.
    pub lost_writes: u64,
    /// Distinct bytes whose newest content was volatile.
    pub volatile_bytes: u64,
    /// Bytes written to the backing file by the power failure itself.
    pub bytes_persisted: u64,
}

/// Counters since the server was bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Client connections accepted.
    pub connections: u64,
    /// NBD_CMD_READ requests served, and their bytes.
    pub reads: u64,
    pub bytes_read: u64,
    /// NBD_CMD_WRITE and NBD_CMD_WRITE_ZEROES requests served (FUA or not).
    pub writes: u64,
    /// Of those, with the FUA flag.
    pub fua_writes: u64,
    /// Of those, NBD_CMD_WRITE_ZEROES.
    pub write_zeroes: u64,
    /// Bytes written by clients (WRITE payloads plus WRITE_ZEROES lengths).
    pub bytes_written: u64,
    /// NBD_CMD_FLUSH requests served.
    pub flushes: u64,
    /// Distinct bytes whose newest content is only in the volatile layer, now.
    pub volatile_bytes: u64,
    /// Writes not yet durable, now.
    pub volatile_writes: u64,
    /// Bytes written to the backing file (flushes, FUA writes, destaging, power failures).
    pub bytes_persisted: u64,
    /// `fdatasync` calls on the backing file.
    pub syncs: u64,
    /// Error replies sent.
    pub errors: u64,
    /// Simulated power failures.
    pub power_failures: u64,
}

/// Errors of the server's control API. One variant per failing step; an inner error is only
/// the `source`, never repeated in the message, so a reporter walking the chain says it once.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open backing file {path}")]
    Backing {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("backing file {path} is not a regular file")]
    NotRegularFile { path: PathBuf },
    #[error("backing file {path} is {size} bytes, not a multiple of 512")]
    UnalignedSize { path: PathBuf, size: u64 },
    #[error("cannot listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("I/O error on the backing file")]
    Io(#[from] io::Error),
    #[error("invalid power-fail mode {0:?} (expected drop-all, subset:SEED or subset-torn:SEED)")]
    InvalidMode(String),
    #[error("server task failed")]
    Task(#[source] tokio::task::JoinError),
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    reads: AtomicU64,
    bytes_read: AtomicU64,
    writes: AtomicU64,
    fua_writes: AtomicU64,
    write_zeroes: AtomicU64,
    bytes_written: AtomicU64,
    flushes: AtomicU64,
    volatile_bytes: AtomicU64,
    volatile_writes: AtomicU64,
    bytes_persisted: AtomicU64,
    syncs: AtomicU64,
    errors: AtomicU64,
    power_failures: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

#[derive(Debug)]
struct ConnSlot {
    id: u64,
    /// A clone of the connection's socket, to sever it from outside.
    stream: UnixStream,
    task: JoinHandle<()>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    disk: Mutex<Disk>,
    counters: Counters,
    size: u64,
    options: ServerOptions,
    socket_path: PathBuf,
    /// Device and inode of the socket we created, so that we never unlink anything else.
    socket_id: (u64, u64),
    conns: Mutex<Vec<ConnSlot>>,
    stop: watch::Sender<bool>,
    stopped: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(crate) fn lock_disk(&self) -> MutexGuard<'_, Disk> {
        lock(&self.disk)
    }

    /// Records what an operation persisted and refreshes the gauges (called with the lock held).
    pub(crate) fn account(&self, disk: &Disk, persisted: Persisted) {
        let c = &self.counters;
        if persisted.bytes > 0 {
            add(&c.bytes_persisted, persisted.bytes);
        }
        if persisted.syncs > 0 {
            add(&c.syncs, persisted.syncs);
        }
        c.volatile_bytes
            .store(disk.volatile_bytes(), Ordering::Relaxed);
        c.volatile_writes
            .store(disk.volatile_writes(), Ordering::Relaxed);
    }

    pub(crate) fn count_read(&self, bytes: u64) {
        add(&self.counters.reads, 1);
        add(&self.counters.bytes_read, bytes);
    }

    pub(crate) fn count_write(&self, bytes: u64, fua: bool, zeroes: bool) {
        add(&self.counters.writes, 1);
        add(&self.counters.bytes_written, bytes);
        if fua {
            add(&self.counters.fua_writes, 1);
        }
        if zeroes {
            add(&self.counters.write_zeroes, 1);
        }
    }

    pub(crate) fn count_flush(&self) {
        add(&self.counters.flushes, 1);
    }

    pub(crate) fn count_error(&self) {
        add(&self.counters.errors, 1);
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn export_name(&self) -> &str {
        &self.options.export_name
    }

    fn stats(&self) -> Stats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            connections: get(&c.connections),
            reads: get(&c.reads),
            bytes_read: get(&c.bytes_read),
            writes: get(&c.writes),
            fua_writes: get(&c.fua_writes),
            write_zeroes: get(&c.write_zeroes),
            bytes_written: get(&c.bytes_written),
            flushes: get(&c.flushes),
            volatile_bytes: get(&c.volatile_bytes),
            volatile_writes: get(&c.volatile_writes),
            bytes_persisted: get(&c.bytes_persisted),
            syncs: get(&c.syncs),
            errors: get(&c.errors),
            power_failures: get(&c.power_failures),
        }
    }

    fn start_conn(self: &Arc<Self>, stream: tokio::net::UnixStream) {
        let stream = match stream.into_std().and_then(|s| {
            s.set_nonblocking(false)?;
            Ok(s)
        }) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("nbd: cannot set up accepted connection: {e}");
                return;
            }
        };
        let mut conns = lock(&self.conns);
        conns.retain(|c| !c.task.is_finished());
        if conns.len() >= self.options.max_connections {
            tracing::warn!(
                "nbd: refusing connection: {} clients already connected",
                conns.len()
            );
            return;
        }
        let control = match stream.try_clone() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("nbd: cannot clone connection socket: {e}");
                return;
            }
        };
        let id = self.counters.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let shared = Arc::clone(self);
        let task = tokio::task::spawn_blocking(move || {
            tracing::debug!("nbd: connection {id} opened");
            let result = conn::serve(&stream, &shared);
            // Close the socket for good (the control clone would keep it open) and forget it.
            let _ = stream.shutdown(Shutdown::Both);
            lock(&shared.conns).retain(|c| c.id != id);
            match result {
                Ok(()) => tracing::debug!("nbd: connection {id} closed"),
                Err(e) if is_disconnect(&e) => {
                    tracing::debug!("nbd: connection {id} dropped by the client: {e}")
                }
                Err(e) => tracing::warn!("nbd: connection {id} ended: {e}"),
            }
        });
        conns.push(ConnSlot {
            id,
            stream: control,
            task,
        });
    }

    /// Severs every client connection and waits until their handlers have stopped, so that no
    /// request is processed after this returns (until a client connects again).
    async fn disconnect_clients(&self) {
        let conns = std::mem::take(&mut *lock(&self.conns));
        for c in &conns {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
        for c in conns {
            if let Err(e) = c.task.await {
                tracing::warn!("nbd: connection handler failed: {e}");
            }
        }
    }

    fn remove_socket(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.socket_path) {
            if (meta.dev(), meta.ino()) == self.socket_id {
                let _ = std::fs::remove_file(&self.socket_path);
            }
        }
    }
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
    )
}

/// Removes the socket file and marks the server stopped when `run` ends or the unrun `Server` is
/// dropped.
#[derive(Debug)]
struct StopGuard(Arc<Shared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.remove_socket();
        self.0.stopped.send_replace(true);
    }
}

/// A bound, not yet running server.
#[derive(Debug)]
pub struct Server {
    listener: std::os::unix::net::UnixListener,
    guard: StopGuard,
}

impl Server {
    /// Opens `backing_path` (a regular file whose size, a multiple of 512 bytes, is the export
    /// size) read-write and listens on `socket_path`, which must not exist yet. Does not need a
    /// tokio runtime.
    pub fn bind(
        socket_path: impl AsRef<Path>,
        backing_path: impl AsRef<Path>,
        options: ServerOptions,
    ) -> Result<Server, Error> {
        let socket_path = socket_path.as_ref().to_path_buf();
        let backing_path = backing_path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&backing_path)
            .map_err(|source| Error::Backing {
                path: backing_path.clone(),
                source,
            })?;
        let size = backing_size(&file, &backing_path)?;
        let listener = std::os::unix::net::UnixListener::bind(&socket_path).map_err(|source| {
            Error::Listen {
                path: socket_path.clone(),
                source,
            }
        })?;
        let socket_id = std::fs::symlink_metadata(&socket_path)
            .map(|m| (m.dev(), m.ino()))
            .unwrap_or((u64::MAX, u64::MAX));
        let listen_err = |source| Error::Listen {
            path: socket_path.clone(),
            source,
        };
        if let Err(e) = listener.set_nonblocking(true) {
            let _ = std::fs::remove_file(&socket_path);
            return Err(listen_err(e));
        }
        let disk = Disk::new(
            file,
            size,
            options.lie_about_flush,
            options.max_volatile_bytes,
        );
        let shared = Arc::new(Shared {
            disk: Mutex::new(disk),
            counters: Counters::default(),
            size,
            options,
            socket_path,
            socket_id,
            conns: Mutex::new(Vec::new()),
            stop: watch::Sender::new(false),
            stopped: watch::Sender::new(false),
        });
        Ok(Server {
            listener,
            guard: StopGuard(shared),
        })
    }

    /// A control handle; valid before and after the server runs.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: Arc::clone(&self.guard.0),
            task: Arc::new(Mutex::new(None)),
        }
    }

    pub fn socket_path(&self) -> &Path {
        &self.guard.0.socket_path
    }

    /// Export size in bytes (the backing file's size at bind time).
    pub fn export_size(&self) -> u64 {
        self.guard.0.size
    }

    /// Accepts clients until [`ServerHandle::shutdown`], then disconnects them and removes the
    /// socket file (also when this future is dropped). Must run inside a tokio runtime; each
    /// connection is served on a blocking-pool thread.
    pub async fn run(self) -> Result<(), Error> {
        let Server { listener, guard } = self;
        let shared = Arc::clone(&guard.0);
        let listener =
            tokio::net::UnixListener::from_std(listener).map_err(|source| Error::Listen {
                path: shared.socket_path.clone(),
                source,
            })?;
        let mut stop = shared.stop.subscribe();
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|&s| s) => None,
                accepted = listener.accept() => Some(accepted),
            };
            match accepted {
                None => break,
                Some(Ok((stream, _))) => shared.start_conn(stream),
                Some(Err(e)) => {
                    // E.g. EMFILE: back off instead of spinning.
                    tracing::warn!("nbd: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(listener);
        shared.disconnect_clients().await;
        drop(guard);
        Ok(())
    }

    /// Spawns [`Server::run`] on the current tokio runtime and returns its handle.
    pub fn spawn(self) -> ServerHandle {
        let handle = self.handle();
        let task = tokio::spawn(self.run());
        *lock(&handle.task) = Some(task);
        handle
    }
}

fn backing_size(file: &File, path: &Path) -> Result<u64, Error> {
    let meta = file.metadata().map_err(|source| Error::Backing {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(Error::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    let size = meta.len();
    if size % SECTOR_SIZE != 0 {
        return Err(Error::UnalignedSize {
            path: path.to_path_buf(),
            size,
        });
    }
    Ok(size)
}

/// Control handle of a server: statistics, power failure, shutdown. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
    task: Arc<Mutex<Option<RunTask>>>,
}

type RunTask = JoinHandle<Result<(), Error>>;

impl ServerHandle {
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    pub fn socket_path(&self) -> &Path {
        &self.shared.socket_path
    }

    pub fn export_size(&self) -> u64 {
        self.shared.size
    }

    /// The power cut: from now on no write or flush changes the disk (each gets `EIO`), until
    /// [`ServerHandle::power_fail`] has dropped the volatile data. The crash tester cuts before it
    /// kills QEMU, so nothing QEMU sends after the fault instant reaches the disk.
    pub fn freeze(&self) {
        self.shared.lock_disk().freeze();
    }

    /// Simulates a host power failure: severs any client still connected (the crash tester kills
    /// QEMU first), waits until no request is in progress, then applies `mode` to the unflushed
    /// writes, syncs whatever survived to the backing file and empties the volatile layer. The
    /// server keeps accepting clients afterwards, serving the surviving data.
    pub async fn power_fail(&self, mode: PowerFailMode) -> Result<PowerFailReport, Error> {
        self.shared.disconnect_clients().await;
        let shared = Arc::clone(&self.shared);
        let report = tokio::task::spawn_blocking(move || {
            let mut disk = shared.lock_disk();
            let result = disk.power_fail(mode);
            let persisted = match &result {
                Ok(r) => Persisted {
                    bytes: r.bytes_persisted,
                    syncs: u64::from(r.bytes_persisted > 0),
                },
                Err(_) => Persisted::default(),
            };
            shared.account(&disk, persisted);
            add(&shared.counters.power_failures, 1);
            result
        })
        .await
        .map_err(Error::Task)??;
        tracing::info!("nbd: power failure {mode}: {report:?}");
        Ok(report)
    }

    /// Writes the whole volatile layer back to the backing file and syncs it, as a flush would
    /// (also when the server lies about flushes). Returns the bytes written.
    pub async fn persist_volatile(&self) -> Result<u64, Error> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let mut disk = shared.lock_disk();
            let result = disk.persist_all();
            shared.account(&disk, result.as_ref().copied().unwrap_or_default());
            result.map(|p| p.bytes)
        })
        .await
        .map_err(Error::Task)?
        .map_err(Error::Io)
    }

    /// Severs every client connection (the volatile layer is kept).
    pub async fn disconnect_clients(&self) {
        self.shared.disconnect_clients().await;
    }

    /// Stops accepting, disconnects clients and waits until [`Server::run`] has finished and the
    /// socket file is removed. Unflushed data stays unpersisted (call
    /// [`ServerHandle::persist_volatile`] first to keep it). If the server was bound but never
    /// run, this waits until the `Server` is dropped or run.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.shared.stop.send_replace(true);
        let mut stopped = self.shared.stopped.subscribe();
        let _ = stopped.wait_for(|&s| s).await;
        let task = lock(&self.task).take();
        if let Some(task) = task {
            task.await.map_err(Error::Task)??;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn messages_are_one_line_and_do_not_repeat_the_source() {
        let e = Error::Backing {
            path: "/x.raw".into(),
            source: io::Error::new(io::ErrorKind::NotFound, "no such file"),
        };
        assert_eq!(e.to_string(), "cannot open backing file /x.raw");
        assert_eq!(e.source().unwrap().to_string(), "no such file");
        let e = Error::Io(io::Error::from_raw_os_error(28));
        assert!(!e.to_string().contains("os error"), "{e}");
        assert!(e.source().is_some());
    }
}
