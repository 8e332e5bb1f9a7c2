//! Choosing KVM or TCG.
//!
//! `/dev/kvm` existing does not mean KVM works: under broken nested virtualisation a KVM guest
//! hangs at boot (seen on kvmio's CI machines, `shared/lab-notes.md`). `auto` therefore boots the
//! real guest once under KVM with a short deadline and falls back to TCG if it does not call back.
//! The verdict is cached per host kernel, QEMU binary and guest image.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use crate::guest_image::GuestImage;
use crate::vm::{Accel, Vm, VmConfig, VmError};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    Tcg,
    Kvm,
    Auto,
}

impl FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcg" => Ok(AccelChoice::Tcg),
            "kvm" => Ok(AccelChoice::Kvm),
            "auto" => Ok(AccelChoice::Auto),
            _ => Err(format!("unknown accelerator {s:?}: use tcg, kvm or auto")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccelError {
    #[error("--accel kvm needs a readable and writable /dev/kvm: load the kvm module, or use --accel tcg")]
    NoKvm(#[source] std::io::Error),
}

/// How long a KVM guest gets to call back before `auto` calls KVM broken. A working KVM guest
/// is ready in about a second.
const PROBE_DEADLINE: Duration = Duration::from_secs(20);

/// Resolves `choice` to an accelerator, with a human-readable reason.
pub async fn resolve(
    choice: AccelChoice,
    qemu: &Path,
    image: &GuestImage,
    cache_dir: &Path,
) -> Result<(Accel, String), AccelError> {
    match choice {
        AccelChoice::Tcg => Ok((Accel::Tcg, "requested".into())),
        AccelChoice::Kvm => {
            open_kvm().map_err(AccelError::NoKvm)?;
            Ok((Accel::Kvm, "requested".into()))
        }
        AccelChoice::Auto => {
            if let Err(e) = open_kvm() {
                return Ok((Accel::Tcg, format!("/dev/kvm not usable ({e})")));
            }
            let key = format!(
                "{} {} {}",
                nix::sys::utsname::uname()
                    .map(|u| u.release().to_string_lossy().into_owned())
                    .unwrap_or_default(),
                qemu.display(),
                image.id
            );
            let cache_file = cache_dir.join("accel-probe");
            if let Ok(text) = std::fs::read_to_string(&cache_file) {
                if let Some(verdict) = text.strip_prefix(&format!("{key}\n")) {
                    let works = verdict.trim() == "kvm-works";
                    return Ok(if works {
                        (Accel::Kvm, "KVM guest booted (cached probe)".into())
                    } else {
                        (Accel::Tcg, "KVM guest did not boot (cached probe)".into())
                    });
                }
            }
            let outcome = probe_kvm(qemu, image).await;
            let _ = std::fs::create_dir_all(cache_dir);
            let _ = std::fs::write(
                &cache_file,
                format!(
                    "{key}\n{}\n",
                    if outcome.is_ok() {
                        "kvm-works"
                    } else {
                        "kvm-hangs"
                    }
                ),
            );
            Ok(match outcome {
                Ok(()) => (Accel::Kvm, "KVM guest booted (probe)".into()),
                Err(why) => (Accel::Tcg, format!("KVM probe failed: {why}")),
            })
        }
    }
}

fn open_kvm() -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
}

/// Boots the guest under KVM once; `Err` says why it did not call back (first line only: the
/// full console tail is in the debug log).
async fn probe_kvm(qemu: &Path, image: &GuestImage) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("kvmio-probe")
        .tempdir()
        .map_err(|e| format!("no temporary directory: {e}"))?;
    let mut config = VmConfig::new("kvm-probe", image.clone(), dir.path());
    config.qemu = qemu.to_path_buf();
    config.accel = Accel::Kvm;
    config.public_sockets = false;
    let result: Result<(), VmError> = async {
        let mut vm = Vm::launch(config).await?;
        vm.wait_ready(PROBE_DEADLINE).await?;
        Ok(())
    }
    .await;
    result.map_err(|e| {
        tracing::debug!("KVM probe failed, using TCG: {e}");
        e.to_string().lines().next().unwrap_or_default().to_string()
    })
}
