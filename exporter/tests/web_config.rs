//! `--web.config.file` against the real binary: TLS with a test PKI (rcgen), bcrypt basic
//! authentication in front of every path, the file's headers, plain HTTP to the TLS port,
//! client certificates, certificate and password changes picked up without a restart, a file
//! broken later keeping the last good configuration, and a broken file at start-up refused.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kvmio_test_support::tls::{
    bcrypt_hash as hash, client_config, https_get, parse, plain_get_raw, TestPki,
};
use kvmio_test_support::wait_for;

const BIN: &str = env!("CARGO_BIN_EXE_kvmio-exporter");
const T: Duration = Duration::from_secs(20);

/// The exporter over the captured host trees (so it has kvmio series without VMs), under the
/// web configuration `web_yml` (written to `DIR/web.yml`), its log in `DIR/exporter.log`.
fn exporter(dir: &Path, web_yml: &str) -> (common::procs::Proc, String) {
    let web = dir.join("web.yml");
    std::fs::write(&web, web_yml).unwrap();
    let fixtures = common::fixtures();
    common::procs::exporter(
        &[
            "--host.devices=all".to_owned(),
            format!(
                "--path.procfs={}",
                fixtures.join("linux-6.18/proc").display()
            ),
            format!("--path.sysfs={}", fixtures.join("linux-6.18/sys").display()),
            format!("--web.config.file={}", web.display()),
        ],
        &dir.join("exporter.log"),
    )
}

fn tls_file(pki: &TestPki, extra_tls: &str, users: &str) -> String {
    format!(
        "tls_server_config:
  cert_file: {}
  key_file: {}
{extra_tls}http_server_config:
  headers:
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
basic_auth_users:
{users}",
        pki.server_cert.display(),
        pki.server_key.display()
    )
}

#[test]
fn tls_and_basic_auth_guard_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let users = format!("  prometheus: {}\n", hash("scrape-me"));
    let (_exporter, addr) = exporter(dir.path(), &tls_file(&pki, "", &users));
    let log = std::fs::read_to_string(dir.path().join("exporter.log")).unwrap();
    assert!(log.contains("listening on https://"), "{log}");
    let tls = client_config(&pki.ca, None);

    let get = |path| https_get(&addr, path, &tls, Some(("prometheus", "scrape-me")), T).unwrap();
    let ok = get("/metrics");
    assert_eq!(ok.status, 200);
    assert!(
        ok.body
            .contains("kvmio_host_disk_reads_completed_total{device=\"vda\"}"),
        "{}",
        ok.body
    );
    assert_eq!(ok.header("x-frame-options"), Some("deny"));
    assert_eq!(ok.header("x-content-type-options"), Some("nosniff"));
    // Cached after the first success: the second costs no bcrypt, and still passes.
    assert_eq!(get("/metrics").status, 200);

    for (path, auth) in [
        ("/metrics", Some(("prometheus", "wrong"))),
        ("/metrics", Some(("nobody", "scrape-me"))),
        ("/metrics", None),
        ("/", None),
        ("/nowhere", None),
    ] {
        let r = https_get(&addr, path, &tls, auth, T).unwrap();
        assert_eq!(r.status, 401, "{path} {auth:?}");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Basic")),
            "{path}: {:?}",
            r.headers
        );
        assert!(!r.body.contains("kvmio_"), "{path}: {}", r.body);
        assert_eq!(
            r.header("x-frame-options"),
            Some("deny"),
            "headers on a 401 too"
        );
    }
    let landing = get("/");
    assert_eq!(landing.status, 200);
    assert!(landing.body.contains("kvmio-exporter"));
    // Its scrape job asks Prometheus for what this configuration needs.
    assert!(landing.body.contains("scheme: https"), "{}", landing.body);
    assert!(landing.body.contains("basic_auth:"), "{}", landing.body);

    // Plain HTTP to the TLS port: a 400 that says why, and no metrics, even with the password.
    let raw = plain_get_raw(&addr, "/metrics", Some(("prometheus", "scrape-me")), T).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(!text.contains("kvmio_"), "{text}");
    let answer = parse(&raw).unwrap();
    assert_eq!(answer.status, 400, "{text}");
    assert!(answer.body.contains("HTTPS"), "{text}");

    // A client that does not trust the CA (here: trusts another one) cannot connect.
    let other = tempfile::tempdir().unwrap();
    let other_pki = TestPki::new(other.path());
    let untrusting = client_config(&other_pki.ca, None);
    assert!(https_get(&addr, "/metrics", &untrusting, None, T).is_err());
}

#[test]
fn client_certificates_are_required_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let client_auth = format!(
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
        // Relative to the file's directory, as the toolkit resolves it.
        pki.ca.file_name().unwrap().to_str().unwrap()
    );
    let (_exporter, addr) = exporter(dir.path(), &tls_file(&pki, &client_auth, ""));

    let with_cert = client_config(&pki.ca, Some((&pki.client_cert, &pki.client_key)));
    let r = https_get(&addr, "/metrics", &with_cert, None, T).unwrap();
    assert_eq!(
        r.status, 200,
        "no users: the certificate is the authentication"
    );
    assert!(r.body.contains("kvmio_host_disk_"));

    let without = client_config(&pki.ca, None);
    let e = https_get(&addr, "/metrics", &without, None, T).unwrap_err();
    assert!(e.to_string().contains("CertificateRequired"), "{e}");
    let rogue = client_config(
        &pki.ca,
        Some((&pki.rogue_client_cert, &pki.rogue_client_key)),
    );
    let e = https_get(&addr, "/metrics", &rogue, None, T).unwrap_err();
    assert!(e.to_string().contains("UnknownCA"), "{e}");
}

#[test]
fn changes_apply_without_restart_and_a_broken_file_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    // The server's certificate and key under fixed names, which a renewal replaces.
    let (cert, key) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    std::fs::copy(&pki.server_cert, &cert).unwrap();
    std::fs::copy(&pki.server_key, &key).unwrap();
    let file = |password: &str| {
        format!(
            "tls_server_config:\n  cert_file: live.crt\n  key_file: live.key\n\
             basic_auth_users:\n  prometheus: {}\n",
            hash(password)
        )
    };
    let (_exporter, addr) = exporter(dir.path(), &file("one"));
    let web = dir.path().join("web.yml");
    let old_ca = client_config(&pki.ca, None);
    let get = |tls, password| https_get(&addr, "/metrics", tls, Some(("prometheus", password)), T);
    assert_eq!(get(&old_ca, "one").unwrap().status, 200);

    // A renewed certificate (from a new CA here, so that the change is visible): new
    // connections present it; no restart, no signal.
    let renewed = tempfile::tempdir().unwrap();
    let new_pki = TestPki::new(renewed.path());
    std::fs::copy(&new_pki.server_key, &key).unwrap();
    std::fs::copy(&new_pki.server_cert, &cert).unwrap();
    let new_ca = client_config(&new_pki.ca, None);
    wait_for("the renewed certificate", T, || {
        get(&new_ca, "one").ok().filter(|r| r.status == 200)
    });
    assert!(get(&old_ca, "one").is_err(), "the old certificate is gone");

    // A new password applies at the next request.
    std::fs::write(&web, file("two")).unwrap();
    assert_eq!(get(&new_ca, "two").unwrap().status, 200);
    assert_eq!(get(&new_ca, "one").unwrap().status, 401);

    // Broken later: the last good configuration stays in force, and the log says so once.
    std::fs::write(&web, "tls_server_config:\n  cert_file: [\n").unwrap();
    for _ in 0..3 {
        assert_eq!(get(&new_ca, "two").unwrap().status, 200);
    }
    // A certificate file that is not a certificate is refused the same way.
    std::fs::write(&web, file("three")).unwrap();
    std::fs::write(&cert, "not a certificate\n").unwrap();
    assert_eq!(get(&new_ca, "two").unwrap().status, 200);
    let log = std::fs::read_to_string(dir.path().join("exporter.log")).unwrap();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("last good configuration stays in force"))
        .collect();
    assert_eq!(warnings.len(), 2, "one warning per distinct error: {log}");
    assert!(warnings[0].contains("YAML"), "{}", warnings[0]);
    assert!(warnings[1].contains("cert_file"), "{}", warnings[1]);

    // Mended: applied.
    std::fs::copy(&new_pki.server_cert, &cert).unwrap();
    assert_eq!(get(&new_ca, "three").unwrap().status, 200);
}

/// A web config file that cannot be used stops the exporter at start-up with one clear line.
#[test]
fn a_broken_file_at_start_up_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let cases = [
        (
            "tls_server_config:\n  cert_flie: x\n".to_owned(),
            "unknown field",
        ),
        (
            format!("basic_auth_users:\n  prometheus: {}\n", "plaintext"),
            "bcrypt",
        ),
        (
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n".to_owned(),
            "missing.crt",
        ),
        (
            tls_file(&pki, "  min_version: TLS10\n", ""),
            "TLS 1.2 and 1.3 only",
        ),
        (
            tls_file(&pki, "  client_auth_type: RequireAnyClientCert\n", ""),
            "RequireAndVerifyClientCert",
        ),
        (
            tls_file(
                &pki,
                &format!("  client_ca_file: {}\n", pki.ca.display()),
                "",
            ),
            "client_auth_type",
        ),
        (
            "rate_limit:\n  interval: 1s\n  burst: 1\n".to_owned(),
            "rate_limit",
        ),
    ];
    for (text, expect) in cases {
        let web = dir.path().join("web.yml");
        std::fs::write(&web, &text).unwrap();
        let out = Command::new(BIN)
            .args(["--web.listen-address=127.0.0.1:0", "--web.config.file"])
            .arg(&web)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(
            lines[0].contains("--web.config.file") && lines[0].contains(expect),
            "{text}: {stderr}"
        );
    }
    let out = Command::new(BIN)
        .args(["--web.config.file", "/nonexistent/web.yml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/web.yml"));
}

/// Basic authentication without TLS (the toolkit allows it: e.g. behind a TLS-terminating
/// proxy on the same host) on plain HTTP.
#[test]
fn basic_auth_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let users = format!("basic_auth_users:\n  prometheus: {}\n", hash("pw"));
    let (_exporter, addr) = exporter(dir.path(), &users);
    let log = std::fs::read_to_string(dir.path().join("exporter.log")).unwrap();
    assert!(log.contains("listening on http://"), "{log}");
    let denied = parse(&plain_get_raw(&addr, "/metrics", None, T).unwrap()).unwrap();
    assert_eq!(denied.status, 401);
    let ok =
        parse(&plain_get_raw(&addr, "/metrics", Some(("prometheus", "pw")), T).unwrap()).unwrap();
    assert_eq!(ok.status, 200);
    assert!(ok.body.contains("kvmio_host_disk_"));
}
