//! Real QEMU (`-M none`), host-run qemu-ga and the exporter binary as child processes that are
//! killed and reaped when dropped (also when a test panics), and that die with the test process
//! (`PR_SET_PDEATHSIG`) if it is killed outright.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process, SIGKILLed and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    pub child: Option<Child>,
    pub what: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig)
            .unwrap_or_else(|e| panic!("signal {sig} to {}: {e}", self.what));
    }

    /// Whether it still runs (not reaped yet and not exited).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Kills and reaps now.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `cmd` so that it dies with this process.
pub fn spawn(cmd: &mut Command, what: &str) -> Proc {
    use std::os::unix::process::CommandExt;
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe, touching no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what} ({cmd:?}): {e}"));
    Proc {
        child: Some(child),
        what: what.to_owned(),
    }
}

/// `which`, failing the test with the package to install when missing.
pub fn require(bin: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{bin} not found: install {package} (deploy/setup.sh does)"))
}

/// Waits until `path` exists (a socket being created by a child).
pub fn wait_path(path: &Path, timeout: Duration, proc_: &mut Proc) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            proc_.running(),
            "{} exited before creating {}",
            proc_.what,
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

/// A `qemu-system-x86_64 -M none` with `drives` raw drives (`d0`..), its QMP monitor at
/// `DIR/NAME.qmp`. No guest runs: the monitor and the block layer are real.
pub fn qemu_none(dir: &Path, name: &str, drives: usize) -> (Proc, PathBuf) {
    let qemu = require("qemu-system-x86_64", "qemu-system-x86");
    let sock = dir.join(format!("{name}.qmp"));
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-M",
        "none",
        "-nodefaults",
        "-display",
        "none",
        "-name",
        name,
    ])
    .arg("-qmp")
    .arg(format!("unix:{},server=on,wait=off", sock.display()));
    for i in 0..drives {
        let img = dir.join(format!("{name}-d{i}.raw"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        cmd.arg("-drive").arg(format!(
            "if=none,id=d{i},file={},format=raw,cache=none,aio=threads",
            img.display()
        ));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut p = spawn(&mut cmd, &format!("qemu {name}"));
    wait_path(&sock, Duration::from_secs(30), &mut p);
    (p, sock)
}

/// The host's own qemu-ga on a Unix socket (`DIR/NAME.qga`), state in `DIR/NAME.ga-state`.
pub fn qemu_ga(dir: &Path, name: &str) -> (Proc, PathBuf) {
    qemu_ga_with(dir, name, &[])
}

/// [`qemu_ga`] with extra arguments (e.g. `-b guest-file-open` to block RPCs).
pub fn qemu_ga_with(dir: &Path, name: &str, extra: &[&str]) -> (Proc, PathBuf) {
    let ga = require("qemu-ga", "qemu-guest-agent");
    let sock = dir.join(format!("{name}.qga"));
    let state = dir.join(format!("{name}.ga-state"));
    std::fs::create_dir_all(&state).unwrap();
    let mut cmd = Command::new(ga);
    cmd.args(["-m", "unix-listen", "-p"])
        .arg(&sock)
        .arg("-t")
        .arg(&state)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut p = spawn(&mut cmd, &format!("qemu-ga {name}"));
    wait_path(&sock, Duration::from_secs(30), &mut p);
    (p, sock)
}

/// The exporter binary on 127.0.0.1 (a free port), stderr to `log`; returns it and its address.
pub fn exporter(args: &[String], log: &Path) -> (Proc, String) {
    let bin = env!("CARGO_BIN_EXE_kvmio-exporter");
    let mut cmd = Command::new(bin);
    cmd.arg("--web.listen-address=127.0.0.1:0")
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    let mut p = spawn(&mut cmd, "kvmio-exporter");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.split("listening on http://").nth(1) {
            let addr = rest.split("/metrics").next().unwrap().to_owned();
            return (p, addr);
        }
        assert!(p.running(), "exporter exited: {text}");
        assert!(Instant::now() < deadline, "no 'listening on' line: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET path` over HTTP/1.1 with a blocking socket: (status, body, elapsed).
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> (u16, String, Duration) {
    use std::io::{Read, Write};
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("GET {path}: no complete answer within {timeout:?}: {e}"));
    let elapsed = t0.elapsed();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned(), elapsed)
}

/// The value of the sample line `series` (exact name and labels as rendered), if present.
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
}
