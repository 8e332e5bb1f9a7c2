//! `make demo` and `make test` on a hypervisor that already runs Prometheus and node_exporter
//! leave them running. Stand-ins for the host's own services (Debian's real `prometheus` and
//! `prometheus-node-exporter` binaries, on 127.0.0.1 at the ports a host uses, 9090 and 9100,
//! and a third service on kvmio's own default port 10990) run while the test runs what those
//! commands run before the tests: `deploy/setup.sh`, the rules and unit checks
//! (`deploy/prometheus/check.sh`, `deploy/systemd/verify.sh`), and the demo (`deploy/demo.sh`,
//! one lab VM, until its metrics are served, then Ctrl-C). Afterwards every stand-in is the
//! same process, still answering; the demo served its metrics on a port none of them uses and
//! said why it moved off 10990.
//!
//! A port already taken when the test starts (a real host service on this machine) is said and
//! the process found there plays the host's part: it must still answer afterwards.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kvmio_e2e::{guest_image, try_http_get, vm_slot, wait_for, workspace_bin, ChildProcess};
use kvmio_test_support::require;
use nix::sys::signal::Signal;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A host service on `port`: ours (started for the test) or the one already there.
#[derive(Debug)]
struct HostService {
    what: &'static str,
    port: u16,
    /// The readiness path that answers 200.
    path: &'static str,
    ours: Option<ChildProcess>,
}

impl HostService {
    fn answers(&self) -> bool {
        try_http_get(
            &format!("127.0.0.1:{}", self.port),
            self.path,
            Duration::from_secs(10),
        )
        .is_ok_and(|(status, _)| status == 200)
    }

    fn start(what: &'static str, port: u16, path: &'static str, cmd: &mut Command) -> Self {
        let addr = format!("127.0.0.1:{port}");
        if std::net::TcpStream::connect(&addr).is_ok() {
            eprintln!(
                "host_services: {addr} is already taken on this machine: the process there \
                 plays the host's {what}"
            );
            return HostService {
                what,
                port,
                path,
                ours: None,
            };
        }
        let service = HostService {
            what,
            port,
            path,
            ours: Some(ChildProcess::spawn(
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )),
        };
        wait_for(what, Duration::from_secs(60), || {
            service.answers().then_some(())
        });
        service
    }

    /// Still the same process (if ours), still answering.
    fn assert_untouched(&mut self, after: &str) {
        if let Some(child) = &mut self.ours {
            assert!(
                child.running(),
                "{} (pid {}) was stopped by {after}",
                self.what,
                child.pid()
            );
        }
        assert!(
            self.answers(),
            "{} on 127.0.0.1:{} no longer answers after {after}",
            self.what,
            self.port
        );
    }
}

/// Runs a repository script to its end; panics with its output if it fails.
fn run_script(script: &str, args: &[&str], log: &Path) {
    let status = Command::new("bash")
        .arg(repo().join(script))
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(std::fs::File::options().append(true).open(log).unwrap())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{script}: {status}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// The host's Prometheus configuration: it scrapes the host's node_exporter.
const NODE_SCRAPE_CONFIG: &str =
    "scrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:9100']\n";

#[test]
fn setup_checks_and_demo_leave_the_hosts_prometheus_and_node_exporter_running() {
    let _slot = vm_slot();
    guest_image();
    let prometheus = require("prometheus", "prometheus");
    let node_exporter = require("prometheus-node-exporter", "prometheus-node-exporter");
    let dir = tempfile::tempdir().unwrap();
    let prom_config = dir.path().join("prometheus.yml");
    std::fs::write(&prom_config, NODE_SCRAPE_CONFIG).unwrap();

    let mut services = vec![
        HostService::start(
            "the host's Prometheus",
            9090,
            "/-/ready",
            Command::new(&prometheus)
                .arg(format!("--config.file={}", prom_config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("tsdb").display()
                ))
                .arg("--web.listen-address=127.0.0.1:9090"),
        ),
        HostService::start(
            "the host's node_exporter",
            9100,
            "/metrics",
            Command::new(&node_exporter).arg("--web.listen-address=127.0.0.1:9100"),
        ),
        // Something of the host's on kvmio's own default port: the demo must move, not fail
        // or take it over.
        HostService::start(
            "a host service on 10990",
            10990,
            "/metrics",
            Command::new(&node_exporter).arg("--web.listen-address=127.0.0.1:10990"),
        ),
    ];

    // `make test` and `make demo` first: setup (idempotent; installs nothing here, where the
    // suite's packages are in place), then make test's checks.
    run_script("deploy/setup.sh", &[], &dir.path().join("setup.log"));
    for s in &mut services {
        s.assert_untouched("deploy/setup.sh");
    }
    run_script(
        "deploy/prometheus/check.sh",
        &[],
        &dir.path().join("check.log"),
    );
    let bin_dir = workspace_bin("kvmio-exporter")
        .parent()
        .unwrap()
        .to_path_buf();
    run_script(
        "deploy/systemd/verify.sh",
        &[bin_dir.to_str().unwrap()],
        &dir.path().join("verify.log"),
    );
    for s in &mut services {
        s.assert_untouched("make test's checks");
    }

    // The demo, as `make demo` runs it (no --listen), with one lab VM.
    let out = dir.path().join("demo.out");
    let err = dir.path().join("demo.err");
    let mut demo = ChildProcess::spawn(
        Command::new("bash")
            .arg(repo().join("deploy/demo.sh"))
            .args(["--accel", "tcg", "--vms", "1", "--run-dir"])
            .arg(dir.path().join("lab"))
            .env("KVMIO_BIN", &bin_dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap()),
    );
    let addr = wait_for("the demo's banner", Duration::from_secs(240), || {
        if let Some(status) = demo.exited() {
            panic!(
                "demo exited: {status}: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        let text = std::fs::read_to_string(&out).ok()?;
        let rest = text.split("metrics:     http://").nth(1)?;
        Some(rest.split("/metrics").next()?.to_owned())
    });
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    for s in &services {
        assert_ne!(port, s.port, "the demo chose {}'s port", s.what);
    }
    let said = std::fs::read_to_string(&err).unwrap();
    assert!(
        said.contains("127.0.0.1:10990 is in use"),
        "the demo says why it moved: {said}"
    );
    wait_for("the demo's lab metrics", Duration::from_secs(120), || {
        let (_, body) = try_http_get(&addr, "/metrics", Duration::from_secs(15)).ok()?;
        body.contains("kvmio_qmp_up{vm=\"lab-1\"} 1").then_some(())
    });
    for s in &mut services {
        s.assert_untouched("deploy/demo.sh (running)");
    }
    demo.signal_and_wait(Signal::SIGINT, Duration::from_secs(60));
    for s in &mut services {
        s.assert_untouched("deploy/demo.sh (stopped)");
    }
}
