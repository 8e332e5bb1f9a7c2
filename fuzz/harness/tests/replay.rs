//! Replays every fuzz target's inputs through its entry point on the stable toolchain: the seeds
//! made from the real fixtures, the committed corpus (`fuzz/corpus/NAME/`, minimised with
//! `cargo fuzz cmin`) and the regressions (`fuzz/regressions/NAME/`: inputs that crashed or hung
//! once, kept after the fix). A target that panics, or runs past a generous bound on one input,
//! fails with the file that did it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvmio_fuzz::{seeds, Target, TARGETS};

/// Inputs of `dir`, sorted; none if it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

/// Runs one input; a panic names the input.
fn run(target: &Target, what: &str, input: &[u8]) {
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(|| (target.run)(input));
    if let Err(panic) = outcome {
        let msg = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(not a string)");
        panic!("{}: {what}: {msg}", target.name);
    }
    // A debug build on a loaded machine: a bound for hangs, not a timing claim.
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "{}: {what} took {took:?}",
        target.name
    );
}

#[test]
fn every_target_replays_its_seeds_corpus_and_regressions() {
    let root = seeds::repo().join("fuzz");
    for target in TARGETS {
        let seeds = seeds::for_target(target.name);
        assert!(!seeds.is_empty(), "{}: no seeds", target.name);
        for (i, seed) in seeds.iter().enumerate() {
            run(target, &format!("seed {i}"), seed);
        }
        let corpus = files(&root.join("corpus").join(target.name));
        assert!(
            !corpus.is_empty(),
            "{}: no committed corpus in fuzz/corpus/{}",
            target.name,
            target.name
        );
        let regressions = files(&root.join("regressions").join(target.name));
        for path in corpus.iter().chain(&regressions) {
            let input = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            run(target, &path.display().to_string(), &input);
        }
        eprintln!(
            "{}: {} seeds, {} corpus inputs, {} regressions",
            target.name,
            seeds.len(),
            corpus.len(),
            regressions.len()
        );
    }
}

/// Every directory under `fuzz/corpus/` and `fuzz/regressions/` belongs to a target, and every
/// target has a cargo-fuzz binary: nothing is fuzzed that is not replayed, or the reverse.
#[test]
fn corpus_directories_and_fuzz_binaries_match_the_targets() {
    let root = seeds::repo().join("fuzz");
    for sub in ["corpus", "regressions"] {
        for dir in std::fs::read_dir(root.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = dir.file_name().to_string_lossy().into_owned();
            assert!(
                kvmio_fuzz::target(&name).is_some(),
                "fuzz/{sub}/{name} has no target"
            );
        }
    }
    for target in TARGETS {
        let bin = root
            .join("fuzz_targets")
            .join(format!("{}.rs", target.name));
        let text =
            std::fs::read_to_string(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        assert!(
            text.contains(&format!("target(\"{}\")", target.name)),
            "{} does not run its target",
            bin.display()
        );
    }
}
