//! What the crash-test writer does to the disk under test: the *workload* dimension of the
//! crash-test matrix. One definition for the guest (which runs it) and the host (which names it
//! in the matrix, the reports and the metrics, and verifies what it leaves behind).
//!
//! Raw workloads ([`WorkloadKind::Raw`]) write checksummed records ([`crate::record`]) straight
//! to the block device. The names are the `--workload` values and the `workload` label.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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
}

/// Where a workload writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    /// Records on the raw block device, checked slot by slot.
    Raw,
}

impl Workload {
    pub const ALL: [Workload; 1] = [Workload::RawAppend];

    pub fn as_str(self) -> &'static str {
        match self {
            Workload::RawAppend => "raw-append",
        }
    }

    pub fn kind(self) -> WorkloadKind {
        match self {
            Workload::RawAppend => WorkloadKind::Raw,
        }
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
}
