//! What a VM of the fleet is: sockets (a QMP monitor and an agent, found by discovery) or a
//! libvirt domain; the key its state is kept under between scrapes; its `vm` label, distinct
//! from every other VM's ([`VmLabels`]); and where it came from (`kvmio_vm_info{source}`).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use super::libvirt::DomainTarget;
use crate::config::{Config, Layout};
use crate::discovery::Target;
use crate::metrics::{sanitize_label_value, MAX_LABEL_VALUE_BYTES};

/// A VM to scrape: monitor and agent sockets, or a libvirt domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmTarget {
    Socket(Target),
    Libvirt(DomainTarget),
}

/// Per-VM state is kept under this key between scrapes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum StateKey {
    Socket(PathBuf),
    Libvirt { uuid: String, id: u32 },
}

impl VmTarget {
    pub(super) fn key(&self) -> StateKey {
        match self {
            VmTarget::Socket(t) => StateKey::Socket(t.key.clone()),
            VmTarget::Libvirt(d) => StateKey::Libvirt {
                uuid: d.uuid.clone(),
                id: d.id,
            },
        }
    }

    /// A short name of the VM's own identity, for a label that must tell it from another VM of
    /// the same name: the socket's stem (a Proxmox VMID), the domain's UUID.
    pub(super) fn stem(&self) -> &str {
        match self {
            VmTarget::Socket(t) => &t.stem,
            VmTarget::Libvirt(d) => &d.uuid,
        }
    }

    /// The VM's identity across its restarts and everyone else's: the monitor socket's path
    /// (the agent's for an agent alone), or the libvirt domain's UUID.
    pub(super) fn identity(&self) -> String {
        match self {
            VmTarget::Socket(t) => t.key.display().to_string(),
            VmTarget::Libvirt(d) => format!("libvirt:{}", d.uuid),
        }
    }

    /// The socket kvmio scrapes the VM through (`kvmio_vm_info{socket}`); empty for libvirt.
    pub fn socket(&self) -> String {
        match self {
            VmTarget::Socket(t) => t.key.display().to_string(),
            VmTarget::Libvirt(_) => String::new(),
        }
    }

    /// Where the VM came from (the `source` label of `kvmio_vm_info`).
    pub(super) fn source(&self, config: &Config) -> &'static str {
        match self {
            VmTarget::Libvirt(_) => "libvirt",
            VmTarget::Socket(t)
                if config.layout == Some(Layout::Proxmox)
                    && t.key.to_string_lossy().contains("/qemu-server/") =>
            {
                "proxmox"
            }
            VmTarget::Socket(_) => "socket",
        }
    }

    /// The path or URI named in logs.
    pub(super) fn describe(&self) -> String {
        match self {
            VmTarget::Socket(t) => t.key.display().to_string(),
            VmTarget::Libvirt(d) => format!("libvirt domain {} ({})", d.name, d.uuid),
        }
    }
}

/// The `vm` labels of the fleet: one per VM, never two VMs with one label, whatever their names.
///
/// The rule (README "Targets"; each VM's own name is `kvmio_vm_info{name}`):
/// 1. A VM's name (configured `name`, libvirt domain name, `-name`, else the socket stem) is
///    sanitised and cut to the label limit ([`MAX_LABEL_VALUE_BYTES`]) first: names that only
///    differ after the cut are the same name here.
/// 2. A VM keeps the label it was given as long as it is found and its name does not change:
///    across scrapes, restarts of its QEMU (same socket or domain), and VMs of the same name
///    starting or stopping. Labels therefore derive from the VM's identity and history, never
///    from the order of a scrape.
/// 3. A VM that needs a label (new, or renamed) gets its name if no other VM holds that label;
///    else (after every VM whose name is free has its own) `NAME@ID` with ID its short identity (the socket stem, a Proxmox VMID; the libvirt
///    UUID); if that is held too (two sockets of one stem in two directories, or a VM literally
///    named `dup@100`), `NAME@H` with H eight hex digits of a hash of its full identity (socket
///    path or UUID), then `NAME@H-2`, `-3`... NAME is cut so that the whole label fits the limit.
/// 4. VMs that need a label in the same scrape are served in the order of their identity
///    (socket path, UUID), so the same set of VMs gets the same labels on every exporter start.
#[derive(Debug, Default)]
pub(super) struct VmLabels {
    /// Identity -> (name, label) given.
    held: HashMap<String, (String, String)>,
}

/// One VM to label: its identity, its short identity and its name.
#[derive(Debug, Clone)]
pub(super) struct LabelRequest<'a> {
    pub identity: String,
    pub stem: &'a str,
    pub name: &'a str,
}

impl VmLabels {
    /// The label of each VM of this scrape, in the order given; forgets the VMs not given.
    pub(super) fn assign(&mut self, vms: &[LabelRequest<'_>]) -> Vec<String> {
        let names: Vec<String> = vms
            .iter()
            .map(|v| sanitize_label_value(v.name, MAX_LABEL_VALUE_BYTES).into_owned())
            .collect();
        let present: BTreeSet<&str> = vms.iter().map(|v| v.identity.as_str()).collect();
        self.held.retain(|id, _| present.contains(id.as_str()));
        let mut out: Vec<Option<String>> = vec![None; vms.len()];
        let mut taken: BTreeSet<String> = BTreeSet::new();
        // Keepers first: a VM found again under the same name keeps its label.
        for (i, v) in vms.iter().enumerate() {
            if let Some((name, label)) = self.held.get(&v.identity) {
                if *name == names[i] && taken.insert(label.clone()) {
                    out[i] = Some(label.clone());
                }
            }
        }
        let mut pending: Vec<usize> = (0..vms.len()).filter(|&i| out[i].is_none()).collect();
        pending.sort_by(|&a, &b| vms[a].identity.cmp(&vms[b].identity));
        // Then every VM whose own name is free, then the others, suffixed.
        for suffix in [false, true] {
            for &i in &pending {
                if out[i].is_some() {
                    continue;
                }
                let v = &vms[i];
                let label = if !taken.contains(&names[i]) {
                    names[i].clone()
                } else if suffix {
                    let label = Self::free_label(&names[i], v, &taken);
                    tracing::info!(
                        name = %names[i],
                        target = %v.identity,
                        "another VM has this name: labelled vm=\"{label}\""
                    );
                    label
                } else {
                    continue;
                };
                taken.insert(label.clone());
                self.held
                    .insert(v.identity.clone(), (names[i].clone(), label.clone()));
                out[i] = Some(label);
            }
        }
        out.into_iter().flatten().collect()
    }

    fn free_label(name: &str, v: &LabelRequest<'_>, taken: &BTreeSet<String>) -> String {
        let hash = short_hash(&v.identity);
        let stem = sanitize_label_value(v.stem, MAX_LABEL_VALUE_BYTES / 2);
        let mut ids: Vec<String> = Vec::new();
        if !stem.is_empty() && *stem != *name {
            ids.push(stem.into_owned());
        }
        ids.push(hash.clone());
        // One more than the VMs that could hold a label: the loop always ends.
        ids.extend((2..=taken.len() + 2).map(|n| format!("{hash}-{n}")));
        ids.into_iter()
            .map(|id| suffixed(name, &id))
            .find(|l| !taken.contains(l))
            .expect("more candidate labels than labels taken")
    }
}

/// `NAME@ID`, NAME cut (on a character boundary) so that the whole fits the label limit.
fn suffixed(name: &str, id: &str) -> String {
    let room = MAX_LABEL_VALUE_BYTES.saturating_sub(id.len() + 1);
    let cut = sanitize_label_value(name, room);
    format!("{cut}@{id}")
}

/// Eight hex digits of a stable hash (FNV-1a, 64 bits, folded) of a VM's identity: the same on
/// every host, build and run, unlike std's hasher.
fn short_hash(identity: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in identity.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:08x}", (h >> 32) ^ (h & 0xffff_ffff))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(identity: &str, stem: &'a str, name: &'a str) -> LabelRequest<'a> {
        LabelRequest {
            identity: identity.to_owned(),
            stem,
            name,
        }
    }

    fn distinct(labels: &[String]) {
        let set: BTreeSet<&String> = labels.iter().collect();
        assert_eq!(set.len(), labels.len(), "{labels:?}");
        assert!(labels.iter().all(|l| l.len() <= MAX_LABEL_VALUE_BYTES));
    }

    #[test]
    fn same_names_stems_and_a_name_that_looks_like_a_suffix() {
        let mut l = VmLabels::default();
        let vms = [
            req("/run/a/100.qmp", "100", "dup"),
            req("/run/a/101.qmp", "101", "dup"),
            // A VM named like the label the second one would get.
            req("/run/a/x.qmp", "x", "dup@101"),
            // Same stem in another directory, no name of its own: the stem is its name.
            req("/run/b/101.qmp", "101", "101"),
            req("/run/c/101.qmp", "101", "101"),
            req("libvirt:6d2c", "6d2c", "dup"),
        ];
        let got = l.assign(&vms);
        distinct(&got);
        assert_eq!(got[0], "dup");
        // `dup@101` is the third VM's own name: the second gets the hash of its socket path.
        assert_eq!(got[1], format!("dup@{}", short_hash("/run/a/101.qmp")));
        assert_eq!(got[2], "dup@101");
        assert_eq!(got[3], "101");
        assert_eq!(got[4], format!("101@{}", short_hash("/run/c/101.qmp")));
        assert_eq!(got[5], "dup@6d2c");
        // Stable: the same labels at the next scrape, in any order.
        let mut rev = vms.to_vec();
        rev.reverse();
        let mut again = l.assign(&rev);
        again.reverse();
        assert_eq!(again, got);
    }

    #[test]
    fn labels_survive_other_vms_coming_and_going() {
        let mut l = VmLabels::default();
        let a = req("/run/b.qmp", "b", "dup");
        let b = req("/run/a.qmp", "a", "dup");
        // b starts after a: a keeps the plain name although b sorts first.
        assert_eq!(l.assign(std::slice::from_ref(&a)), ["dup"]);
        assert_eq!(l.assign(&[a.clone(), b.clone()]), ["dup", "dup@a"]);
        // a stops: b keeps its label; a comes back and gets the plain name again.
        assert_eq!(l.assign(std::slice::from_ref(&b)), ["dup@a"]);
        assert_eq!(l.assign(&[b.clone(), a.clone()]), ["dup@a", "dup"]);
        // a renamed: a new label for it; b keeps its own.
        let a2 = req("/run/b.qmp", "b", "web");
        assert_eq!(l.assign(&[b.clone(), a2]), ["dup@a", "web"]);
    }

    #[test]
    fn long_names_that_collide_after_the_cut() {
        let mut l = VmLabels::default();
        let base = "n".repeat(MAX_LABEL_VALUE_BYTES);
        let one = format!("{base}-one");
        let two = format!("{base}-two");
        let vms = [req("/run/1.qmp", "1", &one), req("/run/2.qmp", "2", &two)];
        let got = l.assign(&vms);
        distinct(&got);
        assert_eq!(got[0], base);
        assert_eq!(got[1], format!("{}@2", &base[..MAX_LABEL_VALUE_BYTES - 2]));
        // Multi-byte characters are cut on a boundary.
        let wide = "é".repeat(200);
        let vms = [req("/run/3.qmp", "3", &wide), req("/run/4.qmp", "4", &wide)];
        let got = l.assign(&vms);
        distinct(&got);
        assert!(got[1].ends_with("@4"), "{}", got[1]);
    }

    #[test]
    fn many_vms_of_one_name_and_stem() {
        let mut l = VmLabels::default();
        let ids: Vec<String> = (0..50).map(|i| format!("/run/{i}/vm.qmp")).collect();
        let vms: Vec<LabelRequest<'_>> = ids.iter().map(|i| req(i, "vm", "vm")).collect();
        distinct(&l.assign(&vms));
    }

    #[test]
    fn hash_is_stable() {
        // Fixed for all time: labels derived from it must not change between builds.
        assert_eq!(short_hash("/run/c/101.qmp"), short_hash("/run/c/101.qmp"));
        assert_eq!(short_hash(""), "4fd0bfc1");
    }
}
