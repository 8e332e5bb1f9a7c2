//! End to end, real QEMU 7.2 (q35 under TCG, no guest) in the configurations issue 9 found
//! misreported, scraped by the exporter through one QMP monitor and checked against what QEMU
//! itself reports on a second monitor of the same process (never against constants where QMP
//! has the answer):
//!
//! - `-drive` without `id=` (`if=virtio`; `-hdb`, if=ide), `-blockdev` with the settings on the
//!   file node, `-drive throttling.*`, a throttle + copy-on-read filter chain over
//!   `-object throttle-group`, LUKS, a `json:` filename, a qcow2 `data_file`, an empty CD-ROM,
//!   virtio-scsi with an iothread controller, NVMe, usb-storage, vhost-user-blk served by a
//!   qemu-storage-daemon this test starts;
//! - run states: `prelaunch` (`-S`), `paused` (`stop`), and `io-error`: a VM that really stopped
//!   on an I/O error (SeaBIOS reads the boot disk, blkdebug fails the read, `rerror=stop`).
//!
//! Every QEMU and the daemon are killed and reaped on every path (`ChildProcess`).
//!
//! With `KVMIO_CAPTURE_CONFIGS=DIR` the exporter scrapes the three QEMUs once more through
//! recording proxies, and each monitor session (greeting, every request and QEMU's reply) is
//! written to `DIR/NAME.json`: the fixtures `tests/golden_configs.rs` replays
//! (`tests/fixtures/qemu-7.2-configs`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kvmio_exporter::collector::Exporter;
use kvmio_exporter::config::{Config, HostDevices};
use kvmio_qemu::types::{BlockDeviceInfo, BlockInfo, BlockStats};
use kvmio_qemu::{Limits, Qmp, QmpCommands};
use kvmio_test_support::metrics::{find, parse, Series};
use kvmio_test_support::qemu::qemu_command;
use kvmio_test_support::{require, spawn_tied, wait_path, ChildProcess};
use serde_json::{json, Value};

fn qemu_img(args: &[&str]) {
    let img = require("qemu-img", "qemu-utils");
    let out = Command::new(img).args(args).output().unwrap();
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
}

fn raw(dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    p.display().to_string()
}

/// Starts a QEMU with `args` and two QMP monitors, `NAME.qmp` (the exporter's) and
/// `NAME.check` (the test's).
fn qemu(dir: &Path, name: &str, args: &[String]) -> ChildProcess {
    let sock = dir.join(format!("{name}.qmp"));
    let check = dir.join(format!("{name}.check"));
    let mut cmd = qemu_command(&["-M", "q35", "-accel", "tcg"], &sock);
    cmd.args(["-name", name, "-m", "128"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", check.display()))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap());
    let mut p = spawn_tied(&mut cmd, name);
    wait_path(&check, Duration::from_secs(60), &mut p, name);
    p
}

async fn monitor(dir: &Path, name: &str) -> Qmp {
    // QEMU listens before its main loop runs: retry the greeting on a loaded machine.
    let sock = dir.join(format!("{name}.check"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match Qmp::connect(&sock, Limits::default()).await {
            Ok(q) => return q,
            Err(e) if std::time::Instant::now() > deadline => panic!("{name}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| (*a).to_owned()).collect()
}

/// The labels of the one series of `name` with `labels`.
#[track_caller]
fn series<'a>(all: &'a [Series], name: &str, labels: &[(&str, &str)]) -> &'a Series {
    find(all, name, labels).unwrap_or_else(|| {
        let same: Vec<_> = all.iter().filter(|s| s.name == name).collect();
        panic!("no {name} with {labels:?}; have {same:#?}")
    })
}

fn label<'a>(s: &'a Series, l: &str) -> &'a str {
    s.labels.get(l).map(String::as_str).unwrap_or("")
}

/// QEMU's own view of one backend, from the test's monitor: the node chain down through `file`
/// children, and each node's entry in `query-named-block-nodes`.
struct Truth {
    block: Vec<BlockInfo>,
    stats: Vec<BlockStats>,
    nodes: Vec<BlockDeviceInfo>,
}

impl Truth {
    async fn of(q: &mut Qmp) -> Truth {
        Truth {
            block: q.query_block().await.unwrap(),
            stats: q.query_blockstats().await.unwrap(),
            nodes: q.query_named_block_nodes().await.unwrap(),
        }
    }

    fn chain(&self, device: &str, qdev_id: &str) -> Vec<&BlockDeviceInfo> {
        let top = self
            .stats
            .iter()
            .find(|s| {
                (!device.is_empty() && s.device.as_deref() == Some(device))
                    || s.qdev
                        .as_deref()
                        .is_some_and(|q| q == qdev_id || q.contains(&format!("/{qdev_id}/")))
            })
            .unwrap_or_else(|| panic!("{device}/{qdev_id} not in query-blockstats"));
        let mut out = Vec::new();
        let mut s = Some(top);
        while let Some(n) = s {
            let name = n.node_name.as_deref().unwrap();
            out.push(
                self.nodes
                    .iter()
                    .find(|x| x.node_name.as_deref() == Some(name))
                    .unwrap(),
            );
            s = n.parent.as_deref();
        }
        out
    }
}

const FILTERS: &[&str] = &["throttle", "copy-on-read", "blkdebug"];

/// Checks a backend's block_info and cache_info against QEMU's chain.
#[track_caller]
fn check_backend(all: &[Series], vm: &str, device: &str, chain: &[&BlockDeviceInfo]) {
    let info = series(
        all,
        "kvmio_qemu_block_info",
        &[("vm", vm), ("device", device)],
    );
    let protocol = chain.last().unwrap();
    let format = chain
        .iter()
        .find(|n| !FILTERS.contains(&n.drv.as_str()))
        .unwrap();
    assert_eq!(label(info, "format"), format.drv, "{device}: format");
    assert_eq!(label(info, "driver"), protocol.drv, "{device}: driver");
    let path = if format.file.starts_with('/') {
        &format.file
    } else {
        &protocol.file
    };
    assert_eq!(label(info, "file"), path, "{device}: file");
    let cache = series(
        all,
        "kvmio_qemu_block_cache_info",
        &[("vm", vm), ("device", device)],
    );
    let flags = protocol.cache.unwrap();
    let on = |b: bool| if b { "on" } else { "off" };
    assert_eq!(label(cache, "direct"), on(flags.direct), "{device}: direct");
    assert_eq!(
        label(cache, "no_flush"),
        on(flags.no_flush),
        "{device}: no_flush"
    );
    // Every image series names a file that kvmio_disk_layer_info names too.
    for s in all.iter().filter(|s| {
        s.name.starts_with("kvmio_qemu_image_")
            && label(s, "vm") == vm
            && label(s, "device") == device
    }) {
        let image = label(s, "image");
        assert!(
            image.starts_with('/'),
            "{device}: image {image} is not a path"
        );
        series(
            all,
            "kvmio_disk_layer_info",
            &[("vm", vm), ("device", device), ("image", image)],
        );
    }
}

async fn qom(q: &mut Qmp, path: &str, property: &str) -> Value {
    q.execute_value("qom-get", Some(json!({"path": path, "property": property})))
        .await
        .unwrap()
}

async fn scrape(dir: &Path) -> (String, Vec<Series>) {
    let fixtures = common::fixtures();
    let config = Config {
        host_devices: HostDevices::None,
        procfs: PathBuf::from("/proc"),
        sysfs: fixtures.join("linux-6.18/sys"),
        qmp_socket_globs: vec![format!("{}/*.qmp", dir.display())],
        ..Config::default()
    };
    let exporter = Exporter::with_default_collectors(Arc::new(config));
    let m = exporter.scrape().await;
    assert!(m.rejected().is_empty(), "{:?}", m.rejected());
    let text = m.encode_text();
    common::promtool_check(&text, "qemu configurations");
    let all = parse(&text);
    (text, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_configuration_reads_as_qemu_runs_it() {
    let _slot = kvmio_test_support::vm_slot();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let p = |n: &str| d.join(n).display().to_string();
    for n in [
        "a.raw", "hdb.raw", "f2.raw", "s.raw", "n.raw", "u.raw", "t.raw", "cor.raw", "j.raw",
        "vu.raw", "e.raw",
    ] {
        raw(d, n);
    }
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", p("data.raw")),
        &p("df.qcow2"),
        "16M",
    ]);
    qemu_img(&[
        "create",
        "-q",
        "--object",
        "secret,id=sec0,data=pw",
        "-f",
        "luks",
        "-o",
        "key-secret=sec0",
        &p("l.luks"),
        "16M",
    ]);

    // vhost-user-blk: the disk is served by a qemu-storage-daemon.
    let qsd_bin = require("qemu-storage-daemon", "qemu-system-x86");
    let vu_sock = p("vu.sock");
    let mut qsd = spawn_tied(
        Command::new(qsd_bin)
            .arg("--blockdev")
            .arg(format!("driver=file,node-name=vuf,filename={}", p("vu.raw")))
            .arg("--export")
            .arg(format!("type=vhost-user-blk,id=vux,node-name=vuf,addr.type=unix,addr.path={vu_sock},writable=on")),
        "qemu-storage-daemon",
    );
    wait_path(
        Path::new(&vu_sock),
        Duration::from_secs(30),
        &mut qsd,
        "qemu-storage-daemon",
    );

    let mut a_args = args(&[
        "-S",
        "-object",
        "memory-backend-memfd,id=mem,size=128M,share=on",
        "-numa",
        "node,memdev=mem",
    ]);
    a_args.extend([
        "-drive".into(), format!("file={},format=raw,if=virtio,cache=none,aio=native,discard=unmap,detect-zeroes=unmap", p("a.raw")),
        "-drive".into(), format!("file={},format=raw,index=1,media=disk", p("hdb.raw")),
        "-blockdev".into(), format!("driver=file,node-name=f2,filename={},cache.direct=on,discard=unmap,detect-zeroes=unmap,aio=native", p("f2.raw")),
        "-blockdev".into(), "driver=raw,node-name=r2,file=f2".into(),
        "-device".into(), "virtio-blk-pci,drive=r2,id=vd2".into(),
        "-object".into(), "iothread,id=io1".into(),
        "-device".into(), "virtio-scsi-pci,id=scsi0,iothread=io1".into(),
        "-drive".into(), format!("file={},format=raw,if=none,id=sd0", p("s.raw")),
        "-device".into(), "scsi-hd,drive=sd0,id=sdd0".into(),
        "-drive".into(), format!("file={},format=raw,if=none,id=nv0", p("n.raw")),
        "-device".into(), "nvme,drive=nv0,serial=nv0,id=nvme0".into(),
        "-device".into(), "qemu-xhci,id=xhci".into(),
        "-drive".into(), format!("file={},format=raw,if=none,id=us0", p("u.raw")),
        "-device".into(), "usb-storage,drive=us0,id=usb0".into(),
        "-drive".into(), format!("file={},format=raw,if=none,id=th0,throttling.iops-total=100,throttling.bps-write=1048576", p("t.raw")),
        "-device".into(), "virtio-blk-pci,drive=th0,id=vth0".into(),
        "-object".into(), "throttle-group,id=tg0,x-iops-total=200".into(),
        "-blockdev".into(), format!("driver=file,node-name=corf,filename={}", p("cor.raw")),
        "-blockdev".into(), "driver=raw,node-name=corr,file=corf".into(),
        "-blockdev".into(), "driver=throttle,node-name=thr,throttle-group=tg0,file=corr".into(),
        "-blockdev".into(), "driver=copy-on-read,node-name=cor,file=thr".into(),
        "-device".into(), "virtio-blk-pci,drive=cor,id=vcor".into(),
        "-object".into(), "secret,id=sec0,data=pw".into(),
        "-drive".into(), format!("file={},format=luks,key-secret=sec0,if=none,id=lk0", p("l.luks")),
        "-device".into(), "virtio-blk-pci,drive=lk0,id=vlk".into(),
        "-drive".into(), format!("file=json:{{\"driver\":\"raw\",,\"file\":{{\"driver\":\"file\",,\"filename\":\"{}\"}}}},if=none,id=js0", p("j.raw")),
        "-device".into(), "virtio-blk-pci,drive=js0,id=vjs".into(),
        "-drive".into(), format!("file={},format=qcow2,if=none,id=df0", p("df.qcow2")),
        "-device".into(), "virtio-blk-pci,drive=df0,id=vdf".into(),
        "-drive".into(), "if=none,id=cd0,media=cdrom".into(),
        "-device".into(), "ide-cd,drive=cd0,id=cdrom0".into(),
        "-chardev".into(), format!("socket,id=vuc,path={vu_sock}"),
        "-device".into(), "vhost-user-blk-pci,chardev=vuc,id=vub0".into(),
    ]);
    let _a = qemu(d, "cfg", &a_args);
    // Paused: SeaBIOS finds no boot disk; the test's monitor stops it.
    let _b = qemu(d, "stopped", &[]);
    // Stopped on an I/O error: SeaBIOS's boot read fails in blkdebug, rerror=stop.
    std::fs::write(
        d.join("bd.conf"),
        "[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\n",
    )
    .unwrap();
    let _c = qemu(
        d,
        "ioerr",
        &[
            "-drive".into(),
            format!(
                "file=blkdebug:{}:{},format=raw,if=none,id=e0,rerror=stop,werror=stop",
                p("bd.conf"),
                p("e.raw")
            ),
            "-device".into(),
            "virtio-blk-pci,drive=e0,id=ve0,bootindex=1".into(),
        ],
    );
    let mut qa = monitor(d, "cfg").await;
    let mut qb = monitor(d, "stopped").await;
    let mut qc = monitor(d, "ioerr").await;
    qb.stop().await.unwrap();
    // The I/O error comes when SeaBIOS reads the disk: wait for QEMU to say so.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if qc.query_status().await.unwrap().status == "io-error" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the blkdebug VM never stopped on an I/O error"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (text, all) = scrape(d).await;
    let truth = Truth::of(&mut qa).await;

    // Run states, as query-status has them.
    for (vm, q) in [("cfg", &mut qa), ("stopped", &mut qb), ("ioerr", &mut qc)] {
        let state = q.query_status().await.unwrap().status;
        series(
            &all,
            "kvmio_vm_state_info",
            &[("vm", vm), ("state", &state)],
        );
    }
    series(
        &all,
        "kvmio_vm_state_info",
        &[("vm", "cfg"), ("state", "prelaunch")],
    );
    series(
        &all,
        "kvmio_vm_state_info",
        &[("vm", "stopped"), ("state", "paused")],
    );
    series(
        &all,
        "kvmio_vm_state_info",
        &[("vm", "ioerr"), ("state", "io-error")],
    );
    let e0 = qc.query_block().await.unwrap();
    assert_eq!(e0[0].io_status.as_deref(), Some("failed"));
    let s = series(
        &all,
        "kvmio_qemu_block_io_status",
        &[("vm", "ioerr"), ("device", "e0"), ("status", "failed")],
    );
    assert_eq!(s.value, 1.0);
    // blkdebug is a filter: the file is the image under it.
    check_backend(
        &all,
        "ioerr",
        "e0",
        &Truth::of(&mut qc).await.chain("e0", "ve0"),
    );
    assert_eq!(
        label(
            series(
                &all,
                "kvmio_qemu_block_info",
                &[("vm", "ioerr"), ("device", "e0")]
            ),
            "file"
        ),
        p("e.raw")
    );

    // Each backend against QEMU's chain.
    for b in &truth.block {
        if b.inserted.is_none() {
            continue;
        }
        let qdev = b.qdev.clone().unwrap_or_default();
        let id = qdev
            .strip_prefix("/machine/peripheral/")
            .map(|r| r.split('/').next().unwrap().to_owned())
            .unwrap_or(qdev.clone());
        let device = if b.device.is_empty() {
            id.clone()
        } else {
            b.device.clone()
        };
        check_backend(&all, "cfg", &device, &truth.chain(&b.device, &id));
    }

    // -drive without id: QEMU's names, and the command line's settings.
    let v0 = series(
        &all,
        "kvmio_qemu_block_info",
        &[("vm", "cfg"), ("device", "virtio0")],
    );
    assert_eq!(
        (
            label(v0, "aio"),
            label(v0, "discard"),
            label(v0, "detect_zeroes")
        ),
        ("native", "unmap", "unmap")
    );
    let c0 = series(
        &all,
        "kvmio_qemu_block_cache_info",
        &[("vm", "cfg"), ("device", "virtio0")],
    );
    assert_eq!(label(c0, "configured_cache_mode"), "none");
    let hdb = truth
        .block
        .iter()
        .find(|b| b.device.starts_with("ide"))
        .expect("the -hdb-style drive");
    let h = series(
        &all,
        "kvmio_qemu_block_info",
        &[("vm", "cfg"), ("device", &hdb.device)],
    );
    assert_eq!(
        (label(h, "aio"), label(h, "discard"), label(h, "bus")),
        ("threads", "ignore", "ide")
    );
    series(
        &all,
        "kvmio_qemu_block_cache_info",
        &[
            ("vm", "cfg"),
            ("device", &hdb.device),
            ("configured_cache_mode", "writeback"),
        ],
    );
    // -blockdev with the settings on the file node: O_DIRECT, discard, aio, detect-zeroes.
    let r2 = series(
        &all,
        "kvmio_qemu_block_info",
        &[("vm", "cfg"), ("device", "vd2")],
    );
    assert_eq!(
        (
            label(r2, "cache_mode"),
            label(r2, "aio"),
            label(r2, "discard"),
            label(r2, "detect_zeroes")
        ),
        ("none", "native", "unmap", "unmap")
    );

    // Device models, buses and storage modes, against QOM.
    for (device, qom_path, mode, bus) in [
        (
            "sd0",
            "/machine/peripheral/sdd0",
            "virtio-scsi-dataplane",
            "scsi",
        ),
        ("nv0", "/machine/peripheral/nvme0", "nvme", "nvme"),
        ("us0", "/machine/peripheral/usb0", "usb", "usb"),
        ("th0", "/machine/peripheral/vth0", "virtio-blk", "virtio"),
        ("cd0", "/machine/peripheral/cdrom0", "ide", "ide"),
    ] {
        let model = qom(&mut qa, qom_path, "type").await;
        let s = series(
            &all,
            "kvmio_qemu_device_info",
            &[("vm", "cfg"), ("device", device)],
        );
        assert_eq!(label(s, "model"), model.as_str().unwrap(), "{device}");
        assert_eq!(
            (label(s, "storage_mode"), label(s, "bus")),
            (mode, bus),
            "{device}"
        );
    }
    let io1 = qom(
        &mut qa,
        "/machine/peripheral/scsi0/virtio-backend",
        "iothread",
    )
    .await;
    let sd0 = series(
        &all,
        "kvmio_qemu_block_info",
        &[("vm", "cfg"), ("device", "sd0")],
    );
    assert_eq!(
        Some(label(sd0, "iothread")),
        io1.as_str().unwrap().strip_prefix("/objects/")
    );
    // The empty CD-ROM.
    let cd = series(
        &all,
        "kvmio_qemu_device_info",
        &[("vm", "cfg"), ("device", "cd0")],
    );
    assert_eq!(
        (label(cd, "medium"), label(cd, "removable")),
        ("empty", "on")
    );
    // vhost-user-blk: listed from the device tree with the daemon's socket.
    let vub = series(
        &all,
        "kvmio_qemu_device_info",
        &[("vm", "cfg"), ("device", "vub0")],
    );
    assert_eq!(
        label(vub, "model"),
        qom(&mut qa, "/machine/peripheral/vub0", "type")
            .await
            .as_str()
            .unwrap()
    );
    assert_eq!(
        (label(vub, "storage_mode"), label(vub, "socket")),
        ("vhost-user-blk", vu_sock.as_str())
    );

    // Throttle limits: -drive throttling (query-block) and the throttle group (qom-get).
    let th0 = truth
        .block
        .iter()
        .find(|b| b.device == "th0")
        .unwrap()
        .inserted
        .clone()
        .unwrap();
    let group = th0.group.clone().unwrap();
    let v = |name: &str, op: &str, g: &str, dev: &str| {
        series(
            &all,
            name,
            &[("vm", "cfg"), ("device", dev), ("group", g), ("op", op)],
        )
        .value
    };
    assert_eq!(
        v(
            "kvmio_qemu_block_throttle_limit_operations_per_second",
            "total",
            &group,
            "th0"
        ),
        th0.iops as f64
    );
    assert_eq!(
        v(
            "kvmio_qemu_block_throttle_limit_bytes_per_second",
            "write",
            &group,
            "th0"
        ),
        th0.bps_wr as f64
    );
    let limits = qom(&mut qa, "/objects/tg0", "limits").await;
    assert_eq!(
        v(
            "kvmio_qemu_block_throttle_limit_operations_per_second",
            "total",
            "tg0",
            "vcor"
        ),
        limits["iops-total"].as_f64().unwrap()
    );
    // The filter chain: the image counted once, each node once.
    let cor_images: Vec<_> = all
        .iter()
        .filter(|s| s.name == "kvmio_qemu_image_allocated_bytes" && label(s, "device") == "vcor")
        .collect();
    assert_eq!(cor_images.len(), 1, "{cor_images:?}");
    assert_eq!(label(cor_images[0], "image"), p("cor.raw"));
    // LUKS and json: filenames are paths; the qcow2 data file is named in the join.
    assert_eq!(
        label(
            series(
                &all,
                "kvmio_qemu_block_info",
                &[("vm", "cfg"), ("device", "lk0")]
            ),
            "file"
        ),
        p("l.luks")
    );
    assert_eq!(
        label(
            series(
                &all,
                "kvmio_qemu_block_info",
                &[("vm", "cfg"), ("device", "js0")]
            ),
            "file"
        ),
        p("j.raw")
    );
    series(
        &all,
        "kvmio_disk_layer_info",
        &[("vm", "cfg"), ("device", "df0"), ("image", &p("data.raw"))],
    );
    assert!(!text.contains("json:{"), "a json: filename in a label");

    if let Some(out) = std::env::var_os("KVMIO_CAPTURE_CONFIGS") {
        capture(d, &["cfg", "stopped", "ioerr"], Path::new(&out)).await;
    }
    drop(qsd);
}

/// Scrapes the QEMUs `names` through recording proxies (`DIR/capture/NAME.qmp` in front of
/// `DIR/NAME.qmp`) and writes each session to `out/NAME.json`.
async fn capture(dir: &Path, names: &[&str], out: &Path) {
    use std::sync::Mutex;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{UnixListener, UnixStream};

    let proxies = dir.join("capture");
    std::fs::create_dir_all(&proxies).unwrap();
    std::fs::create_dir_all(out).unwrap();
    let mut tasks = Vec::new();
    let mut sessions = Vec::new();
    for name in names {
        let listener = UnixListener::bind(proxies.join(format!("{name}.qmp"))).unwrap();
        let upstream = dir.join(format!("{name}.qmp"));
        let session = Arc::new(Mutex::new(json!({"greeting": null, "exchanges": []})));
        sessions.push((name.to_string(), session.clone()));
        tasks.push(tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (cr, mut cw) = client.into_split();
                let (ur, mut uw) = UnixStream::connect(&upstream).await.unwrap().into_split();
                let mut cr = BufReader::new(cr).lines();
                let mut ur = BufReader::new(ur).lines();
                let greeting = ur.next_line().await.unwrap().unwrap();
                session.lock().unwrap()["greeting"] = serde_json::from_str(&greeting).unwrap();
                cw.write_all(format!("{greeting}\n").as_bytes())
                    .await
                    .unwrap();
                while let Ok(Some(line)) = cr.next_line().await {
                    uw.write_all(format!("{line}\n").as_bytes()).await.unwrap();
                    let req: Value = serde_json::from_str(&line).unwrap();
                    let reply = loop {
                        let l = ur.next_line().await.unwrap().unwrap();
                        let v: Value = serde_json::from_str(&l).unwrap();
                        if v.get("event").is_none() {
                            break v;
                        }
                    };
                    cw.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
                    let mut recorded = reply.clone();
                    if let Some(o) = recorded.as_object_mut() {
                        o.remove("id");
                    }
                    let args = req.get("arguments").cloned().unwrap_or(Value::Null);
                    let mut s = session.lock().unwrap();
                    let list = s["exchanges"].as_array_mut().unwrap();
                    list.retain(|e| !(e["execute"] == req["execute"] && e["arguments"] == args));
                    list.push(
                        json!({"execute": req["execute"], "arguments": args, "reply": recorded}),
                    );
                }
            }
        }));
    }
    let config = Config {
        host_devices: HostDevices::None,
        procfs: PathBuf::from("/proc"),
        sysfs: common::fixtures().join("linux-6.18/sys"),
        qmp_socket_globs: vec![format!("{}/*.qmp", proxies.display())],
        ..Config::default()
    };
    Exporter::with_default_collectors(Arc::new(config))
        .scrape()
        .await;
    for t in tasks {
        t.abort();
    }
    for (name, session) in sessions {
        let mut text = serde_json::to_string_pretty(&*session.lock().unwrap()).unwrap();
        text.push('\n');
        std::fs::write(out.join(format!("{name}.json")), text).unwrap();
    }
}
