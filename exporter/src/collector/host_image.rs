//! `host_image`: host page cache held by each published image file,
//! `kvmio_host_image_cached_bytes{vm,device,image}` (and `kvmio_host_image_dirty_bytes` where
//! `cachestat(2)` gives it), from [`crate::host::pagecache`].
//!
//! Images come from [`ScrapeContext::images`] (published by the QMP collector); an image that is
//! not a local file (NBD, RBD, `json:` filenames) or cannot be opened is skipped with a debug log.

use super::{CollectFuture, Collector, CollectorError, ScrapeContext};
use crate::host::pagecache::{page_cache_usage, PageCacheUsage};
use crate::metrics::Metrics;

/// The collector.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostImage;

impl Collector for HostImage {
    fn name(&self) -> &'static str {
        "host_image"
    }

    fn collect<'a>(&'a self, ctx: &'a ScrapeContext, out: &'a mut Metrics) -> CollectFuture<'a> {
        Box::pin(async move {
            let images = ctx.images().await;
            if images.is_empty() {
                return Ok(());
            }
            // open() and the syscalls can block on a dead network filesystem: off the async
            // threads, bounded by the deadline.
            let job = tokio::task::spawn_blocking(move || {
                images
                    .into_iter()
                    .filter(|i| i.image.is_absolute())
                    .map(|i| {
                        let usage = page_cache_usage(&i.image);
                        (i, usage)
                    })
                    .collect::<Vec<_>>()
            });
            let results = tokio::time::timeout_at(ctx.deadline(), job)
                .await
                .map_err(|_| CollectorError::Failed("page-cache measurement timed out".into()))?
                .map_err(|e| CollectorError::Failed(format!("page-cache task: {e}")))?;
            for (image, usage) in results {
                match usage {
                    Ok(u) => emit(
                        out,
                        &image.vm,
                        &image.device,
                        &image.image.to_string_lossy(),
                        u,
                    ),
                    Err(e) => {
                        tracing::debug!(vm = %image.vm, "no page-cache figure: {}", crate::errors::chain(&e))
                    }
                }
            }
            Ok(())
        })
    }
}

fn emit(out: &mut Metrics, vm: &str, device: &str, image: &str, u: PageCacheUsage) {
    let labels = [("vm", vm), ("device", device), ("image", image)];
    out.gauge(
        "kvmio_host_image_cached_bytes",
        "Bytes of the image file held in the host page cache.",
        &labels,
        u.cached_bytes as f64,
    );
    if let Some(dirty) = u.dirty_bytes {
        out.gauge(
            "kvmio_host_image_dirty_bytes",
            "Bytes of the image file dirty in the host page cache (not yet written back; \
             lost if the host crashes).",
            &labels,
            dirty as f64,
        );
    }
}
