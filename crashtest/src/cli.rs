//! `kvmio-crashtest`'s command line: subcommands and their flags, and `run`'s flags turned into
//! [`RunOptions`], checked and with their defaults, in one place. In the library (not the
//! binary) so that the man-page generator (`deploy/mangen`) renders the same definitions.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::accel::AccelChoice;
use crate::oracle::{Cell, Fault, Workload, WorkloadKind};
use crate::run::{BootPolicy, RunOptions};
use crate::vm::ImageFormat;
use clap::{Args, Parser, Subcommand};
use kvmio_guest::writer::SyncPolicy;
use kvmio_qemu::CacheMode;

#[derive(Debug, Parser)]
#[command(
    name = "kvmio-crashtest",
    version,
    about = "Boots small QEMU VMs and measures which acknowledged writes survive a crash under each cache mode"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build or inspect the test guest (kernel + initramfs).
    Guest {
        #[command(subcommand)]
        command: GuestCommand,
    },
    /// Boot N lab VMs with a steady IO workload until interrupted (Ctrl-C).
    Lab(LabArgs),
    /// Run the crash-consistency matrix: boot, write acked records, crash, verify.
    ///
    /// Exit status: 0 no violation, 3 a VIOLATION was found, 1 the run could not complete,
    /// 2 bad usage, 130 interrupted.
    #[command(args_override_self = true)]
    Run(Box<RunArgs>),
    /// Re-verify a kept image against its ack log (from `run --keep-images`).
    ///
    /// Exit status: 0 no violation, 3 VIOLATION, 1 error.
    Verify(VerifyArgs),
    /// Render a run's report.html again from its report.json (e.g. after an upgrade).
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run's output directory: report.json is read there and report.html written beside it.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Cache modes to test.
    #[arg(
        long,
        value_name = "MODES",
        value_delimiter = ',',
        default_value = "none,writeback,writethrough,directsync,unsafe"
    )]
    pub cache: Vec<CacheMode>,
    /// Faults: kill (SIGKILL QEMU; the host survives), power (host power loss under QEMU's file
    /// driver, the image on kvmio's volatile FUSE filesystem: unflushed writes are lost),
    /// power-subset, power-torn; power-nbd, power-nbd-subset, power-nbd-torn (the same with the
    /// disk reached over NBD: measures QEMU's NBD client).
    #[arg(
        long,
        value_name = "FAULTS",
        value_delimiter = ',',
        default_value = "kill,power"
    )]
    pub fault: Vec<Fault>,
    /// Add the torn variants of each whole power fault: power-subset (a seeded random subset of
    /// the unflushed writes survives) and power-torn (the subset is torn at 512-byte sectors),
    /// and their -nbd twins for power-nbd.
    #[arg(long)]
    pub torn: bool,
    /// Writer sync policies: fdatasync (O_DIRECT write, then fdatasync), dsync (O_DIRECT|O_DSYNC),
    /// none (O_DIRECT, no flush).
    #[arg(
        long,
        value_name = "POLICIES",
        value_delimiter = ',',
        default_value = "fdatasync,dsync,none"
    )]
    pub sync: Vec<SyncPolicy>,
    /// Workloads: raw-append (checksummed records appended to the raw disk, each slot once),
    /// raw-overwrite (versioned records rewriting seeded slots in place), raw-discard (the same
    /// with discards and write-zeroes of ranges between them; the disk gets discard=unmap);
    /// files on a guest filesystem: ext4-append, ext4-replace, ext4-overwrite (fsync after
    /// each append / write-temp + fsync + rename + fsync(dir) / in-place write), the same on
    /// ext4 mounted barrier=0 (ext4-nobarrier-*), and xfs-* (xfs needs --disk-size 300).
    #[arg(
        long,
        value_name = "WORKLOADS",
        value_delimiter = ',',
        default_value = "raw-append"
    )]
    pub workload: Vec<Workload>,
    /// Image formats.
    #[arg(
        long,
        value_name = "FORMATS",
        value_delimiter = ',',
        default_value = "raw,qcow2"
    )]
    pub format: Vec<ImageFormat>,
    /// Iterations per cell.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub iterations: u32,
    /// Seed of everything random (payloads, fault delays, torn subsets); default: a random one,
    /// printed and recorded in the report.
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Iterations (VMs) running at once.
    #[arg(long, value_name = "P", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: u32,
    /// Output directory for report.json, report.txt and crashtest.prom.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Keep each iteration's surviving image, ack log and console log (re-check them with
    /// `kvmio-crashtest verify`).
    #[arg(long)]
    pub keep_images: bool,
    /// Where to create the disk images (kvmio makes its own subdirectory there); default:
    /// $TMPDIR if set, else /var/tmp, or OUT/images with --keep-images.
    #[arg(long, value_name = "DIR")]
    pub image_dir: Option<PathBuf>,
    /// Size of each test disk, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1048576))]
    pub disk_size: u64,
    /// Record size in bytes (a multiple of 512).
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    pub record_size: usize,
    /// The fault comes a seeded random time after the first ack, in this range of milliseconds
    /// (MIN..MAX, or one value).
    #[arg(long, value_name = "MIN..MAX", default_value = "100..1000", value_parser = parse_window)]
    pub window_ms: (u64, u64),
    /// How iterations start their guest: auto restores a guest saved once per VM configuration
    /// (write cache, format, disk size) onto each iteration's fresh disk, booting only where no
    /// state could be saved; always boots every iteration (as before; slower, for comparison).
    #[arg(long, value_name = "always|auto", default_value = "auto")]
    pub boot: BootPolicy,
    /// Self-test: the NBD server acknowledges FLUSH and FUA without persisting.
    #[arg(long, hide = true)]
    pub lie_about_flush: bool,
    /// Self-test: the power fault's FUSE host keeps the newest write volatile across each
    /// fsync, as if it had reordered it after the flush.
    #[arg(long, hide = true)]
    pub reorder_flush: bool,
    /// Self-test: the guest writer acks before its durability point.
    #[arg(long, hide = true)]
    pub ack_early: bool,
    #[command(flatten)]
    pub guest: GuestArgs,
    #[command(flatten)]
    pub qemu: QemuArgs,
}

fn parse_window(s: &str) -> Result<(u64, u64), String> {
    let num = |v: &str| {
        v.trim()
            .parse::<u64>()
            .map_err(|_| format!("{v:?} is not a whole number of milliseconds"))
    };
    let (min, max) = match s.split_once("..") {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(s)?, num(s)?),
    };
    if min > max {
        return Err(format!(
            "the window {min}..{max} is empty: MIN must not exceed MAX"
        ));
    }
    Ok((min, max))
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The surviving disk image.
    #[arg(long, value_name = "IMG")]
    pub image: PathBuf,
    /// Its ack log (IMG's name with .acks).
    #[arg(long, value_name = "ACKS")]
    pub acks: PathBuf,
    /// Image format (default: the one recorded in the ack log).
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<ImageFormat>,
    /// qemu-img, to read qcow2 images.
    #[arg(long, value_name = "PATH", default_value = "qemu-img")]
    pub qemu_img: PathBuf,
    /// Where the raw copy of a qcow2 image goes while it is checked (default: $TMPDIR if set,
    /// else /var/tmp).
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// Print the verification as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum GuestCommand {
    /// Build the guest image (cached by content hash; a second call is instant).
    Build(GuestArgs),
}

#[derive(Debug, Args, Clone)]
pub struct GuestArgs {
    /// Guest kernel image (default: the one deploy/setup.sh fetched, else /boot/vmlinuz-$(uname -r)).
    #[arg(long, value_name = "VMLINUZ")]
    pub kernel: Option<PathBuf>,
    /// Modules directory for that kernel (e.g. /lib/modules/$(uname -r)); .ko, .ko.xz and .ko.zst.
    #[arg(long, value_name = "DIR")]
    pub modules: Option<PathBuf>,
    /// The kvmio-guest program to put in the guest (default: $KVMIO_GUEST_BIN, else beside this
    /// binary, else ../lib/kvmio/kvmio-guest from its directory, as the Debian package has it).
    #[arg(long, value_name = "PATH")]
    pub guest_bin: Option<PathBuf>,
    /// Cache directory for kernels and guest images.
    #[arg(long, value_name = "DIR", env = "KVMIO_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct QemuArgs {
    /// QEMU system emulator.
    #[arg(long, value_name = "PATH", default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// qemu-img, to create qcow2 images.
    #[arg(long, value_name = "PATH", default_value = "qemu-img")]
    pub qemu_img: PathBuf,
    /// Accelerator: tcg, kvm, or auto (KVM if a KVM guest actually boots here, else TCG).
    #[arg(long, value_name = "ACCEL", default_value = "auto")]
    pub accel: AccelChoice,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub memory: u32,
    /// How long a guest may take to boot and call back.
    #[arg(long, value_name = "SECONDS", default_value_t = 180)]
    pub ready_timeout: u64,
}

#[derive(Debug, Args)]
pub struct LabArgs {
    /// Number of VMs (lab-1 .. lab-N).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub vms: usize,
    /// Directory for the sockets (lab-K.qmp, lab-K.qga), disk images, console logs and lab.json.
    #[arg(long, value_name = "DIR")]
    pub run_dir: PathBuf,
    /// Cache mode(s), handed to the VMs in turn (e.g. none,unsafe).
    #[arg(
        long,
        value_name = "MODE",
        value_delimiter = ',',
        default_value = "none"
    )]
    pub cache: Vec<CacheMode>,
    /// Size of each of the two disks per VM, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub disk_size: u64,
    #[command(flatten)]
    pub guest: GuestArgs,
    #[command(flatten)]
    pub qemu: QemuArgs,
}

/// `$TMPDIR` if set, else `/var/tmp`: disk-backed by convention, where `/tmp` is often a tmpfs,
/// which cannot take the O_DIRECT that cache=none and directsync need (and holds RAM).
pub fn default_image_dir() -> PathBuf {
    match std::env::var_os("TMPDIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ if Path::new("/var/tmp").is_dir() => PathBuf::from("/var/tmp"),
        _ => std::env::temp_dir(),
    }
}

/// `run`'s options from its command line: checked, with the defaults filled in (`out` is the
/// checked output directory). The guest and the accelerator come later: they take time.
pub fn run_options(args: &RunArgs, out: &Path) -> Result<RunOptions, String> {
    let cells = cells(args)?;
    kvmio_guest::record::RecordSpec::new(0, 0, args.record_size)
        .map_err(|e| format!("--record-size: {e}"))?;
    if (args.disk_size << 20) < args.record_size as u64 {
        return Err("--disk-size is smaller than one record".into());
    }
    for fs in args.workload.iter().filter_map(|w| w.fs()) {
        let min = crate::fsimage::min_disk_mib(fs.fs);
        if args.disk_size < min {
            return Err(format!(
                "--disk-size {} is too small for workload {fs}: {} needs at least {min} MiB",
                args.disk_size,
                fs.fs.as_str()
            ));
        }
    }
    let image_dir = match &args.image_dir {
        Some(d) => d.clone(),
        None if args.keep_images => out.join("images"),
        None => default_image_dir(),
    };
    Ok(RunOptions {
        cells,
        iterations: args.iterations,
        seed: args.seed.unwrap_or_else(rand::random),
        parallel: args.parallel as usize,
        image_dir,
        keep_images: args.keep_images,
        disk_size_mib: args.disk_size,
        record_size: args.record_size,
        window: (
            Duration::from_millis(args.window_ms.0),
            Duration::from_millis(args.window_ms.1),
        ),
        qemu: args.qemu.qemu.clone(),
        qemu_img: args.qemu.qemu_img.clone(),
        memory_mib: args.qemu.memory,
        ready_timeout: Duration::from_secs(args.qemu.ready_timeout),
        lie_about_flush: args.lie_about_flush,
        reorder_flush: args.reorder_flush,
        ack_early: args.ack_early,
        boot: args.boot,
    })
}

/// The cells of the matrix, in a stable order, without duplicates.
fn cells(args: &RunArgs) -> Result<Vec<Cell>, String> {
    let mut faults: Vec<Fault> = Vec::new();
    for f in &args.fault {
        if !faults.contains(f) {
            faults.push(*f);
        }
    }
    if args.torn {
        if faults.iter().all(|f| f.torn_variants().is_empty()) {
            return Err(
                "--torn adds variants of the power fault: add power or power-nbd to --fault".into(),
            );
        }
        let torn: Vec<Fault> = faults
            .iter()
            .flat_map(|f| f.torn_variants())
            .copied()
            .collect();
        for f in torn {
            if !faults.contains(&f) {
                faults.push(f);
            }
        }
    }
    let mut out = Vec::new();
    for &cache in &args.cache {
        for &fault in &faults {
            for &sync in &args.sync {
                for &format in &args.format {
                    for &workload in &args.workload {
                        // A file workload's durability point is the application's fsync, not
                        // --sync: its cells say fdatasync, once.
                        let sync = match workload.kind() {
                            WorkloadKind::Raw => sync,
                            WorkloadKind::Filesystem => SyncPolicy::Fdatasync,
                        };
                        let cell = Cell::new(cache, fault, sync, format).with_workload(workload);
                        if !out.contains(&cell) {
                            out.push(cell);
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> RunArgs {
        let argv = ["kvmio-crashtest", "run", "--out", "/nonexistent-out"]
            .iter()
            .chain(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(a) => *a,
            _ => unreachable!("a run command"),
        }
    }

    /// A file workload's durability point is its fsync: `--sync` does not multiply its cells,
    /// and a disk too small for its filesystem is refused before anything starts.
    #[test]
    fn file_workloads_take_one_sync_and_a_disk_their_filesystem_fits_on() {
        let out = Path::new("/nonexistent-out");
        let a = run_args(&[
            "--workload=raw-append,ext4-append",
            "--cache=none",
            "--sync=fdatasync,none",
            "--fault=power",
            "--format=raw",
            "--disk-size=32",
        ]);
        let cells = run_options(&a, out).unwrap().cells;
        let fs: Vec<&Cell> = cells.iter().filter(|c| c.workload.fs().is_some()).collect();
        assert_eq!(cells.len(), 3, "{cells:?}");
        assert_eq!(fs.len(), 1);
        assert_eq!(fs[0].sync_policy(), SyncPolicy::Fdatasync);
        let e =
            run_options(&run_args(&["--workload=xfs-append", "--disk-size=64"]), out).unwrap_err();
        assert!(e.contains("needs at least 300 MiB"), "{e}");
        assert!(run_options(
            &run_args(&["--workload=ext4-replace", "--disk-size=16"]),
            out
        )
        .is_ok());
    }
}
