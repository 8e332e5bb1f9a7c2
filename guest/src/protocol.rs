//! Line protocol on the control port, both ways: one place for it.
//!
//! Guest → host: `READY <kernel-release>` once the guest is up (modules loaded, guest agent
//! started), then role-specific lines. The host never trusts these lines for anything but test
//! verdicts, and reads them in bounded lines (the crash tester's `CONTROL_MAX_LINE_BYTES`).
//!
//! The crash-test writer (`kvmio.role=writer`) says `READY` and then waits for the host's one
//! line, `START key=value...` ([`HostMessage::Start`]): its parameters, the host's wall clock and
//! fresh entropy. That line comes after the guest is ready, so that the crash tester can save a
//! ready guest once and restore it for many iterations, each with its own `START`. The writer
//! answers `STATE key=value...` ([`GuestState`]: what the guest sees of its disk, cache and
//! clock, which the host checks), then `ACK <sequence> <slot> <sha256-hex>` after each record's
//! durability point and `DONE <records>` when the disk is full (see [`crate::writer`]).
//!
//! The guest reads the host's line with [`read_host_line`], bounded by [`HOST_MAX_LINE_BYTES`].

use std::fmt;
use std::io::{self, Read};

use crate::record::{self, Digest};
use crate::writer::WriterParams;

/// The longest line the host sends the guest (a `START` line is about 250 bytes).
pub const HOST_MAX_LINE_BYTES: usize = 4096;

/// The value of `key=` among the whitespace-separated words of `line`.
pub fn word<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

/// Reads one line (without its newline) of at most [`HOST_MAX_LINE_BYTES`] bytes, a byte at a
/// time so that nothing after the newline is consumed. `None` at end of file before any byte.
pub fn read_host_line(r: &mut impl Read) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match r.read(&mut byte) {
            Ok(0) if line.is_empty() => return Ok(None),
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                if line.len() == HOST_MAX_LINE_BYTES {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a host line over {HOST_MAX_LINE_BYTES} bytes"),
                    ));
                }
                line.push(byte[0]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a host line that is not UTF-8"))
}

/// What the host tells the guest program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMessage {
    /// Start the writer with these parameters, after setting the clock to `now_ns` (Unix time,
    /// nanoseconds) and mixing `entropy` into the kernel's random pool.
    Start {
        writer: WriterParams,
        now_ns: u64,
        entropy: [u8; 32],
    },
}

impl fmt::Display for HostMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMessage::Start {
                writer,
                now_ns,
                entropy,
            } => write!(
                f,
                "START {} now_ns={now_ns} entropy={}",
                writer.words().join(" "),
                record::to_hex(entropy)
            ),
        }
    }
}

impl HostMessage {
    /// Parses one line from the host (without its newline).
    pub fn parse(line: &str) -> Result<HostMessage, String> {
        let line = line.trim_end_matches(['\r', '\n']);
        let (word0, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word0 {
            "START" => {
                let writer = WriterParams::from_words(rest)?;
                let now_ns = word(rest, "now_ns")
                    .and_then(|v| v.parse().ok())
                    .ok_or("START needs now_ns=NANOSECONDS")?;
                let entropy = word(rest, "entropy")
                    .and_then(record::digest_from_hex)
                    .ok_or("START needs entropy=64 hex digits")?;
                Ok(HostMessage::Start {
                    writer,
                    now_ns,
                    entropy,
                })
            }
            _ => Err(format!(
                "unknown host line {:?}",
                line.chars().take(40).collect::<String>()
            )),
        }
    }
}

/// What the writer sees once the host's `START` is applied, for the host to check that a
/// restored guest is, for the experiment, the guest a fresh boot would give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestState {
    /// `/sys/block/DEV/queue/write_cache` says `write back` (the virtio write cache the guest
    /// driver negotiated).
    pub write_cache: bool,
    /// The disk's size as the guest kernel knows it.
    pub disk_bytes: u64,
    /// Partitions the guest kernel found on the disk (a fresh disk has none).
    pub partitions: u32,
    /// Kilobytes of block-device data in the guest's page cache (`Buffers:` in
    /// `/proc/meminfo`): data read from a disk that the guest still holds.
    pub cached_kib: u64,
    /// The guest's wall clock after setting it (Unix time, nanoseconds).
    pub clock_ns: u64,
    /// The guest's uptime (monotonic clock), milliseconds.
    pub uptime_ms: u64,
    /// `/sys/block/DEV/queue/discard_max_bytes`: the largest discard the disk takes (0: none).
    pub discard_max_bytes: u64,
    /// `/sys/block/DEV/queue/write_zeroes_max_bytes` (0: write-zeroes are written as zeros).
    pub write_zeroes_max_bytes: u64,
}

/// One line from the guest program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestMessage {
    /// The guest has booted, loaded its modules and started qemu-ga.
    Ready { kernel_release: String },
    /// A role reports a failure it cannot recover from.
    Error { message: String },
    /// The writer's record `seq` in `slot`, whose sha256 is `digest`, reached its durability
    /// point.
    Ack { seq: u64, slot: u64, digest: Digest },
    /// The writer wrote `records` records and stopped (the disk is full); a file workload did
    /// `records` operations (its whole plan).
    Done { records: u64 },
    /// A file workload's operation reached its durability point (`FACK ...`, see
    /// [`crate::fsworkload::FileAck`]).
    FileAck(crate::fsworkload::FileAck),
    /// The writer applied the host's `START` and sees this.
    State(GuestState),
}

impl fmt::Display for GuestMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestMessage::Ready { kernel_release } => write!(f, "READY {kernel_release}"),
            GuestMessage::Error { message } => {
                write!(f, "ERROR {}", message.replace(['\n', '\r'], " "))
            }
            GuestMessage::Ack { seq, slot, digest } => {
                write!(f, "ACK {seq} {slot} {}", record::to_hex(digest))
            }
            GuestMessage::Done { records } => write!(f, "DONE {records}"),
            GuestMessage::FileAck(ack) => write!(f, "{ack}"),
            GuestMessage::State(s) => write!(
                f,
                "STATE write_cache={} disk_bytes={} partitions={} cached_kib={} clock_ns={} uptime_ms={} discard_max_bytes={} write_zeroes_max_bytes={}",
                if s.write_cache { "back" } else { "through" },
                s.disk_bytes,
                s.partitions,
                s.cached_kib,
                s.clock_ns,
                s.uptime_ms,
                s.discard_max_bytes,
                s.write_zeroes_max_bytes
            ),
        }
    }
}

impl GuestMessage {
    /// Parses one line (without its newline). Unknown lines are `None`: the console of a
    /// booting guest can leak into nothing here, but a newer guest program may say more.
    pub fn parse(line: &str) -> Option<GuestMessage> {
        let line = line.trim_end_matches(['\r', '\n']);
        let (first, rest) = line.split_once(' ').unwrap_or((line, ""));
        match first {
            "READY" => Some(GuestMessage::Ready {
                kernel_release: rest.to_string(),
            }),
            "ERROR" => Some(GuestMessage::Error {
                message: rest.to_string(),
            }),
            "ACK" => {
                let mut it = rest.split(' ');
                let seq = it.next()?.parse().ok()?;
                let slot = it.next()?.parse().ok()?;
                let digest = record::digest_from_hex(it.next()?)?;
                if it.next().is_some() {
                    return None;
                }
                Some(GuestMessage::Ack { seq, slot, digest })
            }
            "FACK" => crate::fsworkload::FileAck::parse_words(rest).map(GuestMessage::FileAck),
            "DONE" => Some(GuestMessage::Done {
                records: rest.parse().ok()?,
            }),
            "STATE" => {
                let num = |key: &str| word(rest, key)?.parse().ok();
                Some(GuestMessage::State(GuestState {
                    write_cache: match word(rest, "write_cache")? {
                        "back" => true,
                        "through" => false,
                        _ => return None,
                    },
                    disk_bytes: num("disk_bytes")?,
                    partitions: num("partitions")?.try_into().ok()?,
                    cached_kib: num("cached_kib")?,
                    clock_ns: num("clock_ns")?,
                    uptime_ms: num("uptime_ms")?,
                    discard_max_bytes: num("discard_max_bytes").unwrap_or(0),
                    write_zeroes_max_bytes: num("write_zeroes_max_bytes").unwrap_or(0),
                }))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for m in [
            GuestMessage::Ready {
                kernel_release: "6.1.0-56-amd64".into(),
            },
            GuestMessage::Error {
                message: "no disk".into(),
            },
            GuestMessage::Ack {
                seq: 12,
                slot: 12,
                digest: [0xab; 32],
            },
            GuestMessage::Done { records: 16384 },
            GuestMessage::FileAck(crate::fsworkload::FileAck {
                seq: 3,
                name: "f1".into(),
                version: 2,
                len: 100,
                digest: [0xcd; 32],
            }),
            GuestMessage::State(GuestState {
                write_cache: false,
                disk_bytes: 64 << 20,
                partitions: 0,
                cached_kib: 0,
                clock_ns: 1_764_000_000_123_456_789,
                uptime_ms: 4321,
                discard_max_bytes: 1 << 30,
                write_zeroes_max_bytes: 0,
            }),
        ] {
            assert_eq!(GuestMessage::parse(&m.to_string()), Some(m));
        }
        assert_eq!(GuestMessage::parse("HELLO"), None);
        // A truncated or padded ACK is not an ACK.
        assert_eq!(GuestMessage::parse("ACK 1 1 abcd"), None);
        assert_eq!(
            GuestMessage::parse(&format!("ACK 1 1 {} extra", "0".repeat(64))),
            None
        );
        assert_eq!(GuestMessage::parse("DONE many"), None);
        assert_eq!(GuestMessage::parse("STATE write_cache=maybe"), None);
    }

    #[test]
    fn host_lines_round_trip_and_are_bounded() {
        let start = HostMessage::Start {
            writer: WriterParams {
                run_id: 0xfeed,
                seed: 7,
                sync: crate::writer::SyncPolicy::Fdatasync,
                record_size: 4096,
                dev: "/dev/vda".into(),
                records: None,
                ack_early: false,
                workload: crate::workload::Workload::RawAppend,
            },
            now_ns: 1_764_000_000_000_000_000,
            entropy: [0x5a; 32],
        };
        let line = start.to_string();
        assert!(line.len() < HOST_MAX_LINE_BYTES / 8, "{line}");
        assert_eq!(HostMessage::parse(&line), Ok(start));
        assert!(HostMessage::parse("START run=1 seed=1 sync=none")
            .unwrap_err()
            .contains("now_ns"));
        assert!(HostMessage::parse("REBOOT").is_err());

        // Two lines in a row: each read stops at its newline.
        let mut input: &[u8] = b"START a\nSTART b\n";
        assert_eq!(
            read_host_line(&mut input).unwrap().as_deref(),
            Some("START a")
        );
        assert_eq!(
            read_host_line(&mut input).unwrap().as_deref(),
            Some("START b")
        );
        assert_eq!(read_host_line(&mut input).unwrap(), None);
        // An endless line is refused once over the bound, not buffered.
        let long = vec![b'x'; HOST_MAX_LINE_BYTES + 1];
        let e = read_host_line(&mut long.as_slice()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
