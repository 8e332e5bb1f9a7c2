//! The host a run measured: its kernel, distribution and name, for the report (a result is only
//! comparable with results of the same kernel and QEMU).

use std::io::Read;
use std::path::Path;

use serde::Serialize;

/// What `report.json` says about the host (`host`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostInfo {
    /// `uname -r`.
    pub kernel: Option<String>,
    /// `PRETTY_NAME` of `/etc/os-release`.
    pub os: Option<String>,
    pub hostname: Option<String>,
}

/// These files are a line or a few dozen; anything longer is not what we expect.
const MAX_FILE_BYTES: u64 = 16 * 1024;

impl HostInfo {
    /// The running host's facts; what cannot be read is `None`.
    pub fn current() -> HostInfo {
        HostInfo {
            kernel: read_small("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()),
            os: read_small("/etc/os-release").and_then(|s| os_release_pretty_name(&s)),
            hostname: read_small("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()),
        }
    }
}

fn read_small(path: impl AsRef<Path>) -> Option<String> {
    let mut s = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_FILE_BYTES)
        .read_to_string(&mut s)
        .ok()?;
    Some(s).filter(|s| !s.trim().is_empty())
}

/// `PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"` -> `Debian GNU/Linux 12 (bookworm)`.
fn os_release_pretty_name(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_name_from_os_release() {
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n";
        assert_eq!(
            os_release_pretty_name(debian).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(os_release_pretty_name("NAME=x\n"), None);
        let here = HostInfo::current();
        assert!(here.kernel.is_some(), "{here:?}");
    }
}
