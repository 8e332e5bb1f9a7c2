//! What kvmio's tests and benches share: the one place that launches QEMU, qemu-ga and the
//! exporter for them (a dev-dependency of `kvmio-qemu` and `kvmio-exporter`, a dependency of the
//! end-to-end crate `kvmio-e2e`):
//!
//! - [`process`]: [`ChildProcess`], killed and reaped on drop (also when an assertion panics),
//!   optionally tied to the test with `PR_SET_PDEATHSIG`; [`wait_for`]; [`vm_slot`], the lock
//!   that lets one VM-booting test or bench run at a time; [`workspace_bin`], [`which`],
//!   [`require`];
//! - [`qemu`]: `qemu-system-x86_64 -M none` (a real monitor and block layer, no guest), a paused
//!   q35, the host's own `qemu-ga` on Unix sockets, and the command line of the VM the QEMU
//!   fixtures are captured from;
//! - [`exporter`]: the `kvmio-exporter` binary on a free loopback port;
//! - [`dir`]: scratch directories under the target dir ([`target_tempdir!`]) and
//!   [`subdirs`];
//! - [`bench`]: the benches' command line, percentiles, `/proc` readings, results tables;
//! - [`http`]: blocking `GET`s and a free port; [`metrics`]: the text format parsed into
//!   [`metrics::Series`];
//! - [`tls`]: a throw-away PKI (rcgen) and blocking HTTPS `GET`s (rustls).

pub mod bench;
pub mod dir;
pub mod exporter;
pub mod http;
pub mod metrics;
pub mod process;
pub mod qemu;
pub mod tls;

pub use dir::subdirs;
pub use exporter::launch_exporter;
pub use http::{free_port, http_get, try_http_get};
pub use process::{
    assert_rejected_in_one_line, require, run, spawn_tied, vm_slot, wait_for, wait_for_every,
    wait_for_while_running, wait_path, which, workspace_bin, ChildProcess, VmSlot,
};
