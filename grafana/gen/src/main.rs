//! Writes kvmio's Grafana dashboards (`grafana/dashboards/*.json`) from their source in this
//! crate's library; `--check` only compares, exit status 1 if a file differs.

use std::process::ExitCode;

fn main() -> ExitCode {
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(other) => {
            eprintln!("usage: kvmio-dashboards [--check]  (unknown argument {other:?})");
            return ExitCode::from(2);
        }
    };
    let dir = kvmio_dashboards::dashboards_dir();
    let mut stale = 0;
    for (file, text) in kvmio_dashboards::rendered() {
        let path = dir.join(&file);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed == text {
            println!("{}: up to date", path.display());
        } else if check {
            println!("{}: differs from its source", path.display());
            stale += 1;
        } else if let Err(e) =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &text))
        {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        } else {
            println!("{}: written", path.display());
        }
    }
    if stale > 0 {
        eprintln!("run `cargo run -p kvmio-dashboards` to rewrite them");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
