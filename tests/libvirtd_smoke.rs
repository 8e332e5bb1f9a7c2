//! The private-libvirtd harness end to end: a real libvirtd (system mode, QEMU as
//! libvirt-qemu) in its own namespace, one lab domain under TCG, libvirt's guest-agent
//! pass-through, block stats on the read-only socket, a libvirtd crash and restart that
//! reconnects to the running domain, and nothing left running afterwards.

use std::time::{Duration, Instant};

use kvmio_e2e::libvirtd::{block_stat, DomainSpec, Libvirtd};
use kvmio_e2e::{processes_mentioning, vm_slot, READY_TIMEOUT};

#[test]
fn private_libvirtd_runs_a_lab_domain_and_survives_a_crash() {
    // Missing libvirt or QEMU: fail here with the install command.
    kvmio_e2e::libvirtd::require_libvirt();
    let _slot = vm_slot();
    // Build (or find) the guest image before the clock starts.
    let _ = kvmio_e2e::guest_image();

    let mut lv = Libvirtd::start();
    let dir = lv.dir().to_string_lossy().into_owned();
    eprintln!(
        "libvirtd + virtlogd up in {:?} ({})",
        lv.last_start,
        lv.uri()
    );

    let t0 = Instant::now();
    let dom = lv.define_and_start(&DomainSpec::lab("smoke"));
    eprintln!(
        "define {:?}, start {:?}, uuid {}",
        dom.define_time, dom.start_time, dom.uuid
    );
    assert_eq!(dom.disks.len(), 2);
    let release = dom.wait_ready(READY_TIMEOUT);
    eprintln!(
        "READY ({release}) {:?} after define",
        t0.elapsed() - dom.define_time
    );

    // QEMU runs as libvirt-qemu, as on a production host.
    let pids = lv.qemu_pids();
    let qemu_pid = *pids
        .get("smoke")
        .expect("libvirt's pid file names the QEMU");
    let status = std::fs::read_to_string(format!("/proc/{qemu_pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let qemu_uid = nix::unistd::User::from_name("libvirt-qemu")
        .unwrap()
        .unwrap()
        .uid;
    assert!(
        uid_line.split_whitespace().nth(1) == Some(&qemu_uid.to_string()),
        "QEMU runs as libvirt-qemu: {uid_line}"
    );

    // The real qemu-ga answers through libvirt's own agent connection.
    let (status, out, err) =
        lv.virsh(["qemu-agent-command", "smoke", r#"{"execute":"guest-ping"}"#]);
    assert!(status.success(), "guest-ping: {err}");
    let reply: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON reply");
    assert!(reply.get("return").is_some(), "guest-ping reply {reply}");

    // Block stats on the read-only socket: both disks, writes rising under the lab workload.
    let sample = || lv.domstats(&["--block", "--backing"]);
    let first = sample();
    std::thread::sleep(Duration::from_secs(4));
    let second = sample();
    for disk in ["vda", "vdb"] {
        let before = block_stat(&first["smoke"], disk, "wr.reqs")
            .unwrap_or_else(|| panic!("{disk} missing from domstats: {:?}", first["smoke"]));
        let after = block_stat(&second["smoke"], disk, "wr.reqs").unwrap();
        eprintln!("{disk}: wr.reqs {before} -> {after}");
        assert!(after > before, "{disk}: wr.reqs {before} -> {after}");
    }

    // libvirtd crashes; QEMU keeps running; a new libvirtd reconnects to it.
    let old_pid = lv.libvirtd_pid().unwrap();
    lv.kill();
    assert!(!kvmio_e2e::pid_exists(old_pid));
    assert!(kvmio_e2e::pid_exists(qemu_pid), "QEMU survives libvirtd");
    lv.restart();
    eprintln!("libvirtd restarted in {:?}", lv.last_start);
    assert_eq!(lv.domain_names(false), ["smoke"]);
    assert_eq!(lv.virsh_ok(&["domstate", "smoke"]).trim(), "running");
    let (status, _, err) = lv.virsh(["qemu-agent-command", "smoke", r#"{"execute":"guest-ping"}"#]);
    assert!(status.success(), "guest-ping after the restart: {err}");

    let daemons = [lv.libvirtd_pid().unwrap(), lv.virtlogd_pid().unwrap()];
    drop(lv);
    for pid in daemons.into_iter().chain([qemu_pid]) {
        assert!(!kvmio_e2e::pid_exists(pid), "pid {pid} survived the drop");
    }
    let left = processes_mentioning(&dir);
    assert!(left.is_empty(), "left running: {left:?}");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} removed");
}
