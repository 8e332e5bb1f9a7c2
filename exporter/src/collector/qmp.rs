//! `qmp`: what QEMU's monitor says about each VM's block devices, and the cross-layer join.
//!
//! - `kvmio_qmp_up{vm}`;
//! - `kvmio_qemu_block_<suffix>{vm,device}`: `query-blockstats` of each backend (what the guest's
//!   virtual disk did, as QEMU accounts it), with the diskstats suffixes of
//!   [`DISK_METRICS`] that QEMU has (not `io_now`, `io_time*`, discard merges); plus
//!   `kvmio_qemu_block_failed_operations_total{vm,device,op}`,
//!   `kvmio_qemu_block_invalid_operations_total{vm,device,op}`, `kvmio_qemu_block_idle_seconds`,
//!   `kvmio_qemu_block_highest_written_offset_bytes`;
//! - `kvmio_qemu_node_<suffix>{vm,device,node,driver}` for every node under a backend (format,
//!   protocol, backing chain): QEMU accounts requests only at the backend, so per node it has the
//!   highest written offset and, for `file`/`host_device` nodes, discards
//!   (`kvmio_qemu_node_highest_written_offset_bytes`, `kvmio_qemu_node_discards_completed_total`,
//!   `kvmio_qemu_node_discarded_bytes_total`, `kvmio_qemu_node_failed_discards_total`);
//! - `kvmio_qemu_process_{read,written}_bytes_total{vm}`: the QEMU process's storage IO
//!   (`/proc/PID/io`), all its images together: against the devices' bytes it shows the write
//!   amplification of the formats below;
//! - `kvmio_qemu_block_info{vm,device,node,driver,format,file,cache_mode,aio,iothread,
//!   detect_zeroes,discard,bus}` and `kvmio_qemu_block_cache_info{vm,device,cache_mode,
//!   configured_cache_mode,guest_write_cache,direct,no_flush}`;
//! - `kvmio_qemu_image_virtual_size_bytes{vm,device,image}`, `kvmio_qemu_image_allocated_bytes`;
//! - `kvmio_qemu_block_{read,write,flush}_latency_seconds{vm,device}` histograms with
//!   `--qmp.latency-buckets`;
//! - `kvmio_disk_layer_info{vm,device,disk,image,host_device}`.
//!
//! It publishes every image for the host collectors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use kvmio_qemu::types::{BlockDeviceInfo, BlockDeviceStats, BlockLatencyHistogramInfo, BlockStats};
use kvmio_qemu::CacheMode;

use super::{CollectFuture, Collector, ImageRef, ScrapeContext};
use crate::host::blockdev::ImageDevice;
use crate::host::diskstats::{DiskMetric, Field, DISK_METRICS};
use crate::metrics::Metrics;
use crate::vm::libvirt::Libvirt;
use crate::vm::qmp::device_label;
use crate::vm::qmp::QemuOrigin;
use crate::vm::{Fleet, QmpSnapshot, VmOutcome};

/// The collector; shares its [`Fleet`] with the guest-agent collector.
#[derive(Debug)]
pub struct Qmp {
    fleet: Arc<Fleet>,
}

impl Qmp {
    /// A collector over `fleet`.
    pub fn new(fleet: Arc<Fleet>) -> Self {
        Qmp { fleet }
    }
}

/// Prefix of the device metrics.
pub const BLOCK_PREFIX: &str = "kvmio_qemu_block_";
/// Prefix of the node metrics.
pub const NODE_PREFIX: &str = "kvmio_qemu_node_";

/// A diskstats metric as one layer names it.
#[derive(Debug)]
pub(crate) struct LayerMetric {
    pub metric: &'static DiskMetric,
    pub name: String,
    pub help: String,
}

/// [`DISK_METRICS`] under a prefix, with a layer description before each help text.
pub(crate) fn layer_metrics(prefix: &str, what: &str) -> Vec<LayerMetric> {
    DISK_METRICS
        .iter()
        .map(|m| LayerMetric {
            metric: m,
            name: format!("{prefix}{}", m.suffix),
            help: format!("{what}: {}", m.help),
        })
        .collect()
}

fn block_metrics() -> &'static [LayerMetric] {
    static M: OnceLock<Vec<LayerMetric>> = OnceLock::new();
    M.get_or_init(|| {
        layer_metrics(
            BLOCK_PREFIX,
            "QEMU device (the guest's virtual disk, as QEMU's block backend accounts it)",
        )
    })
}

fn node_metrics() -> &'static [LayerMetric] {
    static M: OnceLock<Vec<LayerMetric>> = OnceLock::new();
    M.get_or_init(|| {
        layer_metrics(
            NODE_PREFIX,
            "QEMU block node (file/host_device driver statistics)",
        )
    })
}

fn ns(v: i64) -> f64 {
    v.max(0) as f64 / 1e9
}

fn count(v: i64) -> f64 {
    v.max(0) as f64
}

/// A backend's statistic for a diskstats field, in base units; `None` where QEMU has no such
/// statistic.
pub fn qemu_block_value(s: &BlockDeviceStats, field: Field) -> Option<f64> {
    Some(match field {
        Field::ReadsCompleted => count(s.rd_operations),
        Field::ReadsMerged => count(s.rd_merged),
        Field::SectorsRead => count(s.rd_bytes),
        Field::ReadTimeMs => ns(s.rd_total_time_ns),
        Field::WritesCompleted => count(s.wr_operations),
        Field::WritesMerged => count(s.wr_merged),
        Field::SectorsWritten => count(s.wr_bytes),
        Field::WriteTimeMs => ns(s.wr_total_time_ns),
        Field::DiscardsCompleted => count(s.unmap_operations),
        Field::SectorsDiscarded => count(s.unmap_bytes),
        Field::DiscardTimeMs => ns(s.unmap_total_time_ns),
        Field::FlushesCompleted => count(s.flush_operations),
        Field::FlushTimeMs => ns(s.flush_total_time_ns),
        Field::DiscardsMerged | Field::IoInProgress | Field::IoTimeMs | Field::IoWeightedTimeMs => {
            return None
        }
    })
}

/// The image file behind a backend: the image's filename if it is a local path, else the
/// protocol filename inside a `json:{...}` description, else what QEMU reports.
pub fn image_path(inserted: &BlockDeviceInfo) -> String {
    let candidate = inserted
        .image
        .as_ref()
        .map(|i| i.filename.as_str())
        .filter(|f| !f.is_empty())
        .unwrap_or(inserted.file.as_str());
    if let Some(json) = candidate.strip_prefix("json:") {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(json) {
            // Follow `file` children down to the protocol node's filename.
            let mut node = &v;
            for _ in 0..16 {
                if let Some(f) = node.get("filename").and_then(|f| f.as_str()) {
                    return f.to_owned();
                }
                match node.get("file") {
                    Some(child) if child.is_object() => node = child,
                    _ => break,
                }
            }
        }
    }
    candidate.to_owned()
}

/// The protocol driver under a backend's top node (the node that does host IO).
fn protocol_driver(stats: Option<&BlockStats>, snap: &QmpSnapshot, top_driver: &str) -> String {
    let Some(parent) = stats.and_then(|s| s.parent.as_deref()) else {
        // No child: the top node is the protocol node itself (raw `file`, `host_device`, `nbd`).
        return top_driver.to_owned();
    };
    node_driver(parent, snap)
}

fn node_driver(s: &BlockStats, snap: &QmpSnapshot) -> String {
    if let Some(d) = s
        .driver_specific
        .as_ref()
        .and_then(|d| d.get("driver"))
        .and_then(|d| d.as_str())
    {
        return d.to_owned();
    }
    s.node_name
        .as_deref()
        .and_then(|n| snap.node_drivers.get(n))
        .cloned()
        .unwrap_or_default()
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// The `cache_mode` label: the mode the current flags name, or `other` for a flag combination
/// without a name; empty if QEMU reports no flags.
pub fn cache_mode_label(inserted: &BlockDeviceInfo) -> &'static str {
    match inserted.cache {
        None => "",
        Some(flags) => CacheMode::from_flags(flags).map_or("other", CacheMode::as_str),
    }
}

impl Collector for Qmp {
    fn name(&self) -> &'static str {
        "qmp"
    }

    fn provides_images(&self) -> bool {
        true
    }

    fn collect<'a>(&'a self, ctx: &'a ScrapeContext, out: &'a mut Metrics) -> CollectFuture<'a> {
        Box::pin(async move {
            let outcomes = self.fleet.outcomes(ctx).await;
            // Publish every image first: the host collectors wait for them.
            let mut images: Vec<ImageRef> = Vec::new();
            for o in outcomes.iter() {
                if let Some(Ok(snap)) = &o.qmp {
                    for (device, _, inserted) in snap.backends() {
                        images.push(ImageRef {
                            vm: o.vm.clone(),
                            device: device.to_owned(),
                            image: PathBuf::from(image_path(inserted)),
                        });
                    }
                }
            }
            ctx.publish_images(images.iter().cloned());
            let mut paths: Vec<PathBuf> = images.iter().map(|i| i.image.clone()).collect();
            paths.sort();
            paths.dedup();
            let devices = ctx
                .resolve_image_paths_until(paths.clone(), ctx.resolve_deadline())
                .await;
            let resolved: HashMap<PathBuf, ImageDevice> = paths.into_iter().zip(devices).collect();
            let buckets = ctx.config().qmp_latency_boundaries_ns();
            // In label order: each family's series then arrive in ascending order (cheap appends).
            let mut sorted: Vec<&VmOutcome> = outcomes.iter().collect();
            sorted.sort_by(|a, b| a.vm.cmp(&b.vm));
            for o in sorted {
                emit_vm(out, o, &resolved, buckets.as_deref());
            }
            if let Some(libvirt) = self.fleet.libvirt() {
                emit_libvirt(out, libvirt);
            }
            Ok(())
        })
    }
}

/// Everything the QMP collector exports for one VM.
pub fn emit_vm(
    out: &mut Metrics,
    o: &VmOutcome,
    resolved: &HashMap<PathBuf, ImageDevice>,
    buckets_ns: Option<&[u64]>,
) {
    let vm = o.vm.as_str();
    out.info(
        "kvmio_vm_info",
        "A VM kvmio scrapes: where it was found (source: socket, proxmox, libvirt) and its UUID \
         where known (libvirt; else QEMU's -uuid or SMBIOS UUID).",
        &[("vm", vm), ("source", o.source), ("uuid", &o.uuid)],
    );
    let Some(result) = &o.qmp else { return };
    out.gauge(
        "kvmio_qmp_up",
        "1 if the VM's QMP monitor answered this scrape, else 0.",
        &[("vm", vm)],
        if result.is_ok() { 1.0 } else { 0.0 },
    );
    let Ok(snap) = result else { return };

    let mut stats_by_label: HashMap<&str, &BlockStats> = HashMap::new();
    for s in &snap.blockstats {
        let device = device_label(
            s.device.as_deref(),
            s.qdev.as_deref(),
            s.node_name.as_deref(),
        );
        if device.is_empty() {
            continue;
        }
        stats_by_label.insert(device, s);
        emit_block_stats(out, vm, device, &s.stats, snap.origin);
        if let (Some(bounds), Some(base)) = (buckets_ns, snap.histograms.get(device)) {
            for (op, hist, total, base_total) in [
                (
                    "read",
                    &s.stats.rd_latency_histogram,
                    s.stats.rd_total_time_ns,
                    base.rd_total_time_ns,
                ),
                (
                    "write",
                    &s.stats.wr_latency_histogram,
                    s.stats.wr_total_time_ns,
                    base.wr_total_time_ns,
                ),
                (
                    "flush",
                    &s.stats.flush_latency_histogram,
                    s.stats.flush_total_time_ns,
                    base.flush_total_time_ns,
                ),
            ] {
                if let Some(h) = hist {
                    emit_histogram(
                        out,
                        vm,
                        device,
                        op,
                        h,
                        bounds,
                        total.saturating_sub(base_total),
                    );
                }
            }
        }
        let top_driver = snap
            .backends()
            .find(|(label, _, _)| *label == device)
            .map(|(_, _, i)| i.drv.clone())
            .unwrap_or_default();
        emit_nodes(out, vm, device, s, &top_driver, snap, 0);
    }

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

    if let Some(io) = snap.process_io {
        out.counter(
            "kvmio_qemu_process_read_bytes_total",
            "Bytes the QEMU process caused to be read from host storage (/proc/PID/io \
             read_bytes): all its images and files together.",
            &[("vm", vm)],
            io.read_bytes as f64,
        );
        out.counter(
            "kvmio_qemu_process_written_bytes_total",
            "Bytes the QEMU process caused to be written to host storage (/proc/PID/io \
             write_bytes): all its images and files together; against the devices' written \
             bytes it shows the format's write amplification.",
            &[("vm", vm)],
            io.write_bytes as f64,
        );
    }
}

/// The device statistics libvirt's bulk statistics carry (`rd.*`, `wr.*`, `fl.*`).
fn in_libvirt_stats(field: Field) -> bool {
    matches!(
        field,
        Field::ReadsCompleted
            | Field::SectorsRead
            | Field::ReadTimeMs
            | Field::WritesCompleted
            | Field::SectorsWritten
            | Field::WriteTimeMs
            | Field::FlushesCompleted
            | Field::FlushTimeMs
    )
}

/// The libvirt connection's health and mode.
fn emit_libvirt(out: &mut Metrics, libvirt: &Libvirt) {
    let Some(status) = libvirt.status() else {
        return;
    };
    let labels = [("uri", status.uri.as_str())];
    out.gauge(
        "kvmio_libvirt_up",
        "1 if libvirtd answered this scrape's domain listing, else 0 (its domains are then \
         absent; kvmio reconnects at the next scrape).",
        &labels,
        if status.result.is_ok() { 1.0 } else { 0.0 },
    );
    if let Some(access) = libvirt.access() {
        let on_off = |b: bool| if b { "on" } else { "off" };
        out.info(
            "kvmio_libvirt_info",
            "The libvirt source's mode: access (read-write, or read-only: no guest layer), and \
             whether QMP and guest-agent queries go through libvirt's passthrough (which \
             taints domains).",
            &[
                ("uri", status.uri.as_str()),
                ("access", access),
                ("qmp_passthrough", on_off(libvirt.qmp_passthrough())),
                ("agent_passthrough", on_off(libvirt.agent_passthrough())),
            ],
        );
    }
}

fn emit_block_stats(
    out: &mut Metrics,
    vm: &str,
    device: &str,
    s: &BlockDeviceStats,
    origin: QemuOrigin,
) {
    let labels = [("vm", vm), ("device", device)];
    let libvirt = origin == QemuOrigin::LibvirtStats;
    for m in block_metrics() {
        if libvirt && !in_libvirt_stats(m.metric.field) {
            continue;
        }
        let Some(v) = qemu_block_value(s, m.metric.field) else {
            continue;
        };
        if m.metric.counter {
            out.counter(&m.name, &m.help, &labels, v);
        } else {
            out.gauge(&m.name, &m.help, &labels, v);
        }
    }
    if libvirt {
        // Failed and invalid operations, idle time and the highest offset need the monitor.
        return;
    }
    for (op, failed, invalid) in [
        ("read", s.failed_rd_operations, s.invalid_rd_operations),
        ("write", s.failed_wr_operations, s.invalid_wr_operations),
        (
            "flush",
            s.failed_flush_operations,
            s.invalid_flush_operations,
        ),
        (
            "discard",
            s.failed_unmap_operations,
            s.invalid_unmap_operations,
        ),
    ] {
        let labels = [("vm", vm), ("device", device), ("op", op)];
        out.counter(
            "kvmio_qemu_block_failed_operations_total",
            "QEMU device: requests that failed (I/O errors), by operation.",
            &labels,
            count(failed),
        );
        out.counter(
            "kvmio_qemu_block_invalid_operations_total",
            "QEMU device: invalid requests (e.g. beyond the end of the disk), by operation.",
            &labels,
            count(invalid),
        );
    }
    if let Some(idle) = s.idle_time_ns {
        out.gauge(
            "kvmio_qemu_block_idle_seconds",
            "QEMU device: time since its last request (absent before the first one).",
            &labels,
            ns(idle),
        );
    }
    out.gauge(
        "kvmio_qemu_block_highest_written_offset_bytes",
        "QEMU device: the end of the highest write since QEMU started.",
        &labels,
        count(s.wr_highest_offset),
    );
}

fn emit_histogram(
    out: &mut Metrics,
    vm: &str,
    device: &str,
    op: &str,
    h: &BlockLatencyHistogramInfo,
    bounds: &[u64],
    sum_ns: i64,
) {
    if h.boundaries != bounds || h.bins.len() != h.boundaries.len() + 1 {
        return;
    }
    let mut cumulative = 0u64;
    let buckets: Vec<(f64, u64)> = h
        .boundaries
        .iter()
        .zip(&h.bins)
        .map(|(&b, &n)| {
            cumulative = cumulative.saturating_add(n);
            (b as f64 / 1e9, cumulative)
        })
        .collect();
    let total = h.bins.iter().fold(0u64, |a, &n| a.saturating_add(n));
    let (name, help) = match op {
        "read" => (
            "kvmio_qemu_block_read_latency_seconds",
            "QEMU device: read latency since kvmio set the histogram (block-latency-histogram-set); \
             _sum is the read time accounted since.",
        ),
        "write" => (
            "kvmio_qemu_block_write_latency_seconds",
            "QEMU device: write latency since kvmio set the histogram; _sum is the write time \
             accounted since.",
        ),
        _ => (
            "kvmio_qemu_block_flush_latency_seconds",
            "QEMU device: flush latency since kvmio set the histogram; _sum is the flush time \
             accounted since.",
        ),
    };
    out.histogram(
        name,
        help,
        &[("vm", vm), ("device", device)],
        &buckets,
        total,
        ns(sum_ns),
    );
}

fn emit_nodes(
    out: &mut Metrics,
    vm: &str,
    device: &str,
    s: &BlockStats,
    driver: &str,
    snap: &QmpSnapshot,
    depth: usize,
) {
    if depth > 32 {
        return;
    }
    if let Some(node) = s.node_name.as_deref().filter(|n| !n.is_empty()) {
        let labels = [
            ("vm", vm),
            ("device", device),
            ("node", node),
            ("driver", driver),
        ];
        out.gauge(
            "kvmio_qemu_node_highest_written_offset_bytes",
            "QEMU block node: the end of the highest write to this node (for a protocol node \
             under qcow2: how far the image file grew, metadata included).",
            &labels,
            count(s.stats.wr_highest_offset),
        );
        if let Some(ds) = s.driver_specific.as_ref() {
            let get = |k: &str| ds.get(k).and_then(serde_json::Value::as_i64);
            for m in node_metrics() {
                let v = match m.metric.field {
                    Field::DiscardsCompleted => get("discard-nb-ok"),
                    Field::SectorsDiscarded => get("discard-bytes-ok"),
                    _ => None,
                };
                if let Some(v) = v {
                    out.counter(&m.name, &m.help, &labels, count(v));
                }
            }
            if let Some(v) = get("discard-nb-failed") {
                out.counter(
                    "kvmio_qemu_node_failed_discards_total",
                    "QEMU block node (file/host_device): discards the host rejected.",
                    &labels,
                    count(v),
                );
            }
        }
    }
    if let Some(parent) = s.parent.as_deref() {
        let d = node_driver(parent, snap);
        emit_nodes(out, vm, device, parent, &d, snap, depth + 1);
    }
    if let Some(backing) = s.backing.as_deref() {
        let d = node_driver(backing, snap);
        emit_nodes(out, vm, device, backing, &d, snap, depth + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_paths() {
        let i: BlockDeviceInfo = serde_json::from_value(serde_json::json!({
            "file": "json:{\"driver\": \"qcow2\", \"file\": {\"driver\": \"file\", \"filename\": \"/img/a.qcow2\"}}",
            "drv": "qcow2"
        }))
        .unwrap();
        assert_eq!(image_path(&i), "/img/a.qcow2");
        let i: BlockDeviceInfo = serde_json::from_value(serde_json::json!({
            "file": "nbd+unix:///?socket=/run/x.sock", "drv": "raw",
            "image": {"filename": "nbd+unix:///?socket=/run/x.sock", "format": "raw"}
        }))
        .unwrap();
        assert_eq!(image_path(&i), "nbd+unix:///?socket=/run/x.sock");
    }

    #[test]
    fn every_issue_suffix_but_the_in_flight_ones_maps() {
        let s = BlockDeviceStats::default();
        let mapped: Vec<&str> = DISK_METRICS
            .iter()
            .filter(|m| qemu_block_value(&s, m.field).is_some())
            .map(|m| m.suffix)
            .collect();
        assert_eq!(mapped.len(), 13);
        assert!(!mapped.contains(&"io_now"));
    }
}
