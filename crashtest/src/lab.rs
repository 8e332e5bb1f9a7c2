//! `kvmio-crashtest lab`: N small VMs with a steady IO workload, for the exporter's demo and
//! end-to-end tests.
//!
//! VM `lab-K` gets two disks, a qcow2 and a raw image (so the exporter shows format and
//! protocol nodes apart), both under the cache mode chosen for it, and serves
//! `RUN_DIR/lab-K.qmp` and `RUN_DIR/lab-K.qga` for outside clients. When all are ready the lab
//! writes `RUN_DIR/lab.json` describing them. Stopping removes the sockets, the disk images and
//! the manifest; console logs stay for inspection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kvmio_qemu::CacheMode;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::guest_image::GuestImage;
use crate::qemu_img::{self, QemuImgError};
use crate::vm::{Accel, Disk, DiskSource, ImageFormat, Vm, VmConfig, VmError};

/// What to start.
#[derive(Debug, Clone)]
pub struct LabOptions {
    pub vms: usize,
    pub run_dir: PathBuf,
    /// Cache modes handed to the VMs in turn: `[none, unsafe]` gives lab-1 none, lab-2 unsafe,
    /// lab-3 none, ...
    pub caches: Vec<CacheMode>,
    pub accel: Accel,
    pub qemu: PathBuf,
    pub qemu_img: PathBuf,
    pub image: GuestImage,
    pub memory_mib: u32,
    pub disk_size_mib: u64,
    pub ready_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("--vms must be at least 1")]
    NoVms,
    #[error("cannot create disk image {path}")]
    CreateDisk {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create disk image {path}")]
    QemuImg {
        path: PathBuf,
        #[source]
        source: QemuImgError,
    },
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("cannot write {path}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `RUN_DIR/lab.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub accel: String,
    pub vms: Vec<ManifestVm>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ManifestVm {
    pub name: String,
    pub pid: Option<u32>,
    pub qmp: PathBuf,
    pub qga: PathBuf,
    pub console: PathBuf,
    pub cache: CacheMode,
    pub disks: Vec<ManifestDisk>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ManifestDisk {
    pub device: String,
    pub image: PathBuf,
    pub format: ImageFormat,
    pub cache: CacheMode,
}

/// A running lab. Dropping it kills the VMs and removes the files it created.
#[derive(Debug)]
pub struct Lab {
    vms: Vec<Vm>,
    created: Vec<PathBuf>,
    manifest: Manifest,
    manifest_path: PathBuf,
}

impl Lab {
    /// Creates the disks, boots every VM at once and waits until each guest has called back.
    pub async fn start(opts: LabOptions) -> Result<Lab, LabError> {
        if opts.vms == 0 {
            return Err(LabError::NoVms);
        }
        let caches = if opts.caches.is_empty() {
            vec![CacheMode::None]
        } else {
            opts.caches.clone()
        };
        let mut lab = Lab {
            vms: Vec::new(),
            created: Vec::new(),
            manifest: Manifest {
                accel: opts.accel.as_str().to_string(),
                vms: Vec::new(),
            },
            manifest_path: opts.run_dir.join("lab.json"),
        };
        let mut configs = Vec::new();
        for k in 1..=opts.vms {
            let name = format!("lab-{k}");
            let cache = caches[(k - 1) % caches.len()];
            let mut config = VmConfig::new(&name, opts.image.clone(), &opts.run_dir);
            config.qemu = opts.qemu.clone();
            config.accel = opts.accel;
            config.memory_mib = opts.memory_mib;
            config.role = "lab".into();
            for (i, format) in [ImageFormat::Qcow2, ImageFormat::Raw]
                .into_iter()
                .enumerate()
            {
                let path = opts.run_dir.join(format!("{name}-disk{i}.{format}"));
                // Before the VM exists the run dir may be unwritable: the launcher checks it,
                // but disks come first, so check here with the same error.
                create_disk(
                    &opts.qemu_img,
                    &path,
                    format,
                    opts.disk_size_mib,
                    &opts.run_dir,
                )?;
                lab.created.push(path.clone());
                config.disks.push(Disk {
                    source: DiskSource::File { path, format },
                    cache,
                });
            }
            configs.push(config);
        }

        let mut set = JoinSet::new();
        for (idx, config) in configs.into_iter().enumerate() {
            let timeout = opts.ready_timeout;
            set.spawn(async move {
                let mut vm = Vm::launch(config).await?;
                vm.wait_ready(timeout).await?;
                Ok::<_, VmError>((idx, vm))
            });
        }
        let mut booted = Vec::new();
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(Ok(pair)) => booted.push(pair),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                    // Stop waiting for the others: dropping the set kills them.
                    set.abort_all();
                }
                Err(e) if e.is_cancelled() => {}
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        if let Some(e) = first_err {
            return Err(e.into());
        }
        booted.sort_by_key(|(i, _)| *i);
        lab.vms = booted.into_iter().map(|(_, vm)| vm).collect();
        lab.manifest.vms = lab.vms.iter().map(manifest_vm).collect();
        let json = serde_json::to_vec_pretty(&lab.manifest).expect("manifest serialises");
        std::fs::write(&lab.manifest_path, json).map_err(|source| LabError::Manifest {
            path: lab.manifest_path.clone(),
            source,
        })?;
        lab.created.push(lab.manifest_path.clone());
        Ok(lab)
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn vms_mut(&mut self) -> &mut [Vm] {
        &mut self.vms
    }

    /// VMs whose QEMU exited since the last call: (name, exit status, console tail). Their
    /// sockets are already removed.
    pub fn reap_exited(&mut self) -> Vec<(String, String, String)> {
        let mut gone = Vec::new();
        for vm in &mut self.vms {
            if vm.pid().is_none() {
                continue;
            }
            if let Some(status) = vm.try_wait() {
                gone.push((vm.name().to_string(), status, vm.console_tail(10)));
            }
        }
        gone
    }

    /// Number of VMs whose QEMU still runs.
    pub fn running(&self) -> usize {
        self.vms.iter().filter(|vm| vm.pid().is_some()).count()
    }

    /// Asks every QEMU to quit cleanly (falling back to SIGKILL) and removes the lab's files.
    pub async fn stop(mut self) {
        let mut set = JoinSet::new();
        for mut vm in std::mem::take(&mut self.vms) {
            set.spawn(async move {
                vm.quit(Duration::from_secs(5)).await;
            });
        }
        while set.join_next().await.is_some() {}
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for vm in &mut self.vms {
            vm.kill();
        }
        for path in &self.created {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn manifest_vm(vm: &Vm) -> ManifestVm {
    let c = vm.config();
    ManifestVm {
        name: c.name.clone(),
        pid: vm.pid(),
        qmp: c.qmp_socket(),
        qga: c.qga_socket(),
        console: c.console_log(),
        cache: c.disks.first().map(|d| d.cache).unwrap_or(CacheMode::None),
        disks: c
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let (image, format) = match &d.source {
                    DiskSource::File { path, format } => (path.clone(), *format),
                    DiskSource::Nbd { socket, format } => (socket.clone(), *format),
                };
                ManifestDisk {
                    device: format!("virtio-disk{i}"),
                    image,
                    format,
                    cache: d.cache,
                }
            })
            .collect(),
    }
}

/// Creates a sparse image of `size_mib`: raw by truncation, qcow2 with `qemu-img create`. The
/// file is created here first, so an unwritable run dir is reported as such for both formats.
pub fn create_disk(
    qemu_img: &Path,
    path: &Path,
    format: ImageFormat,
    size_mib: u64,
    run_dir: &Path,
) -> Result<(), LabError> {
    let run_dir_err = |source| {
        LabError::Vm(VmError::RunDir {
            dir: run_dir.to_path_buf(),
            source,
        })
    };
    std::fs::create_dir_all(run_dir).map_err(run_dir_err)?;
    let file = std::fs::File::create(path).map_err(run_dir_err)?;
    match format {
        ImageFormat::Raw => file
            .set_len(size_mib << 20)
            .map_err(|source| LabError::CreateDisk {
                path: path.to_path_buf(),
                source,
            }),
        ImageFormat::Qcow2 => qemu_img::create(qemu_img, "qcow2", path, &format!("{size_mib}M"))
            .map_err(|source| LabError::QemuImg {
                path: path.to_path_buf(),
                source,
            }),
    }
}
