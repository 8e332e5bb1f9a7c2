//! One scrape's shared state and its time budget: the [`ScrapeContext`] every collector gets,
//! the images the VM side publishes for the host side, and the [`Budget`] that splits
//! `--scrape.timeout` between the VMs, the host collectors and emitting.
//!
//! The budget, in one place: a scrape ends at `started + --scrape.timeout` (the *deadline*). The
//! host collectors, which wait for the published images, keep the last quarter of the timeout
//! (at most 0.5 s) for themselves; emitting keeps a tenth (at most 0.25 s) before that. Each
//! VM's work ends at the *VM deadline*, what is left; the QMP collector resolves its images to
//! host devices by half-way through the emit reserve.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, OnceCell};
use tokio::time::Instant;

use crate::config::Config;
use crate::host::blockdev::{resolve_images, ImageDevice};

/// How a scrape's time is split (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Kept for the host collectors after the images are published.
    pub host_reserve: Duration,
    /// Kept for emitting after the VMs' work.
    pub emit_reserve: Duration,
}

impl Budget {
    /// The budget for a scrape timeout.
    pub fn for_timeout(timeout: Duration) -> Self {
        Budget {
            host_reserve: (timeout / 4).min(Duration::from_millis(500)),
            emit_reserve: (timeout / 10).min(Duration::from_millis(250)),
        }
    }
}

/// An image file a VM uses, published by the QMP collector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// `vm` label.
    pub vm: String,
    /// QEMU device (`device` label), e.g. `virtio0` or the qdev id.
    pub device: String,
    /// The image file (or block device) path as QEMU opened it.
    pub image: PathBuf,
}

/// An image and the host block devices under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The published image.
    pub image: ImageRef,
    /// Its host devices, or why there are none.
    pub device: ImageDevice,
}

/// Shared state of one scrape, handed to every collector.
#[derive(Debug)]
pub struct ScrapeContext {
    config: Arc<Config>,
    started: Instant,
    deadline: Instant,
    images: Mutex<Vec<ImageRef>>,
    providers_left: watch::Sender<usize>,
    resolved: OnceCell<Arc<Vec<ResolvedImage>>>,
    /// Image paths resolved in this scrape (the QMP collector and the host collectors resolve
    /// the same images).
    resolved_paths: Arc<Mutex<HashMap<PathBuf, ImageDevice>>>,
}

impl ScrapeContext {
    /// A context whose deadline is `now + config.scrape_timeout`, expecting `image_providers`
    /// collectors to publish images.
    pub fn new(config: Arc<Config>, image_providers: usize) -> Self {
        Self::starting_at(config, image_providers, Instant::now())
    }

    pub(crate) fn starting_at(
        config: Arc<Config>,
        image_providers: usize,
        started: Instant,
    ) -> Self {
        let deadline = started + config.scrape_timeout;
        ScrapeContext {
            config,
            started,
            deadline,
            images: Mutex::new(Vec::new()),
            providers_left: watch::Sender::new(image_providers),
            resolved: OnceCell::new(),
            resolved_paths: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The exporter configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// How this scrape's time is split.
    pub fn budget(&self) -> Budget {
        Budget::for_timeout(self.config.scrape_timeout)
    }

    /// When each VM's work must be done: the deadline minus both reserves (never before the
    /// start).
    pub fn vm_deadline(&self) -> Instant {
        let b = self.budget();
        self.deadline
            .checked_sub(b.host_reserve + b.emit_reserve)
            .unwrap_or(self.started)
            .max(self.started)
    }

    /// By when the QMP collector must have resolved the images to host devices: half-way
    /// through the emit reserve after the VM deadline.
    pub fn resolve_deadline(&self) -> Instant {
        (self.vm_deadline() + self.budget().emit_reserve / 2).min(self.deadline)
    }

    /// When the scrape must be complete. Derive per-call timeouts from it.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left until the deadline (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// When the scrape started (the HTTP request arrived).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Publishes images (call any number of times; only from a collector whose
    /// [`crate::collector::Collector::provides_images`] is true, before its `collect` returns).
    pub fn publish_images(&self, images: impl IntoIterator<Item = ImageRef>) {
        let mut list = self.images.lock().unwrap_or_else(|e| e.into_inner());
        list.extend(images);
    }

    /// Marks one image provider finished (the framework does this when its task ends).
    pub fn provider_done(&self) {
        self.providers_left
            .send_modify(|n| *n = n.saturating_sub(1));
    }

    /// The images published this scrape, sorted and deduplicated, once every image provider has
    /// finished - or, if one is late, shortly before the deadline (so the caller still has time to
    /// use them) with what was published until then. For consumers (host collectors); an image
    /// provider calling it would wait for itself until shortly before the deadline.
    pub async fn images(&self) -> Vec<ImageRef> {
        let mut rx = self.providers_left.subscribe();
        let wait_until = self
            .deadline
            .checked_sub(self.budget().host_reserve)
            .unwrap_or(self.started);
        if tokio::time::timeout_at(wait_until, rx.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::debug!("image providers still running; using the images published so far");
        }
        let mut list = self
            .images
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        list.sort();
        list.dedup();
        list
    }

    /// [`Self::images`], each resolved to its host block devices (computed once per scrape).
    ///
    /// Like [`Self::images`], not for image providers themselves (they would wait for their own
    /// completion): they use [`Self::resolve_image_paths`].
    pub async fn resolved_images(&self) -> Arc<Vec<ResolvedImage>> {
        self.resolved
            .get_or_init(|| async {
                let images = self.images().await;
                let paths = images.iter().map(|i| i.image.clone()).collect();
                let devices = self.resolve_image_paths(paths).await;
                let resolved: Vec<ResolvedImage> = images
                    .into_iter()
                    .zip(devices)
                    .map(|(image, device)| ResolvedImage { image, device })
                    .collect();
                for r in &resolved {
                    if let Some(reason) = r.device.reason() {
                        tracing::debug!(vm = %r.image.vm, device = %r.image.device, "no host device: {reason}");
                    }
                }
                Arc::new(resolved)
            })
            .await
            .clone()
    }

    /// Resolves image paths to host block devices now, in the blocking pool (`stat()` can hang
    /// on a dead network filesystem), bounded by the deadline: an image not resolved in time is
    /// [`ImageDevice::Unresolved`]. One result per path, in order. For the QMP collector's
    /// `host_device` label. Each path is resolved once per scrape.
    pub async fn resolve_image_paths(&self, paths: Vec<PathBuf>) -> Vec<ImageDevice> {
        self.resolve_image_paths_until(paths, self.deadline).await
    }

    /// [`Self::resolve_image_paths`], bounded by `until` (at most the scrape deadline).
    pub async fn resolve_image_paths_until(
        &self,
        paths: Vec<PathBuf>,
        until: Instant,
    ) -> Vec<ImageDevice> {
        if paths.is_empty() {
            return Vec::new();
        }
        let memo = self.resolved_paths.clone();
        let missing: Vec<PathBuf> = {
            let done = memo.lock().unwrap_or_else(|e| e.into_inner());
            let mut m: Vec<PathBuf> = paths
                .iter()
                .filter(|p| !done.contains_key(*p))
                .cloned()
                .collect();
            m.sort();
            m.dedup();
            m
        };
        if !missing.is_empty() {
            let procfs = self.config.procfs.clone();
            let sysfs = self.config.sysfs.clone();
            let job = tokio::task::spawn_blocking(move || {
                let devices = resolve_images(&missing, &procfs, &sysfs);
                missing.into_iter().zip(devices).collect::<Vec<_>>()
            });
            let why = match tokio::time::timeout_at(until.min(self.deadline), job).await {
                Ok(Ok(devices)) => {
                    memo.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(devices);
                    None
                }
                Ok(Err(e)) => Some(format!("image resolution failed: {e}")),
                Err(_) => Some("image resolution timed out".to_owned()),
            };
            if let Some(why) = why {
                let done = memo.lock().unwrap_or_else(|e| e.into_inner());
                return paths
                    .iter()
                    .map(|p| {
                        done.get(p)
                            .cloned()
                            .unwrap_or_else(|| ImageDevice::Unresolved {
                                reason: why.clone(),
                            })
                    })
                    .collect();
            }
        }
        let done = memo.lock().unwrap_or_else(|e| e.into_inner());
        paths
            .iter()
            .map(|p| {
                done.get(p)
                    .cloned()
                    .unwrap_or_else(|| ImageDevice::Unresolved {
                        reason: "not resolved".to_owned(),
                    })
            })
            .collect()
    }

    /// The host devices that back this scrape's images: for each resolved image, its fs device,
    /// host device and physical disks (see [`crate::host::blockdev::BackingDevice::all_devices`]).
    pub async fn backing_devices(&self) -> BTreeSet<String> {
        self.resolved_images()
            .await
            .iter()
            .filter_map(|r| r.device.backing())
            .flat_map(|b| b.all_devices())
            .collect()
    }
}
