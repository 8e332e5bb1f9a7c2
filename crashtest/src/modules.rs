//! Picking exactly the kernel modules a guest needs, with their dependencies.
//!
//! Debian's kernel package ships no `modules.dep`, and a host's may not match the module files
//! we were pointed at, so dependencies are read from each module's own `.modinfo` section
//! (`depends=a,b`). Modules compiled into the kernel (`modules.builtin`) need no loading.
//! Compressed modules (`.ko.xz`, `.ko.zst`) are decompressed here, so that the guest's busybox
//! `insmod` only ever sees plain ELF objects.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The modules kvmio's guest needs: the PCI transport, the block device and the serial ports
/// that carry the guest agent and kvmio's control channel.
pub const REQUIRED: &[&str] = &["virtio_pci", "virtio_blk", "virtio_console"];

/// Modules the guest uses when the kernel has them: the IO schedulers the seed-claims
/// experiment compares (`mq-deadline` is built into Debian's kernel; `bfq` and `kyber` are
/// modules). A kernel without them still boots a working guest; the experiment reads which
/// schedulers the guest offers from `/sys/block/*/queue/scheduler`. The crash tester's file
/// workloads need `ext4` and `xfs` (with their dependencies, `jbd2`, `mbcache`, `crc16`,
/// `libcrc32c`, from `depends=`) and a `crc32c` implementation, which the filesystems ask the
/// crypto API for by name at mount time (the guest has no modprobe to load it then): a kernel
/// without them still boots, and the file workload then reports the filesystem unavailable.
pub const OPTIONAL: &[&str] = &[
    "mq-deadline",
    "bfq",
    "kyber-iosched",
    "crc32c_generic",
    "ext4",
    "xfs",
];

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("kernel module {name} is neither in {dir} nor built in (modules.builtin): pass --modules for this kernel")]
    NotFound { name: String, dir: PathBuf },
    #[error("cannot read module {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot decompress module {path}")]
    Decompress {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot scan module directory {dir}")]
    Scan {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A module ready to be put into the initramfs.
#[derive(Debug, Clone)]
pub struct Module {
    pub name: String,
    /// The uncompressed ELF object.
    pub object: Vec<u8>,
}

/// Modules in load order (each after its dependencies), skipping built-ins.
pub fn resolve(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<Module>, ModuleError> {
    let index = index_modules(modules_dir)?;
    let builtin = builtin_modules(modules_dir);
    let mut ordered: Vec<Module> = Vec::new();
    let mut done = BTreeSet::new();
    for name in wanted {
        visit(
            &normalise(name),
            modules_dir,
            &index,
            &builtin,
            &mut done,
            &mut ordered,
            0,
        )?;
    }
    Ok(ordered)
}

/// Like [`resolve`] for `required`, plus those of `optional` that this kernel has (as a module
/// file or built in); an optional module whose own dependencies are missing is an error, since
/// that is a broken module tree rather than a kernel without the feature.
pub fn resolve_with_optional(
    modules_dir: &Path,
    required: &[&str],
    optional: &[&str],
) -> Result<Vec<Module>, ModuleError> {
    let index = index_modules(modules_dir)?;
    let builtin = builtin_modules(modules_dir);
    let present: Vec<&str> = optional
        .iter()
        .copied()
        .filter(|m| {
            let name = normalise(m);
            index.contains_key(&name) || builtin.contains(&name)
        })
        .collect();
    let wanted: Vec<&str> = required.iter().copied().chain(present).collect();
    resolve(modules_dir, &wanted)
}

/// Module names use `_` and `-` interchangeably; the kernel normalises to `_`.
fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

fn visit(
    name: &str,
    dir: &Path,
    index: &HashMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    done: &mut BTreeSet<String>,
    out: &mut Vec<Module>,
    depth: usize,
) -> Result<(), ModuleError> {
    if done.contains(name) || depth > 64 {
        return Ok(());
    }
    done.insert(name.to_string());
    let Some(path) = index.get(name) else {
        if builtin.contains(name) {
            return Ok(());
        }
        return Err(ModuleError::NotFound {
            name: name.to_string(),
            dir: dir.to_path_buf(),
        });
    };
    let object = read_module(path)?;
    for dep in depends(&object) {
        visit(&dep, dir, index, builtin, done, out, depth + 1)?;
    }
    out.push(Module {
        name: name.to_string(),
        object,
    });
    Ok(())
}

/// Every module file under `dir`, by normalised name.
fn index_modules(dir: &Path) -> Result<HashMap<String, PathBuf>, ModuleError> {
    let mut index = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| ModuleError::Scan {
            dir: d.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                stack.push(path);
            } else if let Some(name) = module_name(&path) {
                index.entry(name).or_insert(path);
            }
        }
    }
    Ok(index)
}

fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))
        .or_else(|| file.strip_suffix(".ko.zst"))?;
    Some(normalise(stem))
}

fn builtin_modules(dir: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| module_name(Path::new(l)))
        .collect()
}

fn read_module(path: &Path) -> Result<Vec<u8>, ModuleError> {
    let raw = std::fs::read(path).map_err(|source| ModuleError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let name = path.to_string_lossy();
    let decompress_err = |e: Box<dyn std::error::Error + Send + Sync>| ModuleError::Decompress {
        path: path.to_path_buf(),
        source: e,
    };
    if name.ends_with(".xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut raw.as_slice(), &mut out)
            .map_err(|e| decompress_err(e.into()))?;
        Ok(out)
    } else if name.ends_with(".zst") {
        let mut out = Vec::new();
        ruzstd::decoding::StreamingDecoder::new(raw.as_slice())
            .map_err(|e| decompress_err(e.into()))?
            .read_to_end(&mut out)
            .map_err(|e| decompress_err(e.into()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The `depends=` entry of a module's `.modinfo` section. The section is a run of
/// NUL-terminated `key=value` strings; scanning for the NUL-prefixed key finds it without an ELF
/// parser, and an empty value means no dependencies.
pub fn depends(object: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(start) = object.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let value = &object[start + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(normalise)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_reads_the_modinfo_string() {
        let obj = b"\x7fELF....\0license=GPL\0depends=virtio,virtio_ring\0vermagic=6.1\0";
        assert_eq!(depends(obj), vec!["virtio", "virtio_ring"]);
        assert!(depends(b"\0depends=\0name=x\0").is_empty());
        assert!(depends(b"no modinfo here").is_empty());
    }

    #[test]
    fn optional_modules_are_taken_when_present_and_skipped_when_absent() {
        let dir = tempfile::tempdir().unwrap();
        let block = dir.path().join("kernel/block");
        std::fs::create_dir_all(&block).unwrap();
        std::fs::write(block.join("bfq.ko"), b"\x7fELF\0depends=\0").unwrap();
        std::fs::write(dir.path().join("kernel/req.ko"), b"\x7fELF\0depends=\0").unwrap();
        std::fs::write(
            dir.path().join("modules.builtin"),
            "kernel/block/mq-deadline.ko\n",
        )
        .unwrap();
        let mods = resolve_with_optional(
            dir.path(),
            &["req"],
            &["mq-deadline", "bfq", "kyber-iosched"],
        )
        .unwrap();
        let names: Vec<_> = mods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["req", "bfq"]);
        assert!(matches!(
            resolve_with_optional(dir.path(), &["absent"], &[]),
            Err(ModuleError::NotFound { .. })
        ));
    }
}
