//! Real QEMU without a guest (`-M none`: the monitor and the block layer are real) and the
//! host's own `qemu-ga`, each on a Unix socket in a directory of the test's, tied to the test
//! ([`spawn_tied`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{require, spawn_tied, wait_path, ChildProcess};

/// A `qemu-system-x86_64 -M none` with `drives` raw drives (`d0`..), its QMP monitor at
/// `DIR/NAME.qmp`.
pub fn qemu_none(dir: &Path, name: &str, drives: usize) -> (ChildProcess, PathBuf) {
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
    (start(cmd, &format!("qemu {name}"), &sock), sock)
}

/// A paused q35 QEMU (`-S`, TCG, 64 MiB, no default devices, no display) with its monitor at
/// `socket` and `extra` arguments (devices, drives, `-name`): a real device tree and block layer
/// without a guest, cheap enough to run many. Waits (60 s at most) for the monitor socket.
pub fn qemu_q35(socket: &Path, extra: &[String]) -> ChildProcess {
    let qemu = require("qemu-system-x86_64", "qemu-system-x86");
    let mut cmd = Command::new(qemu);
    cmd.args(["-M", "q35", "-accel", "tcg", "-S", "-m", "64"])
        .args(["-nodefaults", "-display", "none"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", socket.display()))
        .args(extra);
    start_within(cmd, "qemu q35", socket, Duration::from_secs(60))
}

/// `qemu-system-x86_64 -M none` with its monitor at `socket` and `extra` arguments.
pub fn qemu_none_with(socket: &Path, extra: &[String]) -> ChildProcess {
    let qemu = require("qemu-system-x86_64", "qemu-system-x86");
    let mut cmd = Command::new(qemu);
    cmd.args(["-M", "none", "-nodefaults", "-display", "none"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", socket.display()))
        .args(extra);
    start(cmd, "qemu -M none", socket)
}

/// The host's own qemu-ga on a Unix socket (`DIR/NAME.qga`), state in `DIR/NAME.ga-state`.
pub fn qemu_ga(dir: &Path, name: &str) -> (ChildProcess, PathBuf) {
    qemu_ga_with(dir, name, &[])
}

/// [`qemu_ga`] with extra arguments (e.g. `-b guest-file-open` to block RPCs).
pub fn qemu_ga_with(dir: &Path, name: &str, extra: &[&str]) -> (ChildProcess, PathBuf) {
    let ga = require("qemu-ga", "qemu-guest-agent");
    let sock = dir.join(format!("{name}.qga"));
    let state = dir.join(format!("{name}.ga-state"));
    std::fs::create_dir_all(&state).unwrap();
    let mut cmd = Command::new(ga);
    cmd.args(["-m", "unix-listen", "-p"])
        .arg(&sock)
        .arg("-t")
        .arg(&state)
        .args(extra);
    (start(cmd, &format!("qemu-ga {name}"), &sock), sock)
}

/// Starts `cmd` (`what`) quietly and waits (30 s at most) until it has created `sock`.
fn start(cmd: Command, what: &str, sock: &Path) -> ChildProcess {
    start_within(cmd, what, sock, Duration::from_secs(30))
}

/// Starts `cmd` (`what`) quietly and waits (`wait` at most) until it has created `sock`.
pub fn start_within(mut cmd: Command, what: &str, sock: &Path, wait: Duration) -> ChildProcess {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut p = spawn_tied(&mut cmd, what);
    wait_path(sock, wait, &mut p, what);
    p
}
