//! Scrape cost at scale (not a timed test; the figures go to BENCHMARKS.md):
//!
//! ```text
//! cargo bench -p kvmio-exporter --bench scrape [-- --vms 100 --scrapes 30]
//! ```
//!
//! Starts N `qemu-system-x86_64 -M none` with 4 raw drives each and N host-run
//! `qemu-ga -m unix-listen` agents (`vmK.qmp` <-> `vmK.qga`, paired by stem), then measures in the
//! same run:
//! - the raw concurrent round-trip floor for the exporter's per-scrape work: every socket at
//!   once, QMP connect + greeting + `qmp_capabilities` + `query-blockstats` + `query-block` +
//!   disconnect, agent connect + `guest-sync-delimited` + `guest-get-diskstats` +
//!   `guest-get-disks` + disconnect, reading reply lines without parsing them (before and after
//!   the exporter runs);
//! - the `kvmio-exporter` binary (release) against them: scrape latency (HTTP, median and p99),
//!   exporter CPU per scrape (utime+stime of the process), RSS (current and peak);
//! - the same with `--qmp.persistent`;
//! - the host diskstats collector: `kvmio_collector_duration_seconds{collector="host_diskstats"}`
//!   of an exporter with `--host.devices=all` and no VMs, against node_exporter's own
//!   `node_scrape_collector_duration_seconds{collector="diskstats"}`
//!   (`prometheus-node-exporter --collector.disable-defaults --collector.diskstats`), same host.
//!
//! It holds the e2e tests' VM slot (`$TMPDIR/kvmio-e2e-vm.lock`) so that no TCG guest of a test
//! shares the cores meanwhile. Every process it starts is killed and reaped on every path (and
//! dies with it if it is killed: `PR_SET_PDEATHSIG`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvmio_test_support::bench::{
    clock_ticks, loadavg, median, median_p99, ms, parse_flags, qemu_processes, stat_fields,
    status_mib, table_head, wait_listening,
};
use kvmio_test_support::metrics::sample;
use kvmio_test_support::qemu::{qemu_ga, qemu_none};
use kvmio_test_support::{
    free_port, http_get, launch_exporter, require, spawn_tied, vm_slot, ChildProcess,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

struct Args {
    vms: usize,
    scrapes: usize,
    drives: usize,
    /// Keep the VMs up this many seconds and measure nothing (for profiling by hand).
    hold: Option<u64>,
}

fn args() -> Args {
    let mut a = Args {
        vms: 100,
        scrapes: 30,
        drives: 4,
        hold: None,
    };
    parse_flags(|flag, v| match flag {
        "--vms" => a.vms = v.number(),
        "--scrapes" => a.scrapes = v.number(),
        "--drives" => a.drives = v.number(),
        "--hold" => a.hold = Some(v.number() as u64),
        _ => {}
    });
    a
}

type Reader = BufReader<tokio::net::unix::OwnedReadHalf>;
type Writer = tokio::net::unix::OwnedWriteHalf;

async fn read_reply(r: &mut Reader, buf: &mut Vec<u8>) {
    loop {
        buf.clear();
        let n = r.read_until(b'\n', buf).await.expect("read");
        assert!(n > 0, "peer closed");
        // Skip QMP events (none are expected from -M none).
        if !buf.starts_with(b"{\"event\"") && !buf.starts_with(b"{\"timestamp\"") {
            return;
        }
    }
}

/// The floor's QMP part for one VM.
async fn raw_qmp(path: PathBuf) {
    let s = UnixStream::connect(&path).await.expect("connect QMP");
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut buf = Vec::with_capacity(64 * 1024);
    read_reply(&mut r, &mut buf).await; // greeting
    for req in [
        &b"{\"execute\":\"qmp_capabilities\",\"id\":1}\n"[..],
        b"{\"execute\":\"query-blockstats\",\"arguments\":{\"query-nodes\":false},\"id\":2}\n",
        b"{\"execute\":\"query-block\",\"id\":3}\n",
    ] {
        w.write_all(req).await.expect("write");
        read_reply(&mut r, &mut buf).await;
    }
}

/// The agent part, with or without `guest-get-disks`.
async fn raw_qga_with(path: PathBuf, disks: bool) {
    let s = UnixStream::connect(&path).await.expect("connect agent");
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut buf = Vec::with_capacity(64 * 1024);
    agent_sync(&mut r, &mut w, &mut buf, 4242).await;
    for req in [
        &b"{\"execute\":\"guest-get-diskstats\"}\n"[..],
        b"{\"execute\":\"guest-get-disks\"}\n",
    ] {
        if !disks && req.starts_with(b"{\"execute\":\"guest-get-disks\"") {
            continue;
        }
        w.write_all(req).await.expect("write");
        buf.clear();
        let n = r.read_until(b'\n', &mut buf).await.expect("read");
        assert!(n > 0, "agent closed");
    }
}

/// `guest-sync-delimited` with `id` (after a 0xff to reset the agent's parser); reads up to the
/// reply that carries `id`.
async fn agent_sync(r: &mut Reader, w: &mut Writer, buf: &mut Vec<u8>, id: u32) {
    let req = format!("{{\"execute\":\"guest-sync-delimited\",\"arguments\":{{\"id\":{id}}}}}\n");
    w.write_all(&[b"\xff", req.as_bytes()].concat())
        .await
        .expect("write");
    let id = id.to_string();
    loop {
        buf.clear();
        let n = r.read_until(b'\n', buf).await.expect("read");
        assert!(n > 0, "agent closed");
        if buf.windows(id.len()).any(|w| w == id.as_bytes()) {
            return;
        }
    }
}

/// One round of the floor, with or without `guest-get-disks`: every socket at once; wall time.
async fn floor_round(qmp: &[PathBuf], qga: &[PathBuf], disks: bool) -> f64 {
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for p in qmp {
        set.spawn(raw_qmp(p.clone()));
    }
    for p in qga {
        set.spawn(raw_qga_with(p.clone(), disks));
    }
    while let Some(r) = set.join_next().await {
        r.expect("floor task");
    }
    t0.elapsed().as_secs_f64()
}

/// Connections kept open: QMP negotiated, agents synced.
async fn open_all(qmp: &[PathBuf], qga: &[PathBuf]) -> Vec<(bool, Reader, Writer)> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for p in qmp {
        let (r, mut w) = UnixStream::connect(p).await.expect("connect").into_split();
        let mut r = BufReader::new(r);
        read_reply(&mut r, &mut buf).await;
        w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
            .await
            .unwrap();
        read_reply(&mut r, &mut buf).await;
        out.push((true, r, w));
    }
    for p in qga {
        let (r, mut w) = UnixStream::connect(p).await.expect("connect").into_split();
        let mut r = BufReader::new(r);
        agent_sync(&mut r, &mut w, &mut buf, 77).await;
        out.push((false, r, w));
    }
    out
}

/// One round of the same queries over the open connections, all at once.
async fn persistent_round(
    conns: Vec<(bool, Reader, Writer)>,
) -> (f64, Vec<(bool, Reader, Writer)>) {
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (is_qmp, mut r, mut w) in conns {
        set.spawn(async move {
            let mut buf = Vec::with_capacity(64 * 1024);
            let reqs: [&[u8]; 2] = if is_qmp {
                [
                    b"{\"execute\":\"query-blockstats\",\"arguments\":{\"query-nodes\":false}}\n",
                    b"{\"execute\":\"query-block\"}\n",
                ]
            } else {
                [
                    b"{\"execute\":\"guest-get-diskstats\"}\n",
                    b"{\"execute\":\"guest-get-disks\"}\n",
                ]
            };
            for req in reqs {
                w.write_all(req).await.unwrap();
                read_reply(&mut r, &mut buf).await;
            }
            (is_qmp, r, w)
        });
    }
    let mut back = Vec::new();
    while let Some(c) = set.join_next().await {
        back.push(c.expect("task"));
    }
    (t0.elapsed().as_secs_f64(), back)
}

async fn persistent_floor(qmp: &[PathBuf], qga: &[PathBuf], rounds: usize) -> Vec<f64> {
    let mut conns = open_all(qmp, qga).await;
    let mut out = Vec::new();
    for i in 0..rounds + 3 {
        let (t, back) = persistent_round(conns).await;
        conns = back;
        if i >= 3 {
            out.push(t);
        }
    }
    out
}

/// `rounds` rounds of the floor (with `guest-get-disks`).
async fn floor(qmp: &[PathBuf], qga: &[PathBuf], rounds: usize) -> Vec<f64> {
    floor_with(qmp, qga, rounds, true).await
}

/// `rounds` rounds of the floor, with or without `guest-get-disks`.
async fn floor_with(qmp: &[PathBuf], qga: &[PathBuf], rounds: usize, disks: bool) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..rounds {
        out.push(floor_round(qmp, qga, disks).await);
    }
    out
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let (u, s) = cpu_split(pid);
    u + s
}

/// (utime, stime) of a process, in seconds.
fn cpu_split(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f = stat_fields(&stat);
    let hz = clock_ticks();
    (
        f[11].parse::<f64>().unwrap() / hz,
        f[12].parse::<f64>().unwrap() / hz,
    )
}

/// (VmRSS, VmHWM) in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    (status_mib(&status, "VmRSS:"), status_mib(&status, "VmHWM:"))
}

fn get(addr: &str, path: &str) -> (String, f64) {
    let (status, body, elapsed) = http_get(addr, path, Duration::from_secs(60));
    assert_eq!(status, 200, "GET {path}");
    (body, elapsed.as_secs_f64())
}

/// The exporter binary (this package's) on a free loopback port.
fn exporter(args: &[String], log: &Path) -> (ChildProcess, String) {
    let bin = env!("CARGO_BIN_EXE_kvmio-exporter");
    launch_exporter(Command::new(bin), args, log)
}

struct ExporterRun {
    latencies: Vec<f64>,
    cpu_per_scrape: f64,
    /// (user, system) CPU per scrape.
    cpu_split: (f64, f64),
    rss: (f64, f64),
    collector: Vec<(String, f64)>,
    samples: usize,
    up: (usize, usize),
}

/// Runs an exporter with `extra` flags: `warm` unmeasured scrapes, then `n` measured.
async fn run_exporter(dir: &Path, extra: &[String], warm: usize, n: usize) -> ExporterRun {
    let log = dir.join(format!(
        "exporter-{}.log",
        extra.join("_").replace(['/', '*', '='], "")
    ));
    let mut args = vec![format!("--qmp.socket-glob={}/*.qmp", dir.display())];
    args.extend_from_slice(extra);
    let (mut p, addr) = exporter(&args, &log);
    let pid = p.pid();
    let a = addr.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut body = String::new();
        for _ in 0..warm {
            body = get(&a, "/metrics").0;
        }
        let cpu0 = cpu_split(pid);
        let mut lat = Vec::new();
        for _ in 0..n {
            let (b, t) = get(&a, "/metrics");
            lat.push(t);
            body = b;
        }
        let cpu1 = cpu_split(pid);
        let split = ((cpu1.0 - cpu0.0) / n as f64, (cpu1.1 - cpu0.1) / n as f64);
        (lat, split, body)
    })
    .await
    .unwrap();
    let (latencies, cpu_split, body) = out;
    let cpu_per_scrape = cpu_split.0 + cpu_split.1;
    let rss = rss_mib(pid);
    let collector = body
        .lines()
        .filter_map(|l| l.strip_prefix("kvmio_collector_duration_seconds{collector=\""))
        .map(|l| {
            let (name, v) = l.split_once("\"} ").unwrap();
            (name.to_owned(), v.parse().unwrap())
        })
        .collect();
    let up = |family: &str| {
        body.lines()
            .filter(|l| l.starts_with(family) && l.ends_with(" 1"))
            .count()
    };
    let (up_qmp, up_qga) = (up("kvmio_qmp_up{"), up("kvmio_qga_up{"));
    let samples = body.lines().filter(|l| !l.starts_with('#')).count();
    p.stop();
    ExporterRun {
        latencies,
        cpu_per_scrape,
        cpu_split,
        rss,
        collector,
        samples,
        up: (up_qmp, up_qga),
    }
}

/// node_exporter's diskstats collector duration over `n` scrapes, with `extra` flags.
fn node_exporter_diskstats(n: usize, dir: &Path, extra: &[&str]) -> Vec<f64> {
    let bin = require("prometheus-node-exporter", "prometheus-node-exporter");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = dir.join("node-exporter.log");
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--web.listen-address={addr}"))
        .args(["--collector.disable-defaults", "--collector.diskstats"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut p = spawn_tied(&mut cmd, "node_exporter");
    wait_listening(&addr, Duration::from_secs(30), &mut p, &log);
    let out = durations(
        &addr,
        n,
        "node_scrape_collector_duration_seconds{collector=\"diskstats\"}",
    );
    p.stop();
    out
}

/// The value of `series` in each of `n` scrapes of `addr`, after 3 unmeasured ones.
fn durations(addr: &str, n: usize, series: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for i in 0..n + 3 {
        let (body, _) = get(addr, "/metrics");
        if i >= 3 {
            out.push(sample(&body, series).unwrap_or_else(|| panic!("{series} from {addr}")));
        }
    }
    out
}

/// kvmio's host diskstats collector duration over `n` scrapes of an exporter with no VMs.
fn kvmio_diskstats(n: usize, dir: &Path) -> Vec<f64> {
    let (mut p, addr) = exporter(
        &["--host.devices=all".to_owned()],
        &dir.join("exporter-host.log"),
    );
    let out = durations(
        &addr,
        n,
        "kvmio_collector_duration_seconds{collector=\"host_diskstats\"}",
    );
    p.stop();
    out
}

fn main() {
    let a = args();
    eprintln!(
        "waiting for the VM slot ({})...",
        std::env::temp_dir().join("kvmio-e2e-vm.lock").display()
    );
    let _slot = vm_slot();
    let load_before = loadavg();
    let foreign_before = qemu_processes();
    let dir = kvmio_test_support::target_tempdir!("kvmio-bench");
    let d = dir.path();
    eprintln!(
        "starting {} QEMUs ({} drives each) and {} agents in {}",
        a.vms,
        a.drives,
        a.vms,
        d.display()
    );
    let t0 = Instant::now();
    let mut procs_: Vec<ChildProcess> = Vec::with_capacity(2 * a.vms);
    let mut qmp = Vec::new();
    let mut qga = Vec::new();
    for k in 0..a.vms {
        let (p, s) = qemu_none(d, &format!("vm{k:03}"), a.drives);
        procs_.push(p);
        qmp.push(s);
        let (p, s) = qemu_ga(d, &format!("vm{k:03}"));
        procs_.push(p);
        qga.push(s);
    }
    eprintln!("{} processes up in {:.1?}", procs_.len(), t0.elapsed());
    if let Some(secs) = a.hold {
        eprintln!(
            "holding for {secs} s: --qmp.socket-glob '{}/*.qmp'",
            d.display()
        );
        std::thread::sleep(Duration::from_secs(secs));
        return;
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let n = a.scrapes;
    let me = std::process::id();
    let (floor_a, floor_cpu, per_scrape, persistent, floor_b) = rt.block_on(async {
        floor(&qmp, &qga, 3).await; // warm-up
        let c0 = cpu_seconds(me);
        let floor_a = floor(&qmp, &qga, n).await;
        let floor_cpu = (cpu_seconds(me) - c0) / n as f64;
        let per_scrape = run_exporter(d, &[], 3, n).await;
        let persistent = run_exporter(d, &["--qmp.persistent".to_owned()], 3, n).await;
        let floor_b = floor(&qmp, &qga, n).await;
        (floor_a, floor_cpu, per_scrape, persistent, floor_b)
    });
    // The floor with and without guest-get-disks, round by round (no drift between them).
    let (full_paired, same_work) = rt.block_on(async {
        let (mut full, mut same) = (Vec::new(), Vec::new());
        for _ in 0..n {
            full.push(floor_round(&qmp, &qga, true).await);
            same.push(floor_round(&qmp, &qga, false).await);
        }
        (full, same)
    });
    let qmp_only = rt.block_on(floor(&qmp, &[], n));
    let agents_only = rt.block_on(floor(&[], &qga, n));
    let agents_no_disks = rt.block_on(floor_with(&[], &qga, n, false));
    let raw_persistent = rt.block_on(persistent_floor(&qmp, &qga, n));
    let kvmio_disk = kvmio_diskstats(100, d);
    let node_disk = node_exporter_diskstats(100, d, &[]);
    let node_disk_all =
        node_exporter_diskstats(100, d, &["--collector.diskstats.device-exclude=^$"]);
    let devices = std::fs::read_to_string("/proc/diskstats")
        .unwrap_or_default()
        .lines()
        .count();
    for mut p in procs_ {
        p.stop();
    }
    let foreign_after = qemu_processes();

    let floor_med = median(&[floor_a.clone(), floor_b.clone()].concat());
    let lat = &per_scrape.latencies;
    let plat = &persistent.latencies;
    let (kd, nd, nda) = (&kvmio_disk, &node_disk, &node_disk_all);
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    println!(
        "## results ({} VMs x {} drives, {} agents, {} scrapes, {} CPUs; before the run: loadavg {}, other QEMUs {}; after: other QEMUs {})",
        a.vms,
        a.drives,
        a.vms,
        n,
        cpus,
        load_before,
        foreign_before,
        foreign_after
    );
    table_head(&["measure", "value"]);
    let row = |what: &str, value: String| println!("| {what} | {value} |");
    let against_floor = |what: &str, v: &[f64]| {
        row(
            &format!("{what} median / floor median"),
            format!("{:.2}x", median(v) / floor_med),
        )
    };
    row(
        "raw floor, QMP + agents, all sockets at once: median (before / after the exporter)",
        format!(
            "{} ({} / {})",
            ms(floor_med),
            ms(median(&floor_a)),
            ms(median(&floor_b))
        ),
    );
    row("raw floor, QMP only: median", ms(median(&qmp_only)));
    row(
        "raw floor, agents only: median (without guest-get-disks)",
        format!(
            "{} ({})",
            ms(median(&agents_only)),
            ms(median(&agents_no_disks))
        ),
    );
    let sw = median(&same_work);
    row(
        "raw floor without guest-get-disks (the exporter's steady-state work): median (with it, alternating rounds)",
        format!("{} ({})", ms(sw), ms(median(&full_paired))),
    );
    let rp = median(&raw_persistent);
    row(
        "raw floor over kept-open connections (same queries, no connect/negotiate/sync): median",
        format!("{} ({:.2}x the floor)", ms(rp), rp / floor_med),
    );
    row("raw floor client's own CPU per round", ms(floor_cpu));
    row("kvmio-exporter scrape: median / p99", median_p99(lat, 1));
    against_floor("scrape", lat);
    row(
        "exporter CPU per scrape (user + system)",
        format!(
            "{} ({} + {})",
            ms(per_scrape.cpu_per_scrape),
            ms(per_scrape.cpu_split.0),
            ms(per_scrape.cpu_split.1)
        ),
    );
    row(
        "exporter RSS after the scrapes (current / peak)",
        format!("{:.1} MiB / {:.1} MiB", per_scrape.rss.0, per_scrape.rss.1),
    );
    row(
        "samples per scrape; VMs up (QMP / agent)",
        format!(
            "{}; {} / {}",
            per_scrape.samples, per_scrape.up.0, per_scrape.up.1
        ),
    );
    row(
        "collector durations in the last scrape",
        per_scrape
            .collector
            .iter()
            .map(|(c, v)| format!("{c} {}", ms(*v)))
            .collect::<Vec<_>>()
            .join(", "),
    );
    row("--qmp.persistent scrape: median / p99", median_p99(plat, 1));
    against_floor("persistent", plat);
    row(
        "against the floor without guest-get-disks: scrape / persistent",
        format!("{:.2}x / {:.2}x", median(lat) / sw, median(plat) / sw),
    );
    row(
        "--qmp.persistent: CPU per scrape, RSS (current / peak)",
        format!(
            "{}, {:.1} / {:.1} MiB; VMs up {} / {}",
            ms(persistent.cpu_per_scrape),
            persistent.rss.0,
            persistent.rss.1,
            persistent.up.0,
            persistent.up.1
        ),
    );
    row(
        "host diskstats collector, kvmio (--host.devices=all): median / p99",
        median_p99(kd, 3),
    );
    row(
        "node_exporter diskstats collector, its default device filter: median / p99",
        median_p99(nd, 3),
    );
    row(
        &format!(
            "node_exporter diskstats collector, all {devices} devices (device-exclude=^$): median / p99"
        ),
        median_p99(nda, 3),
    );
    row(
        "node_exporter / kvmio diskstats: default filter / same devices",
        format!(
            "{:.1}x / {:.1}x",
            median(nd) / median(kd),
            median(nda) / median(kd)
        ),
    );
}
