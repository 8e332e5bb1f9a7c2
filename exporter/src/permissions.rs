//! What the exporter's privileges cost, said once at start-up rather than as silent gaps.
//!
//! Two families read files of other users' processes:
//! - `kvmio_qemu_process_*_bytes_total` reads `/proc/PID/io` of QEMU, which the kernel shows only
//!   to the process's own user or to `CAP_SYS_PTRACE` (ptrace access mode READ_FSCREDS); libvirt
//!   runs QEMU as `libvirt-qemu`, Proxmox as root.
//! - `kvmio_host_image_{cached,dirty}_bytes` uses `cachestat(2)` (kernel >= 6.5), which since 6.x
//!   answers `EPERM` for a file the caller neither owns nor opened for writing unless it has
//!   `CAP_FOWNER`; and the `mincore(2)` fallback needs the image open for reading.
//!
//! The exporter never asks for these capabilities itself; [`report`] says which families an
//! unprivileged run loses, so an operator can grant them (see `deploy/systemd`) or accept it.

use std::path::Path;

/// Capability numbers (linux/capability.h).
const CAP_FOWNER: u32 = 3;
const CAP_SYS_PTRACE: u32 = 19;

/// The effective capability set of this process, from `<procfs>/self/status` (`CapEff`).
pub fn effective_caps(procfs: &Path) -> Option<u64> {
    let status = std::fs::read_to_string(procfs.join("self/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// One family an unprivileged run loses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub families: &'static str,
    pub why: &'static str,
}

/// What the capability set `caps` costs.
pub fn missing(caps: u64) -> Vec<Missing> {
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    let mut out = Vec::new();
    if !has(CAP_SYS_PTRACE) {
        out.push(Missing {
            families: "kvmio_qemu_process_read_bytes_total, kvmio_qemu_process_written_bytes_total",
            why: "/proc/PID/io of a QEMU run by another user (libvirt-qemu, root) needs \
                  CAP_SYS_PTRACE",
        });
    }
    if !has(CAP_FOWNER) {
        out.push(Missing {
            families: "kvmio_host_image_cached_bytes, kvmio_host_image_dirty_bytes",
            why: "cachestat(2) on an image kvmio's user does not own needs CAP_FOWNER \
                  (kernel >= 6.x), and the mincore fallback read access to the image",
        });
    }
    out
}

/// Logs, once, the families this process's privileges cost for VMs of other users.
pub fn report(procfs: &Path) {
    let Some(caps) = effective_caps(procfs) else {
        tracing::warn!(
            "cannot read {}/self/status: privileges unknown",
            procfs.display()
        );
        return;
    };
    for m in missing(caps) {
        tracing::warn!(
            families = m.families,
            "missing privilege: {}; these families are absent for such VMs",
            m.why
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_what_they_cost() {
        // Lines as in proc(5); a root shell's CapEff.
        let dir = crate::testing::file_tree(&[(
            "self/status",
            b"Name:\tcat\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n",
        )]);
        let caps = effective_caps(dir.path()).unwrap();
        assert!(missing(caps).is_empty());
        assert_eq!(missing(0).len(), 2);
        assert_eq!(missing(1 << CAP_SYS_PTRACE).len(), 1);
    }
}
