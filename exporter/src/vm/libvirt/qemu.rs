//! A libvirt domain's QEMU layer: block statistics (`virDomainListGetStats`) and the domain
//! XML (cached) into the snapshot of [`super::block`]; with `--libvirt.qmp-passthrough`, the
//! monitor's own queries through `virDomainQemuMonitorCommand`. Plus the QEMU process's IO.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::passthrough::LibvirtMonitor;
use super::{block, domxml, ffi, virt_error, DomainState, DomainTarget, Libvirt};
use crate::config::Config;
use crate::errors::chain;
use crate::vm::monitor;
use crate::vm::qmp::{self, QmpSnapshot, QMP_MAX_LINE_BYTES};

/// A domain's XML is read again after this long (and whenever its disk set changes).
const XML_TTL: Duration = Duration::from_secs(60);

impl Libvirt {
    pub(super) async fn qemu_layer(
        &self,
        t: &DomainTarget,
        st: &mut DomainState,
        config: &Config,
        deadline: Instant,
        pid: Option<u32>,
    ) -> Result<QmpSnapshot, String> {
        let domain = t.domain.clone();
        let stats = self
            .pool
            .run(deadline, move || {
                ffi::domain_stats(
                    &domain,
                    virt_sys::VIR_DOMAIN_STATS_STATE | virt_sys::VIR_DOMAIN_STATS_BLOCK,
                    virt_sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING
                        | virt_sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT,
                )
            })
            .await
            .map_err(|e| format!("block statistics: {e}"))?
            .map_err(|e| format!("block statistics: {}", virt_error(&e)))?;
        let per_disk = block::disk_stats(&stats);
        let names: BTreeSet<String> = per_disk.keys().cloned().collect();
        let fresh = st
            .xml
            .as_ref()
            .is_some_and(|(at, known, _)| *known == names && at.elapsed() < XML_TTL);
        if !fresh {
            let domain = t.domain.clone();
            let xml = self
                .pool
                .run(deadline, move || domain.xml_desc(0))
                .await
                .map_err(|e| format!("domain XML: {e}"))?
                .map_err(|e| format!("domain XML: {}", virt_error(&e)))?;
            let parsed = domxml::parse(&xml).map_err(|e| format!("domain XML: {}", chain(&e)))?;
            if parsed.over > 0 {
                tracing::warn!(vm = %t.name, over = parsed.over, "domain has more disks or PCI host devices than kvmio exports");
            }
            st.xml = Some((Instant::now(), names, Arc::new(parsed)));
        }
        let xml = st
            .xml
            .as_ref()
            .map(|(_, _, d)| d.clone())
            .unwrap_or_default();
        let disks = &xml.disks;
        // libvirt answers with the state alone when QEMU's monitor was busy (NOWAIT) or did
        // not answer: a domain with disks but no statistics for any of them is not up.
        let with_source = disks.iter().filter(|d| !d.source.is_empty()).count();
        if with_source > 0 && per_disk.values().all(|d| d.rd.reqs.is_none()) {
            return Err(
                "libvirt returned no block statistics (QEMU's monitor is busy or not answering)"
                    .to_owned(),
            );
        }

        let mut snapshot = if self.config.qmp_passthrough {
            let mut monitor = LibvirtMonitor(self.relay(t, deadline, QMP_MAX_LINE_BYTES));
            monitor::adopt(&mut st.qmp.cache, pid);
            let mut snap =
                monitor::queries(&mut monitor, pid, false, false, &mut st.qmp.cache, config)
                    .await
                    .map_err(|e| format!("monitor passthrough: {}", chain(&e)))?;
            snap.configured = block::configured(disks);
            snap
        } else {
            let mut snap = block::snapshot(&xml, &per_disk);
            snap.pid = pid;
            snap
        };
        // libvirt's state carries the reason (paused: ioerror, user...), QMP's does not.
        if let Some(state) = block::run_state(&stats) {
            snapshot.run_state = Some(state);
        }
        if snapshot.process_io.is_none() {
            snapshot.process_io = pid.and_then(|p| qmp::read_process_io(&config.procfs, p));
        }
        Ok(snapshot)
    }
}
