//! What the crash-test writer does to the disk under test: the *workload* dimension of the
//! crash-test matrix. One definition for the guest (which runs it) and the host (which names it
//! in the matrix, the reports and the metrics, and verifies what it leaves behind).
//!
//! Raw workloads ([`WorkloadKind::Raw`]) write checksummed records ([`crate::record`]) straight
//! to the block device. The names are the `--workload` values and the `workload` label.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::fsworkload::{FsKind, FsOp, FsWorkload};
use crate::record::SlotPlan;

/// A crash-test workload. To add one: a variant here with its name in [`Workload::as_str`] and
/// [`Workload::ALL`], its [`Workload::kind`] (a new kind of workload gets its arm in each
/// `match` on the kind), the guest side in the writer's dispatch (`kvmio-guest`'s
/// `crash_writer`), the host's verification in `kvmio-crashtest`'s `verify::verify_image`, and
/// its contract in `oracle.rs` (`Cell::promise`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Workload {
    /// Append-only records: record `n` in slot `n`, each slot written once.
    #[default]
    #[serde(rename = "raw-append")]
    RawAppend,
    /// Versioned records rewriting a seeded choice of slots in place
    /// ([`crate::record::SlotPlan::Overwrite`]).
    #[serde(rename = "raw-overwrite")]
    RawOverwrite,
    /// Rewritten records with discards (`BLKDISCARD`) and write-zeroes (`BLKZEROOUT`) of
    /// ranges between them ([`crate::record::SlotPlan::Discard`]); the disk has
    /// `discard=unmap`.
    #[serde(rename = "raw-discard")]
    RawDiscard,
    /// Files on ext4 (default mount: data=ordered, barriers), appended, each append + fsync.
    #[serde(rename = "ext4-append")]
    Ext4Append,
    /// Files on ext4 replaced by write-temp + fsync + rename + fsync(dir).
    #[serde(rename = "ext4-replace")]
    Ext4Replace,
    /// Files on ext4 overwritten in place, each write + fsync.
    #[serde(rename = "ext4-overwrite")]
    Ext4Overwrite,
    /// [`Workload::Ext4Append`] on an ext4 mounted with `barrier=0`: the mis-configuration.
    #[serde(rename = "ext4-nobarrier-append")]
    Ext4NobarrierAppend,
    /// [`Workload::Ext4Replace`] with `barrier=0`.
    #[serde(rename = "ext4-nobarrier-replace")]
    Ext4NobarrierReplace,
    /// [`Workload::Ext4Overwrite`] with `barrier=0`.
    #[serde(rename = "ext4-nobarrier-overwrite")]
    Ext4NobarrierOverwrite,
    /// Files on xfs, appended, each append + fsync.
    #[serde(rename = "xfs-append")]
    XfsAppend,
    /// Files on xfs replaced by write-temp + fsync + rename + fsync(dir).
    #[serde(rename = "xfs-replace")]
    XfsReplace,
    /// Files on xfs overwritten in place, each write + fsync.
    #[serde(rename = "xfs-overwrite")]
    XfsOverwrite,
}

/// Where a workload writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    /// Records on the raw block device, checked slot by slot.
    Raw,
    /// Files on a guest filesystem ([`crate::fsworkload`]), checked file by file on a loop
    /// mount of a copy of the image.
    Filesystem,
}

impl Workload {
    pub const ALL: [Workload; 12] = [
        Workload::RawAppend,
        Workload::RawOverwrite,
        Workload::RawDiscard,
        Workload::Ext4Append,
        Workload::Ext4Replace,
        Workload::Ext4Overwrite,
        Workload::Ext4NobarrierAppend,
        Workload::Ext4NobarrierReplace,
        Workload::Ext4NobarrierOverwrite,
        Workload::XfsAppend,
        Workload::XfsReplace,
        Workload::XfsOverwrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Workload::RawAppend => "raw-append",
            Workload::RawOverwrite => "raw-overwrite",
            Workload::RawDiscard => "raw-discard",
            Workload::Ext4Append => "ext4-append",
            Workload::Ext4Replace => "ext4-replace",
            Workload::Ext4Overwrite => "ext4-overwrite",
            Workload::Ext4NobarrierAppend => "ext4-nobarrier-append",
            Workload::Ext4NobarrierReplace => "ext4-nobarrier-replace",
            Workload::Ext4NobarrierOverwrite => "ext4-nobarrier-overwrite",
            Workload::XfsAppend => "xfs-append",
            Workload::XfsReplace => "xfs-replace",
            Workload::XfsOverwrite => "xfs-overwrite",
        }
    }

    pub fn kind(self) -> WorkloadKind {
        match self.fs() {
            None => WorkloadKind::Raw,
            Some(_) => WorkloadKind::Filesystem,
        }
    }

    /// The slot plan of a [`WorkloadKind::Raw`] workload; `None` for the file workloads.
    pub fn slot_plan(self) -> Option<SlotPlan> {
        match self {
            Workload::RawAppend => Some(SlotPlan::Append),
            Workload::RawOverwrite => Some(SlotPlan::Overwrite),
            Workload::RawDiscard => Some(SlotPlan::Discard),
            _ => None,
        }
    }

    /// Whether the disk must pass the guest's discards down (`-drive discard=unmap`).
    pub fn discards(self) -> bool {
        self == Workload::RawDiscard
    }

    /// The file workload (filesystem, pattern, barriers) of a [`WorkloadKind::Filesystem`]
    /// workload; `None` for the raw ones.
    pub fn fs(self) -> Option<FsWorkload> {
        use FsKind::*;
        use FsOp::*;
        let (fs, op, barriers) = match self {
            Workload::RawAppend | Workload::RawOverwrite | Workload::RawDiscard => return None,
            Workload::Ext4Append => (Ext4, Append, true),
            Workload::Ext4Replace => (Ext4, Replace, true),
            Workload::Ext4Overwrite => (Ext4, Overwrite, true),
            Workload::Ext4NobarrierAppend => (Ext4, Append, false),
            Workload::Ext4NobarrierReplace => (Ext4, Replace, false),
            Workload::Ext4NobarrierOverwrite => (Ext4, Overwrite, false),
            Workload::XfsAppend => (Xfs, Append, true),
            Workload::XfsReplace => (Xfs, Replace, true),
            Workload::XfsOverwrite => (Xfs, Overwrite, true),
        };
        Some(FsWorkload { fs, op, barriers })
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Workload::ALL
            .into_iter()
            .find(|w| w.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Workload::ALL.iter().map(|w| w.as_str()).collect();
                format!("unknown workload {s:?}: use {}", names.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_serde() {
        for w in Workload::ALL {
            assert_eq!(w.as_str().parse::<Workload>(), Ok(w));
            assert_eq!(w.to_string(), w.as_str());
            let json = format!("\"{}\"", w.as_str());
            assert_eq!(serde_json::to_string(&w).unwrap(), json);
            assert_eq!(serde_json::from_str::<Workload>(&json).unwrap(), w);
        }
        let e = "raw".parse::<Workload>().unwrap_err();
        assert!(e.contains("use raw-append"), "{e}");
        assert_eq!(Workload::default(), Workload::RawAppend);
    }

    #[test]
    fn file_workloads_are_named_after_their_filesystem_pattern_and_barriers() {
        let fs: Vec<FsWorkload> = Workload::ALL.iter().filter_map(|w| w.fs()).collect();
        assert_eq!(fs, FsWorkload::all());
        for w in Workload::ALL {
            match w.fs() {
                Some(f) => {
                    assert_eq!(f.name(), w.as_str());
                    assert_eq!(w.kind(), WorkloadKind::Filesystem);
                }
                None => {
                    assert_eq!(w.kind(), WorkloadKind::Raw);
                    assert!(w.slot_plan().is_some(), "{w}");
                }
            }
        }
    }
}
