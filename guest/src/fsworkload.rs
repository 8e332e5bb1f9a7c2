//! The crash tester's file workloads: what applications do on a guest filesystem.
//!
//! The raw writer ([`crate::writer`]) writes each disk slot once; applications instead write
//! files on ext4 or xfs and rely on `fsync(2)` and `rename(2)`. A file workload mounts the disk
//! under test (made into a filesystem on the host when the image is created) and runs one of
//! three patterns over a few files, each operation followed by the application's durability
//! point and then an ack naming the file, its version, length and sha256
//! ([`FileAck`], `FACK <seq> <name> <version> <len> <sha256>`):
//!
//! * [`FsOp::Append`]: `write(O_APPEND)` + `fsync(file)` (+ `fsync(dir)` when the file was new);
//! * [`FsOp::Replace`]: write `NAME.tmp` + `fsync(tmp)` + `rename(tmp, NAME)` + `fsync(dir)`;
//! * [`FsOp::Overwrite`]: `pwrite` into the existing file + `fsync(file)` (the file is created
//!   at its full length, with `fsync(file)` + `fsync(dir)`, on its first operation).
//!
//! Every operation is a pure function of the run's seed and the operation's sequence number
//! ([`Planner`]), so the host verifier regenerates any version of any file, the acked ones and
//! the one in flight at the fault, without trusting the guest for more than the ack's words.
//!
//! `ack_early` is the deliberately broken application of the checker's self-test: it acks right
//! after `write`/`rename` and never calls `fsync` (one `sync(2)` once the plan is done).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::record::{self, Digest, SplitMix64};

/// Files a workload spreads its operations over (`f0` .. `f7`).
pub const FILES: u32 = 8;
/// Operations after which the workload stops (sends `DONE`): bounds the files' sizes and the
/// host's replay.
pub const MAX_OPS: u64 = 2000;
/// The longest file name a `FACK` line may carry.
pub const MAX_NAME_BYTES: usize = 64;
/// Largest append, in bytes.
pub const MAX_APPEND: u64 = 4096;
/// Largest replacement file, in bytes.
pub const MAX_REPLACE: u64 = 16384;
/// Size of an overwritten file (created whole on its first operation).
pub const OVERWRITE_FILE: u64 = 16384;
/// Largest in-place overwrite, in bytes.
pub const MAX_OVERWRITE: u64 = 4096;
/// Where the guest mounts the disk under test.
pub const MOUNT_POINT: &str = "/mnt";

/// The guest filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FsKind {
    Ext4,
    Xfs,
}

impl FsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FsKind::Ext4 => "ext4",
            FsKind::Xfs => "xfs",
        }
    }
}

/// The application pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FsOp {
    Append,
    Replace,
    Overwrite,
}

impl FsOp {
    pub const ALL: [FsOp; 3] = [FsOp::Append, FsOp::Replace, FsOp::Overwrite];

    pub fn as_str(self) -> &'static str {
        match self {
            FsOp::Append => "append",
            FsOp::Replace => "replace",
            FsOp::Overwrite => "overwrite",
        }
    }
}

/// A file workload: filesystem, pattern, and whether the filesystem issues cache flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FsWorkload {
    pub fs: FsKind,
    pub op: FsOp,
    /// `false`: ext4 mounted with `barrier=0` (no flush, no FUA from the filesystem). XFS has
    /// no such option since Linux 4.19, so only ext4 workloads can turn it off.
    pub barriers: bool,
}

impl FsWorkload {
    /// Every workload this guest program knows, in the order reports list them.
    pub fn all() -> Vec<FsWorkload> {
        let mut all = Vec::new();
        for (fs, barriers) in [
            (FsKind::Ext4, true),
            (FsKind::Ext4, false),
            (FsKind::Xfs, true),
        ] {
            for op in FsOp::ALL {
                all.push(FsWorkload { fs, op, barriers });
            }
        }
        all
    }

    /// `ext4-append`, `ext4-nobarrier-replace`, `xfs-overwrite`.
    pub fn name(&self) -> String {
        if self.barriers {
            format!("{}-{}", self.fs.as_str(), self.op.as_str())
        } else {
            format!("{}-nobarrier-{}", self.fs.as_str(), self.op.as_str())
        }
    }

    /// The `mount(2)` data string the guest mounts the disk with.
    pub fn mount_options(&self) -> &'static str {
        if self.barriers {
            ""
        } else {
            "barrier=0"
        }
    }
}

impl fmt::Display for FsWorkload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for FsWorkload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FsWorkload::all()
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| {
                let names: Vec<String> = FsWorkload::all().iter().map(|w| w.name()).collect();
                format!("unknown file workload {s:?}: use {}", names.join(", "))
            })
    }
}

/// The name of file `index`.
pub fn file_name(index: u32) -> String {
    format!("f{index}")
}

/// One operation of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Sequence number in the plan, from 0.
    pub seq: u64,
    pub file: u32,
    /// The file's version after this operation, from 1.
    pub version: u64,
    /// Where `data` goes; with `whole`, the file's new content is exactly `data`.
    pub offset: u64,
    pub data: Vec<u8>,
    pub whole: bool,
    /// The file does not exist before this operation.
    pub creates: bool,
}

impl Op {
    /// The file's content after this operation, from its content before.
    pub fn apply(&self, content: &mut Vec<u8>) {
        if self.whole {
            content.clear();
            content.extend_from_slice(&self.data);
            return;
        }
        let start = self.offset as usize;
        let end = start + self.data.len();
        if content.len() < end {
            content.resize(end, 0);
        }
        content[start..end].copy_from_slice(&self.data);
    }
}

/// The deterministic operations of one run: the guest performs them, the host replays them.
#[derive(Debug, Clone)]
pub struct Planner {
    op: FsOp,
    seed: u64,
    next: u64,
    versions: Vec<u64>,
    lens: Vec<u64>,
}

impl Planner {
    pub fn new(op: FsOp, seed: u64) -> Planner {
        Planner {
            op,
            seed,
            next: 0,
            versions: vec![0; FILES as usize],
            lens: vec![0; FILES as usize],
        }
    }
}

fn fill(rng: &mut SplitMix64, len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize + 8);
    while (out.len() as u64) < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

impl Iterator for Planner {
    type Item = Op;
    fn next(&mut self) -> Option<Op> {
        if self.next >= MAX_OPS {
            return None;
        }
        let seq = self.next;
        self.next += 1;
        let mut rng = SplitMix64::new(self.seed ^ seq.wrapping_mul(0xA076_1D64_78BD_642F));
        let file = (rng.next() % u64::from(FILES)) as u32;
        let f = file as usize;
        let creates = self.versions[f] == 0;
        let (offset, len, whole) = match self.op {
            FsOp::Append => (self.lens[f], 1 + rng.next() % MAX_APPEND, false),
            FsOp::Replace => (0, 1 + rng.next() % MAX_REPLACE, true),
            FsOp::Overwrite if creates => (0, OVERWRITE_FILE, true),
            FsOp::Overwrite => {
                let offset = rng.next() % OVERWRITE_FILE;
                let len = (1 + rng.next() % MAX_OVERWRITE).min(OVERWRITE_FILE - offset);
                (offset, len, false)
            }
        };
        let data = fill(&mut rng, len);
        self.versions[f] += 1;
        self.lens[f] = if whole {
            len
        } else {
            self.lens[f].max(offset + len)
        };
        Some(Op {
            seq,
            file,
            version: self.versions[f],
            offset,
            data,
            whole,
            creates,
        })
    }
}

/// A file's version reached its durability point: `FACK <seq> <name> <version> <len> <sha256>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileAck {
    pub seq: u64,
    pub name: String,
    pub version: u64,
    pub len: u64,
    pub digest: Digest,
}

impl fmt::Display for FileAck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FACK {} {} {} {} {}",
            self.seq,
            self.name,
            self.version,
            self.len,
            record::to_hex(&self.digest)
        )
    }
}

/// A file name a `FACK` may carry: short, and only `[A-Za-z0-9._-]` (no path).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl FileAck {
    /// Parses the words after `FACK`; `None` unless exactly five well-formed words.
    pub fn parse_words(rest: &str) -> Option<FileAck> {
        let mut it = rest.split(' ');
        let seq = it.next()?.parse().ok()?;
        let name = it.next()?;
        if !valid_name(name) {
            return None;
        }
        let version = it.next()?.parse().ok()?;
        let len = it.next()?.parse().ok()?;
        let digest = record::digest_from_hex(it.next()?)?;
        if it.next().is_some() {
            return None;
        }
        Some(FileAck {
            seq,
            name: name.to_string(),
            version,
            len,
            digest,
        })
    }

    /// Parses a whole `FACK ...` line.
    pub fn parse(line: &str) -> Option<FileAck> {
        FileAck::parse_words(line.trim_end_matches(['\r', '\n']).strip_prefix("FACK ")?)
    }
}

/// The sha256 of a file's content.
pub fn digest(content: &[u8]) -> Digest {
    Sha256::digest(content).into()
}

fn ctx(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Whether the running kernel knows `fs` (`/proc/filesystems`, one `[nodev]\tNAME` a line).
pub fn kernel_has(fs: FsKind, proc_filesystems: &str) -> bool {
    proc_filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some(fs.as_str()))
}

/// Mounts `dev` on [`MOUNT_POINT`] as the workload says; a kernel without the filesystem (its
/// module absent from the guest image) is said plainly.
pub fn mount(dev: &str, workload: &FsWorkload) -> io::Result<()> {
    let known = fs::read_to_string("/proc/filesystems")?;
    if !kernel_has(workload.fs, &known) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "workload {workload} unavailable: the guest kernel has no {} (its module is not in the guest image: pass --modules of a kernel that has it)",
                workload.fs.as_str()
            ),
        ));
    }
    fs::create_dir_all(MOUNT_POINT)?;
    let c = |s: &str| std::ffi::CString::new(s).map_err(|_| io::Error::other("NUL in a string"));
    let (src, target, fstype, data) = (
        c(dev)?,
        c(MOUNT_POINT)?,
        c(workload.fs.as_str())?,
        c(workload.mount_options())?,
    );
    #[allow(unsafe_code)]
    // SAFETY: every pointer is a NUL-terminated string that lives until the call returns.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(ctx(format!(
            "mount -t {} -o '{}' {dev} {MOUNT_POINT}",
            workload.fs.as_str(),
            workload.mount_options()
        ))(io::Error::last_os_error()))
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ctx(format!("fsync {}", dir.display())))
}

/// Performs `op` in `dir` up to its durability point (none with `ack_early`).
pub fn perform(dir: &Path, workload: FsOp, op: &Op, ack_early: bool) -> io::Result<()> {
    let name = file_name(op.file);
    let path = dir.join(&name);
    let sync = !ack_early;
    let fsync = |f: &File, p: &Path| {
        if sync {
            f.sync_all().map_err(ctx(format!("fsync {}", p.display())))
        } else {
            Ok(())
        }
    };
    match workload {
        FsOp::Append => {
            let mut f = OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .map_err(ctx(format!("open {}", path.display())))?;
            f.write_all(&op.data)
                .map_err(ctx(format!("append to {}", path.display())))?;
            fsync(&f, &path)?;
        }
        FsOp::Replace => {
            let tmp = dir.join(format!("{name}.tmp"));
            let f = File::create(&tmp).map_err(ctx(format!("create {}", tmp.display())))?;
            f.write_all_at(&op.data, 0)
                .map_err(ctx(format!("write {}", tmp.display())))?;
            fsync(&f, &tmp)?;
            drop(f);
            fs::rename(&tmp, &path).map_err(ctx(format!("rename {}", tmp.display())))?;
        }
        FsOp::Overwrite => {
            let mut o = OpenOptions::new();
            o.write(true);
            if op.creates {
                o.create_new(true).mode(0o644);
            }
            let f = o
                .open(&path)
                .map_err(ctx(format!("open {}", path.display())))?;
            f.write_all_at(&op.data, op.offset)
                .map_err(ctx(format!("write {}", path.display())))?;
            fsync(&f, &path)?;
        }
    }
    // A new name is durable once its directory is (fsync(2): "an explicit fsync() on a file
    // descriptor for the directory is also needed"); a rename likewise.
    if sync && (op.creates || workload == FsOp::Replace) {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// Runs the first `limit` operations of `op`'s plan from `seed` in `dir`, calling `ack` after
/// each one's durability point; returns the number of operations done.
pub fn run_in(
    dir: &Path,
    op: FsOp,
    seed: u64,
    ack_early: bool,
    limit: u64,
    mut ack: impl FnMut(&FileAck) -> io::Result<()>,
) -> io::Result<u64> {
    let mut contents: Vec<Vec<u8>> = vec![Vec::new(); FILES as usize];
    let mut done = 0;
    for o in Planner::new(op, seed).take(limit as usize) {
        perform(dir, op, &o, ack_early)?;
        let content = &mut contents[o.file as usize];
        o.apply(content);
        ack(&FileAck {
            seq: o.seq,
            name: file_name(o.file),
            version: o.version,
            len: content.len() as u64,
            digest: digest(content),
        })?;
        done += 1;
    }
    if ack_early {
        #[allow(unsafe_code)]
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe {
            libc::sync()
        };
    }
    Ok(done)
}

/// The guest's file workload: mounts `dev` and runs the whole plan on it (see [`run_in`]).
pub fn run(
    dev: &str,
    workload: &FsWorkload,
    seed: u64,
    ack_early: bool,
    ack: impl FnMut(&FileAck) -> io::Result<()>,
) -> io::Result<u64> {
    mount(dev, workload)?;
    run_in(
        Path::new(MOUNT_POINT),
        workload.op,
        seed,
        ack_early,
        MAX_OPS,
        ack,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        let all = FsWorkload::all();
        assert_eq!(all.len(), 9);
        for w in &all {
            assert_eq!(w.name().parse::<FsWorkload>().unwrap(), *w);
        }
        assert_eq!(
            "ext4-nobarrier-append".parse::<FsWorkload>().unwrap(),
            FsWorkload {
                fs: FsKind::Ext4,
                op: FsOp::Append,
                barriers: false
            }
        );
        // XFS has no barrier option on the guest's kernel.
        let e = "xfs-nobarrier-append".parse::<FsWorkload>().unwrap_err();
        assert!(e.contains("ext4-append"), "{e}");
    }

    #[test]
    fn the_plan_is_deterministic_and_bounded() {
        for op in FsOp::ALL {
            let a: Vec<Op> = Planner::new(op, 7).take(200).collect();
            let b: Vec<Op> = Planner::new(op, 7).take(200).collect();
            let c: Vec<Op> = Planner::new(op, 8).take(200).collect();
            assert_eq!(a, b);
            assert_ne!(a, c);
            assert_eq!(Planner::new(op, 1).count() as u64, MAX_OPS);
            let mut contents = vec![Vec::new(); FILES as usize];
            let mut versions = [0u64; FILES as usize];
            for o in &a {
                let f = o.file as usize;
                assert_eq!(o.creates, versions[f] == 0);
                versions[f] += 1;
                assert_eq!(o.version, versions[f]);
                let before = contents[f].clone();
                o.apply(&mut contents[f]);
                match op {
                    FsOp::Append => {
                        assert!(contents[f].starts_with(&before));
                        assert!(o.data.len() as u64 <= MAX_APPEND && !o.data.is_empty());
                    }
                    FsOp::Replace => assert_eq!(contents[f], o.data),
                    FsOp::Overwrite => assert_eq!(contents[f].len() as u64, OVERWRITE_FILE),
                }
            }
        }
    }

    #[test]
    fn proc_filesystems_says_which_filesystems_the_kernel_has() {
        let known = "nodev\tsysfs\nnodev\tproc\n\text4\n";
        assert!(kernel_has(FsKind::Ext4, known));
        assert!(!kernel_has(FsKind::Xfs, known));
    }

    #[test]
    fn file_acks_round_trip_and_are_bounded() {
        let ack = FileAck {
            seq: 3,
            name: "f7".into(),
            version: 2,
            len: 4097,
            digest: digest(b"x"),
        };
        assert_eq!(FileAck::parse(&ack.to_string()), Some(ack.clone()));
        let line = ack.to_string();
        assert!(FileAck::parse(&format!("{line} extra")).is_none());
        assert!(FileAck::parse("FACK 1 ../etc 1 1 00").is_none());
        let long = "a".repeat(MAX_NAME_BYTES + 1);
        let h = "0".repeat(64);
        assert!(FileAck::parse(&format!("FACK 1 {long} 1 1 {h}")).is_none());
        assert!(FileAck::parse(&format!("FACK 1 a/b 1 1 {h}")).is_none());
        assert!(FileAck::parse(&format!("FACK 1 .. 1 1 {h}")).is_none());
        assert!(FileAck::parse(&format!("FACK 1 f0 1 1 {h}")).is_some());
    }
}
