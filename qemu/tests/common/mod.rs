//! What the integration tests share: the QEMU binaries (a missing one fails the test), real QEMU
//! and qemu-ga processes that are always killed and reaped (`kvmio-test-support`'s processes,
//! with their stderr kept for messages), QMP and agent connections, and scratch images.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvmio_qemu::{Error, GuestAgent, Limits, Qmp};
use kvmio_test_support::{run, spawn_tied, ChildProcess};

/// Generous for a loaded 2-core CI machine; QEMU's monitor is usually up in ~50 ms.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The paths of `bins`, failing the test (never skipping it) with the Debian package to install
/// when one is missing.
pub fn binaries<const N: usize>(bins: [&str; N]) -> [PathBuf; N] {
    bins.map(|bin| {
        let package = match bin {
            "qemu-img" => "qemu-utils",
            "qemu-ga" => "qemu-guest-agent",
            _ => "qemu-system-x86",
        };
        kvmio_test_support::require(bin, package)
    })
}

/// A child process of the test, killed and reaped when dropped, also when a test panics, and
/// tied to the test's thread (`kvmio_test_support::spawn_tied`); its stderr goes to a file.
#[derive(Debug)]
pub struct ChildGuard {
    pub process: ChildProcess,
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
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let name = program.display().to_string();
        ChildGuard {
            process: spawn_tied(&mut command, &name),
            name,
            stderr_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
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
        self.process.wait_timeout(timeout)
    }
}

/// Creates a qcow2 image of `size` (e.g. `64M`).
pub fn qemu_img_create(qemu_img: &Path, path: &Path, size: &str) {
    let mut cmd = Command::new(qemu_img);
    let (status, _, stderr) = run(cmd
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size));
    assert!(status.success(), "qemu-img create failed: {stderr}");
}

/// The limits most tests use: defaults, with a 10 s call timeout.
pub fn limits() -> Limits {
    Limits::default().with_call_timeout(Duration::from_secs(10))
}

/// Calls `connect` (to `path`, served by `peer`, named `who`; the client named `what`) until it
/// stops failing with [`Error::Connect`], for `START_TIMEOUT` at most; panics if `peer` exits.
async fn connect_retrying<T, Fut>(
    who: &str,
    what: &str,
    path: &Path,
    peer: &mut ChildGuard,
    mut connect: impl FnMut() -> Fut,
) -> T
where
    Fut: Future<Output = Result<T, Error>>,
{
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match connect().await {
            Ok(client) => return client,
            Err(Error::Connect { .. }) if Instant::now() < deadline => {
                if let Some(status) = peer.process.exited() {
                    panic!("{who} exited ({status}): {}", peer.stderr());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!(
                "{what} connect to {} failed: {e}; {}",
                path.display(),
                peer.stderr()
            ),
        }
    }
}

/// Connects to a QMP socket that QEMU may not have created yet, retrying until `START_TIMEOUT`.
pub async fn connect_qmp(path: &Path, limits: Limits, qemu: &mut ChildGuard) -> Qmp {
    connect_retrying("QEMU", "QMP", path, qemu, || Qmp::connect(path, limits)).await
}

/// Connects to a host-side qemu-ga socket, retrying until the agent listens.
pub async fn connect_agent(path: &Path, limits: Limits, agent: &mut ChildGuard) -> GuestAgent {
    connect_retrying("qemu-ga", "agent", path, agent, || {
        GuestAgent::connect(path, limits)
    })
    .await
}

/// A real QEMU under test and a QMP client connected to it. Fields drop in order: the client,
/// then QEMU (killed and reaped), then its directory.
#[derive(Debug)]
pub struct QemuUnderTest {
    pub qmp: Qmp,
    pub child: ChildGuard,
    pub dir: tempfile::TempDir,
}

/// Starts a QEMU with `spawn(qemu, qemu_img, dir)` in a new directory and connects with `limits`.
async fn start_qemu(
    limits: Limits,
    spawn: impl FnOnce(&Path, &Path, &Path) -> (ChildGuard, PathBuf),
) -> QemuUnderTest {
    let [qemu, qemu_img] = binaries(["qemu-system-x86_64", "qemu-img"]);
    let dir = tempfile::tempdir().unwrap();
    let (mut child, sock) = spawn(&qemu, &qemu_img, dir.path());
    let qmp = connect_qmp(&sock, limits, &mut child).await;
    QemuUnderTest { qmp, child, dir }
}

/// [`spawn_qemu_none`] with `drives` and `extra`, connected with `limits`.
pub async fn start_qemu_none(
    drives: &[(&str, &str)],
    extra: &[&str],
    limits: Limits,
) -> QemuUnderTest {
    start_qemu(limits, |qemu, qemu_img, dir| {
        spawn_qemu_none(qemu, qemu_img, dir, drives, extra)
    })
    .await
}

/// [`spawn_qemu_q35`] with cache mode `cache`, connected with [`limits`].
pub async fn start_qemu_q35(cache: &str) -> QemuUnderTest {
    start_qemu(limits(), |qemu, qemu_img, dir| {
        spawn_qemu_q35(qemu, qemu_img, dir, cache)
    })
    .await
}

/// A host-run qemu-ga under test and a client connected to it. Fields drop in order: the
/// client, then qemu-ga (killed and reaped), then its directory.
#[derive(Debug)]
pub struct AgentUnderTest {
    pub ga: GuestAgent,
    pub child: ChildGuard,
    pub sock: PathBuf,
    pub dir: tempfile::TempDir,
}

/// [`spawn_qemu_ga`] with `extra` options in a new directory, connected with `limits`.
pub async fn start_agent(extra: &[&str], limits: Limits) -> AgentUnderTest {
    let [qemu_ga] = binaries(["qemu-ga"]);
    let dir = tempfile::tempdir().unwrap();
    let (mut child, sock) = spawn_qemu_ga(&qemu_ga, dir.path(), extra);
    let ga = connect_agent(&sock, limits, &mut child).await;
    AgentUnderTest {
        ga,
        child,
        sock,
        dir,
    }
}

/// Stops `peer` (SIGSTOP) while `call` runs and resumes it: the call must fail with
/// [`Error::Timeout`] after `call_timeout`, and not more than 3 s later.
pub async fn assert_times_out_while_stopped<T: std::fmt::Debug>(
    peer: &ChildGuard,
    call_timeout: Duration,
    call: impl Future<Output = Result<T, Error>>,
) {
    peer.signal("STOP");
    let started = Instant::now();
    let err = call.await.unwrap_err();
    let took = started.elapsed();
    peer.signal("CONT");
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(
        took >= call_timeout && took < call_timeout + Duration::from_secs(3),
        "{took:?}"
    );
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
