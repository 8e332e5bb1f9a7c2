//! The host layer against this machine's real files, /proc and /sys: image -> device resolution
//! checked against findmnt, tmpfs unresolvable, page-cache measurement with cachestat and
//! mincore, and `--host.devices=backing` end to end.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use kvmio_exporter::collector::{collector_fn, Collector, Exporter, ImageRef};
use kvmio_exporter::config::{Config, HostDevices};
use kvmio_exporter::host::blockdev::{resolve_image, ImageDevice};
use kvmio_exporter::host::pagecache::{page_cache_usage, page_cache_usage_via, PageCacheMethod};
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};

/// A directory on a disk-backed filesystem (the target dir), not tmpfs: page-cache eviction and
/// device resolution need a real block device.
fn disk_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kvmio-exporter-host-live");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `findmnt -n -o SOURCE,FSTYPE,MAJ:MIN -T path`.
fn findmnt(path: &Path) -> (String, String, String) {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "SOURCE,FSTYPE,MAJ:MIN", "-T"])
        .arg(path)
        .output()
        .expect("findmnt (util-linux) must be installed");
    assert!(out.status.success(), "findmnt -T {}", path.display());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut f = text.split_whitespace().map(str::to_owned);
    (f.next().unwrap(), f.next().unwrap(), f.next().unwrap())
}

#[test]
fn image_on_disk_resolves_to_the_device_findmnt_names() {
    let file = tempfile::NamedTempFile::new_in(disk_dir()).unwrap();
    let (source, fstype, majmin) = findmnt(file.path());
    let got = resolve_image(file.path(), Path::new("/proc"), Path::new("/sys"));
    if !source.starts_with("/dev/") {
        // e.g. overlayfs in a container: no block device, and the reason says which filesystem.
        assert!(got.reason().unwrap().contains(&fstype), "{got:?}");
        return;
    }
    let b = got.backing().unwrap_or_else(|| panic!("{got:?}"));
    // findmnt's source, through /dev symlinks (/dev/mapper/x -> /dev/dm-0), is the fs device.
    let dev_name = std::fs::canonicalize(&source)
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(b.fs_device, dev_name);
    if !majmin.starts_with("0:") {
        assert_eq!(format!("{}:{}", b.dev.0, b.dev.1), majmin);
    }
    // The whole device is in /sys/block; the physical disks too.
    assert!(Path::new("/sys/block").join(&b.host_device).exists());
    for p in &b.physical_devices {
        assert!(Path::new("/sys/block").join(p).exists(), "{p}");
    }

    // The device node itself, used as an image (LVM LV / raw disk style), resolves the same way
    // through st_rdev.
    let node = Path::new("/dev").join(&b.fs_device);
    if node.exists() {
        let again = resolve_image(&node, Path::new("/proc"), Path::new("/sys"));
        assert_eq!(again.backing(), Some(b), "{}", node.display());
    }
}

#[test]
fn image_on_tmpfs_is_unresolved_with_a_reason() {
    let shm = Path::new("/dev/shm");
    assert!(
        findmnt(shm).1 == "tmpfs",
        "this test needs /dev/shm to be a tmpfs, as on any standard Linux"
    );
    let file = tempfile::NamedTempFile::new_in(shm).unwrap();
    let got = resolve_image(file.path(), Path::new("/proc"), Path::new("/sys"));
    assert_eq!(got.host_device(), "");
    let reason = got.reason().unwrap();
    assert!(
        reason.contains("tmpfs") && reason.contains("0:"),
        "{reason}"
    );
    assert!(matches!(got, ImageDevice::Unresolved { .. }));
}

/// Writes `len` bytes, syncs, then reads them back so they are in the page cache.
fn cached_file(len: usize) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new_in(disk_dir()).unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    f.as_file().sync_all().unwrap();
    let mut back = Vec::new();
    std::fs::File::open(f.path())
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back.len(), len);
    f
}

fn drop_cache(f: &tempfile::NamedTempFile) {
    posix_fadvise(
        f.as_file().as_raw_fd(),
        0,
        0,
        PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap();
}

const LEN: usize = 8 << 20;

#[test]
fn cachestat_sees_a_read_file_and_its_eviction() {
    let f = cached_file(LEN);
    let before = page_cache_usage_via(f.path(), PageCacheMethod::Cachestat)
        .expect("cachestat (Linux 6.5+) on this kernel");
    assert!(
        before.cached_bytes >= LEN as u64 / 2,
        "{before:?} after reading {LEN} bytes"
    );
    assert_eq!(before.dirty_bytes, Some(0), "synced before measuring");
    drop_cache(&f);
    let after = page_cache_usage_via(f.path(), PageCacheMethod::Cachestat).unwrap();
    assert!(
        after.cached_bytes < before.cached_bytes,
        "{before:?} -> {after:?}"
    );
    // The default path picks cachestat on this kernel.
    assert_eq!(
        page_cache_usage(f.path()).unwrap().method,
        PageCacheMethod::Cachestat
    );
}

#[test]
fn cachestat_reports_dirty_pages() {
    let mut f = tempfile::NamedTempFile::new_in(disk_dir()).unwrap();
    f.write_all(&vec![0x5a; 1 << 20]).unwrap();
    f.flush().unwrap();
    let dirty = page_cache_usage_via(f.path(), PageCacheMethod::Cachestat).unwrap();
    assert!(dirty.dirty_bytes.unwrap() > 0, "{dirty:?}");
    f.as_file().sync_all().unwrap();
    let clean = page_cache_usage_via(f.path(), PageCacheMethod::Cachestat).unwrap();
    assert_eq!(clean.dirty_bytes, Some(0), "{clean:?}");
}

#[test]
fn mincore_fallback_agrees() {
    let f = cached_file(LEN);
    let cs = page_cache_usage_via(f.path(), PageCacheMethod::Cachestat).unwrap();
    let mc = page_cache_usage_via(f.path(), PageCacheMethod::Mincore).unwrap();
    assert_eq!(mc.method, PageCacheMethod::Mincore);
    assert_eq!(mc.dirty_bytes, None);
    assert!(mc.cached_bytes >= LEN as u64 / 2, "{mc:?}");
    assert!(
        mc.cached_bytes.abs_diff(cs.cached_bytes) <= LEN as u64 / 8,
        "{cs:?} vs {mc:?}"
    );
    drop_cache(&f);
    let after = page_cache_usage_via(f.path(), PageCacheMethod::Mincore).unwrap();
    assert!(after.cached_bytes < mc.cached_bytes, "{mc:?} -> {after:?}");
}

/// Stands in for the QMP collector: publishes one image, `image`.
fn fake_qmp(image: PathBuf) -> Arc<dyn Collector> {
    let c = collector_fn("fake_qmp", move |ctx, out| {
        let image = image.clone();
        Box::pin(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            ctx.publish_images([ImageRef {
                vm: "vm1".into(),
                device: "virtio0".into(),
                image: image.clone(),
            }]);
            // What the QMP collector does for kvmio_disk_layer_info's host_device label.
            let devices = ctx.resolve_image_paths(vec![image]).await;
            out.info(
                "kvmio_test_layer_info",
                "Test.",
                &[("host_device", devices[0].host_device())],
            );
            Ok(())
        })
    });
    Arc::new(c.providing_images())
}

#[tokio::test]
async fn backing_mode_exports_only_the_image_devices() {
    let f = cached_file(1 << 20);
    let expected: BTreeSet<String> =
        match resolve_image(f.path(), "/proc".as_ref(), "/sys".as_ref()) {
            ImageDevice::Resolved(b) => b.all_devices(),
            ImageDevice::Unresolved { .. } => BTreeSet::new(),
        };
    let config = Arc::new(Config {
        host_devices: HostDevices::Backing,
        ..Config::default()
    });
    let mut collectors = kvmio_exporter::collector::default_collectors(&config);
    collectors.push(fake_qmp(f.path().to_owned()));
    let m = Exporter::new(config, collectors).scrape().await;
    assert!(m.rejected().is_empty(), "{:?}", m.rejected());
    let text = m.encode_text();
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("kvmio_host_disk_reads_completed_total{device=\""))
        .map(|l| l.split('"').next().unwrap().to_owned())
        .collect();
    assert_eq!(exported, expected, "{text}");
    let image = f.path().to_string_lossy();
    let cached = m
        .value(
            "kvmio_host_image_cached_bytes",
            &[("vm", "vm1"), ("device", "virtio0"), ("image", &image)],
        )
        .unwrap_or_else(|| panic!("{text}"));
    assert!(cached > 0.0, "{text}");
    let host_device = resolve_image(f.path(), "/proc".as_ref(), "/sys".as_ref())
        .host_device()
        .to_owned();
    assert_eq!(
        m.value("kvmio_test_layer_info", &[("host_device", &host_device)]),
        Some(1.0),
        "{text}"
    );
    for c in ["host_diskstats", "host_image", "fake_qmp"] {
        assert_eq!(
            m.value("kvmio_collector_success", &[("collector", c)]),
            Some(1.0),
            "{c}"
        );
    }
}
