//! Exporter configuration: what the command line and the `--config` file resolve to. Collectors
//! read it through [`crate::scrape::ScrapeContext::config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default `--web.listen-address`.
///
/// Port 10990: Prometheus' registry of exporter ports (the "Default port allocations" wiki page)
/// filled 9100-9999 by 2023 and has since allocated upward from 10000 one port at a time
/// (e.g. 10019 in 2024), so a port just above 10000 is likely taken soon; 10990 is far above
/// that frontier, is not in IANA's /etc/services list, and is below the ephemeral range
/// (32768+). The wiki itself could not be consulted offline when this was chosen: check it, and
/// register the port there, before a release. Loopback by default: the metrics reveal VM names
/// and image paths.
pub const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1:10990";

/// Default `--scrape.timeout`: below Prometheus' default 10 s scrape timeout, leaving 2 s for
/// the HTTP transfer and Prometheus' own overhead.
pub const DEFAULT_SCRAPE_TIMEOUT: Duration = Duration::from_secs(8);

/// Default `--qga.max-disks`.
pub const DEFAULT_QGA_MAX_DISKS: usize = 64;

/// Which host block devices `kvmio_host_disk_*` covers (`--host.devices`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostDevices {
    /// Only the devices that back VM images (resolved from the images the QMP side publishes).
    #[default]
    Backing,
    /// Every device in /proc/diskstats.
    All,
    /// No host disk metrics.
    None,
}

/// Socket layout presets (`--layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Proxmox VE: `/var/run/qemu-server/<vmid>.qmp` and `<vmid>.qga`.
    Proxmox,
}

impl Layout {
    /// QMP socket glob of the preset.
    pub fn qmp_glob(self) -> &'static str {
        match self {
            Layout::Proxmox => "/var/run/qemu-server/*.qmp",
        }
    }

    /// Guest-agent socket glob of the preset.
    pub fn qga_glob(self) -> &'static str {
        match self {
            Layout::Proxmox => "/var/run/qemu-server/*.qga",
        }
    }
}

/// Default `--web.telemetry-path`.
pub const DEFAULT_TELEMETRY_PATH: &str = "/metrics";

/// Checks `--web.telemetry-path`: an absolute path other than `/` (the landing page), without
/// query, fragment or whitespace.
pub fn parse_telemetry_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || s == "/" || s.contains(['?', '#']) || s.contains(char::is_whitespace)
    {
        return Err(format!(
            "{s:?} is not a path for the metrics (e.g. /metrics): absolute, not /, no ? or #"
        ));
    }
    Ok(s.to_owned())
}

/// The libvirt source (`--libvirt.uri` and its options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtConfig {
    /// The libvirt URI (`qemu:///system`).
    pub uri: String,
    /// Run kvmio's QMP queries through libvirt (`virDomainQemuMonitorCommand`; taints the
    /// domain `custom-monitor`).
    pub qmp_passthrough: bool,
    /// Run kvmio's guest-agent queries through libvirt (`virDomainQemuAgentCommand`; taints the
    /// domain `custom-ga-command`).
    pub agent_passthrough: bool,
    /// At most this many libvirt calls block a thread at once.
    pub max_concurrent_calls: usize,
}

/// Default `--libvirt.max-concurrent-calls`: libvirtd serves 5 client calls at once by default
/// (`max_client_requests`); a few more keep one slow domain from holding up the rest.
pub const DEFAULT_LIBVIRT_MAX_CONCURRENT_CALLS: usize = 8;

/// One explicitly configured VM (from `[[target]]` in the `--config` file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// QMP socket path.
    pub qmp: PathBuf,
    /// Guest-agent socket path, if the VM has one.
    #[serde(default)]
    pub qga: Option<PathBuf>,
    /// VM label; overrides QMP `query-name` and the socket stem.
    #[serde(default)]
    pub name: Option<String>,
}

/// The `--config FILE` TOML format:
///
/// ```toml
/// qmp_socket_globs = ["/run/kvmio/*.qmp"]   # optional, added to --qmp.socket-glob
/// qga_socket_globs = ["/run/kvmio/*.qga"]   # optional, added to --qga.socket-glob
/// qsd_socket_globs = ["/run/qsd/*.qmp"]     # optional, added to --qsd.socket-glob
///
/// [[target]]
/// qmp = "/run/vm1/qmp.sock"
/// qga = "/run/vm1/qga.sock"   # optional
/// name = "vm1"                # optional
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Extra QMP socket globs.
    #[serde(default)]
    pub qmp_socket_globs: Vec<String>,
    /// Extra guest-agent socket globs.
    #[serde(default)]
    pub qga_socket_globs: Vec<String>,
    /// Extra qemu-storage-daemon monitor socket globs.
    #[serde(default)]
    pub qsd_socket_globs: Vec<String>,
    /// Explicit targets.
    #[serde(default, rename = "target")]
    pub targets: Vec<Target>,
}

impl ConfigFile {
    /// Reads and parses a config file; the error is one line naming the file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            let msg = e.message().replace('\n', " ");
            match e.span() {
                Some(span) => {
                    let line = text[..span.start].matches('\n').count() + 1;
                    format!("config file {}: line {line}: {msg}", path.display())
                }
                None => format!("config file {}: {msg}", path.display()),
            }
        })
    }
}

/// Everything the exporter and its collectors need to know, resolved from flags and file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// HTTP listen address.
    pub listen_address: SocketAddr,
    /// QMP socket globs: `--qmp.socket-glob`, the config file's, and the layout preset's.
    pub qmp_socket_globs: Vec<String>,
    /// Guest-agent socket globs (`--qga.socket-glob`, file, preset). Sockets found by the QMP
    /// globs are also paired with a guest-agent socket of the same stem (`vm1.qmp` <-> `vm1.qga`).
    pub qga_socket_globs: Vec<String>,
    /// Explicit targets from the config file.
    pub targets: Vec<Target>,
    /// qemu-storage-daemon monitor socket globs (`--qsd.socket-glob`, file): their exports.
    pub qsd_socket_globs: Vec<String>,
    /// The layout preset, if any (its globs are already in the glob lists).
    pub layout: Option<Layout>,
    /// Host device selection.
    pub host_devices: HostDevices,
    /// Root of procfs (`--path.procfs`).
    pub procfs: PathBuf,
    /// Root of sysfs (`--path.sysfs`).
    pub sysfs: PathBuf,
    /// Bound on a whole scrape.
    pub scrape_timeout: Duration,
    /// `--qmp.latency-buckets`: histogram bucket upper bounds in seconds, strictly increasing and
    /// positive; `None` leaves QEMU's latency histograms alone.
    pub qmp_latency_buckets: Option<Vec<f64>>,
    /// At most this many guest disks are exported per VM.
    pub qga_max_disks: usize,
    /// Keep QMP (and guest-agent) connections open between scrapes.
    pub qmp_persistent: bool,
    /// `--crashtest.results-dir`: where `kvmio-crashtest run --out` writes `crashtest.prom`.
    pub crashtest_results_dir: Option<PathBuf>,
    /// The libvirt source, if any.
    pub libvirt: Option<LibvirtConfig>,
    /// Where the metrics are served (`--web.telemetry-path`).
    pub telemetry_path: String,
    /// `--debug.fail-on-duplicate-series`: a scrape that made a duplicate series answers HTTP
    /// 500 naming them, instead of 200 without them (the tests set it: a duplicate is a bug).
    pub fail_on_duplicate_series: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen_address: DEFAULT_LISTEN_ADDRESS
                .parse()
                .expect("valid default address"),
            qmp_socket_globs: Vec::new(),
            qga_socket_globs: Vec::new(),
            targets: Vec::new(),
            qsd_socket_globs: Vec::new(),
            layout: None,
            host_devices: HostDevices::default(),
            procfs: PathBuf::from("/proc"),
            sysfs: PathBuf::from("/sys"),
            scrape_timeout: DEFAULT_SCRAPE_TIMEOUT,
            qmp_latency_buckets: None,
            qga_max_disks: DEFAULT_QGA_MAX_DISKS,
            qmp_persistent: false,
            crashtest_results_dir: None,
            libvirt: None,
            telemetry_path: DEFAULT_TELEMETRY_PATH.to_owned(),
            fail_on_duplicate_series: false,
        }
    }
}

impl Config {
    /// Whether any VM source is configured (socket globs, a layout, targets, libvirt).
    pub fn has_vm_sources(&self) -> bool {
        !self.qmp_socket_globs.is_empty()
            || !self.qga_socket_globs.is_empty()
            || !self.targets.is_empty()
            || self.libvirt.is_some()
    }

    /// The latency bucket bounds in nanoseconds, as QMP `block-latency-histogram-set` wants them.
    pub fn qmp_latency_boundaries_ns(&self) -> Option<Vec<u64>> {
        self.qmp_latency_buckets
            .as_ref()
            .map(|b| b.iter().map(|s| (s * 1e9).round() as u64).collect())
    }
}

/// Parses `--scrape.timeout`: `8s`, `500ms`, `1.5s`, `1m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (examples: 8s, 500ms, 1m)"))?;
    let secs = value * scale;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("{s:?} must be a positive duration"));
    }
    if secs > 3600.0 {
        return Err(format!("{s:?} is longer than an hour"));
    }
    // Durations are kept in whole milliseconds: anything shorter would round to a zero timeout.
    if secs < 1e-3 {
        return Err(format!("{s:?} is shorter than a millisecond"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `--qmp.latency-buckets` as one value (a newtype, so clap does not take the `Vec` for a
/// repeatable flag).
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyBuckets(pub Vec<f64>);

impl std::str::FromStr for LatencyBuckets {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_latency_buckets(s).map(LatencyBuckets)
    }
}

/// Parses `--qmp.latency-buckets`: comma-separated upper bounds in seconds, e.g.
/// `0.0001,0.001,0.01,0.1,1`. Strictly increasing, positive, finite; at most 64.
pub fn parse_latency_buckets(s: &str) -> Result<Vec<f64>, String> {
    let mut out: Vec<f64> = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let v: f64 = part
            .parse()
            .map_err(|_| format!("{part:?} is not a number of seconds"))?;
        if !v.is_finite() || v <= 0.0 {
            return Err(format!(
                "bucket {part:?} must be a positive number of seconds"
            ));
        }
        if v < 1e-9 {
            return Err(format!("bucket {part:?} is below QEMU's 1 ns resolution"));
        }
        // QEMU takes the bounds in whole nanoseconds: bounds that round to the same
        // nanosecond would be equal there, which QEMU refuses.
        if out
            .last()
            .is_some_and(|&prev| (v * 1e9).round() <= (prev * 1e9).round())
        {
            return Err(format!(
                "buckets must increase strictly, by at least a nanosecond ({part} after {})",
                out[out.len() - 1]
            ));
        }
        out.push(v);
    }
    if out.len() > 64 {
        return Err(format!("{} buckets given, at most 64 allowed", out.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("8s"), Ok(Duration::from_secs(8)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("2h").is_err());
    }

    #[test]
    fn telemetry_paths() {
        assert_eq!(parse_telemetry_path("/metrics").unwrap(), "/metrics");
        assert_eq!(
            parse_telemetry_path("/kvmio/metrics").unwrap(),
            "/kvmio/metrics"
        );
        for bad in ["", "/", "metrics", "/m?x", "/m#x", "/a b"] {
            assert!(parse_telemetry_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn below_resolution() {
        assert!(parse_duration("1e-10").is_err());
        assert!(parse_duration("0.0001s").is_err());
        assert_eq!(parse_duration("1ms").unwrap(), Duration::from_millis(1));
        assert!(parse_latency_buckets("0.0000000011,0.0000000012").is_err());
        assert!(parse_latency_buckets("0.000000001,0.000000002").is_ok());
    }

    #[test]
    fn buckets() {
        assert_eq!(
            parse_latency_buckets("0.001, 0.01,1"),
            Ok(vec![0.001, 0.01, 1.0])
        );
        assert!(parse_latency_buckets("0.01,0.001").is_err());
        assert!(parse_latency_buckets("0.01,0.01").is_err());
        assert!(parse_latency_buckets("0,1").is_err());
        assert!(parse_latency_buckets("a").is_err());
        assert!(parse_latency_buckets("").is_err());
        let c = Config {
            qmp_latency_buckets: Some(vec![0.0001, 0.5]),
            ..Config::default()
        };
        assert_eq!(
            c.qmp_latency_boundaries_ns(),
            Some(vec![100_000, 500_000_000])
        );
    }

    #[test]
    fn config_file() {
        let dir = crate::testing::file_tree(&[(
            "kvmio.toml",
            b"qmp_socket_globs = [\"/run/x/*.qmp\"]\n[[target]]\nqmp = \"/run/vm1.qmp\"\nname = \"vm1\"\n",
        )]);
        let p = dir.path().join("kvmio.toml");
        let f = ConfigFile::load(&p).unwrap();
        assert_eq!(f.qmp_socket_globs, vec!["/run/x/*.qmp"]);
        assert_eq!(
            f.targets,
            vec![Target {
                qmp: "/run/vm1.qmp".into(),
                qga: None,
                name: Some("vm1".into())
            }]
        );
        std::fs::write(&p, "[[target]]\nqmp = \"/a\"\nqgx = \"typo\"").unwrap();
        let err = ConfigFile::load(&p).unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(!err.contains('\n'));
    }
}
