//! The host-side checker: which acknowledged records survived in an image.
//!
//! Inputs are the surviving image and its *ack log* ([`crate::acklog`]): the run's record
//! parameters and every ack the host received.
//!
//! The checker reads the guest-visible bytes: a raw image directly, a qcow2 image through
//! `qemu-img convert -O raw` into a sparse scratch file beside it (QEMU's own qcow2 driver
//! decides what a rebooted guest would see, and `qemu-img check` reports the metadata's state).
//! Holes (`SEEK_HOLE`) are zeros and are not read. Since a record's bytes are a pure function of
//! the run's seed, its sequence number and its slot ([`RecordSpec::fill_at`]), and which slot each
//! sequence number writes is the workload's plan ([`RecordSpec::op`]), every slot is compared with
//! exactly what the writer would have put there (for the rewriting workloads, with every version
//! the plan wrote to it, up to what may have run: [`IN_FLIGHT_OPS`] past the last ack):
//!
//! * **intact**: the expected bytes; **empty**: zeros;
//! * **torn**: every 512-byte sector either zero or the expected sector (a write persisted in
//!   part);
//! * **misplaced**: a self-consistent record, but of another run, sequence or slot;
//! * **garbage**: anything else.
//!
//! An acked operation *survives* if every slot it touched keeps it ([`keeps`]: no older version,
//! zeros only where a write-zeroes or discard allows them), is *lost* if a slot reads zeros,
//! *rolled back* if a slot holds an older version whole, *corrupted* otherwise. For `raw-append`
//! that is: survived if intact, lost if empty, corrupted otherwise. Misplaced and garbage slots
//! are data nobody wrote there: a corruption under every cache mode. So is an ack whose digest is
//! not the one of the operation the writer must have done.
//!
//! Modules: `slots` classifies the slots and accounts the acks (the rules above),
//! `scratch` checks and converts qcow2 images; the tests, one per way a slot can be damaged
//! (`tests` for raw-append, `rewrite_tests` for the rewriting plans), sit beside them. The
//! file workloads' checker is [`crate::fscheck`].

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kvmio_guest::record::{self, Digest, Op, RecordSpec, SlotPlan, SECTOR};
use serde::{Deserialize, Serialize};

use crate::acklog::AckLog;
use crate::oracle::{Verdict, WorkloadKind};
use crate::qemu_img::{self, QemuImgError};
use crate::vm::ImageFormat;

/// Why an image could not be verified. One variant per failing step; an inner error is only
/// the `source`, never repeated in the message.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot check the filesystem in {path}")]
    Filesystem {
        path: PathBuf,
        #[source]
        source: Box<crate::fscheck::FsCheckError>,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the qcow2 image {path}")]
    QemuImg {
        path: PathBuf,
        #[source]
        source: QemuImgError,
    },
    #[error("no space left in {dir} for the raw copy of a qcow2 image: free space or use another --image-dir")]
    NoSpace {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create a scratch file in {dir}")]
    Scratch {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What the checker found in one image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// Acknowledged records.
    pub acked: u64,
    /// Of those, intact.
    pub survived: u64,
    /// Of those, absent (zeros).
    pub lost: u64,
    /// Of those, present but damaged (torn, or other data in their slot).
    pub acked_corrupted: u64,
    /// Of those, whose slot holds an older version, intact (`raw-overwrite`, `raw-discard`: a
    /// rewrite undone, or a write-zeroes undone).
    #[serde(default)]
    pub rolled_back: u64,
    /// Slots holding data nobody wrote there (another record, garbage), acked or not.
    pub foreign: u64,
    /// Acks that do not match the record the writer must have written.
    pub bad_acks: u64,
    /// Unacknowledged records found intact (allowed) and torn (allowed).
    pub unacked_present: u64,
    pub unacked_torn: u64,
    /// Highest acknowledged sequence number.
    pub highest_acked: Option<u64>,
    /// The writer reported the disk full before the fault.
    pub writer_done: bool,
    /// The image could not be read as a guest would (e.g. qemu-img failed on a qcow2 image):
    /// every acknowledged record then counts as corrupted.
    pub image_error: Option<String>,
    /// `qemu-img check` summary for qcow2 images.
    pub image_check: Option<String>,
    /// `qemu-img check`'s corruptions (not leaks, which a crash leaves normally): qcow2
    /// metadata a rebooted guest cannot trust.
    #[serde(default)]
    pub image_corruptions: u64,
    /// The first problems found, one line each.
    pub problems: Vec<String>,
    /// Bytes read from the guest view (holes are not read).
    pub bytes_read: u64,
    /// Wall time, qcow2 conversion included.
    pub seconds: f64,
}

const MAX_PROBLEMS: usize = 20;

impl Verification {
    /// Acknowledged records that did not survive intact.
    pub fn lost_acked(&self) -> u64 {
        self.acked - self.survived
    }

    /// Corruptions of every kind: damaged acked records, foreign data, bad acks.
    pub fn corrupted(&self) -> u64 {
        self.acked_corrupted + self.foreign + self.bad_acks
    }

    /// The verdict, given whether the cell promised that acked records survive. A corrupted
    /// qcow2 image breaks that promise as lost records do.
    pub fn verdict(&self, promised: bool) -> Verdict {
        if self.foreign > 0 || self.bad_acks > 0 {
            Verdict::Violation
        } else if self.lost_acked() > 0 || self.image_corruptions > 0 {
            if promised {
                Verdict::Violation
            } else {
                Verdict::LossAllowed
            }
        } else {
            Verdict::Ok
        }
    }

    fn problem(&mut self, text: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(text);
        }
    }
}

/// Verifies `image` against `log`, by the kind of the logged cell's workload: the one place
/// every verification (a run's iterations, `kvmio-crashtest verify`) is dispatched. `format`
/// overrides the header's; qcow2 images are converted with `qemu_img` into a scratch file in
/// `scratch_dir` (removed afterwards).
pub fn verify_image(
    image: &Path,
    log: &AckLog,
    format: Option<ImageFormat>,
    qemu_img: &Path,
    scratch_dir: &Path,
) -> Result<Verification, VerifyError> {
    match log.header.cell.workload.kind() {
        WorkloadKind::Raw => verify_raw_image(image, log, format, qemu_img, scratch_dir),
        WorkloadKind::Filesystem => {
            crate::fscheck::verify_log(image, log, format, qemu_img, scratch_dir).map_err(
                |source| VerifyError::Filesystem {
                    path: image.to_path_buf(),
                    source: Box::new(source),
                },
            )
        }
    }
}

/// [`verify_image`] for the raw workloads: the disk's slots against the records.
fn verify_raw_image(
    image: &Path,
    log: &AckLog,
    format: Option<ImageFormat>,
    qemu_img: &Path,
    scratch_dir: &Path,
) -> Result<Verification, VerifyError> {
    let start = Instant::now();
    let format = format.unwrap_or(log.header.cell.format);
    let mut v = match format {
        ImageFormat::Raw => {
            let file = File::open(image).map_err(|source| VerifyError::Read {
                path: image.to_path_buf(),
                source,
            })?;
            scan(&file, log).map_err(|source| VerifyError::Read {
                path: image.to_path_buf(),
                source,
            })?
        }
        ImageFormat::Qcow2 => {
            let (check, corruptions) = qemu_img_check(qemu_img, image)?;
            match convert_to_raw(qemu_img, image, scratch_dir)? {
                Ok(scratch) => {
                    let file = File::open(scratch.path()).map_err(|source| VerifyError::Read {
                        path: scratch.path().to_path_buf(),
                        source,
                    })?;
                    let mut v = scan(&file, log).map_err(|source| VerifyError::Read {
                        path: scratch.path().to_path_buf(),
                        source,
                    })?;
                    v.image_check = Some(check);
                    v.image_corruptions = corruptions;
                    v
                }
                Err(detail) => {
                    let mut v = unreadable(log, detail);
                    v.image_check = Some(check);
                    v.image_corruptions = corruptions;
                    v
                }
            }
        }
    };
    v.seconds = start.elapsed().as_secs_f64();
    Ok(v)
}

/// The verification of an image no guest could read.
fn unreadable(log: &AckLog, detail: String) -> Verification {
    let mut v = Verification::default();
    let acked = check_acks(log, &mut v);
    let spec = log.header.spec().expect("checked when the log was read");
    check_ack_digests(&spec, &acked, &Default::default(), &mut v);
    v.acked_corrupted = v.acked;
    v.problem(format!("image unreadable: {detail}"));
    v.image_error = Some(detail);
    v
}

mod scratch;
mod slots;

pub(crate) use scratch::convert_to_raw;
use scratch::qemu_img_check;
pub use scratch::Scratch;
pub use slots::IN_FLIGHT_OPS;
use slots::{check_ack_digests, check_acks, scan};
#[cfg(test)]
use slots::{classify_all, Executed, SlotState};

#[cfg(test)]
mod rewrite_tests;
#[cfg(test)]
mod tests;
