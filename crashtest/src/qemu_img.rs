//! `qemu-img`, run the one way kvmio runs it: stdin closed, output captured, a missing binary
//! told apart from a failure.
//!
//! The image creators (the crash test's, the lab's) and the checker all run it. qemu-img says
//! what went wrong only as text ending in `strerror`; the one errno kvmio acts on, ENOSPC (the
//! image directory is full: a finding about the disk, not about the cache mode), is read back
//! from that text here and nowhere else, so callers see an [`io::Error`] like any other.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum QemuImgError {
    #[error(
        "{qemu_img} not found: run deploy/setup.sh (installs qemu-utils) or pass --qemu-img PATH"
    )]
    NotFound { qemu_img: PathBuf },
    #[error("cannot run {qemu_img}")]
    Spawn {
        qemu_img: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("qemu-img {command} failed")]
    Failed {
        command: String,
        /// qemu-img's complaint, as an I/O error (ENOSPC when it says so).
        #[source]
        source: io::Error,
    },
}

/// Runs `qemu_img args...` and returns its output, whatever its exit status.
pub fn output(qemu_img: &Path, args: &[&OsStr]) -> Result<Output, QemuImgError> {
    Command::new(qemu_img)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                QemuImgError::NotFound {
                    qemu_img: qemu_img.to_path_buf(),
                }
            } else {
                QemuImgError::Spawn {
                    qemu_img: qemu_img.to_path_buf(),
                    source,
                }
            }
        })
}

/// Runs `qemu_img args...`; a non-zero exit is [`QemuImgError::Failed`].
pub fn run(qemu_img: &Path, args: &[&OsStr]) -> Result<Output, QemuImgError> {
    let out = output(qemu_img, args)?;
    if out.status.success() {
        return Ok(out);
    }
    Err(QemuImgError::Failed {
        command: args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default(),
        source: stderr_error(&String::from_utf8_lossy(&out.stderr)),
    })
}

/// `qemu-img create -q -f FORMAT PATH SIZE`.
pub fn create(qemu_img: &Path, format: &str, path: &Path, size: &str) -> Result<(), QemuImgError> {
    run(
        qemu_img,
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            format.as_ref(),
            path.as_os_str(),
            size.as_ref(),
        ],
    )
    .map(drop)
}

/// qemu-img's stderr as an I/O error: ENOSPC if it names it, else its text.
fn stderr_error(stderr: &str) -> io::Error {
    let text = stderr.trim();
    if text.contains("No space left on device") {
        io::Error::from_raw_os_error(libc::ENOSPC)
    } else {
        io::Error::other(text.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::out_of_space;

    #[test]
    fn enospc_is_found_in_the_chain_and_in_qemu_img_text() {
        let e = QemuImgError::Failed {
            command: "create".into(),
            source: stderr_error("qemu-img: x.qcow2: Could not write: No space left on device\n"),
        };
        assert!(out_of_space(&e));
        let e = QemuImgError::Failed {
            command: "create".into(),
            source: stderr_error("qemu-img: x.qcow2: Permission denied"),
        };
        assert!(!out_of_space(&e));
        assert_eq!(e.to_string(), "qemu-img create failed");
    }

    #[test]
    fn a_missing_binary_says_what_to_do() {
        let e = create(
            Path::new("/nonexistent/qemu-img"),
            "qcow2",
            Path::new("/x"),
            "1M",
        )
        .unwrap_err();
        assert!(e.to_string().contains("--qemu-img"), "{e}");
    }
}
