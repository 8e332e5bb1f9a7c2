//! `kvmio-top`: a live view of every VM disk's IO layers, read from a kvmio-exporter's /metrics.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "kvmio-top", version, about = "A live view of every VM disk's IO layers, read from a kvmio-exporter's /metrics")]
struct Cli {
    /// The exporter's metrics URL.
    #[arg(long, default_value = "http://127.0.0.1:10990/metrics")]
    url: String,
}

fn main() {
    let cli = Cli::parse();
    eprintln!("kvmio-top: {} (the view is not built yet)", cli.url);
    std::process::exit(1);
}
