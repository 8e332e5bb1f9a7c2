//! End-to-end tests with the real QEMU tools (qemu-io, qemu-img) as NBD clients. The backing
//! file's bytes are checked directly after each simulated power failure.

mod common;

use std::time::Duration;

use common::*;
use kvmio_nbd::{PowerFailMode, ServerOptions};

const FILL: u8 = 0x5a;
const SIZE: u64 = 4 * MIB;

fn opts() -> ServerOptions {
    ServerOptions::default()
}

/// A fresh server (`SIZE` bytes of `FILL`) after a `qemu-io` with `cache=writeback` ran `cmds`
/// and killed itself (so nothing was flushed at its exit).
async fn killed_qemu_io(cmds: &[&str]) -> TestServer {
    let srv = TestServer::start(SIZE, FILL, opts());
    qemu_io_killed(&srv.url(), "writeback", cmds).await;
    srv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_then_read_back_matches() {
    let srv = TestServer::start(SIZE, FILL, opts());
    let out = qemu_io(
        &srv.url(),
        "writeback",
        &[
            "write -P 0xab 0 64k",
            "read -P 0xab 0 64k",
            "read -P 0x5a 64k 64k",
            "write -P 0xcd 4095 3",
            "read -P 0xab 4094 1",
            "read -P 0xcd 4095 3",
            "read -P 0xab 4098 1",
        ],
    )
    .await;
    assert_ok(&out);
    let stats = srv.handle.stats();
    assert!(stats.writes >= 2 && stats.reads >= 3, "{stats:?}");
    assert_eq!(stats.errors, 0);
    // A clean qemu-io exit flushes, so everything is durable now.
    assert!(stats.flushes >= 1, "{stats:?}");
    assert_eq!(stats.volatile_bytes, 0);
    let b = srv.backing_bytes();
    assert!(all(&b[..4095], 0xab));
    assert!(all(&b[4095..4098], 0xcd));
    assert!(all(&b[4098..65536], 0xab));
    assert!(all(&b[65536..], FILL));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unflushed_write_is_lost_at_power_failure() {
    let srv = killed_qemu_io(&["write -P 0xab 0 64k", "read -P 0xab 0 64k"]).await;
    let stats = srv.handle.stats();
    assert_eq!(stats.writes, 1, "{stats:?}");
    assert_eq!(stats.fua_writes, 0);
    assert_eq!(stats.flushes, 0);
    assert_eq!(stats.volatile_bytes, 65536);
    assert_eq!(stats.volatile_writes, 1);
    assert!(
        all(&srv.backing_bytes(), FILL),
        "volatile data reached the file early"
    );

    let report = srv.handle.power_fail(PowerFailMode::DropAll).await.unwrap();
    assert_eq!(report.unflushed_writes, 1);
    assert_eq!(report.lost_writes, 1);
    assert_eq!(report.bytes_persisted, 0);
    assert!(all(&srv.backing_bytes(), FILL));
    let stats = srv.handle.stats();
    assert_eq!(stats.volatile_bytes, 0);
    assert_eq!(stats.power_failures, 1);
    // After the power failure a client sees the durable data.
    assert_ok(&qemu_io(&srv.url(), "writeback", &["read -P 0x5a 0 64k"]).await);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_write_survives_power_failure() {
    let srv = killed_qemu_io(&["write -P 0xab 0 64k", "flush", "write -P 0xcd 1M 64k"]).await;
    let stats = srv.handle.stats();
    assert_eq!(stats.flushes, 1, "{stats:?}");
    assert_eq!(stats.bytes_persisted, 65536);
    srv.handle.power_fail(PowerFailMode::DropAll).await.unwrap();
    let b = srv.backing_bytes();
    assert!(all(&b[..65536], 0xab));
    assert!(
        all(&b[65536..], FILL),
        "the write after the flush must be lost"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fua_write_survives_without_flush() {
    let srv = killed_qemu_io(&["write -P 0xee 1M 64k", "write -f -P 0xcd 0 64k"]).await;
    let stats = srv.handle.stats();
    assert_eq!((stats.writes, stats.fua_writes, stats.flushes), (2, 1, 0));
    // Durable before the power failure already, and only that write.
    let b = srv.backing_bytes();
    assert!(all(&b[..65536], 0xcd));
    assert!(all(&b[65536..], FILL));
    srv.handle.power_fail(PowerFailMode::DropAll).await.unwrap();
    let b = srv.backing_bytes();
    assert!(all(&b[..65536], 0xcd));
    assert!(all(&b[65536..], FILL));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writethrough_client_writes_are_all_durable() {
    // qemu-io's default cache mode, writethrough, sends every write with FUA.
    let srv = TestServer::start(SIZE, FILL, opts());
    let cmds = ["write -P 0x11 0 4k", "write -P 0x22 8k 4k"];
    qemu_io_killed(&srv.url(), "writethrough", &cmds).await;
    assert_eq!(srv.handle.stats().fua_writes, 2);
    srv.handle.power_fail(PowerFailMode::DropAll).await.unwrap();
    let b = srv.backing_bytes();
    assert!(all(&b[..4096], 0x11) && all(&b[8192..12288], 0x22));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fua_write_is_never_undone_by_an_older_unflushed_write() {
    for seed in 0..8 {
        let srv = killed_qemu_io(&["write -P 0x11 0 8k", "write -f -P 0x22 0 4k"]).await;
        let mode = if seed % 2 == 0 {
            PowerFailMode::Subset { seed }
        } else {
            PowerFailMode::SubsetTorn { seed }
        };
        srv.handle.power_fail(mode).await.unwrap();
        let b = srv.backing_bytes();
        assert!(all(&b[..4096], 0x22), "seed {seed}: FUA data overwritten");
        for sector in b[4096..8192].chunks(512) {
            assert!(all(sector, 0x11) || all(sector, FILL), "seed {seed}");
        }
        srv.stop().await;
    }
}

/// 32 writes of 4 KiB with distinct patterns at distinct offsets, then a power failure.
async fn subset_run(mode: PowerFailMode) -> (Vec<u8>, kvmio_nbd::PowerFailReport) {
    let srv = TestServer::start(SIZE, FILL, opts());
    let cmds: Vec<String> = (0..32)
        .map(|i| format!("write -P {} {} 4k", i + 1, i * 8192))
        .collect();
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io_killed(&srv.url(), "writeback", &cmds).await;
    assert_eq!(srv.handle.stats().volatile_writes, 32);
    let report = srv.handle.power_fail(mode).await.unwrap();
    let bytes = srv.backing_bytes();
    srv.stop().await;
    (bytes, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subset_power_failure_is_deterministic_and_persists_whole_writes() {
    let (a, ra) = subset_run(PowerFailMode::Subset { seed: 1234 }).await;
    let (b, rb) = subset_run(PowerFailMode::Subset { seed: 1234 }).await;
    let (c, _) = subset_run(PowerFailMode::Subset { seed: 99 }).await;
    assert_eq!(a, b, "same seed, different outcome");
    assert_eq!(ra, rb);
    assert_ne!(a, c, "different seeds gave the same 32-write outcome");
    assert_eq!(ra.unflushed_writes, 32);
    assert_eq!(ra.torn_writes, 0);
    let mut persisted = 0;
    for i in 0..32usize {
        let w = &a[i * 8192..i * 8192 + 4096];
        if all(w, i as u8 + 1) {
            persisted += 1;
        } else {
            assert!(all(w, FILL), "write {i} partially persisted in subset mode");
        }
        assert!(all(&a[i * 8192 + 4096..(i + 1) * 8192], FILL));
    }
    assert_eq!(persisted, ra.persisted_writes);
    assert!(persisted > 0 && persisted < 32, "{ra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subset_torn_persists_sector_granular_pieces() {
    let run = || async {
        let srv = TestServer::start(SIZE, FILL, opts());
        let cmds: Vec<String> = (0..16)
            .map(|i| format!("write -P {} {} 16k", i + 1, i * 16384))
            .collect();
        let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
        qemu_io_killed(&srv.url(), "writeback", &cmds).await;
        let report = srv
            .handle
            .power_fail(PowerFailMode::SubsetTorn { seed: 5 })
            .await
            .unwrap();
        let bytes = srv.backing_bytes();
        srv.stop().await;
        (bytes, report)
    };
    let (a, report) = run().await;
    let (b, _) = run().await;
    assert_eq!(a, b, "same seed, different outcome");
    let mut torn = 0;
    for i in 0..16usize {
        let kept: Vec<bool> = a[i * 16384..(i + 1) * 16384]
            .chunks(512)
            .map(|sector| {
                assert!(
                    all(sector, i as u8 + 1) || all(sector, FILL),
                    "write {i}: a sector was torn below 512 bytes"
                );
                sector[0] != FILL
            })
            .collect();
        if kept.iter().any(|&k| k) && !kept.iter().all(|&k| k) {
            torn += 1;
        }
    }
    assert!(torn > 0, "no write was torn: {report:?}");
    assert_eq!(torn, report.torn_writes);
    assert_eq!(
        report.torn_writes + report.persisted_writes + report.lost_writes,
        16
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_disk_loses_flushed_and_fua_writes() {
    let srv = TestServer::start(
        SIZE,
        FILL,
        ServerOptions {
            lie_about_flush: true,
            ..opts()
        },
    );
    qemu_io_killed(
        &srv.url(),
        "writeback",
        &[
            "write -P 0xab 0 64k",
            "flush",
            "write -f -P 0xcd 1M 4k",
            "read -P 0xab 0 64k",
            "read -P 0xcd 1M 4k",
        ],
    )
    .await;
    let stats = srv.handle.stats();
    assert_eq!((stats.flushes, stats.fua_writes), (1, 1), "{stats:?}");
    assert_eq!(stats.bytes_persisted, 0);
    assert_eq!(stats.syncs, 0);
    srv.handle.power_fail(PowerFailMode::DropAll).await.unwrap();
    assert!(
        all(&srv.backing_bytes(), FILL),
        "the lying disk persisted data"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_zeroes_go_through_the_volatile_layer() {
    let srv = killed_qemu_io(&["write -z 0 64k", "read -P 0 0 64k", "read -P 0x5a 64k 4k"]).await;
    let stats = srv.handle.stats();
    assert_eq!(stats.write_zeroes, 1, "{stats:?}");
    assert!(all(&srv.backing_bytes(), FILL));
    srv.handle.power_fail(PowerFailMode::DropAll).await.unwrap();
    assert!(all(&srv.backing_bytes(), FILL));

    // Flushed zeroes are durable.
    qemu_io_killed(&srv.url(), "writeback", &["write -z 4k 8k", "flush"]).await;
    srv.handle.power_fail(PowerFailMode::DropAll).await.unwrap();
    let b = srv.backing_bytes();
    assert!(all(&b[..4096], FILL) && all(&b[4096..12288], 0) && all(&b[12288..], FILL));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_client_sees_volatile_data() {
    let srv = killed_qemu_io(&["write -P 0x77 2M 128k"]).await;
    assert_ok(&qemu_io(&srv.url(), "writeback", &["read -P 0x77 2M 128k"]).await);
    let stats = srv.handle.stats();
    assert_eq!(stats.connections, 2);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_convert_is_durable_after_its_final_flush() {
    let srv = TestServer::start(SIZE, FILL, opts());
    let src = srv.dir.path().join("src.img");
    let data: Vec<u8> = (0..SIZE as usize)
        .map(|i| (i / 4096 % 251) as u8 ^ (i % 7) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    let args: Vec<String> = ["convert", "-n", "-f", "raw", "-O", "raw"]
        .iter()
        .map(|s| s.to_string())
        .chain([src.display().to_string(), srv.url()])
        .collect();
    let out = run_tool("qemu-img", &args, Duration::from_secs(60)).await;
    assert!(out.status.success(), "{}", describe(&out));
    srv.handle.power_fail(PowerFailMode::DropAll).await.unwrap();
    assert!(srv.backing_bytes() == data, "converted image not durable");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_bench_requests_are_counted() {
    let srv = TestServer::start(16 * MIB, 0, opts());
    let args: Vec<String> = [
        "bench",
        "-w",
        "-t",
        "none",
        "-c",
        "2000",
        "-d",
        "16",
        "-s",
        "4k",
        "--flush-interval",
        "64",
        "-f",
        "raw",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([srv.url()])
    .collect();
    let out = run_tool("qemu-img", &args, Duration::from_secs(60)).await;
    assert!(out.status.success(), "{}", describe(&out));
    let stats = srv.handle.stats();
    assert_eq!(stats.writes, 2000, "{stats:?}");
    assert_eq!(stats.fua_writes, 0);
    assert_eq!(stats.bytes_written, 2000 * 4096);
    assert!(stats.flushes >= 2000 / 64, "{stats:?}");
    assert_eq!(stats.errors, 0);
    // qemu-img flushed on exit.
    assert_eq!(stats.volatile_bytes, 0);
    assert_eq!(stats.bytes_persisted, 2000 * 4096);
    let info = run_tool(
        "qemu-img",
        &["info".to_string(), "-f".into(), "raw".into(), srv.url()],
        Duration::from_secs(30),
    )
    .await;
    assert!(info.status.success(), "{}", describe(&info));
    assert!(
        String::from_utf8_lossy(&info.stdout).contains("16 MiB"),
        "{}",
        describe(&info)
    );
    srv.stop().await;
}
