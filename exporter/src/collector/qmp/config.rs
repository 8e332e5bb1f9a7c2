//! The QMP collector's configuration families: `kvmio_qemu_block_info` (driver, format, file,
//! cache mode, aio, iothread, detect-zeroes, discard, bus), `kvmio_qemu_block_cache_info`, the
//! image sizes of each backing chain, and `kvmio_disk_layer_info`, the join of the layers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kvmio_qemu::types::BlockStats;
use kvmio_qemu::CacheMode;

use super::{cache_mode_label, image_path, on_off, protocol_driver};
use crate::host::blockdev::ImageDevice;
use crate::metrics::Metrics;
use crate::vm::qmp::QemuOrigin;
use crate::vm::{QmpSnapshot, VmOutcome};

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
        let drive = match configured {
            Some(c) => c.drive.clone(),
            None => snap
                .cmdline
                .as_ref()
                .map(|c| {
                    c.drive_config(
                        &b.device,
                        inserted.node_name.as_deref(),
                        qdev.and_then(crate::vm::join::qdev_id),
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
        let format = inserted
            .image
            .as_ref()
            .map(|i| i.format.as_str())
            .filter(|f| !f.is_empty())
            .unwrap_or(inserted.drv.as_str());
        let driver = match configured.filter(|_| snap.origin == QemuOrigin::LibvirtStats) {
            Some(c) => c.protocol_driver.clone(),
            None => protocol_driver(stats_by_label.get(device).copied(), snap, &inserted.drv),
        };
        // Without the monitor (libvirt's statistics) the live flags are unknown: the mode is
        // the configured one, and so are direct and no_flush; the guest's write cache is
        // unknown (empty).
        let flags = match (inserted.cache, drive.cache_mode) {
            (Some(flags), _) => Some((cache_mode_label(inserted), flags, true)),
            (None, Some(mode)) if snap.origin == QemuOrigin::LibvirtStats => {
                Some((mode.as_str(), mode.flags(), false))
            }
            _ => None,
        };
        let cache_mode = flags.map_or("", |(mode, _, _)| mode);
        out.info(
            "kvmio_qemu_block_info",
            "A QEMU block backend's configuration: top node, protocol driver (file, host_device, \
             nbd...), image format, cache mode derived from the cache flags QEMU reports now \
             (see kvmio_qemu_block_cache_info), aio mode, iothread, detect-zeroes, discard, bus.",
            &[
                ("vm", vm),
                ("device", device),
                ("node", inserted.node_name.as_deref().unwrap_or("")),
                ("driver", &driver),
                ("format", format),
                ("file", &inserted.file),
                ("cache_mode", cache_mode),
                ("aio", drive.aio.as_deref().unwrap_or("")),
                ("iothread", &iothread),
                ("detect_zeroes", &inserted.detect_zeroes),
                ("discard", drive.discard.as_deref().unwrap_or("")),
                ("bus", &bus),
            ],
        );
        if let Some((mode, flags, live)) = flags {
            out.info(
                "kvmio_qemu_block_cache_info",
                "A backend's cache flags as QEMU reports them now, the mode they name, and the \
                 mode configured on the QEMU command line. guest_write_cache is the write cache \
                 the guest negotiated (off until the guest driver enables it, e.g. under the \
                 firmware, or if the guest sets write through): then a cache=none drive reads \
                 as directsync and cache=writeback as writethrough. direct and no_flush are as \
                 configured.",
                &[
                    ("vm", vm),
                    ("device", device),
                    ("cache_mode", mode),
                    (
                        "configured_cache_mode",
                        drive.cache_mode.map_or("", CacheMode::as_str),
                    ),
                    (
                        "guest_write_cache",
                        if live { on_off(flags.writeback) } else { "" },
                    ),
                    ("direct", on_off(flags.direct)),
                    ("no_flush", on_off(flags.no_flush)),
                ],
            );
        }
        let mut image = inserted.image.as_ref();
        let mut depth = 0;
        while let Some(i) = image {
            if depth > 32 || i.filename.is_empty() {
                break;
            }
            let labels = [
                ("vm", vm),
                ("device", device),
                ("image", i.filename.as_str()),
            ];
            out.gauge(
                "kvmio_qemu_image_virtual_size_bytes",
                "Size of the disk image as the guest sees it (top image and each backing image).",
                &labels,
                i.virtual_size.max(0) as f64,
            );
            if let Some(actual) = i.actual_size {
                out.gauge(
                    "kvmio_qemu_image_allocated_bytes",
                    "Bytes the image file occupies on the host (allocated blocks, as QEMU reports \
                     them).",
                    &labels,
                    actual.max(0) as f64,
                );
            }
            image = i.backing_image.as_deref();
            depth += 1;
        }
        let path = image_path(inserted);
        let host_device = resolved
            .get(Path::new(&path))
            .map(ImageDevice::host_device)
            .unwrap_or("");
        out.info(
            "kvmio_disk_layer_info",
            "The join of the layers: guest disk (empty if the agent gave no match) <-> QEMU \
             device <-> image file <-> host block device under it (empty if the image is not on \
             a local block device, e.g. tmpfs, NFS, NBD).",
            &[
                ("vm", vm),
                ("device", device),
                (
                    "disk",
                    o.disks.get(device).map(String::as_str).unwrap_or(""),
                ),
                ("image", &path),
                ("host_device", host_device),
            ],
        );
    }
}
