//! The file workloads of `kvmio-crashtest` (ext4 in the guest) against real QEMU (TCG), kvmio's
//! volatile FUSE host (`power`), and real loop mounts on the host for verification.
//!
//! * The checker can fail: an application that acks before its fsync, an acked file truncated
//!   after its ack, and an older version put back over an acked newer one (both done for real
//!   on a loop mount of a kept image) each give VIOLATION and exit status 3.
//! * It does not cry wolf: the honest stack (ext4 with barriers, append / replace / overwrite,
//!   kill and power) gives no VIOLATION over several seeds, and every acked file is found.
//!
//! Small disks (ext4 needs 16 MiB), short windows, few iterations: about three minutes on two
//! cores. The matrix, the barrier=0 demonstration and xfs are measured in BENCHMARKS.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kvmio_crashtest::acklog::AckLog;
use kvmio_crashtest::fscheck::{expected_versions, LoopMount};
use kvmio_e2e::{guest_image, vm_slot, workspace_bin, ChildProcess, VmSlot};
use serde_json::Value;

const VIOLATION: i32 = 3;
const LIMIT: Duration = Duration::from_secs(900);

/// Runs `kvmio-crashtest ARGS` to the end (bounded) with TMPDIR in `tmp`; its exit code and
/// everything it printed.
fn crashtest(tmp: &Path, args: &[&str]) -> (i32, String) {
    let log = tmp.join("crashtest.log");
    let mut cmd = Command::new(workspace_bin("kvmio-crashtest"));
    cmd.args(args)
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(tmp.join("crashtest.err")).unwrap());
    let status = ChildProcess::spawn(&mut cmd)
        .wait_timeout(LIMIT)
        .unwrap_or_else(|| panic!("{args:?} did not finish within {LIMIT:?}"));
    let text = std::fs::read_to_string(&log).unwrap()
        + &std::fs::read_to_string(tmp.join("crashtest.err")).unwrap();
    (status.code().unwrap_or(-1), text)
}

/// A VM-booting test: the VM slot, the guest image built, its TMPDIR and report dir.
struct Booted {
    _slot: VmSlot,
    tmp: tempfile::TempDir,
    out: tempfile::TempDir,
}

fn booted() -> Booted {
    let _slot = vm_slot();
    guest_image();
    Booted {
        _slot,
        tmp: tempfile::tempdir().unwrap(),
        out: tempfile::tempdir().unwrap(),
    }
}

impl Booted {
    fn tmp(&self) -> &Path {
        self.tmp.path()
    }

    /// `run` under cache=none (raw images, 32 MiB disks) with `extra` (workloads, faults,
    /// iterations...): exit code, output, report.json.
    fn run(&self, extra: &[&str]) -> (i32, String, Value) {
        let out = self.out.path().to_str().unwrap();
        let mut args = vec![
            "run",
            "--accel",
            "tcg",
            "--cache",
            "none",
            "--format",
            "raw",
            "--disk-size",
            "32",
            "--window-ms",
            "300..900",
            "--seed",
            "20261129",
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        let (code, text) = crashtest(self.tmp(), &args);
        let report = std::fs::read_to_string(self.out.path().join("report.json"))
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap_or(Value::Null);
        (code, text, report)
    }
}

/// Every iteration of every cell, with its cell.
fn iterations(report: &Value) -> Vec<(&Value, &Value)> {
    report["cells"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["results"].as_array().unwrap().iter().map(move |r| (c, r)))
        .collect()
}

/// (d) The honest stack: ext4 with barriers promises every fsync'd file under kill and power
/// (cache=none), and over two seeds per cell no file is lost or damaged, and fsck is clean
/// after the journal replay.
#[test]
fn the_honest_ext4_stack_keeps_every_acked_file() {
    let vm = booted();
    let workloads = "--workload=ext4-append,ext4-replace,ext4-overwrite";
    let (code, text, r) = vm.run(&[workloads, "--fault=kill,power", "--iterations=2"]);
    assert_eq!(code, 0, "{text}");
    let its = iterations(&r);
    assert_eq!(its.len(), 12, "{text}");
    for (cell, it) in its {
        assert_eq!(cell["promised"], true, "{cell}");
        assert_eq!(it["verdict"], "ok", "{cell} {it}");
        assert!(it["acked"].as_u64().unwrap() >= 1, "{it}");
        assert_eq!(it["acked"], it["survived"], "{it}");
        let fsck = it["image_check"].as_str().unwrap();
        assert!(fsck.contains("after replay: e2fsck -fn: exit 0"), "{fsck}");
    }
    assert!(text.contains("ext4-replace"), "{text}");
}

/// (a) An application that acks before its fsync: its files are still in the guest's page
/// cache at the fault, so acked files are missing where survival was promised.
#[test]
fn an_application_that_acks_before_fsync_is_a_violation() {
    let vm = booted();
    let early = [
        "--workload=ext4-append",
        "--fault=power",
        "--iterations=1",
        "--ack-early",
    ];
    let (code, text, r) = vm.run(&early);
    assert_eq!(code, VIOLATION, "{text}");
    let (_, it) = iterations(&r)[0];
    assert_eq!(it["verdict"], "VIOLATION", "{it}");
    assert!(
        it["lost"].as_u64().unwrap() + it["corrupted"].as_u64().unwrap() > 0,
        "{it}"
    );
}

/// The kept image and ack log of one honest iteration of `workload` (cache=none, kill).
fn kept_iteration(vm: &Booted, workload: &str) -> (PathBuf, PathBuf, AckLog) {
    let (code, text, r) = vm.run(&[
        &format!("--workload={workload}"),
        "--fault=kill",
        "--iterations=1",
        "--keep-images",
    ]);
    assert_eq!(code, 0, "{text}");
    let (_, it) = iterations(&r)[0];
    assert_eq!(it["verdict"], "ok", "{it}");
    let path = |k: &str| PathBuf::from(it[k].as_str().unwrap());
    let (image, acks) = (path("kept_image"), path("kept_acks"));
    let log = AckLog::read(&acks).unwrap();
    (image, acks, log)
}

/// `kvmio-crashtest verify` of a kept image: exit code and output.
fn verify(tmp: &Path, image: &Path, acks: &Path) -> (i32, String) {
    crashtest(
        tmp,
        &[
            "verify",
            "--image",
            image.to_str().unwrap(),
            "--acks",
            acks.to_str().unwrap(),
        ],
    )
}

/// Mounts kvmio's kept `image` of `log`'s iteration on a loop device (the journal replays),
/// lets `f` change its files, unmounts and detaches.
fn on_loop_mount(image: &Path, log: &AckLog, scratch: &Path, f: impl FnOnce(&Path)) {
    let fs = log.header.cell.workload.fs().unwrap().fs;
    let mut lm = LoopMount::attach(image).unwrap();
    lm.mount(fs, scratch).unwrap().unwrap();
    f(lm.path().unwrap());
    lm.release();
}

/// (b) A file truncated after its ack, for real: the kept image of an honest run verifies ok;
/// after a loop mount truncates its last acked file by one byte, the same verify says
/// VIOLATION.
#[test]
fn an_acked_file_truncated_after_its_ack_is_a_violation() {
    let vm = booted();
    let (image, acks, log) = kept_iteration(&vm, "ext4-append");
    let (code, text) = verify(vm.tmp(), &image, &acks);
    assert_eq!(code, 0, "{text}");
    let last = log.file_acks.last().unwrap().clone();
    on_loop_mount(&image, &log, vm.tmp(), |root| {
        let f = std::fs::File::options()
            .write(true)
            .open(root.join(&last.name))
            .unwrap();
        f.set_len(last.len - 1).unwrap();
    });
    let (code, text) = verify(vm.tmp(), &image, &acks);
    assert_eq!(code, VIOLATION, "{text}");
    assert!(text.contains(&last.name), "{text}");
}

/// (c) An older version put back over an acknowledged newer one (in-place overwrites), for
/// real on a loop mount: VIOLATION, and the checker names the older version.
#[test]
fn an_old_version_put_back_over_an_acked_newer_one_is_a_violation() {
    let vm = booted();
    let (image, acks, log) = kept_iteration(&vm, "ext4-overwrite");
    let fs = log.header.cell.workload.fs().unwrap();
    // The file with the most acked versions, and its last acked version.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for a in &log.file_acks {
        let v = last.entry(a.name.clone()).or_default();
        *v = (*v).max(a.version);
    }
    let (name, version) = last.iter().max_by_key(|(_, v)| **v).unwrap();
    assert!(
        *version >= 2,
        "no file was overwritten before the fault: {last:?}"
    );
    let index: u32 = name.trim_start_matches('f').parse().unwrap();
    let versions = expected_versions(
        fs.op,
        log.header.payload_seed,
        &BTreeMap::from([(index, *version)]),
    );
    let older = &versions[&index][&(version - 1)];
    on_loop_mount(&image, &log, vm.tmp(), |root| {
        std::fs::write(root.join(name), older).unwrap();
    });
    let (code, text) = verify(vm.tmp(), &image, &acks);
    assert_eq!(code, VIOLATION, "{text}");
    assert!(text.contains("holds the older version"), "{text}");
}
