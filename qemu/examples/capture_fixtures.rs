//! Captures real replies from the installed QEMU and qemu-ga into `tests/fixtures/*.json`, for
//! the golden tests in `src/types.rs`. Run by hand after a QEMU upgrade:
//!
//! ```text
//! cargo run -p kvmio-qemu --example capture_fixtures [-- OUTPUT_DIR]
//! ```
//!
//! The VM is a q35 under TCG without a guest OS: it starts paused (`-S`), latency histograms are
//! set, then the firmware (SeaBIOS) runs until it has numbered the PCI buses and probed the
//! first disk (a real, accounted guest read), and the VM is stopped again before the queries:
//! * `d0`: qcow2, `cache=writeback`, on `virtio-blk-pci` `vd0` (slot 5, serial `kvmio-0`),
//!   with latency histograms and 1 MiB written through HMP `qemu-io` (not accounted: only
//!   `wr_highest_offset` moves);
//! * `d1`: raw, `cache=none`, on `vd1` (slot 6, serial `kvmio-1`);
//! * `d2`: a qcow2 overlay on a qcow2 base (a backing chain), `cache=directsync`, on `vd2`
//!   behind a `pcie-root-port` (a bridge in `query-pci`).
//!
//! The agent is the host's own `qemu-ga -m unix-listen`, so its disks are this machine's.
//! Each file holds `{"return": VALUE}` as the client received it (key order is serde_json's).
//! `query-block-prelaunch` is taken before the firmware runs, `query-block` after: SeaBIOS does
//! not negotiate virtio-blk's flush feature, so QEMU turns the guest-visible write cache off
//! and `cache.writeback` reads false for every drive (see `BlockDeviceInfo::cache_mode`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kvmio_qemu::{AgentCommands, GuestAgent, Limits, QmpCommands};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

use common::{binaries, connect_agent, connect_qmp, spawn_qemu_ga, ChildGuard};

fn save(dir: &Path, name: &str, value: &Value) {
    let path = dir.join(format!("{name}.json"));
    let mut text = serde_json::to_string_pretty(value).unwrap();
    text.push('\n');
    std::fs::write(&path, text).unwrap();
    println!("wrote {}", path.display());
}

fn run(program: &Path, args: &[&str], cwd: &Path) {
    let status = std::process::Command::new(program)
        .args(args)
        .current_dir(cwd)
        .status()
        .unwrap();
    assert!(status.success(), "{} {args:?} failed", program.display());
}

async fn qmp_fixtures(out: &Path, qemu: &Path, qemu_img: &Path) {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    run(
        qemu_img,
        &["create", "-q", "-f", "qcow2", "d0.qcow2", "64M"],
        w,
    );
    run(qemu_img, &["create", "-q", "-f", "raw", "d1.raw", "16M"], w);
    run(
        qemu_img,
        &["create", "-q", "-f", "qcow2", "base.qcow2", "32M"],
        w,
    );
    run(
        qemu_img,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "d2.qcow2",
        ],
        w,
    );
    let args = kvmio_test_support::qemu::fixture_vm_args(
        "file=d0.qcow2,format=qcow2",
        "file=d2.qcow2,format=qcow2",
        &[],
    );
    let mut child = ChildGuard::spawn_in(qemu, &args, Some(w), w.join("qemu.stderr"));
    let sock = w.join("qmp.sock");
    let limits = Limits::default().with_call_timeout(Duration::from_secs(10));

    // The greeting, raw: the first line on a fresh connection.
    let mut qmp = connect_qmp(&sock, limits, &mut child).await;
    drop(qmp);
    let stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let mut first = String::new();
    tokio::io::BufReader::new(stream)
        .read_line(&mut first)
        .await
        .unwrap();
    save(out, "qmp-greeting", &serde_json::from_str(&first).unwrap());
    qmp = connect_qmp(&sock, limits, &mut child).await;

    qmp.block_latency_histogram_set(
        "/machine/peripheral/vd0/virtio-backend",
        &[10_000, 100_000, 1_000_000, 10_000_000],
    )
    .await
    .unwrap();
    qmp.human_monitor_command("qemu-io d0 \"write -P 0xab 0 1M\"")
        .await
        .unwrap();
    qmp.human_monitor_command("qemu-io d0 flush").await.unwrap();

    // The flags as configured: once the guest runs, `writeback` is what it negotiated.
    let value = qmp.execute_value("query-block", None).await.unwrap();
    save(out, "query-block-prelaunch", &json!({ "return": value }));

    // Let the firmware run: it numbers the bridge's secondary bus (until then query-pci lists
    // no devices behind it) and reads the disks looking for a boot sector.
    qmp.cont().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let pci = qmp.query_pci().await.unwrap();
        let behind_bridge = kvmio_qemu::types::flatten_pci(&pci)
            .iter()
            .any(|f| f.qdev_id == "vd2" && f.bus > 0);
        let stats = qmp.query_blockstats().await.unwrap();
        // SeaBIOS reads the first disk's boot sector, then waits for a boot device forever.
        let reads = stats.iter().any(|s| s.stats.rd_operations > 0);
        if (behind_bridge && reads) || std::time::Instant::now() > deadline {
            println!("firmware done: bridge numbered {behind_bridge}, a disk read {reads}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    qmp.stop().await.unwrap();

    for (name, command, arguments) in [
        ("query-version", "query-version", None),
        ("query-name", "query-name", None),
        ("query-status", "query-status", None),
        ("query-block", "query-block", None),
        (
            "query-blockstats",
            "query-blockstats",
            Some(json!({"query-nodes": false})),
        ),
        (
            "query-blockstats-nodes",
            "query-blockstats",
            Some(json!({"query-nodes": true})),
        ),
        (
            "query-named-block-nodes",
            "query-named-block-nodes",
            Some(json!({"flat": true})),
        ),
        ("query-pci", "query-pci", None),
    ] {
        let value = qmp.execute_value(command, arguments).await.unwrap();
        save(out, name, &json!({ "return": value }));
    }
    qmp.quit().await.unwrap();
    child.wait_exit(Duration::from_secs(10));
}

async fn qga_fixtures(out: &Path, qemu_ga: &Path) {
    let work = tempfile::tempdir().unwrap();
    let (mut child, sock) = spawn_qemu_ga(qemu_ga, work.path(), &[]);
    let limits = Limits::default().with_call_timeout(Duration::from_secs(10));
    let mut ga: GuestAgent = connect_agent(&sock, limits, &mut child).await;
    for command in [
        "guest-info",
        "guest-get-diskstats",
        "guest-get-disks",
        "guest-get-fsinfo",
    ] {
        let value = ga.execute_value(command, None).await.unwrap();
        save(out, command, &json!({ "return": value }));
    }
    let pid = ga.exec("/bin/echo", &["hi"], true).await.unwrap();
    // Poll with the raw command to keep the reply exactly as the agent sent it.
    loop {
        let value = ga
            .execute_value("guest-exec-status", Some(json!({ "pid": pid })))
            .await
            .unwrap();
        if value["exited"] == json!(true) {
            save(out, "guest-exec-status", &json!({ "return": value }));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    std::fs::create_dir_all(&out).unwrap();
    let [qemu, qemu_img, qemu_ga] = binaries(["qemu-system-x86_64", "qemu-img", "qemu-ga"]);
    qmp_fixtures(&out, &qemu, &qemu_img).await;
    qga_fixtures(&out, &qemu_ga).await;
}
