//! Bounds on every call, so that a hung or hostile peer costs a bounded amount of time and memory.

use std::time::Duration;

/// Time and size limits of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest a call (handshake, command, sync) may take, from sending to the parsed reply.
    pub call_timeout: Duration,
    /// The longest reply line accepted. Longer lines are skipped, never buffered whole.
    pub max_line_bytes: usize,
}

impl Limits {
    /// The QMP default: 5 s per call, 1 MiB per line (`query-pci` and `query-blockstats` of a
    /// VM with many disks run to tens of KiB).
    pub const DEFAULT: Limits = Limits {
        call_timeout: Duration::from_secs(5),
        max_line_bytes: 1024 * 1024,
    };

    /// The same limits with another call timeout.
    pub fn with_call_timeout(self, call_timeout: Duration) -> Self {
        Limits {
            call_timeout,
            ..self
        }
    }

    /// The same limits with another line limit.
    pub fn with_max_line_bytes(self, max_line_bytes: usize) -> Self {
        Limits {
            max_line_bytes,
            ..self
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}
