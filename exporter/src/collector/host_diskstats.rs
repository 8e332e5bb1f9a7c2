//! `host_diskstats`: `kvmio_host_disk_<suffix>{device}` from `<procfs>/diskstats` and
//! `kvmio_host_disk_queue_info{device,scheduler}` from `<sysfs>/block/DEV/queue/scheduler`, for
//! the devices `--host.devices` selects.

use std::collections::BTreeSet;

use super::{CollectFuture, Collector, CollectorError, ScrapeContext};
use crate::config::HostDevices;
use crate::host::blockdev::read_scheduler;
use crate::host::diskstats::{parse_diskstats, DISK_METRICS};
use crate::metrics::Metrics;

/// The collector (stateless: configuration comes from the scrape context).
#[derive(Debug, Default, Clone, Copy)]
pub struct HostDiskstats;

/// Prefix of the host disk metrics.
pub const PREFIX: &str = "kvmio_host_disk_";

impl Collector for HostDiskstats {
    fn name(&self) -> &'static str {
        "host_diskstats"
    }

    fn collect<'a>(&'a self, ctx: &'a ScrapeContext, out: &'a mut Metrics) -> CollectFuture<'a> {
        Box::pin(async move {
            let selected: Option<BTreeSet<String>> = match ctx.config().host_devices {
                HostDevices::None => return Ok(()),
                HostDevices::All => None,
                HostDevices::Backing => Some(ctx.backing_devices().await),
            };
            if selected.as_ref().is_some_and(BTreeSet::is_empty) {
                return Ok(());
            }
            // procfs and sysfs reads do not block on IO: read them inline, it is faster than a
            // trip through the blocking pool.
            let path = ctx.config().procfs.join("diskstats");
            let text = std::fs::read_to_string(&path).map_err(|e| CollectorError::io(&path, e))?;
            emit(&text, selected.as_ref(), ctx, out);
            Ok(())
        })
    }
}

fn emit(text: &str, selected: Option<&BTreeSet<String>>, ctx: &ScrapeContext, out: &mut Metrics) {
    let (disks, skipped) = parse_diskstats(text);
    for e in skipped {
        tracing::debug!("skipped: {e}");
    }
    let mut name = String::with_capacity(64);
    for disk in &disks {
        if selected.is_some_and(|s| !s.contains(&disk.name)) {
            continue;
        }
        let labels = [("device", disk.name.as_str())];
        for m in DISK_METRICS {
            let Some(raw) = disk.get(m.field) else {
                continue;
            };
            name.clear();
            name.push_str(PREFIX);
            name.push_str(m.suffix);
            let value = m.convert(raw);
            if m.counter {
                out.counter(&name, m.help, &labels, value);
            } else {
                out.gauge(&name, m.help, &labels, value);
            }
        }
        if let Some(scheduler) = read_scheduler(&ctx.config().sysfs, &disk.name) {
            out.info(
                "kvmio_host_disk_queue_info",
                "Host block device queue settings: the active IO scheduler.",
                &[("device", &disk.name), ("scheduler", &scheduler)],
            );
        }
    }
}
