//! The VMs of a scrape: discovery, then every VM's monitor and agent queried at once, each bounded
//! by the VM deadline ([`vm_deadline`]), with state kept between scrapes (pooled connections with
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
pub mod join;
pub mod qga;
pub mod qmp;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{timeout_at, Instant};

use crate::collector::ScrapeContext;
use crate::config::Config;
use crate::discovery::{discover, Target};
pub use qga::QgaSnapshot;
pub use qmp::QmpSnapshot;

/// One VM's result in a scrape.
#[derive(Debug)]
pub struct VmOutcome {
    /// The target.
    pub target: Target,
    /// The `vm` label: the configured name, else `query-name`, else the socket stem.
    pub vm: String,
    /// The monitor's answer (`None`: the VM has no QMP socket).
    pub qmp: Option<Result<QmpSnapshot, String>>,
    /// The agent's answer (`None`: the VM has no agent socket).
    pub qga: Option<Result<QgaSnapshot, String>>,
    /// The join: QEMU `device` label -> guest disk name (`vdb`), for the devices matched.
    pub disks: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct VmState {
    qmp: qmp::QmpState,
    qga: qga::QgaState,
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
    vms: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<VmState>>>>,
    current: Mutex<Option<CurrentRun>>,
}

fn reserves(ctx: &ScrapeContext) -> (Duration, Duration) {
    let timeout = ctx.config().scrape_timeout;
    let host_reserve = (timeout / 4).min(Duration::from_millis(500));
    let emit_reserve = (timeout / 10).min(Duration::from_millis(250));
    (host_reserve, emit_reserve)
}

/// By when the QMP collector must have resolved the images to host devices: half-way through
/// its emit reserve after the VM deadline.
pub fn resolve_deadline(ctx: &ScrapeContext) -> Instant {
    let (_, emit_reserve) = reserves(ctx);
    (vm_deadline(ctx) + emit_reserve / 2).min(ctx.deadline())
}

/// When each VM's work must be done: the scrape deadline minus the time the host collectors
/// keep for themselves after the images are published (a quarter of the timeout, at most 0.5 s)
/// and a margin for emitting (a tenth, at most 0.25 s).
pub fn vm_deadline(ctx: &ScrapeContext) -> Instant {
    let (host_reserve, emit_reserve) = reserves(ctx);
    ctx.deadline()
        .checked_sub(host_reserve + emit_reserve)
        .unwrap_or_else(|| ctx.started())
        .max(ctx.started())
}

impl Fleet {
    /// An empty fleet.
    pub fn new() -> Self {
        Self::default()
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
    pub async fn outcomes(&self, ctx: &ScrapeContext) -> Outcomes {
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

    fn start(&self, ctx: &ScrapeContext) -> watch::Receiver<Option<Outcomes>> {
        let config = Arc::new(ctx.config().clone());
        let targets = discover(&config);
        let states: Vec<(Target, Arc<tokio::sync::Mutex<VmState>>)> = {
            let mut vms = self.vms.lock().unwrap_or_else(|e| e.into_inner());
            // VMs that vanished: drop their connections and caches.
            vms.retain(|key, _| targets.iter().any(|t| &t.key == key));
            targets
                .into_iter()
                .map(|t| {
                    let st = vms.entry(t.key.clone()).or_default().clone();
                    (t, st)
                })
                .collect()
        };
        let deadline = vm_deadline(ctx);
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let outcomes = run(states, config, deadline).await;
            let _ = tx.send(Some(Arc::new(outcomes)));
        });
        rx
    }
}

async fn run(
    states: Vec<(Target, Arc<tokio::sync::Mutex<VmState>>)>,
    config: Arc<Config>,
    deadline: Instant,
) -> Vec<VmOutcome> {
    let mut set = JoinSet::new();
    let count = states.len();
    for (index, (target, state)) in states.into_iter().enumerate() {
        let config = config.clone();
        set.spawn(async move {
            let outcome = scrape_vm(&target, &state, &config, deadline).await;
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
    let mut outcomes: Vec<VmOutcome> = slots.into_iter().flatten().collect();
    disambiguate(&mut outcomes);
    outcomes
}

/// Two VMs with the same label (two QEMUs started with the same `-name`) would make duplicate
/// series: each of them is labelled `NAME@STEM` instead (the socket's stem).
fn disambiguate(outcomes: &mut [VmOutcome]) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for o in outcomes.iter() {
        *seen.entry(o.vm.clone()).or_default() += 1;
    }
    for o in outcomes.iter_mut() {
        if seen.get(&o.vm).is_some_and(|&n| n > 1) {
            tracing::debug!(vm = %o.vm, socket = %o.target.key.display(), "VM name used twice");
            o.vm = format!("{}@{}", o.vm, o.target.stem);
        }
    }
}

async fn scrape_vm(
    target: &Target,
    state: &tokio::sync::Mutex<VmState>,
    config: &Config,
    deadline: Instant,
) -> VmOutcome {
    let Ok(mut guard) = timeout_at(deadline, state.lock()).await else {
        // The previous scrape's work on this VM is still being torn down.
        return VmOutcome {
            target: target.clone(),
            vm: target.name.clone().unwrap_or_else(|| target.stem.clone()),
            qmp: target.qmp.as_ref().map(|_| Err("busy".to_owned())),
            qga: target.qga.as_ref().map(|_| Err("busy".to_owned())),
            disks: BTreeMap::new(),
        };
    };
    let st = &mut *guard;
    let has_agent = target.qga.is_some();
    let (qmp, qga) = tokio::join!(
        async {
            match &target.qmp {
                Some(path) => {
                    Some(qmp::scrape(path, has_agent, &mut st.qmp, config, deadline).await)
                }
                None => None,
            }
        },
        async {
            match &target.qga {
                Some(path) => Some(qga::scrape(path, &mut st.qga, config, deadline).await),
                None => None,
            }
        }
    );
    let vm = target
        .name
        .clone()
        .or_else(|| st.qmp.name().map(str::to_owned))
        .unwrap_or_else(|| target.stem.clone());
    log_change(&vm, "QMP", target.qmp.as_ref(), &qmp, &mut st.qmp_up);
    log_change(
        &vm,
        "guest agent",
        target.qga.as_ref(),
        &qga,
        &mut st.qga_up,
    );
    let disks = match (&qmp, &qga) {
        (Some(Ok(q)), Some(Ok(g))) => {
            let (disks, unmatched) = join_vm(q, g);
            // A guest disk at a PCI address QEMU's (cached) PCI list does not have: the guest
            // may have renumbered buses since, so ask again (rate-limited).
            st.qmp.pci_stale |= unmatched;
            disks
        }
        _ => BTreeMap::new(),
    };
    VmOutcome {
        target: target.clone(),
        vm,
        qmp,
        qga,
        disks,
    }
}

/// Joins a VM's devices to its guest disks; also says whether a guest disk with a PCI address
/// found no device.
fn join_vm(q: &QmpSnapshot, g: &QgaSnapshot) -> (BTreeMap<String, String>, bool) {
    let keys: Vec<join::DeviceKey<'_>> = q
        .block
        .iter()
        .filter_map(|b| {
            let inserted = b.inserted.as_ref()?;
            let qdev = b.qdev.as_deref().filter(|s| !s.is_empty());
            Some(join::DeviceKey {
                device: qmp::device_label(
                    Some(b.device.as_str()),
                    qdev,
                    inserted.node_name.as_deref(),
                ),
                qdev,
                serial: qdev
                    .and_then(|p| q.devices.get(p))
                    .and_then(|f| f.serial.as_deref()),
            })
        })
        .collect();
    let disks = join::match_disks(&keys, &q.pci, &g.disks);
    let unmatched = g.disks.iter().any(|d| {
        d.address
            .as_ref()
            .is_some_and(|a| a.pci_controller.is_valid() && a.bus_type == "virtio")
            && !disks.values().any(|n| n == join::guest_disk_name(&d.name))
    });
    (disks, unmatched)
}

/// Logs a VM going down (warn) or coming back (info) once; repeated failures at debug.
fn log_change<T>(
    vm: &str,
    what: &str,
    socket: Option<&PathBuf>,
    result: &Option<Result<T, String>>,
    last: &mut Option<bool>,
) {
    let (Some(socket), Some(result)) = (socket, result) else {
        return;
    };
    let up = result.is_ok();
    match (result, *last) {
        (Err(e), Some(true) | None) => {
            tracing::warn!(vm, socket = %socket.display(), "{what} down: {e}")
        }
        (Err(e), Some(false)) => {
            tracing::debug!(vm, socket = %socket.display(), "{what} still down: {e}")
        }
        (Ok(_), Some(false)) => tracing::info!(vm, socket = %socket.display(), "{what} up again"),
        (Ok(_), _) => {}
    }
    *last = Some(up);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_names_get_the_socket_stem() {
        let vm = |name: &str, stem: &str| VmOutcome {
            target: Target {
                key: format!("/run/{stem}.qmp").into(),
                qmp: None,
                qga: None,
                name: None,
                stem: stem.to_owned(),
            },
            vm: name.to_owned(),
            qmp: None,
            qga: None,
            disks: BTreeMap::new(),
        };
        let mut o = vec![vm("db", "100"), vm("db", "101"), vm("web", "102")];
        disambiguate(&mut o);
        let names: Vec<&str> = o.iter().map(|o| o.vm.as_str()).collect();
        assert_eq!(names, vec!["db@100", "db@101", "web"]);
    }
}
