//! Headless Chromium (Debian's `chromium`) on local pages and the terminal captured by tmux, as
//! the report and `kvmio-top` tests see them, and the screenshots the README shows.
//!
//! Every call gets a new empty profile and the flags that keep Chromium off the network (no
//! background networking, component updates, sync or QUIC); it only ever opens `file://` URLs.
//! `KVMIO_SCREENSHOTS=DIR` (`make screenshots`) makes the tests copy their pictures there.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kvmio_test_support::{require, ChildProcess};

/// Chromium's own bound: a page of ours renders in a second or two.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs headless Chromium on `url` with `args`; returns its stdout.
pub fn chromium(args: &[String], url: &str) -> String {
    let bin = require("chromium", "chromium");
    let profile = tempfile::Builder::new()
        .prefix("kvmio-chromium")
        .tempdir()
        .expect("profile dir");
    let out = tempfile::NamedTempFile::new().expect("stdout file");
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(out.reopen().expect("stdout file"))
    .stderr(Stdio::null());
    let mut child = ChildProcess::spawn(&mut cmd);
    let status = child
        .wait_timeout(CHROMIUM_TIMEOUT)
        .unwrap_or_else(|| panic!("chromium {args:?} {url}: no exit within {CHROMIUM_TIMEOUT:?}"));
    assert!(status.success(), "chromium {args:?} {url}: {status}");
    std::fs::read_to_string(out.path()).expect("chromium's stdout")
}

/// The DOM of `file` after Chromium loaded it.
pub fn dump_dom(file: &Path) -> String {
    chromium(&["--dump-dom".into()], &file_url(file))
}

/// A PNG of `file` at `width` x `height` CSS pixels; asserts it was written.
pub fn screenshot(file: &Path, png: &Path, width: u32, height: u32) {
    chromium(
        &[
            format!("--screenshot={}", png.display()),
            format!("--window-size={width},{height}"),
        ],
        &file_url(file),
    );
    let bytes = std::fs::read(png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 5_000,
        "{} is not a screenshot ({} bytes)",
        png.display(),
        bytes.len()
    );
}

/// `file` printed to PDF (the page's print CSS); asserts it was written.
pub fn print_pdf(file: &Path, pdf: &Path) {
    chromium(
        &[
            format!("--print-to-pdf={}", pdf.display()),
            "--no-pdf-header-footer".into(),
        ],
        &file_url(file),
    );
    let bytes = std::fs::read(pdf).unwrap_or_else(|e| panic!("{}: {e}", pdf.display()));
    assert!(
        bytes.starts_with(b"%PDF-"),
        "{} is not a PDF",
        pdf.display()
    );
}

fn file_url(file: &Path) -> String {
    let abs = std::fs::canonicalize(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    format!("file://{}", abs.display())
}

/// Copies `picture` into `$KVMIO_SCREENSHOTS` as `name` when set (`make screenshots`).
pub fn publish(picture: &Path, name: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("KVMIO_SCREENSHOTS")?);
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let dest = dir.join(name);
    std::fs::copy(picture, &dest).unwrap_or_else(|e| panic!("{}: {e}", dest.display()));
    Some(dest)
}
