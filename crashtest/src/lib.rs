//! kvmio-crashtest: boots small QEMU VMs on demand (the lab), and measures which acknowledged
//! writes survive a crash under each cache mode.
//!
//! The shape, by job:
//! * the guest: [`kernel`] finds a kernel, [`modules`] the modules it needs, [`guest_image`]
//!   builds kernel + initramfs ([`cpio`]) once per content hash;
//! * one VM: [`vm`] launches QEMU and guarantees it is reaped; [`accel`] picks TCG or KVM;
//!   [`lab`] keeps N of them running with a workload;
//! * the crash test: [`run`] is the pipeline, one module per step (plan → image → fault's host →
//!   boot → ack → fault → verify), with [`oracle`] saying what each cell promises, [`acklog`]
//!   the record of what the guest acknowledged, [`verify`] the checker and [`report`] the
//!   outputs;
//! * shared: [`qemu_img`] (qemu-img, run one way), [`paths`], [`out_of_space`] and [`one_line`];
//! * the command line: [`cli`] (the binary's flags, also read by the man-page generator).
//!
//! Errors follow the `kvmio-qemu` convention: one variant per failing step, the inner error only
//! in `#[source]`; the binary prints the chain on one line.

pub mod accel;
pub mod acklog;
pub mod cli;
pub mod cpio;
pub mod fscheck;
pub mod fsimage;
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

/// An error and its causes on one line, joined by `: `. Every error in this workspace says only
/// its own step and keeps its cause in `source()`, so nothing repeats and nothing is dropped.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}
