//! A real Prometheus (Debian's `/usr/bin/prometheus`, its own on a loopback port with its own
//! data directory) scraping real `kvmio-exporter`s under `--web.config.file`, with a PKI the
//! test makes (rcgen): a CA, the exporters' server certificate, Prometheus' client certificate.
//! The exporters read a real QEMU's monitor (`-M none`), so kvmio's VM series are there.
//!
//! One exporter has TLS and bcrypt basic auth; Prometheus scrapes it with the right password
//! (`up == 1`, kvmio series in Prometheus), a wrong one and none (401), and in plain HTTP (400,
//! no metrics). The other requires and verifies client certificates: Prometheus with its
//! certificate is up, without one it is refused in the handshake.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use kvmio_e2e::{free_port, try_http_get, wait_for, workspace_bin, ChildProcess};
use kvmio_test_support::qemu::qemu_none;
use kvmio_test_support::tls::{bcrypt_hash, parse, plain_get_raw, Answer, TestPki};
use kvmio_test_support::{launch_exporter, require};
use serde_json::Value;

const PASSWORD: &str = "correct horse battery staple";

/// Prometheus' HTTP API: the `data` of a successful answer.
fn api(port: u16, path: &str) -> Value {
    let addr = format!("127.0.0.1:{port}");
    let Answer { status, body, .. } = plain_get_raw(&addr, path, None, Duration::from_secs(30))
        .and_then(|raw| parse(&raw))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let v: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {path}: status {status}, not JSON ({e}): {body}"));
    assert_eq!(v["status"], "success", "GET {path}: {body}");
    v["data"].clone()
}

/// The scrape state of every target, by job: (health, lastError).
fn targets(port: u16) -> Vec<(String, String, String)> {
    api(port, "/api/v1/targets?state=active")["activeTargets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            (
                t["labels"]["job"].as_str().unwrap_or_default().to_owned(),
                t["health"].as_str().unwrap_or_default().to_owned(),
                t["lastError"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn query(port: u16, expr: &str) -> Vec<Value> {
    let encoded: String = expr
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    api(port, &format!("/api/v1/query?query={encoded}"))["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn web_config(pki: &TestPki, client_auth: bool) -> String {
    let hash = bcrypt_hash(PASSWORD);
    let client = if client_auth {
        format!(
            "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
            pki.ca.display()
        )
    } else {
        String::new()
    };
    format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n{client}\
         basic_auth_users:\n  prometheus: {hash}\n",
        pki.server_cert.display(),
        pki.server_key.display()
    )
}

fn job(name: &str, scheme: &str, target: &str, tls: &str, auth: &str) -> String {
    format!(
        "  - job_name: {name}\n    scheme: {scheme}\n{tls}{auth}    static_configs:\n      - targets: ['{target}']\n"
    )
}

#[test]
fn prometheus_scrapes_over_tls_with_basic_auth_and_client_certificates() {
    let prometheus = require("prometheus", "prometheus");
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let (_qemu, _qmp) = qemu_none(dir.path(), "vm1", 1);

    let exporter = |name: &str, client_auth: bool| {
        let web = dir.path().join(format!("{name}.yml"));
        std::fs::write(&web, web_config(&pki, client_auth)).unwrap();
        launch_exporter(
            Command::new(workspace_bin("kvmio-exporter")),
            &[
                format!("--qmp.socket-glob={}/*.qmp", dir.path().display()),
                format!("--web.config.file={}", web.display()),
            ],
            &dir.path().join(format!("{name}.log")),
        )
    };
    let (_auth_exporter, auth_addr) = exporter("auth", false);
    let (_cert_exporter, cert_addr) = exporter("cert", true);

    let password = dir.path().join("password");
    std::fs::write(&password, PASSWORD).unwrap();
    let wrong = dir.path().join("wrong-password");
    std::fs::write(&wrong, "incorrect").unwrap();
    let ca_only = format!("    tls_config:\n      ca_file: {}\n", pki.ca.display());
    let with_cert = format!(
        "    tls_config:\n      ca_file: {}\n      cert_file: {}\n      key_file: {}\n",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let basic = |file: &Path| {
        format!(
            "    basic_auth:\n      username: prometheus\n      password_file: {}\n",
            file.display()
        )
    };
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{}{}{}{}{}{}",
        job("tls_auth", "https", &auth_addr, &ca_only, &basic(&password)),
        job(
            "wrong_password",
            "https",
            &auth_addr,
            &ca_only,
            &basic(&wrong)
        ),
        job("no_password", "https", &auth_addr, &ca_only, ""),
        job("plain_http", "http", &auth_addr, "", &basic(&password)),
        job(
            "client_cert",
            "https",
            &cert_addr,
            &with_cert,
            &basic(&password)
        ),
        job(
            "no_client_cert",
            "https",
            &cert_addr,
            &ca_only,
            &basic(&password)
        ),
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, &config).unwrap();

    let port = free_port();
    let _prom = ChildProcess::spawn(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap()),
    );
    wait_for("Prometheus ready", Duration::from_secs(60), || {
        try_http_get(
            &format!("127.0.0.1:{port}"),
            "/-/ready",
            Duration::from_secs(5),
        )
        .ok()
        .filter(|(s, _)| *s == 200)
    });

    // Every target scraped at least once (lastError filled in or health known).
    let states = wait_for("every target scraped", Duration::from_secs(90), || {
        let t = targets(port);
        (t.len() == 6 && t.iter().all(|(_, health, _)| health != "unknown")).then_some(t)
    });
    let state = |job: &str| {
        states
            .iter()
            .find(|(j, _, _)| j == job)
            .unwrap_or_else(|| panic!("no target for {job}: {states:?}"))
            .clone()
    };
    for job in ["tls_auth", "client_cert"] {
        let (_, health, error) = state(job);
        assert_eq!(health, "up", "{job}: {error}");
    }
    for (job, expect) in [
        ("wrong_password", "401"),
        ("no_password", "401"),
        ("plain_http", "400"),
        ("no_client_cert", "certificate required"),
    ] {
        let (_, health, error) = state(job);
        assert_eq!(health, "down", "{job}");
        assert!(error.contains(expect), "{job}: {error}");
    }

    // In Prometheus: up == 1 through TLS and auth, and kvmio's series of the VM, for both.
    for job in ["tls_auth", "client_cert"] {
        let up = wait_for("up == 1", Duration::from_secs(30), || {
            let r = query(port, &format!("up{{job=\"{job}\"}} == 1"));
            (!r.is_empty()).then_some(r)
        });
        assert_eq!(up.len(), 1, "{job}");
        let qmp = wait_for("kvmio series", Duration::from_secs(30), || {
            let r = query(port, &format!("kvmio_qmp_up{{job=\"{job}\",vm=\"vm1\"}}"));
            (!r.is_empty()).then_some(r)
        });
        assert_eq!(qmp[0]["value"][1], "1", "{job}: {qmp:?}");
        let blocks = query(
            port,
            &format!("kvmio_qemu_block_info{{job=\"{job}\",vm=\"vm1\"}}"),
        );
        assert!(!blocks.is_empty(), "{job}: no kvmio_qemu_block_info");
    }
    // The refused jobs left no kvmio series behind.
    for job in [
        "wrong_password",
        "no_password",
        "plain_http",
        "no_client_cert",
    ] {
        let r = query(port, &format!("{{job=\"{job}\",__name__=~\"kvmio_.*\"}}"));
        assert!(r.is_empty(), "{job}: {r:?}");
    }
}
