//! Scratch directories for tests and benches: under the calling crate's `CARGO_TARGET_TMPDIR`
//! (on the target's filesystem, not a small tmpfs `/tmp`), removed when dropped.

use std::path::{Path, PathBuf};

/// A scratch directory under the calling integration test's or bench's `CARGO_TARGET_TMPDIR`,
/// named `PREFIX…` and removed when the returned [`tempfile::TempDir`] is dropped.
///
/// A macro because `CARGO_TARGET_TMPDIR` is set only while the caller's crate is compiled.
#[macro_export]
macro_rules! target_tempdir {
    ($prefix:expr) => {
        $crate::dir::tempdir_in(env!("CARGO_TARGET_TMPDIR"), $prefix)
    };
}

/// A directory `PREFIX…` in `base` (created if missing), removed when dropped.
pub fn tempdir_in(base: impl AsRef<Path>, prefix: &str) -> tempfile::TempDir {
    let base = base.as_ref();
    std::fs::create_dir_all(base).unwrap_or_else(|e| panic!("create {}: {e}", base.display()));
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base)
        .unwrap_or_else(|e| panic!("temporary directory in {}: {e}", base.display()))
}

/// Creates `dir/NAME` for each name (and any missing parents); returns their paths in order.
pub fn subdirs<const N: usize>(dir: &Path, names: [&str; N]) -> [PathBuf; N] {
    names.map(|name| {
        let sub = dir.join(name);
        std::fs::create_dir_all(&sub).unwrap_or_else(|e| panic!("create {}: {e}", sub.display()));
        sub
    })
}
