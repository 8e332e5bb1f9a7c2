//! Lab timings: guest image build (cold and cached) and boot-to-ready under TCG.
//!
//! `cargo bench -p kvmio-e2e --bench lab` (needs `deploy/setup.sh` and `cargo build --release
//! --workspace` first, for the release `kvmio-guest`). Prints one line per figure with the
//! median and the spread of `KVMIO_BENCH_RUNS` runs (default 5).

use std::time::{Duration, Instant};

use kvmio_crashtest::guest_image::{self, GuestInputs};
use kvmio_crashtest::kernel::GuestKernel;
use kvmio_crashtest::vm::{Accel, Vm, VmConfig};

fn median(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn report(what: &str, v: Vec<Duration>) {
    let n = v.len();
    let (med, min, max) = median(v);
    println!(
        "{what:<40} median {:>8.1} ms   (min {:.1}, max {:.1}, n={n})",
        med.as_secs_f64() * 1e3,
        min.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
}

fn main() {
    let runs: usize = std::env::var("KVMIO_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let kernel = GuestKernel::locate(None, None).expect("guest kernel: run deploy/setup.sh");
    let inputs =
        GuestInputs::discover(kernel, None).expect("guest inputs: cargo build --workspace");
    println!("guest program: {}", inputs.guest_program.display());

    let mut cold = Vec::new();
    let mut cached = Vec::new();
    let mut image = None;
    for _ in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let img = guest_image::build(&inputs, dir.path()).unwrap();
        cold.push(t.elapsed());
        assert!(img.built);
        let t = Instant::now();
        let again = guest_image::build(&inputs, dir.path()).unwrap();
        cached.push(t.elapsed());
        assert!(!again.built);
        let size = std::fs::metadata(&img.initramfs).unwrap().len();
        if image.is_none() {
            println!("initramfs: {} MiB", size >> 20);
        }
        // Keep one image for the boots: copy it out of the temporary cache.
        if image.is_none() {
            image =
                Some(guest_image::build(&inputs, &kvmio_crashtest::paths::cache_dir()).unwrap());
        }
    }
    report("guest build, cold (empty cache)", cold);
    report("guest build, cached", cached);

    let image = image.unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut to_qmp = Vec::new();
    let mut to_ready = Vec::new();
    let mut to_reaped = Vec::new();
    for _ in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let mut config = VmConfig::new("bench", image.clone(), dir.path());
        config.accel = Accel::Tcg;
        rt.block_on(async {
            let t = Instant::now();
            let mut vm = Vm::launch(config).await.expect("launch");
            to_qmp.push(t.elapsed());
            vm.wait_ready(Duration::from_secs(120))
                .await
                .expect("ready");
            to_ready.push(t.elapsed());
            let k = Instant::now();
            vm.kill();
            to_reaped.push(k.elapsed());
        });
    }
    report("boot: spawn to QMP handshake", to_qmp);
    report("boot: spawn to guest READY (TCG)", to_ready);
    report("SIGKILL to reaped + sockets removed", to_reaped);
}
