//! VM labels are distinct and stable whatever the VMs' names, against real QEMUs.
//!
//! Eight paused q35 QEMUs (`-S`, no guest: cheap), each with one virtio-blk disk on an image of
//! its own, whose names collide in every way issue 9 lists: `-name dup` twice, a VM literally
//! named `dup@dup2` (the label a suffix rule would give the second `dup`), two names of 300
//! bytes that only differ after the 256-byte label limit, two VMs without `-name` whose sockets
//! have the same stem in two directories, and one name with a character the label sanitiser
//! removes. The real `kvmio-exporter` binary scrapes them. Checked against what QMP itself
//! reports (`query-name`, asked by the test before the exporter starts): one `kvmio_vm_info` per
//! QEMU, each `vm` label distinct; `name` is QMP's name (sanitised and cut like any label), or
//! the stem without one; `socket` its monitor; every VM's `kvmio_qmp_up` is 1 and its
//! `kvmio_disk_layer_info` names its own image and no other VM's. Then stability: the same
//! labels at the next scrape, after another VM of the same name stops and starts again, and
//! from a restarted exporter. promtool checks every answer.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::procs::{self, Proc};
use kvmio_test_support::metrics::{parse, scrape, Series};
use kvmio_test_support::qemu::qemu_q35;
use kvmio_test_support::vm_slot;

/// The label limit of the exporter (`metrics::MAX_LABEL_VALUE_BYTES`).
const MAX_LABEL: usize = 256;

struct Vm {
    socket: PathBuf,
    image: PathBuf,
    name: Option<String>,
    proc_: Option<Proc>,
}

/// A paused q35 QEMU with one virtio-blk disk on `image`; monitor at `socket`.
fn start_q35(socket: &Path, image: &Path, name: Option<&str>) -> Proc {
    if !image.exists() {
        std::fs::File::create(image)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
    }
    let mut extra = vec![
        "-drive".to_owned(),
        format!(
            "if=none,id=d0,file={},format=raw,cache=none",
            image.display()
        ),
        "-device".to_owned(),
        "virtio-blk-pci,drive=d0,id=vd0".to_owned(),
    ];
    if let Some(n) = name {
        extra.extend(["-name".to_owned(), n.to_owned()]);
    }
    qemu_q35(socket, &extra)
}

/// What QMP says the VM is called (`query-name`).
fn qmp_name(socket: &Path) -> Option<String> {
    common::qmp_execute(socket, "query-name", None)["name"]
        .as_str()
        .map(str::to_owned)
}

/// The label a name becomes: control characters removed, cut at 256 bytes on a character
/// boundary (`metrics::sanitize_label_value`).
fn as_label(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_LABEL {
            break;
        }
        out.push(c);
    }
    out
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}

/// `socket path -> vm label` from `kvmio_vm_info`, after checking every VM's series.
fn check(body: &str, vms: &[&Vm]) -> BTreeMap<PathBuf, String> {
    common::promtool_check(body, "names");
    let all = parse(body);
    let info: Vec<&Series> = all.iter().filter(|s| s.name == "kvmio_vm_info").collect();
    assert_eq!(
        info.len(),
        vms.len(),
        "one kvmio_vm_info per QEMU: {info:#?}"
    );
    let labels: BTreeSet<&str> = info.iter().map(|s| s.labels["vm"].as_str()).collect();
    assert_eq!(labels.len(), vms.len(), "distinct vm labels: {labels:#?}");
    let mut out = BTreeMap::new();
    for vm in vms {
        let socket = vm.socket.display().to_string();
        let s = info
            .iter()
            .find(|s| s.labels["socket"] == socket)
            .unwrap_or_else(|| panic!("no kvmio_vm_info{{socket={socket:?}}}"));
        let want_name = as_label(vm.name.as_deref().unwrap_or(&stem(&vm.socket)));
        assert_eq!(s.labels["name"], want_name, "{socket}: name");
        assert_eq!(s.labels["source"], "socket");
        let label = s.labels["vm"].clone();
        assert!(label.len() <= MAX_LABEL, "{label}");
        assert!(
            label == want_name || label.contains('@'),
            "{socket}: {label:?} is neither its name nor a suffixed one"
        );
        let up = all
            .iter()
            .find(|x| x.name == "kvmio_qmp_up" && x.labels["vm"] == label)
            .unwrap_or_else(|| panic!("no kvmio_qmp_up for {label:?}"));
        assert_eq!(up.value, 1.0, "{label}: qmp up");
        let images: Vec<&str> = all
            .iter()
            .filter(|x| x.name == "kvmio_disk_layer_info" && x.labels["vm"] == label)
            .map(|x| x.labels["image"].as_str())
            .collect();
        assert_eq!(
            images,
            vec![vm.image.to_str().unwrap()],
            "{label}: its own image, and only it"
        );
        out.insert(vm.socket.clone(), label);
    }
    out
}

#[test]
fn colliding_names_get_distinct_stable_labels() {
    let _slot = vm_slot();
    let dir = kvmio_test_support::target_tempdir!("kvmio-names");
    let d = dir.path();
    std::fs::create_dir_all(d.join("a")).unwrap();
    std::fs::create_dir_all(d.join("b")).unwrap();
    let long = "n".repeat(MAX_LABEL);
    let specs: Vec<(&str, Option<String>)> = vec![
        ("a/dup1", Some("dup".to_owned())),
        ("a/dup2", Some("dup".to_owned())),
        ("a/lit", Some("dup@dup2".to_owned())),
        ("a/long1", Some(format!("{long}-one-{}", "x".repeat(40)))),
        ("a/long2", Some(format!("{long}-two-{}", "x".repeat(40)))),
        ("a/same", None),
        ("b/same", None),
        // The tab is removed from the label (`webdb`).
        ("b/tab", Some("web\tdb".to_owned())),
    ];
    let mut vms: Vec<Vm> = specs
        .iter()
        .map(|(path, name)| {
            let socket = d.join(format!("{path}.qmp"));
            let image = d.join(format!("{path}.raw"));
            let p = start_q35(&socket, &image, name.as_deref());
            Vm {
                socket,
                image,
                name: name.clone(),
                proc_: Some(p),
            }
        })
        .collect();
    // What QMP reports is what the test expects as `name`.
    for vm in &vms {
        assert_eq!(qmp_name(&vm.socket), vm.name, "{}", vm.socket.display());
    }

    let args = vec![
        format!("--qmp.socket-glob={}/a/*.qmp", d.display()),
        format!("--qmp.socket-glob={}/b/*.qmp", d.display()),
        "--scrape.timeout=20s".to_owned(),
    ];
    let (exporter, addr) = procs::exporter(&args, &d.join("exporter.log"));
    let all: Vec<&Vm> = vms.iter().collect();
    let first = check(&scrape(&addr), &all);
    eprintln!("labels: {first:#?}");
    let label = |p: &str| first[&d.join(format!("{p}.qmp"))].clone();
    // Own names where free; the literal `dup@dup2` keeps its own name.
    assert_eq!(label("a/dup1"), "dup");
    assert_eq!(label("a/lit"), "dup@dup2");
    assert!(label("a/dup2").starts_with("dup@"));
    assert_eq!(label("a/long1"), long);
    assert_eq!(
        label("a/long2"),
        format!("{}@long2", &long[..MAX_LABEL - 6])
    );
    assert_eq!(label("a/same"), "same");
    assert!(label("b/same").starts_with("same@"));
    assert_eq!(label("b/tab"), "webdb");
    // The next scrape: the same.
    assert_eq!(check(&scrape(&addr), &all), first);

    // `a/dup1` (holding `dup`) stops and its socket goes: the others keep their labels.
    let gone = vms.remove(0);
    drop(gone.proc_);
    let _ = std::fs::remove_file(&gone.socket);
    let rest: Vec<&Vm> = vms.iter().collect();
    let without = check(&scrape(&addr), &rest);
    for (socket, l) in &without {
        assert_eq!(&first[socket], l, "{} relabelled", socket.display());
    }
    // It starts again: `dup` is free, it gets it back; nobody else moves.
    let back = start_q35(&gone.socket, &gone.image, gone.name.as_deref());
    vms.insert(
        0,
        Vm {
            proc_: Some(back),
            ..gone
        },
    );
    let all: Vec<&Vm> = vms.iter().collect();
    assert_eq!(check(&scrape(&addr), &all), first);

    // A restarted exporter gives the same set of VMs the same labels.
    drop(exporter);
    let (_exporter, addr) = procs::exporter(&args, &d.join("exporter2.log"));
    assert_eq!(check(&scrape(&addr), &all), first);
    for vm in &mut vms {
        drop(vm.proc_.take());
    }
}
