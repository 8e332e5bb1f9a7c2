//! qemu-storage-daemon exports (`--qsd.socket-glob`; the source is [`crate::vm::qsd`]):
//!
//! - `kvmio_qsd_up{daemon}`: the daemon's monitor answered (`daemon` is its socket path);
//! - `kvmio_qsd_export_info{daemon,export,type,node,format,driver,image,addr,vm,device}`: each
//!   export, the image under it and where clients reach it, joined to the VM device that uses
//!   it where that can be known: a vhost-user-blk device whose chardev socket is the export's
//!   socket, or a drive whose file is the NBD export's URI or the FUSE export's mount point;
//! - `kvmio_qsd_image_virtual_size_bytes`, `kvmio_qsd_image_allocated_bytes{daemon,export,image}`;
//! - `kvmio_qsd_node_highest_written_offset_bytes{daemon,export,node,driver}`: the export's node
//!   and the nodes under it (all QEMU 7.2 accounts per node; exports themselves count nothing);
//! - `kvmio_qsd_process_{read,written}_bytes_total{daemon}`: the daemon process's host IO.

use std::collections::HashMap;
use std::sync::Arc;

use kvmio_qemu::types::BlockStats;
use tokio::task::JoinSet;

use super::{CollectFuture, Collector, ScrapeContext};
use crate::metrics::Metrics;
use crate::vm::qsd::{self, DaemonSnapshot};
use crate::vm::{Fleet, VmOutcome};

/// The collector; with the VM fleet (when VM sources are configured) for the join.
#[derive(Debug)]
pub struct Qsd {
    fleet: Option<Arc<Fleet>>,
}

impl Qsd {
    /// A collector joining exports to the VMs of `fleet`, if any.
    pub fn new(fleet: Option<Arc<Fleet>>) -> Self {
        Qsd { fleet }
    }
}

impl Collector for Qsd {
    fn name(&self) -> &'static str {
        "qsd"
    }

    fn collect<'a>(&'a self, ctx: &'a ScrapeContext, out: &'a mut Metrics) -> CollectFuture<'a> {
        Box::pin(async move {
            let config = Arc::new(ctx.config().clone());
            let deadline = ctx.vm_deadline();
            let sockets = qsd::discover(&config);
            let mut set = JoinSet::new();
            for (i, socket) in sockets.iter().cloned().enumerate() {
                let config = config.clone();
                set.spawn(async move { (i, qsd::scrape(&socket, &config, deadline).await) });
            }
            let mut results: Vec<Option<Result<DaemonSnapshot, String>>> =
                sockets.iter().map(|_| None).collect();
            while let Some(joined) = set.join_next().await {
                if let Ok((i, r)) = joined {
                    results[i] = Some(r);
                }
            }
            let users = match &self.fleet {
                Some(fleet) => users(&fleet.outcomes(ctx).await),
                None => HashMap::new(),
            };
            for (socket, result) in sockets.iter().zip(results) {
                let result = result.unwrap_or_else(|| Err("scrape task failed".to_owned()));
                emit(out, socket, &result, &users);
            }
            Ok(())
        })
    }
}

/// Where VMs reach their disks -> (vm label, device label): vhost-user chardev sockets, and
/// drive files (an NBD URI, a FUSE mount point).
fn users(outcomes: &[VmOutcome]) -> HashMap<String, (String, String)> {
    let mut out = HashMap::new();
    for o in outcomes {
        let Some(Ok(snap)) = &o.qmp else { continue };
        for d in snap.other_devices.iter() {
            if !d.socket.is_empty() {
                out.insert(d.socket.clone(), (o.vm.clone(), d.id.clone()));
            }
        }
        for (device, _, inserted) in snap.backends() {
            out.insert(inserted.file.clone(), (o.vm.clone(), device.to_owned()));
        }
    }
    out
}

/// The node named `name` in `query-blockstats` (nodes) and the nodes below it, top first.
fn chain<'a>(stats: &'a [BlockStats], name: &str) -> Vec<&'a BlockStats> {
    let mut out = Vec::new();
    let mut cur = stats.iter().find(|s| s.node_name.as_deref() == Some(name));
    while let Some(s) = cur {
        if out.len() >= 16 {
            break;
        }
        out.push(s);
        cur = s.parent.as_deref();
    }
    out
}

fn emit(
    out: &mut Metrics,
    socket: &std::path::Path,
    result: &Result<DaemonSnapshot, String>,
    users: &HashMap<String, (String, String)>,
) {
    let daemon = socket.display().to_string();
    let daemon = daemon.as_str();
    out.gauge(
        "kvmio_qsd_up",
        "1 if the qemu-storage-daemon's QMP monitor answered this scrape, else 0.",
        &[("daemon", daemon)],
        if result.is_ok() { 1.0 } else { 0.0 },
    );
    let snap = match result {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(daemon, "qemu-storage-daemon down: {e}");
            return;
        }
    };
    let node = |name: &str| {
        snap.nodes
            .iter()
            .find(|n| n.node_name.as_deref() == Some(name))
    };
    let drv = |name: &str| node(name).map(|n| n.drv.clone()).unwrap_or_default();
    let mut exports: Vec<_> = snap.exports.iter().collect();
    exports.sort_by(|a, b| a.id.cmp(&b.id));
    for e in exports {
        let nodes = chain(&snap.node_stats, &e.node);
        let top = node(&e.node);
        // The protocol node: the bottom of the chain (`file` under `raw`/`qcow2`).
        let bottom = nodes
            .last()
            .and_then(|s| s.node_name.as_deref())
            .and_then(&node);
        let image = bottom.or(top).map(|n| n.file.clone()).unwrap_or_default();
        let (vm, device) = users
            .get(&e.addr)
            .filter(|_| !e.addr.is_empty())
            .cloned()
            .unwrap_or_default();
        let driver = bottom.map(|n| n.drv.clone()).unwrap_or_default();
        out.info(
            "kvmio_qsd_export_info",
            "A qemu-storage-daemon block export: type (vhost-user-blk, nbd, fuse), its node, \
             image format and protocol driver, image file, where clients reach it (addr: the \
             vhost-user socket, nbd URI or FUSE mount point, from the daemon's command line) and \
             the VM device using it, where known.",
            &[
                ("daemon", daemon),
                ("export", &e.id),
                ("type", &e.kind),
                ("node", &e.node),
                ("format", &drv(&e.node)),
                ("driver", &driver),
                ("image", &image),
                ("addr", &e.addr),
                ("vm", &vm),
                ("device", &device),
            ],
        );
        if let Some(info) = top.and_then(|n| n.image.as_ref()) {
            let labels = [
                ("daemon", daemon),
                ("export", e.id.as_str()),
                ("image", &image),
            ];
            out.gauge(
                "kvmio_qsd_image_virtual_size_bytes",
                "Size of an exported image as its clients see it.",
                &labels,
                info.virtual_size as f64,
            );
            if let Some(actual) = info.actual_size {
                out.gauge(
                    "kvmio_qsd_image_allocated_bytes",
                    "Bytes an exported image occupies on the host.",
                    &labels,
                    actual as f64,
                );
            }
        }
        for s in nodes {
            let name = s.node_name.as_deref().unwrap_or_default();
            out.gauge(
                "kvmio_qsd_node_highest_written_offset_bytes",
                "Highest offset written on a node under a qemu-storage-daemon export (QEMU \
                 counts no requests for exports; this and the daemon's process IO are what \
                 it has).",
                &[
                    ("daemon", daemon),
                    ("export", &e.id),
                    ("node", name),
                    ("driver", &drv(name)),
                ],
                s.stats.wr_highest_offset as f64,
            );
        }
    }
    if let Some(io) = snap.process_io {
        for (name, verb, field, bytes) in [
            ("read", "read from", "read_bytes", io.read_bytes),
            ("written", "written to", "write_bytes", io.write_bytes),
        ] {
            out.counter(
                &format!("kvmio_qsd_process_{name}_bytes_total"),
                &format!(
                    "Bytes the qemu-storage-daemon process caused to be {verb} host storage \
                     (/proc/PID/io {field}), all its exports together."
                ),
                &[("daemon", daemon)],
                bytes as f64,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::qsd::{export_addrs, Export};
    use std::path::Path;

    /// The replies and command line of a real qemu-storage-daemon 7.2 (three exports: vhost-user-blk,
    /// NBD, FUSE; `KVMIO_CAPTURE_QSD=DIR cargo test -p kvmio-exporter --test qsd_real`), through
    /// the collector's emit, against `tests/golden/qsd-7.2.prom` (`UPDATE_GOLDEN=1` rewrites it).
    #[test]
    fn golden_from_a_real_daemon() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("tests/fixtures/qemu-7.2-qsd");
        let read = |name: &str| -> serde_json::Value {
            let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["return"].clone()
        };
        let args: Vec<String> = std::fs::read(dir.join("cmdline"))
            .unwrap()
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let addrs = export_addrs(&args);
        let exports: Vec<Export> = read("query-block-exports")
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                let id = s("id");
                Export {
                    addr: addrs
                        .iter()
                        .find(|(i, _)| *i == id)
                        .map(|(_, a)| a.clone())
                        .unwrap_or_default(),
                    id,
                    kind: s("type"),
                    node: s("node-name"),
                    shutting_down: e["shutting-down"].as_bool().unwrap_or(false),
                }
            })
            .collect();
        assert_eq!(exports.len(), 3);
        assert!(exports.iter().all(|e| !e.addr.is_empty()), "{exports:?}");
        let snap = DaemonSnapshot {
            pid: None,
            exports,
            nodes: serde_json::from_value(read("query-named-block-nodes")).unwrap(),
            node_stats: serde_json::from_value(read("query-blockstats-nodes")).unwrap(),
            process_io: None,
        };
        let mut out = Metrics::new();
        emit(
            &mut out,
            Path::new("/run/qsd/qsd.qmp"),
            &Ok(snap),
            &HashMap::new(),
        );
        assert!(out.rejected().is_empty(), "{:?}", out.rejected());
        let got = out.encode_text();
        let golden = root.join("tests/golden/qsd-7.2.prom");
        if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v != "0") {
            std::fs::write(&golden, &got).unwrap();
            return;
        }
        assert_eq!(got, std::fs::read_to_string(&golden).unwrap());
    }
}
