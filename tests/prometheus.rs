//! The operators' kit end to end: a real Prometheus (Debian's `/usr/bin/prometheus`) loaded with
//! the repository's scrape snippet and rules scrapes a real `kvmio-exporter`, which scrapes two
//! `kvmio-crashtest lab` VMs under TCG (cache=none and cache=unsafe) and re-serves the results of
//! a real, tiny `kvmio-crashtest run`. After a few scrapes:
//!
//! * every recording rule (each of its `layer` variants) returns data through `/api/v1/query`,
//!   and every rule is healthy;
//! * every query of every dashboard panel and variable returns data, with the variables
//!   substituted as Grafana would (All, and single VMs and disks);
//! * `KvmioUnsafeCacheMode` fires for the cache=unsafe VM's disks and for nothing else, and no
//!   other alert fires; the same for a libvirt domain (`cache='unsafe'` in its XML) that the
//!   exporter reads through its own libvirtd (`kvmio_e2e::libvirtd`);
//! * `KvmioVmStoppedOnIoError` fires for a QEMU that really stopped on an I/O error (no guest:
//!   SeaBIOS reads the boot disk, blkdebug fails the read, `rerror=stop`), which may also fire
//!   `KvmioBlockIOErrors`, and for nothing else.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvmio_crashtest::vm::ImageFormat;
use kvmio_e2e::libvirtd::{DiskSpec, DomainSpec, Libvirtd};
use kvmio_e2e::metrics::start_exporter;
use kvmio_e2e::prom::Prometheus;
use kvmio_e2e::{
    guest_image, processes_mentioning, start_lab, try_http_get, vm_slot, wait_for, which,
    workspace_bin, ChildProcess,
};
use kvmio_qemu::CacheMode;
use nix::sys::signal::Signal;
use serde_json::Value;

/// Prometheus' scrape and rule-evaluation interval in this test.
const SCRAPE_INTERVAL: &str = "1s";
/// What Grafana makes of `$__rate_interval` for a 1 s scrape interval at a 15 s step:
/// max(step + scrape interval, 4 x scrape interval).
const RATE_INTERVAL: &str = "16s";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The crash-test results the exporter re-serves: a real `kvmio-crashtest run`, as small as a
/// matrix gets that still shows two verdicts: cache none and unsafe, power loss, fdatasync, raw,
/// one iteration each (none keeps its acknowledged writes: ok; unsafe loses them:
/// loss-allowed).
fn crashtest_results(out: &Path) {
    let bin = workspace_bin("kvmio-crashtest");
    let mut cmd = Command::new(&bin);
    cmd.args(["run", "--cache", "none,unsafe", "--fault", "power"])
        .args([
            "--sync",
            "fdatasync",
            "--format",
            "raw",
            "--iterations",
            "1",
        ])
        .args([
            "--seed",
            "1",
            "--disk-size",
            "32",
            "--accel",
            "tcg",
            "--out",
        ])
        .arg(out)
        .stdin(Stdio::null());
    let (status, stdout, stderr) = kvmio_e2e::run(&mut cmd);
    assert!(
        status.success(),
        "kvmio-crashtest run: {status}\n{stdout}\n{stderr}"
    );
    println!("crash-test run:\n{stdout}{stderr}");
    assert!(out.join("crashtest.prom").is_file());
}

/// Prometheus' configuration: the repository's scrape snippet with this test's target and
/// intervals, and the repository's rule files.
fn prometheus_config(exporter_addr: &str) -> String {
    let snippet =
        std::fs::read_to_string(repo().join("deploy/prometheus/kvmio-scrape.yml")).unwrap();
    let mut job = snippet.clone();
    for (from, to) in [
        (
            "scrape_interval: 15s",
            format!("scrape_interval: {SCRAPE_INTERVAL}"),
        ),
        (
            "scrape_timeout: 10s",
            format!("scrape_timeout: {SCRAPE_INTERVAL}"),
        ),
        (
            "        - hypervisor-1.example.org:10990\n        - hypervisor-2.example.org:10990\n",
            format!("        - {exporter_addr}\n"),
        ),
    ] {
        assert!(
            job.contains(from),
            "deploy/prometheus/kvmio-scrape.yml no longer contains {from:?}: update this test"
        );
        job = job.replace(from, &to);
    }
    let rules = repo().join("deploy/prometheus/rules");
    let mut config = format!(
        "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\n\
         rule_files:\n  - {}/kvmio-recording.rules.yml\n  - {}/kvmio-alerts.rules.yml\n\
         scrape_configs:\n",
        rules.display(),
        rules.display()
    );
    for line in job.lines() {
        config.push_str("  ");
        config.push_str(line);
        config.push('\n');
    }
    config
}

/// A q35 QEMU (TCG, no guest) whose boot disk fails every read (blkdebug) under `rerror=stop`:
/// SeaBIOS's first read of it stops the VM with QEMU's run state `io-error`. Its monitor is
/// `DIR/ioerr.qmp`.
fn stopped_on_io_error(dir: &Path) -> ChildProcess {
    std::fs::create_dir_all(dir).unwrap();
    let disk = dir.join("e.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let conf = dir.join("blkdebug.conf");
    std::fs::write(
        &conf,
        "[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\n",
    )
    .unwrap();
    let sock = dir.join("ioerr.qmp");
    let mut qemu = ChildProcess::spawn(
        Command::new(which("qemu-system-x86_64").expect("qemu-system-x86_64"))
            .args(["-M", "q35", "-accel", "tcg", "-m", "64", "-display", "none"])
            .args(["-nodefaults", "-name", "ioerr", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .arg("-drive")
            .arg(format!(
                "file=blkdebug:{}:{},format=raw,if=none,id=e0,rerror=stop,werror=stop",
                conf.display(),
                disk.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=e0,id=ve0,bootindex=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("qemu.log")).unwrap()),
    );
    wait_for(
        "the io-error QEMU's monitor",
        Duration::from_secs(60),
        || {
            assert!(qemu.running(), "the io-error QEMU exited");
            sock.exists().then_some(())
        },
    );
    qemu
}

/// Every query of a dashboard (panel targets, and variable queries as `count by (label) (...)`)
/// with Grafana's variables substituted.
fn dashboard_queries(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dir = repo().join("grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let subst = |expr: &str| {
        let mut e = expr.replace("$__rate_interval", RATE_INTERVAL);
        // Longest names first ($instance before $i...).
        let mut vs = vars.to_vec();
        vs.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
        for (k, v) in vs {
            e = e.replace(&format!("${k}"), v);
        }
        e
    };
    for file in files {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let title = d["title"].as_str().unwrap_or_default().to_string();
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] != "query" {
                continue;
            }
            let q = v["query"].as_str().unwrap();
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .expect("label_values(metric, label)");
            let (metric, label) = inner.rsplit_once(',').unwrap();
            out.push((
                format!("{title} / variable {}", v["name"]),
                subst(&format!("count by ({}) ({metric})", label.trim())),
            ));
        }
        for p in d["panels"].as_array().unwrap() {
            if p["type"] == "row" {
                continue;
            }
            for t in p["targets"].as_array().unwrap() {
                out.push((
                    format!(
                        "{title} / {} / {}",
                        p["title"].as_str().unwrap(),
                        t["refId"]
                    ),
                    subst(t["expr"].as_str().unwrap()),
                ));
            }
        }
    }
    out
}

fn show(result: &[Value]) -> String {
    result
        .iter()
        .map(|s| format!("{} {}", s["metric"], s["value"][1]))
        .collect::<Vec<_>>()
        .join("\n    ")
}

#[test]
fn prometheus_runs_every_rule_and_panel_against_real_vms() {
    let _slot = vm_slot();
    guest_image(); // build outside the clocks below
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("lab");
    let results = dir.path().join("crashtest");

    crashtest_results(&results);
    let (mut lab, manifest) = start_lab(&run_dir, 32, &dir.path().join("lab.stderr.log"));
    assert_eq!(manifest["vms"][0]["cache"], "none");
    assert_eq!(manifest["vms"][1]["cache"], "unsafe");

    // A libvirt domain with both disks under cache='unsafe' (paused: it never needs to boot).
    let libvirtd = Libvirtd::start();
    libvirtd.define_and_start(&DomainSpec::paused("lv-unsafe").disks(vec![
        DiskSpec::new(ImageFormat::Qcow2, CacheMode::Unsafe).size_mib(16),
        DiskSpec::new(ImageFormat::Raw, CacheMode::Unsafe).size_mib(16),
    ]));

    let ioerr_dir = dir.path().join("ioerr");
    let mut ioerr = stopped_on_io_error(&ioerr_dir);

    let (mut exporter, exporter_addr) = start_exporter(
        &[
            format!("--qmp.socket-glob={}/*.qmp", run_dir.display()),
            format!("--qmp.socket-glob={}/*.qmp", ioerr_dir.display()),
            format!("--libvirt.uri={}", libvirtd.uri()),
            format!("--crashtest.results-dir={}", results.display()),
            "--qmp.latency-buckets=0.0001,0.001,0.01,0.1,1".to_owned(),
            "--scrape.timeout=800ms".to_owned(),
        ],
        &dir.path().join("exporter.log"),
    );
    wait_for("the exporter's /metrics", Duration::from_secs(30), || {
        try_http_get(&exporter_addr, "/metrics", Duration::from_secs(30))
            .ok()
            .filter(|(s, b)| *s == 200 && b.contains("kvmio_qemu_block_info"))
    });

    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, prometheus_config(&exporter_addr)).unwrap();
    let mut prom = Prometheus::start(&config, dir.path());
    wait_for("kvmio target up", Duration::from_secs(60), || {
        let r = prom.query(r#"up{job="kvmio"} == 1"#);
        (!r.is_empty()).then_some(())
    });

    // Every rule loaded and healthy; every recording rule (each labelled variant) has data.
    let groups = prom.api("/api/v1/rules");
    let mut recordings = Vec::new();
    let mut alerting = 0;
    for g in groups["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            match r["type"].as_str() {
                Some("recording") => {
                    let mut sel = r["name"].as_str().unwrap().to_string();
                    if let Some(labels) = r["labels"].as_object().filter(|l| !l.is_empty()) {
                        let m: Vec<String> =
                            labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        sel = format!("{sel}{{{}}}", m.join(","));
                    }
                    recordings.push(sel);
                }
                Some("alerting") => alerting += 1,
                _ => {}
            }
        }
    }
    assert!(
        recordings.len() >= 40,
        "recording rules loaded: {recordings:?}"
    );
    assert!(alerting >= 8, "alerting rules loaded: {alerting}");

    let deadline = Instant::now() + Duration::from_secs(150);
    let mut queries: Vec<(String, String)> = recordings
        .iter()
        .map(|r| (format!("recording rule {r}"), r.clone()))
        .collect();
    let instance = exporter_addr.clone();
    for (vm, device) in [
        (".+", ".+"),
        ("lab-1", "drive-virtio-disk1"),
        ("lab-2", "drive-virtio-disk0"),
    ] {
        let vars = [
            ("job", "kvmio"),
            ("instance", instance.as_str()),
            ("vm", vm),
            ("device", device),
        ];
        for (what, q) in dashboard_queries(&vars) {
            queries.push((format!("{what} [vm={vm} device={device}]"), q));
        }
    }
    // Polls until every query has data: rates need two scrapes inside their window, the rules a
    // few evaluations.
    let mut missing: Vec<&(String, String)>;
    loop {
        let health = prom.api("/api/v1/rules");
        for g in health["groups"].as_array().unwrap() {
            for r in g["rules"].as_array().unwrap() {
                assert_ne!(
                    r["health"], "err",
                    "rule {} failed: {}",
                    r["name"], r["lastError"]
                );
            }
        }
        // Data means at least one sample with a number: NaN (0/0, a quantile of empty
        // buckets) does not count.
        missing = queries
            .iter()
            .filter(|(_, q)| prom.query(q).iter().all(|s| s["value"][1] == "NaN"))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(
        missing.is_empty(),
        "{} of {} queries returned no data:\n{}",
        missing.len(),
        queries.len(),
        missing
            .iter()
            .map(|(w, q)| format!("  {w}\n    {q}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!(
        "{} queries (recording rules, dashboard panels and variables) returned data",
        queries.len()
    );

    // What the layers look like, for the record.
    for q in [
        "round(vm_device:kvmio_disk_writes_completed:rate5m, 0.1)",
        "round(vm_device:kvmio_disk_write_request_bytes:avg5m)",
        "round(vm_device:kvmio_disk_write_latency_seconds:avg5m * 1e6)",
        "round(vm_device:kvmio_disk_write_merge_ratio:ratio5m, 0.001)",
        "round(vm:kvmio_qemu_write_amplification:ratio5m, 0.01)",
        "round(vm_device:kvmio_host_image_cached:ratio, 0.01)",
        "cell:kvmio_crashtest_verdict:code",
    ] {
        println!("{q}:\n    {}", show(&prom.query(q)));
    }

    // KvmioUnsafeCacheMode fires for lab-2's disks (cache=unsafe) and the libvirt domain's,
    // KvmioVmStoppedOnIoError (for: 1m) for the io-error VM, and nothing else fires.
    let firing = wait_for(
        "KvmioUnsafeCacheMode firing for lab-2's and lv-unsafe's two disks each, and \
         KvmioVmStoppedOnIoError for ioerr",
        Duration::from_secs(180),
        || {
            let alerts = prom.api("/api/v1/alerts");
            let firing: Vec<Value> = alerts["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["state"] == "firing")
                .cloned()
                .collect();
            let unsafe_disks: BTreeSet<String> = firing
                .iter()
                .filter(|a| a["labels"]["alertname"] == "KvmioUnsafeCacheMode")
                .map(|a| format!("{} {}", a["labels"]["vm"], a["labels"]["device"]))
                .collect();
            let stopped = firing
                .iter()
                .any(|a| a["labels"]["alertname"] == "KvmioVmStoppedOnIoError");
            (unsafe_disks.len() == 4 && stopped).then_some(firing)
        },
    );
    let mut seen = BTreeSet::new();
    for a in &firing {
        let l = &a["labels"];
        seen.insert(format!("{} {} {}", l["alertname"], l["vm"], l["device"]));
        if l["vm"] == "ioerr" {
            assert!(
                l["alertname"] == "KvmioVmStoppedOnIoError"
                    || l["alertname"] == "KvmioBlockIOErrors",
                "only the I/O-error alerts may fire for the io-error VM: {a}"
            );
            continue;
        }
        assert_eq!(
            l["alertname"], "KvmioUnsafeCacheMode",
            "only KvmioUnsafeCacheMode may fire for the other VMs: {a}"
        );
        assert!(
            l["vm"] == "lab-2" || l["vm"] == "lv-unsafe",
            "fired for a VM not on cache=unsafe: {a}"
        );
        assert_eq!(l["severity"], "critical");
        assert!(a["annotations"]["runbook_url"]
            .as_str()
            .unwrap()
            .ends_with("docs/runbook.md#kvmiounsafecachemode"));
    }
    println!("firing: {seen:?}");
    let pending: Vec<String> = prom.api("/api/v1/alerts")["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] != "firing")
        .map(|a| format!("{} {}", a["labels"]["alertname"], a["labels"]["vm"]))
        .collect();
    println!("pending: {pending:?}");

    // Stop everything this test started; nothing may be left running.
    prom.process
        .signal_and_wait(Signal::SIGTERM, Duration::from_secs(30));
    exporter.signal_and_wait(Signal::SIGTERM, Duration::from_secs(30));
    ioerr.signal_and_wait(Signal::SIGTERM, Duration::from_secs(30));
    let status = lab.signal_and_wait(Signal::SIGINT, Duration::from_secs(60));
    assert!(status.success(), "lab stops cleanly on Ctrl-C: {status}");
    libvirtd.stop_leaving_nothing();
    let left = processes_mentioning(&dir.path().to_string_lossy());
    assert!(left.is_empty(), "left running: {left:?}");
}
