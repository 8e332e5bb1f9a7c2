//! What QEMU's QOM tree says about the guest's disk devices (`qom-get`, `qom-list`), for
//! [`super::monitor`]: a backend's device model (a virtio transport's type, the `usb-storage`
//! around a SCSI disk), serial, iothread and write cache, a SCSI disk's controller, and the
//! devices that have no block backend in this QEMU (vhost-user, vhost-scsi, VFIO) with the
//! socket of a vhost-user device's chardev.

use kvmio_qemu::{Error as QemuError, QmpCommands};
use serde_json::json;

use super::qmp::{DeviceFacts, OtherDevice};

/// The QOM path of a `qdev` as `query-block` gives it: a path, or a `-device id=` (for which
/// `qom-get` by partial path fails where a bus has the same name, as an NVMe controller's
/// does), which lives under `/machine/peripheral`.
pub(super) fn qom_path(qdev: &str) -> String {
    if qdev.starts_with('/') {
        qdev.to_owned()
    } else {
        format!("/machine/peripheral/{qdev}")
    }
}

/// An iothread link's id (`/objects/io1` -> `io1`).
fn iothread_id(path: String) -> String {
    path.strip_prefix("/objects/")
        .map(str::to_owned)
        .unwrap_or(path)
}

/// A device's facts from the QOM object at `path` (its backend, for virtio).
pub(super) async fn facts_of(
    qmp: &mut impl QmpCommands,
    path: &str,
) -> Result<DeviceFacts, QemuError> {
    let type_name = qom_string(qmp, path, "type").await?;
    let mut facts = DeviceFacts {
        serial: qom_string(qmp, path, "serial").await?,
        iothread: qom_string(qmp, path, "iothread").await?.map(iothread_id),
        write_cache: qom_string(qmp, path, "write-cache").await?,
        model: type_name.clone(),
        type_name,
        controller: None,
    };
    // A virtio backend's model is its transport proxy (virtio-blk-pci, -ccw...).
    if let Some(proxy) = path.strip_suffix("/virtio-backend") {
        if let Some(t) = qom_string(qmp, proxy, "type").await? {
            facts.model = Some(t);
        }
    }
    // A SCSI disk runs in its controller's iothread (virtio-scsi dataplane), or sits inside
    // a usb-storage device.
    if facts
        .type_name
        .as_deref()
        .is_some_and(|t| t.starts_with("scsi-"))
    {
        let bus = qom_string(qmp, path, "parent_bus").await?;
        if let Some((owner, _)) = bus.as_deref().and_then(|b| b.rsplit_once('/')) {
            match qom_string(qmp, owner, "type").await? {
                Some(t) if t.starts_with("usb-") => facts.model = Some(t),
                Some(t) => {
                    let controller = match owner.strip_suffix("/virtio-backend") {
                        Some(proxy) => qom_string(qmp, proxy, "type").await?.unwrap_or(t),
                        None => t,
                    };
                    facts.controller = Some(controller);
                    if facts.iothread.is_none() {
                        facts.iothread = qom_string(qmp, owner, "iothread").await?.map(iothread_id);
                    }
                }
                None => {}
            }
        }
    }
    Ok(facts)
}

/// At most this many devices without a backend are listed per VM.
const MAX_OTHER_DEVICES: usize = 256;

/// Devices whose disk has no block backend in this QEMU: vhost-user (the disk is another
/// process's export), vhost-scsi and VFIO passthrough.
pub(super) async fn other_devices(
    qmp: &mut impl QmpCommands,
) -> Result<Vec<OtherDevice>, QemuError> {
    let mut out = Vec::new();
    for parent in ["/machine/peripheral", "/machine/peripheral-anon"] {
        let children = match qmp.qom_list(parent).await {
            Ok(c) => c,
            Err(e) if e.is_command() => continue,
            Err(e) => return Err(e),
        };
        for c in children {
            let Some(t) = c.child_type() else { continue };
            let wanted = t.starts_with("vhost-user-blk")
                || t.starts_with("vhost-scsi")
                || t.starts_with("vhost-user-scsi")
                || t.starts_with("vfio-pci");
            if !wanted || out.len() >= MAX_OTHER_DEVICES {
                continue;
            }
            let path = format!("{parent}/{}", c.name);
            let id = if parent == "/machine/peripheral" {
                c.name.clone()
            } else {
                path.clone()
            };
            let chardev = if t.starts_with("vhost-user") {
                qom_string(qmp, &path, "chardev").await?
            } else {
                None
            };
            out.push((
                OtherDevice {
                    id,
                    model: t.to_owned(),
                    socket: String::new(),
                },
                chardev,
            ));
        }
    }
    // The chardev's socket address (`query-chardev` shows a client socket as `unix:` only).
    for (dev, chardev) in &mut out {
        let Some(c) = chardev.as_deref() else {
            continue;
        };
        let addr = match qmp
            .execute_value(
                "qom-get",
                Some(json!({"path": format!("/chardevs/{c}"), "property": "addr"})),
            )
            .await
        {
            Ok(v) => v,
            Err(e) if e.is_command() => continue,
            Err(e) => return Err(e),
        };
        if addr.get("type").and_then(|t| t.as_str()) == Some("unix") {
            if let Some(path) = addr.get("path").and_then(|p| p.as_str()) {
                dev.socket = path.to_owned();
            }
        }
    }
    Ok(out.into_iter().map(|(d, _)| d).collect())
}

/// `qom-get` of a string property; `None` if the object or property does not exist.
async fn qom_string(
    qmp: &mut impl QmpCommands,
    path: &str,
    property: &str,
) -> Result<Option<String>, QemuError> {
    match qmp
        .execute::<serde_json::Value>("qom-get", Some(json!({"path": path, "property": property})))
        .await
    {
        Ok(serde_json::Value::String(s)) if !s.is_empty() => Ok(Some(s)),
        Ok(_) => Ok(None),
        Err(e) if e.is_command() => Ok(None),
        Err(e) => Err(e),
    }
}
