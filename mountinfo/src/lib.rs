//! The host's mount table, `/proc/self/mountinfo` (proc(5)), as kvmio reads it: per line the
//! device, mount point, filesystem type and source, with the kernel's octal escapes (`\040` for
//! a space, `\011`, `\012`, `\134`) decoded.
//!
//! Two readers: kvmio-exporter finds the mount of an anonymous device (btrfs, overlayfs...) to
//! name an image's host device, and kvmio-fusedisk finds its mount points and the stale mounts
//! of killed runs. Callers bound how many lines they read.

use std::path::PathBuf;

/// One mount, the parts kvmio uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `MAJOR:MINOR` of the filesystem's device (`0:23` for an anonymous one).
    pub dev: String,
    /// Mount point (escapes decoded).
    pub mount_point: PathBuf,
    /// Filesystem type (`ext4`, `tmpfs`, `btrfs`, `nfs4`, `fuse.sshfs`).
    pub fstype: String,
    /// Mount source (`/dev/vda1`, `tmpfs`, `server:/export`); empty where the line has none.
    pub source: String,
}

/// One mountinfo line; `None` for a malformed one.
pub fn parse_line(line: &str) -> Option<MountEntry> {
    let mut fields = line.split(' ');
    let dev = fields.nth(2)?;
    // The kernel escapes blanks inside fields, so an empty field is a malformed line (found by
    // the fuzz target host_sysfs_mountinfo: "- " and two blanks gave an empty fstype).
    let mount_point = fields.nth(1).filter(|f| !f.is_empty())?;
    // Optional fields end with a lone "-", then fstype and source.
    let mut rest = fields.skip_while(|f| *f != "-");
    rest.next()?;
    let fstype = rest.next().filter(|f| !f.is_empty())?;
    let source = rest.next().unwrap_or("");
    Some(MountEntry {
        dev: dev.to_owned(),
        mount_point: PathBuf::from(unescape(mount_point)),
        fstype: unescape(fstype),
        source: unescape(source),
    })
}

/// Decodes mountinfo's `\NNN` octal escapes; anything else (a lone or short escape) is kept.
pub fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_and_escapes_decoded() {
        // This machine's /dev/shm line, and a subvolume mount with a space in its path.
        let shm =
            parse_line("40 28 0:23 / /dev/shm rw,nosuid,nodev shared:5 - tmpfs tmpfs rw").unwrap();
        assert_eq!(shm.dev, "0:23");
        assert_eq!(shm.mount_point, PathBuf::from("/dev/shm"));
        assert_eq!(
            (shm.fstype.as_str(), shm.source.as_str()),
            ("tmpfs", "tmpfs")
        );
        let sub =
            parse_line(r"41 28 0:45 /sub /srv/my\040vms rw master:1 - btrfs /dev/vdb rw").unwrap();
        assert_eq!(sub.mount_point, PathBuf::from("/srv/my vms"));
        assert_eq!(sub.source, "/dev/vdb");
        assert_eq!(unescape(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape(r"/x\04"), r"/x\04");
        assert_eq!(unescape(r"\777"), "\u{fffd}");
    }

    #[test]
    fn malformed_lines_are_none() {
        assert_eq!(parse_line(""), None);
        assert_eq!(parse_line("40 28 0:23 / /dev/shm rw - "), None);
        assert_eq!(parse_line("41 28 0:23 /  rw - tmpfs tmpfs rw"), None);
        assert_eq!(parse_line("41 28 0:23 / /x rw tmpfs tmpfs rw"), None);
    }
}
