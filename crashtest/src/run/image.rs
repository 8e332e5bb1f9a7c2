//! A fresh disk image per iteration, in kvmio's own directory, and the iteration's files.
//!
//! kvmio never writes to a file it did not create: a raw image is created with
//! `O_CREAT|O_EXCL`, and a qcow2 image's name is reserved the same way before `qemu-img create`
//! (which would overwrite whatever is there) fills it. Under `power*` the image is created on the
//! iteration's FUSE mount (the backing file appears in kvmio's directory) and qcow2 grows its
//! file as QEMU allocates clusters. A qcow2 file served over NBD cannot grow (the export's size
//! is fixed at the handshake), so it is made large enough for every cluster up front.

use std::path::{Path, PathBuf};

use super::RunError;
use crate::qemu_img;
use crate::vm::ImageFormat;

/// Extra bytes a qcow2 file may need beyond the virtual size, for metadata: a file served over
/// NBD is grown this much up front (the export cannot grow), and a file on the FUSE host may
/// grow this far.
pub fn qcow2_headroom(disk: u64) -> u64 {
    disk / 32 + (4 << 20)
}

/// The files of one iteration, named after it; removed when dropped unless kept.
#[derive(Debug)]
pub(super) struct IterFiles {
    pub image: PathBuf,
    pub acks: PathBuf,
    /// Where the console log is copied when kept.
    console: PathBuf,
    keep: bool,
}

impl IterFiles {
    pub fn new(dir: &Path, name: &str, format: ImageFormat, keep: bool) -> IterFiles {
        IterFiles {
            image: dir.join(format!("{name}.{format}")),
            acks: dir.join(format!("{name}.acks")),
            console: dir.join(format!("{name}.console.log")),
            keep,
        }
    }

    /// The image and ack log, if they are kept.
    pub fn kept(&self) -> (Option<PathBuf>, Option<PathBuf>) {
        if self.keep {
            (Some(self.image.clone()), Some(self.acks.clone()))
        } else {
            (None, None)
        }
    }

    /// Keeps a copy of the VM's console log if the files are kept, and removes the log.
    pub fn take_console(&self, console_log: &Path) {
        if self.keep {
            let _ = std::fs::copy(console_log, &self.console);
        }
        let _ = std::fs::remove_file(console_log);
    }
}

impl Drop for IterFiles {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.image);
            let _ = std::fs::remove_file(&self.acks);
        }
    }
}

/// Creates the iteration's image; for qcow2 served over NBD the file is grown so every cluster
/// fits.
pub(super) fn create(
    qemu_img: &Path,
    path: &Path,
    format: ImageFormat,
    disk_bytes: u64,
    over_nbd: bool,
    cell: &str,
) -> Result<(), RunError> {
    let io_err = |source| RunError::CreateImage {
        cell: cell.to_string(),
        path: path.to_path_buf(),
        source,
    };
    // Reserve the name first: qemu-img would overwrite whatever is there.
    let file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err)?;
    match format {
        ImageFormat::Raw => file.set_len(disk_bytes).map_err(io_err)?,
        ImageFormat::Qcow2 => {
            drop(file);
            qemu_img::create(qemu_img, "qcow2", path, &disk_bytes.to_string()).map_err(
                |source| RunError::QemuImg {
                    cell: cell.to_string(),
                    path: path.to_path_buf(),
                    source,
                },
            )?;
            if over_nbd {
                let file = std::fs::File::options()
                    .write(true)
                    .open(path)
                    .map_err(io_err)?;
                let len = file.metadata().map_err(io_err)?.len();
                file.set_len(len.max(disk_bytes + qcow2_headroom(disk_bytes)))
                    .map_err(io_err)?;
            }
        }
    }
    Ok(())
}
