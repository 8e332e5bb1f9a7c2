//! What a VM of the fleet is: sockets (a QMP monitor and an agent, found by discovery) or a
//! libvirt domain; the key its state is kept under between scrapes; what tells two VMs of the
//! same name apart; and where it came from (`kvmio_vm_info{source}`).

use std::path::PathBuf;

use super::libvirt::DomainTarget;
use crate::config::{Config, Layout};
use crate::discovery::Target;

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

    /// What tells two VMs of the same name apart: the socket's stem, the domain's UUID.
    pub(super) fn stem(&self) -> &str {
        match self {
            VmTarget::Socket(t) => &t.stem,
            VmTarget::Libvirt(d) => &d.uuid,
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
