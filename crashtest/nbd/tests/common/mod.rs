//! Shared helpers for the integration tests: a server on a temporary socket and bounded runs of
//! the real QEMU tools.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use kvmio_nbd::{Server, ServerHandle, ServerOptions};
use tokio::process::Command;

pub const MIB: u64 = 1 << 20;

/// A running server over a fresh backing file in a temporary directory.
#[derive(Debug)]
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub handle: ServerHandle,
    pub backing: PathBuf,
    pub socket: PathBuf,
}

impl TestServer {
    /// Backing file of `size` bytes filled with `fill`.
    pub fn start(size: u64, fill: u8, options: ServerOptions) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = dir.path().join("disk.img");
        std::fs::write(&backing, vec![fill; size as usize]).expect("write backing file");
        let socket = dir.path().join("nbd.sock");
        let server = Server::bind(&socket, &backing, options).expect("bind");
        let handle = server.spawn();
        TestServer {
            dir,
            handle,
            backing,
            socket,
        }
    }

    pub fn url(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }

    pub fn backing_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.backing).expect("read backing file")
    }

    pub async fn stop(self) {
        self.handle.shutdown().await.expect("shutdown");
        assert!(!self.socket.exists(), "socket file left behind");
    }
}

/// Runs a program with a deadline; the child is killed and reaped on every path (timeout, error
/// or drop of this future through `kill_on_drop`).
pub async fn run_tool(program: &str, args: &[String], timeout: Duration) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let read_all = |mut r: Box<dyn tokio::io::AsyncRead + Unpin + Send>| async move {
        let mut v = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut r, &mut v).await;
        v
    };
    let out = tokio::spawn(read_all(Box::new(stdout)));
    let err = tokio::spawn(read_all(Box::new(stderr)));
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status.expect("wait"),
        Err(_) => {
            let _ = child.kill().await; // kill() also waits for the child
            panic!("{program} {args:?} did not finish within {timeout:?}");
        }
    };
    Output {
        status,
        stdout: out.await.unwrap_or_default(),
        stderr: err.await.unwrap_or_default(),
    }
}

/// Runs `qemu-io -f raw -t CACHE URL -c CMD...`. qemu-io's default cache mode is writethrough,
/// which sets FUA on every write; `writeback` gives plain writes.
pub async fn qemu_io(url: &str, cache: &str, cmds: &[&str]) -> Output {
    let mut args: Vec<String> = vec!["-f".into(), "raw".into(), "-t".into(), cache.into()];
    args.push(url.to_string());
    for c in cmds {
        args.push("-c".into());
        args.push((*c).to_string());
    }
    run_tool("qemu-io", &args, Duration::from_secs(60)).await
}

/// Like [`qemu_io`] but ends with `sigraise 9`: the client is SIGKILLed after its last command
/// completed, so it cannot send the flush a clean exit would.
pub async fn qemu_io_killed(url: &str, cache: &str, cmds: &[&str]) -> Output {
    let mut all: Vec<&str> = cmds.to_vec();
    all.push("sigraise 9");
    let out = qemu_io(url, cache, &all).await;
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(9),
        "qemu-io was expected to kill itself: {}",
        describe(&out)
    );
    out
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn assert_ok(out: &Output) {
    assert!(out.status.success(), "{}", describe(out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("Pattern verification failed") && !text.contains("failed"),
        "{}",
        describe(out)
    );
}

pub fn all(bytes: &[u8], value: u8) -> bool {
    bytes.iter().all(|&b| b == value)
}

pub fn exists(path: &Path) -> bool {
    path.exists()
}
