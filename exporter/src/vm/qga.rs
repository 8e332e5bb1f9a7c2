//! One VM's guest-agent side of a scrape: `guest-get-diskstats` every scrape; `guest-get-disks`
//! (the disks' PCI addresses and serials, for the join) when the set of disks in the stats
//! changes, or every [`DISKS_TTL`] (qemu-ga walks sysfs and udev for it: on a 100-VM host it is
//! two thirds of the agents' work); and the guest's IO scheduler and write-cache setting
//! (`/sys/block/DISK/queue/scheduler` and `write_cache`, through `guest-file-open/read/close`),
//! re-read every [`QUEUE_INFO_TTL`] and for new disks, a few disks per scrape.
//!
//! Everything here comes from the guest, which may be hostile: replies are bounded (line length,
//! call time, file size), disk names are validated before they become labels or file paths, at
//! most `--qga.max-disks` disks are kept, and an agent that forbids `guest-file-*` is simply
//! not asked for the queue settings (for [`QUEUE_INFO_TTL`], then it is tried again).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use kvmio_qemu::types::{GuestDiskInfo, GuestDiskStatsInfo};
use kvmio_qemu::{AgentCommands, Error as QemuError, GuestAgent};
use tokio::time::{timeout_at, Instant};

use super::connection::{acquire, failed_twice, release, Pooled, Step};
use super::join::guest_disk_name;
use crate::config::Config;
use crate::errors::chain;
use crate::host::blockdev::parse_scheduler;
use crate::metrics::sanitize_label_value;

/// How long a `guest-get-disks` answer is used while the disk set stays the same.
pub const DISKS_TTL: Duration = Duration::from_secs(300);

/// How long a guest disk's queue settings are kept before they are read again.
pub const QUEUE_INFO_TTL: Duration = Duration::from_secs(600);

/// At most this many disks' queue settings are (re)read per scrape and VM (6 agent calls each).
pub const QUEUE_READS_PER_SCRAPE: usize = 8;

/// The longest agent reply line: `guest-get-diskstats` is about 400 bytes per disk, so this holds
/// well over a thousand disks; a guest cannot make us buffer more.
pub const QGA_MAX_LINE_BYTES: usize = 512 * 1024;

/// The longest sysfs queue file read from the guest.
const MAX_QUEUE_FILE_BYTES: usize = 4096;

/// The longest scheduler / write-cache label value taken from the guest.
const MAX_QUEUE_VALUE_BYTES: usize = 32;

/// A guest disk's queue settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueInfo {
    /// The active scheduler (`mq-deadline`, `none`), empty if unreadable.
    pub scheduler: String,
    /// `write back` or `write through`, empty if unreadable.
    pub write_cache: String,
}

/// What one scrape learned from a VM's agent.
#[derive(Debug, Clone, Default)]
pub struct QgaSnapshot {
    /// Disks and partitions with valid names, whole disks first, at most `--qga.max-disks`.
    pub diskstats: Vec<GuestDiskStatsInfo>,
    /// Whole disks from `guest-get-disks` with valid names, at most `--qga.max-disks`.
    pub disks: Vec<GuestDiskInfo>,
    /// Queue settings by disk name (for disks in `diskstats`).
    pub queue: BTreeMap<String, QueueInfo>,
    /// Entries dropped: invalid or duplicate names, or over the limit.
    pub dropped: usize,
}

/// A VM's agent state kept between scrapes.
#[derive(Debug, Default)]
pub struct QgaState {
    conn: Pooled<GuestAgent>,
    pid: Option<u32>,
    queue: HashMap<String, (Instant, Option<QueueInfo>)>,
    files_forbidden_until: Option<Instant>,
    /// The last `guest-get-disks` answer (at most twice `--qga.max-disks` entries, and how many
    /// more the agent listed), when it was asked, and the disk names the stats had.
    disks: Option<(Instant, BTreeSet<String>, Vec<GuestDiskInfo>, usize)>,
}

impl QgaState {
    /// Keeps the state if it belongs to this agent process (QEMU's PID: the agent's chardev is
    /// QEMU's), else starts afresh.
    pub(crate) fn adopt(&mut self, pid: Option<u32>) {
        if self.pid != pid {
            self.pid = pid;
            self.queue.clear();
            self.files_forbidden_until = None;
            self.disks = None;
        }
    }
}

/// A guest disk name acceptable as a label value and a sysfs path component: 1-64 bytes of
/// `[A-Za-z0-9._:!+@-]`, not `.` or `..`.
pub fn valid_disk_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:!+@-".contains(&b))
}

/// The agent refuses `guest-file-*` (blocked with `qemu-ga -b` / `--allow-rpcs`, or frozen).
fn files_forbidden(e: &QemuError) -> bool {
    match e {
        QemuError::Command { class, desc } => {
            class == "CommandNotFound" || desc.contains("disabled")
        }
        _ => false,
    }
}

/// Scrapes one VM's agent.
pub(crate) async fn scrape(
    path: &Path,
    st: &mut QgaState,
    config: &Config,
    deadline: Instant,
) -> Result<QgaSnapshot, String> {
    for _ in 0..2 {
        let mut c = acquire(path, &mut st.conn, config, deadline).await?;
        st.adopt(c.pid);
        let result = query(&mut c.client, st, config, deadline).await;
        match release(path, &mut st.conn, config, c, result) {
            Step::Done(r) => return r,
            Step::Retry => continue,
        }
    }
    failed_twice::<GuestAgent, _>()
}

/// The agent's part of a scrape over any [`AgentCommands`] (a socket or libvirt's passthrough):
/// diskstats, the cached `guest-get-disks` answer, queue settings. Returns the snapshot and
/// whether the connection is still in a known state; `Err(None)` is the deadline.
pub async fn query(
    agent: &mut impl AgentCommands,
    st: &mut QgaState,
    config: &Config,
    deadline: Instant,
) -> Result<(QgaSnapshot, bool), Option<QemuError>> {
    let cached_disks = &mut st.disks;
    let stats = timeout_at(deadline, async {
        // Decoded with a bound: a guest's list longer than --qga.max-disks is counted, not
        // kept (twice the bound: partitions come in the same list).
        let max = config.qga_max_disks.saturating_mul(2);
        let (diskstats, skipped) = match agent.get_diskstats_bounded(max).await {
            Ok(d) => (d.items, d.skipped),
            // Agents before 7.1, non-Linux guests.
            Err(e) if e.is_command() => (Vec::new(), 0),
            Err(e) => return Err(e),
        };
        let names: BTreeSet<String> = diskstats.iter().map(|d| d.name.clone()).collect();
        let fresh = cached_disks
            .as_ref()
            .is_some_and(|(at, known, _, _)| *known == names && at.elapsed() < DISKS_TTL);
        if !fresh {
            let (disks, disks_skipped) = match agent.get_disks_bounded(max).await {
                Ok(d) => (d.items, d.skipped),
                Err(e) if e.is_command() => (Vec::new(), 0),
                Err(e) => return Err(e),
            };
            *cached_disks = Some((Instant::now(), names, disks, disks_skipped));
        }
        // The disks past the bound are counted at every scrape the answer is used, like the
        // diskstats past it.
        let (disks, disks_skipped) = cached_disks
            .as_ref()
            .map(|(_, _, d, n)| (d.clone(), *n))
            .unwrap_or_default();
        Ok((diskstats, disks, skipped.saturating_add(disks_skipped)))
    })
    .await;
    let (diskstats, disks, skipped) = match stats {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return Err(Some(e)),
        Err(_) => return Err(None),
    };
    let mut snapshot = select(diskstats, disks, config.qga_max_disks);
    snapshot.dropped += skipped;

    // Queue settings: best effort; a failure here drops the connection, not the stats.
    let refreshed = timeout_at(deadline, refresh_queue(agent, st, &snapshot)).await;
    let keep = match refreshed {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!("guest queue settings: {}", chain(&e));
            false
        }
        Err(_) => {
            tracing::debug!("guest queue settings: timed out");
            false
        }
    };
    for d in &snapshot.diskstats {
        if let Some((_, Some(q))) = st.queue.get(&d.name) {
            snapshot.queue.insert(d.name.clone(), q.clone());
        }
    }
    Ok((snapshot, keep))
}

/// Validates, deduplicates and bounds what the guest reported.
pub(crate) fn select(
    diskstats: Vec<GuestDiskStatsInfo>,
    disks: Vec<GuestDiskInfo>,
    max_disks: usize,
) -> QgaSnapshot {
    let mut dropped = 0usize;
    let partitions: BTreeSet<String> = disks
        .iter()
        .filter(|d| d.partition)
        .map(|d| guest_disk_name(&d.name).to_owned())
        .collect();
    let mut by_name: BTreeMap<(bool, String), GuestDiskStatsInfo> = BTreeMap::new();
    for d in diskstats {
        if !valid_disk_name(&d.name) {
            dropped += 1;
            continue;
        }
        let key = (partitions.contains(&d.name), d.name.clone());
        if by_name.contains_key(&key) {
            dropped += 1;
            continue;
        }
        by_name.insert(key, d);
    }
    dropped += by_name.len().saturating_sub(max_disks);
    let diskstats: Vec<GuestDiskStatsInfo> = by_name.into_values().take(max_disks).collect();

    let mut seen = BTreeSet::new();
    let mut whole = Vec::new();
    for d in disks {
        if d.partition {
            continue;
        }
        let name = guest_disk_name(&d.name);
        if !valid_disk_name(name) || !seen.insert(name.to_owned()) || whole.len() >= max_disks {
            continue;
        }
        whole.push(d);
    }
    QgaSnapshot {
        diskstats,
        disks: whole,
        queue: BTreeMap::new(),
        dropped,
    }
}

async fn refresh_queue(
    agent: &mut impl AgentCommands,
    st: &mut QgaState,
    snapshot: &QgaSnapshot,
) -> Result<(), QemuError> {
    if st
        .files_forbidden_until
        .is_some_and(|until| Instant::now() < until)
    {
        return Ok(());
    }
    let whole: BTreeSet<&str> = snapshot
        .disks
        .iter()
        .map(|d| guest_disk_name(&d.name))
        .collect();
    // Disks in the stats that the guest lists as whole disks (all of them if guest-get-disks
    // gave nothing).
    let candidates: Vec<&str> = snapshot
        .diskstats
        .iter()
        .map(|d| d.name.as_str())
        .filter(|n| whole.is_empty() || whole.contains(n))
        .filter(|n| {
            st.queue
                .get(*n)
                .is_none_or(|(at, _)| at.elapsed() >= QUEUE_INFO_TTL)
        })
        .take(QUEUE_READS_PER_SCRAPE)
        .collect();
    for name in candidates {
        let mut info = QueueInfo::default();
        let mut any = false;
        for (file, slot) in [
            ("scheduler", &mut info.scheduler),
            ("write_cache", &mut info.write_cache),
        ] {
            let path = format!("/sys/block/{name}/queue/{file}");
            match agent.file_read_all(&path, MAX_QUEUE_FILE_BYTES).await {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    let value = if file == "scheduler" {
                        parse_scheduler(&text).unwrap_or_default()
                    } else {
                        text.trim().to_owned()
                    };
                    *slot = sanitize_label_value(&value, MAX_QUEUE_VALUE_BYTES).into_owned();
                    any = true;
                }
                Err(e) if files_forbidden(&e) => {
                    tracing::debug!("the guest agent forbids guest-file-*: no queue settings");
                    st.files_forbidden_until = Some(Instant::now() + QUEUE_INFO_TTL);
                    return Ok(());
                }
                // No such file (bio-based devices have no scheduler), or an oversized one.
                Err(e) if e.is_command() || matches!(e, QemuError::TooLarge { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        st.queue
            .insert(name.to_owned(), (Instant::now(), any.then_some(info)));
    }
    // Forget disks the guest no longer has.
    let present: BTreeSet<&str> = snapshot.diskstats.iter().map(|d| d.name.as_str()).collect();
    st.queue.retain(|n, _| present.contains(n.as_str()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["vda", "nvme0n1p1", "dm-0", "cciss!c0d0", "sr0"] {
            assert!(valid_disk_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "v\nda",
            "x y",
            &"a".repeat(65),
        ] {
            assert!(!valid_disk_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn select_bounds_validates_and_puts_whole_disks_first() {
        let stats: Vec<GuestDiskStatsInfo> = serde_json::from_value(serde_json::json!([
            {"name": "vda1"}, {"name": "vdb"}, {"name": "vda"}, {"name": "../x"},
            {"name": "vdb"}, {"name": "vdc"}
        ]))
        .unwrap();
        let disks: Vec<GuestDiskInfo> = serde_json::from_value(serde_json::json!([
            {"name": "/dev/vda", "partition": false},
            {"name": "/dev/vda1", "partition": true},
            {"name": "/dev/vdb", "partition": false},
            {"name": "/dev/../x", "partition": false}
        ]))
        .unwrap();
        let s = select(stats, disks, 3);
        let names: Vec<&str> = s.diskstats.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, vec!["vda", "vdb", "vdc"]);
        assert_eq!(s.dropped, 3, "invalid, duplicate, over the limit");
        let whole: Vec<&str> = s.disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(whole, vec!["/dev/vda", "/dev/vdb"]);
    }
}
