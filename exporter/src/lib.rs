//! kvmio-exporter: a Prometheus exporter for every layer of a KVM/QEMU VM's storage IO.
//!
//! The shape: VM *sources* (monitor and agent sockets found by [`discovery`]; Proxmox's
//! sockets; a libvirtd's domains, [`vm::libvirt`]) feed one *snapshot model*
//! ([`vm::QmpSnapshot`], [`vm::QgaSnapshot`], the guest disk join) for every VM of a scrape
//! ([`vm::Fleet`]); *collectors* read snapshots and host facts and write metrics; the *scrape*
//! ([`scrape::ScrapeContext`]) holds the deadline and how the time is split. Dependencies run
//! one way: `http -> collector -> vm -> scrape -> host`, with `config`, `metrics` and `errors`
//! below all: no module here imports one that imports it back. Inside `vm`, the snapshot types
//! (`vm::qmp`) import nothing that fills them.
//!
//! Module map:
//! - [`metrics`]: the per-scrape metric builder ([`metrics::Metrics`]), label hygiene, the text
//!   encoder;
//! - [`collector`]: the [`collector::Collector`] trait (and [`collector::collector_fn`] for
//!   stand-ins), the scrape runner ([`collector::Exporter`]), and one collector per file
//!   (`host_diskstats`, `host_image`, `qmp` with its `qmp/stats`, `qmp/config` and
//!   `qmp/backend` families, `qga`, `qsd`, `crashtest`);
//! - [`vm`]: the fleet and its sources: `target` (what a VM is), `socket` (a socket VM's scrape),
//!   `qmp` (the QEMU snapshot model), `monitor` (the monitor's queries, the per-process cache, a
//!   socket VM's QMP scrape), `qom` (device facts from QOM), `connection` (the pooled
//!   monitor/agent connection), `qga`, `cmdline`, `join`, `qsd` (qemu-storage-daemon), `libvirt`;
//! - [`discovery`] and [`glob`]: which sockets to scrape, found at each scrape;
//! - [`scrape`]: one scrape's shared context and how its time is split;
//! - [`textformat`]: a strict text-format parser for the crash-test results file;
//! - [`host`]: host-side facts: `/proc/diskstats` parsing, image file to block device resolution
//!   through sysfs, page-cache residency (cachestat/mincore);
//! - [`config`] and [`cli`]: flags, config file, the resolved [`config::Config`];
//! - [`errors`]: errors printed as one line with their sources;
//! - [`http`]: the hyper server;
//! - [`web`]: `--web.config.file` (TLS, client certificates, basic auth, headers);
//! - [`logging`]: `--log.level`, `--log.format` (logfmt, json);
//! - [`permissions`]: which families the process's privileges cost, said once at start-up.

pub mod cli;
pub mod collector;
pub mod config;
pub mod discovery;
pub mod errors;
pub mod glob;
pub mod host;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod permissions;
pub mod scrape;
pub mod textformat;
pub mod vm;
pub mod web;

#[cfg(test)]
mod testing;

pub use collector::{Collector, CollectorError, Exporter, ImageRef, ScrapeContext};
pub use config::Config;
pub use metrics::Metrics;
