//! kvmio-exporter through libvirt against Debian's prometheus-libvirt-exporter, on the same
//! domains of the same private libvirtd, scrapes alternating (not a timed test; the figures go
//! to BENCHMARKS.md):
//!
//! ```text
//! cargo build --release -p kvmio-exporter
//! cargo bench -p kvmio-e2e --bench libvirt [-- --domains 52 --rounds 30]
//! ```
//!
//! It starts a private libvirtd ([`kvmio_e2e::libvirtd::Libvirtd`]), defines and starts N
//! paused domains ([`DomainSpec::paused`]: no kernel, a qcow2 and a raw disk, no guest CPU),
//! then the release `kvmio-exporter --libvirt.uri=URI` and `prometheus-libvirt-exporter
//! --libvirt.uri=URI`, both as root on free loopback ports. After `--warmup` unmeasured scrapes
//! each, it scrapes A, B, A, B... for `--rounds` rounds and records, per scrape: the wall time of
//! the complete `GET /metrics` (connect to last byte), the CPU time (utime + stime from
//! `/proc/PID/stat`) the exporter, libvirtd and all the domains' QEMUs used meanwhile, samples
//! (non-comment lines) and bytes; at the end each exporter's RSS (`/proc/PID/status`).
//!
//! In the same rounds it also times the libvirt floor for the same data: one `virsh domstats
//! --state --block --backing --nowait` (a new process, one connection, one call for every
//! domain, which libvirtd answers domain after domain). Before the rounds it measures 3 s of
//! background CPU with nobody scraping (paused QEMUs still run their main loops).
//!
//! `/proc/PID/stat` counts in clock ticks (10 ms here), so a per-scrape median of a few ms is
//! quantised: the table gives the median and the mean over all rounds (exact to a tick over
//! the whole run), and a median from `/proc/PID/task/*/schedstat` (nanoseconds, threads alive
//! at both readings).
//!
//! Options after `--`: `--domains N` (52), `--rounds N` (30), `--warmup N` (3),
//! `--kvmio-arg ARG` (repeatable: an extra flag for kvmio-exporter, for experiments),
//! `--families` (list each exporter's metric names with their sample counts), `--no-floor`
//! (no virsh column), `--hold SECONDS` (keep everything up that long before measuring, for
//! profiling by hand: the addresses and pids are printed).
//!
//! It holds the e2e tests' VM slot. Both exporters are killed and reaped on every path
//! ([`ChildProcess`]), and the harness's Drop destroys the domains and stops libvirtd and
//! virtlogd; at the end it checks that no process it started is left.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvmio_e2e::libvirtd::{DomainSpec, Libvirtd};
use kvmio_e2e::{free_port, processes_mentioning, vm_slot, which, ChildProcess};
use kvmio_test_support::bench::{
    clock_ticks, loadavg, mean, median, ms, parse_flags, percentile, qemu_processes, sorted,
    stat_fields, status_mib, table_head, wait_listening,
};
use kvmio_test_support::wait_for_while_running;

const REFERENCE: &str = "prometheus-libvirt-exporter";

struct Args {
    domains: usize,
    rounds: usize,
    warmup: usize,
    kvmio_args: Vec<String>,
    families: bool,
    /// Also time `virsh domstats` (the libvirt floor) in the rounds.
    floor: bool,
    /// Keep everything up this many seconds before measuring (for profiling by hand).
    hold: Option<u64>,
}

fn args() -> Args {
    let mut a = Args {
        domains: 52,
        rounds: 30,
        warmup: 3,
        kvmio_args: Vec::new(),
        families: false,
        floor: true,
        hold: None,
    };
    parse_flags(|flag, v| match flag {
        "--domains" => a.domains = v.number(),
        "--rounds" => a.rounds = v.number(),
        "--warmup" => a.warmup = v.number(),
        "--kvmio-arg" => a.kvmio_args.push(v.string()),
        "--families" => a.families = true,
        "--no-floor" => a.floor = false,
        "--hold" => a.hold = Some(v.number() as u64),
        _ => {}
    });
    assert!(
        a.domains > 0 && a.rounds > 0,
        "--domains and --rounds: at least 1"
    );
    a
}

/// utime + stime of a process (all its threads, and children it reaped), in seconds.
fn cpu_seconds(pid: u32, hz: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    ticks(&stat, [11, 12]) / hz
}

/// The sum of two clock-tick fields of a `/proc/PID/stat` line ([`stat_fields`]; 0 if absent).
fn ticks(stat: &str, fields: [usize; 2]) -> f64 {
    let f = stat_fields(stat);
    fields
        .iter()
        .map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0))
        .sum()
}

/// Run time of each live thread (`/proc/PID/task/TID/schedstat`, nanoseconds).
fn thread_runtimes(pid: u32) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = text.split_whitespace().next().and_then(|v| v.parse().ok()) {
            out.insert(tid, ns);
        }
    }
    out
}

/// Seconds run between two [`thread_runtimes`] readings by the threads alive at both.
fn runtime_delta(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>) -> f64 {
    after
        .iter()
        .filter_map(|(tid, ns)| before.get(tid).map(|b| ns.saturating_sub(*b)))
        .sum::<u64>() as f64
        / 1e9
}

/// (VmRSS, VmHWM, RssAnon, RssFile) in MiB.
fn rss_mib(pid: u32) -> (f64, f64, f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |k: &str| status_mib(&status, k);
    (
        get("VmRSS:"),
        get("VmHWM:"),
        get("RssAnon:"),
        get("RssFile:"),
    )
}

/// Decodes a `Transfer-Encoding: chunked` body (Go's net/http streams large answers so).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            panic!("truncated chunked body");
        };
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
        raw = &raw[eol + 2..];
        if size == 0 {
            return out;
        }
        assert!(raw.len() >= size + 2, "truncated chunk");
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// One complete `GET /metrics` (connect to the last byte; `Connection: close`): (body, seconds).
fn http_get(addr: &str) -> (String, f64) {
    let t0 = Instant::now();
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut raw = Vec::with_capacity(256 * 1024);
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read the answer of {addr}: {e}"));
    let elapsed = t0.elapsed().as_secs_f64();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{addr}: no HTTP header in the answer"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{addr}: {head}");
    let body = &raw[split + 4..];
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    (String::from_utf8(body).expect("UTF-8 metrics"), elapsed)
}

/// Samples (non-comment, non-empty lines).
fn samples(body: &str) -> usize {
    body.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

/// Sample count per metric name (the histogram/summary suffixes kept).
fn families(body: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for l in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name = l.split(['{', ' ']).next().unwrap_or(l);
        *out.entry(name.to_owned()).or_insert(0) += 1;
    }
    out
}

/// Samples of `name` whose line contains `needle` and whose value is 1.
fn count_ones(body: &str, name: &str) -> usize {
    body.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) == Some(1.0))
        .count()
}

/// The release kvmio-exporter next to this bench (`target/release`), built if missing.
fn release_exporter() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("kvmio-exporter");
    if !bin.is_file() {
        eprintln!(
            "{} is missing: cargo build --release -p kvmio-exporter",
            bin.display()
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let ok = Command::new(cargo)
            .args(["build", "--release", "-p", "kvmio-exporter"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok && bin.is_file(),
            "{} is still missing: run `cargo build --release -p kvmio-exporter` first",
            bin.display()
        );
    }
    // A binary older than the exporter's sources measures old code: say so.
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let newest_src = newest_mtime(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../exporter"
    )));
    if let (Some(b), Some(s)) = (built, newest_src) {
        if s > b {
            eprintln!(
                "WARNING: {} is older than exporter/ sources: run `cargo build --release -p kvmio-exporter`",
                bin.display()
            );
        }
    }
    bin
}

fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    let mut stack = vec![dir.join("src"), dir.join("Cargo.toml")];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                stack.push(e.path());
            }
        } else if let Ok(m) = meta.modified() {
            newest = newest.max(Some(m));
        }
    }
    newest
}

fn start_kvmio(bin: &Path, uri: &str, extra: &[String], log: &Path) -> (ChildProcess, String) {
    let mut cmd = Command::new(bin);
    cmd.arg("--web.listen-address=127.0.0.1:0")
        .arg(format!("--libvirt.uri={uri}"))
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or("info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("exporter log"));
    let mut child = ChildProcess::spawn(&mut cmd);
    let addr = wait_for_while_running(
        "kvmio-exporter's 'listening on' line",
        Duration::from_secs(30),
        &mut child,
        log,
        || {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let rest = text.split("listening on http://").nth(1)?;
            Some(rest.split("/metrics").next().unwrap_or("").to_owned())
        },
    );
    assert!(addr.starts_with("127.0.0.1:"), "kvmio listens on {addr}");
    wait_listening(&addr, Duration::from_secs(30), &mut child, log);
    (child, addr)
}

fn start_reference(bin: &Path, uri: &str, log: &Path) -> (ChildProcess, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--web.listen-address={addr}"))
        .arg(format!("--libvirt.uri={uri}"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log.with_extension("stdout")).expect("log"))
        .stderr(std::fs::File::create(log).expect("log"));
    let mut child = ChildProcess::spawn(&mut cmd);
    wait_listening(&addr, Duration::from_secs(30), &mut child, log);
    (child, addr)
}

/// How a target is scraped.
enum Kind {
    /// An exporter: `GET /metrics` at this address; its CPU from `/proc/PID`.
    Http { addr: String, pid: u32 },
    /// The libvirt floor: one `virsh domstats --state --block --backing --nowait` (a new
    /// process, one connection, one call for every domain); its CPU from `RUSAGE_CHILDREN`.
    Virsh { uri: String },
}

/// One exporter (or the floor) under test.
struct Target {
    name: &'static str,
    kind: Kind,
    scrapes: Vec<Scrape>,
    last_body: String,
    /// kvmio's `kvmio_collector_duration_seconds` per collector, per scrape.
    collectors: BTreeMap<String, Vec<f64>>,
}

#[derive(Debug, Clone, Copy)]
struct Scrape {
    wall: f64,
    cpu: f64,
    cpu_fine: f64,
    libvirtd_cpu: f64,
    libvirtd_fine: f64,
    qemu_cpu: f64,
    samples: usize,
    bytes: usize,
}

/// CPU time of this process's reaped children (cutime + cstime from `/proc/self/stat`, in
/// clock ticks), seconds.
fn children_cpu(hz: f64) -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    ticks(&stat, [13, 14]) / hz
}

/// `virsh domstats` for every domain at once: (stdout, seconds).
fn virsh_domstats(uri: &str) -> (String, f64) {
    let t0 = Instant::now();
    let out = Command::new("virsh")
        .args([
            "-q",
            "-c",
            uri,
            "domstats",
            "--state",
            "--block",
            "--backing",
            "--nowait",
        ])
        .env_remove("LIBVIRT_DEFAULT_URI")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run virsh");
    let elapsed = t0.elapsed().as_secs_f64();
    assert!(out.status.success(), "virsh domstats: {}", out.status);
    (String::from_utf8_lossy(&out.stdout).into_owned(), elapsed)
}

fn scrape(t: &mut Target, libvirtd: u32, qemus: &[u32], hz: f64, record: bool) {
    let qemu_cpu = || qemus.iter().map(|&p| cpu_seconds(p, hz)).sum::<f64>();
    let pid = match &t.kind {
        Kind::Http { pid, .. } => Some(*pid),
        Kind::Virsh { .. } => None,
    };
    let own_cpu = || pid.map_or_else(|| children_cpu(hz), |p| cpu_seconds(p, hz));
    let own_fine = || pid.map(thread_runtimes).unwrap_or_default();
    let q0 = qemu_cpu();
    let (e0, l0) = (own_cpu(), cpu_seconds(libvirtd, hz));
    let (ef0, lf0) = (own_fine(), thread_runtimes(libvirtd));
    let (body, wall) = match &t.kind {
        Kind::Http { addr, .. } => http_get(addr),
        Kind::Virsh { uri } => virsh_domstats(uri),
    };
    let (ef1, lf1) = (own_fine(), thread_runtimes(libvirtd));
    let (e1, l1) = (own_cpu(), cpu_seconds(libvirtd, hz));
    let q1 = qemu_cpu();
    if record {
        let samples = match t.kind {
            Kind::Http { .. } => samples(&body),
            // key=value lines
            Kind::Virsh { .. } => body.lines().filter(|l| l.contains('=')).count(),
        };
        t.scrapes.push(Scrape {
            wall,
            cpu: e1 - e0,
            cpu_fine: if pid.is_some() {
                runtime_delta(&ef0, &ef1)
            } else {
                e1 - e0
            },
            libvirtd_cpu: l1 - l0,
            libvirtd_fine: runtime_delta(&lf0, &lf1),
            qemu_cpu: q1 - q0,
            samples,
            bytes: body.len(),
        });
        for l in body.lines() {
            let Some(rest) = l.strip_prefix("kvmio_collector_duration_seconds{collector=\"") else {
                continue;
            };
            let (Some((name, _)), Some(v)) = (
                rest.split_once('"'),
                l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()),
            ) else {
                continue;
            };
            t.collectors.entry(name.to_owned()).or_default().push(v);
        }
    }
    t.last_body = body;
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| "?".to_owned())
}

/// CPU rates while nothing scrapes: (QEMUs, libvirtd, each exporter), seconds per second.
fn idle_rates(window: Duration, qemus: &[u32], libvirtd: u32, pids: &[u32], hz: f64) -> Vec<f64> {
    let read = || -> Vec<f64> {
        let mut v = vec![qemus.iter().map(|&p| cpu_seconds(p, hz)).sum::<f64>()];
        v.push(cpu_seconds(libvirtd, hz));
        v.extend(pids.iter().map(|&p| cpu_seconds(p, hz)));
        v
    };
    let (a, t0) = (read(), Instant::now());
    std::thread::sleep(window);
    let (b, dt) = (read(), t0.elapsed().as_secs_f64());
    a.iter().zip(&b).map(|(x, y)| (y - x) / dt).collect()
}

fn main() {
    let a = args();
    let kvmio_bin = release_exporter();
    let reference_bin = which(REFERENCE).unwrap_or_else(|| {
        panic!("{REFERENCE} is not installed: apt-get install --no-install-recommends {REFERENCE}")
    });
    let hz = clock_ticks();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _slot = vm_slot();
    let load_before = loadavg();
    let qemus_before = qemu_processes();
    let work = tempfile::Builder::new()
        .prefix("kvmio-bench-libvirt")
        .tempdir()
        .expect("work directory");

    let lv = Libvirtd::start();
    let libvirtd = lv.libvirtd_pid().expect("libvirtd runs");
    eprintln!(
        "libvirtd up in {:.1?}; defining and starting {} paused domains (4 at a time)",
        lv.last_start, a.domains
    );
    let specs: Vec<DomainSpec> = (0..a.domains)
        .map(|k| DomainSpec::paused(&format!("bench{k:03}")))
        .collect();
    let t0 = Instant::now();
    let domains = lv.define_and_start_many(&specs, 4);
    let setup = t0.elapsed();
    let qemu_pids: Vec<u32> = lv.qemu_pids().into_values().collect();
    assert_eq!(qemu_pids.len(), a.domains, "one QEMU per domain");
    let listed = lv.domain_names(false).len();
    assert_eq!(listed, a.domains, "libvirt lists every domain as active");
    eprintln!(
        "{} domains up in {:.1?} ({} QEMUs)",
        domains.len(),
        setup,
        qemu_pids.len()
    );

    // Both exporters: locals dropped before `lv`, so they are killed first on every path.
    let (kvmio_child, kvmio_addr) = start_kvmio(
        &kvmio_bin,
        &lv.uri(),
        &a.kvmio_args,
        &work.path().join("kvmio.log"),
    );
    let (ref_child, ref_addr) = start_reference(
        &reference_bin,
        &lv.uri(),
        &work.path().join("reference.log"),
    );
    let exporter_pids = [kvmio_child.pid(), ref_child.pid()];
    eprintln!(
        "kvmio-exporter on {kvmio_addr} (pid {}), {REFERENCE} on {ref_addr} (pid {}), libvirtd pid {libvirtd}, URI {}",
        exporter_pids[0],
        exporter_pids[1],
        lv.uri()
    );
    if let Some(secs) = a.hold {
        eprintln!("holding for {secs} s (nothing measured)");
        std::thread::sleep(Duration::from_secs(secs));
    }
    let target = |name, kind| Target {
        name,
        kind,
        scrapes: Vec::new(),
        last_body: String::new(),
        collectors: BTreeMap::new(),
    };
    let mut targets = vec![
        target(
            "kvmio-exporter",
            Kind::Http {
                addr: kvmio_addr,
                pid: exporter_pids[0],
            },
        ),
        target(
            REFERENCE,
            Kind::Http {
                addr: ref_addr,
                pid: exporter_pids[1],
            },
        ),
    ];
    if a.floor {
        targets.push(target("virsh domstats", Kind::Virsh { uri: lv.uri() }));
    }
    for _ in 0..a.warmup {
        for t in targets.iter_mut() {
            scrape(t, libvirtd, &qemu_pids, hz, false);
        }
    }
    // Background CPU with nobody scraping (paused QEMUs still run their main loops).
    std::thread::sleep(Duration::from_millis(500));
    let idle = idle_rates(
        Duration::from_secs(3),
        &qemu_pids,
        libvirtd,
        &exporter_pids,
        hz,
    );
    let t_run = Instant::now();
    for _ in 0..a.rounds {
        for t in targets.iter_mut() {
            scrape(t, libvirtd, &qemu_pids, hz, true);
        }
    }
    let run_time = t_run.elapsed();
    let rss: Vec<(f64, f64, f64, f64)> = exporter_pids.iter().map(|&p| rss_mib(p)).collect();
    let load_after = loadavg();

    // What each saw: kvmio's per-domain QEMU layer up; the reference's per-domain info.
    let kvmio_up = count_ones(&targets[0].last_body, "kvmio_qmp_up");
    let kvmio_qga_up = count_ones(&targets[0].last_body, "kvmio_qga_up");
    let kvmio_libvirt_up = count_ones(&targets[0].last_body, "kvmio_libvirt_up");
    let ref_libvirt_up = count_ones(&targets[1].last_body, "libvirt_up");
    let fams: Vec<BTreeMap<String, usize>> = targets[..2]
        .iter()
        .map(|t| families(&t.last_body))
        .collect();
    let ref_domains = fams[1]
        .get("libvirt_domain_info_virtual_cpus")
        .copied()
        .unwrap_or(0);
    let kvmio_log = std::fs::read_to_string(work.path().join("kvmio.log")).unwrap_or_default();
    let kvmio_warnings: Vec<&str> = kvmio_log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();

    // Clean-up, in order: exporters, then domains, libvirtd and virtlogd.
    drop(kvmio_child);
    drop(ref_child);
    let dir = lv.dir().to_string_lossy().into_owned();
    drop(lv);
    let mut left: Vec<String> = processes_mentioning(&dir)
        .into_iter()
        .map(|(p, c)| format!("{p} {c}"))
        .collect();
    left.extend(
        exporter_pids
            .iter()
            .chain(qemu_pids.iter())
            .chain([libvirtd].iter())
            .filter(|&&p| kvmio_e2e::pid_exists(p))
            .map(|p| format!("{p} (still running)")),
    );
    let qemus_after = qemu_processes();

    // --- the report --------------------------------------------------------------------------
    println!(
        "## results ({} paused domains (qcow2 + raw disk each), {} alternating rounds after {} warm-up scrapes each, {:.1} s; {nproc} CPUs, clock tick {:.0} ms)",
        a.domains,
        a.rounds,
        a.warmup,
        run_time.as_secs_f64(),
        1000.0 / hz
    );
    println!(
        "machine: loadavg before {load_before}, after {load_after}; QEMUs on the machine before the run {qemus_before}, after {qemus_after}; domains defined + started in {:.1} s",
        setup.as_secs_f64()
    );
    println!(
        "versions: {}; {}; {REFERENCE} {}; {}{}",
        first_line("libvirtd", &["--version"]),
        first_line("qemu-system-x86_64", &["--version"]),
        first_line(
            "dpkg-query",
            &["-W", "-f", "${Version}", "prometheus-libvirt-exporter"]
        ),
        first_line(&kvmio_bin.to_string_lossy(), &["--version"]),
        if a.kvmio_args.is_empty() {
            String::new()
        } else {
            format!(" (extra flags: {})", a.kvmio_args.join(" "))
        }
    );
    println!(
        "idle CPU (3 s, nobody scraping), per second: all {} QEMUs {}, libvirtd {}, kvmio-exporter {}, {REFERENCE} {}",
        a.domains,
        ms(idle[0]),
        ms(idle[1]),
        ms(idle[2]),
        ms(idle[3])
    );
    println!();
    let mut columns = vec!["measure", "kvmio-exporter", REFERENCE, "kvmio / reference"];
    if a.floor {
        columns.push(
            "virsh domstats --state --block --backing (one call, all domains; a new process each)",
        );
    }
    table_head(&columns);
    let row = |what: &str, f: &dyn Fn(&Target) -> f64| {
        let v: Vec<f64> = targets.iter().map(f).collect();
        let floor = v
            .get(2)
            .map(|x| format!(" {} |", ms(*x)))
            .unwrap_or_default();
        println!(
            "| {what} | {} | {} | {:.2}x |{floor}",
            ms(v[0]),
            ms(v[1]),
            v[0] / v[1]
        );
    };
    let of = |t: &Target, f: fn(&Scrape) -> f64| -> Vec<f64> { t.scrapes.iter().map(f).collect() };
    let p99 = |v: &[f64]| percentile(&sorted(v.to_vec()), 0.99);
    let min = |v: &[f64]| percentile(&sorted(v.to_vec()), 0.0);
    let qemus = format!("all {} QEMUs' CPU per scrape, mean", a.domains);
    // (measure, statistic, what of each scrape)
    type Row<'a> = (&'a str, &'a dyn Fn(&[f64]) -> f64, fn(&Scrape) -> f64);
    let rows: [Row; 11] = [
        ("**scrape, median**", &median, |s| s.wall),
        ("scrape, p99", &p99, |s| s.wall),
        ("scrape, min", &min, |s| s.wall),
        (
            "exporter CPU per scrape, median (/proc/PID/stat, ticks)",
            &median,
            |s| s.cpu,
        ),
        (
            "exporter CPU per scrape, mean over all rounds",
            &mean,
            |s| s.cpu,
        ),
        (
            "exporter CPU per scrape, median (thread schedstat, ns)",
            &median,
            |s| s.cpu_fine,
        ),
        (
            "libvirtd CPU per scrape, median (/proc/PID/stat, ticks)",
            &median,
            |s| s.libvirtd_cpu,
        ),
        (
            "libvirtd CPU per scrape, mean over all rounds",
            &mean,
            |s| s.libvirtd_cpu,
        ),
        (
            "libvirtd CPU per scrape, median (thread schedstat, ns)",
            &median,
            |s| s.libvirtd_fine,
        ),
        (&qemus, &mean, |s| s.qemu_cpu),
        (
            "exporter + libvirtd + QEMUs CPU per scrape, mean",
            &mean,
            |s| s.cpu + s.libvirtd_cpu + s.qemu_cpu,
        ),
    ];
    for (what, stat, field) in rows {
        row(what, &|t| stat(&of(t, field)));
    }
    println!(
        "| RSS at the end, current / peak (anonymous + file) | {:.1} / {:.1} MiB ({:.1} + {:.1}) | {:.1} / {:.1} MiB ({:.1} + {:.1}) | {:.2}x |{}",
        rss[0].0,
        rss[0].1,
        rss[0].2,
        rss[0].3,
        rss[1].0,
        rss[1].1,
        rss[1].2,
        rss[1].3,
        rss[0].0 / rss[1].0,
        if a.floor { " |" } else { "" }
    );
    let last = |i: usize, f: fn(&Scrape) -> usize| targets[i].scrapes.last().map_or(0, f);
    let (ks, rs) = (last(0, |s| s.samples), last(1, |s| s.samples));
    let (kb, rb) = (last(0, |s| s.bytes), last(1, |s| s.bytes));
    println!(
        "| samples; bytes; metric names (last scrape) | {ks}; {kb}; {} | {rs}; {rb}; {} | {:.2}x samples |{}",
        fams[0].len(),
        fams[1].len(),
        ks as f64 / rs as f64,
        if a.floor {
            format!(" {} key=value lines; {} bytes |", last(2, |s| s.samples), last(2, |s| s.bytes))
        } else {
            String::new()
        }
    );
    println!(
        "| domains seen (kvmio: `kvmio_qmp_up` = 1; reference: `libvirt_domain_info_virtual_cpus`); libvirt up | {kvmio_up}; {kvmio_libvirt_up} | {ref_domains}; {ref_libvirt_up} | |{}",
        if a.floor { " |" } else { "" }
    );
    println!();
    println!(
        "kvmio-exporter collector durations, median: {}",
        targets[0]
            .collectors
            .iter()
            .map(|(c, v)| format!("{c} {}", ms(median(v))))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "kvmio-exporter: `kvmio_qga_up` = 1 for {kvmio_qga_up} of {kvmio_up} domains; log: {} WARN/ERROR lines (of {}){}",
        kvmio_warnings.len(),
        kvmio_log.lines().count(),
        if kvmio_warnings.is_empty() {
            ""
        } else {
            ", the first:"
        }
    );
    for l in kvmio_warnings.iter().take(2) {
        println!("    {}", l.chars().take(400).collect::<String>());
    }
    if a.families {
        for (t, f) in targets.iter().zip(&fams) {
            println!("\n{} families (samples in the last scrape):", t.name);
            for (name, n) in f {
                println!("  {name} {n}");
            }
        }
    }
    if left.is_empty() {
        println!("clean-up: no exporter, libvirtd, virtlogd or QEMU of this run left");
    } else {
        println!("clean-up: LEFT RUNNING:\n  {}", left.join("\n  "));
        std::process::exit(1);
    }
}
