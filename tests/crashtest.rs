//! `kvmio-crashtest run` and `verify` against real QEMU (TCG), kvmio's volatile FUSE filesystem
//! (the `power` faults, under QEMU's file driver) and kvmio's NBD server (`power-nbd`).
//!
//! * The checker can fail: a lying host (FUSE and NBD), a FUSE host that reorders a flushed
//!   write after the flush, a corrupted acked record in a kept image, and a writer that acks
//!   before its durability point each give VIOLATION and exit status 3.
//! * It does not cry wolf: the honest stack reports no VIOLATION, and shows the expected shape
//!   (unsafe loses acked writes at power loss, write-through keeps them, kill keeps raw writes).
//! * Bad input fails at once with one line; Ctrl-C reaps every QEMU, unmounts the FUSE host
//!   and removes the temporary files.
//!
//! * Runs restore their guests from a state saved once per VM configuration (`--boot auto`, the
//!   default), so the checker-can-fail tests run restored; the lying NBD server and the full
//!   image dir boot every guest (`--boot always`), so both ways stay covered.
//!
//! Small disks, short write windows and one iteration per cell keep this to about two minutes
//! on two cores; the full matrix is the benchmark's job (BENCHMARKS.md).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kvmio_e2e::{
    guest_image, pid_exists, processes_mentioning, run, sockets_in, vm_slot, workspace_bin,
    ChildProcess, VmSlot,
};
use kvmio_test_support::{assert_rejected_in_one_line, wait_for_while_running};
use nix::sys::signal::Signal;
use serde_json::Value;

/// Exit status of a run or verify that found a VIOLATION.
const EXIT_VIOLATION: i32 = 3;

/// A `run` command with the quick settings every test uses.
fn run_command(out: &Path, tmp: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(workspace_bin("kvmio-crashtest"));
    cmd.args([
        "run",
        "--accel",
        "tcg",
        "--iterations",
        "1",
        "--disk-size",
        "16",
        "--window-ms",
        "200..600",
        "--seed",
        "20261125",
        "--out",
    ])
    .arg(out)
    .args(extra)
    // The default image dir and the socket dir live under TMPDIR: the test can see everything
    // the run created, and that it is gone afterwards.
    .env("TMPDIR", tmp)
    .stdin(Stdio::null());
    cmd
}

/// [`run_command`] for one matrix (`[cache, fault, sync, format]`, each a comma list), then
/// `extra`.
fn matrix_command(
    out: &Path,
    tmp: &Path,
    [cache, fault, sync, format]: [&str; 4],
    extra: &[&str],
) -> Command {
    let mut cmd = run_command(
        out,
        tmp,
        &[
            "--cache", cache, "--fault", fault, "--sync", sync, "--format", format,
        ],
    );
    cmd.args(extra);
    cmd
}

/// `kvmio-crashtest verify` of a kept image and its ack log.
fn verify_command(image: &Path, acks: &Path) -> Command {
    let mut cmd = Command::new(workspace_bin("kvmio-crashtest"));
    cmd.args(["verify", "--image"])
        .arg(image)
        .arg("--acks")
        .arg(acks);
    cmd
}

/// Runs to completion (bounded); returns (exit code, stdout, stderr).
fn run_bounded(mut cmd: Command, timeout: Duration) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    cmd.stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let mut child = ChildProcess::spawn(&mut cmd);
    let status = child
        .wait_timeout(timeout)
        .unwrap_or_else(|| panic!("{cmd:?} did not finish within {timeout:?}"));
    let stdout = std::fs::read_to_string(&out_path).unwrap();
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    (status.code().unwrap_or(-1), stdout, stderr)
}

/// [`run_bounded`] with [`TIMEOUT`], asserting the exit code; returns (stdout, stderr).
#[track_caller]
fn run_expecting(cmd: Command, code: i32) -> (String, String) {
    let (got, stdout, stderr) = run_bounded(cmd, TIMEOUT);
    assert_eq!(got, code, "stdout:\n{stdout}\nstderr:\n{stderr}");
    (stdout, stderr)
}

/// A VM-booting test's state: its report dir and TMPDIR, and the VM slot (released last).
struct Booting {
    out: tempfile::TempDir,
    tmp: tempfile::TempDir,
    _slot: VmSlot,
}

/// Takes the VM slot, builds the guest image and makes the test's report dir and TMPDIR.
fn booting() -> Booting {
    let _slot = vm_slot();
    guest_image();
    Booting {
        out: tempfile::tempdir().unwrap(),
        tmp: tempfile::tempdir().unwrap(),
        _slot,
    }
}

impl Booting {
    /// [`matrix_command`] with this test's report dir and TMPDIR.
    fn matrix(&self, matrix: [&str; 4], extra: &[&str]) -> Command {
        matrix_command(self.out.path(), self.tmp.path(), matrix, extra)
    }

    /// Starts `cmd` with its stderr in `out/stderr.log` and waits until it runs a QEMU whose
    /// disk is under TMPDIR (the FUSE mount is in the run's directory there): returns the run
    /// and that QEMU's (pid, command line).
    fn start_until_qemu(&self, mut cmd: Command) -> (ChildProcess, (u32, String)) {
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(self.stderr_log()).unwrap());
        let mut child = ChildProcess::spawn(&mut cmd);
        let tmp_s = self.tmp.path().to_string_lossy().into_owned();
        let qemu = wait_for_while_running(
            "a QEMU with its disk under TMPDIR",
            Duration::from_secs(240),
            &mut child,
            &self.stderr_log(),
            || {
                processes_mentioning(&tmp_s)
                    .into_iter()
                    .find(|(_, cmdline)| cmdline.contains("qemu-system"))
            },
        );
        (child, qemu)
    }

    /// Runs `matrix` with `extra`, keeping its images in a directory of their own (returned
    /// with the report); the run must find no violation.
    fn run_kept(&self, matrix: [&str; 4], extra: &[&str]) -> (tempfile::TempDir, Value) {
        let images = tempfile::tempdir().unwrap();
        let mut cmd = self.matrix(matrix, extra);
        cmd.args(["--keep-images", "--image-dir"])
            .arg(images.path());
        run_expecting(cmd, 0);
        (images, report(self.out.path()))
    }

    fn stderr_log(&self) -> PathBuf {
        self.out.path().join("stderr.log")
    }
}

/// The paths in `dir`.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect()
}

fn report(out: &Path) -> Value {
    let text = std::fs::read_to_string(out.join("report.json")).expect("report.json");
    serde_json::from_str(&text).expect("report.json parses")
}

/// The cell of `workload` in a report.
fn workload_cell<'a>(
    report: &'a Value,
    [cache, fault, sync, format]: [&str; 4],
    workload: &str,
) -> &'a Value {
    report["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["cache_mode"] == cache
                && c["fault"] == fault
                && c["sync"] == sync
                && c["format"] == format
                && c["workload"] == workload
        })
        .unwrap_or_else(|| panic!("no cell {cache}/{fault}/{sync}/{format}/{workload} in {report}"))
}

/// The raw-append cell (the workload of the tests that name none).
fn cell<'a>(report: &'a Value, cache: &str, fault: &str, sync: &str, format: &str) -> &'a Value {
    workload_cell(report, [cache, fault, sync, format], "raw-append")
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Every iteration of the report started its guest `how` (`restored` or `booted`), and the
/// writer's `STATE` was that of a fresh boot: no disk data cached, the fresh disk's size, the
/// cache mode's write cache.
#[track_caller]
fn assert_started(report: &Value, how: &str) {
    let disk = u(&report["run"]["disk_size_mib"]) << 20;
    for c in report["cells"].as_array().unwrap() {
        let write_back = c["cache_mode"] != "writethrough" && c["cache_mode"] != "directsync";
        for it in c["results"].as_array().unwrap() {
            assert_eq!(it["started"], how, "{it}");
            let g = &it["guest_check"];
            assert_eq!(g["cached_kib"], 0, "{it}");
            assert_eq!(g["partitions"], 0, "{it}");
            assert_eq!(u(&g["disk_bytes"]), disk, "{it}");
            assert_eq!(g["write_cache"], write_back, "{it}");
            if how == "restored" {
                assert_eq!(it["timings"]["boot"], 0.0, "{it}");
                assert!(it["timings"]["restore"].as_f64().unwrap() > 0.0, "{it}");
            }
        }
    }
}

/// Nothing of the run is left: no process, no socket, no file in TMPDIR.
fn assert_clean(tmp: &Path) {
    let left = processes_mentioning(&tmp.to_string_lossy());
    assert!(left.is_empty(), "left running: {left:?}");
    assert!(
        sockets_in(tmp).is_empty(),
        "sockets left: {:?}",
        sockets_in(tmp)
    );
    let files = files_in(tmp);
    assert!(files.is_empty(), "left in TMPDIR: {files:?}");
}

const TIMEOUT: Duration = Duration::from_secs(600);

/// (a) A host that acknowledges fsync (FUSE) and FLUSH/FUA (NBD) without persisting:
/// fdatasync'd records vanish at the power loss, and the checker says VIOLATION.
#[test]
fn a_lying_host_is_a_violation() {
    let t = booting();
    let (out, tmp) = (&t.out, &t.tmp);
    let cmd = t.matrix(
        ["none", "power,power-nbd", "fdatasync", "raw"],
        &["--lie-about-flush", "--boot", "always"],
    );
    let (_, stderr) = run_expecting(cmd, EXIT_VIOLATION);
    assert!(stderr.contains("VIOLATION"), "{stderr}");
    let r = report(out.path());
    let c = cell(&r, "none", "power", "fdatasync", "raw");
    assert_eq!(c["verdict"], "VIOLATION");
    assert!(u(&c["acked"]) > 0 && u(&c["lost"]) > 0, "{c}");
    let c = cell(&r, "none", "power-nbd", "fdatasync", "raw");
    assert_eq!(c["verdict"], "VIOLATION", "{c}");
    assert_eq!(r["violations"], 2);
    assert_started(&r, "booted");
    let prom = std::fs::read_to_string(out.path().join("crashtest.prom")).unwrap();
    assert!(prom.contains(
        "kvmio_crashtest_violations{cache_mode=\"none\",fault=\"power\",sync=\"fdatasync\",format=\"raw\",workload=\"raw-append\"} 1"
    ));
    assert_clean(tmp.path());
}

/// (a') A FUSE host that keeps the newest write volatile across each fsync (as if it had
/// reordered the flushed write after an unflushed one, durable only at the next flush): the
/// last record acked before the fault is lost, and the checker says VIOLATION. An iteration
/// whose cut falls between a flush and the guest's ack of that record loses nothing acked, so
/// the cell runs four iterations.
#[test]
fn a_host_that_reorders_a_flushed_write_is_a_violation() {
    let t = booting();
    let (out, tmp) = (&t.out, &t.tmp);
    let cmd = t.matrix(
        ["writeback", "power", "fdatasync", "raw"],
        &["--reorder-flush", "--iterations", "4"],
    );
    run_expecting(cmd, EXIT_VIOLATION);
    let r = report(out.path());
    let c = cell(&r, "writeback", "power", "fdatasync", "raw");
    assert_eq!(c["verdict"], "VIOLATION", "{c}");
    assert!(u(&c["lost"]) >= 1, "{c}");
    assert_eq!(r["run"]["reorder_flush"], true);
    assert_clean(tmp.path());
}

/// The honest FUSE host over many seeds: no VIOLATION where survival is promised (whole and
/// torn power losses, raw and qcow2), and unsafe loses acked records with no unsafe-specific
/// code anywhere in kvmio (QEMU never fdatasyncs the file).
#[test]
fn the_honest_fuse_host_gives_no_violation_over_many_seeds() {
    let t = booting();
    let (out, tmp) = (&t.out, &t.tmp);
    let cmd = t.matrix(
        [
            "none,writeback,unsafe",
            "power,power-torn",
            "fdatasync",
            "raw,qcow2",
        ],
        &["--iterations", "3", "--parallel", "2", "--seed", "7"],
    );
    run_expecting(cmd, 0);
    let r = report(out.path());
    assert_eq!(r["violations"], 0);
    for cache in ["none", "writeback"] {
        for fault in ["power", "power-torn"] {
            for format in ["raw", "qcow2"] {
                let c = cell(&r, cache, fault, "fdatasync", format);
                assert_eq!(c["verdict"], "ok", "{c}");
                assert_eq!(c["qmp_confirmed"], true, "{c}");
            }
        }
    }
    let u_power = cell(&r, "unsafe", "power", "fdatasync", "raw");
    assert!(u(&u_power["lost_acked"]) > 0, "{u_power}");
    assert_clean(tmp.path());
}

/// (c) A writer that acks as soon as its write returns, before the fdatasync: the acked records
/// are still in the volatile cache at the power loss, and the checker says VIOLATION.
#[test]
fn a_writer_that_acks_before_its_durability_point_is_a_violation() {
    let t = booting();
    let (out, tmp) = (&t.out, &t.tmp);
    let cmd = t.matrix(
        ["writeback", "power", "fdatasync", "qcow2"],
        &["--ack-early"],
    );
    run_expecting(cmd, EXIT_VIOLATION);
    let r = report(out.path());
    let c = cell(&r, "writeback", "power", "fdatasync", "qcow2");
    assert_eq!(c["verdict"], "VIOLATION", "{c}");
    assert_eq!(r["run"]["ack_early"], true);
    // ack_early reached the writer in its START line, after the restore.
    assert_started(&r, "restored");
    assert_clean(tmp.path());
}

/// (b) A kept image verifies; flipping bytes of an acked record, or zeroing one, makes
/// `verify` say VIOLATION.
#[test]
fn a_corrupted_acked_record_in_a_kept_image_is_a_violation() {
    let t = booting();
    let tmp = &t.tmp;
    let (images, r) = t.run_kept(["none", "kill", "fdatasync", "raw"], &[]);
    let c = cell(&r, "none", "kill", "fdatasync", "raw");
    assert_eq!(c["verdict"], "ok");
    assert_started(&r, "restored");
    let it = &c["results"][0];
    let image = PathBuf::from(it["kept_image"].as_str().expect("kept image"));
    let acks = PathBuf::from(it["kept_acks"].as_str().expect("kept ack log"));
    assert!(image.starts_with(images.path()), "{image:?}");
    assert!(acks.is_file());
    // The saved guest went with the run; the kept images stay.
    let kept_dir = image.parent().unwrap();
    let saved: Vec<PathBuf> = files_in(kept_dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snapshots-")
        })
        .collect();
    assert!(saved.is_empty(), "saved guests left: {saved:?}");
    let acked = u(&it["acked"]);
    assert!(acked >= 2, "{it}");

    let verify = |json: bool| {
        let mut cmd = verify_command(&image, &acks);
        if json {
            cmd.arg("--json");
        }
        run(&mut cmd)
    };
    let (status, stdout, _) = verify(false);
    assert!(status.success(), "{stdout}");
    assert!(stdout.contains("verdict: ok"), "{stdout}");
    assert!(
        stdout.contains(&format!("acked {acked}, survived {acked}")),
        "{stdout}"
    );

    // Flip bytes in the payload of acked record 1 (slot 1, 4096-byte records).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0xff, 0x00, 0xff], 4096 + 1000).unwrap();
    let (status, stdout, _) = verify(false);
    assert_eq!(status.code(), Some(EXIT_VIOLATION), "{stdout}");
    assert!(stdout.contains("verdict: VIOLATION"), "{stdout}");
    assert!(stdout.contains("slot 1 (acked)"), "{stdout}");

    // Zero acked record 0: lost, where kill with a raw image promised survival.
    f.write_all_at(&[0u8; 4096], 0).unwrap();
    let (status, stdout, _) = verify(true);
    assert_eq!(status.code(), Some(EXIT_VIOLATION), "{stdout}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["verdict"], "VIOLATION");
    assert_eq!(v["verification"]["lost"], 1);
    assert_eq!(u(&v["verification"]["survived"]), acked - 2);
    assert_clean(tmp.path());
}

/// The honest stack: no VIOLATION, and the expected shape. unsafe loses acked writes at a
/// power loss (torn variant included), write-through keeps even unflushed ones, and kill keeps
/// everything written to a raw image. The report carries QEMU's version and the cache flags QMP
/// confirmed, and crashtest.prom passes promtool.
#[test]
fn the_honest_stack_reports_no_violation_and_the_expected_shape() {
    let t = booting();
    let (out, tmp) = (&t.out, &t.tmp);
    let cmd = t.matrix(
        [
            "writethrough,unsafe",
            "kill,power-torn",
            "fdatasync,none",
            "raw",
        ],
        &["--parallel", "2"],
    );
    let (stdout, _) = run_expecting(cmd, 0);
    let r = report(out.path());
    assert_eq!(r["complete"], true);
    assert_eq!(r["violations"], 0);
    assert!(
        r["qemu_version"]
            .as_str()
            .unwrap()
            .starts_with(|c: char| c.is_ascii_digit()),
        "{}",
        r["qemu_version"]
    );
    assert_eq!(r["cells"].as_array().unwrap().len(), 8);
    assert_started(&r, "restored");
    for c in r["cells"].as_array().unwrap() {
        assert_ne!(c["verdict"], "VIOLATION", "{c}");
        assert_eq!(c["qmp_confirmed"], true, "QMP flags: {c}");
        assert!(u(&c["acked"]) > 0, "{c}");
        if c["cache_mode"] == "writethrough" || c["fault"] == "kill" {
            assert_eq!(c["survived"], c["acked"], "{c}");
        }
    }
    let wt = cell(&r, "writethrough", "power-torn", "none", "raw");
    assert_eq!(wt["qmp_cache"]["writeback"], false);
    let unsafe_power = cell(&r, "unsafe", "power-torn", "none", "raw");
    assert!(u(&unsafe_power["lost_acked"]) > 0, "{unsafe_power}");
    assert_eq!(unsafe_power["verdict"], "loss-allowed");
    assert_eq!(unsafe_power["qmp_cache"]["no-flush"], true);
    assert!(u(&cell(&r, "unsafe", "power-torn", "fdatasync", "raw")["lost_acked"]) > 0);

    let prom = out.path().join("crashtest.prom");
    let (status, o, e) = run(Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&prom).unwrap()));
    assert!(status.success(), "promtool check metrics: {o}{e}");
    assert!(
        stdout.contains("verdict"),
        "the matrix table is printed: {stdout}"
    );
    assert_clean(tmp.path());

    // qcow2 under power, a file that grows on the FUSE host; a disk so small the writer fills it
    // before the fault. The window ends as soon as the writer says DONE (about a second on a
    // quiet machine); its bound is generous so that a loaded machine (a TCG guest then writes
    // 256 records in 5-10 s) still reaches the full disk instead of failing on timing.
    let out2 = tempfile::tempdir().unwrap();
    let cmd = matrix_command(
        out2.path(),
        tmp.path(),
        ["none,directsync", "power", "dsync,none", "qcow2"],
        &[
            "--parallel",
            "2",
            "--disk-size",
            "1",
            "--window-ms",
            "60000",
        ],
    );
    run_expecting(cmd, 0);
    let r = report(out2.path());
    assert_eq!(r["violations"], 0);
    assert_started(&r, "restored");
    for c in r["cells"].as_array().unwrap() {
        let it = &c["results"][0];
        assert_eq!(it["writer_done"], true, "1 MiB fills up: {it}");
        assert!(
            it["image_check"]
                .as_str()
                .unwrap()
                .starts_with("corruptions=0"),
            "{it}"
        );
    }
    let ds = cell(&r, "directsync", "power", "none", "qcow2");
    assert_eq!((u(&ds["acked"]), u(&ds["survived"])), (256, 256), "{ds}");
    let none = cell(&r, "none", "power", "none", "qcow2");
    assert_eq!(none["verdict"], "loss-allowed", "{none}");
    assert_clean(tmp.path());
}

/// Ctrl-C in the middle of a power iteration: exit 130, QEMU reaped, FUSE host unmounted, images,
/// sockets and console logs removed, and a report marked incomplete without crashtest.prom.
#[test]
fn interrupt_mid_run_reaps_qemu_and_removes_temporary_files() {
    let t = booting();
    let (out, tmp) = (&t.out, &t.tmp);
    let cmd = t.matrix(
        ["none", "power", "none", "qcow2"],
        &["--iterations", "3", "--window-ms", "60000"],
    );
    let (mut child, qemu) = t.start_until_qemu(cmd);
    // Let the writer run: the interrupt lands in the write window.
    std::thread::sleep(Duration::from_secs(8));
    let status = child.signal_and_wait(Signal::SIGINT, Duration::from_secs(60));
    let stderr = std::fs::read_to_string(t.stderr_log()).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!pid_exists(qemu.0), "QEMU {} was reaped", qemu.0);
    assert_clean(tmp.path());
    let r = report(out.path());
    assert_eq!(r["complete"], false);
    assert!(!out.path().join("crashtest.prom").exists());
}

/// A tmpfs mounted for one test, unmounted on drop (also when the test panics).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let (status, _, stderr) = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir));
        assert!(
            status.success(),
            "this test mounts a small tmpfs to fill it up and needs root (as `make test` runs): {stderr}"
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The image dir fills up mid-run (the host's power-loss simulation cannot persist a flush, or
/// the ack log cannot grow): one line naming the directory, QEMU reaped, the NBD server gone,
/// kvmio's files removed.
#[test]
fn an_image_dir_that_fills_up_mid_run_stops_with_one_line() {
    let t = booting();
    let (out, tmp) = (&t.out, &t.tmp);
    let mnt = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(mnt.path(), "40M");
    // Booted: a saved guest (~70 MB) would not fit the 40 MB file system.
    let mut cmd = t.matrix(
        ["writeback", "power", "fdatasync", "raw"],
        &["--window-ms", "60000", "--boot", "always", "--image-dir"],
    );
    cmd.arg(mnt.path());
    let (mut child, qemu) = t.start_until_qemu(cmd);
    std::thread::sleep(Duration::from_secs(6));
    // Fill the file system: every later flush of the guest, or ack log write, hits ENOSPC.
    let filler = mnt.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0xa5u8; 1 << 16];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let status = child
        .wait_timeout(Duration::from_secs(120))
        .expect("the run stops once the image dir is full");
    let stderr = std::fs::read_to_string(t.stderr_log()).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("ran out of space")
            && errors[0].contains(&*mnt.path().to_string_lossy()),
        "{stderr}"
    );
    assert!(!pid_exists(qemu.0), "QEMU {} was reaped", qemu.0);
    std::fs::remove_file(&filler).unwrap();
    let left = files_in(mnt.path());
    assert!(left.is_empty(), "left in the image dir: {left:?}");
    drop(fs);
    assert_clean(tmp.path());
    assert_eq!(report(out.path())["complete"], false);
}

/// Runs `run` with bad input: it must fail with a one-line message holding `hint`, start no
/// QEMU and leave nothing behind.
fn assert_rejected(extra: &[&str], hint: &str) {
    let (out, tmp) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut cmd = run_command(out.path(), tmp.path(), extra);
    assert_rejected_in_one_line(&mut cmd, &extra, hint);
    assert_clean(tmp.path());
}

#[test]
fn bad_input_fails_with_one_line_that_says_what_to_do() {
    guest_image();
    assert_rejected(
        &["--cache", "none,fast"],
        "none, writeback, writethrough, directsync, unsafe",
    );
    assert_rejected(
        &["--fault", "reboot"],
        "kill, power, power-subset, power-torn, power-nbd",
    );
    assert_rejected(&["--sync", "fsync"], "fdatasync, dsync or none");
    assert_rejected(&["--format", "vmdk"], "raw or qcow2");
    assert_rejected(
        &["--fault", "kill", "--torn"],
        "add power or power-nbd to --fault",
    );
    assert_rejected(&["--window-ms", "500..100"], "MIN must not exceed MAX");
    assert_rejected(&["--record-size", "1000"], "multiple of 512");
    assert_rejected(&["--parallel", "0"], "--parallel");
    assert_rejected(&["--iterations", "0"], "--iterations");
    assert_rejected(&["--boot", "sometimes"], "always or auto");
    // An image dir under /proc (nothing can be created there, even by root), and one so full
    // for this matrix (64 parallel 1 TiB disks) that no machine has the space.
    assert_rejected(&["--image-dir", "/proc/kvmio-not-writable"], "--image-dir");
    assert_rejected(
        &["--disk-size", "1048576", "--parallel", "64"],
        "lower --disk-size or --parallel",
    );
    let (out, tmp) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut cmd = Command::new(workspace_bin("kvmio-crashtest"));
    cmd.args(["run", "--out", "/proc/kvmio-not-writable"])
        .env("TMPDIR", tmp.path());
    let (status, _, stderr) = run(&mut cmd);
    assert!(!status.success());
    assert!(
        stderr.lines().next().unwrap_or_default().contains("--out"),
        "{stderr}"
    );
    drop(out);

    // verify: a missing ack log, and a file that is not one.
    let mut cmd = verify_command(
        Path::new("/nonexistent.raw"),
        Path::new("/nonexistent.acks"),
    );
    let (status, _, stderr) = run(&mut cmd);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("cannot read /nonexistent.acks"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("x.acks");
    std::fs::write(&bogus, "hello\n").unwrap();
    let mut cmd = verify_command(Path::new("/etc/hostname"), &bogus);
    let (status, _, stderr) = run(&mut cmd);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("not a kvmio ack log"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// The rewriting raw workloads (raw-overwrite, raw-discard)
// ---------------------------------------------------------------------------------------------

/// The honest stack rewriting slots and discarding ranges, over several seeds (two iterations
/// of eight cells, the FUSE host tearing its unflushed writes): no VIOLATION, every promised
/// cell ok, and the writer really rewrote slots (more acks than the region has slots).
#[test]
fn the_rewriting_workloads_give_no_violation_over_several_seeds() {
    let t = booting();
    let (out, tmp) = (&t.out, &t.tmp);
    let cmd = t.matrix(
        ["none,writethrough", "kill,power-torn", "fdatasync", "raw"],
        &[
            "--workload",
            "raw-overwrite,raw-discard",
            "--iterations",
            "2",
        ],
    );
    run_expecting(cmd, 0);
    let r = report(out.path());
    assert_eq!(r["violations"], 0);
    for cache in ["none", "writethrough"] {
        for fault in ["kill", "power-torn"] {
            for workload in ["raw-overwrite", "raw-discard"] {
                let c = workload_cell(&r, [cache, fault, "fdatasync", "raw"], workload);
                assert_eq!(c["verdict"], "ok", "{c}");
                assert_eq!(c["iterations"], 2, "{c}");
                let region = kvmio_guest::record::REGION_SLOTS;
                assert!(u(&c["acked"]) > 2 * region, "too few rewrites to test: {c}");
                for it in c["results"].as_array().unwrap() {
                    // The guest's disk takes discards under both workloads (the virtio-blk
                    // feature); only raw-discard's drive passes them down (discard=unmap).
                    assert!(u(&it["guest_check"]["discard_max_bytes"]) > 0, "{it}");
                }
            }
        }
    }
    let prom = std::fs::read_to_string(out.path().join("crashtest.prom")).unwrap();
    assert!(prom.contains(
        "kvmio_crashtest_violations{cache_mode=\"none\",fault=\"power-torn\",sync=\"fdatasync\",format=\"raw\",workload=\"raw-discard\"} 0"
    ), "{prom}");
    assert_clean(tmp.path());
}

/// A rewriting writer that acks before its flush: the acked versions (and write-zeroes) sit in
/// the host's volatile cache at the power loss, and the checker says VIOLATION.
#[test]
fn a_rewriting_writer_that_acks_before_its_flush_is_a_violation() {
    let t = booting();
    let (out, tmp) = (&t.out, &t.tmp);
    let cmd = t.matrix(
        ["writeback", "power", "fdatasync", "raw"],
        &["--workload", "raw-overwrite,raw-discard", "--ack-early"],
    );
    run_expecting(cmd, EXIT_VIOLATION);
    let r = report(out.path());
    for workload in ["raw-overwrite", "raw-discard"] {
        let c = workload_cell(&r, ["writeback", "power", "fdatasync", "raw"], workload);
        assert_eq!(c["verdict"], "VIOLATION", "{c}");
        assert!(u(&c["lost_acked"]) > 0, "{c}");
    }
    assert_clean(tmp.path());
}

/// Kept raw-overwrite and raw-discard images verify; an older version written back over an
/// acknowledged newer one, and data written back over an acknowledged write-zeroes, make
/// `verify` say VIOLATION. The records are rebuilt with the writer's own code from the ack
/// log's seeds and written into the surviving image.
#[test]
fn an_old_version_put_back_in_a_kept_image_is_a_violation() {
    use kvmio_crashtest::acklog::AckLog;
    use kvmio_guest::record::Op;
    use std::os::unix::fs::FileExt;

    let t = booting();
    let tmp = &t.tmp;
    let (_images, r) = t.run_kept(
        ["none", "kill", "fdatasync", "raw"],
        &["--workload", "raw-overwrite,raw-discard"],
    );
    for workload in ["raw-overwrite", "raw-discard"] {
        let c = workload_cell(&r, ["none", "kill", "fdatasync", "raw"], workload);
        assert_eq!(c["verdict"], "ok", "{c}");
        let it = &c["results"][0];
        let image = PathBuf::from(it["kept_image"].as_str().expect("kept image"));
        let acks = PathBuf::from(it["kept_acks"].as_str().expect("kept ack log"));
        let (status, stdout, _) = run(&mut verify_command(&image, &acks));
        assert!(status.success(), "{stdout}");

        let log = AckLog::read(&acks).unwrap();
        let spec = log.header.spec().unwrap();
        let slots = log.header.slots();
        let last = log.acks.last().expect("acks").seq;
        let op = |s: u64| spec.op(s, slots);
        let touches = |s: u64, slot: u64| op(s).slots().contains(&slot);
        // The slot and the write to put back: (slot, old write, the acked operation it undoes).
        let damage = (0..=last).rev().find_map(|undone| {
            let slot = op(undone).first_slot();
            if (undone + 1..=last + 8).any(|s| touches(s, slot)) {
                return None; // rewritten since: not the slot's last word
            }
            let undoes = match op(undone) {
                Op::Write { .. } => true,
                Op::Zero { .. } => workload == "raw-discard",
                Op::Discard { .. } => false,
            };
            let old = (0..undone).rev().find(|&s| op(s) == Op::Write { slot })?;
            undoes.then_some((slot, old, undone))
        });
        let (slot, old, undone) = damage.expect("an acked operation over an older write");
        if workload == "raw-discard" {
            assert!(
                log.acks
                    .iter()
                    .any(|a| matches!(op(a.seq), Op::Zero { .. } | Op::Discard { .. })),
                "no discard or write-zeroes acked"
            );
        }
        let mut buf = vec![0u8; spec.size];
        spec.fill_at(old, slot, &mut buf);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        f.write_all_at(&buf, spec.offset(slot)).unwrap();
        let (status, stdout, _) = run(&mut verify_command(&image, &acks));
        assert_eq!(status.code(), Some(EXIT_VIOLATION), "{workload}: {stdout}");
        assert!(
            stdout.contains(&format!(
                "holds version {old}, older than the acked sequence"
            )),
            "{workload} (undoing {undone}): {stdout}"
        );
    }
    assert_clean(tmp.path());
}
