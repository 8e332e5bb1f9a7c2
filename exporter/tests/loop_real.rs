//! `--host.devices backing` follows a real loop device to the disk its backing file is on.
//!
//! The test binds a loop device (`losetup --find --show`) to an image file in a directory of its
//! own and detaches it on every path (a drop guard). The disk under that directory is found
//! independently of kvmio (`findmnt` and sysfs). Checked:
//! - `resolve_image(/dev/loopN)`: host device `loopN`, physical device the disk;
//! - the exporter binary, scraping a real QEMU (`-M none`) whose drive is `/dev/loopN`:
//!   `kvmio_disk_layer_info{host_device="loopN"}`, and `kvmio_host_disk_*` for exactly the loop
//!   device and the disk under its file (before this, the loop device alone); promtool clean.
//!
//! Needs root (losetup), as `make test` runs.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::procs;
use kvmio_exporter::host::blockdev::{resolve_image, ImageDevice};
use kvmio_test_support::metrics::{parse, scrape};
use kvmio_test_support::qemu::qemu_none_with;
use kvmio_test_support::{require, run};

/// A loop device bound to a file; detached when dropped.
struct LoopDevice(PathBuf);

impl LoopDevice {
    fn attach(file: &Path) -> Self {
        let losetup = require("losetup", "mount");
        let (status, out, err) = run(Command::new(losetup).args(["--find", "--show"]).arg(file));
        assert!(
            status.success(),
            "losetup --find --show {} (needs root and /dev/loop*): {err}",
            file.display()
        );
        LoopDevice(PathBuf::from(out.trim()))
    }

    fn name(&self) -> String {
        self.0.file_name().unwrap().to_string_lossy().into_owned()
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// The whole disk under `path`'s filesystem, by `findmnt` and sysfs (not kvmio's code).
fn disk_under(path: &Path) -> String {
    let (_, out, _) = run(Command::new("findmnt")
        .args(["-n", "-o", "MAJ:MIN", "-T"])
        .arg(path));
    let dev = out.trim().to_owned();
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{dev}"))
        .unwrap_or_else(|e| panic!("{} is on {dev:?}, not a block device: {e}", path.display()));
    let sys = if sys.join("partition").exists() {
        sys.parent().unwrap().to_path_buf()
    } else {
        sys
    };
    sys.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn loop_devices_are_followed_to_the_disk_under_their_file() {
    let dir = kvmio_test_support::target_tempdir!("kvmio-loop");
    let d = dir.path();
    let file = d.join("backing.raw");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let disk = disk_under(&file);
    let dev = LoopDevice::attach(&file);
    let name = dev.name();

    match resolve_image(&dev.0, Path::new("/proc"), Path::new("/sys")) {
        ImageDevice::Resolved(b) => {
            assert_eq!(b.host_device, name);
            assert_eq!(b.physical_devices, vec![disk.clone()]);
        }
        other => panic!("{} unresolved: {other:?}", dev.0.display()),
    }

    // A QEMU whose drive is the loop device, and the exporter over it.
    let sock = d.join("vm.qmp");
    let q = qemu_none_with(
        &sock,
        &[
            "-name".to_owned(),
            "loopvm".to_owned(),
            "-drive".to_owned(),
            format!(
                "if=none,id=d0,file={},format=raw,cache=none",
                dev.0.display()
            ),
        ],
    );
    let (_exporter, addr) = procs::exporter(
        &[
            format!("--qmp.socket-glob={}/*.qmp", d.display()),
            "--host.devices=backing".to_owned(),
        ],
        &d.join("exporter.log"),
    );
    let text = scrape(&addr);
    common::promtool_check(&text, "loop");
    let all = parse(&text);
    let layer = all
        .iter()
        .find(|s| s.name == "kvmio_disk_layer_info" && s.labels["vm"] == "loopvm")
        .expect("layer info");
    assert_eq!(layer.labels["image"], dev.0.to_str().unwrap());
    assert_eq!(layer.labels["host_device"], name);
    let host: BTreeSet<&str> = all
        .iter()
        .filter(|s| s.name == "kvmio_host_disk_reads_completed_total")
        .map(|s| s.labels["device"].as_str())
        .collect();
    let want: BTreeSet<&str> = [name.as_str(), disk.as_str()].into();
    assert_eq!(host, want, "host disks exported under the loop device");
    drop(q);
}
