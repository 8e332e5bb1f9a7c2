//! Typed replies of the QMP and guest-agent commands kvmio uses.
//!
//! Field names follow QEMU's QAPI schema (`qapi/block-core.json`, `qapi/pci.json`,
//! `qapi/misc.json`, `qapi/machine.json`, `qga/qapi-schema.json`), checked against the
//! introspection (`query-qmp-schema`) of QEMU 7.2. Numbers are `i64` where the schema says `int`
//! and `u64` where it says `uint64`.
//!
//! Other QEMU versions add and drop fields, and the guest agent's replies come from the guest:
//! every struct is `#[serde(default)]` (a missing field reads as zero, empty or `None`) and
//! unknown fields are ignored. Fields that only some versions have are `Option`s.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cache::{CacheFlags, CacheMode};

// ---------------------------------------------------------------------------------------------
// QMP: greeting, version, name, status, events
// ---------------------------------------------------------------------------------------------

/// `major.minor.micro` of a QEMU (`VersionTriple`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(default)]
pub struct VersionTriple {
    pub major: i64,
    pub minor: i64,
    pub micro: i64,
}

impl std::fmt::Display for VersionTriple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// `query-version`, also the `version` of the QMP greeting (`VersionInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VersionInfo {
    pub qemu: VersionTriple,
    /// Distribution build string, e.g. `Debian 1:7.2+dfsg-7`; may be empty.
    pub package: String,
}

/// The QMP greeting, the `QMP` member of the first line QEMU sends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Greeting {
    pub version: VersionInfo,
    /// Optional protocol capabilities QEMU offers (e.g. `oob`); kvmio enables none.
    pub capabilities: Vec<String>,
}

/// `query-name` (`NameInfo`): the `-name` of the VM, absent if none was given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NameInfo {
    pub name: Option<String>,
}

/// `query-status` (`StatusInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusInfo {
    pub running: bool,
    /// Dropped from the schema in QEMU 8.1.
    pub singlestep: Option<bool>,
    /// The `RunState`: `running`, `paused`, `prelaunch`, `shutdown`, `io-error`, ...
    pub status: String,
}

/// When QEMU emitted an event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventTimestamp {
    pub seconds: i64,
    pub microseconds: i64,
}

/// An asynchronous QMP event (`{"event": "STOP", "data": {...}, "timestamp": {...}}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Event {
    pub event: String,
    pub data: Value,
    pub timestamp: EventTimestamp,
}

// ---------------------------------------------------------------------------------------------
// QMP: query-block, query-named-block-nodes
// ---------------------------------------------------------------------------------------------

/// One entry of `query-block` (`BlockInfo`): a block backend (`-drive id=`) and what is inserted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockInfo {
    /// The backend name (`-drive id=`); empty for backends created by `-device drive=NODE`.
    pub device: String,
    /// The QOM path or id of the device model the backend is attached to.
    pub qdev: Option<String>,
    /// Always `unknown`; kept by QEMU for compatibility.
    #[serde(rename = "type")]
    pub type_: String,
    pub removable: bool,
    pub locked: bool,
    /// The medium: absent for an empty drive (e.g. a CD-ROM without a disc).
    pub inserted: Option<BlockDeviceInfo>,
    pub tray_open: Option<bool>,
    /// `ok`, `failed` or `nospace`: only with `werror=stop`/`rerror=stop`.
    #[serde(rename = "io-status")]
    pub io_status: Option<String>,
}

impl BlockInfo {
    /// The `cache=` mode of the inserted medium, if any and if its flags name one.
    pub fn cache_mode(&self) -> Option<CacheMode> {
        self.inserted.as_ref().and_then(BlockDeviceInfo::cache_mode)
    }
}

/// The top node of a backend (`BlockDeviceInfo`), as in `query-block`'s `inserted` and in
/// each entry of `query-named-block-nodes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockDeviceInfo {
    /// The filename (or a JSON description) of the node.
    pub file: String,
    #[serde(rename = "node-name")]
    pub node_name: Option<String>,
    pub ro: bool,
    /// The block driver: `qcow2`, `raw`, `file`, `nbd`, ...
    pub drv: String,
    pub backing_file: Option<String>,
    pub backing_file_depth: i64,
    pub encrypted: bool,
    /// `off`, `on` or `unmap`.
    pub detect_zeroes: String,
    pub bps: i64,
    pub bps_rd: i64,
    pub bps_wr: i64,
    pub iops: i64,
    pub iops_rd: i64,
    pub iops_wr: i64,
    pub image: Option<ImageInfo>,
    pub bps_max: Option<i64>,
    pub bps_rd_max: Option<i64>,
    pub bps_wr_max: Option<i64>,
    pub iops_max: Option<i64>,
    pub iops_rd_max: Option<i64>,
    pub iops_wr_max: Option<i64>,
    pub bps_max_length: Option<i64>,
    pub bps_rd_max_length: Option<i64>,
    pub bps_wr_max_length: Option<i64>,
    pub iops_max_length: Option<i64>,
    pub iops_rd_max_length: Option<i64>,
    pub iops_wr_max_length: Option<i64>,
    pub iops_size: Option<i64>,
    /// The throttle group name.
    pub group: Option<String>,
    /// The three flags behind `cache=` (present since QEMU 2.3).
    pub cache: Option<CacheFlags>,
    pub write_threshold: i64,
    #[serde(rename = "dirty-bitmaps")]
    pub dirty_bitmaps: Vec<BlockDirtyInfo>,
}

impl BlockDeviceInfo {
    /// The `cache=` mode these flags correspond to; `None` if the flags are absent or name no
    /// mode (see [`CacheMode::from_flags`]).
    ///
    /// `writeback` is the guest-visible write cache as it is *now*, and the guest can change
    /// it: a virtio-blk driver that does not negotiate the flush feature (SeaBIOS, observed
    /// with QEMU 7.2) or that switches the disk to write-through turns it off, and a
    /// `cache=writeback` drive then reads as `writethrough`, `cache=none` as `directsync`.
    /// `direct` and `no-flush` are host-side and stay as configured. For the configured mode,
    /// read the flags before the guest starts (`-S`).
    pub fn cache_mode(&self) -> Option<CacheMode> {
        self.cache.and_then(CacheMode::from_flags)
    }
}

/// A dirty bitmap of a node (`BlockDirtyInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockDirtyInfo {
    pub name: Option<String>,
    pub count: i64,
    pub granularity: i64,
    pub recording: bool,
    pub busy: bool,
    pub persistent: bool,
    pub inconsistent: Option<bool>,
}

/// An image (`ImageInfo`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct ImageInfo {
    pub filename: String,
    pub format: String,
    pub dirty_flag: Option<bool>,
    pub actual_size: Option<i64>,
    pub virtual_size: i64,
    pub cluster_size: Option<i64>,
    pub encrypted: Option<bool>,
    pub compressed: Option<bool>,
    pub backing_filename: Option<String>,
    pub full_backing_filename: Option<String>,
    pub backing_filename_format: Option<String>,
    pub snapshots: Vec<SnapshotInfo>,
    pub backing_image: Option<Box<ImageInfo>>,
    /// Format-specific details (`{"type": "qcow2", "data": {...}}`), left untyped.
    pub format_specific: Option<Value>,
}

/// An internal snapshot of an image (`SnapshotInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct SnapshotInfo {
    pub id: String,
    pub name: String,
    pub vm_state_size: i64,
    pub date_sec: i64,
    pub date_nsec: i64,
    pub vm_clock_sec: i64,
    pub vm_clock_nsec: i64,
    pub icount: Option<i64>,
}

/// One property of a QOM object (`ObjectPropertyInfo`, `qom-list`): children are of type
/// `child<TYPE>`, links `link<TYPE>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ObjectPropertyInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
}

impl ObjectPropertyInfo {
    /// The type of a `child<TYPE>` property.
    pub fn child_type(&self) -> Option<&str> {
        self.type_.strip_prefix("child<")?.strip_suffix('>')
    }
}

// ---------------------------------------------------------------------------------------------
// QMP: query-blockstats
// ---------------------------------------------------------------------------------------------

/// One entry of `query-blockstats` (`BlockStats`): a backend's top node, or with
/// `query-nodes: true` any named node. `parent` is the node below (for a qcow2 drive: the
/// `file` protocol node that does the host I/O), `backing` the backing image's node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockStats {
    /// The backend name; absent (or empty) for nodes without one.
    pub device: Option<String>,
    /// The QOM path or id of the attached device model.
    pub qdev: Option<String>,
    #[serde(rename = "node-name")]
    pub node_name: Option<String>,
    pub stats: BlockDeviceStats,
    /// Driver statistics (`{"driver": "file", "discard-nb-ok": ...}`), left untyped.
    #[serde(rename = "driver-specific")]
    pub driver_specific: Option<Value>,
    pub parent: Option<Box<BlockStats>>,
    pub backing: Option<Box<BlockStats>>,
}

/// I/O accounting of one node (`BlockDeviceStats`). Counters are cumulative since QEMU started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockDeviceStats {
    pub rd_bytes: i64,
    pub wr_bytes: i64,
    pub unmap_bytes: i64,
    /// Zoned devices only, QEMU >= 8.1.
    pub zone_append_bytes: Option<i64>,
    pub rd_operations: i64,
    pub wr_operations: i64,
    pub flush_operations: i64,
    pub unmap_operations: i64,
    pub zone_append_operations: Option<i64>,
    pub rd_total_time_ns: i64,
    pub wr_total_time_ns: i64,
    pub flush_total_time_ns: i64,
    pub unmap_total_time_ns: i64,
    pub zone_append_total_time_ns: Option<i64>,
    /// The end of the highest write, in bytes.
    pub wr_highest_offset: i64,
    pub rd_merged: i64,
    pub wr_merged: i64,
    pub unmap_merged: i64,
    pub zone_append_merged: Option<i64>,
    /// Time since the last I/O; absent before the first one.
    pub idle_time_ns: Option<i64>,
    pub failed_rd_operations: i64,
    pub failed_wr_operations: i64,
    pub failed_flush_operations: i64,
    pub failed_unmap_operations: i64,
    pub failed_zone_append_operations: Option<i64>,
    pub invalid_rd_operations: i64,
    pub invalid_wr_operations: i64,
    pub invalid_flush_operations: i64,
    pub invalid_unmap_operations: i64,
    pub invalid_zone_append_operations: Option<i64>,
    /// Whether invalid requests are counted in the `*_operations` totals' latency accounting.
    pub account_invalid: bool,
    /// Whether failed requests are counted likewise.
    pub account_failed: bool,
    /// Per-interval latency statistics (`-drive stats-intervals=`).
    pub timed_stats: Vec<BlockDeviceTimedStats>,
    /// Set with `block-latency-histogram-set`.
    pub rd_latency_histogram: Option<BlockLatencyHistogramInfo>,
    pub wr_latency_histogram: Option<BlockLatencyHistogramInfo>,
    pub zone_append_latency_histogram: Option<BlockLatencyHistogramInfo>,
    pub flush_latency_histogram: Option<BlockLatencyHistogramInfo>,
}

/// Latency statistics over one interval (`BlockDeviceTimedStats`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockDeviceTimedStats {
    pub interval_length: i64,
    pub min_rd_latency_ns: i64,
    pub max_rd_latency_ns: i64,
    pub avg_rd_latency_ns: i64,
    pub min_wr_latency_ns: i64,
    pub max_wr_latency_ns: i64,
    pub avg_wr_latency_ns: i64,
    pub min_zone_append_latency_ns: Option<i64>,
    pub max_zone_append_latency_ns: Option<i64>,
    pub avg_zone_append_latency_ns: Option<i64>,
    pub min_flush_latency_ns: i64,
    pub max_flush_latency_ns: i64,
    pub avg_flush_latency_ns: i64,
    pub avg_rd_queue_depth: f64,
    pub avg_wr_queue_depth: f64,
    pub avg_zone_append_queue_depth: Option<f64>,
}

/// A latency histogram (`BlockLatencyHistogramInfo`): `bins[i]` counts requests with latency in
/// `[boundaries[i-1], boundaries[i])` ns, with open ends; so `bins.len() == boundaries.len() + 1`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockLatencyHistogramInfo {
    pub boundaries: Vec<u64>,
    pub bins: Vec<u64>,
}

// ---------------------------------------------------------------------------------------------
// QMP: query-pci
// ---------------------------------------------------------------------------------------------

/// One root PCI bus of `query-pci` (`PciInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PciInfo {
    pub bus: i64,
    pub devices: Vec<PciDeviceInfo>,
}

/// A PCI function (`PciDeviceInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PciDeviceInfo {
    pub bus: i64,
    pub slot: i64,
    pub function: i64,
    pub class_info: PciDeviceClass,
    pub id: PciDeviceId,
    pub irq: Option<i64>,
    pub irq_pin: i64,
    /// The `-device id=`; empty for devices created without one.
    pub qdev_id: String,
    /// Present for PCI bridges: their secondary bus and the devices behind them.
    pub pci_bridge: Option<PciBridgeInfo>,
    pub regions: Vec<PciMemoryRegion>,
}

/// The class of a PCI function (`PciDeviceClass`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PciDeviceClass {
    pub desc: Option<String>,
    pub class: i64,
}

/// Vendor and device ids (`PciDeviceId`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PciDeviceId {
    pub device: i64,
    pub vendor: i64,
    pub subsystem: Option<i64>,
    #[serde(rename = "subsystem-vendor")]
    pub subsystem_vendor: Option<i64>,
}

/// A bridge and what is behind it (`PciBridgeInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PciBridgeInfo {
    pub bus: PciBusInfo,
    pub devices: Vec<PciDeviceInfo>,
}

/// A bridge's bus numbers and windows (`PciBusInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PciBusInfo {
    pub number: i64,
    pub secondary: i64,
    pub subordinate: i64,
    pub io_range: PciMemoryRange,
    pub memory_range: PciMemoryRange,
    pub prefetchable_range: PciMemoryRange,
}

/// An address window (`PciMemoryRange`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PciMemoryRange {
    pub base: i64,
    pub limit: i64,
}

/// A BAR (`PciMemoryRegion`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PciMemoryRegion {
    pub bar: i64,
    /// `io` or `memory`.
    #[serde(rename = "type")]
    pub type_: String,
    pub address: i64,
    pub size: i64,
    pub prefetch: Option<bool>,
    pub mem_type_64: Option<bool>,
}

/// A PCI function with its address, as [`flatten_pci`] lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PciFunction {
    pub bus: i64,
    pub slot: i64,
    pub function: i64,
    /// The `-device id=`; empty if none was given.
    pub qdev_id: String,
    pub class: i64,
    pub vendor: i64,
    pub device: i64,
}

/// Lists every function of a `query-pci` reply, including those behind bridges, in the order
/// QEMU reports them. This is what maps a guest's PCI address (from `guest-get-disks`) to a
/// QEMU device id.
pub fn flatten_pci(buses: &[PciInfo]) -> Vec<PciFunction> {
    fn walk(devices: &[PciDeviceInfo], out: &mut Vec<PciFunction>) {
        for d in devices {
            out.push(PciFunction {
                bus: d.bus,
                slot: d.slot,
                function: d.function,
                qdev_id: d.qdev_id.clone(),
                class: d.class_info.class,
                vendor: d.id.vendor,
                device: d.id.device,
            });
            if let Some(bridge) = &d.pci_bridge {
                walk(&bridge.devices, out);
            }
        }
    }
    let mut out = Vec::new();
    for bus in buses {
        walk(&bus.devices, &mut out);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Guest agent
// ---------------------------------------------------------------------------------------------

/// `guest-info` (`GuestAgentInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestAgentInfo {
    /// The agent's version, e.g. `7.2.22`.
    pub version: String,
    pub supported_commands: Vec<GuestAgentCommandInfo>,
}

impl GuestAgentInfo {
    /// Whether the agent has `command` and the guest admin has not disabled it (`-b`).
    pub fn supports(&self, command: &str) -> bool {
        self.supported_commands
            .iter()
            .any(|c| c.name == command && c.enabled)
    }
}

/// One command the agent knows (`GuestAgentCommandInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestAgentCommandInfo {
    pub name: String,
    /// False if blocked by the guest admin (`qemu-ga -b`, `--allow-rpcs`).
    pub enabled: bool,
    /// False for commands that do not answer on success (`guest-shutdown`, `guest-suspend-*`).
    #[serde(rename = "success-response")]
    pub success_response: bool,
}

/// One entry of `guest-get-diskstats` (`GuestDiskStatsInfo`, QEMU >= 7.1; Linux guests).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestDiskStatsInfo {
    /// The kernel's name of the disk or partition (`vda`, `vda1`, `dm-0`).
    pub name: String,
    pub major: u64,
    pub minor: u64,
    pub stats: GuestDiskStats,
}

/// The guest kernel's `/proc/diskstats` counters for one disk (`GuestDiskStats`). Sectors are
/// 512 bytes; ticks are milliseconds. Each field is optional in the schema.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct GuestDiskStats {
    pub read_sectors: Option<u64>,
    pub read_ios: Option<u64>,
    pub read_merges: Option<u64>,
    pub write_sectors: Option<u64>,
    pub write_ios: Option<u64>,
    pub write_merges: Option<u64>,
    pub discard_sectors: Option<u64>,
    pub discard_ios: Option<u64>,
    pub discard_merges: Option<u64>,
    pub flush_ios: Option<u64>,
    pub read_ticks: Option<u64>,
    pub write_ticks: Option<u64>,
    pub discard_ticks: Option<u64>,
    pub flush_ticks: Option<u64>,
    /// I/Os in flight now (a gauge, not a counter).
    pub ios_pgr: Option<u64>,
    pub total_ticks: Option<u64>,
    pub weight_ticks: Option<u64>,
}

/// At most this many `dependencies` of a guest disk are kept (LVM over many PVs has dozens).
pub const MAX_DISK_DEPENDENCIES: usize = 64;

fn bounded_dependencies<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<String>>, D::Error> {
    crate::reply::at_most::<D, String, MAX_DISK_DEPENDENCIES>(d)
}

/// One entry of `guest-get-disks` (`GuestDiskInfo`, QEMU >= 5.2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestDiskInfo {
    /// The device node (`/dev/vda`) or, on Windows, the UNC path.
    pub name: String,
    pub partition: bool,
    /// Disks this one is built on (the PVs of an LV, the disk below a LUKS volume); at most
    /// [`MAX_DISK_DEPENDENCIES`], the rest skipped unread.
    #[serde(deserialize_with = "bounded_dependencies")]
    pub dependencies: Option<Vec<String>>,
    /// Absent for virtual devices (loop, dm).
    pub address: Option<GuestDiskAddress>,
    pub alias: Option<String>,
    /// SMART data (NVMe only). Not decoded (always `None` from a reply): kvmio does not use it,
    /// and as an untyped tree a guest could fill it with ~174,000 empty lists within the line
    /// cap, 16 MiB per VM kept with the cached `guest-get-disks` answer.
    #[serde(skip_deserializing)]
    pub smart: Option<Value>,
}

/// Where a guest disk sits (`GuestDiskAddress`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct GuestDiskAddress {
    /// The PCI function of the disk's controller: for virtio-blk, the disk's own function.
    pub pci_controller: GuestPciAddress,
    /// `virtio`, `scsi`, `sata`, `nvme`, `unknown`, ...
    pub bus_type: String,
    pub bus: i64,
    pub target: i64,
    pub unit: i64,
    /// The disk serial (`-device virtio-blk-pci,serial=`), if the guest can read one.
    pub serial: Option<String>,
    pub dev: Option<String>,
    #[serde(rename = "ccw-address")]
    pub ccw_address: Option<GuestCcwAddress>,
}

/// A PCI address seen from the guest (`GuestPCIAddress`); fields are -1 when unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestPciAddress {
    pub domain: i64,
    pub bus: i64,
    pub slot: i64,
    pub function: i64,
}

impl GuestPciAddress {
    /// Whether the agent filled in the address (it reports -1 for unknown fields).
    pub fn is_valid(&self) -> bool {
        self.domain >= 0 && self.bus >= 0 && self.slot >= 0 && self.function >= 0
    }
}

/// An s390x channel address (`GuestCCWAddress`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestCcwAddress {
    pub cssid: i64,
    pub ssid: i64,
    pub subchno: i64,
    pub devno: i64,
}

/// One mounted file system (`GuestFilesystemInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct GuestFilesystemInfo {
    pub name: String,
    pub mountpoint: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub used_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
    pub disk: Vec<GuestDiskAddress>,
}

/// `guest-exec`'s reply (`GuestExec`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestExec {
    pub pid: i64,
}

/// `guest-exec-status` as the agent sends it (`GuestExecStatus`), output still base64.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct GuestExecStatusRaw {
    pub exited: bool,
    pub exitcode: Option<i64>,
    pub signal: Option<i64>,
    pub out_data: Option<String>,
    pub err_data: Option<String>,
    pub out_truncated: Option<bool>,
    pub err_truncated: Option<bool>,
}

/// `guest-exec-status` with the captured output decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecStatus {
    pub exited: bool,
    /// The exit code, if the process exited normally.
    pub exitcode: Option<i64>,
    /// The signal (or Windows exception code) that ended the process.
    pub signal: Option<i64>,
    /// Captured stdout; empty unless `capture_output` was set.
    pub out: Vec<u8>,
    /// Captured stderr; empty unless `capture_output` was set.
    pub err: Vec<u8>,
    /// The agent cut stdout short (it keeps at most 16 MiB in QEMU 7.2).
    pub out_truncated: bool,
    pub err_truncated: bool,
}

impl ExecStatus {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.exited && self.exitcode == Some(0)
    }
}

/// `guest-file-read`'s reply (`GuestFileRead`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestFileRead {
    /// Bytes read, before base64 encoding.
    pub count: i64,
    #[serde(rename = "buf-b64")]
    pub buf_b64: String,
    pub eof: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `qom-list /machine/peripheral` as QEMU 7.2 answered it (tests/qemu_configs.rs' VM).
    #[test]
    fn qom_list_children() {
        let list: Vec<ObjectPropertyInfo> = serde_json::from_str(
            r#"[{"name":"type","type":"string"},{"name":"vub0","type":"child<vhost-user-blk-pci>"}]"#,
        )
        .unwrap();
        assert_eq!(list[0].child_type(), None);
        assert_eq!(list[1].child_type(), Some("vhost-user-blk-pci"));
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_ones_default() {
        let s: BlockStats = serde_json::from_value(serde_json::json!({
            "device": "d0",
            "stats": {"rd_bytes": 5, "brand_new_counter": 7},
            "future": {"x": 1}
        }))
        .unwrap();
        assert_eq!(s.stats.rd_bytes, 5);
        assert_eq!(s.stats.wr_bytes, 0);
        assert!(s.parent.is_none());
    }

    #[test]
    fn cache_mode_of_inserted_medium() {
        let b: BlockInfo = serde_json::from_value(serde_json::json!({
            "device": "d0",
            "inserted": {"cache": {"writeback": true, "direct": false, "no-flush": true}}
        }))
        .unwrap();
        assert_eq!(b.cache_mode(), Some(CacheMode::Unsafe));
        let empty: BlockInfo = serde_json::from_value(serde_json::json!({"device": "cd"})).unwrap();
        assert_eq!(empty.cache_mode(), None);
    }

    #[test]
    fn flatten_pci_descends_into_bridges() {
        let buses: Vec<PciInfo> = serde_json::from_value(serde_json::json!([{
            "bus": 0,
            "devices": [
                {"bus": 0, "slot": 0, "function": 0, "qdev_id": "", "class_info": {"class": 1536},
                 "id": {"vendor": 32902, "device": 10688}},
                {"bus": 0, "slot": 3, "function": 0, "qdev_id": "br0",
                 "pci_bridge": {"bus": {"number": 1, "secondary": 1, "subordinate": 1},
                                "devices": [{"bus": 1, "slot": 1, "function": 0, "qdev_id": "vd1"}]}}
            ]
        }]))
        .unwrap();
        let flat = flatten_pci(&buses);
        let ids: Vec<_> = flat
            .iter()
            .map(|f| (f.bus, f.slot, f.function, f.qdev_id.as_str()))
            .collect();
        assert_eq!(ids, vec![(0, 0, 0, ""), (0, 3, 0, "br0"), (1, 1, 0, "vd1")]);
        assert_eq!(flat[0].vendor, 0x8086);
    }

    #[test]
    fn guest_pci_address_minus_one_is_invalid() {
        let a = GuestPciAddress {
            domain: -1,
            bus: -1,
            slot: -1,
            function: -1,
        };
        assert!(!a.is_valid());
        assert!(GuestPciAddress::default().is_valid());
    }

    #[test]
    fn agent_info_supports_only_enabled_commands() {
        let info: GuestAgentInfo = serde_json::from_value(serde_json::json!({
            "version": "7.2.0",
            "supported_commands": [
                {"name": "guest-exec", "enabled": false, "success-response": true},
                {"name": "guest-ping", "enabled": true, "success-response": true}
            ]
        }))
        .unwrap();
        assert!(info.supports("guest-ping"));
        assert!(!info.supports("guest-exec"));
        assert!(!info.supports("guest-nothing"));
    }
}
