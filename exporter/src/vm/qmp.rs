//! One VM's QMP side as a scrape yields it, whatever the source (a monitor socket, libvirt's
//! statistics and XML, libvirt's monitor passthrough): the snapshot model ([`QmpSnapshot`] and
//! the facts it holds), and the QEMU process's IO from `/proc/PID/io`. What fills it from a
//! monitor is [`super::monitor`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use kvmio_qemu::types::{BlockDeviceInfo, BlockInfo, BlockStats, PciFunction};

use super::cmdline::{DriveConfig, QemuCmdline};

/// QMP replies are QEMU's (trusted more than a guest), but still bounded.
pub(crate) const QMP_MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// Facts about one guest device model, from `qom-get` (static for the device's life).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFacts {
    /// The QOM type of the device the backend is attached to (`virtio-blk-device`, `scsi-hd`,
    /// `ide-hd`, `nvme`...).
    pub type_name: Option<String>,
    /// The device model an operator configured (`-device` driver): the transport proxy of a
    /// virtio backend (`virtio-blk-pci`), `usb-storage` for the SCSI disk inside one, else the
    /// type itself.
    pub model: Option<String>,
    /// The QOM type of the controller whose bus the device sits on, for SCSI disks
    /// (`virtio-scsi-pci`, `lsi53c895a`...).
    pub controller: Option<String>,
    /// The `serial` property, if set.
    pub serial: Option<String>,
    /// The iothread id the device runs in, if any: its own, or (SCSI disks) its controller's.
    pub iothread: Option<String>,
    /// The `write-cache` property (`on`, `off`, `auto`: then the backend's setting).
    pub write_cache: Option<String>,
}

impl DeviceFacts {
    /// The `bus` label: `virtio`, `scsi`, `ide`, `nvme`, `usb`, `floppy`, `xen`, `vhost-user`, the
    /// raw type for anything else, or empty when unknown.
    pub fn bus(&self) -> String {
        let Some(t) = self.type_name.as_deref() else {
            return String::new();
        };
        if self.model.as_deref().is_some_and(|m| m.starts_with("usb-")) {
            return "usb".to_owned();
        }
        bus_of(t).to_owned()
    }

    /// The storage mode ([`storage_mode`]).
    pub fn storage_mode(&self) -> &str {
        let model = self
            .model
            .as_deref()
            .or(self.type_name.as_deref())
            .unwrap_or("");
        storage_mode(
            model,
            self.type_name.as_deref().unwrap_or(model),
            self.controller.as_deref(),
            self.iothread.is_some(),
        )
    }
}

fn bus_of(t: &str) -> &str {
    if t.starts_with("virtio-blk") {
        "virtio"
    } else if t.starts_with("vhost-user-blk") {
        "vhost-user"
    } else if t.starts_with("scsi-") {
        "scsi"
    } else if t.starts_with("ide-") {
        "ide"
    } else if t.starts_with("nvme") {
        "nvme"
    } else if t.starts_with("usb-") {
        "usb"
    } else if t == "floppy" {
        "floppy"
    } else if t.starts_with("xen-") {
        "xen"
    } else {
        t
    }
}

/// The storage mode of a disk as the seed article lists them (threads, dataplane, vhost,
/// passthrough): `virtio-blk`, `virtio-blk-dataplane` (an iothread), `virtio-scsi`,
/// `virtio-scsi-dataplane` (the controller's iothread), `vhost-user-blk`, `vhost-scsi`,
/// `scsi-passthrough` (`scsi-block`, `scsi-generic`), `scsi` (an emulated HBA), `nvme`, `ide`
/// (IDE and AHCI), `usb`, `pci-passthrough` (`vfio-pci`), `floppy`; else the model itself.
pub fn storage_mode<'a>(
    model: &'a str,
    type_name: &'a str,
    controller: Option<&str>,
    iothread: bool,
) -> &'a str {
    if model.starts_with("usb-") {
        return "usb";
    }
    if model.starts_with("vfio-") {
        return "pci-passthrough";
    }
    if model.starts_with("vhost-user-blk") {
        return "vhost-user-blk";
    }
    if model.starts_with("vhost-scsi") || model.starts_with("vhost-user-scsi") {
        return "vhost-scsi";
    }
    if type_name.starts_with("virtio-blk") {
        return if iothread {
            "virtio-blk-dataplane"
        } else {
            "virtio-blk"
        };
    }
    if type_name == "scsi-block" || type_name == "scsi-generic" {
        return "scsi-passthrough";
    }
    if type_name.starts_with("scsi-") {
        return match controller {
            Some(c) if c.starts_with("virtio-scsi") => {
                if iothread {
                    "virtio-scsi-dataplane"
                } else {
                    "virtio-scsi"
                }
            }
            _ => "scsi",
        };
    }
    if type_name.starts_with("nvme") {
        return "nvme";
    }
    if type_name.starts_with("ide-") {
        return "ide";
    }
    if type_name == "floppy" {
        return "floppy";
    }
    model
}

/// A guest device with no block backend in this QEMU (`vhost-user-blk-pci`: its disk is served
/// by another process; `vfio-pci`: a host device passed through), from QEMU's QOM tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OtherDevice {
    /// The `-device id=`, else the QOM path.
    pub id: String,
    /// The QOM type.
    pub model: String,
    /// vhost-user: the chardev's socket path (the storage daemon's export), if known.
    pub socket: String,
}

/// What a block node says about the settings it runs with (`query-named-block-nodes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub drv: String,
    /// The node's filename (plain path for protocol nodes; `json:{...}` for some others).
    pub file: String,
    /// O_DIRECT (`cache.direct`) and `cache.no-flush` of this node.
    pub direct: bool,
    pub no_flush: bool,
    /// `off`, `on` or `unmap`.
    pub detect_zeroes: String,
    /// The throttle group of a `throttle` filter node.
    pub throttle_group: Option<String>,
    /// A qcow2 node's external data file (`data-file` in its format-specific information).
    pub data_file: Option<String>,
}

/// The run state of a VM: QEMU's `RunState` (`running`, `paused`, `prelaunch`, `io-error`...)
/// from `query-status`, or libvirt's domain state and reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunState {
    pub state: String,
    /// libvirt's reason (`ioerror`, `user`...); empty from QMP.
    pub reason: String,
}

/// A throttle group's limits (`-object throttle-group`, read with `qom-get GROUP limits`), in
/// QEMU's property names (`iops-total`, `bps-write`...): 0 is no limit.
pub type ThrottleLimits = std::collections::BTreeMap<String, i64>;

/// Device totals when this exporter set the latency histograms: the `_sum` of each histogram is
/// the latency accounted since.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistogramBase {
    pub rd_total_time_ns: i64,
    pub wr_total_time_ns: i64,
    pub flush_total_time_ns: i64,
}

/// `<procfs>/PID/io` of the QEMU process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessIo {
    /// Bytes the process caused to be read from storage (`read_bytes`).
    pub read_bytes: u64,
    /// Bytes the process caused to be sent to storage (`write_bytes`).
    pub write_bytes: u64,
}

/// Where a VM's QEMU layer came from, which says what it can hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QemuOrigin {
    /// QEMU's monitor (a socket, or libvirt's monitor passthrough): everything QMP has.
    #[default]
    Monitor,
    /// libvirt's bulk block statistics and domain XML ([`crate::vm::libvirt::block`]): per device
    /// only requests, bytes and time of reads, writes and flushes; no nodes, no live cache flags.
    LibvirtStats,
}

/// A disk's configuration as the VM manager set it (libvirt's domain XML), where it is known
/// better than from QEMU's command line (libvirt passes `-blockdev` JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfiguredDisk {
    pub drive: DriveConfig,
    /// The `bus` label.
    pub bus: String,
    /// The protocol driver (`file`, `host_device`, `nbd`, `rbd`...).
    pub protocol_driver: String,
    /// The device as configured (model, SCSI controller, iothread), for a source without
    /// QEMU's device tree (libvirt's domain XML).
    pub facts: DeviceFacts,
}

/// What one scrape learned from a VM's monitor (or, for libvirt domains, from libvirt).
#[derive(Debug, Clone, Default)]
pub struct QmpSnapshot {
    /// What the snapshot can hold.
    pub origin: QemuOrigin,
    /// Per `device` label: configuration from the VM manager (empty for socket VMs).
    pub configured: HashMap<String, Arc<ConfiguredDisk>>,
    /// The QEMU process (monitor socket peer), if known.
    pub pid: Option<u32>,
    pub blockstats: Vec<BlockStats>,
    pub block: Vec<BlockInfo>,
    /// Flattened `query-pci` (empty for VMs without an agent or without PCI).
    pub pci: Arc<Vec<PciFunction>>,
    /// By qdev path.
    pub devices: HashMap<String, Arc<DeviceFacts>>,
    /// Node name -> what it runs with (`query-named-block-nodes`).
    pub nodes: HashMap<String, Arc<NodeFacts>>,
    /// Devices without a block backend here (vhost-user-blk, vfio-pci).
    pub other_devices: Arc<Vec<OtherDevice>>,
    /// Throttle group (`-object throttle-group`) -> limits.
    pub throttle_groups: HashMap<String, Arc<ThrottleLimits>>,
    /// The VM's run state, if known.
    pub run_state: Option<RunState>,
    pub cmdline: Option<Arc<QemuCmdline>>,
    pub process_io: Option<ProcessIo>,
    /// Devices (by `device` label) whose latency histograms this exporter set in an earlier scrape.
    pub histograms: HashMap<String, HistogramBase>,
}

impl QmpSnapshot {
    /// The backends with a medium, each with its `device` label ([`device_label`]).
    pub fn backends(&self) -> impl Iterator<Item = (&str, &BlockInfo, &BlockDeviceInfo)> {
        self.block.iter().filter_map(|b| {
            let inserted = b.inserted.as_ref()?;
            let label = device_label(
                Some(b.device.as_str()),
                b.qdev.as_deref(),
                inserted.node_name.as_deref(),
            );
            Some((label, b, inserted))
        })
    }
}

/// The label QEMU uses for a backend: the `-drive id=`, else the device's qdev id, else the qdev
/// path, else the node name.
pub fn device_label<'a>(
    device: Option<&'a str>,
    qdev: Option<&'a str>,
    node: Option<&'a str>,
) -> &'a str {
    if let Some(d) = device.filter(|d| !d.is_empty()) {
        return d;
    }
    if let Some(q) = qdev.filter(|q| !q.is_empty()) {
        return super::join::qdev_id(q).unwrap_or(q);
    }
    node.unwrap_or("")
}

pub(crate) fn read_process_io(procfs: &Path, pid: u32) -> Option<ProcessIo> {
    let text = std::fs::read_to_string(procfs.join(pid.to_string()).join("io")).ok()?;
    let mut io = ProcessIo::default();
    let mut found = 0;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let Ok(v) = v.trim().parse::<u64>() else {
            continue;
        };
        match k {
            "read_bytes" => {
                io.read_bytes = v;
                found += 1;
            }
            "write_bytes" => {
                io.write_bytes = v;
                found += 1;
            }
            _ => {}
        }
    }
    (found == 2).then_some(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_bus() {
        assert_eq!(
            device_label(
                Some("d0"),
                Some("/machine/peripheral/vd0/virtio-backend"),
                None
            ),
            "d0"
        );
        assert_eq!(
            device_label(
                Some(""),
                Some("/machine/peripheral/vd0/virtio-backend"),
                None
            ),
            "vd0"
        );
        assert_eq!(device_label(None, None, Some("#block1")), "#block1");
        let f = |t: &str| DeviceFacts {
            type_name: Some(t.into()),
            ..DeviceFacts::default()
        };
        assert_eq!(f("virtio-blk-device").bus(), "virtio");
        assert_eq!(f("scsi-hd").bus(), "scsi");
        assert_eq!(f("ide-hd").bus(), "ide");
        assert_eq!(f("nvme-ns").bus(), "nvme");
        assert_eq!(f("sd-card").bus(), "sd-card");
        let usb = DeviceFacts {
            type_name: Some("scsi-hd".into()),
            model: Some("usb-storage".into()),
            ..DeviceFacts::default()
        };
        assert_eq!(usb.bus(), "usb");
        assert_eq!(usb.storage_mode(), "usb");
        let scsi = |iothread: Option<&str>| DeviceFacts {
            type_name: Some("scsi-hd".into()),
            controller: Some("virtio-scsi-pci".into()),
            iothread: iothread.map(str::to_owned),
            ..DeviceFacts::default()
        };
        assert_eq!(scsi(None).storage_mode(), "virtio-scsi");
        assert_eq!(scsi(Some("io1")).storage_mode(), "virtio-scsi-dataplane");
        assert_eq!(f("scsi-block").storage_mode(), "scsi-passthrough");
        assert_eq!(f("nvme").storage_mode(), "nvme");
        assert_eq!(f("ide-cd").storage_mode(), "ide");
        assert_eq!(
            storage_mode("vfio-pci", "vfio-pci", None, false),
            "pci-passthrough"
        );
        assert_eq!(DeviceFacts::default().bus(), "");
    }

    #[test]
    fn process_io() {
        // The layout of /proc/PID/io (proc(5)).
        let dir = crate::testing::file_tree(&[(
            "7/io",
            b"rchar: 21918501\nwchar: 44176672\nsyscr: 11197\nsyscw: 14542\nread_bytes: 15322112\nwrite_bytes: 44126720\ncancelled_write_bytes: 0\n",
        )]);
        assert_eq!(
            read_process_io(dir.path(), 7),
            Some(ProcessIo {
                read_bytes: 15322112,
                write_bytes: 44126720
            })
        );
        assert_eq!(read_process_io(dir.path(), 8), None);
    }
}
