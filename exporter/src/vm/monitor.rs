//! The monitor's part of a scrape, over any [`QmpCommands`] (a socket, or libvirt's monitor
//! passthrough), into a [`QmpSnapshot`]; and a socket VM's whole QMP scrape ([`scrape`]):
//! connect (or reuse the pooled monitor, [`super::connection`]), then the queries.
//!
//! The cache belongs to one QEMU process: the monitor socket's peer PID (`SO_PEERCRED`) keys it,
//! so a VM restarted on the same socket starts afresh. Every call is bounded by the VM's deadline;
//! a connection whose call did not complete is dropped, never reused.
//!
//! `query-blockstats` and `query-block` are asked at every scrape, and what is cached per QEMU
//! process only once (or when it changes):
//!
//! - `query-name` (the `vm` label);
//! - `query-pci` (for the guest disk join; only for VMs with an agent, refreshed when a guest disk
//!   does not match);
//! - `query-status` (the run state) at every scrape;
//! - `qom-get` of each device's `type`, `serial`, `iothread` and `write-cache`; for a virtio
//!   backend its transport's type (the model, `virtio-blk-pci`); for a SCSI disk its bus's owner
//!   (the controller and its iothread, or the `usb-storage` holding it) ([`super::qom`]);
//! - `query-named-block-nodes` (every node's driver, filename, cache flags and detect-zeroes:
//!   the settings effective where QEMU applies them), asked again when a new node appears; the
//!   limits of the throttle groups that throttle nodes name (`qom-get /objects/GROUP limits`);
//! - the devices without a block backend here (`qom-list` of `/machine/peripheral` and
//!   `/machine/peripheral-anon`: `vhost-user-blk*`, `vhost-*scsi*`, `vfio-pci`), with the
//!   socket of a vhost-user device's chardev (`qom-get /chardevs/ID addr`) ([`super::qom`]);
//! - the command line from `<procfs>/PID/cmdline` ([`super::cmdline`]);
//! - with `--qmp.latency-buckets`, the latency histograms this exporter set.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kvmio_qemu::types::{flatten_pci, BlockDeviceInfo, BlockInfo, BlockStats, PciFunction};
use kvmio_qemu::{Error as QemuError, Qmp, QmpCommands};
use serde_json::json;
use tokio::time::{timeout_at, Instant};

use super::cmdline::{self, QemuCmdline};
use super::connection::{with_connection, Calls, Pooled, SocketClient};
use super::qmp::{
    device_label, read_process_io, DeviceFacts, HistogramBase, NodeFacts, OtherDevice, QemuOrigin,
    QmpSnapshot, RunState, ThrottleLimits,
};
use super::qom::{facts_of, other_devices, qom_path};
use crate::config::Config;

/// The QMP side of the connection pool ([`super::connection`]): its names and limits.
impl SocketClient for Qmp {
    const NAME: &'static str = "QMP";
    const HANDSHAKE: &'static str = "QMP handshake";
    const CALLS_TIMED_OUT: &'static str = "QMP queries timed out";
    const MAX_LINE_BYTES: usize = super::qmp::QMP_MAX_LINE_BYTES;

    fn handshake(
        stream: tokio::net::UnixStream,
        limits: kvmio_qemu::Limits,
    ) -> impl std::future::Future<Output = kvmio_qemu::Result<Self>> + Send {
        Qmp::handshake(stream, limits)
    }
}

/// `query-pci` is asked again at most this often when a guest disk has no PCI match.
const PCI_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// A failed `block-latency-histogram-set` is retried after this long.
const HISTOGRAM_RETRY: Duration = Duration::from_secs(300);

/// A VM's QMP state kept between scrapes.
#[derive(Debug, Default)]
pub struct QmpState {
    /// The pooled monitor (`--qmp.persistent`) and the last peer's PID.
    conn: Pooled<Qmp>,
    pub(crate) cache: Cache,
    /// Set by the join when a guest disk found no PCI match: refresh `query-pci`.
    pub(crate) pci_stale: bool,
}

impl QmpState {
    /// The VM's `-name`, if this QEMU process has been asked.
    pub fn name(&self) -> Option<&str> {
        self.cache.name()
    }

    /// The PID of the last monitor peer connected to, if any.
    pub fn peer_pid(&self) -> Option<u32> {
        self.conn.peer()
    }

    /// Whether a monitor connection is pooled.
    pub fn has_connection(&self) -> bool {
        self.conn.is_some()
    }
}

/// Per-QEMU-process cache.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    pid: Option<u32>,
    /// `Some(None)`: QEMU has no `-name`.
    name: Option<Option<String>>,
    cmdline: Option<Option<Arc<QemuCmdline>>>,
    pci: Option<(Instant, Arc<Vec<PciFunction>>)>,
    devices: HashMap<String, Arc<DeviceFacts>>,
    /// `None`: a node QEMU did not list (not asked for again).
    nodes: HashMap<String, Option<Arc<NodeFacts>>>,
    other_devices: Option<Arc<Vec<OtherDevice>>>,
    /// `None`: a group whose limits QEMU did not give.
    throttle_groups: HashMap<String, Option<Arc<ThrottleLimits>>>,
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
    let run_state = match qmp.query_status().await {
        Ok(s) => Some(RunState {
            state: s.status,
            reason: String::new(),
        }),
        Err(e) if e.is_command() => None,
        Err(e) => return Err(e),
    };
    let mut blockstats = qmp.query_blockstats().await?;
    let block = qmp.query_block().await?;
    if has_agent {
        refresh_pci(qmp, cache, pci_stale).await?;
    }
    let devices = device_facts(qmp, cache, &block).await?;
    node_facts(qmp, cache, &blockstats, &block).await?;
    throttle_groups(qmp, cache).await?;
    if cache.other_devices.is_none() {
        cache.other_devices = Some(Arc::new(other_devices(qmp).await?));
    }
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

    let nodes = cache
        .nodes
        .iter()
        .filter_map(|(n, f)| Some((n.clone(), f.clone()?)))
        .collect();
    let throttle_groups = cache
        .throttle_groups
        .iter()
        .filter_map(|(g, l)| Some((g.clone(), l.clone()?)))
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
        nodes,
        other_devices: cache.other_devices.clone().unwrap_or_default(),
        throttle_groups,
        run_state,
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
            let facts = facts_of(qmp, &qom_path(qdev)).await?;
            cache.devices.insert(qdev.to_owned(), Arc::new(facts));
        }
        devices.insert(qdev.to_owned(), cache.devices[qdev].clone());
    }
    Ok(devices)
}

/// Every node under the backends (`query-named-block-nodes`), when one is not yet known.
async fn node_facts(
    qmp: &mut impl QmpCommands,
    cache: &mut Cache,
    blockstats: &[BlockStats],
    block: &[BlockInfo],
) -> Result<(), QemuError> {
    let mut unknown = Vec::new();
    for s in blockstats {
        collect_unknown_nodes(s, &cache.nodes, &mut unknown, 0);
    }
    for b in block {
        if let Some(name) = b.inserted.as_ref().and_then(|i| i.node_name.as_deref()) {
            if !cache.nodes.contains_key(name) {
                unknown.push(name.to_owned());
            }
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    match qmp.query_named_block_nodes().await {
        Ok(nodes) => {
            for n in nodes {
                if let Some(name) = n.node_name.clone() {
                    cache.nodes.insert(name, Some(Arc::new(node_facts_of(&n))));
                }
            }
        }
        Err(e) if e.is_command() => {}
        Err(e) => return Err(e),
    }
    for name in unknown {
        // Remember nodes QEMU did not list either, so they are not asked for again.
        cache.nodes.entry(name).or_insert(None);
    }
    Ok(())
}

/// What a node runs with, from its `query-named-block-nodes` entry.
pub(crate) fn node_facts_of(n: &BlockDeviceInfo) -> NodeFacts {
    let json = n
        .file
        .strip_prefix("json:")
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok());
    let str_of = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_owned);
    NodeFacts {
        drv: n.drv.clone(),
        file: n.file.clone(),
        direct: n.cache.is_some_and(|c| c.direct),
        no_flush: n.cache.is_some_and(|c| c.no_flush),
        detect_zeroes: n.detect_zeroes.clone(),
        throttle_group: (n.drv == "throttle")
            .then(|| str_of(json.as_ref().and_then(|j| j.get("throttle-group"))))
            .flatten(),
        data_file: str_of(
            n.image
                .as_ref()
                .and_then(|i| i.format_specific.as_ref())
                .and_then(|f| f.get("data"))
                .and_then(|d| d.get("data-file")),
        ),
    }
}

/// The limits of the throttle groups throttle nodes name, once per group.
async fn throttle_groups(qmp: &mut impl QmpCommands, cache: &mut Cache) -> Result<(), QemuError> {
    let groups: Vec<String> = cache
        .nodes
        .values()
        .flatten()
        .filter_map(|n| n.throttle_group.clone())
        .filter(|g| !cache.throttle_groups.contains_key(g))
        .collect();
    for g in groups {
        let limits = match qmp
            .execute::<ThrottleLimits>(
                "qom-get",
                Some(json!({"path": format!("/objects/{g}"), "property": "limits"})),
            )
            .await
        {
            Ok(l) => Some(Arc::new(l)),
            Err(e) if e.is_command() || matches!(e, QemuError::Decode { .. }) => None,
            Err(e) => return Err(e),
        };
        cache.throttle_groups.insert(g, limits);
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

/// Node names in a backend's `query-blockstats` tree not yet in the cache.
fn collect_unknown_nodes(
    s: &BlockStats,
    known: &HashMap<String, Option<Arc<NodeFacts>>>,
    out: &mut Vec<String>,
    depth: usize,
) {
    if depth > 32 {
        return;
    }
    if let Some(name) = s.node_name.as_deref() {
        if !known.contains_key(name) && !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
    }
    for child in [&s.parent, &s.backing].into_iter().flatten() {
        collect_unknown_nodes(child, known, out, depth + 1);
    }
}

/// Scrapes one VM's monitor.
pub(crate) async fn scrape(
    path: &Path,
    has_agent: bool,
    st: &mut QmpState,
    config: &Config,
    deadline: Instant,
) -> Result<QmpSnapshot, String> {
    let calls = MonitorCalls {
        cache: &mut st.cache,
        pci_stale: &mut st.pci_stale,
        has_agent,
        config,
        deadline,
    };
    with_connection(path, &mut st.conn, config, deadline, calls).await
}

/// A scrape's monitor calls ([`queries`], bounded by the deadline) for [`with_connection`].
struct MonitorCalls<'a> {
    cache: &'a mut Cache,
    pci_stale: &'a mut bool,
    has_agent: bool,
    config: &'a Config,
    deadline: Instant,
}

impl Calls<Qmp> for MonitorCalls<'_> {
    type Out = QmpSnapshot;

    async fn run(
        &mut self,
        qmp: &mut Qmp,
        pid: Option<u32>,
    ) -> Result<(QmpSnapshot, bool), Option<QemuError>> {
        adopt(self.cache, pid);
        let stale = std::mem::take(self.pci_stale);
        let calls = queries(qmp, pid, self.has_agent, stale, self.cache, self.config);
        let result = match timeout_at(self.deadline, calls).await {
            Ok(Ok(snapshot)) => Ok((snapshot, true)),
            Ok(Err(e)) => Err(Some(e)),
            Err(_) => Err(None),
        };
        if result.is_err() {
            // Not refreshed: ask again next time.
            *self.pci_stale |= stale;
        }
        result
    }
}
