//! kvmio-exporter: a Prometheus exporter for every layer of a KVM/QEMU VM's storage IO.
//!
//! Module map:
//! - [`metrics`]: the per-scrape metric builder ([`metrics::Metrics`]) and label hygiene;
//! - [`collector`]: the [`collector::Collector`] trait, the scrape runner
//!   ([`collector::Exporter`]), the per-scrape [`collector::ScrapeContext`], and one collector per
//!   file (`host_diskstats`, `host_image`, `qmp`, `qga`, `crashtest`);
//! - [`discovery`] and [`glob`]: which VMs' sockets to scrape, found at each scrape;
//! - [`vm`]: the VMs of a scrape, from their sources (monitor and agent sockets, or
//!   [`vm::libvirt`]: a libvirtd's domains through libvirt's own connection) into one snapshot
//!   model, queried concurrently under one deadline, with pooled connections and per-process
//!   caches; the guest disk <-> device join;
//! - [`scrape`]: one scrape's shared context and how its time is split;
//! - [`textformat`]: a strict text-format parser for the crash-test results file;
//! - [`host`]: host-side facts: `/proc/diskstats` parsing, image file to block device resolution
//!   through sysfs, page-cache residency (cachestat/mincore);
//! - [`config`] and [`cli`]: flags, config file, the resolved [`config::Config`];
//! - [`errors`]: errors printed as one line with their sources;
//! - [`http`]: the hyper server;
//! - [`permissions`]: which families the process's privileges cost, said once at start-up.

pub mod cli;
pub mod collector;
pub mod config;
pub mod discovery;
pub mod errors;
pub mod glob;
pub mod host;
pub mod http;
pub mod metrics;
pub mod permissions;
pub mod scrape;
pub mod textformat;
pub mod vm;

pub use collector::{Collector, CollectorError, Exporter, ImageRef, ScrapeContext};
pub use config::Config;
pub use metrics::Metrics;
