//! The QMP collector's statistics families: each device's counters
//! (`kvmio_qemu_block_<suffix>`, failed and invalid operations, idle time, highest offset),
//! the opt-in latency histograms, the nodes below each device (`kvmio_qemu_node_*`) and the
//! QEMU process's IO. A snapshot from libvirt's bulk statistics ([`QemuOrigin::LibvirtStats`])
//! has only requests, bytes and times: the rest is left out, never exported as zero.

use std::collections::HashMap;
use std::sync::LazyLock;

use kvmio_qemu::types::{BlockDeviceStats, BlockLatencyHistogramInfo, BlockStats};

use super::{layer_metrics, node_driver, LayerMetric, BLOCK_PREFIX, NODE_PREFIX};
use crate::host::diskstats::Field;
use crate::metrics::Metrics;
use crate::vm::qmp::{device_label, QemuOrigin};
use crate::vm::QmpSnapshot;

/// Every device's statistics, histograms and nodes; returns each device's statistics by label
/// (the configuration families name the protocol driver from them).
pub(super) fn emit_devices<'s>(
    out: &mut Metrics,
    vm: &str,
    snap: &'s QmpSnapshot,
    buckets_ns: Option<&[u64]>,
) -> HashMap<&'s str, &'s BlockStats> {
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
        let mut seen = std::collections::HashSet::new();
        emit_nodes(out, vm, device, s, &top_driver, snap, &mut seen, 0);
    }
    stats_by_label
}

/// `kvmio_qemu_process_{read,written}_bytes_total`.
pub(super) fn emit_process(out: &mut Metrics, vm: &str, snap: &QmpSnapshot) {
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

fn emit_block_stats(
    out: &mut Metrics,
    vm: &str,
    device: &str,
    s: &BlockDeviceStats,
    origin: QemuOrigin,
) {
    let labels = [("vm", vm), ("device", device)];
    let libvirt = origin == QemuOrigin::LibvirtStats;
    for m in BLOCK_METRICS.iter() {
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

/// A node's series, then its children's. A filter node (copy-on-read, throttle) shows its child
/// as both `parent` and `backing` in `query-blockstats`: each node is exported once (`seen`).
#[allow(clippy::too_many_arguments)]
fn emit_nodes<'s>(
    out: &mut Metrics,
    vm: &str,
    device: &str,
    s: &'s BlockStats,
    driver: &str,
    snap: &QmpSnapshot,
    seen: &mut std::collections::HashSet<&'s str>,
    depth: usize,
) {
    if depth > 32 {
        return;
    }
    if let Some(node) = s.node_name.as_deref().filter(|n| !n.is_empty()) {
        if !seen.insert(node) {
            return;
        }
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
            for m in NODE_METRICS.iter() {
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
        emit_nodes(out, vm, device, parent, &d, snap, seen, depth + 1);
    }
    if let Some(backing) = s.backing.as_deref() {
        let d = node_driver(backing, snap);
        emit_nodes(out, vm, device, backing, &d, snap, seen, depth + 1);
    }
}

/// The device layer's families, built once.
static BLOCK_METRICS: LazyLock<Vec<LayerMetric>> = LazyLock::new(|| {
    layer_metrics(
        BLOCK_PREFIX,
        "QEMU device (the guest's virtual disk, as QEMU's block backend accounts it)",
    )
});

/// The block node layer's families, built once.
static NODE_METRICS: LazyLock<Vec<LayerMetric>> = LazyLock::new(|| {
    layer_metrics(
        NODE_PREFIX,
        "QEMU block node (file/host_device driver statistics)",
    )
});

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
