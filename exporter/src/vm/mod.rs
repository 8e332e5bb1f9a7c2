//! The VMs of a scrape: discovery, then every VM's monitor and agent queried at once, each bounded
//! by the VM deadline ([`ScrapeContext::vm_deadline`]), with state kept between scrapes (pooled connections with
//! `--qmp.persistent`, per-QEMU-process caches).
//!
//! The QMP and guest-agent collectors share one [`Fleet`]: whichever asks first starts the
//! scrape's run, and both get the same [`VmOutcome`]s (the join of guest disks to QEMU devices
//! needs both sides of each VM).
//!
//! Bounds: a VM's work ends by the VM deadline whatever its QEMU or guest do (SIGSTOPped QEMU,
//! an agent that never answers, garbage, an endless line): it then counts as down (`*_up 0`),
//! and its connection is dropped. The VM deadline leaves the collectors time to emit, and the
//! host collectors (which wait for the published images) time to run, before the scrape deadline.

pub mod cmdline;
pub mod connection;
pub mod join;
pub mod libvirt;
pub mod monitor;
pub mod qga;
pub mod qmp;
mod qom;
pub mod qsd;
mod socket;
mod target;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{timeout_at, Instant};

pub use self::target::VmTarget;
use self::target::{LabelRequest, StateKey, VmLabels};
use crate::config::Config;
use crate::discovery::discover;
use crate::scrape::ScrapeContext;
use crate::vm::libvirt::{DomainState, Libvirt};
pub use qga::QgaSnapshot;
pub use qmp::QmpSnapshot;

/// One VM's result in a scrape.
#[derive(Debug)]
pub struct VmOutcome {
    /// The target.
    pub target: VmTarget,
    /// The `vm` label: [`Self::name`], or, when another VM has that name, that name made
    /// distinct from every other VM's label (see [`target::VmLabels`] for the rule).
    pub vm: String,
    /// The VM's own name: the configured name or libvirt domain name, else `query-name`, else
    /// the socket stem (`kvmio_vm_info{name}`).
    pub name: String,
    /// `socket`, `proxmox` or `libvirt`.
    pub source: &'static str,
    /// The VM's UUID, where known (libvirt; `-uuid` or Proxmox's SMBIOS UUID on the command line).
    pub uuid: String,
    /// The monitor's answer (`None`: the VM has no QMP socket).
    pub qmp: Option<Result<QmpSnapshot, String>>,
    /// The agent's answer (`None`: the VM has no agent socket).
    pub qga: Option<Result<QgaSnapshot, String>>,
    /// The join: QEMU `device` label -> guest disk name (`vdb`), for the devices matched.
    pub disks: BTreeMap<String, String>,
    /// The QEMU process, where known.
    pub pid: Option<u32>,
}

impl VmOutcome {
    /// An outcome before labelling, with no answers yet: `vm` holds the VM's own name until
    /// [`Fleet`] gives it its label and moves the name to [`Self::name`].
    fn unlabelled(target: VmTarget, own_name: String, source: &'static str, uuid: String) -> Self {
        VmOutcome {
            target,
            vm: own_name,
            name: String::new(),
            source,
            uuid,
            qmp: None,
            qga: None,
            disks: BTreeMap::new(),
            pid: None,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct VmState {
    qmp: monitor::QmpState,
    qga: qga::QgaState,
    libvirt: DomainState,
    /// Last scrape's QMP/QGA health, to log changes once rather than every scrape.
    qmp_up: Option<bool>,
    qga_up: Option<bool>,
}

type Outcomes = Arc<Vec<VmOutcome>>;

#[derive(Debug)]
struct CurrentRun {
    started: Instant,
    rx: watch::Receiver<Option<Outcomes>>,
}

/// The VMs' state between scrapes and the current scrape's run.
#[derive(Debug, Default)]
pub struct Fleet {
    vms: Mutex<HashMap<StateKey, Arc<tokio::sync::Mutex<VmState>>>>,
    current: Mutex<Option<CurrentRun>>,
    libvirt: Option<Arc<Libvirt>>,
    /// VMs already reported as found by two sources.
    /// Monitor sockets found to belong to a libvirt domain's QEMU (socket -> QEMU PID): not
    /// connected to again while that QEMU lives. libvirtd holds its own monitor; a client
    /// waiting on it at every scrape was seen to delay libvirt's answers for other domains.
    also_libvirt: Mutex<HashMap<PathBuf, u32>>,
    /// The `vm` labels given, kept while their VMs are found.
    labels: Mutex<VmLabels>,
}

impl Fleet {
    /// An empty fleet without a libvirt source.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty fleet with the sources `config` names.
    pub fn for_config(config: &Config) -> Self {
        Fleet {
            libvirt: config.libvirt.clone().map(|c| Arc::new(Libvirt::new(c))),
            ..Self::default()
        }
    }

    /// The libvirt source, if configured.
    pub fn libvirt(&self) -> Option<&Arc<Libvirt>> {
        self.libvirt.as_ref()
    }

    /// Number of VMs with state (discovered in the last scrape).
    pub fn len(&self) -> usize {
        self.vms.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no VM has state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// This scrape's outcomes: the first caller of a scrape starts the run, later callers wait
    /// for the same result. Returns by the scrape deadline at the latest (empty if the run did
    /// not finish, which the VM deadline should prevent).
    pub async fn outcomes(self: &Arc<Self>, ctx: &ScrapeContext) -> Outcomes {
        let mut rx = {
            let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
            match current.as_ref() {
                Some(run) if run.started == ctx.started() => run.rx.clone(),
                _ => {
                    let rx = self.start(ctx);
                    *current = Some(CurrentRun {
                        started: ctx.started(),
                        rx: rx.clone(),
                    });
                    rx
                }
            }
        };
        let result = match timeout_at(ctx.deadline(), rx.wait_for(Option::is_some)).await {
            Ok(Ok(v)) => v.clone().unwrap_or_default(),
            _ => Arc::new(Vec::new()),
        };
        result
    }

    fn start(self: &Arc<Self>, ctx: &ScrapeContext) -> watch::Receiver<Option<Outcomes>> {
        let config = Arc::new(ctx.config().clone());
        let deadline = ctx.vm_deadline();
        let (tx, rx) = watch::channel(None);
        let fleet = self.clone();
        tokio::spawn(async move {
            let mut targets: Vec<VmTarget> = discover(&config)
                .into_iter()
                .filter(|t| !fleet.known_libvirt_socket(&t.key, &config))
                .map(VmTarget::Socket)
                .collect();
            if let Some(libvirt) = &fleet.libvirt {
                // A failed listing keeps the libvirt VMs' state (their next scrape reuses it)
                // and shows as kvmio_libvirt_up 0.
                match libvirt.discover(deadline).await {
                    Ok(domains) => targets.extend(domains.into_iter().map(VmTarget::Libvirt)),
                    Err(e) => tracing::debug!(uri = libvirt.uri(), "libvirt: {e}"),
                }
            }
            let libvirt_up = fleet
                .libvirt
                .as_ref()
                .is_some_and(|l| l.status().is_some_and(|s| s.result.is_ok()));
            let states: Vec<(VmTarget, Arc<tokio::sync::Mutex<VmState>>)> = {
                let mut vms = fleet.vms.lock().unwrap_or_else(|e| e.into_inner());
                let keys: std::collections::HashSet<StateKey> =
                    targets.iter().map(VmTarget::key).collect();
                // VMs that vanished: drop their connections and caches.
                vms.retain(|key, _| {
                    keys.contains(key) || (matches!(key, StateKey::Libvirt { .. }) && !libvirt_up)
                });
                targets
                    .into_iter()
                    .map(|t| {
                        let st = vms.entry(t.key()).or_default().clone();
                        (t, st)
                    })
                    .collect()
            };
            let mut outcomes = run(states, config, deadline, fleet.libvirt.clone()).await;
            fleet.drop_duplicates(&mut outcomes);
            fleet.label(&mut outcomes);
            let _ = tx.send(Some(Arc::new(outcomes)));
        });
        rx
    }

    /// Gives each VM its `vm` label, distinct from every other VM's ([`VmLabels`]); its own
    /// name moves to [`VmOutcome::name`].
    fn label(&self, outcomes: &mut [VmOutcome]) {
        let requests: Vec<LabelRequest<'_>> = outcomes
            .iter()
            .map(|o| LabelRequest {
                identity: o.target.identity(),
                stem: o.target.stem(),
                name: &o.vm,
            })
            .collect();
        let labels = self
            .labels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .assign(&requests);
        for (o, label) in outcomes.iter_mut().zip(labels) {
            o.name = std::mem::replace(&mut o.vm, label);
        }
    }

    /// Whether `socket` is a libvirt domain's monitor whose QEMU still runs (then it is not
    /// scraped as a socket VM); forgets it once that QEMU is gone.
    fn known_libvirt_socket(&self, socket: &std::path::Path, config: &Config) -> bool {
        let mut known = self.also_libvirt.lock().unwrap_or_else(|e| e.into_inner());
        match known.get(socket) {
            Some(pid) if config.procfs.join(pid.to_string()).exists() => true,
            Some(_) => {
                known.remove(socket);
                false
            }
            None => false,
        }
    }

    /// The same QEMU found by two sources (a libvirt domain whose QEMU also has a monitor
    /// socket kvmio globs): kept once, from libvirt, and said once; the socket is not connected
    /// to again while that QEMU runs.
    fn drop_duplicates(&self, outcomes: &mut Vec<VmOutcome>) {
        let libvirt_pids: HashMap<u32, String> = outcomes
            .iter()
            .filter(|o| matches!(o.target, VmTarget::Libvirt(_)))
            .filter_map(|o| o.pid.map(|p| (p, o.vm.clone())))
            .collect();
        if libvirt_pids.is_empty() {
            return;
        }
        outcomes.retain(|o| {
            let VmTarget::Socket(t) = &o.target else {
                return true;
            };
            let Some(domain) = o.pid.and_then(|p| libvirt_pids.get(&p)) else {
                return true;
            };
            let pid = o.pid.unwrap_or_default();
            let mut known = self.also_libvirt.lock().unwrap_or_else(|e| e.into_inner());
            if known.insert(t.key.clone(), pid) != Some(pid) {
                tracing::warn!(
                    socket = %t.key.display(),
                    domain = %domain,
                    "this QEMU is also libvirt domain {domain}: exported once, from libvirt"
                );
            }
            false
        });
    }
}

async fn run(
    states: Vec<(VmTarget, Arc<tokio::sync::Mutex<VmState>>)>,
    config: Arc<Config>,
    deadline: Instant,
    libvirt: Option<Arc<Libvirt>>,
) -> Vec<VmOutcome> {
    let mut set = JoinSet::new();
    let count = states.len();
    for (index, (target, state)) in states.into_iter().enumerate() {
        let config = config.clone();
        let libvirt = libvirt.clone();
        set.spawn(async move {
            let outcome = scrape_vm(target, &state, &config, deadline, libvirt.as_deref()).await;
            (index, outcome)
        });
    }
    let mut slots: Vec<Option<VmOutcome>> = (0..count).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((index, outcome)) => slots[index] = Some(outcome),
            Err(e) => tracing::error!("a VM scrape task failed: {e}"),
        }
    }
    slots.into_iter().flatten().collect()
}

async fn scrape_vm(
    target: VmTarget,
    state: &tokio::sync::Mutex<VmState>,
    config: &Config,
    deadline: Instant,
    libvirt: Option<&Libvirt>,
) -> VmOutcome {
    let source = target.source(config);
    let Ok(mut guard) = timeout_at(deadline, state.lock()).await else {
        // The previous scrape's work on this VM is still being torn down.
        let (vm, uuid, qmp, qga) = match &target {
            VmTarget::Socket(t) => (
                t.name.clone().unwrap_or_else(|| t.stem.clone()),
                String::new(),
                t.qmp.as_ref().map(|_| Err("busy".to_owned())),
                t.qga.as_ref().map(|_| Err("busy".to_owned())),
            ),
            VmTarget::Libvirt(d) => (
                d.name.clone(),
                d.uuid.clone(),
                Some(Err("busy".to_owned())),
                None,
            ),
        };
        return VmOutcome {
            qmp,
            qga,
            ..VmOutcome::unlabelled(target, vm, source, uuid)
        };
    };
    let st = &mut *guard;
    match &target {
        VmTarget::Socket(t) => {
            let t = t.clone();
            socket::scrape_socket_vm(target, &t, st, config, deadline, source).await
        }
        VmTarget::Libvirt(d) => {
            let d = d.clone();
            let Some(libvirt) = libvirt else {
                unreachable!("libvirt targets come from the libvirt source");
            };
            let s = libvirt
                .scrape_domain(&d, &mut st.libvirt, config, deadline)
                .await;
            let describe = target.describe();
            let qmp = Some(s.qmp);
            log_change(
                &d.name,
                "libvirt block statistics",
                &describe,
                qmp.as_ref(),
                &mut st.qmp_up,
            );
            log_change(
                &d.name,
                "guest info",
                &describe,
                s.qga.as_ref(),
                &mut st.qga_up,
            );
            VmOutcome {
                qmp,
                qga: s.qga,
                disks: s.disks,
                pid: s.pid,
                ..VmOutcome::unlabelled(target, d.name.clone(), source, d.uuid.clone())
            }
        }
    }
}

/// Logs a VM going down (warn) or coming back (info) once; repeated failures at debug.
pub(super) fn log_change<T>(
    vm: &str,
    what: &str,
    target: &str,
    result: Option<&Result<T, String>>,
    last: &mut Option<bool>,
) {
    let Some(result) = result else {
        return;
    };
    let up = result.is_ok();
    match (result, *last) {
        (Err(e), Some(true) | None) => {
            tracing::warn!(vm, target, "{what} down: {e}")
        }
        (Err(e), Some(false)) => {
            tracing::debug!(vm, target, "{what} still down: {e}")
        }
        (Ok(_), Some(false)) => tracing::info!(vm, target, "{what} up again"),
        (Ok(_), _) => {}
    }
    *last = Some(up);
}
