//! The mount table: whether a path is a mount point, and kvmio-fusedisk mounts left behind.
//!
//! A run that is SIGKILLed cannot unmount: its mount stays, and every access to it fails with
//! `ENOTCONN` ("Transport endpoint is not connected"). kvmio mounts on fresh directories, so it
//! never reuses one; [`stale_mounts`] finds them so that a run can say so.

use std::path::{Path, PathBuf};

use crate::SUBTYPE;

/// Mount table lines read at most: the table is the kernel's, but bounded all the same.
const MAX_MOUNTS: usize = 100_000;

/// (mount point, filesystem type, source) of every mount, from `/proc/self/mountinfo`.
fn mounts() -> Vec<(PathBuf, String, String)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .take(MAX_MOUNTS)
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let source = right.next()?;
            Some((
                PathBuf::from(unescape(point)),
                fstype.to_string(),
                unescape(source),
            ))
        })
        .collect()
}

/// The mount table's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
    mounts().iter().any(|(p, _, _)| *p == canonical)
}

/// kvmio-fusedisk mounts whose filesystem is gone (their run was killed): each must be removed
/// with `umount -l PATH`. Live mounts of other runs are not listed.
pub fn stale_mounts() -> Vec<PathBuf> {
    mounts()
        .into_iter()
        .filter(|(_, fstype, source)| fstype.starts_with("fuse") && source == SUBTYPE)
        .map(|(p, _, _)| p)
        .filter(
            |p| matches!(std::fs::metadata(p), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN)),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_found_and_escapes_read() {
        assert!(is_mount_point(Path::new("/proc")));
        assert!(!is_mount_point(
            &std::env::temp_dir().join("kvmio-not-a-mount")
        ));
        assert_eq!(unescape(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape(r"/x\04"), r"/x\04");
    }
}
