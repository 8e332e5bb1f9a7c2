//! The README's main command: `deploy/demo.sh` boots the lab and serves its metrics, and one
//! Ctrl-C stops everything.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use kvmio_e2e::{
    free_port, guest_image, pid_exists, processes_mentioning, sockets_in, try_http_get, vm_slot,
    wait_for, workspace_bin, ChildProcess, TWO_LAB_VMS,
};
use nix::sys::signal::Signal;

/// `GET path` from the demo's exporter: (status, body), `None` until something answers.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    try_http_get(addr, path, Duration::from_secs(15)).ok()
}

#[test]
fn demo_serves_lab_metrics_and_stops_cleanly() {
    let _slot = vm_slot();
    guest_image();
    let bin_dir = workspace_bin("kvmio-exporter")
        .parent()
        .unwrap()
        .to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo.sh");
    let mut demo = ChildProcess::spawn(
        Command::new("bash")
            .arg(&script)
            .args(TWO_LAB_VMS)
            .arg("--listen")
            .arg(&addr)
            .arg("--run-dir")
            .arg(dir.path())
            .env("KVMIO_BIN", &bin_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let (status, metrics) = wait_for("lab metrics", Duration::from_secs(240), || {
        if let Some(status) = demo.exited() {
            panic!("demo exited early: {status}");
        }
        let (status, body) = get(&addr, "/metrics")?;
        (body.contains("kvmio_qga_up{vm=\"lab-2\"} 1")
            && body.contains("kvmio_qmp_up{vm=\"lab-1\"} 1"))
        .then_some((status, body))
    });
    assert_eq!(status, 200);
    for (vm, mode) in [("lab-1", "none"), ("lab-2", "unsafe")] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("kvmio_qemu_block_info{") && l.contains(&format!("vm=\"{vm}\""))
            })
            .unwrap_or_else(|| panic!("no block info for {vm}"));
        assert!(line.contains(&format!("cache_mode=\"{mode}\"")), "{line}");
    }
    let (_, landing) = get(&addr, "/").unwrap();
    assert!(landing.contains("/metrics"), "landing page links /metrics");

    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("lab.json")).unwrap())
            .unwrap();
    let pids: Vec<u32> = manifest["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["pid"].as_u64().unwrap() as u32)
        .collect();
    // Ctrl-C: the script must end (signal_and_wait panics otherwise) and take both with it.
    demo.signal_and_wait(Signal::SIGINT, Duration::from_secs(60));
    for pid in pids {
        wait_for("QEMU reaped", Duration::from_secs(30), || {
            (!pid_exists(pid)).then_some(())
        });
    }
    wait_for("exporter and lab gone", Duration::from_secs(30), || {
        processes_mentioning(&dir.path().to_string_lossy())
            .is_empty()
            .then_some(())
    });
    assert!(sockets_in(dir.path()).is_empty());
    assert!(get(&addr, "/metrics").is_none(), "exporter stopped");
}
