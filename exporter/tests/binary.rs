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

/// The exporter on a loopback port over the captured host trees, with `extra` flags.
fn on_fixtures(extra: &[&str]) -> Command {
    let fixtures = common::fixtures();
    let mut cmd = Command::new(BIN);
    cmd.args(["--web.listen-address=127.0.0.1:0", "--host.devices=all"])
        .arg(format!(
            "--path.procfs={}",
            fixtures.join("linux-6.18/proc").display()
        ))
        .arg(format!(
            "--path.sysfs={}",
            fixtures.join("linux-6.18/sys").display()
        ))
        .args(extra);
    cmd
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
    let mut child = on_fixtures(&[])
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

/// `--web.telemetry-path` moves the metrics (the old path is a 404 that names the new one),
/// `--log.format json` writes one JSON object a line, and `--log.level warn` hides info lines.
#[test]
fn telemetry_path_and_log_flags() {
    let mut child = on_fixtures(&["--web.telemetry-path=/kvmio/metrics", "--log.format=json"])
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    assert!(stderr.read_line(&mut line).unwrap() > 0, "exited early");
    let first: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    let msg = first["message"].as_str().unwrap();
    let addr = msg
        .strip_prefix("listening on http://")
        .and_then(|r| r.strip_suffix("/kvmio/metrics"))
        .unwrap_or_else(|| panic!("{msg}"))
        .to_owned();
    let get = |path: &str| {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    };
    let reply = get("/kvmio/metrics");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("kvmio_host_disk_reads_completed_total{device=\"vda\"}"));
    let reply = get("/metrics");
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    assert!(reply.contains("try /kvmio/metrics"), "{reply}");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());

    // --log.level warn: no info line (the start-up line is info), still serving.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let quiet = Command::new(BIN)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .args(["--host.devices=none", "--log.level=warn"])
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "never listened on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(Pid::from_raw(quiet.id() as i32), Signal::SIGTERM).unwrap();
    let out = quiet.wait_with_output().unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("listening on"), "info lines at warn: {log}");

    let out = Command::new(BIN)
        .args([
            "--web.listen-address=127.0.0.1:0",
            "--host.devices=none",
            "--log.level=warn",
            "--web.telemetry-path=metrics",
        ])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a relative telemetry path is refused"
    );
}
