//! `kvmio-exporter --libvirt.uri` against a real libvirtd of the test's own (system mode, QEMU as
//! libvirt-qemu, its own sockets and directories: `kvmio_e2e::libvirtd`), with TCG domains of
//! kvmio's lab guest (real qemu-ga inside, libvirt's own agent channel, a qcow2 disk under
//! cache=none and a raw disk under cache=writeback, steady IO).
//!
//! Default mode (no domain tainted):
//! - every layer: QEMU device counters that rise under the workload, configuration from the
//!   domain XML (cache, format, bus, driver), image sizes, the join guest disk <-> device <->
//!   image <-> host device with the guest's disk names, host page cache and QEMU process IO;
//!   what libvirt's statistics lack (node stats, failed operations, guest diskstats) is absent,
//!   not zero; libvirt's log shows no taint, and libvirt's own agent use (`virsh guestinfo`)
//!   keeps working;
//! - lifecycle: a domain started between scrapes appears, a destroyed one disappears, a
//!   suspended one stays with its QEMU layer; libvirtd killed -> `kvmio_libvirt_up 0` with a
//!   prompt 200 answer, and everything back after libvirtd restarts.
//!
//! Passthrough mode (`--libvirt.qmp-passthrough --libvirt.agent-passthrough`): guest diskstats
//! that rise, per-node stats and the live cache flags, and libvirt's log says the domain is now
//! tainted; `virsh qemu-agent-command` keeps working between kvmio's scrapes.

use std::path::Path;
use std::time::{Duration, Instant};

use kvmio_e2e::libvirtd::{DomainSpec, Libvirtd};
use kvmio_e2e::metrics::{
    find, host_device_of, http_get, parse, start_exporter, start_exporter_as, value, Series,
};
use kvmio_e2e::{vm_slot, READY_TIMEOUT};

/// A test's own directory (exporter logs, sockets).
fn work_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kvmio-e2e-libvirt")
        .tempdir()
        .unwrap()
}

fn scrape(addr: &str) -> Vec<Series> {
    parse(&http_get(addr))
}

fn vm_series<'a>(all: &'a [Series], vm: &str) -> Vec<&'a Series> {
    all.iter()
        .filter(|s| s.labels.get("vm").map(String::as_str) == Some(vm))
        .collect()
}

fn has_family(all: &[Series], vm: &str, prefix: &str) -> bool {
    vm_series(all, vm)
        .iter()
        .any(|s| s.name.starts_with(prefix))
}

/// `kvmio_qemu_block_writes_completed_total` of a device.
fn writes(all: &[Series], vm: &str, device: &str) -> f64 {
    value(
        all,
        "kvmio_qemu_block_writes_completed_total",
        &[("vm", vm), ("device", device)],
    )
}

fn taints(lv: &Libvirtd, domain: &str) -> String {
    std::fs::read_to_string(lv.qemu_log_path(domain))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("tainted"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes what libvirt returned for `dom` into `$KVMIO_CAPTURE_LIBVIRT` (fixtures for the
/// exporter's unit tests; see exporter/tests/fixtures/README.md).
fn capture(lv: &Libvirtd, dom: &str) {
    let Some(dir) = std::env::var_os("KVMIO_CAPTURE_LIBVIRT") else {
        return;
    };
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).unwrap();
    let xml = lv.virsh_ok(&["dumpxml", dom]);
    std::fs::write(dir.join("domain-live.xml"), xml).unwrap();
    let stats = lv.virsh_ok(&["domstats", "--block", "--backing", "--state", dom]);
    std::fs::write(dir.join("domstats-block-backing.txt"), stats).unwrap();
    let guest = lv.virsh_ok(&["guestinfo", "--disk", dom]);
    std::fs::write(dir.join("guestinfo-disk.txt"), guest).unwrap();
}

#[test]
fn exporter_reads_every_layer_through_libvirt() {
    let _slot = vm_slot();
    let _ = kvmio_e2e::guest_image();
    let mut lv = Libvirtd::start();
    let a = lv.define_and_start(&DomainSpec::lab("lv-a"));
    a.wait_ready(READY_TIMEOUT);
    capture(&lv, "lv-a");
    let work = work_dir();
    let (mut exporter, addr) = start_exporter(
        &[format!("--libvirt.uri={}", lv.uri())],
        &work.path().join("exporter.log"),
    );

    // --- every layer, untainted ---------------------------------------------------------
    let first = scrape(&addr);
    assert_eq!(
        value(&first, "kvmio_libvirt_up", &[("uri", &lv.uri())]),
        1.0
    );
    assert!(find(
        &first,
        "kvmio_libvirt_info",
        &[("access", "read-write"), ("qmp_passthrough", "off")]
    )
    .is_some());
    assert!(find(
        &first,
        "kvmio_vm_info",
        &[("vm", "lv-a"), ("source", "libvirt"), ("uuid", a.uuid())]
    )
    .is_some());
    assert_eq!(value(&first, "kvmio_qmp_up", &[("vm", "lv-a")]), 1.0);
    assert_eq!(value(&first, "kvmio_qga_up", &[("vm", "lv-a")]), 1.0);
    // libvirt's aliases are QEMU's device ids: the same labels the monitor gives.
    for (device, target, cache, format) in [
        ("virtio-disk0", "vda", "none", "qcow2"),
        ("virtio-disk1", "vdb", "writeback", "raw"),
    ] {
        let disk = a.disks.iter().find(|d| d.target == target).unwrap();
        let path = disk.path.to_string_lossy().into_owned();
        let info = find(
            &first,
            "kvmio_qemu_block_info",
            &[("vm", "lv-a"), ("device", device)],
        )
        .unwrap_or_else(|| panic!("kvmio_qemu_block_info for {device}"));
        assert_eq!(info.labels["cache_mode"], cache, "{info:?}");
        assert_eq!(info.labels["format"], format);
        assert_eq!(info.labels["driver"], "file");
        assert_eq!(info.labels["bus"], "virtio");
        assert_eq!(info.labels["file"], path);
        let cache_info = find(
            &first,
            "kvmio_qemu_block_cache_info",
            &[("vm", "lv-a"), ("device", device)],
        )
        .unwrap();
        assert_eq!(cache_info.labels["configured_cache_mode"], cache);
        assert_eq!(
            cache_info.labels["direct"],
            if cache == "none" { "on" } else { "off" }
        );
        // The join, with the guest's own disk name.
        let layer = find(
            &first,
            "kvmio_disk_layer_info",
            &[("vm", "lv-a"), ("device", device)],
        )
        .unwrap();
        assert_eq!(layer.labels["disk"], target, "{layer:?}");
        assert_eq!(layer.labels["image"], path);
        assert_eq!(
            layer.labels["host_device"],
            host_device_of(&disk.path).unwrap_or_default()
        );
        assert!(
            value(
                &first,
                "kvmio_qemu_image_virtual_size_bytes",
                &[("vm", "lv-a"), ("device", device), ("image", &path)]
            ) >= 64.0 * 1024.0 * 1024.0
        );
        assert!(find(
            &first,
            "kvmio_qemu_image_allocated_bytes",
            &[("vm", "lv-a"), ("device", device)]
        )
        .is_some());
        assert!(find(
            &first,
            "kvmio_host_image_cached_bytes",
            &[("vm", "lv-a"), ("device", device)]
        )
        .is_some());
        // The host layer of the device under the image (when it is on a local block device).
        if let Some(host) = host_device_of(&disk.path) {
            assert!(
                find(
                    &first,
                    "kvmio_host_disk_writes_completed_total",
                    &[("device", &host)]
                )
                .is_some(),
                "host device {host} under {path}"
            );
        }
    }
    assert!(find(
        &first,
        "kvmio_qemu_process_written_bytes_total",
        &[("vm", "lv-a")]
    )
    .is_some());
    // What libvirt's statistics do not have is absent, never zero.
    for absent in [
        "kvmio_qemu_node_",
        "kvmio_qemu_block_failed_operations_total",
        "kvmio_qemu_block_reads_merged_total",
        "kvmio_guest_disk_",
    ] {
        assert!(
            !has_family(&first, "lv-a", absent),
            "{absent} in default mode"
        );
    }
    // The workload's writes show at the QEMU layer.
    let w0 = writes(&first, "lv-a", "virtio-disk1");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut later = scrape(&addr);
    while writes(&later, "lv-a", "virtio-disk1") <= w0 {
        assert!(Instant::now() < deadline, "QEMU layer writes never rose");
        std::thread::sleep(Duration::from_secs(1));
        later = scrape(&addr);
    }
    // libvirt's own agent use is untouched (its guest info calls share the agent with kvmio),
    // and nothing tainted the domain.
    let (status, out, err) = lv.virsh(["guestinfo", "lv-a", "--os", "--disk"]);
    assert!(
        status.success() && out.contains("disk.0.name"),
        "libvirt's agent use broke: {out} {err}"
    );
    assert_eq!(taints(&lv, "lv-a"), "", "default mode tainted the domain");

    // --- lifecycle --------------------------------------------------------------------------
    let p = lv.define_and_start(&DomainSpec::paused("lv-p"));
    let all = scrape(&addr);
    assert!(find(&all, "kvmio_vm_info", &[("vm", "lv-p"), ("uuid", p.uuid())]).is_some());
    assert_eq!(value(&all, "kvmio_qmp_up", &[("vm", "lv-p")]), 1.0);
    assert!(find(
        &all,
        "kvmio_qemu_block_info",
        &[("vm", "lv-p"), ("device", "virtio-disk0")]
    )
    .is_some());
    lv.virsh_ok(&["destroy", "lv-p"]);
    let all = scrape(&addr);
    assert!(
        vm_series(&all, "lv-p").is_empty(),
        "destroyed domain still exported"
    );
    lv.virsh_ok(&["suspend", "lv-a"]);
    let all = scrape(&addr);
    assert_eq!(
        value(&all, "kvmio_qmp_up", &[("vm", "lv-a")]),
        1.0,
        "suspended domain"
    );
    lv.virsh_ok(&["resume", "lv-a"]);

    // libvirtd gone: up 0, promptly; back: everything again.
    lv.kill();
    let t = Instant::now();
    let all = scrape(&addr);
    assert!(
        t.elapsed() < Duration::from_secs(9),
        "scrape took {:?}",
        t.elapsed()
    );
    assert_eq!(value(&all, "kvmio_libvirt_up", &[("uri", &lv.uri())]), 0.0);
    assert!(vm_series(&all, "lv-a").is_empty());
    lv.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = scrape(&addr);
        if find(&all, "kvmio_libvirt_up", &[("uri", &lv.uri())]).is_some_and(|s| s.value == 1.0)
            && find(&all, "kvmio_qmp_up", &[("vm", "lv-a")]).is_some_and(|s| s.value == 1.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after libvirtd restart"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    exporter.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
    assert_eq!(taints(&lv, "lv-a"), "", "default mode tainted the domain");

    // --- passthrough: the monitor's and the agent's full view, tainting -------------------
    let (mut exporter, addr) = start_exporter(
        &[
            format!("--libvirt.uri={}", lv.uri()),
            "--libvirt.qmp-passthrough".to_owned(),
            "--libvirt.agent-passthrough".to_owned(),
        ],
        &work.path().join("exporter-passthrough.log"),
    );
    let first = scrape(&addr);
    assert_eq!(value(&first, "kvmio_qga_up", &[("vm", "lv-a")]), 1.0);
    assert!(has_family(&first, "lv-a", "kvmio_qemu_node_"));
    assert!(find(
        &first,
        "kvmio_qemu_block_failed_operations_total",
        &[("vm", "lv-a"), ("device", "virtio-disk0")]
    )
    .is_some());
    let live = find(
        &first,
        "kvmio_qemu_block_cache_info",
        &[("vm", "lv-a"), ("device", "virtio-disk0")],
    )
    .unwrap();
    assert_eq!(live.labels["guest_write_cache"], "on", "{live:?}");
    assert_eq!(live.labels["cache_mode"], "none");
    let guest_w = |all: &[Series]| {
        value(
            all,
            "kvmio_guest_disk_writes_completed_total",
            &[("vm", "lv-a"), ("disk", "vdb")],
        )
    };
    let g0 = guest_w(&first);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = scrape(&addr);
        if guest_w(&all) > g0 {
            let layer = find(
                &all,
                "kvmio_disk_layer_info",
                &[("vm", "lv-a"), ("device", "virtio-disk1")],
            )
            .unwrap();
            assert_eq!(layer.labels["disk"], "vdb");
            break;
        }
        assert!(Instant::now() < deadline, "guest writes never rose");
        std::thread::sleep(Duration::from_secs(1));
    }
    let t = taints(&lv, "lv-a");
    assert!(t.contains("custom-monitor"), "{t}");
    assert!(t.contains("custom-ga-command"), "{t}");
    // libvirt's own agent commands keep working while kvmio uses the agent through libvirt.
    for _ in 0..3 {
        let (status, out, err) =
            lv.virsh(["qemu-agent-command", "lv-a", r#"{"execute":"guest-ping"}"#]);
        assert!(status.success(), "virsh qemu-agent-command: {out} {err}");
        assert_eq!(
            value(&scrape(&addr), "kvmio_qga_up", &[("vm", "lv-a")]),
            1.0
        );
    }
    exporter.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));

    lv.stop_leaving_nothing();
}

/// One domain whose QEMU is stopped (SIGSTOP) is `up 0` on its own while the others stay
/// complete and the scrape stays within its timeout; and a QEMU that a socket glob finds too
/// (libvirt's own monitor socket) is exported once, from libvirt.
#[test]
fn a_hung_domain_is_down_alone_and_no_vm_is_exported_twice() {
    let _slot = vm_slot();
    let lv = Libvirtd::start();
    let p1 = lv.define_and_start(&DomainSpec::paused("lv-p1"));
    let p2 = lv.define_and_start(&DomainSpec::paused("lv-p2"));
    let work = work_dir();
    let (mut exporter, addr) = start_exporter(
        &[
            format!("--libvirt.uri={}", lv.uri()),
            // libvirtd's own monitor sockets: held by libvirtd, never answering kvmio.
            format!(
                "--qmp.socket-glob={}/lib/qemu/domain-*/monitor.sock",
                lv.dir().display()
            ),
            "--scrape.timeout=3s".to_owned(),
        ],
        &work.path().join("exporter.log"),
    );
    let count_info = |all: &[Series], vm: &str| {
        all.iter()
            .filter(|s| s.name == "kvmio_vm_info")
            .filter(|s| s.labels["vm"].starts_with(vm))
            .count()
    };
    let all = scrape(&addr);
    for d in [&p1, &p2] {
        assert_eq!(count_info(&all, d.name()), 1, "{} exported twice", d.name());
        assert!(find(
            &all,
            "kvmio_vm_info",
            &[("vm", d.name()), ("source", "libvirt")]
        )
        .is_some());
        assert_eq!(value(&all, "kvmio_qmp_up", &[("vm", d.name())]), 1.0);
    }
    assert!(
        find(&all, "kvmio_vm_info", &[("source", "socket")]).is_none(),
        "libvirt's monitor socket exported as another VM"
    );

    let qemu = lv.qemu_pids()["lv-p1"];
    let pid = nix::unistd::Pid::from_raw(qemu as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    for _ in 0..2 {
        let t = Instant::now();
        let all = scrape(&addr);
        assert!(
            t.elapsed() < Duration::from_millis(4500),
            "scrape took {:?}",
            t.elapsed()
        );
        let log = || std::fs::read_to_string(work.path().join("exporter.log")).unwrap();
        assert_eq!(
            value(&all, "kvmio_qmp_up", &[("vm", "lv-p1")]),
            0.0,
            "{}",
            log()
        );
        assert_eq!(
            value(&all, "kvmio_qmp_up", &[("vm", "lv-p2")]),
            1.0,
            "{}",
            log()
        );
        assert!(find(
            &all,
            "kvmio_qemu_block_reads_completed_total",
            &[("vm", "lv-p2"), ("device", "virtio-disk0")]
        )
        .is_some());
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while value(&scrape(&addr), "kvmio_qmp_up", &[("vm", "lv-p1")]) != 1.0 {
        assert!(Instant::now() < deadline, "lv-p1 never came back");
        std::thread::sleep(Duration::from_millis(500));
    }
    exporter.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
    let log = std::fs::read_to_string(work.path().join("exporter.log")).unwrap();
    assert!(
        log.contains("exported once, from libvirt"),
        "the duplicate was not reported:\n{log}"
    );
    lv.stop_leaving_nothing();
}

/// As an unprivileged user (the packaged unit's situation without the libvirt group or extra
/// capabilities): the read-write socket is refused, so kvmio connects read-only, keeps the QEMU
/// layer, and says once at start-up what the missing privileges cost; the families it cannot
/// fill are absent, never zero.
#[test]
fn unprivileged_exporter_falls_back_to_read_only_and_says_what_it_costs() {
    let _slot = vm_slot();
    let lv = Libvirtd::start();
    let p = lv.define_and_start(&DomainSpec::paused("lv-ro"));
    let work = work_dir();
    let log_path = work.path().join("exporter.log");
    let (mut exporter, addr) = start_exporter_as(
        Some(("nobody", "nogroup")),
        &[format!("--libvirt.uri={}", lv.uri())],
        &log_path,
    );
    let all = scrape(&addr);
    assert!(
        find(
            &all,
            "kvmio_libvirt_info",
            &[("access", "read-only"), ("uri", &lv.uri())]
        )
        .is_some(),
        "{:?}\n{}",
        all.iter()
            .filter(|s| s.name.starts_with("kvmio_libvirt"))
            .collect::<Vec<_>>(),
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    assert_eq!(value(&all, "kvmio_qmp_up", &[("vm", "lv-ro")]), 1.0);
    assert!(find(
        &all,
        "kvmio_qemu_block_info",
        &[
            ("vm", "lv-ro"),
            ("device", "virtio-disk0"),
            ("cache_mode", "none")
        ]
    )
    .is_some());
    for absent in [
        "kvmio_qga_up",
        "kvmio_qemu_process_",
        "kvmio_host_image_cached_bytes",
    ] {
        assert!(
            !has_family(&all, "lv-ro", absent),
            "{absent} exported without the privilege"
        );
    }
    let layer = find(&all, "kvmio_disk_layer_info", &[("vm", "lv-ro")]).unwrap();
    assert_eq!(layer.labels["disk"], "");
    exporter.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
    let log = std::fs::read_to_string(&log_path).unwrap();
    for said in [
        "connected read-only",
        "kvmio_qemu_process_read_bytes_total",
        "kvmio_host_image_cached_bytes",
    ] {
        assert_eq!(
            log.matches(said).count(),
            1,
            "{said:?} not said exactly once:\n{log}"
        );
    }
    assert!(p.uuid().len() > 8);
}

/// The device rows (`device` -> `model`, `storage_mode`, `bus`, `iothread`) of `vm`.
fn device_rows(all: &[Series], vm: &str) -> std::collections::BTreeMap<String, [String; 4]> {
    all.iter()
        .filter(|s| s.name == "kvmio_qemu_device_info" && s.labels["vm"] == vm)
        .map(|s| {
            let l = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
            (
                l("device"),
                [l("model"), l("storage_mode"), l("bus"), l("iothread")],
            )
        })
        .collect()
}

/// `virsh ARGS` (a `dumpxml`), also written to `$KVMIO_CAPTURE_LIBVIRT/FILE` when set.
fn dumpxml_captured(lv: &Libvirtd, args: &[&str], file: &str) -> String {
    let xml = lv.virsh_ok(args);
    if let Some(dir) = std::env::var_os("KVMIO_CAPTURE_LIBVIRT") {
        let dir = Path::new(&dir);
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(file), &xml).unwrap();
    }
    xml
}

/// `dom`'s live XML (written to `$KVMIO_CAPTURE_LIBVIRT/FILE` when set, a fixture of the
/// exporter's unit tests) and two scrapes of an exporter on `lv`: without the monitor (the
/// device rows from the XML) and with `--libvirt.qmp-passthrough` (from QEMU's QOM tree).
fn xml_and_both_scrapes(lv: &Libvirtd, dom: &str, file: &str) -> (String, [Vec<Series>; 2]) {
    let xml = dumpxml_captured(lv, &["dumpxml", dom], file);
    let work = work_dir();
    let scrapes = [None, Some("--libvirt.qmp-passthrough")].map(|extra| {
        let mut args = vec![format!("--libvirt.uri={}", lv.uri())];
        args.extend(extra.map(str::to_owned));
        let log = work.path().join(format!("exporter{}.log", args.len()));
        let (mut exporter, addr) = start_exporter(&args, &log);
        let all = scrape(&addr);
        exporter.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
        all
    });
    (xml, scrapes)
}

/// Storage modes from the domain XML alone (no monitor): a paused domain with a virtio disk in
/// an iothread and one without, a virtio-scsi controller in an iothread and an lsilogic one with
/// a disk each, a SATA disk, a USB disk and an empty IDE CD-ROM. Without `--libvirt.qmp-passthrough` the
/// exporter derives model and storage mode from the XML; with it, from QEMU's QOM tree: both
/// must say the same for every disk. `KVMIO_CAPTURE_LIBVIRT=DIR` writes the live XML as
/// `domain-storage-modes.xml` (the exporter's unit-test fixture).
#[test]
fn storage_modes_from_the_domain_xml_match_qemus_device_tree() {
    use kvmio_crashtest::vm::ImageFormat;
    use kvmio_e2e::libvirtd::DiskSpec;
    use kvmio_qemu::CacheMode;
    let _slot = vm_slot();
    let lv = Libvirtd::start();
    let raw = |bus: &str| {
        DiskSpec::new(ImageFormat::Raw, CacheMode::None)
            .size_mib(8)
            .bus(bus)
    };
    let spec = DomainSpec::paused("lv-modes")
        .iothreads(2)
        .disks(vec![
            raw("virtio").iothread(1),
            raw("virtio"),
            raw("scsi").controller(0),
            raw("scsi").controller(1),
            raw("sata"),
            raw("usb"),
        ])
        .extra_device("    <controller type='usb' index='0' model='qemu-xhci'/>")
        .extra_device(
            "    <controller type='scsi' index='0' model='virtio-scsi'>\n      <driver iothread='2'/>\n    </controller>",
        )
        .extra_device("    <controller type='scsi' index='1' model='lsilogic'/>")
        .extra_device(
            "    <disk type='file' device='cdrom'>\n      <driver name='qemu' type='raw'/>\n      <target dev='hdc' bus='ide'/>\n      <readonly/>\n    </disk>",
        );
    let _dom = lv.define_and_start(&spec);
    let (xml, scrapes) = xml_and_both_scrapes(&lv, "lv-modes", "domain-storage-modes.xml");
    let rows = scrapes.map(|all| device_rows(&all, "lv-modes"));
    let (from_xml, from_qom) = (&rows[0], &rows[1]);
    let modes: Vec<&str> = from_xml.values().map(|r| r[1].as_str()).collect();
    for mode in [
        "virtio-blk-dataplane",
        "virtio-blk",
        "virtio-scsi-dataplane",
        "scsi",
        "ide",
        "usb",
    ] {
        assert!(
            modes.contains(&mode),
            "{mode} missing: {from_xml:#?}\n{xml}"
        );
    }
    assert_eq!(from_xml, from_qom, "XML vs QOM\n{xml}");
}

/// A `<disk type='vhostuser'>` on a real qemu-storage-daemon's vhost-user-blk export: from the
/// XML alone, the same device row (vhost-user-blk-pci, vhost-user-blk, its socket) as QEMU's QOM
/// tree gives through the monitor.
#[test]
fn vhost_user_disk_from_the_domain_xml_matches_qemus_device_tree() {
    use std::os::unix::fs::PermissionsExt;
    let _slot = vm_slot();
    let dir = tempfile::Builder::new()
        .prefix("kvmio-e2e-vub")
        .tempdir()
        .unwrap();
    // QEMU runs as libvirt-qemu: it must reach and connect to the socket.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = dir.path().join("vub.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let sock = dir.path().join("vub.sock");
    let qmp = dir.path().join("qsd.qmp");
    let mut cmd = std::process::Command::new(kvmio_test_support::require(
        "qemu-storage-daemon",
        "qemu-system-common",
    ));
    cmd.arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=f,filename={}",
            image.display()
        ))
        .args(["--blockdev", "driver=raw,node-name=d,file=f", "--export"])
        .arg(format!(
            "type=vhost-user-blk,id=exp,node-name=d,addr.type=unix,addr.path={},writable=on",
            sock.display()
        ))
        .arg("--chardev")
        .arg(format!(
            "socket,id=mon0,path={},server=on,wait=off",
            qmp.display()
        ))
        .args(["--monitor", "chardev=mon0"]);
    let _qsd = kvmio_test_support::qemu::start_within(
        cmd,
        "qemu-storage-daemon",
        &sock,
        Duration::from_secs(60),
    );
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    // Declared after the daemon: libvirtd (and its QEMU) goes first.
    let lv = Libvirtd::start();
    let spec = DomainSpec::paused("lv-vub").extra_device(&format!(
        "    <disk type='vhostuser' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source type='unix' path='{}'/>\n      <target dev='vdz' bus='virtio'/>\n    </disk>",
        sock.display()
    ));
    lv.define_and_start(&spec);
    let (xml, scrapes) = xml_and_both_scrapes(&lv, "lv-vub", "domain-vhostuser.xml");
    for all in &scrapes {
        let vub = all
            .iter()
            .find(|s| {
                s.name == "kvmio_qemu_device_info"
                    && s.labels["vm"] == "lv-vub"
                    && s.labels["storage_mode"] == "vhost-user-blk"
            })
            .unwrap_or_else(|| panic!("no vhost-user-blk row:\n{xml}"));
        assert_eq!(vub.labels["socket"], sock.to_string_lossy());
    }
    let rows = scrapes.map(|all| device_rows(&all, "lv-vub"));
    assert_eq!(rows[0], rows[1], "XML vs QOM\n{xml}");
}

/// What libvirt makes of devices this machine cannot start (no SCSI device for a `lun`, no
/// vfio for a PCI host device): defined, never started, its XML as libvirt normalised it
/// (controller models and addresses filled in; user aliases `ua-*` kept, as QEMU's device ids).
/// `KVMIO_CAPTURE_LIBVIRT=DIR` writes it as `domain-lun-hostdev.xml` (an exporter fixture).
#[test]
fn lun_and_pci_hostdev_as_libvirt_defines_them() {
    // No VM, but libvirtd probes QEMU at start: not beside the timing-sensitive tests.
    let _slot = vm_slot();
    let lv = Libvirtd::start();
    let spec = DomainSpec::paused("lv-defined")
        .extra_device("    <controller type='scsi' index='0' model='virtio-scsi'/>")
        .extra_device(
            "    <disk type='block' device='lun'>\n      <driver name='qemu' type='raw'/>\n      <source dev='/dev/kvmio-no-such-lun'/>\n      <target dev='sdz' bus='scsi'/>\n      <alias name='ua-lun0'/>\n    </disk>",
        )
        .extra_device(
            "    <hostdev mode='subsystem' type='pci' managed='yes'>\n      <source>\n        <address domain='0x0000' bus='0x07' slot='0x00' function='0x0'/>\n      </source>\n      <alias name='ua-vfio0'/>\n    </hostdev>",
        );
    lv.define(&spec);
    let xml = dumpxml_captured(
        &lv,
        &["dumpxml", "--inactive", "lv-defined"],
        "domain-lun-hostdev.xml",
    );
    for kept in [
        "device='lun'",
        "<alias name='ua-lun0'/>",
        "<alias name='ua-vfio0'/>",
    ] {
        assert!(xml.contains(kept), "{kept} not kept:\n{xml}");
    }
}
