//! `kvmio-exporter` binary: parse flags, bind, serve until SIGINT/SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use kvmio_exporter::cli::Cli;
use kvmio_exporter::collector::Exporter;
use kvmio_exporter::web::WebConfig;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> ExitCode {
    // clap prints usage errors in one line and exits with code 2.
    let cli = Cli::parse();
    let cli_log = (cli.log_level, cli.log_format);
    let web_config_file = cli.web_config_file.clone();
    let config = match cli.into_config() {
        Ok(c) => Arc::new(c),
        Err(msg) => {
            eprintln!("kvmio-exporter: error: {msg}");
            return ExitCode::from(2);
        }
    };
    kvmio_exporter::logging::init(cli_log.0, cli_log.1);
    // A file that cannot be used at start-up stops the exporter (later, the last good one stays).
    let web = match web_config_file.as_deref().map(WebConfig::load).transpose() {
        Ok(web) => web.map(Arc::new),
        Err(e) => {
            eprintln!(
                "kvmio-exporter: error: --web.config.file {}: {}",
                web_config_file.unwrap_or_default().display(),
                kvmio_exporter::errors::chain(&e)
            );
            return ExitCode::from(2);
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_name("kvmio-exporter")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvmio-exporter: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, web)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvmio-exporter: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    config: Arc<kvmio_exporter::Config>,
    web: Option<Arc<WebConfig>>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    // Install the handlers before binding so a signal right after startup is not lost.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let listener = TcpListener::bind(config.listen_address)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_address))?;
    let exporter = Arc::new(Exporter::with_default_collectors(config.clone()));
    if config.has_vm_sources() {
        kvmio_exporter::permissions::report(&config.procfs);
    }
    if let Some(libvirt) = exporter.libvirt() {
        // The source's own connection, opened now: what it allows is said at start-up.
        let deadline = tokio::time::Instant::now() + config.scrape_timeout;
        match libvirt.check(deadline).await {
            Ok(true) => tracing::info!(uri = libvirt.uri(), "libvirt: read-write connection"),
            // The source has said what read-only costs.
            Ok(false) => {}
            Err(e) => tracing::warn!(
                "libvirt {}: {e}; kvmio_libvirt_up stays 0 until it answers",
                libvirt.uri()
            ),
        }
    }
    if let Some(web) = &web {
        let settings = web.current();
        tracing::info!(
            file = %web.path().display(),
            tls = web.is_tls(),
            basic_auth_users = settings.users.len(),
            "web config file: re-read at every connection and request"
        );
    }
    let scheme = if web.as_ref().is_some_and(|w| w.is_tls()) {
        "https"
    } else {
        "http"
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        collectors = ?exporter.collector_names(),
        "listening on {scheme}://{}{}",
        listener.local_addr()?,
        config.telemetry_path
    );
    kvmio_exporter::http::serve_web(listener, exporter, web, async move {
        tokio::select! {
            _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
            _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        }
    })
    .await
    .context("serving HTTP")
}
