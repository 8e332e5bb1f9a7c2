//! The file workloads' checker and contract: which acknowledged files a recovering guest sees.
//!
//! Verification does what a rebooted guest does, on a copy: the surviving image becomes a raw
//! scratch file (`qemu-img convert` for qcow2), a read-only `fsck` records the state before
//! recovery (a dirty journal is expected after a crash), the copy is attached to a loop device
//! and mounted read-write in a private temporary directory, so the kernel replays the journal as
//! the guest's would; every acknowledged file is read and compared with the versions the
//! workload's plan says it went through ([`kvmio_guest::fsworkload::Planner`]); the filesystem
//! is unmounted and the loop device detached on every path ([`LoopMount`]'s drop), and a
//! read-only `fsck` after the replay says whether the filesystem is consistent.
//!
//! An acknowledged file *survived* if it holds exactly its acknowledged version or a newer one,
//! or (append and in-place overwrite only, whose writes are not atomic) a sector-wise mix of a
//! version at least as new and the next one: the operation in flight at the fault. Replacement
//! by rename is atomic (rename(2)), so a replaced file must be exactly one version. A missing
//! file is *lost*; an older version, a truncated file or other bytes are *corrupted*; an
//! unmountable filesystem, or one `fsck` finds inconsistent after the replay, counts as image
//! corruption. The results fill the raw checker's [`Verification`] (acked = acknowledged files),
//! so the reports and verdicts are the same.
//!
//! The contract ([`fs_promise`]) and its reasoning are in `docs/crash-consistency.md`.
//!
//! `host` runs the host's tools (fsck, the loop mount and its release guard); the tests, on
//! real ext4 loop mounts, are in `tests`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kvmio_guest::fsworkload::{self, FileAck, FsKind, FsOp, FsWorkload, Planner, FILES};
use kvmio_guest::record::{Digest, SECTOR};
use kvmio_qemu::CacheMode;

use crate::acklog::AckLog;
use crate::fsimage::{self, bounded};
use crate::oracle::{Fault, Promise};
use crate::verify::{self, Verification, VerifyError};
use crate::vm::ImageFormat;

/// Versions past the last acknowledged one a file may show: acks the host had not received at
/// the fault (at most the few QEMU still held), and the one operation in flight.
pub const MAX_UNSEEN_VERSIONS: u64 = 16;
/// The largest file the checker reads (the plan never makes one this large).
const MAX_FILE_BYTES: u64 = 16 << 20;
const MAX_PROBLEMS: usize = 20;

/// Why an image could not be checked (a broken filesystem is a finding, not an error).
#[derive(Debug, thiserror::Error)]
pub enum FsCheckError {
    #[error("the ack log's workload {0} is not a file workload")]
    NotAFileWorkload(String),
    #[error("cannot make the raw copy of {path}")]
    Copy {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot convert {path} to raw")]
    Convert {
        path: PathBuf,
        #[source]
        source: VerifyError,
    },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("losetup could not attach {path}: {stderr}")]
    Attach { path: PathBuf, stderr: String },
    #[error("cannot create a mount point in {dir}")]
    MountPoint {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path} on the mounted copy")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What the file workload's cell promises, and why: an acknowledged fsync survives exactly
/// where the raw writer's flushed records do when the filesystem sends flushes (its journal
/// commit issues a cache flush, and FUA or a second flush for the commit block), and where
/// unflushed records do when it sends none (`barrier=0`).
pub fn fs_promise(cache: CacheMode, fault: Fault, format: ImageFormat, barriers: bool) -> Promise {
    use CacheMode::*;
    let write_through = matches!(cache, Writethrough | Directsync);
    let p = |survives, reason| Promise { survives, reason };
    match (fault, format) {
        (Fault::Kill, ImageFormat::Raw) => p(
            true,
            "kill, raw: fsync returns after the filesystem's writes completed, so they left QEMU, and the host survives",
        ),
        (Fault::Kill, ImageFormat::Qcow2) if write_through => p(
            true,
            "kill, qcow2, write-through: QEMU flushes data and qcow2 metadata before completing each write",
        ),
        (Fault::Kill, ImageFormat::Qcow2) if barriers => p(
            true,
            "kill, qcow2: the journal commit's flush writes qcow2's cached metadata out of QEMU, even under unsafe",
        ),
        (Fault::Kill, ImageFormat::Qcow2) => p(
            false,
            "kill, qcow2, barrier=0: no flush, so new cluster mappings may stay in QEMU's metadata cache",
        ),
        _ if write_through => p(
            true,
            "power, write-through: every write the filesystem waited for (data, journal, commit) is stable when it completes",
        ),
        _ if cache == Unsafe => p(
            false,
            "power, unsafe: QEMU ignores the filesystem's flushes; nothing is promised",
        ),
        _ if barriers => p(
            true,
            "power, write-back: fsync commits the journal with a cache flush (and FUA commit block), which reaches stable storage",
        ),
        _ => p(
            false,
            "power, write-back, barrier=0: the filesystem sends no flush, so fsync'd data may sit in a volatile cache",
        ),
    }
}

/// What a recovering guest sees of one acknowledged file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    /// Exactly version `w` (the acknowledged one or newer).
    Exact(u64),
    /// A sector-wise mix of version `w` (acknowledged or newer) and `w + 1`.
    InFlight(u64),
    Missing,
    /// Exactly an older version than the acknowledged one.
    Older(u64),
    /// Neither: truncated, torn where it must not be, or other bytes.
    Damaged,
}

impl FileState {
    pub fn survived(self) -> bool {
        matches!(self, FileState::Exact(_) | FileState::InFlight(_))
    }
}

/// The versions of one file the checker compares with, by version number.
pub type Versions = BTreeMap<u64, Vec<u8>>;

/// Replays the plan of `op` from `seed` and keeps, for each file acknowledged up to version
/// `v` in `acked`, its versions `v - 1 ..= v + MAX_UNSEEN_VERSIONS` (those the plan reaches).
pub fn expected_versions(
    op: FsOp,
    seed: u64,
    acked: &BTreeMap<u32, u64>,
) -> BTreeMap<u32, Versions> {
    let mut current: Vec<Vec<u8>> = vec![Vec::new(); FILES as usize];
    let mut out: BTreeMap<u32, Versions> = BTreeMap::new();
    for o in Planner::new(op, seed) {
        let content = &mut current[o.file as usize];
        o.apply(content);
        if let Some(&v) = acked.get(&o.file) {
            if o.version + 1 >= v && o.version <= v + MAX_UNSEEN_VERSIONS {
                out.entry(o.file)
                    .or_default()
                    .insert(o.version, content.clone());
            }
        }
    }
    out
}

/// Whether every 512-byte sector of `content` is that sector of `a` or of `b` (bytes past a
/// version's end read as zeros), with a length between theirs.
fn sector_mix(content: &[u8], a: &[u8], b: &[u8]) -> bool {
    let (lo, hi) = (a.len().min(b.len()), a.len().max(b.len()));
    if content.len() < lo || content.len() > hi {
        return false;
    }
    let same = |v: &[u8], start: usize, chunk: &[u8]| {
        chunk.iter().enumerate().all(|(i, &c)| {
            let j = start + i;
            c == if j < v.len() { v[j] } else { 0 }
        })
    };
    content
        .chunks(SECTOR)
        .enumerate()
        .all(|(i, chunk)| same(a, i * SECTOR, chunk) || same(b, i * SECTOR, chunk))
}

/// Classifies one file acknowledged up to version `acked`.
pub fn classify(content: Option<&[u8]>, versions: &Versions, acked: u64, op: FsOp) -> FileState {
    let Some(content) = content else {
        return FileState::Missing;
    };
    for (&w, v) in versions.range(acked..) {
        if v.as_slice() == content {
            return FileState::Exact(w);
        }
    }
    if op != FsOp::Replace {
        for (&w, v) in versions.range(acked..) {
            if let Some(next) = versions.get(&(w + 1)) {
                if sector_mix(content, v, next) {
                    return FileState::InFlight(w);
                }
            }
        }
    }
    match versions
        .range(..acked)
        .find(|(_, v)| v.as_slice() == content)
    {
        Some((&w, _)) => FileState::Older(w),
        None => FileState::Damaged,
    }
}

/// Everything [`verify_fs`] needs besides the image.
#[derive(Debug, Clone)]
pub struct FsCheck<'a> {
    pub workload: FsWorkload,
    /// The plan's seed (the ack log's `payload_seed`).
    pub seed: u64,
    pub acks: &'a [FileAck],
    /// The workload finished its plan before the fault.
    pub done: bool,
    pub format: ImageFormat,
    pub qemu_img: &'a Path,
    /// Where the raw copy and the mount point go (kvmio's own directory).
    pub scratch_dir: &'a Path,
}

mod host;

use host::fsck;
pub use host::LoopMount;

/// A raw copy of `image` in `dir`, removed when dropped: the image itself is never mounted.
fn raw_copy(
    image: &Path,
    format: ImageFormat,
    qemu_img: &Path,
    dir: &Path,
) -> Result<Result<tempfile::TempPath, String>, FsCheckError> {
    match format {
        ImageFormat::Raw => {
            let copy_err = |source| FsCheckError::Copy {
                path: image.to_path_buf(),
                source,
            };
            let scratch = tempfile::Builder::new()
                .prefix(".kvmio-fscheck-")
                .suffix(".raw")
                .tempfile_in(dir)
                .map_err(copy_err)?;
            let mut src = File::open(image).map_err(copy_err)?;
            let len = src.metadata().map_err(copy_err)?.len();
            let (mut dst, path) = scratch.into_parts();
            dst.set_len(len).map_err(copy_err)?;
            fsimage::sparse_copy(&mut src, &mut dst).map_err(copy_err)?;
            Ok(Ok(path))
        }
        ImageFormat::Qcow2 => verify::convert_to_raw(qemu_img, image, dir)
            .map(|r| r.map(verify::Scratch::into_temp_path))
            .map_err(|source| FsCheckError::Convert {
                path: image.to_path_buf(),
                source,
            }),
    }
}

/// Reads at most [`MAX_FILE_BYTES`] + 1 bytes of `path`; `None` if it does not exist.
fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, FsCheckError> {
    let read_err = |source| FsCheckError::ReadFile {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut out = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(read_err)?;
    Ok(Some(out))
}

fn problem(v: &mut Verification, text: String) {
    if v.problems.len() < MAX_PROBLEMS {
        v.problems.push(text);
    }
}

/// Checks the acks against the plan: the last acknowledged version of each file, and every ack
/// whose file, version, length or digest is not what the plan made counted in `bad_acks`.
fn acked_versions(check: &FsCheck, v: &mut Verification) -> BTreeMap<u32, u64> {
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    let mut pairs: BTreeSet<(u32, u64)> = BTreeSet::new();
    for a in check.acks {
        v.highest_acked = v.highest_acked.max(Some(a.seq));
        match name_index(&a.name) {
            Some(i) => {
                let e = last.entry(i).or_default();
                *e = (*e).max(a.version);
                pairs.insert((i, a.version));
            }
            None => {
                v.bad_acks += 1;
                problem(
                    v,
                    format!("ack {}: no file {:?} in the plan", a.seq, a.name),
                );
            }
        }
    }
    // What the plan made at each acked (file, version), in one replay.
    let mut made: BTreeMap<(u32, u64), (u64, Digest)> = BTreeMap::new();
    if !pairs.is_empty() {
        let mut current: Vec<Vec<u8>> = vec![Vec::new(); FILES as usize];
        for o in Planner::new(check.workload.op, check.seed) {
            let content = &mut current[o.file as usize];
            o.apply(content);
            if pairs.contains(&(o.file, o.version)) {
                made.insert(
                    (o.file, o.version),
                    (content.len() as u64, fsworkload::digest(content)),
                );
            }
        }
    }
    for a in check.acks {
        let Some(i) = name_index(&a.name) else {
            continue;
        };
        if made.get(&(i, a.version)) != Some(&(a.len, a.digest)) {
            v.bad_acks += 1;
            problem(
                v,
                format!(
                    "ack {}: {} version {} is not what the workload writes there",
                    a.seq, a.name, a.version
                ),
            );
        }
    }
    last
}

fn name_index(name: &str) -> Option<u32> {
    (0..FILES).find(|&i| fsworkload::file_name(i) == name)
}

/// The verification of an image whose files no guest could read: every acked file corrupted.
fn unreadable(mut v: Verification, what: &str, detail: String, start: Instant) -> Verification {
    v.acked_corrupted = v.acked;
    v.image_corruptions = 1;
    problem(&mut v, format!("{what}: {detail}"));
    v.image_error = Some(detail);
    v.seconds = start.elapsed().as_secs_f64();
    v
}

/// Verifies `image` against the ack log of a file workload's iteration (`format` overrides the
/// header's): what [`crate::verify::verify_image`] calls for `WorkloadKind::Filesystem`.
pub fn verify_log(
    image: &Path,
    log: &AckLog,
    format: Option<ImageFormat>,
    qemu_img: &Path,
    scratch_dir: &Path,
) -> Result<Verification, FsCheckError> {
    let h = &log.header;
    let workload = h
        .cell
        .workload
        .fs()
        .ok_or_else(|| FsCheckError::NotAFileWorkload(h.cell.workload.to_string()))?;
    verify_fs(
        image,
        &FsCheck {
            workload,
            seed: h.payload_seed,
            acks: &log.file_acks,
            done: log.done.is_some(),
            format: format.unwrap_or(h.cell.format),
            qemu_img,
            scratch_dir,
        },
    )
}

/// Verifies a file workload's surviving `image`.
pub fn verify_fs(image: &Path, check: &FsCheck) -> Result<Verification, FsCheckError> {
    let start = Instant::now();
    let mut v = Verification {
        writer_done: check.done,
        ..Verification::default()
    };
    let acked = acked_versions(check, &mut v);
    v.acked = acked.len() as u64;
    let fs = check.workload.fs;
    let copy = match raw_copy(image, check.format, check.qemu_img, check.scratch_dir)? {
        Ok(copy) => copy,
        Err(detail) => return Ok(unreadable(v, "image unreadable", detail, start)),
    };
    let (_, before) = fsck(fs, &copy)?;
    let mut lm = LoopMount::attach(&copy)?;
    let mut contents: BTreeMap<u32, Option<Vec<u8>>> = BTreeMap::new();
    let mounted = lm.mount(fs, check.scratch_dir)?;
    if let (Ok(()), Some(root)) = (&mounted, lm.path()) {
        for i in 0..FILES {
            let content = read_bounded(&root.join(fsworkload::file_name(i)))?;
            if acked.contains_key(&i) {
                contents.insert(i, content);
            } else if content.is_some() {
                v.unacked_present += 1;
            }
        }
    }
    lm.release();
    let (clean, after) = fsck(fs, &copy)?;
    drop(copy);
    v.image_check = Some(format!("before replay: {before}; after replay: {after}"));
    if let Err(detail) = mounted {
        return Ok(unreadable(v, "filesystem unmountable", detail, start));
    }
    if !clean {
        v.image_corruptions = 1;
        problem(
            &mut v,
            format!("filesystem inconsistent after replay: {after}"),
        );
    }
    let expected = expected_versions(check.workload.op, check.seed, &acked);
    let none = Versions::new();
    for (&i, &version) in &acked {
        let content = contents.get(&i).and_then(|c| c.as_deref());
        v.bytes_read += content.map_or(0, |c| c.len() as u64);
        let versions = expected.get(&i).unwrap_or(&none);
        let name = fsworkload::file_name(i);
        match classify(content, versions, version, check.workload.op) {
            FileState::Exact(_) | FileState::InFlight(_) => v.survived += 1,
            FileState::Missing => {
                v.lost += 1;
                problem(
                    &mut v,
                    format!("{name}: acked at version {version}, missing"),
                );
            }
            FileState::Older(w) => {
                v.acked_corrupted += 1;
                problem(
                    &mut v,
                    format!("{name}: acked at version {version}, holds the older version {w}"),
                );
            }
            FileState::Damaged => {
                v.acked_corrupted += 1;
                problem(
                    &mut v,
                    format!(
                        "{name}: acked at version {version} ({} bytes), holds {} bytes matching no version from it on",
                        versions.get(&version).map_or(0, Vec::len),
                        content.map_or(0, <[u8]>::len)
                    ),
                );
            }
        }
    }
    v.seconds = start.elapsed().as_secs_f64();
    Ok(v)
}

#[cfg(test)]
mod tests;
