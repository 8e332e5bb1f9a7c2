//! Line protocol on the control port, guest → host.
//!
//! `READY <kernel-release>` once the guest is up (modules loaded, guest agent started), then
//! role-specific lines. The host never trusts these lines for anything but test verdicts.

use std::fmt;

/// One line from the guest program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestMessage {
    /// The guest has booted, loaded its modules and started qemu-ga.
    Ready { kernel_release: String },
    /// A role reports a failure it cannot recover from.
    Error { message: String },
}

impl fmt::Display for GuestMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestMessage::Ready { kernel_release } => write!(f, "READY {kernel_release}"),
            GuestMessage::Error { message } => {
                write!(f, "ERROR {}", message.replace(['\n', '\r'], " "))
            }
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
        ] {
            assert_eq!(GuestMessage::parse(&m.to_string()), Some(m));
        }
        assert_eq!(GuestMessage::parse("HELLO"), None);
    }
}
