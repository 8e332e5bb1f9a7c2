//! Parameters of the crash-test writer role (`kvmio.role=writer`). They reach the guest over the
//! control port after it is ready (the `START` line of [`crate::protocol`]), never on the kernel
//! command line: the crash tester may restore one saved guest for many iterations, and what
//! varies per iteration must not be baked into that guest. The host writes them with
//! [`WriterParams::words`]; the guest reads them back with [`WriterParams::from_words`].
//!
//! The writer writes records (see [`crate::record`]) to the raw disk `dev`, slot after slot,
//! and after each record's durability point under `sync` it sends
//! [`crate::protocol::GuestMessage::Ack`] on the control port:
//!
//! * `fdatasync`: O_DIRECT write, then `fdatasync` (the guest flushes the disk's write cache);
//! * `dsync`: O_DIRECT|O_DSYNC write (a FUA write, emulated by Linux with a flush when the
//!   virtio disk has a volatile cache);
//! * `none`: O_DIRECT write, no flush: the ack means only "the device completed the write".
//!
//! `ack_early=1` is a deliberately broken writer for the checker's self-test: it acks as
//! soon as the write returns and postpones the policy's flush to the end of the run.

use std::fmt;
use std::str::FromStr;

use crate::record::{self, RecordSpec};
use crate::workload::Workload;

pub const RUN_PARAM: &str = "run";
pub const SEED_PARAM: &str = "seed";
pub const SYNC_PARAM: &str = "sync";
pub const RECORD_PARAM: &str = "record";
pub const DEV_PARAM: &str = "dev";
pub const RECORDS_PARAM: &str = "records";
pub const ACK_EARLY_PARAM: &str = "ack_early";
pub const WORKLOAD_PARAM: &str = "workload";

/// The longest device path the writer takes.
const MAX_DEV_BYTES: usize = 256;

/// When the writer considers a record durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SyncPolicy {
    Fdatasync,
    Dsync,
    None,
}

impl SyncPolicy {
    pub const ALL: [SyncPolicy; 3] = [SyncPolicy::Fdatasync, SyncPolicy::Dsync, SyncPolicy::None];

    pub fn as_str(self) -> &'static str {
        match self {
            SyncPolicy::Fdatasync => "fdatasync",
            SyncPolicy::Dsync => "dsync",
            SyncPolicy::None => "none",
        }
    }
}

impl fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        SyncPolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown sync policy {s:?}: use fdatasync, dsync or none"))
    }
}

/// Everything the writer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterParams {
    pub run_id: u64,
    pub seed: u64,
    pub sync: SyncPolicy,
    pub record_size: usize,
    /// The disk under test inside the guest, e.g. `/dev/vda`.
    pub dev: String,
    /// Stop after this many records (default: when the disk is full).
    pub records: Option<u64>,
    /// Test-only: ack before the durability point.
    pub ack_early: bool,
    /// What to write (absent from a `START` line: [`Workload::RawAppend`]).
    pub workload: Workload,
}

impl WriterParams {
    /// The records of a raw workload, with the workload's slot plan.
    pub fn spec(&self) -> Result<RecordSpec, String> {
        Ok(RecordSpec::new(self.run_id, self.seed, self.record_size)?
            .with_plan(self.workload.slot_plan().unwrap_or_default()))
    }

    /// `key=value` words for the control line (see [`crate::protocol::HostMessage`]).
    pub fn words(&self) -> Vec<String> {
        let mut p = vec![
            format!("{RUN_PARAM}={:016x}", self.run_id),
            format!("{SEED_PARAM}={}", self.seed),
            format!("{SYNC_PARAM}={}", self.sync),
            format!("{RECORD_PARAM}={}", self.record_size),
            format!("{DEV_PARAM}={}", self.dev),
            format!("{WORKLOAD_PARAM}={}", self.workload),
        ];
        if let Some(n) = self.records {
            p.push(format!("{RECORDS_PARAM}={n}"));
        }
        if self.ack_early {
            p.push(format!("{ACK_EARLY_PARAM}=1"));
        }
        p
    }

    /// Reads the parameters back from [`WriterParams::words`] (other words are ignored).
    pub fn from_words(line: &str) -> Result<WriterParams, String> {
        let get = |key: &str| crate::protocol::word(line, key).map(str::to_string);
        let need = |key: &str| get(key).ok_or_else(|| format!("{key}= missing"));
        let run_id = u64::from_str_radix(&need(RUN_PARAM)?, 16)
            .map_err(|_| format!("{RUN_PARAM} takes 16 hex digits"))?;
        let seed = need(SEED_PARAM)?
            .parse()
            .map_err(|_| format!("{SEED_PARAM} takes a whole number"))?;
        let sync = need(SYNC_PARAM)?.parse()?;
        let record_size = match get(RECORD_PARAM) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("{RECORD_PARAM} takes a whole number of bytes"))?,
            None => record::DEFAULT_RECORD_SIZE,
        };
        let dev = get(DEV_PARAM).unwrap_or_else(|| "/dev/vda".to_string());
        if dev.len() > MAX_DEV_BYTES || !dev.starts_with("/dev/") {
            return Err(format!(
                "{DEV_PARAM} takes a device path under /dev/ of at most {MAX_DEV_BYTES} bytes"
            ));
        }
        let records = match get(RECORDS_PARAM) {
            Some(v) => Some(
                v.parse()
                    .map_err(|_| format!("{RECORDS_PARAM} takes a whole number"))?,
            ),
            None => None,
        };
        let ack_early = get(ACK_EARLY_PARAM).is_some_and(|v| v == "1");
        let workload = match get(WORKLOAD_PARAM) {
            Some(v) => v.parse()?,
            None => Workload::RawAppend,
        };
        let params = WriterParams {
            run_id,
            seed,
            sync,
            record_size,
            dev,
            records,
            ack_early,
            workload,
        };
        params.spec()?;
        Ok(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for (records, ack_early, workload) in [
            (None, false, Workload::RawAppend),
            (Some(10), true, Workload::RawAppend),
        ] {
            let p = WriterParams {
                run_id: 0x0123_4567_89ab_cdef,
                seed: u64::MAX,
                sync: SyncPolicy::Dsync,
                record_size: 8192,
                dev: "/dev/vdb".into(),
                records,
                ack_early,
                workload,
            };
            let line = format!("START {} now_ns=1", p.words().join(" "));
            assert_eq!(WriterParams::from_words(&line), Ok(p));
        }
    }

    #[test]
    fn bad_params_are_reported() {
        assert!(WriterParams::from_words("seed=1 sync=none")
            .unwrap_err()
            .contains("run="));
        let e = WriterParams::from_words("run=1 seed=1 sync=sometimes").unwrap_err();
        assert!(e.contains("fdatasync, dsync or none"), "{e}");
        let e = WriterParams::from_words("run=1 seed=1 sync=none record=1000").unwrap_err();
        assert!(e.contains("multiple of 512"), "{e}");
        let e = WriterParams::from_words("run=1 seed=1 sync=none dev=/etc/passwd").unwrap_err();
        assert!(e.contains("under /dev/"), "{e}");
        let e = WriterParams::from_words("run=1 seed=1 sync=none workload=mmap").unwrap_err();
        assert!(e.contains("unknown workload"), "{e}");
        // A START line of a host without workloads means the append-only records.
        let p = WriterParams::from_words("run=1 seed=1 sync=none").unwrap();
        assert_eq!(p.workload, Workload::RawAppend);
    }
}
