//! QMP and the guest agent: the bounded line reader, the QMP client with its typed replies, and
//! the agent's replies as the exporter's guest layer reads them.

use std::time::Duration;

use kvmio_exporter::config::Config;
use kvmio_exporter::vm::qga::{self, valid_disk_name, QgaState, QGA_MAX_LINE_BYTES};
use kvmio_qemu::line::{LineReader, SENTINEL};
use kvmio_qemu::reply::raw_return;
use kvmio_qemu::types::flatten_pci;
use kvmio_qemu::{AgentCommands, Error, Limits, Qmp, QmpCommands};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::runtime;
use crate::stream::Script;

/// The line reader: the first byte picks the limit (1-128 bytes) and, in its top bit, the
/// agent's sentinel mode; the rest is the stream ([`Script`]). Every line returned is within the
/// limit and holds no `\n` (nor a sentinel in sentinel mode), and every call makes progress.
pub fn line_reader(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let limit = usize::from(mode & 0x7f) + 1;
    let sentinel = mode & 0x80 != 0;
    let mut reader = if sentinel {
        LineReader::with_sentinel(limit)
    } else {
        LineReader::new(limit)
    };
    let mut stream = Script::new(rest);
    runtime().block_on(async {
        // Each call consumes at least one byte or ends the stream.
        for _ in 0..=rest.len() + 1 {
            match reader.read_line(&mut stream).await {
                Ok(line) => {
                    assert!(line.bytes.len() <= limit, "a line over the limit");
                    assert!(!line.bytes.contains(&b'\n'), "a newline inside a line");
                    assert!(
                        !sentinel || !line.bytes.contains(&SENTINEL),
                        "a sentinel inside a line"
                    );
                }
                Err(Error::LineTooLong { limit: l }) => assert_eq!(l, limit),
                Err(Error::Closed) => return,
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        panic!("the line reader made no progress");
    });
}

/// The QMP client against a monitor played from the input: the greeting, `qmp_capabilities`
/// (id 1), then every query kvmio makes, in turn (ids 2, 3, ...), each decoded into its type.
/// Any answer is an error or a value; the client never panics or waits past the input.
pub fn qmp_client(data: &[u8]) {
    let limits = Limits::default()
        .with_max_line_bytes(64 * 1024)
        .with_call_timeout(Duration::from_secs(10));
    runtime().block_on(async {
        let Ok(mut qmp) = Qmp::handshake(Script::new(data), limits).await else {
            return;
        };
        let _ = qmp.greeting().version.qemu.to_string();
        let open = |r: &Result<(), Error>| !matches!(r, Err(Error::Closed | Error::Io(_)));
        macro_rules! step {
            ($call:expr) => {
                if !open(&$call.await.map(drop)) {
                    return;
                }
            };
        }
        step!(qmp.query_name());
        step!(qmp.query_version());
        step!(qmp.query_status());
        step!(async {
            let block = qmp.query_block().await?;
            for b in &block {
                let _ = b.cache_mode();
                if let Some(inserted) = &b.inserted {
                    let _ = inserted.cache_mode();
                }
            }
            Ok::<_, Error>(())
        });
        step!(qmp.query_blockstats());
        step!(qmp.query_blockstats_with(true));
        step!(async {
            let pci = qmp.query_pci().await?;
            let _ = flatten_pci(&pci);
            Ok::<_, Error>(())
        });
        step!(async {
            for node in qmp.query_named_block_nodes().await? {
                let _ = node.cache_mode();
            }
            Ok::<_, Error>(())
        });
        let _ = qmp.take_events();
    });
}

/// An agent whose replies are the input's lines, read as the agent client reads them (the
/// sentinel line reader, then the reply frame); the commands' requests are not looked at.
struct ScriptedAgent<'a> {
    stream: Script<'a>,
    lines: LineReader,
}

impl AgentCommands for ScriptedAgent<'_> {
    async fn execute_raw(
        &mut self,
        _: &str,
        _: Option<Value>,
    ) -> kvmio_qemu::Result<Box<RawValue>> {
        let line = self.lines.read_line(&mut self.stream).await?;
        raw_return(&line.bytes, "the guest agent")
    }

    fn max_reply_bytes(&self) -> usize {
        self.lines.max_line_bytes()
    }
}

/// The exporter's guest layer over an agent played from the input: `guest-get-diskstats`,
/// `guest-get-disks` and the queue settings' `guest-file-*` reads (exactly what a scrape asks),
/// then the other typed commands kvmio uses. What the scrape keeps is within
/// `--qga.max-disks`, and every disk name kept is a valid label.
pub fn qga_replies(data: &[u8]) {
    let config = Config {
        qga_max_disks: 4,
        ..Config::default()
    };
    let mut agent = ScriptedAgent {
        stream: Script::new(data),
        lines: LineReader::with_sentinel(QGA_MAX_LINE_BYTES),
    };
    runtime().block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut state = QgaState::default();
        if let Ok((snapshot, _)) = qga::query(&mut agent, &mut state, &config, deadline).await {
            assert!(snapshot.diskstats.len() <= config.qga_max_disks);
            assert!(snapshot.disks.len() <= config.qga_max_disks);
            for d in &snapshot.diskstats {
                assert!(valid_disk_name(&d.name), "{:?} kept", d.name);
            }
            assert!(snapshot.queue.len() <= snapshot.diskstats.len());
        }
        let _ = agent
            .info()
            .await
            .map(|i| i.supports("guest-get-diskstats"));
        let _ = agent.get_fsinfo().await;
        let _ = agent.exec_status(1).await;
        if let Ok(file) = agent
            .file_read_all("/sys/block/vda/queue/scheduler", 4096)
            .await
        {
            assert!(file.len() <= 4096);
        }
    });
}
