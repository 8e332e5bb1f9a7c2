//! The disks of a live domain XML (`virDomainGetXMLDesc`): what libvirt configured for each one
//! (cache, io, discard, detect_zeroes, iothread, bus, source) and the `alias` it gave the device,
//! which is QEMU's device id and so kvmio's `device` label, the same one QMP gives
//! (`/machine/peripheral/<alias>/...`).
//!
//! The XML is libvirtd's; it is still bounded: at most [`MAX_XML_BYTES`] are parsed, at most
//! [`MAX_DISKS`] disks are kept, and attribute values become labels only through the metric
//! builder's sanitising.

use std::collections::HashMap;

use roxmltree::{Document, Node};

use crate::vm::qmp::DeviceFacts;

/// Longest domain XML parsed.
pub const MAX_XML_BYTES: usize = 4 * 1024 * 1024;

/// At most this many disks per domain.
pub const MAX_DISKS: usize = 256;

/// At most this many SCSI controllers, and as many PCI host devices, per domain.
pub const MAX_CONTROLLERS: usize = 256;

/// One `<disk>` of a running domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskXml {
    /// `<target dev=...>`: libvirt's name (`vda`), the key of its block statistics.
    pub target: String,
    /// `<target bus=...>`: virtio, scsi, sata, ide, usb, fdc...
    pub bus: String,
    /// `<alias name=...>`: the QEMU device id (`virtio-disk0`, `ua-...`).
    pub alias: String,
    /// `device=`: disk, cdrom, floppy, lun.
    pub device: String,
    /// `type=`: file, block, network, volume, nvme, vhostuser...
    pub source_type: String,
    /// The source: a path (`file`, `dev`), or `protocol://host/name` for network disks.
    pub source: String,
    /// `<driver type=...>`: the image format (qcow2, raw).
    pub format: String,
    /// `<driver cache=...>`, empty when libvirt leaves QEMU's default.
    pub cache: String,
    /// `<driver io=...>`: threads, native, io_uring.
    pub io: String,
    /// `<driver discard=...>`: ignore, unmap.
    pub discard: String,
    /// `<driver detect_zeroes=...>`.
    pub detect_zeroes: String,
    /// `<driver iothread=...>`: the iothread number, as libvirt names it in QEMU (`iothread1`).
    pub iothread: String,
    /// `<readonly/>`.
    pub readonly: bool,
    /// The device model libvirt gives QEMU for this disk and, for SCSI disks, the controller
    /// it sits on (with that controller's iothread): the same facts the socket source reads
    /// from QEMU's QOM tree, so both derive the storage mode with [`DeviceFacts::storage_mode`].
    pub facts: DeviceFacts,
}

impl DiskXml {
    /// QEMU's protocol driver for the source type (what `query-blockstats` names the node that
    /// does host IO).
    pub fn protocol_driver(&self) -> String {
        match self.source_type.as_str() {
            "file" => "file".to_owned(),
            "block" => "host_device".to_owned(),
            "nvme" => "nvme".to_owned(),
            "vhostuser" => "vhost-user-blk".to_owned(),
            "network" => self
                .source
                .split_once("://")
                .map(|(p, _)| p.to_owned())
                .unwrap_or_default(),
            _ => String::new(),
        }
    }
}

/// Why a domain XML was not read.
#[derive(Debug, thiserror::Error)]
pub enum DomXmlError {
    #[error("domain XML is {len} bytes, over the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("domain XML does not parse")]
    Parse(#[source] roxmltree::Error),
}

/// What kvmio reads from a domain XML.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainXml {
    /// The disks, in document order.
    pub disks: Vec<DiskXml>,
    /// Disks over [`MAX_DISKS`] and PCI host devices over [`MAX_CONTROLLERS`], not kept.
    pub over: usize,
    /// PCI host devices passed through (`<hostdev mode='subsystem' type='pci'>`: QEMU's
    /// `vfio-pci`), by alias; at most [`MAX_CONTROLLERS`].
    pub pci_hostdevs: Vec<String>,
    /// Whether the domain has a guest-agent channel (`org.qemu.guest_agent.0`): without one
    /// there is no guest layer to ask for (not a guest layer that is down).
    pub agent: bool,
}

/// Reads a domain XML.
pub fn parse(xml: &str) -> Result<DomainXml, DomXmlError> {
    if xml.len() > MAX_XML_BYTES {
        return Err(DomXmlError::TooLarge {
            len: xml.len(),
            limit: MAX_XML_BYTES,
        });
    }
    let doc = Document::parse(xml).map_err(DomXmlError::Parse)?;
    let mut out = DomainXml::default();
    let Some(devices) = child(doc.root_element(), "devices") else {
        return Ok(out);
    };
    let controllers = scsi_controllers(devices);
    for disk in devices.children().filter(|n| n.has_tag_name("disk")) {
        if out.disks.len() >= MAX_DISKS {
            out.over += 1;
            continue;
        }
        out.disks.push(disk_of(disk, &controllers));
    }
    let hostdevs = devices
        .children()
        .filter(|n| {
            n.has_tag_name("hostdev")
                && n.attribute("mode").unwrap_or("subsystem") == "subsystem"
                && n.attribute("type") == Some("pci")
        })
        .map(|h| attr(child(h, "alias"), "name"))
        .filter(|a| !a.is_empty());
    for alias in hostdevs {
        if out.pci_hostdevs.len() >= MAX_CONTROLLERS {
            out.over += 1;
        } else {
            out.pci_hostdevs.push(alias);
        }
    }
    out.agent = devices
        .children()
        .filter(|n| n.has_tag_name("channel"))
        .filter_map(|c| child(c, "target"))
        .any(|t| t.attribute("name") == Some("org.qemu.guest_agent.0"));
    Ok(out)
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|n| n.has_tag_name(name))
}

fn attr(node: Option<Node<'_, '_>>, name: &str) -> String {
    node.and_then(|n| n.attribute(name))
        .unwrap_or("")
        .to_owned()
}

/// A SCSI controller: its QEMU device type and iothread (`iothreadN`).
#[derive(Debug, Clone, Default)]
struct Controller {
    model: String,
    iothread: Option<String>,
}

/// The SCSI controllers by index, at most [`MAX_CONTROLLERS`].
fn scsi_controllers(devices: Node<'_, '_>) -> HashMap<String, Controller> {
    devices
        .children()
        .filter(|n| n.has_tag_name("controller") && n.attribute("type") == Some("scsi"))
        .take(MAX_CONTROLLERS)
        .map(|c| {
            let index = c.attribute("index").unwrap_or("0").to_owned();
            let model = scsi_controller_type(c.attribute("model").unwrap_or(""), c);
            let iothread = iothread_id(&attr(child(c, "driver"), "iothread"));
            (index, Controller { model, iothread })
        })
        .collect()
}

/// QEMU's device type for a libvirt SCSI controller model (libvirt's `qemu_command.c`).
fn scsi_controller_type(model: &str, controller: Node<'_, '_>) -> String {
    let virtio = |suffix: &str| {
        format!(
            "virtio-scsi{}{suffix}",
            transport(attr(child(controller, "address"), "type").as_str())
        )
    };
    match model {
        "virtio-scsi" => virtio(""),
        "virtio-transitional" => virtio("-transitional"),
        "virtio-non-transitional" => virtio("-non-transitional"),
        "lsilogic" => "lsi53c895a".to_owned(),
        "lsisas1068" => "mptsas1068".to_owned(),
        "lsisas1078" => "megasas-gen2".to_owned(),
        "vmpvscsi" => "pvscsi".to_owned(),
        "ibmvscsi" => "spapr-vscsi".to_owned(),
        other => other.to_owned(),
    }
}

/// A virtio device's transport suffix for its `<address type>` (PCI when unaddressed).
fn transport(address_type: &str) -> &'static str {
    match address_type {
        "ccw" => "-ccw",
        "virtio-mmio" => "-device",
        "spapr-vio" => "-device",
        _ => "-pci",
    }
}

/// libvirt names iothread N `iothreadN` in QEMU (`-object iothread,id=iothreadN`).
fn iothread_id(n: &str) -> Option<String> {
    (!n.is_empty()).then(|| format!("iothread{n}"))
}

/// The device libvirt builds for a disk (`qemuBuildDiskDeviceProps`), as QOM would report it.
fn disk_facts(
    disk: Node<'_, '_>,
    bus: &str,
    device: &str,
    iothread: Option<String>,
    controllers: &HashMap<String, Controller>,
) -> DeviceFacts {
    let address = child(disk, "address");
    let facts = |type_name: &str, model: &str| DeviceFacts {
        type_name: Some(type_name.to_owned()),
        model: Some(model.to_owned()),
        ..DeviceFacts::default()
    };
    let cd = device == "cdrom";
    match bus {
        "virtio" => {
            let t = transport(attr(address, "type").as_str());
            let mut f = if disk.attribute("type") == Some("vhostuser") {
                facts("vhost-user-blk", &format!("vhost-user-blk{t}"))
            } else {
                facts("virtio-blk-device", &format!("virtio-blk{t}"))
            };
            f.iothread = iothread;
            f
        }
        "scsi" => {
            let t = match device {
                "lun" => "scsi-block",
                "cdrom" => "scsi-cd",
                _ => "scsi-hd",
            };
            let index = address
                .and_then(|a| a.attribute("controller"))
                .unwrap_or("0");
            let c = controllers.get(index);
            DeviceFacts {
                controller: c.map(|c| c.model.clone()),
                iothread: c.and_then(|c| c.iothread.clone()),
                ..facts(t, t)
            }
        }
        "sata" | "ide" => {
            let t = if cd { "ide-cd" } else { "ide-hd" };
            facts(t, t)
        }
        "usb" => facts(if cd { "scsi-cd" } else { "scsi-hd" }, "usb-storage"),
        "nvme" => facts("nvme-ns", "nvme-ns"),
        "fdc" => facts("floppy", "floppy"),
        "" => DeviceFacts::default(),
        other => facts(other, other),
    }
}

fn disk_of(disk: Node<'_, '_>, controllers: &HashMap<String, Controller>) -> DiskXml {
    let driver = child(disk, "driver");
    let target = child(disk, "target");
    let source = child(disk, "source");
    let source_type = disk.attribute("type").unwrap_or("").to_owned();
    let source_text = match source_type.as_str() {
        "network" => {
            let protocol = attr(source, "protocol");
            let name = attr(source, "name");
            let host = source
                .and_then(|s| child(s, "host"))
                .and_then(|h| h.attribute("name").or_else(|| h.attribute("socket")))
                .unwrap_or("");
            format!("{protocol}://{host}/{name}")
        }
        "volume" => {
            // The live XML of a volume disk names the pool and volume; some pools add a path.
            let pool = attr(source, "pool");
            let volume = attr(source, "volume");
            format!("{pool}/{volume}")
        }
        "nvme" => {
            let addr = source
                .and_then(|s| child(s, "address"))
                .map(|a| {
                    format!(
                        "{}:{}:{}.{}",
                        a.attribute("domain").unwrap_or(""),
                        a.attribute("bus").unwrap_or(""),
                        a.attribute("slot").unwrap_or(""),
                        a.attribute("function").unwrap_or("")
                    )
                })
                .unwrap_or_default();
            format!("nvme://{addr}/{}", attr(source, "namespace"))
        }
        "vhostuser" => attr(source, "path"),
        _ => {
            let file = attr(source, "file");
            if file.is_empty() {
                attr(source, "dev")
            } else {
                file
            }
        }
    };
    let iothread = iothread_id(&attr(driver, "iothread"));
    let bus = attr(target, "bus");
    let device = disk.attribute("device").unwrap_or("disk").to_owned();
    let facts = disk_facts(disk, &bus, &device, iothread.clone(), controllers);
    DiskXml {
        target: attr(target, "dev"),
        bus,
        alias: attr(child(disk, "alias"), "name"),
        device,
        source_type,
        source: source_text,
        format: attr(driver, "type"),
        cache: attr(driver, "cache"),
        io: attr(driver, "io"),
        discard: attr(driver, "discard"),
        detect_zeroes: attr(driver, "detect_zeroes"),
        iothread: iothread.unwrap_or_default(),
        readonly: child(disk, "readonly").is_some(),
        facts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_of_a_live_domain() {
        let xml = include_str!("../../../tests/fixtures/libvirt/domain-live.xml");
        let parsed = parse(xml).unwrap();
        assert_eq!(parsed.over, 0);
        assert!(parsed.agent);
        let disks = parsed.disks;
        assert!(disks.len() >= 2, "{disks:?}");
        let vda = disks.iter().find(|d| d.target == "vda").unwrap();
        assert_eq!(vda.bus, "virtio");
        assert_eq!(vda.format, "qcow2");
        assert_eq!(vda.cache, "none");
        assert_eq!(vda.source_type, "file");
        assert!(vda.source.ends_with(".qcow2"), "{}", vda.source);
        assert_eq!(vda.protocol_driver(), "file");
        assert!(!vda.alias.is_empty());
    }

    #[test]
    fn bounds() {
        let big = "x".repeat(MAX_XML_BYTES + 1);
        assert!(matches!(parse(&big), Err(DomXmlError::TooLarge { .. })));
        assert!(matches!(parse("<domain"), Err(DomXmlError::Parse(_))));
        let mut many = String::from("<domain><devices>");
        for i in 0..MAX_DISKS + 3 {
            many.push_str(&format!("<disk type='file'><target dev='vd{i}'/></disk>"));
        }
        for i in 0..MAX_CONTROLLERS + 2 {
            many.push_str(&format!(
                "<hostdev mode='subsystem' type='pci'><alias name='ua-h{i}'/></hostdev>"
            ));
        }
        many.push_str("</devices></domain>");
        let d = parse(&many).unwrap();
        assert_eq!((d.disks.len(), d.over, d.agent), (MAX_DISKS, 5, false));
        assert_eq!(d.pci_hostdevs.len(), MAX_CONTROLLERS);
    }
}
