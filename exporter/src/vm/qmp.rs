//! One VM's QMP side: the snapshot a scrape yields (also the libvirt source's), and a socket
//! VM's scrape: connect (or reuse the pooled monitor, [`super::connection`]), then the
//! monitor's queries and the per-process cache (`super::monitor`).
//!
//! The cache belongs to one QEMU process: the monitor socket's peer PID (`SO_PEERCRED`) keys it,
//! so a VM restarted on the same socket starts afresh. Every call is bounded by the VM's deadline;
//! a connection whose call did not complete is dropped, never reused.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use kvmio_qemu::types::{BlockDeviceInfo, BlockInfo, BlockStats, PciFunction};
use kvmio_qemu::Qmp;
use tokio::time::{timeout_at, Instant};

use super::cmdline::{DriveConfig, QemuCmdline};
use super::connection::{acquire, failed_twice, release, Pooled, Step};
pub(crate) use super::monitor::{adopt, queries, Cache};
use crate::config::Config;

/// QMP replies are QEMU's (trusted more than a guest), but still bounded.
pub(crate) const QMP_MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// Facts about one guest device model, from `qom-get` (static for the device's life).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFacts {
    /// The QOM type (`virtio-blk-device`, `scsi-hd`, `ide-hd`, `nvme`...).
    pub type_name: Option<String>,
    /// The `serial` property, if set.
    pub serial: Option<String>,
    /// The iothread id the device runs in, if any.
    pub iothread: Option<String>,
}

impl DeviceFacts {
    /// The `bus` label: `virtio`, `scsi`, `ide`, `nvme`, `usb`, `floppy`, `xen`, `vhost-user`, the
    /// raw type for anything else, or empty when unknown.
    pub fn bus(&self) -> String {
        let Some(t) = self.type_name.as_deref() else {
            return String::new();
        };
        let bus = if t.starts_with("virtio-blk") {
            "virtio"
        } else if t.starts_with("vhost-user-blk") {
            "vhost-user"
        } else if t.starts_with("scsi-") {
            "scsi"
        } else if t.starts_with("ide-") {
            "ide"
        } else if t.starts_with("nvme") {
            "nvme"
        } else if t.starts_with("usb-") {
            "usb"
        } else if t == "floppy" {
            "floppy"
        } else if t.starts_with("xen-") {
            "xen"
        } else {
            t
        };
        bus.to_owned()
    }
}

/// Device totals when this exporter set the latency histograms: the `_sum` of each histogram is
/// the latency accounted since.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistogramBase {
    pub rd_total_time_ns: i64,
    pub wr_total_time_ns: i64,
    pub flush_total_time_ns: i64,
}

/// `<procfs>/PID/io` of the QEMU process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessIo {
    /// Bytes the process caused to be read from storage (`read_bytes`).
    pub read_bytes: u64,
    /// Bytes the process caused to be sent to storage (`write_bytes`).
    pub write_bytes: u64,
}

/// Where a VM's QEMU layer came from, which says what it can hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QemuOrigin {
    /// QEMU's monitor (a socket, or libvirt's monitor passthrough): everything QMP has.
    #[default]
    Monitor,
    /// libvirt's bulk block statistics and domain XML ([`crate::vm::libvirt::block`]): per device
    /// only requests, bytes and time of reads, writes and flushes; no nodes, no live cache flags.
    LibvirtStats,
}

/// A disk's configuration as the VM manager set it (libvirt's domain XML), where it is known
/// better than from QEMU's command line (libvirt passes `-blockdev` JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfiguredDisk {
    pub drive: DriveConfig,
    /// The `bus` label.
    pub bus: String,
    /// The protocol driver (`file`, `host_device`, `nbd`, `rbd`...).
    pub protocol_driver: String,
}

/// What one scrape learned from a VM's monitor (or, for libvirt domains, from libvirt).
#[derive(Debug, Clone, Default)]
pub struct QmpSnapshot {
    /// What the snapshot can hold.
    pub origin: QemuOrigin,
    /// Per `device` label: configuration from the VM manager (empty for socket VMs).
    pub configured: HashMap<String, Arc<ConfiguredDisk>>,
    /// The QEMU process (monitor socket peer), if known.
    pub pid: Option<u32>,
    pub blockstats: Vec<BlockStats>,
    pub block: Vec<BlockInfo>,
    /// Flattened `query-pci` (empty for VMs without an agent or without PCI).
    pub pci: Arc<Vec<PciFunction>>,
    /// By qdev path.
    pub devices: HashMap<String, Arc<DeviceFacts>>,
    /// Node name -> driver, for nodes `query-blockstats` does not name the driver of.
    pub node_drivers: HashMap<String, String>,
    pub cmdline: Option<Arc<QemuCmdline>>,
    pub process_io: Option<ProcessIo>,
    /// Devices (by `device` label) whose latency histograms this exporter set in an earlier scrape.
    pub histograms: HashMap<String, HistogramBase>,
}

impl QmpSnapshot {
    /// The backends with a medium, each with its `device` label ([`device_label`]).
    pub fn backends(&self) -> impl Iterator<Item = (&str, &BlockInfo, &BlockDeviceInfo)> {
        self.block.iter().filter_map(|b| {
            let inserted = b.inserted.as_ref()?;
            let label = device_label(
                Some(b.device.as_str()),
                b.qdev.as_deref(),
                inserted.node_name.as_deref(),
            );
            Some((label, b, inserted))
        })
    }
}

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

/// The label QEMU uses for a backend: the `-drive id=`, else the device's qdev id, else the qdev
/// path, else the node name.
pub fn device_label<'a>(
    device: Option<&'a str>,
    qdev: Option<&'a str>,
    node: Option<&'a str>,
) -> &'a str {
    if let Some(d) = device.filter(|d| !d.is_empty()) {
        return d;
    }
    if let Some(q) = qdev.filter(|q| !q.is_empty()) {
        return super::join::qdev_id(q).unwrap_or(q);
    }
    node.unwrap_or("")
}

pub(crate) fn read_process_io(procfs: &Path, pid: u32) -> Option<ProcessIo> {
    let text = std::fs::read_to_string(procfs.join(pid.to_string()).join("io")).ok()?;
    let mut io = ProcessIo::default();
    let mut found = 0;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let Ok(v) = v.trim().parse::<u64>() else {
            continue;
        };
        match k {
            "read_bytes" => {
                io.read_bytes = v;
                found += 1;
            }
            "write_bytes" => {
                io.write_bytes = v;
                found += 1;
            }
            _ => {}
        }
    }
    (found == 2).then_some(io)
}

/// Scrapes one VM's monitor.
pub(crate) async fn scrape(
    path: &Path,
    has_agent: bool,
    st: &mut QmpState,
    config: &Config,
    deadline: Instant,
) -> Result<QmpSnapshot, String> {
    for _ in 0..2 {
        let mut c = acquire(path, &mut st.conn, config, deadline).await?;
        adopt(&mut st.cache, c.pid);
        let stale = std::mem::take(&mut st.pci_stale);
        let calls = queries(
            &mut c.client,
            c.pid,
            has_agent,
            stale,
            &mut st.cache,
            config,
        );
        let result = match timeout_at(deadline, calls).await {
            Ok(Ok(snapshot)) => Ok((snapshot, true)),
            Ok(Err(e)) => Err(Some(e)),
            Err(_) => Err(None),
        };
        if result.is_err() {
            // Not refreshed: ask again next time.
            st.pci_stale |= stale;
        }
        match release(path, &mut st.conn, config, c, result) {
            Step::Done(r) => return r,
            Step::Retry => continue,
        }
    }
    failed_twice::<Qmp, _>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_bus() {
        assert_eq!(
            device_label(
                Some("d0"),
                Some("/machine/peripheral/vd0/virtio-backend"),
                None
            ),
            "d0"
        );
        assert_eq!(
            device_label(
                Some(""),
                Some("/machine/peripheral/vd0/virtio-backend"),
                None
            ),
            "vd0"
        );
        assert_eq!(device_label(None, None, Some("#block1")), "#block1");
        let f = |t: &str| DeviceFacts {
            type_name: Some(t.into()),
            ..DeviceFacts::default()
        };
        assert_eq!(f("virtio-blk-device").bus(), "virtio");
        assert_eq!(f("scsi-hd").bus(), "scsi");
        assert_eq!(f("ide-hd").bus(), "ide");
        assert_eq!(f("nvme-ns").bus(), "nvme");
        assert_eq!(f("sd-card").bus(), "sd-card");
        assert_eq!(DeviceFacts::default().bus(), "");
    }

    #[test]
    fn process_io() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("7")).unwrap();
        // The layout of /proc/PID/io (proc(5)).
        std::fs::write(
            dir.path().join("7/io"),
            "rchar: 21918501\nwchar: 44176672\nsyscr: 11197\nsyscw: 14542\nread_bytes: 15322112\nwrite_bytes: 44126720\ncancelled_write_bytes: 0\n",
        )
        .unwrap();
        assert_eq!(
            read_process_io(dir.path(), 7),
            Some(ProcessIo {
                read_bytes: 15322112,
                write_bytes: 44126720
            })
        );
        assert_eq!(read_process_io(dir.path(), 8), None);
    }
}
