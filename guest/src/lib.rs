//! What the host and the kvmio guest program agree on.
//!
//! The guest program (`kvmio-guest`, this crate's binary) runs inside kvmio's small test VMs.
//! It talks to the host over its own virtio-serial port, [`CONTROL_PORT`], never over the disk
//! under test and never over the guest agent's port (which must stay free for the exporter and
//! operators). Messages are single text lines, see [`protocol`].
//!
//! The crash tester's record format ([`record`]) and writer parameters ([`writer`]) live here
//! too, so that the guest writer and the host verifier share one definition.
//!
//! [`bench`] is the `bench` command (kvmio-claims' workloads) as both sides spell it; its flag
//! reader and device flags also parse the `write` command's.

pub mod bench;
pub mod fsworkload;
pub mod protocol;
pub mod record;
pub mod workload;
pub mod writer;

/// Name of the virtio-serial port the guest program uses to call the host back.
pub const CONTROL_PORT: &str = "org.kvmio.ctl";

/// Name of the guest agent's virtio-serial port (QEMU's convention).
pub const AGENT_PORT: &str = "org.qemu.guest_agent.0";

/// Kernel command-line key that tells the guest program what to do after boot.
pub const ROLE_PARAM: &str = "kvmio.role";

/// Kernel command-line key: `kvmio.agent=0` tells the guest that QEMU gives it no guest-agent
/// port, so `/init` need not wait for one.
pub const AGENT_PARAM: &str = "kvmio.agent";
