//! One slow, dead or lying VM never fails or delays the others.
//!
//! Five VMs, each a real `qemu-system-x86_64 -M none` with two drives; the healthy one also has
//! a real (host-run) qemu-ga. The bad ones: a QEMU stopped with SIGSTOP, and healthy QEMUs whose
//! agent sockets accept and never answer, answer with garbage, or send a line that never ends.
//! The real `kvmio-exporter` binary scrapes them all, connect-per-scrape and `--qmp.persistent`:
//! every scrape answers HTTP 200 within `--scrape.timeout`, the healthy VM is complete, the bad
//! parts read `*_up 0`, the monitors of the bad-agent VMs are complete, and once the stopped QEMU
//! is resumed it is back. Every QEMU and agent is killed and reaped on every path.

mod common;

use std::path::Path;
use std::time::Duration;

use common::peer;
use common::procs::{self, sample, Proc};
use nix::sys::signal::Signal;

const TIMEOUT_SECS: f64 = 3.0;

/// The per-drive families a complete VM has.
const BLOCK_FAMILIES: &[&str] = &[
    "kvmio_qemu_block_reads_completed_total",
    "kvmio_qemu_block_reads_merged_total",
    "kvmio_qemu_block_read_bytes_total",
    "kvmio_qemu_block_read_time_seconds_total",
    "kvmio_qemu_block_writes_completed_total",
    "kvmio_qemu_block_writes_merged_total",
    "kvmio_qemu_block_written_bytes_total",
    "kvmio_qemu_block_write_time_seconds_total",
    "kvmio_qemu_block_discards_completed_total",
    "kvmio_qemu_block_discarded_bytes_total",
    "kvmio_qemu_block_discard_time_seconds_total",
    "kvmio_qemu_block_flush_requests_total",
    "kvmio_qemu_block_flush_requests_time_seconds_total",
    "kvmio_qemu_block_highest_written_offset_bytes",
];

fn assert_monitor_complete(body: &str, vm: &str, dir: &Path) {
    assert_eq!(
        sample(body, &format!("kvmio_qmp_up{{vm=\"{vm}\"}}")),
        Some(1.0),
        "{vm}: qmp_up"
    );
    for d in ["d0", "d1"] {
        for fam in BLOCK_FAMILIES {
            let series = format!("{fam}{{vm=\"{vm}\",device=\"{d}\"}}");
            assert!(sample(body, &series).is_some(), "missing {series}");
        }
        let image = dir.join(format!("{vm}-{d}.raw"));
        let info = format!("kvmio_qemu_block_info{{vm=\"{vm}\",device=\"{d}\",node=\"");
        let line = body
            .lines()
            .find(|l| l.starts_with(&info))
            .unwrap_or_else(|| panic!("no block_info for {vm}/{d}"));
        // -M none: the drive has no device model; the command line says aio and cache.
        for want in [
            "driver=\"file\"",
            "format=\"raw\"",
            "aio=\"threads\"",
            "discard=\"ignore\"",
            "bus=\"none\"",
        ] {
            assert!(line.contains(want), "{want} not in {line}");
        }
        assert!(
            body.lines().any(|l| l.starts_with(&format!(
                "kvmio_disk_layer_info{{vm=\"{vm}\",device=\"{d}\",disk=\"\",image=\"{}\",host_device=",
                image.display()
            ))),
            "layer info for {vm}/{d}"
        );
        // The configured mode from the command line, and the flags: no guest, so the write
        // cache is as configured.
        assert!(body.contains(&format!(
            "kvmio_qemu_block_cache_info{{vm=\"{vm}\",device=\"{d}\",cache_mode=\"none\",configured_cache_mode=\"none\",guest_write_cache=\"on\",direct=\"on\",no_flush=\"off\"}} 1"
        )));
    }
    assert!(
        sample(
            body,
            &format!("kvmio_qemu_process_written_bytes_total{{vm=\"{vm}\"}}")
        )
        .is_some(),
        "{vm}: process IO"
    );
}

async fn scrape(addr: &str) -> (u16, String, Duration) {
    let addr = addr.to_owned();
    tokio::task::spawn_blocking(move || procs::http_get(&addr, "/metrics", Duration::from_secs(30)))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_vms_never_fail_or_delay_the_others() {
    let dir = kvmio_test_support::target_tempdir!("kvmio-robust");
    let d = dir.path();
    let mut procs_: Vec<Proc> = Vec::new();
    let (ok, _) = procs::qemu_none(d, "vm-ok", 2);
    procs_.push(ok);
    let (ga, _) = procs::qemu_ga(d, "vm-ok");
    procs_.push(ga);
    let (stopped, _) = procs::qemu_none(d, "vm-stopped", 2);
    let stopped_pid = stopped.pid();
    procs_.push(stopped);
    let mut peers = Vec::new();
    for (name, make) in [
        ("vm-silent", peer::silent as fn(&Path) -> peer::Peer),
        ("vm-garbage", peer::garbage),
        ("vm-endless", peer::endless_line),
        ("vm-huge", peer::huge_lists),
    ] {
        let (q, _) = procs::qemu_none(d, name, 2);
        procs_.push(q);
        peers.push(make(&d.join(format!("{name}.qga"))));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(stopped_pid as i32),
        Signal::SIGSTOP,
    )
    .unwrap();

    for persistent in [false, true] {
        let log = d.join(format!("exporter-{persistent}.log"));
        let mut args = vec![
            format!("--qmp.socket-glob={}/*.qmp", d.display()),
            format!("--scrape.timeout={TIMEOUT_SECS}s"),
            "--host.devices=backing".to_owned(),
        ];
        if persistent {
            args.push("--qmp.persistent".to_owned());
        }
        let (mut exporter, addr) = procs::exporter(&args, &log);
        for round in 0..2 {
            let (status, body, elapsed) = scrape(&addr).await;
            let what = format!("persistent={persistent} round {round}");
            eprintln!("{what}: HTTP {status} after {elapsed:?}");
            assert_eq!(status, 200, "{what}");
            assert!(
                elapsed.as_secs_f64() < TIMEOUT_SECS + 0.5,
                "{what}: answered after {elapsed:?}"
            );
            assert_monitor_complete(&body, "vm-ok", d);
            assert_eq!(
                sample(&body, "kvmio_qga_up{vm=\"vm-ok\"}"),
                Some(1.0),
                "{what}"
            );
            assert!(
                body.contains("kvmio_guest_disk_reads_completed_total{vm=\"vm-ok\",disk="),
                "{what}: the healthy agent's disks"
            );
            assert_eq!(
                sample(&body, "kvmio_qmp_up{vm=\"vm-stopped\"}"),
                Some(0.0),
                "{what}"
            );
            // A valid answer of ~170,000 empty disks: decoded up to the bound, the rest counted.
            assert_eq!(
                sample(&body, "kvmio_qga_up{vm=\"vm-huge\"}"),
                Some(1.0),
                "{what}"
            );
            assert!(
                sample(&body, "kvmio_guest_disks_dropped{vm=\"vm-huge\"}")
                    .is_some_and(|n| n > 100_000.0),
                "{what}: the huge lists are counted as dropped"
            );
            for bad in ["vm-silent", "vm-garbage", "vm-endless"] {
                assert_monitor_complete(&body, bad, d);
                assert_eq!(
                    sample(&body, &format!("kvmio_qga_up{{vm=\"{bad}\"}}")),
                    Some(0.0),
                    "{what}: {bad}"
                );
            }
            assert_eq!(
                sample(&body, "kvmio_collector_success{collector=\"qmp\"}"),
                Some(1.0)
            );
            common::promtool_check(&body, &what);
        }
        assert!(exporter.running(), "the exporter survived");
        let status = std::fs::read_to_string(format!("/proc/{}/status", exporter.pid())).unwrap();
        let kb = |field: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap()
        };
        // Peak, not just current: a reply decoded into a tree of 170,000 objects took 65-80 MB
        // at its peak before the bounded decode (issue 11).
        let (rss_kb, peak_kb) = (kb("VmRSS:"), kb("VmHWM:"));
        eprintln!("RSS {rss_kb} kB, peak {peak_kb} kB");
        assert!(
            rss_kb < 64 * 1024 && peak_kb < 48 * 1024,
            "RSS {rss_kb} kB, peak {peak_kb} kB after hostile agents (lines and lists are bounded)"
        );
        exporter.stop();
        let log_text = std::fs::read_to_string(&log).unwrap();
        eprintln!("{log_text}");
        assert!(!log_text.contains("panicked"), "{log_text}");
    }

    // Resumed, the stopped VM is scraped again (its stale queued connections drain first).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(stopped_pid as i32),
        Signal::SIGCONT,
    )
    .unwrap();
    let log = d.join("exporter-resumed.log");
    let (_exporter, addr) = procs::exporter(
        &[
            format!("--qmp.socket-glob={}/vm-stopped.qmp", d.display()),
            format!("--scrape.timeout={TIMEOUT_SECS}s"),
        ],
        &log,
    );
    let mut up = None;
    for _ in 0..5 {
        let (status, body, _) = scrape(&addr).await;
        assert_eq!(status, 200);
        up = sample(&body, "kvmio_qmp_up{vm=\"vm-stopped\"}");
        if up == Some(1.0) {
            assert_monitor_complete(&body, "vm-stopped", d);
            break;
        }
    }
    assert_eq!(up, Some(1.0), "the resumed QEMU answers again");
    drop(peers);
    for mut p in procs_ {
        p.stop();
    }
}
