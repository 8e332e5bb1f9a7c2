//! The QMP and guest-agent collectors' state across scrapes, against the fixture peers
//! (replies captured from QEMU 7.2 and qemu-ga, `tests/common/peer.rs`):
//! - what is asked once per QEMU / agent process (name, PCI, qom facts, node drivers, disks) is
//!   asked once, what is asked every scrape is asked every scrape;
//! - `--qmp.persistent` keeps one connection per socket;
//! - `--qmp.latency-buckets` sets the histograms, then exports them;
//! - a VM whose sockets vanish vanishes from the output;
//! - crash-test results are re-served through the exporter, malformed lines skipped.

mod common;

use std::sync::Arc;

use common::peer;
use kvmio_exporter::collector::Exporter;
use kvmio_exporter::config::{Config, HostDevices};
use kvmio_exporter::Metrics;

fn config(dir: &std::path::Path) -> Config {
    let fixtures = common::fixtures();
    Config {
        host_devices: HostDevices::None,
        procfs: fixtures.join("linux-6.18/proc"),
        sysfs: fixtures.join("linux-6.18/sys"),
        qmp_socket_globs: vec![format!("{}/*.qmp", dir.display())],
        ..Config::default()
    }
}

fn count(cmds: &[String], name: &str) -> usize {
    cmds.iter().filter(|c| *c == name).count()
}

/// The `vm` label of the fixture peers' VM (its QMP `query-name`).
const FIXTURE_VM: &[(&str, &str)] = &[("vm", "kvmio-fixture")];

/// The fixture QMP and agent peers of one VM, `vm1.qmp` and `vm1.qga` in `dir`.
fn vm1_peers(dir: &std::path::Path) -> (peer::Peer, peer::Peer) {
    let qmp = peer::qmp_fixture(&dir.join("vm1.qmp"));
    let qga = peer::qga_fixture(
        &dir.join("vm1.qga"),
        common::fixtures().join("linux-6.18/sys"),
    );
    (qmp, qga)
}

/// Asserts the series `name` with `labels` is exported with the value 1.
#[track_caller]
fn assert_one(m: &Metrics, name: &str, labels: &[(&str, &str)]) {
    assert_eq!(m.value(name, labels), Some(1.0), "{name} {labels:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_process_facts_are_asked_once_and_stats_every_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let (qmp, qga) = vm1_peers(dir.path());
    let exporter = Exporter::with_default_collectors(Arc::new(config(dir.path())));
    for _ in 0..3 {
        let m = exporter.scrape().await;
        assert_one(&m, "kvmio_qmp_up", FIXTURE_VM);
        assert_one(&m, "kvmio_qga_up", FIXTURE_VM);
        assert!(m.rejected().is_empty(), "{:?}", m.rejected());
    }
    let q = qmp.commands();
    assert_eq!(
        count(&q, "qmp_capabilities"),
        3,
        "connect per scrape: {q:?}"
    );
    assert_eq!(count(&q, "query-blockstats"), 3);
    assert_eq!(count(&q, "query-block"), 3);
    assert_eq!(count(&q, "query-name"), 1);
    assert_eq!(count(&q, "query-pci"), 1);
    assert_eq!(count(&q, "query-named-block-nodes"), 1);
    assert_eq!(
        count(&q, "qom-get"),
        15,
        "type, serial, iothread, write-cache and the virtio transport's type of 3 devices"
    );
    let g = qga.commands();
    assert_eq!(count(&g, "guest-sync-delimited"), 3);
    assert_eq!(count(&g, "guest-get-diskstats"), 3);
    assert_eq!(
        count(&g, "guest-get-disks"),
        1,
        "the disk set did not change"
    );
    // vda and loop0 (the whole disks), scheduler and write_cache each, once.
    assert_eq!(count(&g, "guest-file-open"), 4, "{g:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_mode_keeps_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (qmp, qga) = vm1_peers(dir.path());
    let exporter = Exporter::with_default_collectors(Arc::new(Config {
        qmp_persistent: true,
        ..config(dir.path())
    }));
    for _ in 0..3 {
        let m = exporter.scrape().await;
        assert_one(&m, "kvmio_qmp_up", FIXTURE_VM);
        assert_one(&m, "kvmio_qga_up", FIXTURE_VM);
    }
    assert_eq!(count(&qmp.commands(), "qmp_capabilities"), 1);
    assert_eq!(count(&qmp.commands(), "query-blockstats"), 3);
    assert_eq!(count(&qga.commands(), "guest-sync-delimited"), 1);
    assert_eq!(count(&qga.commands(), "guest-get-diskstats"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_histograms_are_set_then_exported() {
    let dir = tempfile::tempdir().unwrap();
    let qmp = peer::qmp_fixture(&dir.path().join("vm1.qmp"));
    // The captured d0 histograms have these boundaries (10 us .. 10 ms).
    let exporter = Exporter::with_default_collectors(Arc::new(Config {
        qmp_latency_buckets: Some(vec![0.00001, 0.0001, 0.001, 0.01]),
        ..config(dir.path())
    }));
    let first = exporter.scrape().await.encode_text();
    assert!(!first.contains("_latency_seconds"), "bins were just reset");
    let sets: Vec<serde_json::Value> = qmp
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r["execute"] == "block-latency-histogram-set")
        .cloned()
        .collect();
    assert_eq!(sets.len(), 3, "one per device model: {sets:?}");
    assert_eq!(
        sets[0]["arguments"],
        serde_json::json!({"id": "/machine/peripheral/vd0/virtio-backend",
                           "boundaries": [10000, 100000, 1000000, 10000000]})
    );
    let second = exporter.scrape().await.encode_text();
    common::promtool_check(&second, "histograms");
    // The capture's one accounted read of d0 took 129 us: the [100 us, 1 ms) bin.
    for line in [
        "kvmio_qemu_block_read_latency_seconds_bucket{vm=\"kvmio-fixture\",device=\"d0\",le=\"0.0001\"} 0",
        "kvmio_qemu_block_read_latency_seconds_bucket{vm=\"kvmio-fixture\",device=\"d0\",le=\"0.001\"} 1",
        "kvmio_qemu_block_read_latency_seconds_bucket{vm=\"kvmio-fixture\",device=\"d0\",le=\"+Inf\"} 1",
        "kvmio_qemu_block_read_latency_seconds_count{vm=\"kvmio-fixture\",device=\"d0\"} 1",
        "kvmio_qemu_block_write_latency_seconds_count{vm=\"kvmio-fixture\",device=\"d0\"} 0",
        "kvmio_qemu_block_flush_latency_seconds_count{vm=\"kvmio-fixture\",device=\"d0\"} 0",
    ] {
        assert!(second.contains(line), "missing {line}\n{second}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_appear_and_vanish_with_their_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let exporter = Exporter::with_default_collectors(Arc::new(config(dir.path())));
    let m = exporter.scrape().await;
    assert!(!m.contains("kvmio_qmp_up"));
    let qmp = peer::qmp_fixture(&dir.path().join("vm1.qmp"));
    let m = exporter.scrape().await;
    assert_one(&m, "kvmio_qmp_up", FIXTURE_VM);
    drop(qmp); // removes the socket
    let m = exporter.scrape().await;
    assert!(!m.contains("kvmio_qmp_up"), "{}", m.encode_text());
    assert_one(&m, "kvmio_collector_success", &[("collector", "qmp")]);
}

#[tokio::test]
async fn crashtest_results_are_reserved_and_validated() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    std::fs::create_dir_all(results.join("run-2")).unwrap();
    let exporter = Exporter::with_default_collectors(Arc::new(Config {
        host_devices: HostDevices::None,
        crashtest_results_dir: Some(results.clone()),
        ..Config::default()
    }));
    // No run yet: nothing served, not an error.
    let m = exporter.scrape().await;
    assert_one(&m, "kvmio_collector_success", &[("collector", "crashtest")]);
    std::fs::write(
        results.join("run-2/crashtest.prom"),
        "# HELP kvmio_crashtest_lost_acked_writes Acked writes lost.\n\
         # TYPE kvmio_crashtest_lost_acked_writes gauge\n\
         kvmio_crashtest_lost_acked_writes{cache_mode=\"unsafe\",fault=\"power\",sync=\"fsync\",format=\"raw\"} 3\n\
         kvmio_crashtest_lost_acked_writes{cache_mode=\"none\",fault=\"power\",sync=\"fsync\",format=\"raw\"} 0\n\
         kvmio_crashtest_lost_acked_writes{cache_mode=\"none\" 0\n\
         kvmio_host_disk_reads_completed_total{device=\"vda\"} 1\n\
         kvmio_crashtest_last_run_timestamp_seconds 1.7e+09\n",
    )
    .unwrap();
    let m = exporter.scrape().await;
    let text = m.encode_text();
    common::promtool_check(&text, "crashtest");
    assert_eq!(
        m.value(
            "kvmio_crashtest_lost_acked_writes",
            &[
                ("cache_mode", "unsafe"),
                ("fault", "power"),
                ("format", "raw"),
                ("sync", "fsync")
            ]
        ),
        Some(3.0)
    );
    assert_eq!(
        m.value("kvmio_crashtest_last_run_timestamp_seconds", &[]),
        Some(1.7e9)
    );
    assert!(
        !text.contains("kvmio_host_disk_reads_completed_total"),
        "only kvmio_crashtest_*"
    );
    assert!(m.rejected().is_empty(), "{:?}", m.rejected());
    // Two parts refused: the collector says so while serving the rest.
    assert_eq!(
        m.value("kvmio_collector_success", &[("collector", "crashtest")]),
        Some(0.0)
    );
    // A newer run's clean file: success again.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(
        results.join("crashtest.prom"),
        "kvmio_crashtest_last_run_timestamp_seconds 1.8e+09\n",
    )
    .unwrap();
    let m = exporter.scrape().await;
    assert_eq!(
        m.value("kvmio_crashtest_last_run_timestamp_seconds", &[]),
        Some(1.8e9)
    );
    assert_one(&m, "kvmio_collector_success", &[("collector", "crashtest")]);
}
