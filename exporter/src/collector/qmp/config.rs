//! The QMP collector's configuration families: `kvmio_qemu_block_info` (driver, format, file,
//! cache mode, aio, iothread, detect-zeroes, discard, bus), `kvmio_qemu_block_cache_info`, the
//! image sizes of each backing chain, `kvmio_disk_layer_info` (the join of the layers),
//! `kvmio_qemu_device_info` (device model and storage mode of every guest disk, with or without
//! a medium or a backend here), `kvmio_qemu_block_io_status`, the throttle limits, and the VM's
//! run state (`kvmio_vm_state_info`).
//!
//! Every setting is read where QEMU applies it ([`super::backend`]): O_DIRECT and no-flush on
//! the protocol node (`query-named-block-nodes`), the guest-visible write cache on the device
//! (`query-block`'s live flag; its `write-cache` property for the configured mode), aio and
//! discard from the options that created the protocol node ([`crate::vm::cmdline`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kvmio_qemu::types::{BlockDeviceInfo, BlockStats};
use kvmio_qemu::{CacheFlags, CacheMode};

use super::backend::{backend, Backend};
use super::{on_off, protocol_driver};
use crate::host::blockdev::ImageDevice;
use crate::metrics::Metrics;
use crate::vm::cmdline::DriveConfig;
use crate::vm::qmp::{device_label, DeviceFacts, QemuOrigin};
use crate::vm::{QmpSnapshot, VmOutcome};

/// QEMU's `BlockDeviceIoStatus` values.
const IO_STATUSES: [&str; 3] = ["ok", "failed", "nospace"];

/// The VM's run state.
pub(super) fn emit_state(out: &mut Metrics, vm: &str, snap: &QmpSnapshot) {
    if let Some(s) = &snap.run_state {
        out.info(
            "kvmio_vm_state_info",
            "The VM's run state: QEMU's RunState from query-status (running, paused, prelaunch, \
             io-error: stopped on an I/O error by rerror/werror=stop, shutdown, \
             guest-panicked...) or libvirt's domain state (running, paused, shutoff, \
             crashed...) with its reason (ioerror, user, ...; empty from QMP).",
            &[("vm", vm), ("state", &s.state), ("reason", &s.reason)],
        );
    }
}

/// Every guest disk device: model, storage mode, read-only, removable, medium; the
/// backend-less ones (vhost-user-blk, vfio-pci) from the QOM tree.
pub(super) fn emit_devices(out: &mut Metrics, vm: &str, snap: &QmpSnapshot) {
    const NAME: &str = "kvmio_qemu_device_info";
    const HELP: &str = "A guest disk device: its model (-device driver: virtio-blk-pci, \
        scsi-hd, nvme, ide-hd, usb-storage, vhost-user-blk-pci, vfio-pci...), the storage mode \
        it makes (virtio-blk, virtio-blk-dataplane, virtio-scsi, virtio-scsi-dataplane, \
        vhost-user-blk, scsi-passthrough, nvme, ide, usb, pci-passthrough; none: a backend \
        without a device), bus, iothread, read_only, removable, medium (inserted, empty) and, \
        for vhost-user devices, the socket of the process serving the disk.";
    for b in &snap.block {
        let device = device_label(
            Some(b.device.as_str()),
            b.qdev.as_deref(),
            b.inserted.as_ref().and_then(|i| i.node_name.as_deref()),
        );
        if device.is_empty() {
            continue;
        }
        let qdev = b.qdev.as_deref().filter(|q| !q.is_empty());
        let facts = qdev.and_then(|q| snap.devices.get(q));
        let configured = snap.configured.get(device);
        let (model, mode, bus, iothread) = match (facts, configured) {
            (Some(f), _) => (
                f.model.clone().unwrap_or_default(),
                f.storage_mode().to_owned(),
                f.bus(),
                f.iothread.clone().unwrap_or_default(),
            ),
            (None, Some(c)) => (
                c.facts.model.clone().unwrap_or_default(),
                c.facts.storage_mode().to_owned(),
                c.bus.clone(),
                c.facts.iothread.clone().unwrap_or_default(),
            ),
            (None, None) if qdev.is_none() => (
                String::new(),
                "none".to_owned(),
                "none".to_owned(),
                String::new(),
            ),
            (None, None) => Default::default(),
        };
        let read_only = b.inserted.as_ref().is_some_and(|i| i.ro);
        out.info(
            NAME,
            HELP,
            &[
                ("vm", vm),
                ("device", device),
                ("model", &model),
                ("storage_mode", &mode),
                ("bus", &bus),
                ("iothread", &iothread),
                ("read_only", on_off(read_only)),
                ("removable", on_off(b.removable)),
                (
                    "medium",
                    if b.inserted.is_some() {
                        "inserted"
                    } else {
                        "empty"
                    },
                ),
                ("socket", ""),
            ],
        );
        if let Some(status) = &b.io_status {
            for s in IO_STATUSES {
                out.gauge(
                    "kvmio_qemu_block_io_status",
                    "A device's I/O status (query-block io-status; kept by devices with \
                     rerror/werror=stop): 1 for the current one of ok, failed (stopped on an \
                     I/O error), nospace (stopped on ENOSPC).",
                    &[("vm", vm), ("device", device), ("status", s)],
                    if status == s { 1.0 } else { 0.0 },
                );
            }
        }
    }
    for d in snap.other_devices.iter() {
        let (mode, bus) = if d.model.starts_with("vfio-") {
            ("pci-passthrough", "pci")
        } else if d.model.starts_with("vhost-user-blk") {
            ("vhost-user-blk", "vhost-user")
        } else {
            ("vhost-scsi", "vhost")
        };
        out.info(
            NAME,
            HELP,
            &[
                ("vm", vm),
                ("device", &d.id),
                ("model", &d.model),
                ("storage_mode", mode),
                ("bus", bus),
                ("iothread", ""),
                ("read_only", ""),
                ("removable", ""),
                ("medium", ""),
                ("socket", &d.socket),
            ],
        );
    }
}

/// Each backend's configuration, images and layer join.
pub(super) fn emit_backends(
    out: &mut Metrics,
    o: &VmOutcome,
    snap: &QmpSnapshot,
    stats_by_label: &HashMap<&str, &BlockStats>,
    resolved: &HashMap<PathBuf, ImageDevice>,
) {
    let vm = o.vm.as_str();
    for (device, b, inserted) in snap.backends() {
        if device.is_empty() {
            continue;
        }
        let qdev = b.qdev.as_deref().filter(|q| !q.is_empty());
        let facts = qdev.and_then(|q| snap.devices.get(q));
        let configured = snap.configured.get(device);
        let view = backend(snap, device, inserted);
        let drive = match configured {
            Some(c) => c.drive.clone(),
            None => snap
                .cmdline
                .as_ref()
                .map(|c| {
                    c.drive_config(
                        &b.device,
                        &view.chain,
                        qdev.and_then(crate::vm::join::qdev_id),
                        &view.path,
                    )
                })
                .unwrap_or_default(),
        };
        let iothread = facts
            .and_then(|f| f.iothread.clone())
            .or(drive.iothread.clone())
            .unwrap_or_default();
        let bus = match (facts, configured) {
            (Some(f), _) => f.bus(),
            (None, Some(c)) => c.bus.clone(),
            (None, None) if qdev.is_none() => "none".to_owned(),
            (None, None) => String::new(),
        };
        let driver = match configured.filter(|_| snap.origin == QemuOrigin::LibvirtStats) {
            Some(c) => c.protocol_driver.clone(),
            None if !view.driver.is_empty() => view.driver.clone(),
            None => protocol_driver(stats_by_label.get(device).copied(), snap, &inserted.drv),
        };
        let flags = cache_flags(snap, inserted, &view, facts.map(|f| &**f), &drive);
        let cache_mode = flags.as_ref().map_or("", |f| f.mode);
        out.info(
            "kvmio_qemu_block_info",
            "A QEMU block backend's configuration as QEMU runs it, filter nodes (throttle, \
             copy-on-read...) seen through: top node, protocol driver (file, host_device, \
             nbd...), image format, the image's real path, cache mode derived from the flags \
             QEMU reports now (O_DIRECT and no-flush of the protocol node; see \
             kvmio_qemu_block_cache_info), aio mode and discard of the protocol node, iothread \
             (the device's or its SCSI controller's), detect-zeroes (on the first node that has \
             it), bus.",
            &[
                ("vm", vm),
                ("device", device),
                ("node", inserted.node_name.as_deref().unwrap_or("")),
                ("driver", &driver),
                ("format", &view.format),
                ("file", &view.path),
                ("cache_mode", cache_mode),
                ("aio", drive.aio.as_deref().unwrap_or("")),
                ("iothread", &iothread),
                ("detect_zeroes", view.detect_zeroes(inserted)),
                ("discard", drive.discard.as_deref().unwrap_or("")),
                ("bus", &bus),
            ],
        );
        if let Some(f) = &flags {
            out.info(
                "kvmio_qemu_block_cache_info",
                "A backend's cache flags as QEMU applies them now, the mode they name, and the \
                 configured mode. guest_write_cache is the write cache the guest sees now \
                 (off until the guest driver enables it, e.g. under the firmware, or if the \
                 guest sets write through): then a cache=none drive reads as directsync and \
                 cache=writeback as writethrough. direct (O_DIRECT) and no_flush are the \
                 protocol node's, where QEMU opens the host file. configured_cache_mode: the \
                 device's write-cache property (or the drive's cache= where it is auto) with \
                 the protocol node's direct and no_flush.",
                &[
                    ("vm", vm),
                    ("device", device),
                    ("cache_mode", f.mode),
                    (
                        "configured_cache_mode",
                        f.configured.map_or("", CacheMode::as_str),
                    ),
                    (
                        "guest_write_cache",
                        if f.live { on_off(f.now.writeback) } else { "" },
                    ),
                    ("direct", on_off(f.now.direct)),
                    ("no_flush", on_off(f.now.no_flush)),
                ],
            );
        }
        emit_throttle(out, vm, device, inserted, &view, snap);
        for (path, i) in &view.images {
            let labels = [("vm", vm), ("device", device), ("image", path.as_str())];
            out.gauge(
                "kvmio_qemu_image_virtual_size_bytes",
                "Size of the disk image as the guest sees it (top image and each backing image; \
                 filter nodes are not images).",
                &labels,
                i.virtual_size.max(0) as f64,
            );
            if let Some(actual) = i.actual_size {
                out.gauge(
                    "kvmio_qemu_image_allocated_bytes",
                    "Bytes the image file occupies on the host (allocated blocks, as QEMU reports \
                     them), each file once.",
                    &labels,
                    actual.max(0) as f64,
                );
            }
        }
        let disk = o.disks.get(device).map(String::as_str).unwrap_or("");
        let mut paths: Vec<&str> = vec![view.path.as_str()];
        paths.extend(view.images.iter().skip(1).map(|(p, _)| p.as_str()));
        paths.extend(view.data_file.as_deref());
        let mut seen = std::collections::HashSet::new();
        for path in paths.into_iter().filter(|p| seen.insert(*p)) {
            let host_device = resolved
                .get(Path::new(path))
                .map(ImageDevice::host_device)
                .unwrap_or("");
            out.info(
                "kvmio_disk_layer_info",
                "The join of the layers: guest disk (empty if the agent gave no match) <-> QEMU \
                 device <-> image file (the top image, each backing image and a qcow2 data \
                 file) <-> host block device under it (empty if the image is not on a local \
                 block device, e.g. tmpfs, NFS, NBD).",
                &[
                    ("vm", vm),
                    ("device", device),
                    ("disk", disk),
                    ("image", path),
                    ("host_device", host_device),
                ],
            );
        }
    }
}

/// A backend's cache flags now, the mode they name, and the configured mode.
struct Flags {
    now: CacheFlags,
    mode: &'static str,
    configured: Option<CacheMode>,
    /// Whether the flags are QEMU's (else the configured ones, from libvirt's XML).
    live: bool,
}

fn cache_flags(
    snap: &QmpSnapshot,
    inserted: &BlockDeviceInfo,
    view: &Backend<'_>,
    facts: Option<&DeviceFacts>,
    drive: &DriveConfig,
) -> Option<Flags> {
    let name = |f: CacheFlags| CacheMode::from_flags(f).map_or("other", CacheMode::as_str);
    let Some(top) = inserted.cache else {
        // Without the monitor (libvirt's statistics) the live flags are unknown: the mode is
        // the configured one, and so are direct and no_flush; the guest's write cache is
        // unknown (empty).
        let mode = drive
            .cache_mode
            .filter(|_| snap.origin == QemuOrigin::LibvirtStats)?;
        return Some(Flags {
            now: mode.flags(),
            mode: mode.as_str(),
            configured: Some(mode),
            live: false,
        });
    };
    let now = match view.protocol() {
        Some(p) => CacheFlags {
            writeback: top.writeback,
            direct: p.direct,
            no_flush: p.no_flush,
        },
        None => top,
    };
    let configured = if snap.configured.is_empty() {
        let writeback = match facts.and_then(|f| f.write_cache.as_deref()) {
            Some("on") => Some(true),
            Some("off") => Some(false),
            _ => drive.cache_mode.map(|m| m.flags().writeback),
        };
        writeback.and_then(|writeback| {
            CacheMode::from_flags(CacheFlags {
                writeback,
                direct: now.direct,
                no_flush: now.no_flush,
            })
        })
    } else {
        drive.cache_mode
    };
    Some(Flags {
        now,
        mode: name(now),
        configured,
        live: true,
    })
}

/// Throttle limits: `-drive throttling.*` (the backend's own group, in `query-block`) and
/// throttle filter nodes' groups (`-object throttle-group`).
fn emit_throttle(
    out: &mut Metrics,
    vm: &str,
    device: &str,
    inserted: &BlockDeviceInfo,
    view: &Backend<'_>,
    snap: &QmpSnapshot,
) {
    let mut limits: Vec<(String, [i64; 6])> = Vec::new();
    if let Some(g) = inserted.group.as_deref() {
        limits.push((
            g.to_owned(),
            [
                inserted.bps,
                inserted.bps_rd,
                inserted.bps_wr,
                inserted.iops,
                inserted.iops_rd,
                inserted.iops_wr,
            ],
        ));
    }
    for g in view.throttle_groups() {
        if let Some(l) = snap.throttle_groups.get(g) {
            let v = |k: &str| l.get(k).copied().unwrap_or(0);
            limits.push((
                g.to_owned(),
                [
                    v("bps-total"),
                    v("bps-read"),
                    v("bps-write"),
                    v("iops-total"),
                    v("iops-read"),
                    v("iops-write"),
                ],
            ));
        }
    }
    for (group, l) in &limits {
        for (i, op) in ["total", "read", "write"].into_iter().enumerate() {
            let labels = [("vm", vm), ("device", device), ("group", group), ("op", op)];
            if l[i] > 0 {
                out.gauge(
                    "kvmio_qemu_block_throttle_limit_bytes_per_second",
                    "A throttle limit on the device's I/O (-drive throttling.bps-*, or a \
                     throttle node's -object throttle-group): bytes per second, by operation \
                     (total, read, write); absent where there is no limit.",
                    &labels,
                    l[i] as f64,
                );
            }
            if l[i + 3] > 0 {
                out.gauge(
                    "kvmio_qemu_block_throttle_limit_operations_per_second",
                    "A throttle limit on the device's I/O (-drive throttling.iops-*, or a \
                     throttle node's -object throttle-group): requests per second, by \
                     operation (total, read, write); absent where there is no limit.",
                    &labels,
                    l[i + 3] as f64,
                );
            }
        }
    }
}
