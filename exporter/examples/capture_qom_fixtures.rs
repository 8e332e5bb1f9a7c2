//! Captures the `qom-get` replies the QMP collector asks for (`type`, `serial`, `iothread`,
//! `write-cache` of each disk's device model, and the `type` of its virtio transport) from the installed QEMU into
//! `exporter/tests/fixtures/qemu-7.2/qom-get.json`, for the golden test, which serves them
//! beside the `kvmio-qemu` crate's captured replies (`qemu/tests/fixtures`).
//!
//! ```text
//! cargo run -p kvmio-exporter --example capture_qom_fixtures [-- OUTPUT_FILE]
//! ```
//!
//! The VM is the fixture VM of `qemu/examples/capture_fixtures.rs` (one command line:
//! `kvmio_test_support::qemu::fixture_vm_args`; q35 under TCG, paused with `-S`, no guest):
//! `vd0`, `vd1` and `vd2` (behind `pcie-root-port` `rp0`), virtio-blk-pci with
//! serials `kvmio-0`..`kvmio-2` and no iothread; plus `vd3` with `iothread=io1` and no serial,
//! to capture those two replies too. Each entry is `{"path", "property", "reply"}` with the reply
//! as received (`return` or `error`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvmio_qemu::{Limits, Qmp, QmpCommands};
use serde_json::{json, Value};

/// Kills and reaps QEMU however `main` ends.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qemu-7.2/qom-get.json")
        });
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    for (name, size) in [
        ("d0.raw", 1 << 20),
        ("d1.raw", 1 << 20),
        ("d2.raw", 1 << 20),
        ("d3.raw", 1 << 20),
    ] {
        std::fs::File::create(w.join(name))
            .unwrap()
            .set_len(size)
            .unwrap();
    }
    let sock = w.join("qmp.sock");
    let _qemu = Reap(
        Command::new("qemu-system-x86_64")
            .current_dir(w)
            .args(kvmio_test_support::qemu::fixture_vm_args(
                "file=d0.raw,format=raw",
                "file=d2.raw,format=raw",
                &[
                    "-object",
                    "iothread,id=io1",
                    "-drive",
                    "if=none,id=d3,file=d3.raw,format=raw",
                    "-device",
                    "virtio-blk-pci,drive=d3,id=vd3,iothread=io1,addr=0x8",
                ],
            ))
            .stdin(Stdio::null())
            .spawn()
            .expect("start qemu-system-x86_64"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut qmp = loop {
        match Qmp::connect(&sock, Limits::default()).await {
            Ok(q) => break q,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("QMP: {e}"),
        }
    };
    let mut entries = Vec::new();
    for dev in ["vd0", "vd1", "vd2", "vd3"] {
        let backend = format!("/machine/peripheral/{dev}/virtio-backend");
        let proxy = format!("/machine/peripheral/{dev}");
        for (path, property) in [
            (&backend, "type"),
            (&backend, "serial"),
            (&backend, "iothread"),
            (&backend, "write-cache"),
            (&proxy, "type"),
        ] {
            let reply = match qmp
                .execute_value("qom-get", Some(json!({"path": path, "property": property})))
                .await
            {
                Ok(v) => json!({ "return": v }),
                Err(kvmio_qemu::Error::Command { class, desc }) => {
                    json!({"error": {"class": class, "desc": desc}})
                }
                Err(e) => panic!("{e}"),
            };
            entries.push(json!({"path": path, "property": property, "reply": reply}));
        }
    }
    qmp.quit().await.unwrap();
    let mut text = serde_json::to_string_pretty(&Value::Array(entries)).unwrap();
    text.push('\n');
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, text).unwrap();
    println!("wrote {}", out.display());
}
