//! `kvmio-claims`: the seed article's performance claims measured (see the library's docs and
//! docs/seed-claims.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kvmio_claims::experiment::{self, Options};
use kvmio_claims::plan::{Plan, Preset};
use kvmio_claims::results;
use kvmio_claims::summary::RunInfo;
use kvmio_crashtest::accel::AccelChoice;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Measure the seed article's storage claims with kvmio's own layers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot test VMs, run the workloads, write results.csv/json, SVG plots and summary.md.
    Run(RunArgs),
    /// Redraw the plots and summary.md from an earlier results.json (no VM).
    Plot {
        /// results.json of an earlier run.
        #[arg(long)]
        from: PathBuf,
        /// Where to write the plots and summary.md.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// How much to run: `full` (every cache mode the claims name, layout, scheduler and
    /// workload) or `smoke` (two boots, for tests).
    #[arg(long, value_enum, default_value = "full")]
    preset: Preset,
    /// Results, plots and summary.md.
    #[arg(long)]
    out: PathBuf,
    /// Sockets, logs and the loop-device image store.
    #[arg(long, default_value = "/tmp/kvmio-claims")]
    run_dir: PathBuf,
    /// The kvmio-exporter binary that reads the layers.
    #[arg(long, default_value = "kvmio-exporter")]
    exporter: PathBuf,
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    #[arg(long, default_value = "qemu-img")]
    qemu_img: PathBuf,
    #[arg(long, default_value = "qemu-io")]
    qemu_io: PathBuf,
    /// tcg, kvm or auto (auto probes whether a KVM guest really boots).
    #[arg(long, default_value = "auto")]
    accel: AccelChoice,
    /// The guest program to put in the guest image (default: next to this binary).
    #[arg(long)]
    guest_bin: Option<PathBuf>,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// Seed of the fragmented layout and the random workloads.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds a guest gets to boot.
    #[arg(long, default_value_t = 180)]
    ready_timeout: u64,
}

/// The first of SIGINT and SIGTERM.
async fn terminated() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => {
            let opts = Options {
                plan: Plan::preset(a.preset, a.seed),
                out: a.out,
                run_dir: a.run_dir,
                exporter: a.exporter,
                qemu: a.qemu,
                qemu_img: a.qemu_img,
                qemu_io: a.qemu_io,
                accel: a.accel,
                guest_bin: a.guest_bin,
                memory_mib: a.memory,
                ready_timeout: Duration::from_secs(a.ready_timeout),
                command: std::env::args().collect::<Vec<_>>().join(" "),
            };
            // On SIGINT or SIGTERM the run is dropped: its VMs are killed and reaped, the
            // exporter stopped, the image store unmounted and its loop device detached.
            let mut say = |line: String| eprintln!("kvmio-claims: {line}");
            tokio::select! {
                r = experiment::run(&opts, &mut say) => r.map(|rows| {
                    eprintln!("kvmio-claims: {} rows in {}", rows.len(), opts.out.display())
                }),
                signal = terminated() => Err(anyhow::anyhow!("stopped by {signal}")),
            }
        }
        Command::Plot { from, out } => (|| {
            let rows = results::read(&from)?;
            std::fs::create_dir_all(&out)?;
            // The run's own header when its run.json is beside the results.
            let run_json = from.with_file_name("run.json");
            let info = std::fs::read(&run_json)
                .ok()
                .and_then(|b| serde_json::from_slice::<RunInfo>(&b).ok())
                .unwrap_or_else(|| RunInfo {
                    command: format!("kvmio-claims plot --from {}", from.display()),
                    accel: "(unknown)".into(),
                    guest_kernel: String::new(),
                    qemu_version: String::new(),
                    host_kernel: String::new(),
                    seconds: 0.0,
                    notes: Vec::new(),
                });
            experiment::render(&out, &info, &rows)
        })(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvmio-claims: {e:#}");
            ExitCode::FAILURE
        }
    }
}
