//! Child processes, polling, the VM slot and where binaries are.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

/// A child process, SIGKILLed and reaped on drop. `None` once it has been reaped.
#[derive(Debug)]
pub struct ChildProcess(pub Option<Child>);

impl ChildProcess {
    /// Starts `cmd`; panics (with the command) if it cannot.
    pub fn spawn(cmd: &mut Command) -> ChildProcess {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        ChildProcess(Some(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    /// Sends `signal` (panics if it cannot be sent).
    pub fn signal(&self, signal: Signal) {
        let pid = self.pid();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .unwrap_or_else(|e| panic!("signal {signal} to pid {pid}: {e}"));
    }

    /// Its exit status if it has exited (it is then reaped and stays `Some` here).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.0.as_mut()?.try_wait().expect("try_wait")
    }

    /// Whether it still runs (neither reaped nor exited).
    pub fn running(&mut self) -> bool {
        match self.0.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Sends `signal` and waits up to `timeout` for the exit.
    pub fn signal_and_wait(&mut self, signal: Signal, timeout: Duration) -> ExitStatus {
        self.signal(signal);
        self.wait_timeout(timeout)
            .expect("process exits after the signal")
    }

    /// Waits up to `timeout` for the exit and reaps it; `None` if it still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
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

    /// Kills and reaps now.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `cmd` so that it also dies if the test is killed outright (`PR_SET_PDEATHSIG`, which
/// fires when the spawning *thread* ends: spawn from the test's thread, not a short-lived one).
/// `what` names it in the panic if it cannot start.
pub fn spawn_tied(cmd: &mut Command, what: &str) -> ChildProcess {
    use std::os::unix::process::CommandExt;
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe, touching no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what} ({cmd:?}): {e}"));
    ChildProcess(Some(child))
}

/// Runs a command to completion with stdin closed; returns (status, stdout, stderr).
pub fn run(cmd: &mut Command) -> (ExitStatus, String, String) {
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

/// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_for_every(what, timeout, Duration::from_millis(100), f)
}

/// [`wait_for`], polling every `poll`.
pub fn wait_for_every<T>(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(poll);
    }
}

/// [`wait_for`] while `child` runs: panics with `log` (the child's stderr) if it exits first.
pub fn wait_for_while_running<T>(
    what: &str,
    timeout: Duration,
    child: &mut ChildProcess,
    log: &Path,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    wait_for(what, timeout, || {
        if let Some(status) = child.exited() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("exited early, waiting for {what}: {status}: {log}");
        }
        f()
    })
}

/// Runs `cmd` (given the bad input `input`): it must fail, say `hint` on its first line and say
/// no more than two lines. Returns its stderr.
#[track_caller]
pub fn assert_rejected_in_one_line(
    cmd: &mut Command,
    input: &dyn std::fmt::Debug,
    hint: &str,
) -> String {
    let (status, _stdout, stderr) = run(cmd);
    assert!(!status.success(), "{input:?} must fail");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains(hint),
        "{input:?}: first line should say {hint:?}, got: {stderr}"
    );
    assert!(
        stderr.lines().filter(|l| !l.trim().is_empty()).count() <= 2,
        "{input:?}: one line, not a dump: {stderr}"
    );
    stderr
}

/// Waits until `path` exists (a socket being created by `child`, named `what`); panics if the
/// child exits first or after `timeout`.
pub fn wait_path(path: &Path, timeout: Duration, child: &mut ChildProcess, what: &str) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            child.running(),
            "{what} exited before creating {}",
            path.display()
        );
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Held while a test or bench boots VMs; dropping it lets the next one start.
#[derive(Debug)]
pub struct VmSlot(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

/// Serialises VM-booting tests and benches, across threads, test binaries and concurrent `cargo
/// test` or nextest processes alike: an exclusive `flock` on `$TMPDIR/kvmio-e2e-vm.lock`.
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

/// `bin` on `$PATH`, or in `/usr/sbin` or `/sbin`.
pub fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// [`which`], failing the test with the package to install when missing (never a skip).
pub fn require(bin: &str, package: &str) -> PathBuf {
    which(bin)
        .unwrap_or_else(|| panic!("{bin} not found: install {package} (deploy/setup.sh does)"))
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
