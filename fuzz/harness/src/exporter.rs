//! The exporter's inputs from the host and the operator: `/proc/diskstats`, sysfs and
//! mountinfo, QEMU's command line, the config file and flags, the crash-test results file and
//! libvirt's domain XML.

use clap::Parser;
use kvmio_exporter::cli::Cli;
use kvmio_exporter::collector::crashtest::{self, PREFIX};
use kvmio_exporter::config::{
    parse_duration, parse_latency_buckets, parse_telemetry_path, ConfigFile,
};
use kvmio_exporter::host::blockdev::{dm_name, find_mount, parse_scheduler, read_scheduler};
use kvmio_exporter::host::diskstats::parse_diskstats;
use kvmio_exporter::textformat::{self, MAX_FAMILIES, MAX_LABELS_PER_SAMPLE};
use kvmio_exporter::vm::cmdline::{parse_keyval, read_proc};
use kvmio_exporter::vm::libvirt::domxml;

use crate::scratch;

/// `/proc/diskstats`: every non-blank line is a device or a reported error, and a device has
/// one of the kernel's formats.
pub fn host_diskstats(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (disks, errors) = parse_diskstats(&text);
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(disks.len() + errors.len(), lines);
    for d in &disks {
        assert!(d.stat_count == 4 || d.stat_count >= 11, "{d:?}");
        assert!(!d.name.is_empty());
    }
}

/// `/proc/self/mountinfo` (the first two bytes pick the device looked for) and the sysfs files
/// read as text: a queue's `scheduler` and a device-mapper `dm/name`, through the functions that
/// read them from a sysfs tree.
pub fn host_sysfs_mountinfo(data: &[u8]) {
    let (major, minor) = match data {
        [a, b, ..] => (u32::from(*a), u32::from(*b)),
        _ => (0, 0),
    };
    let text = String::from_utf8_lossy(data);
    if let Some(m) = find_mount(&text, major, minor) {
        assert!(!m.fstype.is_empty() && !m.mount_point.as_os_str().is_empty());
    }
    let from_text = parse_scheduler(&text);
    if let Some(s) = &from_text {
        assert!(!s.is_empty());
    }
    let sysfs = scratch().join("sys");
    let queue = sysfs.join("block/dm-0/queue");
    std::fs::create_dir_all(&queue).expect("scratch sysfs");
    std::fs::create_dir_all(sysfs.join("block/dm-0/dm")).expect("scratch sysfs");
    std::fs::write(queue.join("scheduler"), data).expect("scratch sysfs");
    std::fs::write(sysfs.join("block/dm-0/dm/name"), data).expect("scratch sysfs");
    if std::str::from_utf8(data).is_ok() {
        assert_eq!(read_scheduler(&sysfs, "dm-0"), from_text);
    }
    if let Some(name) = dm_name(&sysfs, "dm-0") {
        assert!(!name.is_empty());
    }
}

/// A QEMU process's `/proc/PID/cmdline` (NUL-separated arguments), read by the function that
/// reads it from procfs; and every argument as a `key=value,...` option list.
pub fn qemu_cmdline(data: &[u8]) {
    let procfs = scratch().join("proc");
    let dir = procfs.join("1");
    std::fs::create_dir_all(&dir).expect("scratch procfs");
    let mut cmdline = b"qemu-system-x86_64\0".to_vec();
    cmdline.extend_from_slice(data);
    std::fs::write(dir.join("cmdline"), &cmdline).expect("scratch procfs");
    let parsed = read_proc(&procfs, 1).expect("a QEMU's command line");
    let _ = parsed.uuid;
    for arg in data.split(|&b| b == 0) {
        let _ = parse_keyval(&String::from_utf8_lossy(arg), Some("driver"));
    }
}

/// The `--config` TOML file, read by [`ConfigFile::load`]: parsed, or one line naming the file.
pub fn config_file(data: &[u8]) {
    let path = scratch().join("kvmio.toml");
    std::fs::write(&path, data).expect("scratch config");
    if let Err(e) = ConfigFile::load(&path) {
        assert!(!e.contains('\n'), "a multi-line error: {e}");
    }
}

/// The command line: NUL-separated arguments through clap and [`Cli::into_config`], and each
/// argument through the value parsers (durations, latency buckets, telemetry path), whose
/// accepted values keep their promises. `--config` is left out: it names a file to read.
pub fn flags(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let args: Vec<&str> = text
        .split('\0')
        .filter(|a| !a.starts_with("--config"))
        .collect();
    if let Ok(cli) = Cli::try_parse_from(std::iter::once("kvmio-exporter").chain(args.clone())) {
        if let Ok(config) = cli.into_config() {
            assert!(config.scrape_timeout.as_secs_f64() >= 1e-3);
            assert!(config.telemetry_path.starts_with('/'));
        }
    }
    for arg in args {
        if let Ok(d) = parse_duration(arg) {
            assert!(
                d.as_secs_f64() >= 1e-3 && d.as_secs_f64() <= 3600.0,
                "{arg:?}"
            );
        }
        if let Ok(buckets) = parse_latency_buckets(arg) {
            assert!(!buckets.is_empty() && buckets.len() <= 64);
            let ns: Vec<u64> = buckets.iter().map(|s| (s * 1e9).round() as u64).collect();
            assert!(ns[0] >= 1 && ns.windows(2).all(|w| w[0] < w[1]), "{arg:?}");
        }
        if let Ok(path) = parse_telemetry_path(arg) {
            assert!(path.starts_with('/'), "{arg:?}");
        }
    }
}

/// The crash-test results file (`crashtest.prom`), through the collector's own loader: what it
/// serves is `kvmio_crashtest_*` only, bounded, and reads back through the strict text-format
/// parser without an error.
pub fn crashtest_results(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = textformat::parse(&text);
    assert!(parsed.families.len() <= MAX_FAMILIES);
    for f in &parsed.families {
        for s in &f.samples {
            assert!(s.labels.len() <= MAX_LABELS_PER_SAMPLE);
        }
    }
    let loaded = crashtest::load(&text, "crashtest.prom");
    assert!(loaded.metrics.family_count() <= MAX_FAMILIES);
    let served = loaded.metrics.encode_text();
    let again = textformat::parse(&served);
    assert!(again.errors.is_empty(), "{:?}\n{served}", again.errors);
    for f in &again.families {
        assert!(f.name.starts_with(PREFIX), "{} served", f.name);
    }
}

/// libvirt's domain XML: bounded disk list, or an error.
pub fn domain_xml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(dom) = domxml::parse(&text) {
        assert!(dom.disks.len() <= domxml::MAX_DISKS);
        for d in &dom.disks {
            let _ = d.protocol_driver();
        }
    }
}
