//! The `kvmio-exporter` binary: usage errors exit 2 in one line, a served scrape, SIGTERM ends it
//! cleanly.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_kvmio-exporter");

fn run_expecting_usage_error(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{args:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let first = stderr.lines().next().unwrap_or_default().to_owned();
    assert!(first.contains("error"), "{args:?}: {stderr}");
    first
}

#[test]
fn invalid_flags_exit_2_with_a_clear_line() {
    let line = run_expecting_usage_error(&["--host.devices=sometimes"]);
    assert!(line.contains("--host.devices"), "{line}");
    let line = run_expecting_usage_error(&["--scrape.timeout=forever"]);
    assert!(line.contains("--scrape.timeout"), "{line}");
    run_expecting_usage_error(&["--qga.max-disks=0"]);
    run_expecting_usage_error(&["--bogus"]);
}

#[test]
fn bad_config_file_exits_2_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kvmio.toml");
    std::fs::write(&path, "[[target]]\nqmp = \"/run/vm1.qmp\"\nbogus = 1\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
}

#[test]
fn serves_and_stops_on_sigterm() {
    let fixtures = common::fixtures();
    let mut child = Command::new(BIN)
        .args(["--web.listen-address=127.0.0.1:0", "--host.devices=all"])
        .arg(format!(
            "--path.procfs={}",
            fixtures.join("linux-6.18/proc").display()
        ))
        .arg(format!(
            "--path.sysfs={}",
            fixtures.join("linux-6.18/sys").display()
        ))
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        line.clear();
        assert!(Instant::now() < deadline, "no 'listening on' line");
        assert!(stderr.read_line(&mut line).unwrap() > 0, "exited early");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split("/metrics").next().unwrap().to_owned();
        }
    };
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("kvmio_host_disk_reads_completed_total{device=\"vda\"}"));

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "still running 15 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("SIGTERM"), "{rest}");
}
