//! What one scrape says about the VM disks, and the rates between two scrapes.
//!
//! A disk is a QEMU device of a VM (`vm`, `device`), joined by `kvmio_disk_layer_info` to the
//! guest's disk, the image and the host device under it. Its layers, top to bottom:
//!
//! | layer | series | note |
//! |---|---|---|
//! | guest | `kvmio_guest_disk_*{vm,disk}` | the guest kernel's diskstats (agent) |
//! | qemu | `kvmio_qemu_block_*{vm,device}` | QEMU's block backend: what the guest's requests became |
//! | protocol | `kvmio_qemu_node_*{driver=<protocol>}` (its name), `kvmio_qemu_process_*{vm}` | QEMU keeps no request counters on its protocol node (only discards); its reads and writes to the host are the QEMU process's IO, for all the VM's disks together |
//! | host | `kvmio_host_disk_*{device}` | the whole host device: every image on it, and the rest of the host |
//!
//! Counters that go down between two scrapes were reset (a guest reboot, a QEMU restart, a
//! re-created device): the rate is then the new value over the interval, as Prometheus' `rate`
//! counts it. A series absent from either scrape has no rate (shown as `-`), never 0.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kvmio_exporter::textformat::Sample;

/// The diskstats counters each layer may have (node_exporter's names, as kvmio exports them).
pub const COUNTERS: [&str; 9] = [
    "reads_completed_total",
    "reads_merged_total",
    "read_bytes_total",
    "read_time_seconds_total",
    "writes_completed_total",
    "writes_merged_total",
    "written_bytes_total",
    "write_time_seconds_total",
    "flush_requests_total",
];

/// Index into [`COUNTERS`].
#[derive(Debug, Clone, Copy)]
pub enum C {
    Reads = 0,
    ReadsMerged,
    ReadBytes,
    ReadTime,
    Writes,
    WritesMerged,
    WrittenBytes,
    WriteTime,
    Flushes,
}

/// One layer's counters as read (absent ones `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters(pub [Option<f64>; COUNTERS.len()]);

impl Counters {
    fn set(&mut self, suffix: &str, value: f64) -> bool {
        match COUNTERS.iter().position(|c| *c == suffix) {
            Some(i) => {
                self.0[i] = Some(value);
                true
            }
            None => false,
        }
    }
}

/// Per-second rates of one layer over an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates(pub [Option<f64>; COUNTERS.len()]);

/// `cur - prev` per second, or `cur` per second after a reset.
pub fn rate(prev: Option<f64>, cur: Option<f64>, seconds: f64) -> Option<f64> {
    let (prev, cur) = (prev?, cur?);
    // (NaN seconds fail the first test too.)
    if seconds.is_nan() || seconds <= 0.0 || !prev.is_finite() || !cur.is_finite() {
        return None;
    }
    let delta = if cur >= prev { cur - prev } else { cur };
    Some(delta / seconds)
}

impl Rates {
    pub fn between(prev: &Counters, cur: &Counters, seconds: f64) -> Rates {
        let mut r = Rates::default();
        for i in 0..COUNTERS.len() {
            r.0[i] = rate(prev.0[i], cur.0[i], seconds);
        }
        r
    }

    pub fn get(&self, c: C) -> Option<f64> {
        self.0[c as usize]
    }

    fn sum(&self, a: C, b: C) -> Option<f64> {
        match (self.get(a), self.get(b)) {
            (None, None) => None,
            (x, y) => Some(x.unwrap_or(0.0) + y.unwrap_or(0.0)),
        }
    }

    /// Reads + writes per second.
    pub fn iops(&self) -> Option<f64> {
        self.sum(C::Reads, C::Writes)
    }

    /// Bytes read + written per second.
    pub fn throughput(&self) -> Option<f64> {
        self.sum(C::ReadBytes, C::WrittenBytes)
    }

    /// Bytes per read or write; absent when there was none.
    pub fn request_size(&self) -> Option<f64> {
        let ios = self.iops()?;
        (ios > 0.0).then(|| self.throughput().unwrap_or(0.0) / ios)
    }

    /// Mean seconds per read or write; absent when there was none.
    pub fn latency(&self) -> Option<f64> {
        let ios = self.iops()?;
        let time = self.sum(C::ReadTime, C::WriteTime)?;
        (ios > 0.0).then(|| time / ios)
    }

    /// Requests merged into others per second (reads and writes).
    pub fn merges(&self) -> Option<f64> {
        self.sum(C::ReadsMerged, C::WritesMerged)
    }

    /// Merged / (merged + completed): how much of what was submitted was merged away.
    pub fn merge_ratio(&self) -> Option<f64> {
        let merged = self.merges()?;
        let done = self.iops().unwrap_or(0.0);
        (merged + done > 0.0).then(|| merged / (merged + done))
    }
}

/// A VM disk's place in the stack and its configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct DiskId {
    pub vm: String,
    /// QEMU's device (e.g. `drive-virtio-disk0`).
    pub device: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiskInfo {
    /// The guest's name for it (`vda`), when the join is known.
    pub guest_disk: Option<String>,
    pub image: Option<String>,
    pub host_device: Option<String>,
    /// The cache mode QEMU's flags name now, and as configured when it differs.
    pub cache_mode: Option<String>,
    pub configured_cache_mode: Option<String>,
    pub format: Option<String>,
    /// The protocol node under the format (`file`, `host_device`, `nbd`, ...).
    pub protocol_driver: Option<String>,
    pub protocol_node: Option<String>,
    pub aio: Option<String>,
    /// A `storage_mode` label, where the exporter has one.
    pub storage_mode: Option<String>,
    pub guest_scheduler: Option<String>,
    pub guest_write_cache: Option<String>,
    pub host_scheduler: Option<String>,
}

/// Everything one scrape says, keyed for the joins.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub disks: BTreeMap<DiskId, DiskInfo>,
    guest: HashMap<(String, String), Counters>,
    device: HashMap<(String, String), Counters>,
    host: HashMap<String, Counters>,
    /// Per VM: the QEMU process's read and written bytes (all its disks).
    process: HashMap<String, Counters>,
    /// VMs whose monitor (`kvmio_qmp_up`) or agent (`kvmio_qga_up`) is down.
    pub down: BTreeSet<String>,
}

fn label<'a>(s: &'a Sample, name: &str) -> Option<&'a str> {
    s.labels
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn owned(s: &Sample, name: &str) -> Option<String> {
    label(s, name).filter(|v| !v.is_empty()).map(str::to_owned)
}

impl Snapshot {
    pub fn from_samples(samples: &[Sample]) -> Snapshot {
        let mut snap = Snapshot::default();
        let mut guest_queue: HashMap<(String, String), (Option<String>, Option<String>)> =
            HashMap::new();
        let mut host_queue: HashMap<String, String> = HashMap::new();
        let mut node_driver: HashMap<(String, String, String), String> = HashMap::new();
        let mut storage_mode: HashMap<(String, String), String> = HashMap::new();
        for s in samples {
            let vm = || owned(s, "vm").unwrap_or_default();
            let device = || owned(s, "device").unwrap_or_default();
            let name = s.name.as_str();
            if let Some(suffix) = name.strip_prefix("kvmio_guest_disk_") {
                if suffix == "queue_info" {
                    guest_queue.insert(
                        (vm(), owned(s, "disk").unwrap_or_default()),
                        (owned(s, "scheduler"), owned(s, "write_cache")),
                    );
                } else {
                    let key = (vm(), owned(s, "disk").unwrap_or_default());
                    snap.guest.entry(key).or_default().set(suffix, s.value);
                }
            } else if let Some(suffix) = name.strip_prefix("kvmio_qemu_block_") {
                let id = DiskId {
                    vm: vm(),
                    device: device(),
                };
                match suffix {
                    "info" => {
                        let info = snap.disks.entry(id).or_default();
                        info.format = owned(s, "format");
                        info.protocol_driver = owned(s, "driver");
                        info.aio = owned(s, "aio");
                        info.image = info.image.take().or_else(|| owned(s, "file"));
                        info.cache_mode = info.cache_mode.take().or_else(|| owned(s, "cache_mode"));
                    }
                    "cache_info" => {
                        let info = snap.disks.entry(id).or_default();
                        info.cache_mode = owned(s, "cache_mode");
                        info.configured_cache_mode = owned(s, "configured_cache_mode");
                    }
                    _ => {
                        let counters = snap
                            .device
                            .entry((id.vm.clone(), id.device.clone()))
                            .or_default();
                        if counters.set(suffix, s.value) {
                            snap.disks.entry(id).or_default();
                        }
                    }
                }
            } else if let Some(suffix) = name.strip_prefix("kvmio_qemu_node_") {
                // Only the nodes' names and drivers: QEMU keeps no request counters there.
                let _ = suffix;
                if let Some(driver) = owned(s, "driver") {
                    node_driver.insert(
                        (vm(), device(), owned(s, "node").unwrap_or_default()),
                        driver,
                    );
                }
            } else if let Some(suffix) = name.strip_prefix("kvmio_host_disk_") {
                if suffix == "queue_info" {
                    if let (Some(d), Some(sched)) = (owned(s, "device"), owned(s, "scheduler")) {
                        host_queue.insert(d, sched);
                    }
                } else {
                    snap.host.entry(device()).or_default().set(suffix, s.value);
                }
            } else if let Some(what) = name.strip_prefix("kvmio_qemu_process_") {
                let suffix = match what {
                    "read_bytes_total" => "read_bytes_total",
                    "written_bytes_total" => "written_bytes_total",
                    _ => continue,
                };
                snap.process.entry(vm()).or_default().set(suffix, s.value);
            } else if name == "kvmio_disk_layer_info" {
                let info = snap
                    .disks
                    .entry(DiskId {
                        vm: vm(),
                        device: device(),
                    })
                    .or_default();
                info.guest_disk = owned(s, "disk");
                info.host_device = owned(s, "host_device");
                if let Some(image) = owned(s, "image") {
                    info.image = Some(image);
                }
            } else if (name == "kvmio_qmp_up" || name == "kvmio_qga_up") && s.value == 0.0 {
                snap.down.insert(vm());
            }
            // Whatever family has a storage mode for a device (issue 9's derived label).
            if let (Some(mode), Some(_)) = (owned(s, "storage_mode"), label(s, "device")) {
                storage_mode.insert((vm(), device()), mode);
            }
        }
        // The protocol node: the device's node whose driver is the protocol driver
        // (`kvmio_qemu_block_info{driver}`), not the format's.
        for ((vm, device, node), driver) in node_driver {
            let id = DiskId { vm, device };
            if let Some(info) = snap.disks.get_mut(&id) {
                if info.protocol_driver.as_ref() == Some(&driver) {
                    info.protocol_node = Some(node);
                }
            }
        }
        for (id, info) in snap.disks.iter_mut() {
            info.storage_mode = storage_mode.remove(&(id.vm.clone(), id.device.clone()));
            if let Some(disk) = &info.guest_disk {
                if let Some((sched, wc)) = guest_queue.get(&(id.vm.clone(), disk.clone())) {
                    info.guest_scheduler = sched.clone();
                    info.guest_write_cache = wc.clone();
                }
            }
            if let Some(host) = &info.host_device {
                info.host_scheduler = host_queue.get(host).cloned();
            }
        }
        snap
    }
}

/// One layer of a disk in a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerRow {
    pub layer: Layer,
    /// The layer's own name: guest disk, QEMU device, protocol node, host device.
    pub name: String,
    pub rates: Option<Rates>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Guest,
    Qemu,
    Protocol,
    Host,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Guest => "guest",
            Layer::Qemu => "qemu",
            Layer::Protocol => "protocol",
            Layer::Host => "host",
        }
    }
}

/// A disk with its layers' rates over the last interval.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskRates {
    pub id: DiskId,
    pub info: DiskInfo,
    pub layers: Vec<LayerRow>,
    /// The VM's monitor or agent is down.
    pub down: bool,
}

impl DiskRates {
    /// The layer sorting looks at: the guest's, or QEMU's device when the guest has none.
    pub fn primary(&self) -> Option<&Rates> {
        self.layers
            .iter()
            .filter(|l| matches!(l.layer, Layer::Guest | Layer::Qemu))
            .find_map(|l| l.rates.as_ref())
    }
}

/// Every disk of `cur`, with rates over `seconds` since `prev`.
pub fn frame(prev: &Snapshot, cur: &Snapshot, seconds: f64) -> Vec<DiskRates> {
    let between = |p: Option<&Counters>, c: Option<&Counters>| match (p, c) {
        (Some(p), Some(c)) => Some(Rates::between(p, c, seconds)),
        _ => None,
    };
    cur.disks
        .iter()
        .map(|(id, info)| {
            let vm = id.vm.clone();
            let guest_key = info.guest_disk.clone().map(|d| (vm.clone(), d));
            let device_key = (vm.clone(), id.device.clone());
            let mut layers = vec![
                LayerRow {
                    layer: Layer::Guest,
                    name: info.guest_disk.clone().unwrap_or_else(|| "?".into()),
                    rates: guest_key
                        .as_ref()
                        .and_then(|k| between(prev.guest.get(k), cur.guest.get(k))),
                },
                LayerRow {
                    layer: Layer::Qemu,
                    name: id.device.clone(),
                    rates: between(prev.device.get(&device_key), cur.device.get(&device_key)),
                },
            ];
            // The protocol node: the QEMU process's reads and writes (all the VM's disks: QEMU
            // counts no requests on a protocol node).
            let proto = between(prev.process.get(&vm), cur.process.get(&vm));
            layers.push(LayerRow {
                layer: Layer::Protocol,
                name: match (&info.protocol_driver, &info.protocol_node) {
                    (Some(d), Some(n)) => format!("{d} {n}"),
                    (Some(d), None) => d.clone(),
                    _ => "?".into(),
                },
                rates: proto,
            });
            layers.push(LayerRow {
                layer: Layer::Host,
                name: info.host_device.clone().unwrap_or_else(|| "?".into()),
                rates: info
                    .host_device
                    .as_ref()
                    .and_then(|h| between(prev.host.get(h), cur.host.get(h))),
            });
            DiskRates {
                id: id.clone(),
                info: info.clone(),
                layers,
                down: cur.down.contains(&id.vm),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmio_exporter::textformat;

    fn snapshot(text: &str) -> Snapshot {
        let parsed = textformat::parse(text);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let samples: Vec<Sample> = parsed
            .families
            .into_iter()
            .flat_map(|f| f.samples)
            .collect();
        Snapshot::from_samples(&samples)
    }

    #[test]
    fn rates_and_resets() {
        assert_eq!(rate(Some(10.0), Some(30.0), 2.0), Some(10.0));
        // Reset: the new value counted from zero.
        assert_eq!(rate(Some(100.0), Some(6.0), 2.0), Some(3.0));
        assert_eq!(rate(None, Some(6.0), 2.0), None);
        assert_eq!(rate(Some(1.0), Some(6.0), 0.0), None);
    }

    fn exposition(guest_writes: u64, device_writes: u64, host_writes: u64) -> String {
        format!(
            "kvmio_disk_layer_info{{vm=\"a\",device=\"d0\",disk=\"vda\",image=\"/i.qcow2\",host_device=\"sda\"}} 1
kvmio_guest_disk_queue_info{{vm=\"a\",disk=\"vda\",scheduler=\"mq-deadline\",write_cache=\"write back\"}} 1
kvmio_guest_disk_writes_completed_total{{vm=\"a\",disk=\"vda\"}} {guest_writes}
kvmio_guest_disk_writes_merged_total{{vm=\"a\",disk=\"vda\"}} {guest_writes}
kvmio_guest_disk_written_bytes_total{{vm=\"a\",disk=\"vda\"}} {}
kvmio_guest_disk_write_time_seconds_total{{vm=\"a\",disk=\"vda\"}} {}
kvmio_qemu_block_info{{vm=\"a\",device=\"d0\",node=\"#b1\",driver=\"file\",format=\"qcow2\",file=\"/i.qcow2\",cache_mode=\"none\",aio=\"threads\",storage_mode=\"virtio-blk\"}} 1
kvmio_qemu_block_cache_info{{vm=\"a\",device=\"d0\",cache_mode=\"none\",configured_cache_mode=\"none\"}} 1
kvmio_qemu_block_writes_completed_total{{vm=\"a\",device=\"d0\"}} {device_writes}
kvmio_qemu_node_highest_written_offset_bytes{{vm=\"a\",device=\"d0\",node=\"#b0\",driver=\"file\"}} 1
kvmio_qemu_node_highest_written_offset_bytes{{vm=\"a\",device=\"d0\",node=\"#b1\",driver=\"qcow2\"}} 1
kvmio_qemu_process_written_bytes_total{{vm=\"a\"}} {}
kvmio_host_disk_writes_completed_total{{device=\"sda\"}} {host_writes}
kvmio_host_disk_queue_info{{device=\"sda\",scheduler=\"none\"}} 1
kvmio_qmp_up{{vm=\"a\"}} 1
",
            guest_writes * 8192,
            guest_writes as f64 * 0.002,
            device_writes * 4096,
        )
    }

    #[test]
    fn layers_joined_and_rated() {
        let prev = snapshot(&exposition(100, 100, 1000));
        let cur = snapshot(&exposition(300, 200, 5000));
        let disks = frame(&prev, &cur, 2.0);
        assert_eq!(disks.len(), 1);
        let d = &disks[0];
        assert_eq!(d.info.guest_disk.as_deref(), Some("vda"));
        assert_eq!(d.info.cache_mode.as_deref(), Some("none"));
        assert_eq!(d.info.guest_scheduler.as_deref(), Some("mq-deadline"));
        assert_eq!(d.info.host_scheduler.as_deref(), Some("none"));
        assert_eq!(d.info.storage_mode.as_deref(), Some("virtio-blk"));
        assert_eq!(d.info.protocol_node.as_deref(), Some("#b0"));
        let guest = d.layers[0].rates.unwrap();
        assert_eq!(guest.iops(), Some(100.0));
        assert_eq!(guest.request_size(), Some(8192.0));
        assert_eq!(guest.latency(), Some(0.002));
        assert_eq!(guest.merge_ratio(), Some(0.5));
        assert_eq!(d.layers[1].rates.unwrap().iops(), Some(50.0));
        assert_eq!(
            d.layers[2].rates.unwrap().get(C::WrittenBytes),
            Some(50.0 * 4096.0)
        );
        assert_eq!(d.layers[3].rates.unwrap().iops(), Some(2000.0));
        assert_eq!(d.primary().unwrap().iops(), Some(100.0));
        // A guest reboot resets its counters: the rate counts from zero, never negative.
        let rebooted = snapshot(&exposition(20, 220, 5100));
        let after = frame(&cur, &rebooted, 2.0);
        assert_eq!(after[0].layers[0].rates.unwrap().iops(), Some(10.0));
    }
}
