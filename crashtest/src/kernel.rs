//! Finding a guest kernel and its modules.
//!
//! Preference order: explicit `--kernel`/`--modules`; the Debian kernel that `deploy/setup.sh`
//! unpacked into the cache; the host's own `/boot/vmlinuz-$(uname -r)` with
//! `/lib/modules/$(uname -r)`, as a real hypervisor host has.

use std::path::{Path, PathBuf};

use crate::paths::cache_dir;

/// A kernel image and the directory of its modules (`.../lib/modules/RELEASE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestKernel {
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("kernel {0} does not exist: pass an existing --kernel, or run deploy/setup.sh to fetch a guest kernel")]
    MissingKernel(PathBuf),
    #[error("module directory {0} does not exist: pass --modules /lib/modules/RELEASE matching the kernel")]
    MissingModules(PathBuf),
    #[error("--kernel needs --modules too (the directory of the modules built for that kernel)")]
    KernelWithoutModules,
    #[error("no guest kernel found (looked in {cache} and /boot/vmlinuz-{release}): run deploy/setup.sh, or pass --kernel and --modules")]
    NotFound { cache: PathBuf, release: String },
}

impl GuestKernel {
    /// Resolves the kernel to boot from the explicit options or the defaults above.
    pub fn locate(
        kernel: Option<&Path>,
        modules: Option<&Path>,
    ) -> Result<GuestKernel, KernelError> {
        match (kernel, modules) {
            (Some(k), Some(m)) => Self::checked(k.to_path_buf(), m.to_path_buf()),
            (Some(_), None) => Err(KernelError::KernelWithoutModules),
            (None, m) => {
                let found = Self::from_cache().or_else(Self::from_host);
                match (found, m) {
                    (Some(mut k), Some(m)) => {
                        k.modules = m.to_path_buf();
                        Self::checked(k.vmlinuz, k.modules)
                    }
                    (Some(k), None) => Ok(k),
                    (None, _) => Err(KernelError::NotFound {
                        cache: cache_dir().join("kernel"),
                        release: host_release(),
                    }),
                }
            }
        }
    }

    fn checked(vmlinuz: PathBuf, modules: PathBuf) -> Result<GuestKernel, KernelError> {
        if !vmlinuz.is_file() {
            return Err(KernelError::MissingKernel(vmlinuz));
        }
        if !modules.is_dir() {
            return Err(KernelError::MissingModules(modules));
        }
        Ok(GuestKernel { vmlinuz, modules })
    }

    /// The kernel `deploy/setup.sh` unpacked: `$cache/kernel/current` names the release.
    fn from_cache() -> Option<GuestKernel> {
        let dir = cache_dir().join("kernel");
        let release = std::fs::read_to_string(dir.join("current")).ok()?;
        let root = dir.join(release.trim());
        let k = GuestKernel {
            vmlinuz: root.join("vmlinuz"),
            modules: root.join("modules"),
        };
        (k.vmlinuz.is_file() && k.modules.is_dir()).then_some(k)
    }

    fn from_host() -> Option<GuestKernel> {
        let release = host_release();
        let k = GuestKernel {
            vmlinuz: PathBuf::from(format!("/boot/vmlinuz-{release}")),
            modules: PathBuf::from(format!("/lib/modules/{release}")),
        };
        // The image must be readable: some distributions make /boot/vmlinuz-* root-only.
        (std::fs::File::open(&k.vmlinuz).is_ok() && k.modules.is_dir()).then_some(k)
    }
}

fn host_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}
