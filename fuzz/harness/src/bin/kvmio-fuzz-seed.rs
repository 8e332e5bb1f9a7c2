//! Writes every target's seeds (see `kvmio_fuzz::seeds`) into `fuzz/corpus/NAME/seed-N`, where
//! `cargo fuzz run NAME` starts from. Run once before fuzzing a new target; `cargo fuzz cmin`
//! then keeps only what adds coverage.

use kvmio_fuzz::{seeds, TARGETS};

fn main() -> std::io::Result<()> {
    for target in TARGETS {
        let dir = seeds::repo().join("fuzz/corpus").join(target.name);
        std::fs::create_dir_all(&dir)?;
        let all = seeds::for_target(target.name);
        for (i, seed) in all.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed)?;
        }
        println!("{}: {} seeds in {}", target.name, all.len(), dir.display());
    }
    Ok(())
}
