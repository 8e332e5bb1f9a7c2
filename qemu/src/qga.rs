//! The QEMU guest agent (`qemu-ga`) client.
//!
//! The agent speaks QMP-style JSON over a virtio-serial port, which QEMU exposes on the host as a
//! chardev socket. Unlike a monitor it has no greeting, no events and (in older versions) no
//! request ids: it answers requests in order. A virtio-serial port outlives client connections,
//! so the channel may hold a previous client's half-written request or unread replies. The
//! agent's answer to this is `guest-sync-delimited`: the client sends a 0xFF byte (the agent
//! drops its partial input) and a random id; the agent answers with a 0xFF byte and that id; the
//! client drops everything before. [`GuestAgent`] syncs on connect and again before the next
//! call after any call that did not end with a complete reply (timeout, garbage, over-long line).
//!
//! The guest controls every byte that comes back: replies are bounded by
//! [`Limits::max_line_bytes`], each call by [`Limits::call_timeout`], and nothing here panics on
//! any input.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;
use tokio::time::{timeout, Instant};

use crate::base64;
use crate::channel::{self, Channel};
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::line::{LineBudget, LineReader, SENTINEL};
use crate::qmp::truncate;
use crate::reply::{self, Bounded};
use crate::types::{
    ExecStatus, GuestAgentInfo, GuestDiskInfo, GuestDiskStatsInfo, GuestExec, GuestExecStatusRaw,
    GuestFileRead, GuestFilesystemInfo,
};

/// At most this many stale lines are skipped while waiting for a sync reply.
const MAX_SYNC_DISCARD_LINES: usize = 256;

/// The guest agent's own cap on one `guest-file-read` (48 MiB in QEMU 7.2).
const MAX_FILE_READ_CHUNK: usize = 48 * 1024 * 1024;

/// A guest-agent connection, in sync with the agent.
#[derive(Debug)]
pub struct GuestAgent<S = UnixStream> {
    chan: Channel<S>,
    /// The last call did not end cleanly: the stream may hold stale replies.
    needs_sync: bool,
}

impl GuestAgent<UnixStream> {
    /// Connects to the host side of the agent's channel (a chardev socket, or the socket of a
    /// host-side `qemu-ga -m unix-listen`) and synchronises.
    pub async fn connect(path: &Path, limits: Limits) -> Result<Self> {
        channel::connect(path, limits, GuestAgent::with_stream).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> GuestAgent<S> {
    /// Synchronises with the agent on an already connected stream.
    pub async fn with_stream(stream: S, limits: Limits) -> Result<Self> {
        GuestAgent::with_stream_and_budget(stream, limits, None).await
    }

    /// [`GuestAgent::with_stream`] whose reply lines over [`LineBudget::THRESHOLD`] are charged
    /// to `budget`, shared with other connections (bounds the large replies buffered at once
    /// across many agents).
    pub async fn with_stream_and_budget(
        stream: S,
        limits: Limits,
        budget: Option<LineBudget>,
    ) -> Result<Self> {
        let mut lines = LineReader::with_sentinel(limits.max_line_bytes);
        lines.set_budget(budget);
        let mut agent = GuestAgent {
            chan: Channel {
                stream,
                lines,
                limits,
            },
            needs_sync: true,
        };
        agent.sync().await?;
        Ok(agent)
    }

    /// The limits this connection was opened with.
    pub fn limits(&self) -> Limits {
        self.chan.limits
    }

    /// Whether the next call will resynchronise first (the previous one did not end cleanly).
    pub fn needs_sync(&self) -> bool {
        self.needs_sync
    }

    /// Resynchronises with `guest-sync-delimited`: sends 0xFF and a random id, skips everything
    /// up to the agent's 0xFF sentinel, and checks that the reply after it carries the id.
    /// Stale replies and garbage are skipped, up to a bound. Bounded by `call_timeout`.
    pub async fn sync(&mut self) -> Result<()> {
        self.needs_sync = true;
        // Within 2^53 so that agents that parse numbers as doubles echo it exactly.
        let id: i64 = rand::random_range(1..(1i64 << 53));
        let limit = self.chan.limits.call_timeout;
        match timeout(limit, self.sync_inner(id)).await {
            Ok(Ok(())) => {
                self.needs_sync = false;
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout {
                what: format!("the guest agent's reply to guest-sync-delimited ({limit:?})"),
            }),
        }
    }

    async fn sync_inner(&mut self, id: i64) -> Result<()> {
        let mut request = vec![SENTINEL];
        serde_json::to_writer(
            &mut request,
            &json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}),
        )
        .map_err(Error::Json)?;
        request.push(b'\n');
        self.chan.send(&request).await?;

        let byte_budget = self.chan.limits.max_line_bytes.saturating_mul(8);
        let mut skipped_lines = 0usize;
        let mut skipped_bytes = 0usize;
        loop {
            match self.chan.read_line().await {
                Ok(line) => {
                    if line.after_sentinel {
                        match serde_json::from_slice::<Value>(&line.bytes) {
                            Ok(v) if v.get("return").and_then(Value::as_i64) == Some(id) => {
                                return Ok(());
                            }
                            // A reply to an earlier, abandoned sync.
                            _ => tracing::debug!("skipping a stale guest-agent sync reply"),
                        }
                    }
                    skipped_bytes = skipped_bytes.saturating_add(line.bytes.len());
                    self.chan.lines.recycle(line.bytes);
                }
                Err(Error::LineTooLong { limit }) => {
                    skipped_bytes = skipped_bytes.saturating_add(limit);
                }
                Err(e) => return Err(e),
            }
            skipped_lines += 1;
            if skipped_lines > MAX_SYNC_DISCARD_LINES || skipped_bytes > byte_budget {
                return Err(Error::Protocol(format!(
                    "the guest agent sent {skipped_lines} lines ({skipped_bytes} bytes) without \
                     answering guest-sync-delimited"
                )));
            }
        }
    }

    /// Runs a command and returns its `return` value as JSON.
    ///
    /// If an earlier call did not end cleanly, this first resynchronises (bounded by its own
    /// `call_timeout`). The command itself is bounded by `call_timeout`.
    pub async fn execute_raw(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Box<RawValue>> {
        self.execute_decoded(command, arguments, |ret| Ok(ret.to_owned()))
            .await
    }

    /// Runs a command and decodes its `return` value with `decode`, straight from the reply
    /// line (no copy of it); the line's buffer goes back to the reader. As
    /// [`GuestAgent::execute_raw`] otherwise.
    pub async fn execute_decoded<T>(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        decode: impl FnOnce(&RawValue) -> Result<T>,
    ) -> Result<T> {
        if self.needs_sync {
            self.sync().await?;
        }
        let mut request = Map::new();
        request.insert("execute".into(), Value::from(command));
        if let Some(arguments) = arguments {
            request.insert("arguments".into(), arguments);
        }
        let mut bytes = serde_json::to_vec(&request).map_err(Error::Json)?;
        bytes.push(b'\n');

        self.needs_sync = true;
        let limit = self.chan.limits.call_timeout;
        match timeout(limit, self.call(&bytes, decode)).await {
            Ok(Ok(value)) => {
                self.needs_sync = false;
                Ok(value)
            }
            Ok(Err(e)) => {
                // The agent answered with an error, or a whole reply that did not decode: the
                // stream is still in step.
                if e.is_command() || matches!(e, Error::Decode { .. }) {
                    self.needs_sync = false;
                }
                Err(e)
            }
            Err(_) => Err(Error::Timeout {
                what: format!("the guest agent's reply to {command} ({limit:?})"),
            }),
        }
    }

    async fn call<T>(
        &mut self,
        request: &[u8],
        decode: impl FnOnce(&RawValue) -> Result<T>,
    ) -> Result<T> {
        self.chan.send(request).await?;
        let line = self.chan.next_line().await?;
        let decoded = reply::with_return(&line.bytes, "the guest agent", decode);
        self.chan.lines.recycle(line.bytes);
        decoded
    }
}

/// The guest-agent commands kvmio uses, written once over any way of reaching the agent: its
/// chardev socket ([`GuestAgent`]) or a passthrough such as libvirt's
/// `virDomainQemuAgentCommand` (libvirtd keeps the agent's socket for itself). An
/// implementation gives [`AgentCommands::execute_value`] and the longest reply it accepts; the
/// typed commands follow from them.
pub trait AgentCommands: Send {
    /// Runs a command and returns its `return` value as raw JSON text (the agent's `error` as
    /// [`Error::Command`]): decoded straight into the caller's type, without a `Value` tree
    /// (see [`crate::reply`]).
    fn execute_raw(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> impl Future<Output = Result<Box<RawValue>>> + Send;

    /// The longest reply accepted, in bytes: `guest-file-read` asks for chunks that fit.
    fn max_reply_bytes(&self) -> usize;

    /// Runs a command and returns its `return` value as JSON.
    fn execute_value(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> impl Future<Output = Result<Value>> + Send {
        self.execute::<Value>(command, arguments)
    }

    /// Runs a command without arguments and decodes its `return` value with `decode`.
    /// [`GuestAgent`] decodes straight from the reply line (the large replies are the lists);
    /// the default goes through [`AgentCommands::execute_raw`].
    fn execute_decoded<T: Send>(
        &mut self,
        command: &str,
        decode: impl FnOnce(&RawValue) -> Result<T> + Send,
    ) -> impl Future<Output = Result<T>> + Send {
        async move {
            let raw = self.execute_raw(command, None).await?;
            decode(&raw)
        }
    }

    /// Runs a command and decodes its `return` value.
    fn execute<T: DeserializeOwned>(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> impl Future<Output = Result<T>> + Send {
        async move {
            let raw = self.execute_raw(command, arguments).await?;
            reply::decode(command, &raw)
        }
    }

    /// A list command's `return`: at most `max` elements decoded, the rest only counted.
    fn execute_bounded<T: DeserializeOwned + Send>(
        &mut self,
        command: &str,
        max: usize,
    ) -> impl Future<Output = Result<Bounded<T>>> + Send {
        self.execute_decoded(command, move |raw| reply::decode_bounded(command, raw, max))
    }

    /// `guest-get-diskstats`, at most `max` disks decoded; the rest are only counted.
    fn get_diskstats_bounded(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Bounded<GuestDiskStatsInfo>>> + Send {
        self.execute_bounded("guest-get-diskstats", max)
    }

    /// `guest-get-disks`, at most `max` disks decoded; the rest are only counted.
    fn get_disks_bounded(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Bounded<GuestDiskInfo>>> + Send {
        self.execute_bounded("guest-get-disks", max)
    }

    /// `guest-ping`.
    fn ping(&mut self) -> impl Future<Output = Result<()>> + Send {
        async move { self.execute_value("guest-ping", None).await.map(drop) }
    }

    /// `guest-info`: the agent's version and which commands it has and allows.
    fn info(&mut self) -> impl Future<Output = Result<GuestAgentInfo>> + Send {
        async move { self.execute("guest-info", None).await }
    }

    /// `guest-get-diskstats` (agent >= 7.1, Linux guests): the guest's `/proc/diskstats`.
    fn get_diskstats(&mut self) -> impl Future<Output = Result<Vec<GuestDiskStatsInfo>>> + Send {
        async move { self.execute("guest-get-diskstats", None).await }
    }

    /// `guest-get-disks` (agent >= 5.2): disks with their PCI address and serial, which map a
    /// guest disk to a QEMU device.
    fn get_disks(&mut self) -> impl Future<Output = Result<Vec<GuestDiskInfo>>> + Send {
        async move { self.execute("guest-get-disks", None).await }
    }

    /// `guest-get-fsinfo`: mounted file systems and the disks below them.
    fn get_fsinfo(&mut self) -> impl Future<Output = Result<Vec<GuestFilesystemInfo>>> + Send {
        async move { self.execute("guest-get-fsinfo", None).await }
    }

    /// Reads a whole guest file (`guest-file-open` read-only, `guest-file-read` until EOF,
    /// `guest-file-close` on every path). A file longer than `max_bytes` is an
    /// [`Error::TooLarge`]: nothing is truncated silently.
    fn file_read_all(
        &mut self,
        path: &str,
        max_bytes: usize,
    ) -> impl Future<Output = Result<Vec<u8>>> + Send {
        async move {
            let handle: i64 = self
                .execute("guest-file-open", Some(json!({"path": path, "mode": "r"})))
                .await?;
            let result = read_handle(self, handle, path, max_bytes).await;
            if let Err(e) = self
                .execute_value("guest-file-close", Some(json!({ "handle": handle })))
                .await
            {
                tracing::warn!(path, handle, error = %e, "guest-file-close failed");
            }
            result
        }
    }

    /// `guest-exec`: starts `path` with `args` in the guest and returns its pid. With
    /// `capture_output` the agent keeps stdout and stderr for [`GuestAgent::exec_status`].
    fn exec(
        &mut self,
        path: &str,
        args: &[&str],
        capture_output: bool,
    ) -> impl Future<Output = Result<i64>> + Send {
        async move {
            let exec: GuestExec = self
                .execute(
                    "guest-exec",
                    Some(json!({"path": path, "arg": args, "capture-output": capture_output})),
                )
                .await?;
            Ok(exec.pid)
        }
    }

    /// `guest-exec-status`, with the captured output decoded. Once it reports `exited`, the
    /// agent forgets the process: a second query of the same pid fails.
    fn exec_status(&mut self, pid: i64) -> impl Future<Output = Result<ExecStatus>> + Send {
        async move {
            let raw: GuestExecStatusRaw = self
                .execute("guest-exec-status", Some(json!({ "pid": pid })))
                .await?;
            let decode = |field: &Option<String>, name: &str| -> Result<Vec<u8>> {
                match field {
                    None => Ok(Vec::new()),
                    Some(text) => base64::decode(text).ok_or_else(|| {
                        Error::Protocol(format!(
                            "guest-exec-status returned invalid base64 in {name}"
                        ))
                    }),
                }
            };
            Ok(ExecStatus {
                exited: raw.exited,
                exitcode: raw.exitcode,
                signal: raw.signal,
                out: decode(&raw.out_data, "out-data")?,
                err: decode(&raw.err_data, "err-data")?,
                out_truncated: raw.out_truncated.unwrap_or(false),
                err_truncated: raw.err_truncated.unwrap_or(false),
            })
        }
    }

    /// Runs `path args...` in the guest with output captured and polls `guest-exec-status`
    /// until it exits or `wait` has passed ([`Error::Timeout`]; the process keeps running).
    fn exec_wait(
        &mut self,
        path: &str,
        args: &[&str],
        wait: Duration,
    ) -> impl Future<Output = Result<ExecStatus>> + Send {
        async move {
            // A wait too long to represent means "no deadline" in practice: 30 years.
            let now = Instant::now();
            let deadline = now
                .checked_add(wait)
                .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400));
            let pid = self.exec(path, args, true).await?;
            let mut pause = Duration::from_millis(10);
            loop {
                let status = self.exec_status(pid).await?;
                if status.exited {
                    return Ok(status);
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(Error::Timeout {
                        what: format!(
                            "{} (pid {pid}) to exit in the guest ({wait:?})",
                            truncate(path, 200)
                        ),
                    });
                }
                tokio::time::sleep(pause.min(deadline - now)).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// The `guest-file-read` loop of [`AgentCommands::file_read_all`].
async fn read_handle<A: AgentCommands + ?Sized>(
    agent: &mut A,
    handle: i64,
    path: &str,
    max_bytes: usize,
) -> Result<Vec<u8>> {
    // One reply must fit in a line: base64 takes 4 bytes per 3, plus a little JSON.
    let chunk = (agent.max_reply_bytes().saturating_sub(128) / 4 * 3).clamp(1, MAX_FILE_READ_CHUNK);
    let mut out = Vec::new();
    loop {
        // One byte more than allowed, to tell "exactly max_bytes" from "longer".
        let want = chunk.min((max_bytes - out.len()).saturating_add(1));
        let read: GuestFileRead = agent
            .execute(
                "guest-file-read",
                Some(json!({"handle": handle, "count": want})),
            )
            .await?;
        let data = base64::decode(&read.buf_b64)
            .ok_or_else(|| Error::Protocol("guest-file-read returned invalid base64".into()))?;
        if data.len() > want || read.count != data.len() as i64 {
            return Err(Error::Protocol(format!(
                "guest-file-read returned {} bytes with count {} for a request of {want}",
                data.len(),
                read.count
            )));
        }
        if data.len() > max_bytes - out.len() {
            return Err(Error::TooLarge {
                what: format!("guest file {}", truncate(path, 200)),
                limit: max_bytes,
            });
        }
        let done = read.eof || data.is_empty();
        out.extend_from_slice(&data);
        if done {
            return Ok(out);
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> AgentCommands for GuestAgent<S> {
    fn execute_raw(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> impl Future<Output = Result<Box<RawValue>>> + Send {
        GuestAgent::execute_raw(self, command, arguments)
    }

    fn execute_decoded<T: Send>(
        &mut self,
        command: &str,
        decode: impl FnOnce(&RawValue) -> Result<T> + Send,
    ) -> impl Future<Output = Result<T>> + Send {
        GuestAgent::execute_decoded(self, command, None, decode)
    }

    fn max_reply_bytes(&self) -> usize {
        self.chan.limits.max_line_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};

    /// The test's side of the pipe: it plays the agent.
    struct Peer {
        reader: BufReader<ReadHalf<DuplexStream>>,
        writer: WriteHalf<DuplexStream>,
    }

    impl Peer {
        async fn send(&mut self, bytes: &[u8]) {
            self.writer.write_all(bytes).await.unwrap();
        }

        /// Reads one request, dropping 0xFF bytes in front of it, as the agent does.
        async fn recv(&mut self) -> Value {
            let mut line = Vec::new();
            self.reader.read_until(b'\n', &mut line).await.unwrap();
            line.retain(|&b| b != SENTINEL);
            serde_json::from_slice(&line).unwrap()
        }

        /// Answers a sync request the way qemu-ga does (0xFF, then the reply).
        async fn answer_sync(&mut self) {
            let req = self.recv().await;
            assert_eq!(req["execute"], "guest-sync-delimited");
            let reply = format!("\u{0}{}\n", json!({"return": req["arguments"]["id"]}));
            let mut bytes = reply.into_bytes();
            bytes[0] = SENTINEL;
            self.send(&bytes).await;
        }

        async fn answer(&mut self, ret: Value) -> Value {
            let req = self.recv().await;
            self.send(format!("{}\n", json!({ "return": ret })).as_bytes())
                .await;
            req
        }
    }

    fn limits() -> Limits {
        Limits {
            call_timeout: Duration::from_millis(500),
            max_line_bytes: 4096,
        }
    }

    fn pipe() -> (DuplexStream, Peer) {
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        let (r, w) = tokio::io::split(theirs);
        (
            ours,
            Peer {
                reader: BufReader::new(r),
                writer: w,
            },
        )
    }

    async fn connected() -> (GuestAgent<DuplexStream>, Peer) {
        let (ours, mut peer) = pipe();
        let (agent, ()) = tokio::join!(GuestAgent::with_stream(ours, limits()), peer.answer_sync());
        (agent.unwrap(), peer)
    }

    #[tokio::test]
    async fn garbage_and_stale_replies_before_the_sync_reply_are_skipped() {
        let (ours, mut peer) = pipe();
        let server = async {
            // What a previous client left behind, then the agent's complaint about our 0xFF
            // (the real qemu-ga answers it with a JSON parse error), then a stale sync reply.
            peer.send(b"{\"return\": {}}\n{\"return\": [1, 2\n\x01\x02 garbage \xfe\n")
                .await;
            peer.send(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\\\uFFFD'\"}}\n")
                .await;
            peer.send(b"\xff{\"return\": 12345}\n").await;
            peer.answer_sync().await;
            peer.answer(json!({})).await;
        };
        let client = async {
            let mut agent = GuestAgent::with_stream(ours, limits()).await?;
            agent.ping().await
        };
        let (result, ()) = tokio::join!(client, server);
        result.unwrap();
    }

    #[tokio::test]
    async fn silent_agent_times_out() {
        let (ours, _peer) = pipe();
        channel::assert_times_out(GuestAgent::with_stream(ours, limits())).await;
    }

    #[tokio::test]
    async fn after_a_timeout_the_next_call_resyncs_and_skips_the_late_reply() {
        let (mut agent, mut peer) = connected().await;
        let err = agent.ping().await.unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(agent.needs_sync());
        let server = async {
            let first = peer.recv().await;
            assert_eq!(first["execute"], "guest-ping");
            // The late reply to the ping, then the sync, then the real call.
            peer.send(b"{\"return\": {}}\n").await;
            peer.answer_sync().await;
            let req = peer
                .answer(json!({"version": "7.2.0", "supported_commands": []}))
                .await;
            assert_eq!(req["execute"], "guest-info");
        };
        let (info, ()) = tokio::join!(agent.info(), server);
        assert_eq!(info.unwrap().version, "7.2.0");
        assert!(!agent.needs_sync());
    }

    #[tokio::test]
    async fn endless_line_is_line_too_long_and_the_agent_recovers() {
        let (mut agent, mut peer) = connected().await;
        let server = async {
            peer.recv().await;
            peer.send(&vec![b'a'; 100_000]).await;
        };
        let (result, ()) = tokio::join!(agent.get_disks(), server);
        assert!(
            matches!(result, Err(Error::LineTooLong { limit: 4096 })),
            "{result:?}"
        );
        let server = async {
            // The rest of the endless line, ended at last, then the sync.
            peer.send(&vec![b'a'; 10_000]).await;
            peer.send(b"\n").await;
            peer.answer_sync().await;
            peer.answer(json!({})).await;
        };
        let (result, ()) = tokio::join!(agent.ping(), server);
        result.unwrap();
    }

    #[tokio::test]
    async fn too_many_stale_lines_is_a_protocol_error() {
        let (ours, mut peer) = pipe();
        let server = async {
            for _ in 0..MAX_SYNC_DISCARD_LINES + 1 {
                peer.send(b"{\"return\": {}}\n").await;
            }
        };
        let (result, ()) = tokio::join!(GuestAgent::with_stream(ours, limits()), server);
        assert!(matches!(result, Err(Error::Protocol(_))), "{result:?}");
    }

    #[tokio::test]
    async fn error_reply_keeps_the_stream_in_sync() {
        let (mut agent, mut peer) = connected().await;
        let server = async {
            peer.recv().await;
            peer.send(b"{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command guest-exec has been disabled\"}, \"extra\": 1}\n").await;
        };
        let (result, ()) = tokio::join!(agent.exec("/bin/true", &[], false), server);
        assert_eq!(result.unwrap_err().command_class(), Some("CommandNotFound"));
        assert!(!agent.needs_sync());
    }

    #[tokio::test]
    async fn unknown_extra_fields_parse() {
        let (mut agent, mut peer) = connected().await;
        let reply = json!([{"name": "vda", "major": 254, "minor": 0, "future": true,
                            "stats": {"read-ios": 7, "new-counter": 1}}]);
        let (stats, _) = tokio::join!(agent.get_diskstats(), peer.answer(reply));
        let stats = stats.unwrap();
        assert_eq!(stats[0].name, "vda");
        assert_eq!(stats[0].stats.read_ios, Some(7));
        assert_eq!(stats[0].stats.write_ios, None);
    }

    #[tokio::test]
    async fn non_object_reply_is_a_protocol_error_and_forces_a_sync() {
        let (mut agent, mut peer) = connected().await;
        let (result, _) = tokio::join!(agent.ping(), async {
            peer.recv().await;
            peer.send(b"[1]\n").await;
        });
        assert!(matches!(result, Err(Error::Protocol(_))), "{result:?}");
        assert!(agent.needs_sync());
        let (result, _) = tokio::join!(agent.ping(), async {
            peer.send(b"not json\n").await;
            peer.answer_sync().await;
            peer.answer(json!({})).await;
        });
        result.unwrap();
    }

    #[tokio::test]
    async fn file_read_all_decodes_reads_in_chunks_and_closes() {
        let (mut agent, mut peer) = connected().await;
        let content: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let server = async {
            let open = peer.answer(json!(7)).await;
            assert_eq!(open["arguments"], json!({"path": "/etc/x", "mode": "r"}));
            let mut sent = 0;
            loop {
                let req = peer.recv().await;
                if req["execute"] == "guest-file-close" {
                    assert_eq!(req["arguments"]["handle"], 7);
                    peer.send(b"{\"return\": {}}\n").await;
                    break;
                }
                assert_eq!(req["execute"], "guest-file-read");
                let want = req["arguments"]["count"].as_u64().unwrap() as usize;
                assert!(want * 4 / 3 < 4096, "chunk {want} would not fit a line");
                let end = (sent + want).min(content.len());
                let part = &content[sent..end];
                sent = end;
                let reply = json!({"return": {"count": part.len(), "buf-b64": base64::encode(part), "eof": sent == content.len()}});
                peer.send(format!("{reply}\n").as_bytes()).await;
            }
        };
        let (data, ()) = tokio::join!(agent.file_read_all("/etc/x", 1 << 20), server);
        assert_eq!(data.unwrap(), content);
    }

    #[tokio::test]
    async fn file_read_all_over_the_limit_is_too_large_and_still_closes() {
        let (mut agent, mut peer) = connected().await;
        let server = async {
            peer.answer(json!(3)).await;
            let req = peer.recv().await;
            assert_eq!(req["arguments"]["count"], 11);
            let reply = json!({"return": {"count": 11, "buf-b64": base64::encode(b"hello world"), "eof": false}});
            peer.send(format!("{reply}\n").as_bytes()).await;
            let close = peer.answer(json!({})).await;
            assert_eq!(close["execute"], "guest-file-close");
        };
        let (result, ()) = tokio::join!(agent.file_read_all("/big", 10), server);
        assert!(
            matches!(result, Err(Error::TooLarge { limit: 10, .. })),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn file_read_with_lying_count_is_a_protocol_error() {
        let (mut agent, mut peer) = connected().await;
        let server = async {
            peer.answer(json!(3)).await;
            peer.answer(json!({"count": 99, "buf-b64": "aGkK", "eof": true}))
                .await;
            peer.answer(json!({})).await;
        };
        let (result, ()) = tokio::join!(agent.file_read_all("/f", 100), server);
        assert!(matches!(result, Err(Error::Protocol(_))), "{result:?}");
    }

    #[tokio::test]
    async fn exec_wait_polls_until_exited_and_decodes_output() {
        let (mut agent, mut peer) = connected().await;
        let server = async {
            let req = peer.answer(json!({"pid": 42})).await;
            assert_eq!(
                req["arguments"],
                json!({"path": "/bin/echo", "arg": ["hi"], "capture-output": true})
            );
            peer.answer(json!({"exited": false})).await;
            let req = peer
                .answer(json!({"exited": true, "exitcode": 0, "out-data": "aGkK", "out-truncated": false}))
                .await;
            assert_eq!(req["arguments"]["pid"], 42);
        };
        let (status, ()) = tokio::join!(
            agent.exec_wait("/bin/echo", &["hi"], Duration::from_secs(5)),
            server
        );
        let status = status.unwrap();
        assert!(status.success());
        assert_eq!(status.out, b"hi\n");
        assert!(status.err.is_empty());
    }

    #[tokio::test]
    async fn bad_base64_in_exec_output_is_a_protocol_error() {
        let (mut agent, mut peer) = connected().await;
        let (result, _) = tokio::join!(
            agent.exec_status(1),
            peer.answer(json!({"exited": true, "out-data": "@@@"}))
        );
        assert!(matches!(result, Err(Error::Protocol(_))), "{result:?}");
    }
}
