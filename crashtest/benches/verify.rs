//! The checker's throughput on a synthetic image full of records (page cache warm: this
//! measures the checker, not the disk). Figures are printed, never asserted; BENCHMARKS.md
//! quotes them.
//!
//! ```sh
//! cargo bench -p kvmio-crashtest --bench verify -- --size 1024 --runs 5
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use kvmio_crashtest::acklog::{AckLog, AckLogHeader, AckLogWriter};
use kvmio_crashtest::oracle::{Cell, Fault};
use kvmio_crashtest::verify;
use kvmio_crashtest::vm::ImageFormat;
use kvmio_guest::protocol::GuestMessage;
use kvmio_guest::record::RecordSpec;
use kvmio_guest::writer::SyncPolicy;
use kvmio_qemu::CacheMode;

#[derive(Debug, Parser)]
struct Args {
    /// Size of the synthetic image in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    size: u64,
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    record_size: usize,
    /// Directory for the image (default: the system's temporary directory).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Checker runs to time.
    #[arg(long, value_name = "N", default_value_t = 3)]
    runs: u32,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dir = tempfile::Builder::new()
        .prefix("kvmio-bench-verify")
        .tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let disk = args.size << 20;
    let spec = RecordSpec::new(0x5eed, 7, args.record_size)?;
    let image = dir.path().join("bench.raw");
    let acks = dir.path().join("bench.acks");
    let t = Instant::now();
    write_image(&spec, disk, &image, &acks)?;
    eprintln!(
        "wrote {} MiB of records in {:.2} s",
        args.size,
        t.elapsed().as_secs_f64()
    );
    let log = AckLog::read(&acks)?;
    let mut best = f64::MAX;
    for run in 1..=args.runs.max(1) {
        let v = verify::verify_image(&image, &log, None, Path::new("qemu-img"), dir.path())?;
        if v.survived != v.acked {
            return Err(format!(
                "the synthetic image does not verify: acked {}, survived {}",
                v.acked, v.survived
            )
            .into());
        }
        let rate = v.bytes_read as f64 / v.seconds / 1e6;
        println!(
            "run {run}: verified {} records ({} MB) in {:.3} s: {rate:.0} MB/s",
            v.acked,
            v.bytes_read / 1_000_000,
            v.seconds
        );
        best = best.min(v.seconds);
    }
    println!(
        "best: {:.0} MB/s ({} record size)",
        disk as f64 / best / 1e6,
        args.record_size
    );
    Ok(())
}

/// An image whose every slot holds its record, and an ack log acking them all.
fn write_image(
    spec: &RecordSpec,
    disk: u64,
    image: &Path,
    acks: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let cell = Cell::new(
        CacheMode::None,
        Fault::Power,
        SyncPolicy::Fdatasync,
        ImageFormat::Raw,
    );
    let header = AckLogHeader::new(cell, spec, disk, "bench.raw");
    let mut file = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(image)?);
    let mut log = AckLogWriter::create(acks, &header)?;
    let mut buf = vec![0u8; spec.size];
    for seq in 0..spec.slots(disk) {
        let digest = spec.fill(seq, &mut buf);
        file.write_all(&buf)?;
        log.append(&GuestMessage::Ack {
            seq,
            slot: seq,
            digest,
        })?;
    }
    file.flush()?;
    log.finish()?;
    Ok(())
}
