//! The rewriting workloads (`raw-overwrite`, `raw-discard`) through the real verification path:
//! images made by replaying the writer's own plan, then damaged the ways the contract forbids.

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
                    (Op::Write { slot }, _) => file.write_all_at(&buf, spec.offset(slot)).unwrap(),
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
            let rewritten = (z + 1..300).any(|s| disk.spec.op(s, slots).slots().contains(&slot));
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
    let later = (seq + 1..300).any(|s| disk.spec.op(s, slots).slots().contains(&op.first_slot()));
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
