//! Line protocol on the control port, guest → host.
//!
//! `READY <kernel-release>` once the guest is up (modules loaded, guest agent started), then
//! role-specific lines. The host never trusts these lines for anything but test verdicts.
//!
//! The crash-test writer adds `ACK <sequence> <slot> <sha256-hex>` after each record's
//! durability point and `DONE <records>` when the disk is full (see [`crate::writer`]).

use std::fmt;

use crate::record::{self, Digest};

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
    /// The writer wrote `records` records and stopped (the disk is full).
    Done { records: u64 },
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
        }
    }
}

impl GuestMessage {
    /// Parses one line (without its newline). Unknown lines are `None`: the console of a
    /// booting guest can leak into nothing here, but a newer guest program may say more.
    pub fn parse(line: &str) -> Option<GuestMessage> {
        let line = line.trim_end_matches(['\r', '\n']);
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
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
            "DONE" => Some(GuestMessage::Done {
                records: rest.parse().ok()?,
            }),
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
    }
}
