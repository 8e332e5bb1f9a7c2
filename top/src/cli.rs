//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "kvmio-top",
    version,
    about = "A live view of every VM disk's IO layers (guest disk, QEMU device, protocol node, host device), read from a kvmio-exporter's /metrics",
    long_about = "A live view of every VM disk's IO layers, side by side: the guest's disk, QEMU's device, \
the protocol node under the image format, and the host device under the image, with IOPS, throughput, \
average request size, latency, merges and flushes, plus the cache mode and both IO schedulers. \
It reads a running kvmio-exporter's /metrics (local or remote, over TLS with basic auth when the \
exporter has --web.config.file), so it needs no privileges.\n\n\
Keys: n i t l m sort by name, IOPS, throughput, latency, merges (again: reverse); r reverse; \
/ filter by VM (Enter applies, Esc clears); q quits."
)]
pub struct Cli {
    /// The exporter's metrics URL (http:// or https://).
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:10990/metrics"
    )]
    pub url: String,
    /// Time between scrapes; rates are over this interval.
    #[arg(long, short = 'd', value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Print one frame as text (two scrapes, --interval apart) and exit: for scripts.
    #[arg(long)]
    pub once: bool,
    /// Initial sort order.
    #[arg(long, value_enum, default_value_t = SortKey::Name)]
    pub sort: SortKey,
    /// Reverse the sort order.
    #[arg(long)]
    pub reverse: bool,
    /// Show only VMs whose name contains this text (case-insensitive).
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub filter: String,
    /// Bound on one scrape's request, connection included.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Largest /metrics answer read (bytes): a larger one is an error, not a partial view.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub max_bytes: u64,
    /// Most samples kept from one answer: more is an error, not a partial view.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub max_series: usize,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// How to reach an exporter with `--web.config.file` (TLS, client certificates, basic auth).
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// PEM file of the CA(s) that signed the exporter's certificate (https:// URLs); default:
    /// the Mozilla roots built in.
    #[arg(long = "tls.ca-file", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), for exporters that require one.
    #[arg(long = "tls.cert-file", value_name = "FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of --tls.cert-file.
    #[arg(long = "tls.key-file", value_name = "FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// Basic auth user name.
    #[arg(long = "auth.username", value_name = "USER")]
    pub username: Option<String>,
    /// File holding the basic auth password (first line; keeps it out of `ps`).
    #[arg(
        long = "auth.password-file",
        value_name = "FILE",
        requires = "username"
    )]
    pub password_file: Option<PathBuf>,
    /// Basic auth password, when no --auth.password-file is given.
    #[arg(
        long = "auth.password",
        env = "KVMIO_TOP_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD",
        conflicts_with = "password_file"
    )]
    pub password: Option<String>,
}

/// What the disks are ordered by (the guest layer's figure, or QEMU's device when the guest
/// layer is missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortKey {
    /// VM, then disk.
    Name,
    /// Reads + writes per second.
    Iops,
    /// Bytes read + written per second.
    Throughput,
    /// Mean time per read or write.
    Latency,
    /// Merged requests per second.
    Merges,
}

impl SortKey {
    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::Name => "name",
            SortKey::Iops => "iops",
            SortKey::Throughput => "throughput",
            SortKey::Latency => "latency",
            SortKey::Merges => "merges",
        }
    }
}

/// The exporter's duration syntax (`500ms`, `2s`, `1m`, a bare number of seconds), at least
/// 50 ms: a shorter interval would measure the exporter, not the disks.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = kvmio_exporter::config::parse_duration(s)?;
    if d < Duration::from_millis(50) {
        return Err(format!("{s:?} is shorter than 50ms"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exporter's syntax (tested with `kvmio_exporter::config::parse_duration`), with
    /// kvmio-top's floor of 50 ms.
    #[test]
    fn durations_have_a_floor_of_50ms() {
        assert!(parse_duration("49ms").is_err());
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
