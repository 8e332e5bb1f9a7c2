//! One socket VM's scrape: its monitor and its agent at once, then the join of their answers
//! (guest disk <-> QEMU device).

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::{
    join, log_change, monitor, qga, QgaSnapshot, QmpSnapshot, VmOutcome, VmState, VmTarget,
};
use crate::config::Config;
use crate::discovery::Target;

/// A label value taken from a command line: bounded.
fn uuid_label(uuid: Option<&str>) -> String {
    uuid.filter(|u| u.len() <= 64)
        .map(str::to_owned)
        .unwrap_or_default()
}

pub(super) async fn scrape_socket_vm(
    vm_target: VmTarget,
    target: &Target,
    st: &mut VmState,
    config: &Config,
    deadline: Instant,
    source: &'static str,
) -> VmOutcome {
    let has_agent = target.qga.is_some();
    let (qmp, qga) = tokio::join!(
        async {
            match &target.qmp {
                Some(path) => {
                    Some(monitor::scrape(path, has_agent, &mut st.qmp, config, deadline).await)
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
    if let Some(path) = &target.qmp {
        let p = path.display().to_string();
        log_change(&vm, "QMP", &p, qmp.as_ref(), &mut st.qmp_up);
    }
    if let Some(path) = &target.qga {
        let p = path.display().to_string();
        log_change(&vm, "guest agent", &p, qga.as_ref(), &mut st.qga_up);
    }
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
    // The monitor's peer, also when it did not answer (a QEMU whose monitor libvirtd holds):
    // it tells a QEMU that another source exports too.
    let (pid, uuid) = match &qmp {
        Some(Ok(q)) => (
            q.pid,
            uuid_label(q.cmdline.as_ref().and_then(|c| c.uuid.as_deref())),
        ),
        _ => (st.qmp.peer_pid(), String::new()),
    };
    VmOutcome {
        qmp,
        qga,
        disks,
        pid,
        ..VmOutcome::unlabelled(vm_target, vm, source, uuid)
    }
}

/// Joins a VM's devices to its guest disks; also says whether a guest disk with a PCI address
/// found no device.
fn join_vm(q: &QmpSnapshot, g: &QgaSnapshot) -> (BTreeMap<String, String>, bool) {
    let keys: Vec<join::DeviceKey<'_>> = q
        .backends()
        .map(|(device, b, _)| {
            let qdev = b.qdev.as_deref().filter(|s| !s.is_empty());
            join::DeviceKey {
                device,
                qdev,
                serial: qdev
                    .and_then(|p| q.devices.get(p))
                    .and_then(|f| f.serial.as_deref()),
            }
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
