//! What each cell of the crash-test matrix promises, and the verdicts.
//!
//! A cell is (cache mode, fault, sync policy, image format). Its promise is whether an
//! *acknowledged* record must survive the fault. The reasoning behind each rule is in
//! `docs/crash-consistency.md`; [`promise`] returns it in one line too, for the reports.

use std::fmt;
use std::str::FromStr;

pub use kvmio_guest::workload::{Workload, WorkloadKind};
use kvmio_guest::writer::SyncPolicy;
use kvmio_nbd::PowerFailMode;
use kvmio_qemu::{CacheFlags, CacheMode};
use serde::{Deserialize, Serialize};

use crate::vm::ImageFormat;

/// How the crash happens, and where the disk lives.
///
/// `power*` is a host power loss under QEMU's own file driver: the image is a file on kvmio's
/// volatile FUSE filesystem (`kvmio-fusedisk`), what production runs. `power-nbd*` is the same
/// loss with the disk reached over NBD (kvmio's volatile NBD server): it measures QEMU's NBD
/// client, whose flush semantics differ (see `docs/crash-consistency.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Fault {
    /// SIGKILL of QEMU; the host (its page cache, its disks) survives.
    #[serde(rename = "kill")]
    Kill,
    /// Host power loss: every write not made durable (fsync, fdatasync, O_DSYNC) is lost.
    #[serde(rename = "power")]
    Power,
    /// Power loss that persists a seeded random subset of the unflushed writes, whole.
    #[serde(rename = "power-subset")]
    PowerSubset,
    /// Power loss that persists a seeded random subset, tearing some writes at 512-byte sectors.
    #[serde(rename = "power-torn")]
    PowerTorn,
    /// [`Fault::Power`] with the disk reached over NBD.
    #[serde(rename = "power-nbd")]
    PowerNbd,
    /// [`Fault::PowerSubset`] over NBD.
    #[serde(rename = "power-nbd-subset")]
    PowerNbdSubset,
    /// [`Fault::PowerTorn`] over NBD.
    #[serde(rename = "power-nbd-torn")]
    PowerNbdTorn,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::Kill,
        Fault::Power,
        Fault::PowerSubset,
        Fault::PowerTorn,
        Fault::PowerNbd,
        Fault::PowerNbdSubset,
        Fault::PowerNbdTorn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Power => "power",
            Fault::PowerSubset => "power-subset",
            Fault::PowerTorn => "power-torn",
            Fault::PowerNbd => "power-nbd",
            Fault::PowerNbdSubset => "power-nbd-subset",
            Fault::PowerNbdTorn => "power-nbd-torn",
        }
    }

    /// Whether this is a host power loss (the disk under a volatile layer of kvmio's).
    pub fn is_power(self) -> bool {
        self != Fault::Kill
    }

    /// Whether the disk is reached over NBD (kvmio's volatile NBD server).
    pub fn over_nbd(self) -> bool {
        matches!(
            self,
            Fault::PowerNbd | Fault::PowerNbdSubset | Fault::PowerNbdTorn
        )
    }

    /// The subset and torn variants of a whole power loss (`--torn`).
    pub fn torn_variants(self) -> &'static [Fault] {
        match self {
            Fault::Power => &[Fault::PowerSubset, Fault::PowerTorn],
            Fault::PowerNbd => &[Fault::PowerNbdSubset, Fault::PowerNbdTorn],
            _ => &[],
        }
    }

    /// What the volatile layer does with unflushed writes at this fault.
    pub fn power_fail_mode(self, seed: u64) -> Option<PowerFailMode> {
        match self {
            Fault::Kill => None,
            Fault::Power | Fault::PowerNbd => Some(PowerFailMode::DropAll),
            Fault::PowerSubset | Fault::PowerNbdSubset => Some(PowerFailMode::Subset { seed }),
            Fault::PowerTorn | Fault::PowerNbdTorn => Some(PowerFailMode::SubsetTorn { seed }),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Fault::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                format!("unknown fault {s:?}: use kill, power, power-subset, power-torn, power-nbd, power-nbd-subset or power-nbd-torn")
            })
    }
}

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cell {
    pub cache_mode: CacheMode,
    pub fault: Fault,
    pub sync: SyncName,
    pub format: ImageFormat,
    /// What the guest writes (absent from ack logs and reports of older runs: raw-append).
    #[serde(default)]
    pub workload: Workload,
}

/// [`SyncPolicy`] with serde, as the reports spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncName {
    Fdatasync,
    Dsync,
    None,
}

impl From<SyncPolicy> for SyncName {
    fn from(p: SyncPolicy) -> Self {
        match p {
            SyncPolicy::Fdatasync => SyncName::Fdatasync,
            SyncPolicy::Dsync => SyncName::Dsync,
            SyncPolicy::None => SyncName::None,
        }
    }
}

impl From<SyncName> for SyncPolicy {
    fn from(p: SyncName) -> Self {
        match p {
            SyncName::Fdatasync => SyncPolicy::Fdatasync,
            SyncName::Dsync => SyncPolicy::Dsync,
            SyncName::None => SyncPolicy::None,
        }
    }
}

impl fmt::Display for SyncName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SyncPolicy::from(*self).as_str())
    }
}

impl Cell {
    /// A cell of the default workload, [`Workload::RawAppend`] (see [`Cell::with_workload`]).
    pub fn new(cache_mode: CacheMode, fault: Fault, sync: SyncPolicy, format: ImageFormat) -> Cell {
        Cell {
            cache_mode,
            fault,
            sync: sync.into(),
            format,
            workload: Workload::RawAppend,
        }
    }

    pub fn with_workload(self, workload: Workload) -> Cell {
        Cell { workload, ..self }
    }

    pub fn sync_policy(&self) -> SyncPolicy {
        self.sync.into()
    }

    /// `none-power-fdatasync-raw`, then `-WORKLOAD` unless it is raw-append (whose cells keep
    /// the names, hence the seeds, they had before workloads existed): file names, seeds.
    pub fn id(&self) -> String {
        let base = format!(
            "{}-{}-{}-{}",
            self.cache_mode, self.fault, self.sync, self.format
        );
        if self.workload == Workload::RawAppend {
            base
        } else {
            format!("{base}-{}", self.workload)
        }
    }

    /// The cell's contract: one dispatch on the workload's kind.
    pub fn promise(&self) -> Promise {
        match self.workload.kind() {
            WorkloadKind::Raw => {
                promise(self.cache_mode, self.fault, self.sync_policy(), self.format)
            }
            WorkloadKind::Filesystem => {
                let barriers = self.workload.fs().is_some_and(|f| f.barriers);
                crate::fscheck::fs_promise(self.cache_mode, self.fault, self.format, barriers)
            }
        }
    }
}

/// Whether a cell promises that acknowledged records survive, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Promise {
    pub survives: bool,
    pub reason: &'static str,
}

/// The contract table (see `docs/crash-consistency.md` for the long form).
pub fn promise(cache: CacheMode, fault: Fault, sync: SyncPolicy, format: ImageFormat) -> Promise {
    use CacheMode::*;
    let write_through = matches!(cache, Writethrough | Directsync);
    let flushed = sync != SyncPolicy::None;
    let p = |survives, reason| Promise { survives, reason };
    match fault {
        Fault::Kill => match format {
            ImageFormat::Raw => p(
                true,
                "kill, raw: a completed write has left QEMU (host page cache or device), and the host survives",
            ),
            ImageFormat::Qcow2 if write_through => p(
                true,
                "kill, qcow2, write-through: QEMU flushes data and qcow2 metadata before completing each write",
            ),
            ImageFormat::Qcow2 if flushed => p(
                true,
                "kill, qcow2: the guest's flush writes qcow2's cached metadata (L2, refcounts) out of QEMU, even under unsafe (bdrv_co_flush flushes to the OS before it skips the fdatasync)",
            ),
            ImageFormat::Qcow2 => p(
                false,
                "kill, qcow2, no flush: new cluster mappings stay in QEMU's metadata cache until a flush",
            ),
        },
        Fault::Power
        | Fault::PowerSubset
        | Fault::PowerTorn
        | Fault::PowerNbd
        | Fault::PowerNbdSubset
        | Fault::PowerNbdTorn => {
            if write_through {
                p(
                    true,
                    "power, write-through: QEMU flushes each write to stable storage before it completes",
                )
            } else if cache == Unsafe {
                p(
                    false,
                    "power, unsafe: QEMU's contract ignores flushes (no fdatasync of an image file); nothing is promised",
                )
            } else if flushed {
                p(
                    true,
                    "power, write-back: the guest's flush (fdatasync, or the flush behind O_DSYNC) reaches stable storage",
                )
            } else {
                p(
                    false,
                    "power, write-back, no flush: completed writes may sit in a volatile cache",
                )
            }
        }
    }
}

/// The outcome of an iteration or a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Verdict {
    /// Every acknowledged record survived intact; nothing impossible was found.
    #[serde(rename = "ok")]
    Ok,
    /// Acknowledged records were lost or torn where the cell promised nothing.
    #[serde(rename = "loss-allowed")]
    LossAllowed,
    /// QEMU did not run the configured cache mode (`query-block`'s flags differ, or could not
    /// be read): the iteration says nothing about that mode.
    #[serde(rename = "invalid")]
    Invalid,
    /// Loss or corruption where survival was promised, or data that was never written.
    #[serde(rename = "VIOLATION")]
    Violation,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::LossAllowed => "loss-allowed",
            Verdict::Invalid => "invalid",
            Verdict::Violation => "VIOLATION",
        }
    }
}

impl Verdict {
    /// An iteration's verdict: [`Verdict::Invalid`] unless QMP confirmed the cell's cache flags,
    /// else the checker's (`checked`, given the cell's promise).
    pub fn of(
        cell: &Cell,
        qmp_cache: Option<CacheFlags>,
        checked: impl FnOnce(bool) -> Verdict,
    ) -> Verdict {
        if qmp_cache != Some(cell.cache_mode.flags()) {
            return Verdict::Invalid;
        }
        checked(cell.promise().survives)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn survives(cache: CacheMode, fault: Fault, sync: SyncPolicy, format: ImageFormat) -> bool {
        promise(cache, fault, sync, format).survives
    }

    #[test]
    fn the_issue_contract() {
        use CacheMode::*;
        for format in [ImageFormat::Raw, ImageFormat::Qcow2] {
            for sync in [SyncPolicy::Fdatasync, SyncPolicy::Dsync] {
                for cache in CacheMode::ALL {
                    // Flushed writes: every mode promises survival of kill (unsafe too: QEMU
                    // flushes to the OS even under unsafe, see kill_qcow2_unsafe_flushed...);
                    // every mode but unsafe promises survival of a power loss.
                    for fault in Fault::ALL {
                        let expected = cache != Unsafe || fault == Fault::Kill;
                        assert_eq!(
                            survives(cache, fault, sync, format),
                            expected,
                            "{cache} {fault} {sync} {format}"
                        );
                    }
                }
            }
            // No flush: under power only the write-through modes promise anything.
            for cache in CacheMode::ALL {
                for fault in Fault::ALL.into_iter().filter(|f| f.is_power()) {
                    assert_eq!(
                        survives(cache, fault, SyncPolicy::None, format),
                        matches!(cache, Writethrough | Directsync)
                    );
                }
            }
        }
        // Kill: raw images keep completed writes everywhere.
        for cache in CacheMode::ALL {
            for sync in SyncPolicy::ALL {
                assert!(survives(cache, Fault::Kill, sync, ImageFormat::Raw));
            }
        }
        assert!(!survives(
            None,
            Fault::Kill,
            SyncPolicy::None,
            ImageFormat::Qcow2
        ));
    }

    /// kill + qcow2 + unsafe + a guest flush: QEMU's `bdrv_co_flush` (block/io.c) calls the
    /// driver's `bdrv_co_flush_to_os` ("Write back cached data to the OS even with
    /// cache=unsafe") before it skips `flush_to_disk` for BDRV_O_NO_FLUSH; for qcow2 that writes
    /// the cached L2 tables and refcounts into the image file. The host survives a kill, so the
    /// flushed records are readable: promised. Without a flush, nothing leaves QEMU's cache.
    #[test]
    fn kill_qcow2_unsafe_flushed_is_promised_because_qemu_flushes_to_the_os() {
        for sync in [SyncPolicy::Fdatasync, SyncPolicy::Dsync] {
            let p = promise(CacheMode::Unsafe, Fault::Kill, sync, ImageFormat::Qcow2);
            assert!(p.survives && p.reason.contains("bdrv_co_flush"), "{p:?}");
        }
        assert!(!survives(
            CacheMode::Unsafe,
            Fault::Kill,
            SyncPolicy::None,
            ImageFormat::Qcow2
        ));
    }

    /// The rewriting raw workloads promise what raw-append promises, cell by cell: the same
    /// writes and flushes reach the same layers (a discard or write-zeroes is one more request
    /// on the same path, and the writer flushes after it under both flushing policies). What a
    /// promise covers is wider: an acked version must not be rolled back to an older one, and
    /// an acked write-zeroes must read as zeros (see docs/crash-consistency.md).
    #[test]
    fn rewriting_workloads_promise_what_raw_append_promises() {
        for cache in CacheMode::ALL {
            for fault in Fault::ALL {
                for sync in SyncPolicy::ALL {
                    for format in [ImageFormat::Raw, ImageFormat::Qcow2] {
                        let append = Cell::new(cache, fault, sync, format);
                        for w in [Workload::RawOverwrite, Workload::RawDiscard] {
                            assert_eq!(append.with_workload(w).promise(), append.promise());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn unconfirmed_cache_flags_make_an_iteration_invalid() {
        let cell = Cell::new(
            CacheMode::None,
            Fault::Power,
            SyncPolicy::Fdatasync,
            ImageFormat::Raw,
        );
        let ok = |_| Verdict::Violation;
        assert_eq!(
            Verdict::of(&cell, Some(CacheMode::None.flags()), ok),
            Verdict::Violation
        );
        assert_eq!(
            Verdict::of(&cell, Some(CacheMode::Writeback.flags()), ok),
            Verdict::Invalid
        );
        assert_eq!(Verdict::of(&cell, None, ok), Verdict::Invalid);
        assert!(Verdict::Violation > Verdict::Invalid && Verdict::Invalid > Verdict::LossAllowed);
    }

    #[test]
    fn names_round_trip() {
        for f in Fault::ALL {
            assert_eq!(f.as_str().parse::<Fault>().unwrap(), f);
            assert_eq!(
                serde_json::to_value(f).unwrap(),
                serde_json::Value::String(f.as_str().into())
            );
        }
        assert!("reboot"
            .parse::<Fault>()
            .unwrap_err()
            .contains("kill, power"));
        let cell = Cell::new(
            CacheMode::Writeback,
            Fault::PowerTorn,
            SyncPolicy::Dsync,
            ImageFormat::Qcow2,
        );
        assert_eq!(cell.id(), "writeback-power-torn-dsync-qcow2");
        assert_eq!(
            cell.with_workload(Workload::RawOverwrite).id(),
            "writeback-power-torn-dsync-qcow2-raw-overwrite"
        );
        // Cells of reports and ack logs written before workloads existed are raw-append.
        let mut old = serde_json::to_value(cell).unwrap();
        old.as_object_mut().unwrap().remove("workload");
        assert_eq!(serde_json::from_value::<Cell>(old).unwrap(), cell);
        assert_eq!(
            serde_json::to_value(Verdict::Violation).unwrap(),
            "VIOLATION"
        );
        assert!(Verdict::Violation > Verdict::LossAllowed && Verdict::LossAllowed > Verdict::Ok);
    }
}
