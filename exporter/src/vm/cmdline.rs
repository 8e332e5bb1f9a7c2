//! Drive settings that QMP does not report, read from the QEMU process's command line
//! (`<procfs>/PID/cmdline`; the PID is the monitor socket's peer).
//!
//! `query-block` gives the cache *flags* as they are now, and its `writeback` flag is the write
//! cache the guest negotiated, not the `cache=` option (see [`kvmio_qemu::CacheMode`] and
//! `BlockDeviceInfo::cache_mode`). It says nothing about `aio=` or `discard=`. The command line
//! does, for drives defined at start-up:
//!
//! - `-drive id=D,file=...,cache=none,aio=native,discard=unmap` (Proxmox, plain QEMU): the
//!   backend `D`; unset options have QEMU's defaults (`cache=writeback`, `aio=threads`,
//!   `discard=ignore`);
//! - `-blockdev` in key=value or JSON form (libvirt): the format node's `file` child is the
//!   protocol node with `aio`, and `cache.direct` / `cache.no-flush` on either; the guest-visible
//!   write cache is the `-device` option `write-cache` (default on);
//! - `-device ...,drive=X,iothread=T`.
//!
//! Drives added later over QMP (`blockdev-add`, `drive_add`) are not on the command line: their
//! settings read as unknown (empty label values).

use std::collections::BTreeMap;
use std::path::Path;

use kvmio_qemu::{CacheFlags, CacheMode};
use serde_json::Value;

/// Longest command line read (QEMU command lines of many-disk VMs run to tens of KiB).
const MAX_CMDLINE_BYTES: u64 = 1024 * 1024;

type Opts = BTreeMap<String, String>;

/// The block-related options of one QEMU command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QemuCmdline {
    /// The VM's UUID: `-uuid`, else `-smbios type=1,uuid=` (Proxmox).
    pub uuid: Option<String>,
    drives: Vec<Opts>,
    blockdevs: Vec<Opts>,
    devices: Vec<Opts>,
}

/// What the command line says about one drive; `None` where it says nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriveConfig {
    /// The configured `cache=` mode (from the flags the options set).
    pub cache_mode: Option<CacheMode>,
    /// `threads`, `native` or `io_uring`.
    pub aio: Option<String>,
    /// `unmap` or `ignore`.
    pub discard: Option<String>,
    /// The iothread id from `-device ...,iothread=`.
    pub iothread: Option<String>,
}

/// Reads `<procfs>/PID/cmdline` if that process is a QEMU (its program name contains `qemu`):
/// the monitor's peer may be another process that created the socket (a management daemon
/// passing a listening socket to QEMU).
pub fn read_proc(procfs: &Path, pid: u32) -> Option<QemuCmdline> {
    use std::io::Read;
    let file = std::fs::File::open(procfs.join(pid.to_string()).join("cmdline")).ok()?;
    let mut raw = Vec::new();
    file.take(MAX_CMDLINE_BYTES).read_to_end(&mut raw).ok()?;
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let program = Path::new(args.first()?).file_name()?.to_string_lossy();
    if !program.contains("qemu") {
        return None;
    }
    Some(QemuCmdline::parse(&args[1..]))
}

/// Splits QEMU's `key=value,key2=value2` option syntax (`,,` is a literal comma). A leading
/// element without `=` is stored under `implied` (the driver of `-device`); other elements without
/// `=` read as `key=on`.
pub fn parse_keyval(s: &str, implied: Option<&str>) -> Opts {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                parts.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    let mut opts = Opts::new();
    for (i, part) in parts.into_iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        match part.split_once('=') {
            Some((k, v)) => {
                opts.insert(k.to_owned(), v.to_owned());
            }
            None => match implied {
                Some(key) if i == 0 => {
                    opts.insert(key.to_owned(), part);
                }
                _ => {
                    opts.insert(part, "on".to_owned());
                }
            },
        }
    }
    opts
}

/// Flattens a JSON option object into dotted keys (`{"cache": {"direct": true}}` ->
/// `cache.direct=true`).
fn flatten_json(prefix: &str, v: &Value, out: &mut Opts, depth: usize) {
    if depth > 16 {
        return;
    }
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_json(&key, v, out, depth + 1);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        Value::Null => {}
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

fn parse_opts(s: &str, implied: Option<&str>) -> Opts {
    if s.trim_start().starts_with('{') {
        let mut out = Opts::new();
        if let Ok(v) = serde_json::from_str::<Value>(s) {
            flatten_json("", &v, &mut out, 0);
        }
        out
    } else {
        parse_keyval(s, implied)
    }
}

fn is_on(v: &str) -> Option<bool> {
    match v {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

fn normalise_discard(v: &str) -> String {
    match v {
        "on" | "unmap" => "unmap".to_owned(),
        "off" | "ignore" => "ignore".to_owned(),
        other => other.to_owned(),
    }
}

impl QemuCmdline {
    /// Parses QEMU's arguments (without the program name).
    pub fn parse(args: &[String]) -> Self {
        let mut out = QemuCmdline::default();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            // QEMU accepts both -opt and --opt.
            let opt = arg.strip_prefix('-').unwrap_or(arg);
            let opt = opt.strip_prefix('-').unwrap_or(opt);
            let list = match opt {
                "uuid" => {
                    out.uuid = it.next().cloned().or(out.uuid.take());
                    continue;
                }
                "smbios" => {
                    if let Some(value) = it.next() {
                        let o = parse_keyval(value, None);
                        if o.get("type").map(String::as_str) == Some("1") && out.uuid.is_none() {
                            out.uuid = o.get("uuid").cloned();
                        }
                    }
                    continue;
                }
                "drive" => &mut out.drives,
                "blockdev" => &mut out.blockdevs,
                "device" => &mut out.devices,
                _ => continue,
            };
            if let Some(value) = it.next() {
                let implied = (opt == "device").then_some("driver");
                list.push(parse_opts(value, implied));
            }
        }
        out
    }

    fn blockdev(&self, node: &str) -> Option<&Opts> {
        self.blockdevs
            .iter()
            .find(|b| b.get("node-name").map(String::as_str) == Some(node))
    }

    fn device_for(&self, names: &[&str], qdev_id: Option<&str>) -> Option<&Opts> {
        self.devices.iter().find(|d| {
            d.get("drive").is_some_and(|x| names.contains(&x.as_str()))
                || (qdev_id.is_some() && d.get("id").map(String::as_str) == qdev_id)
        })
    }

    /// The configuration of the drive whose backend is `device` (the `-drive id=`), whose top
    /// node is `node`, attached to the device with id `qdev_id`.
    pub fn drive_config(
        &self,
        device: &str,
        node: Option<&str>,
        qdev_id: Option<&str>,
    ) -> DriveConfig {
        let mut names: Vec<&str> = Vec::new();
        if !device.is_empty() {
            names.push(device);
        }
        if let Some(n) = node {
            names.push(n);
        }
        let dev = self.device_for(&names, qdev_id);
        let iothread = dev.and_then(|d| d.get("iothread")).cloned();
        let write_cache = dev
            .and_then(|d| d.get("write-cache"))
            .and_then(|v| is_on(v));

        if let Some(drive) = (!device.is_empty())
            .then(|| {
                self.drives
                    .iter()
                    .find(|d| d.get("id").map(String::as_str) == Some(device))
            })
            .flatten()
        {
            let mut flags = match drive.get("cache").and_then(|c| c.parse::<CacheMode>().ok()) {
                Some(mode) => mode.flags(),
                None => CacheMode::Writeback.flags(),
            };
            for (key, slot) in [
                ("cache.writeback", &mut flags.writeback),
                ("cache.direct", &mut flags.direct),
                ("cache.no-flush", &mut flags.no_flush),
            ] {
                if let Some(v) = drive.get(key).and_then(|v| is_on(v)) {
                    *slot = v;
                }
            }
            if let Some(wc) = write_cache {
                flags.writeback = wc;
            }
            return DriveConfig {
                cache_mode: CacheMode::from_flags(flags),
                aio: Some(
                    drive
                        .get("aio")
                        .cloned()
                        .unwrap_or_else(|| "threads".to_owned()),
                ),
                discard: Some(normalise_discard(
                    drive.get("discard").map(String::as_str).unwrap_or("ignore"),
                )),
                iothread,
            };
        }

        // -blockdev: the format node, and its protocol child (a node name, or nested `file.*`).
        let Some(format) = node.and_then(|n| self.blockdev(n)) else {
            return DriveConfig {
                iothread,
                ..DriveConfig::default()
            };
        };
        let nested: Opts = format
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("file.").map(|k| (k.to_owned(), v.clone())))
            .collect();
        let protocol: Option<&Opts> = match format.get("file") {
            Some(child) => self.blockdev(child),
            None if !nested.is_empty() => Some(&nested),
            None => None,
        };
        // A raw format node directly on a file: `driver=file` is itself the protocol.
        let protocol = protocol.or_else(|| {
            matches!(
                format.get("driver").map(String::as_str),
                Some("file" | "host_device" | "host_cdrom")
            )
            .then_some(format)
        });
        let get = |key: &str| {
            protocol
                .and_then(|p| p.get(key))
                .or_else(|| format.get(key))
                .map(String::as_str)
        };
        let flags = CacheFlags {
            writeback: write_cache.unwrap_or(true),
            direct: get("cache.direct").and_then(is_on).unwrap_or(false),
            no_flush: get("cache.no-flush").and_then(is_on).unwrap_or(false),
        };
        let aio = protocol.and_then(|p| match p.get("aio") {
            Some(a) => Some(a.clone()),
            None => matches!(
                p.get("driver").map(String::as_str),
                Some("file" | "host_device" | "host_cdrom")
            )
            .then(|| "threads".to_owned()),
        });
        DriveConfig {
            cache_mode: CacheMode::from_flags(flags),
            aio,
            discard: Some(normalise_discard(
                format
                    .get("discard")
                    .or_else(|| protocol.and_then(|p| p.get("discard")))
                    .map(String::as_str)
                    .unwrap_or("ignore"),
            )),
            iothread,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn keyval_escapes_and_implied_key() {
        let o = parse_keyval(
            "virtio-blk-pci,drive=d0,,x,id=vd0,bootindex",
            Some("driver"),
        );
        assert_eq!(o["driver"], "virtio-blk-pci");
        assert_eq!(o["drive"], "d0,x");
        assert_eq!(o["bootindex"], "on");
    }

    /// The `-drive`/`-device` pairs of the lab's QEMU (crashtest/src/vm.rs), as `ps` shows them.
    #[test]
    fn drive_options_with_defaults() {
        let c = QemuCmdline::parse(&args(&[
            "-name",
            "lab-1",
            "-drive",
            "if=none,id=drive-virtio-disk0,file=/tmp/lab/lab-1-disk0.qcow2,format=qcow2,cache=none",
            "-device",
            "virtio-blk-pci,drive=drive-virtio-disk0,id=virtio-disk0,serial=kvmio-disk0",
            "-drive",
            "if=none,id=d1,file=/x.raw,format=raw,cache=unsafe,aio=io_uring,discard=on",
            "-object",
            "iothread,id=io1",
            "-device",
            "virtio-blk-pci,drive=d1,id=vd1,iothread=io1",
        ]));
        let d0 = c.drive_config(
            "drive-virtio-disk0",
            Some("#block184"),
            Some("virtio-disk0"),
        );
        assert_eq!(d0.cache_mode, Some(CacheMode::None));
        assert_eq!(d0.aio.as_deref(), Some("threads"));
        assert_eq!(d0.discard.as_deref(), Some("ignore"));
        assert_eq!(d0.iothread, None);
        let d1 = c.drive_config("d1", None, Some("vd1"));
        assert_eq!(d1.cache_mode, Some(CacheMode::Unsafe));
        assert_eq!(d1.aio.as_deref(), Some("io_uring"));
        assert_eq!(d1.discard.as_deref(), Some("unmap"));
        assert_eq!(d1.iothread.as_deref(), Some("io1"));
        assert_eq!(
            c.drive_config("hotplugged", None, None),
            DriveConfig::default()
        );
    }

    /// libvirt's JSON `-blockdev` / `-device` style.
    #[test]
    fn blockdev_json() {
        let c = QemuCmdline::parse(&args(&[
            "-blockdev",
            r#"{"driver":"file","filename":"/var/lib/libvirt/images/a.qcow2","node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap","aio":"native","cache":{"direct":true,"no-flush":false}}"#,
            "-blockdev",
            r#"{"node-name":"libvirt-1-format","read-only":false,"discard":"unmap","cache":{"direct":true,"no-flush":false},"driver":"qcow2","file":"libvirt-1-storage","backing":null}"#,
            "-device",
            r#"{"driver":"virtio-blk-pci","bus":"pci.4","addr":"0x0","drive":"libvirt-1-format","id":"virtio-disk0","bootindex":1,"write-cache":"on","iothread":"iothread1"}"#,
        ]));
        let d = c.drive_config("", Some("libvirt-1-format"), Some("virtio-disk0"));
        assert_eq!(d.cache_mode, Some(CacheMode::None));
        assert_eq!(d.aio.as_deref(), Some("native"));
        assert_eq!(d.discard.as_deref(), Some("unmap"));
        assert_eq!(d.iothread.as_deref(), Some("iothread1"));
    }

    #[test]
    fn blockdev_keyval_nested_file() {
        let c = QemuCmdline::parse(&args(&[
            "--blockdev",
            "driver=raw,node-name=n0,file.driver=file,file.filename=/x.raw,file.aio=threads",
            "-device",
            "scsi-hd,drive=n0,id=sd0,write-cache=off",
        ]));
        let d = c.drive_config("", Some("n0"), Some("sd0"));
        assert_eq!(d.cache_mode, Some(CacheMode::Writethrough));
        assert_eq!(d.aio.as_deref(), Some("threads"));
        assert_eq!(d.discard.as_deref(), Some("ignore"));
    }

    #[test]
    fn only_qemu_processes_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("42");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("cmdline"), b"/usr/sbin/libvirtd\0--daemon\0").unwrap();
        assert!(read_proc(dir.path(), 42).is_none());
        std::fs::write(
            p.join("cmdline"),
            b"/usr/bin/qemu-system-x86_64\0-drive\0id=d,file=/a,cache=directsync\0",
        )
        .unwrap();
        let c = read_proc(dir.path(), 42).unwrap();
        assert_eq!(
            c.drive_config("d", None, None).cache_mode,
            Some(CacheMode::Directsync)
        );
        assert!(read_proc(dir.path(), 43).is_none());
    }
}
