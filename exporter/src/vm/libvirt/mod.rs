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
mod connection;
pub mod domxml;
mod ffi;
mod guest;
pub mod passthrough;
pub mod pid;
pub mod pool;
mod qemu;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;
use virt::domain::Domain;

use self::connection::Conn;
use self::domxml::DomainXml;
use self::passthrough::Relay;
use self::pool::Pool;
use crate::config::{Config, LibvirtConfig};
use crate::vm::monitor::QmpState;
use crate::vm::qga::{QgaSnapshot, QgaState};
use crate::vm::qmp::QmpSnapshot;

/// At most this many domains are scraped from one libvirtd.
pub const MAX_DOMAINS: usize = 4096;

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

/// The libvirt source: one connection (re-opened after a failure), its call pool, and the state
/// of the last discovery.
#[derive(Debug)]
pub struct Libvirt {
    config: LibvirtConfig,
    pool: Pool,
    conn: Mutex<Option<Conn>>,
    /// The last discovery: `Ok(domains)` or why it failed (`kvmio_libvirt_up`).
    status: Mutex<Option<Result<usize, String>>>,
    /// Whether the read-only fallback has been reported (once, also across reconnections).
    warned_read_only: std::sync::atomic::AtomicBool,
}

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

pub(super) fn virt_error(e: &virt::error::Error) -> String {
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
            warned_read_only: std::sync::atomic::AtomicBool::new(false),
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
}
