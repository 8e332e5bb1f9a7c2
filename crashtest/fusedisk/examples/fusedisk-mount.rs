//! Mounts kvmio's volatile filesystem for a benchmark or by hand:
//! `fusedisk-mount MOUNTPOINT BACKING_DIR`; unmounts when standard input closes (files keep
//! what was made durable; the volatile rest is written back first, as a clean shutdown does).

use std::io::Read;
use std::path::PathBuf;

fn main() -> std::process::ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [point, backing] = args.as_slice() else {
        eprintln!("usage: fusedisk-mount MOUNTPOINT BACKING_DIR (unmounts when stdin closes)");
        return std::process::ExitCode::from(2);
    };
    let mount = match kvmio_fusedisk::VolatileMount::mount(point, backing, Default::default()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("fusedisk-mount: {e}: {:?}", std::error::Error::source(&e));
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("mounted");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    if let Err(e) = mount.sync() {
        eprintln!("fusedisk-mount: {e}");
    }
    drop(mount);
    std::process::ExitCode::SUCCESS
}
