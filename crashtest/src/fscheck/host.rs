//! The host's tools on a copy of the surviving image: the read-only fsck (`e2fsck -fn`,
//! `xfs_repair -n`) and the loop mount that replays the journal, released on every path.

use super::*;

/// An exit status and the tool's last words (its summary on stdout, else stderr's last line),
/// for the report.
pub(super) fn run_tool(mut cmd: Command) -> Result<(i32, String), FsCheckError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .output()
        .map_err(|source| FsCheckError::Spawn { program, source })?;
    let last = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| bounded(l.as_bytes()))
    };
    let words = last(&out.stdout)
        .or_else(|| last(&out.stderr))
        .unwrap_or_default();
    Ok((out.status.code().unwrap_or(-1), words))
}

/// The read-only consistency check: `e2fsck -fn` (0 = clean) or `xfs_repair -n` (0 = clean).
pub(super) fn fsck(fs: FsKind, path: &Path) -> Result<(bool, String), FsCheckError> {
    let mut cmd = match fs {
        FsKind::Ext4 => {
            let mut c = Command::new("e2fsck");
            c.arg("-fn");
            c
        }
        FsKind::Xfs => {
            let mut c = Command::new("xfs_repair");
            c.args(["-n", "-f"]);
            c
        }
    };
    cmd.arg(path);
    let name = match fs {
        FsKind::Ext4 => "e2fsck -fn",
        FsKind::Xfs => "xfs_repair -n",
    };
    let (code, last) = run_tool(cmd)?;
    Ok((code == 0, format!("{name}: exit {code} ({last})")))
}

/// A loop device attached to kvmio's own copy, and the copy mounted on a private temporary
/// directory: unmounted, detached and removed when dropped, on every path.
#[derive(Debug)]
pub struct LoopMount {
    dev: String,
    dir: Option<tempfile::TempDir>,
    mounted: bool,
}

impl LoopMount {
    /// Attaches `image` (a raw file kvmio made) to a free loop device.
    pub fn attach(image: &Path) -> Result<LoopMount, FsCheckError> {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--nooverlap"])
            .arg(image)
            .output()
            .map_err(|source| FsCheckError::Spawn {
                program: "losetup".into(),
                source,
            })?;
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || !dev.starts_with("/dev/loop") || dev.len() > 64 {
            return Err(FsCheckError::Attach {
                path: image.to_path_buf(),
                stderr: bounded(&out.stderr),
            });
        }
        Ok(LoopMount {
            dev,
            dir: None,
            mounted: false,
        })
    }

    /// Mounts the device read-write (the journal is replayed) on a new directory in `dir`; the
    /// inner `Err` is mount's complaint (the filesystem is then unreadable).
    pub fn mount(&mut self, fs: FsKind, dir: &Path) -> Result<Result<(), String>, FsCheckError> {
        let point = tempfile::Builder::new()
            .prefix(".kvmio-fsck-")
            .tempdir_in(dir)
            .map_err(|source| FsCheckError::MountPoint {
                dir: dir.to_path_buf(),
                source,
            })?;
        let out = Command::new("mount")
            .args(["-t", fs.as_str(), "-o", "rw", &self.dev])
            .arg(point.path())
            .output()
            .map_err(|source| FsCheckError::Spawn {
                program: "mount".into(),
                source,
            })?;
        let code = out.status.code().unwrap_or(-1);
        // mount's first line says what failed ("wrong fs type, bad option, bad superblock...").
        let first = String::from_utf8_lossy(&out.stderr);
        let last = bounded(first.lines().next().unwrap_or_default().as_bytes());
        self.dir = Some(point);
        if code == 0 {
            self.mounted = true;
            Ok(Ok(()))
        } else {
            Ok(Err(format!("mount -t {} failed: {last}", fs.as_str())))
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.dir.as_ref().filter(|_| self.mounted).map(|d| d.path())
    }

    /// Unmounts (lazily if busy) and detaches now.
    pub fn release(mut self) {
        self.release_now();
    }

    fn release_now(&mut self) {
        if self.mounted {
            if let Some(dir) = &self.dir {
                let ok = Command::new("umount")
                    .arg(dir.path())
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    let _ = Command::new("umount").arg("-l").arg(dir.path()).status();
                }
            }
            self.mounted = false;
        }
        if !self.dev.is_empty() {
            let _ = Command::new("losetup").args(["-d", &self.dev]).status();
            self.dev.clear();
        }
        self.dir = None;
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        self.release_now();
    }
}
