//! Golden-file test of the whole `/metrics` output over the fixture trees
//! (tests/fixtures/README.md): the host collectors alone, one expected file per /proc/diskstats
//! format; and every collector together (`qemu-7.2.prom`), with a VM whose monitor and guest
//! agent are test peers replaying the replies captured from QEMU 7.2 and its qemu-ga
//! (`qemu/tests/fixtures`, `tests/fixtures/qemu-7.2`; see `tests/common/peer.rs`).
//!
//! `UPDATE_GOLDEN=1 cargo test -p kvmio-exporter --test golden` rewrites the expected files;
//! review the diff before committing it.
//!
//! Normalised before comparing (they vary from run to run or build to build, not with the
//! fixtures): the values of `kvmio_collector_duration_seconds`, the `rustc_version` and
//! `target` labels of `kvmio_exporter_build_info`, and the `socket` label of `kvmio_vm_info`. promtool checks the raw output.

mod common;

use std::sync::Arc;

use kvmio_exporter::collector::Exporter;
use kvmio_exporter::config::{Config, HostDevices};

fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with("kvmio_collector_duration_seconds{") {
            let (series, _value) = line.rsplit_once(' ').expect("sample line");
            out.push_str(series);
            out.push_str(" 0");
        } else if line.starts_with("kvmio_vm_info{") {
            // The fixture VM's monitor is in a temporary directory.
            out.push_str(&normalise_label(line, "socket", "SOCKET"));
        } else if line.starts_with("kvmio_exporter_build_info{") {
            out.push_str(&normalise_label(
                &normalise_label(line, "rustc_version", "RUSTC"),
                "target",
                "TARGET",
            ));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn normalise_label(line: &str, label: &str, with: &str) -> String {
    let start = format!("{label}=\"");
    let Some(i) = line.find(&start) else {
        return line.to_owned();
    };
    let value_start = i + start.len();
    let value_end = value_start + line[value_start..].find('"').expect("closing quote");
    format!("{}{with}{}", &line[..value_start], &line[value_end..])
}

async fn check(variant: &str) {
    let fixtures = common::fixtures();
    let config = Config {
        host_devices: HostDevices::All,
        procfs: fixtures.join(variant).join("proc"),
        sysfs: fixtures.join("linux-6.18/sys"),
        fail_on_duplicate_series: true,
        ..Config::default()
    };
    compare(variant, config).await;
}

/// Renders one scrape with `config` and compares it with `tests/golden/{variant}.prom`.
async fn compare(variant: &str, config: Config) {
    let exporter = Exporter::with_default_collectors(Arc::new(config));
    let raw = exporter
        .render_checked()
        .await
        .expect("a scrape without duplicate series");
    common::promtool_check(&raw, variant);
    let got = normalise(&raw);

    common::assert_golden(&format!("{variant}.prom"), &got, "golden");
}

#[tokio::test]
async fn golden_linux_6_18_20_fields() {
    check("linux-6.18").await;
}

#[tokio::test]
async fn golden_derived_18_fields() {
    check("derived-18fields").await;
}

#[tokio::test]
async fn golden_derived_14_fields_and_legacy_partition() {
    check("derived-14fields").await;
}

/// The whole exporter: host collectors over linux-6.18, and one VM whose QMP monitor and guest
/// agent replay the QEMU 7.2 captures (its images have relative paths, as captured, so they
/// resolve to no host device; the agent's disks are the capturing host's, which is why no
/// guest disk joins a QEMU device here: the join is tested in `vm::join` and end to end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_qemu_7_2_vm_with_agent() {
    let fixtures = common::fixtures();
    let dir = tempfile::tempdir().unwrap();
    let qmp = common::peer::qmp_fixture(&dir.path().join("vm1.qmp"));
    let qga =
        common::peer::qga_fixture(&dir.path().join("vm1.qga"), fixtures.join("linux-6.18/sys"));
    let config = Config {
        host_devices: HostDevices::All,
        procfs: fixtures.join("linux-6.18/proc"),
        sysfs: fixtures.join("linux-6.18/sys"),
        qmp_socket_globs: vec![format!("{}/*.qmp", dir.path().display())],
        ..Config::default()
    };
    compare("qemu-7.2", config).await;
    // What the exporter asked: the scrape's queries, the once-per-process ones, and the
    // guest's queue settings through guest-file-*.
    let asked = qmp.commands();
    for cmd in [
        "query-name",
        "query-blockstats",
        "query-block",
        "query-pci",
        "qom-get",
        "query-named-block-nodes",
    ] {
        assert!(asked.iter().any(|c| c == cmd), "{cmd} not asked: {asked:?}");
    }
    assert!(qga.commands().iter().any(|c| c == "guest-file-read"));
}

#[test]
fn normalisation_only_touches_volatile_parts() {
    let text = "kvmio_collector_duration_seconds{collector=\"x\"} 0.00123\n\
                kvmio_exporter_build_info{version=\"0.1.0\",rustc_version=\"1.95.0\",target=\"x86_64-unknown-linux-gnu\"} 1\n\
                kvmio_host_disk_io_now{device=\"vda\"} 3\n";
    assert_eq!(
        normalise(text),
        "kvmio_collector_duration_seconds{collector=\"x\"} 0\n\
         kvmio_exporter_build_info{version=\"0.1.0\",rustc_version=\"RUSTC\",target=\"TARGET\"} 1\n\
         kvmio_host_disk_io_now{device=\"vda\"} 3\n"
    );
}
