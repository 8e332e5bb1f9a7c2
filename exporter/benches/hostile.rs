//! Peak memory under hostile guests (not a timed test; the figures go to BENCHMARKS.md):
//!
//! ```text
//! cargo bench -p kvmio-exporter --bench hostile [-- --vms 100 --scrapes 10]
//! ```
//!
//! Starts N real `qemu-system-x86_64 -M none` (2 raw drives each) with N host-run `qemu-ga`
//! (`vmK.qmp` <-> `vmK.qga`), and for each hostile answer N fake agents that sync correctly and
//! answer `guest-get-diskstats` and `guest-get-disks` with the worst valid lists within the
//! 512 KiB agent line cap (the exporter tests' `peer::agent_with`). In one run, one after
//! another, the release `kvmio-exporter` scrapes the N VMs with their honest agents, then the
//! same N QEMUs with the hostile agents of each kind (`--config` targets pairing each QEMU's
//! monitor with a hostile agent socket): 2 warm-up and S measured scrapes each, then peak and
//! current RSS (`VmHWM`, `VmRSS` of `/proc/PID/status`), scrape latency, VMs up, disks counted as
//! dropped. Every process is killed and reaped on every path; it holds the e2e VM slot.

#[path = "../tests/common/peer.rs"]
#[allow(dead_code)]
mod peer;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmio_test_support::bench::{
    loadavg, median_p99, parse_flags, qemu_processes, status_mib, table_head,
};
use kvmio_test_support::qemu::{qemu_ga, qemu_none};
use kvmio_test_support::{http_get, launch_exporter, vm_slot, ChildProcess};

struct Args {
    vms: usize,
    scrapes: usize,
}

/// The hostile answers: (name, what it is, the reply to guest-get-diskstats and to
/// guest-get-disks for scrape `round`).
type Hostile = (
    &'static str,
    &'static str,
    fn(&str, usize) -> Option<String>,
);

/// Entries at the bounds of what the decode keeps, new every scrape: 64-byte disk names (the
/// longest valid one) and, in `guest-get-disks`, a serial and a bus type of 128 bytes (the
/// longest kept: a longer one refuses the entry); the line filled with more of them (those past
/// 128, twice `--qga.max-disks`, only counted).
fn long_entries(cmd: &str, round: usize) -> Option<String> {
    let name = |i: usize| {
        let n = format!("r{round}d{i}");
        format!("{n}{}", "x".repeat(64usize.saturating_sub(n.len())))
    };
    let field = "s".repeat(128);
    match cmd {
        "guest-get-diskstats" => Some(
            peer::capped_list(|i| format!("{{\"name\":\"{}\",\"stats\":{{}}}}", name(i))).0,
        ),
        "guest-get-disks" => Some(
            peer::capped_list(|i| {
                format!(
                    "{{\"name\":\"/dev/{}\",\"partition\":false,\"address\":{{\"pci-controller\":\
                     {{\"domain\":0,\"bus\":0,\"slot\":{},\"function\":0}},\"bus-type\":\"{field}\",\
                     \"serial\":\"{field}\"}}}}",
                    name(i),
                    i % 32
                )
            })
            .0,
        ),
        _ => None,
    }
}

fn empty_objects(cmd: &str, _: usize) -> Option<String> {
    matches!(cmd, "guest-get-diskstats" | "guest-get-disks")
        .then(|| peer::capped_list(|_| "{}".to_owned()).0)
}

fn new_names(cmd: &str, round: usize) -> Option<String> {
    match cmd {
        "guest-get-diskstats" => {
            Some(peer::capped_list(|i| format!("{{\"name\":\"r{round}d{i}\",\"stats\":{{}}}}")).0)
        }
        "guest-get-disks" => {
            Some(peer::capped_list(|i| format!("{{\"name\":\"/dev/r{round}d{i}\"}}")).0)
        }
        _ => None,
    }
}

const HOSTILE: &[Hostile] = &[
    (
        "empty-objects",
        "~174,000 empty objects in both lists",
        empty_objects,
    ),
    (
        "new-names",
        "~16,000 new valid names every scrape (guest-get-disks asked every scrape)",
        new_names,
    ),
    (
        "long-entries",
        "128+ entries at the kept bounds (64-byte names, 128-byte serial and bus type), new every scrape",
        long_entries,
    ),
];

struct Measured {
    peak_mib: f64,
    current_mib: f64,
    latencies: Vec<f64>,
    qga_up: usize,
    dropped: f64,
}

fn measure(args: &[String], log: &Path, a: &Args) -> Measured {
    let bin = env!("CARGO_BIN_EXE_kvmio-exporter");
    let (mut exporter, addr) = launch_exporter(Command::new(bin), args, log);
    let mut latencies = Vec::new();
    let mut body = String::new();
    for i in 0..a.scrapes + 2 {
        let (status, b, elapsed) = http_get(&addr, "/metrics", Duration::from_secs(60));
        assert_eq!(status, 200, "GET /metrics: {b}");
        if i >= 2 {
            latencies.push(elapsed.as_secs_f64());
        }
        body = b;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", exporter.pid())).unwrap();
    let up = body
        .lines()
        .filter(|l| l.starts_with("kvmio_qga_up{") && l.ends_with(" 1"))
        .count();
    let dropped = body
        .lines()
        .filter(|l| l.starts_with("kvmio_guest_disks_dropped{"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum();
    assert!(exporter.running(), "the exporter survived");
    exporter.stop();
    Measured {
        peak_mib: status_mib(&status, "VmHWM:"),
        current_mib: status_mib(&status, "VmRSS:"),
        latencies,
        qga_up: up,
        dropped,
    }
}

fn main() {
    let mut a = Args {
        vms: 100,
        scrapes: 10,
    };
    parse_flags(|flag, v| match flag {
        "--vms" => a.vms = v.number(),
        "--scrapes" => a.scrapes = v.number(),
        _ => {}
    });
    eprintln!("waiting for the VM slot...");
    let _slot = vm_slot();
    let load_before = loadavg();
    let foreign = qemu_processes();
    let dir = kvmio_test_support::target_tempdir!("kvmio-hostile-bench");
    let d = dir.path();
    let honest = d.join("honest");
    std::fs::create_dir_all(&honest).unwrap();
    let t0 = Instant::now();
    let mut procs: Vec<ChildProcess> = Vec::new();
    for k in 0..a.vms {
        procs.push(qemu_none(&honest, &format!("vm{k:03}"), 2).0);
        procs.push(qemu_ga(&honest, &format!("vm{k:03}")).0);
    }
    eprintln!(
        "{} QEMUs and agents up in {:.1?}",
        procs.len(),
        t0.elapsed()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let timeout = ["--scrape.timeout=8s".to_owned()];
    let mut rows = Vec::new();
    let base = measure(
        &[
            format!("--qmp.socket-glob={}/*.qmp", honest.display()),
            timeout[0].clone(),
        ],
        &d.join("exporter-honest.log"),
        &a,
    );
    rows.push(("honest", "the host's real qemu-ga", base));
    for &(name, what, answer) in HOSTILE {
        let hdir = d.join(name);
        std::fs::create_dir_all(&hdir).unwrap();
        let round = Arc::new(AtomicUsize::new(0));
        let mut config = String::new();
        let peers: Vec<peer::Peer> = (0..a.vms)
            .map(|k| {
                let vm = format!("vm{k:03}");
                let sock = hdir.join(format!("{vm}.qga"));
                writeln!(
                    config,
                    "[[target]]\nqmp = \"{}\"\nqga = \"{}\"\nname = \"{vm}\"\n",
                    honest.join(format!("{vm}.qmp")).display(),
                    sock.display()
                )
                .unwrap();
                let round = round.clone();
                let _guard = rt.enter();
                peer::agent_with(&sock, move |cmd| {
                    // Each agent's diskstats call starts a new round of names.
                    let r = if cmd == "guest-get-diskstats" {
                        round.fetch_add(1, Ordering::Relaxed)
                    } else {
                        round.load(Ordering::Relaxed)
                    };
                    answer(cmd, r)
                })
            })
            .collect();
        let config_path = hdir.join("targets.toml");
        std::fs::write(&config_path, config).unwrap();
        let m = measure(
            &[
                format!("--config={}", config_path.display()),
                timeout[0].clone(),
            ],
            &d.join(format!("exporter-{name}.log")),
            &a,
        );
        drop(peers);
        rows.push((name, what, m));
    }

    println!(
        "\nkvmio-exporter (release), {} VMs (real QEMU -M none, 2 drives each), {} scrapes after 2 \
         warm-up; load before: {load_before}, after: {}; other QEMUs on the machine: {foreign}\n",
        a.vms,
        a.scrapes,
        loadavg()
    );
    table_head(&[
        "agents",
        "answers",
        "peak RSS (VmHWM)",
        "peak / honest",
        "RSS after",
        "scrape median / p99",
        "agents up",
        "disks dropped (last scrape)",
    ]);
    let honest_peak = rows[0].2.peak_mib;
    for (name, what, m) in &rows {
        println!(
            "| {name} | {what} | {:.1} MiB | {:.2}x | {:.1} MiB | {} | {} / {} | {} |",
            m.peak_mib,
            m.peak_mib / honest_peak,
            m.current_mib,
            median_p99(&m.latencies, 1),
            m.qga_up,
            a.vms,
            m.dropped
        );
    }
    drop(rt);
    for mut p in procs {
        p.stop();
    }
}
