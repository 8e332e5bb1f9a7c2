//! The monitor's part of a scrape, over any [`QmpCommands`] (a socket, or libvirt's monitor
//! passthrough): `query-blockstats` and `query-block` at every scrape, and what is cached per
//! QEMU process and only asked once (or when it changes):
//!
//! - `query-name` (the `vm` label);
//! - `query-pci` (for the guest disk join; only for VMs with an agent, refreshed when a guest disk
//!   does not match);
//! - `qom-get` of each device's `type` (the `bus` label), `serial` and `iothread`;
//! - `query-named-block-nodes` (drivers of nodes `query-blockstats` does not name);
//! - the command line from `<procfs>/PID/cmdline` ([`super::cmdline`]);
//! - with `--qmp.latency-buckets`, the latency histograms this exporter set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kvmio_qemu::types::{flatten_pci, BlockInfo, BlockStats, PciFunction};
use kvmio_qemu::{Error as QemuError, QmpCommands};
use serde_json::json;
use tokio::time::Instant;

use super::cmdline::{self, QemuCmdline};
use super::qmp::{
    device_label, read_process_io, DeviceFacts, HistogramBase, QemuOrigin, QmpSnapshot,
};
use crate::config::Config;

/// `query-pci` is asked again at most this often when a guest disk has no PCI match.
const PCI_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// A failed `block-latency-histogram-set` is retried after this long.
const HISTOGRAM_RETRY: Duration = Duration::from_secs(300);

/// Per-QEMU-process cache.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    pid: Option<u32>,
    /// `Some(None)`: QEMU has no `-name`.
    name: Option<Option<String>>,
    cmdline: Option<Option<Arc<QemuCmdline>>>,
    pci: Option<(Instant, Arc<Vec<PciFunction>>)>,
    devices: HashMap<String, Arc<DeviceFacts>>,
    node_drivers: HashMap<String, String>,
    histograms: HashMap<String, HistogramBase>,
    histogram_failed: HashMap<String, Instant>,
}

impl Cache {
    /// The VM's `-name`, if this QEMU process has been asked.
    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_ref().and_then(|n| n.as_deref())
    }
}

/// Keeps the cache if it belongs to this process, else starts a new one.
pub(crate) fn adopt(cache: &mut Cache, pid: Option<u32>) {
    if cache.pid != pid {
        *cache = Cache {
            pid,
            ..Cache::default()
        };
    }
}

/// The monitor's part of a scrape, over any [`QmpCommands`] (a socket or libvirt's
/// passthrough), with the per-process `cache`.
pub(crate) async fn queries(
    qmp: &mut impl QmpCommands,
    pid: Option<u32>,
    has_agent: bool,
    pci_stale: bool,
    cache: &mut Cache,
    config: &Config,
) -> Result<QmpSnapshot, QemuError> {
    if cache.name.is_none() {
        cache.name = Some(match qmp.query_name().await {
            Ok(n) => n.filter(|n| !n.is_empty()),
            Err(e) if e.is_command() => None,
            Err(e) => return Err(e),
        });
    }
    let mut blockstats = qmp.query_blockstats().await?;
    let block = qmp.query_block().await?;
    if has_agent {
        refresh_pci(qmp, cache, pci_stale).await?;
    }
    let devices = device_facts(qmp, cache, &block).await?;
    node_drivers(qmp, cache, &blockstats).await?;
    if let Some(boundaries) = config.qmp_latency_boundaries_ns() {
        set_histograms(qmp, cache, &mut blockstats, &boundaries).await?;
    }

    if cache.cmdline.is_none() {
        cache.cmdline = Some(
            pid.and_then(|p| cmdline::read_proc(&config.procfs, p))
                .map(Arc::new),
        );
    }
    let cmdline = cache.cmdline.clone().flatten();
    // Only for a peer that is QEMU itself (its command line says so).
    let process_io = cmdline
        .as_ref()
        .and(pid)
        .and_then(|p| read_process_io(&config.procfs, p));

    let node_drivers = cache
        .node_drivers
        .iter()
        .filter(|(_, d)| !d.is_empty())
        .map(|(n, d)| (n.clone(), d.clone()))
        .collect();
    let histograms = if config.qmp_latency_buckets.is_some() {
        cache.histograms.clone()
    } else {
        HashMap::new()
    };
    Ok(QmpSnapshot {
        origin: QemuOrigin::Monitor,
        configured: HashMap::new(),
        pid,
        blockstats,
        block,
        pci: cache
            .pci
            .as_ref()
            .map(|(_, p)| p.clone())
            .unwrap_or_default(),
        devices,
        node_drivers,
        cmdline,
        process_io,
        histograms,
    })
}

/// `query-pci`, once per process, and again (at most every [`PCI_REFRESH_INTERVAL`]) when the
/// join found a guest disk at an address the cached list lacks.
async fn refresh_pci(
    qmp: &mut impl QmpCommands,
    cache: &mut Cache,
    pci_stale: bool,
) -> Result<(), QemuError> {
    let due = match &cache.pci {
        None => true,
        Some((at, _)) => pci_stale && at.elapsed() >= PCI_REFRESH_INTERVAL,
    };
    if due {
        let list = match qmp.query_pci().await {
            Ok(buses) => flatten_pci(&buses),
            // -M none and machines without PCI.
            Err(e) if e.is_command() => Vec::new(),
            Err(e) => return Err(e),
        };
        cache.pci = Some((Instant::now(), Arc::new(list)));
    }
    Ok(())
}

/// Device facts (`qom-get`), once per device model; by qdev path.
async fn device_facts(
    qmp: &mut impl QmpCommands,
    cache: &mut Cache,
    block: &[BlockInfo],
) -> Result<HashMap<String, Arc<DeviceFacts>>, QemuError> {
    let mut devices = HashMap::new();
    for b in block {
        let Some(qdev) = b.qdev.as_deref().filter(|q| !q.is_empty()) else {
            continue;
        };
        if !cache.devices.contains_key(qdev) {
            let facts = DeviceFacts {
                type_name: qom_string(qmp, qdev, "type").await?,
                serial: qom_string(qmp, qdev, "serial").await?,
                iothread: qom_string(qmp, qdev, "iothread")
                    .await?
                    .map(|t| t.strip_prefix("/objects/").map(str::to_owned).unwrap_or(t)),
            };
            cache.devices.insert(qdev.to_owned(), Arc::new(facts));
        }
        devices.insert(qdev.to_owned(), cache.devices[qdev].clone());
    }
    Ok(devices)
}

/// Drivers of nodes without `driver-specific` (format nodes in backing chains, protocol drivers
/// without statistics): one `query-named-block-nodes` when an unknown one appears.
async fn node_drivers(
    qmp: &mut impl QmpCommands,
    cache: &mut Cache,
    blockstats: &[BlockStats],
) -> Result<(), QemuError> {
    let mut unknown = Vec::new();
    for s in blockstats {
        collect_unnamed_nodes(s, true, &cache.node_drivers, &mut unknown, 0);
    }
    if !unknown.is_empty() {
        match qmp.query_named_block_nodes().await {
            Ok(nodes) => {
                for n in nodes {
                    if let Some(name) = n.node_name {
                        cache.node_drivers.insert(name, n.drv);
                    }
                }
            }
            Err(e) if e.is_command() => {}
            Err(e) => return Err(e),
        }
        for name in unknown {
            // Remember nodes QEMU did not list either, so they are not asked for again.
            cache.node_drivers.entry(name).or_default();
        }
    }
    Ok(())
}

/// Opt-in latency histograms: set where they are missing or have other boundaries (which
/// resets their bins: this scrape's copies of those are dropped).
async fn set_histograms(
    qmp: &mut impl QmpCommands,
    cache: &mut Cache,
    blockstats: &mut [BlockStats],
    boundaries: &[u64],
) -> Result<(), QemuError> {
    let mut just_set = Vec::new();
    for s in blockstats.iter() {
        let Some(qdev) = s.qdev.as_deref().filter(|q| !q.is_empty()) else {
            continue;
        };
        let label = device_label(s.device.as_deref(), Some(qdev), s.node_name.as_deref());
        let current = s
            .stats
            .wr_latency_histogram
            .as_ref()
            .map(|h| h.boundaries.as_slice());
        let ours = cache.histograms.contains_key(label) && current == Some(boundaries);
        if ours {
            continue;
        }
        if cache
            .histogram_failed
            .get(label)
            .is_some_and(|at| at.elapsed() < HISTOGRAM_RETRY)
        {
            continue;
        }
        match qmp.block_latency_histogram_set(qdev, boundaries).await {
            Ok(()) => {
                cache.histograms.insert(
                    label.to_owned(),
                    HistogramBase {
                        rd_total_time_ns: s.stats.rd_total_time_ns,
                        wr_total_time_ns: s.stats.wr_total_time_ns,
                        flush_total_time_ns: s.stats.flush_total_time_ns,
                    },
                );
                just_set.push(label.to_owned());
            }
            Err(e) if e.is_command() => {
                tracing::debug!(device = label, "block-latency-histogram-set: {e}");
                cache
                    .histogram_failed
                    .insert(label.to_owned(), Instant::now());
                cache.histograms.remove(label);
            }
            Err(e) => return Err(e),
        }
    }
    // The bins were just reset: this scrape's copies predate that.
    for s in blockstats.iter_mut() {
        let label = device_label(
            s.device.as_deref(),
            s.qdev.as_deref(),
            s.node_name.as_deref(),
        );
        if just_set.iter().any(|l| l == label) {
            s.stats.rd_latency_histogram = None;
            s.stats.wr_latency_histogram = None;
            s.stats.flush_latency_histogram = None;
        }
    }
    Ok(())
}

/// Node names below a backend whose driver neither `query-blockstats` (`driver-specific`) nor
/// `query-block` (the top node's `drv`) gives.
fn collect_unnamed_nodes(
    s: &BlockStats,
    top: bool,
    known: &HashMap<String, String>,
    out: &mut Vec<String>,
    depth: usize,
) {
    if depth > 32 {
        return;
    }
    if !top {
        if let Some(name) = s.node_name.as_deref() {
            let named = s
                .driver_specific
                .as_ref()
                .and_then(|d| d.get("driver"))
                .is_some();
            if !named && !known.contains_key(name) {
                out.push(name.to_owned());
            }
        }
    }
    for child in [&s.parent, &s.backing].into_iter().flatten() {
        collect_unnamed_nodes(child, false, known, out, depth + 1);
    }
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
