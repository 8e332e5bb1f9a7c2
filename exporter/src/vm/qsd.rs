//! qemu-storage-daemon monitors as targets (`--qsd.socket-glob`, `qsd_socket_globs` in
//! `--config`): a daemon's block exports (vhost-user-blk, NBD, FUSE), the nodes under them and
//! the daemon process's host IO, read at every scrape over the daemon's QMP monitor with the same
//! client and connection code as a VM's (`kvmio-qemu`, [`super::connection`]).
//!
//! What QEMU 7.2's daemon can tell (checked against a real one, `tests/qsd_real.rs`):
//! `query-block-exports` lists each export's id, type and node; `query-named-block-nodes` each
//! node's driver, image file and sizes, cache flags; `query-blockstats` with `query-nodes` each
//! node's highest written offset and, for `file`/`host_device` nodes, discard counts. It does
//! **not** count an export's requests: an export's block backend is anonymous, so
//! `query-blockstats` without `query-nodes` answers `[]`, and the export code does no block
//! accounting. The IO a daemon does shows as its process's host IO (`/proc/PID/io`), the host
//! devices under its images, and the guest's own disk statistics.
//!
//! `query-block-exports` does not give an export's address (the vhost-user socket, the NBD
//! server, the FUSE mount point): it is read from the daemon's command line (`--export`,
//! `--nbd-server`, key=value or JSON), so an export added later over QMP has an empty `addr`.

use std::collections::BTreeSet;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use kvmio_qemu::types::{BlockDeviceInfo, BlockStats};
use kvmio_qemu::{Limits, Qmp, QmpCommands};
use serde::Deserialize;
use tokio::time::{timeout_at, Instant};

use super::cmdline::{parse_opts, read_args, Opts};
use super::connection::{connect_unix, until};
use super::qmp::{read_process_io, ProcessIo};
use crate::config::Config;
use crate::errors::chain;
use crate::glob;

/// At most this many daemons are scraped (sorted by socket path; the rest are logged).
pub const MAX_DAEMONS: usize = 256;
/// At most this many exports, and nodes, are kept per daemon.
pub const MAX_EXPORTS: usize = 1024;
/// A daemon's command line is read up to this size.
const MAX_CMDLINE_BYTES: u64 = 256 * 1024;
/// The longest monitor reply line accepted (a daemon with many nodes answers in tens of KiB).
const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// The daemon sockets `config` names now: Unix sockets matching `--qsd.socket-glob`, sorted,
/// at most [`MAX_DAEMONS`].
pub fn discover(config: &Config) -> Vec<PathBuf> {
    let mut found: BTreeSet<PathBuf> = BTreeSet::new();
    for pattern in &config.qsd_socket_globs {
        found.extend(
            glob::expand(pattern)
                .into_iter()
                .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())),
        );
    }
    if found.len() > MAX_DAEMONS {
        tracing::warn!(
            found = found.len(),
            "more than {MAX_DAEMONS} qemu-storage-daemon sockets; the first {MAX_DAEMONS} are scraped"
        );
    }
    found.into_iter().take(MAX_DAEMONS).collect()
}

/// One export, as `query-block-exports` lists it, with its address from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub id: String,
    /// `vhost-user-blk`, `nbd`, `fuse`, `vduse-blk`.
    pub kind: String,
    pub node: String,
    pub shutting_down: bool,
    /// Where clients reach it: the vhost-user socket path, the FUSE mount point, or for NBD
    /// `nbd+unix:///NAME?socket=PATH` / `nbd://HOST:PORT/NAME`; empty if not on the command line.
    pub addr: String,
}

/// What one scrape learned from a daemon.
#[derive(Debug, Clone, Default)]
pub struct DaemonSnapshot {
    /// The daemon process (the monitor socket's peer).
    pub pid: Option<u32>,
    pub exports: Vec<Export>,
    /// `query-named-block-nodes` (flat).
    pub nodes: Vec<BlockDeviceInfo>,
    /// `query-blockstats` with `query-nodes`.
    pub node_stats: Vec<BlockStats>,
    pub process_io: Option<ProcessIo>,
}

#[derive(Debug, Deserialize)]
struct ExportInfo {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "node-name")]
    node_name: String,
    #[serde(rename = "shutting-down", default)]
    shutting_down: bool,
}

/// Scrapes one daemon within `deadline`: connect, handshake, three queries, disconnect.
pub async fn scrape(
    socket: &Path,
    config: &Config,
    deadline: Instant,
) -> Result<DaemonSnapshot, String> {
    let (stream, pid) = connect_unix(socket, deadline)
        .await
        .map_err(|e| chain(&e))?;
    let limits = Limits::DEFAULT
        .with_call_timeout(until(deadline))
        .with_max_line_bytes(MAX_LINE_BYTES);
    let calls = async {
        let mut qmp = Qmp::handshake(stream, limits).await?;
        let exports: Vec<ExportInfo> = qmp.execute("query-block-exports", None).await?;
        let nodes = qmp.query_named_block_nodes().await?;
        let node_stats = qmp.query_blockstats_with(true).await?;
        Ok::<_, kvmio_qemu::Error>((exports, nodes, node_stats))
    };
    let (exports, mut nodes, mut node_stats) = match timeout_at(deadline, calls).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(chain(&e)),
        Err(_) => return Err("qemu-storage-daemon queries timed out".to_owned()),
    };
    nodes.truncate(MAX_EXPORTS);
    node_stats.truncate(MAX_EXPORTS);
    let addrs = pid
        .map(|p| read_cmdline(&config.procfs, p))
        .map(|args| export_addrs(&args))
        .unwrap_or_default();
    let exports = exports
        .into_iter()
        .take(MAX_EXPORTS)
        .map(|e| Export {
            addr: addrs
                .iter()
                .find(|(id, _)| *id == e.id)
                .map(|(_, a)| a.clone())
                .unwrap_or_default(),
            id: e.id,
            kind: e.kind,
            node: e.node_name,
            shutting_down: e.shutting_down,
        })
        .collect();
    Ok(DaemonSnapshot {
        pid,
        exports,
        nodes,
        node_stats,
        process_io: pid.and_then(|p| read_process_io(&config.procfs, p)),
    })
}

/// `<procfs>/PID/cmdline` as arguments (bounded), empty ones left out; empty if unreadable.
fn read_cmdline(procfs: &Path, pid: u32) -> Vec<String> {
    let mut args = read_args(procfs, pid, MAX_CMDLINE_BYTES).unwrap_or_default();
    args.retain(|a| !a.is_empty());
    args
}

fn get<'a>(opts: &'a Opts, key: &str) -> Option<&'a str> {
    opts.get(key).map(String::as_str)
}

/// The address of a `unix`/`inet` socket option (`addr.type`, `addr.path`, `addr.host`...).
fn socket_addr(opts: &Opts) -> Option<(bool, String)> {
    match get(opts, "addr.type") {
        Some("unix") => get(opts, "addr.path").map(|p| (true, p.to_owned())),
        Some("inet") => {
            let host = get(opts, "addr.host")?;
            let port = get(opts, "addr.port").unwrap_or("10809");
            Some((false, format!("{host}:{port}")))
        }
        _ => None,
    }
}

/// `export id -> address` from a daemon's arguments (see [`Export::addr`]).
pub fn export_addrs(args: &[String]) -> Vec<(String, String)> {
    let value = |i: usize, flag: &str| -> Option<String> {
        let a = &args[i];
        if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
            return Some(v.to_owned());
        }
        (a == flag).then(|| args.get(i + 1).cloned()).flatten()
    };
    let mut nbd_server: Option<(bool, String)> = None;
    let mut exports: Vec<Opts> = Vec::new();
    for i in 0..args.len() {
        if let Some(v) = value(i, "--nbd-server") {
            nbd_server = socket_addr(&parse_opts(&v, None));
        } else if let Some(v) = value(i, "--export") {
            exports.push(parse_opts(&v, None));
        }
    }
    exports
        .into_iter()
        .filter_map(|o| {
            let id = get(&o, "id")?.to_owned();
            let addr = match get(&o, "type")? {
                "vhost-user-blk" => socket_addr(&o).map(|(_, p)| p)?,
                "fuse" => get(&o, "mountpoint")?.to_owned(),
                "nbd" => {
                    let name = get(&o, "name").or_else(|| get(&o, "node-name"))?;
                    match nbd_server.as_ref()? {
                        (true, path) => format!("nbd+unix:///{name}?socket={path}"),
                        (false, hostport) => format!("nbd://{hostport}/{name}"),
                    }
                }
                _ => return None,
            };
            Some((id, addr))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::cmdline::args;

    #[test]
    fn export_addresses_from_both_syntaxes() {
        let a = args(&[
            "qemu-storage-daemon",
            "--blockdev",
            "driver=file,node-name=f0,filename=/img/a.raw",
            "--export",
            "type=vhost-user-blk,id=vub0,node-name=f0,addr.type=unix,addr.path=/run/vub0.sock,writable=on",
            "--nbd-server",
            "addr.type=unix,addr.path=/run/nbd.sock",
            "--export",
            "type=nbd,id=n1,node-name=d1,name=disk1",
            "--export",
            "type=nbd,id=n2,node-name=d2",
            "--export={\"type\": \"fuse\", \"id\": \"fu\", \"node-name\": \"d3\", \"mountpoint\": \"/mnt/d3\"}",
            "--export",
            "{\"type\": \"vhost-user-blk\", \"id\": \"vub1\", \"node-name\": \"d4\", \"addr\": {\"type\": \"unix\", \"path\": \"/run/v,1.sock\"}}",
            "--export",
            "type=vhost-user-blk,id=fd,node-name=d5,addr.type=fd,addr.str=3",
        ]);
        let got = export_addrs(&a);
        assert_eq!(
            got,
            vec![
                ("vub0".to_owned(), "/run/vub0.sock".to_owned()),
                (
                    "n1".to_owned(),
                    "nbd+unix:///disk1?socket=/run/nbd.sock".to_owned()
                ),
                (
                    "n2".to_owned(),
                    "nbd+unix:///d2?socket=/run/nbd.sock".to_owned()
                ),
                ("fu".to_owned(), "/mnt/d3".to_owned()),
                ("vub1".to_owned(), "/run/v,1.sock".to_owned()),
            ]
        );
        let tcp = export_addrs(&args(&[
            "--nbd-server",
            "addr.type=inet,addr.host=127.0.0.1,addr.port=10811",
            "--export",
            "type=nbd,id=n,node-name=d,name=x",
        ]));
        assert_eq!(
            tcp,
            vec![("n".to_owned(), "nbd://127.0.0.1:10811/x".to_owned())]
        );
    }
}
