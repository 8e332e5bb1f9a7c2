//! One iteration of one cell: the steps of [`super`] in a row.
//!
//! Every step returns this crate's [`RunError`]; an error whose cause is ENOSPC becomes
//! [`RunError::NoSpace`] here, once, whichever step hit it (the image, the ack log, the NBD
//! server's power failure, the verification's scratch copy, or QEMU pausing the VM).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmio_guest::protocol::HostMessage;
use kvmio_guest::record::RecordSpec;
use kvmio_guest::writer::WriterParams;
use kvmio_qemu::CacheFlags;
use tokio::sync::watch;

use super::ack::Acks;
use super::boot::{self, Booted};
use super::fault::{self, Host, Strike};
use super::image::{self, IterFiles};
use super::plan::RunDirs;
use super::snapshot::{self, GuestCheck, Key, Prepared, Snapshots};
use super::{
    BootPolicy, Guest, IterationResult, IterationSeeds, RunError, RunOptions, Started, Timings,
};
use crate::acklog::{AckLog, AckLogHeader};
use crate::oracle::{Cell, Verdict};
use crate::out_of_space;
use crate::verify;
use crate::vm::VmConfig;

/// What every iteration of a run shares.
pub(super) struct Ctx {
    pub opts: RunOptions,
    pub guest: Guest,
    /// The saved guests (`--boot auto`); before `dirs`, so they go first.
    snapshots: Option<Snapshots>,
    /// The file workloads' filesystem templates, made on first use in `dirs`.
    templates: crate::fsimage::Templates,
    pub dirs: RunDirs,
}

impl Ctx {
    pub fn new(opts: RunOptions, guest: Guest, dirs: RunDirs) -> Result<Ctx, RunError> {
        let snapshots = match opts.boot {
            BootPolicy::Always => None,
            BootPolicy::Auto => {
                Some(
                    Snapshots::create(dirs.images()).map_err(|source| RunError::ImageDir {
                        dir: opts.image_dir.clone(),
                        source,
                    })?,
                )
            }
        };
        Ok(Ctx {
            opts,
            guest,
            snapshots,
            templates: Default::default(),
            dirs,
        })
    }
}

/// Iteration `iteration` (from 0) of `cell`, the `index`th job of the run; `stop` turning true
/// ends it early, with QEMU reaped and its files removed.
pub(super) async fn run(
    ctx: Arc<Ctx>,
    index: usize,
    cell: Cell,
    iteration: u32,
    stop: watch::Receiver<bool>,
) -> Result<IterationResult, RunError> {
    let label = format!("{} iteration {}", cell.id(), iteration + 1);
    steps(&ctx, index, cell, iteration, stop, &label)
        .await
        .map_err(|e| match e {
            // A VM that cannot start is not the image directory's fault.
            RunError::Boot { .. } => e,
            e if out_of_space(&e) => RunError::NoSpace {
                dir: ctx.opts.image_dir.clone(),
                cell: label.clone(),
            },
            e => e,
        })
}

async fn steps(
    ctx: &Ctx,
    index: usize,
    cell: Cell,
    iteration: u32,
    mut stop: watch::Receiver<bool>,
    label: &str,
) -> Result<IterationResult, RunError> {
    let total = Instant::now();
    let opts = &ctx.opts;
    let seeds = IterationSeeds::derive(opts.seed, &cell, iteration);
    let name = format!("{}-i{}", cell.id(), iteration + 1);
    let files = IterFiles::new(ctx.dirs.images(), &name, cell.format, opts.keep_images);
    let disk_bytes = opts.disk_size_mib << 20;

    // A fresh image, its ack log, and the host it lives on.
    let t = Instant::now();
    let socket = ctx.dirs.sockets().join(format!("n{index}.sock"));
    let mut host = Host::mount(cell, opts, &files.image, ctx.dirs.sockets(), index, label)?;
    match cell.workload.fs() {
        None => image::create(
            &opts.qemu_img,
            &host.create_path(),
            cell.format,
            disk_bytes,
            cell.fault.over_nbd(),
            label,
        )?,
        // A file workload's disk holds the filesystem the host made (the guest has no mkfs).
        Some(fs) => ctx
            .templates
            .instantiate(
                &opts.qemu_img,
                ctx.dirs.images(),
                &host.create_path(),
                fs.fs,
                cell,
                disk_bytes,
            )
            .map_err(|source| RunError::FsImage {
                cell: label.to_string(),
                source,
            })?,
    }
    host.serve(opts, socket, label)?;
    let header = ack_log_header(opts, cell, iteration, &seeds, &files.image);
    let acks = Acks::create(&files.acks, &header, label)?;
    let create = t.elapsed();

    // Restore or boot, start, acks, fault; then the power failure, and the NBD server gone on
    // every path.
    let mut config = boot::config(
        opts,
        &ctx.guest,
        &format!("ct{index}"),
        ctx.dirs.sockets(),
        host.disk_source(),
        cell.cache_mode,
    );
    // Host-side only: a saved guest restores under either setting.
    config.discard_unmap = cell.workload.discards();
    let console_log = config.console_log();
    let delay = seeds.delay_in(opts.window);
    let writer = WriterParams {
        run_id: seeds.run_id,
        seed: seeds.payload,
        sync: cell.sync_policy(),
        record_size: opts.record_size,
        dev: "/dev/vda".into(),
        records: None,
        ack_early: opts.ack_early,
        workload: cell.workload,
    };
    let phase = tokio::select! {
        r = guest_phase(ctx, cell, config, writer, acks, Strike { host: &host, delay }, label) => r,
        _ = stop.wait_for(|s| *s) => Err(RunError::Interrupted),
    };
    let (power_fail, power_time) = host.power_fail(phase.is_ok(), seeds.power, label).await;
    files.take_console(&console_log);
    let phase = phase?;
    let power_fail = power_fail?;
    if *stop.borrow() {
        return Err(RunError::Interrupted);
    }

    // Verify, from the ack log as written (what `verify --acks` reads too).
    let t = Instant::now();
    let verify_err = |source| RunError::Verify {
        cell: label.to_string(),
        source,
    };
    let log = AckLog::read(&files.acks).map_err(|source| RunError::ReadAckLog {
        cell: label.to_string(),
        source,
    })?;
    let verification =
        verify::verify_image(&files.image, &log, None, &opts.qemu_img, ctx.dirs.images())
            .map_err(verify_err)?;
    let verify_time = t.elapsed();
    let (kept_image, kept_acks) = files.kept();
    drop(files);
    let verdict = Verdict::of(&cell, phase.qmp_cache, |promised| {
        verification.verdict(promised)
    });
    Ok(IterationResult {
        cell,
        iteration: iteration + 1,
        seed: seeds.iteration,
        run_id: seeds.run_id,
        verdict,
        verification,
        timings: Timings {
            create: create.as_secs_f64(),
            snapshot: phase.snapshot.as_secs_f64(),
            boot: match phase.started {
                Started::Booted => phase.boot.as_secs_f64(),
                Started::Restored => 0.0,
            },
            restore: match phase.started {
                Started::Booted => 0.0,
                Started::Restored => phase.boot.as_secs_f64(),
            },
            first_ack: phase.first_ack.as_secs_f64(),
            window: phase.window.as_secs_f64(),
            fault: (phase.fault + power_time).as_secs_f64(),
            verify: verify_time.as_secs_f64(),
            total: total.elapsed().as_secs_f64(),
        },
        started: phase.started,
        boot_reason: phase.boot_reason,
        guest_check: phase.guest_check,
        fault_delay_ms: delay.as_millis() as u64,
        power_fail,
        qmp_cache: phase.qmp_cache,
        qemu_version: phase.qemu_version,
        guest_kernel: phase.guest_kernel,
        kept_image,
        kept_acks,
    })
}

/// The ack log's first line: everything verification needs to rebuild the expected records.
fn ack_log_header(
    opts: &RunOptions,
    cell: Cell,
    iteration: u32,
    seeds: &IterationSeeds,
    image: &Path,
) -> AckLogHeader {
    let spec = RecordSpec::new(seeds.run_id, seeds.payload, opts.record_size)
        .expect("--record-size was checked");
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    AckLogHeader {
        iteration: iteration + 1,
        seed: seeds.iteration,
        ack_early: opts.ack_early,
        lie_about_flush: opts.lie_about_flush && cell.fault.is_power(),
        ..AckLogHeader::new(cell, &spec, opts.disk_size_mib << 20, &name)
    }
}

/// What the guest phase measured and learnt.
struct Phase {
    snapshot: Duration,
    started: Started,
    boot_reason: Option<String>,
    guest_check: GuestCheck,
    /// QEMU start to READY, or to the restored guest running.
    boot: Duration,
    first_ack: Duration,
    window: Duration,
    fault: Duration,
    qmp_cache: Option<CacheFlags>,
    qemu_version: String,
    guest_kernel: String,
}

/// Restore (or boot), `START` and the writer's `STATE` checked, the first ack, the write
/// window, the SIGKILL; the ack log is complete after it.
async fn guest_phase(
    ctx: &Ctx,
    cell: Cell,
    config: VmConfig,
    writer: WriterParams,
    mut acks: Acks<'_>,
    strike: Strike<'_>,
    label: &str,
) -> Result<Phase, RunError> {
    let opts = &ctx.opts;
    let disk_bytes = opts.disk_size_mib << 20;
    let t = Instant::now();
    let prepared = match &ctx.snapshots {
        Some(s) => Some(
            s.get(
                Key::of(&cell, disk_bytes),
                opts,
                &ctx.guest,
                ctx.dirs.sockets(),
            )
            .await,
        ),
        None => None,
    };
    let snapshot = t.elapsed();
    let (booted, started, boot_reason) = match prepared.as_ref().and_then(|p| p.get()) {
        Some(Prepared::Saved(saved)) => (
            snapshot::restore(config, saved, label).await?,
            Started::Restored,
            None,
        ),
        Some(Prepared::Unavailable(why)) => (
            boot::boot(config, opts.ready_timeout, label).await?,
            Started::Booted,
            Some(why.clone()),
        ),
        None => (
            boot::boot(config, opts.ready_timeout, label).await?,
            Started::Booted,
            None,
        ),
    };
    let Booted {
        mut vm,
        boot,
        guest_kernel,
        qemu_version,
        qmp_cache,
    } = booted;
    let t = Instant::now();
    let sent_ns = snapshot::unix_ns();
    let start = HostMessage::Start {
        writer,
        now_ns: sent_ns,
        entropy: rand::random(),
    };
    let state = acks.start(&mut vm, &start).await?;
    let guest_check =
        snapshot::check_state(&state, &cell, disk_bytes, sent_ns, snapshot::unix_ns()).map_err(
            |what| RunError::Unfaithful {
                cell: label.to_string(),
                what,
            },
        )?;
    acks.first(&mut vm).await?;
    let first_ack = t.elapsed();
    let t = Instant::now();
    acks.window(&mut vm, strike.delay).await?;
    let window = t.elapsed();
    let t = Instant::now();
    fault::crash(&mut vm, strike.host, &mut acks).await?;
    let fault = t.elapsed();
    drop(vm);
    acks.finish()?;
    Ok(Phase {
        snapshot,
        started,
        boot_reason,
        guest_check,
        boot,
        first_ack,
        window,
        fault,
        qmp_cache,
        qemu_version,
        guest_kernel,
    })
}
