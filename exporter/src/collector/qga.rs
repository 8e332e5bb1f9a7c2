//! `qga`: the guest's own view of its disks, from the QEMU guest agent.
//!
//! - `kvmio_qga_up{vm}`;
//! - `kvmio_guest_disk_<suffix>{vm,disk}` from `guest-get-diskstats` (the guest kernel's
//!   `/proc/diskstats`: the full suffix set of [`crate::host::diskstats::DISK_METRICS`] where the guest has it);
//! - `kvmio_guest_disk_queue_info{vm,disk,scheduler,write_cache}` from the guest's
//!   `/sys/block/DISK/queue/{scheduler,write_cache}` (not exported where the agent forbids
//!   `guest-file-*`);
//! - `kvmio_guest_disks_dropped{vm}`: guest disk entries not exported (invalid or duplicate
//!   names, or beyond `--qga.max-disks`).
//!
//! The guest controls these values: names are validated ([`crate::vm::qga::valid_disk_name`]),
//! values are capped, and at most `--qga.max-disks` disks are exported per VM.

use std::sync::{Arc, OnceLock};

use kvmio_qemu::types::GuestDiskStats;

use super::qmp::{layer_metrics, LayerMetric};
use super::{CollectFuture, Collector, ScrapeContext};
use crate::host::diskstats::Field;
use crate::metrics::{sanitize_label_value, Metrics, MAX_GUEST_LABEL_VALUE_BYTES};
use crate::vm::{Fleet, VmOutcome};

/// Prefix of the guest disk metrics.
pub const PREFIX: &str = "kvmio_guest_disk_";

/// The collector; shares its [`Fleet`] with the QMP collector.
#[derive(Debug)]
pub struct Qga {
    fleet: Arc<Fleet>,
}

impl Qga {
    /// A collector over `fleet`.
    pub fn new(fleet: Arc<Fleet>) -> Self {
        Qga { fleet }
    }
}

fn guest_metrics() -> &'static [LayerMetric] {
    static M: OnceLock<Vec<LayerMetric>> = OnceLock::new();
    M.get_or_init(|| layer_metrics(PREFIX, "Guest disk (the guest kernel's diskstats)"))
}

/// A guest statistic for a diskstats field, raw (sectors, milliseconds: the kernel's units).
pub fn guest_value(s: &GuestDiskStats, field: Field) -> Option<u64> {
    match field {
        Field::ReadsCompleted => s.read_ios,
        Field::ReadsMerged => s.read_merges,
        Field::SectorsRead => s.read_sectors,
        Field::ReadTimeMs => s.read_ticks,
        Field::WritesCompleted => s.write_ios,
        Field::WritesMerged => s.write_merges,
        Field::SectorsWritten => s.write_sectors,
        Field::WriteTimeMs => s.write_ticks,
        Field::IoInProgress => s.ios_pgr,
        Field::IoTimeMs => s.total_ticks,
        Field::IoWeightedTimeMs => s.weight_ticks,
        Field::DiscardsCompleted => s.discard_ios,
        Field::DiscardsMerged => s.discard_merges,
        Field::SectorsDiscarded => s.discard_sectors,
        Field::DiscardTimeMs => s.discard_ticks,
        Field::FlushesCompleted => s.flush_ios,
        Field::FlushTimeMs => s.flush_ticks,
    }
}

impl Collector for Qga {
    fn name(&self) -> &'static str {
        "qga"
    }

    fn collect<'a>(&'a self, ctx: &'a ScrapeContext, out: &'a mut Metrics) -> CollectFuture<'a> {
        Box::pin(async move {
            let outcomes = self.fleet.outcomes(ctx).await;
            // In label order: each family's series then arrive in ascending order (cheap appends).
            let mut sorted: Vec<&VmOutcome> = outcomes.iter().collect();
            sorted.sort_by(|a, b| a.vm.cmp(&b.vm));
            for o in sorted {
                emit_vm(out, o);
            }
            Ok(())
        })
    }
}

/// Everything the guest-agent collector exports for one VM.
pub fn emit_vm(out: &mut Metrics, o: &VmOutcome) {
    let Some(result) = &o.qga else { return };
    let vm = o.vm.as_str();
    out.gauge(
        "kvmio_qga_up",
        "1 if the VM's guest agent answered this scrape, else 0.",
        &[("vm", vm)],
        if result.is_ok() { 1.0 } else { 0.0 },
    );
    let Ok(snap) = result else { return };
    out.gauge(
        "kvmio_guest_disks_dropped",
        "Guest disk entries not exported this scrape: invalid or duplicate names, or beyond \
         --qga.max-disks.",
        &[("vm", vm)],
        snap.dropped as f64,
    );
    // Family by family (consecutive samples of one family are cheapest to add).
    for m in guest_metrics() {
        for d in &snap.diskstats {
            let Some(raw) = guest_value(&d.stats, m.metric.field) else {
                continue;
            };
            // Already validated; capped again as any guest value.
            let disk = sanitize_label_value(&d.name, MAX_GUEST_LABEL_VALUE_BYTES);
            let labels = [("vm", vm), ("disk", disk.as_ref())];
            let v = m.metric.convert(raw);
            if m.metric.counter {
                out.counter(&m.name, &m.help, &labels, v);
            } else {
                out.gauge(&m.name, &m.help, &labels, v);
            }
        }
    }
    for d in &snap.diskstats {
        let disk = sanitize_label_value(&d.name, MAX_GUEST_LABEL_VALUE_BYTES);
        if let Some(q) = snap.queue.get(&d.name) {
            out.info(
                "kvmio_guest_disk_queue_info",
                "Guest disk queue settings from the guest's sysfs: the active IO scheduler and \
                 the write cache mode the guest sees (write back / write through).",
                &[
                    ("vm", vm),
                    ("disk", disk.as_ref()),
                    ("scheduler", &q.scheduler),
                    ("write_cache", &q.write_cache),
                ],
            );
        }
    }
}
