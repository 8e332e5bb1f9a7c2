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
//!   `discard=ignore`). A `-drive` without `id=` (and `-hda`..`-hdd`, `-cdrom`) gets the name
//!   QEMU gives it (`virtio0`, `ide0-hd1`; see [`QemuCmdline::drive_id`]); failing that, it is
//!   the one `-drive` whose `file=` is the backend's image;
//! - `-blockdev` in key=value or JSON form (libvirt): `aio` and `discard` are read on the
//!   protocol node QEMU reports under the backend (a `-blockdev` of its own, or nested `file.*`
//!   options, which inherit `discard` from their parent); the guest-visible write cache is the
//!   `-device` option `write-cache` (default on);
//! - `-device ...,drive=X,iothread=T`.
//!
//! Drives added later over QMP (`blockdev-add`, `drive_add`) are not on the command line: their
//! settings read as unknown (empty label values).
//!
//! Why over 500 lines: about 440 are the parser, the rest its tests over command lines in each
//! style (plain QEMU, libvirt's JSON `-blockdev`/`-device`, Proxmox).

use std::collections::BTreeMap;
use std::path::Path;

use kvmio_qemu::{CacheFlags, CacheMode};
use serde_json::Value;

/// Longest command line read (QEMU command lines of many-disk VMs run to tens of KiB).
const MAX_CMDLINE_BYTES: u64 = 1024 * 1024;

/// An option's `key=value` pairs, keys dotted for nested JSON objects (`file.filename`).
pub(crate) type Opts = BTreeMap<String, String>;

/// The block-related options of one QEMU command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QemuCmdline {
    /// The VM's UUID: `-uuid`, else `-smbios type=1,uuid=` (Proxmox).
    pub uuid: Option<String>,
    drives: Vec<Opts>,
    /// The name QEMU gives each of `drives` (its `id=`, or the generated one).
    drive_ids: Vec<String>,
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
    let args = read_args(procfs, pid, MAX_CMDLINE_BYTES)?;
    let program = Path::new(args.first()?).file_name()?.to_string_lossy();
    if !program.contains("qemu") {
        return None;
    }
    Some(QemuCmdline::parse(&args[1..]))
}

/// `<procfs>/PID/cmdline`'s arguments, split at NUL bytes (the terminating one gives a last,
/// empty element), reading at most `max_bytes`; `None` if unreadable.
pub(crate) fn read_args(procfs: &Path, pid: u32, max_bytes: u64) -> Option<Vec<String>> {
    use std::io::Read;
    let file = std::fs::File::open(procfs.join(pid.to_string()).join("cmdline")).ok()?;
    let mut raw = Vec::new();
    file.take(max_bytes).read_to_end(&mut raw).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
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

/// An option's value in either syntax, QEMU's `key=value,...` or JSON (`{"driver": ...}`,
/// flattened into dotted keys); `implied` as for [`parse_keyval`].
pub(crate) fn parse_opts(s: &str, implied: Option<&str>) -> Opts {
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

/// The names QEMU (`drive_new` in `blockdev.c`) gives drives without `id=`: per interface
/// (`if=`, default `ide` on PC machines), a bus and unit from `index=` (with the interface's units
/// per bus: IDE 2, or 1 on q35, whose AHCI ports are buses; SCSI 7) or from `bus=`/`unit=`, else
/// the first free unit on the bus; then `IF BUS -hd|-cd UNIT` for IDE and SCSI (`ide0-hd1`,
/// `ide2-cd0`), `IF[-media]UNIT` for the others (`virtio0`, `none0`).
fn drive_ids(drives: &[Opts], machine: &str) -> Vec<String> {
    let q35 = machine.contains("q35");
    let mut used: Vec<(String, u32, u32)> = Vec::new();
    let mut ids = Vec::with_capacity(drives.len());
    for d in drives {
        let iface = d.get("if").map(String::as_str).unwrap_or("ide").to_owned();
        let max_devs: u32 = match iface.as_str() {
            "ide" if q35 => 1,
            "ide" => 2,
            "scsi" => 7,
            _ => 0,
        };
        let num = |k: &str| d.get(k).and_then(|v| v.parse::<u32>().ok());
        let (bus, unit) = match num("index") {
            Some(i) if max_devs > 0 => (i / max_devs, i % max_devs),
            Some(i) => (0, i),
            None => {
                let bus = num("bus").unwrap_or(0);
                let unit = num("unit").unwrap_or_else(|| {
                    (0..)
                        .find(|u| !used.iter().any(|x| x.0 == iface && x.1 == bus && x.2 == *u))
                        .unwrap_or(0)
                });
                (bus, unit)
            }
        };
        used.push((iface.clone(), bus, unit));
        if let Some(id) = d.get("id") {
            ids.push(id.clone());
            continue;
        }
        let cdrom = d.get("media").map(String::as_str) == Some("cdrom");
        let media = match iface.as_str() {
            "ide" | "scsi" if cdrom => "-cd",
            "ide" | "scsi" => "-hd",
            _ => "",
        };
        ids.push(if max_devs > 0 {
            format!("{iface}{bus}{media}{unit}")
        } else {
            format!("{iface}{media}{unit}")
        });
    }
    ids
}

impl QemuCmdline {
    /// Parses QEMU's arguments (without the program name).
    pub fn parse(args: &[String]) -> Self {
        let mut out = QemuCmdline::default();
        let mut machine = String::from("pc");
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
                "hda" | "hdb" | "hdc" | "hdd" | "cdrom" => {
                    if let Some(file) = it.next() {
                        // QEMU's -hdX/-cdrom are `-drive file=F,index=N,media=...` (if=ide).
                        let index = match opt {
                            "hda" => 0,
                            "hdb" => 1,
                            "hdc" | "cdrom" => 2,
                            _ => 3,
                        };
                        let mut o = Opts::new();
                        o.insert("file".into(), file.clone());
                        o.insert("index".into(), index.to_string());
                        if opt == "cdrom" {
                            o.insert("media".into(), "cdrom".into());
                        }
                        out.drives.push(o);
                    }
                    continue;
                }
                "M" | "machine" => {
                    if let Some(value) = it.next() {
                        let o = parse_keyval(value, Some("type"));
                        if let Some(t) = o.get("type") {
                            machine = t.clone();
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
        out.drive_ids = drive_ids(&out.drives, &machine);
        out
    }

    /// The name QEMU gives the `-drive` at `index` in command-line order.
    pub fn drive_id(&self, index: usize) -> Option<&str> {
        self.drive_ids.get(index).map(String::as_str)
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

    /// The configuration of the drive whose backend is `device` (QEMU's name for a `-drive`),
    /// whose nodes are `chain` (top node first, down through `file` children to the protocol
    /// node), attached to the device with id `qdev_id`, on the image file `file`.
    pub fn drive_config(
        &self,
        device: &str,
        chain: &[&str],
        qdev_id: Option<&str>,
        file: &str,
    ) -> DriveConfig {
        let mut names: Vec<&str> = Vec::new();
        if !device.is_empty() {
            names.push(device);
        }
        names.extend(chain.first());
        let dev = self.device_for(&names, qdev_id);
        let iothread = dev.and_then(|d| d.get("iothread")).cloned();
        let write_cache = dev
            .and_then(|d| d.get("write-cache"))
            .and_then(|v| is_on(v));

        if let Some(drive) = self.drive_for(device, file) {
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
            // -drive options reach the protocol node (`file.aio` where given so).
            let get = |k: &str| {
                drive
                    .get(&format!("file.{k}"))
                    .or_else(|| drive.get(k))
                    .map(String::as_str)
            };
            return DriveConfig {
                cache_mode: CacheMode::from_flags(flags),
                aio: Some(get("aio").unwrap_or("threads").to_owned()),
                discard: Some(normalise_discard(get("discard").unwrap_or("ignore"))),
                iothread,
            };
        }

        // -blockdev: the protocol node (the bottom of the chain) is a -blockdev of its own, or
        // nested `file.*` options of the nearest one above it.
        let Some((named_at, named)) = chain
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, n)| Some((i, self.blockdev(n)?)))
        else {
            return DriveConfig {
                iothread,
                ..DriveConfig::default()
            };
        };
        let depth = chain.len().saturating_sub(1).saturating_sub(named_at);
        let prefix = "file.".repeat(depth);
        // A nested node inherits `discard` and the cache flags from the nodes above it.
        let get = |key: &str| {
            (0..=depth).rev().find_map(|d| {
                named
                    .get(&format!("{}{key}", "file.".repeat(d)))
                    .map(String::as_str)
            })
        };
        let driver = named.get(&format!("{prefix}driver")).map(String::as_str);
        let flags = CacheFlags {
            writeback: write_cache.unwrap_or(true),
            direct: get("cache.direct").and_then(is_on).unwrap_or(false),
            no_flush: get("cache.no-flush").and_then(is_on).unwrap_or(false),
        };
        let aio = match named.get(&format!("{prefix}aio")) {
            Some(a) => Some(a.clone()),
            None => matches!(driver, Some("file" | "host_device" | "host_cdrom"))
                .then(|| "threads".to_owned()),
        };
        DriveConfig {
            cache_mode: CacheMode::from_flags(flags),
            aio,
            discard: Some(normalise_discard(get("discard").unwrap_or("ignore"))),
            iothread,
        }
    }

    /// The `-drive` of backend `device`: by its name (`id=` or QEMU's), else the only one
    /// whose `file=` is `file`.
    fn drive_for(&self, device: &str, file: &str) -> Option<&Opts> {
        if !device.is_empty() {
            if let Some(i) = self.drive_ids.iter().position(|id| id == device) {
                return self.drives.get(i);
            }
        }
        if file.is_empty() {
            return None;
        }
        let mut same_file = self
            .drives
            .iter()
            .filter(|d| d.get("file").map(String::as_str) == Some(file));
        match (same_file.next(), same_file.next()) {
            (Some(d), None) => Some(d),
            _ => None,
        }
    }
}

/// A command line as `/proc/PID/cmdline` gives it, from string literals (the tests' input).
#[cfg(test)]
pub(crate) fn args(s: &[&str]) -> Vec<String> {
    s.iter().map(|a| (*a).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
            &["#block184"],
            Some("virtio-disk0"),
            "",
        );
        assert_eq!(d0.cache_mode, Some(CacheMode::None));
        assert_eq!(d0.aio.as_deref(), Some("threads"));
        assert_eq!(d0.discard.as_deref(), Some("ignore"));
        assert_eq!(d0.iothread, None);
        let d1 = c.drive_config("d1", &[], Some("vd1"), "");
        assert_eq!(d1.cache_mode, Some(CacheMode::Unsafe));
        assert_eq!(d1.aio.as_deref(), Some("io_uring"));
        assert_eq!(d1.discard.as_deref(), Some("unmap"));
        assert_eq!(d1.iothread.as_deref(), Some("io1"));
        assert_eq!(
            c.drive_config("hotplugged", &[], None, ""),
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
        let d = c.drive_config(
            "",
            &["libvirt-1-format", "libvirt-1-storage"],
            Some("virtio-disk0"),
            "",
        );
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
        let d = c.drive_config("", &["n0", "#block1"], Some("sd0"), "");
        assert_eq!(d.cache_mode, Some(CacheMode::Writethrough));
        assert_eq!(d.aio.as_deref(), Some("threads"));
        assert_eq!(d.discard.as_deref(), Some("ignore"));
    }

    /// Drives without `id=`: QEMU's names (as `query-block` showed them for QEMU 7.2: `-drive
    /// if=virtio` is `virtio0`, `-hdb` on q35 is `ide1-hd0`), and the file as the fallback.
    #[test]
    fn drives_without_id() {
        let c = QemuCmdline::parse(&args(&[
            "-M",
            "q35",
            "-drive",
            "file=/a.qcow2,if=virtio,cache=none,aio=native,discard=unmap",
            "-hdb",
            "/b.raw",
            "-drive",
            "file=/c.raw,media=cdrom",
        ]));
        assert_eq!(c.drive_id(0), Some("virtio0"));
        assert_eq!(c.drive_id(1), Some("ide1-hd0"));
        assert_eq!(c.drive_id(2), Some("ide0-cd0"));
        let d = c.drive_config("virtio0", &["#block157", "#block064"], None, "");
        assert_eq!(d.cache_mode, Some(CacheMode::None));
        assert_eq!(d.aio.as_deref(), Some("native"));
        assert_eq!(d.discard.as_deref(), Some("unmap"));
        let b = c.drive_config("ide1-hd0", &[], None, "");
        assert_eq!(b.cache_mode, Some(CacheMode::Writeback));
        let by_file = c.drive_config("renamed", &[], None, "/a.qcow2");
        assert_eq!(by_file.aio.as_deref(), Some("native"));
        let pc = QemuCmdline::parse(&args(&["-hdb", "/b.raw", "-hdc", "/c.raw"]));
        assert_eq!(pc.drive_id(0), Some("ide0-hd1"));
        assert_eq!(pc.drive_id(1), Some("ide1-hd0"));
    }

    /// Settings on the protocol node of a separate -blockdev are read there, not on the format
    /// node above it; nested `file.*` options inherit `discard` from their parent.
    #[test]
    fn blockdev_settings_on_the_protocol_node() {
        let c = QemuCmdline::parse(&args(&[
            "-blockdev",
            "driver=file,node-name=f2,filename=/c.raw,cache.direct=on,discard=unmap,aio=native",
            "-blockdev",
            "driver=qcow2,node-name=r2,file=f2",
            "-blockdev",
            "driver=raw,node-name=r3,discard=unmap,file.driver=file,file.filename=/d.raw",
        ]));
        let d = c.drive_config("", &["r2", "f2"], None, "");
        assert_eq!(d.cache_mode, Some(CacheMode::None));
        assert_eq!(d.aio.as_deref(), Some("native"));
        assert_eq!(d.discard.as_deref(), Some("unmap"));
        let n = c.drive_config("", &["r3", "#block9"], None, "");
        assert_eq!(n.discard.as_deref(), Some("unmap"));
        assert_eq!(n.aio.as_deref(), Some("threads"));
    }

    #[test]
    fn only_qemu_processes_are_read() {
        let dir = crate::testing::file_tree(&[("42/cmdline", b"/usr/sbin/libvirtd\0--daemon\0")]);
        assert!(read_proc(dir.path(), 42).is_none());
        std::fs::write(
            dir.path().join("42/cmdline"),
            b"/usr/bin/qemu-system-x86_64\0-drive\0id=d,file=/a,cache=directsync\0",
        )
        .unwrap();
        let c = read_proc(dir.path(), 42).unwrap();
        assert_eq!(
            c.drive_config("d", &[], None, "").cache_mode,
            Some(CacheMode::Directsync)
        );
        assert!(read_proc(dir.path(), 43).is_none());
    }
}
