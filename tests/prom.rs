//! A real Prometheus server as the end-to-end tests run it: Debian's `/usr/bin/prometheus` on a
//! free loopback port, its data and log in the test's directory, and its HTTP API read as JSON.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use kvmio_test_support::tls::{parse, plain_get_raw, Answer};
use serde_json::Value;

use crate::{free_port, wait_for, ChildProcess};

/// A running Prometheus, killed when dropped.
#[derive(Debug)]
pub struct Prometheus {
    pub process: ChildProcess,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Prometheus {
    /// Starts Prometheus with `config`, its TSDB in `dir/tsdb` and its log in
    /// `dir/prometheus.log`; returns once `/-/ready` answers 200 (60 s at most).
    pub fn start(config: &Path, dir: &Path) -> Prometheus {
        let bin = kvmio_test_support::require("prometheus", "prometheus");
        let addr = format!("127.0.0.1:{}", free_port());
        let process = ChildProcess::spawn(
            Command::new(bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("tsdb").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap()),
        );
        let prometheus = Prometheus { process, addr };
        wait_for("Prometheus ready", Duration::from_secs(60), || {
            prometheus.get("/-/ready").ok().filter(|a| a.status == 200)
        });
        prometheus
    }

    /// `GET path` in HTTP/1.0 (never chunked).
    fn get(&self, path: &str) -> std::io::Result<Answer> {
        plain_get_raw(&self.addr, path, None, Duration::from_secs(30)).and_then(|raw| parse(&raw))
    }

    /// The `data` of a successful API answer.
    pub fn api(&self, path: &str) -> Value {
        let Answer { status, body, .. } =
            self.get(path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path}: status {status}, not JSON ({e}): {body}"));
        assert_eq!(v["status"], "success", "GET {path}: {body}");
        v["data"].clone()
    }

    /// An instant query's result vector.
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let encoded: String = expr
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let data = self.api(&format!("/api/v1/query?query={encoded}"));
        assert_eq!(data["resultType"], "vector", "{expr}");
        data["result"].as_array().cloned().unwrap_or_default()
    }
}
