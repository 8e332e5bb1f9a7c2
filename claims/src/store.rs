//! Where the experiment's images live: an ext4 file system on a loop device of its own.
//!
//! The host layer must count only the experiment's IO. On a hypervisor (or this machine, where
//! other work runs) the device under `/tmp` carries everything else too, so its diskstats would
//! drown the figures. A loop device over a sparse file, with ext4 on it, is a block device that
//! only the images use: its diskstats are the host-device layer, the exporter reads them like
//! any other device, and its file system holds the images' host page cache. The loop device is
//! opened with `--direct-io=on` so that the backing file's own page cache (on the real disk)
//! does not sit between the loop device and the disk and count twice.
//!
//! Needs root (losetup, mount). Everything made here is undone on drop, in reverse order, on
//! every path; a loop device or mount kvmio did not make is never touched.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create {path}")]
    Backing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
}

/// A mounted ext4 on a loop device, removed on drop.
#[derive(Debug)]
pub struct Store {
    backing: PathBuf,
    mount: PathBuf,
    loop_dev: Option<String>,
    mounted: bool,
}

fn run(program: &str, args: &[&str]) -> Result<String, StoreError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| StoreError::Spawn {
            program: program.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(StoreError::Failed {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Store {
    /// Makes a `size_mib` store under `dir` (`dir/store.img`, mounted on `dir/store`).
    pub fn create(dir: &Path, size_mib: u64) -> Result<Store, StoreError> {
        let backing = dir.join("store.img");
        let mount = dir.join("store");
        let file = std::fs::File::create(&backing).map_err(|source| StoreError::Backing {
            path: backing.clone(),
            source,
        })?;
        file.set_len(size_mib << 20)
            .map_err(|source| StoreError::Backing {
                path: backing.clone(),
                source,
            })?;
        std::fs::create_dir_all(&mount).map_err(|source| StoreError::Backing {
            path: mount.clone(),
            source,
        })?;
        let mut store = Store {
            backing,
            mount,
            loop_dev: None,
            mounted: false,
        };
        let backing = store.backing.display().to_string();
        let dev = run("losetup", &["--find", "--show", "--direct-io=on", &backing])?;
        store.loop_dev = Some(dev.clone());
        run("mkfs.ext4", &["-q", "-F", "-E", "nodiscard", &dev])?;
        run("mount", &[&dev, &store.mount.display().to_string()])?;
        store.mounted = true;
        Ok(store)
    }

    /// The mount point: images go here.
    pub fn dir(&self) -> &Path {
        &self.mount
    }

    /// The loop device's kernel name (`loop3`), as `/proc/diskstats` names it.
    pub fn device_name(&self) -> &str {
        self.loop_dev
            .as_deref()
            .and_then(|d| d.strip_prefix("/dev/"))
            .unwrap_or("")
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = run("umount", &[&self.mount.display().to_string()]) {
                eprintln!("kvmio-claims: {e}");
            }
        }
        if let Some(dev) = &self.loop_dev {
            if let Err(e) = run("losetup", &["--detach", dev]) {
                eprintln!("kvmio-claims: {e}");
            }
        }
        let _ = std::fs::remove_file(&self.backing);
        let _ = std::fs::remove_dir(&self.mount);
    }
}
