//! The guest image builder against real kernels and modules.

use std::path::Path;
use std::process::Command;

use kvmio_crashtest::guest_image::{self, GuestInputs};
use kvmio_crashtest::kernel::GuestKernel;
use kvmio_crashtest::vm::{Accel, Vm, VmConfig};
use kvmio_e2e::{require_lab_packages, run, vm_slot, workspace_bin, READY_TIMEOUT};

/// The CLI builds once, then answers from the cache with the same image.
#[test]
fn second_build_comes_from_the_cache() {
    require_lab_packages();
    let cache = tempfile::tempdir().unwrap();
    let build = || {
        let mut cmd = Command::new(workspace_bin("kvmio-crashtest"));
        cmd.args(["guest", "build", "--cache-dir"])
            .arg(cache.path());
        let (status, stdout, stderr) = run(&mut cmd);
        assert!(status.success(), "guest build failed: {stderr}");
        stdout
    };
    let first = build();
    let second = build();
    assert!(first.starts_with("built guest image"), "{first}");
    assert!(second.starts_with("cached guest image"), "{second}");
    let id = |s: &str| s.split_whitespace().nth(3).unwrap_or_default().to_string();
    assert_eq!(id(&first), id(&second));
}

/// Distribution kernels ship `.ko.xz` or `.ko.zst` modules: a modules tree with the needed
/// modules compressed both ways (by the real xz and zstd tools) builds a guest that boots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_with_compressed_modules_boots() {
    require_lab_packages();
    let kernel = GuestKernel::locate(None, None).expect("guest kernel (run deploy/setup.sh)");
    let tree = tempfile::tempdir().unwrap();
    let modules = tree.path().join("modules");
    let mut compressed = 0;
    for (i, rel) in [
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
        "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
        "kernel/drivers/virtio/virtio_pci.ko",
        "kernel/drivers/block/virtio_blk.ko",
        "kernel/drivers/char/virtio_console.ko",
    ]
    .iter()
    .enumerate()
    {
        let src = kernel.modules.join(rel);
        if !src.is_file() {
            continue; // built into this kernel
        }
        let (tool, ext) = if i % 2 == 0 {
            ("xz", "xz")
        } else {
            ("zstd", "zst")
        };
        let dst = modules.join(format!("{rel}.{ext}"));
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        compress(tool, &src, &dst);
        compressed += 1;
    }
    assert!(
        compressed >= 4,
        "the test kernel should have modular virtio"
    );
    let builtin = kernel.modules.join("modules.builtin");
    if builtin.is_file() {
        std::fs::copy(&builtin, modules.join("modules.builtin")).unwrap();
    }

    let k = GuestKernel::locate(Some(&kernel.vmlinuz), Some(&modules)).unwrap();
    let inputs = GuestInputs::discover(k, Some(&workspace_bin("kvmio-guest"))).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let image = guest_image::build(&inputs, cache.path()).expect("builds from compressed modules");
    assert!(image.built);

    let _slot = vm_slot();
    let run_dir = tempfile::tempdir().unwrap();
    let mut config = VmConfig::new("xzzst", image, run_dir.path());
    config.accel = Accel::Tcg;
    config.public_sockets = false;
    let mut vm = Vm::launch(config).await.unwrap();
    vm.wait_ready(READY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("guest with decompressed modules did not boot: {e}"));
}

fn compress(tool: &str, src: &Path, dst: &Path) {
    let out = Command::new(tool)
        .args(["-q", "-c"])
        .arg(src)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is not installed ({e}): run deploy/setup.sh"));
    assert!(out.status.success(), "{tool} failed");
    std::fs::write(dst, out.stdout).unwrap();
}
