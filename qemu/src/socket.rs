//! Connecting to a QEMU socket, shared by the QMP and guest-agent clients.

use std::path::Path;

use tokio::net::UnixStream;
use tokio::time::timeout;

use crate::{Error, Limits, Result};

/// Connects to a unix socket within `limits.call_timeout`: a listener whose backlog is full
/// (a QEMU stopped with SIGSTOP keeps accepting into it, then never answers) must not stall a
/// scrape.
pub(crate) async fn connect(path: &Path, limits: Limits) -> Result<UnixStream> {
    match timeout(limits.call_timeout, UnixStream::connect(path)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(Error::Connect {
            path: path.to_owned(),
            source,
        }),
        Err(_) => Err(Error::Timeout {
            what: format!("a connection to {}", path.display()),
        }),
    }
}
