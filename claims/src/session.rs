//! One boot of the experiment: a VM with one disk of the setup's layout under its cache mode,
//! every scheduler × workload run in it, each phase measured through the exporter.
//!
//! A phase: switch the guest's scheduler (through the guest agent: `guest-exec` of `sh -c
//! 'echo S > /sys/block/vda/queue/scheduler'`), scrape, run `kvmio-guest bench` in the guest
//! (again `guest-exec`), `syncfs` the host store (so that host writeback of what the phase
//! wrote is counted in the phase, under every cache mode alike), scrape again. The agent
//! connection is closed before each scrape: the exporter needs the agent's socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kvmio_crashtest::vm::{Disk, DiskSource, Vm, VmConfig, VmError};
use kvmio_guest::bench::{BenchResult, Op};
use kvmio_qemu::{AgentCommands, GuestAgent, Limits};

use crate::exporter::{Exporter, ExporterError};
use crate::layers::{self, Selector};
use crate::layout::{self, LayoutError};
use crate::plan::{Plan, Setup};
use crate::results::{self, Row};

/// Where a setup's VM runs and what it uses.
#[derive(Debug, Clone)]
pub struct Env {
    pub qemu_img: PathBuf,
    pub qemu_io: PathBuf,
    /// Sockets and console logs.
    pub run_dir: PathBuf,
    /// Where images go (the loop-device store).
    pub image_dir: PathBuf,
    pub host_device: String,
    pub ready_timeout: Duration,
    /// How long one workload may take in the guest.
    pub phase_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot create the image")]
    Layout(#[source] LayoutError),
    #[error("cannot boot the VM")]
    Boot(#[source] VmError),
    #[error("cannot talk to the guest agent at {path}")]
    Agent {
        path: PathBuf,
        #[source]
        source: kvmio_qemu::Error,
    },
    #[error("`{command}` failed in the guest: {output}")]
    Guest { command: String, output: String },
    #[error("the guest's bench result does not parse: {0}")]
    Result(String),
    #[error("cannot scrape the exporter")]
    Scrape(#[source] ExporterError),
    #[error("cannot sync the host store {path}")]
    Sync {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The name of setup `index`'s VM (also its `vm` label: the socket stem).
pub fn vm_name(index: usize) -> String {
    format!("claims-{}", index + 1)
}

/// Runs `argv` in the guest and returns its stdout; a non-zero exit is an error.
async fn guest_run(qga: &Path, argv: &[&str], timeout: Duration) -> Result<String, SessionError> {
    let agent_err = |source| SessionError::Agent {
        path: qga.to_path_buf(),
        source,
    };
    let mut agent = GuestAgent::connect(qga, Limits::DEFAULT)
        .await
        .map_err(agent_err)?;
    let status = agent
        .exec_wait(argv[0], &argv[1..], timeout)
        .await
        .map_err(agent_err)?;
    let out = String::from_utf8_lossy(&status.out).into_owned();
    if status.exitcode != Some(0) {
        return Err(SessionError::Guest {
            command: argv.join(" "),
            output: format!("{out}{}", String::from_utf8_lossy(&status.err)),
        });
    }
    Ok(out)
}

/// The schedulers the guest offers for `vda` (`[mq-deadline] none bfq kyber`).
pub fn parse_schedulers(line: &str) -> Vec<String> {
    line.split_whitespace()
        .map(|s| s.trim_matches(|c| c == '[' || c == ']').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// What one boot gave.
#[derive(Debug, Clone)]
pub struct SetupOutcome {
    pub rows: Vec<Row>,
    /// The guest kernel's release, as the guest reported it at READY.
    pub guest_kernel: String,
}

/// The active scheduler: the bracketed one.
pub fn active_scheduler(line: &str) -> Option<String> {
    line.split_whitespace()
        .find(|s| s.starts_with('[') && s.ends_with(']'))
        .map(|s| s.trim_matches(|c| c == '[' || c == ']').to_string())
}

/// Boots `setup` and measures every phase. `say` gets progress lines.
pub async fn run_setup(
    plan: &Plan,
    env: &Env,
    config: VmConfig,
    exporter: &Exporter,
    setup: &Setup,
    skipped: &mut Vec<String>,
    say: &mut dyn FnMut(String),
) -> Result<SetupOutcome, SessionError> {
    let layout = setup.layout;
    let image = env
        .image_dir
        .join(format!("{}.{}", config.name, layout.format().as_str()));
    layout::create(
        &env.qemu_img,
        &env.qemu_io,
        layout,
        &image,
        plan.disk_mib,
        plan.region_mib,
        plan.seed,
    )
    .map_err(SessionError::Layout)?;
    let result = measure(plan, env, config, exporter, setup, &image, skipped, say).await;
    let _ = std::fs::remove_file(&image);
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    plan: &Plan,
    env: &Env,
    mut config: VmConfig,
    exporter: &Exporter,
    setup: &Setup,
    image: &Path,
    skipped: &mut Vec<String>,
    say: &mut dyn FnMut(String),
) -> Result<SetupOutcome, SessionError> {
    let (cache, layout) = (setup.cache, setup.layout);
    config.disks = vec![Disk {
        source: DiskSource::File {
            path: image.to_path_buf(),
            format: layout.format(),
        },
        cache,
    }];
    let mut vm = Vm::launch(config).await.map_err(SessionError::Boot)?;
    let guest_kernel = vm
        .wait_ready(env.ready_timeout)
        .await
        .map_err(SessionError::Boot)?;
    let qga = vm.config().qga_socket();
    let sel = Selector {
        vm: vm.name().to_string(),
        guest_disk: "vda".into(),
        host_device: env.host_device.clone(),
    };
    let offered = parse_schedulers(
        &guest_run(
            &qga,
            &["/bin/cat", "/sys/block/vda/queue/scheduler"],
            Duration::from_secs(30),
        )
        .await?,
    );
    let mut rows = Vec::new();
    for scheduler in &setup.schedulers {
        if !offered.contains(scheduler) {
            let note = format!(
                "scheduler {scheduler} skipped: the guest offers {}",
                offered.join(", ")
            );
            if !skipped.contains(&note) {
                say(note.clone());
                skipped.push(note);
            }
            continue;
        }
        // Set, then read back: the kernel refuses an unknown name with EINVAL, but a shell
        // redirect's failure is easy to lose, and the exporter re-reads queue settings only
        // every few minutes, so the guest's own sysfs is the check.
        let set = format!(
            "echo {scheduler} > /sys/block/vda/queue/scheduler && cat /sys/block/vda/queue/scheduler"
        );
        let now = guest_run(&qga, &["/bin/sh", "-c", &set], Duration::from_secs(30)).await?;
        if active_scheduler(&now).as_deref() != Some(scheduler.as_str()) {
            return Err(SessionError::Guest {
                command: set,
                output: now,
            });
        }
        for workload in &plan.workloads {
            let before = exporter.scrape().map_err(SessionError::Scrape)?;
            let spec = workload.spec(plan.region_mib << 20, plan.seed);
            let args = spec.to_args();
            let mut argv = vec!["/bin/kvmio-guest", "bench"];
            argv.extend(args.iter().map(String::as_str));
            let out = guest_run(&qga, &argv, env.phase_timeout).await?;
            let result = BenchResult::parse(out.lines().last().unwrap_or(""))
                .map_err(SessionError::Result)?;
            sync_store(&env.image_dir)?;
            let after = exporter.scrape().map_err(SessionError::Scrape)?;
            let layers = layers::between(&before, &after, &sel);
            let mut row = Row {
                cache: cache.as_str().into(),
                layout: layout.as_str().into(),
                scheduler: scheduler.clone(),
                workload: workload.name.into(),
                op: match workload.op {
                    Op::Read => "read",
                    Op::Write => "write",
                }
                .into(),
                guest_seconds: result.seconds,
                guest_bytes: result.bytes,
                throughput_mib_s: result.bytes as f64 / (1 << 20) as f64 / result.seconds,
                latency_mean_us: result.latency_mean_us,
                latency_p50_us: result.latency_p50_us,
                latency_p99_us: result.latency_p99_us,
                guest_requests: 0.0,
                guest_merged: 0.0,
                guest_avg_request_kib: 0.0,
                guest_flushes: 0.0,
                qemu_requests: 0.0,
                qemu_merged: 0.0,
                qemu_avg_request_kib: 0.0,
                qemu_mean_latency_ms: 0.0,
                qemu_flushes: 0.0,
                host_requests: 0.0,
                host_merged: 0.0,
                host_avg_request_kib: 0.0,
                host_flushes: 0.0,
                host_cached_mib: 0.0,
            };
            results::row_figures(&mut row, &layers, workload.op == Op::Read);
            say(format!(
                "{:<10} {:<17} {:<12} {:<27} {:>7.1} MiB/s  guest {:>6.0} req {:>6.1} KiB  qemu {:>6.0} req {:>6.1} KiB  host {:>6.0} req {:>6.1} KiB  cached {:>5.1} MiB",
                row.cache,
                row.layout,
                row.scheduler,
                row.workload,
                row.throughput_mib_s,
                row.guest_requests,
                row.guest_avg_request_kib,
                row.qemu_requests,
                row.qemu_avg_request_kib,
                row.host_requests,
                row.host_avg_request_kib,
                row.host_cached_mib
            ));
            rows.push(row);
        }
    }
    vm.quit(Duration::from_secs(10)).await;
    Ok(SetupOutcome { rows, guest_kernel })
}

/// `syncfs` on the store: what the host still holds dirty for the images goes to the device.
fn sync_store(dir: &Path) -> Result<(), SessionError> {
    let status = std::process::Command::new("sync")
        .arg("-f")
        .arg(dir)
        .status()
        .map_err(|source| SessionError::Sync {
            path: dir.to_path_buf(),
            source,
        })?;
    if !status.success() {
        return Err(SessionError::Sync {
            path: dir.to_path_buf(),
            source: std::io::Error::other(format!("sync -f exited with {status}")),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedulers_as_the_guest_kernel_lists_them() {
        // Read from the test guest (Debian 6.1) with bfq and kyber loaded.
        assert_eq!(
            parse_schedulers("[mq-deadline] kyber bfq none\n"),
            ["mq-deadline", "kyber", "bfq", "none"]
        );
        assert_eq!(parse_schedulers("[none] \n"), ["none"]);
        assert_eq!(
            active_scheduler("mq-deadline kyber [bfq] none\n").as_deref(),
            Some("bfq")
        );
        assert_eq!(active_scheduler("none"), None);
    }
}
