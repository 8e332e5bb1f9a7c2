//! The one error type of this crate.
//!
//! Callers (the exporter, the crash tester) mostly need to tell three things apart: QEMU said no
//! ([`Error::Command`]), the peer is gone or unresponsive ([`Error::Closed`], [`Error::Timeout`],
//! [`Error::Io`]), or the peer said something we cannot trust ([`Error::Json`],
//! [`Error::Protocol`], [`Error::LineTooLong`], ...). Inner errors sit in `#[source]` so that
//! every message stays one line and is not repeated by error reporters that walk the chain.

use std::io;
use std::path::PathBuf;

/// Everything a QMP or guest-agent call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Unix socket could not be connected.
    #[error("cannot connect to {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Reading or writing the socket failed.
    #[error("socket I/O failed")]
    Io(#[source] io::Error),

    /// The peer did not answer within the call's time limit.
    #[error("timed out waiting for {what}")]
    Timeout { what: String },

    /// The peer sent a line longer than `Limits::max_line_bytes`; it was not buffered.
    #[error("peer sent a line longer than {limit} bytes")]
    LineTooLong { limit: usize },

    /// The peer sent a line that is not JSON.
    #[error("peer sent a line that is not valid JSON")]
    Json(#[source] serde_json::Error),

    /// The reply is JSON, but the value of a successful reply does not have the expected type.
    #[error("unexpected reply to {command}")]
    Decode {
        command: String,
        #[source]
        source: serde_json::Error,
    },

    /// The peer sent JSON of an unexpected shape (not a reply, wrong id in a sync, bad base64, ...).
    #[error("protocol error: {0}")]
    Protocol(String),

    /// A result would exceed a size limit set by the caller.
    #[error("{what} exceeds the limit of {limit} bytes")]
    TooLarge { what: String, limit: usize },

    /// QEMU or the agent answered `{"error": {"class": ..., "desc": ...}}`.
    #[error("{class}: {desc}")]
    Command { class: String, desc: String },

    /// The peer closed the connection.
    #[error("peer closed the connection")]
    Closed,

    /// The command went through another program that failed to pass it on (libvirt's monitor
    /// or agent passthrough): the command may not have reached QEMU.
    #[error("{via} failed")]
    Passthrough {
        via: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// The QAPI error class of a [`Error::Command`] (`GenericError`, `CommandNotFound`, ...).
    pub fn command_class(&self) -> Option<&str> {
        match self {
            Error::Command { class, .. } => Some(class),
            _ => None,
        }
    }

    /// Whether the error says nothing about the connection itself: QEMU answered, with an error.
    pub fn is_command(&self) -> bool {
        matches!(self, Error::Command { .. })
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset => Error::Closed,
            _ => Error::Io(e),
        }
    }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn messages_are_one_line_and_do_not_repeat_the_source() {
        let e = Error::Connect {
            path: "/run/x.sock".into(),
            source: io::Error::new(io::ErrorKind::NotFound, "no such file"),
        };
        let msg = e.to_string();
        assert_eq!(msg, "cannot connect to /run/x.sock");
        assert!(e.source().is_some());
        let e = Error::Command {
            class: "GenericError".into(),
            desc: "Device 'x' not found".into(),
        };
        assert_eq!(e.to_string(), "GenericError: Device 'x' not found");
        assert_eq!(e.command_class(), Some("GenericError"));
    }

    #[test]
    fn peer_gone_io_errors_become_closed() {
        let e: Error = io::Error::from(io::ErrorKind::BrokenPipe).into();
        assert!(matches!(e, Error::Closed));
        let e: Error = io::Error::from(io::ErrorKind::PermissionDenied).into();
        assert!(matches!(e, Error::Io(_)));
    }
}
