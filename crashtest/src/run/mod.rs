//! `kvmio-crashtest run`: the crash-consistency matrix.
//!
//! One iteration of one cell runs these steps, a module each, in this order:
//!
//! 1. [`plan`]: the seeds of the iteration, and (once per run) the image directory's space and
//!    O_DIRECT checked and kvmio's own directory made in it;
//! 2. [`image`]: a fresh disk image (never a file kvmio did not create);
//! 3. [`fault`] (its first half): the host the disk lives on: the image file itself (`kill`),
//!    or kvmio's volatile-cache NBD server over it (`power*`; for qcow2 the export is the qcow2
//!    file and QEMU runs its qcow2 driver over it);
//! 4. [`snapshot`] or [`boot`]: the guest started with that disk under the cell's cache mode,
//!    writer role: restored from the state saved once per VM configuration the guest can observe
//!    (write cache, format, disk size; saved by booting once, when first needed), or booted
//!    (`--boot always`, or where no state could be saved);
//! 5. [`ack`]: the guest control protocol: `START` with the iteration's parameters, the host's
//!    clock and entropy, the writer's `STATE` checked ([`snapshot::check_state`]: the guest is
//!    the one a fresh boot would give), then the writer's acks appended to the ack log as they
//!    arrive, until a seeded delay after the first one;
//! 6. [`fault`]: SIGKILL of QEMU, the acks already in flight, and for power the NBD server's
//!    power failure (drop-all, subset, subset-torn);
//! 7. verification of the surviving image against the ack log ([`crate::verify`]), and the
//!    reports ([`crate::report`]).
//!
//! [`iteration`] is those steps in a row; [`schedule`] runs the iterations, `--parallel` at a
//! time, and stops them all on Ctrl-C or the first error. This module holds what a run takes
//! and gives: its options, its results and its errors.
//!
//! Everything random derives from `--seed`, the cell and the iteration number, so a cell can be
//! re-run alone with the same seeds. Cancellation (Ctrl-C) kills and reaps every QEMU, shuts the
//! NBD servers down and removes the temporary files.

mod ack;
mod boot;
pub mod fault;
pub mod image;
mod iteration;
pub mod plan;
mod schedule;
mod snapshot;

use std::path::PathBuf;
use std::time::Duration;

use kvmio_nbd::PowerFailReport;
use kvmio_qemu::CacheFlags;
use serde::Serialize;

use crate::acklog::AckLogError;
use crate::oracle::{Cell, Verdict};
use crate::qemu_img::QemuImgError;
use crate::verify::{Verification, VerifyError};
use crate::vm::VmError;

pub use image::qcow2_headroom;
pub use plan::{cell_seed, preflight, IterationSeeds};
pub use schedule::{run, RunOutcome};
pub use snapshot::{GuestCheck, SnapshotError};

/// How iterations start their guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BootPolicy {
    /// Boot every iteration's guest.
    Always,
    /// Restore a guest saved once per VM configuration; boot where none could be saved.
    Auto,
}

impl std::str::FromStr for BootPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(BootPolicy::Always),
            "auto" => Ok(BootPolicy::Auto),
            _ => Err(format!("unknown boot policy {s:?}: use always or auto")),
        }
    }
}

/// How an iteration's guest started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Started {
    Booted,
    Restored,
}

/// What to run: the matrix and how each iteration's VM is made. The guest image and the
/// accelerator are separate ([`Guest`]): building and probing them takes time, and a bad option
/// must fail before that.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub cells: Vec<Cell>,
    pub iterations: u32,
    pub seed: u64,
    pub parallel: usize,
    /// The user's image directory; kvmio creates its own subdirectory in it.
    pub image_dir: PathBuf,
    pub keep_images: bool,
    pub disk_size_mib: u64,
    pub record_size: usize,
    /// The fault comes this long after the first ack: uniform in [min, max], seeded.
    pub window: (Duration, Duration),
    pub qemu: PathBuf,
    pub qemu_img: PathBuf,
    pub memory_mib: u32,
    pub ready_timeout: Duration,
    /// Self-test: the power fault's host (FUSE or NBD) acks fsync/FLUSH/FUA without persisting.
    pub lie_about_flush: bool,
    /// Self-test: the FUSE host keeps the newest write volatile across each fsync.
    pub reorder_flush: bool,
    /// Self-test: the writer acks before its durability point.
    pub ack_early: bool,
    /// Boot every guest, or restore saved ones.
    pub boot: BootPolicy,
}

/// What every iteration boots.
#[derive(Debug, Clone)]
pub struct Guest {
    pub accel: crate::vm::Accel,
    pub image: crate::guest_image::GuestImage,
}

/// Why a run stopped. One variant per failing step; an inner error is only the `source`, never
/// repeated in the message. An iteration's error whose cause is ENOSPC becomes [`RunError::NoSpace`]
/// in one place ([`iteration::run`]).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("interrupted")]
    Interrupted,
    #[error("image directory {dir} is not usable (must be a writable directory): pass a writable --image-dir")]
    ImageDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image directory {dir} has {available_mib} MiB free, but this matrix may need {needed_mib} MiB ({detail}): free space, lower --disk-size or --parallel, or pass another --image-dir")]
    NotEnoughSpace {
        dir: PathBuf,
        available_mib: u64,
        needed_mib: u64,
        detail: String,
    },
    #[error("image directory {dir} ran out of space (ENOSPC) during {cell}: free space or pass another --image-dir")]
    NoSpace { dir: PathBuf, cell: String },
    #[error("image directory {dir} does not support O_DIRECT (tmpfs?), which cache=none and cache=directsync need under the kill fault: pass an --image-dir on a disk filesystem")]
    NoDirectIo { dir: PathBuf },
    #[error("{cell}: cannot create the disk image {path}")]
    CreateImage {
        cell: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{cell}: cannot make the file workload's filesystem image")]
    FsImage {
        cell: String,
        #[source]
        source: crate::fsimage::FsImageError,
    },
    #[error("{cell}: cannot create the disk image {path}")]
    QemuImg {
        cell: String,
        path: PathBuf,
        #[source]
        source: QemuImgError,
    },
    #[error("{cell}: cannot boot the guest")]
    Boot {
        cell: String,
        #[source]
        source: VmError,
    },
    #[error("{cell}: cannot restore the saved guest")]
    Restore {
        cell: String,
        #[source]
        source: SnapshotError,
    },
    #[error("{cell}: the guest is not the one a fresh boot gives: {what}")]
    Unfaithful { cell: String, what: String },
    #[error("{cell}: the guest writer failed: {message}; last console lines:\n{console}")]
    Writer {
        cell: String,
        message: String,
        console: String,
    },
    #[error("{cell}: {what}; last console lines:\n{console}")]
    Guest {
        cell: String,
        what: String,
        console: String,
    },
    #[error("{cell}: QEMU paused the VM on a disk error")]
    DiskError {
        cell: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cell}: the power fault's FUSE filesystem failed")]
    Mount {
        cell: String,
        #[source]
        source: kvmio_fusedisk::Error,
    },
    #[error("{cell}: cannot start the NBD server")]
    NbdStart {
        cell: String,
        #[source]
        source: kvmio_nbd::Error,
    },
    #[error("{cell}: the NBD server's power failure failed")]
    PowerFail {
        cell: String,
        #[source]
        source: kvmio_nbd::Error,
    },
    #[error("{cell}: cannot write the ack log {path}")]
    AckLog {
        cell: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{cell}: cannot read back the ack log")]
    ReadAckLog {
        cell: String,
        #[source]
        source: AckLogError,
    },
    #[error("{cell}: cannot verify the image")]
    Verify {
        cell: String,
        #[source]
        source: VerifyError,
    },
}

/// Seconds spent in each phase of an iteration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Creating the image (and starting the NBD server).
    pub create: f64,
    /// Waiting for the guest's saved state (its one boot and save, if this iteration came
    /// first; 0 when booting).
    pub snapshot: f64,
    /// QEMU start to the guest's READY (0 when restored).
    pub boot: f64,
    /// QEMU start to the restored guest running (0 when booted).
    pub restore: f64,
    /// `START` to the first ack (the writer's `STATE` included).
    pub first_ack: f64,
    /// First ack to the fault (the seeded delay).
    pub window: f64,
    /// SIGKILL, reaping, draining the acks still in flight, and the power failure.
    pub fault: f64,
    /// Reading back and checking the image (qcow2 conversion included).
    pub verify: f64,
    /// All of it, clean-up included.
    pub total: f64,
}

/// What a power failure did, as reported by the NBD server.
#[derive(Debug, Clone, Serialize)]
pub struct PowerFailSummary {
    pub mode: String,
    pub unflushed_writes: u64,
    pub persisted_writes: u64,
    pub torn_writes: u64,
    pub lost_writes: u64,
}

impl From<PowerFailReport> for PowerFailSummary {
    fn from(r: PowerFailReport) -> Self {
        PowerFailSummary {
            mode: r.mode.to_string(),
            unflushed_writes: r.unflushed_writes,
            persisted_writes: r.persisted_writes,
            torn_writes: r.torn_writes,
            lost_writes: r.lost_writes,
        }
    }
}

/// One iteration's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct IterationResult {
    pub cell: Cell,
    pub iteration: u32,
    pub seed: u64,
    pub run_id: u64,
    pub verdict: Verdict,
    pub verification: Verification,
    pub timings: Timings,
    /// Whether the guest was restored from a saved state or booted.
    pub started: Started,
    /// Why a guest was booted where `--boot auto` would restore it.
    pub boot_reason: Option<String>,
    /// What the writer reported after `START`, as checked.
    pub guest_check: GuestCheck,
    pub fault_delay_ms: u64,
    pub power_fail: Option<PowerFailSummary>,
    /// `query-block`'s `inserted.cache` once the guest driver is up.
    pub qmp_cache: Option<CacheFlags>,
    pub qemu_version: String,
    pub guest_kernel: String,
    pub kept_image: Option<PathBuf>,
    pub kept_acks: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn messages_do_not_repeat_their_source() {
        let e = RunError::ImageDir {
            dir: "/x".into(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        let source = e.source().expect("a source").to_string();
        assert!(!e.to_string().contains(&source), "{e}");
        assert!(
            e.to_string().ends_with("pass a writable --image-dir"),
            "{e}"
        );
    }
}
