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
//!
//! Why one file of about 520 lines of code (and its tests): the bounded wire types the agent's
//! replies decode into, the cache of `guest-get-disks` and the selection of disks are one
//! guard against a hostile guest; split apart, the bound on what is kept and the code that keeps
//! it would no longer be read together.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use std::sync::LazyLock;

use kvmio_qemu::line::LineBudget;
use kvmio_qemu::reply::Bounded;
use kvmio_qemu::types::{
    GuestDiskAddress, GuestDiskInfo, GuestDiskStats, GuestDiskStatsInfo, GuestPciAddress,
};
use kvmio_qemu::{AgentCommands, Error as QemuError, GuestAgent};
use serde::Deserialize;
use tokio::time::{timeout_at, Instant};

use super::connection::{with_connection, Calls, Pooled, SocketClient};
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

/// How many bytes of agent reply lines over [`LineBudget::THRESHOLD`] (64 KiB) all VMs together
/// may buffer at once: 8 lines at the cap. An honest agent's replies are a few KiB and never
/// wait; a VM whose agent sends a long line waits for room (its agent's write waits in the
/// socket), within the scrape deadline, which also ends the hold of an agent that stalls
/// mid-line (its connection is dropped at its call's timeout).
pub const QGA_LINE_BUDGET_BYTES: usize = 8 * QGA_MAX_LINE_BYTES;

/// The budget every agent connection of this process shares.
pub(crate) fn line_budget() -> LineBudget {
    static BUDGET: LazyLock<LineBudget> = LazyLock::new(|| LineBudget::new(QGA_LINE_BUDGET_BYTES));
    BUDGET.clone()
}

/// The agent side of the connection pool ([`super::connection`]): its names, limits and the
/// shared line budget.
impl SocketClient for GuestAgent {
    const NAME: &'static str = "guest agent";
    const HANDSHAKE: &'static str = "guest-sync-delimited";
    const CALLS_TIMED_OUT: &'static str = "guest agent calls timed out";
    const MAX_LINE_BYTES: usize = QGA_MAX_LINE_BYTES;

    fn handshake(
        stream: tokio::net::UnixStream,
        limits: kvmio_qemu::Limits,
    ) -> impl std::future::Future<Output = kvmio_qemu::Result<Self>> + Send {
        GuestAgent::with_stream_and_budget(stream, limits, Some(line_budget()))
    }
}

/// The longest string kept from a guest disk entry (a name, a device path, a serial, a bus
/// type): the longest guest label value. An entry with a longer one is refused at decode and
/// counted in `kvmio_guest_disks_dropped`: no real disk has such a field (disk names are at most
/// 64 bytes, QEMU's disk serials at most 36, bus types a word).
pub const MAX_GUEST_FIELD_BYTES: usize = crate::metrics::MAX_GUEST_LABEL_VALUE_BYTES;

/// A string field of a guest disk entry, kept only up to [`MAX_GUEST_FIELD_BYTES`].
#[derive(Debug, Default)]
enum Capped {
    Kept(String),
    #[default]
    Missing,
    TooLong,
}

impl Capped {
    /// The string; `None` refuses the entry (too long).
    fn take(self) -> Option<String> {
        match self {
            Capped::Kept(s) => Some(s),
            Capped::Missing => Some(String::new()),
            Capped::TooLong => None,
        }
    }
}

impl<'de> Deserialize<'de> for Capped {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Capped;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E>(self, v: &str) -> Result<Capped, E> {
                // Borrowed from the reply (or the parser's scratch): a long one costs nothing.
                Ok(if v.len() > MAX_GUEST_FIELD_BYTES {
                    Capped::TooLong
                } else {
                    Capped::Kept(v.to_owned())
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// A `guest-get-diskstats` entry as decoded: the fields kvmio uses, strings capped.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireDiskStats {
    name: Capped,
    major: u64,
    minor: u64,
    stats: GuestDiskStats,
}

/// A `guest-get-disks` entry as decoded: only what the join uses (name, partition, PCI
/// address, bus type, serial), strings capped; `alias`, `dependencies`, `smart` and the rest
/// are skipped unread.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireDisk {
    name: Capped,
    partition: bool,
    address: Option<WireAddress>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
struct WireAddress {
    pci_controller: GuestPciAddress,
    bus_type: Capped,
    serial: Option<Capped>,
}

impl WireDiskStats {
    fn accept(self) -> Option<GuestDiskStatsInfo> {
        Some(GuestDiskStatsInfo {
            name: self.name.take()?,
            major: self.major,
            minor: self.minor,
            stats: self.stats,
        })
    }
}

impl WireDisk {
    fn accept(self) -> Option<GuestDiskInfo> {
        let address = match self.address {
            None => None,
            Some(a) => Some(GuestDiskAddress {
                pci_controller: a.pci_controller,
                bus_type: a.bus_type.take()?,
                serial: match a.serial {
                    None => None,
                    Some(serial) => Some(serial.take()?),
                },
                ..GuestDiskAddress::default()
            }),
        };
        Some(GuestDiskInfo {
            name: self.name.take()?,
            partition: self.partition,
            address,
            ..GuestDiskInfo::default()
        })
    }
}

/// Runs a guest-agent list command and decodes at most `max` entries, refusing those with an
/// over-long string; returns them and how many were skipped or refused.
async fn bounded_list<W, T>(
    agent: &mut impl AgentCommands,
    command: &str,
    max: usize,
    accept: fn(W) -> Option<T>,
) -> Result<(Vec<T>, usize), QemuError>
where
    W: serde::de::DeserializeOwned + Send,
{
    let Bounded { items, skipped } = agent.execute_bounded::<W>(command, max).await?;
    let decoded = items.len();
    let kept: Vec<T> = items.into_iter().filter_map(accept).collect();
    let refused = decoded - kept.len();
    Ok((kept, skipped.saturating_add(refused)))
}

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
    /// The last `guest-get-disks` answer as [`select`] uses it, and how many entries past the
    /// bound or refused it had; when it was asked, and the disk names the stats had.
    disks: Option<(Instant, BTreeSet<String>, GuestDisks, usize)>,
}

/// What a `guest-get-disks` answer is kept as: the partitions' names and the whole disks that
/// [`select`] exports (valid, distinct names, at most `--qga.max-disks`), only their fields the
/// join uses.
#[derive(Debug, Clone, Default)]
pub(crate) struct GuestDisks {
    partitions: BTreeSet<String>,
    whole: Vec<GuestDiskInfo>,
}

impl GuestDisks {
    /// The disks of an answer that [`select`] can use.
    pub(crate) fn of(disks: Vec<GuestDiskInfo>, max_disks: usize) -> Self {
        let mut out = GuestDisks::default();
        let mut seen = BTreeSet::new();
        for d in disks {
            let name = guest_disk_name(&d.name);
            if !valid_disk_name(name) {
                continue;
            }
            if d.partition {
                out.partitions.insert(name.to_owned());
            } else if out.whole.len() < max_disks && seen.insert(name.to_owned()) {
                out.whole.push(d);
            }
        }
        out
    }
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
    // Out of `st` while the calls use the rest of it (nothing reads it meanwhile).
    let mut conn = std::mem::take(&mut st.conn);
    let calls = AgentCalls {
        st: &mut *st,
        config,
        deadline,
    };
    let result = with_connection(path, &mut conn, config, deadline, calls).await;
    st.conn = conn;
    result
}

/// A scrape's agent calls ([`query`]) for [`with_connection`].
struct AgentCalls<'a> {
    st: &'a mut QgaState,
    config: &'a Config,
    deadline: Instant,
}

impl Calls<GuestAgent> for AgentCalls<'_> {
    type Out = QgaSnapshot;

    fn run(
        &mut self,
        agent: &mut GuestAgent,
        pid: Option<u32>,
    ) -> impl std::future::Future<Output = Result<(QgaSnapshot, bool), Option<QemuError>>> + Send
    {
        self.st.adopt(pid);
        query(agent, self.st, self.config, self.deadline)
    }
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
        let (diskstats, skipped) =
            match bounded_list(agent, "guest-get-diskstats", max, WireDiskStats::accept).await {
                Ok(d) => d,
                // Agents before 7.1, non-Linux guests.
                Err(e) if e.is_command() => (Vec::new(), 0),
                Err(e) => return Err(e),
            };
        let names: BTreeSet<String> = diskstats.iter().map(|d| d.name.clone()).collect();
        let fresh = cached_disks
            .as_ref()
            .is_some_and(|(at, known, _, _)| *known == names && at.elapsed() < DISKS_TTL);
        if !fresh {
            let (disks, disks_skipped) =
                match bounded_list(agent, "guest-get-disks", max, WireDisk::accept).await {
                    Ok(d) => d,
                    Err(e) if e.is_command() => (Vec::new(), 0),
                    Err(e) => return Err(e),
                };
            let kept = GuestDisks::of(disks, config.qga_max_disks);
            *cached_disks = Some((Instant::now(), names, kept, disks_skipped));
        }
        Ok((diskstats, skipped))
    })
    .await;
    let (diskstats, skipped) = match stats {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return Err(Some(e)),
        Err(_) => return Err(None),
    };
    let none = GuestDisks::default();
    // The disks past the bound are counted at every scrape the answer is used, like the
    // diskstats past it.
    let (disks, disks_skipped) = match &st.disks {
        Some((_, _, d, n)) => (d, *n),
        None => (&none, 0),
    };
    let mut snapshot = select(diskstats, disks, config.qga_max_disks);
    snapshot.dropped += skipped.saturating_add(disks_skipped);

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
    disks: &GuestDisks,
    max_disks: usize,
) -> QgaSnapshot {
    let mut dropped = 0usize;
    let partitions = &disks.partitions;
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
    QgaSnapshot {
        diskstats,
        disks: disks.whole.iter().take(max_disks).cloned().collect(),
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

    /// An agent whose every reply is `ret`.
    struct Canned(String);

    impl AgentCommands for Canned {
        fn execute_raw(
            &mut self,
            _: &str,
            _: Option<serde_json::Value>,
        ) -> impl std::future::Future<Output = Result<Box<serde_json::value::RawValue>, QemuError>> + Send
        {
            let raw =
                serde_json::value::RawValue::from_string(self.0.clone()).map_err(QemuError::Json);
            async move { raw }
        }

        fn max_reply_bytes(&self) -> usize {
            1 << 20
        }
    }

    #[tokio::test]
    async fn entries_with_an_over_long_string_are_refused_and_counted() {
        let long = "x".repeat(MAX_GUEST_FIELD_BYTES + 1);
        let at_bound = "s".repeat(MAX_GUEST_FIELD_BYTES);
        let reply = format!(
            r#"[{{"name": "/dev/vda", "partition": false, "alias": "{long}",
                 "dependencies": ["{long}"], "smart": [[], {{}}],
                 "address": {{"pci-controller": {{"domain": 0, "bus": 0, "slot": 4, "function": 0}},
                              "bus-type": "virtio", "serial": "{at_bound}", "dev": "{long}"}}}},
                {{"name": "/dev/{long}"}},
                {{"name": "/dev/vdb", "address": {{"bus-type": "virtio", "serial": "{long}"}}}},
                {{"name": "/dev/vdc", "address": {{"bus-type": "{long}"}}}},
                {{"name": "/dev/vdd", "partition": true, "address": null}},
                {{"name": "/dev/vde"}}]"#
        );
        let mut agent = Canned(reply);
        let (disks, refused) = bounded_list(&mut agent, "guest-get-disks", 5, WireDisk::accept)
            .await
            .unwrap();
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["/dev/vda", "/dev/vdd"]);
        // Three refused for a long name, serial or bus type; one past the bound of 5.
        assert_eq!(refused, 4);
        let vda = &disks[0];
        let address = vda.address.as_ref().unwrap();
        assert_eq!(address.pci_controller.slot, 4);
        assert_eq!(address.bus_type, "virtio");
        assert_eq!(address.serial.as_deref(), Some(at_bound.as_str()));
        // Only what the join uses is kept.
        assert_eq!(
            (&vda.alias, &vda.dependencies, &address.dev),
            (&None, &None, &None)
        );
        assert!(disks[1].partition && disks[1].address.is_none());

        let stats = format!(
            r#"[{{"name": "vda", "major": 254, "stats": {{"read-ios": 7}}}},
                {{"name": "{long}", "stats": {{"read-ios": 1}}}}, {{}}]"#
        );
        let mut agent = Canned(stats);
        let (stats, refused) =
            bounded_list(&mut agent, "guest-get-diskstats", 64, WireDiskStats::accept)
                .await
                .unwrap();
        assert_eq!(refused, 1);
        assert_eq!(stats[0].name, "vda");
        assert_eq!((stats[0].major, stats[0].stats.read_ios), (254, Some(7)));
        // A nameless entry is kept here and dropped (counted) by `select` as an invalid name.
        assert_eq!(stats[1].name, "");
        let mut agent = Canned(r#"[{"name": 5}]"#.to_owned());
        assert!(matches!(
            bounded_list(&mut agent, "guest-get-diskstats", 64, WireDiskStats::accept).await,
            Err(QemuError::Decode { .. })
        ));
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
        let s = select(stats, &GuestDisks::of(disks, 3), 3);
        let names: Vec<&str> = s.diskstats.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, vec!["vda", "vdb", "vdc"]);
        assert_eq!(s.dropped, 3, "invalid, duplicate, over the limit");
        let whole: Vec<&str> = s.disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(whole, vec!["/dev/vda", "/dev/vdb"]);
    }
}
