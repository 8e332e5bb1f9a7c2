//! What the host and the kvmio guest program agree on.
//!
//! The guest program (`kvmio-guest`, this crate's binary) runs inside kvmio's small test VMs.
//! It talks to the host over its own virtio-serial port, [`CONTROL_PORT`], never over the disk
//! under test and never over the guest agent's port (which must stay free for the exporter and
//! operators). Messages are single text lines, see [`protocol`].

pub mod protocol;

/// Name of the virtio-serial port the guest program uses to call the host back.
pub const CONTROL_PORT: &str = "org.kvmio.ctl";

/// Name of the guest agent's virtio-serial port (QEMU's convention).
pub const AGENT_PORT: &str = "org.qemu.guest_agent.0";

/// Kernel command-line key that tells the guest program what to do after boot.
pub const ROLE_PARAM: &str = "kvmio.role";
