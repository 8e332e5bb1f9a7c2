//! What the integration tests share: finding the QEMU binaries, starting real QEMU and qemu-ga
//! processes that are always killed and reaped, and scratch images.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kvmio_qemu::{Error, GuestAgent, Limits, Qmp};

/// Generous for a loaded 2-core CI machine; QEMU's monitor is usually up in ~50 ms.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The full path of `bin`, looking in PATH and in the sbin directories (qemu-ga lives there).
pub fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// The paths of `bins`, or `None` after printing why the test is skipped.
pub fn binaries<const N: usize>(bins: [&str; N]) -> Option<[PathBuf; N]> {
    let found = bins.map(which);
    for (bin, path) in bins.iter().zip(&found) {
        if path.is_none() {
            eprintln!(
                "skipped: {bin} is not installed (Debian: qemu-system-x86, qemu-utils, qemu-guest-agent)"
            );
            return None;
        }
    }
    Some(found.map(Option::unwrap))
}

/// A child process that is killed and reaped when dropped, also when a test panics.
#[derive(Debug)]
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
    pub stderr_path: PathBuf,
}

impl ChildGuard {
    /// Starts `program args` with stdout discarded and stderr in `stderr_path`.
    pub fn spawn(program: &Path, args: &[String], stderr_path: PathBuf) -> ChildGuard {
        ChildGuard::spawn_in(program, args, None, stderr_path)
    }

    /// Like [`ChildGuard::spawn`], in the working directory `cwd` if given.
    pub fn spawn_in(
        program: &Path,
        args: &[String],
        cwd: Option<&Path>,
        stderr_path: PathBuf,
    ) -> ChildGuard {
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr file");
        let mut command = Command::new(program);
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        ChildGuard {
            child,
            name: program.display().to_string(),
            stderr_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote to stderr so far, for assertion messages.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends a signal by name (`STOP`, `CONT`) with kill(1): the crate has no libc dependency.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // SIGKILL also ends a SIGSTOPped process; wait() reaps it so no zombie is left.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a qcow2 image of `size` (e.g. `64M`).
pub fn qemu_img_create(qemu_img: &Path, path: &Path, size: &str) {
    let out = Command::new(qemu_img)
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size)
        .output()
        .expect("run qemu-img");
    assert!(
        out.status.success(),
        "qemu-img create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Connects to a QMP socket that QEMU may not have created yet, retrying until `START_TIMEOUT`.
pub async fn connect_qmp(path: &Path, limits: Limits, qemu: &mut ChildGuard) -> Qmp {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match Qmp::connect(path, limits).await {
            Ok(qmp) => return qmp,
            Err(Error::Connect { .. }) if Instant::now() < deadline => {
                if let Some(status) = qemu.child.try_wait().unwrap() {
                    panic!("QEMU exited ({status}): {}", qemu.stderr());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!(
                "QMP connect to {} failed: {e}; {}",
                path.display(),
                qemu.stderr()
            ),
        }
    }
}

/// Connects to a host-side qemu-ga socket, retrying until the agent listens.
pub async fn connect_agent(path: &Path, limits: Limits, agent: &mut ChildGuard) -> GuestAgent {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match GuestAgent::connect(path, limits).await {
            Ok(ga) => return ga,
            Err(Error::Connect { .. }) if Instant::now() < deadline => {
                if let Some(status) = agent.child.try_wait().unwrap() {
                    panic!("qemu-ga exited ({status}): {}", agent.stderr());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!(
                "agent connect to {} failed: {e}; {}",
                path.display(),
                agent.stderr()
            ),
        }
    }
}

/// A QEMU with no machine (`-M none`) and one qcow2 drive per entry of `drives`
/// (`(id, cache mode)`), serving QMP on `dir/qmp.sock`. Returns the guard and the socket path.
pub fn spawn_qemu_none(
    qemu: &Path,
    qemu_img: &Path,
    dir: &Path,
    drives: &[(&str, &str)],
    extra: &[&str],
) -> (ChildGuard, PathBuf) {
    let sock = dir.join("qmp.sock");
    let mut args: Vec<String> = ["-M", "none", "-nodefaults", "-display", "none", "-qmp"]
        .map(String::from)
        .to_vec();
    args.push(format!("unix:{},server=on,wait=off", sock.display()));
    for (id, cache) in drives {
        let img = dir.join(format!("{id}.qcow2"));
        qemu_img_create(qemu_img, &img, "64M");
        args.push("-drive".into());
        args.push(format!(
            "if=none,id={id},file={},format=qcow2,cache={cache}",
            img.display()
        ));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let guard = ChildGuard::spawn(qemu, &args, dir.join("qemu.stderr"));
    (guard, sock)
}

/// A paused (`-S`) q35 machine under TCG with one qcow2 drive `d0` (cache mode `cache`) on a
/// `virtio-blk-pci` device `vd0` in slot 5 with serial `kvmio-0`, serving QMP on `dir/qmp.sock`.
/// No guest code runs, but the devices exist: commands that name a guest device work.
pub fn spawn_qemu_q35(
    qemu: &Path,
    qemu_img: &Path,
    dir: &Path,
    cache: &str,
) -> (ChildGuard, PathBuf) {
    let img = dir.join("d0.qcow2");
    qemu_img_create(qemu_img, &img, "64M");
    let sock = dir.join("qmp.sock");
    let args: Vec<String> = vec![
        "-M".into(),
        "q35".into(),
        "-accel".into(),
        "tcg".into(),
        "-S".into(),
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", sock.display()),
        "-drive".into(),
        format!(
            "if=none,id=d0,file={},format=qcow2,cache={cache}",
            img.display()
        ),
        "-device".into(),
        "virtio-blk-pci,drive=d0,id=vd0,serial=kvmio-0,addr=0x5".into(),
    ];
    let guard = ChildGuard::spawn(qemu, &args, dir.join("qemu.stderr"));
    (guard, sock)
}

/// A host-side guest agent listening on `dir/qga.sock`, with `extra` options (e.g. `-b CMD`).
pub fn spawn_qemu_ga(qemu_ga: &Path, dir: &Path, extra: &[&str]) -> (ChildGuard, PathBuf) {
    let sock = dir.join("qga.sock");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut args = vec![
        "-m".to_string(),
        "unix-listen".to_string(),
        "-p".to_string(),
        sock.display().to_string(),
        "-t".to_string(),
        state.display().to_string(),
        "-f".to_string(),
        state.join("qemu-ga.pid").display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let guard = ChildGuard::spawn(qemu_ga, &args, dir.join("qga.stderr"));
    (guard, sock)
}
