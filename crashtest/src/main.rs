//! `kvmio-crashtest`: the lab and the crash-consistency tester.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use kvmio_crashtest::accel::{self, AccelChoice};
use kvmio_crashtest::guest_image::{self, GuestImage, GuestInputs};
use kvmio_crashtest::kernel::GuestKernel;
use kvmio_crashtest::lab::{Lab, LabOptions};
use kvmio_crashtest::paths;
use kvmio_qemu::CacheMode;

#[derive(Debug, Parser)]
#[command(
    name = "kvmio-crashtest",
    version,
    about = "Boots small QEMU VMs and measures which acknowledged writes survive a crash under each cache mode"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build or inspect the test guest (kernel + initramfs).
    Guest {
        #[command(subcommand)]
        command: GuestCommand,
    },
    /// Boot N lab VMs with a steady IO workload until interrupted (Ctrl-C).
    Lab(LabArgs),
}

#[derive(Debug, Subcommand)]
enum GuestCommand {
    /// Build the guest image (cached by content hash; a second call is instant).
    Build(GuestArgs),
}

#[derive(Debug, Args, Clone)]
struct GuestArgs {
    /// Guest kernel image (default: the one deploy/setup.sh fetched, else /boot/vmlinuz-$(uname -r)).
    #[arg(long, value_name = "VMLINUZ")]
    kernel: Option<PathBuf>,
    /// Modules directory for that kernel (e.g. /lib/modules/$(uname -r)); .ko, .ko.xz and .ko.zst.
    #[arg(long, value_name = "DIR")]
    modules: Option<PathBuf>,
    /// The kvmio-guest program to put in the guest (default: beside this binary).
    #[arg(long, value_name = "PATH")]
    guest_bin: Option<PathBuf>,
    /// Cache directory for kernels and guest images.
    #[arg(long, value_name = "DIR", env = "KVMIO_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
struct QemuArgs {
    /// QEMU system emulator.
    #[arg(long, value_name = "PATH", default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// qemu-img, to create qcow2 images.
    #[arg(long, value_name = "PATH", default_value = "qemu-img")]
    qemu_img: PathBuf,
    /// Accelerator: tcg, kvm, or auto (KVM if a KVM guest actually boots here, else TCG).
    #[arg(long, value_name = "ACCEL", default_value = "auto")]
    accel: AccelChoice,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    memory: u32,
    /// How long a guest may take to boot and call back.
    #[arg(long, value_name = "SECONDS", default_value_t = 180)]
    ready_timeout: u64,
}

#[derive(Debug, Args)]
struct LabArgs {
    /// Number of VMs (lab-1 .. lab-N).
    #[arg(long, value_name = "N", default_value_t = 2)]
    vms: usize,
    /// Directory for the sockets (lab-K.qmp, lab-K.qga), disk images, console logs and lab.json.
    #[arg(long, value_name = "DIR")]
    run_dir: PathBuf,
    /// Cache mode(s), handed to the VMs in turn (e.g. none,unsafe).
    #[arg(
        long,
        value_name = "MODE",
        value_delimiter = ',',
        default_value = "none"
    )]
    cache: Vec<CacheMode>,
    /// Size of each of the two disks per VM, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    disk_size: u64,
    #[command(flatten)]
    guest: GuestArgs,
    #[command(flatten)]
    qemu: QemuArgs,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KVMIO_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kvmio-crashtest: error: {}", chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

async fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command {
        Command::Guest {
            command: GuestCommand::Build(args),
        } => {
            let start = Instant::now();
            let image = build_guest(&args)?;
            println!(
                "{} guest image {} in {:.2}s\n  kernel:    {}\n  initramfs: {}",
                if image.built { "built" } else { "cached" },
                &image.id[..16],
                start.elapsed().as_secs_f64(),
                image.vmlinuz.display(),
                image.initramfs.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Lab(args) => lab(args).await,
    }
}

fn build_guest(args: &GuestArgs) -> Result<GuestImage, Box<dyn std::error::Error>> {
    let kernel = GuestKernel::locate(args.kernel.as_deref(), args.modules.as_deref())?;
    let inputs = GuestInputs::discover(kernel, args.guest_bin.as_deref())?;
    let cache = args.cache_dir.clone().unwrap_or_else(paths::cache_dir);
    Ok(guest_image::build(&inputs, &cache)?)
}

/// Fails fast, before any guest is built or booted, when a program is missing.
fn require_program(program: &Path, flag: &str, package: &str) -> Result<(), String> {
    let found = if program.components().count() > 1 {
        program.is_file()
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
            .unwrap_or(false)
    };
    if found {
        Ok(())
    } else {
        Err(format!(
            "{} not found: run deploy/setup.sh (installs {package}) or pass {flag} PATH",
            program.display()
        ))
    }
}

async fn lab(args: LabArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if args.vms == 0 {
        return Err("--vms must be at least 1".into());
    }
    // Check the run dir before the (slower) guest build, so a typo fails at once.
    std::fs::create_dir_all(&args.run_dir)
        .and_then(|_| tempfile::tempfile_in(&args.run_dir).map(drop))
        .map_err(|e| {
            format!(
                "run directory {} is not usable (must be a writable directory): {e}: pass a writable --run-dir",
                args.run_dir.display()
            )
        })?;
    let run_dir = std::fs::canonicalize(&args.run_dir)?;
    require_program(&args.qemu.qemu, "--qemu", "qemu-system-x86")?;
    require_program(&args.qemu.qemu_img, "--qemu-img", "qemu-utils")?;
    let image = build_guest(&args.guest)?;
    let cache = args
        .guest
        .cache_dir
        .clone()
        .unwrap_or_else(paths::cache_dir);
    let (accel, why) = accel::resolve(args.qemu.accel, &args.qemu.qemu, &image, &cache).await?;
    eprintln!(
        "kvmio-crashtest: booting {} VM(s) under {} ({why})",
        args.vms,
        accel.as_str()
    );
    let start = Instant::now();
    let mut lab = Lab::start(LabOptions {
        vms: args.vms,
        run_dir: run_dir.clone(),
        caches: args.cache.clone(),
        accel,
        qemu: args.qemu.qemu.clone(),
        qemu_img: args.qemu.qemu_img.clone(),
        image,
        memory_mib: args.qemu.memory,
        disk_size_mib: args.disk_size,
        ready_timeout: Duration::from_secs(args.qemu.ready_timeout),
    })
    .await?;
    println!(
        "lab ready: {} VM(s) in {:.1}s, accel {}",
        lab.manifest().vms.len(),
        start.elapsed().as_secs_f64(),
        lab.manifest().accel
    );
    for vm in &lab.manifest().vms {
        println!(
            "  {:<8} cache={:<12} qmp={}  qga={}  console={}",
            vm.name,
            vm.cache.as_str(),
            vm.qmp.display(),
            vm.qga.display(),
            vm.console.display()
        );
    }
    println!("  manifest: {}", run_dir.join("lab.json").display());
    println!("Ctrl-C to stop.");

    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let code = loop {
        tokio::select! {
            _ = sigint.recv() => break ExitCode::SUCCESS,
            _ = sigterm.recv() => break ExitCode::SUCCESS,
            _ = tick.tick() => {
                for (name, status, console) in lab.reap_exited() {
                    eprintln!("kvmio-crashtest: {name}: QEMU exited ({status}); last console lines:\n{console}");
                }
                if lab.running() == 0 {
                    eprintln!("kvmio-crashtest: every lab VM has exited");
                    break ExitCode::FAILURE;
                }
            }
        }
    };
    eprintln!("kvmio-crashtest: stopping the lab");
    lab.stop().await;
    Ok(code)
}
