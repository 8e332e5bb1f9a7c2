//! `Qmp` against a real QEMU (`qemu-system-x86_64`): no guest runs, the monitor and the block
//! layer are real.

mod common;

use std::time::Duration;

use common::{
    assert_times_out_while_stopped, binaries, limits, start_qemu_none, start_qemu_q35, ChildGuard,
};
use kvmio_qemu::types::flatten_pci;
use kvmio_qemu::{CacheMode, Error, Limits, Qmp, QmpCommands};

#[tokio::test]
async fn query_block_cache_flags_name_each_cache_mode() {
    let ids: Vec<(String, CacheMode)> = CacheMode::ALL
        .into_iter()
        .map(|m| (format!("d-{m}"), m))
        .collect();
    let drives: Vec<(&str, &str)> = ids
        .iter()
        .map(|(id, m)| (id.as_str(), m.as_str()))
        .collect();
    let mut vm = start_qemu_none(&drives, &[], limits()).await;
    let qmp = &mut vm.qmp;

    let blocks = qmp.query_block().await.unwrap();
    assert_eq!(blocks.len(), CacheMode::ALL.len(), "{blocks:?}");
    for (id, mode) in &ids {
        let block = blocks.iter().find(|b| &b.device == id).expect(id);
        let inserted = block.inserted.as_ref().expect("medium inserted");
        assert_eq!(inserted.cache, Some(mode.flags()), "{id}");
        assert_eq!(block.cache_mode(), Some(*mode), "{id}");
        assert_eq!(inserted.drv, "qcow2");
        let image = inserted.image.as_ref().expect("image info");
        assert_eq!(image.format, "qcow2");
        assert_eq!(image.virtual_size, 64 << 20);
    }
}

#[tokio::test]
async fn blockstats_have_the_protocol_parent_and_track_writes() {
    let mut vm = start_qemu_none(&[("d0", "writeback")], &[], limits()).await;
    let qmp = &mut vm.qmp;

    // HMP's qemu-io writes through the block layer without a guest. (QEMU prints its output on
    // stdout, not in the reply, and device-level accounting does not count it; the nodes'
    // highest written offsets do move.)
    for cmd in ["write -P 0xab 0 1M", "read 0 64k", "flush"] {
        qmp.human_monitor_command(&format!("qemu-io d0 \"{cmd}\""))
            .await
            .unwrap();
    }

    let stats = qmp.query_blockstats().await.unwrap();
    let d0 = stats
        .iter()
        .find(|s| s.device.as_deref() == Some("d0"))
        .expect("d0 stats");
    assert!(d0.stats.wr_highest_offset >= 1 << 20, "{:?}", d0.stats);
    assert!(d0.stats.account_failed && d0.stats.account_invalid);
    assert!(d0.node_name.is_some());

    // qcow2 sits on a `file` protocol node, reported as `parent`: its highest offset includes
    // qcow2 metadata, so it is past the guest-visible one.
    let parent = d0.parent.as_ref().expect("protocol node stats");
    assert!(parent.node_name.is_some() && parent.node_name != d0.node_name);
    assert!(
        parent.stats.wr_highest_offset > d0.stats.wr_highest_offset,
        "{:?}",
        parent.stats
    );
    let driver = parent
        .driver_specific
        .as_ref()
        .and_then(|d| d.get("driver"));
    assert_eq!(driver.and_then(|d| d.as_str()), Some("file"));
    assert!(d0.backing.is_none());

    // query-nodes: every named node, the format and the protocol node.
    let nodes = qmp.query_blockstats_with(true).await.unwrap();
    assert!(nodes.len() >= 2, "{nodes:?}");
    let named = qmp.query_named_block_nodes().await.unwrap();
    let drivers: Vec<&str> = named.iter().map(|n| n.drv.as_str()).collect();
    assert!(
        drivers.contains(&"qcow2") && drivers.contains(&"file"),
        "{drivers:?}"
    );
}

#[tokio::test]
async fn latency_histograms_are_set_and_cleared_on_a_guest_device() {
    // Latency histograms are set by guest device: this needs a machine with a device.
    let mut vm = start_qemu_q35("writeback").await;
    let qmp = &mut vm.qmp;

    // The id is the device that holds the backend: for virtio-blk-pci that is not `vd0` but
    // its inner virtio device, whose QOM path query-block reports as `qdev`.
    let blocks = qmp.query_block().await.unwrap();
    let qdev = blocks[0].qdev.clone().expect("d0 is attached to a device");
    assert_eq!(qdev, "/machine/peripheral/vd0/virtio-backend");
    let err = qmp
        .block_latency_histogram_set("vd0", &[1000])
        .await
        .unwrap_err();
    assert!(err.is_command(), "{err}");

    let boundaries = [10_000u64, 100_000, 1_000_000, 10_000_000];
    qmp.block_latency_histogram_set(&qdev, &boundaries)
        .await
        .unwrap();
    let stats = qmp.query_blockstats().await.unwrap();
    let s = &stats[0].stats;
    for hist in [
        &s.rd_latency_histogram,
        &s.wr_latency_histogram,
        &s.flush_latency_histogram,
    ] {
        let hist = hist.as_ref().expect("histogram is reported once set");
        assert_eq!(hist.boundaries, boundaries);
        assert_eq!(hist.bins, vec![0; boundaries.len() + 1], "no guest I/O yet");
    }

    // An empty boundary list removes the histograms.
    qmp.block_latency_histogram_set(&qdev, &[]).await.unwrap();
    let stats = qmp.query_blockstats().await.unwrap();
    assert!(stats[0].stats.wr_latency_histogram.is_none());
}

#[tokio::test]
async fn version_name_status_and_command_errors() {
    let mut vm = start_qemu_none(&[], &["-name", "kvmio-test"], limits()).await;
    let qmp = &mut vm.qmp;

    let version = qmp.query_version().await.unwrap();
    assert_eq!(&version, &qmp.greeting().version);
    assert!(version.qemu.major >= 2, "{version:?}");
    assert_eq!(
        qmp.query_name().await.unwrap().as_deref(),
        Some("kvmio-test")
    );
    let status = qmp.query_status().await.unwrap();
    assert!(!status.status.is_empty());

    let err = qmp
        .execute_value("no-such-command", None)
        .await
        .unwrap_err();
    assert_eq!(err.command_class(), Some("CommandNotFound"), "{err}");
    let err = qmp
        .block_latency_histogram_set("no-such-drive", &[1000])
        .await
        .unwrap_err();
    assert!(err.is_command(), "{err}");
    // The connection is still usable after errors.
    qmp.query_version().await.unwrap();
}

#[tokio::test]
async fn events_between_command_and_reply_are_queued() {
    let mut vm = start_qemu_none(&[], &[], limits()).await;
    let qmp = &mut vm.qmp;

    qmp.stop().await.unwrap();
    let status = qmp.query_status().await.unwrap();
    assert!(!status.running);
    assert_eq!(status.status, "paused");
    qmp.cont().await.unwrap();
    assert!(qmp.query_status().await.unwrap().running);
    // STOP and RESUME came in while calls were waiting for replies; none was taken for one.
    let mut names: Vec<String> = qmp.take_events().into_iter().map(|e| e.event).collect();
    while names.len() < 2 {
        names.push(qmp.next_event(Duration::from_secs(5)).await.unwrap().event);
    }
    assert_eq!(names, ["STOP", "RESUME"]);
}

#[tokio::test]
async fn a_stopped_qemu_times_out_and_the_late_reply_is_skipped() {
    let call_timeout = Duration::from_millis(500);
    let limits = Limits::default().with_call_timeout(call_timeout);
    let mut vm = start_qemu_none(&[], &[], limits).await;
    let (qmp, child) = (&mut vm.qmp, &vm.child);
    qmp.query_status().await.unwrap();

    assert_times_out_while_stopped(child, call_timeout, qmp.query_name()).await;

    // QEMU answers query-name late; the next call must take its own reply.
    let version = qmp.query_version().await.unwrap();
    assert!(version.qemu.major >= 2);
    assert!(qmp.query_name().await.unwrap().is_none());
}

#[tokio::test]
async fn handshake_on_a_socket_that_qemu_connects_to() {
    let [qemu] = binaries(["qemu-system-x86_64"]);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("mon.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let args: Vec<String> = [
        "-M",
        "none",
        "-nodefaults",
        "-display",
        "none",
        "-chardev",
        &format!("socket,id=mon0,path={},server=off", sock.display()),
        "-mon",
        "chardev=mon0,mode=control",
    ]
    .map(String::from)
    .to_vec();
    let _child = ChildGuard::spawn(&qemu, &args, dir.path().join("qemu.stderr"));
    let (stream, _) = tokio::time::timeout(common::START_TIMEOUT, listener.accept())
        .await
        .expect("QEMU connects")
        .unwrap();
    let mut qmp = Qmp::handshake(stream, limits()).await.unwrap();
    assert!(qmp.greeting().version.qemu.major >= 2);
    qmp.query_status().await.unwrap();
}

#[tokio::test]
async fn query_pci_maps_a_virtio_blk_device_to_its_qdev_id() {
    let mut vm = start_qemu_q35("none").await;
    let qmp = &mut vm.qmp;

    let pci = qmp.query_pci().await.unwrap();
    let flat = flatten_pci(&pci);
    let vd0 = flat
        .iter()
        .find(|f| f.qdev_id == "vd0")
        .unwrap_or_else(|| panic!("vd0 not in {flat:?}"));
    assert_eq!((vd0.bus, vd0.slot, vd0.function), (0, 5, 0));
    assert_eq!(vd0.vendor, 0x1af4, "virtio vendor id");
    // The backend knows which device it is attached to.
    let blocks = qmp.query_block().await.unwrap();
    let qdev = blocks[0].qdev.as_deref().unwrap_or_default();
    assert!(qdev.contains("vd0"), "{qdev}");
    let stats = qmp.query_blockstats().await.unwrap();
    assert!(stats[0].qdev.as_deref().unwrap_or_default().contains("vd0"));
}

#[tokio::test]
async fn quit_ends_qemu() {
    let mut vm = start_qemu_none(&[], &[], limits()).await;
    let qmp = &mut vm.qmp;
    qmp.quit().await.unwrap();
    let status = vm
        .child
        .wait_exit(Duration::from_secs(10))
        .expect("QEMU exits");
    assert!(status.success(), "{status}");
    let err = qmp.query_status().await.unwrap_err();
    assert!(matches!(err, Error::Closed | Error::Io(_)), "{err}");
}

#[tokio::test]
async fn connecting_to_a_missing_socket_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.sock");
    let err = Qmp::connect(&path, limits()).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(err.to_string().contains("absent.sock"));
}
