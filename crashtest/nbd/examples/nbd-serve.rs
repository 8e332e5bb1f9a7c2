//! Serves a file over NBD on a unix socket through kvmio's volatile-cache server until Ctrl-C or
//! SIGTERM, then prints the statistics. For side-by-side benchmarks against `nbdkit file`:
//!
//! ```text
//! cargo run --release -p kvmio-nbd --example nbd-serve -- --socket /tmp/k.sock --file disk.img
//! qemu-img bench -w -t none -c 50000 -d 16 -s 4k --flush-interval 64 -f raw \
//!     'nbd+unix:///?socket=/tmp/k.sock'
//! ```
//!
//! On exit the volatile layer is written back (as a disk does on a clean power-off) unless
//! `--discard-on-exit` or `--power-fail MODE` is given.

use std::path::PathBuf;
use std::process::ExitCode;

use kvmio_nbd::{PowerFailMode, Server, ServerOptions};
use tokio::signal::unix::{signal, SignalKind};

const USAGE: &str = "usage: nbd-serve --socket PATH --file FILE [--lie-about-flush] \
[--export-name NAME] [--discard-on-exit | --power-fail drop-all|subset:SEED|subset-torn:SEED]";

#[derive(Debug)]
struct Args {
    socket: PathBuf,
    file: PathBuf,
    options: ServerOptions,
    on_exit: OnExit,
}

#[derive(Debug)]
enum OnExit {
    Persist,
    Discard,
    PowerFail(PowerFailMode),
}

fn parse_args() -> Result<Args, String> {
    let mut socket = None;
    let mut file = None;
    let mut options = ServerOptions::default();
    let mut on_exit = OnExit::Persist;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--socket" => socket = Some(PathBuf::from(value("--socket")?)),
            "--file" => file = Some(PathBuf::from(value("--file")?)),
            "--export-name" => options.export_name = value("--export-name")?,
            "--lie-about-flush" => options.lie_about_flush = true,
            "--discard-on-exit" => on_exit = OnExit::Discard,
            "--power-fail" => {
                let mode = value("--power-fail")?;
                on_exit = OnExit::PowerFail(mode.parse().map_err(|e| format!("{e}"))?);
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(Args {
        socket: socket.ok_or_else(|| format!("--socket is required\n{USAGE}"))?,
        file: file.ok_or_else(|| format!("--file is required\n{USAGE}"))?,
        options,
        on_exit,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let server = match Server::bind(&args.socket, &args.file, args.options) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nbd-serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "nbd-serve: serving {} ({} bytes) on nbd+unix:///?socket={}",
        args.file.display(),
        server.export_size(),
        args.socket.display()
    );
    let handle = server.spawn();
    let mut term = match signal(SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("nbd-serve: cannot install SIGTERM handler: {e}");
            let _ = handle.shutdown().await;
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    handle.disconnect_clients().await;
    let mut code = ExitCode::SUCCESS;
    match args.on_exit {
        OnExit::Persist => match handle.persist_volatile().await {
            Ok(n) => eprintln!("nbd-serve: wrote back {n} volatile bytes"),
            Err(e) => {
                eprintln!("nbd-serve: write-back failed: {e}");
                code = ExitCode::FAILURE;
            }
        },
        OnExit::Discard => {}
        OnExit::PowerFail(mode) => match handle.power_fail(mode).await {
            Ok(report) => eprintln!("nbd-serve: {report:?}"),
            Err(e) => {
                eprintln!("nbd-serve: power failure failed: {e}");
                code = ExitCode::FAILURE;
            }
        },
    }
    if let Err(e) = handle.shutdown().await {
        eprintln!("nbd-serve: {e}");
        code = ExitCode::FAILURE;
    }
    eprintln!("nbd-serve: {:?}", handle.stats());
    code
}
