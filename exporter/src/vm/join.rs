//! Guest disk <-> QEMU device.
//!
//! 1. By PCI address: `query-block` names the device model of each backend by its QOM path
//!    (`/machine/peripheral/virtio-disk1/virtio-backend`), whose peripheral id (`virtio-disk1`)
//!    `query-pci` lists with its bus, slot and function; `guest-get-disks` reports the PCI function
//!    of each disk's controller. For virtio-blk the controller *is* the disk, so an address that
//!    exactly one QEMU device and exactly one guest disk share is a match. (A SCSI disk's PCI
//!    function is its HBA's, shared with its siblings, and its own id is not a PCI device: no PCI
//!    match is attempted for it.)
//! 2. By serial, for what is left: the device's `serial` property (QOM) against the serial the
//!    guest reads (needs udev in the guest; absent in kvmio's own test guests). Again only
//!    one-to-one matches count.
//!
//! Bus numbers are those the guest firmware assigned, which QEMU reports too; PCI domains other
//! than 0 (pxb) are not matched.

use std::collections::{BTreeMap, HashMap};

use kvmio_qemu::types::{GuestDiskInfo, PciFunction};

/// The peripheral id in a `qdev` QOM path (`/machine/peripheral/ID/...` -> `ID`), or the qdev
/// itself when QEMU reported a bare id (older QEMU). Anonymous devices
/// (`/machine/peripheral-anon/...`) have none.
pub fn qdev_id(qdev: &str) -> Option<&str> {
    if let Some(rest) = qdev.strip_prefix("/machine/peripheral/") {
        return rest.split('/').next().filter(|s| !s.is_empty());
    }
    (!qdev.starts_with('/') && !qdev.is_empty()).then_some(qdev)
}

/// A guest disk's kernel name: `/dev/vda` -> `vda`.
pub fn guest_disk_name(name: &str) -> &str {
    name.strip_prefix("/dev/").unwrap_or(name)
}

/// One QEMU device, as the join sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKey<'a> {
    /// The `device` label.
    pub device: &'a str,
    /// Its qdev path, if attached to a device model.
    pub qdev: Option<&'a str>,
    /// The `serial` property, if known and non-empty.
    pub serial: Option<&'a str>,
}

/// Matches guest disks to devices: `device label -> guest disk name` (`vdb`).
pub fn match_disks(
    devices: &[DeviceKey<'_>],
    pci: &[PciFunction],
    guest: &[GuestDiskInfo],
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let whole: Vec<&GuestDiskInfo> = guest.iter().filter(|d| !d.partition).collect();

    // PCI address -> devices / guest disks there.
    let mut dev_at: HashMap<(i64, i64, i64), Vec<&str>> = HashMap::new();
    for d in devices {
        let Some(id) = d.qdev.and_then(qdev_id) else {
            continue;
        };
        if let Some(f) = pci.iter().find(|f| f.qdev_id == id) {
            dev_at
                .entry((f.bus, f.slot, f.function))
                .or_default()
                .push(d.device);
        }
    }
    let mut guest_at: HashMap<(i64, i64, i64), Vec<&str>> = HashMap::new();
    for g in &whole {
        let Some(addr) = &g.address else { continue };
        let a = addr.pci_controller;
        if a.is_valid() && a.domain == 0 {
            guest_at
                .entry((a.bus, a.slot, a.function))
                .or_default()
                .push(guest_disk_name(&g.name));
        }
    }
    for (at, devs) in &dev_at {
        if let (1, Some(gs)) = (devs.len(), guest_at.get(at)) {
            if gs.len() == 1 {
                out.insert(devs[0].to_owned(), gs[0].to_owned());
            }
        }
    }

    // Serials, for devices and disks not matched yet.
    let matched: Vec<&str> = out.values().map(String::as_str).collect();
    let mut dev_serial: HashMap<&str, Vec<&str>> = HashMap::new();
    for d in devices {
        if out.contains_key(d.device) {
            continue;
        }
        if let Some(s) = d.serial.map(str::trim).filter(|s| !s.is_empty()) {
            dev_serial.entry(s).or_default().push(d.device);
        }
    }
    let mut guest_serial: HashMap<&str, Vec<&str>> = HashMap::new();
    for g in &whole {
        let name = guest_disk_name(&g.name);
        if matched.contains(&name) {
            continue;
        }
        if let Some(s) = g
            .address
            .as_ref()
            .and_then(|a| a.serial.as_deref())
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            guest_serial.entry(s).or_default().push(name);
        }
    }
    for (serial, devs) in dev_serial {
        if let (1, Some(gs)) = (devs.len(), guest_serial.get(serial)) {
            if gs.len() == 1 {
                out.insert(devs[0].to_owned(), gs[0].to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmio_qemu::types::{flatten_pci, PciInfo};

    fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
        let path = format!(
            "{}/../qemu/tests/fixtures/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        serde_json::from_value(v["return"].clone()).unwrap()
    }

    #[test]
    fn qdev_ids() {
        assert_eq!(
            qdev_id("/machine/peripheral/virtio-disk1/virtio-backend"),
            Some("virtio-disk1")
        );
        assert_eq!(qdev_id("vd0"), Some("vd0"));
        assert_eq!(
            qdev_id("/machine/peripheral-anon/device[3]/virtio-backend"),
            None
        );
        assert_eq!(guest_disk_name("/dev/vdb"), "vdb");
    }

    /// The captured `query-pci` (vd0 at 0:5.0, vd2 behind a bridge at 1:0.0) against guest
    /// disks at those addresses, in `guest-get-disks`' shape.
    #[test]
    fn pci_then_serial() {
        let pci = flatten_pci(&fixture::<Vec<PciInfo>>("query-pci"));
        let guest: Vec<GuestDiskInfo> = serde_json::from_value(serde_json::json!([
            {"name": "/dev/vda", "partition": false, "address": {"bus-type": "virtio",
             "pci-controller": {"domain": 0, "bus": 0, "slot": 5, "function": 0}}},
            {"name": "/dev/vda1", "partition": true, "address": {"bus-type": "virtio",
             "pci-controller": {"domain": 0, "bus": 0, "slot": 5, "function": 0}}},
            {"name": "/dev/vdc", "partition": false, "address": {"bus-type": "virtio",
             "pci-controller": {"domain": 0, "bus": 1, "slot": 0, "function": 0}}},
            {"name": "/dev/sda", "partition": false, "address": {"bus-type": "scsi",
             "serial": "disk-s", "pci-controller": {"domain": 0, "bus": 0, "slot": 9, "function": 0}}},
            {"name": "/dev/sdb", "partition": false, "address": {"bus-type": "scsi",
             "serial": "dup", "pci-controller": {"domain": 0, "bus": 0, "slot": 9, "function": 0}}},
            {"name": "/dev/sdc", "partition": false, "address": {"bus-type": "scsi",
             "serial": "dup", "pci-controller": {"domain": 0, "bus": 0, "slot": 9, "function": 0}}}
        ]))
        .unwrap();
        let devices = [
            DeviceKey {
                device: "d0",
                qdev: Some("/machine/peripheral/vd0/virtio-backend"),
                serial: Some("kvmio-0"),
            },
            DeviceKey {
                device: "d2",
                qdev: Some("/machine/peripheral/vd2/virtio-backend"),
                serial: None,
            },
            DeviceKey {
                device: "s0",
                qdev: Some("/machine/peripheral/sd0"),
                serial: Some("disk-s"),
            },
            DeviceKey {
                device: "s1",
                qdev: Some("/machine/peripheral/sd1"),
                serial: Some("dup"),
            },
            DeviceKey {
                device: "nodev",
                qdev: None,
                serial: None,
            },
        ];
        let m = match_disks(&devices, &pci, &guest);
        assert_eq!(m.get("d0").map(String::as_str), Some("vda"));
        assert_eq!(m.get("d2").map(String::as_str), Some("vdc"));
        assert_eq!(m.get("s0").map(String::as_str), Some("sda"));
        assert_eq!(m.get("s1"), None, "two guest disks claim serial dup");
        assert_eq!(m.len(), 3);
    }
}
