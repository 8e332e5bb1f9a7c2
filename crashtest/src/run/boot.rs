//! The guest of one iteration: the lab's kernel and initramfs, booted with the iteration's disk
//! as `vda` under the cell's cache mode, `kvmio-guest` in the writer role.
//!
//! The writer's parameters (run id, payload seed, sync policy, record size) go on the kernel
//! command line, so the guest needs nothing from the disk under test. Booting ends at the
//! guest's READY; then QEMU is asked what it really runs (its version, and the cache flags
//! `query-block` reports once the guest driver has negotiated its write cache), for the report.

use std::path::Path;
use std::time::{Duration, Instant};

use kvmio_guest::writer::WriterParams;
use kvmio_qemu::{CacheFlags, QmpCommands};

use super::{Guest, IterationSeeds, RunError, RunOptions};
use crate::oracle::Cell;
use crate::vm::{Disk, DiskSource, Vm, VmConfig};

/// A booted writer guest, and what QEMU says it runs.
pub(super) struct Booted {
    pub vm: Vm,
    pub boot: Duration,
    /// When the guest said READY.
    pub ready: Instant,
    pub guest_kernel: String,
    pub qemu_version: String,
    pub qmp_cache: Option<CacheFlags>,
}

/// The VM of iteration `index` (its sockets named after it in `sockets`).
pub(super) fn config(
    opts: &RunOptions,
    guest: &Guest,
    index: usize,
    sockets: &Path,
    cell: &Cell,
    seeds: &IterationSeeds,
    disk: DiskSource,
) -> VmConfig {
    let params = WriterParams {
        run_id: seeds.run_id,
        seed: seeds.payload,
        sync: cell.sync_policy(),
        record_size: opts.record_size,
        dev: "/dev/vda".into(),
        records: None,
        ack_early: opts.ack_early,
    };
    let mut config = VmConfig::new(&format!("ct{index}"), guest.image.clone(), sockets);
    config.qemu = opts.qemu.clone();
    config.accel = guest.accel;
    config.memory_mib = opts.memory_mib;
    config.role = "writer".into();
    config.kernel_params = params.kernel_params();
    config.public_sockets = false;
    config.disks = vec![Disk {
        source: disk,
        cache: cell.cache_mode,
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
    let ready = Instant::now();
    // The guest driver is up: the cache flags now include what it negotiated.
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
    Ok(Booted {
        vm,
        boot,
        ready,
        guest_kernel,
        qemu_version,
        qmp_cache,
    })
}
