//! Boot once, restore many: the writer guest booted once per VM configuration it can observe,
//! saved when ready, and restored for each iteration onto that iteration's fresh disk.
//!
//! Booting is most of an iteration under TCG (about 4.5 s of 5.3 s, BENCHMARKS.md). A guest
//! that has said READY has read nothing it still holds from its disk (it dropped its page cache
//! first, `kvmio-guest`), and knows of its disk only what the device tells it: its size and
//! whether it has a volatile write cache. So a ready guest is saved (QEMU migration of the
//! stopped VM over a unix socket into a file) once per [`Key`], and every iteration of a cell
//! with that key starts a QEMU with the same command line but its own disk and `-incoming
//! defer`, streams the file in (`migrate-incoming`) and resumes it. Where the disk lives (an
//! image file, kvmio's NBD server, a FUSE path) is only the `-drive` of the iteration's
//! [`VmConfig`]: QEMU opens it fresh on the restoring side, so no disk state travels.
//!
//! Everything that varies per iteration reaches the guest after the restore, in the `START`
//! line ([`super::ack`]): run id, payload seed, sync policy, record size, the host's wall clock
//! and fresh entropy. The writer answers `STATE`, and [`check_state`] checks, in every iteration
//! whether booted or restored, that the guest is the one a fresh boot would give: its write
//! cache is the one the cell's cache mode negotiates (QMP's `query-block` flags are checked
//! as before), it sees the fresh disk's size and no partition, holds no disk data in its page
//! cache, and its clock is the host's.
//!
//! A configuration whose state cannot be saved (the boot or the migration fails) is booted in
//! every iteration instead, and the report says why. The saved states live in a directory of
//! their own inside the run's image directory, counted in its space plan (`plan.rs`), and are
//! removed when the run ends, on every path (also with `--keep-images`).
//!
//! Why one file of about 500 lines of code (and its tests): the key of a saved state, its saving
//! and its restoring, and [`check_state`] are one promise (a restored guest is the one a fresh
//! boot would give); each half is only right together with the others.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kvmio_guest::protocol::GuestState;
use kvmio_qemu::{CacheMode, QmpCommands};
use serde::Serialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::OnceCell;

use super::boot::{self, Booted};
use super::{image, Guest, RunError, RunOptions};
use crate::oracle::Cell;
use crate::vm::{DiskSource, ImageFormat, Vm, VmConfig};

/// How long saving or loading a VM state may take (about 70 MB; well under a second here).
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);

/// The file side of a state stream moves in chunks this big: `tokio::fs` runs every read and
/// write on its blocking pool, which at `tokio::io::copy`'s 8 KiB is some 9,000 round trips for
/// one state.
const STREAM_BUFFER: usize = 4 << 20;

/// What a saved guest depends on: what it can observe of its VM. The write cache is the one the
/// cache mode negotiates (virtio's `write-cache`, from `cache.writeback`); `direct` and
/// `no-flush` are the host's business. The format is invisible to virtio-blk, but a key of its
/// own costs one boot and rules out any format-dependent device default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Key {
    pub write_cache: bool,
    pub format: ImageFormat,
    pub disk_bytes: u64,
}

impl Key {
    pub fn of(cell: &Cell, disk_bytes: u64) -> Key {
        Key {
            write_cache: cell.cache_mode.flags().writeback,
            format: cell.format,
            disk_bytes,
        }
    }

    /// The cache mode the saved guest boots with: this key's write cache, without `O_DIRECT`
    /// (the scratch disk may sit on any file system).
    fn cache(&self) -> CacheMode {
        if self.write_cache {
            CacheMode::Writeback
        } else {
            CacheMode::Writethrough
        }
    }

    fn name(&self) -> String {
        format!(
            "snap-{}-{}-{}m",
            if self.write_cache { "wb" } else { "wt" },
            self.format,
            self.disk_bytes >> 20
        )
    }

    /// The distinct keys of `cells`.
    pub fn all(cells: &[Cell], disk_bytes: u64) -> Vec<Key> {
        let mut keys: Vec<Key> = Vec::new();
        for c in cells {
            let k = Key::of(c, disk_bytes);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        keys
    }
}

/// Bytes a saved state may take: the guest's RAM (zero pages are skipped, so this is an upper
/// bound) and its device state.
pub(super) fn state_bytes_max(memory_mib: u32) -> u64 {
    (u64::from(memory_mib) + 16) << 20
}

/// A saved guest.
#[derive(Debug)]
pub(super) struct Saved {
    path: PathBuf,
    guest_kernel: String,
}

/// What a key's iterations start from.
#[derive(Debug)]
pub(super) enum Prepared {
    Saved(Saved),
    /// The state could not be saved: boot, for this reason.
    Unavailable(String),
}

/// Why saving or restoring a guest failed. One variant per step; the inner error is only the
/// source.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot boot the guest to save")]
    Boot(#[source] Box<RunError>),
    #[error("QMP {command} failed")]
    Qmp {
        command: &'static str,
        #[source]
        source: kvmio_qemu::Error,
    },
    #[error("cannot stream the VM state {path}")]
    Stream {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the migration ended as {status}: {detail}")]
    Migration { status: String, detail: String },
    #[error("QEMU exited while loading the saved state: {stderr}")]
    Exited { stderr: String },
    #[error("the migration did not finish within {0:?}")]
    Timeout(Duration),
}

/// The run's saved guests, one per key, made when an iteration first needs them.
#[derive(Debug)]
pub(super) struct Snapshots {
    dir: tempfile::TempDir,
    slots: Mutex<HashMap<Key, Arc<OnceCell<Prepared>>>>,
}

impl Snapshots {
    /// A new directory for the states inside `images` (removed when dropped).
    pub fn create(images: &Path) -> std::io::Result<Snapshots> {
        let dir = tempfile::Builder::new()
            .prefix("snapshots-")
            .tempdir_in(images)?;
        Ok(Snapshots {
            dir,
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// The saved guest of `key`, saving it first if no iteration has; iterations that ask
    /// meanwhile wait for that one save.
    pub async fn get(
        &self,
        key: Key,
        opts: &RunOptions,
        guest: &Guest,
        sockets: &Path,
    ) -> Arc<OnceCell<Prepared>> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(slots.entry(key).or_default())
        };
        slot.get_or_init(|| async {
            match self.save(key, opts, guest, sockets).await {
                Ok(saved) => Prepared::Saved(saved),
                Err(e) => {
                    let why = crate::one_line(&e);
                    tracing::warn!(
                        "{}: cannot save the guest, booting instead: {why}",
                        key.name()
                    );
                    Prepared::Unavailable(why)
                }
            }
        })
        .await;
        slot
    }

    /// Boots a guest on a scratch disk of `key`, waits for READY and saves it.
    async fn save(
        &self,
        key: Key,
        opts: &RunOptions,
        guest: &Guest,
        sockets: &Path,
    ) -> Result<Saved, SnapshotError> {
        let name = key.name();
        let disk = self.dir.path().join(format!("{name}.{}", key.format));
        let _disk_gone = RemoveOnDrop(disk.clone());
        image::create(
            &opts.qemu_img,
            &disk,
            key.format,
            key.disk_bytes,
            false,
            &name,
        )
        .map_err(|e| SnapshotError::Boot(Box::new(e)))?;
        let config = boot::config(
            opts,
            guest,
            &name,
            sockets,
            DiskSource::File {
                path: disk.clone(),
                format: key.format,
            },
            key.cache(),
        );
        let Booted {
            mut vm,
            guest_kernel,
            ..
        } = boot::boot(config, opts.ready_timeout, &name)
            .await
            .map_err(|e| SnapshotError::Boot(Box::new(e)))?;
        let path = self.dir.path().join(format!("{name}.state"));
        let socket = sockets.join(format!("{name}.mig"));
        let saved = migrate_out(&mut vm, &socket, &path).await;
        let _ = std::fs::remove_file(&socket);
        vm.kill();
        saved?;
        Ok(Saved { path, guest_kernel })
    }
}

/// Removes a file when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Streams a VM state to or from `path`, within [`MIGRATION_TIMEOUT`].
async fn bounded(
    path: &Path,
    copy: impl std::future::Future<Output = std::io::Result<()>>,
) -> Result<(), SnapshotError> {
    match tokio::time::timeout(MIGRATION_TIMEOUT, copy).await {
        Ok(r) => r.map_err(|source| SnapshotError::Stream {
            path: path.to_path_buf(),
            source,
        }),
        Err(_) => Err(SnapshotError::Timeout(MIGRATION_TIMEOUT)),
    }
}

fn qmp_err(command: &'static str) -> impl FnOnce(kvmio_qemu::Error) -> SnapshotError {
    move |source| SnapshotError::Qmp { command, source }
}

/// Stops the VM and migrates it to a unix socket kvmio listens on, copying the stream into
/// `path`; returns once QEMU says the migration completed and the stream has ended.
async fn migrate_out(vm: &mut Vm, socket: &Path, path: &Path) -> Result<(), SnapshotError> {
    let stream_err = |source| SnapshotError::Stream {
        path: path.to_path_buf(),
        source,
    };
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(stream_err)?;
    let qmp = vm.qmp();
    // QEMU's default cap is 32 MiB/s; the VM is stopped, so there is no reason for one.
    qmp.execute_value(
        "migrate-set-parameters",
        Some(json!({ "max-bandwidth": 1u64 << 40 })),
    )
    .await
    .map_err(qmp_err("migrate-set-parameters"))?;
    qmp.stop().await.map_err(qmp_err("stop"))?;
    qmp.execute_value(
        "migrate",
        Some(json!({ "uri": format!("unix:{}", socket.display()) })),
    )
    .await
    .map_err(qmp_err("migrate"))?;
    bounded(path, async {
        let (mut stream, _) = listener.accept().await?;
        let file = tokio::fs::File::create(path).await?;
        let mut file = tokio::io::BufWriter::with_capacity(STREAM_BUFFER, file);
        tokio::io::copy(&mut stream, &mut file).await?;
        file.flush().await
    })
    .await?;
    let deadline = Instant::now() + MIGRATION_TIMEOUT;
    loop {
        let info = vm
            .qmp()
            .execute_value("query-migrate", None)
            .await
            .map_err(qmp_err("query-migrate"))?;
        let status = info["status"].as_str().unwrap_or("").to_string();
        match status.as_str() {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                return Err(SnapshotError::Migration {
                    status,
                    detail: info["error-desc"].as_str().unwrap_or("").to_string(),
                })
            }
            _ if Instant::now() > deadline => {
                return Err(SnapshotError::Timeout(MIGRATION_TIMEOUT))
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Starts QEMU from `config` waiting for a state, streams `saved` in and resumes the guest. The
/// guest is where it was saved: after READY, waiting for `START`.
pub(super) async fn restore(
    mut config: VmConfig,
    saved: &Saved,
    cell: &str,
) -> Result<Booted, RunError> {
    let err = |source| RunError::Restore {
        cell: cell.to_string(),
        source,
    };
    config.incoming = true;
    let socket = config.run_dir.join(format!("{}.in", config.name));
    let t = Instant::now();
    let mut vm = Vm::launch(config).await.map_err(|source| RunError::Boot {
        cell: cell.to_string(),
        source,
    })?;
    let loaded = migrate_in(&mut vm, &socket, &saved.path).await;
    let _ = std::fs::remove_file(&socket);
    if let Err(e) = loaded {
        // QEMU exits when a state does not load: its stderr says why.
        let stderr = std::fs::read_to_string(vm.stderr_path()).unwrap_or_default();
        if vm.try_wait().is_some() || !stderr.trim().is_empty() {
            return Err(err(SnapshotError::Exited {
                stderr: stderr.trim().to_string(),
            }));
        }
        return Err(err(e));
    }
    let restore = t.elapsed();
    let (qemu_version, qmp_cache) = boot::qemu_facts(&mut vm).await;
    Ok(Booted {
        vm,
        boot: restore,
        guest_kernel: saved.guest_kernel.clone(),
        qemu_version,
        qmp_cache,
    })
}

async fn migrate_in(vm: &mut Vm, socket: &Path, path: &Path) -> Result<(), SnapshotError> {
    vm.qmp()
        .execute_value(
            "migrate-incoming",
            Some(json!({ "uri": format!("unix:{}", socket.display()) })),
        )
        .await
        .map_err(qmp_err("migrate-incoming"))?;
    bounded(path, async {
        let mut stream = UnixStream::connect(socket).await?;
        let file = tokio::fs::File::open(path).await?;
        let mut file = tokio::io::BufReader::with_capacity(STREAM_BUFFER, file);
        tokio::io::copy_buf(&mut file, &mut stream).await?;
        stream.shutdown().await
    })
    .await?;
    // Loaded when QEMU leaves `inmigrate`; the source was stopped, so the guest waits paused.
    let deadline = Instant::now() + MIGRATION_TIMEOUT;
    loop {
        let status = vm
            .qmp()
            .query_status()
            .await
            .map_err(qmp_err("query-status"))?;
        match status.status.as_str() {
            "inmigrate" if Instant::now() > deadline => {
                return Err(SnapshotError::Timeout(MIGRATION_TIMEOUT))
            }
            "inmigrate" => tokio::time::sleep(Duration::from_millis(5)).await,
            "paused" | "running" => break,
            other => {
                return Err(SnapshotError::Migration {
                    status: other.to_string(),
                    detail: "the VM is not paused after loading".into(),
                })
            }
        }
    }
    vm.qmp().cont().await.map_err(qmp_err("cont"))
}

/// What the writer reported after `START`, as checked, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GuestCheck {
    /// The guest's `/sys/block/vda/queue/write_cache` is `write back`.
    pub write_cache: bool,
    pub disk_bytes: u64,
    pub partitions: u32,
    /// Block-device data the guest held in its page cache (must be 0).
    pub cached_kib: u64,
    /// Host wall clock when `STATE` arrived minus the guest's clock in it, milliseconds.
    pub clock_lag_ms: f64,
    /// The guest's uptime: a restored guest's continues from the moment it was saved (QEMU
    /// migrates the virtual clock), so it is short and about the same in every iteration.
    pub uptime_ms: u64,
    /// The guest's `discard_max_bytes` and `write_zeroes_max_bytes` of the disk (what its
    /// virtio-blk driver negotiated: 0 is none).
    pub discard_max_bytes: u64,
    pub write_zeroes_max_bytes: u64,
}

/// Unix time in nanoseconds.
pub(super) fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Checks that the guest is, for the experiment, the one a fresh boot on this iteration's disk
/// gives: `sent_ns` is the wall clock sent in `START`, `received_ns` when `STATE` came.
pub(super) fn check_state(
    state: &GuestState,
    cell: &Cell,
    disk_bytes: u64,
    sent_ns: u64,
    received_ns: u64,
) -> Result<GuestCheck, String> {
    let want_wc = cell.cache_mode.flags().writeback;
    if state.write_cache != want_wc {
        return Err(format!(
            "the guest's write cache is {}, but cache={} negotiates {}",
            wc_name(state.write_cache),
            cell.cache_mode,
            wc_name(want_wc)
        ));
    }
    if state.disk_bytes != disk_bytes {
        return Err(format!(
            "the guest sees a {}-byte disk, the iteration's has {disk_bytes}",
            state.disk_bytes
        ));
    }
    if state.partitions != 0 {
        return Err(format!(
            "the guest sees {} partition(s) on a fresh disk",
            state.partitions
        ));
    }
    if cell.workload.discards() && state.discard_max_bytes == 0 {
        return Err("the guest's disk takes no discards (discard_max_bytes is 0)".into());
    }
    if state.cached_kib != 0 {
        return Err(format!(
            "the guest holds {} KiB of disk data in its page cache",
            state.cached_kib
        ));
    }
    // The guest set its clock to `sent_ns` before reading it; allow two seconds of drift.
    if state.clock_ns < sent_ns || state.clock_ns > received_ns + 2_000_000_000 {
        return Err(format!(
            "the guest's clock ({} ns) is not the host's ({sent_ns}..{received_ns} ns)",
            state.clock_ns
        ));
    }
    Ok(GuestCheck {
        write_cache: state.write_cache,
        disk_bytes: state.disk_bytes,
        partitions: state.partitions,
        cached_kib: state.cached_kib,
        clock_lag_ms: (received_ns as f64 - state.clock_ns as f64) / 1e6,
        uptime_ms: state.uptime_ms,
        discard_max_bytes: state.discard_max_bytes,
        write_zeroes_max_bytes: state.write_zeroes_max_bytes,
    })
}

fn wc_name(write_back: bool) -> &'static str {
    if write_back {
        "write back"
    } else {
        "write through"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::Fault;
    use kvmio_guest::writer::SyncPolicy;

    fn state() -> GuestState {
        GuestState {
            write_cache: true,
            disk_bytes: 64 << 20,
            partitions: 0,
            cached_kib: 0,
            clock_ns: 1_000,
            uptime_ms: 3000,
            discard_max_bytes: 1 << 30,
            write_zeroes_max_bytes: 1 << 30,
        }
    }

    #[test]
    fn a_guest_unlike_a_fresh_boot_is_refused() {
        let none = Cell::new(
            CacheMode::None,
            Fault::Kill,
            SyncPolicy::None,
            ImageFormat::Raw,
        );
        let wt = Cell {
            cache_mode: CacheMode::Writethrough,
            ..none
        };
        let ok = check_state(&state(), &none, 64 << 20, 900, 1_100).unwrap();
        assert_eq!(ok.cached_kib, 0);
        let e = check_state(&state(), &wt, 64 << 20, 900, 1_100).unwrap_err();
        assert!(
            e.contains("write back") && e.contains("writethrough"),
            "{e}"
        );
        let e = check_state(&state(), &none, 32 << 20, 900, 1_100).unwrap_err();
        assert!(e.contains("disk"), "{e}");
        let cached = GuestState {
            cached_kib: 4,
            ..state()
        };
        assert!(check_state(&cached, &none, 64 << 20, 900, 1_100)
            .unwrap_err()
            .contains("4 KiB"));
        let parts = GuestState {
            partitions: 1,
            ..state()
        };
        assert!(check_state(&parts, &none, 64 << 20, 900, 1_100).is_err());
        // A clock left at the snapshot's time (before the host's START) is refused.
        let stale = GuestState {
            clock_ns: 10,
            ..state()
        };
        assert!(check_state(&stale, &none, 64 << 20, 900, 1_100)
            .unwrap_err()
            .contains("clock"));
    }

    #[test]
    fn keys_follow_what_the_guest_sees() {
        let cell = |mode, format| Cell::new(mode, Fault::Power, SyncPolicy::None, format);
        let cells = [
            cell(CacheMode::None, ImageFormat::Raw),
            cell(CacheMode::Writeback, ImageFormat::Raw),
            cell(CacheMode::Unsafe, ImageFormat::Raw),
            cell(CacheMode::Writethrough, ImageFormat::Raw),
            cell(CacheMode::Directsync, ImageFormat::Raw),
            cell(CacheMode::None, ImageFormat::Qcow2),
        ];
        let keys = Key::all(&cells, 64 << 20);
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert_eq!(keys[0].cache(), CacheMode::Writeback);
        assert_eq!(keys[1].cache(), CacheMode::Writethrough);
        assert_eq!(keys[1].name(), "snap-wt-raw-64m");
    }
}
