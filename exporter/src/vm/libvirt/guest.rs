//! A libvirt domain's guest layer: the guest disk join from `virDomainGetGuestInfo(DISKS)`
//! (no taint; cached like `guest-get-disks` for socket VMs), and with
//! `--libvirt.agent-passthrough` the agent's diskstats and queue settings through
//! `virDomainQemuAgentCommand`.

use std::collections::BTreeMap;
use std::os::raw::c_uint;
use std::sync::Arc;
use std::time::Duration;

use kvmio_qemu::types::GuestDiskInfo;
use tokio::time::Instant;

use super::passthrough::LibvirtAgent;
use super::{block, ffi, virt_error, DomainState, DomainTarget, Libvirt};
use crate::config::Config;
use crate::errors::chain;
use crate::vm::join::guest_disk_name;
use crate::vm::qga::{self, QgaSnapshot, QGA_MAX_LINE_BYTES};

/// A successful guest-info answer (the join) is used this long, as `guest-get-disks` is for
/// socket VMs: the agent walks sysfs for it.
const GUEST_INFO_TTL: Duration = qga::DISKS_TTL;

/// A failed guest-info call is retried after this long (an agent that does not answer would
/// otherwise hold a pool slot at every scrape).
const GUEST_INFO_RETRY: Duration = Duration::from_secs(60);

impl Libvirt {
    pub(super) async fn guest_layer(
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
