//! The crash test's reports: `report.json`, `report.txt`, `report.html` ([`html`]) and
//! `crashtest.prom` in the output directory, and the matrix table on the terminal.
//!
//! `crashtest.prom` is a contract with the exporter (which re-serves every
//! `kvmio_crashtest_*` series) and with the alerting rules. Every series but the timestamp has
//! the labels `cache_mode`, `fault`, `sync`, `format`, `workload`:
//!
//! | metric | meaning |
//! |---|---|
//! | `kvmio_crashtest_acked_writes` | records the guest acknowledged, summed over the cell's iterations |
//! | `kvmio_crashtest_lost_acked_writes` | of those, records that did not survive intact (absent or damaged) |
//! | `kvmio_crashtest_corrupted_writes` | damaged acked records plus data nobody wrote (always a violation) |
//! | `kvmio_crashtest_iterations` | iterations run in the cell |
//! | `kvmio_crashtest_restored_iterations` | of those, iterations whose guest was restored from a saved state (the others booted) |
//! | `kvmio_crashtest_violations` | iterations whose verdict was VIOLATION |
//! | `kvmio_crashtest_last_run_timestamp_seconds` | when the run finished (no labels) |
//!
//! Only a complete run writes `crashtest.prom`; an interrupted one leaves the previous file.
//!
//! Why one file of about 650 lines: the three files and the table are views of one summary
//! ([`Report`], built once from the results); apart they would each re-derive it. A fifth of the
//! file is its tests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use kvmio_qemu::{CacheFlags, CacheMode};
use serde::Serialize;

use crate::oracle::{Cell, Verdict};
use crate::run::{BootPolicy, GuestCheck, IterationResult, RunOptions, Started, Timings};
use crate::vm::Accel;

pub mod host;
pub mod html;

pub use host::HostInfo;

/// Run-wide facts for the report.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub seed: u64,
    pub iterations: u32,
    pub parallel: usize,
    pub accel: String,
    pub qemu_binary: PathBuf,
    pub disk_size_mib: u64,
    pub record_size: usize,
    pub window_ms: [u64; 2],
    pub image_dir: PathBuf,
    pub keep_images: bool,
    pub started_unix: f64,
    pub finished_unix: f64,
    /// Self-test switches (false in real runs).
    pub lie_about_flush: bool,
    #[serde(default)]
    pub reorder_flush: bool,
    pub ack_early: bool,
    /// `--boot`: `auto` restores saved guests, `always` boots every iteration.
    pub boot: BootPolicy,
}

impl RunInfo {
    /// The run's facts, from its options and the accelerator it ran under.
    pub fn new(opts: &RunOptions, accel: Accel, started_unix: f64, finished_unix: f64) -> Self {
        RunInfo {
            seed: opts.seed,
            iterations: opts.iterations,
            parallel: opts.parallel,
            accel: accel.as_str().to_string(),
            qemu_binary: opts.qemu.clone(),
            disk_size_mib: opts.disk_size_mib,
            record_size: opts.record_size,
            window_ms: [opts.window.0, opts.window.1].map(|d| d.as_millis() as u64),
            image_dir: opts.image_dir.clone(),
            keep_images: opts.keep_images,
            started_unix,
            finished_unix,
            lie_about_flush: opts.lie_about_flush,
            reorder_flush: opts.reorder_flush,
            ack_early: opts.ack_early,
            boot: opts.boot,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    /// False if the run was interrupted or stopped by an error; then `error` says why.
    pub complete: bool,
    pub error: Option<String>,
    pub run: RunInfo,
    /// QEMU's version as its QMP greeting reports it.
    pub qemu_version: Option<String>,
    pub guest_kernel: Option<String>,
    /// The host that ran the VMs (kernel, distribution, name).
    pub host: HostInfo,
    /// Iterations whose verdict was VIOLATION, over all cells.
    pub violations: u64,
    pub cells: Vec<CellReport>,
    /// kvmio's directory in the image dir, when images were kept.
    pub kept_images_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CellReport {
    pub cache_mode: CacheMode,
    pub fault: crate::oracle::Fault,
    pub sync: crate::oracle::SyncName,
    pub format: crate::vm::ImageFormat,
    pub workload: crate::oracle::Workload,
    /// The run's seed: `run --seed SEED` with this cell's flags repeats its iterations (a
    /// cell's randomness depends only on the run's seed, the cell and the iteration number).
    pub seed: u64,
    /// The cell's own seed, derived from `seed` and the cell.
    pub derived_seed: u64,
    pub iterations: u32,
    /// Iterations whose guest was restored from a saved state (the others booted).
    pub restored: u32,
    pub acked: u64,
    pub survived: u64,
    /// Acked records absent after the fault.
    pub lost: u64,
    /// Damaged acked records, data nobody wrote, acks that match no written record.
    pub corrupted: u64,
    /// Acked versions whose slot holds an older version (raw-overwrite, raw-discard).
    pub rolled_back: u64,
    /// Acked records that did not survive intact (`acked - survived`).
    pub lost_acked: u64,
    pub iterations_with_loss: u32,
    pub violations: u32,
    pub unacked_present: u64,
    pub unacked_torn: u64,
    pub promised: bool,
    pub promise: &'static str,
    pub verdict: Verdict,
    /// `query-block`'s `inserted.cache` after the guest driver loaded (first iteration).
    pub qmp_cache: Option<CacheFlags>,
    /// The `cache=` mode those flags name, if any.
    pub qmp_cache_mode: Option<CacheMode>,
    /// Whether QMP's flags are those of the configured mode in every iteration.
    pub qmp_confirmed: bool,
    /// Mean seconds per phase.
    pub mean_timings: Timings,
    pub results: Vec<IterationSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IterationSummary {
    pub iteration: u32,
    pub seed: u64,
    pub run_id: String,
    pub verdict: Verdict,
    pub acked: u64,
    pub survived: u64,
    pub lost: u64,
    pub corrupted: u64,
    pub rolled_back: u64,
    pub unacked_present: u64,
    pub unacked_torn: u64,
    pub writer_done: bool,
    pub fault_delay_ms: u64,
    pub timings: Timings,
    /// `restored` from the configuration's saved guest, or `booted`.
    pub started: Started,
    /// Why the guest was booted although `--boot auto` restores where it can.
    pub boot_reason: Option<String>,
    /// What the writer reported after `START`, as checked against a fresh boot.
    pub guest_check: GuestCheck,
    pub power_fail: Option<crate::run::PowerFailSummary>,
    pub image_check: Option<String>,
    pub image_error: Option<String>,
    pub verify_bytes_read: u64,
    pub problems: Vec<String>,
    pub kept_image: Option<PathBuf>,
    pub kept_acks: Option<PathBuf>,
}

fn mean_timings(ts: &[Timings]) -> Timings {
    let n = ts.len().max(1) as f64;
    let sum = |f: fn(&Timings) -> f64| ts.iter().map(f).sum::<f64>() / n;
    Timings {
        create: sum(|t| t.create),
        snapshot: sum(|t| t.snapshot),
        boot: sum(|t| t.boot),
        restore: sum(|t| t.restore),
        first_ack: sum(|t| t.first_ack),
        window: sum(|t| t.window),
        fault: sum(|t| t.fault),
        verify: sum(|t| t.verify),
        total: sum(|t| t.total),
    }
}

impl Report {
    pub fn build(
        run: RunInfo,
        results: &[IterationResult],
        error: Option<String>,
        kept_images_dir: Option<PathBuf>,
    ) -> Report {
        let mut by_cell: BTreeMap<Cell, Vec<&IterationResult>> = BTreeMap::new();
        for r in results {
            by_cell.entry(r.cell).or_default().push(r);
        }
        let cells: Vec<CellReport> = by_cell
            .into_iter()
            .map(|(cell, rs)| cell_report(run.seed, cell, &rs))
            .collect();
        Report {
            tool: "kvmio-crashtest",
            version: env!("CARGO_PKG_VERSION"),
            complete: error.is_none(),
            error,
            qemu_version: results.first().map(|r| r.qemu_version.clone()),
            guest_kernel: results.first().map(|r| r.guest_kernel.clone()),
            host: HostInfo::current(),
            violations: cells.iter().map(|c| u64::from(c.violations)).sum(),
            cells,
            run,
            kept_images_dir,
        }
    }

    /// Writes `report.json`, `report.txt`, `report.html` and (complete runs only)
    /// `crashtest.prom`, each atomically (a temporary file renamed into place).
    pub fn write(&self, out: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("report serialises");
        write_atomic(out, "report.json", &json)?;
        write_atomic(out, "report.txt", self.text().as_bytes())?;
        let value = serde_json::to_value(self).expect("report serialises");
        write_atomic(out, "report.html", html::render(&value, out).as_bytes())?;
        if self.complete {
            write_atomic(out, "crashtest.prom", self.prometheus().as_bytes())?;
        }
        Ok(())
    }

    /// The matrix as a table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<12} {:<12} {:<9} {:<6} {:<13} {:>5} {:>7} {:>8} {:>6} {:>9} {:>10} {:>8} {:>6}  verdict",
            "cache",
            "fault",
            "sync",
            "format",
            "workload",
            "iters",
            "acked",
            "survived",
            "lost",
            "corrupted",
            "loss-iters",
            "promised",
            "qmp",
        );
        for c in &self.cells {
            let qmp = match (c.qmp_cache, c.qmp_confirmed) {
                (None, _) => "?".to_string(),
                (Some(_), true) => "ok".to_string(),
                (Some(_), false) => "DIFF".to_string(),
            };
            let _ = writeln!(
                s,
                "{:<12} {:<12} {:<9} {:<6} {:<13} {:>5} {:>7} {:>8} {:>6} {:>9} {:>10} {:>8} {:>6}  {}",
                c.cache_mode.as_str(),
                c.fault.as_str(),
                c.sync.to_string(),
                c.format.as_str(),
                c.workload.as_str(),
                c.iterations,
                c.acked,
                c.survived,
                c.lost,
                c.corrupted,
                format!("{}/{}", c.iterations_with_loss, c.iterations),
                if c.promised { "yes" } else { "no" },
                qmp,
                c.verdict
            );
        }
        s
    }

    /// `report.txt`: parameters, the table, timings, and the problems behind each violation.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let r = &self.run;
        let _ = writeln!(s, "kvmio-crashtest {} report", self.version);
        if !self.complete {
            let _ = writeln!(
                s,
                "INCOMPLETE RUN: {}",
                self.error.as_deref().unwrap_or("stopped early")
            );
        }
        let _ = writeln!(
            s,
            "seed {}  iterations {}  parallel {}  accel {}  disk {} MiB  record {} B  window {}..{} ms",
            r.seed,
            r.iterations,
            r.parallel,
            r.accel,
            r.disk_size_mib,
            r.record_size,
            r.window_ms[0],
            r.window_ms[1]
        );
        let _ = writeln!(
            s,
            "qemu {} ({})  guest kernel {}",
            self.qemu_version.as_deref().unwrap_or("?"),
            r.qemu_binary.display(),
            self.guest_kernel.as_deref().unwrap_or("?")
        );
        if r.lie_about_flush || r.reorder_flush || r.ack_early {
            let _ = writeln!(
                s,
                "SELF-TEST RUN: lie_about_flush={} reorder_flush={} ack_early={} (the stack is broken on purpose)",
                r.lie_about_flush, r.reorder_flush, r.ack_early
            );
        }
        let _ = writeln!(s);
        s.push_str(&self.table());
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "QMP cache flags (query-block inserted.cache after the guest driver loaded; writeback is the guest-negotiated write cache):"
        );
        let mut seen = BTreeMap::new();
        for c in &self.cells {
            if let Some(f) = c.qmp_cache {
                seen.entry(c.cache_mode).or_insert((f, c.qmp_confirmed));
            }
        }
        for (mode, (f, ok)) in seen {
            let _ = writeln!(
                s,
                "  {:<12} writeback={} direct={} no-flush={}{}",
                mode.as_str(),
                f.writeback,
                f.direct,
                f.no_flush,
                if ok {
                    ""
                } else {
                    "  (differs from the configured mode)"
                }
            );
        }
        let all: Vec<Timings> = self
            .cells
            .iter()
            .flat_map(|c| c.results.iter().map(|r| r.timings))
            .collect();
        if !all.is_empty() {
            let m = mean_timings(&all);
            let started = |how: Started| {
                self.cells
                    .iter()
                    .flat_map(|c| &c.results)
                    .filter(|r| r.started == how)
                    .count()
            };
            let _ = writeln!(
                s,
                "\nguests (--boot {}): {} restored from a saved state, {} booted",
                serde_json::to_value(r.boot)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                started(Started::Restored),
                started(Started::Booted)
            );
            let _ = writeln!(
                s,
                "mean seconds per iteration ({} iterations): create {:.2}  snapshot-wait {:.2}  boot {:.2}  restore {:.2}  first-ack {:.2}  window {:.2}  fault {:.2}  verify {:.3}  total {:.2}  (total / start-to-first-ack = {:.2})",
                all.len(),
                m.create,
                m.snapshot,
                m.boot,
                m.restore,
                m.first_ack,
                m.window,
                m.fault,
                m.verify,
                m.total,
                m.total / (m.boot + m.restore + m.first_ack).max(f64::EPSILON)
            );
        }
        let _ = writeln!(s, "\npromises:");
        for c in &self.cells {
            let _ = writeln!(s, "  {}: {}", c.cell().id(), c.promise);
        }
        for c in &self.cells {
            for it in &c.results {
                if it.verdict == Verdict::Violation {
                    let _ = writeln!(
                        s,
                        "\nVIOLATION {} iteration {} (seed {}): acked {} survived {} lost {} corrupted {}",
                        c.cell().id(),
                        it.iteration,
                        it.seed,
                        it.acked,
                        it.survived,
                        it.lost,
                        it.corrupted
                    );
                    for p in &it.problems {
                        let _ = writeln!(s, "  {p}");
                    }
                    if let (Some(img), Some(acks)) = (&it.kept_image, &it.kept_acks) {
                        let _ = writeln!(
                            s,
                            "  re-check: kvmio-crashtest verify --image {} --acks {}",
                            img.display(),
                            acks.display()
                        );
                    }
                }
            }
        }
        s
    }

    /// `crashtest.prom`.
    pub fn prometheus(&self) -> String {
        let mut s = String::new();
        type Get = fn(&CellReport) -> u64;
        let series: [(&str, &str, Get); 6] = [
            (
                "kvmio_crashtest_acked_writes",
                "Records the guest writer acknowledged after its durability point, summed over the cell's iterations.",
                |c| c.acked,
            ),
            (
                "kvmio_crashtest_lost_acked_writes",
                "Acknowledged records that did not survive the fault intact (absent or damaged).",
                |c| c.lost_acked,
            ),
            (
                "kvmio_crashtest_corrupted_writes",
                "Damaged acknowledged records plus data nobody wrote where it was found.",
                |c| c.corrupted,
            ),
            (
                "kvmio_crashtest_iterations",
                "Iterations run in the cell.",
                |c| u64::from(c.iterations),
            ),
            (
                "kvmio_crashtest_restored_iterations",
                "Iterations of the cell whose guest was restored from a saved state instead of booted.",
                |c| u64::from(c.restored),
            ),
            (
                "kvmio_crashtest_violations",
                "Iterations whose verdict was VIOLATION: loss or corruption where the cache mode promised survival.",
                |c| u64::from(c.violations),
            ),
        ];
        for (name, help, get) in series {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} gauge");
            for c in &self.cells {
                let _ = writeln!(
                    s,
                    "{name}{{cache_mode=\"{}\",fault=\"{}\",sync=\"{}\",format=\"{}\",workload=\"{}\"}} {}",
                    c.cache_mode.as_str(),
                    c.fault.as_str(),
                    c.sync,
                    c.format.as_str(),
                    c.workload.as_str(),
                    get(c)
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP kvmio_crashtest_last_run_timestamp_seconds When the last complete kvmio-crashtest run finished (Unix time)."
        );
        let _ = writeln!(s, "# TYPE kvmio_crashtest_last_run_timestamp_seconds gauge");
        let _ = writeln!(
            s,
            "kvmio_crashtest_last_run_timestamp_seconds {:.3}",
            self.run.finished_unix
        );
        s
    }
}

impl CellReport {
    /// The cell this report is of.
    pub fn cell(&self) -> Cell {
        Cell {
            cache_mode: self.cache_mode,
            fault: self.fault,
            sync: self.sync,
            format: self.format,
            workload: self.workload,
        }
    }
}

fn cell_report(run_seed: u64, cell: Cell, rs: &[&IterationResult]) -> CellReport {
    let promise = cell.promise();
    let sum = |f: fn(&IterationResult) -> u64| rs.iter().map(|r| f(r)).sum::<u64>();
    let qmp_cache = rs.iter().find_map(|r| r.qmp_cache);
    let qmp_confirmed = !rs.is_empty()
        && rs
            .iter()
            .all(|r| r.qmp_cache.and_then(CacheMode::from_flags) == Some(cell.cache_mode));
    let timings: Vec<Timings> = rs.iter().map(|r| r.timings).collect();
    CellReport {
        cache_mode: cell.cache_mode,
        fault: cell.fault,
        sync: cell.sync,
        format: cell.format,
        workload: cell.workload,
        seed: run_seed,
        derived_seed: crate::run::cell_seed(run_seed, &cell),
        iterations: rs.len() as u32,
        restored: rs.iter().filter(|r| r.started == Started::Restored).count() as u32,
        acked: sum(|r| r.verification.acked),
        survived: sum(|r| r.verification.survived),
        lost: sum(|r| r.verification.lost),
        corrupted: sum(|r| r.verification.corrupted()),
        rolled_back: sum(|r| r.verification.rolled_back),
        lost_acked: sum(|r| r.verification.lost_acked()),
        iterations_with_loss: rs
            .iter()
            .filter(|r| r.verification.lost_acked() > 0)
            .count() as u32,
        violations: rs
            .iter()
            .filter(|r| r.verdict == Verdict::Violation)
            .count() as u32,
        unacked_present: sum(|r| r.verification.unacked_present),
        unacked_torn: sum(|r| r.verification.unacked_torn),
        promised: promise.survives,
        promise: promise.reason,
        verdict: rs.iter().map(|r| r.verdict).max().unwrap_or(Verdict::Ok),
        qmp_cache,
        qmp_cache_mode: qmp_cache.and_then(CacheMode::from_flags),
        qmp_confirmed,
        mean_timings: mean_timings(&timings),
        results: rs
            .iter()
            .map(|r| IterationSummary {
                iteration: r.iteration,
                seed: r.seed,
                run_id: format!("{:016x}", r.run_id),
                verdict: r.verdict,
                acked: r.verification.acked,
                survived: r.verification.survived,
                lost: r.verification.lost,
                corrupted: r.verification.corrupted(),
                rolled_back: r.verification.rolled_back,
                unacked_present: r.verification.unacked_present,
                unacked_torn: r.verification.unacked_torn,
                writer_done: r.verification.writer_done,
                fault_delay_ms: r.fault_delay_ms,
                timings: r.timings,
                started: r.started,
                boot_reason: r.boot_reason.clone(),
                guest_check: r.guest_check,
                power_fail: r.power_fail.clone(),
                image_check: r.verification.image_check.clone(),
                image_error: r.verification.image_error.clone(),
                verify_bytes_read: r.verification.bytes_read,
                problems: r.verification.problems.clone(),
                kept_image: r.kept_image.clone(),
                kept_acks: r.kept_acks.clone(),
            })
            .collect(),
    }
}

fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(dir)?;
    tmp.write_all(data)?;
    // Readable like any file written normally (temporary files are 0600): the exporter may
    // run as another user.
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.as_file().sync_data()?;
    tmp.persist(dir.join(name)).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::Fault;
    use crate::run::IterationResult;
    use crate::verify::Verification;
    use crate::vm::ImageFormat;
    use kvmio_guest::writer::SyncPolicy;

    fn result(cache: CacheMode, acked: u64, survived: u64, verdict: Verdict) -> IterationResult {
        IterationResult {
            cell: Cell::new(cache, Fault::Power, SyncPolicy::None, ImageFormat::Raw),
            iteration: 1,
            seed: 5,
            run_id: 6,
            verdict,
            verification: Verification {
                acked,
                survived,
                lost: acked - survived,
                ..Verification::default()
            },
            timings: Timings::default(),
            started: Started::Restored,
            boot_reason: None,
            guest_check: GuestCheck {
                write_cache: cache.flags().writeback,
                disk_bytes: 64 << 20,
                partitions: 0,
                cached_kib: 0,
                clock_lag_ms: 0.5,
                uptime_ms: 4000,
                discard_max_bytes: 0,
                write_zeroes_max_bytes: 0,
            },
            fault_delay_ms: 100,
            power_fail: None,
            qmp_cache: Some(cache.flags()),
            qemu_version: "7.2.22".into(),
            guest_kernel: "6.1".into(),
            kept_image: None,
            kept_acks: None,
        }
    }

    fn info() -> RunInfo {
        RunInfo {
            seed: 1,
            iterations: 1,
            parallel: 1,
            accel: "tcg".into(),
            qemu_binary: "qemu-system-x86_64".into(),
            disk_size_mib: 64,
            record_size: 4096,
            window_ms: [100, 1000],
            image_dir: "/tmp".into(),
            keep_images: false,
            started_unix: 1.0,
            finished_unix: 1700000000.5,
            lie_about_flush: false,
            reorder_flush: false,
            ack_early: false,
            boot: BootPolicy::Auto,
        }
    }

    #[test]
    fn prometheus_text_has_the_contract_metrics() {
        let results = vec![
            result(CacheMode::Unsafe, 10, 0, Verdict::LossAllowed),
            result(CacheMode::Writethrough, 10, 7, Verdict::Violation),
        ];
        let report = Report::build(info(), &results, None, None);
        let prom = report.prometheus();
        for needle in [
            "# TYPE kvmio_crashtest_acked_writes gauge",
            "kvmio_crashtest_acked_writes{cache_mode=\"unsafe\",fault=\"power\",sync=\"none\",format=\"raw\",workload=\"raw-append\"} 10",
            "kvmio_crashtest_lost_acked_writes{cache_mode=\"unsafe\",fault=\"power\",sync=\"none\",format=\"raw\",workload=\"raw-append\"} 10",
            "kvmio_crashtest_violations{cache_mode=\"writethrough\",fault=\"power\",sync=\"none\",format=\"raw\",workload=\"raw-append\"} 1",
            "kvmio_crashtest_violations{cache_mode=\"unsafe\",fault=\"power\",sync=\"none\",format=\"raw\",workload=\"raw-append\"} 0",
            "kvmio_crashtest_restored_iterations{cache_mode=\"unsafe\",fault=\"power\",sync=\"none\",format=\"raw\",workload=\"raw-append\"} 1",
            "kvmio_crashtest_last_run_timestamp_seconds 1700000000.500",
        ] {
            assert!(prom.contains(needle), "missing {needle} in\n{prom}");
        }
        assert_eq!(report.violations, 1);
        let json = serde_json::to_value(&report).unwrap();
        let cell = &json["cells"][0];
        for key in [
            "cache_mode",
            "fault",
            "sync",
            "format",
            "workload",
            "iterations",
            "acked",
            "survived",
            "lost",
            "corrupted",
            "verdict",
            "seed",
            "qmp_cache",
        ] {
            assert!(cell.get(key).is_some(), "cell lacks {key}: {cell}");
        }
        assert!(report.table().contains("VIOLATION"));
        assert!(report
            .text()
            .contains("VIOLATION writethrough-power-none-raw"));
    }

    #[test]
    fn incomplete_runs_write_no_prom_file() {
        let dir = tempfile::tempdir().unwrap();
        let results = vec![result(CacheMode::None, 3, 3, Verdict::Ok)];
        Report::build(info(), &results, Some("interrupted".into()), None)
            .write(dir.path())
            .unwrap();
        assert!(dir.path().join("report.json").exists());
        assert!(dir.path().join("report.txt").exists());
        assert!(!dir.path().join("crashtest.prom").exists());
        Report::build(info(), &results, None, None)
            .write(dir.path())
            .unwrap();
        assert!(dir.path().join("crashtest.prom").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("crashtest.prom"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }
}
