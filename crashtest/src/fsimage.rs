//! The disk images of the file workloads: a filesystem made on the host.
//!
//! The guest has busybox but no `mkfs.ext4` or `mkfs.xfs`, so the filesystem is made on the host,
//! once per run and filesystem, into a template: `mkfs` on a fresh raw file in kvmio's own
//! directory (then `qemu-img convert -O qcow2` for qcow2 cells). Each iteration's image is a
//! sparse copy of the template ([`instantiate`]), created with `O_CREAT|O_EXCL` like every image
//! kvmio makes, and synced so that the filesystem is durable before the guest starts (on the
//! volatile hosts of the `power*` faults an unsynced mkfs would be lost at the power failure).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use kvmio_guest::fsworkload::FsKind;

use crate::oracle::Cell;
use crate::qemu_img::{self, QemuImgError};
use crate::vm::ImageFormat;

/// The smallest disk each filesystem accepts here: mkfs.xfs (xfsprogs 6.1) refuses
/// filesystems under 300 MB; ext4 with its 4 MiB journal fits in 16 MiB.
pub fn min_disk_mib(fs: FsKind) -> u64 {
    match fs {
        FsKind::Ext4 => 16,
        FsKind::Xfs => 300,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FsImageError {
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot run {program} (is it installed? deploy/setup.sh installs e2fsprogs and xfsprogs)"
    )]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("{program} failed on {path} ({status}): {stderr}")]
    Mkfs {
        program: String,
        path: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("cannot convert the template {path} to qcow2")]
    Convert {
        path: PathBuf,
        #[source]
        source: QemuImgError,
    },
    #[error("cannot copy the template into {path}")]
    Copy {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The `mkfs` command for `fs` on `path`: 4 KiB blocks, inode tables and journal written now
/// (no lazy init running in the guest during the experiment), no discard of the file.
pub fn mkfs_command(fs: FsKind, path: &Path) -> Command {
    let mut c = match fs {
        FsKind::Ext4 => {
            let mut c = Command::new("mkfs.ext4");
            c.args([
                "-q",
                "-F",
                "-b",
                "4096",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
            ]);
            c
        }
        FsKind::Xfs => {
            let mut c = Command::new("mkfs.xfs");
            c.args(["-q", "-f", "-K"]);
            c
        }
    };
    c.arg(path);
    c
}

/// Makes the template of `fs` on a `disk_bytes` disk in `dir`, in `format`: its path.
pub fn make_template(
    qemu_img: &Path,
    dir: &Path,
    fs: FsKind,
    format: ImageFormat,
    disk_bytes: u64,
) -> Result<PathBuf, FsImageError> {
    let raw = dir.join(format!("template-{}.raw", fs.as_str()));
    if !raw.exists() {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&raw)
            .and_then(|f| f.set_len(disk_bytes).map(|()| f))
            .map_err(|source| FsImageError::Create {
                path: raw.clone(),
                source,
            })?;
        drop(file);
        let mut cmd = mkfs_command(fs, &raw);
        let program = cmd.get_program().to_string_lossy().into_owned();
        let out = cmd.output().map_err(|source| FsImageError::Spawn {
            program: program.clone(),
            source,
        })?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&raw);
            return Err(FsImageError::Mkfs {
                program,
                path: raw,
                status: out.status,
                stderr: bounded(&out.stderr),
            });
        }
    }
    match format {
        ImageFormat::Raw => Ok(raw),
        ImageFormat::Qcow2 => {
            let qcow2 = dir.join(format!("template-{}.qcow2", fs.as_str()));
            if !qcow2.exists() {
                qemu_img::run(
                    qemu_img,
                    &[
                        "convert".as_ref(),
                        "-O".as_ref(),
                        "qcow2".as_ref(),
                        raw.as_os_str(),
                        qcow2.as_os_str(),
                    ],
                )
                .map_err(|source| FsImageError::Convert {
                    path: raw.clone(),
                    source,
                })?;
            }
            Ok(qcow2)
        }
    }
}

/// The run's templates, made on first use (one per filesystem and format), in kvmio's image
/// directory; iterations running in parallel wait for the one being made.
#[derive(Debug, Default)]
pub struct Templates {
    made: std::sync::Mutex<std::collections::BTreeMap<(FsKind, ImageFormat), PathBuf>>,
}

impl Templates {
    /// Creates the image of `cell` at `path` (which must not exist): a copy of the template of
    /// `fs` in the cell's format for `disk_bytes` disks (made in `dir` on first use, while
    /// parallel iterations wait); a qcow2 file served over NBD
    /// is grown up front, as [`crate::run::qcow2_headroom`] says, since the export cannot grow.
    pub fn instantiate(
        &self,
        qemu_img: &Path,
        dir: &Path,
        path: &Path,
        fs: FsKind,
        cell: Cell,
        disk_bytes: u64,
    ) -> Result<(), FsImageError> {
        let template = {
            let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
            match made.get(&(fs, cell.format)) {
                Some(p) => p.clone(),
                None => {
                    let p = make_template(qemu_img, dir, fs, cell.format, disk_bytes)?;
                    made.insert((fs, cell.format), p.clone());
                    p
                }
            }
        };
        let min_len = if cell.format == ImageFormat::Qcow2 && cell.fault.over_nbd() {
            disk_bytes + crate::run::qcow2_headroom(disk_bytes)
        } else {
            0
        };
        instantiate(&template, path, min_len)
    }
}

/// A tool's stderr, at most 1 KiB of it, for an error message.
pub fn bounded(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(1024)]);
    s.trim().replace('\n', "; ")
}

/// Copies `template` into the new file `path` (which must not exist), leaving zero blocks as
/// holes, at least `min_len` long, synced.
pub fn instantiate(template: &Path, path: &Path, min_len: u64) -> Result<(), FsImageError> {
    let copy_err = |source| FsImageError::Copy {
        path: path.to_path_buf(),
        source,
    };
    let mut src = File::open(template).map_err(copy_err)?;
    let len = src.metadata().map_err(copy_err)?.len();
    let mut dst = File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(copy_err)?;
    dst.set_len(len.max(min_len)).map_err(copy_err)?;
    sparse_copy(&mut src, &mut dst).map_err(copy_err)?;
    dst.sync_all().map_err(copy_err)
}

/// Copies every non-zero 64 KiB block of `src` to the same offset of `dst`.
pub fn sparse_copy(src: &mut File, dst: &mut File) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    let mut offset = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match src.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            return Ok(());
        }
        if buf[..n].iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(offset))?;
            dst.write_all(&buf[..n])?;
        }
        offset += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real mkfs.ext4: the template is an ext4 filesystem (its superblock magic at 1080),
    /// made once, and each copy equals it byte for byte while staying sparse.
    #[test]
    fn an_ext4_template_is_made_once_and_copied_sparsely() {
        let dir = tempfile::tempdir().unwrap();
        let make = || {
            make_template(
                Path::new("qemu-img"),
                dir.path(),
                FsKind::Ext4,
                ImageFormat::Raw,
                16 << 20,
            )
            .unwrap()
        };
        let t = make();
        let bytes = std::fs::read(&t).unwrap();
        assert_eq!(&bytes[1080..1082], &[0x53, 0xef], "ext4 superblock magic");
        let modified = std::fs::metadata(&t).unwrap().modified().unwrap();
        let again = make();
        assert_eq!(again, t);
        assert_eq!(std::fs::metadata(&t).unwrap().modified().unwrap(), modified);

        let copy = dir.path().join("i1.raw");
        instantiate(&t, &copy, 0).unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), bytes);
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&copy).unwrap().blocks() * 512;
        assert!(blocks < bytes.len() as u64 / 2, "{blocks} bytes allocated");
        // Never over an existing file.
        assert!(matches!(
            instantiate(&t, &copy, 0),
            Err(FsImageError::Copy { .. })
        ));
    }
}
