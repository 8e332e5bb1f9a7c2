//! `crashtest`: re-serves the latest crash-test results (`--crashtest.results-dir DIR`).
//!
//! `kvmio-crashtest run --out DIR` writes `crashtest.prom` in the text format: the newest of
//! `DIR/crashtest.prom` and `DIR/*/crashtest.prom` (by modification time) is read at each scrape.
//! Only `kvmio_crashtest_*` families are served, counters and gauges (an untyped family is served
//! as a gauge, and so is a counter whose name lacks `_total`, which kvmio's naming reserves for
//! counters). Timestamps are dropped. A malformed line is skipped and logged (once per version
//! of the file). A file that is partly refused (a malformed line, a family outside the prefix,
//! a histogram, a sample over a bound) still has its valid samples served, but sets
//! `kvmio_collector_success{collector="crashtest"}` to 0 for as long as it is the newest file, as
//! node_exporter's textfile collector sets `node_textfile_scrape_error` to 1 for a file it could
//! not parse; so does a file that cannot be read or is too large (nothing served then). A missing
//! file (no run yet) is not an error. The scrape never fails because of it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use super::{CollectFuture, Collector, CollectorError, ScrapeContext};
use crate::metrics::Metrics;
use crate::textformat::{self, FamilyType};

/// The file name `kvmio-crashtest run` writes.
pub const RESULTS_FILE: &str = "crashtest.prom";

/// Files larger than this are not read.
pub const MAX_RESULTS_BYTES: u64 = 1024 * 1024;

/// At most this many samples are served.
pub const MAX_RESULTS_SAMPLES: usize = 10_000;

/// Prefix of the families served.
pub const PREFIX: &str = "kvmio_crashtest_";

/// The collector.
#[derive(Debug)]
pub struct Crashtest {
    dir: PathBuf,
    /// The file version whose problems were last logged: (path, mtime, length).
    logged: Mutex<Option<(PathBuf, SystemTime, u64)>>,
}

impl Crashtest {
    /// A collector reading results from `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Crashtest {
            dir,
            logged: Mutex::new(None),
        }
    }
}

/// The newest results file in `dir` or its direct subdirectories.
pub fn latest_results(dir: &Path) -> Option<(PathBuf, std::fs::Metadata)> {
    newest(dir, RESULTS_FILE)
}

/// The page `kvmio-crashtest run` writes beside its results, which the landing page links.
pub const REPORT_PAGE: &str = "report.html";

/// Pages larger than this are not served (the default matrix's page is about 300 KiB).
pub const MAX_REPORT_PAGE_BYTES: u64 = 16 * 1024 * 1024;

/// The newest `report.html` in `dir` or its direct subdirectories (an interrupted run's page
/// too: it says so itself).
pub fn latest_report_page(dir: &Path) -> Option<(PathBuf, std::fs::Metadata)> {
    newest(dir, REPORT_PAGE)
}

/// The newest report page's bytes: `Ok(None)` when there is none, an error when it cannot be
/// read or is larger than [`MAX_REPORT_PAGE_BYTES`].
pub fn read_latest_report_page(dir: &Path) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read as _;
    let Some((path, meta)) = latest_report_page(dir) else {
        return Ok(None);
    };
    let too_large = || {
        format!(
            "{}: larger than {MAX_REPORT_PAGE_BYTES} bytes, not served",
            path.display()
        )
    };
    if meta.len() > MAX_REPORT_PAGE_BYTES {
        return Err(too_large());
    }
    let mut page = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_REPORT_PAGE_BYTES + 1).read_to_end(&mut page))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if page.len() as u64 > MAX_REPORT_PAGE_BYTES {
        return Err(too_large());
    }
    Ok(Some(page))
}

/// The newest regular file called `name` in `dir` or its direct subdirectories.
fn newest(dir: &Path, name: &str) -> Option<(PathBuf, std::fs::Metadata)> {
    let mut candidates = vec![dir.join(name)];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten().take(10_000) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                candidates.push(e.path().join(name));
            }
        }
    }
    candidates
        .into_iter()
        .filter_map(|p| {
            let m = std::fs::metadata(&p).ok()?;
            m.is_file().then_some((p, m))
        })
        .max_by_key(|(p, m)| (m.modified().ok(), p.clone()))
}

/// What reading the results produced: samples to serve and problems to log.
#[derive(Debug, Default)]
pub struct Loaded {
    pub metrics: Metrics,
    pub problems: Vec<String>,
}

/// Parses a results file's text and keeps the valid `kvmio_crashtest_*` counters and gauges.
pub fn load(text: &str, source: &str) -> Loaded {
    let parsed = textformat::parse(text);
    let mut out = Loaded::default();
    for e in &parsed.errors {
        out.problems.push(format!("{source}: {e}"));
    }
    let mut served = 0usize;
    for fam in parsed.families {
        if !fam.name.starts_with(PREFIX) {
            out.problems.push(format!(
                "{source}: {}: not a {PREFIX}* family, not served",
                fam.name
            ));
            continue;
        }
        let counter = match fam.kind {
            FamilyType::Counter if fam.name.ends_with("_total") => true,
            FamilyType::Counter | FamilyType::Gauge | FamilyType::Untyped => false,
            FamilyType::Histogram | FamilyType::Summary => {
                out.problems.push(format!(
                    "{source}: {}: histograms and summaries are not served",
                    fam.name
                ));
                continue;
            }
        };
        if !counter && fam.name.ends_with("_total") {
            out.problems.push(format!(
                "{source}: {}: a non-counter may not end in _total, not served",
                fam.name
            ));
            continue;
        }
        let help = fam
            .help
            .as_deref()
            .filter(|h| !h.trim().is_empty())
            .map(|h| h.replace('\n', " "))
            .unwrap_or_else(|| "kvmio-crashtest result.".to_owned());
        for s in &fam.samples {
            if s.name != fam.name {
                out.problems
                    .push(format!("{source}: {}: sample of another family", s.name));
                continue;
            }
            if served >= MAX_RESULTS_SAMPLES {
                out.problems.push(format!(
                    "{source}: more than {MAX_RESULTS_SAMPLES} samples; the rest is not served"
                ));
                return out;
            }
            let mut labels: Vec<(&str, &str)> = s
                .labels
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            labels.sort();
            if counter {
                out.metrics.counter(&fam.name, &help, &labels, s.value);
            } else {
                out.metrics.gauge(&fam.name, &help, &labels, s.value);
            }
            served += 1;
        }
    }
    for why in out.metrics.rejected() {
        out.problems.push(format!("{source}: {why}"));
    }
    out
}

impl Collector for Crashtest {
    fn name(&self) -> &'static str {
        "crashtest"
    }

    fn collect<'a>(&'a self, ctx: &'a ScrapeContext, out: &'a mut Metrics) -> CollectFuture<'a> {
        Box::pin(async move {
            let dir = self.dir.clone();
            // The directory may be on a network filesystem: off the async threads, bounded.
            let job = tokio::task::spawn_blocking(move || {
                let Some((path, meta)) = latest_results(&dir) else {
                    return Ok(None);
                };
                if meta.len() > MAX_RESULTS_BYTES {
                    return Err(CollectorError::Failed(format!(
                        "{}: {} bytes, more than the {MAX_RESULTS_BYTES} accepted",
                        path.display(),
                        meta.len()
                    )));
                }
                let text =
                    std::fs::read_to_string(&path).map_err(|e| CollectorError::io(&path, e))?;
                let version = (path.clone(), meta.modified().ok(), meta.len());
                let loaded = load(&text, &path.display().to_string());
                Ok(Some((version, loaded)))
            });
            let result = tokio::time::timeout_at(ctx.deadline(), job)
                .await
                .map_err(|_| CollectorError::Failed("reading the results timed out".into()))?
                .map_err(|e| CollectorError::Failed(format!("results task: {e}")))?;
            let Some(((path, mtime, len), loaded)) = result? else {
                return Ok(());
            };
            let shown = path.display().to_string();
            let version = mtime.map(|m| (path, m, len));
            let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
            if version.is_none() || *logged != version {
                for p in &loaded.problems {
                    tracing::warn!("crash-test results: {p}");
                }
                *logged = version;
            }
            drop(logged);
            let refused = loaded.problems.len();
            let mut m = loaded.metrics;
            // Problems were logged above; do not report them again as rejected samples.
            m.clear_rejected();
            out.merge(m);
            if refused > 0 {
                return Err(CollectorError::Failed(format!(
                    "{shown}: {refused} part(s) refused (logged when the file changed); its \
                     valid samples are served"
                )));
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_only_valid_crashtest_families() {
        let text = "# HELP kvmio_crashtest_acked_writes Acknowledged writes in the last run.\n\
            # TYPE kvmio_crashtest_acked_writes counter\n\
            kvmio_crashtest_acked_writes{format=\"qcow2\",cache_mode=\"none\",fault=\"sigkill\",sync=\"fsync\"} 1000\n\
            # TYPE kvmio_crashtest_lost_acked_writes gauge\n\
            kvmio_crashtest_lost_acked_writes{cache_mode=\"unsafe\",fault=\"power\",sync=\"none\",format=\"raw\"} 17 1700000000000\n\
            kvmio_crashtest_violations{cache_mode=\"unsafe\",fault=\"power\",sync=\"none\",format=\"raw\",workload=\"raw-append\"} 1\n\
            kvmio_crashtest_violations{cache_mode=\"none\",fault=\"power\",sync=\"dsync\",format=\"raw\",workload=\"raw-append\"} 0\n\
            kvmio_crashtest_violations{cache_mode=\"none\",fault=\"power\",sync=\"dsync\",format=\"raw\",workload=\"raw-overwrite\"} 2\n\
            kvmio_crashtest_violations{cache_mode=\"none\" 1\n\
            node_load1 3\n\
            # TYPE kvmio_crashtest_runs_total counter\n\
            kvmio_crashtest_runs_total 4\n\
            kvmio_crashtest_last_run_timestamp_seconds 1.7e9\n";
        let l = load(text, "f");
        let m = &l.metrics;
        let labels = [
            ("cache_mode", "none"),
            ("fault", "sigkill"),
            ("format", "qcow2"),
            ("sync", "fsync"),
        ];
        assert_eq!(
            m.value("kvmio_crashtest_acked_writes", &labels),
            Some(1000.0)
        );
        assert_eq!(
            m.value(
                "kvmio_crashtest_lost_acked_writes",
                &[
                    ("cache_mode", "unsafe"),
                    ("fault", "power"),
                    ("format", "raw"),
                    ("sync", "none")
                ]
            ),
            Some(17.0)
        );
        // kvmio-crashtest's cells carry a workload label: served as written, one series per
        // workload of an otherwise equal cell.
        for (workload, v) in [("raw-append", 0.0), ("raw-overwrite", 2.0)] {
            assert_eq!(
                m.value(
                    "kvmio_crashtest_violations",
                    &[
                        ("cache_mode", "none"),
                        ("fault", "power"),
                        ("format", "raw"),
                        ("sync", "dsync"),
                        ("workload", workload)
                    ]
                ),
                Some(v),
                "{workload}"
            );
        }
        assert_eq!(m.value("kvmio_crashtest_runs_total", &[]), Some(4.0));
        assert_eq!(
            m.value("kvmio_crashtest_last_run_timestamp_seconds", &[]),
            Some(1.7e9)
        );
        assert!(!m.contains("node_load1"));
        assert_eq!(l.problems.len(), 2, "{:?}", l.problems);
        assert!(l.problems[0].contains("line 9"), "{:?}", l.problems);
        let text = m.encode_text();
        assert!(
            text.contains("# TYPE kvmio_crashtest_acked_writes gauge"),
            "{text}"
        );
        assert!(!text.contains("1700000000000"));
    }

    #[test]
    fn latest_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        assert!(latest_results(dir.path()).is_none());
        std::fs::create_dir(dir.path().join("run-1")).unwrap();
        std::fs::write(dir.path().join("run-1").join(RESULTS_FILE), "a").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::create_dir(dir.path().join("run-2")).unwrap();
        std::fs::write(dir.path().join("run-2").join(RESULTS_FILE), "b").unwrap();
        let (p, _) = latest_results(dir.path()).unwrap();
        assert!(p.ends_with("run-2/crashtest.prom"), "{}", p.display());
    }
}
