//! Before anything boots: the seeds of an iteration, and the image directory a run needs.
//!
//! Seeds come first because they make a cell repeatable on its own: everything random in an
//! iteration (run id, payload, fault delay, power-failure subset) derives from `--seed`, the
//! cell's name and the iteration number, never from the rest of the matrix. The image directory
//! is checked before the guest is built or booted (it can be made, takes a new directory, has
//! the worst-case free space, takes O_DIRECT where a cell needs it), so a typo or a full disk
//! fails in a second with one line, and again when the run starts (time has passed).

use std::path::Path;
use std::time::Duration;

use kvmio_guest::record::SplitMix64;

use super::image::qcow2_headroom;
use super::snapshot::{self, Key};
use super::{BootPolicy, RunError, RunOptions};
use crate::oracle::Cell;
use crate::vm::ImageFormat;

/// The seeds of one iteration.
#[derive(Debug, Clone, Copy)]
pub struct IterationSeeds {
    pub iteration: u64,
    pub run_id: u64,
    pub payload: u64,
    pub delay: u64,
    pub power: u64,
}

/// FNV-1a: a stable hash of a cell's name, so a cell's seeds do not depend on the matrix.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The seed of a cell: the run's seed and the cell's name.
pub fn cell_seed(seed: u64, cell: &Cell) -> u64 {
    SplitMix64::new(seed ^ fnv1a(&cell.id())).next()
}

impl IterationSeeds {
    pub fn derive(seed: u64, cell: &Cell, iteration: u32) -> IterationSeeds {
        let base = cell_seed(seed, cell);
        let it =
            SplitMix64::new(base ^ u64::from(iteration).wrapping_add(1).rotate_left(29)).next();
        let mut r = SplitMix64::new(it);
        IterationSeeds {
            iteration: it,
            run_id: r.next(),
            payload: r.next(),
            delay: r.next(),
            power: r.next(),
        }
    }

    /// The fault's delay after the first ack, uniform in the window.
    pub fn delay_in(&self, (min, max): (Duration, Duration)) -> Duration {
        let span = max.saturating_sub(min).as_millis() as u64;
        min + Duration::from_millis(if span == 0 {
            0
        } else {
            self.delay % (span + 1)
        })
    }
}

/// Worst-case bytes the image directory must have free for `opts`, and how that was counted.
pub fn space_needed(opts: &RunOptions) -> (u64, String) {
    let disk = opts.disk_size_mib << 20;
    let any_qcow2 = opts.cells.iter().any(|c| c.format == ImageFormat::Qcow2);
    let image = disk + if any_qcow2 { qcow2_headroom(disk) } else { 0 };
    let scratch = if any_qcow2 { disk } else { 0 };
    let total = opts.cells.len() as u64 * u64::from(opts.iterations);
    let live = (opts.parallel.max(1) as u64).min(total.max(1));
    let mut detail = format!(
        "{live} image(s) of up to {} MiB at once",
        (image + scratch) >> 20
    );
    let mut needed = live * (image + scratch);
    if opts.keep_images {
        needed += total * image;
        detail.push_str(&format!(
            " plus {total} kept image(s) of up to {} MiB",
            image >> 20
        ));
    }
    if opts.boot == BootPolicy::Auto {
        // One saved guest per configuration, each saved from a scratch disk of its own.
        let keys = Key::all(&opts.cells, disk).len() as u64;
        let state = snapshot::state_bytes_max(opts.memory_mib);
        needed += keys * (state + image);
        detail.push_str(&format!(
            " plus {keys} saved guest(s) of up to {} MiB with their scratch disks",
            (state + image) >> 20
        ));
    }
    (needed + (1 << 20), detail)
}

/// Checks the image directory before anything is built or booted: it can be created, takes a
/// new directory, has the free space the matrix may need and, if a cell needs it, supports
/// O_DIRECT. Returns kvmio's new (empty) directory inside it.
pub fn preflight(opts: &RunOptions) -> Result<tempfile::TempDir, RunError> {
    let image_dir = &opts.image_dir;
    let dir_err = |source| RunError::ImageDir {
        dir: image_dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(image_dir).map_err(dir_err)?;
    let images = tempfile::Builder::new()
        .prefix("kvmio-crashtest-")
        .tempdir_in(image_dir)
        .map_err(dir_err)?;
    let (needed, detail) = space_needed(opts);
    let stat =
        nix::sys::statvfs::statvfs(images.path()).map_err(|e| dir_err(std::io::Error::from(e)))?;
    let available = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    if available < needed {
        return Err(RunError::NotEnoughSpace {
            dir: image_dir.to_path_buf(),
            available_mib: available >> 20,
            needed_mib: needed.div_ceil(1 << 20),
            detail,
        });
    }
    if opts
        .cells
        .iter()
        .any(|c| c.fault.is_power() && !c.fault.over_nbd())
    {
        // Never reused (each run mounts on fresh directories), but worth saying: each holds
        // its dead run's images until it is removed.
        for stale in kvmio_fusedisk::stale_mounts() {
            tracing::warn!(
                "a kvmio-fusedisk mount from a killed run is left at {} (its filesystem is gone): remove it with `umount -l {}`",
                stale.display(),
                stale.display()
            );
        }
    }
    let needs_direct = opts
        .cells
        .iter()
        .any(|c| !c.fault.is_power() && c.cache_mode.flags().direct);
    if needs_direct && !takes_direct_io(images.path()) {
        return Err(RunError::NoDirectIo {
            dir: image_dir.to_path_buf(),
        });
    }
    Ok(images)
}

fn takes_direct_io(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(".direct-probe");
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// The directories of a run; removes what is not kept when dropped.
#[derive(Debug)]
pub(super) struct RunDirs {
    /// kvmio's own directory inside the image dir.
    images: Option<tempfile::TempDir>,
    /// Sockets and console logs (short paths, under the system temporary directory).
    sockets: tempfile::TempDir,
    keep: bool,
}

impl RunDirs {
    /// Creates the run's directories (checking the image directory again: time has passed).
    pub(super) fn create(opts: &RunOptions) -> Result<RunDirs, RunError> {
        let images = preflight(opts)?;
        let sockets = tempfile::Builder::new()
            .prefix("kvmio-ct")
            .tempdir()
            .map_err(|source| RunError::ImageDir {
                dir: std::env::temp_dir(),
                source,
            })?;
        Ok(RunDirs {
            images: Some(images),
            sockets,
            keep: opts.keep_images,
        })
    }

    pub(super) fn images(&self) -> &Path {
        self.images.as_ref().expect("images dir").path()
    }

    pub(super) fn sockets(&self) -> &Path {
        self.sockets.path()
    }
}

impl Drop for RunDirs {
    fn drop(&mut self) {
        if let Some(dir) = self.images.take() {
            if self.keep {
                let _ = dir.keep();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmio_guest::writer::SyncPolicy;
    use kvmio_qemu::CacheMode;

    use crate::oracle::Fault;

    fn cell(cache: CacheMode) -> Cell {
        Cell::new(cache, Fault::Power, SyncPolicy::None, ImageFormat::Raw)
    }

    #[test]
    fn seeds_depend_on_seed_cell_and_iteration_only() {
        let a = IterationSeeds::derive(1, &cell(CacheMode::None), 0);
        let b = IterationSeeds::derive(1, &cell(CacheMode::None), 0);
        assert_eq!(a.run_id, b.run_id);
        assert_eq!(a.payload, b.payload);
        for other in [
            IterationSeeds::derive(2, &cell(CacheMode::None), 0),
            IterationSeeds::derive(1, &cell(CacheMode::Unsafe), 0),
            IterationSeeds::derive(1, &cell(CacheMode::None), 1),
        ] {
            assert_ne!(a.run_id, other.run_id);
            assert_ne!(a.payload, other.payload);
        }
    }

    #[test]
    fn delay_stays_in_the_window() {
        let w = (Duration::from_millis(100), Duration::from_millis(400));
        for i in 0..200 {
            let d = IterationSeeds::derive(7, &cell(CacheMode::None), i).delay_in(w);
            assert!(d >= w.0 && d <= w.1, "{d:?}");
        }
        let fixed = (Duration::from_millis(50), Duration::from_millis(50));
        assert_eq!(
            IterationSeeds::derive(7, &cell(CacheMode::None), 3).delay_in(fixed),
            Duration::from_millis(50)
        );
    }
}
