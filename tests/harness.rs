//! Shared harness for kvmio's end-to-end tests: real QEMU guests under TCG, the real guest
//! agent, real Prometheus.
//!
//! * Prerequisites missing → the test fails with the command that installs them; it never
//!   silently skips.
//! * At most one test boots VMs at a time ([`vm_slot`]): several TCG guests on two cores slow
//!   each other down until readiness deadlines turn flaky (`shared/lab-notes.md`).
//! * VMs are [`kvmio_crashtest::vm::Vm`] values, which kill and reap QEMU when dropped, also
//!   when an assertion panics; [`ChildProcess`] does the same for the CLI processes tests start.
//!
//! What the exporter's tests and benches need too (processes, the VM slot, the exporter launcher,
//! `/metrics` parsed) lives in `kvmio-test-support` and is re-exported here.
//!
//! Here: the README's lab ([`start_lab`]) and guest image, package checks, and one module per
//! daemon a test runs: [`libvirtd`] (a private libvirtd and its domains), [`prom`] (a real
//! Prometheus and its API), [`metrics`] (the exporter binary), [`browser`] (screenshots).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use kvmio_crashtest::guest_image::{self, GuestImage, GuestInputs};
use kvmio_crashtest::kernel::GuestKernel;
use kvmio_crashtest::paths;

pub mod browser;
pub mod libvirtd;
pub mod metrics;
pub mod prom;

pub use kvmio_test_support::{
    free_port, run, try_http_get, vm_slot, wait_for, which, workspace_bin, ChildProcess, VmSlot,
};

/// The README's lab, as `kvmio-crashtest lab` and `deploy/demo.sh` take it: two TCG VMs,
/// `cache=none` and `cache=unsafe`.
pub const TWO_LAB_VMS: [&str; 6] = ["--accel", "tcg", "--vms", "2", "--cache", "none,unsafe"];

/// Generous: a TCG boot takes seconds alone, but CI machines are shared.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Fails (never skips) when a `(binary, Debian package)` of `needed` is missing, saying what to
/// do then (`then`).
pub fn require_packages(needed: &[(&str, &str)], then: &str) {
    for (bin, pkg) in needed {
        assert!(
            which(bin).is_some(),
            "{bin} is not installed (Debian package {pkg}): {then}"
        );
    }
}

/// Fails with instructions when the lab's packages are not installed.
pub fn require_lab_packages() {
    require_packages(
        &[
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("qemu-img", "qemu-utils"),
            ("qemu-ga", "qemu-guest-agent"),
            ("busybox", "busybox-static"),
            ("cpio", "cpio"),
        ],
        "run `deploy/setup.sh` first",
    );
}

/// Starts `kvmio-crashtest lab` with [`TWO_LAB_VMS`] and `disk_mib` MiB disks in `run_dir` (made
/// if missing), its stderr in `log`; returns it and its manifest (`lab.json`) once written, and
/// fails with the log if the lab exits first.
pub fn start_lab(run_dir: &Path, disk_mib: u32, log: &Path) -> (ChildProcess, serde_json::Value) {
    std::fs::create_dir_all(run_dir).expect("lab run dir");
    let mut lab = ChildProcess::spawn(
        std::process::Command::new(workspace_bin("kvmio-crashtest"))
            .arg("lab")
            .args(TWO_LAB_VMS)
            .args(["--disk-size", &disk_mib.to_string(), "--run-dir"])
            .arg(run_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).expect("lab log")),
    );
    let manifest = wait_for("lab.json", Duration::from_secs(300), || {
        if let Some(status) = lab.exited() {
            panic!(
                "lab exited early: {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("lab.json")).ok()?).ok()
    });
    (lab, manifest)
}

/// The default guest (kernel from `deploy/setup.sh`), built once per test binary.
pub fn guest_image() -> GuestImage {
    static IMAGE: OnceLock<GuestImage> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            require_lab_packages();
            let kernel =
                GuestKernel::locate(None, None).expect("guest kernel (run deploy/setup.sh)");
            let inputs = GuestInputs::discover(kernel, Some(&workspace_bin("kvmio-guest")))
                .expect("guest inputs");
            guest_image::build(&inputs, &paths::cache_dir()).expect("guest image builds")
        })
        .clone()
}

/// Pids of live processes whose command line mentions `needle` (e.g. a test's run dir): the
/// check that nothing a test started is left running.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Zombies have an empty cmdline; a reaped child has no /proc entry at all.
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Whether a process with this pid exists (zombies included).
pub fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Unix sockets (and kvmio's private socket directories) left in `dir`.
pub fn sockets_in(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let ft = entry.file_type().expect("file type");
            if ft.is_socket() {
                found.push(entry.path());
            } else if ft.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    found
}
