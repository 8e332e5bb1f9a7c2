//! `kvmio-exporter` against `kvmio-crashtest lab` VMs (TCG guests with the real qemu-ga inside),
//! both as the binaries a user runs.
//!
//! Two VMs, `cache=none` and `cache=unsafe`, each a qcow2 and a raw disk with a steady workload.
//! The exporter's `/metrics`:
//! - has every metric family of the issue, with the expected label names, for every layer;
//! - names each VM's cache mode (`none`, `unsafe`), from the flags and from the command line;
//! - after the guest writes 500 4 KiB O_DIRECT blocks to `vdb` (through the agent's
//!   `guest-exec`), shows both the guest's and QEMU's write counters of that disk up by at least
//!   500, and by about the same amount (the workload writes meanwhile too);
//! - joins the layers: `vdb` <-> `drive-virtio-disk1` <-> the image file <-> the host device
//!   `findmnt` names for it (empty only when the image is not on a local block device).
//!
//! Then the same against `--qmp.persistent`. The lab and the exporters are killed and reaped on
//! every path (and nothing mentioning the run dir is left running).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvmio_e2e::metrics::{
    family, find, host_device_of, http_get, parse, start_exporter, value, Series,
};
use kvmio_e2e::{guest_image, processes_mentioning, start_lab, vm_slot};
use kvmio_exporter::host::diskstats::DISK_METRICS;
use kvmio_qemu::{AgentCommands, GuestAgent, Limits};

/// The in-flight statistics: the guest's and the host's diskstats have them, QEMU's block layer
/// does not.
const IN_FLIGHT_SUFFIXES: &[&str] = &[
    "io_now",
    "io_time_seconds_total",
    "io_time_weighted_seconds_total",
];

async fn guest_write(qga: &Path, count: u32) -> String {
    let limits = Limits::default().with_call_timeout(Duration::from_secs(30));
    let mut agent = GuestAgent::connect(qga, limits)
        .await
        .expect("the lab's agent socket");
    let count = count.to_string();
    let status = agent
        .exec_wait(
            "/bin/kvmio-guest",
            &[
                "write",
                "--dev",
                "/dev/vdb",
                "--count",
                &count,
                "--block-size",
                "4096",
                "--direct",
            ],
            Duration::from_secs(300),
        )
        .await
        .expect("guest-exec of kvmio-guest write");
    let out = String::from_utf8_lossy(&status.out).into_owned();
    assert!(
        status.success(),
        "kvmio-guest write failed: {status:?} {}",
        String::from_utf8_lossy(&status.err)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_against_lab_vms() {
    let _slot = vm_slot();
    guest_image(); // build outside the lab's clock
    let dir = tempfile::Builder::new()
        .prefix("kvmio-e2e-exporter")
        .tempdir()
        .unwrap();
    let run_dir = dir.path().join("run");
    let (mut lab, manifest) = start_lab(&run_dir, 64, &dir.path().join("lab.log"));
    let image_of = |vm: usize, disk: usize| -> PathBuf {
        PathBuf::from(
            manifest["vms"][vm]["disks"][disk]["image"]
                .as_str()
                .unwrap(),
        )
    };

    let (mut exporter, addr) = start_exporter(
        &[
            format!("--qmp.socket-glob={}/*.qmp", run_dir.display()),
            "--qmp.latency-buckets=0.0001,0.001,0.01,0.1,1".to_owned(),
            "--scrape.timeout=8s".to_owned(),
        ],
        &dir.path().join("exporter.log"),
    );
    // The first scrape sets the latency histograms; from the second on they are exported.
    let first = parse(
        &tokio::task::spawn_blocking({
            let addr = addr.clone();
            move || http_get(&addr)
        })
        .await
        .unwrap(),
    );
    let t0 = Instant::now();
    let scrape = |addr: String| async move {
        parse(
            &tokio::task::spawn_blocking(move || http_get(&addr))
                .await
                .unwrap(),
        )
    };
    let before = scrape(addr.clone()).await;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(8), "scrape took {took:?}");
    for m in [&first, &before] {
        for vm in ["lab-1", "lab-2"] {
            assert_eq!(value(m, "kvmio_qmp_up", &[("vm", vm)]), 1.0, "{vm}");
            assert_eq!(value(m, "kvmio_qga_up", &[("vm", vm)]), 1.0, "{vm}");
        }
    }

    // Every family of the issue, with its labels.
    let m = &before;
    // The diskstats statistics the exporter defines (their names are pinned by the golden files).
    for s in DISK_METRICS.iter().map(|d| d.suffix) {
        family(m, &format!("kvmio_guest_disk_{s}"), &["vm", "disk"]);
        family(m, &format!("kvmio_host_disk_{s}"), &["device"]);
        if !IN_FLIGHT_SUFFIXES.contains(&s) {
            family(m, &format!("kvmio_qemu_block_{s}"), &["vm", "device"]);
        }
    }
    for f in ["failed_operations_total", "invalid_operations_total"] {
        family(m, &format!("kvmio_qemu_block_{f}"), &["vm", "device", "op"]);
    }
    for f in ["idle_seconds", "highest_written_offset_bytes"] {
        family(m, &format!("kvmio_qemu_block_{f}"), &["vm", "device"]);
    }
    for f in [
        "highest_written_offset_bytes",
        "discards_completed_total",
        "discarded_bytes_total",
    ] {
        family(
            m,
            &format!("kvmio_qemu_node_{f}"),
            &["vm", "device", "node", "driver"],
        );
    }
    family(
        m,
        "kvmio_qemu_block_info",
        &[
            "vm",
            "device",
            "node",
            "driver",
            "format",
            "file",
            "cache_mode",
            "aio",
            "iothread",
            "detect_zeroes",
            "discard",
            "bus",
        ],
    );
    family(
        m,
        "kvmio_disk_layer_info",
        &["vm", "device", "disk", "image", "host_device"],
    );
    family(
        m,
        "kvmio_guest_disk_queue_info",
        &["vm", "disk", "scheduler", "write_cache"],
    );
    family(m, "kvmio_host_disk_queue_info", &["device", "scheduler"]);
    family(
        m,
        "kvmio_qemu_image_virtual_size_bytes",
        &["vm", "device", "image"],
    );
    family(
        m,
        "kvmio_qemu_image_allocated_bytes",
        &["vm", "device", "image"],
    );
    family(
        m,
        "kvmio_host_image_cached_bytes",
        &["vm", "device", "image"],
    );
    for op in ["read", "write", "flush"] {
        for part in ["bucket", "sum", "count"] {
            let name = format!("kvmio_qemu_block_{op}_latency_seconds_{part}");
            let labels: &[&str] = if part == "bucket" {
                &["vm", "device", "le"]
            } else {
                &["vm", "device"]
            };
            family(m, &name, labels);
        }
    }
    family(m, "kvmio_qmp_up", &["vm"]);
    family(m, "kvmio_qga_up", &["vm"]);
    family(m, "kvmio_qemu_process_written_bytes_total", &["vm"]);
    family(m, "kvmio_collector_duration_seconds", &["collector"]);
    family(m, "kvmio_collector_success", &["collector"]);
    family(
        m,
        "kvmio_exporter_build_info",
        &["version", "rustc_version", "target"],
    );
    for c in ["qmp", "qga", "host_diskstats", "host_image"] {
        assert_eq!(
            value(m, "kvmio_collector_success", &[("collector", c)]),
            1.0,
            "{c}"
        );
    }

    // Cache modes: from the flags (the Linux guest negotiated the write cache) and as configured.
    for (vm, mode) in [("lab-1", "none"), ("lab-2", "unsafe")] {
        for disk in ["drive-virtio-disk0", "drive-virtio-disk1"] {
            let labels = [("vm", vm), ("device", disk)];
            let info = find(m, "kvmio_qemu_block_info", &labels).expect("block info");
            assert_eq!(info.labels["cache_mode"], mode, "{vm} {disk}");
            assert_eq!(info.labels["bus"], "virtio");
            assert_eq!(info.labels["driver"], "file");
            assert_eq!(info.labels["aio"], "threads");
            let cache = find(m, "kvmio_qemu_block_cache_info", &labels).expect("cache info");
            assert_eq!(cache.labels["configured_cache_mode"], mode);
            assert_eq!(cache.labels["guest_write_cache"], "on");
        }
        let q = find(
            m,
            "kvmio_guest_disk_queue_info",
            &[("vm", vm), ("disk", "vdb")],
        )
        .expect("guest queue info");
        assert_eq!(
            q.labels["write_cache"], "write back",
            "{vm}: the guest sees a volatile cache"
        );
        assert!(!q.labels["scheduler"].is_empty());
    }
    let formats: Vec<&str> = ["drive-virtio-disk0", "drive-virtio-disk1"]
        .iter()
        .map(|d| {
            find(
                m,
                "kvmio_qemu_block_info",
                &[("vm", "lab-1"), ("device", d)],
            )
            .unwrap()
            .labels["format"]
                .as_str()
        })
        .collect();
    assert_eq!(formats, vec!["qcow2", "raw"]);

    // The join, for both disks of both VMs.
    for (vi, vm) in ["lab-1", "lab-2"].into_iter().enumerate() {
        for (di, (device, disk)) in [("drive-virtio-disk0", "vda"), ("drive-virtio-disk1", "vdb")]
            .into_iter()
            .enumerate()
        {
            let image = image_of(vi, di);
            let layer = find(
                m,
                "kvmio_disk_layer_info",
                &[("vm", vm), ("device", device)],
            )
            .expect("layer info");
            assert_eq!(layer.labels["disk"], disk, "{vm} {device}");
            assert_eq!(
                layer.labels["image"],
                image.to_string_lossy(),
                "{vm} {device}"
            );
            match host_device_of(&image) {
                Some(dev) => {
                    assert_eq!(layer.labels["host_device"], dev, "{vm} {device}");
                    // --host.devices=backing: that device's host stats are exported.
                    value(
                        m,
                        "kvmio_host_disk_writes_completed_total",
                        &[("device", &dev)],
                    );
                }
                // Documented: an image on tmpfs, NFS, overlayfs... has no host block device.
                None => assert_eq!(layer.labels["host_device"], "", "{vm} {device}"),
            }
        }
    }

    // 500 O_DIRECT 4 KiB writes in lab-1's guest, on vdb.
    // How much each counter rose between two scrapes.
    let rose = |before: &[Series], after: &[Series], name: &str| {
        let labels = if name.starts_with("kvmio_guest_") {
            [("vm", "lab-1"), ("disk", "vdb")]
        } else {
            [("vm", "lab-1"), ("device", "drive-virtio-disk1")]
        };
        value(after, name, &labels) - value(before, name, &labels)
    };
    let out = guest_write(&run_dir.join("lab-1.qga"), 500).await;
    assert!(
        out.contains("\"writes\":500"),
        "kvmio-guest write reported: {out}"
    );
    let after = scrape(addr.clone()).await;
    let dg = rose(&before, &after, "kvmio_guest_disk_writes_completed_total");
    let dq = rose(&before, &after, "kvmio_qemu_block_writes_completed_total");
    eprintln!("writes during the test: guest +{dg}, QEMU +{dq}");
    assert!(dg >= 500.0, "guest write counter rose by {dg}");
    assert!(dq >= 500.0, "QEMU write counter rose by {dq}");
    // Same requests seen at two layers, counted a few milliseconds apart.
    assert!(
        (dg - dq).abs() <= 0.1 * dg + 20.0,
        "guest +{dg} vs QEMU +{dq}"
    );
    assert!(rose(&before, &after, "kvmio_qemu_block_written_bytes_total") >= 500.0 * 4096.0);
    assert!(
        rose(
            &before,
            &after,
            "kvmio_qemu_block_write_latency_seconds_count"
        ) >= 500.0
    );
    exporter.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(15));

    // --qmp.persistent: the same VMs through pooled connections, scraped twice.
    let (mut persistent, addr) = start_exporter(
        &[
            format!("--qmp.socket-glob={}/*.qmp", run_dir.display()),
            "--qmp.persistent".to_owned(),
        ],
        &dir.path().join("exporter-persistent.log"),
    );
    for _ in 0..2 {
        let m = scrape(addr.clone()).await;
        for vm in ["lab-1", "lab-2"] {
            assert_eq!(value(&m, "kvmio_qmp_up", &[("vm", vm)]), 1.0);
            assert_eq!(value(&m, "kvmio_qga_up", &[("vm", vm)]), 1.0);
            let layer = find(
                &m,
                "kvmio_disk_layer_info",
                &[("vm", vm), ("device", "drive-virtio-disk1")],
            )
            .unwrap();
            assert_eq!(layer.labels["disk"], "vdb");
        }
    }
    persistent.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(15));

    let status = lab.signal_and_wait(nix::sys::signal::Signal::SIGINT, Duration::from_secs(60));
    assert!(status.success(), "lab stops cleanly: {status}");
    let left = processes_mentioning(&run_dir.to_string_lossy());
    assert!(left.is_empty(), "left running: {left:?}");
}
