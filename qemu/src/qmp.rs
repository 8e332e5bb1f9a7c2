//! The QEMU Machine Protocol client.
//!
//! QMP on a monitor socket: QEMU sends a greeting line, the client sends `qmp_capabilities`,
//! then each command gets one reply line. Asynchronous events (`{"event": ...}`) may come at any
//! time, also between a command and its reply. Every request here carries an `"id"`, so replies
//! can be matched even after a timed-out call whose late reply arrives during the next one.
//!
//! A monitor serves one client at a time, and one call runs at a time on a [`Qmp`] (`&mut self`):
//! callers that share a connection put it behind a mutex.

use std::collections::VecDeque;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;
use tokio::time::timeout;

use crate::channel::{self, Channel};
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::line::LineReader;
use crate::types::{
    BlockDeviceInfo, BlockInfo, BlockStats, Event, Greeting, NameInfo, ObjectPropertyInfo, PciInfo,
    StatusInfo, VersionInfo,
};

/// How many unread events are kept; older ones are dropped first. Events are a side channel
/// here (kvmio polls state), so a bounded queue is enough and a noisy QEMU cannot fill memory.
pub const MAX_QUEUED_EVENTS: usize = 256;

/// A QMP connection that has completed the capabilities negotiation.
///
/// Generic over the stream so that tests can play QEMU over an in-memory pipe.
#[derive(Debug)]
pub struct Qmp<S = UnixStream> {
    chan: Channel<S>,
    greeting: Greeting,
    next_id: u64,
    events: VecDeque<Event>,
    events_dropped: u64,
    /// A request was cut off mid-write (its call timed out): QEMU's parser now holds part of a
    /// command, and whatever we send next would be glued to it. The connection is unusable.
    write_cut: bool,
}

impl Qmp<UnixStream> {
    /// Connects to a monitor socket (`-qmp unix:PATH,server=on,wait=off`), reads the greeting
    /// and negotiates capabilities.
    pub async fn connect(path: &Path, limits: Limits) -> Result<Self> {
        channel::connect(path, limits, Qmp::handshake).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Qmp<S> {
    /// Runs the QMP handshake on an already connected stream: for a launcher that listens and
    /// lets QEMU connect (`-chardev socket,server=off,... -mon chardev=...,mode=control`).
    ///
    /// Reading the greeting and the `qmp_capabilities` call are each bounded by
    /// `limits.call_timeout`.
    pub async fn handshake(stream: S, limits: Limits) -> Result<Self> {
        let mut qmp = Qmp {
            chan: Channel {
                stream,
                lines: LineReader::new(limits.max_line_bytes),
                limits,
            },
            greeting: Greeting::default(),
            next_id: 1,
            events: VecDeque::new(),
            events_dropped: 0,
            write_cut: false,
        };
        qmp.greeting = match timeout(limits.call_timeout, qmp.read_greeting()).await {
            Ok(g) => g?,
            Err(_) => {
                return Err(Error::Timeout {
                    what: format!("the QMP greeting ({:?})", limits.call_timeout),
                })
            }
        };
        let reply = qmp.execute_value("qmp_capabilities", None).await?;
        if reply != json!({}) {
            return Err(Error::Protocol(format!(
                "qmp_capabilities returned {reply} instead of {{}}"
            )));
        }
        Ok(qmp)
    }

    async fn read_greeting(&mut self) -> Result<Greeting> {
        let line = self.chan.next_line().await?;
        let value: Value = serde_json::from_slice(&line.bytes).map_err(Error::Json)?;
        let Some(inner) = value.get("QMP") else {
            return Err(Error::Protocol(
                "the first line is not a QMP greeting (no \"QMP\" member); is this a QMP socket?"
                    .into(),
            ));
        };
        serde_json::from_value(inner.clone()).map_err(|source| Error::Decode {
            command: "the QMP greeting".into(),
            source,
        })
    }

    /// The greeting QEMU sent: its version and offered capabilities.
    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    /// The limits this connection was opened with.
    pub fn limits(&self) -> Limits {
        self.chan.limits
    }

    /// Runs a command and returns its `return` value as JSON.
    ///
    /// Events that arrive meanwhile are queued (see [`Qmp::take_events`]); replies to other
    /// requests (late replies to timed-out calls) are skipped. The whole call, from writing the
    /// request to parsing the reply, is bounded by `call_timeout`.
    pub async fn execute_value(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value> {
        if self.write_cut {
            return Err(Error::Protocol(
                "an earlier request was cut off mid-write; reconnect".into(),
            ));
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut request = Map::new();
        request.insert("execute".into(), Value::from(command));
        if let Some(arguments) = arguments {
            request.insert("arguments".into(), arguments);
        }
        request.insert("id".into(), Value::from(id));
        let mut bytes = serde_json::to_vec(&request).map_err(Error::Json)?;
        bytes.push(b'\n');

        let limit = self.chan.limits.call_timeout;
        match timeout(limit, self.call(id, &bytes)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                what: format!("the reply to {command} ({limit:?})"),
            }),
        }
    }

    async fn call(&mut self, id: u64, request: &[u8]) -> Result<Value> {
        self.write_cut = true;
        self.chan.send(request).await?;
        self.write_cut = false;
        loop {
            let obj = self.read_object().await?;
            if obj.contains_key("event") {
                self.queue_event(obj);
                continue;
            }
            match obj.get("id") {
                Some(got) if got.as_u64() == Some(id) => return reply_value(obj),
                Some(got) => {
                    tracing::debug!(%got, "skipping the reply to an earlier QMP request");
                    continue;
                }
                // QEMU leaves out the id only when it could not read the request's id, i.e. the
                // request itself was malformed: that is the answer to this call.
                None if obj.contains_key("error") => return reply_value(obj),
                None => {
                    tracing::debug!("skipping a QMP reply without id");
                    continue;
                }
            }
        }
    }

    /// Reads one non-blank line as a JSON object.
    async fn read_object(&mut self) -> Result<Map<String, Value>> {
        let line = self.chan.next_line().await?;
        match serde_json::from_slice(&line.bytes).map_err(Error::Json)? {
            Value::Object(obj) => Ok(obj),
            other => Err(Error::Protocol(format!(
                "expected a JSON object, got {}",
                kind_of(&other)
            ))),
        }
    }

    fn queue_event(&mut self, obj: Map<String, Value>) {
        match serde_json::from_value::<Event>(Value::Object(obj)) {
            Ok(event) => {
                tracing::trace!(event = %event.event, "QMP event");
                if self.events.len() >= MAX_QUEUED_EVENTS {
                    self.events.pop_front();
                    self.events_dropped += 1;
                }
                self.events.push_back(event);
            }
            Err(e) => tracing::debug!(error = %e, "ignoring a malformed QMP event"),
        }
    }

    /// Returns and clears the events received so far (at most [`MAX_QUEUED_EVENTS`]).
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// How many events were dropped because the queue was full.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    /// Returns the oldest queued event, or waits up to `wait` for the next one. Useful to wait
    /// for `SHUTDOWN` or `STOP` after a command.
    pub async fn next_event(&mut self, wait: Duration) -> Result<Event> {
        if let Some(event) = self.events.pop_front() {
            return Ok(event);
        }
        let read = async {
            loop {
                let obj = self.read_object().await?;
                if obj.contains_key("event") {
                    self.queue_event(obj);
                    if let Some(event) = self.events.pop_front() {
                        return Ok(event);
                    }
                } else {
                    tracing::debug!("skipping a QMP reply while waiting for an event");
                }
            }
        };
        match timeout(wait, read).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                what: format!("a QMP event ({wait:?})"),
            }),
        }
    }
}

/// The QMP commands kvmio uses, written once over any way of running a command: a monitor
/// socket ([`Qmp`]) or a passthrough such as libvirt's `virDomainQemuMonitorCommand`, which
/// hands a command to the monitor libvirtd holds and returns QEMU's reply. An implementation
/// gives [`QmpCommands::execute_value`]; the typed commands follow from it.
#[allow(async_fn_in_trait)]
pub trait QmpCommands: Send {
    /// Runs a command and returns its `return` value as JSON (QEMU's `error` as
    /// [`Error::Command`]).
    fn execute_value(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> impl Future<Output = Result<Value>> + Send;

    /// Runs a command and decodes its `return` value.
    fn execute<T: DeserializeOwned>(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> impl Future<Output = Result<T>> + Send {
        async move {
            let value = self.execute_value(command, arguments).await?;
            decode_return(command, value)
        }
    }

    /// `query-name`: the VM's `-name`, if any.
    fn query_name(&mut self) -> impl Future<Output = Result<Option<String>>> + Send {
        async move {
            let info: NameInfo = self.execute("query-name", None).await?;
            Ok(info.name)
        }
    }

    /// `query-version`.
    fn query_version(&mut self) -> impl Future<Output = Result<VersionInfo>> + Send {
        async move { self.execute("query-version", None).await }
    }

    /// `query-status`: whether the VM runs, and its run state.
    fn query_status(&mut self) -> impl Future<Output = Result<StatusInfo>> + Send {
        async move { self.execute("query-status", None).await }
    }

    /// `query-block`: every block backend with its medium and cache flags.
    fn query_block(&mut self) -> impl Future<Output = Result<Vec<BlockInfo>>> + Send {
        async move { self.execute("query-block", None).await }
    }

    /// `query-blockstats` for the backends (`query-nodes: false`): each entry is a backend's top
    /// node with the nodes below in `parent`/`backing`.
    fn query_blockstats(&mut self) -> impl Future<Output = Result<Vec<BlockStats>>> + Send {
        async move { self.query_blockstats_with(false).await }
    }

    /// `query-blockstats` with an explicit `query-nodes`: `true` lists every named node
    /// (`-blockdev` setups) instead of every backend.
    fn query_blockstats_with(
        &mut self,
        query_nodes: bool,
    ) -> impl Future<Output = Result<Vec<BlockStats>>> + Send {
        async move {
            self.execute(
                "query-blockstats",
                Some(json!({ "query-nodes": query_nodes })),
            )
            .await
        }
    }

    /// `query-pci`: the PCI tree (see [`crate::types::flatten_pci`]). Machines without PCI
    /// (`-M none`) answer with an error.
    fn query_pci(&mut self) -> impl Future<Output = Result<Vec<PciInfo>>> + Send {
        async move { self.execute("query-pci", None).await }
    }

    /// `query-named-block-nodes` with `flat: true`: every node once, without nested backing
    /// image details.
    fn query_named_block_nodes(
        &mut self,
    ) -> impl Future<Output = Result<Vec<BlockDeviceInfo>>> + Send {
        async move {
            self.execute("query-named-block-nodes", Some(json!({ "flat": true })))
                .await
        }
    }

    /// `qom-list`: the properties (children, links) of the QOM object at `path`.
    fn qom_list(
        &mut self,
        path: &str,
    ) -> impl Future<Output = Result<Vec<ObjectPropertyInfo>>> + Send {
        async move {
            self.execute("qom-list", Some(json!({ "path": path })))
                .await
        }
    }

    /// `block-latency-histogram-set` with the same boundaries (ns, ascending) for reads,
    /// writes and flushes of a guest device. `id_or_device` is the device holding the backend:
    /// the `qdev` that `query-block` reports (for `virtio-blk-pci,id=vd0` that is
    /// `/machine/peripheral/vd0/virtio-backend`, not `vd0`); QEMU 7.2 does not accept a
    /// `-drive id=` here. An empty slice removes the histograms.
    fn block_latency_histogram_set(
        &mut self,
        id_or_device: &str,
        boundaries_ns: &[u64],
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            let arguments = if boundaries_ns.is_empty() {
                json!({ "id": id_or_device })
            } else {
                json!({ "id": id_or_device, "boundaries": boundaries_ns })
            };
            self.execute_value("block-latency-histogram-set", Some(arguments))
                .await
                .map(drop)
        }
    }

    /// `human-monitor-command`: runs an HMP command line (e.g. `qemu-io d0 "write 0 1M"`) and
    /// returns its output.
    fn human_monitor_command(
        &mut self,
        command_line: &str,
    ) -> impl Future<Output = Result<String>> + Send {
        async move {
            self.execute(
                "human-monitor-command",
                Some(json!({ "command-line": command_line })),
            )
            .await
        }
    }

    /// `stop`: pauses the vCPUs (QEMU emits a `STOP` event).
    fn stop(&mut self) -> impl Future<Output = Result<()>> + Send {
        async move { self.execute_value("stop", None).await.map(drop) }
    }

    /// `cont`: resumes the vCPUs (QEMU emits a `RESUME` event).
    fn cont(&mut self) -> impl Future<Output = Result<()>> + Send {
        async move { self.execute_value("cont", None).await.map(drop) }
    }

    /// `quit`: QEMU exits after answering. A connection closed before the answer arrived also
    /// counts as success.
    fn quit(&mut self) -> impl Future<Output = Result<()>> + Send {
        async move {
            match self.execute_value("quit", None).await {
                Ok(_) | Err(Error::Closed) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> QmpCommands for Qmp<S> {
    fn execute_value(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> impl Future<Output = Result<Value>> + Send {
        Qmp::execute_value(self, command, arguments)
    }
}

/// Decodes a command's `return` value into the type the caller expects (QMP and the guest agent
/// alike); a mismatch names the command.
pub(crate) fn decode_return<T: DeserializeOwned>(command: &str, value: Value) -> Result<T> {
    serde_json::from_value(value).map_err(|source| Error::Decode {
        command: command.to_string(),
        source,
    })
}

/// The `return` value of one whole reply given as text (what a passthrough such as libvirt's
/// `virDomainQemuMonitorCommand` returns), or its error. A reply longer than `max_bytes` is
/// refused before it is parsed.
pub fn reply_from_text(text: &str, max_bytes: usize) -> Result<Value> {
    if text.len() > max_bytes {
        return Err(Error::LineTooLong { limit: max_bytes });
    }
    match serde_json::from_str(text).map_err(Error::Json)? {
        Value::Object(obj) => reply_value(obj),
        other => Err(Error::Protocol(format!(
            "expected a reply object, got {}",
            kind_of(&other)
        ))),
    }
}

/// The `return` value of a reply, or its error.
fn reply_value(mut obj: Map<String, Value>) -> Result<Value> {
    if let Some(value) = obj.remove("return") {
        return Ok(value);
    }
    if let Some(error) = obj.remove("error") {
        return Err(command_error(&error));
    }
    Err(Error::Protocol(
        "reply has neither \"return\" nor \"error\"".into(),
    ))
}

/// QAPI's error object `{"class": ..., "desc": ...}` as [`Error::Command`], tolerating a
/// malformed one (its text is kept).
pub(crate) fn command_error(error: &Value) -> Error {
    let class = error.get("class").and_then(Value::as_str);
    let desc = error.get("desc").and_then(Value::as_str);
    match (class, desc) {
        (Some(class), desc) => Error::Command {
            class: truncate(class, 200),
            desc: truncate(desc.unwrap_or(""), 2000),
        },
        _ => Error::Command {
            class: "GenericError".into(),
            desc: truncate(&error.to_string(), 2000),
        },
    }
}

/// Caps peer-controlled text that ends up in error messages and logs.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

pub(crate) fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod reply_text_tests {
    use super::*;

    #[test]
    fn replies_as_text() {
        assert_eq!(
            reply_from_text(r#"{"return": {"a": 1}, "id": "libvirt-12"}"#, 100).unwrap(),
            json!({"a": 1})
        );
        let e = reply_from_text(
            r#"{"id":"libvirt-3","error":{"class":"CommandNotFound","desc":"no"}}"#,
            100,
        )
        .unwrap_err();
        assert_eq!(e.command_class(), Some("CommandNotFound"));
        assert!(matches!(
            reply_from_text(&"x".repeat(101), 100),
            Err(Error::LineTooLong { limit: 100 })
        ));
        assert!(matches!(
            reply_from_text("[1]", 100),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            reply_from_text("{}", 100),
            Err(Error::Protocol(_))
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}"#;

    /// The test's side of the pipe: it plays QEMU.
    struct Peer {
        reader: BufReader<ReadHalf<DuplexStream>>,
        writer: WriteHalf<DuplexStream>,
    }

    impl Peer {
        async fn send(&mut self, line: &str) {
            self.writer.write_all(line.as_bytes()).await.unwrap();
            self.writer.write_all(b"\n").await.unwrap();
        }

        /// Reads one request and returns it.
        async fn recv(&mut self) -> Value {
            let mut line = String::new();
            self.reader.read_line(&mut line).await.unwrap();
            serde_json::from_str(&line).unwrap()
        }

        /// Reads a request and answers `{"return": ret, "id": <its id>}`.
        async fn answer(&mut self, ret: Value) -> Value {
            let req = self.recv().await;
            let reply = json!({"return": ret, "id": req["id"]});
            self.send(&reply.to_string()).await;
            req
        }
    }

    fn limits() -> Limits {
        Limits {
            call_timeout: Duration::from_millis(500),
            max_line_bytes: 64 * 1024,
        }
    }

    /// A connected client and the peer, after a normal handshake.
    async fn connected() -> (Qmp<DuplexStream>, Peer) {
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        let (r, w) = tokio::io::split(theirs);
        let mut peer = Peer {
            reader: BufReader::new(r),
            writer: w,
        };
        let server = async {
            peer.send(GREETING).await;
            let req = peer.answer(json!({})).await;
            assert_eq!(req["execute"], "qmp_capabilities");
            peer
        };
        let (qmp, peer) = tokio::join!(Qmp::handshake(ours, limits()), server);
        (qmp.unwrap(), peer)
    }

    #[tokio::test]
    async fn handshake_reads_the_greeting() {
        let (qmp, _peer) = connected().await;
        assert_eq!(qmp.greeting().version.qemu.to_string(), "7.2.22");
        assert_eq!(qmp.greeting().capabilities, vec!["oob"]);
    }

    #[tokio::test]
    async fn not_a_qmp_socket_is_a_protocol_error() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        theirs.write_all(b"{\"hello\": 1}\n").await.unwrap();
        let err = Qmp::handshake(ours, limits()).await.unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{err}");
    }

    #[tokio::test]
    async fn garbage_greeting_is_a_json_error() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        theirs.write_all(b"login: \n").await.unwrap();
        let err = Qmp::handshake(ours, limits()).await.unwrap_err();
        assert!(matches!(err, Error::Json(_)), "{err}");
    }

    #[tokio::test]
    async fn silent_peer_times_out_in_the_handshake() {
        let (ours, _theirs) = tokio::io::duplex(1024);
        channel::assert_times_out(Qmp::handshake(ours, limits())).await;
    }

    #[tokio::test]
    async fn events_and_foreign_replies_are_skipped() {
        let (mut qmp, mut peer) = connected().await;
        let server = async {
            let req = peer.recv().await;
            assert_eq!(req["execute"], "query-status");
            peer.send(r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}"#)
                .await;
            peer.send(r#"{"return": {"running": true}, "id": 999}"#)
                .await;
            peer.send("").await;
            let reply = json!({"return": {"running": false, "singlestep": false, "status": "paused", "new-field": [1]}, "id": req["id"]});
            peer.send(&reply.to_string()).await;
        };
        let (status, ()) = tokio::join!(qmp.query_status(), server);
        let status = status.unwrap();
        assert!(!status.running);
        assert_eq!(status.status, "paused");
        let events = qmp.take_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, "STOP");
        assert_eq!(events[0].timestamp.microseconds, 2);
        assert!(qmp.take_events().is_empty());
    }

    #[tokio::test]
    async fn error_reply_is_a_command_error() {
        let (mut qmp, mut peer) = connected().await;
        let server = async {
            let req = peer.recv().await;
            let reply = json!({"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}, "id": req["id"]});
            peer.send(&reply.to_string()).await;
        };
        let (result, ()) = tokio::join!(qmp.execute_value("nope", None), server);
        match result.unwrap_err() {
            Error::Command { class, desc } => {
                assert_eq!(class, "CommandNotFound");
                assert!(desc.contains("nope"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn silent_peer_times_out_and_a_late_reply_is_skipped() {
        let (mut qmp, mut peer) = connected().await;
        let started = std::time::Instant::now();
        let err = qmp.query_name().await.unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // The late reply to query-name arrives during the next call and must not be taken
        // for the answer to query-version.
        let server = async {
            let first = peer.recv().await;
            peer.send(&json!({"return": {"name": "late"}, "id": first["id"]}).to_string())
                .await;
            peer.answer(json!({"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""}))
                .await;
        };
        let (version, ()) = tokio::join!(qmp.query_version(), server);
        assert_eq!(version.unwrap().qemu.major, 7);
    }

    #[tokio::test]
    async fn endless_reply_line_is_line_too_long() {
        let (mut qmp, mut peer) = connected().await;
        let server = async {
            peer.recv().await;
            let junk = vec![b'x'; 16 * 1024];
            for _ in 0..8 {
                if peer.writer.write_all(&junk).await.is_err() {
                    break;
                }
            }
        };
        let (result, ()) = tokio::join!(qmp.query_block(), server);
        assert!(
            matches!(result, Err(Error::LineTooLong { limit: 65536 })),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn wrong_return_type_is_a_decode_error() {
        let (mut qmp, mut peer) = connected().await;
        let (result, _) = tokio::join!(qmp.query_block(), peer.answer(json!({"not": "a list"})));
        assert!(matches!(result, Err(Error::Decode { .. })), "{result:?}");
    }

    #[tokio::test]
    async fn closed_peer_is_closed() {
        let (mut qmp, peer) = connected().await;
        drop(peer);
        let err = qmp.query_name().await.unwrap_err();
        assert!(matches!(err, Error::Closed), "{err}");
    }

    #[tokio::test]
    async fn blockstats_sends_query_nodes_and_histogram_set_sends_boundaries() {
        let (mut qmp, mut peer) = connected().await;
        let (result, req) = tokio::join!(qmp.query_blockstats(), peer.answer(json!([])));
        assert!(result.unwrap().is_empty());
        assert_eq!(req["arguments"], json!({"query-nodes": false}));
        let (result, req) = tokio::join!(
            qmp.block_latency_histogram_set("d0", &[1000, 10_000]),
            peer.answer(json!({}))
        );
        result.unwrap();
        assert_eq!(
            req["arguments"],
            json!({"id": "d0", "boundaries": [1000, 10000]})
        );
    }

    #[tokio::test]
    async fn event_queue_is_bounded() {
        let (mut qmp, mut peer) = connected().await;
        let server = async {
            let req = peer.recv().await;
            for i in 0..MAX_QUEUED_EVENTS + 10 {
                peer.send(&json!({"event": "X", "data": {"i": i}}).to_string())
                    .await;
            }
            peer.send(&json!({"return": {}, "id": req["id"]}).to_string())
                .await;
        };
        let (result, ()) = tokio::join!(qmp.execute_value("cont", None), server);
        result.unwrap();
        assert_eq!(qmp.events_dropped(), 10);
        let events = qmp.take_events();
        assert_eq!(events.len(), MAX_QUEUED_EVENTS);
        assert_eq!(events[0].data["i"], 10);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é...");
    }
}
