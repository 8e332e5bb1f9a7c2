//! `kvmio-claims run`: the whole experiment, from the guest image to the summary.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use kvmio_crashtest::accel::{self, AccelChoice};
use kvmio_crashtest::guest_image::{self, GuestInputs};
use kvmio_crashtest::kernel::GuestKernel;
use kvmio_crashtest::paths;
use kvmio_crashtest::vm::VmConfig;

use crate::exporter::Exporter;
use crate::figures;
use crate::plan::Plan;
use crate::plots;
use crate::results::{self, Row};
use crate::session::{self, Env};
use crate::store::Store;
use crate::summary::{self, RunInfo};

/// What `run` needs besides the plan.
#[derive(Debug, Clone)]
pub struct Options {
    pub plan: Plan,
    /// Results, plots and summary go here.
    pub out: PathBuf,
    /// Sockets, logs and the image store (a loop device) go here.
    pub run_dir: PathBuf,
    pub exporter: PathBuf,
    pub qemu: PathBuf,
    pub qemu_img: PathBuf,
    pub qemu_io: PathBuf,
    pub accel: AccelChoice,
    pub guest_bin: Option<PathBuf>,
    pub memory_mib: u32,
    pub ready_timeout: Duration,
    /// The command line, for the summary.
    pub command: String,
}

fn first_line(program: &Path, arg: &str) -> String {
    std::process::Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// Runs the plan; writes `results.csv`, `results.json`, one SVG per table and `summary.md` into
/// `opts.out`. Returns the rows.
pub async fn run(opts: &Options, say: &mut dyn FnMut(String)) -> anyhow::Result<Vec<Row>> {
    let start = Instant::now();
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    std::fs::create_dir_all(&opts.run_dir)
        .with_context(|| format!("cannot create {}", opts.run_dir.display()))?;
    let run_dir = std::fs::canonicalize(&opts.run_dir)?;
    let kernel = GuestKernel::locate(None, None)?;
    let inputs = GuestInputs::discover(kernel, opts.guest_bin.as_deref())?;
    let cache = paths::cache_dir();
    let image = guest_image::build(&inputs, &cache)?;
    let (accel, why) = accel::resolve(opts.accel, &opts.qemu, &image, &cache).await?;
    say(format!("accel {} ({why})", accel.as_str()));

    let plan = &opts.plan;
    // One image at a time, plus room for ext4 and qcow2 metadata.
    let store = Store::create(&run_dir, plan.disk_mib * 2 + 256)
        .context("cannot make the image store (a loop device with ext4: needs root)")?;
    say(format!(
        "images on {} ({})",
        store.dir().display(),
        store.device_name()
    ));
    let exporter = Exporter::start(&opts.exporter, &run_dir)?;
    let env = Env {
        qemu_img: opts.qemu_img.clone(),
        qemu_io: opts.qemu_io.clone(),
        run_dir: run_dir.clone(),
        image_dir: store.dir().to_path_buf(),
        host_device: store.device_name().to_string(),
        ready_timeout: opts.ready_timeout,
        phase_timeout: Duration::from_secs(600),
    };
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut guest_kernel = String::new();
    for (i, setup) in plan.setups.iter().enumerate() {
        let (cache_mode, layout) = (setup.cache, setup.layout);
        say(format!(
            "boot {}/{}: cache={cache_mode} layout={layout} schedulers {}",
            i + 1,
            plan.setups.len(),
            setup.schedulers.join(",")
        ));
        let mut config = VmConfig::new(&session::vm_name(i), image.clone(), &run_dir);
        config.qemu = opts.qemu.clone();
        config.accel = accel;
        config.memory_mib = opts.memory_mib;
        let outcome = session::run_setup(plan, &env, config, &exporter, setup, &mut notes, say)
            .await
            .with_context(|| format!("setup cache={cache_mode} layout={layout}"))?;
        guest_kernel = outcome.guest_kernel;
        rows.extend(outcome.rows);
    }
    drop(exporter);
    drop(store);

    results::write(&opts.out, &rows)?;
    let info = RunInfo {
        command: opts.command.clone(),
        accel: accel.as_str().to_string(),
        guest_kernel,
        qemu_version: first_line(&opts.qemu, "--version"),
        host_kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        seconds: start.elapsed().as_secs_f64(),
        notes,
    };
    let run_json = opts.out.join("run.json");
    std::fs::write(
        &run_json,
        serde_json::to_vec_pretty(&info).expect("run info serialises"),
    )
    .with_context(|| format!("cannot write {}", run_json.display()))?;
    render(&opts.out, &info, &rows)?;
    Ok(rows)
}

/// Writes the plots and `summary.md` for `rows` into `out`.
pub fn render(out: &Path, info: &RunInfo, rows: &[Row]) -> anyhow::Result<()> {
    let tables = figures::tables(rows);
    for t in &tables {
        plots::draw(out, t)?;
    }
    let md = summary::render(info, &tables);
    let path = out.join("summary.md");
    std::fs::write(&path, md).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
