//! The libvirt source (`--libvirt.uri`): the domains of one libvirtd, through libvirt's own
//! connection, never touching the sockets libvirtd holds and, by default, without tainting any
//! domain.
//!
//! At every scrape the running and paused domains are listed ([`Libvirt::discover`]); each one
//! becomes a VM of the fleet like a socket VM, and [`Libvirt::scrape_domain`] turns it into the
//! same snapshots ([`QmpSnapshot`], [`QgaSnapshot`]) plus the guest disk join:
//!
//! | layer | default (no taint) | opt-in (libvirt marks the domain tainted) |
//! |---|---|---|
//! | QEMU device | `virDomainListGetStats` block stats + domain XML ([`block`]) | `--libvirt.qmp-passthrough`: the monitor's own queries ([`passthrough`]) |
//! | guest | `virDomainGetGuestInfo(DISKS)`: the join only | `--libvirt.agent-passthrough`: diskstats and queue settings |
//! | host | image paths from the XML; page cache, devices as for any VM | |
//! | process | `/proc/PID/io` of the QEMU started with `-uuid UUID` ([`pid`]) | |
//!
//! Every libvirt call blocks a thread: they run in a bounded [`pool::Pool`] under the VM
//! deadline. A libvirtd that is gone or restarting makes `kvmio_libvirt_up 0` and a reconnect at
//! the next scrape; one domain whose QEMU does not answer is `up 0` on its own.

pub mod block;
pub mod domxml;
mod ffi;
pub mod passthrough;
pub mod pid;
pub mod pool;

use std::collections::{BTreeMap, BTreeSet};
use std::os::raw::c_uint;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvmio_qemu::types::GuestDiskInfo;
use tokio::time::Instant;
use virt::connect::Connect;
use virt::domain::Domain;

use self::domxml::DomainXml;
use self::passthrough::{LibvirtAgent, LibvirtMonitor, Relay};
use self::pool::Pool;
use crate::config::{Config, LibvirtConfig};
use crate::errors::chain;
use crate::vm::join::guest_disk_name;
use crate::vm::qga::{self, QgaSnapshot, QgaState, QGA_MAX_LINE_BYTES};
use crate::vm::qmp::{self, QmpSnapshot, QmpState, QMP_MAX_LINE_BYTES};

/// At most this many domains are scraped from one libvirtd.
pub const MAX_DOMAINS: usize = 4096;

/// A domain's XML is read again after this long (and whenever its disk set changes).
const XML_TTL: Duration = Duration::from_secs(60);

/// A successful guest-info answer (the join) is used this long, as `guest-get-disks` is for
/// socket VMs: the agent walks sysfs for it.
const GUEST_INFO_TTL: Duration = qga::DISKS_TTL;

/// A failed guest-info call is retried after this long (an agent that does not answer would
/// otherwise hold a pool slot at every scrape).
const GUEST_INFO_RETRY: Duration = Duration::from_secs(60);

/// A running or paused domain found at this scrape.
#[derive(Debug, Clone)]
pub struct DomainTarget {
    pub name: String,
    pub uuid: String,
    /// libvirt's id of this run of the domain: a restart gets a new one (and fresh caches).
    pub id: u32,
    pub domain: Arc<Domain>,
}

impl PartialEq for DomainTarget {
    fn eq(&self, other: &Self) -> bool {
        self.uuid == other.uuid && self.id == other.id && self.name == other.name
    }
}

impl Eq for DomainTarget {}

/// The libvirt connection and whether it is read-only.
#[derive(Debug, Clone)]
struct Conn {
    connect: Arc<Connect>,
    read_only: bool,
}

/// The libvirt source: one connection (re-opened after a failure), its call pool, and the state
/// of the last discovery.
#[derive(Debug)]
pub struct Libvirt {
    config: LibvirtConfig,
    pool: Pool,
    conn: Mutex<Option<Conn>>,
    /// The last discovery: `Ok(domains)` or why it failed (`kvmio_libvirt_up`).
    status: Mutex<Option<Result<usize, String>>>,
}

/// Whether the read-only fallback has been reported: once per process, shared by the start-up
/// check's connection and the source's own (and its reconnections).
static WARNED_READ_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What the libvirt source's last discovery found (for `kvmio_libvirt_up`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtStatus {
    pub uri: String,
    pub result: Result<usize, String>,
}

/// libvirt targets (`vda`) paired with the guest's disk names, from guest info.
type GuestDisks = Arc<Vec<(String, String)>>;

/// A domain's state kept between scrapes.
#[derive(Debug, Default)]
pub struct DomainState {
    id: Option<u32>,
    xml: Option<(Instant, BTreeSet<String>, Arc<DomainXml>)>,
    /// Guest info: when asked, and the target -> guest disk map or why it failed.
    guest: Option<(Instant, Result<GuestDisks, String>)>,
    pid: Option<Option<u32>>,
    qmp: QmpState,
    qga: QgaState,
}

/// A domain's scrape: the QEMU layer, the guest layer, and the join (`device` -> guest disk).
#[derive(Debug)]
pub struct DomainScrape {
    pub qmp: Result<QmpSnapshot, String>,
    pub qga: Option<Result<QgaSnapshot, String>>,
    pub disks: BTreeMap<String, String>,
    pub pid: Option<u32>,
}

fn virt_error(e: &virt::error::Error) -> String {
    e.message().replace('\n', " ")
}

impl Libvirt {
    /// The source for `config` (no connection yet: the first scrape opens it).
    pub fn new(config: LibvirtConfig) -> Self {
        // libvirt prints every error to stderr by default; kvmio reports them itself.
        virt::error::clear_error_callback();
        Libvirt {
            pool: Pool::new(config.max_concurrent_calls),
            config,
            conn: Mutex::new(None),
            status: Mutex::new(None),
        }
    }

    /// The URI.
    pub fn uri(&self) -> &str {
        &self.config.uri
    }

    /// `read-write` or `read-only` once connected.
    pub fn access(&self) -> Option<&'static str> {
        self.conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|c| {
                if c.read_only {
                    "read-only"
                } else {
                    "read-write"
                }
            })
    }

    /// Whether QMP queries go through libvirt's monitor passthrough.
    pub fn qmp_passthrough(&self) -> bool {
        self.config.qmp_passthrough
    }

    /// Whether guest-agent queries go through libvirt's agent passthrough.
    pub fn agent_passthrough(&self) -> bool {
        self.config.agent_passthrough
    }

    /// The last discovery's result.
    pub fn status(&self) -> Option<LibvirtStatus> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .map(|result| LibvirtStatus {
                uri: self.config.uri.clone(),
                result,
            })
    }

    /// Opens the connection: read-write (guest info and passthrough need it), else read-only.
    /// Blocking: runs in the pool.
    fn open(uri: &str) -> Result<Conn, String> {
        match Connect::open(Some(uri)) {
            Ok(c) => Ok(Conn {
                connect: Arc::new(c),
                read_only: false,
            }),
            Err(rw) => match Connect::open_read_only(Some(&read_only_uri(uri))) {
                Ok(c) => Ok(Conn {
                    connect: Arc::new(c),
                    read_only: true,
                }),
                Err(_) => Err(format!("cannot connect to {uri}: {}", virt_error(&rw))),
            },
        }
    }

    /// Connects once (at start-up): whether libvirt allowed a read-write connection. The
    /// read-only fallback is warned about, once, with what it costs.
    pub async fn check(&self, deadline: Instant) -> Result<bool, String> {
        self.connection(deadline).await.map(|c| !c.read_only)
    }

    async fn connection(&self, deadline: Instant) -> Result<Conn, String> {
        if let Some(c) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(c);
        }
        let uri = self.config.uri.clone();
        let conn = self
            .pool
            .run(deadline, move || Self::open(&uri))
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.config.uri))??;
        if conn.read_only && !WARNED_READ_ONLY.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                uri = %self.config.uri,
                families = "kvmio_qga_up, kvmio_guest_disk_*, kvmio_disk_layer_info{disk}",
                "libvirt refused a read-write connection: connected read-only, so the guest \
                 layer (guest info, agent passthrough) and the monitor passthrough are \
                 unavailable; add kvmio's user to the libvirt group (Debian's polkit rule lets \
                 that group manage libvirt)"
            );
        }
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// Drops the connection if libvirt says it is dead, so that the next scrape reconnects.
    async fn check_alive(&self, conn: &Conn, deadline: Instant) {
        let c = conn.connect.clone();
        let alive = self
            .pool
            .run(deadline, move || c.is_alive().unwrap_or(false))
            .await
            .unwrap_or(false);
        if !alive {
            let mut slot = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            if slot
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(&s.connect, &conn.connect))
            {
                *slot = None;
            }
        }
    }

    /// The running and paused domains now.
    pub async fn discover(&self, deadline: Instant) -> Result<Vec<DomainTarget>, String> {
        let result = self.list(deadline).await;
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(result.as_ref().map(Vec::len).map_err(Clone::clone));
        result
    }

    async fn list(&self, deadline: Instant) -> Result<Vec<DomainTarget>, String> {
        let conn = self.connection(deadline).await?;
        let c = conn.connect.clone();
        let listed = self
            .pool
            .run(deadline, move || {
                let domains = c
                    .list_all_domains(virt_sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                    .map_err(|e| virt_error(&e))?;
                let mut out = Vec::new();
                for d in domains.into_iter().take(MAX_DOMAINS) {
                    // A domain that stopped meanwhile has no id: skip it.
                    let Some(id) = d.id() else { continue };
                    let (Ok(name), Ok(uuid)) = (d.name(), d.uuid_string()) else {
                        continue;
                    };
                    out.push(DomainTarget {
                        name,
                        uuid,
                        id,
                        domain: Arc::new(d),
                    });
                }
                Ok::<_, String>(out)
            })
            .await;
        match listed {
            Ok(Ok(list)) => Ok(list),
            Ok(Err(e)) => {
                self.check_alive(&conn, deadline).await;
                Err(format!("listing domains: {e}"))
            }
            Err(e) => Err(format!("listing domains: {e}")),
        }
    }

    /// Scrapes one domain.
    pub async fn scrape_domain(
        &self,
        t: &DomainTarget,
        st: &mut DomainState,
        config: &Config,
        deadline: Instant,
    ) -> DomainScrape {
        if st.id != Some(t.id) {
            *st = DomainState {
                id: Some(t.id),
                ..DomainState::default()
            };
        }
        let read_only = self
            .conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_none_or(|c| c.read_only);
        if st.pid.is_none() {
            let procfs = config.procfs.clone();
            let uuid = t.uuid.clone();
            let found = self
                .pool
                .run(deadline, move || {
                    pid::find_by_uuid(&procfs, &[uuid.as_str()])
                        .into_values()
                        .next()
                })
                .await;
            if let Ok(p) = found {
                st.pid = Some(p);
            }
        }
        let pid = st.pid.flatten();

        let qmp = self.qemu_layer(t, st, config, deadline, pid).await;
        let agent = st.xml.as_ref().is_some_and(|(_, _, x)| x.agent);
        let (qga, disks) = if read_only || !agent {
            (None, BTreeMap::new())
        } else {
            self.guest_layer(t, st, config, deadline, pid).await
        };
        DomainScrape {
            qmp,
            qga,
            disks,
            pid,
        }
    }

    fn relay(&self, t: &DomainTarget, deadline: Instant, max_reply_bytes: usize) -> Relay {
        Relay {
            domain: t.domain.clone(),
            pool: self.pool.clone(),
            deadline,
            max_reply_bytes,
        }
    }

    async fn qemu_layer(
        &self,
        t: &DomainTarget,
        st: &mut DomainState,
        config: &Config,
        deadline: Instant,
        pid: Option<u32>,
    ) -> Result<QmpSnapshot, String> {
        let domain = t.domain.clone();
        let stats = self
            .pool
            .run(deadline, move || {
                ffi::domain_stats(
                    &domain,
                    virt_sys::VIR_DOMAIN_STATS_STATE | virt_sys::VIR_DOMAIN_STATS_BLOCK,
                    virt_sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING
                        | virt_sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT,
                )
            })
            .await
            .map_err(|e| format!("block statistics: {e}"))?
            .map_err(|e| format!("block statistics: {}", virt_error(&e)))?;
        let per_disk = block::disk_stats(&stats);
        let names: BTreeSet<String> = per_disk.keys().cloned().collect();
        let fresh = st
            .xml
            .as_ref()
            .is_some_and(|(at, known, _)| *known == names && at.elapsed() < XML_TTL);
        if !fresh {
            let domain = t.domain.clone();
            let xml = self
                .pool
                .run(deadline, move || domain.xml_desc(0))
                .await
                .map_err(|e| format!("domain XML: {e}"))?
                .map_err(|e| format!("domain XML: {}", virt_error(&e)))?;
            let parsed = domxml::parse(&xml).map_err(|e| format!("domain XML: {}", chain(&e)))?;
            if parsed.over > 0 {
                tracing::warn!(vm = %t.name, over = parsed.over, "domain has more disks than kvmio exports");
            }
            st.xml = Some((Instant::now(), names, Arc::new(parsed)));
        }
        let xml = st
            .xml
            .as_ref()
            .map(|(_, _, d)| d.clone())
            .unwrap_or_default();
        let disks = &xml.disks;
        // libvirt answers with the state alone when QEMU's monitor was busy (NOWAIT) or did
        // not answer: a domain with disks but no statistics for any of them is not up.
        let with_source = disks.iter().filter(|d| !d.source.is_empty()).count();
        if with_source > 0 && per_disk.values().all(|d| d.rd_reqs.is_none()) {
            return Err(
                "libvirt returned no block statistics (QEMU's monitor is busy or not answering)"
                    .to_owned(),
            );
        }

        let mut snapshot = if self.config.qmp_passthrough {
            let mut monitor = LibvirtMonitor(self.relay(t, deadline, QMP_MAX_LINE_BYTES));
            qmp::adopt(&mut st.qmp.cache, pid);
            let mut snap = qmp::queries(&mut monitor, pid, false, false, &mut st.qmp.cache, config)
                .await
                .map_err(|e| format!("monitor passthrough: {}", chain(&e)))?;
            snap.configured = block::snapshot(disks, &per_disk).configured;
            snap
        } else {
            let mut snap = block::snapshot(disks, &per_disk);
            snap.pid = pid;
            snap
        };
        if snapshot.process_io.is_none() {
            snapshot.process_io = pid.and_then(|p| qmp::read_process_io(&config.procfs, p));
        }
        Ok(snapshot)
    }

    async fn guest_layer(
        &self,
        t: &DomainTarget,
        st: &mut DomainState,
        config: &Config,
        deadline: Instant,
        pid: Option<u32>,
    ) -> (
        Option<Result<QgaSnapshot, String>>,
        BTreeMap<String, String>,
    ) {
        let due = match &st.guest {
            None => true,
            Some((at, Ok(_))) => at.elapsed() >= GUEST_INFO_TTL,
            Some((at, Err(_))) => at.elapsed() >= GUEST_INFO_RETRY,
        };
        if due {
            let domain = t.domain.clone();
            let answer = self
                .pool
                .run(deadline, move || {
                    ffi::guest_info(&domain, virt_sys::VIR_DOMAIN_GUEST_INFO_DISKS as c_uint)
                })
                .await;
            let result = match answer {
                Ok(Ok(params)) => Ok(Arc::new(guest_disks(&params, config.qga_max_disks))),
                Ok(Err(e)) => Err(format!("guest info: {}", virt_error(&e))),
                Err(e) => Err(format!("guest info: {e}")),
            };
            st.guest = Some((Instant::now(), result));
        }
        let guest = st.guest.as_ref().map(|(_, r)| r.clone());
        // target (vda) -> guest disk (vda, sdb...), through the XML's targets to device labels.
        let mut disks = BTreeMap::new();
        let xml = st
            .xml
            .as_ref()
            .map(|(_, _, d)| d.clone())
            .unwrap_or_default();
        if let Some(Ok(pairs)) = &guest {
            for (target, guest_disk) in pairs.iter() {
                if let Some(d) = xml.disks.iter().find(|d| &d.target == target) {
                    disks.insert(block::device_label(d).to_owned(), guest_disk.clone());
                }
            }
        }
        let qga = if self.config.agent_passthrough {
            let mut agent = LibvirtAgent(self.relay(t, deadline, QGA_MAX_LINE_BYTES));
            st.qga.adopt(pid);
            Some(
                match qga::query(&mut agent, &mut st.qga, config, deadline).await {
                    Ok((snap, _)) => Ok(snap),
                    Err(Some(e)) => Err(format!("agent passthrough: {}", chain(&e))),
                    Err(None) => Err("agent passthrough timed out".to_owned()),
                },
            )
        } else {
            Some(match guest {
                Some(Ok(pairs)) => Ok(QgaSnapshot {
                    disks: pairs
                        .iter()
                        .map(|(_, g)| GuestDiskInfo {
                            name: format!("/dev/{g}"),
                            ..GuestDiskInfo::default()
                        })
                        .collect(),
                    ..QgaSnapshot::default()
                }),
                Some(Err(e)) => Err(e),
                None => Err("guest info not asked yet".to_owned()),
            })
        };
        (qga, disks)
    }
}

/// The URI for the read-only fallback: libvirt picks the daemon's read-only socket itself,
/// except when the URI names a socket (`?socket=PATH`): then its read-only sibling, which every
/// libvirt daemon names `PATH-ro` (`libvirt-sock-ro`, `virtqemud-sock-ro`).
fn read_only_uri(uri: &str) -> String {
    let Some((base, query)) = uri.split_once('?') else {
        return uri.to_owned();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.strip_prefix("socket=") {
            Some(path) if !path.ends_with("-ro") => format!("socket={path}-ro"),
            _ => p.to_owned(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

/// `disk.<n>.alias` (libvirt's target, for the disks libvirt matched to its own) and
/// `disk.<n>.name` (the guest's device node) of whole disks, at most `max` of them.
fn guest_disks(params: &ffi::Params, max: usize) -> Vec<(String, String)> {
    let mut by_index: BTreeMap<usize, (Option<String>, Option<String>, bool)> = BTreeMap::new();
    for (field, value) in &params.params {
        let Some(rest) = field.strip_prefix("disk.") else {
            continue;
        };
        let Some((n, key)) = rest.split_once('.') else {
            continue;
        };
        let Ok(n) = n.parse::<usize>() else { continue };
        let e = by_index.entry(n).or_default();
        match (key, value) {
            ("alias", ffi::Value::Str(s)) => e.0 = Some(s.clone()),
            ("name", ffi::Value::Str(s)) => e.1 = Some(s.clone()),
            ("partition", ffi::Value::Bool(b)) => e.2 = *b,
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (alias, name, partition) in by_index.into_values() {
        if partition {
            continue;
        }
        let (Some(alias), Some(name)) = (alias, name) else {
            continue;
        };
        let disk = guest_disk_name(&name);
        if !qga::valid_disk_name(disk) || out.len() >= max {
            continue;
        }
        out.push((alias, disk.to_owned()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::ffi::{Params, Value};
    use super::*;

    #[test]
    fn read_only_uris() {
        assert_eq!(read_only_uri("qemu:///system"), "qemu:///system");
        assert_eq!(
            read_only_uri("qemu:///system?socket=/run/x/libvirt-sock"),
            "qemu:///system?socket=/run/x/libvirt-sock-ro"
        );
        assert_eq!(
            read_only_uri("qemu+unix:///system?mode=direct&socket=/s-ro"),
            "qemu+unix:///system?mode=direct&socket=/s-ro"
        );
    }

    #[test]
    fn guest_disks_pairs_targets_with_guest_names() {
        let p = Params {
            params: vec![
                ("disk.count".into(), Value::UInt(3)),
                ("disk.0.name".into(), Value::Str("/dev/vda".into())),
                ("disk.0.partition".into(), Value::Bool(false)),
                ("disk.0.alias".into(), Value::Str("vda".into())),
                ("disk.1.name".into(), Value::Str("/dev/vda1".into())),
                ("disk.1.partition".into(), Value::Bool(true)),
                ("disk.1.alias".into(), Value::Str("vda".into())),
                ("disk.2.name".into(), Value::Str("/dev/../x".into())),
                ("disk.2.alias".into(), Value::Str("vdb".into())),
                ("disk.3.name".into(), Value::Str("/dev/sdz".into())),
            ],
            dropped: 0,
        };
        assert_eq!(
            guest_disks(&p, 8),
            vec![("vda".to_owned(), "vda".to_owned())]
        );
    }
}
