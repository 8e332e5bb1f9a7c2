//! QEMU's two JSON protocols, written once for all of kvmio.
//!
//! * [`qmp`]: the QEMU Machine Protocol of a monitor socket (greeting, `qmp_capabilities`,
//!   commands; asynchronous events are skipped).
//! * [`qga`]: the guest agent, reached through a virtio-serial chardev on the host. It has no
//!   greeting and the guest controls what comes back, so every reply is treated as untrusted.
//! * [`types`]: typed replies, tolerant of fields other QEMU versions add or drop.
//! * [`cache`]: QEMU's `cache=` modes and the flags that `query-block` reports for them.
//! * [`line`], [`limits`], [`error`]: what bounds both clients: lines of bounded length, calls
//!   of bounded duration, and one error type.

mod base64;
pub mod cache;
pub mod error;
pub mod limits;
pub mod line;
pub mod qga;
pub mod qmp;
pub mod types;

pub use cache::{CacheFlags, CacheMode};
pub use error::{Error, Result};
pub use limits::Limits;
pub use qga::GuestAgent;
pub use qmp::Qmp;
