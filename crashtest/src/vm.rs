//! The VM launcher: one QEMU process, its sockets, and the guarantee that it is reaped.
//!
//! Every VM gets
//! * a private QMP monitor and the guest program's control port, both as sockets the launcher
//!   *listens* on and QEMU connects to at start-up (`server=off`): no polling for a socket file
//!   to appear, and the outside-facing sockets stay free;
//! * optionally an outside-facing QMP socket `RUN_DIR/NAME.qmp` and guest-agent socket
//!   `RUN_DIR/NAME.qga` (QEMU listens; a monitor or agent chardev serves one client at a time,
//!   which is why the launcher never uses these itself);
//! * its serial console captured to `RUN_DIR/NAME.console.log`.
//!
//! [`Vm`] kills (SIGKILL) and waits for QEMU when dropped, and removes every socket it made, so
//! error paths and panics leave nothing behind. QEMU also gets `PR_SET_PDEATHSIG`, so even a
//! SIGKILLed launcher takes its VMs with it.
//!
//! Why one file of about 750 lines: the launch is one argument (sockets listened on before QEMU
//! starts, the handshake, a guard that kills and reaps on every early return, the command line
//! that names those sockets), and it holds only if read together.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use kvmio_guest::protocol::GuestMessage;
use kvmio_guest::{AGENT_PARAM, AGENT_PORT, CONTROL_PORT, ROLE_PARAM};
use kvmio_qemu::line::LineReader;
use kvmio_qemu::qmp::Qmp;
use kvmio_qemu::{CacheMode, Limits, QmpCommands};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::{UnixListener, UnixStream};

use crate::guest_image::GuestImage;

/// The longest line the guest program may send on its control port.
pub const CONTROL_MAX_LINE_BYTES: usize = 64 * 1024;

/// Longest path a unix socket address holds (`sun_path` is 108 bytes with its NUL).
const SUN_PATH_MAX: usize = 107;

/// How QEMU runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// Image formats kvmio creates.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ImageFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(ImageFormat::Raw),
            "qcow2" => Ok(ImageFormat::Qcow2),
            _ => Err(format!("unknown image format {s:?}: use raw or qcow2")),
        }
    }
}

/// What backs a virtual disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    File {
        path: PathBuf,
        format: ImageFormat,
    },
    /// An NBD export on a unix socket, e.g. kvmio's volatile-cache server. `format` is the
    /// format of the exported bytes: `Qcow2` when the export is a qcow2 image file served as
    /// is, so that QEMU runs its qcow2 driver over the NBD protocol node (`format=qcow2`).
    Nbd {
        socket: PathBuf,
        format: ImageFormat,
    },
}

/// One virtio-blk disk. The guest sees them as vda, vdb, ... in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub source: DiskSource,
    pub cache: CacheMode,
}

/// Everything needed to start one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub name: String,
    pub qemu: PathBuf,
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    pub image: GuestImage,
    /// `kvmio.role=` for the guest program (`idle`, `lab`, ...).
    pub role: String,
    /// More `key=value` kernel parameters for the guest program.
    pub kernel_params: Vec<String>,
    pub disks: Vec<Disk>,
    pub run_dir: PathBuf,
    /// Serve `RUN_DIR/NAME.qmp` and `RUN_DIR/NAME.qga` for outside clients.
    pub public_sockets: bool,
    /// Start paused, waiting for a saved VM state (`-incoming defer`; then `migrate-incoming`,
    /// see the crash tester's `run::snapshot`) instead of booting.
    pub incoming: bool,
    /// Pass the guest's discards (and write-zeroes' unmapping) down to every disk's image
    /// (`-drive discard=unmap`; QEMU's default, `ignore`, drops them).
    pub discard_unmap: bool,
}

impl VmConfig {
    pub fn new(name: &str, image: GuestImage, run_dir: &Path) -> VmConfig {
        VmConfig {
            name: name.to_string(),
            qemu: PathBuf::from("qemu-system-x86_64"),
            accel: Accel::Tcg,
            memory_mib: 256,
            cpus: 1,
            image,
            role: "idle".to_string(),
            kernel_params: Vec::new(),
            disks: Vec::new(),
            run_dir: run_dir.to_path_buf(),
            public_sockets: true,
            incoming: false,
            discard_unmap: false,
        }
    }

    pub fn qmp_socket(&self) -> PathBuf {
        self.run_dir.join(format!("{}.qmp", self.name))
    }

    pub fn qga_socket(&self) -> PathBuf {
        self.run_dir.join(format!("{}.qga", self.name))
    }

    pub fn console_log(&self) -> PathBuf {
        self.run_dir.join(format!("{}.console.log", self.name))
    }

    fn private_dir(&self) -> PathBuf {
        self.run_dir.join(format!(".{}.kvmio", self.name))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(
        "{qemu} not found: run deploy/setup.sh (installs qemu-system-x86) or pass --qemu PATH"
    )]
    QemuNotFound { qemu: PathBuf },
    #[error("cannot start {qemu}")]
    Spawn {
        qemu: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("run directory {dir} is not usable (must be a writable directory): pass a writable --run-dir")]
    RunDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("socket path {path} is {len} bytes, over the {SUN_PATH_MAX}-byte limit of unix sockets: use a shorter --run-dir")]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error("path {0} contains a comma, which QEMU's option syntax cannot take here: rename it")]
    Comma(PathBuf),
    #[error("VM {name}: QEMU exited during start-up ({status}): {stderr}")]
    EarlyExit {
        name: String,
        status: String,
        stderr: String,
    },
    #[error("VM {name}: QEMU did not connect its {what} socket within {timeout:?}")]
    ConnectTimeout {
        name: String,
        what: &'static str,
        timeout: Duration,
    },
    #[error("VM {name}: QMP handshake on the private monitor failed")]
    Qmp {
        name: String,
        #[source]
        source: kvmio_qemu::Error,
    },
    #[error("VM {name}: guest not ready within {timeout:?}; last console lines:\n{console}")]
    NotReady {
        name: String,
        timeout: Duration,
        console: String,
    },
    #[error(
        "VM {name}: guest stopped before it was ready ({status}); last console lines:\n{console}"
    )]
    DiedBeforeReady {
        name: String,
        status: String,
        console: String,
    },
    #[error("VM {name}: guest program reported: {message}")]
    Guest { name: String, message: String },
    #[error("VM {name}: control channel error")]
    Control {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// A running VM. Dropping it kills and reaps QEMU and removes its sockets.
#[derive(Debug)]
pub struct Vm {
    config: VmConfig,
    child: Option<Child>,
    qmp: Qmp,
    /// The guest program's control port, read in bounded lines ([`CONTROL_MAX_LINE_BYTES`]).
    control: (LineReader, OwnedReadHalf),
    control_tx: tokio::net::unix::OwnedWriteHalf,
    started: Instant,
}

impl Vm {
    /// Starts QEMU and completes the private monitor's QMP handshake. The guest is still
    /// booting: call [`Vm::wait_ready`].
    pub async fn launch(config: VmConfig) -> Result<Vm, VmError> {
        check_run_dir(&config.run_dir)?;
        let private = config.private_dir();
        let monitor_path = private.join("monitor.sock");
        let control_path = private.join("control.sock");
        let mut socket_paths = vec![monitor_path.clone(), control_path.clone()];
        if config.public_sockets {
            socket_paths.push(config.qmp_socket());
            socket_paths.push(config.qga_socket());
        }
        for p in &socket_paths {
            let len = p.as_os_str().len();
            if len > SUN_PATH_MAX {
                return Err(VmError::SocketPathTooLong {
                    path: p.clone(),
                    len,
                });
            }
        }
        let run_dir_err = |source| VmError::RunDir {
            dir: config.run_dir.clone(),
            source,
        };
        let _ = std::fs::remove_dir_all(&private);
        std::fs::create_dir_all(&private).map_err(run_dir_err)?;
        for p in &socket_paths {
            let _ = std::fs::remove_file(p);
        }
        let monitor_listener = UnixListener::bind(&monitor_path).map_err(run_dir_err)?;
        let control_listener = UnixListener::bind(&control_path).map_err(run_dir_err)?;

        let args = qemu_args(&config, &monitor_path, &control_path)?;
        let stderr_path = private.join("qemu.stderr");
        let stderr = File::create(&stderr_path).map_err(run_dir_err)?;
        let mut cmd = Command::new(&config.qemu);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // Own process group: a terminal's Ctrl-C reaches the launcher, which stops its VMs in
        // order, instead of every QEMU at once behind its back.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        set_parent_death_signal(&mut cmd);
        let child = spawner::spawn(cmd).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                VmError::QemuNotFound {
                    qemu: config.qemu.clone(),
                }
            } else {
                VmError::Spawn {
                    qemu: config.qemu.clone(),
                    source,
                }
            }
        })?;
        tracing::debug!(vm = %config.name, pid = child.id(), "started QEMU");
        let mut guard = ChildGuard {
            child: Some(child),
            config: &config,
            armed: true,
        };

        let timeout = Duration::from_secs(30);
        let monitor = guard.accept(&monitor_listener, "monitor", timeout).await?;
        let control = guard.accept(&control_listener, "control", timeout).await?;
        let qmp = match Qmp::handshake(monitor, Limits::default()).await {
            Ok(qmp) => qmp,
            // Most often QEMU died right after connecting (e.g. KVM refused the vCPU): say so,
            // with QEMU's own words, rather than blame the protocol.
            Err(source) => {
                return Err(guard.exit_error().unwrap_or(VmError::Qmp {
                    name: config.name.clone(),
                    source,
                }))
            }
        };
        drop(monitor_listener);
        drop(control_listener);
        let _ = std::fs::remove_file(&monitor_path);
        let _ = std::fs::remove_file(&control_path);
        let child = guard.child.take();
        guard.armed = false;
        drop(guard);
        let (rx, tx) = control.into_split();
        Ok(Vm {
            config,
            child,
            qmp,
            control: (LineReader::new(CONTROL_MAX_LINE_BYTES), rx),
            control_tx: tx,
            started: Instant::now(),
        })
    }

    /// Waits for the guest program's `READY` call-back; returns the guest's kernel release.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<String, VmError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = tokio::select! {
                line = self.next_control_line() => line,
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(VmError::NotReady {
                        name: self.config.name.clone(),
                        timeout,
                        console: self.console_tail(20),
                    });
                }
            };
            match line {
                Ok(Some(line)) => match GuestMessage::parse(&line) {
                    Some(GuestMessage::Ready { kernel_release }) => return Ok(kernel_release),
                    Some(GuestMessage::Error { message }) => {
                        return Err(VmError::Guest {
                            name: self.config.name.clone(),
                            message,
                        })
                    }
                    // Role-specific lines before READY are not expected; skip, do not fail.
                    _ => tracing::debug!(vm = %self.config.name, line, "ignored control line"),
                },
                // QEMU closed the chardev: it exited.
                Ok(None) => {
                    let status = self.reap_status().await;
                    return Err(VmError::DiedBeforeReady {
                        name: self.config.name.clone(),
                        status,
                        console: self.console_tail(20),
                    });
                }
                Err(source) => {
                    return Err(VmError::Control {
                        name: self.config.name.clone(),
                        source,
                    })
                }
            }
        }
    }

    /// The next line the guest program sends on the control port (`None`: QEMU is gone).
    /// Cancel-safe (a partly read line stays buffered). A line over [`CONTROL_MAX_LINE_BYTES`]
    /// is an error: the guest is untrusted, and its lines (READY, ACK n, DONE) are short.
    pub async fn next_control_line(&mut self) -> std::io::Result<Option<String>> {
        let (reader, stream) = &mut self.control;
        match reader.read_line(stream).await {
            Ok(line) => Ok(Some(String::from_utf8_lossy(&line.bytes).into_owned())),
            Err(kvmio_qemu::Error::Closed) => Ok(None),
            Err(kvmio_qemu::Error::Io(e)) => Err(e),
            Err(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
    }

    /// Sends one line (a newline is added) to the guest program on the control port.
    pub async fn send_control_line(&mut self, line: &str) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.control_tx.write_all(&bytes).await?;
        self.control_tx.flush().await
    }

    /// Where QEMU's stderr goes (read it for why QEMU exited).
    pub fn stderr_path(&self) -> PathBuf {
        self.config.private_dir().join("qemu.stderr")
    }

    async fn reap_status(&mut self) -> String {
        for _ in 0..50 {
            if let Some(status) = self.try_wait() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        "still running".to_string()
    }

    /// The launcher's own QMP connection (not the outside-facing socket).
    pub fn qmp(&mut self) -> &mut Qmp {
        &mut self.qmp
    }

    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// QEMU's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Time since QEMU was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// `Some(status)` once QEMU has exited (it is then reaped), `None` while it runs.
    pub fn try_wait(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                self.remove_sockets();
                Some(status.to_string())
            }
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    /// SIGKILL, as a crash or the OOM killer would: QEMU flushes nothing. Waits for the process
    /// and removes its sockets.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            tracing::debug!(vm = %self.config.name, "killed QEMU");
        }
        self.remove_sockets();
    }

    /// Asks QEMU to quit (it flushes its caches, as on a clean shutdown), then waits; kills it
    /// if it has not exited within `timeout`.
    pub async fn quit(&mut self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.qmp.quit()).await;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.child.is_none() || self.try_wait().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill();
    }

    /// The last `lines` lines of the serial console.
    pub fn console_tail(&self, lines: usize) -> String {
        tail(&self.config.console_log(), lines)
    }

    fn remove_sockets(&self) {
        if self.config.public_sockets {
            let _ = std::fs::remove_file(self.config.qmp_socket());
            let _ = std::fs::remove_file(self.config.qga_socket());
        }
        let _ = std::fs::remove_dir_all(self.config.private_dir());
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Owns QEMU until the launch succeeds; kills and reaps it on every early return.
struct ChildGuard<'a> {
    child: Option<Child>,
    config: &'a VmConfig,
    /// Cleared once the launch succeeded and [`Vm`] took over.
    armed: bool,
}

impl ChildGuard<'_> {
    /// If QEMU has exited (waiting half a second for it to finish dying), the error that says
    /// so, with its stderr.
    fn exit_error(&mut self) -> Option<VmError> {
        let child = self.child.as_mut()?;
        let mut status = None;
        for _ in 0..25 {
            if let Ok(Some(s)) = child.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = status?;
        self.child = None;
        let stderr = std::fs::read_to_string(self.config.private_dir().join("qemu.stderr"))
            .unwrap_or_default();
        Some(VmError::EarlyExit {
            name: self.config.name.clone(),
            status: status.to_string(),
            stderr: stderr.trim().to_string(),
        })
    }

    /// Accepts QEMU's connection to one of our listeners, noticing if QEMU exits instead.
    async fn accept(
        &mut self,
        listener: &UnixListener,
        what: &'static str,
        timeout: Duration,
    ) -> Result<UnixStream, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Ok((stream, _))) =
                tokio::time::timeout(Duration::from_millis(50), listener.accept()).await
            {
                return Ok(stream);
            }
            let exited = match self.child.as_mut() {
                Some(child) => !matches!(child.try_wait(), Ok(None)),
                None => false,
            };
            if exited {
                if let Some(e) = self.exit_error() {
                    return Err(e);
                }
            }
            if Instant::now() > deadline {
                return Err(VmError::ConnectTimeout {
                    name: self.config.name.clone(),
                    what,
                    timeout,
                });
            }
        }
    }
}

impl Drop for ChildGuard<'_> {
    /// On a failed launch nothing of the VM may remain: process, sockets, private directory.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.armed {
            let c = self.config;
            if c.public_sockets {
                let _ = std::fs::remove_file(c.qmp_socket());
                let _ = std::fs::remove_file(c.qga_socket());
            }
            let _ = std::fs::remove_dir_all(c.private_dir());
        }
    }
}

/// Checks that `dir` exists (creating it) and that files can be made in it.
fn check_run_dir(dir: &Path) -> Result<(), VmError> {
    let err = |source| VmError::RunDir {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    // Probe writability with a real file: permission bits lie for root and on read-only mounts.
    tempfile::Builder::new()
        .prefix(".kvmio-probe")
        .tempfile_in(dir)
        .map_err(err)?;
    Ok(())
}

/// QEMU's `-opt a=b,c=d` syntax escapes a comma in a value by doubling it; we refuse commas in
/// paths instead, since other consumers (the NBD URI) would not unescape them.
fn opt_path(p: &Path) -> Result<String, VmError> {
    let s = p.to_string_lossy().into_owned();
    if s.contains(',') {
        return Err(VmError::Comma(p.to_path_buf()));
    }
    Ok(s)
}

/// QEMU's command line for `config`.
fn qemu_args(config: &VmConfig, monitor: &Path, control: &Path) -> Result<Vec<String>, VmError> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let cpu = match config.accel {
        Accel::Tcg => "max",
        Accel::Kvm => "host",
    };
    // init_on_free=1: freed guest pages (the unpacked initramfs archive, above all) are zeros,
    // which a saved VM state skips: it is then about 70 MB instead of 110.
    // no_timer_check: the kernel's boot-time check that the IO-APIC timer ticks gives up and
    // panics ("IO-APIC + timer doesn't work!") when an emulated CPU is starved, as under TCG on
    // a loaded host (seen once in the kvmio-top lab test at load average 8); the timer works,
    // so the check is skipped, as virtualised distributions' images do.
    let mut append = format!(
        "console=ttyS0 quiet panic=-1 init_on_free=1 no_timer_check {ROLE_PARAM}={}",
        config.role
    );
    if !config.public_sockets {
        // No agent port: the guest's /init must not wait for one.
        append.push_str(&format!(" {AGENT_PARAM}=0"));
    }
    for p in &config.kernel_params {
        append.push(' ');
        append.push_str(p);
    }
    push(&[
        "-name",
        &config.name,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-machine",
        "pc",
        "-accel",
        config.accel.as_str(),
        "-cpu",
        cpu,
        "-m",
        &config.memory_mib.to_string(),
        "-smp",
        &config.cpus.to_string(),
        "-kernel",
        &opt_path(&config.image.vmlinuz)?,
        "-initrd",
        &opt_path(&config.image.initramfs)?,
        "-append",
        &append,
        "-serial",
        &format!("file:{}", opt_path(&config.console_log())?),
        "-chardev",
        &format!("socket,id=kvmio-mon,path={},server=off", opt_path(monitor)?),
        "-mon",
        "chardev=kvmio-mon,mode=control",
        "-device",
        "virtio-serial-pci,id=vser0",
        "-chardev",
        &format!("socket,id=kvmio-ctl,path={},server=off", opt_path(control)?),
        "-device",
        &format!("virtserialport,bus=vser0.0,chardev=kvmio-ctl,name={CONTROL_PORT}"),
    ]);
    if config.public_sockets {
        push(&[
            "-chardev",
            &format!(
                "socket,id=qmp,path={},server=on,wait=off",
                opt_path(&config.qmp_socket())?
            ),
            "-mon",
            "chardev=qmp,mode=control",
            "-chardev",
            &format!(
                "socket,id=qga0,path={},server=on,wait=off",
                opt_path(&config.qga_socket())?
            ),
            "-device",
            &format!("virtserialport,bus=vser0.0,chardev=qga0,name={AGENT_PORT}"),
        ]);
    }
    if config.incoming {
        push(&["-incoming", "defer"]);
    }
    for (i, disk) in config.disks.iter().enumerate() {
        let (file, format) = match &disk.source {
            DiskSource::File { path, format } => (opt_path(path)?, format.as_str()),
            DiskSource::Nbd { socket, format } => (
                format!("nbd+unix:///?socket={}", opt_path(socket)?),
                format.as_str(),
            ),
        };
        push(&[
            "-drive",
            &format!(
                "if=none,id=drive-virtio-disk{i},file={file},format={format},cache={}{}",
                disk.cache,
                if config.discard_unmap {
                    ",discard=unmap"
                } else {
                    ""
                }
            ),
            "-device",
            &format!(
                "virtio-blk-pci,drive=drive-virtio-disk{i},id=virtio-disk{i},serial=kvmio-disk{i}"
            ),
        ]);
    }
    Ok(a)
}

/// Starts `cmd` so that it is SIGKILLed when this process dies, however it dies: for helper
/// processes a kvmio tool starts beside its VMs (an exporter, a server).
pub fn spawn_tied(mut cmd: Command) -> std::io::Result<Child> {
    set_parent_death_signal(&mut cmd);
    spawner::spawn(cmd)
}

/// SIGKILL QEMU if the launcher dies without dropping its [`Vm`] (e.g. SIGKILLed itself).
///
/// The kernel sends the signal when the *thread* that forked exits, so QEMU is forked from one
/// thread that lives as long as the process ([`spawner`]).
fn set_parent_death_signal(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// Forks every QEMU from one thread that never exits, so `PR_SET_PDEATHSIG` fires only when
/// the whole launcher process dies, not when some runtime worker thread retires.
mod spawner {
    use std::process::{Child, Command};
    use std::sync::mpsc;
    use std::sync::{Mutex, OnceLock};

    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);

    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();

    pub fn spawn(cmd: Command) -> std::io::Result<Child> {
        let sender = SPAWNER.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Request>();
            std::thread::Builder::new()
                .name("kvmio-spawner".into())
                .spawn(move || {
                    for (mut cmd, reply) in rx {
                        let _ = reply.send(cmd.spawn());
                    }
                })
                .expect("cannot start the QEMU spawner thread");
            Mutex::new(tx)
        });
        let (reply_tx, reply_rx) = mpsc::channel();
        sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((cmd, reply_tx))
            .map_err(|_| std::io::Error::other("QEMU spawner thread is gone"))?;
        reply_rx
            .recv()
            .map_err(|_| std::io::Error::other("QEMU spawner thread is gone"))?
    }
}

/// The last `lines` lines of a text file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
