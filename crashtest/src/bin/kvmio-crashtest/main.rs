//! `kvmio-crashtest`: the lab and the crash-consistency tester.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use kvmio_crashtest::accel;
use kvmio_crashtest::acklog::AckLog;
use kvmio_crashtest::guest_image::{self, GuestImage, GuestInputs};
use kvmio_crashtest::kernel::GuestKernel;
use kvmio_crashtest::lab::{Lab, LabOptions};
use kvmio_crashtest::one_line;
use kvmio_crashtest::oracle::Verdict;
use kvmio_crashtest::paths;
use kvmio_crashtest::report::{Report, RunInfo};
use kvmio_crashtest::run::{self, Guest, RunError};
use kvmio_crashtest::verify;
use kvmio_crashtest::vm::VmError;

use kvmio_crashtest::cli::{
    default_image_dir, run_options, Cli, Command, GuestArgs, GuestCommand, LabArgs, RunArgs,
    VerifyArgs,
};

/// Exit status when a VIOLATION was found (errors exit 1, usage errors 2, Ctrl-C 130).
const EXIT_VIOLATION: u8 = 3;
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KVMIO_LOG")
                // The NBD server's warnings (a flush failing on a full disk, a client gone)
                // reach the user as the run's own one-line errors.
                .unwrap_or_else(|_| "warn,kvmio_nbd=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kvmio-crashtest: error: {}", one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// The failing steps of the binary itself (the library's errors say theirs).
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("output directory {dir} is not usable (must be a writable directory): pass a writable --out")]
    OutDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the report into {dir}: pass a writable --out")]
    Report {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Creates `dir` if needed and checks that it takes files.
fn writable_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir).and_then(|_| tempfile::tempfile_in(dir).map(drop))
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
        Command::Run(args) => run_matrix(*args).await,
        Command::Verify(args) => verify_cmd(args),
        Command::Report(args) => {
            let page = kvmio_crashtest::report::html::rerender(&args.out)?;
            println!("report: {}", page.display());
            Ok(ExitCode::SUCCESS)
        }
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
    writable_dir(&args.run_dir).map_err(|source| VmError::RunDir {
        dir: args.run_dir.clone(),
        source,
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

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

async fn run_matrix(args: RunArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    writable_dir(&args.out).map_err(|source| CliError::OutDir {
        dir: args.out.clone(),
        source,
    })?;
    let out = std::fs::canonicalize(&args.out)?;
    let opts = run_options(&args, &out)?;
    // The image dir before the (slower) guest build, so a typo or a full disk fails at once.
    drop(run::preflight(&opts)?);
    require_program(&opts.qemu, "--qemu", "qemu-system-x86")?;
    require_program(&opts.qemu_img, "--qemu-img", "qemu-utils")?;
    let image = build_guest(&args.guest)?;
    let cache_dir = args
        .guest
        .cache_dir
        .clone()
        .unwrap_or_else(paths::cache_dir);
    let (accel, why) = accel::resolve(args.qemu.accel, &opts.qemu, &image, &cache_dir).await?;
    let total = opts.cells.len() as u64 * u64::from(opts.iterations);
    eprintln!(
        "kvmio-crashtest: {} cell(s) x {} iteration(s) under {} ({why}), {} at a time, seed {}",
        opts.cells.len(),
        opts.iterations,
        accel.as_str(),
        opts.parallel,
        opts.seed
    );

    // Ctrl-C / SIGTERM: stop every iteration in order (QEMU reaped, NBD servers shut down).
    use tokio::signal::unix::{signal, SignalKind};
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
        cancel_tx.send_replace(true);
        // Keep the sender: the run must see the cancellation, not a closed channel.
        std::future::pending::<()>().await;
    });

    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} iterations, eta {eta}  {msg}",
        )
        .expect("progress template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let started = unix_now();
    let guest = Guest { accel, image };
    let mut violations_seen = 0u64;
    let outcome = run::run(opts.clone(), guest, cancel_rx, |r| {
        bar.inc(1);
        bar.set_message(format!("{} #{}: {}", r.cell.id(), r.iteration, r.verdict));
        if r.verdict == Verdict::Violation {
            violations_seen += 1;
            bar.println(format!(
                "VIOLATION {} iteration {}: acked {}, survived {}, lost {}, corrupted {}",
                r.cell.id(),
                r.iteration,
                r.verification.acked,
                r.verification.survived,
                r.verification.lost,
                r.verification.corrupted()
            ));
        }
    })
    .await;
    bar.finish_and_clear();
    let outcome = outcome?;
    let interrupted = matches!(outcome.error, Some(RunError::Interrupted));
    let error_text = outcome.error.as_ref().map(|e| one_line(e));
    let info = RunInfo::new(&opts, accel, started, unix_now());
    let kept = opts.keep_images.then(|| outcome.images_dir.clone());
    let report = Report::build(info, &outcome.results, error_text, kept.clone());
    report.write(&out).map_err(|source| CliError::Report {
        dir: out.clone(),
        source,
    })?;
    if !outcome.results.is_empty() {
        print!("{}", report.table());
    }
    if let Some(dir) = &kept {
        println!("kept images and ack logs: {}", dir.display());
    }
    println!(
        "report: {}",
        out.join(if report.complete {
            "report.json, report.txt, crashtest.prom"
        } else {
            "report.json, report.txt (incomplete run: no crashtest.prom)"
        })
        .display()
    );
    if interrupted {
        eprintln!(
            "kvmio-crashtest: interrupted after {} of {total} iterations; every VM was stopped{}",
            outcome.results.len(),
            if opts.keep_images {
                ""
            } else {
                " and the temporary files removed"
            }
        );
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    if let Some(e) = outcome.error {
        return Err(e.into());
    }
    if report.violations > 0 {
        eprintln!(
            "kvmio-crashtest: {} VIOLATION(s): acknowledged writes lost or corrupted where the cache mode promised survival (details in report.txt)",
            report.violations
        );
        return Ok(ExitCode::from(EXIT_VIOLATION));
    }
    Ok(ExitCode::SUCCESS)
}

fn verify_cmd(args: VerifyArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let log = AckLog::read(&args.acks)?;
    if !args.image.is_file() {
        return Err(format!(
            "{} is not a file: pass the image with --image",
            args.image.display()
        )
        .into());
    }
    let scratch = args.scratch_dir.clone().unwrap_or_else(default_image_dir);
    let v = verify::verify_image(&args.image, &log, args.format, &args.qemu_img, &scratch)?;
    let cell = log.header.cell;
    let promise = cell.promise();
    let verdict = v.verdict(promise.survives);
    if args.json {
        let j = serde_json::json!({
            "cell": cell,
            "iteration": log.header.iteration,
            "promised": promise.survives,
            "promise": promise.reason,
            "verdict": verdict,
            "verification": v,
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        println!(
            "{} iteration {}: acked {}, survived {}, lost {}, corrupted {} (unacked present {}, torn {}); promised: {}",
            cell.id(),
            log.header.iteration,
            v.acked,
            v.survived,
            v.lost,
            v.corrupted(),
            v.unacked_present,
            v.unacked_torn,
            if promise.survives { "yes" } else { "no" }
        );
        for p in &v.problems {
            println!("  {p}");
        }
        if let Some(check) = &v.image_check {
            println!("  qemu-img check: {check}");
        }
        println!(
            "verdict: {verdict}  ({} MB read in {:.3} s)",
            v.bytes_read / 1_000_000,
            v.seconds
        );
    }
    Ok(if verdict == Verdict::Violation {
        ExitCode::from(EXIT_VIOLATION)
    } else {
        ExitCode::SUCCESS
    })
}
