//! The product measuring itself: a `kvmio-exporter` process over the experiment's VMs, and its
//! `/metrics` read between workload phases.
//!
//! The exporter runs as operators run it (`--qmp.socket-glob` with agents paired by socket
//! stem, `--host.devices all`); it connects to a VM's monitor and agent only while a scrape
//! runs. The experiment drives the guest through the same agent socket (`guest-exec`), never
//! during a scrape: an agent chardev serves one client at a time.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kvmio_exporter::textformat::{self, Family};

/// The most `/metrics` may hold (a few VMs give tens of KiB).
const MAX_BODY_BYTES: u64 = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    #[error("cannot start {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the exporter did not say where it listens within 30 s; its log: {log}")]
    NotListening { log: String },
    #[error("cannot read /metrics from {addr}")]
    Http {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("/metrics from {addr} answered {status}")]
    Status { addr: String, status: String },
    #[error("/metrics from {addr} is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge { addr: String },
    #[error("/metrics from {addr} does not parse: {first}")]
    Parse { addr: String, first: String },
}

/// A running exporter, killed and reaped on drop.
#[derive(Debug)]
pub struct Exporter {
    child: Child,
    addr: String,
}

impl Exporter {
    /// Starts `binary` over the monitors `RUN_DIR/*.qmp` (agents `RUN_DIR/*.qga`), logging to
    /// `RUN_DIR/exporter.log`, on a free loopback port.
    pub fn start(binary: &Path, run_dir: &Path) -> Result<Exporter, ExporterError> {
        let log_path = run_dir.join("exporter.log");
        let log = std::fs::File::create(&log_path).map_err(|source| ExporterError::Spawn {
            program: log_path.clone(),
            source,
        })?;
        let mut cmd = Command::new(binary);
        cmd.arg("--web.listen-address=127.0.0.1:0")
            .arg(format!("--qmp.socket-glob={}/*.qmp", run_dir.display()))
            .arg(format!("--qga.socket-glob={}/*.qga", run_dir.display()))
            .arg("--host.devices=all")
            // Scrapes happen between phases only; give a TCG guest's agent time.
            .arg("--scrape.timeout=20s")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // Dies with this process, even when it is SIGKILLed.
        let child =
            kvmio_crashtest::vm::spawn_tied(cmd).map_err(|source| ExporterError::Spawn {
                program: binary.to_path_buf(),
                source,
            })?;
        let mut exporter = Exporter {
            child,
            addr: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(rest) = text.split("listening on http://").nth(1) {
                if let Some(addr) = rest.split('/').next() {
                    exporter.addr = addr.to_string();
                    return Ok(exporter);
                }
            }
            if let Ok(Some(_)) = exporter.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(ExporterError::NotListening {
            log: std::fs::read_to_string(&log_path).unwrap_or_default(),
        })
    }

    /// One scrape, parsed. A line the strict parser refuses fails the scrape: the exporter's
    /// output must always parse.
    pub fn scrape(&self) -> Result<Vec<Family>, ExporterError> {
        let addr = self.addr.clone();
        let http = |source| ExporterError::Http {
            addr: addr.clone(),
            source,
        };
        let mut stream = TcpStream::connect(&self.addr).map_err(http)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(http)?;
        write!(
            stream,
            "GET /metrics HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .map_err(http)?;
        let mut raw = Vec::new();
        stream
            .take(MAX_BODY_BYTES + 1)
            .read_to_end(&mut raw)
            .map_err(http)?;
        if raw.len() as u64 > MAX_BODY_BYTES {
            return Err(ExporterError::TooLarge { addr });
        }
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.lines().next().unwrap_or("").to_string();
        if !status.contains(" 200 ") {
            return Err(ExporterError::Status { addr, status });
        }
        let parsed = textformat::parse(body);
        if let Some(first) = parsed.errors.first() {
            return Err(ExporterError::Parse {
                addr,
                first: first.to_string(),
            });
        }
        Ok(parsed.families)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
