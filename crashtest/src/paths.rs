//! Where kvmio keeps what it downloads and builds.

use std::path::PathBuf;

/// `$KVMIO_CACHE_DIR`, else `$XDG_CACHE_HOME/kvmio`, else `~/.cache/kvmio` — the same rule as
/// `deploy/setup.sh`, which unpacks the guest kernel there.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KVMIO_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("kvmio");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("kvmio")
}
