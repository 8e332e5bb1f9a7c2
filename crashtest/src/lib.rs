//! kvmio-crashtest: boots small QEMU VMs on demand (the lab), and measures which acknowledged
//! writes survive a crash under each cache mode.

pub mod accel;
pub mod cpio;
pub mod guest_image;
pub mod kernel;
pub mod lab;
pub mod modules;
pub mod oracle;
pub mod paths;
pub mod qemu_img;
pub mod report;
pub mod run;
pub mod verify;
pub mod vm;

/// Whether `e` or one of its causes is ENOSPC: the one test for "the disk is full", wherever
/// an I/O error sits in a chain (qemu-img's text is read back into one in [`qemu_img`]).
pub fn out_of_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::ENOSPC))
        {
            return true;
        }
        cur = e.source();
    }
    false
}
