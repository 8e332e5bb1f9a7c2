//! A domain's QEMU layer from what libvirt gives without touching QEMU's monitor itself: the bulk
//! block statistics (`virConnectGetAllDomainStats` with `VIR_DOMAIN_STATS_BLOCK` and
//! `..._BACKING`, what `virsh domstats --block --backing` prints) joined with the live domain
//! XML's disks, as the same [`QmpSnapshot`] a monitor socket yields, so that collectors, the join,
//! rules and dashboards do not care where a VM came from.
//!
//! libvirt's statistics per disk (libvirt reads them from QEMU's `query-blockstats` and
//! `query-named-block-nodes`): `rd.reqs`, `rd.bytes`, `rd.times` (ns), the same for `wr`, and
//! `fl.reqs`, `fl.times`; per image of the chain `path`, `capacity` (virtual size) and `physical`
//! (QEMU's `actual-size`: allocated bytes on the host). That is all: merged requests, discards,
//! failed and invalid operations, idle time and per-node figures need the monitor
//! (`--libvirt.qmp-passthrough`); the snapshot says so with [`QemuOrigin::LibvirtStats`] and the
//! collector leaves those families out rather than exporting zeros.
//!
//! Why over 500 lines: about 370 are code, the rest tests over libvirt's captured statistics
//! and domain XML (every bus and storage mode), beside the mapping they check.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kvmio_qemu::types::{BlockDeviceInfo, BlockDeviceStats, BlockInfo, BlockStats, ImageInfo};
use kvmio_qemu::CacheMode;

use super::domxml::{DiskXml, DomainXml};
use super::ffi::Params;
use crate::vm::cmdline::DriveConfig;
use crate::vm::qmp::{ConfiguredDisk, OtherDevice, QemuOrigin, QmpSnapshot, RunState};

/// At most this many images per disk's backing chain.
pub const MAX_CHAIN: usize = 32;

/// One image of a disk's chain in libvirt's block statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainImage {
    pub path: String,
    pub capacity: Option<u64>,
    pub physical: Option<u64>,
}

/// One operation's entries in libvirt's block statistics (`rd.*`, `wr.*`, `fl.*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpStats {
    /// `reqs`: requests completed.
    pub reqs: Option<u64>,
    /// `bytes` (libvirt has none for flushes).
    pub bytes: Option<u64>,
    /// `times`: their total time, in ns.
    pub times_ns: Option<u64>,
}

impl OpStats {
    /// `PREFIX.reqs`, `PREFIX.bytes`, `PREFIX.times` through `get`.
    fn read(prefix: &str, get: impl Fn(&str) -> Option<u64>) -> OpStats {
        OpStats {
            reqs: get(&format!("{prefix}.reqs")),
            bytes: get(&format!("{prefix}.bytes")),
            times_ns: get(&format!("{prefix}.times")),
        }
    }
}

/// One disk's entries in libvirt's block statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Reads, writes and flushes.
    pub rd: OpStats,
    pub wr: OpStats,
    pub fl: OpStats,
    /// The top image first, then its backing images.
    pub chain: Vec<ChainImage>,
}

impl DiskStats {
    fn has_io(&self) -> bool {
        [self.rd, self.wr, self.fl]
            .iter()
            .any(|op| op.reqs.is_some())
    }
}

/// Groups `block.<n>.*` parameters by disk name (`block.<n>.name`, libvirt's target). With
/// `..._BACKING` libvirt lists every image of a chain as its own entry with the disk's name,
/// top image first: later entries of a name are its backing images.
pub fn disk_stats(params: &Params) -> BTreeMap<String, DiskStats> {
    // block.<n>.<key> -> value, per n.
    let mut entries: BTreeMap<usize, HashMap<&str, &super::ffi::Value>> = BTreeMap::new();
    for (field, value) in &params.params {
        let Some(rest) = field.strip_prefix("block.") else {
            continue;
        };
        let Some((n, key)) = rest.split_once('.') else {
            continue;
        };
        let Ok(n) = n.parse::<usize>() else {
            continue;
        };
        entries.entry(n).or_default().insert(key, value);
    }
    let mut out: BTreeMap<String, DiskStats> = BTreeMap::new();
    for fields in entries.values() {
        let Some(name) = fields.get("name").and_then(|v| v.as_str()) else {
            continue;
        };
        let u = |k: &str| fields.get(k).and_then(|v| v.as_u64());
        let disk = out.entry(name.to_owned()).or_default();
        if disk.chain.len() >= MAX_CHAIN {
            continue;
        }
        if disk.chain.is_empty() {
            disk.rd = OpStats::read("rd", u);
            disk.wr = OpStats::read("wr", u);
            disk.fl = OpStats::read("fl", u);
        }
        disk.chain.push(ChainImage {
            path: fields
                .get("path")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned(),
            capacity: u("capacity"),
            physical: u("physical"),
        });
    }
    out
}

/// `i64` for QEMU's types (libvirt's counters are QEMU's `int`s to begin with).
fn i(v: Option<u64>) -> i64 {
    v.map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// The `bus` label for libvirt's `<target bus>`, as QMP's device types name them.
pub fn bus_label(bus: &str) -> &str {
    match bus {
        "sata" | "ide" => "ide",
        "fdc" => "floppy",
        other => other,
    }
}

/// libvirt's `cache` attribute as a QEMU cache mode; libvirt passes no cache option when it is
/// absent or `default`, and QEMU's default is `writeback`.
pub fn configured_cache_mode(cache: &str) -> Option<CacheMode> {
    match cache {
        "" | "default" => Some(CacheMode::Writeback),
        "none" => Some(CacheMode::None),
        "writeback" => Some(CacheMode::Writeback),
        "writethrough" => Some(CacheMode::Writethrough),
        "directsync" => Some(CacheMode::Directsync),
        "unsafe" => Some(CacheMode::Unsafe),
        _ => None,
    }
}

/// The `device` label of a libvirt disk: its alias (QEMU's device id), else its target.
pub fn device_label(disk: &DiskXml) -> &str {
    if disk.alias.is_empty() {
        &disk.target
    } else {
        &disk.alias
    }
}

/// Each disk's configuration from the XML, by `device` label (also used beside the monitor's own
/// snapshot with `--libvirt.qmp-passthrough`).
pub fn configured(disks: &[DiskXml]) -> HashMap<String, Arc<ConfiguredDisk>> {
    disks
        .iter()
        .filter(|d| !device_label(d).is_empty())
        .map(|disk| {
            let c = ConfiguredDisk {
                drive: DriveConfig {
                    cache_mode: configured_cache_mode(&disk.cache),
                    aio: (!disk.io.is_empty()).then(|| disk.io.clone()),
                    discard: (!disk.discard.is_empty()).then(|| disk.discard.clone()),
                    // A SCSI disk runs in its controller's iothread.
                    iothread: disk.facts.iothread.clone(),
                },
                bus: bus_label(&disk.bus).to_owned(),
                protocol_driver: disk.protocol_driver(),
                facts: disk.facts.clone(),
            };
            (device_label(disk).to_owned(), Arc::new(c))
        })
        .collect()
}

/// The domain's state and reason from the statistics' `state.state` and `state.reason`
/// (`VIR_DOMAIN_STATS_STATE`: what `virDomainGetState` returns), named as `virsh domstate
/// --reason` names them; a number libvirt may add later stays a number.
pub fn run_state(params: &Params) -> Option<RunState> {
    let state = params.get("state.state")?.as_u64()?;
    let reason = params
        .get("state.reason")
        .and_then(|r| r.as_u64())
        .unwrap_or(0);
    const STATES: [&str; 8] = [
        "nostate",
        "running",
        "blocked",
        "paused",
        "shutdown",
        "shutoff",
        "crashed",
        "pmsuspended",
    ];
    // virDomainRunningReason and virDomainPausedReason (libvirt-domain.h).
    const RUNNING: [&str; 12] = [
        "unknown",
        "booted",
        "migrated",
        "restored",
        "from_snapshot",
        "unpaused",
        "migration_canceled",
        "save_canceled",
        "wakeup",
        "crashed",
        "postcopy",
        "postcopy_failed",
    ];
    const PAUSED: [&str; 15] = [
        "unknown",
        "user",
        "migration",
        "save",
        "dump",
        "ioerror",
        "watchdog",
        "from_snapshot",
        "shutting_down",
        "snapshot",
        "crashed",
        "starting_up",
        "postcopy",
        "postcopy_failed",
        "api_error",
    ];
    let name = |list: &[&str], i: u64| {
        usize::try_from(i)
            .ok()
            .and_then(|i| list.get(i))
            .map_or_else(|| i.to_string(), |s| (*s).to_owned())
    };
    let reason = match state {
        1 => name(&RUNNING, reason),
        3 => name(&PAUSED, reason),
        _ => reason.to_string(),
    };
    Some(RunState {
        state: name(&STATES, state),
        reason,
    })
}

/// Builds a domain's QEMU-layer snapshot from its XML and libvirt's statistics. Disks without
/// a source (an empty CD-ROM tray) are listed without a medium, as in `query-block`; a
/// vhost-user disk (served by another process) and PCI host devices are devices without a
/// backend here, as the socket source lists them from QOM.
pub fn snapshot(xml: &DomainXml, stats: &BTreeMap<String, DiskStats>) -> QmpSnapshot {
    let disks = &xml.disks;
    let mut other = Vec::new();
    for disk in disks.iter().filter(|d| d.source_type == "vhostuser") {
        other.push(OtherDevice {
            id: device_label(disk).to_owned(),
            model: disk.facts.model.clone().unwrap_or_default(),
            socket: disk.source.clone(),
        });
    }
    for alias in &xml.pci_hostdevs {
        other.push(OtherDevice {
            id: alias.clone(),
            model: "vfio-pci".to_owned(),
            socket: String::new(),
        });
    }
    let mut snap = QmpSnapshot {
        origin: QemuOrigin::LibvirtStats,
        configured: configured(disks),
        other_devices: Arc::new(other),
        ..QmpSnapshot::default()
    };
    for disk in disks.iter().filter(|d| d.source_type != "vhostuser") {
        let label = device_label(disk);
        if label.is_empty() {
            continue;
        }
        let s = stats.get(&disk.target);
        let removable = matches!(disk.device.as_str(), "cdrom" | "floppy");
        if disk.source.is_empty() {
            snap.block.push(BlockInfo {
                device: label.to_owned(),
                removable,
                ..BlockInfo::default()
            });
            continue;
        }
        if let Some(s) = s.filter(|s| s.has_io()) {
            snap.blockstats.push(BlockStats {
                device: Some(label.to_owned()),
                stats: BlockDeviceStats {
                    rd_operations: i(s.rd.reqs),
                    rd_bytes: i(s.rd.bytes),
                    rd_total_time_ns: i(s.rd.times_ns),
                    wr_operations: i(s.wr.reqs),
                    wr_bytes: i(s.wr.bytes),
                    wr_total_time_ns: i(s.wr.times_ns),
                    flush_operations: i(s.fl.reqs),
                    flush_total_time_ns: i(s.fl.times_ns),
                    ..BlockDeviceStats::default()
                },
                ..BlockStats::default()
            });
        }
        // The image chain as query-block nests it (top first), for the images whose size
        // libvirt reported: an image without one is left out, not exported as size 0.
        let chain: Vec<&ChainImage> = s
            .map(|s| {
                s.chain
                    .iter()
                    .take_while(|c| c.capacity.is_some())
                    .collect()
            })
            .unwrap_or_default();
        let mut image: Option<ImageInfo> = None;
        for (depth, c) in chain.iter().enumerate().rev() {
            let path = if depth == 0 && c.path.is_empty() {
                disk.source.clone()
            } else {
                c.path.clone()
            };
            image = Some(ImageInfo {
                filename: path,
                format: if depth == 0 {
                    disk.format.clone()
                } else {
                    String::new()
                },
                virtual_size: i(c.capacity),
                actual_size: c.physical.map(|p| i(Some(p))),
                backing_image: image.map(Box::new),
                ..ImageInfo::default()
            });
        }
        snap.block.push(BlockInfo {
            device: label.to_owned(),
            inserted: Some(BlockDeviceInfo {
                file: disk.source.clone(),
                drv: disk.format.clone(),
                ro: disk.readonly,
                detect_zeroes: if disk.detect_zeroes.is_empty() {
                    "off".to_owned()
                } else {
                    disk.detect_zeroes.clone()
                },
                image,
                ..BlockDeviceInfo::default()
            }),
            removable,
            ..BlockInfo::default()
        });
    }
    snap
}

#[cfg(test)]
mod tests {
    use super::super::ffi::Value;
    use super::*;

    fn params(list: &[(&str, Value)]) -> Params {
        Params {
            params: list
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            dropped: 0,
        }
    }

    /// `virsh domstats` text (`  key=value` lines) as typed parameters: numbers as ULLONG.
    fn from_virsh(text: &str) -> Params {
        let params = text
            .lines()
            .filter_map(|l| l.trim().split_once('='))
            .map(|(k, v)| {
                let value = v
                    .parse::<u64>()
                    .map(Value::UInt)
                    .unwrap_or_else(|_| Value::Str(v.to_owned()));
                (k.to_owned(), value)
            })
            .collect();
        Params { params, dropped: 0 }
    }

    /// libvirt 9.0's own answers for a lab domain (captured by tests/libvirt.rs).
    #[test]
    fn captured_libvirt_domain() {
        let stats = from_virsh(include_str!(
            "../../../tests/fixtures/libvirt/domstats-block-backing.txt"
        ));
        let xml = super::super::domxml::parse(include_str!(
            "../../../tests/fixtures/libvirt/domain-live.xml"
        ))
        .unwrap();
        let per_disk = disk_stats(&stats);
        assert_eq!(per_disk.len(), 2);
        let snap = snapshot(&xml, &per_disk);
        let labels: Vec<&str> = snap.block.iter().map(|b| b.device.as_str()).collect();
        assert_eq!(labels, vec!["virtio-disk0", "virtio-disk1"]);
        assert_eq!(snap.blockstats[0].stats.rd_operations, 4);
        assert_eq!(snap.blockstats[1].stats.rd_bytes, 12288);
        let image = snap.block[0]
            .inserted
            .as_ref()
            .unwrap()
            .image
            .as_ref()
            .unwrap();
        assert_eq!(image.virtual_size, 67108864);
        assert_eq!(image.actual_size, Some(204800));
        assert!(image.filename.ends_with("vda.qcow2"));
        assert_eq!(
            snap.configured["virtio-disk1"].drive.cache_mode,
            Some(CacheMode::Writeback)
        );
    }

    #[test]
    fn run_states() {
        let captured = from_virsh(include_str!(
            "../../../tests/fixtures/libvirt/domstats-block-backing.txt"
        ));
        assert_eq!(
            run_state(&captured),
            Some(RunState {
                state: "running".into(),
                reason: "booted".into()
            })
        );
        let paused = params(&[
            ("state.state", Value::Int(3)),
            ("state.reason", Value::Int(5)),
        ]);
        assert_eq!(run_state(&paused).unwrap().reason, "ioerror");
        assert_eq!(run_state(&params(&[])), None);
    }

    #[test]
    fn chain_entries_group_by_name_top_first() {
        let p = params(&[
            ("block.count", Value::UInt(3)),
            ("block.0.name", Value::Str("vda".into())),
            ("block.0.path", Value::Str("/img/top.qcow2".into())),
            ("block.0.backingIndex", Value::UInt(2)),
            ("block.0.wr.reqs", Value::UInt(7)),
            ("block.0.capacity", Value::UInt(1 << 30)),
            ("block.0.physical", Value::UInt(4096)),
            ("block.1.name", Value::Str("vda".into())),
            ("block.1.path", Value::Str("/img/base.qcow2".into())),
            ("block.1.backingIndex", Value::UInt(1)),
            ("block.1.capacity", Value::UInt(1 << 30)),
            ("block.2.name", Value::Str("vdb".into())),
            ("block.2.rd.reqs", Value::UInt(3)),
        ]);
        let s = disk_stats(&p);
        assert_eq!(s.len(), 2);
        let vda = &s["vda"];
        assert_eq!(vda.wr.reqs, Some(7));
        assert_eq!(vda.chain.len(), 2);
        assert_eq!(vda.chain[1].path, "/img/base.qcow2");
        assert_eq!(s["vdb"].rd.reqs, Some(3));
    }

    #[test]
    fn snapshot_labels_by_alias_and_keeps_the_configuration() {
        let disks = DomainXml {
            disks: vec![DiskXml {
                target: "vda".into(),
                bus: "sata".into(),
                alias: "sata0-0-0".into(),
                source_type: "file".into(),
                source: "/img/top.qcow2".into(),
                format: "qcow2".into(),
                cache: "unsafe".into(),
                ..DiskXml::default()
            }],
            ..DomainXml::default()
        };
        let mut stats = BTreeMap::new();
        stats.insert(
            "vda".to_owned(),
            DiskStats {
                wr: OpStats {
                    reqs: Some(5),
                    ..OpStats::default()
                },
                chain: vec![ChainImage {
                    path: "/img/top.qcow2".into(),
                    capacity: Some(100),
                    physical: Some(50),
                }],
                ..DiskStats::default()
            },
        );
        let snap = snapshot(&disks, &stats);
        assert_eq!(snap.blockstats[0].device.as_deref(), Some("sata0-0-0"));
        assert_eq!(snap.blockstats[0].stats.wr_operations, 5);
        let inserted = snap.block[0].inserted.as_ref().unwrap();
        assert_eq!(inserted.image.as_ref().unwrap().actual_size, Some(50));
        let c = &snap.configured["sata0-0-0"];
        assert_eq!(c.drive.cache_mode, Some(CacheMode::Unsafe));
        assert_eq!(c.bus, "ide");
        assert_eq!(c.protocol_driver, "file");
    }
}

#[cfg(test)]
mod storage_modes {
    use super::*;

    /// The snapshot of a captured domain XML, `tests/fixtures/libvirt/NAME`.
    macro_rules! captured {
        ($name:literal) => {
            snapshot(
                &super::super::domxml::parse(include_str!(concat!(
                    "../../../tests/fixtures/libvirt/",
                    $name
                )))
                .unwrap(),
                &BTreeMap::new(),
            )
        };
    }

    /// libvirt 9.0's live XML of tests/libvirt.rs's `lv-modes` domain (virtio disks with and
    /// without an iothread, virtio-scsi with an iothread, lsilogic, SATA, USB, an empty IDE
    /// CD-ROM):
    /// the model, storage mode and iothread QEMU's QOM tree gave for the same domain.
    #[test]
    fn captured_domain_with_every_bus() {
        let snap = captured!("domain-storage-modes.xml");
        let row = |device: &str| {
            let c = &snap.configured[device];
            (
                c.facts.model.clone().unwrap_or_default(),
                c.facts.storage_mode().to_owned(),
                c.bus.clone(),
                c.facts.iothread.clone().unwrap_or_default(),
            )
        };
        let expect = [
            (
                "virtio-disk0",
                "virtio-blk-pci",
                "virtio-blk-dataplane",
                "virtio",
                "iothread1",
            ),
            ("virtio-disk1", "virtio-blk-pci", "virtio-blk", "virtio", ""),
            (
                "scsi0-0-0-2",
                "scsi-hd",
                "virtio-scsi-dataplane",
                "scsi",
                "iothread2",
            ),
            ("scsi1-0-3", "scsi-hd", "scsi", "scsi", ""),
            ("sata0-0-2", "ide-hd", "ide", "ide", ""),
            ("usb-disk3", "usb-storage", "usb", "usb", ""),
            ("ide0-1-0", "ide-cd", "ide", "ide", ""),
        ];
        for (device, model, mode, bus, iothread) in expect {
            assert_eq!(
                row(device),
                (model.into(), mode.into(), bus.into(), iothread.into()),
                "{device}"
            );
        }
        assert_eq!(snap.configured.len(), expect.len());
        let scsi = &snap.configured["scsi0-0-0-2"].facts;
        assert_eq!(scsi.controller.as_deref(), Some("virtio-scsi-pci"));
        assert_eq!(
            snap.configured["scsi1-0-3"].facts.controller.as_deref(),
            Some("lsi53c895a")
        );
        // A SCSI disk's drive runs in its controller's iothread (kvmio_qemu_block_info).
        assert_eq!(
            snap.configured["scsi0-0-0-2"].drive.iothread.as_deref(),
            Some("iothread2")
        );
        let cd = snap.block.iter().find(|b| b.device == "ide0-1-0").unwrap();
        assert!(cd.inserted.is_none() && cd.removable);
        assert!(snap.other_devices.is_empty());
    }

    /// libvirt 9.0's live XML of a `<disk type='vhostuser'>` on a qemu-storage-daemon export
    /// (tests/libvirt.rs's `lv-vub`): a device without a backend here, with its socket, as QOM
    /// lists it; the domain's other disks keep their backends.
    #[test]
    fn captured_vhost_user_disk() {
        let snap = captured!("domain-vhostuser.xml");
        assert_eq!(
            snap.other_devices.as_slice(),
            &[OtherDevice {
                id: "virtio-disk25".into(),
                model: "vhost-user-blk-pci".into(),
                socket: "/tmp/kvmio-e2e-vub9165c4/vub.sock".into(),
            }]
        );
        assert!(snap.block.iter().all(|b| b.device != "virtio-disk25"));
        assert_eq!(
            snap.configured["virtio-disk25"].facts.storage_mode(),
            "vhost-user-blk"
        );
        assert!(snap.block.iter().any(|b| b.device == "virtio-disk0"));
    }

    /// libvirt 9.0's XML of a defined domain with a `device='lun'` disk and a PCI host device
    /// (tests/libvirt.rs; neither can start on the test machine): libvirt put the lun, target
    /// `sdz`, on an lsilogic controller it added (index 3); it is SCSI passthrough whatever the
    /// controller, and the host device is QEMU's vfio-pci.
    #[test]
    fn captured_lun_and_pci_hostdev() {
        let snap = captured!("domain-lun-hostdev.xml");
        let lun = &snap.configured["ua-lun0"].facts;
        assert_eq!(lun.model.as_deref(), Some("scsi-block"));
        assert_eq!(lun.controller.as_deref(), Some("lsi53c895a"));
        assert_eq!(lun.storage_mode(), "scsi-passthrough");
        assert_eq!(
            snap.other_devices.as_slice(),
            &[OtherDevice {
                id: "ua-vfio0".into(),
                model: "vfio-pci".into(),
                socket: String::new(),
            }]
        );
    }
}
