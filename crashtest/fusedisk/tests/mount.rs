//! The volatile filesystem mounted through the kernel's real FUSE (needs root and /dev/fuse):
//! what survives a power failure after writes, fsync, O_DSYNC, O_DIRECT, growth, truncation,
//! punched holes, and seeded subsets; the cut; the mount's clean-up. The backing file is what a
//! rebooted host reads.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use kvmio_fusedisk::{is_mount_point, Misbehaviour, Options, PowerFailMode, VolatileMount};

/// Fields drop in order: the mount before its directory.
struct Setup {
    mount: Option<VolatileMount>,
    backing: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn setup(misbehaviour: Misbehaviour) -> Setup {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let backing = dir.path().join("backing");
    let point = dir.path().join("mnt");
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&point).unwrap();
    let mount = VolatileMount::mount(
        &point,
        &backing,
        Options {
            max_file_size: 64 << 20,
            misbehaviour,
            ..Options::default()
        },
    )
    .unwrap();
    Setup {
        mount: Some(mount),
        backing,
        _dir: dir,
    }
}

impl Setup {
    fn m(&self) -> &VolatileMount {
        self.mount.as_ref().unwrap()
    }

    fn open(&self, name: &str, flags: i32) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(flags)
            .open(self.m().path(name))
            .unwrap()
    }

    /// Power failure, unmount; the backing file's bytes.
    fn crash(&mut self, name: &str, mode: PowerFailMode) -> Vec<u8> {
        let m = self.mount.take().unwrap();
        m.power_fail(mode).unwrap();
        let point = m.mountpoint().to_path_buf();
        m.unmount().unwrap();
        assert!(!is_mount_point(&point));
        std::fs::read(self.backing.join(name)).unwrap()
    }
}

fn all(b: &[u8], v: u8) -> bool {
    b.iter().all(|&x| x == v)
}

/// An aligned buffer for O_DIRECT.
fn aligned(len: usize, v: u8) -> Vec<u8> {
    let mut b = vec![v; len + 4096];
    let off = b.as_ptr().align_offset(4096);
    b.drain(..off);
    b.truncate(len);
    b
}

#[test]
fn fsync_makes_writes_and_growth_durable_and_the_rest_is_lost() {
    let mut s = setup(Misbehaviour::None);
    let f = s.open("a.img", 0);
    f.write_all_at(&[1; 8192], 0).unwrap();
    f.sync_data().unwrap();
    // Unflushed: an overwrite and growth.
    f.write_all_at(&[2; 4096], 0).unwrap();
    f.write_all_at(&[3; 4096], 16384).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 20480);
    let mut r = [0u8; 4096];
    f.read_exact_at(&mut r, 16384).unwrap();
    assert!(all(&r, 3), "reads see the volatile layer");
    drop(f);
    let b = s.crash("a.img", PowerFailMode::DropAll);
    assert_eq!(b.len(), 8192, "the unflushed growth is gone");
    assert!(all(&b, 1));
}

#[test]
fn o_dsync_and_o_direct_writes() {
    let mut s = setup(Misbehaviour::None);
    // O_DSYNC writes are durable when they return (the kernel also sends an fsync after each,
    // which makes everything before it durable, as a disk cache flush does).
    let sync = s.open("b.img", libc::O_DSYNC | libc::O_DIRECT);
    sync.write_all_at(&aligned(4096, 6), 4096).unwrap();
    // O_DIRECT opens work; an O_DIRECT write alone is not durable (the host's disk cache).
    let d = s.open("b.img", libc::O_DIRECT);
    d.write_all_at(&aligned(4096, 5), 0).unwrap();
    let mut back = aligned(4096, 0);
    d.read_exact_at(&mut back, 0).unwrap();
    assert!(all(&back, 5));
    drop((d, sync));
    let b = s.crash("b.img", PowerFailMode::DropAll);
    assert_eq!(b.len(), 8192);
    assert!(all(&b[..4096], 0), "the plain O_DIRECT write was volatile");
    assert!(all(&b[4096..], 6));
}

fn punch_hole(f: &File, offset: i64, len: i64) {
    let flags = nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
        | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
    nix::fcntl::fallocate(f.as_raw_fd(), flags, offset, len).unwrap();
}

#[test]
fn punched_holes_and_truncation_are_volatile_until_fsync() {
    let mut s = setup(Misbehaviour::None);
    let f = s.open("c.img", 0);
    f.write_all_at(&[7; 65536], 0).unwrap();
    f.sync_all().unwrap();
    punch_hole(&f, 4096, 8192);
    let mut r = [1u8; 8192];
    f.read_exact_at(&mut r, 4096).unwrap();
    assert!(all(&r, 0), "the hole reads as zeroes");
    f.set_len(32768).unwrap();
    f.set_len(65536).unwrap();
    let mut r = [1u8; 4096];
    f.read_exact_at(&mut r, 40960).unwrap();
    assert!(
        all(&r, 0),
        "what a shrink cut off reads as zeroes after growth"
    );
    // Allocation grows the file.
    nix::fcntl::fallocate(
        f.as_raw_fd(),
        nix::fcntl::FallocateFlags::empty(),
        0,
        131072,
    )
    .unwrap();
    assert_eq!(f.metadata().unwrap().len(), 131072);
    drop(f);
    let b = s.crash("c.img", PowerFailMode::DropAll);
    assert_eq!(b.len(), 65536);
    assert!(
        all(&b, 7),
        "neither the hole, the shrink nor the growth was flushed"
    );

    let mut s = setup(Misbehaviour::None);
    let f = s.open("c.img", 0);
    f.write_all_at(&[7; 65536], 0).unwrap();
    punch_hole(&f, 4096, 8192);
    f.set_len(32768).unwrap();
    f.sync_data().unwrap();
    drop(f);
    let b = s.crash("c.img", PowerFailMode::DropAll);
    assert_eq!(b.len(), 32768);
    assert!(all(&b[..4096], 7) && all(&b[4096..12288], 0) && all(&b[12288..], 7));
}

#[test]
fn subsets_keep_whole_writes_and_torn_ones_whole_sectors() {
    for seed in 0..8 {
        for torn in [false, true] {
            let mut s = setup(Misbehaviour::None);
            let f = s.open("d.img", 0);
            for i in 0..16u8 {
                f.write_all_at(&[i + 1; 8192], u64::from(i) * 8192).unwrap();
            }
            drop(f);
            let mode = if torn {
                PowerFailMode::SubsetTorn { seed }
            } else {
                PowerFailMode::Subset { seed }
            };
            let b = s.crash("d.img", mode);
            assert!(b.len() <= 16 * 8192 && b.len() % 512 == 0);
            for (i, w) in b.chunks(8192).enumerate() {
                let kept: Vec<bool> = w
                    .chunks(512)
                    .map(|sector| {
                        assert!(all(sector, 0) || all(sector, i as u8 + 1), "seed {seed}");
                        sector[0] != 0
                    })
                    .collect();
                if !torn && w.len() == 8192 {
                    assert!(kept.iter().all(|&k| k) || kept.iter().all(|&k| !k));
                }
            }
        }
    }
}

#[test]
fn a_lying_host_keeps_nothing_and_a_reordering_one_loses_the_last_write() {
    let mut s = setup(Misbehaviour::LieAboutFsync);
    let f = s.open("e.img", libc::O_DSYNC);
    f.write_all_at(&[1; 4096], 0).unwrap();
    f.sync_data().unwrap();
    drop(f);
    assert!(s.crash("e.img", PowerFailMode::DropAll).is_empty());

    let mut s = setup(Misbehaviour::ReorderFsync);
    let f = s.open("e.img", 0);
    f.write_all_at(&[1; 4096], 0).unwrap();
    f.write_all_at(&[2; 4096], 4096).unwrap();
    f.sync_data().unwrap();
    drop(f);
    let b = s.crash("e.img", PowerFailMode::DropAll);
    assert!(all(&b[..4096], 1));
    assert!(
        all(&b[4096..], 0),
        "the flushed last write was held back and lost"
    );
}

#[test]
fn nothing_is_processed_after_the_cut() {
    let mut s = setup(Misbehaviour::None);
    let f = s.open("f.img", libc::O_DIRECT);
    f.write_all_at(&aligned(4096, 1), 0).unwrap();
    f.sync_data().unwrap();
    s.m().cut();
    // A writer after the cut blocks (its request is parked) until release answers EIO.
    let path = s.m().path("f.img");
    let writer = std::thread::spawn(move || {
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path);
        match f {
            Ok(f) => f
                .write_all_at(&aligned(4096, 2), 0)
                .and_then(|_| f.sync_data()),
            Err(e) => Err(e),
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !writer.is_finished(),
        "the request after the cut was answered"
    );
    // A crash test SIGKILLs the writer here; then its requests are answered EIO, and every
    // later one at once.
    assert!(s.m().release() >= 1);
    assert!(writer.join().unwrap().is_err());
    drop(f);
    let b = s.crash("f.img", PowerFailMode::DropAll);
    assert!(all(&b, 1));
}

#[test]
fn a_mount_point_in_use_is_refused_and_drop_unmounts() {
    let s = setup(Misbehaviour::None);
    let point = s.m().mountpoint().to_path_buf();
    let other = tempfile::tempdir().unwrap();
    let e = VolatileMount::mount(&point, other.path(), Options::default()).unwrap_err();
    assert!(e.to_string().contains("already a mount point"), "{e}");
    assert!(kvmio_fusedisk::stale_mounts().iter().all(|p| *p != point));
    drop(s);
    assert!(!is_mount_point(&point));
}
