//! The mount table: whether a path is a mount point, and kvmio-fusedisk mounts left behind.
//!
//! A run that is SIGKILLed cannot unmount: its mount stays, and every access to it fails with
//! `ENOTCONN` ("Transport endpoint is not connected"). kvmio mounts on fresh directories, so it
//! never reuses one; [`stale_mounts`] finds them so that a run can say so.

use std::path::{Path, PathBuf};

use kvmio_mountinfo::MountEntry;

use crate::SUBTYPE;

/// Mount table lines read at most: the table is the kernel's, but bounded all the same.
const MAX_MOUNTS: usize = 100_000;

/// Every mount, from `/proc/self/mountinfo`.
fn mounts() -> Vec<MountEntry> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .take(MAX_MOUNTS)
        .filter_map(kvmio_mountinfo::parse_line)
        .collect()
}

/// Whether `path` is a mount point (of any filesystem).
pub fn is_mount_point(path: &Path) -> bool {
    // A stale FUSE mount cannot be canonicalized (ENOTCONN): compare its parent's canonical
    // path joined with its name.
    let canonical = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map(|p| p.join(name))
            .unwrap_or_else(|_| path.to_path_buf()),
        _ => path.to_path_buf(),
    };
    mounts().iter().any(|m| m.mount_point == canonical)
}

/// kvmio-fusedisk mounts whose filesystem is gone (their run was killed): each must be removed
/// with `umount -l PATH`. Live mounts of other runs are not listed.
pub fn stale_mounts() -> Vec<PathBuf> {
    mounts()
        .into_iter()
        .filter(|m| m.fstype.starts_with("fuse") && m.source == SUBTYPE)
        .map(|m| m.mount_point)
        .filter(
            |p| matches!(std::fs::metadata(p), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN)),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_found() {
        assert!(is_mount_point(Path::new("/proc")));
        assert!(!is_mount_point(
            &std::env::temp_dir().join("kvmio-not-a-mount")
        ));
    }
}
