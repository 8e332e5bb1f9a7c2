//! Command-line flags (node_exporter-style dotted names) and their resolution into a [`Config`].
//! Invalid values are reported by clap in one line with exit code 2.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::config::{
    parse_duration, parse_telemetry_path, Config, ConfigFile, HostDevices, LatencyBuckets, Layout,
    LibvirtConfig, DEFAULT_LIBVIRT_MAX_CONCURRENT_CALLS, DEFAULT_LISTEN_ADDRESS,
    DEFAULT_TELEMETRY_PATH,
};
pub use crate::logging::{LogFormat, LogLevel};

/// kvmio-exporter: Prometheus metrics for every layer of KVM/QEMU VM storage IO (guest disk,
/// QEMU device and block nodes, image file, host block device), joined across layers.
#[derive(Debug, Parser)]
#[command(name = "kvmio-exporter", version)]
pub struct Cli {
    /// Address to serve /metrics on: IP:PORT, localhost:PORT, or :PORT for all IPv4 interfaces.
    /// Default port 10990: above the 9100-9999 range of Prometheus' exporter port registry and
    /// far above its allocations from 10000 on.
    #[arg(long = "web.listen-address", value_name = "ADDR", default_value = DEFAULT_LISTEN_ADDRESS,
          value_parser = parse_listen_address)]
    pub listen_address: SocketAddr,

    /// Glob of QMP monitor sockets (repeatable). A guest-agent socket with the same stem
    /// (vm1.qmp <-> vm1.qga) is paired with each.
    #[arg(long = "qmp.socket-glob", value_name = "GLOB")]
    pub qmp_socket_globs: Vec<String>,

    /// Glob of guest-agent sockets (repeatable), paired with QMP sockets by file stem.
    #[arg(long = "qga.socket-glob", value_name = "GLOB")]
    pub qga_socket_globs: Vec<String>,

    /// Glob of qemu-storage-daemon QMP monitor sockets (repeatable): their block exports
    /// (vhost-user-blk, NBD, FUSE), joined to the VMs using them.
    #[arg(long = "qsd.socket-glob", value_name = "GLOB")]
    pub qsd_socket_globs: Vec<String>,

    /// TOML file listing targets explicitly: `[[target]]` tables with qmp, qga and name keys.
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Socket layout preset: proxmox = `/var/run/qemu-server/VMID.qmp` and `.qga`.
    #[arg(long = "layout", value_name = "LAYOUT", value_enum)]
    pub layout: Option<Layout>,

    /// Host block devices to export diskstats for: backing = those under VM images.
    #[arg(long = "host.devices", value_name = "WHICH", value_enum, default_value_t = HostDevices::Backing)]
    pub host_devices: HostDevices,

    /// procfs mount point (e.g. /host/proc in a container).
    #[arg(long = "path.procfs", value_name = "DIR", default_value = "/proc")]
    pub procfs: PathBuf,

    /// sysfs mount point (e.g. /host/sys in a container).
    #[arg(long = "path.sysfs", value_name = "DIR", default_value = "/sys")]
    pub sysfs: PathBuf,

    /// Bound on a whole scrape (keep it below Prometheus' scrape_timeout, 10s by default).
    #[arg(long = "scrape.timeout", value_name = "DURATION", default_value = "8s",
          value_parser = parse_duration)]
    pub scrape_timeout: Duration,

    /// Enable QEMU block latency histograms with these bucket bounds in seconds, comma-separated
    /// (e.g. 0.0001,0.001,0.01,0.1,1). Off by default: it changes QEMU's histogram state.
    #[arg(long = "qmp.latency-buckets", value_name = "SECONDS,...")]
    pub qmp_latency_buckets: Option<LatencyBuckets>,

    /// At most this many guest disks are exported per VM (bounds what a guest can add).
    #[arg(long = "qga.max-disks", value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub qga_max_disks: u16,

    /// Keep QMP and guest-agent connections open between scrapes (the monitor is then busy for
    /// other clients: give kvmio a dedicated one).
    #[arg(long = "qmp.persistent")]
    pub qmp_persistent: bool,

    /// Directory where `kvmio-crashtest run --out DIR` writes crashtest.prom: the newest one
    /// (DIR/crashtest.prom or DIR/*/crashtest.prom) is re-served (kvmio_crashtest_* only).
    #[arg(long = "crashtest.results-dir", value_name = "DIR")]
    pub crashtest_results_dir: Option<PathBuf>,

    /// TLS, client certificates, basic authentication and response headers, in Prometheus'
    /// exporter-toolkit format (as node_exporter's --web.config.file). Re-read at every
    /// connection and request: renewed certificates and changed passwords need no restart.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,

    /// Path under which the metrics are served.
    #[arg(long = "web.telemetry-path", value_name = "PATH", default_value = DEFAULT_TELEMETRY_PATH,
          value_parser = parse_telemetry_path)]
    pub telemetry_path: String,

    /// Only log messages with this level or above (error, warn, info, debug). RUST_LOG, when
    /// set, takes precedence (it also selects per module).
    #[arg(long = "log.level", value_name = "LEVEL", value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Log line format: logfmt (key=value, as Prometheus' exporters log) or json.
    #[arg(long = "log.format", value_name = "FORMAT", value_enum, default_value_t = LogFormat::Logfmt)]
    pub log_format: LogFormat,

    /// Scrape the domains of this libvirt (e.g. qemu:///system) through libvirt's own
    /// connection: block statistics, domain XML and guest disk info, without tainting domains.
    #[arg(long = "libvirt.uri", value_name = "URI")]
    pub libvirt_uri: Option<String>,

    /// With --libvirt.uri: run kvmio's QMP queries through libvirt's monitor passthrough
    /// (per-node stats, live cache flags, failed/invalid operations, latency histograms).
    /// libvirt marks each domain tainted (custom-monitor).
    #[arg(long = "libvirt.qmp-passthrough", requires = "libvirt_uri")]
    pub libvirt_qmp_passthrough: bool,

    /// With --libvirt.uri: read guest diskstats and queue settings through libvirt's agent
    /// passthrough. libvirt marks each domain tainted (custom-ga-command).
    #[arg(long = "libvirt.agent-passthrough", requires = "libvirt_uri")]
    pub libvirt_agent_passthrough: bool,

    /// With --libvirt.uri: at most this many libvirt calls at once (each blocks a thread until
    /// libvirtd answers).
    #[arg(long = "libvirt.max-concurrent-calls", value_name = "N",
          default_value_t = DEFAULT_LIBVIRT_MAX_CONCURRENT_CALLS as u16,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub libvirt_max_concurrent_calls: u16,

    /// Fail a scrape (HTTP 500 naming them) that made duplicate series, instead of answering
    /// without them (they are always counted in kvmio_scrape_duplicate_series_total and
    /// logged). For tests and debugging: a duplicate series is a kvmio bug.
    /// `KVMIO_FAIL_ON_DUPLICATE_SERIES=1` (as the tests set it) does the same; `0`, `false`,
    /// `no`, `off` or unset leave it off.
    #[arg(long = "debug.fail-on-duplicate-series", env = "KVMIO_FAIL_ON_DUPLICATE_SERIES",
          action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::FalseyValueParser::new())]
    pub fail_on_duplicate_series: bool,
}

/// `IP:PORT`, `[IPv6]:PORT`, `localhost:PORT`, or `:PORT` (all IPv4 interfaces).
pub fn parse_listen_address(s: &str) -> Result<SocketAddr, String> {
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| format!("bad port in {s:?}"))?;
        return Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)));
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| format!("bad port in {s:?}"))?;
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not IP:PORT, [IPv6]:PORT, localhost:PORT or :PORT"))
}

impl Cli {
    /// Resolves flags, the config file and the layout preset into a [`Config`]. The error is one
    /// line (a config file problem); the caller exits with code 2.
    pub fn into_config(self) -> Result<Config, String> {
        let file = match &self.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        let mut qmp = self.qmp_socket_globs;
        qmp.extend(file.qmp_socket_globs);
        let mut qga = self.qga_socket_globs;
        qga.extend(file.qga_socket_globs);
        let mut qsd = self.qsd_socket_globs;
        qsd.extend(file.qsd_socket_globs);
        if let Some(layout) = self.layout {
            qmp.push(layout.qmp_glob().to_owned());
            qga.push(layout.qga_glob().to_owned());
        }
        for glob in qmp.iter().chain(&qga).chain(&qsd) {
            if glob.is_empty() {
                return Err("empty socket glob".to_owned());
            }
        }
        if self
            .libvirt_uri
            .as_deref()
            .is_some_and(|u| u.trim().is_empty())
        {
            return Err("empty --libvirt.uri (e.g. qemu:///system)".to_owned());
        }
        if self.layout == Some(Layout::Proxmox) && self.qmp_persistent {
            // A monitor or agent socket serves one client: holding Proxmox's own would lock
            // qemu-server (and its backups' fsfreeze) out.
            return Err(
                "--qmp.persistent cannot be used with --layout proxmox: qemu-server uses \
                        those sockets itself; give kvmio dedicated monitors (see the README) and \
                        list them with --qmp.socket-glob"
                    .to_owned(),
            );
        }
        Ok(Config {
            listen_address: self.listen_address,
            qmp_socket_globs: qmp,
            qga_socket_globs: qga,
            targets: file.targets,
            qsd_socket_globs: qsd,
            layout: self.layout,
            host_devices: self.host_devices,
            procfs: self.procfs,
            sysfs: self.sysfs,
            scrape_timeout: self.scrape_timeout,
            qmp_latency_buckets: self.qmp_latency_buckets.map(|b| b.0),
            qga_max_disks: usize::from(self.qga_max_disks),
            qmp_persistent: self.qmp_persistent,
            crashtest_results_dir: self.crashtest_results_dir,
            telemetry_path: self.telemetry_path,
            fail_on_duplicate_series: self.fail_on_duplicate_series,
            libvirt: self.libvirt_uri.map(|uri| LibvirtConfig {
                uri,
                qmp_passthrough: self.libvirt_qmp_passthrough,
                agent_passthrough: self.libvirt_agent_passthrough,
                max_concurrent_calls: usize::from(self.libvirt_max_concurrent_calls),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kvmio-exporter").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_config_defaults() {
        let c = parse(&[]).unwrap().into_config().unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn all_flags() {
        let c = parse(&[
            "--web.listen-address=:9999",
            "--qmp.socket-glob=/run/a/*.qmp",
            "--qmp.socket-glob",
            "/run/b/*.qmp",
            "--qga.socket-glob=/run/a/*.qga",
            "--layout=proxmox",
            "--host.devices=all",
            "--path.procfs=/host/proc",
            "--path.sysfs=/host/sys",
            "--scrape.timeout=500ms",
            "--qmp.latency-buckets=0.001,0.01",
            "--qga.max-disks=8",
            "--crashtest.results-dir=/var/lib/kvmio/crashtest",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(c.listen_address, "0.0.0.0:9999".parse().unwrap());
        assert_eq!(
            c.qmp_socket_globs,
            vec!["/run/a/*.qmp", "/run/b/*.qmp", "/var/run/qemu-server/*.qmp"]
        );
        assert_eq!(
            c.qga_socket_globs,
            vec!["/run/a/*.qga", "/var/run/qemu-server/*.qga"]
        );
        assert_eq!(c.host_devices, HostDevices::All);
        assert_eq!(c.procfs, PathBuf::from("/host/proc"));
        assert_eq!(c.scrape_timeout, Duration::from_millis(500));
        assert_eq!(c.qmp_latency_buckets, Some(vec![0.001, 0.01]));
        assert_eq!(c.qga_max_disks, 8);
        assert_eq!(
            c.crashtest_results_dir,
            Some(PathBuf::from("/var/lib/kvmio/crashtest"))
        );
    }

    #[test]
    fn invalid_values_are_usage_errors() {
        for args in [
            &["--host.devices=some"][..],
            &["--scrape.timeout=0s"],
            &["--qmp.latency-buckets=1,0.5"],
            &["--qga.max-disks=0"],
            &["--web.listen-address=nowhere"],
            &["--layout=libvirt"],
            &["--no-such-flag"],
        ] {
            let err = parse(args).unwrap_err();
            assert_ne!(err.kind(), ErrorKind::DisplayHelp, "{args:?}");
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn persistent_connections_to_proxmox_sockets_are_refused() {
        let err = parse(&["--layout=proxmox", "--qmp.persistent"])
            .unwrap()
            .into_config()
            .unwrap_err();
        assert!(err.contains("qemu-server"), "{err}");
        let c = parse(&["--qmp.socket-glob=/run/kvmio/*.qmp", "--qmp.persistent"])
            .unwrap()
            .into_config()
            .unwrap();
        assert!(c.qmp_persistent);
    }

    #[test]
    fn listen_address_forms() {
        assert_eq!(
            parse_listen_address("localhost:1").unwrap(),
            "127.0.0.1:1".parse().unwrap()
        );
        assert_eq!(
            parse_listen_address("[::1]:10990").unwrap(),
            "[::1]:10990".parse().unwrap()
        );
        assert!(parse_listen_address(":x").is_err());
    }
}
