//! Host page-cache bytes held by a file (an image): `cachestat(2)` where the kernel has it
//! (Linux 6.5+), otherwise `mincore(2)` over a read-only shared mapping of the file.
//!
//! Both are cheap and never read the file's data. Differences:
//! - cachestat also reports dirty and writeback pages, and needs only a read-only descriptor;
//! - mincore counts resident pages only, and since Linux 5.0 reports file pages only to a
//!   process that owns the file or may write it (root may); otherwise it sees zero.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::Path;

/// How the numbers were obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCacheMethod {
    /// `cachestat(2)`.
    Cachestat,
    /// `mincore(2)` over an mmap of the file.
    Mincore,
}

/// Page-cache usage of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCacheUsage {
    /// Bytes of the file in the page cache.
    pub cached_bytes: u64,
    /// Dirty bytes (written, not yet written back); cachestat only.
    pub dirty_bytes: Option<u64>,
    /// Bytes under writeback; cachestat only.
    pub writeback_bytes: Option<u64>,
    /// Which syscall gave the numbers.
    pub method: PageCacheMethod,
}

/// Why the usage could not be measured (the caller skips the image, with this as the reason).
#[derive(Debug, thiserror::Error)]
pub enum PageCacheError {
    /// Opening or measuring the file failed.
    #[error("{path}: {op}")]
    Io {
        /// The file.
        path: String,
        /// Which step failed.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Not a regular file or block device.
    #[error("{0}: not a regular file or block device")]
    NotAFile(String),
}

/// Measures with cachestat, falling back to mincore when the kernel lacks cachestat (`ENOSYS`,
/// or an architecture without a known syscall number).
///
/// Blocking (open/stat can hang on a dead network filesystem): call from `spawn_blocking`.
pub fn page_cache_usage(path: &Path) -> Result<PageCacheUsage, PageCacheError> {
    let file = open(path)?;
    match sys::cachestat(&file) {
        Ok(cs) => Ok(from_cachestat(cs)),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => mincore_usage(path, &file),
        Err(source) => Err(PageCacheError::Io {
            path: path.display().to_string(),
            op: "cachestat",
            source,
        }),
    }
}

/// Measures with one specific method (tests, benchmarks).
pub fn page_cache_usage_via(
    path: &Path,
    method: PageCacheMethod,
) -> Result<PageCacheUsage, PageCacheError> {
    let file = open(path)?;
    match method {
        PageCacheMethod::Cachestat => {
            sys::cachestat(&file)
                .map(from_cachestat)
                .map_err(|source| PageCacheError::Io {
                    path: path.display().to_string(),
                    op: "cachestat",
                    source,
                })
        }
        PageCacheMethod::Mincore => mincore_usage(path, &file),
    }
}

fn open(path: &Path) -> Result<File, PageCacheError> {
    let io_err = |op, source| PageCacheError::Io {
        path: path.display().to_string(),
        op,
        source,
    };
    // Check the type before opening: opening a FIFO would block.
    let meta = std::fs::metadata(path).map_err(|e| io_err("stat", e))?;
    use std::os::unix::fs::FileTypeExt;
    if !(meta.is_file() || meta.file_type().is_block_device()) {
        return Err(PageCacheError::NotAFile(path.display().to_string()));
    }
    File::open(path).map_err(|e| io_err("open", e))
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |v| v as u64)
}

fn from_cachestat(cs: sys::Cachestat) -> PageCacheUsage {
    let page = page_size();
    PageCacheUsage {
        cached_bytes: cs.nr_cache.saturating_mul(page),
        dirty_bytes: Some(cs.nr_dirty.saturating_mul(page)),
        writeback_bytes: Some(cs.nr_writeback.saturating_mul(page)),
        method: PageCacheMethod::Cachestat,
    }
}

/// mincore over the file in windows, so a multi-terabyte image needs neither a huge mapping nor
/// a huge residency vector.
fn mincore_usage(path: &Path, file: &File) -> Result<PageCacheUsage, PageCacheError> {
    const WINDOW: u64 = 256 << 20;
    let io_err = |op, source| PageCacheError::Io {
        path: path.display().to_string(),
        op,
        source,
    };
    // Block devices have st_size 0; seeking to the end works for both.
    let mut f = file;
    let size = f.seek(SeekFrom::End(0)).map_err(|e| io_err("seek", e))?;
    let page = page_size();
    let mut resident_pages = 0u64;
    let mut vec = Vec::new();
    let mut offset = 0u64;
    while offset < size {
        let len = WINDOW.min(size - offset);
        let pages = len.div_ceil(page) as usize;
        vec.clear();
        vec.resize(pages, 0u8);
        sys::mincore_window(file, offset, len as usize, &mut vec)
            .map_err(|e| io_err("mmap/mincore", e))?;
        resident_pages += vec.iter().filter(|b| **b & 1 == 1).count() as u64;
        offset += len;
    }
    Ok(PageCacheUsage {
        cached_bytes: resident_pages.saturating_mul(page),
        dirty_bytes: None,
        writeback_bytes: None,
        method: PageCacheMethod::Mincore,
    })
}

/// The only unsafe code of the exporter: three raw syscalls with no safe wrapper in libc/nix.
#[allow(unsafe_code)]
mod sys {
    use super::*;

    /// `struct cachestat_range` from `<linux/mman.h>`.
    #[repr(C)]
    struct CachestatRange {
        off: u64,
        len: u64,
    }

    /// `struct cachestat` from `<linux/mman.h>` (counts in pages).
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub(super) struct Cachestat {
        pub nr_cache: u64,
        pub nr_dirty: u64,
        pub nr_writeback: u64,
        pub nr_evicted: u64,
        pub nr_recently_evicted: u64,
    }

    /// `cachestat` is 451 in the unified syscall table (Linux 6.5), on x86_64 and aarch64 alike;
    /// libc 0.2 does not define `SYS_cachestat` for these targets yet.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    const SYS_CACHESTAT: libc::c_long = 451;

    /// cachestat over the whole file (`len == 0` means "to the end").
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    pub(super) fn cachestat(file: &File) -> io::Result<Cachestat> {
        let range = CachestatRange { off: 0, len: 0 };
        let mut out = Cachestat::default();
        // SAFETY: cachestat(fd, const struct cachestat_range *, struct cachestat *, unsigned
        // flags). `file` keeps the descriptor open for the call; `range` and `out` are live,
        // properly aligned #[repr(C)] structs of the kernel's layout, `out` is written by the
        // kernel only within its size; flags must be 0. A kernel without the syscall returns
        // ENOSYS and touches nothing.
        let rc = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                file.as_raw_fd(),
                &range as *const CachestatRange,
                &mut out as *mut Cachestat,
                0 as libc::c_uint,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(out)
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub(super) fn cachestat(_file: &File) -> io::Result<Cachestat> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }

    /// Maps `len` bytes of `file` at page-aligned `offset` read-only, asks mincore which pages are
    /// resident into `vec` (one byte per page), and unmaps.
    pub(super) fn mincore_window(
        file: &File,
        offset: u64,
        len: usize,
        vec: &mut [u8],
    ) -> io::Result<()> {
        assert!(len > 0 && vec.len() >= len.div_ceil(super::page_size() as usize));
        // SAFETY: a fresh shared read-only mapping chosen by the kernel (addr NULL), so it
        // aliases no Rust object; the descriptor is valid for the call (the mapping keeps its
        // own reference to the file afterwards).
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `addr..addr+len` is the mapping just created; `vec` has at least one byte per
        // page of it (asserted above). mincore only inspects page-cache state: it never touches
        // the mapped memory, so a file truncated meanwhile cannot fault (no SIGBUS).
        let rc = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
        let err = (rc != 0).then(io::Error::last_os_error);
        // SAFETY: unmaps exactly the mapping created above, which nothing else references.
        unsafe { libc::munmap(addr, len) };
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            page_cache_usage(dir.path()),
            Err(PageCacheError::NotAFile(_))
        ));
        assert!(matches!(
            page_cache_usage(&dir.path().join("missing")),
            Err(PageCacheError::Io { op: "stat", .. })
        ));
    }

    #[test]
    fn empty_file_is_zero() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let u = page_cache_usage_via(f.path(), PageCacheMethod::Mincore).unwrap();
        assert_eq!(u.cached_bytes, 0);
    }
}
