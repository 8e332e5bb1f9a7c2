//! The file contract and the checker on real ext4 loop mounts (truncation, rollback, deletion).

use super::*;
use crate::oracle::{self, Verdict};
use kvmio_guest::writer::SyncPolicy;

fn versions(op: FsOp, seed: u64, file: u32, acked: u64) -> Versions {
    expected_versions(op, seed, &BTreeMap::from([(file, acked)]))
        .remove(&file)
        .unwrap()
}

/// The versions around version 2 of the first file the plan touches at least four times.
fn busy_file_versions(op: FsOp, seed: u64) -> Versions {
    let file = (0..FILES)
        .find(|&f| Planner::new(op, seed).filter(|o| o.file == f).count() >= 4)
        .unwrap();
    versions(op, seed, file, 2)
}

/// The contract is the raw writer's with the filesystem's journal commit as the flush:
/// with barriers it is a flushed record, with `barrier=0` an unflushed one.
#[test]
fn the_fs_contract_follows_the_flushes_the_filesystem_sends() {
    for format in [ImageFormat::Raw, ImageFormat::Qcow2] {
        for cache in CacheMode::ALL {
            for fault in Fault::ALL {
                for (barriers, sync) in [(true, SyncPolicy::Fdatasync), (false, SyncPolicy::None)] {
                    assert_eq!(
                        fs_promise(cache, fault, format, barriers).survives,
                        oracle::promise(cache, fault, sync, format).survives,
                        "{cache} {fault} {format} barriers={barriers}"
                    );
                }
            }
        }
    }
    // The demonstration cell: barrier=0, a volatile cache, power loss: nothing promised.
    let p = fs_promise(CacheMode::None, Fault::Power, ImageFormat::Raw, false);
    assert!(!p.survives && p.reason.contains("barrier=0"), "{p:?}");
    assert!(fs_promise(CacheMode::None, Fault::Power, ImageFormat::Raw, true).survives);
    assert!(!fs_promise(CacheMode::Unsafe, Fault::Power, ImageFormat::Raw, true).survives);
    assert!(fs_promise(CacheMode::Unsafe, Fault::Kill, ImageFormat::Raw, false).survives);
    assert!(!fs_promise(CacheMode::Writeback, Fault::Kill, ImageFormat::Qcow2, false).survives);
    assert!(
        fs_promise(
            CacheMode::Writethrough,
            Fault::PowerTorn,
            ImageFormat::Qcow2,
            false
        )
        .survives
    );
}

#[test]
fn exact_and_newer_versions_survive_older_truncated_and_missing_do_not() {
    for op in FsOp::ALL {
        let vs = busy_file_versions(op, 5);
        assert!(vs.contains_key(&1) && vs.contains_key(&3), "{op:?}");
        assert_eq!(classify(Some(&vs[&2]), &vs, 2, op), FileState::Exact(2));
        assert_eq!(classify(Some(&vs[&3]), &vs, 2, op), FileState::Exact(3));
        assert_eq!(classify(None, &vs, 2, op), FileState::Missing);
        assert_eq!(classify(Some(&vs[&1]), &vs, 2, op), FileState::Older(1));
        let truncated = &vs[&2][..vs[&2].len() - 1];
        if truncated != vs[&1].as_slice() {
            assert_eq!(
                classify(Some(truncated), &vs, 2, op),
                FileState::Damaged,
                "{op:?}"
            );
        }
        assert!(!FileState::Damaged.survived() && FileState::InFlight(2).survived());
    }
}

#[test]
fn a_write_in_flight_may_persist_in_part_but_not_a_replacement() {
    for op in FsOp::ALL {
        let vs = busy_file_versions(op, 9);
        let (old, new) = (&vs[&2], &vs[&3]);
        // The first sector of the new version, the rest of the old (and of the new's
        // length if it grew): a partly persisted write.
        let mut mixed = new.clone();
        let n = old.len().min(new.len());
        if n > SECTOR {
            mixed[SECTOR..n].copy_from_slice(&old[SECTOR..n]);
        }
        if mixed == *new || mixed == *old {
            continue;
        }
        let state = classify(Some(&mixed), &vs, 2, op);
        match op {
            FsOp::Replace => assert_eq!(state, FileState::Damaged),
            _ => assert_eq!(state, FileState::InFlight(2), "{op:?}"),
        }
        // A mix of the acked version with an older one is damage, not flight.
        let mut back = old.clone();
        let prev = &vs[&1];
        let m = back.len().min(prev.len()).min(SECTOR);
        back[..m].copy_from_slice(&prev[..m]);
        if back != *old {
            assert!(!classify(Some(&back), &vs, 2, op).survived(), "{op:?}");
        }
    }
}

#[test]
fn bad_acks_and_the_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let op = FsOp::Append;
    let first = Planner::new(op, 3).next().unwrap();
    let mut content = Vec::new();
    first.apply(&mut content);
    let good = FileAck {
        seq: 0,
        name: fsworkload::file_name(first.file),
        version: 1,
        len: content.len() as u64,
        digest: fsworkload::digest(&content),
    };
    let bad = FileAck {
        digest: [0; 32],
        ..good.clone()
    };
    let stranger = FileAck {
        name: "g1".into(),
        ..good.clone()
    };
    let acks = [good, bad, stranger];
    let check = FsCheck {
        workload: "ext4-append".parse().unwrap(),
        seed: 3,
        acks: &acks,
        done: false,
        format: ImageFormat::Raw,
        qemu_img: Path::new("qemu-img"),
        scratch_dir: dir.path(),
    };
    let mut v = Verification::default();
    let last = acked_versions(&check, &mut v);
    assert_eq!(last, BTreeMap::from([(first.file, 1)]));
    assert_eq!(v.bad_acks, 2, "{:?}", v.problems);
    assert_eq!(v.verdict(false), Verdict::Violation);
}

/// Mounts kvmio's own `image` on a loop device, lets `f` change its files, unmounts.
fn on_mounted(image: &Path, dir: &Path, f: impl FnOnce(&Path)) {
    let mut lm = LoopMount::attach(image).unwrap();
    lm.mount(FsKind::Ext4, dir).unwrap().unwrap();
    f(lm.path().unwrap());
    lm.release();
}

/// Real ext4 on a real loop device (tests run as root): the workload's own code writes the
/// files, the checker finds them all; then an acked file truncated after its ack, and an
/// older version put back over an acked newer one, are each found and break the promise.
#[test]
fn a_real_ext4_image_truncated_or_rolled_back_after_the_ack_is_a_violation() {
    let dir = tempfile::tempdir().unwrap();
    let qemu_img = Path::new("qemu-img");
    let template = fsimage::make_template(
        qemu_img,
        dir.path(),
        FsKind::Ext4,
        ImageFormat::Raw,
        16 << 20,
    )
    .unwrap();
    for (n, op) in FsOp::ALL.into_iter().enumerate() {
        let seed = 11 + n as u64;
        let image = dir.path().join(format!("{}.raw", op.as_str()));
        fsimage::instantiate(&template, &image, 0).unwrap();
        let mut acks = Vec::new();
        on_mounted(&image, dir.path(), |root| {
            fsworkload::run_in(root, op, seed, false, 40, |a| {
                acks.push(a.clone());
                Ok(())
            })
            .unwrap();
        });
        let workload = FsWorkload {
            fs: FsKind::Ext4,
            op,
            barriers: true,
        };
        let check = FsCheck {
            workload,
            seed,
            acks: &acks,
            done: false,
            format: ImageFormat::Raw,
            qemu_img,
            scratch_dir: dir.path(),
        };
        let v = verify_fs(&image, &check).unwrap();
        assert!(v.acked > 1 && v.survived == v.acked, "{op:?} {v:?}");
        assert_eq!((v.image_corruptions, v.bad_acks), (0, 0), "{v:?}");
        assert!(v
            .image_check
            .as_deref()
            .unwrap()
            .contains("after replay: e2fsck -fn: exit 0"));
        assert_eq!(v.verdict(true), Verdict::Ok);

        // The last acked file, truncated by one byte after its ack.
        let last = acks.last().unwrap().clone();
        on_mounted(&image, dir.path(), |root| {
            let f = File::options()
                .write(true)
                .open(root.join(&last.name))
                .unwrap();
            f.set_len(last.len - 1).unwrap();
        });
        let v = verify_fs(&image, &check).unwrap();
        assert_eq!((v.acked_corrupted, v.lost), (1, 0), "{op:?} {v:?}");
        assert_eq!(v.verdict(true), Verdict::Violation);
        assert_eq!(v.verdict(false), Verdict::LossAllowed);

        // A file acked at version >= 2, put back to its version before.
        let a = acks.iter().rev().find(|a| a.version >= 2).unwrap();
        let i = name_index(&a.name).unwrap();
        let last_v = acks
            .iter()
            .filter(|b| b.name == a.name)
            .map(|b| b.version)
            .max()
            .unwrap();
        let vs = versions(op, seed, i, last_v);
        on_mounted(&image, dir.path(), |root| {
            std::fs::write(root.join(&a.name), &vs[&(last_v - 1)]).unwrap();
        });
        let v = verify_fs(&image, &check).unwrap();
        assert!(
            v.problems
                .iter()
                .any(|p| p.contains("holds the older version")),
            "{op:?} {:?}",
            v.problems
        );
        assert_eq!(v.verdict(true), Verdict::Violation);
        // And deleting it is a loss.
        on_mounted(&image, dir.path(), |root| {
            std::fs::remove_file(root.join(&a.name)).unwrap();
        });
        let v = verify_fs(&image, &check).unwrap();
        assert!(v.lost >= 1, "{v:?}");
        assert_eq!(v.verdict(true), Verdict::Violation);
    }
}
