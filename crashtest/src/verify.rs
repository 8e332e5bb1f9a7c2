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
//! Why one file of about 1400 lines: 600 are tests, one per way a slot can be damaged, for each
//! plan; the checker's verdicts are what the crash test sells, so they stay beside the code that
//! makes them.

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

/// How many operations past the last acked one a rewriting writer may have run before the
/// fault: the one in progress when it stopped, with margin. The writer is sequential and sends
/// each `ACK` before its next operation, and a line the guest wrote to its port reaches the
/// host even when QEMU dies (see `docs/crash-consistency.md`); the margin only widens what
/// counts as possibly written.
pub const IN_FLIGHT_OPS: u64 = 4;

/// The acks, checked: the slots each acked operation touched, and the write records' digests
/// still to compare (the scan compares those of the records it builds anyway).
#[derive(Debug, Default)]
struct Acked {
    /// Acked operations by sequence number: (operation, the digest acked for a write).
    ops: std::collections::BTreeMap<u64, (Op, Option<Digest>)>,
    /// Acked sequence numbers by slot they touched, ascending.
    by_slot: HashMap<u64, Vec<u64>>,
}

/// Checks the acks' structure (sequence in the plan, naming its operation's first slot, once)
/// and the digests of discards and write-zeroes; arranges the acks for the scan. The write
/// records' digests are checked against the expected records by [`check_ack_digests`], with
/// the hashes the scan computes anyway.
fn check_acks(log: &AckLog, v: &mut Verification) -> Acked {
    let spec = log.header.spec().expect("checked when the log was read");
    let slots = log.header.slots();
    let total = spec.ops(slots);
    let mut acked = Acked::default();
    v.writer_done = log.done.is_some();
    for ack in &log.acks {
        let op = (ack.seq < total).then(|| spec.op(ack.seq, slots));
        let Some(op) = op.filter(|op| op.first_slot() == ack.slot && ack.slot < slots) else {
            bad_ack(v, ack.seq, ack.slot);
            continue;
        };
        if acked.ops.contains_key(&ack.seq) {
            bad_ack(v, ack.seq, ack.slot);
            continue;
        }
        let digest = match op {
            Op::Write { .. } => Some(ack.digest),
            Op::Discard { .. } | Op::Zero { .. } => {
                if spec.op_digest(ack.seq, op) != ack.digest {
                    bad_ack(v, ack.seq, ack.slot);
                    continue;
                }
                None
            }
        };
        acked.ops.insert(ack.seq, (op, digest));
        for slot in op.slots() {
            acked.by_slot.entry(slot).or_default().push(ack.seq);
        }
        v.highest_acked = v.highest_acked.max(Some(ack.seq));
    }
    for seqs in acked.by_slot.values_mut() {
        seqs.sort_unstable();
    }
    v.acked = acked.ops.len() as u64;
    acked
}

fn bad_ack(v: &mut Verification, seq: u64, slot: u64) {
    v.bad_acks += 1;
    v.problem(format!(
        "ack for sequence {seq} slot {slot} does not match the record the writer must have written there"
    ));
}

/// Compares the digest of every acked write whose record the scan did not build (`checked`
/// holds the sequence numbers it did) with the expected record's.
fn check_ack_digests(
    spec: &RecordSpec,
    acked: &Acked,
    checked: &std::collections::HashSet<u64>,
    v: &mut Verification,
) {
    let mut buf = vec![0u8; spec.size];
    for (&seq, (op, digest)) in &acked.ops {
        if let (Op::Write { slot }, Some(digest)) = (op, digest) {
            if !checked.contains(&seq) && spec.fill_at(seq, *slot, &mut buf) != *digest {
                bad_ack(v, seq, *slot);
            }
        }
    }
}

/// What the writer may have done before the fault: the plan's operations up to the last acked
/// one plus [`IN_FLIGHT_OPS`] (all of them once it said `DONE`; all of them for the append-only
/// plan, where nothing depends on it).
#[derive(Debug)]
struct Executed {
    spec: RecordSpec,
    /// For the rewriting plans: each operation that may have run, by slot it touched, in order.
    by_slot: HashMap<u64, Vec<(u64, Op)>>,
    /// Operations `0..end` may have run.
    end: u64,
}

impl Executed {
    fn new(spec: RecordSpec, slots: u64, highest_acked: Option<u64>, done: bool) -> Executed {
        let total = spec.ops(slots);
        let end = if spec.plan == SlotPlan::Append || done {
            total
        } else {
            highest_acked
                .map_or(0, |h| h + 1)
                .saturating_add(IN_FLIGHT_OPS)
                .min(total)
        };
        let mut by_slot: HashMap<u64, Vec<(u64, Op)>> = HashMap::new();
        if spec.plan != SlotPlan::Append {
            for seq in 0..end {
                let op = spec.op(seq, slots);
                for slot in op.slots() {
                    by_slot.entry(slot).or_default().push((seq, op));
                }
            }
        }
        Executed { spec, by_slot, end }
    }

    /// The operations that may have touched `slot`, in order.
    fn ops(&self, slot: u64) -> std::borrow::Cow<'_, [(u64, Op)]> {
        use std::borrow::Cow;
        match self.spec.plan {
            SlotPlan::Append if slot < self.end => Cow::Owned(vec![(slot, Op::Write { slot })]),
            SlotPlan::Append => Cow::Owned(Vec::new()),
            _ => Cow::Borrowed(self.by_slot.get(&slot).map_or(&[][..], Vec::as_slice)),
        }
    }
}

/// What one slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Zeros.
    Empty,
    /// The record of this sequence number, whole.
    Intact(u64),
    /// Every 512-byte sector is zero or the same sector of a record the writer may have
    /// written to this slot (a write persisted in part, or a rewrite over an older version):
    /// `oldest` is the oldest version a sector shows (taking each sector's newest match), `zeros`
    /// whether any sector is zero.
    Torn { oldest: u64, zeros: bool },
    /// A self-consistent record of another run, sequence or slot.
    Misplaced(record::Header),
    /// Anything else.
    Garbage,
}

fn is_zero(buf: &[u8]) -> bool {
    // 16 bytes at a time: quick even in unoptimised builds.
    let whole = buf.len() / 16 * 16;
    buf[..whole]
        .chunks_exact(16)
        .all(|c| u128::from_ne_bytes(c.try_into().expect("16 bytes")) == 0)
        && buf[whole..].iter().all(|&b| b == 0)
}

/// What a slot holds, given the operations that may have touched it, and the newest write's
/// (sequence, digest) if its record had to be built. The newest record is tried first, whole:
/// the one hash per slot of the common case.
fn classify(
    spec: &RecordSpec,
    slot: u64,
    ops: &[(u64, Op)],
    data: &[u8],
    expected: &mut [u8],
) -> (SlotState, Option<(u64, Digest)>) {
    if is_zero(data) {
        return (SlotState::Empty, None);
    }
    let writes: Vec<u64> = ops
        .iter()
        .filter(|(_, op)| matches!(op, Op::Write { .. }))
        .map(|&(seq, _)| seq)
        .collect();
    let mut built = None;
    if let Some(&newest) = writes.last() {
        let digest = spec.fill_at(newest, slot, expected);
        built = Some((newest, digest));
        if data == expected {
            return (SlotState::Intact(newest), built);
        }
    }
    if let Some(h) = record::parse(data) {
        let older = h.run_id == spec.run_id
            && h.slot == slot
            && writes[..writes.len().saturating_sub(1)]
                .binary_search(&h.seq)
                .is_ok();
        if older {
            spec.fill_at(h.seq, slot, expected);
            if data == expected {
                return (SlotState::Intact(h.seq), built);
            }
        }
        return (SlotState::Misplaced(h), built);
    }
    // Sector by sector, each sector's newest match.
    let mut source: Vec<Option<u64>> = data
        .chunks(SECTOR)
        .map(|c| is_zero(c).then_some(u64::MAX))
        .collect();
    for &seq in writes.iter().rev() {
        if source.iter().all(Option::is_some) {
            break;
        }
        spec.fill_at(seq, slot, expected);
        for ((got, want), src) in data
            .chunks(SECTOR)
            .zip(expected.chunks(SECTOR))
            .zip(source.iter_mut())
        {
            if src.is_none() && got == want {
                *src = Some(seq);
            }
        }
    }
    let state = if source.iter().any(Option::is_none) {
        SlotState::Garbage
    } else {
        SlotState::Torn {
            oldest: source.iter().flatten().copied().min().unwrap_or(u64::MAX),
            zeros: source.contains(&Some(u64::MAX)),
        }
    };
    (state, built)
}

/// Whether `state`, in a slot touched by `ops`, keeps the acked operation `seq`: no sector
/// older than the last write or write-zeroes at or before it (its *floor*), and zero sectors
/// only where a write-zeroes is that floor, or a discard or write-zeroes came after it (a
/// discarded range reads as zeros or as what it held; a zeroed one as zeros).
fn keeps(state: SlotState, ops: &[(u64, Op)], seq: u64) -> bool {
    let (oldest, zeros) = match state {
        SlotState::Empty => (None, true),
        SlotState::Intact(p) => (Some(p), false),
        SlotState::Torn { oldest, zeros } => (Some(oldest), zeros),
        SlotState::Misplaced(_) | SlotState::Garbage => return false,
    };
    let floor = ops
        .iter()
        .rev()
        .find(|&&(s, op)| s <= seq && !matches!(op, Op::Discard { .. }));
    let zeros_ok = match floor {
        None | Some((_, Op::Zero { .. })) => true,
        Some(&(f, _)) => ops
            .iter()
            .any(|&(s, op)| s > f && !matches!(op, Op::Write { .. })),
    };
    let new_enough = match (oldest, floor) {
        (Some(o), Some(&(f, _))) => o >= f,
        _ => true,
    };
    new_enough && (!zeros || zeros_ok)
}

/// Classifies consecutive slots starting at `first`, on every core: one sha256 per non-empty
/// slot is the checker's cost.
fn classify_all(
    exec: &Executed,
    first: u64,
    bytes: &[u8],
    threads: usize,
) -> Vec<(SlotState, Option<(u64, Digest)>)> {
    let spec = &exec.spec;
    let n = bytes.len() / spec.size;
    let per_thread = n.div_ceil(threads.max(1)).max(1);
    let mut out = vec![(SlotState::Empty, None); n];
    std::thread::scope(|scope| {
        for (t, (chunk, results)) in bytes
            .chunks(per_thread * spec.size)
            .zip(out.chunks_mut(per_thread))
            .enumerate()
        {
            let base = first + (t * per_thread) as u64;
            scope.spawn(move || {
                let mut expected = vec![0u8; spec.size];
                for (i, (data, r)) in chunk.chunks(spec.size).zip(results).enumerate() {
                    let slot = base + i as u64;
                    *r = classify(spec, slot, &exec.ops(slot), data, &mut expected);
                }
            });
        }
    });
    out
}

/// Ranges of `file` that may hold data (`SEEK_DATA`/`SEEK_HOLE`); the whole file if the
/// filesystem cannot tell.
fn data_ranges(file: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    use nix::errno::Errno;
    use nix::unistd::{lseek, Whence};
    let fd = file.as_raw_fd();
    let mut ranges = Vec::new();
    let mut pos: u64 = 0;
    while pos < len {
        let start = match lseek(fd, pos as i64, Whence::SeekData) {
            Ok(s) => s as u64,
            Err(Errno::ENXIO) => break,
            Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) => return Ok(vec![(0, len)]),
            Err(e) => return Err(e.into()),
        };
        if start >= len {
            break;
        }
        let end = match lseek(fd, start as i64, Whence::SeekHole) {
            Ok(e) => (e as u64).min(len),
            Err(_) => len,
        };
        ranges.push((start, end));
        pos = end;
    }
    Ok(ranges)
}

/// Bytes read per `pread`.
const CHUNK: usize = 8 << 20;

/// Scans the guest view of a disk.
fn scan(file: &File, log: &AckLog) -> io::Result<Verification> {
    let header = &log.header;
    let spec = header.spec().expect("checked when the log was read");
    let size = spec.size as u64;
    let slots = header.slots();
    let mut v = Verification::default();
    let acked = check_acks(log, &mut v);
    let exec = Executed::new(spec, slots, v.highest_acked, log.done.is_some());

    let file_len = file.metadata()?.len();
    let view_len = header.disk_size.min(file_len);
    // Slot ranges to read: every slot touched by a data extent.
    let mut slot_ranges: Vec<(u64, u64)> = Vec::new();
    for (a, b) in data_ranges(file, view_len)? {
        let first = a / size;
        let last = b.div_ceil(size).min(slots);
        if first >= last {
            continue;
        }
        match slot_ranges.last_mut() {
            Some(prev) if prev.1 >= first => prev.1 = prev.1.max(last),
            _ => slot_ranges.push((first, last)),
        }
    }

    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    let per_chunk = (CHUNK as u64 / size).max(1);
    let mut buf = vec![0u8; (per_chunk * size) as usize];
    let mut checked = std::collections::HashSet::new();
    // What the acked slots hold (the others are accounted as they are read; unread = zeros).
    let mut held: HashMap<u64, SlotState> = HashMap::with_capacity(acked.by_slot.len());
    for (first, last) in slot_ranges {
        let mut slot = first;
        while slot < last {
            let n = per_chunk.min(last - slot);
            let bytes = &mut buf[..(n * size) as usize];
            file.read_exact_at(bytes, slot * size)?;
            v.bytes_read += bytes.len() as u64;
            // Small reads (a few records) are not worth a thread each.
            let t = if n >= 64 { threads } else { 1 };
            for (i, (state, built)) in classify_all(&exec, slot, bytes, t).into_iter().enumerate() {
                let s = slot + i as u64;
                if let Some((seq, digest)) = built {
                    if let Some((_, Some(ack))) = acked.ops.get(&seq) {
                        checked.insert(seq);
                        if *ack != digest {
                            bad_ack(&mut v, seq, s);
                        }
                    }
                }
                let is_acked = acked.by_slot.contains_key(&s);
                account_slot(&mut v, s, state, is_acked);
                if is_acked {
                    held.insert(s, state);
                }
            }
            slot += n;
        }
    }
    check_ack_digests(&spec, &acked, &checked, &mut v);
    account_acks(&mut v, &exec, &acked, &held);

    // Bytes past the last whole slot must stay zero.
    let tail_start = slots * size;
    if view_len > tail_start {
        let mut tail = vec![0u8; (view_len - tail_start) as usize];
        file.read_exact_at(&mut tail, tail_start)?;
        v.bytes_read += tail.len() as u64;
        if !is_zero(&tail) {
            v.foreign += 1;
            v.problem(format!(
                "bytes {tail_start}..{view_len} after the last slot are not zero"
            ));
        }
    }
    if file_len < header.disk_size {
        v.problem(format!(
            "image is {file_len} bytes, shorter than the {} bytes the guest saw (the rest reads as zeros)",
            header.disk_size
        ));
    }
    Ok(v)
}

/// Counts what a slot holds by itself: data nobody wrote there (in every cell a violation),
/// and the unacked records present or torn.
fn account_slot(v: &mut Verification, slot: u64, state: SlotState, is_acked: bool) {
    match (state, is_acked) {
        (SlotState::Empty, _) | (SlotState::Intact(_) | SlotState::Torn { .. }, true) => {}
        (SlotState::Intact(_), false) => v.unacked_present += 1,
        (SlotState::Torn { .. }, false) => v.unacked_torn += 1,
        (SlotState::Misplaced(h), acked) => {
            v.foreign += 1;
            v.problem(format!(
                "slot {slot}{}: holds record sequence {} for slot {} of run {:016x}, never written here",
                if acked { " (acked)" } else { "" },
                h.seq,
                h.slot,
                h.run_id
            ));
        }
        (SlotState::Garbage, acked) => {
            v.foreign += 1;
            v.problem(format!(
                "slot {slot}{}: data that is neither zeros nor the record written there",
                if acked { " (acked)" } else { "" }
            ));
        }
    }
}

/// Counts every acked operation as survived, lost (its slot reads zeros), rolled back (an
/// older version, whole) or corrupted (anything else), from what its slots hold (`held`;
/// a slot not there reads zeros): it survived if every slot it touched keeps it ([`keeps`]).
fn account_acks(
    v: &mut Verification,
    exec: &Executed,
    acked: &Acked,
    held: &HashMap<u64, SlotState>,
) {
    let rewriting = exec.spec.plan != SlotPlan::Append;
    for (&seq, (op, _)) in &acked.ops {
        let failed = op.slots().find_map(|slot| {
            let state = held.get(&slot).copied().unwrap_or(SlotState::Empty);
            (!keeps(state, &exec.ops(slot), seq)).then_some((slot, state))
        });
        match failed {
            None => v.survived += 1,
            Some((slot, SlotState::Empty)) => {
                v.lost += 1;
                if rewriting {
                    v.problem(format!(
                        "slot {slot}: zeros where the acked sequence {seq} must be"
                    ));
                }
            }
            Some((slot, SlotState::Intact(old))) => {
                v.rolled_back += 1;
                v.problem(format!(
                    "slot {slot}: holds version {old}, older than the acked sequence {seq}"
                ));
            }
            Some((slot, SlotState::Torn { oldest, zeros })) => {
                v.acked_corrupted += 1;
                v.problem(format!(
                    "slot {slot}: acked sequence {seq} is torn (oldest sector of version {oldest}{})",
                    if zeros { ", zero sectors" } else { "" }
                ));
            }
            Some((_, SlotState::Misplaced(_) | SlotState::Garbage)) => v.acked_corrupted += 1,
        }
    }
}

/// A scratch file removed on drop.
#[derive(Debug)]
pub struct Scratch(tempfile::TempPath);

impl Scratch {
    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn into_temp_path(self) -> tempfile::TempPath {
        self.0
    }
}

/// `qemu-img convert -O raw` into a new sparse scratch file. The inner `Err` is qemu-img's
/// complaint about the image (which then counts as unreadable).
pub(crate) fn convert_to_raw(
    qemu_img: &Path,
    image: &Path,
    dir: &Path,
) -> Result<Result<Scratch, String>, VerifyError> {
    let scratch_err = |source: io::Error| {
        if crate::out_of_space(&source) {
            VerifyError::NoSpace {
                dir: dir.to_path_buf(),
                source,
            }
        } else {
            VerifyError::Scratch {
                dir: dir.to_path_buf(),
                source,
            }
        }
    };
    let scratch = tempfile::Builder::new()
        .prefix(".kvmio-verify-")
        .suffix(".raw")
        .tempfile_in(dir)
        .map_err(scratch_err)?
        .into_temp_path();
    let converted = qemu_img::run(
        qemu_img,
        &[
            "convert".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-O".as_ref(),
            "raw".as_ref(),
            image.as_os_str(),
            scratch.as_os_str(),
        ],
    );
    match converted {
        Ok(_) => Ok(Ok(Scratch(scratch))),
        Err(QemuImgError::Failed { source, .. }) if crate::out_of_space(&source) => {
            Err(scratch_err(source))
        }
        Err(QemuImgError::Failed { source, .. }) => Ok(Err(format!("qemu-img convert: {source}"))),
        Err(source) => Err(VerifyError::QemuImg {
            path: image.to_path_buf(),
            source,
        }),
    }
}

/// `qemu-img check` in one line, and its corruptions: leaks are normal after a crash,
/// corruptions are not.
fn qemu_img_check(qemu_img: &Path, image: &Path) -> Result<(String, u64), VerifyError> {
    let out = qemu_img::output(
        qemu_img,
        &[
            "check".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "--output=json".as_ref(),
            image.as_os_str(),
        ],
    )
    .map_err(|source| VerifyError::QemuImg {
        path: image.to_path_buf(),
        source,
    })?;
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
    Ok(match parsed {
        Some(j) => {
            let n = |k: &str| j.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
            (
                format!(
                    "corruptions={} leaks={} check-errors={}",
                    n("corruptions"),
                    n("leaks"),
                    n("check-errors")
                ),
                n("corruptions"),
            )
        }
        None => (
            format!(
                "qemu-img check failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            0,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acklog::tests::header;
    use crate::acklog::Ack;

    const SIZE: usize = 4096;
    const SLOTS: u64 = 64;

    /// An image with records 0..written and a log acking 0..acked.
    fn setup(written: u64, acked: u64) -> (tempfile::TempDir, PathBuf, AckLog) {
        let dir = tempfile::tempdir().unwrap();
        let h = header();
        let spec = h.spec().unwrap();
        let path = dir.path().join("x.raw");
        let file = File::create(&path).unwrap();
        file.set_len(h.disk_size).unwrap();
        let mut buf = vec![0u8; SIZE];
        let mut acks = Vec::new();
        for seq in 0..written.max(acked) {
            let digest = spec.fill(seq, &mut buf);
            if seq < written {
                file.write_all_at(&buf, spec.offset(seq)).unwrap();
            }
            if seq < acked {
                acks.push(Ack {
                    seq,
                    slot: seq,
                    digest,
                });
            }
        }
        (
            dir,
            path,
            AckLog {
                header: h,
                acks,
                done: None,
                file_acks: Vec::new(),
            },
        )
    }

    fn check(path: &Path, log: &AckLog) -> Verification {
        verify_image(
            path,
            log,
            None,
            Path::new("qemu-img"),
            path.parent().unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn everything_acked_and_present_is_ok() {
        let (_d, path, log) = setup(20, 18);
        let v = check(&path, &log);
        assert_eq!((v.acked, v.survived, v.lost, v.corrupted()), (18, 18, 0, 0));
        assert_eq!(v.unacked_present, 2);
        assert_eq!(v.verdict(true), Verdict::Ok);
        assert_eq!(v.highest_acked, Some(17));
    }

    /// Every acked record intact, but `qemu-img check` counted corruptions: a cell that
    /// promised survival is violated (the image cannot be trusted after reboot), others lose.
    #[test]
    fn qcow2_corruptions_violate_a_promise_even_when_every_record_reads_back() {
        let (_d, path, log) = setup(20, 18);
        let mut v = check(&path, &log);
        v.image_corruptions = 2;
        assert_eq!(v.verdict(true), Verdict::Violation);
        assert_eq!(v.verdict(false), Verdict::LossAllowed);
    }

    #[test]
    fn lost_acked_records_violate_only_a_promise() {
        let (_d, path, log) = setup(10, 15);
        let v = check(&path, &log);
        assert_eq!((v.acked, v.survived, v.lost), (15, 10, 5));
        assert_eq!(v.verdict(true), Verdict::Violation);
        assert_eq!(v.verdict(false), Verdict::LossAllowed);
    }

    #[test]
    fn torn_records_are_allowed_unacked_and_corrupt_when_acked() {
        let (_d, path, log) = setup(12, 10);
        let f = File::options().write(true).open(&path).unwrap();
        // Zero the 3rd sector of slot 11 (unacked) and slot 4 (acked).
        for slot in [11u64, 4] {
            f.write_all_at(&[0u8; 512], slot * SIZE as u64 + 1024)
                .unwrap();
        }
        let v = check(&path, &log);
        assert_eq!(v.unacked_torn, 1);
        assert_eq!(v.acked_corrupted, 1);
        assert_eq!(v.foreign, 0);
        assert_eq!(v.verdict(false), Verdict::LossAllowed);
        assert_eq!(v.verdict(true), Verdict::Violation);
    }

    #[test]
    fn flipped_bytes_are_garbage_and_always_a_violation() {
        let (_d, path, log) = setup(30, 0);
        let f = File::options().write(true).open(&path).unwrap();
        f.write_all_at(&[0x5a; 7], 25 * SIZE as u64 + 300).unwrap();
        let v = check(&path, &log);
        assert_eq!(v.foreign, 1);
        assert_eq!(v.verdict(false), Verdict::Violation, "{:?}", v.problems);
    }

    #[test]
    fn a_record_in_the_wrong_slot_or_from_another_run_is_foreign() {
        let (_d, path, log) = setup(8, 8);
        let spec = log.header.spec().unwrap();
        let f = File::options().write(true).open(&path).unwrap();
        let mut buf = vec![0u8; SIZE];
        // Record 3 copied into slot 40 (unacked, past the end of what was written).
        spec.fill(3, &mut buf);
        f.write_all_at(&buf, 40 * SIZE as u64).unwrap();
        // A record of another run in acked slot 5.
        RecordSpec::new(0xdef, 99, SIZE).unwrap().fill(5, &mut buf);
        f.write_all_at(&buf, 5 * SIZE as u64).unwrap();
        let v = check(&path, &log);
        assert_eq!(v.foreign, 2, "{:?}", v.problems);
        assert_eq!(v.acked_corrupted, 1);
        assert_eq!(v.verdict(false), Verdict::Violation);
        assert!(v.problems.iter().any(|p| p.contains("never written here")));
    }

    #[test]
    fn bad_acks_are_violations() {
        let (_d, path, mut log) = setup(5, 5);
        log.acks[2].digest[0] ^= 1;
        let v = check(&path, &log);
        assert_eq!(v.bad_acks, 1);
        assert_eq!(v.verdict(false), Verdict::Violation);
    }

    #[test]
    fn a_bad_digest_is_caught_for_lost_records_too() {
        // Slots 3..6 acked but never written (lost): their digests are checked without a scan.
        let (_d, path, mut log) = setup(3, 6);
        log.acks[4].digest[31] ^= 0x80;
        let v = check(&path, &log);
        assert_eq!(v.bad_acks, 1, "{:?}", v.problems);
        assert_eq!(v.lost, 3);
        assert_eq!(v.verdict(false), Verdict::Violation);
    }

    #[test]
    fn threaded_and_single_classification_agree() {
        let spec = RecordSpec::new(5, 6, 512).unwrap();
        let n = 1000u64;
        let mut img = vec![0u8; n as usize * 512];
        let mut rng = record::SplitMix64::new(9);
        for slot in 0..n {
            let rec = &mut img[slot as usize * 512..(slot as usize + 1) * 512];
            match rng.next() % 4 {
                0 => {}
                1 => {
                    spec.fill(slot, rec);
                }
                2 => {
                    spec.fill(slot, rec);
                    rec[100] ^= 1;
                }
                _ => {
                    spec.fill(slot + 1, rec);
                }
            }
        }
        let exec = Executed::new(spec, n, None, false);
        let one = classify_all(&exec, 0, &img, 1);
        for threads in [2, 3, 8] {
            assert_eq!(
                classify_all(&exec, 0, &img, threads),
                one,
                "{threads} threads"
            );
        }
        assert!(one.iter().any(|(s, _)| matches!(s, SlotState::Intact(_))));
        assert!(one.iter().any(|(s, _)| *s == SlotState::Garbage));
        assert!(one
            .iter()
            .any(|(s, _)| matches!(s, SlotState::Misplaced(_))));
    }

    #[test]
    fn data_after_the_last_slot_is_foreign() {
        let (_d, path, mut log) = setup(2, 2);
        // The guest saw one slot and a half.
        log.header.disk_size = SIZE as u64 * 3 / 2 + SIZE as u64;
        let f = File::options().write(true).open(&path).unwrap();
        f.write_all_at(&[1], SIZE as u64 * 2 + 10).unwrap();
        let v = check(&path, &log);
        assert_eq!(v.foreign, 1, "{:?}", v.problems);
    }

    /// Random unacked tearing, random loss of unpromised acks, over many seeds: the checker
    /// never calls a VIOLATION unless something impossible happened.
    #[test]
    fn does_not_cry_wolf_over_many_seeds() {
        use rand::{Rng, SeedableRng};
        for seed in 0..200u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let written = rng.random_range(1..SLOTS);
            let acked = rng.random_range(0..=written);
            let (_d, path, log) = setup(written, acked);
            let f = File::options().write(true).open(&path).unwrap();
            // Tear or drop some unacked records.
            for slot in acked..written {
                match rng.random_range(0..3) {
                    0 => f
                        .write_all_at(&vec![0u8; SIZE], slot * SIZE as u64)
                        .unwrap(),
                    1 => {
                        for s in 0..(SIZE / 512) as u64 {
                            if rng.random_bool(0.5) {
                                f.write_all_at(&[0u8; 512], slot * SIZE as u64 + s * 512)
                                    .unwrap();
                            }
                        }
                    }
                    _ => {}
                }
            }
            let v = check(&path, &log);
            assert_eq!(
                v.verdict(true),
                Verdict::Ok,
                "seed {seed}: {:?}",
                v.problems
            );
        }
    }
}

/// The rewriting workloads (`raw-overwrite`, `raw-discard`) through the real verification path:
/// images made by replaying the writer's own plan, then damaged the ways the contract forbids.
#[cfg(test)]
mod rewrite_tests {
    use super::*;
    use crate::acklog::tests::header;
    use crate::acklog::Ack;
    use crate::oracle::Workload;
    use rand::{Rng, SeedableRng};

    const SIZE: usize = 4096;

    /// What a discard leaves in its range: zeros or the old data (both allowed).
    #[derive(Clone, Copy)]
    enum DiscardReads {
        Zeros,
        Old,
    }

    struct Disk {
        _dir: tempfile::TempDir,
        path: PathBuf,
        file: File,
        log: AckLog,
        spec: RecordSpec,
    }

    impl Disk {
        /// The plan of `workload` run on a 64-slot disk: operations `0..written` applied (a
        /// discard reading back as `discard`), `0..acked` acknowledged.
        fn run(workload: Workload, written: u64, acked: u64, discard: DiscardReads) -> Disk {
            let dir = tempfile::tempdir().unwrap();
            let mut h = header();
            h.cell = h.cell.with_workload(workload);
            let spec = h.spec().unwrap();
            let path = dir.path().join("x.raw");
            let file = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .unwrap();
            file.set_len(h.disk_size).unwrap();
            let slots = h.slots();
            let mut buf = vec![0u8; SIZE];
            let mut acks = Vec::new();
            for seq in 0..written.max(acked) {
                let op = spec.op(seq, slots);
                let digest = match op {
                    Op::Write { slot } => spec.fill_at(seq, slot, &mut buf),
                    _ => spec.op_digest(seq, op),
                };
                if seq < written {
                    match (op, discard) {
                        (Op::Write { slot }, _) => {
                            file.write_all_at(&buf, spec.offset(slot)).unwrap()
                        }
                        (Op::Zero { .. }, _) | (Op::Discard { .. }, DiscardReads::Zeros) => {
                            for slot in op.slots() {
                                file.write_all_at(&[0u8; SIZE], spec.offset(slot)).unwrap();
                            }
                        }
                        (Op::Discard { .. }, DiscardReads::Old) => {}
                    }
                }
                if seq < acked {
                    acks.push(Ack {
                        seq,
                        slot: op.first_slot(),
                        digest,
                    });
                }
            }
            let log = AckLog {
                header: h,
                acks,
                done: None,
                file_acks: Vec::new(),
            };
            Disk {
                _dir: dir,
                path,
                file,
                log,
                spec,
            }
        }

        fn verify(&self) -> Verification {
            verify_image(
                &self.path,
                &self.log,
                None,
                Path::new("qemu-img"),
                self.path.parent().unwrap(),
            )
            .unwrap()
        }

        /// Writes the record of write `seq` back into its slot, as if the device had lost
        /// everything after it there.
        fn put_back(&self, seq: u64) -> u64 {
            let Op::Write { slot } = self.spec.op(seq, self.log.header.slots()) else {
                panic!("{seq} is not a write");
            };
            let mut buf = vec![0u8; SIZE];
            self.spec.fill_at(seq, slot, &mut buf);
            self.file
                .write_all_at(&buf, self.spec.offset(slot))
                .unwrap();
            slot
        }

        /// The last operation before `before` matching `pick`, with its sequence number.
        fn last_op(&self, before: u64, pick: impl Fn(Op) -> bool) -> (u64, Op) {
            (0..before)
                .rev()
                .map(|s| (s, self.spec.op(s, self.log.header.slots())))
                .find(|&(_, op)| pick(op))
                .expect("such an operation")
        }
    }

    /// The honest writer, over many seeds: the writes acked, up to [`IN_FLIGHT_OPS`] more
    /// applied (the last of them torn at sectors over the version it replaces), discards read
    /// as zeros or as old data: never a VIOLATION, whatever the cell promises.
    #[test]
    fn the_honest_rewriting_writer_never_violates() {
        for workload in [Workload::RawOverwrite, Workload::RawDiscard] {
            for seed in 0..150u64 {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let acked = rng.random_range(0..300);
                let written = acked + rng.random_range(0..=IN_FLIGHT_OPS);
                let reads = if rng.random_bool(0.5) {
                    DiscardReads::Zeros
                } else {
                    DiscardReads::Old
                };
                // All but the last written operation whole; the last, if unacked and a write,
                // torn at sectors over what its slot held.
                let whole = if written > acked {
                    written - 1
                } else {
                    written
                };
                let disk = Disk::run(workload, whole, acked, reads);
                if written > acked {
                    let seq = written - 1;
                    match disk.spec.op(seq, disk.log.header.slots()) {
                        Op::Write { slot } => {
                            let at = disk.spec.offset(slot);
                            let mut old = vec![0u8; SIZE];
                            disk.file.read_exact_at(&mut old, at).unwrap();
                            let mut new = vec![0u8; SIZE];
                            disk.spec.fill_at(seq, slot, &mut new);
                            for (o, n) in old.chunks_mut(SECTOR).zip(new.chunks(SECTOR)) {
                                if rng.random_bool(0.5) {
                                    o.copy_from_slice(n);
                                }
                            }
                            disk.file.write_all_at(&old, at).unwrap();
                        }
                        op => {
                            if matches!(op, Op::Zero { .. }) || rng.random_bool(0.5) {
                                for slot in op.slots() {
                                    let at = disk.spec.offset(slot);
                                    disk.file.write_all_at(&[0u8; SIZE], at).unwrap();
                                }
                            }
                        }
                    }
                }
                let v = disk.verify();
                assert_eq!(v.acked, acked);
                assert_eq!(
                    v.verdict(true),
                    Verdict::Ok,
                    "{workload} seed {seed}: {:?}",
                    v.problems
                );
            }
        }
    }

    /// An older version put back over an acknowledged newer one: rolled back, a VIOLATION
    /// where the cell promises survival and an allowed loss where it does not.
    #[test]
    fn an_old_version_over_an_acked_newer_one_is_a_violation_where_promised() {
        let disk = Disk::run(Workload::RawOverwrite, 200, 200, DiscardReads::Zeros);
        assert_eq!(disk.verify().verdict(true), Verdict::Ok);
        // The newest write of some slot, and that slot's version before it.
        let (newest, op) = disk.last_op(200, |_| true);
        let slot = op.first_slot();
        let (older, _) = disk.last_op(newest, |o| o == Op::Write { slot });
        assert_eq!(disk.put_back(older), slot);
        let v = disk.verify();
        assert_eq!((v.rolled_back, v.foreign), (1, 0), "{:?}", v.problems);
        assert_eq!(v.lost_acked(), 1);
        assert_eq!(v.verdict(true), Verdict::Violation);
        assert_eq!(v.verdict(false), Verdict::LossAllowed);
        assert!(
            v.problems.iter().any(|p| p.contains(&format!(
                "holds version {older}, older than the acked sequence {newest}"
            ))),
            "{:?}",
            v.problems
        );
    }

    /// The same damage where the newer version was never acknowledged: the writer may not have
    /// written it yet, so the older version is what the slot may hold.
    #[test]
    fn an_old_version_over_an_unacked_newer_one_is_allowed() {
        let disk = Disk::run(Workload::RawOverwrite, 200, 199, DiscardReads::Zeros);
        let (newest, op) = disk.last_op(200, |_| true);
        assert_eq!(newest, 199);
        let slot = op.first_slot();
        let (older, _) = disk.last_op(newest, |o| o == Op::Write { slot });
        disk.put_back(older);
        let v = disk.verify();
        assert_eq!(v.verdict(true), Verdict::Ok, "{:?}", v.problems);
    }

    /// A version the writer could not have reached (past the last ack plus what may be in
    /// flight) is data nobody wrote: a VIOLATION in every cell.
    #[test]
    fn a_version_from_the_future_is_foreign() {
        let disk = Disk::run(Workload::RawOverwrite, 50, 50, DiscardReads::Zeros);
        let future = 50 + IN_FLIGHT_OPS + 20;
        let Op::Write { slot } = disk.spec.op(future, disk.log.header.slots()) else {
            panic!("overwrite plans only write");
        };
        let mut buf = vec![0u8; SIZE];
        disk.spec.fill_at(future, slot, &mut buf);
        disk.file
            .write_all_at(&buf, disk.spec.offset(slot))
            .unwrap();
        let v = disk.verify();
        assert_eq!(v.foreign, 1, "{:?}", v.problems);
        assert_eq!(v.verdict(false), Verdict::Violation);
    }

    /// raw-discard: a flushed write-zeroes must read as zeros; the data it zeroed put back is a
    /// rollback. A discard may read as the old data, and writes after either must survive.
    #[test]
    fn zeroed_ranges_must_stay_zero_and_later_writes_survive() {
        let disk = Disk::run(Workload::RawDiscard, 300, 300, DiscardReads::Old);
        assert_eq!(disk.verify().verdict(true), Verdict::Ok);
        // A zeroed slot that no later write touched, and the write it zeroed.
        let slots = disk.log.header.slots();
        let zeroed = (0..300).rev().find_map(|z| match disk.spec.op(z, slots) {
            Op::Zero { first, count } => (first..first + count).find_map(|slot| {
                let rewritten =
                    (z + 1..300).any(|s| disk.spec.op(s, slots).slots().contains(&slot));
                let before = (0..z)
                    .rev()
                    .find(|&s| disk.spec.op(s, slots) == Op::Write { slot });
                (!rewritten).then_some(before).flatten()
            }),
            _ => None,
        });
        let before = zeroed.expect("a zeroed, written, not rewritten slot in 300 operations");
        disk.put_back(before);
        let v = disk.verify();
        assert_eq!(v.rolled_back, 1, "{:?}", v.problems);
        assert_eq!(v.verdict(true), Verdict::Violation);

        // The last acked write lost (its slot zeroed, as if a discard had been replayed after
        // it): lost where promised.
        let disk = Disk::run(Workload::RawDiscard, 300, 300, DiscardReads::Zeros);
        let (seq, op) = disk.last_op(300, |op| matches!(op, Op::Write { .. }));
        let later =
            (seq + 1..300).any(|s| disk.spec.op(s, slots).slots().contains(&op.first_slot()));
        assert!(!later || seq < 299);
        if !later {
            disk.file
                .write_all_at(&[0u8; SIZE], disk.spec.offset(op.first_slot()))
                .unwrap();
            let v = disk.verify();
            assert!(v.lost >= 1, "{:?}", v.problems);
            assert_eq!(v.verdict(true), Verdict::Violation);
        }
    }

    /// A discard or write-zeroes ack must name its operation exactly.
    #[test]
    fn range_acks_are_checked() {
        let mut disk = Disk::run(Workload::RawDiscard, 100, 100, DiscardReads::Zeros);
        let i = disk
            .log
            .acks
            .iter()
            .position(|a| !matches!(disk.spec.op(a.seq, 64), Op::Write { .. }))
            .expect("a range operation in 100");
        disk.log.acks[i].digest[3] ^= 1;
        let v = disk.verify();
        assert_eq!(v.bad_acks, 1);
        assert_eq!(v.verdict(false), Verdict::Violation);
    }
}
