//! `kvmio-claims run --preset smoke` as a user runs it: real TCG guests with the real guest
//! agent, a real kvmio-exporter reading every layer, images on a loop device of the run's own.
//!
//! What it checks is what the experiment stands on: every layer counted the workload's
//! requests (a broken join, label or scrape shows as zeros), the guest really switched
//! scheduler, the fragmented image's requests really split at the host device (the request
//! shape the seed's thin-provisioning claim is about: a count, not a timing), the data, plots
//! and summary are written, and the store is unmounted afterwards.

use std::process::{Command, Stdio};

use kvmio_claims::results;
use kvmio_e2e::{vm_slot, workspace_bin};

#[test]
fn the_smoke_preset_measures_every_layer_and_cleans_up() {
    let _slot = vm_slot();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run = tmp.path().join("run");
    let log = tmp.path().join("claims.log");
    let status = Command::new(workspace_bin("kvmio-claims"))
        .args(["run", "--preset", "smoke", "--accel", "tcg", "--out"])
        .arg(&out)
        .arg("--run-dir")
        .arg(&run)
        .arg("--exporter")
        .arg(workspace_bin("kvmio-exporter"))
        .arg("--guest-bin")
        .arg(workspace_bin("kvmio-guest"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "kvmio-claims failed: {said}");

    let rows = results::read(&out.join("results.json")).unwrap();
    // 2 layouts x 2 schedulers x 2 workloads.
    assert_eq!(rows.len(), 8, "{said}");
    for r in &rows {
        let what = format!("{} {} {} {}", r.layout, r.scheduler, r.workload, r.cache);
        assert!(r.guest_requests > 0.0, "guest layer empty: {what}");
        assert!(r.qemu_requests > 0.0, "QEMU layer empty: {what}");
        assert!(r.host_requests > 0.0, "host layer empty: {what}");
        assert!(r.guest_bytes > 0 && r.throughput_mib_s > 0.0, "{what}");
    }
    let mut schedulers: Vec<_> = rows.iter().map(|r| r.scheduler.as_str()).collect();
    schedulers.dedup();
    assert!(schedulers.contains(&"bfq") && schedulers.contains(&"none"));

    // The fragmented qcow2 splits readahead's 128 KiB requests at 64 KiB clusters below QEMU;
    // the thin one, allocated in order by the sequential write, does not.
    let host_kib = |layout: &str| {
        rows.iter()
            .filter(|r| r.layout == layout && r.workload == "seq-read-buffered")
            .map(|r| r.host_avg_request_kib)
            .fold(f64::NAN, f64::max)
    };
    let (thin, fragmented) = (host_kib("qcow2-thin"), host_kib("qcow2-fragmented"));
    assert!(
        fragmented < 0.75 * thin && fragmented <= 70.0,
        "fragmented {fragmented} KiB vs thin {thin} KiB at the host device"
    );

    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    for id in [
        "claim1-host",
        "claim1-split",
        "claim2-throughput",
        "claim3-cached",
    ] {
        let svg = std::fs::read_to_string(out.join(format!("{id}.svg"))).unwrap();
        assert!(svg.starts_with("<svg"), "{id}");
        assert!(summary.contains(&format!("({id}.svg)")), "{id}");
    }
    assert!(out.join("results.csv").is_file());

    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&run.join("store").display().to_string()),
        "the image store is still mounted"
    );
    assert!(!run.join("store.img").exists());
}
