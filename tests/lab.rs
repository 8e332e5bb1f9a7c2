//! The lab's foundations against real QEMU: cache modes as QEMU and the guest see them, the
//! guest agent inside the guest, readiness by call-back.

use std::path::PathBuf;
use std::time::Duration;

use kvmio_crashtest::vm::{Accel, Disk, DiskSource, ImageFormat, Vm, VmConfig};
use kvmio_e2e::{guest_image, vm_slot, READY_TIMEOUT};
use kvmio_qemu::qga::GuestAgent;
use kvmio_qemu::qmp::Qmp;
use kvmio_qemu::{AgentCommands, CacheMode, Limits, QmpCommands};

/// One VM, one raw disk per cache mode: QMP's `query-block` flags name each disk's mode, and
/// inside the guest the agent lists all five disks and reads back the write-cache type the
/// guest kernel negotiated (volatile "write back" exactly where QEMU's writeback flag is set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cache_mode_is_what_qemu_and_the_guest_report() {
    let _slot = vm_slot();
    let image = guest_image();
    let dir = tempfile::tempdir().unwrap();
    let mut config = VmConfig::new("modes", image, dir.path());
    config.accel = Accel::Tcg;
    for (i, mode) in CacheMode::ALL.into_iter().enumerate() {
        let path: PathBuf = dir.path().join(format!("disk{i}.raw"));
        std::fs::File::create(&path)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        config.disks.push(Disk {
            source: DiskSource::File {
                path,
                format: ImageFormat::Raw,
            },
            cache: mode,
        });
    }
    let (qmp_path, qga_path) = (config.qmp_socket(), config.qga_socket());
    let mut vm = Vm::launch(config).await.expect("QEMU starts");
    let release = vm.wait_ready(READY_TIMEOUT).await.unwrap_or_else(|e| {
        panic!("guest did not call back: {e}");
    });
    assert!(
        !release.is_empty(),
        "READY carries the guest kernel release"
    );

    // The outside-facing QMP socket is free for us while the launcher uses its own monitor.
    let mut qmp = Qmp::connect(&qmp_path, Limits::default()).await.unwrap();
    let blocks = qmp.query_block().await.unwrap();
    for (i, mode) in CacheMode::ALL.into_iter().enumerate() {
        let device = format!("drive-virtio-disk{i}");
        let info = blocks
            .iter()
            .find(|b| b.device == device)
            .unwrap_or_else(|| panic!("{device} missing from query-block: {blocks:?}"));
        assert_eq!(info.cache_mode(), Some(mode), "{device}");
    }
    // The launcher's private monitor answers at the same time.
    let private = vm.qmp().query_block().await.unwrap();
    assert_eq!(private.len(), blocks.len());

    let mut agent = GuestAgent::connect(
        &qga_path,
        Limits::default().with_call_timeout(Duration::from_secs(30)),
    )
    .await
    .expect("guest agent answers");
    let stats = agent.get_diskstats().await.unwrap();
    let names: Vec<&str> = stats.iter().map(|s| s.name.as_str()).collect();
    for disk in ["vda", "vdb", "vdc", "vdd", "vde"] {
        assert!(
            names.contains(&disk),
            "{disk} missing from guest-get-diskstats: {names:?}"
        );
    }
    for (i, mode) in CacheMode::ALL.into_iter().enumerate() {
        let disk = format!("vd{}", (b'a' + i as u8) as char);
        let raw = agent
            .file_read_all(&format!("/sys/block/{disk}/queue/write_cache"), 4096)
            .await
            .unwrap();
        let seen = String::from_utf8_lossy(&raw).trim().to_string();
        let expected = if mode.guest_write_cache() {
            "write back"
        } else {
            "write through"
        };
        assert_eq!(seen, expected, "{disk} under cache={mode}");
    }
    drop(qmp);
    drop(agent);
    let pid = vm.pid().expect("running");
    drop(vm);
    assert!(!kvmio_e2e::pid_exists(pid), "QEMU {pid} reaped on drop");
    assert!(kvmio_e2e::sockets_in(dir.path()).is_empty());
}
