//! The raw workloads' slot classification: each slot of the surviving disk against every
//! version the writer's plan may have put there, and the acks accounted from it (the rules are
//! in the parent module's documentation).

use super::*;

/// How many operations past the last acked one a rewriting writer may have run before the
/// fault: the one in progress when it stopped, with margin. The writer is sequential and sends
/// each `ACK` before its next operation, and a line the guest wrote to its port reaches the
/// host even when QEMU dies (see `docs/crash-consistency.md`); the margin only widens what
/// counts as possibly written.
pub const IN_FLIGHT_OPS: u64 = 4;

/// The acks, checked: the slots each acked operation touched, and the write records' digests
/// still to compare (the scan compares those of the records it builds anyway).
#[derive(Debug, Default)]
pub(super) struct Acked {
    /// Acked operations by sequence number: (operation, the digest acked for a write).
    ops: std::collections::BTreeMap<u64, (Op, Option<Digest>)>,
    /// Acked sequence numbers by slot they touched, ascending.
    by_slot: HashMap<u64, Vec<u64>>,
}

/// Checks the acks' structure (sequence in the plan, naming its operation's first slot, once)
/// and the digests of discards and write-zeroes; arranges the acks for the scan. The write
/// records' digests are checked against the expected records by [`check_ack_digests`], with
/// the hashes the scan computes anyway.
pub(super) fn check_acks(log: &AckLog, v: &mut Verification) -> Acked {
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

pub(super) fn bad_ack(v: &mut Verification, seq: u64, slot: u64) {
    v.bad_acks += 1;
    v.problem(format!(
        "ack for sequence {seq} slot {slot} does not match the record the writer must have written there"
    ));
}

/// Compares the digest of every acked write whose record the scan did not build (`checked`
/// holds the sequence numbers it did) with the expected record's.
pub(super) fn check_ack_digests(
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
pub(super) struct Executed {
    spec: RecordSpec,
    /// For the rewriting plans: each operation that may have run, by slot it touched, in order.
    by_slot: HashMap<u64, Vec<(u64, Op)>>,
    /// Operations `0..end` may have run.
    end: u64,
}

impl Executed {
    pub(super) fn new(
        spec: RecordSpec,
        slots: u64,
        highest_acked: Option<u64>,
        done: bool,
    ) -> Executed {
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
pub(super) enum SlotState {
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

pub(super) fn is_zero(buf: &[u8]) -> bool {
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
pub(super) fn classify(
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
pub(super) fn keeps(state: SlotState, ops: &[(u64, Op)], seq: u64) -> bool {
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
pub(super) fn classify_all(
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
pub(super) fn data_ranges(file: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
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
pub(super) fn scan(file: &File, log: &AckLog) -> io::Result<Verification> {
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
pub(super) fn account_slot(v: &mut Verification, slot: u64, state: SlotState, is_acked: bool) {
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
pub(super) fn account_acks(
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
