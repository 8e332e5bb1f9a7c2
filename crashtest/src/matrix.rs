//! `kvmio-crashtest run`: the crash-consistency matrix.
//!
//! Per cell and iteration:
//! 1. a fresh disk image in kvmio's own directory under the image dir (never a file kvmio did
//!    not create);
//! 2. a guest booted with that disk under the cell's cache mode, directly (`kill`) or served by
//!    kvmio's volatile-cache NBD server over a unix socket (`power*`); for qcow2 under power the
//!    NBD export is the qcow2 file itself and QEMU runs its qcow2 driver over it;
//! 3. the guest writer's acks logged as they arrive on the control port;
//! 4. after a seeded random delay, the fault: SIGKILL of QEMU, then for power the NBD server's
//!    power failure (drop-all, subset, subset-torn);
//! 5. verification of the surviving image against the ack log ([`crate::verify`]).
//!
//! Everything random derives from `--seed`, the cell and the iteration number, so a cell can be
//! re-run alone with the same seeds. Cancellation (Ctrl-C) kills and reaps every QEMU, shuts the
//! NBD servers down and removes the temporary files.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmio_guest::protocol::GuestMessage;
use kvmio_guest::record::SplitMix64;
use kvmio_guest::writer::WriterParams;
use kvmio_nbd::{PowerFailReport, Server, ServerHandle, ServerOptions};
use kvmio_qemu::{CacheFlags, QmpCommands};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::guest_image::GuestImage;
use crate::oracle::{Cell, Verdict};
use crate::verify::{self, AckLog, AckLogHeader, AckLogWriter, Verification, VerifyError};
use crate::vm::{Accel, Disk, DiskSource, ImageFormat, Vm, VmConfig, VmError};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub cells: Vec<Cell>,
    pub iterations: u32,
    pub seed: u64,
    pub parallel: usize,
    /// The user's image directory; kvmio creates its own subdirectory in it.
    pub image_dir: PathBuf,
    pub keep_images: bool,
    pub disk_size_mib: u64,
    pub record_size: usize,
    /// The fault comes this long after the first ack: uniform in [min, max], seeded.
    pub window: (Duration, Duration),
    pub qemu: PathBuf,
    pub qemu_img: PathBuf,
    pub accel: Accel,
    pub image: GuestImage,
    pub memory_mib: u32,
    pub ready_timeout: Duration,
    /// Self-test: the NBD server acks FLUSH/FUA without persisting.
    pub lie_about_flush: bool,
    /// Self-test: the writer acks before its durability point.
    pub ack_early: bool,
}

/// How long the writer may take from READY to its first ack.
const FIRST_ACK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("interrupted")]
    Interrupted,
    #[error("image directory {dir} is not usable (must be a writable directory): {source}: pass a writable --image-dir")]
    ImageDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image directory {dir} has {available_mib} MiB free, but this matrix may need {needed_mib} MiB ({detail}): free space, lower --disk-size or --parallel, or pass another --image-dir")]
    NotEnoughSpace {
        dir: PathBuf,
        available_mib: u64,
        needed_mib: u64,
        detail: String,
    },
    #[error("image directory {dir} ran out of space (ENOSPC) during {cell}: free space or pass another --image-dir")]
    NoSpace { dir: PathBuf, cell: String },
    #[error("image directory {dir} does not support O_DIRECT (tmpfs?), which cache=none and cache=directsync need under the kill fault: pass an --image-dir on a disk filesystem")]
    NoDirectIo { dir: PathBuf },
    #[error("{cell}: cannot create the disk image {path}: {detail}")]
    CreateImage {
        cell: String,
        path: PathBuf,
        detail: String,
    },
    #[error(
        "{qemu_img} not found: run deploy/setup.sh (installs qemu-utils) or pass --qemu-img PATH"
    )]
    QemuImgNotFound { qemu_img: PathBuf },
    #[error("{cell}: {source}")]
    Vm {
        cell: String,
        #[source]
        source: VmError,
    },
    #[error("{cell}: the guest writer failed: {message}; last console lines:\n{console}")]
    Writer {
        cell: String,
        message: String,
        console: String,
    },
    #[error("{cell}: {what}; last console lines:\n{console}")]
    Guest {
        cell: String,
        what: String,
        console: String,
    },
    #[error("{cell}: the guest's disk reported an I/O error ({status})")]
    DiskError { cell: String, status: String },
    #[error("{cell}: NBD server: {source}")]
    Nbd {
        cell: String,
        #[source]
        source: kvmio_nbd::Error,
    },
    #[error("{cell}: cannot write the ack log {path}: {source}")]
    AckLog {
        cell: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{cell}: {source}")]
    Verify {
        cell: String,
        #[source]
        source: VerifyError,
    },
}

fn is_enospc(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC)
}

/// Seconds spent in each phase of an iteration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Creating the image (and starting the NBD server).
    pub create: f64,
    /// QEMU start to the guest's READY.
    pub boot: f64,
    /// READY to the first ack.
    pub first_ack: f64,
    /// First ack to the fault (the seeded delay).
    pub window: f64,
    /// SIGKILL, reaping, draining the acks still in flight, and the power failure.
    pub fault: f64,
    /// Reading back and checking the image (qcow2 conversion included).
    pub verify: f64,
    /// All of it, clean-up included.
    pub total: f64,
}

/// What a power failure did, as reported by the NBD server.
#[derive(Debug, Clone, Serialize)]
pub struct PowerFailSummary {
    pub mode: String,
    pub unflushed_writes: u64,
    pub persisted_writes: u64,
    pub torn_writes: u64,
    pub lost_writes: u64,
}

impl From<PowerFailReport> for PowerFailSummary {
    fn from(r: PowerFailReport) -> Self {
        PowerFailSummary {
            mode: r.mode.to_string(),
            unflushed_writes: r.unflushed_writes,
            persisted_writes: r.persisted_writes,
            torn_writes: r.torn_writes,
            lost_writes: r.lost_writes,
        }
    }
}

/// One iteration's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct IterationResult {
    pub cell: Cell,
    pub iteration: u32,
    pub seed: u64,
    pub run_id: u64,
    pub verdict: Verdict,
    pub verification: Verification,
    pub timings: Timings,
    pub fault_delay_ms: u64,
    pub power_fail: Option<PowerFailSummary>,
    /// The power fault's NBD server ignored FLUSH and FUA ([`host_ignores_flush`]).
    pub host_ignores_flush: bool,
    /// `query-block`'s `inserted.cache` once the guest driver is up.
    pub qmp_cache: Option<CacheFlags>,
    pub qemu_version: String,
    pub guest_kernel: String,
    pub kept_image: Option<PathBuf>,
    pub kept_acks: Option<PathBuf>,
}

/// The seeds of one iteration.
#[derive(Debug, Clone, Copy)]
pub struct IterationSeeds {
    pub iteration: u64,
    pub run_id: u64,
    pub payload: u64,
    pub delay: u64,
    pub power: u64,
}

/// FNV-1a: a stable hash of a cell's name, so a cell's seeds do not depend on the matrix.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The seed of a cell: the run's seed and the cell's name.
pub fn cell_seed(seed: u64, cell: &Cell) -> u64 {
    SplitMix64::new(seed ^ fnv1a(&cell.id())).next()
}

impl IterationSeeds {
    pub fn derive(seed: u64, cell: &Cell, iteration: u32) -> IterationSeeds {
        let base = cell_seed(seed, cell);
        let it =
            SplitMix64::new(base ^ u64::from(iteration).wrapping_add(1).rotate_left(29)).next();
        let mut r = SplitMix64::new(it);
        IterationSeeds {
            iteration: it,
            run_id: r.next(),
            payload: r.next(),
            delay: r.next(),
            power: r.next(),
        }
    }

    fn delay_in(&self, (min, max): (Duration, Duration)) -> Duration {
        let span = max.saturating_sub(min).as_millis() as u64;
        min + Duration::from_millis(if span == 0 {
            0
        } else {
            self.delay % (span + 1)
        })
    }
}

/// Whether the power fault's simulated host never makes this cell's writes durable.
///
/// The NBD server stands for the host: its page cache and disk. With an image *file*, QEMU
/// under `cache=unsafe` never calls `fdatasync` (the file driver only flushes "to disk", which
/// unsafe skips). Over NBD, though, QEMU's client implements FLUSH as a flush "to the OS",
/// which `bdrv_co_flush` performs even under unsafe (QEMU's `block/io.c`, `block/nbd.c`): left
/// alone, the NBD server would make unsafe's flushed writes durable, which no file-backed host
/// does. So for unsafe the server ignores FLUSH and FUA, as the host file would. Every other mode
/// reaches `fdatasync` on a file exactly when it sends FLUSH over NBD.
pub fn host_ignores_flush(cell: &Cell) -> bool {
    cell.fault.is_power() && cell.cache_mode == kvmio_qemu::CacheMode::Unsafe
}

/// Extra bytes a qcow2 file served over NBD gets beyond the virtual size, for metadata: the
/// export cannot grow, so the file is made large enough for every cluster up front.
pub fn qcow2_headroom(disk: u64) -> u64 {
    disk / 32 + (4 << 20)
}

/// The parts of a run that decide how much the image directory must hold.
#[derive(Debug, Clone)]
pub struct SpacePlan<'a> {
    pub cells: &'a [Cell],
    pub iterations: u32,
    pub parallel: usize,
    pub keep_images: bool,
    pub disk_size_mib: u64,
}

impl SpacePlan<'_> {
    /// Worst-case bytes the image directory must have free, and how that was counted.
    pub fn needed(&self) -> (u64, String) {
        let disk = self.disk_size_mib << 20;
        let any_qcow2 = self.cells.iter().any(|c| c.format == ImageFormat::Qcow2);
        let image = disk + if any_qcow2 { qcow2_headroom(disk) } else { 0 };
        let scratch = if any_qcow2 { disk } else { 0 };
        let total = self.cells.len() as u64 * u64::from(self.iterations);
        let live = (self.parallel.max(1) as u64).min(total.max(1));
        let mut detail = format!(
            "{live} image(s) of up to {} MiB at once",
            (image + scratch) >> 20
        );
        let mut needed = live * (image + scratch);
        if self.keep_images {
            needed += total * image;
            detail.push_str(&format!(
                " plus {total} kept image(s) of up to {} MiB",
                image >> 20
            ));
        }
        (needed + (1 << 20), detail)
    }
}

/// Checks the image directory before anything is built or booted: it can be created, takes a
/// new directory, has the free space the matrix may need and, if a cell needs it, supports
/// O_DIRECT. Returns kvmio's new (empty) directory inside it.
pub fn preflight(image_dir: &Path, plan: &SpacePlan<'_>) -> Result<tempfile::TempDir, RunError> {
    let dir_err = |source| RunError::ImageDir {
        dir: image_dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(image_dir).map_err(dir_err)?;
    let images = tempfile::Builder::new()
        .prefix("kvmio-crashtest-")
        .tempdir_in(image_dir)
        .map_err(dir_err)?;
    let (needed, detail) = plan.needed();
    let stat =
        nix::sys::statvfs::statvfs(images.path()).map_err(|e| dir_err(std::io::Error::from(e)))?;
    let available = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    if available < needed {
        return Err(RunError::NotEnoughSpace {
            dir: image_dir.to_path_buf(),
            available_mib: available >> 20,
            needed_mib: needed.div_ceil(1 << 20),
            detail,
        });
    }
    let needs_direct = plan
        .cells
        .iter()
        .any(|c| !c.fault.is_power() && c.cache_mode.flags().direct);
    if needs_direct {
        use std::os::unix::fs::OpenOptionsExt;
        let probe = images.path().join(".direct-probe");
        let ok = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe)
            .is_ok();
        let _ = std::fs::remove_file(&probe);
        if !ok {
            return Err(RunError::NoDirectIo {
                dir: image_dir.to_path_buf(),
            });
        }
    }
    Ok(images)
}

/// The directories of a run; removes what is not kept when dropped.
#[derive(Debug)]
struct RunDirs {
    /// kvmio's own directory inside the image dir.
    images: Option<tempfile::TempDir>,
    /// Sockets and console logs (short paths, under the system temporary directory).
    sockets: tempfile::TempDir,
    keep: bool,
}

impl RunDirs {
    fn images(&self) -> &Path {
        self.images.as_ref().expect("images dir").path()
    }
}

impl Drop for RunDirs {
    fn drop(&mut self) {
        if let Some(dir) = self.images.take() {
            if self.keep {
                let _ = dir.keep();
            }
        }
    }
}

struct Ctx {
    opts: RunOptions,
    dirs: RunDirs,
}

/// The result of [`run`]: every finished iteration, and why the run stopped early if it did.
#[derive(Debug)]
pub struct RunOutcome {
    pub results: Vec<IterationResult>,
    pub error: Option<RunError>,
    /// kvmio's directory under the image dir (kept only with `--keep-images`).
    pub images_dir: PathBuf,
}

/// Creates the run's directories (checking the image directory again: time has passed).
fn prepare(opts: &RunOptions) -> Result<RunDirs, RunError> {
    let images = preflight(
        &opts.image_dir,
        &SpacePlan {
            cells: &opts.cells,
            iterations: opts.iterations,
            parallel: opts.parallel,
            keep_images: opts.keep_images,
            disk_size_mib: opts.disk_size_mib,
        },
    )?;
    let sockets = tempfile::Builder::new()
        .prefix("kvmio-ct")
        .tempdir()
        .map_err(|source| RunError::ImageDir {
            dir: std::env::temp_dir(),
            source,
        })?;
    Ok(RunDirs {
        images: Some(images),
        sockets,
        keep: opts.keep_images,
    })
}

/// Runs the matrix: iterations in rounds (every cell once, then again), at most `parallel` at
/// a time. `cancel` turning true stops everything (Ctrl-C). `on_done` sees each result.
pub async fn run(
    opts: RunOptions,
    mut cancel: watch::Receiver<bool>,
    mut on_done: impl FnMut(&IterationResult),
) -> Result<RunOutcome, RunError> {
    let dirs = prepare(&opts)?;
    let images_dir = dirs.images().to_path_buf();
    let parallel = opts.parallel.max(1);
    let mut jobs: VecDeque<(usize, Cell, u32)> = VecDeque::new();
    for iteration in 0..opts.iterations {
        for cell in &opts.cells {
            jobs.push_back((jobs.len(), *cell, iteration));
        }
    }
    let ctx = Arc::new(Ctx { opts, dirs });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    let mut results = Vec::new();
    let mut error = None;
    let mut cancel_open = true;
    loop {
        while set.len() < parallel && error.is_none() {
            let Some((index, cell, iteration)) = jobs.pop_front() else {
                break;
            };
            set.spawn(iteration_task(
                Arc::clone(&ctx),
                index,
                cell,
                iteration,
                stop_rx.clone(),
            ));
        }
        if set.is_empty() {
            break;
        }
        tokio::select! {
            joined = set.join_next() => match joined {
                Some(Ok(Ok(r))) => {
                    on_done(&r);
                    results.push(r);
                }
                Some(Ok(Err(e))) => {
                    if error.is_none() {
                        error = Some(e);
                    }
                    stop_tx.send_replace(true);
                }
                Some(Err(e)) => std::panic::resume_unwind(e.into_panic()),
                None => break,
            },
            changed = cancel.wait_for(|c| *c), if error.is_none() && cancel_open => {
                if changed.is_ok() {
                    error = Some(RunError::Interrupted);
                    stop_tx.send_replace(true);
                } else {
                    // Nobody can cancel any more.
                    cancel_open = false;
                }
            }
        }
    }
    drop(set);
    // Every task has finished: the RunDirs go (kept images stay).
    match Arc::try_unwrap(ctx) {
        Ok(ctx) => drop(ctx),
        Err(_) => unreachable!("all iteration tasks have finished"),
    }
    results.sort_by_key(|r| (r.cell, r.iteration));
    Ok(RunOutcome {
        results,
        error,
        images_dir,
    })
}

/// Files of one iteration; removed when dropped unless kept.
struct IterFiles {
    paths: Vec<PathBuf>,
    keep: bool,
}

impl Drop for IterFiles {
    fn drop(&mut self) {
        if !self.keep {
            for p in &self.paths {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// The NBD server of one iteration; [`NbdGuard::shutdown`] must be awaited on every path
/// (the run awaits it before the task ends).
struct NbdGuard(ServerHandle);

async fn iteration_task(
    ctx: Arc<Ctx>,
    index: usize,
    cell: Cell,
    iteration: u32,
    stop: watch::Receiver<bool>,
) -> Result<IterationResult, RunError> {
    let total = Instant::now();
    let opts = &ctx.opts;
    let label = format!("{} iteration {}", cell.id(), iteration + 1);
    let seeds = IterationSeeds::derive(opts.seed, &cell, iteration);
    let name = format!("{}-i{}", cell.id(), iteration + 1);
    let images = ctx.dirs.images();
    let image_path = images.join(format!("{name}.{}", cell.format));
    let acks_path = images.join(format!("{name}.acks"));
    let console_keep = images.join(format!("{name}.console.log"));
    let mut files = IterFiles {
        paths: Vec::new(),
        keep: opts.keep_images,
    };
    let disk_bytes = opts.disk_size_mib << 20;

    // 1. A fresh image.
    let t = Instant::now();
    files.paths.push(image_path.clone());
    create_image(
        &opts.qemu_img,
        &image_path,
        cell.format,
        disk_bytes,
        cell.fault.is_power(),
        &label,
        images,
    )?;
    let header = AckLogHeader {
        kvmio_ack_log: verify::ACK_LOG_VERSION,
        cell,
        iteration: iteration + 1,
        seed: seeds.iteration,
        run_id: seeds.run_id,
        payload_seed: seeds.payload,
        record_size: opts.record_size,
        disk_size: disk_bytes,
        image: image_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        ack_early: opts.ack_early,
        lie_about_flush: opts.lie_about_flush && cell.fault.is_power(),
    };
    files.paths.push(acks_path.clone());
    let ack_err = |source: std::io::Error| {
        if is_enospc(&source) {
            RunError::NoSpace {
                dir: opts.image_dir.clone(),
                cell: label.clone(),
            }
        } else {
            RunError::AckLog {
                cell: label.clone(),
                path: acks_path.clone(),
                source,
            }
        }
    };
    let ack_log = AckLogWriter::create(&acks_path, &header).map_err(ack_err)?;

    // 2. The disk: directly, or through the volatile-cache NBD server.
    let socket = ctx.dirs.sockets.path().join(format!("n{index}.sock"));
    let host_ignores_flush = host_ignores_flush(&cell);
    let nbd = if cell.fault.is_power() {
        let server = Server::bind(
            &socket,
            &image_path,
            ServerOptions {
                lie_about_flush: opts.lie_about_flush || host_ignores_flush,
                ..ServerOptions::default()
            },
        )
        .map_err(|source| RunError::Nbd {
            cell: label.clone(),
            source,
        })?;
        Some(NbdGuard(server.spawn()))
    } else {
        None
    };
    let source = if nbd.is_some() {
        DiskSource::Nbd {
            socket: socket.clone(),
            format: cell.format,
        }
    } else {
        DiskSource::File {
            path: image_path.clone(),
            format: cell.format,
        }
    };
    let create = t.elapsed();
    let params = WriterParams {
        run_id: seeds.run_id,
        seed: seeds.payload,
        sync: cell.sync_policy(),
        record_size: opts.record_size,
        dev: "/dev/vda".into(),
        records: None,
        ack_early: opts.ack_early,
    };
    let mut config = VmConfig::new(
        &format!("ct{index}"),
        opts.image.clone(),
        ctx.dirs.sockets.path(),
    );
    config.qemu = opts.qemu.clone();
    config.accel = opts.accel;
    config.memory_mib = opts.memory_mib;
    config.role = "writer".into();
    config.kernel_params = params.kernel_params();
    config.public_sockets = false;
    config.disks = vec![Disk {
        source,
        cache: cell.cache_mode,
    }];
    let console_log = config.console_log();
    let delay = seeds.delay_in(opts.window);

    // 3.-4. Boot, acks, fault.
    let mut stop_rx = stop.clone();
    let phase = tokio::select! {
        r = vm_phase(config, ack_log, delay, opts.ready_timeout, &label, &opts.image_dir) => r,
        _ = stop_rx.wait_for(|s| *s) => Err(RunError::Interrupted),
    };
    let mut power_fail = None;
    let mut power_time = Duration::ZERO;
    if let Some(NbdGuard(handle)) = &nbd {
        if phase.is_ok() {
            let t = Instant::now();
            let mode = cell
                .fault
                .power_fail_mode(seeds.power)
                .expect("power faults have a mode");
            power_fail = Some(handle.power_fail(mode).await);
            power_time = t.elapsed();
        }
        if let Err(e) = handle.shutdown().await {
            tracing::warn!("{label}: NBD server shutdown: {e}");
        }
    }
    if opts.keep_images {
        let _ = std::fs::copy(&console_log, &console_keep);
        files.paths.push(console_keep.clone());
    }
    let _ = std::fs::remove_file(&console_log);
    let phase = phase?;
    let power_fail = match power_fail.transpose() {
        Ok(p) => p.map(PowerFailSummary::from),
        Err(kvmio_nbd::Error::Io(e)) if is_enospc(&e) => {
            return Err(RunError::NoSpace {
                dir: opts.image_dir.clone(),
                cell: label,
            })
        }
        Err(source) => {
            return Err(RunError::Nbd {
                cell: label,
                source,
            })
        }
    };
    if *stop.borrow() {
        return Err(RunError::Interrupted);
    }

    // 5. Verify, from the ack log as written (what `verify --acks` reads too).
    let t = Instant::now();
    let verify_err = |source: VerifyError| match source {
        VerifyError::NoSpace { .. } => RunError::NoSpace {
            dir: opts.image_dir.clone(),
            cell: label.clone(),
        },
        source => RunError::Verify {
            cell: label.clone(),
            source,
        },
    };
    let log = AckLog::read(&acks_path).map_err(verify_err)?;
    let verification = verify::verify_image(&image_path, &log, None, &opts.qemu_img, images)
        .map_err(verify_err)?;
    let verify_time = t.elapsed();
    let verdict = verification.verdict(cell.promise().survives);
    let (kept_image, kept_acks) = if opts.keep_images {
        (Some(image_path.clone()), Some(acks_path.clone()))
    } else {
        (None, None)
    };
    drop(files);
    Ok(IterationResult {
        cell,
        iteration: iteration + 1,
        seed: seeds.iteration,
        run_id: seeds.run_id,
        verdict,
        verification,
        timings: Timings {
            create: create.as_secs_f64(),
            boot: phase.boot.as_secs_f64(),
            first_ack: phase.first_ack.as_secs_f64(),
            window: phase.window.as_secs_f64(),
            fault: (phase.fault + power_time).as_secs_f64(),
            verify: verify_time.as_secs_f64(),
            total: total.elapsed().as_secs_f64(),
        },
        fault_delay_ms: delay.as_millis() as u64,
        power_fail,
        host_ignores_flush,
        qmp_cache: phase.qmp_cache,
        qemu_version: phase.qemu_version,
        guest_kernel: phase.guest_kernel,
        kept_image,
        kept_acks,
    })
}

/// Creates a new image; for qcow2 served over NBD the file is grown so every cluster fits.
fn create_image(
    qemu_img: &Path,
    path: &Path,
    format: ImageFormat,
    disk_bytes: u64,
    over_nbd: bool,
    label: &str,
    dir: &Path,
) -> Result<(), RunError> {
    let fail = |detail: String| {
        if detail.contains("No space left") {
            RunError::NoSpace {
                dir: dir.to_path_buf(),
                cell: label.to_string(),
            }
        } else {
            RunError::CreateImage {
                cell: label.to_string(),
                path: path.to_path_buf(),
                detail,
            }
        }
    };
    match format {
        ImageFormat::Raw => {
            let f = std::fs::File::options()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| fail(e.to_string()))?;
            f.set_len(disk_bytes).map_err(|e| fail(e.to_string()))?;
        }
        ImageFormat::Qcow2 => {
            // Reserve the name first: qemu-img would overwrite whatever is there.
            std::fs::File::options()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| fail(e.to_string()))?;
            let out = std::process::Command::new(qemu_img)
                .args(["create", "-q", "-f", "qcow2"])
                .arg(path)
                .arg(disk_bytes.to_string())
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        RunError::QemuImgNotFound {
                            qemu_img: qemu_img.to_path_buf(),
                        }
                    } else {
                        fail(e.to_string())
                    }
                })?;
            if !out.status.success() {
                return Err(fail(
                    String::from_utf8_lossy(&out.stderr).trim().to_string(),
                ));
            }
            if over_nbd {
                let f = std::fs::File::options()
                    .write(true)
                    .open(path)
                    .map_err(|e| fail(e.to_string()))?;
                let len = f.metadata().map_err(|e| fail(e.to_string()))?.len();
                f.set_len(len.max(disk_bytes + qcow2_headroom(disk_bytes)))
                    .map_err(|e| fail(e.to_string()))?;
            }
        }
    }
    Ok(())
}

struct Phase {
    boot: Duration,
    first_ack: Duration,
    window: Duration,
    fault: Duration,
    qmp_cache: Option<CacheFlags>,
    qemu_version: String,
    guest_kernel: String,
}

/// What the host does with one control line.
enum Line {
    Ack,
    Done,
    Other,
}

fn handle_line(
    line: &str,
    log: &mut AckLogWriter,
    label: &str,
    vm: &Vm,
    image_dir: &Path,
) -> Result<Line, RunError> {
    match GuestMessage::parse(line) {
        Some(m @ GuestMessage::Ack { .. }) => {
            log.append(&m)
                .map_err(|source| ack_log_error(label, image_dir, source))?;
            Ok(Line::Ack)
        }
        Some(m @ GuestMessage::Done { .. }) => {
            log.append(&m)
                .map_err(|source| ack_log_error(label, image_dir, source))?;
            Ok(Line::Done)
        }
        Some(GuestMessage::Error { message }) => Err(RunError::Writer {
            cell: label.to_string(),
            message,
            console: vm.console_tail(15),
        }),
        _ => {
            tracing::debug!("{label}: ignored control line {line:?}");
            Ok(Line::Other)
        }
    }
}

fn ack_log_error(label: &str, image_dir: &Path, source: std::io::Error) -> RunError {
    if is_enospc(&source) {
        return RunError::NoSpace {
            dir: image_dir.to_path_buf(),
            cell: label.to_string(),
        };
    }
    RunError::AckLog {
        cell: label.to_string(),
        path: PathBuf::from("(ack log)"),
        source,
    }
}

async fn vm_phase(
    config: VmConfig,
    mut log: AckLogWriter,
    delay: Duration,
    ready_timeout: Duration,
    label: &str,
    image_dir: &Path,
) -> Result<Phase, RunError> {
    let vm_err = |source| RunError::Vm {
        cell: label.to_string(),
        source,
    };
    let t = Instant::now();
    let mut vm = Vm::launch(config).await.map_err(vm_err)?;
    let guest_kernel = vm.wait_ready(ready_timeout).await.map_err(vm_err)?;
    let boot = t.elapsed();

    // The guest driver is up: the cache flags now include what it negotiated.
    let t = Instant::now();
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

    // The first ack starts the write window.
    let guest_gone = |vm: &mut Vm, what: &str| RunError::Guest {
        cell: label.to_string(),
        what: what.to_string(),
        console: vm.console_tail(15),
    };
    let mut done = false;
    let first_deadline = tokio::time::Instant::now() + FIRST_ACK_TIMEOUT;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let line = tokio::select! {
            line = vm.next_control_line() => match line {
                Ok(Some(line)) => line,
                _ => return Err(guest_gone(&mut vm, "QEMU exited before the first ack")),
            },
            _ = tick.tick() => {
                if let Some(e) = disk_error(&mut vm, label, image_dir).await {
                    return Err(e);
                }
                continue;
            }
            _ = tokio::time::sleep_until(first_deadline) => {
                return Err(guest_gone(
                    &mut vm,
                    &format!("no ack from the writer within {FIRST_ACK_TIMEOUT:?}"),
                ));
            }
        };
        match handle_line(&line, &mut log, label, &vm, image_dir)? {
            Line::Ack => break,
            Line::Done => {
                return Err(guest_gone(
                    &mut vm,
                    "the writer finished without writing a record (disk smaller than a record?)",
                ))
            }
            Line::Other => {}
        }
    }
    let first_ack = t.elapsed();

    // The write window: log acks until the seeded delay has passed. A disk error pauses the VM
    // (QEMU's default werror=enospc) or reaches the writer as EIO: either way the iteration says
    // nothing about crash consistency, so the VM's state is checked twice a second.
    let t = Instant::now();
    let deadline = tokio::time::Instant::now() + delay;
    while !done {
        tokio::select! {
            line = vm.next_control_line() => match line {
                Ok(Some(line)) => {
                    if let Line::Done = handle_line(&line, &mut log, label, &vm, image_dir)? {
                        done = true;
                    }
                }
                _ => return Err(guest_gone(&mut vm, "QEMU exited during the write window")),
            },
            _ = tick.tick() => {
                if let Some(e) = disk_error(&mut vm, label, image_dir).await {
                    return Err(e);
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    if let Some(e) = disk_error(&mut vm, label, image_dir).await {
        return Err(e);
    }
    let window = t.elapsed();

    // The fault: SIGKILL, then the acks QEMU had already passed on.
    let t = Instant::now();
    vm.kill();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(5), vm.next_control_line()).await
    {
        handle_line(&line, &mut log, label, &vm, image_dir)?;
    }
    let fault = t.elapsed();
    drop(vm);
    log.finish()
        .map_err(|source| ack_log_error(label, image_dir, source))?;
    Ok(Phase {
        boot,
        first_ack,
        window,
        fault,
        qmp_cache,
        qemu_version,
        guest_kernel,
    })
}

/// `Some` if QEMU paused the VM on a disk error: out of space, or another I/O error.
async fn disk_error(vm: &mut Vm, label: &str, image_dir: &Path) -> Option<RunError> {
    let status = tokio::time::timeout(Duration::from_secs(5), vm.qmp().query_status())
        .await
        .ok()?
        .ok()?;
    if status.status != "io-error" {
        return None;
    }
    let nospace = matches!(
        tokio::time::timeout(Duration::from_secs(5), vm.qmp().query_block()).await,
        Ok(Ok(blocks)) if blocks.iter().any(|b| b.io_status.as_deref() == Some("nospace"))
    );
    Some(if nospace {
        RunError::NoSpace {
            dir: image_dir.to_path_buf(),
            cell: label.to_string(),
        }
    } else {
        RunError::DiskError {
            cell: label.to_string(),
            status: status.status,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmio_guest::writer::SyncPolicy;
    use kvmio_qemu::CacheMode;

    use crate::oracle::Fault;

    fn cell(cache: CacheMode) -> Cell {
        Cell::new(cache, Fault::Power, SyncPolicy::None, ImageFormat::Raw)
    }

    #[test]
    fn seeds_depend_on_seed_cell_and_iteration_only() {
        let a = IterationSeeds::derive(1, &cell(CacheMode::None), 0);
        let b = IterationSeeds::derive(1, &cell(CacheMode::None), 0);
        assert_eq!(a.run_id, b.run_id);
        assert_eq!(a.payload, b.payload);
        for other in [
            IterationSeeds::derive(2, &cell(CacheMode::None), 0),
            IterationSeeds::derive(1, &cell(CacheMode::Unsafe), 0),
            IterationSeeds::derive(1, &cell(CacheMode::None), 1),
        ] {
            assert_ne!(a.run_id, other.run_id);
            assert_ne!(a.payload, other.payload);
        }
    }

    #[test]
    fn delay_stays_in_the_window() {
        let w = (Duration::from_millis(100), Duration::from_millis(400));
        for i in 0..200 {
            let d = IterationSeeds::derive(7, &cell(CacheMode::None), i).delay_in(w);
            assert!(d >= w.0 && d <= w.1, "{d:?}");
        }
        let fixed = (Duration::from_millis(50), Duration::from_millis(50));
        assert_eq!(
            IterationSeeds::derive(7, &cell(CacheMode::None), 3).delay_in(fixed),
            Duration::from_millis(50)
        );
    }
}
