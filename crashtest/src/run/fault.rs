//! The fault, and the host it strikes.
//!
//! The host is chosen before the image is made, since it decides where the guest's disk lives:
//!
//! * `kill`: the image file itself, in the image directory, opened by QEMU (the host survives the
//!   fault, page cache and all: what a QEMU crash or the OOM killer does);
//! * `power*`: the image is a file on kvmio's volatile FUSE filesystem (`kvmio-fusedisk`),
//!   mounted for this iteration over the image directory, and QEMU opens it with its normal file
//!   driver under every cache mode. The filesystem stands for the host's page cache and disk:
//!   only fsync/fdatasync and O_SYNC/O_DSYNC writes make data durable. Which of those QEMU
//!   issues is QEMU's own behaviour: nothing here depends on the cache mode;
//! * `power-nbd*`: kvmio's volatile NBD server over the image file, reached with QEMU's NBD
//!   client (only FLUSH and FUA make a write durable); it measures that client.
//!
//! The fault instant is the power cut: the volatile layer is frozen (nothing is processed after
//! it, neither writes nor flushes), then QEMU gets SIGKILL, what it had in flight is answered
//! (it is dead and never sees the answer), it is reaped, the acks it had already passed on are
//! read, and the volatile data is dropped (or a seeded subset kept, whole or torn). Under `kill`
//! the same steps run without a cut.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvmio_fusedisk::{Misbehaviour, VolatileMount};
use kvmio_nbd::{Server, ServerHandle, ServerOptions};

use super::ack::Acks;
use super::image::qcow2_headroom;
use super::{PowerFailSummary, RunError, RunOptions};
use crate::oracle::Cell;
use crate::vm::{DiskSource, Vm};

/// Where an iteration's disk lives.
enum Place {
    File,
    Fuse(VolatileMount),
    Nbd(ServerHandle, PathBuf),
}

/// The host of one iteration's disk. [`Host::power_fail`] must be awaited on every path: it
/// unmounts the filesystem or shuts the NBD server down (dropping does too, without the
/// failure).
pub(super) struct Host {
    cell: Cell,
    /// The image's path in the image directory (the backing file under power faults): what
    /// verification reads.
    image: PathBuf,
    place: Place,
}

/// The misbehaviour the test-only options ask for.
fn misbehaviour(opts: &RunOptions) -> Misbehaviour {
    if opts.lie_about_flush {
        Misbehaviour::LieAboutFsync
    } else if opts.reorder_flush {
        Misbehaviour::ReorderFsync
    } else {
        Misbehaviour::None
    }
}

impl Host {
    /// Mounts the iteration's filesystem on `scratch/m{index}` (`power*`); the NBD server is
    /// started by [`Host::serve`] once the image exists.
    pub fn mount(
        cell: Cell,
        opts: &RunOptions,
        image: &Path,
        scratch: &Path,
        index: usize,
        label: &str,
    ) -> Result<Host, RunError> {
        let place = if cell.fault.is_power() && !cell.fault.over_nbd() {
            let err = |source| RunError::Mount {
                cell: label.to_string(),
                source,
            };
            let point = scratch.join(format!("m{index}"));
            std::fs::create_dir_all(&point).map_err(|e| {
                err(kvmio_fusedisk::Error::Mount {
                    mountpoint: point.clone(),
                    source: e,
                })
            })?;
            let disk = opts.disk_size_mib << 20;
            let options = kvmio_fusedisk::Options {
                max_file_size: disk + qcow2_headroom(disk),
                max_files: 4,
                misbehaviour: misbehaviour(opts),
            };
            let backing = image.parent().expect("an image in a directory");
            Place::Fuse(VolatileMount::mount(&point, backing, options).map_err(err)?)
        } else {
            Place::File
        };
        Ok(Host {
            cell,
            image: image.to_path_buf(),
            place,
        })
    }

    /// Where the image is created: on the mount for `power*`, else in the image directory.
    pub fn create_path(&self) -> PathBuf {
        match &self.place {
            Place::Fuse(m) => m.path(
                &self
                    .image
                    .file_name()
                    .expect("an image file name")
                    .to_string_lossy(),
            ),
            _ => self.image.clone(),
        }
    }

    /// Once the image exists: makes it durable (`power*`: the image was made long before the
    /// crash on a real host) or serves it over NBD (`power-nbd*`).
    pub fn serve(
        &mut self,
        opts: &RunOptions,
        socket: PathBuf,
        label: &str,
    ) -> Result<(), RunError> {
        match &self.place {
            Place::Fuse(m) => m.sync().map_err(|source| RunError::Mount {
                cell: label.to_string(),
                source,
            }),
            Place::Nbd(..) => Ok(()),
            Place::File if self.cell.fault.over_nbd() => {
                let options = ServerOptions {
                    lie_about_flush: opts.lie_about_flush,
                    ..ServerOptions::default()
                };
                let server = Server::bind(&socket, &self.image, options).map_err(|source| {
                    RunError::NbdStart {
                        cell: label.to_string(),
                        source,
                    }
                })?;
                self.place = Place::Nbd(server.spawn(), socket);
                Ok(())
            }
            Place::File => Ok(()),
        }
    }

    /// The disk as QEMU opens it.
    pub fn disk_source(&self) -> DiskSource {
        let format = self.cell.format;
        match &self.place {
            Place::Nbd(_, socket) => DiskSource::Nbd {
                socket: socket.clone(),
                format,
            },
            Place::Fuse(_) => DiskSource::File {
                path: self.create_path(),
                format,
            },
            Place::File => DiskSource::File {
                path: self.image.clone(),
                format,
            },
        }
    }

    /// The power cut: from now on the volatile layer processes nothing.
    fn cut(&self) {
        match &self.place {
            Place::Fuse(m) => m.cut(),
            Place::Nbd(handle, _) => handle.freeze(),
            Place::File => {}
        }
    }

    /// After SIGKILL: what QEMU had in flight is answered, so it can be reaped.
    fn release(&self) {
        if let Place::Fuse(m) = &self.place {
            m.release();
        }
    }

    /// The power failure, if the guest got as far as the fault (`crashed`), and the unmount or
    /// server shutdown either way. Returns what the failure did and how long it took.
    pub async fn power_fail(
        self,
        crashed: bool,
        power_seed: u64,
        label: &str,
    ) -> (Result<Option<PowerFailSummary>, RunError>, Duration) {
        let t = Instant::now();
        let mode = self.cell.fault.power_fail_mode(power_seed);
        let fail_err = |source| RunError::PowerFail {
            cell: label.to_string(),
            source,
        };
        let result = match (self.place, mode) {
            (Place::File, _) | (_, None) => Ok(None),
            (Place::Fuse(m), Some(mode)) => {
                let result = if crashed {
                    m.power_fail(mode)
                        .map(|r| Some(PowerFailSummary::from(r)))
                        .map_err(|source| RunError::Mount {
                            cell: label.to_string(),
                            source,
                        })
                } else {
                    Ok(None)
                };
                if let Err(e) = m.unmount() {
                    tracing::warn!("{label}: {e}");
                }
                result
            }
            (Place::Nbd(handle, _), Some(mode)) => {
                let result = if crashed {
                    handle
                        .power_fail(mode)
                        .await
                        .map(|r| Some(PowerFailSummary::from(r)))
                        .map_err(fail_err)
                } else {
                    Ok(None)
                };
                if let Err(e) = handle.shutdown().await {
                    tracing::warn!("{label}: NBD server shutdown: {e}");
                }
                result
            }
        };
        (result, t.elapsed())
    }
}

/// When and where the fault strikes: the seeded delay after the first ack, and the host.
pub(super) struct Strike<'a> {
    pub host: &'a Host,
    pub delay: Duration,
}

/// The fault: the power cut (for power faults), SIGKILL of QEMU (it flushes nothing), QEMU's
/// requests in flight answered and QEMU reaped, then the acks QEMU had already passed on.
pub(super) async fn crash(vm: &mut Vm, host: &Host, acks: &mut Acks<'_>) -> Result<(), RunError> {
    host.cut();
    if let Some(pid) = vm.pid() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    host.release();
    vm.kill();
    acks.drain(vm).await
}
