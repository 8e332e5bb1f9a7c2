//! The exporter as end-to-end tests run it: the binary on a free loopback port, `/metrics`
//! fetched over plain HTTP, and the text format parsed into series (kvmio's own output: one
//! sample a line, escaped label values). The launcher, the HTTP client and the parser are
//! `kvmio-test-support`'s, shared with the exporter's own tests and benches.

use std::path::Path;
use std::process::Command;

// `http_get(addr)`: `GET /metrics`, asserting a 200 answer.
pub use kvmio_test_support::metrics::{family, find, parse, scrape as http_get, value, Series};

use crate::{workspace_bin, ChildProcess};

/// Starts the exporter binary on a free loopback port; returns it and its address.
pub fn start_exporter(args: &[String], log: &Path) -> (ChildProcess, String) {
    start_exporter_as(None, args, log)
}

/// [`start_exporter`] as another user (`setpriv` to `user`'s uid, its primary group only), as
/// an operator's unprivileged service runs it.
pub fn start_exporter_as(
    user: Option<(&str, &str)>,
    args: &[String],
    log: &Path,
) -> (ChildProcess, String) {
    let bin = workspace_bin("kvmio-exporter");
    let cmd = match user {
        None => Command::new(bin),
        Some((user, group)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={user}"))
                .arg(format!("--regid={group}"))
                .args(["--clear-groups", "--"])
                .arg(bin);
            c
        }
    };
    kvmio_test_support::launch_exporter(cmd, args, log)
}

/// The whole device under `path` as `findmnt` and sysfs name it (`vda` for a file on
/// `/dev/vda1`), or `None` when its filesystem is not on a block device.
pub fn host_device_of(path: &Path) -> Option<String> {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "SOURCE", "-T"])
        .arg(path)
        .output()
        .expect("findmnt (util-linux)");
    let source = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    if !source.starts_with("/dev/") {
        return None;
    }
    let dev = std::fs::canonicalize(&source).ok()?;
    let name = dev.file_name()?.to_string_lossy().into_owned();
    let sys = std::fs::canonicalize(format!("/sys/class/block/{name}")).ok()?;
    if sys.join("partition").exists() {
        return Some(sys.parent()?.file_name()?.to_string_lossy().into_owned());
    }
    Some(name)
}
