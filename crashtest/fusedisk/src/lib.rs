//! kvmio-fusedisk: a FUSE filesystem whose files sit under a volatile write cache, so that the
//! crash tester can cut a host's power under QEMU's own file driver.
//!
//! Production images are files opened by QEMU's file driver (`file-posix`): whether a cache mode
//! keeps data across a host power loss depends on which `fdatasync`s QEMU issues, which opens
//! use `O_DIRECT`, how qcow2 grows its file. kvmio mounts this filesystem, creates the image on
//! it, and QEMU opens it like any file. Each file is a [`kvmio_nbd::Disk`] (the volatile layer
//! the NBD server uses too) over a backing file of the same name in a backing directory:
//!
//! * a write lands in the volatile layer (standing for the host's page cache and disk cache);
//!   reads see it; the file grows, shrinks and has holes punched (`fallocate`) in that layer too;
//! * `fsync`/`fdatasync`, and writes on a file opened `O_SYNC`/`O_DSYNC`, make data (and the
//!   file's length) durable in the backing file;
//! * [`VolatileMount::cut`] is the power cut: no request is processed after it; then the caller
//!   SIGKILLs QEMU, [`VolatileMount::release`] answers what QEMU had in flight (`EIO`, which a
//!   killed process never sees), and [`VolatileMount::power_fail`] drops the volatile data, or
//!   keeps a seeded subset, whole or torn at 512-byte sectors ([`PowerFailMode`]);
//! * unmounting (also on drop) leaves the backing files as a rebooted host would find them.
//!
//! Nothing here knows about cache modes: what QEMU does under `unsafe`, `writethrough` or
//! `none` is measured, not assumed. [`Misbehaviour`] selects the two broken hosts the checker's
//! own tests need (never the default).
//!
//! The mount needs root (or `CAP_SYS_ADMIN`) and `/dev/fuse`: fuser mounts with mount(2)
//! itself, without libfuse or fusermount. A mount left by a killed run shows in
//! [`stale_mounts`]; [`VolatileMount::mount`] refuses a mount point that is already mounted.
//!
//! Modules: `fs` (the FUSE operations; a file operation reaches its file through one step that
//! parks its reply once the power is cut), `stale` (the mount table, read by kvmio-mountinfo);
//! this file holds the mount and the power-cut sequence.

mod fs;
mod stale;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, Config, MountOption};
pub use kvmio_nbd::{PowerFailMode, PowerFailReport};

pub use stale::{is_mount_point, stale_mounts};

/// The mount's source in the mount table (its type is `fuse`).
pub const SUBTYPE: &str = "kvmio-fusedisk";

/// Broken hosts, for proving that the crash tester's checker can fail. Test-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Misbehaviour {
    /// An honest host.
    #[default]
    None,
    /// Acknowledges fsync, fdatasync and O_DSYNC writes without persisting anything.
    LieAboutFsync,
    /// Every fsync leaves the newest write volatile, as if it had been reordered after the
    /// flush.
    ReorderFsync,
}

/// Options of a mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Largest length a file may reach (`EFBIG` past it); also the bound of each file's volatile
    /// layer (past it, the layer is written back whole, as a full disk cache destages).
    pub max_file_size: u64,
    /// Files the filesystem holds at most (`ENOSPC` past it).
    pub max_files: usize,
    pub misbehaviour: Misbehaviour,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_file_size: 1 << 30,
            max_files: 16,
            misbehaviour: Misbehaviour::None,
        }
    }
}

/// Errors of the mount's control API. One variant per failing step; the inner error only in
/// `source`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{mountpoint} is already a mount point (a stale kvmio-fusedisk mount from a killed run? `umount -l {mountpoint}` removes it)")]
    AlreadyMounted { mountpoint: PathBuf },
    #[error("cannot read the backing directory {dir}")]
    Backing {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mount the FUSE filesystem on {mountpoint} (needs root and /dev/fuse)")]
    Mount {
        mountpoint: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot unmount {mountpoint}")]
    Unmount {
        mountpoint: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the volatile data back to the backing files")]
    Sync(#[source] std::io::Error),
    #[error("the power failure could not update the backing files")]
    PowerFail(#[source] std::io::Error),
}

/// A mounted volatile filesystem. Unmounted on drop (lazily if a file is still open).
#[derive(Debug)]
pub struct VolatileMount {
    session: Option<BackgroundSession>,
    state: Arc<fs::State>,
    mountpoint: PathBuf,
}

impl VolatileMount {
    /// Mounts an empty filesystem on `mountpoint` (an existing directory, not a mount point),
    /// whose files are backed by files of the same name created in `backing_dir`.
    pub fn mount(
        mountpoint: &Path,
        backing_dir: &Path,
        options: Options,
    ) -> Result<VolatileMount, Error> {
        if is_mount_point(mountpoint) {
            return Err(Error::AlreadyMounted {
                mountpoint: mountpoint.to_path_buf(),
            });
        }
        let backing = backing_dir
            .canonicalize()
            .map_err(|source| Error::Backing {
                dir: backing_dir.to_path_buf(),
                source,
            })?;
        let state = Arc::new(fs::State::new(backing, options));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(SUBTYPE.into()),
            MountOption::NoDev,
            MountOption::NoSuid,
            MountOption::NoExec,
        ];
        let session = fuser::spawn_mount(fs::VolatileFs(Arc::clone(&state)), mountpoint, &config)
            .map_err(|source| Error::Mount {
            mountpoint: mountpoint.to_path_buf(),
            source,
        })?;
        Ok(VolatileMount {
            session: Some(session),
            state,
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The path of file `name` on the mount.
    pub fn path(&self, name: &str) -> PathBuf {
        self.mountpoint.join(name)
    }

    /// Makes every file's volatile data durable (what `sync` does on a host).
    pub fn sync(&self) -> Result<(), Error> {
        self.state.sync_all().map_err(Error::Sync)
    }

    /// The power cut: from this instant no request (write, fsync, anything) is processed.
    pub fn cut(&self) {
        self.state.cut();
    }

    /// After the cut, once the processes using the mount are SIGKILLed: answers the requests
    /// they had in flight (`EIO`; they are dying and never see it) so they can be reaped.
    /// Returns how many there were. Later requests are answered as they come.
    pub fn release(&self) -> usize {
        self.state.release()
    }

    /// Bytes only in the volatile layers now.
    pub fn volatile_bytes(&self) -> u64 {
        self.state.volatile_bytes()
    }

    /// The power failure (cutting first if [`VolatileMount::cut`] was not called): each file's
    /// volatile data dropped, or the seeded subset kept, and its length set as the durable
    /// state says. The mount serves nothing afterwards; unmount it.
    pub fn power_fail(&self, mode: PowerFailMode) -> Result<PowerFailReport, Error> {
        self.state.cut();
        self.state.power_fail(mode).map_err(Error::PowerFail)
    }

    /// Unmounts and waits for the filesystem's thread.
    pub fn unmount(mut self) -> Result<(), Error> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<(), Error> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // Requests parked at the cut would keep their senders in the kernel: answer them.
        self.state.release();
        let result = session.umount_and_join().map_err(|source| Error::Unmount {
            mountpoint: self.mountpoint.clone(),
            source,
        });
        if result.is_err() && is_mount_point(&self.mountpoint) {
            // Busy (a file still open): detach it; it goes away with its last user.
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
        result
    }
}

impl Drop for VolatileMount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            let source = std::error::Error::source(&e).map(|s| s.to_string());
            tracing::warn!("kvmio-fusedisk: {e}: {}", source.unwrap_or_default());
        }
    }
}
