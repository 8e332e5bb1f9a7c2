//! The guest-agent collector against the real qemu-ga (run on the host, `-m unix-listen`, so its
//! "guest" is this machine), beside a QMP fixture peer of the same stem:
//! - the agent's disks are exported with every diskstats suffix, and the queue settings read
//!   through `guest-file-*` match this machine's sysfs;
//! - an agent started with `-b guest-file-open` (an admin forbidding file access) still gives its
//!   disk statistics; the queue settings are skipped cleanly: no error, `kvmio_qga_up 1`.

mod common;

use std::sync::Arc;

use common::{peer, procs};
use kvmio_exporter::collector::Exporter;
use kvmio_exporter::config::{Config, HostDevices};
use kvmio_exporter::host::blockdev::read_scheduler;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agent_with_and_without_file_access() {
    let dir = kvmio_test_support::target_tempdir!("kvmio-ga");
    let d = dir.path();
    // Two VMs named by their stems: the fixture monitor's name would be the same for both.
    let [open, blocked] = kvmio_test_support::subdirs(d, ["open", "blocked"]);
    let _qmp_open = peer::qmp_fixture(&open.join("vm.qmp"));
    let _qmp_blocked = peer::qmp_fixture(&blocked.join("vm.qmp"));
    let (_ga_open, _) = procs::qemu_ga(&open, "vm");
    let (_ga_blocked, _) = procs::qemu_ga_with(&blocked, "vm", &["-b", "guest-file-open"]);

    for (which, sub) in [("open", &open), ("blocked", &blocked)] {
        let exporter = Exporter::with_default_collectors(Arc::new(Config {
            host_devices: HostDevices::None,
            qmp_socket_globs: vec![format!("{}/*.qmp", sub.display())],
            ..Config::default()
        }));
        for _ in 0..2 {
            let m = exporter.scrape().await;
            let vm = [("vm", "kvmio-fixture")];
            assert_eq!(m.value("kvmio_qga_up", &vm), Some(1.0), "{which}");
            assert_eq!(
                m.value("kvmio_collector_success", &[("collector", "qga")]),
                Some(1.0)
            );
            assert!(m.rejected().is_empty(), "{:?}", m.rejected());
            let text = m.encode_text();
            let disks: Vec<&str> = text
                .lines()
                .filter_map(|l| {
                    l.strip_prefix(
                        "kvmio_guest_disk_reads_completed_total{vm=\"kvmio-fixture\",disk=\"",
                    )
                })
                .filter_map(|r| r.split('"').next())
                .collect();
            assert!(
                !disks.is_empty(),
                "{which}: the host's disks as guest disks"
            );
            let queue: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("kvmio_guest_disk_queue_info{"))
                .collect();
            if which == "blocked" {
                assert!(queue.is_empty(), "forbidden guest-file-*: {queue:?}");
            } else {
                // The whole disks the agent lists (guest-get-disks) have their settings, and the
                // scheduler is this machine's.
                assert!(
                    !queue.is_empty(),
                    "queue settings of the agent's whole disks"
                );
                for line in &queue {
                    let disk = line
                        .split("disk=\"")
                        .nth(1)
                        .unwrap()
                        .split('"')
                        .next()
                        .unwrap();
                    let scheduler = line
                        .split("scheduler=\"")
                        .nth(1)
                        .unwrap()
                        .split('"')
                        .next()
                        .unwrap();
                    let want =
                        read_scheduler(std::path::Path::new("/sys"), disk).unwrap_or_default();
                    assert_eq!(scheduler, want, "{line}");
                    let write_cache =
                        std::fs::read_to_string(format!("/sys/block/{disk}/queue/write_cache"))
                            .map(|s| s.trim().to_owned())
                            .unwrap_or_default();
                    assert!(
                        line.contains(&format!("write_cache=\"{write_cache}\"")),
                        "{line}"
                    );
                }
            }
        }
    }
}
