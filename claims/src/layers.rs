//! One workload's IO at each layer, as the difference of two scrapes.
//!
//! The same request may be counted at four places, and the seed's claims are about how its
//! shape changes on the way down: the guest kernel's diskstats (`kvmio_guest_disk_*`, from the
//! guest agent), QEMU's device counters (`kvmio_qemu_block_*`), and the host device under the
//! image (`kvmio_host_disk_*`); plus how much of the image the host page cache holds
//! (`kvmio_host_image_cached_bytes`). Average request size is bytes / requests at each layer:
//! a layer that splits requests shows a smaller size and more requests than the one above.

use kvmio_exporter::textformat::Family;
use serde::Serialize;

/// What one layer did for one direction (reads or writes) between two scrapes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Flow {
    pub requests: f64,
    pub merged: f64,
    pub bytes: f64,
    /// Summed request time, seconds.
    pub time_seconds: f64,
}

impl Flow {
    /// Mean request size in KiB (0 when nothing happened).
    pub fn avg_request_kib(&self) -> f64 {
        if self.requests > 0.0 {
            self.bytes / self.requests / 1024.0
        } else {
            0.0
        }
    }

    /// Mean time a request took, milliseconds.
    pub fn mean_latency_ms(&self) -> f64 {
        if self.requests > 0.0 {
            self.time_seconds / self.requests * 1e3
        } else {
            0.0
        }
    }
}

/// One layer's reads, writes and flushes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Layer {
    pub read: Flow,
    pub write: Flow,
    pub flushes: f64,
}

/// What identifies the experiment's disk at each layer.
#[derive(Debug, Clone)]
pub struct Selector {
    pub vm: String,
    /// The guest's kernel name (`vda`).
    pub guest_disk: String,
    /// The host's kernel name of the device under the images (`loop3`).
    pub host_device: String,
}

/// The value of the one series of `name` whose labels include every pair of `want` (0 when
/// absent: a counter not yet exported has counted nothing).
fn value(families: &[Family], name: &str, want: &[(&str, &str)]) -> f64 {
    families
        .iter()
        .filter(|f| f.name == name)
        .flat_map(|f| f.samples.iter())
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.value)
        .sum()
}

/// Reads one layer's counters: `prefix` is `kvmio_guest_disk`, `kvmio_qemu_block` or
/// `kvmio_host_disk`; all three use the same suffixes.
fn layer(families: &[Family], prefix: &str, want: &[(&str, &str)]) -> Layer {
    let v = |suffix: &str| value(families, &format!("{prefix}_{suffix}"), want);
    Layer {
        read: Flow {
            requests: v("reads_completed_total"),
            merged: v("reads_merged_total"),
            bytes: v("read_bytes_total"),
            time_seconds: v("read_time_seconds_total"),
        },
        write: Flow {
            requests: v("writes_completed_total"),
            merged: v("writes_merged_total"),
            bytes: v("written_bytes_total"),
            time_seconds: v("write_time_seconds_total"),
        },
        flushes: v("flush_requests_total"),
    }
}

fn minus(a: Flow, b: Flow) -> Flow {
    Flow {
        requests: a.requests - b.requests,
        merged: a.merged - b.merged,
        bytes: a.bytes - b.bytes,
        time_seconds: a.time_seconds - b.time_seconds,
    }
}

fn delta(after: Layer, before: Layer) -> Layer {
    Layer {
        read: minus(after.read, before.read),
        write: minus(after.write, before.write),
        flushes: after.flushes - before.flushes,
    }
}

/// The three layers and the page cache, for one phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Layers {
    pub guest: Layer,
    pub qemu: Layer,
    pub host: Layer,
    /// Bytes of the image in the host page cache after the phase.
    pub host_cached_bytes: f64,
}

/// The layers' activity between `before` and `after`.
pub fn between(before: &[Family], after: &[Family], sel: &Selector) -> Layers {
    let guest = [("vm", sel.vm.as_str()), ("disk", sel.guest_disk.as_str())];
    let qemu = [("vm", sel.vm.as_str())];
    let host = [("device", sel.host_device.as_str())];
    Layers {
        guest: delta(
            layer(after, "kvmio_guest_disk", &guest),
            layer(before, "kvmio_guest_disk", &guest),
        ),
        qemu: delta(
            layer(after, "kvmio_qemu_block", &qemu),
            layer(before, "kvmio_qemu_block", &qemu),
        ),
        host: delta(
            layer(after, "kvmio_host_disk", &host),
            layer(before, "kvmio_host_disk", &host),
        ),
        host_cached_bytes: value(after, "kvmio_host_image_cached_bytes", &qemu),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmio_exporter::textformat::parse;

    /// kvmio-exporter's whole output over QEMU 7.2's and qemu-ga's captured replies and a
    /// captured /proc/diskstats (the exporter's golden file).
    const GOLDEN: &str = include_str!("../../exporter/tests/golden/qemu-7.2.prom");

    /// The sum of the golden file's samples of `name` whose label text contains every `want`,
    /// read line by line, independently of the parser under test.
    fn grep(name: &str, want: &[&str]) -> f64 {
        GOLDEN
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| want.iter().all(|w| l.contains(w)))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    }

    #[test]
    fn deltas_pick_the_selected_disk_at_each_layer() {
        let after = parse(GOLDEN);
        assert!(after.errors.is_empty(), "{:?}", after.errors);
        let before = parse("");
        let sel = Selector {
            vm: "kvmio-fixture".into(),
            guest_disk: "vda".into(),
            host_device: "loop0".into(),
        };
        let l = between(&before.families, &after.families, &sel);
        let guest = r#"vm="kvmio-fixture",disk="vda""#;
        assert_eq!(
            l.guest.write.requests,
            grep("kvmio_guest_disk_writes_completed_total", &[guest])
        );
        assert_eq!(
            l.guest.read.bytes,
            grep("kvmio_guest_disk_read_bytes_total", &[guest])
        );
        assert!(l.guest.write.requests > 0.0 && l.guest.write.avg_request_kib() > 0.0);
        // QEMU: every device of the VM (the experiment's VMs have one).
        let vm = r#"vm="kvmio-fixture""#;
        assert_eq!(
            l.qemu.write.requests,
            grep("kvmio_qemu_block_writes_completed_total", &[vm])
        );
        assert_eq!(
            l.qemu.flushes,
            grep("kvmio_qemu_block_flush_requests_total", &[vm])
        );
        assert_eq!(
            l.host.read.requests,
            grep(
                "kvmio_host_disk_reads_completed_total",
                &[r#"device="loop0""#]
            )
        );
        assert_eq!(
            l.host_cached_bytes,
            grep("kvmio_host_image_cached_bytes", &[vm])
        );
        // A difference of a scrape with itself is zero at every layer.
        let same = between(&after.families, &after.families, &sel);
        assert_eq!(same, Layers::default());
    }
}
