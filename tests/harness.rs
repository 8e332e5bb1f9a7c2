//! Shared harness for kvmio's end-to-end tests: real QEMU guests under TCG, the real guest
//! agent, real Prometheus.
//!
//! * Prerequisites missing → the test fails with the command that installs them; it never
//!   silently skips.
//! * At most one test boots VMs at a time ([`vm_slot`]): several TCG guests on two cores slow
//!   each other down until readiness deadlines turn flaky (`shared/lab-notes.md`).
//! * VMs are [`kvmio_crashtest::vm::Vm`] values, which kill and reap QEMU when dropped, also
//!   when an assertion panics; [`ChildProcess`] does the same for the CLI processes tests start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kvmio_crashtest::guest_image::{self, GuestImage, GuestInputs};
use kvmio_crashtest::kernel::GuestKernel;
use kvmio_crashtest::paths;

pub mod libvirtd;
pub mod metrics;

/// Generous: a TCG boot takes seconds alone, but CI machines are shared.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Held while a test boots VMs; dropping it lets the next one start.
#[derive(Debug)]
pub struct VmSlot(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

/// Serialises VM-booting tests, across threads, test binaries and concurrent `cargo test` or
/// nextest processes alike: an exclusive `flock` on a file in the temporary directory.
pub fn vm_slot() -> VmSlot {
    let path = std::env::temp_dir().join("kvmio-e2e-vm.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("flock {}: {e}", path.display()));
    VmSlot(lock)
}

/// Fails with instructions when the lab's packages are not installed.
pub fn require_lab_packages() {
    for (bin, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        ("qemu-ga", "qemu-guest-agent"),
        ("busybox", "busybox-static"),
        ("cpio", "cpio"),
    ] {
        assert!(
            which(bin).is_some(),
            "{bin} is not installed (Debian package {pkg}): run `deploy/setup.sh` first"
        );
    }
}

pub fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// A workspace binary built by `cargo build --workspace` (test binaries live in
/// `target/<profile>/deps`, the binaries one level up).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("profile dir")
    } else {
        dir
    };
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests (the README's test command does)",
        bin.display()
    );
    bin
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

/// A child process that is killed and reaped on drop.
#[derive(Debug)]
pub struct ChildProcess(pub Option<Child>);

impl ChildProcess {
    pub fn spawn(cmd: &mut Command) -> ChildProcess {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        ChildProcess(Some(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    /// Sends `signal` and waits up to `timeout` for the exit.
    pub fn signal_and_wait(
        &mut self,
        signal: nix::sys::signal::Signal,
        timeout: Duration,
    ) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal");
        self.wait_timeout(timeout)
            .expect("process exits after the signal")
    }

    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.0.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.0 = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a command to completion with stdin closed; returns (status, stdout, stderr).
pub fn run(cmd: &mut Command) -> (std::process::ExitStatus, String, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
