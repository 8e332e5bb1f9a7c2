//! `host_diskstats`: `kvmio_host_disk_<suffix>{device}` from `<procfs>/diskstats` and
//! `kvmio_host_disk_queue_info{device,scheduler}` from `<sysfs>/block/DEV/queue/scheduler`, for
//! the devices `--host.devices` selects.
//!
//! The statistics are read at every scrape, through a file descriptor kept open between scrapes
//! (`pread` at offset 0 makes procfs generate the file afresh; reopening costs more than reading);
//! a device's scheduler, a setting, is re-read when it is [`SCHEDULER_TTL`] old (a sysfs file per
//! device per scrape would cost more than the statistics).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{CollectFuture, Collector, CollectorError, ScrapeContext};
use crate::config::HostDevices;
use crate::host::blockdev::read_scheduler;
use crate::host::diskstats::{parse_diskstats, DiskStats, DISK_METRICS};
use crate::metrics::Metrics;

/// How long a device's scheduler is used before `queue/scheduler` is read again.
pub const SCHEDULER_TTL: Duration = Duration::from_secs(60);

/// The collector: configuration comes from the scrape context; it keeps the schedulers it read
/// and `diskstats` open.
#[derive(Debug, Default)]
pub struct HostDiskstats {
    schedulers: Mutex<HashMap<String, (Instant, Option<String>)>>,
    file: Mutex<Option<(PathBuf, File)>>,
}

/// Reads a whole procfs file from offset 0 through `slot`'s open descriptor (opened on first
/// use, or again if the path changed or a read fails).
fn read_procfile(slot: &mut Option<(PathBuf, File)>, path: &Path) -> std::io::Result<String> {
    for attempt in 0..2 {
        if attempt == 1 || slot.as_ref().is_none_or(|(p, _)| p != path) {
            *slot = Some((path.to_path_buf(), File::open(path)?));
        }
        let Some((_, file)) = slot.as_ref() else {
            unreachable!("just opened")
        };
        let mut buf = vec![0u8; 16 * 1024];
        let mut len = 0;
        let result = loop {
            if len == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            let room = buf.len() - len;
            match file.read_at(&mut buf[len..], len as u64) {
                Ok(0) => break Ok(()),
                // A short read is the end: procfs' seq_file fills the buffer until the file
                // ends (and a read at a later offset would make it generate the file again
                // to find that offset); so does a regular file (the test fixtures).
                Ok(n) if n < room => {
                    len += n;
                    break Ok(());
                }
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        match result {
            Ok(()) => {
                buf.truncate(len);
                return String::from_utf8(buf)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
            }
            Err(e) if attempt == 1 => return Err(e),
            Err(_) => continue,
        }
    }
    unreachable!("the second attempt returns")
}

impl HostDiskstats {
    /// A collector with an empty scheduler cache.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Prefix of the host disk metrics.
pub const PREFIX: &str = "kvmio_host_disk_";

/// `PREFIX` + each suffix of [`DISK_METRICS`], in its order.
fn metric_names() -> &'static [String] {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        DISK_METRICS
            .iter()
            .map(|m| format!("{PREFIX}{}", m.suffix))
            .collect()
    })
}

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
            let text = {
                let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
                read_procfile(&mut file, &path).map_err(|e| CollectorError::io(&path, e))?
            };
            let mut schedulers = self.schedulers.lock().unwrap_or_else(|e| e.into_inner());
            emit(&text, selected.as_ref(), ctx, &mut schedulers, out);
            Ok(())
        })
    }
}

fn emit(
    text: &str,
    selected: Option<&BTreeSet<String>>,
    ctx: &ScrapeContext,
    schedulers: &mut HashMap<String, (Instant, Option<String>)>,
    out: &mut Metrics,
) {
    let (disks, skipped) = parse_diskstats(text);
    for e in skipped {
        tracing::debug!("skipped: {e}");
    }
    // Devices that disappeared.
    schedulers.retain(|name, _| disks.iter().any(|d| &d.name == name));
    let disks: Vec<&DiskStats> = disks
        .iter()
        .filter(|d| selected.is_none_or(|s| s.contains(&d.name)))
        .collect();
    // Family by family: consecutive samples of one family are the cheapest to add.
    for (m, name) in DISK_METRICS.iter().zip(metric_names()) {
        for disk in &disks {
            let Some(raw) = disk.get(m.field) else {
                continue;
            };
            let labels = [("device", disk.name.as_str())];
            let value = m.convert(raw);
            if m.counter {
                out.counter(name, m.help, &labels, value);
            } else {
                out.gauge(name, m.help, &labels, value);
            }
        }
    }
    for disk in disks {
        let now = Instant::now();
        let cached = schedulers
            .get(&disk.name)
            .filter(|(at, _)| now.duration_since(*at) < SCHEDULER_TTL);
        let scheduler = match cached {
            Some((_, s)) => s.clone(),
            None => {
                let s = read_scheduler(&ctx.config().sysfs, &disk.name);
                schedulers.insert(disk.name.clone(), (now, s.clone()));
                s
            }
        };
        if let Some(scheduler) = scheduler {
            out.info(
                "kvmio_host_disk_queue_info",
                "Host block device queue settings: the active IO scheduler.",
                &[("device", &disk.name), ("scheduler", &scheduler)],
            );
        }
    }
}
