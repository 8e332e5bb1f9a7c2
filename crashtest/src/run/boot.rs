//! The guest of one iteration: the lab's kernel and initramfs, booted with the iteration's disk
//! as `vda` under the cell's cache mode, `kvmio-guest` in the writer role.
//!
//! Nothing that varies per iteration is on the kernel command line: the writer's parameters go
//! over the control port once the guest is ready ([`super::ack`]'s `START`), so a booted guest
//! and one restored from a saved state ([`super::snapshot`]) run the same command line and the
//! same protocol. Booting ends at the guest's READY; then QEMU is asked what it really runs
//! ([`qemu_facts`]: its version, and the cache flags `query-block` reports once the guest driver
//! has negotiated its write cache), for the report.

use std::time::{Duration, Instant};

use kvmio_qemu::{CacheFlags, CacheMode, QmpCommands};

use super::{Guest, RunError, RunOptions};
use crate::vm::{Disk, DiskSource, Vm, VmConfig};

/// A booted (or restored) writer guest, and what QEMU says it runs.
pub(super) struct Booted {
    pub vm: Vm,
    /// QEMU start to READY (booted), or to the restored guest running (restored).
    pub boot: Duration,
    pub guest_kernel: String,
    pub qemu_version: String,
    pub qmp_cache: Option<CacheFlags>,
}

/// The VM named `name` (its sockets in `sockets`): the writer role on `disk` under `cache`.
pub(super) fn config(
    opts: &RunOptions,
    guest: &Guest,
    name: &str,
    sockets: &std::path::Path,
    disk: DiskSource,
    cache: CacheMode,
) -> VmConfig {
    let mut config = VmConfig::new(name, guest.image.clone(), sockets);
    config.qemu = opts.qemu.clone();
    config.accel = guest.accel;
    config.memory_mib = opts.memory_mib;
    config.role = "writer".into();
    config.public_sockets = false;
    config.disks = vec![Disk {
        source: disk,
        cache,
    }];
    config
}

/// Starts QEMU and waits for the guest's READY.
pub(super) async fn boot(
    config: VmConfig,
    ready_timeout: Duration,
    cell: &str,
) -> Result<Booted, RunError> {
    let vm_err = |source| RunError::Boot {
        cell: cell.to_string(),
        source,
    };
    let t = Instant::now();
    let mut vm = Vm::launch(config).await.map_err(vm_err)?;
    let guest_kernel = vm.wait_ready(ready_timeout).await.map_err(vm_err)?;
    let boot = t.elapsed();
    let (qemu_version, qmp_cache) = qemu_facts(&mut vm).await;
    Ok(Booted {
        vm,
        boot,
        guest_kernel,
        qemu_version,
        qmp_cache,
    })
}

/// QEMU's version, and the disk's cache flags as `query-block` reports them (the guest driver
/// is up: they include the write cache it negotiated).
pub(super) async fn qemu_facts(vm: &mut Vm) -> (String, Option<CacheFlags>) {
    let qemu_version = {
        let v = &vm.qmp().greeting().version;
        if v.package.trim().is_empty() {
            v.qemu.to_string()
        } else {
            format!("{} ({})", v.qemu, v.package.trim())
        }
    };
    let qmp_cache =
        match tokio::time::timeout(Duration::from_secs(10), vm.qmp().query_block()).await {
            Ok(Ok(blocks)) => blocks
                .iter()
                .find(|b| b.device == "drive-virtio-disk0")
                .and_then(|b| b.inserted.as_ref())
                .and_then(|i| i.cache),
            _ => None,
        };
    (qemu_version, qmp_cache)
}
