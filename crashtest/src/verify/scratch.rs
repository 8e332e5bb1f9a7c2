//! The qcow2 side of verification: `qemu-img check` of the surviving image and its conversion
//! into a raw scratch file (what QEMU's qcow2 driver would show a rebooted guest).

use super::*;

/// A scratch file removed on drop.
#[derive(Debug)]
pub struct Scratch(tempfile::TempPath);

impl Scratch {
    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn into_temp_path(self) -> tempfile::TempPath {
        self.0
    }
}

/// `qemu-img convert -O raw` into a new sparse scratch file. The inner `Err` is qemu-img's
/// complaint about the image (which then counts as unreadable).
pub(crate) fn convert_to_raw(
    qemu_img: &Path,
    image: &Path,
    dir: &Path,
) -> Result<Result<Scratch, String>, VerifyError> {
    let scratch_err = |source: io::Error| {
        if crate::out_of_space(&source) {
            VerifyError::NoSpace {
                dir: dir.to_path_buf(),
                source,
            }
        } else {
            VerifyError::Scratch {
                dir: dir.to_path_buf(),
                source,
            }
        }
    };
    let scratch = tempfile::Builder::new()
        .prefix(".kvmio-verify-")
        .suffix(".raw")
        .tempfile_in(dir)
        .map_err(scratch_err)?
        .into_temp_path();
    let converted = qemu_img::run(
        qemu_img,
        &[
            "convert".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-O".as_ref(),
            "raw".as_ref(),
            image.as_os_str(),
            scratch.as_os_str(),
        ],
    );
    match converted {
        Ok(_) => Ok(Ok(Scratch(scratch))),
        Err(QemuImgError::Failed { source, .. }) if crate::out_of_space(&source) => {
            Err(scratch_err(source))
        }
        Err(QemuImgError::Failed { source, .. }) => Ok(Err(format!("qemu-img convert: {source}"))),
        Err(source) => Err(VerifyError::QemuImg {
            path: image.to_path_buf(),
            source,
        }),
    }
}

/// `qemu-img check` in one line, and its corruptions: leaks are normal after a crash,
/// corruptions are not.
pub(super) fn qemu_img_check(qemu_img: &Path, image: &Path) -> Result<(String, u64), VerifyError> {
    let out = qemu_img::output(
        qemu_img,
        &[
            "check".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "--output=json".as_ref(),
            image.as_os_str(),
        ],
    )
    .map_err(|source| VerifyError::QemuImg {
        path: image.to_path_buf(),
        source,
    })?;
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
    Ok(match parsed {
        Some(j) => {
            let n = |k: &str| j.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
            (
                format!(
                    "corruptions={} leaks={} check-errors={}",
                    n("corruptions"),
                    n("leaks"),
                    n("check-errors")
                ),
                n("corruptions"),
            )
        }
        None => (
            format!(
                "qemu-img check failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            0,
        ),
    })
}
