//! The QEMU process of a libvirt domain, for what only the process tells
//! (`kvmio_qemu_process_*_bytes_total` from `/proc/PID/io`). libvirt's API does not give the
//! PID, but it starts every QEMU with `-uuid <domain uuid>`: the process whose command line has
//! that pair is the domain's. `/proc/PID/cmdline` is readable by everyone; one scan finds all
//! the domains asked for, and callers cache the answer per domain run (libvirt's domain id).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// At most this many bytes of a command line are read (libvirt's QEMU command lines are a few
/// KiB; `-uuid` comes early).
const MAX_CMDLINE_BYTES: u64 = 256 * 1024;

/// At most this many processes are looked at in one scan.
const MAX_PROCESSES: usize = 1 << 20;

/// PIDs of the processes whose command line holds `-uuid UUID`, for each of `uuids` found.
pub fn find_by_uuid(procfs: &Path, uuids: &[&str]) -> HashMap<String, u32> {
    let mut found = HashMap::new();
    if uuids.is_empty() {
        return found;
    }
    let Ok(dir) = std::fs::read_dir(procfs) else {
        return found;
    };
    let mut buf = Vec::new();
    for entry in dir.flatten().take(MAX_PROCESSES) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        buf.clear();
        let Ok(f) = std::fs::File::open(entry.path().join("cmdline")) else {
            continue;
        };
        if f.take(MAX_CMDLINE_BYTES).read_to_end(&mut buf).is_err() {
            continue;
        }
        let mut args = buf.split(|&b| b == 0);
        while let Some(arg) = args.next() {
            if arg == b"-uuid" {
                if let Some(value) = args.next() {
                    if let Some(u) = uuids.iter().find(|u| u.as_bytes() == value) {
                        found.entry((*u).to_owned()).or_insert(pid);
                    }
                }
                break;
            }
        }
        if found.len() == uuids.len() {
            break;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_process_with_the_uuid() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for (pid, cmd) in [
            (
                "10",
                "/usr/bin/qemu-system-x86_64\0-name\0guest=a\0-uuid\0aaaa-1\0-m\0x\0",
            ),
            ("11", "/usr/bin/qemu-system-x86_64\0-uuid\0bbbb-2\0"),
            ("12", "bash\0-c\0echo -uuid aaaa-1\0"),
        ] {
            std::fs::create_dir(p.join(pid)).unwrap();
            std::fs::write(p.join(pid).join("cmdline"), cmd).unwrap();
        }
        std::fs::create_dir(p.join("self")).unwrap();
        let found = find_by_uuid(p, &["aaaa-1", "bbbb-2", "cccc-3"]);
        assert_eq!(found.get("aaaa-1"), Some(&10));
        assert_eq!(found.get("bbbb-2"), Some(&11));
        assert_eq!(found.len(), 2);
    }
}
