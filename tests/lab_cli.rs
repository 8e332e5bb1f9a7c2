//! `kvmio-crashtest lab` as a user runs it: sockets appear, a killed QEMU and a Ctrl-C leave
//! nothing behind, bad input fails at once with one line that says what to do.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use kvmio_e2e::{
    guest_image, pid_exists, processes_mentioning, sockets_in, vm_slot, workspace_bin, ChildProcess,
};
use kvmio_test_support::{assert_rejected_in_one_line, wait_for_while_running};
use nix::sys::signal::Signal;

fn lab_command(run_dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(workspace_bin("kvmio-crashtest"));
    cmd.args(["lab", "--accel", "tcg", "--disk-size", "32", "--run-dir"])
        .arg(run_dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(lab_log(run_dir)).expect("lab log"));
    cmd
}

/// The lab's stderr, kept beside (not in) the run dir so cleanup checks are not disturbed.
fn lab_log(run_dir: &Path) -> std::path::PathBuf {
    run_dir.with_extension("stderr.log")
}

/// Starts a lab and waits for its manifest; returns it parsed.
fn start_lab(run_dir: &Path, extra: &[&str]) -> (ChildProcess, serde_json::Value) {
    guest_image(); // build outside the lab's clock
    let mut lab = ChildProcess::spawn(&mut lab_command(run_dir, extra));
    let manifest = wait_manifest(&mut lab, run_dir, Duration::from_secs(240));
    (lab, manifest)
}

/// Waits for the manifest of the running `lab` in `run_dir`; returns it parsed.
fn wait_manifest(lab: &mut ChildProcess, run_dir: &Path, timeout: Duration) -> serde_json::Value {
    wait_for_while_running("lab.json", timeout, lab, &lab_log(run_dir), || {
        let text = std::fs::read_to_string(run_dir.join("lab.json")).ok()?;
        serde_json::from_str(&text).ok()
    })
}

fn qemu_pid(manifest: &serde_json::Value) -> u32 {
    manifest["vms"][0]["pid"].as_u64().expect("pid in manifest") as u32
}

#[test]
fn killed_qemu_leaves_no_process_and_no_socket() {
    let _slot = vm_slot();
    let dir = tempfile::tempdir().unwrap();
    let (mut lab, manifest) = start_lab(dir.path(), &["--vms", "1"]);
    let pid = qemu_pid(&manifest);
    assert!(Path::new(manifest["vms"][0]["qmp"].as_str().unwrap()).exists());
    assert!(Path::new(manifest["vms"][0]["qga"].as_str().unwrap()).exists());

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    // Its only VM gone, the lab reports it, cleans up and exits non-zero.
    let status = lab
        .wait_timeout(Duration::from_secs(30))
        .expect("lab exits once its VMs are gone");
    assert!(!status.success());
    assert!(!pid_exists(pid), "QEMU {pid} was reaped");
    assert_eq!(sockets_in(dir.path()), Vec::<std::path::PathBuf>::new());
    let leftover = processes_mentioning(&dir.path().to_string_lossy());
    assert!(leftover.is_empty(), "left running: {leftover:?}");
}

#[test]
fn interrupt_stops_every_vm_and_removes_sockets_and_images() {
    let _slot = vm_slot();
    let dir = tempfile::tempdir().unwrap();
    let (mut lab, manifest) = start_lab(dir.path(), &["--vms", "2", "--cache", "none,unsafe"]);
    assert_eq!(manifest["vms"][0]["cache"], "none");
    assert_eq!(manifest["vms"][1]["cache"], "unsafe");
    let pids: Vec<u32> = (0..2)
        .map(|i| manifest["vms"][i]["pid"].as_u64().unwrap() as u32)
        .collect();
    let status = lab.signal_and_wait(Signal::SIGINT, Duration::from_secs(30));
    assert!(status.success(), "Ctrl-C is a normal stop: {status}");
    for pid in pids {
        assert!(!pid_exists(pid), "QEMU {pid} was reaped");
    }
    assert!(sockets_in(dir.path()).is_empty());
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".console.log"))
        .collect();
    assert!(left.is_empty(), "left in the run dir: {left:?}");
    assert!(processes_mentioning(&dir.path().to_string_lossy()).is_empty());
}

/// Runs the lab with bad input; it must fail fast, say what to do on its first line, and
/// leave no QEMU behind.
fn assert_rejected(extra: &[&str], run_dir: &Path, hint: &str) {
    let mut cmd = Command::new(workspace_bin("kvmio-crashtest"));
    cmd.args(["lab", "--vms", "1", "--run-dir"])
        .arg(run_dir)
        .args(extra);
    if !extra.contains(&"--accel") {
        cmd.args(["--accel", "tcg"]);
    }
    assert_rejected_in_one_line(&mut cmd, &extra, hint);
    let leftover = processes_mentioning(&run_dir.to_string_lossy());
    assert!(leftover.is_empty(), "left running: {leftover:?}");
}

#[test]
fn bad_input_fails_with_one_line_that_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    assert_rejected(
        &["--kernel", "/nonexistent/vmlinuz", "--modules", "/tmp"],
        &run_dir,
        "deploy/setup.sh",
    );
    assert_rejected(
        &["--qemu", "/nonexistent/qemu-system-x86_64"],
        &run_dir,
        "--qemu",
    );
    assert_rejected(
        &["--cache", "fast"],
        &run_dir,
        "none, writeback, writethrough, directsync, unsafe",
    );
    assert_rejected(&["--accel", "hvf"], &run_dir, "tcg, kvm or auto");
    // A run dir that is a file, and one under /proc where nothing can be created (root can
    // write anywhere permission bits allow, so this is the honest "not writable" case).
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    assert_rejected(&[], &file, "--run-dir");
    assert_rejected(&[], Path::new("/proc/kvmio-not-writable"), "--run-dir");
}

/// `--accel auto` must not hang where /dev/kvm exists but KVM guests do not boot (these CI
/// machines): it probes with a bounded boot, falls back to TCG, and records why.
#[test]
fn auto_accel_boots_even_where_kvm_hangs() {
    let _slot = vm_slot();
    let kernel = kvmio_crashtest::kernel::GuestKernel::locate(None, None)
        .expect("guest kernel (run deploy/setup.sh)");
    let cache = tempfile::tempdir().unwrap(); // no cached probe verdict
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(workspace_bin("kvmio-crashtest"));
    cmd.args([
        "lab",
        "--vms",
        "1",
        "--disk-size",
        "32",
        "--accel",
        "auto",
        "--kernel",
    ])
    .arg(&kernel.vmlinuz)
    .arg("--modules")
    .arg(&kernel.modules)
    .arg("--cache-dir")
    .arg(cache.path())
    .arg("--run-dir")
    .arg(dir.path())
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(lab_log(dir.path())).unwrap());
    let mut lab = ChildProcess::spawn(&mut cmd);
    let manifest = wait_manifest(&mut lab, dir.path(), Duration::from_secs(300));
    let accel = manifest["accel"].as_str().unwrap().to_string();
    let kvm_usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let probe = std::fs::read_to_string(cache.path().join("accel-probe")).unwrap_or_default();
    match accel.as_str() {
        "kvm" => assert!(probe.ends_with("kvm-works\n"), "{probe}"),
        "tcg" if kvm_usable => assert!(probe.ends_with("kvm-hangs\n"), "probe verdict: {probe:?}"),
        "tcg" => assert!(probe.is_empty(), "no /dev/kvm, no probe"),
        other => panic!("unexpected accel {other}"),
    }
    let status = lab.signal_and_wait(Signal::SIGINT, Duration::from_secs(30));
    assert!(status.success());
    assert!(processes_mentioning(&dir.path().to_string_lossy()).is_empty());
    assert!(
        processes_mentioning("kvmio-probe").is_empty(),
        "probe VM reaped"
    );
}
