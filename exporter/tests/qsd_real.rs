//! A real qemu-storage-daemon as a target (`--qsd.socket-glob`), and the VM using its exports.
//!
//! The daemon exports three raw images: over vhost-user-blk, NBD (on a Unix socket) and FUSE
//! (onto a file). A paused q35 QEMU (`-S`, TCG, shared memory for vhost-user) uses all three: a
//! `vhost-user-blk-pci` device on the export's socket, and two virtio-blk drives whose files are
//! the NBD URI and the FUSE mount point. The real exporter binary scrapes both. Checked against
//! what the daemon's QMP reports (`query-block-exports`, asked by the test first): one
//! `kvmio_qsd_export_info` per export with its type and node, its image file, its address, and
//! the VM device using it; image sizes; the nodes' highest written offsets; the daemon's process
//! IO; `kvmio_qsd_up` 1, and 0 once the daemon is gone. promtool checks every answer.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::procs::{self, Proc};
use kvmio_test_support::metrics::{find, parse, scrape, value, Series};
use kvmio_test_support::qemu::{qemu_q35, start_within};
use kvmio_test_support::{require, vm_slot, wait_path};

fn image(path: &Path) {
    std::fs::File::create(path)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
}

/// `query-block-exports` as `(id, type, node)`, asked over the daemon's monitor.
fn exports_of(socket: &Path) -> Vec<(String, String, String)> {
    let v = common::qmp_execute(socket, "query-block-exports", None);
    let mut out: Vec<(String, String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap().to_owned();
            (s("id"), s("type"), s("node-name"))
        })
        .collect();
    out.sort();
    out
}

/// Writes the daemon's replies (`query-block-exports`, `query-named-block-nodes` flat,
/// `query-blockstats` with `query-nodes`) and its command line into `out`: the fixtures of
/// `src/collector/qsd.rs`'s golden test (`KVMIO_CAPTURE_QSD=DIR`).
fn capture(socket: &Path, pid: u32, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    for (file, command, args) in [
        ("query-block-exports", "query-block-exports", None),
        (
            "query-named-block-nodes",
            "query-named-block-nodes",
            Some(serde_json::json!({"flat": true})),
        ),
        (
            "query-blockstats-nodes",
            "query-blockstats",
            Some(serde_json::json!({"query-nodes": true})),
        ),
    ] {
        let v = common::qmp_execute(socket, command, args);
        let text = serde_json::to_string_pretty(&serde_json::json!({ "return": v })).unwrap();
        std::fs::write(out.join(format!("{file}.json")), text + "\n").unwrap();
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    std::fs::write(out.join("cmdline"), cmdline).unwrap();
}

fn export<'a>(all: &'a [Series], id: &str) -> &'a Series {
    find(all, "kvmio_qsd_export_info", &[("export", id)])
        .unwrap_or_else(|| panic!("no kvmio_qsd_export_info for {id}"))
}

#[test]
fn storage_daemon_exports_joined_to_the_vm() {
    let _slot = vm_slot();
    let dir = kvmio_test_support::target_tempdir!("kvmio-qsd");
    let d = dir.path();
    for n in ["vub", "nbd", "fuse"] {
        image(&d.join(format!("{n}.raw")));
    }
    let mountpoint = d.join("fuse-export.raw");
    std::fs::File::create(&mountpoint).unwrap();
    let qsd_sock = d.join("qsd.qmp");
    let vub_sock = d.join("vub.sock");
    let nbd_sock = d.join("nbd.sock");

    let qsd_bin = require("qemu-storage-daemon", "qemu-system-common");
    let mut cmd = Command::new(qsd_bin);
    for n in ["vub", "nbd", "fuse"] {
        cmd.arg("--blockdev").arg(format!(
            "driver=file,node-name={n}-file,filename={}",
            d.join(format!("{n}.raw")).display()
        ));
        cmd.arg("--blockdev")
            .arg(format!("driver=raw,node-name={n}-disk,file={n}-file"));
    }
    cmd.arg("--export").arg(format!(
        "type=vhost-user-blk,id=exp-vub,node-name=vub-disk,addr.type=unix,addr.path={},writable=on",
        vub_sock.display()
    ));
    cmd.arg("--nbd-server")
        .arg(format!("addr.type=unix,addr.path={}", nbd_sock.display()));
    cmd.arg("--export")
        .arg("type=nbd,id=exp-nbd,node-name=nbd-disk,name=disk1,writable=on");
    cmd.arg("--export").arg(format!(
        "{{\"type\": \"fuse\", \"id\": \"exp-fuse\", \"node-name\": \"fuse-disk\", \"mountpoint\": \"{}\", \"writable\": true}}",
        mountpoint.display()
    ));
    cmd.arg("--chardev")
        .arg(format!(
            "socket,id=mon0,path={},server=on,wait=off",
            qsd_sock.display()
        ))
        .args(["--monitor", "chardev=mon0"]);
    // Declared before the daemon, so dropped after it is killed, on every path.
    let _unmount = Unmount(mountpoint.clone());
    let mut qsd = start_within(
        cmd,
        "qemu-storage-daemon",
        &qsd_sock,
        Duration::from_secs(30),
    );
    wait_path(
        &vub_sock,
        Duration::from_secs(30),
        &mut qsd,
        "qemu-storage-daemon",
    );
    if let Some(out) = std::env::var_os("KVMIO_CAPTURE_QSD") {
        capture(&qsd_sock, qsd.pid(), Path::new(&out));
    }
    let reported = exports_of(&qsd_sock);
    assert_eq!(
        reported,
        vec![
            ("exp-fuse".into(), "fuse".into(), "fuse-disk".into()),
            ("exp-nbd".into(), "nbd".into(), "nbd-disk".into()),
            ("exp-vub".into(), "vhost-user-blk".into(), "vub-disk".into()),
        ]
    );

    // The VM: vhost-user-blk on the export's socket, drives on the NBD and FUSE exports.
    let vm_sock = d.join("vm.qmp");
    let nbd_uri = format!("nbd+unix:///disk1?socket={}", nbd_sock.display());
    let extra: Vec<String> = [
        "-name",
        "qsdvm",
        "-object",
        "memory-backend-memfd,id=mem,size=64M,share=on",
        "-numa",
        "node,memdev=mem",
        "-chardev",
        &format!("socket,id=vubc,path={}", vub_sock.display()),
        "-device",
        "vhost-user-blk-pci,chardev=vubc,id=vub0",
        "-drive",
        &format!("if=none,id=nbd0,file={nbd_uri},format=raw"),
        "-device",
        "virtio-blk-pci,drive=nbd0,id=vd-nbd",
        "-drive",
        &format!("if=none,id=fuse0,file={},format=raw", mountpoint.display()),
        "-device",
        "virtio-blk-pci,drive=fuse0,id=vd-fuse",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let vm: Proc = qemu_q35(&vm_sock, &extra);

    let args = vec![
        format!("--qmp.socket-glob={}", vm_sock.display()),
        format!("--qsd.socket-glob={}/qsd*.qmp", d.display()),
        "--scrape.timeout=20s".to_owned(),
    ];
    let (_exporter, addr) = procs::exporter(&args, &d.join("exporter.log"));
    let text = scrape(&addr);
    common::promtool_check(&text, "qsd");
    let all = parse(&text);
    let daemon = qsd_sock.display().to_string();
    assert_eq!(value(&all, "kvmio_qsd_up", &[("daemon", &daemon)]), 1.0);
    let infos: Vec<&Series> = all
        .iter()
        .filter(|s| s.name == "kvmio_qsd_export_info")
        .collect();
    assert_eq!(infos.len(), reported.len(), "{infos:#?}");
    for (id, kind, node) in &reported {
        let e = export(&all, id);
        assert_eq!(&e.labels["type"], kind);
        assert_eq!(&e.labels["node"], node);
        assert_eq!(e.labels["format"], "raw");
        assert_eq!(e.labels["driver"], "file");
        assert_eq!(e.labels["daemon"], daemon);
        assert_eq!(e.labels["vm"], "qsdvm", "{id}: the VM using it");
        let n = node.trim_end_matches("-disk");
        assert_eq!(
            e.labels["image"],
            d.join(format!("{n}.raw")).to_str().unwrap(),
            "{id}: image"
        );
        assert_eq!(
            value(
                &all,
                "kvmio_qsd_image_virtual_size_bytes",
                &[("export", id)]
            ),
            f64::from(32 << 20)
        );
        for node in [node.clone(), format!("{n}-file")] {
            assert!(
                find(
                    &all,
                    "kvmio_qsd_node_highest_written_offset_bytes",
                    &[("export", id), ("node", &node)]
                )
                .is_some(),
                "{id}: node {node}"
            );
        }
    }
    let vub = export(&all, "exp-vub");
    assert_eq!(vub.labels["addr"], vub_sock.to_str().unwrap());
    assert_eq!(vub.labels["device"], "vub0");
    let nbd = export(&all, "exp-nbd");
    assert_eq!(nbd.labels["addr"], nbd_uri);
    assert_eq!(nbd.labels["device"], "nbd0");
    let fuse = export(&all, "exp-fuse");
    assert_eq!(fuse.labels["addr"], mountpoint.to_str().unwrap());
    assert_eq!(fuse.labels["device"], "fuse0");
    assert!(find(
        &all,
        "kvmio_qsd_process_written_bytes_total",
        &[("daemon", &daemon)]
    )
    .is_some());

    // The daemon gone (its socket left behind): down, and the VM's own series still there.
    drop(vm);
    drop(qsd);
    let text = scrape(&addr);
    common::promtool_check(&text, "qsd down");
    let all = parse(&text);
    if qsd_sock.exists() {
        assert_eq!(value(&all, "kvmio_qsd_up", &[("daemon", &daemon)]), 0.0);
    } else {
        assert!(find(&all, "kvmio_qsd_up", &[]).is_none());
    }
    assert!(find(&all, "kvmio_qsd_export_info", &[]).is_none());
}

/// qemu-storage-daemon mounts its FUSE export itself and unmounts it only when it exits
/// cleanly; the test kills it, which would leave a dead mount (and an undeletable temporary
/// directory) behind at every run. This undoes the test's own mount, lazily, after the daemon is
/// gone.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status();
    }
}
