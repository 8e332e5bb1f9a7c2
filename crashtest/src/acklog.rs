//! The ack log: what the host received from the guest writer, the one input verification
//! needs besides the image.
//!
//! A JSON header line (the run's record parameters and its cell: everything needed to rebuild
//! the record the writer put in any slot) followed by the guest's `ACK`/`DONE` lines exactly as
//! the host received them on the control port ([`GuestMessage`]'s text form). The crash test
//! writes it as acks arrive ([`crate::run`]); `kvmio-crashtest verify` and the run's own
//! verification read it back.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use kvmio_guest::fsworkload::FileAck;
use kvmio_guest::protocol::GuestMessage;
use kvmio_guest::record::{Digest, RecordSpec};
use serde::{Deserialize, Serialize};

use crate::oracle::Cell;

/// Marks the header line of an ack log and its version.
pub const ACK_LOG_VERSION: u32 = 1;

/// First line of an ack log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AckLogHeader {
    pub kvmio_ack_log: u32,
    pub cell: Cell,
    pub iteration: u32,
    /// The iteration's seed (everything random in it derives from this).
    pub seed: u64,
    pub run_id: u64,
    pub payload_seed: u64,
    pub record_size: usize,
    /// Guest-visible disk size in bytes.
    pub disk_size: u64,
    /// The image's file name (beside the ack log when kept).
    pub image: String,
    #[serde(default)]
    pub ack_early: bool,
    #[serde(default)]
    pub lie_about_flush: bool,
}

impl AckLogHeader {
    /// The header of an honest run (no self-test switches) of `cell` writing `spec`'s records
    /// to a disk of `disk_size` bytes in the image file `image`.
    pub fn new(cell: Cell, spec: &RecordSpec, disk_size: u64, image: &str) -> AckLogHeader {
        AckLogHeader {
            kvmio_ack_log: ACK_LOG_VERSION,
            cell,
            iteration: 1,
            seed: 0,
            run_id: spec.run_id,
            payload_seed: spec.seed,
            record_size: spec.size,
            disk_size,
            image: image.to_string(),
            ack_early: false,
            lie_about_flush: false,
        }
    }

    /// The records of the run, with its raw workload's slot plan.
    pub fn spec(&self) -> Result<RecordSpec, String> {
        Ok(
            RecordSpec::new(self.run_id, self.payload_seed, self.record_size)?
                .with_plan(self.cell.workload.slot_plan().unwrap_or_default()),
        )
    }

    pub fn slots(&self) -> u64 {
        self.disk_size / self.record_size as u64
    }
}

/// An acknowledgement as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub seq: u64,
    pub slot: u64,
    pub digest: Digest,
}

/// A parsed ack log.
#[derive(Debug, Clone)]
pub struct AckLog {
    pub header: AckLogHeader,
    pub acks: Vec<Ack>,
    /// `DONE n`: the writer filled the disk before the fault.
    pub done: Option<u64>,
    /// A file workload's acks (`FACK`), as received.
    pub file_acks: Vec<FileAck>,
}

/// Why an ack log could not be read. The inner error is only the `source`.
#[derive(Debug, thiserror::Error)]
pub enum AckLogError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a kvmio ack log: {detail}")]
    BadAckLog { path: PathBuf, detail: String },
    #[error("{path} is not a kvmio ack log: its first line is not an ack log header")]
    BadHeader {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl AckLog {
    pub fn read(path: &Path) -> Result<AckLog, AckLogError> {
        let file = File::open(path).map_err(|source| AckLogError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |detail: String| AckLogError::BadAckLog {
            path: path.to_path_buf(),
            detail,
        };
        let mut lines = BufReader::new(file).lines();
        let first = lines
            .next()
            .ok_or_else(|| bad("empty file".into()))?
            .map_err(|source| AckLogError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        let header: AckLogHeader =
            serde_json::from_str(&first).map_err(|source| AckLogError::BadHeader {
                path: path.to_path_buf(),
                source,
            })?;
        if header.kvmio_ack_log != ACK_LOG_VERSION {
            return Err(bad(format!(
                "version {} (this kvmio-crashtest reads version {ACK_LOG_VERSION})",
                header.kvmio_ack_log
            )));
        }
        header.spec().map_err(|e| bad(e.to_string()))?;
        let mut log = AckLog {
            header,
            acks: Vec::new(),
            done: None,
            file_acks: Vec::new(),
        };
        for (n, line) in lines.enumerate() {
            let line = line.map_err(|source| AckLogError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            match GuestMessage::parse(&line) {
                Some(GuestMessage::Ack { seq, slot, digest }) => {
                    log.acks.push(Ack { seq, slot, digest })
                }
                Some(GuestMessage::FileAck(ack)) => {
                    if log.file_acks.len() as u64 >= kvmio_guest::fsworkload::MAX_OPS {
                        return Err(bad(format!(
                            "line {}: more FACK lines than a file workload's {} operations",
                            n + 2,
                            kvmio_guest::fsworkload::MAX_OPS
                        )));
                    }
                    log.file_acks.push(ack)
                }
                Some(GuestMessage::Done { records }) => log.done = Some(records),
                _ => {
                    return Err(bad(format!(
                        "line {}: not an ACK, FACK or DONE line",
                        n + 2
                    )))
                }
            }
        }
        Ok(log)
    }
}

/// Appends the acks of one iteration as they arrive.
#[derive(Debug)]
pub struct AckLogWriter {
    file: io::BufWriter<File>,
    path: PathBuf,
}

impl AckLogWriter {
    /// Creates `path`, which must not exist.
    pub fn create(path: &Path, header: &AckLogHeader) -> io::Result<AckLogWriter> {
        let file = File::options().write(true).create_new(true).open(path)?;
        let mut w = AckLogWriter {
            file: io::BufWriter::new(file),
            path: path.to_path_buf(),
        };
        let line = serde_json::to_string(header).expect("header serialises");
        writeln!(w.file, "{line}")?;
        Ok(w)
    }

    pub fn append(&mut self, message: &GuestMessage) -> io::Result<()> {
        writeln!(self.file, "{message}")
    }

    pub fn finish(mut self) -> io::Result<PathBuf> {
        self.file.flush()?;
        self.file.get_ref().sync_data()?;
        Ok(self.path)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::oracle::Fault;
    use crate::vm::ImageFormat;
    use kvmio_guest::writer::SyncPolicy;
    use kvmio_qemu::CacheMode;

    /// A raw, power-faulted cell's log header: 64 slots of 4 KiB.
    pub(crate) fn header() -> AckLogHeader {
        let cell = Cell::new(
            CacheMode::None,
            Fault::Power,
            SyncPolicy::Fdatasync,
            ImageFormat::Raw,
        );
        let spec = RecordSpec::new(0xabc, 99, 4096).expect("a valid record size");
        AckLogHeader::new(cell, &spec, 64 * 4096, "x.raw")
    }

    #[test]
    fn ack_log_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.acks");
        let h = header();
        let mut w = AckLogWriter::create(&path, &h).unwrap();
        let m = GuestMessage::Ack {
            seq: 0,
            slot: 0,
            digest: [7; 32],
        };
        w.append(&m).unwrap();
        w.append(&GuestMessage::Done { records: 1 }).unwrap();
        w.finish().unwrap();
        let log = AckLog::read(&path).unwrap();
        assert_eq!(log.header, h);
        assert_eq!(log.acks.len(), 1);
        assert_eq!(log.done, Some(1));
        // Never overwrites.
        assert!(AckLogWriter::create(&path, &h).is_err());
        std::fs::write(&path, "not json\n").unwrap();
        let e = AckLog::read(&path).unwrap_err().to_string();
        assert!(e.contains("not a kvmio ack log"), "{e}");
    }
}
