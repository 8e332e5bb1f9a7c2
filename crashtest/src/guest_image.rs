//! `kvmio-crashtest guest build`: a kernel + initramfs that boots in seconds under TCG.
//!
//! The initramfs holds busybox, exactly the kernel modules the guest needs (dependencies
//! resolved, see [`crate::modules`]), the real qemu-guest-agent with the shared libraries
//! `ldd` reports, and the `kvmio-guest` program. Its `/init` mounts the pseudo filesystems, loads
//! the modules, starts qemu-ga on its virtio-serial port and hands over to `kvmio-guest boot`,
//! which calls the host back when ready.
//!
//! Images are cached under `$cache/guests/<sha256 of every input>/`: a second build with the
//! same inputs only re-hashes them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::cpio::CpioWriter;
use crate::kernel::GuestKernel;
use crate::modules::{self, ModuleError};

/// Bump when the layout of the initramfs changes, so old cache entries are not reused.
const FORMAT_VERSION: &str = "kvmio-guest-image-1";

/// The guest's `/init`. Plain busybox sh: readable, and the console log shows each step.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/sbin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run/qga /tmp
while read -r m; do
    insmod "/lib/modules/kvmio/$m.ko" || echo "kvmio-init: cannot load module $m"
done < /etc/kvmio/modules
if qga_port=$(/bin/kvmio-guest port org.qemu.guest_agent.0); then
    /usr/bin/qemu-ga -m virtio-serial -p "$qga_port" -d -t /run/qga -f /run/qemu-ga.pid \
        || echo "kvmio-init: qemu-ga did not start"
else
    echo "kvmio-init: no guest agent port; running without qemu-ga"
fi
/bin/kvmio-guest boot
echo "kvmio-init: kvmio-guest exited with status $?; powering off"
poweroff -f
"#;

/// Where the inputs of a guest image come from.
#[derive(Debug, Clone)]
pub struct GuestInputs {
    pub kernel: GuestKernel,
    pub busybox: PathBuf,
    pub qemu_ga: PathBuf,
    pub guest_program: PathBuf,
}

/// A built guest: boot it with `-kernel vmlinuz -initrd initramfs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
    /// The cache key (hex sha256 of the inputs).
    pub id: String,
    /// Whether this call built it (false: found in the cache).
    pub built: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{what} not found at {path}: {hint}")]
    MissingInput {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the guest image into {dir}")]
    Write {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run ldd on {path}")]
    RunLdd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// ldd ran and said no (its own words in `detail`).
    #[error("ldd failed on {path}: {detail}")]
    Ldd { path: PathBuf, detail: String },
    #[error(transparent)]
    Module(#[from] ModuleError),
}

impl GuestInputs {
    /// The usual inputs: busybox and qemu-ga from the host's packages, `kvmio-guest` built
    /// beside the running binary (or `$KVMIO_GUEST_BIN`).
    pub fn discover(kernel: GuestKernel, guest_program: Option<&Path>) -> Result<Self, BuildError> {
        let guest_program = match guest_program {
            Some(p) => p.to_path_buf(),
            None => default_guest_program(),
        };
        let inputs = GuestInputs {
            kernel,
            busybox: first_existing(&["/bin/busybox", "/usr/bin/busybox"])
                .unwrap_or_else(|| PathBuf::from("/bin/busybox")),
            qemu_ga: first_existing(&["/usr/sbin/qemu-ga", "/usr/bin/qemu-ga"])
                .unwrap_or_else(|| PathBuf::from("/usr/sbin/qemu-ga")),
            guest_program,
        };
        inputs.check()?;
        Ok(inputs)
    }

    fn check(&self) -> Result<(), BuildError> {
        let missing = |what, path: &Path, hint| BuildError::MissingInput {
            what,
            path: path.to_path_buf(),
            hint,
        };
        if !self.busybox.is_file() {
            return Err(missing(
                "busybox",
                &self.busybox,
                "run deploy/setup.sh (installs busybox-static)",
            ));
        }
        if !self.qemu_ga.is_file() {
            return Err(missing(
                "qemu-ga",
                &self.qemu_ga,
                "run deploy/setup.sh (installs qemu-guest-agent)",
            ));
        }
        if !self.guest_program.is_file() {
            return Err(missing(
                "the kvmio-guest program",
                &self.guest_program,
                "build it with `cargo build --workspace`, or pass --guest-bin / set KVMIO_GUEST_BIN",
            ));
        }
        if !self.kernel.vmlinuz.is_file() {
            return Err(missing(
                "the guest kernel",
                &self.kernel.vmlinuz,
                "run deploy/setup.sh or pass --kernel",
            ));
        }
        Ok(())
    }
}

fn first_existing(paths: &[&str]) -> Option<PathBuf> {
    paths.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// `$KVMIO_GUEST_BIN`, else the `kvmio-guest` that goes with the current executable
/// ([`guest_program_for`]).
pub fn default_guest_program() -> PathBuf {
    if let Some(p) = std::env::var_os("KVMIO_GUEST_BIN") {
        return PathBuf::from(p);
    }
    guest_program_for(&std::env::current_exe().unwrap_or_default())
}

/// The `kvmio-guest` that goes with the executable `exe`: beside it (cargo puts all of a
/// workspace's binaries in one directory; test binaries live one level down, in `deps/`), else
/// in `../lib/kvmio/` (the Debian package's layout, `/usr/bin` and `/usr/lib/kvmio`: the guest
/// program is no command for users). When neither exists, the path beside `exe` (for the error).
pub fn guest_program_for(exe: &Path) -> PathBuf {
    let dir = exe.parent().unwrap_or(Path::new("."));
    let beside = dir.join("kvmio-guest");
    let mut candidates = vec![beside.clone()];
    if dir.file_name().is_some_and(|n| n == "deps") {
        candidates.push(dir.parent().unwrap_or(dir).join("kvmio-guest"));
    }
    if let Some(prefix) = dir.parent() {
        candidates.push(prefix.join("lib/kvmio/kvmio-guest"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or(beside)
}

/// Files of the image, by absolute guest path.
struct Contents {
    files: BTreeMap<String, (u32, Vec<u8>)>,
}

impl Contents {
    fn add_file(&mut self, guest_path: &str, mode: u32, data: Vec<u8>) {
        self.files.insert(guest_path.to_string(), (mode, data));
    }

    /// Adds an executable and every shared library `ldd` says it loads, at the same paths.
    fn add_program(&mut self, host: &Path, guest_path: &str) -> Result<(), BuildError> {
        self.add_file(guest_path, 0o755, read(host)?);
        for lib in shared_libraries(host)? {
            let key = lib.to_string_lossy().into_owned();
            if !self.files.contains_key(&key) {
                let data = read(&lib)?;
                self.add_file(&key, 0o755, data);
            }
        }
        Ok(())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|source| BuildError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The shared objects `ldd` lists for `path`, including the dynamic loader; none for a static
/// binary.
fn shared_libraries(path: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let out = Command::new("ldd")
        .arg(path)
        .output()
        .map_err(|source| BuildError::RunLdd {
            path: path.to_path_buf(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic executable") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(BuildError::Ldd {
            path: path.to_path_buf(),
            detail: err.trim().to_string(),
        });
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            return Err(BuildError::Ldd {
                path: path.to_path_buf(),
                detail: format!("missing library: {line}"),
            });
        }
        let candidate = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let file = candidate.split_whitespace().next().unwrap_or("");
        if file.starts_with('/') {
            libs.push(PathBuf::from(file));
        }
    }
    Ok(libs)
}

/// Builds (or finds in `cache_dir`) the guest image for `inputs`.
pub fn build(inputs: &GuestInputs, cache_dir: &Path) -> Result<GuestImage, BuildError> {
    inputs.check()?;
    let mut contents = Contents {
        files: BTreeMap::new(),
    };
    contents.add_file("/init", 0o755, INIT.as_bytes().to_vec());
    contents.add_program(&inputs.busybox, "/bin/busybox")?;
    contents.add_program(&inputs.qemu_ga, "/usr/bin/qemu-ga")?;
    contents.add_program(&inputs.guest_program, "/bin/kvmio-guest")?;
    let mods = modules::resolve_with_optional(
        &inputs.kernel.modules,
        modules::REQUIRED,
        modules::OPTIONAL,
    )?;
    let order: String = mods.iter().map(|m| format!("{}\n", m.name)).collect();
    contents.add_file("/etc/kvmio/modules", 0o644, order.into_bytes());
    for m in mods {
        contents.add_file(
            &format!("/lib/modules/kvmio/{}.ko", m.name),
            0o644,
            m.object,
        );
    }
    let vmlinuz = read(&inputs.kernel.vmlinuz)?;

    let mut hasher = Sha256::new();
    hasher.update(FORMAT_VERSION);
    hasher.update(Sha256::digest(&vmlinuz));
    for (path, (mode, data)) in &contents.files {
        hasher.update(path.as_bytes());
        hasher.update(mode.to_le_bytes());
        hasher.update((data.len() as u64).to_le_bytes());
        hasher.update(data);
    }
    let id = hex::encode(hasher.finalize());
    let dir = cache_dir.join("guests").join(&id[..16]);
    let image = GuestImage {
        vmlinuz: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.cpio"),
        id,
        built: false,
    };
    if image.vmlinuz.is_file() && image.initramfs.is_file() {
        return Ok(image);
    }

    let write_err = |source| BuildError::Write {
        dir: dir.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(write_err)?;
    // Write under temporary names and rename, so a crash or a concurrent build never leaves a
    // half-written image that a later call would take from the cache.
    let tmp = tempfile::Builder::new()
        .prefix(".initramfs")
        .tempfile_in(&dir)
        .map_err(write_err)?;
    let mut w = CpioWriter::new(std::io::BufWriter::new(tmp.as_file()));
    write_archive(&mut w, &contents).map_err(write_err)?;
    w.finish().and_then(|mut b| b.flush()).map_err(write_err)?;
    make_readable(tmp.path()).map_err(write_err)?;
    tmp.persist(&image.initramfs)
        .map_err(|e| write_err(e.error))?;
    let ktmp = tempfile::Builder::new()
        .prefix(".vmlinuz")
        .tempfile_in(&dir)
        .map_err(write_err)?;
    std::fs::write(ktmp.path(), &vmlinuz).map_err(write_err)?;
    make_readable(ktmp.path()).map_err(write_err)?;
    ktmp.persist(&image.vmlinuz)
        .map_err(|e| write_err(e.error))?;
    Ok(GuestImage {
        built: true,
        ..image
    })
}

/// Temporary files are created 0600; a QEMU running as another user (libvirt's) must read the
/// image.
fn make_readable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}

fn write_archive<W: Write>(w: &mut CpioWriter<W>, contents: &Contents) -> std::io::Result<()> {
    let mut dirs: Vec<String> = [
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/run",
        "/var",
        "/etc",
        "/sbin",
        "/usr/sbin",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for path in contents.files.keys() {
        let mut p = Path::new(path).parent();
        while let Some(d) = p {
            let s = d.to_string_lossy().into_owned();
            if s != "/" {
                dirs.push(s);
            }
            p = d.parent();
        }
    }
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        w.dir(d, 0o755)?;
    }
    // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
    w.char_device("/dev/console", 0o600, 5, 1)?;
    w.symlink("/var/run", "/run")?;
    for (path, (mode, data)) in &contents.files {
        w.file(path, *mode, data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where each layout keeps the guest program, as seen from its `kvmio-crashtest`. Each step
    /// installs one more file, in the order that makes the newest one win.
    #[test]
    fn guest_program_for_each_layout() {
        let root = tempfile::tempdir().unwrap();
        let at = |p: &str| root.path().join(p);
        let steps = [
            // Nothing installed: the path beside the binary, for the error message.
            (None, "usr/bin/kvmio-crashtest", "usr/bin/kvmio-guest"),
            // The Debian package: /usr/bin and /usr/lib/kvmio.
            (
                Some("usr/lib/kvmio/kvmio-guest"),
                "usr/bin/kvmio-crashtest",
                "usr/lib/kvmio/kvmio-guest",
            ),
            // By hand, both in one directory: beside wins.
            (
                Some("usr/bin/kvmio-guest"),
                "usr/bin/kvmio-crashtest",
                "usr/bin/kvmio-guest",
            ),
            // cargo: a test binary in target/debug/deps, the guest program in target/debug.
            (
                Some("target/debug/kvmio-guest"),
                "target/debug/deps/e2e-0123",
                "target/debug/kvmio-guest",
            ),
        ];
        for (install, exe, want) in steps {
            if let Some(p) = install {
                std::fs::create_dir_all(at(p).parent().unwrap()).unwrap();
                std::fs::write(at(p), b"").unwrap();
            }
            assert_eq!(guest_program_for(&at(exe)), at(want), "from {exe}");
        }
    }
}
