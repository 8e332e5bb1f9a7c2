//! `kvmio-top`: a live view of every VM disk's IO layers, read from a kvmio-exporter's
//! `/metrics`.
//!
//! It answers the seed article's question at a glance: where does this disk's IO time go
//! (latency per layer), and does the guest's merging survive to the host (merges and average
//! request size per layer, side by side). The shape: [`cli`] the flags, [`scrape`] one bounded
//! GET (TLS, basic auth) parsed by the exporter's own parser, [`model`] the layers joined and
//! rated, [`view`] sorting, filtering and the rows, [`tui`] the live screen; `--once` prints the
//! same rows as text.

use std::process::ExitCode;

use clap::Parser;

use kvmio_top::cli;
mod model;
mod scrape;
mod tui;
mod view;

use cli::Cli;
use scrape::{ScrapeError, Scraper};
use view::ViewState;

/// The failing steps.
#[derive(Debug, thiserror::Error)]
enum TopError {
    #[error("cannot prepare the connection to the exporter")]
    Setup(#[source] ScrapeError),
    #[error("scrape failed")]
    Scrape(#[source] ScrapeError),
    #[error("terminal")]
    Terminal(#[source] std::io::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvmio-top: error: {}", kvmio_exporter::errors::chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), TopError> {
    let scraper = Scraper::new(&cli).map_err(TopError::Setup)?;
    let state = ViewState {
        sort: cli.sort,
        reverse: cli.reverse,
        filter: cli.filter.clone(),
    };
    if cli.once {
        print!("{}", once(&scraper, &cli, &state)?);
        return Ok(());
    }
    tui::run(scraper, cli.interval, state).map_err(TopError::Terminal)
}

/// One frame as text: two scrapes `--interval` apart.
fn once(scraper: &Scraper, cli: &Cli, state: &ViewState) -> Result<String, TopError> {
    let first = scraper.scrape().map_err(TopError::Scrape)?;
    std::thread::sleep(cli.interval);
    let second = scraper.scrape().map_err(TopError::Scrape)?;
    let disks = model::frame(
        &model::Snapshot::from_samples(&first.samples),
        &model::Snapshot::from_samples(&second.samples),
        (second.at - first.at).as_secs_f64(),
    );
    let shown = view::arrange(disks, state);
    let mut out = format!(
        "kvmio-top  {}  over {:.1}s  {}{}  {} disk(s)\n",
        scraper.url(),
        (second.at - first.at).as_secs_f64(),
        state.describe(),
        if state.filter.is_empty() {
            String::new()
        } else {
            format!("  filter: {}", state.filter)
        },
        shown.len()
    );
    if second.skipped_lines > 0 {
        out.push_str(&format!(
            "{} malformed line(s) skipped\n",
            second.skipped_lines
        ));
    }
    out.push_str(&view::text(&view::rows(&shown)));
    Ok(out)
}
