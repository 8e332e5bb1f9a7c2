//! The guest control protocol, host side (the protocol itself is `kvmio_guest::protocol`): the
//! writer's lines on its own virtio-serial port (`org.kvmio.ctl`), never on the disk under test.
//!
//! The host starts the writer with one line, `START` (the writer's parameters, the host's wall
//! clock, fresh entropy), and the writer answers `STATE` (what it sees of its disk, page cache
//! and clock; [`super::snapshot::check_state`] checks it). After each record's durability point the writer sends `ACK <sequence> <slot> <sha256>`; when
//! the disk is full, `DONE <records>`; if it fails, `ERROR <message>`. The host appends every
//! `ACK` and `DONE`, as received, to the iteration's ack log, which is what verification (and
//! `kvmio-crashtest verify`) reads. While it waits, the host also asks QEMU twice a second
//! whether it paused the VM on a disk error (QEMU's default `werror=enospc`): such an iteration
//! says nothing about crash consistency.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kvmio_guest::protocol::{GuestMessage, GuestState, HostMessage};
use kvmio_qemu::QmpCommands;

use super::RunError;
use crate::acklog::{AckLogHeader, AckLogWriter};
use crate::vm::Vm;

/// How long the writer may take from READY to its first ack.
const FIRST_ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the host asks QEMU whether it paused the VM.
const STATUS_EVERY: Duration = Duration::from_millis(500);

/// What the host does with one control line.
enum Line {
    Ack,
    Done,
    Other,
}

/// The iteration's end of the control port: the ack log being written.
pub(super) struct Acks<'a> {
    log: AckLogWriter,
    path: PathBuf,
    cell: &'a str,
}

impl<'a> Acks<'a> {
    /// Creates the ack log at `path` (which must not exist) with its header.
    pub fn create(path: &Path, header: &AckLogHeader, cell: &'a str) -> Result<Self, RunError> {
        let log = AckLogWriter::create(path, header).map_err(|source| RunError::AckLog {
            cell: cell.to_string(),
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Acks {
            log,
            path: path.to_path_buf(),
            cell,
        })
    }

    fn log_error(&self, source: std::io::Error) -> RunError {
        RunError::AckLog {
            cell: self.cell.to_string(),
            path: self.path.clone(),
            source,
        }
    }

    fn handle(&mut self, line: &str, vm: &Vm) -> Result<Line, RunError> {
        let (message, kind) = match GuestMessage::parse(line) {
            Some(m @ (GuestMessage::Ack { .. } | GuestMessage::FileAck(_))) => (m, Line::Ack),
            Some(m @ GuestMessage::Done { .. }) => (m, Line::Done),
            Some(GuestMessage::Error { message }) => {
                return Err(RunError::Writer {
                    cell: self.cell.to_string(),
                    message,
                    console: vm.console_tail(15),
                })
            }
            _ => {
                tracing::debug!("{}: ignored control line {line:?}", self.cell);
                return Ok(Line::Other);
            }
        };
        self.log
            .append(&message)
            .map_err(|source| self.log_error(source))?;
        Ok(kind)
    }

    fn guest_gone(&self, vm: &Vm, what: &str) -> RunError {
        RunError::Guest {
            cell: self.cell.to_string(),
            what: what.to_string(),
            console: vm.console_tail(15),
        }
    }

    /// The next control line before `deadline`, asking QEMU meanwhile whether it paused the
    /// VM; `what` names the line awaited, for the errors.
    async fn next_line(
        &self,
        vm: &mut Vm,
        deadline: tokio::time::Instant,
        what: &str,
    ) -> Result<String, RunError> {
        let mut tick = status_ticks();
        loop {
            tokio::select! {
                line = vm.next_control_line() => return match line {
                    Ok(Some(line)) => Ok(line),
                    _ => Err(self.guest_gone(vm, &format!("QEMU exited before {what}"))),
                },
                _ = tick.tick() => disk_error(vm, self.cell).await?,
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(self.guest_gone(
                        vm,
                        &format!("no {what} from the writer within {FIRST_ACK_TIMEOUT:?}"),
                    ));
                }
            }
        }
    }

    /// Starts the writer (`START`) and returns what it says it sees (`STATE`).
    pub async fn start(
        &mut self,
        vm: &mut Vm,
        start: &HostMessage,
    ) -> Result<GuestState, RunError> {
        if vm.send_control_line(&start.to_string()).await.is_err() {
            return Err(self.guest_gone(vm, "the control port closed before START"));
        }
        let deadline = tokio::time::Instant::now() + FIRST_ACK_TIMEOUT;
        loop {
            let line = self.next_line(vm, deadline, "STATE").await?;
            match GuestMessage::parse(&line) {
                Some(GuestMessage::State(state)) => return Ok(state),
                Some(GuestMessage::Error { message }) => {
                    return Err(RunError::Writer {
                        cell: self.cell.to_string(),
                        message,
                        console: vm.console_tail(15),
                    })
                }
                _ => tracing::debug!("{}: ignored control line {line:?}", self.cell),
            }
        }
    }

    /// Waits for the writer's first ack, which starts the write window.
    pub async fn first(&mut self, vm: &mut Vm) -> Result<(), RunError> {
        let deadline = tokio::time::Instant::now() + FIRST_ACK_TIMEOUT;
        loop {
            let line = self.next_line(vm, deadline, "the first ack").await?;
            match self.handle(&line, vm)? {
                Line::Ack => return Ok(()),
                Line::Done => return Err(self.guest_gone(
                    vm,
                    "the writer finished without writing a record (disk smaller than a record?)",
                )),
                Line::Other => {}
            }
        }
    }

    /// The write window: logs acks until `delay` has passed (or the writer is done).
    pub async fn window(&mut self, vm: &mut Vm, delay: Duration) -> Result<(), RunError> {
        let deadline = tokio::time::Instant::now() + delay;
        let mut tick = status_ticks();
        loop {
            tokio::select! {
                line = vm.next_control_line() => match line {
                    Ok(Some(line)) => {
                        if let Line::Done = self.handle(&line, vm)? {
                            break;
                        }
                    }
                    _ => return Err(self.guest_gone(vm, "QEMU exited during the write window")),
                },
                _ = tick.tick() => disk_error(vm, self.cell).await?,
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        disk_error(vm, self.cell).await
    }

    /// After the SIGKILL: the lines QEMU had already passed to the socket.
    pub async fn drain(&mut self, vm: &mut Vm) -> Result<(), RunError> {
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(5), vm.next_control_line()).await
        {
            self.handle(&line, vm)?;
        }
        Ok(())
    }

    /// Flushes and syncs the log.
    pub fn finish(self) -> Result<(), RunError> {
        let Acks { log, path, cell } = self;
        log.finish().map(drop).map_err(|source| RunError::AckLog {
            cell: cell.to_string(),
            path,
            source,
        })
    }
}

fn status_ticks() -> tokio::time::Interval {
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// An error if QEMU paused the VM on a disk error: ENOSPC if out of space, else EIO.
async fn disk_error(vm: &mut Vm, cell: &str) -> Result<(), RunError> {
    let status = match tokio::time::timeout(Duration::from_secs(5), vm.qmp().query_status()).await {
        Ok(Ok(status)) if status.status == "io-error" => status,
        _ => return Ok(()),
    };
    let nospace = matches!(
        tokio::time::timeout(Duration::from_secs(5), vm.qmp().query_block()).await,
        Ok(Ok(blocks)) if blocks.iter().any(|b| b.io_status.as_deref() == Some("nospace"))
    );
    tracing::debug!("{cell}: VM status {}", status.status);
    Err(RunError::DiskError {
        cell: cell.to_string(),
        source: std::io::Error::from_raw_os_error(if nospace { libc::ENOSPC } else { libc::EIO }),
    })
}
