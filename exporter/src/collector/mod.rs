//! The collector framework: one [`Collector`] per file, run concurrently by [`Exporter::scrape`]
//! under one deadline.
//!
//! A scrape:
//! 1. creates a [`ScrapeContext`] whose deadline is the request time plus `--scrape.timeout`;
//! 2. spawns every collector's [`Collector::collect`] as its own task, each bounded by that
//!    deadline, each writing into its own [`Metrics`];
//! 3. merges what every collector wrote - also what a collector that timed out wrote before the
//!    deadline, so a collector that emits per VM as each VM answers keeps the VMs that answered;
//! 4. adds `kvmio_collector_duration_seconds{collector}`, `kvmio_collector_success{collector}`
//!    and `kvmio_exporter_build_info`.
//!
//! A collector that fails, times out or panics only sets its `kvmio_collector_success` to 0:
//! the HTTP answer is still 200 with everything else.
//!
//! ## Images: how QMP and the host layer meet
//! A collector that learns which image files the VMs use (the QMP collector) returns `true` from
//! [`Collector::provides_images`] and calls [`ScrapeContext::publish_images`] (as often as it
//! likes, e.g. once per VM as each VM answers). Host collectors call
//! [`ScrapeContext::resolved_images`] / [`ScrapeContext::backing_devices`], which wait until
//! every provider has finished (or shortly before the deadline) and resolve each image to its
//! host block devices once per scrape.
//!
//! Why over 500 lines: about 450 are the framework, the rest the tests of what it promises
//! (failures, timeouts and panics contained; consumers waiting for image providers).

pub mod crashtest;
pub mod host_diskstats;
pub mod host_image;
pub mod qga;
pub mod qmp;
pub mod qsd;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{Config, HostDevices};
use crate::metrics::Metrics;
pub use crate::scrape::{ImageRef, ResolvedImage, ScrapeContext};

/// The future a collector returns.
pub type CollectFuture<'a> = Pin<Box<dyn Future<Output = Result<(), CollectorError>> + Send + 'a>>;

/// One source of metrics. Implementations live in `src/collector/<name>.rs`.
///
/// ```ignore
/// impl Collector for MyCollector {
///     fn name(&self) -> &'static str { "my" }
///     fn collect<'a>(&'a self, ctx: &'a ScrapeContext, out: &'a mut Metrics) -> CollectFuture<'a> {
///         Box::pin(async move {
///             out.gauge("kvmio_my_thing", "Help.", &[("vm", "x")], 1.0);
///             Ok(())
///         })
///     }
/// }
/// ```
pub trait Collector: Send + Sync + 'static {
    /// The `collector` label value: lowercase, stable (`host_diskstats`, `qmp`, `qga`).
    fn name(&self) -> &'static str;

    /// Whether this collector publishes images with [`ScrapeContext::publish_images`]; host
    /// collectors wait for all such collectors before resolving images.
    fn provides_images(&self) -> bool {
        false
    }

    /// Adds this scrape's samples to `out`. Should finish before [`ScrapeContext::deadline`]
    /// (the framework stops it there); whatever it wrote into `out` by then is kept.
    fn collect<'a>(&'a self, ctx: &'a ScrapeContext, out: &'a mut Metrics) -> CollectFuture<'a>;
}

/// A collector made of a name and a function, for stand-ins that keep nothing between scrapes
/// but what the function captures (the tests' fake, slow, failing and duplicating collectors):
/// [`collector_fn`] builds one.
pub struct FnCollector<F> {
    name: &'static str,
    provides_images: bool,
    collect: F,
}

/// A [`Collector`] named `name` whose [`Collector::collect`] is `collect`.
pub fn collector_fn<F>(name: &'static str, collect: F) -> FnCollector<F>
where
    F: for<'a> Fn(&'a ScrapeContext, &'a mut Metrics) -> CollectFuture<'a> + Send + Sync + 'static,
{
    FnCollector {
        name,
        provides_images: false,
        collect,
    }
}

impl<F> FnCollector<F> {
    /// The same collector, publishing images ([`Collector::provides_images`]).
    pub fn providing_images(self) -> Self {
        FnCollector {
            provides_images: true,
            ..self
        }
    }
}

impl<F> fmt::Debug for FnCollector<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnCollector")
            .field("name", &self.name)
            .field("provides_images", &self.provides_images)
            .finish_non_exhaustive()
    }
}

impl<F> Collector for FnCollector<F>
where
    F: for<'a> Fn(&'a ScrapeContext, &'a mut Metrics) -> CollectFuture<'a> + Send + Sync + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn provides_images(&self) -> bool {
        self.provides_images
    }

    fn collect<'a>(&'a self, ctx: &'a ScrapeContext, out: &'a mut Metrics) -> CollectFuture<'a> {
        (self.collect)(ctx, out)
    }
}

/// Why a collector's scrape failed (logged; exported as `kvmio_collector_success 0`).
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// Reading a file failed.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The collector did not finish before the scrape deadline.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Anything else, in one line.
    #[error("{0}")]
    Failed(String),
    /// An error from a library using anyhow.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl CollectorError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CollectorError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Decrements the pending-provider count however the provider's task ends (return, timeout,
/// panic).
struct ProviderGuard(Arc<ScrapeContext>);

impl Drop for ProviderGuard {
    fn drop(&mut self) {
        self.0.provider_done();
    }
}

/// The collectors this build ships, for a configuration: the host collectors; the QMP and
/// guest-agent collectors (sharing one [`crate::vm::Fleet`]) when sockets or targets are
/// configured; the crash-test results with `--crashtest.results-dir`.
pub fn default_collectors(config: &Config) -> Vec<Arc<dyn Collector>> {
    collectors_and_fleet(config).0
}

/// [`default_collectors`] and the fleet the VM collectors share, if any.
fn collectors_and_fleet(
    config: &Config,
) -> (Vec<Arc<dyn Collector>>, Option<Arc<crate::vm::Fleet>>) {
    let mut list: Vec<Arc<dyn Collector>> = Vec::new();
    if config.host_devices != HostDevices::None {
        list.push(Arc::new(host_diskstats::HostDiskstats::new()));
    }
    list.push(Arc::new(host_image::HostImage));
    let mut shared = None;
    if config.has_vm_sources() {
        let fleet = Arc::new(crate::vm::Fleet::for_config(config));
        list.push(Arc::new(qmp::Qmp::new(fleet.clone())));
        list.push(Arc::new(qga::Qga::new(fleet.clone())));
        shared = Some(fleet);
    }
    if !config.qsd_socket_globs.is_empty() {
        list.push(Arc::new(qsd::Qsd::new(shared.clone())));
    }
    if let Some(dir) = &config.crashtest_results_dir {
        list.push(Arc::new(crashtest::Crashtest::new(dir.clone())));
    }
    (list, shared)
}

/// Runs scrapes: the set of collectors and the configuration.
pub struct Exporter {
    config: Arc<Config>,
    collectors: Vec<Arc<dyn Collector>>,
    /// One scrape at a time: a QMP monitor serves one client, so two overlapping scrapes would
    /// make each other's connections fail. A waiting scrape's budget counts from its request.
    scrape_lock: tokio::sync::Mutex<()>,
    /// The libvirt source of the default collectors' fleet (for the start-up check).
    libvirt: Option<Arc<crate::vm::libvirt::Libvirt>>,
    /// Duplicate series dropped since start (`kvmio_scrape_duplicate_series_total`).
    duplicate_series: AtomicU64,
}

/// A scrape made duplicate series and `--debug.fail-on-duplicate-series` is set: the scrape
/// fails (HTTP 500) instead of answering without them.
#[derive(Debug, thiserror::Error)]
#[error("{} duplicate series in this scrape (a kvmio bug): {}", .0.len(), .0.join("; "))]
pub struct DuplicateSeries(pub Vec<String>);

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter")
            .field("config", &self.config)
            .field("collectors", &self.collector_names())
            .finish()
    }
}

/// What a collector's task hands back: its samples, its result, how long it took.
type Outcome = (Metrics, Result<(), CollectorError>, Duration);

/// How long after the deadline the framework waits for tasks that ignore cancellation (a
/// collector blocking its thread) before giving up on them.
const DEADLINE_GRACE: Duration = Duration::from_millis(100);

/// Build information, exported as `kvmio_exporter_build_info`.
pub const BUILD_INFO: [(&str, &str); 3] = [
    ("version", env!("CARGO_PKG_VERSION")),
    ("rustc_version", env!("KVMIO_RUSTC_VERSION")),
    ("target", env!("KVMIO_BUILD_TARGET")),
];

impl Exporter {
    /// An exporter running exactly `collectors`.
    pub fn new(config: Arc<Config>, collectors: Vec<Arc<dyn Collector>>) -> Self {
        let mut names = BTreeSet::new();
        for c in &collectors {
            assert!(
                names.insert(c.name()),
                "collector {} registered twice",
                c.name()
            );
        }
        Exporter {
            config,
            collectors,
            scrape_lock: tokio::sync::Mutex::new(()),
            libvirt: None,
            duplicate_series: AtomicU64::new(0),
        }
    }

    /// An exporter running [`default_collectors`].
    pub fn with_default_collectors(config: Arc<Config>) -> Self {
        let (collectors, fleet) = collectors_and_fleet(&config);
        let mut exporter = Self::new(config, collectors);
        exporter.libvirt = fleet.and_then(|f| f.libvirt().cloned());
        exporter
    }

    /// The libvirt source, if the default collectors have one: the start-up check uses the
    /// same connection the scrapes will.
    pub fn libvirt(&self) -> Option<&Arc<crate::vm::libvirt::Libvirt>> {
        self.libvirt.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Names of the registered collectors, in registration order.
    pub fn collector_names(&self) -> Vec<&'static str> {
        self.collectors.iter().map(|c| c.name()).collect()
    }

    /// Runs one scrape and returns its metrics. Never fails: collector failures become
    /// `kvmio_collector_success 0`.
    pub async fn scrape(&self) -> Metrics {
        let started = Instant::now();
        let _one_at_a_time = self.scrape_lock.lock().await;
        let providers = self
            .collectors
            .iter()
            .filter(|c| c.provides_images())
            .count();
        let ctx = Arc::new(ScrapeContext::starting_at(
            self.config.clone(),
            providers,
            started,
        ));

        let mut tasks = JoinSet::new();
        let mut by_task = HashMap::new();
        for (index, collector) in self.collectors.iter().enumerate() {
            let collector = collector.clone();
            let ctx = ctx.clone();
            let handle = tasks.spawn(async move {
                let _provider = collector
                    .provides_images()
                    .then(|| ProviderGuard(ctx.clone()));
                let t0 = Instant::now();
                let mut out = Metrics::new();
                let result = match tokio::time::timeout_at(
                    ctx.deadline(),
                    collector.collect(&ctx, &mut out),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(CollectorError::Timeout(t0.elapsed())),
                };
                (out, result, t0.elapsed())
            });
            by_task.insert(handle.id(), index);
        }

        let mut outcomes: Vec<Option<Outcome>> = (0..self.collectors.len()).map(|_| None).collect();
        let hard_stop = ctx.deadline() + DEADLINE_GRACE;
        loop {
            match tokio::time::timeout_at(hard_stop, tasks.join_next_with_id()).await {
                Ok(None) => break,
                Ok(Some(Ok((id, outcome)))) => outcomes[by_task[&id]] = Some(outcome),
                Ok(Some(Err(join_error))) => {
                    let index = by_task[&join_error.id()];
                    let why = if join_error.is_panic() {
                        "panicked".to_owned()
                    } else {
                        "cancelled".to_owned()
                    };
                    outcomes[index] = Some((
                        Metrics::new(),
                        Err(CollectorError::Failed(why)),
                        started.elapsed(),
                    ));
                }
                Err(_) => {
                    tasks.abort_all();
                    break;
                }
            }
        }

        let mut metrics = Metrics::new();
        for (collector, outcome) in self.collectors.iter().zip(outcomes) {
            let name = collector.name();
            let (out, result, took) = outcome.unwrap_or_else(|| {
                (
                    Metrics::new(),
                    Err(CollectorError::Failed(
                        "did not stop at the deadline (blocking its thread?)".to_owned(),
                    )),
                    started.elapsed(),
                )
            });
            if let Err(e) = &result {
                tracing::warn!(
                    collector = name,
                    "collector failed: {}",
                    crate::errors::chain(&e)
                );
            }
            for why in out.rejected() {
                tracing::warn!(collector = name, "sample rejected: {why}");
            }
            let before = metrics.duplicates().len() + out.duplicates().len();
            metrics.merge(out);
            // Series this collector wrote that another collector had written already.
            for why in &metrics.duplicates()[before..] {
                tracing::warn!(collector = name, "sample rejected: {why}");
            }
            metrics.gauge(
                "kvmio_collector_duration_seconds",
                "Time a collector took in this scrape.",
                &[("collector", name)],
                took.as_secs_f64(),
            );
            metrics.gauge(
                "kvmio_collector_success",
                "1 if the collector completed this scrape without error, else 0.",
                &[("collector", name)],
                if result.is_ok() { 1.0 } else { 0.0 },
            );
        }
        metrics.info(
            "kvmio_exporter_build_info",
            "kvmio-exporter build: version, compiler and target.",
            &BUILD_INFO,
        );
        let duplicates = metrics.duplicates().len() as u64;
        if duplicates > 0 {
            tracing::error!(
                count = duplicates,
                "this scrape made duplicate series (a kvmio bug; only the first of each was \
                 kept): {}",
                metrics.duplicates().join("; ")
            );
        }
        let total = self
            .duplicate_series
            .fetch_add(duplicates, Ordering::Relaxed)
            + duplicates;
        metrics.counter(
            "kvmio_scrape_duplicate_series_total",
            "Series dropped because another series of the same name and labels was written in \
             the same scrape, since the exporter started. Always a kvmio bug (the log names \
             them): anything but 0 should be reported.",
            &[],
            total as f64,
        );
        metrics
    }

    /// Runs one scrape and renders it in the text format.
    pub async fn render(&self) -> String {
        self.scrape().await.encode_text()
    }

    /// [`Self::render`] for `/metrics`: fails with `--debug.fail-on-duplicate-series` when the
    /// scrape made a duplicate series.
    pub async fn render_checked(&self) -> Result<String, DuplicateSeries> {
        let metrics = self.scrape().await;
        if self.config.fail_on_duplicate_series && !metrics.duplicates().is_empty() {
            return Err(DuplicateSeries(metrics.duplicates().to_vec()));
        }
        Ok(metrics.encode_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes one sample, then succeeds or fails with `result`.
    fn fixed(name: &'static str, result: Result<(), &'static str>) -> Arc<dyn Collector> {
        Arc::new(collector_fn(name, move |_, out| {
            out.gauge("kvmio_test_value", "Test.", &[("from", name)], 1.0);
            Box::pin(async move { result.map_err(|e| CollectorError::Failed(e.to_owned())) })
        }))
    }

    /// Writes one sample, then hangs past the deadline.
    fn slow() -> Arc<dyn Collector> {
        Arc::new(collector_fn("slow", |_, out| {
            out.gauge("kvmio_test_value", "Test.", &[("from", "slow")], 1.0);
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            })
        }))
    }

    /// An image provider that panics.
    fn panics() -> Arc<dyn Collector> {
        let c = collector_fn("panics", |_, _| Box::pin(async { panic!("collector bug") }));
        Arc::new(c.providing_images())
    }

    /// Publishes an image after `delay`.
    fn publisher(delay: Duration) -> Arc<dyn Collector> {
        let c = collector_fn("publisher", move |ctx, _| {
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                ctx.publish_images([ImageRef {
                    vm: "vm1".into(),
                    device: "virtio0".into(),
                    image: "/nonexistent/vm1.qcow2".into(),
                }]);
                Ok(())
            })
        });
        Arc::new(c.providing_images())
    }

    /// Records the images it saw as a gauge.
    fn consumer() -> Arc<dyn Collector> {
        Arc::new(collector_fn("consumer", |ctx, out| {
            Box::pin(async move {
                let images = ctx.resolved_images().await;
                out.gauge("kvmio_test_images", "Test.", &[], images.len() as f64);
                Ok(())
            })
        }))
    }

    /// One scrape of `collectors` with `--scrape.timeout` `timeout`.
    async fn scrape(timeout: Duration, collectors: Vec<Arc<dyn Collector>>) -> Metrics {
        let config = Arc::new(Config {
            scrape_timeout: timeout,
            ..Config::default()
        });
        Exporter::new(config, collectors).scrape().await
    }

    #[tokio::test]
    async fn failures_timeouts_and_panics_are_contained() {
        let t0 = std::time::Instant::now();
        let collectors = vec![
            fixed("ok", Ok(())),
            fixed("bad", Err("boom")),
            slow(),
            panics(),
        ];
        // A deadline the instant collectors meet even on a loaded 2-core CI machine (300 ms
        // once did not); only `slow` outlives it.
        let m = scrape(Duration::from_secs(2), collectors).await;
        assert!(t0.elapsed() < Duration::from_secs(20));
        let ok = |c| m.value("kvmio_collector_success", &[("collector", c)]);
        assert_eq!(ok("ok"), Some(1.0));
        assert_eq!(ok("bad"), Some(0.0));
        assert_eq!(ok("slow"), Some(0.0));
        assert_eq!(ok("panics"), Some(0.0));
        // Samples written before a failure or the deadline are kept.
        assert_eq!(m.value("kvmio_test_value", &[("from", "bad")]), Some(1.0));
        assert_eq!(m.value("kvmio_test_value", &[("from", "slow")]), Some(1.0));
        let slow = m
            .value("kvmio_collector_duration_seconds", &[("collector", "slow")])
            .unwrap();
        assert!((1.9..20.0).contains(&slow), "{slow}");
        assert!(m.contains("kvmio_exporter_build_info"));
        assert!(m.rejected().is_empty(), "{:?}", m.rejected());
    }

    #[tokio::test]
    async fn consumers_wait_for_image_providers() {
        let providers = vec![consumer(), publisher(Duration::from_millis(100))];
        let m = scrape(Duration::from_secs(5), providers).await;
        assert_eq!(m.value("kvmio_test_images", &[]), Some(1.0));
    }

    #[tokio::test]
    async fn consumers_do_not_wait_for_a_panicked_provider() {
        let t0 = std::time::Instant::now();
        let m = scrape(Duration::from_secs(30), vec![consumer(), panics()]).await;
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!(m.value("kvmio_test_images", &[]), Some(0.0));
    }

    #[tokio::test]
    async fn late_provider_leaves_consumer_time() {
        // The provider outlives the deadline; the consumer stops waiting before it.
        let providers = vec![consumer(), publisher(Duration::from_secs(3600))];
        let m = scrape(Duration::from_millis(800), providers).await;
        let ok = |c| m.value("kvmio_collector_success", &[("collector", c)]);
        assert_eq!(ok("consumer"), Some(1.0));
        assert_eq!(ok("publisher"), Some(0.0));
        assert_eq!(m.value("kvmio_test_images", &[]), Some(0.0));
    }
}
