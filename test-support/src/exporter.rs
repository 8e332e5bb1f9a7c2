//! The `kvmio-exporter` binary as tests and benches run it: on a free loopback port, its log in
//! a file, ready when it says where it listens.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{spawn_tied, wait_for_every, ChildProcess};

/// Starts `cmd` (the exporter binary, or a wrapper such as `setpriv` that execs it) with
/// `--web.listen-address=127.0.0.1:0` and `args`, `RUST_LOG=info`, stderr to `log`; waits (30 s
/// at most) for its `listening on http(s)://ADDR/metrics` line. Returns it and `ADDR`. The process
/// is tied to the calling thread ([`spawn_tied`]).
///
/// Every exporter a test starts fails a scrape that made a duplicate series (HTTP 500 naming
/// them; `KVMIO_FAIL_ON_DUPLICATE_SERIES=1`, i.e. `--debug.fail-on-duplicate-series`): a
/// duplicate is a bug, never dropped quietly in a test.
pub fn launch_exporter(mut cmd: Command, args: &[String], log: &Path) -> (ChildProcess, String) {
    cmd.arg("--web.listen-address=127.0.0.1:0")
        .args(args)
        .env("RUST_LOG", "info")
        .env("KVMIO_FAIL_ON_DUPLICATE_SERIES", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display())),
        );
    let mut child = spawn_tied(&mut cmd, "kvmio-exporter");
    let addr = wait_for_every(
        "the exporter's 'listening on' line",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            if let Some(status) = child.exited() {
                panic!(
                    "exporter exited: {status}: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            let text = std::fs::read_to_string(log).ok()?;
            // http:// or, with a TLS --web.config.file, https://
            let rest = text.split("listening on http").nth(1)?;
            let rest = rest.strip_prefix("s").unwrap_or(rest).strip_prefix("://")?;
            Some(rest.split("/metrics").next()?.to_owned())
        },
    );
    (child, addr)
}
