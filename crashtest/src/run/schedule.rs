//! The scheduler: iterations in rounds (every cell once, then again), at most `--parallel` at a
//! time.
//!
//! Rounds rather than cell after cell, so an interrupted run has seen every cell. The first
//! error, or Ctrl-C, stops every running iteration (each reaps its QEMU and shuts its NBD server
//! down before it ends) and starts no new one; the run's directories go only once every
//! iteration has finished.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::iteration::{self, Ctx};
use super::plan::RunDirs;
use super::{Guest, IterationResult, RunError, RunOptions};
use crate::oracle::Cell;

/// The result of [`run`]: every finished iteration, and why the run stopped early if it did.
#[derive(Debug)]
pub struct RunOutcome {
    pub results: Vec<IterationResult>,
    pub error: Option<RunError>,
    /// kvmio's directory under the image dir (kept only with `--keep-images`).
    pub images_dir: PathBuf,
}

/// Runs the matrix. `cancel` turning true stops everything (Ctrl-C). `on_done` sees each result.
pub async fn run(
    opts: RunOptions,
    guest: Guest,
    mut cancel: watch::Receiver<bool>,
    mut on_done: impl FnMut(&IterationResult),
) -> Result<RunOutcome, RunError> {
    let dirs = RunDirs::create(&opts)?;
    let images_dir = dirs.images().to_path_buf();
    let parallel = opts.parallel.max(1);
    let mut jobs: VecDeque<(usize, Cell, u32)> = VecDeque::new();
    for iteration in 0..opts.iterations {
        for cell in &opts.cells {
            jobs.push_back((jobs.len(), *cell, iteration));
        }
    }
    let ctx = Arc::new(Ctx::new(opts, guest, dirs)?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    let mut results = Vec::new();
    let mut error = None;
    let mut cancel_open = true;
    loop {
        while set.len() < parallel && error.is_none() {
            let Some((index, cell, iteration)) = jobs.pop_front() else {
                break;
            };
            set.spawn(iteration::run(
                Arc::clone(&ctx),
                index,
                cell,
                iteration,
                stop_rx.clone(),
            ));
        }
        if set.is_empty() {
            break;
        }
        tokio::select! {
            joined = set.join_next() => match joined {
                Some(Ok(Ok(r))) => {
                    on_done(&r);
                    results.push(r);
                }
                Some(Ok(Err(e))) => {
                    if error.is_none() {
                        error = Some(e);
                    }
                    stop_tx.send_replace(true);
                }
                Some(Err(e)) => std::panic::resume_unwind(e.into_panic()),
                None => break,
            },
            changed = cancel.wait_for(|c| *c), if error.is_none() && cancel_open => {
                if changed.is_ok() {
                    error = Some(RunError::Interrupted);
                    stop_tx.send_replace(true);
                } else {
                    // Nobody can cancel any more.
                    cancel_open = false;
                }
            }
        }
    }
    drop(set);
    // Every task has finished: the RunDirs go (kept images stay).
    match Arc::try_unwrap(ctx) {
        Ok(ctx) => drop(ctx),
        Err(_) => unreachable!("all iteration tasks have finished"),
    }
    results.sort_by_key(|r| (r.cell, r.iteration));
    Ok(RunOutcome {
        results,
        error,
        images_dir,
    })
}
