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

mod backend;
mod config;
mod stats;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use kvmio_qemu::types::{BlockDeviceInfo, BlockStats};
use kvmio_qemu::CacheMode;

pub use self::stats::qemu_block_value;
use super::{CollectFuture, Collector, ImageRef, ScrapeContext};
use crate::host::blockdev::ImageDevice;
use crate::host::diskstats::{DiskMetric, DISK_METRICS};
use crate::metrics::Metrics;
use crate::vm::libvirt::Libvirt;
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
pub(super) fn protocol_driver(
    stats: Option<&BlockStats>,
    snap: &QmpSnapshot,
    top_driver: &str,
) -> String {
    let Some(parent) = stats.and_then(|s| s.parent.as_deref()) else {
        // No child: the top node is the protocol node itself (raw `file`, `host_device`, `nbd`).
        return top_driver.to_owned();
    };
    node_driver(parent, snap)
}

pub(super) fn node_driver(s: &BlockStats, snap: &QmpSnapshot) -> String {
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
        .and_then(|n| snap.nodes.get(n))
        .map(|n| n.drv.clone())
        .unwrap_or_default()
}

pub(super) fn on_off(b: bool) -> &'static str {
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
                        let view = backend::backend(snap, device, inserted);
                        let mut paths = vec![view.path.clone()];
                        paths.extend(view.images.iter().skip(1).map(|(p, _)| p.clone()));
                        paths.extend(view.data_file.clone());
                        paths.dedup();
                        for p in paths {
                            images.push(ImageRef {
                                vm: o.vm.clone(),
                                device: device.to_owned(),
                                image: PathBuf::from(p),
                            });
                        }
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
    let socket = o.target.socket();
    out.info(
        "kvmio_vm_info",
        "A VM kvmio scrapes: where it was found (source: socket, proxmox, libvirt; socket: the \
         monitor socket), its own name (vm is that name, suffixed when another VM has it) and \
         its UUID where known (libvirt; else QEMU's -uuid or SMBIOS UUID).",
        &[
            ("vm", vm),
            ("source", o.source),
            ("uuid", &o.uuid),
            ("name", &o.name),
            ("socket", &socket),
        ],
    );
    let Some(result) = &o.qmp else { return };
    out.gauge(
        "kvmio_qmp_up",
        "1 if the VM's QMP monitor answered this scrape, else 0.",
        &[("vm", vm)],
        if result.is_ok() { 1.0 } else { 0.0 },
    );
    let Ok(snap) = result else { return };

    config::emit_state(out, vm, snap);
    let stats_by_label = stats::emit_devices(out, vm, snap, buckets_ns);
    config::emit_devices(out, vm, snap);
    config::emit_backends(out, o, snap, &stats_by_label, resolved);
    stats::emit_process(out, vm, snap);
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
        let s = kvmio_qemu::types::BlockDeviceStats::default();
        let mapped: Vec<&str> = DISK_METRICS
            .iter()
            .filter(|m| qemu_block_value(&s, m.field).is_some())
            .map(|m| m.suffix)
            .collect();
        assert_eq!(mapped.len(), 13);
        assert!(!mapped.contains(&"io_now"));
    }
}
