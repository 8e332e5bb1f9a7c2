//! QEMU's two JSON protocols, written once for all of kvmio.
//!
//! * [`qmp`]: the QEMU Machine Protocol of a monitor socket (greeting, `qmp_capabilities`,
//!   commands; asynchronous events are skipped).
//! * [`qga`]: the guest agent, reached through a virtio-serial chardev on the host. It has no
//!   greeting and the guest controls what comes back, so every reply is treated as untrusted.
//! * [`cache`]: QEMU's `cache=` modes and the flags that `query-block` reports for them.

pub mod cache;

pub use cache::CacheMode;
