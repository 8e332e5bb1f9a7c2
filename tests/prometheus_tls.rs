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
use std::process::Command;
use std::time::Duration;

use kvmio_e2e::prom::Prometheus;
use kvmio_e2e::{wait_for, workspace_bin};
use kvmio_test_support::launch_exporter;
use kvmio_test_support::qemu::qemu_none;
use kvmio_test_support::tls::{bcrypt_hash, TestPki};

const PASSWORD: &str = "correct horse battery staple";

/// The scrape state of every target: (job, health, lastError).
fn targets(prom: &Prometheus) -> Vec<(String, String, String)> {
    prom.api("/api/v1/targets?state=active")["activeTargets"]
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

    let prom = Prometheus::start(&config_path, dir.path());

    // Every target scraped at least once (lastError filled in or health known).
    let states = wait_for("every target scraped", Duration::from_secs(90), || {
        let t = targets(&prom);
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
            let r = prom.query(&format!("up{{job=\"{job}\"}} == 1"));
            (!r.is_empty()).then_some(r)
        });
        assert_eq!(up.len(), 1, "{job}");
        let qmp = wait_for("kvmio series", Duration::from_secs(30), || {
            let r = prom.query(&format!("kvmio_qmp_up{{job=\"{job}\",vm=\"vm1\"}}"));
            (!r.is_empty()).then_some(r)
        });
        assert_eq!(qmp[0]["value"][1], "1", "{job}: {qmp:?}");
        let blocks = prom.query(&format!(
            "kvmio_qemu_block_info{{job=\"{job}\",vm=\"vm1\"}}"
        ));
        assert!(!blocks.is_empty(), "{job}: no kvmio_qemu_block_info");
    }
    // The refused jobs left no kvmio series behind.
    for job in [
        "wrong_password",
        "no_password",
        "plain_http",
        "no_client_cert",
    ] {
        let r = prom.query(&format!("{{job=\"{job}\",__name__=~\"kvmio_.*\"}}"));
        assert!(r.is_empty(), "{job}: {r:?}");
    }
}
