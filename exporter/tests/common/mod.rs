//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod peer;
pub mod procs;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs one QMP command on the monitor at `socket` (a connection of its own, 30 s per call) and
/// returns its `return` value: what QEMU itself reports, to check the exporter against.
pub fn qmp_execute(
    socket: &Path,
    command: &str,
    arguments: Option<serde_json::Value>,
) -> serde_json::Value {
    use kvmio_qemu::limits::Limits;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let limits = Limits::DEFAULT.with_call_timeout(std::time::Duration::from_secs(30));
        let mut qmp = kvmio_qemu::Qmp::connect(socket, limits)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
        qmp.execute_value(command, arguments)
            .await
            .unwrap_or_else(|e| panic!("{command}: {e}"))
    })
}

/// `exporter/tests/fixtures`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Compares `got` with `tests/golden/NAME` byte for byte and panics with the lines only in one
/// side; with `UPDATE_GOLDEN=1` writes `got` there instead. `test` is the test target that
/// regenerates the file (`golden`, `golden_configs`).
pub fn assert_golden(name: &str, got: &str, test: &str) {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let regenerate = format!("UPDATE_GOLDEN=1 cargo test -p kvmio-exporter --test {test}");
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v != "0") {
        std::fs::write(&golden, got).expect("write golden file");
        eprintln!("updated {}", golden.display());
        return;
    }
    let want = std::fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e}; create it with {regenerate}", golden.display()));
    if got != want {
        panic!(
            "/metrics output differs from {} (- expected, + got); if the change is intended, \
             regenerate with {regenerate}\n{}",
            golden.display(),
            line_diff(&want, got)
        );
    }
}

/// A minimal diff: lines only in one side, in order (the outputs are sorted, so this is
/// readable).
fn line_diff(want: &str, got: &str) -> String {
    let w: std::collections::BTreeSet<&str> = want.lines().collect();
    let g: std::collections::BTreeSet<&str> = got.lines().collect();
    let mut out = String::new();
    for l in want.lines().filter(|l| !g.contains(l)) {
        out.push_str(&format!("- {l}\n"));
    }
    for l in got.lines().filter(|l| !w.contains(l)) {
        out.push_str(&format!("+ {l}\n"));
    }
    if out.is_empty() {
        out.push_str("(same lines, different order or duplicates)\n");
    }
    out
}

/// Runs `promtool check metrics` on `text`; panics with promtool's findings if it objects, and
/// fails (never skips) when promtool is missing.
pub fn promtool_check(text: &str, what: &str) {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("promtool"))
                    .find(|p| p.is_file())
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "promtool not found (needed to validate the /metrics output): run deploy/setup.sh \
                 as root, it installs the prometheus package that ships promtool"
            )
        });
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("wait for promtool");
    assert!(
        out.status.success(),
        "promtool check metrics rejects the {what} output:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
