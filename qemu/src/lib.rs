//! QEMU's two JSON protocols, written once for all of kvmio.
//!
//! * [`qmp`]: the QEMU Machine Protocol of a monitor socket (greeting, `qmp_capabilities`,
//!   commands; asynchronous events are skipped).
//! * [`qga`]: the guest agent, reached through a virtio-serial chardev on the host. It has no
//!   greeting and the guest controls what comes back, so every reply is treated as untrusted.
//! * [`types`]: typed replies, tolerant of fields other QEMU versions add or drop.
//! * [`cache`]: QEMU's `cache=` modes and the flags that `query-block` reports for them.
//! * [`reply`]: a reply's `return` kept as raw text and decoded from it straight into the types
//!   (no `serde_json::Value` tree of a guest's answer), lists bounded while they decode.
//! * [`line`](mod@line), [`limits`], [`error`](mod@error): what bounds both clients: lines of
//!   bounded length, calls of bounded duration, and one error type; `channel` is the JSON-lines
//!   connection both clients hold (stream, line reader, limits), written once.

mod base64;
pub mod cache;
mod channel;
pub mod error;
pub mod limits;
pub mod line;
pub mod qga;
pub mod qmp;
pub mod reply;
mod socket;
pub mod types;

#[cfg(test)]
mod golden_tests;

pub use cache::{CacheFlags, CacheMode};
pub use error::{Error, Result};
pub use limits::Limits;
pub use qga::{AgentCommands, GuestAgent};
pub use qmp::{Qmp, QmpCommands};

/// The clients are used from spawned tasks: their futures must be `Send`.
#[cfg(test)]
mod send_tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[allow(dead_code)]
    async fn futures_are_send(qmp: &mut Qmp, ga: &mut GuestAgent) {
        let f = Qmp::connect(std::path::Path::new("/x"), Limits::default());
        assert_send(&f);
        assert_send(&qmp.query_blockstats());
        assert_send(&qmp.execute_value("x", None));
        let f = GuestAgent::connect(std::path::Path::new("/x"), Limits::default());
        assert_send(&f);
        assert_send(&ga.sync());
        assert_send(&ga.file_read_all("/x", 1));
        assert_send(&ga.exec_wait("/x", &[], std::time::Duration::ZERO));
    }

    #[test]
    fn clients_are_send() {
        fn is_send<T: Send>() {}
        is_send::<Qmp>();
        is_send::<GuestAgent>();
        is_send::<Error>();
    }
}
