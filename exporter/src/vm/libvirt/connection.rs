//! The libvirt connection: opened read-write (guest info and passthrough need it), else
//! read-only through the daemon's read-only socket; dropped when libvirt says it is dead, so
//! that the next scrape reconnects.

use std::sync::Arc;

use tokio::time::Instant;
use virt::connect::Connect;

use super::{virt_error, Libvirt};

/// The libvirt connection and whether it is read-only.
#[derive(Debug, Clone)]
pub(super) struct Conn {
    pub(super) connect: Arc<Connect>,
    pub(super) read_only: bool,
}

impl Libvirt {
    /// Opens the connection: read-write (guest info and passthrough need it), else read-only.
    /// Blocking: runs in the pool.
    fn open(uri: &str) -> Result<Conn, String> {
        match Connect::open(Some(uri)) {
            Ok(c) => Ok(Conn {
                connect: Arc::new(c),
                read_only: false,
            }),
            Err(rw) => match Connect::open_read_only(Some(&read_only_uri(uri))) {
                Ok(c) => Ok(Conn {
                    connect: Arc::new(c),
                    read_only: true,
                }),
                Err(_) => Err(format!("cannot connect to {uri}: {}", virt_error(&rw))),
            },
        }
    }

    /// Connects once (at start-up): whether libvirt allowed a read-write connection. The
    /// read-only fallback is warned about, once, with what it costs.
    pub async fn check(&self, deadline: Instant) -> Result<bool, String> {
        self.connection(deadline).await.map(|c| !c.read_only)
    }

    pub(super) async fn connection(&self, deadline: Instant) -> Result<Conn, String> {
        if let Some(c) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(c);
        }
        let uri = self.config.uri.clone();
        let conn = self
            .pool
            .run(deadline, move || Self::open(&uri))
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.config.uri))??;
        if conn.read_only
            && !self
                .warned_read_only
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                uri = %self.config.uri,
                families = "kvmio_qga_up, kvmio_guest_disk_*, kvmio_disk_layer_info{disk}",
                "libvirt refused a read-write connection: connected read-only, so the guest \
                 layer (guest info, agent passthrough) and the monitor passthrough are \
                 unavailable; add kvmio's user to the libvirt group (Debian's polkit rule lets \
                 that group manage libvirt)"
            );
        }
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// Drops the connection if libvirt says it is dead, so that the next scrape reconnects.
    pub(super) async fn check_alive(&self, conn: &Conn, deadline: Instant) {
        let c = conn.connect.clone();
        let alive = self
            .pool
            .run(deadline, move || c.is_alive().unwrap_or(false))
            .await
            .unwrap_or(false);
        if !alive {
            let mut slot = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            if slot
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(&s.connect, &conn.connect))
            {
                *slot = None;
            }
        }
    }
}

/// The URI for the read-only fallback: libvirt picks the daemon's read-only socket itself,
/// except when the URI names a socket (`?socket=PATH`): then its read-only sibling, which every
/// libvirt daemon names `PATH-ro` (`libvirt-sock-ro`, `virtqemud-sock-ro`).
fn read_only_uri(uri: &str) -> String {
    let Some((base, query)) = uri.split_once('?') else {
        return uri.to_owned();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.strip_prefix("socket=") {
            Some(path) if !path.ends_with("-ro") => format!("socket={path}-ro"),
            _ => p.to_owned(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_uris() {
        assert_eq!(read_only_uri("qemu:///system"), "qemu:///system");
        assert_eq!(
            read_only_uri("qemu:///system?socket=/run/x/libvirt-sock"),
            "qemu:///system?socket=/run/x/libvirt-sock-ro"
        );
        assert_eq!(
            read_only_uri("qemu+unix:///system?mode=direct&socket=/s-ro"),
            "qemu+unix:///system?mode=direct&socket=/s-ro"
        );
    }
}
