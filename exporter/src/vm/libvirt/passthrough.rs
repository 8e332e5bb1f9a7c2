//! QMP and guest-agent commands through libvirt's own connections to QEMU: libvirtd holds a
//! domain's monitor and agent sockets for the VM's whole life, and hands a command on with
//! `virDomainQemuMonitorCommand` / `virDomainQemuAgentCommand`. libvirt then marks the domain
//! tainted (`custom-monitor`, `custom-ga-command`, once per domain, in its log and in
//! `virsh dominfo`): these are opt-in (`--libvirt.qmp-passthrough`,
//! `--libvirt.agent-passthrough`).
//!
//! Both implement kvmio-qemu's command traits, so the exporter's monitor and agent queries run
//! unchanged over them; replies are bounded like socket replies before they are parsed.

use std::future::Future;
use std::sync::Arc;

use kvmio_qemu::qmp::reply_from_text;
use kvmio_qemu::reply::raw_return;
use kvmio_qemu::{AgentCommands, Error as QemuError, QmpCommands};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::time::Instant;
use virt::domain::Domain;

use super::pool::{Pool, PoolError};

fn request(command: &str, arguments: Option<Value>) -> String {
    let mut r = Map::new();
    r.insert("execute".into(), Value::from(command));
    if let Some(a) = arguments {
        r.insert("arguments".into(), a);
    }
    Value::Object(r).to_string()
}

fn pool_error(e: PoolError, command: &str) -> QemuError {
    match e {
        PoolError::Timeout | PoolError::Busy => QemuError::Timeout {
            what: format!("libvirt's reply to {command} ({e})"),
        },
        PoolError::Panicked => QemuError::Passthrough {
            via: "libvirt",
            source: Box::new(e),
        },
    }
}

/// One domain's relay: the libvirt call runs in the pool until the scrape deadline, and its
/// reply (QEMU's whole reply object, as text) is bounded before it is parsed.
#[derive(Debug, Clone)]
pub struct Relay {
    pub domain: Arc<Domain>,
    pub pool: Pool,
    pub deadline: Instant,
    pub max_reply_bytes: usize,
}

impl Relay {
    /// The whole reply's text, at most `max_reply_bytes` long.
    fn run<'a, F>(
        &self,
        command: &'a str,
        arguments: Option<Value>,
        via: &'static str,
        call: F,
    ) -> impl Future<Output = kvmio_qemu::Result<String>> + Send + 'a
    where
        F: FnOnce(&Domain, &str) -> Result<String, virt::error::Error> + Send + 'static,
    {
        let text = request(command, arguments);
        let domain = self.domain.clone();
        let pool = self.pool.clone();
        let deadline = self.deadline;
        let max = self.max_reply_bytes;
        async move {
            let reply = pool
                .run(deadline, move || call(&domain, &text))
                .await
                .map_err(|e| pool_error(e, command))?
                .map_err(|e| QemuError::Passthrough {
                    via,
                    source: Box::new(e),
                })?;
            if reply.len() > max {
                return Err(QemuError::LineTooLong { limit: max });
            }
            Ok(reply)
        }
    }
}

/// A domain's QEMU monitor, through libvirt (`virDomainQemuMonitorCommand`).
#[derive(Debug, Clone)]
pub struct LibvirtMonitor(pub Relay);

impl QmpCommands for LibvirtMonitor {
    fn execute_value(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> impl Future<Output = kvmio_qemu::Result<Value>> + Send {
        let reply = self.0.run(
            command,
            arguments,
            "libvirt's monitor passthrough (virDomainQemuMonitorCommand)",
            |domain, text| domain.qemu_monitor_command(text, 0),
        );
        let max = self.0.max_reply_bytes;
        async move { reply_from_text(&reply.await?, max) }
    }
}

/// A domain's guest agent, through libvirt (`virDomainQemuAgentCommand`).
#[derive(Debug, Clone)]
pub struct LibvirtAgent(pub Relay);

impl AgentCommands for LibvirtAgent {
    fn execute_raw(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> impl Future<Output = kvmio_qemu::Result<Box<RawValue>>> + Send {
        // libvirt's own wait for the agent, in whole seconds (at least 1): it gives up by the
        // scrape deadline too, instead of holding a pool slot after it.
        let wait = self
            .0
            .deadline
            .saturating_duration_since(Instant::now())
            .as_secs()
            .clamp(1, i32::MAX as u64) as i32;
        let reply = self.0.run(
            command,
            arguments,
            "libvirt's agent passthrough (virDomainQemuAgentCommand)",
            move |domain, text| domain.qemu_agent_command(text, wait, 0),
        );
        async move { raw_return(reply.await?.as_bytes(), "libvirt's agent passthrough") }
    }

    fn max_reply_bytes(&self) -> usize {
        self.0.max_reply_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(request("query-block", None), r#"{"execute":"query-block"}"#);
        let r: Value =
            serde_json::from_str(&request("qom-get", Some(serde_json::json!({"path": "/x"}))))
                .unwrap();
        assert_eq!(
            r,
            serde_json::json!({"execute": "qom-get", "arguments": {"path": "/x"}})
        );
    }
}
