//! The checker against images with every way a record can be damaged (raw-append).

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
