//! What `--web.config.file` costs a request (not a timed test; the figures go to BENCHMARKS.md):
//!
//! ```text
//! cargo bench -p kvmio-exporter --bench web [-- --requests 50 --cost 10]
//! ```
//!
//! The `kvmio-exporter` binary (release) with no VM sources, and `GET /` (the landing page: no
//! scrape, so the web layer is what is measured), each request on a new connection as
//! Prometheus' first scrape of a target makes it, in one run:
//! - plain HTTP without a web config file;
//! - TLS without users (handshake, and the file and PEM files re-read and compared);
//! - TLS with a bcrypt user (cost `--cost`, htpasswd's default 10): the first request (a
//!   bcrypt), then the right password again (cached), then a wrong password (a bcrypt each
//!   time, never cached).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmio_test_support::bench::{loadavg, median_p99, ms, parse_flags, table_head};
use kvmio_test_support::tls::{client_config, https_get, parse, plain_get_raw, TestPki};
use kvmio_test_support::{launch_exporter, ChildProcess};

const BIN: &str = env!("CARGO_BIN_EXE_kvmio-exporter");
const T: Duration = Duration::from_secs(30);

fn exporter(dir: &Path, name: &str, web: Option<String>) -> (ChildProcess, String) {
    let mut args = vec!["--host.devices=none".to_owned()];
    if let Some(text) = web {
        let path = dir.join(format!("{name}.yml"));
        std::fs::write(&path, text).unwrap();
        args.push(format!("--web.config.file={}", path.display()));
    }
    launch_exporter(Command::new(BIN), &args, &dir.join(format!("{name}.log")))
}

/// `n` timings of `f`, in seconds, each checked with `ok`.
fn time(n: usize, mut f: impl FnMut() -> u16, expect: u16) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let t0 = Instant::now();
            let status = f();
            let t = t0.elapsed().as_secs_f64();
            assert_eq!(status, expect);
            t
        })
        .collect()
}

fn row(what: &str, v: Vec<f64>) {
    println!("| {what} | {} | {} |", v.len(), median_p99(&v, 2));
}

fn main() {
    let mut requests = 50;
    let mut cost = 10;
    parse_flags(|flag, v| match flag {
        "--requests" => requests = v.number(),
        "--cost" => cost = v.number() as u32,
        _ => {}
    });
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let tls_section = format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let t0 = Instant::now();
    let hash = bcrypt::hash("scrape-me", cost).unwrap();
    let one_bcrypt = t0.elapsed().as_secs_f64();
    println!(
        "bcrypt cost {cost}: one hash in this process {}; load {}",
        ms(one_bcrypt),
        loadavg()
    );
    table_head(&["GET / on a new connection", "requests", "median / p99 (ms)"]);

    let (_plain, plain_addr) = exporter(dir.path(), "plain", None);
    row(
        "plain HTTP, no --web.config.file",
        time(
            requests,
            || {
                parse(&plain_get_raw(&plain_addr, "/", None, T).unwrap())
                    .unwrap()
                    .status
            },
            200,
        ),
    );

    let tls: Arc<rustls::ClientConfig> = client_config(&pki.ca, None);
    let (_tls_only, tls_addr) = exporter(dir.path(), "tls", Some(tls_section.clone()));
    row(
        "TLS, no users",
        time(
            requests,
            || https_get(&tls_addr, "/", &tls, None, T).unwrap().status,
            200,
        ),
    );

    let (_auth, auth_addr) = exporter(
        dir.path(),
        "auth",
        Some(format!(
            "{tls_section}basic_auth_users:\n  prometheus: {hash}\n"
        )),
    );
    let get = |password: &str| {
        https_get(&auth_addr, "/", &tls, Some(("prometheus", password)), T)
            .unwrap()
            .status
    };
    row(
        "TLS + basic auth, first request (bcrypt)",
        time(1, || get("scrape-me"), 200),
    );
    row(
        "TLS + basic auth, right password (cached)",
        time(requests, || get("scrape-me"), 200),
    );
    row(
        "TLS + basic auth, wrong password (bcrypt each time)",
        time(requests.min(20), || get("wrong"), 401),
    );
}
