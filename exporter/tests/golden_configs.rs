//! Golden test of the QMP collector over the monitor sessions recorded from the real QEMU 7.2
//! VMs of `tests/qemu_configs.rs` (`tests/fixtures/qemu-7.2-configs`: 14 disk configurations
//! in a prelaunch q35 VM, a paused VM, a VM stopped on an I/O error), replayed by test peers
//! (`common::peer::qmp_replay`). Compared: the QMP collector's own families (`kvmio_qemu_*`,
//! `kvmio_vm_state_info`, `kvmio_disk_layer_info`, `kvmio_qmp_up`), which depend on nothing but
//! the replies (no command line is read: the peer is not a QEMU process, so `aio` and `discard`
//! are empty here; the live test checks them). promtool checks the whole output.
//!
//! `UPDATE_GOLDEN=1 cargo test -p kvmio-exporter --test golden_configs` rewrites the expected
//! file; review the diff before committing it.

mod common;

use std::sync::Arc;

use common::peer;
use kvmio_exporter::collector::Exporter;
use kvmio_exporter::config::{Config, HostDevices};

/// The lines of the families this test compares.
fn qmp_families(text: &str) -> String {
    let ours = |name: &str| {
        (name.starts_with("kvmio_qemu_") && !name.starts_with("kvmio_qemu_process_"))
            || name == "kvmio_vm_state_info"
            || name == "kvmio_disk_layer_info"
            || name == "kvmio_qmp_up"
    };
    let mut out = String::new();
    for line in text.lines() {
        let name = match line
            .strip_prefix("# HELP ")
            .or(line.strip_prefix("# TYPE "))
        {
            Some(rest) => rest.split(' ').next().unwrap_or(""),
            None => line.split(['{', ' ']).next().unwrap_or(""),
        };
        if ours(name) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_qemu_7_2_configurations() {
    let fixtures = common::fixtures().join("qemu-7.2-configs");
    let dir = tempfile::tempdir().unwrap();
    let _peers: Vec<peer::Peer> = ["cfg", "stopped", "ioerr"]
        .iter()
        .map(|n| {
            peer::qmp_replay(
                &dir.path().join(format!("{n}.qmp")),
                &fixtures.join(format!("{n}.json")),
            )
        })
        .collect();
    let config = Config {
        host_devices: HostDevices::None,
        procfs: common::fixtures().join("linux-6.18/proc"),
        sysfs: common::fixtures().join("linux-6.18/sys"),
        qmp_socket_globs: vec![format!("{}/*.qmp", dir.path().display())],
        ..Config::default()
    };
    let m = Exporter::with_default_collectors(Arc::new(config))
        .scrape()
        .await;
    assert!(m.rejected().is_empty(), "{:?}", m.rejected());
    let raw = m.encode_text();
    common::promtool_check(&raw, "qemu-7.2-configs");
    kvmio_test_support::metrics::parse(&raw);
    let got = qmp_families(&raw);
    common::assert_golden("qemu-7.2-configs.prom", &got, "golden_configs");
}
