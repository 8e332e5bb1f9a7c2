//! Real QEMU (`-M none`), host-run qemu-ga and the exporter binary as child processes that are
//! killed and reaped when dropped (also when a test panics), and that die with the test process
//! (`PR_SET_PDEATHSIG`) if it is killed outright: `kvmio-test-support`'s, under the names these
//! tests use.

use std::path::Path;
use std::process::Command;

// Each test binary uses its own part of these.
#[allow(unused_imports)]
pub use kvmio_test_support::{
    http_get,
    metrics::sample,
    qemu::{qemu_ga, qemu_ga_with, qemu_none},
    ChildProcess as Proc,
};

/// The exporter binary on 127.0.0.1 (a free port), stderr to `log`; returns it and its address.
pub fn exporter(args: &[String], log: &Path) -> (Proc, String) {
    let bin = env!("CARGO_BIN_EXE_kvmio-exporter");
    kvmio_test_support::launch_exporter(Command::new(bin), args, log)
}
