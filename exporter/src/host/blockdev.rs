//! Host block devices from sysfs: which device holds a VM image, what lies below it, and its IO
//! scheduler. (About 400 lines of code; the rest are tests over hand-built dm/md trees.)
//!
//! Resolution of an image file:
//! 1. `stat()` the image (following symlinks). A block-device image (LVM LV, zvol, raw disk) *is*
//!    its device: `st_rdev`. A regular file lives on the filesystem of `st_dev`.
//! 2. `st_dev` major 0 is an anonymous device (tmpfs, overlayfs, NFS, FUSE, ZFS, but also btrfs,
//!    which gives every subvolume one): the mount table (`<procfs>/self/mountinfo`) is consulted,
//!    and if the filesystem's source is a `/dev/...` block device (btrfs), that device is used.
//!    Otherwise the image has no host block device, and the reason says why.
//! 3. `<sysfs>/dev/block/MAJ:MIN` leads to the device's sysfs directory. The kernel name of that
//!    directory is [`BackingDevice::fs_device`] (e.g. `vda1`, `dm-3`). A partition is replaced by
//!    its parent disk for [`BackingDevice::host_device`] (`vda`, `dm-3`, `md0`): the whole device
//!    whose queue the image's IO goes through, and the value of the `host_device` label.
//! 4. From the whole device, `slaves/` are followed down (device-mapper, md, bcache, each level a
//!    partition replaced by its disk) to the physical disks: [`BackingDevice::physical_devices`].
//!    A loop device is followed to the device of the file it reads (`loop/backing_file`, then
//!    steps 1-3 for that file), so an image on a filesystem in a loop-mounted file, or a
//!    `/dev/loopN` image, counts against the disk the IO ends on. A backing file that is gone
//!    (` (deleted)`), not local, or on no block device leaves the loop device as the leaf.
//!
//! Nothing here fails a scrape: an image that cannot be resolved is [`ImageDevice::Unresolved`]
//! with a one-line reason.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Follow `slaves/` at most this deep (real stacks are 2-4 levels; this stops a cycle in a
/// corrupt or malicious fixture tree).
const MAX_STACK_DEPTH: usize = 16;

/// A loop device's `backing_file` longer than this is not followed (the kernel caps it at
/// `PATH_MAX`, 4096 bytes).
const MAX_BACKING_FILE_BYTES: u64 = 4096;

/// Where sysfs and procfs are (`--path.sysfs`, `--path.procfs`).
#[derive(Debug, Clone, Copy)]
struct Roots<'a> {
    sysfs: &'a Path,
    procfs: &'a Path,
}

/// The host block devices under one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingDevice {
    /// `major:minor` of [`Self::fs_device`].
    pub dev: (u32, u32),
    /// The device holding the image's filesystem, or the image itself if it is a block device;
    /// may be a partition (`vda1`).
    pub fs_device: String,
    /// The whole device the IO goes through: `fs_device`, or its parent disk if it is a partition.
    /// The `host_device` label of `kvmio_disk_layer_info`.
    pub host_device: String,
    /// The physical disks at the bottom of the stack below `host_device` (itself for a plain
    /// disk), sorted and without duplicates.
    pub physical_devices: Vec<String>,
}

impl BackingDevice {
    /// Every device name involved (fs device, host device, physical disks), sorted, deduplicated:
    /// the set `--host.devices=backing` exports diskstats for.
    pub fn all_devices(&self) -> BTreeSet<String> {
        let mut set: BTreeSet<String> = self.physical_devices.iter().cloned().collect();
        set.insert(self.fs_device.clone());
        set.insert(self.host_device.clone());
        set
    }
}

/// Result of resolving one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageDevice {
    /// The image is on (or is) a host block device.
    Resolved(BackingDevice),
    /// No host block device: network or memory filesystem, missing file, not a local path...
    Unresolved {
        /// One line saying why.
        reason: String,
    },
}

impl ImageDevice {
    /// The `host_device` label value: the whole device, or `""` when unresolved.
    pub fn host_device(&self) -> &str {
        match self {
            ImageDevice::Resolved(b) => &b.host_device,
            ImageDevice::Unresolved { .. } => "",
        }
    }

    /// Why the image has no host device, if it has none.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ImageDevice::Resolved(_) => None,
            ImageDevice::Unresolved { reason } => Some(reason),
        }
    }

    /// The resolved devices, if any.
    pub fn backing(&self) -> Option<&BackingDevice> {
        match self {
            ImageDevice::Resolved(b) => Some(b),
            ImageDevice::Unresolved { .. } => None,
        }
    }
}

fn unresolved(reason: String) -> ImageDevice {
    ImageDevice::Unresolved { reason }
}

/// Resolves an image file (or block device) path to the host block devices under it.
///
/// Blocking (it calls `stat()`, which can hang on a dead NFS server): call it from
/// `tokio::task::spawn_blocking`, as [`crate::scrape::ScrapeContext::resolved_images`] does.
pub fn resolve_image(image: &Path, procfs: &Path, sysfs: &Path) -> ImageDevice {
    resolve_images(&[image.to_path_buf()], procfs, sysfs)
        .pop()
        .expect("one result per image")
}

/// [`resolve_image`] for many images: each host device is looked up in sysfs once (a hundred
/// images on one filesystem cost a hundred `stat()`s and one sysfs walk). One result per image,
/// in order.
pub fn resolve_images(images: &[PathBuf], procfs: &Path, sysfs: &Path) -> Vec<ImageDevice> {
    let mut by_dev: HashMap<(u32, u32), Result<BackingDevice, String>> = HashMap::new();
    let mut anonymous: HashMap<u32, Result<(u32, u32), AnonReason>> = HashMap::new();
    images
        .iter()
        .map(|image| {
            let (major, minor) = match stat_image(image) {
                Ok(dev) => dev,
                Err(unresolved) => return unresolved,
            };
            let (major, minor) = if major == 0 {
                let found = anonymous
                    .entry(minor)
                    .or_insert_with(|| anonymous_source(minor, procfs));
                match found {
                    Ok(dev) => *dev,
                    Err(reason) => return reason.for_image(image, minor),
                }
            } else {
                (major, minor)
            };
            match by_dev
                .entry((major, minor))
                .or_insert_with(|| resolve_dev_in(Roots { sysfs, procfs }, major, minor))
            {
                Ok(b) => ImageDevice::Resolved(b.clone()),
                Err(e) => unresolved(format!("{}: {e}", image.display())),
            }
        })
        .collect()
}

/// The device number an image is on (or is), or why there is none.
fn stat_image(image: &Path) -> Result<(u32, u32), ImageDevice> {
    if !image.is_absolute() {
        // QEMU filenames like `nbd+unix:///...`, `json:{...}`, `rbd:pool/img`.
        return Err(unresolved(format!(
            "{} is not a local absolute path",
            image.display()
        )));
    }
    let meta =
        fs::metadata(image).map_err(|e| unresolved(format!("stat {}: {e}", image.display())))?;
    let ft = meta.file_type();
    if ft.is_block_device() {
        Ok(split_dev(meta.rdev()))
    } else if ft.is_file() {
        Ok(split_dev(meta.dev()))
    } else {
        Err(unresolved(format!(
            "{} is neither a regular file nor a block device",
            image.display()
        )))
    }
}

fn split_dev(dev: u64) -> (u32, u32) {
    (
        nix::sys::stat::major(dev) as u32,
        nix::sys::stat::minor(dev) as u32,
    )
}

/// Why an anonymous device (`st_dev` 0:minor) has no block device, independent of the image.
#[derive(Debug, Clone)]
enum AnonReason {
    MountinfoUnreadable { path: PathBuf, error: String },
    NotMounted,
    NoBlockDevice { fstype: String, source: String },
}

impl AnonReason {
    fn for_image(&self, image: &Path, minor: u32) -> ImageDevice {
        unresolved(match self {
            AnonReason::MountinfoUnreadable { path, error } => format!(
                "{} is on anonymous device 0:{minor} and {} is unreadable: {error}",
                image.display(),
                path.display()
            ),
            AnonReason::NotMounted => format!(
                "{} is on anonymous device 0:{minor}, not in the mount table",
                image.display()
            ),
            AnonReason::NoBlockDevice { fstype, source } => format!(
                "{} is on a {fstype} filesystem (source {source:?}, device 0:{minor}) with no \
                 host block device",
                image.display()
            ),
        })
    }
}

/// `st_dev` 0:minor: look the filesystem up in the mount table; a `/dev/...` source (btrfs)
/// gives the block device.
fn anonymous_source(minor: u32, procfs: &Path) -> Result<(u32, u32), AnonReason> {
    let mountinfo_path = procfs.join("self/mountinfo");
    let mountinfo =
        fs::read_to_string(&mountinfo_path).map_err(|e| AnonReason::MountinfoUnreadable {
            path: mountinfo_path.clone(),
            error: e.to_string(),
        })?;
    let mount = find_mount(&mountinfo, 0, minor).ok_or(AnonReason::NotMounted)?;
    if mount.source.starts_with("/dev/") {
        if let Ok(meta) = fs::metadata(&mount.source) {
            if meta.file_type().is_block_device() {
                return Ok(split_dev(meta.rdev()));
            }
        }
    }
    Err(AnonReason::NoBlockDevice {
        fstype: mount.fstype,
        source: mount.source,
    })
}

pub use kvmio_mountinfo::MountEntry;

/// Finds the first mount of device `major:minor` in mountinfo text.
pub fn find_mount(mountinfo: &str, major: u32, minor: u32) -> Option<MountEntry> {
    let want = format!("{major}:{minor}");
    mountinfo
        .lines()
        .filter_map(kvmio_mountinfo::parse_line)
        .find(|m| m.dev == want)
}

/// Resolves a device number through sysfs (`<sysfs>/dev/block/MAJ:MIN`); a loop device's
/// backing file on an anonymous device (btrfs) is looked up in `/proc`'s mount table.
pub fn resolve_dev(sysfs: &Path, major: u32, minor: u32) -> Result<BackingDevice, String> {
    let procfs = Path::new("/proc");
    resolve_dev_in(Roots { sysfs, procfs }, major, minor)
}

fn resolve_dev_in(roots: Roots<'_>, major: u32, minor: u32) -> Result<BackingDevice, String> {
    let dir = dev_dir(roots.sysfs, major, minor)?;
    let fs_device = dev_name(&dir)?;
    let whole = whole_device_dir(&dir);
    let host_device = dev_name(&whole)?;
    let mut physical = BTreeSet::new();
    collect_leaves(roots, &whole, 0, &mut BTreeSet::new(), &mut physical);
    Ok(BackingDevice {
        dev: (major, minor),
        fs_device,
        host_device,
        physical_devices: physical.into_iter().collect(),
    })
}

/// The physical disks below a whole device known by its kernel name (`<sysfs>/block/NAME`):
/// device-mapper and md `slaves/` followed down, partitions replaced by their disks.
pub fn physical_devices(sysfs: &Path, device: &str) -> Result<Vec<String>, String> {
    if device.is_empty() || device.contains('/') || device == "." || device == ".." {
        return Err(format!("{device:?} is not a block device name"));
    }
    let link = sysfs.join("block").join(device);
    let dir = fs::canonicalize(&link).map_err(|e| format!("{}: {e}", link.display()))?;
    let mut physical = BTreeSet::new();
    let procfs = Path::new("/proc");
    collect_leaves(
        Roots { sysfs, procfs },
        &whole_device_dir(&dir),
        0,
        &mut BTreeSet::new(),
        &mut physical,
    );
    Ok(physical.into_iter().collect())
}

/// The sysfs directory of device `major:minor` (`<sysfs>/dev/block/MAJ:MIN`, resolved).
fn dev_dir(sysfs: &Path, major: u32, minor: u32) -> Result<PathBuf, String> {
    let link = sysfs.join(format!("dev/block/{major}:{minor}"));
    fs::canonicalize(&link).map_err(|e| format!("device {major}:{minor}: {}: {e}", link.display()))
}

fn dev_name(dir: &Path) -> Result<String, String> {
    dir.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| format!("{} has no device name", dir.display()))
}

/// A partition's sysfs directory has a `partition` attribute and sits inside its disk's.
fn whole_device_dir(dir: &Path) -> PathBuf {
    if dir.join("partition").is_file() {
        if let Some(parent) = dir.parent() {
            return parent.to_path_buf();
        }
    }
    dir.to_path_buf()
}

fn collect_leaves(
    roots: Roots<'_>,
    whole: &Path,
    depth: usize,
    visited: &mut BTreeSet<PathBuf>,
    out: &mut BTreeSet<String>,
) {
    // Each device is expanded once: a cycle (impossible in a real kernel, possible in a broken
    // tree) or a diamond does not repeat work.
    if !visited.insert(whole.to_path_buf()) {
        return;
    }
    let mut slaves: Vec<PathBuf> = match fs::read_dir(whole.join("slaves")) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .filter_map(|e| fs::canonicalize(e.path()).ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    slaves.sort();
    if slaves.is_empty() && depth < MAX_STACK_DEPTH {
        if let Some(below) = loop_backing_dir(roots, whole) {
            collect_leaves(roots, &below, depth + 1, visited, out);
            return;
        }
    }
    if slaves.is_empty() || depth >= MAX_STACK_DEPTH {
        if let Ok(name) = dev_name(whole) {
            out.insert(name);
        }
        return;
    }
    for slave in slaves {
        collect_leaves(roots, &whole_device_dir(&slave), depth + 1, visited, out);
    }
}

/// For a loop device (`<dir>/loop/backing_file`), the whole device under its backing file.
fn loop_backing_dir(roots: Roots<'_>, whole: &Path) -> Option<PathBuf> {
    let file = loop_backing_file(whole)?;
    let found = stat_image(&file).ok().and_then(|(major, minor)| {
        let (major, minor) = if major == 0 {
            anonymous_source(minor, roots.procfs).ok()?
        } else {
            (major, minor)
        };
        dev_dir(roots.sysfs, major, minor).ok()
    });
    if found.is_none() {
        tracing::debug!(
            loop_device = %whole.display(),
            backing_file = %file.display(),
            "loop device's backing file is on no block device"
        );
    }
    found.map(|dir| whole_device_dir(&dir))
}

/// The file a loop device reads (`<dir>/loop/backing_file`), if `dir` is a bound loop device
/// whose file is still there (the kernel appends ` (deleted)` to a deleted one).
fn loop_backing_file(whole: &Path) -> Option<PathBuf> {
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    let f = fs::File::open(whole.join("loop/backing_file")).ok()?;
    let mut buf = Vec::new();
    f.take(MAX_BACKING_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .ok()?;
    if buf.len() as u64 > MAX_BACKING_FILE_BYTES {
        return None;
    }
    let path = buf.strip_suffix(b"\n").unwrap_or(&buf);
    if !path.starts_with(b"/") || path.ends_with(b" (deleted)") {
        return None;
    }
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(path)))
}

/// The active IO scheduler of a whole device, from `<sysfs>/block/DEV/queue/scheduler`.
///
/// `None` when the device has no scheduler file (bio-based devices such as zram, partitions) or
/// it is unreadable or empty.
pub fn read_scheduler(sysfs: &Path, device: &str) -> Option<String> {
    if device.is_empty() || device.contains('/') || device == "." || device == ".." {
        return None;
    }
    let text = fs::read_to_string(sysfs.join("block").join(device).join("queue/scheduler")).ok()?;
    parse_scheduler(&text)
}

/// `none [mq-deadline] kyber bfq` -> `mq-deadline`; `[none] ...` or a bare `none` -> `none`.
pub fn parse_scheduler(text: &str) -> Option<String> {
    let text = text.trim();
    if let Some(start) = text.find('[') {
        let rest = &text[start + 1..];
        let end = rest.find(']')?;
        let name = rest[..end].trim();
        return (!name.is_empty()).then(|| name.to_owned());
    }
    // No brackets: a single entry (e.g. `none`) is the one in use.
    let mut words = text.split_ascii_whitespace();
    match (words.next(), words.next()) {
        (Some(only), None) => Some(only.to_owned()),
        _ => None,
    }
}

/// The device-mapper name (`<sysfs>/block/dm-N/dm/name`, e.g. `pve-vm--100--disk--0`).
pub fn dm_name(sysfs: &Path, device: &str) -> Option<String> {
    if !device.starts_with("dm-") || device.contains('/') {
        return None;
    }
    let text = fs::read_to_string(sysfs.join("block").join(device).join("dm/name")).ok()?;
    let name = text.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn scheduler_formats() {
        assert_eq!(
            parse_scheduler("none [mq-deadline] kyber bfq \n").as_deref(),
            Some("mq-deadline")
        );
        assert_eq!(
            parse_scheduler("[none] mq-deadline kyber bfq \n").as_deref(),
            Some("none")
        );
        assert_eq!(parse_scheduler("none\n").as_deref(), Some("none"));
        assert_eq!(parse_scheduler("").as_deref(), None);
        assert_eq!(parse_scheduler("[] x").as_deref(), None);
        assert_eq!(parse_scheduler("a b").as_deref(), None);
    }

    #[test]
    fn mountinfo_lookup() {
        // Lines in the kernel's format (proc(5)); the tmpfs one is this machine's /dev/shm.
        let text = "\
28 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
40 28 0:23 / /dev/shm rw,nosuid,nodev shared:5 - tmpfs tmpfs rw\n\
41 28 0:45 /sub /srv/my\\040vms rw master:1 - btrfs /dev/vdb rw,space_cache\n";
        let m = find_mount(text, 0, 23).unwrap();
        assert_eq!(m.fstype, "tmpfs");
        assert_eq!(m.source, "tmpfs");
        assert_eq!(m.mount_point, Path::new("/dev/shm"));
        let m = find_mount(text, 0, 45).unwrap();
        assert_eq!(m.mount_point, Path::new("/srv/my vms"));
        assert_eq!(
            (m.fstype.as_str(), m.source.as_str()),
            ("btrfs", "/dev/vdb")
        );
        assert!(find_mount(text, 0, 99).is_none());
        // Malformed lines (empty fields where the kernel writes none) are skipped.
        let bad = "40 28 0:23 / /dev/shm rw - \n41 28 0:23 /  rw - tmpfs tmpfs rw\n";
        assert!(find_mount(bad, 0, 23).is_none());
        assert_eq!(
            find_mount(&format!("{bad}{text}"), 0, 23).unwrap().fstype,
            "tmpfs"
        );
    }

    /// A sysfs tree with device-mapper and md stacks, hand-built after the kernel's layout
    /// (block/*, dev/block/MAJ:MIN and slaves/ symlinks into devices/): this build machine has no
    /// dm or md driver, so it cannot be captured. Only structure, no statistics.
    ///
    /// ```text
    /// dm-0 (253:0, "vg0-images") -> slaves vda2, vdb1      (LVM over two partitions)
    /// md0  (9:0)                  -> slaves vdc, vdd        (RAID1 of whole disks)
    /// md0p1 (259:5)               partition of md0
    /// dm-1 (253:1, crypt)         -> slaves md0p1           (LUKS over an md partition)
    /// ```
    fn stacked_sysfs() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let s = t.path();
        let pci = "devices/pci0000:00";
        let disk = |name: &str, slot: &str, dev: &str| {
            let dir = format!("{pci}/0000:00:{slot}.0/virtio{slot}/block/{name}");
            fs::create_dir_all(s.join(&dir).join("slaves")).unwrap();
            fs::write(s.join(&dir).join("dev"), format!("{dev}\n")).unwrap();
            symlink(format!("../{dir}"), s.join("block").join(name)).unwrap();
            symlink(format!("../../{dir}"), s.join("dev/block").join(dev)).unwrap();
            dir
        };
        let part = |disk_dir: &str, name: &str, n: u32, dev: &str| {
            let dir = format!("{disk_dir}/{name}");
            fs::create_dir_all(s.join(&dir)).unwrap();
            fs::write(s.join(&dir).join("partition"), format!("{n}\n")).unwrap();
            fs::write(s.join(&dir).join("dev"), format!("{dev}\n")).unwrap();
            symlink(format!("../../{dir}"), s.join("dev/block").join(dev)).unwrap();
            dir
        };
        let virt = |name: &str, dev: &str, slaves: &[&str]| {
            let dir = format!("devices/virtual/block/{name}");
            fs::create_dir_all(s.join(&dir).join("slaves")).unwrap();
            fs::write(s.join(&dir).join("dev"), format!("{dev}\n")).unwrap();
            for slave in slaves {
                let name = Path::new(slave).file_name().unwrap();
                // slaves/X -> ../../../../<path of X under /sys/devices>, as the kernel links
                let under_devices = slave.strip_prefix("devices/").unwrap();
                symlink(
                    format!("../../../../{under_devices}"),
                    s.join(&dir).join("slaves").join(name),
                )
                .unwrap();
            }
            symlink(format!("../{dir}"), s.join("block").join(name)).unwrap();
            symlink(format!("../../{dir}"), s.join("dev/block").join(dev)).unwrap();
            dir
        };
        fs::create_dir_all(s.join("block")).unwrap();
        fs::create_dir_all(s.join("dev/block")).unwrap();
        let vda = disk("vda", "04", "254:0");
        let vda2 = part(&vda, "vda2", 2, "254:2");
        let vdb = disk("vdb", "05", "254:16");
        let vdb1 = part(&vdb, "vdb1", 1, "254:17");
        let vdc = disk("vdc", "06", "254:32");
        let vdd = disk("vdd", "07", "254:48");
        let dm0 = virt("dm-0", "253:0", &[&vda2, &vdb1]);
        fs::create_dir_all(s.join(&dm0).join("dm")).unwrap();
        fs::write(s.join(&dm0).join("dm/name"), "vg0-images\n").unwrap();
        let md0 = virt("md0", "9:0", &[&vdc, &vdd]);
        let md0p1 = part(&md0, "md0p1", 1, "259:5");
        virt("dm-1", "253:1", &[&md0p1]);
        t
    }

    /// Resolves `major:minor` in `sysfs` and checks its filesystem, host and physical devices;
    /// returns it for more checks.
    #[track_caller]
    fn check(
        sysfs: &Path,
        dev: (u32, u32),
        fs: &str,
        host: &str,
        physical: &[&str],
    ) -> BackingDevice {
        let b = resolve_dev(sysfs, dev.0, dev.1).unwrap();
        let at = format!("{}:{}", dev.0, dev.1);
        assert_eq!(
            (b.fs_device.as_str(), b.host_device.as_str()),
            (fs, host),
            "{at}"
        );
        assert_eq!(b.physical_devices, physical, "{at}");
        b
    }

    #[test]
    fn plain_disk_and_partition() {
        let t = stacked_sysfs();
        check(t.path(), (254, 0), "vda", "vda", &["vda"]);
        let b = check(t.path(), (254, 17), "vdb1", "vdb", &["vdb"]);
        assert_eq!(
            b.all_devices().into_iter().collect::<Vec<_>>(),
            vec!["vdb", "vdb1"]
        );
    }

    #[test]
    fn device_mapper_and_md_stacks() {
        let t = stacked_sysfs();
        check(t.path(), (253, 0), "dm-0", "dm-0", &["vda", "vdb"]);
        assert_eq!(dm_name(t.path(), "dm-0").as_deref(), Some("vg0-images"));
        // Partition of an md array: host device is the array, physical the mirrors.
        check(t.path(), (259, 5), "md0p1", "md0", &["vdc", "vdd"]);
        // dm-crypt over that partition: three levels down.
        let b = check(t.path(), (253, 1), "dm-1", "dm-1", &["vdc", "vdd"]);
        assert_eq!(
            b.all_devices().into_iter().collect::<Vec<_>>(),
            vec!["dm-1", "vdc", "vdd"]
        );
        assert_eq!(
            physical_devices(t.path(), "dm-0").unwrap(),
            vec!["vda", "vdb"]
        );
        assert!(physical_devices(t.path(), "../etc").is_err());
        assert!(resolve_dev(t.path(), 8, 0).is_err());
    }

    /// A loop device and a dm device over it, in the tree above; the loop device's backing
    /// file is a real file (this crate's Cargo.toml), and the tree has a disk `hostdisk` at
    /// that file's real device number, so following the loop device is checked whatever
    /// machine runs the test. (No dm driver here to capture a real tree from; the loop part is
    /// also checked against a real loop device in `tests/loop_real.rs`.)
    #[test]
    fn loop_devices_lead_to_their_backing_files_disk() {
        let t = stacked_sysfs();
        let s = t.path();
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let (major, minor) = stat_image(&file).unwrap();
        let disk_dir = "devices/pci0000:00/0000:00:09.0/virtio9/block/hostdisk";
        fs::create_dir_all(s.join(disk_dir)).unwrap();
        symlink(format!("../{disk_dir}"), s.join("block/hostdisk")).unwrap();
        let _ = fs::remove_file(s.join(format!("dev/block/{major}:{minor}")));
        symlink(
            format!("../../{disk_dir}"),
            s.join(format!("dev/block/{major}:{minor}")),
        )
        .unwrap();
        let loop_dev = |name: &str, dev: &str, backing: &str| {
            let dir = format!("devices/virtual/block/{name}");
            fs::create_dir_all(s.join(&dir).join("slaves")).unwrap();
            fs::create_dir_all(s.join(&dir).join("loop")).unwrap();
            fs::write(s.join(&dir).join("loop/backing_file"), backing).unwrap();
            symlink(format!("../{dir}"), s.join("block").join(name)).unwrap();
            symlink(format!("../../{dir}"), s.join("dev/block").join(dev)).unwrap();
            dir
        };
        let loop0 = loop_dev("loop0", "7:0", &format!("{}\n", file.display()));
        loop_dev("loop1", "7:1", &format!("{} (deleted)\n", file.display()));
        loop_dev("loop2", "7:2", "relative/path\n");
        // dm-5 over loop0 (an LVM volume group on a loop device).
        let dir = "devices/virtual/block/dm-5";
        fs::create_dir_all(s.join(dir).join("slaves")).unwrap();
        symlink(
            format!("../../../../{}", loop0.strip_prefix("devices/").unwrap()),
            s.join(dir).join("slaves/loop0"),
        )
        .unwrap();
        symlink(format!("../../{dir}"), s.join("dev/block/253:5")).unwrap();

        let roots = Roots {
            sysfs: s,
            procfs: Path::new("/proc"),
        };
        let b = resolve_dev_in(roots, 7, 0).unwrap();
        assert_eq!(b.host_device, "loop0");
        if major == 0 {
            // The file is on an anonymous device (tmpfs, overlayfs): nothing to follow.
            assert_eq!(b.physical_devices, vec!["loop0"]);
            return;
        }
        assert_eq!(b.physical_devices, vec!["hostdisk"]);
        assert_eq!(
            b.all_devices().into_iter().collect::<Vec<_>>(),
            vec!["hostdisk", "loop0"]
        );
        let b = resolve_dev_in(roots, 253, 5).unwrap();
        assert_eq!(b.host_device, "dm-5");
        assert_eq!(b.physical_devices, vec!["hostdisk"]);
        // A deleted or relative backing file: the loop device is the leaf.
        assert_eq!(
            resolve_dev_in(roots, 7, 1).unwrap().physical_devices,
            vec!["loop1"]
        );
        assert_eq!(
            resolve_dev_in(roots, 7, 2).unwrap().physical_devices,
            vec!["loop2"]
        );
    }

    #[test]
    fn slave_cycle_terminates() {
        let t = stacked_sysfs();
        // dm-0's own slaves/ gets a link back to dm-0.
        let dm0 = fs::canonicalize(t.path().join("block/dm-0")).unwrap();
        symlink(&dm0, dm0.join("slaves/dm-0")).unwrap();
        let b = resolve_dev(t.path(), 253, 0).unwrap();
        assert_eq!(b.physical_devices, vec!["vda", "vdb"]);
    }

    #[test]
    fn non_local_paths_are_unresolved() {
        let t = stacked_sysfs();
        let r = resolve_image(
            Path::new("nbd+unix:///?socket=/run/x"),
            Path::new("/proc"),
            t.path(),
        );
        assert!(r.reason().unwrap().contains("not a local absolute path"));
        assert_eq!(r.host_device(), "");
        let r = resolve_image(
            Path::new("/nonexistent/kvmio/image.qcow2"),
            Path::new("/proc"),
            t.path(),
        );
        assert!(
            r.reason().unwrap().starts_with("stat /nonexistent"),
            "{r:?}"
        );
    }
}
