//! `kvmio-guest`: the program kvmio runs inside its test VMs.
//!
//! * `kvmio-guest boot` — started by the initramfs' `/init` once modules are loaded and qemu-ga
//!   runs: calls the host back with `READY` on the control port, then performs the role named on
//!   the kernel command line (`kvmio.role=idle|lab|writer`). `writer` is the crash tester's
//!   writer: append-only checksummed records on the disk under test, one `ACK` line on the
//!   control port after each record's durability point (see `kvmio_guest::writer`).
//! * `kvmio-guest write --dev DEV --count N [--block-size B] [--offset O] [--direct] [--sync]`
//!   — writes N blocks; the exporter's end-to-end test runs it through `guest-exec` so it knows
//!   exactly how many 4 KiB O_DIRECT writes the guest issued.
//!
//! * `kvmio-guest bench --dev DEV --op read|write --pattern seq|rand ...` — one IO workload for
//!   the seed-claims experiment (`kvmio_guest::bench`), one result line.
//!
//! Kept free of heavy dependencies: it is copied into every guest initramfs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kvmio_guest::bench::{bad, DeviceFlags, Flags};
use kvmio_guest::fsworkload::{self, FsWorkload};
use kvmio_guest::protocol::{read_host_line, GuestMessage, GuestState, HostMessage};
use kvmio_guest::record::Op;
use kvmio_guest::writer::{SyncPolicy, WriterParams};
use kvmio_guest::{AGENT_PARAM, AGENT_PORT, CONTROL_PORT, ROLE_PARAM};
use rand::{Rng, SeedableRng};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("boot") => boot(),
        Some("write") => write_cmd(&args[1..]),
        Some("bench") => kvmio_guest::bench::BenchSpec::from_args(&args[1..])
            .and_then(|spec| kvmio_guest::bench::run(&spec))
            .map(|result| println!("{result}")),
        Some("port") => find_port(args.get(1).map(String::as_str).unwrap_or(CONTROL_PORT))
            .map(|p| println!("{}", p.display())),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "usage: kvmio-guest boot | write --dev DEV --count N [--block-size B] [--offset O] [--direct] [--sync] | bench --dev DEV ... | port NAME",
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvmio-guest: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The device node of the virtio-serial port called `name`. Without udev there is no
/// `/dev/virtio-ports/NAME` link, so the name is read from sysfs.
///
/// Ports appear a moment after `virtio_console` loads, all at once: so this waits up to 10 s
/// for the first one, but once kvmio's own control port is there it gives another port only
/// one more second (a VM without a guest-agent port then boots without a 10 s stall).
fn find_port(name: &str) -> io::Result<PathBuf> {
    if name == AGENT_PORT && kernel_param(AGENT_PARAM).as_deref() == Some("0") {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no guest agent port ({AGENT_PARAM}=0)"),
        ));
    }
    let mut deadline = Instant::now() + Duration::from_secs(10);
    let mut control_seen = false;
    loop {
        if let Ok(entries) = fs::read_dir("/sys/class/virtio-ports") {
            for entry in entries.flatten() {
                let port_name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if port_name.trim() == name {
                    return Ok(Path::new("/dev").join(entry.file_name()));
                }
                if port_name.trim() == CONTROL_PORT && !control_seen {
                    control_seen = true;
                    deadline = deadline.min(Instant::now() + Duration::from_secs(1));
                }
            }
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no virtio-serial port named {name} under /sys/class/virtio-ports"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kernel_param(key: &str) -> Option<String> {
    let cmdline = fs::read_to_string("/proc/cmdline").ok()?;
    cmdline.split_whitespace().find_map(|w| {
        w.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
            .map(str::to_string)
    })
}

fn boot() -> io::Result<()> {
    let port_path = find_port(CONTROL_PORT)?;
    let mut port = OpenOptions::new().read(true).write(true).open(&port_path)?;
    let role = kernel_param(ROLE_PARAM).unwrap_or_else(|| "idle".to_string());
    if role == "writer" {
        // The crash tester may save the guest right after READY and restore it onto a fresh
        // disk: hold no disk data read at boot (the partition scan), so nothing the guest read
        // before can differ from what the disk it is restored onto holds.
        drop_disk_cache()?;
    }
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let ready = GuestMessage::Ready {
        kernel_release: release.trim().to_string(),
    };
    writeln!(port, "{ready}")?;
    port.flush()?;
    let outcome = match role.as_str() {
        "idle" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        "lab" => lab_workload(),
        "writer" => crash_writer(&mut port),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unknown {ROLE_PARAM}={other}"),
        )),
    };
    if let Err(e) = &outcome {
        let _ = writeln!(
            port,
            "{}",
            GuestMessage::Error {
                message: e.to_string()
            }
        );
    }
    outcome
}

fn send(port: &mut File, message: &GuestMessage) -> io::Result<()> {
    // One write(2) per line: the host reads whole lines as they come.
    port.write_all(format!("{message}\n").as_bytes())
}

/// Writes back dirty pages and drops the clean page cache, block devices' included; fails if
/// block-device data stays cached (`Buffers:` in /proc/meminfo).
fn drop_disk_cache() -> io::Result<()> {
    let _ = std::process::Command::new("/bin/sync").status();
    fs::write("/proc/sys/vm/drop_caches", "1\n")?;
    match cached_disk_kib()? {
        0 => Ok(()),
        kib => Err(io::Error::other(format!(
            "{kib} KiB of block-device data stay cached after drop_caches"
        ))),
    }
}

/// `Buffers:` of /proc/meminfo: block-device pages in the page cache, in KiB.
fn cached_disk_kib() -> io::Result<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Buffers:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| io::Error::other("no Buffers: line in /proc/meminfo"))
}

/// The host's `START`: sets the wall clock, mixes the entropy into the kernel's pool (the
/// writer's own randomness is the seed in its parameters), and says what the guest now sees.
fn apply_start(port: &mut File) -> io::Result<WriterParams> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    let line = read_host_line(port)?
        .ok_or_else(|| io::Error::other("the control port closed before START"))?;
    let HostMessage::Start {
        writer,
        now_ns,
        entropy,
    } = HostMessage::parse(&line).map_err(invalid)?;
    set_wall_clock(now_ns)?;
    fs::write("/dev/urandom", entropy)?;
    let dev = Path::new(&writer.dev)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sys = Path::new("/sys/block").join(&dev);
    let sectors: u64 = fs::read_to_string(sys.join("size"))?
        .trim()
        .parse()
        .map_err(|_| io::Error::other(format!("bad {}/size", sys.display())))?;
    let partitions = fs::read_dir(&sys)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&dev))
        .count() as u32;
    let write_cache = fs::read_to_string(sys.join("queue/write_cache"))?;
    let uptime = fs::read_to_string("/proc/uptime")?;
    let uptime_s: f64 = uptime
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let clock_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let state = GuestState {
        write_cache: write_cache.trim() == "write back",
        disk_bytes: sectors * 512,
        partitions,
        cached_kib: cached_disk_kib()?,
        clock_ns,
        uptime_ms: (uptime_s * 1000.0) as u64,
        discard_max_bytes: queue_limit(&sys, "discard_max_bytes"),
        write_zeroes_max_bytes: queue_limit(&sys, "write_zeroes_max_bytes"),
    };
    send(port, &GuestMessage::State(state))?;
    Ok(writer)
}

/// A number in `/sys/block/DEV/queue/NAME` (0 if absent or unreadable).
fn queue_limit(sys: &Path, name: &str) -> u64 {
    fs::read_to_string(sys.join("queue").join(name))
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// clock_settime(CLOCK_REALTIME): a restored guest's clock is the snapshot's until set.
fn set_wall_clock(now_ns: u64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (now_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (now_ns % 1_000_000_000) as libc::c_long,
    };
    #[allow(unsafe_code)]
    // SAFETY: clock_settime only reads the timespec, which lives on this stack frame.
    let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The crash tester's writer (`kvmio.role=writer`): waits for the host's `START`, answers
/// `STATE`, runs the workload it names (the one dispatch on the workload), then idles until the
/// host injects its fault.
fn crash_writer(port: &mut File) -> io::Result<()> {
    let params = apply_start(port)?;
    // A workload is a file workload exactly when it names a filesystem; the others write the
    // raw disk.
    match params.workload.fs() {
        Some(fs) => fs_writer(port, &params, &fs)?,
        None => raw_writer(port, &params)?,
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The file workloads (`kvmio_guest::fsworkload`): mounts the disk, runs the plan with a
/// `FACK` after each operation's durability point, `DONE` when the plan is done.
fn fs_writer(port: &mut File, params: &WriterParams, fs: &FsWorkload) -> io::Result<()> {
    let ops = fsworkload::run(&params.dev, fs, params.seed, params.ack_early, |ack| {
        send(port, &GuestMessage::FileAck(ack.clone()))
    })?;
    send(port, &GuestMessage::Done { records: ops })
}

/// The raw workloads: the plan's operations in order (records written to their slots, ranges
/// discarded or zeroed), an `ACK` after each one's durability point, `DONE` at the end of the
/// plan (append: when the disk is full).
fn raw_writer(port: &mut File, params: &WriterParams) -> io::Result<()> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    let spec = params.spec().map_err(invalid)?;
    // The broken self-test writer keeps the policy's flush for the very end.
    let sync_each = !params.ack_early;
    let mut flags = libc::O_DIRECT;
    if params.sync == SyncPolicy::Dsync && sync_each {
        flags |= libc::O_DSYNC;
    }
    let mut dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(&params.dev)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", params.dev)))?;
    let size = dev.seek(SeekFrom::End(0))?;
    let slots = spec.slots(size);
    let mut ops = spec.ops(slots);
    if let Some(n) = params.records {
        ops = ops.min(n);
    }
    let mut buf = AlignedBuf::new(spec.size);
    for seq in 0..ops {
        let op = spec.op(seq, slots);
        let digest = match op {
            Op::Write { slot } => {
                let digest = spec.fill_at(seq, slot, buf.as_mut());
                dev.write_all_at(buf.as_ref(), spec.offset(slot))
                    .map_err(|e| io::Error::new(e.kind(), format!("write slot {slot}: {e}")))?;
                digest
            }
            Op::Discard { .. } | Op::Zero { .. } => {
                let range = op.slots();
                let bytes = [
                    spec.offset(range.start),
                    spec.offset(range.end - range.start),
                ];
                block_range_ioctl(&dev, op, bytes)
                    .map_err(|e| io::Error::new(e.kind(), format!("{op:?}: {e}")))?;
                spec.op_digest(seq, op)
            }
        };
        // O_DSYNC makes a write durable; a discard or write-zeroes ioctl it does not cover.
        let flush = match params.sync {
            SyncPolicy::Fdatasync => true,
            SyncPolicy::Dsync => !matches!(op, Op::Write { .. }),
            SyncPolicy::None => false,
        };
        if flush && sync_each {
            dev.sync_data()
                .map_err(|e| io::Error::new(e.kind(), format!("fdatasync: {e}")))?;
        }
        let slot = op.first_slot();
        send(port, &GuestMessage::Ack { seq, slot, digest })?;
    }
    if !sync_each && params.sync != SyncPolicy::None {
        dev.sync_data()?;
    }
    send(port, &GuestMessage::Done { records: ops })
}

/// `BLKDISCARD` or `BLKZEROOUT` (linux/fs.h: `_IO(0x12, 119)`, `_IO(0x12, 127)`) of
/// `[offset, length]` bytes of the block device `dev`.
fn block_range_ioctl(dev: &File, op: Op, range: [u64; 2]) -> io::Result<()> {
    const BLKDISCARD: libc::c_ulong = 0x1277;
    const BLKZEROOUT: libc::c_ulong = 0x127f;
    let request = match op {
        Op::Discard { .. } => BLKDISCARD,
        Op::Zero { .. } => BLKZEROOUT,
        Op::Write { .. } => return Err(io::Error::other("a write is not a range operation")),
    };
    #[allow(unsafe_code)]
    // SAFETY: both ioctls read two u64 (start, length) from the pointer, which points at
    // `range` on this stack frame for the duration of the call.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), request as _, range.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The virtio disks of this guest (`vda`, `vdb`, ...), with their size in bytes.
fn virtio_disks() -> io::Result<Vec<(PathBuf, u64)>> {
    let mut disks = Vec::new();
    for entry in fs::read_dir("/sys/block")?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("vd") {
            continue;
        }
        let sectors: u64 = fs::read_to_string(entry.path().join("size"))?
            .trim()
            .parse()
            .unwrap_or(0);
        disks.push((Path::new("/dev").join(&name), sectors * 512));
    }
    disks.sort();
    Ok(disks)
}

/// A buffer aligned for O_DIRECT, without unsafe code: over-allocate and slice.
struct AlignedBuf {
    storage: Vec<u8>,
    offset: usize,
    len: usize,
}

impl AlignedBuf {
    const ALIGN: usize = 4096;

    fn new(len: usize) -> AlignedBuf {
        let storage = vec![0u8; len + Self::ALIGN];
        let offset = storage.as_ptr().align_offset(Self::ALIGN);
        AlignedBuf {
            storage,
            offset,
            len,
        }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.offset..self.offset + self.len]
    }

    fn as_ref(&self) -> &[u8] {
        &self.storage[self.offset..self.offset + self.len]
    }
}

/// A steady, modest mixed workload on every virtio disk, so the exporter has moving counters
/// at every layer: random O_DIRECT reads and writes, buffered sequential writes with fsync
/// (merges and flushes), about 40 operations a second per disk so that several TCG guests
/// can share two host cores.
fn lab_workload() -> io::Result<()> {
    let disks = virtio_disks()?;
    if disks.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no virtio disks"));
    }
    let mut handles = Vec::new();
    for (i, (path, size)) in disks.into_iter().enumerate() {
        handles.push(std::thread::spawn(move || {
            disk_workload(&path, size, i as u64)
        }));
    }
    for h in handles {
        match h.join() {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::other("workload thread panicked")),
        }
    }
    Ok(())
}

fn disk_workload(path: &Path, size: u64, seed: u64) -> io::Result<()> {
    let direct = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let mut buffered = OpenOptions::new().read(true).write(true).open(path)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut buf = AlignedBuf::new(64 * 1024);
    rng.fill(buf.as_mut());
    let blocks = (size / 4096).max(1);
    let mut seq_pos = 0u64;
    loop {
        for _ in 0..8 {
            let block = rng.random_range(0..blocks);
            let len = 4096 * rng.random_range(1..=16usize).min((blocks - block) as usize);
            if rng.random_bool(0.5) {
                direct.read_at(&mut buf.as_mut()[..len], block * 4096)?;
            } else {
                direct.write_at(&buf.as_ref()[..len], block * 4096)?;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        // Small buffered sequential writes: the guest's scheduler merges them, then a flush.
        for _ in 0..8 {
            if seq_pos + 4096 > size {
                seq_pos = 0;
            }
            buffered.write_all_at(&buf.as_ref()[..4096], seq_pos)?;
            seq_pos += 4096;
        }
        buffered.flush()?;
        buffered.sync_data()?;
    }
}

struct WriteArgs {
    device: DeviceFlags,
    count: u64,
    sync: bool,
}

fn parse_write_args(args: &[String]) -> io::Result<WriteArgs> {
    let mut out = WriteArgs {
        device: DeviceFlags::default(),
        count: 0,
        sync: false,
    };
    let mut flags = Flags::new(args);
    while let Some(flag) = flags.next_flag() {
        match flag {
            "--count" => out.count = flags.number(flag)?,
            "--sync" => out.sync = true,
            other => out.device.take(other, &mut flags)?,
        }
    }
    if out.device.dev.as_os_str().is_empty() || out.count == 0 {
        return Err(bad("write needs --dev DEV and --count N (> 0)".into()));
    }
    out.device.check_alignment()?;
    Ok(out)
}

/// Writes `count` blocks and prints one JSON line with what it did.
fn write_cmd(args: &[String]) -> io::Result<()> {
    let WriteArgs {
        device: d,
        count,
        sync,
    } = parse_write_args(args)?;
    let mut opts = OpenOptions::new();
    opts.write(true);
    let mut flags = 0;
    if d.direct {
        flags |= libc::O_DIRECT;
    }
    if sync {
        flags |= libc::O_DSYNC;
    }
    opts.custom_flags(flags);
    let file: File = opts.open(&d.dev)?;
    let mut buf = AlignedBuf::new(d.block_size);
    let mut rng = rand::rngs::StdRng::seed_from_u64(d.offset ^ count);
    rng.fill(buf.as_mut());
    let start = Instant::now();
    for i in 0..count {
        file.write_all_at(buf.as_ref(), d.offset + i * d.block_size as u64)?;
    }
    println!(
        "{{\"dev\":\"{}\",\"writes\":{count},\"block_size\":{},\"direct\":{},\"sync\":{sync},\"seconds\":{:.3}}}",
        d.dev.display(),
        d.block_size,
        d.direct,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
