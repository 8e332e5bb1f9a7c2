//! The fault, and the host it strikes.
//!
//! The host is chosen before the guest boots, since it decides where the guest's disk lives:
//! under `kill` the image file itself, opened by QEMU (the host survives the fault, page cache
//! and all: what a QEMU crash or the OOM killer does); under `power*` kvmio's volatile-cache NBD
//! server over the image file, which stands for the host's page cache and disk (only FLUSH and
//! FUA make a write durable). The fault itself is SIGKILL of QEMU, the acks QEMU had already
//! passed on (sent before the fault, so their durability points were too), and for power the
//! server's power failure: drop-all, or a seeded subset, whole or torn.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvmio_nbd::{Server, ServerHandle, ServerOptions};

use super::ack::Acks;
use super::{PowerFailSummary, RunError};
use crate::oracle::Cell;
use crate::vm::{DiskSource, Vm};

/// Whether the power fault's simulated host never makes this cell's writes durable.
///
/// The NBD server stands for the host: its page cache and disk. With an image *file*, QEMU
/// under `cache=unsafe` never calls `fdatasync` (the file driver only flushes "to disk", which
/// unsafe skips). Over NBD, though, QEMU's client implements FLUSH as a flush "to the OS",
/// which `bdrv_co_flush` performs even under unsafe (QEMU's `block/io.c`, `block/nbd.c`): left
/// alone, the NBD server would make unsafe's flushed writes durable, which no file-backed host
/// does. So for unsafe the server ignores FLUSH and FUA, as the host file would. Every other mode
/// reaches `fdatasync` on a file exactly when it sends FLUSH over NBD.
pub fn host_ignores_flush(cell: &Cell) -> bool {
    cell.fault.is_power() && cell.cache_mode == kvmio_qemu::CacheMode::Unsafe
}

/// Where an iteration's disk lives. For power, [`Host::power_fail`] must be awaited on every
/// path: it shuts the NBD server down.
pub(super) struct Host {
    cell: Cell,
    image: PathBuf,
    nbd: Option<(ServerHandle, PathBuf)>,
}

impl Host {
    /// The image file as it is (`kill`), or served by a volatile-cache NBD server on `socket`.
    pub fn start(
        cell: Cell,
        image: &Path,
        socket: PathBuf,
        lie_about_flush: bool,
        label: &str,
    ) -> Result<Host, RunError> {
        let nbd = if cell.fault.is_power() {
            let options = ServerOptions {
                lie_about_flush: lie_about_flush || host_ignores_flush(&cell),
                ..ServerOptions::default()
            };
            let server =
                Server::bind(&socket, image, options).map_err(|source| RunError::NbdStart {
                    cell: label.to_string(),
                    source,
                })?;
            Some((server.spawn(), socket))
        } else {
            None
        };
        Ok(Host {
            cell,
            image: image.to_path_buf(),
            nbd,
        })
    }

    /// The disk as QEMU opens it.
    pub fn disk_source(&self) -> DiskSource {
        let format = self.cell.format;
        match &self.nbd {
            Some((_, socket)) => DiskSource::Nbd {
                socket: socket.clone(),
                format,
            },
            None => DiskSource::File {
                path: self.image.clone(),
                format,
            },
        }
    }

    /// For power: the power failure, if the guest got as far as the fault (`crashed`), and the
    /// server's shutdown either way. Returns what the failure did and how long it took.
    pub async fn power_fail(
        self,
        crashed: bool,
        power_seed: u64,
        label: &str,
    ) -> (Result<Option<PowerFailSummary>, RunError>, Duration) {
        let Some((handle, _)) = self.nbd else {
            return (Ok(None), Duration::ZERO);
        };
        let mut result = Ok(None);
        let t = Instant::now();
        if crashed {
            let mode = self
                .cell
                .fault
                .power_fail_mode(power_seed)
                .expect("power faults have a mode");
            result = match handle.power_fail(mode).await {
                Ok(report) => Ok(Some(PowerFailSummary::from(report))),
                Err(source) => Err(RunError::PowerFail {
                    cell: label.to_string(),
                    source,
                }),
            };
        }
        let elapsed = t.elapsed();
        if let Err(e) = handle.shutdown().await {
            tracing::warn!("{label}: NBD server shutdown: {e}");
        }
        (result, elapsed)
    }
}

/// SIGKILL of QEMU (it flushes nothing), then the acks QEMU had already passed on.
pub(super) async fn kill(vm: &mut Vm, acks: &mut Acks<'_>) -> Result<(), RunError> {
    vm.kill();
    acks.drain(vm).await
}
