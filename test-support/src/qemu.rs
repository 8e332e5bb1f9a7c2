//! Real QEMU without a guest (`-M none`: the monitor and the block layer are real) and the
//! host's own `qemu-ga`, each on a Unix socket in a directory of the test's, tied to the test
//! ([`spawn_tied`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{require, spawn_tied, wait_path, ChildProcess};

/// `qemu-system-x86_64 MACHINE -nodefaults -display none` with its QMP monitor at `socket`:
/// what every QEMU the tests start begins with (add devices, drives, `-name`).
pub fn qemu_command(machine: &[&str], socket: &Path) -> Command {
    let mut cmd = Command::new(require("qemu-system-x86_64", "qemu-system-x86"));
    cmd.args(machine)
        .args(["-nodefaults", "-display", "none", "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", socket.display()));
    cmd
}

/// A `qemu-system-x86_64 -M none` with `drives` raw drives (`d0`..), its QMP monitor at
/// `DIR/NAME.qmp`.
pub fn qemu_none(dir: &Path, name: &str, drives: usize) -> (ChildProcess, PathBuf) {
    let sock = dir.join(format!("{name}.qmp"));
    let mut cmd = qemu_command(&["-M", "none"], &sock);
    cmd.args(["-name", name]);
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
    let mut cmd = qemu_command(&["-M", "q35", "-accel", "tcg", "-S", "-m", "64"], socket);
    cmd.args(extra);
    start_within(cmd, "qemu q35", socket, Duration::from_secs(60))
}

/// `qemu-system-x86_64 -M none` with its monitor at `socket` and `extra` arguments.
pub fn qemu_none_with(socket: &Path, extra: &[String]) -> ChildProcess {
    let mut cmd = qemu_command(&["-M", "none"], socket);
    cmd.args(extra);
    start(cmd, "qemu -M none", socket)
}

/// The command line (after the program name) of the VM kvmio's QEMU fixtures are captured from
/// (`qemu/examples/capture_fixtures.rs`, `exporter/examples/capture_qom_fixtures.rs`): a q35
/// named `kvmio-fixture` under TCG, paused (`-S`), no default devices, no display, its monitor
/// at `qmp.sock` in the working directory, and three virtio-blk-pci disks: `vd0` (drive `d0`
/// on `d0_file`, e.g. `file=d0.raw,format=raw`; `cache=writeback`, slot 5, serial `kvmio-0`),
/// `vd1` (`d1.raw`, raw, `cache=none`, slot 6, serial `kvmio-1`) and `vd2` (`d2` on `d2_file`,
/// `cache=directsync`, serial `kvmio-2`) behind the `pcie-root-port` `rp0`; then `extra`.
pub fn fixture_vm_args(d0_file: &str, d2_file: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "-name",
        "kvmio-fixture",
        "-M",
        "q35",
        "-accel",
        "tcg",
        "-S",
        "-nodefaults",
        "-display",
        "none",
        "-qmp",
        "unix:qmp.sock,server=on,wait=off",
    ]
    .map(String::from)
    .to_vec();
    for (flag, value) in [
        ("-drive", format!("if=none,id=d0,{d0_file},cache=writeback")),
        (
            "-device",
            "virtio-blk-pci,drive=d0,id=vd0,serial=kvmio-0,addr=0x5".to_owned(),
        ),
        (
            "-drive",
            "if=none,id=d1,file=d1.raw,format=raw,cache=none".to_owned(),
        ),
        (
            "-device",
            "virtio-blk-pci,drive=d1,id=vd1,serial=kvmio-1,addr=0x6".to_owned(),
        ),
        (
            "-drive",
            format!("if=none,id=d2,{d2_file},cache=directsync"),
        ),
        (
            "-device",
            "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,addr=0x7".to_owned(),
        ),
        (
            "-device",
            "virtio-blk-pci,drive=d2,id=vd2,serial=kvmio-2,bus=rp0".to_owned(),
        ),
    ] {
        args.push(flag.to_owned());
        args.push(value);
    }
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args
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
